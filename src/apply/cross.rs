//! A command over several groups (slots, servers) of a sharded target that cannot be cut into per-group
//! commands with the same effect (`RENAME`, `SMOVE`, `LMOVE`, `RPOPLPUSH`, `*STORE`, `COPY`, `BITOP`,
//! `PFMERGE`, a script with keys in several slots): Redis computes it, ferry only moves bytes.
//!
//! Every node's stream applier stops at the command and the caller drains them all, so every node holds
//! everything before it. Then, with the first key's group as **home**:
//! 1. on the home node, one transaction: every operand of another group is restored (`DUMP` from its node)
//!    under a temporary key *in the home slot*, the very command runs on the rewritten keys, and the home
//!    group's checkpoint moves past it;
//! 2. every operand of another group is written back from its temporary (`RESTORE … REPLACE` with its TTL,
//!    or `DEL` when the command removed it), one transaction per group with that group's checkpoint;
//! 3. the temporaries are deleted.
//!
//! Each step is skipped when its group's checkpoint is already past the command, and the temporaries stay
//! until every write-back is done, so a crash anywhere replays exactly the missing steps: nothing is applied
//! twice, nothing lost.

use std::collections::HashMap;

use bytes::Bytes;

use super::stream::CrossCommand;
use crate::endpoint::RedisAddr;
use crate::resp::Reply;
use crate::target::client::Client;
use crate::target::shard::Shard;
use crate::target::TargetError;

/// Where to apply it: the placement, each node's address, and how the groups' checkpoints are named.
pub struct CrossTarget<'a> {
    pub shard: &'a Shard,
    /// Address of each node, by node index.
    pub nodes: &'a HashMap<usize, RedisAddr>,
    /// The checkpoint key of a group and its value once the command is applied.
    pub checkpoint: &'a (dyn Fn(usize) -> (Bytes, Bytes) + Sync),
    /// Prefix of this source's temporary keys (`ferry:tmp:<source>:`).
    pub tmp_prefix: &'a str,
}

/// What became of the command.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// Every step was already done (a replay after a restart).
    AlreadyApplied,
    /// The target refused the command itself (e.g. `WRONGTYPE`): its operands are unchanged.
    Refused(String),
}

/// Apply `cmd` once across the nodes (see the module docs).
pub async fn apply(cmd: &CrossCommand, t: &CrossTarget<'_>) -> Result<Outcome, TargetError> {
    let placement = &t.shard.placement;
    let groups: Vec<usize> = cmd
        .keys
        .iter()
        .map(|&i| placement.group_of(&cmd.args[i]))
        .collect();
    let home = groups[0];
    let mut clients: HashMap<usize, Client> = HashMap::new();
    // Each distinct foreign key gets one temporary in the home slot.
    let mut tmps: Vec<(Bytes, Bytes, usize)> = Vec::new(); // (key, tmp, group)
    let mut args = cmd.args.clone();
    for (j, &i) in cmd.keys.iter().enumerate() {
        if groups[j] == home {
            continue;
        }
        let key = cmd.args[i].clone();
        let tmp = match tmps.iter().find(|(k, _, _)| *k == key) {
            Some((_, tmp, _)) => tmp.clone(),
            None => {
                let n = tmps.len();
                let tmp = Bytes::from(
                    placement.key_in_group(format!("{}x{n}:", t.tmp_prefix).as_bytes(), home),
                );
                tmps.push((key, tmp.clone(), groups[j]));
                tmp
            }
        };
        args[i] = tmp;
    }

    // A script named by its SHA1 runs with its body: the home node may never have loaded it (another node
    // ran the source's EVAL, or this one was promoted or added since).
    let eval = if args[0].eq_ignore_ascii_case(b"EVALSHA") {
        Some(&b"EVAL"[..])
    } else if args[0].eq_ignore_ascii_case(b"EVALSHA_RO") {
        Some(&b"EVAL_RO"[..])
    } else {
        None
    };
    if let (Some(eval), Some(sha)) = (eval, args.get(1)) {
        if let Some(body) =
            crate::target::scripts::body(&String::from_utf8_lossy(sha).to_ascii_lowercase())
        {
            args[0] = Bytes::from_static(eval);
            args[1] = body;
        }
    }

    let (home_key, home_value) = (t.checkpoint)(home);
    let mut refused = None;
    let mut did = false;
    if position(client(&mut clients, t, home).await?, &home_key).await? < cmd.end {
        // 1. The operands beside the home keys, the command, the home checkpoint: one transaction.
        let mut dumps = Vec::new();
        for (key, _, g) in &tmps {
            dumps.push(dump(client(&mut clients, t, *g).await?, key).await?);
        }
        let mut tx: Vec<Vec<Bytes>> = vec![vec![Bytes::from_static(b"MULTI")]];
        for ((_, tmp, _), d) in tmps.iter().zip(&dumps) {
            tx.push(vec![Bytes::from_static(b"DEL"), tmp.clone()]);
            if let Some((payload, expiry)) = d {
                tx.push(restore(tmp, payload, *expiry, false));
            }
        }
        let at = tx.len();
        tx.push(args.clone());
        tx.push(vec![Bytes::from_static(b"SET"), home_key, home_value]);
        tx.push(vec![Bytes::from_static(b"EXEC")]);
        let c = client(&mut clients, t, home).await?;
        let results = exec(c, &tx).await?;
        // `at - 1`: the result array has no entry for MULTI.
        if let Some(Reply::Error(e)) = results.get(at - 1) {
            refused = Some(String::from_utf8_lossy(e).into_owned());
        }
        did = true;
    }

    // 2. Write every foreign operand back to its own group, with that group's checkpoint.
    let mut by_group: Vec<(usize, Vec<(Bytes, Bytes)>)> = Vec::new();
    for (key, tmp, g) in &tmps {
        match by_group.iter_mut().find(|(x, _)| x == g) {
            Some((_, v)) => v.push((key.clone(), tmp.clone())),
            None => by_group.push((*g, vec![(key.clone(), tmp.clone())])),
        }
    }
    for (g, pairs) in &by_group {
        let (key, value) = (t.checkpoint)(*g);
        if position(client(&mut clients, t, *g).await?, &key).await? >= cmd.end {
            continue;
        }
        let mut dumps = Vec::new();
        for (_, tmp) in pairs {
            dumps.push(dump(client(&mut clients, t, home).await?, tmp).await?);
        }
        let mut tx: Vec<Vec<Bytes>> = vec![vec![Bytes::from_static(b"MULTI")]];
        for ((k, _), d) in pairs.iter().zip(&dumps) {
            match d {
                Some((payload, expiry)) => tx.push(restore(k, payload, *expiry, true)),
                None => tx.push(vec![Bytes::from_static(b"DEL"), k.clone()]),
            }
        }
        tx.push(vec![Bytes::from_static(b"SET"), key, value]);
        tx.push(vec![Bytes::from_static(b"EXEC")]);
        let results = exec(client(&mut clients, t, *g).await?, &tx).await?;
        if let Some(e) = results.iter().find_map(|r| match r {
            Reply::Error(e) => Some(String::from_utf8_lossy(e).into_owned()),
            _ => None,
        }) {
            return Err(TargetError::Command {
                addr: t
                    .nodes
                    .get(&node_of(t, *g)?)
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
                what: "writing an operand back after a command over several slots".into(),
                msg: e,
            });
        }
        did = true;
    }

    // 3. The temporaries go last: until then a replay can still write the operands back.
    if !tmps.is_empty() {
        let mut del = vec![Bytes::from_static(b"DEL")];
        del.extend(tmps.iter().map(|(_, tmp, _)| tmp.clone()));
        let refs: Vec<&[u8]> = del.iter().map(|a| &a[..]).collect();
        let c = client(&mut clients, t, home).await?;
        let r = c.cmd(&refs).await?;
        redirect_or_ok(c, &r, b"DEL")?;
    }
    Ok(match (refused, did) {
        (Some(e), _) => Outcome::Refused(e),
        (None, true) => Outcome::Applied,
        (None, false) => Outcome::AlreadyApplied,
    })
}

fn node_of(t: &CrossTarget<'_>, group: usize) -> Result<usize, TargetError> {
    t.shard
        .placement
        .node_of(group)
        .ok_or_else(|| TargetError::Topology {
            addr: t.shard.label.clone(),
            msg: format!("group {group} is served by no node"),
        })
}

/// The connection to the node of `group` (opened once, in the target's db).
async fn client<'c>(
    clients: &'c mut HashMap<usize, Client>,
    t: &CrossTarget<'_>,
    group: usize,
) -> Result<&'c mut Client, TargetError> {
    let node = node_of(t, group)?;
    if let std::collections::hash_map::Entry::Vacant(slot) = clients.entry(node) {
        let addr = t.nodes.get(&node).ok_or_else(|| TargetError::Topology {
            addr: t.shard.label.clone(),
            msg: format!("node {node} is not known"),
        })?;
        let mut c = Client::connect(addr).await?;
        if t.shard.db != 0 {
            c.cmd_ok(&[b"SELECT", t.shard.db.to_string().as_bytes()])
                .await?;
        }
        slot.insert(c);
    }
    Ok(clients.get_mut(&node).expect("inserted"))
}

/// A redirection is a layout change (the job starts again); another error a refusal.
fn redirect_or_ok(c: &Client, r: &Reply, what: &[u8]) -> Result<(), TargetError> {
    if let Reply::Error(e) = r {
        let text = String::from_utf8_lossy(e).into_owned();
        if crate::target::is_redirection(&text) {
            return Err(TargetError::Topology {
                addr: c.addr().to_string(),
                msg: text,
            });
        }
        return Err(c.command_error(what, e));
    }
    Ok(())
}

/// Where a group's checkpoint says its data stands (-1: none).
async fn position(c: &mut Client, key: &[u8]) -> Result<i64, TargetError> {
    let r = c.cmd(&[b"GET", key]).await?;
    redirect_or_ok(c, &r, b"GET")?;
    Ok(r.as_bytes()
        .and_then(super::stream::TargetCheckpoint::parse)
        .map_or(-1, |cp| cp.offset))
}

/// A key's `DUMP` and its expiry; `None` when it does not exist.
async fn dump(c: &mut Client, key: &[u8]) -> Result<Option<(Bytes, Expiry)>, TargetError> {
    // PEXPIRETIME (7.0+) keeps the expiry exact; before it the remaining time is the best there is.
    let replies = c
        .pipeline(&[vec![&b"DUMP"[..], key], vec![&b"PEXPIRETIME"[..], key]])
        .await?;
    redirect_or_ok(c, &replies[0], b"DUMP")?;
    let expiry = match &replies[1] {
        Reply::Integer(-1) => Expiry::None,
        Reply::Integer(-2) => return Ok(None),
        Reply::Integer(at) => Expiry::At(*at),
        Reply::Error(e) if !crate::target::is_redirection(&String::from_utf8_lossy(e)) => {
            let r = c.cmd(&[b"PTTL", key]).await?;
            redirect_or_ok(c, &r, b"PTTL")?;
            match r.as_int() {
                Some(-2) => return Ok(None),
                Some(ms) if ms > 0 => Expiry::In(ms),
                _ => Expiry::None,
            }
        }
        other => {
            redirect_or_ok(c, other, b"PEXPIRETIME")?;
            Expiry::None
        }
    };
    Ok(replies[0]
        .as_bytes()
        .map(|p| (Bytes::copy_from_slice(p), expiry)))
}

/// When a copied key expires.
#[derive(Clone, Copy, Debug)]
enum Expiry {
    None,
    /// Unix time in ms (restored with `ABSTTL`: exact).
    At(i64),
    /// Milliseconds from now (servers before 7.0).
    In(i64),
}

/// `RESTORE key <ttl> payload [REPLACE] [ABSTTL]` for a copied key.
fn restore(key: &Bytes, payload: &Bytes, expiry: Expiry, replace: bool) -> Vec<Bytes> {
    let ttl = match expiry {
        Expiry::None => 0,
        Expiry::At(ms) | Expiry::In(ms) => ms,
    };
    let mut v = vec![
        Bytes::from_static(b"RESTORE"),
        key.clone(),
        Bytes::from(ttl.to_string()),
        payload.clone(),
    ];
    if replace {
        v.push(Bytes::from_static(b"REPLACE"));
    }
    if matches!(expiry, Expiry::At(_)) {
        v.push(Bytes::from_static(b"ABSTTL"));
    }
    v
}

/// Send a `MULTI … EXEC` and return the `EXEC` result's items.
async fn exec(c: &mut Client, tx: &[Vec<Bytes>]) -> Result<Vec<Reply>, TargetError> {
    let cmds: Vec<Vec<&[u8]>> = tx
        .iter()
        .map(|a| a.iter().map(|b| &b[..]).collect())
        .collect();
    let mut replies = c.pipeline(&cmds).await?;
    for r in &replies[..replies.len() - 1] {
        redirect_or_ok(c, r, b"a queued command")?;
    }
    let last = replies.pop().unwrap_or(Reply::Null);
    redirect_or_ok(c, &last, b"EXEC")?;
    last.into_array().ok_or_else(|| TargetError::Protocol {
        addr: c.addr().to_string(),
        detail: "EXEC answered no result".into(),
    })
}
