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

use crate::endpoint::{RedisAddr, SourceSpec, TargetSpec};
pub use crate::job::ReplicationOptions;
use crate::job::{PlannedSource, SyncConfig, SyncError};
use crate::rdb::{Decoder, Magic};
use crate::repl::{LinkConfig, LinkShared};
use crate::spool::{Record, SpoolConfig};
use crate::status::{JobPhase, SourceKind, SourceState, Status};
use crate::target::client::Client;
use feed::{Piece, StreamBatcher, StreamFilter};
use merge::{MasterStats, MergeConfig, Merger, Msg, Outcome, SourceIn};

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
    // Master mode's own checks first: a target that cannot load the sources' values is refused before the
    // common checks would suggest re-encoding them.
    let format = precheck_master(&plan, &target).await?;
    // The common checks (reachability, credentials, PSYNC, an empty target unless overwrite, memory, backlog).
    let mut copts = crate::precheck::CheckOptions::for_sync(&cfg);
    copts.target_checkpoint = None;
    copts.rate_sample = Duration::from_millis(250);
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
    tracing::info!(target_addr = %target, replication_port = %announce,
        "the target replicates from ferry now (REPLICAOF); it gets one merged full sync, then every source's \
         commands");
    let admin = Arc::new(admin);
    status.set_phase(JobPhase::Running);
    let stats = Arc::new(MasterStats::default());
    let mut restarts = 0u32;
    let result = loop {
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
             the next run starts with a new merged full sync"),
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

/// One merged full sync and its stream, until the end or a restart.
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
) -> Result<Outcome, String> {
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
            ..LinkConfig::new(addr.clone())
        };
        let link_cancel = links_cancel.child_token();
        links.push(tokio::spawn(crate::repl::run(
            link_cfg,
            shared.clone(),
            writer,
            link_cancel.clone(),
        )));
        let skip_key = cfg
            .heartbeat
            .as_ref()
            .map(|(_, k)| bytes::Bytes::from(k.clone()));
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
            skip_key,
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
            pending: Default::default(),
            held: None,
        });
    }
    let merger = Merger::new(
        inputs,
        MergeConfig {
            replid: random_hex(40),
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

struct FeedCtx {
    label: String,
    addr: RedisAddr,
    dbs: crate::apply::DbMap,
    shared_target: bool,
    skip_key: Option<bytes::Bytes>,
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
            Record::FullResync { replid, offset } => {
                full_syncs += 1;
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
                ctx.status.full_sync_started(&replid, offset, None);
                ctx.status.set_state(SourceState::FullSync);
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
                    match feed::rdb_piece(
                        ev,
                        &ctx.dbs,
                        &mut big_db,
                        ctx.skip_key.as_deref(),
                        now_ms,
                    ) {
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
                    let o = crate::source::master::master_offset(&ctx.shared.master(&ctx.addr))
                        .await
                        .map_err(|e| {
                            format!("{}: reading the master's offset for --once: {e}", ctx.label)
                        })?;
                    ctx.status.set_master_offset(o);
                    once_target = Some(o.max(fullresync_offset));
                }
                ctx.send(
                    &tx,
                    Piece::RdbEnd {
                        offset: fullresync_offset,
                    },
                )
                .await?;
                ctx.status.set_state(SourceState::Streaming);
                stream = Some(StreamBatcher::new(
                    StreamFilter::new(
                        ctx.dbs.clone(),
                        ctx.shared_target,
                        ctx.skip_key.clone(),
                        ctx.label.clone(),
                    ),
                    fullresync_offset,
                ));
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
            Record::Continue { .. } => ctx.status.set_state(SourceState::Streaming),
            Record::LinkDown { reason } => ctx.status.link_down(reason),
        }
    }
}
