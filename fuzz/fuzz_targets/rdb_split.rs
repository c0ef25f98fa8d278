//! The RDB decoder is push-fed: any split of the input must give the same events and the same verdict.
//!
//! The input (see `common/rdb_input.rs`) is decoded whole, then in pieces whose sizes come from the input's
//! own bytes (so the fuzzer chooses them: one byte per piece, read from the end backwards, scaled by
//! control bits), once calling the decoder after every piece and once only when it has what `needed()`
//! asked for (as ferry's feeder does), then byte by byte (inputs up to 16 KiB). Every run must give the
//! identical event list and the identical final error (`BadMagic`'s quote included). Control
//! bits also choose tiny big-value limits, so BigStart/BigChunk/BigEnd and incremental LZF are split too.
#![no_main]
use ferry::rdb::DecoderOptions;
use libfuzzer_sys::fuzz_target;

#[path = "../common/rdb_input.rs"]
mod rdb_input;

use rdb_input::{decode, Decoded};

fn same(whole: &Decoded, other: &Decoded, how: &str) {
    for (i, (a, b)) in whole.0.iter().zip(&other.0).enumerate() {
        assert_eq!(a, b, "{how}: event {i} differs");
    }
    assert_eq!(whole.0.len(), other.0.len(), "{how}: event counts differ");
    assert_eq!(whole.1, other.1, "{how}: final verdict differs");
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = rdb_input::parse(data) else {
        return;
    };
    let bytes = &input.bytes;
    let ctl = input.ctl;
    let opts = if ctl & 0x10 != 0 {
        rdb_input::tiny()
    } else {
        DecoderOptions::default()
    };
    let shift = (ctl >> 5) & 7;
    let sizes = |bytes: &[u8]| rdb_input::piece_sizes(bytes, shift);

    let whole = decode(bytes, &opts, || usize::MAX, false);
    same(&whole, &decode(bytes, &opts, sizes(bytes), false), "pieces");
    same(
        &whole,
        &decode(bytes, &opts, sizes(bytes), true),
        "pieces, gated by needed()",
    );
    if bytes.len() <= 16 * 1024 {
        same(&whole, &decode(bytes, &opts, || 1, false), "byte by byte");
    }
});
