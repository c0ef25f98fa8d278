//! The command line. `anyhow`-free: errors are turned into one message and an exit status here.
//!
//! Exit status: 0 finished (or stopped by SIGINT/SIGTERM), 1 runtime failure, 2 usage or config error.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::endpoint::{SourceSpec, TargetSpec};
use crate::job::{OnConflict, SyncConfig, SyncError};
use crate::rdb::DecoderOptions;
use crate::target::pool::PoolConfig;

#[derive(Parser, Debug)]
#[command(
    name = "ferry",
    version,
    about = "Moves live Redis data: full sync, then every change."
)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A secret from the command line, never shown by `Debug`.
fn parse_secret(s: &str) -> Result<crate::endpoint::Secret, String> {
    Ok(crate::endpoint::Secret::new(s))
}

/// How changes reach the target (`--apply`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ApplyMode {
    /// Write commands through a pipelined pool (RESTORE for the snapshot): any target kind, several targets.
    Commands,
    /// Be the target's master: it loads one merged RDB natively, then one merged command stream. One
    /// standalone target (see docs/master-mode.md).
    Replication,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnError {
    /// Count, log once per distinct error, show in status, continue.
    Log,
    /// Stop the job (exit 1) at the first rejected write.
    Stop,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Sync sources into a target: the full data first, then every change.
    Sync(SyncArgs),
    /// Prove the copy: compare sources and target key by key (exit 0 equal, 1 differences found).
    Verify(crate::verify::VerifyArgs),
    /// Check sources and target before a sync: one line per check and what to do (exit 1 on errors).
    Check(crate::precheck::CheckArgs),
    /// Show a running sync's status (from its --status endpoint) for a person.
    Status(StatusArgs),
    /// Be a Redis endpoint driven like a replica: `REPLICAOF host port` syncs that master into the
    /// target (full data, then every change), `INFO replication` shows the link and the applied offset,
    /// `REPLICAOF NO ONE` stops cleanly.
    Serve(ServeArgs),
    /// Stand where nutcracker stood: serve the pool's clients with nutcracker's placement while syncing
    /// every server of the pool into the target, until `ferry cutover` moves the clients to the target
    /// (no reconnect).
    Proxy(ProxyArgs),
    /// Cut a running `ferry proxy` over to its target (through its --status endpoint): pause client
    /// writes, wait until everything is applied, switch, release the writes. Exit 0 once cut over, 1 when
    /// refused (nothing switched).
    Cutover(CutoverArgs),
}

#[derive(clap::Args, Debug)]
pub struct ProxyArgs {
    /// The pool: twemproxy:PATH[#POOL] (its servers are synced; its clients are served).
    #[arg(long = "source", value_name = "twemproxy:PATH[#POOL]")]
    pub source: SourceSpec,
    /// Where clients connect (default: the pool's `listen` address from the YAML).
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<std::net::SocketAddr>,
    /// How long a cutover may wait for the sync to apply everything before it is refused (seconds).
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub cutover_timeout: f64,
    #[command(flatten)]
    pub job: JobArgs,
}

#[derive(clap::Args, Debug)]
pub struct CutoverArgs {
    /// The running proxy's status address (its --status).
    #[arg(value_name = "ADDR", default_value = "127.0.0.1:9121")]
    pub addr: std::net::SocketAddr,
    /// How long to wait for the answer (seconds).
    #[arg(long, default_value_t = 300.0)]
    pub timeout: f64,
}

impl ProxyArgs {
    fn into_config(self) -> Result<crate::proxy::ProxyConfig, String> {
        if !matches!(self.source, SourceSpec::Twemproxy { .. }) {
            return Err(format!(
                "ferry proxy: --source must be twemproxy:PATH[#POOL], not {}",
                self.source
            ));
        }
        if self.job.once {
            return Err("--once does not go with ferry proxy: ferry cutover ends the sync".into());
        }
        if self.job.apply == ApplyMode::Replication {
            return Err(
                "--apply replication is for ferry sync; ferry proxy writes commands".into(),
            );
        }
        if !(self.cutover_timeout.is_finite() && self.cutover_timeout > 0.0) {
            return Err("--cutover-timeout must be a positive number of seconds".into());
        }
        Ok(crate::proxy::ProxyConfig {
            listen: self.listen,
            cutover_timeout: std::time::Duration::from_secs_f64(self.cutover_timeout),
            job: self.job.into_config(vec![self.source])?,
        })
    }
}

async fn proxy_main(cfg: crate::proxy::ProxyConfig) -> i32 {
    let cancel = CancellationToken::new();
    crate::signal::on_stop_signal(
        cancel.clone(),
        "stop requested: closing client connections and stopping the sync (drain, acknowledge, checkpoint)",
    );
    match crate::proxy::run(cfg, cancel).await {
        Ok(()) => 0,
        Err(msg) => {
            eprintln!("ferry: {msg}");
            1
        }
    }
}

async fn cutover_main(args: CutoverArgs) -> i32 {
    let timeout = std::time::Duration::from_secs_f64(args.timeout.max(1.0));
    match crate::status::post(args.addr, "/cutover", timeout).await {
        Ok((200, body)) => {
            println!("{}", body.trim());
            0
        }
        Ok((code, body)) => {
            eprintln!("ferry: cutover refused (HTTP {code}): {}", body.trim());
            1
        }
        Err(e) => {
            eprintln!(
                "ferry: {e}. Is a ferry proxy running with --status {}?",
                args.addr
            );
            1
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// The running sync's status address.
    #[arg(value_name = "ADDR", default_value = "127.0.0.1:9121")]
    pub addr: std::net::SocketAddr,
    /// Print the raw JSON instead.
    #[arg(long)]
    pub json: bool,
}

async fn status_main(args: StatusArgs) -> i32 {
    match crate::status::fetch_snapshot(args.addr, std::time::Duration::from_secs(5)).await {
        Ok(snap) => {
            if args.json {
                match serde_json::to_string_pretty(&snap) {
                    Ok(t) => println!("{t}"),
                    Err(e) => {
                        eprintln!("ferry: {e}");
                        return 1;
                    }
                }
            } else {
                print!("{}", crate::status::report::render_text(&snap));
            }
            0
        }
        Err(e) => {
            eprintln!(
                "ferry: {e}. Is a ferry sync running with --status {}?",
                args.addr
            );
            1
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct SyncArgs {
    /// A source: redis://[[user]:password@]host:port (a master, or a replica of it), rdb:PATH, or
    /// twemproxy:PATH[#POOL] (every server of a nutcracker pool). Repeatable.
    #[arg(long = "source", required = true, value_name = "SRC")]
    pub sources: Vec<SourceSpec>,
    #[command(flatten)]
    pub job: JobArgs,
}

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Where clients (redis-cli, tooling) connect: HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: std::net::SocketAddr,
    /// The password clients must give with AUTH, `[USER:]PASSWORD` (an ACL-style user, or the default
    /// user). Prefer the environment variable: arguments are visible to other users of the machine.
    #[arg(long, value_name = "[USER:]PASSWORD", env = "FERRY_REQUIREPASS", hide_env_values = true,
        value_parser = parse_secret)]
    pub requirepass: Option<crate::endpoint::Secret>,
    #[command(flatten)]
    pub job: JobArgs,
}

/// `[USER:]PASSWORD` as credentials.
fn auth_of(secret: &crate::endpoint::Secret) -> crate::endpoint::Auth {
    let a = secret.expose();
    match a.split_once(':') {
        Some((u, p)) => crate::endpoint::Auth {
            user: (!u.is_empty()).then(|| u.to_string()),
            password: crate::endpoint::Secret::new(p),
        },
        None => crate::endpoint::Auth {
            user: None,
            password: crate::endpoint::Secret::new(a),
        },
    }
}

/// The options of a sync job but its sources (`ferry sync` and `ferry serve`, whose `REPLICAOF` names the
/// source).
#[derive(clap::Args, Debug)]
pub struct JobArgs {
    /// The target: redis://[[user]:password@]host:port, a Redis Cluster as
    /// cluster://[[user]:password@]host:port[,host:port…], or twemproxy:PATH[#POOL] (the pool's servers
    /// written directly, with nutcracker's placement). Repeatable: every target gets every change.
    #[arg(long = "target", value_name = "DST", required = true)]
    pub targets: Vec<TargetSpec>,
    /// What to do when the target already holds data.
    #[arg(long, value_enum, default_value_t = OnConflict::Error)]
    pub on_conflict: OnConflict,
    /// Exit 0 once every source's full sync has been applied.
    #[arg(long)]
    pub once: bool,
    /// Directory for checkpoints and spool files.
    #[arg(long, default_value = "ferry-state")]
    pub state_dir: PathBuf,
    /// Pipelined connections to the target.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Bytes a target connection may have in flight (2 MiB: 30 k small RESTOREs, enough to keep a target
    /// busy; more buys no speed, only memory).
    #[arg(long, default_value_t = 2 << 20)]
    pub max_inflight_bytes: usize,
    /// Values whose serialized size exceeds this are written in chunks instead of one RESTORE.
    #[arg(long, default_value_t = 16 << 20)]
    pub big_value_bytes: usize,
    /// Elements per native command when values are written in chunks or re-encoded.
    #[arg(long, default_value_t = 512)]
    pub chunk_elements: usize,
    /// Memory a source's spool may hold before it writes to disk (bytes). Default 4 MiB: when the target is
    /// the slow stage the backlog waits on disk, read back sequentially.
    #[arg(long)]
    pub spool_mem_bytes: Option<u64>,
    /// Disk a source's spool may use in the state directory (bytes); at the limit the link stops reading.
    #[arg(long, default_value_t = 64 << 30)]
    pub spool_disk_bytes: u64,
    /// Kept for compatibility: the in-target checkpoint is on by default.
    #[arg(long, hide = true, conflicts_with = "no_target_checkpoint")]
    pub target_checkpoint: bool,
    /// Do not keep each source's checkpoint in the target. By default every batch of stream commands is
    /// applied in one MULTI/EXEC together with its checkpoint, which makes a lost reply or a kill -9 exact
    /// (nothing applied twice, nothing lost). Without it, batches are plain pipelines: a command re-sent
    /// after a lost target connection may be applied twice, and a restart after a crash runs a full resync.
    #[arg(long)]
    pub no_target_checkpoint: bool,
    /// Db of the in-target checkpoint keys.
    #[arg(long, default_value_t = 0)]
    pub checkpoint_db: u32,
    /// Prefix of the in-target checkpoint keys (the source's host_port follows).
    #[arg(long, default_value = crate::job::DEFAULT_CHECKPOINT_KEY_PREFIX)]
    pub checkpoint_key_prefix: String,
    /// Read options from a TOML file (keys are these long options: `target = "redis://…"`,
    /// `source = [..]`, `once = true`); options on the command line win. Unknown keys are errors.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Serve status on HOST:PORT: GET /status (JSON), /metrics (Prometheus), /healthz.
    #[arg(long = "status", alias = "status-addr", value_name = "HOST:PORT")]
    pub status_addr: Option<std::net::SocketAddr>,
    /// What a write the target rejects does: `log` (count it, log it once per distinct error, show it in
    /// status, keep going; `--once` then exits 1) or `stop` (end the job with exit 1).
    #[arg(long, value_enum, default_value_t = OnError::Log)]
    pub on_error: OnError,
    /// Write a timestamp key into each source master every SECONDS (default 1) and use it to measure the
    /// true end-to-end lag per source (shown in status). The key is never copied to the target.
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "1")]
    pub heartbeat: Option<u64>,
    /// The heartbeat key (in db 0 of each source).
    #[arg(long, default_value = crate::job::DEFAULT_HEARTBEAT_KEY)]
    pub heartbeat_key: String,
    /// Credentials for the servers of `twemproxy:` sources, `[USER:]PASSWORD`, instead of the pool's
    /// `redis_auth` (e.g. an ACL user allowed to PSYNC). Prefer the environment variable: arguments are
    /// visible to other users of the machine.
    #[arg(long, value_name = "[USER:]PASSWORD", env = "FERRY_POOL_AUTH", hide_env_values = true,
        value_parser = parse_secret)]
    pub pool_auth: Option<crate::endpoint::Secret>,
    /// Sync only these source databases, e.g. `--db 0,2` (default: all). Repeatable.
    #[arg(long = "db", value_name = "DBS")]
    pub dbs: Vec<String>,
    /// Write source db SRC into target db DST, e.g. `--map-db 1:0` (a cluster or proxy target has only
    /// db 0). Repeatable.
    #[arg(long = "map-db", value_name = "SRC:DST")]
    pub map_db: Vec<String>,
    /// How changes reach the target: `commands` (a pipelined writer pool) or `replication` (ferry is the
    /// target's master: one merged RDB the target loads natively, then one merged stream).
    #[arg(long, value_enum, default_value_t = ApplyMode::Commands)]
    pub apply: ApplyMode,
    /// `--apply replication`: where ferry listens for the target's replication connection (default: an
    /// ephemeral port on the local address ferry reaches the target from).
    #[arg(long, value_name = "HOST:PORT")]
    pub replication_listen: Option<std::net::SocketAddr>,
    /// `--apply replication`: the address the target is told to replicate from (`REPLICAOF HOST PORT`),
    /// when it reaches ferry through a NAT, a port mapping or a proxy (default: where ferry listens).
    #[arg(long, value_name = "HOST:PORT")]
    pub replication_announce: Option<std::net::SocketAddr>,
    /// `--apply replication`: stream bytes kept so a target that reconnects continues (`+CONTINUE`)
    /// instead of needing a new merged full sync.
    #[arg(long, default_value_t = crate::master::DEFAULT_BACKLOG_BYTES)]
    pub replication_backlog_bytes: usize,
}

impl SyncArgs {
    fn into_config(self) -> Result<SyncConfig, String> {
        self.job.into_config(self.sources)
    }
}

impl ServeArgs {
    fn into_config(self) -> Result<crate::serve::ServeConfig, String> {
        if self.job.once {
            return Err(
                "--once does not go with ferry serve: REPLICAOF NO ONE stops the sync".into(),
            );
        }
        if self.job.apply == ApplyMode::Replication {
            return Err(
                "--apply replication is for ferry sync; ferry serve writes commands".into(),
            );
        }
        Ok(crate::serve::ServeConfig {
            listen: self.listen,
            requirepass: self.requirepass.as_ref().map(auth_of),
            job: self.job.into_config(Vec::new())?,
        })
    }
}

impl JobArgs {
    fn into_config(self, sources: Vec<SourceSpec>) -> Result<SyncConfig, String> {
        if self.apply != ApplyMode::Replication
            && (self.replication_listen.is_some() || self.replication_announce.is_some())
        {
            return Err(
                "--replication-listen and --replication-announce go with --apply replication"
                    .into(),
            );
        }
        let dbs = crate::apply::DbMap::parse(&self.dbs, &self.map_db)?;
        let decoder = DecoderOptions {
            max_entry_bytes: self.big_value_bytes,
            chunk_elements: self.chunk_elements,
            ..DecoderOptions::default()
        };
        Ok(SyncConfig {
            sources,
            target: crate::job::first_server(&self.targets),
            targets: self.targets,
            shard: None,
            overwrite: self.on_conflict == OnConflict::Overwrite,
            once: self.once,
            state_dir: self.state_dir,
            pool: PoolConfig {
                connections: self.connections.max(1),
                max_inflight_bytes: self.max_inflight_bytes,
                ..PoolConfig::default()
            },
            decoder,
            chunk_elements: self.chunk_elements.max(1),
            spool_mem_bytes: Some(self.spool_mem_bytes.unwrap_or(4 << 20).max(1 << 20)),
            spool_disk_bytes: Some(self.spool_disk_bytes),
            target_checkpoint: (!self.no_target_checkpoint)
                .then(|| (self.checkpoint_db, self.checkpoint_key_prefix.clone())),
            status_addr: self.status_addr,
            dbs,
            stop_on_error: self.on_error == OnError::Stop,
            pool_auth: self.pool_auth.as_ref().map(auth_of),
            replication: (self.apply == ApplyMode::Replication).then_some(
                crate::job::ReplicationOptions {
                    listen: self.replication_listen,
                    announce: self.replication_announce,
                    backlog_bytes: self.replication_backlog_bytes,
                },
            ),
            heartbeat: self.heartbeat.map(|secs| {
                (
                    std::time::Duration::from_secs(secs.max(1)),
                    self.heartbeat_key.clone(),
                )
            }),
        })
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // Log lines go through the progress bars' writer, so a bar is never torn by a log line.
        .with_writer(crate::status::ProgressOutput::stderr().make_writer());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// `--config FILE` (after the subcommand): a TOML file whose keys are the subcommand's long options
/// (`target = "redis://…"`, `source = ["redis://…", "twemproxy:/etc/nc.yml"]`, `once = true`,
/// `connections = 8`). They are inserted as if typed before the command line's own options, and an option
/// given on the command line replaces the file's (for repeatable options, all of the file's values).
/// Unknown keys are errors, like unknown options.
pub fn with_config_file(args: Vec<std::ffi::OsString>) -> Result<Vec<std::ffi::OsString>, String> {
    let strs: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let Some(pos) = strs
        .iter()
        .position(|a| a == "--config" || a.starts_with("--config="))
    else {
        return Ok(args);
    };
    let (path, used) = match strs[pos].strip_prefix("--config=") {
        Some(p) => (p.to_string(), 1),
        None => (
            strs.get(pos + 1)
                .cloned()
                .ok_or("--config needs a file path")?,
            2,
        ),
    };
    // The subcommand is the first argument that is not an option (global options come first).
    let mut sub = None;
    let mut i = 1;
    while i < strs.len() {
        if strs[i] == "--log-format" {
            i += 2; // the global option's value is not the subcommand
            continue;
        }
        if !strs[i].starts_with('-') {
            sub = Some(i);
            break;
        }
        i += 1;
    }
    let Some(sub) = sub else {
        return Err("--config goes after a subcommand, e.g. ferry sync --config ferry.toml".into());
    };
    if pos < sub {
        return Err(
            "--config goes after the subcommand, e.g. ferry sync --config ferry.toml".into(),
        );
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("config file {path}: cannot read it: {e}"))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| format!("config file {path}: {e}"))?;
    let given: Vec<&str> = strs
        .iter()
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or(a))
        .collect();
    let mut from_file: Vec<String> = Vec::new();
    for (key, value) in &table {
        let opt = key.replace('_', "-");
        if opt == "config" {
            return Err(format!(
                "config file {path}: `config` cannot be set in a config file"
            ));
        }
        if given.contains(&opt.as_str()) {
            continue; // the command line wins
        }
        let scalar = |v: &toml::Value| -> Result<String, String> {
            match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(i) => Ok(i.to_string()),
                toml::Value::Float(f) => Ok(f.to_string()),
                other => Err(format!(
                    "config file {path}: `{key}` must be a string or a number, not {}",
                    other.type_str()
                )),
            }
        };
        match value {
            toml::Value::Boolean(true) => from_file.push(format!("--{opt}")),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                for v in items {
                    from_file.push(format!("--{opt}"));
                    from_file.push(scalar(v)?);
                }
            }
            v => {
                from_file.push(format!("--{opt}"));
                from_file.push(scalar(v)?);
            }
        }
    }
    let mut out: Vec<std::ffi::OsString> = Vec::with_capacity(args.len() + from_file.len());
    for (i, a) in args.into_iter().enumerate() {
        if i >= pos && i < pos + used {
            continue;
        }
        out.push(a);
        if i == sub {
            out.extend(from_file.iter().map(std::ffi::OsString::from));
        }
    }
    Ok(out)
}

/// Parse arguments, run, and return the process exit status.
pub fn main() -> i32 {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let args = match with_config_file(args) {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("ferry: {msg}");
            return 2;
        }
    };
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    init_logging(cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry: cannot start the runtime: {e}");
            return 1;
        }
    };
    match cli.command {
        Command::Sync(args) => match args.into_config() {
            Ok(cfg) => rt.block_on(sync_main(cfg)),
            Err(msg) => {
                eprintln!("ferry: {msg}");
                2
            }
        },
        Command::Verify(args) => rt.block_on(crate::verify::run_cli(args)),
        Command::Check(args) => rt.block_on(crate::precheck::run_cli(args)),
        Command::Status(args) => rt.block_on(status_main(args)),
        Command::Proxy(args) => match args.into_config() {
            Ok(cfg) => rt.block_on(proxy_main(cfg)),
            Err(msg) => {
                eprintln!("ferry: {msg}");
                2
            }
        },
        Command::Cutover(args) => rt.block_on(cutover_main(args)),
        Command::Serve(args) => match args.into_config() {
            Ok(cfg) => rt.block_on(serve_main(cfg)),
            Err(msg) => {
                eprintln!("ferry: {msg}");
                2
            }
        },
    }
}

async fn serve_main(cfg: crate::serve::ServeConfig) -> i32 {
    let cancel = CancellationToken::new();
    crate::signal::on_stop_signal(
        cancel.clone(),
        "stop requested: stopping the sync (drain, acknowledge, checkpoint); the last REPLICAOF resumes at \
         the next start",
    );
    match crate::serve::run(cfg, cancel).await {
        Ok(()) => 0,
        Err(msg) => {
            eprintln!("ferry: {msg}");
            1
        }
    }
}

async fn sync_main(cfg: SyncConfig) -> i32 {
    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone());
    let once = cfg.once;
    match crate::sync::run(cfg, cancel).await {
        Ok(report) => {
            tracing::info!(
                keys = report.keys_applied,
                expired_skipped = report.keys_expired_skipped,
                rejected = report.writes_rejected,
                "sync finished"
            );
            if report.writes_rejected > 0 {
                eprintln!(
                    "ferry: the target rejected {} writes (see the log lines above for the commands, keys and errors)",
                    report.writes_rejected
                );
                if once {
                    return 1;
                }
            }
            0
        }
        Err(SyncError::Precheck(msg))
        | Err(SyncError::Runtime(msg))
        | Err(SyncError::Topology(msg)) => {
            eprintln!("ferry: {msg}");
            1
        }
        Err(SyncError::Config(msg)) => {
            eprintln!("ferry: {msg}");
            2
        }
    }
}

/// SIGINT and SIGTERM cancel the job: it then drains, acknowledges, checkpoints and exits 0.
fn spawn_signal_handler(cancel: CancellationToken) {
    crate::signal::on_stop_signal(
        cancel,
        "stop requested: draining, acknowledging and checkpointing",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<std::ffi::OsString> {
        v.iter().map(std::ffi::OsString::from).collect()
    }

    fn parse(args: &[&str]) -> Result<SyncConfig, String> {
        let args = with_config_file(os(args))?;
        let cli = Cli::try_parse_from(args).map_err(|e| e.to_string())?;
        match cli.command {
            Command::Sync(a) => a.into_config(),
            _ => Err("not sync".into()),
        }
    }

    #[test]
    fn config_file_fills_options_and_the_command_line_wins() {
        let dir = std::env::temp_dir().join(format!("ferry-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("ferry.toml");
        std::fs::write(
            &f,
            "source = [\"redis://127.0.0.1:7001\", \"redis://127.0.0.1:7002\"]\n\
             target = \"redis://127.0.0.1:7100\"\nonce = true\nconnections = 7\non_conflict = \"overwrite\"\n",
        )
        .unwrap();
        let p = f.display().to_string();
        let c = parse(&["ferry", "--log-format", "json", "sync", "--config", &p]).unwrap();
        assert_eq!(c.sources.len(), 2);
        assert!(c.once && c.overwrite);
        assert_eq!(c.pool.connections, 7);
        // The command line replaces the file's value, also for repeatable options.
        let c = parse(&[
            "ferry",
            "sync",
            "--config",
            &p,
            "--connections",
            "2",
            "--source",
            "redis://127.0.0.1:7003",
        ])
        .unwrap();
        assert_eq!(c.pool.connections, 2);
        assert_eq!(c.sources.len(), 1);
        // Unknown keys are errors naming the key.
        std::fs::write(&f, "tagret = \"redis://x:1\"\n").unwrap();
        let e = parse(&["ferry", "sync", "--config", &p]).unwrap_err();
        assert!(e.contains("tagret"), "{e}");
        std::fs::write(&f, "target = [\n").unwrap();
        let e = parse(&["ferry", "sync", "--config", &p]).unwrap_err();
        assert!(e.contains("config file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
