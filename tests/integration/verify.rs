//! `ferry verify` against real servers: equal data of every type exits 0 (also through the type-aware
//! path and across encodings and versions); each kind of planted difference is reported exactly once and
//! nothing else; passwords never appear; a 1,000,000-member set and a 200,000-element list are compared
//! with bounded memory; a twemproxy pool of masters as the source (and as the target); a running
//! `ferry sync` with a concurrent writer gives no false report.
//!
//! The library's `run_cli_to` is driven directly (the test's own runtime, its output in memory);
//! `the_binary_runs_verify_like_the_library` runs the real binary.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use clap::Parser;
use ferry::verify::{self, VerifyArgs};
use tokio_util::sync::CancellationToken;

use crate::support::*;

#[derive(Parser)]
struct Cmd {
    #[command(flatten)]
    a: VerifyArgs,
}

struct Outcome {
    code: i32,
    out: String,
    err: String,
}

impl Outcome {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.out)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\nstderr:\n{}", self.out, self.err))
    }

    /// `(kind, db, key)` of every listed difference of the first target.
    fn diffs(&self) -> BTreeSet<(String, u64, String)> {
        let j = self.json();
        j["targets"][0]["differences"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["kind"].as_str().unwrap().to_string(),
                    d["db"].as_u64().unwrap(),
                    d["key"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    fn totals(&self) -> serde_json::Value {
        self.json()["targets"][0]["totals"].clone()
    }
}

/// Run `ferry verify ARGS… --no-progress` in-process (the test's own runtime, 2 workers).
fn run_verify(args: &[&str]) -> Outcome {
    let mut all = vec!["verify", "--no-progress"];
    all.extend_from_slice(args);
    let cmd = Cmd::try_parse_from(&all).unwrap_or_else(|e| panic!("bad test arguments: {e}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = rt.block_on(verify::run_cli_to(
        cmd.a,
        CancellationToken::new(),
        &mut out,
        &mut err,
    ));
    Outcome {
        code,
        out: String::from_utf8_lossy(&out).into_owned(),
        err: String::from_utf8_lossy(&err).into_owned(),
    }
}

fn src_tgt(src: &str, tgt: &str, extra: &[&str]) -> Outcome {
    let mut a = vec!["--source", src, "--target", tgt];
    a.extend_from_slice(extra);
    run_verify(&a)
}

/// Absolute expiry shared by both sides (ms since the epoch, 10 minutes ahead).
fn at_ms(ahead_ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    (now + ahead_ms).to_string()
}

/// Send many commands at once and check every reply.
fn pipeline(c: &mut Client, cmds: &[Vec<Vec<u8>>]) {
    for a in cmds {
        c.send(a);
    }
    for a in cmds {
        let r = c.read().unwrap();
        if let Reply::Error(e) = r {
            panic!(
                "{:?} failed: {e}",
                String::from_utf8_lossy(&a[0]).into_owned()
            );
        }
    }
}

fn args(parts: &[&str]) -> Vec<Vec<u8>> {
    parts.iter().map(|p| p.as_bytes().to_vec()).collect()
}

/// The same data on any server: every type, small and big encodings, binary keys and values, TTLs
/// (one shared absolute expiry, and keys that expire while verifying), dbs 0–2, a stream with a
/// consumer group and pending entries, and ferry's heartbeat key when `heartbeat`.
fn fill(c: &mut Client, expire_at: &str, heartbeat: bool) {
    for db in 0..3 {
        c.ok(&["SELECT", &db.to_string()]);
        let k = |s: &str| format!("db{db}:{s}");
        let mut cmds = vec![
            args(&["SET", &k("str"), "hello"]),
            args(&["SET", &k("int"), "12345"]),
            args(&["SET", &k("empty"), ""]),
            args(&["SET", &k("long"), &"x".repeat(100_000)]),
            vec![
                b"SET".to_vec(),
                [format!("db{db}:bin").as_bytes(), b"\x00\xff"].concat(),
                b"\x00\xff\r\nv".to_vec(),
            ],
            args(&["RPUSH", &k("list"), "a", "b", "c", "1"]),
            args(&["SADD", &k("intset"), "1", "2", "-3", "9000000000"]),
            args(&["SADD", &k("set"), "a", "b", "c"]),
            args(&["ZADD", &k("zset"), "1.5", "a", "-inf", "b", "inf", "c"]),
            args(&["HSET", &k("hash"), "f1", "v1", "f2", "", "n", "42"]),
            args(&["PFADD", &k("hll"), "a", "b", "c"]),
            args(&["SETBIT", &k("bits"), "1000", "1"]),
            args(&["SET", &k("ttl"), "v", "PXAT", expire_at]),
            args(&["HSET", &k("ttlhash"), "f", "v"]),
            args(&["PEXPIREAT", &k("ttlhash"), expire_at]),
            args(&["SET", &k("short"), "v", "PX", "300"]),
        ];
        // Big ones, beyond the default page (1000 elements) and, for the string, the 1 MiB piece.
        let mut big = vec!["RPUSH".to_string(), k("biglist")];
        big.extend((0..3000).map(|i| format!("item-{i}")));
        cmds.push(big.iter().map(|s| s.as_bytes().to_vec()).collect());
        let mut big = vec!["SADD".to_string(), k("bigset")];
        big.extend((0..2500).map(|i| format!("member-{i}")));
        cmds.push(big.iter().map(|s| s.as_bytes().to_vec()).collect());
        let mut big = vec!["ZADD".to_string(), k("bigzset")];
        for i in 0..2500 {
            big.push(format!("{}", i as f64 / 7.0));
            big.push(format!("m{i}"));
        }
        cmds.push(big.iter().map(|s| s.as_bytes().to_vec()).collect());
        let mut big = vec!["HSET".to_string(), k("bighash")];
        for i in 0..2500 {
            big.push(format!("field-{i}"));
            big.push("v".repeat(i % 40));
        }
        cmds.push(big.iter().map(|s| s.as_bytes().to_vec()).collect());
        cmds.push(args(&["SET", &k("bigstr"), &"y".repeat(3 << 20)]));
        for i in 1..=2500 {
            let id = format!("{i}-1");
            cmds.push(args(&["XADD", &k("bigstream"), &id, "f", &i.to_string()]));
        }
        for i in 1..=20 {
            let id = format!("{i}-0");
            cmds.push(args(&[
                "XADD",
                &k("stream"),
                &id,
                "a",
                "1",
                "b",
                &i.to_string(),
            ]));
        }
        cmds.push(args(&["XGROUP", "CREATE", &k("stream"), "g1", "0"]));
        cmds.push(args(&["XGROUP", "CREATE", &k("stream"), "g2", "$"]));
        pipeline(c, &cmds);
        c.ok(&[
            "XREADGROUP",
            "GROUP",
            "g1",
            "alice",
            "COUNT",
            "3",
            "STREAMS",
            &k("stream"),
            ">",
        ]);
        if heartbeat {
            c.ok(&["SET", "ferry:heartbeat", "12345"]);
        }
    }
    c.ok(&["SELECT", "0"]);
}

fn filled_pair(target_extra: &[&str]) -> (RedisServer, RedisServer) {
    let (src, tgt) = (RedisServer::start(&[]), RedisServer::start(target_extra));
    let at = at_ms(600_000);
    fill(&mut src.client(), &at, true);
    fill(&mut tgt.client(), &at, false);
    (src, tgt)
}

#[test]
fn equal_data_of_every_type_exits_0_in_every_mode() {
    let (src, tgt) = filled_pair(&[]);
    let fast = &["--rounds", "2", "--round-pause-ms", "50"];
    let o = src_tgt(&src.url(), &tgt.url(), &[fast, &["--json"][..]].concat());
    assert_eq!(o.code, 0, "{}\n{}", o.out, o.err);
    let t = o.totals();
    assert!(t["checked"].as_u64().unwrap() >= 3 * 21, "{t}");
    // Every source key equal, except short-lived ones that expired while verifying.
    let n = |f: &str| t[f].as_u64().unwrap();
    assert!(n("matched") + n("skipped_expired") >= n("checked"), "{t}");
    assert!(n("matched") + 3 >= n("checked"), "{t}");
    // The heartbeat key is on the source only and is ignored.
    assert!(!o.out.contains("ferry:heartbeat"));

    // Type-aware everywhere (no DUMP), and with small pages and pieces so every value takes the paged path.
    for extra in [
        &["--no-dump"][..],
        &["--page", "7", "--chunk-bytes", "1000", "--scan-count", "5"][..],
        &["--mode", "keys"][..],
        &["--mode", "count"][..],
        &["--sample", "50", "--seed", "7"][..],
    ] {
        let o = src_tgt(&src.url(), &tgt.url(), &[fast, extra].concat());
        assert_eq!(o.code, 0, "{extra:?}:\n{}\n{}", o.out, o.err);
        assert!(o.out.contains("EQUAL"), "{extra:?}:\n{}", o.out);
    }
}

#[test]
fn equal_values_in_other_encodings_are_equal() {
    // The target stores every collection in its big encoding: DUMP payloads differ, values do not.
    let (src, tgt) = filled_pair(&[
        "--hash-max-ziplist-entries",
        "0",
        "--set-max-intset-entries",
        "0",
        "--zset-max-ziplist-entries",
        "0",
        "--list-max-ziplist-size",
        "1",
    ]);
    let o = src_tgt(
        &src.url(),
        &tgt.url(),
        &["--json", "--rounds", "1", "--round-pause-ms", "20"],
    );
    assert_eq!(o.code, 0, "{}\n{}", o.out, o.err);
}

/// Plant one difference of each kind on the target of an equal pair.
fn plant(src: &mut Client, tgt: &mut Client) {
    let at = at_ms(600_000);
    let both = |c: &mut Client| {
        let mut cmds = vec![
            args(&["SET", "p:missing", "VALUE-SECRET-1"]),
            args(&["SET", "p:str", "VALUE-SECRET-A"]),
            args(&["RPUSH", "p:list", "a", "b", "c"]),
            args(&["SADD", "p:set", "a", "b", "c"]),
            args(&["ZADD", "p:zset", "1", "a", "2", "b"]),
            args(&["HSET", "p:hash", "f1", "v1", "f2", "v2"]),
            args(&["XADD", "p:stream", "1-1", "f", "v"]),
            args(&["XADD", "p:group", "1-1", "f", "v"]),
            args(&["SET", "p:ttl-missing", "v", "PXAT", &at]),
            args(&["SET", "p:ttl-diff", "v", "PXAT", &at]),
            args(&["SET", "p:ttl-extra", "v"]),
            args(&["SET", "p:type", "v"]),
            args(&["SET", "p:moved", "v"]),
            args(&["SET", "p:bigstr", &"s".repeat(3 << 20)]),
        ];
        let mut big = vec!["RPUSH".to_string(), "p:biglist".into()];
        big.extend((0..5000).map(|i| format!("e{i}")));
        cmds.push(big.iter().map(|s| s.as_bytes().to_vec()).collect());
        let mut big = vec!["SADD".to_string(), "p:bigset".into()];
        big.extend((0..5000).map(|i| format!("m{i}")));
        cmds.push(big.iter().map(|s| s.as_bytes().to_vec()).collect());
        let mut big = vec!["ZADD".to_string(), "p:bigzset".into()];
        for i in 0..3000 {
            big.push(i.to_string());
            big.push(format!("m{i}"));
        }
        cmds.push(big.iter().map(|s| s.as_bytes().to_vec()).collect());
        let mut big = vec!["HSET".to_string(), "p:bighash".into()];
        for i in 0..3000 {
            big.push(format!("f{i}"));
            big.push(format!("v{i}"));
        }
        cmds.push(big.iter().map(|s| s.as_bytes().to_vec()).collect());
        for i in 1..=3000 {
            cmds.push(args(&["XADD", "p:bigstream", &format!("{i}-0"), "f", "v"]));
        }
        pipeline(c, &cmds);
        c.ok(&["SELECT", "1"]);
        c.ok(&["SET", "p:db1", "VALUE-SECRET-B"]);
        c.ok(&["SELECT", "0"]);
    };
    both(src);
    both(tgt);
    src.ok(&["XADD", "p:stream", "2-1", "f", "v"]);
    tgt.ok(&["XADD", "p:stream", "2-1", "f", "VALUE-SECRET-C"]);
    src.ok(&["XGROUP", "CREATE", "p:group", "g", "0"]);
    tgt.ok(&["XGROUP", "CREATE", "p:group", "g", "$"]);
    // On the target only:
    let cmds = vec![
        args(&["DEL", "p:missing"]),
        args(&["SET", "p:extra", "VALUE-SECRET-2"]),
        args(&["SET", "p:str", "VALUE-SECRET-Z"]),
        args(&["LSET", "p:list", "1", "c"]),
        args(&["LSET", "p:list", "2", "b"]),
        args(&["SREM", "p:set", "c"]),
        args(&["SADD", "p:set", "d"]),
        args(&["ZADD", "p:zset", "3", "b"]),
        args(&["HSET", "p:hash", "f2", "VALUE-SECRET-D"]),
        args(&["PERSIST", "p:ttl-missing"]),
        args(&["PEXPIREAT", "p:ttl-diff", &at_ms(660_000)]),
        args(&["PEXPIRE", "p:ttl-extra", "600000"]),
        args(&["DEL", "p:type"]),
        args(&["RPUSH", "p:type", "v"]),
        args(&["MOVE", "p:moved", "3"]),
        args(&["SETRANGE", "p:bigstr", "2500000", "Z"]),
        args(&["LSET", "p:biglist", "4321", "VALUE-SECRET-E"]),
        args(&["SREM", "p:bigset", "m4000"]),
        args(&["SADD", "p:bigset", "VALUE-SECRET-F"]),
        args(&["ZADD", "p:bigzset", "99999", "m2999"]),
        args(&["HSET", "p:bighash", "f2000", "VALUE-SECRET-G"]),
        args(&["XDEL", "p:bigstream", "2500-0"]),
        args(&["XADD", "p:bigstream", "3001-0", "f", "v"]),
        args(&["SELECT", "1"]),
        args(&["SET", "p:db1", "VALUE-SECRET-H"]),
        args(&["SELECT", "0"]),
    ];
    pipeline(tgt, &cmds);
}

fn planted() -> BTreeSet<(String, u64, String)> {
    let d = |kind: &str, db: u64, key: &str| (kind.to_string(), db, key.to_string());
    [
        d("missing", 0, "p:missing"),
        d("extra", 0, "p:extra"),
        d("value", 0, "p:str"),
        d("value", 0, "p:list"),
        d("value", 0, "p:set"),
        d("value", 0, "p:zset"),
        d("value", 0, "p:hash"),
        d("value", 0, "p:stream"),
        d("value", 0, "p:group"),
        d("ttl", 0, "p:ttl-missing"),
        d("ttl", 0, "p:ttl-diff"),
        d("ttl", 0, "p:ttl-extra"),
        d("type", 0, "p:type"),
        d("other_db", 0, "p:moved"),
        d("value", 0, "p:bigstr"),
        d("value", 0, "p:biglist"),
        d("value", 0, "p:bigset"),
        d("value", 0, "p:bigzset"),
        d("value", 0, "p:bighash"),
        d("value", 0, "p:bigstream"),
        d("value", 1, "p:db1"),
    ]
    .into_iter()
    .collect()
}

#[test]
fn each_planted_difference_is_reported_once_and_nothing_else() {
    let (src, tgt) = filled_pair(&[]);
    plant(&mut src.client(), &mut tgt.client());
    let quick = ["--rounds", "1", "--round-pause-ms", "20"];
    for extra in [&[][..], &["--no-dump"][..], &["--page", "100"][..]] {
        let o = src_tgt(
            &src.url(),
            &tgt.url(),
            &[&quick[..], &["--json"], extra].concat(),
        );
        assert_eq!(o.code, 1, "{extra:?}\n{}\n{}", o.out, o.err);
        let j = o.json();
        let list = j["targets"][0]["differences"].as_array().unwrap().clone();
        assert_eq!(list.len(), planted().len(), "{extra:?}: {:#?}", o.diffs());
        assert_eq!(o.diffs(), planted(), "{extra:?}");
        let moved = list.iter().find(|d| d["key"] == "p:moved").unwrap();
        assert_eq!(moved["target_db"], 3, "{moved}");
        // Never a value, in any output.
        assert!(!o.out.contains("VALUE-SECRET"), "{}", o.out);
        assert!(!o.err.contains("VALUE-SECRET"), "{}", o.err);
        let t = o.totals();
        assert_eq!(t["missing"], 1);
        assert_eq!(t["extra"], 1);
        assert_eq!(t["other_db"], 1);
        assert_eq!(t["type_differs"], 1);
        assert_eq!(t["ttl_differs"], 3);
        assert_eq!(t["value_differs"], 14);
    }

    // The human report: counts per kind, the keys, the reasons, no values; and the failure line.
    let o = src_tgt(
        &src.url(),
        &tgt.url(),
        &[&quick[..], &["--show", "20"]].concat(),
    );
    assert_eq!(o.code, 1);
    for want in [
        "DIFFERENT",
        "1 missing on the target",
        "1 extra on the target",
        "1 in another db",
        "db0 -> db3 \"p:moved\"",
        "\"p:biglist\": list: element 4321 differs",
        "\"p:zset\": zset: score of the member at rank 1 differs",
        "\"p:ttl-missing\": the source key expires",
    ] {
        assert!(o.out.contains(want), "missing {want:?} in:\n{}", o.out);
    }
    assert!(!o.out.contains("VALUE-SECRET"), "{}", o.out);
    assert!(o.err.contains("21 difference(s)"), "{}", o.err);

    // Keys only: presence and type; values and TTLs are not compared.
    let o = src_tgt(
        &src.url(),
        &tgt.url(),
        &[&quick[..], &["--json", "--mode", "keys"]].concat(),
    );
    assert_eq!(o.code, 1);
    let kinds: BTreeSet<String> = o.diffs().into_iter().map(|d| d.0).collect();
    assert_eq!(
        kinds,
        ["extra", "missing", "other_db", "type"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );

    // Counts per db: db0 lost two keys (missing, moved) and gained one (extra); db3 gained one.
    let o = src_tgt(
        &src.url(),
        &tgt.url(),
        &[&quick[..], &["--json", "--mode", "count"]].concat(),
    );
    assert_eq!(o.code, 1, "{}", o.out);
    let counts = o.json()["targets"][0]["key_counts"].clone();
    let db = |n: u64| {
        counts
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["db"] == n)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        db(0)["source_keys"].as_u64().unwrap(),
        db(0)["target_keys"].as_u64().unwrap() + 1
    );
    assert_eq!(
        (db(3)["source_keys"].as_u64(), db(3)["target_keys"].as_u64()),
        (Some(0), Some(1))
    );
    let kinds: BTreeSet<(String, u64)> = o.diffs().into_iter().map(|d| (d.0, d.1)).collect();
    assert_eq!(
        kinds,
        [("count".to_string(), 0), ("count".to_string(), 3)]
            .into_iter()
            .collect()
    );
}

#[test]
fn a_sample_compares_about_that_share_of_the_keys() {
    let (src, tgt) = (RedisServer::start(&[]), RedisServer::start(&[]));
    for s in [&src, &tgt] {
        let cmds: Vec<Vec<Vec<u8>>> = (0..4000)
            .map(|i| args(&["SET", &format!("k{i}"), "v"]))
            .collect();
        pipeline(&mut s.client(), &cmds);
    }
    // 400 keys missing on the target: a 10% sample finds some, not all.
    let cmds: Vec<Vec<Vec<u8>>> = (0..400).map(|i| args(&["DEL", &format!("k{i}")])).collect();
    pipeline(&mut tgt.client(), &cmds);
    let o = src_tgt(
        &src.url(),
        &tgt.url(),
        &["--json", "--sample", "10", "--seed", "1", "--rounds", "0"],
    );
    assert_eq!(o.code, 1, "{}", o.err);
    let j = o.json();
    assert_eq!(j["sample_percent"], 10.0);
    let t = o.totals();
    let checked = t["checked"].as_u64().unwrap();
    assert!((250..600).contains(&checked), "{t}");
    let missing = t["missing"].as_u64().unwrap();
    assert!((10..100).contains(&missing), "{t}");
}

#[test]
fn the_rate_limit_paces_the_comparison() {
    let (src, tgt) = (RedisServer::start(&[]), RedisServer::start(&[]));
    for s in [&src, &tgt] {
        let cmds: Vec<Vec<Vec<u8>>> = (0..1000)
            .map(|i| args(&["SET", &format!("k{i}"), "v"]))
            .collect();
        pipeline(&mut s.client(), &cmds);
    }
    // 2000 keys (both directions) at 2000 keys/s in batches of 100: the first batch is free, the other
    // 1900 keys take ~0.95 s.
    let t0 = Instant::now();
    let o = src_tgt(
        &src.url(),
        &tgt.url(),
        &["--rate", "2000", "--scan-count", "100", "--rounds", "0"],
    );
    assert_eq!(o.code, 0, "{}\n{}", o.out, o.err);
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
}

#[test]
fn passwords_never_appear_and_failures_exit_2() {
    let src = RedisServer::start(&["--requirepass", "src-Secret-1"]);
    let tgt = RedisServer::start(&[
        "--user",
        "alice",
        "on",
        ">tgt-Secret-2",
        "~*",
        "&*",
        "+@all",
    ]);
    let mut s = src.client();
    s.ok(&["AUTH", "src-Secret-1"]);
    s.ok(&["SET", "a", "1"]);
    let mut t = tgt.client();
    t.ok(&["AUTH", "alice", "tgt-Secret-2"]);
    t.ok(&["SET", "a", "1"]);
    t.ok(&["SET", "b", "1"]);
    let src_url = format!("redis://:src-Secret-1@127.0.0.1:{}", src.port);
    let tgt_url = format!("redis://alice:tgt-Secret-2@127.0.0.1:{}", tgt.port);
    let secret = |o: &Outcome| o.out.contains("Secret") || o.err.contains("Secret");
    for json in [false, true] {
        let mut extra = vec!["--rounds", "0"];
        if json {
            extra.push("--json");
        }
        let o = src_tgt(&src_url, &tgt_url, &extra);
        assert_eq!(o.code, 1, "{}\n{}", o.out, o.err);
        assert!(!secret(&o), "{}\n{}", o.out, o.err);
        assert!(
            o.out
                .contains(&format!("redis://alice@127.0.0.1:{}", tgt.port)),
            "{}",
            o.out
        );
    }
    // A wrong password: could not compare (2), the reason named, no password.
    let bad = format!("redis://alice:wrong-Secret-3@127.0.0.1:{}", tgt.port);
    let o = src_tgt(&src_url, &bad, &[]);
    assert_eq!(o.code, 2, "{}\n{}", o.out, o.err);
    assert!(
        o.err.contains("could not compare") && o.err.contains("authentication failed"),
        "{}",
        o.err
    );
    assert!(!secret(&o), "{}", o.err);
    // Nothing listening.
    let o = src_tgt(
        &src_url,
        &format!("redis://:x-Secret-4@127.0.0.1:{}", free_port()),
        &[],
    );
    assert_eq!(o.code, 2, "{}", o.err);
    assert!(
        o.err.contains("target") && o.err.contains("cannot connect"),
        "{}",
        o.err
    );
    assert!(!secret(&o), "{}", o.err);
    // A usage error: 2, and clap's message does not echo the URL with its password.
    let mut cmd = vec![
        "verify",
        "--source",
        "redis://:y-Secret-5@nohost",
        "--target",
        "redis://h:1",
    ];
    let e = Cmd::try_parse_from(&cmd)
        .err()
        .expect("refused")
        .to_string();
    assert!(!e.contains("Secret"), "{e}");
    cmd[2] = "redis://127.0.0.1:1";
    let a = Cmd::try_parse_from([&cmd[..], &["--sample", "0"]].concat()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = rt.block_on(verify::run_cli_to(
        a.a,
        CancellationToken::new(),
        &mut out,
        &mut err,
    ));
    assert_eq!(code, 2);
    assert!(String::from_utf8_lossy(&err).contains("--sample"));
}

#[test]
fn a_million_member_set_and_a_200k_list_are_compared_in_bounded_memory() {
    let (src, tgt) = (RedisServer::start(&[]), RedisServer::start(&[]));
    let script = "for i=1,1000000 do redis.call('SADD', KEYS[1], 'member:' .. i) end \
                  for i=1,200000,1000 do local t = {} for j=i,i+999 do t[#t+1] = 'item:' .. j end \
                  redis.call('RPUSH', KEYS[2], unpack(t)) end return 1";
    for s in [&src, &tgt] {
        s.client().ok(&["EVAL", script, "2", "bigset", "biglist"]);
    }
    tgt.client().ok(&["LSET", "biglist", "150000", "changed"]);
    let t0 = Instant::now();
    let o = src_tgt(&src.url(), &tgt.url(), &["--json", "--rounds", "0"]);
    let took = t0.elapsed();
    assert_eq!(o.code, 1, "{}\n{}", o.out, o.err);
    let diffs = o.diffs();
    assert_eq!(
        diffs,
        [("value".to_string(), 0, "biglist".to_string())]
            .into_iter()
            .collect()
    );
    let j = o.json();
    let peak = j["targets"][0]["peak_reply_bytes"].as_u64().unwrap();
    // SMEMBERS alone would bring ~15 MB; pages of 1000 stay far below 1 MB.
    assert!(peak > 0 && peak < 1 << 20, "peak reply bytes {peak}");
    assert_eq!(
        j["targets"][0]["differences"][0]["detail"],
        "list: element 150000 differs"
    );
    eprintln!(
        "verify: 1,000,000-member set + 200,000-element list in {took:?} (peak reply {peak} bytes)"
    );
}

/// Three masters behind a real nutcracker as the source, one server as the target.
#[test]
fn a_twemproxy_pool_against_one_target() {
    let masters: Vec<RedisServer> = (0..3).map(|_| RedisServer::start(&[])).collect();
    let names = ["shard-a", "shard-b", "shard-c"];
    let servers: Vec<(u16, &str)> = masters.iter().map(|m| m.port).zip(names).collect();
    let nc = Nutcracker::start(&servers);
    let tgt = RedisServer::start(&[]);
    let cmds: Vec<Vec<Vec<u8>>> = (0..1500)
        .flat_map(|i| {
            [
                args(&["SET", &format!("s:{i}"), &format!("v{i}")]),
                args(&["HSET", &format!("h:{i}"), "f", &i.to_string()]),
            ]
        })
        .collect();
    pipeline(&mut nc.client(), &cmds);
    pipeline(&mut tgt.client(), &cmds);
    let counts: Vec<i64> = masters.iter().map(|m| m.client().dbsize()).collect();
    assert!(counts.iter().all(|&n| n > 0), "{counts:?}");
    let pool = format!("twemproxy:{}", nc.config_path.display());

    let o = src_tgt(&pool, &tgt.url(), &["--json", "--rounds", "0"]);
    assert_eq!(o.code, 0, "{}\n{}", o.out, o.err);
    let j = o.json();
    assert_eq!(j["targets"][0]["totals"]["checked"], 3000);
    assert_eq!(j["targets"][0]["totals"]["target_keys_checked"], 3000);
    let servers: BTreeSet<String> = j["targets"][0]["per_db"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["role"] == "source")
        .map(|d| d["server"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(servers.len(), 3, "{servers:?}");

    // An extra key on the target, a changed hash, a key gone, a key the pool holds on the wrong shard.
    let mut t = tgt.client();
    t.ok(&["SET", "only-on-target", "v"]);
    t.ok(&["HSET", "h:7", "f", "other"]);
    t.ok(&["DEL", "s:8"]);
    let o = src_tgt(&pool, &tgt.url(), &["--json", "--rounds", "0"]);
    assert_eq!(o.code, 1);
    let d = |kind: &str, key: &str| (kind.to_string(), 0u64, key.to_string());
    assert_eq!(
        o.diffs(),
        [
            d("extra", "only-on-target"),
            d("value", "h:7"),
            d("missing", "s:8")
        ]
        .into_iter()
        .collect()
    );
    let extra = o.json()["targets"][0]["differences"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["kind"] == "extra")
        .cloned()
        .unwrap();
    assert!(
        extra["detail"]
            .as_str()
            .unwrap()
            .starts_with("not on its source redis://127.0.0.1:"),
        "{extra}"
    );

    // The same pool as the target of one master holding the same data.
    let single = RedisServer::start(&[]);
    pipeline(&mut single.client(), &cmds);
    let o = src_tgt(&single.url(), &pool, &["--json", "--rounds", "0"]);
    assert_eq!(o.code, 0, "{}\n{}", o.out, o.err);
    assert_eq!(o.totals()["target_keys_checked"], 3000);
    let mut n = nc.client();
    n.ok(&["DEL", "s:9"]);
    let o = src_tgt(&single.url(), &pool, &["--json", "--rounds", "0"]);
    assert_eq!(
        o.diffs(),
        [d("missing", "s:9")].into_iter().collect(),
        "{}",
        o.out
    );
}

/// A writer keeps changing the source while its replica follows; verify's re-check rounds must not
/// report changes still in flight. (A Redis replica stands for the synced copy: it is the reference for
/// a live copy, and the test does not depend on the state of ferry's own sync.)
#[test]
fn a_live_copy_with_a_concurrent_writer_gives_no_false_report() {
    let src = RedisServer::start(&["--enable-debug-command", "yes"]);
    let at = at_ms(600_000);
    fill(&mut src.client(), &at, false);
    let port = src.port.to_string();
    let tgt = RedisServer::start(&[
        "--replicaof",
        "127.0.0.1",
        &port,
        "--enable-debug-command",
        "yes",
    ]);
    // The writer's key space exists before verify scans it.
    let cmds: Vec<Vec<Vec<u8>>> = (0..5000)
        .flat_map(|k| {
            [
                args(&["SET", &format!("w:s:{k}"), "0"]),
                args(&["HSET", &format!("w:h:{k}"), "f0", "0"]),
                args(&["RPUSH", &format!("w:l:{k}"), "0"]),
            ]
        })
        .collect();
    pipeline(&mut src.client(), &cmds);
    let (mut s, mut t) = (src.client(), tgt.client());
    wait_until("the replica is in sync", Duration::from_secs(30), || {
        t.info_field("replication", "master_link_status").as_deref() == Some("up")
            && s.ok(&["DEBUG", "DIGEST"]) == t.ok(&["DEBUG", "DIGEST"])
    });

    // The writer: random keys out of 5000, every type, some with short TTLs, until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let port = src.port;
    let flag = stop.clone();
    let writer = std::thread::spawn(move || {
        let mut c = Client::connect(port);
        let mut n = 0u64;
        let mut x = 12345u64;
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = x % 5000;
            let v = n.to_string();
            match n % 7 {
                0 => c.ok(&["SET", &format!("w:s:{k}"), &v]),
                1 => c.ok(&["HSET", &format!("w:h:{k}"), &format!("f{}", x % 10), &v]),
                2 => c.ok(&["RPUSH", &format!("w:l:{k}"), &v]),
                3 => c.ok(&["SADD", &format!("w:t:{k}"), &v]),
                4 => c.ok(&["ZADD", &format!("w:z:{k}"), &v, "m"]),
                5 => c.ok(&["SET", &format!("w:e:{k}"), &v, "PX", "700"]),
                _ => c.ok(&["DEL", &format!("w:s:{}", (k + 1) % 5000)]),
            };
            n += 1;
        }
        n
    });
    let mut probe = src.client();
    wait_until("the writer is writing", Duration::from_secs(10), || {
        probe
            .info_field("stats", "total_commands_processed")
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > 20_000)
    });
    let before = Instant::now();
    let o = src_tgt(
        &src.url(),
        &tgt.url(),
        &["--json", "--rounds", "5", "--round-pause-ms", "300"],
    );
    let writes = {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap()
    };
    assert!(
        writes > 100,
        "the writer wrote only {writes} times in {:?}",
        before.elapsed()
    );
    assert_eq!(
        o.code, 0,
        "false report under load ({writes} writes):\n{}\n{}",
        o.out, o.err
    );
    eprintln!(
        "verify under load: {writes} concurrent writes, totals {}",
        o.totals()
    );
}

/// `--db` and `--map-db` as `ferry sync` takes them: only the kept source dbs are compared, each with
/// the target db it was written into; target dbs no kept source db maps to are not looked at.
#[test]
fn db_filter_and_mapping_match_sync() {
    let (src, tgt) = (RedisServer::start(&[]), RedisServer::start(&[]));
    let keys = |c: &mut Client, db: &str, prefix: &str| {
        c.ok(&["SELECT", db]);
        let cmds: Vec<Vec<Vec<u8>>> = (0..200)
            .map(|i| args(&["HSET", &format!("{prefix}{i}"), "f", &i.to_string()]))
            .collect();
        pipeline(c, &cmds);
    };
    let (mut s, mut t) = (src.client(), tgt.client());
    keys(&mut s, "0", "zero:"); // not synced
    keys(&mut s, "1", "one:");
    keys(&mut s, "2", "two:");
    keys(&mut t, "0", "one:"); // db 1 went into db 0
    keys(&mut t, "2", "two:");
    keys(&mut t, "5", "other:"); // no kept source db maps here
    let map = ["--db", "1,2", "--map-db", "1:0", "--rounds", "0", "--json"];
    let o = src_tgt(&src.url(), &tgt.url(), &map);
    assert_eq!(o.code, 0, "{}\n{}", o.out, o.err);
    assert_eq!(o.totals()["checked"], 400);
    assert_eq!(o.totals()["target_keys_checked"], 400);
    let o = src_tgt(
        &src.url(),
        &tgt.url(),
        &[&map[..], &["--mode", "count"]].concat(),
    );
    assert_eq!(o.code, 0, "{}\n{}", o.out, o.err);
    // Without the mapping, everything is where it should not be.
    let o = src_tgt(&src.url(), &tgt.url(), &["--rounds", "0", "--json"]);
    assert_eq!(o.code, 1);

    t.ok(&["SELECT", "0"]);
    t.ok(&["DEL", "one:5"]);
    t.ok(&["SET", "stray", "v"]);
    t.ok(&["SELECT", "2"]);
    t.ok(&["HSET", "two:9", "f", "changed"]);
    let o = src_tgt(&src.url(), &tgt.url(), &map);
    assert_eq!(o.code, 1);
    let d = |kind: &str, db: u64, key: &str| (kind.to_string(), db, key.to_string());
    assert_eq!(
        o.diffs(),
        [
            d("missing", 1, "one:5"),
            d("extra", 0, "stray"),
            d("value", 2, "two:9")
        ]
        .into_iter()
        .collect()
    );
    let j = o.json();
    let missing = j["targets"][0]["differences"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["kind"] == "missing")
        .cloned()
        .unwrap();
    assert_eq!(missing["target_db"], 0, "{missing}");
}

/// A difference that is gone by the re-check is not reported: it counts as equal after a re-check.
#[test]
fn a_difference_fixed_before_the_recheck_is_not_reported() {
    let (src, tgt) = (RedisServer::start(&[]), RedisServer::start(&[]));
    let cmds: Vec<Vec<Vec<u8>>> = (0..100)
        .map(|i| args(&["SET", &format!("k{i}"), "v"]))
        .collect();
    pipeline(&mut src.client(), &cmds);
    pipeline(&mut tgt.client(), &cmds);
    tgt.client().ok(&["SET", "k7", "x"]);
    let url = (src.url(), tgt.url());
    let run = std::thread::spawn(move || {
        src_tgt(
            &url.0,
            &url.1,
            &["--json", "--rounds", "2", "--round-pause-ms", "3000"],
        )
    });
    // The first pass has read k7's value on the target (GET follows the differing DUMP): fix it now,
    // well inside the 3 s pause before the re-check.
    let mut t = tgt.client();
    let gets = |c: &mut Client| {
        let stats = c.ok(&["INFO", "commandstats"]).as_string();
        stats
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_get:calls="))
            .and_then(|v| v.split(',').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    wait_until(
        "the first pass read k7 on the target",
        Duration::from_secs(20),
        || gets(&mut t) >= 1,
    );
    t.ok(&["SET", "k7", "v"]);
    let o = run.join().unwrap();
    assert_eq!(o.code, 0, "{}\n{}", o.out, o.err);
    let totals = o.totals();
    assert_eq!(totals["matched"], 100, "{totals}");
    assert_eq!(totals["matched_on_recheck"], 1, "{totals}");
}

/// Cross-version pairs take the type-aware path (no common RDB version) and, without PEXPIRETIME,
/// compare expiries through PTTL; hash field expiries are compared where both servers have them.
#[test]
fn other_versions_and_hash_field_expiry() {
    let (Some(old), Some(new)) = (
        versions::start_version("6.2", &[]),
        versions::start_version("7.4", &[]),
    ) else {
        return;
    };
    let at = at_ms(600_000);
    fill(&mut old.client(), &at, false);
    fill(&mut new.client(), &at, false);
    let o = src_tgt(
        &old.url(),
        &new.url(),
        &["--json", "--rounds", "1", "--round-pause-ms", "20"],
    );
    assert_eq!(o.code, 0, "{}\n{}", o.out, o.err);
    new.client().ok(&["PEXPIREAT", "db0:ttl", &at_ms(700_000)]);
    new.client().ok(&["LSET", "db0:biglist", "2999", "x"]);
    // One re-check round: `short` (PX 300) may expire between reading the source and the target; the
    // re-check classifies it as expired, while the planted differences persist.
    let o = src_tgt(
        &old.url(),
        &new.url(),
        &["--json", "--rounds", "1", "--round-pause-ms", "20"],
    );
    let d = |kind: &str, key: &str| (kind.to_string(), 0u64, key.to_string());
    assert_eq!(
        o.diffs(),
        [d("ttl", "db0:ttl"), d("value", "db0:biglist")]
            .into_iter()
            .collect(),
        "{}",
        o.out
    );

    let other = versions::start_version("7.4", &[]).expect("7.4 is provisioned: it started above");
    for c in [&mut new.client(), &mut other.client()] {
        c.ok(&["FLUSHALL"]);
        c.ok(&["HSET", "h", "a", "1", "b", "2"]);
        c.ok(&["HPEXPIREAT", "h", &at, "FIELDS", "1", "a"]);
        let mut big = vec!["HSET".to_string(), "bigh".into()];
        for i in 0..3000 {
            big.push(format!("f{i}"));
            big.push("v".into());
        }
        c.ok(&big);
        c.ok(&["HPEXPIREAT", "bigh", &at, "FIELDS", "1", "f1500"]);
    }
    let o = src_tgt(&new.url(), &other.url(), &["--json", "--rounds", "0"]);
    assert_eq!(o.code, 0, "{}\n{}", o.out, o.err);
    other.client().ok(&["HPERSIST", "h", "FIELDS", "1", "a"]);
    other.client().ok(&[
        "HPEXPIREAT",
        "bigh",
        &at_ms(900_000),
        "FIELDS",
        "1",
        "f1500",
    ]);
    for extra in [&[][..], &["--no-dump"][..]] {
        let o = src_tgt(
            &new.url(),
            &other.url(),
            &[&["--json", "--rounds", "0"][..], extra].concat(),
        );
        assert_eq!(
            o.diffs(),
            [d("ttl", "bigh"), d("ttl", "h")].into_iter().collect(),
            "{extra:?} {}",
            o.out
        );
    }
}

/// The binary behaves like the library: exit 0 on equal data, 1 on differences, 2 when it cannot
/// compare, and never prints a password.
#[test]
fn the_binary_runs_verify_like_the_library() {
    let help = std::process::Command::new(ferry_bin())
        .args(["verify", "--help"])
        .output()
        .unwrap();
    assert!(
        help.status.success(),
        "`ferry verify --help` failed: {}",
        String::from_utf8_lossy(&help.stderr)
    );
    let src = RedisServer::start(&["--requirepass", "bin-Secret"]);
    let tgt = RedisServer::start(&[]);
    let mut s = src.client();
    s.ok(&["AUTH", "bin-Secret"]);
    s.ok(&["SET", "a", "1"]);
    tgt.client().ok(&["SET", "a", "1"]);
    let src_url = format!("redis://:bin-Secret@127.0.0.1:{}", src.port);
    let run = |target: &str| {
        let o = ferry_proc::ferry_command()
            .args([
                "verify", "--source", &src_url, "--target", target, "--rounds", "0",
            ])
            .output()
            .unwrap();
        // Differences and an unreachable target are the report and the exit status, not log lines.
        ferry_proc::check_output(target, &o, &[] as &[&str]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!text.contains("bin-Secret"), "{text}");
        (o.status.code(), text)
    };
    assert_eq!(run(&tgt.url()).0, Some(0));
    tgt.client().ok(&["SET", "b", "1"]);
    assert_eq!(run(&tgt.url()).0, Some(1));
    assert_eq!(
        run(&format!("redis://127.0.0.1:{}", free_port())).0,
        Some(2)
    );
}
