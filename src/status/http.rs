//! The status endpoint: `GET /status` (JSON), `GET /metrics` (Prometheus text), `GET /healthz`.
//!
//! HTTP/1.1 by hyper; at most [`MAX_CONNECTIONS`] clients at once, each closed if it does not send a
//! request's headers within [`HEADER_TIMEOUT`]. Reading status takes a few short locks, never the data
//! path's.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{prometheus, Status, StatusSnapshot};

/// Clients served at once; more wait for a slot.
pub const MAX_CONNECTIONS: usize = 64;
/// A client must send a request's headers within this time.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest `/status` response [`fetch_snapshot`] accepts.
const MAX_FETCH_BYTES: u64 = 64 << 20;

/// Why the status endpoint could not be served or read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("status endpoint: cannot listen on {addr}: {err}")]
    Bind {
        addr: SocketAddr,
        err: std::io::Error,
    },
    #[error("status endpoint http://{addr}/status: {msg}")]
    Fetch { addr: SocketAddr, msg: String },
}

/// Serve `status` on `addr` until `cancel` fires, in a task of its own. Returns the bound address (port 0
/// picks a free port). Open connections finish their current request when `cancel` fires; pass a token
/// that outlives the job's drain if status should stay readable while the job drains.
pub async fn serve(
    addr: SocketAddr,
    status: Arc<Status>,
    cancel: CancellationToken,
) -> Result<SocketAddr, StatusError> {
    let bind_err = |err| StatusError::Bind { addr, err };
    let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
    let bound = listener.local_addr().map_err(bind_err)?;
    tracing::info!(addr = %bound, "status endpoint listening: GET /status, /metrics, /healthz");
    tokio::spawn(accept_loop(listener, status, cancel));
    Ok(bound)
}

async fn accept_loop(listener: TcpListener, status: Arc<Status>, cancel: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::debug!(error = %e, "status endpoint: accept failed");
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        let status = status.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = service_fn(move |req: Request<Incoming>| {
                let status = status.clone();
                async move {
                    if req.method() == Method::POST && req.uri().path() == "/cutover" {
                        return Ok::<_, Infallible>(cutover(&status).await);
                    }
                    Ok::<_, Infallible>(respond(&status, req.method(), req.uri().path()))
                }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "status endpoint: connection ended with an error");
            }
        });
    }
    tracing::debug!("status endpoint stopped");
}

fn text(code: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

const INDEX: &str = "ferry status endpoint\n\
GET /status   the job's status as JSON\n\
GET /metrics  Prometheus text format\n\
GET /healthz  200 while the job runs and no source failed, 503 otherwise\n";

/// `POST /cutover`: the process's control answers (`ferry proxy`), or 404 when there is none.
async fn cutover(status: &Status) -> Response<Full<Bytes>> {
    match status.control() {
        Some(c) => {
            let (code, body) = c.cutover().await;
            text(
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "application/json",
                body + "\n",
            )
        }
        None => text(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "no cutover here: this is not a ferry proxy\n".into(),
        ),
    }
}

/// `POST path` with an empty body to a running ferry's endpoint (for `ferry cutover ADDR`): (status
/// code, body), within `timeout`.
pub async fn post(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), StatusError> {
    let err = |msg: String| StatusError::Fetch { addr, msg };
    let (code, body) = tokio::time::timeout(timeout, request(addr, "POST", path))
        .await
        .map_err(|_| err(format!("no answer within {timeout:?}")))?
        .map_err(|e| err(e.to_string()))?;
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

/// The response to `method path` (the query string is ignored).
pub(crate) fn respond(status: &Status, method: &Method, path: &str) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "only GET and HEAD\n".into(),
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/status" => {
            let mut body = status.snapshot().to_json();
            body.push('\n');
            text(StatusCode::OK, "application/json", body)
        }
        "/metrics" => text(
            StatusCode::OK,
            prometheus::CONTENT_TYPE,
            prometheus::render(&status.snapshot()),
        ),
        "/healthz" => match status.health() {
            Ok(()) => text(StatusCode::OK, PLAIN, "ok\n".into()),
            Err(problems) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                PLAIN,
                problems.join("\n") + "\n",
            ),
        },
        "/" => text(StatusCode::OK, PLAIN, INDEX.into()),
        _ => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            format!("not found\n\n{INDEX}"),
        ),
    }
}

/// Read `GET /status` from a running ferry (for `ferry status ADDR`), within `timeout`.
pub async fn fetch_snapshot(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<StatusSnapshot, StatusError> {
    let err = |msg: String| StatusError::Fetch { addr, msg };
    let body = tokio::time::timeout(timeout, get(addr, "/status"))
        .await
        .map_err(|_| err(format!("no answer within {timeout:?}")))?
        .map_err(|e| err(e.to_string()))?;
    let (code, body) = body;
    if code != 200 {
        return Err(err(format!("HTTP status {code}")));
    }
    serde_json::from_slice(&body).map_err(|e| err(format!("not a ferry status document: {e}")))
}

/// A minimal HTTP/1.1 GET with `Connection: close`: (status code, body).
async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    request(addr, "GET", path).await
}

/// A minimal HTTP/1.1 request without a body, `Connection: close`: (status code, body).
async fn request(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    s.take(MAX_FETCH_BYTES).read_to_end(&mut buf).await?;
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("response has no header end"))?;
    let head =
        std::str::from_utf8(&buf[..head_end]).map_err(|_| bad("response head is not UTF-8"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("response has no status code"))?;
    if head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:"))
    {
        return Err(bad("chunked responses are not expected here"));
    }
    Ok((code, buf[head_end + 4..].to_vec()))
}
