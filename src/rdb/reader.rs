//! The RDB primitives (`rdbLoadLen`, strings with their integer and LZF encodings, doubles, times, stream
//! IDs) read from a byte slice that may be incomplete: a read that runs past the end says how many bytes
//! it needs ([`Stop::Need`]) instead of failing, so the push-fed decoder can wait and retry.

use std::borrow::Cow;

use bytes::Bytes;

use super::lzf;
use super::value::StreamId;
use super::RdbError;

/// Why a read stopped.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The slice must be at least this long (from its start) before the read can complete.
    Need(usize),
    Err(RdbError),
}

impl From<RdbError> for Stop {
    fn from(e: RdbError) -> Self {
        Stop::Err(e)
    }
}

pub(crate) type R<T> = Result<T, Stop>;

/// A length field: a length, or the special string encoding that follows (`11|xxxxxx`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LenEnc {
    Len(u64),
    Enc(u8),
}

/// Where an RDB string is and how it is stored. Positions are indexes into the slice that was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RStr {
    Raw { start: usize, len: usize },
    Int(i64),
    Lzf { start: usize, clen: usize, len: u64 },
}

/// A read position in a slice whose first byte is at `base` in the whole input.
pub(crate) struct Cur<'a> {
    pub b: &'a [u8],
    pub pos: usize,
    pub base: u64,
}

impl<'a> Cur<'a> {
    pub fn new(b: &'a [u8], pos: usize, base: u64) -> Self {
        Cur { b, pos, base }
    }

    /// Absolute input offset of the read position.
    pub fn off(&self) -> u64 {
        self.base + self.pos as u64
    }

    pub fn corrupt(&self, what: &'static str, detail: impl Into<String>) -> Stop {
        Stop::Err(RdbError::Corrupt {
            what,
            offset: self.off(),
            detail: detail.into(),
        })
    }

    pub fn at_end(&self) -> bool {
        self.pos >= self.b.len()
    }

    fn need(&self, n: u64) -> R<usize> {
        let n = usize::try_from(n).map_err(|_| Stop::Need(usize::MAX))?;
        match self.pos.checked_add(n) {
            Some(end) if end <= self.b.len() => Ok(end),
            Some(end) => Err(Stop::Need(end)),
            None => Err(Stop::Need(usize::MAX)),
        }
    }

    pub fn u8(&mut self) -> R<u8> {
        let end = self.need(1)?;
        let v = self.b[self.pos];
        self.pos = end;
        Ok(v)
    }

    pub fn take(&mut self, n: u64) -> R<&'a [u8]> {
        let end = self.need(n)?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    pub fn fixed<const N: usize>(&mut self) -> R<[u8; N]> {
        let s = self.take(N as u64)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub fn u32_le(&mut self) -> R<u32> {
        Ok(u32::from_le_bytes(self.fixed()?))
    }

    pub fn i64_le(&mut self) -> R<i64> {
        Ok(i64::from_le_bytes(self.fixed()?))
    }

    pub fn u64_le(&mut self) -> R<u64> {
        Ok(u64::from_le_bytes(self.fixed()?))
    }

    pub fn f64_le(&mut self) -> R<f64> {
        Ok(f64::from_le_bytes(self.fixed()?))
    }

    /// `rdbLoadLen`: `00|6 bits`, `01|6 bits + 8 bits`, `0x80` + u32 BE, `0x81` + u64 BE, `11|encoding`.
    pub fn len_enc(&mut self) -> R<LenEnc> {
        let start = self.pos;
        let first = self.u8()?;
        let r = match first >> 6 {
            0 => LenEnc::Len((first & 0x3F) as u64),
            1 => LenEnc::Len((((first & 0x3F) as u64) << 8) | self.u8()? as u64),
            3 => LenEnc::Enc(first & 0x3F),
            _ => match first {
                0x80 => LenEnc::Len(u32::from_be_bytes(self.fixed()?) as u64),
                0x81 => LenEnc::Len(u64::from_be_bytes(self.fixed()?)),
                _ => {
                    self.pos = start;
                    return Err(
                        self.corrupt("length", format!("unknown length encoding 0x{first:02x}"))
                    );
                }
            },
        };
        Ok(r)
    }

    /// A plain length (a string encoding here is corruption).
    pub fn len(&mut self, what: &'static str) -> R<u64> {
        let start = self.pos;
        match self.len_enc()? {
            LenEnc::Len(n) => Ok(n),
            LenEnc::Enc(e) => {
                self.pos = start;
                Err(self.corrupt(
                    what,
                    format!("string encoding 0x{e:02x} where a length belongs"),
                ))
            }
        }
    }

    /// An RDB string (`rdbGenericLoadStringObject`): raw, integer-encoded or LZF-compressed.
    pub fn string(&mut self) -> R<RStr> {
        let start = self.pos;
        match self.len_enc()? {
            LenEnc::Len(n) => {
                let s = self.pos;
                self.need(n)?;
                self.pos += n as usize;
                Ok(RStr::Raw {
                    start: s,
                    len: n as usize,
                })
            }
            LenEnc::Enc(0) => Ok(RStr::Int(self.u8()? as i8 as i64)),
            LenEnc::Enc(1) => Ok(RStr::Int(i16::from_le_bytes(self.fixed()?) as i64)),
            LenEnc::Enc(2) => Ok(RStr::Int(i32::from_le_bytes(self.fixed()?) as i64)),
            LenEnc::Enc(3) => {
                let clen = self.len("LZF string")?;
                let len = self.len("LZF string")?;
                let s = self.pos;
                self.need(clen)?;
                if len > lzf::max_expansion(clen) {
                    self.pos = start;
                    return Err(self.corrupt(
                        "LZF string",
                        format!("{clen} compressed bytes cannot hold {len} bytes"),
                    ));
                }
                self.pos += clen as usize;
                Ok(RStr::Lzf {
                    start: s,
                    clen: clen as usize,
                    len,
                })
            }
            LenEnc::Enc(e) => {
                self.pos = start;
                Err(Stop::Err(RdbError::UnknownEncoding {
                    what: "string",
                    byte: 0xC0 | e,
                    offset: self.off(),
                }))
            }
        }
    }

    /// `rdbLoadDoubleValue`: a length byte (253 NaN, 254 +inf, 255 -inf) and that many ASCII characters.
    pub fn double_str(&mut self) -> R<f64> {
        let start = self.pos;
        let n = self.u8()?;
        match n {
            253 => Ok(f64::NAN),
            254 => Ok(f64::INFINITY),
            255 => Ok(f64::NEG_INFINITY),
            _ => {
                let s = self.take(n as u64)?;
                match std::str::from_utf8(s)
                    .ok()
                    .and_then(|t| t.trim().parse::<f64>().ok())
                {
                    Some(v) => Ok(v),
                    None => {
                        self.pos = start;
                        Err(self.corrupt(
                            "double",
                            format!("not a number: {:?}", String::from_utf8_lossy(s)),
                        ))
                    }
                }
            }
        }
    }

    /// A stream ID as stored in keys and PELs: 128 bits, big-endian ms then seq.
    pub fn stream_id(&mut self) -> R<StreamId> {
        let a: [u8; 16] = self.fixed()?;
        Ok(StreamId {
            ms: u64::from_be_bytes(a[..8].try_into().unwrap_or_default()),
            seq: u64::from_be_bytes(a[8..].try_into().unwrap_or_default()),
        })
    }
}

/// The bytes of a string read from `owner` (the same bytes the [`Cur`] read): raw strings are zero-copy
/// slices, integers their decimal form, LZF strings decompressed. `base` is the input offset of `owner[0]`.
pub(crate) fn str_bytes(owner: &Bytes, s: RStr, base: u64) -> Result<Bytes, RdbError> {
    match s {
        RStr::Raw { start, len } => Ok(owner.slice(start..start + len)),
        _ => Ok(Bytes::from(str_cow(owner, s, base)?.into_owned())),
    }
}

/// Like [`str_bytes`] for a plain slice: borrowed when raw.
pub(crate) fn str_cow(b: &[u8], s: RStr, base: u64) -> Result<Cow<'_, [u8]>, RdbError> {
    match s {
        RStr::Raw { start, len } => Ok(Cow::Borrowed(&b[start..start + len])),
        RStr::Int(i) => Ok(Cow::Owned(i.to_string().into_bytes())),
        RStr::Lzf { start, clen, len } => {
            let len = usize::try_from(len).map_err(|_| RdbError::Corrupt {
                what: "LZF string",
                offset: base + start as u64,
                detail: "length does not fit in memory".into(),
            })?;
            lzf::decompress(&b[start..start + clen], len)
                .map(Cow::Owned)
                .map_err(|e| RdbError::Corrupt {
                    what: "LZF string",
                    offset: base + start as u64,
                    detail: e.to_string(),
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_all_forms() {
        let b = [
            0x05, 0x41, 0x02, 0x80, 0, 1, 0, 0, 0x81, 0, 0, 0, 1, 0, 0, 0, 0,
        ];
        let mut c = Cur::new(&b, 0, 0);
        assert_eq!(c.len("t").unwrap(), 5);
        assert_eq!(c.len("t").unwrap(), 0x102);
        assert_eq!(c.len("t").unwrap(), 65536);
        assert_eq!(c.len("t").unwrap(), 1 << 32);
        assert!(matches!(c.len("t"), Err(Stop::Need(18))));
        let mut c = Cur::new(&[0x82], 0, 10);
        assert!(matches!(
            c.len("t"),
            Err(Stop::Err(RdbError::Corrupt { offset: 10, .. }))
        ));
    }

    #[test]
    fn strings_all_encodings() {
        let b = [
            0x03, b'a', b'b', b'c', 0xC0, 0xFF, 0xC1, 0x00, 0x80, 0xC2, 1, 0, 0, 0,
        ];
        let mut c = Cur::new(&b, 0, 0);
        assert_eq!(c.string().unwrap(), RStr::Raw { start: 1, len: 3 });
        assert_eq!(c.string().unwrap(), RStr::Int(-1));
        assert_eq!(c.string().unwrap(), RStr::Int(-32768));
        assert_eq!(c.string().unwrap(), RStr::Int(1));
        // LZF "aaaa": literal 'a' then a back reference of 3 at distance 1.
        let z = [0xC3, 0x04, 0x04, 0x00, b'a', 0x20, 0x00];
        let mut c = Cur::new(&z, 0, 0);
        let s = c.string().unwrap();
        assert_eq!(&str_cow(&z, s, 0).unwrap()[..], b"aaaa");
        assert!(matches!(
            Cur::new(&z[..5], 0, 0).string(),
            Err(Stop::Need(7))
        ));
        assert!(matches!(
            Cur::new(&[0xC4], 0, 0).string(),
            Err(Stop::Err(RdbError::UnknownEncoding { .. }))
        ));
    }

    #[test]
    fn doubles() {
        let b = [3, b'1', b'.', b'5', 253, 254, 255, 2, b'x', b'y'];
        let mut c = Cur::new(&b, 0, 0);
        assert_eq!(c.double_str().unwrap(), 1.5);
        assert!(c.double_str().unwrap().is_nan());
        assert_eq!(c.double_str().unwrap(), f64::INFINITY);
        assert_eq!(c.double_str().unwrap(), f64::NEG_INFINITY);
        assert!(matches!(c.double_str(), Err(Stop::Err(_))));
    }
}
