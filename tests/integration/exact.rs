//! Issue 8: exact under faults and unusual configurations. Each test reproduces one way the copy used to
//! diverge silently (named after what it guards), against real servers, with a fault proxy where a fault
//! is needed, and ends with an exact comparison.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::fault_proxy::FaultProxy;
use crate::support::ferry_proc::Ferry;
use crate::support::{
    data_digest, data_key_count, data_keys, wait_until, Client, RedisServer, TempDir,
};

fn debug_server(extra: &[&str]) -> RedisServer {
    let mut args = vec!["--enable-debug-command", "yes"];
    args.extend_from_slice(extra);
    RedisServer::start(&args)
}

fn info_i64(c: &mut Client, section: &str, field: &str) -> i64 {
    c.info_field(section, field)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1)
}

/// Poll until the target holds exactly the source's data (ferry's own keys aside).
fn wait_same_data(source: &RedisServer, target: &RedisServer, ferry: &Ferry, what: &str) {
    let (mut s, mut t) = (source.client(), target.client());
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (a, b) = (data_digest(&mut s), data_digest(&mut t));
        if a == b {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "{what}: target {b} != source {a} after 40 s; source keys {}, target keys {}\nferry log:\n{}",
                data_keys(&mut s).len(),
                data_keys(&mut t).len(),
                ferry.log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The master sees ferry as an online replica (its snapshot was delivered).
fn wait_online(m: &mut Client, ferry: &Ferry) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !m
        .info_field("replication", "slave0")
        .is_some_and(|l| l.contains("state=online"))
    {
        assert!(
            Instant::now() < deadline,
            "ferry never became an online replica; log:\n{}",
            ferry.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A writer of non-idempotent commands: INCR and RPUSH in db 0, then SADD of four members, APPEND and SET in
/// db 1 or 2 (so the stream changes db all the time); it counts its rounds, so exact results are known.
struct Load {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<u64>>,
}

impl Load {
    fn start(port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut c = Client::connect(port);
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                let i = n.to_string();
                c.ok(&["SELECT", "0"]);
                c.ok(&["INCR", "counter"]);
                c.ok(&["RPUSH", "list", &i]);
                c.ok(&["SELECT", if n % 2 == 0 { "1" } else { "2" }]);
                c.ok(&[
                    "SADD",
                    &format!("set:{}", n % 50),
                    &format!("a{i}"),
                    &format!("b{i}"),
                    &format!("c{i}"),
                    &format!("d{i}"),
                ]);
                c.ok(&["APPEND", "text", "x"]);
                c.ok(&["SET", &format!("str:{}", n % 100), &i]);
                n += 1;
            }
            n
        });
        Load {
            stop,
            handle: Some(handle),
        }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn sigterm(ferry: &Ferry) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &ferry.pid().to_string()])
        .status();
}

/// Item 1: a second `--target` with a password used to get every write refused (NOAUTH).
#[test]
fn a_second_target_with_a_password_is_authenticated() {
    let master = debug_server(&[]);
    let t1 = debug_server(&[]);
    let t2 = debug_server(&["--requirepass", "t2-secret"]);
    let mut m = master.client();
    crate::fullsync::fill_every_type(&mut m);
    let state = TempDir::new("two-targets-auth");
    let t2_url = format!("redis://:t2-secret@127.0.0.1:{}", t2.port);
    let mut ferry = Ferry::start(&[
        "sync",
        "--source",
        &master.url(),
        "--target",
        &t1.url(),
        "--target",
        &t2_url,
        "--once",
        "--state-dir",
        &state.path().display().to_string(),
    ]);
    let st = ferry.wait(Duration::from_secs(60));
    assert!(st.success(), "exit {st:?}; log:\n{}", ferry.log());
    assert!(
        !ferry.log().contains("t2-secret"),
        "the password was logged"
    );
    let want = data_digest(&mut m);
    assert_eq!(data_digest(&mut t1.client()), want, "first target");
    let mut c2 = t2.client();
    c2.ok(&["AUTH", "t2-secret"]);
    assert_eq!(
        data_digest(&mut c2),
        want,
        "second target (with a password)"
    );
}

/// Item 2: a state dir reused for another target used to make it resume partially (0 of 3000 keys).
#[test]
fn a_reused_state_dir_gives_another_target_its_own_full_sync() {
    let master = debug_server(&[]);
    let (b1, b2) = (debug_server(&[]), debug_server(&[]));
    let mut m = master.client();
    for i in 0..3000 {
        m.ok(&["SET", &format!("k{i}"), &i.to_string()]);
    }
    let state = TempDir::new("reused-state");
    for b in [&b1, &b2] {
        let mut ferry = Ferry::sync(&[master.url()], &b.url(), state.path(), &["--once"]);
        let st = ferry.wait(Duration::from_secs(60));
        assert!(st.success(), "exit {st:?}; log:\n{}", ferry.log());
        assert_eq!(data_keys(&mut b.client()).len(), 3000, "{}", ferry.log());
        wait_same_data(&master, b, &ferry, "target after --once");
    }
    // The first pair again with another db mapping: its checkpoint is another job's. Refused before any
    // write (exit 2), naming the file and how to start over.
    let mut ferry = Ferry::sync(
        &[master.url()],
        &b1.url(),
        state.path(),
        &["--once", "--map-db", "0:1"],
    );
    let st = ferry.wait(Duration::from_secs(30));
    assert_eq!(st.code(), Some(2), "log:\n{}", ferry.log());
    let log = ferry.log();
    assert!(
        log.contains("belongs to another job") && log.contains("checkpoint-127.0.0.1_"),
        "{log}"
    );
    let mut c = b1.client();
    c.ok(&["SELECT", "1"]);
    assert_eq!(c.dbsize(), 0, "nothing was written into db 1");
}

/// Item 3: with `--map-db 1:0`, one master's FLUSHDB used to delete every other master's keys.
#[test]
fn a_map_db_flush_of_one_master_keeps_the_other_masters_keys() {
    let (a, b) = (debug_server(&[]), debug_server(&[]));
    let target = debug_server(&[]);
    for (s, p) in [(&a, "a"), (&b, "b")] {
        let mut c = s.client();
        c.ok(&["SELECT", "1"]);
        for i in 0..1000 {
            c.ok(&["SET", &format!("{p}:{i}"), "v"]);
        }
    }
    let state = TempDir::new("mapdb-flush");
    let ferry = Ferry::sync(
        &[a.url(), b.url()],
        &target.url(),
        state.path(),
        &["--db", "1", "--map-db", "1:0"],
    );
    let mut t = target.client();
    wait_until(
        "both masters' keys in db 0",
        Duration::from_secs(30),
        || t.data_dbsize() == 2000,
    );
    let mut ac = a.client();
    ac.ok(&["SELECT", "1"]);
    ac.ok(&["FLUSHDB"]);
    wait_until(
        "a's keys to leave the target",
        Duration::from_secs(30),
        || t.data_dbsize() == 1000,
    );
    let keys = data_keys(&mut t);
    assert!(
        keys.iter().all(|(db, k)| *db == 0 && k.starts_with(b"b:")),
        "only b's keys remain in db 0: {:?}\n{}",
        &keys[..keys.len().min(5)],
        ferry.log()
    );
}

/// Item 4: target connections dropped under an INCR/RPUSH load used to apply writes twice (30075 INCRs for
/// 30000). The proxy drops the target's replies after it executed the commands, then cuts.
#[test]
fn target_connections_dropped_after_execution_apply_nothing_twice() {
    let master = debug_server(&["--repl-backlog-size", "64mb"]);
    let target = debug_server(&[]);
    let proxy = FaultProxy::start(target.port);
    let state = TempDir::new("drop-replies");
    let mut m = master.client();
    m.ok(&["SET", "seed", "1"]);
    let status_port = crate::support::free_port();
    let status_addr = format!("127.0.0.1:{status_port}");
    let ferry = Ferry::sync(
        &[master.url()],
        &proxy.url(),
        state.path(),
        &["--status", &status_addr],
    )
    .allowing(&["target connection lost"]);
    wait_online(&mut m, &ferry);
    let load = Load::start(master.port);
    let mut t = target.client();
    let mut discarded = 0;
    for round in 0..12 {
        let before = t.cmd(&["GET", "counter"]).as_string();
        wait_until("the stream to move on", Duration::from_secs(20), || {
            t.cmd(&["GET", "counter"]).as_string() != before
        });
        discarded += proxy.drop_replies_after_execution();
        if round % 4 == 3 {
            proxy.cut();
        }
    }
    let rounds = load.stop();
    assert!(discarded > 0, "the fault never hit a reply");
    wait_same_data(&master, &target, &ferry, "after the faults");
    assert_eq!(t.ok(&["GET", "counter"]).as_int() as u64, rounds);
    assert_eq!(t.ok(&["LLEN", "list"]).as_int() as u64, rounds);
    assert!(proxy.cuts() >= 12, "cuts: {}", proxy.cuts());
    // The lost replies were settled by reading the in-target checkpoint back, not by luck.
    let body = crate::stream::http_get(status_port, "/status").expect("status answers");
    let json: serde_json::Value =
        serde_json::from_str(body.split("\r\n\r\n").nth(1).unwrap_or("")).expect("status JSON");
    let confirmed = json["targets"][0]["commits_confirmed"]
        .as_u64()
        .unwrap_or(0);
    let reconnects = json["targets"][0]["reconnects"].as_u64().unwrap_or(0);
    assert!(reconnects >= 12, "reconnects {reconnects}");
    assert!(
        confirmed > 0,
        "no lost reply was settled from the checkpoint: {body}"
    );
}

/// Item 5: a clean restart under load used to lose writes (a set missing members, a whole key missing).
#[test]
fn a_clean_restart_under_load_loses_and_doubles_nothing() {
    let master = debug_server(&["--repl-backlog-size", "64mb"]);
    let target = debug_server(&[]);
    let state = TempDir::new("clean-restart");
    let mut m = master.client();
    m.ok(&["SET", "seed", "1"]);
    let load = Load::start(master.port);
    let mut t = target.client();
    for cycle in 0..3 {
        let mut ferry = Ferry::sync(&[master.url()], &target.url(), state.path(), &[])
            .allowing(&["repl-backlog-size"]);
        let before: i64 = t.cmd(&["GET", "counter"]).as_string().parse().unwrap_or(0);
        // Streaming (the first cycle's snapshot alone already holds a counter above `before + 300`: a stop
        // during it rightly leaves no clean checkpoint), and 300 rounds streamed.
        wait_until("streamed writes", Duration::from_secs(20), || {
            let log = ferry.log();
            (log.contains("snapshot applied; streaming") || log.contains("partial resync accepted"))
                && t.cmd(&["GET", "counter"])
                    .as_string()
                    .parse()
                    .unwrap_or(0i64)
                    > before + 300
        });
        let st = ferry.terminate(Duration::from_secs(30));
        assert!(st.success(), "cycle {cycle}: exit {st:?}\n{}", ferry.log());
        assert!(ferry.log().contains("clean=true"), "{}", ferry.log());
        // The load goes on while ferry is down.
        let off = info_i64(&mut m, "replication", "master_repl_offset");
        wait_until(
            "writes while ferry is down",
            Duration::from_secs(10),
            || info_i64(&mut m, "replication", "master_repl_offset") > off + 20_000,
        );
    }
    let ferry = Ferry::sync(&[master.url()], &target.url(), state.path(), &[])
        .allowing(&["repl-backlog-size"]);
    let rounds = load.stop();
    wait_same_data(&master, &target, &ferry, "after three restarts under load");
    assert_eq!(t.ok(&["GET", "counter"]).as_int() as u64, rounds);
    assert_eq!(
        info_i64(&mut m, "stats", "sync_full"),
        1,
        "never a needless full resync"
    );
    assert!(info_i64(&mut m, "stats", "sync_partial_ok") >= 3);
}

/// `slave0`'s acknowledged offset, as the master shows it.
fn acked(m: &mut Client) -> Option<i64> {
    let line = m.info_field("replication", "slave0")?;
    line.split(',')
        .find_map(|kv| kv.strip_prefix("offset="))
        .and_then(|v| v.parse().ok())
}

/// Item 6: `REPLCONF ACK` used to report the received offset after an in-process `+CONTINUE` while the spool
/// held a backlog. The master must never see an acknowledgement beyond what the target applied.
#[test]
fn the_master_is_never_acknowledged_more_than_the_target_applied() {
    let master = debug_server(&["--repl-backlog-size", "64mb"]);
    let target = debug_server(&[]);
    let proxy = FaultProxy::start(target.port);
    let state = TempDir::new("ack");
    let mut m = master.client();
    m.ok(&["SET", "seed", "1"]);
    let ferry =
        Ferry::sync(&[master.url()], &proxy.url(), state.path(), &[]).allowing(&["link down"]);
    wait_online(&mut m, &ferry);
    m.ok(&["SET", "before", "1"]);
    let applied = info_i64(&mut m, "replication", "master_repl_offset");
    wait_until(
        "the ACK to reach the applied offset",
        Duration::from_secs(10),
        || acked(&mut m) == Some(applied),
    );
    proxy.stall(true);
    for i in 0..200 {
        m.ok(&["SET", &format!("during:{i}"), "v"]);
    }
    // `WAIT` for one replica: nothing acknowledges the writes the target has not applied.
    assert_eq!(m.ok(&["WAIT", "1", "1500"]).as_int(), 0);
    assert!(
        acked(&mut m).is_some_and(|a| a <= applied),
        "{:?}",
        acked(&mut m)
    );
    // The source link drops and continues in process while the spool holds the backlog.
    let partial = info_i64(&mut m, "stats", "sync_partial_ok");
    m.ok(&["CLIENT", "KILL", "TYPE", "replica"]);
    wait_until("a partial resync", Duration::from_secs(10), || {
        info_i64(&mut m, "stats", "sync_partial_ok") > partial
    });
    assert_eq!(m.ok(&["WAIT", "1", "1500"]).as_int(), 0, "after +CONTINUE");
    assert!(
        acked(&mut m).is_some_and(|a| a <= applied),
        "{:?}",
        acked(&mut m)
    );
    proxy.stall(false);
    let end = info_i64(&mut m, "replication", "master_repl_offset");
    wait_until("the ACK to reach the end", Duration::from_secs(20), || {
        acked(&mut m).is_some_and(|a| a >= end)
    });
    assert_eq!(m.ok(&["WAIT", "1", "5000"]).as_int(), 1);
    wait_same_data(&master, &target, &ferry, "after the stall");
}

/// Item 7: a clean stop during a second full sync used to write `clean: true` at the new snapshot's offset,
/// so the next run continued by PSYNC and the rest of the snapshot was never applied.
#[test]
fn a_stop_during_a_second_full_sync_is_followed_by_a_full_sync() {
    let master = debug_server(&["--repl-backlog-size", "16kb"]);
    let target = debug_server(&[]);
    let state = TempDir::new("stop-in-resync");
    let mut m = master.client();
    // A snapshot that takes a few seconds to apply.
    m.ok(&["DEBUG", "POPULATE", "200000", "bulk", "32"]);
    m.ok(&["SET", "ghost", "deleted while ferry is down"]);
    let mut ferry = Ferry::sync(&[master.url()], &target.url(), state.path(), &[])
        .allowing(&["repl-backlog-size"]);
    wait_same_data(&master, &target, &ferry, "first sync");
    assert!(ferry.terminate(Duration::from_secs(30)).success());
    // While ferry is down: the backlog overflows (the next PSYNC gets a full resync) and a key goes.
    m.ok(&["DEL", "ghost"]);
    let blob = "x".repeat(1024);
    for i in 0..100 {
        m.ok(&["SET", &format!("fill{i}"), &blob]);
    }
    let full = info_i64(&mut m, "stats", "sync_full");
    let mut ferry2 = Ferry::sync(&[master.url()], &target.url(), state.path(), &[]).allowing(&[
        "the master started a full resync",
        "this target needs a full resync",
        "repl-backlog-size",
    ]);
    wait_until(
        "the second snapshot to be under way",
        Duration::from_secs(30),
        || {
            ferry2.log().contains("full sync: receiving the snapshot")
                && info_i64(&mut m, "stats", "sync_full") > full
        },
    );
    sigterm(&ferry2);
    let st = ferry2.wait(Duration::from_secs(60));
    assert!(st.success(), "exit {st:?}\n{}", ferry2.log());
    let log = ferry2.log();
    let stop_at = log.find("stop requested").expect("the stop is logged");
    assert!(
        !log[..stop_at].contains("snapshot applied"),
        "the scenario needs the stop to come while the snapshot is applied; it came after:\n{log}"
    );
    assert!(
        !log.contains("clean=true"),
        "a stop in the middle of a snapshot must not write a clean checkpoint:\n{log}"
    );
    // The third run copies the source again (no partial resync into half a snapshot), and the ghost goes.
    let ferry3 = Ferry::sync(&[master.url()], &target.url(), state.path(), &[]).allowing(&[
        "the master started a full resync",
        "this target needs a full resync",
        "repl-backlog-size",
    ]);
    wait_same_data(
        &master,
        &target,
        &ferry3,
        "after the stop during the resync",
    );
    assert!(info_i64(&mut m, "stats", "sync_full") >= full + 2);
    assert_eq!(target.client().cmd(&["EXISTS", "ghost"]).as_int(), 0);
}

/// Item 8: an error reply from a source (here `BUSY`: a script runs) used to count as "key absent", so a
/// shared target lost live keys. Nothing may be deleted until the source can answer.
#[test]
fn a_busy_source_never_makes_a_sweep_delete_on_a_guess() {
    let a = debug_server(&[]);
    let b = debug_server(&["--busy-reply-threshold", "100"]);
    let target = debug_server(&[]);
    for (s, p) in [(&a, "a"), (&b, "b")] {
        let mut c = s.client();
        for i in 0..300 {
            c.ok(&["SET", &format!("{p}:{i}"), "v"]);
        }
    }
    let state = TempDir::new("busy-sweep");
    let ferry = Ferry::sync(&[a.url(), b.url()], &target.url(), state.path(), &[]);
    let mut t = target.client();
    wait_until("both masters' keys", Duration::from_secs(30), || {
        t.data_dbsize() == 600
    });
    // b runs a script that never ends: it answers BUSY to everything else.
    let bport = b.port;
    let script = std::thread::spawn(move || {
        let mut c = Client::connect(bport);
        c.cmd(&["EVAL", "while true do end", "0"])
    });
    let mut probe = b.client();
    wait_until(
        "b to be busy",
        Duration::from_secs(10),
        || matches!(probe.cmd(&["PING"]), crate::support::Reply::Error(e) if e.starts_with("BUSY")),
    );
    a.client().ok(&["FLUSHDB"]);
    // While b cannot say which keys it holds, nothing is deleted.
    let deadline = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < deadline {
        assert_eq!(
            t.data_dbsize(),
            600,
            "a key was deleted on a guess\n{}",
            ferry.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    probe.ok(&["SCRIPT", "KILL"]);
    let _ = script.join();
    wait_until("a's keys to go", Duration::from_secs(30), || {
        t.data_dbsize() == 300
    });
    assert!(data_keys(&mut t).iter().all(|(_, k)| k.starts_with(b"b:")));
}

/// A kill -9 while a source's FLUSHDB is being applied to a shared target (its keys being removed): the
/// position of the flush was checkpointed before the removal ran, so the restart continued after the flush
/// and the source's old keys stayed on the target for good (found by the soak, seed 102). The flush counts
/// as applied only once its keys are gone; the restart replays it.
#[test]
fn a_kill_during_a_flush_sweep_replays_the_flush() {
    let a = debug_server(&[]);
    let b = debug_server(&["--busy-reply-threshold", "100"]);
    let target = debug_server(&[]);
    for (s, p) in [(&a, "a"), (&b, "b")] {
        let mut c = s.client();
        for i in 0..300 {
            c.ok(&["SET", &format!("{p}:{i}"), "v"]);
        }
    }
    let state = TempDir::new("kill-sweep");
    let sources = [a.url(), b.url()];
    let mut ferry = Ferry::sync(&sources, &target.url(), state.path(), &[]);
    let mut t = target.client();
    wait_until("both masters' keys", Duration::from_secs(30), || {
        t.data_dbsize() == 600
    });
    wait_online(&mut a.client(), &ferry);
    let mut am = a.client();
    let partial = info_i64(&mut am, "stats", "sync_partial_ok");
    // b runs a script that never ends: the removal of a's keys waits for b to say which keys it holds.
    let bport = b.port;
    let script = std::thread::spawn(move || {
        let mut c = Client::connect(bport);
        c.cmd(&["EVAL", "while true do end", "0"])
    });
    let mut probe = b.client();
    wait_until(
        "b to be busy",
        Duration::from_secs(10),
        || matches!(probe.cmd(&["PING"]), crate::support::Reply::Error(e) if e.starts_with("BUSY")),
    );
    // In one transaction, so that writes before the flush share its batch (the checkpoint of that batch
    // is what used to run ahead of the removal) and the transaction goes on after it.
    am.ok(&["MULTI"]);
    am.cmd(&["SET", "a:before", "1"]);
    am.cmd(&["FLUSHDB"]);
    am.cmd(&["SET", "a:after", "1"]);
    am.ok(&["EXEC"]);
    wait_until(
        "ferry to start removing a's keys",
        Duration::from_secs(20),
        || ferry.log().contains("the source flushed"),
    );
    ferry.kill9();
    probe.ok(&["SCRIPT", "KILL"]);
    let _ = script.join();
    let ferry = Ferry::sync(&sources, &target.url(), state.path(), &[]);
    wait_until("a's old keys to go", Duration::from_secs(30), || {
        t.data_dbsize() == 301
    });
    let keys = data_keys(&mut t);
    assert!(
        keys.iter()
            .all(|(_, k)| k.starts_with(b"b:") || k == b"a:after"),
        "{keys:?}\n{}",
        ferry.log()
    );
    assert!(
        info_i64(&mut am, "stats", "sync_partial_ok") > partial,
        "the restart was meant to continue by partial resync\n{}",
        ferry.log()
    );
}

/// A source transaction with a FLUSHDB in its middle, on a shared target: the flush becomes a removal of the
/// source's own keys, which used to run after the whole transaction and so also removed the keys the
/// transaction wrote after its flush. In both apply modes.
#[test]
fn a_flush_inside_a_transaction_keeps_what_follows_it() {
    for extra in [&[][..], &["--no-target-checkpoint"][..]] {
        let a = debug_server(&[]);
        let b = debug_server(&[]);
        let target = debug_server(&[]);
        for (s, p) in [(&a, "a"), (&b, "b")] {
            let mut c = s.client();
            for i in 0..100 {
                c.ok(&["SET", &format!("{p}:{i}"), "v"]);
            }
            c.ok(&["SELECT", "3"]);
            c.ok(&["SET", &format!("{p}:db3"), "v"]);
        }
        let state = TempDir::new("flush-in-multi");
        let ferry = Ferry::sync(&[a.url(), b.url()], &target.url(), state.path(), extra)
            .allowing(&["--no-target-checkpoint: stream commands are written as plain pipelines"]);
        let mut t = target.client();
        wait_until("both masters' keys", Duration::from_secs(30), || {
            data_key_count(&mut t) == 202
        });
        let mut am = a.client();
        am.ok(&["MULTI"]);
        am.cmd(&["SET", "a:before", "1"]);
        am.cmd(&["SELECT", "3"]);
        am.cmd(&["SET", "a:db3:before", "1"]);
        am.cmd(&["SELECT", "0"]);
        am.cmd(&["FLUSHDB"]);
        am.cmd(&["SET", "a:after", "1"]);
        am.cmd(&["INCR", "a:counter"]);
        am.ok(&["EXEC"]);
        am.ok(&["SET", "a:later", "1"]);
        wait_until(
            "the transaction and the write after it",
            Duration::from_secs(30),
            || t.cmd(&["EXISTS", "a:later"]).as_int() == 1,
        );
        let mut want: Vec<(u32, Vec<u8>)> = (0..100)
            .map(|i| (0, format!("b:{i}").into_bytes()))
            .collect();
        for k in ["a:after", "a:counter", "a:later"] {
            want.push((0, k.as_bytes().to_vec()));
        }
        for k in ["a:db3", "a:db3:before", "b:db3"] {
            want.push((3, k.as_bytes().to_vec()));
        }
        want.sort();
        let mut got = data_keys(&mut t);
        got.sort();
        assert_eq!(got, want, "mode {extra:?}\n{}", ferry.log());
        assert_eq!(t.cmd(&["GET", "a:counter"]).as_string(), "1");
    }
}

/// Item 8: `rdb:` sources were not among "the other sources", so a master's FLUSHALL deleted what the file
/// loaded.
#[test]
fn an_rdb_files_keys_survive_a_masters_flush() {
    let saved = debug_server(&[]);
    let mut s = saved.client();
    for i in 0..200 {
        s.ok(&["SET", &format!("f:{i}"), "from the file"]);
    }
    s.ok(&["SAVE"]);
    let file = saved.dir.path().join("dump.rdb");
    let a = debug_server(&[]);
    let mut ac = a.client();
    for i in 0..200 {
        ac.ok(&["SET", &format!("a:{i}"), "v"]);
    }
    let target = debug_server(&[]);
    let state = TempDir::new("rdb-owner");
    let ferry = Ferry::sync(
        &[format!("rdb:{}", file.display()), a.url()],
        &target.url(),
        state.path(),
        &[],
    );
    let mut t = target.client();
    wait_until("both sources' keys", Duration::from_secs(30), || {
        t.data_dbsize() == 400
    });
    ac.ok(&["FLUSHALL"]);
    wait_until("a's keys to go", Duration::from_secs(30), || {
        t.data_dbsize() == 200
    });
    let keys = data_keys(&mut t);
    assert!(
        keys.iter().all(|(_, k)| k.starts_with(b"f:")),
        "the file's keys stay: {:?}\n{}",
        &keys[..keys.len().min(5)],
        ferry.log()
    );
}

/// Item 8: after a full resync, a key deleted while ferry was down and recreated after the fork (by RPUSH)
/// used to keep its stale old items: ownership came from the live source, not from the snapshot.
#[test]
fn a_key_recreated_after_the_fork_does_not_keep_its_stale_value() {
    let master = debug_server(&["--repl-backlog-size", "16kb"]);
    let target = debug_server(&[]);
    let state = TempDir::new("stale");
    let mut m = master.client();
    m.ok(&["RPUSH", "k", "old1", "old2", "old3"]);
    // A snapshot big enough to take a while to apply (the RPUSH below lands long before its end).
    m.ok(&["DEBUG", "POPULATE", "100000", "bulk", "16"]);
    let mut ferry = Ferry::sync(&[master.url()], &target.url(), state.path(), &[])
        .allowing(&["repl-backlog-size"]);
    wait_same_data(&master, &target, &ferry, "first sync");
    assert!(ferry.terminate(Duration::from_secs(30)).success());
    m.ok(&["DEL", "k"]);
    let blob = "x".repeat(1024);
    for i in 0..100 {
        m.ok(&["SET", &format!("fill{i}"), &blob]);
    }
    let full = info_i64(&mut m, "stats", "sync_full");
    let ferry2 = Ferry::sync(&[master.url()], &target.url(), state.path(), &[]).allowing(&[
        "the master started a full resync",
        "this target needs a full resync",
        "repl-backlog-size",
    ]);
    wait_until("the fork", Duration::from_secs(20), || {
        info_i64(&mut m, "stats", "sync_full") > full
    });
    m.ok(&["RPUSH", "k", "new"]);
    wait_same_data(&master, &target, &ferry2, "after the resync");
    let items = target.client().ok(&["LRANGE", "k", "0", "-1"]);
    let items: Vec<String> = items.as_array().iter().map(|r| r.as_string()).collect();
    assert_eq!(items, ["new"]);
}

/// Item 8: a sweep used to spare every key starting with `ferry:` whatever `--checkpoint-key-prefix` and
/// `--heartbeat-key` said, so a source's own `ferry:…` keys outlived its FLUSHALL.
#[test]
fn a_sweep_spares_ferrys_own_keys_by_their_exact_names_only() {
    let (a, b) = (debug_server(&[]), debug_server(&[]));
    let target = debug_server(&[]);
    let mut ac = a.client();
    for k in ["ferry:user-key", "ferry:checkpoint:not-ours", "a:1"] {
        ac.ok(&["SET", k, "a's"]);
    }
    b.client().ok(&["SET", "b:1", "b's"]);
    let state = TempDir::new("own-keys");
    let ferry = Ferry::sync(
        &[a.url(), b.url()],
        &target.url(),
        state.path(),
        &["--checkpoint-key-prefix", "sync:cp:"],
    );
    let mut t = target.client();
    wait_until("both masters' keys", Duration::from_secs(30), || {
        t.cmd(&["EXISTS", "a:1", "b:1", "ferry:user-key"]).as_int() == 3
    });
    ac.ok(&["FLUSHALL"]);
    wait_until("a's keys to go", Duration::from_secs(30), || {
        t.cmd(&[
            "EXISTS",
            "a:1",
            "ferry:user-key",
            "ferry:checkpoint:not-ours",
        ])
        .as_int()
            == 0
    });
    let mut left: Vec<String> = t
        .ok(&["KEYS", "*"])
        .as_array()
        .iter()
        .map(|k| k.as_string())
        .collect();
    left.sort();
    assert_eq!(left.len(), 3, "{left:?}\n{}", ferry.log());
    assert_eq!(left[0], "b:1");
    assert!(
        left[1..].iter().all(|k| k.starts_with("sync:cp:")),
        "{left:?}"
    );
}

/// Item 9: a command the target refuses while queueing (here NOPERM) used to make `EXEC` discard the whole
/// batch while the offset advanced, logged as one rejected "MULTI". Now the refused command is counted and
/// logged by name and key, and the rest is applied.
#[test]
fn a_command_refused_when_queued_is_reported_and_the_rest_applied() {
    let master = debug_server(&[]);
    let target = debug_server(&[
        "--user", "writer", "on", ">wpw", "~*", "&*", "+@all", "-sadd",
    ]);
    let state = TempDir::new("execabort");
    let url = format!("redis://writer:wpw@127.0.0.1:{}", target.port);
    let mut m = master.client();
    m.ok(&["SET", "seed", "1"]);
    let ferry = Ferry::sync(&[master.url()], &url, state.path(), &[])
        .allowing(&["command=SADD", "target rejected a write"]);
    wait_online(&mut m, &ferry);
    m.ok(&["MULTI"]);
    m.ok(&["SET", "first", "1"]);
    m.ok(&["SADD", "refused", "x"]);
    m.ok(&["INCR", "last"]);
    m.ok(&["EXEC"]);
    m.ok(&["SET", "after", "1"]);
    let mut t = target.client();
    t.ok(&["AUTH", "writer", "wpw"]);
    wait_until(
        "the writes around the refused one",
        Duration::from_secs(20),
        || t.cmd(&["EXISTS", "first", "last", "after"]).as_int() == 3,
    );
    assert_eq!(t.ok(&["EXISTS", "refused"]).as_int(), 0);
    assert_eq!(t.ok(&["GET", "last"]).as_string(), "1");
    let log = ferry.log();
    assert!(
        log.contains("command=SADD") && log.contains("key=refused") && log.contains("NOPERM"),
        "the refused command is logged by name and key:\n{log}"
    );
    assert!(!log.contains("command=MULTI"), "{log}");
}

/// Item 10: a partial resync continues without a SELECT (the master sends one only when the db changes), so
/// the stream's db must come from the checkpoint. It used to restart in db 0.
#[test]
fn a_resume_continues_in_the_streams_db() {
    let master = debug_server(&["--repl-backlog-size", "64mb"]);
    let target = debug_server(&[]);
    let state = TempDir::new("stream-db");
    let mut m = master.client();
    m.ok(&["SET", "seed", "1"]);
    let mut ferry = Ferry::sync(&[master.url()], &target.url(), state.path(), &[]);
    wait_online(&mut m, &ferry);
    m.ok(&["SELECT", "3"]);
    m.ok(&["SET", "in3", "before the stop"]);
    wait_same_data(&master, &target, &ferry, "db 3 before the stop");
    assert!(ferry.terminate(Duration::from_secs(30)).success());
    // Still in db 3 for the master: no SELECT precedes these in its stream.
    m.ok(&["SET", "in3-later", "while ferry is down"]);
    m.ok(&["RPUSH", "list3", "x"]);
    let ferry2 = Ferry::sync(&[master.url()], &target.url(), state.path(), &[]);
    m.ok(&["INCR", "in3-counter"]);
    wait_same_data(&master, &target, &ferry2, "after the resume");
    let mut t = target.client();
    t.ok(&["SELECT", "3"]);
    assert_eq!(t.ok(&["GET", "in3-counter"]).as_string(), "1");
    assert_eq!(info_i64(&mut m, "stats", "sync_full"), 1);
}

/// Item 10: with several targets, the one that was ahead skips what it holds on resume; it used to skip the
/// SELECTs too and continue in the wrong db.
#[test]
fn a_target_that_was_ahead_resumes_in_the_right_db() {
    let master = debug_server(&["--repl-backlog-size", "64mb"]);
    let (t1, t2) = (debug_server(&[]), debug_server(&[]));
    let p2 = FaultProxy::start(t2.port);
    let state = TempDir::new("ahead-db");
    let mut m = master.client();
    m.ok(&["SET", "seed", "1"]);
    let args = |p2url: &str| -> Vec<String> {
        [
            "sync",
            "--source",
            &master.url(),
            "--target",
            &t1.url(),
            "--target",
            p2url,
            "--state-dir",
            &state.path().display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let a = args(&p2.url());
    let refs: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
    let mut ferry = Ferry::start(&refs);
    wait_online(&mut m, &ferry);
    m.ok(&["SELECT", "2"]);
    m.ok(&["SET", "two", "1"]);
    wait_same_data(&master, &t2, &ferry, "t2 in db 2");
    wait_same_data(&master, &t1, &ferry, "t1 in db 2");
    // t2's link stalls: t1 goes ahead past a SELECT 5.
    p2.stall(true);
    m.ok(&["SELECT", "5"]);
    m.ok(&["SET", "five", "1"]);
    wait_same_data(&master, &t1, &ferry, "t1 in db 5");
    ferry.kill9();
    p2.cut();
    p2.stall(false);
    // Continue: the link resumes at t2's position (db 2); t1 skips to its own (db 5).
    let a = args(&p2.url());
    let refs: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
    let ferry2 = Ferry::start(&refs);
    m.ok(&["SET", "five-later", "1"]);
    wait_same_data(&master, &t1, &ferry2, "t1 after the resume");
    wait_same_data(&master, &t2, &ferry2, "t2 after the resume");
    assert_eq!(info_i64(&mut m, "stats", "sync_full"), 1);
}

/// Item 11: SWAPDB from one of several sources used to swap every source's data on the shared target. Only
/// that source's keys move (by a full resync of it).
#[test]
fn swapdb_on_a_shared_target_moves_only_that_sources_keys() {
    let (a, b) = (debug_server(&[]), debug_server(&[]));
    let target = debug_server(&[]);
    for (s, p) in [(&a, "a"), (&b, "b")] {
        let mut c = s.client();
        c.ok(&["SET", &format!("{p}0"), "in db 0"]);
        c.ok(&["SELECT", "1"]);
        c.ok(&["SET", &format!("{p}1"), "in db 1"]);
    }
    let state = TempDir::new("swapdb");
    let ferry = Ferry::sync(&[a.url(), b.url()], &target.url(), state.path(), &[]).allowing(&[
        "re-copying the source with a full resync",
        "the master started a full resync",
    ]);
    let mut t = target.client();
    wait_until("both masters' keys", Duration::from_secs(30), || {
        data_keys(&mut t).len() == 4
    });
    a.client().ok(&["SWAPDB", "0", "1"]);
    let want = vec![
        (0, b"a1".to_vec()),
        (0, b"b0".to_vec()),
        (1, b"a0".to_vec()),
        (1, b"b1".to_vec()),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    while data_keys(&mut t) != want {
        assert!(
            Instant::now() < deadline,
            "keys {:?}\n{}",
            data_keys(&mut t),
            ferry.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn big_list(c: &mut Client, key: &str, item: &str, n: usize) {
    for chunk in 0..n / 500 {
        let mut args = vec!["RPUSH".to_string(), key.to_string()];
        args.extend((0..500).map(|i| format!("{item}{}", chunk * 500 + i)));
        c.ok(&args);
    }
}

/// Item 11: big values used to be built under `ferry:tmp:<source index>:N`, the same names for two jobs
/// writing one target, so their values could mix.
#[test]
fn two_jobs_on_one_target_build_big_values_under_their_own_temporary_keys() {
    let (a, b) = (debug_server(&[]), debug_server(&[]));
    let target = debug_server(&[]);
    // Many big values each, so both jobs build them at the same time.
    for i in 0..10 {
        big_list(&mut a.client(), &format!("big:a{i}"), "a", 20_000);
        big_list(&mut b.client(), &format!("big:b{i}"), "b", 20_000);
    }
    let (sa, sb) = (TempDir::new("job-a"), TempDir::new("job-b"));
    let opts = [
        "--once",
        "--on-conflict",
        "overwrite",
        "--big-value-bytes",
        "4096",
        "--chunk-elements",
        "50",
    ];
    let mut ja = Ferry::sync(&[a.url()], &target.url(), sa.path(), &opts).allowing(&["not empty"]);
    let mut jb = Ferry::sync(&[b.url()], &target.url(), sb.path(), &opts).allowing(&["not empty"]);
    for (j, what) in [(&mut ja, "job a"), (&mut jb, "job b")] {
        let st = j.wait(Duration::from_secs(120));
        assert!(st.success(), "{what}: exit {st:?}\n{}", j.log());
    }
    let mut t = target.client();
    for i in 0..10 {
        for (src, key) in [(&a, format!("big:a{i}")), (&b, format!("big:b{i}"))] {
            let want = src.client().ok(&["LRANGE", &key, "0", "-1"]);
            assert_eq!(t.ok(&["LRANGE", &key, "0", "-1"]), want, "{key}");
        }
    }
    assert!(t.ok(&["KEYS", "ferry:tmp:*"]).as_array().is_empty());
}

/// Item 11: `--on-conflict error` was not enforced by the big-value RENAME nor by the re-encode path's DEL:
/// a key written by one source was silently replaced by another's. Now the first value stays and the
/// conflict is counted (exit 1 with --once).
#[test]
fn on_conflict_error_holds_for_big_and_re_encoded_values() {
    let Some(target) = crate::support::versions::start_version("6.2", &[]) else {
        return;
    };
    let (a, b) = (debug_server(&[]), debug_server(&[]));
    for (s, item) in [(&a, "a"), (&b, "b")] {
        let mut c = s.client();
        big_list(&mut c, "big-dup", item, 5_000);
        c.ok(&["RPUSH", "small-dup", item, item]);
    }
    let state = TempDir::new("conflicts");
    let mut ferry = Ferry::sync(
        &[a.url(), b.url()],
        &target.url(),
        state.path(),
        &[
            "--once",
            "--big-value-bytes",
            "4096",
            "--chunk-elements",
            "100",
        ],
    )
    .allowing(&[
        "values are re-encoded",
        "values will be re-encoded",
        "target rejected a write",
        "older",
    ]);
    let st = ferry.wait(Duration::from_secs(120));
    assert_eq!(
        st.code(),
        Some(1),
        "conflicts make --once exit 1\n{}",
        ferry.log()
    );
    assert!(
        ferry.log().contains("already holds this key"),
        "{}",
        ferry.log()
    );
    let mut t = target.client();
    for key in ["big-dup", "small-dup"] {
        let items = t.ok(&["LRANGE", key, "0", "-1"]);
        let items: Vec<String> = items.as_array().iter().map(|r| r.as_string()).collect();
        assert!(!items.is_empty(), "{key} missing");
        let first = items[0].chars().next().unwrap();
        assert!(
            items.iter().all(|i| i.starts_with(first)),
            "{key} mixes both sources' values"
        );
        let src = if first == 'a' { &a } else { &b };
        let want = src.client().ok(&["LRANGE", key, "0", "-1"]);
        assert_eq!(
            t.ok(&["LRANGE", key, "0", "-1"]),
            want,
            "{key}: one source's value, whole"
        );
    }
    assert!(t.ok(&["KEYS", "ferry:tmp:*"]).as_array().is_empty());
}

/// Item 12: a pool's `redis_db` was parsed but unused: its keys (in that db of every server) landed in the
/// same db of the target, where the pool's clients, talking to the target directly after the cutover, do
/// not look. They go to db 0; other dbs of the servers are not the pool's. `auto_eject_hosts` warns.
#[test]
fn a_pools_redis_db_lands_in_target_db_0() {
    let (a, b) = (debug_server(&[]), debug_server(&[]));
    let proxy = crate::support::Nutcracker::start_with(
        &[(a.port, "s1"), (b.port, "s2")],
        &crate::support::NutcrackerOpts {
            redis_db: Some(2),
            auto_eject_hosts: true,
            ..Default::default()
        },
    );
    let mut p = proxy.client();
    for i in 0..300 {
        p.ok(&["SET", &format!("pool:{i}"), "v"]);
    }
    a.client()
        .ok(&["SET", "not-the-pools", "in db 0 of a server"]);
    let target = debug_server(&[]);
    let state = TempDir::new("redis-db");
    let src = format!("twemproxy:{}", proxy.config_path.display());
    let ferry =
        Ferry::sync(&[src], &target.url(), state.path(), &[]).allowing(&["auto_eject_hosts: true"]);
    let mut t = target.client();
    wait_until("the pool's keys in db 0", Duration::from_secs(30), || {
        t.data_dbsize() == 300
    });
    p.ok(&["SET", "pool:streamed", "v"]);
    wait_until("the streamed key in db 0", Duration::from_secs(30), || {
        t.cmd(&["EXISTS", "pool:streamed"]).as_int() == 1
    });
    let keys = data_keys(&mut t);
    assert!(
        keys.iter()
            .all(|(db, k)| *db == 0 && k.starts_with(b"pool:")),
        "{:?}",
        &keys[..3]
    );
    assert!(
        ferry.log().contains("auto_eject_hosts: true"),
        "{}",
        ferry.log()
    );
}

/// Item 13: a target that restarted without its data used to be reconnected and streamed into as if nothing
/// happened (its snapshot keys gone, exit 0). Now ferry stops with a clear error, and the next run copies
/// the source again.
#[test]
fn a_target_that_restarts_without_its_data_is_never_written_on() {
    let master = debug_server(&["--repl-backlog-size", "64mb"]);
    let mut target = debug_server(&[]);
    let state = TempDir::new("target-restart");
    let mut m = master.client();
    for i in 0..200 {
        m.ok(&["SET", &format!("k{i}"), "v"]);
    }
    let mut ferry = Ferry::sync(&[master.url()], &target.url(), state.path(), &[]).allowing(&[
        "target connection lost",
        "target connection failed",
        "restarted while being written to",
        "source failed",
    ]);
    wait_same_data(&master, &target, &ferry, "first sync");
    let port = target.port;
    target.kill();
    let target = RedisServer::start_on_port(port, &["--enable-debug-command", "yes"]);
    m.ok(&["SET", "after-restart", "1"]);
    let st = ferry.wait(Duration::from_secs(60));
    assert_eq!(st.code(), Some(1), "log:\n{}", ferry.log());
    assert!(
        ferry.log().contains("restarted while being written to"),
        "{}",
        ferry.log()
    );
    assert_eq!(
        target.client().dbsize(),
        0,
        "nothing was written into the restarted target"
    );
    let ferry2 = Ferry::sync(&[master.url()], &target.url(), state.path(), &[]).allowing(&[
        "this target needs a full resync",
        "the master started a full resync",
    ]);
    wait_same_data(&master, &target, &ferry2, "after the target's restart");
}

/// A failover behind one address (a VIP or DNS name moved to the promoted replica): the replica continues
/// the master's history (psync2), so ferry continues with a partial resync and its new replication id,
/// exactly, with no full sync.
#[test]
fn a_failover_behind_one_address_continues_with_a_partial_resync() {
    let master = debug_server(&["--repl-backlog-size", "64mb"]);
    let replica = debug_server(&["--repl-backlog-size", "64mb"]);
    let target = debug_server(&[]);
    let mut r = replica.client();
    r.ok(&["REPLICAOF", "127.0.0.1", &master.port.to_string()]);
    let vip = FaultProxy::start(master.port);
    let state = TempDir::new("failover");
    let mut m = master.client();
    m.ok(&["SET", "seed", "1"]);
    let ferry =
        Ferry::sync(&[vip.url()], &target.url(), state.path(), &[]).allowing(&["link down"]);
    let mut t = target.client();
    // The load starts once ferry streams: during the precheck's write-rate sample it would (rightly) make
    // ferry warn that the backlog holds less than 5 minutes of writes.
    wait_until(
        "the snapshot on the target",
        Duration::from_secs(20),
        || t.cmd(&["GET", "seed"]).as_string() == "1",
    );
    let load = Load::start(master.port);
    wait_until("streamed writes", Duration::from_secs(20), || {
        t.cmd(&["GET", "counter"])
            .as_string()
            .parse()
            .unwrap_or(0i64)
            > 200
    });
    let rounds = load.stop();
    // The replica has everything; it becomes the master behind the same address.
    let end = info_i64(&mut m, "replication", "master_repl_offset");
    wait_until("the replica to catch up", Duration::from_secs(20), || {
        info_i64(&mut r, "replication", "slave_repl_offset") == end
    });
    r.ok(&["REPLICAOF", "NO", "ONE"]);
    vip.set_upstream(replica.port);
    vip.cut();
    let load = Load::start(replica.port);
    wait_until("writes on the new master", Duration::from_secs(20), || {
        info_i64(&mut r, "stats", "sync_partial_ok") >= 1
    });
    let more = load.stop();
    wait_same_data(&replica, &target, &ferry, "after the failover");
    assert_eq!(t.ok(&["LLEN", "list"]).as_int() as u64, rounds + more);
    assert_eq!(
        info_i64(&mut r, "stats", "sync_full"),
        0,
        "no full sync from the new master"
    );
}
