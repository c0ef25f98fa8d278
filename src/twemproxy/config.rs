//! nutcracker YAML configs (`nc_conf.c`): pools, their keys, defaults and validation.
//!
//! A config is a mapping of pool name → pool; a pool is a mapping of directives, all scalars except
//! `servers`, a sequence of `"host:port:weight [name]"` or `"/path/unix_socket:weight [name]"` strings.
//! Scalars are read as their text exactly as written (YAML's `1.10` stays `1.10`, `12345` stays a
//! string), as libyaml hands them to nutcracker.
//!
//! Differences from nutcracker, all deliberate:
//! - keys nutcracker does not know are accepted and listed in [`Pool::unknown_keys`] (nutcracker refuses
//!   them; ferry should not choke on a config meant for a newer or patched twemproxy);
//! - host names are not resolved (nutcracker resolves `listen:` at load time);
//! - a server line with an empty host is refused (nutcracker accepts it and fails at connect time).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use super::dist::Distribution;
use super::hash::Hash;
use super::TwemproxyError;
use crate::endpoint::{Auth, RedisAddr, Secret};

/// A parsed nutcracker config: its pools in file order.
#[derive(Clone, Debug)]
pub struct TwemproxyConfig {
    path: PathBuf,
    pools: Vec<Pool>,
}

/// Where a pool listens (`listen:`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// `host:port` (split at the last `:`; the host is not resolved).
    Tcp { host: String, port: u16 },
    /// `/path/to/socket [permissions]`, permissions in octal.
    Unix { path: PathBuf, perm: Option<u32> },
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Tcp { host, port } => write!(f, "{host}:{port}"),
            Listen::Unix {
                path,
                perm: Some(p),
            } => write!(f, "{} {p:o}", path.display()),
            Listen::Unix { path, perm: None } => write!(f, "{}", path.display()),
        }
    }
}

/// One line of a pool's `servers:`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerEntry {
    /// The address: a host name or IP (`127.0.0.1`, `::1`), or a unix socket path (starts with `/`).
    pub host: String,
    /// The TCP port; 0 for a unix socket.
    pub port: u16,
    /// The weight, at least 1.
    pub weight: u32,
    /// The optional name after the space.
    pub name: Option<String>,
    /// The line as written.
    pub raw: String,
    key_name: String,
}

impl ServerEntry {
    /// The string twemproxy hashes to place this server and sorts servers by (`nc_conf.c`,
    /// `conf_add_server`): the `name` if one is given, else the line's `host:port` as written — or just
    /// `host` when the port is 11211 (libmemcached compatibility), or `path:` for a unix socket.
    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    /// Whether this server is a unix socket path.
    pub fn is_unix(&self) -> bool {
        self.host.starts_with('/')
    }
}

/// One pool of a nutcracker config, with nutcracker's defaults filled in.
#[derive(Clone, Debug)]
pub struct Pool {
    pub name: String,
    pub listen: Listen,
    /// `hash:`, default `fnv1a_64`.
    pub hash: Hash,
    /// `hash_tag:`, two bytes such as `{}`; none by default.
    pub hash_tag: Option<[u8; 2]>,
    /// `distribution:`, default `ketama`.
    pub distribution: Distribution,
    /// `timeout:` in ms; `None` (nutcracker's -1) waits forever.
    pub timeout_ms: Option<u32>,
    /// `backlog:`, default 512.
    pub backlog: u32,
    /// `client_connections:` as written, default 0 (nutcracker 0.5 overrides it to 0 anyway).
    pub client_connections: u32,
    /// `redis:`, default false (a memcached pool).
    pub redis: bool,
    /// `tcpkeepalive:`, default false.
    pub tcpkeepalive: bool,
    /// `reuseport:` (twemproxy after 0.5.0), default false.
    pub reuseport: bool,
    /// `redis_auth:`: the password nutcracker sends to every server and wants from its clients.
    pub redis_auth: Option<Secret>,
    /// `redis_db:`, default 0: the db nutcracker SELECTs on its server connections.
    pub redis_db: u32,
    /// `preconnect:`, default false.
    pub preconnect: bool,
    /// `auto_eject_hosts:`, default false. Ejection changes live placement; ferry assumes none.
    pub auto_eject_hosts: bool,
    /// `server_connections:`, default 1, never 0.
    pub server_connections: u32,
    /// `server_retry_timeout:` in ms, default 30000.
    pub server_retry_timeout_ms: u32,
    /// `server_failure_limit:`, default 2.
    pub server_failure_limit: u32,
    /// `servers:` in file order (twemproxy itself orders them by [`ServerEntry::key_name`]; the
    /// [`super::Router`] accounts for that and answers indexes into this list).
    pub servers: Vec<ServerEntry>,
    /// Keys of the pool that nutcracker does not know, ignored.
    pub unknown_keys: Vec<String>,
}

impl Pool {
    /// One source address per server, in file order, with `redis_auth` as the password. A caller may
    /// replace `auth` (e.g. an ACL user for PSYNC). Refused for a memcached pool and for unix-socket
    /// servers (ferry connects over TCP).
    pub fn masters(&self) -> Result<Vec<RedisAddr>, TwemproxyError> {
        if !self.redis {
            return Err(TwemproxyError::NotRedis {
                pool: self.name.clone(),
            });
        }
        self.servers
            .iter()
            .map(|s| {
                if s.is_unix() {
                    return Err(TwemproxyError::UnixSocketServer {
                        pool: self.name.clone(),
                        server: s.raw.clone(),
                    });
                }
                Ok(RedisAddr {
                    host: s.host.clone(),
                    port: s.port,
                    auth: self.redis_auth.as_ref().map(|pw| Auth {
                        user: None,
                        password: pw.clone(),
                    }),
                })
            })
            .collect()
    }
}

impl TwemproxyConfig {
    /// Read and validate the nutcracker config at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<TwemproxyConfig, TwemproxyError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| TwemproxyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Validate config text; `path` is only used in messages.
    pub fn parse(text: &str, path: impl AsRef<Path>) -> Result<TwemproxyConfig, TwemproxyError> {
        let path = path.as_ref().to_path_buf();
        let yaml_err = |e: serde_norway::Error| TwemproxyError::Yaml {
            path: path.clone(),
            message: e.to_string(),
        };
        let raw: Option<RawDoc> = serde_norway::from_str(text).map_err(yaml_err)?;
        let raw = raw.map(|d| d.0).unwrap_or_default();
        if raw.is_empty() {
            return Err(TwemproxyError::NoPools { path });
        }
        let mut pools: Vec<Pool> = Vec::with_capacity(raw.len());
        for (name, entries) in raw {
            if pools.iter().any(|p| p.name == name) {
                return Err(TwemproxyError::InvalidPool {
                    path,
                    pool: name,
                    message: "is defined twice".into(),
                });
            }
            pools.push(build_pool(&path, name, entries)?);
        }
        // nc_conf.c, conf_post_validate: no two pools on one listen address.
        for (i, a) in pools.iter().enumerate() {
            if let Some(b) = pools[i + 1..].iter().find(|b| b.listen == a.listen) {
                return Err(TwemproxyError::SameListen {
                    path,
                    first: a.name.clone(),
                    second: b.name.clone(),
                    listen: a.listen.to_string(),
                });
            }
        }
        Ok(TwemproxyConfig { path, pools })
    }

    /// The file this config came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pools, in file order.
    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }

    /// The pool names, in file order.
    pub fn pool_names(&self) -> Vec<String> {
        self.pools.iter().map(|p| p.name.clone()).collect()
    }

    /// The pool named `name`, or the only pool when `name` is `None`. With several pools and no name,
    /// or a name not present, the error lists the pool names.
    pub fn select_pool(&self, name: Option<&str>) -> Result<&Pool, TwemproxyError> {
        match name {
            Some(n) => {
                self.pools
                    .iter()
                    .find(|p| p.name == n)
                    .ok_or_else(|| TwemproxyError::NoSuchPool {
                        path: self.path.clone(),
                        name: n.to_string(),
                        pools: self.pool_names(),
                    })
            }
            None if self.pools.len() == 1 => Ok(&self.pools[0]),
            None => Err(TwemproxyError::PoolNotChosen {
                path: self.path.clone(),
                pools: self.pool_names(),
            }),
        }
    }
}

/// The scalar directives nutcracker knows (`conf_commands` in nc_conf.c), `servers` aside.
const SCALAR_KEYS: [&str; 17] = [
    "listen",
    "hash",
    "hash_tag",
    "distribution",
    "timeout",
    "backlog",
    "client_connections",
    "redis",
    "tcpkeepalive",
    "reuseport",
    "redis_auth",
    "redis_db",
    "preconnect",
    "auto_eject_hosts",
    "server_connections",
    "server_retry_timeout",
    "server_failure_limit",
];

enum RawValue {
    Scalar(String),
    Servers(Vec<String>),
    Unknown,
}

/// The document as read: pools in order, each its directives in order, values as written.
struct RawDoc(Vec<(String, Vec<(String, RawValue)>)>);

impl<'de> Deserialize<'de> for RawDoc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawDoc;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping of pool names to pools")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawDoc, A::Error> {
                let mut pools = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    let RawPool(entries) = map.next_value()?;
                    pools.push((name, entries));
                }
                Ok(RawDoc(pools))
            }
        }
        d.deserialize_map(V)
    }
}

struct RawPool(Vec<(String, RawValue)>);

impl<'de> Deserialize<'de> for RawPool {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawPool;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a pool: a mapping of directives (listen, servers, ...)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawPool, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value = if key == "servers" {
                        RawValue::Servers(map.next_value::<Vec<String>>().map_err(|e| {
                            de::Error::custom(format_args!(
                                "servers: {e} (expected a list of \"host:port:weight [name]\")"
                            ))
                        })?)
                    } else if SCALAR_KEYS.contains(&key.as_str()) {
                        RawValue::Scalar(map.next_value::<String>().map_err(|e| {
                            de::Error::custom(format_args!("{key}: {e} (expected a scalar)"))
                        })?)
                    } else {
                        map.next_value::<IgnoredAny>()?;
                        RawValue::Unknown
                    };
                    entries.push((key, value));
                }
                Ok(RawPool(entries))
            }
        }
        d.deserialize_map(V)
    }
}

/// nutcracker's `nc_atoi`: decimal digits only, non-empty, within `int`.
fn nc_atoi(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u32>().ok().filter(|&n| n <= i32::MAX as u32)
}

fn nc_port(s: &str) -> Option<u16> {
    nc_atoi(s)
        .and_then(|n| u16::try_from(n).ok())
        .filter(|&p| p != 0)
}

fn build_pool(
    path: &Path,
    name: String,
    entries: Vec<(String, RawValue)>,
) -> Result<Pool, TwemproxyError> {
    let invalid = |key: &str, value: &str, reason: &str| TwemproxyError::InvalidValue {
        path: path.to_path_buf(),
        pool: name.clone(),
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    };
    let pool_err = |message: String| TwemproxyError::InvalidPool {
        path: path.to_path_buf(),
        pool: name.clone(),
        message,
    };

    let mut seen: Vec<&str> = Vec::new();
    let mut unknown_keys = Vec::new();
    let mut scalars: Vec<(&str, &str)> = Vec::new();
    let mut server_lines: Option<&[String]> = None;
    for (key, value) in &entries {
        if let RawValue::Unknown = value {
            unknown_keys.push(key.clone());
            continue;
        }
        // nc_conf.c: every setter refuses a second value ("is a duplicate").
        if seen.contains(&key.as_str()) {
            return Err(pool_err(format!("{key}: is given twice")));
        }
        seen.push(key);
        match value {
            RawValue::Scalar(v) => scalars.push((key, v)),
            RawValue::Servers(lines) => server_lines = Some(lines),
            RawValue::Unknown => {}
        }
    }
    let get = |key: &str| scalars.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let num = |key: &str| -> Result<Option<u32>, TwemproxyError> {
        get(key)
            .map(|v| nc_atoi(v).ok_or_else(|| invalid(key, v, "is not a number")))
            .transpose()
    };
    let boolean = |key: &str| -> Result<bool, TwemproxyError> {
        match get(key) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(v) => Err(invalid(key, v, "is not \"true\" or \"false\"")),
        }
    };

    let listen = match get("listen") {
        None => return Err(pool_err("directive \"listen:\" is missing".into())),
        Some(v) => parse_listen(v).map_err(|reason| invalid("listen", v, reason))?,
    };
    let hash = match get("hash") {
        None => Hash::Fnv1a_64,
        Some(v) => Hash::from_name(v).ok_or_else(|| {
            let names: Vec<&str> = Hash::ALL.iter().map(|h| h.name()).collect();
            invalid(
                "hash",
                v,
                &format!("is not a valid hash (one of {})", names.join(", ")),
            )
        })?,
    };
    let hash_tag = match get("hash_tag") {
        None => None,
        Some(v) => match v.as_bytes() {
            &[a, b] => Some([a, b]),
            _ => {
                return Err(invalid(
                    "hash_tag",
                    v,
                    "is not a valid hash tag string with two characters",
                ))
            }
        },
    };
    let distribution = match get("distribution") {
        None => Distribution::Ketama,
        Some(v) => Distribution::from_name(v).ok_or_else(|| {
            invalid(
                "distribution",
                v,
                "is not a valid distribution (ketama, modula or random)",
            )
        })?,
    };
    let redis = boolean("redis")?;
    let redis_auth = get("redis_auth").map(Secret::new);
    if !redis && redis_auth.is_some() {
        return Err(pool_err(
            "directive \"redis_auth:\" is only valid for a redis pool (redis: true)".into(),
        ));
    }
    let server_connections = num("server_connections")?.unwrap_or(1);
    if server_connections == 0 {
        return Err(invalid("server_connections", "0", "cannot be 0"));
    }

    let lines = server_lines.unwrap_or_default();
    if lines.is_empty() {
        return Err(pool_err("has no servers".into()));
    }
    let mut servers = Vec::with_capacity(lines.len());
    for line in lines {
        servers.push(parse_server(line).map_err(|reason| invalid("servers", line, reason))?);
    }
    // nc_conf.c, conf_validate_server: servers with the same name (key name) are duplicates.
    for (i, a) in servers.iter().enumerate() {
        if let Some(b) = servers[i + 1..].iter().find(|b| b.key_name == a.key_name) {
            return Err(pool_err(format!(
                "servers '{}' and '{}' have the same name '{}'",
                a.raw, b.raw, a.key_name
            )));
        }
    }

    Ok(Pool {
        listen,
        hash,
        hash_tag,
        distribution,
        timeout_ms: num("timeout")?,
        backlog: num("backlog")?.unwrap_or(512),
        client_connections: num("client_connections")?.unwrap_or(0),
        redis,
        tcpkeepalive: boolean("tcpkeepalive")?,
        reuseport: boolean("reuseport")?,
        redis_auth,
        redis_db: num("redis_db")?.unwrap_or(0),
        preconnect: boolean("preconnect")?,
        auto_eject_hosts: boolean("auto_eject_hosts")?,
        server_connections,
        server_retry_timeout_ms: num("server_retry_timeout")?.unwrap_or(30_000),
        server_failure_limit: num("server_failure_limit")?.unwrap_or(2),
        servers,
        unknown_keys,
        name,
    })
}

/// `listen:` as `conf_set_listen` reads it.
fn parse_listen(v: &str) -> Result<Listen, &'static str> {
    if v.starts_with('/') {
        return Ok(match v.rsplit_once(' ') {
            None => Listen::Unix {
                path: PathBuf::from(v),
                perm: None,
            },
            Some((p, perm)) => {
                let perm = u32::from_str_radix(perm, 8)
                    .ok()
                    .filter(|&m| m <= 0o777)
                    .ok_or(
                    "has an invalid file permission in \"socket_path permission\" format string",
                )?;
                Listen::Unix {
                    path: PathBuf::from(p),
                    perm: Some(perm),
                }
            }
        });
    }
    let (host, port) = v
        .rsplit_once(':')
        .ok_or("has an invalid \"hostname:port\" format string")?;
    let port = nc_port(port).ok_or("has an invalid port in \"hostname:port\" format string")?;
    Ok(Listen::Tcp {
        host: host.to_string(),
        port,
    })
}

/// A server line as `conf_add_server` reads it: from the end, an optional ` name`, then `:weight`, then
/// (not for a `/unix/socket`) `:port`; whatever is left is the host, which may hold colons (`::1`).
fn parse_server(raw: &str) -> Result<ServerEntry, &'static str> {
    const FORMAT: &str =
        "has an invalid \"hostname:port:weight [name]\" or \"/path/unix_socket:weight [name]\" format string";
    let unix = raw.starts_with('/');
    let (rest, name) = match raw.rsplit_once(' ') {
        Some((rest, name)) => (rest, Some(name)),
        None => (raw, None),
    };
    let (rest, weight) = rest.rsplit_once(':').ok_or(FORMAT)?;
    let (host, port_str) = if unix {
        if rest.contains(':') {
            return Err(FORMAT);
        }
        (rest, "")
    } else {
        rest.rsplit_once(':').ok_or(FORMAT)?
    };
    let weight = nc_atoi(weight)
        .ok_or("has an invalid weight in \"hostname:port:weight [name]\" format string")?;
    if weight == 0 {
        return Err("has a zero weight in \"hostname:port:weight [name]\" format string");
    }
    let port = if unix {
        0
    } else {
        nc_port(port_str)
            .ok_or("has an invalid port in \"hostname:port:weight [name]\" format string")?
    };
    if host.is_empty() {
        return Err("has an empty host");
    }
    let key_name = match name {
        Some(n) => n.to_string(),
        // libmemcached compatibility: the port is left out of the hashed name when it is 11211.
        None if port == 11211 => host.to_string(),
        // `host:port` exactly as written (for a unix socket, `path:` — its "port" is empty).
        None => raw[..host.len() + 1 + port_str.len()].to_string(),
    };
    Ok(ServerEntry {
        host: host.to_string(),
        port,
        weight,
        name: name.map(str::to_string),
        raw: raw.to_string(),
        key_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TwemproxyConfig, TwemproxyError> {
        TwemproxyConfig::parse(text, "test.yml")
    }

    #[test]
    fn server_lines_as_nutcracker_reads_them() {
        let s = parse_server("127.0.0.1:6379:1 m1").unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.weight, s.name.as_deref()),
            ("127.0.0.1", 6379, 1, Some("m1"))
        );
        assert_eq!(s.key_name(), "m1");
        let s = parse_server("redis-a.example:7000:25").unwrap();
        assert_eq!(s.key_name(), "redis-a.example:7000");
        assert_eq!(s.weight, 25);
        let s = parse_server("10.0.0.1:11211:1").unwrap();
        assert_eq!(s.key_name(), "10.0.0.1", "port 11211 is left out");
        let s = parse_server("::1:6380:2").unwrap();
        assert_eq!((s.host.as_str(), s.port), ("::1", 6380));
        assert_eq!(s.key_name(), "::1:6380");
        let s = parse_server("/var/run/redis.sock:3 sock").unwrap();
        assert!(s.is_unix());
        assert_eq!((s.port, s.weight, s.key_name()), (0, 3, "sock"));
        let s = parse_server("/var/run/redis.sock:3").unwrap();
        assert_eq!(s.key_name(), "/var/run/redis.sock:");
        // Leading zeros are digits to nc_atoi.
        assert_eq!(parse_server("h:06379:01").unwrap().port, 6379);

        for bad in [
            "127.0.0.1:6379",
            "127.0.0.1",
            "127.0.0.1:6379:0",
            "127.0.0.1:6379:-1",
            "127.0.0.1:6379:x",
            "127.0.0.1:0:1",
            "127.0.0.1:65536:1",
            "127.0.0.1:63 79:1",
            ":6379:1",
            "/a:b.sock:1",
            "/a.sock",
            "h:1:99999999999",
        ] {
            assert!(parse_server(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn defaults_and_every_key() {
        let c = parse("alpha:\n  listen: 127.0.0.1:22121\n  servers:\n   - 127.0.0.1:6379:1\n")
            .unwrap();
        let p = c.select_pool(None).unwrap();
        assert_eq!(p.hash, Hash::Fnv1a_64);
        assert_eq!(p.distribution, Distribution::Ketama);
        assert_eq!(p.hash_tag, None);
        assert_eq!(p.timeout_ms, None);
        assert_eq!(
            (
                p.backlog,
                p.server_connections,
                p.server_retry_timeout_ms,
                p.server_failure_limit
            ),
            (512, 1, 30_000, 2)
        );
        assert!(!p.redis && !p.preconnect && !p.auto_eject_hosts && !p.tcpkeepalive);
        assert!(matches!(p.masters(), Err(TwemproxyError::NotRedis { .. })));

        let c = parse(
            "beta:\n  listen: /tmp/nc.sock 0755\n  hash: murmur\n  hash_tag: \"[]\"\n  distribution: modula\n  timeout: 400\n  backlog: 1024\n  client_connections: 10\n  redis: true\n  tcpkeepalive: true\n  reuseport: false\n  redis_auth: 1.10\n  redis_db: 3\n  preconnect: true\n  auto_eject_hosts: true\n  server_connections: 2\n  server_retry_timeout: 2000\n  server_failure_limit: 3\n  future_knob: [1, 2]\n  servers:\n   - 10.0.0.1:6379:2 a\n   - 10.0.0.2:6380:1\n",
        )
        .unwrap();
        let p = c.select_pool(Some("beta")).unwrap();
        assert_eq!(
            p.listen,
            Listen::Unix {
                path: "/tmp/nc.sock".into(),
                perm: Some(0o755)
            }
        );
        assert_eq!(p.hash, Hash::Murmur);
        assert_eq!(p.hash_tag, Some(*b"[]"));
        assert_eq!(p.distribution, Distribution::Modula);
        assert_eq!(p.timeout_ms, Some(400));
        assert_eq!((p.backlog, p.client_connections, p.redis_db), (1024, 10, 3));
        assert!(p.redis && p.tcpkeepalive && !p.reuseport && p.preconnect && p.auto_eject_hosts);
        // The password is the scalar's text, not YAML's float 1.1.
        assert_eq!(p.redis_auth.as_ref().unwrap().expose(), "1.10");
        assert_eq!(
            (
                p.server_connections,
                p.server_retry_timeout_ms,
                p.server_failure_limit
            ),
            (2, 2000, 3)
        );
        assert_eq!(p.unknown_keys, vec!["future_knob".to_string()]);
        let m = p.masters().unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!((m[1].host.as_str(), m[1].port), ("10.0.0.2", 6380));
        assert_eq!(m[0].auth.as_ref().unwrap().password.expose(), "1.10");
    }

    #[test]
    fn errors_name_pool_key_and_value() {
        let base = "p1:\n  listen: 127.0.0.1:22121\n  redis: true\n";
        let srv = "  servers:\n   - 127.0.0.1:6379:1\n";
        let cases: [(String, &[&str]); 9] = [
            (
                format!("{base}  hash: sha1\n{srv}"),
                &["p1", "hash", "sha1", "fnv1a_64"],
            ),
            (
                format!("{base}  distribution: rendezvous\n{srv}"),
                &["p1", "distribution", "rendezvous"],
            ),
            (
                format!("{base}  hash_tag: \"{{\"\n{srv}"),
                &["p1", "hash_tag", "two characters"],
            ),
            (
                format!("{base}  timeout: -5\n{srv}"),
                &["p1", "timeout", "-5", "not a number"],
            ),
            (
                format!("{base}  preconnect: yes\n{srv}"),
                &["p1", "preconnect", "yes"],
            ),
            (
                format!("{base}  servers:\n   - 127.0.0.1:6379\n"),
                &["p1", "servers", "127.0.0.1:6379"],
            ),
            (
                format!("{base}  servers:\n   - a:1:1 x\n   - b:1:1 x\n"),
                &["p1", "same name", "'x'"],
            ),
            (
                format!("{base}  hash: md5\n  hash: crc16\n{srv}"),
                &["p1", "hash", "twice"],
            ),
            (
                "p1:\n  redis: true\n  servers:\n   - h:1:1\n".to_string(),
                &["p1", "listen"],
            ),
        ];
        for (text, needles) in cases {
            let e = parse(&text).unwrap_err().to_string();
            for n in needles {
                assert!(e.contains(n), "error {e:?} lacks {n:?} for:\n{text}");
            }
        }
        let e = parse("p1:\n  listen: 127.0.0.1:22121\n  servers: []\n").unwrap_err();
        assert!(e.to_string().contains("no servers"), "{e}");
        let e = parse(
            "p1:\n  listen: 127.0.0.1:22121\n  redis_auth: hunter2\n  servers:\n   - h:1:1\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("redis_auth") && !e.contains("hunter2"), "{e}");
        let e = parse("p1:\n  listen: 127.0.0.1:1\n  servers:\n   - h:1:1\np2:\n  listen: 127.0.0.1:1\n  servers:\n   - h:1:1\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("p1") && e.contains("p2") && e.contains("127.0.0.1:1"),
            "{e}"
        );
        assert!(matches!(parse(""), Err(TwemproxyError::NoPools { .. })));
        assert!(matches!(parse("p1: 3\n"), Err(TwemproxyError::Yaml { .. })));
        assert!(matches!(
            parse("- a\n- b\n"),
            Err(TwemproxyError::Yaml { .. })
        ));
        let e = parse("p1:\n  listen: [1, 2]\n  servers:\n   - h:1:1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen"), "{e}");
    }

    #[test]
    fn pool_selection() {
        let two = parse("a:\n  listen: 127.0.0.1:1\n  servers:\n   - h:1:1\nb:\n  listen: 127.0.0.1:2\n  servers:\n   - h:1:1\n").unwrap();
        assert_eq!(two.pool_names(), vec!["a".to_string(), "b".to_string()]);
        let e = two.select_pool(None).unwrap_err().to_string();
        assert!(e.contains("a, b") && e.contains("#POOL"), "{e}");
        let e = two.select_pool(Some("c")).unwrap_err().to_string();
        assert!(e.contains("'c'") && e.contains("a, b"), "{e}");
        assert_eq!(two.select_pool(Some("b")).unwrap().name, "b");
    }
}
