//! `ferry check`: the arguments and the run that prints the report and returns the exit status.

use std::path::PathBuf;
use std::time::Duration;

use super::{run_checks, CheckOptions};
use crate::endpoint::{RedisAddr, SourceSpec};
use crate::job::{expand_sources, OnConflict, SyncError};

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
    pub target: RedisAddr,
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
    let plan = match expand_sources(&args.sources).await {
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
    let report = run_checks(&plan, &args.target, &opts).await;
    if args.json {
        match serde_json::to_string_pretty(&report.to_json()) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("ferry: cannot write the report as JSON: {e}");
                return 1;
            }
        }
    } else {
        print!("{}", report.render_text());
    }
    i32::from(report.has_errors())
}
