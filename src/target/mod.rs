//! Targets: connections, pipelined writing, reply checking in order, reconnects, error accounting.
//!
//! - [`client::Client`]: one connection for everything but the data path: prechecks, administrative
//!   commands, the pool's handshake, and `ferry verify`'s pipelined reads (sent again after a reconnect).
//! - [`pool::WriterPool`]: several pipelined connections to one target. Work arrives as [`pool::Batch`]es
//!   of encoded commands; each connection writes them in order and checks every reply in order. In-flight
//!   bytes are bounded by a semaphore, so a slow target slows the producer instead of filling memory.
//! - [`stats::TargetStats`]: counters and rejected-write accounting, read by status.
//! - [`latency::LatencyRecorder`]: write round trips per target (an HDR histogram), recorded by the pool and
//!   read by status.

pub mod applied;
pub mod client;
pub mod latency;
pub mod pool;
pub mod redirect;
pub mod scripts;
pub mod shard;
pub mod stats;

use crate::endpoint::RedisAddr;
use crate::info::Info;

/// Why talking to a target failed. Says which target (never its password) and whether a retry can help.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("target {addr}: cannot connect: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("target {addr}: connection lost: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("target {addr}: authentication failed: {msg} (check the user and password in the target URL)")]
    Auth { addr: String, msg: String },
    #[error("target {addr}: {what} answered {msg}")]
    Command {
        addr: String,
        what: String,
        msg: String,
    },
    #[error("target {addr}: protocol error: {detail}")]
    Protocol { addr: String, detail: String },
    #[error("target {addr}: no answer within {secs} s")]
    Timeout { addr: String, secs: u64 },
    #[error("target {addr}: the writer pool stopped")]
    Closed { addr: String },
    /// The server behind the address is another instance than the one written to so far: it restarted,
    /// and may have lost what ferry gave it. Writing on would hide that.
    #[error("target {addr} restarted while being written to ({detail}); it may have lost data ferry wrote, so \
             ferry does not write on. Run ferry again: it resumes from the checkpoint the target kept, or runs \
             a full sync of each source whose checkpoint the target lost")]
    Restarted { addr: String, detail: String },
    /// A node of a cluster target answered a redirection (`MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN`) that
    /// its writer does not follow in place ([`redirect`]: a failover, a master that joined, …): the slot
    /// layout changed while ferry wrote. Nothing of the refused command's transaction was applied; every
    /// slot's checkpoint says exactly what its data holds, so the job starts again on the new layout (see
    /// `sync`).
    #[error("target {addr}: the cluster's slot layout changed while ferry wrote ({msg}); nothing of that \
             write was applied")]
    Topology { addr: String, msg: String },
}

/// Whether an error reply is a cluster redirection (the key's slot is served elsewhere, or not now) — or a
/// node still loading its data: either way the write was not applied and must wait for the cluster.
pub fn is_redirection(msg: &str) -> bool {
    ["MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN", "LOADING"]
        .iter()
        .any(|p| msg.starts_with(p))
}

impl TargetError {
    /// The same error again (an `io::Error` is not `Clone`: its kind and text are kept).
    pub fn duplicate(&self) -> TargetError {
        let io = |e: &std::io::Error| std::io::Error::new(e.kind(), e.to_string());
        match self {
            TargetError::Connect { addr, source } => TargetError::Connect {
                addr: addr.clone(),
                source: io(source),
            },
            TargetError::Io { addr, source } => TargetError::Io {
                addr: addr.clone(),
                source: io(source),
            },
            TargetError::Auth { addr, msg } => TargetError::Auth {
                addr: addr.clone(),
                msg: msg.clone(),
            },
            TargetError::Command { addr, what, msg } => TargetError::Command {
                addr: addr.clone(),
                what: what.clone(),
                msg: msg.clone(),
            },
            TargetError::Protocol { addr, detail } => TargetError::Protocol {
                addr: addr.clone(),
                detail: detail.clone(),
            },
            TargetError::Timeout { addr, secs } => TargetError::Timeout {
                addr: addr.clone(),
                secs: *secs,
            },
            TargetError::Closed { addr } => TargetError::Closed { addr: addr.clone() },
            TargetError::Topology { addr, msg } => TargetError::Topology {
                addr: addr.clone(),
                msg: msg.clone(),
            },
            TargetError::Restarted { addr, detail } => TargetError::Restarted {
                addr: addr.clone(),
                detail: detail.clone(),
            },
        }
    }

    /// Whether reconnecting and retrying can help.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            TargetError::Connect { .. } | TargetError::Io { .. } | TargetError::Timeout { .. }
        )
    }
}

/// Run `op` until it succeeds, fails with an error retrying cannot help, or `for_` has passed: for the
/// one-shot exchanges around the data path (reading or marking an in-target checkpoint, a sweep, opening the
/// writer pool) that must ride out a connection lost for a moment as the writer pool itself does. `op` must
/// be safe to run again (they all are: reads, `SET` of a marker, scanning and deleting owned keys).
pub async fn with_retry<T, F, Fut>(
    what: &str,
    for_: std::time::Duration,
    mut op: F,
) -> Result<T, TargetError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, TargetError>>,
{
    let deadline = tokio::time::Instant::now() + for_;
    let mut backoff = std::time::Duration::from_millis(50);
    loop {
        match op().await {
            Err(e) if e.is_retryable() && tokio::time::Instant::now() + backoff < deadline => {
                tracing::info!(error = %e, "{what}: retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
            }
            r => return r,
        }
    }
}

/// What ferry needs to know about a target server before writing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerInfo {
    /// `redis_version` from INFO (Valkey reports a Redis-compatible one there too).
    pub redis_version: (u32, u32, u32),
    /// `valkey_version`, when the server is Valkey.
    pub valkey_version: Option<(u32, u32, u32)>,
    /// The highest RDB version the server can load (DUMP payload versions it accepts).
    pub rdb_version: u16,
    /// Keys per db from INFO keyspace, only dbs holding keys.
    pub keyspace: Vec<(u32, u64)>,
    pub maxmemory: u64,
    pub maxmemory_policy: String,
    pub used_memory: u64,
    /// `cluster_enabled:1`.
    pub cluster: bool,
}

impl ServerInfo {
    /// Parse the text of `INFO` (all sections, or at least server/memory/keyspace/cluster).
    pub fn parse(info: &str) -> ServerInfo {
        ServerInfo::from_info(&Info::parse(info))
    }

    /// What ferry needs of a parsed `INFO`.
    pub fn from_info(info: &Info) -> ServerInfo {
        let redis_version = info.redis_version().unwrap_or((0, 0, 0));
        let valkey_version = info.valkey_version();
        ServerInfo {
            redis_version,
            valkey_version,
            rdb_version: rdb_version_for(redis_version, valkey_version),
            keyspace: info.db_keys(),
            maxmemory: info.u64("maxmemory").unwrap_or(0),
            maxmemory_policy: info.field("maxmemory_policy").unwrap_or("").to_string(),
            used_memory: info.u64("used_memory").unwrap_or(0),
            cluster: info.cluster_enabled(),
        }
    }

    /// RESTORE ... ABSTTL exists from Redis 5.0.
    pub fn has_absttl(&self) -> bool {
        self.redis_version >= (5, 0, 0)
    }

    /// HSET with several field/value pairs exists from Redis 4.0 (HMSET before).
    pub fn has_multi_hset(&self) -> bool {
        self.redis_version >= (4, 0, 0)
    }

    /// Per-field hash expiry (HPEXPIREAT) exists from Redis 7.4 and Valkey 9.0.
    pub fn has_hash_field_expiry(&self) -> bool {
        match self.valkey_version {
            Some(v) => v >= (9, 0, 0),
            None => self.redis_version >= (7, 4, 0),
        }
    }

    pub fn version_string(&self) -> String {
        match self.valkey_version {
            Some((a, b, c)) => format!("Valkey {a}.{b}.{c}"),
            None => {
                let (a, b, c) = self.redis_version;
                format!("Redis {a}.{b}.{c}")
            }
        }
    }
}

/// The RDB version a server writes and loads, from its version (rdb.h `RDB_VERSION` per release).
pub fn rdb_version_for(redis: (u32, u32, u32), valkey: Option<(u32, u32, u32)>) -> u16 {
    if let Some(v) = valkey {
        // Valkey 7.2 and 8.x keep Redis 7.2's RDB 11; Valkey 9 writes its own format 80.
        return if v >= (9, 0, 0) { 80 } else { 11 };
    }
    match redis {
        v if v >= (7, 4, 0) => 12,
        v if v >= (7, 2, 0) => 11,
        v if v >= (7, 0, 0) => 10,
        v if v >= (5, 0, 0) => 9,
        v if v >= (4, 0, 0) => 8,
        v if v >= (3, 2, 0) => 7,
        v if v >= (2, 6, 0) => 6,
        _ => 5,
    }
}

/// Whether a DUMP payload written with `src` RDB version can be RESTOREd on a target loading `dst`.
/// Valkey 9 (80) does not load Redis' own formats 12..=79, and Redis does not load Valkey's 80+.
pub fn restore_compatible(src: u16, dst: u16) -> bool {
    if src > dst {
        return false;
    }
    !(dst >= 80 && (12..80).contains(&src))
}

/// `host:port` of a target, for messages.
pub fn shown(addr: &RedisAddr) -> String {
    addr.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_info() {
        let info =
            "# Server\r\nredis_version:7.0.15\r\n# Memory\r\nused_memory:1000\r\nmaxmemory:0\r\n\
                    maxmemory_policy:noeviction\r\n# Keyspace\r\ndb0:keys=3,expires=0,avg_ttl=0\r\n\
                    db2:keys=10,expires=1,avg_ttl=5\r\n";
        let s = ServerInfo::parse(info);
        assert_eq!(s.redis_version, (7, 0, 15));
        assert_eq!(s.rdb_version, 10);
        assert_eq!(s.keyspace, vec![(0, 3), (2, 10)]);
        assert_eq!(s.maxmemory_policy, "noeviction");
        assert!(s.has_absttl() && !s.has_hash_field_expiry());
        let v = ServerInfo::parse("redis_version:7.2.4\r\nvalkey_version:9.0.0\r\n");
        assert_eq!(v.rdb_version, 80);
        assert!(v.has_hash_field_expiry());
        // Valkey 7.2 names itself only by server_name; it loads Redis 7.2's RDB 11.
        let v = ServerInfo::parse("redis_version:7.2.4\r\nserver_name:valkey\r\n");
        assert_eq!(v.version_string(), "Valkey 7.2.4");
        assert_eq!(v.rdb_version, 11);
    }

    #[test]
    fn restore_compatibility() {
        assert!(restore_compatible(9, 10));
        assert!(restore_compatible(10, 10));
        assert!(!restore_compatible(11, 10));
        assert!(restore_compatible(11, 80));
        assert!(!restore_compatible(12, 80));
        assert!(!restore_compatible(80, 12));
    }
}
