//! apply: the only place that knows what a write means.
//!
//! - [`snapshot::SnapshotApplier`] turns RDB events into target writes: `RESTORE` with the value's own
//!   serialized bytes when the target loads the source's RDB version (no re-encoding), native commands
//!   otherwise (an older target), and chunked native commands under a temporary key renamed into place for
//!   values too big for one command.
//! - [`encode`] writes native commands for decoded values.
//! - [`stream::StreamApplier`] applies the replication command stream in source order.
//! - [`scripts`] keeps the Lua bodies seen, so an `EVALSHA` reaching a node without its script loads it first.
//! - [`sweep`] tells which target keys belong to a source and removes them (a source's flush, ghosts after
//!   a full resync).

pub mod cross;
pub mod encode;
pub mod snapshot;
pub mod stream;
pub mod sweep;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicU64;

/// Which source databases are synced (`--db`) and where they go on the target (`--map-db`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DbMap {
    /// Only these source dbs; `None`: all.
    pub keep: Option<BTreeSet<u32>>,
    /// Source db → target db; unmapped dbs keep their number.
    pub map: BTreeMap<u32, u32>,
}

impl DbMap {
    /// The target db of source db `db`, or `None` when it is filtered out.
    pub fn target(&self, db: u32) -> Option<u32> {
        if let Some(keep) = &self.keep {
            if !keep.contains(&db) {
                return None;
            }
        }
        Some(self.map.get(&db).copied().unwrap_or(db))
    }

    /// The source dbs whose keys land in target db `t` (at most the 16 default dbs plus mapped ones; a
    /// server with more dbs is asked about the ones that can hold `t`'s keys: `t` itself and the mapped).
    pub fn sources_for(&self, t: u32) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .map
            .iter()
            .filter(|(s, d)| **d == t && self.target(**s) == Some(t))
            .map(|(s, _)| *s)
            .collect();
        if !self.map.contains_key(&t) && self.target(t) == Some(t) {
            v.push(t);
        }
        v.sort_unstable();
        v
    }

    /// Nothing chosen: every db to its own number.
    pub fn is_default(&self) -> bool {
        self.keep.is_none() && self.map.is_empty()
    }

    /// A canonical text for checkpoints and logs: `all`, or e.g. `0,2 (2->0)`.
    pub fn describe(&self) -> String {
        let keep = match &self.keep {
            None => "all".to_string(),
            Some(k) => k.iter().map(u32::to_string).collect::<Vec<_>>().join(","),
        };
        let maps: Vec<String> = self
            .map
            .iter()
            .filter(|(a, b)| a != b)
            .map(|(a, b)| format!("{a}->{b}"))
            .collect();
        if maps.is_empty() {
            keep
        } else {
            format!("{keep} ({})", maps.join(","))
        }
    }

    /// True when every db goes to its own number.
    pub fn is_identity(&self) -> bool {
        self.keep.is_none() && self.map.iter().all(|(a, b)| a == b)
    }

    /// Parse `--db 0,2` and `--map-db 1:0` values. Two source dbs mapped into one target db are allowed
    /// (their keys are merged, as a proxy or cluster target needs).
    pub fn parse(dbs: &[String], maps: &[String]) -> Result<DbMap, String> {
        let num = |s: &str, what: &str| -> Result<u32, String> {
            s.trim()
                .parse::<u32>()
                .map_err(|_| format!("{what}: {s:?} is not a database number"))
        };
        let mut keep: Option<BTreeSet<u32>> = None;
        for d in dbs {
            for part in d.split(',').filter(|p| !p.trim().is_empty()) {
                keep.get_or_insert_with(BTreeSet::new)
                    .insert(num(part, "--db")?);
            }
        }
        let mut map = BTreeMap::new();
        for m in maps {
            for part in m.split(',').filter(|p| !p.trim().is_empty()) {
                let (a, b) = part
                    .split_once(':')
                    .ok_or_else(|| format!("--map-db: {part:?} is not SRC:DST (e.g. 1:0)"))?;
                let a = num(a, "--map-db")?;
                if map.insert(a, num(b, "--map-db")?).is_some() {
                    return Err(format!("--map-db: source db {a} is mapped twice"));
                }
            }
        }
        if let Some(keep) = &keep {
            if let Some(a) = map.keys().find(|a| !keep.contains(a)) {
                return Err(format!(
                    "--map-db maps source db {a}, which --db does not sync"
                ));
            }
        }
        Ok(DbMap { keep, map })
    }
}

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
    /// Empty collections in the snapshot, skipped as Redis skips them on load.
    pub keys_empty_skipped: AtomicU64,
    /// Keys of the snapshot in databases that are not synced (`--db`).
    pub keys_filtered: AtomicU64,
    /// Keys written with RESTORE (fast path).
    pub keys_restored: AtomicU64,
    /// Keys written with native commands (older target or big key).
    pub keys_reencoded: AtomicU64,
    /// Keys written in chunks under a temporary name.
    pub big_keys: AtomicU64,
    /// Functions libraries loaded.
    pub functions: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::DbMap;

    #[test]
    fn db_filter_and_map() {
        let m = DbMap::parse(&["0,2".into()], &["2:0".into()]).unwrap();
        assert_eq!(m.target(0), Some(0));
        assert_eq!(m.target(1), None);
        assert_eq!(m.target(2), Some(0));
        assert!(!m.is_identity());
        assert!(DbMap::parse(&[], &[]).unwrap().is_identity());
        assert!(DbMap::parse(&["x".into()], &[])
            .unwrap_err()
            .contains("--db"));
        assert!(DbMap::parse(&[], &["1".into()])
            .unwrap_err()
            .contains("SRC:DST"));
        assert!(DbMap::parse(&["0".into()], &["1:0".into()])
            .unwrap_err()
            .contains("does not sync"));
        assert!(DbMap::parse(&[], &["1:0,1:2".into()])
            .unwrap_err()
            .contains("twice"));
        // Which source dbs feed a target db: the mapped ones, and the db itself unless it moved away.
        let m = DbMap::parse(&[], &["1:0".into()]).unwrap();
        assert_eq!(m.sources_for(0), vec![0, 1]);
        assert_eq!(m.sources_for(1), Vec::<u32>::new());
        assert_eq!(m.sources_for(3), vec![3]);
        let m = DbMap::parse(&["1".into()], &["1:0".into()]).unwrap();
        assert_eq!(m.sources_for(0), vec![1]);
        assert_eq!(m.describe(), "1 (1->0)");
        assert_eq!(DbMap::default().describe(), "all");
    }
}
