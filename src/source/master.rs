//! A live master as a source: the replication link fills a spool; the snapshot is decoded and applied from
//! it, then the command stream.

use tokio_util::sync::CancellationToken;

use super::SourceError;
use crate::apply::snapshot::SnapshotApplier;
use crate::endpoint::RedisAddr;
use crate::sync::SyncConfig;

/// Run one master until its job is done (`--once`) or `cancel` fires.
pub async fn run(
    _idx: usize,
    addr: &RedisAddr,
    _ownership: crate::apply::sweep::Ownership,
    _applier: SnapshotApplier,
    _cfg: &SyncConfig,
    _cancel: CancellationToken,
) -> Result<(), SourceError> {
    Err(SourceError::Link {
        source_name: addr.to_string(),
        msg: "live masters are being wired in".into(),
    })
}
