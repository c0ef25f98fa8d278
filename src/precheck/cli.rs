//! `ferry check`: the arguments and the run that prints the report and returns the exit status.

use std::path::PathBuf;
use std::time::Duration;

use super::{run_checks, CheckOptions};
use crate::endpoint::{SourceSpec, TargetSpec};
use crate::job::{expand_sources_with, OnConflict, SyncError};

/// `ferry check --source SRC [--source SRC ...] --target DST [--on-conflict error|overwrite] [--json]`:
/// every check `ferry sync` would need to pass, without writing anything.
#[derive(clap::Args, Debug, Clone)]
pub struct CheckArgs {
    /// A source: redis://[[user]:password@]host:port (a master, or a replica of it), rdb:PATH, or
    /// twemproxy:PATH[#POOL] (every server of a nutcracker pool). Repeatable.
    #[arg(long = "source", required = true, value_name = "SRC")]
    pub sources: Vec<SourceSpec>,
    /// The target: redis://[[user]:password@]host:port.
    #[arg(long, value_name = "DST")]
    pub target: TargetSpec,
    /// What the sync would do when the target already holds data (`error` makes a non-empty target an
    /// error, `overwrite` a warning).
    #[arg(long, value_enum, default_value_t = OnConflict::Error)]
    pub on_conflict: OnConflict,
    /// Only these source databases, e.g. `--db 0,2` (as for sync). Repeatable.
    #[arg(long = "db", value_name = "DBS")]
    pub dbs: Vec<String>,
    /// Source db SRC goes to target db DST, e.g. `--map-db 1:0` (as for sync). Repeatable.
    #[arg(long = "map-db", value_name = "SRC:DST")]
    pub map_db: Vec<String>,
    /// The sync's state directory: sources with a checkpoint there are resuming, so their data on the
    /// target is not a conflict.
    #[arg(long, default_value = "ferry-state")]
    pub state_dir: PathBuf,
    /// Print the report as JSON (for tools) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Connect and reply timeout per server, in milliseconds.
    #[arg(long, default_value_t = 3000, value_name = "MS")]
    pub timeout_ms: u64,
    /// How long to watch each source's writes to measure its rate, in milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub rate_sample_ms: u64,
}

impl CheckArgs {
    /// The options these arguments mean; `Err` for a bad `--db`/`--map-db`.
    pub fn options(&self) -> Result<CheckOptions, String> {
        let dbs = crate::apply::DbMap::parse(&self.dbs, &self.map_db)?;
        Ok(CheckOptions {
            overwrite: self.on_conflict == OnConflict::Overwrite,
            dbs,
            state_dir: Some(self.state_dir.clone()),
            timeout: Duration::from_millis(self.timeout_ms.max(1)),
            rate_sample: Duration::from_millis(self.rate_sample_ms),
            ..CheckOptions::default()
        })
    }
}

/// Run `ferry check`: print the report (text or JSON) on stdout and return the exit status — 0 when nothing
/// blocks the sync, 1 when a check found an error, 2 for a configuration error (bad `--db`, an unreadable
/// twemproxy config), reported on stderr.
pub async fn run_cli(args: CheckArgs) -> i32 {
    let opts = match args.options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("ferry: {e}");
            return 2;
        }
    };
    let mut plan = match expand_sources_with(&args.sources, None, &opts.dbs).await {
        Ok(p) => p,
        Err(SyncError::Config(msg)) => {
            eprintln!("ferry: {msg}");
            return 2;
        }
        Err(e) => {
            eprintln!("ferry: {e}");
            return 1;
        }
    };
    let nodes = match crate::target::shard::expand(&args.target, None).await {
        Ok(n) => n,
        Err(msg) => {
            eprintln!("ferry: {msg}");
            return 1;
        }
    };
    // A sharded target has one db: the sources' other dbs need --db or --map-db (as the sync decides).
    let dbs: Vec<u32> = nodes
        .iter()
        .filter_map(|(_, s)| s.as_ref().map(|s| s.db))
        .collect();
    let mut db_check = None;
    if !dbs.is_empty() {
        if let Err(e) = crate::job::one_target_db(&mut plan, &dbs).await {
            db_check = Some(super::Check::error(
                "target.databases",
                format!("target {}", args.target),
                e.to_string(),
            ));
        }
    }
    // A sharded target is checked node by node, each as the sync would write it.
    let mut reports = Vec::new();
    for (addr, shard) in nodes {
        let mut o = opts.clone();
        o.cluster_node = shard.as_ref().is_some_and(|s| s.is_cluster());
        o.share_of = shard.as_ref().map_or(1, |s| s.nodes as u64);
        o.shard = shard;
        reports.push(run_checks(&plan, &addr, &o).await);
    }
    if let (Some(c), Some(r)) = (db_check, reports.first_mut()) {
        r.checks.push(c);
    }
    if args.json {
        let value = match reports.as_slice() {
            [one] => one.to_json(),
            many => serde_json::Value::Array(many.iter().map(|r| r.to_json()).collect()),
        };
        match serde_json::to_string_pretty(&value) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("ferry: cannot write the report as JSON: {e}");
                return 1;
            }
        }
    } else {
        for r in &reports {
            print!("{}", r.render_text());
        }
    }
    i32::from(reports.iter().any(|r| r.has_errors()))
}
