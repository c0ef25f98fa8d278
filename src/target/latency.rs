//! Write round-trip latency per target: an HDR histogram in microseconds, sharded so the writer pool's
//! connections rarely meet on a lock.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Highest value tracked: one hour, in microseconds (longer round trips are counted as one hour).
const HIGHEST_US: u64 = 3_600_000_000;
/// Two significant digits: values are kept within 1%.
const SIGFIG: u8 = 2;
const SHARDS: usize = 4;

/// How long a latency window lasts: the "recent" figures cover the current window and the one before it,
/// so between one and two windows.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Records write round trips (command written → its reply read). Share it as `Arc<LatencyRecorder>` with
/// the connections of a writer pool; [`LatencyRecorder::record`] takes one uncontended lock in the common
/// case (it tries each shard before waiting on one).
#[derive(Debug)]
pub struct LatencyRecorder {
    epoch: Instant,
    window_ms: u64,
    shards: Vec<Mutex<Option<Shard>>>,
    next: AtomicUsize,
    sum_us: AtomicU64,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        LatencyRecorder::new()
    }
}

/// Figures of a [`LatencyRecorder`], in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LatencySummary {
    /// Round trips recorded.
    pub count: u64,
    /// Sum of those round trips (µs).
    pub sum_us: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

fn new_histogram() -> Option<Histogram<u64>> {
    Histogram::new_with_bounds(1, HIGHEST_US, SIGFIG).ok()
}

/// One shard: everything since start, plus the current and the previous window.
#[derive(Debug)]
struct Shard {
    total: Histogram<u64>,
    cur: Histogram<u64>,
    prev: Histogram<u64>,
    cur_sum: u64,
    prev_sum: u64,
    /// Index of the current window (time since the epoch / window).
    window: u64,
}

impl Shard {
    fn new() -> Option<Shard> {
        Some(Shard {
            total: new_histogram()?,
            cur: new_histogram()?,
            prev: new_histogram()?,
            cur_sum: 0,
            prev_sum: 0,
            window: 0,
        })
    }

    /// Move to window `w` (never backwards).
    fn rotate(&mut self, w: u64) {
        if w <= self.window {
            return;
        }
        if w == self.window + 1 {
            std::mem::swap(&mut self.prev, &mut self.cur);
            self.prev_sum = self.cur_sum;
        } else {
            self.prev.reset();
            self.prev_sum = 0;
        }
        self.cur.reset();
        self.cur_sum = 0;
        self.window = w;
    }

    fn record(&mut self, us: u64, w: u64) {
        self.rotate(w);
        self.total.saturating_record(us);
        self.cur.saturating_record(us);
        self.cur_sum = self.cur_sum.saturating_add(us);
    }
}

fn summarize(h: &Histogram<u64>, sum_us: u64) -> LatencySummary {
    if h.is_empty() {
        return LatencySummary::default();
    }
    LatencySummary {
        count: h.len(),
        sum_us,
        p50_us: h.value_at_quantile(0.5),
        p90_us: h.value_at_quantile(0.9),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
    }
}

impl LatencyRecorder {
    pub fn new() -> LatencyRecorder {
        LatencyRecorder::with_window(WINDOW)
    }

    /// A recorder whose recent figures cover one to two `window`s.
    pub fn with_window(window: Duration) -> LatencyRecorder {
        LatencyRecorder {
            epoch: Instant::now(),
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::new())).collect(),
            next: AtomicUsize::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    fn window_now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX) / self.window_ms
    }

    /// Record one round trip.
    pub fn record(&self, d: Duration) {
        self.record_in(d, self.window_now());
    }

    fn record_in(&self, d: Duration, w: u64) {
        let us = u64::try_from(d.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, HIGHEST_US);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..SHARDS {
            if let Ok(mut g) = self.shards[(start + i) % SHARDS].try_lock() {
                if let Some(s) = g.as_mut() {
                    s.record(us, w);
                }
                return;
            }
        }
        let mut g = self.shards[start % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(s) = g.as_mut() {
            s.record(us, w);
        }
    }

    /// Everything recorded since start.
    pub fn summary(&self) -> LatencySummary {
        let Some(mut all) = new_histogram() else {
            return LatencySummary::default();
        };
        for s in &self.shards {
            let g = s.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = g.as_ref() {
                // Same bounds on both sides: adding cannot fail.
                let _ = all.add(&s.total);
            }
        }
        summarize(&all, self.sum_us.load(Ordering::Relaxed))
    }

    /// The current and the previous window ([`WINDOW`]: the last one to two minutes).
    pub fn recent(&self) -> LatencySummary {
        self.recent_in(self.window_now())
    }

    fn recent_in(&self, w: u64) -> LatencySummary {
        let Some(mut all) = new_histogram() else {
            return LatencySummary::default();
        };
        let mut sum = 0u64;
        for s in &self.shards {
            let mut g = s.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = g.as_mut() {
                s.rotate(w);
                let _ = all.add(&s.cur);
                let _ = all.add(&s.prev);
                sum = sum.saturating_add(s.cur_sum).saturating_add(s.prev_sum);
            }
        }
        summarize(&all, sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_within_one_percent() {
        let r = LatencyRecorder::new();
        for us in 1..=10_000u64 {
            r.record(Duration::from_micros(us));
        }
        let s = r.summary();
        assert_eq!(s.count, 10_000);
        assert_eq!(s.sum_us, 10_000 * 10_001 / 2);
        let near = |v: u64, want: u64| v.abs_diff(want) <= want / 100 + 1;
        assert!(near(s.p50_us, 5_000), "{s:?}");
        assert!(near(s.p99_us, 9_900), "{s:?}");
        assert!(near(s.p999_us, 9_990), "{s:?}");
        assert!(near(s.max_us, 10_000), "{s:?}");
    }

    #[test]
    fn empty_and_out_of_range() {
        let r = LatencyRecorder::new();
        assert_eq!(r.summary(), LatencySummary::default());
        r.record(Duration::ZERO);
        r.record(Duration::from_secs(10_000));
        let s = r.summary();
        assert_eq!(s.count, 2);
        assert!(s.max_us >= HIGHEST_US - HIGHEST_US / 100);
    }

    #[test]
    fn recent_covers_the_current_and_previous_window() {
        let r = LatencyRecorder::with_window(Duration::from_secs(60));
        r.record_in(Duration::from_millis(100), 0);
        r.record_in(Duration::from_millis(1), 1);
        r.record_in(Duration::from_millis(2), 1);
        let recent = r.recent_in(1);
        assert_eq!((recent.count, recent.sum_us), (3, 103_000));
        // One window later the first one has gone.
        let recent = r.recent_in(2);
        assert_eq!((recent.count, recent.sum_us), (2, 3_000));
        assert!(recent.max_us < 2_100);
        // Long idle: nothing recent, everything in the total.
        assert_eq!(r.recent_in(10), LatencySummary::default());
        let total = r.summary();
        assert_eq!((total.count, total.sum_us), (3, 103_000));
        assert!(total.max_us >= 99_000);
        // Recording in an old window (a late caller) lands in the current one.
        r.record_in(Duration::from_millis(5), 3);
        assert_eq!(r.recent_in(10).count, 1);
    }

    #[test]
    fn concurrent_recorders_lose_nothing() {
        let r = std::sync::Arc::new(LatencyRecorder::new());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000u64 {
                        r.record(Duration::from_micros(100 + i % 50));
                    }
                })
            })
            .collect();
        for h in handles {
            assert!(h.join().is_ok());
        }
        assert_eq!(r.summary().count, 20_000);
    }
}
