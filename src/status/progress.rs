//! Full-sync progress: a bar per source on a terminal, periodic log lines otherwise.
//!
//! A [`FullSyncProgress`] is a view of a [`SourceStatus`]: it reads the RDB figures the link and the
//! applier already record there (`add_rdb_received`, `add_rdb_applied`, `add_keys_loaded`, `set_rdb_total`)
//! and needs no calls of its own on the data path.
//!
//! Bars and log output share stderr without tearing each other: install [`ProgressOutput::make_writer`] as
//! the `tracing` writer, so each log line is written while the bars are suspended (cleared, then redrawn
//! below the line):
//!
//! ```no_run
//! use std::io::IsTerminal;
//! let progress = ferry::status::ProgressOutput::stderr();
//! tracing_subscriber::fmt()
//!     .with_writer(progress.make_writer())
//!     .with_ansi(std::io::stderr().is_terminal()) // the writer hides the terminal from tracing
//!     .init();
//! ```
//!
//! [`ProgressOutput::stderr`] is one process-wide instance, so the writer installed at start-up and the
//! bars created later by the job draw through the same `MultiProgress`.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::SourceStatus;

/// How often a bar is refreshed.
const BAR_REFRESH: Duration = Duration::from_millis(250);
/// How often a progress log line is written when stderr is not a terminal.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Where full-sync progress goes. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ProgressOutput {
    mode: Mode,
}

#[derive(Clone, Debug)]
enum Mode {
    /// Bars drawn through this `MultiProgress` (to stderr, or nowhere in tests).
    Bars(MultiProgress),
    /// `tracing` info lines every so often.
    Logs(Duration),
}

impl ProgressOutput {
    /// The process-wide output: bars on stderr when stderr is a terminal, else a log line every
    /// [`LOG_EVERY`]. Every call returns the same instance.
    pub fn stderr() -> ProgressOutput {
        static GLOBAL: OnceLock<ProgressOutput> = OnceLock::new();
        GLOBAL
            .get_or_init(|| {
                if std::io::stderr().is_terminal() {
                    ProgressOutput {
                        mode: Mode::Bars(MultiProgress::with_draw_target(
                            ProgressDrawTarget::stderr(),
                        )),
                    }
                } else {
                    ProgressOutput::logs(LOG_EVERY)
                }
            })
            .clone()
    }

    /// Log lines every `every` instead of bars.
    pub fn logs(every: Duration) -> ProgressOutput {
        ProgressOutput {
            mode: Mode::Logs(every.max(Duration::from_millis(1))),
        }
    }

    /// Bars drawn nowhere (tests).
    pub fn hidden() -> ProgressOutput {
        ProgressOutput {
            mode: Mode::Bars(MultiProgress::with_draw_target(ProgressDrawTarget::hidden())),
        }
    }

    /// True when progress is drawn as bars.
    pub fn draws_bars(&self) -> bool {
        matches!(self.mode, Mode::Bars(_))
    }

    /// A `tracing_subscriber` writer to stderr that never tears a bar: each event is buffered and written
    /// in one piece while the bars are suspended.
    pub fn make_writer(&self) -> ProgressWriter {
        ProgressWriter {
            multi: match &self.mode {
                Mode::Bars(m) => Some(m.clone()),
                Mode::Logs(_) => None,
            },
        }
    }
}

/// See [`ProgressOutput::make_writer`].
#[derive(Clone, Debug)]
pub struct ProgressWriter {
    multi: Option<MultiProgress>,
}

/// One log event's bytes, written to stderr when dropped (or flushed).
#[derive(Debug)]
pub struct ProgressLineWriter {
    multi: Option<MultiProgress>,
    buf: Vec<u8>,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for ProgressWriter {
    type Writer = ProgressLineWriter;

    fn make_writer(&'a self) -> Self::Writer {
        ProgressLineWriter {
            multi: self.multi.clone(),
            buf: Vec::with_capacity(256),
        }
    }
}

impl ProgressLineWriter {
    fn emit(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let write = || {
            let mut e = std::io::stderr().lock();
            e.write_all(&buf).and_then(|_| e.flush())
        };
        match &self.multi {
            Some(m) if !m.is_hidden() => m.suspend(write),
            _ => write(),
        }
    }
}

impl Write for ProgressLineWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.emit()
    }
}

impl Drop for ProgressLineWriter {
    fn drop(&mut self) {
        let _ = self.emit();
    }
}

/// What a progress line says, computed from two readings of a source.
#[derive(Clone, Debug, PartialEq)]
pub struct ProgressFacts {
    pub received_bytes: u64,
    pub applied_bytes: u64,
    /// `None`: unknown (diskless transfer).
    pub total_bytes: Option<u64>,
    pub keys: u64,
    /// Applied bytes per second between the two readings.
    pub rate_bytes_per_sec: f64,
    /// Percent of the total applied, when the total is known.
    pub percent: Option<f64>,
    /// Time left at the current rate, when the total is known and the rate is not zero.
    pub eta: Option<Duration>,
}

/// One reading of a source's RDB figures.
#[derive(Clone, Copy, Debug)]
pub struct Reading {
    pub at: Instant,
    pub received: u64,
    pub applied: u64,
    pub keys: u64,
    pub total: i64,
}

impl Reading {
    pub fn of(s: &SourceStatus) -> Reading {
        let (received, applied, keys, total) = s.rdb_progress();
        Reading {
            at: Instant::now(),
            received,
            applied,
            keys,
            total,
        }
    }
}

/// Facts from the previous reading `prev` and the current one `now`.
pub fn facts(prev: &Reading, now: &Reading) -> ProgressFacts {
    let dt = now.at.saturating_duration_since(prev.at).as_secs_f64();
    let rate = if dt > 0.0 {
        now.applied.saturating_sub(prev.applied) as f64 / dt
    } else {
        0.0
    };
    let total = u64::try_from(now.total).ok();
    let percent = total.map(|t| {
        if t == 0 {
            100.0
        } else {
            (now.applied as f64 * 100.0 / t as f64).min(100.0)
        }
    });
    let eta = match total {
        Some(t) if rate > 0.0 => Some(Duration::from_secs_f64(
            t.saturating_sub(now.applied) as f64 / rate,
        )),
        Some(t) if now.applied >= t => Some(Duration::ZERO),
        _ => None,
    };
    ProgressFacts {
        received_bytes: now.received,
        applied_bytes: now.applied,
        total_bytes: total,
        keys: now.keys,
        rate_bytes_per_sec: rate,
        percent,
        eta,
    }
}

/// Bytes for a person: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A duration for a person: `45s`, `12m05s`, `3h07m`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

impl ProgressFacts {
    /// One line for a person, e.g. `applied 1.2 GiB of 4.0 GiB (30.0%), received 2.0 GiB, 1234 keys,
    /// 85.3 MiB/s, ETA 33s`.
    pub fn describe(&self) -> String {
        let mut s = format!("applied {}", human_bytes(self.applied_bytes));
        if let (Some(t), Some(p)) = (self.total_bytes, self.percent) {
            s.push_str(&format!(" of {} ({p:.1}%)", human_bytes(t)));
        }
        s.push_str(&format!(
            ", received {}, {} keys, {}/s",
            human_bytes(self.received_bytes),
            self.keys,
            human_bytes(self.rate_bytes_per_sec as u64)
        ));
        if let Some(eta) = self.eta {
            s.push_str(&format!(", ETA {}", human_duration(eta)));
        }
        s
    }
}

/// The progress display of one source's full sync. Dropping it (or [`FullSyncProgress::finish`]) removes
/// the bar / stops the log lines.
#[derive(Debug)]
pub struct FullSyncProgress {
    stop: Option<DropGuard>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl FullSyncProgress {
    /// Show `source`'s full sync on `out` until finished or dropped. Needs a tokio runtime; outside one it
    /// shows nothing.
    pub fn start(out: &ProgressOutput, source: Arc<SourceStatus>) -> FullSyncProgress {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return FullSyncProgress {
                stop: None,
                task: None,
            };
        };
        let stop = CancellationToken::new();
        let task = match &out.mode {
            Mode::Bars(multi) => rt.spawn(run_bar(multi.clone(), source, stop.clone())),
            Mode::Logs(every) => rt.spawn(run_logs(*every, source, stop.clone())),
        };
        FullSyncProgress {
            stop: Some(stop.drop_guard()),
            task: Some(task),
        }
    }

    /// The full sync is over: remove the bar (the caller logs the outcome) and wait for the display task.
    pub async fn finish(mut self) {
        self.stop = None; // drops the guard: the task stops
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

fn bar_style(total_known: bool) -> ProgressStyle {
    let template = if total_known {
        "{prefix} [{bar:30.cyan/blue}] {binary_bytes}/{binary_total_bytes} \
         {binary_bytes_per_sec} ETA {eta} {msg}"
    } else {
        "{prefix} {spinner} {binary_bytes} applied, {binary_bytes_per_sec} {msg}"
    };
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

async fn run_bar(multi: MultiProgress, source: Arc<SourceStatus>, stop: CancellationToken) {
    let bar = multi.add(ProgressBar::new(0));
    bar.set_prefix(source.name().to_string());
    let mut total_known = None;
    let mut tick = tokio::time::interval(BAR_REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let r = Reading::of(&source);
        let known = r.total >= 0;
        if total_known != Some(known) {
            bar.set_style(bar_style(known));
            total_known = Some(known);
        }
        if let Ok(t) = u64::try_from(r.total) {
            bar.set_length(t);
        }
        bar.set_position(r.applied);
        bar.set_message(format!(
            "(received {}, {} keys)",
            human_bytes(r.received),
            r.keys
        ));
        if !known {
            bar.tick();
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
    }
    bar.finish_and_clear();
    multi.remove(&bar);
}

async fn run_logs(every: Duration, source: Arc<SourceStatus>, stop: CancellationToken) {
    let mut prev = Reading::of(&source);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = Reading::of(&source);
        let f = facts(&prev, &now);
        tracing::info!(
            source = %source.name(),
            received_bytes = f.received_bytes,
            applied_bytes = f.applied_bytes,
            total_bytes = f.total_bytes.map_or(-1, |t| i64::try_from(t).unwrap_or(i64::MAX)),
            keys = f.keys,
            rate_bytes_per_sec = f.rate_bytes_per_sec as u64,
            eta_seconds = f.eta.map_or(-1, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
            "full sync: {}",
            f.describe()
        );
        prev = now;
    }
}
