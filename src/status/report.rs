//! A periodic summary in the log: one info line per source (state, lag, rates) and per target (write
//! rate, rejections, latency), every `interval` (30 s is a good default).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::progress::{human_bytes, human_duration};
use super::snapshot::{SourceSnapshot, StatusSnapshot, TargetSnapshot};
use super::Status;

/// Log a summary of `status` every `interval` until `cancel` fires. Needs a tokio runtime.
pub fn spawn_reporter(
    status: Arc<Status>,
    interval: Duration,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let interval = interval.max(Duration::from_millis(1));
    tokio::spawn(async move {
        let mut prev = status.snapshot();
        let mut prev_at = tokio::time::Instant::now();
        let mut tick = tokio::time::interval_at(prev_at + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            let now = status.snapshot();
            let now_at = tokio::time::Instant::now();
            let dt = now_at.saturating_duration_since(prev_at);
            for s in &now.sources {
                let before = prev.sources.iter().find(|p| p.name == s.name);
                let line = source_line(before, s, dt);
                tracing::info!(source = %s.name, state = %s.state, lag_bytes = s.lag_bytes,
                    lag_ms = s.lag_ms, "{line}");
            }
            for t in &now.targets {
                let before = prev.targets.iter().find(|p| p.address == t.address);
                let line = target_line(before, t, dt);
                tracing::info!(target_addr = %t.address, rejected = t.writes_rejected,
                    inflight_bytes = t.inflight_bytes, "{line}");
            }
            prev = now;
            prev_at = now_at;
        }
    })
}

fn per_sec(delta: u64, dt: Duration) -> u64 {
    let s = dt.as_secs_f64();
    if s > 0.0 {
        (delta as f64 / s) as u64
    } else {
        0
    }
}

fn delta(now: i64, before: Option<i64>) -> u64 {
    match before {
        Some(b) if b >= 0 && now >= b => (now - b) as u64,
        _ => 0,
    }
}

/// The summary sentence of one source, given its previous reading `before`, `dt` earlier (rates are
/// shown only with a previous reading).
pub fn source_line(before: Option<&SourceSnapshot>, s: &SourceSnapshot, dt: Duration) -> String {
    let mut line = format!("source {}: {}", s.name, s.state.replace('_', " "));
    match s.state.as_str() {
        "full_sync" => {
            let applied = s.rdb.bytes_applied;
            let rate = per_sec(
                applied.saturating_sub(before.map_or(0, |b| b.rdb.bytes_applied)),
                dt,
            );
            line.push_str(&format!(", RDB applied {}", human_bytes(applied)));
            if let Ok(total) = u64::try_from(s.rdb.bytes_total) {
                line.push_str(&format!(" of {}", human_bytes(total)));
            }
            line.push_str(&format!(
                ", received {}, {} keys",
                human_bytes(s.rdb.bytes_received),
                s.rdb.keys_loaded,
            ));
            if before.is_some() {
                line.push_str(&format!(", {}/s", human_bytes(rate)));
            }
        }
        _ => {
            if s.lag_bytes >= 0 {
                line.push_str(&format!(", lag {}", human_bytes(s.lag_bytes as u64)));
                if s.lag_ms >= 0 {
                    line.push_str(&format!(
                        " / {}",
                        human_lag(Duration::from_millis(s.lag_ms as u64))
                    ));
                }
            }
            if s.heartbeat_lag_ms >= 0 {
                line.push_str(&format!(
                    ", heartbeat lag {}",
                    human_lag(Duration::from_millis(s.heartbeat_lag_ms as u64))
                ));
            }
            if let Some(b) = before {
                let recv = delta(s.received_offset, Some(b.received_offset));
                let appl = delta(s.applied_offset, Some(b.applied_offset));
                line.push_str(&format!(
                    ", receiving {}/s, applying {}/s",
                    human_bytes(per_sec(recv, dt)),
                    human_bytes(per_sec(appl, dt))
                ));
            }
        }
    }
    if let Some(sp) = &s.spool {
        if sp.disk_bytes > 0 {
            line.push_str(&format!(
                ", spool on disk {} of {}",
                human_bytes(sp.disk_bytes),
                human_bytes(sp.disk_limit_bytes)
            ));
        }
    }
    if s.reconnects > 0 {
        line.push_str(&format!(", {} reconnects", s.reconnects));
    }
    if let (Some(e), "failed" | "link_down") = (&s.last_error, s.state.as_str()) {
        line.push_str(&format!(", last error: {e}"));
    }
    line
}

fn human_lag(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        human_duration(d)
    }
}

/// The summary sentence of one target.
pub fn target_line(before: Option<&TargetSnapshot>, t: &TargetSnapshot, dt: Duration) -> String {
    let acked = t
        .writes_acknowledged
        .saturating_sub(before.map_or(0, |b| b.writes_acknowledged));
    let bytes = t
        .bytes_written
        .saturating_sub(before.map_or(0, |b| b.bytes_written));
    let mut line = format!("target {}: ", t.address);
    if before.is_some() {
        line.push_str(&format!(
            "{} writes/s, {}/s, ",
            per_sec(acked, dt),
            human_bytes(per_sec(bytes, dt))
        ));
    } else {
        line.push_str(&format!(
            "{} writes acknowledged, {} written, ",
            t.writes_acknowledged,
            human_bytes(t.bytes_written)
        ));
    }
    line.push_str(&format!(
        "{} connections, {} in flight",
        t.connections,
        human_bytes(t.inflight_bytes)
    ));
    if t.latency_recent.count > 0 {
        line.push_str(&format!(
            ", round trip p50 {} p99 {} (last minutes)",
            human_lag(Duration::from_micros(t.latency_recent.p50_us)),
            human_lag(Duration::from_micros(t.latency_recent.p99_us))
        ));
    }
    if t.writes_rejected > 0 {
        let kinds: Vec<String> = t
            .rejected_by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        line.push_str(&format!(", {} writes rejected", t.writes_rejected));
        if !kinds.is_empty() {
            line.push_str(&format!(" ({})", kinds.join(", ")));
        }
    }
    line
}

/// The whole status for a person (what `ferry status ADDR` prints): the job, then one paragraph per source
/// and per target.
pub fn render_text(s: &StatusSnapshot) -> String {
    let mut out = format!(
        "ferry {}: job {}, up {}{}\n",
        s.ferry_version,
        s.job.phase,
        human_duration(Duration::from_secs_f64(s.job.uptime_seconds.max(0.0))),
        if s.job.healthy { "" } else { ", UNHEALTHY" }
    );
    for p in &s.job.problems {
        out.push_str(&format!("  ! {p}\n"));
    }
    for src in &s.sources {
        out.push_str(&source_line(None, src, Duration::ZERO));
        out.push('\n');
        out.push_str(&format!(
            "  kind {}{}, replid {}, offsets received {} applied {} master {}, full syncs {}, partial {}\n",
            src.kind,
            src.pool.as_deref().map(|p| format!(" (pool {p})")).unwrap_or_default(),
            src.replid.as_deref().unwrap_or("-"),
            src.received_offset,
            src.applied_offset,
            src.master_offset,
            src.full_syncs,
            src.partial_syncs
        ));
        if let Some(cp) = &src.checkpoint {
            out.push_str(&format!("  checkpoint at offset {}\n", cp.offset));
        }
    }
    for t in &s.targets {
        out.push_str(&target_line(None, t, Duration::ZERO));
        out.push('\n');
        for (cmd, n) in &t.rejected_by_command {
            out.push_str(&format!("  rejected {cmd}: {n}\n"));
        }
    }
    out
}
