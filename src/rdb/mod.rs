//! RDB: the streaming decoder, value decoding, and DUMP-payload framing.
//!
//! The specification is Redis' and Valkey's `src/rdb.h`, `src/rdb.c`, `src/ziplist.c`, `src/listpack.c`,
//! `src/intset.c`, `src/t_stream.c` (read, not copied).
//!
//! # Shape
//! [`Decoder`] is a push-fed state machine in the shape of a tokio codec: the caller appends bytes as they
//! arrive to a `BytesMut` and calls [`Decoder::decode`], which consumes what it could parse and returns
//! `Ok(Some(event))`, or `Ok(None)` when it needs more bytes ([`Decoder::needed`] says how many at least, so a
//! caller does not retry on every small chunk). Any split of the input gives the same events.
//!
//! A key's value is yielded whole as [`Event::Entry`] with its raw serialized bytes (zero-copy slices of the
//! input) when it is at most [`DecoderOptions::max_entry_bytes`]; a larger value is yielded as
//! [`Event::BigStart`], a series of [`Event::BigChunk`] with bounded element batches, and [`Event::BigEnd`],
//! so memory stays bounded by configuration whatever the key size.

pub mod crc64;
mod decoder;
pub mod encoder;
pub mod encodings;
pub mod lzf;
mod reader;
mod scan;
mod value;

pub use decoder::{Decoder, DecoderOptions};
pub use encoder::Encoder;
pub use value::{
    decode_value, decode_value_for, PendingEntry, Stream, StreamConsumer, StreamEntry, StreamGroup,
    StreamId, Value, VALKEY_HASH_2,
};

use bytes::Bytes;

/// RDB value type bytes (`RDB_TYPE_*` in rdb.h).
pub mod types {
    pub const STRING: u8 = 0;
    pub const LIST: u8 = 1;
    pub const SET: u8 = 2;
    pub const ZSET: u8 = 3;
    pub const HASH: u8 = 4;
    pub const ZSET_2: u8 = 5;
    pub const MODULE_PRE_GA: u8 = 6;
    pub const MODULE_2: u8 = 7;
    pub const HASH_ZIPMAP: u8 = 9;
    pub const LIST_ZIPLIST: u8 = 10;
    pub const SET_INTSET: u8 = 11;
    pub const ZSET_ZIPLIST: u8 = 12;
    pub const HASH_ZIPLIST: u8 = 13;
    pub const LIST_QUICKLIST: u8 = 14;
    pub const STREAM_LISTPACKS: u8 = 15;
    pub const HASH_LISTPACK: u8 = 16;
    pub const ZSET_LISTPACK: u8 = 17;
    pub const LIST_QUICKLIST_2: u8 = 18;
    pub const STREAM_LISTPACKS_2: u8 = 19;
    pub const SET_LISTPACK: u8 = 20;
    pub const STREAM_LISTPACKS_3: u8 = 21;
    pub const HASH_METADATA_PRE_GA: u8 = 22;
    pub const HASH_LISTPACK_EX_PRE_GA: u8 = 23;
    pub const HASH_METADATA: u8 = 24;
    pub const HASH_LISTPACK_EX: u8 = 25;
}

/// What kind of Redis value a type byte holds, independent of its encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    String,
    List,
    Set,
    ZSet,
    Hash,
    Stream,
    Module,
}

impl Kind {
    /// The kind of an RDB type byte, or `None` for a type this decoder does not know.
    pub fn of(rdb_type: u8) -> Option<Kind> {
        use types::*;
        Some(match rdb_type {
            STRING => Kind::String,
            LIST | LIST_ZIPLIST | LIST_QUICKLIST | LIST_QUICKLIST_2 => Kind::List,
            SET | SET_INTSET | SET_LISTPACK => Kind::Set,
            ZSET | ZSET_2 | ZSET_ZIPLIST | ZSET_LISTPACK => Kind::ZSet,
            HASH
            | HASH_ZIPMAP
            | HASH_ZIPLIST
            | HASH_LISTPACK
            | HASH_METADATA_PRE_GA
            | HASH_LISTPACK_EX_PRE_GA
            | HASH_METADATA
            | HASH_LISTPACK_EX => Kind::Hash,
            STREAM_LISTPACKS | STREAM_LISTPACKS_2 | STREAM_LISTPACKS_3 => Kind::Stream,
            MODULE_PRE_GA | MODULE_2 => Kind::Module,
            _ => return None,
        })
    }
}

/// The file's magic: `REDIS` + 4 digits, or Valkey 9's `VALKEY` + 3 digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Magic {
    Redis,
    Valkey,
}

/// One key with its whole value.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Database number (from the last SELECTDB; 0 before any).
    pub db: u32,
    pub key: Bytes,
    /// Absolute expiry in Unix milliseconds, if the key has one.
    pub expire_ms: Option<i64>,
    /// LRU idle time in seconds (`RDB_OPCODE_IDLE`), if present.
    pub idle: Option<u64>,
    /// LFU frequency (`RDB_OPCODE_FREQ`), if present.
    pub freq: Option<u8>,
    /// The RDB type byte of the value.
    pub rdb_type: u8,
    /// The value's serialized bytes exactly as in the file, after the key (the type byte is not included).
    /// `type byte + payload + rdb version + CRC64` is a DUMP payload that RESTORE accepts.
    pub payload: Bytes,
}

/// The head of a value too big to hold: its elements follow in [`Event::BigChunk`]s.
#[derive(Clone, Debug, PartialEq)]
pub struct BigHeader {
    pub db: u32,
    pub key: Bytes,
    pub expire_ms: Option<i64>,
    pub rdb_type: u8,
    pub kind: Kind,
}

/// A bounded batch of a big value's elements, in the order the file holds them.
#[derive(Clone, Debug, PartialEq)]
pub enum Chunk {
    /// A piece of a string value (concatenate in order).
    StringPart(Bytes),
    /// List elements, head to tail.
    List(Vec<Bytes>),
    /// Set members.
    Set(Vec<Bytes>),
    /// Sorted-set members with scores.
    ZSet(Vec<(Bytes, f64)>),
    /// Hash fields and values, with an absolute per-field expiry in ms (Redis 7.4+ / Valkey 9), if any.
    Hash(Vec<(Bytes, Bytes, Option<i64>)>),
}

/// What the decoder yields.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The first event: file format version. For Valkey's `VALKEY080` header `version` is 80.
    Header {
        magic: Magic,
        version: u16,
    },
    /// An AUX field (`redis-ver`, `repl-id`, `repl-offset`, `lua` scripts, ...).
    Aux {
        key: Bytes,
        value: Bytes,
    },
    SelectDb(u32),
    ResizeDb {
        db_size: u64,
        expires_size: u64,
    },
    /// `RDB_OPCODE_SLOT_INFO` (Redis 7.4+ cluster files).
    SlotInfo {
        slot: u64,
        slot_size: u64,
        expires_slot_size: u64,
    },
    /// `RDB_OPCODE_MODULE_AUX`: module id and the raw bytes of its body (carried, not interpreted).
    ModuleAux {
        module_id: u64,
        raw: Bytes,
    },
    /// `RDB_OPCODE_FUNCTION2` (or the pre-GA `FUNCTION`): the library source, for `FUNCTION LOAD`.
    Function {
        code: Bytes,
    },
    /// A whole key.
    Entry(Entry),
    /// A big key begins.
    BigStart(BigHeader),
    /// The next elements of the big key.
    BigChunk(Chunk),
    /// The next bytes of the big key's value exactly as the file holds them (only with
    /// [`DecoderOptions::raw_big`], instead of `BigChunk`s): `BigStart`'s type byte and key, then these
    /// pieces in order, are the entry as the file wrote it.
    BigRaw(Bytes),
    /// The big key is complete.
    BigEnd,
    /// `RDB_OPCODE_EOF` reached and the checksum, when non-zero, verified. `checksum` is the file's value
    /// (`None` for versions < 5 which have none, `Some(0)` when checksumming was disabled).
    End {
        checksum: Option<u64>,
    },
}

/// Why the decoder stopped. Every variant names the byte offset in the input where the problem is.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum RdbError {
    #[error("not an RDB file at offset 0: expected REDISnnnn or VALKEYnnn magic, found {found:?}")]
    BadMagic { found: String },
    #[error("unsupported RDB version {version} at offset {offset}")]
    UnsupportedVersion { version: u32, offset: u64 },
    #[error("unknown RDB opcode or value type 0x{byte:02x} at offset {offset}")]
    UnknownType { byte: u8, offset: u64 },
    #[error("unknown {what} encoding 0x{byte:02x} at offset {offset}")]
    UnknownEncoding {
        what: &'static str,
        byte: u8,
        offset: u64,
    },
    #[error("corrupt {what} at offset {offset}: {detail}")]
    Corrupt {
        what: &'static str,
        offset: u64,
        detail: String,
    },
    #[error("RDB checksum mismatch at offset {offset}: file says {expected:016x}, computed {computed:016x}")]
    Checksum {
        offset: u64,
        expected: u64,
        computed: u64,
    },
    #[error("RDB truncated at offset {offset}: input ended inside {inside}")]
    Truncated { offset: u64, inside: &'static str },
    #[error("data after the RDB EOF marker at offset {offset}")]
    TrailingData { offset: u64 },
    /// `len` is how far the value was walked when it went past the limit: the same for any split of the
    /// input, and a lower bound of its size.
    #[error(
        "element of at least {len} bytes at offset {offset} exceeds the limit of {limit} bytes"
    )]
    TooLarge { len: u64, offset: u64, limit: u64 },
}

/// The 10-byte footer that makes `type byte + payload` a DUMP payload: the RDB version (u16 LE) and the
/// CRC-64 (u64 LE) of everything before it, as `createDumpPayload` in cluster.c writes it.
pub fn dump_footer(rdb_type: u8, payload: &[u8], version: u16) -> [u8; 10] {
    let mut d = crc64::digest();
    d.update(&[rdb_type]);
    d.update(payload);
    let v = version.to_le_bytes();
    d.update(&v);
    let crc = d.finalize().to_le_bytes();
    let mut out = [0u8; 10];
    out[..2].copy_from_slice(&v);
    out[2..].copy_from_slice(&crc);
    out
}

#[cfg(test)]
mod tests;
