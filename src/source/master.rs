//! A live master as a source.
//!
//! Three parts run concurrently:
//! - the replication link ([`crate::repl`]) reads the socket at network speed into the spool;
//! - this consumer reads the spool in order and hands every record to one [`Sink`] per target: the RDB
//!   through the decoder to the snapshot applier, the command stream after it to the stream applier;
//! - a ticker reports what every target has applied to the link (`REPLCONF ACK`) and writes each target's
//!   checkpoint file every second.
//!
//! The consumer moves through explicit phases ([`Phase`]): it waits for the link's first answer, loads a
//! snapshot (`FullResync` … `RdbEnd`), streams (`Continue`, `Stream`), and may ask the master for a full
//! resync when a command cannot be applied exactly on a shared target (`SWAPDB`), discarding the records of
//! the old connection until it comes. Every position is kept with its epoch — the number of full resyncs
//! started — so nothing of an earlier snapshot or stream can raise what a newer one has applied
//! ([`crate::target::applied`]).
//!
//! # Where a restart resumes
//! Each target's own record decides ([`Resume`]): the in-target checkpoint when it is kept (the default:
//! exact, even after kill -9), else the checkpoint file of that (source, target) pair when the last run
//! stopped cleanly while streaming. A target whose record says a snapshot was being loaded, or that holds
//! this source's data without a usable record, gets a full resync that replaces values and removes the keys
//! the new snapshot did not write. The link resumes at the lowest position of all targets; each target
//! skips what it already holds.
//!
//! `--once` ends the source when the full sync is applied and the stream has been applied up to the master's
//! offset read when the RDB finished. A stop (`cancel`) hands over what was decoded, waits for the targets'
//! answers, acknowledges, and writes a clean checkpoint — only while streaming, at exactly what each target
//! answered.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::{RdbFeeder, SourceError};
use crate::apply::snapshot::SnapshotApplier;
use crate::apply::stream::{
    CrossCommand, Signals, StoredCheckpoint, StreamApplier, TargetCheckpoint, LOADING,
};
use crate::apply::sweep::{self, OwnKeys, Ownership, SweepKind};
use crate::apply::{ApplyError, DbMap};
use crate::checkpoint::{self, Checkpoint, Job, State, Stop};
use crate::endpoint::RedisAddr;
use crate::job::SyncConfig;
use crate::repl::{self, LinkConfig, LinkShared};
use crate::spool::{self, Record, SpoolConfig, SpoolReader};
use crate::status::{FullSyncProgress, ProgressOutput, SourceState, SourceStatus};
use crate::target::applied::{Applied, Pos};
use crate::target::client::Client;
use crate::target::with_retry;

/// How long the one-shot exchanges with a target (its checkpoint, a sweep) ride out lost connections.
const RETRY_FOR: Duration = Duration::from_secs(60);

/// What one source needs to know about its job.
pub struct SourceJob {
    /// Its index in the job (spreads the sources' streams over the pools' connections).
    pub idx: usize,
    pub addr: RedisAddr,
    /// Which of its dbs are synced and where they go.
    pub dbs: DbMap,
    /// How it tells its keys on a shared target.
    pub ownership: Ownership,
    /// ferry's own keys on the targets (never swept).
    pub own_keys: OwnKeys,
    /// For a master that can move (of a cluster source): where its link finds it after a failover.
    pub locate: Option<Arc<dyn repl::Locate>>,
    /// The server to replicate from when it is not `addr`: a master of a cluster source that took over from
    /// `addr` (a failover) since the last run, whose replication history continues `addr`'s (psync2). The
    /// source keeps `addr`'s identity — its checkpoints, in the state directory and in the targets — and its
    /// link asks this server for `PSYNC <addr's replid> <offset>`: a partial resync.
    pub connect: Option<RedisAddr>,
    /// The targets may hold this source's keys though it has no checkpoint (a cluster master that took over
    /// since the last run of a job that continues): its full sync replaces values and removes the keys of
    /// its own it does not hold, as a full resync does.
    pub replaces: bool,
}

/// Where the consumer is in the source's life.
enum Phase {
    /// Waiting for the link's first answer (or the next, after a snapshot broke off).
    Waiting,
    /// An RDB is being applied.
    Snapshot(Box<RdbFeeder>),
    /// The command stream is being applied (by every target's stream applier).
    Streaming,
    /// A full resync was asked for: records of the old connection are dropped until it starts.
    Resyncing,
}

/// What a target's records say about where it stands, at start.
#[derive(Debug, PartialEq, Eq)]
enum Resume {
    /// Nothing of this source on the target: a plain full sync.
    Fresh,
    /// The target holds data of this source but no position to continue from: a full resync that replaces
    /// values and sweeps.
    Full { why: String },
    /// The target holds everything up to this position.
    At(StoredCheckpoint),
}

/// One target of this source.
struct Sink {
    /// The job's configuration with `target` set to this sink's target.
    cfg: SyncConfig,
    /// Whom this target's checkpoint file belongs to.
    job: Job,
    applier: SnapshotApplier,
    stream: Option<StreamApplier>,
    applied: Arc<Applied>,
    /// From an in-target checkpoint: this target already holds every command up to this offset.
    skip_until: i64,
    /// A node of a sharded target: each group's checkpoint offset (its commands up to there are held).
    group_skip: HashMap<usize, i64>,
    /// The in-target checkpoint (its replid is set per stream).
    target_cp: Option<TargetCheckpoint>,
    /// The target holds this source's data from before (an earlier run or epoch): a full sync replaces
    /// values and removes the keys the new snapshot did not write.
    has_data: bool,
}

impl Sink {
    fn cp_path(&self) -> PathBuf {
        self.job.path(&self.cfg.state_dir)
    }

    fn target(&self) -> &RedisAddr {
        &self.cfg.target
    }
}

/// Read the master's current replication offset (for `--once`).
pub(crate) async fn master_offset(addr: &RedisAddr) -> Result<i64, String> {
    let mut c = Client::connect(addr).await.map_err(|e| e.to_string())?;
    let r = c
        .cmd_ok(&[b"INFO", b"replication"])
        .await
        .map_err(|e| e.to_string())?;
    crate::info::field(r.as_bytes().unwrap_or_default(), "master_repl_offset")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| "INFO replication has no master_repl_offset".to_string())
}

/// Run one master until its job is done (`--once`) or `cancel` fires. Every change goes to every target
/// (`targets`: the job's configuration per target, with its snapshot applier).
pub async fn run(
    src: SourceJob,
    targets: Vec<(SyncConfig, SnapshotApplier)>,
    cfg: &SyncConfig,
    st: Arc<SourceStatus>,
    cancel: CancellationToken,
) -> Result<(), SourceError> {
    let addr = src.addr.clone();
    let link_err = |msg: String| SourceError::Link {
        source_name: addr.to_string(),
        msg,
    };
    let id = checkpoint::source_id(&addr.to_string());
    let mut sinks: Vec<Sink> = targets
        .into_iter()
        .map(|(tcfg, applier)| {
            let job = Job::new(
                &addr.to_string(),
                &tcfg.target.to_string(),
                src.dbs.describe(),
            );
            let target_cp = tcfg
                .target_checkpoint
                .as_ref()
                .map(|(db, prefix)| TargetCheckpoint {
                    // A sharded target has one db (a cluster only db 0).
                    db: tcfg.shard.as_ref().map_or(*db, |s| s.db),
                    key: Bytes::from(format!("{prefix}{id}")),
                    replid: String::new(),
                });
            Sink {
                cfg: tcfg,
                job,
                applier,
                stream: None,
                applied: Arc::new(Applied::default()),
                skip_until: -1,
                group_skip: HashMap::new(),
                target_cp,
                has_data: false,
            }
        })
        .collect();

    // Where each target stands, and where the link starts.
    let mut resume_at: Option<StoredCheckpoint> = None;
    let mut all_at = true;
    for k in sinks.iter_mut() {
        let (r, groups) = decide_resume(k).await.map_err(|e| match e {
            Resumed::Target(t) => SourceError::Apply {
                source_name: addr.to_string(),
                err: ApplyError::Target(t),
            },
            Resumed::Other(m) => link_err(m),
        })?;
        k.group_skip = groups;
        tracing::info!(source = %addr, target_addr = %k.target(), resume = ?r, "where the target stands");
        match r {
            Resume::Fresh if src.replaces => {
                tracing::warn!(source = %addr, target_addr = %k.target(),
                    "no checkpoint of this master, but the job continues (it took over another's slots since the \
                     last run): its keys are copied again with a full resync, replacing values and removing the \
                     keys of its slots it no longer has");
                k.has_data = true;
                all_at = false;
            }
            Resume::Fresh => all_at = false,
            Resume::Full { why } => {
                tracing::warn!(source = %addr, target_addr = %k.target(), reason = %why,
                    "this target needs a full resync of this source: values are replaced, and keys the source \
                     no longer has are removed");
                k.has_data = true;
                all_at = false;
            }
            Resume::At(cp) => {
                k.has_data = true;
                k.skip_until = cp.offset;
                resume_at = match resume_at {
                    Some(r) if r.replid != cp.replid => {
                        all_at = false;
                        Some(r)
                    }
                    Some(r) if r.offset <= cp.offset => Some(r),
                    _ => Some(cp),
                };
            }
        }
    }
    let resume = if all_at { resume_at } else { None };
    if resume.is_none() {
        for k in sinks.iter_mut() {
            k.skip_until = -1;
            k.group_skip.clear();
        }
    } else if let Some(r) = &resume {
        tracing::info!(source = %addr, replid = %r.replid, offset = r.offset, db = r.db,
            "resuming with a partial resync");
    }

    let spool_cfg = SpoolConfig::new(&cfg.state_dir, &format!("spool-{id}"))
        .with_limits(cfg.spool_mem_bytes, cfg.spool_disk_bytes);
    let disk_limit = spool_cfg.disk_limit_bytes;
    let (writer, reader) = spool::open(spool_cfg).map_err(|e| link_err(e.to_string()))?;
    st.set_spool(writer.stats(), disk_limit);
    st.set_state(SourceState::Connecting);
    let shared = LinkShared::new();
    {
        let link = shared.clone();
        st.read_received_from(move || link.received.load(std::sync::atomic::Ordering::Acquire));
    }
    let connect = src.connect.clone().unwrap_or_else(|| addr.clone());
    if connect.host_port() != addr.host_port() {
        // The heartbeat and `--once` ask the server the link uses.
        shared.set_master(connect.clone());
    }
    let link_cfg = LinkConfig {
        name: format!("source {addr}"),
        addr: connect.clone(),
        resume: resume.as_ref().map(|r| (r.replid.clone(), r.offset)),
        locate: src.locate.clone(),
        ..LinkConfig::new(connect)
    };
    // Not a child of `cancel`: the link keeps reading (and acknowledging) while the consumer drains on a stop,
    // and is stopped after the last ACK.
    let link_cancel = CancellationToken::new();
    if let Some((every, key)) = cfg.heartbeat.clone() {
        tokio::spawn(heartbeat(
            addr.clone(),
            shared.clone(),
            every,
            key,
            link_cancel.clone(),
        ));
    }
    let link = tokio::spawn(repl::run(
        link_cfg,
        shared.clone(),
        writer,
        link_cancel.clone(),
    ));

    let mut c = Consumer {
        src,
        cfg: cfg.clone(),
        sinks,
        st,
        shared,
        phase: Phase::Waiting,
        epoch: 0,
        replid: resume
            .as_ref()
            .map(|r| r.replid.clone())
            .unwrap_or_default(),
        resume,
        snapshot_offset: -1,
        once_target: None,
        progress: None,
        last_cp: Instant::now(),
    };
    let (mut reader, mut link) = (reader, link);
    let mut link_done = false;
    let outcome = c
        .run(
            &mut reader,
            &mut link,
            &mut link_done,
            &cancel,
            &link_cancel,
        )
        .await;
    c.shutdown(outcome.is_ok()).await;
    // Only now stop the link (after the last ACK went out), and keep the spool's reader until it has: a
    // link pushing into a spool without reader would report that as a failure.
    link_cancel.cancel();
    if !link_done {
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut link).await;
    }
    drop(reader);
    outcome
}

/// Why where a target stands could not be read.
enum Resumed {
    Target(crate::target::TargetError),
    Other(String),
}

/// Where a target stands for this source, from its in-target checkpoint and its checkpoint file; for a node
/// of a sharded target also each group's checkpoint offset.
async fn decide_resume(k: &Sink) -> Result<(Resume, HashMap<usize, i64>), Resumed> {
    let file = k
        .job
        .load(&k.cfg.state_dir)
        .map_err(|e| Resumed::Other(e.to_string()))?;
    if let Some(tc) = &k.target_cp {
        let (stored, groups) = with_retry("reading the in-target checkpoint", RETRY_FOR, || {
            read_checkpoints(&k.cfg, tc)
        })
        .await
        .map_err(|e| match e {
            // A cluster whose layout changes under the reading: the job starts again on the new one.
            crate::target::TargetError::Topology { .. } => Resumed::Target(e),
            e => Resumed::Other(format!("reading the in-target checkpoint: {e}")),
        })?;
        if let TargetMark::Mixed(why) = stored {
            return Ok((Resume::Full { why }, HashMap::new()));
        }
        let r = match (stored, &file) {
            (TargetMark::At(cp), _) => Resume::At(cp),
            (TargetMark::Loading, _) => Resume::Full {
                why: "the target was loading a snapshot of this source when the last run stopped".into(),
            },
            (TargetMark::None, Some(_)) => Resume::Full {
                why: format!(
                    "the checkpoint file {} says the target holds this source's data, but the target has no \
                     checkpoint of it (it restarted without its data, or was flushed): it is copied again",
                    k.cp_path().display(),
                ),
            },
            (TargetMark::None, None) => Resume::Fresh,
            (TargetMark::Mixed(_), _) => unreachable!("handled above"),
        };
        return Ok((r, groups));
    }
    let r = match file {
        None => Resume::Fresh,
        Some(f) if f.clean && f.state == State::Streaming => Resume::At(StoredCheckpoint {
            replid: f.replid,
            offset: f.offset,
            db: f.db,
        }),
        Some(f) if f.state == State::FullSync => Resume::Full {
            why: "a snapshot was being loaded when the last run stopped".into(),
        },
        Some(_) => Resume::Full {
            why: "the last run did not stop cleanly and no checkpoint is kept in the target (it was turned off): \
                  its checkpoint may be behind the target, and replaying commands twice would corrupt the copy"
                .into(),
        },
    };
    Ok((r, HashMap::new()))
}

/// The consumer of one source's spool: the phases, the epoch, and what each target applied.
struct Consumer {
    src: SourceJob,
    cfg: SyncConfig,
    sinks: Vec<Sink>,
    st: Arc<SourceStatus>,
    shared: Arc<LinkShared>,
    phase: Phase,
    /// `FullResync` records taken so far: the epoch of every position.
    epoch: u64,
    /// The replication id of the history being applied.
    replid: String,
    /// Where this run resumes (the link's first PSYNC).
    resume: Option<StoredCheckpoint>,
    /// The master offset the snapshot being loaded covers.
    snapshot_offset: i64,
    /// `--once`: stop when every target applied this offset.
    once_target: Option<i64>,
    progress: Option<FullSyncProgress>,
    last_cp: Instant,
}

enum Step {
    Go,
    Done,
}

impl Consumer {
    fn addr(&self) -> &RedisAddr {
        &self.src.addr
    }

    fn err(&self, msg: impl Into<String>) -> SourceError {
        SourceError::Link {
            source_name: self.src.addr.to_string(),
            msg: msg.into(),
        }
    }

    fn apply_err(&self, err: ApplyError) -> SourceError {
        SourceError::Apply {
            source_name: self.src.addr.to_string(),
            err,
        }
    }

    /// The lowest position applied over the targets in the current epoch (`None` while one has nothing of
    /// it applied).
    fn min_applied(&self) -> Option<Pos> {
        let mut low: Option<Pos> = None;
        for k in &self.sinks {
            let p = k.applied.get();
            if p.epoch != self.epoch || p.offset < 0 {
                return None;
            }
            if low.map_or(true, |l| p.offset < l.offset) {
                low = Some(p);
            }
        }
        low
    }

    async fn run(
        &mut self,
        reader: &mut SpoolReader,
        link: &mut tokio::task::JoinHandle<Result<(), repl::LinkError>>,
        link_done: &mut bool,
        cancel: &CancellationToken,
        link_cancel: &CancellationToken,
    ) -> Result<(), SourceError> {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // A stream batch is unanswered: its answer hands over what is pending and moves the applied
            // offset at once (status and the link read it: `ferry proxy`'s cutover waits on it).
            let waiting = self
                .sinks
                .iter()
                .any(|k| k.stream.as_ref().is_some_and(|s| s.waiting()));
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(()),
                r = &mut *link, if !*link_done => {
                    *link_done = true;
                    match r {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Err(SourceError::Named(e.to_string())),
                        Err(e) => return Err(SourceError::Named(format!("the replication link task failed: {e}"))),
                    }
                }
                _ = tick.tick() => {
                    if let Step::Done = self.tick().await? {
                        return Ok(());
                    }
                }
                _ = ready_any(&mut self.sinks), if waiting => {
                    for k in self.sinks.iter_mut() {
                        if let Some(s) = k.stream.as_mut() {
                            s.send().await.map_err(|e| SourceError::Apply {
                                source_name: self.src.addr.to_string(), err: e })?;
                        }
                    }
                    self.report_applied();
                }
                rec = reader.next() => {
                    let rec = match rec {
                        Ok(Some(r)) => r,
                        Ok(None) => {
                            // The link ended (cancelled or failed); its result says which.
                            if !*link_done {
                                link_cancel.cancel();
                                *link_done = true;
                                return match (&mut *link).await {
                                    Ok(Ok(())) => Ok(()),
                                    Ok(Err(e)) => Err(SourceError::Named(e.to_string())),
                                    Err(e) => Err(SourceError::Named(e.to_string())),
                                };
                            }
                            return Ok(());
                        }
                        Err(e) => return Err(self.err(e.to_string())),
                    };
                    self.on_record(rec).await?;
                }
            }
        }
    }

    async fn on_record(&mut self, rec: Record) -> Result<(), SourceError> {
        if matches!(self.phase, Phase::Resyncing) && !matches!(rec, Record::FullResync { .. }) {
            return Ok(()); // the old connection's records: the coming snapshot covers them
        }
        match rec {
            Record::FullResync { replid, offset } => self.on_full_resync(replid, offset).await,
            Record::Rdb(bytes) => self.on_rdb(bytes).await,
            Record::RdbEnd => self.on_rdb_end().await,
            Record::Continue { replid, offset } => self.on_continue(replid, offset).await,
            Record::Stream(bytes) => self.on_stream(bytes).await,
            Record::LinkDown { reason } => {
                tracing::warn!(source = %self.addr(), %reason, "link down; reconnecting");
                self.st.link_down(&reason);
                if let Phase::Snapshot(_) = self.phase {
                    // The snapshot starts again with the next FULLRESYNC.
                    self.phase = Phase::Waiting;
                }
                Ok(())
            }
        }
    }

    /// A full sync starts: a new epoch; before the first write, every target's records say a snapshot is
    /// being loaded (so a stop or crash from here on leads to a full resync, never a partial one).
    async fn on_full_resync(&mut self, replid: String, offset: i64) -> Result<(), SourceError> {
        let again = self.epoch > 0 || self.resume.is_some();
        self.epoch += 1;
        if again || !matches!(self.phase, Phase::Waiting) {
            tracing::warn!(source = %self.addr(), "the master started a full resync: values are replaced, and keys \
                it no longer has are removed from the target");
        }
        // What is still in flight of the previous epoch must land before the snapshot overwrites it.
        for k in self.sinks.iter_mut() {
            if let Some(mut s) = k.stream.take() {
                if let Err(e) = s.drain().await {
                    return Err(SourceError::Apply {
                        source_name: self.src.addr.to_string(),
                        err: e,
                    });
                }
            }
            // A target that already received anything of this source holds data to replace.
            if again || k.applied.get().offset >= 0 {
                k.has_data = true;
            }
            k.skip_until = -1;
            k.applied.begin(Pos {
                epoch: self.epoch,
                offset: -1,
                db: 0,
            });
        }
        tracing::info!(source = %self.addr(), replid = %replid, offset, "full sync: receiving the snapshot");
        let total = self
            .shared
            .rdb_size
            .load(std::sync::atomic::Ordering::Acquire);
        self.st
            .full_sync_started(&replid, offset, u64::try_from(total).ok());
        if let Some(p) = self.progress.take() {
            p.finish().await;
        }
        self.progress = Some(FullSyncProgress::start(
            &ProgressOutput::stderr(),
            self.st.clone(),
        ));
        self.replid = replid;
        self.snapshot_offset = offset;
        let sid = checkpoint::source_id(&self.src.addr.to_string());
        let err = |msg: String| SourceError::Link {
            source_name: self.src.addr.to_string(),
            msg,
        };
        for (i, k) in self.sinks.iter_mut().enumerate() {
            k.applier.set_overwrite(k.has_data || self.cfg.overwrite);
            if k.has_data {
                k.applier
                    .start_index(&self.cfg.state_dir, &format!("snapshot-{sid}-{i}"));
            }
            let cp = k
                .job
                .checkpoint(&self.replid, offset, 0, State::FullSync, Stop::RUNNING);
            store_checkpoint(&k.cp_path(), cp)
                .await
                .map_err(|e| err(e.to_string()))?;
            if let Some(tc) = &k.target_cp {
                with_retry("marking the in-target checkpoint", RETRY_FOR, || {
                    mark_loading(&k.cfg, tc)
                })
                .await
                .map_err(|e| match e {
                    crate::target::TargetError::Topology { .. } => SourceError::Apply {
                        source_name: self.src.addr.to_string(),
                        err: ApplyError::Target(e),
                    },
                    e => err(format!("marking the in-target checkpoint as loading: {e}")),
                })?;
            }
        }
        self.phase = Phase::Snapshot(Box::new(RdbFeeder::new(self.cfg.decoder.clone())));
        Ok(())
    }

    async fn on_rdb(&mut self, bytes: Bytes) -> Result<(), SourceError> {
        let Phase::Snapshot(f) = &mut self.phase else {
            return Err(self.err("RDB bytes outside a full sync"));
        };
        self.st.add_rdb_received(bytes.len() as u64);
        if self.st.rdb_progress().3 < 0 {
            let total = self
                .shared
                .rdb_size
                .load(std::sync::atomic::Ordering::Acquire);
            if total >= 0 {
                self.st.set_rdb_total(Some(total as u64));
            }
        }
        let keys_before = f.summary.entries;
        let mut appliers: Vec<&mut SnapshotApplier> =
            self.sinks.iter_mut().map(|k| &mut k.applier).collect();
        if let Err(e) = f.push(&bytes, &mut appliers).await {
            return Err(self.apply_err(e));
        }
        let loaded = f.summary.entries - keys_before;
        self.st.add_rdb_applied(bytes.len() as u64);
        self.st.add_keys_loaded(loaded);
        Ok(())
    }

    /// The snapshot is complete: wait until every target answered it, remove what the source no longer has,
    /// record the snapshot's position (in the targets too), and start streaming.
    async fn on_rdb_end(&mut self) -> Result<(), SourceError> {
        let Phase::Snapshot(mut f) = std::mem::replace(&mut self.phase, Phase::Waiting) else {
            return Err(self.err("RDB end outside a full sync"));
        };
        let mut appliers: Vec<&mut SnapshotApplier> =
            self.sinks.iter_mut().map(|k| &mut k.applier).collect();
        let summary = match f.finish(&mut appliers).await {
            Ok(s) => s,
            Err(e) => return Err(self.apply_err(e)),
        };
        if let Some(p) = self.progress.take() {
            p.finish().await;
        }
        let start = Pos {
            epoch: self.epoch,
            offset: self.snapshot_offset,
            db: 0,
        };
        for i in 0..self.sinks.len() {
            let mut s = self.new_stream(i, start);
            if let Some(index) = self.sinks[i].applier.take_index() {
                // Keys this source no longer has (deleted while we were not streaming, or before this resync)
                // must not stay behind: the owned keys the snapshot did not write go.
                let set = tokio::task::spawn_blocking(move || index.finish())
                    .await
                    .map_err(|e| self.err(e.to_string()))?
                    .map_err(|e| self.err(format!("the snapshot's key set: {e}")))?;
                let kind = SweepKind::NotIn(Arc::new(set));
                remove_keys(&mut s, &self.sinks[i].cfg, &self.src, None, &kind)
                    .await
                    .map_err(|e| self.apply_err(e))?;
            }
            // The snapshot is on the target: record it there before any stream command.
            s.mark().await.map_err(|e| self.apply_err(e))?;
            s.drain().await.map_err(|e| self.apply_err(e))?;
            let k = &mut self.sinks[i];
            k.applied.advance(start);
            k.stream = Some(s);
        }
        self.st.set_state(SourceState::Streaming);
        tracing::info!(source = %self.addr(), rdb_version = summary.version, bytes = summary.bytes,
            keys = summary.entries, "snapshot applied; streaming");
        if self.cfg.once {
            let o = master_offset(&self.shared.master(self.addr()))
                .await
                .map_err(|e| self.err(format!("reading the master's offset for --once: {e}")))?;
            self.st.set_master_offset(o);
            self.once_target = Some(o.max(start.offset));
        }
        self.phase = Phase::Streaming;
        self.report_applied();
        Ok(())
    }

    fn new_stream(&self, i: usize, start: Pos) -> StreamApplier {
        let k = &self.sinks[i];
        let hb_key = self
            .cfg
            .heartbeat
            .as_ref()
            .map(|(_, key)| Bytes::from(key.clone()));
        let st = self.st.clone();
        let hb_sink: crate::apply::stream::HeartbeatSink =
            Arc::new(move |lag| st.set_heartbeat_lag(lag));
        let mut s = StreamApplier::new(k.applier.pool(), start, k.applied.clone())
            .with_connection(self.src.idx)
            .forward_flush(matches!(self.src.ownership, Ownership::Sole))
            .with_dbs(self.src.dbs.clone())
            .with_heartbeat(hb_key, hb_sink)
            .with_target_checkpoint(k.target_cp.clone().map(|mut t| {
                t.replid = self.replid.clone();
                t
            }))
            .skip_until(k.skip_until)
            .with_shard(k.cfg.shard.clone(), k.group_skip.clone());
        s.add_scripts(&k.applier.scripts);
        s
    }

    async fn on_continue(&mut self, replid: String, offset: i64) -> Result<(), SourceError> {
        self.replid = replid;
        match &self.phase {
            Phase::Streaming => {
                for k in self.sinks.iter_mut() {
                    if let Some(s) = k.stream.as_mut() {
                        if s.received() != offset {
                            return Err(SourceError::Link {
                                source_name: self.src.addr.to_string(),
                                msg: format!(
                                    "the link continued at offset {offset} but the stream was received up to {}",
                                    s.received()
                                ),
                            });
                        }
                        s.set_replid(&self.replid);
                    }
                }
            }
            Phase::Waiting => {
                // The first answer of this run: continue from the targets' positions.
                let Some(r) = self.resume.clone() else {
                    return Err(self.err("+CONTINUE without a position to continue from"));
                };
                if r.offset != offset {
                    return Err(self.err(format!(
                        "the link continued at offset {offset}, not at the checkpoint's {}",
                        r.offset
                    )));
                }
                let start = Pos {
                    epoch: self.epoch,
                    offset,
                    db: r.db,
                };
                for i in 0..self.sinks.len() {
                    let k = &self.sinks[i];
                    // What this target already holds counts as applied.
                    k.applied.begin(Pos {
                        epoch: self.epoch,
                        offset: offset.max(k.skip_until),
                        db: r.db,
                    });
                    let s = self.new_stream(i, start);
                    self.sinks[i].stream = Some(s);
                }
                if self.cfg.once {
                    let o = master_offset(&self.shared.master(self.addr()))
                        .await
                        .map_err(|e| {
                            self.err(format!("reading the master's offset for --once: {e}"))
                        })?;
                    self.once_target = Some(o.max(offset));
                }
                self.phase = Phase::Streaming;
                self.report_applied();
            }
            Phase::Snapshot(_) => {
                // The link broke during the RDB transfer: the master must send it again.
                return Err(self.err("partial resync accepted in the middle of a snapshot"));
            }
            Phase::Resyncing => {}
        }
        self.st.partial_sync_started(&self.replid, offset);
        self.st.set_state(SourceState::Streaming);
        Ok(())
    }

    async fn on_stream(&mut self, bytes: Bytes) -> Result<(), SourceError> {
        if !matches!(self.phase, Phase::Streaming) {
            return Err(self.err("stream bytes before the snapshot ended"));
        }
        let mut ack_now = false;
        let mut resync: Option<String> = None;
        let mut pushed: Vec<Option<Result<Signals, ApplyError>>> = Vec::new();
        for i in 0..self.sinks.len() {
            let r = self.push_sink(i, &bytes, &mut ack_now).await;
            pushed.push(r);
        }
        // The nodes of a sharded target that stopped at a command over several of their groups: apply it
        // once for all of them, then let them go on (they may stop again further on).
        while let Some(first) = pushed
            .iter()
            .position(|p| matches!(p, Some(Ok(sig)) if sig.cross.is_some()))
        {
            let Some(Ok(sig)) = &pushed[first] else {
                unreachable!("matched above")
            };
            let cmd = sig.cross.clone().expect("matched above");
            let label = self.sinks[first]
                .cfg
                .shard
                .as_ref()
                .map(|s| s.label.clone());
            let crossing: Vec<usize> = (0..self.sinks.len())
                .filter(|&i| {
                    matches!(&pushed[i], Some(Ok(sig)) if sig.cross.as_ref() == Some(&cmd))
                        && self.sinks[i].cfg.shard.as_ref().map(|s| s.label.clone()) == label
                })
                .collect();
            self.apply_cross(&cmd, first)
                .await
                .map_err(|e| self.apply_err(e))?;
            for i in crossing {
                if let Some(Ok(sig)) = &pushed[i] {
                    ack_now |= sig.ack_now;
                }
                pushed[i] = self.push_sink(i, &[], &mut ack_now).await;
            }
        }
        for (i, p) in pushed.into_iter().enumerate() {
            let Some(p) = p else { continue };
            match p {
                Ok(sig) => {
                    if let Some(s) = self.sinks[i].stream.as_mut() {
                        s.send().await.map_err(|e| SourceError::Apply {
                            source_name: self.src.addr.to_string(),
                            err: e,
                        })?;
                    }
                    ack_now |= sig.ack_now;
                    if sig.resync.is_some() {
                        resync = sig.resync;
                    }
                }
                Err(e) => return Err(self.apply_err(e)),
            }
        }
        if let Some(why) = resync {
            // Everything before the command is applied; the full resync copies the source as it is now.
            for k in self.sinks.iter_mut() {
                if let Some(s) = k.stream.as_mut() {
                    s.drain().await.map_err(|e| SourceError::Apply {
                        source_name: self.src.addr.to_string(),
                        err: e,
                    })?;
                }
            }
            tracing::warn!(source = %self.addr(), reason = %why,
                "this cannot be applied to the source's keys alone: re-copying the source with a full resync");
            self.shared.request_full_resync();
            self.phase = Phase::Resyncing;
            self.report_applied();
            return Ok(());
        }
        if ack_now {
            self.report_applied();
            self.shared.ack_now.notify_one();
        }
        Ok(())
    }

    /// Push stream bytes into one target's applier, removing this source's keys at each flush it meets;
    /// `None` when this target has no stream (yet).
    async fn push_sink(
        &mut self,
        i: usize,
        bytes: &[u8],
        ack_now: &mut bool,
    ) -> Option<Result<Signals, ApplyError>> {
        let k = &mut self.sinks[i];
        let s = k.stream.as_mut()?;
        let mut pushed = s.push(bytes).await;
        loop {
            match &pushed {
                Ok(sig) if sig.flush.is_some() => {
                    let scope = sig.flush.expect("checked");
                    let dbs = scope.map(|d| vec![d]);
                    if let Err(e) = remove_keys(s, &k.cfg, &self.src, dbs, &SweepKind::All).await {
                        return Some(Err(e));
                    }
                    *ack_now |= sig.ack_now;
                    pushed = s.push(&[]).await;
                }
                _ => return Some(pushed),
            }
        }
    }

    /// A command over several groups of the sharded target that sink `first` is a node of: every node
    /// holds everything before it (drained), then it is applied once across them (see `apply::cross`).
    async fn apply_cross(&mut self, cmd: &CrossCommand, first: usize) -> Result<(), ApplyError> {
        let Some(shard) = self.sinks[first].cfg.shard.clone() else {
            return Ok(());
        };
        let mut nodes = std::collections::HashMap::new();
        for k in self.sinks.iter_mut() {
            let Some(ks) = k.cfg.shard.as_ref() else {
                continue;
            };
            if ks.label != shard.label {
                continue;
            }
            nodes.insert(ks.node, k.cfg.target.clone());
            if let Some(s) = k.stream.as_mut() {
                s.drain().await?;
            }
        }
        let Some(s) = self.sinks[first].stream.as_ref() else {
            return Ok(());
        };
        let checkpoint = |g: usize| s.shard_checkpoint(g, cmd.end, cmd.db).unwrap_or_default();
        let tmp_prefix = format!(
            "{}{}:",
            crate::job::TMP_PREFIX,
            checkpoint::source_id(&self.src.addr.to_string())
        );
        let target = crate::apply::cross::CrossTarget {
            shard: &shard,
            nodes: &nodes,
            checkpoint: &checkpoint,
            tmp_prefix: &tmp_prefix,
        };
        let outcome = crate::apply::cross::apply(cmd, &target).await?;
        let name = String::from_utf8_lossy(&cmd.args[0]).to_uppercase();
        let stats = s.ordered_connection().0.stats().clone();
        match outcome {
            crate::apply::cross::Outcome::Refused(e) => {
                if stats.record_rejection(&name, &e) {
                    tracing::error!(target_addr = %shard.label, command = %name,
                        key = %crate::target::pool::escape_key(&cmd.args[cmd.keys[0]]), error = %e,
                        "target rejected a write (further rejections of this kind are counted, not logged)");
                }
            }
            _ => stats.record_split(&name),
        }
        Ok(())
    }

    /// Tell the link (ACK) and status what every target applied.
    fn report_applied(&self) {
        let low = self.min_applied();
        let offset = low.map(|p| p.offset).unwrap_or(-1);
        self.shared.set_applied(self.epoch, offset);
        self.st.set_applied_offset(offset);
    }

    /// Every 250 ms: `--on-error stop`, ACK position, `--once`, and each target's checkpoint every second.
    async fn tick(&mut self) -> Result<Step, SourceError> {
        let failed: u64 = self
            .sinks
            .iter()
            .map(|k| k.applier.pool().stats().failed())
            .sum();
        if self.cfg.stop_on_error && failed > 0 {
            return Err(self.err(format!(
                "the target rejected {failed} writes and --on-error stop is set (see the log for the commands, keys and errors)")));
        }
        self.report_applied();
        self.st.set_received_offset(
            self.shared
                .received
                .load(std::sync::atomic::Ordering::Acquire),
        );
        if let (Some(t), Phase::Streaming) = (self.once_target, &self.phase) {
            if self.min_applied().is_some_and(|p| p.offset >= t) {
                tracing::info!(source = %self.addr(), offset = t,
                    "caught up with the master's offset at the end of the snapshot (--once)");
                return Ok(Step::Done);
            }
        }
        if self.last_cp.elapsed() >= Duration::from_secs(1)
            && matches!(self.phase, Phase::Streaming)
        {
            self.last_cp = Instant::now();
            let mut lowest: Option<i64> = None;
            for k in &self.sinks {
                let p = k.applied.get();
                if p.epoch != self.epoch || p.offset < 0 {
                    continue;
                }
                let cp = k.job.checkpoint(
                    &self.replid,
                    p.offset,
                    p.db,
                    State::Streaming,
                    Stop::RUNNING,
                );
                match store_checkpoint(&k.cp_path(), cp).await {
                    Ok(()) => lowest = Some(lowest.map_or(p.offset, |l| l.min(p.offset))),
                    Err(e) => {
                        tracing::warn!(source = %self.src.addr, error = %e, "checkpoint not written")
                    }
                }
            }
            if let Some(l) = lowest {
                self.st.checkpoint_written(l);
            }
        }
        Ok(Step::Go)
    }

    /// Stop: hand over what was decoded, wait for the targets' answers, acknowledge, and write each target's
    /// checkpoint — clean only while streaming, and only at what that target answered.
    async fn shutdown(&mut self, ok: bool) {
        let streaming = matches!(self.phase, Phase::Streaming);
        for i in 0..self.sinks.len() {
            let drained = match self.sinks[i].stream.as_mut() {
                Some(s) => s.drain().await,
                None => self.sinks[i]
                    .applier
                    .pool()
                    .flush()
                    .await
                    .map_err(ApplyError::from),
            };
            let k = &self.sinks[i];
            match &drained {
                Err(ApplyError::Target(crate::target::TargetError::Topology { .. })) => {
                    // The cluster's layout changed: the job continues on the new one (see `sync::run`).
                    tracing::info!(source = %self.src.addr, target_addr = %k.target(),
                        "the target's layout changed; its slots' checkpoints say what it holds");
                }
                Err(e) => {
                    tracing::warn!(source = %self.src.addr, target_addr = %k.target(), error = %e,
                    "could not hand everything to the target on shutdown")
                }
                Ok(()) => {}
            }
            let p = k.applied.get();
            let cp: Option<Checkpoint> = if streaming && p.epoch == self.epoch && p.offset >= 0 {
                Some(k.job.checkpoint(
                    &self.replid,
                    p.offset,
                    p.db,
                    State::Streaming,
                    Stop::at_shutdown(ok, streaming, drained.is_ok()),
                ))
            } else {
                None // the file says what it said: a snapshot being loaded, or the last streaming position
            };
            if let Some(cp) = cp {
                match store_checkpoint(&k.cp_path(), cp.clone()).await {
                    Ok(()) => tracing::info!(source = %self.src.addr, target_addr = %k.target(),
                        replid = %cp.replid, offset = cp.offset, clean = cp.clean, "checkpoint written"),
                    Err(e) => {
                        tracing::warn!(source = %self.src.addr, error = %e, "checkpoint not written")
                    }
                }
            }
        }
        self.report_applied();
        self.shared.ack_now.notify_one();
        if let Some(p) = self.progress.take() {
            p.finish().await;
        }
    }
}

/// Resolves when any target's stream has its unanswered batch answered.
async fn ready_any(sinks: &mut [Sink]) {
    let futs = sinks
        .iter_mut()
        .filter_map(|k| k.stream.as_mut())
        .filter(|s| s.waiting())
        .map(|s| Box::pin(s.ready()));
    let v: Vec<_> = futs.collect();
    if v.is_empty() {
        return std::future::pending().await;
    }
    futures_select_first(v).await;
}

/// The first of several futures to complete.
async fn futures_select_first<F: std::future::Future<Output = ()> + Unpin>(mut v: Vec<F>) {
    std::future::poll_fn(|cx| {
        for f in v.iter_mut() {
            if std::pin::Pin::new(f).poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Remove this source's keys from the target (all of them in `dbs`, or those its snapshot did not write), in
/// order with its stream.
async fn remove_keys(
    s: &mut StreamApplier,
    cfg: &SyncConfig,
    src: &SourceJob,
    dbs: Option<Vec<u32>>,
    kind: &SweepKind,
) -> Result<(), ApplyError> {
    // Everything before this point must be on the target before it is scanned.
    s.drain().await?;
    node_wide(cfg)?;
    // After a full resync, a node judges the keys it holds by the snapshot's keys of *its* slots: a key that
    // `MIGRATE` moved onto it since the job read the layout belongs to another node's judgement. Only keys
    // of slots this node owns in the job's layout are removed, and a layout that changed is a layout
    // change (the job continues on the new one) rather than a sweep on a guess.
    let judged = match (kind, cfg.shard.as_ref().filter(|sh| sh.is_cluster())) {
        (SweepKind::NotIn(_), Some(sh)) => {
            layout_unchanged(cfg, sh).await?;
            Some(sh.clone())
        }
        _ => None,
    };
    let dbs = match dbs {
        Some(d) => d,
        None => match &src.dbs.keep {
            // Only the target dbs this source writes into.
            Some(keep) => {
                let mut t: Vec<u32> = keep.iter().filter_map(|d| src.dbs.target(*d)).collect();
                t.sort_unstable();
                t.dedup();
                t
            }
            None => {
                with_retry("listing the target's dbs", RETRY_FOR, || {
                    sweep::target_dbs(&cfg.target)
                })
                .await?
            }
        },
    };
    let (pool, conn) = s.ordered_connection();
    // A connection lost during the sweep: it starts again (scanning and deleting owned keys twice is safe).
    let report = with_retry("removing this source's keys", RETRY_FOR, || {
        sweep::sweep(
            &cfg.target,
            &dbs,
            &src.ownership,
            kind,
            &src.own_keys,
            |db, mut keys| {
                if let Some(sh) = &judged {
                    keys.retain(|k| sh.owns(k));
                }
                crate::apply::stream::delete_keys(pool.clone(), conn, db, keys, cfg.shard.is_some())
            },
        )
    })
    .await?;
    pool.flush().await?;
    tracing::info!(source = %src.addr, target_addr = %cfg.target, ?kind, dbs = ?dbs, scanned = report.scanned,
        owned = report.owned, deleted = report.deleted, "removed this source's keys from the target");
    Ok(())
}

/// The cluster target's slot layout, as the node `cfg.target` sees it now, is the one the job runs on.
async fn layout_unchanged(
    cfg: &SyncConfig,
    sh: &crate::target::shard::Shard,
) -> Result<(), ApplyError> {
    let topology = |msg: String| {
        ApplyError::Target(crate::target::TargetError::Topology {
            addr: cfg.target.to_string(),
            msg,
        })
    };
    let crate::target::shard::Placement::Cluster(job) = &*sh.placement else {
        return Ok(());
    };
    let (now, _) = with_retry("reading the cluster's slot map", RETRY_FOR, || async {
        crate::target::shard::discover(std::slice::from_ref(&cfg.target))
            .await
            .map_err(|e| crate::target::TargetError::Protocol {
                addr: cfg.target.to_string(),
                detail: e,
            })
    })
    .await?;
    let owner = |m: &crate::cluster::SlotMap, s: u16| m.owner(s).map(|i| m.nodes()[i].addr.clone());
    match (0..crate::cluster::SLOTS as u16).find(|&s| owner(job, s) != owner(&now, s)) {
        None => Ok(()),
        Some(s) => Err(topology(format!(
            "slot {s} moved since the job read the layout ({:?} → {:?}); the keys the snapshot did not \
             write are removed on the new layout",
            owner(job, s),
            owner(&now, s)
        ))),
    }
}

/// A node-wide write (a sweep) is about to be applied to a node of a cluster target: refused as a layout
/// change when a write was forwarded to another node in this run (see
/// [`crate::target::redirect::Redirects::forward`]).
pub(crate) fn node_wide(cfg: &SyncConfig) -> Result<(), ApplyError> {
    match cfg.shard.as_ref().and_then(|s| s.redirects.as_ref()) {
        Some(r) if !r.node_wide() => Err(ApplyError::Target(crate::target::TargetError::Topology {
            addr: cfg.target.to_string(),
            msg: "writes followed redirections to other nodes in this run, and a flush or sweep must not \
                  meet them (see target::redirect)"
                .into(),
        })),
        _ => Ok(()),
    }
}

/// What a target's in-target checkpoint key holds.
enum TargetMark {
    None,
    Loading,
    At(StoredCheckpoint),
    /// A sharded target whose groups' checkpoints disagree (some missing, loading, or of another replid).
    Mixed(String),
}

/// The in-target checkpoint of this source: for a node of a sharded target, every group's (the lowest is
/// where the node stands; each group's offset says what it holds).
async fn read_checkpoints(
    cfg: &SyncConfig,
    tc: &TargetCheckpoint,
) -> Result<(TargetMark, HashMap<usize, i64>), crate::target::TargetError> {
    let Some(shard) = &cfg.shard else {
        return Ok((read_target_checkpoint(cfg, tc).await?, HashMap::new()));
    };
    let groups = shard.groups();
    let keys: Vec<Vec<u8>> = groups
        .iter()
        .map(|g| crate::apply::stream::group_key(shard, &tc.key, *g))
        .collect();
    let mut c = Client::connect(&cfg.target).await?;
    if tc.db != 0 {
        c.cmd_ok(&[b"SELECT", tc.db.to_string().as_bytes()]).await?;
    }
    let mut values = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(1000) {
        let cmds: Vec<Vec<&[u8]>> = chunk.iter().map(|k| vec![&b"GET"[..], k]).collect();
        values.extend(c.pipeline(&cmds).await?);
    }
    let (mut missing, mut loading) = (0usize, 0usize);
    let mut low: Option<StoredCheckpoint> = None;
    let mut map = HashMap::new();
    for (i, v) in values.iter().enumerate() {
        if v.is_error() {
            return Err(redirected_or(&c, b"GET", v.as_bytes().unwrap_or_default()));
        }
        match v.as_bytes() {
            None => missing += 1,
            Some(b) if b == LOADING.as_bytes() => loading += 1,
            Some(b) => match TargetCheckpoint::parse(b) {
                Some(cp) => {
                    if low.as_ref().is_some_and(|l| l.replid != cp.replid) {
                        return Ok((
                            TargetMark::Mixed(format!(
                                "the slots' checkpoints on {} name different replication ids",
                                cfg.target
                            )),
                            HashMap::new(),
                        ));
                    }
                    map.insert(groups[i], cp.offset);
                    if low.as_ref().map_or(true, |l| cp.offset < l.offset) {
                        low = Some(cp);
                    }
                }
                None => {
                    return Err(crate::target::TargetError::Protocol {
                        addr: cfg.target.to_string(),
                        detail: format!(
                            "the in-target checkpoint {} holds {:?}, not a checkpoint",
                            String::from_utf8_lossy(&keys[i]),
                            String::from_utf8_lossy(&b[..b.len().min(64)])
                        ),
                    })
                }
            },
        }
    }
    let n = values.len();
    Ok(match (missing, loading, low) {
        (m, 0, None) if m == n => (TargetMark::None, map),
        (0, l, None) if l == n => (TargetMark::Loading, map),
        (0, 0, Some(cp)) => (TargetMark::At(cp), map),
        (m, l, _) => (
            TargetMark::Mixed(format!(
                "of the {n} slot checkpoints on {}, {m} are missing and {l} mark a snapshot being loaded \
                 (the last run stopped during a full sync, or the node's data was lost)",
                cfg.target
            )),
            HashMap::new(),
        ),
    })
}

/// `SET key value` that node `c` of a cluster target refused with `msg`: written where an `ASK` or `MOVED`
/// says (see [`crate::target::redirect`]); any other error, or a redirection not to follow, fails.
async fn set_redirected(
    cfg: &SyncConfig,
    c: &Client,
    key: &[u8],
    value: &[u8],
    msg: &[u8],
) -> Result<(), crate::target::TargetError> {
    use crate::cluster::Redirect;
    let redirects = cfg.shard.as_ref().and_then(|s| s.redirects.as_ref());
    let mut msg = msg.to_vec();
    let mut answered_by = cfg.target.host_port();
    for _ in 0..16 {
        let parsed = Redirect::parse(&msg);
        let to = parsed.as_ref().and_then(|r| r.resolve(&answered_by));
        let (node, asking) = match (parsed, to, redirects) {
            (Some(Redirect::Ask { .. }), Some(node), Some(_)) => (node, true),
            (Some(Redirect::Moved { .. }), Some(node), Some(r)) => {
                r.drift();
                (node, false)
            }
            _ => return Err(redirected_or(c, b"SET", &msg)),
        };
        let Some(r) = redirects else {
            return Err(redirected_or(c, b"SET", &msg));
        };
        let (Some(addr), true) = (r.master(&node).cloned(), r.forward()) else {
            return Err(redirected_or(c, b"SET", &msg));
        };
        let mut to = Client::connect(&addr).await?;
        if asking {
            to.cmd_ok(&[b"ASKING"]).await?;
        }
        match to.cmd(&[b"SET", key, value]).await? {
            crate::resp::Reply::Error(e) => {
                msg = e.to_vec();
                answered_by = node;
            }
            _ => return Ok(()),
        }
    }
    Err(redirected_or(c, b"SET", &msg))
}

/// An error reply: a cluster redirection (the layout changed) or a refused command.
fn redirected_or(c: &Client, what: &[u8], msg: &[u8]) -> crate::target::TargetError {
    let text = String::from_utf8_lossy(msg).to_string();
    if crate::target::is_redirection(&text) {
        return crate::target::TargetError::Topology {
            addr: c.addr().to_string(),
            msg: text,
        };
    }
    c.command_error(what, msg)
}

/// The in-target checkpoint of this source, if there is one.
async fn read_target_checkpoint(
    cfg: &SyncConfig,
    tc: &TargetCheckpoint,
) -> Result<TargetMark, crate::target::TargetError> {
    let mut c = Client::connect(&cfg.target).await?;
    let db = tc.db.to_string();
    c.cmd_ok(&[b"SELECT", db.as_bytes()]).await?;
    let r = c.cmd_ok(&[b"GET", &tc.key]).await?;
    Ok(match r.as_bytes() {
        None => TargetMark::None,
        Some(v) if v == LOADING.as_bytes() => TargetMark::Loading,
        Some(v) => match TargetCheckpoint::parse(v) {
            Some(cp) => TargetMark::At(cp),
            None => {
                return Err(crate::target::TargetError::Protocol {
                    addr: cfg.target.to_string(),
                    detail: format!(
                        "the in-target checkpoint {} holds {:?}, not a checkpoint: remove the key (or use \
                         --checkpoint-key-prefix) and start over",
                        String::from_utf8_lossy(&tc.key),
                        String::from_utf8_lossy(&v[..v.len().min(64)])
                    ),
                })
            }
        },
    })
}

/// Mark the in-target checkpoint as "a snapshot is being loaded" before any snapshot write.
async fn mark_loading(
    cfg: &SyncConfig,
    tc: &TargetCheckpoint,
) -> Result<(), crate::target::TargetError> {
    let mut c = Client::connect(&cfg.target).await?;
    let db = tc.db.to_string();
    if tc.db != 0 || cfg.shard.is_none() {
        c.cmd_ok(&[b"SELECT", db.as_bytes()]).await?;
    }
    if let Some(shard) = &cfg.shard {
        // Every group of this node: a resume needs all of them.
        let keys: Vec<Vec<u8>> = shard
            .groups()
            .iter()
            .map(|g| crate::apply::stream::group_key(shard, &tc.key, *g))
            .collect();
        for chunk in keys.chunks(1000) {
            let cmds: Vec<Vec<&[u8]>> = chunk
                .iter()
                .map(|k| vec![&b"SET"[..], k, LOADING.as_bytes()])
                .collect();
            for (r, k) in c.pipeline(&cmds).await?.into_iter().zip(chunk) {
                if r.is_error() {
                    let msg = r.as_bytes().unwrap_or_default();
                    set_redirected(cfg, &c, k, LOADING.as_bytes(), msg).await?;
                }
            }
        }
        return Ok(());
    }
    c.cmd_ok(&[b"SET", &tc.key, LOADING.as_bytes()]).await?;
    Ok(())
}

/// The heartbeat a source writes (`cfg.heartbeat` of its [`run`]): as configured, but for a master of a
/// cluster source the key gets a hash tag in a slot that master owns (`ferry:heartbeat:{…}`), so the master accepts it and its own stream brings
/// it back. A key that has a hash tag of its own is left as it is.
pub fn heartbeat_for(
    hb: Option<(Duration, String)>,
    ownership: &crate::apply::sweep::Ownership,
) -> Option<(Duration, String)> {
    let (every, key) = hb?;
    let crate::apply::sweep::Ownership::Slots { owners, me } = ownership else {
        return Some((every, key));
    };
    if key.contains('{') {
        return Some((every, key));
    }
    let map = owners.read().unwrap_or_else(|p| p.into_inner());
    let slot = (0..crate::cluster::SLOTS as u16).find(|&s| map.owner(s) == Some(*me));
    let key = match slot {
        Some(slot) => String::from_utf8_lossy(&crate::cluster::key_in_slot(
            format!("{key}:").as_bytes(),
            slot,
        ))
        .into_owned(),
        None => key,
    };
    Some((every, key))
}

/// Write `SET <key> <unix ms>` into the source master every `every` until cancelled — the server the link
/// replicates from, which a followed failover moves. A source that refuses (a read-only replica, no write
/// permission) is logged once and left alone.
pub(crate) async fn heartbeat(
    configured: RedisAddr,
    shared: Arc<LinkShared>,
    every: Duration,
    key: String,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    let mut client: Option<Client> = None;
    let mut addr = configured.clone();
    let mut warned = false;
    // Heartbeats redirected in a row (MOVED, READONLY, …): a refusal only past this many.
    const REDIRECTED_TICKS: u32 = 30;
    let mut redirected = 0u32;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now_master = shared.master(&configured);
        if now_master.host_port() != addr.host_port() {
            addr = now_master;
            client = None;
            warned = false;
        }
        if client.is_none() {
            client = Client::connect(&addr).await.ok();
        }
        let Some(c) = client.as_mut() else { continue };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
            .to_string();
        let r = async {
            c.cmd_ok(&[b"SELECT", b"0"]).await?;
            c.cmd_ok(&[b"SET", key.as_bytes(), now.as_bytes()]).await
        }
        .await;
        match r {
            Ok(_) => redirected = 0,
            // The master moved (a failover the link follows at its next look) or the key's slot did: not a
            // refusal until it lasts.
            Err(crate::target::TargetError::Command { ref msg, .. })
                if (crate::target::is_redirection(msg) || msg.starts_with("READONLY"))
                    && redirected < REDIRECTED_TICKS =>
            {
                redirected += 1;
                tracing::debug!(source = %addr, error = %msg, "heartbeat write redirected; trying again");
                client = None;
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(source = %addr, error = %e, "heartbeat write refused; lag is estimated from offsets instead");
                    warned = true;
                }
                if !matches!(e, crate::target::TargetError::Command { .. }) {
                    client = None;
                }
            }
        }
    }
}

/// Write a checkpoint on the blocking pool (it fsyncs), awaited so writes stay in order.
async fn store_checkpoint(
    path: &std::path::Path,
    cp: Checkpoint,
) -> Result<(), checkpoint::CheckpointError> {
    let path = path.to_path_buf();
    match tokio::task::spawn_blocking(move || checkpoint::store(&path, &cp)).await {
        Ok(r) => r,
        Err(e) => Err(checkpoint::CheckpointError::Io {
            path: String::new(),
            err: std::io::Error::other(e.to_string()),
        }),
    }
}
