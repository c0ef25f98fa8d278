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

/// The decoder's verdict on a fixture that redis-server 7.0.15 refuses (its `.expected.json` says
/// `load` is not `ok`), or that no server could load.
#[derive(Clone, Copy, Debug)]
enum Known {
    /// The file is refused with this kind of error ([`error_kind`]).
    Refused(&'static str),
    /// The file decodes, but the value of this key is refused with this kind of error.
    ValueRefused(&'static str, &'static str),
    /// The file and every value decode: what the server lacked is not the decoder's business (a module
    /// value or AUX field, carried opaque), or the server checks more than the decoder needs to.
    Decodes,
}

/// Every fixture whose verdict is not "decodes like redis-server loads it", with why.
const KNOWN: &[(&str, Known)] = &[
    // Pre-GA module values (type 6) have no length framing: nothing can skip them without the module.
    (
        "leonchen83__redis-replicator/module.rdb",
        Known::Refused("Corrupt"),
    ),
    (
        "redis__librdb/future_v19.rdb",
        Known::Refused("UnsupportedVersion"),
    ),
    (
        "redis__librdb/invalid_chksum_v8.rdb",
        Known::Refused("Checksum"),
    ),
    // Redis Enterprise's own opcodes, unknown to every open-source server.
    (
        "redis__librdb/redis_ent_opcode_ram_lru.rdb",
        Known::Refused("UnknownType"),
    ),
    // A diskless transfer's 40-byte EOF mark saved after the checksum.
    (
        "sripathikrishnan__redis-rdb-tools/redis_40_with_module.rdb",
        Known::Refused("TrailingData"),
    ),
    // Not an RDB file (a RedisShake test input starting "version h…").
    (
        "tair-opensource__RedisShake/dump.rdb",
        Known::Refused("BadMagic"),
    ),
    // Corrupt on purpose (redis' own test): one hash ziplist is cut short.
    (
        "valkey-io__valkey/corrupt_ziplist.rdb",
        Known::ValueRefused("key:000000000091", "Corrupt"),
    ),
    // The server lacks the module; the decoder carries module values and AUX fields opaque.
    ("Snapchat__KeyDB/redis-module-save.rdb", Known::Decodes),
    (
        "leonchen83__redis-replicator/dump-module-2.rdb",
        Known::Decodes,
    ),
    ("redis__librdb/misc_with_stream.rdb", Known::Decodes),
    (
        "sripathikrishnan__redis-rdb-tools/redis_60_with_module_aux.rdb",
        Known::Decodes,
    ),
    // Zipmap count byte 0xFF: redis' integrity check refuses it ("Zipmap integrity check failed"); the
    // decoder walks the entries to the end marker and does not need the count.
    ("HDT3213__rdb/zipmap_big_len.rdb", Known::Decodes),
];

/// The name of an error's variant, for [`KNOWN`].
fn error_kind(e: &RdbError) -> &'static str {
    match e {
        RdbError::BadMagic { .. } => "BadMagic",
        RdbError::UnsupportedVersion { .. } => "UnsupportedVersion",
        RdbError::UnknownType { .. } => "UnknownType",
        RdbError::UnknownEncoding { .. } => "UnknownEncoding",
        RdbError::Corrupt { .. } => "Corrupt",
        RdbError::Checksum { .. } => "Checksum",
        RdbError::Truncated { .. } => "Truncated",
        RdbError::TrailingData { .. } => "TrailingData",
        RdbError::TooLarge { .. } => "TooLarge",
    }
}

/// The type name `TYPE` gives for a value.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "string",
        Value::List(_) => "list",
        Value::Set(_) => "set",
        Value::ZSet(_) => "zset",
        Value::Hash(_) => "hash",
        Value::Stream(_) => "stream",
        Value::Module { .. } => "module",
    }
}

/// Would a server keep this key when loading the file now (not expired, not an empty collection)?
fn kept(expire_ms: Option<i64>, v: &Value, now_ms: i64) -> bool {
    let empty = match v {
        Value::List(x) | Value::Set(x) => x.is_empty(),
        Value::ZSet(x) => x.is_empty(),
        Value::Hash(x) => x.is_empty(),
        _ => false,
    };
    !empty && !matches!(expire_ms, Some(ms) if ms <= now_ms)
}

/// Every RDB fixture decoded whole with the default options. Files redis-server 7.0.15 loads decode with
/// every value, and the keys a server would keep are exactly its `key_count` (and, where the expectation
/// lists them, the same db, key and type). Files it refuses, and files no server wrote, give the verdict
/// [`KNOWN`] records. Every other file (newer formats 7.0.15 cannot read) decodes with every value.
/// Every `*.rdb` under the fixtures' `rdb/<origin>/` folders, sorted.
fn rdb_fixtures(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for origin in std::fs::read_dir(dir).unwrap() {
        for f in std::fs::read_dir(origin.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            if p.extension().is_some_and(|e| e == "rdb") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn fixtures_whole() {
    let Some(dir) = crate::testutil::fixtures_dir() else {
        return;
    };
    let dir = dir.join("rdb");
    let files = rdb_fixtures(&dir);
    assert!(
        files.len() > 100,
        "only {} fixtures in {}",
        files.len(),
        dir.display()
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut failures = Vec::new();
    let mut seen_known = Vec::new();
    let (mut counted, mut listed, mut newer) = (0, 0, 0);
    for p in &files {
        let name = p.strip_prefix(&dir).unwrap().display().to_string();
        let data = std::fs::read(p).unwrap();
        let expected: Option<serde_json::Value> =
            std::fs::read_to_string(format!("{}.expected.json", p.display()))
                .ok()
                .map(|t| serde_json::from_str(&t).unwrap());
        let known = KNOWN.iter().find(|(f, _)| *f == name).map(|(_, k)| *k);
        if known.is_some() {
            seen_known.push(name.clone());
        }
        let loads = expected.as_ref().is_some_and(|e| e["load"] == "ok");
        if loads && known.is_some() {
            failures.push(format!("{name}: redis-server loads it; drop it from KNOWN"));
            continue;
        }
        if let (Some(e), false, None) = (&expected, loads, known) {
            failures.push(format!(
                "{name}: redis-server refuses it ({}); record the decoder's verdict in KNOWN",
                e["load"]
            ));
            continue;
        }
        let events = match decode_all(&data, DecoderOptions::default(), usize::MAX) {
            Ok(evs) => evs,
            Err(e) => {
                match known {
                    Some(Known::Refused(kind)) if error_kind(&e) == kind => {}
                    _ => failures.push(format!("{name}: refused: {e} (expected {known:?})")),
                }
                continue;
            }
        };
        if let Some(Known::Refused(kind)) = known {
            failures.push(format!("{name}: decodes, expected a {kind} error"));
            continue;
        }
        // (db, key, type) of the keys a server would keep; and the values that do not decode.
        let mut keys = Vec::new();
        let mut bad_values = Vec::new();
        for ev in &events {
            match ev {
                Event::Entry(e) => match decode_value(e.rdb_type, &e.payload) {
                    Ok(v) => {
                        if kept(e.expire_ms, &v, now_ms) {
                            keys.push((
                                e.db,
                                String::from_utf8_lossy(&e.key).into_owned(),
                                type_name(&v),
                            ));
                        }
                    }
                    Err(err) => {
                        bad_values.push((String::from_utf8_lossy(&e.key).into_owned(), err))
                    }
                },
                Event::BigStart(h) => failures.push(format!(
                    "{name}: key {:?} is past the default entry limit; count big values here",
                    h.key
                )),
                _ => {}
            }
        }
        match known {
            Some(Known::ValueRefused(key, kind)) => {
                let ok = matches!(&bad_values[..], [(k, e)] if k == key && error_kind(e) == kind);
                if !ok {
                    failures.push(format!(
                        "{name}: undecodable values {bad_values:?}, expected only {key:?} with a {kind} error"
                    ));
                }
                continue;
            }
            _ if !bad_values.is_empty() => {
                failures.push(format!("{name}: undecodable values {bad_values:?}"));
                continue;
            }
            _ => {}
        }
        let Some(exp) = expected.filter(|_| loads) else {
            if known.is_none() {
                newer += 1;
            }
            continue;
        };
        let want = exp["key_count"].as_u64().unwrap() as usize;
        if keys.len() != want {
            failures.push(format!(
                "{name}: {} keys a server keeps, redis-server had {want}",
                keys.len()
            ));
            continue;
        }
        counted += 1;
        if let Some(list) = exp["keys"].as_array() {
            let mut want: Vec<(u32, String, &str)> = list
                .iter()
                .map(|k| {
                    (
                        k["db"].as_u64().unwrap() as u32,
                        k["key"].as_str().unwrap().to_string(),
                        k["type"].as_str().unwrap(),
                    )
                })
                .collect();
            want.sort();
            keys.sort();
            if keys != want {
                failures.push(format!(
                    "{name}: (db, key, type) differ:\n  decoded {keys:?}\n  server  {want:?}"
                ));
                continue;
            }
            listed += 1;
        }
    }
    for (f, _) in KNOWN {
        if !seen_known.iter().any(|s| s == f) {
            failures.push(format!("{f}: in KNOWN but not among the fixtures"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
    // How much was compared, so a shrinking fixture set or expectation format is noticed.
    assert!(counted >= 75, "only {counted} key counts compared");
    assert!(listed >= 70, "only {listed} key lists compared");
    assert!(newer >= 40, "only {newer} newer-format fixtures decoded");
}

/// Events until the input ended or the decoder refused it, and the refusal; fed `step` bytes at a time,
/// calling the decoder after every piece.
fn events_then_error(
    data: &[u8],
    opts: &DecoderOptions,
    step: usize,
) -> (Vec<Event>, Option<RdbError>) {
    events_fed(data, opts, || step, false)
}

/// Events and the refusal, fed in pieces of the sizes `next` gives; with `gate` the decoder is only called
/// once the buffer holds what `needed()` asked for (as ferry's feeder does), and no more after an event
/// than the buffer holding less than `needed()` allows.
fn events_fed(
    data: &[u8],
    opts: &DecoderOptions,
    mut next: impl FnMut() -> usize,
    gate: bool,
) -> (Vec<Event>, Option<RdbError>) {
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
                    Err(e) => return (out, Some(e)),
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

/// Whole, byte by byte, and in a few piece sizes, each calling the decoder after every piece and only
/// when it has `needed()` bytes: the same events and the same error.
fn same_for_every_split(data: &[u8], opts: &DecoderOptions) -> (Vec<Event>, Option<RdbError>) {
    let whole = events_then_error(data, opts, usize::MAX);
    for gate in [false, true] {
        for step in [usize::MAX, 1, 2, 3, 7, 16, 40, 100] {
            if step == usize::MAX && !gate {
                continue;
            }
            assert_eq!(
                events_fed(data, opts, || step, gate),
                whole,
                "fed {step} bytes at a time, gated by needed(): {gate}"
            );
        }
    }
    whole
}

fn tiny_limits() -> DecoderOptions {
    DecoderOptions {
        max_entry_bytes: 48,
        chunk_elements: 2,
        verify_checksum: true,
        max_unchunked_bytes: 48,
        raw_big: false,
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

/// Every prefix of `data` (a file cut short anywhere), fed in every way `same_for_every_split` feeds.
fn every_prefix_same_for_every_split(data: &[u8], opts: &DecoderOptions) {
    for n in 0..=data.len() {
        same_for_every_split(&data[..n], opts);
    }
}

/// `body` (after the magic) with the EOF marker and its CRC-64 appended.
fn with_trailer(mut body: Vec<u8>) -> Vec<u8> {
    body.push(0xFF);
    let crc = crc64::checksum(&body);
    body.extend_from_slice(&crc.to_le_bytes());
    body
}

/// Issue 8, found by fuzz/rdb_split once its corpus held RDB 12 cluster files: a string value over the
/// big-value limit that ends exactly where the input ends. Its last `StringPart` consumed the last byte,
/// and `needed()` then said 1 (as after every event), so a caller that waits for `needed()` bytes never
/// called again: 9 events and "truncated inside a big key's value", against 10 (`BigEnd`) and "truncated
/// before the EOF marker" when called anyway. After an event `needed()` is now 0.
#[test]
fn issue8_big_string_ending_with_the_input_gives_the_same_events_when_gated_by_needed() {
    let f = b"REDIS0012\xfa\x09resase\xc0\x00\xfe\x00\xfb\x05\x00\xf4@b\x01\x00\x00\x08c{slot2}\x01c\
\xf4@\xe6\x01\x00\x00\x08f{slot6d6d42246bcf84151fad3c1\xa4\x02\x00\x00\x07a{slob\x00\x07b{slom}\x01b\
\xff\x93\xd3\x8a\x8fG,\xf4P,\xf4P";
    assert_eq!(f.len(), 111);
    let (events, err) = same_for_every_split(f, &tiny_limits());
    assert_eq!(events.len(), 10, "{events:?}");
    assert_eq!(events[9], Event::BigEnd);
    assert_eq!(
        err,
        Some(RdbError::Truncated {
            offset: 111,
            inside: "the data before the EOF marker"
        })
    );
    // As ferry's feeder and the benchmark call it: one push of everything, decoding while the buffer
    // holds `needed()`.
    let mut d = Decoder::new(tiny_limits());
    let mut buf = BytesMut::from(&f[..]);
    let mut n = 0;
    while buf.len() >= d.needed() {
        match d.decode(&mut buf).unwrap() {
            Some(_) => n += 1,
            None => break,
        }
    }
    assert_eq!(n, 10);
}

/// The same at the end of any big value whose last item leaves events behind it: batches of a plain
/// list, of a listpack read whole as one item, and the output of an LZF string, then `BigEnd`.
#[test]
fn big_values_ending_with_the_input_give_every_chunk_and_big_end_when_gated_by_needed() {
    let opts = tiny_limits(); // 48 bytes, 2 elements a chunk
    let mut list = b"REDIS0009\xfe\x00\x01\x01l\x07".to_vec(); // 7 elements of 10 bytes
    for i in 0..7u8 {
        list.push(9);
        list.extend_from_slice(&[b'a' + i; 9]);
    }
    let (events, err) = same_for_every_split(&list, &opts);
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::BigChunk(_)))
            .count(),
        4
    );
    assert_eq!(events.last(), Some(&Event::BigEnd));
    assert!(matches!(
        err,
        Some(RdbError::Truncated {
            inside: "the data before the EOF marker",
            ..
        })
    ));

    // A set listpack (type 20) of 6 members, over the limit: one item, then three chunks and BigEnd.
    let mut lp = Vec::new();
    for i in 0..6u8 {
        lp.extend_from_slice(&[0x87, b'm', b'e', b'm', b'b', b'e', b'r', b'0' + i, 8]);
    }
    let total = 6 + lp.len() + 1;
    let mut blob = (total as u32).to_le_bytes().to_vec();
    blob.extend_from_slice(&6u16.to_le_bytes());
    blob.extend_from_slice(&lp);
    blob.push(0xFF);
    let mut set = b"REDIS0011\xfe\x00\x14\x01s".to_vec();
    set.push(blob.len() as u8);
    set.extend_from_slice(&blob);
    let (events, _) = same_for_every_split(&set, &opts);
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::BigChunk(_)))
            .count(),
        3,
        "{events:?}"
    );
    assert_eq!(events.last(), Some(&Event::BigEnd));

    // An LZF string of 53 compressed bytes (over the limit): 32 'a's, 16 'b's, then 100 more 'b's by
    // one back reference; 148 bytes out in 48-byte parts, the last one from the last input byte.
    let mut z = b"REDIS0009\xfe\x00\x00\x01k\xc3\x35\x40\x94\x1f".to_vec();
    z.extend_from_slice(&[b'a'; 32]);
    z.push(0x0f);
    z.extend_from_slice(&[b'b'; 16]);
    z.extend_from_slice(&[0xE0, 91, 0x00]);
    let (events, err) = same_for_every_split(&z, &opts);
    assert!(matches!(
        err,
        Some(RdbError::Truncated {
            inside: "the data before the EOF marker",
            ..
        })
    ));
    let mut out = Vec::new();
    for e in &events {
        if let Event::BigChunk(Chunk::StringPart(p)) = e {
            out.extend_from_slice(p);
        }
    }
    let mut want = vec![b'a'; 32];
    want.extend_from_slice(&[b'b'; 116]);
    assert_eq!(out, want);
    assert_eq!(events.last(), Some(&Event::BigEnd));
}

/// The header: `needed()` said 9 from the start, but the magic word can be wrong at any of its bytes. A
/// file of 5 bytes "REDIX" was `BadMagic` for a caller that called after every byte, and "truncated
/// inside the header" for one that waited for 9. It now asks for one byte more until the word is in.
#[test]
fn bad_magic_in_a_short_input_is_the_same_when_gated_by_needed() {
    for (data, bad) in [
        (&b"X"[..], true),
        (b"REDIX", true),
        (b"VALKEX", true),
        (b"RV", true),
        (b"REDIS", false),
        (b"REDIS00", false),
        (b"VALKEY08", false),
        (b"", false),
    ] {
        let (events, err) = same_for_every_split(data, &DecoderOptions::default());
        assert!(events.is_empty());
        if bad {
            assert!(
                matches!(err, Some(RdbError::BadMagic { .. })),
                "{data:?}: {err:?}"
            );
        } else {
            assert!(
                matches!(
                    err,
                    Some(RdbError::Truncated {
                        inside: "the header",
                        ..
                    })
                ),
                "{data:?}: {err:?}"
            );
        }
    }
    assert_eq!(Decoder::new(DecoderOptions::default()).needed(), 0);
}

/// A Redis 7.4+ cluster file: SLOT_INFO (slot, keys in the slot, keys with an expiry in it; three
/// lengths, in every length form) before the keys of each slot, as `rdbSaveDb` writes them. Cut anywhere
/// and fed in any way, the same events.
#[test]
fn slot_info_records_are_decoded_the_same_for_any_split_and_any_cut() {
    let mut b =
        b"REDIS0012\xfa\x09redis-ver\x057.4.0\xfa\x08aof-base\xc0\x00\xfe\x00\xfb\x03\x01".to_vec();
    b.extend_from_slice(b"\xf4\x40\x62\x01\x00"); // slot 98: 1 key, 0 with an expiry
    b.extend_from_slice(b"\x00\x08c{slot2}\x01c");
    b.extend_from_slice(b"\xf4\x80\x00\x00\x3f\xff\x02\x01"); // slot 16383 (32-bit form): 2 keys, 1 expiring
    b.extend_from_slice(b"\xfc\x00\x00\x00\x00\x00\x00\x00\x01\x00\x01x\xc0\x07");
    b.extend_from_slice(b"\x00\x01y\x40\x40");
    b.extend_from_slice(&[b'v'; 64]); // over the tiny limit: goes big
    b.extend_from_slice(b"\xf4\x81\x00\x00\x00\x00\x00\x00\x00\x07\x00\x00"); // 64-bit form, empty
    let f = with_trailer(b);
    for opts in [DecoderOptions::default(), tiny_limits()] {
        let (events, err) = same_for_every_split(&f, &opts);
        assert_eq!(err, None);
        let slots: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                Event::SlotInfo {
                    slot,
                    slot_size,
                    expires_slot_size,
                } => Some((*slot, *slot_size, *expires_slot_size)),
                _ => None,
            })
            .collect();
        assert_eq!(slots, [(98, 1, 0), (16383, 2, 1), (7, 0, 0)]);
        every_prefix_same_for_every_split(&f, &opts);
    }
}

/// Valkey 9's SLOT_IMPORT (0xF3): a job name, a count of slot ranges and the ranges, skipped. The record
/// is re-read from its opcode until it is whole, so a count past the 16384 ranges a cluster can have is
/// refused at once (it would hold and re-read a record as long as the input), at the count's offset for
/// any split. In a REDIS file 0xF3 is no opcode.
#[test]
fn slot_import_is_skipped_and_a_count_past_16384_ranges_refused_for_any_split() {
    let mut b = b"VALKEY080\xfe\x00\xf3\x28".to_vec();
    b.extend_from_slice(&[b'j'; 40]);
    b.extend_from_slice(b"\x02\x00\x40\x64\x41\x00\x80\x00\x00\x3f\xff"); // 0-100, 256-16383
    b.extend_from_slice(b"\x00\x01k\x01v");
    let f = with_trailer(b);
    let (events, err) = same_for_every_split(&f, &DecoderOptions::default());
    assert_eq!(err, None);
    assert_eq!(events.len(), 4, "{events:?}"); // Header, SelectDb, Entry, End
    every_prefix_same_for_every_split(&f, &DecoderOptions::default());

    let mut b = b"VALKEY080\xfe\x00\xf3\x01j\x80\x00\x00\x40\x01".to_vec(); // 16385 ranges
    b.extend_from_slice(&[0u8; 64]);
    let (_, err) = same_for_every_split(&b, &DecoderOptions::default());
    assert_eq!(
        err,
        Some(RdbError::Corrupt {
            what: "SLOT_IMPORT",
            offset: 14,
            detail: "16385 slot ranges".into()
        })
    );
    let (_, err) = same_for_every_split(b"REDIS0012\xf3\x01j\x00", &DecoderOptions::default());
    assert_eq!(
        err,
        Some(RdbError::UnknownType {
            byte: 0xF3,
            offset: 9
        })
    );
}

/// A module AUX body is bounded by `max_unchunked_bytes` as a stream or module value is: its own bytes,
/// after the opcode and module id (the limit used to count those too, so a body of exactly the limit was
/// refused and `TooLarge`'s length included them).
#[test]
fn module_aux_body_of_exactly_the_limit_is_accepted_and_one_more_byte_refused() {
    let body = |extra: usize| {
        let mut v = b"\x02\x40\x05".to_vec(); // UINT 5 in a 2-byte length: 3 bytes
        for _ in 0..22 + extra {
            v.extend_from_slice(b"\x02\x05");
        }
        v.push(0); // module EOF: 48 bytes with extra = 0
        v
    };
    for (extra, ok) in [(0, true), (1, false)] {
        let mut b = b"REDIS0009\xf7\x81\x01\x02\x03\x04\x05\x06\x07\x08".to_vec(); // a 64-bit module id
        let raw = body(extra);
        b.extend_from_slice(&raw);
        let f = with_trailer(b);
        let (events, err) = same_for_every_split(&f, &tiny_limits());
        if ok {
            assert_eq!(err, None);
            assert_eq!(
                events[1],
                Event::ModuleAux {
                    module_id: 0x0102030405060708,
                    raw: raw.into()
                }
            );
        } else {
            assert_eq!(
                err,
                Some(RdbError::TooLarge {
                    len: 49,
                    offset: 9,
                    limit: 48
                })
            );
        }
    }
}

/// Found by fuzz/rdb_split (a slow unit: 12 KB, 5 s): a SLOT_IMPORT record of 3,926 ranges fed in small
/// pieces was parsed again from its opcode on every call, quadratic in its length. The ranges are now
/// walked from where the last call stopped. A record of 16384 ranges in their 5-byte form (164 KB) fed
/// byte by byte takes milliseconds (it took minutes); cut short, it is truncated at its opcode.
#[test]
fn long_slot_import_fed_byte_by_byte_is_walked_once() {
    let mut b = b"VALKEY080\xfe\x00\xf3\x28".to_vec();
    b.extend_from_slice(&[b'j'; 40]);
    b.extend_from_slice(b"\x80\x00\x00\x40\x00"); // 16384 ranges
    for i in 0..16384u32 {
        b.push(0x80);
        b.extend_from_slice(&i.to_be_bytes());
        b.push(0x80);
        b.extend_from_slice(&i.to_be_bytes());
    }
    b.extend_from_slice(b"\x00\x01k\x01v");
    let f = with_trailer(b);
    let t = std::time::Instant::now();
    let (events, err) = events_fed(&f, &DecoderOptions::default(), || 1, true);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(err, None);
    assert_eq!(
        events,
        events_then_error(&f, &DecoderOptions::default(), usize::MAX).0
    );
    assert_eq!(events.len(), 4);
    let (_, err) = same_for_every_split(&f[..f.len() - 20], &DecoderOptions::default());
    assert_eq!(
        err,
        Some(RdbError::Truncated {
            offset: 11,
            inside: "a SLOT_IMPORT record"
        })
    );
}

/// Each key's (db, key, type, value bytes) as a decode yields it: whole entries' payloads, and big values'
/// raw pieces joined (`raw_big`).
fn raw_values(events: &[Event]) -> Vec<(u32, Bytes, u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut big: Option<(u32, Bytes, u8, Vec<u8>)> = None;
    for ev in events {
        match ev {
            Event::Entry(e) => out.push((e.db, e.key.clone(), e.rdb_type, e.payload.to_vec())),
            Event::BigStart(h) => big = Some((h.db, h.key.clone(), h.rdb_type, Vec::new())),
            Event::BigRaw(b) => big
                .as_mut()
                .expect("BigRaw after BigStart")
                .3
                .extend_from_slice(b),
            Event::BigEnd => out.push(big.take().expect("BigEnd after BigStart")),
            Event::BigChunk(_) => panic!("BigChunk with raw_big"),
            _ => {}
        }
    }
    assert!(big.is_none(), "a big value without BigEnd");
    out
}

/// With `raw_big`, a value past the limit is yielded as pieces of exactly the bytes the file holds: joined,
/// they equal the payload a decode with no limit yields, for every fixture and any split of the input.
#[test]
fn raw_big_pieces_join_to_the_file_bytes_for_every_fixture_and_split() {
    let Some(dir) = crate::testutil::fixtures_dir() else {
        return;
    };
    let files = rdb_fixtures(&dir.join("rdb"));
    let whole_opts = DecoderOptions {
        max_entry_bytes: usize::MAX / 4,
        max_unchunked_bytes: usize::MAX / 4,
        ..DecoderOptions::default()
    };
    let raw_opts = DecoderOptions {
        max_entry_bytes: 40,
        raw_big: true,
        ..DecoderOptions::default()
    };
    let (mut compared, mut big_seen) = (0, 0);
    for f in &files {
        let data = std::fs::read(f).unwrap();
        let (want_ev, err) = events_then_error(&data, &whole_opts, usize::MAX);
        if err.is_some() {
            continue;
        }
        let want = raw_values(&want_ev);
        for step in [usize::MAX, 1, 7, 100, 4096] {
            let (ev, err) = events_then_error(&data, &raw_opts, step);
            assert!(
                err.is_none(),
                "{}: {err:?} fed {step} at a time",
                f.display()
            );
            big_seen += ev
                .iter()
                .filter(|e| matches!(e, Event::BigStart(_)))
                .count();
            assert!(
                ev.iter()
                    .all(|e| !matches!(e, Event::BigRaw(b) if b.is_empty())),
                "{}: an empty piece",
                f.display()
            );
            assert_eq!(
                raw_values(&ev),
                want,
                "{} fed {step} at a time",
                f.display()
            );
        }
        compared += 1;
    }
    assert!(compared > 100, "only {compared} fixtures compared");
    assert!(big_seen > 100, "only {big_seen} big values seen");
}
