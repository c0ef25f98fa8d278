//! Which target keys belong to which source, and removing a source's keys that it no longer has.
//!
//! Several sources write into one target, so a source's `FLUSHDB`/`FLUSHALL` must not be forwarded (it would
//! wipe the other sources' keys), and after a full resync the keys the source deleted during the gap must be
//! removed (no ghosts). Both need to know which target keys came from which source. ferry does not keep a
//! per-key registry (it would grow with the dataset); ownership is derived:
//!
//! - **Sole**: one source writes into the target: every key is its own. FLUSHDB/FLUSHALL are forwarded.
//! - **Router**: the source is a server of a twemproxy pool: a key is its own exactly when nutcracker's
//!   placement ([`crate::twemproxy::Router`]) sends the key to it — the same rule that put it there.
//! - **Others**: several independent masters: a key is this source's unless another source holds it
//!   (`EXISTS` on the other sources, same db). Keys written by nobody (e.g. by hand into the target) are
//!   then treated as this source's: document that a shared target must only hold the sources' data.
//!
//! A sweep scans the target (`SCAN`, one db at a time), keeps the keys owned by the source, optionally keeps
//! those the source still has (`EXISTS` on the source: after a full resync only missing keys go), and hands
//! the rest to a callback that deletes them through the source's ordered stream connection, so a later
//! command of the same source that recreates a key is applied after the delete.

use std::sync::Arc;

use bytes::Bytes;

use crate::endpoint::RedisAddr;
use crate::resp::Reply;
use crate::target::client::Client;
use crate::target::TargetError;
use crate::twemproxy::Router;

/// How to tell a source's keys on the target.
#[derive(Clone)]
pub enum Ownership {
    Sole,
    Router { router: Arc<Router>, me: usize },
    Others(Vec<RedisAddr>),
}

impl std::fmt::Debug for Ownership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ownership::Sole => write!(f, "Sole"),
            Ownership::Router { me, .. } => write!(f, "Router(server #{me})"),
            Ownership::Others(o) => write!(f, "Others({} sources)", o.len()),
        }
    }
}

/// What to remove.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SweepKind {
    /// Every key of the source (its FLUSHDB / FLUSHALL).
    All,
    /// Only keys the source no longer has (after a full resync).
    MissingOnSource,
}

/// Counters of one sweep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub scanned: u64,
    pub owned: u64,
    pub deleted: u64,
}

const SCAN_COUNT: &[u8] = b"1000";

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

/// Which of `keys` exist on `c` (in its selected db).
async fn existing(c: &mut Client, keys: &[Bytes]) -> Result<Vec<bool>, TargetError> {
    let cmds: Vec<Vec<&[u8]>> = keys.iter().map(|k| vec![&b"EXISTS"[..], k]).collect();
    let replies = c.pipeline(&cmds).await?;
    Ok(replies
        .into_iter()
        .map(|r| r.as_int().unwrap_or(0) > 0)
        .collect())
}

/// The dbs that hold keys on the target (from `INFO keyspace`).
pub async fn target_dbs(target: &RedisAddr) -> Result<Vec<u32>, TargetError> {
    let mut c = Client::connect(target).await?;
    let info = c.server_info().await?;
    Ok(info.keyspace.iter().map(|(db, _)| *db).collect())
}

/// Scan `dbs` of the target and call `delete(db, keys)` with the keys to remove, in batches.
pub async fn sweep<F, Fut>(
    target: &RedisAddr,
    source: &RedisAddr,
    dbs: &[u32],
    ownership: &Ownership,
    kind: SweepKind,
    mut delete: F,
) -> Result<SweepReport, TargetError>
where
    F: FnMut(u32, Vec<Bytes>) -> Fut,
    Fut: std::future::Future<Output = Result<(), TargetError>>,
{
    let mut report = SweepReport::default();
    let mut t = Client::connect(target).await?;
    let mut src = match kind {
        SweepKind::MissingOnSource => Some(Client::connect(source).await?),
        SweepKind::All => None,
    };
    let mut others = Vec::new();
    if let Ownership::Others(addrs) = ownership {
        for a in addrs {
            others.push(Client::connect(a).await?);
        }
    }
    for &db in dbs {
        let dbs = db.to_string();
        t.cmd_ok(&[b"SELECT", dbs.as_bytes()]).await?;
        if let Some(s) = src.as_mut() {
            s.cmd_ok(&[b"SELECT", dbs.as_bytes()]).await?;
        }
        for o in others.iter_mut() {
            o.cmd_ok(&[b"SELECT", dbs.as_bytes()]).await?;
        }
        let mut cursor = Bytes::from_static(b"0");
        loop {
            let reply = t.cmd_ok(&[b"SCAN", &cursor, b"COUNT", SCAN_COUNT]).await?;
            let (next, keys) = keys_of(reply).map_err(|detail| TargetError::Protocol {
                addr: t.addr().to_string(),
                detail,
            })?;
            report.scanned += keys.len() as u64;
            let mut owned: Vec<Bytes> = match ownership {
                Ownership::Sole => keys,
                Ownership::Router { router, me } => keys
                    .into_iter()
                    .filter(|k| router.server_for(k) == *me)
                    .collect(),
                Ownership::Others(_) => {
                    let mut held_elsewhere = vec![false; keys.len()];
                    for o in others.iter_mut() {
                        for (i, e) in existing(o, &keys).await?.into_iter().enumerate() {
                            held_elsewhere[i] |= e;
                        }
                    }
                    keys.into_iter()
                        .zip(held_elsewhere)
                        .filter(|(_, h)| !h)
                        .map(|(k, _)| k)
                        .collect()
                }
            };
            // ferry's own keys (temporary big-value keys, the in-target checkpoint) are never swept here.
            owned.retain(|k| !k.starts_with(b"ferry:"));
            report.owned += owned.len() as u64;
            if let Some(s) = src.as_mut() {
                if !owned.is_empty() {
                    let present = existing(s, &owned).await?;
                    owned = owned
                        .into_iter()
                        .zip(present)
                        .filter(|(_, p)| !p)
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
