//! Applying an RDB snapshot to a target.
//!
//! Fast path: `RESTORE key ttl payload ABSTTL [REPLACE] [IDLETIME s | FREQ f]` where the payload is the
//! value's own serialized bytes from the source plus the DUMP footer (source RDB version, CRC64): nothing
//! is re-encoded. Re-encode path, when the target cannot load the source's RDB version: the value is
//! decoded and written with native commands inside one `MULTI … EXEC`, so no reader sees half a key.
//! Big values (larger than the decoder's entry limit) arrive in chunks and are built under a temporary
//! key with idempotent commands, then `RENAME`d into place.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::encode::{self, Caps, Mode, Progress};
use super::{ApplyError, ApplyStats};
use crate::keyset::KeySetBuilder;
use crate::rdb::{self, BigHeader, Entry, Event, Kind};
use crate::resp;
use crate::target::pool::{Batch, ResendRule, Tx, WriterPool};
use crate::target::{restore_compatible, ServerInfo};

/// How a snapshot is applied.
#[derive(Clone, Debug)]
pub struct SnapshotOptions {
    /// Source values replace existing target keys (`RESTORE … REPLACE`); otherwise an existing key is a
    /// rejected write.
    pub overwrite: bool,
    /// What the target is (version, RDB version, capabilities).
    pub target: ServerInfo,
    /// A batch is handed to its connection when it reaches this many bytes. Default 64 KiB.
    pub batch_bytes: usize,
    /// Elements per native command. Default 512.
    pub chunk_elements: usize,
    /// Prefix of temporary keys (big values, and whole values written without overwriting); a sequence
    /// number follows. Unique per source (`ferry:tmp:<source id>:`), so two jobs writing one target never
    /// build into the same temporary key.
    pub tmp_prefix: String,
    /// Always re-encode (never RESTORE), e.g. for targets that refuse RESTORE.
    pub force_reencode: bool,
    /// Which dbs are synced and where they go.
    pub dbs: super::DbMap,
    /// ferry's heartbeat key on the sources: never copied.
    pub skip_key: Option<Bytes>,
    /// A node of a sharded target: only the keys it holds are written (the other nodes' appliers write
    /// the rest), and temporary keys are named in the same group as the key they become.
    pub shard: Option<crate::target::shard::Shard>,
}

impl SnapshotOptions {
    pub fn new(target: ServerInfo, tmp_prefix: impl Into<String>) -> Self {
        SnapshotOptions {
            overwrite: false,
            target,
            batch_bytes: 64 * 1024,
            chunk_elements: 512,
            tmp_prefix: tmp_prefix.into(),
            force_reencode: false,
            dbs: super::DbMap::default(),
            skip_key: None,
            shard: None,
        }
    }
}

struct Big {
    header: BigHeader,
    tmp: Bytes,
    conn: usize,
    progress: Progress,
    /// Already expired: its chunks are dropped.
    skip: bool,
}

/// Applies the events of one RDB to the target through the writer pool.
pub struct SnapshotApplier {
    pool: Arc<WriterPool>,
    opts: SnapshotOptions,
    caps: Caps,
    open: Vec<Batch>,
    src_version: u16,
    restore: bool,
    big: Option<Big>,
    tmp_seq: u64,
    stats: Arc<ApplyStats>,
    /// Lua script bodies from `lua` AUX fields, kept for EVALSHA on the target.
    pub scripts: Vec<Bytes>,
    /// Records the (target db, key) of every key written, when asked (see [`SnapshotApplier::start_index`]).
    index: Option<KeySetBuilder>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl SnapshotApplier {
    pub fn new(pool: Arc<WriterPool>, opts: SnapshotOptions, stats: Arc<ApplyStats>) -> Self {
        let caps = Caps {
            multi_hset: opts.target.has_multi_hset(),
            field_expiry: opts.target.has_hash_field_expiry(),
            stream_meta: opts.target.redis_version >= (7, 0, 0),
            create_consumer: opts.target.redis_version >= (6, 2, 0),
            chunk: opts.chunk_elements,
        };
        let open = (0..pool.len()).map(|_| Batch::new(None)).collect();
        SnapshotApplier {
            pool,
            opts,
            caps,
            open,
            src_version: 0,
            restore: true,
            big: None,
            tmp_seq: 0,
            stats,
            scripts: Vec::new(),
            index: None,
        }
    }

    /// Record every key written from now on (bounded memory; spills into `dir`): after a full resync, the
    /// keys of the source that its snapshot did not write are removed.
    pub fn start_index(&mut self, dir: &std::path::Path, name: &str) {
        self.index = Some(KeySetBuilder::new(dir, name, 8 << 20));
    }

    /// The keys written since [`SnapshotApplier::start_index`].
    pub fn take_index(&mut self) -> Option<KeySetBuilder> {
        self.index.take()
    }

    fn indexed(&mut self, db: u32, key: &[u8]) -> Result<(), ApplyError> {
        if let Some(ix) = self.index.as_mut() {
            if let Err(e) = ix.insert(db, key) {
                return Err(ApplyError::Unsupported(format!(
                    "recording the snapshot's keys (needed to remove the keys the source no longer has): {e}"
                )));
            }
        }
        Ok(())
    }

    /// The writer pool this applier writes through (the stream of the same source continues on it).
    pub fn pool(&self) -> Arc<WriterPool> {
        self.pool.clone()
    }

    /// Replace existing target keys from now on: a full resync of a source whose keys are already on the
    /// target must replace them (never append to them).
    pub fn set_overwrite(&mut self, on: bool) {
        self.opts.overwrite = on;
    }

    /// Whether values go by RESTORE (known after the header).
    pub fn uses_restore(&self) -> bool {
        self.restore
    }

    /// Apply one event.
    pub async fn apply(&mut self, ev: Event) -> Result<(), ApplyError> {
        match ev {
            Event::Header { version, .. } => {
                self.src_version = version;
                self.restore = !self.opts.force_reencode
                    && restore_compatible(version, self.opts.target.rdb_version);
                if !self.restore {
                    tracing::info!(source_rdb = version, target_rdb = self.opts.target.rdb_version,
                        target = %self.opts.target.version_string(),
                        "target cannot load this RDB version: values are re-encoded as native commands");
                }
            }
            Event::Aux { key, value } => {
                if &key[..] == b"lua" {
                    self.scripts.push(value);
                }
            }
            Event::Function { code } => self.load_function(code).await?,
            Event::ModuleAux { module_id, .. } => {
                // Redis itself refuses such a file unless the module is loaded, and no command can put
                // module-global data into a server: refuse rather than copy the keys without it.
                return Err(ApplyError::Unsupported(format!(
                    "the RDB carries global data of module {} (a MODULE_AUX record) that only the module \
                     itself can load; ferry cannot copy it. Sync from a server without that module's \
                     global data, or move this module's data with the module's own tools",
                    module_name(module_id)
                )));
            }
            Event::Entry(e) => self.entry(e).await?,
            Event::BigStart(h) => self.big_start(h).await?,
            Event::BigChunk(c) => self.big_chunk(c).await?,
            Event::BigEnd => self.big_end().await?,
            Event::BigRaw(_) => return Err(ApplyError::Unsupported(
                "internal: a big value's raw bytes reached the command path, which decodes them \
                     (DecoderOptions::raw_big is master mode's)"
                    .into(),
            )),
            Event::SelectDb(_)
            | Event::ResizeDb { .. }
            | Event::SlotInfo { .. }
            | Event::End { .. } => {}
        }
        Ok(())
    }

    /// Hand every open batch to its connection and wait until the target answered everything.
    pub async fn finish(&mut self) -> Result<(), ApplyError> {
        for i in 0..self.open.len() {
            self.send_open(i).await?;
        }
        self.pool.flush().await?;
        Ok(())
    }

    async fn send_open(&mut self, i: usize) -> Result<(), ApplyError> {
        if !self.open[i].is_empty() {
            let b = std::mem::replace(&mut self.open[i], Batch::new(None));
            self.pool.send(i, b).await?;
        }
        Ok(())
    }

    /// The open batch of connection `i`, for db `db`: a batch holds one db, so a change sends it first.
    async fn batch_for(&mut self, i: usize, db: Option<u32>) -> Result<&mut Batch, ApplyError> {
        let b = &self.open[i];
        if !b.cmds.is_empty() && b.db != db {
            self.send_open(i).await?;
        }
        self.open[i].db = db;
        Ok(&mut self.open[i])
    }

    async fn maybe_send(&mut self, i: usize) -> Result<(), ApplyError> {
        if self.open[i].len() >= self.opts.batch_bytes {
            self.send_open(i).await?;
        }
        Ok(())
    }

    async fn load_function(&mut self, code: Bytes) -> Result<(), ApplyError> {
        let replace = self.opts.overwrite;
        let b = self.batch_for(0, None).await?;
        let key = Bytes::from_static(b"(function library)");
        if replace {
            b.push(
                "FUNCTION LOAD",
                &key,
                &[b"FUNCTION", b"LOAD", b"REPLACE", &code],
                ResendRule::Strict,
            );
        } else {
            b.push(
                "FUNCTION LOAD",
                &key,
                &[b"FUNCTION", b"LOAD", &code],
                ResendRule::Strict,
            );
        }
        self.stats.functions.fetch_add(1, Ordering::Relaxed);
        self.send_open(0).await
    }

    /// Whether this target (or node of a sharded target) holds `key`.
    fn holds(&self, key: &[u8]) -> bool {
        self.opts.shard.as_ref().map_or(true, |s| s.owns(key))
    }

    /// A new temporary key name for building `key`: on a sharded target in the same group (cluster slot)
    /// as `key`, so the final `RENAME` stays on one node and is legal in a cluster.
    fn tmp_name(&mut self, key: &[u8]) -> Bytes {
        self.tmp_seq += 1;
        let base = format!("{}{}", self.opts.tmp_prefix, self.tmp_seq);
        match &self.opts.shard {
            Some(s) => Bytes::from(s.placement.key_beside(format!("{base}:").as_bytes(), key)),
            None => Bytes::from(base),
        }
    }

    fn expired(&self, expire_ms: Option<i64>) -> bool {
        matches!(expire_ms, Some(ms) if ms <= now_ms())
    }

    async fn entry(&mut self, mut e: Entry) -> Result<(), ApplyError> {
        if self.opts.skip_key.as_ref() == Some(&e.key) || !self.holds(&e.key) {
            return Ok(());
        }
        if is_empty_collection(&e) {
            // Redis skips empty keys when loading an RDB (they cannot exist in a live server); so do we.
            self.stats
                .keys_empty_skipped
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(key = %crate::target::pool::escape_key(&e.key), "empty value skipped");
            return Ok(());
        }
        match self.opts.dbs.target(e.db) {
            Some(db) => e.db = db,
            None => {
                self.stats.keys_filtered.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        }
        if self.expired(e.expire_ms) {
            self.stats
                .keys_expired_skipped
                .fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        self.indexed(e.db, &e.key)?;
        let i = self.pool.conn_for_key(&e.key);
        let module = Kind::of(e.rdb_type) == Some(Kind::Module);
        if self.restore || module {
            self.restore_entry(i, &e).await?;
            self.stats.keys_restored.fetch_add(1, Ordering::Relaxed);
        } else {
            self.reencode_entry(i, e).await?;
            self.stats.keys_reencoded.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.keys_applied.fetch_add(1, Ordering::Relaxed);
        self.maybe_send(i).await
    }

    async fn restore_entry(&mut self, i: usize, e: &Entry) -> Result<(), ApplyError> {
        let absttl = self.opts.target.has_absttl();
        let ttl = match e.expire_ms {
            None => 0,
            Some(ms) if absttl => ms,
            Some(ms) => (ms - now_ms()).max(1),
        };
        let replace = self.opts.overwrite;
        // IDLETIME / FREQ exist from 5.0, like ABSTTL.
        let meta = if absttl {
            match (e.freq, e.idle) {
                (Some(f), _) => Some((&b"FREQ"[..], f as u64)),
                (None, Some(idle)) => Some((&b"IDLETIME"[..], idle)),
                _ => None,
            }
        } else {
            None
        };
        let version = self.src_version;
        let b = self.batch_for(i, Some(e.db)).await?;
        let nargs = 4
            + usize::from(replace)
            + usize::from(absttl && e.expire_ms.is_some())
            + 2 * usize::from(meta.is_some());
        let out = &mut b.bytes;
        resp::write_array_header(out, nargs);
        resp::write_bulk(out, b"RESTORE");
        resp::write_bulk(out, &e.key);
        resp::write_bulk_int(out, ttl);
        resp::write_bulk_header(out, 1 + e.payload.len() + 10);
        out.extend_from_slice(&[e.rdb_type]);
        out.extend_from_slice(&e.payload);
        out.extend_from_slice(&rdb::dump_footer(e.rdb_type, &e.payload, version));
        resp::write_bulk_end(out);
        if replace {
            resp::write_bulk(out, b"REPLACE");
        }
        if absttl && e.expire_ms.is_some() {
            resp::write_bulk(out, b"ABSTTL");
        }
        if let Some((name, v)) = meta {
            resp::write_bulk(out, name);
            resp::write_bulk_int(out, v as i64);
        }
        let rule = if replace {
            ResendRule::Strict
        } else {
            ResendRule::BusyKey
        };
        b.finish_cmd("RESTORE", e.key.clone(), 1, rule);
        Ok(())
    }

    async fn reencode_entry(&mut self, i: usize, e: Entry) -> Result<(), ApplyError> {
        let value = rdb::decode_value(e.rdb_type, &e.payload)?;
        let caps = self.caps;
        let key = e.key.clone();
        if !self.opts.overwrite {
            return self.reencode_new(i, e.db, key, value, e.expire_ms).await;
        }
        let b = self.batch_for(i, Some(e.db)).await?;
        // MULTI, DEL key, the value's commands, PEXPIREAT, EXEC: atomic, and idempotent if sent again.
        resp::encode_command(&mut b.bytes, &[b"MULTI"]);
        resp::encode_command(&mut b.bytes, &[b"DEL", &key]);
        let mut n = 2u32;
        n += write_value(b, &key, value, &caps)?;
        if let Some(ms) = e.expire_ms {
            let ms = ms.to_string();
            resp::encode_command(&mut b.bytes, &[b"PEXPIREAT", &key, ms.as_bytes()]);
            n += 1;
        }
        resp::encode_command(&mut b.bytes, &[b"EXEC"]);
        b.finish_cmd("MULTI(re-encoded value)", key, n + 1, ResendRule::Strict);
        Ok(())
    }

    /// The re-encode path without overwriting (`--on-conflict error`): the value is built under a temporary
    /// key and moved with `RENAMENX`, all in one transaction, so a key the target already holds is left
    /// alone and counted as a conflict (as `RESTORE` without `REPLACE` does with `BUSYKEY`).
    async fn reencode_new(
        &mut self,
        i: usize,
        db: u32,
        key: Bytes,
        value: rdb::Value,
        expire_ms: Option<i64>,
    ) -> Result<(), ApplyError> {
        let tmp = self.tmp_name(&key);
        let caps = self.caps;
        let b = self.batch_for(i, Some(db)).await?;
        let none = Bytes::new();
        b.push_tx("MULTI", &none, &[b"MULTI"], Tx::Multi);
        resp::encode_command(&mut b.bytes, &[b"DEL", &tmp]);
        let mut n = 1u32;
        n += write_value(b, &tmp, value, &caps)?;
        if let Some(ms) = expire_ms {
            let ms = ms.to_string();
            resp::encode_command(&mut b.bytes, &[b"PEXPIREAT", &tmp, ms.as_bytes()]);
            n += 1;
        }
        b.finish_tx_n(
            "re-encoded value",
            key.clone(),
            n,
            Tx::Queued,
            ResendRule::Strict,
        );
        resp::encode_command(&mut b.bytes, &[b"RENAMENX", &tmp, &key]);
        b.finish_tx("RENAMENX", key.clone(), Tx::Queued, ResendRule::RenameNx);
        b.push_tx("DEL", &tmp, &[b"DEL", &tmp], Tx::Queued);
        b.push_tx("EXEC", &none, &[b"EXEC"], Tx::Exec);
        Ok(())
    }

    async fn big_start(&mut self, mut h: BigHeader) -> Result<(), ApplyError> {
        let tmp = self.tmp_name(&h.key);
        let conn = self.pool.conn_for_key(&h.key);
        if !self.holds(&h.key) {
            // Another node's key: that node's applier writes it.
            self.big = Some(Big {
                header: h,
                tmp,
                conn,
                progress: Progress::default(),
                skip: true,
            });
            return Ok(());
        }
        let mapped = self.opts.dbs.target(h.db);
        let skip = mapped.is_none() || self.expired(h.expire_ms);
        if let Some(db) = mapped {
            h.db = db;
        }
        if mapped.is_none() {
            self.stats.keys_filtered.fetch_add(1, Ordering::Relaxed);
        } else if skip {
            self.stats
                .keys_expired_skipped
                .fetch_add(1, Ordering::Relaxed);
        } else {
            self.indexed(h.db, &h.key)?;
            // A leftover temporary key from an interrupted run must not leak into this value.
            let b = self.batch_for(conn, Some(h.db)).await?;
            b.push("DEL", &tmp, &[b"DEL", &tmp], ResendRule::Strict);
        }
        self.big = Some(Big {
            header: h,
            tmp,
            conn,
            progress: Progress::default(),
            skip,
        });
        Ok(())
    }

    async fn big_chunk(&mut self, c: rdb::Chunk) -> Result<(), ApplyError> {
        let Some(big) = self.big.as_mut() else {
            return Err(ApplyError::Unsupported(
                "RDB decoder yielded a chunk outside a big key".into(),
            ));
        };
        if big.skip {
            return Ok(());
        }
        let (conn, db, tmp) = (big.conn, big.header.db, big.tmp.clone());
        let mut progress = big.progress;
        let caps = self.caps;
        let b = self.batch_for(conn, Some(db)).await?;
        encode::write_chunk(b, &tmp, &c, &mut progress, &caps, Mode::Entries);
        if let Some(big) = self.big.as_mut() {
            big.progress = progress;
        }
        self.maybe_send(conn).await
    }

    async fn big_end(&mut self) -> Result<(), ApplyError> {
        let Some(big) = self.big.take() else {
            return Err(ApplyError::Unsupported(
                "RDB decoder ended a big key that never started".into(),
            ));
        };
        if big.skip {
            return Ok(());
        }
        let overwrite = self.opts.overwrite;
        let cluster = self.opts.shard.as_ref().is_some_and(|s| s.is_cluster());
        let b = self.batch_for(big.conn, Some(big.header.db)).await?;
        if let Some(ms) = big.header.expire_ms {
            encode::write_pexpireat(b, &big.tmp, ms);
        }
        let key = big.header.key.clone();
        if cluster {
            // In a transaction on a cluster node: a slot half migrated answers a two-key command
            // `TRYAGAIN` while its keys are split between the nodes, and a transaction (unlike a single
            // pipelined command, which later writes may overtake) is written again until the migration
            // is done (`target::redirect`).
            let none = Bytes::new();
            b.push_tx("MULTI", &none, &[b"MULTI"], Tx::Multi);
            if overwrite {
                resp::encode_command(&mut b.bytes, &[b"RENAME", &big.tmp, &key]);
                b.finish_tx("RENAME", key.clone(), Tx::Queued, ResendRule::NoSuchKey);
            } else {
                resp::encode_command(&mut b.bytes, &[b"RENAMENX", &big.tmp, &key]);
                b.finish_tx("RENAMENX", key.clone(), Tx::Queued, ResendRule::RenameNx);
                b.push_tx("DEL", &big.tmp, &[b"DEL", &big.tmp], Tx::Queued);
            }
            b.push_tx("EXEC", &none, &[b"EXEC"], Tx::Exec);
        } else if overwrite {
            b.push(
                "RENAME",
                &key,
                &[b"RENAME", &big.tmp, &key],
                ResendRule::NoSuchKey,
            );
        } else {
            // --on-conflict error: a key the target already holds is not replaced (a counted conflict), and
            // the temporary key does not stay behind.
            b.push(
                "RENAMENX",
                &key,
                &[b"RENAMENX", &big.tmp, &key],
                ResendRule::RenameNx,
            );
            b.push("DEL", &big.tmp, &[b"DEL", &big.tmp], ResendRule::Strict);
        }
        self.stats.big_keys.fetch_add(1, Ordering::Relaxed);
        self.stats.keys_reencoded.fetch_add(1, Ordering::Relaxed);
        self.stats.keys_applied.fetch_add(1, Ordering::Relaxed);
        self.maybe_send(big.conn).await
    }
}

/// The commands that build `value` under `key` inside a transaction; how many were written.
fn write_value(
    b: &mut Batch,
    key: &Bytes,
    value: rdb::Value,
    caps: &Caps,
) -> Result<u32, ApplyError> {
    let mut n = 0;
    match encode::value_chunks(value, caps.chunk) {
        Ok(chunks) => {
            let mut p = Progress::default();
            for c in &chunks {
                n += encode::write_chunk(b, key, c, &mut p, caps, Mode::InGroup);
            }
        }
        Err(other) => {
            n += super::encode::write_value_commands(b, key, &other, caps)?;
        }
    }
    Ok(n)
}

/// A module's name from its 64-bit id: 9 characters of 6 bits each, then a 10-bit encoding version
/// (`moduleTypeNameByID` in module.c).
pub fn module_name(id: u64) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut name = String::with_capacity(9);
    for i in 0..9 {
        let c = (id >> (64 - 6 * (i + 1))) & 63;
        name.push(CHARS[c as usize] as char);
    }
    format!("{name} (encoding version {})", id & 1023)
}

/// An empty list, set, sorted set or hash (small payloads only: a non-empty collection's payload is not
/// tiny, so big values are never decoded here).
fn is_empty_collection(e: &Entry) -> bool {
    use rdb::Value;
    match Kind::of(e.rdb_type) {
        Some(Kind::List | Kind::Set | Kind::ZSet | Kind::Hash) if e.payload.len() <= 16 => {
            match rdb::decode_value(e.rdb_type, &e.payload) {
                Ok(Value::List(v) | Value::Set(v)) => v.is_empty(),
                Ok(Value::ZSet(v)) => v.is_empty(),
                Ok(Value::Hash(v)) => v.is_empty(),
                _ => false,
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn module_names_from_ids() {
        // The librdb fixtures' module id 13108621717840686081 belongs to a module named "rdbtest-x"-like;
        // check the encoding with a constructed id instead: "ABCDEFGHI" version 5.
        let mut id: u64 = 0;
        for (i, c) in (0u64..9).enumerate() {
            id |= c << (64 - 6 * (i as u64 + 1));
        }
        id |= 5;
        assert_eq!(super::module_name(id), "ABCDEFGHI (encoding version 5)");
    }
}
