//! A randomized soak: a seeded random workload of non-idempotent writes (INCR, INCRBYFLOAT, LPUSH, APPEND,
//! SADD, HINCRBY, EXPIRE, several dbs, MULTI/EXEC, EVAL, a FLUSHDB of one source) runs while a seeded random
//! schedule of faults hits the link to the sources and to the targets (cuts, replies dropped after the
//! server executed the commands, stalls) and ferry itself (SIGTERM and restart, kill -9 and restart). At the
//! end the targets must hold exactly the sources' data: every key, value and expiry.
//!
//! Topologies: one master to one target (a fault proxy on each side), a twemproxy pool of three masters to
//! one target, one master to two targets, and a twemproxy pool into a 3-master Redis Cluster with replicas,
//! whose faults add slot moves (a resharding) and failovers of the target. CI runs the seeds in `FERRY_SOAK_SEEDS` (default: two per
//! topology, inside the time budget); `scripts/soak.sh` runs hundreds and prints the seed of any failure,
//! which `FERRY_SOAK_SEEDS=<seed>` replays.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::support::fault_proxy::FaultProxy;
use crate::support::ferry_proc::Ferry;
use crate::support::{data_items, data_items_of, Client, Nutcracker, RedisServer, TempDir};

/// Warnings a soak provokes on purpose: links cut, targets' connections lost, restarts after kill -9.
const ALLOWED: &[&str] = &[
    "link down",
    "target connection lost",
    "repl-backlog-size",
    "this target needs a full resync",
    "the master started a full resync",
    "could not hand everything to the target on shutdown",
    "cannot establish the replication link",
];

fn seeds(default: &[u64]) -> Vec<u64> {
    match std::env::var("FERRY_SOAK_SEEDS") {
        Ok(v) if !v.trim().is_empty() => v
            .split(',')
            .flat_map(|p| match p.split_once("..") {
                Some((a, b)) => {
                    let (a, b): (u64, u64) = (a.trim().parse().unwrap(), b.trim().parse().unwrap());
                    (a..b).collect::<Vec<_>>()
                }
                None => vec![p.trim().parse().unwrap()],
            })
            .collect(),
        _ => default.to_vec(),
    }
}

fn steps() -> usize {
    std::env::var("FERRY_SOAK_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

fn debug_server() -> RedisServer {
    RedisServer::start(&[
        "--enable-debug-command",
        "yes",
        "--repl-backlog-size",
        "64mb",
    ])
}

/// What the workload may send: through a proxy (no SELECT/MULTI) or to a master.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    Master,
    Nutcracker,
}

/// The random writer. Errors are ignored: a command whose connection is cut may or may not have been
/// executed; the comparison at the end is of the servers' states, whatever they are.
struct Workload {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<u64>>,
}

impl Workload {
    fn start(port: u16, seed: u64, via: Via) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
            let mut c = Client::connect(port);
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                let k = |rng: &mut StdRng, p: &str| format!("{p}:{}", rng.gen_range(0..40));
                let cmds: Vec<Vec<String>> = match rng.gen_range(0..12) {
                    0 => vec![vec!["INCR".into(), k(&mut rng, "n")]],
                    1 => vec![vec!["INCRBYFLOAT".into(), k(&mut rng, "f"), "1.5".into()]],
                    2 => vec![vec!["LPUSH".into(), k(&mut rng, "l"), n.to_string()]],
                    3 => vec![vec!["APPEND".into(), k(&mut rng, "s"), "ab".into()]],
                    4 => vec![vec![
                        "SADD".into(),
                        k(&mut rng, "set"),
                        format!("m{}", n % 97),
                        format!("x{n}"),
                    ]],
                    5 => vec![vec![
                        "HINCRBY".into(),
                        k(&mut rng, "h"),
                        "f".into(),
                        "3".into(),
                    ]],
                    6 => vec![vec!["EXPIRE".into(), k(&mut rng, "n"), "100000".into()]],
                    7 if via == Via::Master => {
                        let db = rng.gen_range(0..3).to_string();
                        vec![
                            vec!["SELECT".into(), db],
                            vec!["INCR".into(), k(&mut rng, "n")],
                            vec!["RPUSH".into(), k(&mut rng, "l"), n.to_string()],
                        ]
                    }
                    8 if via == Via::Master => vec![
                        vec!["MULTI".into()],
                        vec!["INCR".into(), k(&mut rng, "n")],
                        vec!["LPUSH".into(), k(&mut rng, "l"), n.to_string()],
                        vec!["SADD".into(), k(&mut rng, "set"), format!("t{n}")],
                        vec!["EXEC".into()],
                    ],
                    9 => {
                        let key = k(&mut rng, "e");
                        vec![vec![
                            "EVAL".into(),
                            "redis.call('HINCRBY', KEYS[1], 'n', 1) return redis.call('HSET', KEYS[1], 'v', ARGV[1])"
                                .into(),
                            "1".into(),
                            key,
                            n.to_string(),
                        ]]
                    }
                    10 => vec![vec!["DEL".into(), k(&mut rng, "l")]],
                    _ => vec![vec!["SET".into(), k(&mut rng, "s"), n.to_string()]],
                };
                for cmd in cmds {
                    if c.try_cmd(&cmd).is_err() {
                        std::thread::sleep(Duration::from_millis(20));
                        match Client::connect_quiet(port) {
                            Ok(new) => c = new,
                            Err(_) => continue,
                        }
                    }
                }
                n += 1;
            }
            n
        });
        Workload {
            stop,
            handle: Some(handle),
        }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap_or(0)
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// ferry, restarted by the schedule.
struct Job {
    args: Vec<String>,
    ferry: Option<Ferry>,
    log: String,
    /// Warnings this topology provokes beside [`ALLOWED`].
    allow: Vec<String>,
}

impl Job {
    fn start(args: Vec<String>) -> Job {
        Job::start_with(args, &[])
    }

    /// [`Job::start`], with warnings of this topology allowed beside [`ALLOWED`].
    fn start_with(args: Vec<String>, allow: &[&str]) -> Job {
        let mut j = Job {
            args,
            ferry: None,
            log: String::new(),
            allow: allow.iter().map(|s| s.to_string()).collect(),
        };
        j.spawn();
        j
    }

    fn spawn(&mut self) {
        let refs: Vec<&str> = self.args.iter().map(|s| s.as_str()).collect();
        let mut allowed: Vec<&str> = ALLOWED.to_vec();
        allowed.extend(self.allow.iter().map(|s| s.as_str()));
        self.ferry = Some(Ferry::start_allowing(&refs, &allowed));
    }

    /// If ferry ended, it must be because a fault hit its start-up precheck (it refuses to start then,
    /// writing nothing): start it again, as an operator would. Any other end is a failure.
    fn ensure_running(&mut self, seed: u64) {
        let f = self.ferry.as_mut().expect("started");
        if f.running() {
            return;
        }
        let log = f.log();
        if log.contains("precheck failed; nothing was written") && !log.contains("streaming") {
            self.log.push_str(&log);
            self.spawn();
            return;
        }
        panic!(
            "SOAK FAILURE seed={seed}: ferry ended on its own:\n{}{log}",
            self.log
        );
    }

    /// SIGTERM (a clean stop: exit 0) and start again. A ferry that had already refused to start (see
    /// [`Job::ensure_running`]) is started again too.
    fn restart(&mut self) {
        let mut f = self.ferry.take().expect("running");
        let st = f.terminate(Duration::from_secs(60));
        let log = f.log();
        self.log.push_str(&log);
        let refused =
            log.contains("precheck failed; nothing was written") && !log.contains("streaming");
        assert!(
            st.success() || refused,
            "ferry did not stop cleanly ({st:?}):\n{log}"
        );
        self.spawn();
    }

    /// kill -9 and start again.
    fn crash(&mut self) {
        let mut f = self.ferry.take().expect("running");
        f.kill9();
        self.log.push_str(&f.log());
        self.spawn();
    }

    /// Every log of this job so far, for failure messages.
    fn logs(&self) -> String {
        format!(
            "{}{}",
            self.log,
            self.ferry.as_ref().map(|f| f.log()).unwrap_or_default()
        )
    }
}

/// Wait until every target's data equals the sources' together; panic with the seed otherwise.
fn wait_exact(
    seed: u64,
    what: &str,
    sources: &[&RedisServer],
    targets: &[&RedisServer],
    job: &Job,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut src: Vec<Client> = sources.iter().map(|s| s.client()).collect();
        let want = data_items_of(&mut src);
        let mut bad = None;
        for (i, t) in targets.iter().enumerate() {
            let got = data_items(&mut t.client());
            if got != want {
                let diff: Vec<String> = want
                    .iter()
                    .filter(|w| !got.contains(w))
                    .map(|w| {
                        format!(
                            "missing/different {:?} db{}",
                            String::from_utf8_lossy(&w.1),
                            w.0
                        )
                    })
                    .chain(got.iter().filter(|g| !want.contains(g)).map(|g| {
                        format!(
                            "extra/different {:?} db{}",
                            String::from_utf8_lossy(&g.1),
                            g.0
                        )
                    }))
                    .take(10)
                    .collect();
                let mut shown = String::new();
                for w in want.iter().filter(|w| !got.contains(w)).take(3) {
                    let (db, key) = (w.0, w.1.clone());
                    let src_v = sources
                        .iter()
                        .map(|s| show(&mut s.client(), db, &key))
                        .find(|v| !v.starts_with("none"))
                        .unwrap_or_default();
                    let tgt_v = show(&mut t.client(), db, &key);
                    shown.push_str(&format!(
                        "\n  {:?} db{db}: source {src_v} | target {tgt_v}",
                        String::from_utf8_lossy(&key)
                    ));
                }
                for g in got.iter().filter(|g| !want.contains(g)).take(3) {
                    let tgt_v = show(&mut t.client(), g.0, &g.1);
                    shown.push_str(&format!(
                        "\n  extra {:?} db{}: target {tgt_v}",
                        String::from_utf8_lossy(&g.1),
                        g.0
                    ));
                }
                bad = Some(format!(
                    "target {i}: {} keys vs {}; {diff:?}{shown}",
                    got.len(),
                    want.len()
                ));
                break;
            }
        }
        match bad {
            None => return,
            Some(b) if Instant::now() > deadline => panic!(
                "SOAK FAILURE seed={seed} ({what}): {b}\nreplay: FERRY_SOAK_SEEDS={seed} cargo test --test integration soak::\nferry logs:\n{}",
                job.logs()
            ),
            Some(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A key's type, value (short) and expiry, for failure messages.
fn show(c: &mut Client, db: u32, key: &[u8]) -> String {
    c.ok(&["SELECT", &db.to_string()]);
    let ty = c.ok(&[&b"TYPE"[..], key]).as_string();
    let v = match ty.as_str() {
        "string" => c.ok(&[&b"GET"[..], key]).as_string(),
        "hash" => format!("{:?}", c.ok(&[&b"HGETALL"[..], key])),
        "list" => format!("{:?}", c.ok(&[&b"LRANGE"[..], key, b"0", b"-1"])),
        "set" => format!("{:?}", c.ok(&[&b"SMEMBERS"[..], key])),
        _ => String::new(),
    };
    let ttl = c.ok(&[&b"PEXPIRETIME"[..], key]).as_string();
    let mut v = format!("{ty} {v} exp={ttl}");
    v.truncate(300);
    v
}

/// One fault, chosen by the seed.
fn fault(
    rng: &mut StdRng,
    job: &mut Job,
    masters: &[&RedisServer],
    source_proxies: &[&FaultProxy],
    target_proxies: &[&FaultProxy],
    log: &mut Vec<String>,
) {
    let pick = rng.gen_range(0..9);
    match pick {
        0 if !target_proxies.is_empty() => {
            let p = target_proxies[rng.gen_range(0..target_proxies.len())];
            p.drop_replies_after_execution();
            log.push("target: replies dropped after execution".into());
        }
        1 if !target_proxies.is_empty() => {
            target_proxies[rng.gen_range(0..target_proxies.len())].cut();
            log.push("target: cut".into());
        }
        2 if !target_proxies.is_empty() => {
            let p = target_proxies[rng.gen_range(0..target_proxies.len())];
            p.stall(true);
            std::thread::sleep(Duration::from_millis(rng.gen_range(50..400)));
            p.stall(false);
            log.push("target: stall".into());
        }
        3 if !source_proxies.is_empty() => {
            source_proxies[rng.gen_range(0..source_proxies.len())].cut();
            log.push("source: cut".into());
        }
        4 => {
            let m = masters[rng.gen_range(0..masters.len())];
            let _ = m.client().try_cmd(&["CLIENT", "KILL", "TYPE", "replica"]);
            log.push("source: replica link killed".into());
        }
        5 => {
            job.restart();
            log.push("ferry: SIGTERM + restart".into());
        }
        6 => {
            job.crash();
            log.push("ferry: kill -9 + restart".into());
        }
        7 if !source_proxies.is_empty() => {
            let p = source_proxies[rng.gen_range(0..source_proxies.len())];
            p.stall(true);
            std::thread::sleep(Duration::from_millis(rng.gen_range(50..400)));
            p.stall(false);
            log.push("source: stall".into());
        }
        _ => log.push("none".into()),
    }
}

fn run_schedule(
    seed: u64,
    job: &mut Job,
    masters: &[&RedisServer],
    source_proxies: &[&FaultProxy],
    target_proxies: &[&FaultProxy],
    flush_one: bool,
) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut log = Vec::new();
    for step in 0..steps() {
        std::thread::sleep(Duration::from_millis(rng.gen_range(100..300)));
        if flush_one && step == steps() / 2 {
            // One shard of several flushes: only its keys leave the target.
            let m = masters[rng.gen_range(0..masters.len())];
            let _ = m.client().try_cmd(&["FLUSHDB"]);
            log.push("source: FLUSHDB on one master".into());
        }
        job.ensure_running(seed);
        fault(
            &mut rng,
            job,
            masters,
            source_proxies,
            target_proxies,
            &mut log,
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    job.ensure_running(seed);
    log
}

fn args(sources: &[String], targets: &[String], state: &TempDir) -> Vec<String> {
    let mut a = vec!["sync".to_string()];
    for s in sources {
        a.extend(["--source".to_string(), s.clone()]);
    }
    for t in targets {
        a.extend(["--target".to_string(), t.clone()]);
    }
    a.extend([
        "--state-dir".to_string(),
        state.path().display().to_string(),
    ]);
    a
}

#[test]
fn soak_one_master_to_one_target() {
    for seed in seeds(&[1, 2]) {
        let master = debug_server();
        let target = debug_server();
        let sp = FaultProxy::start(master.port);
        let tp = FaultProxy::start(target.port);
        let state = TempDir::new("soak-1to1");
        let w = Workload::start(master.port, seed, Via::Master);
        let mut job = Job::start(args(&[sp.url()], &[tp.url()], &state));
        let schedule = run_schedule(seed, &mut job, &[&master], &[&sp], &[&tp], false);
        w.stop();
        eprintln!("soak seed {seed} (1 to 1): {schedule:?}");
        wait_exact(
            seed,
            "one master to one target",
            &[&master],
            &[&target],
            &job,
        );
    }
}

#[test]
fn soak_a_twemproxy_pool_to_one_target() {
    for seed in seeds(&[3, 4]) {
        let shards = [debug_server(), debug_server(), debug_server()];
        let nc = Nutcracker::start(&[
            (shards[0].port, "s1"),
            (shards[1].port, "s2"),
            (shards[2].port, "s3"),
        ]);
        let target = debug_server();
        let tp = FaultProxy::start(target.port);
        let state = TempDir::new("soak-pool");
        let w = Workload::start(nc.port, seed, Via::Nutcracker);
        let src = format!("twemproxy:{}", nc.config_path.display());
        let mut job = Job::start(args(&[src], &[tp.url()], &state));
        let masters: Vec<&RedisServer> = shards.iter().collect();
        let schedule = run_schedule(seed, &mut job, &masters, &[], &[&tp], true);
        w.stop();
        eprintln!("soak seed {seed} (pool to 1): {schedule:?}");
        wait_exact(
            seed,
            "a twemproxy pool to one target",
            &masters,
            &[&target],
            &job,
        );
    }
}

#[test]
fn soak_one_master_to_two_targets() {
    for seed in seeds(&[5, 6]) {
        let master = debug_server();
        let (t1, t2) = (debug_server(), debug_server());
        let (p1, p2) = (FaultProxy::start(t1.port), FaultProxy::start(t2.port));
        let state = TempDir::new("soak-1to2");
        let w = Workload::start(master.port, seed, Via::Master);
        let mut job = Job::start(args(&[master.url()], &[p1.url(), p2.url()], &state));
        let schedule = run_schedule(seed, &mut job, &[&master], &[], &[&p1, &p2], false);
        w.stop();
        eprintln!("soak seed {seed} (1 to 2): {schedule:?}");
        wait_exact(
            seed,
            "one master to two targets",
            &[&master],
            &[&t1, &t2],
            &job,
        );
    }
}

/// Wait until the cluster holds exactly what the sources hold (ferry's own keys aside); panic with the seed.
fn wait_exact_cluster(
    seed: u64,
    sources: &[&RedisServer],
    cluster: &crate::support::cluster::Cluster,
    job: &Job,
) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut src: Vec<Client> = sources.iter().map(|s| s.client()).collect();
        let want = data_items_of(&mut src);
        let got = cluster.data_items();
        if got == want {
            return;
        }
        if Instant::now() > deadline {
            let missing: Vec<String> = want
                .iter()
                .filter(|w| !got.contains(w))
                .take(40)
                .map(|w| {
                    let shard = sources
                        .iter()
                        .position(|s| !show(&mut s.client(), w.0, &w.1).starts_with("none"))
                        .map_or(-1, |i| i as i64);
                    format!(
                        "{:?} slot {} source #{shard}",
                        String::from_utf8_lossy(&w.1),
                        crate::support::cluster::key_slot(&w.1)
                    )
                })
                .collect();
            let extra: Vec<String> = got
                .iter()
                .filter(|g| !want.contains(g))
                .take(5)
                .map(|g| format!("{:?} db{}", String::from_utf8_lossy(&g.1), g.0))
                .collect();
            let mut shown = String::new();
            for w in want.iter().filter(|w| !got.contains(w)).take(3) {
                let src_v = sources
                    .iter()
                    .map(|s| show(&mut s.client(), w.0, &w.1))
                    .find(|v| !v.starts_with("none"))
                    .unwrap_or_default();
                let node = cluster.owner_port(crate::support::cluster::key_slot(&w.1));
                let tgt_v = show(&mut cluster.client(node), w.0, &w.1);
                shown.push_str(&format!(
                    "\n  {:?}: source {src_v} | cluster {tgt_v}",
                    String::from_utf8_lossy(&w.1)
                ));
            }
            panic!(
                "SOAK FAILURE seed={seed} (a pool into a cluster): {} keys vs {}; missing/different {missing:?}; \
                 extra/different {extra:?}{shown}\nreplay: FERRY_SOAK_SEEDS={seed} cargo test --test integration \
                 soak::\nferry logs:\n{}",
                got.len(),
                want.len(),
                job.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn soak_a_twemproxy_pool_into_a_cluster() {
    use crate::support::cluster::Cluster;
    const CLUSTER_ALLOWED: &[&str] = &["slot layout changed", "target connection lost"];
    for seed in seeds(&[7, 8]) {
        let shards = [debug_server(), debug_server(), debug_server()];
        let nc = Nutcracker::start(&[
            (shards[0].port, "s1"),
            (shards[1].port, "s2"),
            (shards[2].port, "s3"),
        ]);
        let cluster = Cluster::start(3, 1, &[]);
        let state = TempDir::new("soak-cluster");
        let w = Workload::start(nc.port, seed, Via::Nutcracker);
        let src = format!("twemproxy:{}", nc.config_path.display());
        let mut job = Job::start_with(args(&[src], &[cluster.url()], &state), CLUSTER_ALLOWED);
        let masters: Vec<&RedisServer> = shards.iter().collect();
        let mut rng = StdRng::seed_from_u64(seed ^ 0xc1u64);
        let mut schedule = Vec::new();
        for step in 0..steps() {
            std::thread::sleep(Duration::from_millis(rng.gen_range(100..300)));
            if step == steps() / 2 {
                let m = masters[rng.gen_range(0..masters.len())];
                let _ = m.client().try_cmd(&["FLUSHDB"]);
                schedule.push("source: FLUSHDB on one master".to_string());
            }
            job.ensure_running(seed);
            match rng.gen_range(0..6) {
                0 | 1 => {
                    // A resharding: a random range of slots to a random master, under the load.
                    let len = rng.gen_range(10..120);
                    let from = rng.gen_range(0..16384 - len);
                    let live = cluster.current_masters();
                    let dest = live[rng.gen_range(0..live.len())].0;
                    cluster.move_slots(from, from + len - 1, dest, Duration::from_millis(2));
                    schedule.push(format!(
                        "target: slots {from}..{} moved to {dest}",
                        from + len - 1
                    ));
                }
                2 => {
                    let live = cluster.current_masters();
                    let m = live[rng.gen_range(0..live.len())].0;
                    let promoted = cluster.failover(m);
                    schedule.push(format!("target: failover of {m} to {promoted}"));
                }
                _ => fault(&mut rng, &mut job, &masters, &[], &[], &mut schedule),
            }
        }
        std::thread::sleep(Duration::from_millis(500));
        job.ensure_running(seed);
        w.stop();
        eprintln!("soak seed {seed} (pool into a cluster): {schedule:?}");
        wait_exact_cluster(seed, &masters, &cluster, &job);
    }
}
