//! An exact set of `(db, key)` pairs that holds tens of millions of keys in bounded memory, spilling to disk.
//!
//! It records which keys a source's RDB snapshot wrote (after a full resync, the target keys of that source
//! that are *not* in the snapshot are deleted) and which keys an `rdb:` file loaded. A 50 GB RDB must not
//! need 50 GB of RAM, so nothing here grows with the number of keys except a sparse index of 16 bytes per
//! [`BLOCK_RECORDS`] keys.
//!
//! # Entries
//! An entry is a 128-bit keyed hash of `(db, key)`: the two 64-bit halves come from two std
//! [`RandomState`]s (SipHash-1-3 with secret random keys, drawn per builder; std makes the second's keys by
//! incrementing one of the first's, so each half is also fed its own domain byte, 1 or 2). Each hasher is
//! fed the domain byte, the db (`u32`), the key's length (`u64`) and the key's bytes: fixed-width fields
//! first, so two different pairs never feed the same input, and the same key in two dbs is two entries.
//! The hash keys are secret and live in this process only, so nobody can choose keys that collide; two
//! distinct pairs collide with probability 2^-128, any two of 50 million keys with about 4·10^-24. A
//! collision can only make [`KeySet::contains`] answer `true` for a pair that was not inserted (a stale key
//! survives a sweep); a pair that was inserted is always found. No new dependency: std's hashers suffice.
//!
//! # Building
//! [`KeySetBuilder::insert`] hashes and pushes into an in-memory buffer. When the buffer is full it is handed
//! to a background std thread that sorts it, removes duplicates and appends it as a *run* to the runs file;
//! the caller goes on filling a second buffer. At most one run is being written: when the second buffer is
//! full before the first run is written, `insert` waits for it. The two buffers share `mem_bytes`: each is at
//! most `mem_bytes / 2` (at least [`MIN_BUFFER_RECORDS`] records), and a buffer grows by doubling up to that,
//! so a small set takes little memory.
//!
//! [`KeySetBuilder::finish`] keeps a set that never spilled in memory (a sorted vector). Otherwise it writes
//! the last buffer as a run, frees both buffers, and merges the runs with a binary heap, [`FAN_IN`] at a time:
//! while there are more runs than that, a pass merges groups of them into the other runs file (the two runs
//! files alternate; the source of a pass is truncated after it), and the last pass writes the set file and
//! keeps every [`BLOCK_RECORDS`]-th hash in memory as the sparse index. Duplicates across runs are dropped
//! by the merge.
//!
//! # Files
//! Under `dir` (created at the first spill), with `<name>` the builder's name reduced to `[A-Za-z0-9_-]`
//! (at most 64 characters), `<pid>` this process and `<n>` a counter that is unique in the process:
//!
//! - `<name>.<pid>.<n>.runs0`, `<name>.<pid>.<n>.runs1`: runs, each a sorted, duplicate-free sequence of
//!   records, back to back; where each starts is kept in memory (16 bytes per run).
//! - `<name>.<pid>.<n>.set`: the finished set, sorted and duplicate-free; record `i` is at byte `16 · i`.
//!   No header: the file lives only as long as its [`KeySet`].
//!
//! A record is the 128-bit hash, 16 bytes big endian (byte order is numeric order). The runs files are
//! removed when `finish` is done; every file is removed when the builder (if `finish` was never called, or
//! failed) or the [`KeySet`] is dropped. Files of the same `<name>` left by another process (a crash: the
//! pid differs) are removed at the first spill, so two processes must not share `dir` and `name`.
//!
//! # Lookups
//! The sparse index tells which block of [`BLOCK_RECORDS`] records may hold a hash. The hashes are uniform,
//! so where a hash lies in its block follows from the block's first hash and the next block's: a single
//! lookup reads the [`WINDOW_RECORDS`] records (4 KiB) around that position with one positioned read
//! (`pread`) and binary-searches them. Only when the hash is outside the window (practically never: the
//! position's standard deviation is at most 16 records, the window reaches 128 either side) is the whole
//! block (16 KiB) read. [`KeySet::contains_many`] sorts its lookups; a block with several of them is read
//! whole, once (a read costs more than its size: two windows take longer than one block). Lookups take
//! `&self` and may run on several threads at once.
//!
//! # Memory
//! - Builder: at most `mem_bytes` (both buffers together, at least 32 KiB; see
//!   [`KeySetBuilder::memory_bytes`]) plus a 256 KiB write buffer while a run is written: with one run
//!   pending while the next fills, each buffer gets half of `mem_bytes`, so `mem_bytes` is the bound (not
//!   twice it).
//! - `finish`: the buffers are freed before merging; the merge uses 2 MiB of read buffers (split among its
//!   inputs) and a 1 MiB write buffer, plus the sparse index.
//! - [`KeySet`]: the sparse index (16 bytes per [`BLOCK_RECORDS`] keys: 16 MB for a billion keys), or, if it
//!   never spilled, the sorted hashes (at most `mem_bytes / 2`). A lookup uses a 4 KiB window on the stack
//!   (a 16 KiB block buffer when it misses), `contains_many` one 16 KiB buffer plus 32 bytes per item.
//!
//! All I/O is blocking: `insert` only when it spills (then at most one run's sort and write, in the
//! background), `finish` and lookups always. Async callers run `finish` and lookups on the blocking pool.

use std::cmp::Reverse;
use std::collections::binary_heap::PeekMut;
use std::collections::hash_map::RandomState;
use std::collections::BinaryHeap;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Bytes per record: one 128-bit hash.
const RECORD: usize = 16;
/// Records per block of the set file: the sparse index keeps one hash per block, a lookup reads one block.
pub const BLOCK_RECORDS: usize = 1024;
const BLOCK_BYTES: usize = BLOCK_RECORDS * RECORD;
/// Records a single lookup reads around the interpolated position of its hash (4 KiB).
pub const WINDOW_RECORDS: usize = 256;
/// Runs merged at once; more runs are merged in passes.
pub const FAN_IN: usize = 64;
/// Smallest buffer (records) whatever `mem_bytes` says: 16 KiB.
pub const MIN_BUFFER_RECORDS: usize = 1024;
/// A buffer starts at this many records and doubles.
const FIRST_BUFFER_RECORDS: usize = 256;
/// The run writer copies records into a byte buffer of this size.
const RUN_WRITE_BYTES: usize = 256 << 10;
/// Read buffers of one merge, all inputs together.
const MERGE_READ_BYTES: usize = 2 << 20;
/// Per-input read buffer bounds.
const MERGE_READ_MIN: usize = 4 << 10;
const MERGE_READ_MAX: usize = 1 << 20;
/// Write buffer of a merge.
const MERGE_WRITE_BYTES: usize = 1 << 20;
/// Longest name kept in file names.
const NAME_MAX: usize = 64;

/// Distinguishes builders of one process in file names.
static INSTANCE: AtomicU64 = AtomicU64::new(0);

/// `io::Error` naming the operation and the file.
fn err(e: io::Error, op: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("key set: {op} {}: {e}", path.display()))
}

/// The 128-bit keyed hash of `(db, key)`.
#[derive(Clone)]
struct KeyHasher {
    a: RandomState,
    b: RandomState,
}

impl KeyHasher {
    fn new() -> KeyHasher {
        KeyHasher {
            a: RandomState::new(),
            b: RandomState::new(),
        }
    }

    fn hash(&self, db: u32, key: &[u8]) -> u128 {
        let half = |s: &RandomState, domain: u8| {
            let mut h = s.build_hasher();
            h.write_u8(domain);
            h.write_u32(db);
            h.write_u64(key.len() as u64);
            h.write(key);
            h.finish()
        };
        (u128::from(half(&self.a, 1)) << 64) | u128::from(half(&self.b, 2))
    }
}

/// Files to remove on drop.
#[derive(Default)]
struct Files(Vec<PathBuf>);

impl Files {
    fn remove(&mut self, path: &Path) {
        let _ = fs::remove_file(path);
        self.0.retain(|p| p != path);
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

/// A sorted, duplicate-free sequence of records in a runs file (positions in records).
#[derive(Clone, Copy, Debug)]
struct Seg {
    start: u64,
    len: u64,
}

/// A runs file.
struct RunsFile {
    file: Arc<File>,
    path: PathBuf,
}

/// What the run writer thread hands back: the buffer (to reuse) and the run it wrote.
type RunDone = (Vec<u128>, io::Result<Seg>);

/// Builds a [`KeySet`]; memory bounded by `mem_bytes` (see the module docs).
pub struct KeySetBuilder {
    dir: PathBuf,
    /// The sanitized name.
    name: String,
    /// `<name>.<pid>.<n>`: every file name of this builder starts with it.
    stem: String,
    hasher: KeyHasher,
    /// Records per buffer at most.
    cap: usize,
    /// The buffer being filled.
    active: Vec<u128>,
    /// The run being sorted and written, and the bytes its buffer holds.
    pending: Option<JoinHandle<RunDone>>,
    pending_bytes: usize,
    /// The runs file written to (after the first spill), its runs and its length in records.
    runs: Option<RunsFile>,
    segs: Vec<Seg>,
    end: u64,
    inserted: u64,
    peak: usize,
    /// A run write failed: the builder is unusable.
    failed: Option<String>,
    fan_in: usize,
    files: Files,
}

impl std::fmt::Debug for KeySetBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySetBuilder")
            .field("stem", &self.stem)
            .field("inserted", &self.inserted)
            .field("runs", &self.segs.len())
            .field("memory_bytes", &self.memory_bytes())
            .finish()
    }
}

/// `name` reduced to `[A-Za-z0-9_-]`, at most [`NAME_MAX`] characters, never empty.
fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .take(NAME_MAX)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "keyset".into()
    } else {
        s
    }
}

impl KeySetBuilder {
    /// Spill files go under `dir` (created at the first spill), named with `name` (sanitized; unique per
    /// builder among processes sharing `dir`: files of the same name from another pid are removed as stale).
    /// Two buffers of at most `mem_bytes / 2` each (at least [`MIN_BUFFER_RECORDS`] records each).
    pub fn new(dir: &Path, name: &str, mem_bytes: usize) -> KeySetBuilder {
        let name = sanitize(name);
        let stem = format!(
            "{name}.{}.{}",
            std::process::id(),
            INSTANCE.fetch_add(1, Ordering::Relaxed)
        );
        KeySetBuilder {
            dir: dir.to_path_buf(),
            name,
            stem,
            hasher: KeyHasher::new(),
            cap: (mem_bytes / 2 / RECORD).max(MIN_BUFFER_RECORDS),
            active: Vec::new(),
            pending: None,
            pending_bytes: 0,
            runs: None,
            segs: Vec::new(),
            end: 0,
            inserted: 0,
            peak: 0,
            failed: None,
            fan_in: FAN_IN,
            files: Files::default(),
        }
    }

    /// Merge fan-in (tests force multi-pass merges with a small one).
    #[cfg(test)]
    fn with_fan_in(mut self, fan_in: usize) -> KeySetBuilder {
        self.fan_in = fan_in.max(2);
        self
    }

    /// Record a key. Cheap (hash + push) except when the buffer is full: then it is handed to the background
    /// run writer, after waiting for the previous run if that is still being written.
    pub fn insert(&mut self, db: u32, key: &[u8]) -> io::Result<()> {
        if self.active.len() == self.active.capacity() {
            self.make_room()?;
        }
        self.active.push(self.hasher.hash(db, key));
        self.inserted += 1;
        Ok(())
    }

    /// Keys inserted so far, duplicates included ([`KeySet::len`] counts them once).
    pub fn inserted(&self) -> u64 {
        self.inserted
    }

    /// Bytes the record buffers hold now (the one being filled and the one being written).
    pub fn memory_bytes(&self) -> usize {
        self.active.capacity() * RECORD + self.pending_bytes
    }

    /// The most [`memory_bytes`](Self::memory_bytes) ever was: at most `max(mem_bytes, 2 ·
    /// MIN_BUFFER_RECORDS · 16)`.
    pub fn peak_memory_bytes(&self) -> usize {
        self.peak
    }

    /// Runs written so far (finished ones).
    pub fn runs(&self) -> usize {
        self.segs.len()
    }

    fn note_memory(&mut self) {
        self.peak = self.peak.max(self.memory_bytes());
    }

    fn check_failed(&self) -> io::Result<()> {
        match &self.failed {
            Some(e) => Err(io::Error::other(format!(
                "key set {}: an earlier run write failed: {e}",
                self.stem
            ))),
            None => Ok(()),
        }
    }

    /// The buffer is full: grow it up to `cap`, else spill it.
    fn make_room(&mut self) -> io::Result<()> {
        self.check_failed()?;
        let have = self.active.capacity();
        if have < self.cap {
            let want = (have * 2).clamp(FIRST_BUFFER_RECORDS, self.cap);
            self.active.reserve_exact(want - self.active.len());
            self.note_memory();
            return Ok(());
        }
        self.spill()
    }

    /// Wait for the run being written; hand back its buffer, emptied.
    fn join_pending(&mut self) -> io::Result<Option<Vec<u128>>> {
        let Some(handle) = self.pending.take() else {
            return Ok(None);
        };
        let done = handle.join();
        self.pending_bytes = 0;
        let e = match done {
            Ok((mut buf, Ok(seg))) => {
                self.segs.push(seg);
                self.end += seg.len;
                buf.clear();
                return Ok(Some(buf));
            }
            Ok((_, Err(e))) => e,
            Err(_) => io::Error::other(format!(
                "key set {}: the run writer thread panicked",
                self.stem
            )),
        };
        self.failed = Some(e.to_string());
        Err(e)
    }

    /// Create `dir`, remove stale files of this name from other processes, create the first runs file.
    fn open_runs(&mut self) -> io::Result<()> {
        if self.runs.is_some() {
            return Ok(());
        }
        fs::create_dir_all(&self.dir).map_err(|e| err(e, "create directory", &self.dir))?;
        self.remove_stale();
        let path = self.dir.join(format!("{}.runs0", self.stem));
        let file = create(&path)?;
        self.files.0.push(path.clone());
        self.runs = Some(RunsFile {
            file: Arc::new(file),
            path,
        });
        Ok(())
    }

    /// Best effort: remove `<name>.<pid>.<n>.{runs0,runs1,set}` whose pid is not this process.
    fn remove_stale(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let me = std::process::id();
        let prefix = format!("{}.", self.name);
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(rest) = file_name.to_str().and_then(|s| s.strip_prefix(&prefix)) else {
                continue;
            };
            let parts: Vec<&str> = rest.split('.').collect();
            let stale = matches!(parts[..], [pid, n, "runs0" | "runs1" | "set"]
                if pid.parse::<u32>().is_ok_and(|p| p != me) && n.parse::<u64>().is_ok());
            if stale && fs::remove_file(entry.path()).is_ok() {
                tracing::info!(file = %entry.path().display(), "key set: removed a stale file of another process");
            }
        }
    }

    /// Hand the full buffer to the run writer thread (after the previous run is written).
    fn spill(&mut self) -> io::Result<()> {
        let next = self.join_pending()?;
        self.open_runs()?;
        let runs = self.runs.as_ref().expect("opened above");
        let (file, path) = (runs.file.clone(), runs.path.clone());
        let next = next.unwrap_or_else(|| Vec::with_capacity(self.cap));
        let buf = std::mem::replace(&mut self.active, next);
        self.pending_bytes = buf.capacity() * RECORD;
        let start = self.end;
        let handle = std::thread::Builder::new()
            .name("ferry-keyset".into())
            .spawn(move || write_run(buf, &file, &path, start))
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("key set {}: spawn the run writer: {e}", self.stem),
                )
            });
        match handle {
            Ok(h) => self.pending = Some(h),
            Err(e) => {
                self.pending_bytes = 0;
                self.failed = Some(e.to_string());
                return Err(e);
            }
        }
        self.note_memory();
        Ok(())
    }

    /// Finish: keep the set in memory if it never spilled; else merge the runs into the set file with a
    /// sparse index. Blocking.
    pub fn finish(mut self) -> io::Result<KeySet> {
        self.check_failed()?;
        let hasher = self.hasher.clone();
        if self.runs.is_none() {
            let mut v = std::mem::take(&mut self.active);
            v.sort_unstable();
            v.dedup();
            v.shrink_to_fit();
            return Ok(KeySet {
                hasher,
                window_misses: AtomicU64::new(0),
                repr: Repr::Mem(v),
                _files: Files::default(),
            });
        }
        drop(self.join_pending()?);
        let last = std::mem::take(&mut self.active);
        if !last.is_empty() {
            let runs = self.runs.as_ref().expect("spilled");
            let (buf, seg) = write_run(last, &runs.file, &runs.path, self.end);
            drop(buf);
            let seg = seg?;
            self.segs.push(seg);
            self.end += seg.len;
        }

        // Merge passes while there are too many runs, alternating between the two runs files.
        let mut src = self.runs.take().expect("spilled");
        let mut segs = std::mem::take(&mut self.segs);
        let mut other: Option<RunsFile> = None;
        while segs.len() > self.fan_in {
            let dst = match other.take() {
                Some(f) => f,
                None => {
                    let path = self.dir.join(format!("{}.runs1", self.stem));
                    let file = create(&path)?;
                    self.files.0.push(path.clone());
                    RunsFile {
                        file: Arc::new(file),
                        path,
                    }
                }
            };
            let mut out = RecordWriter::new(&dst.file, &dst.path, 0);
            let mut merged = Vec::with_capacity(segs.len().div_ceil(self.fan_in));
            for group in segs.chunks(self.fan_in) {
                let start = out.records();
                let (len, _) = merge(&src.file, &src.path, group, &mut out, None)?;
                merged.push(Seg { start, len });
            }
            out.flush()?;
            src.file
                .set_len(0)
                .map_err(|e| err(e, "truncate", &src.path))?;
            segs = merged;
            other = Some(std::mem::replace(&mut src, dst));
        }

        // The last pass writes the set file.
        let path = self.dir.join(format!("{}.set", self.stem));
        let file = create(&path)?;
        self.files.0.push(path.clone());
        let mut index = Vec::new();
        let mut out = RecordWriter::new(&file, &path, 0);
        let (len, last) = merge(&src.file, &src.path, &segs, &mut out, Some(&mut index))?;
        out.flush()?;
        drop(out);
        self.files.remove(&src.path);
        if let Some(o) = other {
            self.files.remove(&o.path);
        }
        index.shrink_to_fit();
        Ok(KeySet {
            hasher,
            window_misses: AtomicU64::new(0),
            repr: Repr::Disk {
                file,
                path,
                index,
                last: last.unwrap_or(0),
                len,
            },
            _files: std::mem::take(&mut self.files),
        })
    }
}

impl Drop for KeySetBuilder {
    fn drop(&mut self) {
        // The run writer must be done with its file before `files` removes it.
        if let Some(h) = self.pending.take() {
            let _ = h.join();
        }
    }
}

/// Create (or truncate) a file for reading and writing.
fn create(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| err(e, "create", path))
}

/// Sort and deduplicate `buf` and write it at record `start` of `file`; hand the buffer back.
fn write_run(mut buf: Vec<u128>, file: &File, path: &Path, start: u64) -> RunDone {
    buf.sort_unstable();
    buf.dedup();
    let mut out = RecordWriter::with_capacity(file, path, start, RUN_WRITE_BYTES);
    let res = buf
        .iter()
        .try_for_each(|&h| out.push(h))
        .and_then(|()| out.flush())
        .map(|()| Seg {
            start,
            len: buf.len() as u64,
        });
    drop(out);
    (buf, res)
}

/// Appends records at a position of a file through a bounded buffer (positioned writes).
struct RecordWriter<'a> {
    file: &'a File,
    path: &'a Path,
    /// File position of `buf[0]`, bytes.
    at: u64,
    buf: Vec<u8>,
}

impl<'a> RecordWriter<'a> {
    fn new(file: &'a File, path: &'a Path, start: u64) -> RecordWriter<'a> {
        RecordWriter::with_capacity(file, path, start, MERGE_WRITE_BYTES)
    }

    fn with_capacity(file: &'a File, path: &'a Path, start: u64, bytes: usize) -> RecordWriter<'a> {
        RecordWriter {
            file,
            path,
            at: start * RECORD as u64,
            buf: Vec::with_capacity(bytes),
        }
    }

    /// Records written or buffered: the position of the next one.
    fn records(&self) -> u64 {
        (self.at + self.buf.len() as u64) / RECORD as u64
    }

    fn push(&mut self, h: u128) -> io::Result<()> {
        self.buf.extend_from_slice(&h.to_be_bytes());
        if self.buf.len() + RECORD > self.buf.capacity() {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.file
                .write_all_at(&self.buf, self.at)
                .map_err(|e| err(e, "write", self.path))?;
            self.at += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }
}

/// Reads one run through a bounded buffer (positioned reads).
struct RunReader<'a> {
    file: &'a File,
    path: &'a Path,
    /// Next file position to read, bytes; records left to read from the file.
    at: u64,
    left: u64,
    buf: Vec<u8>,
    pos: usize,
}

impl<'a> RunReader<'a> {
    fn new(file: &'a File, path: &'a Path, seg: Seg, bytes: usize) -> RunReader<'a> {
        let records = (bytes / RECORD).max(1) as u64;
        RunReader {
            file,
            path,
            at: seg.start * RECORD as u64,
            left: seg.len,
            buf: Vec::with_capacity(records.min(seg.len) as usize * RECORD),
            pos: 0,
        }
    }

    fn next(&mut self) -> io::Result<Option<u128>> {
        if self.pos == self.buf.len() {
            if self.left == 0 {
                return Ok(None);
            }
            let n = ((self.buf.capacity() / RECORD) as u64).min(self.left) as usize;
            self.buf.resize(n * RECORD, 0);
            self.file
                .read_exact_at(&mut self.buf, self.at)
                .map_err(|e| err(e, "read", self.path))?;
            self.at += (n * RECORD) as u64;
            self.left -= n as u64;
            self.pos = 0;
        }
        let h = record(&self.buf, self.pos / RECORD);
        self.pos += RECORD;
        Ok(Some(h))
    }
}

/// Record `i` of a byte slice of records.
fn record(bytes: &[u8], i: usize) -> u128 {
    let mut r = [0u8; RECORD];
    r.copy_from_slice(&bytes[i * RECORD..(i + 1) * RECORD]);
    u128::from_be_bytes(r)
}

/// Merge `segs` of `file` into `out` without duplicates; with `index`, push every [`BLOCK_RECORDS`]-th
/// record written (counted from this merge's first). Returns the records written and the last one.
fn merge(
    file: &File,
    path: &Path,
    segs: &[Seg],
    out: &mut RecordWriter<'_>,
    mut index: Option<&mut Vec<u128>>,
) -> io::Result<(u64, Option<u128>)> {
    let per = (MERGE_READ_BYTES / segs.len().max(1)).clamp(MERGE_READ_MIN, MERGE_READ_MAX);
    let mut readers: Vec<RunReader<'_>> = segs
        .iter()
        .map(|&s| RunReader::new(file, path, s, per))
        .collect();
    let mut heap = BinaryHeap::with_capacity(readers.len());
    for (i, r) in readers.iter_mut().enumerate() {
        if let Some(h) = r.next()? {
            heap.push(Reverse((h, i)));
        }
    }
    let mut written = 0u64;
    let mut last = None;
    while let Some(mut top) = heap.peek_mut() {
        let Reverse((h, i)) = *top;
        if last != Some(h) {
            if let Some(index) = index.as_deref_mut() {
                if written % BLOCK_RECORDS as u64 == 0 {
                    index.push(h);
                }
            }
            out.push(h)?;
            written += 1;
            last = Some(h);
        }
        match readers[i].next()? {
            Some(next) => *top = Reverse((next, i)),
            None => {
                PeekMut::pop(top);
            }
        }
    }
    Ok((written, last))
}

enum Repr {
    /// Never spilled: the sorted hashes.
    Mem(Vec<u128>),
    /// The set file, its sparse index (the first hash of every block), its last hash and its length in
    /// records.
    Disk {
        file: File,
        path: PathBuf,
        index: Vec<u128>,
        last: u128,
        len: u64,
    },
}

/// A finished, immutable set. `Send + Sync`; lookups may read its file (blocking). Its files are removed on
/// drop.
pub struct KeySet {
    hasher: KeyHasher,
    repr: Repr,
    /// Single lookups whose window missed (read the whole block).
    window_misses: AtomicU64,
    _files: Files,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("KeySet");
        d.field("len", &self.len());
        if let Repr::Disk { path, .. } = &self.repr {
            d.field("file", path);
        }
        d.finish()
    }
}

impl KeySet {
    /// Distinct `(db, key)` pairs.
    pub fn len(&self) -> u64 {
        match &self.repr {
            Repr::Mem(v) => v.len() as u64,
            Repr::Disk { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held in memory: the sparse index, or the hashes of a set that never spilled.
    pub fn memory_bytes(&self) -> usize {
        match &self.repr {
            Repr::Mem(v) => v.capacity() * RECORD,
            Repr::Disk { index, .. } => index.capacity() * RECORD,
        }
    }

    /// The set file, if the set spilled.
    pub fn path(&self) -> Option<&Path> {
        match &self.repr {
            Repr::Mem(_) => None,
            Repr::Disk { path, .. } => Some(path),
        }
    }

    /// Whether `(db, key)` was inserted. Blocking (may read the file: one 4 KiB window, rarely a block).
    pub fn contains(&self, db: u32, key: &[u8]) -> io::Result<bool> {
        let h = self.hasher.hash(db, key);
        match &self.repr {
            Repr::Mem(v) => Ok(v.binary_search(&h).is_ok()),
            Repr::Disk { .. } => self.lookup(h),
        }
    }

    /// [`contains`](Self::contains) for each item, answers in input order. Blocking; the lookups are sorted
    /// so that a block of the file with several of them is read whole, once.
    pub fn contains_many(&self, items: &[(u32, &[u8])]) -> io::Result<Vec<bool>> {
        let mut out = vec![false; items.len()];
        let mut hashes: Vec<(u128, usize)> = items
            .iter()
            .enumerate()
            .map(|(i, (db, key))| (self.hasher.hash(*db, key), i))
            .collect();
        match &self.repr {
            Repr::Mem(v) => {
                for (h, i) in hashes {
                    out[i] = v.binary_search(&h).is_ok();
                }
            }
            Repr::Disk { .. } => {
                hashes.sort_unstable();
                self.lookup_sorted(&hashes, &mut out)?;
            }
        }
        Ok(out)
    }

    /// `out[i]` = whether `h` is in the file, for sorted `(h, i)`: a block with one lookup through
    /// [`lookup`](Self::lookup), a block with several read whole, once (one read costs more than its size).
    fn lookup_sorted(&self, hashes: &[(u128, usize)], out: &mut [bool]) -> io::Result<()> {
        let mut buf = vec![0u8; BLOCK_BYTES];
        let mut k = 0;
        while k < hashes.len() {
            let (h, i) = hashes[k];
            let block = self.block_of(h);
            let end = k
                + 1
                + hashes[k + 1..]
                    .iter()
                    .take_while(|(g, _)| self.block_of(*g) == block)
                    .count();
            match block {
                None => {}
                Some(_) if end - k == 1 => out[i] = self.lookup(h)?,
                Some(b) => {
                    let n = self.read_records(
                        b as u64 * BLOCK_RECORDS as u64,
                        BLOCK_RECORDS,
                        &mut buf,
                    )?;
                    for &(h, i) in &hashes[k..end] {
                        out[i] = search(&buf[..n], h);
                    }
                }
            }
            k = end;
        }
        Ok(())
    }

    /// One lookup in the file: the [`WINDOW_RECORDS`] around the position interpolated between the block's
    /// first hash and the next block's (the set's last for the last block), the whole block when `h` is not
    /// within them.
    fn lookup(&self, h: u128) -> io::Result<bool> {
        let Repr::Disk {
            index, last, len, ..
        } = &self.repr
        else {
            return Ok(false);
        };
        let Some(block) = self.block_of(h) else {
            return Ok(false);
        };
        let lo = index[block];
        if h == lo {
            return Ok(true);
        }
        if h > *last {
            return Ok(false);
        }
        let first = block as u64 * BLOCK_RECORDS as u64;
        let count = (len - first).min(BLOCK_RECORDS as u64) as usize;
        let mut window = [0u8; WINDOW_RECORDS * RECORD];
        if count <= WINDOW_RECORDS {
            let n = self.read_records(first, count, &mut window)?;
            return Ok(search(&window[..n], h));
        }
        // lo < h <= hi, so hi > lo.
        let hi = index.get(block + 1).copied().unwrap_or(*last);
        let frac = (h - lo) as f64 / (hi - lo) as f64;
        let at = (frac * count as f64) as usize;
        let start = at
            .saturating_sub(WINDOW_RECORDS / 2)
            .min(count - WINDOW_RECORDS);
        let n = self.read_records(first + start as u64, WINDOW_RECORDS, &mut window)?;
        let window = &window[..n];
        let from_below = start == 0 || record(window, 0) <= h;
        let to_above = start + WINDOW_RECORDS == count || h <= record(window, WINDOW_RECORDS - 1);
        if from_below && to_above {
            return Ok(search(window, h));
        }
        self.window_misses.fetch_add(1, Ordering::Relaxed);
        let mut buf = vec![0u8; BLOCK_BYTES];
        let n = self.read_records(first, count, &mut buf)?;
        Ok(search(&buf[..n], h))
    }

    /// The block that would hold `h`, `None` when `h` is below the first record.
    fn block_of(&self, h: u128) -> Option<usize> {
        let Repr::Disk { index, .. } = &self.repr else {
            return None;
        };
        index.partition_point(|&first| first <= h).checked_sub(1)
    }

    /// Read up to `count` records from record `first` on (fewer at the end of the file) into `buf`;
    /// returns the bytes read.
    fn read_records(&self, first: u64, count: usize, buf: &mut [u8]) -> io::Result<usize> {
        let Repr::Disk {
            file, path, len, ..
        } = &self.repr
        else {
            return Ok(0);
        };
        let n = (len.saturating_sub(first).min(count as u64) as usize) * RECORD;
        file.read_exact_at(&mut buf[..n], first * RECORD as u64)
            .map_err(|e| err(e, "read", path))?;
        Ok(n)
    }
}

/// Binary search of `h` in sorted records.
fn search(bytes: &[u8], h: u128) -> bool {
    let (mut lo, mut hi) = (0, bytes.len() / RECORD);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match record(bytes, mid).cmp(&h) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return true,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static N: AtomicU64 = AtomicU64::new(0);
            let p = std::env::temp_dir().join(format!(
                "ferry-keyset-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&p);
            TempDir(p)
        }

        fn files(&self) -> Vec<String> {
            match fs::read_dir(&self.0) {
                Ok(rd) => rd
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect(),
                Err(_) => Vec::new(),
            }
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn key(i: u64) -> Vec<u8> {
        format!("key:{i}").into_bytes()
    }

    #[test]
    fn send_sync() {
        fn check<T: Send + Sync>() {}
        fn send<T: Send>() {}
        check::<KeySet>();
        send::<KeySetBuilder>();
    }

    #[test]
    fn small_set_in_memory() {
        let dir = TempDir::new("small");
        let mut b = KeySetBuilder::new(&dir.0, "small", 1 << 20);
        let bin: &[u8] = &[0, 255, b'\r', b'\n', 0];
        b.insert(0, b"a").unwrap();
        b.insert(0, b"").unwrap();
        b.insert(1, b"b").unwrap();
        b.insert(0, bin).unwrap();
        b.insert(0, b"a").unwrap();
        b.insert(7, b"same").unwrap();
        b.insert(8, b"same").unwrap();
        assert_eq!(b.inserted(), 7);
        let s = b.finish().unwrap();
        assert_eq!(s.len(), 6);
        assert!(!s.is_empty());
        assert!(s.path().is_none());
        assert!(
            dir.files().is_empty(),
            "a set that never spilled writes no file"
        );
        let present: [(u32, &[u8]); 6] = [
            (0, b"a"),
            (0, b""),
            (1, b"b"),
            (0, bin),
            (7, b"same"),
            (8, b"same"),
        ];
        for (db, k) in present {
            assert!(s.contains(db, k).unwrap(), "{db} {k:?}");
        }
        let absent: [(u32, &[u8]); 6] = [
            (1, b"a"),
            (1, b""),
            (0, b"b"),
            (0, &bin[..4]),
            (9, b"same"),
            (0, b"ab"),
        ];
        for (db, k) in absent {
            assert!(!s.contains(db, k).unwrap(), "{db} {k:?}");
        }
        let batch: [(u32, &[u8]); 4] = [(0, b"a"), (1, b"a"), (0, b""), (8, b"same")];
        let many = s.contains_many(&batch).unwrap();
        assert_eq!(many, [true, false, true, true]);

        let empty = KeySetBuilder::new(&dir.0, "empty", 0).finish().unwrap();
        assert!(empty.is_empty());
        assert!(!empty.contains(0, b"").unwrap());
    }

    /// Every inserted key is found, as many others are not, `contains_many` agrees, files go on drop.
    fn check_spilled(dir: &TempDir, s: &KeySet, n: u64) {
        assert_eq!(s.len(), n);
        assert!(s.path().is_some());
        for i in 0..n {
            assert!(s.contains((i % 3) as u32, &key(i)).unwrap(), "key {i}");
        }
        let mut false_positives = 0;
        for i in n..2 * n {
            false_positives += s.contains((i % 3) as u32, &key(i)).unwrap() as u32;
        }
        // The same keys in another db are other pairs.
        for i in 0..n / 4 {
            false_positives += s.contains((i % 3) as u32 + 1, &key(i)).unwrap() as u32;
        }
        assert_eq!(false_positives, 0);
        // Uniform hashes: the interpolated window always holds the position.
        assert_eq!(s.window_misses.load(Ordering::Relaxed), 0);
        // A mixed batch in a scrambled order.
        let keys: Vec<(u32, Vec<u8>)> = (0..20_000u64)
            .map(|j| (j * 7919) % (2 * n))
            .map(|i| ((i % 3) as u32, key(i)))
            .collect();
        let items: Vec<(u32, &[u8])> = keys.iter().map(|(db, k)| (*db, &k[..])).collect();
        let many = s.contains_many(&items).unwrap();
        let one_by_one: Vec<bool> = items
            .iter()
            .map(|(db, k)| s.contains(*db, k).unwrap())
            .collect();
        assert_eq!(many, one_by_one);
        assert!(many.iter().any(|&b| b) && many.iter().any(|&b| !b));
        assert!(
            dir.files().iter().all(|f| f.ends_with(".set")),
            "{:?}",
            dir.files()
        );
        assert_eq!(dir.files().len(), 1);
    }

    #[test]
    fn spills_merges_and_removes_its_files() {
        let dir = TempDir::new("spill");
        let mem = 64 << 10;
        let n = 200_000u64;
        let mut b = KeySetBuilder::new(&dir.0, "snap/../shot:1", mem);
        for i in 0..n {
            b.insert((i % 3) as u32, &key(i)).unwrap();
            // Duplicates, near and far.
            if i % 4 == 0 {
                b.insert((i / 2 % 3) as u32, &key(i / 2)).unwrap();
            }
            assert!(b.memory_bytes() <= mem);
        }
        assert_eq!(b.inserted(), n + n / 4);
        assert!(
            b.runs() > FAN_IN,
            "{} runs: the merge must take two passes",
            b.runs()
        );
        assert!(
            b.peak_memory_bytes() <= mem,
            "{} > {mem}",
            b.peak_memory_bytes()
        );
        assert!(b.peak_memory_bytes() > mem / 2, "both buffers were in use");
        assert!(
            dir.files().iter().all(|f| f.starts_with("snap____shot_1.")),
            "{:?}",
            dir.files()
        );
        let s = b.finish().unwrap();
        assert!(s.memory_bytes() <= (n as usize / BLOCK_RECORDS + 1) * RECORD);
        check_spilled(&dir, &s, n);
        drop(s);
        assert!(dir.files().is_empty(), "{:?}", dir.files());
    }

    /// A set file written by hand: block 0 crowded at its start, so interpolated windows miss and lookups
    /// read the whole block; block 1 evenly spread and partial.
    #[test]
    fn lookups_fall_back_to_the_block_when_the_window_misses() {
        let dir = TempDir::new("skew");
        fs::create_dir_all(&dir.0).unwrap();
        let mut recs: Vec<u128> = (1..BLOCK_RECORDS as u128).collect();
        recs.push(u128::MAX / 4);
        recs.extend((0..700u128).map(|i| u128::MAX / 2 + i * (1 << 100)));
        let path = dir.0.join("skew.set");
        let file = create(&path).unwrap();
        let mut out = RecordWriter::new(&file, &path, 0);
        recs.iter().for_each(|&h| out.push(h).unwrap());
        out.flush().unwrap();
        drop(out);
        let s = KeySet {
            hasher: KeyHasher::new(),
            window_misses: AtomicU64::new(0),
            repr: Repr::Disk {
                file,
                path: path.clone(),
                index: vec![recs[0], recs[BLOCK_RECORDS]],
                last: *recs.last().unwrap(),
                len: recs.len() as u64,
            },
            _files: Files(vec![path]),
        };
        let absent = [
            0,
            BLOCK_RECORDS as u128,
            u128::MAX / 4 - 1,
            u128::MAX / 4 + 1,
            u128::MAX / 2 - 1,
            u128::MAX / 2 + 1,
            u128::MAX / 2 + 650 * (1 << 100) + 1,
            u128::MAX,
        ];
        for &h in &recs {
            assert!(s.lookup(h).unwrap(), "{h:#x}");
        }
        for &h in &absent {
            assert!(!s.lookup(h).unwrap(), "{h:#x}");
        }
        assert!(s.window_misses.load(Ordering::Relaxed) > 100);
        // The same through the sorted path: single lookups per block and groups.
        let mut all: Vec<(u128, usize)> = recs
            .iter()
            .chain(&absent)
            .enumerate()
            .map(|(i, &h)| (h, i))
            .collect();
        all.sort_unstable();
        let mut out = vec![false; all.len()];
        s.lookup_sorted(&all, &mut out).unwrap();
        assert!(out[..recs.len()].iter().all(|&b| b));
        assert!(out[recs.len()..].iter().all(|&b| !b));
        let singles = [
            (1000, 0),
            (u128::MAX / 4, 1),
            (u128::MAX / 2 + 3 * (1 << 100), 2),
        ];
        let mut out = vec![false; 3];
        s.lookup_sorted(&singles, &mut out).unwrap();
        assert_eq!(out, [true, true, true]);
        drop(s);
        assert!(dir.files().is_empty());
    }

    #[test]
    fn multi_pass_merge() {
        let dir = TempDir::new("passes");
        let n = 100_000u64;
        // 1024 records per buffer: about 195 runs; fan-in 3: four passes before the last.
        let mut b = KeySetBuilder::new(&dir.0, "passes", 0).with_fan_in(3);
        for i in 0..n {
            b.insert((i % 3) as u32, &key(i)).unwrap();
            b.insert((i % 3) as u32, &key(i)).unwrap();
        }
        assert!(b.runs() > 27, "{}", b.runs());
        assert!(b.peak_memory_bytes() <= 2 * MIN_BUFFER_RECORDS * RECORD);
        let s = b.finish().unwrap();
        check_spilled(&dir, &s, n);
        drop(s);
        assert!(dir.files().is_empty(), "{:?}", dir.files());
    }

    #[test]
    fn edge_sizes() {
        // 1024-record buffers: two full runs, four, one run and one key, two runs and one key.
        for n in [2048u64, 2 * 2048, 1025, 2049] {
            let dir = TempDir::new("edges");
            let mut b = KeySetBuilder::new(&dir.0, "edges", 2 * 1024 * RECORD);
            for i in 0..n {
                b.insert((i % 3) as u32, &key(i)).unwrap();
            }
            let s = b.finish().unwrap();
            check_spilled(&dir, &s, n);
        }
    }

    #[test]
    fn drop_without_finish_removes_files() {
        let dir = TempDir::new("unfinished");
        let mut b = KeySetBuilder::new(&dir.0, "unfinished", 0);
        for i in 0..10_000 {
            b.insert(0, &key(i)).unwrap();
        }
        assert!(!dir.files().is_empty());
        drop(b);
        assert!(dir.files().is_empty(), "{:?}", dir.files());
    }

    #[test]
    fn removes_stale_files_of_other_processes_only() {
        let dir = TempDir::new("stale");
        fs::create_dir_all(&dir.0).unwrap();
        let me = std::process::id();
        let other = if me == 1 { 2 } else { 1 };
        let stale = [
            format!("stale.{other}.0.runs0"),
            format!("stale.{other}.3.set"),
        ];
        let kept = [
            format!("stale.{me}.999999.runs1"),
            format!("stale2.{other}.0.runs0"),
            format!("stale.{other}.0.txt"),
            "stale.x.0.set".to_string(),
        ];
        for f in stale.iter().chain(&kept) {
            fs::write(dir.0.join(f), b"x").unwrap();
        }
        let mut b = KeySetBuilder::new(&dir.0, "stale", 0);
        for i in 0..5_000 {
            b.insert(0, &key(i)).unwrap();
        }
        let files = dir.files();
        assert!(stale.iter().all(|f| !files.contains(f)), "{files:?}");
        assert!(kept.iter().all(|f| files.contains(f)), "{files:?}");
        drop(b);
        let mut left = dir.files();
        left.sort();
        let mut kept = kept.to_vec();
        kept.sort();
        assert_eq!(left, kept);
    }

    #[test]
    fn errors_name_the_file_and_operation() {
        let dir = TempDir::new("errors");
        fs::create_dir_all(&dir.0).unwrap();
        let blocker = dir.0.join("not-a-dir");
        fs::write(&blocker, b"x").unwrap();
        let under = blocker.join("keys");
        let mut b = KeySetBuilder::new(&under, "e", 0);
        let e = (0..5_000)
            .try_for_each(|i| b.insert(0, &key(i)))
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("create directory") && msg.contains(&*under.to_string_lossy()),
            "{msg}"
        );
    }
}
