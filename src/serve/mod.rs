//! `ferry serve`: a Redis endpoint that operators and their tooling drive like a replica.
//!
//! `REPLICAOF host port` starts syncing that master into the target with the engine and checks of
//! `ferry sync` (the answer, `+OK`, comes at once, as from Redis; the sync runs in the background);
//! `REPLICAOF NO ONE` stops it cleanly (drain, acknowledge, checkpoint); `REPLICAOF` another master stops
//! the first and starts the other, under the same target-emptiness rules as `ferry sync`. `INFO
//! replication` and `ROLE` answer with the fields scripts read from a replica (the applied offset is
//! `slave_repl_offset`), and a `# Ferry` section says where the data goes and how far behind it is.
//!
//! A job that fails (an unreachable master, a precheck that refuses) is tried again with a backoff, as a
//! replica keeps trying its master; `INFO` shows the link down and the reason (`ferry_last_error`). The
//! last `REPLICAOF` is kept in the state directory (`serve-replicaof.json`, mode 0600: it holds
//! `masterauth`), so a restarted `ferry serve` resumes it from its checkpoint.
//!
//! Data commands are refused with an error that names the target: ferry holds no data of its own.

mod conn;
mod info;

pub use conn::{next_request, MAX_REQUEST};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::endpoint::{Auth, RedisAddr, Secret, SourceSpec};
use crate::job::SyncConfig;
use crate::status::Status;

/// Everything `ferry serve` needs, after parsing.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// `AUTH` clients must give (`requirepass`, or an ACL-style user and password).
    pub requirepass: Option<Auth>,
    /// The job a `REPLICAOF` runs: every option of `ferry sync` but the source.
    pub job: SyncConfig,
}

/// The file the last `REPLICAOF` is kept in, in the state directory.
const STATE_FILE: &str = "serve-replicaof.json";

/// The master a `REPLICAOF` named, as kept on disk.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Kept {
    host: String,
    port: u16,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// How long a failed job waits before it is tried again (doubling up to the second figure).
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The master being synced and its job.
struct Upstream {
    host: String,
    port: u16,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    /// The current attempt's figures (a new registry per attempt).
    status: Arc<Mutex<Arc<Status>>>,
    /// Why the last attempt ended, when it failed.
    last_error: Arc<Mutex<Option<String>>>,
    /// When the received offset last moved (for `master_last_io_seconds_ago`).
    last_io: Arc<Mutex<(i64, Instant)>>,
    /// When the link went down (or never came up).
    down_since: Arc<Mutex<Option<Instant>>>,
}

/// The replica side's state: what `REPLICAOF`, `CONFIG SET masterauth` and `INFO` act on.
pub struct Replica {
    cfg: ServeConfig,
    /// The master being synced. A plain lock, held for moments only: `INFO` and `ROLE` read it while a
    /// `REPLICAOF` switch is under way (a replica answers them while it reconnects).
    upstream: Mutex<Option<Upstream>>,
    /// One `REPLICAOF` (or `NO ONE`, or the final stop) at a time.
    switching: tokio::sync::Mutex<()>,
    masterauth: Mutex<Option<Secret>>,
    masteruser: Mutex<Option<String>>,
    started: Instant,
    /// Client connections (for `INFO clients`) and ids.
    clients: std::sync::atomic::AtomicU64,
    next_client: std::sync::atomic::AtomicU64,
}

impl Replica {
    fn new(cfg: ServeConfig) -> Replica {
        Replica {
            cfg,
            upstream: Mutex::new(None),
            switching: tokio::sync::Mutex::new(()),
            masterauth: Mutex::new(None),
            masteruser: Mutex::new(None),
            started: Instant::now(),
            clients: Default::default(),
            next_client: std::sync::atomic::AtomicU64::new(1),
        }
    }

    fn state_file(&self) -> PathBuf {
        self.cfg.job.state_dir.join(STATE_FILE)
    }

    /// The target as shown to clients (never a password).
    fn target_shown(&self) -> String {
        self.cfg
            .job
            .targets
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `REPLICAOF host port`: start this master's job, which first stops the current one cleanly (in the
    /// background: `INFO` shows the new master, its link down, meanwhile). `Ok(false)` when it is the
    /// master being synced already. When the new master cannot be kept on disk, nothing changes.
    async fn replicate(&self, host: String, port: u16) -> Result<bool, String> {
        let _one = self.switching.lock().await;
        if let Some(u) = lock(&self.upstream).as_ref() {
            if u.host == host && u.port == port && !u.task.is_finished() {
                return Ok(false);
            }
        }
        let auth = self.master_auth();
        let kept = Kept {
            host: host.clone(),
            port,
            user: auth.as_ref().and_then(|a| a.user.clone()),
            password: auth.as_ref().map(|a| a.password.expose().to_string()),
        };
        keep(&self.state_file(), Some(&kept))?;
        let mut up = lock(&self.upstream);
        let before = up.take();
        *up = Some(self.start(host, port, auth, before));
        Ok(true)
    }

    /// `REPLICAOF NO ONE`: stop the current job cleanly and forget it.
    async fn stop_replicating(&self) -> Result<(), String> {
        let _one = self.switching.lock().await;
        let old = lock(&self.upstream).take();
        if let Some(old) = old {
            stop_upstream(old).await;
        }
        keep(&self.state_file(), None)
    }

    fn master_auth(&self) -> Option<Auth> {
        let password = lock(&self.masterauth).clone()?;
        Some(Auth {
            user: lock(&self.masteruser).clone(),
            password,
        })
    }

    /// Run the job for `host:port` in the background, trying it again after a failure; `before` (the
    /// previous master's job) is stopped cleanly first.
    fn start(
        &self,
        host: String,
        port: u16,
        auth: Option<Auth>,
        before: Option<Upstream>,
    ) -> Upstream {
        let source = RedisAddr {
            host: host.clone(),
            port,
            auth,
        };
        tracing::info!(master = %source, target = %self.target_shown(), "REPLICAOF: syncing this master into the target");
        let cfg = SyncConfig {
            sources: vec![SourceSpec::Redis(source.clone())],
            once: false,
            ..self.cfg.job.clone()
        };
        let stop = CancellationToken::new();
        let status = Arc::new(Mutex::new(Arc::new(Status::new())));
        let last_error = Arc::new(Mutex::new(None));
        let last_io = Arc::new(Mutex::new((-1, Instant::now())));
        let down_since = Arc::new(Mutex::new(Some(Instant::now())));
        let task = tokio::spawn(run_upstream(
            before,
            cfg,
            source.to_string(),
            stop.clone(),
            status.clone(),
            last_error.clone(),
            last_io.clone(),
            down_since.clone(),
        ));
        Upstream {
            host,
            port,
            stop,
            task,
            status,
            last_error,
            last_io,
            down_since,
        }
    }
}

/// The job of one `REPLICAOF`, tried again after each failure until `stop`; and a sampler of its link.
/// `before`, the previous master's job, is stopped first (whatever `stop` says: this task ends only once
/// both have).
#[allow(clippy::too_many_arguments)]
async fn run_upstream(
    before: Option<Upstream>,
    cfg: SyncConfig,
    shown: String,
    stop: CancellationToken,
    status: Arc<Mutex<Arc<Status>>>,
    last_error: Arc<Mutex<Option<String>>>,
    last_io: Arc<Mutex<(i64, Instant)>>,
    down_since: Arc<Mutex<Option<Instant>>>,
) {
    if let Some(old) = before {
        Box::pin(stop_upstream(old)).await;
    }
    if stop.is_cancelled() {
        return;
    }
    let sampler = {
        let (status, stop) = (status.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = stop.cancelled() => return,
                }
                let st = lock(&status).clone();
                let src = st.sources().into_iter().next();
                let (offset, up) = match &src {
                    Some(s) => (
                        s.received_offset(),
                        s.state() == crate::status::SourceState::Streaming,
                    ),
                    None => (-1, false),
                };
                {
                    let mut io = lock(&last_io);
                    if io.0 != offset {
                        *io = (offset, Instant::now());
                    }
                }
                let mut down = lock(&down_since);
                match (up, down.is_some()) {
                    (true, true) => *down = None,
                    (false, false) => *down = Some(Instant::now()),
                    _ => {}
                }
            }
        })
    };
    let mut wait = RETRY_FIRST;
    loop {
        let st = Arc::new(Status::new());
        *lock(&status) = st.clone();
        let r = crate::sync::run_with_status(cfg.clone(), stop.clone(), st).await;
        if stop.is_cancelled() {
            break;
        }
        let why = match r {
            Ok(_) => "the sync ended".to_string(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(master = %shown, error = %why, retry_in_s = wait.as_secs(),
            "the sync of the REPLICAOF master stopped; trying again");
        *lock(&last_error) = Some(why);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => break,
        }
        wait = (wait * 2).min(RETRY_MAX);
    }
    sampler.abort();
}

/// Stop a job cleanly: it drains, acknowledges and checkpoints.
async fn stop_upstream(up: Upstream) {
    tracing::info!(master = %format!("{}:{}", up.host, up.port), "stopping the sync of the REPLICAOF master");
    up.stop.cancel();
    let _ = up.task.await;
}

/// Keep (or with `None` forget) the `REPLICAOF` master in `path`, readable by its owner only.
fn keep(path: &std::path::Path, kept: Option<&Kept>) -> Result<(), String> {
    let Some(k) = kept else {
        return match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("{}: cannot remove it: {e}", path.display())),
        };
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("{}: cannot create it: {e}", dir.display()))?;
    }
    let text = serde_json::to_vec_pretty(k).map_err(|e| e.to_string())?;
    let tmp = path.with_extension("json.tmp");
    // A leftover temporary file would keep its own mode: start from none.
    let _ = std::fs::remove_file(&tmp);
    {
        use std::io::Write;
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        let mut f = o
            .open(&tmp)
            .map_err(|e| format!("{}: cannot write it: {e}", tmp.display()))?;
        f.write_all(&text)
            .and_then(|_| f.sync_all())
            .map_err(|e| format!("{}: cannot write it: {e}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: cannot write it: {e}", path.display()))
}

fn read_kept(path: &std::path::Path) -> Result<Option<Kept>, String> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            format!(
                "{}: not a REPLICAOF record ({e}); remove it to start over",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: cannot read it: {e}", path.display())),
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Run `ferry serve` until `cancel`: listen, resume the kept `REPLICAOF`, answer clients; at the end stop
/// the job cleanly.
pub async fn run(cfg: ServeConfig, cancel: CancellationToken) -> Result<(), String> {
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    let replica = Arc::new(Replica::new(cfg));
    if let Some(k) = read_kept(&replica.state_file())? {
        *lock(&replica.masteruser) = k.user.clone();
        *lock(&replica.masterauth) = k.password.clone().map(Secret::new);
        tracing::info!(master = %format!("{}:{}", k.host, k.port),
            "resuming the last REPLICAOF (from the state directory)");
        replica.replicate(k.host, k.port).await?;
    }
    tracing::info!(listen = %replica.cfg.listen, target = %replica.target_shown(),
        "serving: send REPLICAOF <host> <port> to sync a master into the target");
    let conns = tokio_util::task::TaskTracker::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((sock, peer)) => {
                    let _ = sock.set_nodelay(true);
                    let (r, cancel) = (replica.clone(), cancel.clone());
                    conns.spawn(async move { conn::serve(sock, peer, r, cancel).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a client failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = cancel.cancelled() => break,
        }
    }
    drop(listener);
    conns.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), conns.wait()).await;
    let _one = replica.switching.lock().await;
    let up = lock(&replica.upstream).take();
    if let Some(up) = up {
        stop_upstream(up).await;
    }
    Ok(())
}
