//! The pure pieces of the replica side of the replication protocol: reply lines, the `PSYNC` reply, the RDB
//! bulk header (`$<len>` or `$EOF:<mark>`), the diskless end-of-file mark scanner and `REPLCONF ACK`.
//!
//! All of them work on byte buffers and never block or allocate more than the line they return, so they are
//! unit-tested here against the forms `src/replication.c` writes and reads (`syncWithMaster`,
//! `slaveTryPartialResynchronization`, `readSyncBulkPayload`).

use bytes::{Buf, BytesMut};

/// Length of a replication ID and of the diskless EOF mark (`CONFIG_RUN_ID_SIZE`).
pub const RUN_ID_SIZE: usize = 40;

/// A reply line longer than this without a newline is not a Redis reply (the master's own limit for these
/// lines is 1024 bytes in `syncReadLine`; a `-ERR` may be longer, but not this long).
pub const MAX_LINE: usize = 64 * 1024;

/// Why a line could not be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineTooLong(pub usize);

/// Take one line (ending with `\n`, an optional `\r` before it is dropped) from the front of `buf`.
///
/// `Ok(None)`: no complete line yet. An empty line is returned as such: before the `PSYNC` reply and before
/// the RDB's `$` header the master sends a bare `\n` as a keep-alive.
pub fn take_line(buf: &mut BytesMut) -> Result<Option<String>, LineTooLong> {
    match memchr::memchr(b'\n', buf) {
        Some(i) => {
            let mut line = buf.split_to(i + 1);
            line.truncate(i);
            if line.last() == Some(&b'\r') {
                line.truncate(i - 1);
            }
            Ok(Some(String::from_utf8_lossy(&line).into_owned()))
        }
        None if buf.len() > MAX_LINE => Err(LineTooLong(buf.len())),
        None => Ok(None),
    }
}

/// A one-line reply to a handshake command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// `+text`
    Ok(String),
    /// `-text` (the error code and message, without the `-`).
    Err(String),
    /// Anything else (not a status reply).
    Other(String),
}

impl Line {
    pub fn parse(line: &str) -> Line {
        if let Some(t) = line.strip_prefix('+') {
            Line::Ok(t.to_string())
        } else if let Some(t) = line.strip_prefix('-') {
            Line::Err(t.to_string())
        } else {
            Line::Other(line.to_string())
        }
    }
}

/// What an error reply to `AUTH` or `PING` means for us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// `-NOAUTH`, or `-ERR operation not permitted` (before 2.8): a password is required.
    AuthRequired,
    /// `-WRONGPASS`, `-ERR invalid password`, `-ERR invalid username-password pair`, or `AUTH` given to a
    /// master without a password: our credentials are wrong.
    AuthRefused,
    /// `-NOPERM`: the ACL user may not run the command.
    NoPermission,
    /// `-LOADING`, `-NOMASTERLINK`, `-MASTERDOWN`, `-BUSY`: the master cannot serve us now; try again.
    Transient,
    /// Any other error.
    Other,
}

/// Classify an error reply (the text after `-`).
pub fn classify_error(err: &str) -> ErrorKind {
    let code = err.split(' ').next().unwrap_or("");
    let lower = err.to_ascii_lowercase();
    match code {
        "NOAUTH" => ErrorKind::AuthRequired,
        "WRONGPASS" => ErrorKind::AuthRefused,
        "NOPERM" => ErrorKind::NoPermission,
        "LOADING" | "NOMASTERLINK" | "MASTERDOWN" | "BUSY" | "TRYAGAIN" => ErrorKind::Transient,
        _ if lower.starts_with("err operation not permitted") => ErrorKind::AuthRequired,
        _ if lower.starts_with("err invalid password")
            || lower.starts_with("err invalid username-password")
            || (lower.starts_with("err") && lower.contains("without any password configured"))
            || lower.starts_with("err client sent auth, but no password is set") =>
        {
            ErrorKind::AuthRefused
        }
        _ => ErrorKind::Other,
    }
}

/// The master's answer to `PSYNC` (keep-alive newlines already skipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PsyncReply {
    /// `+FULLRESYNC <replid> <offset>`: an RDB follows; after it, the stream continues at `offset`.
    FullResync { replid: String, offset: i64 },
    /// `+CONTINUE [<replid>]`: the stream continues where we asked; with psync2 the (possibly new) replid.
    Continue { replid: Option<String> },
    /// An error or an unexpected reply: the text as received (without a leading `-`).
    Error(String),
}

/// Why a reply line is not what the protocol allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadReply(pub String);

/// Parse the `PSYNC` reply line.
pub fn parse_psync_reply(line: &str) -> Result<PsyncReply, BadReply> {
    if let Some(rest) = line.strip_prefix("+FULLRESYNC") {
        let mut it = rest.split_ascii_whitespace();
        let (Some(replid), Some(offset), None) = (it.next(), it.next(), it.next()) else {
            return Err(BadReply(format!("malformed {line:?}")));
        };
        let offset: i64 = offset
            .parse()
            .map_err(|_| BadReply(format!("bad offset in {line:?}")))?;
        if replid.is_empty() || replid == "?" || offset < 0 {
            return Err(BadReply(format!("malformed {line:?}")));
        }
        return Ok(PsyncReply::FullResync {
            replid: replid.to_string(),
            offset,
        });
    }
    if let Some(rest) = line.strip_prefix("+CONTINUE") {
        if !(rest.is_empty() || rest.starts_with(' ')) {
            return Err(BadReply(format!("malformed {line:?}")));
        }
        let id = rest.trim();
        // Redis takes the new ID only when it is exactly 40 bytes long; so do we.
        let replid = (id.len() == RUN_ID_SIZE).then(|| id.to_string());
        return Ok(PsyncReply::Continue { replid });
    }
    Ok(PsyncReply::Error(
        line.strip_prefix('-').unwrap_or(line).to_string(),
    ))
}

/// How the RDB is framed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RdbHeader {
    /// `$<len>`: exactly `len` bytes follow (disk-backed replication).
    Len(u64),
    /// `$EOF:<40 bytes>`: the RDB is followed by this mark (diskless replication).
    Eof([u8; RUN_ID_SIZE]),
}

/// What a line read while waiting for the RDB means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BulkLine {
    /// An empty line: the master's keep-alive while it prepares the RDB.
    KeepAlive,
    Header(RdbHeader),
    /// `-…`: the master aborted the transfer (e.g. its BGSAVE failed).
    Aborted(String),
}

/// Parse a line read before the RDB payload, as `readSyncBulkPayload` does.
pub fn parse_bulk_line(line: &str) -> Result<BulkLine, BadReply> {
    if line.is_empty() {
        return Ok(BulkLine::KeepAlive);
    }
    if let Some(e) = line.strip_prefix('-') {
        return Ok(BulkLine::Aborted(e.to_string()));
    }
    let Some(rest) = line.strip_prefix('$') else {
        return Err(BadReply(format!(
            "expected the RDB's $ header, got {:?}",
            shorten(line)
        )));
    };
    if let Some(mark) = rest.strip_prefix("EOF:") {
        let m = mark.as_bytes();
        if m.len() < RUN_ID_SIZE {
            return Err(BadReply(format!("EOF mark too short in {line:?}")));
        }
        let mut out = [0u8; RUN_ID_SIZE];
        out.copy_from_slice(&m[..RUN_ID_SIZE]);
        return Ok(BulkLine::Header(RdbHeader::Eof(out)));
    }
    rest.parse::<u64>()
        .map(|n| BulkLine::Header(RdbHeader::Len(n)))
        .map_err(|_| BadReply(format!("bad RDB length in {:?}", shorten(line))))
}

fn shorten(s: &str) -> String {
    if s.len() <= 80 {
        return s.to_string();
    }
    let mut end = 80;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Where the diskless EOF mark is in the received-but-not-yet-emitted bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EofScan {
    /// The mark starts at this index: the bytes before it are the end of the RDB, the 40 bytes of the mark
    /// are dropped, and what follows is already replication stream.
    Found(usize),
    /// No mark yet: this many leading bytes are RDB for sure and may be emitted; the rest (at most 39 bytes)
    /// may be the beginning of the mark and must be kept until more bytes arrive.
    NotYet(usize),
}

/// Look for `mark` in `pending` — the RDB bytes received and not yet emitted. Keep the bytes this does not
/// release at the front of the buffer and append the next read to them: a mark straddling reads is found.
/// Each byte is looked at a bounded number of times (at most 39 bytes are scanned again).
pub fn scan_eof(pending: &[u8], mark: &[u8; RUN_ID_SIZE]) -> EofScan {
    match memchr::memmem::find(pending, mark) {
        Some(i) => EofScan::Found(i),
        None => EofScan::NotYet(pending.len().saturating_sub(RUN_ID_SIZE - 1)),
    }
}

/// Split the first `n` bytes of `buf` off as chunks of at most `max` bytes each (zero-copy).
pub fn split_chunks(buf: &mut BytesMut, mut n: usize, max: usize) -> Vec<bytes::Bytes> {
    let mut out = Vec::with_capacity(n.div_ceil(max.max(1)));
    while n > 0 {
        let k = n.min(max.max(1));
        out.push(buf.split_to(k).freeze());
        n -= k;
    }
    out
}

/// Drop the `n` bytes of the EOF mark after the RDB.
pub fn drop_mark(buf: &mut BytesMut) {
    buf.advance(RUN_ID_SIZE.min(buf.len()));
}

/// `REPLCONF ACK <offset>` as RESP.
pub fn encode_ack(out: &mut BytesMut, offset: i64) {
    let n = offset.to_string();
    crate::resp::encode_command(out, &[b"REPLCONF", b"ACK", n.as_bytes()]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_with_and_without_cr_and_keepalives() {
        let mut b = BytesMut::from(&b"\n\n+PONG\r\n-ERR x y\r\n+FULL"[..]);
        assert_eq!(take_line(&mut b).unwrap().as_deref(), Some(""));
        assert_eq!(take_line(&mut b).unwrap().as_deref(), Some(""));
        assert_eq!(take_line(&mut b).unwrap().as_deref(), Some("+PONG"));
        assert_eq!(take_line(&mut b).unwrap().as_deref(), Some("-ERR x y"));
        assert_eq!(take_line(&mut b).unwrap(), None);
        assert_eq!(&b[..], b"+FULL");
        let mut big = BytesMut::from(&vec![b'a'; MAX_LINE + 1][..]);
        assert_eq!(take_line(&mut big), Err(LineTooLong(MAX_LINE + 1)));
        // Non-UTF-8 bytes do not fail: the line is for messages.
        let mut b = BytesMut::from(&b"-ERR \xff\r\n"[..]);
        assert!(take_line(&mut b).unwrap().unwrap().starts_with("-ERR "));
    }

    #[test]
    fn line_kinds_and_error_classes() {
        assert_eq!(Line::parse("+OK"), Line::Ok("OK".into()));
        assert_eq!(Line::parse("-NOAUTH x"), Line::Err("NOAUTH x".into()));
        assert_eq!(Line::parse("$5"), Line::Other("$5".into()));
        for (e, k) in [
            ("NOAUTH Authentication required.", ErrorKind::AuthRequired),
            ("ERR operation not permitted", ErrorKind::AuthRequired),
            (
                "WRONGPASS invalid username-password pair or user is disabled.",
                ErrorKind::AuthRefused,
            ),
            ("ERR invalid password", ErrorKind::AuthRefused),
            ("ERR invalid username-password pair", ErrorKind::AuthRefused),
            ("ERR Client sent AUTH, but no password is set", ErrorKind::AuthRefused),
            (
                "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
                ErrorKind::AuthRefused,
            ),
            (
                "NOPERM this user has no permissions to run the 'psync' command",
                ErrorKind::NoPermission,
            ),
            ("LOADING Redis is loading the dataset in memory", ErrorKind::Transient),
            ("NOMASTERLINK Can't SYNC while not connected with my master", ErrorKind::Transient),
            ("ERR unknown command 'PSYNC'", ErrorKind::Other),
        ] {
            assert_eq!(classify_error(e), k, "{e}");
        }
    }

    #[test]
    fn psync_replies() {
        let id = "8de1d9cc9e10c8b4b2d2a4a2e1e0e4f8a1b2c3d4";
        assert_eq!(
            parse_psync_reply(&format!("+FULLRESYNC {id} 1234")).unwrap(),
            PsyncReply::FullResync {
                replid: id.into(),
                offset: 1234
            }
        );
        assert_eq!(
            parse_psync_reply("+CONTINUE").unwrap(),
            PsyncReply::Continue { replid: None }
        );
        assert_eq!(
            parse_psync_reply(&format!("+CONTINUE {id}")).unwrap(),
            PsyncReply::Continue {
                replid: Some(id.into())
            }
        );
        // A CONTINUE id that is not 40 bytes is ignored, as Redis does.
        assert_eq!(
            parse_psync_reply("+CONTINUE abc").unwrap(),
            PsyncReply::Continue { replid: None }
        );
        assert_eq!(
            parse_psync_reply("-ERR unknown command 'PSYNC'").unwrap(),
            PsyncReply::Error("ERR unknown command 'PSYNC'".into())
        );
        assert_eq!(
            parse_psync_reply("+WHAT").unwrap(),
            PsyncReply::Error("+WHAT".into())
        );
        for bad in [
            "+FULLRESYNC",
            "+FULLRESYNC abc",
            "+FULLRESYNC abc x",
            "+FULLRESYNC abc 1 2",
            "+FULLRESYNC ? -1",
            "+CONTINUEx",
        ] {
            assert!(parse_psync_reply(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bulk_lines() {
        assert_eq!(parse_bulk_line("").unwrap(), BulkLine::KeepAlive);
        assert_eq!(
            parse_bulk_line("$175").unwrap(),
            BulkLine::Header(RdbHeader::Len(175))
        );
        let mark = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            parse_bulk_line(&format!("$EOF:{mark}")).unwrap(),
            BulkLine::Header(RdbHeader::Eof(mark.as_bytes().try_into().unwrap()))
        );
        assert_eq!(
            parse_bulk_line("-ERR BGSAVE failed").unwrap(),
            BulkLine::Aborted("ERR BGSAVE failed".into())
        );
        for bad in [
            "$",
            "$-1",
            "$x",
            "$EOF:short",
            "+OK",
            "HTTP/1.1 400 Bad Request",
        ] {
            assert!(parse_bulk_line(bad).is_err(), "{bad}");
        }
    }

    /// Feed `data` (RDB + mark + stream) in reads of `step` bytes, as the link does: keep what `scan_eof`
    /// does not release at the front of the buffer. The RDB comes out exactly, the rest is stream.
    fn run_scanner(rdb: &[u8], mark: &[u8; 40], tail: &[u8], step: usize) -> (Vec<u8>, Vec<u8>) {
        let mut data = rdb.to_vec();
        data.extend_from_slice(mark);
        data.extend_from_slice(tail);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut reads = data.chunks(step);
        loop {
            match scan_eof(&buf, mark) {
                EofScan::Found(i) => {
                    for c in split_chunks(&mut buf, i, 7) {
                        out.extend_from_slice(&c);
                    }
                    drop_mark(&mut buf);
                    let mut rest = buf.to_vec();
                    for r in reads {
                        rest.extend_from_slice(r);
                    }
                    return (out, rest);
                }
                EofScan::NotYet(n) => {
                    assert!(buf.len() - n < RUN_ID_SIZE, "holds at most 39 bytes");
                    for c in split_chunks(&mut buf, n, 7) {
                        assert!(c.len() <= 7);
                        out.extend_from_slice(&c);
                    }
                    let r = reads.next().expect("mark never found");
                    buf.extend_from_slice(r);
                }
            }
        }
    }

    #[test]
    fn eof_mark_straddling_every_boundary() {
        let mark: [u8; 40] = *b"f1e2d3c4b5a69788796a5b4c3d2e1f0011223344";
        // The RDB contains near-misses: a prefix of the mark, and the mark minus its last byte.
        let mut rdb = b"REDIS0011\xfa\x09redis-ver".to_vec();
        rdb.extend_from_slice(&mark[..20]);
        rdb.extend_from_slice(b"middle");
        rdb.extend_from_slice(&mark[..39]);
        rdb.extend_from_slice(b"\xff12345678");
        let tail = b"*1\r\n$4\r\nPING\r\n";
        for step in 1..=rdb.len() + 60 {
            let (got, rest) = run_scanner(&rdb, &mark, tail, step);
            assert_eq!(got, rdb, "step {step}");
            assert_eq!(rest, tail, "step {step}");
        }
        // Empty RDB and nothing after the mark.
        for step in 1..50 {
            assert_eq!(run_scanner(b"", &mark, b"", step), (vec![], vec![]));
        }
    }

    #[test]
    fn scan_eof_positions() {
        let mark = [b'm'; 40];
        assert_eq!(scan_eof(b"", &mark), EofScan::NotYet(0));
        assert_eq!(scan_eof(&[b'x'; 39], &mark), EofScan::NotYet(0));
        assert_eq!(scan_eof(&[b'x'; 100], &mark), EofScan::NotYet(61));
        let mut v = vec![b'x'; 10];
        v.extend_from_slice(&mark);
        assert_eq!(scan_eof(&v, &mark), EofScan::Found(10));
    }

    #[test]
    fn chunks_and_ack() {
        let mut b = BytesMut::from(&[7u8; 25][..]);
        let c = split_chunks(&mut b, 20, 8);
        assert_eq!(c.iter().map(|c| c.len()).collect::<Vec<_>>(), [8, 8, 4]);
        assert_eq!(b.len(), 5);
        assert!(split_chunks(&mut b, 0, 8).is_empty());
        let mut out = BytesMut::new();
        encode_ack(&mut out, 1234);
        assert_eq!(
            &out[..],
            b"*3\r\n$8\r\nREPLCONF\r\n$3\r\nACK\r\n$4\r\n1234\r\n"
        );
    }
}
