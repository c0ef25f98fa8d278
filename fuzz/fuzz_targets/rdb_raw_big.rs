//! Master mode forwards a big value as the bytes the file holds (`DecoderOptions::raw_big`): the pieces,
//! joined, must be exactly the value's bytes, whatever the split of the input and the big-value limit.
//!
//! The input (see `common/rdb_input.rs`) is decoded whole with no big-value limit (every key an `Entry`
//! with its payload), then with `raw_big` and a tiny limit, fed in pieces whose sizes come from the input.
//! When the whole decode succeeds, the raw one must too and give the same (db, key, type, value bytes) list;
//! when it fails, the raw one may fail anywhere (it walks a big value without decoding it) but must not
//! panic and must not yield an empty piece.
#![no_main]
use bytes::Bytes;
use ferry::rdb::{DecoderOptions, Event};
use libfuzzer_sys::fuzz_target;

#[path = "../common/rdb_input.rs"]
mod rdb_input;

use rdb_input::decode;

type Value = (u32, Bytes, u8, Vec<u8>);

fn values(events: &[Event]) -> Vec<Value> {
    let mut out = Vec::new();
    let mut big: Option<Value> = None;
    for ev in events {
        match ev {
            Event::Entry(e) => out.push((e.db, e.key.clone(), e.rdb_type, e.payload.to_vec())),
            Event::BigStart(h) => big = Some((h.db, h.key.clone(), h.rdb_type, Vec::new())),
            Event::BigRaw(b) => {
                assert!(!b.is_empty(), "an empty raw piece");
                big.as_mut().expect("BigRaw after BigStart").3.extend_from_slice(b)
            }
            Event::BigEnd => out.push(big.take().expect("BigEnd after BigStart")),
            Event::BigChunk(_) => panic!("BigChunk with raw_big"),
            _ => {}
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = rdb_input::parse(data) else {
        return;
    };
    let bytes = &input.bytes;
    let ctl = input.ctl;
    let whole_opts = DecoderOptions {
        max_entry_bytes: usize::MAX / 4,
        max_unchunked_bytes: usize::MAX / 4,
        ..DecoderOptions::default()
    };
    let raw_opts = DecoderOptions {
        max_entry_bytes: 1 + (ctl as usize & 0x3f),
        raw_big: true,
        ..DecoderOptions::default()
    };
    let shift = (ctl >> 5) & 7;
    let sizes = |bytes: &[u8]| rdb_input::piece_sizes(bytes, shift);
    let (want_ev, want_err) = decode(bytes, &whole_opts, || usize::MAX, false);
    for gate in [false, true] {
        let (ev, err) = decode(bytes, &raw_opts, sizes(bytes), gate);
        let got = values(&ev);
        if want_err.is_none() {
            assert!(err.is_none(), "raw decode failed where the whole one did not: {err:?}");
            assert_eq!(got, values(&want_ev), "raw values differ (gate {gate})");
        }
    }
});
