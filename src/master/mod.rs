//! Master mode (`ferry sync --apply replication`): ferry is a replica of every source and the **master of
//! the target**. The target loads one merged RDB the way a replica loads its master's snapshot (natively:
//! no command per key), then applies one merged command stream; its `REPLCONF ACK`s, mapped back to each
//! source's offset, are what ferry acknowledges to the sources.
//!
//! - `feed`: one source's records → RDB pieces and command batches (what the target gets, per command).
//! - `merge`: the one writer of the target's replication connection (merged RDB, merged stream, offset
//!   map, backlog, reconnects).
//! - `replica`: the target's handshake and ACKs.
//!
//! This module runs the job: prechecks, the listener, `CONFIG SET masterauth` + `REPLICAOF` on the target,
//! one link + spool + feed per source, the merger; a new merged full sync when exactness needs one; and at
//! the end (`--once`, or a stop) `REPLICAOF NO ONE` with the target's own `masterauth` restored. See
//! `docs/master-mode.md`.

pub mod feed;
pub mod merge;
pub mod replica;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::apply::stream::{StoredCheckpoint, TargetCheckpoint};
use crate::endpoint::{RedisAddr, SourceSpec, TargetSpec};
pub use crate::job::ReplicationOptions;
use crate::job::{PlannedSource, SyncConfig, SyncError};
use crate::rdb::{Decoder, Magic};
use crate::repl::{LinkConfig, LinkShared};
use crate::spool::{Record, SpoolConfig};
use crate::status::{JobPhase, SourceKind, SourceState, Status};
use crate::target::client::Client;
use feed::{Piece, StreamBatcher, StreamFilter};
use merge::{
    Checkpoints, MasterStats, MergeConfig, Merger, Msg, Outcome, Resume, SourceIn, SourcePos,
};

/// What a master-mode job did.
#[derive(Clone, Copy, Debug, Default)]
pub struct MasterReport {
    /// Keys in the (last) merged RDB.
    pub keys: u64,
    /// Snapshot keys not sent because they had expired.
    pub keys_expired_skipped: u64,
}

/// Default of `--replication-backlog-bytes`.
pub const DEFAULT_BACKLOG_BYTES: usize = 16 << 20;
/// Bytes a source may have on their way to the merger (decoded, not yet written).
const SOURCE_BUDGET: usize = 4 << 20;

/// `n` random hex characters (replication ids, the EOF mark, the target's one-time `masterauth`).
pub fn random_hex(n: usize) -> String {
    use std::io::Read;
    let mut raw = vec![0u8; n.div_ceil(2)];
    let from_os = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut raw));
    if from_os.is_err() {
        // No /dev/urandom: a hash of the time and process (ids only need to differ between runs).
        use sha1::{Digest, Sha1};
        for (i, chunk) in raw.chunks_mut(20).enumerate() {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let h = Sha1::digest(format!("{t}:{}:{i}", std::process::id()));
            chunk.copy_from_slice(&h[..chunk.len()]);
        }
    }
    let mut s: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    s.truncate(n);
    s
}

fn precheck_err(msg: impl Into<String>) -> SyncError {
    SyncError::Precheck(format!(
        "precheck failed; nothing was written:\nERROR {}",
        msg.into()
    ))
}

/// The configuration master mode can run, or why not.
fn validate(cfg: &SyncConfig, plan: &[PlannedSource]) -> Result<RedisAddr, SyncError> {
    let [TargetSpec::Redis(target)] = &cfg.targets[..] else {
        return Err(SyncError::Config(
            "--apply replication needs exactly one redis:// target: ferry is that server's master, and a \
             cluster node cannot replicate from a non-cluster master (use --apply commands for cluster, \
             twemproxy or several targets)"
                .into(),
        ));
    };
    for p in plan {
        match &p.spec {
            SourceSpec::Redis(_) => {}
            SourceSpec::RdbFile(_) | SourceSpec::Cluster(_) | SourceSpec::Twemproxy { .. } => {
                return Err(SyncError::Config(format!(
                    "--apply replication takes redis:// and twemproxy: sources; {} is not one (use --apply \
                     commands)",
                    p.label
                )))
            }
        }
    }
    Ok(target.clone())
}

/// The target, as master mode drives it.
struct TargetAdmin {
    addr: RedisAddr,
    /// Where the target reaches ferry (`REPLICAOF host port`).
    announce: SocketAddr,
    password: String,
    /// The target's own `masterauth`, `masteruser`, `repl-diskless-load` before ferry changed them (restored
    /// at the end).
    saved: Vec<(String, String)>,
}

impl TargetAdmin {
    async fn client(&self) -> Result<Client, String> {
        Client::connect_with_timeout(&self.addr, Duration::from_secs(5))
            .await
            .map_err(|e| e.to_string())
    }

    /// Point the target at ferry: its `masterauth` becomes ferry's one-time password, then `REPLICAOF`.
    async fn attach(&mut self) -> Result<(), String> {
        let mut c = self.client().await?;
        self.saved.clear();
        for p in ["masterauth", "masteruser", "repl-diskless-load"] {
            if let Ok(r) = c.cmd_ok(&[b"CONFIG", b"GET", p.as_bytes()]).await {
                let v = match &r {
                    crate::resp::Reply::Array(Some(a)) => a.get(1).and_then(|v| v.as_bytes()),
                    _ => None,
                };
                if let Some(v) = v {
                    self.saved
                        .push((p.to_string(), String::from_utf8_lossy(v).into_owned()));
                }
            }
        }
        c.cmd_ok(&[b"CONFIG", b"SET", b"masterauth", self.password.as_bytes()])
            .await
            .map_err(|e| format!("CONFIG SET masterauth: {e}"))?;
        if self.saved.iter().any(|(k, _)| k == "repl-diskless-load") {
            // An empty target loads the merged RDB from the socket as it arrives, instead of writing it to
            // disk and loading it afterwards (a non-empty one, `--on-conflict overwrite`, still does).
            c.cmd_ok(&[b"CONFIG", b"SET", b"repl-diskless-load", b"on-empty-db"])
                .await
                .map_err(|e| format!("CONFIG SET repl-diskless-load: {e}"))?;
        }
        if self.saved.iter().any(|(k, _)| k == "masteruser") {
            c.cmd_ok(&[b"CONFIG", b"SET", b"masteruser", b""])
                .await
                .map_err(|e| format!("CONFIG SET masteruser: {e}"))?;
        }
        self.replicaof(&mut c).await
    }

    async fn replicaof(&self, c: &mut Client) -> Result<(), String> {
        let host = self.announce.ip().to_string();
        let port = self.announce.port().to_string();
        c.cmd_ok(&[b"REPLICAOF", host.as_bytes(), port.as_bytes()])
            .await
            .map(|_| ())
            .map_err(|e| format!("REPLICAOF {host} {port}: {e}"))
    }

    /// `REPLICAOF NO ONE` and the target's own `masterauth`/`masteruser` back.
    async fn detach(&self) -> Result<(), String> {
        let mut c = self.client().await?;
        c.cmd_ok(&[b"REPLICAOF", b"NO", b"ONE"])
            .await
            .map_err(|e| format!("REPLICAOF NO ONE: {e}"))?;
        for (k, v) in &self.saved {
            c.cmd_ok(&[b"CONFIG", b"SET", k.as_bytes(), v.as_bytes()])
                .await
                .map_err(|e| format!("CONFIG SET {k}: {e}"))?;
        }
        Ok(())
    }
}

impl merge::Reattach for TargetAdmin {
    fn reattach(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<bool, String>> + Send + '_>>
    {
        Box::pin(async move {
            let mut c = self.client().await?;
            let info = c
                .cmd_ok(&[b"INFO", b"replication"])
                .await
                .map_err(|e| e.to_string())?;
            let text = info.as_bytes().unwrap_or_default();
            let role = crate::info::field(text, "role").unwrap_or_default();
            let host = crate::info::field(text, "master_host").unwrap_or_default();
            let port = crate::info::field(text, "master_port").unwrap_or_default();
            if role == "slave"
                && host == self.announce.ip().to_string()
                && port == self.announce.port().to_string()
            {
                return Ok(false);
            }
            c.cmd_ok(&[b"CONFIG", b"SET", b"masterauth", self.password.as_bytes()])
                .await
                .map_err(|e| e.to_string())?;
            self.replicaof(&mut c).await?;
            Ok(true)
        })
    }
}

/// Where to listen: `--replication-listen`, or port 0 on the local address of a connection to the target
/// (the address the target can reach ferry at, when they are on one network).
async fn listen_addr(
    opts: &ReplicationOptions,
    target: &RedisAddr,
) -> Result<SocketAddr, SyncError> {
    if let Some(a) = opts.listen {
        return Ok(a);
    }
    let s = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(target.host_port()),
    )
    .await
    .map_err(|_| precheck_err(format!("target {}: connect timed out", target.host_port())))?
    .map_err(|e| precheck_err(format!("target {}: {e}", target.host_port())))?;
    let local = s
        .local_addr()
        .map_err(|e| precheck_err(format!("target {}: {e}", target.host_port())))?;
    Ok(SocketAddr::new(local.ip(), 0))
}

/// Master mode's own checks, after the common ones: a standalone target whose RDB format every source's
/// values load into.
async fn precheck_master(
    plan: &[PlannedSource],
    target: &RedisAddr,
) -> Result<(Magic, u16), SyncError> {
    let mut c = Client::connect_with_timeout(target, Duration::from_secs(5))
        .await
        .map_err(|e| precheck_err(e.to_string()))?;
    let info = c
        .cmd_ok(&[b"INFO"])
        .await
        .map_err(|e| precheck_err(e.to_string()))?;
    let t = crate::target::ServerInfo::parse(&String::from_utf8_lossy(
        info.as_bytes().unwrap_or_default(),
    ));
    if t.cluster {
        return Err(precheck_err(format!(
            "target {}: a cluster node (cluster_enabled:1) cannot replicate from ferry, which is not a cluster \
             node; use --apply commands",
            target.host_port()
        )));
    }
    if t.rdb_version < 7 {
        return Err(precheck_err(format!(
            "target {}: {} is older than Redis 3.2; master mode needs RDB 7 (AUX fields); use --apply commands",
            target.host_port(),
            t.version_string()
        )));
    }
    for p in plan {
        let SourceSpec::Redis(addr) = &p.spec else {
            continue;
        };
        let mut s = Client::connect_with_timeout(addr, Duration::from_secs(5))
            .await
            .map_err(|e| precheck_err(format!("{}: {e}", p.label)))?;
        let i = s
            .cmd_ok(&[b"INFO", b"server"])
            .await
            .map_err(|e| precheck_err(format!("{}: {e}", p.label)))?;
        let si = crate::target::ServerInfo::parse(&String::from_utf8_lossy(
            i.as_bytes().unwrap_or_default(),
        ));
        if !crate::target::restore_compatible(si.rdb_version, t.rdb_version) {
            return Err(precheck_err(format!(
                "{} ({}) writes RDB version {}, which the target {} ({}, RDB {}) cannot load: master mode forwards \
                 values as the source wrote them; use --apply commands, which re-encodes them",
                p.label,
                si.version_string(),
                si.rdb_version,
                target.host_port(),
                t.version_string(),
                t.rdb_version
            )));
        }
        // In a merged stream one write round is one transaction: a command the target does not know
        // aborts the whole round (EXECABORT), silently on a replica. A target older than a source may not
        // know the source's newer commands (a 6.2 source's LMOVE on a 6.0 target, both RDB 9).
        // By major.minor: patch releases add no commands (and every Valkey reports Redis 7.2.4).
        let minor = |v: (u32, u32, u32)| (v.0, v.1);
        let older = minor(t.redis_version) < minor(si.redis_version)
            || matches!((si.valkey_version, t.valkey_version), (Some(s), Some(d)) if minor(d) < minor(s));
        if older {
            return Err(precheck_err(format!(
                "{} ({}) is newer than the target {} ({}): its commands may be unknown to the target, which \
                 as a replica would drop them without a word; master mode needs a target at least as new as \
                 every source; use --apply commands",
                p.label,
                si.version_string(),
                target.host_port(),
                t.version_string()
            )));
        }
    }
    Ok(if t.rdb_version >= 80 {
        (Magic::Valkey, t.rdb_version)
    } else {
        (Magic::Redis, t.rdb_version)
    })
}

/// Run a master-mode job to its end (`--once`, a stop, or a failure). The target ends as a master again
/// (`REPLICAOF NO ONE`) whatever the ending.
pub async fn run(
    cfg: SyncConfig,
    opts: ReplicationOptions,
    cancel: CancellationToken,
    status: Arc<Status>,
) -> Result<MasterReport, SyncError> {
    status.set_phase(JobPhase::Precheck);
    let plan =
        crate::job::expand_sources_with(&cfg.sources, cfg.pool_auth.as_ref(), &cfg.dbs).await?;
    let target = validate(&cfg, &plan)?;
    let checkpoints = checkpoints_of(&cfg, &plan);
    let job = job_of(&plan, &checkpoints);
    let mut resumed = find_resume(&cfg, &target, &checkpoints, &job).await;
    // Master mode's own checks first: a target that cannot load the sources' values is refused before the
    // common checks would suggest re-encoding them.
    let format = precheck_master(&plan, &target).await?;
    // The common checks (reachability, credentials, PSYNC, an empty target unless overwrite, memory, backlog).
    let mut copts = crate::precheck::CheckOptions::for_sync(&cfg);
    copts.target_checkpoint = None;
    copts.rate_sample = Duration::from_millis(250);
    if let Some(r) = &resumed {
        // The target holds the copy a previous run left (its checkpoint keys name this job's sources), and
        // may still replicate from that run.
        copts.target_checkpoint = cfg.target_checkpoint.clone();
        copts.replica_of_ferry = r.was_replica;
    }
    let report = crate::precheck::run_checks(&plan, &target, &copts).await;
    report.log_and_refuse()?;
    let bind = listen_addr(&opts, &target).await?;
    let listener = TcpListener::bind(bind)
        .await
        .map_err(|e| SyncError::Config(format!("--replication-listen {bind}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| SyncError::Config(e.to_string()))?;
    // A wildcard bind is announced as the address the target is reached from.
    let announce = if let Some(a) = opts.announce {
        a
    } else if local.ip().is_unspecified() {
        let via = listen_addr(&ReplicationOptions::default(), &target).await?;
        SocketAddr::new(via.ip(), local.port())
    } else {
        local
    };
    let listener = Arc::new(listener);
    let mut admin = TargetAdmin {
        addr: target.clone(),
        announce,
        password: random_hex(40),
        saved: Vec::new(),
    };
    admin
        .attach()
        .await
        .map_err(|e| precheck_err(format!("target {}: {e}", target.host_port())))?;
    if resumed.is_some() {
        tracing::info!(target_addr = %target, replication_port = %announce,
            "the target replicates from ferry again (REPLICAOF); it continues where the previous run left it");
    } else {
        tracing::info!(target_addr = %target, replication_port = %announce,
            "the target replicates from ferry now (REPLICAOF); it gets one merged full sync, then every \
             source's commands");
    }
    let admin = Arc::new(admin);
    status.set_phase(JobPhase::Running);
    let stats = Arc::new(MasterStats::default());
    let mut restarts = 0u32;
    let result = loop {
        let resume = resumed.take();
        let replid = match &resume {
            Some(r) => r.replid.clone(),
            None => {
                // A new merged full sync: its replication id is on disk before the target can see it.
                let replid = random_hex(40);
                if let Err(e) = store_state(&cfg.state_dir, &target, &replid, &job) {
                    break Err(e);
                }
                replid
            }
        };
        let r = run_once(
            &cfg,
            &opts,
            &plan,
            format,
            listener.clone(),
            announce,
            admin.clone(),
            stats.clone(),
            &cancel,
            &status,
            Run {
                replid,
                checkpoints: checkpoints.clone(),
                resume,
            },
        )
        .await;
        match r {
            Ok(Outcome::Restart(why)) if !cancel.is_cancelled() => {
                restarts += 1;
                tracing::warn!(reason = %why, restarts,
                    "a new merged full sync of every source into the target");
                // The target reconnects on its own (once a second); a pause lets the sources' links close.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(Outcome::Restart(_)) => break Ok(Outcome::Stopped { complete: false }),
            other => break other,
        }
    };
    status.set_phase(JobPhase::Draining);
    let detached = admin.detach().await;
    let report = MasterReport {
        keys: stats.keys.load(Ordering::Relaxed),
        keys_expired_skipped: stats.expired_skipped.load(Ordering::Relaxed),
    };
    match (&result, &detached) {
        (_, Err(e)) => tracing::error!(error = %e,
            "the target could not be made a master again: run REPLICAOF NO ONE on it"),
        (Ok(Outcome::Finished), Ok(())) => tracing::info!(target_addr = %target,
            "every source is applied; the target is a master again (REPLICAOF NO ONE), holding exactly the \
             sources' data"),
        (Ok(Outcome::Stopped { complete: true }), Ok(())) => tracing::info!(target_addr = %target,
            acked = stats.acked.load(Ordering::Relaxed),
            "stopped: the target holds every source's data up to what it acknowledged and is a master again; \
             the next run continues from there unless something writes to the target meanwhile"),
        (_, Ok(())) => tracing::warn!(target_addr = %target,
            "stopped before the merged full sync completed: the target is a master again and holds what it had \
             before (a replica keeps its data until the new snapshot is whole)"),
    }
    match result {
        Ok(_) => {
            status.set_phase(JobPhase::Done);
            detached.map_err(SyncError::Runtime)?;
            Ok(report)
        }
        Err(m) => {
            status.set_phase(JobPhase::Failed);
            Err(SyncError::Runtime(m))
        }
    }
}

/// What a run starts from.
struct Run {
    /// ferry's replication id for the target.
    replid: String,
    checkpoints: Checkpoints,
    /// Continue a previous run (no merged full sync).
    resume: Option<Resumed>,
}

/// One merged full sync (or a resumed stream) and its stream, until the end or a restart.
#[allow(clippy::too_many_arguments)]
async fn run_once(
    cfg: &SyncConfig,
    opts: &ReplicationOptions,
    plan: &[PlannedSource],
    format: (Magic, u16),
    listener: Arc<TcpListener>,
    announce: SocketAddr,
    admin: Arc<TargetAdmin>,
    stats: Arc<MasterStats>,
    cancel: &CancellationToken,
    status: &Arc<Status>,
    run: Run,
) -> Result<Outcome, String> {
    let skip = Arc::new(feed::Skip {
        heartbeat: cfg
            .heartbeat
            .as_ref()
            .map(|(_, k)| bytes::Bytes::from(k.clone())),
        own_db: run.checkpoints.db,
        own: run.checkpoints.keys.to_vec(),
    });
    let mut positions = run
        .resume
        .as_ref()
        .map(|r| r.positions.clone())
        .unwrap_or_default()
        .into_iter();
    // Not a child of `cancel`: on a stop the feeds keep feeding and the links keep acknowledging while the
    // merger drains; all of it stops once the merger is done.
    let run_cancel = CancellationToken::new();
    let _guard = run_cancel.clone().drop_guard();
    // The links stop first (their last ACK out), then the feeds: a link never finds its spool's reader gone.
    let links_cancel = CancellationToken::new();
    let _links_guard = links_cancel.clone().drop_guard();
    let mut tasks = tokio::task::JoinSet::new();
    let mut links = Vec::new();
    let mut inputs = Vec::new();
    let shared_target = plan.len() > 1;
    for p in plan {
        let SourceSpec::Redis(addr) = &p.spec else {
            continue;
        };
        let id = crate::checkpoint::source_id(&p.label);
        let resume_at: Option<StoredCheckpoint> = positions.next();
        let spool_cfg = SpoolConfig::new(&cfg.state_dir, &format!("spool-master-{id}"))
            .with_limits(cfg.spool_mem_bytes, cfg.spool_disk_bytes);
        let disk_limit = spool_cfg.disk_limit_bytes;
        let (writer, reader) =
            crate::spool::open(spool_cfg).map_err(|e| format!("{}: spool: {e}", p.label))?;
        let kind = match &p.pool {
            Some(pool) => SourceKind::TwemproxyMember { pool: pool.clone() },
            None => SourceKind::for_spec(&p.spec),
        };
        let st = status.add_source(&p.spec, kind);
        st.set_spool(writer.stats(), disk_limit);
        st.set_state(SourceState::Connecting);
        let shared = LinkShared::new();
        {
            let link = shared.clone();
            st.read_received_from(move || link.received.load(Ordering::Acquire));
        }
        let link_cfg = LinkConfig {
            name: format!("source {addr}"),
            listening_port: announce.port(),
            resume: resume_at.as_ref().map(|cp| (cp.replid.clone(), cp.offset)),
            ..LinkConfig::new(addr.clone())
        };
        let link_cancel = links_cancel.child_token();
        links.push(tokio::spawn(crate::repl::run(
            link_cfg,
            shared.clone(),
            writer,
            link_cancel.clone(),
        )));
        if let Some((every, key)) = cfg.heartbeat.clone() {
            tokio::spawn(crate::source::master::heartbeat(
                addr.clone(),
                shared.clone(),
                every,
                key,
                link_cancel.clone(),
            ));
        }
        let (tx, rx) = mpsc::channel::<Msg>(256);
        let ctx = FeedCtx {
            label: p.label.clone(),
            addr: addr.clone(),
            dbs: p.dbs.clone(),
            shared_target,
            skip: skip.clone(),
            resume: resume_at.clone(),
            decoder: crate::rdb::DecoderOptions {
                raw_big: true,
                ..cfg.decoder.clone()
            },
            once: cfg.once,
            shared: shared.clone(),
            status: st.clone(),
            stats: stats.clone(),
            budget: Arc::new(Semaphore::new(SOURCE_BUDGET)),
        };
        let feed_cancel = run_cancel.clone();
        tasks.spawn(async move {
            let label = ctx.label.clone();
            let mut reader = reader;
            let r = run_feed(ctx, &mut reader, tx.clone(), feed_cancel.clone()).await;
            if let Err(e) = r.as_ref().map_err(|e| e.as_str()) {
                if e == MERGER_GONE {
                    // The run is ending: keep taking the link's records until it stopped (a link whose
                    // spool has no reader fails).
                    loop {
                        tokio::select! {
                            _ = feed_cancel.cancelled() => return Ok(()),
                            r = reader.next() => if !matches!(r, Ok(Some(_))) {
                                return Ok(());
                            },
                        }
                    }
                }
                tracing::error!(source = %label, error = %e, "source failed");
                let _ = tx.send((vec![Piece::Fatal(e.to_string())], None)).await;
            }
            r
        });
        inputs.push(SourceIn {
            label: p.label.clone(),
            rx,
            shared,
            status: st,
            pos: resume_at
                .map(|cp| SourcePos {
                    replid: cp.replid,
                    offset: cp.offset,
                    db: cp.db,
                })
                .unwrap_or_default(),
            pending: Default::default(),
            held: None,
        });
    }
    let merger = Merger::new(
        inputs,
        MergeConfig {
            replid: run.replid,
            password: admin.password.clone(),
            target_format: format,
            backlog_bytes: if opts.backlog_bytes == 0 {
                DEFAULT_BACKLOG_BYTES
            } else {
                opts.backlog_bytes
            },
            first_connect_timeout: Duration::from_secs(15),
            once: cfg.once,
            listen_shown: announce.to_string(),
            checkpoints: run.checkpoints,
            resume: run.resume.map(|r| r.resume),
        },
        listener,
        admin,
        stats,
    );
    let outcome = merger.run(cancel).await;
    // The links acknowledge the last applied offsets at once, then everything of this run stops.
    links_cancel.cancel();
    // The links are gone before a next run opens spools of the same names.
    for l in links {
        let _ = tokio::time::timeout(Duration::from_secs(5), l).await;
    }
    run_cancel.cancel();
    while tasks.join_next().await.is_some() {}
    outcome
}

/// The in-target checkpoint keys of the job's sources, in the order the merger sees them (none with
/// `--no-target-checkpoint`: then a restart means a new merged full sync). The names are the command
/// path's, so `ferry verify` and the precheck know them.
fn checkpoints_of(cfg: &SyncConfig, plan: &[PlannedSource]) -> Checkpoints {
    let Some((db, prefix)) = &cfg.target_checkpoint else {
        return Checkpoints::default();
    };
    Checkpoints {
        db: *db,
        keys: Arc::new(
            plan.iter()
                .filter_map(|p| match &p.spec {
                    SourceSpec::Redis(addr) => Some(bytes::Bytes::from(format!(
                        "{prefix}{}",
                        crate::checkpoint::source_id(&addr.to_string())
                    ))),
                    _ => None,
                })
                .collect(),
        ),
    }
}

/// What the previous master-mode run into a target left in the state directory: the replication id it
/// served the target with.
#[derive(serde::Serialize, serde::Deserialize)]
struct MasterState {
    format: u32,
    target: String,
    replid: String,
    /// What the job copies where ([`job_of`]): a run of another job does not continue this one's copy.
    #[serde(default)]
    job: String,
}

/// The job's sources, their db selection and mapping, and the checkpoint keys, as one string.
fn job_of(plan: &[PlannedSource], ck: &Checkpoints) -> String {
    let mut parts: Vec<String> = plan
        .iter()
        .map(|p| format!("{} [{}]", p.label, p.dbs.describe()))
        .collect();
    parts.sort();
    let keys: Vec<String> = ck
        .keys
        .iter()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    format!(
        "{}; checkpoints db {}: {}",
        parts.join(", "),
        ck.db,
        keys.join(",")
    )
}

fn state_path(state_dir: &std::path::Path, target: &RedisAddr) -> std::path::PathBuf {
    state_dir.join(format!(
        "master-{}.json",
        crate::checkpoint::source_id(&target.to_string())
    ))
}

/// Record `replid` as the one this target is served with (atomic: temp file, sync, rename).
fn store_state(
    state_dir: &std::path::Path,
    target: &RedisAddr,
    replid: &str,
    job: &str,
) -> Result<(), String> {
    use std::io::Write;
    let path = state_path(state_dir, target);
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(state_dir)?;
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(&MasterState {
            format: 1,
            target: target.to_string(),
            replid: replid.to_string(),
            job: job.to_string(),
        })?;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        if let Ok(d) = std::fs::File::open(state_dir) {
            let _ = d.sync_all();
        }
        Ok(())
    };
    write().map_err(|e| format!("writing {}: {e}", path.display()))
}

/// A previous run this one continues.
struct Resumed {
    replid: String,
    resume: Resume,
    /// Each source's checkpoint, in merger order.
    positions: Vec<StoredCheckpoint>,
    /// The target still replicates from the previous run (it was killed); otherwise a stop made it a
    /// master, and nothing was written to it since.
    was_replica: bool,
}

/// Whether the target holds exactly the copy the previous run into it left: its replication id is the one
/// on disk (a replica of the killed run), or it became a master at that run's stop and took no write since
/// (`master_replid2` is ferry's, and its offset is where that history ended), and every source's checkpoint
/// key is there. Anything else is a new merged full sync (logged with the reason).
async fn find_resume(
    cfg: &SyncConfig,
    target: &RedisAddr,
    ck: &Checkpoints,
    job: &str,
) -> Option<Resumed> {
    if ck.keys.is_empty() {
        return None;
    }
    let path = state_path(&cfg.state_dir, target);
    let state: MasterState = match std::fs::read(&path) {
        Ok(b) => match serde_json::from_slice(&b) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e,
                    "the previous master-mode run's state is unreadable: a new merged full sync");
                return None;
            }
        },
        Err(_) => return None,
    };
    let no = |why: String| {
        tracing::info!(reason = %why, "not continuing the previous master-mode run: a new merged full sync");
        None
    };
    if state.job != job {
        return no(format!(
            "the previous run copied another job ({}); this one is {job}",
            state.job
        ));
    }
    let mut c = match Client::connect_with_timeout(target, Duration::from_secs(5)).await {
        Ok(c) => c,
        Err(e) => return no(format!("the target: {e}")),
    };
    let info = match c.cmd_ok(&[b"INFO", b"replication"]).await {
        Ok(r) => r.as_bytes().unwrap_or_default().to_vec(),
        Err(e) => return no(format!("INFO replication: {e}")),
    };
    let field = |k: &str| crate::info::field(&info, k).unwrap_or_default();
    let num = |k: &str| field(k).parse::<i64>().unwrap_or(-1);
    let (role, replid, replid2) = (
        field("role"),
        field("master_replid"),
        field("master_replid2"),
    );
    let offset = num("master_repl_offset");
    let (accept, was_replica) = if role == "slave" && replid == state.replid {
        (vec![state.replid.clone()], true)
    } else if role == "master" && replid2 == state.replid && num("second_repl_offset") == offset + 1
    {
        (vec![state.replid.clone(), replid.to_string()], false)
    } else {
        return no(format!(
            "the target's replication (role {role}, id {replid} at {offset}, previous id {replid2}) is not the \
             copy the previous run left (id {}), or something wrote to it since",
            state.replid
        ));
    };
    if ck.db != 0 {
        if let Err(e) = c.cmd_ok(&[b"SELECT", ck.db.to_string().as_bytes()]).await {
            return no(format!("SELECT {}: {e}", ck.db));
        }
    }
    let mut positions = Vec::with_capacity(ck.keys.len());
    for key in ck.keys.iter() {
        let v = match c.cmd_ok(&[b"GET", key]).await {
            Ok(v) => v,
            Err(e) => return no(format!("GET {}: {e}", String::from_utf8_lossy(key))),
        };
        match v.as_bytes().and_then(TargetCheckpoint::parse) {
            Some(cp) => positions.push(cp),
            None => {
                return no(format!(
                    "the target has no checkpoint {} (a source added since?)",
                    String::from_utf8_lossy(key)
                ))
            }
        }
    }
    tracing::info!(target_addr = %target, offset, sources = positions.len(),
        "continuing the previous master-mode run: the target holds its copy; each source continues with a \
         partial resync from its checkpoint in the target, the target with +CONTINUE");
    Some(Resumed {
        replid: state.replid,
        resume: Resume { accept, offset },
        positions,
        was_replica,
    })
}

struct FeedCtx {
    label: String,
    addr: RedisAddr,
    dbs: crate::apply::DbMap,
    shared_target: bool,
    skip: Arc<feed::Skip>,
    /// Where this source's stream continues (a resumed run): no snapshot comes, and a full resync of the
    /// source means a new merged full sync.
    resume: Option<StoredCheckpoint>,
    decoder: crate::rdb::DecoderOptions,
    once: bool,
    shared: Arc<LinkShared>,
    status: Arc<crate::status::SourceStatus>,
    stats: Arc<MasterStats>,
    budget: Arc<Semaphore>,
}

impl FeedCtx {
    /// Hand the merger `pieces` (in order), waiting for room in the source's byte budget.
    async fn send_all(&self, tx: &mpsc::Sender<Msg>, pieces: Vec<Piece>) -> Result<(), String> {
        if pieces.is_empty() {
            return Ok(());
        }
        let size: usize = pieces.iter().map(Piece::size).sum();
        let want = size.clamp(1, SOURCE_BUDGET) as u32;
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(want)
            .await
            .map_err(|e| e.to_string())?;
        tx.send((pieces, Some(permit)))
            .await
            .map_err(|_| MERGER_GONE.to_string())
    }

    /// The batcher of this source's stream from master offset `offset`, in source db `db`.
    fn stream_at(&self, offset: i64, db: u32) -> StreamBatcher {
        let filter = StreamFilter::new(
            self.dbs.clone(),
            self.shared_target,
            self.skip.clone(),
            self.label.clone(),
        );
        StreamBatcher::new(filter.in_db(db), offset)
    }

    /// `--once`: the master offset this source's stream must reach (read now, and never below `from`).
    async fn once_goal(&self, from: i64) -> Result<i64, String> {
        let o = crate::source::master::master_offset(&self.shared.master(&self.addr))
            .await
            .map_err(|e| {
                format!(
                    "{}: reading the master's offset for --once: {e}",
                    self.label
                )
            })?;
        self.status.set_master_offset(o);
        Ok(o.max(from))
    }

    async fn send(&self, tx: &mpsc::Sender<Msg>, p: Piece) -> Result<(), String> {
        self.send_all(tx, vec![p]).await
    }
}

/// A feed's send after the merger ended (the run is over: not a failure of the source).
const MERGER_GONE: &str = "the merger stopped";

/// Pieces gathered before they go to the merger together (one channel message, one budget wait).
const BATCH_BYTES: usize = 256 << 10;
const BATCH_PIECES: usize = 1024;

/// One source: its spool's records → pieces for the merger, until its `--once` goal, a stop, or an error.
async fn run_feed(
    ctx: FeedCtx,
    reader: &mut crate::spool::SpoolReader,
    tx: mpsc::Sender<Msg>,
    cancel: CancellationToken,
) -> Result<(), String> {
    let mut decoder: Option<Decoder> = None;
    let mut buf = BytesMut::new();
    let mut big_db: Option<u32> = None;
    let mut stream: Option<StreamBatcher> = None;
    let mut full_syncs = 0u32;
    let mut fullresync_offset = -1i64;
    let mut ended = false;
    let mut framer = feed::Framer::default();
    let mut once_target: Option<i64> = None;
    let mut replid = String::new();
    if let Some(cp) = &ctx.resume {
        replid = cp.replid.clone();
        stream = Some(ctx.stream_at(cp.offset, cp.db));
        ctx.status.set_state(SourceState::Streaming);
        if ctx.once {
            let t = ctx.once_goal(cp.offset).await?;
            once_target = Some(t);
            if t <= cp.offset {
                ctx.send(&tx, Piece::Done).await?;
                ended = true;
            }
        }
    }
    loop {
        let rec = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = reader.next() => r.map_err(|e| format!("{}: spool: {e}", ctx.label))?,
        };
        let Some(rec) = rec else { return Ok(()) };
        if ended {
            // Done, or a restart asked for: the link keeps running (and acknowledging) until the run ends.
            continue;
        }
        match rec {
            Record::FullResync {
                replid: new_replid,
                offset,
            } => {
                full_syncs += 1;
                if ctx.resume.is_some() {
                    ctx.send(&tx, Piece::Restart(format!(
                        "{}: the source answered ferry's partial resync with a full resync (its backlog no \
                         longer held the checkpoint's offset): a new merged full sync",
                        ctx.label
                    )))
                    .await?;
                    ended = true;
                    continue;
                }
                if full_syncs > 1 {
                    ctx.send(&tx, Piece::Restart(format!(
                        "{}: the source answered a reconnect with a full resync (its backlog no longer held \
                         ferry's offset): its keys on the target are replaced with a new merged full sync",
                        ctx.label
                    )))
                    .await?;
                    ended = true;
                    continue;
                }
                ctx.status.full_sync_started(&new_replid, offset, None);
                ctx.status.set_state(SourceState::FullSync);
                replid = new_replid;
                fullresync_offset = offset;
                decoder = Some(Decoder::new(ctx.decoder.clone()));
            }
            Record::Rdb(bytes) => {
                let Some(d) = decoder.as_mut() else {
                    return Err(format!("{}: RDB bytes before FULLRESYNC", ctx.label));
                };
                ctx.status.add_rdb_received(bytes.len() as u64);
                buf.extend_from_slice(&bytes);
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                let mut batch = Vec::new();
                let mut batch_bytes = 0;
                let mut keys = 0;
                while buf.len() >= d.needed() {
                    let ev = match d.decode(&mut buf) {
                        Ok(Some(ev)) => ev,
                        Ok(None) => break,
                        Err(e) => return Err(format!("{}: snapshot: {e}", ctx.label)),
                    };
                    match feed::rdb_piece(ev, &ctx.dbs, &mut big_db, &ctx.skip, now_ms) {
                        None => {}
                        Some(Err(feed::Skipped::Expired)) => {
                            ctx.stats.expired_skipped.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(Ok(Piece::Entry { db, entry })) => {
                            keys += 1;
                            framer.entry(db, &entry);
                            if framer.len() >= feed::FRAME_BYTES {
                                batch_bytes += framer.len();
                                batch.extend(framer.take());
                            }
                        }
                        Some(Ok(p)) => {
                            if matches!(p, Piece::BigEnd) {
                                keys += 1;
                            }
                            // Pieces stay in file order: the keys framed so far go first.
                            batch_bytes += framer.len();
                            batch.extend(framer.take());
                            batch_bytes += p.size();
                            batch.push(p);
                        }
                    }
                    if batch_bytes >= BATCH_BYTES || batch.len() >= BATCH_PIECES {
                        batch_bytes = 0;
                        ctx.send_all(&tx, std::mem::take(&mut batch)).await?;
                    }
                }
                // Framed keys wait for more (a piece is one allocation of FRAME_BYTES: a piece per
                // network read would hold far more memory than its bytes).
                ctx.status.add_keys_loaded(keys);
                ctx.send_all(&tx, batch).await?;
            }
            Record::RdbEnd => {
                if let Some(p) = framer.take() {
                    ctx.send(&tx, p).await?;
                }
                let Some(d) = decoder.take() else {
                    return Err(format!("{}: RDB end before FULLRESYNC", ctx.label));
                };
                d.finish()
                    .map_err(|e| format!("{}: snapshot: {e}", ctx.label))?;
                if ctx.once {
                    once_target = Some(ctx.once_goal(fullresync_offset).await?);
                }
                ctx.send(
                    &tx,
                    Piece::RdbEnd {
                        offset: fullresync_offset,
                        replid: replid.clone(),
                    },
                )
                .await?;
                ctx.status.set_state(SourceState::Streaming);
                stream = Some(ctx.stream_at(fullresync_offset, 0));
                if once_target.is_some_and(|t| t <= fullresync_offset) {
                    ctx.send(&tx, Piece::Done).await?;
                    ended = true;
                }
            }
            Record::Stream(bytes) => {
                let Some(s) = stream.as_mut() else {
                    return Err(format!(
                        "{}: stream bytes before the snapshot ended",
                        ctx.label
                    ));
                };
                let pieces = s.push(&bytes)?;
                if s.getack {
                    s.getack = false;
                    ctx.shared.ack_now.notify_one();
                }
                ended |= pieces
                    .iter()
                    .any(|p| matches!(p, Piece::Restart(_) | Piece::Fatal(_)));
                ctx.send_all(&tx, pieces).await?;
                if let Some(t) = once_target {
                    if !ended && s.offset >= t && !s.mid_command() {
                        ctx.send(&tx, Piece::Done).await?;
                        ended = true;
                    }
                }
            }
            Record::Continue {
                replid: new_replid, ..
            } => {
                ctx.status.set_state(SourceState::Streaming);
                if !new_replid.is_empty() && new_replid != replid {
                    replid = new_replid;
                    ctx.send(&tx, Piece::Replid(replid.clone())).await?;
                }
            }
            Record::LinkDown { reason } => ctx.status.link_down(reason),
        }
    }
}
