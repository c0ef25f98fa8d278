//! `ferry proxy`: ferry in nutcracker's place, in front of the clients, while it syncs every server of the
//! pool into the target; then a cutover that moves the clients to the target without a reconnect.
//!
//! Before the cutover, client commands go to the pool's servers with nutcracker's own placement
//! ([`crate::twemproxy::Router`]) and nutcracker's command rules ([`table`]): the commands it forwards,
//! `MGET`/`DEL`/`UNLINK`/`TOUCH`/`MSET` cut per server and merged, the connection closed on what it does not
//! support. Each server has one pipelined connection shared by every client ([`backend`]).
//!
//! The cutover (`POST /cutover` on the status endpoint; `ferry cutover ADDR`):
//! 1. client **writes** pause — each client whose next command is a write waits there, with everything it
//!    sends after it (so a client never reads before its own write); reads of the other clients keep
//!    flowing to the pool;
//! 2. once every write already sent to the pool is answered, each server's `master_repl_offset` is read
//!    (it counts every one of those writes), and ferry waits until its sync applied each server up to there
//!    on the target;
//! 3. routing switches to the target, and the paused writes go there, in order. Clients never reconnect.
//!
//! If catching up takes longer than `--cutover-timeout`, nothing switches: the writes resume on the pool
//! and the answer says why. After the cutover the pool's servers receive nothing from ferry: the sync
//! stops (drained, checkpointed).

mod backend;
pub mod table;
mod target;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use self::backend::Backend;
use self::table::{Local, Route, Split};
use crate::endpoint::{RedisAddr, SourceSpec, TargetSpec};
use crate::job::SyncConfig;
use crate::resp;
use crate::status::Status;
use crate::twemproxy::Router;

/// Everything `ferry proxy` needs, after parsing.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Where clients connect; default the pool's own `listen` address.
    pub listen: Option<SocketAddr>,
    /// The sync job: one `twemproxy:` source, one target.
    pub job: SyncConfig,
    /// How long a cutover may wait for the sync to catch up before it is refused.
    pub cutover_timeout: Duration,
}

/// Where client commands go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// To the pool's servers.
    Source,
    /// Writes wait; reads go to the pool.
    Pausing,
    /// To the target.
    Target,
}

/// The switch between the pool and the target, and the writes in flight to the pool.
#[derive(Debug)]
struct Switch {
    /// The phase, and how many writes sent to the pool are not answered yet: one lock, so a write is either
    /// counted before the pause starts or waits for its end.
    state: Mutex<(Phase, u64)>,
    changed: watch::Sender<Phase>,
    answered: tokio::sync::Notify,
}

/// A write's place, while its reply is awaited (pool writes are counted for the cutover).
enum Side {
    Pool,
    Target,
}

impl Switch {
    fn new() -> Switch {
        Switch {
            state: Mutex::new((Phase::Source, 0)),
            changed: watch::channel(Phase::Source).0,
            answered: tokio::sync::Notify::new(),
        }
    }

    fn phase(&self) -> Phase {
        lock(&self.state).0
    }

    /// Where a write goes now: waits while writes are paused; a pool write is counted until
    /// [`Switch::write_answered`].
    async fn write_side(&self) -> Side {
        let mut rx = self.changed.subscribe();
        loop {
            {
                let mut st = lock(&self.state);
                match st.0 {
                    Phase::Source => {
                        st.1 += 1;
                        return Side::Pool;
                    }
                    Phase::Target => return Side::Target,
                    Phase::Pausing => {}
                }
            }
            if rx.changed().await.is_err() {
                return Side::Pool;
            }
        }
    }

    fn write_answered(&self) {
        let mut st = lock(&self.state);
        st.1 = st.1.saturating_sub(1);
        if st.1 == 0 {
            self.answered.notify_waiters();
        }
    }

    fn read_side(&self) -> Side {
        match self.phase() {
            Phase::Target => Side::Target,
            _ => Side::Pool,
        }
    }

    fn set(&self, phase: Phase) {
        lock(&self.state).0 = phase;
        let _ = self.changed.send(phase);
    }

    /// Wait until no write sent to the pool is unanswered.
    async fn drained(&self) {
        loop {
            let notified = self.answered.notified();
            if lock(&self.state).1 == 0 {
                return;
            }
            notified.await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The running proxy: routing, backends, figures; the status endpoint's [`crate::status::Control`].
#[derive(Debug)]
pub struct Proxy {
    router: Router,
    servers: Vec<Backend>,
    /// Where each server is, for its `master_repl_offset`.
    server_addrs: Vec<RedisAddr>,
    target: Arc<target::Target>,
    /// The pool's `redis_auth`, which clients must give.
    password: Option<crate::endpoint::Secret>,
    switch: Switch,
    status: Arc<Status>,
    /// Stops the sync after the cutover.
    sync_stop: CancellationToken,
    cutover_timeout: Duration,
    clients: AtomicU64,
    ops: AtomicU64,
    /// The last cutover's write pause, in ms (-1: none yet).
    pause_ms: Mutex<Option<f64>>,
    /// One cutover at a time.
    cutting: tokio::sync::Mutex<()>,
    /// This proxy (for the cutover's own task).
    me: Mutex<std::sync::Weak<Proxy>>,
    /// Set once the sync task has ended.
    sync_done: watch::Sender<bool>,
}

impl crate::status::Control for Proxy {
    fn cutover(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = (u16, String)> + Send + '_>> {
        Box::pin(async move {
            // In a task of its own: a caller that goes away (the HTTP request dropped) must not leave the
            // writes paused half way.
            let Some(me) = lock(&self.me).upgrade() else {
                return (
                    503,
                    serde_json::json!({"cut_over": false, "error": "stopping"}).to_string(),
                );
            };
            match tokio::spawn(async move { me.cut_over().await }).await {
                Ok(Ok(v)) => (200, v.to_string()),
                Ok(Err(v)) => (409, v.to_string()),
                Err(e) => (
                    500,
                    serde_json::json!({"cut_over": false, "error": e.to_string()}).to_string(),
                ),
            }
        })
    }

    fn describe(&self) -> serde_json::Value {
        let phase = match self.switch.phase() {
            Phase::Source if self.caught_up() => "caught_up",
            Phase::Source => "syncing",
            Phase::Pausing => "pausing",
            Phase::Target => "cut_over",
        };
        let mut errors = serde_json::Map::new();
        for b in self.servers.iter().chain(self.target.backends().iter()) {
            errors.insert(b.name.clone(), b.errors.load(Ordering::Relaxed).into());
        }
        serde_json::json!({
            "phase": phase,
            "clients": self.clients.load(Ordering::Relaxed),
            "ops_total": self.ops.load(Ordering::Relaxed),
            "write_pause_ms": *lock(&self.pause_ms),
            "backend_errors": errors,
        })
    }
}

impl Proxy {
    /// Every source streams with nothing left to apply.
    fn caught_up(&self) -> bool {
        let sources = self.status.sources();
        !sources.is_empty()
            && sources.iter().all(|s| {
                s.state() == crate::status::SourceState::Streaming && s.lag_bytes() == Some(0)
            })
    }

    /// The cutover (see the module docs): `Ok` with the figures once the target serves the clients, `Err`
    /// with the reason when nothing switched.
    async fn cut_over(&self) -> Result<serde_json::Value, serde_json::Value> {
        let _one = self.cutting.lock().await;
        match self.switch.phase() {
            Phase::Target => {
                return Err(serde_json::json!({"cut_over": true, "error": "already cut over"}));
            }
            Phase::Pausing => unreachable!("one cutover at a time"),
            Phase::Source => {}
        }
        let deadline = Instant::now() + self.cutover_timeout;
        let started = Instant::now();
        self.switch.set(Phase::Pausing);
        tracing::info!("cutover: client writes paused; waiting for the sync to apply everything");
        let refuse = |why: String| {
            self.switch.set(Phase::Source);
            tracing::warn!(reason = %why, "cutover refused: client writes resume on the pool; nothing switched");
            serde_json::json!({"cut_over": false, "error": why})
        };
        if tokio::time::timeout_at(deadline.into(), self.switch.drained())
            .await
            .is_err()
        {
            return Err(refuse(format!(
                "writes sent to the pool were not answered within {:?}",
                self.cutover_timeout
            )));
        }
        let pool_answered = started.elapsed();
        // Every write the pool acknowledged is in its servers' offsets now.
        let mut want = Vec::new();
        for a in &self.server_addrs {
            match tokio::time::timeout_at(deadline.into(), crate::follow::master_offset(a)).await {
                Ok(Ok(o)) => want.push((a.host_port(), o)),
                Ok(Err(e)) => {
                    return Err(refuse(format!("reading {}'s offset: {e}", a.host_port())))
                }
                Err(_) => {
                    return Err(refuse(format!(
                        "reading {}'s offset: no answer in time",
                        a.host_port()
                    )))
                }
            }
        }
        loop {
            let sources = self.status.sources();
            let behind: Vec<String> = want
                .iter()
                .filter_map(|(hp, o)| {
                    let applied = sources
                        .iter()
                        .find(|s| host_port_of(s.name()) == hp.as_str())
                        .map(|s| s.applied_offset())
                        .unwrap_or(-1);
                    (applied < *o).then(|| format!("{hp} applied {applied} of {o}"))
                })
                .collect();
            if behind.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(refuse(format!(
                    "the sync did not catch up within {:?}: {}",
                    self.cutover_timeout,
                    behind.join(", ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let caught_up = started.elapsed();
        // The sync stops (drained) before the switch: what the pool's servers still send (an expired key's
        // DEL, …) must not land on the target after the clients' first writes there.
        self.sync_stop.cancel();
        let mut done = self.sync_done.subscribe();
        while !*done.borrow_and_update() {
            if done.changed().await.is_err() {
                break;
            }
        }
        self.switch.set(Phase::Target);
        let stopped = started.elapsed();
        let pause = stopped.as_secs_f64() * 1000.0;
        *lock(&self.pause_ms) = Some(pause);
        let ms = |d: Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
        // Where the pause went: the pool answering the writes in flight, the sync applying the servers'
        // last offsets, the sync stopping.
        let parts = serde_json::json!({
            "pool_answered": ms(pool_answered),
            "catch_up": ms(caught_up - pool_answered),
            "sync_stop": ms(stopped - caught_up),
        });
        tracing::info!(
            write_pause_ms = format!("{pause:.1}"),
            pause_parts_ms = %parts,
            "cutover done: the sync stopped; clients are served by the target"
        );
        let offsets: serde_json::Map<String, serde_json::Value> =
            want.into_iter().map(|(hp, o)| (hp, o.into())).collect();
        Ok(serde_json::json!({
            "cut_over": true,
            "write_pause_ms": pause,
            "pause_parts_ms": parts,
            "offsets_applied": offsets,
        }))
    }
}

/// Run `ferry proxy` until `cancel`.
pub async fn run(cfg: ProxyConfig, cancel: CancellationToken) -> Result<(), String> {
    let Some(SourceSpec::Twemproxy { path, pool }) = cfg.job.sources.first().cloned() else {
        return Err("ferry proxy takes one source: twemproxy:PATH[#POOL]".into());
    };
    if cfg.job.sources.len() != 1 {
        return Err("ferry proxy takes one source: twemproxy:PATH[#POOL]".into());
    }
    let target = match cfg.job.targets.as_slice() {
        [t @ (TargetSpec::Redis(_) | TargetSpec::Cluster(_))] => target::Target::start(t).await?,
        _ => {
            return Err(
                "ferry proxy takes one target: a redis://[user:password@]host:port server or a \
                 cluster://… Redis Cluster (a twemproxy target is not supported by the proxy)"
                    .into(),
            )
        }
    };
    let conf = crate::twemproxy::TwemproxyConfig::load(&path).map_err(|e| e.to_string())?;
    let p = conf
        .select_pool(pool.as_deref())
        .map_err(|e| e.to_string())?;
    let router = Router::new(p).map_err(|e| e.to_string())?;
    if p.auto_eject_hosts {
        tracing::warn!(
            pool = %p.name,
            "auto_eject_hosts is on in the pool, but ferry proxy never ejects a server: a server that is down \
             makes its keys' commands fail instead of moving them to another server (whose data the sync \
             would not copy)"
        );
    }
    let mut masters = p.masters().map_err(|e| e.to_string())?;
    if let Some(auth) = &cfg.job.pool_auth {
        for m in masters.iter_mut() {
            m.auth = Some(auth.clone());
        }
    }
    let listen = match (cfg.listen, &p.listen) {
        (Some(a), _) => a,
        (None, crate::twemproxy::Listen::Tcp { host, port }) => format!("{host}:{port}")
            .parse()
            .map_err(|e| format!("pool {}: listen {host}:{port}: {e} (give --listen)", p.name))?,
        (None, other) => {
            return Err(format!(
                "pool {}: listen {other} is not a TCP address: give --listen HOST:PORT",
                p.name
            ))
        }
    };
    let status = Arc::new(Status::new());
    let sync_stop = cancel.child_token();
    let proxy = Arc::new(Proxy {
        router,
        servers: masters
            .iter()
            .map(|m| Backend::spawn(m.clone(), p.redis_db))
            .collect(),
        server_addrs: masters.clone(),
        target: Arc::new(target),
        password: p.redis_auth.clone(),
        switch: Switch::new(),
        status: status.clone(),
        sync_stop: sync_stop.clone(),
        cutover_timeout: cfg.cutover_timeout,
        clients: AtomicU64::new(0),
        ops: AtomicU64::new(0),
        pause_ms: Mutex::new(None),
        cutting: tokio::sync::Mutex::new(()),
        me: Mutex::new(std::sync::Weak::new()),
        sync_done: watch::channel(false).0,
    });
    *lock(&proxy.me) = Arc::downgrade(&proxy);
    status.set_control(proxy.clone());
    let endpoint_stop = CancellationToken::new();
    let _endpoint_guard = endpoint_stop.clone().drop_guard();
    if let Some(addr) = cfg.job.status_addr {
        crate::status::serve(addr, status.clone(), endpoint_stop.clone())
            .await
            .map_err(|e| e.to_string())?;
    }
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let job = SyncConfig {
        status_addr: None,
        ..cfg.job.clone()
    };
    let sync = tokio::spawn({
        let (status, stop) = (status.clone(), sync_stop.clone());
        async move { crate::sync::run_with_status(job, stop, status).await }
    });
    tracing::info!(listen = %listen, pool = %p.name, servers = masters.len(),
        "ferry proxy: serving the pool's clients while syncing it into the target");
    let mut sync = Some(sync);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((sock, _)) => {
                    let _ = sock.set_nodelay(true);
                    tokio::spawn(serve_client(sock, proxy.clone(), cancel.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a client failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            r = async { sync.as_mut().expect("present").await }, if sync.is_some() => {
                sync = None;
                let _ = proxy.sync_done.send(true);
                match r {
                    Ok(Ok(_)) if proxy.switch.phase() == Phase::Target => {
                        tracing::info!("the sync stopped after the cutover; the proxy serves the target");
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        if proxy.switch.phase() != Phase::Target {
                            return Err(format!("the sync failed: {e}"));
                        }
                        tracing::warn!(error = %e, "the sync ended with an error after the cutover");
                    }
                    Err(e) => return Err(format!("the sync task failed: {e}")),
                }
            }
            _ = cancel.cancelled() => break,
        }
    }
    if let Some(s) = sync {
        let _ = s.await;
    }
    Ok(())
}

/// The `host:port` of a source's status name (`redis://[user@]host:port`).
fn host_port_of(name: &str) -> &str {
    let rest = name.strip_prefix("redis://").unwrap_or(name);
    rest.rsplit_once('@').map_or(rest, |(_, hp)| hp)
}

/// A reply the proxy writes itself.
fn simple(s: &str) -> Vec<u8> {
    format!("{s}\r\n").into_bytes()
}

fn error_reply(msg: &str) -> Vec<u8> {
    format!("-ERR {}\r\n", msg.replace(['\r', '\n'], " ")).into_bytes()
}

type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = Vec<u8>> + Send>>;

/// Bytes of ready replies gathered into one write to a client.
const REPLY_BATCH: usize = 64 * 1024;

/// The reply, if it is there without waiting (polled once; a pending reply is polled again, with a real
/// waker, when awaited).
fn ready_now(p: &mut Pending) -> Option<Vec<u8>> {
    let mut cx = std::task::Context::from_waker(noop_waker());
    match p.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(reply) => Some(reply),
        std::task::Poll::Pending => None,
    }
}

/// A waker that does nothing (`Waker::noop` is newer than our MSRV).
fn noop_waker() -> &'static std::task::Waker {
    struct Noop;
    impl std::task::Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }
    static NOOP: std::sync::OnceLock<std::task::Waker> = std::sync::OnceLock::new();
    NOOP.get_or_init(|| std::task::Waker::from(Arc::new(Noop)))
}

/// One client: requests read and routed in order, replies written in the same order.
async fn serve_client(sock: TcpStream, proxy: Arc<Proxy>, cancel: CancellationToken) {
    proxy.clients.fetch_add(1, Ordering::Relaxed);
    let (mut rd, mut wr) = sock.into_split();
    let (tx, mut rx) = mpsc::channel::<Option<Pending>>(1024);
    let writer = tokio::spawn(async move {
        let mut out = Vec::new();
        let mut next: Option<Pending> = None;
        loop {
            let p = match next.take() {
                Some(p) => p,
                None => match rx.recv().await {
                    Some(Some(p)) => p,
                    _ => break,
                },
            };
            out.clear();
            out.extend_from_slice(&p.await);
            // The replies that are ready already go in the same write (a pipelining client's batch
            // comes back in one system call, not one per command); the first that is not waits.
            let mut end = false;
            while out.len() < REPLY_BATCH {
                match rx.try_recv() {
                    Ok(Some(mut p)) => match ready_now(&mut p) {
                        Some(reply) => out.extend_from_slice(&reply),
                        None => {
                            next = Some(p);
                            break;
                        }
                    },
                    Ok(None) => {
                        end = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            if wr.write_all(&out).await.is_err() {
                return;
            }
            if end {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut dec = resp::CommandDecoder::with_max_bulk_len(512 << 20);
    let mut authed = proxy.password.is_none();
    'conn: loop {
        let n = tokio::select! {
            r = rd.read_buf(&mut buf) => r,
            _ = cancel.cancelled() => break,
        };
        match n {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        loop {
            let args = match crate::serve::next_request(&mut buf, &mut dec) {
                Ok(Some(a)) if a.is_empty() => continue,
                Ok(Some(a)) => a,
                Ok(None) => break,
                Err(_) => break 'conn,
            };
            proxy.ops.fetch_add(1, Ordering::Relaxed);
            let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
            let route = table::route(&name, &args);
            let ready = |b: Vec<u8>| -> Pending { Box::pin(async move { b }) };
            let pending: Pending = match route {
                Route::Close => break 'conn,
                Route::Local(Local::Ping) => ready(simple("+PONG")),
                Route::Local(Local::Quit) => {
                    let _ = tx.send(Some(ready(simple("+OK")))).await;
                    break 'conn;
                }
                Route::Local(Local::Auth) => match &proxy.password {
                    None => ready(error_reply("Client sent AUTH, but no password is set")),
                    Some(p) if p.expose().as_bytes() == args[1].as_slice() => {
                        authed = true;
                        ready(simple("+OK"))
                    }
                    Some(_) => ready(error_reply("invalid password")),
                },
                _ if !authed => ready(simple("-NOAUTH Authentication required.")),
                route => dispatch(&proxy, &name, route, args).await,
            };
            if tx.send(Some(pending)).await.is_err() {
                break 'conn;
            }
        }
    }
    let _ = tx.send(None).await;
    drop(tx);
    let _ = writer.await;
    proxy.clients.fetch_sub(1, Ordering::Relaxed);
}

/// Send a routed request where the switch says; the reply, as its future.
async fn dispatch(proxy: &Arc<Proxy>, name: &str, route: Route, args: Vec<Vec<u8>>) -> Pending {
    let write = !table::is_read(name);
    let side = if write {
        proxy.switch.write_side().await
    } else {
        proxy.switch.read_side()
    };
    let proxy = proxy.clone();
    match side {
        Side::Target => proxy.target.request(route, args).await,
        Side::Pool if write => {
            // The cutover waits for this write's answer from the pool, whatever happens to its client (which
            // may stop reading, or go): the backends hold its ticket until the servers answered.
            let ticket: backend::Hold = Arc::new(WriteTicket(proxy.clone()));
            Box::pin(pool_request(proxy, route, args, Some(ticket)).await)
        }
        Side::Pool => Box::pin(pool_request(proxy, route, args, None).await),
    }
}

fn one(a: backend::Answer) -> Vec<u8> {
    match a {
        Ok(frames) => frames.into_iter().flat_map(|f| f.to_vec()).collect(),
        Err(e) => error_reply(&e),
    }
}

/// A write counted by [`Switch::write_side`] as in flight to the pool; answered when the last holder drops
/// it (every server the write went to answered, or its connection failed).
struct WriteTicket(Arc<Proxy>);

impl Drop for WriteTicket {
    fn drop(&mut self) {
        self.0.switch.write_answered();
    }
}

/// A request to the pool's servers, as nutcracker sends it. The request is handed to the backends now
/// (keeping the client's order on each server), each part holding `hold` until its server answered; the
/// returned future merges the replies.
async fn pool_request(
    proxy: Arc<Proxy>,
    route: Route,
    args: Vec<Vec<u8>>,
    hold: Option<backend::Hold>,
) -> impl std::future::Future<Output = Vec<u8>> + Send {
    let encode = |args: &[&[u8]]| {
        let mut out = BytesMut::new();
        resp::encode_command(&mut out, args);
        out.to_vec()
    };
    // Each server's part: (server, encoded command, the request's key indexes in it).
    let mut parts: Vec<(usize, Vec<u8>, Vec<usize>)> = Vec::new();
    let mut split = None;
    match route {
        Route::Key(pos) => {
            let s = proxy.router.server_for(&args[pos]);
            let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
            parts.push((s, encode(&refs), Vec::new()));
        }
        Route::Any => {
            let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
            parts.push((0, encode(&refs), Vec::new()));
        }
        Route::Split(kind) => {
            split = Some(kind);
            let step = if kind == Split::Mset { 2 } else { 1 };
            let mut by_server: Vec<(usize, Vec<usize>)> = Vec::new();
            for (i, k) in args[1..].chunks(step).enumerate() {
                let s = proxy.router.server_for(&k[0]);
                match by_server.iter_mut().find(|(x, _)| *x == s) {
                    Some((_, v)) => v.push(i),
                    None => by_server.push((s, vec![i])),
                }
            }
            for (s, idx) in by_server {
                let mut refs: Vec<&[u8]> = vec![&args[0]];
                for &i in &idx {
                    for a in &args[1 + i * step..1 + (i + 1) * step] {
                        refs.push(a);
                    }
                }
                parts.push((s, encode(&refs), idx));
            }
        }
        Route::Local(_) | Route::Close => {}
    }
    let total_keys = if split == Some(Split::Mset) {
        (args.len() - 1) / 2
    } else {
        args.len() - 1
    };
    let mut calls = Vec::with_capacity(parts.len());
    for (s, bytes, idx) in parts {
        calls.push((
            proxy.servers[s]
                .submit_holding(bytes, 1, hold.clone())
                .await,
            idx,
        ));
    }
    async move {
        let mut answers = Vec::with_capacity(calls.len());
        for (call, idx) in calls {
            answers.push((call.await, idx));
        }
        match split {
            None => one(answers
                .pop()
                .map(|(a, _)| a)
                .unwrap_or(Err("no server".into()))),
            Some(kind) => merge(kind, answers, total_keys),
        }
    }
}

/// The reply to a command nutcracker cuts per server, from the servers' replies.
fn merge(kind: Split, answers: Vec<(backend::Answer, Vec<usize>)>, keys: usize) -> Vec<u8> {
    let mut values: Vec<Option<Vec<u8>>> = vec![None; keys];
    let mut count = 0i64;
    for (a, idx) in answers {
        let frame = match a {
            Ok(mut f) if f.len() == 1 => f.remove(0),
            Ok(_) => return error_reply("ferry proxy: a server answered an unexpected reply"),
            Err(e) => return error_reply(&e),
        };
        if frame.first() == Some(&b'-') {
            return frame.to_vec();
        }
        match kind {
            Split::Mset => {}
            Split::Count => match std::str::from_utf8(&frame[1..frame.len().saturating_sub(2)])
                .ok()
                .and_then(|n| n.parse::<i64>().ok())
            {
                Some(n) if frame.first() == Some(&b':') => count += n,
                _ => return error_reply("ferry proxy: a server answered a non-integer"),
            },
            Split::Mget => match resp::array_items(&frame) {
                Ok(Some(items)) if items.len() == idx.len() => {
                    for ((_, range), i) in items.into_iter().zip(idx) {
                        values[i] = Some(frame[range].to_vec());
                    }
                }
                _ => return error_reply("ferry proxy: a server answered MGET with a bad array"),
            },
        }
    }
    match kind {
        Split::Mset => simple("+OK"),
        Split::Count => format!(":{count}\r\n").into_bytes(),
        Split::Mget => {
            let mut out = format!("*{keys}\r\n").into_bytes();
            for v in values {
                out.extend_from_slice(&v.unwrap_or_else(|| b"$-1\r\n".to_vec()));
            }
            out
        }
    }
}
