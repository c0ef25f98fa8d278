//! Issue 9: a Redis Cluster as the source (`--source cluster://…`): one source per master, key ownership by
//! hash slot on a shared target, a failover followed with a partial resync, and a resharding reported and
//! repaired. Every test ends with an exact comparison of the whole data set.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::cluster::{key_slot, Cluster};
use crate::support::ferry_proc::Ferry;
use crate::support::{data_items, wait_until, Client, DataItem, RedisServer, TempDir};

fn target_server() -> RedisServer {
    RedisServer::start(&["--enable-debug-command", "yes"])
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

/// Poll until the target holds exactly what the cluster holds (ferry's own keys aside).
fn wait_target_equal(cluster: &Cluster, target: &RedisServer, ferry: &Ferry, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut t = target.client();
    loop {
        let want = cluster.data_items();
        let got = data_items(&mut t);
        if want == got {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "{what}: the target differs from the cluster after 90 s: {}\nferry log:\n{}",
                diff(&want, &got),
                ferry.log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Keys of every type over many slots (and so every master), written through the cluster.
fn fill(cluster: &Cluster, tag: &str, n: usize) {
    for i in 0..n {
        cluster.ok(&["SET", &format!("{tag}:s:{i}"), &format!("v{i}")]);
    }
    for i in 0..30 {
        let h = format!("{tag}:h:{i}");
        cluster.ok(&["HSET", &h, "a", "1", "b", &i.to_string()]);
        cluster.ok(&["PEXPIRE", &h, "600000"]);
        cluster.ok(&["SADD", &format!("{tag}:set:{i}"), "x", "y", &i.to_string()]);
        cluster.ok(&["ZADD", &format!("{tag}:z:{i}"), "1", "a", "2.5", "b"]);
        cluster.ok(&["RPUSH", &format!("{tag}:l:{i}"), "1", "2", "3"]);
        cluster.ok(&["XADD", &format!("{tag}:x:{i}"), "*", "f", &i.to_string()]);
        cluster.ok(&["PFADD", &format!("{tag}:hll:{i}"), "a", "b", "c"]);
        cluster.ok(&["SET", &format!("{{{tag}{i}}}:a"), "tagged"]);
        cluster.ok(&["INCRBY", &format!("{{{tag}{i}}}:b"), &i.to_string()]);
    }
    // A value larger than --big-value-bytes: built under a temporary key, then renamed.
    let mut args = vec!["RPUSH".to_string(), format!("{tag}:biglist")];
    args.extend((0..3000).map(|i| format!("item-{i}")));
    cluster.ok(&args);
}

/// How many of `keys` each current master holds (by slot): every master must have some, or the test
/// would not show what it claims.
fn assert_spread(cluster: &Cluster, keys: impl Iterator<Item = String>) {
    let masters = cluster.current_masters();
    let mut per = vec![0usize; masters.len()];
    for k in keys {
        let s = key_slot(k.as_bytes());
        let i = masters
            .iter()
            .position(|(_, r)| r.iter().any(|&(a, b)| a <= s && s <= b))
            .expect("every slot is served");
        per[i] += 1;
    }
    assert!(per.iter().all(|n| *n > 0), "keys per master: {per:?}");
}

/// A writer of non-idempotent commands through the cluster, over keys of every master, counting rounds.
struct Load<'a> {
    cluster: &'a Cluster,
    stop: AtomicBool,
    rounds: AtomicU64,
}

impl<'a> Load<'a> {
    fn new(cluster: &'a Cluster) -> Load<'a> {
        Load {
            cluster,
            stop: AtomicBool::new(false),
            rounds: AtomicU64::new(0),
        }
    }

    fn run(&self) {
        let mut n = 0u64;
        while !self.stop.load(Ordering::Relaxed) {
            let i = n.to_string();
            self.cluster.ok(&["INCR", &format!("counter:{}", n % 64)]);
            self.cluster.ok(&["RPUSH", &format!("list:{}", n % 16), &i]);
            self.cluster
                .ok(&["HINCRBY", &format!("hash:{}", n % 8), "f", "1"]);
            n += 1;
            self.rounds.store(n, Ordering::Relaxed);
        }
    }

    /// Wait until it made `more` rounds from now.
    fn wait_rounds(&self, more: u64) {
        let want = self.rounds.load(Ordering::Relaxed) + more;
        wait_until("the load to run", Duration::from_secs(30), || {
            self.rounds.load(Ordering::Relaxed) >= want
        });
    }

    fn counters_total(&self, c: &mut Client) -> u64 {
        (0..64)
            .map(|i| {
                c.cmd(&["GET", &format!("counter:{i}")])
                    .as_string()
                    .parse::<u64>()
                    .unwrap_or(0)
            })
            .sum()
    }
}

/// Sets its flag when dropped (also while a panic unwinds).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn info_i64(c: &mut Client, section: &str, field: &str) -> i64 {
    c.info_field(section, field)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1)
}

/// The replicas a master lists in `INFO replication` (`slaveN:ip=…,port=…,state=…`), as (port, state).
fn replicas_listed(c: &mut Client) -> Vec<(u16, String)> {
    let text = c.ok(&["INFO", "replication"]).as_string();
    text.lines()
        .filter(|l| l.starts_with("slave") && l.contains("ip="))
        .filter_map(|l| {
            let fields = l.split_once(':')?.1;
            let get = |k: &str| {
                fields
                    .split(',')
                    .find_map(|f| f.strip_prefix(k)?.strip_prefix('='))
            };
            Some((get("port")?.parse().ok()?, get("state")?.to_string()))
        })
        .collect()
}

/// The headline: every master of a cluster (3 × 1 replica) into one standalone server — the full data of
/// every type over many slots, then every change made through the cluster — exact both times, with no
/// warning logged.
#[test]
fn a_cluster_source_syncs_every_master_into_a_standalone_target() {
    let cluster = Cluster::start(3, 1, &["--repl-backlog-size", "64mb"]);
    let target = target_server();
    fill(&cluster, "pre", 1500);
    assert_spread(&cluster, (0..1500).map(|i| format!("pre:s:{i}")));
    let state = TempDir::new("cluster-source");
    let ferry = Ferry::sync(
        &[cluster.url()],
        &target.url(),
        state.path(),
        // With a heartbeat: each master writes its own key, which verify below must not count as data.
        &["--big-value-bytes", "4096", "--heartbeat", "1"],
    );
    wait_target_equal(&cluster, &target, &ferry, "after the full sync");
    assert!(
        ferry.log().matches("syncing every master").count() == 1
            && ferry.log().matches("snapshot applied; streaming").count() == 3,
        "one source per master:\n{}",
        ferry.log()
    );

    for i in 0..400 {
        cluster.ok(&["SET", &format!("pre:s:{i}"), "changed"]);
        cluster.ok(&["DEL", &format!("pre:s:{}", 400 + i)]);
        cluster.ok(&["INCR", &format!("n:{}", i % 37)]);
        cluster.ok(&["HINCRBY", &format!("pre:h:{}", i % 30), "a", "2"]);
        cluster.ok(&["EXPIRE", &format!("pre:s:{}", 1000 + i), "3000"]);
    }
    cluster.ok(&["RPUSH", "pre:biglist", "tail"]);
    cluster.ok(&["SREM", "pre:set:3", "x"]);
    cluster.ok(&["ZINCRBY", "pre:z:4", "3", "a"]);
    cluster.ok(&["XADD", "pre:x:5", "*", "g", "2"]);
    cluster.ok(&["MSET", "{mt}:a", "1", "{mt}:b", "2"]);
    cluster.ok(&["RENAME", "{pre7}:a", "{pre7}:renamed"]);
    cluster.ok(&["SET", "last", "1"]);
    wait_target_equal(&cluster, &target, &ferry, "after streaming");

    // ferry verify with the cluster as the source: every master's keys against the one target; a changed
    // value on the target is found and named.
    let verify = || {
        crate::support::ferry_proc::ferry_command()
            .args(["verify", "--no-progress", "--source", &cluster.url()])
            .args(["--target", &target.url()])
            .output()
            .expect("ferry verify runs")
    };
    let out = verify();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    target.client().ok(&["SET", "last", "tampered"]);
    let out = verify();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("last"));
}

/// A manual failover of a source master (`CLUSTER FAILOVER` on its replica) while a load writes to every
/// master: ferry's link finds the promoted replica and continues there with a partial resync — the new
/// master does no full sync for anybody, lists ferry (it announces port 0) as an online replica, and every
/// INCR reaches the target exactly once.
#[test]
fn a_source_failover_mid_stream_continues_with_a_partial_resync() {
    let cluster = Cluster::start(3, 1, &["--repl-backlog-size", "64mb"]);
    let target = target_server();
    fill(&cluster, "pre", 300);
    let state = TempDir::new("cluster-source-failover");
    // With a heartbeat: each master gets its own heartbeat key in one of its slots, and after the failover
    // the heartbeat follows the link to the promoted master (the log guard fails the test on a refused
    // heartbeat write: MOVED on another master's slot, or from the old master).
    let ferry = Ferry::sync(
        &[cluster.url()],
        &target.url(),
        state.path(),
        &["--heartbeat", "1"],
    )
    .allowing(&[
        // The old master drops (or is dropped by) ferry's link when its role moves.
        "link down",
        // The link may ask before the cluster's view of the promotion has settled.
        "cannot establish the replication link",
        // The precheck's backlog estimate under the load.
        "repl-backlog-size",
    ]);
    wait_target_equal(&cluster, &target, &ferry, "after the full sync");
    let old = cluster.masters[0].port;
    // A counter of the load that lives on the master that fails over.
    let (_, old_ranges) = cluster.current_masters()[0].clone();
    let on_old = (0..64)
        .map(|i| format!("counter:{i}"))
        .find(|k| {
            let s = key_slot(k.as_bytes());
            old_ranges.iter().any(|&(a, b)| a <= s && s <= b)
        })
        .expect("a counter on the first master");
    let load = Load::new(&cluster);
    let mut promoted = 0;
    let mut t = target.client();
    std::thread::scope(|s| {
        s.spawn(|| load.run());
        // A failing assertion below must stop the load, or the scope would wait for it forever.
        let _stop = StopOnDrop(&load.stop);
        // ferry streams from the old master before it fails over.
        wait_until(
            "the old master's writes on the target",
            Duration::from_secs(30),
            || {
                t.cmd(&["GET", &on_old])
                    .as_string()
                    .parse::<u64>()
                    .unwrap_or(0)
                    >= 5
            },
        );
        load.wait_rounds(100);
        promoted = cluster.failover(old);
        // ferry follows while the load goes on.
        let mut p = cluster.client(promoted);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !replicas_listed(&mut p)
            .iter()
            .any(|(port, state)| *port == 0 && state == "online")
        {
            assert!(
                Instant::now() < deadline,
                "ferry did not become a replica of the promoted master {promoted}: {:?}\n{}",
                replicas_listed(&mut p),
                ferry.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        load.wait_rounds(200);
        load.stop.store(true, Ordering::Relaxed);
    });
    assert_ne!(promoted, old);
    let mut p = cluster.client(promoted);
    assert_eq!(
        info_i64(&mut p, "stats", "sync_full"),
        0,
        "the promoted master made no full sync (neither for ferry nor for the old master)\n{}",
        ferry.log()
    );
    assert!(info_i64(&mut p, "stats", "sync_partial_ok") >= 1);
    assert!(
        !replicas_listed(&mut cluster.client(old))
            .iter()
            .any(|(port, _)| *port == 0),
        "ferry left the old master"
    );
    let log = ferry.log();
    assert!(
        log.contains("continuing the replication there") && log.contains("partial resync accepted"),
        "{log}"
    );
    assert_eq!(
        log.matches("full sync: receiving the snapshot").count(),
        3,
        "one full sync per master, none after the failover:\n{log}"
    );
    wait_target_equal(&cluster, &target, &ferry, "after the failover");
    // The promoted master's heartbeat key is fresh: ferry writes it there now.
    let first = heartbeat_of(&mut p);
    wait_until(
        "a newer heartbeat on the promoted master",
        Duration::from_secs(10),
        || heartbeat_of(&mut p) > first,
    );
    assert_eq!(
        target
            .client()
            .cmd(&["KEYS", "ferry:heartbeat*"])
            .as_array()
            .len(),
        0,
        "heartbeats are consumed, never copied"
    );
    let rounds = load.rounds.load(Ordering::Relaxed);
    assert_eq!(
        load.counters_total(&mut target.client()),
        rounds,
        "every INCR exactly once"
    );

    // A restart after the failover: the promoted master has no checkpoint of its own (ferry knew it by the
    // old master's address), but it continues the old master's replication history (its master_replid2):
    // it resumes from the old master's checkpoints with a partial resync, like the other masters.
    let mut ferry = ferry;
    assert!(ferry.terminate(Duration::from_secs(30)).success());
    let ferry = Ferry::sync(&[cluster.url()], &target.url(), state.path(), &[]);
    for i in 0..300 {
        cluster.ok(&["INCR", &format!("counter:{}", i % 64)]);
    }
    cluster.ok(&["SET", "after-restart", "1"]);
    wait_target_equal(&cluster, &target, &ferry, "after a restart");
    let log = ferry.log();
    assert_eq!(
        log.matches("resuming with a partial resync").count(),
        3,
        "{log}"
    );
    assert!(
        log.contains("took over from a master of the last run"),
        "{log}"
    );
    assert_eq!(
        info_i64(&mut cluster.client(promoted), "stats", "sync_full"),
        0,
        "the promoted master made no full sync after the restart either\n{log}"
    );
    assert_eq!(
        log.matches("full sync: receiving the snapshot").count(),
        0,
        "{log}"
    );
    assert_eq!(
        load.counters_total(&mut target.client()),
        rounds + 300,
        "every INCR exactly once"
    );
}

/// A master of the source killed (-9) while the load runs: its replica takes over, ferry's link finds it
/// and goes on (a partial resync when the replica had everything ferry had, else a full resync of that
/// master's slots); the copy ends exact.
#[test]
fn a_killed_source_master_is_followed_to_its_replica() {
    let mut cluster = Cluster::start(3, 1, &["--repl-backlog-size", "64mb"]);
    let target = target_server();
    fill(&cluster, "pre", 300);
    let state = TempDir::new("cluster-source-kill");
    let ferry = Ferry::sync(&[cluster.url()], &target.url(), state.path(), &[]).allowing(&[
        "link down",
        "cannot establish the replication link",
        "repl-backlog-size",
        // When the replica had not received the last writes ferry had, its slots are copied again.
        "the master started a full resync",
    ]);
    wait_target_equal(&cluster, &target, &ferry, "after the full sync");
    let old = cluster.masters[1].port;
    // Writes before the kill reach the replica first, so the count below is exact.
    for i in 0..200 {
        cluster.ok(&["INCR", &format!("counter:{}", i % 64)]);
    }
    let counters = |t: &RedisServer| -> u64 {
        let mut c = t.client();
        (0..64)
            .map(|i| {
                c.cmd(&["GET", &format!("counter:{i}")])
                    .as_string()
                    .parse::<u64>()
                    .unwrap_or(0)
            })
            .sum()
    };
    // ferry streamed them from every master, the one about to die included.
    wait_until("the INCRs on the target", Duration::from_secs(30), || {
        counters(&target) == 200
    });
    cluster.wait_replicated();
    let promoted = cluster.kill_master(old);
    for i in 0..200 {
        cluster.ok(&["INCR", &format!("counter:{}", i % 64)]);
    }
    cluster.ok(&["SET", "after-kill", "1"]);
    wait_target_equal(&cluster, &target, &ferry, "after the kill");
    let mut p = cluster.client(promoted);
    assert!(
        replicas_listed(&mut p)
            .iter()
            .any(|(port, state)| *port == 0 && state == "online"),
        "ferry replicates from the promoted master {promoted}\n{}",
        ferry.log()
    );
    assert_eq!(counters(&target), 400, "every INCR exactly once");
}

/// A FLUSHALL on one master of the source removes exactly that master's keys (the keys of its slots) from
/// the shared target — not the other masters' — and what it writes right after the flush stays.
#[test]
fn a_flushall_on_one_source_master_removes_only_its_slots_keys() {
    let cluster = Cluster::start(3, 0, &["--repl-backlog-size", "64mb"]);
    let target = target_server();
    fill(&cluster, "pre", 900);
    let state = TempDir::new("cluster-source-flush");
    let ferry = Ferry::sync(&[cluster.url()], &target.url(), state.path(), &[]);
    wait_target_equal(&cluster, &target, &ferry, "after the full sync");
    let (flushed, ranges) = cluster.current_masters()[1].clone();
    let in_flushed = |k: &str| {
        let s = key_slot(k.as_bytes());
        ranges.iter().any(|&(a, b)| a <= s && s <= b)
    };
    let before = data_items(&mut target.client()).len();
    // Keys no source holds, written into the target by hand: ownership is by slot, so the one in the
    // flushed master's slots goes and the other stays (by "no other source holds it", both would go).
    let hand: Vec<String> = (0..200).map(|i| format!("hand:{i}")).collect();
    let hand_in = hand.iter().find(|k| in_flushed(k)).unwrap().clone();
    let hand_out = hand.iter().find(|k| !in_flushed(k)).unwrap().clone();
    let mut t = target.client();
    t.ok(&["SET", &hand_in, "x"]);
    t.ok(&["SET", &hand_out, "x"]);
    cluster.node_cmd(flushed, &["FLUSHALL"]);
    // Written right after the flush, in the flushed master's slots: must survive the removal.
    let after: Vec<String> = (0..400)
        .map(|i| format!("after:{i}"))
        .filter(|k| in_flushed(k))
        .collect();
    assert!(!after.is_empty());
    for k in &after {
        cluster.ok(&["SET", k, "new"]);
    }
    wait_until(
        "the flushed master's keys to leave the target",
        Duration::from_secs(30),
        || t.cmd(&["EXISTS", &hand_in]).as_int() == 0,
    );
    assert_eq!(
        t.cmd(&["EXISTS", &hand_out]).as_int(),
        1,
        "a key in another master's slots is not the flushed master's\n{}",
        ferry.log()
    );
    t.ok(&["DEL", &hand_out]);
    wait_target_equal(&cluster, &target, &ferry, "after one master's FLUSHALL");
    let keys = data_items(&mut target.client());
    let left_flushed = keys
        .iter()
        .filter(|(_, k, _, _)| in_flushed(&String::from_utf8_lossy(k)))
        .count();
    assert_eq!(
        left_flushed,
        after.len(),
        "only the keys written after the flush"
    );
    assert!(
        keys.len() > before / 2,
        "the other masters' keys stay: {} of {before}",
        keys.len()
    );
    assert!(
        ferry.log().contains("removed this source's keys"),
        "{}",
        ferry.log()
    );
}

/// The slots ferry's WARNs say moved to the master on `dest` (`slots=0-37,40` fields), sorted.
fn reported_slots(log: &str, dest: u16) -> Vec<u16> {
    let mut out = Vec::new();
    for l in log.lines().filter(|l| {
        l.contains("slots moved between masters") && l.contains(&format!("to=127.0.0.1:{dest}"))
    }) {
        let Some(list) = l.split_whitespace().find_map(|w| w.strip_prefix("slots=")) else {
            continue;
        };
        for part in list.split(',') {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            if let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>()) {
                out.extend(a..=b);
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The master offset ferry's in-target checkpoint of source `port` says the target holds (-1: none yet).
fn applied_on_target(t: &mut Client, port: u16) -> i64 {
    let v = t
        .cmd(&["GET", &format!("ferry:checkpoint:127.0.0.1_{port}")])
        .as_string();
    v.split(':')
        .nth(1)
        .and_then(|o| o.parse().ok())
        .unwrap_or(-1)
}

/// Move the slots `from..=to` from the master on `src` to the one on `dest` as `redis-cli --cluster
/// reshard` does (importing, migrating, `MIGRATE`, `SETSLOT NODE` everywhere), with the old master's `DEL`
/// of the moved keys coming only once ferry has applied the new master's `RESTORE`s: the order in which
/// ferry's two independent streams race when the old master's stream lags (`MIGRATE … COPY`, then `DEL`).
fn move_slots_with_lagging_delete(
    cluster: &Cluster,
    target: &RedisServer,
    from: u16,
    to: u16,
    src: u16,
    dest: u16,
) {
    let id = |p: u16| cluster.node_cmd(p, &["CLUSTER", "MYID"]).as_string();
    let (src_id, dest_id) = (id(src), id(dest));
    let mut t = target.client();
    let mut dc = cluster.client(dest);
    for slot in from..=to {
        let s = slot.to_string();
        cluster.node_cmd(dest, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &src_id]);
        cluster.node_cmd(src, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &dest_id]);
        let keys: Vec<String> = cluster
            .node_cmd(src, &["CLUSTER", "GETKEYSINSLOT", &s, "1000"])
            .as_array()
            .iter()
            .map(|k| k.as_string())
            .collect();
        if !keys.is_empty() {
            let d = dest.to_string();
            let mut args = vec![
                "MIGRATE",
                "127.0.0.1",
                &d,
                "",
                "0",
                "5000",
                "COPY",
                "REPLACE",
                "KEYS",
            ];
            args.extend(keys.iter().map(String::as_str));
            assert_eq!(cluster.node_cmd(src, &args).as_string(), "OK");
            let offset = info_i64(&mut dc, "replication", "master_repl_offset");
            wait_until(
                "ferry to apply the new master's RESTOREs",
                Duration::from_secs(30),
                || applied_on_target(&mut t, dest) >= offset,
            );
            let mut del = vec!["DEL"];
            del.extend(keys.iter().map(String::as_str));
            cluster.node_cmd(src, &del);
        }
        for p in [dest, src] {
            cluster.node_cmd(p, &["CLUSTER", "SETSLOT", &s, "NODE", &dest_id]);
        }
        for (p, _) in cluster.current_masters() {
            if p != src && p != dest {
                cluster.node_cmd(p, &["CLUSTER", "SETSLOT", &s, "NODE", &dest_id]);
            }
        }
    }
}

/// Slots move from one master of the source to another while ferry streams. The keys leave the old master
/// as a `DEL` in its stream and arrive on the new one as a `RESTORE` in the other stream, and ferry applies
/// the two independently: here the `DEL` comes last (it would delete the keys from the target). ferry says
/// so (a WARN naming the slots and both masters), copies the receiving master again once the old one's
/// stream is applied past the move, and the copy ends exact. A second range moves the way the fixture (and
/// `redis-cli --cluster reshard`) moves slots, whatever order the streams then take.
#[test]
fn a_resharding_of_the_source_is_reported_and_repaired() {
    let cluster = Cluster::start(3, 0, &["--repl-backlog-size", "64mb"]);
    let target = target_server();
    fill(&cluster, "pre", 600);
    // Many keys in the slots that move.
    let moving: Vec<String> = (0..40_000)
        .map(|i| format!("mv:{i}"))
        .filter(|k| key_slot(k.as_bytes()) < 100)
        .collect();
    assert!(moving.len() > 100);
    for k in &moving {
        cluster.ok(&["SET", k, "1"]);
    }
    let state = TempDir::new("cluster-source-reshard");
    let ferry = Ferry::sync(&[cluster.url()], &target.url(), state.path(), &[]).allowing(&[
        "slots moved between masters",
        "link down",
        "the master started a full resync",
    ]);
    wait_target_equal(&cluster, &target, &ferry, "after the full sync");
    let (src, dest) = (cluster.masters[0].port, cluster.masters[1].port);
    move_slots_with_lagging_delete(&cluster, &target, 0, 49, src, dest);
    cluster.move_slots(50, 99, dest, Duration::from_millis(2));
    for k in moving.iter().take(50) {
        cluster.ok(&["INCR", k]);
    }
    wait_until(
        "ferry to report every moved slot",
        Duration::from_secs(30),
        || reported_slots(&ferry.log(), dest) == (0..100).collect::<Vec<u16>>(),
    );
    wait_target_equal(&cluster, &target, &ferry, "after the resharding");
    assert!(
        ferry.log().contains("copying the receiving master again"),
        "{}",
        ferry.log()
    );
}

/// A cluster into a cluster: every master of the source is synced into every master of the target by
/// slot, streaming follows, and one source master's FLUSHALL removes its keys from whichever target node
/// holds them, and only those.
#[test]
fn a_cluster_source_syncs_into_a_cluster_target() {
    let source = Cluster::start(3, 0, &["--repl-backlog-size", "64mb"]);
    let target = Cluster::start(3, 0, &[]);
    fill(&source, "pre", 600);
    let state = TempDir::new("cluster-to-cluster");
    let ferry = Ferry::sync(
        &[source.url()],
        &target.url(),
        state.path(),
        &["--big-value-bytes", "4096"],
    );
    let wait_equal = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let (want, got) = (source.data_items(), target.data_items());
            if want == got {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: the target cluster differs from the source cluster after 90 s: {}\nferry log:\n{}",
                diff(&want, &got),
                ferry.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_equal("after the full sync");
    for i in 0..200 {
        source.ok(&["SET", &format!("pre:s:{i}"), "changed"]);
        source.ok(&["INCR", &format!("n:{}", i % 23)]);
        source.ok(&["RPUSH", "pre:biglist", &i.to_string()]);
    }
    wait_equal("after streaming");
    let flushed = source.current_masters()[2].0;
    source.node_cmd(flushed, &["FLUSHALL"]);
    source.ok(&["SET", "after-flush", "1"]);
    wait_equal("after one source master's FLUSHALL");
    assert!(
        target.data_key_count() > 300,
        "the other masters' keys stay"
    );
}

/// The value (unix ms) of the one heartbeat key ferry writes into this master's slots.
fn heartbeat_of(p: &mut Client) -> i64 {
    let reply = p.ok(&["KEYS", "ferry:heartbeat*"]);
    let keys = reply.as_array();
    assert_eq!(
        keys.len(),
        1,
        "one heartbeat key in the master's slots: {keys:?}"
    );
    p.ok(&["GET", &keys[0].as_string()])
        .as_string()
        .parse()
        .unwrap_or(0)
}

/// A master added to the source cluster (`redis-cli --cluster add-node`) and given slots while ferry
/// streams: ferry stops the job cleanly and starts again with every current master — the new one copied
/// with a full sync, the others continuing with a partial resync — and the keys written into the moved
/// slots afterwards reach the target.
#[test]
fn a_master_added_to_the_source_cluster_is_synced_without_a_restart_by_hand() {
    let mut cluster = Cluster::start(3, 0, &["--repl-backlog-size", "64mb"]);
    let target = target_server();
    fill(&cluster, "pre", 300);
    let state = TempDir::new("cluster-source-grows");
    let ferry = Ferry::sync(&[cluster.url()], &target.url(), state.path(), &[]).allowing(&[
        "not part of the cluster when ferry started",
        "slot layout changed",
        "slots moved between masters",
        "repl-backlog-size",
        // The new master has no checkpoint: it is copied with a full sync.
        "no checkpoint of this master, but the job continues",
    ]);
    wait_target_equal(&cluster, &target, &ferry, "after the full sync");
    let new = cluster.add_master();
    cluster.move_slots(0, 99, new, Duration::from_millis(0));
    // Keys of the moved slots, written on the new master after the move, and others elsewhere.
    let moved: Vec<String> = (0..5000)
        .map(|i| format!("after:{i}"))
        .filter(|k| key_slot(k.as_bytes()) < 100)
        .take(30)
        .collect();
    assert!(moved.len() == 30);
    for k in &moved {
        cluster.ok(&["SET", k, "on the new master"]);
    }
    for i in 0..100 {
        cluster.ok(&["INCR", &format!("n:{}", i % 7)]);
    }
    wait_target_equal(&cluster, &target, &ferry, "after a master joined");
    let log = ferry.log();
    assert!(
        log.contains("continue with the cluster source's new master"),
        "{log}"
    );
    assert_eq!(
        log.matches("resuming with a partial resync").count(),
        3,
        "the masters of the start continue where they were:\n{log}"
    );
    assert_eq!(
        log.matches("full sync: receiving the snapshot").count(),
        4,
        "one full sync per master, the new one included:\n{log}"
    );
}
