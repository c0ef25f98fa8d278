//! LZF decompression (the format of liblzf's `lzf_d.c`, which Redis uses for compressed RDB strings).
//!
//! Our own small decompressor rather than the `lzf` crate: that crate is marked deprecated by its author,
//! allocates the full claimed output length before looking at the input (a corrupt length field would
//! allocate gigabytes), and uses `unsafe`. This one is safe, checks every bound, and also comes as a
//! [`Stream`] that decompresses piece by piece with only the 8 KiB back-reference window kept, so a big
//! compressed string never has to be held whole.
//!
//! Format: a sequence of tokens. A control byte `c < 32` is a literal run of `c + 1` bytes that follow. A
//! control byte `c >= 32` is a back reference: length `c >> 5` (7 means "add the next byte"), plus 2;
//! distance `((c & 0x1f) << 8) + next byte + 1` bytes back in the output.

use std::fmt;

/// The largest distance a back reference can reach.
pub const WINDOW: usize = 8192;

/// Why a compressed string could not be decompressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LzfError {
    /// The input ended inside a token.
    TruncatedInput,
    /// The output would be longer than the stated length.
    OutputOverrun,
    /// The output is shorter than the stated length.
    OutputShort { got: usize, expected: usize },
    /// A back reference points before the start of the output.
    BadReference { at: usize },
}

impl fmt::Display for LzfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LzfError::TruncatedInput => write!(f, "compressed data ends inside a token"),
            LzfError::OutputOverrun => {
                write!(f, "decompressed data is longer than its stated length")
            }
            LzfError::OutputShort { got, expected } => {
                write!(f, "decompressed {got} bytes, stated length is {expected}")
            }
            LzfError::BadReference { at } => {
                write!(
                    f,
                    "back reference before the start of the output at input byte {at}"
                )
            }
        }
    }
}

impl std::error::Error for LzfError {}

/// The most output `clen` compressed bytes can produce: a 3-byte back reference yields at most 264 bytes.
pub fn max_expansion(clen: u64) -> u64 {
    clen.saturating_mul(88)
}

/// Decompress `input`, which must decompress to exactly `out_len` bytes.
pub fn decompress(input: &[u8], out_len: usize) -> Result<Vec<u8>, LzfError> {
    if out_len as u64 > max_expansion(input.len() as u64) {
        return Err(LzfError::OutputOverrun);
    }
    let mut out = Vec::with_capacity(out_len);
    let mut ip = 0;
    while ip < input.len() {
        let used = token(input, ip, &mut out, 0, out_len)?.ok_or(LzfError::TruncatedInput)?;
        ip += used;
    }
    if out.len() != out_len {
        return Err(LzfError::OutputShort {
            got: out.len(),
            expected: out_len,
        });
    }
    Ok(out)
}

/// Decode one token of `input` starting at `ip`, appending to `out`. `out_base` is how many output bytes
/// came before `out[0]` (only for the overrun check against `out_len`, the total stated length). Returns
/// the input bytes used, or `None` if the token is not complete in `input`.
fn token(
    input: &[u8],
    ip: usize,
    out: &mut Vec<u8>,
    out_base: usize,
    out_len: usize,
) -> Result<Option<usize>, LzfError> {
    let ctrl = input[ip] as usize;
    let produced = out_base + out.len();
    if ctrl < 32 {
        let run = ctrl + 1;
        if ip + 1 + run > input.len() {
            return Ok(None);
        }
        if produced + run > out_len {
            return Err(LzfError::OutputOverrun);
        }
        out.extend_from_slice(&input[ip + 1..ip + 1 + run]);
        return Ok(Some(1 + run));
    }
    let mut len = ctrl >> 5;
    let mut p = ip + 1;
    if len == 7 {
        let Some(&b) = input.get(p) else {
            return Ok(None);
        };
        len += b as usize;
        p += 1;
    }
    let Some(&lo) = input.get(p) else {
        return Ok(None);
    };
    p += 1;
    let dist = ((ctrl & 0x1f) << 8) + lo as usize + 1;
    let len = len + 2;
    if produced + len > out_len {
        return Err(LzfError::OutputOverrun);
    }
    if dist > out.len() {
        return Err(LzfError::BadReference { at: ip });
    }
    let start = out.len() - dist;
    if dist >= len {
        out.extend_from_within(start..start + len);
    } else {
        // Overlapping copy: each byte may be one this copy just wrote.
        for i in 0..len {
            let b = out[start + i];
            out.push(b);
        }
    }
    Ok(Some(p - ip))
}

/// Incremental decompression of one compressed string of known compressed and output lengths.
///
/// Feed compressed bytes with [`Stream::feed`] (it uses whole tokens only and says how many bytes it
/// used); take output with [`Stream::take`]. Memory: the output not yet taken plus the 8 KiB window.
#[derive(Debug)]
pub struct Stream {
    /// `buf[..keep]` is history (already taken), `buf[keep..]` output not yet taken.
    buf: Vec<u8>,
    keep: usize,
    /// Output bytes before `buf[0]`.
    base: usize,
    out_len: usize,
    /// Compressed length, and how much of it is still expected.
    clen: u64,
    in_left: u64,
}

impl Stream {
    /// A string of `clen` compressed bytes that decompresses to `out_len` bytes.
    pub fn new(clen: u64, out_len: usize) -> Result<Stream, LzfError> {
        if out_len as u64 > max_expansion(clen) {
            return Err(LzfError::OutputOverrun);
        }
        Ok(Stream {
            buf: Vec::new(),
            keep: 0,
            base: 0,
            out_len,
            clen,
            in_left: clen,
        })
    }

    /// Compressed bytes still expected.
    pub fn input_left(&self) -> u64 {
        self.in_left
    }

    /// Compressed bytes used so far.
    pub fn input_used(&self) -> u64 {
        self.clen - self.in_left
    }

    /// Output bytes produced and not yet taken.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.keep
    }

    /// Decompress whole tokens from `input` (at most the compressed bytes still expected) until `pending()`
    /// reaches `want` or the input has no whole token left. Returns the input bytes used. A
    /// [`LzfError::BadReference`] names its position in the whole compressed string (not in `input`), the
    /// same however the string was fed.
    pub fn feed(&mut self, input: &[u8], want: usize) -> Result<usize, LzfError> {
        let limit = input
            .len()
            .min(usize::try_from(self.in_left).unwrap_or(usize::MAX));
        let input = &input[..limit];
        let used_before = self.input_used() as usize;
        let mut ip = 0;
        while ip < input.len() && self.pending() < want {
            let t = token(input, ip, &mut self.buf, self.base, self.out_len).map_err(|e| match e {
                LzfError::BadReference { at } => LzfError::BadReference {
                    at: used_before + at,
                },
                e => e,
            });
            match t? {
                Some(used) => ip += used,
                None => {
                    if input.len() as u64 == self.in_left {
                        return Err(LzfError::TruncatedInput);
                    }
                    break;
                }
            }
        }
        self.in_left -= ip as u64;
        if self.in_left == 0 && self.base + self.buf.len() != self.out_len {
            return Err(LzfError::OutputShort {
                got: self.base + self.buf.len(),
                expected: self.out_len,
            });
        }
        Ok(ip)
    }

    /// Whether every output byte has been produced.
    pub fn is_complete(&self) -> bool {
        self.in_left == 0
    }

    /// Take up to `max` bytes of pending output.
    pub fn take(&mut self, max: usize) -> Vec<u8> {
        let n = self.pending().min(max);
        let out = self.buf[self.keep..self.keep + n].to_vec();
        self.keep += n;
        // Keep only the window of history.
        if self.keep > 2 * WINDOW && self.keep > self.buf.len() / 2 {
            let drop = self.keep - WINDOW;
            self.buf.drain(..drop);
            self.base += drop;
            self.keep -= drop;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny compressor for tests: literal runs and back references found by brute force.
    fn compress(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut lit: Vec<u8> = Vec::new();
        let flush = |lit: &mut Vec<u8>, out: &mut Vec<u8>| {
            for c in lit.chunks(32) {
                out.push((c.len() - 1) as u8);
                out.extend_from_slice(c);
            }
            lit.clear();
        };
        let mut i = 0;
        while i < data.len() {
            let mut best = (0, 0);
            let from = i.saturating_sub(1024);
            for s in from..i {
                let mut l = 0;
                while i + l < data.len() && l < 264 && data[s + l] == data[i + l] {
                    l += 1;
                }
                if l > best.0 {
                    best = (l, i - s);
                }
            }
            if best.0 >= 3 {
                flush(&mut lit, &mut out);
                let (len, dist) = (best.0 - 2, best.1 - 1);
                if len < 7 {
                    out.push(((len << 5) | (dist >> 8)) as u8);
                } else {
                    out.push(((7 << 5) | (dist >> 8)) as u8);
                    out.push((len - 7) as u8);
                }
                out.push((dist & 0xff) as u8);
                i += best.0;
            } else {
                lit.push(data[i]);
                i += 1;
            }
        }
        flush(&mut lit, &mut out);
        out
    }

    #[test]
    fn roundtrip_whole_and_streamed() {
        let mut data = Vec::new();
        for i in 0..2_000u32 {
            data.extend_from_slice(format!("k{} ", i % 977).as_bytes());
        }
        data.extend(std::iter::repeat(b'a').take(5000));
        let c = compress(&data);
        assert!(c.len() < data.len());
        assert_eq!(decompress(&c, data.len()).unwrap(), data);

        for step in [1usize, 7, 4096] {
            let mut s = Stream::new(c.len() as u64, data.len()).unwrap();
            let mut got = Vec::new();
            let (mut fed, mut avail) = (0, 0);
            while !s.is_complete() || s.pending() > 0 {
                // Input available: what the stream did not use yet, plus `step` more bytes per round.
                avail = (avail + step).min(c.len());
                let used = s.feed(&c[fed..avail], 1000).unwrap();
                fed += used;
                got.extend(s.take(1000));
                if used == 0 && avail == c.len() && s.pending() == 0 && !s.is_complete() {
                    panic!("stuck");
                }
            }
            assert_eq!(got, data, "step {step}");
        }
    }

    #[test]
    fn corrupt_inputs_are_errors() {
        assert_eq!(decompress(&[0x05, b'a'], 6), Err(LzfError::TruncatedInput));
        assert_eq!(
            decompress(&[0x00, b'a'], 2),
            Err(LzfError::OutputShort {
                got: 1,
                expected: 2
            })
        );
        assert_eq!(
            decompress(&[0x01, b'a', b'b'], 1),
            Err(LzfError::OutputOverrun)
        );
        // Back reference with nothing before it.
        assert_eq!(
            decompress(&[0x20, 0x00], 3),
            Err(LzfError::BadReference { at: 0 })
        );
        // A stated length no input could produce is refused before allocating.
        assert_eq!(
            decompress(&[0x00, b'a'], 1 << 40),
            Err(LzfError::OutputOverrun)
        );
        assert!(decompress(&[0xe0], 10).is_err());
    }
}
