//! Issue 11: master mode (`--apply replication`): ferry is the target's master. The target loads one merged
//! RDB and applies one merged stream; every test ends with an exact comparison of the whole data set, the
//! target a writable master again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::support::fault_proxy::FaultProxy;
use crate::support::ferry_proc::Ferry;
use crate::support::{
    data_digest, data_items, data_items_of, free_port, wait_until, Client, DataItem, RedisServer,
    TempDir,
};

fn source() -> RedisServer {
    RedisServer::start(&[
        "--enable-debug-command",
        "yes",
        "--repl-diskless-sync-delay",
        "0",
        "--repl-backlog-size",
        "64mb",
    ])
}

fn target() -> RedisServer {
    RedisServer::start(&["--enable-debug-command", "yes"])
}

/// Keys of every type over dbs 0 and 3, some with a TTL, one list past `--big-value-bytes 4096`.
fn fill(c: &mut Client, tag: &str) {
    for i in 0..300 {
        c.ok(&["SET", &format!("{tag}:s:{i}"), &format!("v{i}")]);
    }
    for i in 0..20 {
        c.ok(&[
            "HSET",
            &format!("{tag}:h:{i}"),
            "a",
            "1",
            "b",
            &i.to_string(),
        ]);
        c.ok(&["PEXPIRE", &format!("{tag}:h:{i}"), "600000"]);
        c.ok(&["SADD", &format!("{tag}:set:{i}"), "x", "y", &i.to_string()]);
        c.ok(&["ZADD", &format!("{tag}:z:{i}"), "1", "a", "2.5", "b"]);
        c.ok(&["XADD", &format!("{tag}:x:{i}"), "*", "f", &i.to_string()]);
        c.ok(&["PFADD", &format!("{tag}:hll:{i}"), "a", "b", "c"]);
    }
    let mut args = vec!["RPUSH".to_string(), format!("{tag}:biglist")];
    args.extend((0..3000).map(|i| format!("item-{i}")));
    c.ok(&args);
    c.ok(&["SELECT", "3"]);
    for i in 0..50 {
        c.ok(&["SET", &format!("{tag}:db3:{i}"), "x"]);
    }
    c.ok(&["SELECT", "0"]);
}

/// Non-idempotent writes on every source until stopped, counting rounds.
struct Load {
    stop: AtomicBool,
    rounds: AtomicU64,
}

impl Load {
    fn new() -> Load {
        Load {
            stop: AtomicBool::new(false),
            rounds: AtomicU64::new(0),
        }
    }

    fn run(&self, ports: &[u16]) {
        let mut cs: Vec<Client> = ports.iter().map(|p| Client::connect(*p)).collect();
        let mut n = 0u64;
        while !self.stop.load(Ordering::Relaxed) {
            for (k, c) in cs.iter_mut().enumerate() {
                c.ok(&["INCR", &format!("counter:{k}:{}", n % 16)]);
                c.ok(&["RPUSH", &format!("list:{k}:{}", n % 4), &n.to_string()]);
                c.ok(&["MULTI"]);
                c.cmd(&["HINCRBY", &format!("hash:{k}"), "f", "1"]);
                c.cmd(&["SELECT", "3"]);
                c.cmd(&["INCR", &format!("db3counter:{k}")]);
                c.ok(&["EXEC"]);
                c.ok(&["SELECT", "0"]);
            }
            n += 1;
            self.rounds.store(n, Ordering::Relaxed);
        }
    }

    /// Stops the load when dropped: a failing assertion inside `thread::scope` must not leave the load
    /// thread running (the scope would wait for it forever).
    fn stopper(&self) -> Stopper<'_> {
        Stopper(self)
    }

    fn wait_rounds(&self, more: u64) {
        let want = self.rounds.load(Ordering::Relaxed) + more;
        wait_until("the load made progress", Duration::from_secs(30), || {
            self.rounds.load(Ordering::Relaxed) >= want
        });
    }
}

struct Stopper<'a>(&'a Load);

impl Drop for Stopper<'_> {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Relaxed);
    }
}

fn union(sources: &[&RedisServer]) -> Vec<DataItem> {
    let mut cs: Vec<Client> = sources.iter().map(|s| s.client()).collect();
    data_items_of(&mut cs)
}

/// Poll until the target holds exactly the sources' data.
fn wait_equal(sources: &[&RedisServer], target: &RedisServer, ferry: &Ferry, what: &str) {
    let mut t = target.client();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let want = union(sources);
        let mut got = data_items(&mut t);
        got.sort();
        if want == got {
            return;
        }
        if std::time::Instant::now() > deadline {
            panic!(
                "{what}: the target differs after 60 s: {} items wanted, {} found\nferry log:\n{}",
                want.len(),
                got.len(),
                ferry.log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Wait until the target loaded the merged RDB `times` times in all (its first ACK); on a timeout the failure shows ferry's log
/// and the target's.
fn wait_loaded(ferry: &Ferry, target: &RedisServer, what: &str, times: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while ferry
        .log()
        .matches("the target loaded the merged RDB")
        .count()
        < times
    {
        if std::time::Instant::now() > deadline {
            panic!(
                "{what}: the target did not load the merged RDB within 60 s\nferry log:\n{}\ntarget log:\n{}",
                ferry.log(),
                target.log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn role(s: &RedisServer) -> String {
    s.client()
        .info_field("replication", "role")
        .unwrap_or_default()
}

/// A precheck WARN of the sources under load in these tests (their backlog is big enough).
const ALLOWED: &[&str] = &["precheck: WARN"];

#[test]
fn two_masters_merge_into_one_target_that_loads_them_natively_under_load() {
    let (a, b, t) = (source(), source(), target());
    fill(&mut a.client(), "a");
    fill(&mut b.client(), "b");
    a.client().ok(&[
        "FUNCTION",
        "LOAD",
        "#!lua name=alib\nredis.register_function('af', function() return 1 end)",
    ]);
    // The target's own masterauth comes back at the end.
    t.client()
        .ok(&["CONFIG", "SET", "masterauth", "targets-own"]);
    let load = Load::new();
    let state = TempDir::new("master-mode");
    std::thread::scope(|s| {
        s.spawn(|| load.run(&[a.port, b.port]));
        let _stop = load.stopper();
        load.wait_rounds(20);
        let mut ferry = Ferry::sync(
            &[a.url(), b.url()],
            &t.url(),
            state.path(),
            &["--apply", "replication", "--big-value-bytes", "4096"],
        )
        .allowing(ALLOWED);
        wait_loaded(&ferry, &t, "the first full sync", 1);
        assert_eq!(role(&t), "slave", "the target replicates from ferry");
        load.wait_rounds(200);
        load.stop.store(true, Ordering::Relaxed);
        wait_equal(&[&a, &b], &t, &ferry, "after the load stopped");
        assert!(ferry.terminate(Duration::from_secs(30)).success());
        let log = ferry.log();
        assert!(
            !log.contains("a new merged full sync of every source"),
            "{log}"
        );
        assert!(log.contains("is a master again"), "{log}");
    });
    assert_eq!(role(&t), "master", "the target is writable again");
    let mut tc = t.client();
    let auth = tc.cmd(&["CONFIG", "GET", "masterauth"]);
    assert_eq!(auth.as_array()[1].as_string(), "targets-own");
    assert_eq!(
        tc.cmd(&["FCALL", "af", "0"]).as_int(),
        1,
        "functions carried"
    );
    // Both sources' writes of the stream are there, in their dbs.
    tc.ok(&["SELECT", "3"]);
    assert!(
        tc.cmd(&["GET", "db3counter:0"])
            .as_string()
            .parse::<u64>()
            .unwrap()
            > 200
    );
    assert!(
        tc.cmd(&["GET", "db3counter:1"])
            .as_string()
            .parse::<u64>()
            .unwrap()
            > 200
    );
    let mut want = union(&[&a, &b]);
    want.sort();
    let mut got = data_items(&mut t.client());
    got.sort();
    assert_eq!(want, got);
}

#[test]
fn one_master_with_once_ends_with_an_equal_digest_and_a_writable_target() {
    let (a, t) = (source(), target());
    fill(&mut a.client(), "a");
    // An already expired key is not copied (a replica would keep it until its master's DEL).
    a.client().ok(&["DEBUG", "SET-ACTIVE-EXPIRE", "0"]);
    a.client().ok(&["SET", "gone", "x", "PX", "1"]);
    std::thread::sleep(Duration::from_millis(5));
    let state = TempDir::new("master-mode-once");
    let mut ferry = Ferry::sync(
        &[a.url()],
        &t.url(),
        state.path(),
        &["--apply", "replication", "--once"],
    )
    .allowing(ALLOWED);
    assert!(
        ferry.wait(Duration::from_secs(60)).success(),
        "{}",
        ferry.log()
    );
    assert_eq!(role(&t), "master");
    assert_eq!(t.client().cmd(&["EXISTS", "gone"]).as_int(), 0);
    a.client().cmd(&["DEL", "gone"]);
    assert_eq!(data_digest(&mut a.client()), data_digest(&mut t.client()));
}

#[test]
fn a_cut_target_link_continues_from_ferrys_backlog_without_a_new_full_sync() {
    let (a, t) = (source(), target());
    fill(&mut a.client(), "a");
    let listen = free_port();
    // The target reaches ferry through the fault relay (announced), ferry listens behind it.
    let relay = FaultProxy::start(listen);
    let load = Load::new();
    let state = TempDir::new("master-mode-cut");
    std::thread::scope(|s| {
        s.spawn(|| load.run(&[a.port]));
        let _stop = load.stopper();
        let listen_arg = format!("127.0.0.1:{listen}");
        let announce_arg = format!("127.0.0.1:{}", relay.port());
        let mut ferry = Ferry::sync(
            &[a.url()],
            &t.url(),
            state.path(),
            &[
                "--apply",
                "replication",
                "--replication-listen",
                &listen_arg,
                "--replication-announce",
                &announce_arg,
            ],
        )
        .allowing(ALLOWED)
        .allowing(&["the target's replication link dropped"]);
        wait_loaded(&ferry, &t, "the first full sync", 1);
        for _ in 0..3 {
            load.wait_rounds(50);
            let before = ferry
                .log()
                .matches("continuing from ferry's backlog")
                .count();
            assert!(relay.cut() > 0, "a connection was cut");
            wait_until("the target continued", Duration::from_secs(30), || {
                ferry
                    .log()
                    .matches("continuing from ferry's backlog")
                    .count()
                    > before
            });
        }
        load.wait_rounds(50);
        load.stop.store(true, Ordering::Relaxed);
        wait_equal(&[&a], &t, &ferry, "after three cuts of the target's link");
        assert!(ferry.terminate(Duration::from_secs(30)).success());
        let log = ferry.log();
        assert!(
            !log.contains("a new merged full sync of every source"),
            "{log}"
        );
    });
    assert_eq!(role(&t), "master");
    assert_eq!(data_digest(&mut a.client()), data_digest(&mut t.client()));
}

#[test]
fn a_cut_source_link_continues_with_a_partial_resync() {
    let (a, b, t) = (source(), source(), target());
    fill(&mut a.client(), "a");
    fill(&mut b.client(), "b");
    let relay = FaultProxy::start(a.port);
    let load = Load::new();
    let state = TempDir::new("master-mode-src-cut");
    std::thread::scope(|s| {
        s.spawn(|| load.run(&[a.port, b.port]));
        let _stop = load.stopper();
        let mut ferry = Ferry::sync(
            &[relay.url(), b.url()],
            &t.url(),
            state.path(),
            &["--apply", "replication"],
        )
        .allowing(ALLOWED)
        .allowing(&["link down", "replication link"]);
        wait_loaded(&ferry, &t, "the first full sync", 1);
        for _ in 0..2 {
            wait_until("the source link is up", Duration::from_secs(30), || {
                relay.active_connections() > 0
            });
            load.wait_rounds(50);
            assert!(relay.cut() > 0);
        }
        load.wait_rounds(50);
        load.stop.store(true, Ordering::Relaxed);
        wait_equal(&[&a, &b], &t, &ferry, "after cuts of a source's link");
        assert!(ferry.terminate(Duration::from_secs(30)).success());
        let log = ferry.log();
        assert!(
            !log.contains("a new merged full sync of every source"),
            "{log}"
        );
        assert_eq!(
            log.matches("partial resync accepted").count(),
            2,
            "each cut continued with a partial resync: {log}"
        );
    });
    assert_eq!(role(&t), "master");
}

#[test]
fn a_flushall_on_one_of_two_sources_keeps_the_other_sources_keys() {
    let (a, b, t) = (source(), source(), target());
    fill(&mut a.client(), "a");
    fill(&mut b.client(), "b");
    let state = TempDir::new("master-mode-flush");
    let mut ferry = Ferry::sync(
        &[a.url(), b.url()],
        &t.url(),
        state.path(),
        &["--apply", "replication"],
    )
    .allowing(ALLOWED)
    .allowing(&["a new merged full sync", "FLUSHALL on this source"]);
    wait_equal(&[&a, &b], &t, &ferry, "after the first full sync");
    let mut ac = a.client();
    ac.ok(&["FLUSHALL"]);
    ac.ok(&["SET", "a:after-flush", "1"]);
    b.client().ok(&["SET", "b:after-flush", "1"]);
    wait_until("the new merged full sync", Duration::from_secs(30), || {
        ferry.log().contains("a new merged full sync")
    });
    wait_equal(&[&a, &b], &t, &ferry, "after a FLUSHALL on one source");
    assert!(t.client().dbsize() > 300, "b's keys are still there");
    assert!(ferry.terminate(Duration::from_secs(30)).success());
}

#[test]
fn master_mode_refuses_a_non_empty_target_and_a_target_too_old_for_the_sources_rdb() {
    let (a, t) = (source(), target());
    a.client().ok(&["SET", "k", "v"]);
    t.client().ok(&["SET", "already", "here"]);
    let state = TempDir::new("master-mode-refuse");
    let mut ferry = Ferry::sync(
        &[a.url()],
        &t.url(),
        state.path(),
        &["--apply", "replication", "--once"],
    )
    .allowing(&["precheck failed"]);
    assert!(!ferry.wait(Duration::from_secs(30)).success());
    assert!(
        ferry.log().contains("nothing was written"),
        "{}",
        ferry.log()
    );
    assert_eq!(role(&t), "master", "the target was left alone");
    assert_eq!(t.client().dbsize(), 1);

    let Some(old) = RedisServer::start_version("6.2", &[]) else {
        return;
    };
    let log = refused(&a, &old, &state);
    assert!(log.contains("cannot load"), "{log}");
    assert!(log.contains("--apply commands"), "{log}");
    assert_eq!(role(&old), "master");

    // The same RDB version, an older server: a 6.2 source's commands (LMOVE, COPY) may be unknown to a
    // 6.0 target, which as a replica would drop a whole merged transaction without a word.
    let (Some(src62), Some(t60)) = (
        versioned_source("6.2"),
        RedisServer::start_version("6.0", &[]),
    ) else {
        return;
    };
    let log = refused(&src62, &t60, &state);
    assert!(log.contains("is newer than the target"), "{log}");
    assert_eq!(role(&t60), "master");
}

/// A master-mode job from `source` into `target` that the precheck must refuse: its log.
fn refused(source: &RedisServer, target: &RedisServer, state: &TempDir) -> String {
    let mut ferry = Ferry::sync(
        &[source.url()],
        &target.url(),
        state.path(),
        &["--apply", "replication", "--once"],
    )
    .allowing(&["precheck failed"]);
    assert!(!ferry.wait(Duration::from_secs(30)).success());
    ferry.log()
}

/// A server of `version` as a source (flags every version takes), or `None` (skip recorded).
fn versioned_source(version: &str) -> Option<RedisServer> {
    let newer = !matches!(version, "5.0" | "6.0" | "6.2");
    let mut flags = vec![
        "--repl-diskless-sync-delay",
        "0",
        "--repl-backlog-size",
        "64mb",
    ];
    if newer {
        flags.extend(["--enable-debug-command", "yes"]);
    }
    RedisServer::start_version(version, &flags)
}

/// Sources of older versions (and two versions at once) merged into a newer target, and Valkey targets:
/// the merged RDB is written in the target's format around values of each source's own, and `ferry verify`
/// finds the copy equal key by key after writes during the sync.
#[test]
fn sources_of_older_versions_merge_into_newer_redis_and_valkey_targets() {
    let cases: &[(&[&str], &str)] = &[
        (&["5.0", "6.2"], "7.4"),
        (&["7.2"], "valkey-9"),
        (&["7.4"], "8.2"),
        (&["valkey-8", "7.2"], "valkey-9"),
    ];
    for (srcs, tgt) in cases {
        let sources: Option<Vec<RedisServer>> = srcs.iter().map(|v| versioned_source(v)).collect();
        let (Some(sources), Some(t)) = (
            sources,
            RedisServer::start_version(tgt, &["--enable-debug-command", "yes"]),
        ) else {
            continue;
        };
        for (i, s) in sources.iter().enumerate() {
            fill(&mut s.client(), &format!("v{i}"));
        }
        let ports: Vec<u16> = sources.iter().map(|s| s.port).collect();
        let urls: Vec<String> = sources.iter().map(|s| s.url()).collect();
        let what = format!("{srcs:?} -> {tgt}");
        let load = Load::new();
        let state = TempDir::new("master-mode-versions");
        std::thread::scope(|sc| {
            sc.spawn(|| load.run(&ports));
            let _stop = load.stopper();
            let mut ferry = Ferry::sync(
                &urls,
                &t.url(),
                state.path(),
                &["--apply", "replication", "--big-value-bytes", "4096"],
            )
            .allowing(ALLOWED);
            wait_loaded(&ferry, &t, &what, 1);
            load.wait_rounds(100);
            load.stop.store(true, Ordering::Relaxed);
            // Everything written is applied once every source's offset is acknowledged.
            let offsets: Vec<String> = sources
                .iter()
                .map(|s| {
                    s.client()
                        .info_field("replication", "master_repl_offset")
                        .unwrap()
                })
                .collect();
            wait_until(
                &format!("{what}: caught up"),
                Duration::from_secs(60),
                || {
                    sources.iter().zip(&offsets).all(|(s, o)| {
                        let mut c = s.client();
                        let r = c.cmd(&["INFO", "replication"]).as_string();
                        // ferry's link is the source's one replica; its ACKed offset is applied on the target.
                        r.lines()
                            .find(|l| l.starts_with("slave0:"))
                            .and_then(|l| l.split(',').find_map(|f| f.strip_prefix("offset=")))
                            .and_then(|v| v.parse::<i64>().ok())
                            .is_some_and(|acked| acked >= o.parse::<i64>().unwrap())
                    })
                },
            );
            assert!(ferry.terminate(Duration::from_secs(30)).success(), "{what}");
        });
        assert_eq!(role(&t), "master", "{what}");
        let mut cmd = crate::support::ferry_proc::ferry_command();
        cmd.args(["verify", "--no-progress"]);
        for u in &urls {
            cmd.args(["--source", u]);
        }
        let out = cmd
            .args(["--target", &t.url()])
            .output()
            .expect("ferry verify runs");
        assert!(
            out.status.success(),
            "{what}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The target killed (`kill -9`) and started again empty on its port, forgetting it was ferry's replica:
/// ferry notices (its role), sends `REPLICAOF` again, and the target — whose `PSYNC` ferry cannot continue —
/// gets a new merged full sync. The copy ends exact.
#[test]
fn a_target_killed_and_restarted_empty_is_attached_again_and_filled_again() {
    let (a, b) = (source(), source());
    let mut t = target();
    fill(&mut a.client(), "a");
    fill(&mut b.client(), "b");
    let state = TempDir::new("master-mode-target-kill");
    let load = Load::new();
    std::thread::scope(|s| {
        s.spawn(|| load.run(&[a.port, b.port]));
        let _stop = load.stopper();
        let mut ferry = Ferry::sync(
            &[a.url(), b.url()],
            &t.url(),
            state.path(),
            &["--apply", "replication"],
        )
        .allowing(ALLOWED)
        .allowing(&[
            "the target's replication link dropped",
            "REPLICAOF sent again",
            "a new merged full sync of every source",
            "cannot reach the target",
            "still waiting for the target",
        ]);
        wait_loaded(&ferry, &t, "the first full sync", 1);
        load.wait_rounds(100);
        let port = t.port;
        t.kill();
        let t2 = RedisServer::start_on_port(port, &["--enable-debug-command", "yes"]);
        wait_loaded(&ferry, &t2, "after the target came back", 2);
        let log = ferry.log();
        assert!(log.contains("REPLICAOF sent again"), "{log}");
        load.wait_rounds(100);
        load.stop.store(true, Ordering::Relaxed);
        wait_equal(&[&a, &b], &t2, &ferry, "after the target came back empty");
        assert!(ferry.terminate(Duration::from_secs(30)).success());
        assert_eq!(role(&t2), "master");
    });
}

fn sync_counts(s: &RedisServer) -> (i64, i64) {
    let mut c = s.client();
    let mut n = |f: &str| {
        c.info_field("stats", f)
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1)
    };
    (n("sync_full"), n("sync_partial_ok"))
}

/// The target's in-target checkpoint of every source is there (master mode writes them with the data).
fn assert_checkpoints(t: &RedisServer, n: usize) {
    let keys = t.client().ok(&["KEYS", "ferry:checkpoint:*"]);
    assert_eq!(keys.as_array().len(), n, "one checkpoint key per source");
}

/// ferry killed with SIGKILL while both sources take non-idempotent writes (INCR, RPUSH, transactions over
/// two dbs): started again with the same state directory, it continues — each source with a partial
/// resync from its checkpoint in the target, the target with `+CONTINUE` — with no second full sync
/// anywhere, and the target ends exactly equal to the sources.
#[test]
fn ferry_killed_and_started_again_continues_without_a_new_full_sync() {
    let (a, b, t) = (source(), source(), target());
    fill(&mut a.client(), "a");
    fill(&mut b.client(), "b");
    let load = Load::new();
    let state = TempDir::new("master-mode-kill9");
    let args = ["--apply", "replication"];
    std::thread::scope(|s| {
        s.spawn(|| load.run(&[a.port, b.port]));
        let _stop = load.stopper();
        load.wait_rounds(20);
        let mut ferry =
            Ferry::sync(&[a.url(), b.url()], &t.url(), state.path(), &args).allowing(ALLOWED);
        wait_loaded(&ferry, &t, "the first full sync", 1);
        load.wait_rounds(200);
        ferry.kill9();
        load.wait_rounds(100);
        assert_eq!(role(&t), "slave", "the target waits for its master");
        let mut ferry = Ferry::sync(&[a.url(), b.url()], &t.url(), state.path(), &args)
            .allowing(ALLOWED)
            .allowing(&["precheck: WARN"]);
        wait_until(
            "the target continued after the restart",
            Duration::from_secs(60),
            || ferry.log().contains("no new full sync"),
        );
        load.wait_rounds(200);
        load.stop.store(true, Ordering::Relaxed);
        wait_equal(&[&a, &b], &t, &ferry, "after ferry's kill -9 and restart");
        assert!(ferry.terminate(Duration::from_secs(30)).success());
        let log = ferry.log();
        assert!(
            log.contains("continuing the previous master-mode run"),
            "{log}"
        );
        assert!(!log.contains("merged full sync"), "{log}");
    });
    for s in [&a, &b] {
        let (full, partial) = sync_counts(s);
        assert_eq!(full, 1, "one full sync of each source in all");
        assert!(partial >= 1, "the restart continued with a partial resync");
    }
    assert_eq!(role(&t), "master");
    assert_checkpoints(&t, 2);
    assert_eq!(data_items(&mut t.client()), union(&[&a, &b]));
}

/// A stopped run (SIGTERM: the target is made a master again) continues at the next start when nothing
/// wrote to the target meanwhile. A target written to while ferry was stopped is not the copy ferry left:
/// the precheck refuses it as not empty (nothing written), and with `--on-conflict overwrite` it gets a new
/// merged full sync, which removes the foreign write.
#[test]
fn a_stopped_run_continues_unless_the_target_was_written_to_meanwhile() {
    let (a, t) = (source(), target());
    fill(&mut a.client(), "a");
    let state = TempDir::new("master-mode-restart");
    let args = ["--apply", "replication"];
    let start = || Ferry::sync(&[a.url()], &t.url(), state.path(), &args).allowing(ALLOWED);
    let mut ferry = start();
    wait_loaded(&ferry, &t, "the first full sync", 1);
    a.client().ok(&["INCR", "n"]);
    wait_equal(&[&a], &t, &ferry, "streaming");
    assert!(ferry.terminate(Duration::from_secs(30)).success());
    assert_eq!(role(&t), "master", "a stop leaves the target a master");
    // Changes while ferry is stopped reach the target through the partial resync.
    a.client().ok(&["INCR", "n"]);
    a.client().ok(&["RPUSH", "l", "x"]);
    let mut ferry = start();
    wait_equal(&[&a], &t, &ferry, "after the restart");
    assert!(ferry.terminate(Duration::from_secs(30)).success());
    let log = ferry.log();
    assert!(log.contains("no new full sync"), "{log}");
    assert!(!log.contains("merged full sync"), "{log}");
    assert_eq!(sync_counts(&a).0, 1, "the source was copied once");
    // A write to the target while ferry is stopped: the next run copies everything again.
    t.client().ok(&["SET", "foreign", "1"]);
    a.client().ok(&["INCR", "n"]);
    let mut refused = Ferry::sync(&[a.url()], &t.url(), state.path(), &args)
        .allowing(&["precheck: ERROR", "precheck failed"]);
    assert!(!refused.wait(Duration::from_secs(30)).success());
    let log = refused.log();
    assert!(
        log.contains("not continuing the previous master-mode run"),
        "{log}"
    );
    assert!(log.contains("nothing was written"), "{log}");
    assert_eq!(t.client().cmd(&["GET", "foreign"]).as_string(), "1");
    let mut ferry = Ferry::sync(
        &[a.url()],
        &t.url(),
        state.path(),
        &["--apply", "replication", "--on-conflict", "overwrite"],
    )
    .allowing(ALLOWED);
    wait_loaded(&ferry, &t, "the full sync after a foreign write", 1);
    wait_equal(&[&a], &t, &ferry, "after the new full sync");
    assert_eq!(t.client().cmd(&["EXISTS", "foreign"]).as_int(), 0);
    assert!(ferry.terminate(Duration::from_secs(30)).success());
    assert_eq!(data_digest(&mut a.client()), data_digest(&mut t.client()));
    assert_checkpoints(&t, 1);
}
