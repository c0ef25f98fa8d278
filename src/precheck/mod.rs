//! Precheck (`ferry check`, and the same checks at the start of `ferry sync`): everything that can be known
//! about the sources and the target before the first write, as a short report with one line per check and
//! what to do about it.
//!
//! - [`run_checks`] probes every source master concurrently (reachable, authenticated, serves `PSYNC` to
//!   our user, version, backlog against the observed write rate, memory, keys, cluster mode) and the target
//!   (reachable, authenticated, mode, version against each source, empty unless overwriting, eviction
//!   policy, memory, databases), each connection with a short timeout.
//! - [`CheckReport`] holds the verdicts: [`CheckReport::render_text`] for a person,
//!   [`CheckReport::to_json`] for tools, [`CheckReport::has_errors`] for the exit status.
//! - [`cli`]: `ferry check` arguments ([`CheckArgs`]) and [`run_cli`].
//!
//! Checks never print a password: subjects are `host:port`, messages are written here, and every text is
//! scrubbed of the configured passwords before it leaves [`run_checks`]. See `docs/precheck.md` for every
//! check, its level and its advice.

mod advice;
pub mod cli;
mod probe;
mod source;
mod target;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::apply::DbMap;
use crate::endpoint::{RedisAddr, SourceSpec};
use crate::job::PlannedSource;

pub use advice::{fmt_bytes, round_up_mb, suggest_backlog, BacklogVerdict, MemoryVerdict};
pub use cli::{run_cli, CheckArgs};

/// How bad a finding is.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Nothing to do.
    Ok,
    /// The sync can run, but the operator should know (and probably act).
    Warn,
    /// The sync cannot run (or would produce a wrong copy) until this is fixed.
    Error,
}

impl Level {
    /// `OK`, `WARN`, `ERROR`: the first column of the text report.
    pub fn label(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        }
    }
}

/// One verdict: one line of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Stable identifier, e.g. `source.backlog`, `target.empty` (listed in `docs/precheck.md`).
    pub id: &'static str,
    /// What was checked: `source 10.0.0.1:6379`, `target 10.0.0.2:6379`.
    pub subject: String,
    pub level: Level,
    /// What was found.
    pub message: String,
    /// What to do, when something should be done.
    pub advice: Option<String>,
}

impl Check {
    pub fn new(
        id: &'static str,
        subject: impl Into<String>,
        level: Level,
        message: impl Into<String>,
    ) -> Check {
        Check {
            id,
            subject: subject.into(),
            level,
            message: message.into(),
            advice: None,
        }
    }

    pub fn ok(id: &'static str, subject: impl Into<String>, message: impl Into<String>) -> Check {
        Check::new(id, subject, Level::Ok, message)
    }

    pub fn warn(id: &'static str, subject: impl Into<String>, message: impl Into<String>) -> Check {
        Check::new(id, subject, Level::Warn, message)
    }

    pub fn error(
        id: &'static str,
        subject: impl Into<String>,
        message: impl Into<String>,
    ) -> Check {
        Check::new(id, subject, Level::Error, message)
    }

    pub fn advice(mut self, advice: impl Into<String>) -> Check {
        self.advice = Some(advice.into());
        self
    }
}

/// Every verdict of one precheck run, sources first (in the order given), then the target.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub checks: Vec<Check>,
}

impl CheckReport {
    /// Whether anything blocks the sync.
    pub fn has_errors(&self) -> bool {
        self.checks.iter().any(|c| c.level == Level::Error)
    }

    /// What `ferry sync` does with its precheck: every line into the log (warnings as WARN, the rest but
    /// the errors as INFO), and the errors, if any, as the job's refusal (nothing written).
    pub fn log_and_refuse(&self) -> Result<(), crate::job::SyncError> {
        let text = self.render_text();
        for line in text.lines() {
            if line.starts_with("WARN") {
                tracing::warn!("precheck: {line}");
            } else if !line.starts_with("ERROR") {
                tracing::info!("precheck: {line}");
            }
        }
        if !self.has_errors() {
            return Ok(());
        }
        let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("ERROR")).collect();
        Err(crate::job::SyncError::Precheck(format!(
            "precheck failed; nothing was written:\n{}",
            errors.join("\n")
        )))
    }

    pub fn count(&self, level: Level) -> usize {
        self.checks.iter().filter(|c| c.level == level).count()
    }

    /// The checks with this id (e.g. to assert on one in a test).
    pub fn by_id<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a Check> + 'a {
        self.checks.iter().filter(move |c| c.id == id)
    }

    /// The worst level of all checks (`Ok` for an empty report).
    pub fn worst(&self) -> Level {
        self.checks
            .iter()
            .map(|c| c.level)
            .max()
            .unwrap_or(Level::Ok)
    }

    /// For a person: one line per check, `LEVEL  subject  message — advice`, subjects aligned, then a
    /// one-line summary.
    pub fn render_text(&self) -> String {
        let width = self
            .checks
            .iter()
            .map(|c| c.subject.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for c in &self.checks {
            let pad = width - c.subject.chars().count();
            out.push_str(&format!(
                "{:<5} {}{}  {}",
                c.level.label(),
                c.subject,
                " ".repeat(pad),
                c.message
            ));
            if let Some(a) = &c.advice {
                out.push_str(" — ");
                out.push_str(a);
            }
            out.push('\n');
        }
        let (e, w) = (self.count(Level::Error), self.count(Level::Warn));
        let plural = |n: usize, one: &str, many: &str| {
            if n == 1 {
                format!("1 {one}")
            } else {
                format!("{n} {many}")
            }
        };
        out.push_str(&match (e, w) {
            (0, 0) => "all checks passed: nothing blocks the sync\n".to_string(),
            (0, w) => format!(
                "{}: nothing blocks the sync, but read them\n",
                plural(w, "warning", "warnings")
            ),
            (e, w) => format!(
                "{}, {}: fix the errors before syncing\n",
                plural(e, "error", "errors"),
                plural(w, "warning", "warnings")
            ),
        });
        out
    }

    /// For tools. Stable field names:
    /// `{"ok": bool, "errors": n, "warnings": n, "checks": [{"id", "subject", "level": "ok"|"warn"|"error",
    /// "message", "advice": string|null}]}`; `ok` is true when nothing blocks the sync.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "ok": !self.has_errors(),
            "errors": self.count(Level::Error),
            "warnings": self.count(Level::Warn),
            "checks": self.checks,
        })
    }
}

/// What the checks need to know beyond the endpoints.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// `--on-conflict overwrite`: a non-empty target is a warning, not an error.
    pub overwrite: bool,
    /// `--db` / `--map-db`: which source dbs are synced and where they land on the target.
    pub dbs: DbMap,
    /// The job's state directory: a source with a checkpoint there is resuming, so its data already on the
    /// target is not a conflict (as `ferry sync` decides).
    pub state_dir: Option<PathBuf>,
    /// `(db, key prefix)` of the in-target checkpoints (on by default, as in `ferry sync`); such keys are not
    /// a conflict, and the sources they name are resuming.
    pub target_checkpoint: Option<(u32, String)>,
    /// Connect and per-reply timeout for every server.
    pub timeout: Duration,
    /// How long to watch a source's replication offset to measure its write rate.
    pub rate_sample: Duration,
    /// Warn when the backlog holds less than this many seconds of writes.
    pub backlog_min_secs: u64,
    /// Suggest a backlog that holds this many seconds of writes.
    pub backlog_suggest_secs: u64,
    /// Warn when the target's `maxmemory` leaves less than this share (percent) free after the copy.
    pub memory_headroom_pct: u64,
    /// The target is a master node of a cluster target (its cluster mode is expected).
    pub cluster_node: bool,
    /// Master mode continuing a previous run: the target replicating from (the previous) ferry is expected.
    pub replica_of_ferry: bool,
    /// The target is one of this many nodes of a sharded target: it needs about 1/N of the data.
    pub share_of: u64,
    /// The target is a node of a sharded target: its in-target checkpoints are one key per slot (server).
    pub shard: Option<crate::target::shard::Shard>,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            overwrite: false,
            dbs: DbMap::default(),
            state_dir: None,
            target_checkpoint: Some((0, "ferry:checkpoint:".into())),
            timeout: Duration::from_secs(3),
            rate_sample: Duration::from_secs(1),
            backlog_min_secs: 60,
            backlog_suggest_secs: 300,
            memory_headroom_pct: 20,
            cluster_node: false,
            replica_of_ferry: false,
            share_of: 1,
            shard: None,
        }
    }
}

impl CheckOptions {
    /// The options `ferry sync` runs its precheck with: its conflict mode, db filter, state directory and
    /// in-target checkpoint, and the default timeouts and thresholds.
    pub fn for_sync(cfg: &crate::job::SyncConfig) -> CheckOptions {
        CheckOptions {
            overwrite: cfg.overwrite,
            dbs: cfg.dbs.clone(),
            state_dir: Some(cfg.state_dir.clone()),
            target_checkpoint: cfg.target_checkpoint.clone(),
            cluster_node: cfg.shard.as_ref().is_some_and(|s| s.is_cluster()),
            replica_of_ferry: false,
            share_of: cfg.shard.as_ref().map_or(1, |s| s.nodes as u64),
            shard: cfg.shard.clone(),
            ..CheckOptions::default()
        }
    }
}

/// What a source told us, for the target's checks (version, memory, dbs, identity).
#[derive(Clone, Debug, Default)]
pub(crate) struct SourceFacts {
    /// `source 10.0.0.1:6379` or `source rdb:/x.rdb`.
    pub subject: String,
    /// For `target.version`: `Redis 7.2.4` or `RDB file`.
    pub version: String,
    /// RDB version its values are serialized with.
    pub rdb_version: u16,
    /// Memory its synced data takes (used_memory minus the empty server's own, scaled to the synced dbs).
    pub data_memory: Option<u64>,
    /// Keys per source db (all dbs holding keys).
    pub keyspace: Vec<(u32, u64)>,
    /// `run_id`, to notice a target that is one of the sources.
    pub run_id: Option<String>,
}

/// Run every check: sources concurrently, the target alongside, then the target's verdicts that depend on
/// the sources. Never fails: an unreachable server is a check with level `Error`.
pub async fn run_checks(
    sources: &[PlannedSource],
    target: &RedisAddr,
    opts: &CheckOptions,
) -> CheckReport {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, s) in sources.iter().enumerate() {
        let spec = s.spec.clone();
        let opts = opts.clone();
        let in_cluster = s.cluster.is_some();
        tasks.spawn(async move { (i, source::check_source(&spec, in_cluster, &opts).await) });
    }
    // The sources' tasks run while the target is probed.
    let addrs: Vec<RedisAddr> = sources
        .iter()
        .filter_map(|s| match &s.spec {
            SourceSpec::Redis(a) => Some(a.clone()),
            _ => None,
        })
        .collect();
    let target_result = target::probe_target(target, &addrs, opts).await;

    let mut per_source: Vec<Option<(Vec<Check>, Option<SourceFacts>)>> = vec![None; sources.len()];
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((i, r)) => {
                if let Some(slot) = per_source.get_mut(i) {
                    *slot = Some(r);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "a source check task failed");
            }
        }
    }
    let mut checks = Vec::new();
    let mut facts = Vec::new();
    let mut unchecked = 0usize;
    for (i, r) in per_source.into_iter().enumerate() {
        match r {
            Some((c, f)) => {
                checks.extend(c);
                match f {
                    Some(f) => facts.push(f),
                    None => unchecked += 1,
                }
            }
            None => {
                unchecked += 1;
                let subject = sources
                    .get(i)
                    .map(|s| source::subject_of(&s.spec))
                    .unwrap_or_else(|| "source".into());
                checks.push(Check::error(
                    "source.reachable",
                    subject,
                    "the check of this source stopped unexpectedly",
                ));
            }
        }
    }
    checks.extend(target::judge_target(target_result, &facts, unchecked, opts));

    let mut secrets: Vec<String> = Vec::new();
    let mut add_secret = |a: &RedisAddr| {
        if let Some(auth) = &a.auth {
            let p = auth.password.expose();
            if p.len() >= 2 {
                secrets.push(p.to_string());
            }
        }
    };
    add_secret(target);
    for s in sources {
        if let SourceSpec::Redis(a) = &s.spec {
            add_secret(a);
        }
    }
    for c in &mut checks {
        for s in &secrets {
            scrub(&mut c.subject, s);
            scrub(&mut c.message, s);
            if let Some(a) = &mut c.advice {
                scrub(a, s);
            }
        }
    }
    CheckReport { checks }
}

/// Replace every occurrence of `secret` in `text` by `***` (a server message could in theory echo one).
fn scrub(text: &mut String, secret: &str) {
    if !secret.is_empty() && text.contains(secret) {
        *text = text.replace(secret, "***");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CheckReport {
        CheckReport {
            checks: vec![
                Check::ok(
                    "source.reachable",
                    "source 127.0.0.1:6379",
                    "reachable, Redis 7.0.15, role master",
                ),
                Check::warn(
                    "target.eviction",
                    "target 127.0.0.1:7000",
                    "maxmemory-policy allkeys-lru",
                )
                .advice("CONFIG SET maxmemory-policy noeviction"),
            ],
        }
    }

    #[test]
    fn renders_one_line_per_check_aligned_with_advice() {
        let text = sample().render_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(
            lines[0],
            "OK    source 127.0.0.1:6379  reachable, Redis 7.0.15, role master"
        );
        assert_eq!(
            lines[1],
            "WARN  target 127.0.0.1:7000  maxmemory-policy allkeys-lru — CONFIG SET maxmemory-policy noeviction"
        );
        assert!(lines[2].starts_with("1 warning: nothing blocks"), "{text}");
        let mut r = sample();
        r.checks
            .push(Check::error("target.empty", "target x", "not empty"));
        assert!(r.has_errors());
        assert_eq!(r.worst(), Level::Error);
        assert!(r
            .render_text()
            .ends_with("1 error, 1 warning: fix the errors before syncing\n"));
        assert!(CheckReport::default()
            .render_text()
            .starts_with("all checks passed"));
    }

    #[test]
    fn json_has_stable_fields() {
        let j = sample().to_json();
        assert_eq!(j["ok"], true);
        assert_eq!(j["errors"], 0);
        assert_eq!(j["warnings"], 1);
        assert_eq!(j["checks"][0]["id"], "source.reachable");
        assert_eq!(j["checks"][0]["level"], "ok");
        assert_eq!(j["checks"][0]["advice"], serde_json::Value::Null);
        assert_eq!(j["checks"][1]["level"], "warn");
        assert_eq!(j["checks"][1]["subject"], "target 127.0.0.1:7000");
        assert_eq!(
            j["checks"][1]["advice"],
            "CONFIG SET maxmemory-policy noeviction"
        );
    }

    #[test]
    fn scrubs_secrets() {
        let mut s = "AUTH hunter2 failed: hunter2".to_string();
        scrub(&mut s, "hunter2");
        assert_eq!(s, "AUTH *** failed: ***");
    }
}
