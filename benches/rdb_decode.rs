//! RDB decoding throughput (MB/s of file):
//! - `rdb_fixtures`: every shared fixture in `../shared/fixtures/rdb/` (or `$FERRY_FIXTURES/rdb`) that
//!   decodes cleanly, one after the other (each file with its own decoder); when the folder is absent, a
//!   counted skip (below), or a panic under `FERRY_REQUIRE_FIXTURES=1`;
//! - `rdb_generated`: one large RDB written by a real `redis-server` (~200k keys of every type and
//!   encoding: `DEBUG POPULATE` strings plus pipelined RPUSH/HSET/SADD/ZADD/XADD/SET over a raw socket, then
//!   `SAVE`), or, when no redis-server can be started, a synthetic file of plain encodings built here.
//!
//! Each is decoded as one whole buffer (`whole`), fed in 16 KiB pushes as a socket or file reader would
//! (`push_16k`), whole with `decode_value` on every entry (`whole+decode_value`), and for the generated
//! file also with 64 KiB big-value limits so every larger value goes through the BigStart/BigChunk path
//! (`whole_big_64k`).
//!
//! `cargo test --all-targets` (scripts/test.sh) runs each benchmark once as a test; what it could not run
//! is recorded like the tests' skips: a `SKIP …` line on stderr, appended to `FERRY_SKIP_LOG` when set.
//!
//! Run: `cargo bench --bench rdb_decode -- --warm-up-time 1 --measurement-time 5`
//! `FERRY_BENCH_SYNTHETIC=1` forces the synthetic file; `FERRY_REDIS_SERVER` names the server binary.

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ferry::rdb::{crc64, decode_value, Decoder, DecoderOptions, Event};
use rand::{rngs::StdRng, Rng, SeedableRng};

// ------------------------------------------------------------------------------------------- decoding

/// What one pass saw: events, entries, and entries whose value `decode_value` decoded.
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
struct Tally {
    events: u64,
    entries: u64,
    values: u64,
}

fn on_event(ev: Event, values: bool, t: &mut Tally) {
    t.events += 1;
    if let Event::Entry(e) = &ev {
        t.entries += 1;
        if values {
            let v = decode_value(e.rdb_type, &e.payload).expect("decodable value");
            black_box(&v);
            t.values += 1;
        }
    }
    black_box(ev);
}

/// Decode one buffer holding a whole file.
fn decode_whole(mut buf: BytesMut, opts: &DecoderOptions, values: bool) -> Tally {
    let mut d = Decoder::new(opts.clone());
    let mut t = Tally::default();
    while let Some(ev) = d.decode(&mut buf).expect("valid RDB") {
        on_event(ev, values, &mut t);
    }
    d.finish().expect("complete RDB");
    t
}

/// Decode a file arriving in 16 KiB pieces, calling the decoder only once it has what it said it needs
/// (as ferry's own feeder does).
fn decode_pushed(data: &[u8], opts: &DecoderOptions) -> Tally {
    let mut d = Decoder::new(opts.clone());
    let mut buf = BytesMut::with_capacity(256 * 1024);
    let mut t = Tally::default();
    for piece in data.chunks(16 * 1024) {
        buf.extend_from_slice(piece);
        if buf.len() < d.needed() {
            continue;
        }
        while let Some(ev) = d.decode(&mut buf).expect("valid RDB") {
            on_event(ev, false, &mut t);
            if buf.len() < d.needed() {
                break;
            }
        }
    }
    d.finish().expect("complete RDB");
    t
}

/// Register the benchmarks of one input: `files` are decoded one after the other per iteration.
fn bench_input(c: &mut Criterion, group: &str, files: &[Vec<u8>], big_path: bool) {
    let total: u64 = files.iter().map(|f| f.len() as u64).sum();
    let opts = DecoderOptions::default();
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Bytes(total));
    g.sample_size(10);
    g.bench_function("whole", |b| {
        b.iter_batched(
            || {
                files
                    .iter()
                    .map(|f| BytesMut::from(&f[..]))
                    .collect::<Vec<_>>()
            },
            |bufs| {
                for buf in bufs {
                    black_box(decode_whole(buf, &opts, false));
                }
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("push_16k", |b| {
        b.iter(|| {
            for f in files {
                black_box(decode_pushed(f, &opts));
            }
        })
    });
    g.bench_function("whole+decode_value", |b| {
        b.iter_batched(
            || {
                files
                    .iter()
                    .map(|f| BytesMut::from(&f[..]))
                    .collect::<Vec<_>>()
            },
            |bufs| {
                for buf in bufs {
                    black_box(decode_whole(buf, &opts, true));
                }
            },
            BatchSize::LargeInput,
        )
    });
    if big_path {
        let small = DecoderOptions {
            max_entry_bytes: 64 * 1024,
            ..DecoderOptions::default()
        };
        g.bench_function("whole_big_64k", |b| {
            b.iter_batched(
                || {
                    files
                        .iter()
                        .map(|f| BytesMut::from(&f[..]))
                        .collect::<Vec<_>>()
                },
                |bufs| {
                    for buf in bufs {
                        black_box(decode_whole(buf, &small, false));
                    }
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

// ------------------------------------------------------------------------------------------- fixtures

/// The fixture files that decode cleanly (and whose every entry `decode_value` decodes), or why none.
fn fixture_files() -> Result<Vec<(PathBuf, Vec<u8>)>, String> {
    let dir = std::env::var_os("FERRY_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"))
        .join("rdb");
    let origins = std::fs::read_dir(&dir)
        .map_err(|e| format!("fixtures folder {} is absent ({e})", dir.display()))?;
    let mut paths = Vec::new();
    for o in origins.flatten() {
        for f in std::fs::read_dir(o.path()).into_iter().flatten().flatten() {
            if f.path().extension().is_some_and(|e| e == "rdb") {
                paths.push(f.path());
            }
        }
    }
    paths.sort();
    let mut files = Vec::new();
    let mut refused = 0;
    for p in paths {
        let Ok(data) = std::fs::read(&p) else {
            continue;
        };
        let ok = std::panic::catch_unwind(|| {
            decode_whole(BytesMut::from(&data[..]), &DecoderOptions::default(), true)
        })
        .is_ok();
        if ok {
            files.push((p, data));
        } else {
            refused += 1;
        }
    }
    if files.is_empty() {
        return Err(format!("no fixture in {} decodes", dir.display()));
    }
    eprintln!(
        "fixtures: {} files decode cleanly ({} bytes), {refused} refused ones left out",
        files.len(),
        files.iter().map(|f| f.1.len()).sum::<usize>()
    );
    Ok(files)
}

fn bench_fixtures(c: &mut Criterion) {
    // The refused fixtures panic inside catch_unwind while being sorted out: keep that quiet.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let files = fixture_files();
    std::panic::set_hook(hook);
    match files {
        Ok(files) => {
            let data: Vec<Vec<u8>> = files.into_iter().map(|f| f.1).collect();
            bench_input(c, "rdb_fixtures", &data, false);
        }
        Err(why) if std::env::var("FERRY_REQUIRE_FIXTURES").is_ok_and(|v| v == "1") => {
            panic!("rdb_fixtures: {why}, and FERRY_REQUIRE_FIXTURES=1 requires the fixtures")
        }
        Err(why) => skip("rdb_decode::rdb_fixtures", &why),
    }
}

/// A benchmark that could not run as written, recorded like a test's skip (`support::skip` in
/// tests/integration): `SKIP <name>: <reason>` on stderr and appended to `FERRY_SKIP_LOG` when set, which
/// scripts/test.sh counts (and fails on under CI=true).
fn skip(name: &str, reason: &str) {
    let line = format!("SKIP {name}: {reason}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Some(path) = std::env::var_os("FERRY_SKIP_LOG") {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .unwrap_or_else(|e| panic!("cannot append to FERRY_SKIP_LOG: {e}"));
    }
}

// ------------------------------------------------------------------------------ generated, real server

/// A redis-server killed by PID when dropped (also when generation fails half-way).
struct Server {
    child: Child,
    dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn resp(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// A raw RESP connection that sends commands in pipelined batches and checks every reply is not an error.
/// Every command used here answers with one line (`+OK`, `:n`, `$n` + the ID for XADD).
struct Conn {
    s: TcpStream,
    out: Vec<u8>,
    pending: usize,
    inbuf: Vec<u8>,
}

impl Conn {
    fn cmd(&mut self, args: &[&[u8]]) -> Result<(), String> {
        resp(&mut self.out, args);
        self.pending += 1;
        if self.pending >= 2000 || self.out.len() > 1 << 20 {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), String> {
        let io = |e: std::io::Error| format!("redis-server connection: {e}");
        self.s.write_all(&self.out).map_err(io)?;
        self.out.clear();
        let mut chunk = [0u8; 64 * 1024];
        while self.pending > 0 {
            // Whole lines: replies are `+..`, `-..`, `:..`, or `$n` followed by one line.
            while let Some(nl) = self.inbuf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.inbuf.drain(..nl + 2).collect();
                match line[0] {
                    b'-' => {
                        return Err(format!(
                            "redis-server refused a command: {}",
                            String::from_utf8_lossy(&line)
                        ))
                    }
                    b'$' => continue, // the ID line follows
                    _ => {}
                }
                self.pending -= 1;
                if self.pending == 0 {
                    break;
                }
            }
            if self.pending == 0 {
                break;
            }
            let n = self.s.read(&mut chunk).map_err(io)?;
            if n == 0 {
                return Err("redis-server closed the connection".into());
            }
            self.inbuf.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    }
}

/// Start a redis-server, fill it with ~200k keys of every type and size class, SAVE, and return the
/// dump. `Err` says why not (no binary, no start, ...).
fn generate_with_server() -> Result<Vec<u8>, String> {
    let bin = std::env::var_os("FERRY_REDIS_SERVER").unwrap_or_else(|| "redis-server".into());
    let dir = std::env::temp_dir().join(format!("ferry-bench-rdb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let port = free_port().map_err(|e| format!("no free port: {e}"))?;
    let child = Command::new(&bin)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no", "--enable-debug-command", "yes"])
        .arg("--dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.to_string_lossy()))?;
    let mut server = Server {
        child,
        dir: dir.clone(),
    };
    // Ready when it answers PING (poll the connect; give up after 10 s or if it exited).
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = loop {
        if let Ok(Some(st)) = server.child.try_wait() {
            return Err(format!("redis-server exited at start ({st})"));
        }
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let mut r = [0u8; 7];
            if s.write_all(b"PING\r\n").is_ok()
                && s.read_exact(&mut r).is_ok()
                && &r == b"+PONG\r\n"
            {
                break s;
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "redis-server not answering on port {port} after 10 s"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut c = Conn {
        s,
        out: Vec::new(),
        pending: 0,
        inbuf: Vec::new(),
    };
    let t0 = Instant::now();
    fill(&mut c)?;
    c.cmd(&[b"SAVE"])?;
    c.flush()?;
    let data = std::fs::read(dir.join("dump.rdb")).map_err(|e| format!("no dump.rdb: {e}"))?;
    eprintln!(
        "generated: {} bytes of RDB from redis-server (pid {}) in {:.1?}",
        data.len(),
        server.child.id(),
        t0.elapsed()
    );
    drop(server);
    Ok(data)
}

/// ~200k keys: 100k small strings from DEBUG POPULATE (LZF-compressed: zero padding), some large
/// incompressible and compressible strings, and ~25k each of small lists, hashes, sets (ints and
/// strings) and sorted sets in their compact encodings, with a few dozen big ones of each in the plain
/// encodings, plus small streams.
fn fill(c: &mut Conn) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(2024);
    c.cmd(&[b"DEBUG", b"POPULATE", b"100000", b"str", b"100"])?;
    let word = |rng: &mut StdRng| -> Vec<u8> {
        let n = rng.gen_range(3..24);
        (0..n).map(|_| rng.gen_range(b'a'..=b'z')).collect()
    };
    for i in 0..500 {
        let mut v = vec![0u8; 4096];
        rng.fill(&mut v[..]);
        c.cmd(&[b"SET", format!("blob:{i}").as_bytes(), &v])?;
    }
    for i in 0..20 {
        let v = format!("{i} all work and no play makes ferry a dull tool; ").repeat(5000);
        c.cmd(&[b"SET", format!("text:{i}").as_bytes(), v.as_bytes()])?;
    }
    for i in 0..25_000u32 {
        let big = i % 500 == 0;
        let n = if big { 5_000 } else { rng.gen_range(1..20) };
        let key = format!("list:{i}");
        let mut args: Vec<Vec<u8>> = vec![b"RPUSH".to_vec(), key.into_bytes()];
        for j in 0..n {
            args.push(if j % 3 == 0 {
                rng.gen_range(0..1_000_000i64).to_string().into_bytes()
            } else {
                word(&mut rng)
            });
        }
        let refs: Vec<&[u8]> = args.iter().map(|a| &a[..]).collect();
        c.cmd(&refs)?;
    }
    for i in 0..25_000u32 {
        let big = i % 500 == 0;
        let n = if big { 2_000 } else { rng.gen_range(1..16) };
        let key = format!("hash:{i}");
        let mut args: Vec<Vec<u8>> = vec![b"HSET".to_vec(), key.into_bytes()];
        for j in 0..n {
            args.push(format!("field:{j}").into_bytes());
            args.push(word(&mut rng));
        }
        let refs: Vec<&[u8]> = args.iter().map(|a| &a[..]).collect();
        c.cmd(&refs)?;
    }
    for i in 0..25_000u32 {
        let big = i % 500 == 0;
        let n = if big { 3_000 } else { rng.gen_range(1..12) };
        let key = format!("set:{i}");
        let mut args: Vec<Vec<u8>> = vec![b"SADD".to_vec(), key.into_bytes()];
        for _ in 0..n {
            // Every other small set holds only integers (intset).
            args.push(if i % 2 == 0 {
                rng.gen_range(0..10_000_000i64).to_string().into_bytes()
            } else {
                word(&mut rng)
            });
        }
        let refs: Vec<&[u8]> = args.iter().map(|a| &a[..]).collect();
        c.cmd(&refs)?;
    }
    for i in 0..25_000u32 {
        let big = i % 500 == 0;
        let n = if big { 2_000 } else { rng.gen_range(1..12) };
        let key = format!("zset:{i}");
        let mut args: Vec<Vec<u8>> = vec![b"ZADD".to_vec(), key.into_bytes()];
        for _ in 0..n {
            args.push(format!("{:.3}", rng.gen_range(-1e6..1e6f64)).into_bytes());
            args.push(word(&mut rng));
        }
        let refs: Vec<&[u8]> = args.iter().map(|a| &a[..]).collect();
        c.cmd(&refs)?;
    }
    for i in 0..200u32 {
        let key = format!("stream:{i}");
        for j in 0..50 {
            let v = word(&mut rng);
            c.cmd(&[
                b"XADD",
                key.as_bytes(),
                b"*",
                b"n",
                j.to_string().as_bytes(),
                b"v",
                &v,
            ])?;
        }
    }
    c.flush()
}

// ------------------------------------------------------------------------------- generated, synthetic

fn put_len(out: &mut Vec<u8>, n: u64) {
    if n < 1 << 6 {
        out.push(n as u8);
    } else if n < 1 << 14 {
        out.push(0x40 | (n >> 8) as u8);
        out.push(n as u8);
    } else if n <= u32::MAX as u64 {
        out.push(0x80);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        out.push(0x81);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    put_len(out, s.len() as u64);
    out.extend_from_slice(s);
}

/// `s` (ASCII, at least 2 bytes) as an LZF string: a literal first byte, then back references of distance
/// 1 over runs of the same byte and literals elsewhere. Valid LZF, if not the best compression.
fn put_lzf(out: &mut Vec<u8>, s: &[u8]) {
    let mut z = Vec::new();
    let mut i = 0;
    let mut lit: Vec<u8> = Vec::new();
    let flush = |z: &mut Vec<u8>, lit: &mut Vec<u8>| {
        for run in lit.chunks(32) {
            z.push(run.len() as u8 - 1);
            z.extend_from_slice(run);
        }
        lit.clear();
    };
    while i < s.len() {
        let mut r = 0;
        while i > 0 && i + r < s.len() && s[i + r] == s[i - 1] && r < 264 {
            r += 1;
        }
        if r >= 3 {
            flush(&mut z, &mut lit);
            let len = r - 2; // stored length
            if len < 7 {
                z.push((len as u8) << 5);
            } else {
                z.push(7 << 5);
                z.push((len - 7) as u8);
            }
            z.push(0); // distance 1
            i += r;
        } else {
            lit.push(s[i]);
            i += 1;
        }
    }
    flush(&mut z, &mut lit);
    out.push(0xC3);
    put_len(out, z.len() as u64);
    put_len(out, s.len() as u64);
    out.extend_from_slice(&z);
}

/// A version-9 RDB of plain encodings (strings raw, integer and LZF; lists, sets and hashes as plain
/// element sequences; sorted sets with binary scores), ~200k keys.
fn generate_synthetic() -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(2024);
    let mut out = b"REDIS0009".to_vec();
    out.push(0xFA);
    put_str(&mut out, b"redis-ver");
    put_str(&mut out, b"6.2.0");
    out.extend_from_slice(&[0xFE, 0x00, 0xFB]);
    put_len(&mut out, 200_000);
    put_len(&mut out, 0);
    let word = |rng: &mut StdRng| -> Vec<u8> {
        let n = rng.gen_range(3..24);
        (0..n).map(|_| rng.gen_range(b'a'..=b'z')).collect()
    };
    for i in 0..100_000u32 {
        out.push(0);
        put_str(&mut out, format!("str:{i}").as_bytes());
        match i % 4 {
            0 => {
                out.push(0xC2);
                out.extend_from_slice(&(i as i32 * 7).to_le_bytes());
            }
            1 => put_lzf(&mut out, format!("value:{i}{}", "_".repeat(90)).as_bytes()),
            _ => put_str(&mut out, &word(&mut rng).repeat(5)),
        }
    }
    for i in 0..25_000u32 {
        let n = if i % 500 == 0 {
            5_000
        } else {
            rng.gen_range(1..20)
        };
        for (t, prefix) in [(1u8, "list"), (2, "set"), (4, "hash"), (5, "zset")] {
            out.push(t);
            put_str(&mut out, format!("{prefix}:{i}").as_bytes());
            put_len(&mut out, n);
            for j in 0..n {
                match t {
                    4 => {
                        put_str(&mut out, format!("field:{j}").as_bytes());
                        put_str(&mut out, &word(&mut rng));
                    }
                    5 => {
                        put_str(&mut out, format!("m{j}").as_bytes());
                        out.extend_from_slice(&rng.gen_range(-1e6..1e6f64).to_le_bytes());
                    }
                    2 => put_str(&mut out, format!("m{j}").as_bytes()),
                    _ => put_str(&mut out, &word(&mut rng)),
                }
            }
        }
    }
    out.push(0xFF);
    let crc = crc64::checksum(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn bench_generated(c: &mut Criterion) {
    let forced = std::env::var_os("FERRY_BENCH_SYNTHETIC").is_some();
    let data = if forced {
        eprintln!("generated: FERRY_BENCH_SYNTHETIC is set: using the synthetic file");
        generate_synthetic()
    } else {
        match generate_with_server() {
            Ok(d) => d,
            Err(why) => {
                skip(
                    "rdb_decode::rdb_generated",
                    &format!("no real server ({why}): the synthetic file stands in"),
                );
                generate_synthetic()
            }
        }
    };
    let t = decode_whole(BytesMut::from(&data[..]), &DecoderOptions::default(), true);
    assert_eq!(
        decode_pushed(&data, &DecoderOptions::default()),
        Tally { values: 0, ..t }
    );
    eprintln!(
        "generated: {} bytes, {} entries, {:.0} bytes/entry",
        data.len(),
        t.entries,
        data.len() as f64 / t.entries as f64
    );
    bench_input(c, "rdb_generated", &[data], true);
}

/// CRC-64/REDIS alone over 8 MiB: the checksum every decoded byte and every RESTORE payload pays.
fn bench_crc64(c: &mut Criterion) {
    let data: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut g = c.benchmark_group("crc64");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("checksum_8MiB", |b| b.iter(|| crc64::checksum(&data)));
    g.finish();
}

criterion_group!(benches, bench_fixtures, bench_generated, bench_crc64);
criterion_main!(benches);
