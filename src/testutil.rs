//! Helpers for unit tests (compiled only under `cfg(test)`): the unit-test twins of
//! `tests/integration/support`'s `skip` and `fixtures_dir`, with the same contract.
//!
//! - [`skip`] prints `SKIP <test name>: <reason>` on the real stderr (the test harness does not capture
//!   it) and appends the line to the file named by `FERRY_SKIP_LOG` when set; `scripts/test.sh` counts
//!   those lines and, under `CI=true`, fails on any.
//! - [`fixtures_dir`] is the shared fixtures folder (`FERRY_FIXTURES`, else `../shared/fixtures` beside
//!   the crate root); absent, it panics under `FERRY_REQUIRE_FIXTURES=1` and otherwise skips.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Record that the running test skips its work, loudly and countably (module docs). The caller returns.
pub(crate) fn skip(reason: &str) {
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("<unnamed thread>");
    let line = format!("SKIP {name}: {reason}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Some(path) = std::env::var_os("FERRY_SKIP_LOG") {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .unwrap_or_else(|e| {
                panic!(
                    "cannot append to FERRY_SKIP_LOG {}: {e}",
                    Path::new(&path).display()
                )
            });
    }
}

/// The shared fixtures folder, or `None` after a [`skip`] when it is absent; a panic instead when
/// `FERRY_REQUIRE_FIXTURES=1` (CI).
pub(crate) fn fixtures_dir() -> Option<PathBuf> {
    let p = std::env::var_os("FERRY_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"));
    if p.is_dir() {
        return Some(p);
    }
    if std::env::var("FERRY_REQUIRE_FIXTURES").is_ok_and(|v| v == "1") {
        panic!(
            "the fixtures folder {} is absent and FERRY_REQUIRE_FIXTURES=1 requires it",
            p.display()
        );
    }
    skip(&format!(
        "the fixtures folder {} is absent (set FERRY_FIXTURES, or FERRY_REQUIRE_FIXTURES=1 to fail instead)",
        p.display()
    ));
    None
}
