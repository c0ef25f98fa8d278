//! What a verify run found: counts per server and db, the differing keys, and the two renderings (a short
//! human report and JSON with everything). Keys are shown escaped (`target::pool::escape_key`) and, in
//! JSON, also in hex; values are never shown.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use bytes::Bytes;
use serde::Serialize;

use crate::target::client::Role;
use crate::target::pool::escape_key;

/// The kinds of difference, in the order the human report lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// On a source, not on the target.
    Missing,
    /// On the target, on no source.
    Extra,
    /// Present on both, in different dbs (a `missing` and an `extra` of the same key, paired).
    OtherDb,
    /// Different types.
    Type,
    /// Same type, different value.
    Value,
    /// One has an expiry and the other not, or the expiries differ by more than the tolerance.
    Ttl,
    /// The db holds a different number of keys (`--mode count`).
    Count,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Missing,
        Kind::Extra,
        Kind::OtherDb,
        Kind::Type,
        Kind::Value,
        Kind::Ttl,
        Kind::Count,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Missing => "missing on the target",
            Kind::Extra => "extra on the target",
            Kind::OtherDb => "in another db",
            Kind::Type => "type differs",
            Kind::Value => "value differs",
            Kind::Ttl => "TTL differs",
            Kind::Count => "key count differs",
        }
    }
}

/// One difference that was still there after every re-check.
#[derive(Clone, Debug, Serialize)]
pub struct Difference {
    pub kind: Kind,
    /// The db on the source (for `extra`: on the target).
    pub db: u32,
    /// For `other_db`: the target db holding the key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_db: Option<u32>,
    /// The key, escaped for printing (`\xNN` for non-printable bytes, `\\` for a backslash, cut after
    /// 128 bytes).
    pub key: String,
    /// The key's exact bytes in hex.
    pub key_hex: String,
    /// The source server that holds the key (none for `extra` and `count`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The target server that holds (or should hold) the key.
    pub target: String,
    /// What differs, without values: sizes, positions, type names, expiry times.
    pub detail: String,
    #[serde(skip)]
    pub raw_key: Bytes,
    /// Index of the source node (forward differences).
    #[serde(skip)]
    pub src_node: Option<usize>,
    /// Index of the target node.
    #[serde(skip)]
    pub tgt_node: usize,
}

impl Difference {
    pub fn new(
        kind: Kind,
        db: u32,
        key: &Bytes,
        source: Option<String>,
        target: String,
        detail: String,
    ) -> Difference {
        Difference {
            kind,
            db,
            target_db: None,
            key: escape_key(key),
            key_hex: hex(key),
            source,
            target,
            detail,
            raw_key: key.clone(),
            src_node: None,
            tgt_node: 0,
        }
    }
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

/// Counters for one server and db (or totals).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Source keys compared (forward direction).
    pub checked: u64,
    /// Source keys equal on the target (including those equal only on a re-check).
    pub matched: u64,
    /// Of `matched`, keys that differed at first and were equal on a re-check (live changes).
    pub matched_on_recheck: u64,
    /// Target keys looked up on the sources (reverse direction).
    pub target_keys_checked: u64,
    pub missing: u64,
    pub extra: u64,
    pub other_db: u64,
    pub type_differs: u64,
    pub value_differs: u64,
    pub ttl_differs: u64,
    /// Keys that expired (or were deleted) while being verified: not differences.
    pub skipped_expired: u64,
    /// Keys of a type verify cannot compare (a module type without a usable DUMP on both sides).
    pub not_compared: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.checked += o.checked;
        self.matched += o.matched;
        self.matched_on_recheck += o.matched_on_recheck;
        self.target_keys_checked += o.target_keys_checked;
        self.missing += o.missing;
        self.extra += o.extra;
        self.other_db += o.other_db;
        self.type_differs += o.type_differs;
        self.value_differs += o.value_differs;
        self.ttl_differs += o.ttl_differs;
        self.skipped_expired += o.skipped_expired;
        self.not_compared += o.not_compared;
    }

    pub fn kind_mut(&mut self, k: Kind) -> Option<&mut u64> {
        match k {
            Kind::Missing => Some(&mut self.missing),
            Kind::Extra => Some(&mut self.extra),
            Kind::OtherDb => Some(&mut self.other_db),
            Kind::Type => Some(&mut self.type_differs),
            Kind::Value => Some(&mut self.value_differs),
            Kind::Ttl => Some(&mut self.ttl_differs),
            Kind::Count => None,
        }
    }

    pub fn differences(&self) -> u64 {
        self.missing
            + self.extra
            + self.other_db
            + self.type_differs
            + self.value_differs
            + self.ttl_differs
    }
}

/// Counters of one server and db.
#[derive(Clone, Debug, Serialize)]
pub struct DbCounts {
    pub role: Role,
    pub server: String,
    pub db: u32,
    #[serde(flatten)]
    pub counts: Counts,
}

/// `--mode count`: keys per db on the sources (summed) and on the target.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct DbKeyCount {
    /// The target db.
    pub db: u32,
    /// The source dbs counted into it (`[db]` unless `--map-db`/`--db` say otherwise).
    pub source_dbs: Vec<u32>,
    pub source_keys: u64,
    pub target_keys: u64,
}

/// The comparison of the sources with one target.
#[derive(Clone, Debug, Serialize)]
pub struct TargetReport {
    pub target: String,
    pub totals: Counts,
    pub per_db: Vec<DbCounts>,
    /// `--mode count` only.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub key_counts: Vec<DbKeyCount>,
    /// Differences per kind (also for kinds beyond the listed ones).
    pub differences_by_kind: BTreeMap<Kind, u64>,
    /// Every difference, up to `--max-listed`.
    pub differences: Vec<Difference>,
    /// More differences were found than listed.
    pub differences_truncated: bool,
    /// The most reply bytes a single comparison round trip to one server brought in: the memory a
    /// worker holds per side is bounded by about this much (big values are read in pages).
    pub peak_reply_bytes: u64,
}

impl TargetReport {
    pub fn total_differences(&self) -> u64 {
        self.differences_by_kind.values().sum()
    }
}

/// A whole verify run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub mode: String,
    /// `--sample` percent, when sampling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_percent: Option<f64>,
    pub sources: Vec<String>,
    pub targets: Vec<TargetReport>,
    pub elapsed_ms: u64,
    /// Keys compared (both directions) per second of the whole run.
    pub keys_per_sec: f64,
    /// True when every target equals the sources.
    pub equal: bool,
}

impl Report {
    pub fn total_differences(&self) -> u64 {
        self.targets.iter().map(|t| t.total_differences()).sum()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The short human report: per target the totals, the counts per kind with the first `show`
    /// differing keys of each kind, then the counts per server and db.
    pub fn render(&self, show: usize) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "ferry verify ({}{}): {} source(s) -> {} target(s), {:.1} s, {:.0} keys/s",
            self.mode,
            self.sample_percent
                .map(|p| format!(", {p}% sample"))
                .unwrap_or_default(),
            self.sources.len(),
            self.targets.len(),
            self.elapsed_ms as f64 / 1000.0,
            self.keys_per_sec
        );
        for src in &self.sources {
            let _ = writeln!(s, "  source {src}");
        }
        for t in &self.targets {
            let c = &t.totals;
            let diffs = t.total_differences();
            let _ = writeln!(
                s,
                "target {}: {}",
                t.target,
                if diffs == 0 { "EQUAL" } else { "DIFFERENT" }
            );
            if t.key_counts.is_empty() {
                let _ = writeln!(
                    s,
                    "  {} source keys checked, {} equal ({} after a re-check), {} target keys checked, {} expired during the run{}",
                    c.checked,
                    c.matched,
                    c.matched_on_recheck,
                    c.target_keys_checked,
                    c.skipped_expired,
                    if c.not_compared > 0 {
                        format!(", {} not comparable (module types)", c.not_compared)
                    } else {
                        String::new()
                    }
                );
            } else {
                for k in &t.key_counts {
                    let from = if k.source_dbs == [k.db] {
                        String::new()
                    } else {
                        format!(
                            " (from source db {})",
                            k.source_dbs
                                .iter()
                                .map(|d| d.to_string())
                                .collect::<Vec<_>>()
                                .join(",")
                        )
                    };
                    let _ = writeln!(
                        s,
                        "  db{}{from}: {} keys on the source(s), {} on the target{}",
                        k.db,
                        k.source_keys,
                        k.target_keys,
                        if k.source_keys == k.target_keys {
                            ""
                        } else {
                            "  <- differs"
                        }
                    );
                }
            }
            for kind in Kind::ALL {
                let n = t.differences_by_kind.get(&kind).copied().unwrap_or(0);
                if n == 0 {
                    continue;
                }
                let _ = writeln!(s, "  {n} {}:", kind.name());
                for d in t.differences.iter().filter(|d| d.kind == kind).take(show) {
                    let db = match d.target_db {
                        Some(tdb) => format!("db{} -> db{tdb}", d.db),
                        None => format!("db{}", d.db),
                    };
                    if kind == Kind::Count {
                        let _ = writeln!(s, "    {db}: {}", d.detail);
                    } else {
                        let _ = writeln!(s, "    {db} \"{}\": {}", d.key, d.detail);
                    }
                }
                let listed = t.differences.iter().filter(|d| d.kind == kind).count() as u64;
                if n > listed.min(show as u64) {
                    let _ = writeln!(
                        s,
                        "    … {} more (all listed with --json{})",
                        n - listed.min(show as u64),
                        if t.differences_truncated {
                            ", up to --max-listed"
                        } else {
                            ""
                        }
                    );
                }
            }
            if t.key_counts.is_empty() && !t.per_db.is_empty() {
                let _ = writeln!(s, "  per server and db:");
                for d in &t.per_db {
                    let c = &d.counts;
                    let what = match d.role {
                        Role::Source => format!(
                            "{} checked, {} equal, {} different, {} expired",
                            c.checked,
                            c.matched,
                            c.differences(),
                            c.skipped_expired
                        ),
                        Role::Target => format!(
                            "{} checked, {} extra, {} expired",
                            c.target_keys_checked, c.extra, c.skipped_expired
                        ),
                    };
                    let _ = writeln!(s, "    {} {} db{}: {what}", d.role, d.server, d.db);
                }
            }
        }
        s
    }
}
