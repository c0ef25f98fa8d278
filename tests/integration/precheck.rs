//! Precheck against real servers: each case gives the right verdict, names what to do, and never shows a
//! password. The library API is called directly (`ferry::precheck::run_checks`), with a short rate sample.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use ferry::endpoint::{RedisAddr, SourceSpec};
use ferry::job::expand_sources;
use ferry::precheck::{run_checks, CheckArgs, CheckOptions, CheckReport, Level};

fn opts() -> CheckOptions {
    CheckOptions {
        rate_sample: Duration::from_millis(250),
        ..CheckOptions::default()
    }
}

fn check_with(sources: &[String], target: &str, opts: &CheckOptions) -> CheckReport {
    let specs: Vec<SourceSpec> = sources.iter().map(|s| s.parse().unwrap()).collect();
    let target: RedisAddr = target.parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let plan = rt.block_on(expand_sources(&specs)).unwrap();
    rt.block_on(run_checks(&plan, &target, opts))
}

fn check(sources: &[String], target: &str) -> CheckReport {
    check_with(sources, target, &opts())
}

/// The one check with `id` about `subject_part`; panics with the report when absent.
fn find<'a>(r: &'a CheckReport, id: &str, subject_part: &str) -> &'a ferry::precheck::Check {
    r.checks
        .iter()
        .find(|c| c.id == id && c.subject.contains(subject_part))
        .unwrap_or_else(|| panic!("no {id} check for {subject_part}:\n{}", r.render_text()))
}

fn fill(s: &RedisServer, db: u32, n: usize) {
    let mut c = s.client();
    c.ok(&["SELECT", &db.to_string()]);
    for i in 0..n {
        c.ok(&["SET", &format!("k:{db}:{i}"), "v"]);
    }
}

#[test]
fn all_ok_one_line_per_check() {
    let (src, dst) = (RedisServer::start(&[]), RedisServer::start(&[]));
    fill(&src, 0, 3);
    fill(&src, 2, 10);
    let r = check(&[src.url()], &dst.url());
    let text = r.render_text();
    assert_eq!(r.worst(), Level::Ok, "{text}");
    let s = format!("127.0.0.1:{}", src.port);
    let t = format!("127.0.0.1:{}", dst.port);
    assert!(find(&r, "source.reachable", &s)
        .message
        .starts_with("reachable, Redis "));
    assert!(find(&r, "source.reachable", &s)
        .message
        .ends_with("role master"));
    assert_eq!(find(&r, "source.auth", &s).message, "no password required");
    assert!(find(&r, "source.psync", &s)
        .message
        .contains("may run PSYNC"));
    assert!(find(&r, "source.backlog", &s)
        .message
        .starts_with("repl-backlog-size 1.0 MB"));
    assert!(
        find(&r, "source.data", &s)
            .message
            .contains("13 keys (db0 3, db2 10)"),
        "{text}"
    );
    for id in [
        "target.reachable",
        "target.auth",
        "target.mode",
        "target.version",
        "target.empty",
        "target.eviction",
        "target.memory",
        "target.databases",
    ] {
        find(&r, id, &t);
    }
    assert_eq!(find(&r, "target.empty", &t).message, "empty");
    // One line per check, plus the summary.
    assert_eq!(text.lines().count(), r.checks.len() + 1, "{text}");
    assert!(
        text.lines()
            .next()
            .unwrap()
            .starts_with(&format!("OK    source {s}  reachable, Redis ")),
        "{text}"
    );
    assert!(text.ends_with("all checks passed: nothing blocks the sync\n"));
    let j = r.to_json();
    assert_eq!(j["ok"], true);
    assert_eq!(j["checks"].as_array().unwrap().len(), r.checks.len());
}

#[test]
fn non_empty_target_is_an_error_and_a_warning_with_overwrite() {
    let (src, dst) = (RedisServer::start(&[]), RedisServer::start(&[]));
    fill(&src, 0, 1);
    fill(&dst, 0, 2);
    fill(&dst, 3, 1);
    let t = format!("127.0.0.1:{}", dst.port);
    let r = check(&[src.url()], &dst.url());
    assert!(r.has_errors());
    let c = find(&r, "target.empty", &t);
    assert_eq!(c.level, Level::Error);
    assert_eq!(c.message, "not empty (3 keys; db0: 2 keys, db3: 1 keys)");
    assert!(c
        .advice
        .as_deref()
        .unwrap()
        .contains("--on-conflict overwrite"));
    assert!(
        r.render_text().contains("ERROR target"),
        "{}",
        r.render_text()
    );

    let ow = CheckOptions {
        overwrite: true,
        ..opts()
    };
    let r = check_with(&[src.url()], &dst.url(), &ow);
    assert!(!r.has_errors(), "{}", r.render_text());
    let c = find(&r, "target.empty", &t);
    assert_eq!(c.level, Level::Warn);
    assert!(c.message.contains("source values replace target values"));
}

#[test]
fn wrong_or_missing_source_password_is_named_without_the_password() {
    let src = RedisServer::start(&["--requirepass", "pw"]);
    let dst = RedisServer::start(&[]);
    let s = format!("127.0.0.1:{}", src.port);
    let secret = "sup3rsecret";
    for url in [
        format!("redis://:{secret}@{s}"),
        format!("redis://bob:{secret}@{s}"),
    ] {
        let r = check(&[url], &dst.url());
        let c = find(&r, "source.auth", &s);
        assert_eq!(c.level, Level::Error, "{}", r.render_text());
        assert!(c.message.contains("WRONGPASS"), "{}", c.message);
        let (text, json) = (r.render_text(), r.to_json().to_string());
        assert!(!text.contains(secret), "{text}");
        assert!(!json.contains(secret), "{json}");
        assert_eq!(find(&r, "source.reachable", &s).level, Level::Ok);
    }
    let r = check(&[src.url()], &dst.url());
    let c = find(&r, "source.auth", &s);
    assert_eq!(c.level, Level::Error);
    assert!(c.message.contains("NOAUTH"), "{}", c.message);
    assert!(c.advice.as_deref().unwrap().contains("redis://:PASSWORD@"));
    // The right password: authenticated, and the password still never shows.
    let r = check(&[format!("redis://:pw@{s}")], &dst.url());
    assert_eq!(
        find(&r, "source.auth", &s).message,
        "authenticated with the password"
    );
    assert!(!r.has_errors(), "{}", r.render_text());
}

#[test]
fn acl_user_without_replication_permissions_is_an_error() {
    let src = RedisServer::start(&[]);
    let dst = RedisServer::start(&[]);
    let mut c = src.client();
    c.ok(&[
        "ACL",
        "SETUSER",
        "norepl",
        "on",
        ">pw",
        "~*",
        "+@all",
        "-psync",
        "-sync",
        "-replconf",
    ]);
    c.ok(&[
        "ACL", "SETUSER", "nopsync", "on", ">pw", "~*", "+@all", "-psync", "-sync",
    ]);
    c.ok(&[
        "ACL",
        "SETUSER",
        "repl",
        "on",
        ">pw",
        "+psync",
        "+replconf",
        "+ping",
        "+info",
    ]);
    let s = format!("127.0.0.1:{}", src.port);

    let r = check(&[format!("redis://norepl:pw@{s}")], &dst.url());
    let p = find(&r, "source.psync", &s);
    assert_eq!(p.level, Level::Error, "{}", r.render_text());
    assert!(p.message.contains("may not run REPLCONF"), "{}", p.message);
    assert!(p.message.contains("NOPERM"), "{}", p.message);
    assert!(p
        .advice
        .as_deref()
        .unwrap()
        .contains("ACL SETUSER norepl +psync +replconf"));

    let r = check(&[format!("redis://nopsync:pw@{s}")], &dst.url());
    let p = find(&r, "source.psync", &s);
    assert_eq!(p.level, Level::Error, "{}", r.render_text());
    assert!(p.message.contains("may not run PSYNC"), "{}", p.message);

    // A replication-only user: REPLCONF allowed; ACL DRYRUN refused, so PSYNC is not verifiable (not an
    // error), and the rest of the source is still checked.
    let r = check(&[format!("redis://repl:pw@{s}")], &dst.url());
    let p = find(&r, "source.psync", &s);
    assert_eq!(p.level, Level::Ok, "{}", r.render_text());
    assert!(p.message.contains("not verifiable"), "{}", p.message);
    // CONFIG GET is not allowed for this user: the backlog size comes from INFO.
    assert!(find(&r, "source.backlog", &s)
        .message
        .starts_with("repl-backlog-size 1.0 MB"));
}

#[test]
fn target_maxmemory_too_small_is_an_error() {
    let src = RedisServer::start(&[]);
    let dst = RedisServer::start(&["--maxmemory", "4mb"]);
    let mut c = src.client();
    let big = "x".repeat(200 * 1024);
    for i in 0..40 {
        c.ok(&["SET", &format!("big:{i}"), &big]);
    }
    let t = format!("127.0.0.1:{}", dst.port);
    let r = check(&[src.url()], &dst.url());
    let m = find(&r, "target.memory", &t);
    assert_eq!(m.level, Level::Error, "{}", r.render_text());
    assert!(m.message.contains("cannot hold the copy"), "{}", m.message);
    assert!(m
        .advice
        .as_deref()
        .unwrap()
        .contains("CONFIG SET maxmemory "));
}

#[test]
fn eviction_policy_is_a_warning() {
    let src = RedisServer::start(&[]);
    let dst = RedisServer::start(&["--maxmemory-policy", "allkeys-lru"]);
    let t = format!("127.0.0.1:{}", dst.port);
    let r = check(&[src.url()], &dst.url());
    let e = find(&r, "target.eviction", &t);
    assert_eq!(e.level, Level::Warn);
    assert!(e.message.contains("allkeys-lru"));
    assert!(e.advice.as_deref().unwrap().contains("noeviction"));
    assert!(!r.has_errors(), "{}", r.render_text());
}

#[test]
fn tiny_backlog_under_writes_gets_a_suggestion() {
    let src = RedisServer::start(&["--repl-backlog-size", "16kb"]);
    let dst = RedisServer::start(&[]);
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written, port) = (stop.clone(), written.clone(), src.port);
        std::thread::spawn(move || {
            let mut c = Client::connect(port);
            let v = "v".repeat(1024);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                c.ok(&["SET", &format!("w:{}", i % 1000), &v]);
                i += 1;
                written.store(i, Ordering::Relaxed);
                // Pacing of the load (about 1 MB/s), not synchronisation.
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    wait_until("the writer is writing", Duration::from_secs(5), || {
        written.load(Ordering::Relaxed) > 20
    });
    let s = format!("127.0.0.1:{}", src.port);
    let r = check(&[src.url()], &dst.url());
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let b = find(&r, "source.backlog", &s);
    assert_eq!(b.level, Level::Warn, "{}", r.render_text());
    assert!(b.message.contains("holds only"), "{}", b.message);
    let advice = b.advice.as_deref().unwrap();
    assert!(
        advice.contains("CONFIG SET repl-backlog-size ") && advice.contains("mb"),
        "{advice}"
    );
    assert!(!r.has_errors(), "{}", r.render_text());
}

#[test]
fn unreachable_source_is_an_error_quickly() {
    let dst = RedisServer::start(&[]);
    let port = free_port();
    let started = Instant::now();
    let r = check(&[format!("redis://127.0.0.1:{port}")], &dst.url());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    let c = find(&r, "source.reachable", &format!("127.0.0.1:{port}"));
    assert_eq!(c.level, Level::Error);
    assert!(c.message.contains("cannot connect"), "{}", c.message);
    // The target is still checked; its memory check says the source was not counted.
    let m = find(&r, "target.memory", &format!("127.0.0.1:{}", dst.port));
    assert!(m.message.contains("1 sources not counted"), "{}", m.message);
}

#[test]
fn twemproxy_pool_gives_a_line_per_server_and_a_proxy_target_is_named() {
    let (a, b) = (RedisServer::start(&[]), RedisServer::start(&[]));
    let dst = RedisServer::start(&[]);
    let nc = Nutcracker::start(&[(a.port, "m1"), (b.port, "m2")]);
    let src = format!("twemproxy:{}", nc.config_path.display());
    let r = check(std::slice::from_ref(&src), &dst.url());
    for p in [a.port, b.port] {
        let s = format!("source 127.0.0.1:{p}");
        for id in [
            "source.reachable",
            "source.psync",
            "source.backlog",
            "source.data",
        ] {
            assert_eq!(find(&r, id, &s).level, Level::Ok, "{}", r.render_text());
        }
    }
    assert!(!r.has_errors(), "{}", r.render_text());

    // nutcracker as the target: PING answers, INFO does not.
    let r = check(&[src], &format!("redis://127.0.0.1:{}", nc.port));
    let m = find(&r, "target.mode", &format!("127.0.0.1:{}", nc.port));
    assert_eq!(m.level, Level::Error, "{}", r.render_text());
    assert!(m.message.contains("proxy"), "{}", m.message);
}

#[test]
fn cluster_and_replica_roles() {
    let master = RedisServer::start(&[]);
    let replica = RedisServer::start(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
    let cluster = RedisServer::start(&["--cluster-enabled", "yes"]);
    let dst = RedisServer::start(&[]);
    let mut rc = replica.client();
    wait_until("the replica's link is up", Duration::from_secs(10), || {
        rc.info_field("replication", "master_link_status")
            .as_deref()
            == Some("up")
    });
    let r = check(&[replica.url()], &dst.url());
    let p = find(&r, "source.psync", &format!("127.0.0.1:{}", replica.port));
    assert_eq!(p.level, Level::Ok, "{}", r.render_text());
    assert!(p.message.contains("replica of 127.0.0.1"), "{}", p.message);

    let r = check(&[cluster.url()], &dst.url());
    let m = find(&r, "source.mode", &format!("127.0.0.1:{}", cluster.port));
    assert_eq!(m.level, Level::Error);
    assert!(
        m.message.contains("node of a Redis Cluster"),
        "{}",
        m.message
    );
    assert!(
        m.advice
            .as_deref()
            .unwrap_or_default()
            .contains("cluster://"),
        "a cluster node given as redis:// is pointed to cluster://: {}",
        r.render_text()
    );

    // A cluster target, a replica target, and the target being the source itself.
    let r = check(&[master.url()], &cluster.url());
    assert_eq!(
        find(&r, "target.mode", &format!("127.0.0.1:{}", cluster.port)).level,
        Level::Error
    );
    let r = check(&[master.url()], &replica.url());
    let m = find(&r, "target.mode", &format!("127.0.0.1:{}", replica.port));
    assert_eq!(m.level, Level::Error);
    assert!(m.message.contains("READONLY"), "{}", m.message);
    let r = check(&[master.url()], &master.url());
    assert_eq!(
        find(&r, "target.distinct", &format!("127.0.0.1:{}", master.port)).level,
        Level::Error
    );
}

#[test]
fn older_target_is_a_reencoding_warning() {
    let Some(old) = versions::start_version("6.2", &[]) else {
        return;
    };
    let src = RedisServer::start(&[]);
    let r = check(&[src.url()], &old.url());
    let v = find(&r, "target.version", &format!("127.0.0.1:{}", old.port));
    assert_eq!(v.level, Level::Warn, "{}", r.render_text());
    assert!(v
        .message
        .contains("re-encoded with native commands (slower)"));
    assert!(!r.has_errors(), "{}", r.render_text());
}

#[derive(clap::Parser)]
struct CheckCli {
    #[command(flatten)]
    args: CheckArgs,
}

fn cli(args: &[&str]) -> i32 {
    use clap::Parser;
    let mut argv = vec!["check"];
    argv.extend_from_slice(args);
    let parsed = CheckCli::try_parse_from(argv).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(ferry::precheck::run_cli(parsed.args))
}

#[test]
fn cli_exit_status() {
    let (src, dst) = (RedisServer::start(&[]), RedisServer::start(&[]));
    let fast = ["--rate-sample-ms", "100", "--json"];
    let (su, du) = (src.url(), dst.url());
    let ok: Vec<&str> = ["--source", &su, "--target", &du]
        .into_iter()
        .chain(fast)
        .collect();
    assert_eq!(cli(&ok), 0);
    fill(&dst, 0, 1);
    assert_eq!(cli(&ok), 1);
    let mut ow = ok.clone();
    ow.extend(["--on-conflict", "overwrite"]);
    assert_eq!(cli(&ow), 0);
    let missing = TempDir::new("precheck");
    let bad = format!("twemproxy:{}", missing.path().join("nope.yml").display());
    assert_eq!(cli(&["--source", &bad, "--target", &dst.url()]), 2);
    assert_eq!(
        cli(&["--source", &src.url(), "--target", &dst.url(), "--db", "x"]),
        2
    );
}

#[test]
fn other_versions_pre_acl_source_and_valkey_source() {
    let dst = RedisServer::start(&[]);
    let t = format!("127.0.0.1:{}", dst.port);
    if let Some(old) = versions::start_version("5.0", &[]) {
        let s = format!("127.0.0.1:{}", old.port);
        let r = check(&[old.url()], &dst.url());
        assert!(!r.has_errors(), "{}", r.render_text());
        assert!(find(&r, "source.reachable", &s)
            .message
            .contains("Redis 5.0."));
        assert!(find(&r, "source.psync", &s)
            .message
            .contains("PSYNC and REPLCONF available"));
        assert_eq!(find(&r, "target.version", &t).level, Level::Ok);
    }
    if let Some(vk) = versions::start_version("valkey-9", &[]) {
        let s = format!("127.0.0.1:{}", vk.port);
        let r = check(&[vk.url()], &dst.url());
        assert!(!r.has_errors(), "{}", r.render_text());
        assert!(find(&r, "source.reachable", &s)
            .message
            .contains("Valkey 9."));
        let v = find(&r, "target.version", &t);
        assert_eq!(v.level, Level::Warn, "{}", r.render_text());
        assert!(v.message.contains("Valkey 9."), "{}", v.message);
    }
}

#[test]
fn rdb_file_sources() {
    let dst = RedisServer::start(&[]);
    let dir = TempDir::new("precheck-rdb");
    let good = dir.path().join("dump.rdb");
    std::fs::write(&good, b"REDIS0011\xfa\x09redis-ver\x057.2.4\xff").unwrap();
    let missing = dir.path().join("missing.rdb");
    let bad = dir.path().join("bad.rdb");
    std::fs::write(&bad, b"not an rdb file").unwrap();
    let r = check(
        &[
            format!("rdb:{}", good.display()),
            format!("rdb:{}", missing.display()),
            format!("rdb:{}", bad.display()),
        ],
        &dst.url(),
    );
    let c = find(&r, "source.rdb", "dump.rdb");
    assert_eq!(c.level, Level::Ok);
    assert!(c.message.contains("format 11"), "{}", c.message);
    assert_eq!(find(&r, "source.rdb", "missing.rdb").level, Level::Error);
    assert_eq!(find(&r, "source.rdb", "bad.rdb").level, Level::Error);
    // Format 11 (Redis 7.2) into Redis 7.0 (RDB 10): re-encoded.
    let v = find(&r, "target.version", &format!("127.0.0.1:{}", dst.port));
    assert_eq!(v.level, Level::Warn, "{}", r.render_text());
}
