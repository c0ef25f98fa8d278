//! apply: the only place that knows what a write means.
//!
//! - [`snapshot::SnapshotApplier`] turns RDB events into target writes: `RESTORE` with the value's own
//!   serialized bytes when the target loads the source's RDB version (no re-encoding), native commands
//!   otherwise (an older target), and chunked native commands under a temporary key renamed into place for
//!   values too big for one command.
//! - [`encode`] writes native commands for decoded values.
//! - [`stream::StreamApplier`] applies the replication command stream in source order.
//! - [`sweep`] tells which target keys belong to a source and removes them (a source's flush, ghosts after
//!   a full resync).

pub mod encode;
pub mod snapshot;
pub mod stream;
pub mod sweep;

use std::sync::atomic::AtomicU64;

/// Why applying stopped.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Rdb(#[from] crate::rdb::RdbError),
    #[error(transparent)]
    Target(#[from] crate::target::TargetError),
    #[error("{0}")]
    Unsupported(String),
}

/// Counters of the apply stage, read by status.
#[derive(Debug, Default)]
pub struct ApplyStats {
    /// Keys written (whole or big).
    pub keys_applied: AtomicU64,
    /// Keys of the snapshot skipped because their expiry had already passed.
    pub keys_expired_skipped: AtomicU64,
    /// Keys written with RESTORE (fast path).
    pub keys_restored: AtomicU64,
    /// Keys written with native commands (older target or big key).
    pub keys_reencoded: AtomicU64,
    /// Keys written in chunks under a temporary name.
    pub big_keys: AtomicU64,
    /// Functions libraries loaded.
    pub functions: AtomicU64,
}
