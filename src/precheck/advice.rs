//! The arithmetic behind the verdicts and their advice, and the formatting of sizes, rates and durations.
//! Pure functions, unit-tested here.
//!
//! Sizes use Redis' configuration units: `1mb` = 1 MB = 2^20 bytes.

use super::Level;

/// 2^20 bytes: Redis' `1mb`.
pub const MB: u64 = 1 << 20;

/// `bytes` rounded up to a whole MB, at least 1 MB.
pub fn round_up_mb(bytes: u64) -> u64 {
    bytes.div_ceil(MB).max(1).saturating_mul(MB)
}

/// A size for a person: `512 B`, `16.0 KB`, `1.5 MB`, `2.0 GB`.
pub fn fmt_bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["KB", "MB", "GB", "TB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// A size as Redis configuration takes it: `26mb`, `2gb` (whole MB; whole GB when exact), followed by
/// the size for a person from 1 GB on: `20744mb (20.3 GB)`.
pub fn fmt_config_size(bytes: u64) -> String {
    let mb = round_up_mb(bytes) / MB;
    if mb % 1024 == 0 {
        format!("{}gb", mb / 1024)
    } else if mb > 1024 {
        format!("{mb}mb ({})", fmt_bytes(mb * MB))
    } else {
        format!("{mb}mb")
    }
}

/// A rate for a person: `85.3 KB/s`.
pub fn fmt_rate(bytes_per_sec: f64) -> String {
    format!("{}/s", fmt_bytes(bytes_per_sec.max(0.0).round() as u64))
}

/// A duration for a person: `0.4 s`, `42 s`, `12 min`, `3.2 h`, `2.5 days`.
pub fn fmt_secs(secs: f64) -> String {
    if secs < 10.0 {
        format!("{:.1} s", secs.max(0.0))
    } else if secs < 120.0 {
        format!("{} s", secs.round() as u64)
    } else if secs < 2.0 * 3600.0 {
        format!("{} min", (secs / 60.0).round() as u64)
    } else if secs < 48.0 * 3600.0 {
        format!("{:.1} h", secs / 3600.0)
    } else {
        format!("{:.1} days", secs / 86400.0)
    }
}

/// The backlog that holds `secs` seconds of writes at `rate` bytes/s, rounded up to a whole MB.
pub fn suggest_backlog(rate_bytes_per_sec: f64, secs: u64) -> u64 {
    let need = (rate_bytes_per_sec.max(0.0) * secs as f64).ceil();
    // f64 → u64 saturates; anything beyond u64 is absurd anyway.
    round_up_mb(need as u64)
}

/// Whether a replication backlog survives a link break, given the observed write rate.
#[derive(Clone, Debug, PartialEq)]
pub struct BacklogVerdict {
    pub level: Level,
    /// Seconds of writes the backlog holds; `None` when no writes were seen.
    pub covered_secs: Option<f64>,
    /// A backlog size that holds `suggest_secs` of writes, when the current one is too small.
    pub suggested: Option<u64>,
}

/// Warn when `backlog` bytes hold less than `min_secs` of writes at `rate`, suggesting a size for
/// `suggest_secs` of writes.
pub fn judge_backlog(backlog: u64, rate: f64, min_secs: u64, suggest_secs: u64) -> BacklogVerdict {
    if rate <= 0.0 || !rate.is_finite() {
        return BacklogVerdict {
            level: Level::Ok,
            covered_secs: None,
            suggested: None,
        };
    }
    let covered = backlog as f64 / rate;
    if covered < min_secs as f64 {
        BacklogVerdict {
            level: Level::Warn,
            covered_secs: Some(covered),
            suggested: Some(suggest_backlog(rate, suggest_secs.max(min_secs)).max(backlog)),
        }
    } else {
        BacklogVerdict {
            level: Level::Ok,
            covered_secs: Some(covered),
            suggested: None,
        }
    }
}

/// Whether the copy fits in the target's `maxmemory`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryVerdict {
    pub level: Level,
    /// Target's used memory plus the sources' data.
    pub need: u64,
    /// A `maxmemory` that leaves the wanted headroom, when the current one does not.
    pub suggested: Option<u64>,
}

/// `maxmemory` (0 = no limit) against the target's own `used` memory plus the sources' `data`: an error
/// when it cannot fit, a warning when less than `headroom_pct` percent of `maxmemory` would stay free.
pub fn judge_memory(maxmemory: u64, used: u64, data: u64, headroom_pct: u64) -> MemoryVerdict {
    let need = used.saturating_add(data);
    if maxmemory == 0 {
        return MemoryVerdict {
            level: Level::Ok,
            need,
            suggested: None,
        };
    }
    let pct = headroom_pct.min(90);
    // need / (1 - pct/100), in integers.
    let suggested = round_up_mb(
        (u128::from(need) * 100)
            .div_ceil(u128::from(100 - pct))
            .min(u128::from(u64::MAX)) as u64,
    );
    let level = if need > maxmemory {
        Level::Error
    } else if u128::from(maxmemory - need) * 100 < u128::from(maxmemory) * u128::from(pct) {
        Level::Warn
    } else {
        Level::Ok
    };
    MemoryVerdict {
        level,
        need,
        suggested: (level != Level::Ok).then_some(suggested),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_and_formats() {
        assert_eq!(round_up_mb(0), MB);
        assert_eq!(round_up_mb(1), MB);
        assert_eq!(round_up_mb(MB), MB);
        assert_eq!(round_up_mb(MB + 1), 2 * MB);
        assert_eq!(fmt_bytes(512), "512 B");
        assert_eq!(fmt_bytes(16 * 1024), "16.0 KB");
        assert_eq!(fmt_bytes(3 * MB / 2), "1.5 MB");
        assert_eq!(fmt_bytes(2 << 30), "2.0 GB");
        assert_eq!(fmt_config_size(26 * MB - 5), "26mb");
        assert_eq!(fmt_config_size(2048 * MB), "2gb");
        assert_eq!(fmt_rate(87_347.0), "85.3 KB/s");
        assert_eq!(fmt_secs(4.44), "4.4 s");
        assert_eq!(fmt_secs(42.4), "42 s");
        assert_eq!(fmt_config_size(20744 * MB), "20744mb (20.3 GB)");
        assert_eq!(fmt_secs(720.0), "12 min");
        assert_eq!(fmt_secs(3.25 * 3600.0), "3.2 h");
    }

    #[test]
    fn backlog_advice_arithmetic() {
        // 1 MB at 100 KB/s holds ~10 s: warn, suggest 300 s of writes = 29.3 MB → 30 MB.
        let v = judge_backlog(MB, 100.0 * 1024.0, 60, 300);
        assert_eq!(v.level, Level::Warn);
        assert!((v.covered_secs.unwrap() - 10.24).abs() < 0.01);
        assert_eq!(v.suggested, Some(30 * MB));
        assert_eq!(suggest_backlog(100.0 * 1024.0, 300), 30 * MB);
        // Exactly 60 s covered is enough.
        let v = judge_backlog(60 * 1000, 1000.0, 60, 300);
        assert_eq!((v.level, v.suggested), (Level::Ok, None));
        // Just below: warn; a tiny rate still suggests at least 1 MB.
        let v = judge_backlog(59 * 1000, 1000.0, 60, 300);
        assert_eq!((v.level, v.suggested), (Level::Warn, Some(MB)));
        // No writes seen: nothing to say.
        let v = judge_backlog(MB, 0.0, 60, 300);
        assert_eq!(
            (v.level, v.covered_secs, v.suggested),
            (Level::Ok, None, None)
        );
        assert_eq!(judge_backlog(MB, f64::NAN, 60, 300).level, Level::Ok);
        // A huge rate does not overflow.
        assert!(judge_backlog(MB, 1e30, 60, 300).suggested.unwrap() >= MB);
    }

    #[test]
    fn memory_fit_and_headroom() {
        // No limit: fine whatever the need.
        assert_eq!(judge_memory(0, 10 * MB, 1 << 40, 20).level, Level::Ok);
        // 100 MB limit, 1 MB used, 90 MB data: fits with 9 % free → warn, suggest 91 / 0.8 = 113.75 → 114 MB.
        let v = judge_memory(100 * MB, MB, 90 * MB, 20);
        assert_eq!(v.level, Level::Warn);
        assert_eq!(v.need, 91 * MB);
        assert_eq!(v.suggested, Some(114 * MB));
        // Does not fit → error.
        let v = judge_memory(100 * MB, MB, 100 * MB, 20);
        assert_eq!(v.level, Level::Error);
        assert_eq!(v.suggested, Some(127 * MB));
        // Exactly 20 % free: fine.
        let v = judge_memory(100 * MB, 0, 80 * MB, 20);
        assert_eq!((v.level, v.suggested), (Level::Ok, None));
        // Saturating.
        assert_eq!(judge_memory(1, u64::MAX, u64::MAX, 20).level, Level::Error);
    }
}
