//! Protocol errors with the byte offset where the input went wrong.

use std::fmt;

/// A byte as shown in an error message: printable ASCII as itself, anything else escaped.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ShownByte(pub u8);

impl fmt::Display for ShownByte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "'{}'", self.0.escape_ascii())
    }
}

impl fmt::Debug for ShownByte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A malformed RESP input. Every variant carries `offset`: the index, in the buffer handed to the decoder, of
/// the first byte that cannot belong to a valid frame (for a length or count: the offending byte of the
/// number). Messages never quote payload bytes beyond the single offending byte.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    /// A frame started with a byte that is not a type this parser accepts here.
    #[error("byte {offset}: expected {expected}, found {found}")]
    UnexpectedByte {
        offset: usize,
        expected: &'static str,
        found: ShownByte,
    },
    /// The element count of an array (`*N`) or aggregate is not a valid count.
    #[error("byte {offset}: invalid multibulk length")]
    BadCount { offset: usize },
    /// The length of a bulk string (`$N`) is not a valid length.
    #[error("byte {offset}: invalid bulk length")]
    BadLength { offset: usize },
    /// A bulk string is longer than the configured maximum (Redis' `proto-max-bulk-len`).
    #[error("byte {offset}: bulk length {len} exceeds the limit of {max} bytes")]
    BulkTooLong { offset: usize, len: u64, max: u64 },
    /// A line or a bulk string is not terminated by CRLF where one must be.
    #[error("byte {offset}: expected CRLF")]
    MissingCrlf { offset: usize },
    /// An integer reply (`:N`) is not a canonical 64-bit decimal.
    #[error("byte {offset}: invalid integer")]
    BadInteger { offset: usize },
    /// Aggregates nested deeper than the limit.
    #[error("byte {offset}: aggregates nested deeper than {max}")]
    TooDeep { offset: usize, max: usize },
    /// A RESP3 value whose content is invalid for its type (boolean, verbatim string, big number, streamed
    /// aggregate).
    #[error("byte {offset}: invalid {what}")]
    Invalid { offset: usize, what: &'static str },
}

impl RespError {
    /// Index of the offending byte in the buffer given to the decoder.
    pub fn offset(&self) -> usize {
        match *self {
            RespError::UnexpectedByte { offset, .. }
            | RespError::BadCount { offset }
            | RespError::BadLength { offset }
            | RespError::BulkTooLong { offset, .. }
            | RespError::MissingCrlf { offset }
            | RespError::BadInteger { offset }
            | RespError::TooDeep { offset, .. }
            | RespError::Invalid { offset, .. } => offset,
        }
    }

    /// The same error with its offset moved by `base` (for a buffer that starts `base` bytes into a larger one).
    pub fn shifted(mut self, base: usize) -> Self {
        match &mut self {
            RespError::UnexpectedByte { offset, .. }
            | RespError::BadCount { offset }
            | RespError::BadLength { offset }
            | RespError::BulkTooLong { offset, .. }
            | RespError::MissingCrlf { offset }
            | RespError::BadInteger { offset }
            | RespError::TooDeep { offset, .. }
            | RespError::Invalid { offset, .. } => *offset = offset.saturating_add(base),
        }
        self
    }
}

/// Parses a CRLF-terminated decimal starting at `buf[start]` with the grammar of Redis' `string2ll`:
/// `0` or `-?[1-9][0-9]*`, within `i64`. Returns the value and the index just past the LF, `Ok(None)` if the
/// bytes so far are a valid prefix, or `Err(index)` of the first byte that makes it invalid.
#[inline]
pub(crate) fn parse_decimal(buf: &[u8], start: usize) -> Result<Option<(i64, usize)>, usize> {
    let mut i = start;
    let neg = match buf.get(i) {
        None => return Ok(None),
        Some(b'-') => {
            i += 1;
            true
        }
        Some(_) => false,
    };
    let first = i;
    let mut v: u64 = 0;
    loop {
        match buf.get(i) {
            None => return Ok(None),
            Some(&c) if c.is_ascii_digit() => {
                // No leading zero, no "-0": only a lone "0" starts with '0'.
                if i > first && buf[first] == b'0' || neg && c == b'0' && i == first {
                    return Err(i);
                }
                v = match v
                    .checked_mul(10)
                    .and_then(|v| v.checked_add(u64::from(c - b'0')))
                {
                    Some(v) if v <= 1 << 63 => v,
                    _ => return Err(i),
                };
                i += 1;
            }
            Some(b'\r') if i > first => {
                match buf.get(i + 1) {
                    None => return Ok(None),
                    Some(b'\n') => {}
                    Some(_) => return Err(i + 1),
                }
                let value = if neg {
                    0i64.wrapping_sub_unsigned(v)
                } else if v > i64::MAX as u64 {
                    return Err(i - 1);
                } else {
                    v as i64
                };
                return Ok(Some((value, i + 2)));
            }
            Some(_) => return Err(i),
        }
    }
}
