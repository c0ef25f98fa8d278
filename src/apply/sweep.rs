//! Which target keys belong to which source, and removing a source's keys.
//!
//! Several sources write into one target, so a source's `FLUSHDB`/`FLUSHALL` must not be forwarded (it would
//! wipe the other sources' keys), and after a full resync the keys the source no longer has must be removed
//! (no ghosts). Both need to know which target keys came from which source. ferry keeps no per-key registry
//! of the live data (it would grow with the dataset); ownership is derived:
//!
//! - **Sole**: one source writes into the target: every key is its own. FLUSHDB/FLUSHALL are forwarded.
//! - **Router**: the source is a server of a twemproxy pool (and the pool is the whole job): a key is its own
//!   exactly when nutcracker's placement ([`crate::twemproxy::Router`]) sends the key to it — the same rule
//!   that put it there.
//! - **Slots**: the source is a master of a Redis Cluster source (and that cluster is the whole job): a key
//!   is its own exactly when the master owns the key's hash slot — in a table of which master owns each
//!   slot that the cluster's masters share, and that follows the slots when they move (a resharding).
//! - **Others**: several independent sources: a key is this source's unless another source holds it: a
//!   live master that has it (`EXISTS`, in each of *its* dbs that map into this target db), or an `rdb:`
//!   file that wrote it (the file's key set, recorded while it was loaded). Keys written by nobody (e.g. by
//!   hand into the target) are then treated as this source's: a shared target must only hold the sources'
//!   data.
//!
//! An error reply from a source is never read as "absent": transient ones (`LOADING`, `BUSY`,
//! `MASTERDOWN`, `TRYAGAIN`) are retried for a while, anything else stops the sweep with an error, and no
//! key is deleted on a guess.
//!
//! What is removed ([`SweepKind`]): every owned key of the scanned dbs (the source's flush), or the owned
//! keys its new snapshot did not write (after a full resync: decided from the snapshot itself, so a key the
//! source deleted during the gap and recreated after its fork — by `INCR`, `LPUSH`, … in the stream — does
//! not keep its stale old value). ferry's own keys (in-target checkpoints, the heartbeat key, temporary
//! big-value keys) are never swept, by their exact names and prefixes.
//!
//! The sweep scans the target (`SCAN`, one db at a time) and hands the keys to remove to a callback that
//! deletes them through the source's ordered stream connection, so a later command of the same source that
//! recreates a key is applied after the delete.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use super::DbMap;
use crate::cluster::SlotMap;
use crate::endpoint::RedisAddr;
use crate::keyset::KeySet;
use crate::resp::Reply;
use crate::target::client::Client;
use crate::target::TargetError;
use crate::twemproxy::Router;

/// Another source of the same job, as a sweep asks it about keys.
#[derive(Clone)]
pub enum Other {
    /// A live master (or replica), and how its dbs map into the target.
    Live { addr: RedisAddr, dbs: DbMap },
    /// An `rdb:` file: the (target db, key) pairs it wrote, available once it is loaded.
    File {
        name: String,
        keys: watch::Receiver<Option<Arc<KeySet>>>,
    },
}

/// How to tell a source's keys on the target.
#[derive(Clone)]
pub enum Ownership {
    Sole,
    Router {
        router: Arc<Router>,
        me: usize,
    },
    /// `owners` maps each slot to one of the cluster source's masters (node `i` of the map is master `i`
    /// of the source); `me` is this source's index there.
    Slots {
        owners: Arc<std::sync::RwLock<SlotMap>>,
        me: usize,
    },
    Others(Vec<Other>),
}

impl Ownership {
    /// Whether `key` is this source's by its hash slot (for [`Ownership::Slots`]).
    fn owns_slot_of(owners: &std::sync::RwLock<SlotMap>, me: usize, key: &[u8]) -> bool {
        let map = owners.read().unwrap_or_else(|p| p.into_inner());
        map.owner(crate::cluster::key_slot(key)) == Some(me)
    }
}

impl std::fmt::Debug for Ownership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ownership::Sole => write!(f, "Sole"),
            Ownership::Router { me, .. } => write!(f, "Router(server #{me})"),
            Ownership::Slots { me, .. } => write!(f, "Slots(master #{me})"),
            Ownership::Others(o) => write!(f, "Others({} sources)", o.len()),
        }
    }
}

/// What to remove.
#[derive(Clone)]
pub enum SweepKind {
    /// Every key of the source (its FLUSHDB / FLUSHALL).
    All,
    /// The source's keys its new snapshot did not write (after a full resync): (target db, key) pairs.
    NotIn(Arc<KeySet>),
}

impl std::fmt::Debug for SweepKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SweepKind::All => write!(f, "All"),
            SweepKind::NotIn(k) => write!(f, "NotInSnapshot({} keys)", k.len()),
        }
    }
}

/// ferry's own keys on a target: never a source's, never swept.
#[derive(Clone, Debug, Default)]
pub struct OwnKeys {
    pub prefixes: Vec<Bytes>,
    pub exact: Vec<Bytes>,
}

impl OwnKeys {
    pub fn contains(&self, key: &[u8]) -> bool {
        self.exact.iter().any(|k| &k[..] == key) || self.prefixes.iter().any(|p| key.starts_with(p))
    }
}

/// Counters of one sweep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub scanned: u64,
    pub owned: u64,
    pub deleted: u64,
}

const SCAN_COUNT: &[u8] = b"1000";
/// How long a source answering `LOADING`/`BUSY`/… is waited for before the sweep gives up.
const TRANSIENT_FOR: Duration = Duration::from_secs(60);

fn keys_of(reply: Reply) -> Result<(Bytes, Vec<Bytes>), String> {
    let mut parts = reply
        .into_array()
        .ok_or_else(|| "SCAN answered a non-array".to_string())?;
    if parts.len() != 2 {
        return Err("SCAN answered an array of the wrong size".into());
    }
    let keys = parts.pop().and_then(|k| k.into_array()).unwrap_or_default();
    let cursor = parts
        .pop()
        .and_then(|c| c.as_bytes().map(Bytes::copy_from_slice))
        .ok_or_else(|| "SCAN answered no cursor".to_string())?;
    Ok((
        cursor,
        keys.into_iter()
            .filter_map(|k| k.as_bytes().map(Bytes::copy_from_slice))
            .collect(),
    ))
}

/// Errors a server gives while it cannot answer yet; anything else is final.
fn transient(e: &[u8]) -> bool {
    [&b"LOADING"[..], b"BUSY", b"MASTERDOWN", b"TRYAGAIN"]
        .iter()
        .any(|p| e.starts_with(p))
}

/// Which of `keys` exist in db `db` of `c`. An error reply is never "absent": transient errors are retried
/// (for [`TRANSIENT_FOR`]), others fail.
async fn existing(c: &mut Client, db: u32, keys: &[Bytes]) -> Result<Vec<bool>, TargetError> {
    let dbs = db.to_string();
    let deadline = tokio::time::Instant::now() + TRANSIENT_FOR;
    let mut cmds: Vec<Vec<&[u8]>> = vec![vec![&b"SELECT"[..], dbs.as_bytes()]];
    cmds.extend(keys.iter().map(|k| vec![&b"EXISTS"[..], &k[..]]));
    loop {
        let replies = c.pipeline(&cmds).await?;
        let mut out = Vec::with_capacity(keys.len());
        let mut wait = None;
        for (i, r) in replies.iter().enumerate() {
            match r {
                Reply::Error(e) if transient(e) => {
                    wait = Some(String::from_utf8_lossy(e).into_owned());
                    break;
                }
                Reply::Error(e) => {
                    return Err(TargetError::Command {
                        addr: c.addr().to_string(),
                        what: if i == 0 { "SELECT" } else { "EXISTS" }.into(),
                        msg: format!(
                            "{} (asked which keys it holds, to tell whose keys the target's are; \
                             nothing was deleted)",
                            String::from_utf8_lossy(e)
                        ),
                    });
                }
                r if i == 0 => {
                    let _ = r;
                }
                r => match r.as_int() {
                    Some(n) => out.push(n > 0),
                    None => {
                        return Err(TargetError::Protocol {
                            addr: c.addr().to_string(),
                            detail: format!("EXISTS answered {r:?}"),
                        })
                    }
                },
            }
        }
        match wait {
            None => return Ok(out),
            Some(e) if tokio::time::Instant::now() < deadline => {
                tracing::info!(server = %c.addr(), error = %e, "cannot tell yet which keys it holds; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Some(e) => {
                return Err(TargetError::Command {
                    addr: c.addr().to_string(),
                    what: "EXISTS".into(),
                    msg: format!("{e} for {TRANSIENT_FOR:?}; nothing was deleted"),
                })
            }
        }
    }
}

/// The dbs that hold keys on the target (from `INFO keyspace`).
pub async fn target_dbs(target: &RedisAddr) -> Result<Vec<u32>, TargetError> {
    let mut c = Client::connect(target).await?;
    let info = c.server_info().await?;
    Ok(info.keyspace.iter().map(|(db, _)| *db).collect())
}

/// The connections and key sets a sweep asks about other sources' keys.
enum Asked {
    Live(Client, DbMap),
    File(Arc<KeySet>),
}

/// Scan `dbs` of the target and call `delete(db, keys)` with the keys of this source to remove, in batches.
pub async fn sweep<F, Fut>(
    target: &RedisAddr,
    dbs: &[u32],
    ownership: &Ownership,
    kind: &SweepKind,
    own: &OwnKeys,
    mut delete: F,
) -> Result<SweepReport, TargetError>
where
    F: FnMut(u32, Vec<Bytes>) -> Fut,
    Fut: std::future::Future<Output = Result<(), TargetError>>,
{
    let mut report = SweepReport::default();
    let mut t = Client::connect(target).await?;
    let mut others = Vec::new();
    if let Ownership::Others(list) = ownership {
        for o in list {
            match o {
                Other::Live { addr, dbs } => {
                    others.push(Asked::Live(Client::connect(addr).await?, dbs.clone()))
                }
                Other::File { name, keys } => {
                    let mut keys = keys.clone();
                    if keys.borrow().is_none() {
                        tracing::info!(source = %name, "waiting for the RDB file to be loaded before telling whose keys the target's are");
                    }
                    let set = keys
                        .wait_for(|k| k.is_some())
                        .await
                        .map_err(|_| TargetError::Closed {
                            addr: format!("{name} (its load failed; ownership of keys unknown)"),
                        })?
                        .clone()
                        .expect("waited for Some");
                    others.push(Asked::File(set));
                }
            }
        }
    }
    for &db in dbs {
        let dbs = db.to_string();
        t.cmd_ok(&[b"SELECT", dbs.as_bytes()]).await?;
        let mut cursor = Bytes::from_static(b"0");
        loop {
            let reply = t.cmd_ok(&[b"SCAN", &cursor, b"COUNT", SCAN_COUNT]).await?;
            let (next, mut keys) = keys_of(reply).map_err(|detail| TargetError::Protocol {
                addr: t.addr().to_string(),
                detail,
            })?;
            report.scanned += keys.len() as u64;
            keys.retain(|k| !own.contains(k));
            let mut owned: Vec<Bytes> = match ownership {
                Ownership::Sole => keys,
                Ownership::Router { router, me } => keys
                    .into_iter()
                    .filter(|k| router.server_for(k) == *me)
                    .collect(),
                Ownership::Slots { owners, me } => keys
                    .into_iter()
                    .filter(|k| Ownership::owns_slot_of(owners, *me, k))
                    .collect(),
                Ownership::Others(_) => {
                    let mut held_elsewhere = vec![false; keys.len()];
                    for o in others.iter_mut() {
                        match o {
                            Asked::Live(c, their) => {
                                for sdb in their.sources_for(db) {
                                    for (i, e) in
                                        existing(c, sdb, &keys).await?.into_iter().enumerate()
                                    {
                                        held_elsewhere[i] |= e;
                                    }
                                }
                            }
                            Asked::File(set) => {
                                for (i, e) in in_set(set, db, &keys).await?.into_iter().enumerate()
                                {
                                    held_elsewhere[i] |= e;
                                }
                            }
                        }
                    }
                    keys.into_iter()
                        .zip(held_elsewhere)
                        .filter(|(_, h)| !h)
                        .map(|(k, _)| k)
                        .collect()
                }
            };
            report.owned += owned.len() as u64;
            if let SweepKind::NotIn(snapshot) = kind {
                if !owned.is_empty() {
                    let written = in_set(snapshot, db, &owned).await?;
                    owned = owned
                        .into_iter()
                        .zip(written)
                        .filter(|(_, w)| !w)
                        .map(|(k, _)| k)
                        .collect();
                }
            }
            if !owned.is_empty() {
                report.deleted += owned.len() as u64;
                delete(db, owned).await?;
            }
            if &next[..] == b"0" {
                break;
            }
            cursor = next;
        }
    }
    Ok(report)
}

/// Which of `keys` (in target db `db`) are in `set` (its lookups read a file: on the blocking pool).
async fn in_set(set: &Arc<KeySet>, db: u32, keys: &[Bytes]) -> Result<Vec<bool>, TargetError> {
    let set = set.clone();
    let keys = keys.to_vec();
    tokio::task::spawn_blocking(move || {
        let items: Vec<(u32, &[u8])> = keys.iter().map(|k| (db, &k[..])).collect();
        set.contains_many(&items)
    })
    .await
    .map_err(|e| TargetError::Protocol {
        addr: "(key set)".into(),
        detail: e.to_string(),
    })?
    .map_err(|e| TargetError::Io {
        addr: "(key set file)".into(),
        source: e,
    })
}
