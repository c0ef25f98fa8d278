//! Sharded targets: a Redis Cluster or a twemproxy pool written directly, one writer per master node.
//!
//! A sharded target is expanded into one *node* per master. Every key belongs to one **group** — a hash
//! slot of the cluster, or a server of the pool — and every group to one node. Each node is written like a
//! standalone target (its own pool, prechecks, checkpoint file), through appliers that keep only the keys of
//! the groups the node owns ([`Shard`]).
//!
//! The in-target checkpoint is kept **per group**: a cluster runs a `MULTI` only within one slot, so every
//! group's commands of a batch form their own transaction with their own checkpoint key, a key of ours in
//! that very group (`<prefix>{<tag>}`): it lives and moves with the group's data. A resume skips, group by
//! group, what that group's checkpoint covers, so it is exact after a crash even when the group changed
//! hands in between.

use std::sync::Arc;

use super::client::Client;
use crate::cluster::SlotMap;
use crate::endpoint::RedisAddr;
use crate::resp::Reply;
use crate::twemproxy::Router;

/// How keys are placed on the nodes of a sharded target.
#[derive(Debug)]
pub enum Placement {
    /// Redis Cluster: a group is a hash slot; the map as discovered at start.
    Cluster(SlotMap),
    /// A twemproxy pool: a group is a server of the pool (nutcracker's own placement), and each server is
    /// its own node.
    Twemproxy { router: Router, servers: usize },
}

impl Placement {
    /// How many groups there are.
    pub fn groups(&self) -> usize {
        match self {
            Placement::Cluster(_) => crate::cluster::SLOTS,
            Placement::Twemproxy { servers, .. } => *servers,
        }
    }

    /// The group of a key.
    pub fn group_of(&self, key: &[u8]) -> usize {
        match self {
            Placement::Cluster(_) => crate::cluster::key_slot(key) as usize,
            Placement::Twemproxy { router, .. } => router.server_for(key),
        }
    }

    /// The node (index into the target's nodes) that owns a group.
    pub fn node_of(&self, group: usize) -> Option<usize> {
        match self {
            Placement::Cluster(map) => map.owner(group as u16),
            Placement::Twemproxy { .. } => Some(group),
        }
    }

    /// A key name of ours in `group`: `prefix` and a tag that places it there.
    pub fn key_in_group(&self, prefix: &[u8], group: usize) -> Vec<u8> {
        match self {
            Placement::Cluster(_) => crate::cluster::key_in_slot(prefix, group as u16),
            Placement::Twemproxy { .. } => {
                // nutcracker hashes the whole key (or its hash_tag part): search a suffix for this prefix.
                let mut i = 0u64;
                loop {
                    let mut k = prefix.to_vec();
                    k.extend_from_slice(i.to_string().as_bytes());
                    if self.group_of(&k) == group {
                        return k;
                    }
                    i += 1;
                }
            }
        }
    }

    /// A key name of ours in the same group as `key` (for values built under a temporary name and renamed).
    pub fn key_beside(&self, prefix: &[u8], key: &[u8]) -> Vec<u8> {
        self.key_in_group(prefix, self.group_of(key))
    }
}

/// The part of a sharded target one node is: the keys of the groups it owns.
#[derive(Clone, Debug)]
pub struct Shard {
    pub placement: Arc<Placement>,
    /// This node's index.
    pub node: usize,
    /// How many nodes the target has.
    pub nodes: usize,
    /// The target as the operator named it (for logs and errors).
    pub label: String,
    /// The target's one db (0 for a cluster, the pool's `redis_db` for a twemproxy target).
    pub db: u32,
    /// A cluster target: its masters, for the redirections the pool follows (shared by its nodes).
    pub redirects: Option<Arc<super::redirect::Redirects>>,
}

impl Shard {
    /// Whether this node holds `key`.
    pub fn owns(&self, key: &[u8]) -> bool {
        self.owns_group(self.placement.group_of(key))
    }

    pub fn owns_group(&self, group: usize) -> bool {
        self.placement.node_of(group) == Some(self.node)
    }

    /// The groups this node owns.
    pub fn groups(&self) -> Vec<usize> {
        (0..self.placement.groups())
            .filter(|g| self.owns_group(*g))
            .collect()
    }

    /// Whether this is a node of a Redis Cluster (not of a twemproxy pool).
    pub fn is_cluster(&self) -> bool {
        matches!(*self.placement, Placement::Cluster(_))
    }

    /// Whether this node is the one that takes keyless commands sent once (PUBLISH).
    pub fn is_first(&self) -> bool {
        self.node == 0
    }
}

/// The servers a target is written to: itself, or every master node of a cluster (discovered) or of a
/// twemproxy pool (its servers, `pool_auth` replacing the pool's credentials), each with its [`Shard`].
pub async fn expand(
    target: &crate::endpoint::TargetSpec,
    pool_auth: Option<&crate::endpoint::Auth>,
) -> Result<Vec<(RedisAddr, Option<Shard>)>, String> {
    use crate::endpoint::TargetSpec;
    let (nodes, placement, db) = match target {
        TargetSpec::Redis(a) => return Ok(vec![(a.clone(), None)]),
        TargetSpec::Cluster(seeds) => {
            let (map, nodes) = discover(seeds)
                .await
                .map_err(|e| format!("target {target}: {e}"))?;
            let gaps = map.uncovered();
            if !gaps.is_empty() {
                let shown: Vec<String> = gaps.iter().map(|(a, b)| format!("{a}-{b}")).collect();
                return Err(format!(
                    "target {target}: slots {} are served by no master (the cluster is not ready: \
                     cluster_state is not ok); nothing was written",
                    shown.join(", ")
                ));
            }
            (nodes, Placement::Cluster(map), 0)
        }
        TargetSpec::Twemproxy { path, pool } => {
            let conf = crate::twemproxy::TwemproxyConfig::load(path)
                .map_err(|e| format!("target {target}: {e}"))?;
            let p = conf
                .select_pool(pool.as_deref())
                .map_err(|e| format!("target {target}: {e}"))?;
            let router = Router::new(p).map_err(|e| format!("target {target}: {e}"))?;
            let mut nodes = p.masters().map_err(|e| format!("target {target}: {e}"))?;
            if let Some(auth) = pool_auth {
                for n in nodes.iter_mut() {
                    n.auth = Some(auth.clone());
                }
            }
            let servers = nodes.len();
            (nodes, Placement::Twemproxy { router, servers }, p.redis_db)
        }
    };
    let redirects = matches!(placement, Placement::Cluster(_)).then(|| {
        Arc::new(super::redirect::Redirects::new(
            target.to_string(),
            nodes.clone(),
        ))
    });
    let placement = Arc::new(placement);
    let n = nodes.len();
    Ok(nodes
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            let shard = Shard {
                placement: placement.clone(),
                node: i,
                nodes: n,
                label: target.to_string(),
                db,
                redirects: redirects.clone(),
            };
            (a, Some(shard))
        })
        .collect())
}

/// Function libraries of a cluster's masters. The stream's `FUNCTION LOAD/DELETE/FLUSH/RESTORE` go to the
/// masters of the layout they meet, so a master that joined since (given slots after them) lacks what was
/// loaded before — `redis-cli --cluster add-node` copies the libraries of its time, not the ones loaded
/// while the node held no slot. Each master gets every library another master holds and it lacks, loaded
/// with that master's code (`FUNCTION LOAD`). Returns the libraries loaded, by node. Servers without
/// functions (before 7.0) are left alone.
///
/// Every master stopped at the same point of the stream (the job stops cleanly before a new layout), so
/// the masters hold the same libraries but for the new one. The exception, documented: a `FUNCTION DELETE`
/// that some masters applied and a master refused with `MOVED` did not is loaded back on the former.
pub async fn spread_functions(nodes: &[RedisAddr]) -> Result<Vec<(RedisAddr, usize)>, String> {
    let mut clients = Vec::new();
    let mut held = Vec::new();
    for addr in nodes {
        let mut c = Client::connect(addr)
            .await
            .map_err(|e| format!("reading the function libraries of {addr}: {e}"))?;
        let r = c
            .cmd(&[b"FUNCTION", b"LIST", b"WITHCODE"])
            .await
            .map_err(|e| format!("reading the function libraries of {addr}: {e}"))?;
        if r.is_error() {
            // An unknown command: no functions on this cluster.
            return Ok(Vec::new());
        }
        held.push(function_libraries(&r));
        clients.push(c);
    }
    // Every library held somewhere, with the code of the first master holding it.
    let mut all: Vec<(String, bytes::Bytes)> = Vec::new();
    for libs in &held {
        for (name, code) in libs {
            if !all.iter().any(|(n, _)| n == name) {
                all.push((name.clone(), code.clone()));
            }
        }
    }
    let mut loaded = Vec::new();
    for ((addr, c), libs) in nodes.iter().zip(clients.iter_mut()).zip(&held) {
        let missing: Vec<&(String, bytes::Bytes)> = all
            .iter()
            .filter(|(n, _)| !libs.iter().any(|(m, _)| m == n))
            .collect();
        if missing.is_empty() {
            continue;
        }
        for (name, code) in &missing {
            let r = c
                .cmd(&[b"FUNCTION", b"LOAD", code])
                .await
                .map_err(|e| format!("loading function library {name} on {addr}: {e}"))?;
            if let Reply::Error(e) = r {
                return Err(format!(
                    "loading function library {name} on {addr}: {}",
                    String::from_utf8_lossy(&e)
                ));
            }
        }
        let names: Vec<&str> = missing.iter().map(|(n, _)| n.as_str()).collect();
        tracing::info!(node = %addr, libraries = %names.join(","),
            "a master of the cluster target lacked function libraries the other masters hold (it joined since): \
             loaded them");
        loaded.push((addr.clone(), missing.len()));
    }
    Ok(loaded)
}

/// `(name, code)` of each library in a `FUNCTION LIST WITHCODE` reply (RESP2: each library a flat array of
/// field, value).
pub fn function_libraries(r: &Reply) -> Vec<(String, bytes::Bytes)> {
    let Reply::Array(Some(libs)) = r else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for lib in libs {
        let Reply::Array(Some(fields)) = lib else {
            continue;
        };
        let field = |name: &[u8]| {
            fields
                .chunks(2)
                .find(|kv| kv[0].as_bytes() == Some(name))
                .and_then(|kv| kv.get(1))
                .and_then(|v| v.as_bytes())
                .map(bytes::Bytes::copy_from_slice)
        };
        if let (Some(name), Some(code)) = (field(b"library_name"), field(b"library_code")) {
            out.push((String::from_utf8_lossy(&name).into_owned(), code));
        }
    }
    out
}

/// Ask the seeds, in order, for the slot map: the first that answers with at least one owned slot wins.
///
/// Each seed is reached with its own credentials through [`Client`]; `CLUSTER
/// SHARDS` is tried first, then `CLUSTER SLOTS` when it fails with any error (`SHARDS` is 7.0+; older
/// servers call it an unknown subcommand). A seed whose cluster support is disabled ends the search with
/// an error saying so (a configuration mistake, not an outage).
///
/// Returns the map and, for each of its nodes (same order), the address to write to: host and port from
/// the map, user and password from the seed that answered. The error names every seed tried and why it
/// failed (addresses as `redis://user@host:port`, never a password).
pub async fn discover(
    seeds: &[RedisAddr],
) -> Result<(crate::cluster::SlotMap, Vec<RedisAddr>), String> {
    if seeds.is_empty() {
        return Err("no cluster seed address given".into());
    }
    let mut failures = Vec::new();
    for seed in seeds {
        let mut client = match Client::connect(seed).await {
            Ok(c) => c,
            Err(e) => {
                failures.push(format!("{seed}: {}", without_role(&e.to_string(), seed)));
                continue;
            }
        };
        let asked = seed.host_port();
        let map = match read_map(&mut client, &asked, seed).await {
            Ok(m) => m,
            Err(Failure::NotCluster) => {
                return Err(format!(
                    "{seed} is not a cluster node: it answered 'This instance has cluster support disabled' \
                     (cluster-enabled no); name a node of a Redis Cluster, or use it as a standalone server"
                ))
            }
            Err(Failure::Other(m)) => {
                failures.push(format!("{seed}: {m}"));
                continue;
            }
        };
        if map.nodes().is_empty() {
            failures.push(format!(
                "{seed}: the cluster has no slot assigned to any master"
            ));
            continue;
        }
        let mut addrs = Vec::with_capacity(map.nodes().len());
        for n in map.nodes() {
            let (host, port) = crate::cluster::split_host_port(&n.addr)
                .ok_or_else(|| format!("{seed}: the slot map names {} (not host:port)", n.addr))?;
            addrs.push(RedisAddr {
                host,
                port,
                auth: seed.auth.clone(),
            });
        }
        return Ok((map, addrs));
    }
    Err(format!(
        "no cluster seed gave a slot map: {}",
        failures.join("; ")
    ))
}

enum Failure {
    NotCluster,
    Other(String),
}

async fn read_map(
    client: &mut Client,
    asked: &str,
    seed: &RedisAddr,
) -> Result<crate::cluster::SlotMap, Failure> {
    let other = |e: super::TargetError| Failure::Other(without_role(&e.to_string(), seed));
    let is_disabled = |e: &[u8]| {
        String::from_utf8_lossy(e)
            .to_ascii_lowercase()
            .contains("cluster support disabled")
    };
    match client.cmd(&[b"CLUSTER", b"SHARDS"]).await.map_err(other)? {
        Reply::Error(e) if is_disabled(&e) => return Err(Failure::NotCluster),
        Reply::Error(_) => {}
        r => {
            return crate::cluster::SlotMap::from_cluster_shards(&r, asked).map_err(Failure::Other)
        }
    }
    match client.cmd(&[b"CLUSTER", b"SLOTS"]).await.map_err(other)? {
        Reply::Error(e) if is_disabled(&e) => Err(Failure::NotCluster),
        Reply::Error(e) => Err(Failure::Other(format!(
            "CLUSTER SLOTS answered {}",
            String::from_utf8_lossy(&e)
        ))),
        r => crate::cluster::SlotMap::from_cluster_slots(&r, asked).map_err(Failure::Other),
    }
}

/// A client error's text without its leading `target <addr>: ` (the seed is named already, and it may be
/// a source).
fn without_role(text: &str, seed: &RedisAddr) -> String {
    let prefix = format!("target {seed}: ");
    text.strip_prefix(&prefix).unwrap_or(text).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool_router(dist: &str) -> Router {
        let yaml = format!(
            "p:\n  listen: 127.0.0.1:1\n  hash: fnv1a_64\n  distribution: {dist}\n  redis: true\n  servers:\n   - 127.0.0.1:7001:1 a\n   - 127.0.0.1:7002:1 b\n   - 127.0.0.1:7003:1 c\n"
        );
        let conf = crate::twemproxy::TwemproxyConfig::parse(&yaml, "t.yml").unwrap();
        Router::new(conf.select_pool(None).unwrap()).unwrap()
    }

    #[test]
    fn function_libraries_are_read_from_a_function_list_reply() {
        let bulk = |s: &str| Reply::Bulk(Some(bytes::Bytes::copy_from_slice(s.as_bytes())));
        // As redis-server 7.0 answers FUNCTION LIST WITHCODE over RESP2.
        let lib = |name: &str, code: &str| {
            Reply::Array(Some(vec![
                bulk("library_name"),
                bulk(name),
                bulk("engine"),
                bulk("LUA"),
                bulk("functions"),
                Reply::Array(Some(vec![])),
                bulk("library_code"),
                bulk(code),
            ]))
        };
        let r = Reply::Array(Some(vec![
            lib("a", "#!lua name=a\n"),
            lib("b", "#!lua name=b\n"),
        ]));
        let libs = function_libraries(&r);
        assert_eq!(libs.len(), 2);
        assert_eq!(libs[0].0, "a");
        assert_eq!(&libs[1].1[..], b"#!lua name=b\n");
        assert!(function_libraries(&Reply::Array(Some(vec![]))).is_empty());
        assert!(function_libraries(&Reply::Error("ERR unknown command".into())).is_empty());
    }

    #[test]
    fn our_keys_land_in_the_group_asked_for() {
        let cluster = Placement::Cluster(SlotMap::default());
        for g in [0usize, 1, 5000, 16383] {
            let k = cluster.key_in_group(b"ferry:checkpoint:x:", g);
            assert_eq!(cluster.group_of(&k), g);
            assert!(k.starts_with(b"ferry:checkpoint:x:"));
        }
        let user = b"user:{42}:profile";
        let tmp = cluster.key_beside(b"ferry:tmp:s:1:", user);
        assert_eq!(cluster.group_of(&tmp), cluster.group_of(user));
        for dist in ["ketama", "modula"] {
            let pool = Placement::Twemproxy {
                router: pool_router(dist),
                servers: 3,
            };
            for g in 0..3 {
                let k = pool.key_in_group(b"ferry:checkpoint:x:", g);
                assert_eq!(pool.group_of(&k), g, "{dist}");
            }
            let tmp = pool.key_beside(b"ferry:tmp:s:1:", b"some-key");
            assert_eq!(pool.group_of(&tmp), pool.group_of(b"some-key"));
        }
    }

    #[test]
    fn a_node_owns_the_groups_its_map_gives_it() {
        let mut map = SlotMap::default();
        for s in 0..16384u16 {
            map.assign(s, if s < 8000 { "h:1" } else { "h:2" });
        }
        let placement = Arc::new(Placement::Cluster(map));
        let shard = |node| Shard {
            placement: placement.clone(),
            node,
            nodes: 2,
            label: "cluster://h:1".into(),
            db: 0,
            redirects: None,
        };
        assert_eq!(shard(0).groups().len(), 8000);
        assert_eq!(shard(1).groups().len(), 8384);
        let k = b"some-key";
        assert!(shard(0).owns(k) != shard(1).owns(k));
        assert!(shard(0).is_first() && !shard(1).is_first());
    }
}
