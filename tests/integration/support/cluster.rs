//! A real Redis Cluster for integration tests: `masters × (1 + replicas_per_master)` redis-servers on free
//! loopback ports (each with its own free cluster-bus port: `port + 10000` would pass 65535 for ports from
//! the ephemeral range), joined by `redis-cli --cluster create`, killed by PID on drop like every
//! [`RedisServer`].
//!
//! The fixture talks to the nodes with the support [`Client`] only (never ferry's code), follows `MOVED` and
//! `ASK` itself, moves slots live the way `redis-cli --cluster reshard` does, and fails over (manually, or by
//! `kill -9` of a master). Every wait polls with a deadline and panics with the nodes' logs.
//!
//! Roles change: `masters` and `replicas` are the roles at start (masters in slot order, replicas in the
//! order of their masters); after [`Cluster::failover`] or [`Cluster::kill_master`] ask
//! [`Cluster::current_masters`].
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{
    data_items, data_key_count, free_port, redis_server_bin, Client, DataItem, RedisServer, Reply,
    TempDir,
};

/// Number of hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// How long a wait for the cluster to settle may take before it fails (a loaded two-core machine).
const SETTLE: Duration = Duration::from_secs(30);

/// Keys per `MIGRATE` (redis-cli's `--cluster-pipeline` default is 10; more is faster and as exact).
const MIGRATE_BATCH: usize = 100;

/// The hash slot of `key` as Redis Cluster computes it (`keyHashSlot` in Redis' `src/cluster.c`): CRC16
/// (XMODEM: polynomial 0x1021, initial value 0, no reflection) of the key, or of its hash tag — the bytes
/// between the first `{` and the first `}` after it, when there is at least one byte between them — modulo
/// 16384.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16_xmodem(hashed) & (SLOTS - 1)
}

/// CRC-16/XMODEM, bit by bit (a test helper: speed does not matter, plainness does).
fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// One line of `CLUSTER NODES`.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeLine {
    pub id: String,
    pub port: u16,
    pub flags: Vec<String>,
    /// The master's id for a replica, `None` for a master.
    pub master_id: Option<String>,
    /// Owned slot ranges (inclusive).
    pub slots: Vec<(u16, u16)>,
    /// Migrating/importing entries as printed (`[slot->-id]`, `[slot-<-id]`; only on the `myself` line).
    pub open_slots: Vec<String>,
}

impl NodeLine {
    fn has_flag(&self, f: &str) -> bool {
        self.flags.iter().any(|x| x == f)
    }
    pub fn is_myself(&self) -> bool {
        self.has_flag("myself")
    }
    pub fn is_master(&self) -> bool {
        self.has_flag("master")
    }
    pub fn is_replica(&self) -> bool {
        self.has_flag("slave")
    }
    /// Flagged `fail`, `fail?`, `handshake` or `noaddr` in this view.
    pub fn is_unhealthy(&self) -> bool {
        ["fail", "fail?", "handshake", "noaddr"]
            .iter()
            .any(|f| self.has_flag(f))
    }
}

/// Parse `CLUSTER NODES` (`<id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong> <epoch> <link>
/// <slot>...`).
pub fn parse_cluster_nodes(text: &str) -> Vec<NodeLine> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert!(f.len() >= 8, "short CLUSTER NODES line: {line:?}");
        let addr = f[1].split('@').next().unwrap();
        let port = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in CLUSTER NODES line: {line:?}"));
        let mut slots = Vec::new();
        let mut open_slots = Vec::new();
        for s in &f[8..] {
            if s.starts_with('[') {
                open_slots.push(s.to_string());
            } else if let Some((a, b)) = s.split_once('-') {
                slots.push((a.parse().unwrap(), b.parse().unwrap()));
            } else {
                let a = s.parse().unwrap();
                slots.push((a, a));
            }
        }
        out.push(NodeLine {
            id: f[0].to_string(),
            port,
            flags: f[2].split(',').map(str::to_string).collect(),
            master_id: (f[3] != "-").then(|| f[3].to_string()),
            slots,
            open_slots,
        });
    }
    out
}

fn covers(ranges: &[(u16, u16)], slot: u16) -> bool {
    ranges.iter().any(|&(a, b)| a <= slot && slot <= b)
}

/// A field of an `INFO` (or `CLUSTER INFO`) text.
fn info_field(text: &str, field: &str) -> Option<String> {
    text.lines().find_map(|l| {
        l.strip_prefix(field)
            .and_then(|r| r.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    })
}

/// The port of a `MOVED <slot> <host:port>` / `ASK <slot> <host:port>` error (after the word), and its slot.
fn parse_redirect(rest: &str) -> (u16, u16) {
    let mut it = rest.split_whitespace();
    let slot = it.next().and_then(|s| s.parse().ok());
    let port = it.next().and_then(|a| a.rsplit(':').next()?.parse().ok());
    match (slot, port) {
        (Some(s), Some(p)) => (s, p),
        _ => panic!("cannot parse a redirection: {rest:?}"),
    }
}

/// `redis-cli` beside the redis-server in use, else the one on PATH.
fn redis_cli_bin() -> PathBuf {
    let server = redis_server_bin();
    if let Some(dir) = server.parent().filter(|d| !d.as_os_str().is_empty()) {
        let cli = dir.join("redis-cli");
        if cli.is_file() {
            return cli;
        }
    }
    "redis-cli".into()
}

fn shown<A: AsRef<[u8]>>(args: &[A]) -> Vec<String> {
    args.iter()
        .map(|a| String::from_utf8_lossy(a.as_ref()).into_owned())
        .collect()
}

/// What every handle on the cluster shares (a background slot move holds it too).
struct Shared {
    password: Option<String>,
    /// Every node's client port and log file, in start order (nodes added later at the end).
    nodes: Mutex<Vec<(u16, PathBuf)>>,
    /// Ports of nodes killed on purpose.
    dead: Mutex<HashSet<u16>>,
    /// Idle connections per port (authenticated).
    pool: Mutex<HashMap<u16, Vec<Client>>>,
    /// Routing hint: slot → port (0 = unknown), corrected by every `MOVED`.
    route: Mutex<Vec<u16>>,
    moved: AtomicUsize,
    asked: AtomicUsize,
    /// Commands sent with `ASKING` that got `MOVED` back (the target neither imported nor owned the slot).
    ask_refused: AtomicUsize,
    next: AtomicUsize,
}

impl Shared {
    fn is_dead(&self, port: u16) -> bool {
        self.dead.lock().unwrap().contains(&port)
    }

    fn live_ports(&self) -> Vec<u16> {
        let dead = self.dead.lock().unwrap();
        self.nodes
            .lock()
            .unwrap()
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| !dead.contains(p))
            .collect()
    }

    fn any_port(&self) -> u16 {
        let live = self.live_ports();
        assert!(!live.is_empty(), "no live node left");
        live[self.next.fetch_add(1, Ordering::Relaxed) % live.len()]
    }

    /// The last lines of every node's log, for failure messages.
    fn logs(&self) -> String {
        let mut out = String::new();
        let nodes = self.nodes.lock().unwrap().clone();
        for (port, path) in &nodes {
            let log = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            let state = if self.is_dead(*port) { " (killed)" } else { "" };
            out.push_str(&format!(
                "--- node 127.0.0.1:{port}{state}, last {} lines of {}:\n{}\n",
                tail.len(),
                path.display(),
                tail.join("\n")
            ));
        }
        out
    }

    /// A new authenticated connection.
    fn connect(&self, port: u16) -> std::io::Result<Client> {
        let mut c = Client::connect_quiet(port)?;
        if let Some(pw) = &self.password {
            match c.try_cmd(&["AUTH", pw.as_str()])? {
                Reply::Status(s) if s == "OK" => {}
                other => panic!("AUTH on 127.0.0.1:{port} failed: {other:?}"),
            }
        }
        Ok(c)
    }

    fn take(&self, port: u16) -> std::io::Result<Client> {
        let idle = self
            .pool
            .lock()
            .unwrap()
            .get_mut(&port)
            .and_then(|v| v.pop());
        match idle {
            Some(c) => Ok(c),
            None => self.connect(port),
        }
    }

    fn give(&self, port: u16, c: Client) {
        if !self.is_dead(port) {
            self.pool.lock().unwrap().entry(port).or_default().push(c);
        }
    }

    /// One command on one node; `Err` on a connection failure (for polling loops).
    fn try_node<A: AsRef<[u8]>>(&self, port: u16, args: &[A]) -> Result<Reply, String> {
        let mut c = self
            .take(port)
            .map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))?;
        let r = c
            .try_cmd(args)
            .map_err(|e| format!("{:?} on 127.0.0.1:{port}: {e}", shown(args)))?;
        self.give(port, c);
        Ok(r)
    }

    /// One command on one node; an error reply is returned, a connection failure panics.
    fn node<A: AsRef<[u8]>>(&self, port: u16, args: &[A]) -> Reply {
        self.try_node(port, args)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }

    /// One command on one node that must not fail.
    fn node_ok<A: AsRef<[u8]>>(&self, port: u16, args: &[A]) -> Reply {
        let r = self.node(port, args);
        if let Reply::Error(e) = &r {
            panic!(
                "{:?} on 127.0.0.1:{port} failed: {e}\n{}",
                shown(args),
                self.logs()
            );
        }
        r
    }

    fn try_view(&self, port: u16) -> Result<Vec<NodeLine>, String> {
        match self.try_node(port, &["CLUSTER", "NODES"])? {
            Reply::Bulk(Some(b)) => Ok(parse_cluster_nodes(&String::from_utf8_lossy(&b))),
            other => Err(format!("CLUSTER NODES on {port}: {other:?}")),
        }
    }

    fn view(&self, port: u16) -> Vec<NodeLine> {
        self.try_view(port)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }

    fn myself(&self, port: u16) -> NodeLine {
        self.view(port)
            .into_iter()
            .find(NodeLine::is_myself)
            .unwrap_or_else(|| panic!("no myself line in CLUSTER NODES of {port}"))
    }

    fn current_masters(&self) -> Vec<(u16, Vec<(u16, u16)>)> {
        let mut out: Vec<(u16, Vec<(u16, u16)>)> = self
            .live_ports()
            .into_iter()
            .map(|p| self.myself(p))
            .filter(NodeLine::is_master)
            .map(|n| (n.port, n.slots))
            .collect();
        out.sort_by_key(|(p, r)| (r.first().map_or(SLOTS, |r| r.0), *p));
        out
    }

    fn owner_port(&self, slot: u16) -> u16 {
        assert!(slot < SLOTS, "slot {slot} out of range");
        self.current_masters()
            .into_iter()
            .find(|(_, r)| covers(r, slot))
            .map(|(p, _)| p)
            .unwrap_or_else(|| panic!("no live master owns slot {slot}\n{}", self.logs()))
    }

    fn set_route(&self, slot: u16, port: u16) {
        self.route.lock().unwrap()[slot as usize] = port;
    }

    fn refresh_routes(&self) {
        let masters = self.current_masters();
        let mut route = self.route.lock().unwrap();
        for (port, ranges) in masters {
            for (a, b) in ranges {
                for s in a..=b {
                    route[s as usize] = port;
                }
            }
        }
    }

    /// One command, sent where the key's slot lives (`args[1]` is taken as the key; keyless commands go to
    /// any node), following `MOVED` (remembered) and `ASK` (`ASKING` first, not remembered); `TRYAGAIN` and
    /// `CLUSTERDOWN` are retried (the command did not run) until a deadline. Other errors are returned. A
    /// connection lost after the command was sent panics: its outcome is unknown.
    fn cmd<A: AsRef<[u8]>>(&self, args: &[A]) -> Reply {
        assert!(!args.is_empty(), "empty command");
        let deadline = Instant::now() + Duration::from_secs(20);
        let slot = (args.len() > 1).then(|| key_slot(args[1].as_ref()));
        let hint = || {
            slot.map(|s| self.route.lock().unwrap()[s as usize])
                .filter(|&p| p != 0 && !self.is_dead(p))
                .unwrap_or_else(|| self.any_port())
        };
        let mut port = hint();
        let mut asking = false;
        let mut hops = 0u32;
        loop {
            if Instant::now() > deadline {
                panic!(
                    "{:?}: still redirected after 20 s ({hops} hops, last to {port})\n{}",
                    shown(args),
                    self.logs()
                );
            }
            let mut c = match self.take(port) {
                Ok(c) => c,
                Err(_) => {
                    // The node is gone (killed): forget it as a route and ask another.
                    if let Some(s) = slot {
                        self.set_route(s, 0);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                    port = self.any_port();
                    asking = false;
                    continue;
                }
            };
            if asking {
                c.send(&["ASKING"]);
            }
            c.send(args);
            if asking {
                match c.read() {
                    Ok(Reply::Status(s)) if s == "OK" => {}
                    other => panic!("ASKING on {port}: {other:?}\n{}", self.logs()),
                }
            }
            let r = c.read().unwrap_or_else(|e| {
                panic!(
                    "{:?} on 127.0.0.1:{port}: connection lost after sending ({e})\n{}",
                    shown(args),
                    self.logs()
                )
            });
            self.give(port, c);
            let e = match &r {
                Reply::Error(e) => e,
                _ => return r,
            };
            hops += 1;
            if hops > 3 {
                // Ownership moving between nodes (SETSLOT not yet everywhere): let it propagate.
                std::thread::sleep(Duration::from_millis(10));
            }
            if let Some(rest) = e.strip_prefix("MOVED ") {
                let (s, to) = parse_redirect(rest);
                self.moved.fetch_add(1, Ordering::Relaxed);
                if asking {
                    self.ask_refused.fetch_add(1, Ordering::Relaxed);
                }
                self.set_route(s, to);
                port = to;
                asking = false;
            } else if let Some(rest) = e.strip_prefix("ASK ") {
                self.asked.fetch_add(1, Ordering::Relaxed);
                port = parse_redirect(rest).1;
                asking = true;
            } else if e.starts_with("TRYAGAIN") || e.starts_with("CLUSTERDOWN") {
                std::thread::sleep(Duration::from_millis(20));
                port = hint();
                asking = false;
            } else {
                return r;
            }
        }
    }

    /// Is the cluster settled: on every live node `cluster_state:ok`, no open (migrating/importing) slot,
    /// no live node flagged failing, the same map of live nodes (id, port, role, master, slots) in every
    /// node's view, and every replica's link up. With `expect = (masters, replicas_per_master)` also that
    /// shape. `Err` says what is not there yet.
    fn settled(&self, expect: Option<(usize, usize)>) -> Result<(), String> {
        let live = self.live_ports();
        let dead = self.dead.lock().unwrap().clone();
        let mut first: Option<(u16, Vec<String>)> = None;
        let mut map = Vec::new();
        for &p in &live {
            let info = self.try_node(p, &["CLUSTER", "INFO"])?.as_string();
            let state = info_field(&info, "cluster_state").unwrap_or_default();
            if state != "ok" {
                return Err(format!("127.0.0.1:{p} reports cluster_state:{state}"));
            }
            let view = self.try_view(p)?;
            let mut sig = Vec::new();
            for n in &view {
                if dead.contains(&n.port) {
                    continue;
                }
                if !n.open_slots.is_empty() {
                    return Err(format!("{}: open slots {:?}", n.port, n.open_slots));
                }
                if n.is_unhealthy() {
                    return Err(format!("{p} sees {} flagged {:?}", n.port, n.flags));
                }
                let role = if n.is_master() { "master" } else { "replica" };
                sig.push(format!(
                    "{} {} {role} {} {:?}",
                    n.id,
                    n.port,
                    n.master_id.as_deref().unwrap_or("-"),
                    n.slots
                ));
            }
            sig.sort();
            if let Some(me) = view.iter().find(|n| n.is_myself()) {
                if me.is_replica() {
                    let repl = self.try_node(p, &["INFO", "replication"])?.as_string();
                    let link = info_field(&repl, "master_link_status").unwrap_or_default();
                    if link != "up" {
                        return Err(format!("replica {p}: master_link_status:{link}"));
                    }
                }
            }
            match &first {
                None => {
                    first = Some((p, sig));
                    map = view;
                }
                Some((fp, fsig)) if *fsig != sig => {
                    return Err(format!(
                        "the views of {fp} and {p} differ:\n{}\n-- vs --\n{}",
                        fsig.join("\n"),
                        sig.join("\n")
                    ))
                }
                Some(_) => {}
            }
        }
        if let Some((masters, per)) = expect {
            let owners: Vec<&NodeLine> = map
                .iter()
                .filter(|n| n.is_master() && !n.slots.is_empty())
                .collect();
            if owners.len() != masters {
                return Err(format!(
                    "{} masters own slots, want {masters}",
                    owners.len()
                ));
            }
            for m in owners {
                let n = map
                    .iter()
                    .filter(|r| r.master_id.as_deref() == Some(m.id.as_str()))
                    .count();
                if n != per {
                    return Err(format!("master {} has {n} replicas, want {per}", m.port));
                }
            }
        }
        Ok(())
    }

    fn wait_settled(&self, expect: Option<(usize, usize)>, what: &str) {
        let deadline = Instant::now() + SETTLE;
        loop {
            let why = match self.settled(expect) {
                Ok(()) => return,
                Err(why) => why,
            };
            if Instant::now() > deadline {
                panic!(
                    "cluster not settled {what} within {SETTLE:?}: {why}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Move keys of `slot` from `src` to `dest` with `MIGRATE`, up to `limit` keys (or all).
    fn migrate_keys(&self, src: u16, dest: u16, slot: u16, limit: usize) {
        let (s, d) = (slot.to_string(), dest.to_string());
        let mut moved = 0;
        while moved < limit {
            let batch = MIGRATE_BATCH.min(limit - moved).to_string();
            let keys = self.node_ok(src, &["CLUSTER", "GETKEYSINSLOT", &s, &batch]);
            let keys = keys.as_array();
            if keys.is_empty() {
                break;
            }
            let mut args: Vec<&[u8]> = vec![
                b"MIGRATE",
                b"127.0.0.1",
                d.as_bytes(),
                b"",
                b"0",
                b"5000",
                b"REPLACE",
            ];
            if let Some(pw) = &self.password {
                args.extend([&b"AUTH"[..], pw.as_bytes()]);
            }
            args.push(b"KEYS");
            args.extend(keys.iter().map(|k| k.as_bytes().unwrap()));
            match self.node(src, &args) {
                // NOKEY: the keys went (expired, deleted) between GETKEYSINSLOT and MIGRATE.
                Reply::Status(st) if st == "OK" || st == "NOKEY" => {}
                other => panic!(
                    "MIGRATE of {} keys of slot {slot} from {src} to {dest}: {other:?}\n{}",
                    keys.len(),
                    self.logs()
                ),
            }
            moved += keys.len();
        }
    }

    /// See [`Cluster::move_slots`].
    fn move_slots(&self, from: u16, to: u16, dest: u16, pause_per_slot: Duration) {
        assert!(from <= to && to < SLOTS, "bad slot range {from}..={to}");
        for slot in from..=to {
            let Some(src) = self.begin_slot_move(slot, dest) else {
                continue;
            };
            let n = self
                .node_ok(src, &["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()])
                .as_int() as usize;
            // Half the keys, then the pause (the slot is split between the nodes: writers see ASK for moved
            // keys and new keys, the source for the rest), then the rest and whatever came meanwhile.
            self.migrate_keys(src, dest, slot, n / 2);
            if !pause_per_slot.is_zero() {
                std::thread::sleep(pause_per_slot);
            }
            self.end_slot_move(slot, src, dest);
        }
    }

    /// The ids of the current masters, by port.
    fn master_ids(&self) -> HashMap<u16, String> {
        self.current_masters()
            .iter()
            .map(|(p, _)| (*p, self.myself(*p).id))
            .collect()
    }

    /// Start moving `slot` to the master on `dest`: `SETSLOT IMPORTING` there, then `SETSLOT MIGRATING` on
    /// its owner (redis-cli's order: the owner's ASK is never refused by the target). Returns the owner's
    /// port, or `None` when `dest` owns the slot already.
    fn begin_slot_move(&self, slot: u16, dest: u16) -> Option<u16> {
        let masters = self.current_masters();
        assert!(
            masters.iter().any(|(p, _)| *p == dest),
            "{dest} is not a master: {masters:?}"
        );
        let src = masters
            .iter()
            .find(|(_, ranges)| ranges.iter().any(|&(a, b)| a <= slot && slot <= b))
            .map(|(p, _)| *p);
        let Some(src) = src else {
            panic!("slot {slot} has no owner\n{}", self.logs());
        };
        if src == dest {
            return None;
        }
        let ids = self.master_ids();
        let s = slot.to_string();
        self.node_ok(
            dest,
            &["CLUSTER", "SETSLOT", &s, "IMPORTING", ids[&src].as_str()],
        );
        self.node_ok(
            src,
            &["CLUSTER", "SETSLOT", &s, "MIGRATING", ids[&dest].as_str()],
        );
        Some(src)
    }

    /// Finish moving `slot` from `src` to `dest`: migrate every key left, then `SETSLOT NODE` on the target
    /// (it bumps its epoch and spreads the news), on the source (which may have turned into a replica of
    /// the target if this was its last slot: cluster-allow-replica-migration), and on the other masters
    /// to shorten redirections.
    fn end_slot_move(&self, slot: u16, src: u16, dest: u16) {
        self.migrate_keys(src, dest, slot, usize::MAX);
        let ids = self.master_ids();
        let dest_id = ids[&dest].as_str();
        let s = slot.to_string();
        self.node_ok(dest, &["CLUSTER", "SETSLOT", &s, "NODE", dest_id]);
        match self.node(src, &["CLUSTER", "SETSLOT", &s, "NODE", dest_id]) {
            Reply::Error(e) if e.starts_with("ERR Please use SETSLOT only with masters") => {}
            Reply::Error(e) => panic!(
                "CLUSTER SETSLOT {slot} NODE on the source {src}: {e}\n{}",
                self.logs()
            ),
            _ => {}
        }
        for p in ids.keys() {
            if *p != src && *p != dest {
                self.node_ok(*p, &["CLUSTER", "SETSLOT", &s, "NODE", dest_id]);
            }
        }
        self.set_route(slot, dest);
    }
}

/// A running Redis Cluster; every node is killed on drop.
pub struct Cluster {
    /// The masters at start, in slot order (`masters[0]` owns slot 0).
    pub masters: Vec<RedisServer>,
    /// The replicas at start, ordered by their master's index in `masters`.
    pub replicas: Vec<RedisServer>,
    /// The `--requirepass` given at start.
    pub password: Option<String>,
    /// Where `redis-cli --cluster create`'s output went.
    pub dir: TempDir,
    /// Nodes added by [`Cluster::add_master`] (killed on drop like the others).
    pub added: Vec<RedisServer>,
    /// Every node's arguments (for nodes added later).
    node_args: Vec<String>,
    shared: Arc<Shared>,
}

impl Cluster {
    /// `masters` (≥ 3) masters with `replicas_per_master` replicas each, all started with `extra` after the
    /// cluster arguments (`--cluster-enabled yes`, `--cluster-node-timeout 1000`, `--appendonly no`,
    /// `--enable-debug-command yes`, a free `--cluster-port`; with `--requirepass pw` in `extra` also
    /// `--masterauth pw`), joined with `redis-cli --cluster create … --cluster-replicas N --cluster-yes`.
    /// Returns once every node reports `cluster_state:ok`, all views agree on the shape, and every
    /// replica's link is up.
    pub fn start(masters: usize, replicas_per_master: usize, extra: &[&str]) -> Cluster {
        assert!(
            masters >= 3,
            "redis-cli --cluster create needs 3 masters at least"
        );
        let arg_after = |name: &str| {
            extra
                .windows(2)
                .rev()
                .find(|w| w[0].eq_ignore_ascii_case(name))
                .map(|w| w[1].to_string())
        };
        let password = arg_after("--requirepass").filter(|p| !p.is_empty());
        let mut args: Vec<String> = [
            "--cluster-enabled",
            "yes",
            "--cluster-node-timeout",
            "1000",
            "--appendonly",
            "no",
            "--enable-debug-command",
            "yes",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let (Some(pw), None) = (&password, arg_after("--masterauth")) {
            args.extend(["--masterauth".to_string(), pw.clone()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));

        let total = masters * (1 + replicas_per_master);
        let mut servers: Vec<RedisServer> = (0..total).map(|_| start_node(&args)).collect();
        let shared = Arc::new(Shared {
            password: password.clone(),
            nodes: Mutex::new(
                servers
                    .iter()
                    .map(|s| (s.port, s.dir.path().join("redis.log")))
                    .collect(),
            ),
            dead: Mutex::new(HashSet::new()),
            pool: Mutex::new(HashMap::new()),
            route: Mutex::new(vec![0; SLOTS as usize]),
            moved: AtomicUsize::new(0),
            asked: AtomicUsize::new(0),
            ask_refused: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
        });
        let dir = TempDir::new("cluster");
        let addrs: Vec<String> = servers
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let mut cli = Command::new(redis_cli_bin());
        if let Some(pw) = &password {
            cli.args(["-a", pw, "--no-auth-warning"]);
        }
        cli.args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas_per_master.to_string()])
            .arg("--cluster-yes");
        run_with_deadline(
            cli,
            dir.path(),
            Duration::from_secs(60),
            &shared,
            "redis-cli --cluster create",
        );
        shared.wait_settled(Some((masters, replicas_per_master)), "after create");

        // Sort the servers into the roles the cluster gave them.
        let view = shared.view(servers[0].port);
        let line = |port: u16| view.iter().find(|n| n.port == port).unwrap().clone();
        let mut ms: Vec<(u16, RedisServer)> = Vec::new();
        let mut rs: Vec<(String, RedisServer)> = Vec::new();
        for s in servers.drain(..) {
            let n = line(s.port);
            if n.is_master() {
                ms.push((n.slots.first().map_or(SLOTS, |r| r.0), s));
            } else {
                rs.push((n.master_id.unwrap(), s));
            }
        }
        ms.sort_by_key(|(first, _)| *first);
        let master_index = |id: &str| {
            ms.iter()
                .position(|(_, m)| line(m.port).id == id)
                .unwrap_or(usize::MAX)
        };
        rs.sort_by_key(|(id, s)| (master_index(id), s.port));
        let cluster = Cluster {
            masters: ms.into_iter().map(|(_, s)| s).collect(),
            replicas: rs.into_iter().map(|(_, s)| s).collect(),
            password,
            dir,
            added: Vec::new(),
            node_args: args,
            shared,
        };
        cluster.shared.refresh_routes();
        cluster
    }

    /// Start a new node and join it as a master without slots (`redis-cli --cluster add-node`); returns its
    /// port once every node knows it and the cluster is settled. Move slots to it with
    /// [`Cluster::move_slots`].
    pub fn add_master(&mut self) -> u16 {
        let node = start_node(&self.node_args);
        let port = node.port;
        let seed = self.live_ports()[0];
        self.shared
            .nodes
            .lock()
            .unwrap()
            .push((port, node.dir.path().join("redis.log")));
        self.added.push(node);
        let mut cli = Command::new(redis_cli_bin());
        if let Some(pw) = &self.password {
            cli.args(["-a", pw, "--no-auth-warning"]);
        }
        cli.args(["--cluster", "add-node"])
            .arg(format!("127.0.0.1:{port}"))
            .arg(format!("127.0.0.1:{seed}"));
        run_with_deadline(
            cli,
            self.dir.path(),
            Duration::from_secs(60),
            &self.shared,
            "redis-cli --cluster add-node",
        );
        self.shared.wait_settled(None, "after add-node");
        port
    }

    /// `cluster://127.0.0.1:P1,127.0.0.1:P2,…` of the current masters (slot order), with `:password@`
    /// after `cluster://` when the cluster has a password.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .current_masters()
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        let auth = match &self.password {
            Some(pw) => format!(":{pw}@"),
            None => String::new(),
        };
        format!("cluster://{auth}{}", hosts.join(","))
    }

    /// The live masters as each node sees itself (its `myself` line): port and owned slot ranges, in slot
    /// order (masters without slots last). Unambiguous when the cluster is settled ([`Cluster::wait_ok`]).
    pub fn current_masters(&self) -> Vec<(u16, Vec<(u16, u16)>)> {
        self.shared.current_masters()
    }

    /// The port of the live master that owns `slot`.
    pub fn owner_port(&self, slot: u16) -> u16 {
        self.shared.owner_port(slot)
    }

    /// Client ports of the nodes still running (not killed by [`Cluster::kill_master`]).
    pub fn live_ports(&self) -> Vec<u16> {
        self.shared.live_ports()
    }

    /// One command through the cluster, following `MOVED` and `ASK` (`ASKING` first); `args[1]` is taken as
    /// the key for the first routing guess. `TRYAGAIN`/`CLUSTERDOWN` are retried; other error replies are
    /// returned.
    pub fn cmd<A: AsRef<[u8]>>(&self, args: &[A]) -> Reply {
        self.shared.cmd(args)
    }

    /// [`Cluster::cmd`] with binary arguments.
    pub fn cmd_bytes(&self, args: &[&[u8]]) -> Reply {
        self.shared.cmd(args)
    }

    /// [`Cluster::cmd`] for a command that must not fail (panics with the nodes' logs).
    pub fn ok<A: AsRef<[u8]>>(&self, args: &[A]) -> Reply {
        let r = self.cmd(args);
        if let Reply::Error(e) = &r {
            panic!(
                "{:?} through the cluster failed: {e}\n{}",
                shown(args),
                self.logs()
            );
        }
        r
    }

    /// One command on the node at `port` (no redirection); an error reply is returned.
    pub fn node_cmd<A: AsRef<[u8]>>(&self, port: u16, args: &[A]) -> Reply {
        self.shared.node(port, args)
    }

    /// A new connection to the node at `port`, authenticated when the cluster has a password.
    pub fn client(&self, port: u16) -> Client {
        self.shared
            .connect(port)
            .unwrap_or_else(|e| panic!("connect 127.0.0.1:{port}: {e}"))
    }

    /// The slot of `key` as the server computes it (`CLUSTER KEYSLOT`).
    pub fn keyslot<K: AsRef<[u8]>>(&self, key: K) -> u16 {
        let port = self.shared.any_port();
        let r = self
            .shared
            .node_ok(port, &[&b"CLUSTER"[..], b"KEYSLOT", key.as_ref()]);
        r.as_int() as u16
    }

    /// The `CLUSTER NODES` view of the node at `port`.
    pub fn view(&self, port: u16) -> Vec<NodeLine> {
        self.shared.view(port)
    }

    /// `MOVED` and `ASK` redirections [`Cluster::cmd`] has followed so far.
    pub fn redirections(&self) -> (usize, usize) {
        (
            self.shared.moved.load(Ordering::Relaxed),
            self.shared.asked.load(Ordering::Relaxed),
        )
    }

    /// Commands [`Cluster::cmd`] sent with `ASKING` after an `ASK` that were answered `MOVED` (the node
    /// named by the `ASK` neither imported nor owned the slot any more): 0 in a correct slot move.
    pub fn asks_refused(&self) -> usize {
        self.shared.ask_refused.load(Ordering::Relaxed)
    }

    /// Move the slots `from..=to` to the master on `dest_port`, live, as `redis-cli --cluster reshard`
    /// does, slot by slot: `SETSLOT IMPORTING` on the target, `SETSLOT MIGRATING` on the source,
    /// `GETKEYSINSLOT` + `MIGRATE … REPLACE [AUTH pw] KEYS …` in batches (half the keys, then
    /// `pause_per_slot`, then the rest), then `SETSLOT NODE` on the target, the source and the other
    /// masters. Slots `dest_port` already owns are skipped. Returns when the last slot is moved (replicas
    /// learn it by gossip: [`Cluster::wait_ok`] waits for that).
    pub fn move_slots(&self, from: u16, to: u16, dest_port: u16, pause_per_slot: Duration) {
        self.shared.move_slots(from, to, dest_port, pause_per_slot)
    }

    /// Leave `slot` half way to the master on `dest_port`: importing there, migrating on its owner, no key
    /// moved yet (writers of its keys meet `ASK` for keys the owner does not hold). Returns the owner's
    /// port; [`Cluster::finish_slot_move`] ends the move.
    pub fn begin_slot_move(&self, slot: u16, dest_port: u16) -> u16 {
        self.shared
            .begin_slot_move(slot, dest_port)
            .unwrap_or_else(|| panic!("{dest_port} owns slot {slot} already"))
    }

    /// Migrate the keys of `slot` left on `src` and give the slot to `dest_port` (see
    /// [`Cluster::begin_slot_move`]).
    pub fn finish_slot_move(&self, slot: u16, src: u16, dest_port: u16) {
        self.shared.end_slot_move(slot, src, dest_port)
    }

    /// [`Cluster::move_slots`] on a thread of its own; join the handle to see its panic.
    pub fn move_slots_in_background(
        &self,
        from: u16,
        to: u16,
        dest_port: u16,
        pause_per_slot: Duration,
    ) -> JoinHandle<()> {
        let shared = self.shared.clone();
        std::thread::Builder::new()
            .name(format!("move-slots-{from}-{to}"))
            .spawn(move || shared.move_slots(from, to, dest_port, pause_per_slot))
            .unwrap()
    }

    /// A manual `CLUSTER FAILOVER` on a replica of the master on `master_port` (one whose link is up);
    /// returns the promoted replica's port once it is a master, the old master replicates from it with its
    /// link up, and the cluster is settled.
    pub fn failover(&self, master_port: u16) -> u16 {
        let sh = &self.shared;
        let me = sh.myself(master_port);
        assert!(me.is_master(), "{master_port} is not a master: {me:?}");
        let replicas = self.replicas_of(&me);
        assert!(
            !replicas.is_empty(),
            "master {master_port} has no live replica to fail over to"
        );
        let link_up = |p: u16| {
            sh.try_node(p, &["INFO", "replication"])
                .map(|r| info_field(&r.as_string(), "master_link_status").as_deref() == Some("up"))
                .unwrap_or(false)
        };
        let mut chosen = None;
        wait_for(
            sh,
            &format!("a replica of {master_port} with its link up"),
            SETTLE,
            || {
                chosen = replicas.iter().copied().find(|&p| link_up(p));
                chosen.is_some()
            },
        );
        let replica = chosen.unwrap();
        let deadline = Instant::now() + SETTLE;
        let mut asked_at = Instant::now();
        sh.node_ok(replica, &["CLUSTER", "FAILOVER"]);
        loop {
            let promoted = sh.try_view(replica).ok().and_then(|v| {
                v.into_iter()
                    .find(NodeLine::is_myself)
                    .map(|n| n.is_master())
            }) == Some(true);
            let follows = match sh.try_node(master_port, &["ROLE"]) {
                Ok(Reply::Array(Some(r))) => {
                    r.len() >= 4
                        && r[0].as_string() == "slave"
                        && r[2].as_int() == i64::from(replica)
                        && r[3].as_string() == "connected"
                }
                _ => false,
            };
            if promoted && follows && sh.settled(None).is_ok() {
                sh.refresh_routes();
                return replica;
            }
            if Instant::now() > deadline {
                panic!(
                    "failover of {master_port} to {replica} not done within {SETTLE:?} (promoted: {promoted}, \
                     old master follows: {follows}, settled: {:?})\n{}",
                    sh.settled(None),
                    sh.logs()
                );
            }
            // A manual failover gives up after 5 s (CLUSTER_MF_TIMEOUT) on a slow machine: ask again.
            if !promoted && asked_at.elapsed() > Duration::from_secs(6) {
                sh.node_ok(replica, &["CLUSTER", "FAILOVER"]);
                asked_at = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9` the master on `master_port` (its [`RedisServer`] stays, already dead, so dropping it is
    /// harmless), then wait until one of its replicas took over all its slots and the cluster is settled
    /// without it; returns the new master's port. Writes the replica had not received are lost: call
    /// [`Cluster::wait_replicated`] first for an exact count.
    pub fn kill_master(&mut self, master_port: u16) -> u16 {
        let sh = self.shared.clone();
        let me = sh.myself(master_port);
        assert!(me.is_master(), "{master_port} is not a master: {me:?}");
        assert!(!me.slots.is_empty(), "master {master_port} owns no slot");
        let replicas = self.replicas_of(&me);
        assert!(
            !replicas.is_empty(),
            "master {master_port} has no live replica to take over"
        );
        let server = self
            .masters
            .iter_mut()
            .chain(self.replicas.iter_mut())
            .find(|s| s.port == master_port)
            .expect("the port is one of this cluster's nodes");
        server.kill();
        sh.dead.lock().unwrap().insert(master_port);
        sh.pool.lock().unwrap().remove(&master_port);
        for p in sh.route.lock().unwrap().iter_mut() {
            if *p == master_port {
                *p = 0;
            }
        }
        let deadline = Instant::now() + SETTLE;
        loop {
            let took_over = replicas.iter().copied().find(|&p| {
                sh.try_view(p)
                    .ok()
                    .and_then(|v| v.into_iter().find(NodeLine::is_myself))
                    .is_some_and(|n| {
                        n.is_master()
                            && me
                                .slots
                                .iter()
                                .all(|&(a, b)| (a..=b).all(|s| covers(&n.slots, s)))
                    })
            });
            if let Some(p) = took_over {
                if sh.settled(None).is_ok() {
                    sh.refresh_routes();
                    return p;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "no replica of the killed master {master_port} ({replicas:?}) took over within \
                     {SETTLE:?} (took over: {took_over:?}, settled: {:?})\n{}",
                    sh.settled(None),
                    sh.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait until every live replica has applied everything its master has (`slave_repl_offset` on the
    /// replica ≥ the master's `master_repl_offset` read first). Stronger than a `WAIT` on a fresh
    /// connection, which returns at once (it waits for that connection's own writes only).
    pub fn wait_replicated(&self) {
        let sh = &self.shared;
        for (port, _) in sh.current_masters() {
            let info = sh.node_ok(port, &["INFO", "replication"]).as_string();
            let target: i64 = info_field(&info, "master_repl_offset")
                .and_then(|v| v.parse().ok())
                .expect("master_repl_offset");
            for r in self.replicas_of(&sh.myself(port)) {
                wait_for(
                    sh,
                    &format!("replica {r} at offset {target} of master {port}"),
                    SETTLE,
                    || {
                        let info = sh
                            .try_node(r, &["INFO", "replication"])
                            .map(|x| x.as_string())
                            .unwrap_or_default();
                        info_field(&info, "master_link_status").as_deref() == Some("up")
                            && info_field(&info, "slave_repl_offset")
                                .and_then(|v| v.parse::<i64>().ok())
                                .is_some_and(|o| o >= target)
                    },
                );
            }
        }
    }

    /// Live replicas of `master` in its own view.
    fn replicas_of(&self, master: &NodeLine) -> Vec<u16> {
        self.shared
            .view(master.port)
            .into_iter()
            .filter(|n| n.master_id.as_deref() == Some(master.id.as_str()))
            .filter(|n| !n.is_unhealthy() && !self.shared.is_dead(n.port))
            .map(|n| n.port)
            .collect()
    }

    /// Every data item of the cluster (the current masters', ferry's own keys left out, as
    /// [`super::data_items`]), sorted: comparable with a standalone server's. Waits for
    /// [`Cluster::wait_ok`] first.
    pub fn data_items(&self) -> Vec<DataItem> {
        self.wait_ok();
        let mut all = Vec::new();
        for (port, _) in self.current_masters() {
            all.extend(data_items(&mut self.client(port)));
        }
        all.sort();
        all
    }

    /// Keys on the current masters without ferry's own. Waits for [`Cluster::wait_ok`] first.
    pub fn data_key_count(&self) -> usize {
        self.wait_ok();
        self.current_masters()
            .iter()
            .map(|(port, _)| data_key_count(&mut self.client(*port)))
            .sum()
    }

    /// Wait until `cluster_state:ok` on every live node, no slot migrating or importing, every live node
    /// seeing the same map of live nodes and slots, and every replica's link up.
    pub fn wait_ok(&self) {
        self.shared.wait_settled(None, "(wait_ok)");
    }

    /// The last lines of every node's log.
    pub fn logs(&self) -> String {
        self.shared.logs()
    }
}

/// Poll `cond` until it holds or `timeout` passes; then panics with `what` and the nodes' logs.
fn wait_for(sh: &Shared, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                sh.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Start one cluster node on free ports. Its bus port is chosen here (`--cluster-port`); if it is taken
/// meanwhile every attempt of [`RedisServer::start`] fails on it, so the start is retried with another.
fn start_node(args: &[String]) -> RedisServer {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let bus = free_port().to_string();
        let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
        a.extend(["--cluster-port", &bus]);
        match std::panic::catch_unwind(|| RedisServer::start(&a)) {
            Ok(s) => return s,
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                if attempt >= 3 || !msg.contains("after 5 attempts") {
                    std::panic::resume_unwind(e);
                }
            }
        }
    }
}

/// Run `cmd` with its output in `dir/cli.out`, killing it after `timeout`; panics unless it exits 0.
fn run_with_deadline(mut cmd: Command, dir: &Path, timeout: Duration, sh: &Shared, what: &str) {
    let out_path = dir.join("cli.out");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if !matches!(status, Some(s) if s.success()) {
        panic!(
            "{what} {}: {status:?}; its output:\n{}\n{}",
            if status.is_none() {
                "timed out"
            } else {
                "failed"
            },
            std::fs::read_to_string(&out_path).unwrap_or_default(),
            sh.logs()
        );
    }
}
