//! Readers for the compact encodings Redis stores as one RDB string: ziplist, listpack, intset, zipmap.
//!
//! Every read is bounds-checked; corrupt input is an [`RdbError::Corrupt`] naming the encoding, the byte
//! offset (`base` + position inside the blob) and what is wrong, never a panic. Elements borrow from the
//! blob (strings) or are integers, as the encodings store them.

use super::RdbError;

/// One element of a compact encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem<'a> {
    Str(&'a [u8]),
    Int(i64),
}

impl Elem<'_> {
    /// The element as Redis shows it: integers in decimal.
    pub fn to_vec(self) -> Vec<u8> {
        match self {
            Elem::Str(s) => s.to_vec(),
            Elem::Int(i) => i.to_string().into_bytes(),
        }
    }

    /// The element as an integer (an integer encoding, or a string holding a decimal integer).
    pub fn as_int(self) -> Option<i64> {
        match self {
            Elem::Int(i) => Some(i),
            Elem::Str(s) => std::str::from_utf8(s).ok()?.parse().ok(),
        }
    }
}

fn corrupt(what: &'static str, base: u64, at: usize, detail: impl Into<String>) -> RdbError {
    RdbError::Corrupt {
        what,
        offset: base + at as u64,
        detail: detail.into(),
    }
}

fn get<'a>(
    b: &'a [u8],
    at: usize,
    n: usize,
    what: &'static str,
    base: u64,
) -> Result<&'a [u8], RdbError> {
    at.checked_add(n)
        .and_then(|end| b.get(at..end))
        .ok_or_else(|| {
            corrupt(
                what,
                base,
                at,
                format!("{n} bytes needed, {} left", b.len().saturating_sub(at)),
            )
        })
}

fn le(b: &[u8]) -> u64 {
    b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | x as u64)
}

// ---------------------------------------------------------------------------------------------- listpack

const LP: &str = "listpack";

/// Elements of a listpack: `total_bytes u32 | num_elements u16 | entries | 0xFF`.
pub fn listpack(b: &[u8], base: u64) -> Result<Vec<Elem<'_>>, RdbError> {
    let mut out = Vec::new();
    listpack_each(b, base, |e| {
        out.push(e);
        Ok(())
    })?;
    Ok(out)
}

/// Call `f` on each element of a listpack, in order.
pub fn listpack_each<'a>(
    b: &'a [u8],
    base: u64,
    mut f: impl FnMut(Elem<'a>) -> Result<(), RdbError>,
) -> Result<(), RdbError> {
    let hdr = get(b, 0, 6, LP, base)?;
    let total = le(&hdr[..4]) as usize;
    if total != b.len() {
        return Err(corrupt(
            LP,
            base,
            0,
            format!("header says {total} bytes, blob has {}", b.len()),
        ));
    }
    let count = le(&hdr[4..6]);
    let mut p = 6;
    let mut n = 0u64;
    loop {
        let enc = *get(b, p, 1, LP, base)?.first().unwrap_or(&0xFF);
        if enc == 0xFF {
            if p + 1 != b.len() {
                return Err(corrupt(LP, base, p, "data after the end marker"));
            }
            break;
        }
        let (elem, len) = listpack_entry(b, p, base)?;
        // The backlen: the entry's encoding+data length, 7 bits per byte, read backwards.
        let back_size = backlen_size(len);
        let back = get(b, p + len, back_size, LP, base)?;
        let mut v = 0u64;
        for (i, &x) in back.iter().rev().enumerate() {
            v |= ((x & 127) as u64) << (7 * i);
        }
        if v != len as u64 {
            return Err(corrupt(
                LP,
                base,
                p + len,
                format!("entry back-length {v}, entry is {len} bytes"),
            ));
        }
        f(elem)?;
        n += 1;
        p += len + back_size;
    }
    if count != 0xFFFF && count != n {
        return Err(corrupt(
            LP,
            base,
            4,
            format!("header says {count} elements, found {n}"),
        ));
    }
    Ok(())
}

/// Bytes of the back-length field for an entry of `l` bytes (encoding + data).
fn backlen_size(l: usize) -> usize {
    match l {
        0..=127 => 1,
        128..=16382 => 2,
        16383..=2097150 => 3,
        2097151..=268435454 => 4,
        _ => 5,
    }
}

/// The entry at `p`: its element and its length without the back-length.
fn listpack_entry(b: &[u8], p: usize, base: u64) -> Result<(Elem<'_>, usize), RdbError> {
    let e = b[p];
    let int = |n: usize, bits: u32| -> Result<(Elem<'_>, usize), RdbError> {
        let raw = le(get(b, p + 1, n, LP, base)?);
        let shift = 64 - bits;
        Ok((Elem::Int(((raw << shift) as i64) >> shift), 1 + n))
    };
    let string = |hdr: usize, len: usize| -> Result<(Elem<'_>, usize), RdbError> {
        let s = get(b, p + hdr, len, LP, base)?;
        Ok((Elem::Str(s), hdr + len))
    };
    match e {
        0x00..=0x7F => Ok((Elem::Int(e as i64), 1)),
        0x80..=0xBF => string(1, (e & 0x3F) as usize),
        0xC0..=0xDF => {
            let lo = *get(b, p + 1, 1, LP, base)?.first().unwrap_or(&0);
            let raw = (((e & 0x1F) as u64) << 8) | lo as u64;
            Ok((Elem::Int(((raw << 51) as i64) >> 51), 2))
        }
        0xE0..=0xEF => {
            let lo = *get(b, p + 1, 1, LP, base)?.first().unwrap_or(&0);
            string(2, (((e & 0x0F) as usize) << 8) | lo as usize)
        }
        0xF0 => {
            let len = le(get(b, p + 1, 4, LP, base)?) as usize;
            string(5, len)
        }
        0xF1 => int(2, 16),
        0xF2 => int(3, 24),
        0xF3 => int(4, 32),
        0xF4 => int(8, 64),
        _ => Err(corrupt(
            LP,
            base,
            p,
            format!("unknown entry encoding 0x{e:02x}"),
        )),
    }
}

// ---------------------------------------------------------------------------------------------- ziplist

const ZL: &str = "ziplist";

/// Elements of a ziplist: `zlbytes u32 | zltail u32 | zllen u16 | entries | 0xFF`, each entry
/// `prevlen (1 or 5 bytes) | encoding | data`.
pub fn ziplist(b: &[u8], base: u64) -> Result<Vec<Elem<'_>>, RdbError> {
    let hdr = get(b, 0, 10, ZL, base)?;
    let total = le(&hdr[..4]) as usize;
    if total != b.len() {
        return Err(corrupt(
            ZL,
            base,
            0,
            format!("header says {total} bytes, blob has {}", b.len()),
        ));
    }
    let tail = le(&hdr[4..8]) as usize;
    let count = le(&hdr[8..10]);
    let mut out = Vec::new();
    let mut p = 10;
    let mut prev_len = 0usize;
    let mut last_start = None;
    loop {
        let first = *get(b, p, 1, ZL, base)?.first().unwrap_or(&0xFF);
        if first == 0xFF {
            if p + 1 != b.len() {
                return Err(corrupt(ZL, base, p, "data after the end marker"));
            }
            break;
        }
        let start = p;
        // prevlen
        // prevlen: one byte below 254, else 254 and a u32 (0xFF was the end marker, handled above).
        let (prev, plen) = if first < 254 {
            (first as usize, 1)
        } else {
            (le(get(b, p + 1, 4, ZL, base)?) as usize, 5)
        };
        if prev != prev_len {
            return Err(corrupt(
                ZL,
                base,
                p,
                format!("entry says the previous one is {prev} bytes, it is {prev_len}"),
            ));
        }
        p += plen;
        let e = *get(b, p, 1, ZL, base)?.first().unwrap_or(&0);
        let (elem, used) = match e >> 6 {
            0 => {
                let len = (e & 0x3F) as usize;
                (Elem::Str(get(b, p + 1, len, ZL, base)?), 1 + len)
            }
            1 => {
                let lo = *get(b, p + 1, 1, ZL, base)?.first().unwrap_or(&0);
                let len = (((e & 0x3F) as usize) << 8) | lo as usize;
                (Elem::Str(get(b, p + 2, len, ZL, base)?), 2 + len)
            }
            2 => {
                if e != 0x80 {
                    return Err(corrupt(ZL, base, p, format!("unknown encoding 0x{e:02x}")));
                }
                let l = get(b, p + 1, 4, ZL, base)?;
                let len = u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize;
                (Elem::Str(get(b, p + 5, len, ZL, base)?), 5 + len)
            }
            _ => {
                let sint = |n: usize| -> Result<i64, RdbError> {
                    let raw = le(get(b, p + 1, n, ZL, base)?);
                    let shift = 64 - 8 * n as u32;
                    Ok(((raw << shift) as i64) >> shift)
                };
                match e {
                    0xC0 => (Elem::Int(sint(2)?), 3),
                    0xD0 => (Elem::Int(sint(4)?), 5),
                    0xE0 => (Elem::Int(sint(8)?), 9),
                    0xF0 => (Elem::Int(sint(3)?), 4),
                    0xFE => (Elem::Int(sint(1)?), 2),
                    0xF1..=0xFD => (Elem::Int((e & 0x0F) as i64 - 1), 1),
                    _ => {
                        return Err(corrupt(ZL, base, p, format!("unknown encoding 0x{e:02x}")));
                    }
                }
            }
        };
        p += used;
        prev_len = p - start;
        last_start = Some(start);
        out.push(elem);
    }
    let want_tail = last_start.unwrap_or(10);
    if tail != want_tail {
        return Err(corrupt(
            ZL,
            base,
            4,
            format!("tail offset {tail}, last entry at {want_tail}"),
        ));
    }
    if count != 0xFFFF && count != out.len() as u64 {
        return Err(corrupt(
            ZL,
            base,
            8,
            format!("header says {count} entries, found {}", out.len()),
        ));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------- intset

const IS: &str = "intset";

/// Members of an intset: `encoding u32 (2, 4 or 8) | length u32 | sorted little-endian integers`.
pub fn intset(b: &[u8], base: u64) -> Result<Vec<i64>, RdbError> {
    let hdr = get(b, 0, 8, IS, base)?;
    let width = le(&hdr[..4]) as usize;
    if !matches!(width, 2 | 4 | 8) {
        return Err(corrupt(IS, base, 0, format!("integer width {width}")));
    }
    let n = le(&hdr[4..8]) as usize;
    if n.checked_mul(width).and_then(|x| x.checked_add(8)) != Some(b.len()) {
        return Err(corrupt(
            IS,
            base,
            4,
            format!(
                "{n} integers of {width} bytes do not fill {} bytes",
                b.len()
            ),
        ));
    }
    let shift = 64 - 8 * width as u32;
    let mut out = Vec::with_capacity(n);
    for c in b[8..].chunks_exact(width) {
        let v = ((le(c) << shift) as i64) >> shift;
        if let Some(&last) = out.last() {
            if v <= last {
                return Err(corrupt(
                    IS,
                    base,
                    8,
                    "members not in strictly increasing order",
                ));
            }
        }
        out.push(v);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------- zipmap

const ZM: &str = "zipmap";

/// A hash field and its value, borrowed from the encoded bytes.
pub type FieldValue<'a> = (&'a [u8], &'a [u8]);

/// Field/value pairs of a zipmap (Redis < 2.6 hashes): `zmlen u8 | (len field len free value free-bytes)*
/// | 0xFF`, lengths one byte below 254 or `254` + u32 little-endian.
pub fn zipmap(b: &[u8], base: u64) -> Result<Vec<FieldValue<'_>>, RdbError> {
    let _zmlen = *get(b, 0, 1, ZM, base)?.first().unwrap_or(&0);
    let mut p = 1;
    let mut out = Vec::new();
    let len_at = |p: usize| -> Result<(usize, usize), RdbError> {
        let first = *get(b, p, 1, ZM, base)?.first().unwrap_or(&0);
        match first {
            0..=253 => Ok((first as usize, 1)),
            254 => Ok((le(get(b, p + 1, 4, ZM, base)?) as usize, 5)),
            _ => Err(corrupt(
                ZM,
                base,
                p,
                "end marker where a length was expected",
            )),
        }
    };
    loop {
        let first = *get(b, p, 1, ZM, base)?.first().unwrap_or(&0xFF);
        if first == 0xFF {
            if p + 1 != b.len() {
                return Err(corrupt(ZM, base, p, "data after the end marker"));
            }
            break;
        }
        let (flen, n) = len_at(p)?;
        let field = get(b, p + n, flen, ZM, base)?;
        p += n + flen;
        let (vlen, n) = len_at(p)?;
        let free = *get(b, p + n, 1, ZM, base)?.first().unwrap_or(&0) as usize;
        let value = get(b, p + n + 1, vlen, ZM, base)?;
        p += n + 1 + vlen;
        get(b, p, free, ZM, base)?;
        p += free;
        out.push((field, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lp(entries: &[&[u8]]) -> Vec<u8> {
        let mut body = Vec::new();
        for e in entries {
            body.extend_from_slice(e);
            let l = e.len();
            let mut back = Vec::new();
            let mut v = l;
            loop {
                back.push((v & 127) as u8);
                v >>= 7;
                if v == 0 {
                    break;
                }
            }
            back.reverse();
            // Bytes other than the first (the one read last) carry the continuation bit.
            for b in back.iter_mut().skip(1) {
                *b |= 128;
            }
            body.extend_from_slice(&back);
        }
        let total = 6 + body.len() + 1;
        let mut out = (total as u32).to_le_bytes().to_vec();
        out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        out.extend_from_slice(&body);
        out.push(0xFF);
        out
    }

    #[test]
    fn listpack_integers_and_strings() {
        let long = vec![b'x'; 200];
        let mut e12 = vec![0xE0 | (200 >> 8) as u8, (200 & 0xff) as u8];
        e12.extend_from_slice(&long);
        let b = lp(&[
            &[0x05],
            &[0x83, b'a', b'b', b'c'],
            &[0xDF, 0xFF],             // 13-bit -1
            &[0xF1, 0x00, 0x80],       // 16-bit -32768
            &[0xF2, 0xFF, 0xFF, 0x7F], // 24-bit 8388607
            &[0xF3, 0x00, 0x00, 0x00, 0x80],
            &[0xF4, 1, 0, 0, 0, 0, 0, 0, 0x80],
            &e12,
        ]);
        let got = listpack(&b, 0).unwrap();
        assert_eq!(
            got,
            vec![
                Elem::Int(5),
                Elem::Str(b"abc"),
                Elem::Int(-1),
                Elem::Int(-32768),
                Elem::Int(8388607),
                Elem::Int(i32::MIN as i64),
                Elem::Int(i64::MIN + 1),
                Elem::Str(&long),
            ]
        );
        // Every truncation and every single-byte corruption is an error or a value, never a panic.
        for cut in 0..b.len() {
            assert!(listpack(&b[..cut], 0).is_err());
        }
        for i in 0..b.len() {
            for v in [0x00, 0x7F, 0xC0, 0xF0, 0xF5, 0xFF] {
                let mut c = b.clone();
                c[i] = v;
                let _ = listpack(&c, 0);
            }
        }
    }

    #[test]
    fn ziplist_all_encodings() {
        // Built by hand: entries "ab", 7 (immediate), -2 (int8), 300 (int16), 1<<20 (int24), 1<<31-1
        // (int32), 1<<40 (int64).
        let entries: Vec<Vec<u8>> = vec![
            vec![0x02, b'a', b'b'],
            vec![0xF8],
            vec![0xFE, 0xFE],
            vec![0xC0, 0x2C, 0x01],
            vec![0xF0, 0x00, 0x00, 0x10],
            vec![0xD0, 0xFF, 0xFF, 0xFF, 0x7F],
            vec![0xE0, 0, 0, 0, 0, 0, 1, 0, 0],
        ];
        let mut body = Vec::new();
        let mut prev = 0usize;
        let mut tail = 10;
        for e in &entries {
            tail = 10 + body.len();
            body.push(prev as u8);
            body.extend_from_slice(e);
            prev = 1 + e.len();
        }
        let total = 10 + body.len() + 1;
        let mut b = (total as u32).to_le_bytes().to_vec();
        b.extend_from_slice(&(tail as u32).to_le_bytes());
        b.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        b.extend_from_slice(&body);
        b.push(0xFF);
        assert_eq!(
            ziplist(&b, 0).unwrap(),
            vec![
                Elem::Str(b"ab"),
                Elem::Int(7),
                Elem::Int(-2),
                Elem::Int(300),
                Elem::Int(1 << 20),
                Elem::Int((1 << 31) - 1),
                Elem::Int(1 << 40),
            ]
        );
        for cut in 0..b.len() {
            assert!(ziplist(&b[..cut], 0).is_err());
        }
        for i in 0..b.len() {
            for v in [0x00, 0x40, 0x80, 0xC0, 0xFE, 0xFF] {
                let mut c = b.clone();
                c[i] = v;
                let _ = ziplist(&c, 0);
            }
        }
    }

    #[test]
    fn intset_widths_and_order() {
        let mut b = 4u32.to_le_bytes().to_vec();
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&(-5i32).to_le_bytes());
        b.extend_from_slice(&70000i32.to_le_bytes());
        assert_eq!(intset(&b, 0).unwrap(), vec![-5, 70000]);
        let mut bad = b.clone();
        bad[0] = 3;
        assert!(intset(&bad, 0).is_err());
        assert!(intset(&b[..b.len() - 1], 0).is_err());
        let mut unsorted = 2u32.to_le_bytes().to_vec();
        unsorted.extend_from_slice(&2u32.to_le_bytes());
        unsorted.extend_from_slice(&5i16.to_le_bytes());
        unsorted.extend_from_slice(&1i16.to_le_bytes());
        assert!(intset(&unsorted, 0).is_err());
    }

    #[test]
    fn zipmap_pairs_with_free_bytes() {
        let b = b"\x02\x03foo\x03\x01bar?\x05hello\x05\x00world\xff";
        assert_eq!(
            zipmap(b, 0).unwrap(),
            vec![(&b"foo"[..], &b"bar"[..]), (&b"hello"[..], &b"world"[..])]
        );
        for cut in 0..b.len() {
            assert!(zipmap(&b[..cut], 0).is_err());
        }
    }
}
