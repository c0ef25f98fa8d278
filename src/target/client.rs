//! One connection to a Redis server, for everything but the data path: prechecks, administrative commands,
//! the writer pool's handshake (it then takes the socket over with [`Client::into_stream`]) and the reads of
//! `ferry verify`, hundreds of commands per round trip in a [`Pipeline`].
//!
//! A connection that failed is not used again by [`Client::cmd`] and [`Client::pipeline`]: a command whose
//! reply was lost may have been applied, and only the caller knows whether sending it again is safe.
//! [`Client::run`] sends a [`Pipeline`] and, when the pipeline says so ([`Resend::Safe`]: reads), reopens a
//! lost connection and sends it again whole, in the db chosen with [`Client::use_db`].

use std::fmt;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{ServerInfo, TargetError};
use crate::endpoint::{Auth, RedisAddr};
use crate::info::Info;
use crate::resp::{self, Reply};

/// How long a connect or a single reply may take before we give up.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often [`Client::run`] reopens a lost connection for one pipeline before it gives up (after
/// 0.4 + 0.8 + 1.6 + 3.2 + 6.4 s of pauses).
const RECONNECT_ATTEMPTS: u32 = 5;

/// Which side of a job a server is on. Connections carry it so that what fails can be named.
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

/// Whether a [`Pipeline`] may be sent again whole after its connection was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resend {
    /// Its commands change nothing (reads): sending them again gives the same kind of answer.
    Safe,
    /// Its commands may have been applied when the connection broke: never sent again here.
    Never,
}

/// Commands queued for one round trip, already encoded.
#[derive(Debug)]
pub struct Pipeline {
    buf: BytesMut,
    n: usize,
    resend: Resend,
}

impl Pipeline {
    /// A pipeline of reads: [`Client::run`] sends it again after a reconnect.
    pub fn reads() -> Pipeline {
        Pipeline {
            buf: BytesMut::new(),
            n: 0,
            resend: Resend::Safe,
        }
    }

    /// A pipeline that may change data: a lost connection fails it.
    pub fn writes() -> Pipeline {
        Pipeline {
            resend: Resend::Never,
            ..Pipeline::reads()
        }
    }

    /// Queue a command; returns its position in the replies. `SELECT` does not belong here (the db is the
    /// client's, see [`Client::use_db`], so a reconnect lands in it again).
    pub fn push(&mut self, args: &[&[u8]]) -> usize {
        debug_assert!(
            !args
                .first()
                .is_some_and(|c| c.eq_ignore_ascii_case(b"SELECT")),
            "SELECT in a Pipeline: use Client::use_db"
        );
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

    pub fn resend(&self) -> Resend {
        self.resend
    }
}

/// One connection, its db, and what is needed to open it again.
pub struct Client {
    /// `None` once the connection failed (until [`Client::run`] reopens it).
    stream: Option<TcpStream>,
    /// Replies read and not yet parsed.
    buf: BytesMut,
    /// With its credentials, to reconnect (a [`crate::endpoint::Secret`] never prints). Boxed: a client is
    /// kept in enums beside small variants.
    target: Box<RedisAddr>,
    /// The address as shown in messages (no password).
    addr: String,
    role: Role,
    timeout: Duration,
    /// The db the open connection has selected (a new connection is in db 0).
    selected: u32,
    /// The db [`Client::run`] runs pipelines in.
    want_db: u32,
    /// Bytes of the replies of the last [`Client::run`].
    last_reply_bytes: u64,
}

impl Client {
    /// Connect and authenticate (a target, [`DEFAULT_TIMEOUT`]).
    pub async fn connect(addr: &RedisAddr) -> Result<Client, TargetError> {
        Self::connect_with_timeout(addr, DEFAULT_TIMEOUT).await
    }

    /// Connect and authenticate to a target.
    pub async fn connect_with_timeout(
        addr: &RedisAddr,
        timeout: Duration,
    ) -> Result<Client, TargetError> {
        Self::connect_as(addr, Role::Target, timeout).await
    }

    /// Connect and authenticate to a server on either side.
    pub async fn connect_as(
        addr: &RedisAddr,
        role: Role,
        timeout: Duration,
    ) -> Result<Client, TargetError> {
        let mut c = Client {
            stream: None,
            buf: BytesMut::with_capacity(16 * 1024),
            target: Box::new(addr.clone()),
            addr: addr.to_string(),
            role,
            timeout,
            selected: 0,
            want_db: 0,
            last_reply_bytes: 0,
        };
        c.open().await?;
        Ok(c)
    }

    /// A fresh connection, authenticated, in db 0.
    async fn open(&mut self) -> Result<(), TargetError> {
        self.stream = None;
        self.buf.clear();
        self.stream = Some(connect_tcp(&self.target, self.timeout).await?);
        self.selected = 0;
        if let Some(auth) = self.target.auth.clone() {
            self.auth(&auth).await?;
        }
        Ok(())
    }

    async fn auth(&mut self, auth: &Auth) -> Result<(), TargetError> {
        let reply = match &auth.user {
            Some(user) => {
                self.cmd(&[b"AUTH", user.as_bytes(), auth.password.expose().as_bytes()])
                    .await?
            }
            None => {
                self.cmd(&[b"AUTH", auth.password.expose().as_bytes()])
                    .await?
            }
        };
        if let Reply::Error(e) = reply {
            self.stream = None;
            return Err(TargetError::Auth {
                addr: self.addr.clone(),
                msg: String::from_utf8_lossy(&e).into_owned(),
            });
        }
        Ok(())
    }

    /// The authenticated connection itself, for a pipelined writer to take over. Fails if a reply is still
    /// buffered (the caller must have read every reply) or the connection failed.
    pub fn into_stream(self) -> Result<TcpStream, TargetError> {
        if !self.buf.is_empty() {
            return Err(TargetError::Protocol {
                addr: self.addr,
                detail: "unread reply bytes when handing the connection over".into(),
            });
        }
        self.stream.ok_or_else(|| TargetError::Io {
            addr: self.addr,
            source: lost_earlier(),
        })
    }

    /// The address as shown in messages (no password).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Which side the server is on.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Bytes of the replies of the last [`Client::run`] (what it made us hold at once).
    pub fn last_reply_bytes(&self) -> u64 {
        self.last_reply_bytes
    }

    /// Run later [`Client::run`] pipelines in `db` (selected when needed, again after a reconnect).
    pub fn use_db(&mut self, db: u32) {
        self.want_db = db;
    }

    /// Send one command and read its reply. An error reply is returned as `Reply::Error`, not as `Err`.
    pub async fn cmd(&mut self, args: &[&[u8]]) -> Result<Reply, TargetError> {
        let mut out = BytesMut::new();
        resp::encode_command(&mut out, args);
        let reply = self.send(&out, 1).await?.pop().unwrap_or(Reply::Null);
        self.note_select(args, &reply);
        Ok(reply)
    }

    /// Send several commands in one write and read their replies in order (error replies included).
    pub async fn pipeline(&mut self, cmds: &[Vec<&[u8]>]) -> Result<Vec<Reply>, TargetError> {
        let mut out = BytesMut::new();
        for c in cmds {
            resp::encode_command(&mut out, c);
        }
        let replies = self.send(&out, cmds.len()).await?;
        for (c, r) in cmds.iter().zip(&replies) {
            self.note_select(c, r);
        }
        Ok(replies)
    }

    /// Like [`Client::cmd`], but an error reply becomes `Err(TargetError::Command)` naming `args[0]`.
    pub async fn cmd_ok(&mut self, args: &[&[u8]]) -> Result<Reply, TargetError> {
        match self.cmd(args).await? {
            Reply::Error(e) => Err(self.command_error(args.first().copied().unwrap_or(b"?"), &e)),
            r => Ok(r),
        }
    }

    /// A failure of command `what` on this server, with the error reply `msg`.
    pub fn command_error(&self, what: &[u8], msg: &[u8]) -> TargetError {
        TargetError::Command {
            addr: self.addr.clone(),
            what: String::from_utf8_lossy(what).to_uppercase(),
            msg: String::from_utf8_lossy(msg).into_owned(),
        }
    }

    /// Run a pipeline in the db of [`Client::use_db`]: one reply per command, in order, error replies
    /// included. When the connection is lost and the pipeline is [`Resend::Safe`], it is reopened (with
    /// backoff, `RECONNECT_ATTEMPTS` times) and the whole pipeline sent again.
    pub async fn run(&mut self, p: &Pipeline) -> Result<Vec<Reply>, TargetError> {
        if p.is_empty() {
            return Ok(Vec::new());
        }
        let mut attempt = 0;
        loop {
            match self.run_once(p).await {
                Ok(r) => return Ok(r),
                Err(e)
                    if e.is_retryable()
                        && p.resend == Resend::Safe
                        && attempt < RECONNECT_ATTEMPTS =>
                {
                    attempt += 1;
                    tracing::warn!(role = %self.role, server = %self.addr, attempt, error = %e,
                        "connection failed; reconnecting and sending the reads again");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                    self.stream = None;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One read command through [`Client::run`] (sent again after a reconnect); an error reply is a
    /// failure naming the command.
    pub async fn read_ok(&mut self, args: &[&[u8]]) -> Result<Reply, TargetError> {
        let mut p = Pipeline::reads();
        p.push(args);
        match self.run(&p).await?.pop().unwrap_or(Reply::Null) {
            Reply::Error(e) => Err(self.command_error(args.first().copied().unwrap_or(b"?"), &e)),
            r => Ok(r),
        }
    }

    async fn run_once(&mut self, p: &Pipeline) -> Result<Vec<Reply>, TargetError> {
        if self.stream.is_none() {
            self.open().await?;
        }
        if self.selected != self.want_db {
            let db = self.want_db.to_string();
            if let Reply::Error(e) = self.cmd(&[b"SELECT", db.as_bytes()]).await? {
                return Err(self.command_error(b"SELECT", &e));
            }
        }
        self.send(&p.buf, p.n).await
    }

    /// After a `SELECT` that succeeded, the connection is in that db.
    fn note_select(&mut self, args: &[&[u8]], reply: &Reply) {
        if args.len() == 2 && args[0].eq_ignore_ascii_case(b"SELECT") && !reply.is_error() {
            if let Some(db) = std::str::from_utf8(args[1])
                .ok()
                .and_then(|d| d.parse().ok())
            {
                self.selected = db;
                self.want_db = db;
            }
        }
    }

    /// Write `out` and read `n` replies. Any failure leaves the client without a connection.
    async fn send(&mut self, out: &[u8], n: usize) -> Result<Vec<Reply>, TargetError> {
        let Some(mut stream) = self.stream.take() else {
            return Err(TargetError::Io {
                addr: self.addr.clone(),
                source: lost_earlier(),
            });
        };
        let res = exchange(&mut stream, &mut self.buf, out, n, self.timeout, &self.addr).await;
        let (replies, bytes) = res?;
        self.stream = Some(stream);
        self.last_reply_bytes = bytes;
        Ok(replies)
    }

    /// Write commands encoded by the caller and read `n` replies, in order, error replies included. The
    /// bytes must leave the connection in the db it was in (no `SELECT` is tracked here).
    pub async fn exchange_raw(&mut self, out: &[u8], n: usize) -> Result<Vec<Reply>, TargetError> {
        self.send(out, n).await
    }

    /// `INFO section` (`all`, `server`, …) parsed.
    pub async fn info(&mut self, section: &[u8]) -> Result<Info, TargetError> {
        let reply = self.cmd_ok(&[b"INFO", section]).await?;
        Ok(Info::from_bytes(reply.as_bytes().unwrap_or_default()))
    }

    /// `INFO` (all sections that matter to us) as ferry's summary.
    pub async fn server_info(&mut self) -> Result<ServerInfo, TargetError> {
        Ok(ServerInfo::from_info(&self.info(b"all").await?))
    }
}

fn lost_earlier() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "the connection failed earlier",
    )
}

/// Write `out` and read `n` replies in order; also the replies' size in bytes.
async fn exchange(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    out: &[u8],
    n: usize,
    timeout: Duration,
    addr: &str,
) -> Result<(Vec<Reply>, u64), TargetError> {
    let io = |source| TargetError::Io {
        addr: addr.to_string(),
        source,
    };
    stream.write_all(out).await.map_err(io)?;
    let mut replies = Vec::with_capacity(n);
    let mut bytes = 0u64;
    while replies.len() < n {
        let before = buf.len();
        match resp::parse_reply(buf) {
            Ok(Some(r)) => {
                bytes += (before - buf.len()) as u64;
                replies.push(r);
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                return Err(TargetError::Protocol {
                    addr: addr.to_string(),
                    detail: e.to_string(),
                })
            }
        }
        let got = tokio::time::timeout(timeout, stream.read_buf(buf))
            .await
            .map_err(|_| TargetError::Timeout {
                addr: addr.to_string(),
                secs: timeout.as_secs(),
            })?
            .map_err(io)?;
        if got == 0 {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed by the server",
            )));
        }
    }
    Ok((replies, bytes))
}

/// TCP connect with a timeout, `TCP_NODELAY` and keepalive.
pub async fn connect_tcp(addr: &RedisAddr, timeout: Duration) -> Result<TcpStream, TargetError> {
    let hp = addr.host_port();
    let stream = tokio::time::timeout(timeout, TcpStream::connect((addr.host.as_str(), addr.port)))
        .await
        .map_err(|_| TargetError::Connect {
            addr: addr.to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer from {hp} within {timeout:?}"),
            ),
        })?
        .map_err(|source| TargetError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    stream
        .set_nodelay(true)
        .map_err(|source| TargetError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    let sock = socket2::SockRef::from(&stream);
    let _ = sock.set_keepalive(true);
    Ok(stream)
}
