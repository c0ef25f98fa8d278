//! Checkpoints: where each (source, target) pair stands, so a restart continues with a partial resync.
//!
//! One file per source and target in the state directory, `checkpoint-<source-id>--<target-id>.json`,
//! holding a format version, whom it belongs to (the source, the target and what the job writes where: its
//! db selection and mapping), the master's replication id, the applied offset (the master offset of the
//! last byte applied, as `REPLCONF ACK` reports it), the stream's db at that offset, whether the target
//! holds a finished snapshot (`streaming`) or one being loaded (`full_sync`), and whether the run that wrote
//! it stopped cleanly. Writes are atomic: temp file, `sync_all`, rename, then the directory is synced.
//!
//! A checkpoint is only ever used for the job that wrote it: another target has its own file (and gets its
//! own full sync), and the same pair with another db selection is refused by name (see [`Job`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The on-disk format version this build writes and reads.
pub const FORMAT: u32 = 2;

/// What the target's data is, as far as this source is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// A snapshot is being loaded: the target holds part of it. Only a full sync continues from here.
    FullSync,
    /// The snapshot is complete and the stream applied up to `offset`.
    Streaming,
}

/// A source's position on one target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub format: u32,
    /// The source as shown in logs (no password).
    pub source: String,
    /// The target as shown in logs (no password).
    pub target: String,
    /// What the job writes where (see [`Job::describe`]); a checkpoint of another description is refused.
    pub job: String,
    pub replid: String,
    /// Master offset applied on the target.
    pub offset: i64,
    /// The source db the stream is in at `offset`.
    pub db: u32,
    pub state: State,
    /// False while running; true once a shutdown drained and acknowledged everything. A checkpoint that
    /// is not clean may be behind what the target applied.
    pub clean: bool,
}

/// Whether a checkpoint may be trusted as exactly what its target applied, decided in one place. Every
/// checkpoint written while the job runs is [`Stop::RUNNING`]: the target may be ahead of it. Only
/// [`Stop::at_shutdown`] makes a clean one, and only for a stop that drained everything while streaming.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stop {
    clean: bool,
}

impl Stop {
    /// Written while running (or at a stop that could not drain): the target may hold more.
    pub const RUNNING: Stop = Stop { clean: false };

    /// The checkpoint a shutdown writes: clean when the stop was asked for (`asked`: a signal, `--once`,
    /// not an error), the stream was being applied (`streaming`: a snapshot half loaded is never a clean
    /// position) and every batch handed over was answered (`drained`).
    pub fn at_shutdown(asked: bool, streaming: bool, drained: bool) -> Stop {
        Stop {
            clean: asked && streaming && drained,
        }
    }

    pub fn is_clean(self) -> bool {
        self.clean
    }
}

/// Whom a checkpoint belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub source: String,
    pub target: String,
    /// The db selection and mapping, in a canonical text.
    pub dbs: String,
}

impl Job {
    /// `dbs` is the job's `--db`/`--map-db` (or a twemproxy pool's `redis_db`) in a canonical text.
    pub fn new(source: &str, target: &str, dbs: String) -> Job {
        Job {
            source: source.to_string(),
            target: target.to_string(),
            dbs,
        }
    }

    /// This job's checkpoint file in `state_dir`.
    pub fn path(&self, state_dir: &Path) -> PathBuf {
        path_for(state_dir, &self.source, &self.target)
    }

    /// The text stored in [`Checkpoint::job`].
    pub fn describe(&self) -> String {
        self.dbs.clone()
    }

    /// A checkpoint for this job.
    pub fn checkpoint(
        &self,
        replid: &str,
        offset: i64,
        db: u32,
        state: State,
        stop: Stop,
    ) -> Checkpoint {
        Checkpoint {
            format: FORMAT,
            source: self.source.clone(),
            target: self.target.clone(),
            job: self.describe(),
            replid: replid.to_string(),
            offset,
            db,
            state,
            clean: stop.is_clean(),
        }
    }

    /// Read this job's checkpoint: `Ok(None)` when there is none; an error when the file belongs to
    /// another job (it names the file and how to start over).
    pub fn load(&self, state_dir: &Path) -> Result<Option<Checkpoint>, CheckpointError> {
        let path = self.path(state_dir);
        let Some(cp) = load(&path)? else {
            return Ok(None);
        };
        let mismatch = if cp.source != self.source {
            Some(format!("source {}", cp.source))
        } else if cp.target != self.target {
            Some(format!("target {}", cp.target))
        } else if cp.job != self.describe() {
            Some(format!("databases {}", cp.job))
        } else {
            None
        };
        if let Some(what) = mismatch {
            return Err(CheckpointError::OtherJob {
                path: path.display().to_string(),
                theirs: what,
                ours: format!(
                    "source {}, target {}, databases {}",
                    self.source,
                    self.target,
                    self.describe()
                ),
            });
        }
        Ok(Some(cp))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {err}")]
    Io { path: String, err: std::io::Error },
    #[error("checkpoint {path} is not readable ({err}); remove it to start with a full sync")]
    Corrupt { path: String, err: String },
    #[error("checkpoint {path} has format {found}, this ferry reads format {FORMAT}; remove it to start with a full sync (source values then replace the target's: pass --on-conflict overwrite if the target holds them)")]
    Format { path: String, found: u32 },
    #[error("checkpoint {path} belongs to another job ({theirs}; this job: {ours}): the target's data was written under other settings, so ferry cannot continue from it. To start over, remove {path} and empty the target (or pass --on-conflict overwrite); or run with the settings that wrote it, or another --state-dir")]
    OtherJob {
        path: String,
        theirs: String,
        ours: String,
    },
}

/// A stable file-name-safe id for a source or target: `host_port` with anything unusual replaced.
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

/// The checkpoint file of a source on a target (both as shown: no password).
pub fn path_for(state_dir: &Path, source: &str, target: &str) -> PathBuf {
    state_dir.join(format!(
        "checkpoint-{}--{}.json",
        source_id(source),
        source_id(target)
    ))
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
    fn only_a_drained_stop_while_streaming_is_clean() {
        assert!(!Stop::RUNNING.is_clean());
        assert!(Stop::at_shutdown(true, true, true).is_clean());
        for (asked, streaming, drained) in [
            (false, true, true),
            (true, false, true),
            (true, true, false),
        ] {
            assert!(
                !Stop::at_shutdown(asked, streaming, drained).is_clean(),
                "{asked} {streaming} {drained}"
            );
        }
    }

    #[test]
    fn round_trip_and_errors() {
        let dir = std::env::temp_dir().join(format!("ferry-cp-{}", std::process::id()));
        let job = Job::new(
            "redis://127.0.0.1:6379",
            "redis://127.0.0.1:7000",
            "all".into(),
        );
        let p = job.path(&dir);
        assert!(p.ends_with("checkpoint-127.0.0.1_6379--127.0.0.1_7000.json"));
        assert_eq!(job.load(&dir).unwrap(), None);
        let cp = job.checkpoint(
            &"a".repeat(40),
            42,
            3,
            State::Streaming,
            Stop::at_shutdown(true, true, true),
        );
        store(&p, &cp).unwrap();
        assert_eq!(job.load(&dir).unwrap(), Some(cp.clone()));
        // The same source into another target: another file, nothing to resume.
        let other_target = Job::new(
            "redis://127.0.0.1:6379",
            "redis://127.0.0.1:7001",
            "all".into(),
        );
        assert_eq!(other_target.load(&dir).unwrap(), None);
        // The same pair with another db mapping: refused, naming the file and how to start over.
        let other_dbs = Job::new(
            "redis://127.0.0.1:6379",
            "redis://127.0.0.1:7000",
            "1:0".into(),
        );
        let e = other_dbs.load(&dir).unwrap_err().to_string();
        assert!(
            e.contains(&p.display().to_string()) && e.contains("remove"),
            "{e}"
        );
        std::fs::write(&p, "{not json").unwrap();
        assert!(matches!(load(&p), Err(CheckpointError::Corrupt { .. })));
        std::fs::write(&p, r#"{"format": 1}"#).unwrap();
        assert!(matches!(
            load(&p),
            Err(CheckpointError::Format { found: 1, .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
