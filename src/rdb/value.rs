//! Whole-value decoding for the re-encode path (target older than the source, or no RESTORE), and the
//! per-item element extraction the decoder's big-value path shares with it.
//!
//! Every RDB value is `head` (some fixed fields and usually an element count), then `count` items of one
//! shape ([`Layout`]); streams and module values have their own structure. Items are decoded into the
//! same batches ([`Chunk`]) the decoder yields for big values, so both paths read elements one way.
use bytes::Bytes;

use super::encodings::{self, Elem};
use super::reader::{str_bytes, Cur, RStr, Stop, R};
use super::{types, Chunk, Kind, Magic, RdbError};

/// A stream entry ID.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StreamEntry {
    pub id: StreamId,
    pub fields: Vec<(Bytes, Bytes)>,
}

/// A pending (delivered, not acknowledged) entry of a consumer group.
#[derive(Clone, Debug, PartialEq)]
pub struct PendingEntry {
    pub id: StreamId,
    /// Unix ms of the last delivery.
    pub delivery_time: u64,
    pub delivery_count: u64,
    /// The consumer that owns it.
    pub consumer: Bytes,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StreamConsumer {
    pub name: Bytes,
    /// Unix ms the consumer was last seen.
    pub seen_time: u64,
    /// Unix ms of the consumer's last successful interaction (RDB 11+), if stored.
    pub active_time: Option<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StreamGroup {
    pub name: Bytes,
    pub last_id: StreamId,
    /// `entries_read` (RDB 10+), if stored.
    pub entries_read: Option<u64>,
    pub pel: Vec<PendingEntry>,
    pub consumers: Vec<StreamConsumer>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Stream {
    /// Live (not deleted) entries in ID order.
    pub entries: Vec<StreamEntry>,
    pub length: u64,
    pub last_id: StreamId,
    pub first_id: StreamId,
    pub max_deleted_entry_id: StreamId,
    pub entries_added: u64,
    pub groups: Vec<StreamGroup>,
}

/// A decoded value, independent of its encoding.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    String(Bytes),
    /// Head to tail.
    List(Vec<Bytes>),
    Set(Vec<Bytes>),
    ZSet(Vec<(Bytes, f64)>),
    /// Field, value, absolute per-field expiry in Unix ms (Redis 7.4+ / Valkey 9) if any.
    Hash(Vec<(Bytes, Bytes, Option<i64>)>),
    Stream(Box<Stream>),
    /// A module value: only its module id is known (the body needs the module itself).
    Module {
        module_id: u64,
    },
}

/// One field of a value's layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum P {
    /// An RDB string.
    Str,
    /// An RDB length.
    Len,
    /// A fixed number of bytes.
    F(usize),
    /// A double as a length-prefixed string (`RDB_TYPE_ZSET`).
    Dbl,
}

/// How a value other than a stream or module is laid out: `head`, then `count` items of `item`, where
/// `count` is the head's last length, or 1 when `counted` is false (one string: the value itself or a
/// compact blob).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    pub head: &'static [P],
    pub counted: bool,
    pub item: &'static [P],
}

/// Valkey 9 (`VALKEY080`) gives type 22 its own meaning: `RDB_TYPE_HASH_2`, a hash whose items carry a
/// per-field expiry (`field, value, i64 ms`, -1 for none). In Redis files 22 is `HASH_METADATA_PRE_GA`.
pub const VALKEY_HASH_2: u8 = 22;

/// The layout of a value type, or `None` for streams, modules and unknown types.
pub(crate) fn layout(t: u8, valkey: bool) -> Option<Layout> {
    use types::*;
    use P::*;
    const ONE_STR: Layout = Layout {
        head: &[],
        counted: false,
        item: &[Str],
    };
    let l = |head: &'static [P], item: &'static [P]| Layout {
        head,
        counted: true,
        item,
    };
    Some(match t {
        STRING => ONE_STR,
        LIST | SET | LIST_QUICKLIST => l(&[Len], &[Str]),
        ZSET => l(&[Len], &[Str, Dbl]),
        ZSET_2 => l(&[Len], &[Str, F(8)]),
        HASH => l(&[Len], &[Str, Str]),
        HASH_ZIPMAP | LIST_ZIPLIST | SET_INTSET | ZSET_ZIPLIST | HASH_ZIPLIST | HASH_LISTPACK
        | ZSET_LISTPACK | SET_LISTPACK => ONE_STR,
        LIST_QUICKLIST_2 => l(&[Len], &[Len, Str]),
        VALKEY_HASH_2 if valkey => l(&[Len], &[Str, Str, F(8)]),
        _ if valkey && t > VALKEY_HASH_2 => return None,
        HASH_METADATA_PRE_GA => l(&[Len], &[Len, Str, Str]),
        HASH_LISTPACK_EX_PRE_GA => ONE_STR,
        HASH_METADATA => l(&[F(8), Len], &[Len, Str, Str]),
        HASH_LISTPACK_EX => Layout {
            head: &[F(8)],
            counted: false,
            item: &[Str],
        },
        _ => return None,
    })
}

/// Whether `t` is a value type of a file with this magic.
pub(crate) fn known_type(t: u8, valkey: bool) -> bool {
    if valkey && t > VALKEY_HASH_2 && t <= types::HASH_LISTPACK_EX {
        return false;
    }
    Kind::of(t).is_some()
}

/// Read one field of a layout; returns the value of a length.
pub(crate) fn read_prim(c: &mut Cur, p: P) -> R<u64> {
    match p {
        P::Str => {
            c.string()?;
            Ok(0)
        }
        P::Len => c.len("length"),
        P::F(n) => {
            c.take(n as u64)?;
            Ok(0)
        }
        P::Dbl => {
            let start = c.pos;
            let n = c.u8()?;
            if n < 253 {
                c.take(n as u64)?;
            }
            let _ = start;
            Ok(0)
        }
    }
}

/// The head of a value: how many items follow, and the minimum field expiry hashes with field TTLs store.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Head {
    pub count: u64,
    pub min_expire: u64,
}

pub(crate) fn read_head(l: &Layout, c: &mut Cur) -> R<Head> {
    let mut h = Head {
        count: 1,
        min_expire: 0,
    };
    for &p in l.head {
        match p {
            P::F(8) => h.min_expire = c.u64_le()?,
            P::Len => h.count = c.len("element count")?,
            other => {
                read_prim(c, other)?;
            }
        }
    }
    Ok(h)
}

/// An empty batch for a kind with a chunk form.
pub(crate) fn empty_chunk(kind: Kind) -> Option<Chunk> {
    Some(match kind {
        Kind::String => Chunk::StringPart(Bytes::new()),
        Kind::List => Chunk::List(Vec::new()),
        Kind::Set => Chunk::Set(Vec::new()),
        Kind::ZSet => Chunk::ZSet(Vec::new()),
        Kind::Hash => Chunk::Hash(Vec::new()),
        Kind::Stream | Kind::Module => return None,
    })
}

pub(crate) fn chunk_len(c: &Chunk) -> usize {
    match c {
        Chunk::StringPart(b) => usize::from(!b.is_empty()),
        Chunk::List(v) | Chunk::Set(v) => v.len(),
        Chunk::ZSet(v) => v.len(),
        Chunk::Hash(v) => v.len(),
    }
}

/// Split off the first `n` elements of a batch.
pub(crate) fn chunk_split_front(c: &mut Chunk, n: usize) -> Chunk {
    fn front<T>(v: &mut Vec<T>, n: usize) -> Vec<T> {
        let rest = v.split_off(n.min(v.len()));
        std::mem::replace(v, rest)
    }
    match c {
        Chunk::StringPart(b) => Chunk::StringPart(std::mem::take(b)),
        Chunk::List(v) => Chunk::List(front(v, n)),
        Chunk::Set(v) => Chunk::Set(front(v, n)),
        Chunk::ZSet(v) => Chunk::ZSet(front(v, n)),
        Chunk::Hash(v) => Chunk::Hash(front(v, n)),
    }
}

fn elem_bytes(owner: &Bytes, e: Elem) -> Bytes {
    match e {
        // slice_ref needs a sub-slice of `owner`; an empty element may point anywhere.
        Elem::Str([]) => Bytes::new(),
        Elem::Str(s) => owner.slice_ref(s),
        Elem::Int(i) => Bytes::from(i.to_string()),
    }
}

fn elem_score(e: Elem, c: &Cur) -> R<f64> {
    match e {
        Elem::Int(i) => Ok(i as f64),
        Elem::Str(s) => std::str::from_utf8(s)
            .ok()
            .and_then(|t| t.parse::<f64>().ok())
            .ok_or_else(|| {
                c.corrupt(
                    "sorted set score",
                    format!("not a number: {:?}", String::from_utf8_lossy(s)),
                )
            }),
    }
}

/// The bytes of a blob string, as an owner its elements can be zero-copy slices of.
fn blob(owner: &Bytes, s: RStr, c: &Cur) -> R<Bytes> {
    Ok(str_bytes(owner, s, c.base)?)
}

fn wrong(c: &Cur, what: &'static str, detail: impl Into<String>) -> Stop {
    c.corrupt(what, detail)
}

/// Read one item of a value (per [`layout`]) from `c`, which reads `owner`, and append its elements to
/// `out` (a batch of the value's kind).
pub(crate) fn read_item(
    t: u8,
    valkey: bool,
    head: &Head,
    c: &mut Cur,
    owner: &Bytes,
    out: &mut Chunk,
) -> R<()> {
    use types::*;
    let item_at = c.pos;
    let base = c.base;
    let mismatch = || {
        Stop::Err(RdbError::Corrupt {
            what: "value",
            offset: base + item_at as u64,
            detail: "element batch of the wrong kind".into(),
        })
    };
    macro_rules! push {
        ($variant:ident, $v:expr) => {
            match &mut *out {
                Chunk::$variant(vec) => vec.push($v),
                _ => return Err(mismatch()),
            }
        };
    }
    let string = |c: &mut Cur| -> R<Bytes> {
        let s = c.string()?;
        Ok(str_bytes(owner, s, c.base)?)
    };
    match t {
        STRING => {
            let s = string(c)?;
            match &mut *out {
                Chunk::StringPart(b) => *b = s,
                _ => return Err(mismatch()),
            }
        }
        LIST | SET => {
            let s = string(c)?;
            if t == LIST {
                push!(List, s)
            } else {
                push!(Set, s)
            }
        }
        ZSET | ZSET_2 => {
            let m = string(c)?;
            let score_at = c.pos;
            let score = if t == ZSET {
                c.double_str()?
            } else {
                c.f64_le()?
            };
            if score.is_nan() {
                c.pos = score_at;
                return Err(c.corrupt("sorted set score", "NaN"));
            }
            push!(ZSet, (m, score))
        }
        HASH => {
            let f = string(c)?;
            let v = string(c)?;
            push!(Hash, (f, v, None))
        }
        VALKEY_HASH_2 if valkey => {
            let f = string(c)?;
            let v = string(c)?;
            let ms = c.i64_le()?;
            push!(Hash, (f, v, (ms != -1).then_some(ms)))
        }
        HASH_METADATA_PRE_GA | HASH_METADATA => {
            let ttl = c.len("hash field TTL")?;
            let f = string(c)?;
            let v = string(c)?;
            let at = if ttl == 0 {
                None
            } else if t == HASH_METADATA {
                Some(ttl.wrapping_add(head.min_expire).wrapping_sub(1))
            } else {
                Some(ttl)
            };
            // Redis refuses expiry times above 2^48-1 (EB_EXPIRE_TIME_MAX).
            if at.is_some_and(|a| a > 0x0000_FFFF_FFFF_FFFF) {
                c.pos = item_at;
                return Err(c.corrupt("hash field TTL", "expiry time out of range"));
            }
            push!(Hash, (f, v, at.map(|a| a as i64)))
        }
        LIST_QUICKLIST_2 => {
            let container = c.len("quicklist container")?;
            let s = c.string()?;
            let b = blob(owner, s, c)?;
            match container {
                1 => push!(List, b),
                2 => {
                    if b.is_empty() {
                        return Err(wrong(c, "quicklist", "empty node"));
                    }
                    let at = c.base + item_at as u64;
                    for e in encodings::listpack(&b, at)? {
                        push!(List, elem_bytes(&b, e));
                    }
                }
                n => return Err(wrong(c, "quicklist", format!("unknown container {n}"))),
            }
        }
        _ => {
            // One compact blob.
            let s = c.string()?;
            let b = blob(owner, s, c)?;
            let at = c.base + item_at as u64;
            match t {
                LIST_ZIPLIST | LIST_QUICKLIST => {
                    for e in encodings::ziplist(&b, at)? {
                        push!(List, elem_bytes(&b, e));
                    }
                }
                SET_INTSET => {
                    for i in encodings::intset(&b, at)? {
                        push!(Set, Bytes::from(i.to_string()));
                    }
                }
                SET_LISTPACK => {
                    for e in encodings::listpack(&b, at)? {
                        push!(Set, elem_bytes(&b, e));
                    }
                }
                ZSET_ZIPLIST | ZSET_LISTPACK => {
                    let els = if t == ZSET_ZIPLIST {
                        encodings::ziplist(&b, at)?
                    } else {
                        encodings::listpack(&b, at)?
                    };
                    if els.len() % 2 != 0 {
                        return Err(wrong(c, "sorted set", "odd number of elements"));
                    }
                    for p in els.chunks_exact(2) {
                        let score = elem_score(p[1], c)?;
                        push!(ZSet, (elem_bytes(&b, p[0]), score));
                    }
                }
                HASH_ZIPLIST | HASH_LISTPACK => {
                    let els = if t == HASH_ZIPLIST {
                        encodings::ziplist(&b, at)?
                    } else {
                        encodings::listpack(&b, at)?
                    };
                    if els.len() % 2 != 0 {
                        return Err(wrong(c, "hash", "odd number of elements"));
                    }
                    for p in els.chunks_exact(2) {
                        push!(Hash, (elem_bytes(&b, p[0]), elem_bytes(&b, p[1]), None));
                    }
                }
                HASH_LISTPACK_EX_PRE_GA | HASH_LISTPACK_EX => {
                    let els = encodings::listpack(&b, at)?;
                    if els.len() % 3 != 0 {
                        return Err(wrong(c, "hash", "listpack is not field/value/TTL triples"));
                    }
                    for p in els.chunks_exact(3) {
                        let ttl = match p[2] {
                            Elem::Int(0) => None,
                            Elem::Int(i) if i > 0 => Some(i),
                            _ => {
                                return Err(wrong(c, "hash", "field TTL is not a positive integer"))
                            }
                        };
                        push!(Hash, (elem_bytes(&b, p[0]), elem_bytes(&b, p[1]), ttl));
                    }
                }
                HASH_ZIPMAP => {
                    for (f, v) in encodings::zipmap(&b, at)? {
                        push!(
                            Hash,
                            (
                                elem_bytes(&b, Elem::Str(f)),
                                elem_bytes(&b, Elem::Str(v)),
                                None
                            )
                        );
                    }
                }
                _ => {
                    return Err(Stop::Err(RdbError::UnknownType {
                        byte: t,
                        offset: c.base + item_at as u64,
                    }))
                }
            }
        }
    }
    Ok(())
}

fn truncated(e: Stop, len: usize) -> RdbError {
    match e {
        Stop::Err(e) => e,
        Stop::Need(_) => RdbError::Corrupt {
            what: "value",
            offset: len as u64,
            detail: "the payload ends inside the value".into(),
        },
    }
}

/// Decode a whole value from its RDB type byte and serialized payload (as in [`super::Entry::payload`]).
///
/// Offsets in errors are relative to the payload. Type 22 means Redis' `HASH_METADATA_PRE_GA` in Redis
/// files and Valkey's `HASH_2` in `VALKEY080` files; without the file's magic the payload decides (the
/// layout that reads it exactly, Valkey's first). [`decode_value_for`] takes the magic.
pub fn decode_value(rdb_type: u8, payload: &[u8]) -> Result<Value, RdbError> {
    if rdb_type == VALKEY_HASH_2 {
        return match decode_value_for(Magic::Valkey, rdb_type, payload) {
            Ok(v) => Ok(v),
            Err(e) => decode_value_for(Magic::Redis, rdb_type, payload).map_err(|_| e),
        };
    }
    decode_value_for(Magic::Redis, rdb_type, payload)
}

/// [`decode_value`] for a value from a file with the given magic.
pub fn decode_value_for(magic: Magic, rdb_type: u8, payload: &[u8]) -> Result<Value, RdbError> {
    let owner = Bytes::copy_from_slice(payload);
    let valkey = magic == Magic::Valkey;
    let mut c = Cur::new(&owner, 0, 0);
    let v = decode_in(rdb_type, valkey, &mut c, &owner).map_err(|e| truncated(e, payload.len()))?;
    if !c.at_end() {
        return Err(RdbError::Corrupt {
            what: "value",
            offset: c.pos as u64,
            detail: format!("{} bytes after the value", payload.len() - c.pos),
        });
    }
    Ok(v)
}

fn decode_in(t: u8, valkey: bool, c: &mut Cur, owner: &Bytes) -> R<Value> {
    if !known_type(t, valkey) {
        return Err(Stop::Err(RdbError::UnknownType { byte: t, offset: 0 }));
    }
    match Kind::of(t) {
        Some(Kind::Stream) => return Ok(Value::Stream(Box::new(decode_stream(t, c, owner)?))),
        Some(Kind::Module) => {
            if t == types::MODULE_PRE_GA {
                return Err(c.corrupt(
                    "module value",
                    "pre-release module format (type 6) cannot be parsed",
                ));
            }
            let module_id = c.len("module id")?;
            skip_module_ops(c)?;
            return Ok(Value::Module { module_id });
        }
        _ => {}
    }
    let (Some(l), Some(kind)) = (layout(t, valkey), Kind::of(t)) else {
        return Err(Stop::Err(RdbError::UnknownType { byte: t, offset: 0 }));
    };
    let head = read_head(&l, c)?;
    let mut out = empty_chunk(kind).ok_or_else(|| c.corrupt("value", "no element form"))?;
    // A count can't exceed the bytes left (every item takes at least one byte): don't trust it further.
    let mut left = head.count;
    if left > (c.b.len() - c.pos.min(c.b.len())) as u64 {
        return Err(c.corrupt(
            "value",
            format!("{left} elements cannot fit in the payload"),
        ));
    }
    while left > 0 {
        read_item(t, valkey, &head, c, owner, &mut out)?;
        left -= 1;
    }
    Ok(match out {
        Chunk::StringPart(s) => Value::String(s),
        Chunk::List(v) => Value::List(v),
        Chunk::Set(v) => Value::Set(v),
        Chunk::ZSet(v) => Value::ZSet(v),
        Chunk::Hash(v) => Value::Hash(v),
    })
}

/// Walk a module value's (or module AUX's) annotated body to its `RDB_MODULE_OPCODE_EOF`, one opcode at a
/// time. Returns true at the end marker.
pub(crate) fn module_op(c: &mut Cur) -> R<bool> {
    let at = c.pos;
    match c.len("module opcode")? {
        0 => return Ok(true),
        1 | 2 => {
            c.len_enc()?;
        }
        3 => {
            c.take(4)?;
        }
        4 => {
            c.take(8)?;
        }
        5 => {
            c.string()?;
        }
        op => {
            c.pos = at;
            return Err(c.corrupt("module value", format!("unknown module opcode {op}")));
        }
    }
    Ok(false)
}

fn skip_module_ops(c: &mut Cur) -> R<()> {
    while !module_op(c)? {}
    Ok(())
}

/// Stream listpack flags (t_stream.c).
const FLAG_DELETED: i64 = 1;
const FLAG_SAMEFIELDS: i64 = 2;

fn decode_stream(t: u8, c: &mut Cur, owner: &Bytes) -> R<Stream> {
    let v = match t {
        types::STREAM_LISTPACKS => 1,
        types::STREAM_LISTPACKS_2 => 2,
        _ => 3,
    };
    let mut entries = Vec::new();
    let nodes = c.len("stream listpack count")?;
    for _ in 0..nodes {
        let key_at = c.pos;
        let key = c.string()?;
        let key = super::reader::str_cow(owner, key, c.base)?;
        if key.len() != 16 {
            c.pos = key_at;
            return Err(c.corrupt("stream", "node key is not a 128-bit stream ID"));
        }
        let master = StreamId {
            ms: u64::from_be_bytes(key[..8].try_into().unwrap_or_default()),
            seq: u64::from_be_bytes(key[8..].try_into().unwrap_or_default()),
        };
        let lp_at = c.pos;
        let s = c.string()?;
        let lp = blob(owner, s, c)?;
        let at = c.base + lp_at as u64;
        stream_node(&lp, at, master, &mut entries, c)?;
    }
    let length = c.len("stream length")?;
    let last_id = StreamId {
        ms: c.len("stream last ID")?,
        seq: c.len("stream last ID")?,
    };
    let (first_id, max_deleted_entry_id, entries_added) = if v >= 2 {
        let f = StreamId {
            ms: c.len("stream first ID")?,
            seq: c.len("stream first ID")?,
        };
        let m = StreamId {
            ms: c.len("stream max deleted ID")?,
            seq: c.len("stream max deleted ID")?,
        };
        (f, m, c.len("stream entries added")?)
    } else {
        let first: Option<&StreamEntry> = entries.first();
        (
            first.map(|e| e.id).unwrap_or_default(),
            StreamId::default(),
            length,
        )
    };
    let ngroups = c.len("stream group count")?;
    let mut groups = Vec::new();
    for _ in 0..ngroups {
        let name = c.string()?;
        let name = str_bytes(owner, name, c.base)?;
        let last_id = StreamId {
            ms: c.len("group last ID")?,
            seq: c.len("group last ID")?,
        };
        let entries_read = if v >= 2 {
            // -1 (SCG_INVALID_ENTRIES_READ) means unknown.
            Some(c.len("group entries read")?).filter(|&r| r != u64::MAX)
        } else {
            None
        };
        let npel = c.len("group PEL size")?;
        let mut pel: Vec<(StreamId, u64, u64, Option<Bytes>)> = Vec::new();
        for _ in 0..npel {
            let id = c.stream_id()?;
            let time = c.u64_le()?;
            let count = c.len("PEL delivery count")?;
            pel.push((id, time, count, None));
        }
        pel.sort_by_key(|p| p.0);
        let ncons = c.len("group consumer count")?;
        let mut consumers = Vec::new();
        for _ in 0..ncons {
            let cname = c.string()?;
            let cname = str_bytes(owner, cname, c.base)?;
            let seen_time = c.u64_le()?;
            let active_time = if v >= 3 { Some(c.u64_le()?) } else { None };
            let n = c.len("consumer PEL size")?;
            for _ in 0..n {
                let at = c.pos;
                let id = c.stream_id()?;
                match pel.binary_search_by_key(&id, |p| p.0) {
                    Ok(i) => pel[i].3 = Some(cname.clone()),
                    Err(_) => {
                        c.pos = at;
                        return Err(c.corrupt("stream", "consumer PEL entry not in the group PEL"));
                    }
                }
            }
            consumers.push(StreamConsumer {
                name: cname,
                seen_time,
                active_time,
            });
        }
        let mut out_pel = Vec::with_capacity(pel.len());
        for (id, delivery_time, delivery_count, consumer) in pel {
            let Some(consumer) = consumer else {
                return Err(c.corrupt(
                    "stream",
                    format!("PEL entry {}-{} has no consumer", id.ms, id.seq),
                ));
            };
            out_pel.push(PendingEntry {
                id,
                delivery_time,
                delivery_count,
                consumer,
            });
        }
        groups.push(StreamGroup {
            name,
            last_id,
            entries_read,
            pel: out_pel,
            consumers,
        });
    }
    Ok(Stream {
        entries,
        length,
        last_id,
        first_id,
        max_deleted_entry_id,
        entries_added,
        groups,
    })
}

/// The live entries of one stream listpack (the master entry, then entries delta-encoded against it).
fn stream_node(
    lp: &Bytes,
    at: u64,
    master: StreamId,
    out: &mut Vec<StreamEntry>,
    c: &Cur,
) -> R<()> {
    let els = encodings::listpack(lp, at)?;
    let bad = |d: &str| {
        Stop::Err(RdbError::Corrupt {
            what: "stream listpack",
            offset: at,
            detail: d.to_string(),
        })
    };
    let _ = c;
    let mut it = els.into_iter();
    let int = |it: &mut std::vec::IntoIter<Elem>| -> R<i64> {
        match it.next() {
            Some(e) => e.as_int().ok_or_else(|| bad("an integer was expected")),
            None => Err(bad("ends early")),
        }
    };
    let count = int(&mut it)?;
    let deleted = int(&mut it)?;
    let nfields = int(&mut it)?;
    if count < 0 || deleted < 0 || nfields < 0 {
        return Err(bad("negative count"));
    }
    let mut master_fields = Vec::new();
    for _ in 0..nfields {
        match it.next() {
            Some(e) => master_fields.push(elem_bytes(lp, e)),
            None => return Err(bad("ends inside the master fields")),
        }
    }
    if int(&mut it)? != 0 {
        return Err(bad("master entry not terminated by 0"));
    }
    for _ in 0..(count as u64 + deleted as u64) {
        let flags = int(&mut it)?;
        let ms = int(&mut it)?;
        let seq = int(&mut it)?;
        let id = StreamId {
            ms: master.ms.wrapping_add(ms as u64),
            seq: master.seq.wrapping_add(seq as u64),
        };
        let mut fields = Vec::new();
        if flags & FLAG_SAMEFIELDS != 0 {
            for f in &master_fields {
                let v = it.next().ok_or_else(|| bad("ends inside an entry"))?;
                fields.push((f.clone(), elem_bytes(lp, v)));
            }
        } else {
            let n = int(&mut it)?;
            if n < 0 {
                return Err(bad("negative field count"));
            }
            for _ in 0..n {
                let f = it.next().ok_or_else(|| bad("ends inside an entry"))?;
                let v = it.next().ok_or_else(|| bad("ends inside an entry"))?;
                fields.push((elem_bytes(lp, f), elem_bytes(lp, v)));
            }
        }
        let _lp_count = int(&mut it)?;
        if flags & FLAG_DELETED == 0 {
            out.push(StreamEntry { id, fields });
        }
    }
    if it.next().is_some() {
        return Err(bad("elements after the last entry"));
    }
    Ok(())
}
