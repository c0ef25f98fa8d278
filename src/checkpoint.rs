//! Checkpoints: where each source's replication stands, so a restart continues with a partial resync.
//!
//! One file per source in the state directory, `checkpoint-<source-id>.json`, holding a format version, the
//! master's replication id and the applied offset (the master offset of the next byte to apply minus one,
//! as `REPLCONF ACK` reports it), and whether the run that wrote it stopped cleanly. Writes are atomic:
//! temp file, `sync_all`, rename, then the directory is synced.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The on-disk format version this build writes and reads.
pub const FORMAT: u32 = 1;

/// A source's position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub format: u32,
    /// The source as shown in logs (no password), to catch a state dir reused for another source.
    pub source: String,
    pub replid: String,
    /// Master offset applied on the target.
    pub offset: i64,
    /// False while running; true once a shutdown drained and acknowledged everything. A checkpoint that
    /// is not clean may be behind what the target applied.
    pub clean: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {err}")]
    Io { path: String, err: std::io::Error },
    #[error("checkpoint {path} is not readable ({err}); remove it to start with a full sync")]
    Corrupt { path: String, err: String },
    #[error("checkpoint {path} has format {found}, this ferry reads format {FORMAT}")]
    Format { path: String, found: u32 },
}

/// A stable file-name-safe id for a source: `host_port` with anything unusual replaced.
pub fn source_id(shown: &str) -> String {
    let s = shown.trim_start_matches("redis://");
    let s = s.rsplit('@').next().unwrap_or(s);
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The checkpoint file of a source.
pub fn path_for(state_dir: &Path, source_id: &str) -> PathBuf {
    state_dir.join(format!("checkpoint-{source_id}.json"))
}

/// Read a checkpoint; `Ok(None)` when there is none.
pub fn load(path: &Path) -> Result<Option<Checkpoint>, CheckpointError> {
    let shown = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(CheckpointError::Io { path: shown, err }),
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| CheckpointError::Corrupt {
            path: shown.clone(),
            err: e.to_string(),
        })?;
    let found = v.get("format").and_then(|f| f.as_u64()).unwrap_or(0) as u32;
    if found != FORMAT {
        return Err(CheckpointError::Format { path: shown, found });
    }
    serde_json::from_value(v)
        .map(Some)
        .map_err(|e| CheckpointError::Corrupt {
            path: shown,
            err: e.to_string(),
        })
}

/// Write a checkpoint atomically (temp file, fsync, rename, fsync of the directory).
pub fn store(path: &Path, cp: &Checkpoint) -> Result<(), CheckpointError> {
    let io = |err| CheckpointError::Io {
        path: path.display().to_string(),
        err,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        let text = serde_json::to_vec_pretty(cp).expect("a checkpoint serializes");
        f.write_all(&text).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let dir = std::env::temp_dir().join(format!("ferry-cp-{}", std::process::id()));
        let p = path_for(&dir, &source_id("redis://u@127.0.0.1:6379"));
        assert!(p.ends_with("checkpoint-127.0.0.1_6379.json"));
        assert_eq!(load(&p).unwrap(), None);
        let cp = Checkpoint {
            format: FORMAT,
            source: "redis://127.0.0.1:6379".into(),
            replid: "a".repeat(40),
            offset: 42,
            clean: true,
        };
        store(&p, &cp).unwrap();
        assert_eq!(load(&p).unwrap(), Some(cp));
        std::fs::write(&p, "{not json").unwrap();
        assert!(matches!(load(&p), Err(CheckpointError::Corrupt { .. })));
        std::fs::write(&p, r#"{"format": 99}"#).unwrap();
        assert!(matches!(
            load(&p),
            Err(CheckpointError::Format { found: 99, .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
