//! Bad RDB input through the real binary, and the decoder's split-invariance over every fixture.
//!
//! `ferry sync --source rdb:FILE` on a truncated fixture, random bytes, a fixture with one flipped bit and a
//! valid header followed by garbage: each exits 1 within seconds, never panics, and says what is wrong and
//! at which byte offset. (Random bytes never reach the decoder: the precheck refuses a file without an RDB
//! magic first, and its message names that instead; the decoder's own verdict, "at offset 0", is checked
//! here through the library.)
//!
//! Decoder level: every fixture gives the same events and the same final verdict fed whole, in random
//! pieces (seeded), and byte by byte (files under 64 KiB), with the default options and with tiny limits
//! that push values through the big-value path.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ferry::rdb::{Decoder, DecoderOptions, Event, RdbError};
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::support::ferry_proc::{assert_log_clean, ferry_command};
use crate::support::*;

/// The fixture the CLI cases are cut from: RDB 10 (loads into the 7.0 target as is), a non-zero checksum,
/// strings, lists, sets, sorted sets, hashes and streams in ~9 KB.
const FIXTURE: &str = "rdb/leonchen83__redis-replicator/dumpV10.rdb";

struct Outcome {
    code: Option<i32>,
    stderr: String,
    took: Duration,
}

/// `ferry sync --source rdb:FILE --target TARGET --state-dir TMP`, to its exit (killed after 20 s).
fn sync_file(file: &Path, target: &RedisServer) -> Outcome {
    let state = TempDir::new("bad-rdb-state");
    let log = state.path().join("stderr.log");
    let start = Instant::now();
    let mut child = ferry_command()
        .args(["sync", "--source"])
        .arg(format!("rdb:{}", file.display()))
        .args(["--target", &target.url(), "--state-dir"])
        .arg(state.path().join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start ferry");
    let mut status = None;
    wait_until("ferry exits on bad input", Duration::from_secs(20), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    Outcome {
        code: status.and_then(|s| s.code()),
        stderr: std::fs::read_to_string(&log).unwrap_or_default(),
        took: start.elapsed(),
    }
}

/// The byte offsets a message names ("offset N").
fn offsets(msg: &str) -> Vec<u64> {
    msg.split("offset ")
        .skip(1)
        .filter_map(|s| {
            let d: String = s.chars().take_while(char::is_ascii_digit).collect();
            d.parse().ok()
        })
        .collect()
}

/// Run one bad file: exit 1, quickly, no panic, a `ferry:` line naming one of `problems` and an offset
/// inside the file. The log may say the source failed (the point of the test) and the WARN/ERROR lines
/// that contain one of `allowed`, nothing else.
fn expect_refused(
    case: &str,
    data: &[u8],
    problems: &[&str],
    allowed: &[&str],
    target: &RedisServer,
    dir: &Path,
) -> String {
    let mut c = target.client();
    c.ok(&["FLUSHALL"]);
    let safe: String = case
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let file = dir.join(format!("{safe}.rdb"));
    std::fs::write(&file, data).unwrap();
    let out = sync_file(&file, target);
    let allowed: Vec<&str> = ["source failed"]
        .into_iter()
        .chain(allowed.iter().copied())
        .collect();
    assert_log_clean(case, &out.stderr, &allowed);
    let line = out
        .stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("ferry:"))
        .unwrap_or("")
        .to_string();
    assert_eq!(
        out.code,
        Some(1),
        "{case}: exit code; stderr:\n{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("panicked"),
        "{case}: panicked:\n{}",
        out.stderr
    );
    assert!(
        out.took < Duration::from_secs(10),
        "{case}: took {:?}",
        out.took
    );
    assert!(
        problems.iter().any(|p| line.contains(p)),
        "{case}: the message names none of {problems:?}: {line:?}\n{}",
        out.stderr
    );
    eprintln!("{case}: {line}");
    let offs = offsets(&line);
    assert!(!offs.is_empty(), "{case}: no byte offset in {line:?}");
    assert!(
        offs.iter().all(|&o| o <= data.len() as u64),
        "{case}: offset beyond the file's {} bytes: {line:?}",
        data.len()
    );
    line
}

#[test]
fn bad_rdb_files_exit_1_naming_the_problem_and_offset() {
    let Some(fixtures) = fixtures_dir() else {
        return;
    };
    let good = std::fs::read(fixtures.join(FIXTURE)).unwrap();
    let target = RedisServer::start(&[]);
    let dir = TempDir::new("bad-rdb");
    let mut rng = StdRng::seed_from_u64(0xbad_0db);

    // (a) Truncated: right after the header, inside the first keys, in the middle, inside the last key,
    // on the EOF marker, inside the checksum.
    let n = good.len();
    for cut in [9, 10, 60, n / 3, n / 2, n - 40, n - 9, n - 8, n - 3] {
        let line = expect_refused(
            &format!("truncated at {cut}"),
            &good[..cut],
            &["truncated"],
            &[],
            &target,
            dir.path(),
        );
        assert!(
            offsets(&line).iter().all(|&o| o <= cut as u64),
            "truncated at {cut}: {line}"
        );
    }

    // (b) 4 KiB of random bytes: the precheck refuses it before anything is written.
    let mut noise = vec![0u8; 4096];
    rng.fill(&mut noise[..]);
    noise[0] = b'x'; // not an 'R' or 'V' by chance
    let mut c = target.client();
    c.ok(&["FLUSHALL"]);
    let file = dir.path().join("noise.rdb");
    std::fs::write(&file, &noise).unwrap();
    let out = sync_file(&file, &target);
    // Refused by the precheck: its verdict is the final message, not a log line.
    assert_log_clean("random bytes", &out.stderr, &[] as &[&str]);
    assert_eq!(out.code, Some(1), "random bytes: {}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    assert!(out.stderr.contains("not an RDB file"), "{}", out.stderr);
    assert_eq!(c.dbsize(), 0, "random bytes: something was written");
    // The decoder's own verdict on them names the offset.
    let mut d = Decoder::new(DecoderOptions::default());
    let e = d.decode(&mut BytesMut::from(&noise[..])).unwrap_err();
    assert!(matches!(e, RdbError::BadMagic { .. }), "{e}");
    assert!(e.to_string().contains("at offset 0"), "{e}");

    // (c) One flipped bit in the middle: the structure breaks, or the checksum does not match. Several
    // positions and bits, each its own run.
    for i in 0..4 {
        let mut bad = good.clone();
        let at = n / 2 + i * 97;
        bad[at] ^= 1 << (i * 3 % 8);
        expect_refused(
            &format!("bit flipped at {at}"),
            &bad,
            &[
                "checksum mismatch",
                "corrupt",
                "unknown",
                "truncated",
                "exceeds",
                "after the RDB EOF",
            ],
            &[],
            &target,
            dir.path(),
        );
    }

    // (d) A valid header, then garbage: straight after it, and after the start of a string key that claims
    // 2 GiB (read as a big value in pieces until the input runs out).
    let huge_string = b"REDIS0011\x00\x03key\x80\x7f\xff\xff\xff";
    for (i, header) in [&b"REDIS0011"[..], b"REDIS0009", b"VALKEY080", huge_string]
        .iter()
        .enumerate()
    {
        let mut bad = header.to_vec();
        let mut junk = vec![0u8; 512 + i * 1000];
        rng.fill(&mut junk[..]);
        bad.extend_from_slice(&junk);
        expect_refused(
            &format!(
                "garbage after {}{}",
                String::from_utf8_lossy(&header[..9]),
                if header.len() > 9 {
                    " and a 2 GiB string's head"
                } else {
                    ""
                }
            ),
            &bad,
            &["unknown", "corrupt", "truncated", "exceeds", "checksum"],
            // RDB 11 and VALKEY080 headers are newer than the 7.0 target: the precheck says their values
            // will be re-encoded.
            &["values will be re-encoded"],
            &target,
            dir.path(),
        );
    }
}

// ------------------------------------------------------------------------------------------ decoder level

/// Events, and the error that ended the input (`None`: the RDB ended cleanly).
type Decoded = (Vec<Event>, Option<RdbError>);

/// Decode `data` fed in pieces of the sizes `next` gives.
fn decode_in_pieces(
    data: &[u8],
    opts: &DecoderOptions,
    mut next: impl FnMut() -> usize,
) -> Decoded {
    let mut d = Decoder::new(opts.clone());
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut fed = 0;
    loop {
        loop {
            match d.decode(&mut buf) {
                // A clone: a BigChunk's Vec may carry spare capacity for the rest of its item's elements,
                // which thousands of kept chunks would multiply (the applier drops each one at once).
                Ok(Some(ev)) => out.push(ev.clone()),
                Ok(None) => break,
                Err(e) => return (out, Some(normal(e))),
            }
        }
        if fed == data.len() {
            return (out, d.finish().err().map(normal));
        }
        let end = (fed + next().max(1)).min(data.len());
        buf.extend_from_slice(&data[fed..end]);
        fed = end;
    }
}

/// The error, with what `BadMagic` quotes of the file cut to nothing: the decoder refuses at the first byte
/// that cannot start a magic, so it quotes as much as it had been given by then.
fn normal(e: RdbError) -> RdbError {
    match e {
        RdbError::BadMagic { .. } => RdbError::BadMagic {
            found: String::new(),
        },
        e => e,
    }
}

fn rdb_fixtures(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for origin in std::fs::read_dir(dir.join("rdb")).unwrap() {
        for f in std::fs::read_dir(origin.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            if p.extension().is_some_and(|e| e == "rdb") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

fn first_difference(a: &Decoded, b: &Decoded) -> String {
    for (i, (x, y)) in a.0.iter().zip(&b.0).enumerate() {
        if x != y {
            return format!("event {i}: {x:?}\n  vs {y:?}");
        }
    }
    format!(
        "{} vs {} events, end {:?} vs {:?}",
        a.0.len(),
        b.0.len(),
        a.1,
        b.1
    )
}

#[test]
fn every_fixture_decodes_the_same_whole_in_random_pieces_and_byte_by_byte() {
    let Some(dir) = fixtures_dir() else {
        return;
    };
    let default = DecoderOptions::default();
    // Tiny limits: nearly every value goes through BigStart/BigChunk/BigEnd, strings in 64-byte pieces
    // (somewhat larger ones for the few files of megabytes, to keep the test fast).
    let tiny = |len: usize| DecoderOptions {
        max_entry_bytes: if len > 1 << 20 { 4096 } else { 64 },
        chunk_elements: if len > 1 << 20 { 100 } else { 3 },
        ..DecoderOptions::default()
    };
    let files = rdb_fixtures(&dir);
    assert!(files.len() > 100, "only {} fixtures", files.len());
    let mut failures = Vec::new();
    let (mut clean, mut refused, mut bytewise) = (0, 0, 0);
    for (fi, file) in files.iter().enumerate() {
        let data = std::fs::read(file).unwrap();
        let name = file
            .strip_prefix(&dir)
            .unwrap_or(file)
            .display()
            .to_string();
        for (oname, opts) in [("default", &default), ("tiny", &tiny(data.len()))] {
            let whole = decode_in_pieces(&data, opts, || usize::MAX);
            if oname == "default" {
                if whole.1.is_none() {
                    clean += 1;
                } else {
                    refused += 1;
                }
            }
            let mut check = |how: &str, got: Decoded| {
                if got != whole {
                    failures.push(format!(
                        "{name} ({oname} options) {how}: {}",
                        first_difference(&whole, &got)
                    ));
                }
            };
            let mut rng = StdRng::seed_from_u64(0x5eed ^ fi as u64);
            // Mostly small pieces around item sizes, now and then a large one.
            let max = if data.len() > 1 << 20 { 1 << 16 } else { 700 };
            check(
                "random pieces",
                decode_in_pieces(&data, opts, || {
                    if rng.gen_ratio(1, 16) {
                        rng.gen_range(1..=max * 8)
                    } else {
                        rng.gen_range(1..=max)
                    }
                }),
            );
            if data.len() < 64 * 1024 {
                check("byte by byte", decode_in_pieces(&data, opts, || 1));
                if oname == "default" {
                    bytewise += 1;
                }
            }
        }
    }
    eprintln!(
        "{} fixtures: {clean} decode cleanly, {refused} are refused, {bytewise} also byte by byte",
        files.len()
    );
    assert!(clean > 100, "only {clean} fixtures decode cleanly");
    assert!(
        failures.is_empty(),
        "{} differences:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
