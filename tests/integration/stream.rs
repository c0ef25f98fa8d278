//! Incremental sync: the command stream after the snapshot, acknowledgements, stop and resume.

use std::time::Duration;

use crate::support::ferry_proc::{check_output, ferry_command, Ferry};
use crate::support::{Client, RedisServer, TempDir};

fn debug_server(extra: &[&str]) -> RedisServer {
    let mut args = vec!["--enable-debug-command", "yes"];
    args.extend_from_slice(extra);
    RedisServer::start(&args)
}

fn digest(c: &mut Client) -> String {
    crate::support::data_digest(c)
}

fn info_i64(c: &mut Client, section: &str, field: &str) -> i64 {
    c.info_field(section, field)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1)
}

/// Poll until the master sees ferry as an online replica (its snapshot delivered).
fn wait_streaming(m: &mut Client, ferry: &Ferry) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !m
        .info_field("replication", "slave0")
        .is_some_and(|l| l.contains("state=online"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "ferry never became an online replica; log:\n{}",
            ferry.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Poll until both servers hold the same data (DEBUG DIGEST over every db), with a clear failure.
pub fn wait_equal(master: &RedisServer, target: &RedisServer, ferry: &Ferry, what: &str) {
    let mut m = master.client();
    let mut t = target.client();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (a, b) = (digest(&mut m), digest(&mut t));
        if a == b {
            return;
        }
        if std::time::Instant::now() > deadline {
            panic!(
                "{what}: target digest {b} != master digest {a} after 30 s\nmaster dbsize {} target dbsize {}\nferry log:\n{}",
                m.dbsize(),
                t.dbsize(),
                ferry.log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Poll until every key of the master has the same DUMP on the target and the target holds no other key
/// (apart from ferry's own: its in-target checkpoint).
fn wait_keys_equal(master: &RedisServer, target: &RedisServer, ferry: &Ferry, what: &str) {
    let mut m = master.client();
    let mut t = target.client();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut problem = None;
        let (tn, mn) = (
            crate::support::data_key_count(&mut t),
            crate::support::data_key_count(&mut m),
        );
        if tn != mn {
            problem = Some(format!("target {tn} keys, master {mn}"));
        } else {
            for k in m.ok(&["KEYS", "*"]).as_array() {
                let k = k.as_bytes().unwrap().to_vec();
                let (a, b) = (
                    m.ok(&[b"DUMP".as_slice(), &k]),
                    t.ok(&[b"DUMP".as_slice(), &k]),
                );
                if a.as_bytes() != b.as_bytes() {
                    problem = Some(format!("key {} differs", String::from_utf8_lossy(&k)));
                    break;
                }
            }
        }
        match problem {
            None => return,
            Some(p) if std::time::Instant::now() > deadline => {
                panic!("{what}: {p} after 30 s\nferry log:\n{}", ferry.log())
            }
            Some(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Every write command of the list, as a client would send them, across dbs 0–2.
pub fn write_every_command(c: &mut Client, round: usize) {
    let r = round.to_string();
    let k = |s: &str| format!("{s}:{r}");
    c.ok(&["SELECT", "0"]);
    // strings
    c.ok(&["SET", &k("s"), "v"]);
    c.ok(&["APPEND", &k("s"), "-appended"]);
    c.ok(&["SETRANGE", &k("s"), "2", "XY"]);
    c.ok(&["SET", &k("n"), "10"]);
    c.ok(&["INCR", &k("n")]);
    c.ok(&["INCRBY", &k("n"), "5"]);
    c.ok(&["DECR", &k("n")]);
    c.ok(&["DECRBY", &k("n"), "2"]);
    c.ok(&["INCRBYFLOAT", &k("f"), "1.5"]);
    c.ok(&["GETSET", &k("gs"), "new"]);
    c.ok(&["MSET", &k("m1"), "a", &k("m2"), "b"]);
    c.ok(&["MSETNX", &k("m3"), "c", &k("m4"), "d"]);
    c.ok(&["SETNX", &k("nx"), "1"]);
    c.ok(&["SETEX", &k("ex"), "1000", "v"]);
    c.ok(&["PSETEX", &k("px"), "1000000", "v"]);
    c.ok(&["SET", &k("gd"), "x"]);
    c.ok(&["GETDEL", &k("gd")]);
    c.ok(&["SET", &k("ge"), "x"]);
    c.ok(&["GETEX", &k("ge"), "EX", "500"]);
    c.ok(&["SETBIT", &k("bits"), "7", "1"]);
    c.ok(&["SETBIT", &k("bits2"), "3", "1"]);
    c.ok(&["BITOP", "OR", &k("bitor"), &k("bits"), &k("bits2")]);
    // expiry
    c.ok(&["SET", &k("e1"), "v"]);
    c.ok(&["EXPIRE", &k("e1"), "1000"]);
    c.ok(&["SET", &k("e2"), "v"]);
    c.ok(&["PEXPIRE", &k("e2"), "1000000"]);
    c.ok(&["SET", &k("e3"), "v"]);
    c.ok(&["EXPIREAT", &k("e3"), "4102444800"]);
    c.ok(&["SET", &k("e4"), "v"]);
    c.ok(&["PEXPIREAT", &k("e4"), "4102444800000"]);
    c.ok(&["PERSIST", &k("e4")]);
    // lists
    c.ok(&["RPUSH", &k("l"), "a", "b", "c", "d", "e"]);
    c.ok(&["LPUSH", &k("l"), "z"]);
    c.ok(&["LPUSHX", &k("l"), "y"]);
    c.ok(&["RPUSHX", &k("l"), "f"]);
    c.ok(&["LINSERT", &k("l"), "BEFORE", "c", "bc"]);
    c.ok(&["LSET", &k("l"), "0", "first"]);
    c.ok(&["LREM", &k("l"), "1", "d"]);
    c.ok(&["LPOP", &k("l")]);
    c.ok(&["RPOP", &k("l")]);
    c.ok(&["LTRIM", &k("l"), "0", "10"]);
    c.ok(&["RPOPLPUSH", &k("l"), &k("l2")]);
    c.ok(&["LMOVE", &k("l"), &k("l2"), "LEFT", "RIGHT"]);
    c.ok(&["BLPOP", &k("l"), "1"]);
    c.ok(&["BRPOP", &k("l"), "1"]);
    c.ok(&["BRPOPLPUSH", &k("l2"), &k("l3"), "1"]);
    c.ok(&["BLMOVE", &k("l2"), &k("l3"), "RIGHT", "LEFT", "1"]);
    // sets
    c.ok(&["SADD", &k("set"), "a", "b", "c", "d"]);
    c.ok(&["SADD", &k("set2"), "c", "d", "e"]);
    c.ok(&["SREM", &k("set"), "a"]);
    c.ok(&["SMOVE", &k("set"), &k("set2"), "b"]);
    c.ok(&["SINTERSTORE", &k("si"), &k("set"), &k("set2")]);
    c.ok(&["SUNIONSTORE", &k("su"), &k("set"), &k("set2")]);
    c.ok(&["SDIFFSTORE", &k("sd"), &k("set2"), &k("set")]);
    c.ok(&["SPOP", &k("su")]);
    // sorted sets
    c.ok(&[
        "ZADD",
        &k("z"),
        "1",
        "a",
        "2",
        "b",
        "3",
        "c",
        "4",
        "d",
        "5",
        "e",
    ]);
    c.ok(&["ZADD", &k("z2"), "1.5", "a", "2.5", "x"]);
    c.ok(&["ZINCRBY", &k("z"), "0.25", "a"]);
    c.ok(&["ZREM", &k("z"), "e"]);
    c.ok(&["ZUNIONSTORE", &k("zu"), "2", &k("z"), &k("z2")]);
    c.ok(&["ZINTERSTORE", &k("zi"), "2", &k("z"), &k("z2")]);
    c.ok(&["ZREMRANGEBYSCORE", &k("zu"), "4", "4"]);
    c.ok(&["ZREMRANGEBYRANK", &k("zu"), "0", "0"]);
    c.ok(&["ZADD", &k("zl"), "0", "a", "0", "b", "0", "c"]);
    c.ok(&["ZREMRANGEBYLEX", &k("zl"), "[a", "[b"]);
    // hashes
    c.ok(&["HSET", &k("h"), "f1", "v1", "f2", "v2"]);
    c.ok(&["HMSET", &k("h"), "f3", "v3", "f4", "4"]);
    c.ok(&["HSETNX", &k("h"), "f5", "v5"]);
    c.ok(&["HDEL", &k("h"), "f1"]);
    c.ok(&["HINCRBY", &k("h"), "f4", "3"]);
    c.ok(&["HINCRBYFLOAT", &k("h"), "f6", "0.5"]);
    // HyperLogLog, geo
    c.ok(&["PFADD", &k("hll"), "a", "b", "c"]);
    c.ok(&["PFADD", &k("hll2"), "c", "d"]);
    c.ok(&["PFMERGE", &k("hllm"), &k("hll"), &k("hll2")]);
    c.ok(&["GEOADD", &k("geo"), "13.361389", "38.115556", "Palermo"]);
    // streams
    c.ok(&["XADD", &k("x"), "1-1", "f", "v"]);
    c.ok(&["XADD", &k("x"), "2-1", "f", "v2"]);
    c.ok(&["XADD", &k("x"), "3-1", "f", "v3"]);
    c.ok(&["XGROUP", "CREATE", &k("x"), "g", "0"]);
    c.ok(&[
        "XREADGROUP",
        "GROUP",
        "g",
        "c1",
        "COUNT",
        "2",
        "STREAMS",
        &k("x"),
        ">",
    ]);
    c.ok(&["XACK", &k("x"), "g", "1-1"]);
    c.ok(&["XCLAIM", &k("x"), "g", "c2", "0", "2-1"]);
    c.ok(&["XAUTOCLAIM", &k("x"), "g", "c3", "0", "0-0"]);
    c.ok(&["XDEL", &k("x"), "3-1"]);
    c.ok(&["XTRIM", &k("x"), "MAXLEN", "5"]);
    c.ok(&["XSETID", &k("x"), "9-9"]);
    // keyspace
    c.ok(&["SET", &k("ren"), "v"]);
    c.ok(&["RENAME", &k("ren"), &k("ren2")]);
    c.ok(&["SET", &k("rnx"), "v"]);
    c.ok(&["RENAMENX", &k("rnx"), &k("rnx2")]);
    c.ok(&["SET", &k("del"), "v"]);
    c.ok(&["DEL", &k("del")]);
    c.ok(&["SET", &k("unl"), "v"]);
    c.ok(&["UNLINK", &k("unl")]);
    c.ok(&["COPY", &k("s"), &k("s-copy")]);
    c.ok(&["SET", &k("mv"), "v"]);
    c.ok(&["MOVE", &k("mv"), "2"]);
    c.ok(&["RPUSH", &k("sortme"), "3", "1", "2"]);
    c.ok(&["SORT", &k("sortme"), "STORE", &k("sorted")]);
    let dump = c.ok(&["DUMP", &k("s")]);
    c.ok(&[
        b"RESTORE".as_slice(),
        k("restored").as_bytes(),
        b"0",
        dump.as_bytes().unwrap(),
    ]);
    // scripts: EVAL, and EVALSHA of a script only ever SCRIPT LOADed on the source
    c.ok(&[
        "EVAL",
        "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCR', KEYS[2])",
        "2",
        &k("lua1"),
        &k("lua2"),
        "x",
    ]);
    let sha = c
        .ok(&[
            "SCRIPT",
            "LOAD",
            "return redis.call('RPUSH', KEYS[1], ARGV[1])",
        ])
        .as_string();
    c.ok(&["EVALSHA", &sha, "1", &k("lualist"), "item"]);
    // MULTI/EXEC
    c.ok(&["MULTI"]);
    c.send(&["INCR", &k("tx")]);
    c.read().unwrap();
    c.send(&["LPUSH", &k("txl"), "a"]);
    c.read().unwrap();
    c.ok(&["EXEC"]);
    // other dbs
    c.ok(&["SELECT", "1"]);
    c.ok(&["SET", &k("db1"), "v"]);
    c.ok(&["LPUSH", &k("db1l"), "a", "b"]);
    c.ok(&["SELECT", "2"]);
    c.ok(&["HSET", &k("db2"), "f", "v"]);
    c.ok(&["SELECT", "0"]);
}

#[test]
fn every_command_is_applied_then_a_stop_resumes_with_a_partial_resync() {
    let master = debug_server(&[]);
    let target = debug_server(&[]);
    let state = TempDir::new("stream-state");
    let mut m = master.client();
    m.ok(&["SET", "before", "the snapshot"]);
    m.ok(&["RPUSH", "list", "a", "b"]);

    let mut ferry = Ferry::sync(&[master.url()], &target.url(), state.path(), &[]);
    wait_equal(&master, &target, &ferry, "after the snapshot");

    write_every_command(&mut m, 1);
    wait_equal(&master, &target, &ferry, "after every command");

    // The master sees our acknowledgements: its replica offset reaches its own offset.
    let mut mi = master.client();
    crate::support::wait_until(
        "the replica's ACK to reach the master's offset",
        Duration::from_secs(10),
        || {
            let off = info_i64(&mut mi, "replication", "master_repl_offset");
            let line = mi.info_field("replication", "slave0").unwrap_or_default();
            line.split(',')
                .find_map(|kv| kv.strip_prefix("offset="))
                .and_then(|v| v.parse::<i64>().ok())
                == Some(off)
        },
    );

    let st = ferry.terminate(Duration::from_secs(15));
    assert!(st.success(), "ferry exit {st:?}; log:\n{}", ferry.log());
    let cp: Vec<_> = std::fs::read_dir(state.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("checkpoint-"))
        .collect();
    assert_eq!(cp.len(), 1, "one checkpoint file");
    let text = std::fs::read_to_string(cp[0].path()).unwrap();
    assert!(text.contains("\"clean\": true"), "{text}");

    // Writes while ferry is stopped, then a restart: partial resync, no duplicated list items.
    write_every_command(&mut m, 2);
    m.ok(&["LPUSH", "list", "while-stopped"]);
    let full_before = info_i64(&mut m, "stats", "sync_full");
    let partial_before = info_i64(&mut m, "stats", "sync_partial_ok");
    let ferry2 = Ferry::sync(&[master.url()], &target.url(), state.path(), &[]);
    wait_equal(&master, &target, &ferry2, "after the restart");
    assert_eq!(
        info_i64(&mut m, "stats", "sync_full"),
        full_before,
        "no new full sync"
    );
    assert_eq!(
        info_i64(&mut m, "stats", "sync_partial_ok"),
        partial_before + 1,
        "a partial resync"
    );
    let mut t = target.client();
    assert_eq!(t.ok(&["LLEN", "list"]).as_int(), 3);
}

#[test]
fn a_killed_replica_link_continues_with_a_partial_resync_under_load() {
    let master = debug_server(&["--repl-backlog-size", "64mb"]);
    let target = debug_server(&[]);
    let state = TempDir::new("stream-kill");
    let mut m = master.client();
    // CLIENT KILL TYPE replica below, twice: the link goes down and reconnects.
    let ferry =
        Ferry::sync(&[master.url()], &target.url(), state.path(), &[]).allowing(&["link down"]);
    wait_streaming(&mut m, &ferry);
    for i in 0..2000 {
        m.ok(&["INCR", "counter"]);
        m.ok(&["RPUSH", "log", &i.to_string()]);
        m.ok(&["APPEND", "s", "x"]);
        if i == 700 || i == 1400 {
            let before = info_i64(&mut m, "stats", "sync_partial_ok");
            m.ok(&["CLIENT", "KILL", "TYPE", "replica"]);
            crate::support::wait_until(
                "ferry to reconnect with a partial resync",
                Duration::from_secs(10),
                || info_i64(&mut m, "stats", "sync_partial_ok") > before,
            );
        }
    }
    wait_equal(&master, &target, &ferry, "after the load");
    assert_eq!(info_i64(&mut m, "stats", "sync_full"), 1);
    assert!(info_i64(&mut m, "stats", "sync_partial_ok") >= 2);
    let mut t = target.client();
    assert_eq!(t.ok(&["LLEN", "log"]).as_int(), 2000);
    assert_eq!(t.ok(&["GET", "counter"]).as_string(), "2000");
}

#[test]
fn once_exits_zero_after_catching_up_with_the_snapshot_offset() {
    let master = debug_server(&[]);
    let target = debug_server(&[]);
    let state = TempDir::new("stream-once");
    let mut m = master.client();
    crate::fullsync::fill_every_type(&mut m);
    let mut ferry = Ferry::sync(&[master.url()], &target.url(), state.path(), &["--once"]);
    let st = ferry.wait(Duration::from_secs(60));
    assert!(st.success(), "exit {st:?}; log:\n{}", ferry.log());
    let (a, b) = (digest(&mut m), digest(&mut target.client()));
    assert_eq!(a, b, "log:\n{}", ferry.log());
}

#[test]
fn publish_reaches_subscribers_on_the_target() {
    let master = debug_server(&[]);
    let target = debug_server(&[]);
    let state = TempDir::new("stream-pub");
    let ferry = Ferry::sync(&[master.url()], &target.url(), state.path(), &[]);
    let mut m = master.client();
    m.ok(&["SET", "k", "v"]);
    wait_equal(&master, &target, &ferry, "after the snapshot");
    let mut sub = target.client();
    sub.ok(&["SUBSCRIBE", "news"]);
    m.ok(&["PUBLISH", "news", "hello"]);
    let msg = sub.read().unwrap();
    let parts: Vec<String> = msg.as_array().iter().map(|r| r.as_string()).collect();
    assert_eq!(parts, ["message", "news", "hello"]);
}

/// A writer thread doing INCR, LPUSH and APPEND until stopped; returns how many rounds it wrote.
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<u64>>,
}

impl Load {
    fn start(port: u16) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut c = Client::connect(port);
            let mut n = 0u64;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                c.ok(&["INCR", "counter"]);
                c.ok(&["LPUSH", "list", &n.to_string()]);
                c.ok(&["APPEND", "text", "x"]);
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
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

fn crash_and_restart(target_checkpoint: bool) {
    // A backlog that outlives the restart (the default 1 MB holds less than a second of this load).
    let master = debug_server(&["--repl-backlog-size", "64mb"]);
    let target = debug_server(&[]);
    let state = TempDir::new("stream-crash");
    let extra: &[&str] = if target_checkpoint {
        &[]
    } else {
        &["--no-target-checkpoint"]
    };
    let mut m = master.client();
    m.ok(&["SET", "seed", "1"]);
    let mut ferry = Ferry::sync(&[master.url()], &target.url(), state.path(), extra);
    if !target_checkpoint {
        ferry.allow("--no-target-checkpoint: stream commands are written as plain pipelines");
    }
    wait_keys_equal(&master, &target, &ferry, "after the snapshot");
    let load = Load::start(master.port);
    // Let the stream carry some of the load, then crash ferry in the middle of it.
    let mut t = target.client();
    crate::support::wait_until(
        "the target to receive streamed writes",
        Duration::from_secs(20),
        || t.cmd(&["LLEN", "list"]).as_int() > 2000,
    );
    ferry.kill9();
    let full_before = info_i64(&mut m, "stats", "sync_full");
    let partial_before = info_i64(&mut m, "stats", "sync_partial_ok");
    let mut ferry2 = Ferry::sync(&[master.url()], &target.url(), state.path(), extra);
    // The load runs at about 1 MB/s while the precheck samples the source: the 64 MB backlog holds under
    // the 5 minutes the precheck asks for.
    ferry2.allow("repl-backlog-size");
    if !target_checkpoint {
        // kill -9 left the file checkpoint unclean, and nothing else says where the target is.
        ferry2.allow("--no-target-checkpoint: stream commands are written as plain pipelines");
        ferry2.allow("this target needs a full resync of this source");
        ferry2.allow("the master started a full resync");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !(ferry2.log().contains("streaming") || ferry2.log().contains("resuming")) {
        assert!(
            std::time::Instant::now() < deadline,
            "ferry did not resume within 20 s; log:\n{}",
            ferry2.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let rounds = load.stop();
    wait_keys_equal(&master, &target, &ferry2, "after the crash and restart");
    if target_checkpoint {
        let cp = t.ok(&["KEYS", "ferry:checkpoint:*"]);
        assert_eq!(cp.as_array().len(), 1, "one in-target checkpoint key");
        // ferry verify knows its own checkpoint key: the copy verifies as equal.
        let out = ferry_command()
            .args([
                "verify",
                "--source",
                &master.url(),
                "--target",
                &target.url(),
            ])
            .output()
            .unwrap();
        check_output("ferry verify", &out, &[] as &[&str]);
        assert!(
            out.status.success(),
            "verify: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        t.ok(&["LLEN", "list"]).as_int() as u64,
        rounds,
        "no duplicated list items"
    );
    assert_eq!(t.ok(&["GET", "counter"]).as_string(), rounds.to_string());
    if target_checkpoint {
        assert_eq!(
            info_i64(&mut m, "stats", "sync_full"),
            full_before,
            "exact resume: no full sync"
        );
        assert_eq!(
            info_i64(&mut m, "stats", "sync_partial_ok"),
            partial_before + 1
        );
    } else {
        assert_eq!(
            info_i64(&mut m, "stats", "sync_full"),
            full_before + 1,
            "an unclean stop without an in-target checkpoint runs a full resync"
        );
    }
}

#[test]
fn kill_9_with_the_in_target_checkpoint_resumes_exactly() {
    crash_and_restart(true);
}

#[test]
fn kill_9_without_it_runs_a_full_resync_with_no_duplicates() {
    crash_and_restart(false);
}

#[test]
fn a_forced_full_resync_leaves_no_ghosts_and_no_duplicates() {
    let master = debug_server(&["--repl-backlog-size", "16kb"]);
    let target = debug_server(&[]);
    let state = TempDir::new("stream-resync");
    let mut m = master.client();
    for i in 0..100 {
        m.ok(&["SET", &format!("k{i}"), "v"]);
    }
    m.ok(&["RPUSH", "list", "a", "b"]);
    // The 16 KB backlog is the setup: the precheck warns that it holds little, whenever it sees writes.
    let mut ferry = Ferry::sync(&[master.url()], &target.url(), state.path(), &[])
        .allowing(&["repl-backlog-size"]);
    wait_equal(&master, &target, &ferry, "after the snapshot");
    assert!(ferry.terminate(Duration::from_secs(15)).success());
    // While ferry is stopped: delete keys, and overrun the 16 KB backlog.
    for i in 0..50 {
        m.ok(&["DEL", &format!("k{i}")]);
    }
    m.ok(&["RPUSH", "list", "c"]);
    let big = "x".repeat(1024);
    for i in 0..100 {
        m.ok(&["SET", &format!("filler{i}"), &big]);
    }
    let full_before = info_i64(&mut m, "stats", "sync_full");
    // The backlog was overrun while ferry was stopped: the master answers with a full resync.
    let ferry2 = Ferry::sync(&[master.url()], &target.url(), state.path(), &[])
        .allowing(&["repl-backlog-size", "the master started a full resync"]);
    wait_equal(&master, &target, &ferry2, "after the forced full resync");
    assert_eq!(info_i64(&mut m, "stats", "sync_full"), full_before + 1);
    let mut t = target.client();
    assert_eq!(t.ok(&["EXISTS", "k0"]).as_int(), 0, "no ghost keys");
    assert_eq!(
        t.ok(&["LLEN", "list"]).as_int(),
        3,
        "no duplicated list items"
    );
}

#[test]
fn a_rejected_write_is_counted_and_logged_and_on_error_stop_ends_the_job() {
    let master = debug_server(&[]);
    let target = debug_server(&[]);
    let mut t = target.client();
    // A key of another type on the target: the source's INCR will be rejected with WRONGTYPE.
    t.ok(&["RPUSH", "clash", "x"]);
    let mut m = master.client();
    // --on-error log: counted and logged, the job keeps going.
    let state = TempDir::new("onerr-log");
    // The target's "clash" key: the precheck warns it is not empty, and the INCR is rejected.
    let ferry = Ferry::sync(
        &[master.url()],
        &target.url(),
        state.path(),
        &["--on-conflict", "overwrite"],
    )
    .allowing(&["not empty", "error=WRONGTYPE"]);
    m.ok(&["SET", "first", "1"]);
    crate::support::wait_until("streaming", Duration::from_secs(20), || {
        t.cmd(&["EXISTS", "first"]).as_int() == 1
    });
    m.ok(&["INCR", "clash"]);
    m.ok(&["SET", "after", "1"]);
    crate::support::wait_until(
        "the write after the rejected one",
        Duration::from_secs(20),
        || t.cmd(&["EXISTS", "after"]).as_int() == 1,
    );
    crate::support::wait_until("the rejection in the log", Duration::from_secs(10), || {
        ferry.log().contains("WRONGTYPE")
    });
    let log = ferry.log();
    assert!(log.contains("INCR") && log.contains("clash"), "{log}");
    drop(ferry);

    // --on-error stop: the job ends with exit 1.
    m.ok(&["DEL", "clash"]);
    t.ok(&["FLUSHALL"]);
    t.ok(&["RPUSH", "clash", "x"]);
    let state = TempDir::new("onerr-stop");
    // As above, and the source fails on the rejection (--on-error stop).
    let mut ferry = Ferry::sync(
        &[master.url()],
        &target.url(),
        state.path(),
        &["--on-conflict", "overwrite", "--on-error", "stop"],
    )
    .allowing(&["not empty", "error=WRONGTYPE", "--on-error stop is set"]);
    crate::support::wait_until("streaming", Duration::from_secs(20), || {
        t.cmd(&["EXISTS", "first"]).as_int() == 1
    });
    m.ok(&["INCR", "clash"]);
    let st = ferry.wait(Duration::from_secs(20));
    assert_eq!(st.code(), Some(1), "{}", ferry.log());
    assert!(ferry.log().contains("--on-error stop"), "{}", ferry.log());
}

/// GET a path from ferry's status endpoint over plain HTTP/1.1.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[test]
fn status_shows_a_live_sync_without_the_password() {
    let master = debug_server(&["--requirepass", "s3cret-pw"]);
    let target = debug_server(&[]);
    let mut m = Client::connect(master.port);
    m.ok(&["AUTH", "s3cret-pw"]);
    m.ok(&["SET", "k", "v"]);
    let port = crate::support::free_port();
    let state = TempDir::new("status-live");
    let src = format!("redis://:s3cret-pw@127.0.0.1:{}", master.port);
    let ferry = Ferry::sync(
        &[src],
        &target.url(),
        state.path(),
        &["--status", &format!("127.0.0.1:{port}"), "--heartbeat", "1"],
    );
    for i in 0..100 {
        m.ok(&["SET", &format!("s{i}"), "v"]);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let body = loop {
        let body = http_get(port, "/status").unwrap_or_default();
        let json = body.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&json) {
            let src = &v["sources"][0];
            let tgt = &v["targets"][0];
            if src["state"] == "streaming"
                && src["applied_offset"].as_i64().unwrap_or(-1) > 0
                && tgt["latency"]["count"].as_u64().unwrap_or(0) > 0
                && tgt["writes_ok"].as_u64().unwrap_or(0) >= 101
                && src["heartbeat_lag_ms"].as_i64().unwrap_or(-1) >= 0
            {
                break body;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "status never showed the live sync: {body}\nlog:\n{}",
            ferry.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!body.contains("s3cret-pw"), "{body}");
    // The heartbeat lives on the source only.
    assert_eq!(m.ok(&["EXISTS", "ferry:heartbeat"]).as_int(), 1);
    assert_eq!(
        target.client().ok(&["EXISTS", "ferry:heartbeat"]).as_int(),
        0
    );
    let metrics = http_get(port, "/metrics").unwrap();
    assert!(metrics.contains("ferry_"), "{metrics}");
    assert!(!metrics.contains("s3cret-pw"));
    assert!(http_get(port, "/healthz")
        .unwrap()
        .starts_with("HTTP/1.1 200"));
    assert!(!ferry.log().contains("s3cret-pw"));
}

#[test]
fn a_transaction_is_atomic_for_a_reader_of_the_target() {
    let master = debug_server(&[]);
    let target = debug_server(&[]);
    let mut m = master.client();
    m.ok(&["MSET", "a", "0", "b", "0"]);
    let state = TempDir::new("stream-atomic");
    let ferry = Ferry::sync(&[master.url()], &target.url(), state.path(), &[]);
    wait_streaming(&mut m, &ferry);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (s2, port) = (stop.clone(), target.port);
    // A reader of the target: a and b are always written together, so it must never see them differ.
    let reader = std::thread::spawn(move || {
        let mut c = Client::connect(port);
        let mut reads = 0u64;
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            let r = c.ok(&["MGET", "a", "b"]);
            let v: Vec<String> = r.as_array().iter().map(|x| x.as_string()).collect();
            assert_eq!(v[0], v[1], "a reader saw half a transaction");
            reads += 1;
        }
        reads
    });
    for i in 1..=500 {
        m.ok(&["MULTI"]);
        m.send(&["INCR", "a"]);
        m.read().unwrap();
        m.send(&["SET", "filler", &i.to_string()]);
        m.read().unwrap();
        m.send(&["INCR", "b"]);
        m.read().unwrap();
        m.ok(&["EXEC"]);
    }
    let mut t = target.client();
    crate::support::wait_until("the last transaction", Duration::from_secs(20), || {
        t.cmd(&["GET", "b"]).as_string() == "500"
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.join().expect("the reader saw half a transaction");
    assert!(reads > 0);
}
