//! A live master as a source.
//!
//! Three parts run concurrently:
//! - the replication link ([`crate::repl`]) reads the socket at network speed into the spool;
//! - this consumer reads the spool in order: the RDB goes through the decoder to the snapshot applier, the
//!   command stream after it through the stream applier, on one ordered target connection;
//! - a ticker copies the applied offset (what the target has answered) to the link, which reports it in
//!   `REPLCONF ACK`, and writes the checkpoint every second.
//!
//! `--once` ends the source when the full sync is applied and the stream has been applied up to the master's
//! offset read when the RDB finished. A stop (`cancel`) flushes what was queued, waits for the target's
//! answers, acknowledges, and writes a clean checkpoint, so the next run continues with a partial resync.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{RdbFeeder, SourceError};
use crate::apply::snapshot::SnapshotApplier;
use crate::apply::stream::{StreamApplier, TargetCheckpoint};
use crate::apply::sweep::{self, Ownership, SweepKind};
use crate::apply::ApplyError;
use crate::checkpoint::{self, Checkpoint};
use crate::endpoint::RedisAddr;
use crate::job::SyncConfig;
use crate::repl::{self, LinkConfig, LinkShared};
use crate::spool::{self, Record, SpoolConfig};
use crate::status::{FullSyncProgress, ProgressOutput, SourceState, SourceStatus};
use crate::target::client::Client;

/// Where the consumer is in the source's life.
enum Phase {
    /// Waiting for the link's first answer.
    Waiting,
    /// An RDB is being applied.
    Snapshot(Box<RdbFeeder>),
    /// The command stream is being applied (by every target's stream applier).
    Streaming,
}

/// Read the master's current replication offset (for `--once`).
async fn master_offset(addr: &RedisAddr) -> Result<i64, String> {
    let mut c = Client::connect(addr).await.map_err(|e| e.to_string())?;
    let r = c
        .cmd_ok(&[b"INFO", b"replication"])
        .await
        .map_err(|e| e.to_string())?;
    let text = r
        .as_bytes()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("master_repl_offset:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| "INFO replication has no master_repl_offset".to_string())
}

/// One target of this source: its snapshot applier, its stream applier, its applied offset.
struct Sink {
    /// The job's configuration with `target` set to this sink's target.
    cfg: SyncConfig,
    applier: SnapshotApplier,
    stream: Option<Box<StreamApplier>>,
    applied: Arc<AtomicI64>,
    /// From an in-target checkpoint: this target already holds every command up to this offset.
    skip_until: i64,
}

/// The lowest applied offset over the targets (what the master may consider acknowledged).
fn min_applied(sinks: &[Sink]) -> i64 {
    sinks
        .iter()
        .map(|k| k.applied.load(Ordering::Acquire))
        .min()
        .unwrap_or(-1)
}

/// Run one master until its job is done (`--once`) or `cancel` fires. Every change goes to every target
/// (`targets`: the job's configuration per target, with its snapshot applier).
pub async fn run(
    idx: usize,
    addr: &RedisAddr,
    ownership: Ownership,
    targets: Vec<(SyncConfig, SnapshotApplier)>,
    cfg: &SyncConfig,
    st: Arc<SourceStatus>,
    cancel: CancellationToken,
) -> Result<(), SourceError> {
    let name = format!("source {addr}");
    let link_err = |msg: String| SourceError::Link {
        source_name: addr.to_string(),
        msg,
    };
    let apply_err = |err| SourceError::Apply {
        source_name: addr.to_string(),
        err,
    };
    let mut sinks: Vec<Sink> = targets
        .into_iter()
        .map(|(cfg, applier)| Sink {
            cfg,
            applier,
            stream: None,
            applied: Arc::new(AtomicI64::new(-1)),
            skip_until: -1,
        })
        .collect();
    let id = checkpoint::source_id(&addr.to_string());
    let cp_path = checkpoint::path_for(&cfg.state_dir, &id);
    let loaded = checkpoint::load(&cp_path).map_err(|e| link_err(e.to_string()))?;
    // A checkpoint means this source's keys are already on the target: a full sync replaces them.
    let had_checkpoint = loaded.is_some();
    let resume = match loaded {
        Some(cp) if cp.source != addr.to_string() => {
            return Err(link_err(format!(
                "the checkpoint {} belongs to {}, not to this source; use another --state-dir",
                cp_path.display(),
                cp.source
            )))
        }
        Some(cp) if cp.clean => {
            tracing::info!(source = %addr, replid = %cp.replid, offset = cp.offset,
                "resuming from checkpoint with a partial resync");
            Some((cp.replid, cp.offset))
        }
        Some(cp) => {
            tracing::warn!(source = %addr, replid = %cp.replid, offset = cp.offset,
                "the last run did not stop cleanly: its checkpoint may be behind the target, and replaying \
                 commands twice would corrupt the copy; running a full resync instead");
            None
        }
        None => None,
    };

    // The in-target checkpoints, when kept, are exact: they win over the file. With several targets the
    // stream resumes at the lowest, and each target skips what it already holds.
    let target_cp = cfg
        .target_checkpoint
        .as_ref()
        .map(|(db, prefix)| TargetCheckpoint {
            db: *db,
            key: bytes::Bytes::from(format!("{prefix}{id}")),
            replid: String::new(),
        });
    let mut resume = resume;
    let mut had_checkpoint = had_checkpoint;
    if let Some(tc) = &target_cp {
        let mut found = Vec::new();
        for k in sinks.iter() {
            match read_target_checkpoint(&k.cfg, tc).await {
                Ok(cp) => found.push(cp),
                Err(e) => return Err(link_err(format!("reading the in-target checkpoint: {e}"))),
            }
        }
        let same_id = found
            .iter()
            .all(|c| c.as_ref().map(|c| &c.0) == found[0].as_ref().map(|c| &c.0));
        if found.iter().all(|c| c.is_some()) && same_id {
            let rid = found[0].as_ref().map(|c| c.0.clone()).unwrap_or_default();
            let low = found.iter().flatten().map(|c| c.1).min().unwrap_or(0);
            for (k, c) in sinks.iter_mut().zip(&found) {
                k.skip_until = c.as_ref().map(|c| c.1).unwrap_or(-1);
            }
            tracing::info!(source = %addr, replid = %rid, offset = low,
                "resuming from the checkpoints kept in the targets (exact)");
            resume = Some((rid, low));
            had_checkpoint = true;
        } else if found.iter().any(|c| c.is_some()) {
            tracing::warn!(source = %addr, "the targets' checkpoints disagree or one is missing: full resync");
            resume = None;
            had_checkpoint = true;
        }
    }

    let mut spool_cfg = SpoolConfig::new(&cfg.state_dir, &format!("spool-{id}"));
    if let Some(mem) = cfg.spool_mem_bytes {
        spool_cfg.mem_limit_bytes = mem;
    }
    if let Some(disk) = cfg.spool_disk_bytes {
        spool_cfg.disk_limit_bytes = disk;
    }
    let disk_limit = spool_cfg.disk_limit_bytes;
    let (writer, mut reader) = spool::open(spool_cfg).map_err(|e| link_err(e.to_string()))?;
    st.set_spool(writer.stats(), disk_limit);
    st.set_state(SourceState::Connecting);
    let shared = LinkShared::new();
    let link_cfg = LinkConfig {
        name: name.clone(),
        addr: addr.clone(),
        resume: resume.clone(),
        ..LinkConfig::new(addr.clone())
    };
    let link_cancel = cancel.child_token();
    let hb_key = cfg
        .heartbeat
        .as_ref()
        .map(|(_, k)| bytes::Bytes::from(k.clone()));
    let hb_sink: crate::apply::stream::HeartbeatSink = {
        let st = st.clone();
        Arc::new(move |lag| st.set_heartbeat_lag(lag))
    };
    if let Some((every, key)) = cfg.heartbeat.clone() {
        tokio::spawn(heartbeat(addr.clone(), every, key, link_cancel.clone()));
    }
    let mut link = tokio::spawn(repl::run(
        link_cfg,
        shared.clone(),
        writer,
        link_cancel.clone(),
    ));

    // Status shows the first target's applied offset; ACKs and checkpoints use the lowest of all.
    st.use_applied_offset(sinks[0].applied.clone());
    let new_stream = |k: &Sink, start: i64, replid: &str| -> Box<StreamApplier> {
        let mut s = StreamApplier::new(k.applier.pool(), start, 0, k.applied.clone())
            .with_connection(idx)
            .forward_flush(matches!(ownership, Ownership::Sole))
            .with_dbs(cfg.dbs.clone())
            .with_heartbeat(hb_key.clone(), hb_sink.clone())
            .with_target_checkpoint(target_cp.clone().map(|mut t| {
                t.replid = replid.to_string();
                t
            }))
            .skip_until(k.skip_until);
        s.add_scripts(&k.applier.scripts);
        Box::new(s)
    };
    let mut progress: Option<FullSyncProgress> = None;
    let mut replid = resume.as_ref().map(|r| r.0.clone()).unwrap_or_default();
    let mut phase = Phase::Waiting;
    let mut once_target: Option<i64> = None;
    let mut full_syncs = 0u32;
    let mut reached_stream = false;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_cp = std::time::Instant::now();
    let mut link_result: Option<Result<(), String>> = None;

    let outcome: Result<(), SourceError> = 'run: loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break Ok(()),
            r = &mut link, if link_result.is_none() => {
                let r = r.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string()));
                if let Err(e) = &r {
                    break Err(SourceError::Named(e.to_string()));
                }
                link_result = Some(r);
            }
            _ = tick.tick() => {
                let failed: u64 = sinks.iter().map(|k| k.applier.pool().stats().failed()).sum();
                if cfg.stop_on_error && failed > 0 {
                    break Err(link_err(format!(
                        "the target rejected {failed} writes and --on-error stop is set (see the log for the commands, keys and errors)")));
                }
                let a = min_applied(&sinks);
                shared.applied.store(a, Ordering::Release);
                st.set_received_offset(shared.received.load(Ordering::Acquire));
                if let (Some(t), Phase::Streaming) = (once_target, &phase) {
                    if a >= t {
                        tracing::info!(source = %addr, offset = a, "caught up with the master's offset at the end of the snapshot (--once)");
                        break Ok(());
                    }
                }
                if last_cp.elapsed() >= Duration::from_secs(1) && matches!(phase, Phase::Streaming) && a >= 0 {
                    last_cp = std::time::Instant::now();
                    let cp = Checkpoint { format: checkpoint::FORMAT, source: addr.to_string(), replid: replid.clone(), offset: a, clean: false };
                    match store_checkpoint(&cp_path, cp.clone()).await {
                        Ok(()) => st.checkpoint_written(a),
                        Err(e) => tracing::warn!(source = %addr, error = %e, "checkpoint not written"),
                    }
                }
            }
            rec = reader.next() => {
                let rec = match rec {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        // The link ended: it returned (cancel or error), handled above.
                        match link_result.take() {
                            Some(Err(e)) => break Err(SourceError::Named(e.to_string())),
                            _ => {
                                let r = (&mut link).await.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string()));
                                match r {
                                    Err(e) => break Err(SourceError::Named(e.to_string())),
                                    Ok(()) => break Ok(()),
                                }
                            }
                        }
                    }
                    Err(e) => break Err(link_err(e.to_string())),
                };
                match rec {
                    Record::FullResync { replid: id, offset } => {
                        full_syncs += 1;
                        if full_syncs > 1 || !matches!(phase, Phase::Waiting) || resume.is_some() {
                            tracing::warn!(source = %addr, "the master started a full resync: values are \
                                replaced, and keys it lost during the gap are removed from the target");
                        }
                        for k in sinks.iter_mut() {
                            if let Some(mut s) = k.stream.take() {
                                if let Err(e) = s.send().await { break 'run Err(apply_err(e)); }
                            }
                            k.skip_until = -1;
                        }
                        tracing::info!(source = %addr, replid = %id, offset, "full sync: receiving the snapshot");
                        let total = shared.rdb_size.load(Ordering::Acquire);
                        st.full_sync_started(&id, offset, u64::try_from(total).ok());
                        if let Some(p) = progress.take() { p.finish().await; }
                        progress = Some(FullSyncProgress::start(&ProgressOutput::stderr(), st.clone()));
                        replid = id;
                        for k in sinks.iter_mut() {
                            if full_syncs > 1 || had_checkpoint {
                                k.applier.set_overwrite(true);
                            }
                            k.applied.store(offset, Ordering::Release);
                        }
                        // Before the first write: mark that this source's data is going to the target, so
                        // a restart after a crash knows the keys are ours (full resync with REPLACE), not
                        // someone else's (refused by the emptiness precheck).
                        let cp = Checkpoint { format: checkpoint::FORMAT, source: addr.to_string(), replid: replid.clone(), offset, clean: false };
                        if let Err(e) = store_checkpoint(&cp_path, cp.clone()).await {
                            break Err(link_err(e.to_string()));
                        }
                        phase = Phase::Snapshot(Box::new(RdbFeeder::new(cfg.decoder.clone())));
                    }
                    Record::Rdb(bytes) => {
                        let Phase::Snapshot(f) = &mut phase else {
                            break Err(link_err("RDB bytes outside a full sync".into()));
                        };
                        st.add_rdb_received(bytes.len() as u64);
                        if st.rdb_progress().3 < 0 {
                            let total = shared.rdb_size.load(Ordering::Acquire);
                            if total >= 0 { st.set_rdb_total(Some(total as u64)); }
                        }
                        let keys_before = f.summary.entries;
                        let mut appliers: Vec<&mut SnapshotApplier> = sinks.iter_mut().map(|k| &mut k.applier).collect();
                        if let Err(e) = f.push(&bytes, &mut appliers).await { break Err(apply_err(e)); }
                        st.add_rdb_applied(bytes.len() as u64);
                        st.add_keys_loaded(f.summary.entries - keys_before);
                    }
                    Record::RdbEnd => {
                        let Phase::Snapshot(mut f) = std::mem::replace(&mut phase, Phase::Waiting) else {
                            break Err(link_err("RDB end outside a full sync".into()));
                        };
                        let mut appliers: Vec<&mut SnapshotApplier> = sinks.iter_mut().map(|k| &mut k.applier).collect();
                        let summary = match f.finish(&mut appliers).await {
                            Ok(s) => s,
                            Err(e) => break Err(apply_err(e)),
                        };
                        let start = min_applied(&sinks);
                        if let Some(p) = progress.take() { p.finish().await; }
                        st.set_state(SourceState::Streaming);
                        tracing::info!(source = %addr, rdb_version = summary.version, bytes = summary.bytes,
                            keys = summary.entries, "snapshot applied; streaming");
                        if cfg.once {
                            match master_offset(addr).await {
                                Ok(o) => { st.set_master_offset(o); once_target = Some(o.max(start)) }
                                Err(e) => break Err(link_err(format!("reading the master's offset for --once: {e}"))),
                            }
                        }
                        for k in sinks.iter_mut() {
                            let mut s = new_stream(k, start, &replid);
                            if full_syncs > 1 || had_checkpoint {
                                // Keys this source deleted while we were not streaming must not stay behind.
                                if let Err(e) = remove_keys(&mut s, &k.cfg, addr, &ownership, None, SweepKind::MissingOnSource).await {
                                    break 'run Err(apply_err(e));
                                }
                            }
                            k.stream = Some(s);
                        }
                        phase = Phase::Streaming;
                        reached_stream = true;
                    }
                    Record::Continue { replid: id, offset } => {
                        replid = id;
                        match &phase {
                            Phase::Streaming => {
                                for k in sinks.iter_mut() {
                                    if let Some(s) = k.stream.as_mut() {
                                        if s.offset() != offset {
                                            break 'run Err(link_err(format!(
                                                "the link continued at offset {offset} but the stream was applied up to {}", s.offset())));
                                        }
                                        s.set_replid(&replid);
                                    }
                                }
                                st.partial_sync_started(&replid, offset);
                                st.set_state(SourceState::Streaming);
                            }
                            Phase::Waiting => {
                                for k in sinks.iter() {
                                    k.applied.store(offset.max(k.skip_until), Ordering::Release);
                                }
                                st.partial_sync_started(&replid, offset);
                                st.set_state(SourceState::Streaming);
                                if cfg.once {
                                    match master_offset(addr).await {
                                        Ok(o) => once_target = Some(o.max(offset)),
                                        Err(e) => break Err(link_err(format!("reading the master's offset for --once: {e}"))),
                                    }
                                }
                                for k in sinks.iter_mut() {
                                    k.stream = Some(new_stream(k, offset, &replid));
                                }
                                phase = Phase::Streaming;
                                reached_stream = true;
                            }
                            Phase::Snapshot(_) => {
                                // The link broke during the RDB transfer: the master will send it again.
                                break Err(link_err("partial resync accepted in the middle of a snapshot".into()));
                            }
                        }
                    }
                    Record::Stream(bytes) => {
                        if !matches!(phase, Phase::Streaming) {
                            break Err(link_err("stream bytes before the snapshot ended".into()));
                        }
                        let mut ack_now = false;
                        for k in sinks.iter_mut() {
                            let Some(s) = k.stream.as_mut() else { continue };
                            let mut pushed = s.push(&bytes).await;
                            while let Ok(crate::apply::stream::Signals { flush: Some(scope), .. }) = &pushed {
                                let dbs = scope.map(|d| vec![d]);
                                if let Err(e) = remove_keys(s, &k.cfg, addr, &ownership, dbs, SweepKind::All).await {
                                    pushed = Err(e);
                                    break;
                                }
                                pushed = s.push(&[]).await;
                            }
                            match pushed {
                                Ok(sig) => {
                                    if let Err(e) = s.send().await { break 'run Err(apply_err(e)); }
                                    ack_now |= sig.ack_now;
                                }
                                Err(e) => break 'run Err(apply_err(e)),
                            }
                        }
                        if ack_now {
                            shared.applied.store(min_applied(&sinks), Ordering::Release);
                            shared.ack_now.notify_one();
                        }
                    }
                    Record::LinkDown { reason } => {
                        tracing::warn!(source = %addr, %reason, "link down; reconnecting");
                        st.link_down(&reason);
                        if let Phase::Snapshot(_) = phase {
                            // The snapshot must start again with the next FULLRESYNC.
                            phase = Phase::Waiting;
                        }
                    }
                }
            }
        }
    };

    // Stop the link, drain what the targets have in flight, acknowledge, write the checkpoint.
    link_cancel.cancel();
    let mut flushed: Result<(), crate::target::TargetError> = Ok(());
    for k in sinks.iter_mut() {
        if let Some(s) = k.stream.as_mut() {
            if let Err(e) = s.send().await {
                tracing::warn!(source = %addr, error = %e, "could not flush the stream on shutdown");
            }
        }
        if let Err(e) = k.applier.pool().flush().await {
            flushed = Err(e);
        }
    }
    let a = min_applied(&sinks);
    shared.applied.store(a, Ordering::Release);
    if link_result.is_none() {
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut link).await;
    }
    if reached_stream && !replid.is_empty() && a >= 0 {
        let clean = outcome.is_ok() && flushed.is_ok();
        let cp = Checkpoint {
            format: checkpoint::FORMAT,
            source: addr.to_string(),
            replid: replid.clone(),
            offset: a,
            clean,
        };
        match store_checkpoint(&cp_path, cp.clone()).await {
            Ok(()) => {
                tracing::info!(source = %addr, replid = %replid, offset = a, clean, "checkpoint written")
            }
            Err(e) => tracing::warn!(source = %addr, error = %e, "checkpoint not written"),
        }
    }
    outcome?;
    flushed.map_err(|e| apply_err(e.into()))?;
    Ok(())
}

/// Remove this source's keys from the target (all of them in `dbs`, or those it no longer has), in order
/// with its stream.
async fn remove_keys(
    s: &mut StreamApplier,
    cfg: &SyncConfig,
    addr: &RedisAddr,
    ownership: &Ownership,
    dbs: Option<Vec<u32>>,
    kind: SweepKind,
) -> Result<(), ApplyError> {
    // Everything before this point must be on the target before it is scanned.
    s.send().await?;
    s.pool_flush().await?;
    let dbs = match dbs {
        Some(d) => d,
        None => match &cfg.dbs.keep {
            // Only the target dbs this job writes into.
            Some(keep) => {
                let mut t: Vec<u32> = keep.iter().filter_map(|d| cfg.dbs.target(*d)).collect();
                t.sort_unstable();
                t.dedup();
                t
            }
            None => sweep::target_dbs(&cfg.target).await?,
        },
    };
    let (pool, conn) = s.ordered_connection();
    let report = sweep::sweep(&cfg.target, addr, &dbs, ownership, kind, |db, keys| {
        crate::apply::stream::delete_keys(pool.clone(), conn, db, keys)
    })
    .await?;
    tracing::info!(source = %addr, ?kind, dbs = ?dbs, scanned = report.scanned, owned = report.owned,
        deleted = report.deleted, "removed this source's keys from the target");
    Ok(())
}

/// The in-target checkpoint of this source, if there is one.
async fn read_target_checkpoint(
    cfg: &SyncConfig,
    tc: &TargetCheckpoint,
) -> Result<Option<(String, i64)>, crate::target::TargetError> {
    let mut c = Client::connect(&cfg.target).await?;
    let db = tc.db.to_string();
    c.cmd_ok(&[b"SELECT", db.as_bytes()]).await?;
    let r = c.cmd_ok(&[b"GET", &tc.key]).await?;
    Ok(r.as_bytes().and_then(TargetCheckpoint::parse))
}

/// Write `SET <key> <unix ms>` into the source master every `every` until cancelled. A source that refuses
/// (a read-only replica, no write permission) is logged once and left alone.
async fn heartbeat(addr: RedisAddr, every: Duration, key: String, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    let mut client: Option<Client> = None;
    let mut warned = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
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
        if let Err(e) = r {
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
