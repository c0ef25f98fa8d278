//! Full sync across server versions: a newer source into an older target (values re-encoded as native
//! commands, since the target cannot read the source's RDB version) and an older source into a newer one
//! (RESTORE of the source's own bytes).

use std::time::Duration;

use crate::support::ferry_proc::Ferry;
use crate::support::versions::start_version;
use crate::support::{Client, RedisServer, TempDir};

/// Data every version from 5.0 on accepts, in small and large encodings, with TTLs, over dbs 0–2.
fn fill_portable(c: &mut Client) {
    for db in 0..3 {
        c.ok(&["SELECT", &db.to_string()]);
        let p = format!("db{db}:");
        c.ok(&["SET", &format!("{p}str"), "hello"]);
        c.ok(&["SET", &format!("{p}int"), "12345"]);
        c.ok(&[
            b"SET".as_slice(),
            &[p.as_bytes(), b"bin\x00\xff"].concat(),
            b"\x00\x01\xfe\xff",
        ]);
        c.ok(&["SET", &format!("{p}empty"), ""]);
        c.ok(&["SET", &format!("{p}big"), &"x".repeat(100_000)]);
        c.ok(&["RPUSH", &format!("{p}list"), "a", "b", "c"]);
        let many: Vec<String> = (0..1000).map(|i| format!("element-{i}")).collect();
        let mut args = vec!["RPUSH".to_string(), format!("{p}biglist")];
        args.extend(many.iter().cloned());
        c.ok(&args);
        c.ok(&["SADD", &format!("{p}intset"), "1", "2", "3"]);
        c.ok(&["SADD", &format!("{p}set"), "a", "b"]);
        let mut args = vec!["SADD".to_string(), format!("{p}bigset")];
        args.extend(many.iter().cloned());
        c.ok(&args);
        c.ok(&[
            "ZADD",
            &format!("{p}zset"),
            "1.5",
            "a",
            "-2",
            "b",
            "inf",
            "c",
        ]);
        let mut args = vec!["ZADD".to_string(), format!("{p}bigzset")];
        for (i, m) in many.iter().enumerate() {
            args.push(format!("{}.25", i));
            args.push(m.clone());
        }
        c.ok(&args);
        c.ok(&["HSET", &format!("{p}hash"), "f1", "v1", "f2", "v2"]);
        let mut args = vec!["HSET".to_string(), format!("{p}bighash")];
        for m in &many {
            args.push(m.clone());
            args.push(format!("v-{m}"));
        }
        c.ok(&args);
        c.ok(&["XADD", &format!("{p}stream"), "1-1", "f", "v"]);
        c.ok(&["XADD", &format!("{p}stream"), "2-1", "f", "v2"]);
        c.ok(&["XGROUP", "CREATE", &format!("{p}stream"), "g", "0"]);
        c.ok(&[
            "XREADGROUP",
            "GROUP",
            "g",
            "c1",
            "COUNT",
            "1",
            "STREAMS",
            &format!("{p}stream"),
            ">",
        ]);
        c.ok(&["SET", &format!("{p}ttl"), "v"]);
        c.ok(&["PEXPIREAT", &format!("{p}ttl"), "4102444800000"]);
    }
    c.ok(&["SELECT", "0"]);
}

/// A type-aware dump of every key of every db: (db, key, type, canonical value, has-ttl).
fn snapshot(c: &mut Client) -> Vec<String> {
    let mut out = Vec::new();
    for db in 0..3 {
        c.ok(&["SELECT", &db.to_string()]);
        let mut keys: Vec<Vec<u8>> = c
            .ok(&["KEYS", "*"])
            .as_array()
            .iter()
            .map(|k| k.as_bytes().unwrap().to_vec())
            .filter(|k| !crate::support::is_ferry_key(k))
            .collect();
        keys.sort();
        for k in keys {
            let ty = c.ok(&[b"TYPE".as_slice(), &k]).as_string();
            let strs = |r: &crate::support::Reply| -> Vec<String> {
                r.as_array()
                    .iter()
                    .map(|x| format!("{:?}", x.as_bytes()))
                    .collect()
            };
            let val = match ty.as_str() {
                "string" => format!("{:?}", c.ok(&[b"GET".as_slice(), &k]).as_bytes()),
                "list" => strs(&c.ok(&[b"LRANGE".as_slice(), &k, b"0", b"-1"])).join(","),
                "set" => {
                    let mut v = strs(&c.ok(&[b"SMEMBERS".as_slice(), &k]));
                    v.sort();
                    v.join(",")
                }
                "zset" => {
                    strs(&c.ok(&[b"ZRANGE".as_slice(), &k, b"0", b"-1", b"WITHSCORES"])).join(",")
                }
                "hash" => {
                    let flat = strs(&c.ok(&[b"HGETALL".as_slice(), &k]));
                    let mut pairs: Vec<String> = flat.chunks(2).map(|p| p.join("=")).collect();
                    pairs.sort();
                    pairs.join(",")
                }
                "stream" => {
                    let entries = c.ok(&[b"XRANGE".as_slice(), &k, b"-", b"+"]);
                    let groups = c.ok(&[b"XINFO".as_slice(), b"GROUPS", &k]);
                    let g: Vec<String> = groups
                        .as_array()
                        .iter()
                        .map(|g| {
                            let f = g.as_array();
                            // name, consumers, pending, last-delivered-id (by field name, order varies)
                            let mut kv = Vec::new();
                            for p in f.chunks(2) {
                                let name = p[0].as_string();
                                if ["name", "consumers", "pending", "last-delivered-id"]
                                    .contains(&name.as_str())
                                {
                                    kv.push(format!("{name}={}", show(&p[1])));
                                }
                            }
                            kv.join(";")
                        })
                        .collect();
                    format!("{entries:?}|{}", g.join("|"))
                }
                other => other.to_string(),
            };
            let ttl = c.ok(&[b"PTTL".as_slice(), &k]).as_int() > 0;
            out.push(format!("{db} {:?} {ty} {val} ttl={ttl}", k));
        }
    }
    c.ok(&["SELECT", "0"]);
    out
}

/// `--once` from `src_version` into `dst_version`, then an exact comparison. `allowed`: the WARN/ERROR log
/// lines the pair provokes.
fn cross(src_version: &str, dst_version: &str, allowed: &[&str]) {
    let start = |v: &str| -> Option<RedisServer> {
        if v == "7.0" {
            Some(RedisServer::start(&[]))
        } else {
            start_version(v, &[])
        }
    };
    // An absent version was recorded as a skip by start_version (or panicked, when required).
    let (Some(master), Some(target)) = (start(src_version), start(dst_version)) else {
        return;
    };
    let mut m = master.client();
    fill_portable(&mut m);
    let state = TempDir::new("cross");
    let mut ferry =
        Ferry::sync(&[master.url()], &target.url(), state.path(), &["--once"]).allowing(allowed);
    let st = ferry.wait(Duration::from_secs(120));
    assert!(
        st.success(),
        "{src_version} -> {dst_version}: exit {st:?}\n{}",
        ferry.log()
    );
    let (a, b) = (snapshot(&mut m), snapshot(&mut target.client()));
    assert_eq!(
        a.len(),
        b.len(),
        "{src_version} -> {dst_version}: key counts"
    );
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x, y, "{src_version} -> {dst_version}");
    }
}

#[test]
fn newer_source_into_older_target_is_re_encoded() {
    // The precheck says the target is older than the source and values will be re-encoded: the point.
    let reencoded = ["values will be re-encoded"];
    cross("7.4", "5.0", &reencoded);
    cross("valkey-9", "6.2", &reencoded);
    cross("7.0", "6.0", &reencoded);
}

#[test]
fn older_source_into_newer_target_is_restored() {
    cross("5.0", "7.0", &[]);
    cross("6.2", "8.2", &[]);
    cross("7.2", "valkey-9", &[]);
}

fn show(r: &crate::support::Reply) -> String {
    match r {
        crate::support::Reply::Int(i) => i.to_string(),
        other => other.as_string(),
    }
}
