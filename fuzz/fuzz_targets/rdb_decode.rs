//! The RDB decoder on arbitrary input: never a panic, whatever the bytes.
//!
//! The input (see `common/rdb_input.rs`: fixtures as they are, anything else behind a valid header) is
//! decoded whole twice: with the default limits (every value one `Entry`), where `decode_value` and
//! `decode_value_for` run on every entry and every error is displayed; and with tiny limits, where every
//! value above 48 bytes comes as BigStart/BigChunk/BigEnd (strings in pieces, LZF strings decompressed
//! incrementally). When both passes end cleanly and every entry decoded, the two agree key for key: the
//! elements gathered from the chunks are the value `decode_value` gives for the whole entry.
#![no_main]
use bytes::{Bytes, BytesMut};
use ferry::rdb::{
    decode_value, decode_value_for, dump_footer, BigHeader, Chunk, DecoderOptions, Event, Kind,
    Magic, Value,
};
use libfuzzer_sys::fuzz_target;

#[path = "../common/rdb_input.rs"]
mod rdb_input;

/// (db, key, value as Debug text: NaN scores compare equal that way).
type Keyed = Vec<(u32, Bytes, String)>;

/// Decode every entry; `None` if one does not decode.
fn values(events: &[Event], magic: Magic) -> Option<Keyed> {
    let mut out = Vec::new();
    let mut ok = true;
    let mut big: Option<(BigHeader, Vec<Chunk>)> = None;
    for ev in events {
        match ev {
            Event::Entry(e) => {
                let _ = dump_footer(e.rdb_type, &e.payload, 11);
                if let Err(err) = decode_value(e.rdb_type, &e.payload) {
                    let _ = err.to_string();
                }
                match decode_value_for(magic, e.rdb_type, &e.payload) {
                    Ok(v) => out.push((e.db, e.key.clone(), format!("{v:?}"))),
                    Err(err) => {
                        let _ = err.to_string();
                        ok = false;
                    }
                }
            }
            Event::BigStart(h) => {
                assert!(big.is_none(), "BigStart inside a big value");
                big = Some((h.clone(), Vec::new()));
            }
            Event::BigChunk(c) => {
                let (h, chunks) = big.as_mut().expect("BigChunk outside a big value");
                let kind_ok = matches!(
                    (h.kind, c),
                    (Kind::String, Chunk::StringPart(_))
                        | (Kind::List, Chunk::List(_))
                        | (Kind::Set, Chunk::Set(_))
                        | (Kind::ZSet, Chunk::ZSet(_))
                        | (Kind::Hash, Chunk::Hash(_))
                );
                assert!(kind_ok, "{:?} chunk for a {:?}", c, h.kind);
                chunks.push(c.clone());
            }
            Event::BigEnd => {
                let (h, chunks) = big.take().expect("BigEnd outside a big value");
                out.push((
                    h.db,
                    h.key.clone(),
                    format!("{:?}", assemble(h.kind, chunks)),
                ));
            }
            other => assert!(big.is_none(), "{other:?} inside a big value"),
        }
    }
    ok.then_some(out)
}

fn assemble(kind: Kind, chunks: Vec<Chunk>) -> Value {
    let mut s = BytesMut::new();
    let (mut l, mut z, mut h) = (Vec::new(), Vec::new(), Vec::new());
    for c in chunks {
        match c {
            Chunk::StringPart(p) => s.extend_from_slice(&p),
            Chunk::List(v) | Chunk::Set(v) => l.extend(v),
            Chunk::ZSet(v) => z.extend(v),
            Chunk::Hash(v) => h.extend(v),
        }
    }
    match kind {
        Kind::String => Value::String(s.freeze()),
        Kind::List => Value::List(l),
        Kind::Set => Value::Set(l),
        Kind::ZSet => Value::ZSet(z),
        _ => Value::Hash(h),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = rdb_input::parse(data) else {
        return;
    };
    let bytes = &input.bytes;
    let magic = if bytes.starts_with(b"VALKEY") {
        Magic::Valkey
    } else {
        Magic::Redis
    };

    let (events, err) = rdb_input::decode(bytes, &DecoderOptions::default(), || usize::MAX, false);
    if let Some(e) = &err {
        let _ = e.to_string();
    }
    let whole = values(&events, magic);

    let (tevents, terr) = rdb_input::decode(bytes, &rdb_input::tiny(), || usize::MAX, false);
    if let Some(e) = &terr {
        let _ = e.to_string();
    }
    let chunked = values(&tevents, magic);

    if let (None, None, Some(w), Some(c)) = (&err, &terr, &whole, &chunked) {
        assert_eq!(w.len(), c.len(), "key counts differ");
        for (a, b) in w.iter().zip(c) {
            assert_eq!(a, b, "whole entry vs big-value chunks");
        }
    }
});
