//! The slot map: which master owns each slot, read from `CLUSTER SHARDS` (7.0+) or `CLUSTER SLOTS`
//! (3.0+); redirection errors; and [`discover`], which asks seed nodes for the map.
//!
//! The reply formats are those of Redis' `src/cluster.c` (`clusterCommandSlots`, `addNodeToNodeReply`,
//! `addShardReplyForClusterShards`, `addNodeDetailsToShardReply`):
//!
//! - `CLUSTER SLOTS`: one entry per contiguous range, `[start, end, master, replica…]`, each node as
//!   `[endpoint, port, id (4.0+), {metadata} (7.0+)]`. Only replicas that are available are listed.
//! - `CLUSTER SHARDS`: one entry per shard, a map (a flat key/value array in RESP2) of `slots` (a flat
//!   list `start, end, start, end…`) and `nodes`, each a map with `id`, `port`, `tls-port`, `ip`,
//!   `endpoint`, `hostname`, `role` (`master`/`replica`), `replication-offset`, `health`
//!   (`online`/`fail`/`loading`).
//!
//! The endpoint of a node (`cluster-preferred-endpoint-type`) may be: the IP (the default); a hostname,
//! or `?` when that node announced none; or empty / null (`unknown-endpoint`), meaning "the address you
//! asked, with this port". Here an empty or null endpoint becomes the host of the node asked, and `?`
//! becomes the node's `ip` when the reply gives it (7.0+ metadata), else the host asked too.
//!
//! A [`SlotMap`] lists as nodes exactly the masters that own at least one slot, in the order of their first
//! slot, so both replies give equal maps for the same cluster.

use std::fmt;

use super::slot::SLOTS;
use crate::resp::Reply;

/// A master node and its replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// `host:port` (an IPv6 host in brackets: `[::1]:7000`), as [`join_host_port`] writes it.
    pub addr: String,
    /// The node id (40 hex characters), when the reply gives it (`CLUSTER SLOTS` from 4.0 on).
    pub id: Option<String>,
    /// The replicas' `host:port`, those the reply reports available (online).
    pub replicas: Vec<String>,
}

/// `owner` value of a slot nobody owns.
const NO_OWNER: u16 = u16::MAX;

/// Which master owns each slot.
#[derive(Clone, PartialEq, Eq)]
pub struct SlotMap {
    /// Per slot, an index into `nodes`, or [`NO_OWNER`].
    owner: Box<[u16]>,
    nodes: Vec<Node>,
}

/// One range claimed by a master in a reply.
struct Claim {
    start: u16,
    end: u16,
    node: Node,
}

impl SlotMap {
    /// A map in which nobody owns anything.
    pub fn empty() -> SlotMap {
        SlotMap {
            owner: vec![NO_OWNER; SLOTS].into_boxed_slice(),
            nodes: Vec::new(),
        }
    }

    /// The map from a `CLUSTER SLOTS` reply; `asked` is the `host:port` the command was sent to (for an
    /// empty, null or `?` endpoint: module docs).
    pub fn from_cluster_slots(reply: &Reply, asked: &str) -> Result<SlotMap, String> {
        let asked_host = asked_host(asked)?;
        let ranges =
            items(reply).ok_or_else(|| format!("CLUSTER SLOTS: not an array: {reply:?}"))?;
        let mut claims = Vec::with_capacity(ranges.len());
        for (i, range) in ranges.iter().enumerate() {
            let what = |m: &str| format!("CLUSTER SLOTS: range #{i}: {m}");
            let f = items(range).ok_or_else(|| what("not an array"))?;
            if f.len() < 3 {
                return Err(what("fewer than 3 elements (start, end, master)"));
            }
            let (start, end) = slot_range(f[0], f[1]).map_err(|m| what(&m))?;
            let (addr, id) = slots_node(f[2], &asked_host).map_err(|m| what(&m))?;
            let replicas = f[3..]
                .iter()
                .map(|r| slots_node(r, &asked_host).map(|(a, _)| a))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|m| what(&m))?;
            claims.push(Claim {
                start,
                end,
                node: Node { addr, id, replicas },
            });
        }
        Self::build(claims, "CLUSTER SLOTS")
    }

    /// The map from a `CLUSTER SHARDS` reply (RESP2 flat key/value arrays, or RESP3 maps). The owner of a
    /// shard's slots is its node with role `master` and health `online`; a shard without one leaves its
    /// slots unowned. Replicas are the shard's `replica` nodes that are `online`.
    pub fn from_cluster_shards(reply: &Reply, asked: &str) -> Result<SlotMap, String> {
        let asked_host = asked_host(asked)?;
        let shards =
            items(reply).ok_or_else(|| format!("CLUSTER SHARDS: not an array: {reply:?}"))?;
        let mut claims = Vec::new();
        for (i, shard) in shards.iter().enumerate() {
            let what = |m: &str| format!("CLUSTER SHARDS: shard #{i}: {m}");
            let fields = fields(shard).ok_or_else(|| what("not a map"))?;
            let slots = field(&fields, "slots")
                .and_then(items)
                .ok_or_else(|| what("no slots list"))?;
            if slots.len() % 2 != 0 {
                return Err(what("an odd number of slot bounds"));
            }
            let nodes = field(&fields, "nodes")
                .and_then(items)
                .ok_or_else(|| what("no nodes list"))?;
            let mut master = None;
            let mut replicas = Vec::new();
            for (j, n) in nodes.iter().enumerate() {
                let node = ShardNode::read(n, &asked_host)
                    .map_err(|m| what(&format!("node #{j}: {m}")))?;
                if node.health != "online" {
                    continue;
                }
                match node.role.as_str() {
                    "master" if master.is_none() => master = Some(node),
                    "replica" | "slave" => replicas.push(node.addr),
                    _ => {}
                }
            }
            let Some(master) = master else { continue };
            let node = Node {
                addr: master.addr,
                id: master.id,
                replicas,
            };
            for pair in slots.chunks(2) {
                let (start, end) = slot_range(pair[0], pair[1]).map_err(|m| what(&m))?;
                claims.push(Claim {
                    start,
                    end,
                    node: node.clone(),
                });
            }
        }
        Self::build(claims, "CLUSTER SHARDS")
    }

    /// Nodes in the order of their first slot, one per address (a master with several ranges is one node;
    /// its id and replicas are merged); a slot claimed twice is an error.
    fn build(mut claims: Vec<Claim>, what: &str) -> Result<SlotMap, String> {
        claims.sort_by_key(|c| c.start);
        let mut map = SlotMap::empty();
        for c in claims {
            let idx = match map.nodes.iter().position(|n| n.addr == c.node.addr) {
                Some(i) => {
                    let n = &mut map.nodes[i];
                    if n.id.is_none() {
                        n.id = c.node.id;
                    }
                    for r in c.node.replicas {
                        if !n.replicas.contains(&r) {
                            n.replicas.push(r);
                        }
                    }
                    i
                }
                None => {
                    if map.nodes.len() >= usize::from(NO_OWNER) {
                        return Err(format!("{what}: more than {NO_OWNER} masters"));
                    }
                    map.nodes.push(c.node);
                    map.nodes.len() - 1
                }
            };
            for s in c.start..=c.end {
                let o = &mut map.owner[usize::from(s)];
                if *o != NO_OWNER {
                    return Err(format!(
                        "{what}: slot {s} is claimed by both {} and {}",
                        map.nodes[usize::from(*o)].addr,
                        map.nodes[idx].addr
                    ));
                }
                *o = idx as u16;
            }
        }
        Ok(map)
    }

    /// The index (into [`SlotMap::nodes`]) of the master owning `slot`, if any. Panics if `slot >= 16384`.
    pub fn owner(&self, slot: u16) -> Option<usize> {
        match self.owner[usize::from(slot)] {
            NO_OWNER => None,
            i => Some(usize::from(i)),
        }
    }

    /// The `host:port` of the master owning `slot`, if any.
    pub fn owner_addr(&self, slot: u16) -> Option<&str> {
        self.owner(slot).map(|i| self.nodes[i].addr.as_str())
    }

    /// The masters (those owning at least one slot when the map was read).
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Inclusive ranges of slots nobody owns, in order.
    pub fn uncovered(&self) -> Vec<(u16, u16)> {
        self.ranges_where(|o| o == NO_OWNER)
    }

    /// Whether every slot has an owner.
    pub fn is_complete(&self) -> bool {
        !self.owner.contains(&NO_OWNER)
    }

    /// Inclusive ranges of slots `node` owns, in order (none for an index out of range).
    pub fn ranges_of(&self, node: usize) -> Vec<(u16, u16)> {
        match u16::try_from(node) {
            Ok(n) if n != NO_OWNER => self.ranges_where(|o| o == n),
            _ => Vec::new(),
        }
    }

    fn ranges_where(&self, want: impl Fn(u16) -> bool) -> Vec<(u16, u16)> {
        let mut out: Vec<(u16, u16)> = Vec::new();
        for (s, &o) in self.owner.iter().enumerate() {
            if !want(o) {
                continue;
            }
            let s = s as u16;
            match out.last_mut() {
                Some((_, end)) if *end + 1 == s => *end = s,
                _ => out.push((s, s)),
            }
        }
        out
    }

    /// Whether both maps give every slot the same owner address (or both none). Ids, replicas and node
    /// order do not count.
    pub fn same_layout(&self, other: &SlotMap) -> bool {
        (0..SLOTS as u16).all(|s| self.owner_addr(s) == other.owner_addr(s))
    }

    /// Record that `addr` owns `slot` now (after a `MOVED`); returns its node index. A master not yet in
    /// the map is added (without id or replicas). Panics if `slot >= 16384`.
    pub fn assign(&mut self, slot: u16, addr: &str) -> usize {
        let idx = match self.nodes.iter().position(|n| n.addr == addr) {
            Some(i) => i,
            None => {
                assert!(self.nodes.len() < usize::from(NO_OWNER), "too many masters");
                self.nodes.push(Node {
                    addr: addr.to_string(),
                    id: None,
                    replicas: Vec::new(),
                });
                self.nodes.len() - 1
            }
        };
        self.owner[usize::from(slot)] = idx as u16;
        idx
    }
}

impl Default for SlotMap {
    fn default() -> Self {
        SlotMap::empty()
    }
}

/// Each node with its ranges, then the uncovered ranges (not 16384 owners).
impl fmt::Debug for SlotMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (i, n) in self.nodes.iter().enumerate() {
            m.entry(&n.addr, &self.ranges_of(i));
        }
        m.entry(&"uncovered", &self.uncovered());
        m.finish()
    }
}

/// A redirection or a transient cluster error, from an error reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Redirect {
    /// `MOVED slot host:port`: the slot lives there now (update the map).
    Moved { slot: u16, addr: String },
    /// `ASK slot host:port`: the slot is migrating; send this one command there, after `ASKING`.
    Ask { slot: u16, addr: String },
    /// `TRYAGAIN …`: a multi-key command during a slot migration; retry later.
    TryAgain,
    /// `CLUSTERDOWN …`: the cluster (or this slot) is not served now.
    ClusterDown,
    /// `LOADING …`: the node is loading its data set.
    Loading,
}

impl Redirect {
    /// The redirection an error reply's text means (with or without its leading `-`), or `None`.
    ///
    /// The address is as the server wrote it (`%s:%d` of its preferred endpoint), with an IPv6 host put in
    /// brackets (`MOVED 1 ::1:7000` → `[::1]:7000`). It may have an empty host (`:7000`) or `?` (a hostname
    /// the node does not know): see [`Redirect::resolve`].
    pub fn parse(error_text: &[u8]) -> Option<Redirect> {
        let text = error_text.strip_prefix(b"-").unwrap_or(error_text);
        let text = std::str::from_utf8(text).ok()?.trim_end();
        let mut words = text.split(' ');
        let kind = words.next()?;
        match kind {
            "MOVED" | "ASK" => {
                let slot: u16 = words.next()?.parse().ok()?;
                if usize::from(slot) >= SLOTS {
                    return None;
                }
                let (host, port) = split_host_port(words.next()?)?;
                if words.next().is_some() {
                    return None;
                }
                let addr = join_host_port(&host, port);
                Some(if kind == "MOVED" {
                    Redirect::Moved { slot, addr }
                } else {
                    Redirect::Ask { slot, addr }
                })
            }
            "TRYAGAIN" => Some(Redirect::TryAgain),
            "CLUSTERDOWN" => Some(Redirect::ClusterDown),
            "LOADING" => Some(Redirect::Loading),
            _ => None,
        }
    }

    /// For `MOVED`/`ASK`, the address to go to, given the `host:port` of the node that answered: an empty
    /// host means that node's host; `None` for `?` (the node knows no address to give: read the slot map
    /// again, it carries the IP) and for the other kinds.
    pub fn resolve(&self, answered_by: &str) -> Option<String> {
        let (Redirect::Moved { addr, .. } | Redirect::Ask { addr, .. }) = self else {
            return None;
        };
        let (host, port) = split_host_port(addr)?;
        match host.as_str() {
            "?" => None,
            "" => Some(join_host_port(&split_host_port(answered_by)?.0, port)),
            _ => Some(addr.clone()),
        }
    }
}

/// `host:port`, with an IPv6 host (one containing `:`) in brackets, as [`RedisAddr::host_port`] does.
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `host:port` split at its last `:`; brackets around the host are removed (`[::1]:7000` → `::1`). The
/// host may be empty (`:7000`).
pub fn split_host_port(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Some((host.to_string(), port))
}

/// The host of the `host:port` that was asked.
fn asked_host(asked: &str) -> Result<String, String> {
    split_host_port(asked)
        .map(|(h, _)| h)
        .ok_or_else(|| format!("{asked}: not a host:port"))
}

/// The elements of an array (or set), borrowed.
fn items(r: &Reply) -> Option<Vec<&Reply>> {
    match r {
        Reply::Array(Some(v)) | Reply::Set(v) => Some(v.iter().collect()),
        Reply::Attributed { value, .. } => items(value),
        _ => None,
    }
}

/// A map's entries: a RESP3 map, or a RESP2 flat key/value array.
fn fields(r: &Reply) -> Option<Vec<(&[u8], &Reply)>> {
    match r {
        Reply::Map(m) => m
            .iter()
            .map(|(k, v)| Some((k.as_bytes()?, v)))
            .collect::<Option<Vec<_>>>(),
        Reply::Array(Some(v)) if v.len() % 2 == 0 => v
            .chunks(2)
            .map(|kv| Some((kv[0].as_bytes()?, &kv[1])))
            .collect::<Option<Vec<_>>>(),
        Reply::Attributed { value, .. } => fields(value),
        _ => None,
    }
}

fn field<'a>(fields: &[(&[u8], &'a Reply)], name: &str) -> Option<&'a Reply> {
    fields
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| *v)
}

/// A text field: a string reply as UTF-8 (lossy: addresses and ids are ASCII).
fn text(r: &Reply) -> Option<String> {
    r.as_bytes()
        .map(|b| String::from_utf8_lossy(b).into_owned())
}

fn slot_bound(r: &Reply) -> Result<u16, String> {
    match r.as_int() {
        Some(s) if (0..SLOTS as i64).contains(&s) => Ok(s as u16),
        _ => Err(format!("{r:?} is not a slot (0-16383)")),
    }
}

fn slot_range(start: &Reply, end: &Reply) -> Result<(u16, u16), String> {
    let (s, e) = (slot_bound(start)?, slot_bound(end)?);
    if s > e {
        return Err(format!("range {s}-{e} ends before it starts"));
    }
    Ok((s, e))
}

fn port(r: &Reply) -> Result<u16, String> {
    match r.as_int() {
        Some(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => Err(format!("{r:?} is not a port")),
    }
}

/// The host to connect to for an endpoint (module docs): the endpoint, or for an empty/null one the host
/// asked, for `?` the node's IP if known, else the host asked.
fn endpoint_host(endpoint: Option<String>, ip: Option<String>, asked_host: &str) -> String {
    match endpoint.as_deref() {
        None | Some("") => asked_host.to_string(),
        Some("?") => ip
            .filter(|ip| !ip.is_empty() && ip != "?")
            .unwrap_or_else(|| asked_host.to_string()),
        Some(h) => h.to_string(),
    }
}

/// One node of a `CLUSTER SLOTS` range: its address and id.
fn slots_node(r: &Reply, asked_host: &str) -> Result<(String, Option<String>), String> {
    let f = items(r).ok_or("a node is not an array")?;
    if f.len() < 2 {
        return Err("a node has fewer than 2 elements (host, port)".into());
    }
    let endpoint = if f[0].is_null() {
        None
    } else {
        Some(text(f[0]).ok_or("the host is not a string")?)
    };
    let port = port(f[1])?;
    let id = f.get(2).and_then(|r| text(r)).filter(|s| !s.is_empty());
    let ip = f
        .get(3)
        .and_then(|m| fields(m))
        .and_then(|m| field(&m, "ip").and_then(text));
    let host = endpoint_host(endpoint, ip, asked_host);
    Ok((join_host_port(&host, port), id))
}

/// What [`SlotMap::from_cluster_shards`] reads of one node.
struct ShardNode {
    addr: String,
    id: Option<String>,
    role: String,
    health: String,
}

impl ShardNode {
    fn read(r: &Reply, asked_host: &str) -> Result<ShardNode, String> {
        let f = fields(r).ok_or("not a map")?;
        let get = |name: &str| field(&f, name).and_then(text);
        let id = get("id").filter(|s| !s.is_empty());
        let Some(port_reply) = field(&f, "port") else {
            return Err(format!(
                "{} has no plain-text port (only tls-port): ferry does not speak TLS",
                id.as_deref().unwrap_or("a node")
            ));
        };
        let port = port(port_reply)?;
        let endpoint = field(&f, "endpoint")
            .filter(|r| !r.is_null())
            .and_then(text);
        let host = endpoint_host(endpoint, get("ip"), asked_host);
        Ok(ShardNode {
            addr: join_host_port(&host, port),
            id,
            role: get("role").unwrap_or_default(),
            health: get("health").unwrap_or_default(),
        })
    }
}
