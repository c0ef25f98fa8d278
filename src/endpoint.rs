//! Endpoints named on the command line: `redis://[[user]:password@]host:port`, `cluster://[[user]:password@]host:port[,host:port…]`,
//! `rdb:PATH` and `twemproxy:PATH[#POOL]`.
//!
//! Passwords live in [`Secret`], whose `Debug` and `Display` print `***`, so an endpoint can be logged or
//! put in an error message as is.

use std::fmt;
use std::path::PathBuf;

/// A secret string (password). Never printed: `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself, for the one place that must send it (AUTH).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Credentials for AUTH: a legacy password (`AUTH password`) or an ACL user (`AUTH user password`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Auth {
    pub user: Option<String>,
    pub password: Secret,
}

/// A Redis server address with optional credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisAddr {
    pub host: String,
    pub port: u16,
    pub auth: Option<Auth>,
}

impl RedisAddr {
    /// `host:port`, for messages and TCP connect.
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for RedisAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Shows `redis://user@host:port` (or `redis://host:port`); the password is never shown.
impl fmt::Display for RedisAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.auth {
            Some(Auth { user: Some(u), .. }) => write!(f, "redis://{}@{}", u, self.host_port()),
            _ => write!(f, "redis://{}", self.host_port()),
        }
    }
}

/// A source of data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceSpec {
    /// A live master (or a replica, which serves PSYNC too).
    Redis(RedisAddr),
    /// An RDB file: load it and finish.
    RdbFile(PathBuf),
    /// Every server of a Twemproxy (nutcracker) pool: `twemproxy:PATH[#POOL]`.
    Twemproxy { path: PathBuf, pool: Option<String> },
    /// Every master of a Redis Cluster: `cluster://[[user]:password@]host:port[,host:port…]`, seed nodes
    /// (each with the same credentials) asked for the slot map.
    Cluster(Vec<RedisAddr>),
}

impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceSpec::Redis(a) => fmt::Display::fmt(a, f),
            SourceSpec::Cluster(seeds) => fmt_cluster(seeds, f),
            SourceSpec::RdbFile(p) => write!(f, "rdb:{}", p.display()),
            SourceSpec::Twemproxy {
                path,
                pool: Some(p),
            } => {
                write!(f, "twemproxy:{}#{p}", path.display())
            }
            SourceSpec::Twemproxy { path, pool: None } => write!(f, "twemproxy:{}", path.display()),
        }
    }
}

/// Why an endpoint string was refused. Never contains the password.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EndpointError {
    #[error(
        "{0}: expected redis://[[user]:password@]host:port, cluster://host:port[,host:port…], rdb:PATH or \
         twemproxy:PATH[#POOL]"
    )]
    Scheme(String),
    #[error("{0}: missing host")]
    NoHost(String),
    #[error("{0}: missing or invalid port (expected 1-65535)")]
    Port(String),
    #[error("rdb: needs a file path")]
    NoPath,
    #[error("twemproxy: needs a nutcracker config path, as twemproxy:PATH[#POOL]")]
    NoConfigPath,
}

impl std::str::FromStr for SourceSpec {
    type Err = EndpointError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("rdb:") {
            if path.is_empty() {
                return Err(EndpointError::NoPath);
            }
            return Ok(SourceSpec::RdbFile(PathBuf::from(path)));
        }
        if let Some(rest) = s.strip_prefix("twemproxy:") {
            let (path, pool) = parse_twemproxy(rest);
            if path.as_os_str().is_empty() {
                return Err(EndpointError::NoConfigPath);
            }
            return Ok(SourceSpec::Twemproxy { path, pool });
        }
        if let Some(rest) = s.strip_prefix("cluster://") {
            return parse_cluster(rest).map(SourceSpec::Cluster);
        }
        s.parse::<RedisAddr>().map(SourceSpec::Redis)
    }
}

/// A target: one server, a Redis Cluster, or the servers of a twemproxy pool written directly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetSpec {
    /// `redis://[[user]:password@]host:port`
    Redis(RedisAddr),
    /// `cluster://[[user]:password@]host:port[,host:port…]`: seed nodes (each with the same credentials).
    Cluster(Vec<RedisAddr>),
    /// `twemproxy:PATH[#POOL]`: nutcracker's placement, every server written directly.
    Twemproxy { path: PathBuf, pool: Option<String> },
}

impl TargetSpec {
    /// The single server, for the commands that take one (`ferry verify`, `ferry check` of a server).
    pub fn as_redis(&self) -> Option<&RedisAddr> {
        match self {
            TargetSpec::Redis(a) => Some(a),
            _ => None,
        }
    }
}

impl fmt::Display for TargetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetSpec::Redis(a) => fmt::Display::fmt(a, f),
            TargetSpec::Cluster(seeds) => fmt_cluster(seeds, f),
            TargetSpec::Twemproxy {
                path,
                pool: Some(p),
            } => write!(f, "twemproxy:{}#{p}", path.display()),
            TargetSpec::Twemproxy { path, pool: None } => write!(f, "twemproxy:{}", path.display()),
        }
    }
}

impl std::str::FromStr for TargetSpec {
    type Err = EndpointError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = s.strip_prefix("twemproxy:") {
            let (path, pool) = parse_twemproxy(rest);
            if path.as_os_str().is_empty() {
                return Err(EndpointError::NoConfigPath);
            }
            return Ok(TargetSpec::Twemproxy { path, pool });
        }
        if let Some(rest) = s.strip_prefix("cluster://") {
            return parse_cluster(rest).map(TargetSpec::Cluster);
        }
        if s.starts_with("rdb:") {
            return Err(EndpointError::Scheme(
                "rdb: (a file cannot be a target)".into(),
            ));
        }
        s.parse::<RedisAddr>().map(TargetSpec::Redis)
    }
}

/// The seeds of a `cluster://` endpoint, from the part after `cluster://`: credentials (before the last
/// `@`) apply to every seed.
fn parse_cluster(rest: &str) -> Result<Vec<RedisAddr>, EndpointError> {
    let (creds, hosts) = match rest.rfind('@') {
        Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
        None => (None, rest),
    };
    let mut seeds = Vec::new();
    for h in hosts.trim_end_matches('/').split(',') {
        let url = match creds {
            Some(c) => format!("redis://{c}@{h}"),
            None => format!("redis://{h}"),
        };
        let addr = url.parse::<RedisAddr>().map_err(|e| match e {
            EndpointError::NoHost(_) => EndpointError::NoHost(format!("cluster://…{h}")),
            _ => EndpointError::Port(format!("cluster://…{h}")),
        })?;
        seeds.push(addr);
    }
    Ok(seeds)
}

/// `cluster://user@host:port,host:port` (the first seed's user; never a password).
fn fmt_cluster(seeds: &[RedisAddr], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let user = seeds
        .first()
        .and_then(|a| a.auth.as_ref())
        .and_then(|a| a.user.clone());
    write!(f, "cluster://")?;
    if let Some(u) = user {
        write!(f, "{u}@")?;
    }
    let hosts: Vec<String> = seeds.iter().map(|a| a.host_port()).collect();
    write!(f, "{}", hosts.join(","))
}

/// Split the part of a `twemproxy:PATH[#POOL]` endpoint after `twemproxy:` at its last `#`. An empty
/// pool (a trailing `#`) means none, which is how to name a path that itself contains `#`.
pub fn parse_twemproxy(spec_without_prefix: &str) -> (PathBuf, Option<String>) {
    match spec_without_prefix.rsplit_once('#') {
        Some((path, "")) => (PathBuf::from(path), None),
        Some((path, pool)) => (PathBuf::from(path), Some(pool.to_string())),
        None => (PathBuf::from(spec_without_prefix), None),
    }
}

impl std::str::FromStr for RedisAddr {
    type Err = EndpointError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // The shown form of the input drops everything before '@' so no password reaches an error.
        let shown = match s.rfind('@') {
            Some(i) => format!("redis://…@{}", &s[i + 1..]),
            None => s.to_string(),
        };
        let rest = s
            .strip_prefix("redis://")
            .ok_or_else(|| EndpointError::Scheme(shown.clone()))?;
        let (creds, hostport) = match rest.rfind('@') {
            Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
            None => (None, rest),
        };
        let hostport = hostport.trim_end_matches('/');
        let auth = creds.map(|c| match c.split_once(':') {
            Some((u, p)) => Auth {
                user: if u.is_empty() {
                    None
                } else {
                    Some(u.to_string())
                },
                password: Secret::new(p),
            },
            None => Auth {
                user: None,
                password: Secret::new(c),
            },
        });
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            let (h, p) = h
                .split_once("]:")
                .ok_or_else(|| EndpointError::Port(shown.clone()))?;
            (h, p)
        } else {
            hostport
                .rsplit_once(':')
                .ok_or_else(|| EndpointError::Port(shown.clone()))?
        };
        if host.is_empty() {
            return Err(EndpointError::NoHost(shown));
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| EndpointError::Port(shown.clone()))?;
        Ok(RedisAddr {
            host: host.to_string(),
            port,
            auth,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twemproxy_path_and_pool() {
        assert_eq!(
            parse_twemproxy("/etc/nutcracker.yml"),
            ("/etc/nutcracker.yml".into(), None)
        );
        assert_eq!(
            parse_twemproxy("/etc/nutcracker.yml#beta"),
            ("/etc/nutcracker.yml".into(), Some("beta".into()))
        );
        assert_eq!(
            parse_twemproxy("/odd#dir/n.yml#"),
            ("/odd#dir/n.yml".into(), None)
        );
    }

    #[test]
    fn parses_forms() {
        let a: RedisAddr = "redis://127.0.0.1:6379".parse().unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.auth.is_none()),
            ("127.0.0.1", 6379, true)
        );
        let a: RedisAddr = "redis://:pw@h:1".parse().unwrap();
        let auth = a.auth.unwrap();
        assert_eq!((auth.user, auth.password.expose()), (None, "pw"));
        let a: RedisAddr = "redis://bob:p:w@h:2".parse().unwrap();
        let auth = a.auth.unwrap();
        assert_eq!(
            (auth.user.as_deref(), auth.password.expose()),
            (Some("bob"), "p:w")
        );
        let a: RedisAddr = "redis://[::1]:7000".parse().unwrap();
        assert_eq!(
            (a.host.as_str(), a.host_port()),
            ("::1", "[::1]:7000".to_string())
        );
        assert_eq!(
            "rdb:/x/y.rdb".parse::<SourceSpec>().unwrap(),
            SourceSpec::RdbFile("/x/y.rdb".into())
        );
    }

    #[test]
    fn never_prints_password() {
        let a: RedisAddr = "redis://bob:hunter2@h:2".parse().unwrap();
        assert_eq!(format!("{a} {a:?}"), "redis://bob@h:2 redis://bob@h:2");
        assert!(!format!("{:?}", a.auth).contains("hunter2"));
        let e = "redis://bob:hunter2@h:0".parse::<RedisAddr>().unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = "http://bob:hunter2@h:1".parse::<RedisAddr>().unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn target_forms() {
        let t: TargetSpec = "cluster://bob:pw@h1:7000,h2:7001".parse().unwrap();
        let TargetSpec::Cluster(seeds) = &t else {
            panic!("{t:?}")
        };
        assert_eq!(seeds.len(), 2);
        assert_eq!(seeds[1].host_port(), "h2:7001");
        assert_eq!(seeds[1].auth.as_ref().unwrap().password.expose(), "pw");
        assert_eq!(t.to_string(), "cluster://bob@h1:7000,h2:7001");
        assert!(!format!("{t:?}").contains("pw@"));
        assert!("cluster://h1:7000,h2".parse::<TargetSpec>().is_err());
        let e = "cluster://:secret@h1:0".parse::<TargetSpec>().unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        assert_eq!(
            "twemproxy:/etc/n.yml#beta".parse::<TargetSpec>().unwrap(),
            TargetSpec::Twemproxy {
                path: "/etc/n.yml".into(),
                pool: Some("beta".into())
            }
        );
        assert!("rdb:/x".parse::<TargetSpec>().is_err());
        assert!(matches!(
            "redis://h:1".parse::<TargetSpec>().unwrap(),
            TargetSpec::Redis(_)
        ));
    }

    #[test]
    fn cluster_source_form() {
        let s: SourceSpec = "cluster://:pw@h1:7000,[::1]:7001/".parse().unwrap();
        let SourceSpec::Cluster(seeds) = &s else {
            panic!("{s:?}")
        };
        assert_eq!(seeds.len(), 2);
        assert_eq!(seeds[1].host_port(), "[::1]:7001");
        assert_eq!(seeds[0].auth.as_ref().unwrap().password.expose(), "pw");
        assert_eq!(s.to_string(), "cluster://h1:7000,[::1]:7001");
        assert!(!format!("{s:?}").contains("pw"));
        assert!("cluster://h1:7000,".parse::<SourceSpec>().is_err());
        let e = "cluster://u:secret@h1:x".parse::<SourceSpec>().unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn rejects_bad() {
        assert!("redis://h".parse::<RedisAddr>().is_err());
        assert!("redis://h:99999".parse::<RedisAddr>().is_err());
        assert!("redis://:1".parse::<RedisAddr>().is_err());
        assert!("rdb:".parse::<SourceSpec>().is_err());
    }
}
