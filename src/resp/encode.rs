//! Command encoding: whole commands, or piece by piece without concatenating.
//!
//! A RESTORE payload, for instance, is written as `write_bulk_header(out, len)`, the body in as many
//! `extend_from_slice` calls as it has parts, then `write_bulk_end(out)`.

use bytes::{BufMut, BytesMut};

/// Append the decimal form of `v` (no heap allocation).
#[inline]
pub fn write_decimal(out: &mut BytesMut, v: i64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = v.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        out.put_u8(b'-');
    }
    out.extend_from_slice(&digits[i..]);
}

#[inline]
fn write_usize(out: &mut BytesMut, v: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = v as u64;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Number of decimal digits of `v` (with the sign).
#[inline]
pub fn decimal_len(v: i64) -> usize {
    let mut n = v.unsigned_abs();
    let mut len = usize::from(v < 0) + 1;
    while n >= 10 {
        n /= 10;
        len += 1;
    }
    len
}

/// `*n\r\n`
#[inline]
pub fn write_array_header(out: &mut BytesMut, n: usize) {
    out.put_u8(b'*');
    write_usize(out, n);
    out.extend_from_slice(b"\r\n");
}

/// `$len\r\n` — the body follows, then [`write_bulk_end`].
#[inline]
pub fn write_bulk_header(out: &mut BytesMut, len: usize) {
    out.put_u8(b'$');
    write_usize(out, len);
    out.extend_from_slice(b"\r\n");
}

/// The `\r\n` closing a bulk started with [`write_bulk_header`].
#[inline]
pub fn write_bulk_end(out: &mut BytesMut) {
    out.extend_from_slice(b"\r\n");
}

/// A whole bulk string.
#[inline]
pub fn write_bulk(out: &mut BytesMut, b: &[u8]) {
    out.reserve(b.len() + 16);
    write_bulk_header(out, b.len());
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

/// A bulk string holding the decimal form of `v`.
#[inline]
pub fn write_bulk_int(out: &mut BytesMut, v: i64) {
    write_bulk_header(out, decimal_len(v));
    write_decimal(out, v);
    out.extend_from_slice(b"\r\n");
}

/// Encoded length of the bulk string `b` (header, body, CRLF).
#[inline]
pub fn bulk_len(b: &[u8]) -> usize {
    1 + decimal_len(b.len() as i64) + 2 + b.len() + 2
}

/// Encoded length of a command with these arguments.
pub fn command_len(args: &[&[u8]]) -> usize {
    1 + decimal_len(args.len() as i64) + 2 + args.iter().map(|a| bulk_len(a)).sum::<usize>()
}

/// Append a command (an array of bulk strings).
pub fn encode_command(out: &mut BytesMut, args: &[&[u8]]) {
    out.reserve(command_len(args));
    write_array_header(out, args.len());
    for a in args {
        write_bulk_header(out, a.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}
