//! `ferry verify` beside `ferry sync`: ferry's own keys (in-target checkpoints, temporary keys, the heartbeat
//! key) are ignored exactly as named on verify's command line, in every mode, and a user key such as
//! `ferry:other` is compared; a list that keeps growing while a running sync copies it is not reported,
//! while a target list that is really shorter or longer is.
//!
//! The real binary runs here, with `--json`, and its log must be clean.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::ferry_proc::{check_output, ferry_command, Ferry};
use crate::support::{wait_until, Client, RedisServer, TempDir};

struct Verdict {
    code: i32,
    json: serde_json::Value,
}

impl Verdict {
    /// `(kind, db, key)` of every difference of the first target.
    fn diffs(&self) -> BTreeSet<(String, u64, String)> {
        self.json["targets"][0]["differences"]
            .as_array()
            .unwrap_or_else(|| panic!("no differences array: {}", self.json))
            .iter()
            .map(|d| {
                (
                    d["kind"].as_str().unwrap_or("?").to_string(),
                    d["db"].as_u64().unwrap_or(u64::MAX),
                    d["key"].as_str().unwrap_or("?").to_string(),
                )
            })
            .collect()
    }

    fn details(&self) -> Vec<String> {
        self.json["targets"][0]["differences"]
            .as_array()
            .map(|v| {
                v.iter()
                    .map(|d| format!("{} {}: {}", d["kind"], d["key"], d["detail"]))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// `ferry verify --json --no-progress --source SRC --target DST EXTRA…`, its log checked.
fn verify(src: &str, tgt: &str, extra: &[&str]) -> Verdict {
    let out = ferry_command()
        .args([
            "verify",
            "--json",
            "--no-progress",
            "--source",
            src,
            "--target",
            tgt,
        ])
        .args(extra)
        .output()
        .unwrap();
    check_output("ferry verify", &out, &[] as &[&str]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "verify printed no JSON ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    Verdict {
        code: out.status.code().unwrap_or(-1),
        json,
    }
}

fn d(kind: &str, db: u64, key: &str) -> (String, u64, String) {
    (kind.to_string(), db, key.to_string())
}

#[test]
fn ferrys_own_keys_are_ignored_exactly_as_named_in_every_mode() {
    let source = RedisServer::start(&[]);
    let target = RedisServer::start(&[]);
    let (mut s, mut t) = (source.client(), target.client());
    for c in [&mut s, &mut t] {
        c.ok(&["SET", "a", "1"]);
        c.ok(&["SET", "ferry:other", "x"]);
        c.ok(&["SELECT", "2"]);
        c.ok(&["RPUSH", "l", "1", "2"]);
        c.ok(&["SELECT", "0"]);
    }
    // ferry's own keys, named as on the command lines below: the heartbeat key in the source, the
    // source's checkpoint key and a temporary key in the target.
    s.ok(&["SET", "hb:custom", "1700000000000"]);
    let cp = format!("cp:127.0.0.1_{}", source.port);
    t.ok(&["SET", &cp, "8de27a1b:10:0"]);
    t.ok(&["SELECT", "2"]);
    t.ok(&[
        "SET",
        &format!("ferry:tmp:127.0.0.1_{}:1", source.port),
        "half",
    ]);
    t.ok(&["SELECT", "0"]);
    let (src, tgt) = (source.url(), target.url());
    let own = [
        "--checkpoint-key-prefix",
        "cp:",
        "--heartbeat-key",
        "hb:custom",
    ];
    for mode in ["full", "keys"] {
        let v = verify(&src, &tgt, &[&own[..], &["--mode", mode]].concat());
        assert_eq!(v.code, 0, "--mode {mode}: {:?}", v.details());
        assert_eq!(v.json["targets"][0]["totals"]["checked"], 3, "{mode}");
        assert_eq!(
            v.json["targets"][0]["totals"]["target_keys_checked"], 3,
            "{mode}"
        );
    }
    // Named otherwise, they are data like any key: the heartbeat key is missing on the target, the
    // checkpoint key extra; the temporary key stays ignored.
    let v = verify(&src, &tgt, &[]);
    assert_eq!(v.code, 1);
    assert_eq!(
        v.diffs(),
        [d("missing", 0, "hb:custom"), d("extra", 0, &cp)].into()
    );
    // A user key under ferry: is compared.
    t.ok(&["SET", "ferry:other", "y"]);
    let v = verify(&src, &tgt, &own);
    assert_eq!(v.diffs(), [d("value", 0, "ferry:other")].into());
    t.ok(&["SET", "ferry:other", "x"]);
    // --mode count finds ferry's keys by name (DBSIZE cannot scan): the heartbeat key and each source's
    // checkpoint key are not counted. (Temporary keys, which exist only while a full sync writes a big
    // value, are not looked for: docs/verify.md.)
    t.ok(&["SELECT", "2"]);
    t.ok(&["DEL", &format!("ferry:tmp:127.0.0.1_{}:1", source.port)]);
    t.ok(&["SELECT", "0"]);
    let v = verify(&src, &tgt, &[&own[..], &["--mode", "count"]].concat());
    assert_eq!(v.code, 0, "{:?} {}", v.details(), v.json);
    let counts = &v.json["targets"][0]["key_counts"];
    assert_eq!(counts[0]["source_keys"], 2, "{counts}");
    assert_eq!(counts[0]["target_keys"], 2, "{counts}");
    // A key of the target that only looks like a checkpoint key is counted.
    t.ok(&["SET", "cp:someone-else", "1"]);
    let v = verify(
        &src,
        &tgt,
        &[&own[..], &["--mode", "count", "--rounds", "0"]].concat(),
    );
    assert_eq!(v.code, 1);
    assert_eq!(v.diffs(), [d("count", 0, "")].into());
}

#[test]
fn count_mode_of_a_synced_copy_leaves_out_the_sync_s_checkpoint_key() {
    let master = RedisServer::start(&[]);
    let target = RedisServer::start(&[]);
    let mut m = master.client();
    for i in 0..300 {
        m.ok(&["SET", &format!("k{i}"), "v"]);
    }
    let state = TempDir::new("verify-count");
    let _ferry = Ferry::sync(&[master.url()], &target.url(), state.path(), &[]);
    let mut t = target.client();
    wait_until("the snapshot", Duration::from_secs(20), || {
        t.data_dbsize() == 300
    });
    wait_until("the in-target checkpoint", Duration::from_secs(20), || {
        t.ok(&["DBSIZE"]).as_int() == 301
    });
    for mode in ["count", "full"] {
        let v = verify(&master.url(), &target.url(), &["--mode", mode]);
        assert_eq!(v.code, 0, "--mode {mode}: {:?} {}", v.details(), v.json);
    }
}

/// RPUSH `n` elements to `key` in batches.
fn fill_list(c: &mut Client, key: &str, from: u64, n: u64) {
    let mut i = from;
    while i < from + n {
        let end = (i + 1000).min(from + n);
        let mut args = vec!["RPUSH".to_string(), key.to_string()];
        args.extend((i..end).map(|x| x.to_string()));
        c.ok(&args);
        i = end;
    }
}

#[test]
fn a_list_growing_while_it_is_compared_is_not_a_false_difference() {
    let master = RedisServer::start(&[]);
    let target = RedisServer::start(&[]);
    let mut m = master.client();
    fill_list(&mut m, "log", 0, 30_000);
    fill_list(&mut m, "small", 0, 20);
    let state = TempDir::new("verify-growing");
    let ferry = Ferry::sync(&[master.url()], &target.url(), state.path(), &[]);
    let mut t = target.client();
    wait_until("the snapshot", Duration::from_secs(30), || {
        t.cmd(&["LLEN", "log"]).as_int() >= 30_000
    });
    let stop = Arc::new(AtomicBool::new(false));
    let (stop2, port) = (stop.clone(), master.port);
    let writer = std::thread::spawn(move || {
        let mut c = Client::connect(port);
        let mut n = 30_000u64;
        while !stop2.load(Ordering::Relaxed) {
            c.ok(&["RPUSH", "log", &n.to_string()]);
            // A steady few thousand writes a second, which a running sync follows within milliseconds
            // (an unthrottled loop on two loaded cores can put it seconds behind: a real lag).
            if n % 8 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            if n % 256 == 0 {
                c.ok(&["RPUSH", "small", &n.to_string()]);
            }
            n += 1;
        }
        n
    });
    // The sync streams: the target follows the writes, a few milliseconds behind.
    wait_until("the stream", Duration::from_secs(30), || {
        t.cmd(&["LLEN", "log"]).as_int() >= 30_500
    });
    // No re-check round: every comparison of the growing lists must be right the first time. Small
    // pages make many of them, and the page holding a list's end moves while it is read; with the default
    // page, `small` is read whole.
    let mut outcomes = Vec::new();
    for page in ["100", "100", "1000"] {
        outcomes.push(verify(
            &master.url(),
            &target.url(),
            &["--rounds", "0", "--page", page],
        ));
    }
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().unwrap();
    assert!(written > 31_000, "the writer barely wrote ({written})");
    for v in &outcomes {
        assert_eq!(
            v.code,
            0,
            "a growing list reported as different: {:?}\nferry log:\n{}",
            v.details(),
            ferry.log()
        );
    }
}

#[test]
fn a_target_list_really_shorter_or_longer_is_reported() {
    let source = RedisServer::start(&[]);
    let target = RedisServer::start(&[]);
    let (mut s, mut t) = (source.client(), target.client());
    for (key, n) in [
        ("short", 10),
        ("long", 10),
        ("bigshort", 5000),
        ("biglong", 5000),
    ] {
        fill_list(&mut s, key, 0, n);
        fill_list(&mut t, key, 0, n);
    }
    t.ok(&["RPOP", "short"]);
    t.ok(&["RPUSH", "long", "extra"]);
    t.ok(&["RPOP", "bigshort"]);
    t.ok(&["RPUSH", "biglong", "extra"]);
    let expected: BTreeSet<_> = ["biglong", "bigshort", "long", "short"]
        .into_iter()
        .map(|k| d("value", 0, k))
        .collect();
    for extra in [
        &["--rounds", "0", "--page", "100"][..],
        &["--round-pause-ms", "50"],
    ] {
        let t0 = std::time::Instant::now();
        let v = verify(&source.url(), &target.url(), extra);
        assert_eq!(v.code, 1, "{extra:?}");
        assert_eq!(v.diffs(), expected, "{extra:?}: {:?}", v.details());
        let details = v.details();
        for (key, src, tgt) in [
            ("short", 10, 9),
            ("long", 10, 11),
            ("bigshort", 5000, 4999),
            ("biglong", 5000, 5001),
        ] {
            let want = format!("list: length {src} on the source, {tgt} on the target");
            assert!(
                details
                    .iter()
                    .any(|x| x.contains(&format!("\"{key}\"")) && x.contains(&want)),
                "{key}: {details:?}"
            );
        }
        // The target is given a moment to catch up, not more.
        assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    }
}
