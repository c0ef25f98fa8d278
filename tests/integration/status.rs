//! The status endpoint over a real TCP connection: `/status` JSON, `/metrics` Prometheus text, `/healthz`
//! following the job and its sources, errors for other paths and methods, a clear bind error, and shutdown
//! on cancel.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry::endpoint::RedisAddr;
use ferry::status::{serve, JobPhase, SourceKind, SourceState, Status};
use ferry::target::stats::TargetStats;
use tokio_util::sync::CancellationToken;

/// (status code, headers, body) of one request sent with std's blocking TcpStream.
fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the status endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the response");
    let raw = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header end");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (code, head.to_ascii_lowercase(), body.to_string())
}

async fn get(addr: SocketAddr, path: &'static str) -> (u16, String, String) {
    tokio::task::spawn_blocking(move || request(addr, "GET", path))
        .await
        .unwrap()
}

/// The value of the sample `name{labels}` in Prometheus text, labels given in their rendered order.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_endpoint_serves_json_metrics_and_health() {
    let status = Arc::new(Status::new());
    status.set_phase(JobPhase::Running);
    let src: RedisAddr = "redis://repl:hunter2-secret@127.0.0.1:6390"
        .parse()
        .unwrap();
    let s = status.add_source(&src, SourceKind::Master);
    s.full_sync_started("0123456789abcdef0123456789abcdef01234567", 500, Some(2000));
    s.add_rdb_received(2000);
    s.add_rdb_applied(1500);
    s.add_keys_loaded(42);
    s.set_state(SourceState::Streaming);
    s.set_applied_offset(700);
    s.set_received_offset(1000);
    let tstats = Arc::new(TargetStats::default());
    tstats.commands_ok.store(41, Ordering::Relaxed);
    let dst: RedisAddr = "redis://:target-secret@127.0.0.1:6391".parse().unwrap();
    let t = status.add_target(&dst, tstats);
    t.set_connections(2);
    t.record_rejection(
        "SET",
        "OOM command not allowed when used memory > 'maxmemory'.",
    );
    t.latency().record(Duration::from_millis(3));

    let cancel = CancellationToken::new();
    let addr = serve(
        "127.0.0.1:0".parse().unwrap(),
        status.clone(),
        cancel.clone(),
    )
    .await
    .expect("serve on a free port");
    assert_ne!(addr.port(), 0);

    // /status
    let (code, head, body) = get(addr, "/status").await;
    assert_eq!(code, 200, "{body}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(!body.contains("hunter2-secret") && !body.contains("target-secret"));
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["job"]["phase"], "running");
    assert_eq!(v["job"]["healthy"], true);
    let js = &v["sources"][0];
    assert_eq!(js["name"], "redis://repl@127.0.0.1:6390");
    assert_eq!(js["state"], "streaming");
    assert_eq!(js["received_offset"], 1000);
    assert_eq!(js["applied_offset"], 700);
    assert_eq!(js["lag_bytes"], 300);
    assert_eq!(js["rdb"]["bytes_total"], 2000);
    assert_eq!(js["rdb"]["keys_loaded"], 42);
    let jt = &v["targets"][0];
    assert_eq!(jt["address"], "redis://127.0.0.1:6391");
    assert_eq!(jt["writes_acknowledged"], 42);
    assert_eq!(jt["rejected_by_kind"]["OOM"], 1);
    assert_eq!(jt["latency"]["count"], 1);

    // /metrics
    let (code, head, text) = get(addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(!text.contains("hunter2-secret") && !text.contains("target-secret"));
    let src_l = r#"{source="redis://repl@127.0.0.1:6390"}"#;
    assert_eq!(
        metric(&text, &format!("ferry_source_lag_bytes{src_l}")),
        Some(300.0)
    );
    assert_eq!(
        metric(&text, &format!("ferry_source_full_syncs_total{src_l}")),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            r#"ferry_source_state{source="redis://repl@127.0.0.1:6390",state="streaming"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            r#"ferry_target_rejected_writes_by_kind_total{target="redis://127.0.0.1:6391",kind="OOM"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            r#"ferry_target_write_latency_seconds_count{target="redis://127.0.0.1:6391"}"#
        ),
        Some(1.0)
    );
    assert_eq!(metric(&text, "ferry_healthy"), Some(1.0));

    // /healthz: 200 while running, 503 once a source failed.
    let (code, _, body) = get(addr, "/healthz").await;
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    s.failed("master refused PSYNC: check the replication user's permissions");
    let (code, _, body) = get(addr, "/healthz").await;
    assert_eq!(code, 503);
    assert!(
        body.contains("redis://repl@127.0.0.1:6390") && body.contains("refused PSYNC"),
        "{body}"
    );
    let (_, _, text) = get(addr, "/metrics").await;
    assert_eq!(metric(&text, "ferry_healthy"), Some(0.0));

    // The typed client reads the same document.
    let snap = ferry::status::fetch_snapshot(addr, Duration::from_secs(10))
        .await
        .expect("fetch /status");
    assert_eq!(snap.sources[0].state, "failed");
    assert!(!snap.job.healthy);

    // Other paths and methods.
    let (code, _, body) = get(addr, "/nope").await;
    assert_eq!(code, 404);
    assert!(body.contains("/metrics"));
    let (code, head, _) = tokio::task::spawn_blocking(move || request(addr, "POST", "/status"))
        .await
        .unwrap();
    assert_eq!(code, 405);
    assert!(head.contains("allow: get, head"), "{head}");
    let (code, _, body) = tokio::task::spawn_blocking(move || request(addr, "HEAD", "/status"))
        .await
        .unwrap();
    assert_eq!((code, body.as_str()), (200, ""));

    // A second listener on the same address fails with a clear message.
    let err = serve(addr, status.clone(), cancel.clone())
        .await
        .expect_err("the port is taken");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("status endpoint: cannot listen on {addr}: ")),
        "{msg}"
    );

    // Cancel stops the endpoint: connections are refused once the listener is gone (polled with a deadline).
    cancel.cancel();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let refused = tokio::task::spawn_blocking(move || TcpStream::connect(addr).is_err())
            .await
            .unwrap();
        if refused {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the endpoint still accepts after cancel"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_503_when_the_job_is_over() {
    let status = Arc::new(Status::new());
    status.set_phase(JobPhase::Running);
    let cancel = CancellationToken::new();
    let addr = serve(
        "127.0.0.1:0".parse().unwrap(),
        status.clone(),
        cancel.clone(),
    )
    .await
    .unwrap();
    assert_eq!(get(addr, "/healthz").await.0, 200);
    status.set_phase(JobPhase::Failed);
    let (code, _, body) = get(addr, "/healthz").await;
    assert_eq!((code, body.as_str()), (503, "job failed\n"));
    cancel.cancel();
}
