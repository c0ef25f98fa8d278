//! Opening a checked connection (reachable, authenticated, `INFO` or a proxy detected), shared by the
//! source and target checks, and the parsed `INFO` they both read.

use std::time::Duration;

use super::Check;
use crate::endpoint::{Auth, RedisAddr};
use crate::info::Info;
use crate::resp::Reply;
use crate::target::client::Client;
use crate::target::{ServerInfo, TargetError};

/// Which side a server is on: names the check ids and shapes the advice.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    Source,
    Target,
}

impl Side {
    pub fn reachable(self) -> &'static str {
        match self {
            Side::Source => "source.reachable",
            Side::Target => "target.reachable",
        }
    }
    pub fn auth(self) -> &'static str {
        match self {
            Side::Source => "source.auth",
            Side::Target => "target.auth",
        }
    }
    pub fn mode(self) -> &'static str {
        match self {
            Side::Source => "source.mode",
            Side::Target => "target.mode",
        }
    }
    pub fn info(self) -> &'static str {
        match self {
            Side::Source => "source.info",
            Side::Target => "target.info",
        }
    }
}

/// `master`, or `replica of host:port (link up)`.
pub(crate) fn role_text(info: &Info) -> String {
    match info.role() {
        Some("slave") => format!(
            "replica of {}:{} (link {})",
            info.field("master_host").unwrap_or("?"),
            info.field("master_port").unwrap_or("?"),
            info.field("master_link_status").unwrap_or("unknown")
        ),
        Some(r) => r.to_string(),
        None => "unknown".into(),
    }
}

/// A connection that passed reachable and auth.
pub(crate) struct Opened {
    pub client: Client,
    /// `None` when the user may not run `INFO` (a check says so).
    pub info: Option<Info>,
    /// The reachable and auth lines (and an INFO line when it was refused).
    pub checks: Vec<Check>,
    /// An error PING answered other than NOAUTH (e.g. NOPERM, LOADING).
    pub ping_error: Option<String>,
}

pub(crate) enum Outcome {
    Opened(Box<Opened>),
    /// The lines that say why nothing more can be checked.
    Failed(Vec<Check>),
}

/// Error text of a client failure without the side prefix `TargetError` puts in front.
pub(crate) fn describe(e: &TargetError, timeout: Duration) -> String {
    match e {
        TargetError::Connect { source, .. } => format!("cannot connect: {source}"),
        TargetError::Io { source, .. } => format!("connection lost: {source}"),
        TargetError::Auth { msg, .. } => format!("authentication failed: {msg}"),
        TargetError::Command { what, msg, .. } => format!("{what} answered {msg}"),
        TargetError::Protocol { detail, .. } => format!("protocol error: {detail}"),
        TargetError::Timeout { .. } => format!("no answer within {}", fmt_timeout(timeout)),
        TargetError::Closed { .. } => "connection closed".into(),
        TargetError::Restarted { detail, .. } => format!("the server restarted ({detail})"),
        TargetError::Topology { msg, .. } => format!("redirected ({msg})"),
    }
}

pub(crate) fn fmt_timeout(t: Duration) -> String {
    if t.subsec_millis() == 0 {
        format!("{} s", t.as_secs())
    } else {
        format!("{:.1} s", t.as_secs_f64())
    }
}

/// The user the server sees: the ACL user of the URL, or `default`.
pub(crate) fn user_of(addr: &RedisAddr) -> &str {
    addr.auth
        .as_ref()
        .and_then(|a| a.user.as_deref())
        .unwrap_or("default")
}

/// Message and advice for a refused AUTH (`msg` is the server's error; it never contains the password).
pub(crate) fn classify_auth(msg: &str, auth: Option<&Auth>) -> (String, String) {
    let upper = msg.to_ascii_uppercase();
    let user = auth.and_then(|a| a.user.as_deref());
    if upper.starts_with("WRONGPASS") || upper.contains("INVALID PASSWORD") {
        let who = match user {
            Some(u) => format!("wrong password for user {u}, or the user is disabled"),
            None => "wrong password".into(),
        };
        (
            format!("authentication failed: {who} ({})", first_word(msg)),
            "check the user and password in the URL (redis://USER:PASSWORD@host:port, or \
             redis://:PASSWORD@host:port for requirepass)"
                .into(),
        )
    } else if upper.contains("WITHOUT ANY PASSWORD CONFIGURED")
        || upper.contains("NO PASSWORD IS SET")
    {
        (
            "a password was given, but the server has none configured".into(),
            "drop the password from the URL, or set one on the server (requirepass / ACL)".into(),
        )
    } else if user.is_some() && upper.contains("WRONG NUMBER OF ARGUMENTS") {
        (
            "the server does not know ACL users (Redis before 6.0): AUTH with a user name was refused"
                .into(),
            "use the legacy form redis://:PASSWORD@host:port".into(),
        )
    } else {
        (
            format!("authentication failed: {msg}"),
            "check the user and password in the URL".into(),
        )
    }
}

fn first_word(msg: &str) -> &str {
    msg.split_whitespace().next().unwrap_or(msg)
}

fn auth_ok_text(addr: &RedisAddr) -> String {
    match &addr.auth {
        None => "no password required".into(),
        Some(Auth { user: None, .. }) => "authenticated with the password".into(),
        Some(Auth { user: Some(u), .. }) => format!("authenticated as ACL user {u}"),
    }
}

fn proxy_advice(side: Side) -> &'static str {
    match side {
        Side::Source => {
            "for a twemproxy pool give its config instead, --source twemproxy:/path/nutcracker.yml[#POOL]: \
             ferry syncs from every server of the pool"
        }
        Side::Target => {
            "give a standalone Redis server as the target: ferry writes to a standalone target only today \
             (no proxy or cluster routing yet)"
        }
    }
}

/// Connect, authenticate, PING and read `INFO`; every failure becomes the lines that explain it.
pub(crate) async fn open(
    addr: &RedisAddr,
    side: Side,
    subject: &str,
    timeout: Duration,
) -> Outcome {
    let mut client = match Client::connect_with_timeout(addr, timeout).await {
        Ok(c) => c,
        Err(TargetError::Auth { msg, .. }) => {
            let (m, a) = classify_auth(&msg, addr.auth.as_ref());
            return Outcome::Failed(vec![
                Check::ok(side.reachable(), subject, "reachable"),
                Check::error(side.auth(), subject, m).advice(a),
            ]);
        }
        Err(e @ TargetError::Connect { .. }) => {
            return Outcome::Failed(vec![Check::error(
                side.reachable(),
                subject,
                describe(&e, timeout),
            )
            .advice(
                "check that the server is running and that the host and port are right and reachable \
                 from this machine (firewall, bind address, protected-mode)",
            )]);
        }
        Err(e) => {
            return Outcome::Failed(vec![Check::error(
                side.reachable(),
                subject,
                format!("connected, but {}", describe(&e, timeout)),
            )
            .advice("is this a Redis server? check the port")]);
        }
    };
    let mut ping_error = None;
    match client.cmd(&[b"PING"]).await {
        Ok(Reply::Error(e)) => {
            let e = String::from_utf8_lossy(&e).into_owned();
            if e.to_ascii_uppercase().starts_with("NOAUTH") {
                return Outcome::Failed(vec![
                    Check::ok(side.reachable(), subject, "reachable"),
                    Check::error(
                        side.auth(),
                        subject,
                        "the server requires a password and none was given (NOAUTH)",
                    )
                    .advice(
                        "give it in the URL: redis://:PASSWORD@host:port, or \
                         redis://USER:PASSWORD@host:port for an ACL user",
                    ),
                ]);
            }
            ping_error = Some(e);
        }
        Ok(_) => {}
        Err(e) => {
            return Outcome::Failed(vec![Check::error(
                side.reachable(),
                subject,
                format!("connected, but PING failed: {}", describe(&e, timeout)),
            )
            .advice("is this a Redis server? check the port")]);
        }
    }
    let auth_line = Check::ok(side.auth(), subject, auth_ok_text(addr));
    let proxy = |how: String| {
        Outcome::Failed(vec![
            Check::ok(side.reachable(), subject, "reachable (PING answered)"),
            auth_line.clone(),
            Check::error(
                side.mode(),
                subject,
                format!(
                    "{how}: this looks like a proxy (twemproxy or similar), not a Redis server"
                ),
            )
            .advice(proxy_advice(side)),
        ])
    };
    let info = match client.cmd(&[b"INFO"]).await {
        Ok(Reply::Error(e)) => {
            let e = String::from_utf8_lossy(&e).into_owned();
            if e.to_ascii_uppercase().starts_with("NOPERM") {
                let (level, what) = match side {
                    Side::Source => (
                        super::Level::Warn,
                        "version, role, backlog, memory and keys were not checked",
                    ),
                    Side::Target => (
                        super::Level::Error,
                        "ferry reads the target's version and keyspace before writing",
                    ),
                };
                let checks = vec![
                    Check::ok(side.reachable(), subject, "reachable"),
                    auth_line,
                    Check::new(
                        side.info(),
                        subject,
                        level,
                        format!("user {} may not run INFO ({e}): {what}", user_of(addr)),
                    )
                    .advice(format!("grant it: ACL SETUSER {} +info", user_of(addr))),
                ];
                return Outcome::Opened(Box::new(Opened {
                    client,
                    info: None,
                    checks,
                    ping_error,
                }));
            }
            return proxy(format!("PING answered but INFO was refused ({e})"));
        }
        Ok(r) => match r.as_bytes() {
            Some(b) => Info::from_bytes(b),
            None => return proxy("PING answered but INFO gave no text".into()),
        },
        Err(TargetError::Timeout { .. }) => {
            return proxy(format!(
                "PING answered but INFO got no answer within {}",
                fmt_timeout(timeout)
            ))
        }
        Err(_) => return proxy("PING answered but INFO closed the connection".into()),
    };
    if !info.is_redis() {
        let how = if info
            .fields()
            .any(|(k, _)| k.to_ascii_lowercase().contains("proxy"))
        {
            "INFO describes a proxy"
        } else {
            "INFO has no redis_version"
        };
        return proxy(how.into());
    }
    let reachable = Check::ok(
        side.reachable(),
        subject,
        format!(
            "reachable, {}, role {}",
            ServerInfo::from_info(&info).version_string(),
            role_text(&info)
        ),
    );
    Outcome::Opened(Box::new(Opened {
        client,
        info: Some(info),
        checks: vec![reachable, auth_line],
        ping_error,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Secret;

    #[test]
    fn role_of_a_master_and_of_a_replica() {
        let i = Info::parse("redis_version:7.2.4\r\nserver_name:valkey\r\nrole:master\r\n");
        assert_eq!(role_text(&i), "master");
        let i = Info::parse(
            "redis_version:7.2.4\r\nvalkey_version:9.0.1\r\nserver_name:valkey\r\nrole:slave\r\n\
             master_host:10.0.0.1\r\nmaster_port:6379\r\nmaster_link_status:up\r\n",
        );
        assert!(i.is_replica());
        assert_eq!(role_text(&i), "replica of 10.0.0.1:6379 (link up)");
        assert_eq!(role_text(&Info::default()), "unknown");
    }

    #[test]
    fn auth_failures_are_named_without_the_password() {
        let auth = Auth {
            user: Some("bob".into()),
            password: Secret::new("hunter2"),
        };
        let (m, a) = classify_auth(
            "WRONGPASS invalid username-password pair or user is disabled.",
            Some(&auth),
        );
        assert!(m.contains("WRONGPASS") && m.contains("bob"), "{m}");
        assert!(!m.contains("hunter2") && !a.contains("hunter2"));
        let (m, _) = classify_auth("ERR invalid password", None);
        assert!(m.contains("wrong password"), "{m}");
        let (m, a) = classify_auth(
            "ERR AUTH <password> called without any password configured for the default user.",
            None,
        );
        assert!(m.contains("none configured") && a.contains("drop"), "{m}");
        let (m, a) = classify_auth(
            "ERR wrong number of arguments for 'auth' command",
            Some(&auth),
        );
        assert!(
            m.contains("before 6.0") && a.contains("redis://:PASSWORD@"),
            "{m}"
        );
    }
}
