//! `ferry sync`: sources → apply → target, with prechecks, shutdown and the exit status.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::apply::snapshot::{SnapshotApplier, SnapshotOptions};
use crate::apply::sweep::Ownership;
use crate::apply::ApplyStats;
use crate::endpoint::{RedisAddr, SourceSpec};
use crate::rdb::DecoderOptions;
use crate::source;
use crate::status::{JobPhase, SourceKind, SourceStatus, Status};
use crate::target::client::Client;
use crate::target::pool::{PoolConfig, WriterPool};
use crate::target::stats::TargetStats;
use crate::target::ServerInfo;

/// Everything `ferry sync` needs, after parsing.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    pub sources: Vec<SourceSpec>,
    pub target: RedisAddr,
    /// Further targets (`--target` repeated): every target gets every change; a source acknowledges the
    /// lowest offset applied across them.
    pub more_targets: Vec<RedisAddr>,
    /// Source values replace target values; otherwise a non-empty target is refused before any write.
    pub overwrite: bool,
    /// Exit when every source's full sync has been applied.
    pub once: bool,
    /// Where checkpoints and spool files live. Default `./ferry-state`.
    pub state_dir: PathBuf,
    /// Writer pool settings.
    pub pool: PoolConfig,
    /// RDB decoder settings (big-value threshold, chunk size).
    pub decoder: DecoderOptions,
    /// Elements per native command on the re-encode path.
    pub chunk_elements: usize,
    /// Spool memory limit per source (default: the spool's own).
    pub spool_mem_bytes: Option<u64>,
    /// Spool disk limit per source (default: the spool's own).
    pub spool_disk_bytes: Option<u64>,
    /// Keep each source's checkpoint in the target too, in the same transaction as the commands it covers
    /// (`Some((db, key prefix))`): exact resume even after kill -9.
    pub target_checkpoint: Option<(u32, String)>,
    /// Where to serve `/status`, `/metrics`, `/healthz`.
    pub status_addr: Option<std::net::SocketAddr>,
    /// Which source dbs are synced and where they go.
    pub dbs: crate::apply::DbMap,
    /// Credentials for the servers of `twemproxy:` sources instead of the pool's `redis_auth`.
    pub pool_auth: Option<crate::endpoint::Auth>,
    /// End the job at the first write the target rejects (`--on-error stop`).
    pub stop_on_error: bool,
    /// Write `SET <key> <unix ms>` into each source master this often, to measure end-to-end lag; the key
    /// is never copied.
    pub heartbeat: Option<(Duration, String)>,
}

/// How `ferry sync` ended.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A precondition failed before anything was written (exit 1).
    #[error("{0}")]
    Precheck(String),
    /// Something failed while running (exit 1).
    #[error("{0}")]
    Runtime(String),
    /// The job's configuration cannot work (exit 2), e.g. an unreadable twemproxy config.
    #[error("{0}")]
    Config(String),
}

/// Figures of a finished run.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub keys_applied: u64,
    pub keys_expired_skipped: u64,
    pub writes_rejected: u64,
}

/// Check the target before any write: reachable, authenticated, version, and empty unless overwriting.
pub async fn precheck_target(cfg: &SyncConfig) -> Result<ServerInfo, SyncError> {
    let mut c = Client::connect(&cfg.target).await.map_err(|e| {
        SyncError::Precheck(format!(
            "{e}. Check that the target is running and reachable, and its credentials."
        ))
    })?;
    c.cmd_ok(&[b"PING"])
        .await
        .map_err(|e| SyncError::Precheck(e.to_string()))?;
    let info = c
        .server_info()
        .await
        .map_err(|e| SyncError::Precheck(e.to_string()))?;
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

/// One source to run, after twemproxy pools were expanded into their servers.
#[derive(Clone, Debug)]
pub struct PlannedSource {
    pub spec: SourceSpec,
    /// For a server of a twemproxy pool: the pool's placement and this server's index in it.
    pub router: Option<(Arc<crate::twemproxy::Router>, usize)>,
    /// For a server of a twemproxy pool: the pool's name.
    pub pool: Option<String>,
    /// How the operator knows this source: its address, and for a pool server the pool and server name.
    pub label: String,
}

/// The job's sources with every `twemproxy:` pool replaced by its servers (each a master to sync).
pub fn expand_sources(sources: &[SourceSpec]) -> Result<Vec<PlannedSource>, SyncError> {
    expand_sources_with(sources, None)
}

/// As [`expand_sources`], with `pool_auth` (if given) replacing the pools' `redis_auth` for their servers,
/// e.g. an ACL user allowed to PSYNC.
pub fn expand_sources_with(
    sources: &[SourceSpec],
    pool_auth: Option<&crate::endpoint::Auth>,
) -> Result<Vec<PlannedSource>, SyncError> {
    let mut out = Vec::new();
    for s in sources {
        match s {
            SourceSpec::Twemproxy { path, pool } => {
                let conf = crate::twemproxy::TwemproxyConfig::load(path)
                    .map_err(|e| SyncError::Config(format!("source {s}: {e}")))?;
                let p = conf
                    .select_pool(pool.as_deref())
                    .map_err(|e| SyncError::Config(format!("source {s}: {e}")))?;
                let mut masters = p
                    .masters()
                    .map_err(|e| SyncError::Config(format!("source {s}: {e}")))?;
                if let Some(auth) = pool_auth {
                    for m in masters.iter_mut() {
                        m.auth = Some(auth.clone());
                    }
                }
                let router = Arc::new(
                    crate::twemproxy::Router::new(p)
                        .map_err(|e| SyncError::Config(format!("source {s}: {e}")))?,
                );
                tracing::info!(source = %s, pool = %p.name, servers = masters.len(),
                    "twemproxy pool: syncing every server as a master");
                out.extend(masters.into_iter().enumerate().map(|(i, a)| PlannedSource {
                    label: format!(
                        "{a} (twemproxy pool {}, server {})",
                        p.name,
                        p.servers[i].key_name()
                    ),
                    spec: SourceSpec::Redis(a),
                    router: Some((router.clone(), i)),
                    pool: Some(p.name.clone()),
                }));
            }
            other => out.push(PlannedSource {
                label: other.to_string(),
                spec: other.clone(),
                router: None,
                pool: None,
            }),
        }
    }
    let mut seen = std::collections::HashSet::new();
    for s in &out {
        if let SourceSpec::Redis(a) = &s.spec {
            if !seen.insert(a.host_port()) {
                return Err(SyncError::Config(format!(
                    "source {a} is given twice (directly or through a twemproxy pool)"
                )));
            }
        }
    }
    Ok(out)
}

/// How source `idx` of `plan` tells its keys on the shared target.
fn ownership(plan: &[PlannedSource], idx: usize) -> Ownership {
    if plan.len() == 1 {
        return Ownership::Sole;
    }
    if let Some((router, me)) = &plan[idx].router {
        // Only when the whole job is that one pool; otherwise other sources may hold the same keys.
        if plan.iter().all(|p| {
            p.router
                .as_ref()
                .is_some_and(|(r, _)| Arc::ptr_eq(r, router))
        }) {
            return Ownership::Router {
                router: router.clone(),
                me: *me,
            };
        }
    }
    Ownership::Others(
        plan.iter()
            .enumerate()
            .filter(|(i, _)| *i != idx)
            .filter_map(|(_, p)| match &p.spec {
                SourceSpec::Redis(a) => Some(a.clone()),
                _ => None,
            })
            .collect(),
    )
}

/// Sources of this job that have a checkpoint in the state directory: their data is already on the target.
fn resuming_sources(cfg: &SyncConfig) -> Vec<String> {
    cfg.sources
        .iter()
        .filter_map(|s| match s {
            SourceSpec::Redis(addr) => {
                let p = crate::checkpoint::path_for(
                    &cfg.state_dir,
                    &crate::checkpoint::source_id(&addr.to_string()),
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

    let plan = expand_sources_with(&cfg.sources, cfg.pool_auth.as_ref())?;
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

    let mut tasks = tokio::task::JoinSet::new();
    for (idx, spec) in cfg.sources.iter().enumerate() {
        let mut appliers = Vec::new();
        for (tcfg, info, pool, _) in &pools {
            let mut opts = SnapshotOptions::new(info.clone(), format!("ferry:tmp:{idx}:"));
            opts.overwrite = cfg.overwrite;
            opts.chunk_elements = cfg.chunk_elements;
            opts.dbs = cfg.dbs.clone();
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
        let own = ownership(&plan, idx);
        let cfg = cfg.clone();
        let cancel = cancel.clone();
        let label = plan[idx].label.clone();
        tasks.spawn(async move {
            let name = label;
            let r = run_source(idx, spec, own, appliers, &cfg, src_status.clone(), cancel).await;
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

async fn run_source(
    idx: usize,
    spec: SourceSpec,
    ownership: Ownership,
    mut appliers: Vec<(SyncConfig, SnapshotApplier)>,
    cfg: &SyncConfig,
    st: Arc<SourceStatus>,
    cancel: CancellationToken,
) -> Result<(), source::SourceError> {
    let name = spec.to_string();
    match &spec {
        SourceSpec::RdbFile(path) => {
            st.set_state(crate::status::SourceState::FullSync);
            let mut refs: Vec<&mut SnapshotApplier> = appliers.iter_mut().map(|(_, a)| a).collect();
            let summary =
                source::load_rdb_file(&name, path, cfg.decoder.clone(), &mut refs).await?;
            tracing::info!(source = %name, rdb_version = summary.version, bytes = summary.bytes,
                keys = summary.entries, "RDB file loaded");
            Ok(())
        }
        SourceSpec::Redis(addr) => {
            source::master::run(idx, addr, ownership, appliers, cfg, st, cancel).await
        }
        SourceSpec::Twemproxy { .. } => Err(source::SourceError::Link {
            source_name: name,
            msg: "a twemproxy pool must be expanded into its servers first".into(),
        }),
    }
}
