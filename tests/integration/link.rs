//! Replication link tests against real masters: ferry's `repl::run` as a replica of real `redis-server`s,
//! judged by what the master says about its replica (`INFO replication`, `INFO stats`) and by the bytes it
//! sent (RDB checksum, commands decoded from the stream).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ferry::endpoint::{Auth, RedisAddr, Secret};
use ferry::repl::{self, LinkConfig, LinkError, LinkShared};
use ferry::resp::CommandDecoder;
use ferry::spool::{self, Record, SpoolConfig, SpoolReader, SpoolStats};
use tokio_util::sync::CancellationToken;

use crate::support::versions;
use crate::support::{wait_until, Client, RedisServer, TempDir};

/// How long any single expected record may take.
const RECORD_WAIT: Duration = Duration::from_secs(30);

fn addr(port: u16, auth: Option<Auth>) -> RedisAddr {
    RedisAddr {
        host: "127.0.0.1".into(),
        port,
        auth,
    }
}

fn link_cfg(port: u16, auth: Option<Auth>) -> LinkConfig {
    let mut c = LinkConfig::new(addr(port, auth));
    c.ack_interval = Duration::from_millis(100);
    c.read_timeout = Duration::from_secs(20);
    c
}

/// A link running on its own runtime, its spool's reader, and the means to stop it.
struct Harness {
    rt: tokio::runtime::Runtime,
    shared: Arc<LinkShared>,
    reader: Option<SpoolReader>,
    stats: Arc<SpoolStats>,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), LinkError>>>,
    _dir: TempDir,
}

impl Harness {
    fn start(cfg: LinkConfig) -> Harness {
        Self::start_with(cfg, 64 << 20, 1 << 30)
    }

    fn start_with(cfg: LinkConfig, mem: u64, disk: u64) -> Harness {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = TempDir::new("link");
        let mut sc = SpoolConfig::new(dir.path(), &cfg.name);
        sc.mem_limit_bytes = mem;
        sc.disk_limit_bytes = disk;
        sc.segment_bytes = 4 << 20;
        let (w, r) = spool::open(sc).unwrap();
        let stats = w.stats();
        let shared = LinkShared::new();
        let cancel = CancellationToken::new();
        let task = rt.spawn(repl::run(cfg, shared.clone(), w, cancel.clone()));
        Harness {
            rt,
            shared,
            reader: Some(r),
            stats,
            cancel,
            task: Some(task),
            _dir: dir,
        }
    }

    /// The next record; panics after [`RECORD_WAIT`] naming `what`.
    fn next(&mut self, what: &str) -> Record {
        let r = self.reader.as_mut().unwrap();
        match self
            .rt
            .block_on(async { tokio::time::timeout(RECORD_WAIT, r.next()).await })
        {
            Ok(Ok(Some(rec))) => rec,
            Ok(Ok(None)) => panic!("{what}: the link ended ({:?})", self.shared.snapshot()),
            Ok(Err(e)) => panic!("{what}: spool error {e}"),
            Err(_) => panic!(
                "{what}: no record within {RECORD_WAIT:?}; link {:?}",
                self.shared.snapshot()
            ),
        }
    }

    /// FullResync, the RDB chunks, RdbEnd: (replid, offset, rdb bytes). Chunks are at most 1 MiB.
    fn full_sync(&mut self) -> (String, i64, Vec<u8>) {
        let (replid, offset) = match self.next("FullResync") {
            Record::FullResync { replid, offset } => (replid, offset),
            other => panic!("expected FullResync, got {}", other.kind()),
        };
        let mut rdb = Vec::new();
        loop {
            match self.next("RDB") {
                Record::Rdb(b) => {
                    assert!(b.len() <= 1 << 20, "RDB chunk of {} bytes", b.len());
                    rdb.extend_from_slice(&b);
                }
                Record::RdbEnd => break,
                other => panic!("expected Rdb/RdbEnd, got {}", other.kind()),
            }
        }
        (replid, offset, rdb)
    }

    /// Read stream records (feeding `s`) until `done(commands so far)` holds.
    fn stream_until(
        &mut self,
        s: &mut StreamSeen,
        what: &str,
        mut done: impl FnMut(&StreamSeen) -> bool,
    ) {
        while !done(s) {
            match self.next(what) {
                Record::Stream(b) => s.feed(&b),
                other => panic!("{what}: expected Stream, got {other:?}"),
            }
        }
    }

    /// Cancel and wait for the link to end; returns its result and how long stopping took.
    fn stop(&mut self) -> (Result<(), LinkError>, Duration) {
        let t = Instant::now();
        self.cancel.cancel();
        let task = self.task.take().unwrap();
        let r = self
            .rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(5), task).await })
            .expect("the link did not stop within 5 s of cancel")
            .expect("the link task panicked");
        (r, t.elapsed())
    }

    /// Wait for the link to end by itself (a fatal error).
    fn ended(&mut self) -> Result<(), LinkError> {
        let task = self.task.take().unwrap();
        self.rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(20), task).await })
            .expect("the link did not end within 20 s")
            .expect("the link task panicked")
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Commands decoded from the stream bytes received so far.
#[derive(Default)]
struct StreamSeen {
    buf: BytesMut,
    dec: CommandDecoder,
    /// Every command (keep-alive newlines excluded), arguments as strings.
    cmds: Vec<Vec<String>>,
    bytes: u64,
}

impl StreamSeen {
    fn feed(&mut self, b: &Bytes) {
        self.bytes += b.len() as u64;
        self.buf.extend_from_slice(b);
        while let Some(n) = self.dec.decode(&self.buf).expect("stream decodes") {
            let args: Vec<String> = self
                .dec
                .args()
                .iter()
                .map(|r| String::from_utf8_lossy(&self.buf[r.clone()]).into_owned())
                .collect();
            if !args.is_empty() {
                self.cmds.push(args);
            }
            let _ = self.buf.split_to(n);
        }
    }

    fn has(&self, args: &[&str]) -> bool {
        self.cmds.iter().any(|c| {
            c.len() == args.len() && c.iter().zip(args).all(|(a, b)| a.eq_ignore_ascii_case(b))
        })
    }
}

fn info_i64(c: &mut Client, section: &str, field: &str) -> i64 {
    c.info_field(section, field)
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1)
}

/// `INFO replication`'s `slave0:ip=…,port=…,state=…,offset=…,lag=…` as (state, offset, port).
fn replica0(c: &mut Client) -> Option<(String, i64, i64)> {
    let line = c.info_field("replication", "slave0")?;
    let field = |k: &str| {
        line.split(',')
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .map(str::to_string)
    };
    Some((
        field("state")?,
        field("offset")?.parse().ok()?,
        field("port")?.parse().ok()?,
    ))
}

/// The RDB is whole: magic, and its last 8 bytes are the CRC-64 of the rest (so a diskless EOF mark was
/// stripped exactly).
fn assert_rdb_whole(rdb: &[u8], what: &str) {
    assert!(
        rdb.starts_with(b"REDIS0") || rdb.starts_with(b"VALKEY"),
        "{what}: RDB starts with {:?}",
        String::from_utf8_lossy(&rdb[..rdb.len().min(9)])
    );
    assert!(rdb.len() > 9 + 9, "{what}: RDB of {} bytes", rdb.len());
    let (body, crc) = rdb.split_at(rdb.len() - 8);
    assert_eq!(
        body.last(),
        Some(&0xff),
        "{what}: no EOF opcode before the CRC"
    );
    assert_eq!(
        ferry::rdb::crc64::checksum(body),
        u64::from_le_bytes(crc.try_into().unwrap()),
        "{what}: RDB CRC mismatch (mark not stripped, or bytes lost)"
    );
}

fn set_diskless(c: &mut Client, diskless: bool) {
    c.ok(&[
        "CONFIG",
        "SET",
        "repl-diskless-sync",
        if diskless { "yes" } else { "no" },
    ]);
    c.ok(&["CONFIG", "SET", "repl-diskless-sync-delay", "0"]);
}

/// Valkey 9 and later send every full sync diskless to replicas that announce `capa eof`.
fn master_always_diskless(c: &mut Client) -> bool {
    let (name, version) = versions::server_identity(c);
    let major: u32 = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    name == "valkey" && major >= 9
}

/// Keys, including one value over 1 MiB so the RDB spans several chunks.
fn fill(c: &mut Client) {
    for i in 0..500 {
        c.ok(&["SET", &format!("k{i}"), &format!("v{i}")]);
    }
    c.ok(&["SET", "big", &"x".repeat(3 << 20)]);
    c.ok(&["RPUSH", "list", "a", "b", "c"]);
}

/// Handshake, full RDB (disk or diskless), stream and ACKs against `master`.
fn full_sync_stream_and_ack(master: &RedisServer, diskless: bool, what: &str) {
    let mut c = master.client();
    set_diskless(&mut c, diskless);
    fill(&mut c);
    let mut cfg = link_cfg(master.port, None);
    cfg.listening_port = 4242;
    let mut h = Harness::start(cfg);
    let (replid, offset, rdb) = h.full_sync();
    assert_eq!(
        Some(replid.clone()),
        c.info_field("replication", "master_replid"),
        "{what}"
    );
    assert!(offset >= 0, "{what}: offset {offset}");
    assert_rdb_whole(&rdb, what);
    let snap = h.shared.snapshot();
    assert_eq!(snap.rdb_bytes, rdb.len() as u64, "{what}");
    // What the master chose shows in the framing: `$EOF:` (no announced size) or `$<len>`.
    let used_diskless = snap.rdb_size == -1;
    if !used_diskless {
        assert_eq!(
            snap.rdb_size,
            rdb.len() as i64,
            "{what}: RDB length differs from $len"
        );
    }
    // Valkey 9 streams the RDB through a socket to every replica announcing `capa eof`, whatever
    // repl-diskless-sync says (observed with 9.1.2).
    if !(used_diskless && master_always_diskless(&mut c)) {
        assert_eq!(used_diskless, diskless, "{what}: diskless transfer used");
    }
    assert!(
        rdb.windows(3).any(|w| w == b"k42"),
        "{what}: key k42 not in the RDB"
    );
    assert_eq!(snap.full_syncs, 1, "{what}");
    assert!(snap.connected, "{what}");

    // The stream carries what is written now.
    c.ok(&["SET", "after", "1"]);
    c.ok(&["HSET", "h", "f", "v"]);
    let mut s = StreamSeen::default();
    h.stream_until(&mut s, "stream after the RDB", |s| {
        s.has(&["SET", "after", "1"]) && s.has(&["HSET", "h", "f", "v"])
    });
    // Offsets: what we received is what the master wrote.
    wait_until(
        &format!("{what}: received == master_repl_offset"),
        Duration::from_secs(10),
        || {
            let m = info_i64(&mut c, "replication", "master_repl_offset");
            // Drain what arrives (PINGs) so received keeps up.
            m == h.shared.received.load(Relaxed)
        },
    );
    assert_eq!(
        h.shared.received.load(Relaxed),
        offset + h.shared.stream_bytes.load(Relaxed) as i64,
        "{what}: received = FULLRESYNC offset + stream bytes"
    );

    // The master sees an online replica that claims nothing while nothing is applied (its ACKs say 0, not
    // the FULLRESYNC offset: the snapshot is not on any target yet), then what we say we applied.
    wait_until(
        &format!("{what}: replica online acking nothing"),
        Duration::from_secs(10),
        || matches!(replica0(&mut c), Some((st, 0, 4242)) if st == "online"),
    );
    let applied = h.shared.received.load(Relaxed) - 3;
    h.shared.set_applied(1, applied);
    wait_until(
        &format!("{what}: ACK offset advances to applied"),
        Duration::from_secs(10),
        || matches!(replica0(&mut c), Some((_, off, _)) if off == applied),
    );
    assert_eq!(info_i64(&mut c, "replication", "connected_slaves"), 1);
    assert_eq!(info_i64(&mut c, "stats", "sync_full"), 1, "{what}");

    let (r, took) = h.stop();
    assert!(r.is_ok(), "{what}: {r:?}");
    assert!(
        took < Duration::from_millis(100),
        "{what}: stop took {took:?}"
    );
    wait_until(
        &format!("{what}: the master sees the replica gone"),
        Duration::from_secs(10),
        || info_i64(&mut c, "replication", "connected_slaves") == 0,
    );
}

#[test]
fn full_sync_disk_backed_then_stream_and_acks() {
    let m = RedisServer::start(&[]);
    full_sync_stream_and_ack(&m, false, "disk-backed");
}

#[test]
fn full_sync_diskless_then_stream_and_acks() {
    let m = RedisServer::start(&[]);
    full_sync_stream_and_ack(&m, true, "diskless");
}

/// `CLIENT KILL TYPE replica` (or `slave` on servers that only know that name).
fn kill_replicas(c: &mut Client) {
    let r = c.cmd(&["CLIENT", "KILL", "TYPE", "replica"]);
    if matches!(r, crate::support::Reply::Error(_)) {
        c.ok(&["CLIENT", "KILL", "TYPE", "slave"]);
    }
}

/// Read records until `LinkDown`, feeding stream bytes to `s`; returns the reason.
fn until_link_down(h: &mut Harness, s: &mut StreamSeen, what: &str) -> String {
    loop {
        match h.next(what) {
            Record::Stream(b) => s.feed(&b),
            Record::LinkDown { reason } => return reason,
            other => panic!("{what}: expected Stream or LinkDown, got {other:?}"),
        }
    }
}

/// After our connection is killed on the master: LinkDown, then a partial resync from where we were, no new
/// full sync, and the stream goes on.
fn partial_resync_after_kill(master: &RedisServer, what: &str) {
    let mut c = master.client();
    set_diskless(&mut c, false);
    c.ok(&["SET", "a", "1"]);
    let mut h = Harness::start(link_cfg(master.port, None));
    let (replid, _, _) = h.full_sync();
    c.ok(&["SET", "b", "2"]);
    let mut s = StreamSeen::default();
    h.stream_until(&mut s, "stream before the kill", |s| {
        s.has(&["SET", "b", "2"])
    });
    wait_until(
        &format!("{what}: replica online"),
        Duration::from_secs(10),
        || matches!(replica0(&mut c), Some((st, _, _)) if st == "online"),
    );
    let partial_before = info_i64(&mut c, "stats", "sync_partial_ok");
    kill_replicas(&mut c);
    let reason = until_link_down(&mut h, &mut s, "LinkDown after CLIENT KILL");
    assert!(!reason.is_empty());
    let have = h.shared.received.load(Relaxed);
    match h.next("Continue") {
        Record::Continue { replid: id, offset } => {
            assert_eq!(id, replid, "{what}");
            assert_eq!(
                offset, have,
                "{what}: continues after the last byte received"
            );
        }
        other => panic!("{what}: expected Continue, got {other:?}"),
    }
    c.ok(&["SET", "c", "3"]);
    h.stream_until(&mut s, "stream after the partial resync", |s| {
        s.has(&["SET", "c", "3"])
    });
    assert_eq!(
        info_i64(&mut c, "stats", "sync_partial_ok"),
        partial_before + 1,
        "{what}"
    );
    assert_eq!(info_i64(&mut c, "stats", "sync_full"), 1, "{what}");
    let snap = h.shared.snapshot();
    assert_eq!(
        (snap.full_syncs, snap.partial_syncs, snap.reconnects),
        (1, 1, 1),
        "{what}"
    );
    wait_until(
        &format!("{what}: received == master_repl_offset after the resync"),
        Duration::from_secs(10),
        || info_i64(&mut c, "replication", "master_repl_offset") == h.shared.received.load(Relaxed),
    );
    let (r, _) = h.stop();
    assert!(r.is_ok(), "{r:?}");
}

#[test]
fn killed_link_resumes_with_partial_resync() {
    let m = RedisServer::start(&[]);
    partial_resync_after_kill(&m, "7.0");
}

/// A fresh link given a checkpoint's (replid, offset) continues there: the master answers +CONTINUE and
/// sends what was written while no replica was connected.
#[test]
fn resume_from_checkpoint_after_fresh_start() {
    let m = RedisServer::start(&[]);
    let mut c = m.client();
    set_diskless(&mut c, false);
    let mut h = Harness::start(link_cfg(m.port, None));
    let (replid, _, _) = h.full_sync();
    c.ok(&["SET", "before", "1"]);
    let mut s = StreamSeen::default();
    h.stream_until(&mut s, "stream", |s| s.has(&["SET", "before", "1"]));
    wait_until(
        "received == master_repl_offset",
        Duration::from_secs(10),
        || info_i64(&mut c, "replication", "master_repl_offset") == h.shared.received.load(Relaxed),
    );
    let offset = h.shared.received.load(Relaxed);
    let (r, _) = h.stop();
    assert!(r.is_ok());
    drop(h);
    wait_until("replica gone", Duration::from_secs(10), || {
        info_i64(&mut c, "replication", "connected_slaves") == 0
    });
    c.ok(&["SET", "while-down", "2"]);

    let mut cfg = link_cfg(m.port, None);
    cfg.resume = Some((replid.clone(), offset));
    let mut h = Harness::start(cfg);
    assert_eq!(h.next("Continue"), Record::Continue { replid, offset });
    let mut s = StreamSeen::default();
    h.stream_until(&mut s, "the writes made while down", |s| {
        s.has(&["SET", "while-down", "2"])
    });
    assert!(
        !s.has(&["SET", "before", "1"]),
        "a write from before the checkpoint came again"
    );
    assert_eq!(info_i64(&mut c, "stats", "sync_partial_ok"), 1);
    assert_eq!(info_i64(&mut c, "stats", "sync_full"), 1);
    let snap = h.shared.snapshot();
    assert_eq!((snap.full_syncs, snap.partial_syncs), (0, 1));
}

/// A checkpoint the master cannot continue from (unknown replid) gives a full resync, not an error.
#[test]
fn resume_from_unknown_replid_falls_back_to_full_sync() {
    let m = RedisServer::start(&[]);
    let mut cfg = link_cfg(m.port, None);
    cfg.resume = Some(("0".repeat(40), 12345));
    let mut h = Harness::start(cfg);
    let (_, _, rdb) = h.full_sync();
    assert_rdb_whole(&rdb, "full sync after a refused resume");
}

fn auth(user: Option<&str>, pw: &str) -> Option<Auth> {
    Some(Auth {
        user: user.map(str::to_string),
        password: Secret::new(pw),
    })
}

#[test]
fn auth_with_requirepass() {
    let m = RedisServer::start(&["--requirepass", "s3cret-pw"]);
    let mut c = m.client();
    c.ok(&["AUTH", "s3cret-pw"]);
    c.ok(&["SET", "k", "v"]);
    let mut h = Harness::start(link_cfg(m.port, auth(None, "s3cret-pw")));
    let (_, _, rdb) = h.full_sync();
    assert_rdb_whole(&rdb, "requirepass");
    c.ok(&["SET", "k2", "v2"]);
    let mut s = StreamSeen::default();
    h.stream_until(&mut s, "stream", |s| s.has(&["SET", "k2", "v2"]));
}

/// An ACL user with only the replication commands is enough.
#[test]
fn auth_with_acl_user_with_only_replication_commands() {
    let m = RedisServer::start(&[]);
    let mut c = m.client();
    c.ok(&[
        "ACL",
        "SETUSER",
        "repl",
        "on",
        ">r3pl-pw",
        "+ping",
        "+replconf",
        "+psync",
    ]);
    c.ok(&["SET", "k", "v"]);
    let mut h = Harness::start(link_cfg(m.port, auth(Some("repl"), "r3pl-pw")));
    let (_, _, rdb) = h.full_sync();
    assert_rdb_whole(&rdb, "ACL user");
    c.ok(&["SET", "k2", "v2"]);
    let mut s = StreamSeen::default();
    h.stream_until(&mut s, "stream", |s| s.has(&["SET", "k2", "v2"]));
    // Its ACKs are accepted (REPLCONF is allowed): the master sees them.
    let applied = h.shared.received.load(Relaxed);
    h.shared.set_applied(1, applied);
    wait_until(
        "ACK from the ACL user",
        Duration::from_secs(10),
        || matches!(replica0(&mut c), Some((_, off, _)) if off == applied),
    );
}

/// Fatal errors end the link even with reconnect on; their text names the source and never the password.
#[test]
fn wrong_or_missing_credentials_are_fatal_and_never_shown() {
    let m = RedisServer::start(&["--requirepass", "right-pw"]);
    let mut c = m.client();
    c.ok(&["AUTH", "right-pw"]);
    c.ok(&[
        "ACL",
        "SETUSER",
        "weak",
        "on",
        ">weak-pw",
        "+ping",
        "+replconf",
    ]);
    let where_ = format!("127.0.0.1:{}", m.port);
    for (a, want, secret) in [
        (
            auth(None, "wr0ng-pw"),
            "refused our credentials",
            "wr0ng-pw",
        ),
        (
            auth(Some("nobody"), "n0body-pw"),
            "refused our credentials",
            "n0body-pw",
        ),
        (None, "requires a password", "right-pw"),
        (
            auth(Some("weak"), "weak-pw"),
            "may not run PSYNC and SYNC",
            "weak-pw",
        ),
    ] {
        let mut h = Harness::start(link_cfg(m.port, a));
        let err = h.ended().expect_err("a fatal error");
        let msg = err.to_string();
        assert!(msg.contains(want), "{msg}");
        assert!(msg.contains("source") && msg.contains(&where_), "{msg}");
        assert!(!msg.contains(secret), "the password is in {msg:?}");
        assert!(!format!("{err:?}").contains(secret), "{err:?}");
        assert!(!err.is_transient());
        assert_eq!(h.shared.full_syncs.load(Relaxed), 0);
    }
}

/// The master keeps a replica whose output buffer may not exceed 1 MB (512 kB for 1 s) under a steady
/// write load while nobody reads the spool: the link reads at network speed and the spool takes the bytes
/// to disk. One full sync, one replica, all along; then every byte is there, in order.
///
/// The load is steady, not bursty: pipelines of 64 kB at about 12 MB/s (so a pause of ~80 ms on a busy machine is
/// tolerated, as for any replica). (A single pipeline of 1 MB is
/// executed in one event-loop turn and overflows a 1 MB replica buffer before any byte is written to any
/// replica, however fast it reads.)
#[test]
fn unread_spool_under_write_load_keeps_the_link() {
    let m = RedisServer::start(&[]);
    let mut c = m.client();
    set_diskless(&mut c, false);
    c.ok(&[
        "CONFIG",
        "SET",
        "client-output-buffer-limit",
        "replica 1mb 512kb 1",
    ]);
    let mut h = Harness::start_with(link_cfg(m.port, None), 1 << 20, 4 << 30);
    wait_until("RDB received", Duration::from_secs(20), || {
        h.shared.received.load(Relaxed) >= 0
    });
    wait_until(
        "replica online",
        Duration::from_secs(10),
        || matches!(replica0(&mut c), Some((st, _, _)) if st == "online"),
    );
    // The load: 32 MB of SETs from another thread, 4 x 16 kB per pipeline, paced to ~12 MB/s.
    const ROUNDS: usize = 512;
    const BATCH: usize = 4;
    const ROUND_TIME: Duration = Duration::from_millis(5);
    let value = "v".repeat(16 << 10);
    let port = m.port;
    let writer = std::thread::spawn(move || {
        let mut w = Client::connect(port);
        let t = Instant::now();
        for r in 0..ROUNDS {
            for i in 0..BATCH {
                w.send(&["SET", &format!("load:{r}:{i}"), &value]);
            }
            for _ in 0..BATCH {
                assert_eq!(w.read().unwrap().as_string(), "OK");
            }
            // Pacing of the load generator (not synchronisation): round r starts no earlier than r x ROUND_TIME.
            let due = ROUND_TIME * (r as u32 + 1);
            if let Some(wait) = due.checked_sub(t.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        t.elapsed()
    });
    let mut samples = 0;
    while !writer.is_finished() {
        assert_eq!(
            info_i64(&mut c, "replication", "connected_slaves"),
            1,
            "the master dropped the replica under load; log:\n{}",
            m.log()
        );
        assert_eq!(info_i64(&mut c, "stats", "sync_full"), 1);
        samples += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = writer.join().unwrap();
    wait_until(
        "received == master_repl_offset",
        Duration::from_secs(30),
        || info_i64(&mut c, "replication", "master_repl_offset") == h.shared.received.load(Relaxed),
    );
    assert_eq!(info_i64(&mut c, "replication", "connected_slaves"), 1);
    assert_eq!(info_i64(&mut c, "stats", "sync_full"), 1);
    assert_eq!(info_i64(&mut c, "stats", "sync_partial_ok"), 0);
    let st = h.stats.snapshot();
    assert!(
        st.spilled_bytes_total > 24 << 20,
        "the spool should have gone to disk: {st:?}"
    );
    assert!(st.mem_high_water <= 1 << 20, "{st:?}");
    let stream_bytes = h.shared.stream_bytes.load(Relaxed);
    eprintln!(
        "load: {} MB written in {took:?} ({samples} samples), spool {st:?}",
        stream_bytes >> 20
    );
    // Now read it all: FullResync, the RDB, then every SET in order.
    h.full_sync();
    let mut s = StreamSeen::default();
    h.stream_until(&mut s, "the load's stream", |s| s.bytes == stream_bytes);
    let sets: Vec<&Vec<String>> = s
        .cmds
        .iter()
        .filter(|c| c[0].eq_ignore_ascii_case("SET"))
        .collect();
    assert_eq!(sets.len(), ROUNDS * BATCH);
    assert_eq!(sets[0][1], "load:0:0");
    assert_eq!(
        sets[sets.len() - 1][1],
        format!("load:{}:{}", ROUNDS - 1, BATCH - 1)
    );
}

/// The same checks on every other provisioned server version (old and new Redis, Valkey).
#[test]
fn every_version_disk_diskless_and_partial_resync() {
    let mut checked = Vec::new();
    for (v, bin) in versions::available() {
        if v == "7.0" {
            continue; // the default server, covered above
        }
        checked.push(v);
        for diskless in [false, true] {
            let m = RedisServer::start_bin(&bin, &[]);
            let what = format!("{v} {}", if diskless { "diskless" } else { "disk" });
            full_sync_stream_and_ack(&m, diskless, &what);
        }
        let m = RedisServer::start_bin(&bin, &[]);
        partial_resync_after_kill(&m, v);
    }
    eprintln!("replication link checked against {checked:?}");
}
