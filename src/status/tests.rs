use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::progress::{facts, human_bytes, human_duration, Reading};
use super::*;
use crate::endpoint::RedisAddr;

/// A status with one master, one twemproxy member, one rdb file and one target, every figure set.
fn filled() -> (Status, Arc<SourceStatus>, Arc<TargetStatus>) {
    let status = Status::new();
    status.set_phase(JobPhase::Running);
    let addr: RedisAddr = "redis://alice:s3cr3t-pw@10.1.2.3:6379".parse().unwrap();
    let m = status.add_source(&addr, SourceKind::Master);
    m.full_sync_started("8371b4fb1155b71f4a04d3e1bc3e18c4a990aeeb", 1000, Some(4096));
    m.add_rdb_received(4096);
    m.add_rdb_applied(2048);
    m.add_keys_loaded(10);
    m.set_state(SourceState::Streaming);
    m.set_applied_offset(1000);
    m.set_received_offset(1500);
    m.set_master_offset(1600);
    m.set_heartbeat_lag(Duration::from_millis(42));
    m.checkpoint_written(1000);
    let spool = Arc::new(crate::spool::SpoolStats::default());
    spool.mem_bytes.store(100, Ordering::Relaxed);
    spool.disk_bytes.store(200, Ordering::Relaxed);
    spool.spilled_bytes_total.store(300, Ordering::Relaxed);
    m.set_spool(spool, 1 << 30);

    let tw = status.add_source(
        "redis://10.1.2.4:6380",
        SourceKind::TwemproxyMember {
            pool: "alpha".into(),
        },
    );
    tw.link_down("connection reset by peer");
    tw.reconnecting();
    tw.failed("cannot connect: connection refused; check that the master runs");

    let f = status.add_source("rdb:/tmp/dump.rdb", SourceKind::Rdb);
    f.full_sync_started("", -1, None);
    f.done();

    let taddr: RedisAddr = "redis://:t4rget-pw@127.0.0.1:7000".parse().unwrap();
    let stats = Arc::new(crate::target::stats::TargetStats::default());
    stats.commands_ok.store(90, Ordering::Relaxed);
    stats.bytes_written.store(12345, Ordering::Relaxed);
    stats.reconnects.store(1, Ordering::Relaxed);
    let t = status.add_target(&taddr, stats);
    t.set_connections(4);
    t.add_sent(100);
    t.inflight_add(700);
    t.inflight_sub(200);
    assert!(t.record_rejection(
        "SET",
        "OOM command not allowed when used memory > 'maxmemory'."
    ));
    assert!(!t.record_rejection(
        "SET",
        "OOM command not allowed when used memory > 'maxmemory'."
    ));
    t.record_rejection("RESTORE", "BUSYKEY Target key name already exists.");
    t.record_rejection(
        "EVAL",
        "ERR user_script:1: Script attempted to access nonexistent global variable 'x'",
    );
    t.record_rejection(
        "LPUSH",
        "WRONGTYPE Operation against a key holding the wrong kind of value",
    );
    for us in [100, 200, 300, 400, 5000] {
        t.latency().record(Duration::from_micros(us));
    }
    let apply = Arc::new(crate::apply::ApplyStats::default());
    apply.keys_applied.store(10, Ordering::Relaxed);
    status.set_apply_stats(apply);
    (status, m, t)
}

fn keys(v: &serde_json::Value) -> BTreeSet<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn passwords_never_appear_in_json_metrics_or_text() {
    let (status, _, _) = filled();
    let snap = status.snapshot();
    let json = snap.to_json();
    let metrics = prometheus::render(&snap);
    let text = report::render_text(&snap);
    for out in [&json, &metrics, &text] {
        assert!(!out.contains("s3cr3t-pw"), "{out}");
        assert!(!out.contains("t4rget-pw"), "{out}");
    }
    assert!(json.contains("redis://alice@10.1.2.3:6379"), "{json}");
    assert!(
        metrics.contains("target=\"redis://127.0.0.1:7000\""),
        "{metrics}"
    );
}

/// The JSON field names are a contract (docs/status.md): this test fails when one is renamed or removed.
#[test]
fn json_field_names_are_stable() {
    let (status, _, _) = filled();
    let v: serde_json::Value = serde_json::from_str(&status.snapshot().to_json()).unwrap();
    assert_eq!(
        keys(&v),
        set(&[
            "schema_version",
            "ferry_version",
            "job",
            "sources",
            "targets",
            "apply"
        ])
    );
    assert_eq!(v["schema_version"], 1);
    assert_eq!(
        keys(&v["job"]),
        set(&[
            "phase",
            "layout_restarts",
            "started_at_unix_ms",
            "uptime_seconds",
            "healthy",
            "problems"
        ])
    );
    assert_eq!(
        keys(&v["sources"][0]),
        set(&[
            "name",
            "kind",
            "pool",
            "state",
            "state_since_unix_ms",
            "last_error",
            "last_error_at_unix_ms",
            "replid",
            "received_offset",
            "applied_offset",
            "master_offset",
            "lag_bytes",
            "lag_ms",
            "heartbeat_lag_ms",
            "rdb",
            "full_syncs",
            "partial_syncs",
            "reconnects",
            "spool",
            "checkpoint"
        ])
    );
    assert_eq!(
        keys(&v["sources"][0]["rdb"]),
        set(&[
            "bytes_received",
            "bytes_applied",
            "bytes_total",
            "keys_loaded",
            "started_at_unix_ms"
        ])
    );
    assert_eq!(
        keys(&v["sources"][0]["spool"]),
        set(&[
            "mem_bytes",
            "disk_bytes",
            "disk_limit_bytes",
            "spilled_bytes_total",
            "mem_high_water_bytes",
            "disk_high_water_bytes",
            "disk_full_waits"
        ])
    );
    assert_eq!(
        keys(&v["sources"][0]["checkpoint"]),
        set(&["offset", "written_at_unix_ms"])
    );
    assert_eq!(
        keys(&v["targets"][0]),
        set(&[
            "address",
            "connections",
            "writes_sent",
            "writes_acknowledged",
            "writes_ok",
            "writes_rejected",
            "bytes_written",
            "inflight_bytes",
            "reconnects",
            "resent",
            "commits_confirmed",
            "transactions_retried",
            "redirects",
            "split_commands",
            "split_transactions",
            "rejected_by_kind",
            "rejected_by_command",
            "latency",
            "latency_recent"
        ])
    );
    assert_eq!(
        keys(&v["targets"][0]["latency"]),
        set(&["count", "sum_us", "p50_us", "p90_us", "p99_us", "p999_us", "max_us"])
    );
    assert_eq!(
        keys(&v["apply"]),
        set(&[
            "keys_applied",
            "keys_expired_skipped",
            "keys_restored",
            "keys_reencoded",
            "big_keys",
            "functions"
        ])
    );
}

#[test]
fn json_values() {
    let (status, _, _) = filled();
    let v: serde_json::Value = serde_json::from_str(&status.snapshot().to_json()).unwrap();
    let m = &v["sources"][0];
    assert_eq!(m["kind"], "master");
    assert_eq!(m["pool"], serde_json::Value::Null);
    assert_eq!(m["state"], "streaming");
    assert_eq!(m["replid"], "8371b4fb1155b71f4a04d3e1bc3e18c4a990aeeb");
    assert_eq!(m["received_offset"], 1500);
    assert_eq!(m["applied_offset"], 1000);
    assert_eq!(m["master_offset"], 1600);
    assert_eq!(m["lag_bytes"], 500);
    assert!(m["lag_ms"].as_i64().is_some_and(|ms| ms >= 0), "{m}");
    assert_eq!(m["heartbeat_lag_ms"], 42);
    assert_eq!(m["rdb"]["bytes_total"], 4096);
    assert_eq!(m["rdb"]["bytes_applied"], 2048);
    assert_eq!(m["rdb"]["keys_loaded"], 10);
    assert_eq!(m["full_syncs"], 1);
    assert_eq!(m["spool"]["disk_limit_bytes"], 1u64 << 30);
    assert_eq!(m["checkpoint"]["offset"], 1000);

    let tw = &v["sources"][1];
    assert_eq!(tw["kind"], "twemproxy_member");
    assert_eq!(tw["pool"], "alpha");
    assert_eq!(tw["state"], "failed");
    assert_eq!(tw["reconnects"], 1);
    assert!(tw["last_error"]
        .as_str()
        .is_some_and(|e| e.contains("connection refused")));
    assert_eq!(tw["received_offset"], -1);
    assert_eq!(tw["lag_bytes"], -1);
    assert_eq!(tw["lag_ms"], -1);
    assert_eq!(tw["rdb"]["bytes_total"], -1);
    assert_eq!(tw["rdb"]["started_at_unix_ms"], -1);
    assert_eq!(tw["spool"], serde_json::Value::Null);
    assert_eq!(tw["checkpoint"], serde_json::Value::Null);

    let f = &v["sources"][2];
    assert_eq!(
        (f["kind"].as_str(), f["state"].as_str()),
        (Some("rdb"), Some("done"))
    );
    assert_eq!(f["replid"], serde_json::Value::Null);

    let t = &v["targets"][0];
    assert_eq!(t["address"], "redis://127.0.0.1:7000");
    assert_eq!(t["connections"], 4);
    assert_eq!(t["writes_sent"], 100);
    assert_eq!(t["writes_ok"], 90);
    assert_eq!(t["writes_rejected"], 5);
    assert_eq!(t["writes_acknowledged"], 95);
    assert_eq!(t["inflight_bytes"], 500);
    assert_eq!(t["rejected_by_kind"]["OOM"], 2);
    assert_eq!(t["rejected_by_kind"]["BUSYKEY"], 1);
    assert_eq!(t["rejected_by_kind"]["SCRIPT"], 1);
    assert_eq!(t["rejected_by_kind"]["WRONGTYPE"], 1);
    assert_eq!(t["rejected_by_command"]["SET"], 2);
    assert_eq!(t["latency"]["count"], 5);
    assert_eq!(t["latency"]["sum_us"], 6000);
    assert_eq!(t["latency_recent"]["count"], 5);
    assert_eq!(t["latency_recent"]["sum_us"], 6000);

    assert_eq!(v["job"]["phase"], "running");
    assert_eq!(v["job"]["healthy"], false);
    assert_eq!(v["apply"]["keys_applied"], 10);

    // The document reads back into the same type (what `ferry status ADDR` does).
    let back: StatusSnapshot = serde_json::from_value(v).unwrap();
    assert_eq!(back.sources.len(), 3);
}

/// A sample line of the Prometheus text format: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parse the text exposition format strictly enough to catch mistakes: every sample belongs to a family
/// announced by `# HELP` and `# TYPE` before it, families are contiguous, label values are well escaped.
fn parse_prometheus(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
    let mut types = BTreeMap::new();
    let mut helps = BTreeSet::new();
    let mut samples = Vec::new();
    let mut closed: BTreeSet<String> = BTreeSet::new();
    let mut current: Option<String> = None;
    assert!(text.ends_with('\n'));
    for line in text.lines() {
        assert!(!line.is_empty(), "empty line");
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap();
            assert!(!help.is_empty());
            assert!(helps.insert(name.to_string()), "HELP twice for {name}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                ["counter", "gauge", "summary", "histogram", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(helps.contains(name), "TYPE before HELP for {name}");
            assert!(types.insert(name.to_string(), kind.to_string()).is_none());
            if let Some(c) = current.replace(name.to_string()) {
                closed.insert(c);
            }
            continue;
        }
        assert!(!line.starts_with('#'), "{line}");
        let name_end = line.find(['{', ' ']).unwrap();
        let name = &line[..name_end];
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
            "{name}"
        );
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(r) = rest.strip_prefix('{') {
            let mut r = r;
            loop {
                if let Some(after) = r.strip_prefix('}') {
                    r = after;
                    break;
                }
                let eq = r.find('=').unwrap();
                let key = &r[..eq];
                assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
                r = r[eq + 1..].strip_prefix('"').unwrap();
                let mut val = String::new();
                let mut chars = r.char_indices();
                let end = loop {
                    let (i, c) = chars.next().unwrap();
                    match c {
                        '\\' => match chars.next().unwrap().1 {
                            'n' => val.push('\n'),
                            '\\' => val.push('\\'),
                            '"' => val.push('"'),
                            other => panic!("bad escape \\{other}"),
                        },
                        '"' => break i,
                        c => val.push(c),
                    }
                };
                assert!(labels.insert(key.to_string(), val).is_none());
                r = &r[end + 1..];
                r = r.strip_prefix(',').unwrap_or(r);
            }
            rest = r;
        }
        let value: f64 = rest.strip_prefix(' ').unwrap().parse().unwrap();
        let family = current.clone().unwrap();
        let base = if types.get(&family).map(String::as_str) == Some("summary") {
            name.strip_suffix("_sum")
                .or_else(|| name.strip_suffix("_count"))
                .unwrap_or(name)
        } else {
            name
        };
        assert_eq!(base, family, "sample {name} outside its family");
        assert!(!closed.contains(base), "family {base} is not contiguous");
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    (types, samples)
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

#[test]
fn prometheus_text_parses_with_names_labels_and_values() {
    let (status, _, _) = filled();
    let text = prometheus::render(&status.snapshot());
    let (types, samples) = parse_prometheus(&text);
    assert!(types.keys().all(|n| n.starts_with("ferry_")));
    assert!(samples.iter().all(|s| s.name.starts_with("ferry_")));
    let src = "redis://alice@10.1.2.3:6379";
    let tgt = "redis://127.0.0.1:7000";
    let s = ("source", src);
    assert_eq!(types["ferry_source_full_syncs_total"], "counter");
    assert_eq!(types["ferry_source_lag_bytes"], "gauge");
    assert_eq!(types["ferry_target_write_latency_seconds"], "summary");
    assert_eq!(
        value(&samples, "ferry_job_phase", &[("phase", "running")]),
        Some(1.0)
    );
    assert_eq!(
        value(&samples, "ferry_job_phase", &[("phase", "done")]),
        Some(0.0)
    );
    assert_eq!(value(&samples, "ferry_healthy", &[]), Some(0.0));
    assert_eq!(
        value(&samples, "ferry_source_state", &[s, ("state", "streaming")]),
        Some(1.0)
    );
    assert_eq!(
        value(&samples, "ferry_source_state", &[s, ("state", "failed")]),
        Some(0.0)
    );
    assert_eq!(
        value(
            &samples,
            "ferry_source_info",
            &[s, ("kind", "master"), ("pool", "")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&samples, "ferry_source_received_offset", &[s]),
        Some(1500.0)
    );
    assert_eq!(
        value(&samples, "ferry_source_applied_offset", &[s]),
        Some(1000.0)
    );
    assert_eq!(value(&samples, "ferry_source_lag_bytes", &[s]), Some(500.0));
    assert!(value(&samples, "ferry_source_lag_seconds", &[s]).is_some());
    assert_eq!(
        value(&samples, "ferry_source_heartbeat_lag_seconds", &[s]),
        Some(0.042)
    );
    assert_eq!(
        value(&samples, "ferry_source_rdb_total_bytes", &[s]),
        Some(4096.0)
    );
    assert_eq!(
        value(&samples, "ferry_source_spool_disk_limit_bytes", &[s]),
        Some((1u64 << 30) as f64)
    );
    assert_eq!(
        value(&samples, "ferry_source_checkpoint_offset", &[s]),
        Some(1000.0)
    );
    // Unknown values are left out, not exported as -1.
    let failed = "redis://10.1.2.4:6380";
    assert_eq!(
        value(&samples, "ferry_source_lag_bytes", &[("source", failed)]),
        None
    );
    assert_eq!(
        value(
            &samples,
            "ferry_source_rdb_total_bytes",
            &[("source", failed)]
        ),
        None
    );
    assert_eq!(
        value(
            &samples,
            "ferry_source_state",
            &[("source", failed), ("state", "failed")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            "ferry_source_info",
            &[
                ("source", failed),
                ("kind", "twemproxy_member"),
                ("pool", "alpha")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            "ferry_source_reconnects_total",
            &[("source", failed)]
        ),
        Some(1.0)
    );

    let t = ("target", tgt);
    assert_eq!(value(&samples, "ferry_target_connections", &[t]), Some(4.0));
    assert_eq!(
        value(&samples, "ferry_target_writes_acknowledged_total", &[t]),
        Some(95.0)
    );
    assert_eq!(
        value(&samples, "ferry_target_inflight_bytes", &[t]),
        Some(500.0)
    );
    assert_eq!(
        value(
            &samples,
            "ferry_target_rejected_writes_by_kind_total",
            &[t, ("kind", "OOM")]
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &samples,
            "ferry_target_rejected_writes_by_kind_total",
            &[t, ("kind", "SCRIPT")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            "ferry_target_rejected_writes_by_command_total",
            &[t, ("command", "RESTORE")]
        ),
        Some(1.0)
    );
    let p50 = value(
        &samples,
        "ferry_target_write_latency_seconds",
        &[t, ("quantile", "0.5")],
    )
    .unwrap();
    assert!((p50 - 0.0003).abs() < 0.00001, "{p50}");
    assert_eq!(
        value(&samples, "ferry_target_write_latency_seconds_count", &[t]),
        Some(5.0)
    );
    assert_eq!(
        value(&samples, "ferry_target_write_latency_seconds_sum", &[t]),
        Some(0.006)
    );
    assert_eq!(
        value(&samples, "ferry_apply_keys_applied_total", &[]),
        Some(10.0)
    );
}

#[test]
fn label_values_are_escaped() {
    let status = Status::new();
    status.add_source("rdb:/tmp/we\"ird\\na\nme.rdb", SourceKind::Rdb);
    let text = prometheus::render(&status.snapshot());
    assert!(
        text.contains(r#"source="rdb:/tmp/we\"ird\\na\nme.rdb""#),
        "{text}"
    );
    let (_, samples) = parse_prometheus(&text);
    assert!(samples.iter().any(
        |s| s.labels.get("source").map(String::as_str) == Some("rdb:/tmp/we\"ird\\na\nme.rdb")
    ));
}

#[test]
fn empty_status_renders() {
    let status = Status::new();
    let text = prometheus::render(&status.snapshot());
    let (types, _) = parse_prometheus(&text);
    assert!(types.contains_key("ferry_healthy"));
    assert!(!types.contains_key("ferry_source_state"));
    let v: serde_json::Value = serde_json::from_str(&status.snapshot().to_json()).unwrap();
    assert_eq!(v["job"]["phase"], "starting");
    assert_eq!(v["apply"], serde_json::Value::Null);
}

#[test]
fn health_follows_phase_and_sources() {
    let status = Status::new();
    assert!(status.health().is_ok());
    let s = status.add_source("redis://a:1", SourceKind::Master);
    status.set_phase(JobPhase::Running);
    s.link_down("reset");
    assert!(
        status.health().is_ok(),
        "a link down is retried, not a failure"
    );
    s.failed("gave up: connection refused");
    let problems = status.health().unwrap_err();
    assert!(problems[0].contains("redis://a:1") && problems[0].contains("connection refused"));
    let status = Status::new();
    status.set_phase(JobPhase::Done);
    assert!(status.health().is_err());
}

#[test]
fn registration_is_idempotent_by_name() {
    let status = Status::new();
    let a = status.add_source("redis://a:1", SourceKind::Master);
    let b = status.add_source("redis://a:1", SourceKind::Master);
    assert!(Arc::ptr_eq(&a, &b));
    let stats = Arc::new(crate::target::stats::TargetStats::default());
    let t1 = status.add_target("redis://t:1", stats.clone());
    let t2 = status.add_target("redis://t:1", stats);
    assert!(Arc::ptr_eq(&t1, &t2));
    assert_eq!(status.sources().len(), 1);
    assert_eq!(status.targets().len(), 1);
}

#[test]
fn applied_offset_cell_is_shared() {
    let status = Status::new();
    let s = status.add_source("redis://a:1", SourceKind::Master);
    s.partial_sync_started("abc", 100);
    let cell = s.applied_offset_cell();
    cell.store(60, Ordering::Relaxed);
    assert_eq!(s.applied_offset(), 60);
    assert_eq!(s.lag_bytes(), Some(40));
    let other = Arc::new(std::sync::atomic::AtomicI64::new(100));
    assert!(s.use_applied_offset(other.clone()));
    assert!(!s.use_applied_offset(Arc::new(std::sync::atomic::AtomicI64::new(0))));
    assert!(Arc::ptr_eq(&s.applied_offset_cell(), &other));
    assert_eq!(s.lag_bytes(), Some(0));
    assert_eq!(s.lag_time(), Some(Duration::ZERO));
    other.store(90, Ordering::Relaxed);
    assert_eq!(s.lag_bytes(), Some(10));
    // A full resync makes the applied offset unknown until the snapshot is applied, without writing into
    // the cell (it may be the data path's).
    s.full_sync_started("def", 5000, None);
    assert_eq!(s.applied_offset(), -1);
    assert_eq!(s.lag_bytes(), None);
    assert_eq!(s.state(), SourceState::FullSync);
    assert_eq!(other.load(Ordering::Relaxed), 90);
    other.store(5000, Ordering::Relaxed);
    s.set_state(SourceState::Streaming);
    assert_eq!(s.lag_bytes(), Some(0));
}

#[test]
fn kinds_of_specs() {
    use crate::endpoint::SourceSpec;
    let k = |s: &str| SourceKind::for_spec(&s.parse::<SourceSpec>().unwrap());
    assert_eq!(k("redis://h:1"), SourceKind::Master);
    assert_eq!(k("rdb:/x.rdb"), SourceKind::Rdb);
    assert_eq!(
        k("twemproxy:/etc/nutcracker.yml#alpha"),
        SourceKind::TwemproxyMember {
            pool: "alpha".into()
        }
    );
}

#[test]
fn error_kinds() {
    assert_eq!(error_kind("OOM command not allowed"), "OOM");
    assert_eq!(
        error_kind("BUSYKEY Target key name already exists."),
        "BUSYKEY"
    );
    assert_eq!(error_kind("WRONGTYPE Operation against a key"), "WRONGTYPE");
    assert_eq!(error_kind("NOSCRIPT No matching script."), "NOSCRIPT");
    assert_eq!(
        error_kind("ERR Error running script (call to f_1234)"),
        "SCRIPT"
    );
    assert_eq!(
        error_kind("ERR value is not an integer or out of range"),
        "ERR"
    );
    assert_eq!(error_kind("my custom error"), "OTHER");
    assert_eq!(error_kind(""), "OTHER");
}

#[test]
fn rejection_kinds_are_bounded() {
    let status = Status::new();
    let t = status.add_target(
        "redis://t:1",
        Arc::new(crate::target::stats::TargetStats::default()),
    );
    for i in 0..100 {
        t.count_rejection_kind(&format!("KIND{i} x"));
    }
    let kinds = t.rejected_by_kind();
    assert_eq!(kinds.len(), MAX_REJECTION_KINDS + 1);
    assert_eq!(kinds.values().sum::<u64>(), 100);
    assert_eq!(kinds["OTHER"], 100 - MAX_REJECTION_KINDS as u64);
}

#[test]
fn progress_facts() {
    let t0 = std::time::Instant::now();
    let prev = Reading {
        at: t0,
        received: 0,
        applied: 0,
        keys: 0,
        total: 1000,
    };
    let now = Reading {
        at: t0 + Duration::from_secs(2),
        received: 600,
        applied: 400,
        keys: 7,
        total: 1000,
    };
    let f = facts(&prev, &now);
    assert_eq!(f.rate_bytes_per_sec, 200.0);
    assert_eq!(f.percent, Some(40.0));
    assert_eq!(f.eta, Some(Duration::from_secs(3)));
    assert_eq!(
        f.describe(),
        "applied 400 B of 1000 B (40.0%), received 600 B, 7 keys, 200 B/s, ETA 3s"
    );
    let unknown = Reading { total: -1, ..now };
    let f = facts(&prev, &unknown);
    assert_eq!((f.total_bytes, f.percent, f.eta), (None, None, None));
    let stalled = facts(
        &now,
        &Reading {
            at: now.at + Duration::from_secs(1),
            ..now
        },
    );
    assert_eq!((stalled.rate_bytes_per_sec, stalled.eta), (0.0, None));
    assert_eq!(human_bytes(1536), "1.5 KiB");
    assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    assert_eq!(human_duration(Duration::from_secs(725)), "12m05s");
    assert_eq!(human_duration(Duration::from_secs(11_220)), "3h07m");
}

#[tokio::test]
async fn progress_bars_follow_a_source_and_stop() {
    let status = Status::new();
    let s = status.add_source("redis://a:1", SourceKind::Master);
    s.full_sync_started("r", 0, Some(100));
    let p = FullSyncProgress::start(&ProgressOutput::hidden(), s.clone());
    s.add_rdb_received(100);
    s.add_rdb_applied(50);
    p.finish().await;
    let p = FullSyncProgress::start(&ProgressOutput::logs(Duration::from_secs(3600)), s);
    p.finish().await;
    // Outside a runtime it shows nothing and does not panic.
    let s2 = status.add_source("redis://b:1", SourceKind::Master);
    std::thread::spawn(move || drop(FullSyncProgress::start(&ProgressOutput::hidden(), s2)))
        .join()
        .unwrap();
}

#[test]
fn progress_writer_writes_whole_events() {
    use std::io::Write;
    use tracing_subscriber::fmt::MakeWriter;
    let out = ProgressOutput::hidden();
    assert!(out.draws_bars());
    let mw = out.make_writer();
    let mut w = mw.make_writer();
    w.write_all(b"").unwrap();
    w.flush().unwrap();
    assert!(!ProgressOutput::logs(Duration::from_secs(1)).draws_bars());
}

#[test]
fn report_lines() {
    let (status, m, _) = filled();
    let before = status.snapshot();
    m.set_received_offset(2500);
    m.set_applied_offset(2000);
    let now = status.snapshot();
    let line = report::source_line(
        Some(&before.sources[0]),
        &now.sources[0],
        Duration::from_secs(10),
    );
    assert!(
        line.starts_with("source redis://alice@10.1.2.3:6379: streaming, lag 500 B / "),
        "{line}"
    );
    assert!(
        line.contains("receiving 100 B/s, applying 100 B/s"),
        "{line}"
    );
    assert!(line.contains("heartbeat lag 42 ms"), "{line}");
    let failed = report::source_line(None, &now.sources[1], Duration::ZERO);
    assert!(
        failed.contains("failed") && failed.contains("connection refused"),
        "{failed}"
    );
    let t = report::target_line(
        Some(&before.targets[0]),
        &now.targets[0],
        Duration::from_secs(1),
    );
    assert!(
        t.contains("5 writes rejected (BUSYKEY 1, OOM 2, SCRIPT 1, WRONGTYPE 1)"),
        "{t}"
    );
    let text = report::render_text(&now);
    assert!(
        text.contains("UNHEALTHY") && text.contains("rejected SET: 2"),
        "{text}"
    );
}

/// A `tracing` writer that keeps what it gets and wakes a waiter.
#[derive(Clone)]
struct Capture {
    buf: Arc<std::sync::Mutex<String>>,
    changed: Arc<tokio::sync::Notify>,
}

impl std::io::Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf
            .lock()
            .unwrap()
            .push_str(&String::from_utf8_lossy(b));
        self.changed.notify_one();
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn progress_without_a_terminal_logs_the_facts() {
    let cap = Capture {
        buf: Arc::default(),
        changed: Arc::default(),
    };
    let w = cap.clone();
    let sub = tracing_subscriber::fmt()
        .with_writer(move || w.clone())
        .with_ansi(false)
        .finish();
    // Thread-local: the current-thread runtime runs the progress task on this thread.
    let _guard = tracing::subscriber::set_default(sub);
    let status = Status::new();
    let s = status.add_source("redis://10.9.8.7:6379", SourceKind::Master);
    s.full_sync_started("r", 0, Some(4 << 20));
    s.add_rdb_received(3 << 20);
    s.add_rdb_applied(1 << 20);
    s.add_keys_loaded(77);
    let p = FullSyncProgress::start(&ProgressOutput::logs(Duration::from_millis(5)), s);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = cap.buf.lock().unwrap().clone();
        if text.contains("full sync:") {
            assert!(text.contains("source=redis://10.9.8.7:6379"), "{text}");
            assert!(
                text.contains("applied 1.0 MiB of 4.0 MiB (25.0%), received 3.0 MiB, 77 keys"),
                "{text}"
            );
            assert!(
                text.contains("total_bytes=4194304") && text.contains("keys=77"),
                "{text}"
            );
            break;
        }
        assert!(
            tokio::time::timeout_at(deadline, cap.changed.notified())
                .await
                .is_ok(),
            "no progress line within 10 s: {text:?}"
        );
    }
    p.finish().await;
}

/// A job that continues on a new slot layout registers its sources and targets again: the lists show the
/// new run (a cluster target's nodes as they are now), the restart is counted, the phase carries on.
#[test]
fn a_new_layout_clears_the_registrations_and_counts_the_restart() {
    let (status, _, _) = filled();
    assert!(!status.sources().is_empty() && !status.targets().is_empty());
    status.set_phase(JobPhase::Settling);
    status.new_layout();
    assert!(status.sources().is_empty());
    assert!(status.targets().is_empty());
    assert_eq!(status.layout_restarts(), 1);
    let snap = status.snapshot();
    assert_eq!(snap.job.phase, "settling");
    assert_eq!(snap.job.layout_restarts, 1);
    let metrics = prometheus::render(&snap);
    assert!(
        metrics.contains("ferry_layout_restarts_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ferry_job_phase{phase=\"settling\"} 1"),
        "{metrics}"
    );
}
