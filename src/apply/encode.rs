//! Native commands for decoded values: the re-encode path (older targets) and big-key chunks.
//!
//! Every function appends complete commands to a [`Batch`] and records them, so reply checking knows what
//! each reply belongs to. Element lists are cut into commands of at most `chunk` elements, well below any
//! server's argument limits.

use bytes::Bytes;

use crate::rdb::Chunk;
use crate::resp;
use crate::target::pool::{Batch, ResendRule};

/// What the target can do, for choosing commands.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    /// `HSET key f v f v …` (4.0+); `HMSET` otherwise.
    pub multi_hset: bool,
    /// `HPEXPIREAT` (Redis 7.4+, Valkey 9+).
    pub field_expiry: bool,
    /// `XSETID … ENTRIESADDED … MAXDELETEDID`, `XGROUP CREATE … ENTRIESREAD` (7.0+).
    pub stream_meta: bool,
    /// `XGROUP CREATECONSUMER` (6.2+).
    pub create_consumer: bool,
    /// Elements per command.
    pub chunk: usize,
}

/// Guarded append for list chunks: pushes only when the list has the expected length, so a chunk sent
/// again after a reconnect is not appended twice.
pub const LIST_APPEND_SCRIPT: &[u8] = b"local n = redis.call('LLEN', KEYS[1]) \
if n == tonumber(ARGV[1]) then return redis.call('RPUSH', KEYS[1], unpack(ARGV, 2)) end return n";

/// Format a score so that it parses back to the same double (shortest round-trip form; `inf`/`-inf`).
pub fn fmt_score(f: f64, out: &mut Vec<u8>) {
    out.clear();
    if f.is_infinite() {
        out.extend_from_slice(if f > 0.0 { b"inf" } else { b"-inf" });
    } else {
        use std::io::Write;
        let _ = write!(out, "{f:?}");
    }
}

/// How a chunk's commands are recorded in the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Each command is its own entry (big keys under a temporary name). List appends are guarded so a
    /// resend after a reconnect does not append twice; all other chunk commands are idempotent.
    Entries,
    /// Commands are part of a MULTI…EXEC group the caller records as one entry (whole values).
    InGroup,
}

/// Where a value being built stands, across chunks.
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    /// List length so far (for the guarded append).
    pub list_len: u64,
    /// String bytes so far (SETRANGE offset).
    pub str_off: u64,
}

struct Out<'a> {
    batch: &'a mut Batch,
    key: &'a Bytes,
    mode: Mode,
    written: u32,
}

impl Out<'_> {
    fn done(&mut self, name: &'static str) {
        self.written += 1;
        if self.mode == Mode::Entries {
            self.batch
                .finish_cmd(name, self.key.clone(), 1, ResendRule::Strict);
        }
    }
    fn cmd(&mut self, name: &'static str, args: &[&[u8]]) {
        resp::encode_command(&mut self.batch.bytes, args);
        self.done(name);
    }
}

/// Append the commands that add `chunk` to `key`; returns how many commands were written.
pub fn write_chunk(
    batch: &mut Batch,
    key: &Bytes,
    chunk: &Chunk,
    p: &mut Progress,
    caps: &Caps,
    mode: Mode,
) -> u32 {
    let per = caps.chunk.max(1);
    let mut o = Out {
        batch,
        key,
        mode,
        written: 0,
    };
    let mut score = Vec::with_capacity(32);
    match chunk {
        Chunk::StringPart(part) => {
            if p.str_off == 0 && mode == Mode::InGroup {
                o.cmd("SET", &[b"SET", key, part]);
            } else {
                let off = p.str_off.to_string();
                o.cmd("SETRANGE", &[b"SETRANGE", key, off.as_bytes(), part]);
            }
            p.str_off += part.len() as u64;
        }
        Chunk::List(items) => {
            for part in items.chunks(per) {
                let b = &mut o.batch.bytes;
                if mode == Mode::Entries {
                    let expected = p.list_len.to_string();
                    resp::write_array_header(b, 5 + part.len());
                    resp::write_bulk(b, b"EVAL");
                    resp::write_bulk(b, LIST_APPEND_SCRIPT);
                    resp::write_bulk(b, b"1");
                    resp::write_bulk(b, key);
                    resp::write_bulk(b, expected.as_bytes());
                } else {
                    resp::write_array_header(b, 2 + part.len());
                    resp::write_bulk(b, b"RPUSH");
                    resp::write_bulk(b, key);
                }
                for e in part {
                    resp::write_bulk(b, e);
                }
                o.done(if mode == Mode::Entries {
                    "EVAL(list append)"
                } else {
                    "RPUSH"
                });
                p.list_len += part.len() as u64;
            }
        }
        Chunk::Set(items) => {
            for part in items.chunks(per) {
                let b = &mut o.batch.bytes;
                resp::write_array_header(b, 2 + part.len());
                resp::write_bulk(b, b"SADD");
                resp::write_bulk(b, key);
                for e in part {
                    resp::write_bulk(b, e);
                }
                o.done("SADD");
            }
        }
        Chunk::ZSet(items) => {
            for part in items.chunks(per) {
                let b = &mut o.batch.bytes;
                resp::write_array_header(b, 2 + 2 * part.len());
                resp::write_bulk(b, b"ZADD");
                resp::write_bulk(b, key);
                for (m, s) in part {
                    fmt_score(*s, &mut score);
                    resp::write_bulk(b, &score);
                    resp::write_bulk(b, m);
                }
                o.done("ZADD");
            }
        }
        Chunk::Hash(items) => {
            let name: &'static str = if caps.multi_hset { "HSET" } else { "HMSET" };
            for part in items.chunks(per) {
                let b = &mut o.batch.bytes;
                resp::write_array_header(b, 2 + 2 * part.len());
                resp::write_bulk(b, name.as_bytes());
                resp::write_bulk(b, key);
                for (f, v, _) in part {
                    resp::write_bulk(b, f);
                    resp::write_bulk(b, v);
                }
                o.done(name);
                if caps.field_expiry {
                    for (f, _, exp) in part {
                        if let Some(ms) = exp {
                            let ms = ms.to_string();
                            o.cmd(
                                "HPEXPIREAT",
                                &[b"HPEXPIREAT", key, ms.as_bytes(), b"FIELDS", b"1", f],
                            );
                        }
                    }
                }
            }
        }
    }
    o.written
}

/// `PEXPIREAT key ms`.
pub fn write_pexpireat(batch: &mut Batch, key: &Bytes, ms: i64) {
    let ms = ms.to_string();
    batch.push(
        "PEXPIREAT",
        key,
        &[b"PEXPIREAT", key, ms.as_bytes()],
        ResendRule::Strict,
    );
}

/// Split a whole decoded value into the chunks a big value would have produced, so one writer serves both
/// paths. Streams and modules have no chunk form and are refused here.
pub fn value_chunks(value: crate::rdb::Value, per: usize) -> Result<Vec<Chunk>, crate::rdb::Value> {
    use crate::rdb::Value;
    let per = per.max(1);
    Ok(match value {
        Value::String(s) => vec![Chunk::StringPart(s)],
        Value::List(v) => v.chunks(per).map(|c| Chunk::List(c.to_vec())).collect(),
        Value::Set(v) => v.chunks(per).map(|c| Chunk::Set(c.to_vec())).collect(),
        Value::ZSet(v) => v.chunks(per).map(|c| Chunk::ZSet(c.to_vec())).collect(),
        Value::Hash(v) => v.chunks(per).map(|c| Chunk::Hash(c.to_vec())).collect(),
        other => return Err(other),
    })
}

/// Native commands for values without a chunk form (streams); returns how many commands were written.
/// Used inside a MULTI…EXEC group. Module values cannot be re-encoded: they need RESTORE and the module.
pub fn write_value_commands(
    batch: &mut Batch,
    key: &Bytes,
    value: &crate::rdb::Value,
    caps: &Caps,
) -> Result<u32, super::ApplyError> {
    use crate::rdb::Value;
    match value {
        Value::Stream(s) => Ok(write_stream(batch, key, s, caps)),
        Value::Module { module_id } => Err(super::ApplyError::Unsupported(format!(
            "key {}: a module value (module id {module_id:#x}) cannot be re-encoded for an older target; \
             it needs RESTORE on a target with the same module",
            crate::target::pool::escape_key(key)
        ))),
        _ => Err(super::ApplyError::Unsupported("value has a chunk form".into())),
    }
}

fn id_str(id: &crate::rdb::StreamId) -> String {
    format!("{}-{}", id.ms, id.seq)
}

/// XADD every entry with its own ID, then the stream's metadata (XSETID), its groups (XGROUP CREATE),
/// consumers (XGROUP CREATECONSUMER) and pending entries (XCLAIM … FORCE JUSTID with the original delivery
/// time and count).
fn write_stream(batch: &mut Batch, key: &Bytes, s: &crate::rdb::Stream, caps: &Caps) -> u32 {
    let mut n = 0;
    let b = &mut batch.bytes;
    for e in &s.entries {
        let id = id_str(&e.id);
        resp::write_array_header(b, 3 + 2 * e.fields.len());
        resp::write_bulk(b, b"XADD");
        resp::write_bulk(b, key);
        resp::write_bulk(b, id.as_bytes());
        for (f, v) in &e.fields {
            resp::write_bulk(b, f);
            resp::write_bulk(b, v);
        }
        n += 1;
    }
    let last = id_str(&s.last_id);
    if s.entries.is_empty() {
        // A stream whose entries were all deleted still exists: create it empty at its last ID.
        resp::encode_command(
            b,
            &[b"XADD", key, b"MAXLEN", b"0", last.as_bytes(), b"f", b"v"],
        );
        n += 1;
    }
    if caps.stream_meta {
        let added = s.entries_added.to_string();
        let maxdel = id_str(&s.max_deleted_entry_id);
        resp::encode_command(
            b,
            &[
                b"XSETID",
                key,
                last.as_bytes(),
                b"ENTRIESADDED",
                added.as_bytes(),
                b"MAXDELETEDID",
                maxdel.as_bytes(),
            ],
        );
    } else {
        resp::encode_command(b, &[b"XSETID", key, last.as_bytes()]);
    }
    n += 1;
    for g in &s.groups {
        let gid = id_str(&g.last_id);
        match (caps.stream_meta, g.entries_read) {
            (true, Some(read)) => {
                let read = read.to_string();
                resp::encode_command(
                    b,
                    &[
                        b"XGROUP",
                        b"CREATE",
                        key,
                        &g.name,
                        gid.as_bytes(),
                        b"ENTRIESREAD",
                        read.as_bytes(),
                    ],
                );
            }
            _ => resp::encode_command(b, &[b"XGROUP", b"CREATE", key, &g.name, gid.as_bytes()]),
        }
        n += 1;
        if caps.create_consumer {
            for c in &g.consumers {
                resp::encode_command(b, &[b"XGROUP", b"CREATECONSUMER", key, &g.name, &c.name]);
                n += 1;
            }
        }
        for p in &g.pel {
            let id = id_str(&p.id);
            let time = p.delivery_time.to_string();
            let count = p.delivery_count.to_string();
            resp::encode_command(
                b,
                &[
                    b"XCLAIM",
                    key,
                    &g.name,
                    &p.consumer,
                    b"0",
                    id.as_bytes(),
                    b"TIME",
                    time.as_bytes(),
                    b"RETRYCOUNT",
                    count.as_bytes(),
                    b"FORCE",
                    b"JUSTID",
                ],
            );
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_round_trip() {
        let mut out = Vec::new();
        for f in [
            0.0,
            -0.0,
            1.5,
            0.1,
            1e300,
            -2.5e-300,
            f64::MAX,
            f64::MIN_POSITIVE,
            3.0,
        ] {
            fmt_score(f, &mut out);
            let back: f64 = std::str::from_utf8(&out).unwrap().parse().unwrap();
            assert_eq!(back.to_bits(), f.to_bits(), "{f}");
        }
        fmt_score(f64::INFINITY, &mut out);
        assert_eq!(out, b"inf");
        fmt_score(f64::NEG_INFINITY, &mut out);
        assert_eq!(out, b"-inf");
    }
}
