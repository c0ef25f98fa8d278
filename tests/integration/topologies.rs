//! Many-to-one jobs: a twemproxy pool into one target, several masters into one target, and a source's
//! flush on a shared target.

use std::time::Duration;

use crate::support::ferry_proc::{check_output, ferry_command, Ferry};
use crate::support::{wait_until, Client, Nutcracker, NutcrackerOpts, RedisServer, TempDir};

fn total_keys(servers: &[&RedisServer]) -> i64 {
    servers.iter().map(|s| s.client().data_dbsize()).sum()
}

/// Every key of every server has the same value (type-aware via DUMP of strings and LRANGE of lists).
fn same_keys(servers: &[&RedisServer], target: &RedisServer) -> Result<(), String> {
    let mut t = target.client();
    for s in servers {
        let mut c = s.client();
        let keys = c.ok(&["KEYS", "*"]);
        for k in keys.as_array() {
            let k = k.as_string();
            let ty = c.ok(&["TYPE", &k]).as_string();
            let (a, b) = match ty.as_str() {
                "string" => (
                    c.ok(&["GET", &k]).as_string(),
                    t.cmd(&["GET", &k]).as_string(),
                ),
                "list" => (
                    format!(
                        "{:?}",
                        c.ok(&["LRANGE", &k, "0", "-1"])
                            .as_array()
                            .iter()
                            .map(|r| r.as_string())
                            .collect::<Vec<_>>()
                    ),
                    format!(
                        "{:?}",
                        t.cmd(&["LRANGE", &k, "0", "-1"])
                            .as_array()
                            .iter()
                            .map(|r| r.as_string())
                            .collect::<Vec<_>>()
                    ),
                ),
                other => (other.to_string(), t.cmd(&["TYPE", &k]).as_string()),
            };
            if a != b {
                return Err(format!("key {k}: source {a:?}, target {b:?}"));
            }
        }
    }
    Ok(())
}

fn wait_same(servers: &[&RedisServer], target: &RedisServer, ferry: &Ferry, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let want = total_keys(servers);
        let got = target.client().data_dbsize();
        let r = if want == got {
            same_keys(servers, target)
        } else {
            Err(format!("target has {got} keys, sources {want}"))
        };
        match r {
            Ok(()) => return,
            Err(e) if std::time::Instant::now() > deadline => {
                panic!("{what}: {e}\nferry log:\n{}", ferry.log())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[test]
fn a_twemproxy_pool_syncs_into_one_target_and_a_shard_flush_removes_only_its_keys() {
    let a = RedisServer::start(&["--requirepass", "poolpw"]);
    let b = RedisServer::start(&["--requirepass", "poolpw"]);
    let c = RedisServer::start(&["--requirepass", "poolpw"]);
    let proxy = Nutcracker::start_with(
        &[
            (a.port, "shard-a"),
            (b.port, "shard-b"),
            (c.port, "shard-c"),
        ],
        &NutcrackerOpts {
            redis_auth: Some("poolpw".into()),
            ..Default::default()
        },
    );
    let target = RedisServer::start(&[]);
    let mut p = Client::connect(proxy.port);
    p.ok(&["AUTH", "poolpw"]);
    for i in 0..600 {
        p.ok(&["SET", &format!("key:{i}"), &format!("value-{i}")]);
    }
    p.ok(&["RPUSH", "a-list", "1", "2", "3"]);
    let servers = [&a, &b, &c];
    assert!(
        servers
            .iter()
            .all(|s| s.client_auth("poolpw").data_dbsize() > 50),
        "keys spread over the shards"
    );

    let state = TempDir::new("pool");
    let src = format!("twemproxy:{}", proxy.config_path.display());
    let ferry = Ferry::sync(&[src], &target.url(), state.path(), &[]);
    wait_same_auth(&servers, &target, &ferry, "after the full sync");

    // Changes through the proxy are streamed from every shard.
    for i in 0..300 {
        p.ok(&["SET", &format!("key:{i}"), "changed"]);
        p.ok(&["DEL", &format!("key:{}", 300 + i)]);
    }
    p.ok(&["RPUSH", "a-list", "4"]);
    wait_same_auth(&servers, &target, &ferry, "after streaming");

    // One shard flushes: only its keys leave the target.
    let mut bc = b.client_auth("poolpw");
    let b_keys = bc.data_dbsize();
    assert!(b_keys > 0);
    let before = target.client().data_dbsize();
    bc.ok(&["FLUSHALL"]);
    wait_until(
        "shard-b's keys to leave the target",
        Duration::from_secs(20),
        || target.client().data_dbsize() == before - b_keys,
    );
    wait_same_auth(&servers, &target, &ferry, "after shard-b's FLUSHALL");
    assert!(ferry.log().contains("twemproxy pool"), "{}", ferry.log());
    assert!(
        !ferry.log().contains("poolpw"),
        "the pool password must not be logged"
    );
}

#[test]
fn several_masters_into_one_target_and_a_flushdb_of_one_keeps_the_others() {
    let a = RedisServer::start(&[]);
    let b = RedisServer::start(&[]);
    let target = RedisServer::start(&[]);
    let mut ac = a.client();
    let mut bc = b.client();
    for i in 0..200 {
        ac.ok(&["SET", &format!("a:{i}"), "x"]);
        bc.ok(&["SET", &format!("b:{i}"), "y"]);
    }
    let state = TempDir::new("multi");
    let ferry = Ferry::sync(&[a.url(), b.url()], &target.url(), state.path(), &[]);
    wait_same(&[&a, &b], &target, &ferry, "after the full sync");
    ac.ok(&["FLUSHDB"]);
    bc.ok(&["SET", "b:after", "z"]);
    wait_same(&[&a, &b], &target, &ferry, "after a's FLUSHDB");
    assert_eq!(target.client().data_dbsize(), 201);
}

trait AuthClient {
    fn client_auth(&self, pw: &str) -> Client;
}

impl AuthClient for RedisServer {
    fn client_auth(&self, pw: &str) -> Client {
        let mut c = Client::connect(self.port);
        c.ok(&["AUTH", pw]);
        c
    }
}

fn wait_same_auth(servers: &[&RedisServer], target: &RedisServer, ferry: &Ferry, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let want: i64 = servers
            .iter()
            .map(|s| s.client_auth("poolpw").data_dbsize())
            .sum();
        let got = target.client().data_dbsize();
        let mut r = if want == got {
            Ok(())
        } else {
            Err(format!("target has {got} keys, sources {want}"))
        };
        if r.is_ok() {
            let mut t = target.client();
            'outer: for s in servers {
                let mut c = s.client_auth("poolpw");
                for k in c.ok(&["KEYS", "*"]).as_array() {
                    let k = k.as_string();
                    let (x, y) = (c.ok(&["DUMP", &k]), t.cmd(&["DUMP", &k]));
                    if x.as_bytes() != y.as_bytes() {
                        r = Err(format!("key {k} differs"));
                        break 'outer;
                    }
                }
            }
        }
        match r {
            Ok(()) => return,
            Err(e) if std::time::Instant::now() > deadline => {
                panic!("{what}: {e}\nferry log:\n{}", ferry.log())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[test]
fn db_filter_and_map_apply_to_snapshot_and_stream() {
    let master = RedisServer::start(&[]);
    let target = RedisServer::start(&[]);
    let mut m = master.client();
    for db in 0..3 {
        m.ok(&["SELECT", &db.to_string()]);
        m.ok(&["SET", &format!("snap{db}"), "v"]);
    }
    let state = TempDir::new("dbmap");
    let ferry = Ferry::sync(
        &[master.url()],
        &target.url(),
        state.path(),
        &["--db", "0,2", "--map-db", "2:0"],
    );
    let mut t = target.client();
    wait_until(
        "the snapshot of dbs 0 and 2 in target db 0",
        Duration::from_secs(20),
        || t.data_dbsize() == 2,
    );
    m.ok(&["SELECT", "1"]);
    m.ok(&["SET", "stream1", "not synced"]);
    m.ok(&["SELECT", "2"]);
    m.ok(&["SET", "stream2", "into db 0"]);
    m.ok(&["SELECT", "0"]);
    m.ok(&["SET", "moved", "v"]);
    m.ok(&["MOVE", "moved", "1"]);
    m.ok(&["SET", "last", "v"]);
    wait_until("the stream's last write", Duration::from_secs(20), || {
        t.cmd(&["EXISTS", "last"]).as_int() == 1
    });
    let mut keys: Vec<String> = t
        .ok(&["KEYS", "*"])
        .as_array()
        .iter()
        .map(|k| k.as_string())
        .filter(|k| !crate::support::is_ferry_key(k.as_bytes()))
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        ["last", "snap0", "snap2", "stream2"],
        "{}",
        ferry.log()
    );
    t.ok(&["SELECT", "1"]);
    assert_eq!(t.data_dbsize(), 0, "db 1 is not synced");
}

#[test]
fn a_dead_master_does_not_stall_the_others() {
    let a = RedisServer::start(&[]);
    let mut b = RedisServer::start(&[]);
    let target = RedisServer::start(&[]);
    let mut ac = a.client();
    ac.ok(&["SET", "a:0", "x"]);
    b.client().ok(&["SET", "b:0", "y"]);
    let state = TempDir::new("dead");
    // b is killed below: its link goes down and every reconnect is refused.
    let ferry = Ferry::sync(&[a.url(), b.url()], &target.url(), state.path(), &[])
        .allowing(&["link down", "cannot establish the replication link"]);
    let mut t = target.client();
    wait_until("both snapshots", Duration::from_secs(20), || {
        t.data_dbsize() == 2
    });
    let b_port = b.port;
    b.kill();
    for i in 1..100 {
        ac.ok(&["SET", &format!("a:{i}"), "x"]);
    }
    wait_until(
        "a's writes while b is down",
        Duration::from_secs(20),
        || t.data_dbsize() == 101,
    );
    wait_until("b's link reported down", Duration::from_secs(20), || {
        let log = ferry.log();
        log.contains("link down") && log.contains(&b_port.to_string())
    });
}

#[test]
fn a_cascade_a_to_b_to_c_carries_every_change() {
    let a = RedisServer::start(&[]);
    let b = RedisServer::start(&[]);
    let c = RedisServer::start(&[]);
    let mut ac = a.client();
    ac.ok(&["SET", "before", "1"]);
    ac.ok(&["RPUSH", "list", "x"]);
    let (s1, s2) = (TempDir::new("cascade1"), TempDir::new("cascade2"));
    let f1 = Ferry::sync(&[a.url()], &b.url(), s1.path(), &[]);
    let mut bc = b.client();
    wait_until("A's snapshot on B", Duration::from_secs(20), || {
        bc.data_dbsize() == 2
    });
    let f2 = Ferry::sync(&[b.url()], &c.url(), s2.path(), &[]);
    let mut cc = c.client();
    wait_until("B's snapshot on C", Duration::from_secs(20), || {
        cc.data_dbsize() == 2
    });
    for i in 0..200 {
        ac.ok(&["SET", &format!("k{i}"), &i.to_string()]);
    }
    ac.ok(&["RPUSH", "list", "y"]);
    ac.ok(&["DEL", "before"]);
    wait_until(
        "A's changes on C through B",
        Duration::from_secs(20),
        // The last write (the DEL) is checked too: the count and the length are two reads, and C may
        // take the later writes between them.
        || {
            cc.data_dbsize() == 201
                && cc.cmd(&["LLEN", "list"]).as_int() == 2
                && cc.cmd(&["EXISTS", "before"]).as_int() == 0
        },
    );
    assert_eq!(cc.ok(&["GET", "k199"]).as_string(), "199");
    assert_eq!(cc.ok(&["EXISTS", "before"]).as_int(), 0);
    drop((f1, f2));
}

#[test]
fn verify_of_a_live_synced_pair_under_writes_reports_no_false_difference() {
    let master = RedisServer::start(&[]);
    let target = RedisServer::start(&[]);
    let mut m = master.client();
    for i in 0..2000 {
        m.ok(&["SET", &format!("k{i}"), "v"]);
    }
    let state = TempDir::new("live-verify");
    let ferry = Ferry::sync(&[master.url()], &target.url(), state.path(), &[]);
    let mut t = target.client();
    wait_until("the snapshot", Duration::from_secs(20), || {
        t.data_dbsize() == 2000
    });
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (s2, port) = (stop.clone(), master.port);
    let writer = std::thread::spawn(move || {
        let mut c = Client::connect(port);
        let mut n = 0u64;
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            c.ok(&["SET", &format!("k{}", n % 2000), &n.to_string()]);
            c.ok(&["RPUSH", "log", &n.to_string()]);
            n += 1;
        }
    });
    let out = ferry_command()
        .args([
            "verify",
            "--source",
            &master.url(),
            "--target",
            &target.url(),
            "--rounds",
            "5",
        ])
        .output()
        .unwrap();
    check_output("ferry verify", &out, &[] as &[&str]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "verify reported differences on a live, synced pair:\n{}\n{}\nferry log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        ferry.log()
    );
}

#[test]
fn a_replica_serves_as_the_source_to_keep_load_off_the_master() {
    let master = RedisServer::start(&[]);
    let replica = RedisServer::start(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
    let target = RedisServer::start(&[]);
    let mut m = master.client();
    m.ok(&["SET", "a", "1"]);
    let mut r = replica.client();
    wait_until("the replica to sync", Duration::from_secs(20), || {
        r.cmd(&["EXISTS", "a"]).as_int() == 1
    });
    let state = TempDir::new("from-replica");
    let ferry = Ferry::sync(&[replica.url()], &target.url(), state.path(), &[]);
    let mut t = target.client();
    wait_until(
        "the snapshot from the replica",
        Duration::from_secs(20),
        || t.cmd(&["EXISTS", "a"]).as_int() == 1,
    );
    for i in 0..100 {
        m.ok(&["SET", &format!("k{i}"), "v"]);
    }
    wait_until(
        "the master's writes through the replica",
        Duration::from_secs(20),
        || t.data_dbsize() == 101,
    );
    // ferry is the replica's replica, not the master's.
    assert_eq!(
        m.info_field("replication", "connected_slaves").as_deref(),
        Some("1"),
        "{}",
        ferry.log()
    );
}

#[test]
fn one_source_into_two_targets_gets_every_change_to_both() {
    let master = RedisServer::start(&["--repl-backlog-size", "16mb"]);
    let t1 = RedisServer::start(&[]);
    let t2 = RedisServer::start(&[]);
    let mut m = master.client();
    for i in 0..300 {
        m.ok(&["SET", &format!("k{i}"), "v"]);
    }
    m.ok(&["RPUSH", "list", "a"]);
    let state = TempDir::new("fanout");
    let mut ferry = Ferry::start(&[
        "sync",
        "--source",
        &master.url(),
        "--target",
        &t1.url(),
        "--target",
        &t2.url(),
        "--state-dir",
        &state.path().display().to_string(),
        "--target-checkpoint",
    ]);
    for t in [&t1, &t2] {
        let mut c = t.client();
        wait_until(
            "the snapshot on both targets",
            Duration::from_secs(20),
            || c.data_dbsize() == 301,
        );
    }
    for i in 0..300 {
        m.ok(&["INCR", &format!("n{}", i % 10)]);
    }
    m.ok(&["RPUSH", "list", "b"]);
    for t in [&t1, &t2] {
        let mut c = t.client();
        wait_until(
            "the stream on both targets",
            Duration::from_secs(20),
            || c.cmd(&["LLEN", "list"]).as_int() == 2 && c.cmd(&["GET", "n9"]).as_string() == "30",
        );
    }
    // Stop, write more, restart: both targets resume exactly (no duplicated list items).
    assert!(
        ferry.terminate(Duration::from_secs(15)).success(),
        "{}",
        ferry.log()
    );
    m.ok(&["RPUSH", "list", "c"]);
    let partial_before = m.info_field("stats", "sync_partial_ok").unwrap();
    let ferry2 = Ferry::start(&[
        "sync",
        "--source",
        &master.url(),
        "--target",
        &t1.url(),
        "--target",
        &t2.url(),
        "--state-dir",
        &state.path().display().to_string(),
        "--target-checkpoint",
    ]);
    for t in [&t1, &t2] {
        let mut c = t.client();
        wait_until(
            "the restart's changes on both targets",
            Duration::from_secs(20),
            || c.cmd(&["LLEN", "list"]).as_int() == 3,
        );
        assert_eq!(
            c.ok(&["LRANGE", "list", "0", "-1"]).as_array().len(),
            3,
            "{}",
            ferry2.log()
        );
        assert_eq!(c.ok(&["GET", "n0"]).as_string(), "30");
    }
    assert_ne!(
        m.info_field("stats", "sync_partial_ok").unwrap(),
        partial_before
    );
    assert_eq!(m.info_field("stats", "sync_full").as_deref(), Some("1"));
}

#[test]
fn pool_auth_overrides_the_pools_redis_auth() {
    let a = RedisServer::start(&["--requirepass", "poolpw"]);
    let target = RedisServer::start(&[]);
    let mut ac = a.client_auth("poolpw");
    ac.ok(&["ACL", "SETUSER", "repl", "on", ">rp", "~*", "+@all"]);
    ac.ok(&["SET", "k", "v"]);
    let dir = TempDir::new("pool-auth");
    let conf = dir.path().join("nc.yml");
    let opts = NutcrackerOpts {
        redis_auth: Some("not-the-password".into()),
        ..Default::default()
    };
    std::fs::write(
        &conf,
        crate::support::nutcracker_yaml(crate::support::free_port(), &[(a.port, "s1")], &opts),
    )
    .unwrap();
    let src = format!("twemproxy:{}", conf.display());
    let run = |env: Option<&str>| {
        let state = TempDir::new("pool-auth-state");
        let mut cmd = ferry_command();
        cmd.args([
            "sync",
            "--source",
            &src,
            "--target",
            &target.url(),
            "--once",
            "--state-dir",
        ])
        .arg(state.path());
        if let Some(e) = env {
            cmd.env("FERRY_POOL_AUTH", e);
        }
        let out = cmd.output().unwrap();
        // Without it the pool's redis_auth is refused: the precheck's verdict, in the final message.
        check_output(&format!("FERRY_POOL_AUTH={env:?}"), &out, &[] as &[&str]);
        out
    };
    let out = run(None);
    assert_eq!(
        out.status.code(),
        Some(1),
        "redis_auth is wrong for this server"
    );
    let out = run(Some("repl:rp"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("rp@") && !err.contains(":rp"), "{err}");
    assert_eq!(target.client().ok(&["GET", "k"]).as_string(), "v");
}
