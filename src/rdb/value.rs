//! Whole-value decoding for the re-encode path (target older than the source, or no RESTORE).
//!
//! Placeholder body: the types are the contract the apply layer is written against.
use super::RdbError;
use bytes::Bytes;

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

/// Decode a whole value from its RDB type byte and serialized payload (as in [`super::Entry::payload`]).
pub fn decode_value(_rdb_type: u8, _payload: &[u8]) -> Result<Value, RdbError> {
    Err(RdbError::Corrupt {
        what: "value",
        offset: 0,
        detail: "not implemented".into(),
    })
}
