//! The replication link to one source master: ferry as a replica.
//!
//! [`run`] connects, performs the replica handshake (`AUTH`, `PING`, `REPLCONF listening-port`,
//! `REPLCONF capa eof capa psync2`, `PSYNC`, or `SYNC` for masters without `PSYNC`), receives the RDB
//! (disk-backed `$<len>` or diskless `$EOF:<mark>`), then the command stream, and pushes everything into a
//! [`crate::spool`] as [`Record`](crate::spool::Record)s. It reads the socket at network speed whatever the
//! consumer does (the spool absorbs: memory, then disk), sends `REPLCONF ACK <applied>` every
//! [`LinkConfig::ack_interval`] and on demand, and after a broken link reconnects and continues with
//! `PSYNC <replid> <offset+1>`. It knows nothing about targets. See `docs/replication.md`.
//!
//! # Offsets
//! A master offset names a byte of the master's replication stream. `FullResync { offset }` and
//! `Continue { offset }` carry the offset of the last byte already covered (by the RDB, or received
//! before): the first `Stream` byte that follows is `offset + 1`, and after `n` stream bytes the replica's
//! position is `offset + n`. That position is what `REPLCONF ACK` reports and what `PSYNC` asks for plus one.
//!
//! # A master that moves
//! A master of a Redis Cluster source can be replaced: after a failover one of its replicas serves its
//! slots. With a [`Locate`] in [`LinkConfig::locate`], the link asks where the master is before every
//! reconnect (not before the first connection: that address was just found) and, while streaming, every
//! [`Locate::every`]; when the answer is another server it ends the connection and continues there with
//! `PSYNC <replid> <offset+1>`. psync2 keeps the history across a failover (the promoted replica remembers
//! its old master's replication ID as its second one), so the new master answers `+CONTINUE` when it holds
//! everything the link received, and `+FULLRESYNC` otherwise (it had not received the last writes).
//!
//! - `proto`: the pure parts (reply lines, PSYNC reply, RDB header, EOF-mark scanner, ACK encoding).
//! - `link`: the connection, the transfer, the ACK writer, reconnects.

mod link;
pub mod proto;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::endpoint::RedisAddr;
use crate::spool::{SpoolError, SpoolWriter};

/// How to run one link.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// For logs and errors, e.g. `source redis://127.0.0.1:6379`. Never contains the password (build it from
    /// the address' `Display`, which hides it).
    pub name: String,
    /// The master (or a replica: replicas serve `PSYNC` too). `auth` is sent as `AUTH [user] password`.
    pub addr: RedisAddr,
    /// Announced with `REPLCONF listening-port`. The master only shows it (`INFO replication`, `ROLE`) and
    /// Sentinel uses it to reach replicas. Default 0: ferry listens on no port, and 0 cannot be mistaken
    /// for (nor make a Sentinel probe) a real server on our host.
    pub listening_port: u16,
    /// TCP connect timeout. Default 10 s.
    pub connect_timeout: Duration,
    /// No byte at all (not even a keep-alive `\n` or a `PING` in the stream) for this long: the link is
    /// down. Also bounds each handshake reply. Default 60 s (the master's `repl-timeout`; it sends `\n` every
    /// second while preparing the RDB and a `PING` every `repl-ping-replica-period`, 10 s).
    pub read_timeout: Duration,
    /// `REPLCONF ACK` period. Default 1 s (what Redis replicas do).
    pub ack_interval: Duration,
    /// `(replid, offset)` from a checkpoint: offset is the last byte applied. The first `PSYNC` asks for
    /// `replid offset+1`. `None`, or a replid of `?`/empty: `PSYNC ? -1` (full sync).
    pub resume: Option<(String, i64)>,
    /// After a broken link (EOF, reset, read timeout, a master that cannot serve `PSYNC` right now),
    /// reconnect with backoff (100 ms doubling to 5 s) and continue with `PSYNC`. Fatal errors (credentials
    /// refused, no permission, neither `PSYNC` nor `SYNC` accepted, not a Redis server) stop the link
    /// either way. Default true.
    pub reconnect: bool,
    /// For a master that can move (a master of a cluster source): where it is now, asked before every
    /// reconnect and every [`Locate::every`] while streaming (module docs). Default none: the address
    /// stays.
    pub locate: Option<Arc<dyn Locate>>,
}

/// What [`Locate::locate`] returns.
pub type Located<'a> = Pin<Box<dyn Future<Output = Result<RedisAddr, String>> + Send + 'a>>;

/// Where a source's master is now (see the module docs, "A master that moves").
pub trait Locate: Send + Sync + std::fmt::Debug {
    /// The master to replicate from now (with the credentials to use), or why it is not known yet (the
    /// link then waits, as after a failed connection, and asks again). `current` is the server the link
    /// uses (or used last); `shared` is this link's state, so the answer may depend on what it applied.
    fn locate<'a>(&'a self, current: &'a RedisAddr, shared: &'a Arc<LinkShared>) -> Located<'a>;

    /// How often to ask while streaming; `None`: only before reconnects.
    fn every(&self) -> Option<Duration>;
}

impl LinkConfig {
    /// Defaults for `addr`, named `source <addr>`.
    pub fn new(addr: RedisAddr) -> LinkConfig {
        LinkConfig {
            name: format!("source {addr}"),
            addr,
            listening_port: 0,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            ack_interval: Duration::from_secs(1),
            resume: None,
            reconnect: true,
            locate: None,
        }
    }
}

/// State shared between the link and its consumer (and the status page). All atomics; read them with
/// `Relaxed` ordering.
#[derive(Debug)]
pub struct LinkShared {
    /// What every target has applied, as the consumer knows it: `(epoch, offset)`, the epoch being the
    /// number of `FullResync` records the consumer has taken (the link counts the ones it pushed the same
    /// way). `REPLCONF ACK` reports the offset only while the epochs agree; otherwise (the consumer is
    /// still applying records from before a full resync, or has not finished the new snapshot: offset -1)
    /// it reports 0, which claims nothing. It never reports more than was received. Set it with
    /// [`LinkShared::set_applied`].
    applied: std::sync::Mutex<(u64, i64)>,
    /// The consumer asks for a full resync (the link drops the connection and sends `PSYNC ? -1`): used when
    /// a command cannot be applied exactly otherwise. Set [`LinkShared::request_full_resync`].
    want_full: AtomicBool,
    resync_now: tokio::sync::Notify,
    /// The consumer saw `REPLCONF GETACK` in the stream: call `ack_now.notify_one()` and the link sends an
    /// ACK at once (a stored permit: it is not lost if the link is busy).
    pub ack_now: tokio::sync::Notify,
    /// Master offset of the last byte received (-1 before anything). Set at the end of the RDB (to the
    /// `FULLRESYNC` offset), at `+CONTINUE`, and advanced by every stream read.
    pub received: AtomicI64,
    /// The handshake succeeded and the link is up.
    pub connected: AtomicBool,
    /// `+FULLRESYNC` (or `SYNC`) answers.
    pub full_syncs: AtomicU64,
    /// `+CONTINUE` answers.
    pub partial_syncs: AtomicU64,
    /// Links re-established (a successful `PSYNC`/`SYNC` after a drop).
    pub reconnects: AtomicU64,
    /// RDB bytes received in the current (or last) transfer, without the diskless EOF mark.
    pub rdb_bytes: AtomicU64,
    /// Size the master announced for the current RDB (`$<len>`); -1 for diskless or before any.
    pub rdb_size: AtomicI64,
    /// Stream bytes received since the link started (all connections).
    pub stream_bytes: AtomicU64,
    /// The master did not accept `PSYNC` and serves `SYNC` only (before 2.8): offsets count from 0 at the end
    /// of the RDB, no ACK is sent, and no resume is possible (every reconnect is a full sync).
    pub sync_only: AtomicBool,
    /// The server the link replicates from since the master's role moved (a followed failover); `None`
    /// while it is the configured one. Read it with [`LinkShared::master`].
    moved_to: std::sync::Mutex<Option<RedisAddr>>,
}

impl Default for LinkShared {
    fn default() -> Self {
        LinkShared {
            applied: std::sync::Mutex::new((0, -1)),
            want_full: AtomicBool::new(false),
            resync_now: tokio::sync::Notify::new(),
            ack_now: tokio::sync::Notify::new(),
            received: AtomicI64::new(-1),
            connected: AtomicBool::new(false),
            full_syncs: AtomicU64::new(0),
            partial_syncs: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            rdb_bytes: AtomicU64::new(0),
            rdb_size: AtomicI64::new(-1),
            stream_bytes: AtomicU64::new(0),
            sync_only: AtomicBool::new(false),
            moved_to: std::sync::Mutex::new(None),
        }
    }
}

impl LinkShared {
    pub fn new() -> Arc<LinkShared> {
        Arc::new(LinkShared::default())
    }

    /// The server the link replicates from: `configured` until a followed failover moved it elsewhere.
    /// What else talks to the master (the heartbeat, `--once`'s offset) asks here.
    pub fn master(&self, configured: &RedisAddr) -> RedisAddr {
        self.moved_to
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| configured.clone())
    }

    /// The link moved to `addr` (see [`LinkShared::master`]).
    pub fn set_master(&self, addr: RedisAddr) {
        *self.moved_to.lock().unwrap_or_else(|p| p.into_inner()) = Some(addr);
    }

    /// Record what every target has applied (see the field's docs).
    pub fn set_applied(&self, epoch: u64, offset: i64) {
        *self.applied.lock().unwrap_or_else(|p| p.into_inner()) = (epoch, offset);
    }

    /// `(epoch, offset)` as last set.
    pub fn applied(&self) -> (u64, i64) {
        *self.applied.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drop the connection and ask the master for a full resync (`PSYNC ? -1`).
    pub fn request_full_resync(&self) {
        self.want_full.store(true, Ordering::SeqCst);
        self.resync_now.notify_one();
    }

    /// A copy of the counters, for status and tests.
    pub fn snapshot(&self) -> LinkSnapshot {
        LinkSnapshot {
            applied: self.applied().1,
            received: self.received.load(Ordering::Relaxed),
            connected: self.connected.load(Ordering::Relaxed),
            full_syncs: self.full_syncs.load(Ordering::Relaxed),
            partial_syncs: self.partial_syncs.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            rdb_bytes: self.rdb_bytes.load(Ordering::Relaxed),
            rdb_size: self.rdb_size.load(Ordering::Relaxed),
            stream_bytes: self.stream_bytes.load(Ordering::Relaxed),
            sync_only: self.sync_only.load(Ordering::Relaxed),
        }
    }
}

/// A copy of [`LinkShared`]'s figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LinkSnapshot {
    pub applied: i64,
    pub received: i64,
    pub connected: bool,
    pub full_syncs: u64,
    pub partial_syncs: u64,
    pub reconnects: u64,
    pub rdb_bytes: u64,
    pub rdb_size: i64,
    pub stream_bytes: u64,
    pub sync_only: bool,
}

/// Why the link stopped. Every message names the source and its address (never the password) and says
/// what to do.
#[derive(thiserror::Error, Debug)]
pub enum LinkError {
    #[error("{who}: the master requires a password ({msg}); give it in the source URL as redis://[user]:password@host:port")]
    AuthRequired { who: String, msg: String },
    #[error("{who}: the master refused our credentials ({msg}); check the user and password in the source URL")]
    AuthRefused { who: String, msg: String },
    #[error("{who}: the user may not run {command} ({msg}); grant the replication commands, e.g. ACL SETUSER <user> +ping +replconf +psync +sync")]
    NoPermission {
        who: String,
        command: &'static str,
        msg: String,
    },
    #[error("{who}: the master refused both PSYNC ({psync}) and SYNC ({sync}), so it cannot replicate to ferry; check that the address is a master (or replica) that serves replicas")]
    SyncRefused {
        who: String,
        psync: String,
        sync: String,
    },
    #[error("{who}: this does not look like a Redis master: {detail}; check the host and port")]
    Protocol { who: String, detail: String },
    #[error("{who}: the replication link is down ({reason}) and reconnecting is off")]
    Lost { who: String, reason: String },
    #[error("{who}: {source}")]
    Spool {
        who: String,
        #[source]
        source: SpoolError,
    },
}

impl LinkError {
    /// Is it worth trying again later with the same configuration? (Only a lost link is.)
    pub fn is_transient(&self) -> bool {
        matches!(self, LinkError::Lost { .. })
    }
}

/// Run the link until `cancel` fires (then `Ok(())`, within about 100 ms), a fatal error, or — with
/// `reconnect` off — the first broken link. Records go to `spool` in order: `FullResync`, `Rdb`…, `RdbEnd`,
/// `Stream`…, and after a drop `LinkDown`, then `Continue` (or `FullResync` again), `Stream`…
pub async fn run(
    cfg: LinkConfig,
    shared: Arc<LinkShared>,
    spool: SpoolWriter,
    cancel: CancellationToken,
) -> Result<(), LinkError> {
    link::Link::new(cfg, shared, spool).run(cancel).await
}
