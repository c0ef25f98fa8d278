//! The Redis Cluster fixture (`support::cluster`) against real clusters of redis-server: that it starts a
//! cluster of the asked shape, routes commands like a cluster client (MOVED/ASK), computes slots exactly as
//! the server does, moves slots live without losing or doubling a write, and follows a manual failover and
//! a killed master — and that its comparisons do fail when the data differs.
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::cluster::{key_slot, Cluster, SLOTS};
use crate::support::{data_items, Client, RedisServer, Reply};

/// The first `count` keys `<prefix><n>` (n = 0, 1, …) whose slot is in `from..=to`.
fn keys_in_slots(prefix: &str, from: u16, to: u16, count: usize) -> Vec<String> {
    (0u64..)
        .map(|n| format!("{prefix}{n}"))
        .filter(|k| (from..=to).contains(&key_slot(k.as_bytes())))
        .take(count)
        .collect()
}

/// The master port owning `slot` in a `current_masters` list.
fn owner_in(masters: &[(u16, Vec<(u16, u16)>)], slot: u16) -> u16 {
    masters
        .iter()
        .find(|(_, r)| r.iter().any(|&(a, b)| a <= slot && slot <= b))
        .map(|(p, _)| *p)
        .unwrap_or_else(|| panic!("slot {slot} unowned in {masters:?}"))
}

#[test]
fn cluster_fixture_routes_writes_and_hashes_keys_like_the_server() {
    // CRC-16/XMODEM's check value, below 16384 so it is its own slot.
    assert_eq!(key_slot(b"123456789"), 0x31C3);
    let t0 = Instant::now();
    let cluster = Cluster::start(3, 1, &[]);
    eprintln!("3x1 cluster up in {:?}", t0.elapsed());
    assert_eq!((cluster.masters.len(), cluster.replicas.len()), (3, 3));

    // The masters partition the slots, in the order of `masters`, and the URL names them.
    let masters = cluster.current_masters();
    let ports: Vec<u16> = masters.iter().map(|(p, _)| *p).collect();
    assert_eq!(
        ports,
        cluster.masters.iter().map(|s| s.port).collect::<Vec<_>>()
    );
    let mut owners = vec![0u32; SLOTS as usize];
    for (_, ranges) in &masters {
        for &(a, b) in ranges {
            owners[a as usize..=b as usize]
                .iter_mut()
                .for_each(|n| *n += 1);
        }
    }
    assert!(
        owners.iter().all(|&n| n == 1),
        "slots not partitioned: {masters:?}"
    );
    assert_eq!(cluster.owner_port(0), ports[0]);
    assert_eq!(cluster.owner_port(SLOTS - 1), ports[2]);
    assert_eq!(
        cluster.url(),
        format!(
            "cluster://127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}",
            ports[0], ports[1], ports[2]
        )
    );
    // Each replica follows the master of the same index.
    for (i, r) in cluster.replicas.iter().enumerate() {
        let role = cluster.node_cmd(r.port, &["ROLE"]);
        let role = role.as_array();
        assert_eq!(
            (role[0].as_string(), role[2].as_int()),
            ("slave".to_string(), i64::from(ports[i]))
        );
    }

    // 2000 keys through the cluster, plus keys with hash tags and binary bytes.
    let tricky: Vec<&[u8]> = vec![
        b"{a}b",
        b"{}x",
        b"a{b}{c}",
        b"{",
        b"}",
        b"{a",
        b"a}",
        b"}{a}",
        b"a{{b}}",
        b"{}{b}",
        b"{{}}",
        b"{user1000}.following",
        b"foo{}{bar}",
        b"foo{{bar}}zap",
        b"foo{bar}{zap}",
        b"",
        b"\xff\x00{\x80\xfe}\r\n",
        b"\x00",
        b"{\xff}",
    ];
    let t = Instant::now();
    for i in 0..2000 {
        cluster.ok(&["SET", &format!("key:{i}"), &format!("v{i}")]);
    }
    for k in &tricky {
        cluster.ok(&[&b"SET"[..], k, b"tricky"]);
    }
    eprintln!("2000 SETs through the cluster in {:?}", t.elapsed());
    assert_eq!(
        cluster.redirections().0,
        0,
        "routes were known from the start"
    );

    // key_slot against CLUSTER KEYSLOT, and the hash-tag rule itself.
    for k in &tricky {
        assert_eq!(key_slot(k), cluster.keyslot(k), "slot of {k:?}");
    }
    for i in 0..2000 {
        let k = format!("key:{i}");
        assert_eq!(key_slot(k.as_bytes()), cluster.keyslot(&k), "slot of {k}");
        let tagged = format!("{{tag{i}}}:x");
        assert_eq!(
            key_slot(tagged.as_bytes()),
            cluster.keyslot(&tagged),
            "{tagged}"
        );
    }
    assert_eq!(key_slot(b"{a}b"), key_slot(b"a"));
    assert_eq!(key_slot(b"a{b}{c}"), key_slot(b"b"));
    assert_eq!(key_slot(b"}{a}"), key_slot(b"a"));
    assert_eq!(key_slot(b"a{{b}}"), key_slot(b"{b"));
    assert_ne!(
        key_slot(b"{}x"),
        key_slot(b"x"),
        "an empty tag hashes the whole key"
    );

    // Keys sit where the slot map says, the others redirect, and the three masters share them.
    let mut per_master = [0usize; 3];
    for i in (0..2000).step_by(5) {
        let k = format!("key:{i}");
        let owner = owner_in(&masters, key_slot(k.as_bytes()));
        per_master[ports.iter().position(|&p| p == owner).unwrap()] += 1;
        assert_eq!(cluster.node_cmd(owner, &["EXISTS", &k]), Reply::Int(1));
        let other = *ports.iter().find(|&&p| p != owner).unwrap();
        match cluster.node_cmd(other, &["GET", &k]) {
            Reply::Error(e) => assert!(
                e == format!("MOVED {} 127.0.0.1:{owner}", key_slot(k.as_bytes())),
                "{e}"
            ),
            r => panic!("{other} answered {r:?} for {k} it does not own"),
        }
        assert_eq!(cluster.ok(&["GET", &k]).as_string(), format!("v{i}"));
    }
    assert!(
        per_master.iter().all(|&n| n > 100),
        "uneven: {per_master:?}"
    );
    assert_eq!(cluster.data_key_count(), 2000 + tricky.len());

    // Error replies other than redirections come back; `ok` refuses them.
    assert!(
        matches!(cluster.cmd(&["LPUSH", "key:1", "x"]), Reply::Error(e) if e.starts_with("WRONGTYPE"))
    );
    let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cluster.ok(&["LPUSH", "key:1", "x"]);
    }));
    assert!(refused.is_err(), "ok() accepted an error reply");

    // The cluster's data equals a standalone server's with the same writes — and stops being equal when
    // one value differs.
    let standalone = RedisServer::start(&["--enable-debug-command", "yes"]);
    let mut sc = standalone.client();
    for i in 0..2000 {
        sc.send(&["SET", &format!("key:{i}"), &format!("v{i}")]);
    }
    for k in &tricky {
        sc.send(&[&b"SET"[..], k, b"tricky"]);
    }
    for _ in 0..2000 + tricky.len() {
        assert_eq!(sc.read().unwrap(), Reply::Status("OK".into()));
    }
    let want = data_items(&mut sc);
    assert_eq!(want.len(), 2000 + tricky.len());
    assert!(cluster.data_items() == want, "cluster data differs");
    cluster.ok(&["SET", "key:7", "changed"]);
    assert!(
        cluster.data_items() != want,
        "a changed value went unnoticed"
    );
    eprintln!("routing test done in {:?}", t0.elapsed());
}

#[test]
fn cluster_fixture_moves_slots_while_a_writer_keeps_incrementing() {
    let t0 = Instant::now();
    let cluster = Cluster::start(3, 1, &["--requirepass", "pw"]);
    eprintln!("3x1 cluster with a password up in {:?}", t0.elapsed());
    let (src, dest) = (cluster.masters[0].port, cluster.masters[1].port);
    assert_eq!(
        cluster.url(),
        format!(
            "cluster://:pw@127.0.0.1:{src},127.0.0.1:{dest},127.0.0.1:{}",
            cluster.masters[2].port
        )
    );
    let mut bare = Client::connect(src);
    assert!(matches!(bare.cmd(&["GET", "x"]), Reply::Error(e) if e.starts_with("NOAUTH")));

    // 40 slots of the first master, with 400 payload keys and 60 counters (30 of them created now, the
    // others by their first INCR — during the move: new keys of a migrating slot are ASKed to the target).
    let (from, to) = (1000u16, 1039u16);
    assert_eq!(cluster.owner_port(from), src);
    assert_eq!(cluster.owner_port(to), src);
    let payload = keys_in_slots("pay:", from, to, 400);
    let counters = keys_in_slots("ctr:", from, to, 60);
    for k in &payload {
        cluster.ok(&["SET", k, k]);
    }
    for k in &counters[..30] {
        cluster.ok(&["SET", k, "0"]);
    }
    for i in 0..500 {
        cluster.ok(&["SET", &format!("other:{i}"), "x"]);
    }
    assert_eq!(cluster.data_key_count(), 930);

    let done = AtomicBool::new(false);
    let asks_before = cluster.redirections().1;
    let t = Instant::now();
    let counts = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut n = vec![0i64; counters.len()];
            while !done.load(Ordering::SeqCst) {
                for (i, k) in counters.iter().enumerate() {
                    match cluster.cmd(&["INCR", k]) {
                        Reply::Int(v) => {
                            n[i] += 1;
                            assert_eq!(v, n[i], "INCR {k}: a write lost or doubled");
                        }
                        other => panic!("INCR {k} during the move: {other:?}"),
                    }
                }
            }
            n
        });
        let mover = cluster.move_slots_in_background(from, to, dest, Duration::from_millis(40));
        let moved = mover.join();
        done.store(true, Ordering::SeqCst);
        let counts = writer.join();
        if let Err(e) = moved {
            std::panic::resume_unwind(e);
        }
        counts.unwrap_or_else(|e| std::panic::resume_unwind(e))
    });
    let writes: i64 = counts.iter().sum();
    let asks = cluster.redirections().1 - asks_before;
    eprintln!(
        "moved slots {from}..={to} in {:?} under {writes} INCRs ({asks} ASK redirections)",
        t.elapsed()
    );
    assert!(
        writes >= 2 * counters.len() as i64,
        "too few writes during the move: {writes}"
    );
    assert!(asks > 0, "no write met a slot in migration");
    assert_eq!(
        cluster.asks_refused(),
        0,
        "a target refused an ASKING write"
    );

    cluster.wait_ok();
    let masters = cluster.current_masters();
    for slot in from..=to {
        assert_eq!(owner_in(&masters, slot), dest, "slot {slot}");
        let s = slot.to_string();
        assert_eq!(
            cluster.node_cmd(src, &["CLUSTER", "COUNTKEYSINSLOT", &s]),
            Reply::Int(0)
        );
    }
    assert_eq!(owner_in(&masters, from - 1), src);
    assert_eq!(owner_in(&masters, to + 1), src);
    let on_dest: i64 = (from..=to)
        .map(|slot| {
            cluster
                .node_cmd(dest, &["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()])
                .as_int()
        })
        .sum();
    assert_eq!(on_dest, 460);
    for (k, n) in counters.iter().zip(&counts) {
        assert_eq!(cluster.ok(&["GET", k]).as_int(), *n, "{k}");
    }
    for k in &payload {
        assert_eq!(cluster.ok(&["GET", k]).as_string(), *k);
    }
    assert_eq!(cluster.data_key_count(), 960);

    // And back, synchronously, for five of them.
    cluster.move_slots(from, from + 4, src, Duration::ZERO);
    cluster.wait_ok();
    assert_eq!(cluster.owner_port(from + 4), src);
    assert_eq!(cluster.owner_port(from + 5), dest);
    assert_eq!(cluster.data_key_count(), 960);
    eprintln!("slot-move test done in {:?}", t0.elapsed());
}

#[test]
fn cluster_fixture_fails_over_and_survives_a_killed_master() {
    let t0 = Instant::now();
    let mut cluster = Cluster::start(3, 1, &[]);
    eprintln!("3x1 cluster up in {:?}", t0.elapsed());
    for i in 0..1000 {
        cluster.ok(&["SET", &format!("k:{i}"), &i.to_string()]);
    }
    let (m, r) = (cluster.masters[0].port, cluster.replicas[0].port);
    let slots_m = cluster.current_masters()[0].1.clone();

    let t = Instant::now();
    let promoted = cluster.failover(m);
    eprintln!("manual failover {m} -> {promoted} in {:?}", t.elapsed());
    assert_eq!(promoted, r);
    let masters = cluster.current_masters();
    assert!(
        masters.contains(&(promoted, slots_m.clone())),
        "{masters:?}"
    );
    assert!(!masters.iter().any(|(p, _)| *p == m), "{masters:?}");
    assert_eq!(cluster.data_key_count(), 1000);
    for i in 1000..1300 {
        cluster.ok(&["SET", &format!("k:{i}"), &i.to_string()]);
    }

    // Every write on the replicas before the kill: then a failover loses nothing.
    cluster.wait_replicated();
    let t = Instant::now();
    let new = cluster.kill_master(promoted);
    eprintln!(
        "kill -9 of {promoted}: {new} took over in {:?}",
        t.elapsed()
    );
    assert_eq!(
        new, m,
        "the old master, its replica since the failover, takes over"
    );
    assert_eq!(cluster.live_ports().len(), 5);
    let masters = cluster.current_masters();
    assert!(masters.contains(&(m, slots_m)), "{masters:?}");
    assert!(!cluster.url().contains(&format!(":{promoted}")));
    assert_eq!(cluster.data_key_count(), 1300);
    for i in (0..1300).step_by(13) {
        assert_eq!(cluster.ok(&["GET", &format!("k:{i}")]).as_int(), i);
    }
    cluster.ok(&["SET", "after-kill", "1"]);
    assert_eq!(cluster.data_key_count(), 1301);
    eprintln!("failover test done in {:?}", t0.elapsed());
}
