//! Target-side counters. Written by the writer pool, read by status; never on a lock in the hot path except
//! when a write was rejected.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Counters for one target.
#[derive(Debug, Default)]
pub struct TargetStats {
    /// Commands the target accepted.
    pub commands_ok: AtomicU64,
    /// Commands the target rejected with an error reply.
    pub commands_failed: AtomicU64,
    /// Bytes written to the target.
    pub bytes_written: AtomicU64,
    /// Reconnects after a lost connection.
    pub reconnects: AtomicU64,
    /// Commands re-sent after a reconnect because their reply had not arrived.
    pub resent: AtomicU64,
    /// Transactions whose reply was lost but whose in-target marker showed they were applied (not re-sent).
    pub commits_confirmed: AtomicU64,
    /// Transactions the target discarded (EXECABORT) and that were written again without the commands it
    /// refused.
    pub transactions_retried: AtomicU64,
    /// Cluster target: writes sent to the importing node (`ASKING`) after an `ASK`.
    pub redirected_ask: AtomicU64,
    /// Cluster target: writes sent to the slot's new master after a `MOVED` (a resharding).
    pub redirected_moved: AtomicU64,
    /// Cluster target: transactions written again after `TRYAGAIN`, `CLUSTERDOWN` or `LOADING`.
    pub redirect_retries: AtomicU64,
    /// Sharded target: multi-key commands whose keys span slots (or servers), cut into per-slot commands,
    /// by command name.
    split_commands: Mutex<BTreeMap<String, u64>>,
    /// Sharded target: source transactions whose keys span slots, applied as one transaction per slot.
    pub split_transactions: AtomicU64,
    /// Rejected writes by command name, and the distinct error messages seen (for log-once).
    rejected: Mutex<Rejected>,
    /// Round-trip times of batches (written → last reply), when status is watching.
    pub latency: std::sync::OnceLock<std::sync::Arc<super::latency::LatencyRecorder>>,
}

#[derive(Debug, Default)]
struct Rejected {
    by_command: BTreeMap<String, u64>,
    /// (command, error prefix) pairs already logged.
    logged: std::collections::HashSet<(String, String)>,
}

impl TargetStats {
    /// Count a rejected write. Returns true the first time this (command, error kind) pair is seen, so the
    /// caller logs each distinct error once with its key (never the value).
    pub fn record_rejection(&self, command: &str, error: &str) -> bool {
        self.commands_failed.fetch_add(1, Ordering::Relaxed);
        let kind = error.split_whitespace().next().unwrap_or("").to_string();
        let mut r = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
        *r.by_command.entry(command.to_string()).or_insert(0) += 1;
        r.logged.insert((command.to_string(), kind))
    }

    /// Rejected writes per command name.
    pub fn rejected_by_command(&self) -> BTreeMap<String, u64> {
        self.rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_command
            .clone()
    }

    /// Count a multi-key command cut into per-slot commands.
    pub fn record_split(&self, command: &str) {
        *self
            .split_commands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(command.to_string())
            .or_default() += 1;
    }

    pub fn split_commands(&self) -> BTreeMap<String, u64> {
        self.split_commands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn failed(&self) -> u64 {
        self.commands_failed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_logs_once_per_kind() {
        let s = TargetStats::default();
        assert!(s.record_rejection("RESTORE", "BUSYKEY Target key name already exists."));
        assert!(!s.record_rejection("RESTORE", "BUSYKEY Target key name already exists."));
        assert!(s.record_rejection("RESTORE", "ERR DUMP payload version or checksum are wrong"));
        assert!(s.record_rejection("SET", "OOM command not allowed"));
        assert_eq!(s.failed(), 4);
        assert_eq!(s.rejected_by_command().get("RESTORE"), Some(&3));
    }
}
