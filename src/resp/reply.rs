//! Replies from servers: a full parser ([`parse_reply`]) and a non-allocating validator ([`skip_reply`]).
//!
//! RESP2 and RESP3 (a target may have been switched to RESP3 with `HELLO 3`), as Redis' `resp_parser.c`
//! reads them. Numbers (integers, lengths, counts) must be in the form Redis writes them (`string2ll`
//! grammar: `0` or `-?[1-9][0-9]*`). A line (simple string, error, double, big number, boolean) ends at its
//! first `\n`, which must follow a `\r`. Aggregates nest at most [`MAX_DEPTH`] deep. RESP3 streamed strings
//! and aggregates (`$?`, `*?`), which no Redis sends, are rejected.

use std::fmt;
use std::ops::Range;

use bytes::{Buf, Bytes, BytesMut};

use super::error::{parse_decimal, RespError, ShownByte};

/// Deepest aggregate nesting accepted (EXEC of nested replies is about 3 deep in practice).
pub const MAX_DEPTH: usize = 64;
/// Largest bulk accepted in a reply: 4 GiB (a DUMP of a big key may exceed `proto-max-bulk-len`).
pub const MAX_REPLY_BULK_LEN: u64 = 4 << 30;
/// Largest aggregate count accepted.
pub const MAX_AGGREGATE_COUNT: u64 = i32::MAX as u64;

/// A parsed reply. Strings are zero-copy slices of the receive buffer.
#[derive(Clone, PartialEq)]
pub enum Reply {
    /// `+…`
    Simple(Bytes),
    /// `-…`, or a RESP3 blob error `!len`.
    Error(Bytes),
    /// `:…`
    Integer(i64),
    /// `$len`; `None` for `$-1`.
    Bulk(Option<Bytes>),
    /// `*n`; `None` for `*-1`.
    Array(Option<Vec<Reply>>),
    /// RESP3 `_`.
    Null,
    /// RESP3 `,` as its text (`1.5`, `inf`, `-nan`, …); see [`Reply::as_f64`].
    Double(Bytes),
    /// RESP3 `#t` / `#f`.
    Boolean(bool),
    /// RESP3 `(` as its decimal text.
    BigNumber(Bytes),
    /// RESP3 `=len` verbatim string: the 3-byte format (`txt`, `mkd`) and the text.
    Verbatim { format: Bytes, text: Bytes },
    /// RESP3 `%n`.
    Map(Vec<(Reply, Reply)>),
    /// RESP3 `~n`.
    Set(Vec<Reply>),
    /// RESP3 `>n`: an out-of-band message, not the answer to a command.
    Push(Vec<Reply>),
    /// RESP3 `|n` attributes and the reply they are attached to.
    Attributed {
        attributes: Vec<(Reply, Reply)>,
        value: Box<Reply>,
    },
}

/// What [`skip_reply`] learned about a reply without allocating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyHead {
    /// `+OK`
    Ok,
    /// Any other simple string.
    Simple,
    /// `:n`
    Integer,
    /// A non-null bulk (or a RESP3 verbatim string).
    Bulk,
    /// `$-1`, `*-1` or RESP3 `_`.
    Null,
    /// An array (or RESP3 map or set); `error` is the message range of the first error reply nested in it, at
    /// any depth (e.g. a failed command inside an `EXEC` result).
    Array { error: Option<Range<usize>> },
    /// A RESP3 push message (out of band: not the reply to a command).
    Push,
    /// An error reply; the range of its message (after `-`, before CRLF) in the buffer.
    Error(Range<usize>),
    /// Another RESP3 scalar: double, boolean, big number.
    Other,
}

impl ReplyHead {
    /// The error message range: the reply's own, or the first nested in an array.
    pub fn error(&self) -> Option<Range<usize>> {
        match self {
            ReplyHead::Error(r) => Some(r.clone()),
            ReplyHead::Array { error } => error.clone(),
            _ => None,
        }
    }

    /// Whether the reply itself is an error (nested errors do not count).
    pub fn is_error(&self) -> bool {
        matches!(self, ReplyHead::Error(_))
    }
}

/// Validate the reply at the start of `buf` without allocating: its kind and total length, `Ok(None)` if
/// incomplete. Offsets in errors and in [`ReplyHead`] ranges are indexes into `buf`.
#[inline]
pub fn skip_reply(buf: &[u8]) -> Result<Option<(ReplyHead, usize)>, RespError> {
    // Fast path for the reply a pipelined writer sees most.
    if buf.starts_with(b"+OK\r\n") {
        return Ok(Some((ReplyHead::Ok, 5)));
    }
    let mut p = Parser {
        buf,
        src: None,
        first_error: None,
    };
    Ok(p.value::<false>(0, 0)?
        .map(|(head, _, n)| (p.fix_head(head), n)))
}

/// What [`reply_error`] reports for one complete reply: the error message range, if any, and the length.
pub type ReplyError = (Option<Range<usize>>, usize);

/// [`skip_reply`] reduced to what a writer checking replies in order needs: the range of the reply's error
/// message (its own, or the first nested one in an array such as an `EXEC` result) and its length.
#[inline]
pub fn reply_error(buf: &[u8]) -> Result<Option<ReplyError>, RespError> {
    Ok(skip_reply(buf)?.map(|(head, n)| (head.error(), n)))
}

/// One item of an array reply: what it is, and where it lies in the buffer.
pub type ArrayItem = (ReplyHead, Range<usize>);

/// The items of the complete array reply at the start of `buf` (e.g. an `EXEC` result, one item per queued
/// command), each as its [`ReplyHead`] and its byte range in `buf`; `Ok(None)` if `buf` does not start
/// with a complete array. Ranges inside the heads are indexes into `buf` too.
pub fn array_items(buf: &[u8]) -> Result<Option<Vec<ArrayItem>>, RespError> {
    // The whole reply first, by the one grammar (a count the parser refuses is refused here too).
    match skip_reply(buf)? {
        Some((ReplyHead::Array { .. }, _)) if buf.first() == Some(&b'*') => {}
        _ => return Ok(None),
    }
    let Some(cr) = line_end(buf, 1)? else {
        return Ok(None);
    };
    let n: usize = match std::str::from_utf8(&buf[1..cr])
        .ok()
        .and_then(|t| t.parse().ok())
    {
        Some(n) => n,
        None => return Ok(None), // `*-1`
    };
    let mut pos = cr + 2;
    let mut items = Vec::with_capacity(n.min(4096));
    for _ in 0..n {
        let Some((head, len)) = skip_reply(&buf[pos..])? else {
            return Ok(None);
        };
        let shift = |r: Range<usize>| r.start + pos..r.end + pos;
        let head = match head {
            ReplyHead::Error(r) => ReplyHead::Error(shift(r)),
            ReplyHead::Array { error } => ReplyHead::Array {
                error: error.map(shift),
            },
            h => h,
        };
        items.push((head, pos..pos + len));
        pos += len;
    }
    Ok(Some(items))
}

/// Parse the reply at the start of `buf` and consume it (zero-copy: strings in the reply are slices of the
/// split-off bytes). `Ok(None)` and errors leave `buf` untouched.
pub fn parse_reply(buf: &mut BytesMut) -> Result<Option<Reply>, RespError> {
    let Some((_, n)) = skip_reply(buf)? else {
        return Ok(None);
    };
    let raw = buf.split_to(n).freeze();
    match build(&raw)? {
        Some((reply, m)) if m == n => Ok(Some(reply)),
        _ => Err(RespError::Invalid {
            offset: 0,
            what: "reply (the parser disagreed with itself)",
        }),
    }
}

/// Parse the reply at the start of `buf` without consuming: the reply and its length.
pub fn parse_reply_bytes(buf: &Bytes) -> Result<Option<(Reply, usize)>, RespError> {
    build(buf)
}

fn build(buf: &Bytes) -> Result<Option<(Reply, usize)>, RespError> {
    let mut p = Parser {
        buf,
        src: Some(buf),
        first_error: None,
    };
    Ok(p.value::<true>(0, 0)?
        .map(|(_, r, n)| (r.unwrap_or(Reply::Null), n)))
}

struct Parser<'a> {
    buf: &'a [u8],
    src: Option<&'a Bytes>,
    first_error: Option<Range<usize>>,
}

type Parsed = Option<(ReplyHead, Option<Reply>, usize)>;

/// The index of the `\r` ending the line that starts at `start`.
#[inline]
fn line_end(buf: &[u8], start: usize) -> Result<Option<usize>, RespError> {
    let rest = buf.get(start..).unwrap_or_default();
    match memchr::memchr(b'\n', rest) {
        None => Ok(None),
        Some(k) if k > 0 && rest[k - 1] == b'\r' => Ok(Some(start + k - 1)),
        Some(k) => Err(RespError::MissingCrlf { offset: start + k }),
    }
}

/// Checks the CRLF after a bulk body ending at `end`: `Ok(true)` present, `Ok(false)` not yet received.
#[inline]
fn bulk_crlf(buf: &[u8], end: usize) -> Result<bool, RespError> {
    match buf.get(end..end + 2) {
        Some(b"\r\n") => Ok(true),
        Some(&[b'\r', _]) => Err(RespError::MissingCrlf { offset: end + 1 }),
        Some(_) => Err(RespError::MissingCrlf { offset: end }),
        None if buf.len() > end && buf[end] != b'\r' => Err(RespError::MissingCrlf { offset: end }),
        None => Ok(false),
    }
}

impl Parser<'_> {
    fn slice(&self, s: usize, e: usize) -> Bytes {
        match self.src {
            Some(b) if s <= e && e <= b.len() => b.slice(s..e),
            _ => Bytes::new(),
        }
    }

    fn fix_head(&self, head: ReplyHead) -> ReplyHead {
        match head {
            ReplyHead::Array { .. } => ReplyHead::Array {
                error: self.first_error.clone(),
            },
            h => h,
        }
    }

    fn note_error(&mut self, r: Range<usize>) {
        if self.first_error.is_none() {
            self.first_error = Some(r);
        }
    }

    fn value<const B: bool>(&mut self, pos: usize, depth: usize) -> Result<Parsed, RespError> {
        let buf = self.buf;
        let Some(&t) = buf.get(pos) else {
            return Ok(None);
        };
        let c = pos + 1;
        match t {
            b'+' | b'-' | b',' | b'(' | b'#' => {
                let Some(cr) = line_end(buf, c)? else {
                    return Ok(None);
                };
                let text = &buf[c..cr];
                let (head, reply) = match t {
                    b'+' => {
                        let head = if text == b"OK" {
                            ReplyHead::Ok
                        } else {
                            ReplyHead::Simple
                        };
                        (head, B.then(|| Reply::Simple(self.slice(c, cr))))
                    }
                    b'-' => {
                        self.note_error(c..cr);
                        (
                            ReplyHead::Error(c..cr),
                            B.then(|| Reply::Error(self.slice(c, cr))),
                        )
                    }
                    b',' => {
                        if text.is_empty() {
                            return Err(RespError::Invalid {
                                offset: c,
                                what: "double",
                            });
                        }
                        (
                            ReplyHead::Other,
                            B.then(|| Reply::Double(self.slice(c, cr))),
                        )
                    }
                    b'(' => {
                        let digits = text.strip_prefix(b"-").unwrap_or(text);
                        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                            return Err(RespError::Invalid {
                                offset: c,
                                what: "big number",
                            });
                        }
                        (
                            ReplyHead::Other,
                            B.then(|| Reply::BigNumber(self.slice(c, cr))),
                        )
                    }
                    _ => {
                        let v = match text {
                            b"t" => true,
                            b"f" => false,
                            _ => {
                                return Err(RespError::Invalid {
                                    offset: c,
                                    what: "boolean",
                                })
                            }
                        };
                        (ReplyHead::Other, B.then_some(Reply::Boolean(v)))
                    }
                };
                Ok(Some((head, reply, cr + 2)))
            }
            b':' => match parse_decimal(buf, c) {
                Ok(Some((v, next))) => Ok(Some((
                    ReplyHead::Integer,
                    B.then_some(Reply::Integer(v)),
                    next,
                ))),
                Ok(None) => Ok(None),
                Err(offset) => Err(RespError::BadInteger { offset }),
            },
            b'_' => {
                if bulk_crlf(buf, c)? {
                    Ok(Some((ReplyHead::Null, B.then_some(Reply::Null), c + 2)))
                } else {
                    Ok(None)
                }
            }
            b'$' | b'!' | b'=' => {
                if buf.get(c) == Some(&b'?') {
                    return Err(RespError::Invalid {
                        offset: c,
                        what: "streamed string (not supported)",
                    });
                }
                let (len, start) = match parse_decimal(buf, c) {
                    Ok(Some(x)) => x,
                    Ok(None) => return Ok(None),
                    Err(offset) => return Err(RespError::BadLength { offset }),
                };
                if len == -1 && t == b'$' {
                    return Ok(Some((
                        ReplyHead::Null,
                        B.then_some(Reply::Bulk(None)),
                        start,
                    )));
                }
                if len < 0 {
                    return Err(RespError::BadLength { offset: c });
                }
                if len as u64 > MAX_REPLY_BULK_LEN {
                    return Err(RespError::BulkTooLong {
                        offset: c,
                        len: len as u64,
                        max: MAX_REPLY_BULK_LEN,
                    });
                }
                let Some(end) = usize::try_from(len)
                    .ok()
                    .and_then(|l| start.checked_add(l))
                    .filter(|e| *e < usize::MAX - 2)
                else {
                    return Err(RespError::BulkTooLong {
                        offset: c,
                        len: len as u64,
                        max: MAX_REPLY_BULK_LEN,
                    });
                };
                if t == b'=' {
                    match buf.get(start + 3) {
                        _ if len < 4 => {
                            return Err(RespError::Invalid {
                                offset: c,
                                what: "verbatim string (shorter than its format)",
                            })
                        }
                        Some(b':') => {}
                        Some(_) => {
                            return Err(RespError::Invalid {
                                offset: start + 3,
                                what: "verbatim string (no ':' after the format)",
                            })
                        }
                        None => return Ok(None),
                    }
                }
                if !bulk_crlf(buf, end)? {
                    return Ok(None);
                }
                let next = end + 2;
                Ok(Some(match t {
                    b'$' => (
                        ReplyHead::Bulk,
                        B.then(|| Reply::Bulk(Some(self.slice(start, end)))),
                        next,
                    ),
                    b'!' => {
                        self.note_error(start..end);
                        (
                            ReplyHead::Error(start..end),
                            B.then(|| Reply::Error(self.slice(start, end))),
                            next,
                        )
                    }
                    _ => (
                        ReplyHead::Bulk,
                        B.then(|| Reply::Verbatim {
                            format: self.slice(start, start + 3),
                            text: self.slice(start + 4, end),
                        }),
                        next,
                    ),
                }))
            }
            b'*' | b'%' | b'~' | b'>' | b'|' => {
                if depth >= MAX_DEPTH {
                    return Err(RespError::TooDeep {
                        offset: pos,
                        max: MAX_DEPTH,
                    });
                }
                if buf.get(c) == Some(&b'?') {
                    return Err(RespError::Invalid {
                        offset: c,
                        what: "streamed aggregate (not supported)",
                    });
                }
                let (n, mut p) = match parse_decimal(buf, c) {
                    Ok(Some(x)) => x,
                    Ok(None) => return Ok(None),
                    Err(offset) => return Err(RespError::BadCount { offset }),
                };
                if n == -1 && t == b'*' {
                    return Ok(Some((ReplyHead::Null, B.then_some(Reply::Array(None)), p)));
                }
                if n < 0 || n as u64 > MAX_AGGREGATE_COUNT {
                    return Err(RespError::BadCount { offset: c });
                }
                let pairs = matches!(t, b'%' | b'|');
                let elems = n as usize * if pairs { 2 } else { 1 };
                // Each element takes at least 3 bytes: never reserve more than the input can hold.
                let cap = if B {
                    elems.min(buf.len().saturating_sub(p) / 3)
                } else {
                    0
                };
                let mut items: Vec<Reply> = Vec::with_capacity(cap);
                for _ in 0..elems {
                    let Some((_, r, next)) = self.value::<B>(p, depth + 1)? else {
                        return Ok(None);
                    };
                    if let Some(r) = r {
                        items.push(r);
                    }
                    p = next;
                }
                if t == b'|' {
                    let Some((head, value, next)) = self.value::<B>(p, depth + 1)? else {
                        return Ok(None);
                    };
                    let reply = B.then(|| Reply::Attributed {
                        attributes: into_pairs(items),
                        value: Box::new(value.unwrap_or(Reply::Null)),
                    });
                    return Ok(Some((head, reply, next)));
                }
                let (head, reply) = match t {
                    b'*' => (
                        ReplyHead::Array { error: None },
                        B.then(|| Reply::Array(Some(items))),
                    ),
                    b'%' => (
                        ReplyHead::Array { error: None },
                        B.then(|| Reply::Map(into_pairs(items))),
                    ),
                    b'~' => (
                        ReplyHead::Array { error: None },
                        B.then(|| Reply::Set(items)),
                    ),
                    _ => (ReplyHead::Push, B.then(|| Reply::Push(items))),
                };
                Ok(Some((head, reply, p)))
            }
            found => Err(RespError::UnexpectedByte {
                offset: pos,
                expected: "a reply type byte",
                found: ShownByte(found),
            }),
        }
    }
}

fn into_pairs(items: Vec<Reply>) -> Vec<(Reply, Reply)> {
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    out
}

impl Reply {
    /// Whether this is an error reply (`-` or `!`), attributes looked through.
    pub fn is_error(&self) -> bool {
        match self {
            Reply::Attributed { value, .. } => value.is_error(),
            r => matches!(r, Reply::Error(_)),
        }
    }

    /// Whether this is `+OK`.
    pub fn is_ok(&self) -> bool {
        match self {
            Reply::Attributed { value, .. } => value.is_ok(),
            r => matches!(r, Reply::Simple(s) if s.as_ref() == b"OK"),
        }
    }

    /// Whether this is a null (`$-1`, `*-1`, `_`).
    pub fn is_null(&self) -> bool {
        match self {
            Reply::Attributed { value, .. } => value.is_null(),
            r => matches!(r, Reply::Null | Reply::Bulk(None) | Reply::Array(None)),
        }
    }

    /// The bytes of a string-like reply: simple, error, bulk, verbatim (its text), double, big number.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Reply::Simple(b)
            | Reply::Error(b)
            | Reply::Bulk(Some(b))
            | Reply::Double(b)
            | Reply::BigNumber(b)
            | Reply::Verbatim { text: b, .. } => Some(b),
            Reply::Attributed { value, .. } => value.as_bytes(),
            _ => None,
        }
    }

    /// Take the bytes of a string-like reply (see [`Reply::as_bytes`]).
    pub fn into_bytes(self) -> Option<Bytes> {
        match self {
            Reply::Simple(b)
            | Reply::Error(b)
            | Reply::Bulk(Some(b))
            | Reply::Double(b)
            | Reply::BigNumber(b)
            | Reply::Verbatim { text: b, .. } => Some(b),
            Reply::Attributed { value, .. } => value.into_bytes(),
            _ => None,
        }
    }

    /// The value of an integer reply; also of a simple or bulk string holding a canonical integer.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Reply::Integer(i) => Some(*i),
            Reply::Simple(b) | Reply::Bulk(Some(b)) => {
                let mut line = Vec::with_capacity(b.len() + 2);
                line.extend_from_slice(b);
                line.extend_from_slice(b"\r\n");
                match parse_decimal(&line, 0) {
                    Ok(Some((v, n))) if n == line.len() => Some(v),
                    _ => None,
                }
            }
            Reply::Attributed { value, .. } => value.as_int(),
            _ => None,
        }
    }

    /// The value of a RESP3 double (or of a string holding a number).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Reply::Integer(i) => Some(*i as f64),
            Reply::Double(b) | Reply::Simple(b) | Reply::Bulk(Some(b)) => {
                std::str::from_utf8(b).ok()?.parse().ok()
            }
            _ => None,
        }
    }

    /// The elements of an array, set or push; a map's keys and values alternating (as in RESP2).
    pub fn into_array(self) -> Option<Vec<Reply>> {
        match self {
            Reply::Array(Some(v)) | Reply::Set(v) | Reply::Push(v) => Some(v),
            Reply::Map(m) => Some(m.into_iter().flat_map(|(k, v)| [k, v]).collect()),
            Reply::Attributed { value, .. } => value.into_array(),
            _ => None,
        }
    }

    /// Append this reply's RESP encoding (RESP3 types in RESP3 form; a blob error as `-…` when it has no
    /// CR or LF).
    pub fn encode(&self, out: &mut BytesMut) {
        fn line(out: &mut BytesMut, t: u8, b: &[u8]) {
            out.extend_from_slice(&[t]);
            out.extend_from_slice(b);
            out.extend_from_slice(b"\r\n");
        }
        fn blob(out: &mut BytesMut, t: u8, parts: &[&[u8]]) {
            let len: usize = parts.iter().map(|p| p.len()).sum();
            out.extend_from_slice(&[t]);
            super::encode::write_decimal(out, len as i64);
            out.extend_from_slice(b"\r\n");
            for p in parts {
                out.extend_from_slice(p);
            }
            out.extend_from_slice(b"\r\n");
        }
        fn head(out: &mut BytesMut, t: u8, n: usize) {
            out.extend_from_slice(&[t]);
            super::encode::write_decimal(out, n as i64);
            out.extend_from_slice(b"\r\n");
        }
        match self {
            Reply::Simple(b) => line(out, b'+', b),
            Reply::Error(b) if !b.contains(&b'\n') && !b.contains(&b'\r') => line(out, b'-', b),
            Reply::Error(b) => blob(out, b'!', &[b]),
            Reply::Integer(i) => {
                out.extend_from_slice(b":");
                super::encode::write_decimal(out, *i);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Bulk(None) => out.extend_from_slice(b"$-1\r\n"),
            Reply::Bulk(Some(b)) => blob(out, b'$', &[b]),
            Reply::Array(None) => out.extend_from_slice(b"*-1\r\n"),
            Reply::Array(Some(v)) | Reply::Set(v) | Reply::Push(v) => {
                let t = match self {
                    Reply::Set(_) => b'~',
                    Reply::Push(_) => b'>',
                    _ => b'*',
                };
                head(out, t, v.len());
                v.iter().for_each(|r| r.encode(out));
            }
            Reply::Null => out.extend_from_slice(b"_\r\n"),
            Reply::Double(b) => line(out, b',', b),
            Reply::Boolean(v) => out.extend_from_slice(if *v { b"#t\r\n" } else { b"#f\r\n" }),
            Reply::BigNumber(b) => line(out, b'(', b),
            Reply::Verbatim { format, text } => blob(out, b'=', &[format, b":", text]),
            Reply::Map(m) => {
                head(out, b'%', m.len());
                for (k, v) in m {
                    k.encode(out);
                    v.encode(out);
                }
            }
            Reply::Attributed { attributes, value } => {
                head(out, b'|', attributes.len());
                for (k, v) in attributes {
                    k.encode(out);
                    v.encode(out);
                }
                value.encode(out);
            }
        }
    }
}

/// Bulk values longer than this are shown truncated by `Display`.
const SHOWN_BULK: usize = 64;

fn show_text(f: &mut fmt::Formatter<'_>, b: &[u8]) -> fmt::Result {
    write!(f, "{}", String::from_utf8_lossy(b))
}

fn show_bulk(f: &mut fmt::Formatter<'_>, b: &[u8]) -> fmt::Result {
    let shown = &b[..b.len().min(SHOWN_BULK)];
    write!(f, "\"{}\"", shown.escape_ascii())?;
    if b.len() > SHOWN_BULK {
        write!(f, "…({} bytes)", b.len())?;
    }
    Ok(())
}

/// Simple strings and errors as text (errors prefixed `(error)`), bulks quoted and escaped, truncated after 64
/// bytes. Callers that must not show values at all should not display bulks.
impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn list(f: &mut fmt::Formatter<'_>, open: &str, v: &[Reply]) -> fmt::Result {
            f.write_str(open)?;
            for (i, r) in v.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{r}")?;
            }
            f.write_str("]")
        }
        fn pairs(f: &mut fmt::Formatter<'_>, v: &[(Reply, Reply)]) -> fmt::Result {
            f.write_str("{")?;
            for (i, (k, r)) in v.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{k}: {r}")?;
            }
            f.write_str("}")
        }
        match self {
            Reply::Simple(b) => show_text(f, b),
            Reply::Error(b) => {
                f.write_str("(error) ")?;
                show_text(f, b)
            }
            Reply::Integer(i) => write!(f, "(integer) {i}"),
            Reply::Bulk(Some(b)) => show_bulk(f, b),
            Reply::Bulk(None) | Reply::Array(None) | Reply::Null => f.write_str("(nil)"),
            Reply::Array(Some(v)) => list(f, "[", v),
            Reply::Set(v) => list(f, "set[", v),
            Reply::Push(v) => list(f, "push[", v),
            Reply::Double(b) => {
                f.write_str("(double) ")?;
                show_text(f, b)
            }
            Reply::Boolean(v) => write!(f, "(boolean) {v}"),
            Reply::BigNumber(b) => {
                f.write_str("(big number) ")?;
                show_text(f, b)
            }
            Reply::Verbatim { text, .. } => show_bulk(f, text),
            Reply::Map(m) => pairs(f, m),
            Reply::Attributed { attributes, value } => {
                pairs(f, attributes)?;
                write!(f, " {value}")
            }
        }
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Drop the first `n` bytes of a reply buffer (after [`skip_reply`]).
pub fn consume(buf: &mut BytesMut, n: usize) {
    buf.advance(n.min(buf.len()));
}
