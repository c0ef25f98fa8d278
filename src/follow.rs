//! Following a Redis Cluster source while the job runs.
//!
//! `--source cluster://host:port[,host:port…]` is synced as one source per master (each its own replication
//! link, spool and checkpoints), found in the slot map when the job starts. [`ClusterSource`] is what those
//! masters share:
//!
//! - **Which master owns which slot** ([`ClusterSource::owners`]): a key is master `i`'s when master `i`
//!   owns the key's hash slot. This is the key ownership a master's `FLUSHALL`/`FLUSHDB` and its full
//!   resyncs use on a shared target (`apply::sweep`), and it follows the slots when they move.
//! - **Failovers**: a replica takes over a master's slots (`CLUSTER FAILOVER`, or the master died). Each
//!   master's link asks its [`Member`] (a `repl::Locate`) where its master is before every reconnect and
//!   every [`EVERY`] while streaming. The answer is the server serving the master's slots now — the master
//!   as last seen, or the replica that took over — and it must call itself a master (`ROLE`). The link
//!   continues there with `PSYNC <replid> <offset+1>`: psync2 keeps the history across a failover, so the
//!   promoted replica answers `+CONTINUE` when it holds everything ferry received.
//! - **Reshardings**: slots moving between masters while the job runs. `MIGRATE` writes each key to the new
//!   master (a `RESTORE` in that master's stream), then deletes it on the old one (a `DEL` in the other
//!   stream). ferry applies the two streams independently, so a target may get the `DEL` after the
//!   `RESTORE` and lose the key. A move is reported (a WARN naming the slots and both masters), the slot
//!   table follows it, and once the old master's link has applied its stream up to the move (its offset
//!   read after the move was seen), the receiving master is copied again with a full resync: every key of
//!   its slots is written as it is and the keys of its slots it does not hold are removed — exact again.
//!   Slots that move to a master that was not part of the cluster when the job started are an ERROR: ferry
//!   does not replicate that master, so their changes are not synced until the job is started again.
//!
//! A view of the cluster is read from the first node that answers (the masters as last seen, then their
//! replicas, then the seeds); which replicas each master has comes from `CLUSTER NODES` (node ids and
//! addresses, whatever their health: `CLUSTER SHARDS` calls a replica that has not reported an offset
//! yet `loading`, and `CLUSTER SLOTS` leaves it out). A change the view shows — another owner of a slot, a replica that took over — is
//! believed only when the new owner's own view agrees, so a node that has not heard the news yet moves
//! nothing back.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use crate::cluster::{SlotMap, SLOTS};
use crate::endpoint::{Auth, RedisAddr};
use crate::repl::{LinkShared, Locate, Located};
use crate::target::client::{Client, Role};

/// How often each master's link asks, while streaming, whether its master moved.
pub const EVERY: Duration = Duration::from_secs(2);
/// Connect and reply timeout of the questions asked here (`ROLE`, `INFO replication`).
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// The masters of one `cluster://` source, and which of them owns which slot.
pub struct ClusterSource {
    /// The source as the operator named it (`cluster://host:port,…`, never a password).
    pub label: String,
    seeds: Vec<RedisAddr>,
    auth: Option<Auth>,
    /// Slot → master of the source: node `i` of this map is master `i` (named by its address at start);
    /// nodes past the source's masters are masters outside the source.
    owners: Arc<RwLock<SlotMap>>,
    state: Mutex<State>,
    /// Fired when slots moved to a master that is not one of this source's (a master added to the cluster
    /// since the job started): the job stops cleanly and starts again with every current master.
    pub grown: tokio_util::sync::CancellationToken,
}

struct State {
    masters: Vec<Master>,
    /// Slots that moved to a master, waiting for its full resync.
    moves: Vec<Move>,
    /// Masters outside the source already reported.
    foreign_reported: BTreeSet<String>,
}

/// One master of the source as last seen.
struct Master {
    /// Where it is served now (`host:port`): its address at start, or the replica that took over.
    addr: String,
    /// The node id of the server at `addr`, when known.
    id: Option<String>,
    /// Its replicas as last seen, by node id and by `host:port` (one of them takes over after a failover).
    replicas: Vec<String>,
    /// Its replication link, once the link asked where it is: what it applied, and full resync requests.
    link: Weak<LinkShared>,
}

/// Slots that moved to master `to`, which is copied again once the old masters applied their streams up
/// to the move.
struct Move {
    to: usize,
    slots: BTreeSet<u16>,
    /// The old masters and their replication offset read after the move was seen (`None`: not read yet).
    from: BTreeMap<usize, Option<i64>>,
    /// When the last slot joined this move (a resharding moves slot after slot: wait for a calm poll).
    seen: Instant,
}

/// What a view of the cluster changes against what is known.
#[derive(Debug, Default, PartialEq, Eq)]
struct Changes {
    /// Master `i` is served at this address now (a replica took over).
    promoted: Vec<(usize, String)>,
    /// Slots owned by another master of the source now: (slot, old master if it was one, new master).
    moved: Vec<(u16, Option<usize>, usize)>,
    /// Slots owned by a master outside the source now: (slot, its address).
    foreign: Vec<(u16, String)>,
}

impl Changes {
    fn is_empty(&self) -> bool {
        self.promoted.is_empty() && self.moved.is_empty() && self.foreign.is_empty()
    }
}

/// A master as [`compare`] sees it: address, node id, replicas (ids and addresses).
type Known = (String, Option<String>, Vec<String>);

/// Which master of the source the view's node is: the master served there (same address or node id), or
/// the master one of whose replicas it is (it took over: `true`).
fn master_of(masters: &[Known], node: &crate::cluster::Node) -> Option<(usize, bool)> {
    let same_id = |id: &Option<String>| id.is_some() && *id == node.id;
    if let Some(i) = masters
        .iter()
        .position(|(a, id, _)| *a == node.addr || same_id(id))
    {
        return Some((i, false));
    }
    masters
        .iter()
        .position(|(_, _, r)| {
            r.iter()
                .any(|x| *x == node.addr || node.id.as_deref() == Some(x.as_str()))
        })
        .map(|i| (i, true))
}

/// Compare `view` with the masters as last seen and the slot table `owners`. Slots nobody owns in the view
/// (a failover under way) change nothing.
fn compare(masters: &[Known], owners: &SlotMap, view: &SlotMap) -> Changes {
    let mut out = Changes::default();
    let node_master: Vec<Option<(usize, bool)>> =
        view.nodes().iter().map(|n| master_of(masters, n)).collect();
    for (n, m) in node_master.iter().enumerate() {
        if let Some((i, true)) = m {
            if !view.ranges_of(n).is_empty() {
                out.promoted.push((*i, view.nodes()[n].addr.clone()));
            }
        }
    }
    for s in 0..SLOTS as u16 {
        let Some(n) = view.owner(s) else { continue };
        let old = owners
            .owner(s)
            .map(|o| if o < masters.len() { Ok(o) } else { Err(o) });
        match node_master[n] {
            Some((i, _)) => match old {
                Some(Ok(o)) if o == i => {}
                Some(Ok(o)) => out.moved.push((s, Some(o), i)),
                _ => out.moved.push((s, None, i)),
            },
            None => {
                let addr = &view.nodes()[n].addr;
                let same = matches!(old, Some(Err(o)) if owners.nodes()[o].addr == *addr);
                if !same {
                    out.foreign.push((s, addr.clone()));
                }
            }
        }
    }
    out
}

/// `0-99,200` for a set of slots.
fn ranges(slots: impl IntoIterator<Item = u16>) -> String {
    let mut out: Vec<(u16, u16)> = Vec::new();
    for s in slots {
        match out.last_mut() {
            Some((_, e)) if *e + 1 == s => *e = s,
            _ => out.push((s, s)),
        }
    }
    out.iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl ClusterSource {
    /// Ask `seeds` for the slot map: the source, and the address of each of its masters (in the map's order,
    /// with the seeds' credentials).
    pub async fn discover(
        label: String,
        seeds: &[RedisAddr],
    ) -> Result<(Arc<ClusterSource>, Vec<RedisAddr>), String> {
        let (map, addrs) = crate::target::shard::discover(seeds).await?;
        let masters = map
            .nodes()
            .iter()
            .map(|n| Master {
                addr: n.addr.clone(),
                id: n.id.clone(),
                replicas: n.replicas.clone(),
                link: Weak::new(),
            })
            .collect();
        let source = ClusterSource {
            label,
            seeds: seeds.to_vec(),
            auth: seeds.first().and_then(|s| s.auth.clone()),
            owners: Arc::new(RwLock::new(map)),
            state: Mutex::new(State {
                masters,
                moves: Vec::new(),
                foreign_reported: BTreeSet::new(),
            }),
            grown: tokio_util::sync::CancellationToken::new(),
        };
        source.refresh_replicas(&addrs).await;
        tracing::debug!(source = %source.label, map = ?map_of(&source.owners),
            replicas = ?source.state().masters.iter().map(|m| m.replicas.clone()).collect::<Vec<_>>(),
            "the cluster source's masters");
        Ok((Arc::new(source), addrs))
    }

    /// Learn each master's replicas from `CLUSTER NODES` (of the first of `ask` that answers). A master
    /// whose line is not a healthy master (it died or was demoted) keeps the replicas last seen: one of
    /// them is about to take over.
    async fn refresh_replicas(&self, ask: &[RedisAddr]) {
        let mut text = None;
        for a in ask {
            let Ok(mut c) = Client::connect_as(a, Role::Source, ASK_TIMEOUT).await else {
                continue;
            };
            if let Ok(r) = c.cmd_ok(&[b"CLUSTER", b"NODES"]).await {
                text = r
                    .as_bytes()
                    .map(|b| String::from_utf8_lossy(b).into_owned());
                break;
            }
        }
        let Some(text) = text else { return };
        let lines = parse_nodes(&text);
        let mut st = self.state();
        for m in st.masters.iter_mut() {
            let me = lines
                .iter()
                .find(|l| Some(&l.id) == m.id.as_ref() || l.addr == m.addr);
            let Some(me) = me else { continue };
            if !me.healthy_master {
                continue;
            }
            if m.id.is_none() {
                m.id = Some(me.id.clone());
            }
            m.replicas = lines
                .iter()
                .filter(|l| l.master.as_deref() == Some(me.id.as_str()))
                .flat_map(|l| [l.id.clone(), l.addr.clone()])
                .collect();
        }
    }

    /// The slot table the source's masters share (see the module docs).
    pub fn owners(&self) -> Arc<RwLock<SlotMap>> {
        self.owners.clone()
    }

    /// `0-5460` (the slots master `i` owns, as ranges).
    pub fn slots_of(&self, i: usize) -> String {
        let map = self.owners.read().unwrap_or_else(|p| p.into_inner());
        ranges((0..SLOTS as u16).filter(|s| map.owner(*s) == Some(i)))
    }

    /// Slots no master owned when the job started, as ranges (empty when every slot is served).
    pub fn uncovered(&self) -> String {
        let map = self.owners.read().unwrap_or_else(|p| p.into_inner());
        ranges((0..SLOTS as u16).filter(|s| map.owner(*s).is_none()))
    }

    /// How master `i`'s link finds its master.
    pub fn member(self: &Arc<Self>, i: usize) -> Arc<dyn Locate> {
        Arc::new(Member {
            source: self.clone(),
            index: i,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn addr(&self, host_port: &str) -> Option<RedisAddr> {
        let (host, port) = crate::cluster::split_host_port(host_port)?;
        Some(RedisAddr {
            host,
            port,
            auth: self.auth.clone(),
        })
    }

    /// Whom to ask for a view: the masters as last seen, their replicas, then the seeds.
    fn ask_order(&self) -> Vec<RedisAddr> {
        let st = self.state();
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        let known = st
            .masters
            .iter()
            .map(|m| m.addr.clone())
            .chain(st.masters.iter().flat_map(|m| m.replicas.clone()));
        for a in known
            .filter_map(|hp| self.addr(&hp))
            .chain(self.seeds.clone())
        {
            if seen.insert(a.host_port()) {
                out.push(a);
            }
        }
        out
    }

    /// Keep the changes whose new owner's own view agrees with them.
    async fn confirm(&self, mut ch: Changes, view: &SlotMap) -> Changes {
        let mut asked: BTreeMap<String, Option<SlotMap>> = BTreeMap::new();
        let mut wanted: BTreeSet<String> = ch.promoted.iter().map(|(_, a)| a.clone()).collect();
        for (s, _, _) in &ch.moved {
            wanted.extend(view.owner_addr(*s).map(str::to_string));
        }
        wanted.extend(ch.foreign.iter().map(|(_, a)| a.clone()));
        for a in wanted {
            let own = match self.addr(&a) {
                Some(addr) => crate::target::shard::discover(&[addr])
                    .await
                    .ok()
                    .map(|(m, _)| m),
                None => None,
            };
            asked.insert(a, own);
        }
        let agrees = |addr: &str, slot: Option<u16>| match asked.get(addr) {
            Some(Some(own)) => match slot {
                Some(s) => own.owner_addr(s) == Some(addr),
                None => own.nodes().iter().any(|n| n.addr == addr),
            },
            _ => false,
        };
        ch.promoted.retain(|(_, a)| agrees(a, None));
        ch.moved
            .retain(|(s, _, _)| view.owner_addr(*s).is_some_and(|a| agrees(a, Some(*s))));
        ch.foreign.retain(|(s, a)| agrees(a, Some(*s)));
        ch
    }

    /// Take confirmed changes in (skipping what another master's question took in meanwhile): addresses,
    /// the slot table, moves waiting for a resync; report them.
    fn apply(&self, ch: Changes, view: &SlotMap) {
        let mut st = self.state();
        for (i, addr) in ch.promoted {
            if st.masters[i].addr != addr {
                tracing::info!(source = %self.label, master = i, from = %st.masters[i].addr, to = %addr,
                    "a replica took over this master's slots (a failover): its replication continues there");
                st.masters[i].id = view
                    .nodes()
                    .iter()
                    .find(|n| n.addr == addr)
                    .and_then(|n| n.id.clone());
                st.masters[i].addr = addr;
            }
        }
        let mut owners = self.owners.write().unwrap_or_else(|p| p.into_inner());
        let mut moved: BTreeMap<(Option<usize>, usize), BTreeSet<u16>> = BTreeMap::new();
        for (s, from, to) in ch.moved {
            if owners.owner(s) == Some(to) {
                continue;
            }
            let name = owners.nodes()[to].addr.clone();
            owners.assign(s, &name);
            moved.entry((from, to)).or_default().insert(s);
        }
        let mut foreign: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
        for (s, addr) in ch.foreign {
            if owners.owner_addr(s) == Some(addr.as_str()) {
                continue;
            }
            owners.assign(s, &addr);
            foreign.entry(addr).or_default().insert(s);
        }
        drop(owners);
        for ((from, to), slots) in moved {
            let from_addr = from.map_or_else(
                || "no master of this source".to_string(),
                |f| st.masters[f].addr.clone(),
            );
            tracing::warn!(source = %self.label, slots = %ranges(slots.iter().copied()), from = %from_addr,
                to = %st.masters[to].addr,
                "slots moved between masters of the cluster source while syncing (a resharding): their keys moved \
                 from one of ferry's sources to another, whose streams are applied independently (a key can be \
                 lost on the target meanwhile); the receiving master is copied again with a full resync once the \
                 old one's stream is applied up to the move");
            let now = Instant::now();
            match st.moves.iter_mut().find(|m| m.to == to) {
                Some(m) => {
                    m.slots.extend(slots);
                    if let Some(f) = from {
                        m.from.insert(f, None);
                    }
                    m.seen = now;
                }
                None => st.moves.push(Move {
                    to,
                    slots,
                    from: from.into_iter().map(|f| (f, None)).collect(),
                    seen: now,
                }),
            }
        }
        for (addr, slots) in foreign {
            if st.foreign_reported.insert(addr.clone()) {
                tracing::warn!(source = %self.label, slots = %ranges(slots.iter().copied()), master = %addr,
                    "slots moved to a master that was not part of the cluster when ferry started: the job stops \
                     cleanly and starts again with every current master (that one is copied with a full sync, \
                     the others continue where they are)");
                self.grown.cancel();
            }
        }
    }

    /// Read the replication offset of every old master of a waiting move that has none yet.
    async fn read_move_offsets(&self) {
        let wanted: Vec<(usize, String)> = {
            let st = self.state();
            let mut w: Vec<(usize, String)> = st
                .moves
                .iter()
                .flat_map(|m| m.from.iter().filter(|(_, o)| o.is_none()).map(|(f, _)| *f))
                .map(|f| (f, st.masters[f].addr.clone()))
                .collect();
            w.dedup();
            w
        };
        for (f, hp) in wanted {
            let Some(addr) = self.addr(&hp) else {
                tracing::debug!(source = %self.label, master = %hp, "a move's old master has no known address");
                continue;
            };
            let off = match master_offset(&addr).await {
                Ok(off) => off,
                Err(e) => {
                    tracing::debug!(source = %self.label, master = %hp, error = %e,
                        "reading a move's old master offset failed; trying again at the next poll");
                    continue;
                }
            };
            tracing::debug!(source = %self.label, master = %hp, offset = off,
                "a move's old master: its stream must be applied up to here before the repair");
            let mut st = self.state();
            for m in st.moves.iter_mut() {
                if let Some(o @ None) = m.from.get_mut(&f) {
                    *o = Some(off);
                }
            }
        }
    }

    /// Ask for the full resync of every master whose move is complete: the old masters' links applied
    /// their streams up to the move, and no slot joined it for one poll.
    fn resync_ready(&self) {
        let mut st = self.state();
        let masters = &st.masters;
        let applied = |f: usize| {
            masters[f]
                .link
                .upgrade()
                .map_or(-1, |l| l.snapshot().applied)
        };
        for m in &st.moves {
            tracing::debug!(source = %self.label, to = %masters[m.to].addr,
                waited_ms = m.seen.elapsed().as_millis() as u64,
                to_link = masters[m.to].link.upgrade().is_some(),
                from = ?m.from.iter().map(|(f, o)| (masters[*f].addr.clone(), *o, applied(*f))).collect::<Vec<_>>(),
                "a move waits for its repair: (old master, offset to reach, applied)");
        }
        let ready: Vec<usize> = st
            .moves
            .iter()
            .enumerate()
            .filter(|(_, m)| {
                m.seen.elapsed() >= EVERY
                    && masters[m.to].link.upgrade().is_some()
                    && m.from
                        .iter()
                        .all(|(f, o)| o.is_some_and(|o| applied(*f) >= o))
            })
            .map(|(i, _)| i)
            .collect();
        for i in ready.into_iter().rev() {
            let m = st.moves.remove(i);
            if let Some(link) = st.masters[m.to].link.upgrade() {
                tracing::info!(source = %self.label, master = %st.masters[m.to].addr,
                    slots = %ranges(m.slots.iter().copied()),
                    "the old masters of the moved slots have applied their streams up to the move: copying the \
                     receiving master again (full resync)");
                link.request_full_resync();
            }
        }
    }

    /// Where master `i` is served now: see the module docs.
    async fn locate(&self, i: usize, shared: &Arc<LinkShared>) -> Result<RedisAddr, String> {
        self.state().masters[i].link = Arc::downgrade(shared);
        let ask = self.ask_order();
        let (view, _) = crate::target::shard::discover(&ask).await?;
        let changes = {
            let st = self.state();
            let masters: Vec<Known> = st
                .masters
                .iter()
                .map(|m| (m.addr.clone(), m.id.clone(), m.replicas.clone()))
                .collect();
            let owners = self.owners.read().unwrap_or_else(|p| p.into_inner());
            compare(&masters, &owners, &view)
        };
        if !changes.is_empty() {
            let confirmed = self.confirm(changes, &view).await;
            self.apply(confirmed, &view);
        }
        self.refresh_replicas(&ask).await;
        self.read_move_offsets().await;
        self.resync_ready();
        // Locks are taken state first, then the slot table (as `apply` does), never the other way round:
        // holding the table's read lock while waiting for the state deadlocked with an `apply` holding the
        // state while waiting to write the table (both runtime threads blocked, the job frozen).
        let owns_none = self
            .owners
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .ranges_of(i)
            .is_empty();
        if owns_none {
            return Err(format!(
                "master #{i} of {} owns no slot any more (its slots moved to other masters)",
                self.label
            ));
        }
        let hp = self.state().masters[i].addr.clone();
        let addr = self
            .addr(&hp)
            .ok_or_else(|| format!("the slot map names {hp} (not host:port)"))?;
        is_master(&addr).await?;
        Ok(addr)
    }
}

impl fmt::Debug for ClusterSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterSource({})", self.label)
    }
}

/// The map as `Debug` shows it.
fn map_of(owners: &RwLock<SlotMap>) -> SlotMap {
    owners.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// What [`ClusterSource::refresh_replicas`] reads of a `CLUSTER NODES` line (`<id> <ip:port@cport[,host]>
/// <flags> <master id or -> …`).
#[derive(Debug, PartialEq, Eq)]
struct NodesLine {
    id: String,
    /// `host:port` (as [`crate::cluster::join_host_port`] writes it).
    addr: String,
    /// Flagged `master` and none of `fail`, `fail?`, `handshake`, `noaddr`.
    healthy_master: bool,
    master: Option<String>,
}

fn parse_nodes(text: &str) -> Vec<NodesLine> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let hp = f[1].split(['@', ',']).next()?;
            let (host, port) = crate::cluster::split_host_port(hp)?;
            let flags: Vec<&str> = f[2].split(',').collect();
            let bad = ["fail", "fail?", "handshake", "noaddr"];
            Some(NodesLine {
                id: f[0].to_string(),
                addr: crate::cluster::join_host_port(&host, port),
                healthy_master: flags.contains(&"master") && !flags.iter().any(|x| bad.contains(x)),
                master: (f[3] != "-").then(|| f[3].to_string()),
            })
        })
        .collect()
}

/// `Ok` when the server at `addr` says it is a master (`ROLE`).
async fn is_master(addr: &RedisAddr) -> Result<(), String> {
    let mut c = Client::connect_as(addr, Role::Source, ASK_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    let r = c.cmd_ok(&[b"ROLE"]).await.map_err(|e| e.to_string())?;
    let role = r
        .into_array()
        .and_then(|v| v.into_iter().next())
        .and_then(|r| {
            r.as_bytes()
                .map(|b| String::from_utf8_lossy(b).into_owned())
        });
    match role.as_deref() {
        Some("master") => Ok(()),
        Some(other) => Err(format!("{addr} is a {other} now, not a master")),
        None => Err(format!("{addr} answered ROLE with no role")),
    }
}

/// `master_repl_offset` of the server at `addr`.
pub async fn master_offset(addr: &RedisAddr) -> Result<i64, String> {
    let mut c = Client::connect_as(addr, Role::Source, ASK_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    let info = c.info(b"replication").await.map_err(|e| e.to_string())?;
    info.field("master_repl_offset")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{addr}: INFO replication has no master_repl_offset"))
}

/// How master `index` of a cluster source finds where it is served (a `repl::Locate`).
pub struct Member {
    source: Arc<ClusterSource>,
    index: usize,
}

impl fmt::Debug for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "master #{} of {}", self.index, self.source.label)
    }
}

impl Locate for Member {
    fn locate<'a>(&'a self, _current: &'a RedisAddr, shared: &'a Arc<LinkShared>) -> Located<'a> {
        Box::pin(self.source.locate(self.index, shared))
    }

    fn every(&self) -> Option<Duration> {
        Some(EVERY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A map: each `(addr, first, last)` owns that range; replicas per address.
    fn map(owners: &[(&str, u16, u16)]) -> SlotMap {
        let mut m = SlotMap::default();
        for (addr, a, b) in owners {
            for s in *a..=*b {
                m.assign(s, addr);
            }
        }
        m
    }

    fn masters(list: &[(&str, &[&str])]) -> Vec<Known> {
        list.iter()
            .map(|(a, r)| {
                (
                    a.to_string(),
                    None,
                    r.iter().map(|x| x.to_string()).collect(),
                )
            })
            .collect()
    }

    const THREE: [(&str, u16, u16); 3] = [
        ("a:1", 0, 5460),
        ("b:1", 5461, 10922),
        ("c:1", 10923, 16383),
    ];

    #[test]
    fn the_same_layout_changes_nothing() {
        let ms = masters(&[("a:1", &["a:2"]), ("b:1", &[]), ("c:1", &[])]);
        assert_eq!(compare(&ms, &map(&THREE), &map(&THREE)), Changes::default());
    }

    #[test]
    fn a_replica_that_took_over_is_the_same_master() {
        let ms = masters(&[("a:1", &["a:2"]), ("b:1", &[]), ("c:1", &[])]);
        let view = map(&[
            ("a:2", 0, 5460),
            ("b:1", 5461, 10922),
            ("c:1", 10923, 16383),
        ]);
        let ch = compare(&ms, &map(&THREE), &view);
        assert_eq!(ch.promoted, vec![(0, "a:2".to_string())]);
        assert!(ch.moved.is_empty() && ch.foreign.is_empty(), "{ch:?}");
    }

    #[test]
    fn a_failover_under_way_changes_nothing() {
        // The dead master's slots are served by nobody yet.
        let ms = masters(&[("a:1", &["a:2"]), ("b:1", &[]), ("c:1", &[])]);
        let view = map(&[("b:1", 5461, 10922), ("c:1", 10923, 16383)]);
        assert_eq!(compare(&ms, &map(&THREE), &view), Changes::default());
    }

    #[test]
    fn moved_slots_name_both_masters_and_foreign_ones_the_new_master() {
        let ms = masters(&[("a:1", &[]), ("b:1", &[]), ("c:1", &[])]);
        let view = map(&[
            ("b:1", 0, 9),
            ("a:1", 10, 5460),
            ("b:1", 5461, 10922),
            ("c:1", 10923, 16373),
            ("new:1", 16374, 16383),
        ]);
        let ch = compare(&ms, &map(&THREE), &view);
        assert_eq!(
            ch.moved,
            (0..10).map(|s| (s, Some(0), 1)).collect::<Vec<_>>()
        );
        assert_eq!(
            ch.foreign,
            (16374..16384)
                .map(|s| (s, "new:1".to_string()))
                .collect::<Vec<_>>()
        );
        assert!(ch.promoted.is_empty());
        // Once the table knows them, the same view changes nothing.
        let mut owners = map(&THREE);
        for s in 0..10 {
            owners.assign(s, "b:1");
        }
        for s in 16374..16384 {
            owners.assign(s, "new:1");
        }
        assert_eq!(compare(&ms, &owners, &view), Changes::default());
    }

    #[test]
    fn a_replica_known_by_node_id_took_over() {
        let ms = vec![
            (
                "a:1".to_string(),
                Some("A".to_string()),
                vec!["R".to_string()],
            ),
            ("b:1".to_string(), None, vec![]),
            ("c:1".to_string(), None, vec![]),
        ];
        let mut view = map(&[("b:1", 5461, 10922), ("c:1", 10923, 16383)]);
        for s in 0..=5460 {
            view.assign(s, "r-host:7");
        }
        // The map read from CLUSTER SHARDS names it by its endpoint; CLUSTER NODES knew it by its id.
        let mut nodes = view.nodes().to_vec();
        nodes.iter_mut().find(|n| n.addr == "r-host:7").unwrap().id = Some("R".into());
        let node = nodes.iter().find(|n| n.addr == "r-host:7").unwrap();
        assert_eq!(master_of(&ms, node), Some((0, true)));
    }

    #[test]
    fn cluster_nodes_lines() {
        let text = "\
07c3 127.0.0.1:30004@31004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@31002,h2 master - 0 1426238316232 2 connected 5461-10922
e7d1 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460
6ec2 [::1]:30005@31005 master,fail - 1426238316232 1426238316232 5 disconnected
";
        let l = parse_nodes(text);
        assert_eq!(l.len(), 4);
        assert_eq!(l[0].master.as_deref(), Some("e7d1"));
        assert_eq!(l[1].addr, "127.0.0.1:30002");
        assert!(l[2].healthy_master && !l[3].healthy_master && !l[0].healthy_master);
        assert_eq!(l[3].addr, "[::1]:30005");
    }

    #[test]
    fn ranges_are_compact() {
        assert_eq!(ranges([0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        assert_eq!(ranges([]), "");
    }
}
