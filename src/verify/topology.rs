//! What is compared with what: the source groups (a master, or every master of a twemproxy pool) and the
//! target (one server, or the backends of a twemproxy pool, each key on the backend nutcracker places it
//! on), with what each server can do.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::error::{self, VerifyError};
use crate::endpoint::RedisAddr;
use crate::target::client::{Client, Role};
use crate::target::ServerInfo;
use crate::twemproxy::{Router, TwemproxyConfig};

/// A `--source` or `--target` as given: `redis://[[user]:password@]host:port` or `twemproxy:CONF[#POOL]`.
#[derive(Clone, PartialEq, Eq)]
pub enum Endpoint {
    Redis(RedisAddr),
    Twemproxy {
        path: PathBuf,
        pool: Option<String>,
    },
    /// A Redis Cluster: its masters, each key on the master that owns its slot.
    Cluster(Vec<RedisAddr>),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Redis(a) => fmt::Display::fmt(a, f),
            Endpoint::Cluster(seeds) => {
                fmt::Display::fmt(&crate::endpoint::TargetSpec::Cluster(seeds.clone()), f)
            }
            Endpoint::Twemproxy { path, pool: None } => write!(f, "twemproxy:{}", path.display()),
            Endpoint::Twemproxy {
                path,
                pool: Some(p),
            } => write!(f, "twemproxy:{}#{p}", path.display()),
        }
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = s.strip_prefix("twemproxy:") {
            if rest.is_empty() || rest == "#" {
                return Err(
                    "twemproxy: needs a nutcracker config path: twemproxy:CONF[#POOL]".into(),
                );
            }
            let (path, pool) = crate::endpoint::parse_twemproxy(rest);
            return Ok(Endpoint::Twemproxy { path, pool });
        }
        if s.starts_with("cluster://") {
            return match s.parse::<crate::endpoint::TargetSpec>() {
                Ok(crate::endpoint::TargetSpec::Cluster(seeds)) => Ok(Endpoint::Cluster(seeds)),
                Ok(_) => Err(format!("{s}: not a cluster endpoint")),
                Err(e) => Err(e.to_string()),
            };
        }
        if s.starts_with("rdb:") {
            return Err(format!(
                "{s}: verify compares live servers; an RDB file cannot be verified against \
                 (load it into a server first, or verify the server it came from)"
            ));
        }
        s.parse::<RedisAddr>().map(Endpoint::Redis).map_err(|e| {
            format!("{e}, or twemproxy:CONF[#POOL] for every master of a nutcracker pool")
        })
    }
}

/// What a server supports, from its `INFO`.
#[derive(Clone, Debug)]
pub struct Caps {
    pub version: String,
    /// The RDB version its `DUMP` payloads carry.
    pub rdb: u16,
    /// `PEXPIRETIME` (7.0): absolute expiry straight from the server.
    pub pexpiretime: bool,
    /// `SMISMEMBER` (6.2).
    pub smismember: bool,
    /// `XRANGE` with an exclusive `(id` start (6.2).
    pub xrange_exclusive: bool,
    /// Hash field expiry (`HPEXPIRETIME`, Redis 7.4, Valkey 9).
    pub hash_field_ttl: bool,
    /// `INFO` `redis_version` `major.minor`.
    pub redis_version: (u32, u32, u32),
}

impl Caps {
    pub fn from_info(info: &ServerInfo) -> Caps {
        let v = info.redis_version;
        Caps {
            version: info.version_string(),
            rdb: info.rdb_version,
            pexpiretime: v >= (7, 0, 0),
            smismember: v >= (6, 2, 0),
            xrange_exclusive: v >= (6, 2, 0),
            hash_field_ttl: info.has_hash_field_expiry(),
            redis_version: v,
        }
    }
}

/// One server of a group.
#[derive(Clone, Debug)]
pub struct Node {
    pub addr: RedisAddr,
    /// How the server is named in reports: `redis://host:port` (never a password), with the pool
    /// server's name for a twemproxy backend.
    pub shown: String,
    pub caps: Caps,
    /// dbs holding keys, with their key counts (INFO keyspace at the start).
    pub keyspace: Vec<(u32, u64)>,
}

/// A source or target as a set of servers and, for a twemproxy pool, the placement of keys over them.
#[derive(Clone, Debug)]
pub struct Group {
    pub shown: String,
    pub nodes: Vec<Node>,
    /// `Some` for a twemproxy pool whose placement is determined (ketama, modula).
    pub router: Option<Router>,
    /// `Some` for a Redis Cluster: which master owns each slot (`nodes` in the map's order).
    pub slots: Option<std::sync::Arc<crate::cluster::SlotMap>>,
}

impl Group {
    /// Where `key` lives in this group: the routed node, or `None` when any node may hold it (a plain
    /// master is a group of one, so that is node 0).
    pub fn owner(&self, key: &[u8]) -> Option<usize> {
        if let Some(map) = &self.slots {
            return map.owner(crate::cluster::key_slot(key));
        }
        match (&self.router, self.nodes.len()) {
            (_, 1) => Some(0),
            (Some(r), _) => Some(r.server_for(key)),
            (None, _) => None,
        }
    }
}

/// Read an endpoint into a group (loading a nutcracker config), connect to every server once and learn
/// its capabilities and keyspace.
pub async fn resolve(ep: &Endpoint, role: Role, timeout: Duration) -> Result<Group, VerifyError> {
    let mut slots = None;
    let (addrs, router, names): (Vec<RedisAddr>, Option<Router>, Vec<String>) = match ep {
        Endpoint::Redis(a) => (vec![a.clone()], None, vec![a.to_string()]),
        Endpoint::Cluster(seeds) => {
            let (map, nodes) = crate::target::shard::discover(seeds)
                .await
                .map_err(|e| VerifyError::Config(format!("{role} {ep}: {e}")))?;
            if !map.uncovered().is_empty() {
                return Err(VerifyError::Config(format!(
                    "{role} {ep}: some slots are served by no master (cluster_state is not ok)"
                )));
            }
            slots = Some(std::sync::Arc::new(map));
            let names = nodes.iter().map(|a| a.to_string()).collect();
            (nodes, None, names)
        }
        Endpoint::Twemproxy { path, pool } => {
            let cfg = TwemproxyConfig::load(path)
                .map_err(|e| VerifyError::Config(format!("{role} {ep}: {e}")))?;
            let pool = cfg
                .select_pool(pool.as_deref())
                .map_err(|e| VerifyError::Config(format!("{role} {ep}: {e}")))?;
            let masters = pool
                .masters()
                .map_err(|e| VerifyError::Config(format!("{role} {ep}: {e}")))?;
            let router = match Router::new(pool) {
                Ok(r) => Some(r),
                Err(e) if role == Role::Target => {
                    return Err(VerifyError::Config(format!("{role} {ep}: {e}")))
                }
                // A random-distribution source pool: a key may be on any master.
                Err(_) => None,
            };
            let names = pool
                .servers
                .iter()
                .zip(&masters)
                .map(|(s, a)| format!("{a} ({})", s.key_name()))
                .collect();
            (masters, router, names)
        }
    };
    let mut nodes = Vec::with_capacity(addrs.len());
    for (addr, shown) in addrs.into_iter().zip(names) {
        let mut c = Client::connect_as(&addr, role, timeout)
            .await
            .map_err(error::on(role))?;
        let info = ServerInfo::from_info(&c.info(b"all").await.map_err(error::on(role))?);
        if info.cluster && slots.is_none() {
            return Err(VerifyError::Config(format!(
                "{role} {shown} is a Redis Cluster node: give the cluster as cluster://host:port[,host:port…]"
            )));
        }
        nodes.push(Node {
            addr,
            shown,
            caps: Caps::from_info(&info),
            keyspace: info.keyspace.clone(),
        });
    }
    Ok(Group {
        shown: ep.to_string(),
        nodes,
        router,
        slots,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints() {
        assert_eq!(
            "twemproxy:/etc/n.yml#p".parse::<Endpoint>().unwrap(),
            Endpoint::Twemproxy {
                path: "/etc/n.yml".into(),
                pool: Some("p".into())
            }
        );
        assert!(matches!(
            "redis://:pw@h:1".parse::<Endpoint>().unwrap(),
            Endpoint::Redis(_)
        ));
        let e = "rdb:/x.rdb".parse::<Endpoint>().unwrap_err();
        assert!(e.contains("live servers"), "{e}");
        let e = "redis://u:secret@h".parse::<Endpoint>().unwrap_err();
        assert!(!e.contains("secret"), "{e}");
        assert!("twemproxy:".parse::<Endpoint>().is_err());
        let shown = "redis://u:secret@h:2"
            .parse::<Endpoint>()
            .unwrap()
            .to_string();
        assert_eq!(shown, "redis://u@h:2");
    }
}
