//! Writing an RDB stream: the records master mode's merged snapshot is made of (`rdbSave*` in rdb.c,
//! read, not copied).
//!
//! [`Encoder`] writes the framing itself — header, AUX fields, `SELECTDB`, expiry and LRU/LFU opcodes, a
//! key's type byte and name, functions, `EOF` and the CRC-64 trailer — and takes a value's serialized bytes
//! as the source wrote them ([`Encoder::raw`]): values are never re-encoded here. Every byte goes through
//! the running checksum on its way out, so the caller can send the pieces as they come (the size of the
//! whole is never needed: diskless `$EOF:` framing). Small records are gathered in one buffer; a big value
//! piece is handed on as the same `Bytes` (no copy).

use bytes::{BufMut, Bytes, BytesMut};

use super::crc64;
use super::Magic;

/// RDB opcodes (`RDB_OPCODE_*` in rdb.h).
mod op {
    pub const FUNCTION2: u8 = 245;
    pub const MODULE_AUX: u8 = 247;
    pub const IDLE: u8 = 248;
    pub const FREQ: u8 = 249;
    pub const AUX: u8 = 250;
    pub const RESIZEDB: u8 = 251;
    pub const EXPIRETIME_MS: u8 = 252;
    pub const SELECTDB: u8 = 254;
    pub const EOF: u8 = 255;
}

/// Pieces of an RDB stream with its running CRC-64.
pub struct Encoder {
    crc: crc64::Digest,
    /// Small records not yet handed out.
    small: BytesMut,
    /// Bytes written so far (header included).
    written: u64,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

/// Append `rdbSaveLen`'s encoding of `n`: 6 bits, 14 bits, or a 32/64-bit big-endian length.
pub fn put_len(out: &mut BytesMut, n: u64) {
    if n < 1 << 6 {
        out.put_u8(n as u8);
    } else if n < 1 << 14 {
        out.put_u8(0x40 | (n >> 8) as u8);
        out.put_u8(n as u8);
    } else if n <= u32::MAX as u64 {
        out.put_u8(0x80);
        out.put_u32(n as u32);
    } else {
        out.put_u8(0x81);
        out.put_u64(n);
    }
}

/// Append a string as `rdbSaveRawString` does without compression: its length, then its bytes.
pub fn put_string(out: &mut BytesMut, s: &[u8]) {
    put_len(out, s.len() as u64);
    out.put_slice(s);
}

/// Append a `SELECTDB`.
pub fn put_select_db(out: &mut BytesMut, db: u32) {
    out.put_u8(op::SELECTDB);
    put_len(out, db as u64);
}

/// Append what comes before a key's value: its expiry, LRU idle time, LFU frequency, type byte and name.
pub fn put_key_head(
    out: &mut BytesMut,
    expire_ms: Option<i64>,
    idle: Option<u64>,
    freq: Option<u8>,
    rdb_type: u8,
    key: &[u8],
) {
    if let Some(t) = expire_ms {
        out.put_u8(op::EXPIRETIME_MS);
        out.put_i64_le(t);
    }
    if let Some(i) = idle {
        out.put_u8(op::IDLE);
        put_len(out, i);
    }
    if let Some(f) = freq {
        out.put_u8(op::FREQ);
        out.put_u8(f);
    }
    out.put_u8(rdb_type);
    put_string(out, key);
}

impl Encoder {
    pub fn new() -> Encoder {
        Encoder {
            crc: crc64::digest(),
            small: BytesMut::with_capacity(4096),
            written: 0,
        }
    }

    /// Bytes written so far, including those not yet taken.
    pub fn written(&self) -> u64 {
        self.written + self.small.len() as u64
    }

    /// The magic and version: `REDIS0011`, or Valkey 9's `VALKEY080` (version 80 and up).
    pub fn header(&mut self, magic: Magic, version: u16) {
        let h = match magic {
            Magic::Redis => format!("REDIS{version:04}"),
            Magic::Valkey => format!("VALKEY{version:03}"),
        };
        self.small.put_slice(h.as_bytes());
    }

    /// An AUX field (`redis-ver`, `lua`, …).
    pub fn aux(&mut self, key: &[u8], value: &[u8]) {
        self.small.put_u8(op::AUX);
        put_string(&mut self.small, key);
        put_string(&mut self.small, value);
    }

    pub fn select_db(&mut self, db: u32) {
        put_select_db(&mut self.small, db);
    }

    /// The sizes hint of the db just selected.
    pub fn resize_db(&mut self, keys: u64, expires: u64) {
        self.small.put_u8(op::RESIZEDB);
        put_len(&mut self.small, keys);
        put_len(&mut self.small, expires);
    }

    /// A library of functions (Redis 7+), as `FUNCTION LOAD` takes it.
    pub fn function(&mut self, code: &[u8]) {
        self.small.put_u8(op::FUNCTION2);
        put_string(&mut self.small, code);
    }

    /// A module's global data: its id and the body as the source wrote it.
    pub fn module_aux(&mut self, module_id: u64, raw: &[u8]) {
        self.small.put_u8(op::MODULE_AUX);
        put_len(&mut self.small, module_id);
        self.small.put_slice(raw);
    }

    /// What comes before a key's value: its expiry, LRU idle time, LFU frequency, type byte and name.
    pub fn key_head(
        &mut self,
        expire_ms: Option<i64>,
        idle: Option<u64>,
        freq: Option<u8>,
        rdb_type: u8,
        key: &[u8],
    ) {
        put_key_head(&mut self.small, expire_ms, idle, freq, rdb_type, key);
    }

    /// Bytes the source wrote (a value, or a piece of one), passed on as they are. Small ones are copied
    /// into the pending buffer; a large one is returned with the pending bytes by the next [`Encoder::take`].
    pub fn raw(&mut self, bytes: Bytes, out: &mut Vec<Bytes>) {
        if bytes.len() <= 4096 {
            self.small.put_slice(&bytes);
            return;
        }
        self.take_into(out);
        self.crc.update(&bytes);
        self.written += bytes.len() as u64;
        out.push(bytes);
    }

    /// The `EOF` opcode and the CRC-64 of everything written, then the pending bytes.
    pub fn finish(&mut self, out: &mut Vec<Bytes>) {
        self.small.put_u8(op::EOF);
        self.crc.update(&self.small);
        let crc = self.crc.clone().finalize();
        self.written += self.small.len() as u64;
        let mut tail = self.small.split();
        tail.put_u64_le(crc);
        self.written += 8;
        out.push(tail.freeze());
    }

    /// Move the pending small records to `out` (when there are any).
    pub fn take_into(&mut self, out: &mut Vec<Bytes>) {
        if self.small.is_empty() {
            return;
        }
        self.crc.update(&self.small);
        self.written += self.small.len() as u64;
        out.push(self.small.split().freeze());
    }

    /// Bytes pending in the small-record buffer.
    pub fn pending(&self) -> usize {
        self.small.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rdb::{Decoder, DecoderOptions, Event};

    fn decode_all(data: &[u8]) -> Vec<Event> {
        let mut d = Decoder::new(DecoderOptions::default());
        let mut buf = BytesMut::from(data);
        let mut out = Vec::new();
        while let Some(ev) = d.decode(&mut buf).unwrap() {
            out.push(ev);
        }
        d.finish().unwrap();
        out
    }

    #[test]
    fn lengths_use_the_shortest_form() {
        for (n, want) in [
            (0u64, &[0x00][..]),
            (63, &[0x3f]),
            (64, &[0x40, 0x40]),
            (16383, &[0x7f, 0xff]),
            (16384, &[0x80, 0, 0, 0x40, 0]),
            (u32::MAX as u64, &[0x80, 0xff, 0xff, 0xff, 0xff]),
            (1 << 32, &[0x81, 0, 0, 0, 1, 0, 0, 0, 0]),
        ] {
            let mut b = BytesMut::new();
            put_len(&mut b, n);
            assert_eq!(&b[..], want, "{n}");
        }
    }

    #[test]
    fn what_it_writes_our_decoder_reads_back_with_a_valid_checksum() {
        let mut e = Encoder::new();
        let mut out = Vec::new();
        e.header(Magic::Redis, 11);
        e.aux(b"redis-ver", b"7.2.0");
        e.function(b"#!lua name=lib\nredis.register_function('f', function() return 1 end)");
        e.select_db(3);
        e.resize_db(2, 1);
        e.key_head(Some(1_900_000_000_000), Some(5), None, 0, b"k1");
        // A raw string value: length 300 then the bytes (a value the source wrote).
        let mut v = BytesMut::new();
        put_string(&mut v, &[b'x'; 300]);
        e.raw(v.freeze(), &mut out);
        e.select_db(0);
        e.key_head(None, None, Some(7), 0, b"k2");
        let mut big = BytesMut::new();
        put_string(&mut big, &vec![b'y'; 10_000]);
        let big = big.freeze();
        // A big value handed on in two pieces, the second one large (not copied).
        e.raw(big.slice(..100), &mut out);
        e.raw(big.slice(100..), &mut out);
        e.finish(&mut out);
        let data: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(e.written(), data.len() as u64);
        let ev = decode_all(&data);
        let entries: Vec<_> = ev
            .iter()
            .filter_map(|e| match e {
                Event::Entry(e) => Some((e.db, e.key.clone(), e.expire_ms, e.payload.len())),
                _ => None,
            })
            .collect();
        assert_eq!(
            entries,
            vec![
                (3, Bytes::from_static(b"k1"), Some(1_900_000_000_000), 302),
                (0, Bytes::from_static(b"k2"), None, 10_002),
            ]
        );
        assert!(ev.iter().any(|e| matches!(e, Event::Function { .. })));
        let Some(Event::End { checksum: Some(c) }) = ev.last() else {
            panic!("no checksum: {:?}", ev.last());
        };
        assert_ne!(*c, 0);
    }
}
