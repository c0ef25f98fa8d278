//! The job plan: what a `ferry sync` job is (its configuration) and its sources once twemproxy pools and
//! Redis Cluster sources are expanded into their servers (masters), with the rule each source uses to tell
//! its keys on a shared target.
//!
//! It sits below `sync` (which runs the job), `precheck` (which checks it) and `source` (which runs one of
//! its sources), so none of them needs another to know what the job is.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::apply::sweep::{Other, Ownership};
use crate::apply::DbMap;
use crate::endpoint::{RedisAddr, SourceSpec};
use crate::rdb::DecoderOptions;
use crate::target::pool::PoolConfig;

/// Everything `ferry sync` needs, after parsing.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    pub sources: Vec<SourceSpec>,
    /// Every target as given (`--target` repeated): every target gets every change; a source acknowledges
    /// the lowest offset applied across them. A cluster or twemproxy target is expanded into its nodes.
    pub targets: Vec<crate::endpoint::TargetSpec>,
    /// The server one writer writes: the first `redis://` target in the job's configuration, a node of a
    /// sharded target in each of its writers' configurations.
    pub target: RedisAddr,
    /// For a node of a sharded target: which keys it holds.
    pub shard: Option<crate::target::shard::Shard>,
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
    /// `--apply replication`: ferry is the target's master (the `master` module); `None`: commands.
    pub replication: Option<ReplicationOptions>,
}

/// `--apply replication` settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicationOptions {
    /// Where ferry listens for the target (`--replication-listen`); default: an ephemeral port on the
    /// local address ferry reaches the target from.
    pub listen: Option<std::net::SocketAddr>,
    /// The address the target is told to replicate from (`--replication-announce`), when it reaches ferry
    /// through a NAT, a container port mapping or a proxy; default: the listen address.
    pub announce: Option<std::net::SocketAddr>,
    /// Stream bytes kept for a target that reconnects (`--replication-backlog-bytes`; 0: the default).
    pub backlog_bytes: usize,
}

/// What `ferry sync` does when the target already holds data (`--on-conflict`; `ferry check` judges the
/// target by it too).
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnConflict {
    /// Refuse a target that holds any key, before writing anything.
    Error,
    /// Source values replace target values of the same key.
    Overwrite,
}

/// Prefix of the in-target checkpoint keys by default (`--checkpoint-key-prefix`); the source's id
/// (`checkpoint::source_id`) follows.
pub const DEFAULT_CHECKPOINT_KEY_PREFIX: &str = "ferry:checkpoint:";
/// The heartbeat key written into each source by default (`--heartbeat-key`).
pub const DEFAULT_HEARTBEAT_KEY: &str = "ferry:heartbeat";
/// Prefix of the temporary keys big values are built under (`ferry:tmp:<source id>:<n>`) before they are
/// renamed into place.
pub const TMP_PREFIX: &str = "ferry:tmp:";

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
    /// A cluster target's slot layout changed under the job: `sync::run` starts it again on the new layout.
    #[error("{0}")]
    Topology(String),
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
    /// Which of its dbs are synced and where they go: the job's `--db`/`--map-db`, or for a server of a
    /// twemproxy pool (when neither is given) the pool's `redis_db` into target db 0 — the one db the pool's
    /// clients see, and the one they use once they talk to the target directly.
    pub dbs: DbMap,
    /// For a master of a `cluster://` source: the source (its masters share the slot table and follow
    /// failovers and reshardings through it) and this master's index in it.
    pub cluster: Option<(Arc<crate::follow::ClusterSource>, usize)>,
}

/// The job's sources with every `twemproxy:` pool replaced by its servers and every `cluster://` source by
/// its masters (found in its slot map), each a master to sync.
pub async fn expand_sources(sources: &[SourceSpec]) -> Result<Vec<PlannedSource>, SyncError> {
    expand_sources_with(sources, None, &DbMap::default()).await
}

/// As [`expand_sources`], with `pool_auth` (if given) replacing the pools' `redis_auth` for their servers,
/// e.g. an ACL user allowed to PSYNC, and `dbs` the job's `--db`/`--map-db`.
pub async fn expand_sources_with(
    sources: &[SourceSpec],
    pool_auth: Option<&crate::endpoint::Auth>,
    dbs: &DbMap,
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
                let pool_dbs = if dbs.is_default() {
                    let mut m = DbMap {
                        keep: Some([p.redis_db].into_iter().collect()),
                        ..DbMap::default()
                    };
                    if p.redis_db != 0 {
                        m.map.insert(p.redis_db, 0);
                        tracing::info!(source = %s, pool = %p.name, redis_db = p.redis_db,
                            "the pool serves db {} of its servers (redis_db): it is written into target db 0, \
                             the db its clients see; other dbs of the servers are not the pool's and are not synced",
                            p.redis_db);
                    }
                    m
                } else {
                    dbs.clone()
                };
                if p.auto_eject_hosts {
                    tracing::warn!(source = %s, pool = %p.name,
                        "the pool has auto_eject_hosts: true: while a server was ejected, nutcracker sent its keys \
                         to other servers, which may still hold stale copies of them; ferry copies every server, so a \
                         key held by two servers is written twice (a conflict under --on-conflict error, the later \
                         copy wins under overwrite). Check with ferry verify after the sync");
                }
                out.extend(masters.into_iter().enumerate().map(|(i, a)| PlannedSource {
                    label: format!(
                        "{a} (twemproxy pool {}, server {})",
                        p.name,
                        p.servers[i].key_name()
                    ),
                    spec: SourceSpec::Redis(a),
                    router: Some((router.clone(), i)),
                    pool: Some(p.name.clone()),
                    dbs: pool_dbs.clone(),
                    cluster: None,
                }));
            }
            SourceSpec::Cluster(seeds) => {
                let (cluster, masters) =
                    crate::follow::ClusterSource::discover(s.to_string(), seeds)
                        .await
                        .map_err(|e| SyncError::Precheck(format!("source {s}: {e}")))?;
                tracing::info!(source = %s, masters = masters.len(),
                    "Redis Cluster source: syncing every master as a source (its db 0, the only db of a cluster)");
                let uncovered = cluster.uncovered();
                if !uncovered.is_empty() {
                    tracing::warn!(source = %s, slots = %uncovered,
                        "no master of the cluster serves these slots now: their keys cannot be synced");
                }
                // A cluster has only db 0: nothing else to choose or map (an explicit --map-db 0:N still
                // chooses where it goes).
                let cluster_dbs = if dbs.is_default() {
                    DbMap {
                        keep: Some([0].into_iter().collect()),
                        ..DbMap::default()
                    }
                } else {
                    dbs.clone()
                };
                out.extend(masters.into_iter().enumerate().map(|(i, a)| PlannedSource {
                    label: format!("{a} (cluster {s}, slots {})", cluster.slots_of(i)),
                    spec: SourceSpec::Redis(a),
                    router: None,
                    pool: None,
                    dbs: cluster_dbs.clone(),
                    cluster: Some((cluster.clone(), i)),
                }));
            }
            other => out.push(PlannedSource {
                label: other.to_string(),
                spec: other.clone(),
                router: None,
                pool: None,
                dbs: dbs.clone(),
                cluster: None,
            }),
        }
    }
    let mut seen = std::collections::HashSet::new();
    for s in &out {
        if let SourceSpec::Redis(a) = &s.spec {
            if !seen.insert(a.host_port()) {
                return Err(SyncError::Config(format!(
                    "source {a} is given twice (directly, or through a twemproxy pool or a cluster)"
                )));
            }
        }
    }
    Ok(out)
}

/// How source `idx` of `plan` tells its keys on the shared target. `files[i]` is the key set of source `i`
/// when it is an `rdb:` file (filled once it is loaded).
pub fn ownership(
    plan: &[PlannedSource],
    idx: usize,
    files: &[Option<tokio::sync::watch::Receiver<Option<Arc<crate::keyset::KeySet>>>>],
) -> Ownership {
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
    if let Some((cluster, me)) = &plan[idx].cluster {
        // Only when the whole job is that one cluster, as for a pool.
        if plan.iter().all(|p| {
            p.cluster
                .as_ref()
                .is_some_and(|(c, _)| Arc::ptr_eq(c, cluster))
        }) {
            return Ownership::Slots {
                owners: cluster.owners(),
                me: *me,
            };
        }
    }
    Ownership::Others(
        plan.iter()
            .enumerate()
            .filter(|(i, _)| *i != idx)
            .filter_map(|(i, p)| match &p.spec {
                SourceSpec::Redis(a) => Some(Other::Live {
                    addr: a.clone(),
                    dbs: p.dbs.clone(),
                }),
                SourceSpec::RdbFile(_) => files.get(i).cloned().flatten().map(|keys| Other::File {
                    name: p.label.clone(),
                    keys,
                }),
                SourceSpec::Twemproxy { .. } | SourceSpec::Cluster(_) => None,
            })
            .collect(),
    )
}

/// The server standing for the job's targets before they are expanded into nodes: the first `redis://`
/// target, else the first seed of the first cluster, else the first server of the first twemproxy pool
/// (an unreadable config is reported when the job expands its targets).
pub fn first_server(targets: &[crate::endpoint::TargetSpec]) -> RedisAddr {
    use crate::endpoint::TargetSpec;
    let placeholder = || RedisAddr {
        host: "0.0.0.0".into(),
        port: 1,
        auth: None,
    };
    if let Some(a) = targets.iter().find_map(|t| t.as_redis()) {
        return a.clone();
    }
    match targets.first() {
        Some(TargetSpec::Cluster(seeds)) => seeds.first().cloned().unwrap_or_else(placeholder),
        Some(TargetSpec::Twemproxy { path, pool }) => crate::twemproxy::TwemproxyConfig::load(path)
            .ok()
            .and_then(|c| {
                c.select_pool(pool.as_deref())
                    .ok()
                    .and_then(|p| p.masters().ok())
            })
            .and_then(|m| m.into_iter().next())
            .unwrap_or_else(placeholder),
        _ => placeholder(),
    }
}

/// A sharded target has one db (a cluster only db 0, a pool its `redis_db`): every synced source db must
/// go there. Without `--db`/`--map-db`, a source is synced from its db 0, and a source holding keys in
/// another db is refused, naming the dbs and their keys.
pub async fn one_target_db(
    plan: &mut [PlannedSource],
    target_dbs: &[u32],
) -> Result<(), SyncError> {
    let dbs: std::collections::BTreeSet<u32> = target_dbs.iter().copied().collect();
    if dbs.len() > 1 {
        return Err(SyncError::Config(format!(
            "the targets have different dbs ({dbs:?}): a job writes every source db to one target db"
        )));
    }
    let tdb = *dbs.iter().next().unwrap_or(&0);
    for p in plan.iter_mut() {
        let explicit = p.dbs.keep.is_some() || !p.dbs.map.is_empty();
        if !explicit {
            if let SourceSpec::Redis(addr) = &p.spec {
                let info = async {
                    let mut c = crate::target::client::Client::connect(addr).await?;
                    c.server_info().await
                }
                .await
                .map_err(|e| SyncError::Precheck(format!("source {}: {e}", p.label)))?;
                let other: Vec<String> = info
                    .keyspace
                    .iter()
                    .filter(|(db, n)| *db != 0 && *n > 0)
                    .map(|(db, n)| format!("db{db}: {n} keys"))
                    .collect();
                if !other.is_empty() {
                    return Err(SyncError::Precheck(format!(
                        "source {} holds keys outside db 0 ({}), and a sharded target has one db: choose \
                         with --db 0 (sync db 0 only) or --map-db N:{tdb} (write db N there too); nothing \
                         was written",
                        p.label,
                        other.join(", ")
                    )));
                }
            }
            p.dbs.keep = Some([0].into_iter().collect());
        }
        let keep: Vec<u32> = match &p.dbs.keep {
            Some(k) => k.iter().copied().collect(),
            None => {
                let mut k: Vec<u32> = p.dbs.map.keys().copied().collect();
                k.push(0);
                k.sort_unstable();
                k.dedup();
                p.dbs.keep = Some(k.iter().copied().collect());
                k
            }
        };
        for db in keep {
            if db == tdb && !p.dbs.map.contains_key(&db) {
                continue;
            }
            match p.dbs.map.get(&db) {
                Some(t) if *t == tdb => {}
                None if tdb == 0 && db == 0 => {}
                _ => {
                    if db == 0 && tdb != 0 {
                        p.dbs.map.insert(0, tdb);
                        continue;
                    }
                    return Err(SyncError::Config(format!(
                        "source {}: db {db} would be written to db {} of a sharded target that has only db \
                         {tdb}: map it with --map-db {db}:{tdb}, or leave it out with --db",
                        p.label,
                        p.dbs.target(db).unwrap_or(db)
                    )));
                }
            }
        }
    }
    Ok(())
}
