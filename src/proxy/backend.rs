//! One server behind `ferry proxy` (a pool's server, or the target): one pipelined connection that every
//! client's requests share, as nutcracker multiplexes its server connections. Replies come back in the
//! order the requests were written and are handed to each request's waiter as raw frames.
//!
//! Requests queued while a write is under way go out together in the next one (up to [`WRITE_BATCH`]
//! bytes), as nutcracker gathers its queued messages into one `writev`: with 50 clients pipelining, one
//! system call carries hundreds of commands instead of one each.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::endpoint::RedisAddr;
use crate::resp;
use crate::target::client::{Client, Role};

/// What a request gets back: its reply frames, or why the server could not answer.
pub type Answer = Result<Vec<Bytes>, String>;

/// Anything a request keeps alive until the server answered it or the connection failed (dropped then,
/// whatever the request's client does meanwhile): the cutover's count of writes in flight to the pool.
pub type Hold = Arc<dyn std::any::Any + Send + Sync>;

/// Bytes of queued requests gathered into one write.
const WRITE_BATCH: usize = 64 * 1024;

struct Req {
    bytes: Vec<u8>,
    waiter: Waiter,
}

/// A request written to the server, waiting for its reply frames.
struct Waiter {
    replies: usize,
    frames: Vec<Bytes>,
    done: oneshot::Sender<Answer>,
    _hold: Option<Hold>,
}

/// A shared connection to one server.
#[derive(Clone, Debug)]
pub struct Backend {
    tx: mpsc::Sender<Req>,
    /// `host:port` (never a password).
    pub name: String,
    /// Requests that got no answer from the server (connection lost or refused), for status.
    pub errors: Arc<AtomicU64>,
}

impl Backend {
    /// Start the connection's task (it connects at the first request, and again after a failure), in
    /// `db`.
    pub fn spawn(addr: RedisAddr, db: u32) -> Backend {
        let (tx, rx) = mpsc::channel(4096);
        let errors = Arc::new(AtomicU64::new(0));
        let name = addr.host_port();
        tokio::spawn(run(addr, db, rx, errors.clone()));
        Backend { tx, name, errors }
    }

    /// Queue encoded commands expecting `replies` reply frames (requests reach the server in the order
    /// they are queued); the returned future resolves with the frames.
    pub async fn submit(
        &self,
        bytes: Vec<u8>,
        replies: usize,
    ) -> impl std::future::Future<Output = Answer> + Send + 'static {
        self.submit_holding(bytes, replies, None).await
    }

    /// [`Backend::submit`], keeping `hold` alive until the server answered (or the connection failed),
    /// even when the returned future is dropped.
    pub async fn submit_holding(
        &self,
        bytes: Vec<u8>,
        replies: usize,
        hold: Option<Hold>,
    ) -> impl std::future::Future<Output = Answer> + Send + 'static {
        let (done, rx) = oneshot::channel();
        let req = Req {
            bytes,
            waiter: Waiter {
                replies,
                frames: Vec::new(),
                done,
                _hold: hold,
            },
        };
        let stopping = format!("{}: the proxy is stopping", self.name);
        let sent = self.tx.send(req).await.is_ok();
        async move {
            if !sent {
                return Err(stopping);
            }
            rx.await.unwrap_or(Err(stopping))
        }
    }
}

async fn run(addr: RedisAddr, db: u32, mut rx: mpsc::Receiver<Req>, errors: Arc<AtomicU64>) {
    let name = addr.host_port();
    let mut first = None;
    loop {
        let req = match first.take() {
            Some(r) => r,
            None => match rx.recv().await {
                Some(r) => r,
                None => return,
            },
        };
        let stream = match connect(&addr, db).await {
            Ok(s) => s,
            Err(e) => {
                errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(server = %name, error = %e, "ferry proxy: cannot reach the server");
                let _ = req.waiter.done.send(Err(format!("{name}: {e}")));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (mut rd, mut wr) = stream.into_split();
        let mut queue: VecDeque<Waiter> = VecDeque::new();
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let mut out: Vec<u8> = Vec::with_capacity(WRITE_BATCH);
        let mut pending = Some(req);
        let why = 'conn: loop {
            if let Some(r) = pending.take() {
                // This request and whatever else is queued already, in one write.
                out.clear();
                out.extend_from_slice(&r.bytes);
                queue.push_back(r.waiter);
                while out.len() < WRITE_BATCH {
                    let Ok(r) = rx.try_recv() else { break };
                    out.extend_from_slice(&r.bytes);
                    queue.push_back(r.waiter);
                }
                if out.capacity() > 4 * WRITE_BATCH {
                    // One huge request: do not keep its buffer for the connection's life.
                    let batch = std::mem::take(&mut out);
                    if let Err(e) = wr.write_all(&batch).await {
                        break 'conn e.to_string();
                    }
                } else if let Err(e) = wr.write_all(&out).await {
                    break 'conn e.to_string();
                }
            }
            tokio::select! {
                r = rx.recv() => match r {
                    Some(r) => pending = Some(r),
                    None if queue.is_empty() => return,
                    None => {}
                },
                read = rd.read_buf(&mut buf) => match read {
                    Ok(0) => break 'conn "closed by the server".to_string(),
                    Err(e) => break 'conn e.to_string(),
                    Ok(_) => loop {
                        let len = match resp::skip_reply(&buf) {
                            Ok(Some((_, len))) => len,
                            Ok(None) => break,
                            Err(e) => break 'conn format!("protocol error: {e}"),
                        };
                        let frame = buf.split_to(len).freeze();
                        let Some(front) = queue.front_mut() else {
                            break 'conn "a reply for no request".to_string();
                        };
                        front.frames.push(frame);
                        if front.frames.len() >= front.replies {
                            let w = queue.pop_front().expect("front exists");
                            let _ = w.done.send(Ok(w.frames));
                        }
                    },
                },
            }
        };
        // Whatever was written and not answered: the client gets an error (it may or may not have been
        // applied, as with nutcracker).
        tracing::warn!(server = %name, error = %why, unanswered = queue.len(), "ferry proxy: server connection lost");
        for w in queue.drain(..) {
            errors.fetch_add(1, Ordering::Relaxed);
            let _ = w.done.send(Err(format!("{name}: connection lost ({why})")));
        }
        first = None;
    }
}

async fn connect(addr: &RedisAddr, db: u32) -> Result<tokio::net::TcpStream, String> {
    let mut c = Client::connect_as(addr, Role::Target, Duration::from_secs(5))
        .await
        .map_err(|e| e.to_string())?;
    if db != 0 {
        c.cmd_ok(&[b"SELECT", db.to_string().as_bytes()])
            .await
            .map_err(|e| e.to_string())?;
    }
    let s = c.into_stream().map_err(|e| e.to_string())?;
    let _ = s.set_nodelay(true);
    Ok(s)
}
