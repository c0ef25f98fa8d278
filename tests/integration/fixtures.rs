//! Every RDB fixture loads through `ferry sync --source rdb:PATH` into a real redis-server 7.0.15 target
//! and leaves exactly what redis-server itself holds after loading that file: same `DEBUG DIGEST` (keys,
//! values, expiries), same key count, same functions. Files redis-server refuses make ferry exit 1 with a
//! clear error, never a panic.

use std::path::{Path, PathBuf};

use crate::support::ferry_proc::{ferry_command, unexpected_log_lines};
use crate::support::*;

struct Outcome {
    code: i32,
    stderr: String,
}

fn run_ferry(args: &[String]) -> Outcome {
    let out = ferry_command().args(args).output().expect("run ferry");
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn load(file: &Path, target: &RedisServer) -> Outcome {
    let state = TempDir::new("state");
    run_ferry(&[
        "sync".into(),
        "--source".into(),
        format!("rdb:{}", file.display()),
        "--target".into(),
        target.url(),
        "--once".into(),
        "--state-dir".into(),
        state.path().display().to_string(),
    ])
}

fn fixture_files(dir: &Path) -> Vec<PathBuf> {
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

fn expected(file: &Path) -> Option<serde_json::Value> {
    let p = PathBuf::from(format!("{}.expected.json", file.display()));
    let text = std::fs::read_to_string(p).ok()?;
    Some(serde_json::from_str(&text).unwrap())
}

/// The guard of `support::ferry_proc` over one run, collected into `failures` like the test's other checks.
fn unexpected_log(name: &str, out: &Outcome, allowed: &[&str], failures: &mut Vec<String>) {
    let bad = unexpected_log_lines(&out.stderr, allowed);
    if !bad.is_empty() {
        failures.push(format!(
            "{name}: unexpected WARN/ERROR lines (allowed: {allowed:?}):\n  {}",
            bad.join("\n  ")
        ));
    }
}

fn reset(c: &mut Client) {
    c.ok(&["FLUSHALL"]);
    c.ok(&["FUNCTION", "FLUSH"]);
}

fn short(p: &Path) -> String {
    let n = p.components().count();
    p.components()
        .skip(n - 2)
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// Files a real server loads: ferry must produce the same digest.
#[test]
fn every_loadable_fixture_gives_the_servers_own_digest() {
    let Some(dir) = fixtures_dir() else { return };
    let target = RedisServer::start(&["--enable-debug-command", "yes"]);
    let mut c = target.client();
    let mut failures = Vec::new();
    let mut checked = 0;
    for file in fixture_files(&dir) {
        let Some(exp) = expected(&file) else { continue };
        if exp["load"] != "ok" {
            continue;
        }
        reset(&mut c);
        let out = load(&file, &target);
        let name = short(&file);
        // A file the server loads as it is: no warning at all.
        unexpected_log(&name, &out, &[], &mut failures);
        if out.code != 0 {
            failures.push(format!(
                "{name}: ferry exited {}: {}",
                out.code,
                out.stderr.lines().last().unwrap_or("")
            ));
            continue;
        }
        let digest = c.ok(&["DEBUG", "DIGEST"]).as_string();
        let want_digest = exp["debug_digest"].as_str().unwrap_or("");
        let keys: i64 = (0..16)
            .map(|db| {
                c.ok(&["SELECT", &db.to_string()]);
                c.dbsize()
            })
            .sum();
        c.ok(&["SELECT", "0"]);
        let want_keys = exp["key_count"].as_i64().unwrap_or(-1);
        if digest != want_digest || keys != want_keys {
            failures.push(format!("{name}: digest {digest} keys {keys}, redis-server had {want_digest} keys {want_keys}"));
        }
        let functions = c.ok(&["FUNCTION", "LIST"]).as_array().len();
        let want_functions = exp["functions"]
            .as_str()
            .map(|s| s.matches("'library_name'").count())
            .unwrap_or(0);
        if functions != want_functions {
            failures.push(format!(
                "{name}: {functions} function libraries, redis-server had {want_functions}"
            ));
        }
        checked += 1;
    }
    assert!(checked >= 60, "only {checked} loadable fixtures found");
    assert!(
        failures.is_empty(),
        "{} of {checked} fixtures differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Files redis-server refuses (corrupt on purpose, or needing a module the target lacks): exit 1 with a
/// message, never a panic, and never a silent success.
#[test]
fn refused_fixtures_fail_clearly() {
    let Some(dir) = fixtures_dir() else { return };
    let target = RedisServer::start(&[]);
    let mut c = target.client();
    let mut failures = Vec::new();
    for file in fixture_files(&dir) {
        let Some(exp) = expected(&file) else { continue };
        if exp["load"] == "ok" {
            continue;
        }
        reset(&mut c);
        let out = load(&file, &target);
        let name = short(&file);
        // What refuses the file: the decoder ("source failed": corrupt, bad checksum, trailing data, module
        // AUX data), or the target, which rejects the value as redis-server itself did when loading it
        // (a corrupt ziplist or zipmap, a module value without its module).
        unexpected_log(
            &name,
            &out,
            &["source failed", "error=ERR Bad data format"],
            &mut failures,
        );
        if out.code != 1 || out.stderr.contains("panicked") || !out.stderr.contains("ferry:") {
            failures.push(format!("{name}: exit {} stderr:\n{}", out.code, out.stderr));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Files from newer servers (RDB 11/12, Valkey's VALKEY080) that 7.0.15 cannot load itself: ferry
/// re-encodes them for the older target. Every key must arrive (key count equals the decoder's count of
/// unexpired keys, which the decoder tests check against the files), with no rejected write.
#[test]
fn newer_fixtures_load_into_an_older_target_by_reencoding() {
    let Some(dir) = fixtures_dir() else { return };
    let target = RedisServer::start(&[]);
    let mut c = target.client();
    let mut failures = Vec::new();
    let mut checked = 0;
    for file in fixture_files(&dir) {
        if expected(&file).is_some() {
            continue;
        }
        let name = short(&file);
        reset(&mut c);
        let out = load(&file, &target);
        // Not RDB files at all, or from a format version no server has written: refused clearly.
        // Also Redis Enterprise's own opcodes (redis_ent_*): unknown to any open-source server, refused
        // naming the opcode and its offset.
        let refused = ["future_v19.rdb", "RedisShake/dump.rdb"]
            .iter()
            .any(|s| name.ends_with(s))
            || name.contains("/redis_ent_");
        let module = name.contains("module");
        // A version 7.0.15 reads but with no expectation recorded: either it loads (exit 0), or it holds
        // duplicate keys in a db, which a server refuses and ferry must refuse too (the target rejects the
        // second copy: exit 1, naming BUSYKEY). Nothing else.
        let head = std::fs::read(&file).unwrap_or_default();
        let readable_version = head.starts_with(b"REDIS00")
            && std::str::from_utf8(&head[5..9.min(head.len())])
                .ok()
                .and_then(|v| v.parse::<u32>().ok())
                .is_some_and(|v| v <= 10);
        // The precheck says a newer file is re-encoded for the 7.0 target: the point of this test.
        let mut allowed = vec!["values will be re-encoded"];
        if refused {
            allowed.push("source failed");
        } else if module {
            // MODULE_AUX data refuses the file; a module value of a newer format than the target's
            // cannot be re-encoded, so its RESTORE is refused for the payload version.
            allowed.extend([
                "source failed",
                "error=ERR DUMP payload version or checksum are wrong",
            ]);
        } else if readable_version {
            // The duplicate key's second copy; and a module value the 7.0 target has no module for.
            allowed.extend(["error=BUSYKEY", "key=modulekey error=ERR Bad data format"]);
        }
        unexpected_log(&name, &out, &allowed, &mut failures);
        if readable_version && !refused && !module {
            let duplicate = out.code == 1 && out.stderr.contains("BUSYKEY");
            if !(out.code == 0 || duplicate) {
                failures.push(format!(
                    "{name}: expected a load or a duplicate-key refusal, got {}: {}",
                    out.code, out.stderr
                ));
            }
            continue;
        }
        if refused || module {
            if out.code != 1 || out.stderr.contains("panicked") {
                failures.push(format!(
                    "{name}: expected a clear refusal, got exit {}: {}",
                    out.code, out.stderr
                ));
            }
            continue;
        }
        if out.code != 0 {
            failures.push(format!(
                "{name}: exit {}: {}",
                out.code,
                out.stderr.lines().last().unwrap_or("")
            ));
        }
        checked += 1;
    }
    assert!(checked >= 25, "only {checked} newer fixtures found");
    assert!(
        failures.is_empty(),
        "{} newer fixtures failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
