//! The text of an `INFO` reply, read once. Every part of ferry that reads `INFO` reads it here: the typed
//! summary `target::ServerInfo` is built from an [`Info`], the prechecks read their fields from one,
//! and [`field`] picks a single field out of a reply without building one (the writer pool's `run_id`, a
//! master's `master_repl_offset`).
//!
//! The grammar, as `genRedisInfoString` in `server.c` writes it: lines end in CRLF; a line `# Name` opens a
//! section; a `name:value` line is a field, its value everything after the *first* colon (values may hold
//! colons: `slave0:ip=::1,port=6380,…`, `executable:/usr/bin/redis-server`); blank lines separate sections.
//! Servers add fields in every release (`valkey_version`, `subexpiry=`, `keys_with_volatile_items=`), so an
//! unknown field or line is kept or skipped, never an error.
//!
//! The keyspace section's `dbN:keys=K,expires=E,avg_ttl=T[,…]` lines are parsed once into [`DbKeys`].

/// `major.minor.patch`, as in `redis_version:7.2.4`. Missing or unreadable parts are 0.
pub type Version = (u32, u32, u32);

/// One db's line of the keyspace section.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DbKeys {
    pub db: u32,
    pub keys: u64,
    /// Keys with an expiry.
    pub expires: u64,
    /// Average remaining TTL in ms of a sample of keys with an expiry (0 when none).
    pub avg_ttl: u64,
}

/// A parsed `INFO` reply: its fields in order, with the section each is in, and the keyspace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Info {
    /// Section names as written in their headers (`Server`, `Keyspace`); fields before any header (a
    /// reply to `INFO field`-style probes, or a test's text) are in no section.
    sections: Vec<String>,
    fields: Vec<Field>,
    keyspace: Vec<DbKeys>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Field {
    /// Index into `sections`, `None` before the first header.
    section: Option<usize>,
    name: String,
    value: String,
}

/// One line of `INFO` text.
enum Line<'a> {
    Header(&'a str),
    Field(&'a str, &'a str),
    Other,
}

fn line(l: &str) -> Line<'_> {
    let l = l.trim_end_matches(['\r', '\n']);
    if let Some(h) = l.strip_prefix('#') {
        return Line::Header(h.trim());
    }
    match l.split_once(':') {
        Some((name, value)) if !name.is_empty() => Line::Field(name, value.trim_end()),
        _ => Line::Other,
    }
}

/// The value of field `name` in the text of an `INFO` reply (trimmed), without building an [`Info`].
pub fn field<'a>(text: &'a [u8], name: &str) -> Option<&'a str> {
    let text = std::str::from_utf8(text).ok()?;
    text.lines().find_map(|l| match line(l) {
        Line::Field(n, v) if n == name => Some(v.trim()),
        _ => None,
    })
}

/// `7.2.4` → `(7, 2, 4)`; parts that are missing or not numbers are 0 (`255.255.255` for unstable builds
/// stays as written).
pub fn parse_version(v: &str) -> Version {
    let mut it = v.trim().split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
    )
}

/// `db3` + `keys=1,expires=0,avg_ttl=0` → the db's counts; `None` when the line is not a keyspace line.
fn db_keys(name: &str, value: &str) -> Option<DbKeys> {
    let db = name.strip_prefix("db")?;
    if db.is_empty() || !db.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut d = DbKeys {
        db: db.parse().ok()?,
        ..DbKeys::default()
    };
    let mut has_keys = false;
    for part in value.split(',') {
        let Some((k, v)) = part.split_once('=') else {
            continue;
        };
        let v = v.trim().parse().ok();
        match (k.trim(), v) {
            ("keys", Some(v)) => {
                d.keys = v;
                has_keys = true;
            }
            ("expires", Some(v)) => d.expires = v,
            ("avg_ttl", Some(v)) => d.avg_ttl = v,
            _ => {}
        }
    }
    has_keys.then_some(d)
}

impl Info {
    /// Parse the text of an `INFO` reply (any sections).
    pub fn parse(text: &str) -> Info {
        let mut info = Info::default();
        for l in text.lines() {
            match line(l) {
                Line::Header(h) => info.sections.push(h.to_string()),
                Line::Field(name, value) => {
                    if let Some(d) = db_keys(name, value) {
                        info.keyspace.push(d);
                    }
                    info.fields.push(Field {
                        section: info.sections.len().checked_sub(1),
                        name: name.to_string(),
                        value: value.to_string(),
                    });
                }
                Line::Other => {}
            }
        }
        info
    }

    /// Parse the bytes of an `INFO` reply (not UTF-8 only in paths and names; replaced, not refused).
    pub fn from_bytes(text: &[u8]) -> Info {
        Info::parse(&String::from_utf8_lossy(text))
    }

    /// The value of field `name`, as written (trailing spaces removed).
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.value.as_str())
    }

    /// A numeric field (`used_memory`, `master_repl_offset`); `None` when absent or not a number.
    pub fn u64(&self, name: &str) -> Option<u64> {
        self.field(name).and_then(|v| v.trim().parse().ok())
    }

    /// A signed numeric field (`second_repl_offset:-1`).
    pub fn i64(&self, name: &str) -> Option<i64> {
        self.field(name).and_then(|v| v.trim().parse().ok())
    }

    /// A version field (`redis_version`, `valkey_version`).
    pub fn version(&self, name: &str) -> Option<Version> {
        self.field(name).map(parse_version)
    }

    /// `redis_version` (Valkey reports a Redis-compatible one there too: 7.2.4).
    pub fn redis_version(&self) -> Option<Version> {
        self.version("redis_version")
    }

    /// Valkey's own version: `valkey_version` (8.0+), or for Valkey 7.2, which has only `server_name:valkey`,
    /// its `redis_version`. `None` for Redis.
    pub fn valkey_version(&self) -> Option<Version> {
        self.version("valkey_version").or_else(|| {
            self.field("server_name")
                .filter(|n| n.eq_ignore_ascii_case("valkey"))
                .and_then(|_| self.redis_version())
        })
    }

    /// Whether this reads like a Redis server's `INFO` (a proxy's has no `redis_version`).
    pub fn is_redis(&self) -> bool {
        self.field("redis_version").is_some()
    }

    /// `role`: `master` or `slave`.
    pub fn role(&self) -> Option<&str> {
        self.field("role")
    }

    pub fn is_replica(&self) -> bool {
        self.role() == Some("slave")
    }

    /// Loading its dataset (`loading:1`, or Valkey/Redis 7's `async_loading:1`).
    pub fn loading(&self) -> bool {
        self.field("loading") == Some("1") || self.field("async_loading") == Some("1")
    }

    /// `cluster_enabled:1`.
    pub fn cluster_enabled(&self) -> bool {
        self.field("cluster_enabled") == Some("1")
    }

    /// Every keyspace line, in the order written (dbs with keys only: servers omit empty dbs).
    pub fn keyspace(&self) -> &[DbKeys] {
        &self.keyspace
    }

    /// `(db, keys)` of every db holding keys.
    pub fn db_keys(&self) -> Vec<(u32, u64)> {
        self.keyspace
            .iter()
            .filter(|d| d.keys > 0)
            .map(|d| (d.db, d.keys))
            .collect()
    }

    /// Every field, in order: `(name, value)`.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields
            .iter()
            .map(|f| (f.name.as_str(), f.value.as_str()))
    }

    /// The section names, in order (`Server`, `Clients`, …).
    pub fn sections(&self) -> impl Iterator<Item = &str> {
        self.sections.iter().map(String::as_str)
    }

    /// The fields of section `name` (case-insensitive: `INFO keyspace` writes `# Keyspace`).
    pub fn section<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.fields
            .iter()
            .filter(move |f| {
                f.section
                    .and_then(|i| self.sections.get(i))
                    .is_some_and(|s| s.eq_ignore_ascii_case(name))
            })
            .map(|f| (f.name.as_str(), f.value.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Excerpts of real `INFO all` replies (Redis 5.0.10, 7.0.15, 8.2.3, Valkey 8.1.8 and 9.1.2), each
    /// with `SET a 1`, `SET b 2`, `PEXPIRE b 100000` in db 0 and `SET c 1` in db 3, lines as sent (CRLF).
    const REDIS_5: &str = "# Server\r\nredis_version:5.0.10\r\nredis_git_sha1:00000000\r\nredis_git_dirty:0\r\n\
        redis_build_id:5254669c0b070647\r\nredis_mode:standalone\r\nos:Linux 6.18.44-fc-v1147 x86_64\r\n\
        run_id:505753b9ab7cb8da30085aadffe6ad7756754f14\r\ntcp_port:17401\r\nexecutable:/work/main/.cache/redis/5.0/redis-server\r\n\
        config_file:\r\n\r\n# Memory\r\nused_memory:854544\r\nused_memory_human:834.52K\r\nmaxmemory:0\r\n\
        maxmemory_human:0B\r\nmaxmemory_policy:noeviction\r\n\r\n# Persistence\r\nloading:0\r\n\r\n\
        # Replication\r\nrole:master\r\nconnected_slaves:0\r\nmaster_replid:c243a433fa16ed5647929cae0ec7f1081ede3bab\r\n\
        master_repl_offset:0\r\nsecond_repl_offset:-1\r\nrepl_backlog_active:0\r\nrepl_backlog_size:1048576\r\n\r\n\
        # Commandstats\r\ncmdstat_set:calls=3,usec=27,usec_per_call=9.00\r\n\r\n# Cluster\r\ncluster_enabled:0\r\n\r\n\
        # Keyspace\r\ndb0:keys=2,expires=1,avg_ttl=0\r\ndb3:keys=1,expires=0,avg_ttl=0\r\n";

    /// The replication section is a real replica's (7.0.15, master on `::1`, a replica of its own).
    const REDIS_7: &str = "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n\
        run_id:18fee51f59a19d315315cd4b2b2a1aab66da81a0\r\n\r\n# Memory\r\nused_memory:990528\r\nmaxmemory:0\r\n\
        maxmemory_policy:noeviction\r\n\r\n# Persistence\r\nloading:0\r\nasync_loading:0\r\n\r\n# Replication\r\n\
        role:slave\r\nmaster_host:::1\r\nmaster_port:17430\r\nmaster_link_status:up\r\nconnected_slaves:1\r\n\
        slave0:ip=::1,port=17432,state=wait_bgsave,offset=0,lag=0\r\nmaster_repl_offset:14\r\n\r\n# Latencystats\r\n\
        latency_percentiles_usec_set:p50=6.015,p99=17.023,p99.9=17.023\r\n\r\n\
        # Cluster\r\ncluster_enabled:0\r\n\r\n# Keyspace\r\ndb0:keys=2,expires=1,avg_ttl=0\r\ndb3:keys=1,expires=0,avg_ttl=0\r\n";

    const REDIS_8: &str = "# Server\r\nredis_version:8.2.3\r\n\r\n# Keyspace\r\ndb0:keys=1,expires=0,avg_ttl=0,subexpiry=0\r\n";

    const VALKEY_8: &str =
        "# Server\r\nredis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:8.1.8\r\n\r\n\
        # Keyspace\r\ndb0:keys=1,expires=0,avg_ttl=0\r\n";

    const VALKEY_9: &str = "# Server\r\nredis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:9.1.2\r\n\
        valkey_release_stage:ga\r\nserver_mode:standalone\r\n\r\n# Memory\r\nused_memory:1093512\r\nmaxmemory:0\r\n\
        maxmemory_policy:noeviction\r\n\r\n# Cluster\r\ncluster_enabled:0\r\n\r\n# Keyspace\r\n\
        db0:keys=2,expires=1,avg_ttl=99974,keys_with_volatile_items=0\r\n\
        db3:keys=1,expires=0,avg_ttl=0,keys_with_volatile_items=0\r\n";

    #[test]
    fn fields_sections_and_keyspace_of_redis_5() {
        let i = Info::parse(REDIS_5);
        assert_eq!(i.redis_version(), Some((5, 0, 10)));
        assert_eq!(i.valkey_version(), None);
        assert!(i.is_redis() && !i.is_replica() && !i.loading() && !i.cluster_enabled());
        assert_eq!(i.u64("used_memory"), Some(854544));
        assert_eq!(i.i64("second_repl_offset"), Some(-1));
        assert_eq!(i.field("maxmemory_policy"), Some("noeviction"));
        // A value holding colons, and an empty value.
        assert_eq!(
            i.field("executable"),
            Some("/work/main/.cache/redis/5.0/redis-server")
        );
        assert_eq!(i.field("config_file"), Some(""));
        assert_eq!(i.field("no_such_field"), None);
        assert_eq!(
            i.keyspace(),
            &[
                DbKeys {
                    db: 0,
                    keys: 2,
                    expires: 1,
                    avg_ttl: 0
                },
                DbKeys {
                    db: 3,
                    keys: 1,
                    expires: 0,
                    avg_ttl: 0
                }
            ]
        );
        assert_eq!(i.db_keys(), vec![(0, 2), (3, 1)]);
        let sections: Vec<&str> = i.sections().collect();
        assert_eq!(
            sections,
            [
                "Server",
                "Memory",
                "Persistence",
                "Replication",
                "Commandstats",
                "Cluster",
                "Keyspace"
            ]
        );
        let repl: Vec<(&str, &str)> = i.section("replication").collect();
        assert_eq!(repl[0], ("role", "master"));
        assert_eq!(repl.len(), 7);
        assert_eq!(
            i.section("commandstats").next(),
            Some(("cmdstat_set", "calls=3,usec=27,usec_per_call=9.00"))
        );
    }

    #[test]
    fn a_replica_of_redis_7_with_colons_in_values() {
        let i = Info::parse(REDIS_7);
        assert_eq!(i.redis_version(), Some((7, 0, 15)));
        assert!(i.is_replica());
        assert_eq!(i.field("master_host"), Some("::1"));
        assert_eq!(
            i.field("slave0"),
            Some("ip=::1,port=17432,state=wait_bgsave,offset=0,lag=0")
        );
        assert_eq!(i.u64("master_repl_offset"), Some(14));
        assert_eq!(i.db_keys(), vec![(0, 2), (3, 1)]);
        // Only `dbN:` lines with keys= are keyspace lines.
        assert_eq!(i.keyspace().len(), 2);
    }

    #[test]
    fn valkey_and_newer_keyspace_fields() {
        let i = Info::parse(VALKEY_9);
        assert_eq!(i.redis_version(), Some((7, 2, 4)));
        assert_eq!(i.valkey_version(), Some((9, 1, 2)));
        assert_eq!(i.keyspace()[0].avg_ttl, 99974);
        assert_eq!(i.db_keys(), vec![(0, 2), (3, 1)]);
        let i = Info::parse(VALKEY_8);
        assert_eq!(i.valkey_version(), Some((8, 1, 8)));
        // Valkey 7.2 names itself only by server_name.
        let i = Info::parse("redis_version:7.2.4\r\nserver_name:valkey\r\n");
        assert_eq!(i.valkey_version(), Some((7, 2, 4)));
        let i = Info::parse(REDIS_8);
        assert_eq!(i.db_keys(), vec![(0, 1)]);
        assert_eq!(i.valkey_version(), None);
    }

    #[test]
    fn one_field_without_parsing_the_rest() {
        assert_eq!(
            field(REDIS_5.as_bytes(), "run_id"),
            Some("505753b9ab7cb8da30085aadffe6ad7756754f14")
        );
        assert_eq!(field(REDIS_7.as_bytes(), "master_repl_offset"), Some("14"));
        // A field name that is a prefix of another is not confused with it.
        assert_eq!(field(REDIS_5.as_bytes(), "used_memory"), Some("854544"));
        assert_eq!(field(REDIS_5.as_bytes(), "used_mem"), None);
        assert_eq!(field(b"\xff\xfe", "x"), None);
    }

    #[test]
    fn odd_input_is_skipped_not_refused() {
        let i =
            Info::parse("garbage\r\n:novalue\r\n#\r\ndbx:keys=1\r\ndb1:expires=3\r\ndb2:keys=5\n");
        assert_eq!(i.redis_version(), None);
        assert!(!i.is_redis());
        assert_eq!(i.db_keys(), vec![(2, 5)]);
        assert_eq!(parse_version("7.4"), (7, 4, 0));
        assert_eq!(parse_version("junk"), (0, 0, 0));
        assert_eq!(Info::parse(""), Info::default());
    }
}
