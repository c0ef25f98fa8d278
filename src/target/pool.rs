//! A pool of pipelined connections to one target.
//!
//! Producers encode commands into a [`Batch`] and [`WriterPool::send`] it to one connection (chosen by key,
//! so all writes of one key stay in order on one connection). Each connection is one task that writes
//! batches in order and matches every reply, in order, to the command that caused it. Error replies are
//! counted and logged once per distinct error with the command name and key — never the value.
//!
//! Memory is bounded: a batch's bytes hold permits of a per-connection byte semaphore until its last reply
//! has arrived, so at most `max_inflight_bytes` per connection are buffered or on the wire.
//!
//! # Transactions
//! A `MULTI … EXEC` may be one opaque entry (its reply frames counted, any error reported against the
//! entry), or described command by command ([`Tx`]): then every command's own error — refused when queued,
//! or failed inside the `EXEC` result — is counted and logged with its own name and key.
//!
//! A batch with a [`Commit`] is one such described transaction that also stores a marker
//! (`SET key value` inside the same `MULTI … EXEC`): the stream applier's in-target checkpoint. For such a
//! batch the pool can be exact where a plain pipeline cannot:
//! - **`EXECABORT`**: a command the target refused while queueing (out of memory, unknown to an older
//!   target, no permission) makes Redis discard the whole transaction. The refused commands are counted and
//!   logged by name and key, and the transaction is written again without them, so the rest is applied
//!   before the batch counts as done. (Its producer keeps at most one such batch unanswered, so nothing of
//!   the same source was written behind it.)
//! - **Lost replies**: after a reconnect the marker is read back; if it holds this batch's value the
//!   transaction was applied and is not sent again.
//!
//! # Reconnects
//! A lost connection is re-established with backoff and every command whose reply had not arrived is sent
//! again, from the first unanswered command on (a transaction from its `MULTI`). Whether that is safe is
//! decided per command, in code: [`ResendRule`] names the replies that show an earlier attempt landed
//! (idempotent snapshot writes), and [`Commit`] batches are checked as above. A plain pipelined stream
//! command sent again may be applied twice; the stream applier only sends those when the operator turned
//! the in-target checkpoint off, and says so at start-up.
//!
//! # Cluster redirections
//! A node of a cluster target follows `ASK`, `MOVED` and `TRYAGAIN` in place, on side connections, before
//! it reads any later reply (see [`super::redirect`] for the rules and why they are exact); a redirection it
//! does not follow fails the pool with [`TargetError::Topology`].
//!
//! A reconnect that finds another server instance (`run_id` changed: the target restarted, and may have lost
//! what it was given) fails the pool with [`TargetError::Restarted`] instead of writing on.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;

use super::applied::{Applied, Pos};
use super::client::Client;
use super::redirect::Redirects;
use super::stats::TargetStats;
use super::TargetError;
use crate::cluster::Redirect;
use crate::endpoint::RedisAddr;
use crate::resp::{self, Reply, ReplyHead};

/// Pool settings.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Pipelined connections. Default 4.
    pub connections: usize,
    /// Bytes a connection may have queued or unanswered. Default 32 MiB.
    pub max_inflight_bytes: usize,
    /// Connect timeout. Default 10 s.
    pub connect_timeout: Duration,
    /// How long a lost connection is retried before the pool fails. Default 60 s.
    pub reconnect_for: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            connections: 4,
            max_inflight_bytes: 2 << 20,
            connect_timeout: Duration::from_secs(10),
            reconnect_for: Duration::from_secs(60),
        }
    }
}

/// How a reply is judged, in particular when the command is sent again after a reconnect (the first attempt
/// may have been applied before the connection broke).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResendRule {
    /// Every error is an error.
    Strict,
    /// `RESTORE` without REPLACE: `BUSYKEY` on a resend means our first attempt landed.
    BusyKey,
    /// `RENAME tmp key`: `no such key` on a resend means our first attempt landed.
    NoSuchKey,
    /// `RENAMENX tmp key` (`--on-conflict error`): `:0` means the target already holds the key — a conflict,
    /// counted as a rejected write — except on a resend, where it (like `no such key`) means our first
    /// attempt landed.
    RenameNx,
}

/// Where a command stands in a transaction described command by command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tx {
    /// Not in such a transaction (its `replies` frames are checked as one entry).
    Plain,
    /// The `MULTI`.
    Multi,
    /// A command between `MULTI` and `EXEC`: answered `QUEUED` (or refused), then in the `EXEC` result.
    Queued,
    /// The `EXEC`.
    Exec,
}

/// One command (or one opaque MULTI…EXEC group) of a batch, for reply matching and error reports.
#[derive(Clone, Debug)]
pub struct CmdInfo {
    /// Command name for counters and logs ("OTHER": read it from the bytes when logging).
    pub name: &'static str,
    /// The key, shown (escaped) in error logs. Never the value. A copy: a slice of the decoder's input
    /// would keep that whole buffer alive until the reply came.
    pub key: ShortKey,
    /// Reply frames this entry produces (1, or N+2 for an opaque MULTI + N commands + EXEC).
    pub replies: u32,
    /// End offset of this entry's bytes within the batch.
    pub end: usize,
    pub resend: ResendRule,
    pub tx: Tx,
}

/// A key kept for error logs: up to 22 bytes inline (most keys; no allocation), longer ones on the heap.
#[derive(Clone)]
pub enum ShortKey {
    Inline { len: u8, buf: [u8; 22] },
    Heap(Box<[u8]>),
}

impl ShortKey {
    pub fn new(key: &[u8]) -> ShortKey {
        if key.len() <= 22 {
            let mut buf = [0u8; 22];
            buf[..key.len()].copy_from_slice(key);
            ShortKey::Inline {
                len: key.len() as u8,
                buf,
            }
        } else {
            ShortKey::Heap(key.into())
        }
    }
}

impl std::ops::Deref for ShortKey {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ShortKey::Inline { len, buf } => &buf[..*len as usize],
            ShortKey::Heap(b) => b,
        }
    }
}

impl std::fmt::Debug for ShortKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", escape_key(self))
    }
}

/// The marker a [`Batch`] stores in the same transaction as its commands (`SET key value` in `db`), which
/// tells after a lost reply whether the transaction was applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    pub db: u32,
    pub key: Bytes,
    pub value: Bytes,
}

/// Encoded commands for one connection, starting in one database.
#[derive(Debug, Default)]
pub struct Batch {
    /// The db these commands write to (`None`: independent of the selected db). The connection sends SELECT
    /// itself when needed, also after a reconnect. A transaction may SELECT inside; it must select this db
    /// again before its EXEC.
    pub db: Option<u32>,
    pub bytes: BytesMut,
    pub cmds: Vec<CmdInfo>,
    /// Fired when every reply of this batch has arrived.
    pub done: Option<oneshot::Sender<()>>,
    /// Advanced when every reply of this batch (and of every batch before it on this connection) has
    /// arrived: the applied-offset mechanism.
    pub applied: Option<(Arc<Applied>, Pos)>,
    /// The whole batch is one described transaction that also stores this marker (see the module docs).
    pub commit: Option<Commit>,
}

impl Batch {
    pub fn new(db: Option<u32>) -> Batch {
        Batch {
            db,
            ..Default::default()
        }
    }

    /// Record that the bytes appended since the previous entry form one command (or opaque group) with
    /// `replies` reply frames.
    pub fn finish_cmd(&mut self, name: &'static str, key: Bytes, replies: u32, resend: ResendRule) {
        self.cmds.push(CmdInfo {
            name,
            key: ShortKey::new(&key),
            replies,
            end: self.bytes.len(),
            resend,
            tx: Tx::Plain,
        });
    }

    /// Record that the bytes appended since the previous entry are one command of a described transaction.
    pub fn finish_tx(&mut self, name: &'static str, key: Bytes, tx: Tx, resend: ResendRule) {
        self.finish_tx_n(name, key, 1, tx, resend);
    }

    /// Record that the bytes appended since the previous entry are `n` commands of a described transaction,
    /// reported as one (e.g. the commands that build one value).
    pub fn finish_tx_n(
        &mut self,
        name: &'static str,
        key: Bytes,
        n: u32,
        tx: Tx,
        resend: ResendRule,
    ) {
        self.cmds.push(CmdInfo {
            name,
            key: ShortKey::new(&key),
            replies: n,
            end: self.bytes.len(),
            resend,
            tx,
        });
    }

    /// Append a whole command and record it.
    pub fn push(&mut self, name: &'static str, key: &Bytes, args: &[&[u8]], resend: ResendRule) {
        resp::encode_command(&mut self.bytes, args);
        self.finish_cmd(name, key.clone(), 1, resend);
    }

    /// Append a whole command of a described transaction and record it.
    pub fn push_tx(&mut self, name: &'static str, key: &Bytes, args: &[&[u8]], tx: Tx) {
        resp::encode_command(&mut self.bytes, args);
        self.finish_tx(name, key.clone(), tx, ResendRule::Strict);
    }

    pub fn is_empty(&self) -> bool {
        self.cmds.is_empty() && self.done.is_none() && self.applied.is_none()
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Byte range of command `i`.
    fn range(&self, i: usize) -> std::ops::Range<usize> {
        let start = if i == 0 { 0 } else { self.cmds[i - 1].end };
        start..self.cmds[i].end
    }

    /// The same batch without the commands at `drop` (indexes, ascending).
    fn without(&mut self, drop: &[usize]) {
        let mut bytes = BytesMut::with_capacity(self.bytes.len());
        let mut cmds = Vec::with_capacity(self.cmds.len());
        let mut skip = drop.iter().peekable();
        for i in 0..self.cmds.len() {
            if skip.peek() == Some(&&i) {
                skip.next();
                continue;
            }
            bytes.extend_from_slice(&self.bytes[self.range(i)]);
            let mut c = self.cmds[i].clone();
            c.end = bytes.len();
            cmds.push(c);
        }
        self.bytes = bytes;
        self.cmds = cmds;
    }
}

struct Conn {
    tx: mpsc::Sender<(Batch, u32)>,
    inflight: Arc<Semaphore>,
}

/// Several pipelined connections to one target.
pub struct WriterPool {
    conns: Vec<Conn>,
    addr: String,
    max_permits: usize,
    failure: Arc<Mutex<Option<TargetError>>>,
    tasks: tokio_util::task::TaskTracker,
    stats: Arc<TargetStats>,
}

impl WriterPool {
    /// Open `cfg.connections` connections (each authenticated) and start their tasks.
    pub async fn connect(
        addr: &RedisAddr,
        cfg: PoolConfig,
        stats: Arc<TargetStats>,
        cancel: CancellationToken,
    ) -> Result<WriterPool, TargetError> {
        Self::connect_node(addr, cfg, stats, cancel, None).await
    }

    /// [`WriterPool::connect`] for a node of a cluster target: its connections follow the redirections
    /// described in [`super::redirect`] instead of failing with [`TargetError::Topology`].
    pub async fn connect_node(
        addr: &RedisAddr,
        cfg: PoolConfig,
        stats: Arc<TargetStats>,
        cancel: CancellationToken,
        redirects: Option<Arc<Redirects>>,
    ) -> Result<WriterPool, TargetError> {
        let n = cfg.connections.max(1);
        let max_permits = cfg
            .max_inflight_bytes
            .clamp(1 << 16, Semaphore::MAX_PERMITS);
        let failure = Arc::new(Mutex::new(None));
        let tasks = tokio_util::task::TaskTracker::new();
        let mut conns = Vec::with_capacity(n);
        let mut run_id = String::new();
        for i in 0..n {
            let (client, id) =
                super::with_retry("opening a target connection", cfg.reconnect_for, || {
                    open(addr, &cfg)
                })
                .await?;
            if i == 0 {
                run_id = id;
            } else if id != run_id {
                return Err(restarted(addr, &run_id, &id));
            }
            let (tx, rx) = mpsc::channel(64);
            let inflight = Arc::new(Semaphore::new(max_permits));
            let task = ConnTask {
                id: i,
                addr: addr.clone(),
                cfg: cfg.clone(),
                rx,
                inflight: inflight.clone(),
                stats: stats.clone(),
                unanswered: VecDeque::new(),
                cancel: cancel.clone(),
                run_id: run_id.clone(),
                redirects: redirects.clone(),
                side: HashMap::new(),
            };
            let failure = failure.clone();
            tasks.spawn(async move {
                let mut task = task;
                // The failure is recorded before the task (and its receiver) goes: a sender that finds the
                // channel closed then reads why (a `MOVED` is a layout change, not a lost writer).
                let result = task.run(client).await;
                tracing::debug!(conn = task.id, ok = result.is_ok(), "writer connection task ended");
                // Producers waiting for in-flight room on this connection get the failure instead of
                // waiting forever (its unanswered batches' permits went with the task).
                task.inflight.close();
                if let Err(e) = result {
                    if matches!(e, TargetError::Topology { .. }) {
                        // Not an outage: the job starts again on the new layout (see `sync::run`).
                        tracing::info!(error = %e, "target redirected a write; stopping this writer");
                    } else {
                        tracing::error!(error = %e, "target connection failed; its writes could not be applied");
                    }
                    let mut f = failure.lock().unwrap_or_else(|p| p.into_inner());
                    if f.is_none() {
                        *f = Some(e);
                    }
                }
                drop(task);
            });
            conns.push(Conn { tx, inflight });
        }
        tasks.close();
        Ok(WriterPool {
            conns,
            addr: addr.to_string(),
            max_permits,
            failure,
            tasks,
            stats,
        })
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    pub fn stats(&self) -> &Arc<TargetStats> {
        &self.stats
    }

    /// The largest batch one connection takes at a time (its in-flight byte bound).
    pub fn max_batch_bytes(&self) -> usize {
        self.max_permits
    }

    /// The connection that carries writes of `key` (stable for the pool's life).
    pub fn conn_for_key(&self, key: &[u8]) -> usize {
        // FNV-1a: cheap, stable, good enough to spread keys.
        let mut h: u64 = 0xcbf29ce484222325;
        for b in key {
            h ^= *b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        (h % self.conns.len() as u64) as usize
    }

    /// Why the pool stopped: the error of the connection that failed, or "closed".
    pub fn failure(&self) -> Option<TargetError> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(TargetError::duplicate)
    }

    fn closed(&self) -> TargetError {
        self.failure().unwrap_or_else(|| TargetError::Closed {
            addr: self.addr.clone(),
        })
    }

    /// Queue a batch on connection `idx`, waiting while that connection has too many bytes in flight.
    pub async fn send(&self, idx: usize, batch: Batch) -> Result<(), TargetError> {
        let conn = &self.conns[idx];
        let want = (batch.len().max(1)).min(self.max_permits) as u32;
        let permit = conn
            .inflight
            .clone()
            .acquire_many_owned(want)
            .await
            .map_err(|_| self.closed())?;
        permit.forget();
        conn.tx.send((batch, want)).await.map_err(|_| self.closed())
    }

    /// Wait until every batch sent so far has been answered on every connection.
    pub async fn flush(&self) -> Result<(), TargetError> {
        let mut waits = Vec::with_capacity(self.conns.len());
        for i in 0..self.conns.len() {
            let (tx, rx) = oneshot::channel();
            let mut b = Batch::new(None);
            b.done = Some(tx);
            self.send(i, b).await?;
            waits.push(rx);
        }
        for w in waits {
            w.await.map_err(|_| self.closed())?;
        }
        Ok(())
    }

    /// Flush, then close every connection and wait for their tasks.
    pub async fn close(self) -> Result<(), TargetError> {
        tracing::debug!(target_addr = %self.addr, "writer pool: flushing before close");
        let flushed = self.flush().await;
        let WriterPool {
            conns, tasks, addr, ..
        } = self;
        drop(conns);
        tracing::debug!(target_addr = %addr, flushed = flushed.is_ok(), "writer pool: waiting for its connections");
        tasks.wait().await;
        tracing::debug!(target_addr = %addr, "writer pool closed");
        flushed
    }
}

fn restarted(addr: &RedisAddr, before: &str, now: &str) -> TargetError {
    TargetError::Restarted {
        addr: addr.to_string(),
        detail: format!("its run_id changed from {before} to {now}"),
    }
}

/// Connect, authenticate (the target URL's credentials), and read the server's `run_id`. The writer keeps
/// this very connection: a second, unauthenticated one would see every write refused.
async fn open(addr: &RedisAddr, cfg: &PoolConfig) -> Result<(Client, String), TargetError> {
    let mut c = Client::connect_with_timeout(addr, cfg.connect_timeout).await?;
    let info = c.cmd_ok(&[b"INFO", b"server"]).await?;
    let text = info.as_bytes().unwrap_or_default();
    let run_id = crate::info::field(text, "run_id")
        .unwrap_or_default()
        .to_string();
    Ok((c, run_id))
}

/// A transaction described command by command, while its replies arrive.
#[derive(Debug)]
struct TxState {
    /// Index of its `MULTI` in the batch.
    start: usize,
    /// Commands refused while queueing, with the error.
    refused: Vec<(usize, String)>,
}

/// A batch written to the socket whose replies have not all arrived.
struct InFlight {
    batch: Batch,
    permits: u32,
    /// Index of the next command whose reply is expected.
    next: usize,
    /// Reply frames of `cmds[next]` already received (for opaque MULTI…EXEC groups).
    frames_seen: u32,
    /// An internal SELECT was written before this batch; its reply comes first.
    select_pending: bool,
    /// This batch's unanswered part was written again after a reconnect.
    resent: bool,
    /// An error reply seen inside the current opaque group, reported when the group completes.
    group_error: Option<String>,
    /// The described transaction under way.
    tx: Option<TxState>,
    /// When the batch was written (for round-trip latency).
    sent: std::time::Instant,
}

impl InFlight {
    fn new(batch: Batch, permits: u32) -> InFlight {
        InFlight {
            batch,
            permits,
            next: 0,
            frames_seen: 0,
            select_pending: false,
            resent: false,
            group_error: None,
            tx: None,
            sent: std::time::Instant::now(),
        }
    }

    fn waiting(&self) -> bool {
        self.select_pending || self.next < self.batch.cmds.len()
    }
}

struct ConnTask {
    id: usize,
    addr: RedisAddr,
    cfg: PoolConfig,
    rx: mpsc::Receiver<(Batch, u32)>,
    inflight: Arc<Semaphore>,
    stats: Arc<TargetStats>,
    unanswered: VecDeque<InFlight>,
    cancel: CancellationToken,
    /// The server instance the pool started with.
    run_id: String,
    /// A node of a cluster target: the layout's masters (redirections are followed, see
    /// [`super::redirect`]).
    redirects: Option<Arc<Redirects>>,
    /// Connections (outside the pipeline) to the nodes redirected writes go to, this one included, by
    /// `host:port`.
    side: HashMap<String, Client>,
}

enum Ended {
    /// The producer side closed and everything was answered.
    Done,
    /// The connection broke; reconnect and resend.
    Lost(std::io::Error),
}

/// What a reply of a described transaction asks the connection to do next.
enum Then {
    Nothing,
    /// Write the front batch again (moved to the back of the queue): an EXECABORT'ed transaction without
    /// its refused commands.
    Rewrite,
    /// Send this part of a batch where the redirection (the error) says, before any later reply is looked
    /// at (see [`super::redirect`]).
    Forward(Unit, String),
}

/// A part of an unanswered batch that a cluster node redirected (nothing of it was applied).
#[derive(Clone, Copy, Debug)]
enum Unit {
    /// One command, or an opaque `MULTI … EXEC` group: entry `i` of batch `fi`.
    Cmd { fi: usize, i: usize },
    /// A described transaction of batch `fi`: its `MULTI` is entry `start`, its `EXEC` entry `exec`.
    Tx {
        fi: usize,
        start: usize,
        exec: usize,
    },
}

/// What a redirected unit's replies on its new node say.
enum Outcome {
    /// Answered (accepted or counted as rejected).
    Done,
    /// Redirected again.
    Follow(String),
    /// A [`Commit`] transaction discarded for commands refused while queueing: written again without them.
    Again(Unit),
}

impl ConnTask {
    async fn run(&mut self, first: Client) -> Result<(), TargetError> {
        let mut client = first;
        loop {
            match self.serve(client).await? {
                Ended::Done => return Ok(()),
                Ended::Lost(e) => {
                    tracing::warn!(target_addr = %self.addr, conn = self.id, error = %e,
                        unanswered = self.unanswered.len(), "target connection lost; reconnecting");
                    self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    client = self.reconnect().await?;
                }
            }
        }
    }

    async fn reconnect(&mut self) -> Result<Client, TargetError> {
        let deadline = tokio::time::Instant::now() + self.cfg.reconnect_for;
        let mut backoff = Duration::from_millis(50);
        loop {
            match open(&self.addr, &self.cfg).await {
                Ok((c, id)) if id == self.run_id => return Ok(c),
                Ok((_, id)) => return Err(restarted(&self.addr, &self.run_id, &id)),
                Err(e) if !e.is_retryable() => return Err(e),
                Err(e) => {
                    if tokio::time::Instant::now() + backoff > deadline {
                        return Err(e);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.cancel.cancelled() => return Err(e),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// After a reconnect: which unanswered [`Commit`] transactions were applied before the connection broke?
    /// Their markers are read back; a batch whose marker is stored (or a later batch's of the same marker)
    /// was applied and is completed without being sent again. Returns the db the connection is left in.
    async fn settle_commits(&mut self, c: &mut Client) -> Result<u32, TargetError> {
        let mut db = 0u32;
        let mut stored: HashMap<(u32, Bytes), Option<Bytes>> = HashMap::new();
        for f in self.unanswered.iter() {
            if let (Some(cm), true) = (&f.batch.commit, f.waiting()) {
                let k = (cm.db, cm.key.clone());
                if stored.contains_key(&k) {
                    continue;
                }
                if db != cm.db {
                    c.cmd_ok(&[b"SELECT", cm.db.to_string().as_bytes()]).await?;
                    db = cm.db;
                }
                let v = match c.cmd(&[b"GET", &cm.key]).await? {
                    // The checkpoint key's slot moved while the connection was down: the job continues
                    // on the new layout from every slot's checkpoint.
                    Reply::Error(e) if super::is_redirection(&String::from_utf8_lossy(&e)) => {
                        return Err(self.topology(String::from_utf8_lossy(&e).into_owned()));
                    }
                    Reply::Error(e) => return Err(c.command_error(b"GET", &e)),
                    r => r.into_bytes(),
                };
                stored.insert(k, v);
            }
        }
        for ((cdb, key), value) in stored {
            let Some(value) = value else { continue };
            // The last unanswered batch of this marker whose value is stored: it and the ones before it
            // were applied.
            let last = self.unanswered.iter().rposition(|f| {
                f.waiting()
                    && f.batch
                        .commit
                        .as_ref()
                        .is_some_and(|c| c.db == cdb && c.key == key && c.value == value)
            });
            let Some(last) = last else { continue };
            for f in self.unanswered.iter_mut().take(last + 1) {
                let same = f
                    .batch
                    .commit
                    .as_ref()
                    .is_some_and(|c| c.db == cdb && c.key == key);
                if same && f.waiting() {
                    let n = f.batch.cmds.len();
                    let counted = f.batch.cmds[f.next.min(n)..]
                        .iter()
                        .filter(|c| c.tx == Tx::Queued)
                        .count();
                    self.stats
                        .commands_ok
                        .fetch_add(counted as u64, Ordering::Relaxed);
                    self.stats.commits_confirmed.fetch_add(1, Ordering::Relaxed);
                    f.next = n;
                    f.tx = None;
                    f.select_pending = false;
                }
            }
        }
        Ok(db)
    }

    /// Write batches and read replies on one connection until the producer is done or the connection breaks.
    async fn serve(&mut self, mut client: Client) -> Result<Ended, TargetError> {
        let mut current_db = match self.settle_commits(&mut client).await {
            Ok(db) => db,
            Err(e) if e.is_retryable() => {
                return Ok(Ended::Lost(std::io::Error::other(e.to_string())));
            }
            Err(e) => return Err(e),
        };
        self.complete_ready();
        let stream = client.into_stream()?;
        let (mut rd, mut wr) = stream.into_split();
        let mut rbuf = BytesMut::with_capacity(64 * 1024);
        let mut out = BytesMut::new();

        // Resend what was not answered on the previous connection, from the first unanswered command on (a
        // transaction from its MULTI).
        for f in self.unanswered.iter_mut() {
            if !f.waiting() {
                continue;
            }
            out.clear();
            f.select_pending = false;
            if let Some(db) = f.batch.db {
                if db != current_db {
                    write_select(&mut out, db);
                    f.select_pending = true;
                    current_db = db;
                }
            }
            if let Some(t) = f.tx.take() {
                f.next = t.start;
            }
            let start = if f.next == 0 {
                0
            } else {
                f.batch.cmds[f.next - 1].end
            };
            f.frames_seen = 0;
            f.group_error = None;
            f.resent = true;
            self.stats
                .resent
                .fetch_add((f.batch.cmds.len() - f.next) as u64, Ordering::Relaxed);
            out.extend_from_slice(&f.batch.bytes[start..]);
            if let Err(e) = wr.write_all(&out).await {
                return Ok(Ended::Lost(e));
            }
        }

        let mut producer_open = true;
        loop {
            if !producer_open && self.unanswered.is_empty() {
                let _ = wr.shutdown().await;
                return Ok(Ended::Done);
            }
            tokio::select! {
                biased;
                read = rd.read_buf(&mut rbuf) => {
                    match read {
                        Ok(0) => return Ok(Ended::Lost(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof, "closed by the target"))),
                        Ok(_) => loop {
                            let then = self.on_replies(&mut rbuf)?;
                            if matches!(then, Then::Rewrite) {
                                // An EXECABORT'ed transaction goes again without its refused commands.
                                let f = self.unanswered.back_mut().expect("the rewritten batch");
                                out.clear();
                                if let Some(db) = f.batch.db {
                                    if db != current_db {
                                        write_select(&mut out, db);
                                        f.select_pending = true;
                                        current_db = db;
                                    }
                                }
                                out.extend_from_slice(&f.batch.bytes);
                                if let Err(e) = wr.write_all(&out).await {
                                    return Ok(Ended::Lost(e));
                                }
                            }
                            match then {
                                Then::Nothing => break,
                                Then::Rewrite => {}
                                Then::Forward(unit, error) => {
                                    // Sent where the cluster says before any later reply is looked at;
                                    // then the replies already read go on.
                                    self.forward(unit, error).await?;
                                    self.complete_ready();
                                }
                            }
                        },
                        Err(e) => return Ok(Ended::Lost(e)),
                    }
                }
                next = self.rx.recv(), if producer_open => {
                    let Some((batch, permits)) = next else {
                        producer_open = false;
                        continue;
                    };
                    let mut f = InFlight::new(batch, permits);
                    let mut select = BytesMut::new();
                    if let Some(db) = f.batch.db {
                        if db != current_db && !f.batch.cmds.is_empty() {
                            write_select(&mut select, db);
                            f.select_pending = true;
                            current_db = db;
                        }
                    }
                    let bytes = f.batch.bytes.len() + select.len();
                    self.unanswered.push_back(f);
                    if self.unanswered.back().is_some_and(|f| !f.waiting()) {
                        // A marker batch (flush / applied offset): complete it in order.
                        self.complete_ready();
                        continue;
                    }
                    let f = self.unanswered.back().expect("just pushed");
                    let res = if select.is_empty() {
                        wr.write_all(&f.batch.bytes).await
                    } else {
                        match wr.write_all(&select).await {
                            Ok(()) => wr.write_all(&f.batch.bytes).await,
                            Err(e) => Err(e),
                        }
                    };
                    if let Err(e) = res {
                        return Ok(Ended::Lost(e));
                    }
                    self.stats.bytes_written.fetch_add(bytes as u64, Ordering::Relaxed);
                }
            }
        }
    }

    /// Match complete replies in `rbuf` to their commands, up to the first that asks the connection to do
    /// something (returned; the replies after it stay in `rbuf`): write the last batch of the queue again,
    /// or forward a redirected unit. [`Then::Nothing`] once every complete reply is matched.
    fn on_replies(&mut self, rbuf: &mut BytesMut) -> Result<Then, TargetError> {
        loop {
            let (head, len) = match resp::skip_reply(rbuf) {
                Ok(Some(x)) => x,
                Ok(None) => return Ok(Then::Nothing),
                Err(e) => {
                    return Err(TargetError::Protocol {
                        addr: self.addr.to_string(),
                        detail: e.to_string(),
                    })
                }
            };
            let then = self.on_reply(&head, &rbuf[..len])?;
            rbuf.advance(len);
            if !matches!(then, Then::Nothing) {
                return Ok(then);
            }
        }
    }

    fn on_reply(&mut self, head: &ReplyHead, raw: &[u8]) -> Result<Then, TargetError> {
        let text = |r: std::ops::Range<usize>| String::from_utf8_lossy(&raw[r]).into_owned();
        let addr = self.addr.to_string();
        let protocol = |detail: &str| TargetError::Protocol {
            addr: addr.clone(),
            detail: detail.to_string(),
        };
        let Some(fi) = self.unanswered.iter().position(InFlight::waiting) else {
            return Err(protocol("a reply arrived for no command"));
        };
        let f = &mut self.unanswered[fi];
        if f.select_pending {
            f.select_pending = false;
            if let ReplyHead::Error(r) = head {
                // SELECT refused (e.g. a cluster or proxy has only db 0): every command of the batch fails.
                return Err(TargetError::Command {
                    addr: self.addr.to_string(),
                    what: format!("SELECT {}", f.batch.db.unwrap_or(0)),
                    msg: text(r.clone()),
                });
            }
            self.complete_ready();
            return Ok(Then::Nothing);
        }
        let i = f.next;
        let cmd = f.batch.cmds[i].clone();
        match cmd.tx {
            Tx::Plain => {
                f.frames_seen += 1;
                if let Some(r) = head.error() {
                    if f.group_error.is_none() {
                        f.group_error = Some(text(r));
                    }
                }
                if f.frames_seen < cmd.replies {
                    return Ok(Then::Nothing);
                }
                let error = f.group_error.take();
                f.frames_seen = 0;
                f.next += 1;
                let resent = f.resent;
                match error {
                    None if cmd.resend == ResendRule::RenameNx && is_zero(head, raw) && !resent => {
                        self.reject(fi, i, CONFLICT);
                    }
                    None => {
                        self.stats.commands_ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(e) if resent && landed_before(cmd.resend, &e) => {
                        self.stats.commands_ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(e) if super::is_redirection(&e) => {
                        if self.follows(&e, self.is_group(fi, i)) {
                            return Ok(Then::Forward(Unit::Cmd { fi, i }, e));
                        }
                        return Err(self.topology(e));
                    }
                    Some(e) => self.reject(fi, i, &e),
                }
            }
            Tx::Multi => {
                if let ReplyHead::Error(r) = head {
                    return Err(TargetError::Command {
                        addr: self.addr.to_string(),
                        what: "MULTI".into(),
                        msg: text(r.clone()),
                    });
                }
                f.tx = Some(TxState {
                    start: i,
                    refused: Vec::new(),
                });
                f.next += 1;
            }
            Tx::Queued => {
                let Some(t) = f.tx.as_mut() else {
                    return Err(protocol("a queued command outside MULTI"));
                };
                if let ReplyHead::Error(r) = head {
                    if t.refused.last().map(|(j, _)| *j) != Some(i) {
                        t.refused.push((i, text(r.clone())));
                    }
                }
                f.frames_seen += 1;
                if f.frames_seen >= cmd.replies {
                    f.frames_seen = 0;
                    f.next += 1;
                }
            }
            Tx::Exec => {
                let Some(t) = f.tx.take() else {
                    return Err(protocol("EXEC outside MULTI"));
                };
                f.next += 1;
                // Each queued entry owns `replies` items of the result, in order.
                let queued: Vec<usize> = (t.start + 1..i)
                    .filter(|&j| f.batch.cmds[j].tx == Tx::Queued)
                    .collect();
                let expected: usize = queued
                    .iter()
                    .map(|&j| f.batch.cmds[j].replies as usize)
                    .sum();
                match head {
                    ReplyHead::Array { .. } => {
                        let items = resp::array_items(raw)
                            .map_err(|e| protocol(&e.to_string()))?
                            .ok_or_else(|| protocol("EXEC answered an incomplete array"))?;
                        if items.len() != expected {
                            return Err(protocol(&format!(
                                "EXEC answered {} results for {expected} queued commands",
                                items.len()
                            )));
                        }
                        let resent = f.resent;
                        let mut items = items.into_iter();
                        for j in queued {
                            let c = &self.unanswered[fi].batch.cmds[j];
                            let (resend, n) = (c.resend, c.replies as usize);
                            let mut error: Option<String> = None;
                            let mut conflict = false;
                            for (h, range) in items.by_ref().take(n) {
                                if let (Some(r), None) = (h.error(), &error) {
                                    error = Some(text(r));
                                }
                                conflict |=
                                    resend == ResendRule::RenameNx && is_zero(&h, &raw[range]);
                            }
                            match error {
                                Some(e) if !(resent && landed_before(resend, &e)) => {
                                    self.reject(fi, j, &e)
                                }
                                None if conflict && !resent => self.reject(fi, j, CONFLICT),
                                _ => {
                                    self.stats.commands_ok.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                    ReplyHead::Error(r) if raw[r.clone()].starts_with(b"EXECABORT") => {
                        if let Some((_, e)) =
                            t.refused.iter().find(|(_, e)| super::is_redirection(e))
                        {
                            // Not applied, and not to be applied without the refused command.
                            if self.follows(e, true) {
                                let unit = Unit::Tx {
                                    fi,
                                    start: t.start,
                                    exec: i,
                                };
                                return Ok(Then::Forward(unit, e.clone()));
                            }
                            return Err(self.topology(e.clone()));
                        }
                        for (j, e) in &t.refused {
                            self.reject(fi, *j, e);
                        }
                        if self.unanswered[fi].batch.commit.is_some() {
                            return Ok(self.retry_without(fi, &t.refused));
                        }
                        let refused: Vec<usize> = t.refused.iter().map(|(j, _)| *j).collect();
                        for j in queued.into_iter().filter(|j| !refused.contains(j)) {
                            self.reject(fi, j, DISCARDED);
                        }
                    }
                    other => {
                        let e = match other {
                            ReplyHead::Error(r) => text(r.clone()),
                            _ => "EXEC answered no result: the transaction was not applied".into(),
                        };
                        if super::is_redirection(&e) {
                            if self.follows(&e, true) {
                                let unit = Unit::Tx {
                                    fi,
                                    start: t.start,
                                    exec: i,
                                };
                                return Ok(Then::Forward(unit, e));
                            }
                            return Err(self.topology(e));
                        }
                        for j in queued {
                            self.reject(fi, j, &e);
                        }
                    }
                }
            }
        }
        self.complete_ready();
        Ok(Then::Nothing)
    }

    /// An EXECABORT'ed [`Commit`] transaction: take out the commands refused while queueing and queue the
    /// rest to be written again (at the back: everything written before it has been answered or will be
    /// answered first; its producer has nothing else in flight).
    fn retry_without(&mut self, fi: usize, refused: &[(usize, String)]) -> Then {
        let mut f = self.unanswered.remove(fi).expect("the aborted batch");
        let mut drop: Vec<usize> = refused.iter().map(|(j, _)| *j).collect();
        drop.sort_unstable();
        f.batch.without(&drop);
        self.stats
            .transactions_retried
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(target_addr = %self.addr, refused = drop.len(),
            "transaction discarded by the target (EXECABORT): writing it again without the refused commands");
        let left = f.batch.cmds.iter().filter(|c| c.tx == Tx::Queued).count();
        f.next = 0;
        f.tx = None;
        f.frames_seen = 0;
        f.group_error = None;
        f.select_pending = false;
        f.sent = std::time::Instant::now();
        if left == 0 {
            f.next = f.batch.cmds.len();
            self.unanswered.insert(fi, f);
            self.complete_ready();
            return Then::Nothing;
        }
        self.unanswered.push_back(f);
        self.complete_ready();
        Then::Rewrite
    }

    /// Whether this connection follows redirection `e` in place (see [`super::redirect`]): a node of a
    /// cluster target, and `ASK`/`MOVED` — or, for a transaction (nothing behind it on this connection
    /// touches its keys), `TRYAGAIN`/`CLUSTERDOWN`/`LOADING` too.
    fn follows(&self, e: &str, tx: bool) -> bool {
        self.redirects.is_some()
            && match Redirect::parse(e.as_bytes()) {
                Some(Redirect::Ask { .. } | Redirect::Moved { .. }) => true,
                Some(Redirect::TryAgain | Redirect::ClusterDown | Redirect::Loading) => tx,
                None => false,
            }
    }

    /// Whether entry `i` of batch `fi` is an opaque `MULTI … EXEC` group (a transaction) rather than one
    /// command.
    fn is_group(&self, fi: usize, i: usize) -> bool {
        let b = &self.unanswered[fi].batch;
        b.cmds[i].replies > 1 && b.bytes[b.range(i)].starts_with(b"*1\r\n$5\r\nMULTI\r\n")
    }

    /// Send a redirected unit where the cluster says, following further redirections, until it is
    /// answered. A redirection this connection must not follow is a [`TargetError::Topology`] (the job
    /// continues on a new layout from every slot's checkpoint).
    async fn forward(&mut self, mut unit: Unit, first: String) -> Result<(), TargetError> {
        let Some(redirects) = self.redirects.clone() else {
            return Err(self.topology(first));
        };
        let me = self.addr.host_port();
        let single = matches!(unit, Unit::Cmd { fi, i } if !self.is_group(fi, i));
        let deadline = tokio::time::Instant::now() + REDIRECT_RETRY_FOR;
        let mut backoff = Duration::from_millis(20);
        let mut error = first;
        // The node whose answer `error` is, and where the unit goes next (with ASKING?).
        let mut answered_by = me.clone();
        let mut hops = 0u32;
        loop {
            hops += 1;
            let parsed = Redirect::parse(error.as_bytes());
            // Where an ASK or MOVED points (a `:port` without host is the answering node's host; `?` is a
            // node that knows no address to give: the new layout's map will have it).
            let to = parsed.as_ref().and_then(|r| r.resolve(&answered_by));
            let (node, asking) = match (&parsed, to) {
                (Some(Redirect::Ask { .. }), Some(node)) => (node, true),
                (Some(Redirect::Moved { .. }), Some(node)) => {
                    // A failover is not followed in place: the promoted replica may lack writes the old
                    // master acknowledged, which every slot's checkpoint on the new layout accounts for.
                    if !self.is_master(&answered_by, &redirects).await? {
                        return Err(self.topology(format!(
                            "{error} (answered by {answered_by}, a replica now: a failover)"
                        )));
                    }
                    redirects.drift();
                    (node, false)
                }
                (Some(Redirect::TryAgain | Redirect::ClusterDown | Redirect::Loading), _)
                    if !single =>
                {
                    if tokio::time::Instant::now() + backoff > deadline {
                        return Err(self.topology(format!(
                            "{error} (still, after {REDIRECT_RETRY_FOR:?} of retries)"
                        )));
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.cancel.cancelled() => return Err(self.topology(error)),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    self.stats.redirect_retries.fetch_add(1, Ordering::Relaxed);
                    (me.clone(), false)
                }
                _ => return Err(self.topology(error)),
            };
            if redirects.master(&node).is_none() && node != me {
                // A master that joined the cluster lacks what the job gave the others (function
                // libraries): the job continues on the new layout, which brings them.
                return Err(self.topology(format!(
                    "{error} (a node that was not a master of the cluster when the job started)"
                )));
            }
            if single && node == me {
                // Back where the command was refused: a migration was undone under it, and later
                // commands on its key may have been applied here meanwhile.
                return Err(self.topology(format!(
                    "{error} (the redirections led back to {me}: a slot migration was undone)"
                )));
            }
            if hops > 64 {
                return Err(self.topology(format!("{error} (redirected {hops} times)")));
            }
            if node != me && !redirects.forward() {
                return Err(self.topology(format!(
                    "{error} (a flush or a sweep was applied to a node in this run; see target::redirect)"
                )));
            }
            match parsed {
                Some(Redirect::Ask { .. }) => {
                    self.stats.redirected_ask.fetch_add(1, Ordering::Relaxed);
                }
                Some(Redirect::Moved { .. }) => {
                    self.stats.redirected_moved.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
            let mut outcome = self.write_unit(unit, &node, asking, &redirects).await?;
            while let Outcome::Again(u) = outcome {
                unit = u;
                outcome = self.write_unit(unit, &node, asking, &redirects).await?;
            }
            match outcome {
                Outcome::Done => return Ok(()),
                Outcome::Follow(e) => {
                    error = e;
                    answered_by = node;
                }
                Outcome::Again(_) => unreachable!("written again above"),
            }
        }
    }

    /// A connection outside the pipeline to `node` (this node, or a master of the layout).
    async fn side_client(
        &mut self,
        node: &str,
        redirects: &Redirects,
    ) -> Result<&mut Client, TargetError> {
        if !self.side.contains_key(node) {
            let me = node == self.addr.host_port();
            let addr = if me {
                self.addr.clone()
            } else {
                redirects.master(node).cloned().ok_or_else(|| {
                    self.topology(format!("{node} is not a master of the cluster"))
                })?
            };
            let mut c = Client::connect_with_timeout(&addr, SIDE_TIMEOUT).await?;
            if me {
                let info = c.cmd_ok(&[b"INFO", b"server"]).await?;
                let id = crate::info::field(info.as_bytes().unwrap_or_default(), "run_id")
                    .unwrap_or_default()
                    .to_string();
                if id != self.run_id {
                    return Err(restarted(&self.addr, &self.run_id, &id));
                }
            }
            self.side.insert(node.to_string(), c);
        }
        Ok(self.side.get_mut(node).expect("just opened"))
    }

    /// Whether `node` is (still) a master (`role:` of `INFO replication`, which ferry may read where `ROLE`,
    /// an admin command, may be denied). Not knowing is a layout change, not a failure.
    async fn is_master(&mut self, node: &str, redirects: &Redirects) -> Result<bool, TargetError> {
        let c = self.side_client(node, redirects).await?;
        let r = match c.cmd_ok(&[b"INFO", b"replication"]).await {
            Ok(r) => r,
            Err(e) => {
                self.side.remove(node);
                return Err(
                    self.topology(format!("cannot tell whether {node} is still a master: {e}"))
                );
            }
        };
        let text = r.as_bytes().unwrap_or_default();
        Ok(crate::info::field(text, "role") == Some("master"))
    }

    /// Write `unit` to `node` (after `ASKING` when `asking`; after a `SCRIPT LOAD` of every script it runs
    /// by SHA1 that ferry has seen, since that node may never have run it) and judge its replies.
    async fn write_unit(
        &mut self,
        unit: Unit,
        node: &str,
        asking: bool,
        redirects: &Redirects,
    ) -> Result<Outcome, TargetError> {
        let (fi, first, last) = match unit {
            Unit::Cmd { fi, i } => (fi, i, i),
            Unit::Tx { fi, start, exec } => (fi, start, exec),
        };
        let (bytes, frames) = {
            let b = &self.unanswered[fi].batch;
            let range = b.range(first).start..b.range(last).end;
            let frames: usize = b.cmds[first..=last]
                .iter()
                .map(|c| c.replies as usize)
                .sum();
            (b.bytes[range].to_vec(), frames)
        };
        let mut out = BytesMut::with_capacity(bytes.len() + 64);
        let mut extra = 0;
        for body in scripts_run_by_sha(&bytes) {
            resp::encode_command(&mut out, &[b"SCRIPT", b"LOAD", &body]);
            extra += 1;
        }
        if asking {
            resp::encode_command(&mut out, &[b"ASKING"]);
            extra += 1;
        }
        out.extend_from_slice(&bytes);
        let c = self.side_client(node, redirects).await?;
        let mut replies = match c.exchange_raw(&out, extra + frames).await {
            Ok(r) => r,
            Err(e) => {
                // Whether it was applied is unknown: the job continues from every slot's checkpoint.
                self.side.remove(node);
                return Err(e);
            }
        };
        self.stats
            .bytes_written
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        let replies = replies.split_off(extra);
        Ok(match unit {
            Unit::Cmd { fi, i } => self.judge_cmd(fi, i, replies),
            Unit::Tx { fi, start, exec } => self.judge_tx(fi, start, exec, replies, node)?,
        })
    }

    fn judge_cmd(&mut self, fi: usize, i: usize, replies: Vec<Reply>) -> Outcome {
        let f = &self.unanswered[fi];
        let (resend, resent) = (f.batch.cmds[i].resend, f.resent);
        let error = replies.iter().find_map(|r| match r {
            Reply::Error(e) => Some(String::from_utf8_lossy(e).into_owned()),
            _ => None,
        });
        match error {
            Some(e) if super::is_redirection(&e) => return Outcome::Follow(e),
            Some(e) if resent && landed_before(resend, &e) => {
                self.stats.commands_ok.fetch_add(1, Ordering::Relaxed);
            }
            Some(e) => self.reject(fi, i, &e),
            None if resend == ResendRule::RenameNx
                && matches!(replies.first(), Some(Reply::Integer(0)))
                && !resent =>
            {
                self.reject(fi, i, CONFLICT)
            }
            None => {
                self.stats.commands_ok.fetch_add(1, Ordering::Relaxed);
            }
        }
        Outcome::Done
    }

    /// The replies of a redirected transaction: `MULTI`, one per queued command, the `EXEC`.
    fn judge_tx(
        &mut self,
        fi: usize,
        start: usize,
        exec: usize,
        replies: Vec<Reply>,
        node: &str,
    ) -> Result<Outcome, TargetError> {
        let err_text = |e: &Bytes| String::from_utf8_lossy(e).into_owned();
        let mut it = replies.into_iter();
        if let Some(Reply::Error(e)) = it.next() {
            return Err(TargetError::Command {
                addr: node.to_string(),
                what: "MULTI".into(),
                msg: err_text(&e),
            });
        }
        let queued: Vec<usize> = (start + 1..exec)
            .filter(|&j| self.unanswered[fi].batch.cmds[j].tx == Tx::Queued)
            .collect();
        let mut refused: Vec<(usize, String)> = Vec::new();
        for &j in &queued {
            let n = self.unanswered[fi].batch.cmds[j].replies as usize;
            for r in it.by_ref().take(n) {
                if let (Reply::Error(e), false) = (&r, refused.last().is_some_and(|(k, _)| *k == j))
                {
                    refused.push((j, err_text(e)));
                }
            }
        }
        let resent = self.unanswered[fi].resent;
        match it.next() {
            Some(Reply::Array(Some(items))) => {
                let mut items = items.into_iter();
                for j in queued {
                    let c = &self.unanswered[fi].batch.cmds[j];
                    let (resend, n) = (c.resend, c.replies as usize);
                    let mut error = None;
                    let mut conflict = false;
                    for r in items.by_ref().take(n) {
                        match &r {
                            Reply::Error(e) if error.is_none() => error = Some(err_text(e)),
                            Reply::Integer(0) if resend == ResendRule::RenameNx => conflict = true,
                            _ => {}
                        }
                    }
                    match error {
                        Some(e) if !(resent && landed_before(resend, &e)) => self.reject(fi, j, &e),
                        None if conflict && !resent => self.reject(fi, j, CONFLICT),
                        _ => {
                            self.stats.commands_ok.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Ok(Outcome::Done)
            }
            Some(Reply::Error(e)) if e.starts_with(b"EXECABORT") => {
                if let Some((_, e)) = refused.iter().find(|(_, e)| super::is_redirection(e)) {
                    return Ok(Outcome::Follow(e.clone()));
                }
                for (j, e) in &refused {
                    self.reject(fi, *j, e);
                }
                let f = &mut self.unanswered[fi];
                if f.batch.commit.is_some() && start == 0 && exec + 1 == f.batch.cmds.len() {
                    // The whole batch is this transaction: written again without the refused commands.
                    let mut drop: Vec<usize> = refused.iter().map(|(j, _)| *j).collect();
                    drop.sort_unstable();
                    f.batch.without(&drop);
                    f.next = f.batch.cmds.len();
                    self.stats
                        .transactions_retried
                        .fetch_add(1, Ordering::Relaxed);
                    let left = f.batch.cmds.iter().filter(|c| c.tx == Tx::Queued).count();
                    if left == 0 {
                        return Ok(Outcome::Done);
                    }
                    return Ok(Outcome::Again(Unit::Tx {
                        fi,
                        start: 0,
                        exec: f.batch.cmds.len() - 1,
                    }));
                }
                let refused: Vec<usize> = refused.iter().map(|(j, _)| *j).collect();
                for j in queued.into_iter().filter(|j| !refused.contains(j)) {
                    self.reject(fi, j, DISCARDED);
                }
                Ok(Outcome::Done)
            }
            other => {
                let e = match other {
                    Some(Reply::Error(e)) => err_text(&e),
                    _ => "EXEC answered no result: the transaction was not applied".into(),
                };
                if super::is_redirection(&e) {
                    return Ok(Outcome::Follow(e));
                }
                for j in queued {
                    self.reject(fi, j, &e);
                }
                Ok(Outcome::Done)
            }
        }
    }

    fn topology(&self, msg: String) -> TargetError {
        TargetError::Topology {
            addr: self.addr.to_string(),
            msg,
        }
    }

    /// Count and log (once per distinct command and error kind) a write the target rejected.
    fn reject(&self, fi: usize, j: usize, error: &str) {
        let b = &self.unanswered[fi].batch;
        let c = &b.cmds[j];
        let name = if c.name == "OTHER" {
            command_name_of(&b.bytes[b.range(j)])
        } else {
            c.name.to_string()
        };
        if self.stats.record_rejection(&name, error) {
            tracing::error!(target_addr = %self.addr, command = %name, key = %escape_key(&c.key),
                error = %error, "target rejected a write (further rejections of this kind are counted, not logged)");
        }
    }

    /// Retire fully answered batches from the front, in order: release their bytes, fire their markers.
    fn complete_ready(&mut self) {
        while let Some(f) = self.unanswered.front() {
            if f.waiting() {
                break;
            }
            let mut f = self.unanswered.pop_front().expect("front exists");
            self.inflight.add_permits(f.permits as usize);
            if !f.batch.cmds.is_empty() {
                if let Some(l) = self.stats.latency.get() {
                    l.record(f.sent.elapsed());
                }
            }
            if let Some((applied, pos)) = f.batch.applied.take() {
                applied.advance(pos);
            }
            if let Some(done) = f.batch.done.take() {
                let _ = done.send(());
            }
        }
    }
}

/// How long a transaction answered `TRYAGAIN`/`CLUSTERDOWN`/`LOADING` is written again before it counts as a
/// layout change (a slot's migration may take that long).
const REDIRECT_RETRY_FOR: Duration = Duration::from_secs(60);

/// The reply timeout of the connections redirected writes go through.
const SIDE_TIMEOUT: Duration = Duration::from_secs(60);

/// The bodies of the scripts that `EVALSHA`s in `cmds` (encoded commands) run, where ferry has seen them.
fn scripts_run_by_sha(cmds: &[u8]) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut d = resp::CommandDecoder::default();
    while at < cmds.len() {
        d.reset();
        let Ok(Some(n)) = d.decode(&cmds[at..]) else {
            break;
        };
        let args = d.args();
        if args.len() > 1 && cmds[at..][args[0].clone()].eq_ignore_ascii_case(b"EVALSHA") {
            let sha = String::from_utf8_lossy(&cmds[at..][args[1].clone()]).to_ascii_lowercase();
            if let Some(body) = super::scripts::body(&sha) {
                out.push(body);
            }
        }
        at += n;
    }
    out
}

/// The message a `RENAMENX` that found the key already there is counted with.
const CONFLICT: &str =
    "BUSYKEY the target already holds this key (--on-conflict error): the source's value was not written";
/// The message the other commands of an EXECABORT'ed transaction are counted with.
const DISCARDED: &str =
    "EXECABORT the target discarded this transaction because another of its commands was refused";

/// Does this error, on a command sent again after a reconnect, show that the first attempt had landed?
fn landed_before(rule: ResendRule, e: &str) -> bool {
    match rule {
        ResendRule::Strict => false,
        ResendRule::BusyKey => e.starts_with("BUSYKEY"),
        ResendRule::NoSuchKey | ResendRule::RenameNx => e.contains("no such key"),
    }
}

fn is_zero(head: &ReplyHead, raw: &[u8]) -> bool {
    matches!(head, ReplyHead::Integer) && raw.starts_with(b":0\r\n")
}

/// The command name at the start of an encoded command (for logs of commands counted as "OTHER").
fn command_name_of(cmd: &[u8]) -> String {
    let mut d = resp::CommandDecoder::default();
    match d.decode(cmd) {
        Ok(Some(_)) if !d.args().is_empty() => {
            let r = d.args()[0].clone();
            String::from_utf8_lossy(&cmd[r]).to_uppercase()
        }
        _ => "OTHER".into(),
    }
}

fn write_select(out: &mut BytesMut, db: u32) {
    resp::write_array_header(out, 2);
    resp::write_bulk(out, b"SELECT");
    resp::write_bulk_int(out, db as i64);
}

/// A key made safe for a log line: printable ASCII kept, everything else `\xNN`, long keys cut.
pub fn escape_key(key: &[u8]) -> String {
    let mut s = String::with_capacity(key.len().min(128));
    for &b in key.iter().take(128) {
        match b {
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    if key.len() > 128 {
        s.push_str(&format!("…({} bytes)", key.len()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_keys() {
        assert_eq!(escape_key(b"a b\x00\xff\\"), "a b\\x00\\xff\\\\");
        let long = vec![b'k'; 200];
        assert!(escape_key(&long).ends_with("…(200 bytes)"));
    }

    #[test]
    fn batch_entries_keep_a_copy_of_the_key_not_the_buffer_it_came_from() {
        for len in [0usize, 1, 22, 23, 300] {
            let buf = bytes::Bytes::from(vec![b'x'; 4096]);
            let key = buf.slice(..len);
            let mut b = Batch::new(Some(0));
            b.bytes.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
            b.finish_cmd("PING", key.clone(), 1, ResendRule::Strict);
            drop(buf);
            assert_eq!(&b.cmds[0].key[..], &key[..], "{len}-byte key");
            // The batch's copy does not share the 4 KiB buffer: the slice is the last owner now.
            assert!(key.is_unique() || len == 0, "{len}-byte key");
        }
        assert!(std::mem::size_of::<ShortKey>() <= 24);
    }

    #[test]
    fn a_batch_without_some_commands_keeps_the_others_byte_for_byte() {
        let mut b = Batch::new(Some(0));
        let k = Bytes::from_static(b"k");
        b.push_tx("MULTI", &Bytes::new(), &[b"MULTI"], Tx::Multi);
        b.push_tx("SET", &k, &[b"SET", b"k", b"1"], Tx::Queued);
        b.push_tx("OTHER", &k, &[b"NOSUCHCMD", b"k"], Tx::Queued);
        b.push_tx("INCR", &k, &[b"INCR", b"k"], Tx::Queued);
        b.push_tx("EXEC", &Bytes::new(), &[b"EXEC"], Tx::Exec);
        b.without(&[2]);
        assert_eq!(
            &b.bytes[..],
            b"*1\r\n$5\r\nMULTI\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n1\r\n*2\r\n$4\r\nINCR\r\n$1\r\nk\r\n*1\r\n$4\r\nEXEC\r\n"
        );
        assert_eq!(b.cmds.len(), 4);
        assert_eq!(b.cmds.last().unwrap().end, b.bytes.len());
        assert_eq!(
            command_name_of(b"*2\r\n$9\r\nnosuchcmd\r\n$1\r\nk\r\n"),
            "NOSUCHCMD"
        );
    }
}
