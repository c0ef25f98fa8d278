//! Sources: where events come from.
//!
//! - [`RdbFeeder`] turns RDB bytes, in chunks of any size, into applied writes (decoder → snapshot applier).
//! - [`load_rdb_file`] reads an `rdb:` file through a feeder with bounded memory.
//! - [`master`] runs a live master: the replication link, the spool, the snapshot, then the stream.

pub mod master;

use std::path::Path;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;

use crate::apply::snapshot::SnapshotApplier;
use crate::apply::ApplyError;
use crate::rdb::{Decoder, DecoderOptions, Event};

/// Why a source failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source {source_name}: cannot read {path}: {err}")]
    File {
        source_name: String,
        path: String,
        err: std::io::Error,
    },
    #[error("source {source_name}: {err}")]
    Apply {
        source_name: String,
        err: ApplyError,
    },
    #[error("source {source_name}: {msg}")]
    Link { source_name: String, msg: String },
    /// An error whose message already names the source (the replication link's).
    #[error("{0}")]
    Named(String),
}

/// What a loaded RDB held, for logs and `--once` accounting.
#[derive(Clone, Debug, Default)]
pub struct RdbSummary {
    pub version: u16,
    pub bytes: u64,
    pub entries: u64,
    /// `repl-id` / `repl-offset` AUX fields, when the RDB was written for replication.
    pub repl_offset: Option<i64>,
}

/// Feeds RDB bytes to the decoder and its events to the applier.
pub struct RdbFeeder {
    decoder: Decoder,
    buf: BytesMut,
    pub summary: RdbSummary,
}

impl RdbFeeder {
    pub fn new(opts: DecoderOptions) -> Self {
        RdbFeeder {
            decoder: Decoder::new(opts),
            buf: BytesMut::with_capacity(256 * 1024),
            summary: RdbSummary::default(),
        }
    }

    /// Add bytes and apply every event they complete.
    pub async fn push(
        &mut self,
        chunk: &[u8],
        appliers: &mut [&mut SnapshotApplier],
    ) -> Result<(), ApplyError> {
        self.summary.bytes += chunk.len() as u64;
        self.buf.extend_from_slice(chunk);
        if self.buf.len() < self.decoder.needed() {
            return Ok(());
        }
        while let Some(ev) = self.decoder.decode(&mut self.buf)? {
            match &ev {
                Event::Header { version, .. } => self.summary.version = *version,
                Event::Entry(_) | Event::BigStart(_) => self.summary.entries += 1,
                Event::Aux { key, value } if &key[..] == b"repl-offset" => {
                    self.summary.repl_offset =
                        std::str::from_utf8(value).ok().and_then(|s| s.parse().ok());
                }
                _ => {}
            }
            if let [one] = &mut *appliers {
                one.apply(ev).await?;
            } else {
                for a in appliers.iter_mut() {
                    a.apply(ev.clone()).await?;
                }
            }
            if self.buf.len() < self.decoder.needed() {
                break;
            }
        }
        Ok(())
    }

    /// The input is complete: it must have ended exactly at the RDB's EOF; then wait until the target
    /// answered every write.
    pub async fn finish(
        &mut self,
        appliers: &mut [&mut SnapshotApplier],
    ) -> Result<RdbSummary, ApplyError> {
        self.decoder.finish()?;
        for a in appliers.iter_mut() {
            a.finish().await?;
        }
        Ok(self.summary.clone())
    }
}

/// Load an RDB file into the target through `applier`, reading it in bounded chunks.
pub async fn load_rdb_file(
    name: &str,
    path: &Path,
    opts: DecoderOptions,
    appliers: &mut [&mut SnapshotApplier],
) -> Result<RdbSummary, SourceError> {
    let file_err = |err| SourceError::File {
        source_name: name.to_string(),
        path: path.display().to_string(),
        err,
    };
    let mut f = tokio::fs::File::open(path).await.map_err(file_err)?;
    let mut feeder = RdbFeeder::new(opts);
    let mut chunk = vec![0u8; 1 << 20];
    let apply_err = |err| SourceError::Apply {
        source_name: name.to_string(),
        err,
    };
    loop {
        let n = f.read(&mut chunk).await.map_err(file_err)?;
        if n == 0 {
            break;
        }
        feeder
            .push(&chunk[..n], appliers)
            .await
            .map_err(apply_err)?;
    }
    feeder.finish(appliers).await.map_err(apply_err)
}
