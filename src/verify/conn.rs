//! A pipelined, read-only connection to one server (a source master or a target node).
//!
//! [`crate::target::client::Client`] answers one command at a time; verifying needs hundreds of commands
//! per round trip, so this connection queues a [`Pipeline`] and reads all its replies in order. It reuses
//! the target client's TCP setup ([`connect_tcp`]) and ferry's RESP encoder and reply parser.
//!
//! Everything verify sends is a read, so a pipeline that failed on a lost connection is sent again whole
//! after a reconnect (with the db selected again): the replies are the same kind of answer either way.

use std::fmt;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::endpoint::RedisAddr;
use crate::resp::{self, Reply};
use crate::target::client::connect_tcp;
use crate::target::TargetError;

/// Which side of the comparison a server is on; every error names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Source,
    Target,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Source => "source",
            Role::Target => "target",
        })
    }
}

/// Why verifying could not be done (as opposed to: it was done and found differences). Messages name the
/// side and the server, never a password.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{role} {addr}: cannot connect: {msg}")]
    Connect {
        role: Role,
        addr: String,
        msg: String,
    },
    #[error("{role} {addr}: connection lost: {msg}")]
    Io {
        role: Role,
        addr: String,
        msg: String,
    },
    #[error(
        "{role} {addr}: authentication failed: {msg} (check the user and password in its URL)"
    )]
    Auth {
        role: Role,
        addr: String,
        msg: String,
    },
    #[error("{role} {addr}: {what} answered {msg}")]
    Command {
        role: Role,
        addr: String,
        what: String,
        msg: String,
    },
    #[error("{role} {addr}: protocol error: {detail}")]
    Protocol {
        role: Role,
        addr: String,
        detail: String,
    },
    #[error("{role} {addr}: no answer within {secs} s")]
    Timeout { role: Role, addr: String, secs: u64 },
    /// The job cannot run as configured (bad option combination, unreadable twemproxy config).
    #[error("{0}")]
    Config(String),
    /// Stopped by SIGINT/SIGTERM before the comparison finished.
    #[error("interrupted before the comparison finished")]
    Cancelled,
}

impl VerifyError {
    /// Whether reconnecting and sending again can help.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            VerifyError::Connect { .. } | VerifyError::Io { .. } | VerifyError::Timeout { .. }
        )
    }
}

/// Commands queued for one round trip.
#[derive(Default)]
pub struct Pipeline {
    buf: BytesMut,
    n: usize,
}

impl Pipeline {
    pub fn new() -> Pipeline {
        Pipeline::default()
    }

    /// Queue a command; returns its position in the replies.
    pub fn push(&mut self, args: &[&[u8]]) -> usize {
        resp::encode_command(&mut self.buf, args);
        self.n += 1;
        self.n - 1
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

/// How often and how long a lost connection is reopened before verify gives up.
const RECONNECT_ATTEMPTS: u32 = 5;

/// One connection with the db it has selected.
pub struct Conn {
    addr: RedisAddr,
    shown: String,
    role: Role,
    timeout: Duration,
    stream: Option<TcpStream>,
    buf: BytesMut,
    /// The db the open connection has selected (a new connection is on db 0).
    selected: u32,
    /// The db the next pipeline must run in.
    want_db: u32,
    /// Bytes of the replies of the last pipeline (what it made us hold at once).
    last_reply_bytes: u64,
}

impl Conn {
    /// Connect and authenticate.
    pub async fn connect(
        addr: &RedisAddr,
        role: Role,
        timeout: Duration,
    ) -> Result<Conn, VerifyError> {
        let mut c = Conn {
            addr: addr.clone(),
            shown: addr.to_string(),
            role,
            timeout,
            stream: None,
            buf: BytesMut::with_capacity(64 * 1024),
            selected: 0,
            want_db: 0,
            last_reply_bytes: 0,
        };
        c.open().await?;
        Ok(c)
    }

    /// The server as shown in messages (no password).
    pub fn shown(&self) -> &str {
        &self.shown
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Bytes of the replies of the last pipeline run.
    pub fn last_reply_bytes(&self) -> u64 {
        self.last_reply_bytes
    }

    /// Run later pipelines in `db`.
    pub fn select(&mut self, db: u32) {
        self.want_db = db;
    }

    async fn open(&mut self) -> Result<(), VerifyError> {
        self.stream = None;
        self.buf.clear();
        let stream =
            connect_tcp(&self.addr, self.timeout)
                .await
                .map_err(|e| VerifyError::Connect {
                    role: self.role,
                    addr: self.shown.clone(),
                    msg: match e {
                        TargetError::Connect { source, .. } => source.to_string(),
                        other => other.to_string(),
                    },
                })?;
        self.stream = Some(stream);
        self.selected = 0;
        if let Some(auth) = self.addr.auth.clone() {
            let mut p = Pipeline::new();
            match &auth.user {
                Some(u) => p.push(&[b"AUTH", u.as_bytes(), auth.password.expose().as_bytes()]),
                None => p.push(&[b"AUTH", auth.password.expose().as_bytes()]),
            };
            let r = self.exchange(&p).await?;
            if let Some(Reply::Error(e)) = r.first() {
                self.stream = None;
                return Err(VerifyError::Auth {
                    role: self.role,
                    addr: self.shown.clone(),
                    msg: String::from_utf8_lossy(e).into_owned(),
                });
            }
        }
        Ok(())
    }

    /// One command, error replies returned as `Reply::Error`.
    pub async fn cmd(&mut self, args: &[&[u8]]) -> Result<Reply, VerifyError> {
        let mut p = Pipeline::new();
        p.push(args);
        let mut r = self.run(&p).await?;
        Ok(r.pop().unwrap_or(Reply::Null))
    }

    /// One command whose error reply is a failure naming it.
    pub async fn cmd_ok(&mut self, args: &[&[u8]]) -> Result<Reply, VerifyError> {
        match self.cmd(args).await? {
            Reply::Error(e) => Err(self.command_error(args.first().copied().unwrap_or(b"?"), &e)),
            r => Ok(r),
        }
    }

    /// A failure of command `what` on this server.
    pub fn command_error(&self, what: &[u8], msg: &[u8]) -> VerifyError {
        VerifyError::Command {
            role: self.role,
            addr: self.shown.clone(),
            what: String::from_utf8_lossy(what).to_uppercase(),
            msg: String::from_utf8_lossy(msg).into_owned(),
        }
    }

    /// Run a pipeline in the selected db; one reply per command, in order. A lost connection is reopened
    /// (with backoff) and the whole pipeline sent again.
    pub async fn run(&mut self, p: &Pipeline) -> Result<Vec<Reply>, VerifyError> {
        if p.is_empty() {
            return Ok(Vec::new());
        }
        let mut attempt = 0;
        loop {
            match self.run_once(p).await {
                Ok(r) => return Ok(r),
                Err(e) if e.is_retryable() && attempt < RECONNECT_ATTEMPTS => {
                    attempt += 1;
                    tracing::warn!(role = %self.role, server = %self.shown, attempt, error = %e,
                        "connection failed while verifying; reconnecting and sending the reads again");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                    self.stream = None;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn run_once(&mut self, p: &Pipeline) -> Result<Vec<Reply>, VerifyError> {
        if self.stream.is_none() {
            self.open().await?;
        }
        if self.selected != self.want_db {
            let db = self.want_db.to_string();
            let mut s = Pipeline::new();
            s.push(&[b"SELECT", db.as_bytes()]);
            let r = self.exchange(&s).await?;
            if let Some(Reply::Error(e)) = r.first() {
                return Err(self.command_error(b"SELECT", e));
            }
            self.selected = self.want_db;
        }
        self.exchange(p).await
    }

    async fn exchange(&mut self, p: &Pipeline) -> Result<Vec<Reply>, VerifyError> {
        let Some(mut stream) = self.stream.take() else {
            return Err(VerifyError::Io {
                role: self.role,
                addr: self.shown.clone(),
                msg: "not connected".into(),
            });
        };
        let res = exchange_on(
            &mut stream,
            &mut self.buf,
            p,
            self.timeout,
            self.role,
            &self.shown,
        )
        .await;
        match res {
            Ok((replies, bytes)) => {
                self.stream = Some(stream);
                self.last_reply_bytes = bytes;
                Ok(replies)
            }
            Err(e) => Err(e),
        }
    }
}

/// Write a pipeline and read one reply per command; also the replies' size in bytes.
async fn exchange_on(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    p: &Pipeline,
    timeout: Duration,
    role: Role,
    shown: &str,
) -> Result<(Vec<Reply>, u64), VerifyError> {
    let io = |e: std::io::Error| VerifyError::Io {
        role,
        addr: shown.to_string(),
        msg: e.to_string(),
    };
    stream.write_all(&p.buf).await.map_err(io)?;
    let mut out = Vec::with_capacity(p.n);
    let mut bytes = 0u64;
    while out.len() < p.n {
        let before = buf.len();
        match resp::parse_reply(buf) {
            Ok(Some(r)) => {
                bytes += (before - buf.len()) as u64;
                out.push(r);
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                return Err(VerifyError::Protocol {
                    role,
                    addr: shown.to_string(),
                    detail: e.to_string(),
                })
            }
        }
        let n = tokio::time::timeout(timeout, stream.read_buf(buf))
            .await
            .map_err(|_| VerifyError::Timeout {
                role,
                addr: shown.to_string(),
                secs: timeout.as_secs(),
            })?
            .map_err(io)?;
        if n == 0 {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed by the server",
            )));
        }
    }
    Ok((out, bytes))
}
