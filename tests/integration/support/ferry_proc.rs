//! A `ferry sync` running in the background, killed by PID when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{ferry_bin, TempDir};

pub struct Ferry {
    child: Option<Child>,
    log: PathBuf,
    _logdir: TempDir,
}

impl Ferry {
    /// Start `ferry <args…>` with its stderr going to a log file.
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
            child: Some(child),
            log,
            _logdir: logdir,
        }
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

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
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

    /// Wait for the process to exit by itself, up to `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
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

    /// SIGTERM, then wait for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.signal("-TERM");
        self.wait(timeout)
    }

    /// SIGKILL (a crash), then reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Ferry {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            if std::thread::panicking() {
                eprintln!("ferry log:\n{}", self.log());
            }
        }
    }
}
