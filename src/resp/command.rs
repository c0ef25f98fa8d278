//! The replication-stream command decoder.
//!
//! A master sends its write commands to a replica as RESP arrays of bulk strings
//! (`*N\r\n$len\r\narg\r\n…`), exactly as Redis' `processMultibulkBuffer` (networking.c) reads them, plus
//! bare newlines it may send as keep-alives. The decoder reads one command at a time at the start of a buffer
//! and reports its exact byte length, so replication offsets stay exact.
//!
//! # What is accepted
//! - `*N\r\n` with `N` = `0` or `[1-9][0-9]*` ≤ `i32::MAX`, followed by `N` times `$L\r\n` + `L` bytes +
//!   `\r\n`, where `L` = `0` or `[1-9][0-9]*` ≤ the bulk limit ([`DEFAULT_MAX_BULK_LEN`] = Redis'
//!   `proto-max-bulk-len` default). `*0\r\n` is a command with no arguments (Redis ignores it).
//! - `\n` and `\r\n` between commands: zero-argument commands of length 1 and 2.
//!
//! That is, exactly the canonical encodings of arrays of bulk strings (every length in shortest decimal form).
//! Redis itself is laxer in two places a master never exercises — it does not check that the two bytes after
//! a length line or a bulk are `\r\n` — and stricter in none. Everything else is an error naming the offset:
//! another type byte, a sign or leading zero in a number, a negative count, `$-1`, a missing CRLF.
//!
//! # Incremental input
//! `Ok(None)` means "need more bytes", never an error: any split of a stream decodes to the same commands.
//! After `Ok(None)` the decoder remembers how far the partial command was validated (the arguments already
//! seen), so the next call with the same bytes plus more resumes there. A bulk whose header has been read is
//! not rescanned: a retry costs O(header) until [`CommandDecoder::needed`] bytes are buffered, so a 100 MB
//! argument arriving in 16 KB pieces costs O(pieces), not O(size × pieces).

use std::ops::Range;

use bytes::{Bytes, BytesMut};

use super::error::{parse_decimal, RespError, ShownByte};

/// Redis' default `proto-max-bulk-len`: 512 MB.
pub const DEFAULT_MAX_BULK_LEN: usize = 512 * 1024 * 1024;
/// Largest array count Redis accepts (`INT_MAX` in processMultibulkBuffer).
pub const MAX_MULTIBULK_COUNT: usize = i32::MAX as usize;
/// Spans reserved up front at most, whatever count a command announces.
const MAX_PREALLOC_ARGS: usize = 1024;

/// Decodes one command at a time from the replication stream; reuses its span buffer across commands.
#[derive(Debug, Clone)]
pub struct CommandDecoder {
    max_bulk: usize,
    pub(super) spans: Vec<Range<usize>>,
    /// Declared argument count of the partial command; meaningful when `pos > 0`.
    argc: usize,
    /// Bytes of the partial command validated so far (0: no command in progress).
    pos: usize,
    /// Minimum buffer length at which the next `decode` can make progress.
    needed: usize,
}

impl Default for CommandDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl CommandDecoder {
    /// A decoder with the default bulk limit ([`DEFAULT_MAX_BULK_LEN`]).
    pub fn new() -> Self {
        Self::with_max_bulk_len(DEFAULT_MAX_BULK_LEN)
    }

    /// A decoder that rejects bulks longer than `max_bulk` bytes.
    pub fn with_max_bulk_len(max_bulk: usize) -> Self {
        CommandDecoder {
            max_bulk,
            spans: Vec::new(),
            argc: 0,
            pos: 0,
            needed: 1,
        }
    }

    /// The bulk length limit.
    pub fn max_bulk_len(&self) -> usize {
        self.max_bulk
    }

    /// After `Ok(None)`: the buffer length below which another `decode` cannot complete the command (or find
    /// more of it). Callers may skip retries until they have buffered this much; retrying earlier is correct
    /// and cheap.
    pub fn needed(&self) -> usize {
        self.needed
    }

    /// Bytes of the partially received command already validated (0 between commands): a retry resumes
    /// there, at the header of the first incomplete argument.
    pub fn progress(&self) -> usize {
        self.pos
    }

    /// Forget a partially decoded command. Needed only when the caller discards its buffer (e.g. on
    /// reconnection) between an `Ok(None)` and the next call.
    pub fn reset(&mut self) {
        self.pos = 0;
        self.argc = 0;
        self.needed = 1;
        self.spans.clear();
    }

    /// Argument ranges inside the buffer of the last `decode` that returned `Ok(Some(_))`; empty for a
    /// keep-alive newline. Valid until the next call to `decode`.
    pub fn args(&self) -> &[Range<usize>] {
        if self.pos == 0 {
            &self.spans
        } else {
            &[]
        }
    }

    /// Decode one command at the start of `buf` and return its total byte length.
    ///
    /// `Ok(None)`: incomplete. Between an `Ok(None)` and the next call, the caller may only append to the
    /// buffer (its start must stay where it was), or call [`CommandDecoder::reset`]. After `Ok(Some(n))` the
    /// caller drops the first `n` bytes before decoding the next command. Errors carry offsets into `buf`;
    /// after one the decoder is reset.
    #[inline]
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<usize>, RespError> {
        let r = self.decode_inner(buf);
        if r.is_err() {
            self.reset();
        }
        r
    }

    fn decode_inner(&mut self, buf: &[u8]) -> Result<Option<usize>, RespError> {
        if self.pos == 0 || buf.len() < self.pos {
            // A fresh command (or a caller that shrank its buffer: start over rather than trust stale state).
            self.spans.clear();
            self.pos = 0;
            let Some(&first) = buf.first() else {
                self.needed = 1;
                return Ok(None);
            };
            match first {
                b'*' => {}
                b'\n' => return Ok(Some(1)),
                b'\r' => {
                    return match buf.get(1) {
                        None => {
                            self.needed = 2;
                            Ok(None)
                        }
                        Some(b'\n') => Ok(Some(2)),
                        Some(_) => Err(RespError::MissingCrlf { offset: 1 }),
                    };
                }
                found => {
                    return Err(RespError::UnexpectedByte {
                        offset: 0,
                        expected: "'*' (a multibulk command)",
                        found: ShownByte(found),
                    })
                }
            }
            let (count, after) = match parse_decimal(buf, 1) {
                Ok(Some(x)) => x,
                Ok(None) => {
                    self.needed = buf.len() + 1;
                    return Ok(None);
                }
                Err(offset) => return Err(RespError::BadCount { offset }),
            };
            if count < 0 || count as u64 > MAX_MULTIBULK_COUNT as u64 {
                return Err(RespError::BadCount { offset: 1 });
            }
            let count = count as usize;
            if count == 0 {
                return Ok(Some(after));
            }
            self.spans.reserve(count.min(MAX_PREALLOC_ARGS));
            self.argc = count;
            self.pos = after;
        }
        let mut p = self.pos;
        while self.spans.len() < self.argc {
            match buf.get(p) {
                None => {
                    self.pos = p;
                    self.needed = p + 1;
                    return Ok(None);
                }
                Some(b'$') => {}
                Some(&found) => {
                    return Err(RespError::UnexpectedByte {
                        offset: p,
                        expected: "'$' (a bulk string argument)",
                        found: ShownByte(found),
                    })
                }
            }
            let (len, start) = match parse_decimal(buf, p + 1) {
                Ok(Some(x)) => x,
                Ok(None) => {
                    self.pos = p;
                    self.needed = buf.len() + 1;
                    return Ok(None);
                }
                Err(offset) => return Err(RespError::BadLength { offset }),
            };
            if len < 0 {
                return Err(RespError::BadLength { offset: p + 1 });
            }
            if len as u64 > self.max_bulk as u64 {
                return Err(RespError::BulkTooLong {
                    offset: p + 1,
                    len: len as u64,
                    max: self.max_bulk as u64,
                });
            }
            let Some(end) = start
                .checked_add(len as usize)
                .filter(|e| *e < usize::MAX - 2)
            else {
                return Err(RespError::BulkTooLong {
                    offset: p + 1,
                    len: len as u64,
                    max: self.max_bulk as u64,
                });
            };
            match buf.get(end..end + 2) {
                Some(b"\r\n") => {}
                Some(&[a, _]) => {
                    let offset = if a == b'\r' { end + 1 } else { end };
                    return Err(RespError::MissingCrlf { offset });
                }
                Some(_) => return Err(RespError::MissingCrlf { offset: end }),
                None => {
                    // Header re-read on retry (a few bytes); the body is never rescanned.
                    if buf.len() > end && buf[end] != b'\r' {
                        return Err(RespError::MissingCrlf { offset: end });
                    }
                    self.pos = p;
                    self.needed = end + 2;
                    return Ok(None);
                }
            }
            self.spans.push(start..end);
            p = end + 2;
        }
        self.pos = 0;
        self.needed = 1;
        Ok(Some(p))
    }

    /// Decode one command at the start of `buf` and split its bytes off (zero-copy): the returned [`Command`]
    /// owns them. `Ok(None)` leaves `buf` untouched; on error `buf` is untouched too.
    #[inline]
    pub fn decode_frozen(&mut self, buf: &mut BytesMut) -> Result<Option<Command>, RespError> {
        let Some(n) = self.decode(buf)? else {
            return Ok(None);
        };
        let raw = buf.split_to(n).freeze();
        Ok(Some(Command::from_spans(raw, &self.spans)))
    }
}

/// Spans kept inline in a [`Command`]; later arguments are found by walking the (already validated) bytes.
pub const INLINE_ARGS: usize = 8;

/// One decoded command: its exact bytes as received, and where each argument is inside them.
///
/// Holds no heap allocation of its own: the first [`INLINE_ARGS`] argument positions are stored inline; the
/// rest are found by walking the headers from there (use [`Command::args`] to visit all arguments in order,
/// which is linear).
#[derive(Clone)]
pub struct Command {
    raw: Bytes,
    argc: usize,
    /// (start, end) of the first `min(argc, INLINE_ARGS)` arguments.
    inline: [(usize, usize); INLINE_ARGS],
}

impl Command {
    fn from_spans(raw: Bytes, spans: &[Range<usize>]) -> Command {
        let mut inline = [(0, 0); INLINE_ARGS];
        for (slot, s) in inline.iter_mut().zip(spans) {
            *slot = (s.start, s.end);
        }
        Command {
            raw,
            argc: spans.len(),
            inline,
        }
    }

    /// Decode a single complete command from `raw` (all of it). For tests and tools; the stream path uses
    /// [`CommandDecoder::decode_frozen`].
    pub fn parse(raw: Bytes) -> Result<Command, RespError> {
        let mut d = CommandDecoder::new();
        match d.decode(&raw)? {
            Some(n) if n == raw.len() => Ok(Command::from_spans(raw, &d.spans)),
            Some(n) => Err(RespError::UnexpectedByte {
                offset: n,
                expected: "the end of the command",
                found: ShownByte(raw[n]),
            }),
            None => Err(RespError::MissingCrlf { offset: raw.len() }),
        }
    }

    /// The command's bytes exactly as received (what a replica forwards, and what offsets count).
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// Take the raw bytes.
    pub fn into_raw(self) -> Bytes {
        self.raw
    }

    /// Byte length of the command on the wire.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Always false: even a keep-alive newline has a length. Provided for symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Number of arguments, the command name included; 0 for a keep-alive newline or `*0`.
    pub fn argc(&self) -> usize {
        self.argc
    }

    /// Argument `i` (0 is the name), or an empty slice if there is no argument `i`. O(1) for
    /// `i < INLINE_ARGS`, otherwise O(i − INLINE_ARGS).
    #[inline]
    pub fn arg(&self, i: usize) -> &[u8] {
        match self.arg_range(i) {
            Some((s, e)) => self.raw.get(s..e).unwrap_or_default(),
            None => &[],
        }
    }

    /// Argument `i`, or `None` if there is no argument `i`.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        self.arg_range(i).and_then(|(s, e)| self.raw.get(s..e))
    }

    /// Argument `i` as a zero-copy slice of the raw bytes (empty if there is no argument `i`).
    pub fn arg_bytes(&self, i: usize) -> Bytes {
        match self.arg_range(i) {
            Some((s, e)) if e <= self.raw.len() => self.raw.slice(s..e),
            _ => Bytes::new(),
        }
    }

    /// Whether the command name equals `name`, ASCII case-insensitively.
    #[inline]
    pub fn name_eq_ignore_case(&self, name: &[u8]) -> bool {
        self.argc > 0 && self.arg(0).eq_ignore_ascii_case(name)
    }

    /// All arguments in order, the name first.
    pub fn args(&self) -> Args<'_> {
        Args {
            cmd: self,
            i: 0,
            pos: 0,
        }
    }

    fn arg_range(&self, i: usize) -> Option<(usize, usize)> {
        if i >= self.argc {
            return None;
        }
        if i < INLINE_ARGS {
            return Some(self.inline[i]);
        }
        let mut pos = self.inline[INLINE_ARGS - 1].1 + 2;
        let mut r = None;
        for _ in INLINE_ARGS..=i {
            let (s, e) = next_bulk(&self.raw, pos)?;
            r = Some((s, e));
            pos = e + 2;
        }
        r
    }
}

/// The bulk whose `$` is at `pos` in validated bytes: (start, end) of its content.
#[inline]
fn next_bulk(raw: &[u8], pos: usize) -> Option<(usize, usize)> {
    if raw.get(pos) != Some(&b'$') {
        return None;
    }
    let (len, start) = parse_decimal(raw, pos + 1).ok()??;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    (end <= raw.len()).then_some((start, end))
}

impl std::fmt::Debug for Command {
    /// Shows the name and the argument count, never argument values (they may be secrets).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Command")
            .field("name", &String::from_utf8_lossy(self.arg(0)))
            .field("argc", &self.argc)
            .field("len", &self.raw.len())
            .finish()
    }
}

/// Iterator over a [`Command`]'s arguments.
pub struct Args<'a> {
    cmd: &'a Command,
    i: usize,
    /// Where argument `i`'s header starts once past the inline spans.
    pos: usize,
}

impl<'a> Iterator for Args<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        let c = self.cmd;
        if self.i >= c.argc {
            return None;
        }
        let (s, e) = if self.i < INLINE_ARGS {
            let r = c.inline[self.i];
            self.pos = r.1 + 2;
            r
        } else {
            let r = next_bulk(&c.raw, self.pos)?;
            self.pos = r.1 + 2;
            r
        };
        self.i += 1;
        c.raw.get(s..e)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.cmd.argc - self.i.min(self.cmd.argc);
        (n, Some(n))
    }
}

impl ExactSizeIterator for Args<'_> {}
