//! What the RDB fuzz targets share: turning fuzzer bytes into an RDB input, and running the decoder over it
//! in pieces.
//!
//! An input that starts with `R` or `V` (every file of the seed corpus starts `REDIS` or `VALKEY`) is
//! decoded as it is, so damaged magics are fuzzed too. Any other input is `ctl, payload…`: `ctl` picks a
//! valid header (`REDIS0011` most often; every version-dependent path has its own) and whether a fixed
//! preamble follows it (an AUX field, SELECTDB 0, RESIZEDB), so mutated bytes land past the magic where
//! the decoder's real work is.
#![allow(dead_code)]

use bytes::BytesMut;
use ferry::rdb::{Decoder, DecoderOptions, Event, RdbError};

const HEADERS: [&[u8]; 8] = [
    b"REDIS0011",
    b"REDIS0011",
    b"REDIS0012",
    b"VALKEY080",
    b"REDIS0009",
    b"REDIS0010",
    b"REDIS0007",
    b"REDIS0003",
];

/// AUX redis-ver 7.2.0, SELECTDB 0, RESIZEDB 1 0.
const PREAMBLE: &[u8] = b"\xfa\x09redis-ver\x057.2.0\xfe\x00\xfb\x01\x00";

pub struct Input {
    pub bytes: Vec<u8>,
    /// Free control bits for the target (split sizes, options).
    pub ctl: u8,
}

pub fn parse(data: &[u8]) -> Option<Input> {
    if data.starts_with(b"R") || data.starts_with(b"V") {
        let ctl = data
            .iter()
            .rev()
            .take(4)
            .fold(data.len() as u8, |a, b| a ^ b);
        return Some(Input {
            bytes: data.to_vec(),
            ctl,
        });
    }
    let (&ctl, payload) = data.split_first()?;
    let mut bytes = HEADERS[(ctl & 7) as usize].to_vec();
    if ctl & 8 != 0 {
        bytes.extend_from_slice(PREAMBLE);
    }
    bytes.extend_from_slice(payload);
    Some(Input { bytes, ctl })
}

/// Limits that send every value above 48 bytes through BigStart/BigChunk/BigEnd, two elements a chunk.
pub fn tiny() -> DecoderOptions {
    DecoderOptions {
        max_entry_bytes: 48,
        chunk_elements: 2,
        verify_checksum: true,
        max_unchunked_bytes: 1 << 16,
        raw_big: false,
    }
}

/// Events, and the error that ended the input (`None`: the RDB ended cleanly at its EOF marker).
pub type Decoded = (Vec<Event>, Option<RdbError>);

/// Decode `data` fed in pieces of the sizes `next` gives. With `gate`, the decoder is only called once the
/// buffer holds what [`Decoder::needed`] asked for, as ferry's feeder does.
pub fn decode(
    data: &[u8],
    opts: &DecoderOptions,
    mut next: impl FnMut() -> usize,
    gate: bool,
) -> Decoded {
    let mut d = Decoder::new(opts.clone());
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut fed = 0;
    loop {
        if !gate || buf.len() >= d.needed() {
            loop {
                match d.decode(&mut buf) {
                    Ok(Some(ev)) => out.push(ev),
                    Ok(None) => {
                        assert!(d.needed() > buf.len(), "waits for no more bytes");
                        break;
                    }
                    Err(e) => {
                        // The error is sticky.
                        assert_eq!(d.decode(&mut buf).unwrap_err(), e);
                        return (out, Some(e));
                    }
                }
                if gate && buf.len() < d.needed() {
                    break;
                }
            }
        }
        if fed == data.len() {
            return (out, d.finish().err());
        }
        let end = (fed + next().max(1)).min(data.len());
        buf.extend_from_slice(&data[fed..end]);
        fed = end;
    }
}

/// Piece sizes read from the input's own bytes (from the end backwards), scaled by `shift` (0..=7): the
/// fuzzer chooses how the input is split.
#[allow(dead_code)] // rdb_decode feeds its input whole
pub fn piece_sizes(bytes: &[u8], shift: u8) -> impl FnMut() -> usize {
    let mut i = 0usize;
    let n = bytes.len().max(1);
    let b = bytes.to_vec();
    move || {
        let v = b.get(n - 1 - (i % n)).copied().unwrap_or(0) as usize;
        i += 1;
        1 + (v << shift) / 8
    }
}
