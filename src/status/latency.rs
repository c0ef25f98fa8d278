//! Write round-trip latency per target: an HDR histogram in microseconds, sharded so the writer pool's
//! connections rarely meet on a lock.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Highest value tracked: one hour, in microseconds (longer round trips are counted as one hour).
const HIGHEST_US: u64 = 3_600_000_000;
/// Two significant digits: values are kept within 1%.
const SIGFIG: u8 = 2;
const SHARDS: usize = 4;

/// Records write round trips (command written → its reply read). Share it as `Arc<LatencyRecorder>` with
/// the connections of a writer pool; [`LatencyRecorder::record`] takes one uncontended lock in the common
/// case (it tries each shard before waiting on one).
#[derive(Debug)]
pub struct LatencyRecorder {
    shards: Vec<Mutex<Option<Histogram<u64>>>>,
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
    /// Round trips recorded since start.
    pub count: u64,
    /// Sum of all round trips (µs).
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

impl LatencyRecorder {
    pub fn new() -> LatencyRecorder {
        LatencyRecorder {
            shards: (0..SHARDS).map(|_| Mutex::new(new_histogram())).collect(),
            next: AtomicUsize::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    /// Record one round trip.
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, HIGHEST_US);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..SHARDS {
            if let Ok(mut h) = self.shards[(start + i) % SHARDS].try_lock() {
                if let Some(h) = h.as_mut() {
                    h.saturating_record(us);
                }
                return;
            }
        }
        let mut h = self.shards[start % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(h) = h.as_mut() {
            h.saturating_record(us);
        }
    }

    /// Quantiles over everything recorded since start.
    pub fn summary(&self) -> LatencySummary {
        let Some(mut all) = new_histogram() else {
            return LatencySummary::default();
        };
        for s in &self.shards {
            let g = s.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(h) = g.as_ref() {
                // Same bounds on both sides: adding cannot fail.
                let _ = all.add(h);
            }
        }
        if all.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: all.len(),
            sum_us: self.sum_us.load(Ordering::Relaxed),
            p50_us: all.value_at_quantile(0.5),
            p90_us: all.value_at_quantile(0.9),
            p99_us: all.value_at_quantile(0.99),
            p999_us: all.value_at_quantile(0.999),
            max_us: all.max(),
        }
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
