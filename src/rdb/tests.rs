//! Decoder tests over the shared fixtures and generated files.
use super::*;
use bytes::BytesMut;

pub(crate) fn decode_all(
    data: &[u8],
    opts: DecoderOptions,
    step: usize,
) -> Result<Vec<Event>, RdbError> {
    let mut d = Decoder::new(opts);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut fed = 0;
    loop {
        while let Some(ev) = d.decode(&mut buf)? {
            out.push(ev);
        }
        if fed == data.len() {
            break;
        }
        let end = (fed + step).min(data.len());
        buf.extend_from_slice(&data[fed..end]);
        fed = end;
    }
    d.finish()?;
    Ok(out)
}

#[test]
fn fixtures_whole() {
    let dir = std::env::var("FERRY_FIXTURES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures")
        })
        .join("rdb");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return;
    };
    let mut files = Vec::new();
    for o in rd {
        for f in std::fs::read_dir(o.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            if p.extension().is_some_and(|e| e == "rdb") {
                files.push(p);
            }
        }
    }
    files.sort();
    for p in files {
        let data = std::fs::read(&p).unwrap();
        let r = decode_all(&data, DecoderOptions::default(), usize::MAX);
        match r {
            Ok(evs) => {
                let mut n = 0;
                let mut bad = 0;
                for e in &evs {
                    if let Event::Entry(e) = e {
                        n += 1;
                        if let Err(err) = decode_value(e.rdb_type, &e.payload) {
                            bad += 1;
                            eprintln!("   value {:?} type {}: {err}", e.key, e.rdb_type);
                        }
                    }
                }
                eprintln!("{}: ok {} entries ({} undecodable)", p.display(), n, bad);
            }
            Err(e) => eprintln!("{}: ERR {e}", p.display()),
        }
    }
}

/// Events until the input ended or the decoder refused it, and the refusal.
fn events_then_error(
    data: &[u8],
    opts: &DecoderOptions,
    step: usize,
) -> (Vec<Event>, Option<RdbError>) {
    let mut d = Decoder::new(opts.clone());
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut fed = 0;
    loop {
        loop {
            match d.decode(&mut buf) {
                Ok(Some(ev)) => out.push(ev),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
        if fed == data.len() {
            return (out, d.finish().err());
        }
        let end = (fed + step).min(data.len());
        buf.extend_from_slice(&data[fed..end]);
        fed = end;
    }
}

/// Whole, byte by byte, and in a few piece sizes: the same events and the same error.
fn same_for_every_split(data: &[u8], opts: &DecoderOptions) -> (Vec<Event>, Option<RdbError>) {
    let whole = events_then_error(data, opts, usize::MAX);
    for step in [1, 2, 3, 7, 16, 40, 100] {
        assert_eq!(
            events_then_error(data, opts, step),
            whole,
            "fed {step} bytes at a time"
        );
    }
    whole
}

fn tiny_limits() -> DecoderOptions {
    DecoderOptions {
        max_entry_bytes: 48,
        chunk_elements: 2,
        verify_checksum: true,
        max_unchunked_bytes: 48,
    }
}

/// Found by fuzz/rdb_split: a list whose items go past `max_entry_bytes` before a corrupt one. Fed in
/// pieces the decoder went big once the walk passed the limit (BigStart, chunks, then the error); fed
/// whole it reported the error at once with no BigStart. Both now go big where the limit is passed.
#[test]
fn corrupt_item_past_the_limit_gives_the_same_events_for_any_split() {
    let mut f = b"REDIS0007\xfe\x00\x01\x02ll\x42\x01".to_vec(); // a list "ll" of 513 items
    for _ in 0..30 {
        f.extend_from_slice(b"\x01x"); // 60 bytes of items: past the 48-byte limit
    }
    f.push(0xFF); // not a string encoding
    let (events, err) = same_for_every_split(&f, &tiny_limits());
    assert!(
        matches!(events.get(2), Some(Event::BigStart(h)) if &h.key[..] == b"ll"),
        "{events:?}"
    );
    assert_eq!(
        err,
        Some(RdbError::UnknownEncoding {
            what: "string",
            byte: 0xFF,
            offset: f.len() as u64 - 1
        })
    );
    // The same corruption within the limit: an error and no BigStart, however fed.
    let mut f = b"REDIS0007\xfe\x00\x01\x02ll\x42\x01".to_vec();
    f.extend_from_slice(b"\x01x\x01x\xff");
    let (events, err) = same_for_every_split(&f, &tiny_limits());
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(matches!(err, Some(RdbError::UnknownEncoding { .. })));
}

/// Streams and module values have no chunk form: past `max_unchunked_bytes` they are refused, with the
/// same error (its length included) for any split, and also when they are corrupt further on.
#[test]
fn unchunked_value_past_the_limit_is_refused_the_same_for_any_split() {
    // A type-15 stream whose listpack count claims 3 nodes of 20-byte strings (IDs, listpacks).
    let mut f = b"REDIS0009\xfe\x00\x0f\x01s\x03".to_vec();
    for _ in 0..3 {
        f.push(20);
        f.extend_from_slice(&[b'i'; 20]);
    }
    let complete = {
        let mut c = f.clone();
        c.extend_from_slice(&[0xff; 4]); // then a corrupt length
        c
    };
    for data in [&f[..], &complete[..]] {
        let (events, err) = same_for_every_split(data, &tiny_limits());
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(
            matches!(err, Some(RdbError::TooLarge { limit: 48, .. })),
            "{err:?}"
        );
    }
    // A module AUX field whose body goes past the limit before a bad module opcode.
    let mut f = b"REDIS0009\xf7\x01".to_vec();
    for _ in 0..30 {
        f.extend_from_slice(b"\x02\x05"); // opcode UINT, value 5: 60 bytes
    }
    f.push(9); // unknown module opcode
    let (_, err) = same_for_every_split(&f, &tiny_limits());
    assert!(
        matches!(err, Some(RdbError::TooLarge { limit: 48, .. })),
        "{err:?}"
    );
}

/// Found by fuzz/rdb_split: a bad back reference in a big LZF string was reported at the offset where
/// that decode call had begun, and at a position inside that call's slice of the input, so the error
/// depended on how the input was split. It now names where the compressed bytes start, and the token's
/// position in them.
#[test]
fn bad_lzf_token_in_a_big_string_is_reported_the_same_for_any_split() {
    let mut z = Vec::new();
    for _ in 0..2 {
        z.push(31); // a literal run of 32 bytes
        z.extend_from_slice(&[b'a'; 32]);
    }
    z.extend_from_slice(&[0x3F, 0xFF]); // 3 bytes from 8192 back: before the start of the output
    let mut f = b"REDIS0009\xfe\x00\x00\x01k\xc3".to_vec();
    f.extend_from_slice(&[0x40, z.len() as u8, 0x40, 67]);
    let start = f.len() as u64;
    f.extend_from_slice(&z);
    let (events, err) = same_for_every_split(&f, &tiny_limits());
    assert!(
        matches!(events.get(2), Some(Event::BigStart(_))),
        "{events:?}"
    );
    assert_eq!(
        err,
        Some(RdbError::Corrupt {
            what: "LZF string",
            offset: start,
            detail: "back reference before the start of the output at input byte 66".into(),
        })
    );
}
