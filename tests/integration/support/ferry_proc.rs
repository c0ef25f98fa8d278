//! A `ferry` process running in the background, killed by PID when dropped, whose log must hold no
//! WARN/ERROR line the test did not expect.
//!
//! The log guard (house convention 12): ferry logs a WARN or ERROR line when something went wrong or an
//! operator should look. A test that runs the real binary fails when such a line appears that its
//! scenario does not provoke, so a warning nobody reads (a skipped key, a write retried, a resync nobody
//! asked for) cannot hide behind a passing test. A test declares what it provokes with [`Ferry::allow`]
//! (a substring of the line: the message, a field, the target module); the check runs when the process
//! has ended ([`Ferry::wait`], [`Ferry::terminate`], [`Ferry::kill9`]) and on drop (a still-running
//! process is killed first, then checked; nothing is checked while the test is already panicking).
//! A Rust panic message in the log is unexpected too.
//!
//! Tests that run the binary to completion start it with [`ferry_command`] and check its stderr with
//! [`check_output`] (or [`assert_log_clean`], [`unexpected_log_lines`]) and the same kind of allowlist.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use super::{ferry_bin, TempDir};

/// `ferry` as a `Command` for a run to completion, with `FERRY_LOG=info` whatever the caller's environment
/// says (so WARN and ERROR lines reach the stderr [`check_output`] reads) and stdin closed.
pub fn ferry_command() -> Command {
    let mut c = Command::new(ferry_bin());
    c.env("FERRY_LOG", "info").stdin(Stdio::null());
    c
}

/// The level of a log record line as ferry writes it: text (`<RFC 3339 time>  WARN target: …`, the
/// default) or `--log-format json` (`{"timestamp":…,"level":"WARN",…}`); `None` for any other line
/// (continuations, the final `ferry: …` message, progress output).
pub fn record_level(line: &str) -> Option<&'static str> {
    const LEVELS: [&str; 5] = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"];
    let level = if line.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        v.get("level")?.as_str()?.to_string()
    } else {
        let mut words = line.split_whitespace();
        let time = words.next()?.as_bytes();
        let is_time = time.len() >= 20
            && time[..4].iter().all(u8::is_ascii_digit)
            && time[4] == b'-'
            && time[10] == b'T'
            && time.ends_with(b"Z");
        if !is_time {
            return None;
        }
        words.next()?.to_string()
    };
    LEVELS.into_iter().find(|l| *l == level)
}

/// The lines of `log` that fail the guard: WARN and ERROR records, and Rust panic messages, that contain
/// none of the `allowed` substrings.
pub fn unexpected_log_lines<S: AsRef<str>>(log: &str, allowed: &[S]) -> Vec<String> {
    log.lines()
        .filter(|l| {
            matches!(record_level(l), Some("WARN" | "ERROR"))
                || (l.contains("panicked at") && record_level(l).is_none())
        })
        .filter(|l| !allowed.iter().any(|a| l.contains(a.as_ref())))
        .map(str::to_string)
        .collect()
}

/// Panic when `log` (ferry's stderr) has a WARN/ERROR line that contains none of `allowed`. `what` names
/// the run in the message (e.g. the fixture file).
pub fn assert_log_clean<S: AsRef<str>>(what: &str, log: &str, allowed: &[S]) {
    let bad = unexpected_log_lines(log, allowed);
    if !bad.is_empty() {
        let shown: Vec<&str> = allowed.iter().map(|a| a.as_ref()).collect();
        panic!(
            "{what}: ferry logged {} unexpected WARN/ERROR line(s) (allowed: {shown:?}; a warning the \
             test provokes on purpose goes in its allowlist):\n{}\n--- full log ---\n{log}",
            bad.len(),
            bad.join("\n")
        );
    }
}

/// [`assert_log_clean`] over the stderr of a finished `Command::output()`.
pub fn check_output<S: AsRef<str>>(what: &str, out: &Output, allowed: &[S]) {
    assert_log_clean(what, &String::from_utf8_lossy(&out.stderr), allowed);
}

pub struct Ferry {
    /// `ferry <subcommand> (pid N)`, for messages.
    name: String,
    child: Option<Child>,
    log: PathBuf,
    _logdir: TempDir,
    allowed: Vec<String>,
    checked: bool,
}

impl Ferry {
    /// Start `ferry <args…>` with its stderr (`FERRY_LOG=info,ferry=debug`, text) going to a log file.
    pub fn start(args: &[&str]) -> Ferry {
        let logdir = TempDir::new("ferry-log");
        let log = logdir.path().join("ferry.log");
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new(ferry_bin())
            .args(args)
            .env("FERRY_LOG", "info,ferry=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .expect("start ferry");
        Ferry {
            name: format!(
                "ferry {} (pid {})",
                args.first().copied().unwrap_or(""),
                child.id()
            ),
            child: Some(child),
            log,
            _logdir: logdir,
            allowed: Vec::new(),
            checked: false,
        }
    }

    /// [`Ferry::start`] with the WARN/ERROR lines the test provokes allowed from the start.
    pub fn start_allowing(args: &[&str], allowed: &[&str]) -> Ferry {
        Ferry::start(args).allowing(allowed)
    }

    /// `ferry sync --source SRC… --target DST --state-dir STATE extra…`.
    pub fn sync(sources: &[String], target: &str, state: &Path, extra: &[&str]) -> Ferry {
        let mut args: Vec<String> = vec!["sync".into()];
        for s in sources {
            args.push("--source".into());
            args.push(s.clone());
        }
        args.extend(["--target".into(), target.into(), "--state-dir".into()]);
        args.push(state.display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        Ferry::start(&refs)
    }

    /// Allow WARN/ERROR lines containing `pattern` (a plain substring). Say in a comment what in the
    /// scenario provokes it.
    pub fn allow(&mut self, pattern: &str) -> &mut Self {
        self.allowed.push(pattern.to_string());
        self
    }

    /// [`Ferry::allow`] for each pattern, by value: `Ferry::sync(…).allowing(&["link down"])`.
    pub fn allowing(mut self, patterns: &[&str]) -> Self {
        for p in patterns {
            self.allow(p);
        }
        self
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The WARN/ERROR lines of the log so far that no allowed pattern covers.
    pub fn unexpected_log_lines(&self) -> Vec<String> {
        unexpected_log_lines(&self.log(), &self.allowed)
    }

    /// Still running?
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status();
    }

    /// The guard, once the process is gone: panics on an unexpected WARN/ERROR line.
    fn check_log(&mut self) {
        if self.checked {
            return;
        }
        self.checked = true;
        assert_log_clean(&self.name, &self.log(), &self.allowed);
    }

    /// Wait for the process to exit by itself, up to `timeout`; then check its log.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                self.check_log();
                return st;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                panic!(
                    "ferry did not exit within {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then wait for the exit (and check the log).
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        // A SIGTERM before ferry armed its handlers would end it by the default action, not a drain: wait
        // for them (ferry logs it at debug) while it runs.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.running()
            && !self.log().contains("stop signals armed")
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.signal("-TERM");
        self.wait(timeout)
    }

    /// SIGKILL (a crash), then reap and check the log.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            self.check_log();
        }
    }
}

impl Drop for Ferry {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            if !self.checked {
                eprintln!("ferry log:\n{}", self.log());
            }
            return;
        }
        self.check_log();
    }
}

#[test]
fn the_log_guard_reads_ferrys_text_and_json_formats() {
    let log = r#"2026-12-03T10:24:30.673294Z  INFO ferry::sync: precheck: OK    source 127.0.0.1:16399  reachable
2026-12-03T10:24:30.673436Z  WARN ferry::sync: precheck: WARN  target 127.0.0.1:16398  maxmemory-policy allkeys-lru
2026-12-03T10:24:35.912264Z ERROR ferry::target::pool: write rejected cmd=INCR key=clash error=WRONGTYPE
2026-12-03T10:24:35.912264Z DEBUG ferry::repl::link: WARN in a debug line is not a warning
ferry: precheck failed; nothing was written:
ERROR target 127.0.0.1:16398  not empty (2 keys; db0: 2 keys)
thread 'tokio-runtime-worker' panicked at src/apply/mod.rs:1:1:
{"timestamp":"2026-12-03T10:24:36Z","level":"WARN","fields":{"message":"link down"},"target":"ferry"}
{"timestamp":"2026-12-03T10:24:36Z","level":"INFO","fields":{"message":"connected"},"target":"ferry"}
"#;
    let lines: Vec<&str> = log.lines().collect();
    let none: &[&str] = &[];
    assert_eq!(
        unexpected_log_lines(log, none),
        [lines[1], lines[2], lines[6], lines[7]]
    );
    assert_eq!(
        unexpected_log_lines(
            log,
            &["maxmemory-policy", "WRONGTYPE", "panicked", "link down"]
        ),
        Vec::<String>::new()
    );
}
