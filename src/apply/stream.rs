//! Applying the replication command stream of one source to one target.
//!
//! Commands go to the target in source order through one ordered connection, as the very bytes the master
//! sent (no re-encoding). Replication chatter (PING, REPLCONF) is consumed; `REPLCONF GETACK` asks the
//! link for an immediate ACK. Every batch carries the position (master offset, stream db) just after its
//! last command, which becomes the applied position when the target has answered it.
//!
//! # Exact by default: every batch is one transaction with its checkpoint
//! With an in-target checkpoint (the default), each batch is `MULTI`, the commands, `SET <checkpoint key>
//! <replid>:<offset>:<db>`, `EXEC`: the target holds exactly the position its data reflects, even after
//! kill -9, and the writer pool can tell after a lost reply whether the batch was applied (it reads the key
//! back) instead of sending it again — so a target connection lost under load never applies an `INCR`
//! twice. At most one such batch per stream is unanswered; commands that arrive meanwhile join the next
//! batch (group commit), so the batch grows with the load instead of the round trips adding up. This is also
//! what makes an `EXECABORT` recoverable: the pool takes out the commands the target refused while queueing
//! and writes the rest again before anything later of this source is sent. The source's own `MULTI`/`EXEC`
//! are dropped (the batch is already a transaction; nesting is an error) and never split across batches.
//! The stream's `SELECT`s become `SELECT`s inside the transaction, which ends in the db it began in.
//!
//! Without it (`--no-target-checkpoint`), batches are pipelined as they come: faster on a very slow link to
//! the target, but a command re-sent after a lost reply may be applied twice (`sync` says so at start-up).
//! The stream's `SELECT`s are consumed and become the db of each batch; a source transaction is one group
//! whose every command is checked on its own.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

use super::ApplyError;
use crate::resp::{Command, CommandDecoder};
use crate::target::applied::{Applied, Pos};
use crate::target::pool::{Batch, Commit, ResendRule, Tx, WriterPool};

/// Counters of one source's stream, read by status.
#[derive(Debug, Default)]
pub struct StreamStats {
    pub commands: AtomicU64,
    pub transactions: AtomicU64,
    pub chatter: AtomicU64,
    /// Commands of dbs that are not synced (`--db`).
    pub filtered: AtomicU64,
    /// Commands skipped on resume because this target already held them (its in-target checkpoint).
    pub skipped: AtomicU64,
    /// Sharded target: multi-key commands cut into per-group commands (DEL, MSET, … over several slots),
    /// counted by each node that applied a part.
    pub split_commands: AtomicU64,
    /// Sharded target: source transactions whose keys span groups, applied as one transaction per group
    /// (atomic per group, not as a whole), counted once.
    pub split_transactions: AtomicU64,
}

/// What the applier asks of its caller besides writes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Signals {
    /// The master sent `REPLCONF GETACK`: acknowledge now.
    pub ack_now: bool,
    /// The source flushed (FLUSHDB: `Some(target db)`; FLUSHALL: `None`) and flushes are not forwarded
    /// (other sources share the target): the caller removes this source's keys, then calls `push(&[])` to go
    /// on. Commands after the flush are held back until then.
    pub flush: Option<Option<u32>>,
    /// The source ran a command that cannot be applied to its own keys alone on a shared target (`SWAPDB`):
    /// the caller must re-copy the source with a full resync. Nothing after it is applied by this applier.
    pub resync: Option<String>,
    /// A node of a sharded target met a command whose keys span groups and that cannot be cut per group:
    /// every node's applier stops at it; the caller applies it once for all nodes
    /// ([`crate::apply::cross`]), then calls `push(&[])` on each to go on.
    pub cross: Option<CrossCommand>,
}

/// A command over several groups of a sharded target, to be applied once across its nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrossCommand {
    /// The command as the source sent it.
    pub args: Vec<Bytes>,
    /// Argument indexes that are keys.
    pub keys: Vec<usize>,
    /// The master offset just after it (what the groups' checkpoints record once it is applied).
    pub end: i64,
    /// The source db the stream is in (recorded with the checkpoints).
    pub db: u32,
}

/// Where the in-target checkpoint of a source lives, and the replication id it records.
#[derive(Clone, Debug)]
pub struct TargetCheckpoint {
    pub db: u32,
    pub key: Bytes,
    pub replid: String,
}

/// A checkpoint read back from a target: where its data stands in the source's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCheckpoint {
    pub replid: String,
    pub offset: i64,
    /// The source db the stream was in at `offset` (0 for values written by older versions).
    pub db: u32,
}

/// The value marking a full sync under way: the target's data is a partial snapshot, not a stream position.
pub const LOADING: &str = "loading";

impl TargetCheckpoint {
    /// The stored value: `<replid>:<offset>:<source db>`.
    pub fn value(&self, offset: i64, db: u32) -> String {
        format!("{}:{offset}:{db}", self.replid)
    }

    /// Parse a stored value (`replid:offset[:db]`); `None` for anything else, including [`LOADING`].
    pub fn parse(v: &[u8]) -> Option<StoredCheckpoint> {
        let s = std::str::from_utf8(v).ok()?;
        let mut parts = s.split(':');
        let replid = parts.next()?.to_string();
        let offset = parts.next()?.parse().ok()?;
        let db = match parts.next() {
            Some(d) => d.parse().ok()?,
            None => 0,
        };
        if parts.next().is_some() || replid.is_empty() {
            return None;
        }
        Some(StoredCheckpoint { replid, offset, db })
    }
}

/// Receives the end-to-end lag measured from a heartbeat write (source clock at write → here).
pub type HeartbeatSink = Arc<dyn Fn(std::time::Duration) + Send + Sync>;

/// Applies one source's command stream to one target connection, in order.
pub struct StreamApplier {
    pool: Arc<WriterPool>,
    decoder: CommandDecoder,
    rbuf: BytesMut,
    /// Master offset of the last byte decoded.
    offset: i64,
    /// Full resyncs before this stream (its offsets' epoch).
    epoch: u64,
    /// The source db the stream is in.
    db: u32,
    batch: Batch,
    /// Inside the source's MULTI: the batch is not handed over before its EXEC.
    in_group: bool,
    /// Atomic mode: the target db the open transaction is in (it may SELECT inside).
    tx_db: u32,
    /// A batch is handed over when it reaches this many bytes (and nothing of this stream is unanswered).
    batch_bytes: usize,
    /// Atomic mode: a batch this large waits for the unanswered one instead of growing.
    max_batch_bytes: usize,
    /// The pool connection this source's stream is ordered on.
    conn: usize,
    applied: Arc<Applied>,
    /// Atomic mode: the batch handed over and not yet answered.
    inflight: Option<oneshot::Receiver<()>>,
    /// Offset covered by the last batch handed over.
    sent_offset: i64,
    /// Scripts this applier has loaded on its target node (SCRIPT FLUSH clears it); the bodies are in
    /// [`super::scripts`].
    loaded: HashSet<String>,
    /// Forward FLUSHDB/FLUSHALL/SWAPDB as they are (the source is alone on the target).
    forward_flush: bool,
    /// The checkpoint kept in the target, updated in the same MULTI/EXEC as the commands it covers.
    target_cp: Option<TargetCheckpoint>,
    /// Which source dbs are synced and where they go (`--db`, `--map-db`).
    dbs: super::DbMap,
    /// Plain mode: a SELECT inside the open MULTI changed the db: restore the connection's db after EXEC.
    group_selected: bool,
    /// ferry's heartbeat key on the source: its SETs are consumed (never copied) and measure the lag.
    heartbeat: Option<(Bytes, HeartbeatSink)>,
    /// Commands ending at or before this master offset are already on the target (its in-target
    /// checkpoint says so): skipped, not applied twice (their SELECTs are followed).
    skip_until: i64,
    /// A resync was signalled: nothing more is applied.
    stopped: bool,
    /// Atomic mode, a flush signalled: the offset just after the flush, applied once the caller has removed
    /// the source's keys (the next `push`).
    flush_end: Option<i64>,
    /// The flush came inside the source's transaction, which continues after it.
    regroup: bool,
    /// A node of a sharded target (atomic mode): only its groups' commands are applied, one transaction
    /// per group with that group's own checkpoint key.
    shard: Option<Sharded>,
    pub stats: Arc<StreamStats>,
}

/// The per-group state of a stream into one node of a sharded target.
struct Sharded {
    shard: crate::target::shard::Shard,
    /// Open transactions of this batch, one per group, in the order of their first command.
    open: Vec<(usize, Batch)>,
    /// The group whose transaction is `StreamApplier::batch` now.
    current: Option<usize>,
    /// Checkpoint key of each group this node owns.
    keys: HashMap<usize, Bytes>,
    /// The groups this node owns, in order (for the round-robin refresh of idle groups' checkpoints).
    owned: Vec<usize>,
    /// Next owned group whose checkpoint a batch refreshes.
    refresh_at: usize,
    /// When idle groups' checkpoints were last brought forward.
    refreshed: std::time::Instant,
    /// Where each group's data stood at the resume (its checkpoint): its commands up to there are skipped.
    skip: HashMap<usize, i64>,
    /// The group keyless commands of this node go into (its first).
    home: usize,
    /// A flush of this source was just applied here (its sweep done), at this position: the home group's
    /// checkpoint moves past it before anything after it is written (see [`StreamApplier::push`]).
    flushed: Option<(i64, u32)>,
    /// Inside a source transaction: the groups of every key it wrote so far (all nodes').
    tx_groups: HashSet<usize>,
}

/// Idle groups whose checkpoint a batch brings forward (at most every [`REFRESH_EVERY`]), so the lowest
/// checkpoint (where a resume starts) follows the stream even for groups that receive no command: a full
/// round over a third of a cluster's slots takes about 5 s, at most ~1000 small `SET`s a second per node.
const REFRESH_PER_BATCH: usize = 256;
const REFRESH_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Where a command goes on one node of a sharded target.
enum Route {
    /// Another node's (or already applied here).
    Drop,
    /// Into this group's transaction, as it is.
    Group(usize),
    /// Cut into per-group commands with the same effect (DEL, MSET, …): this node's parts.
    Split(Vec<(usize, Vec<Vec<u8>>)>),
    /// Not applied: counted and reported as a rejected write.
    Refuse(String),
    /// Over several groups and not to be cut: every node stops here and the caller applies it once.
    Cross(Vec<usize>),
}

/// The checkpoint key of `group` on a sharded target: the source's checkpoint key, `:`, and a tag that
/// places it in that group.
pub fn group_key(shard: &crate::target::shard::Shard, key: &[u8], group: usize) -> Vec<u8> {
    let mut prefix = key.to_vec();
    prefix.push(b':');
    shard.placement.key_in_group(&prefix, group)
}

/// What to do with one command under a db filter or map.
enum DbAction {
    Forward,
    Drop,
    Rewrite(Vec<Vec<u8>>),
    Report(String),
}

pub use crate::target::scripts::sha as script_sha;

fn parse_db(a: &[u8]) -> Option<u32> {
    std::str::from_utf8(a).ok().and_then(|s| s.parse().ok())
}

impl StreamApplier {
    /// A stream starting just after `start` (its offset is the last byte already applied, its db the stream's
    /// db there); `applied` receives the applied positions.
    pub fn new(pool: Arc<WriterPool>, start: Pos, applied: Arc<Applied>) -> Self {
        let max_batch_bytes = (pool.max_batch_bytes() / 2).clamp(64 << 10, 8 << 20);
        StreamApplier {
            pool,
            decoder: CommandDecoder::default(),
            rbuf: BytesMut::with_capacity(64 * 1024),
            offset: start.offset,
            epoch: start.epoch,
            db: start.db,
            batch: Batch::new(Some(start.db)),
            in_group: false,
            tx_db: start.db,
            batch_bytes: 64 * 1024,
            max_batch_bytes,
            conn: 0,
            applied,
            inflight: None,
            sent_offset: start.offset,
            loaded: HashSet::new(),
            forward_flush: true,
            target_cp: None,
            dbs: super::DbMap::default(),
            group_selected: false,
            heartbeat: None,
            skip_until: -1,
            stopped: false,
            flush_end: None,
            regroup: false,
            shard: None,
            stats: Arc::new(StreamStats::default()),
        }
    }

    /// Order this stream on connection `n` of the pool (modulo its size), so several sources' streams
    /// spread over the connections while each stays in order.
    pub fn with_connection(mut self, n: usize) -> Self {
        self.conn = n % self.pool.len().max(1);
        self
    }

    /// Whether FLUSHDB/FLUSHALL/SWAPDB go to the target as they are (true: the default, one source per
    /// target) or are signalled to the caller (several sources share the target).
    pub fn forward_flush(mut self, on: bool) -> Self {
        self.forward_flush = on;
        self
    }

    /// The pool and connection this stream is ordered on (writes sent there are in order with it).
    pub fn ordered_connection(&self) -> (Arc<WriterPool>, usize) {
        (self.pool.clone(), self.conn)
    }

    /// The source db the stream is in.
    pub fn db(&self) -> u32 {
        self.db
    }

    /// Keep the checkpoint in the target: every batch becomes one `MULTI … SET <key> <replid>:<offset>:<db>
    /// EXEC` (see the module docs).
    pub fn with_target_checkpoint(mut self, cp: Option<TargetCheckpoint>) -> Self {
        self.target_cp = cp;
        self
    }

    /// Write only the keys of one node of a sharded target (atomic mode: needs the in-target checkpoint),
    /// each group's commands in a transaction with that group's checkpoint; `skip` holds each group's
    /// checkpoint offset read at the resume.
    pub fn with_shard(
        mut self,
        shard: Option<crate::target::shard::Shard>,
        skip: HashMap<usize, i64>,
    ) -> Self {
        if let (Some(shard), Some(cp)) = (shard, self.target_cp.as_ref()) {
            let owned = shard.groups();
            let keys = owned
                .iter()
                .map(|g| (*g, Bytes::from(group_key(&shard, &cp.key, *g))))
                .collect();
            let home = owned.first().copied().unwrap_or(0);
            self.shard = Some(Sharded {
                shard,
                open: Vec::new(),
                current: None,
                keys,
                owned,
                refresh_at: 0,
                refreshed: std::time::Instant::now(),
                skip,
                home,
                flushed: None,
                tx_groups: HashSet::new(),
            });
        }
        self
    }

    /// Skip the commands that end at or before `offset`: this target already has them.
    pub fn skip_until(mut self, offset: i64) -> Self {
        self.skip_until = offset;
        self
    }

    /// Consume `SET <key> <unix ms>` heartbeats written by ferry into the source, reporting the lag.
    pub fn with_heartbeat(mut self, key: Option<Bytes>, sink: HeartbeatSink) -> Self {
        self.heartbeat = key.map(|k| (k, sink));
        self
    }

    /// Sync only some source dbs, or write them into other target dbs.
    pub fn with_dbs(mut self, dbs: super::DbMap) -> Self {
        self.dbs = dbs;
        self.batch.db = Some(self.tdb());
        self.tx_db = self.tdb();
        self
    }

    /// The target db of the current source db (its own number when filtered out: nothing is written then).
    fn tdb(&self) -> u32 {
        self.dbs.target(self.db).unwrap_or(self.db)
    }

    fn atomic(&self) -> bool {
        self.target_cp.is_some()
    }

    /// The master's replication id changed (`+CONTINUE <new id>` after a failover): record the new one.
    pub fn set_replid(&mut self, replid: &str) {
        if let Some(cp) = self.target_cp.as_mut() {
            cp.replid = replid.to_string();
        }
    }

    /// Remember script bodies (from the RDB's `lua` AUX fields) so an EVALSHA can load them first.
    pub fn add_scripts<'a>(&mut self, bodies: impl IntoIterator<Item = &'a Bytes>) {
        for b in bodies {
            crate::target::scripts::remember(b);
        }
    }

    /// Master offset up to which commands have been decoded (handed over or waiting in the open batch).
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// Master offset of the last byte received (decoded, or waiting in the buffer as part of a command):
    /// where a partial resync continues.
    pub fn received(&self) -> i64 {
        self.offset + self.rbuf.len() as i64
    }

    /// Record the current position on the target now (in atomic mode: a transaction holding only the
    /// checkpoint), e.g. right after a snapshot, before any stream command.
    pub async fn mark(&mut self) -> Result<(), ApplyError> {
        self.ready().await;
        if self.shard.is_some() {
            // Every group of this node starts here (in order after the snapshot's writes).
            let Some(cp) = self.target_cp.as_ref() else {
                return Ok(());
            };
            let value = cp.value(self.offset, self.db);
            let Some(mut b) = self.group_checkpoints(value.as_bytes()) else {
                return Ok(());
            };
            let pos = Pos {
                epoch: self.epoch,
                offset: self.offset,
                db: self.db,
            };
            b.applied = Some((self.applied.clone(), pos));
            let (tx, rx) = oneshot::channel();
            b.done = Some(tx);
            self.inflight = Some(rx);
            self.sent_offset = self.offset;
            self.pool.send(self.conn, b).await?;
            return Ok(());
        }
        self.open_tx();
        self.hand_over().await
    }

    /// Feed stream bytes; complete commands are queued for the target.
    pub async fn push(&mut self, chunk: &[u8]) -> Result<Signals, ApplyError> {
        let mut signals = Signals::default();
        if self.stopped {
            return Ok(signals);
        }
        if let Some(end) = self.flush_end.take() {
            // The caller removed this source's keys: the flush is applied.
            self.offset = end;
            // A sharded node replays a flush when its home group's checkpoint is before it, and the sweep
            // would then remove keys whose groups already hold writes made after the flush: that checkpoint
            // must pass the flush before any of those writes.
            let db = self.db;
            if let Some(sh) = self.shard.as_mut() {
                sh.flushed = Some((end, db));
            }
        }
        if std::mem::take(&mut self.regroup) {
            // The source's transaction goes on after its flush.
            if !self.atomic() {
                self.batch
                    .push_tx("MULTI", &Bytes::new(), &[b"MULTI"], Tx::Multi);
            }
            self.in_group = true;
        }
        self.rbuf.extend_from_slice(chunk);
        loop {
            let cmd = match self.decoder.decode_frozen(&mut self.rbuf) {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    return Err(ApplyError::Unsupported(format!(
                        "replication stream at master offset {}: {e}",
                        self.offset
                    )))
                }
            };
            self.offset += cmd.raw().len() as i64;
            if self.offset <= self.skip_until {
                self.skip(&cmd)?;
                continue;
            }
            let len = cmd.raw().len() as i64;
            self.on_command(cmd, &mut signals).await?;
            if (signals.flush.is_some() || signals.cross.is_some())
                && self.atomic()
                && self.flush_end.is_none()
            {
                // The flush is applied only once the caller has removed this source's keys: until then the
                // position handed over (and checkpointed) stays before it, so a crash in between replays it.
                self.flush_end = Some(self.offset);
                self.offset -= len;
            }
            if signals.flush.is_some() || signals.resync.is_some() || signals.cross.is_some() {
                // Hold the rest back until the caller removed this source's keys (or resyncs it).
                self.stopped = signals.resync.is_some();
                return Ok(signals);
            }
        }
        if !self.in_group && self.open_len() >= self.batch_bytes {
            self.send().await?;
        }
        Ok(signals)
    }

    /// A command this target already holds: only the db it leaves the stream in matters.
    fn skip(&mut self, cmd: &Command) -> Result<(), ApplyError> {
        self.stats.skipped.fetch_add(1, Ordering::Relaxed);
        if cmd.argc() == 2 && cmd.arg(0).eq_ignore_ascii_case(b"SELECT") {
            self.db = parse_db(cmd.arg(1)).ok_or_else(|| self.bad_select())?;
            self.batch.db = Some(self.tdb());
            self.tx_db = self.tdb();
        }
        Ok(())
    }

    fn bad_select(&self) -> ApplyError {
        ApplyError::Unsupported(format!(
            "replication stream at master offset {}: bad SELECT",
            self.offset
        ))
    }

    /// Whether decoded commands wait to be handed over (the open batch, or an offset not yet covered).
    pub fn pending(&self) -> bool {
        !self.in_group && (self.offset > self.sent_offset || !self.batch.cmds.is_empty())
    }

    /// Whether a batch of this stream is unanswered (atomic mode).
    pub fn waiting(&self) -> bool {
        self.inflight.is_some()
    }

    /// Resolves when this stream's unanswered batch is answered (at once when there is none). Cancel-safe.
    pub async fn ready(&mut self) {
        if let Some(rx) = self.inflight.as_mut() {
            let _ = rx.await;
            self.inflight = None;
        }
    }

    /// Hand the open batch to the target when that keeps the order and bounds: in atomic mode only once the
    /// previous batch is answered, unless it grew too large to keep growing (then wait for that answer).
    /// Never in the middle of a source transaction.
    pub async fn send(&mut self) -> Result<(), ApplyError> {
        if self.in_group || !self.pending() {
            return Ok(());
        }
        let open = self.open_len();
        if let Some(rx) = self.inflight.as_mut() {
            if let Err(oneshot::error::TryRecvError::Empty) = rx.try_recv() {
                if open < self.max_batch_bytes {
                    return Ok(());
                }
                let _ = rx.await;
            }
            self.inflight = None;
        }
        self.hand_over().await
    }

    /// Hand over everything decoded (outside an open source transaction) and wait until the target answered
    /// it.
    pub async fn drain(&mut self) -> Result<(), ApplyError> {
        self.ready().await;
        if self.pending() {
            self.hand_over().await?;
        }
        self.ready().await;
        self.pool.flush().await?;
        Ok(())
    }

    async fn hand_over(&mut self) -> Result<(), ApplyError> {
        let start_db = Some(self.tdb());
        let mut b = std::mem::replace(&mut self.batch, Batch::new(start_db));
        let pos = Pos {
            epoch: self.epoch,
            offset: self.offset,
            db: self.db,
        };
        if self.shard.is_some() && self.target_cp.is_some() {
            self.batch = b;
            let mut batches = self.sharded_batches(pos);
            let mut last = batches.pop().expect("the refresh batch is always there");
            last.applied = Some((self.applied.clone(), pos));
            let (tx, rx) = oneshot::channel();
            last.done = Some(tx);
            self.inflight = Some(rx);
            self.sent_offset = self.offset;
            for b in batches {
                self.pool.send(self.conn, b).await?;
            }
            self.pool.send(self.conn, last).await?;
            return Ok(());
        }
        if let (Some(cp), false) = (&self.target_cp, b.cmds.is_empty()) {
            // Close the transaction: the checkpoint, back to the db the batch began in, EXEC.
            let value = Bytes::from(cp.value(pos.offset, pos.db));
            let began = b.db.unwrap_or(0);
            let none = Bytes::new();
            if self.tx_db != cp.db {
                b.push_tx(
                    "SELECT",
                    &none,
                    &[b"SELECT", cp.db.to_string().as_bytes()],
                    Tx::Queued,
                );
            }
            b.push_tx("SET", &cp.key, &[b"SET", &cp.key, &value], Tx::Queued);
            if cp.db != began {
                b.push_tx(
                    "SELECT",
                    &none,
                    &[b"SELECT", began.to_string().as_bytes()],
                    Tx::Queued,
                );
            }
            b.push_tx("EXEC", &none, &[b"EXEC"], Tx::Exec);
            b.commit = Some(Commit {
                db: cp.db,
                key: cp.key.clone(),
                value,
            });
        }
        self.tx_db = self.tdb();
        b.applied = Some((self.applied.clone(), pos));
        if self.atomic() {
            let (tx, rx) = oneshot::channel();
            b.done = Some(tx);
            self.inflight = Some(rx);
        }
        self.sent_offset = self.offset;
        self.pool.send(self.conn, b).await?;
        Ok(())
    }

    /// The source db changed to `db` (a SELECT).
    async fn select(&mut self, db: u32) -> Result<(), ApplyError> {
        if db == self.db {
            return Ok(());
        }
        self.db = db;
        let t = self.tdb();
        if self.batch.cmds.is_empty() {
            self.batch.db = Some(t);
            self.tx_db = t;
        } else if self.atomic() {
            if t != self.tx_db {
                let none = Bytes::new();
                self.batch.push_tx(
                    "SELECT",
                    &none,
                    &[b"SELECT", t.to_string().as_bytes()],
                    Tx::Queued,
                );
                self.tx_db = t;
            }
        } else {
            // A plain batch holds one db: hand this one over (plain batches are never held back).
            self.send().await?;
            self.batch.db = Some(t);
        }
        Ok(())
    }

    async fn on_command(&mut self, cmd: Command, signals: &mut Signals) -> Result<(), ApplyError> {
        if cmd.argc() == 0 {
            return Ok(()); // a keep-alive newline
        }
        let name = cmd.arg(0);
        if name.eq_ignore_ascii_case(b"PING") {
            self.stats.chatter.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if name.eq_ignore_ascii_case(b"REPLCONF") {
            self.stats.chatter.fetch_add(1, Ordering::Relaxed);
            if cmd.argc() > 1 && cmd.arg(1).eq_ignore_ascii_case(b"GETACK") {
                signals.ack_now = true;
            }
            return Ok(());
        }
        let atomic = self.atomic();
        if name.eq_ignore_ascii_case(b"SELECT") && (atomic || !self.in_group) {
            let db = parse_db(cmd.arg(1)).ok_or_else(|| self.bad_select())?;
            return self.select(db).await;
        }
        if atomic && name.eq_ignore_ascii_case(b"MULTI") {
            self.in_group = true;
            return Ok(());
        }
        if atomic && name.eq_ignore_ascii_case(b"EXEC") {
            self.in_group = false;
            self.stats.transactions.fetch_add(1, Ordering::Relaxed);
            if let Some(sh) = self.shard.as_mut() {
                if sh.tx_groups.len() > 1 && sh.shard.is_first() {
                    self.stats
                        .split_transactions
                        .fetch_add(1, Ordering::Relaxed);
                    self.pool
                        .stats()
                        .split_transactions
                        .fetch_add(1, Ordering::Relaxed);
                }
                sh.tx_groups.clear();
            }
            return Ok(());
        }
        if let Some((key, sink)) = &self.heartbeat {
            if cmd.argc() >= 3 && cmd.arg(1) == &key[..] && name.eq_ignore_ascii_case(b"SET") {
                let sent = std::str::from_utf8(cmd.arg(2))
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok());
                if let (Some(sent), Ok(now)) = (
                    sent,
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH),
                ) {
                    let now = now.as_millis() as u64;
                    sink(std::time::Duration::from_millis(now.saturating_sub(sent)));
                }
                self.stats.chatter.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        }
        let mut rewritten: Option<Vec<Vec<u8>>> = None;
        if !self.dbs.is_identity() || name.eq_ignore_ascii_case(b"SELECT") {
            match self.db_action(&cmd) {
                DbAction::Forward => {}
                DbAction::Drop => {
                    self.stats.filtered.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                DbAction::Rewrite(args) => rewritten = Some(args),
                DbAction::Report(why) => {
                    let cmdname = command_name(name);
                    if self.pool.stats().record_rejection(cmdname, &why) {
                        tracing::warn!(command = cmdname, key = %crate::target::pool::escape_key(cmd.arg(1)),
                            reason = %why, "a command spanning synced and unsynced dbs was not applied");
                    }
                    return Ok(());
                }
            }
        }
        if let Some(args) = rewritten {
            let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
            let mut raw = BytesMut::new();
            crate::resp::encode_command(&mut raw, &refs);
            let mut dec = CommandDecoder::default();
            if let Ok(Some(c)) = dec.decode_frozen(&mut raw) {
                return self.forward(c, signals).await;
            }
            return Ok(());
        }
        self.forward(cmd, signals).await
    }

    /// Queue a command that goes to the target (after chatter, heartbeat and db filtering).
    async fn forward(&mut self, cmd: Command, signals: &mut Signals) -> Result<(), ApplyError> {
        let name = cmd.arg(0);
        self.stats.commands.fetch_add(1, Ordering::Relaxed);
        let is_flush =
            name.eq_ignore_ascii_case(b"FLUSHDB") || name.eq_ignore_ascii_case(b"FLUSHALL");
        if is_flush && (!self.forward_flush || !self.dbs.is_identity()) {
            // A sharded node that resumes behind its lowest group replays the stream; a flush its home group's
            // checkpoint is already past was applied here, and the writes after it too (in groups whose own
            // checkpoints are past them): removing the keys again would lose those writes.
            if let Some(sh) = &self.shard {
                if sh.skip.get(&sh.home).is_some_and(|s| self.offset <= *s) {
                    return Ok(());
                }
            }
            // Shared target, or dbs filtered/mapped: remove this source's keys of the synced dbs only.
            let scope = if name.eq_ignore_ascii_case(b"FLUSHDB") {
                Some(self.tdb())
            } else {
                None
            };
            tracing::info!(command = %String::from_utf8_lossy(name).to_uppercase(), db = ?scope,
                "the source flushed: removing only its own keys from the shared target");
            if self.in_group {
                // The source's transaction is split at its flush: what came before it is handed over (one
                // transaction), the keys are removed, the rest follows in another. The removal is a scan, never
                // atomic, and the keys written after the flush must survive it.
                self.close_group().await?;
                self.regroup = true;
            }
            signals.flush = Some(scope);
            return Ok(());
        }
        // A flush replayed behind the home group's checkpoint is dropped (see `route`): not a node-wide write.
        let replayed = self
            .shard
            .as_ref()
            .is_some_and(|sh| sh.skip.get(&sh.home).is_some_and(|s| self.offset <= *s));
        if is_flush && !replayed {
            // Forwarded to every node of a cluster target: a node-wide write (see
            // `target::redirect::Redirects::forward`).
            if let Some(r) = self
                .shard
                .as_ref()
                .and_then(|sh| sh.shard.redirects.as_ref())
            {
                if !r.node_wide() {
                    return Err(ApplyError::Target(crate::target::TargetError::Topology {
                        addr: r.label().to_string(),
                        msg: "writes followed redirections to other nodes in this run, and a flush must not \
                              meet them (see target::redirect)"
                            .into(),
                    }));
                }
            }
        }
        if name.eq_ignore_ascii_case(b"SWAPDB") && !self.forward_flush {
            // Swapping two dbs of the target would swap every source's keys. Only a full copy of this source
            // puts its keys where it now has them.
            signals.resync = Some(format!(
                "the source ran SWAPDB {} {} while other sources share the target",
                String::from_utf8_lossy(cmd.arg(1)),
                String::from_utf8_lossy(cmd.arg(2))
            ));
            return Ok(());
        }
        if self.shard.is_some() {
            Self::note_script(&cmd);
            match self.route(&cmd) {
                Route::Drop => return Ok(()),
                Route::Group(g) => self.switch_group(g),
                Route::Split(parts) => {
                    for (g, args) in parts {
                        self.switch_group(g);
                        self.open_tx();
                        let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
                        let key = Bytes::copy_from_slice(refs.get(1).copied().unwrap_or_default());
                        crate::resp::encode_command(&mut self.batch.bytes, &refs);
                        self.batch.finish_tx(
                            command_name(name),
                            key,
                            Tx::Queued,
                            ResendRule::Strict,
                        );
                    }
                    self.stats.split_commands.fetch_add(1, Ordering::Relaxed);
                    self.pool.stats().record_split(command_name(name));
                    return Ok(());
                }
                Route::Cross(keys) => {
                    if self.in_group {
                        // As at a flush: what came before is handed over, the rest follows after it.
                        self.close_group().await?;
                        self.regroup = true;
                    }
                    signals.cross = Some(CrossCommand {
                        args: (0..cmd.argc()).map(|i| cmd.arg_bytes(i)).collect(),
                        keys,
                        end: self.offset,
                        db: self.db,
                    });
                    return Ok(());
                }
                Route::Refuse(why) => {
                    let cmdname = command_name(name);
                    if self.pool.stats().record_rejection(cmdname, &why) {
                        tracing::warn!(command = cmdname, key = %crate::target::pool::escape_key(cmd.arg(1)),
                            reason = %why, "a command was not applied to the sharded target");
                    }
                    return Ok(());
                }
            }
        }
        let atomic = self.atomic();
        if let Some(body) = self.scripts_before(&cmd) {
            let none = Bytes::new();
            let args: [&[u8]; 3] = [b"SCRIPT", b"LOAD", &body];
            if atomic || self.in_group {
                self.open_tx();
                self.batch.push_tx("SCRIPT", &none, &args, Tx::Queued);
            } else {
                self.batch.push("SCRIPT", &none, &args, ResendRule::Strict);
            }
        }
        let key = if cmd.argc() > 1 {
            cmd.arg_bytes(1)
        } else {
            Bytes::new()
        };
        if atomic {
            self.open_tx();
            self.batch.bytes.extend_from_slice(cmd.raw());
            self.batch
                .finish_tx(command_name(name), key, Tx::Queued, ResendRule::Strict);
            return Ok(());
        }
        // Plain mode: the source's transaction is one described group in the batch.
        if name.eq_ignore_ascii_case(b"MULTI") {
            self.batch.bytes.extend_from_slice(cmd.raw());
            self.batch
                .finish_tx("MULTI", Bytes::new(), Tx::Multi, ResendRule::Strict);
            self.in_group = true;
            return Ok(());
        }
        if self.in_group {
            let exec = name.eq_ignore_ascii_case(b"EXEC");
            self.batch.bytes.extend_from_slice(cmd.raw());
            let tx = if exec { Tx::Exec } else { Tx::Queued };
            self.batch
                .finish_tx(command_name(name), key, tx, ResendRule::Strict);
            if exec {
                self.after_group().await?;
                self.stats.transactions.fetch_add(1, Ordering::Relaxed);
            }
            return Ok(());
        }
        self.batch.bytes.extend_from_slice(cmd.raw());
        self.batch
            .finish_cmd(command_name(name), key, 1, ResendRule::Strict);
        Ok(())
    }

    /// End the source's open transaction here (at a flush): in plain mode with an EXEC of our own.
    async fn close_group(&mut self) -> Result<(), ApplyError> {
        if self.atomic() {
            self.in_group = false;
            return Ok(());
        }
        self.batch
            .push_tx("EXEC", &Bytes::new(), &[b"EXEC"], Tx::Exec);
        self.after_group().await
    }

    /// Plain mode, after the EXEC of a source transaction.
    async fn after_group(&mut self) -> Result<(), ApplyError> {
        self.in_group = false;
        if std::mem::take(&mut self.group_selected) {
            // The transaction moved the connection to another db: put it back where the batch says it is, and
            // continue in a batch of the new db.
            let back = self.batch.db.unwrap_or(0).to_string();
            self.batch.push(
                "SELECT",
                &Bytes::new(),
                &[b"SELECT", back.as_bytes()],
                ResendRule::Strict,
            );
            self.send().await?;
            self.batch.db = Some(self.tdb());
        }
        Ok(())
    }

    /// A node of a sharded target: its placement, and the checkpoint key (with its value) of a group.
    pub fn shard_checkpoint(&self, group: usize, end: i64, db: u32) -> Option<(Bytes, Bytes)> {
        let sh = self.shard.as_ref()?;
        let cp = self.target_cp.as_ref()?;
        let key = Bytes::from(group_key(&sh.shard, &cp.key, group));
        Some((key, Bytes::from(cp.value(end, db))))
    }

    /// The shard this applier writes (a node of a sharded target).
    pub fn shard(&self) -> Option<&crate::target::shard::Shard> {
        self.shard.as_ref().map(|s| &s.shard)
    }

    /// Sharded target: where a command goes on this node (see [`Route`]).
    fn route(&mut self, cmd: &Command) -> Route {
        use crate::cluster::{command_keys, split_rule, KeyRoute, Split};
        let offset = self.offset;
        let Some(sh) = self.shard.as_ref() else {
            return Route::Drop;
        };
        let args: Vec<&[u8]> = (0..cmd.argc()).map(|i| cmd.arg(i)).collect();
        let name = args[0];
        let placement = &sh.shard.placement;
        let skipped = |g: usize| sh.skip.get(&g).is_some_and(|s| offset <= *s);
        let keys = match command_keys(&args) {
            KeyRoute::Keyless => {
                // Sent once (the cluster bus or the clients fan it out), or to every node (FLUSHALL,
                // SCRIPT, FUNCTION, …: each node holds its own).
                let once = name.eq_ignore_ascii_case(b"PUBLISH");
                return if (once && !sh.shard.is_first()) || skipped(sh.home) {
                    Route::Drop
                } else {
                    Route::Group(sh.home)
                };
            }
            KeyRoute::Keys(k) if k.is_empty() => {
                // A script declaring no key: one node runs it.
                return if sh.shard.is_first() && !skipped(sh.home) {
                    Route::Group(sh.home)
                } else {
                    Route::Drop
                };
            }
            KeyRoute::Keys(k) => k,
            KeyRoute::Unknown => {
                return if sh.shard.is_first() {
                    Route::Refuse(format!(
                        "{} is not known to ferry's key table, so its keys cannot be placed on the nodes of \
                         {}",
                        String::from_utf8_lossy(name).to_uppercase(),
                        sh.shard.label
                    ))
                } else {
                    Route::Drop
                };
            }
        };
        let groups: Vec<usize> = keys.iter().map(|&i| placement.group_of(args[i])).collect();
        let first = groups[0];
        let in_group = self.in_group;
        let Some(sh) = self.shard.as_mut() else {
            return Route::Drop;
        };
        if in_group {
            sh.tx_groups.extend(groups.iter().copied());
        }
        let sh = &*sh;
        let placement = &sh.shard.placement;
        let skipped = |g: usize| sh.skip.get(&g).is_some_and(|s| offset <= *s);
        let mine = |g: usize| sh.shard.owns_group(g) && !skipped(g);
        if groups.iter().all(|g| *g == first) {
            return if mine(first) {
                Route::Group(first)
            } else {
                Route::Drop
            };
        }
        match split_rule(name) {
            Split::PerKey { first: start, step } => {
                // One command per group, with that group's keys (and their values) in order.
                let mut parts: Vec<(usize, Vec<Vec<u8>>)> = Vec::new();
                let mut i = start;
                while i + step <= args.len() {
                    let g = placement.group_of(args[i]);
                    if mine(g) {
                        let part = match parts.iter_mut().find(|(x, _)| *x == g) {
                            Some(p) => p,
                            None => {
                                parts.push((g, args[..start].iter().map(|a| a.to_vec()).collect()));
                                parts.last_mut().expect("pushed")
                            }
                        };
                        part.1.extend(args[i..i + step].iter().map(|a| a.to_vec()));
                    }
                    i += step;
                }
                if parts.is_empty() {
                    Route::Drop
                } else {
                    Route::Split(parts)
                }
            }
            // Every node stops at it (see `Signals::cross`).
            Split::Whole => Route::Cross(keys),
        }
    }

    /// Sharded target: make `batch` the open transaction of group `g` (keeping the others aside).
    fn switch_group(&mut self, g: usize) {
        let db = Some(self.tdb());
        let Some(sh) = self.shard.as_mut() else {
            return;
        };
        if sh.current == Some(g) {
            return;
        }
        let b = std::mem::replace(&mut self.batch, Batch::new(db));
        if let Some(c) = sh.current {
            if let Some(slot) = sh.open.iter_mut().find(|(x, _)| *x == c) {
                slot.1 = b;
            }
        }
        match sh.open.iter_mut().find(|(x, _)| *x == g) {
            Some(slot) => self.batch = std::mem::take(&mut slot.1),
            None => sh.open.push((g, Batch::default())),
        }
        self.batch.db = db;
        sh.current = Some(g);
    }

    /// Bytes decoded and not handed over (every open group transaction on a sharded target).
    fn open_len(&self) -> usize {
        let others: usize = self
            .shard
            .as_ref()
            .map(|sh| sh.open.iter().map(|(_, b)| b.len()).sum())
            .unwrap_or(0);
        self.batch.len() + others
    }

    /// Sharded target: the batches of one hand-over — each group's transaction closed with its checkpoint,
    /// then the checkpoints of some idle groups brought forward (plain SETs, after everything of theirs).
    fn sharded_batches(&mut self, pos: Pos) -> Vec<Batch> {
        let db = Some(self.tdb());
        let cp = self.target_cp.clone();
        let Some(sh) = self.shard.as_mut() else {
            return Vec::new();
        };
        let Some(cp) = cp else {
            return Vec::new();
        };
        if let Some(c) = sh.current.take() {
            let b = std::mem::replace(&mut self.batch, Batch::new(db));
            if let Some(slot) = sh.open.iter_mut().find(|(x, _)| *x == c) {
                slot.1 = b;
            }
        }
        let value = Bytes::from(cp.value(pos.offset, pos.db));
        let none = Bytes::new();
        let mut out = Vec::new();
        if let Some((offset, sdb)) = sh.flushed.take() {
            // First of all: the home group's checkpoint past the flush just applied (at the flush, not at
            // this batch's end: the home group's own commands of this batch are not applied yet).
            let key = sh.keys[&sh.home].clone();
            let at = Bytes::from(cp.value(offset, sdb));
            let mut b = Batch::new(db);
            b.push("SET", &key, &[b"SET", &key, &at], ResendRule::Strict);
            out.push(b);
        }
        let mut touched = HashSet::new();
        for (g, mut b) in std::mem::take(&mut sh.open) {
            if b.cmds.is_empty() {
                continue;
            }
            let key = sh.keys[&g].clone();
            b.push_tx("SET", &key, &[b"SET", &key, &value], Tx::Queued);
            b.push_tx("EXEC", &none, &[b"EXEC"], Tx::Exec);
            b.commit = Some(Commit {
                db: cp.db,
                key,
                value: value.clone(),
            });
            b.db = db;
            touched.insert(g);
            out.push(b);
        }
        let mut refresh = Batch::new(db);
        let n = sh.owned.len();
        let due = sh.refreshed.elapsed() >= REFRESH_EVERY;
        if due {
            sh.refreshed = std::time::Instant::now();
        }
        for _ in 0..if due { REFRESH_PER_BATCH.min(n) } else { 0 } {
            let g = sh.owned[sh.refresh_at];
            sh.refresh_at = (sh.refresh_at + 1) % n;
            // A group still being replayed (its checkpoint ahead of here) keeps its checkpoint.
            if touched.contains(&g) || sh.skip.get(&g).is_some_and(|s| *s > pos.offset) {
                continue;
            }
            let key = &sh.keys[&g];
            refresh.push("SET", key, &[b"SET", key, &value], ResendRule::Strict);
        }
        out.push(refresh);
        out
    }

    /// Sharded target: set the checkpoint of every group of this node (after its snapshot: `value` the
    /// stream's start; before it: [`LOADING`]), in order after everything sent before.
    pub fn group_checkpoints(&self, value: &[u8]) -> Option<Batch> {
        let sh = self.shard.as_ref()?;
        let mut b = Batch::new(Some(self.tdb()));
        for g in &sh.owned {
            let key = &sh.keys[g];
            b.push("SET", key, &[b"SET", key, value], ResendRule::Strict);
        }
        Some(b)
    }

    /// Atomic mode: the open batch starts with MULTI.
    fn open_tx(&mut self) {
        if self.atomic() && self.batch.cmds.is_empty() {
            self.batch
                .push_tx("MULTI", &Bytes::new(), &[b"MULTI"], Tx::Multi);
        }
    }
}

impl StreamApplier {
    /// What to do with a command under a db filter or map.
    fn db_action(&mut self, cmd: &Command) -> DbAction {
        let name = cmd.arg(0);
        let parse = |a: &[u8]| {
            std::str::from_utf8(a)
                .ok()
                .and_then(|s| s.parse::<u32>().ok())
        };
        let here = self.dbs.target(self.db);
        if name.eq_ignore_ascii_case(b"SELECT") {
            // Only inside MULTI (outside, SELECT is consumed above).
            let Some(db) = parse(cmd.arg(1)) else {
                return DbAction::Report("bad SELECT".into());
            };
            self.db = db;
            self.group_selected = true;
            return match self.dbs.target(db) {
                Some(t) => DbAction::Rewrite(vec![b"SELECT".to_vec(), t.to_string().into_bytes()]),
                None => DbAction::Report(format!(
                    "SELECT {db} inside MULTI into a db that is not synced"
                )),
            };
        }
        if name.eq_ignore_ascii_case(b"MOVE") && cmd.argc() == 3 {
            let Some(dst) = parse(cmd.arg(2)) else {
                return DbAction::Forward;
            };
            return match (here, self.dbs.target(dst)) {
                (None, None) => DbAction::Drop,
                (Some(a), Some(b)) if a == b => DbAction::Drop,
                (Some(_), Some(b)) => DbAction::Rewrite(vec![
                    b"MOVE".to_vec(),
                    cmd.arg(1).to_vec(),
                    b.to_string().into_bytes(),
                ]),
                (Some(_), None) => DbAction::Rewrite(vec![b"DEL".to_vec(), cmd.arg(1).to_vec()]),
                (None, Some(_)) => DbAction::Report(format!(
                    "MOVE from unsynced db {} into synced db {dst}",
                    self.db
                )),
            };
        }
        if name.eq_ignore_ascii_case(b"SWAPDB") && cmd.argc() == 3 {
            let (Some(a), Some(b)) = (parse(cmd.arg(1)), parse(cmd.arg(2))) else {
                return DbAction::Forward;
            };
            return match (self.dbs.target(a), self.dbs.target(b)) {
                (None, None) => DbAction::Drop,
                (Some(x), Some(y)) if x != y => DbAction::Rewrite(vec![
                    b"SWAPDB".to_vec(),
                    x.to_string().into_bytes(),
                    y.to_string().into_bytes(),
                ]),
                _ => DbAction::Report(format!("SWAPDB {a} {b} across unsynced or merged dbs")),
            };
        }
        if name.eq_ignore_ascii_case(b"COPY") {
            let args: Vec<&[u8]> = (0..cmd.argc()).map(|i| cmd.arg(i)).collect();
            if let Some(pos) = args.iter().position(|a| a.eq_ignore_ascii_case(b"DB")) {
                let Some(dst) = args.get(pos + 1).and_then(|a| parse(a)) else {
                    return DbAction::Forward;
                };
                return match (here, self.dbs.target(dst)) {
                    (None, None) | (Some(_), None) => DbAction::Drop,
                    (Some(_), Some(t)) => {
                        let mut v: Vec<Vec<u8>> = args.iter().map(|a| a.to_vec()).collect();
                        v[pos + 1] = t.to_string().into_bytes();
                        DbAction::Rewrite(v)
                    }
                    (None, Some(_)) => DbAction::Report(format!(
                        "COPY from unsynced db {} into synced db {dst}",
                        self.db
                    )),
                };
            }
        }
        if here.is_none() {
            // MULTI/EXEC of a transaction in an unsynced db go with its commands.
            return DbAction::Drop;
        }
        DbAction::Forward
    }

    /// Track scripts; returns a body to `SCRIPT LOAD` on the target before this command (an EVALSHA of
    /// a script this applier's connection may not have).
    fn scripts_before(&mut self, cmd: &Command) -> Option<Bytes> {
        let name = cmd.arg(0);
        if name.eq_ignore_ascii_case(b"EVAL") && cmd.argc() > 1 {
            self.loaded
                .insert(crate::target::scripts::remember(&cmd.arg_bytes(1)));
        } else if name.eq_ignore_ascii_case(b"SCRIPT") && cmd.argc() > 1 {
            if cmd.arg(1).eq_ignore_ascii_case(b"LOAD") && cmd.argc() > 2 {
                self.loaded
                    .insert(crate::target::scripts::remember(&cmd.arg_bytes(2)));
            } else if cmd.arg(1).eq_ignore_ascii_case(b"FLUSH") {
                self.loaded.clear();
            }
        } else if name.eq_ignore_ascii_case(b"EVALSHA") && cmd.argc() > 1 {
            let sha = String::from_utf8_lossy(cmd.arg(1)).to_ascii_lowercase();
            if !self.loaded.contains(&sha) {
                if let Some(body) = crate::target::scripts::body(&sha) {
                    self.loaded.insert(sha);
                    return Some(body);
                }
            }
        }
        None
    }

    /// Sharded target: remember the body of an `EVAL`/`SCRIPT LOAD` that another node runs, so that an
    /// `EVALSHA` of it routed to this node can load it first.
    fn note_script(cmd: &Command) {
        let name = cmd.arg(0);
        if name.eq_ignore_ascii_case(b"EVAL") && cmd.argc() > 1 {
            crate::target::scripts::remember(&cmd.arg_bytes(1));
        } else if name.eq_ignore_ascii_case(b"SCRIPT")
            && cmd.argc() > 2
            && cmd.arg(1).eq_ignore_ascii_case(b"LOAD")
        {
            crate::target::scripts::remember(&cmd.arg_bytes(2));
        }
    }
}

/// Delete `keys` of `db` through connection `conn` of `pool` (in order with what was sent there before).
pub async fn delete_keys(
    pool: Arc<WriterPool>,
    conn: usize,
    db: u32,
    keys: Vec<Bytes>,
    sharded: bool,
) -> Result<(), crate::target::TargetError> {
    // A cluster node refuses a DEL whose keys are in different slots: one key per DEL there.
    let per = if sharded { 1 } else { 256 };
    for chunk in keys.chunks(per) {
        let mut b = Batch::new(Some(db));
        let mut args: Vec<&[u8]> = Vec::with_capacity(chunk.len() + 1);
        args.push(b"DEL");
        args.extend(chunk.iter().map(|k| &k[..]));
        crate::resp::encode_command(&mut b.bytes, &args);
        b.finish_cmd("DEL", chunk[0].clone(), 1, ResendRule::Strict);
        pool.send(conn, b).await?;
    }
    Ok(())
}

/// A static name for counters (the common write commands); others are "OTHER".
fn command_name(name: &[u8]) -> &'static str {
    const NAMES: &[&str] = &[
        "SET",
        "DEL",
        "UNLINK",
        "EXPIRE",
        "PEXPIRE",
        "EXPIREAT",
        "PEXPIREAT",
        "PERSIST",
        "INCR",
        "INCRBY",
        "DECR",
        "DECRBY",
        "INCRBYFLOAT",
        "APPEND",
        "SETRANGE",
        "SETBIT",
        "GETSET",
        "GETDEL",
        "GETEX",
        "MSET",
        "MSETNX",
        "SETNX",
        "SETEX",
        "PSETEX",
        "LPUSH",
        "RPUSH",
        "LPUSHX",
        "RPUSHX",
        "LPOP",
        "RPOP",
        "LSET",
        "LREM",
        "LTRIM",
        "LINSERT",
        "LMOVE",
        "RPOPLPUSH",
        "SADD",
        "SREM",
        "SPOP",
        "SMOVE",
        "SINTERSTORE",
        "SUNIONSTORE",
        "SDIFFSTORE",
        "ZADD",
        "ZREM",
        "ZINCRBY",
        "ZREMRANGEBYSCORE",
        "ZREMRANGEBYRANK",
        "ZREMRANGEBYLEX",
        "ZUNIONSTORE",
        "ZINTERSTORE",
        "ZDIFFSTORE",
        "ZRANGESTORE",
        "ZPOPMIN",
        "ZPOPMAX",
        "HSET",
        "HMSET",
        "HSETNX",
        "HDEL",
        "HINCRBY",
        "HINCRBYFLOAT",
        "XADD",
        "XDEL",
        "XTRIM",
        "XGROUP",
        "XACK",
        "XCLAIM",
        "XAUTOCLAIM",
        "XSETID",
        "PFADD",
        "PFMERGE",
        "GEOADD",
        "BITOP",
        "BITFIELD",
        "RENAME",
        "RENAMENX",
        "MOVE",
        "COPY",
        "SWAPDB",
        "RESTORE",
        "FLUSHDB",
        "FLUSHALL",
        "EVAL",
        "EVALSHA",
        "FCALL",
        "FUNCTION",
        "SCRIPT",
        "PUBLISH",
        "SORT",
        "EXEC",
    ];
    NAMES
        .iter()
        .find(|n| n.as_bytes().eq_ignore_ascii_case(name))
        .copied()
        .unwrap_or("OTHER")
}

#[cfg(test)]
mod tests {
    #[test]
    fn target_checkpoint_values_round_trip() {
        let cp = super::TargetCheckpoint {
            db: 0,
            key: bytes::Bytes::from_static(b"ferry:checkpoint:x"),
            replid: "a".repeat(40),
        };
        let v = cp.value(12345, 3);
        let want = super::StoredCheckpoint {
            replid: "a".repeat(40),
            offset: 12345,
            db: 3,
        };
        assert_eq!(super::TargetCheckpoint::parse(v.as_bytes()), Some(want));
        // Values written before the stream db was kept: db 0.
        let old = format!("{}:77", "b".repeat(40));
        assert_eq!(
            super::TargetCheckpoint::parse(old.as_bytes()).map(|c| (c.offset, c.db)),
            Some((77, 0))
        );
        assert_eq!(super::TargetCheckpoint::parse(b"garbage"), None);
        assert_eq!(
            super::TargetCheckpoint::parse(super::LOADING.as_bytes()),
            None
        );
        assert_eq!(super::TargetCheckpoint::parse(b"a:1:2:3"), None);
    }

    #[test]
    fn script_names_are_redis_sha1s() {
        // From the Redis EVALSHA documentation: SCRIPT LOAD "return 1" answers this SHA1.
        assert_eq!(
            super::script_sha(b"return 1"),
            "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
        );
    }
}
