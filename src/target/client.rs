//! A plain request/response connection to a Redis server, for prechecks and administrative commands.
//! The data path uses [`super::pool::WriterPool`] instead.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{ServerInfo, TargetError};
use crate::endpoint::{Auth, RedisAddr};
use crate::resp::{self, Reply};

/// How long a connect or a single reply may take before we give up.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection, one command at a time.
pub struct Client {
    stream: TcpStream,
    buf: BytesMut,
    out: BytesMut,
    addr: String,
    timeout: Duration,
}

impl Client {
    /// Connect and authenticate.
    pub async fn connect(addr: &RedisAddr) -> Result<Client, TargetError> {
        Self::connect_with_timeout(addr, DEFAULT_TIMEOUT).await
    }

    pub async fn connect_with_timeout(
        addr: &RedisAddr,
        timeout: Duration,
    ) -> Result<Client, TargetError> {
        let stream = connect_tcp(addr, timeout).await?;
        let mut c = Client {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
            out: BytesMut::new(),
            addr: addr.to_string(),
            timeout,
        };
        if let Some(auth) = &addr.auth {
            c.auth(auth).await?;
        }
        Ok(c)
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
            return Err(TargetError::Auth {
                addr: self.addr.clone(),
                msg: String::from_utf8_lossy(&e).into_owned(),
            });
        }
        Ok(())
    }

    /// The authenticated connection itself, for a pipelined writer to take over. Fails if a reply is still
    /// buffered (the caller must have read every reply).
    pub fn into_stream(self) -> Result<TcpStream, TargetError> {
        if !self.buf.is_empty() {
            return Err(TargetError::Protocol {
                addr: self.addr,
                detail: "unread reply bytes when handing the connection over".into(),
            });
        }
        Ok(self.stream)
    }

    /// The address as shown in messages (no password).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Send one command and read its reply. An error reply is returned as `Reply::Error`, not as `Err`.
    pub async fn cmd(&mut self, args: &[&[u8]]) -> Result<Reply, TargetError> {
        self.out.clear();
        resp::encode_command(&mut self.out, args);
        let io = |source| TargetError::Io {
            addr: self.addr.clone(),
            source,
        };
        self.stream.write_all(&self.out).await.map_err(io)?;
        self.read_reply().await
    }

    /// Send several commands in one write and read their replies in order (error replies included).
    pub async fn pipeline(&mut self, cmds: &[Vec<&[u8]>]) -> Result<Vec<Reply>, TargetError> {
        self.out.clear();
        for c in cmds {
            resp::encode_command(&mut self.out, c);
        }
        let io = |source| TargetError::Io {
            addr: self.addr.clone(),
            source,
        };
        self.stream.write_all(&self.out).await.map_err(io)?;
        let mut out = Vec::with_capacity(cmds.len());
        for _ in cmds {
            out.push(self.read_reply().await?);
        }
        Ok(out)
    }

    /// Like [`Client::cmd`], but an error reply becomes `Err(TargetError::Command)` naming `args[0]`.
    pub async fn cmd_ok(&mut self, args: &[&[u8]]) -> Result<Reply, TargetError> {
        match self.cmd(args).await? {
            Reply::Error(e) => Err(TargetError::Command {
                addr: self.addr.clone(),
                what: String::from_utf8_lossy(args[0]).to_uppercase(),
                msg: String::from_utf8_lossy(&e).into_owned(),
            }),
            r => Ok(r),
        }
    }

    async fn read_reply(&mut self) -> Result<Reply, TargetError> {
        loop {
            match resp::parse_reply(&mut self.buf) {
                Ok(Some(r)) => return Ok(r),
                Ok(None) => {}
                Err(e) => {
                    return Err(TargetError::Protocol {
                        addr: self.addr.clone(),
                        detail: e.to_string(),
                    })
                }
            }
            let n = tokio::time::timeout(self.timeout, self.stream.read_buf(&mut self.buf))
                .await
                .map_err(|_| TargetError::Timeout {
                    addr: self.addr.clone(),
                    secs: self.timeout.as_secs(),
                })?
                .map_err(|source| TargetError::Io {
                    addr: self.addr.clone(),
                    source,
                })?;
            if n == 0 {
                return Err(TargetError::Io {
                    addr: self.addr.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "closed by the server",
                    ),
                });
            }
        }
    }

    /// `INFO` (all sections that matter to us) parsed.
    pub async fn server_info(&mut self) -> Result<ServerInfo, TargetError> {
        let reply = self.cmd_ok(&[b"INFO", b"all"]).await?;
        let text = reply
            .as_bytes()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        Ok(ServerInfo::parse(&text))
    }
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
