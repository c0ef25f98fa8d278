//! status: what the job is doing, for operators. It observes; it never sits on the data path.
//!
//! - [`Status`] is the registry, shared as `Arc<Status>`: the job phase, one [`SourceStatus`] per source and
//!   one [`TargetStatus`] per target. Every figure written on a hot path is an atomic; a `Mutex` guards only
//!   rare fields (replid, last error, rejected writes by kind, registration). Existing counters —
//!   [`TargetStats`], [`SpoolStats`](crate::spool::SpoolStats), [`ApplyStats`] — are registered by `Arc`
//!   and read when status is rendered, never copied.
//! - [`Status::snapshot`] gives a [`StatusSnapshot`]: the `GET /status` JSON (field names are a contract,
//!   see `docs/status.md`); [`prometheus::render`] gives the `GET /metrics` text.
//! - [`serve`] runs the HTTP endpoint (`/status`, `/metrics`, `/healthz`).
//! - [`progress::FullSyncProgress`] draws a progress bar per full sync on a terminal (log lines otherwise);
//!   [`report::spawn_reporter`] logs a periodic summary line per source and target.
//!
//! Names of sources and targets come from the endpoints' `Display`, which never shows a password.

mod http;
mod lag;
pub mod progress;
pub mod prometheus;
pub mod report;
pub mod snapshot;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::apply::ApplyStats;
use crate::spool::SpoolStats;
use crate::target::stats::TargetStats;

pub use self::http::{fetch_snapshot, post, serve, StatusError};
pub use self::progress::{FullSyncProgress, ProgressOutput};
pub use self::report::spawn_reporter;
pub use self::snapshot::StatusSnapshot;
pub use crate::target::latency::LatencyRecorder;

use self::lag::LagSamples;

/// Version of the `/status` JSON layout. Raised only when a field changes meaning or is removed; new fields
/// may be added without raising it.
pub const SCHEMA_VERSION: u32 = 1;

/// Distinct rejected-write kinds kept per target; further kinds are counted as `OTHER` (bounded label
/// cardinality).
const MAX_REJECTION_KINDS: usize = 32;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn now_unix_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// Where the whole job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobPhase {
    /// Parsing, expanding sources, connecting.
    Starting,
    /// Checking sources and targets before any write.
    Precheck,
    /// Sources are syncing.
    Running,
    /// Stop requested: draining, acknowledging, checkpointing.
    Draining,
    /// A cluster target's slot layout changed: every source stopped cleanly; waiting until the cluster
    /// settles, then the job continues on the new layout from every slot's checkpoint.
    Settling,
    /// Finished (`--once`, `rdb:` sources, or stopped by a signal and drained).
    Done,
    /// The job failed.
    Failed,
}

impl JobPhase {
    pub const ALL: [JobPhase; 7] = [
        JobPhase::Starting,
        JobPhase::Precheck,
        JobPhase::Running,
        JobPhase::Draining,
        JobPhase::Settling,
        JobPhase::Done,
        JobPhase::Failed,
    ];

    /// The name used in JSON and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            JobPhase::Starting => "starting",
            JobPhase::Precheck => "precheck",
            JobPhase::Running => "running",
            JobPhase::Draining => "draining",
            JobPhase::Settling => "settling",
            JobPhase::Done => "done",
            JobPhase::Failed => "failed",
        }
    }

    fn from_u8(v: u8) -> JobPhase {
        Self::ALL
            .get(usize::from(v))
            .copied()
            .unwrap_or(JobPhase::Failed)
    }

    fn to_u8(self) -> u8 {
        Self::ALL.iter().position(|p| *p == self).unwrap_or(0) as u8
    }
}

/// What a source is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// A `redis://` master (or a replica serving PSYNC).
    Master,
    /// An `rdb:` file.
    Rdb,
    /// A server of a twemproxy pool, synced as a master.
    TwemproxyMember {
        /// The pool's name in the nutcracker config.
        pool: String,
    },
}

impl SourceKind {
    /// The name used in JSON and in metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            SourceKind::Master => "master",
            SourceKind::Rdb => "rdb",
            SourceKind::TwemproxyMember { .. } => "twemproxy_member",
        }
    }

    /// The kind of a source given on the command line (a `twemproxy:` spec names the kind of its servers).
    pub fn for_spec(spec: &crate::endpoint::SourceSpec) -> SourceKind {
        use crate::endpoint::SourceSpec;
        match spec {
            SourceSpec::Redis(_) | SourceSpec::Cluster(_) => SourceKind::Master,
            SourceSpec::RdbFile(_) => SourceKind::Rdb,
            SourceSpec::Twemproxy { pool, .. } => SourceKind::TwemproxyMember {
                pool: pool.clone().unwrap_or_default(),
            },
        }
    }

    fn pool(&self) -> Option<&str> {
        match self {
            SourceKind::TwemproxyMember { pool } => Some(pool),
            _ => None,
        }
    }
}

/// Where one source is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceState {
    /// Connecting, handshake, PSYNC (also after a reconnect).
    Connecting,
    /// Receiving and applying the RDB snapshot (an `rdb:` file being loaded too).
    FullSync,
    /// Applying the replication stream.
    Streaming,
    /// The link broke; a reconnect follows.
    LinkDown,
    /// Finished (`--once` reached, an `rdb:` file loaded, or stopped and drained).
    Done,
    /// Gave up; `last_error` says why.
    Failed,
}

impl SourceState {
    pub const ALL: [SourceState; 6] = [
        SourceState::Connecting,
        SourceState::FullSync,
        SourceState::Streaming,
        SourceState::LinkDown,
        SourceState::Done,
        SourceState::Failed,
    ];

    /// The name used in JSON and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceState::Connecting => "connecting",
            SourceState::FullSync => "full_sync",
            SourceState::Streaming => "streaming",
            SourceState::LinkDown => "link_down",
            SourceState::Done => "done",
            SourceState::Failed => "failed",
        }
    }

    fn from_u8(v: u8) -> SourceState {
        Self::ALL
            .get(usize::from(v))
            .copied()
            .unwrap_or(SourceState::Failed)
    }

    fn to_u8(self) -> u8 {
        Self::ALL.iter().position(|p| *p == self).unwrap_or(0) as u8
    }
}

/// The job's status registry. Create one per job, share it as `Arc<Status>`.
#[derive(Debug)]
pub struct Status {
    epoch: Instant,
    started_at: SystemTime,
    phase: AtomicU8,
    sources: RwLock<Vec<Arc<SourceStatus>>>,
    targets: RwLock<Vec<Arc<TargetStatus>>>,
    apply: Mutex<Option<Arc<ApplyStats>>>,
    /// Times the job continued on a new slot layout of a cluster target.
    layout_restarts: AtomicU64,
    /// What a process around the job offers through the endpoint (`ferry proxy`: `POST /cutover`, and
    /// its own section of `/status`).
    control: std::sync::OnceLock<Arc<dyn Control>>,
}

/// Actions and figures of the process that runs the job, served by the status endpoint.
pub trait Control: Send + Sync + std::fmt::Debug {
    /// `POST /cutover`: (HTTP status code, JSON body).
    fn cutover(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = (u16, String)> + Send + '_>>;
    /// Its section of `/status` (`"proxy"`).
    fn describe(&self) -> serde_json::Value;
}

impl Default for Status {
    fn default() -> Self {
        Status::new()
    }
}

impl Status {
    /// A registry for a job starting now, in phase [`JobPhase::Starting`].
    pub fn new() -> Status {
        Status {
            epoch: Instant::now(),
            started_at: SystemTime::now(),
            phase: AtomicU8::new(JobPhase::Starting.to_u8()),
            sources: RwLock::new(Vec::new()),
            targets: RwLock::new(Vec::new()),
            apply: Mutex::new(None),
            layout_restarts: AtomicU64::new(0),
            control: std::sync::OnceLock::new(),
        }
    }

    /// Offer `control`'s actions and figures through the endpoint (once).
    pub fn set_control(&self, control: Arc<dyn Control>) {
        let _ = self.control.set(control);
    }

    pub fn control(&self) -> Option<&Arc<dyn Control>> {
        self.control.get()
    }

    /// The job continues on a new slot layout: its sources, targets (the nodes may differ) and apply
    /// counters are registered again by the next run; the phase, the start time and the restart count
    /// carry on.
    pub fn new_layout(&self) {
        self.layout_restarts.fetch_add(1, Ordering::Relaxed);
        self.sources
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.targets
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        *lock(&self.apply) = None;
    }

    /// Times the job continued on a new slot layout (see [`Status::new_layout`]).
    pub fn layout_restarts(&self) -> u64 {
        self.layout_restarts.load(Ordering::Relaxed)
    }

    pub fn set_phase(&self, phase: JobPhase) {
        self.phase.store(phase.to_u8(), Ordering::Relaxed);
    }

    pub fn phase(&self) -> JobPhase {
        JobPhase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    /// Time since the registry was created.
    pub fn uptime(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Register a source. `name` is shown as is in JSON, metrics and logs: pass the endpoint
    /// (`RedisAddr`/`SourceSpec` `Display` never shows a password). Registering a name twice returns the
    /// first registration (names are unique within a job).
    pub fn add_source(&self, name: impl fmt::Display, kind: SourceKind) -> Arc<SourceStatus> {
        let name = name.to_string();
        let mut sources = self.sources.write().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = sources.iter().find(|s| s.name == name) {
            return s.clone();
        }
        let s = Arc::new(SourceStatus::new(name, kind, self.epoch));
        sources.push(s.clone());
        s
    }

    /// Register a target with the writer pool's counters. `addr` as for [`Status::add_source`]. Registering
    /// an address twice returns the first registration.
    pub fn add_target(
        &self,
        addr: impl fmt::Display,
        stats: Arc<TargetStats>,
    ) -> Arc<TargetStatus> {
        let address = addr.to_string();
        let mut targets = self.targets.write().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = targets.iter().find(|t| t.address == address) {
            return t.clone();
        }
        let t = Arc::new(TargetStatus::new(address, stats));
        targets.push(t.clone());
        t
    }

    /// Register the apply stage's counters (job-wide).
    pub fn set_apply_stats(&self, stats: Arc<ApplyStats>) {
        *lock(&self.apply) = Some(stats);
    }

    pub fn sources(&self) -> Vec<Arc<SourceStatus>> {
        self.sources
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn targets(&self) -> Vec<Arc<TargetStatus>> {
        self.targets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// `Ok` while the job runs (not done, not failed) and no source failed; otherwise the reasons.
    pub fn health(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        match self.phase() {
            JobPhase::Done => problems.push("job finished".to_string()),
            JobPhase::Failed => problems.push("job failed".to_string()),
            _ => {}
        }
        for s in self.sources() {
            if s.state() == SourceState::Failed {
                let err = s.last_error().map(|(e, _)| e).unwrap_or_default();
                problems.push(format!("source {} failed: {err}", s.name));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// Everything, read now. This is the `GET /status` document.
    pub fn snapshot(&self) -> StatusSnapshot {
        snapshot::take(self)
    }
}

/// An offset read from elsewhere when asked (see [`SourceStatus::read_received_from`]).
struct LiveOffset(Box<dyn Fn() -> i64 + Send + Sync>);

impl std::fmt::Debug for LiveOffset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LiveOffset({})", (self.0)())
    }
}

/// One source's figures. Obtained from [`Status::add_source`]; every setter is cheap (atomics) unless noted.
#[derive(Debug)]
pub struct SourceStatus {
    name: String,
    kind: SourceKind,
    epoch: Instant,
    state: AtomicU8,
    replid: Mutex<Option<String>>,
    last_error: Mutex<Option<(String, SystemTime)>>,
    received_offset: AtomicI64,
    received_live: RwLock<Option<LiveOffset>>,
    applied_own: Arc<AtomicI64>,
    applied_linked: OnceLock<Arc<AtomicI64>>,
    master_offset: AtomicI64,
    heartbeat_lag_ms: AtomicI64,
    rdb_bytes_received: AtomicU64,
    rdb_bytes_applied: AtomicU64,
    rdb_bytes_total: AtomicI64,
    rdb_keys_loaded: AtomicU64,
    full_syncs: AtomicU64,
    partial_syncs: AtomicU64,
    reconnects: AtomicU64,
    /// Unix ms when the current state was entered.
    state_since_ms: AtomicU64,
    /// Unix ms when the current (or last) full sync started; 0 never.
    full_sync_started_ms: AtomicU64,
    spool: Mutex<Option<(Arc<SpoolStats>, u64)>>,
    checkpoint_offset: AtomicI64,
    checkpoint_at_ms: AtomicU64,
    lag: LagSamples,
}

impl SourceStatus {
    fn new(name: String, kind: SourceKind, epoch: Instant) -> SourceStatus {
        SourceStatus {
            name,
            kind,
            epoch,
            state: AtomicU8::new(SourceState::Connecting.to_u8()),
            replid: Mutex::new(None),
            last_error: Mutex::new(None),
            received_offset: AtomicI64::new(-1),
            received_live: RwLock::new(None),
            applied_own: Arc::new(AtomicI64::new(-1)),
            applied_linked: OnceLock::new(),
            master_offset: AtomicI64::new(-1),
            heartbeat_lag_ms: AtomicI64::new(-1),
            rdb_bytes_received: AtomicU64::new(0),
            rdb_bytes_applied: AtomicU64::new(0),
            rdb_bytes_total: AtomicI64::new(-1),
            rdb_keys_loaded: AtomicU64::new(0),
            full_syncs: AtomicU64::new(0),
            partial_syncs: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            state_since_ms: AtomicU64::new(now_unix_ms()),
            full_sync_started_ms: AtomicU64::new(0),
            spool: Mutex::new(None),
            checkpoint_offset: AtomicI64::new(-1),
            checkpoint_at_ms: AtomicU64::new(0),
            lag: LagSamples::default(),
        }
    }

    /// The name given at registration (no password).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> &SourceKind {
        &self.kind
    }

    pub fn state(&self) -> SourceState {
        SourceState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Enter `state`. For `Failed` and `LinkDown` prefer [`SourceStatus::failed`] / [`SourceStatus::link_down`],
    /// which keep the reason.
    pub fn set_state(&self, state: SourceState) {
        let old = self.state.swap(state.to_u8(), Ordering::Relaxed);
        if old != state.to_u8() {
            self.state_since_ms.store(now_unix_ms(), Ordering::Relaxed);
        }
    }

    /// The link broke (state `link_down`); `reason` is kept as the last error. Call
    /// [`SourceStatus::reconnecting`] when the next attempt starts.
    pub fn link_down(&self, reason: impl fmt::Display) {
        self.set_error(reason);
        self.set_state(SourceState::LinkDown);
    }

    /// A reconnect attempt starts: counts a reconnect, state `connecting`.
    pub fn reconnecting(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
        self.set_state(SourceState::Connecting);
    }

    /// The source gave up: state `failed`, `err` kept as the last error (make it say what to do).
    pub fn failed(&self, err: impl fmt::Display) {
        self.set_error(err);
        self.set_state(SourceState::Failed);
    }

    /// The source finished its job: state `done`.
    pub fn done(&self) {
        self.set_state(SourceState::Done);
    }

    /// Keep `err` as the last error without changing the state (e.g. a retried handshake failure).
    pub fn set_error(&self, err: impl fmt::Display) {
        *lock(&self.last_error) = Some((err.to_string(), SystemTime::now()));
    }

    /// The last error and when it happened.
    pub fn last_error(&self) -> Option<(String, SystemTime)> {
        lock(&self.last_error).clone()
    }

    /// `+FULLRESYNC replid offset` (or an `rdb:` file starts loading, with `replid` empty and `offset` -1):
    /// counts a full sync, state `full_sync`, the RDB figures restart from zero, the received offset is
    /// `offset`. The applied offset shows as unknown while the state is `full_sync`. `rdb_total` is the
    /// RDB's size when known (`$len` transfer or a file), `None` for a diskless `$EOF:` transfer; it may also
    /// be given later with [`SourceStatus::set_rdb_total`].
    pub fn full_sync_started(&self, replid: &str, offset: i64, rdb_total: Option<u64>) {
        self.full_syncs.fetch_add(1, Ordering::Relaxed);
        self.set_replid(replid);
        self.rdb_bytes_received.store(0, Ordering::Relaxed);
        self.rdb_bytes_applied.store(0, Ordering::Relaxed);
        self.rdb_keys_loaded.store(0, Ordering::Relaxed);
        self.set_rdb_total(rdb_total);
        self.full_sync_started_ms
            .store(now_unix_ms(), Ordering::Relaxed);
        self.received_offset.store(offset, Ordering::Relaxed);
        self.lag.clear();
        self.set_state(SourceState::FullSync);
    }

    /// `+CONTINUE [replid]`: counts a partial sync, state `streaming`; the stream continues after `offset`.
    pub fn partial_sync_started(&self, replid: &str, offset: i64) {
        self.partial_syncs.fetch_add(1, Ordering::Relaxed);
        self.set_replid(replid);
        self.set_received_offset(offset);
        self.set_state(SourceState::Streaming);
    }

    /// The master's replication id (empty: unknown).
    pub fn set_replid(&self, replid: &str) {
        *lock(&self.replid) = (!replid.is_empty()).then(|| replid.to_string());
    }

    pub fn replid(&self) -> Option<String> {
        lock(&self.replid).clone()
    }

    /// The RDB's size in bytes, `None` when unknown (diskless transfer).
    pub fn set_rdb_total(&self, total: Option<u64>) {
        let v = total.and_then(|t| i64::try_from(t).ok()).unwrap_or(-1);
        self.rdb_bytes_total.store(v, Ordering::Relaxed);
    }

    /// RDB bytes arrived from the master (or read from the file).
    pub fn add_rdb_received(&self, n: u64) {
        self.rdb_bytes_received.fetch_add(n, Ordering::Relaxed);
    }

    /// RDB bytes decoded and handed to the applier.
    pub fn add_rdb_applied(&self, n: u64) {
        self.rdb_bytes_applied.fetch_add(n, Ordering::Relaxed);
    }

    /// Keys of the snapshot loaded (written, or skipped because expired).
    pub fn add_keys_loaded(&self, n: u64) {
        self.rdb_keys_loaded.fetch_add(n, Ordering::Relaxed);
    }

    /// Master offset of the last byte received on the link. Cheap: an atomic store, plus a short lock at
    /// most a few times a second to keep the samples that turn byte lag into time lag.
    pub fn set_received_offset(&self, offset: i64) {
        self.received_offset.store(offset, Ordering::Relaxed);
        let applied = self.applied_offset();
        self.lag.observe(self.epoch.elapsed(), offset, applied);
    }

    pub fn received_offset(&self) -> i64 {
        match &*self.received_live.read().unwrap_or_else(|p| p.into_inner()) {
            Some(live) => (live.0)(),
            None => self.received_offset.load(Ordering::Relaxed),
        }
    }

    /// Read the received offset live from the link (`read`) rather than as last stored by
    /// [`SourceStatus::set_received_offset`], so that status and a replica's `INFO` show what arrived a moment
    /// ago, not at the consumer's last tick. The stored value still feeds the lag samples. A new link (the
    /// source restarted) replaces the old one's reader.
    pub fn read_received_from(&self, read: impl Fn() -> i64 + Send + Sync + 'static) {
        *self
            .received_live
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(LiveOffset(Box::new(read)));
    }

    /// Master offset applied on the target (what `REPLCONF ACK` reports).
    pub fn set_applied_offset(&self, offset: i64) {
        self.applied_cell().store(offset, Ordering::Relaxed);
    }

    /// The applied offset; -1 when unknown, and while a full sync is under way (the offset of the data
    /// being replaced means nothing then).
    pub fn applied_offset(&self) -> i64 {
        if self.state() == SourceState::FullSync {
            return -1;
        }
        self.applied_cell().load(Ordering::Relaxed)
    }

    /// The atomic holding the applied offset, to hand to the writer pool (`Batch::applied`) so the pool
    /// stores into it directly: status then reads what the pool wrote, with no call on the data path.
    pub fn applied_offset_cell(&self) -> Arc<AtomicI64> {
        self.applied_linked
            .get()
            .cloned()
            .unwrap_or_else(|| self.applied_own.clone())
    }

    /// Read the applied offset from an atomic owned elsewhere (e.g. the stream applier's) instead of
    /// [`SourceStatus::applied_offset_cell`]'s. Status only reads it (never writes into it, except through
    /// [`SourceStatus::set_applied_offset`]). Can be set once; returns false if a cell was already set.
    pub fn use_applied_offset(&self, cell: Arc<AtomicI64>) -> bool {
        self.applied_linked.set(cell).is_ok()
    }

    fn applied_cell(&self) -> &AtomicI64 {
        self.applied_linked.get().unwrap_or(&self.applied_own)
    }

    /// The master's own replication offset (`master_repl_offset`), when known.
    pub fn set_master_offset(&self, offset: i64) {
        self.master_offset.store(offset, Ordering::Relaxed);
    }

    /// End-to-end lag measured with a heartbeat key (`--heartbeat`).
    pub fn set_heartbeat_lag(&self, lag: Duration) {
        let ms = i64::try_from(lag.as_millis()).unwrap_or(i64::MAX);
        self.heartbeat_lag_ms.store(ms, Ordering::Relaxed);
    }

    /// Received minus applied, when both are known.
    pub fn lag_bytes(&self) -> Option<u64> {
        let (r, a) = (self.received_offset(), self.applied_offset());
        (r >= 0 && a >= 0).then(|| r.saturating_sub(a).max(0) as u64)
    }

    /// How long ago the oldest byte not yet applied arrived (0 when caught up), when offsets are known.
    /// Precise to the sampling interval (well under a second while the backlog is short, coarser for a
    /// backlog of minutes).
    pub fn lag_time(&self) -> Option<Duration> {
        let (r, a) = (self.received_offset(), self.applied_offset());
        if r < 0 || a < 0 {
            return None;
        }
        if a >= r {
            return Some(Duration::ZERO);
        }
        self.lag.age_of_first_after(a, self.epoch.elapsed())
    }

    /// The spool between this source's link and its consumer, with its disk limit in bytes.
    pub fn set_spool(&self, stats: Arc<SpoolStats>, disk_limit_bytes: u64) {
        *lock(&self.spool) = Some((stats, disk_limit_bytes));
    }

    /// A checkpoint was written for `offset`.
    pub fn checkpoint_written(&self, offset: i64) {
        self.checkpoint_offset.store(offset, Ordering::Relaxed);
        self.checkpoint_at_ms
            .store(now_unix_ms(), Ordering::Relaxed);
    }

    /// RDB bytes received and applied, keys loaded, total (-1 unknown).
    pub fn rdb_progress(&self) -> (u64, u64, u64, i64) {
        (
            self.rdb_bytes_received.load(Ordering::Relaxed),
            self.rdb_bytes_applied.load(Ordering::Relaxed),
            self.rdb_keys_loaded.load(Ordering::Relaxed),
            self.rdb_bytes_total.load(Ordering::Relaxed),
        )
    }
}

/// One target's figures, around the writer pool's [`TargetStats`].
#[derive(Debug)]
pub struct TargetStatus {
    address: String,
    stats: Arc<TargetStats>,
    connections: AtomicU64,
    writes_sent: AtomicU64,
    inflight_bytes: AtomicI64,
    rejected_by_kind: Mutex<BTreeMap<String, u64>>,
    latency: Arc<LatencyRecorder>,
}

impl TargetStatus {
    fn new(address: String, stats: Arc<TargetStats>) -> TargetStatus {
        TargetStatus {
            address,
            stats,
            connections: AtomicU64::new(0),
            writes_sent: AtomicU64::new(0),
            inflight_bytes: AtomicI64::new(0),
            rejected_by_kind: Mutex::new(BTreeMap::new()),
            latency: Arc::new(LatencyRecorder::new()),
        }
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// The writer pool's counters given at registration.
    pub fn stats(&self) -> &Arc<TargetStats> {
        &self.stats
    }

    /// Connections currently open to the target.
    pub fn set_connections(&self, n: u64) {
        self.connections.store(n, Ordering::Relaxed);
    }

    /// `n` writes (commands; a MULTI…EXEC group counts its commands) were sent.
    pub fn add_sent(&self, n: u64) {
        self.writes_sent.fetch_add(n, Ordering::Relaxed);
    }

    /// Bytes now written or queued but not yet answered: add when a batch is queued...
    pub fn inflight_add(&self, bytes: u64) {
        self.inflight_bytes
            .fetch_add(i64::try_from(bytes).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    /// ...and subtract when its last reply arrived.
    pub fn inflight_sub(&self, bytes: u64) {
        self.inflight_bytes
            .fetch_sub(i64::try_from(bytes).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    /// Count a rejected write by its error kind (the first word of the error reply: `OOM`, `BUSYKEY`,
    /// `WRONGTYPE`…; script failures as `SCRIPT`), and by command in [`TargetStats`]. Returns what
    /// [`TargetStats::record_rejection`] returns: true the first time this (command, kind) pair is seen, so
    /// the caller logs it once. Call this instead of `TargetStats::record_rejection`, not in addition.
    pub fn record_rejection(&self, command: &str, error: &str) -> bool {
        self.count_rejection_kind(error);
        self.stats.record_rejection(command, error)
    }

    /// Count a rejected write by error kind only (when `TargetStats::record_rejection` was already called).
    pub fn count_rejection_kind(&self, error: &str) {
        let kind = error_kind(error);
        let mut m = lock(&self.rejected_by_kind);
        let kind = if m.contains_key(kind) || m.len() < MAX_REJECTION_KINDS {
            kind
        } else {
            "OTHER"
        };
        *m.entry(kind.to_string()).or_insert(0) += 1;
    }

    pub fn rejected_by_kind(&self) -> BTreeMap<String, u64> {
        lock(&self.rejected_by_kind).clone()
    }

    /// The write round-trip recorder, to hand to the writer pool's connections.
    pub fn latency(&self) -> Arc<LatencyRecorder> {
        self.latency.clone()
    }
}

/// The kind of an error reply: its first word when that is an upper-case code (`OOM`, `BUSYKEY`,
/// `WRONGTYPE`, `NOSCRIPT`, `READONLY`…), `SCRIPT` for a generic error raised by a script, `ERR` for other
/// generic errors, `OTHER` for anything else.
pub fn error_kind(error: &str) -> &str {
    let first = error.split_whitespace().next().unwrap_or("");
    let is_code = !first.is_empty()
        && first.len() <= 32
        && first
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !is_code {
        return "OTHER";
    }
    if first == "ERR" {
        let lower = error.to_ascii_lowercase();
        if lower.contains("script") || lower.contains("user_function") {
            return "SCRIPT";
        }
    }
    first
}

#[cfg(test)]
mod tests;
