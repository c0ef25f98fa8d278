//! Turning byte lag into time lag: when did the oldest byte not yet applied arrive?
//!
//! The link reports the received offset as bytes arrive; we keep (time, offset) samples of it, only for
//! offsets not yet applied. The first sample beyond the applied offset tells (to the sampling interval) when
//! the oldest unapplied byte had arrived. A sample is taken at once when everything sampled so far is
//! applied (so the start of a backlog is timed exactly), otherwise at most every `interval`; when the
//! buffer is full every other sample is dropped and the interval doubles, so memory stays bounded however
//! long the backlog, with precision relative to its age.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const CAPACITY: usize = 128;
const BASE_INTERVAL_MS: u64 = 100;

#[derive(Debug)]
pub(crate) struct LagSamples {
    /// Earliest time (ms since the status epoch) of the next periodic sample.
    next_ms: AtomicU64,
    /// Offset of the newest sample (-1: none).
    last_offset: AtomicI64,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// (ms since the status epoch, received offset), oldest first, offsets increasing.
    samples: VecDeque<(u64, i64)>,
    interval_ms: u64,
}

impl Default for LagSamples {
    fn default() -> Self {
        LagSamples {
            next_ms: AtomicU64::new(0),
            last_offset: AtomicI64::new(-1),
            inner: Mutex::new(Inner {
                samples: VecDeque::with_capacity(CAPACITY),
                interval_ms: BASE_INTERVAL_MS,
            }),
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl LagSamples {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forget everything (a full resync restarts the offsets).
    pub(crate) fn clear(&self) {
        let mut g = self.lock();
        g.samples.clear();
        g.interval_ms = BASE_INTERVAL_MS;
        self.last_offset.store(-1, Ordering::Relaxed);
        self.next_ms.store(0, Ordering::Relaxed);
    }

    /// The received offset is now `received` (`now` since the epoch), the applied offset `applied`.
    pub(crate) fn observe(&self, now: Duration, received: i64, applied: i64) {
        let now = ms(now);
        let last = self.last_offset.load(Ordering::Relaxed);
        if received <= last {
            return;
        }
        let backlog_starts = last <= applied;
        if !backlog_starts && now < self.next_ms.load(Ordering::Relaxed) {
            return;
        }
        let mut g = self.lock();
        while g.samples.front().is_some_and(|&(_, o)| o <= applied) {
            g.samples.pop_front();
        }
        if g.samples.is_empty() {
            g.interval_ms = BASE_INTERVAL_MS;
        }
        if g.samples.back().is_some_and(|&(_, o)| o >= received) {
            return;
        }
        if g.samples.len() >= CAPACITY {
            // Keep the oldest (it times the backlog's start) and every other one after it.
            let kept: VecDeque<(u64, i64)> = g.samples.iter().copied().step_by(2).collect();
            g.samples = kept;
            g.interval_ms = g.interval_ms.saturating_mul(2);
        }
        g.samples.push_back((now, received));
        self.last_offset.store(received, Ordering::Relaxed);
        self.next_ms
            .store(now.saturating_add(g.interval_ms), Ordering::Relaxed);
    }

    /// How long before `now` the first byte after `applied` had arrived. When no sample is beyond
    /// `applied`, those bytes arrived after the newest sample but before its interval ran out (a later
    /// arrival would have been sampled): the newest sample's age is then an upper bound. `None` before any
    /// sample.
    pub(crate) fn age_of_first_after(&self, applied: i64, now: Duration) -> Option<Duration> {
        let g = self.lock();
        let &(t, _) = g
            .samples
            .iter()
            .find(|&&(_, o)| o > applied)
            .or_else(|| g.samples.back())?;
        Some(Duration::from_millis(ms(now).saturating_sub(t)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn backlog_start_is_timed_exactly() {
        let l = LagSamples::default();
        l.observe(at(1000), 100, 100); // caught up
        l.observe(at(1010), 200, 100); // backlog starts at once, despite the interval
        assert_eq!(l.age_of_first_after(100, at(1510)), Some(at(500)));
        // Periodic samples while the backlog lasts.
        l.observe(at(1050), 300, 100); // within the interval: not sampled
        l.observe(at(1200), 400, 100);
        assert_eq!(l.age_of_first_after(250, at(1300)), Some(at(100)));
        // Applied caught up with the first sample: it is pruned on the next observation.
        l.observe(at(1400), 500, 400);
        assert_eq!(l.age_of_first_after(400, at(1500)), Some(at(100)));
        // Bytes after the newest sample: its age is the bound.
        assert_eq!(l.age_of_first_after(500, at(1500)), Some(at(100)));
    }

    #[test]
    fn memory_stays_bounded_and_the_oldest_sample_is_kept() {
        let l = LagSamples::default();
        l.observe(at(0), 1, 0);
        let mut t = 0;
        for off in 2..100_000 {
            t += 50;
            l.observe(at(t), off, 0);
        }
        assert!(l.lock().samples.len() <= CAPACITY);
        assert_eq!(l.age_of_first_after(0, at(t)), Some(at(t)));
        // A later offset is timed with a precision relative to its age: offset n arrived at (n - 1) * 50 ms.
        let exact = t - 50_000 * 50;
        let age = l
            .age_of_first_after(50_000, at(t))
            .map(|d| d.as_millis() as u64);
        assert!(
            age.is_some_and(|a| a <= exact && a >= exact - exact / 10),
            "{age:?} vs {exact}"
        );
    }

    #[test]
    fn clear_forgets() {
        let l = LagSamples::default();
        l.observe(at(10), 5, 0);
        l.clear();
        assert_eq!(l.age_of_first_after(0, at(20)), None);
        assert_eq!(LagSamples::default().age_of_first_after(0, at(20)), None);
    }
}
