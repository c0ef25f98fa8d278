//! Issue 9: sharded targets — a real Redis Cluster (`cluster://`) and a twemproxy pool written directly
//! (`twemproxy:` as a target). Every test ends with an exact comparison of the whole data set.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::cluster::Cluster;
use crate::support::ferry_proc::Ferry;
use crate::support::{
    data_items_of, wait_until, Client, DataItem, Nutcracker, NutcrackerOpts, RedisServer, TempDir,
};

/// Poll until the cluster holds exactly what the sources hold (ferry's own keys aside).
fn wait_cluster_equal(sources: &[&RedisServer], cluster: &Cluster, ferry: &Ferry, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut clients: Vec<Client> = sources.iter().map(|s| s.client()).collect();
        let want = data_items_of(&mut clients);
        let got = cluster.data_items();
        if want == got {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "{what}: the cluster differs from the sources after 60 s: {}\nferry log:\n{}",
                diff(&want, &got),
                ferry.log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The first few differences between two sorted item lists.
fn diff(want: &[DataItem], got: &[DataItem]) -> String {
    let w: std::collections::BTreeSet<_> = want.iter().collect();
    let g: std::collections::BTreeSet<_> = got.iter().collect();
    let missing: Vec<_> = w.difference(&g).take(5).collect();
    let extra: Vec<_> = g.difference(&w).take(5).collect();
    format!(
        "{} items wanted, {} found; missing (first 5): {missing:?}; unexpected (first 5): {extra:?}",
        want.len(),
        got.len()
    )
}

/// Keys of many slots and every type, written through `c`.
fn fill(c: &mut Client, tag: &str, n: usize) {
    for i in 0..n {
        c.ok(&["SET", &format!("{tag}:s:{i}"), &format!("v{i}")]);
    }
    for i in 0..20 {
        let k = format!("{tag}:h:{i}");
        c.ok(&["HSET", &k, "a", "1", "b", &i.to_string()]);
        c.ok(&["SADD", &format!("{tag}:set:{i}"), "x", "y", &i.to_string()]);
        c.ok(&["ZADD", &format!("{tag}:z:{i}"), "1", "a", "2.5", "b"]);
        c.ok(&["PEXPIRE", &k, "600000"]);
    }
    // A value larger than --big-value-bytes: built under a temporary key, then renamed.
    let items: Vec<String> = (0..3000).map(|i| format!("item-{i}")).collect();
    let mut args = vec!["RPUSH".to_string(), format!("{tag}:biglist")];
    args.extend(items);
    c.ok(&args);
}

/// Whether nutcracker places `key` on the server `server` is connected to (written through the proxy `p`,
/// then looked for there).
fn placed_on(p: &mut Client, server: &mut Client, key: &str) -> bool {
    p.ok(&["SET", key, "7"]);
    server.cmd(&["EXISTS", key]).as_int() == 1
}

/// A writer of non-idempotent commands on keys of many slots, counting its rounds.
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
                c.ok(&["INCR", &format!("counter:{}", n % 64)]);
                c.ok(&["RPUSH", &format!("list:{}", n % 16), &i]);
                c.ok(&["HINCRBY", &format!("hash:{}", n % 8), "f", "1"]);
                c.ok(&[
                    "MSET",
                    &format!("m:{}", n % 32),
                    &i,
                    &format!("m:{}", (n + 7) % 32),
                    &i,
                ]);
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
        self.handle.take().expect("running").join().expect("load")
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The sum of the load's 64 counters in the cluster.
fn counters_total(cluster: &Cluster) -> u64 {
    (0..64)
        .map(|i| {
            let v = cluster.cmd(&["GET", &format!("counter:{i}")]);
            v.as_string().parse::<u64>().unwrap_or(0)
        })
        .sum()
}

/// Stop the load, wait until the cluster holds exactly what master `m` holds, and check every INCR landed
/// once and the master made one full sync (ferry's first).
fn stop_and_compare(load: Load, m: &RedisServer, cluster: &Cluster, ferry: &Ferry, what: &str) {
    let rounds = load.stop();
    wait_cluster_equal(&[m], cluster, ferry, what);
    assert_eq!(
        counters_total(cluster),
        rounds,
        "{what}: every INCR exactly once"
    );
    assert_eq!(
        info_i64(&mut m.client(), "stats", "sync_full"),
        1,
        "{what}: one full sync: {}",
        ferry.log()
    );
}

fn info_i64(c: &mut Client, section: &str, field: &str) -> i64 {
    c.info_field(section, field)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1)
}

/// The headline job: a twemproxy pool into a Redis Cluster — the full data (a big value built in its own
/// slot), then every change: single-key commands, multi-key ones over several slots (cut per slot), a
/// transaction over several slots, a script, and a FLUSHALL of one shard (only its keys leave the
/// cluster's nodes).
#[test]
fn a_twemproxy_pool_syncs_into_a_cluster_and_every_change_follows() {
    let a = RedisServer::start(&[
        "--enable-debug-command",
        "yes",
        "--repl-backlog-size",
        "64mb",
    ]);
    let b = RedisServer::start(&[
        "--enable-debug-command",
        "yes",
        "--repl-backlog-size",
        "64mb",
    ]);
    let proxy = Nutcracker::start(&[(a.port, "shard-a"), (b.port, "shard-b")]);
    let cluster = Cluster::start(3, 1, &[]);
    let mut p = Client::connect(proxy.port);
    fill(&mut p, "pre", 1500);
    let state = TempDir::new("pool-to-cluster");
    let src = format!("twemproxy:{}", proxy.config_path.display());
    let ferry = Ferry::sync(
        &[src],
        &cluster.url(),
        state.path(),
        &["--big-value-bytes", "4096"],
    );
    wait_cluster_equal(&[&a, &b], &cluster, &ferry, "after the full sync");

    for i in 0..300 {
        p.ok(&["SET", &format!("pre:s:{i}"), "changed"]);
        p.ok(&["INCR", &format!("n:{}", i % 17)]);
        p.ok(&[
            "DEL",
            &format!("pre:s:{}", 300 + i),
            &format!("pre:s:{}", 900 + i),
        ]);
        p.ok(&[
            "MSET",
            &format!("ms:{i}"),
            "1",
            &format!("ms:{}", i + 1000),
            "2",
        ]);
    }
    p.ok(&["RPUSH", "pre:biglist", "tail"]);
    // Straight to one master (nutcracker forwards neither MULTI nor EVAL), on keys nutcracker places there:
    // a transaction over several slots, a script, two keys of one slot.
    let mut am = a.client();
    let mut on_a = (0..200)
        .map(|i| format!("tx:{i}"))
        .filter(|k| placed_on(&mut p, &mut am, k));
    let (k1, k2, k3, k4) = (
        on_a.next().unwrap(),
        on_a.next().unwrap(),
        on_a.next().unwrap(),
        on_a.next().unwrap(),
    );
    am.ok(&["MULTI"]);
    am.cmd(&["SET", &k1, "a"]);
    am.cmd(&["SET", &k2, "b"]);
    am.cmd(&["INCR", &k3]);
    am.ok(&["EXEC"]);
    am.ok(&[
        "EVAL",
        "redis.call('INCRBY', KEYS[1], ARGV[1]) return 1",
        "1",
        &k4,
        "5",
    ]);
    let tag = (0..500)
        .find(|i| {
            placed_on(&mut p, &mut am, &format!("{{t{i}}}src"))
                && placed_on(&mut p, &mut am, &format!("{{t{i}}}dst"))
        })
        .unwrap();
    let (src_list, dst_list) = (format!("{{t{tag}}}src"), format!("{{t{tag}}}dst"));
    am.ok(&["DEL", &src_list, &dst_list]);
    am.ok(&["RPUSH", &src_list, "1", "2", "3"]);
    am.ok(&["RPOPLPUSH", &src_list, &dst_list]);
    wait_cluster_equal(&[&a, &b], &cluster, &ferry, "after streaming");
    // ferry verify reads every key from the master that owns its slot; a changed value is found.
    let pool = format!("twemproxy:{}", proxy.config_path.display());
    let verify = |mode: &str| {
        crate::support::ferry_proc::ferry_command()
            .args(["verify", "--no-progress", "--mode", mode, "--source", &pool])
            .args(["--target", &cluster.url()])
            .output()
            .expect("ferry verify runs")
    };
    let out = verify("full");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    cluster.ok(&["SET", "pre:s:1", "tampered"]);
    let out = verify("full");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("pre:s:1"));
    let out = verify("count");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--mode count cannot"));
    p.ok(&["SET", "pre:s:1", "changed again"]);

    // One shard flushes: its keys leave every node of the cluster, the other shard's stay.
    b.client().ok(&["FLUSHALL"]);
    wait_cluster_equal(&[&a, &b], &cluster, &ferry, "after shard-b's FLUSHALL");
    assert!(
        cluster.data_key_count() > 100,
        "shard-a's keys must stay in the cluster"
    );
}

/// kill -9 of ferry while a load runs: the restart continues with a partial resync from the per-slot
/// checkpoints, and not one INCR, RPUSH or HINCRBY is lost or applied twice.
#[test]
fn a_kill_during_streaming_into_a_cluster_resumes_exactly() {
    let m = RedisServer::start(&[
        "--enable-debug-command",
        "yes",
        "--repl-backlog-size",
        "64mb",
    ]);
    let cluster = Cluster::start(3, 0, &[]);
    let mut mc = m.client();
    fill(&mut mc, "pre", 500);
    let state = TempDir::new("cluster-kill");
    let sources = [m.url()];
    let mut ferry = Ferry::sync(&sources, &cluster.url(), state.path(), &[]);
    wait_cluster_equal(&[&m], &cluster, &ferry, "after the full sync");
    let load = Load::start(m.port);
    let full = info_i64(&mut mc, "stats", "sync_full");
    let partial = info_i64(&mut mc, "stats", "sync_partial_ok");
    for round in 0..2 {
        // Let commands flow, then kill in the middle of them.
        let applied = cluster.cmd(&["GET", "counter:0"]).as_string();
        wait_until("commands to flow", Duration::from_secs(20), || {
            cluster.cmd(&["GET", "counter:0"]).as_string() != applied
        });
        ferry.kill9();
        std::thread::sleep(Duration::from_millis(200 + 300 * round));
        // Restarted under the load: the precheck's backlog estimate may warn.
        ferry = Ferry::sync(&sources, &cluster.url(), state.path(), &[])
            .allowing(&["repl-backlog-size"]);
    }
    let rounds = load.stop();
    wait_cluster_equal(&[&m], &cluster, &ferry, "after two kills");
    assert_eq!(counters_total(&cluster), rounds, "every INCR exactly once");
    assert_eq!(
        info_i64(&mut mc, "stats", "sync_full"),
        full,
        "no full resync after a kill\n{}",
        ferry.log()
    );
    assert!(info_i64(&mut mc, "stats", "sync_partial_ok") >= partial + 2);
}

/// Slots move between masters while the load runs (the way `redis-cli --cluster reshard` moves them), and a
/// replica takes over a master: ferry meets MOVED/ASK, stops its writers, waits for the cluster to settle
/// and continues on the new layout from every slot's checkpoint — without exiting, losing or doubling a
/// write.
#[test]
fn a_resharding_and_a_failover_during_streaming_lose_and_double_nothing() {
    let m = RedisServer::start(&[
        "--enable-debug-command",
        "yes",
        "--repl-backlog-size",
        "64mb",
    ]);
    let cluster = Cluster::start(3, 1, &[]);
    let mut mc = m.client();
    fill(&mut mc, "pre", 500);
    let state = TempDir::new("cluster-reshard");
    let status_port = crate::support::free_port();
    let status_addr = format!("127.0.0.1:{status_port}");
    let ferry = Ferry::sync(
        &[m.url()],
        &cluster.url(),
        state.path(),
        &["--status", &status_addr],
    )
    .allowing(&[
        "slot layout changed",
        "target connection lost",
        "could not hand everything to the target on shutdown",
        "repl-backlog-size",
    ]);
    wait_cluster_equal(&[&m], &cluster, &ferry, "after the full sync");
    let load = Load::start(m.port);
    // Slots 0..=299 (the first master's) move to the second master, slowly, under the load.
    let dest = cluster.masters[1].port;
    cluster.move_slots(0, 299, dest, Duration::from_millis(5));
    let first = cluster.masters[2].port;
    let promoted = cluster.failover(first);
    assert_ne!(promoted, first);
    std::thread::sleep(Duration::from_millis(500));
    stop_and_compare(
        load,
        &m,
        &cluster,
        &ferry,
        "after the resharding and the failover",
    );
    assert!(
        ferry.log().contains("slot layout changed"),
        "{}",
        ferry.log()
    );
    // The status endpoint lived through the restarts, counts them, and lists the nodes as they are now.
    let body = crate::stream::http_get(status_port, "/status").expect("status answers");
    let json: serde_json::Value =
        serde_json::from_str(body.split("\r\n\r\n").nth(1).unwrap_or("")).expect("status JSON");
    assert_eq!(json["job"]["phase"], "running", "{body}");
    assert!(
        json["job"]["layout_restarts"].as_u64().unwrap_or(0) >= 1,
        "{body}"
    );
    let mut listed: Vec<String> = json["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .map(|t| t["address"].as_str().unwrap_or_default().to_string())
        .collect();
    listed.sort();
    let mut masters: Vec<String> = cluster
        .current_masters()
        .iter()
        .map(|(p, _)| format!("redis://127.0.0.1:{p}"))
        .collect();
    masters.sort();
    assert_eq!(listed, masters, "{body}");
}

/// Slots move while the full sync writes, and later a master is killed (its replica takes over) while the
/// stream runs: the full sync starts again on the new layout (values replaced, nothing left over), the
/// stream continues from the slots' checkpoints — the promoted replica may have missed the dead master's
/// last writes, and their checkpoints with them — and the copy ends exact, without ferry exiting.
#[test]
fn a_resharding_during_the_full_sync_and_a_killed_master_end_exact() {
    let m = RedisServer::start(&[
        "--enable-debug-command",
        "yes",
        "--repl-backlog-size",
        "64mb",
    ]);
    let mut cluster = Cluster::start(3, 1, &[]);
    let mut mc = m.client();
    mc.ok(&["DEBUG", "POPULATE", "60000", "bulk", "64"]);
    fill(&mut mc, "pre", 200);
    let state = TempDir::new("cluster-reshard-full");
    let ferry = Ferry::sync(&[m.url()], &cluster.url(), state.path(), &[]).allowing(&[
        "slot layout changed",
        "target connection lost",
        "needs a full resync of this source",
        "repl-backlog-size",
        // The killed master: its connections fail until the job continues on the new layout.
        "target connection failed",
        "could not hand everything to the target on shutdown",
    ]);
    // Move slots as soon as the snapshot is being written.
    wait_until(
        "the snapshot to be written",
        Duration::from_secs(30),
        || cluster.data_key_count() > 1000,
    );
    let dest = cluster.masters[2].port;
    cluster.move_slots(0, 99, dest, Duration::ZERO);
    wait_cluster_equal(
        &[&m],
        &cluster,
        &ferry,
        "after a resharding during the full sync",
    );
    let load = Load::start(m.port);
    wait_until("commands to flow", Duration::from_secs(20), || {
        !cluster.cmd(&["GET", "counter:1"]).as_string().is_empty()
    });
    let victim = cluster.masters[1].port;
    let promoted = cluster.kill_master(victim);
    assert_ne!(promoted, victim);
    wait_until(
        "commands to flow on the new layout",
        Duration::from_secs(60),
        || {
            let a = cluster.cmd(&["GET", "counter:1"]).as_string();
            std::thread::sleep(Duration::from_millis(300));
            cluster.cmd(&["GET", "counter:1"]).as_string() != a
        },
    );
    let rounds = load.stop();
    wait_cluster_equal(&[&m], &cluster, &ferry, "after a killed master");
    assert_eq!(counters_total(&cluster), rounds, "every INCR exactly once");
    assert!(
        ferry.log().contains("slot layout changed"),
        "{}",
        ferry.log()
    );
}

/// A cluster has only db 0: a source holding keys in another db is refused before any write, naming the
/// dbs; `--map-db 1:0` writes them there.
#[test]
fn a_source_db_other_than_0_needs_a_map_into_a_cluster() {
    let m = RedisServer::start(&[
        "--enable-debug-command",
        "yes",
        "--repl-backlog-size",
        "64mb",
    ]);
    let cluster = Cluster::start(3, 0, &[]);
    let mut mc = m.client();
    mc.ok(&["SET", "zero", "0"]);
    mc.ok(&["SELECT", "1"]);
    for i in 0..7 {
        mc.ok(&["SET", &format!("one:{i}"), "1"]);
    }
    // ferry check looks at every master of the cluster, and names the db a cluster cannot hold.
    let check = |extra: &[&str]| {
        crate::support::ferry_proc::ferry_command()
            .args(["check", "--source", &m.url(), "--target", &cluster.url()])
            .args(extra)
            .output()
            .expect("ferry check runs")
    };
    let out = check(&[]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert_eq!(text.matches("cluster master node").count(), 3, "{text}");
    assert!(text.contains("db1: 7 keys"), "{text}");
    let out = check(&["--map-db", "1:0"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    let state = TempDir::new("cluster-db");
    let mut ferry = Ferry::sync(&[m.url()], &cluster.url(), state.path(), &["--once"]);
    let status = ferry.wait(Duration::from_secs(30));
    assert!(!status.success());
    assert!(
        ferry.log().contains("db1: 7 keys") && ferry.log().contains("--map-db"),
        "{}",
        ferry.log()
    );
    assert_eq!(cluster.data_key_count(), 0, "nothing was written");

    let mut ferry = Ferry::sync(
        &[m.url()],
        &cluster.url(),
        state.path(),
        &["--once", "--map-db", "1:0"],
    );
    assert!(
        ferry.wait(Duration::from_secs(60)).success(),
        "{}",
        ferry.log()
    );
    assert_eq!(cluster.data_key_count(), 8);
    assert_eq!(cluster.cmd(&["GET", "one:3"]).as_string(), "1");
}

/// Commands whose keys span slots and that cannot be cut per slot — RENAME, SMOVE, LMOVE, RPOPLPUSH, the
/// *STORE family, SORT … STORE, COPY, BITOP, PFMERGE, LMPOP, also inside a transaction — give the source's
/// result: Redis computes them on the home node with the other operands copied beside it, and ferry writes
/// the changed operands back. `--no-target-checkpoint`, which would lose the per-slot transactions, is
/// refused for a cluster.
#[test]
fn commands_over_several_slots_give_the_sources_result() {
    let m = RedisServer::start(&[
        "--enable-debug-command",
        "yes",
        "--repl-backlog-size",
        "64mb",
    ]);
    let cluster = Cluster::start(3, 0, &[]);
    let state = TempDir::new("cluster-cross");
    let mut refused = Ferry::sync(
        &[m.url()],
        &cluster.url(),
        state.path(),
        &["--no-target-checkpoint"],
    )
    .allowing(&["--no-target-checkpoint"]);
    assert!(!refused.wait(Duration::from_secs(30)).success());
    assert!(refused.log().contains("cannot be used with a cluster"));

    let mut mc = m.client();
    mc.ok(&["SET", "before", "1"]);
    let ferry = Ferry::sync(&[m.url()], &cluster.url(), state.path(), &[]);
    wait_until("streaming", Duration::from_secs(30), || {
        cluster.cmd(&["GET", "before"]).as_string() == "1"
    });
    // Keys spread over many slots (none shares a hash tag).
    mc.ok(&["RPUSH", "la", "1", "2", "3", "4"]);
    mc.ok(&["RPOPLPUSH", "la", "lb"]);
    mc.ok(&["LMOVE", "la", "lc", "LEFT", "RIGHT"]);
    mc.ok(&["SADD", "sa", "x", "y", "z"]);
    mc.ok(&["SADD", "sb", "y", "w"]);
    mc.ok(&["SMOVE", "sa", "sc", "x"]);
    mc.ok(&["SUNIONSTORE", "su", "sa", "sb", "sc"]);
    mc.ok(&["SINTERSTORE", "si", "sa", "sb"]);
    mc.ok(&["ZADD", "za", "1", "a", "2", "b"]);
    mc.ok(&["ZADD", "zb", "5", "b", "7", "c"]);
    mc.ok(&["ZUNIONSTORE", "zu", "2", "za", "zb", "WEIGHTS", "2", "3"]);
    mc.ok(&["SET", "str", "hello", "PX", "600000"]);
    mc.ok(&["RENAME", "str", "renamed"]);
    mc.ok(&["COPY", "renamed", "copied"]);
    mc.ok(&["SET", "ba", "abc"]);
    mc.ok(&["SET", "bb", "xyz1"]);
    mc.ok(&["BITOP", "OR", "bo", "ba", "bb"]);
    mc.ok(&["PFADD", "ha", "1", "2"]);
    mc.ok(&["PFADD", "hb", "2", "3"]);
    mc.ok(&["PFMERGE", "hm", "ha", "hb"]);
    mc.ok(&["RPUSH", "sortme", "3", "1", "2"]);
    mc.ok(&["SORT", "sortme", "STORE", "sorted"]);
    mc.ok(&["LMPOP", "2", "empty-list", "sortme", "RIGHT"]);
    mc.ok(&["MULTI"]);
    mc.cmd(&["INCR", "tx-counter"]);
    mc.cmd(&["RPOPLPUSH", "lb", "ld"]);
    mc.cmd(&["SMOVE", "sb", "sd", "w"]);
    mc.ok(&["EXEC"]);
    mc.ok(&["RENAME", "la", "la2"]);
    mc.ok(&["SET", "after", "1"]);
    wait_cluster_equal(&[&m], &cluster, &ferry, "after commands over several slots");
    assert_eq!(
        cluster.cmd(&["LRANGE", "ld", "0", "-1"]).as_array().len(),
        1
    );
}

/// A twemproxy pool as the target: ferry writes each key to the server nutcracker would choose, for every
/// distribution and with or without a hash tag — every key is then readable through the proxy, and no
/// server holds a key it does not own.
#[test]
fn a_twemproxy_target_places_every_key_where_nutcracker_reads_it() {
    for (dist, hash, tag) in [
        ("ketama", "fnv1a_64", None),
        ("ketama", "murmur", Some("{}")),
        ("modula", "crc32a", None),
        ("modula", "md5", Some("{}")),
    ] {
        let src = RedisServer::start(&[
            "--enable-debug-command",
            "yes",
            "--repl-backlog-size",
            "64mb",
        ]);
        let servers: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start(&[
                    "--enable-debug-command",
                    "yes",
                    "--repl-backlog-size",
                    "64mb",
                ])
            })
            .collect();
        let names = ["t-a", "t-b", "t-c"];
        let pool: Vec<(u16, &str)> = servers.iter().map(|s| s.port).zip(names).collect();
        let proxy = Nutcracker::start_with(
            &pool,
            &NutcrackerOpts {
                hash_tag: tag.map(String::from),
                hash: Some(hash.into()),
                distribution: Some(dist.into()),
                ..Default::default()
            },
        );
        let mut sc = src.client();
        for i in 0..600 {
            sc.ok(&["SET", &format!("k:{i}"), &format!("v{i}")]);
            sc.ok(&["SET", &format!("{{user{}}}:{i}", i % 9), &format!("t{i}")]);
        }
        let state = TempDir::new("tw-target");
        let target = format!("twemproxy:{}", proxy.config_path.display());
        let ferry = Ferry::sync(&[src.url()], &target, state.path(), &[]);
        // Stream too, with a multi-key command over several servers.
        sc.ok(&["MSET", "k:1", "changed", "k:2", "changed", "k:3", "changed"]);
        sc.ok(&["DEL", "k:4", "k:5", "k:6"]);
        let mut through = Client::connect(proxy.port);
        wait_until(
            &format!("every key readable through nutcracker ({dist}/{hash}/{tag:?})"),
            Duration::from_secs(30),
            || {
                let total: i64 = servers.iter().map(|s| s.client().data_dbsize()).sum();
                total == sc.dbsize()
                    && (0..600).all(|i| {
                        let k = format!("k:{i}");
                        through.cmd(&["GET", &k]) == sc.cmd(&["GET", &k])
                    })
            },
        );
        for i in 0..600 {
            let k = format!("{{user{}}}:{i}", i % 9);
            assert_eq!(
                through.cmd(&["GET", &k]).as_string(),
                format!("t{i}"),
                "{k} ({dist}/{hash}/{tag:?})\n{}",
                ferry.log()
            );
        }
    }
}

/// A master that replicates scripts verbatim (6.2 with `lua-replicate-commands no`) sends a script's body
/// once (its first `EVALSHA` goes out as `EVAL`) and then only `EVALSHA`s. Each node of a cluster target
/// that runs one must have the script, though only one node ran the `EVAL` — a script over one slot runs
/// on its node, a script over several slots on the first key's node — and so must a replica promoted by a
/// failover afterwards (a 7.0 replica's script cache is its own), reached after ferry restarted on the new
/// layout.
#[test]
fn an_evalsha_runs_on_nodes_that_never_saw_its_eval() {
    let Some(m) = crate::support::versions::start_version(
        "6.2",
        &[
            "--lua-replicate-commands",
            "no",
            "--repl-backlog-size",
            "64mb",
        ],
    ) else {
        return;
    };
    let cluster = Cluster::start(3, 1, &[]);
    let state = TempDir::new("cluster-evalsha");
    let ferry = Ferry::sync(&[m.url()], &cluster.url(), state.path(), &[])
        .allowing(&["slot layout changed", "target connection lost"]);
    let mut mc = m.client();
    mc.ok(&["SET", "before", "1"]);
    wait_until("the full sync", Duration::from_secs(30), || {
        cluster.cmd(&["GET", "before"]).as_string() == "1"
    });
    // A 6.2 source has no PEXPIRETIME for data_items: the keys the scripts write are compared one by one.
    let keys = |i: usize| [format!("n:{i}"), format!("a:{i}"), format!("l:{i}")];
    let same = |what: &str| {
        let mut mc = m.client();
        let mut last = String::new();
        let mut equal = |last: &mut String| {
            for i in 0..40 {
                for k in keys(i) {
                    let read: &[&str] = if k.starts_with("l:") {
                        &["LRANGE", &k, "0", "-1"]
                    } else {
                        &["GET", &k]
                    };
                    let (want, got) = (mc.cmd(read), cluster.cmd(read));
                    if want != got {
                        *last = format!("{k}: source {want:?}, cluster {got:?}");
                        return false;
                    }
                }
            }
            true
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !equal(&mut last) {
            assert!(
                Instant::now() < deadline,
                "{what}: {last}\nferry log:\n{}",
                ferry.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // One key (runs on its node), and two keys in different slots (runs on the first key's node).
    let one = "return redis.call('INCRBY', KEYS[1], ARGV[1])";
    let two =
        "redis.call('INCRBY', KEYS[1], ARGV[1]); return redis.call('RPUSH', KEYS[2], ARGV[1])";
    let (sha1, sha2) = (
        ferry::target::scripts::sha(one.as_bytes()),
        ferry::target::scripts::sha(two.as_bytes()),
    );
    // Only EVALSHAs run on the source (never SCRIPT LOAD, which would reach every node): the master
    // replicates the first one of each script as EVAL, the others as they are.
    mc.ok(&["EVAL", one, "1", "warm", "0"]);
    mc.ok(&["EVAL", two, "2", "warm", "warm2", "0"]);
    let evalsha_everywhere = |mc: &mut Client, round: usize| {
        for i in 0..40 {
            let [n, a, l] = keys(i);
            let r = round.to_string();
            mc.ok(&["EVALSHA", &sha1, "1", &n, &r]);
            mc.ok(&["EVALSHA", &sha2, "2", &a, &l, &r]);
        }
    };
    evalsha_everywhere(&mut mc, 2);
    same("after EVALSHAs on every node");

    let first = cluster.masters[0].port;
    let promoted = cluster.failover(first);
    assert_ne!(promoted, first);
    evalsha_everywhere(&mut mc, 3);
    same("after EVALSHAs past a failover");
    let exists = cluster.node_cmd(promoted, &["SCRIPT", "EXISTS", &sha1]);
    assert_eq!(
        exists.as_array()[0].as_int(),
        1,
        "ferry loaded the script on the promoted replica"
    );
}

/// A master added to the cluster target (`redis-cli --cluster add-node`, which copies the libraries of
/// its time) and given slots later never saw the `FUNCTION LOAD`s of the stream in between (they went to
/// the masters that held slots): when ferry continues on the new layout, the new master gets them, and
/// later `FUNCTION` commands reach it like the others.
#[test]
fn a_master_added_to_the_cluster_gets_the_function_libraries() {
    let m = RedisServer::start(&[
        "--enable-debug-command",
        "yes",
        "--repl-backlog-size",
        "64mb",
    ]);
    let mut cluster = Cluster::start(3, 0, &[]);
    let state = TempDir::new("cluster-functions");
    let ferry = Ferry::sync(&[m.url()], &cluster.url(), state.path(), &[])
        .allowing(&["slot layout changed", "target connection lost"]);
    let mut mc = m.client();
    fill(&mut mc, "f", 300);
    let lib = |name: &str| {
        format!(
            "#!lua name={name}\nredis.register_function('{name}_incr', function(keys, args) return \
             redis.call('INCR', keys[1]) end)"
        )
    };
    mc.ok(&["FUNCTION", "LOAD", &lib("one")]);
    mc.ok(&["FUNCTION", "LOAD", &lib("two")]);
    mc.ok(&["FCALL", "one_incr", "1", "counter"]);
    wait_cluster_equal(&[&m], &cluster, &ferry, "after the functions");
    for (port, _) in cluster.current_masters() {
        assert_eq!(libraries(&cluster, port), ["one", "two"], "master {port}");
    }

    let new = cluster.add_master();
    assert_eq!(
        libraries(&cluster, new),
        ["one", "two"],
        "add-node copies them"
    );
    mc.ok(&["FUNCTION", "LOAD", &lib("three")]);
    mc.ok(&["SET", "before-the-move", "1"]);
    wait_cluster_equal(&[&m], &cluster, &ferry, "before the move");
    assert_eq!(
        libraries(&cluster, new),
        ["one", "two"],
        "a node without slots gets no FUNCTION LOAD"
    );
    cluster.move_slots(0, 99, new, Duration::from_millis(0));
    // A key of a moved slot, written through a function after the move.
    let key = (0..)
        .map(|i| format!("moved:{i}"))
        .find(|k| cluster.keyslot(k) < 100)
        .unwrap();
    mc.ok(&["FCALL", "two_incr", "1", &key]);
    mc.ok(&["SET", "after", "1"]);
    wait_cluster_equal(&[&m], &cluster, &ferry, "after a master joined");
    wait_until(
        "the new master to hold the libraries",
        Duration::from_secs(30),
        || libraries(&cluster, new) == ["one", "three", "two"],
    );
    // Later FUNCTION commands reach every master, the new one included.
    mc.ok(&["FUNCTION", "DELETE", "one"]);
    mc.ok(&["SET", "after-delete", "1"]);
    wait_cluster_equal(&[&m], &cluster, &ferry, "after FUNCTION DELETE");
    for (port, _) in cluster.current_masters() {
        wait_until(
            &format!("master {port} to drop library one"),
            Duration::from_secs(30),
            || libraries(&cluster, port) == ["three", "two"],
        );
    }
    assert!(
        ferry.log().contains("lacked function libraries"),
        "{}",
        ferry.log()
    );
}

/// The names of the function libraries a node holds, sorted.
fn libraries(cluster: &Cluster, port: u16) -> Vec<String> {
    let mut names: Vec<String> = cluster
        .node_cmd(port, &["FUNCTION", "LIST"])
        .as_array()
        .iter()
        .map(|l| l.as_array()[1].as_string())
        .collect();
    names.sort();
    names
}

/// Two sources share the cluster; one flushes, writes again into many slots, and ferry is killed soon after:
/// most of a node's slot checkpoints (idle ones are brought forward a few hundred at a time) are still
/// before the flush, so the restart replays from there. The flush must not run a second time — its sweep
/// would remove the keys written after it, whose slots' checkpoints say they are applied — and the other
/// source's keys stay.
#[test]
fn a_kill_after_a_flush_of_one_source_replays_neither_the_flush_nor_loses_what_followed() {
    let opts = [
        "--enable-debug-command",
        "yes",
        "--repl-backlog-size",
        "64mb",
    ];
    let (a, b) = (RedisServer::start(&opts), RedisServer::start(&opts));
    let cluster = Cluster::start(3, 0, &[]);
    let (mut ac, mut bc) = (a.client(), b.client());
    fill(&mut ac, "a", 200);
    fill(&mut bc, "b", 200);
    let state = TempDir::new("cluster-flush-kill");
    let sources = [a.url(), b.url()];
    let mut ferry = Ferry::sync(&sources, &cluster.url(), state.path(), &[]);
    wait_cluster_equal(&[&a, &b], &cluster, &ferry, "after the full sync");
    ac.ok(&["FLUSHDB"]);
    for _ in 0..5 {
        for i in 0..200 {
            ac.ok(&["HINCRBY", &format!("after:{i}"), "f", "3"]);
        }
    }
    wait_until(
        "the writes after the flush",
        Duration::from_secs(20),
        || cluster.cmd(&["HGET", "after:199", "f"]).as_string() == "15",
    );
    ferry.kill9();
    let ferry = Ferry::sync(&sources, &cluster.url(), state.path(), &[]);
    ac.ok(&["SET", "after-restart", "1"]);
    wait_cluster_equal(&[&a, &b], &cluster, &ferry, "after the restart");
    assert_eq!(
        cluster.cmd(&["HGET", "after:0", "f"]).as_string(),
        "15",
        "{}",
        ferry.log()
    );
}

/// Hash tags whose keys fall in slots `lo..=hi` (the first `n` of `t0`, `t1`, …).
fn tags_in_slots(lo: u16, hi: u16, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("t{i}"))
        .filter(|t| {
            let s = crate::support::cluster::key_slot(t.as_bytes());
            lo <= s && s <= hi
        })
        .take(n)
        .collect()
}

/// The figures of ferry's "writes of this run that followed the cluster target's redirections" lines,
/// summed: (ask, moved, retries).
fn redirections_logged(log: &str) -> (u64, u64, u64) {
    let field = |line: &str, name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    log.lines()
        .filter(|l| l.contains("followed the cluster target's redirections"))
        .fold((0, 0, 0), |(a, m, r), l| {
            (
                a + field(l, "ask"),
                m + field(l, "moved"),
                r + field(l, "retries"),
            )
        })
}

/// Slots move after ferry read the cluster's layout and before the snapshot is written (the source holds
/// its snapshot back for 3 s: a diskless sync's delay): 300 whole slots go to another master (ferry's
/// writes of them meet `MOVED`, a big value's chunks and final rename too), and one slot is left half way
/// (importing on one master, migrating on its owner, which holds none of its keys: every write of it meets
/// `ASK`; a big value's final rename meets `TRYAGAIN` and is retried until the test ends the migration). The full sync follows the
/// redirections in place and runs once — the keys of the half-moved slot are on the importing node —; the
/// job continues on the new layout once the cluster has settled (a partial resync), and the copy is exact
/// with every INCR once.
#[test]
fn slots_moved_under_the_full_sync_are_followed_without_a_second_full_sync() {
    let m = RedisServer::start(&[
        "--enable-debug-command",
        "yes",
        "--repl-backlog-size",
        "64mb",
        "--repl-diskless-sync",
        "yes",
        "--repl-diskless-sync-delay",
        "3",
    ]);
    let cluster = Cluster::start(3, 0, &[]);
    let mut mc = m.client();
    mc.ok(&["DEBUG", "POPULATE", "20000", "bulk", "32"]);
    fill(&mut mc, "pre", 300);
    // A slot of the second master, to be left half way to the first: plain keys and a list.
    let (importer, owner) = (cluster.masters[0].port, cluster.masters[1].port);
    let tag = &tags_in_slots(5461, 10922, 1)[0];
    let slot = crate::support::cluster::key_slot(tag.as_bytes());
    assert_eq!(cluster.owner_port(slot), owner);
    for i in 0..50 {
        mc.ok(&["SET", &format!("{{{tag}}}:k:{i}"), &i.to_string()]);
    }
    let mut list = vec!["RPUSH".to_string(), format!("{{{tag}}}:list")];
    list.extend((0..200).map(|i| format!("item-{i}")));
    mc.ok(&list);
    // And a big value there: its chunks follow ASK to the importing node, and its final RENAME, a two-key
    // command the nodes answer TRYAGAIN while the slot's keys are split, is written again until the
    // migration is done.
    let mut held_big = vec!["RPUSH".to_string(), format!("{{{tag}}}:big")];
    held_big.extend((0..3000).map(|i| format!("item-{i}")));
    mc.ok(&held_big);
    // A big value (above --big-value-bytes: built in chunks under a temporary key of its slot, then
    // renamed) in a slot that moves whole: every chunk and the rename follow MOVED.
    let moved_tag = &tags_in_slots(0, 299, 1)[0];
    let mut big = vec!["RPUSH".to_string(), format!("{{{moved_tag}}}:big")];
    big.extend((0..3000).map(|i| format!("item-{i}")));
    mc.ok(&big);
    let state = TempDir::new("cluster-moved-full");
    let status_port = crate::support::free_port();
    let ferry = Ferry::sync(
        &[m.url()],
        &cluster.url(),
        state.path(),
        &[
            "--status",
            &format!("127.0.0.1:{status_port}"),
            "--big-value-bytes",
            "4096",
        ],
    )
    .allowing(&["slot layout changed", "repl-backlog-size"]);
    wait_until(
        "ferry to wait for the snapshot",
        Duration::from_secs(30),
        || {
            m.client()
                .cmd(&["INFO", "replication"])
                .as_string()
                .contains("state=wait_bgsave")
        },
    );
    // ferry has the layout; now it changes.
    cluster.move_slots(0, 299, cluster.masters[2].port, Duration::ZERO);
    let src = cluster.begin_slot_move(slot, importer);
    assert_eq!(src, owner);
    // The big value's rename waits for the migration (status counts the transaction's retries); the
    // other keys of the slot went to the importing node (with ASKING), none to its owner.
    let retries = || -> u64 {
        let body = crate::stream::http_get(status_port, "/status").unwrap_or_default();
        let json: serde_json::Value =
            serde_json::from_str(body.split("\r\n\r\n").nth(1).unwrap_or("")).unwrap_or_default();
        json["targets"]
            .as_array()
            .map(|ts| {
                ts.iter()
                    .map(|t| t["redirects"]["retries"].as_u64().unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0)
    };
    wait_until(
        "the big value's rename to be retried",
        Duration::from_secs(60),
        || retries() > 0,
    );
    // Nothing of the slot was written to the migrating owner (every write of it followed ASK; the
    // rename waits, and the writes behind it on its connection with it).
    let held = cluster
        .client(owner)
        .cmd(&["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()])
        .as_int();
    assert_eq!(held, 0, "the migrating owner holds none of the slot's keys");
    cluster.finish_slot_move(slot, src, importer);
    wait_until(
        "the snapshot to be applied",
        Duration::from_secs(60),
        || ferry.log().contains("snapshot applied; streaming"),
    );
    let mut imp = cluster.client(importer);
    assert_eq!(
        imp.cmd(&["LLEN", &format!("{{{tag}}}:big")]).as_int(),
        3000,
        "the big value renamed on the slot's new owner once the migration was done"
    );
    assert_eq!(imp.cmd(&["LLEN", &format!("{{{tag}}}:list")]).as_int(), 200);
    assert_eq!(imp.cmd(&["EXISTS", &format!("{{{tag}}}:k:7")]).as_int(), 1);
    let new_owner = cluster.masters[2].port;
    assert_eq!(
        cluster
            .client(new_owner)
            .cmd(&["LLEN", &format!("{{{moved_tag}}}:big")])
            .as_int(),
        3000,
        "the big value was built and renamed on the slot's new master"
    );
    let load = Load::start(m.port);
    wait_until(
        "the job to continue on the new layout",
        Duration::from_secs(60),
        || {
            ferry
                .log()
                .contains("their writes followed the redirections")
        },
    );
    stop_and_compare(
        load,
        &m,
        &cluster,
        &ferry,
        "after slots moved under the full sync",
    );
    let (ask, moved, retries) = redirections_logged(&ferry.log());
    eprintln!("followed under the full sync: ask={ask} moved={moved} retries={retries}");
    assert!(
        ask > 0 && moved > 0,
        "ask={ask} moved={moved}\n{}",
        ferry.log()
    );
}

/// A slot migrates under the stream the way `redis-cli --cluster reshard` moves it (half its keys, a pause,
/// the rest), slot after slot, while the load writes keys of those slots: the stream's transactions
/// follow `ASK` (to the importing node, with `ASKING`), `TRYAGAIN` (written again) and `MOVED` in place,
/// without stopping; once the cluster has settled the job continues on the new layout with a partial
/// resync. Exact, every INCR once, one full sync.
#[test]
fn slots_migrated_under_the_stream_are_followed_in_place() {
    let m = RedisServer::start(&[
        "--enable-debug-command",
        "yes",
        "--repl-backlog-size",
        "64mb",
    ]);
    let cluster = Cluster::start(3, 0, &[]);
    let mut mc = m.client();
    fill(&mut mc, "pre", 300);
    let tags = tags_in_slots(0, 39, 8);
    for t in &tags {
        for i in 0..200 {
            mc.ok(&["SET", &format!("{{{t}}}:k:{i}"), "x"]);
        }
    }
    let state = TempDir::new("cluster-moved-stream");
    let ferry = Ferry::sync(&[m.url()], &cluster.url(), state.path(), &[])
        .allowing(&["slot layout changed", "repl-backlog-size"]);
    wait_cluster_equal(&[&m], &cluster, &ferry, "after the full sync");
    let partial = info_i64(&mut mc, "stats", "sync_partial_ok");
    // Writers of the moving slots' keys: an INCR per tag and round, and new keys (which meet ASK).
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, tags, port) = (stop.clone(), tags.clone(), m.port);
        std::thread::spawn(move || {
            let mut c = Client::connect(port);
            let mut rounds = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for t in &tags {
                    c.ok(&["INCR", &format!("{{{t}}}:counter")]);
                    c.ok(&["SET", &format!("{{{t}}}:new:{rounds}"), "y"]);
                    c.ok(&["RPUSH", &format!("{{{t}}}:list"), &rounds.to_string()]);
                }
                rounds += 1;
            }
            rounds
        })
    };
    let dest = cluster.masters[1].port;
    cluster.move_slots(0, 39, dest, Duration::from_millis(30));
    wait_until(
        "the job to continue on the new layout",
        Duration::from_secs(60),
        || {
            ferry
                .log()
                .contains("their writes followed the redirections")
        },
    );
    stop.store(true, Ordering::Relaxed);
    let rounds = writer.join().expect("writer");
    wait_cluster_equal(
        &[&m],
        &cluster,
        &ferry,
        "after slots moved under the stream",
    );
    for t in &tags {
        let v = cluster
            .cmd(&["GET", &format!("{{{t}}}:counter")])
            .as_string();
        assert_eq!(v, rounds.to_string(), "every INCR of {t} exactly once");
    }
    assert_eq!(
        info_i64(&mut mc, "stats", "sync_full"),
        1,
        "{}",
        ferry.log()
    );
    assert!(
        info_i64(&mut mc, "stats", "sync_partial_ok") > partial,
        "the new layout continues with a partial resync"
    );
    let (ask, moved, retries) = redirections_logged(&ferry.log());
    eprintln!(
        "followed under the stream: ask={ask} moved={moved} retries={retries} ({rounds} rounds)"
    );
    assert!(
        moved > 0 && ask + retries > 0,
        "ask={ask} moved={moved} retries={retries}\n{}",
        ferry.log()
    );
}
