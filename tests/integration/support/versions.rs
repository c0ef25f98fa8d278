//! Other Redis / Valkey server versions, provisioned by `scripts/redis-versions.sh` into
//! `.cache/redis/<version>/redis-server` and announced by `scripts/test.sh` as `FERRY_REDIS_<NAME>`
//! environment variables (NAME = the version upper-cased with `.`/`-` turned into `_`: `5.0` ->
//! `FERRY_REDIS_5_0`, `valkey-9` -> `FERRY_REDIS_VALKEY_9`).
//!
//! A test that needs a version calls [`start_version`] (or [`require_bin`]) and returns early on `None`:
//! the version is absent and the skip was recorded through [`super::skip`] (a loud `SKIP` line, counted
//! by `scripts/test.sh`). When `FERRY_REQUIRE_VERSIONS` is `1`/`all` or a comma list naming the version
//! (CI sets it), absence panics instead, so CI can't pass by skipping.
//!
//! What the versions are (see the README): `5.0` (5.0.10), `6.0` (6.0.9), `6.2` (6.2.14), `7.0`
//! (Debian's 7.0.15), `7.2` (7.2.4), `7.4` (7.4.1), `8.2` (8.2.3), `valkey-8` (Valkey 8.1.8),
//! `valkey-9` (Valkey 9.1.2, writes `VALKEY080` RDB files).
//!
//! Config flags differ between versions; [`RedisServer::start_bin`] only passes flags every version since
//! 5.0 accepts. Checked by starting each provisioned binary (an unknown flag makes it exit at start):
//! - `--enable-debug-command`, `--enable-protected-configs`, `--repl-diskless-sync-max-replicas`,
//!   `--hash-max-listpack-*`: 7.0+ (5.0–6.2 refuse to start; DEBUG is simply allowed there, and the
//!   `--hash-max-ziplist-*` names work on every version).
//! - `--hide-user-data-from-log`: 7.4+ and Valkey 8+ (not 7.0, 7.2).
//! - `--repl-diskless-load`, `--io-threads`, ACL (`--user`, `--aclfile`): 6.0+.
//! - `HEXPIRE` (hash field TTLs, RDB types 22–25): Redis 7.4+, Valkey 9 (not 7.2, not Valkey 8).
//!
//! Use [`accepts_config`] to decide at run time.
use super::{Client, RedisServer};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every version name the provisioning knows, oldest first.
pub const ALL: &[&str] = &[
    "5.0", "6.0", "6.2", "7.0", "7.2", "7.4", "8.2", "valkey-8", "valkey-9",
];

/// `FERRY_REDIS_<NAME>` for a version name.
pub fn env_var(version: &str) -> String {
    let name: String = version
        .chars()
        .map(|c| {
            if c == '.' || c == '-' {
                '_'
            } else {
                c.to_ascii_uppercase()
            }
        })
        .collect();
    format!("FERRY_REDIS_{name}")
}

/// Is `version` required (absence is a failure, not a skip)? Per `FERRY_REQUIRE_VERSIONS`.
pub fn required(version: &str) -> bool {
    match std::env::var("FERRY_REQUIRE_VERSIONS") {
        Ok(v) if v == "1" || v == "all" => true,
        Ok(v) => v.split(',').any(|x| x.trim() == version),
        Err(_) => false,
    }
}

/// The `redis-server` binary of `version`, or `None` when it is not provisioned here.
///
/// Looks at `FERRY_REDIS_<NAME>`, then `.cache/redis/<version>/redis-server` under the crate root, then
/// (for a plain Redis version) the `redis-server` on PATH if its `--version` matches (Debian 12's is 7.0).
/// Prints nothing and never panics: see [`require_bin`] for the skip/panic policy.
pub fn server_bin(version: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env_var(version)) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Some(p);
        }
    }
    let cached = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".cache/redis")
        .join(version)
        .join("redis-server");
    if cached.is_file() {
        return Some(cached);
    }
    if version.starts_with(|c: char| c.is_ascii_digit()) {
        let out = Command::new("redis-server")
            .arg("--version")
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains(&format!("v={version}.")) {
            return Some(PathBuf::from("redis-server"));
        }
    }
    None
}

/// [`server_bin`], with the policy: absent and not required -> [`super::skip`] with the reason and return
/// `None` (the caller skips); absent and required (`FERRY_REQUIRE_VERSIONS`) -> panic.
pub fn require_bin(version: &str) -> Option<PathBuf> {
    match server_bin(version) {
        Some(p) => Some(p),
        None if required(version) => panic!(
            "redis {version} is required (FERRY_REQUIRE_VERSIONS) but absent: set {} or run scripts/redis-versions.sh",
            env_var(version)
        ),
        None => {
            super::skip(&format!(
                "redis {version} is not provisioned ({} unset, no .cache/redis/{version}); run scripts/redis-versions.sh",
                env_var(version)
            ));
            None
        }
    }
}

/// Start `version` with extra `--name value` arguments on a free port; `None` (skip recorded) when
/// the version is absent and not required. Keep `extra` to flags that version accepts (module docs).
pub fn start_version(version: &str, extra: &[&str]) -> Option<RedisServer> {
    require_bin(version).map(|bin| RedisServer::start_bin(&bin, extra))
}

/// The versions present on this machine (name, binary), oldest first; records one skip per absent one
/// (and panics for an absent required one). For tests that loop over every version.
pub fn available() -> Vec<(&'static str, PathBuf)> {
    ALL.iter()
        .filter_map(|v| require_bin(v).map(|p| (*v, p)))
        .collect()
}

impl RedisServer {
    /// [`start_version`] as an associated function.
    pub fn start_version(version: &str, extra: &[&str]) -> Option<RedisServer> {
        start_version(version, extra)
    }
}

/// What a running server says it is: (`"redis"` or `"valkey"`, its own version such as `"5.0.10"` or
/// `"9.1.2"`). Valkey also reports `redis_version:7.2.4` for compatibility; this returns `valkey_version`.
pub fn server_identity(c: &mut Client) -> (String, String) {
    let info = c.ok(&["INFO", "server"]).as_string();
    let field = |k: &str| {
        info.lines().find_map(|l| {
            l.strip_prefix(&format!("{k}:"))
                .map(|v| v.trim().to_string())
        })
    };
    let name = field("server_name").unwrap_or_else(|| "redis".into());
    let version = field("valkey_version")
        .or_else(|| field("redis_version"))
        .unwrap_or_default();
    (name, version)
}

/// The RDB format version a server writes, read from a `DUMP` payload (its last 10 bytes are the RDB
/// version, little-endian u16, then the CRC64). Observed: 9 for 5.0/6.0/6.2, 10 for 7.0, 11 for 7.2,
/// 12 for 7.4 and 8.2, 11 for Valkey 8, 80 for Valkey 9 (whose RDB files start `VALKEY080`). Writes and deletes one key.
pub fn rdb_version(c: &mut Client) -> u16 {
    c.ok(&["SET", "__ferry_rdb_version_probe", "x"]);
    let dump = c.ok(&["DUMP", "__ferry_rdb_version_probe"]);
    c.ok(&["DEL", "__ferry_rdb_version_probe"]);
    let b = dump.as_bytes().expect("DUMP returned no payload");
    assert!(b.len() >= 10, "DUMP payload too short: {b:?}");
    u16::from_le_bytes([b[b.len() - 10], b[b.len() - 9]])
}

/// Does this server accept `CONFIG SET name value`-able parameter `name`? (`CONFIG GET` returns nothing
/// for unknown parameters on every version.)
pub fn accepts_config(c: &mut Client, name: &str) -> bool {
    !c.ok(&["CONFIG", "GET", name]).as_array().is_empty()
}

/// Smoke check for a `#[test]`: every provisioned version starts on a free port, reports the version
/// it is named after, and DUMPs with the RDB version it is known to write. Absent versions skip
/// (or panic under `FERRY_REQUIRE_VERSIONS`). Returns the versions it checked.
pub fn check_every_version() -> Vec<&'static str> {
    let mut checked = Vec::new();
    for (v, bin) in available() {
        let s = RedisServer::start_bin(&bin, &[]);
        let mut c = s.client();
        let (name, ver) = server_identity(&mut c);
        assert!(
            ver.starts_with(v.trim_start_matches("valkey-")),
            "{v} at {} reports {name} {ver}",
            bin.display()
        );
        assert_eq!(
            name == "valkey",
            v.starts_with("valkey-"),
            "{v} reports server_name {name}"
        );
        let want_rdb = match v {
            "5.0" | "6.0" | "6.2" => 9,
            "7.0" => 10,
            "7.2" | "valkey-8" => 11,
            "7.4" | "8.2" => 12,
            "valkey-9" => 80,
            _ => unreachable!(),
        };
        assert_eq!(rdb_version(&mut c), want_rdb, "{v}: RDB version of DUMP");
        checked.push(v);
    }
    checked
}
