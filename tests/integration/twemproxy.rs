//! ferry's twemproxy layer against the real reference: nutcracker 0.5.0 in front of real redis-servers.
//!
//! The placement test writes ~2000 keys (text, binary with bytes >= 0x80, CR/LF and NUL, hash-tagged,
//! long) through nutcracker, asks every backend directly which keys it holds, and requires
//! [`Router::server_for`] to name that backend for every key — for ketama and modula × all twelve hashes
//! × with and without a hash tag, with unequal weights, named and unnamed servers.
//!
//! The support [`Nutcracker`] guard writes only `fnv1a_64`/`ketama`/weight-1 configs, so the matrix
//! uses [`Proxy`] below (same start protocol: `-t` first, own stats port, PING-ready); the guard's own
//! config is loaded and checked in `load_reads_the_guards_config_and_routes_like_it`.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::*;
use ferry::twemproxy::{Distribution, Hash, Listen, Pool, Router, TwemproxyConfig, TwemproxyError};

/// A nutcracker on free ports with a config of our own, killed by PID on drop.
struct Proxy {
    port: u16,
    config_path: PathBuf,
    dir: TempDir,
    child: Child,
}

impl Proxy {
    /// Start nutcracker with the YAML that `yaml(listen_port)` returns.
    fn start(yaml: impl Fn(u16) -> String) -> Proxy {
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let dir = TempDir::new("twemproxy");
            let config_path = dir.path().join("nutcracker.yml");
            let (port, stats_port) = (free_port(), free_port());
            std::fs::write(&config_path, yaml(port)).unwrap();
            nutcracker_accepts(&config_path);
            let log = dir.path().join("nutcracker.log");
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
            let mut p = Proxy {
                port,
                config_path,
                dir,
                child,
            };
            let mut exited = false;
            wait_until("nutcracker answers PING", Duration::from_secs(10), || {
                if let Ok(Some(_)) = p.child.try_wait() {
                    exited = true;
                    return true;
                }
                Client::connect_quiet(port)
                    .and_then(|mut c| c.try_cmd(&["PING"]))
                    .is_ok_and(|r| r == Reply::Status("PONG".into()))
            });
            if !exited {
                return p;
            }
            last_log = p.log();
            if !last_log.contains("in use") {
                panic!("nutcracker exited at start; log:\n{last_log}");
            }
        }
        panic!("could not start nutcracker on free ports; log:\n{last_log}");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nutcracker.log")).unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `nutcracker -t` must call the file valid.
fn nutcracker_accepts(path: &Path) {
    let out = Command::new("nutcracker")
        .arg("-t")
        .arg("-c")
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run nutcracker (apt-get install nutcracker): {e}"));
    assert!(
        out.status.success(),
        "nutcracker -t rejects {}:\n{}\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(path).unwrap()
    );
}

/// ~2000 distinct keys that exercise every hash path: short and long (past 64-byte MD5 blocks and
/// twemproxy's 272-byte ketama name limit), every length mod 4 and mod 12, bytes >= 0x80 (C's signed
/// `char`), CR, LF and NUL, and hash tags that do and do not apply.
fn test_keys() -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = Vec::new();
    for i in 0..900 {
        keys.push(format!("k:{i}").into_bytes());
    }
    for i in 0..200 {
        keys.push(format!("user:{i}:profile").into_bytes());
    }
    // Pseudo-random binary keys of length 1..=48 (a fixed LCG, so the set is the same every run).
    let mut x: u32 = 0x1234_5678;
    for i in 0..400 {
        let len = 1 + i % 48;
        let key: Vec<u8> = (0..len)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (x >> 16) as u8
            })
            .collect();
        keys.push(key);
    }
    for i in 0..40u8 {
        keys.push(vec![0x80 + i, b'\r', b'\n', 0, 0xff - i]);
    }
    for i in 0..300 {
        keys.push(format!("{{user:{}}}:field:{i}", i % 37).into_bytes());
    }
    for i in 0..20 {
        keys.push(format!("{{}}empty-tag:{i}").into_bytes());
        keys.push(format!("open-only:{i}{{").into_bytes());
        keys.push(format!("}}{{t{}}}:reversed:{i}", i % 5).into_bytes());
        keys.push(format!("{{{{a{}}}:double-open:{i}", i % 3).into_bytes());
        keys.push(format!("x{i}{{\u{e9}t\u{e9}{}}}:utf8-tag", i % 4).into_bytes());
    }
    for i in 0..100 {
        let mut k = format!("long:{i}:").into_bytes();
        k.resize(k.len() + 60 + i * 4, b'a' + (i % 26) as u8);
        keys.push(k);
    }
    keys.sort();
    keys.dedup();
    keys
}

/// Write every key through the proxy (pipelined), then map each key to the port of the backend that
/// holds it, asking each backend directly.
fn placement(
    proxy_port: u16,
    backends: &[&RedisServer],
    keys: &[Vec<u8>],
    auth: Option<&str>,
) -> HashMap<Vec<u8>, u16> {
    let mut c = Client::connect(proxy_port);
    if let Some(pw) = auth {
        c.ok(&["AUTH", pw]);
    }
    for (i, k) in keys.iter().enumerate() {
        c.send(&[b"SET".as_slice(), k, i.to_string().as_bytes()]);
    }
    for k in keys {
        let r = c.read().unwrap();
        assert_eq!(r, Reply::Status("OK".into()), "SET {k:02x?} via nutcracker");
    }
    let mut at = HashMap::new();
    for b in backends {
        let mut bc = b.client();
        if let Some(pw) = auth {
            bc.ok(&["AUTH", pw]);
        }
        for k in bc.ok(&["KEYS", "*"]).as_array() {
            let k = k.as_bytes().unwrap().to_vec();
            assert!(
                at.insert(k.clone(), b.port).is_none(),
                "{k:02x?} on two backends"
            );
        }
    }
    assert_eq!(at.len(), keys.len(), "keys lost or extra on the backends");
    at
}

/// Every key's backend as ferry's router predicts it, against where nutcracker put it.
fn check_router(pool: &Pool, keys: &[Vec<u8>], actual: &HashMap<Vec<u8>, u16>, what: &str) {
    let router = Router::new(pool).unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut wrong = Vec::new();
    for k in keys {
        let predicted = pool.servers[router.server_for(k)].port;
        if predicted != actual[k] {
            wrong.push((k, predicted, actual[k]));
        }
    }
    assert!(
        wrong.is_empty(),
        "{what}: {} of {} keys predicted on the wrong backend, e.g. (key, predicted port, actual port): {:02x?}",
        wrong.len(),
        keys.len(),
        &wrong[..wrong.len().min(5)]
    );
}

fn flush(backends: &[&RedisServer]) {
    for b in backends {
        b.client().ok(&["FLUSHALL"]);
    }
}

#[test]
fn router_predicts_nutcrackers_placement_for_every_hash_and_distribution() {
    let servers = [
        RedisServer::start(&[]),
        RedisServer::start(&[]),
        RedisServer::start(&[]),
    ];
    let backends: Vec<&RedisServer> = servers.iter().collect();
    let keys = test_keys();
    assert!(keys.len() >= 2000, "{} keys", keys.len());
    // Names whose nutcracker order (length, then bytes: "b", "aa", "ccc") differs from file order, and
    // weight patterns, rotated over the cases.
    let names = ["ccc", "b", "aa"];
    let weights = [[1, 2, 3], [3, 1, 1], [2, 5, 1]];
    let mut passed = Vec::new();
    let mut case = 0;
    for dist in [Distribution::Ketama, Distribution::Modula] {
        for hash in Hash::ALL {
            for tag in [None, Some("{}")] {
                let w = weights[case % weights.len()];
                // Tag and naming vary independently: all four combinations occur for each distribution.
                let named = (case / 2) % 2 == 0;
                case += 1;
                let proxy = Proxy::start(|port| {
                    let mut y = format!(
                        "matrix:\n  listen: 127.0.0.1:{port}\n  hash: {hash}\n  distribution: {dist}\n  redis: true\n  auto_eject_hosts: false\n  timeout: 5000\n"
                    );
                    if let Some(t) = tag {
                        y.push_str(&format!("  hash_tag: \"{t}\"\n"));
                    }
                    y.push_str("  servers:\n");
                    for (i, s) in servers.iter().enumerate() {
                        let name = if named {
                            format!(" {}", names[i])
                        } else {
                            String::new()
                        };
                        y.push_str(&format!("   - 127.0.0.1:{}:{}{name}\n", s.port, w[i]));
                    }
                    y
                });
                let what = format!(
                    "{dist} × {hash} × tag {tag:?} × weights {w:?} × {}",
                    if named { "named" } else { "host:port" }
                );
                let config = TwemproxyConfig::load(&proxy.config_path).unwrap();
                let pool = config.select_pool(None).unwrap();
                assert_eq!((pool.hash, pool.distribution), (hash, dist));
                let actual = placement(proxy.port, &backends, &keys, None);
                check_router(pool, &keys, &actual, &what);
                // Every backend must hold keys, or the comparison would prove little — except with
                // ketama × crc32: libmemcached's crc32 has 15 bits (0..32767) and ketama's continuum
                // spans 32 bits, so nutcracker itself sends (nearly) every key to one server.
                let counts: Vec<usize> = servers
                    .iter()
                    .map(|s| actual.values().filter(|&&p| p == s.port).count())
                    .collect();
                if !(dist == Distribution::Ketama && hash == Hash::Crc32) {
                    assert!(
                        counts.iter().all(|&n| n > 0),
                        "{what}: keys per backend {counts:?}"
                    );
                }
                passed.push(format!("{what}: keys per backend {counts:?}"));
                drop(proxy);
                flush(&backends);
            }
        }
    }
    eprintln!(
        "router matched nutcracker on {} configurations:\n  {}",
        passed.len(),
        passed.join("\n  ")
    );
}

#[test]
fn load_reads_the_guards_config_and_routes_like_it() {
    let servers = [
        RedisServer::start(&["--requirepass", "s3cret"]),
        RedisServer::start(&["--requirepass", "s3cret"]),
        RedisServer::start(&["--requirepass", "s3cret"]),
    ];
    let opts = NutcrackerOpts {
        pool: Some("cache".into()),
        redis_auth: Some("s3cret".into()),
        hash_tag: Some("{}".into()),
        ..Default::default()
    };
    let nc = Nutcracker::start_with(
        &[
            (servers[0].port, "m1"),
            (servers[1].port, "m2"),
            (servers[2].port, "m3"),
        ],
        &opts,
    );
    let config = TwemproxyConfig::load(&nc.config_path).unwrap();
    assert_eq!(config.pool_names(), vec!["cache".to_string()]);
    let pool = config.select_pool(None).unwrap();
    assert_eq!(config.select_pool(Some("cache")).unwrap().name, "cache");
    assert!(matches!(
        config.select_pool(Some("other")),
        Err(TwemproxyError::NoSuchPool { .. })
    ));
    assert_eq!(
        pool.listen,
        Listen::Tcp {
            host: "127.0.0.1".into(),
            port: nc.port
        }
    );
    assert_eq!(
        (pool.hash, pool.distribution, pool.hash_tag),
        (Hash::Fnv1a_64, Distribution::Ketama, Some(*b"{}"))
    );
    assert!(pool.redis && !pool.auto_eject_hosts);
    assert_eq!(pool.timeout_ms, Some(5000));
    let masters = pool.masters().unwrap();
    assert_eq!(
        masters.iter().map(|m| m.port).collect::<Vec<_>>(),
        servers.iter().map(|s| s.port).collect::<Vec<_>>()
    );
    for m in &masters {
        assert_eq!(m.host, "127.0.0.1");
        let auth = m.auth.as_ref().expect("redis_auth becomes the password");
        assert_eq!(
            (auth.user.as_deref(), auth.password.expose()),
            (None, "s3cret")
        );
        assert!(!m.to_string().contains("s3cret"));
    }
    let names: Vec<Option<&str>> = pool.servers.iter().map(|s| s.name.as_deref()).collect();
    assert_eq!(names, [Some("m1"), Some("m2"), Some("m3")]);

    let backends: Vec<&RedisServer> = servers.iter().collect();
    let keys = test_keys();
    let actual = placement(nc.port, &backends, &keys, Some("s3cret"));
    check_router(pool, &keys, &actual, "the support guard's config");
}

/// Every directive nutcracker 0.5.0 knows, in three pools; nutcracker itself accepts the file.
const EVERY_KEY: &str = r#"# Hand-written: every directive of nc_conf.c's conf_commands (0.5.0), values of our choosing.
alpha:
  listen: 127.0.0.1:22121
  hash: fnv1a_64
  hash_tag: "{}"
  distribution: ketama
  timeout: 400
  backlog: 1024
  client_connections: 100
  redis: true
  tcpkeepalive: true
  redis_auth: "p@ss word:#1"
  redis_db: 2
  preconnect: true
  auto_eject_hosts: true
  server_connections: 4
  server_retry_timeout: 2000
  server_failure_limit: 3
  servers:
   - 10.0.0.1:6379:1 shard-a
   - 10.0.0.2:6379:2 shard-b
   - redis-c.example.com:6380:1
beta:
  listen: 127.0.0.1:22122
  hash: murmur
  hash_tag: "[]"
  distribution: modula
  redis: true
  servers:
   - 10.0.1.1:7000:10
   - 10.0.1.2:7000:20
gamma:
  listen: /tmp/ferry-test-gamma.sock 0600
  hash: md5
  distribution: random
  servers:
   - /var/run/memcached.sock:1 mc
   - 127.0.0.1:11211:1
"#;

#[test]
fn load_every_directive_of_a_multi_pool_file() {
    let dir = TempDir::new("twemproxy-conf");
    let path = dir.path().join("every-key.yml");
    std::fs::write(&path, EVERY_KEY).unwrap();
    nutcracker_accepts(&path);

    let config = TwemproxyConfig::load(&path).unwrap();
    assert_eq!(config.pool_names(), ["alpha", "beta", "gamma"]);
    let e = config.select_pool(None).unwrap_err().to_string();
    assert!(e.contains("alpha, beta, gamma"), "{e}");
    let e = config.select_pool(Some("delta")).unwrap_err().to_string();
    assert!(
        e.contains("delta") && e.contains("alpha, beta, gamma"),
        "{e}"
    );

    let a = config.select_pool(Some("alpha")).unwrap();
    assert_eq!(
        a.listen,
        Listen::Tcp {
            host: "127.0.0.1".into(),
            port: 22121
        }
    );
    assert_eq!(
        (a.hash, a.hash_tag, a.distribution),
        (Hash::Fnv1a_64, Some(*b"{}"), Distribution::Ketama)
    );
    assert_eq!(a.timeout_ms, Some(400));
    assert_eq!(
        (a.backlog, a.client_connections, a.redis_db),
        (1024, 100, 2)
    );
    assert!(a.redis && a.tcpkeepalive && a.preconnect && a.auto_eject_hosts);
    assert_eq!(a.redis_auth.as_ref().unwrap().expose(), "p@ss word:#1");
    assert_eq!(
        (
            a.server_connections,
            a.server_retry_timeout_ms,
            a.server_failure_limit
        ),
        (4, 2000, 3)
    );
    assert!(a.unknown_keys.is_empty());
    let s: Vec<(&str, u16, u32, Option<&str>, &str)> = a
        .servers
        .iter()
        .map(|s| {
            (
                s.host.as_str(),
                s.port,
                s.weight,
                s.name.as_deref(),
                s.key_name(),
            )
        })
        .collect();
    assert_eq!(
        s,
        [
            ("10.0.0.1", 6379, 1, Some("shard-a"), "shard-a"),
            ("10.0.0.2", 6379, 2, Some("shard-b"), "shard-b"),
            (
                "redis-c.example.com",
                6380,
                1,
                None,
                "redis-c.example.com:6380"
            ),
        ]
    );
    let m = a.masters().unwrap();
    assert_eq!(m[2].to_string(), "redis://redis-c.example.com:6380");
    assert_eq!(
        m[0].auth.as_ref().unwrap().password.expose(),
        "p@ss word:#1"
    );
    Router::new(a).unwrap();

    let b = config.select_pool(Some("beta")).unwrap();
    assert_eq!(
        (b.hash, b.hash_tag, b.distribution),
        (Hash::Murmur, Some(*b"[]"), Distribution::Modula)
    );
    assert_eq!(b.timeout_ms, None, "no timeout: wait forever");
    assert_eq!(
        (
            b.backlog,
            b.server_connections,
            b.server_retry_timeout_ms,
            b.server_failure_limit
        ),
        (512, 1, 30_000, 2),
        "nutcracker's defaults"
    );
    assert!(b.redis_auth.is_none() && !b.preconnect && !b.auto_eject_hosts);
    assert_eq!(b.masters().unwrap().len(), 2);

    let g = config.select_pool(Some("gamma")).unwrap();
    assert_eq!(
        g.listen,
        Listen::Unix {
            path: "/tmp/ferry-test-gamma.sock".into(),
            perm: Some(0o600)
        }
    );
    assert_eq!(g.distribution, Distribution::Random);
    assert!(!g.redis);
    assert_eq!(g.servers[0].key_name(), "mc");
    assert!(g.servers[0].is_unix());
    assert_eq!(
        g.servers[1].key_name(),
        "127.0.0.1",
        "port 11211 is not hashed"
    );
    assert!(matches!(g.masters(), Err(TwemproxyError::NotRedis { .. })));
    let e = Router::new(g).unwrap_err();
    assert!(matches!(e, TwemproxyError::RandomDistribution { .. }));
    assert!(e.to_string().contains("random"), "{e}");

    // A directive nutcracker 0.5.0 does not know: nutcracker refuses the file, ferry reads it.
    let newer = dir.path().join("newer.yml");
    std::fs::write(
        &newer,
        EVERY_KEY.replace(
            "  redis_db: 2\n",
            "  redis_db: 2\n  reuseport: true\n  some_patch_knob: {a: 1}\n",
        ),
    )
    .unwrap();
    let out = Command::new("nutcracker")
        .arg("-t")
        .arg("-c")
        .arg(&newer)
        .output()
        .unwrap();
    assert!(!out.status.success(), "nutcracker 0.5.0 accepted reuseport");
    let c = TwemproxyConfig::load(&newer).unwrap();
    let a = c.select_pool(Some("alpha")).unwrap();
    assert!(a.reuseport);
    assert_eq!(a.unknown_keys, ["some_patch_knob"]);
}

#[test]
fn load_errors_name_the_file_pool_key_and_value() {
    let dir = TempDir::new("twemproxy-bad");
    let path = dir.path().join("bad.yml");
    std::fs::write(
        &path,
        "alpha:\n  listen: 127.0.0.1:22121\n  hash: sha256\n  servers:\n   - 127.0.0.1:6379:1\n",
    )
    .unwrap();
    let e = TwemproxyConfig::load(&path).unwrap_err().to_string();
    for needle in ["bad.yml", "alpha", "hash", "sha256"] {
        assert!(e.contains(needle), "{e:?} lacks {needle}");
    }
    std::fs::write(
        &path,
        "alpha:\n  listen: 127.0.0.1:22121\n  servers:\n   - 127.0.0.1:6379:1\n   - 127.0.0.1:6380 m2\n",
    )
    .unwrap();
    let e = TwemproxyConfig::load(&path).unwrap_err().to_string();
    for needle in ["alpha", "servers", "127.0.0.1:6380 m2"] {
        assert!(e.contains(needle), "{e:?} lacks {needle}");
    }
    let missing = dir.path().join("missing.yml");
    let e = TwemproxyConfig::load(&missing).unwrap_err();
    assert!(matches!(e, TwemproxyError::Io { .. }));
    assert!(e.to_string().contains("missing.yml"), "{e}");
}

/// A redis-server on the fixed port 11211 (the support servers take free ports), killed on drop.
struct FixedPortRedis {
    child: Child,
    _dir: TempDir,
}

impl Drop for FixedPortRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nutcracker leaves the port out of an unnamed server's ketama name when it is 11211
/// (`conf_add_server`): the continuum points are MD5("127.0.0.1-i"), not MD5("127.0.0.1:11211-i").
#[test]
fn port_11211_is_left_out_of_the_ketama_name() {
    if std::net::TcpListener::bind(("127.0.0.1", 11211)).is_err() {
        skip("127.0.0.1:11211 is in use (this test needs that fixed port)");
        return;
    }
    let dir = TempDir::new("redis-11211");
    let mut child = Command::new(redis_server_bin())
        .args(["--port", "11211", "--bind", "127.0.0.1", "--save", ""])
        .args(["--appendonly", "no", "--daemonize", "no", "--dir"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server");
    let mut exited = false;
    wait_until("redis-server on 11211", Duration::from_secs(10), || {
        if let Ok(Some(_)) = child.try_wait() {
            exited = true;
            return true;
        }
        Client::connect_quiet(11211)
            .and_then(|mut c| c.try_cmd(&["PING"]))
            .is_ok_and(|r| r == Reply::Status("PONG".into()))
    });
    if exited {
        skip("redis-server could not take port 11211 (taken meanwhile)");
        return;
    }
    let _guard = FixedPortRedis { child, _dir: dir };
    let others = [RedisServer::start(&[]), RedisServer::start(&[])];
    let proxy = Proxy::start(|port| {
        format!(
            "p11211:\n  listen: 127.0.0.1:{port}\n  hash: md5\n  distribution: ketama\n  redis: true\n  servers:\n   - 127.0.0.1:11211:1\n   - 127.0.0.1:{}:1\n   - 127.0.0.1:{}:1\n",
            others[0].port, others[1].port
        )
    });
    let config = TwemproxyConfig::load(&proxy.config_path).unwrap();
    let pool = config.select_pool(None).unwrap();
    assert_eq!(pool.servers[0].key_name(), "127.0.0.1");
    let keys = test_keys();
    let mut c = Client::connect(proxy.port);
    for (i, k) in keys.iter().enumerate() {
        c.send(&[b"SET".as_slice(), k, i.to_string().as_bytes()]);
    }
    for _ in &keys {
        assert_eq!(c.read().unwrap(), Reply::Status("OK".into()));
    }
    let mut actual = HashMap::new();
    for port in [11211, others[0].port, others[1].port] {
        let mut bc = Client::connect(port);
        for k in bc.ok(&["KEYS", "*"]).as_array() {
            actual.insert(k.as_bytes().unwrap().to_vec(), port);
        }
    }
    assert_eq!(actual.len(), keys.len());
    assert!(actual.values().any(|&p| p == 11211), "no key on 11211");
    check_router(pool, &keys, &actual, "unnamed server on port 11211");
}
