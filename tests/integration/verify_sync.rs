//! `ferry verify` beside `ferry sync`: ferry's own keys (in-target checkpoints, temporary keys, the heartbeat
//! key) are ignored exactly as named on verify's command line, in every mode, and a user key such as
//! `ferry:other` is compared.
//!
//! The real binary runs here, with `--json`, and its log must be clean.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::ferry_proc::{check_output, ferry_command, Ferry};
use crate::support::{wait_until, RedisServer, TempDir};

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
