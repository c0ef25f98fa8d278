//! `ferry sync`: sources → apply → target, with prechecks, shutdown and the exit status.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::apply::snapshot::{SnapshotApplier, SnapshotOptions};
use crate::apply::sweep::{OwnKeys, Ownership};
use crate::apply::ApplyStats;
use crate::endpoint::SourceSpec;
use crate::job::{expand_sources_with, ownership, SyncConfig, SyncError};
use crate::source;
use crate::status::{JobPhase, SourceKind, SourceStatus, Status};
use crate::target::client::Client;
use crate::target::pool::WriterPool;
use crate::target::stats::TargetStats;
use crate::target::ServerInfo;

/// Figures of a finished run.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub keys_applied: u64,
    pub keys_expired_skipped: u64,
    pub writes_rejected: u64,
}

/// Check the target before any write: reachable, authenticated, version, and empty unless overwriting.
pub async fn precheck_target(cfg: &SyncConfig) -> Result<ServerInfo, SyncError> {
    // A connection lost for a moment (the full precheck just reached the target) is tried again briefly.
    let info =
        crate::target::with_retry("checking the target", Duration::from_secs(10), || async {
            let mut c = Client::connect(&cfg.target).await?;
            c.cmd_ok(&[b"PING"]).await?;
            c.server_info().await
        })
        .await
        .map_err(|e| {
            SyncError::Precheck(format!(
                "{e}. Check that the target is running and reachable, and its credentials."
            ))
        })?;
    let resuming = resuming_sources(cfg);
    if !resuming.is_empty() && !info.keyspace.is_empty() {
        tracing::info!(target_addr = %cfg.target, sources = %resuming.join(", "),
            "target holds data of an earlier run of this job (checkpoints in the state directory): continuing");
    } else if !cfg.overwrite && !info.keyspace.is_empty() {
        let total: u64 = info.keyspace.iter().map(|(_, n)| n).sum();
        let dbs: Vec<String> = info
            .keyspace
            .iter()
            .map(|(db, n)| format!("db{db}: {n} keys"))
            .collect();
        return Err(SyncError::Precheck(format!(
            "target {} is not empty ({total} keys; {}); nothing was written. Empty it, or pass \
             --on-conflict overwrite to let source values replace target values.",
            cfg.target,
            dbs.join(", ")
        )));
    }
    tracing::info!(target_addr = %cfg.target, version = %info.version_string(), rdb_version = info.rdb_version,
        "target checked");
    Ok(info)
}

/// Sources of this job that have a checkpoint in the state directory: their data is already on the target.
fn resuming_sources(cfg: &SyncConfig) -> Vec<String> {
    cfg.sources
        .iter()
        .filter_map(|s| match s {
            SourceSpec::Redis(addr) => {
                let p = crate::checkpoint::path_for(
                    &cfg.state_dir,
                    &addr.to_string(),
                    &cfg.target.to_string(),
                );
                p.exists().then(|| addr.to_string())
            }
            _ => None,
        })
        .collect()
}

/// Run the job until every source finished (`--once`, or only `rdb:` sources) or `cancel` fires.
pub async fn run(mut cfg: SyncConfig, cancel: CancellationToken) -> Result<SyncReport, SyncError> {
    let status = Arc::new(Status::new());
    status.set_phase(JobPhase::Starting);
    // Status stays readable while the job drains; it stops when `run` returns.
    let status_stop = CancellationToken::new();
    let _status_guard = status_stop.clone().drop_guard();
    if let Some(addr) = cfg.status_addr {
        crate::status::serve(addr, status.clone(), status_stop.clone())
            .await
            .map_err(|e| SyncError::Config(e.to_string()))?;
    }
    crate::status::spawn_reporter(status.clone(), Duration::from_secs(30), status_stop.clone());
    {
        let (status, cancel, stop) = (status.clone(), cancel.clone(), status_stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => status.set_phase(JobPhase::Draining),
                _ = stop.cancelled() => {}
            }
        });
    }

    let plan = expand_sources_with(&cfg.sources, cfg.pool_auth.as_ref(), &cfg.dbs)?;
    if cfg.target_checkpoint.is_none() {
        tracing::warn!(
            "--no-target-checkpoint: stream commands are written as plain pipelines; a command sent again after \
             a lost target connection may be applied twice (an INCR counted twice, a list item duplicated), and a \
             restart after a crash runs a full resync. Without this option every batch is applied together with \
             its checkpoint, which is exact"
        );
    }
    cfg.sources = plan.iter().map(|p| p.spec.clone()).collect();
    status.set_phase(JobPhase::Precheck);
    // Every check of `ferry check`, once per target, before any source writes: refuse on errors.
    let mut all_targets = vec![cfg.target.clone()];
    all_targets.extend(cfg.more_targets.iter().cloned());
    let mut per_target = Vec::new();
    for t in &all_targets {
        let tcfg = SyncConfig {
            target: t.clone(),
            more_targets: Vec::new(),
            ..cfg.clone()
        };
        // A shorter write-rate sample than `ferry check` takes (1 s): enough for the backlog warning, and
        // the sync starts sooner.
        let mut opts = crate::precheck::CheckOptions::for_sync(&tcfg);
        opts.rate_sample = Duration::from_millis(250);
        let report = crate::precheck::run_checks(&plan, &tcfg.target, &opts).await;
        for line in report.render_text().lines() {
            if line.starts_with("WARN") {
                tracing::warn!("precheck: {line}");
            } else if !line.starts_with("ERROR") {
                tracing::info!("precheck: {line}");
            }
        }
        if report.has_errors() {
            let text = report.render_text();
            let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("ERROR")).collect();
            return Err(SyncError::Precheck(format!(
                "precheck failed; nothing was written:\n{}",
                errors.join("\n")
            )));
        }
        let info = precheck_target(&tcfg).await?;
        per_target.push((tcfg, info));
    }
    // A checkpoint written by another job (another db selection) for one of these pairs, or one this ferry
    // cannot read, stops the job before any write, naming the file and how to start over.
    for (tcfg, _) in &per_target {
        for p in &plan {
            if let SourceSpec::Redis(addr) = &p.spec {
                let job = crate::checkpoint::Job::new(
                    &addr.to_string(),
                    &tcfg.target.to_string(),
                    p.dbs.describe(),
                );
                job.load(&cfg.state_dir)
                    .map_err(|e| SyncError::Config(e.to_string()))?;
            }
        }
    }
    let apply_stats = Arc::new(ApplyStats::default());
    status.set_apply_stats(apply_stats.clone());
    let mut pools = Vec::new();
    for (tcfg, info) in &per_target {
        let stats = Arc::new(TargetStats::default());
        let pool = WriterPool::connect(
            &tcfg.target,
            cfg.pool.clone(),
            stats.clone(),
            cancel.child_token(),
        )
        .await
        .map_err(|e| SyncError::Precheck(e.to_string()))?;
        let target_status = status.add_target(&tcfg.target, stats.clone());
        target_status.set_connections(pool.len() as u64);
        let _ = stats.latency.set(target_status.latency());
        pools.push((tcfg.clone(), info.clone(), Arc::new(pool), stats));
    }
    if !cancel.is_cancelled() {
        status.set_phase(JobPhase::Running);
    }

    // The keys each `rdb:` file writes, for the other sources' sweeps (only when sources share the target).
    let mut file_keys = Vec::new();
    let mut file_keys_tx = Vec::new();
    for p in &plan {
        if matches!(p.spec, SourceSpec::RdbFile(_)) && plan.len() > 1 {
            let (tx, rx) = tokio::sync::watch::channel(None);
            file_keys.push(Some(rx));
            file_keys_tx.push(Some(tx));
        } else {
            file_keys.push(None);
            file_keys_tx.push(None);
        }
    }
    let own_keys = own_keys(&cfg);
    let mut tasks = tokio::task::JoinSet::new();
    for (idx, spec) in cfg.sources.iter().enumerate() {
        let mut appliers = Vec::new();
        let sid = crate::checkpoint::source_id(&plan[idx].label);
        for (tcfg, info, pool, _) in &pools {
            let mut opts = SnapshotOptions::new(info.clone(), format!("{TMP_PREFIX}{sid}:"));
            opts.overwrite = cfg.overwrite;
            opts.chunk_elements = cfg.chunk_elements;
            opts.dbs = plan[idx].dbs.clone();
            opts.skip_key = cfg
                .heartbeat
                .as_ref()
                .map(|(_, k)| bytes::Bytes::from(k.clone()));
            let applier = SnapshotApplier::new(pool.clone(), opts, apply_stats.clone());
            appliers.push((tcfg.clone(), applier));
        }
        let spec = spec.clone();
        let kind = match &plan[idx].pool {
            Some(pool) => SourceKind::TwemproxyMember { pool: pool.clone() },
            None => SourceKind::for_spec(&spec),
        };
        let src_status = status.add_source(&spec, kind);
        let run = SourceRun {
            idx,
            spec: spec.clone(),
            ownership: ownership(&plan, idx, &file_keys),
            dbs: plan[idx].dbs.clone(),
            own_keys: own_keys.clone(),
            file_keys: file_keys_tx[idx].take(),
        };
        let cfg = cfg.clone();
        let cancel = cancel.clone();
        let label = plan[idx].label.clone();
        tasks.spawn(async move {
            let name = label;
            let r = run_source(run, appliers, &cfg, src_status.clone(), cancel).await;
            match &r {
                Ok(()) => src_status.done(),
                Err(e) => src_status.failed(e),
            }
            (name, r)
        });
    }

    let mut failures = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((_, Ok(()))) => {}
            Ok((name, Err(e))) => {
                tracing::error!(source = %name, error = %e, "source failed");
                if name.contains("twemproxy pool") {
                    failures.push(format!("{e} [{name}]"));
                } else {
                    failures.push(e.to_string());
                }
            }
            Err(e) => failures.push(format!("a source task panicked: {e}")),
        }
    }
    let mut writes_rejected = 0;
    for (_, _, pool, stats) in pools {
        writes_rejected += stats.failed();
        match Arc::try_unwrap(pool) {
            Ok(pool) => {
                if let Err(e) = pool.close().await {
                    failures.push(e.to_string());
                }
            }
            Err(_) => failures.push("writer pool still in use".into()),
        }
    }
    let report = SyncReport {
        keys_applied: apply_stats.keys_applied.load(Ordering::Relaxed),
        keys_expired_skipped: apply_stats.keys_expired_skipped.load(Ordering::Relaxed),
        writes_rejected,
    };
    if !failures.is_empty() {
        status.set_phase(JobPhase::Failed);
        return Err(SyncError::Runtime(failures.join("; ")));
    }
    status.set_phase(JobPhase::Done);
    Ok(report)
}

/// ferry's temporary keys on a target start with this (the source's id and a number follow).
pub use crate::job::TMP_PREFIX;

/// ferry's own keys on the targets: in-target checkpoints, the heartbeat key, temporary keys.
fn own_keys(cfg: &SyncConfig) -> OwnKeys {
    let mut k = OwnKeys {
        prefixes: vec![bytes::Bytes::from_static(TMP_PREFIX.as_bytes())],
        exact: Vec::new(),
    };
    if let Some((_, prefix)) = &cfg.target_checkpoint {
        k.prefixes.push(bytes::Bytes::from(prefix.clone()));
    }
    if let Some((_, key)) = &cfg.heartbeat {
        k.exact.push(bytes::Bytes::from(key.clone()));
    }
    k
}

/// One source of the job, ready to run.
struct SourceRun {
    idx: usize,
    spec: SourceSpec,
    ownership: Ownership,
    dbs: crate::apply::DbMap,
    own_keys: OwnKeys,
    /// For an `rdb:` file sharing the target with other sources: where to publish the keys it wrote.
    file_keys: Option<tokio::sync::watch::Sender<Option<Arc<crate::keyset::KeySet>>>>,
}

async fn run_source(
    run: SourceRun,
    mut appliers: Vec<(SyncConfig, SnapshotApplier)>,
    cfg: &SyncConfig,
    st: Arc<SourceStatus>,
    cancel: CancellationToken,
) -> Result<(), source::SourceError> {
    let name = run.spec.to_string();
    match &run.spec {
        SourceSpec::RdbFile(path) => {
            st.set_state(crate::status::SourceState::FullSync);
            if run.file_keys.is_some() {
                if let Some((_, a)) = appliers.first_mut() {
                    a.start_index(&cfg.state_dir, &format!("file-{}", run.idx));
                }
            }
            let mut refs: Vec<&mut SnapshotApplier> = appliers.iter_mut().map(|(_, a)| a).collect();
            let summary =
                source::load_rdb_file(&name, path, cfg.decoder.clone(), &mut refs).await?;
            tracing::info!(source = %name, rdb_version = summary.version, bytes = summary.bytes,
                keys = summary.entries, "RDB file loaded");
            if let (Some(tx), Some((_, a))) = (run.file_keys, appliers.first_mut()) {
                if let Some(index) = a.take_index() {
                    let set = tokio::task::spawn_blocking(move || index.finish())
                        .await
                        .map_err(|e| source::SourceError::Named(e.to_string()))?
                        .map_err(|e| {
                            source::SourceError::Named(format!(
                                "source {name}: recording the keys it loaded: {e}"
                            ))
                        })?;
                    let _ = tx.send(Some(Arc::new(set)));
                }
            }
            Ok(())
        }
        SourceSpec::Redis(addr) => {
            let job = source::master::SourceJob {
                idx: run.idx,
                addr: addr.clone(),
                dbs: run.dbs,
                ownership: run.ownership,
                own_keys: run.own_keys,
            };
            source::master::run(job, appliers, cfg, st, cancel).await
        }
        SourceSpec::Twemproxy { .. } => Err(source::SourceError::Link {
            source_name: name,
            msg: "a twemproxy pool must be expanded into its servers first".into(),
        }),
    }
}
