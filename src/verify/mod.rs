//! `ferry verify`: prove the copy. Compares the sources (masters, or every master of a twemproxy pool)
//! with a target, key by key, in both directions, and reports every difference.
//!
//! - [`topology`]: `--source`/`--target` endpoints (`redis://`, `twemproxy:CONF[#POOL]`), the servers
//!   behind them, what each server supports, where a key lives.
//! - [`error`]: [`VerifyError`] (could not compare), naming the side and the server. Connections are
//!   [`crate::target::client::Client`]s, reading in pipelines that are sent again after a reconnect.
//! - [`compare`]: comparing a batch of keys: type, TTL, size, then values (`DUMP` fast path, whole reads,
//!   or pieces for big values); the reverse direction (target keys on no source).
//! - [`engine`]: scanners, workers, sampling, rate limit, re-check rounds, `--mode count`.
//! - [`report`]: counts, differences, the human report and JSON.
//!
//! `docs/verify.md` is the user-facing account. Exit status of [`run_cli`]: 0 equal, 1 differences,
//! 2 could not compare (a server unreachable or failing, a bad option or config, interrupted).

pub mod compare;
pub mod engine;
pub mod error;
pub mod report;
pub mod topology;

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use clap::ValueEnum;
use tokio_util::sync::CancellationToken;

pub use crate::target::client::Role;
pub use engine::{run, Mode, Settings, VerifyConfig};
pub use error::VerifyError;
pub use report::{Counts, Difference, Kind, Report, TargetReport};
pub use topology::Endpoint;

/// `--mode`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Every key: presence, type, value (type-aware), TTL.
    Full,
    /// Presence and type only.
    Keys,
    /// Keys per db only (DBSIZE).
    Count,
    /// Like full, on a random --sample PERCENT of the keys.
    Sample,
}

/// Parses `--source`/`--target` without echoing the value in errors (clap's own message would repeat a
/// password given in the URL).
#[derive(Clone, Debug)]
pub struct EndpointParser;

impl clap::builder::TypedValueParser for EndpointParser {
    type Value = Endpoint;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Endpoint, clap::Error> {
        let name = arg.map(|a| a.to_string()).unwrap_or_default();
        let fail = |msg: String| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid value for '{name}': {msg}\n"),
            )
            .with_cmd(cmd)
        };
        let s = value
            .to_str()
            .ok_or_else(|| fail("not valid UTF-8".into()))?;
        s.parse::<Endpoint>().map_err(fail)
    }
}

/// `ferry verify` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct VerifyArgs {
    /// A source: redis://[[user]:password@]host:port, or twemproxy:CONF[#POOL] for every master of a
    /// nutcracker pool. Repeatable.
    #[arg(long = "source", required = true, value_name = "SRC", value_parser = EndpointParser)]
    pub sources: Vec<Endpoint>,
    /// The target: redis://[[user]:password@]host:port, or twemproxy:CONF[#POOL] (each key is looked for on
    /// the backend nutcracker places it on). Repeatable: each target is compared with all sources.
    #[arg(long = "target", required = true, value_name = "DST", value_parser = EndpointParser)]
    pub targets: Vec<Endpoint>,
    /// What to compare.
    #[arg(long, value_enum, default_value_t = ModeArg::Full)]
    pub mode: ModeArg,
    /// Compare a random PERCENT of the keys (0 < PERCENT <= 100), chosen as they are scanned, in both
    /// directions. Implies --mode sample unless --mode keys is given.
    #[arg(long, value_name = "PERCENT")]
    pub sample: Option<f64>,
    /// Seed of the random sample (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Re-check a differing key this many times (after --round-pause-ms each) before reporting it, so
    /// changes still in flight on a running sync are not reported.
    #[arg(long, visible_alias = "recheck", default_value_t = 3, value_name = "N")]
    pub rounds: u32,
    /// Pause before each re-check round, in milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub round_pause_ms: u64,
    /// Expiry times closer than this are equal, in milliseconds.
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    pub ttl_tolerance_ms: u64,
    /// Comparison workers, each with its own connections.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub parallel: usize,
    /// Keys per SCAN call (COUNT) and per comparison batch.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub scan_count: usize,
    /// Elements per page when comparing a big list, set, sorted set, hash or stream.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub page: usize,
    /// Big strings are compared in pieces of this many bytes; smaller values are read whole.
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES")]
    pub chunk_bytes: usize,
    /// Compare at most this many keys per second (both directions together).
    #[arg(long, value_name = "KEYS_PER_SEC")]
    pub rate: Option<f64>,
    /// Never use the DUMP fast path (compare every value type-aware).
    #[arg(long)]
    pub no_dump: bool,
    /// Compare only these source databases, e.g. `--db 0,2` (default: all), as `ferry sync --db`.
    /// Repeatable.
    #[arg(long = "db", value_name = "DBS")]
    pub dbs: Vec<String>,
    /// Source db SRC was written into target db DST, e.g. `--map-db 1:0`, as `ferry sync --map-db`.
    /// Repeatable.
    #[arg(long = "map-db", value_name = "SRC:DST")]
    pub map_db: Vec<String>,
    /// ferry's heartbeat key, as given to `ferry sync --heartbeat-key`: ignored on both sides in every db
    /// ("" to ignore nothing).
    #[arg(long, default_value = crate::job::DEFAULT_HEARTBEAT_KEY, value_name = "KEY")]
    pub heartbeat_key: String,
    /// Prefix of ferry's in-target checkpoint keys, as given to `ferry sync --checkpoint-key-prefix`: keys
    /// that start with it are ignored on both sides in every db ("" to ignore none). With `--mode count`,
    /// the checkpoint keys of the sources given are not counted. Temporary keys (`ferry:tmp:`) are always
    /// ignored.
    #[arg(long, default_value = crate::job::DEFAULT_CHECKPOINT_KEY_PREFIX, value_name = "PREFIX")]
    pub checkpoint_key_prefix: String,
    /// Print the report as JSON (every difference, up to --max-listed) instead of the human summary.
    #[arg(long)]
    pub json: bool,
    /// Differing keys shown per kind in the human summary.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub show: usize,
    /// Differences kept for the report (all are counted).
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub max_listed: usize,
    /// Differing keys held for re-checking; beyond this they are reported without a re-check.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub max_recheck: usize,
    /// Seconds to wait for a connection or a reply.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub timeout_secs: u64,
    /// No progress bar, even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
}

impl VerifyArgs {
    /// Check the options together and build the job. Every problem is reported, not just the first.
    pub fn into_config(self) -> Result<VerifyConfig, VerifyError> {
        let mut problems = Vec::new();
        let mode = match (self.mode, self.sample) {
            (ModeArg::Count, Some(_)) => {
                problems.push("--sample does not apply to --mode count".to_string());
                Mode::Count
            }
            (ModeArg::Sample, None) => {
                problems.push("--mode sample needs --sample PERCENT".to_string());
                Mode::Full
            }
            (ModeArg::Keys, _) => Mode::Keys,
            (ModeArg::Count, None) => Mode::Count,
            (ModeArg::Full | ModeArg::Sample, _) => Mode::Full,
        };
        if let Some(p) = self.sample {
            if !(p > 0.0 && p <= 100.0) {
                problems.push(format!("--sample {p}: expected a percent in (0, 100]"));
            }
        }
        if let Some(r) = self.rate {
            if !(r > 0.0 && r.is_finite()) {
                problems.push(format!("--rate {r}: expected keys per second above 0"));
            }
        }
        for (name, v) in [
            ("--parallel", self.parallel),
            ("--scan-count", self.scan_count),
            ("--page", self.page),
            ("--chunk-bytes", self.chunk_bytes),
        ] {
            if v == 0 {
                problems.push(format!("{name} must be at least 1"));
            }
        }
        if self.timeout_secs == 0 {
            problems.push("--timeout-secs must be at least 1".into());
        }
        let dbmap = match crate::apply::DbMap::parse(&self.dbs, &self.map_db) {
            Ok(m) => m,
            Err(e) => {
                problems.push(e);
                crate::apply::DbMap::default()
            }
        };
        if !problems.is_empty() {
            return Err(VerifyError::Config(problems.join("; ")));
        }
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        });
        Ok(VerifyConfig {
            sources: self.sources,
            targets: self.targets,
            settings: Settings {
                mode,
                sample: self.sample.map(|p| p / 100.0),
                seed,
                scan_count: self.scan_count,
                parallel: self.parallel,
                page: self.page,
                chunk_bytes: self.chunk_bytes,
                ttl_tolerance_ms: self.ttl_tolerance_ms,
                rounds: self.rounds,
                round_pause: Duration::from_millis(self.round_pause_ms),
                rate: self.rate,
                dump: !self.no_dump,
                dbmap,
                heartbeat_key: (!self.heartbeat_key.is_empty())
                    .then(|| Bytes::from(self.heartbeat_key.into_bytes())),
                checkpoint_key_prefix: (!self.checkpoint_key_prefix.is_empty())
                    .then(|| Bytes::from(self.checkpoint_key_prefix.into_bytes())),
                max_listed: self.max_listed,
                max_recheck: self.max_recheck,
                timeout: Duration::from_secs(self.timeout_secs),
                progress: !self.no_progress && !self.json,
            },
        })
    }
}

/// Exit status: every target equals the sources.
pub const EXIT_EQUAL: i32 = 0;
/// Exit status: differences found.
pub const EXIT_DIFFERENT: i32 = 1;
/// Exit status: could not compare (bad options or config, a server unreachable or failing, interrupted).
pub const EXIT_FAILED: i32 = 2;

/// Run `ferry verify` as the command line does: the report on stdout, failures on stderr, SIGINT/SIGTERM
/// stop it. Returns the exit status.
pub async fn run_cli(args: VerifyArgs) -> i32 {
    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone());
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    run_cli_to(args, cancel, &mut out, &mut err).await
}

/// [`run_cli`] with the output streams and the stop signal given (for tests and embedding).
pub async fn run_cli_to(
    args: VerifyArgs,
    cancel: CancellationToken,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let (json, show) = (args.json, args.show);
    let cfg = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(err, "ferry verify: {e}");
            return EXIT_FAILED;
        }
    };
    match run(&cfg, cancel).await {
        Ok(report) => {
            let text = if json {
                report.to_json()
            } else {
                report.render(show)
            };
            let _ = writeln!(out, "{text}");
            let _ = out.flush();
            let n = report.total_differences();
            tracing::info!(
                differences = n,
                elapsed_ms = report.elapsed_ms,
                keys_per_sec = report.keys_per_sec as u64,
                "verify finished"
            );
            if n == 0 {
                EXIT_EQUAL
            } else {
                if !json {
                    let _ = writeln!(
                        err,
                        "ferry verify: {n} difference(s) between the source(s) and the target(s)"
                    );
                }
                EXIT_DIFFERENT
            }
        }
        Err(e) => {
            let _ = writeln!(err, "ferry verify: could not compare: {e}");
            EXIT_FAILED
        }
    }
}

fn spawn_signal_handler(cancel: CancellationToken) {
    crate::signal::on_stop_signal(cancel, "stop requested: verify stops without a verdict");
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: VerifyArgs,
    }

    fn parse(args: &[&str]) -> Result<VerifyArgs, clap::Error> {
        T::try_parse_from(std::iter::once("verify").chain(args.iter().copied())).map(|t| t.a)
    }

    #[test]
    fn parses_and_validates() {
        let a = parse(&[
            "--source",
            "redis://:pw@127.0.0.1:1",
            "--source",
            "twemproxy:/x/n.yml#pool",
            "--target",
            "redis://127.0.0.1:2",
            "--sample",
            "5",
            "--recheck",
            "2",
        ])
        .unwrap();
        assert_eq!(a.sources.len(), 2);
        assert_eq!(a.rounds, 2);
        let cfg = a.into_config().unwrap();
        assert_eq!(cfg.settings.mode, Mode::Full);
        assert_eq!(cfg.settings.sample, Some(0.05));

        let bad = parse(&[
            "--source",
            "redis://h:1",
            "--target",
            "redis://h:2",
            "--mode",
            "count",
            "--sample",
            "5",
            "--parallel",
            "0",
        ])
        .unwrap()
        .into_config()
        .unwrap_err()
        .to_string();
        assert!(
            bad.contains("--sample") && bad.contains("--parallel"),
            "{bad}"
        );
        let e = parse(&["--source", "redis://u:hunter2@h", "--target", "redis://h:2"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(!e.is_empty() && !e.contains("hunter2"), "{e}");
        assert!(parse(&["--source", "rdb:/x", "--target", "redis://h:2"]).is_err());
    }
}
