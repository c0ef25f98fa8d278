//! `ferry::cluster` against real servers:
//!
//! - [`key_slot`] equals `CLUSTER KEYSLOT` (a cluster-enabled 7.0, no slots needed) on 2000 random keys and
//!   the hash-tag corner cases, and every name [`key_in_slot`] makes lands in its slot;
//! - [`command_keys`] equals `COMMAND GETKEYS` of Redis 7.0 on ~200 representative command lines, and of
//!   7.4, 8.2 and Valkey 9 on every line each of them knows (so the commands 7.0 lacks are checked too);
//!   the few no provisioned server knows are printed and counted;
//! - [`SlotMap`] read from `CLUSTER SHARDS` equals the one from `CLUSTER SLOTS` on every node of a real
//!   cluster (three masters, a replica each, a password: the shared [`Cluster`] fixture); `discover` on
//!   it through a dead seed, on lone nodes of 5.0 (no `SHARDS`: the `SLOTS` fallback), 7.0 and Valkey 9,
//!   and refusing a non-cluster server without showing its password;
//! - real `MOVED` and `ASK` errors parse into the [`Redirect`] the map predicts.
//!
//! Lone cluster nodes of any version are started by [`ClusterNode`] below: the cluster bus listens on
//! port + 10000, so the port must be at most 55535 and the bus port free too (5.0–6.2 have no
//! `cluster-port`, which the shared fixture uses).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ferry::cluster::{command_keys, key_in_slot, key_slot, KeyRoute, Redirect, SlotMap, SLOTS};
use ferry::endpoint::RedisAddr;
use ferry::resp::Reply as FerryReply;
use ferry::target::client::Client as FerryClient;
use ferry::target::shard::discover;
use rand::{Rng, SeedableRng};

use crate::support::cluster::Cluster;
use crate::support::versions;
use crate::support::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A cluster-enabled redis-server on a port whose bus port (+10000) is free too, killed by PID on drop.
struct ClusterNode {
    port: u16,
    dir: TempDir,
    child: Child,
}

impl ClusterNode {
    fn start(bin: &Path, extra: &[&str]) -> ClusterNode {
        let mut last_log = String::new();
        for _attempt in 0..10 {
            let port = free_port();
            if port > 55535 || std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_err() {
                continue;
            }
            let dir = TempDir::new("cluster-node");
            let log = dir.path().join("redis.log");
            let conf = dir.path().join("nodes.conf");
            let mut args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--dir",
                &dir.path().display().to_string(),
                "--logfile",
                &log.display().to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &conf.display().to_string(),
                "--cluster-node-timeout",
                "5000",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(extra.iter().map(|s| s.to_string()));
            let child = Command::new(bin)
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let mut node = ClusterNode { port, dir, child };
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = node.child.try_wait() {
                    break; // exited: a port was taken after all; another one
                }
                if let Ok(mut c) = Client::connect_quiet(port) {
                    // Any answer will do (`-NOAUTH` with a password).
                    if c.try_cmd(&["PING"]).is_ok() {
                        return node;
                    }
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "cluster node on {port} not ready in 10 s; log:\n{}",
                    node.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            last_log = node.log();
        }
        panic!("no cluster node could be started in 10 attempts; last log:\n{last_log}");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    fn client(&self) -> Client {
        Client::connect(self.port)
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Redis 7.0: `FERRY_REDIS_7_0`, `.cache/redis/7.0`, or `redis-server` on PATH when it is 7.0.
fn bin_7_0() -> Option<PathBuf> {
    versions::require_bin("7.0")
}

/// Assign `from..=to` to a node (`ADDSLOTS`, which every version has).
fn add_slots(c: &mut Client, from: u16, to: u16) {
    let mut args = vec!["CLUSTER".to_string(), "ADDSLOTS".to_string()];
    args.extend((from..=to).map(|s| s.to_string()));
    c.ok(&args);
}

// ---------------------------------------------------------------------------------------------------
// Slots

#[test]
fn key_slot_equals_cluster_keyslot() {
    let Some(bin) = bin_7_0() else { return };
    let node = ClusterNode::start(&bin, &[]);
    let mut c = node.client();

    let mut keys: Vec<Vec<u8>> = [
        &b""[..],
        b"{}",
        b"{a",
        b"a}",
        b"{{a}}",
        b"a{b}{c}",
        b"{}a{b}",
        b"a}{b}",
        b"}{",
        b"{a}}",
        b"{",
        b"}",
        b"{user1000}.following",
        b"foo",
        b"123456789",
        b"\x00",
        b"{\xff}",
        b"\r\n{\r\n}",
    ]
    .iter()
    .map(|k| k.to_vec())
    .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5107);
    for _ in 0..2000 {
        let len = rng.gen_range(0..48);
        let mut key: Vec<u8> = (0..len)
            .map(|_| match rng.gen_range(0..10) {
                0 => b'{',
                1 => b'}',
                2 => rng.gen(),
                _ => rng.gen_range(b'a'..=b'z'),
            })
            .collect();
        if rng.gen_bool(0.1) {
            key.truncate(rng.gen_range(0..=key.len()));
        }
        keys.push(key);
    }
    for k in &keys {
        c.send(&[&b"CLUSTER"[..], b"KEYSLOT", k]);
    }
    let mut wrong = Vec::new();
    for k in &keys {
        let want = c.read().unwrap().as_int();
        if i64::from(key_slot(k)) != want {
            wrong.push(format!(
                "{:?}: ours {}, redis {want}",
                String::from_utf8_lossy(k),
                key_slot(k)
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} keys differ:\n{}",
        wrong.len(),
        wrong.join("\n")
    );

    // Every slot's name of our own, as Redis places it.
    for s in 0..SLOTS as u16 {
        c.send(&[
            &b"CLUSTER"[..],
            b"KEYSLOT",
            &key_in_slot(b"__ferry:probe:", s),
        ]);
    }
    for s in 0..SLOTS as u16 {
        assert_eq!(
            c.read().unwrap().as_int(),
            i64::from(s),
            "the name made for slot {s}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------
// Keys

/// Representative command lines (words split on spaces; `''` is an empty argument), every one well formed
/// for the servers that know it.
const LINES: &[&str] = &[
    // No key.
    "FLUSHALL",
    "FLUSHALL ASYNC",
    "FLUSHDB",
    "FLUSHDB SYNC",
    "SWAPDB 0 1",
    "SELECT 1",
    "MULTI",
    "EXEC",
    "DISCARD",
    "PING",
    "REPLCONF GETACK *",
    "SCRIPT LOAD return",
    "SCRIPT FLUSH",
    "FUNCTION FLUSH",
    "FUNCTION DELETE mylib",
    "FUNCTION LOAD code",
    "PUBLISH chan msg",
    "XGROUP HELP",
    // Strings.
    "SET k v",
    "SET k v NX PX 100",
    "SET k v GET",
    "SET k v XX EXAT 1700000000",
    "SETNX k v",
    "SETEX k 10 v",
    "PSETEX k 100 v",
    "GETSET k v",
    "GETDEL k",
    "GETEX k EX 10",
    "GETEX k PERSIST",
    "APPEND k v",
    "INCR k",
    "DECR k",
    "INCRBY k 5",
    "DECRBY k 5",
    "INCRBYFLOAT k 0.5",
    "SETRANGE k 1 v",
    "SETBIT k 7 1",
    "BITFIELD k SET u8 0 255",
    "BITFIELD k GET u8 0",
    "BITFIELD_RO k GET u8 0",
    "GET k",
    "MGET a b c",
    "MSET a 1 b 2 c 3",
    "MSETNX a 1 b 2",
    "MSETEX 2 a 1 b 2 EX 10",
    "BITOP AND dest a b",
    "BITOP NOT dest a",
    "BITOP OR dest a b c",
    "PFADD hll a b",
    "PFMERGE dest a b",
    "PFCOUNT a",
    "PFCOUNT a b c",
    "PFDEBUG GETREG hll",
    "DELEX k IFEQ v",
    "DELIFEQ k v",
    // Lists.
    "LPUSH l a b",
    "RPUSH l a",
    "LPUSHX l a",
    "RPUSHX l a b",
    "LPOP l",
    "LPOP l 2",
    "RPOP l 3",
    "LINSERT l BEFORE a b",
    "LSET l 0 v",
    "LTRIM l 0 -1",
    "LREM l 0 v",
    "LMOVE src dst LEFT RIGHT",
    "BLMOVE src dst RIGHT LEFT 0",
    "RPOPLPUSH src dst",
    "BRPOPLPUSH src dst 5",
    "BLPOP a b 0",
    "BRPOP a 1.5",
    "LMPOP 2 a b LEFT",
    "LMPOP 1 a RIGHT COUNT 2",
    "BLMPOP 0 2 a b LEFT COUNT 3",
    // Sets.
    "SADD s a b",
    "SREM s a",
    "SPOP s",
    "SPOP s 3",
    "SMOVE src dst m",
    "SINTERSTORE dst a b",
    "SUNIONSTORE dst a b c",
    "SDIFFSTORE dst a",
    "SINTERCARD 2 a b LIMIT 3",
    // Sorted sets.
    "ZADD z 1 a",
    "ZADD z NX CH 1 a 2 b",
    "ZADD z INCR 1 a",
    "ZINCRBY z 2 a",
    "ZREM z a b",
    "ZREMRANGEBYSCORE z -inf +inf",
    "ZREMRANGEBYRANK z 0 -1",
    "ZREMRANGEBYLEX z - +",
    "ZPOPMIN z",
    "ZPOPMAX z 2",
    "BZPOPMIN a b 0",
    "BZPOPMAX a 0",
    "ZUNIONSTORE dst 2 a b",
    "ZUNIONSTORE dst 2 a b WEIGHTS 1 2 AGGREGATE MIN",
    "ZINTERSTORE dst 3 a b c",
    "ZDIFFSTORE dst 2 a b",
    "ZRANGESTORE dst src 0 -1",
    "ZRANGESTORE dst src (1 5 BYSCORE LIMIT 0 2",
    "ZMPOP 2 a b MIN",
    "ZMPOP 1 a MAX COUNT 5",
    "BZMPOP 1 2 a b MIN",
    "ZINTERCARD 2 a b",
    // Hashes.
    "HSET h f v",
    "HSET h f v g w",
    "HMSET h f v",
    "HSETNX h f v",
    "HDEL h f g",
    "HINCRBY h f 1",
    "HINCRBYFLOAT h f 1.5",
    "HEXPIRE h 10 FIELDS 1 f",
    "HPEXPIRE h 100 NX FIELDS 2 f g",
    "HEXPIREAT h 1700000000 FIELDS 1 f",
    "HPEXPIREAT h 1700000000000 XX FIELDS 1 f",
    "HPERSIST h FIELDS 1 f",
    "HGETDEL h FIELDS 1 f",
    "HGETEX h PERSIST FIELDS 1 f",
    "HSETEX h FXX EX 10 FIELDS 1 f v",
    // Streams.
    "XADD s * f v",
    "XADD s NOMKSTREAM MAXLEN ~ 100 * f v",
    "XADD s MINID 0 1-1 f v",
    "XDEL s 1-1 2-2",
    "XTRIM s MAXLEN 10",
    "XTRIM s MINID ~ 0-1 LIMIT 10",
    "XSETID s 5-0",
    "XSETID s 5-0 ENTRIESADDED 10 MAXDELETEDID 3-0",
    "XGROUP CREATE s g $",
    "XGROUP CREATE s g 0 MKSTREAM ENTRIESREAD 0",
    "XGROUP SETID s g 0",
    "XGROUP DESTROY s g",
    "XGROUP CREATECONSUMER s g c",
    "XGROUP DELCONSUMER s g c",
    "XACK s g 1-1",
    "XCLAIM s g c 10 1-1 JUSTID",
    "XCLAIM s g c 0 1-1 2-2 IDLE 5 RETRYCOUNT 1 FORCE LASTID 2-2",
    "XAUTOCLAIM s g c 10 0-0",
    "XAUTOCLAIM s g c 10 0-0 COUNT 5 JUSTID",
    "XREADGROUP GROUP g c STREAMS s >",
    "XREADGROUP GROUP g c COUNT 10 BLOCK 0 NOACK STREAMS a b > >",
    "XREADGROUP GROUP STREAMS c STREAMS s 0",
    "XREAD COUNT 1 STREAMS a b 0 0",
    "XREAD BLOCK 0 STREAMS s $",
    "XDELEX s IDS 1 1-1",
    "XACKDEL s g IDS 1 1-1",
    // Geo.
    "GEOADD g 13.36 38.11 palermo",
    "GEOADD g NX CH 13.36 38.11 palermo",
    "GEORADIUS g 15 37 200 km",
    "GEORADIUS g 15 37 200 km WITHDIST ASC COUNT 3 STORE dst",
    "GEORADIUS g 15 37 200 km STOREDIST dst",
    "GEORADIUSBYMEMBER g palermo 100 km STORE dst",
    "GEORADIUSBYMEMBER g palermo 100 km COUNT 1 ANY STOREDIST dst",
    "GEORADIUS_RO g 15 37 200 km",
    "GEORADIUSBYMEMBER_RO g palermo 100 km",
    "GEOSEARCHSTORE dst src FROMMEMBER palermo BYRADIUS 10 km",
    "GEOSEARCHSTORE dst src FROMLONLAT 15 37 BYBOX 400 400 km ASC COUNT 3 STOREDIST",
    // Vector sets (Redis 8).
    "VADD v VALUES 3 1 2 3 elem",
    "VREM v elem",
    "VSETATTR v elem {}",
    // Keys in general.
    "DEL a",
    "DEL a b c",
    "UNLINK a b",
    "EXISTS a b",
    "TOUCH a b",
    "EXPIRE k 10",
    "EXPIRE k 10 NX",
    "PEXPIRE k 100",
    "EXPIREAT k 1700000000",
    "PEXPIREAT k 1700000000000 GT",
    "PERSIST k",
    "RENAME a b",
    "RENAMENX a b",
    "MOVE k 1",
    "COPY a b",
    "COPY a b DB 1 REPLACE",
    "RESTORE k 0 payload",
    "RESTORE k 0 payload REPLACE ABSTTL IDLETIME 10",
    "RESTORE k 0 payload FREQ 5",
    "RESTORE-ASKING k 0 payload",
    "SORT k",
    "SORT k DESC ALPHA",
    "SORT k STORE dst",
    "SORT k BY w_* LIMIT 0 10 GET # GET o_* STORE dst",
    "SORT k LIMIT 0 1 STORE d1 STORE d2",
    "SORT_RO k BY w_* GET #",
    "MIGRATE h 6379 k 0 5000",
    "MIGRATE h 6379 k 0 5000 COPY REPLACE",
    "MIGRATE h 6379 '' 0 5000 KEYS a b c",
    "MIGRATE h 6379 '' 0 5000 AUTH2 u p KEYS a b",
    "MIGRATE h 6379 '' 0 5000 AUTH p KEYS a",
    // Scripts and functions.
    "EVAL body 0",
    "EVAL body 1 a",
    "EVAL body 2 a b x y",
    "EVALSHA sha 1 a",
    "EVAL_RO body 1 a",
    "EVALSHA_RO sha 2 a b",
    "FCALL f 0",
    "FCALL f 2 a b x",
    "FCALL_RO f 1 a",
    // A sharded channel: routed like a key on purpose (see EXCEPTIONS).
    "SPUBLISH chan msg",
];

/// Lines where ferry differs from `COMMAND GETKEYS` on purpose, with what GETKEYS answers and why.
const EXCEPTIONS: &[(&str, &str, &str)] = &[(
    "SPUBLISH chan msg",
    "error: ERR The command has no key arguments",
    "a sharded channel is not a key, but it lives in its slot's shard: routed by it",
)];

/// Commands newer than every server provisioned here (their syntax from the Redis docs).
const NEWER_THAN_ALL: &[&str] = &["DELEX"];

fn words(line: &str) -> Vec<Vec<u8>> {
    line.split(' ')
        .map(|w| {
            if w == "''" {
                Vec::new()
            } else {
                w.as_bytes().to_vec()
            }
        })
        .collect()
}

/// What GETKEYS answers, as text: `keys: a b` or `error: …`. A line of one word cannot be asked (`COMMAND
/// GETKEYS` wants an argument after the name): `COMMAND INFO`'s first key position answers for it, 0
/// meaning no key, as GETKEYS would say.
fn getkeys(c: &mut Client, args: &[Vec<u8>]) -> String {
    if args.len() == 1 {
        let info = c.cmd(&[&b"COMMAND"[..], b"INFO", &args[0]]);
        return match info.as_array().first() {
            Some(Reply::Array(Some(fields))) if fields.len() > 3 => match fields[3] {
                Reply::Int(0) => "error: ERR The command has no key arguments".into(),
                ref first => format!("first key at {first:?}"),
            },
            _ => "error: ERR Invalid command specified".into(),
        };
    }
    let mut cmd: Vec<&[u8]> = vec![b"COMMAND", b"GETKEYS"];
    cmd.extend(args.iter().map(Vec::as_slice));
    match c.cmd(&cmd) {
        Reply::Error(e) => format!("error: {e}"),
        Reply::Array(Some(v)) => {
            let names: Vec<String> = v.iter().map(|r| r.as_string()).collect();
            format!("keys: {}", names.join(" "))
        }
        other => format!("unexpected: {other:?}"),
    }
}

/// What ferry's table says, in GETKEYS' terms.
fn ours(args: &[Vec<u8>]) -> String {
    let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
    match command_keys(&refs) {
        KeyRoute::Keyless => "error: ERR The command has no key arguments".into(),
        KeyRoute::Keys(idx) => {
            let names: Vec<String> = idx
                .iter()
                .map(|&i| String::from_utf8_lossy(&args[i]).into_owned())
                .collect();
            format!("keys: {}", names.join(" "))
        }
        KeyRoute::Unknown => "unknown".into(),
    }
}

fn unknown_to(answer: &str) -> bool {
    answer.starts_with("error: ERR Invalid command specified")
}

/// The lines `version` knows that differ from its GETKEYS (exceptions checked too), and the lines it does
/// not know.
fn compare_on(c: &mut Client, version: &str) -> (Vec<String>, Vec<&'static str>) {
    let mut wrong = Vec::new();
    let mut unknown = Vec::new();
    for line in LINES {
        let args = words(line);
        let mine = ours(&args);
        let answer = getkeys(c, &args);
        if unknown_to(&answer) {
            unknown.push(*line);
            continue;
        }
        if let Some((_, want, _why)) = EXCEPTIONS.iter().find(|(l, _, _)| l == line) {
            if answer != *want {
                wrong.push(format!(
                    "{line}: GETKEYS ({version}) changed its answer on an exception to {answer}"
                ));
            }
            continue;
        }
        if answer != mine {
            wrong.push(format!(
                "{line}\n    GETKEYS ({version}): {answer}\n    ours:          {mine}"
            ));
        }
    }
    (wrong, unknown)
}

#[test]
fn command_keys_equal_command_getkeys() {
    for line in LINES {
        assert_ne!(
            ours(&words(line)),
            "unknown",
            "{line}: command_keys does not know a well-formed line"
        );
    }
    assert!(LINES.len() >= 150, "{} lines", LINES.len());

    // Redis 7.0 answers for every line it knows.
    let Some(bin) = bin_7_0() else { return };
    let base = RedisServer::start_bin(&bin, &[]);
    let (mut wrong, lacking) = compare_on(&mut base.client(), "7.0");
    eprintln!(
        "cluster_keys: {} lines; 7.0 lacks {} of them: {lacking:?}",
        LINES.len(),
        lacking.len()
    );

    // Newer servers answer for every line they know (the ones 7.0 lacks, and the rest again).
    let mut known_later: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    for v in ["7.4", "8.2", "valkey-9"] {
        let Some(server) = versions::start_version(v, &[]) else {
            continue;
        };
        let (w, unknown) = compare_on(&mut server.client(), v);
        wrong.extend(w);
        known_later.extend(lacking.iter().filter(|l| !unknown.contains(l)).copied());
    }
    let nobody_knows: Vec<&str> = lacking
        .iter()
        .filter(|l| !known_later.contains(*l))
        .copied()
        .collect();
    for line in &nobody_knows {
        eprintln!(
            "cluster_keys: no provisioned server knows `{line}`; ours: {}",
            ours(&words(line))
        );
    }
    eprintln!(
        "cluster_keys: {} lines 7.0 lacks were checked on a newer server; {} known to none",
        known_later.len(),
        nobody_knows.len()
    );
    assert!(
        wrong.is_empty(),
        "{} answers differ:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    for line in &nobody_knows {
        let name = line.split(' ').next().unwrap();
        assert!(
            NEWER_THAN_ALL.contains(&name),
            "{name}: no provisioned server knows it, and it is not listed as newer than all of them"
        );
    }
}

// ---------------------------------------------------------------------------------------------------
// Slot maps, discovery, redirections

/// `CLUSTER SHARDS` (None where the server lacks it) and `CLUSTER SLOTS` of the node at `addr`, read
/// through ferry's client.
fn both_maps(rt: &tokio::runtime::Runtime, target: &RedisAddr) -> (Option<SlotMap>, SlotMap) {
    let asked = target.host_port();
    rt.block_on(async {
        let mut c = FerryClient::connect(target).await.unwrap();
        let shards = match c.cmd(&[b"CLUSTER", b"SHARDS"]).await.unwrap() {
            FerryReply::Error(_) => None,
            r => Some(SlotMap::from_cluster_shards(&r, &asked).unwrap()),
        };
        let slots = c.cmd_ok(&[b"CLUSTER", b"SLOTS"]).await.unwrap();
        (shards, SlotMap::from_cluster_slots(&slots, &asked).unwrap())
    })
}

fn node_url(port: u16) -> RedisAddr {
    format!("redis://:s3cret-pw@127.0.0.1:{port}")
        .parse()
        .unwrap()
}

#[test]
fn a_real_cluster_reads_the_same_from_shards_and_slots_and_is_discovered() {
    // Three masters with a replica each (the shared fixture: `redis-cli --cluster create`), a password.
    let cl = Cluster::start(3, 1, &["--requirepass", "s3cret-pw"]);
    let rt = runtime();
    let want_addrs: Vec<String> = cl
        .masters
        .iter()
        .map(|m| format!("127.0.0.1:{}", m.port))
        .collect();
    let want_replicas: Vec<Vec<String>> = cl
        .replicas
        .iter()
        .map(|r| vec![format!("127.0.0.1:{}", r.port)])
        .collect();
    // A write per master, so no replica is at offset 0 (such a replica is not listed as available).
    for (_, ranges) in cl.current_masters() {
        let (first, _) = ranges[0];
        cl.ok(&[b"SET".to_vec(), key_in_slot(b"warm:", first), b"1".to_vec()]);
    }

    // Every node, asked both ways, gives the same map once gossip has settled (replicas listed).
    let ports: Vec<u16> = cl
        .masters
        .iter()
        .chain(&cl.replicas)
        .map(|s| s.port)
        .collect();
    let mut last = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let bad: Vec<String> = ports
            .iter()
            .filter_map(|&p| {
                let (shards, slots) = both_maps(&rt, &node_url(p));
                let addrs: Vec<String> = slots.nodes().iter().map(|n| n.addr.clone()).collect();
                let replicas: Vec<Vec<String>> =
                    slots.nodes().iter().map(|n| n.replicas.clone()).collect();
                let good = shards.as_ref() == Some(&slots)
                    && addrs == want_addrs
                    && replicas == want_replicas
                    && slots.is_complete();
                (!good).then(|| {
                    format!(
                        "{p}: shards {shards:?}, slots {slots:?} {:?}",
                        slots.nodes()
                    )
                })
            })
            .collect();
        if bad.is_empty() {
            break;
        }
        last = bad.join("\n");
        assert!(
            std::time::Instant::now() < deadline,
            "the nodes' maps did not settle in 60 s:\n{last}\n{}",
            cl.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, map) = both_maps(&rt, &node_url(cl.masters[1].port));
    for (i, (n, m)) in map.nodes().iter().zip(&cl.masters).enumerate() {
        let id = cl.node_cmd(m.port, &["CLUSTER", "MYID"]).as_string();
        assert_eq!(n.id.as_deref(), Some(id.as_str()), "{last}");
        assert_eq!(map.ranges_of(i), cl.current_masters()[i].1);
    }

    // discover: a dead seed first, then a replica (which knows the whole map too); the password is kept.
    let seeds = vec![node_url(free_port()), node_url(cl.replicas[0].port)];
    let (found, addrs) = rt.block_on(discover(&seeds)).unwrap();
    assert!(found.same_layout(&map));
    assert_eq!(found, map);
    let got: Vec<String> = addrs.iter().map(RedisAddr::host_port).collect();
    assert_eq!(got, want_addrs);
    assert!(addrs.iter().all(|a| a.auth == seeds[1].auth));

    // Real redirections, where the map says.
    let key = b"{moved}key".to_vec();
    let slot = key_slot(&key);
    let owner = map.owner(slot).unwrap();
    let other = cl.masters[(owner + 1) % 3].port;
    let err = match cl.node_cmd(other, &[&b"SET"[..], &key, b"v"]) {
        Reply::Error(e) => e,
        r => panic!("a SET to the wrong node answered {r:?}"),
    };
    assert_eq!(
        Redirect::parse(err.as_bytes()),
        Some(Redirect::Moved {
            slot,
            addr: map.nodes()[owner].addr.clone()
        }),
        "{err}"
    );
    let err = match cl.node_cmd(other, &["MSET", "a", "1", "b", "2"]) {
        Reply::Error(e) => e,
        r => panic!("a cross-slot MSET answered {r:?}"),
    };
    assert!(err.starts_with("CROSSSLOT"), "{err}");
    assert_eq!(Redirect::parse(err.as_bytes()), None);

    // ASK: the owner migrates the slot to another master; a key it lacks is to be asked for there.
    let from = cl.masters[owner].port;
    let to = other;
    let id_of = |port| cl.node_cmd(port, &["CLUSTER", "MYID"]).as_string();
    let slot_s = slot.to_string();
    let ok = |r: Reply| assert!(!matches!(r, Reply::Error(_)), "{r:?}");
    ok(cl.node_cmd(
        to,
        &["CLUSTER", "SETSLOT", &slot_s, "IMPORTING", &id_of(from)],
    ));
    ok(cl.node_cmd(
        from,
        &["CLUSTER", "SETSLOT", &slot_s, "MIGRATING", &id_of(to)],
    ));
    let err = match cl.node_cmd(from, &["GET", "{moved}absent"]) {
        Reply::Error(e) => e,
        r => panic!("a GET of a missing key in a migrating slot answered {r:?}"),
    };
    assert_eq!(
        Redirect::parse(err.as_bytes()),
        Some(Redirect::Ask {
            slot,
            addr: format!("127.0.0.1:{to}")
        }),
        "{err}"
    );
    // Put the slot back to stable before the cluster is dropped.
    ok(cl.node_cmd(from, &["CLUSTER", "SETSLOT", &slot_s, "STABLE"]));
    ok(cl.node_cmd(to, &["CLUSTER", "SETSLOT", &slot_s, "STABLE"]));
}

#[test]
fn discover_a_single_node_on_old_and_new_servers_with_a_password() {
    let rt = runtime();
    let mut checked = Vec::new();
    for v in ["5.0", "7.0", "valkey-9"] {
        let Some(bin) = versions::require_bin(v) else {
            continue;
        };
        let node = ClusterNode::start(&bin, &["--requirepass", "s3cret-pw"]);
        let mut c = node.client();
        c.ok(&["AUTH", "s3cret-pw"]);
        add_slots(&mut c, 0, 16383);
        wait_until(&format!("{v}: cluster ok"), Duration::from_secs(30), || {
            c.ok(&["CLUSTER", "INFO"])
                .as_string()
                .contains("cluster_state:ok")
        });
        let seed: RedisAddr = format!("redis://:s3cret-pw@127.0.0.1:{}", node.port)
            .parse()
            .unwrap();
        let (map, addrs) = rt
            .block_on(discover(std::slice::from_ref(&seed)))
            .unwrap_or_else(|e| panic!("{v}: {e}\n{}", node.log()));
        // A lone node does not know its own IP: an empty endpoint, so the address asked.
        assert_eq!(map.nodes().len(), 1, "{v}: {map:?}");
        assert_eq!(map.nodes()[0].addr, node.addr(), "{v}");
        assert_eq!(map.ranges_of(0), [(0, 16383)], "{v}");
        assert_eq!(addrs.len(), 1);
        assert_eq!(addrs[0], seed, "{v}: the seed's credentials are kept");
        checked.push(v);
    }
    eprintln!("cluster_keys: discovered a single node on {checked:?}");
}

#[test]
fn discover_refuses_a_non_cluster_server_and_names_the_seeds_not_the_password() {
    let rt = runtime();
    let plain = RedisServer::start(&["--requirepass", "s3cret-pw"]);
    let seed: RedisAddr = format!("redis://:s3cret-pw@127.0.0.1:{}", plain.port)
        .parse()
        .unwrap();
    let e = rt
        .block_on(discover(std::slice::from_ref(&seed)))
        .unwrap_err();
    assert!(e.contains("not a cluster node"), "{e}");
    assert!(e.contains(&format!("127.0.0.1:{}", plain.port)), "{e}");
    assert!(!e.contains("s3cret-pw"), "{e}");

    // Every seed dead: each named, with its reason.
    let (a, b) = (free_port(), free_port());
    let seeds: Vec<RedisAddr> = [a, b]
        .iter()
        .map(|p| {
            format!("redis://user:s3cret-pw@127.0.0.1:{p}")
                .parse()
                .unwrap()
        })
        .collect();
    let e = rt.block_on(discover(&seeds)).unwrap_err();
    assert!(e.contains(&format!("redis://user@127.0.0.1:{a}")), "{e}");
    assert!(e.contains(&format!("redis://user@127.0.0.1:{b}")), "{e}");
    assert!(!e.contains("s3cret-pw"), "{e}");
    assert!(rt.block_on(discover(&[])).is_err());

    // A cluster node with no slot assigned gives no map.
    let Some(bin) = bin_7_0() else { return };
    let empty = ClusterNode::start(&bin, &[]);
    let seed: RedisAddr = format!("redis://{}", empty.addr()).parse().unwrap();
    let e = rt.block_on(discover(&[seed])).unwrap_err();
    assert!(e.contains("no slot assigned"), "{e}");
}
