//! Issue 10, part 1: `ferry serve`, driven like a replica with the real `redis-cli` — `REPLICAOF`, `INFO
//! replication`, `ROLE`, `REPLICAOF NO ONE`, a restart that resumes the last `REPLICAOF`, passwords on
//! both sides — and the target equal to the master at the end of each step.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::ferry_proc::Ferry;
use crate::support::{data_items_of, free_port, wait_until, Client, RedisServer, TempDir};

/// `redis-cli -p PORT args…` (the real binary): its stdout, then its stderr, trimmed; panics when it
/// cannot run.
fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("redis-cli (Debian package redis-tools; scripts/install-deps.sh installs it)");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    text.trim().to_string()
}

/// A field of `INFO` text.
fn field(info: &str, name: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.trim_end().strip_prefix(&format!("{name}:")))
        .map(str::to_string)
}

fn int_field(info: &str, name: &str) -> i64 {
    field(info, name).and_then(|v| v.parse().ok()).unwrap_or(-1)
}

fn start_serve(port: u16, target: &str, state: &Path, extra: &[&str]) -> Ferry {
    let listen = format!("127.0.0.1:{port}");
    let state = state.display().to_string();
    let mut args = vec![
        "serve",
        "--listen",
        &listen,
        "--target",
        target,
        "--state-dir",
        &state,
    ];
    args.extend_from_slice(extra);
    let ferry = Ferry::start(&args);
    wait_until("ferry serve to listen", Duration::from_secs(20), || {
        Client::connect_quiet(port).is_ok()
    });
    ferry
}

/// What a script waiting for a replica does: poll `INFO replication` (through redis-cli, with `auth`
/// arguments) until the link is up and `slave_repl_offset` reaches the master's offset.
fn wait_caught_up(
    port: u16,
    auth: &[&str],
    master: &RedisServer,
    master_pw: Option<&str>,
    ferry: &Ferry,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut mc = master.client();
        if let Some(pw) = master_pw {
            mc.ok(&["AUTH", pw]);
        }
        let want = mc.info_field("replication", "master_repl_offset");
        let want: i64 = want.and_then(|v| v.trim().parse().ok()).unwrap_or(-1);
        let mut args = auth.to_vec();
        args.extend(["INFO", "replication"]);
        let info = redis_cli(port, &args);
        if field(&info, "master_link_status").as_deref() == Some("up")
            && int_field(&info, "slave_repl_offset") >= want
            && want > 0
        {
            return info;
        }
        assert!(
            Instant::now() < deadline,
            "the replica side did not catch up in 60 s (master offset {want}):\n{info}\nferry log:\n{}",
            ferry.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn assert_equal(master: &RedisServer, target: &RedisServer, ferry: &Ferry, what: &str) {
    wait_until(what, Duration::from_secs(30), || {
        data_items_of(&mut [master.client()]) == data_items_of(&mut [target.client()])
    });
    let _ = ferry;
}

fn fill(m: &RedisServer, tag: &str) {
    let mut c = m.client();
    for i in 0..300 {
        c.ok(&["SET", &format!("{tag}:k:{i}"), &i.to_string()]);
    }
    c.ok(&["HSET", &format!("{tag}:h"), "a", "1", "b", "2"]);
    c.ok(&["RPUSH", &format!("{tag}:l"), "x", "y", "z"]);
}

fn stats(m: &RedisServer) -> (i64, i64) {
    let mut c = m.client();
    let mut n = |f: &str| {
        c.info_field("stats", f)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(-1)
    };
    (n("sync_full"), n("sync_partial_ok"))
}

/// The headline: `redis-cli REPLICAOF` a loaded master; `INFO replication` shows the link up and the
/// offset reaching the master's; the target equals the master, also after more writes; data commands get
/// a clear error; `REPLICAOF NO ONE` stops (a master again), a new `REPLICAOF` continues with a partial
/// resync; a restart of `ferry serve` resumes the last `REPLICAOF` by itself, again partially.
#[test]
fn redis_cli_replicaof_syncs_a_master_and_info_reads_like_a_replica() {
    let m = RedisServer::start(&[
        "--repl-backlog-size",
        "16mb",
        "--enable-debug-command",
        "yes",
    ]);
    let t = RedisServer::start(&["--enable-debug-command", "yes"]);
    fill(&m, "pre");
    let state = TempDir::new("serve");
    let port = free_port();
    let mut ferry = start_serve(port, &t.url(), state.path(), &[]);
    assert_eq!(redis_cli(port, &["PING"]), "PONG");
    let info = redis_cli(port, &["INFO", "replication"]);
    assert_eq!(field(&info, "role").as_deref(), Some("master"), "{info}");
    let mport = m.port.to_string();
    assert_eq!(redis_cli(port, &["REPLICAOF", "127.0.0.1", &mport]), "OK");
    let info = wait_caught_up(port, &[], &m, None, &ferry);
    assert_eq!(field(&info, "role").as_deref(), Some("slave"), "{info}");
    assert_eq!(field(&info, "master_host").as_deref(), Some("127.0.0.1"));
    assert_eq!(int_field(&info, "master_port"), i64::from(m.port));
    assert_eq!(int_field(&info, "master_sync_in_progress"), 0);
    let replid = m.client().info_field("replication", "master_replid");
    assert_eq!(
        field(&info, "master_replid"),
        replid.map(|r| r.trim().to_string())
    );
    assert_equal(&m, &t, &ferry, "the target to equal the master");
    // More writes: the offset follows, the target too.
    let mut mc = m.client();
    for _ in 0..100 {
        mc.ok(&["INCR", "counter"]);
    }
    wait_caught_up(port, &[], &m, None, &ferry);
    assert_equal(
        &m,
        &t,
        &ferry,
        "the target to equal the master after writes",
    );
    assert_eq!(t.client().cmd(&["GET", "counter"]).as_string(), "100");
    // ROLE like a replica's; the Ferry section; a data command refused, naming the target.
    let role = Client::connect(port).cmd(&["ROLE"]);
    let role = role.as_array();
    assert_eq!(role[0].as_string(), "slave");
    assert_eq!(role[2].as_int(), i64::from(m.port));
    assert_eq!(role[3].as_string(), "connected");
    let ferry_info = redis_cli(port, &["INFO", "ferry"]);
    assert_eq!(
        field(&ferry_info, "ferry_state").as_deref(),
        Some("streaming"),
        "{ferry_info}"
    );
    assert_eq!(int_field(&ferry_info, "ferry_writes_rejected"), 0);
    let refused = redis_cli(port, &["SET", "a", "b"]);
    assert!(
        refused.contains("sync endpoint") && refused.contains(&t.url()),
        "{refused}"
    );
    assert_eq!(stats(&m), (1, 0));
    // REPLICAOF NO ONE: a master again; the next REPLICAOF continues where it stopped.
    assert_eq!(redis_cli(port, &["REPLICAOF", "NO", "ONE"]), "OK");
    let info = redis_cli(port, &["INFO", "replication"]);
    assert_eq!(field(&info, "role").as_deref(), Some("master"), "{info}");
    mc.ok(&["INCR", "counter"]);
    assert_eq!(redis_cli(port, &["REPLICAOF", "127.0.0.1", &mport]), "OK");
    wait_caught_up(port, &[], &m, None, &ferry);
    assert_equal(
        &m,
        &t,
        &ferry,
        "the target to equal the master after REPLICAOF again",
    );
    assert_eq!(stats(&m), (1, 1), "a partial resync, not a full one");
    // A restart resumes the last REPLICAOF by itself.
    let st = ferry.terminate(Duration::from_secs(30));
    assert!(st.success(), "{st:?}");
    mc.ok(&["INCR", "counter"]);
    let ferry = start_serve(port, &t.url(), state.path(), &[]);
    wait_caught_up(port, &[], &m, None, &ferry);
    assert_equal(
        &m,
        &t,
        &ferry,
        "the target to equal the master after a restart",
    );
    assert_eq!(t.client().cmd(&["GET", "counter"]).as_string(), "102");
    assert_eq!(
        stats(&m),
        (1, 2),
        "the restart continues with a partial resync"
    );
    assert!(
        ferry.log().contains("resuming the last REPLICAOF"),
        "{}",
        ferry.log()
    );
}

/// Passwords on every side: `--requirepass user:password` for clients (redis-cli `--user/--pass`, RESP3
/// with `-3`), `CONFIG SET masterauth` for a master that needs one; neither password shows in `CONFIG
/// GET`, `INFO` or the log. A `REPLICAOF` to a master that is not there answers `+OK`, shows the link
/// down with the reason, and a `REPLICAOF` to a live master switches to it.
#[test]
fn passwords_on_both_sides_and_a_master_that_is_not_there() {
    let m = RedisServer::start(&["--requirepass", "m-secret-1"]);
    let t = RedisServer::start(&[]);
    {
        let mut c = m.client();
        c.ok(&["AUTH", "m-secret-1"]);
        for i in 0..50 {
            c.ok(&["SET", &format!("k{i}"), "v"]);
        }
    }
    let state = TempDir::new("serve-auth");
    let port = free_port();
    let ferry = start_serve(
        port,
        &t.url(),
        state.path(),
        &["--requirepass", "ops:c-secret-2"],
    )
    .allowing(&["trying again"]);
    assert!(redis_cli(port, &["PING"]).contains("NOAUTH"));
    let auth = ["--user", "ops", "--pass", "c-secret-2", "--no-auth-warning"];
    let with = |args: &[&str]| {
        let mut a = auth.to_vec();
        a.extend_from_slice(args);
        redis_cli(port, &a)
    };
    assert_eq!(with(&["PING"]), "PONG");
    let mut wrong = vec![
        "--user",
        "ops",
        "--pass",
        "nope",
        "--no-auth-warning",
        "PING",
    ];
    assert!(redis_cli(port, &wrong).contains("WRONGPASS"));
    wrong[1] = "other";
    assert!(!redis_cli(port, &wrong).contains("PONG"));
    // Nobody there: +OK at once, the link down with the reason. Port 1: nothing listens there, and no
    // other test's server can take it while ferry keeps trying (a port from free_port() could be handed
    // to another test's redis-server meanwhile, which ferry would then replicate).
    let dead = "1".to_string();
    assert_eq!(with(&["REPLICAOF", "127.0.0.1", &dead]), "OK");
    wait_until("the failure to show", Duration::from_secs(30), || {
        let info = with(&["INFO", "all"]);
        field(&info, "master_link_status").as_deref() == Some("down")
            && field(&info, "ferry_last_error").is_some()
    });
    let role = with(&["ROLE"]);
    assert!(role.contains("slave") && role.contains(&dead), "{role}");
    // The real master, with its password.
    assert_eq!(with(&["CONFIG", "SET", "masterauth", "m-secret-1"]), "OK");
    let shown = with(&["CONFIG", "GET", "master*"]);
    assert!(!shown.contains("m-secret-1"), "{shown}");
    let mport = m.port.to_string();
    assert_eq!(with(&["REPLICAOF", "127.0.0.1", &mport]), "OK");
    wait_caught_up(port, &auth, &m, Some("m-secret-1"), &ferry);
    wait_until(
        "the target to hold the master's keys",
        Duration::from_secs(30),
        || {
            let mut args = vec!["EXISTS".to_string()];
            args.extend((0..50).map(|i| format!("k{i}")));
            t.client().cmd(&args).as_int() == 50
        },
    );
    // RESP3 (redis-cli -3 sends HELLO 3 first).
    let mut a = vec!["-3"];
    a.extend_from_slice(&auth);
    a.extend(["INFO", "replication"]);
    assert!(redis_cli(port, &a).contains("master_link_status:up"));
    let log = ferry.log();
    assert!(
        !log.contains("m-secret-1") && !log.contains("c-secret-2"),
        "a password reached the log:\n{log}"
    );
    let kept = std::fs::metadata(state.path().join("serve-replicaof.json")).expect("kept");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(kept.permissions().mode() & 0o777, 0o600);
}

/// A `REPLICAOF` to another master answers at once and `INFO` keeps answering while the old job drains
/// into a target that does not answer (a stalled fault proxy): it shows the new master, its link down, as
/// a replica does while it reconnects. Once the target answers, the old job ends cleanly: everything it
/// had received is on the target.
#[test]
fn info_answers_while_a_replicaof_switch_waits_for_the_old_job() {
    use crate::support::fault_proxy::FaultProxy;
    let m1 = RedisServer::start(&[]);
    let m2 = RedisServer::start(&[]);
    let t = RedisServer::start(&[]);
    let fp = FaultProxy::start(t.port);
    let state = TempDir::new("serve-switch");
    let port = free_port();
    // The new master's job finds the target not empty (the first master's keys) and is refused until
    // REPLICAOF NO ONE: expected here.
    let ferry = start_serve(port, &fp.url(), state.path(), &[]).allowing(&["trying again"]);
    m1.client().ok(&["SET", "before", "1"]);
    let p1 = m1.port.to_string();
    assert_eq!(redis_cli(port, &["REPLICAOF", "127.0.0.1", &p1]), "OK");
    wait_caught_up(port, &[], &m1, None, &ferry);
    fp.stall(true);
    let mut mc = m1.client();
    for _ in 0..100 {
        mc.ok(&["INCR", "counter"]);
    }
    let want = mc
        .info_field("replication", "master_repl_offset")
        .and_then(|v| v.trim().parse::<i64>().ok())
        .expect("master offset");
    wait_until(
        "ferry to receive the INCRs",
        Duration::from_secs(30),
        || {
            int_field(
                &redis_cli(port, &["INFO", "replication"]),
                "slave_read_repl_offset",
            ) >= want
        },
    );
    let p2 = m2.port.to_string();
    let mut c = Client::connect(port);
    assert_eq!(
        c.cmd(&["REPLICAOF", "127.0.0.1", &p2]).as_string(),
        "OK",
        "REPLICAOF answers while the old job waits for the target"
    );
    let info = c.cmd(&["INFO", "replication"]).as_string();
    assert_eq!(
        int_field(&info, "master_port"),
        i64::from(m2.port),
        "{info}"
    );
    assert_eq!(
        field(&info, "master_link_status").as_deref(),
        Some("down"),
        "{info}"
    );
    assert_eq!(
        t.client().cmd(&["GET", "counter"]),
        crate::support::Reply::Bulk(None),
        "the stall held the INCRs while INFO answered"
    );
    fp.stall(false);
    wait_until(
        "the old job to apply what it received before it stopped",
        Duration::from_secs(30),
        || t.client().cmd(&["GET", "counter"]).as_string() == "100",
    );
    assert_eq!(redis_cli(port, &["REPLICAOF", "NO", "ONE"]), "OK");
    let info = redis_cli(port, &["INFO", "replication"]);
    assert_eq!(field(&info, "role").as_deref(), Some("master"), "{info}");
}
