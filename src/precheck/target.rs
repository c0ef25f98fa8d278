//! Checks of the target: what it is (probe), then the verdicts that depend on the sources (judge).

use super::advice::{fmt_bytes, fmt_config_size, judge_memory};
use super::probe::{self, role_text, Outcome, Side};
use super::{Check, CheckOptions, Level, SourceFacts};
use crate::checkpoint;
use crate::endpoint::RedisAddr;
use crate::info::Info;
use crate::resp::Reply;
use crate::target::{restore_compatible, ServerInfo};

/// What probing the target found.
pub(crate) struct TargetProbe {
    pub subject: String,
    /// Reachable, auth and mode lines (and whatever stopped the probe).
    pub checks: Vec<Check>,
    /// `None` when the target could not be inspected: the verdicts below are skipped.
    pub facts: Option<TargetFacts>,
}

pub(crate) struct TargetFacts {
    pub info: Info,
    /// What ferry makes of `info`.
    pub server: ServerInfo,
    /// `CONFIG GET databases`, when allowed.
    pub databases: Option<u32>,
    /// Sources whose data of an earlier run of this job is on the target (a checkpoint in the state
    /// directory or in the target).
    pub resuming: Vec<String>,
    /// In-target checkpoint keys found, and their db (they are not a conflict).
    pub checkpoint_keys: Option<(u32, u64)>,
}

/// Connect, identify, and read what the verdicts need; bounded as a whole, like each source's checks.
pub(crate) async fn probe_target(
    addr: &RedisAddr,
    sources: &[RedisAddr],
    opts: &CheckOptions,
) -> TargetProbe {
    let subject = format!("target {}", addr.host_port());
    let budget = opts.timeout * 6 + std::time::Duration::from_secs(1);
    match tokio::time::timeout(budget, probe(addr, &subject, sources, opts)).await {
        Ok(p) => p,
        Err(_) => TargetProbe {
            checks: vec![Check::error(
                "target.reachable",
                &subject,
                format!(
                    "the checks did not finish within {}: the server answers too slowly",
                    probe::fmt_timeout(budget)
                ),
            )
            .advice("check the server's load and the network")],
            subject,
            facts: None,
        },
    }
}

async fn probe(
    addr: &RedisAddr,
    subject: &str,
    sources: &[RedisAddr],
    opts: &CheckOptions,
) -> TargetProbe {
    let subject = subject.to_string();
    let opened = match probe::open(addr, Side::Target, &subject, opts.timeout).await {
        Outcome::Failed(checks) => {
            return TargetProbe {
                subject,
                checks,
                facts: None,
            }
        }
        Outcome::Opened(o) => *o,
    };
    let mut checks = opened.checks;
    let mut c = opened.client;
    let Some(info) = opened.info else {
        return TargetProbe {
            subject,
            checks,
            facts: None,
        };
    };
    checks.push(mode_check(&subject, &info, opts));
    if info.loading() {
        checks.push(
            Check::warn(
                "target.loading",
                &subject,
                "is loading its dataset (loading:1): it refuses writes until loading finishes",
            )
            .advice("wait for the load to finish, then check again"),
        );
    }
    let databases = match c.cmd(&[b"CONFIG", b"GET", b"databases"]).await {
        Ok(Reply::Array(Some(items))) => items
            .get(1)
            .and_then(|r| r.as_bytes())
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|s| s.trim().parse().ok()),
        _ => None,
    };
    let mut resuming: Vec<String> = Vec::new();
    if let Some(dir) = &opts.state_dir {
        for a in sources {
            let p = checkpoint::path_for(dir, &a.to_string(), &addr.to_string());
            if p.exists() {
                resuming.push(a.host_port());
            }
        }
    }
    let mut checkpoint_keys = None;
    if let Some((db, prefix)) = &opts.target_checkpoint {
        let db_s = db.to_string();
        // On a node of a sharded target each source has a checkpoint key per group the node owns: look for
        // its first one.
        let groups = opts.shard.as_ref().map(|s| s.groups());
        let keys: Vec<(String, Vec<u8>)> = sources
            .iter()
            .map(|a| {
                let id = checkpoint::source_id(&a.to_string());
                let key = format!("{prefix}{id}").into_bytes();
                let key = match (&opts.shard, groups.as_ref().and_then(|g| g.first())) {
                    (Some(s), Some(g)) => crate::apply::stream::group_key(s, &key, *g),
                    _ => key,
                };
                (a.host_port(), key)
            })
            .collect();
        let mut cmds: Vec<Vec<&[u8]>> = vec![vec![b"SELECT", db_s.as_bytes()]];
        cmds.extend(keys.iter().map(|(_, k)| vec![&b"EXISTS"[..], k.as_slice()]));
        if let Ok(replies) = c.pipeline(&cmds).await {
            if !replies.first().is_some_and(Reply::is_error) {
                let mut found = 0;
                for ((shown, _), r) in keys.iter().zip(replies.iter().skip(1)) {
                    if r.as_int() == Some(1) {
                        found += 1;
                        if !resuming.contains(shown) {
                            resuming.push(shown.clone());
                        }
                    }
                }
                let per_source = groups.as_ref().map_or(1, |g| g.len() as u64);
                checkpoint_keys = Some((*db, found * per_source));
            }
        }
    }
    TargetProbe {
        subject,
        checks,
        facts: Some(TargetFacts {
            server: ServerInfo::from_info(&info),
            info,
            databases,
            resuming,
            checkpoint_keys,
        }),
    }
}

/// A master (standalone, or a node of the cluster target), or why not.
fn mode_check(subject: &str, info: &Info, opts: &CheckOptions) -> Check {
    if info.cluster_enabled() && !opts.cluster_node {
        return Check::error(
            "target.mode",
            subject,
            "cluster mode (cluster_enabled:1): a cluster node given as a single server would be sent keys \
             of slots it does not own",
        )
        .advice("give the cluster as cluster://host:port[,host:port…]: ferry then writes to every master by slot");
    }
    if !info.cluster_enabled() && opts.cluster_node {
        return Check::error(
            "target.mode",
            subject,
            "cluster_enabled:0, yet it was given as a node of a cluster target",
        )
        .advice("give a standalone server as redis://host:port");
    }
    if info.is_replica() && opts.replica_of_ferry {
        return Check::ok(
            "target.mode",
            subject,
            "a replica of the previous ferry run (master mode): it continues from there",
        );
    }
    if info.is_replica() {
        return Check::error(
            "target.mode",
            subject,
            format!(
                "role {}: a replica rejects writes (READONLY) or loses them at its next sync",
                role_text(info)
            ),
        )
        .advice("give its master as the target, or detach it first with REPLICAOF NO ONE");
    }
    if opts.cluster_node {
        return Check::ok("target.mode", subject, "cluster master node");
    }
    Check::ok("target.mode", subject, "standalone master")
}

/// The verdicts on the target that depend on the sources: identity, version, empty, eviction, memory,
/// databases. `unchecked` sources could not be inspected (their memory and version are unknown).
pub(crate) fn judge_target(
    probe: TargetProbe,
    sources: &[SourceFacts],
    unchecked: usize,
    opts: &CheckOptions,
) -> Vec<Check> {
    let TargetProbe {
        subject,
        mut checks,
        facts,
    } = probe;
    let Some(t) = facts else {
        return checks;
    };
    let s = subject.as_str();
    if let Some(run_id) = t.info.field("run_id") {
        for src in sources
            .iter()
            .filter(|f| f.run_id.as_deref() == Some(run_id))
        {
            checks.push(
                Check::error(
                    "target.distinct",
                    s,
                    format!("is the same server as {}", src.subject),
                )
                .advice("give a different target: ferry would write the source's data onto itself"),
            );
        }
    }
    if let Some(c) = version_check(s, &t.server, sources) {
        checks.push(c);
    }
    checks.push(empty_check(s, &t, opts));
    checks.push(eviction_check(s, &t.server));
    checks.push(memory_check(s, &t, sources, unchecked, opts));
    if let Some(c) = databases_check(s, &t, sources, opts) {
        checks.push(c);
    }
    checks
}

/// Older (or other-family) targets get native commands instead of RESTORE: slower, not wrong.
fn version_check(s: &str, server: &ServerInfo, sources: &[SourceFacts]) -> Option<Check> {
    let known: Vec<&SourceFacts> = sources.iter().filter(|f| f.rdb_version > 0).collect();
    if known.is_empty() {
        return None;
    }
    let dst = server.rdb_version;
    let ours = format!("{} (RDB {dst})", server.version_string());
    let slow: Vec<&&SourceFacts> = known
        .iter()
        .filter(|f| !restore_compatible(f.rdb_version, dst))
        .collect();
    // Older, or a format of the other family (Redis 7.4+'s 12 on a Valkey 9 target).
    let relation = if slow.iter().all(|f| f.rdb_version > dst) {
        "is older than"
    } else {
        "does not load the RDB format of"
    };
    let slow: Vec<String> = slow
        .iter()
        .map(|f| format!("{} ({}, RDB {})", f.subject, f.version, f.rdb_version))
        .collect();
    Some(if slow.is_empty() {
        Check::ok(
            "target.version",
            s,
            format!("{ours} loads every source's values as they are (RESTORE)"),
        )
    } else {
        Check::warn(
            "target.version",
            s,
            format!(
                "{ours} {relation} {}: values will be re-encoded with native commands (slower)",
                slow.join(", ")
            ),
        )
        .advice(
            "fine as it is; a target at least as new as the newest source (Redis for Redis, Valkey 9 for \
             Valkey 9) would load values directly with RESTORE",
        )
    })
}

/// Target dbs that the sync writes into, `None` meaning every db.
fn written_dbs(opts: &CheckOptions) -> Option<Vec<u32>> {
    let keep = opts.dbs.keep.as_ref()?;
    let mut v: Vec<u32> = keep.iter().filter_map(|d| opts.dbs.target(*d)).collect();
    v.sort_unstable();
    v.dedup();
    Some(v)
}

fn keys_list(v: &[(u32, u64)]) -> String {
    v.iter()
        .map(|(db, n)| format!("db{db}: {n} keys"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Empty unless overwriting (checked once, for all sources): keys in the dbs the sync writes to.
fn empty_check(s: &str, t: &TargetFacts, opts: &CheckOptions) -> Check {
    let mut keyspace = t.server.keyspace.clone();
    if let Some((db, n)) = t.checkpoint_keys {
        for (d, k) in &mut keyspace {
            if *d == db {
                *k = k.saturating_sub(n);
            }
        }
        keyspace.retain(|(_, k)| *k > 0);
    }
    let written = written_dbs(opts);
    type DbKeys = Vec<(u32, u64)>;
    let (conflict, other): (DbKeys, DbKeys) = keyspace
        .iter()
        .partition(|(db, _)| written.as_ref().map_or(true, |w| w.contains(db)));
    let total: u64 = conflict.iter().map(|(_, n)| n).sum();
    if conflict.is_empty() {
        return Check::ok(
            "target.empty",
            s,
            if other.is_empty() {
                "empty".to_string()
            } else {
                format!(
                    "empty in the dbs the sync writes to (other dbs hold keys: {})",
                    keys_list(&other)
                )
            },
        );
    }
    if !t.resuming.is_empty() {
        return Check::ok(
            "target.empty",
            s,
            format!(
                "holds {total} keys ({}): data of an earlier run of this job (checkpoints of {}); the sync \
                 continues it",
                keys_list(&conflict),
                t.resuming.join(", ")
            ),
        );
    }
    if opts.overwrite {
        Check::warn(
            "target.empty",
            s,
            format!(
                "not empty ({total} keys; {}): with --on-conflict overwrite, source values replace target \
                 values of the same keys, and the target's other keys stay",
                keys_list(&conflict)
            ),
        )
        .advice("make sure this is the intended target")
    } else {
        Check::error(
            "target.empty",
            s,
            format!("not empty ({total} keys; {})", keys_list(&conflict)),
        )
        .advice(
            "empty it (FLUSHALL on the target), or pass --on-conflict overwrite to let source values \
             replace target values",
        )
    }
}

/// Evictions make the copy diverge silently.
fn eviction_check(s: &str, server: &ServerInfo) -> Check {
    let policy = server.maxmemory_policy.as_str();
    if policy.is_empty() || policy == "noeviction" {
        return Check::ok(
            "target.eviction",
            s,
            format!(
                "maxmemory-policy {}",
                if policy.is_empty() { "unknown" } else { policy }
            ),
        );
    }
    let today = if server.maxmemory == 0 {
        " (maxmemory is 0, so nothing is evicted until a limit is set)"
    } else {
        ""
    };
    Check::warn(
        "target.eviction",
        s,
        format!(
            "maxmemory-policy {policy}: keys the target evicts make the copy diverge from the source{today}"
        ),
    )
    .advice(
        "CONFIG SET maxmemory-policy noeviction: a full target then rejects writes, which ferry reports, \
         instead of dropping keys silently",
    )
}

/// maxmemory against the target's used memory plus the sources' data.
fn memory_check(
    s: &str,
    t: &TargetFacts,
    sources: &[SourceFacts],
    unchecked: usize,
    opts: &CheckOptions,
) -> Check {
    // A node of a sharded target holds its share of the data.
    let data: u64 =
        sources.iter().filter_map(|f| f.data_memory).sum::<u64>() / opts.share_of.max(1);
    let unmeasured = unchecked + sources.iter().filter(|f| f.data_memory.is_none()).count();
    let caveat = if unmeasured > 0 {
        format!(" ({unmeasured} sources not counted: unreachable, INFO refused, or RDB files)")
    } else {
        String::new()
    };
    let used = t.server.used_memory;
    let max = t.server.maxmemory;
    let v = judge_memory(max, used, data, opts.memory_headroom_pct);
    let need = format!(
        "~{} needed ({} used + {} of source data{caveat})",
        fmt_bytes(v.need),
        fmt_bytes(used),
        fmt_bytes(data)
    );
    if max == 0 {
        if let Some(total) = t.info.u64("total_system_memory").filter(|m| *m > 0) {
            if v.need > total {
                return Check::warn(
                    "target.memory",
                    s,
                    format!(
                        "no maxmemory limit, but {need} is more than the machine's memory ({})",
                        fmt_bytes(total)
                    ),
                )
                .advice("give the target a bigger machine, or sync fewer dbs (--db)");
            }
        }
        return Check::ok("target.memory", s, format!("no maxmemory limit; {need}"));
    }
    let raise = |suggested: Option<u64>| match suggested {
        Some(m) => format!(
            "raise it: CONFIG SET maxmemory {} (leaves {} % free), or sync fewer dbs (--db)",
            fmt_config_size(m),
            opts.memory_headroom_pct
        ),
        None => "raise maxmemory, or sync fewer dbs (--db)".into(),
    };
    match v.level {
        Level::Error => Check::error(
            "target.memory",
            s,
            format!("maxmemory {} cannot hold the copy: {need}", fmt_bytes(max)),
        )
        .advice(raise(v.suggested)),
        Level::Warn => Check::warn(
            "target.memory",
            s,
            format!(
                "maxmemory {} holds the copy with less than {} % free: {need}",
                fmt_bytes(max),
                opts.memory_headroom_pct
            ),
        )
        .advice(raise(v.suggested)),
        Level::Ok => Check::ok(
            "target.memory",
            s,
            format!("maxmemory {}; {need}", fmt_bytes(max)),
        ),
    }
}

/// The highest target db written must exist there.
fn databases_check(
    s: &str,
    t: &TargetFacts,
    sources: &[SourceFacts],
    opts: &CheckOptions,
) -> Option<Check> {
    let mut highest: Option<(u32, u32)> = None; // (target db, source db)
    for f in sources {
        for (db, _) in &f.keyspace {
            if let Some(to) = opts.dbs.target(*db) {
                if highest.map_or(true, |(h, _)| to > h) {
                    highest = Some((to, *db));
                }
            }
        }
    }
    let (high, from) = highest?;
    let mapped = if high == from {
        String::new()
    } else {
        format!(" (source db {from})")
    };
    Some(match t.databases {
        Some(n) if high >= n => Check::error(
            "target.databases",
            s,
            format!("the sources have keys for db {high}{mapped}, but the target has only {n} databases"),
        )
        .advice(format!(
            "set databases to at least {} in the target's config (needs a restart), or move dbs with \
             --map-db SRC:DST",
            high + 1
        )),
        Some(n) => Check::ok(
            "target.databases",
            s,
            format!("{n} databases; the sources use up to db {high}{mapped}"),
        ),
        None if high >= 16 => Check::warn(
            "target.databases",
            s,
            format!(
                "databases unknown (CONFIG GET refused) and the sources use db {high}{mapped}, beyond the \
                 default 16"
            ),
        )
        .advice(format!(
            "make sure the target has at least {} databases",
            high + 1
        )),
        None => Check::ok(
            "target.databases",
            s,
            format!("databases unknown (CONFIG GET refused); the sources use up to db {high}{mapped}"),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::DbMap;

    fn facts(info: &str) -> TargetFacts {
        let info = Info::parse(info);
        TargetFacts {
            server: ServerInfo::from_info(&info),
            info,
            databases: Some(16),
            resuming: Vec::new(),
            checkpoint_keys: None,
        }
    }

    fn src(
        subject: &str,
        version: &str,
        rdb: u16,
        data: u64,
        keyspace: &[(u32, u64)],
    ) -> SourceFacts {
        SourceFacts {
            subject: subject.into(),
            version: version.into(),
            rdb_version: rdb,
            data_memory: Some(data),
            keyspace: keyspace.to_vec(),
            run_id: None,
        }
    }

    #[test]
    fn older_target_is_a_reencoding_warning() {
        let t = facts("redis_version:6.2.14\r\n");
        let s = [
            src("source a", "Redis 7.0.15", 10, 0, &[]),
            src("source b", "Redis 5.0.10", 9, 0, &[]),
        ];
        let c = version_check("target t", &t.server, &s).unwrap();
        assert_eq!(c.level, Level::Warn);
        assert!(
            c.message.contains("source a (Redis 7.0.15, RDB 10)"),
            "{}",
            c.message
        );
        assert!(!c.message.contains("source b"), "{}", c.message);
        assert!(c
            .message
            .contains("re-encoded with native commands (slower)"));
        let t = facts("redis_version:7.2.4\r\n");
        assert_eq!(version_check("t", &t.server, &s).unwrap().level, Level::Ok);
        assert!(version_check("t", &t.server, &[]).is_none());
    }

    #[test]
    fn non_empty_target_error_unless_overwrite() {
        let t = facts("redis_version:7.0.15\r\ndb0:keys=10,expires=0\r\ndb3:keys=2,expires=0\r\n");
        let c = empty_check("target t", &t, &CheckOptions::default());
        assert_eq!(c.level, Level::Error);
        assert_eq!(c.message, "not empty (12 keys; db0: 10 keys, db3: 2 keys)");
        assert!(c.advice.unwrap().contains("--on-conflict overwrite"));
        let ow = CheckOptions {
            overwrite: true,
            ..CheckOptions::default()
        };
        let c = empty_check("target t", &t, &ow);
        assert_eq!(c.level, Level::Warn);
        assert!(c.message.contains("replace target values"), "{}", c.message);
        // --db 0 --map-db 0:5: only db5 is written; keys elsewhere are no conflict.
        let f = CheckOptions {
            dbs: DbMap::parse(&["0".into()], &["0:5".into()]).unwrap(),
            ..CheckOptions::default()
        };
        let c = empty_check("target t", &t, &f);
        assert_eq!(c.level, Level::Ok, "{}", c.message);
        assert!(c.message.contains("other dbs hold keys"), "{}", c.message);
        // Resuming an earlier run.
        let mut r = facts("redis_version:7.0.15\r\ndb0:keys=10,expires=0\r\n");
        r.resuming = vec!["127.0.0.1:6379".into()];
        assert_eq!(
            empty_check("t", &r, &CheckOptions::default()).level,
            Level::Ok
        );
        // Only the in-target checkpoint keys: empty.
        let mut k = facts("redis_version:7.0.15\r\ndb0:keys=2,expires=0\r\n");
        k.checkpoint_keys = Some((0, 2));
        let c = empty_check("t", &k, &CheckOptions::default());
        assert_eq!((c.level, c.message.as_str()), (Level::Ok, "empty"));
    }

    #[test]
    fn eviction_policy_warns() {
        let t = facts("redis_version:7.0.15\r\nmaxmemory:0\r\nmaxmemory_policy:noeviction\r\n");
        assert_eq!(eviction_check("t", &t.server).level, Level::Ok);
        let t = facts("redis_version:7.0.15\r\nmaxmemory:100\r\nmaxmemory_policy:allkeys-lru\r\n");
        let c = eviction_check("t", &t.server);
        assert_eq!(c.level, Level::Warn);
        assert!(c.message.contains("allkeys-lru") && c.advice.unwrap().contains("noeviction"));
    }

    #[test]
    fn memory_verdicts() {
        let mb = 1u64 << 20;
        let t = facts(&format!(
            "redis_version:7.0.15\r\nused_memory:{mb}\r\nmaxmemory:{}\r\n",
            10 * mb
        ));
        let s = [src("source a", "Redis 7.0.15", 10, 20 * mb, &[(0, 1)])];
        let c = memory_check("t", &t, &s, 0, &CheckOptions::default());
        assert_eq!(c.level, Level::Error, "{}", c.message);
        assert!(c.message.contains("cannot hold"), "{}", c.message);
        assert!(c.advice.unwrap().contains("CONFIG SET maxmemory 27mb"));
        let s = [src("source a", "Redis 7.0.15", 10, 8 * mb, &[(0, 1)])];
        let c = memory_check("t", &t, &s, 1, &CheckOptions::default());
        assert_eq!(c.level, Level::Warn, "{}", c.message);
        assert!(c.message.contains("1 sources not counted"), "{}", c.message);
        let s = [src("source a", "Redis 7.0.15", 10, mb, &[(0, 1)])];
        assert_eq!(
            memory_check("t", &t, &s, 0, &CheckOptions::default()).level,
            Level::Ok
        );
    }

    #[test]
    fn databases_against_highest_source_db() {
        let t = facts("redis_version:7.0.15\r\n");
        let s = [src("a", "Redis 7.0.15", 10, 0, &[(0, 1), (20, 5)])];
        let c = databases_check("t", &t, &s, &CheckOptions::default()).unwrap();
        assert_eq!(c.level, Level::Error, "{}", c.message);
        assert!(c.advice.unwrap().contains("at least 21"));
        let m = CheckOptions {
            dbs: DbMap::parse(&[], &["20:1".into()]).unwrap(),
            ..CheckOptions::default()
        };
        let c = databases_check("t", &t, &s, &m).unwrap();
        assert_eq!(c.level, Level::Ok, "{}", c.message);
        assert!(databases_check("t", &t, &[], &m).is_none());
    }
}
