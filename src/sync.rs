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

impl SyncReport {
    /// Add the figures of an earlier run of the same job (before it continued on a new layout).
    fn add(&mut self, earlier: &SyncReport) {
        self.keys_applied += earlier.keys_applied;
        self.keys_expired_skipped += earlier.keys_expired_skipped;
        self.writes_rejected += earlier.writes_rejected;
    }
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
    let mut resuming = resuming_sources(cfg);
    if resuming.is_empty() && !info.keyspace.is_empty() {
        // A node of a cluster target that became a master since the last run (a failover, a new shard) has
        // no checkpoint file of its own, but the slots it took over carry their checkpoints.
        resuming = sources_checkpointed_on(cfg).await;
    }
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

/// Every target of the job as the configuration of its writer: a `redis://` target as it is, a cluster or
/// twemproxy target as one configuration per master node, each with the placement and its own part.
async fn expand_targets(cfg: &SyncConfig) -> Result<Vec<SyncConfig>, SyncError> {
    let mut out = Vec::new();
    for spec in &cfg.targets {
        let nodes = crate::target::shard::expand(spec, cfg.pool_auth.as_ref())
            .await
            .map_err(SyncError::Precheck)?;
        for (node, shard) in nodes {
            out.push(SyncConfig {
                target: node,
                shard,
                ..cfg.clone()
            });
        }
    }
    Ok(out)
}

/// Sources of this job whose in-target checkpoint a node of a sharded target holds (the key of the first
/// slot it owns).
async fn sources_checkpointed_on(cfg: &SyncConfig) -> Vec<String> {
    let (Some(shard), Some((_, prefix))) = (&cfg.shard, &cfg.target_checkpoint) else {
        return Vec::new();
    };
    let Some(first) = shard.groups().first().copied() else {
        return Vec::new();
    };
    let Ok(mut c) = Client::connect(&cfg.target).await else {
        return Vec::new();
    };
    if shard.db != 0 {
        let _ = c
            .cmd_ok(&[b"SELECT", shard.db.to_string().as_bytes()])
            .await;
    }
    let mut found = Vec::new();
    for s in &cfg.sources {
        if let SourceSpec::Redis(addr) = s {
            let id = crate::checkpoint::source_id(&addr.to_string());
            let key =
                crate::apply::stream::group_key(shard, format!("{prefix}{id}").as_bytes(), first);
            if let Ok(r) = c.cmd(&[b"EXISTS", &key]).await {
                if r.as_int() == Some(1) {
                    found.push(addr.to_string());
                }
            }
        }
    }
    found
}

/// For each planned source: the address of the last run's master it took over from, when it is a master
/// of a cluster source without checkpoints of its own and exactly one checkpoint of a master that is no
/// longer one — on every target, for the same db selection — has the replication id this master continues
/// (its `master_replid`, or its `master_replid2`: what a promoted replica keeps of its old master, psync2).
/// The link then asks it for a partial resync from that checkpoint.
async fn took_over(
    plan: &[crate::job::PlannedSource],
    per_target: &[(SyncConfig, ServerInfo)],
    state_dir: &std::path::Path,
) -> Vec<Option<crate::endpoint::RedisAddr>> {
    let mut out = vec![None; plan.len()];
    let Some((first, _)) = per_target.first() else {
        return out;
    };
    let current: std::collections::HashSet<String> = plan
        .iter()
        .filter_map(|p| match &p.spec {
            SourceSpec::Redis(a) => Some(a.host_port()),
            _ => None,
        })
        .collect();
    // The checkpoints of the first target whose source is not a source now.
    let suffix = format!(
        "--{}.json",
        crate::checkpoint::source_id(&first.target.to_string())
    );
    let mut orphans = Vec::new();
    if let Ok(dir) = std::fs::read_dir(state_dir) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("checkpoint-") || !name.ends_with(&suffix) {
                continue;
            }
            let Ok(Some(cp)) = crate::checkpoint::load(&e.path()) else {
                continue;
            };
            let Ok(was) = cp.source.parse::<crate::endpoint::RedisAddr>() else {
                continue;
            };
            if !current.contains(&was.host_port()) {
                orphans.push((was, cp));
            }
        }
    }
    for (i, p) in plan.iter().enumerate() {
        let (SourceSpec::Redis(addr), Some(_)) = (&p.spec, &p.cluster) else {
            continue;
        };
        if per_target.iter().any(|(t, _)| {
            crate::checkpoint::path_for(state_dir, &addr.to_string(), &t.target.to_string())
                .exists()
        }) {
            continue;
        }
        let Ok(mut c) = Client::connect_as(
            addr,
            crate::target::client::Role::Source,
            Duration::from_secs(5),
        )
        .await
        else {
            continue;
        };
        let Ok(info) = c.info(b"replication").await else {
            continue;
        };
        let ids: Vec<String> = ["master_replid", "master_replid2"]
            .iter()
            .filter_map(|f| info.field(f).map(str::to_string))
            .filter(|id| id.chars().any(|c| c != '0'))
            .collect();
        let job = p.dbs.describe();
        let matching: Vec<&crate::endpoint::RedisAddr> = orphans
            .iter()
            .filter(|(_, cp)| cp.job == job && ids.contains(&cp.replid))
            .map(|(was, _)| was)
            .collect();
        let [was] = matching[..] else { continue };
        // Every target must hold that master's checkpoint.
        if !per_target.iter().all(|(t, _)| {
            crate::checkpoint::path_for(state_dir, &was.to_string(), &t.target.to_string()).exists()
        }) {
            continue;
        }
        tracing::info!(source = %addr, was = %was,
            "this master took over from a master of the last run (a failover; it continues that master's \
             replication history): it resumes from that master's checkpoints with a partial resync");
        out[i] = Some(crate::endpoint::RedisAddr {
            auth: addr.auth.clone(),
            ..was.clone()
        });
    }
    out
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
///
/// A cluster target whose slot layout changes under the job (a resharding, a failover) stops every source
/// cleanly; the job then waits until the cluster has settled and starts again on the new layout, where every
/// slot's checkpoint says exactly what its data holds: a partial resync, nothing applied twice or lost.
pub async fn run(cfg: SyncConfig, cancel: CancellationToken) -> Result<SyncReport, SyncError> {
    run_with_status(cfg, cancel, Arc::new(Status::new())).await
}

/// [`run`], with the job's figures in `status` (which the caller reads too: `ferry serve` answers `INFO`
/// from it).
pub async fn run_with_status(
    cfg: SyncConfig,
    cancel: CancellationToken,
    status: Arc<Status>,
) -> Result<SyncReport, SyncError> {
    // One status registry and endpoint for the whole job: it stays readable while the job waits for a
    // cluster target to settle, and it stops when `run` returns.
    status.set_phase(JobPhase::Starting);
    let status_stop = CancellationToken::new();
    let _status_guard = status_stop.clone().drop_guard();
    if let Some(addr) = cfg.status_addr {
        crate::status::serve(addr, status.clone(), status_stop.clone())
            .await
            .map_err(|e| SyncError::Config(e.to_string()))?;
    }
    crate::status::spawn_reporter(status.clone(), Duration::from_secs(30), status_stop.clone());
    if let Some(opts) = cfg.replication.clone() {
        let r = crate::master::run(cfg, opts, cancel, status).await?;
        return Ok(SyncReport {
            keys_applied: r.keys,
            keys_expired_skipped: r.keys_expired_skipped,
            writes_rejected: 0,
        });
    }
    // The figures of the runs before a layout change (rejected writes decide the exit status).
    let mut earlier = SyncReport::default();
    // Prechecks failed in a row since the last run that got past its precheck.
    let mut refused = 0u32;
    loop {
        let mut started = false;
        let outcome = run_once(
            cfg.clone(),
            cancel.clone(),
            status.clone(),
            &mut earlier,
            &mut started,
        )
        .await;
        if started {
            refused = 0;
        }
        let outcome = match outcome {
            // After a layout change, a precheck that fails is most likely the layout moving again (a node
            // failed over between reading the slot map and checking it: a replica now, unreachable, or
            // answering MOVED to the checkpoint lookup): wait and look again, a few times. At the first
            // start a failing precheck refuses, whatever the cause.
            Err(SyncError::Precheck(msg))
                if status.layout_restarts() > 0
                    && refused < PRECHECK_RETRIES
                    && !cancel.is_cancelled() =>
            {
                refused += 1;
                Err(SyncError::Topology(format!(
                    "the precheck after a layout change failed ({refused} of {PRECHECK_RETRIES} tries): {msg}"
                )))
            }
            other => other,
        };
        match outcome {
            Err(SyncError::Topology(msg)) if !cancel.is_cancelled() => {
                status.set_phase(JobPhase::Settling);
                tracing::warn!(reason = %msg, restarts = status.layout_restarts() + 1,
                    "a cluster's slot layout changed: waiting until the cluster targets settle, then continuing on \
                     the new layout from every checkpoint");
                if let Err(e) = wait_settled(&cfg, &cancel).await {
                    if cancel.is_cancelled() {
                        // A stop while waiting: every source had already stopped cleanly, with its checkpoint.
                        status.set_phase(JobPhase::Done);
                        return Ok(earlier);
                    }
                    return Err(e);
                }
                status.new_layout();
            }
            other => return other,
        }
    }
}

/// Wait until every cluster target serves all slots, agrees on `cluster_state:ok`, and migrates no slot —
/// however long a resharding takes (the job is idle meanwhile, its status says `settling`, and a WARN
/// every minute says what still moves); a stop request ends the wait.
async fn wait_settled(cfg: &SyncConfig, cancel: &CancellationToken) -> Result<(), SyncError> {
    use crate::endpoint::TargetSpec;
    let started = tokio::time::Instant::now();
    let mut next_warning = started + Duration::from_secs(60);
    for spec in &cfg.targets {
        let TargetSpec::Cluster(seeds) = spec else {
            continue;
        };
        // Settled twice in a row, a second apart: a resharding moving slot after slot has short pauses.
        let mut calm = 0;
        loop {
            let last = match cluster_settled(seeds).await {
                Ok(()) if calm >= 1 => break,
                Ok(()) => {
                    calm += 1;
                    String::from("settled once; checking again")
                }
                Err(why) => {
                    calm = 0;
                    why
                }
            };
            if tokio::time::Instant::now() >= next_warning {
                next_warning += Duration::from_secs(60);
                tracing::warn!(target_spec = %spec, waiting_s = started.elapsed().as_secs(), state = %last,
                    "the cluster target has not settled yet; the job continues once it has");
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(1000)) => {}
                _ = cancel.cancelled() => return Err(SyncError::Runtime("interrupted".into())),
            }
        }
    }
    Ok(())
}

/// After a layout change, how many failed prechecks in a row are taken for the layout still moving before
/// the job stops with the precheck's error.
const PRECHECK_RETRIES: u32 = 5;

/// `Ok` when the cluster is settled; else what is still moving.
async fn cluster_settled(seeds: &[crate::endpoint::RedisAddr]) -> Result<(), String> {
    let (map, nodes) = crate::target::shard::discover(seeds).await?;
    if !map.uncovered().is_empty() {
        return Err("some slots are served by no master".into());
    }
    for n in &nodes {
        let mut c = Client::connect(n).await.map_err(|e| e.to_string())?;
        let info = c
            .cmd_ok(&[b"CLUSTER", b"INFO"])
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(info.as_bytes().unwrap_or_default()).to_string();
        if !text.contains("cluster_state:ok") {
            return Err(format!(
                "{} does not report cluster_state:ok",
                n.host_port()
            ));
        }
        let nodes_txt = c
            .cmd_ok(&[b"CLUSTER", b"NODES"])
            .await
            .map_err(|e| e.to_string())?;
        let t = String::from_utf8_lossy(nodes_txt.as_bytes().unwrap_or_default()).to_string();
        if t.contains("->-") || t.contains("-<-") {
            return Err(format!("{} is migrating or importing slots", n.host_port()));
        }
    }
    Ok(())
}

async fn run_once(
    mut cfg: SyncConfig,
    cancel: CancellationToken,
    status: Arc<Status>,
    earlier: &mut SyncReport,
    started: &mut bool,
) -> Result<SyncReport, SyncError> {
    // A source that meets a changed cluster layout stops the others too (see `run`).
    let outer = cancel;
    let cancel = outer.child_token();
    status.set_phase(JobPhase::Starting);
    // Ends the phase watcher below with this run.
    let status_stop = CancellationToken::new();
    let _status_guard = status_stop.clone().drop_guard();
    {
        let (status, cancel, stop) = (status.clone(), cancel.clone(), status_stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => status.set_phase(JobPhase::Draining),
                _ = stop.cancelled() => {}
            }
        });
    }

    let plan = expand_sources_with(&cfg.sources, cfg.pool_auth.as_ref(), &cfg.dbs).await?;
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
    let mut all_targets = expand_targets(&cfg).await?;
    let cluster = all_targets
        .iter()
        .any(|t| t.shard.as_ref().is_some_and(|s| s.is_cluster()));
    for t in all_targets
        .iter_mut()
        .filter(|t| t.shard.as_ref().is_some_and(|s| s.is_cluster()))
    {
        // A cluster node that stays away is failed over by its cluster: ferry waits for that at the job
        // level (see `run`) rather than for the lost address.
        t.pool.reconnect_for = t.pool.reconnect_for.min(Duration::from_secs(5));
    }
    if cfg.target_checkpoint.is_none() && all_targets.iter().any(|t| t.shard.is_some()) {
        return Err(SyncError::Config(
            "--no-target-checkpoint cannot be used with a cluster or twemproxy target: ferry applies each slot's \
             (or server's) commands in a transaction with that slot's checkpoint, which is what keeps the copy \
             exact there"
                .into(),
        ));
    }
    let mut plan = plan;
    if all_targets.iter().any(|t| t.shard.is_some()) {
        let dbs: Vec<u32> = all_targets
            .iter()
            .filter_map(|t| t.shard.as_ref().map(|s| s.db))
            .collect();
        crate::job::one_target_db(&mut plan, &dbs).await?;
    }
    let mut per_target = Vec::new();
    for tcfg in all_targets {
        // A shorter write-rate sample than `ferry check` takes (1 s): enough for the backlog warning, and
        // the sync starts sooner.
        let mut opts = crate::precheck::CheckOptions::for_sync(&tcfg);
        opts.rate_sample = Duration::from_millis(250);
        let report = crate::precheck::run_checks(&plan, &tcfg.target, &opts).await;
        report.log_and_refuse()?;
        let info = precheck_target(&tcfg).await?;
        per_target.push((tcfg, info));
    }
    // A master that joined a cluster target after the stream's FUNCTION commands went out lacks them.
    let mut clusters: std::collections::BTreeMap<String, Vec<crate::endpoint::RedisAddr>> =
        Default::default();
    for (tcfg, _) in &per_target {
        if let Some(sh) = tcfg.shard.as_ref().filter(|s| s.is_cluster()) {
            clusters
                .entry(sh.label.clone())
                .or_default()
                .push(tcfg.target.clone());
        }
    }
    for (label, nodes) in &clusters {
        crate::target::shard::spread_functions(nodes)
            .await
            .map_err(|e| SyncError::Precheck(format!("target {label}: {e}")))?;
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
        let pool = WriterPool::connect_node(
            &tcfg.target,
            tcfg.pool.clone(),
            stats.clone(),
            cancel.child_token(),
            tcfg.shard.as_ref().and_then(|s| s.redirects.clone()),
        )
        .await
        .map_err(|e| SyncError::Precheck(e.to_string()))?;
        let target_status = status.add_target(&tcfg.target, stats.clone());
        target_status.set_connections(pool.len() as u64);
        let _ = stats.latency.set(target_status.latency());
        pools.push((tcfg.clone(), info.clone(), Arc::new(pool), stats));
    }
    *started = true;
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
    // A job that continues (checkpoints of its sources): a master of a cluster source without one took over
    // since the last run, and the targets hold its slots' keys.
    let continuing = per_target
        .iter()
        .any(|(t, _)| !resuming_sources(t).is_empty());
    // Cluster masters that took over from a master of the last run (a failover): they continue its
    // checkpoints, with a partial resync.
    let took_over = if continuing {
        took_over(&plan, &per_target, &cfg.state_dir).await
    } else {
        vec![None; plan.len()]
    };
    let mut tasks = tokio::task::JoinSet::new();
    // The sources still running, for the report of a stop that takes long.
    let mut running = std::collections::BTreeSet::new();
    for (idx, spec) in cfg.sources.iter().enumerate() {
        let mut appliers = Vec::new();
        let sid = crate::checkpoint::source_id(&plan[idx].label);
        let own = ownership(&plan, idx, &file_keys);
        // This source's heartbeat key (a cluster source's master has its own), never copied.
        let heartbeat = crate::source::master::heartbeat_for(cfg.heartbeat.clone(), &own);
        for (tcfg, info, pool, _) in &pools {
            let mut opts = SnapshotOptions::new(info.clone(), format!("{TMP_PREFIX}{sid}:"));
            opts.overwrite = cfg.overwrite;
            opts.chunk_elements = cfg.chunk_elements;
            opts.dbs = plan[idx].dbs.clone();
            opts.shard = tcfg.shard.clone();
            opts.skip_key = heartbeat
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
            ownership: own,
            dbs: plan[idx].dbs.clone(),
            own_keys: own_keys.clone(),
            file_keys: file_keys_tx[idx].take(),
            locate: plan[idx].cluster.as_ref().map(|(c, i)| c.member(*i)),
            replaces: continuing && plan[idx].cluster.is_some(),
            identity: took_over[idx].clone(),
        };
        let cfg = SyncConfig {
            heartbeat,
            ..cfg.clone()
        };
        let cancel = cancel.clone();
        let label = plan[idx].label.clone();
        running.insert(label.clone());
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

    // A cluster target whose writes followed `MOVED`s (a resharding between its masters): once it has
    // settled and every source streams with a short backlog, the job continues on the new layout, so the
    // moved slots' writes stop taking the detour (see `target::redirect`).
    let realign = CancellationToken::new();
    spawn_realign_watch(
        &cfg,
        &per_target,
        status.clone(),
        realign.clone(),
        status_stop.clone(),
    );
    let mut failures = Vec::new();
    let mut topology: Option<String> = None;
    // A cluster source that gained a master (slots moved to it) stops the job too: the next run has it.
    let grown = CancellationToken::new();
    let _grown_guard = grown.clone().drop_guard();
    for p in &plan {
        if let Some((c, _)) = &p.cluster {
            let (source_grown, job_grown, label) =
                (c.grown.clone(), grown.clone(), c.label.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = source_grown.cancelled() => {
                        tracing::info!(source = %label, "stopping the job to continue with the cluster source's new master");
                        job_grown.cancel();
                    }
                    _ = job_grown.cancelled() => {}
                }
            });
        }
    }
    // When a stop that drains every source first should say which ones it still waits for.
    let mut report_at: Option<tokio::time::Instant> = None;
    loop {
        if report_at.is_none() && cancel.is_cancelled() {
            report_at = Some(tokio::time::Instant::now() + SLOW_STOP_REPORT);
        }
        let joined = tokio::select! {
            j = tasks.join_next() => match j {
                Some(j) => j,
                None => break,
            },
            _ = sleep_until_some(report_at) => {
                tracing::warn!(
                    waiting_for = ?running,
                    "the job is stopping: still waiting for these sources to drain and stop"
                );
                report_at = Some(tokio::time::Instant::now() + SLOW_STOP_REPORT);
                continue;
            }
            _ = grown.cancelled(), if topology.is_none() && !outer.is_cancelled() => {
                cancel.cancel();
                topology = Some("a master joined the cluster source".into());
                continue;
            }
            _ = realign.cancelled(), if topology.is_none() && !outer.is_cancelled() => {
                cancel.cancel();
                topology = Some(
                    "slots moved between the cluster target's masters; their writes followed the redirections"
                        .into(),
                );
                continue;
            }
        };
        if let Ok((name, _)) = &joined {
            running.remove(name);
        }
        match joined {
            Ok((_, Ok(()))) => {}
            Ok((name, Err(e))) if is_topology(&e) || (cluster && lost_node(&e)) => {
                if outer.is_cancelled() {
                    // Stopping anyway: what was not applied is after the slots' checkpoints, so the next run
                    // continues exactly.
                    tracing::info!(source = %name, error = %e,
                        "stopped while the cluster target's layout changed; every slot's checkpoint says what it holds");
                } else {
                    tracing::info!(source = %name, error = %e, "stopping the job to continue on the new layout");
                    cancel.cancel();
                    topology.get_or_insert_with(|| e.to_string());
                }
            }
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
    tracing::debug!(
        failures = failures.len(),
        "every source of this run stopped; closing the writer pools"
    );
    let mut writes_rejected = 0;
    let (mut asked, mut moved, mut retried) = (0, 0, 0);
    for (_, _, pool, stats) in pools {
        writes_rejected += stats.failed();
        asked += stats.redirected_ask.load(Ordering::Relaxed);
        moved += stats.redirected_moved.load(Ordering::Relaxed);
        retried += stats.redirect_retries.load(Ordering::Relaxed);
        match Arc::try_unwrap(pool) {
            Ok(pool) => {
                if let Err(e) = pool.close().await {
                    failures.push(e.to_string());
                }
            }
            Err(_) => failures.push("writer pool still in use".into()),
        }
    }
    if asked + moved + retried > 0 {
        tracing::info!(
            ask = asked,
            moved,
            retries = retried,
            "writes of this run that followed the cluster target's redirections"
        );
    }
    let mut report = SyncReport {
        keys_applied: apply_stats.keys_applied.load(Ordering::Relaxed),
        keys_expired_skipped: apply_stats.keys_expired_skipped.load(Ordering::Relaxed),
        writes_rejected,
    };
    if let Some(msg) = topology {
        earlier.add(&report);
        return Err(SyncError::Topology(msg));
    }
    report.add(earlier);
    if !failures.is_empty() {
        status.set_phase(JobPhase::Failed);
        return Err(SyncError::Runtime(failures.join("; ")));
    }
    status.set_phase(JobPhase::Done);
    Ok(report)
}

/// A source's backlog (received, not applied) below which the job may stop to continue on a new layout:
/// the restart asks each master for what follows its checkpoint, which its backlog must still hold.
const REALIGN_MAX_LAG: u64 = 1 << 20;

/// Watch the cluster targets whose writes follow `MOVED`s; fire `realign` once such a target has settled
/// (twice in a row, a second apart) while every source streams with less than [`REALIGN_MAX_LAG`] to apply.
fn spawn_realign_watch(
    cfg: &SyncConfig,
    per_target: &[(SyncConfig, ServerInfo)],
    status: Arc<Status>,
    realign: CancellationToken,
    stop: CancellationToken,
) {
    use crate::endpoint::TargetSpec;
    let mut watched: Vec<(
        Arc<crate::target::redirect::Redirects>,
        Vec<crate::endpoint::RedisAddr>,
    )> = Vec::new();
    for (tcfg, _) in per_target {
        let Some(r) = tcfg.shard.as_ref().and_then(|s| s.redirects.clone()) else {
            continue;
        };
        if watched.iter().any(|(w, _)| Arc::ptr_eq(w, &r)) {
            continue;
        }
        let seeds = cfg.targets.iter().find_map(|t| match t {
            TargetSpec::Cluster(seeds) if t.to_string() == r.label() => Some(seeds.clone()),
            _ => None,
        });
        if let Some(seeds) = seeds {
            watched.push((r, seeds));
        }
    }
    if watched.is_empty() {
        return;
    }
    tokio::spawn(async move {
        let mut calm = 0;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.cancelled() => return,
            }
            let drifted: Vec<_> = watched.iter().filter(|(r, _)| r.drifted()).collect();
            let streaming = status.sources().iter().all(|s| {
                matches!(
                    s.state(),
                    crate::status::SourceState::Streaming | crate::status::SourceState::Done
                ) && s.lag_bytes().unwrap_or(0) < REALIGN_MAX_LAG
            });
            let mut settled = !drifted.is_empty() && streaming;
            for (_, seeds) in &drifted {
                if settled && cluster_settled(seeds).await.is_err() {
                    settled = false;
                }
            }
            calm = if settled { calm + 1 } else { 0 };
            if calm >= 2 {
                realign.cancel();
                return;
            }
        }
    });
}

/// Whether a source stopped because a cluster target's node went away (a killed master, a restarted node):
/// a failover may be under way, which `run` waits for.
fn lost_node(e: &source::SourceError) -> bool {
    use crate::target::TargetError as T;
    matches!(
        e,
        source::SourceError::Apply {
            err: crate::apply::ApplyError::Target(
                T::Connect { .. } | T::Io { .. } | T::Timeout { .. } | T::Restarted { .. }
            ),
            ..
        }
    )
}

/// Whether a source stopped because a cluster target redirected a write (its slot layout changed).
fn is_topology(e: &source::SourceError) -> bool {
    matches!(
        e,
        source::SourceError::Apply {
            err: crate::apply::ApplyError::Target(crate::target::TargetError::Topology { .. }),
            ..
        }
    )
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
    /// For a master of a cluster source: where its link finds it after a failover.
    locate: Option<Arc<dyn crate::repl::Locate>>,
    /// See `SourceJob::replaces`.
    replaces: bool,
    /// A master of a cluster source that took over from this address since the last run: the source keeps
    /// that address's checkpoints (see `SourceJob::connect`).
    identity: Option<crate::endpoint::RedisAddr>,
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
            let (addr, connect) = match run.identity {
                Some(was) => (was, Some(addr.clone())),
                None => (addr.clone(), None),
            };
            let job = source::master::SourceJob {
                idx: run.idx,
                addr,
                connect,
                dbs: run.dbs,
                ownership: run.ownership,
                own_keys: run.own_keys,
                locate: run.locate,
                replaces: run.replaces,
            };
            source::master::run(job, appliers, cfg, st, cancel).await
        }
        SourceSpec::Twemproxy { .. } | SourceSpec::Cluster(_) => Err(source::SourceError::Link {
            source_name: name,
            msg: "a twemproxy pool or a cluster must be expanded into its servers first".into(),
        }),
    }
}

/// How often a stop that waits for its sources says which ones it waits for.
const SLOW_STOP_REPORT: Duration = Duration::from_secs(10);

/// Sleep until `at`; never wake when there is none.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
