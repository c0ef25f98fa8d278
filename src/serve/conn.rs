//! One client connection of `ferry serve`: RESP2/RESP3 requests (and inline commands, as `redis-cli` and
//! telnet send them), decoded with our own decoder, answered in order.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::{lock, Replica};
use crate::endpoint::Secret;
use crate::resp;

/// The longest request accepted (an argument or an inline line): ferry stores nothing, so requests are
/// small; a larger one is a protocol error that closes the connection.
pub const MAX_REQUEST: usize = 1 << 20;

/// A reply, encoded for the connection's protocol version.
#[derive(Clone, Debug, PartialEq)]
pub enum R {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Null,
    Array(Vec<R>),
    /// A map in RESP3, a flat array of keys and values in RESP2.
    Map(Vec<(R, R)>),
}

impl R {
    pub fn ok() -> R {
        R::Simple("OK".into())
    }

    pub fn bulk(s: impl Into<String>) -> R {
        R::Bulk(s.into().into_bytes())
    }

    fn encode(&self, proto: u8, out: &mut BytesMut) {
        match self {
            R::Simple(s) => {
                out.extend_from_slice(b"+");
                out.extend_from_slice(one_line(s).as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            R::Error(s) => {
                out.extend_from_slice(b"-");
                out.extend_from_slice(one_line(s).as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            R::Int(n) => {
                out.extend_from_slice(b":");
                resp::write_decimal(out, *n);
                out.extend_from_slice(b"\r\n");
            }
            R::Bulk(b) => resp::write_bulk(out, b),
            R::Null if proto >= 3 => out.extend_from_slice(b"_\r\n"),
            R::Null => out.extend_from_slice(b"$-1\r\n"),
            R::Array(items) => {
                resp::write_array_header(out, items.len());
                for i in items {
                    i.encode(proto, out);
                }
            }
            R::Map(pairs) if proto >= 3 => {
                out.extend_from_slice(b"%");
                resp::write_decimal(out, pairs.len() as i64);
                out.extend_from_slice(b"\r\n");
                for (k, v) in pairs {
                    k.encode(proto, out);
                    v.encode(proto, out);
                }
            }
            R::Map(pairs) => {
                resp::write_array_header(out, pairs.len() * 2);
                for (k, v) in pairs {
                    k.encode(proto, out);
                    v.encode(proto, out);
                }
            }
        }
    }
}

/// A simple string or error must stay on one line.
fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

/// Per-connection state.
struct Session {
    id: u64,
    peer: SocketAddr,
    proto: u8,
    authed: bool,
    name: Option<Vec<u8>>,
    quit: bool,
}

/// Serve one client until it quits, the connection breaks, or `cancel`.
pub async fn serve(
    mut sock: TcpStream,
    peer: SocketAddr,
    replica: Arc<Replica>,
    cancel: CancellationToken,
) {
    replica.clients.fetch_add(1, Ordering::Relaxed);
    let mut s = Session {
        id: replica.next_client.fetch_add(1, Ordering::Relaxed),
        peer,
        proto: 2,
        authed: replica.cfg.requirepass.is_none(),
        name: None,
        quit: false,
    };
    let mut buf = BytesMut::with_capacity(4096);
    let mut out = BytesMut::new();
    let mut dec = resp::CommandDecoder::with_max_bulk_len(MAX_REQUEST);
    'conn: loop {
        let read = tokio::select! {
            r = sock.read_buf(&mut buf) => r,
            _ = cancel.cancelled() => break,
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        loop {
            let args = match next_request(&mut buf, &mut dec) {
                Ok(Some(a)) => a,
                Ok(None) => break,
                Err(e) => {
                    R::Error(format!("ERR Protocol error: {e}")).encode(s.proto, &mut out);
                    let _ = sock.write_all(&out).await;
                    break 'conn;
                }
            };
            if args.is_empty() {
                continue;
            }
            let reply = dispatch(&replica, &mut s, &args).await;
            reply.encode(s.proto, &mut out);
            if s.quit {
                break;
            }
        }
        if !out.is_empty() {
            if sock.write_all(&out).await.is_err() {
                break;
            }
            out.clear();
        }
        if s.quit {
            break;
        }
        if buf.len() > MAX_REQUEST + 1024 {
            break;
        }
    }
    replica.clients.fetch_sub(1, Ordering::Relaxed);
}

/// The next complete request in `buf` (consumed), as its arguments: a RESP array of bulk strings, or an
/// inline line split on spaces. `Ok(None)` until one is complete. Public for the fuzz target.
pub fn next_request(
    buf: &mut BytesMut,
    dec: &mut resp::CommandDecoder,
) -> Result<Option<Vec<Vec<u8>>>, String> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != b'*' {
        let Some(end) = buf.iter().position(|&b| b == b'\n') else {
            if buf.len() > MAX_REQUEST {
                return Err("too big inline request".into());
            }
            return Ok(None);
        };
        let line = String::from_utf8_lossy(&buf[..end])
            .trim_end_matches('\r')
            .to_string();
        buf.advance(end + 1);
        return Ok(Some(
            line.split_ascii_whitespace()
                .map(|w| w.as_bytes().to_vec())
                .collect(),
        ));
    }
    match dec.decode(buf) {
        Ok(Some(n)) => {
            let args = dec.args().iter().map(|r| buf[r.clone()].to_vec()).collect();
            buf.advance(n);
            Ok(Some(args))
        }
        Ok(None) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

fn upper(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_uppercase()
}

fn wrong_args(cmd: &str) -> R {
    R::Error(format!(
        "ERR wrong number of arguments for '{}' command",
        cmd.to_ascii_lowercase()
    ))
}

/// Answer one request.
async fn dispatch(replica: &Replica, s: &mut Session, args: &[Vec<u8>]) -> R {
    let cmd = upper(&args[0]);
    if !s.authed && !matches!(cmd.as_str(), "AUTH" | "HELLO" | "QUIT") {
        return R::Error("NOAUTH Authentication required.".into());
    }
    match cmd.as_str() {
        "PING" => match args.len() {
            1 => R::Simple("PONG".into()),
            2 => R::Bulk(args[1].clone()),
            _ => wrong_args(&cmd),
        },
        "ECHO" if args.len() == 2 => R::Bulk(args[1].clone()),
        "QUIT" => {
            s.quit = true;
            R::ok()
        }
        "RESET" => {
            s.proto = 2;
            s.name = None;
            s.authed = replica.cfg.requirepass.is_none();
            R::Simple("RESET".into())
        }
        "AUTH" => match args.len() {
            2 => auth(replica, s, None, &args[1]),
            3 => auth(replica, s, Some(&args[1]), &args[2]),
            _ => wrong_args(&cmd),
        },
        "HELLO" => hello(replica, s, &args[1..]),
        "SELECT" if args.len() == 2 => match std::str::from_utf8(&args[1])
            .ok()
            .and_then(|d| d.parse::<u32>().ok())
        {
            Some(_) => R::ok(),
            None => R::Error("ERR value is not an integer or out of range".into()),
        },
        "CLIENT" => client(s, &args[1..]),
        "COMMAND" => match args.get(1).map(|a| upper(a)).as_deref() {
            None | Some("LIST") => R::Array(Vec::new()),
            Some("COUNT") => R::Int(0),
            Some("DOCS") => R::Map(Vec::new()),
            Some("INFO") => R::Array(args[2..].iter().map(|_| R::Null).collect()),
            Some(other) => R::Error(format!("ERR unknown subcommand '{other}'")),
        },
        "CONFIG" => config(replica, &args[1..]),
        "INFO" => R::Bulk(super::info::info(replica, &args[1..]).await.into_bytes()),
        "ROLE" => super::info::role(replica).await,
        "REPLICAOF" | "SLAVEOF" => replicaof(replica, &args[1..]).await,
        "TIME" => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            R::Array(vec![
                R::bulk(now.as_secs().to_string()),
                R::bulk(now.subsec_micros().to_string()),
            ])
        }
        "SHUTDOWN" => R::Error(
            "ERR ferry serve stops on SIGTERM or SIGINT (it then drains and checkpoints the sync)"
                .into(),
        ),
        _ => {
            let up = super::lock(&replica.upstream);
            let what = match up.as_ref() {
                Some(u) => format!(
                    "it replicates {}:{} into {}",
                    u.host,
                    u.port,
                    replica.target_shown()
                ),
                None => format!(
                    "it writes into {} once given REPLICAOF <host> <port>",
                    replica.target_shown()
                ),
            };
            R::Error(format!(
                "ERR ferry serve is a sync endpoint, not a data store: {what}; send '{}' to the target",
                cmd.to_ascii_lowercase()
            ))
        }
    }
}

/// `AUTH [user] password` against `--requirepass`.
fn auth(replica: &Replica, s: &mut Session, user: Option<&[u8]>, password: &[u8]) -> R {
    let Some(want) = &replica.cfg.requirepass else {
        return R::Error(
            "ERR AUTH <password> called without any password configured for the default user. Are you sure \
             your configuration is correct?"
                .into(),
        );
    };
    let user = user.map(|u| String::from_utf8_lossy(u).into_owned());
    let user_ok = match (&want.user, user.as_deref()) {
        (None, None | Some("default")) => true,
        (Some(w), Some(u)) => w == u,
        _ => false,
    };
    if user_ok && want.password.expose().as_bytes() == password {
        s.authed = true;
        R::ok()
    } else {
        R::Error("WRONGPASS invalid username-password pair or user is disabled.".into())
    }
}

/// `HELLO [protover [AUTH user password] [SETNAME name]]`.
fn hello(replica: &Replica, s: &mut Session, args: &[Vec<u8>]) -> R {
    let mut proto = s.proto;
    let mut i = 0;
    if let Some(v) = args.first() {
        match std::str::from_utf8(v)
            .ok()
            .and_then(|v| v.parse::<u8>().ok())
        {
            Some(p @ (2 | 3)) => proto = p,
            Some(_) => return R::Error("NOPROTO unsupported protocol version".into()),
            None => {
                return R::Error("ERR Protocol version is not an integer or out of range".into())
            }
        }
        i = 1;
    }
    while i < args.len() {
        match upper(&args[i]).as_str() {
            "AUTH" if args.len() >= i + 3 => {
                let r = auth(replica, s, Some(&args[i + 1]), &args[i + 2]);
                if let R::Error(_) = r {
                    return r;
                }
                i += 3;
            }
            "SETNAME" if args.len() >= i + 2 => {
                s.name = Some(args[i + 1].clone());
                i += 2;
            }
            other => return R::Error(format!("ERR Syntax error in HELLO option '{other}'")),
        }
    }
    if !s.authed {
        return R::Error(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> \
             AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol \
             version at the same time"
                .into(),
        );
    }
    s.proto = proto;
    R::Map(vec![
        (R::bulk("server"), R::bulk("ferry")),
        (R::bulk("version"), R::bulk(env!("CARGO_PKG_VERSION"))),
        (R::bulk("proto"), R::Int(i64::from(proto))),
        (R::bulk("id"), R::Int(s.id as i64)),
        (R::bulk("mode"), R::bulk("standalone")),
        (R::bulk("role"), R::bulk("replica")),
        (R::bulk("modules"), R::Array(Vec::new())),
    ])
}

/// `CLIENT SETNAME|GETNAME|ID|SETINFO|INFO|NO-EVICT|NO-TOUCH|REPLY ON`.
fn client(s: &mut Session, args: &[Vec<u8>]) -> R {
    let Some(sub) = args.first().map(|a| upper(a)) else {
        return wrong_args("client");
    };
    match sub.as_str() {
        "SETNAME" if args.len() == 2 => {
            if args[1].iter().any(|b| *b <= b' ') {
                return R::Error(
                    "ERR Client names cannot contain spaces, newlines or special characters."
                        .into(),
                );
            }
            s.name = (!args[1].is_empty()).then(|| args[1].clone());
            R::ok()
        }
        "GETNAME" => s.name.clone().map(R::Bulk).unwrap_or(R::Null),
        "ID" => R::Int(s.id as i64),
        "SETINFO" | "NO-EVICT" | "NO-TOUCH" => R::ok(),
        "REPLY" if args.get(1).map(|a| upper(a)).as_deref() == Some("ON") => R::ok(),
        "INFO" => R::bulk(format!(
            "id={} addr={} name={} resp={}\n",
            s.id,
            s.peer,
            String::from_utf8_lossy(s.name.as_deref().unwrap_or_default()),
            s.proto
        )),
        other => R::Error(format!(
            "ERR unknown subcommand or wrong number of arguments for '{other}'"
        )),
    }
}

/// `CONFIG GET|SET` of what a replica is configured with before `REPLICAOF`: `masterauth`, `masteruser`.
fn config(replica: &Replica, args: &[Vec<u8>]) -> R {
    let Some(sub) = args.first().map(|a| upper(a)) else {
        return wrong_args("config");
    };
    match sub.as_str() {
        "SET" if args.len() >= 3 && args.len() % 2 == 1 => {
            for pair in args[1..].chunks(2) {
                let name = String::from_utf8_lossy(&pair[0]).to_ascii_lowercase();
                if !matches!(name.as_str(), "masterauth" | "masteruser") {
                    return R::Error(format!(
                        "ERR Unknown option or number of arguments for CONFIG SET - '{name}' (ferry serve \
                         takes masterauth and masteruser)"
                    ));
                }
            }
            for pair in args[1..].chunks(2) {
                let name = String::from_utf8_lossy(&pair[0]).to_ascii_lowercase();
                let value = String::from_utf8_lossy(&pair[1]).into_owned();
                if name == "masterauth" {
                    *lock(&replica.masterauth) = (!value.is_empty()).then(|| Secret::new(value));
                } else {
                    *lock(&replica.masteruser) = (!value.is_empty()).then_some(value);
                }
            }
            R::ok()
        }
        "GET" if args.len() >= 2 => {
            let mut pairs = Vec::new();
            for (name, value) in [
                (
                    "masterauth",
                    // Never shown: a secret.
                    lock(&replica.masterauth)
                        .as_ref()
                        .map(|_| "(set)".to_string()),
                ),
                ("masteruser", lock(&replica.masteruser).clone()),
            ] {
                if args[1..]
                    .iter()
                    .any(|p| glob_match(&String::from_utf8_lossy(p).to_ascii_lowercase(), name))
                {
                    pairs.push((R::bulk(name), R::bulk(value.unwrap_or_default())));
                }
            }
            R::Map(pairs)
        }
        "RESETSTAT" => R::ok(),
        other => R::Error(format!(
            "ERR unknown subcommand '{other}' of CONFIG in ferry serve"
        )),
    }
}

/// A Redis-style glob (`*`, `?`) over ASCII names. A pattern longer than any name ferry knows is no match;
/// runs of `*` count as one (no recursion per `*`).
fn glob_match(pattern: &str, name: &str) -> bool {
    if pattern.len() > 64 {
        return false;
    }
    let mut p = String::with_capacity(pattern.len());
    for c in pattern.chars() {
        if !(c == '*' && p.ends_with('*')) {
            p.push(c);
        }
    }
    let pattern = p.as_str();
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

/// `REPLICAOF host port` / `REPLICAOF NO ONE`.
async fn replicaof(replica: &Replica, args: &[Vec<u8>]) -> R {
    if args.len() != 2 {
        return wrong_args("replicaof");
    }
    if upper(&args[0]) == "NO" && upper(&args[1]) == "ONE" {
        return match replica.stop_replicating().await {
            Ok(()) => R::ok(),
            Err(e) => R::Error(format!("ERR {e}")),
        };
    }
    let host = String::from_utf8_lossy(&args[0]).into_owned();
    let Some(port) = std::str::from_utf8(&args[1])
        .ok()
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|p| *p > 0)
    else {
        return R::Error("ERR Invalid master port".into());
    };
    match replica.replicate(host, port).await {
        Ok(true) => R::ok(),
        Ok(false) => R::Simple("OK Already connected to specified master".into()),
        Err(e) => R::Error(format!("ERR {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(r: &R, proto: u8) -> Vec<u8> {
        let mut out = BytesMut::new();
        r.encode(proto, &mut out);
        out.to_vec()
    }

    #[test]
    fn replies_encode_for_resp2_and_resp3() {
        let m = R::Map(vec![(R::bulk("a"), R::Int(1))]);
        assert_eq!(enc(&m, 2), b"*2\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(enc(&m, 3), b"%1\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(enc(&R::Null, 2), b"$-1\r\n");
        assert_eq!(enc(&R::Null, 3), b"_\r\n");
        assert_eq!(enc(&R::Error("ERR a\r\nb".into()), 2), b"-ERR a  b\r\n");
    }

    #[test]
    fn requests_are_resp_arrays_or_inline_lines() {
        let mut dec = resp::CommandDecoder::with_max_bulk_len(MAX_REQUEST);
        let mut b =
            BytesMut::from(&b"*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\nPING  x\r\n*1\r\n$4\r\nPI"[..]);
        assert_eq!(
            next_request(&mut b, &mut dec).unwrap(),
            Some(vec![b"ECHO".to_vec(), b"hi".to_vec()])
        );
        assert_eq!(
            next_request(&mut b, &mut dec).unwrap(),
            Some(vec![b"PING".to_vec(), b"x".to_vec()])
        );
        assert_eq!(next_request(&mut b, &mut dec).unwrap(), None);
        b.extend_from_slice(b"NG\r\n");
        assert_eq!(
            next_request(&mut b, &mut dec).unwrap(),
            Some(vec![b"PING".to_vec()])
        );
        let mut bad = BytesMut::from(&b"*1\r\n:3\r\n"[..]);
        assert!(next_request(&mut bad, &mut dec).is_err());
    }

    #[test]
    fn config_patterns_match_like_redis() {
        assert!(glob_match("master*", "masterauth"));
        assert!(glob_match("*", "masteruser"));
        assert!(glob_match("masteruse?", "masteruser"));
        assert!(!glob_match("maxmemory", "masterauth"));
        assert!(glob_match("m***a**ster*", "masterauth"));
        assert!(!glob_match(&"*".repeat(100_000), "masterauth"));
    }
}
