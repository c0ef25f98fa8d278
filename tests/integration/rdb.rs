//! The RDB decoder against its specification's own writers.
//!
//! (a) Every shared fixture: decoded whole and in seeded random pieces (and byte by byte when small) gives
//! the same events; for files redis-server 7.0.15 loads, the entries it would keep (not expired, not
//! empty) are exactly its `key_count`; files it refuses give a clean result (an error or entries), never a
//! panic.
//!
//! (b) Real servers of every provisioned version (5.0 … 8.2, Valkey 8 and 9): every type in every
//! encoding it has (small/listpack/ziplist, big/hashtable/quicklist/skiplist, intset, LZF strings,
//! streams with groups, PEL and consumers, hash field TTLs on 7.4+/Valkey 9), `SAVE`d, and the dump.rdb
//! decoded: each decoded value equals what the server reports through commands, each entry's payload is
//! exactly `DUMP key` between its type byte and footer, and `dump_footer` recomputes DUMP's footer. The
//! same file decoded with tiny big-value limits gives chunks that reassemble to the same values.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use ferry::rdb::{self, Chunk, Decoder, DecoderOptions, Event, Kind, RdbError, Value};
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::support::versions;
use crate::support::*;

fn decode(
    data: &[u8],
    opts: &DecoderOptions,
    mut piece: impl FnMut() -> usize,
) -> (Vec<Event>, Option<RdbError>) {
    let mut d = Decoder::new(opts.clone());
    let mut buf = BytesMut::new();
    let mut evs = Vec::new();
    let mut fed = 0;
    loop {
        loop {
            match d.decode(&mut buf) {
                Ok(Some(e)) => evs.push(e),
                Ok(None) => break,
                Err(e) => return (evs, Some(e)),
            }
        }
        if fed == data.len() {
            return (evs, d.finish().err());
        }
        let end = (fed + piece().max(1)).min(data.len());
        buf.extend_from_slice(&data[fed..end]);
        fed = end;
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::List(x) | Value::Set(x) => x.is_empty(),
        Value::ZSet(x) => x.is_empty(),
        Value::Hash(x) => x.is_empty(),
        _ => false,
    }
}

fn fixture_files() -> Option<Vec<PathBuf>> {
    let dir = fixtures_dir()?.join("rdb");
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
    Some(files)
}

#[test]
fn fixtures_give_the_servers_key_count_in_any_split() {
    let Some(files) = fixture_files() else { return };
    let opts = DecoderOptions::default();
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut checked = 0;
    for f in &files {
        let data = std::fs::read(f).unwrap();
        let name = f.display().to_string();
        let whole = decode(&data, &opts, || usize::MAX);
        let pieces = decode(&data, &opts, || rng.gen_range(1..4096));
        assert_eq!(whole, pieces, "{name}: random pieces differ from whole");
        if data.len() < 64 << 10 {
            assert_eq!(
                whole,
                decode(&data, &opts, || 1),
                "{name}: byte by byte differs"
            );
        }
        let expected = PathBuf::from(format!("{name}.expected.json"));
        let Ok(text) = std::fs::read_to_string(&expected) else {
            continue;
        };
        let exp: serde_json::Value = serde_json::from_str(&text).unwrap();
        let (evs, err) = whole;
        // Every entry either decodes or gives a clean error.
        let mut values = Vec::new();
        let mut value_err = None;
        for e in &evs {
            if let Event::Entry(e) = e {
                match rdb::decode_value(e.rdb_type, &e.payload) {
                    Ok(v) => values.push((e.expire_ms, v)),
                    Err(x) => value_err = Some(x),
                }
            }
        }
        if exp["load"] == "ok" {
            assert_eq!(
                err, None,
                "{name}: the server loads it, the decoder refused it"
            );
            assert_eq!(value_err, None, "{name}: a value does not decode");
            let now = now_ms();
            let kept = values
                .iter()
                .filter(|(exp, v)| !matches!(exp, Some(ms) if *ms <= now) && !is_empty(v))
                .count();
            assert_eq!(
                kept as i64,
                exp["key_count"].as_i64().unwrap(),
                "{name}: key count"
            );
            checked += 1;
        }
    }
    assert!(checked > 60, "only {checked} loadable fixtures checked");
}

// ------------------------------------------------------------------------------------------ real servers

struct Filled {
    field_ttls: bool,
    set_listpack: bool,
}

fn fill(c: &mut Client) -> Filled {
    let mut rng = StdRng::seed_from_u64(7);
    c.ok(&["SET", "s:int", "12345"]);
    c.ok(&["SET", "s:neg", "-70000"]);
    c.ok(&["SET", "s:small", "hello"]);
    c.ok(&["SET", "s:lzf", "abcdefgh".repeat(2000).as_str()]);
    let rand: Vec<u8> = (0..3000).map(|_| rng.gen()).collect();
    c.ok(&[&b"SET"[..], b"s:rand", &rand]);
    c.ok(&["SET", "s:ttl", "v", "PX", "100000000"]);
    c.ok(&["SET", "1234", "integer key"]);
    // lists: small (ziplist/listpack), big (quicklist of many nodes, compressible elements)
    c.ok(&[
        "RPUSH",
        "l:small",
        "a",
        "1",
        "-2",
        "300",
        "70000",
        "5000000000",
        "x",
    ]);
    let mut big: Vec<String> = vec!["RPUSH".into(), "l:big".into()];
    for i in 0..2000 {
        big.push(if i % 3 == 0 {
            i.to_string()
        } else {
            format!("element-{i}-{}", "z".repeat(i % 50))
        });
    }
    c.ok(&big);
    // sets: intset, listpack (7.2+), hashtable
    c.ok(&[
        "SADD",
        "set:int",
        "1",
        "2",
        "3",
        "-5",
        "70000",
        "1099511627776",
    ]);
    c.ok(&["SADD", "set:small", "a", "b", "c"]);
    let mut big: Vec<String> = vec!["SADD".into(), "set:big".into()];
    big.extend((0..700).map(|i| format!("member:{i}")));
    c.ok(&big);
    // sorted sets: small, big (skiplist), infinite scores
    c.ok(&[
        "ZADD", "z:small", "1.5", "a", "2", "b", "-inf", "c", "inf", "d", "0.1", "e",
    ]);
    let mut big: Vec<String> = vec!["ZADD".into(), "z:big".into()];
    for i in 0..300 {
        big.push(format!("{}", i as f64 / 7.0));
        big.push(format!("zm:{i}"));
    }
    c.ok(&big);
    // hashes: small, big (hashtable), one long value (hashtable by size)
    c.ok(&["HSET", "h:small", "f1", "v1", "f2", "2", "f3", "-3"]);
    let mut big: Vec<String> = vec!["HSET".into(), "h:big".into()];
    for i in 0..700 {
        big.push(format!("field:{i}"));
        big.push(format!("value:{i}"));
    }
    c.ok(&big);
    c.ok(&["HSET", "h:long", "f", "q".repeat(200).as_str()]);
    // stream with deleted entries, two groups, pending entries, consumers
    for i in 0..30 {
        let v = i.to_string();
        if i % 2 == 0 {
            c.ok(&["XADD", "st", "*", "a", v.as_str(), "b", "x"]);
        } else {
            c.ok(&["XADD", "st", "*", "other", v.as_str()]);
        }
    }
    let first = c.ok(&["XRANGE", "st", "-", "+", "COUNT", "3"]);
    for e in first.as_array().iter().skip(1) {
        let id = e.as_array()[0].as_string();
        c.ok(&["XDEL", "st", id.as_str()]);
    }
    c.ok(&["XGROUP", "CREATE", "st", "g1", "0"]);
    c.ok(&[
        "XREADGROUP",
        "GROUP",
        "g1",
        "alice",
        "COUNT",
        "4",
        "STREAMS",
        "st",
        ">",
    ]);
    c.ok(&[
        "XREADGROUP",
        "GROUP",
        "g1",
        "bob",
        "COUNT",
        "2",
        "STREAMS",
        "st",
        ">",
    ]);
    c.ok(&["XGROUP", "CREATE", "st", "g2", "$"]);
    let _ = c.cmd(&["XGROUP", "CREATECONSUMER", "st", "g2", "carol"]);
    c.ok(&["XADD", "st:empty", "1-1", "f", "v"]);
    c.ok(&["XDEL", "st:empty", "1-1"]);
    // hash field TTLs (7.4+, Valkey 9): a small hash (listpack-ex on Redis) and a big one
    c.ok(&["HSET", "hx:small", "f1", "v1", "f2", "v2", "f3", "v3"]);
    let field_ttls = matches!(
        c.cmd(&["HPEXPIRE", "hx:small", "100000000", "FIELDS", "1", "f1"]),
        Reply::Array(_)
    );
    if field_ttls {
        let mut big: Vec<String> = vec!["HSET".into(), "hx:big".into()];
        for i in 0..700 {
            big.push(format!("hf:{i}"));
            big.push(format!("hv:{i}"));
        }
        c.ok(&big);
        c.ok(&[
            "HPEXPIRE",
            "hx:big",
            "200000000",
            "FIELDS",
            "2",
            "hf:1",
            "hf:500",
        ]);
    }
    let set_listpack = matches!(c.cmd(&["OBJECT", "ENCODING", "set:small"]), Reply::Bulk(Some(ref b)) if b == b"listpack");
    Filled {
        field_ttls,
        set_listpack,
    }
}

fn strs(r: &Reply) -> Vec<Vec<u8>> {
    r.as_array()
        .iter()
        .map(|x| x.as_bytes().unwrap_or_default().to_vec())
        .collect()
}

fn b(v: &Bytes) -> Vec<u8> {
    v.to_vec()
}

/// Compare one decoded value with what the server says about its key.
fn compare(c: &mut Client, key: &[u8], v: &Value, field_ttls: bool, who: &str) {
    let k = String::from_utf8_lossy(key).into_owned();
    match v {
        Value::String(s) => {
            assert_eq!(
                c.ok(&[&b"GET"[..], key]).as_bytes().unwrap(),
                &s[..],
                "{who} {k}"
            );
        }
        Value::List(items) => {
            let got = strs(&c.ok(&[&b"LRANGE"[..], key, b"0", b"-1"]));
            assert_eq!(got, items.iter().map(b).collect::<Vec<_>>(), "{who} {k}");
        }
        Value::Set(items) => {
            let mut got = strs(&c.ok(&[&b"SMEMBERS"[..], key]));
            let mut want: Vec<_> = items.iter().map(b).collect();
            got.sort();
            want.sort();
            assert_eq!(got, want, "{who} {k}");
        }
        Value::ZSet(items) => {
            let got = strs(&c.ok(&[&b"ZRANGE"[..], key, b"0", b"-1", b"WITHSCORES"]));
            let mut got: Vec<(Vec<u8>, f64)> = got
                .chunks(2)
                .map(|p| {
                    (
                        p[0].clone(),
                        String::from_utf8_lossy(&p[1]).parse::<f64>().unwrap(),
                    )
                })
                .collect();
            let mut want: Vec<(Vec<u8>, f64)> = items.iter().map(|(m, s)| (b(m), *s)).collect();
            got.sort_by(|a, b| a.0.cmp(&b.0));
            want.sort_by(|a, b| a.0.cmp(&b.0));
            assert_eq!(got, want, "{who} {k}");
        }
        Value::Hash(items) => {
            let got = strs(&c.ok(&[&b"HGETALL"[..], key]));
            let mut got: Vec<(Vec<u8>, Vec<u8>)> = got
                .chunks(2)
                .map(|p| (p[0].clone(), p[1].clone()))
                .collect();
            let mut want: Vec<(Vec<u8>, Vec<u8>)> =
                items.iter().map(|(f, v, _)| (b(f), b(v))).collect();
            got.sort();
            want.sort();
            assert_eq!(got, want, "{who} {k}");
            if field_ttls {
                for (f, _, ttl) in items {
                    let r = c.ok(&[&b"HPEXPIRETIME"[..], key, b"FIELDS", b"1", f]);
                    let t = r.as_array()[0].as_int();
                    assert_eq!(ttl.unwrap_or(-1), t, "{who} {k} field {:?} TTL", f);
                }
            } else {
                assert!(items.iter().all(|i| i.2.is_none()), "{who} {k}: field TTLs");
            }
        }
        Value::Stream(s) => {
            let got = c.ok(&[&b"XRANGE"[..], key, b"-", b"+"]);
            let got: Vec<(String, Vec<Vec<u8>>)> = got
                .as_array()
                .iter()
                .map(|e| (e.as_array()[0].as_string(), strs(&e.as_array()[1])))
                .collect();
            let want: Vec<(String, Vec<Vec<u8>>)> = s
                .entries
                .iter()
                .map(|e| {
                    let kv = e.fields.iter().flat_map(|(f, v)| [b(f), b(v)]).collect();
                    (format!("{}-{}", e.id.ms, e.id.seq), kv)
                })
                .collect();
            assert_eq!(got, want, "{who} {k}: entries");
            assert_eq!(
                c.ok(&[&b"XLEN"[..], key]).as_int() as u64,
                s.length,
                "{who} {k}: length"
            );
            let info = c.ok(&[&b"XINFO"[..], b"STREAM", key]);
            let info: BTreeMap<String, Reply> = info
                .as_array()
                .chunks(2)
                .map(|p| (p[0].as_string(), p[1].clone()))
                .collect();
            assert_eq!(
                info["last-generated-id"].as_string(),
                format!("{}-{}", s.last_id.ms, s.last_id.seq),
                "{who} {k}: last id"
            );
            if let Some(added) = info.get("entries-added") {
                assert_eq!(
                    added.as_int() as u64,
                    s.entries_added,
                    "{who} {k}: entries added"
                );
            }
            let groups = c.ok(&[&b"XINFO"[..], b"GROUPS", key]);
            assert_eq!(groups.as_array().len(), s.groups.len(), "{who} {k}: groups");
            for g in &s.groups {
                let gname = String::from_utf8_lossy(&g.name).into_owned();
                let pend = c.ok(&[&b"XPENDING"[..], key, &g.name, b"-", b"+", b"1000"]);
                let got: Vec<(String, String, i64)> = pend
                    .as_array()
                    .iter()
                    .map(|p| {
                        let p = p.as_array();
                        (p[0].as_string(), p[1].as_string(), p[3].as_int())
                    })
                    .collect();
                let want: Vec<(String, String, i64)> = g
                    .pel
                    .iter()
                    .map(|p| {
                        (
                            format!("{}-{}", p.id.ms, p.id.seq),
                            String::from_utf8_lossy(&p.consumer).into_owned(),
                            p.delivery_count as i64,
                        )
                    })
                    .collect();
                assert_eq!(got, want, "{who} {k}: PEL of {gname}");
                let cons = c.ok(&[&b"XINFO"[..], b"CONSUMERS", key, &g.name]);
                let mut got: Vec<String> = cons
                    .as_array()
                    .iter()
                    .map(|x| x.as_array()[1].as_string())
                    .collect();
                let mut want: Vec<String> = g
                    .consumers
                    .iter()
                    .map(|x| String::from_utf8_lossy(&x.name).into_owned())
                    .collect();
                got.sort();
                want.sort();
                assert_eq!(got, want, "{who} {k}: consumers of {gname}");
            }
        }
        Value::Module { .. } => panic!("{who} {k}: no module values were written"),
    }
}

/// Decode with tiny limits and rebuild each big value from its chunks.
fn reassemble(data: &[u8]) -> BTreeMap<Vec<u8>, Value> {
    let opts = DecoderOptions {
        max_entry_bytes: 300,
        chunk_elements: 7,
        ..DecoderOptions::default()
    };
    let mut rng = StdRng::seed_from_u64(3);
    let (evs, err) = decode(data, &opts, || rng.gen_range(1..2000));
    assert_eq!(err, None);
    let mut out = BTreeMap::new();
    let mut cur: Option<(Vec<u8>, Value)> = None;
    for e in evs {
        match e {
            Event::Entry(e) => {
                out.insert(
                    e.key.to_vec(),
                    rdb::decode_value(e.rdb_type, &e.payload).unwrap(),
                );
            }
            Event::BigStart(h) => {
                let v = match h.kind {
                    Kind::String => Value::String(Bytes::new()),
                    Kind::List => Value::List(vec![]),
                    Kind::Set => Value::Set(vec![]),
                    Kind::ZSet => Value::ZSet(vec![]),
                    Kind::Hash => Value::Hash(vec![]),
                    k => panic!("big {k:?}"),
                };
                cur = Some((h.key.to_vec(), v));
            }
            Event::BigChunk(ch) => {
                let (_, v) = cur.as_mut().expect("chunk outside a big value");
                assert!(match &ch {
                    Chunk::List(x) | Chunk::Set(x) => x.len() <= 7,
                    Chunk::ZSet(x) => x.len() <= 7,
                    Chunk::Hash(x) => x.len() <= 7,
                    Chunk::StringPart(x) => x.len() <= 300,
                });
                match (v, ch) {
                    (Value::String(s), Chunk::StringPart(p)) => {
                        let mut n = s.to_vec();
                        n.extend_from_slice(&p);
                        *s = Bytes::from(n);
                    }
                    (Value::List(a), Chunk::List(x)) | (Value::Set(a), Chunk::Set(x)) => {
                        a.extend(x)
                    }
                    (Value::ZSet(a), Chunk::ZSet(x)) => a.extend(x),
                    (Value::Hash(a), Chunk::Hash(x)) => a.extend(x),
                    (v, ch) => panic!("chunk {ch:?} for {v:?}"),
                }
            }
            Event::BigEnd => {
                let (k, v) = cur.take().expect("end outside a big value");
                out.insert(k, v);
            }
            _ => {}
        }
    }
    out
}

fn check_version(version: &str, bin: &Path) {
    let server = RedisServer::start_bin(bin, &[]);
    let mut c = server.client();
    let filled = fill(&mut c);
    c.ok(&["SAVE"]);
    let file = std::fs::read_dir(server.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "rdb"))
        .unwrap_or_else(|| server.dir.path().join("dump.rdb"));
    let data =
        std::fs::read(&file).unwrap_or_else(|e| panic!("{version}: {}: {e}", file.display()));
    let (evs, err) = decode(&data, &DecoderOptions::default(), || 16 << 10);
    assert_eq!(err, None, "{version}: decoding its own dump.rdb");
    let version_num = match evs.first() {
        Some(Event::Header { version, .. }) => *version,
        other => panic!("{version}: first event {other:?}"),
    };
    let mut whole = BTreeMap::new();
    let mut types = std::collections::BTreeSet::new();
    for e in &evs {
        let Event::Entry(e) = e else { continue };
        types.insert(e.rdb_type);
        let who = format!("{version} (type {})", e.rdb_type);
        let v = rdb::decode_value(e.rdb_type, &e.payload)
            .unwrap_or_else(|x| panic!("{who} {:?}: {x}", e.key));
        compare(&mut c, &e.key, &v, filled.field_ttls, &who);
        // The payload is exactly DUMP's, and dump_footer recomputes DUMP's footer.
        let dump = c.ok(&[&b"DUMP"[..], &e.key]);
        let dump = dump.as_bytes().unwrap();
        assert_eq!(dump[0], e.rdb_type, "{who} {:?}: DUMP type byte", e.key);
        assert_eq!(
            &dump[1..dump.len() - 10],
            &e.payload[..],
            "{who} {:?}: payload vs DUMP",
            e.key
        );
        assert_eq!(
            &dump[dump.len() - 10..],
            &rdb::dump_footer(e.rdb_type, &e.payload, version_num)[..],
            "{who} {:?}: footer",
            e.key
        );
        if let Some(ms) = e.expire_ms {
            let pttl = c.ok(&[&b"PTTL"[..], &e.key]).as_int();
            assert!(
                (ms - now_ms() - pttl).abs() < 60_000,
                "{who} {:?}: expiry {ms} vs PTTL {pttl}",
                e.key
            );
        }
        whole.insert(e.key.to_vec(), v);
    }
    assert_eq!(
        whole.len() as i64,
        c.dbsize(),
        "{version}: keys decoded vs DBSIZE"
    );
    assert_eq!(
        reassemble(&data),
        whole,
        "{version}: big-value chunks vs whole values"
    );
    // Every encoding the version has was exercised.
    let mut want = vec![0u8];
    want.push(if version_num >= 10 { 18 } else { 14 });
    want.extend([2, 11]);
    if filled.set_listpack {
        want.push(20);
    }
    if version_num >= 10 {
        want.extend([16, 17]);
    } else {
        want.extend([12, 13]);
    }
    if filled.field_ttls {
        if version_num == 80 {
            want.push(rdb::VALKEY_HASH_2);
        } else {
            want.extend([24, 25]);
        }
    }
    for t in want {
        assert!(
            types.contains(&t),
            "{version}: no value of type {t} in {types:?}"
        );
    }
    eprintln!(
        "{version}: {} keys, types {types:?}: values, DUMP payloads and chunks agree",
        whole.len()
    );
}

#[test]
fn every_version_every_encoding_matches_the_server_and_dump() {
    let all = versions::available();
    for (v, bin) in &all {
        check_version(v, bin);
    }
    if all.is_empty() {
        // At least the default server.
        check_version("default", &redis_server_bin());
    }
}
