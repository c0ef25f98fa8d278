//! Test support: real `redis-server` processes on free loopback ports, killed by PID on drop, and a tiny
//! synchronous RESP client that is independent of ferry's own code (so it can judge it).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port that was free a moment ago (bind to 0, read it, release).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Poll `cond` until it holds or `timeout` passes; panics with `what` on timeout.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);
impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p =
            std::env::temp_dir().join(format!("ferry-test-{}-{}-{}", tag, std::process::id(), n));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The redis-server binary to use: `FERRY_REDIS_SERVER` or `redis-server` on PATH.
pub fn redis_server_bin() -> PathBuf {
    std::env::var_os("FERRY_REDIS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| "redis-server".into())
}

/// A running redis-server, killed by PID when dropped.
pub struct RedisServer {
    pub port: u16,
    pub dir: TempDir,
    child: Child,
    pub bin: PathBuf,
}

impl RedisServer {
    /// Start the default redis-server with extra `--name value` config arguments.
    pub fn start(extra: &[&str]) -> RedisServer {
        Self::start_bin(&redis_server_bin(), extra)
    }

    /// Start the default redis-server again on `port` (e.g. a restart without its data), waiting until it
    /// answers; panics if the port cannot be taken within 10 s.
    pub fn start_on_port(port: u16, extra: &[&str]) -> RedisServer {
        Self::start_at(&redis_server_bin(), extra, Some(port))
    }

    pub fn start_bin(bin: &Path, extra: &[&str]) -> RedisServer {
        Self::start_at(bin, extra, None)
    }

    fn start_at(bin: &Path, extra: &[&str], fixed: Option<u16>) -> RedisServer {
        let mut dir = TempDir::new("redis");
        for _attempt in 0..5 {
            let port = fixed.unwrap_or_else(free_port);
            let log = dir.path().join("redis.log");
            let mut args: Vec<String> = vec![
                "--port".into(),
                port.to_string(),
                "--bind".into(),
                "127.0.0.1".into(),
                "--dir".into(),
                dir.path().display().to_string(),
                "--logfile".into(),
                log.display().to_string(),
                "--save".into(),
                "".into(),
                "--appendonly".into(),
                "no".into(),
                "--daemonize".into(),
                "no".into(),
                // Masters start a diskless transfer at once (7.0 waits 5 s for more replicas by default).
                "--repl-diskless-sync-delay".into(),
                "0".into(),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            let child = Command::new(bin)
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let mut server = RedisServer {
                port,
                dir,
                child,
                bin: bin.to_path_buf(),
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = server.child.try_wait() {
                    break; // exited: port taken or bad config; retry with another port
                }
                if let Ok(mut c) = Client::connect_quiet(port) {
                    if c.try_cmd(&["PING"]).is_ok() {
                        return server;
                    }
                }
                if Instant::now() > deadline {
                    panic!(
                        "redis-server on port {port} not ready in 10s; log:\n{}",
                        server.log()
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let log = server.log();
            if !log.contains("Address already in use") {
                panic!("redis-server exited at start; log:\n{log}");
            }
            dir = std::mem::replace(&mut server.dir, TempDir::new("unused"));
            if fixed.is_some() {
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        panic!("could not start redis-server on a free port after 5 attempts");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    pub fn client(&self) -> Client {
        Client::connect(self.port)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stop the server now (SIGKILL by PID).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A RESP2 reply, as the test client sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Reply::Bulk(Some(b)) => Some(b),
            Reply::Status(s) => Some(s.as_bytes()),
            _ => None,
        }
    }
    pub fn as_string(&self) -> String {
        match self {
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            Reply::Status(s) | Reply::Error(s) => s.clone(),
            Reply::Int(i) => i.to_string(),
            other => format!("{other:?}"),
        }
    }
    pub fn as_int(&self) -> i64 {
        match self {
            Reply::Int(i) => *i,
            Reply::Bulk(Some(b)) => std::str::from_utf8(b).unwrap().parse().unwrap(),
            other => panic!("not an integer reply: {other:?}"),
        }
    }
    pub fn as_array(&self) -> &[Reply] {
        match self {
            Reply::Array(Some(v)) => v,
            other => panic!("not an array reply: {other:?}"),
        }
    }
}

/// A tiny blocking RESP2 client for tests.
pub struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Client {
    pub fn connect(port: u16) -> Client {
        Self::connect_quiet(port).unwrap_or_else(|e| panic!("connect 127.0.0.1:{port}: {e}"))
    }

    pub fn connect_quiet(port: u16) -> std::io::Result<Client> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Client {
            r: BufReader::new(s.try_clone()?),
            w: s,
        })
    }

    pub fn send<A: AsRef<[u8]>>(&mut self, args: &[A]) {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            let a = a.as_ref();
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.w.write_all(&out).unwrap();
    }

    pub fn read(&mut self) -> std::io::Result<Reply> {
        let mut line = Vec::new();
        self.r.read_until(b'\n', &mut line)?;
        if line.len() < 3 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        let body = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
        Ok(match line[0] {
            b'+' => Reply::Status(body),
            b'-' => Reply::Error(body),
            b':' => Reply::Int(body.parse().unwrap()),
            b'$' => {
                let n: i64 = body.parse().unwrap();
                if n < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut b = vec![0; n as usize + 2];
                    self.r.read_exact(&mut b)?;
                    b.truncate(n as usize);
                    Reply::Bulk(Some(b))
                }
            }
            b'*' => {
                let n: i64 = body.parse().unwrap();
                if n < 0 {
                    Reply::Array(None)
                } else {
                    let mut v = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        v.push(self.read()?);
                    }
                    Reply::Array(Some(v))
                }
            }
            other => panic!("unexpected reply byte {other:?}"),
        })
    }

    pub fn try_cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> std::io::Result<Reply> {
        self.send(args);
        self.read()
    }

    /// Run a command; panics on I/O error (not on an error reply, which is returned).
    pub fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Reply {
        self.try_cmd(args).unwrap()
    }

    /// Run a command that must not fail.
    pub fn ok<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Reply {
        let r = self.cmd(args);
        if let Reply::Error(e) = &r {
            let shown: Vec<String> = args
                .iter()
                .map(|a| String::from_utf8_lossy(a.as_ref()).into_owned())
                .collect();
            panic!("command {shown:?} failed: {e}");
        }
        r
    }

    /// A field of `INFO section`, e.g. `info_field("stats", "sync_full")`.
    pub fn info_field(&mut self, section: &str, field: &str) -> Option<String> {
        let info = self.ok(&["INFO", section]).as_string();
        info.lines().find_map(|l| {
            l.strip_prefix(&format!("{field}:"))
                .map(|v| v.trim().to_string())
        })
    }

    pub fn dbsize(&mut self) -> i64 {
        self.ok(&["DBSIZE"]).as_int()
    }

    /// `DBSIZE` of the selected db without ferry's own keys (its in-target checkpoints and the like).
    pub fn data_dbsize(&mut self) -> i64 {
        let mut own = 0;
        let mut cursor = "0".to_string();
        loop {
            let r = self.ok(&["SCAN", &cursor, "MATCH", "ferry:*", "COUNT", "1000"]);
            let parts = r.as_array();
            cursor = parts[0].as_string();
            own += parts[1]
                .as_array()
                .iter()
                .filter(|k| is_ferry_key(k.as_bytes().unwrap()))
                .count() as i64;
            if cursor == "0" {
                break;
            }
        }
        self.dbsize() - own
    }
}

/// Record that the running test skips (part of) its work, loudly: prints `SKIP <test name>: <reason>` on
/// the process's real stderr (not captured by the test harness, so it shows under a plain `cargo test`)
/// and appends the same line to the file named by `FERRY_SKIP_LOG` when that is set. The caller then
/// returns, or moves on (a loop over versions skips only the absent one).
///
/// Only for what this machine lacks: a server version, the fixtures folder, a fixed port. `scripts/test.sh`
/// sets `FERRY_SKIP_LOG`, prints the count and every line after `cargo test`, and under `CI=true` fails
/// the run on any skip. The test name is the harness's name of the test thread (`module::test`); call this
/// from the test's own thread. `src/testutil.rs` is the unit tests' twin (same line, same file).
pub fn skip(reason: &str) {
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("<unnamed thread>");
    let line = format!("SKIP {name}: {reason}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Some(path) = std::env::var_os("FERRY_SKIP_LOG") {
        // One write of one short line to a file opened for appending: lines of parallel tests never mix.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .unwrap_or_else(|e| {
                panic!(
                    "cannot append to FERRY_SKIP_LOG {}: {e}",
                    Path::new(&path).display()
                )
            });
    }
}

/// Are the fixtures required (`FERRY_REQUIRE_FIXTURES=1`, which CI sets)? Then their absence fails.
pub fn fixtures_required() -> bool {
    std::env::var("FERRY_REQUIRE_FIXTURES").is_ok_and(|v| v == "1")
}

/// The shared fixtures folder: `FERRY_FIXTURES` if set, else `../shared/fixtures` beside the crate root.
/// When it is absent: a panic if [`fixtures_required`], otherwise a [`skip`] and `None` (the caller returns).
pub fn fixtures_dir() -> Option<PathBuf> {
    let p = std::env::var_os("FERRY_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"));
    if p.is_dir() {
        return Some(p);
    }
    if fixtures_required() {
        panic!(
            "the fixtures folder {} is absent and FERRY_REQUIRE_FIXTURES=1 requires it",
            p.display()
        );
    }
    skip(&format!(
        "the fixtures folder {} is absent (set FERRY_FIXTURES, or FERRY_REQUIRE_FIXTURES=1 to fail instead)",
        p.display()
    ));
    None
}

/// Path of the built `ferry` binary.
/// Path of the `ferry` binary under test: this build's, or `FERRY_BIN` (e.g. an older build, to show that a
/// regression test fails on the code it guards against).
pub fn ferry_bin() -> PathBuf {
    std::env::var_os("FERRY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ferry")))
}

pub mod cluster;
pub mod fault_proxy;
pub mod ferry_proc;
pub mod versions;

/// Options of a [`Nutcracker`] pool beyond its servers.
#[derive(Clone, Debug, Default)]
pub struct NutcrackerOpts {
    /// Pool name in the YAML (default `ferry`).
    pub pool: Option<String>,
    /// `redis_auth:` — the password nutcracker sends to every server and requires from its clients.
    pub redis_auth: Option<String>,
    /// `hash_tag:` — two characters, e.g. `"{}"`.
    pub hash_tag: Option<String>,
    /// `redis_db:` — the db nutcracker selects on its server connections (default 0).
    pub redis_db: Option<u32>,
    /// `auto_eject_hosts: true` (default false).
    pub auto_eject_hosts: bool,
    /// `hash:` (default `fnv1a_64`).
    pub hash: Option<String>,
    /// `distribution:` (default `ketama`).
    pub distribution: Option<String>,
}

/// The YAML of a one-pool twemproxy config as ferry must read it: `listen` on 127.0.0.1:`port`,
/// `hash: fnv1a_64`, `distribution: ketama`, `redis: true`, and one `127.0.0.1:<port>:1 <name>` line per
/// `(port, name)` in `servers`.
pub fn nutcracker_yaml(port: u16, servers: &[(u16, &str)], opts: &NutcrackerOpts) -> String {
    let mut y = format!(
        "{}:\n  listen: 127.0.0.1:{port}\n  hash: {}\n  distribution: {}\n  redis: true\n  auto_eject_hosts: {}\n  timeout: 5000\n",
        opts.pool.as_deref().unwrap_or("ferry"),
        opts.hash.as_deref().unwrap_or("fnv1a_64"),
        opts.distribution.as_deref().unwrap_or("ketama"),
        opts.auto_eject_hosts
    );
    if let Some(db) = opts.redis_db {
        y.push_str(&format!("  redis_db: {db}\n"));
    }
    if let Some(a) = &opts.redis_auth {
        y.push_str(&format!("  redis_auth: {a}\n"));
    }
    if let Some(t) = &opts.hash_tag {
        y.push_str(&format!("  hash_tag: \"{t}\"\n"));
    }
    y.push_str("  servers:\n");
    for (p, name) in servers {
        y.push_str(&format!("   - 127.0.0.1:{p}:1 {name}\n"));
    }
    y
}

/// A running nutcracker (twemproxy) in front of the given servers, killed by PID when dropped.
///
/// Started in the foreground as `nutcracker -c <conf> -o <log> -s <stats port> -a 127.0.0.1` (a stats
/// port of its own: the default 22222 on 0.0.0.0 would collide between tests). nutcracker 0.5.0 writes
/// its `-p` pidfile only when daemonized, so none is used: the child's PID is the handle. Ready when a
/// PING through the proxy answers PONG (nutcracker answers PING itself; with `redis_auth` it first
/// wants `AUTH <password>` from its clients, as yours must too). Note that nutcracker refuses
/// keyless and multi-key-across-servers commands (e.g. DBSIZE, KEYS, INFO, SELECT): it closes the
/// connection; count keys on the servers themselves.
pub struct Nutcracker {
    pub port: u16,
    pub stats_port: u16,
    pub config_path: PathBuf,
    pub dir: TempDir,
    child: Child,
}

impl Nutcracker {
    /// Start in front of `servers` = `(port, name)` pairs with default options.
    pub fn start(servers: &[(u16, &str)]) -> Nutcracker {
        Self::start_with(servers, &NutcrackerOpts::default())
    }

    pub fn start_with(servers: &[(u16, &str)], opts: &NutcrackerOpts) -> Nutcracker {
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let dir = TempDir::new("nutcracker");
            let config_path = dir.path().join("nutcracker.yml");
            let log = dir.path().join("nutcracker.log");
            let (port, stats_port) = (free_port(), free_port());
            std::fs::write(&config_path, nutcracker_yaml(port, servers, opts)).unwrap();
            let test = Command::new("nutcracker")
                .arg("-t")
                .arg("-c")
                .arg(&config_path)
                .output()
                .unwrap_or_else(|e| {
                    panic!("cannot run nutcracker (apt-get install nutcracker): {e}")
                });
            if !test.status.success() {
                panic!(
                    "nutcracker -t rejects the config:\n{}\n{}",
                    String::from_utf8_lossy(&test.stderr),
                    std::fs::read_to_string(&config_path).unwrap()
                );
            }
            let child = Command::new("nutcracker")
                .arg("-c")
                .arg(&config_path)
                .arg("-o")
                .arg(&log)
                .args(["-s", &stats_port.to_string(), "-a", "127.0.0.1"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start nutcracker: {e}"));
            let mut nc = Nutcracker {
                port,
                stats_port,
                config_path,
                dir,
                child,
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = nc.child.try_wait() {
                    break; // exited: a port was taken meanwhile; retry with others
                }
                if let Ok(mut c) = Client::connect_quiet(port) {
                    // With redis_auth, nutcracker wants AUTH from its clients before anything else.
                    let authed = match &opts.redis_auth {
                        Some(pw) => {
                            matches!(c.try_cmd(&["AUTH", pw.as_str()]), Ok(Reply::Status(_)))
                        }
                        None => true,
                    };
                    if authed && matches!(c.try_cmd(&["PING"]), Ok(Reply::Status(s)) if s == "PONG")
                    {
                        return nc;
                    }
                }
                if Instant::now() > deadline {
                    panic!(
                        "nutcracker on port {port} not ready in 10s; log:\n{}",
                        nc.log()
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            last_log = nc.log();
            if !last_log.contains("in use") {
                panic!("nutcracker exited at start; log:\n{last_log}");
            }
        }
        panic!("could not start nutcracker on free ports after 5 attempts; log:\n{last_log}");
    }

    /// nutcracker's log file (`-o`), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nutcracker.log")).unwrap_or_default()
    }

    pub fn client(&self) -> Client {
        Client::connect(self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stop nutcracker now (SIGKILL by PID).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Nutcracker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Smoke check for a `#[test]`: a [`Nutcracker`] in front of two real servers spreads 500 keys over
/// both, and is gone (port closed) after drop; with `redis_auth` and `hash_tag`, tagged keys stay together.
pub fn check_nutcracker() {
    let (a, b) = (RedisServer::start(&[]), RedisServer::start(&[]));
    let nc = Nutcracker::start(&[(a.port, "m1"), (b.port, "m2")]);
    let mut c = nc.client();
    for i in 0..500 {
        c.ok(&["SET", &format!("k:{i}"), "v"]);
    }
    let (na, nb) = (a.client().dbsize(), b.client().dbsize());
    assert_eq!(na + nb, 500);
    assert!(
        na > 0 && nb > 0,
        "ketama put every key on one server: {na}+{nb}"
    );
    let port = nc.port;
    drop(nc);
    assert!(
        Client::connect_quiet(port).is_err(),
        "nutcracker still answering after drop"
    );

    let (a, b) = (
        RedisServer::start(&["--requirepass", "pw"]),
        RedisServer::start(&["--requirepass", "pw"]),
    );
    let opts = NutcrackerOpts {
        redis_auth: Some("pw".into()),
        hash_tag: Some("{}".into()),
        ..Default::default()
    };
    let nc = Nutcracker::start_with(&[(a.port, "m1"), (b.port, "m2")], &opts);
    let mut c = nc.client();
    c.ok(&["AUTH", "pw"]);
    for i in 0..100 {
        c.ok(&["SET", &format!("{{user7}}:{i}"), "v"]);
    }
    let count = |s: &RedisServer| {
        let mut c = s.client();
        c.ok(&["AUTH", "pw"]);
        c.dbsize()
    };
    let (na, nb) = (count(&a), count(&b));
    assert!(
        na == 100 || nb == 100,
        "hash_tag did not keep {{user7}} keys together: {na}+{nb}"
    );
}

/// Is this one of ferry's own keys (in-target checkpoints, temporary keys, the heartbeat key — on a master of
/// a cluster source `ferry:heartbeat:{tag}`, in one of its slots)?
pub fn is_ferry_key(key: &[u8]) -> bool {
    key.starts_with(b"ferry:checkpoint:")
        || key.starts_with(b"ferry:tmp:")
        || key == b"ferry:heartbeat"
        || key.starts_with(b"ferry:heartbeat:{")
}

/// The dbs holding keys, from `INFO keyspace`.
pub fn keyspace_dbs(c: &mut Client) -> Vec<u32> {
    let info = c.ok(&["INFO", "keyspace"]).as_string();
    info.lines()
        .filter_map(|l| l.strip_prefix("db")?.split(':').next()?.parse().ok())
        .collect()
}

/// Every key of every db, except ferry's own: (db, key).
pub fn data_keys(c: &mut Client) -> Vec<(u32, Vec<u8>)> {
    let mut out = Vec::new();
    for db in keyspace_dbs(c) {
        c.ok(&["SELECT", &db.to_string()]);
        let mut cursor = "0".to_string();
        loop {
            let r = c.ok(&["SCAN", &cursor, "COUNT", "1000"]);
            let parts = r.as_array();
            cursor = parts[0].as_string();
            for k in parts[1].as_array() {
                let k = k.as_bytes().unwrap().to_vec();
                if !is_ferry_key(&k) {
                    out.push((db, k));
                }
            }
            if cursor == "0" {
                break;
            }
        }
    }
    c.ok(&["SELECT", "0"]);
    out.sort();
    out
}

/// How many keys the server holds apart from ferry's own (in-target checkpoints and the like).
pub fn data_key_count(c: &mut Client) -> usize {
    data_keys(c).len()
}

/// One key of a server's data: db, name, `DEBUG DIGEST-VALUE` (type and value), `PEXPIRETIME`.
pub type DataItem = (u32, Vec<u8>, String, i64);

/// Every key of every db except ferry's own, with its value digest and absolute expiry, in key order
/// (Redis 7.0+ with DEBUG enabled).
pub fn data_items(c: &mut Client) -> Vec<DataItem> {
    let keys = data_keys(c);
    let mut out = Vec::with_capacity(keys.len());
    let mut db_now = u32::MAX;
    for (db, k) in keys {
        if db != db_now {
            c.ok(&["SELECT", &db.to_string()]);
            db_now = db;
        }
        c.send(&[&b"DEBUG"[..], b"DIGEST-VALUE", &k]);
        c.send(&[&b"PEXPIRETIME"[..], &k]);
        let v = c.read().unwrap();
        let e = c.read().unwrap();
        match (&v, &e) {
            (Reply::Array(Some(d)), Reply::Int(t)) => {
                let d = d.first().map(|r| r.as_string()).unwrap_or_default();
                // A key that expired or went between SCAN and now counts as absent.
                if *t != -2 {
                    out.push((db, k, d, *t));
                }
            }
            _ => panic!(
                "DEBUG DIGEST-VALUE / PEXPIRETIME failed: {v:?} {e:?} (needs Redis 7.0+ with DEBUG enabled)"
            ),
        }
    }
    c.ok(&["SELECT", "0"]);
    out
}

/// The data of several servers together (e.g. the shards of a pool), in key order.
pub fn data_items_of(clients: &mut [Client]) -> Vec<DataItem> {
    let mut all: Vec<DataItem> = clients.iter_mut().flat_map(data_items).collect();
    all.sort();
    all
}

/// A digest of the server's data like `DEBUG DIGEST` (every key, type, value and expiry of every db) but
/// leaving out ferry's own keys, so a target that keeps ferry's in-target checkpoint compares equal to its
/// source: one `DEBUG DIGEST-VALUE` and `PEXPIRETIME` per key (Redis 7.0+), combined in key order (always
/// this way, so two servers compare equal exactly when their data does).
pub fn data_digest(c: &mut Client) -> String {
    use sha1::{Digest, Sha1};
    let items = data_items(c);
    if items.is_empty() {
        return "0".repeat(40);
    }
    let mut h = Sha1::new();
    for (db, k, d, t) in &items {
        h.update(db.to_le_bytes());
        h.update((k.len() as u64).to_le_bytes());
        h.update(k);
        h.update(d);
        h.update(t.to_le_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}
