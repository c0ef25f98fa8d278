//! The merger: the one writer of the target's replication connection.
//!
//! 1. It accepts the target's connection and answers its handshake ([`super::replica`]).
//! 2. Full sync: `+FULLRESYNC <ferry's replid> 0`, then one RDB built from every source's snapshot as the
//!    pieces arrive ([`crate::rdb::Encoder`], diskless `$EOF:<mark>` framing): the header once every
//!    source's is known (the target's own format), then keys in arrival order, each whole (a big key's
//!    pieces are never interleaved with another key), `EOF` and the CRC-64 when every source's snapshot
//!    ended. While a source is slow, an unknown AUX field every second keeps the target's `repl-timeout`
//!    from firing (Redis skips unknown AUX fields).
//!    The RDB ends with each source's in-target checkpoint key (`<replid>:<offset>:<db>`, the format of the
//!    command path), so the target's data says where every source's stream continues.
//! 3. Stream: every source's command batches in arrival order, each preceded by `SELECT` when its db is not
//!    the stream's; ferry's offset counts these bytes exactly as the target does. What is ready at once
//!    goes out as one `MULTI … EXEC` (at most [`TX_BYTES`], never cutting a batch) that ends by setting the
//!    checkpoint key of every source it holds commands of: a replica applies a transaction whole and never
//!    reports an offset inside one, so at every offset the target acknowledges, its checkpoint keys say
//!    exactly where each source stands. Each transaction is recorded as (ferry offset after it, source,
//!    source offset after it): when the target acknowledges an offset, every transaction up to it is applied,
//!    and that source offset is what its link acknowledges to the source.
//! 4. The target's link drops: it reconnects with `PSYNC <replid> <offset>`; ferry continues from its
//!    backlog (`+CONTINUE`) when it still holds that offset, and asks for a new merged full sync otherwise.
//! 5. ferry restarts (a stop, or kill -9): the target's checkpoint keys and its replication offset are where
//!    everything continues ([`Resume`]): each source with a partial resync from its key, the target with
//!    `+CONTINUE` at the offset it asks for.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::feed::Piece;
use super::replica::{handshake, read_acks, SyncRequest};
use crate::rdb::{Encoder, Magic};
use crate::repl::LinkShared;
use crate::status::SourceStatus;

/// Pieces of one source, in order, and the share of the source's byte budget they hold until written.
pub type Msg = (Vec<Piece>, Option<OwnedSemaphorePermit>);

/// Where a source's stream stands, as its in-target checkpoint records it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourcePos {
    pub replid: String,
    pub offset: i64,
    /// The source db the stream is in at `offset`.
    pub db: u32,
}

impl SourcePos {
    /// The checkpoint value (the command path's format, [`crate::apply::stream::TargetCheckpoint`]).
    pub fn value(&self) -> String {
        format!("{}:{}:{}", self.replid, self.offset, self.db)
    }
}

/// The in-target checkpoint keys: their db, and one key per source (in source order). Shared: the
/// merger takes it once per transaction.
#[derive(Clone, Debug, Default)]
pub struct Checkpoints {
    pub db: u32,
    pub keys: Arc<Vec<Bytes>>,
}

/// A run that continues where a previous ferry left the target: no full sync; the target asks `PSYNC` with
/// one of `accept` (ferry's replication id, or the target's own after a stop made it a master, when nothing
/// was written to it since) and the offset it holds.
#[derive(Clone, Debug)]
pub struct Resume {
    pub accept: Vec<String>,
    /// The offset the target held when ferry started: it must ask for the byte after it.
    pub offset: i64,
}

/// One source as the merger sees it.
pub struct SourceIn {
    pub label: String,
    pub rx: mpsc::Receiver<Msg>,
    pub shared: Arc<LinkShared>,
    pub status: Arc<SourceStatus>,
    /// Where the source starts (a resumed run: its checkpoint; otherwise set by its snapshot's end).
    pub pos: SourcePos,
    /// The rest of the batch being written, and its budget.
    pub pending: VecDeque<Piece>,
    pub held: Option<OwnedSemaphorePermit>,
}

/// Figures of the replication side, for logs and status.
#[derive(Debug, Default)]
pub struct MasterStats {
    /// ferry's replication offset: stream bytes sent to the target.
    pub sent: AtomicI64,
    /// The highest offset the target acknowledged.
    pub acked: AtomicI64,
    /// Bytes of the merged RDB sent (current or last full sync).
    pub rdb_bytes: AtomicU64,
    /// Keys in the merged RDB.
    pub keys: AtomicU64,
    /// Keys of the snapshots not sent because they had expired.
    pub expired_skipped: AtomicU64,
    pub full_syncs: AtomicU64,
    pub partial_syncs: AtomicU64,
    /// The target's replication connection is up (handshake done).
    pub connected: AtomicBool,
}

/// What the target should be told again when it stopped replicating from ferry (it restarted with its
/// own configuration).
pub trait Reattach: Send + Sync {
    /// Make the target a replica of ferry again if it is not; `Ok(true)` when it had to be told.
    fn reattach(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<bool, String>> + Send + '_>>;
}

/// How a merger run ended.
#[derive(Debug)]
pub enum Outcome {
    /// Every source reached its `--once` goal and the target acknowledged all of it.
    Finished,
    /// Stopped on request; what the target acknowledged is in each source's applied offset.
    Stopped { complete: bool },
    /// A new merged full sync is needed (the reason, for the log).
    Restart(String),
}

/// Why a phase stopped.
enum Stop {
    TargetLost(String),
    Restart(String),
    Fatal(String),
    Cancelled,
}

pub struct MergeConfig {
    /// ferry's replication id (40 hex characters), new for every merged full sync.
    pub replid: String,
    /// What the target's `AUTH` must give.
    pub password: String,
    /// The format the merged RDB is written in: the target's own.
    pub target_format: (Magic, u16),
    /// Stream bytes kept for a target that reconnects.
    pub backlog_bytes: usize,
    /// How long the first connection of the target may take.
    pub first_connect_timeout: Duration,
    /// `--once`: finish when every source is done.
    pub once: bool,
    /// Where ferry listens (for messages).
    pub listen_shown: String,
    pub checkpoints: Checkpoints,
    /// Continue a previous run instead of a merged full sync.
    pub resume: Option<Resume>,
}

/// The recent stream, for `+CONTINUE`.
struct Backlog {
    chunks: VecDeque<Bytes>,
    len: usize,
    cap: usize,
}

impl Backlog {
    fn push(&mut self, b: &Bytes) {
        if b.is_empty() {
            return;
        }
        self.len += b.len();
        self.chunks.push_back(b.clone());
        while self.len > self.cap && self.chunks.len() > 1 {
            if let Some(f) = self.chunks.pop_front() {
                self.len -= f.len();
            }
        }
    }

    /// The bytes from stream offset `from` (1-based, as `PSYNC` asks) when `sent` bytes went out, or `None`
    /// when the backlog no longer (or never) held them.
    fn from(&self, from: i64, sent: i64) -> Option<Vec<Bytes>> {
        let first = sent - self.len as i64 + 1;
        if from < first || from > sent + 1 {
            return None;
        }
        let mut skip = (from - first) as usize;
        let mut out = Vec::new();
        for c in &self.chunks {
            if skip >= c.len() {
                skip -= c.len();
                continue;
            }
            out.push(c.slice(skip..));
            skip = 0;
        }
        Some(out)
    }
}

/// The target's connection after its handshake.
struct Conn {
    w: BufWriter<OwnedWriteHalf>,
    acked: watch::Receiver<i64>,
    reader: tokio::task::JoinHandle<String>,
}

pub struct Merger {
    sources: Vec<SourceIn>,
    cfg: MergeConfig,
    listener: Arc<TcpListener>,
    admin: Arc<dyn Reattach>,
    pub stats: Arc<MasterStats>,
    /// Stream bytes sent (ferry's replication offset).
    sent: i64,
    backlog: Backlog,
    /// (ferry offset after a batch, source, source offset after it), in ferry order.
    map: VecDeque<(i64, usize, i64)>,
    /// The db the target's stream is in (`None`: not selected yet).
    db: Option<u32>,
    /// Per source: its snapshot ended / it reached its `--once` goal.
    rdb_done: Vec<bool>,
    done: Vec<bool>,
    /// Next source to look at first (fair turns).
    turn: usize,
    /// The open transaction: ferry's offset where it began, and which sources' commands it holds.
    open: Option<(i64, Vec<bool>)>,
    /// A write to the target failed: the rest of the round still goes into the offset and the backlog
    /// (so a `+CONTINUE` replays whole transactions), then the connection counts as lost.
    broken: Option<String>,
}

fn select_cmd(db: u32) -> Bytes {
    let d = db.to_string();
    Bytes::from(format!("*2\r\n$6\r\nSELECT\r\n${}\r\n{d}\r\n", d.len()))
}

const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";
const MULTI: &[u8] = b"*1\r\n$5\r\nMULTI\r\n";
const EXEC: &[u8] = b"*1\r\n$4\r\nEXEC\r\n";
/// A transaction is closed once it holds this many bytes (the target queues it whole before running it).
pub const TX_BYTES: usize = 1 << 20;
const GETACK: &[u8] = b"*3\r\n$8\r\nREPLCONF\r\n$6\r\nGETACK\r\n$1\r\n*\r\n";
/// Stream idle this long: a `PING` (the target's `repl-timeout` is 60 s by default).
const PING_EVERY: Duration = Duration::from_secs(10);
/// RDB idle this long: a keep-alive AUX field.
const RDB_KEEPALIVE: Duration = Duration::from_secs(1);
/// Pending RDB bytes written out at this size.
const FLUSH_AT: usize = 64 << 10;

impl Merger {
    pub fn new(
        sources: Vec<SourceIn>,
        cfg: MergeConfig,
        listener: Arc<TcpListener>,
        admin: Arc<dyn Reattach>,
        stats: Arc<MasterStats>,
    ) -> Merger {
        let n = sources.len();
        let cap = cfg.backlog_bytes.max(1 << 16);
        Merger {
            sources,
            cfg,
            listener,
            admin,
            stats,
            sent: 0,
            backlog: Backlog {
                chunks: VecDeque::new(),
                len: 0,
                cap,
            },
            map: VecDeque::new(),
            db: None,
            rdb_done: vec![false; n],
            done: vec![false; n],
            turn: 0,
            open: None,
            broken: None,
        }
    }

    /// Run until `--once` is reached, a stop, or a new full sync is needed. `Err`: the job cannot go on.
    pub async fn run(mut self, cancel: &CancellationToken) -> Result<Outcome, String> {
        if self.cfg.resume.is_some() {
            return self.run_resumed(cancel).await;
        }
        let mut conn = match self.accept(true, cancel).await {
            Ok((conn, _)) => conn,
            Err(Stop::Cancelled) => return Ok(Outcome::Stopped { complete: false }),
            Err(Stop::Restart(m)) => return Ok(Outcome::Restart(m)),
            Err(Stop::Fatal(m) | Stop::TargetLost(m)) => return Err(m),
        };
        let synced = match self.full_sync(&mut conn, cancel).await {
            Ok(()) => self.wait_loaded(&mut conn, cancel).await,
            Err(e) => Err(e),
        };
        match synced {
            Ok(()) => {}
            Err(Stop::Cancelled) => {
                conn.reader.abort();
                return Ok(Outcome::Stopped { complete: false });
            }
            Err(Stop::TargetLost(m)) => {
                return Ok(Outcome::Restart(format!(
                    "the target's replication link dropped during the merged full sync ({m})"
                )))
            }
            Err(Stop::Restart(m)) => return Ok(Outcome::Restart(m)),
            Err(Stop::Fatal(m)) => return Err(m),
        }
        self.stream_until_end(conn, cancel).await
    }

    /// A run that continues a previous ferry's: the target's `PSYNC` must ask for a replication id of
    /// [`Resume`] (its offset is what it holds), then the stream goes on.
    async fn run_resumed(mut self, cancel: &CancellationToken) -> Result<Outcome, String> {
        let conn = match self.accept(true, cancel).await {
            Ok((conn, _)) => conn,
            Err(Stop::Cancelled) => return Ok(Outcome::Stopped { complete: false }),
            Err(Stop::Restart(m) | Stop::TargetLost(m)) => return Ok(Outcome::Restart(m)),
            Err(Stop::Fatal(m)) => return Err(m),
        };
        self.stream_until_end(conn, cancel).await
    }

    async fn stream_until_end(
        mut self,
        mut conn: Conn,
        cancel: &CancellationToken,
    ) -> Result<Outcome, String> {
        loop {
            match self.stream(&mut conn, cancel).await {
                Ok(o) => {
                    conn.reader.abort();
                    return Ok(o);
                }
                Err(Stop::TargetLost(why)) => {
                    conn.reader.abort();
                    self.stats.connected.store(false, Ordering::Relaxed);
                    tracing::warn!(reason = %why, offset = self.sent,
                        "the target's replication link dropped; waiting for it to reconnect and continue from \
                         ferry's backlog");
                    match self.accept(false, cancel).await {
                        Ok((c, _)) => {
                            conn = c;
                            self.broken = None;
                        }
                        Err(Stop::Cancelled) => return Ok(Outcome::Stopped { complete: true }),
                        Err(Stop::Restart(m)) => return Ok(Outcome::Restart(m)),
                        Err(Stop::Fatal(m) | Stop::TargetLost(m)) => return Err(m),
                    }
                }
                Err(Stop::Restart(m)) => {
                    conn.reader.abort();
                    return Ok(Outcome::Restart(m));
                }
                Err(Stop::Cancelled) => {
                    conn.reader.abort();
                    return Ok(Outcome::Stopped { complete: true });
                }
                Err(Stop::Fatal(m)) => {
                    conn.reader.abort();
                    return Err(m);
                }
            }
        }
    }

    /// Wait for the target to connect and ask for a sync. The first time (`first`) a `+FULLRESYNC` is the
    /// answer whatever it asks; later a `+CONTINUE` from the backlog, or a restart.
    async fn accept(
        &mut self,
        first: bool,
        cancel: &CancellationToken,
    ) -> Result<(Conn, SyncRequest), Stop> {
        let started = Instant::now();
        let mut next_warn = started + Duration::from_secs(30);
        loop {
            let accepted = tokio::select! {
                _ = cancel.cancelled() => return Err(Stop::Cancelled),
                a = tokio::time::timeout(Duration::from_secs(2), self.listener.accept()) => a,
            };
            let (mut stream, peer) = match accepted {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    return Err(Stop::Fatal(format!(
                        "ferry's replication port {}: accept failed: {e}",
                        self.cfg.listen_shown
                    )))
                }
                Err(_) => {
                    if first && started.elapsed() >= self.cfg.first_connect_timeout {
                        return Err(Stop::Fatal(format!(
                            "the target did not connect to ferry's replication port {} within {:?} of REPLICAOF: \
                             it cannot reach that address (give --replication-listen an address the target \
                             can reach); nothing was written",
                            self.cfg.listen_shown, self.cfg.first_connect_timeout
                        )));
                    }
                    if !first {
                        match self.admin.reattach().await {
                            Ok(true) => tracing::warn!(
                                "the target was no longer a replica of ferry (it restarted?): REPLICAOF sent again"
                            ),
                            Ok(false) => {}
                            Err(e) => tracing::warn!(error = %e, "cannot reach the target to check its role"),
                        }
                        if Instant::now() >= next_warn {
                            next_warn = Instant::now() + Duration::from_secs(30);
                            tracing::warn!(waited_s = started.elapsed().as_secs(),
                                "still waiting for the target to reconnect to ferry's replication port");
                        }
                    }
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let req = match handshake(&mut stream, &self.cfg.password, Duration::from_secs(10))
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(peer = %peer, error = %e, "refused a connection on ferry's replication port");
                    continue;
                }
            };
            if !req.capa_eof {
                return Err(Stop::Fatal(
                    "the target does not read diskless (EOF-marked) RDB transfers (Redis before 2.8.18): master \
                     mode cannot serve it; use --apply commands"
                        .into(),
                ));
            }
            let (r, w) = stream.into_split();
            let (tx, rx) = watch::channel(-1);
            let reader = tokio::spawn(read_acks(r, tx));
            let mut conn = Conn {
                w: BufWriter::with_capacity(FLUSH_AT, w),
                acked: rx,
                reader,
            };
            if let Some(resume) = self.cfg.resume.take() {
                // A resumed run's first connection: the target holds the copy its checkpoint keys describe,
                // up to the offset it asks for.
                if !(resume.accept.contains(&req.replid) && req.offset == resume.offset + 1) {
                    conn.reader.abort();
                    return Err(Stop::Restart(format!(
                        "the target asked for {} {}, not for the copy ferry left it with: a new merged full sync",
                        req.replid, req.offset
                    )));
                }
                self.sent = req.offset - 1;
                self.rdb_done.iter_mut().for_each(|d| *d = true);
                let line = format!("+CONTINUE {}\r\n", self.cfg.replid);
                self.write_flush(&mut conn, line.as_bytes()).await?;
                self.stats.partial_syncs.fetch_add(1, Ordering::Relaxed);
                self.stats.sent.store(self.sent, Ordering::Relaxed);
                self.stats.connected.store(true, Ordering::Relaxed);
                tracing::info!(peer = %peer, offset = self.sent,
                    "the target continued where the previous run left it (+CONTINUE): no new full sync");
                return Ok((conn, req));
            }
            if first {
                tracing::info!(peer = %peer, asked = %format!("{} {}", req.replid, req.offset),
                    "the target connected: merged full sync");
                let line = format!("+FULLRESYNC {} 0\r\n", self.cfg.replid);
                self.write_flush(&mut conn, line.as_bytes()).await?;
                self.stats.full_syncs.fetch_add(1, Ordering::Relaxed);
                return Ok((conn, req));
            }
            let continued = (req.replid == self.cfg.replid)
                .then(|| self.backlog.from(req.offset, self.sent))
                .flatten();
            let Some(rest) = continued else {
                conn.reader.abort();
                return Err(Stop::Restart(format!(
                    "the target reconnected asking for {} {} while ferry is at {} {} with {} bytes of backlog: a \
                     new merged full sync",
                    req.replid, req.offset, self.cfg.replid, self.sent, self.backlog.len
                )));
            };
            tracing::info!(peer = %peer, from = req.offset, bytes = self.sent + 1 - req.offset,
                "the target reconnected: continuing from ferry's backlog");
            let line = format!("+CONTINUE {}\r\n", self.cfg.replid);
            self.write_flush(&mut conn, line.as_bytes()).await?;
            for b in rest {
                conn.w.write_all(&b).await.map_err(lost)?;
            }
            conn.w.flush().await.map_err(lost)?;
            self.stats.partial_syncs.fetch_add(1, Ordering::Relaxed);
            self.stats.connected.store(true, Ordering::Relaxed);
            return Ok((conn, req));
        }
    }

    async fn write_flush(&self, conn: &mut Conn, b: &[u8]) -> Result<(), Stop> {
        conn.w.write_all(b).await.map_err(lost)?;
        conn.w.flush().await.map_err(lost)
    }

    /// The next piece of a source allowed by `mask` without waiting: the rest of the batch last taken
    /// first (fewer switches between sources), then the sources in turn.
    fn try_next(&mut self, mask: &dyn Fn(usize) -> bool) -> Option<(usize, Option<Piece>)> {
        let n = self.sources.len();
        for k in 0..n {
            let i = (self.turn + k) % n;
            if !mask(i) {
                continue;
            }
            let s = &mut self.sources[i];
            loop {
                if let Some(p) = s.pending.pop_front() {
                    self.turn = i;
                    return Some((i, Some(p)));
                }
                match s.rx.try_recv() {
                    Ok((batch, permit)) => {
                        s.pending = batch.into();
                        s.held = permit;
                    }
                    Err(mpsc::error::TryRecvError::Empty) => {
                        // The batch is written: its share of the source's budget goes back.
                        s.held = None;
                        break;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => return Some((i, None)),
                }
            }
        }
        self.turn = (self.turn + 1) % n;
        None
    }

    /// The next piece of a source allowed by `mask`, waiting for one.
    async fn next(&mut self, mask: &(dyn Fn(usize) -> bool + Sync)) -> (usize, Option<Piece>) {
        loop {
            if let Some(r) = self.try_next(mask) {
                return r;
            }
            let turn = self.turn;
            let sources = &mut self.sources;
            let n = sources.len();
            let (i, m) = std::future::poll_fn(|cx| {
                for k in 0..n {
                    let i = (turn + k) % n;
                    if !mask(i) {
                        continue;
                    }
                    if let Poll::Ready(m) = sources[i].rx.poll_recv(cx) {
                        return Poll::Ready((i, m));
                    }
                }
                Poll::Pending
            })
            .await;
            let Some((batch, permit)) = m else {
                return (i, None);
            };
            let s = &mut self.sources[i];
            s.pending = batch.into();
            s.held = permit;
            self.turn = i;
        }
    }

    fn ended(&self, i: usize) -> Stop {
        Stop::Fatal(format!(
            "{}: its feed ended unexpectedly (see the error logged before)",
            self.sources[i].label
        ))
    }

    async fn full_sync(&mut self, conn: &mut Conn, cancel: &CancellationToken) -> Result<(), Stop> {
        let n = self.sources.len();
        // 1. Every source's header (keep-alive newlines meanwhile, as a master preparing its RDB sends).
        let mut headers: Vec<Option<(Magic, u16)>> = vec![None; n];
        while headers.iter().any(Option::is_none) {
            let mask = |i: usize| headers[i].is_none();
            let got = tokio::select! {
                _ = cancel.cancelled() => return Err(Stop::Cancelled),
                m = self.next(&mask) => Some(m),
                _ = tokio::time::sleep(RDB_KEEPALIVE) => None,
            };
            let Some((i, m)) = got else {
                self.write_flush(conn, b"\n").await?;
                continue;
            };
            let Some(piece) = m else {
                return Err(self.ended(i));
            };
            match piece {
                Piece::Header { magic, version } => {
                    let (tm, tv) = self.cfg.target_format;
                    if !crate::target::restore_compatible(version, tv) {
                        return Err(Stop::Fatal(format!(
                            "{}: its snapshot is RDB version {version} ({magic:?}), which the target (RDB {tv}, \
                             {tm:?}) cannot load; master mode forwards values as they are: use --apply commands, \
                             which re-encodes them",
                            self.sources[i].label
                        )));
                    }
                    headers[i] = Some((magic, version));
                }
                other => return Err(self.unexpected(i, &other, "its RDB header")),
            }
        }
        // 2. The RDB.
        let mark = super::random_hex(40);
        self.write_flush(conn, format!("$EOF:{mark}\r\n").as_bytes())
            .await?;
        let mut enc = Encoder::new();
        let (magic, version) = self.cfg.target_format;
        enc.header(magic, version);
        enc.aux(b"ferry-ver", env!("CARGO_PKG_VERSION").as_bytes());
        let mut out: Vec<Bytes> = Vec::new();
        let mut rdb_db: Option<u32> = None;
        // A big key being written: only its source is read until it ends.
        let mut big: Option<usize> = None;
        let mut functions = std::collections::HashSet::new();
        let mut keys = 0u64;
        let mut last_write = Instant::now();
        while self.rdb_done.iter().any(|d| !d) {
            let rdb_done = self.rdb_done.clone();
            let mask = move |i: usize| match big {
                Some(b) => i == b,
                None => !rdb_done[i],
            };
            let got = match self.try_next(&mask) {
                Some(m) => Some(m),
                None => {
                    // Nothing ready: what is pending goes out before waiting.
                    enc.take_into(&mut out);
                    if !out.is_empty() {
                        self.write_all(conn, &mut out, &mut last_write).await?;
                        conn.w.flush().await.map_err(lost)?;
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return Err(Stop::Cancelled),
                        m = self.next(&mask) => Some(m),
                        _ = tokio::time::sleep_until(last_write + RDB_KEEPALIVE) => None,
                    }
                }
            };
            let Some((i, m)) = got else {
                if big.is_none() {
                    enc.aux(b"ferry-keepalive", b"");
                    enc.take_into(&mut out);
                    self.write_all(conn, &mut out, &mut last_write).await?;
                    conn.w.flush().await.map_err(lost)?;
                }
                continue;
            };
            let Some(piece) = m else {
                return Err(self.ended(i));
            };
            match piece {
                Piece::Script(body) => enc.aux(b"lua", &body),
                Piece::Function(code) => {
                    // The same library from several sources is loaded once.
                    if functions.insert(code.clone()) {
                        enc.function(&code);
                    }
                }
                Piece::ModuleAux { module_id, raw } => enc.module_aux(module_id, &raw),
                Piece::Framed {
                    first_db,
                    last_db,
                    bytes,
                    keys: n,
                } => {
                    if rdb_db != Some(first_db) {
                        enc.select_db(first_db);
                    }
                    rdb_db = Some(last_db);
                    enc.raw(bytes, &mut out);
                    keys += n;
                }
                Piece::Entry { db, entry } => {
                    if rdb_db != Some(db) {
                        enc.select_db(db);
                        rdb_db = Some(db);
                    }
                    enc.key_head(
                        entry.expire_ms,
                        entry.idle,
                        entry.freq,
                        entry.rdb_type,
                        &entry.key,
                    );
                    enc.raw(entry.payload, &mut out);
                    keys += 1;
                }
                Piece::BigStart { db, head } => {
                    if rdb_db != Some(db) {
                        enc.select_db(db);
                        rdb_db = Some(db);
                    }
                    enc.key_head(head.expire_ms, None, None, head.rdb_type, &head.key);
                    big = Some(i);
                }
                Piece::Raw(b) => enc.raw(b, &mut out),
                Piece::BigEnd => {
                    big = None;
                    keys += 1;
                }
                Piece::RdbEnd { offset, replid } => {
                    self.rdb_done[i] = true;
                    // A master's stream after a full sync begins with a SELECT: db 0 until then.
                    self.sources[i].pos = SourcePos {
                        replid,
                        offset,
                        db: 0,
                    };
                    // The snapshot covers the source up to `offset`: applied once the target loaded it
                    // (its first ACK, of ferry's offset 0).
                    self.map.push_back((0, i, offset));
                    tracing::info!(source = %self.sources[i].label, offset,
                        "this source's snapshot is in the merged RDB");
                }
                Piece::Restart(m) => return Err(Stop::Restart(m)),
                Piece::Fatal(m) => return Err(Stop::Fatal(m)),
                other => return Err(self.unexpected(i, &other, "its snapshot")),
            }
            if enc.pending() >= FLUSH_AT {
                enc.take_into(&mut out);
            }
            if !out.is_empty() {
                self.write_all(conn, &mut out, &mut last_write).await?;
            }
            self.stats.rdb_bytes.store(enc.written(), Ordering::Relaxed);
        }
        // Each source's checkpoint, with the data it describes.
        let ck = self.cfg.checkpoints.clone();
        if !ck.keys.is_empty() {
            enc.select_db(ck.db);
            for (key, s) in ck.keys.iter().zip(&self.sources) {
                enc.key_head(None, None, None, 0, key);
                let mut v = bytes::BytesMut::new();
                crate::rdb::encoder::put_string(&mut v, s.pos.value().as_bytes());
                enc.raw(v.freeze(), &mut out);
            }
        }
        enc.finish(&mut out);
        self.write_all(conn, &mut out, &mut last_write).await?;
        self.write_flush(conn, mark.as_bytes()).await?;
        self.stats.rdb_bytes.store(enc.written(), Ordering::Relaxed);
        self.stats.keys.store(keys, Ordering::Relaxed);
        self.stats.connected.store(true, Ordering::Relaxed);
        tracing::info!(
            bytes = enc.written(),
            keys,
            sources = n,
            "merged RDB sent to the target; streaming every source's commands"
        );
        Ok(())
    }

    fn unexpected(&self, i: usize, p: &Piece, during: &str) -> Stop {
        Stop::Fatal(format!(
            "internal: {} sent {:?} during {during}",
            self.sources[i].label,
            std::mem::discriminant(p)
        ))
    }

    async fn write_all(
        &self,
        conn: &mut Conn,
        out: &mut Vec<Bytes>,
        last: &mut Instant,
    ) -> Result<(), Stop> {
        for b in out.drain(..) {
            conn.w.write_all(&b).await.map_err(lost)?;
        }
        *last = Instant::now();
        Ok(())
    }

    /// Write stream bytes (counted in ferry's offset and kept in the backlog). A failed write is noted, not
    /// returned: the round being written is completed in the backlog first (see `broken`).
    async fn emit(&mut self, conn: &mut Conn, b: Bytes) -> Result<(), Stop> {
        self.sent += b.len() as i64;
        self.backlog.push(&b);
        if self.broken.is_none() {
            if let Err(e) = conn.w.write_all(&b).await {
                self.broken = Some(format!("writing to the target failed: {e}"));
            }
        }
        Ok(())
    }

    /// Everything up to `acked` is applied on the target: tell each source's link.
    fn credit(&mut self, acked: i64) {
        self.stats.acked.fetch_max(acked, Ordering::Relaxed);
        while let Some(&(end, src, off)) = self.map.front() {
            if end > acked {
                break;
            }
            self.map.pop_front();
            let s = &self.sources[src];
            s.shared.set_applied(1, off);
            s.status.set_applied_offset(off);
        }
    }

    /// After the merged full sync: wait for the target's first ACK, sent once it has loaded the RDB. It reads
    /// nothing of the stream before (bytes right after the EOF mark would be taken for RDB bytes: a master
    /// puts a diskless replica online at its first ACK, `repl_put_online_on_ack`). The ACK may have come
    /// already; the load is logged either way (operators and tests wait for that line).
    async fn wait_loaded(
        &mut self,
        conn: &mut Conn,
        cancel: &CancellationToken,
    ) -> Result<(), Stop> {
        let started = Instant::now();
        while *conn.acked.borrow() < 0 {
            tokio::select! {
                _ = cancel.cancelled() => return Err(Stop::Cancelled),
                r = conn.acked.changed() => {
                    if r.is_err() {
                        let why = (&mut conn.reader).await.unwrap_or_else(|e| e.to_string());
                        return Err(Stop::TargetLost(why));
                    }
                }
                _ = tokio::time::sleep(Duration::from_secs(30)) => {
                    tracing::info!(waited_s = started.elapsed().as_secs(),
                        "the target is still loading the merged RDB");
                }
            }
        }
        tracing::info!(
            waited_ms = started.elapsed().as_millis() as u64,
            "the target loaded the merged RDB"
        );
        Ok(())
    }

    async fn stream(
        &mut self,
        conn: &mut Conn,
        cancel: &CancellationToken,
    ) -> Result<Outcome, Stop> {
        let mut last_write = Instant::now();
        let mut getack_at: Option<Instant> = None;
        loop {
            let acked = *conn.acked.borrow_and_update();
            self.credit(acked);
            let all_done = self.done.iter().all(|d| *d);
            if all_done || cancel.is_cancelled() || self.broken.is_some() {
                self.close_tx(conn).await?;
            }
            if let Some(why) = self.broken.take() {
                return Err(Stop::TargetLost(why));
            }
            if self.cfg.once && all_done && self.map.is_empty() {
                return Ok(Outcome::Finished);
            }
            if cancel.is_cancelled() {
                return self.drain(conn).await;
            }
            if all_done && getack_at.map_or(true, |t| t.elapsed() >= Duration::from_millis(100)) {
                // Waiting for the target's last ACK: ask for it.
                self.emit(conn, Bytes::from_static(GETACK)).await?;
                conn.w.flush().await.map_err(lost)?;
                getack_at = Some(Instant::now());
                last_write = Instant::now();
            }
            let done = self.done.clone();
            let mask = move |i: usize| !done[i];
            let got = match self.try_next(&mask) {
                Some(m) => Some(m),
                None => {
                    // Nothing more ready: what was taken goes out as one transaction.
                    self.close_tx(conn).await?;
                    conn.w.flush().await.map_err(lost)?;
                    let tick = if all_done {
                        Instant::now() + Duration::from_millis(100)
                    } else {
                        last_write + PING_EVERY
                    };
                    tokio::select! {
                        _ = cancel.cancelled() => continue,
                        m = self.next(&mask), if !all_done => Some(m),
                        r = conn.acked.changed() => {
                            if r.is_err() {
                                let why = (&mut conn.reader).await.unwrap_or_else(|e| e.to_string());
                                return Err(Stop::TargetLost(why));
                            }
                            continue;
                        }
                        _ = tokio::time::sleep_until(tick) => None,
                    }
                }
            };
            let Some((i, m)) = got else {
                if last_write.elapsed() >= PING_EVERY {
                    self.emit(conn, Bytes::from_static(PING)).await?;
                    conn.w.flush().await.map_err(lost)?;
                    last_write = Instant::now();
                }
                continue;
            };
            let Some(piece) = m else {
                return Err(self.ended(i));
            };
            match piece {
                Piece::Commands {
                    cmds,
                    end_offset,
                    src_db,
                } => {
                    if self.open.is_none() {
                        self.open = Some((self.sent, vec![false; self.sources.len()]));
                        self.emit(conn, Bytes::from_static(MULTI)).await?;
                    }
                    for (db, cmd) in cmds {
                        if self.db != Some(db) {
                            self.emit(conn, select_cmd(db)).await?;
                            self.db = Some(db);
                        }
                        self.emit(conn, cmd.into_raw()).await?;
                    }
                    let pos = &mut self.sources[i].pos;
                    pos.offset = end_offset;
                    pos.db = src_db;
                    let sent = self.sent;
                    if let Some((start, touched)) = self.open.as_mut() {
                        touched[i] = true;
                        if sent - *start >= TX_BYTES as i64 {
                            self.close_tx(conn).await?;
                        }
                    }
                    last_write = Instant::now();
                    self.stats.sent.store(self.sent, Ordering::Relaxed);
                }
                Piece::Replid(r) => self.sources[i].pos.replid = r,
                Piece::Done => {
                    self.done[i] = true;
                    tracing::info!(source = %self.sources[i].label, "this source reached its --once goal");
                }
                Piece::Restart(m) => return Err(Stop::Restart(m)),
                Piece::Fatal(m) => return Err(Stop::Fatal(m)),
                other => return Err(self.unexpected(i, &other, "the stream")),
            }
        }
    }

    /// End the open transaction: each source it holds commands of gets its checkpoint set inside it, and is
    /// recorded as applied up to there once the target acknowledges the offset after the `EXEC`.
    async fn close_tx(&mut self, conn: &mut Conn) -> Result<(), Stop> {
        let Some((_, touched)) = self.open.take() else {
            return Ok(());
        };
        let ck = self.cfg.checkpoints.clone();
        for (i, t) in touched.iter().enumerate() {
            let Some(key) = ck.keys.get(i).filter(|_| *t) else {
                continue;
            };
            if self.db != Some(ck.db) {
                self.emit(conn, select_cmd(ck.db)).await?;
                self.db = Some(ck.db);
            }
            let value = self.sources[i].pos.value();
            let mut cmd = bytes::BytesMut::with_capacity(key.len() + value.len() + 32);
            crate::resp::encode_command(&mut cmd, &[b"SET", key, value.as_bytes()]);
            self.emit(conn, cmd.freeze()).await?;
        }
        self.emit(conn, Bytes::from_static(EXEC)).await?;
        for (i, t) in touched.iter().enumerate() {
            if *t {
                self.map
                    .push_back((self.sent, i, self.sources[i].pos.offset));
            }
        }
        self.stats.sent.store(self.sent, Ordering::Relaxed);
        Ok(())
    }

    /// A stop while streaming: what was sent is acknowledged (asked for, up to 10 s), then the run ends.
    async fn drain(&mut self, conn: &mut Conn) -> Result<Outcome, Stop> {
        let deadline = Instant::now() + Duration::from_secs(10);
        conn.w.flush().await.map_err(lost)?;
        let want = self.sent;
        self.emit(conn, Bytes::from_static(GETACK)).await?;
        conn.w.flush().await.map_err(lost)?;
        loop {
            let acked = *conn.acked.borrow_and_update();
            self.credit(acked);
            if acked >= want {
                return Ok(Outcome::Stopped { complete: true });
            }
            tokio::select! {
                r = conn.acked.changed() => if r.is_err() {
                    return Err(Stop::TargetLost("closed while draining".into()));
                },
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(sent = want, acked,
                        "stopping: the target did not acknowledge everything sent within 10 s");
                    return Ok(Outcome::Stopped { complete: false });
                }
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    self.emit(conn, Bytes::from_static(GETACK)).await?;
                    conn.w.flush().await.map_err(lost)?;
                }
            }
        }
    }
}

fn lost(e: std::io::Error) -> Stop {
    Stop::TargetLost(format!("writing to the target failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backlog_serves_exactly_the_offsets_it_holds() {
        let mut b = Backlog {
            chunks: VecDeque::new(),
            len: 0,
            cap: 10,
        };
        let mut sent = 0i64;
        for chunk in [&b"abcd"[..], b"efgh", b"ijkl"] {
            b.push(&Bytes::copy_from_slice(chunk));
            sent += chunk.len() as i64;
        }
        // 12 bytes sent, the oldest chunk dropped: bytes 5..=12 held.
        assert_eq!(b.len, 8);
        let join = |v: Vec<Bytes>| v.iter().flat_map(|c| c.to_vec()).collect::<Vec<u8>>();
        assert_eq!(b.from(4, sent), None);
        assert_eq!(join(b.from(5, sent).unwrap()), b"efghijkl");
        assert_eq!(join(b.from(7, sent).unwrap()), b"ghijkl");
        assert_eq!(join(b.from(13, sent).unwrap()), b"");
        assert_eq!(b.from(14, sent), None);
    }
}
