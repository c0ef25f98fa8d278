//! One source's records (from its spool) turned into what the merger writes: RDB pieces of the merged
//! snapshot, then batches of stream commands with the source offset each batch ends at.
//!
//! The feed decides per command what the target gets, so the merger only frames and orders:
//! - `SELECT` is dropped: each command carries its target db, and the merger selects when it changes.
//! - `PING` and `REPLCONF` (the master's own keep-alives and `GETACK`s) are dropped; a `GETACK` makes the
//!   link acknowledge at once.
//! - Commands of a db that is not synced are dropped, the others keep their exact bytes.
//! - `MULTI` … `EXEC` stays one batch: the merger never puts another source's commands inside it. The
//!   source's own `MULTI` and `EXEC` are dropped: the merger wraps every write round in its own transaction
//!   (with each source's checkpoint), and transactions do not nest.
//! - Keys ferry owns are never copied: its heartbeat key in the source, and the in-target checkpoint keys
//!   of this job's sources (a chain's upstream ferry may have written same-named keys).
//! - What cannot be applied exactly to a target that holds other sources' keys too (`FLUSHALL`, `FLUSHDB`,
//!   `SWAPDB` with more than one source) or with a db mapping (`MOVE`, `COPY … DB`, `SWAPDB`) asks for a new
//!   merged full sync ([`Piece::Restart`]) or stops the job ([`Piece::Fatal`]).

use bytes::{Bytes, BytesMut};

use crate::apply::DbMap;
use crate::rdb::{Event, Magic};
use crate::resp::Command;

/// What a source hands the merger.
#[derive(Debug)]
pub enum Piece {
    /// The source's RDB header: the merged snapshot starts once every source's is known.
    Header {
        magic: Magic,
        version: u16,
    },
    /// A `lua` AUX field (scripts of servers before 7.0).
    Script(Bytes),
    /// A library of functions.
    Function(Bytes),
    ModuleAux {
        module_id: u64,
        raw: Bytes,
    },
    /// Whole keys framed as RDB records (expiry, type, name, value as the source wrote it), the first in
    /// `first_db` (the merger selects it), later ones preceded by their own `SELECTDB` when the db changes;
    /// the last in `last_db`.
    Framed {
        first_db: u32,
        last_db: u32,
        bytes: Bytes,
        keys: u64,
    },
    /// A whole key, already in its target db.
    Entry {
        db: u32,
        entry: crate::rdb::Entry,
    },
    /// A big key begins; `Raw` pieces follow up to `BigEnd` (the merger writes nothing else meanwhile).
    BigStart {
        db: u32,
        head: crate::rdb::BigHeader,
    },
    Raw(Bytes),
    BigEnd,
    /// The source's snapshot is complete; it covers the source's stream of replication id `replid` up to
    /// `offset`.
    RdbEnd {
        offset: i64,
        replid: String,
    },
    /// The source's replication id changed (a `+CONTINUE <new id>` after its failover): its checkpoints
    /// name this one from now on.
    Replid(String),
    /// Stream commands, each with its target db, after which the source stands at `end_offset`. May be empty
    /// (only dropped commands): the offset still moves.
    Commands {
        cmds: Vec<(u32, Command)>,
        end_offset: i64,
        /// The source db the stream is in at `end_offset` (recorded in the checkpoint: a resumed stream may
        /// not begin with a `SELECT`).
        src_db: u32,
    },
    /// The source reached its `--once` goal; nothing follows.
    Done,
    /// The merged copy cannot stay exact without a new merged full sync (reason for the log).
    Restart(String),
    /// The job cannot go on (message for the operator).
    Fatal(String),
}

impl Piece {
    /// Bytes this piece holds (for the byte bound between a source and the merger).
    pub fn size(&self) -> usize {
        match self {
            Piece::Entry { entry, .. } => entry.payload.len() + entry.key.len(),
            Piece::Framed { bytes, .. } => bytes.len(),
            Piece::Raw(b) | Piece::Script(b) | Piece::Function(b) => b.len(),
            Piece::ModuleAux { raw, .. } => raw.len(),
            Piece::Commands { cmds, .. } => cmds.iter().map(|(_, c)| c.len()).sum(),
            _ => 0,
        }
    }
}

/// What happens to one stream command.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Written to the target, in this db.
    Apply(u32),
    /// Not written (it still moves the source offset).
    Drop,
    /// A `REPLCONF GETACK`: not written; acknowledge at once.
    GetAck,
    /// A new merged full sync is needed.
    Restart(String),
    /// Cannot be applied exactly.
    Fatal(String),
}

/// Keys ferry owns, never copied from a source.
#[derive(Debug, Default, Clone)]
pub struct Skip {
    /// The heartbeat key ferry writes into the source (db 0).
    pub heartbeat: Option<Bytes>,
    /// The target db of the in-target checkpoint keys, and their names.
    pub own_db: u32,
    pub own: Vec<Bytes>,
}

impl Skip {
    /// Whether a key of source db `src_db`, written to target db `db`, is one of ferry's.
    pub fn skips(&self, src_db: u32, db: u32, key: &[u8]) -> bool {
        (src_db == 0 && self.heartbeat.as_deref() == Some(key))
            || (db == self.own_db && self.own.iter().any(|k| &k[..] == key))
    }
}

/// The stream side of a source: current db, transaction state, and what it skips.
#[derive(Debug)]
pub struct StreamFilter {
    /// The source's current db (from its `SELECT`s).
    pub db: u32,
    dbs: DbMap,
    /// Other sources write the same target: a flush or swap of this one's dbs cannot be forwarded.
    shared_target: bool,
    skip: std::sync::Arc<Skip>,
    label: String,
}

impl StreamFilter {
    pub fn new(dbs: DbMap, shared_target: bool, skip: std::sync::Arc<Skip>, label: String) -> Self {
        StreamFilter {
            db: 0,
            dbs,
            shared_target,
            skip,
            label,
        }
    }

    /// Start in source db `db` (a stream resumed from a checkpoint).
    pub fn in_db(mut self, db: u32) -> Self {
        self.db = db;
        self
    }

    /// Decide what `cmd` becomes (and follow `SELECT`). No allocation but for the messages of the rare
    /// verdicts.
    pub fn verdict(&mut self, cmd: &Command) -> Verdict {
        let is = |n: &[u8]| cmd.name_eq_ignore_case(n);
        if is(b"SELECT") {
            return match cmd
                .get(1)
                .and_then(|a| std::str::from_utf8(a).ok())
                .and_then(|s| s.parse().ok())
            {
                Some(db) => {
                    self.db = db;
                    Verdict::Drop
                }
                None => Verdict::Fatal(format!(
                    "{}: the stream has a SELECT without a valid db number",
                    self.label
                )),
            };
        }
        if is(b"PING") {
            return Verdict::Drop;
        }
        if is(b"REPLCONF") {
            return if cmd
                .get(1)
                .is_some_and(|a| a.eq_ignore_ascii_case(b"GETACK"))
            {
                Verdict::GetAck
            } else {
                Verdict::Drop
            };
        }
        let Some(db) = self.dbs.target(self.db) else {
            return Verdict::Drop;
        };
        if cmd.get(1).is_some_and(|k| self.skip.skips(self.db, db, k)) {
            return Verdict::Drop;
        }
        let shown = || String::from_utf8_lossy(cmd.arg(0)).to_ascii_uppercase();
        let (flushall, flushdb, swapdb) = (is(b"FLUSHALL"), is(b"FLUSHDB"), is(b"SWAPDB"));
        if self.shared_target && (flushall || flushdb || swapdb) {
            return Verdict::Restart(format!(
                "{}: {} on this source, whose target holds other sources' keys too: the target is filled \
                 again from every source with a new merged full sync (nothing of the other sources is lost)",
                self.label,
                shown()
            ));
        }
        if !self.dbs.is_identity() && (flushall || swapdb) {
            return Verdict::Restart(format!(
                "{}: {} with a db selection or mapping (--db/--map-db): the target is filled again with a new \
                 merged full sync",
                self.label,
                shown()
            ));
        }
        if !self.dbs.is_identity() && (is(b"MOVE") || is(b"COPY")) {
            return Verdict::Fatal(format!(
                "{}: {} names a db, and this job maps or selects dbs (--db/--map-db): master mode forwards \
                 commands as they are and cannot rewrite it; use --apply commands",
                self.label,
                shown()
            ));
        }
        Verdict::Apply(db)
    }
}

/// Turns one source's stream bytes into [`Piece::Commands`] batches, keeping a transaction in one batch.
pub struct StreamBatcher {
    pub filter: StreamFilter,
    decoder: crate::resp::CommandDecoder,
    buf: BytesMut,
    /// Source offset of the last byte decoded.
    pub offset: i64,
    batch: Vec<(u32, Command)>,
    batch_bytes: usize,
    /// Inside `MULTI`: the batch is not cut until `EXEC`/`DISCARD`.
    in_tx: bool,
    /// A `GETACK` was seen since the last call.
    pub getack: bool,
}

/// Bytes of commands per batch (a transaction may make one bigger).
pub const BATCH_BYTES: usize = 64 << 10;

impl StreamBatcher {
    pub fn new(filter: StreamFilter, offset: i64) -> Self {
        StreamBatcher {
            filter,
            decoder: crate::resp::CommandDecoder::new(),
            buf: BytesMut::new(),
            offset,
            batch: Vec::new(),
            batch_bytes: 0,
            in_tx: false,
            getack: false,
        }
    }

    /// Feed stream bytes; returns the pieces they complete (batches, or a restart/fatal verdict, after which
    /// nothing more is decoded). A batch ends where the bytes end unless a transaction is open.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Piece>, String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            let cmd = match self.decoder.decode_frozen(&mut self.buf) {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    return Err(format!(
                        "{}: the replication stream is not valid RESP after offset {}: {e}",
                        self.filter.label, self.offset
                    ))
                }
            };
            self.offset += cmd.len() as i64;
            // The source's transaction stays in one batch; its MULTI/EXEC are not written (the merger's own
            // transaction holds the batch whole). Recognised before any db filter: a master sends EXEC in
            // whatever db the transaction ended in, which may be one that is not synced.
            let verdict = if cmd.name_eq_ignore_case(b"MULTI") {
                self.in_tx = true;
                Verdict::Drop
            } else if cmd.name_eq_ignore_case(b"EXEC") || cmd.name_eq_ignore_case(b"DISCARD") {
                self.in_tx = false;
                Verdict::Drop
            } else {
                self.filter.verdict(&cmd)
            };
            match verdict {
                Verdict::Apply(db) => {
                    self.batch_bytes += cmd.len();
                    self.batch.push((db, cmd));
                }
                Verdict::Drop => {}
                Verdict::GetAck => self.getack = true,
                Verdict::Restart(why) => {
                    out.push(Piece::Restart(why));
                    return Ok(out);
                }
                Verdict::Fatal(why) => {
                    out.push(Piece::Fatal(why));
                    return Ok(out);
                }
            }
            if !self.in_tx && self.batch_bytes >= BATCH_BYTES {
                out.push(self.cut());
            }
        }
        if !self.in_tx && (!self.batch.is_empty() || self.buf.is_empty()) {
            out.push(self.cut());
        }
        Ok(out)
    }

    /// Whether a transaction is open or bytes of a command are pending (the offset is not at a command
    /// boundary the merger may stop at).
    pub fn mid_command(&self) -> bool {
        self.in_tx || !self.buf.is_empty()
    }

    fn cut(&mut self) -> Piece {
        self.batch_bytes = 0;
        Piece::Commands {
            cmds: std::mem::take(&mut self.batch),
            end_offset: self.offset,
            src_db: self.filter.db,
        }
    }
}

/// What a snapshot event becomes (`None`: nothing for the merger). `now_ms` decides which keys already
/// expired (skipped, counted by the caller).
pub fn rdb_piece(
    ev: Event,
    dbs: &DbMap,
    db_of_big: &mut Option<u32>,
    skip: &Skip,
    now_ms: i64,
) -> Option<Result<Piece, Skipped>> {
    Some(Ok(match ev {
        Event::Header { magic, version } => Piece::Header { magic, version },
        Event::Aux { key, value } if &key[..] == b"lua" => Piece::Script(value),
        Event::Aux { .. }
        | Event::SelectDb(_)
        | Event::ResizeDb { .. }
        | Event::SlotInfo { .. } => return None,
        Event::ModuleAux { module_id, raw } => Piece::ModuleAux { module_id, raw },
        Event::Function { code } => Piece::Function(code),
        Event::Entry(e) => {
            let db = dbs.target(e.db)?;
            if skip.skips(e.db, db, &e.key) {
                return None;
            }
            if e.expire_ms.is_some_and(|t| t <= now_ms) {
                return Some(Err(Skipped::Expired));
            }
            Piece::Entry { db, entry: e }
        }
        Event::BigStart(h) => {
            // A big key already expired is still forwarded: its bytes are on their way, and the target's
            // own expiry removes it (it is a master again at the end; a replica hides it from reads).
            let db = dbs.target(h.db);
            *db_of_big = db;
            Piece::BigStart { db: db?, head: h }
        }
        Event::BigRaw(b) => {
            db_of_big.as_ref()?;
            Piece::Raw(b)
        }
        Event::BigEnd => {
            db_of_big.take()?;
            Piece::BigEnd
        }
        Event::BigChunk(_) => {
            return Some(Ok(Piece::Fatal(
                "internal: the snapshot decoder yielded decoded chunks in master mode".into(),
            )))
        }
        Event::End { .. } => return None,
    }))
}

/// Whole keys of one source framed into RDB records in its own buffer: the feed does this work (one task
/// per source, so in parallel), the merger only selects the first db and writes the bytes. Each batch is a
/// new allocation holding exactly its keys, so nothing pins the decoder's input buffers.
#[derive(Default)]
pub struct Framer {
    out: BytesMut,
    first_db: Option<u32>,
    db: Option<u32>,
    keys: u64,
}

impl Framer {
    pub fn entry(&mut self, db: u32, e: &crate::rdb::Entry) {
        if self.db != Some(db) {
            if self.first_db.is_none() {
                self.first_db = Some(db);
            } else {
                crate::rdb::encoder::put_select_db(&mut self.out, db);
            }
            self.db = Some(db);
        }
        if self.out.capacity() == 0 {
            // A fresh allocation per piece, sized for it: freed as soon as the piece is written.
            self.out = BytesMut::with_capacity(FRAME_BYTES + (64 << 10));
        }
        crate::rdb::encoder::put_key_head(
            &mut self.out,
            e.expire_ms,
            e.idle,
            e.freq,
            e.rdb_type,
            &e.key,
        );
        self.out.extend_from_slice(&e.payload);
        self.keys += 1;
    }

    /// Bytes framed so far.
    pub fn len(&self) -> usize {
        self.out.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys == 0
    }

    /// The framed keys as one piece (`None` when there are none).
    pub fn take(&mut self) -> Option<Piece> {
        let (Some(first_db), Some(last_db)) = (self.first_db, self.db) else {
            return None;
        };
        let p = Piece::Framed {
            first_db,
            last_db,
            bytes: std::mem::take(&mut self.out).freeze(),
            keys: self.keys,
        };
        self.first_db = None;
        self.db = None;
        self.keys = 0;
        Some(p)
    }
}

/// Bytes of framed keys per piece.
pub const FRAME_BYTES: usize = 256 << 10;

/// Why a snapshot key was not forwarded.
#[derive(Debug, PartialEq, Eq)]
pub enum Skipped {
    Expired,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(args: &[&str]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
        out
    }

    fn none() -> std::sync::Arc<Skip> {
        Default::default()
    }

    fn batches(pieces: &[Piece]) -> Vec<(Vec<(u32, String)>, i64)> {
        pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Commands {
                    cmds, end_offset, ..
                } => Some((
                    cmds.iter()
                        .map(|(db, c)| (*db, String::from_utf8_lossy(c.arg(0)).into_owned()))
                        .collect(),
                    *end_offset,
                )),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn selects_and_keepalives_are_dropped_and_each_command_carries_its_db() {
        let dbs = DbMap::parse(&[], &["2:0".into()]).unwrap();
        let mut b = StreamBatcher::new(StreamFilter::new(dbs, false, none(), "s".into()), 100);
        let mut input = Vec::new();
        for c in [
            cmd(&["SELECT", "2"]),
            cmd(&["SET", "a", "1"]),
            cmd(&["PING"]),
            cmd(&["SELECT", "5"]),
            cmd(&["INCR", "b"]),
            cmd(&["REPLCONF", "GETACK", "*"]),
        ] {
            input.extend_from_slice(&c);
        }
        let total = input.len() as i64;
        let out = b.push(&input).unwrap();
        assert_eq!(
            batches(&out),
            vec![(vec![(0, "SET".into()), (5, "INCR".into())], 100 + total)]
        );
        assert!(b.getack);
    }

    #[test]
    fn a_transaction_is_never_cut_and_a_partial_command_waits() {
        let mut b = StreamBatcher::new(
            StreamFilter::new(DbMap::default(), false, none(), "s".into()),
            0,
        );
        let multi = cmd(&["MULTI"]);
        let set = cmd(&["SET", "k", "v"]);
        let exec = cmd(&["EXEC"]);
        let out = b.push(&multi).unwrap();
        assert!(batches(&out).is_empty(), "no batch while MULTI is open");
        // Half of SET: nothing, and the offset stays at the boundary.
        let out = b.push(&set[..5]).unwrap();
        assert!(batches(&out).is_empty());
        assert!(b.mid_command());
        let out = b.push(&set[5..]).unwrap();
        assert!(batches(&out).is_empty());
        let out = b.push(&exec).unwrap();
        let n = (multi.len() + set.len() + exec.len()) as i64;
        assert_eq!(
            batches(&out),
            vec![(
                // The source's MULTI/EXEC are not forwarded: the merger's transaction holds the batch.
                vec![(0, "SET".into())],
                n
            )]
        );
        assert!(!b.mid_command());
    }

    #[test]
    fn a_transaction_ending_in_a_db_not_synced_still_closes() {
        let dbs = DbMap::parse(&["0".into()], &[]).unwrap();
        let mut b = StreamBatcher::new(StreamFilter::new(dbs, false, none(), "s".into()), 0);
        let mut input = Vec::new();
        for c in [
            cmd(&["MULTI"]),
            cmd(&["SET", "a", "1"]),
            cmd(&["SELECT", "5"]),
            cmd(&["SET", "b", "1"]),
            cmd(&["EXEC"]),
        ] {
            input.extend_from_slice(&c);
        }
        let out = b.push(&input).unwrap();
        assert_eq!(
            batches(&out),
            vec![(vec![(0, "SET".into())], input.len() as i64)]
        );
        assert!(!b.mid_command(), "the transaction is closed");
    }

    #[test]
    fn a_flush_with_other_sources_on_the_target_asks_for_a_new_full_sync() {
        let mut b = StreamBatcher::new(
            StreamFilter::new(DbMap::default(), true, none(), "s".into()),
            0,
        );
        let mut input = cmd(&["SET", "a", "1"]);
        input.extend_from_slice(&cmd(&["FLUSHDB"]));
        let out = b.push(&input).unwrap();
        assert!(matches!(out.last(), Some(Piece::Restart(m)) if m.contains("FLUSHDB")));
        // Alone on its target, a flush is forwarded.
        let mut b = StreamBatcher::new(
            StreamFilter::new(DbMap::default(), false, none(), "s".into()),
            0,
        );
        let out = b.push(&cmd(&["FLUSHALL"])).unwrap();
        assert_eq!(batches(&out), vec![(vec![(0, "FLUSHALL".into())], 18)]);
    }

    #[test]
    fn the_heartbeat_key_and_unsynced_dbs_are_not_copied() {
        let dbs = DbMap::parse(&["0".into()], &[]).unwrap();
        let mut b = StreamBatcher::new(
            StreamFilter::new(
                dbs,
                false,
                std::sync::Arc::new(Skip {
                    heartbeat: Some(Bytes::from_static(b"hb")),
                    own_db: 0,
                    own: vec![Bytes::from_static(b"ferry:checkpoint:x")],
                }),
                "s".into(),
            ),
            0,
        );
        let mut input = cmd(&["SET", "hb", "1"]);
        input.extend_from_slice(&cmd(&["SET", "ferry:checkpoint:x", "1"]));
        input.extend_from_slice(&cmd(&["SET", "x", "1"]));
        input.extend_from_slice(&cmd(&["SELECT", "1"]));
        input.extend_from_slice(&cmd(&["SET", "y", "1"]));
        let out = b.push(&input).unwrap();
        assert_eq!(batches(&out)[0].0, vec![(0, "SET".into())]);
        let Some(Piece::Commands { src_db, .. }) = out.last() else {
            panic!("a batch")
        };
        assert_eq!(*src_db, 1, "the batch records the source db it ends in");
    }
}
