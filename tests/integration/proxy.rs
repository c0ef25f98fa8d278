//! Issue 10, part 2: `ferry proxy` in nutcracker's place — the same answers as a real nutcracker before the
//! cutover, and a cutover under a client load that loses no acknowledged write, gives no client an error and
//! leaves the pool's servers receiving nothing.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::ferry_proc::Ferry;
use crate::support::{
    ferry_bin, free_port, nutcracker_yaml, wait_until, Client, Nutcracker, NutcrackerOpts,
    RedisServer, Reply, TempDir,
};

/// `ferry proxy` for a pool of `servers` (`(port, name)`), on `port`, into `target`.
fn start_proxy(
    dir: &TempDir,
    port: u16,
    servers: &[(u16, &str)],
    target: &str,
    extra: &[&str],
) -> Ferry {
    let yaml = dir.path().join("pool.yml");
    std::fs::write(
        &yaml,
        nutcracker_yaml(free_port(), servers, &NutcrackerOpts::default()),
    )
    .unwrap();
    let source = format!("twemproxy:{}", yaml.display());
    let listen = format!("127.0.0.1:{port}");
    let state = dir.path().join("state").display().to_string();
    let mut args = vec![
        "proxy",
        "--source",
        &source,
        "--target",
        target,
        "--listen",
        &listen,
        "--state-dir",
        &state,
    ];
    args.extend_from_slice(extra);
    let ferry = Ferry::start(&args);
    wait_until("ferry proxy to listen", Duration::from_secs(20), || {
        Client::connect_quiet(port).is_ok()
    });
    ferry
}

/// A script of commands nutcracker forwards (single-key, cut per server, scripts) and one it refuses: the
/// replies through ferry equal the replies through a real nutcracker in front of servers with the same
/// names, and both close the connection at the refused command.
#[test]
fn the_proxy_answers_like_nutcracker() {
    let (a1, a2) = (RedisServer::start(&[]), RedisServer::start(&[]));
    let (b1, b2) = (RedisServer::start(&[]), RedisServer::start(&[]));
    let t = RedisServer::start(&[]);
    let nc = Nutcracker::start(&[(a1.port, "s1"), (a2.port, "s2")]);
    let dir = TempDir::new("proxy-parity");
    let port = free_port();
    let _ferry = start_proxy(
        &dir,
        port,
        &[(b1.port, "s1"), (b2.port, "s2")],
        &t.url(),
        &[],
    );
    let script: Vec<Vec<&str>> = vec![
        vec!["PING"],
        vec!["SET", "a", "1"],
        vec!["GET", "a"],
        vec![
            "MSET", "a", "1", "b", "2", "c", "3", "d", "4", "e", "5", "f", "6",
        ],
        vec!["MGET", "a", "b", "c", "d", "e", "f", "nope"],
        vec!["DEL", "a", "b", "nope"],
        vec!["EXISTS", "c"],
        vec!["INCR", "n"],
        vec!["INCRBY", "n", "5"],
        vec!["HSET", "h", "f", "v", "g", "w"],
        vec!["HGETALL", "h"],
        vec!["RPUSH", "l", "1", "2", "3"],
        vec!["LRANGE", "l", "0", "-1"],
        vec!["EXPIRE", "c", "100"],
        vec!["SADD", "s", "x", "y"],
        vec!["SCARD", "s"],
        vec!["TOUCH", "c", "d", "nope"],
        vec!["UNLINK", "d", "e"],
        vec!["EVAL", "return redis.call('GET', KEYS[1])", "1", "c"],
        vec!["GET", "h"],
        vec!["AUTH", "x"],
    ];
    let (mut via_nc, mut via_ferry) = (nc.client(), Client::connect(port));
    for cmd in &script {
        let want = via_nc.try_cmd(cmd).expect("nutcracker answers");
        let got = via_ferry.try_cmd(cmd).expect("ferry answers");
        assert_eq!(got, want, "{cmd:?}");
    }
    // Where the keys went: the same server names, the same placement.
    for k in ["c", "f", "n", "h", "l", "s"] {
        let on_a1 = a1.client().cmd(&["EXISTS", k]).as_int();
        let on_b1 = b1.client().cmd(&["EXISTS", k]).as_int();
        assert_eq!(on_a1, on_b1, "{k} placed differently");
    }
    // What nutcracker does not support closes the connection, in both.
    for refused in [
        vec!["KEYS", "*"],
        vec!["GET", "a", "b"],
        vec!["SELECT", "1"],
    ] {
        let mut c = nc.client();
        assert!(
            c.try_cmd(&refused).is_err(),
            "nutcracker answered {refused:?}"
        );
        let mut c = Client::connect(port);
        assert!(c.try_cmd(&refused).is_err(), "ferry answered {refused:?}");
    }
}

/// What one load client got acknowledged.
#[derive(Default, Debug)]
struct Acked {
    incr: u64,
    pushed: u64,
    errors: Vec<String>,
}

/// Clients write through ferry (INCR on shared counters, SET, GET, RPUSH on their own list) from the full
/// sync on, through the cutover and after it: no client sees an error; after the cutover the target holds
/// every acknowledged write and the pool's servers receive no command; the write pause is reported.
#[test]
fn a_cutover_under_load_loses_nothing_and_moves_every_client() {
    let t = RedisServer::start(&["--enable-debug-command", "yes"]);
    cutover_under_load(&t.url(), &|args: &[String]| t.client().cmd(args), &|| {
        std::thread::sleep(Duration::from_millis(1000))
    });
}

/// The same into a Redis Cluster: after the cutover the proxy routes by slot (commands nutcracker cuts per
/// server cut per slot) and follows the cluster's redirections. Then, under the same load, the slot of
/// every counter and list the clients write moves to another master (`MOVED` and `ASK` while it moves):
/// still no client error, and every acknowledged write is there exactly once.
#[test]
fn a_cutover_into_a_cluster_under_load_then_a_resharding_loses_nothing() {
    use crate::support::cluster::key_slot;
    let cluster = crate::support::cluster::Cluster::start(3, 0, &[]);
    let reshard = || {
        let mut slots: Vec<u16> = (0..16)
            .map(|i| format!("c:{i}"))
            .chain((0..4).map(|id| format!("l:{id}")))
            .map(|k| key_slot(k.as_bytes()))
            .collect();
        slots.sort_unstable();
        slots.dedup();
        let masters: Vec<u16> = cluster.current_masters().iter().map(|m| m.0).collect();
        for slot in &slots {
            let owner = cluster.owner_port(*slot);
            let dest = *masters
                .iter()
                .find(|&&p| p != owner)
                .expect("another master");
            cluster.move_slots(*slot, *slot, dest, Duration::from_millis(20));
        }
        cluster.wait_ok();
        eprintln!("resharded {} slots under load", slots.len());
    };
    cutover_under_load(
        &cluster.url(),
        &|args: &[String]| cluster.cmd(args),
        &reshard,
    );
}

/// A pool of 2 masters (30 k keys each) behind `ferry proxy` into `target`; `read` reads the target.
/// `after` runs once the cutover is done, while the clients go on writing.
fn cutover_under_load(target: &str, read: &dyn Fn(&[String]) -> Reply, after: &dyn Fn()) {
    let big_backlog = [
        "--enable-debug-command",
        "yes",
        "--repl-backlog-size",
        "64mb",
    ];
    let m1 = RedisServer::start(&big_backlog);
    let m2 = RedisServer::start(&big_backlog);
    m1.client().ok(&["DEBUG", "POPULATE", "30000", "m1", "64"]);
    m2.client().ok(&["DEBUG", "POPULATE", "30000", "m2", "64"]);
    let dir = TempDir::new("proxy-cutover");
    let (port, status) = (free_port(), free_port());
    let status_addr = format!("127.0.0.1:{status}");
    let ferry = start_proxy(
        &dir,
        port,
        &[(m1.port, "s1"), (m2.port, "s2")],
        target,
        &["--status", &status_addr],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let results: Vec<Arc<Mutex<Acked>>> = (0..4).map(|_| Arc::default()).collect();
    let clients: Vec<_> = results
        .iter()
        .enumerate()
        .map(|(id, acked)| {
            let (stop, ops, acked) = (stop.clone(), ops.clone(), acked.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(port);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let steps: [Vec<String>; 4] = [
                        vec!["INCR".into(), format!("c:{}", n % 16)],
                        vec!["SET".into(), format!("w:{id}:{n}"), n.to_string()],
                        vec!["GET".into(), format!("w:{id}:{n}")],
                        vec!["RPUSH".into(), format!("l:{id}"), n.to_string()],
                    ];
                    for (i, cmd) in steps.iter().enumerate() {
                        match c.try_cmd(cmd) {
                            Ok(Reply::Error(e)) => {
                                lock(&acked).errors.push(format!("{cmd:?}: {e}"))
                            }
                            Ok(Reply::Bulk(v))
                                if i == 2 && v.as_deref() != Some(n.to_string().as_bytes()) =>
                            {
                                lock(&acked)
                                    .errors
                                    .push(format!("read {v:?} after writing {n}"))
                            }
                            Ok(_) if i == 0 => lock(&acked).incr += 1,
                            Ok(_) if i == 3 => lock(&acked).pushed += 1,
                            Ok(_) => {}
                            Err(e) => {
                                lock(&acked).errors.push(format!("{cmd:?}: {e}"));
                                return;
                            }
                        }
                        ops.fetch_add(1, Ordering::Relaxed);
                    }
                    n += 1;
                }
            })
        })
        .collect();
    wait_until("the pool to be synced", Duration::from_secs(60), || {
        crate::stream::http_get(status, "/status").is_some_and(|b| b.contains("\"caught_up\""))
    });
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new(ferry_bin())
        .args(["cutover", &status_addr])
        .output()
        .expect("ferry cutover");
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "cutover failed: {said}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        ferry.log()
    );
    let answer: serde_json::Value = serde_json::from_str(said.trim()).expect("JSON answer");
    let pause = answer["write_pause_ms"].as_f64().expect("pause reported");
    let incr_calls = |m: &RedisServer| {
        m.client()
            .cmd(&["INFO", "commandstats"])
            .as_string()
            .lines()
            .find(|l| l.starts_with("cmdstat_incr:"))
            .map(str::to_string)
            .unwrap_or_default()
    };
    let (before1, before2) = (incr_calls(&m1), incr_calls(&m2));
    let ops_at_cutover = ops.load(Ordering::Relaxed);
    after();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("load client");
    }
    let ops_after = ops.load(Ordering::Relaxed) - ops_at_cutover;
    assert!(
        ops_after > 100,
        "clients kept going after the cutover ({ops_after} ops)"
    );
    assert_eq!(
        incr_calls(&m1),
        before1,
        "the pool's servers receive nothing after the cutover"
    );
    assert_eq!(incr_calls(&m2), before2);
    let mut incr = 0;
    for (id, r) in results.iter().enumerate() {
        let r = lock(r);
        assert!(
            r.errors.is_empty(),
            "client {id} saw errors: {:?}",
            r.errors
        );
        incr += r.incr;
        assert_eq!(
            read(&["LLEN".into(), format!("l:{id}")]).as_int() as u64,
            r.pushed,
            "every acknowledged RPUSH of client {id} on the target"
        );
    }
    let on_target: u64 = (0..16)
        .map(|i| {
            read(&["GET".into(), format!("c:{i}")])
                .as_string()
                .parse::<u64>()
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(
        on_target, incr,
        "every acknowledged INCR exactly once on the target"
    );
    eprintln!(
        "cutover: write pause {pause:.1} ms ({}); {ops_after} client ops after it",
        answer["pause_parts_ms"]
    );
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
