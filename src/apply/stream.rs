//! Applying the replication command stream of one source.
//!
//! Commands go to the target in source order through one ordered connection, as the very bytes the master
//! sent (no re-encoding). The stream's SELECTs are consumed and become the db of each batch (the target
//! connection selects by itself, also after a reconnect). A MULTI…EXEC block stays whole in one batch and
//! is one entry for reply checking. Replication chatter (PING, REPLCONF) is consumed; `REPLCONF GETACK`
//! asks the link for an immediate ACK. Every batch carries the master offset just after its last command,
//! stored as the applied offset when the target has answered it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::ApplyError;
use crate::resp::{Command, CommandDecoder};
use crate::target::pool::{Batch, ResendRule, WriterPool};

/// Counters of one source's stream, read by status.
#[derive(Debug, Default)]
pub struct StreamStats {
    pub commands: AtomicU64,
    pub transactions: AtomicU64,
    pub chatter: AtomicU64,
    /// Commands of dbs that are not synced (`--db`).
    pub filtered: AtomicU64,
}

/// What the applier asks of its caller besides writes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Signals {
    /// The master sent `REPLCONF GETACK`: acknowledge now.
    pub ack_now: bool,
    /// The source flushed (FLUSHDB: `Some(db)`; FLUSHALL: `None`) and flushes are not forwarded (other
    /// sources share the target): the caller removes this source's keys, then calls `push(&[])` to go on.
    /// Commands after the flush are held back until then.
    pub flush: Option<Option<u32>>,
}

/// Where the in-target checkpoint of a source lives, and the replication id it records.
#[derive(Clone, Debug)]
pub struct TargetCheckpoint {
    pub db: u32,
    pub key: Bytes,
    pub replid: String,
}

impl TargetCheckpoint {
    /// The stored value: `<replid>:<offset>`.
    pub fn value(&self, offset: i64) -> String {
        format!("{}:{offset}", self.replid)
    }

    /// Parse a stored value.
    pub fn parse(v: &[u8]) -> Option<(String, i64)> {
        let s = std::str::from_utf8(v).ok()?;
        let (id, off) = s.rsplit_once(':')?;
        Some((id.to_string(), off.parse().ok()?))
    }
}

/// Receives the end-to-end lag measured from a heartbeat write (source clock at write → here).
pub type HeartbeatSink = Arc<dyn Fn(std::time::Duration) + Send + Sync>;

/// Applies one source's command stream to one target connection, in order.
pub struct StreamApplier {
    pool: Arc<WriterPool>,
    decoder: CommandDecoder,
    rbuf: BytesMut,
    /// Master offset of the first byte in `rbuf`.
    offset: i64,
    db: u32,
    batch: Batch,
    /// Inside MULTI: commands of the open group, and its first byte's position in the batch.
    group: Option<(u32, Bytes)>,
    batch_bytes: usize,
    /// The pool connection this source's stream is ordered on.
    conn: usize,
    applied: Arc<AtomicI64>,
    /// Lua script bodies seen (EVAL, SCRIPT LOAD, the RDB's `lua` AUX fields) by lowercase hex SHA1.
    scripts: HashMap<String, Bytes>,
    /// Scripts this applier has loaded on the target (SCRIPT FLUSH clears it).
    loaded: HashSet<String>,
    /// Forward FLUSHDB/FLUSHALL as they are (the source is alone on the target).
    forward_flush: bool,
    /// A flush seen inside MULTI, signalled after its EXEC.
    flush_after_group: Option<Option<u32>>,
    /// The checkpoint kept in the target, updated in the same MULTI/EXEC as the commands it covers.
    target_cp: Option<TargetCheckpoint>,
    /// Which source dbs are synced and where they go (`--db`, `--map-db`).
    dbs: super::DbMap,
    /// A SELECT inside the open MULTI changed the db: restore the connection's db after EXEC.
    group_selected: bool,
    /// ferry's heartbeat key on the source: its SETs are consumed (never copied) and measure the lag.
    heartbeat: Option<(Bytes, HeartbeatSink)>,
    /// Commands ending at or before this master offset are already on the target (its in-target
    /// checkpoint says so): skipped, not applied twice.
    skip_until: i64,
    pub stats: Arc<StreamStats>,
}

/// What to do with one command under a db filter or map.
enum DbAction {
    Forward,
    Drop,
    Rewrite(Vec<Vec<u8>>),
    Report(String),
}

/// Lowercase hex SHA1 of a script body, as Redis names scripts.
pub fn script_sha(body: &[u8]) -> String {
    use sha1::{Digest, Sha1};
    let d = Sha1::digest(body);
    let mut out = String::with_capacity(40);
    for b in d {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

impl StreamApplier {
    /// `offset` is the master offset of the first stream byte to come; `applied` receives applied offsets.
    pub fn new(pool: Arc<WriterPool>, offset: i64, db: u32, applied: Arc<AtomicI64>) -> Self {
        StreamApplier {
            pool,
            decoder: CommandDecoder::default(),
            rbuf: BytesMut::with_capacity(64 * 1024),
            offset,
            db,
            batch: Batch::new(Some(db)),
            group: None,
            batch_bytes: 64 * 1024,
            conn: 0,
            applied,
            scripts: HashMap::new(),
            loaded: HashSet::new(),
            forward_flush: true,
            flush_after_group: None,
            target_cp: None,
            dbs: super::DbMap::default(),
            group_selected: false,
            heartbeat: None,
            skip_until: -1,
            stats: Arc::new(StreamStats::default()),
        }
    }

    /// Order this stream on connection `n` of the pool (modulo its size), so several sources' streams
    /// spread over the connections while each stays in order.
    pub fn with_connection(mut self, n: usize) -> Self {
        self.conn = n % self.pool.len().max(1);
        self
    }

    /// Whether FLUSHDB/FLUSHALL go to the target as they are (true: the default, one source per target) or
    /// are signalled to the caller (several sources share the target).
    pub fn forward_flush(mut self, on: bool) -> Self {
        self.forward_flush = on;
        self
    }

    /// The pool and connection this stream is ordered on (writes sent there are in order with it).
    pub fn ordered_connection(&self) -> (Arc<WriterPool>, usize) {
        (self.pool.clone(), self.conn)
    }

    /// Wait until the target answered everything queued so far.
    pub async fn pool_flush(&self) -> Result<(), ApplyError> {
        self.pool.flush().await?;
        Ok(())
    }

    /// The db the stream is in.
    pub fn db(&self) -> u32 {
        self.db
    }

    /// Keep the checkpoint in the target: every batch becomes `MULTI … SET <key> <replid>:<offset> EXEC`,
    /// so the target holds exactly the offset its data reflects, even after kill -9.
    pub fn with_target_checkpoint(mut self, cp: Option<TargetCheckpoint>) -> Self {
        self.target_cp = cp;
        self
    }

    /// Skip the commands that end at or before `offset`: this target already has them.
    pub fn skip_until(mut self, offset: i64) -> Self {
        self.skip_until = offset;
        self
    }

    /// Consume `SET <key> <unix ms>` heartbeats written by ferry into the source, reporting the lag.
    pub fn with_heartbeat(mut self, key: Option<Bytes>, sink: HeartbeatSink) -> Self {
        self.heartbeat = key.map(|k| (k, sink));
        self
    }

    /// Sync only some source dbs, or write them into other target dbs.
    pub fn with_dbs(mut self, dbs: super::DbMap) -> Self {
        self.dbs = dbs;
        self.batch.db = Some(self.tdb());
        self
    }

    /// The target db of the current source db (its own number when filtered out: nothing is written then).
    fn tdb(&self) -> u32 {
        self.dbs.target(self.db).unwrap_or(self.db)
    }

    /// The master's replication id changed (`+CONTINUE <new id>` after a failover): record the new one.
    pub fn set_replid(&mut self, replid: &str) {
        if let Some(cp) = self.target_cp.as_mut() {
            cp.replid = replid.to_string();
        }
    }

    /// Remember script bodies (from the RDB's `lua` AUX fields) so an EVALSHA can load them first.
    pub fn add_scripts<'a>(&mut self, bodies: impl IntoIterator<Item = &'a Bytes>) {
        for b in bodies {
            self.scripts.insert(script_sha(b), b.clone());
        }
    }

    /// Master offset up to which commands have been handed to the target (not necessarily answered).
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// Feed stream bytes; complete commands are queued for the target.
    pub async fn push(&mut self, chunk: &[u8]) -> Result<Signals, ApplyError> {
        let mut signals = Signals::default();
        self.rbuf.extend_from_slice(chunk);
        loop {
            let cmd = match self.decoder.decode_frozen(&mut self.rbuf) {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    return Err(ApplyError::Unsupported(format!(
                        "replication stream at master offset {}: {e}",
                        self.offset
                    )))
                }
            };
            self.offset += cmd.raw().len() as i64;
            if self.offset <= self.skip_until {
                continue; // already on this target
            }
            self.on_command(cmd, &mut signals).await?;
            if signals.flush.is_some() {
                // Hold the rest back until the caller removed this source's keys.
                return Ok(signals);
            }
        }
        if self.group.is_none() && self.batch.len() >= self.batch_bytes {
            self.send().await?;
        }
        Ok(signals)
    }

    /// Hand the open batch to the target (at a command boundary outside MULTI).
    pub async fn send(&mut self) -> Result<(), ApplyError> {
        if self.group.is_some() {
            return Ok(());
        }
        let tdb = self.tdb();
        let mut b = std::mem::replace(&mut self.batch, Batch::new(Some(tdb)));
        if let Some(cp) = &self.target_cp {
            if !b.cmds.is_empty() {
                wrap_with_checkpoint(&mut b, cp, self.offset, self.tdb());
            }
        }
        b.applied = Some((self.applied.clone(), self.offset));
        self.pool.send(self.conn, b).await?;
        Ok(())
    }

    async fn on_command(&mut self, cmd: Command, signals: &mut Signals) -> Result<(), ApplyError> {
        if cmd.argc() == 0 {
            return Ok(()); // a keep-alive newline
        }
        let name = cmd.arg(0);
        if name.eq_ignore_ascii_case(b"PING") {
            self.stats.chatter.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if name.eq_ignore_ascii_case(b"REPLCONF") {
            self.stats.chatter.fetch_add(1, Ordering::Relaxed);
            if cmd.argc() > 1 && cmd.arg(1).eq_ignore_ascii_case(b"GETACK") {
                signals.ack_now = true;
            }
            return Ok(());
        }
        if name.eq_ignore_ascii_case(b"SELECT") && self.group.is_none() {
            let db = std::str::from_utf8(cmd.arg(1))
                .ok()
                .and_then(|s| s.parse::<u32>().ok())
                .ok_or_else(|| {
                    ApplyError::Unsupported(format!(
                        "replication stream at master offset {}: bad SELECT",
                        self.offset
                    ))
                })?;
            if db != self.db {
                if !self.batch.cmds.is_empty() {
                    self.send().await?;
                }
                self.db = db;
                self.batch.db = Some(self.tdb());
            }
            return Ok(());
        }
        if let Some((key, sink)) = &self.heartbeat {
            if cmd.argc() >= 3 && cmd.arg(1) == &key[..] && name.eq_ignore_ascii_case(b"SET") {
                let sent = std::str::from_utf8(cmd.arg(2))
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok());
                if let (Some(sent), Ok(now)) = (
                    sent,
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH),
                ) {
                    let now = now.as_millis() as u64;
                    sink(std::time::Duration::from_millis(now.saturating_sub(sent)));
                }
                self.stats.chatter.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        }
        let mut rewritten: Option<Vec<Vec<u8>>> = None;
        if !self.dbs.is_identity() || name.eq_ignore_ascii_case(b"SELECT") {
            match self.db_action(&cmd) {
                DbAction::Forward => {}
                DbAction::Drop => {
                    self.stats.filtered.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                DbAction::Rewrite(args) => rewritten = Some(args),
                DbAction::Report(why) => {
                    let cmdname = command_name(name);
                    if self.pool.stats().record_rejection(cmdname, &why) {
                        tracing::warn!(command = cmdname, key = %crate::target::pool::escape_key(cmd.arg(1)),
                            reason = %why, "a command spanning synced and unsynced dbs was not applied");
                    }
                    return Ok(());
                }
            }
        }
        if let Some(args) = rewritten {
            let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
            let mut raw = BytesMut::new();
            crate::resp::encode_command(&mut raw, &refs);
            let raw = raw.freeze();
            let mut dec = CommandDecoder::default();
            let mut buf = BytesMut::from(&raw[..]);
            if let Ok(Some(c)) = dec.decode_frozen(&mut buf) {
                return self.on_forwarded(c, signals).await;
            }
            return Ok(());
        }
        self.on_forwarded(cmd, signals).await
    }

    /// What to do with a command under a db filter or map.
    fn db_action(&mut self, cmd: &Command) -> DbAction {
        let name = cmd.arg(0);
        let parse = |a: &[u8]| {
            std::str::from_utf8(a)
                .ok()
                .and_then(|s| s.parse::<u32>().ok())
        };
        let here = self.dbs.target(self.db);
        if name.eq_ignore_ascii_case(b"SELECT") {
            // Only inside MULTI (outside, SELECT is consumed above).
            let Some(db) = parse(cmd.arg(1)) else {
                return DbAction::Report("bad SELECT".into());
            };
            self.db = db;
            self.group_selected = true;
            return match self.dbs.target(db) {
                Some(t) => DbAction::Rewrite(vec![b"SELECT".to_vec(), t.to_string().into_bytes()]),
                None => DbAction::Report(format!(
                    "SELECT {db} inside MULTI into a db that is not synced"
                )),
            };
        }
        if name.eq_ignore_ascii_case(b"MOVE") && cmd.argc() == 3 {
            let Some(dst) = parse(cmd.arg(2)) else {
                return DbAction::Forward;
            };
            return match (here, self.dbs.target(dst)) {
                (None, None) => DbAction::Drop,
                (Some(a), Some(b)) if a == b => DbAction::Drop,
                (Some(_), Some(b)) => DbAction::Rewrite(vec![
                    b"MOVE".to_vec(),
                    cmd.arg(1).to_vec(),
                    b.to_string().into_bytes(),
                ]),
                (Some(_), None) => DbAction::Rewrite(vec![b"DEL".to_vec(), cmd.arg(1).to_vec()]),
                (None, Some(_)) => DbAction::Report(format!(
                    "MOVE from unsynced db {} into synced db {dst}",
                    self.db
                )),
            };
        }
        if name.eq_ignore_ascii_case(b"SWAPDB") && cmd.argc() == 3 {
            let (Some(a), Some(b)) = (parse(cmd.arg(1)), parse(cmd.arg(2))) else {
                return DbAction::Forward;
            };
            return match (self.dbs.target(a), self.dbs.target(b)) {
                (None, None) => DbAction::Drop,
                (Some(x), Some(y)) if x != y => DbAction::Rewrite(vec![
                    b"SWAPDB".to_vec(),
                    x.to_string().into_bytes(),
                    y.to_string().into_bytes(),
                ]),
                _ => DbAction::Report(format!("SWAPDB {a} {b} across unsynced or merged dbs")),
            };
        }
        if name.eq_ignore_ascii_case(b"COPY") {
            let args: Vec<&[u8]> = (0..cmd.argc()).map(|i| cmd.arg(i)).collect();
            if let Some(pos) = args.iter().position(|a| a.eq_ignore_ascii_case(b"DB")) {
                let Some(dst) = args.get(pos + 1).and_then(|a| parse(a)) else {
                    return DbAction::Forward;
                };
                return match (here, self.dbs.target(dst)) {
                    (None, None) | (Some(_), None) => DbAction::Drop,
                    (Some(_), Some(t)) => {
                        let mut v: Vec<Vec<u8>> = args.iter().map(|a| a.to_vec()).collect();
                        v[pos + 1] = t.to_string().into_bytes();
                        DbAction::Rewrite(v)
                    }
                    (None, Some(_)) => DbAction::Report(format!(
                        "COPY from unsynced db {} into synced db {dst}",
                        self.db
                    )),
                };
            }
        }
        if here.is_none() {
            // MULTI/EXEC of a transaction in an unsynced db go with its commands.
            return DbAction::Drop;
        }
        DbAction::Forward
    }

    async fn on_forwarded(
        &mut self,
        cmd: Command,
        signals: &mut Signals,
    ) -> Result<(), ApplyError> {
        let name = cmd.arg(0);
        self.stats.commands.fetch_add(1, Ordering::Relaxed);
        let script_load = self.scripts_before(&cmd);
        if let Some(body) = &script_load {
            crate::resp::encode_command(&mut self.batch.bytes, &[b"SCRIPT", b"LOAD", body]);
            match self.group.as_mut() {
                Some((n, _)) => *n += 1,
                None => self
                    .batch
                    .finish_cmd("SCRIPT", Bytes::new(), 1, ResendRule::Strict),
            }
        }
        let is_flush =
            name.eq_ignore_ascii_case(b"FLUSHDB") || name.eq_ignore_ascii_case(b"FLUSHALL");
        if is_flush && (!self.forward_flush || !self.dbs.is_identity()) {
            // Shared target, or dbs filtered/mapped: remove this source's keys of the synced dbs only.
            let scope = if name.eq_ignore_ascii_case(b"FLUSHDB") {
                Some(self.tdb())
            } else {
                None
            };
            tracing::info!(command = %String::from_utf8_lossy(name).to_uppercase(), db = ?scope,
                "the source flushed: removing only its own keys from the shared target");
            if self.group.is_some() {
                self.flush_after_group = Some(scope);
            } else {
                signals.flush = Some(scope);
            }
            return Ok(());
        }
        // With the in-target checkpoint every batch is one transaction already: the source's own
        // MULTI/EXEC are dropped (nesting is an error) and its commands stay together in the batch.
        let wrap = self.target_cp.is_some();
        if name.eq_ignore_ascii_case(b"MULTI") {
            if !wrap {
                self.batch.bytes.extend_from_slice(cmd.raw());
            }
            self.group = Some((u32::from(!wrap), Bytes::new()));
            return Ok(());
        }
        if let Some((n, key)) = self.group.as_mut() {
            let exec = name.eq_ignore_ascii_case(b"EXEC");
            if !(wrap && exec) {
                self.batch.bytes.extend_from_slice(cmd.raw());
                *n += 1;
            }
            if key.is_empty() && cmd.argc() > 1 {
                *key = cmd.arg_bytes(1);
            }
            if exec {
                let (n, key) = self.group.take().expect("in a group");
                if n > 0 {
                    self.batch.finish_cmd("MULTI", key, n, ResendRule::Strict);
                }
                if std::mem::take(&mut self.group_selected) {
                    // The transaction moved the connection to another db: put it back where the batch
                    // says it is, and continue in a batch of the new db.
                    let back = self.batch.db.unwrap_or(0).to_string();
                    self.batch.push(
                        "SELECT",
                        &Bytes::new(),
                        &[b"SELECT", back.as_bytes()],
                        ResendRule::Strict,
                    );
                    self.send().await?;
                }
                self.stats.transactions.fetch_add(1, Ordering::Relaxed);
                if let Some(scope) = self.flush_after_group.take() {
                    signals.flush = Some(scope);
                }
            }
            return Ok(());
        }
        self.batch.bytes.extend_from_slice(cmd.raw());
        let key = if cmd.argc() > 1 {
            cmd.arg_bytes(1)
        } else {
            Bytes::new()
        };
        self.batch
            .finish_cmd(command_name(name), key, 1, ResendRule::Strict);
        Ok(())
    }
}

impl StreamApplier {
    /// Track scripts; returns a body to `SCRIPT LOAD` on the target before this command (an EVALSHA of
    /// a script the target may not have).
    fn scripts_before(&mut self, cmd: &Command) -> Option<Bytes> {
        let name = cmd.arg(0);
        if name.eq_ignore_ascii_case(b"EVAL") && cmd.argc() > 1 {
            let body = cmd.arg_bytes(1);
            let sha = script_sha(&body);
            self.loaded.insert(sha.clone());
            self.scripts.insert(sha, body);
        } else if name.eq_ignore_ascii_case(b"SCRIPT") && cmd.argc() > 1 {
            if cmd.arg(1).eq_ignore_ascii_case(b"LOAD") && cmd.argc() > 2 {
                let body = cmd.arg_bytes(2);
                let sha = script_sha(&body);
                self.loaded.insert(sha.clone());
                self.scripts.insert(sha, body);
            } else if cmd.arg(1).eq_ignore_ascii_case(b"FLUSH") {
                self.loaded.clear();
            }
        } else if name.eq_ignore_ascii_case(b"EVALSHA") && cmd.argc() > 1 {
            let sha = String::from_utf8_lossy(cmd.arg(1)).to_ascii_lowercase();
            if !self.loaded.contains(&sha) {
                if let Some(body) = self.scripts.get(&sha) {
                    let body = body.clone();
                    self.loaded.insert(sha);
                    return Some(body);
                }
            }
        }
        None
    }
}

/// Turn a batch into one transaction that also stores the checkpoint: `MULTI`, the commands, `SELECT cp.db`,
/// `SET cp.key replid:offset`, `SELECT db`, `EXEC`.
fn wrap_with_checkpoint(b: &mut Batch, cp: &TargetCheckpoint, offset: i64, db: u32) {
    let inner: u32 = b.cmds.iter().map(|c| c.replies).sum();
    let key = b.cmds.first().map(|c| c.key.clone()).unwrap_or_default();
    let mut bytes = BytesMut::with_capacity(b.bytes.len() + 128 + cp.key.len());
    crate::resp::encode_command(&mut bytes, &[b"MULTI"]);
    bytes.extend_from_slice(&b.bytes);
    let cpdb = cp.db.to_string();
    let dbs = b.db.unwrap_or(db).to_string();
    crate::resp::encode_command(&mut bytes, &[b"SELECT", cpdb.as_bytes()]);
    crate::resp::encode_command(&mut bytes, &[b"SET", &cp.key, cp.value(offset).as_bytes()]);
    crate::resp::encode_command(&mut bytes, &[b"SELECT", dbs.as_bytes()]);
    crate::resp::encode_command(&mut bytes, &[b"EXEC"]);
    b.bytes = bytes;
    b.cmds.clear();
    b.finish_cmd("MULTI", key, inner + 5, ResendRule::Strict);
}

/// Delete `keys` of `db` through connection `conn` of `pool` (in order with what was sent there before).
pub async fn delete_keys(
    pool: Arc<WriterPool>,
    conn: usize,
    db: u32,
    keys: Vec<Bytes>,
) -> Result<(), crate::target::TargetError> {
    for chunk in keys.chunks(256) {
        let mut b = Batch::new(Some(db));
        let mut args: Vec<&[u8]> = Vec::with_capacity(chunk.len() + 1);
        args.push(b"DEL");
        args.extend(chunk.iter().map(|k| &k[..]));
        crate::resp::encode_command(&mut b.bytes, &args);
        b.finish_cmd("DEL", chunk[0].clone(), 1, ResendRule::Strict);
        pool.send(conn, b).await?;
    }
    Ok(())
}

/// A static name for counters (the common write commands); others are "OTHER".
fn command_name(name: &[u8]) -> &'static str {
    const NAMES: &[&str] = &[
        "SET",
        "DEL",
        "UNLINK",
        "EXPIRE",
        "PEXPIRE",
        "EXPIREAT",
        "PEXPIREAT",
        "PERSIST",
        "INCR",
        "INCRBY",
        "DECR",
        "DECRBY",
        "INCRBYFLOAT",
        "APPEND",
        "SETRANGE",
        "SETBIT",
        "GETSET",
        "GETDEL",
        "GETEX",
        "MSET",
        "MSETNX",
        "SETNX",
        "SETEX",
        "PSETEX",
        "LPUSH",
        "RPUSH",
        "LPUSHX",
        "RPUSHX",
        "LPOP",
        "RPOP",
        "LSET",
        "LREM",
        "LTRIM",
        "LINSERT",
        "LMOVE",
        "RPOPLPUSH",
        "SADD",
        "SREM",
        "SPOP",
        "SMOVE",
        "SINTERSTORE",
        "SUNIONSTORE",
        "SDIFFSTORE",
        "ZADD",
        "ZREM",
        "ZINCRBY",
        "ZREMRANGEBYSCORE",
        "ZREMRANGEBYRANK",
        "ZREMRANGEBYLEX",
        "ZUNIONSTORE",
        "ZINTERSTORE",
        "ZDIFFSTORE",
        "ZRANGESTORE",
        "ZPOPMIN",
        "ZPOPMAX",
        "HSET",
        "HMSET",
        "HSETNX",
        "HDEL",
        "HINCRBY",
        "HINCRBYFLOAT",
        "XADD",
        "XDEL",
        "XTRIM",
        "XGROUP",
        "XACK",
        "XCLAIM",
        "XAUTOCLAIM",
        "XSETID",
        "PFADD",
        "PFMERGE",
        "GEOADD",
        "BITOP",
        "BITFIELD",
        "RENAME",
        "RENAMENX",
        "MOVE",
        "COPY",
        "SWAPDB",
        "RESTORE",
        "FLUSHDB",
        "FLUSHALL",
        "EVAL",
        "EVALSHA",
        "FCALL",
        "FUNCTION",
        "SCRIPT",
        "PUBLISH",
        "SORT",
        "EXEC",
    ];
    NAMES
        .iter()
        .find(|n| n.as_bytes().eq_ignore_ascii_case(name))
        .copied()
        .unwrap_or("OTHER")
}

#[cfg(test)]
mod tests {
    #[test]
    fn target_checkpoint_values_round_trip() {
        let cp = super::TargetCheckpoint {
            db: 0,
            key: bytes::Bytes::from_static(b"ferry:checkpoint:x"),
            replid: "a".repeat(40),
        };
        let v = cp.value(12345);
        assert_eq!(
            super::TargetCheckpoint::parse(v.as_bytes()),
            Some(("a".repeat(40), 12345))
        );
        assert_eq!(super::TargetCheckpoint::parse(b"garbage"), None);
    }

    #[test]
    fn script_names_are_redis_sha1s() {
        // From the Redis EVALSHA documentation: SCRIPT LOAD "return 1" answers this SHA1.
        assert_eq!(
            super::script_sha(b"return 1"),
            "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
        );
    }
}
