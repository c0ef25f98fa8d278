//! The `GET /status` document: every figure of the registry read at one moment.
//!
//! Field names are a contract (documented in `docs/status.md`); unknown numbers are `-1`, unknown texts
//! `null`. Offsets are master replication offsets as Redis counts them.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::{unix_ms, SourceStatus, Status, TargetStatus, SCHEMA_VERSION};
use crate::target::latency::LatencySummary;

/// The whole status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusSnapshot {
    /// Layout version of this document ([`SCHEMA_VERSION`]).
    pub schema_version: u32,
    /// The ferry build serving it.
    pub ferry_version: String,
    pub job: JobSnapshot,
    pub sources: Vec<SourceSnapshot>,
    pub targets: Vec<TargetSnapshot>,
    /// The apply stage's counters (all sources), when registered.
    pub apply: Option<ApplySnapshot>,
    /// `ferry proxy`: its phase, clients, operations and backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobSnapshot {
    /// `starting`, `precheck`, `running`, `draining`, `settling`, `done` or `failed`.
    pub phase: String,
    /// Times the job continued on a new slot layout of a cluster target (a resharding, a failover).
    #[serde(default)]
    pub layout_restarts: u64,
    pub started_at_unix_ms: u64,
    pub uptime_seconds: f64,
    /// What `/healthz` answers: the job runs and no source failed.
    pub healthy: bool,
    /// Why it is not healthy (empty when healthy).
    pub problems: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceSnapshot {
    /// The source as given (`redis://[user@]host:port`, `rdb:PATH`); never a password.
    pub name: String,
    /// `master`, `rdb` or `twemproxy_member`.
    pub kind: String,
    /// The twemproxy pool of a `twemproxy_member`.
    pub pool: Option<String>,
    /// `connecting`, `full_sync`, `streaming`, `link_down`, `done` or `failed`.
    pub state: String,
    pub state_since_unix_ms: u64,
    pub last_error: Option<String>,
    pub last_error_at_unix_ms: Option<u64>,
    /// The master's replication id.
    pub replid: Option<String>,
    /// Master offset of the last byte received.
    pub received_offset: i64,
    /// Master offset applied on the target (what `REPLCONF ACK` reports).
    pub applied_offset: i64,
    /// The master's own `master_repl_offset`, when known.
    pub master_offset: i64,
    /// `received_offset - applied_offset`.
    pub lag_bytes: i64,
    /// How long ago the oldest received byte not yet applied arrived (0 when caught up).
    pub lag_ms: i64,
    /// End-to-end lag measured with the heartbeat key, when `--heartbeat` is on.
    pub heartbeat_lag_ms: i64,
    /// The current (or last) full sync.
    pub rdb: RdbSnapshot,
    pub full_syncs: u64,
    pub partial_syncs: u64,
    pub reconnects: u64,
    pub spool: Option<SpoolSnapshot>,
    pub checkpoint: Option<CheckpointSnapshot>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RdbSnapshot {
    pub bytes_received: u64,
    pub bytes_applied: u64,
    /// The RDB's size; -1 when unknown (diskless transfer).
    pub bytes_total: i64,
    pub keys_loaded: u64,
    /// When the full sync started; -1 never.
    pub started_at_unix_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpoolSnapshot {
    pub mem_bytes: u64,
    pub disk_bytes: u64,
    pub disk_limit_bytes: u64,
    /// Bytes that ever went to the disk part of the spool.
    pub spilled_bytes_total: u64,
    pub mem_high_water_bytes: u64,
    pub disk_high_water_bytes: u64,
    /// Times the link waited because the disk limit was reached.
    pub disk_full_waits: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointSnapshot {
    pub offset: i64,
    pub written_at_unix_ms: u64,
}

/// Redirections a cluster node's writer followed (see `target::redirect`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RedirectSnapshot {
    /// Writes sent to the importing node after `ASK` (a slot being migrated).
    pub ask: u64,
    /// Writes sent to the slot's new master after `MOVED` (a slot moved by a resharding).
    pub moved: u64,
    /// Transactions written again after `TRYAGAIN`, `CLUSTERDOWN` or `LOADING`.
    pub retries: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetSnapshot {
    /// `redis://[user@]host:port`; never a password.
    pub address: String,
    pub connections: u64,
    /// Writes sent (a MULTI…EXEC group counts its commands).
    pub writes_sent: u64,
    /// Writes answered: `writes_ok + writes_rejected`.
    pub writes_acknowledged: u64,
    pub writes_ok: u64,
    pub writes_rejected: u64,
    pub bytes_written: u64,
    /// Bytes written or queued and not yet answered.
    pub inflight_bytes: u64,
    pub reconnects: u64,
    /// Writes sent again after a reconnect.
    pub resent: u64,
    /// Transactions whose reply was lost but whose in-target checkpoint showed they were applied (so they
    /// were not sent again).
    pub commits_confirmed: u64,
    /// Transactions the target discarded (EXECABORT) and that were written again without the commands it
    /// refused (those are counted as rejected writes).
    pub transactions_retried: u64,
    /// A node of a cluster target: writes that followed a redirection to another node, or were written
    /// again after `TRYAGAIN`/`CLUSTERDOWN`/`LOADING`.
    pub redirects: RedirectSnapshot,
    /// A node of a cluster or twemproxy target: multi-key commands whose keys span slots (servers), cut
    /// into per-slot commands, by command.
    pub split_commands: BTreeMap<String, u64>,
    /// A node of a cluster or twemproxy target: source transactions whose keys span slots, applied as one
    /// transaction per slot (counted by the node that takes the first slot's keys).
    pub split_transactions: u64,
    /// Rejected writes by error kind (`OOM`, `BUSYKEY`, `WRONGTYPE`, `SCRIPT`, `ERR`, …).
    pub rejected_by_kind: BTreeMap<String, u64>,
    /// Rejected writes by command name.
    pub rejected_by_command: BTreeMap<String, u64>,
    /// Write round trips since start, in microseconds.
    pub latency: LatencySummary,
    /// Write round trips of the last one to two minutes (the current and the previous window).
    pub latency_recent: LatencySummary,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApplySnapshot {
    pub keys_applied: u64,
    pub keys_expired_skipped: u64,
    pub keys_restored: u64,
    pub keys_reencoded: u64,
    pub big_keys: u64,
    pub functions: u64,
}

impl StatusSnapshot {
    /// Pretty JSON (the `/status` body).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| {
            serde_json::json!({ "error": format!("status cannot be rendered: {e}") }).to_string()
        })
    }
}

fn ms_opt(ms: u64) -> Option<u64> {
    (ms > 0).then_some(ms)
}

pub(super) fn take(status: &Status) -> StatusSnapshot {
    let problems = status.health().err().unwrap_or_default();
    let apply = super::lock(&status.apply).as_ref().map(|a| {
        let l = |x: &std::sync::atomic::AtomicU64| x.load(Ordering::Relaxed);
        ApplySnapshot {
            keys_applied: l(&a.keys_applied),
            keys_expired_skipped: l(&a.keys_expired_skipped),
            keys_restored: l(&a.keys_restored),
            keys_reencoded: l(&a.keys_reencoded),
            big_keys: l(&a.big_keys),
            functions: l(&a.functions),
        }
    });
    StatusSnapshot {
        schema_version: SCHEMA_VERSION,
        ferry_version: env!("CARGO_PKG_VERSION").to_string(),
        job: JobSnapshot {
            phase: status.phase().as_str().to_string(),
            layout_restarts: status.layout_restarts(),
            started_at_unix_ms: unix_ms(status.started_at),
            uptime_seconds: status.uptime().as_secs_f64(),
            healthy: problems.is_empty(),
            problems,
        },
        sources: status.sources().iter().map(|s| source(s)).collect(),
        targets: status.targets().iter().map(|t| target(t)).collect(),
        apply,
        proxy: status.control().map(|c| c.describe()),
    }
}

fn source(s: &SourceStatus) -> SourceSnapshot {
    let (received, applied, keys, total) = s.rdb_progress();
    let last_error = s.last_error();
    let spool = super::lock(&s.spool).as_ref().map(|(st, limit)| {
        let st = st.snapshot();
        SpoolSnapshot {
            mem_bytes: st.mem_bytes,
            disk_bytes: st.disk_bytes,
            disk_limit_bytes: *limit,
            spilled_bytes_total: st.spilled_bytes_total,
            mem_high_water_bytes: st.mem_high_water,
            disk_high_water_bytes: st.disk_high_water,
            disk_full_waits: st.disk_full_waits,
        }
    });
    let checkpoint =
        ms_opt(s.checkpoint_at_ms.load(Ordering::Relaxed)).map(|at| CheckpointSnapshot {
            offset: s.checkpoint_offset.load(Ordering::Relaxed),
            written_at_unix_ms: at,
        });
    let full_sync_started = s.full_sync_started_ms.load(Ordering::Relaxed);
    SourceSnapshot {
        name: s.name.clone(),
        kind: s.kind.as_str().to_string(),
        pool: s.kind.pool().map(str::to_string),
        state: s.state().as_str().to_string(),
        state_since_unix_ms: s.state_since_ms.load(Ordering::Relaxed),
        last_error_at_unix_ms: last_error.as_ref().map(|(_, t)| unix_ms(*t)),
        last_error: last_error.map(|(e, _)| e),
        replid: s.replid(),
        received_offset: s.received_offset(),
        applied_offset: s.applied_offset(),
        master_offset: s.master_offset.load(Ordering::Relaxed),
        lag_bytes: s
            .lag_bytes()
            .map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX)),
        lag_ms: s
            .lag_time()
            .map_or(-1, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        heartbeat_lag_ms: s.heartbeat_lag_ms.load(Ordering::Relaxed),
        rdb: RdbSnapshot {
            bytes_received: received,
            bytes_applied: applied,
            bytes_total: total,
            keys_loaded: keys,
            started_at_unix_ms: ms_opt(full_sync_started)
                .map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX)),
        },
        full_syncs: s.full_syncs.load(Ordering::Relaxed),
        partial_syncs: s.partial_syncs.load(Ordering::Relaxed),
        reconnects: s.reconnects.load(Ordering::Relaxed),
        spool,
        checkpoint,
    }
}

fn target(t: &TargetStatus) -> TargetSnapshot {
    let st = &t.stats;
    let ok = st.commands_ok.load(Ordering::Relaxed);
    let rejected = st.failed();
    TargetSnapshot {
        address: t.address.clone(),
        connections: t.connections.load(Ordering::Relaxed),
        writes_sent: t.writes_sent.load(Ordering::Relaxed),
        writes_acknowledged: ok.saturating_add(rejected),
        writes_ok: ok,
        writes_rejected: rejected,
        bytes_written: st.bytes_written.load(Ordering::Relaxed),
        inflight_bytes: u64::try_from(t.inflight_bytes.load(Ordering::Relaxed)).unwrap_or(0),
        reconnects: st.reconnects.load(Ordering::Relaxed),
        resent: st.resent.load(Ordering::Relaxed),
        commits_confirmed: st.commits_confirmed.load(Ordering::Relaxed),
        transactions_retried: st.transactions_retried.load(Ordering::Relaxed),
        redirects: RedirectSnapshot {
            ask: st.redirected_ask.load(Ordering::Relaxed),
            moved: st.redirected_moved.load(Ordering::Relaxed),
            retries: st.redirect_retries.load(Ordering::Relaxed),
        },
        split_commands: st.split_commands(),
        split_transactions: st.split_transactions.load(Ordering::Relaxed),
        rejected_by_kind: t.rejected_by_kind(),
        rejected_by_command: st.rejected_by_command(),
        latency: t.latency.summary(),
        latency_recent: t.latency.recent(),
    }
}
