//! `GET /metrics`: the status in the Prometheus text exposition format (version 0.0.4).
//!
//! Every metric is named `ferry_*`; per-source series carry `source="…"`, per-target series
//! `target="…"`. Unknown values (an offset not yet known, a diskless RDB's size) are left out rather than
//! exported as -1. The list of metrics is in `docs/status.md`.

use std::fmt::Write;

use super::snapshot::StatusSnapshot;
use super::{JobPhase, SourceState};

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Escape a label value: backslash, double quote and line feed.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// One metric family being built.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    /// (suffix appended to the name, labels, value)
    samples: Vec<(&'static str, String, String)>,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Family {
        Family {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    fn add(&mut self, labels: &[(&str, &str)], value: impl ToString) {
        self.add_suffixed("", labels, value);
    }

    fn add_suffixed(
        &mut self,
        suffix: &'static str,
        labels: &[(&str, &str)],
        value: impl ToString,
    ) {
        let labels = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
            .collect::<Vec<_>>()
            .join(",");
        self.samples.push((suffix, labels, value.to_string()));
    }

    fn write(&self, out: &mut String) {
        if self.samples.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        for (suffix, labels, value) in &self.samples {
            if labels.is_empty() {
                let _ = writeln!(out, "{}{suffix} {value}", self.name);
            } else {
                let _ = writeln!(out, "{}{suffix}{{{labels}}} {value}", self.name);
            }
        }
    }
}

fn seconds_from_ms(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

fn seconds_from_us(us: u64) -> f64 {
    us as f64 / 1_000_000.0
}

/// Families of one source-or-target dimension, in output order.
struct Families(Vec<Family>);

impl Families {
    fn get(&mut self, name: &'static str, kind: &'static str, help: &'static str) -> &mut Family {
        let i = match self.0.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                self.0.push(Family::new(name, kind, help));
                self.0.len() - 1
            }
        };
        &mut self.0[i]
    }

    fn gauge(&mut self, name: &'static str, help: &'static str) -> &mut Family {
        self.get(name, "gauge", help)
    }

    fn counter(&mut self, name: &'static str, help: &'static str) -> &mut Family {
        self.get(name, "counter", help)
    }
}

/// Render `s` as Prometheus text.
pub fn render(s: &StatusSnapshot) -> String {
    let mut f = Families(Vec::new());

    f.gauge("ferry_build_info", "The ferry build; always 1.")
        .add(&[("version", &s.ferry_version)], 1);
    let phase = f.gauge(
        "ferry_job_phase",
        "1 for the job's current phase, 0 for the others.",
    );
    for p in JobPhase::ALL {
        phase.add(
            &[("phase", p.as_str())],
            u8::from(p.as_str() == s.job.phase),
        );
    }
    f.counter(
        "ferry_layout_restarts_total",
        "Times the job continued on a new slot layout of a cluster target (a resharding, a failover).",
    )
    .add(&[], s.job.layout_restarts);
    f.gauge(
        "ferry_job_start_time_seconds",
        "When the job started, in seconds since the Unix epoch.",
    )
    .add(&[], seconds_from_ms(s.job.started_at_unix_ms));
    f.gauge("ferry_job_uptime_seconds", "Seconds since the job started.")
        .add(&[], s.job.uptime_seconds);
    f.gauge(
        "ferry_healthy",
        "1 while the job runs and no source failed (what /healthz answers with 200), else 0.",
    )
    .add(&[], u8::from(s.job.healthy));

    for src in &s.sources {
        let l: &[(&str, &str)] = &[("source", &src.name)];
        f.gauge(
            "ferry_source_info",
            "A source's kind, twemproxy pool and the master's replication id; always 1.",
        )
        .add(
            &[
                ("source", &src.name),
                ("kind", &src.kind),
                ("pool", src.pool.as_deref().unwrap_or("")),
                ("replid", src.replid.as_deref().unwrap_or("")),
            ],
            1,
        );
        let state = f.gauge(
            "ferry_source_state",
            "1 for the source's current state, 0 for the others.",
        );
        for st in SourceState::ALL {
            state.add(
                &[("source", &src.name), ("state", st.as_str())],
                u8::from(st.as_str() == src.state),
            );
        }
        let known = |v: i64| (v >= 0).then_some(v);
        if let Some(v) = known(src.received_offset) {
            f.gauge(
                "ferry_source_received_offset",
                "Master replication offset of the last byte received.",
            )
            .add(l, v);
        }
        if let Some(v) = known(src.applied_offset) {
            f.gauge(
                "ferry_source_applied_offset",
                "Master replication offset applied on the target (acknowledged to the master).",
            )
            .add(l, v);
        }
        if let Some(v) = known(src.master_offset) {
            f.gauge(
                "ferry_source_master_offset",
                "The master's own replication offset, when known.",
            )
            .add(l, v);
        }
        if let Some(v) = known(src.lag_bytes) {
            f.gauge(
                "ferry_source_lag_bytes",
                "Bytes received from the master and not yet applied on the target.",
            )
            .add(l, v);
        }
        if let Some(v) = known(src.lag_ms) {
            f.gauge(
                "ferry_source_lag_seconds",
                "How long ago the oldest received byte not yet applied arrived; 0 when caught up.",
            )
            .add(l, seconds_from_ms(v as u64));
        }
        if let Some(v) = known(src.heartbeat_lag_ms) {
            f.gauge(
                "ferry_source_heartbeat_lag_seconds",
                "End-to-end lag measured with the heartbeat key.",
            )
            .add(l, seconds_from_ms(v as u64));
        }
        f.gauge(
            "ferry_source_rdb_received_bytes",
            "RDB bytes received in the current (or last) full sync.",
        )
        .add(l, src.rdb.bytes_received);
        f.gauge(
            "ferry_source_rdb_applied_bytes",
            "RDB bytes decoded and applied in the current (or last) full sync.",
        )
        .add(l, src.rdb.bytes_applied);
        if let Some(v) = known(src.rdb.bytes_total) {
            f.gauge(
                "ferry_source_rdb_total_bytes",
                "Size of the RDB of the current (or last) full sync, when known.",
            )
            .add(l, v);
        }
        f.gauge(
            "ferry_source_rdb_keys_loaded",
            "Keys loaded in the current (or last) full sync.",
        )
        .add(l, src.rdb.keys_loaded);
        f.counter("ferry_source_full_syncs_total", "Full syncs started.")
            .add(l, src.full_syncs);
        f.counter(
            "ferry_source_partial_syncs_total",
            "Partial resyncs accepted by the master.",
        )
        .add(l, src.partial_syncs);
        f.counter(
            "ferry_source_reconnects_total",
            "Reconnects after a lost link.",
        )
        .add(l, src.reconnects);
        if let Some(sp) = &src.spool {
            f.gauge(
                "ferry_source_spool_memory_bytes",
                "Bytes the source's spool holds in memory.",
            )
            .add(l, sp.mem_bytes);
            f.gauge(
                "ferry_source_spool_disk_bytes",
                "Bytes the source's spool holds on disk.",
            )
            .add(l, sp.disk_bytes);
            f.gauge(
                "ferry_source_spool_disk_limit_bytes",
                "The spool's disk limit; at the limit the link stops reading.",
            )
            .add(l, sp.disk_limit_bytes);
            f.counter(
                "ferry_source_spool_spilled_bytes_total",
                "Bytes that went to the spool's disk part.",
            )
            .add(l, sp.spilled_bytes_total);
            f.counter(
                "ferry_source_spool_disk_full_waits_total",
                "Times the link waited because the spool's disk limit was reached.",
            )
            .add(l, sp.disk_full_waits);
        }
        if let Some(cp) = &src.checkpoint {
            f.gauge(
                "ferry_source_checkpoint_offset",
                "Offset of the last checkpoint written.",
            )
            .add(l, cp.offset);
            f.gauge(
                "ferry_source_checkpoint_time_seconds",
                "When the last checkpoint was written, in seconds since the Unix epoch.",
            )
            .add(l, seconds_from_ms(cp.written_at_unix_ms));
        }
    }

    for t in &s.targets {
        let l: &[(&str, &str)] = &[("target", &t.address)];
        f.gauge(
            "ferry_target_connections",
            "Open connections to the target.",
        )
        .add(l, t.connections);
        f.counter(
            "ferry_target_writes_sent_total",
            "Writes sent to the target.",
        )
        .add(l, t.writes_sent);
        f.counter(
            "ferry_target_writes_acknowledged_total",
            "Writes the target answered (accepted or rejected).",
        )
        .add(l, t.writes_acknowledged);
        f.counter(
            "ferry_target_writes_rejected_total",
            "Writes the target rejected with an error reply.",
        )
        .add(l, t.writes_rejected);
        f.counter(
            "ferry_target_bytes_written_total",
            "Bytes written to the target.",
        )
        .add(l, t.bytes_written);
        f.gauge(
            "ferry_target_inflight_bytes",
            "Bytes written or queued and not yet answered.",
        )
        .add(l, t.inflight_bytes);
        f.counter(
            "ferry_target_reconnects_total",
            "Reconnects after a lost target connection.",
        )
        .add(l, t.reconnects);
        f.counter(
            "ferry_target_resent_total",
            "Writes sent again after a reconnect.",
        )
        .add(l, t.resent);
        f.counter(
            "ferry_target_commits_confirmed_total",
            "Transactions whose reply was lost but which the in-target checkpoint showed applied (not re-sent).",
        )
        .add(l, t.commits_confirmed);
        f.counter(
            "ferry_target_transactions_retried_total",
            "Transactions discarded by the target (EXECABORT) and written again without the refused commands.",
        )
        .add(l, t.transactions_retried);
        for (kind, n) in [
            ("ask", t.redirects.ask),
            ("moved", t.redirects.moved),
            ("retry", t.redirects.retries),
        ] {
            f.counter(
                "ferry_target_redirected_writes_total",
                "Cluster target: writes that followed a redirection (kind=ask|moved), or transactions written \
                 again after TRYAGAIN/CLUSTERDOWN/LOADING (kind=retry).",
            )
            .add(&[("target", &t.address), ("kind", kind)], n);
        }
        f.counter(
            "ferry_target_split_transactions_total",
            "Source transactions whose keys span slots of a sharded target, applied as one transaction per slot.",
        )
        .add(l, t.split_transactions);
        for (cmd, n) in &t.split_commands {
            f.counter(
                "ferry_target_split_commands_total",
                "Multi-key commands whose keys span slots of a sharded target, cut into per-slot commands.",
            )
            .add(&[("target", &t.address), ("command", cmd)], n);
        }
        for (kind, n) in &t.rejected_by_kind {
            f.counter(
                "ferry_target_rejected_writes_by_kind_total",
                "Rejected writes by error kind (OOM, BUSYKEY, WRONGTYPE, SCRIPT, ERR, ...).",
            )
            .add(&[("target", &t.address), ("kind", kind)], n);
        }
        for (cmd, n) in &t.rejected_by_command {
            f.counter(
                "ferry_target_rejected_writes_by_command_total",
                "Rejected writes by command name.",
            )
            .add(&[("target", &t.address), ("command", cmd)], n);
        }
        let lat = f.get(
            "ferry_target_write_latency_seconds",
            "summary",
            "Write round trips (written to reply read): quantiles over the last 1-2 minutes, sum and count since start.",
        );
        for (q, v) in [
            ("0.5", t.latency_recent.p50_us),
            ("0.9", t.latency_recent.p90_us),
            ("0.99", t.latency_recent.p99_us),
            ("0.999", t.latency_recent.p999_us),
        ] {
            lat.add(
                &[("target", &t.address), ("quantile", q)],
                seconds_from_us(v),
            );
        }
        lat.add_suffixed("_sum", l, seconds_from_us(t.latency.sum_us));
        lat.add_suffixed("_count", l, t.latency.count);
        f.gauge(
            "ferry_target_write_latency_max_seconds",
            "Longest write round trip since start.",
        )
        .add(l, seconds_from_us(t.latency.max_us));
    }

    if let Some(a) = &s.apply {
        f.counter(
            "ferry_apply_keys_applied_total",
            "Snapshot keys written (all sources).",
        )
        .add(&[], a.keys_applied);
        f.counter(
            "ferry_apply_keys_expired_skipped_total",
            "Snapshot keys skipped because their expiry had passed.",
        )
        .add(&[], a.keys_expired_skipped);
        f.counter(
            "ferry_apply_keys_restored_total",
            "Snapshot keys written with RESTORE.",
        )
        .add(&[], a.keys_restored);
        f.counter(
            "ferry_apply_keys_reencoded_total",
            "Snapshot keys written with native commands.",
        )
        .add(&[], a.keys_reencoded);
        f.counter(
            "ferry_apply_big_keys_total",
            "Snapshot keys written in chunks under a temporary name.",
        )
        .add(&[], a.big_keys);
        f.counter("ferry_apply_functions_total", "Function libraries loaded.")
            .add(&[], a.functions);
    }

    let mut out = String::with_capacity(8192);
    for fam in &f.0 {
        fam.write(&mut out);
    }
    out
}
