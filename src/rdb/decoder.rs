//! The push-fed RDB decoder: a state machine over a growing `BytesMut`.
//!
//! Nothing of a key is consumed until its whole value is in the buffer (then the entry is split off
//! zero-copy), unless the value is bigger than [`DecoderOptions::max_entry_bytes`]: then the type byte
//! and key are consumed with a [`Event::BigStart`] and the value is read and consumed item by item. Every
//! consumed byte goes through the running CRC-64 that the trailer is checked against.

use bytes::{Bytes, BytesMut};

use super::reader::{str_bytes, Cur, LenEnc, RStr, Stop, R};
use super::scan::Scan;
use super::value::{
    chunk_len, chunk_split_front, empty_chunk, known_type, layout, read_head, read_item, read_prim,
    Head, Layout,
};
use super::{crc64, lzf, BigHeader, Chunk, Entry, Event, Kind, Magic, RdbError};

/// Limits and checks of a [`Decoder`].
#[derive(Clone, Debug)]
pub struct DecoderOptions {
    /// A value whose serialized size is above this is yielded as `BigStart`/`BigChunk`/`BigEnd` rather than
    /// one `Entry`; also the most a chunk of elements holds in bytes (beyond single elements) and the size
    /// of the pieces a big string is cut into (at most 1 MiB).
    pub max_entry_bytes: usize,
    /// Elements per `BigChunk`.
    pub chunk_elements: usize,
    /// Check the trailer's CRC-64 (when the file has a non-zero one).
    pub verify_checksum: bool,
    /// Streams, module values and module AUX data have no chunk form: they are yielded whole however big,
    /// up to this many bytes; a bigger one is refused with [`RdbError::TooLarge`].
    pub max_unchunked_bytes: usize,
    /// A big value is yielded as the bytes the file holds ([`Event::BigRaw`] pieces between `BigStart`
    /// and `BigEnd`) instead of decoded element batches: for a writer that forwards values as they are
    /// (master mode's merged RDB). Pieces are at most `max_entry_bytes` (1 MiB at most), except that one
    /// element of a collection is never split.
    pub raw_big: bool,
}

impl Default for DecoderOptions {
    fn default() -> Self {
        DecoderOptions {
            max_entry_bytes: 16 << 20,
            chunk_elements: 1024,
            verify_checksum: true,
            max_unchunked_bytes: 512 << 20,
            raw_big: false,
        }
    }
}

/// Per-key attributes set by opcodes before the key.
#[derive(Clone, Copy, Debug, Default)]
struct Meta {
    expire_ms: Option<i64>,
    idle: Option<u64>,
    freq: Option<u8>,
}

/// A key whose value is being walked (nothing of it consumed yet).
#[derive(Debug)]
struct Pending {
    rdb_type: u8,
    key: RStr,
    /// Index in the buffer where the value starts (after the type byte and key).
    value_start: usize,
    scan: Scan,
    meta: Meta,
}

/// A module AUX field being walked.
#[derive(Debug)]
struct AuxPending {
    module_id: u64,
    body_start: usize,
    scan: Scan,
}

#[derive(Debug)]
enum BigPhase {
    Head,
    Items { head: Head, left: u64 },
    StrHead,
    StrRaw { left: u64 },
    StrLzf(Box<lzf::Stream>),
    Flush,
}

/// Where a big value forwarded as raw bytes stands.
#[derive(Debug)]
enum RawBig {
    /// A string's length header (or LZF header) comes next.
    StrHead,
    /// This many bytes of the string's body are left.
    StrBody(u64),
    /// A collection walked item by item; the walk's position is an index into the buffer.
    Walk(Scan),
    /// Every byte went out: `BigEnd` is next.
    End,
}

/// A big value being read and consumed item by item.
#[derive(Debug)]
struct Big {
    rdb_type: u8,
    layout: Layout,
    phase: BigPhase,
    batch: Chunk,
    batch_bytes: usize,
}

#[derive(Debug)]
enum State {
    Magic,
    Top,
    Value(Box<Pending>),
    ModuleAux(Box<AuxPending>),
    /// Valkey's SLOT_IMPORT record, walked range by range: `left` ranges from buffer index `pos` (nothing
    /// of the record consumed until it is whole).
    SlotImport {
        left: u64,
        pos: usize,
    },
    Big(Box<Big>),
    /// A big value forwarded as its bytes (`DecoderOptions::raw_big`).
    RawBig(RawBig),
    Checksum,
    Done,
}

/// Whether a value being walked is bigger than its limit, decided the same way however the input was
/// split: by its first bytes up to `cut` (the buffer index the limit ends at) alone. `r` is the walk's
/// result on the whole buffer and `pos` where it stands; `before` the walk as it was before that run
/// (never past `cut`: it had stopped for more input within it). Returns the index of the end of the first
/// read that goes past `cut` (the value is at least that long), or `None` when the value ends within the
/// limit or is corrupt within it, or more input is needed to tell.
///
/// An error or the value's end found past `cut` in one buffer must give the same answer as a walk fed in
/// pieces, which stops for more input somewhere past `cut` first (and goes big, or refuses the value as
/// too large, there): the walk is re-run on the buffer cut at `cut` to find where.
fn beyond(r: &R<()>, pos: usize, before: Scan, cut: usize, buf: &[u8], base: u64) -> Option<usize> {
    let end = match r {
        Ok(()) => pos,
        Err(Stop::Need(n)) => *n,
        Err(Stop::Err(_)) => pos,
    };
    if end <= cut && !matches!(r, Err(Stop::Err(_))) {
        return None;
    }
    if buf.len() <= cut {
        // The whole buffer is within the limit: the run was the walk of the first bytes itself.
        return match r {
            Err(Stop::Need(n)) if *n > cut => Some(*n),
            _ => None,
        };
    }
    let mut s = before;
    match s.run(&buf[..cut], base) {
        Err(Stop::Need(n)) => Some(n),
        _ => None,
    }
}

/// The streaming RDB decoder. See the module docs of [`crate::rdb`].
pub struct Decoder {
    opts: DecoderOptions,
    state: State,
    /// Input offset of the first byte of the caller's buffer (everything before was consumed).
    offset: u64,
    crc: crc64::Digest,
    version: u16,
    magic: Magic,
    db: u32,
    meta: Meta,
    /// What [`Decoder::needed`] reports: 0 after an event (nothing was tried since), else the length the
    /// last attempt stopped for. Never more than a buffer needs for the next event or error: a caller that
    /// waits for this many bytes must see the same events as one that calls after every byte.
    need: usize,
    failed: Option<RdbError>,
}

const SMALL: &str = "REDIS";
const VALKEY: &str = "VALKEY";

impl Decoder {
    pub fn new(opts: DecoderOptions) -> Self {
        Decoder {
            opts,
            state: State::Magic,
            offset: 0,
            crc: crc64::digest(),
            version: 0,
            magic: Magic::Redis,
            db: 0,
            meta: Meta::default(),
            need: 0,
            failed: None,
        }
    }

    /// The file's RDB version (after the header was decoded).
    pub fn version(&self) -> u16 {
        self.version
    }

    /// The file's magic (after the header was decoded).
    pub fn magic(&self) -> Magic {
        self.magic
    }

    /// Input bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Decode the next event from `buf`, consuming the bytes it covers. `Ok(None)`: more input is needed
    /// (at least [`Decoder::needed`] bytes in `buf` in total). After an error every call returns it again.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, RdbError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.step(buf) {
            Ok(Some(ev)) => {
                // The next event may need no more input at all (a big value's next batch, its BigEnd),
                // so no more can be asked for before the decoder has tried.
                self.need = 0;
                Ok(Some(ev))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    /// The input is complete: an error unless the RDB ended (at its EOF marker and checksum).
    pub fn finish(&self) -> Result<(), RdbError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let inside = match &self.state {
            State::Done => return Ok(()),
            State::Magic => "the header",
            State::Top => "the data before the EOF marker",
            State::Value(_) => "a key's value",
            State::ModuleAux(_) => "a module AUX field",
            State::SlotImport { .. } => "a SLOT_IMPORT record",
            State::Big(_) | State::RawBig(_) => "a big key's value",
            State::Checksum => "the checksum",
        };
        Err(RdbError::Truncated {
            offset: self.offset,
            inside,
        })
    }

    /// How many bytes the buffer must hold before calling [`Decoder::decode`] again is worth it: a call
    /// with fewer returns `Ok(None)` again, whatever the bytes. 0 after an event: call again until
    /// `Ok(None)`, since what is already buffered (or nothing) may complete the next one.
    pub fn needed(&self) -> usize {
        self.need
    }

    fn consume(&mut self, buf: &mut BytesMut, n: usize) -> Bytes {
        let b = buf.split_to(n).freeze();
        self.crc.update(&b);
        self.offset += n as u64;
        b
    }

    fn limit_for(&self, kind: Kind) -> usize {
        match kind {
            Kind::Stream | Kind::Module => self.opts.max_unchunked_bytes,
            _ => self.opts.max_entry_bytes,
        }
    }

    /// Run the state machine until an event, a need for more input, or an error.
    fn step(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, RdbError> {
        loop {
            let r = match self.state {
                State::Magic => self.magic_step(buf),
                State::Top => self.top_step(buf),
                State::Value(_) => self.value_step(buf),
                State::ModuleAux(_) => self.aux_step(buf),
                State::SlotImport { .. } => self.slot_import_step(buf),
                State::Big(_) => self.big_step(buf),
                State::RawBig(_) => self.raw_big_step(buf),
                State::Checksum => self.checksum_step(buf),
                State::Done => {
                    if buf.is_empty() {
                        self.need = 1;
                        return Ok(None);
                    }
                    return Err(RdbError::TrailingData {
                        offset: self.offset,
                    });
                }
            };
            match r {
                Ok(Some(ev)) => return Ok(Some(ev)),
                Ok(None) => continue,
                Err(Stop::Need(n)) => {
                    self.need = n.max(buf.len() + 1);
                    return Ok(None);
                }
                Err(Stop::Err(e)) => return Err(e),
            }
        }
    }

    fn magic_step(&mut self, buf: &mut BytesMut) -> R<Option<Event>> {
        let have = &buf[..buf.len().min(9)];
        let prefix_ok = |m: &str| {
            let n = have.len().min(m.len());
            have[..n] == m.as_bytes()[..n]
        };
        let bad = || {
            Stop::Err(RdbError::BadMagic {
                found: String::from_utf8_lossy(have).into_owned(),
            })
        };
        if !prefix_ok(SMALL) && !prefix_ok(VALKEY) {
            // Quote up to the first byte no magic has there, so the text is the same for any split.
            let common = |m: &str| {
                have.iter()
                    .zip(m.as_bytes())
                    .take_while(|(a, b)| a == b)
                    .count()
            };
            let n = (common(SMALL).max(common(VALKEY)) + 1).min(have.len());
            return Err(Stop::Err(RdbError::BadMagic {
                found: String::from_utf8_lossy(&have[..n]).into_owned(),
            }));
        }
        if have.len() < 9 {
            // The digits are only looked at once all are in, but every byte of the magic word can
            // already be the wrong one: ask for one more byte until the whole word is there.
            let word = if have.starts_with(SMALL.as_bytes()) {
                SMALL.len()
            } else if have.starts_with(VALKEY.as_bytes()) {
                VALKEY.len()
            } else {
                have.len() + 1
            };
            return Err(Stop::Need(if have.len() < word {
                have.len() + 1
            } else {
                9
            }));
        }
        let (magic, digits) = if have.starts_with(SMALL.as_bytes()) {
            (Magic::Redis, &have[5..])
        } else {
            (Magic::Valkey, &have[6..])
        };
        let version: u32 = match std::str::from_utf8(digits)
            .ok()
            .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse().ok())
        {
            Some(v) => v,
            None => return Err(bad()),
        };
        let ok = match magic {
            Magic::Redis => (1..=12).contains(&version),
            Magic::Valkey => version == 80,
        };
        if !ok {
            return Err(Stop::Err(RdbError::UnsupportedVersion {
                version,
                offset: if magic == Magic::Redis { 5 } else { 6 },
            }));
        }
        self.consume(buf, 9);
        self.magic = magic;
        self.version = version as u16;
        self.state = State::Top;
        Ok(Some(Event::Header {
            magic,
            version: version as u16,
        }))
    }

    fn top_step(&mut self, buf: &mut BytesMut) -> R<Option<Event>> {
        let base = self.offset;
        let mut c = Cur::new(&buf[..], 0, base);
        let op = c.u8()?;
        let valkey = self.magic == Magic::Valkey;
        let ev = match op {
            0xFF => {
                self.consume(buf, 1);
                if self.version >= 5 {
                    self.state = State::Checksum;
                    return Ok(None);
                }
                self.state = State::Done;
                return Ok(Some(Event::End { checksum: None }));
            }
            0xFE => {
                let db = c.len("SELECTDB")?;
                let db = u32::try_from(db)
                    .map_err(|_| c.corrupt("SELECTDB", format!("database {db}")))?;
                self.db = db;
                Some(Event::SelectDb(db))
            }
            0xFD => {
                let secs = c.u32_le()? as i32;
                self.meta.expire_ms = Some(secs as i64 * 1000);
                None
            }
            0xFC => {
                self.meta.expire_ms = Some(c.i64_le()?);
                None
            }
            0xFB => {
                let db_size = c.len("RESIZEDB")?;
                let expires_size = c.len("RESIZEDB")?;
                Some(Event::ResizeDb {
                    db_size,
                    expires_size,
                })
            }
            0xFA => {
                let k = c.string()?;
                let v = c.string()?;
                let pos = c.pos;
                let chunk = self.consume(buf, pos);
                return Ok(Some(Event::Aux {
                    key: str_bytes(&chunk, k, base)?,
                    value: str_bytes(&chunk, v, base)?,
                }));
            }
            0xF9 => {
                self.meta.freq = Some(c.u8()?);
                None
            }
            0xF8 => {
                self.meta.idle = Some(c.len("IDLE")?);
                None
            }
            0xF7 => {
                let module_id = c.len("module AUX id")?;
                let body_start = c.pos;
                self.state = State::ModuleAux(Box::new(AuxPending {
                    module_id,
                    body_start,
                    scan: Scan::module_body(body_start),
                }));
                return Ok(None);
            }
            0xF6 => {
                // 7.0 RC1/RC2: name, engine, optional description, code; the library source gets the
                // header the GA format keeps inside it.
                let name = c.string()?;
                let engine = c.string()?;
                if c.len("function description flag")? != 0 {
                    c.string()?;
                }
                let code = c.string()?;
                let pos = c.pos;
                let chunk = self.consume(buf, pos);
                let mut full = b"#!".to_vec();
                full.extend_from_slice(&str_bytes(&chunk, engine, base)?);
                full.extend_from_slice(b" name=");
                full.extend_from_slice(&str_bytes(&chunk, name, base)?);
                full.push(b'\n');
                full.extend_from_slice(&str_bytes(&chunk, code, base)?);
                return Ok(Some(Event::Function {
                    code: Bytes::from(full),
                }));
            }
            0xF5 => {
                let code = c.string()?;
                let pos = c.pos;
                let chunk = self.consume(buf, pos);
                return Ok(Some(Event::Function {
                    code: str_bytes(&chunk, code, base)?,
                }));
            }
            0xF4 => {
                let slot = c.len("SLOT_INFO")?;
                let slot_size = c.len("SLOT_INFO")?;
                let expires_slot_size = c.len("SLOT_INFO")?;
                Some(Event::SlotInfo {
                    slot,
                    slot_size,
                    expires_slot_size,
                })
            }
            0xF3 if valkey => {
                // Valkey 9 RDB_OPCODE_SLOT_IMPORT: an atomic slot migration in progress on the node that
                // wrote the file (job name, slot ranges). State of that node, not data: skipped.
                c.string()?;
                let at = c.pos;
                let n = c.len("SLOT_IMPORT")?;
                // The ranges are disjoint slot ranges (Valkey checks them when the job is created), so
                // at most 16384. The record is held until it is whole: a corrupt count must not let it
                // grow without bound.
                if n > 16384 {
                    c.pos = at;
                    return Err(c.corrupt("SLOT_IMPORT", format!("{n} slot ranges")));
                }
                // The ranges are walked where the last call stopped, not again from the opcode (which
                // made feeding a long record in small pieces quadratic).
                self.state = State::SlotImport {
                    left: n,
                    pos: c.pos,
                };
                return Ok(None);
            }
            t if known_type(t, valkey) => {
                let key = c.string()?;
                let value_start = c.pos;
                let Some(scan) = Scan::new(t, valkey, value_start) else {
                    return Err(Stop::Err(RdbError::Corrupt {
                        what: "module value",
                        offset: base,
                        detail: "pre-release module format (type 6) cannot be parsed".into(),
                    }));
                };
                let meta = std::mem::take(&mut self.meta);
                self.state = State::Value(Box::new(Pending {
                    rdb_type: t,
                    key,
                    value_start,
                    scan,
                    meta,
                }));
                return Ok(None);
            }
            t => {
                return Err(Stop::Err(RdbError::UnknownType {
                    byte: t,
                    offset: base,
                }))
            }
        };
        let pos = c.pos;
        self.consume(buf, pos);
        Ok(ev)
    }

    fn value_step(&mut self, buf: &mut BytesMut) -> R<Option<Event>> {
        let State::Value(p) = &mut self.state else {
            return Ok(None);
        };
        let kind = Kind::of(p.rdb_type).unwrap_or(Kind::Module);
        let limit = match kind {
            Kind::Stream | Kind::Module => self.opts.max_unchunked_bytes,
            _ => self.opts.max_entry_bytes,
        };
        let before = p.scan.clone();
        let r = p.scan.run(&buf[..], self.offset);
        let cut = p.value_start.saturating_add(limit);
        if let Some(end) = beyond(&r, p.scan.pos, before, cut, buf, self.offset) {
            if matches!(kind, Kind::Stream | Kind::Module) {
                return Err(Stop::Err(RdbError::TooLarge {
                    len: (end - p.value_start) as u64,
                    offset: self.offset,
                    limit: limit as u64,
                }));
            }
            return self.enter_big(buf, kind).map(Some);
        }
        r?;
        let State::Value(p) = std::mem::replace(&mut self.state, State::Top) else {
            return Ok(None);
        };
        let base = self.offset;
        let chunk = self.consume(buf, p.scan.pos);
        let key = str_bytes(&chunk, p.key, base)?;
        Ok(Some(Event::Entry(Entry {
            db: self.db,
            key,
            expire_ms: p.meta.expire_ms,
            idle: p.meta.idle,
            freq: p.meta.freq,
            rdb_type: p.rdb_type,
            payload: chunk.slice(p.value_start..),
        })))
    }

    fn enter_big(&mut self, buf: &mut BytesMut, kind: Kind) -> R<Event> {
        let State::Value(p) = std::mem::replace(&mut self.state, State::Top) else {
            return Err(Stop::Need(0));
        };
        let base = self.offset;
        let valkey = self.magic == Magic::Valkey;
        let Some(l) = layout(p.rdb_type, valkey) else {
            return Err(Stop::Err(RdbError::UnknownType {
                byte: p.rdb_type,
                offset: base,
            }));
        };
        let Some(batch) = empty_chunk(kind) else {
            return Err(Stop::Err(RdbError::UnknownType {
                byte: p.rdb_type,
                offset: base,
            }));
        };
        let prefix = self.consume(buf, p.value_start);
        let key = str_bytes(&prefix, p.key, base)?;
        if self.opts.raw_big {
            self.state = State::RawBig(if kind == Kind::String {
                RawBig::StrHead
            } else {
                match Scan::new(p.rdb_type, valkey, 0) {
                    Some(scan) => RawBig::Walk(scan),
                    None => {
                        return Err(Stop::Err(RdbError::UnknownType {
                            byte: p.rdb_type,
                            offset: base,
                        }))
                    }
                }
            });
            return Ok(Event::BigStart(BigHeader {
                db: self.db,
                key,
                expire_ms: p.meta.expire_ms,
                rdb_type: p.rdb_type,
                kind,
            }));
        }
        self.state = State::Big(Box::new(Big {
            rdb_type: p.rdb_type,
            layout: l,
            phase: if kind == Kind::String {
                BigPhase::StrHead
            } else {
                BigPhase::Head
            },
            batch,
            batch_bytes: 0,
        }));
        Ok(Event::BigStart(BigHeader {
            db: self.db,
            key,
            expire_ms: p.meta.expire_ms,
            rdb_type: p.rdb_type,
            kind,
        }))
    }

    fn piece_size(&self) -> usize {
        self.opts.max_entry_bytes.clamp(1, 1 << 20)
    }

    fn big_step(&mut self, buf: &mut BytesMut) -> R<Option<Event>> {
        let chunk_elements = self.opts.chunk_elements.max(1);
        let max_bytes = self.opts.max_entry_bytes;
        let piece = self.piece_size();
        let valkey = self.magic == Magic::Valkey;
        let base = self.offset;
        let State::Big(big) = &mut self.state else {
            return Ok(None);
        };
        // A full batch goes out first.
        let n = chunk_len(&big.batch);
        if n >= chunk_elements {
            let out = chunk_split_front(&mut big.batch, chunk_elements);
            let rest = chunk_len(&big.batch);
            big.batch_bytes = big.batch_bytes.saturating_mul(rest) / n;
            return Ok(Some(Event::BigChunk(out)));
        }
        if n > 0 && big.batch_bytes >= max_bytes {
            big.batch_bytes = 0;
            let out = chunk_split_front(&mut big.batch, n);
            return Ok(Some(Event::BigChunk(out)));
        }
        let mut c = Cur::new(&buf[..], 0, base);
        match &mut big.phase {
            BigPhase::Head => {
                let head = read_head(&big.layout, &mut c)?;
                let left = if big.layout.counted { head.count } else { 1 };
                big.phase = BigPhase::Items { head, left };
                let pos = c.pos;
                self.consume(buf, pos);
                Ok(None)
            }
            BigPhase::Items { left: 0, .. } => {
                big.phase = BigPhase::Flush;
                Ok(None)
            }
            BigPhase::Items { head, left } => {
                for &p in big.layout.item {
                    read_prim(&mut c, p)?;
                }
                let len = c.pos;
                *left -= 1;
                let head = *head;
                let t = big.rdb_type;
                let chunk = buf.split_to(len).freeze();
                let mut ic = Cur::new(&chunk, 0, base);
                let r = read_item(t, valkey, &head, &mut ic, &chunk, &mut big.batch);
                big.batch_bytes += len;
                self.crc.update(&chunk);
                self.offset += len as u64;
                match r {
                    Ok(()) => Ok(None),
                    Err(Stop::Need(_)) => Err(Stop::Err(RdbError::Corrupt {
                        what: "value",
                        offset: base,
                        detail: "item shorter than its layout".into(),
                    })),
                    Err(e) => Err(e),
                }
            }
            BigPhase::Flush => {
                if n > 0 {
                    big.batch_bytes = 0;
                    return Ok(Some(Event::BigChunk(chunk_split_front(&mut big.batch, n))));
                }
                self.state = State::Top;
                Ok(Some(Event::BigEnd))
            }
            BigPhase::StrHead => {
                let start = c.pos;
                match c.len_enc()? {
                    LenEnc::Len(n) => {
                        big.phase = BigPhase::StrRaw { left: n };
                        let pos = c.pos;
                        self.consume(buf, pos);
                        Ok(None)
                    }
                    LenEnc::Enc(3) => {
                        let clen = c.len("LZF string")?;
                        let len = c.len("LZF string")?;
                        let out_len = usize::try_from(len).unwrap_or(usize::MAX);
                        let s = lzf::Stream::new(clen, out_len).map_err(|e| {
                            Stop::Err(RdbError::Corrupt {
                                what: "LZF string",
                                offset: base + start as u64,
                                detail: e.to_string(),
                            })
                        })?;
                        big.phase = BigPhase::StrLzf(Box::new(s));
                        let pos = c.pos;
                        self.consume(buf, pos);
                        Ok(None)
                    }
                    LenEnc::Enc(_) => {
                        c.pos = start;
                        let s = c.string()?;
                        let pos = c.pos;
                        big.phase = BigPhase::Flush;
                        let chunk = self.consume(buf, pos);
                        Ok(Some(Event::BigChunk(Chunk::StringPart(str_bytes(
                            &chunk, s, base,
                        )?))))
                    }
                }
            }
            BigPhase::StrRaw { left: 0 } => {
                big.phase = BigPhase::Flush;
                Ok(None)
            }
            BigPhase::StrRaw { left } => {
                let n = (*left).min(piece as u64) as usize;
                c.take(n as u64)?;
                *left -= n as u64;
                let part = self.consume(buf, n);
                Ok(Some(Event::BigChunk(Chunk::StringPart(part))))
            }
            BigPhase::StrLzf(s) => {
                // Errors name where the compressed bytes start (as for a whole LZF string), not where
                // this call began: the same offset however the input was split.
                let start = self.offset - s.input_used();
                let lzf_err = |e: lzf::LzfError| {
                    Stop::Err(RdbError::Corrupt {
                        what: "LZF string",
                        offset: start,
                        detail: e.to_string(),
                    })
                };
                loop {
                    if s.pending() >= piece || (s.is_complete() && s.pending() > 0) {
                        let part = s.take(piece);
                        return Ok(Some(Event::BigChunk(Chunk::StringPart(Bytes::from(part)))));
                    }
                    if s.is_complete() {
                        big.phase = BigPhase::Flush;
                        return Ok(None);
                    }
                    let used = s.feed(&buf[..], piece).map_err(lzf_err)?;
                    if used == 0 {
                        return Err(Stop::Need(buf.len() + 1));
                    }
                    let chunk = buf.split_to(used);
                    self.crc.update(&chunk);
                    self.offset += used as u64;
                }
            }
        }
    }

    /// The next piece of a big value forwarded as raw bytes: whatever complete part of it the buffer holds
    /// (a string's body in pieces of any size up to [`Decoder::piece_size`], a collection up to its last
    /// whole item).
    fn raw_big_step(&mut self, buf: &mut BytesMut) -> R<Option<Event>> {
        let piece = self.piece_size();
        let base = self.offset;
        let State::RawBig(rb) = &mut self.state else {
            return Ok(None);
        };
        let mut c = Cur::new(&buf[..], 0, base);
        let n = match rb {
            RawBig::End => {
                self.state = State::Top;
                return Ok(Some(Event::BigEnd));
            }
            RawBig::StrHead => {
                *rb = match c.len_enc()? {
                    LenEnc::Len(n) => RawBig::StrBody(n),
                    LenEnc::Enc(3) => {
                        let clen = c.len("LZF string")?;
                        c.len("LZF string")?;
                        RawBig::StrBody(clen)
                    }
                    LenEnc::Enc(_) => {
                        // An integer-encoded string: whole in its header.
                        c.pos = 0;
                        c.string()?;
                        RawBig::End
                    }
                };
                c.pos
            }
            RawBig::StrBody(0) => {
                *rb = RawBig::End;
                return Ok(None);
            }
            RawBig::StrBody(left) => {
                if buf.is_empty() {
                    return Err(Stop::Need(1));
                }
                let n = (*left).min(piece as u64).min(buf.len() as u64) as usize;
                *left -= n as u64;
                n
            }
            RawBig::Walk(scan) => {
                // Up to `piece` bytes walked at a time, so a value arriving at once is still cut in pieces.
                let r = scan.run(&buf[..buf.len().min(scan.pos + piece)], base);
                let n = scan.pos;
                scan.pos = 0;
                match r {
                    Ok(()) => *rb = RawBig::End,
                    // A whole item is missing: forward what was walked, or wait when nothing was.
                    Err(Stop::Need(need)) if n == 0 => {
                        if buf.len() > piece && need <= buf.len() {
                            // The cut at `piece` fell inside one item bigger than a piece: walk it whole.
                            let RawBig::Walk(scan) = rb else {
                                return Ok(None);
                            };
                            scan.run(&buf[..], base)?;
                            let n = scan.pos;
                            if n == 0 {
                                return Err(Stop::Need(buf.len() + 1));
                            }
                            scan.pos = 0;
                            return Ok(Some(Event::BigRaw(self.consume(buf, n))));
                        }
                        return Err(Stop::Need(need));
                    }
                    Err(Stop::Need(_)) => {}
                    Err(e) => return Err(e),
                }
                n
            }
        };
        if n == 0 {
            return Ok(None);
        }
        Ok(Some(Event::BigRaw(self.consume(buf, n))))
    }

    fn aux_step(&mut self, buf: &mut BytesMut) -> R<Option<Event>> {
        let limit = self.limit_for(Kind::Module);
        let State::ModuleAux(a) = &mut self.state else {
            return Ok(None);
        };
        let before = a.scan.clone();
        let r = a.scan.run(&buf[..], self.offset);
        // The body is what the limit bounds, as a value's bytes after its key are.
        let cut = a.body_start.saturating_add(limit);
        if let Some(end) = beyond(&r, a.scan.pos, before, cut, buf, self.offset) {
            return Err(Stop::Err(RdbError::TooLarge {
                len: (end - a.body_start) as u64,
                offset: self.offset,
                limit: limit as u64,
            }));
        }
        r?;
        let (module_id, body_start, end) = (a.module_id, a.body_start, a.scan.pos);
        self.state = State::Top;
        let chunk = self.consume(buf, end);
        Ok(Some(Event::ModuleAux {
            module_id,
            raw: chunk.slice(body_start..),
        }))
    }

    fn slot_import_step(&mut self, buf: &mut BytesMut) -> R<Option<Event>> {
        let base = self.offset;
        let State::SlotImport { left, pos } = &mut self.state else {
            return Ok(None);
        };
        while *left > 0 {
            // One range (start, end) at a time, whole or not at all.
            let mut c = Cur::new(&buf[..], *pos, base);
            c.len("SLOT_IMPORT")?;
            c.len("SLOT_IMPORT")?;
            *pos = c.pos;
            *left -= 1;
        }
        let end = *pos;
        self.state = State::Top;
        self.consume(buf, end);
        Ok(None)
    }

    fn checksum_step(&mut self, buf: &mut BytesMut) -> R<Option<Event>> {
        let mut c = Cur::new(&buf[..], 0, self.offset);
        let expected = c.u64_le()?;
        let at = self.offset;
        let computed = self.crc.clone().finalize();
        let _ = buf.split_to(8);
        self.offset += 8;
        if self.opts.verify_checksum && expected != 0 && expected != computed {
            return Err(Stop::Err(RdbError::Checksum {
                offset: at,
                expected,
                computed,
            }));
        }
        self.state = State::Done;
        Ok(Some(Event::End {
            checksum: Some(expected),
        }))
    }
}
