//! The target's side of master mode: ferry answers the handshake a replica opens with its master
//! (`replication.c`, `syncWithMaster`: `PING`, `AUTH`, `REPLCONF listening-port`/`ip-address`/`capa`, then
//! `PSYNC <replid> <offset>`), and reads the `REPLCONF ACK <offset>` the replica sends every second.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;

use crate::resp::{Command, CommandDecoder};

/// What the replica asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRequest {
    /// `PSYNC <replid> <offset>`: the replication id it knows (`?` when none) and the first offset it lacks
    /// (`-1` when none).
    pub replid: String,
    pub offset: i64,
    /// It said `REPLCONF capa eof` (it reads the diskless `$EOF:` framing).
    pub capa_eof: bool,
}

/// Why a connection that came in is not a replica ferry can serve.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("{peer}: {msg}")]
    Refused { peer: String, msg: String },
    #[error("{peer}: the connection broke during the replication handshake: {msg}")]
    Io { peer: String, msg: String },
}

/// Answer one replica's handshake until its `PSYNC` (returned; the caller replies `+FULLRESYNC` or
/// `+CONTINUE`). `password` is what `AUTH` must give (ferry set it as the target's `masterauth`); anything
/// else is refused before any data is sent.
pub async fn handshake(
    stream: &mut TcpStream,
    password: &str,
    timeout: Duration,
) -> Result<SyncRequest, HandshakeError> {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "a replica".into());
    let io = |e: std::io::Error| HandshakeError::Io {
        peer: peer.clone(),
        msg: e.to_string(),
    };
    let refused = |msg: String| HandshakeError::Refused {
        peer: peer.clone(),
        msg,
    };
    let mut dec = CommandDecoder::new();
    let mut buf = BytesMut::with_capacity(1024);
    let mut authed = false;
    let mut capa_eof = false;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let cmd = loop {
            match dec.decode_frozen(&mut buf) {
                Ok(Some(c)) => break c,
                Ok(None) => {}
                Err(e) => return Err(refused(format!("not a Redis replica ({e})"))),
            }
            if buf.len() > 64 << 10 {
                return Err(refused("handshake command longer than 64 KiB".into()));
            }
            let n = tokio::time::timeout_at(deadline, stream.read_buf(&mut buf))
                .await
                .map_err(|_| refused(format!("no PSYNC within {timeout:?}")))?
                .map_err(io)?;
            if n == 0 {
                return Err(HandshakeError::Io {
                    peer: peer.clone(),
                    msg: "closed by the peer".into(),
                });
            }
        };
        let name = cmd.arg(0).to_ascii_uppercase();
        let reply: Vec<u8> = match &name[..] {
            b"PING" => b"+PONG\r\n".to_vec(),
            b"AUTH" => {
                // AUTH <password> or AUTH <user> <password>: the user is not checked (masteruser is cleared).
                let given = cmd.get(cmd.argc() - 1).unwrap_or_default();
                if cmd.argc() >= 2 && given == password.as_bytes() {
                    authed = true;
                    b"+OK\r\n".to_vec()
                } else {
                    stream
                        .write_all(
                            b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
                        )
                        .await
                        .map_err(io)?;
                    return Err(refused(
                        "wrong password for ferry's replication port".into(),
                    ));
                }
            }
            _ if !authed => {
                stream
                    .write_all(b"-NOAUTH Authentication required.\r\n")
                    .await
                    .map_err(io)?;
                return Err(refused(
                    "no AUTH: only the target ferry configured (its masterauth) may replicate from ferry".into(),
                ));
            }
            b"REPLCONF" => {
                let args: Vec<Vec<u8>> =
                    cmd.args().skip(1).map(|a| a.to_ascii_lowercase()).collect();
                if args.windows(2).any(|w| w[0] == b"capa" && w[1] == b"eof") {
                    capa_eof = true;
                }
                b"+OK\r\n".to_vec()
            }
            b"PSYNC" => {
                let replid = String::from_utf8_lossy(cmd.get(1).unwrap_or(b"?")).into_owned();
                let offset = cmd
                    .get(2)
                    .and_then(|o| std::str::from_utf8(o).ok())
                    .and_then(|o| o.parse().ok())
                    .unwrap_or(-1);
                return Ok(SyncRequest {
                    replid,
                    offset,
                    capa_eof,
                });
            }
            b"SYNC" => {
                stream
                    .write_all(b"-ERR ferry serves PSYNC only (Redis 2.8 and later)\r\n")
                    .await
                    .map_err(io)?;
                return Err(refused("SYNC: the target is older than Redis 2.8".into()));
            }
            _ => format!(
                "-ERR ferry's replication port serves replicas only ({})\r\n",
                String::from_utf8_lossy(&name)
            )
            .into_bytes(),
        };
        stream.write_all(&reply).await.map_err(io)?;
    }
}

/// Read what the replica sends after its sync: `REPLCONF ACK <offset> [FACK <offset>]`, reported through
/// `acked` (the highest offset seen). Returns when the connection ends (the reason, for the log).
pub async fn read_acks(mut r: OwnedReadHalf, acked: tokio::sync::watch::Sender<i64>) -> String {
    let mut dec = CommandDecoder::new();
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        loop {
            match dec.decode_frozen(&mut buf) {
                Ok(Some(c)) => {
                    if let Some(off) = ack_offset(&c) {
                        acked.send_if_modified(|a| {
                            let more = off > *a;
                            if more {
                                *a = off;
                            }
                            more
                        });
                    }
                }
                Ok(None) => break,
                Err(e) => return format!("the target sent something that is not RESP: {e}"),
            }
        }
        if buf.len() > 1 << 20 {
            return "the target sent more than 1 MiB that is not an ACK".into();
        }
        match r.read_buf(&mut buf).await {
            Ok(0) => return "the target closed its replication connection".into(),
            Ok(_) => {}
            Err(e) => return format!("the target's replication connection broke: {e}"),
        }
    }
}

/// The offset of a `REPLCONF ACK <offset> …`.
pub fn ack_offset(c: &Command) -> Option<i64> {
    if !c.name_eq_ignore_case(b"REPLCONF") || !c.get(1)?.eq_ignore_ascii_case(b"ACK") {
        return None;
    }
    std::str::from_utf8(c.get(2)?).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_offsets_are_read_from_replconf_ack_only() {
        let c = |s: &[u8]| Command::parse(bytes::Bytes::copy_from_slice(s)).unwrap();
        assert_eq!(
            ack_offset(&c(b"*3\r\n$8\r\nREPLCONF\r\n$3\r\nACK\r\n$3\r\n123\r\n")),
            Some(123)
        );
        assert_eq!(
            ack_offset(&c(
                b"*5\r\n$8\r\nreplconf\r\n$3\r\nack\r\n$1\r\n7\r\n$4\r\nFACK\r\n$1\r\n7\r\n"
            )),
            Some(7)
        );
        assert_eq!(ack_offset(&c(b"*1\r\n$4\r\nPING\r\n")), None);
        assert_eq!(
            ack_offset(&c(b"*3\r\n$8\r\nREPLCONF\r\n$6\r\nGETACK\r\n$1\r\n*\r\n")),
            None
        );
    }
}
