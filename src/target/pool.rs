//! A pool of pipelined connections to one target.
//!
//! Producers encode commands into a [`Batch`] and [`WriterPool::send`] it to one connection (chosen by key,
//! so all writes of one key stay in order on one connection). Each connection is one task that writes
//! batches in order and matches every reply, in order, to the command that caused it. Error replies are
//! counted and logged once per distinct error with the command name and key — never the value.
//!
//! Memory is bounded: a batch's bytes hold permits of a per-connection byte semaphore until its last reply
//! has arrived, so at most `max_inflight_bytes` per connection are buffered or on the wire.
//!
//! A lost connection is re-established with backoff and every command whose reply had not arrived is sent
//! again, from the first unanswered command on (a MULTI…EXEC group counts as one command). Commands marked
//! with a [`ResendRule`] accept the error that a repeat of an already-applied command gives.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;

use super::stats::TargetStats;
use super::TargetError;
use crate::endpoint::RedisAddr;
use crate::resp;

/// Pool settings.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Pipelined connections. Default 4.
    pub connections: usize,
    /// Bytes a connection may have queued or unanswered. Default 32 MiB.
    pub max_inflight_bytes: usize,
    /// Connect timeout. Default 10 s.
    pub connect_timeout: Duration,
    /// How long a lost connection is retried before the pool fails. Default 60 s.
    pub reconnect_for: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            connections: 4,
            max_inflight_bytes: 32 << 20,
            connect_timeout: Duration::from_secs(10),
            reconnect_for: Duration::from_secs(60),
        }
    }
}

/// Which error reply is accepted as success when a command is sent again after a reconnect (the first
/// attempt may have been applied before the connection broke).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResendRule {
    /// Every error is an error.
    Strict,
    /// `RESTORE` without REPLACE: `BUSYKEY` means our first attempt landed.
    BusyKey,
    /// `RENAME tmp key`: `no such key` means our first attempt landed.
    NoSuchKey,
}

/// One command (or one MULTI…EXEC group) of a batch, for reply matching and error reports.
#[derive(Clone, Debug)]
pub struct CmdInfo {
    /// Command name for counters and logs.
    pub name: &'static str,
    /// The key, shown (escaped) in error logs. Never the value.
    pub key: Bytes,
    /// Reply frames this entry produces (1, or N+2 for MULTI + N commands + EXEC).
    pub replies: u32,
    /// End offset of this entry's bytes within the batch.
    pub end: usize,
    pub resend: ResendRule,
}

/// Encoded commands for one connection, all in one database.
#[derive(Debug, Default)]
pub struct Batch {
    /// The db these commands write to (`None`: independent of the selected db). The connection sends SELECT
    /// itself when needed, also after a reconnect.
    pub db: Option<u32>,
    pub bytes: BytesMut,
    pub cmds: Vec<CmdInfo>,
    /// Fired when every reply of this batch has arrived.
    pub done: Option<oneshot::Sender<()>>,
    /// Stored into the atomic when every reply of this batch (and of every batch before it on this
    /// connection) has arrived: the applied-offset mechanism.
    pub applied: Option<(Arc<AtomicI64>, i64)>,
}

impl Batch {
    pub fn new(db: Option<u32>) -> Batch {
        Batch {
            db,
            ..Default::default()
        }
    }

    /// Record that the bytes appended since the previous entry form one command (or group) with `replies`
    /// reply frames.
    pub fn finish_cmd(&mut self, name: &'static str, key: Bytes, replies: u32, resend: ResendRule) {
        self.cmds.push(CmdInfo {
            name,
            key,
            replies,
            end: self.bytes.len(),
            resend,
        });
    }

    /// Append a whole command and record it.
    pub fn push(&mut self, name: &'static str, key: &Bytes, args: &[&[u8]], resend: ResendRule) {
        resp::encode_command(&mut self.bytes, args);
        self.finish_cmd(name, key.clone(), 1, resend);
    }

    pub fn is_empty(&self) -> bool {
        self.cmds.is_empty() && self.done.is_none() && self.applied.is_none()
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }
}

struct Conn {
    tx: mpsc::Sender<(Batch, u32)>,
    inflight: Arc<Semaphore>,
}

/// Several pipelined connections to one target.
pub struct WriterPool {
    conns: Vec<Conn>,
    addr: String,
    max_permits: usize,
    failure: Arc<Mutex<Option<String>>>,
    tasks: tokio_util::task::TaskTracker,
    stats: Arc<TargetStats>,
}

impl WriterPool {
    /// Open `cfg.connections` connections (each authenticated) and start their tasks.
    pub async fn connect(
        addr: &RedisAddr,
        cfg: PoolConfig,
        stats: Arc<TargetStats>,
        cancel: CancellationToken,
    ) -> Result<WriterPool, TargetError> {
        let n = cfg.connections.max(1);
        let max_permits = cfg
            .max_inflight_bytes
            .clamp(1 << 16, Semaphore::MAX_PERMITS);
        let failure = Arc::new(Mutex::new(None));
        let tasks = tokio_util::task::TaskTracker::new();
        let mut conns = Vec::with_capacity(n);
        for i in 0..n {
            let stream = open(addr, &cfg).await?;
            let (tx, rx) = mpsc::channel(64);
            let inflight = Arc::new(Semaphore::new(max_permits));
            let task = ConnTask {
                id: i,
                addr: addr.clone(),
                cfg: cfg.clone(),
                rx,
                inflight: inflight.clone(),
                stats: stats.clone(),
                unanswered: VecDeque::new(),
                cancel: cancel.clone(),
            };
            let failure = failure.clone();
            tasks.spawn(async move {
                if let Err(e) = task.run(stream).await {
                    tracing::error!(error = %e, "target connection failed; its writes could not be applied");
                    *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                }
            });
            conns.push(Conn { tx, inflight });
        }
        tasks.close();
        Ok(WriterPool {
            conns,
            addr: addr.to_string(),
            max_permits,
            failure,
            tasks,
            stats,
        })
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    pub fn stats(&self) -> &Arc<TargetStats> {
        &self.stats
    }

    /// The connection that carries writes of `key` (stable for the pool's life).
    pub fn conn_for_key(&self, key: &[u8]) -> usize {
        // FNV-1a: cheap, stable, good enough to spread keys.
        let mut h: u64 = 0xcbf29ce484222325;
        for b in key {
            h ^= *b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        (h % self.conns.len() as u64) as usize
    }

    fn closed(&self) -> TargetError {
        match self
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            Some(msg) => TargetError::Protocol {
                addr: self.addr.clone(),
                detail: msg,
            },
            None => TargetError::Closed {
                addr: self.addr.clone(),
            },
        }
    }

    /// Queue a batch on connection `idx`, waiting while that connection has too many bytes in flight.
    pub async fn send(&self, idx: usize, batch: Batch) -> Result<(), TargetError> {
        let conn = &self.conns[idx];
        let want = (batch.len().max(1)).min(self.max_permits) as u32;
        let permit = conn
            .inflight
            .clone()
            .acquire_many_owned(want)
            .await
            .map_err(|_| self.closed())?;
        permit.forget();
        conn.tx.send((batch, want)).await.map_err(|_| self.closed())
    }

    /// Wait until every batch sent so far has been answered on every connection.
    pub async fn flush(&self) -> Result<(), TargetError> {
        let mut waits = Vec::with_capacity(self.conns.len());
        for i in 0..self.conns.len() {
            let (tx, rx) = oneshot::channel();
            let mut b = Batch::new(None);
            b.done = Some(tx);
            self.send(i, b).await?;
            waits.push(rx);
        }
        for w in waits {
            w.await.map_err(|_| self.closed())?;
        }
        Ok(())
    }

    /// Flush, then close every connection and wait for their tasks.
    pub async fn close(self) -> Result<(), TargetError> {
        let flushed = self.flush().await;
        let WriterPool { conns, tasks, .. } = self;
        drop(conns);
        tasks.wait().await;
        flushed
    }
}

/// Connect, authenticate (the target URL's credentials), check that the server answers, and hand the very
/// same connection to the writer: a second, unauthenticated connection would see every write refused.
async fn open(addr: &RedisAddr, cfg: &PoolConfig) -> Result<tokio::net::TcpStream, TargetError> {
    let mut c = super::client::Client::connect_with_timeout(addr, cfg.connect_timeout).await?;
    c.cmd_ok(&[b"PING"]).await?;
    c.into_stream()
}

/// A batch written to the socket whose replies have not all arrived.
struct InFlight {
    batch: Batch,
    permits: u32,
    /// Index of the next command whose reply is expected.
    next: usize,
    /// Reply frames of `cmds[next]` already received (for MULTI…EXEC groups).
    frames_seen: u32,
    /// An internal SELECT was written before this batch; its reply comes first.
    select_pending: bool,
    /// This batch's unanswered part was written again after a reconnect.
    resent: bool,
    /// An error reply seen inside the current group (MULTI…EXEC), reported when the group completes.
    group_error: Option<String>,
    /// When the batch was written (for round-trip latency).
    sent: std::time::Instant,
}

struct ConnTask {
    id: usize,
    addr: RedisAddr,
    cfg: PoolConfig,
    rx: mpsc::Receiver<(Batch, u32)>,
    inflight: Arc<Semaphore>,
    stats: Arc<TargetStats>,
    unanswered: VecDeque<InFlight>,
    cancel: CancellationToken,
}

enum Ended {
    /// The producer side closed and everything was answered.
    Done,
    /// The connection broke; reconnect and resend.
    Lost(std::io::Error),
}

impl ConnTask {
    async fn run(mut self, first: tokio::net::TcpStream) -> Result<(), TargetError> {
        let mut stream = first;
        loop {
            match self.serve(stream).await? {
                Ended::Done => return Ok(()),
                Ended::Lost(e) => {
                    tracing::warn!(target_addr = %self.addr, conn = self.id, error = %e,
                        unanswered = self.unanswered.len(), "target connection lost; reconnecting");
                    self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    stream = self.reconnect().await?;
                }
            }
        }
    }

    async fn reconnect(&mut self) -> Result<tokio::net::TcpStream, TargetError> {
        let deadline = tokio::time::Instant::now() + self.cfg.reconnect_for;
        let mut backoff = Duration::from_millis(50);
        loop {
            match open(&self.addr, &self.cfg).await {
                Ok(s) => return Ok(s),
                Err(e) if !e.is_retryable() => return Err(e),
                Err(e) => {
                    if tokio::time::Instant::now() + backoff > deadline {
                        return Err(e);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.cancel.cancelled() => return Err(e),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Write batches and read replies on one connection until the producer is done or the connection breaks.
    async fn serve(&mut self, stream: tokio::net::TcpStream) -> Result<Ended, TargetError> {
        let (mut rd, mut wr) = stream.into_split();
        let mut rbuf = BytesMut::with_capacity(64 * 1024);
        let mut current_db: u32 = 0;
        let mut out = BytesMut::new();

        // Resend what was not answered on the previous connection, from the first unanswered command on.
        for f in self.unanswered.iter_mut() {
            out.clear();
            f.select_pending = false;
            if let Some(db) = f.batch.db {
                if db != current_db {
                    write_select(&mut out, db);
                    f.select_pending = true;
                    current_db = db;
                }
            }
            let start = if f.next == 0 {
                0
            } else {
                f.batch.cmds[f.next - 1].end
            };
            f.frames_seen = 0;
            f.group_error = None;
            f.resent = true;
            self.stats
                .resent
                .fetch_add((f.batch.cmds.len() - f.next) as u64, Ordering::Relaxed);
            out.extend_from_slice(&f.batch.bytes[start..]);
            if let Err(e) = wr.write_all(&out).await {
                return Ok(Ended::Lost(e));
            }
        }

        let mut producer_open = true;
        loop {
            if !producer_open && self.unanswered.is_empty() {
                let _ = wr.shutdown().await;
                return Ok(Ended::Done);
            }
            tokio::select! {
                biased;
                read = rd.read_buf(&mut rbuf) => {
                    match read {
                        Ok(0) => return Ok(Ended::Lost(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof, "closed by the target"))),
                        Ok(_) => self.on_replies(&mut rbuf)?,
                        Err(e) => return Ok(Ended::Lost(e)),
                    }
                }
                next = self.rx.recv(), if producer_open => {
                    let Some((batch, permits)) = next else {
                        producer_open = false;
                        continue;
                    };
                    let mut f = InFlight {
                        batch, permits, next: 0, frames_seen: 0, select_pending: false, resent: false,
                        group_error: None, sent: std::time::Instant::now(),
                    };
                    let mut select = BytesMut::new();
                    if let Some(db) = f.batch.db {
                        if db != current_db && !f.batch.cmds.is_empty() {
                            write_select(&mut select, db);
                            f.select_pending = true;
                            current_db = db;
                        }
                    }
                    let bytes = f.batch.bytes.len() + select.len();
                    self.unanswered.push_back(f);
                    if self.unanswered.back().is_some_and(|f| f.batch.cmds.is_empty() && !f.select_pending) {
                        // A marker batch (flush / applied offset): complete it in order.
                        self.complete_ready();
                        continue;
                    }
                    let f = self.unanswered.back().expect("just pushed");
                    let res = if select.is_empty() {
                        wr.write_all(&f.batch.bytes).await
                    } else {
                        match wr.write_all(&select).await {
                            Ok(()) => wr.write_all(&f.batch.bytes).await,
                            Err(e) => Err(e),
                        }
                    };
                    if let Err(e) = res {
                        return Ok(Ended::Lost(e));
                    }
                    self.stats.bytes_written.fetch_add(bytes as u64, Ordering::Relaxed);
                }
            }
        }
    }

    /// Match every complete reply in `rbuf` to its command.
    fn on_replies(&mut self, rbuf: &mut BytesMut) -> Result<(), TargetError> {
        loop {
            let (err, len) = match resp::reply_error(rbuf) {
                Ok(Some(x)) => x,
                Ok(None) => return Ok(()),
                Err(e) => {
                    return Err(TargetError::Protocol {
                        addr: self.addr.to_string(),
                        detail: e.to_string(),
                    })
                }
            };
            let err: Option<String> = err.map(|r| String::from_utf8_lossy(&rbuf[r]).into_owned());
            rbuf.advance(len);
            self.on_reply(err)?;
        }
    }

    fn on_reply(&mut self, err: Option<String>) -> Result<(), TargetError> {
        let Some(f) = self
            .unanswered
            .iter_mut()
            .find(|f| f.select_pending || f.next < f.batch.cmds.len())
        else {
            return Err(TargetError::Protocol {
                addr: self.addr.to_string(),
                detail: "a reply arrived for no command".into(),
            });
        };
        if f.select_pending {
            f.select_pending = false;
            if let Some(e) = err {
                // SELECT refused (e.g. a cluster or proxy has only db 0): every command of the batch fails.
                return Err(TargetError::Command {
                    addr: self.addr.to_string(),
                    what: format!("SELECT {}", f.batch.db.unwrap_or(0)),
                    msg: e,
                });
            }
            self.complete_ready();
            return Ok(());
        }
        let cmd = &f.batch.cmds[f.next];
        f.frames_seen += 1;
        if err.is_some() && f.group_error.is_none() {
            f.group_error = err;
        }
        if f.frames_seen < cmd.replies {
            return Ok(());
        }
        let error = f.group_error.take();
        f.frames_seen = 0;
        f.next += 1;
        match error {
            None => {
                self.stats.commands_ok.fetch_add(1, Ordering::Relaxed);
            }
            Some(e) => {
                let accepted = f.resent
                    && match cmd.resend {
                        ResendRule::Strict => false,
                        ResendRule::BusyKey => e.starts_with("BUSYKEY"),
                        ResendRule::NoSuchKey => e.contains("no such key"),
                    };
                if accepted {
                    self.stats.commands_ok.fetch_add(1, Ordering::Relaxed);
                } else if self.stats.record_rejection(cmd.name, &e) {
                    tracing::error!(target_addr = %self.addr, command = cmd.name, key = %escape_key(&cmd.key),
                        error = %e, "target rejected a write (further rejections of this kind are counted, not logged)");
                }
            }
        }
        self.complete_ready();
        Ok(())
    }

    /// Retire fully answered batches from the front, in order: release their bytes, fire their markers.
    fn complete_ready(&mut self) {
        while let Some(f) = self.unanswered.front() {
            if f.select_pending || f.next < f.batch.cmds.len() {
                break;
            }
            let mut f = self.unanswered.pop_front().expect("front exists");
            self.inflight.add_permits(f.permits as usize);
            if !f.batch.cmds.is_empty() {
                if let Some(l) = self.stats.latency.get() {
                    l.record(f.sent.elapsed());
                }
            }
            if let Some((atomic, v)) = f.batch.applied.take() {
                atomic.fetch_max(v, Ordering::AcqRel);
            }
            if let Some(done) = f.batch.done.take() {
                let _ = done.send(());
            }
        }
    }
}

fn write_select(out: &mut BytesMut, db: u32) {
    resp::write_array_header(out, 2);
    resp::write_bulk(out, b"SELECT");
    resp::write_bulk_int(out, db as i64);
}

/// A key made safe for a log line: printable ASCII kept, everything else `\xNN`, long keys cut.
pub fn escape_key(key: &[u8]) -> String {
    let mut s = String::with_capacity(key.len().min(128));
    for &b in key.iter().take(128) {
        match b {
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    if key.len() > 128 {
        s.push_str(&format!("…({} bytes)", key.len()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_keys() {
        assert_eq!(escape_key(b"a b\x00\xff\\"), "a b\\x00\\xff\\\\");
        let long = vec![b'k'; 200];
        assert!(escape_key(&long).ends_with("…(200 bytes)"));
    }
}
