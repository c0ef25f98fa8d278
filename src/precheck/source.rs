//! Checks of one source: a live master (or replica), or an `rdb:` file.

use std::path::Path;
use std::time::{Duration, Instant};

use super::advice::{fmt_bytes, fmt_config_size, fmt_rate, fmt_secs, judge_backlog};
use super::probe::{self, describe, fmt_timeout, role_text, user_of, Outcome, Side};
use super::{Check, CheckOptions, Level, SourceFacts};
use crate::endpoint::{RedisAddr, SourceSpec};
use crate::info::Info;
use crate::resp::Reply;
use crate::target::client::Client;
use crate::target::{ServerInfo, TargetError};

/// `source 10.0.0.1:6379`, `source rdb:/x.rdb`.
pub(crate) fn subject_of(spec: &SourceSpec) -> String {
    match spec {
        SourceSpec::Redis(a) => format!("source {}", a.host_port()),
        other => format!("source {other}"),
    }
}

/// Every check of one source, and what the target's checks need from it (`None` when it could not be
/// inspected). `in_cluster`: the source is a master of a `cluster://` source (cluster mode is expected).
pub(crate) async fn check_source(
    spec: &SourceSpec,
    in_cluster: bool,
    opts: &CheckOptions,
) -> (Vec<Check>, Option<SourceFacts>) {
    let subject = subject_of(spec);
    match spec {
        SourceSpec::Redis(addr) => {
            // Every step has its own timeout; this bounds the whole in case a server answers slowly
            // to each of them.
            let budget = opts.timeout * 6 + opts.rate_sample + Duration::from_secs(1);
            match tokio::time::timeout(budget, check_master(addr, &subject, in_cluster, opts)).await
            {
                Ok(r) => r,
                Err(_) => (
                    vec![Check::error(
                        "source.reachable",
                        subject,
                        format!(
                            "the checks did not finish within {}: the server answers too slowly",
                            fmt_timeout(budget)
                        ),
                    )
                    .advice("check the server's load and the network")],
                    None,
                ),
            }
        }
        SourceSpec::RdbFile(path) => check_rdb_file(path, subject).await,
        SourceSpec::Twemproxy { .. } | SourceSpec::Cluster(_) => (
            vec![Check::error(
                "source.reachable",
                subject,
                "a twemproxy pool or a cluster must be expanded into its servers before checking \
                 (crate::job::expand_sources)",
            )],
            None,
        ),
    }
}

async fn check_rdb_file(path: &Path, subject: String) -> (Vec<Check>, Option<SourceFacts>) {
    use tokio::io::AsyncReadExt;
    let read = async {
        let mut f = tokio::fs::File::open(path).await?;
        let len = f.metadata().await?.len();
        let mut head = [0u8; 9];
        f.read_exact(&mut head).await?;
        Ok::<_, std::io::Error>((head, len))
    };
    match read.await {
        Ok((head, len)) => match rdb_magic_version(&head) {
            Some(v) => (
                vec![Check::ok(
                    "source.rdb",
                    subject.clone(),
                    format!("RDB file, format {v}, {}", fmt_bytes(len)),
                )],
                Some(SourceFacts {
                    subject,
                    version: format!("RDB file format {v}"),
                    rdb_version: v,
                    ..SourceFacts::default()
                }),
            ),
            None => (
                vec![Check::error(
                    "source.rdb",
                    subject,
                    "not an RDB file (it starts with neither REDIS0nnn nor VALKEYnnn)",
                )
                .advice("give the path of a dump.rdb")],
                None,
            ),
        },
        Err(e) => (
            vec![
                Check::error("source.rdb", subject, format!("cannot read it: {e}"))
                    .advice("check the path and its permissions"),
            ],
            None,
        ),
    }
}

/// The format version in an RDB file's first 9 bytes: `REDIS0011` → 11, `VALKEY080` → 80.
pub(crate) fn rdb_magic_version(head: &[u8]) -> Option<u16> {
    let digits = |d: &[u8]| -> Option<u16> {
        if d.is_empty() || !d.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(d).ok()?.parse().ok()
    };
    if let Some(d) = head.strip_prefix(b"REDIS") {
        return digits(d.get(..4)?);
    }
    if let Some(d) = head.strip_prefix(b"VALKEY") {
        return digits(d.get(..3)?);
    }
    None
}

async fn check_master(
    addr: &RedisAddr,
    subject: &str,
    in_cluster: bool,
    opts: &CheckOptions,
) -> (Vec<Check>, Option<SourceFacts>) {
    let opened = match probe::open(addr, Side::Source, subject, opts.timeout).await {
        Outcome::Failed(checks) => return (checks, None),
        Outcome::Opened(o) => *o,
    };
    let mut checks = opened.checks;
    let mut c = opened.client;
    let mut facts = SourceFacts {
        subject: subject.to_string(),
        ..SourceFacts::default()
    };
    let info = opened.info;
    if let Some(info) = &info {
        let server = ServerInfo::from_info(info);
        facts.version = server.version_string();
        facts.rdb_version = server.rdb_version;
        facts.run_id = info.field("run_id").map(str::to_string);
        match (server.cluster, in_cluster) {
            (true, false) => checks.push(
                Check::error(
                    "source.mode",
                    subject,
                    "cluster mode (cluster_enabled:1): a node of a Redis Cluster given as a single server would \
                     sync only this node's slots, and would not follow a failover",
                )
                .advice(
                    "give the cluster as --source cluster://host:port[,host:port…]: ferry then syncs every \
                     master and follows failovers",
                ),
            ),
            (false, true) => checks.push(Check::error(
                "source.mode",
                subject,
                "cluster_enabled:0, yet it was found as a master of a cluster source",
            )),
            (true, true) => checks.push(Check::ok(
                "source.mode",
                subject,
                "cluster master node (one source per master)",
            )),
            (false, false) => {}
        }
        if info.loading() {
            checks.push(
                Check::warn(
                    "source.loading",
                    subject,
                    "is loading its dataset (loading:1): it answers PSYNC only when loading finishes",
                )
                .advice("wait for the load to finish, then check again"),
            );
        }
    }
    checks.push(
        check_psync(
            &mut c,
            addr,
            subject,
            info.as_ref(),
            opened.ping_error,
            opts,
        )
        .await,
    );
    if let Some(info) = &info {
        checks.push(check_backlog(&mut c, subject, info, opts).await);
        let (check, data) = check_data(subject, info, opts);
        checks.push(check);
        facts.data_memory = data;
        facts.keyspace = info.db_keys();
    }
    (checks, Some(facts))
}

fn acl_advice(user: &str) -> String {
    format!(
        "grant what a replica needs: ACL SETUSER {user} +psync +replconf +ping (or give a user that has them)"
    )
}

/// Serves PSYNC to our user: role, link of a replica, PSYNC not renamed, REPLCONF and PSYNC permitted. Never
/// starts a sync: REPLCONF listening-port only records a port on our connection, and PSYNC itself is only
/// asked about (`ACL DRYRUN`, Redis 7.0+ / Valkey).
async fn check_psync(
    c: &mut Client,
    addr: &RedisAddr,
    subject: &str,
    info: Option<&Info>,
    ping_error: Option<String>,
    opts: &CheckOptions,
) -> Check {
    let user = user_of(addr);
    let err = |m: String| Check::error("source.psync", subject, m);
    if let Some(e) = ping_error {
        if e.to_ascii_uppercase().starts_with("NOPERM") {
            return err(format!(
                "user {user} may not run PING ({e}), which the replica handshake sends"
            ))
            .advice(acl_advice(user));
        }
    }
    let role = match info {
        Some(i) if i.is_replica() => {
            if i.field("master_link_status") != Some("up") {
                return err(format!(
                    "role {}: a replica refuses PSYNC while its own master link is down \
                     (NOMASTERLINK)",
                    role_text(i)
                ))
                .advice("repair that replica's replication, or give its master as the source");
            }
            format!(
                "role {}: a replica serves PSYNC too and keeps the load off its master",
                role_text(i)
            )
        }
        Some(i) => format!("role {}", role_text(i)),
        None => "role unknown".into(),
    };
    let io_fail = |e: TargetError| {
        Check::error(
            "source.psync",
            subject,
            format!(
                "the connection failed while checking PSYNC: {}",
                describe(&e, opts.timeout)
            ),
        )
    };
    // A renamed or disabled command is absent from COMMAND INFO (a nil entry).
    match c.cmd(&[b"COMMAND", b"INFO", b"PSYNC"]).await {
        Ok(Reply::Array(Some(items))) if items.first().is_some_and(Reply::is_null) => {
            return err("PSYNC is not available on this server (renamed or disabled with \
                        rename-command)"
                .into())
            .advice(
                "ferry replicates with PSYNC: give a server where PSYNC (and REPLCONF) keep their names",
            );
        }
        Ok(_) => {}
        Err(e) => return io_fail(e),
    }
    match c.cmd(&[b"REPLCONF", b"listening-port", b"0"]).await {
        Ok(Reply::Error(e)) => {
            let e = String::from_utf8_lossy(&e).into_owned();
            let upper = e.to_ascii_uppercase();
            if upper.starts_with("NOPERM") {
                return err(format!("user {user} may not run REPLCONF ({e})"))
                    .advice(acl_advice(user));
            }
            if upper.contains("UNKNOWN COMMAND") {
                return err(format!(
                    "REPLCONF is not available on this server ({e}): renamed or disabled"
                ))
                .advice("ferry's replica handshake needs REPLCONF and PSYNC under their names");
            }
            return Check::warn(
                "source.psync",
                subject,
                format!("{role}; REPLCONF answered an error: {e}"),
            )
            .advice(
                "the replica handshake sends REPLCONF listening-port and capa; check the server",
            );
        }
        Ok(_) => {}
        Err(e) => return io_fail(e),
    }
    let version = info.and_then(Info::redis_version);
    let acl_capable = version.is_some_and(|v| v >= (7, 0, 0));
    if !acl_capable {
        let pre_acl = version.is_some_and(|v| v < (6, 0, 0));
        return Check::ok(
            "source.psync",
            subject,
            if pre_acl {
                format!("{role}; PSYNC and REPLCONF available")
            } else {
                format!(
                    "{role}; REPLCONF allowed (PSYNC permission not verifiable before Redis 7.0)"
                )
            },
        );
    }
    match c
        .cmd(&[b"ACL", b"DRYRUN", user.as_bytes(), b"PSYNC", b"?", b"-1"])
        .await
    {
        Ok(r) if r.is_ok() => Check::ok(
            "source.psync",
            subject,
            format!("{role}; user {user} may run PSYNC and REPLCONF"),
        ),
        Ok(Reply::Error(e)) => Check::ok(
            "source.psync",
            subject,
            format!(
                "{role}; REPLCONF allowed (PSYNC permission not verifiable: ACL DRYRUN answered {})",
                String::from_utf8_lossy(&e)
            ),
        ),
        // ACL DRYRUN answers a denial as a bulk string naming the command.
        Ok(r) => {
            let why = r
                .as_bytes()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_else(|| "denied".into());
            err(format!("user {user} may not run PSYNC ({why})")).advice(acl_advice(user))
        }
        Err(e) => io_fail(e),
    }
}

/// `*1\r\n$4\r\nINFO\r\n`: what our second sample adds to the source's network input.
const OWN_INFO_BYTES: u64 = 14;

/// One sample of a source's write volume.
struct Sample {
    at: Instant,
    /// `master_repl_offset`, when the backlog is active (otherwise the offset does not move).
    offset: Option<u64>,
    /// `total_net_input_bytes`.
    net_in: Option<u64>,
}

async fn sample(c: &mut Client) -> Result<Sample, TargetError> {
    let r = c.cmd_ok(&[b"INFO"]).await?;
    let at = Instant::now();
    let info = Info::from_bytes(r.as_bytes().unwrap_or_default());
    let backlog_active = info.field("repl_backlog_active") == Some("1") || info.is_replica();
    Ok(Sample {
        at,
        offset: info.u64("master_repl_offset").filter(|_| backlog_active),
        net_in: info.u64("total_net_input_bytes"),
    })
}

/// The backlog size: `CONFIG GET` (may be renamed or forbidden), else `INFO replication`.
async fn backlog_size(c: &mut Client, info: &Info) -> Option<u64> {
    if let Ok(Reply::Array(Some(items))) = c.cmd(&[b"CONFIG", b"GET", b"repl-backlog-size"]).await {
        if let Some(v) = items
            .get(1)
            .and_then(|r| r.as_bytes())
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|s| s.trim().parse().ok())
        {
            return Some(v);
        }
    }
    info.u64("repl_backlog_size")
}

/// `repl-backlog-size` against the write rate seen over `opts.rate_sample`.
async fn check_backlog(c: &mut Client, subject: &str, info: &Info, opts: &CheckOptions) -> Check {
    let Some(size) = backlog_size(c, info).await else {
        return Check::warn(
            "source.backlog",
            subject,
            "repl-backlog-size unknown (CONFIG GET refused and INFO has no repl_backlog_size)",
        )
        .advice("make sure the backlog holds a few minutes of writes, or a link break forces a full resync");
    };
    let first = match sample(c).await {
        Ok(s) => s,
        Err(e) => return sample_failed(subject, size, e, opts),
    };
    tokio::time::sleep(opts.rate_sample).await;
    let second = match sample(c).await {
        Ok(s) => s,
        Err(e) => return sample_failed(subject, size, e, opts),
    };
    let secs = second.at.duration_since(first.at).as_secs_f64().max(1e-3);
    let (bytes, basis) = match (first.offset, second.offset, first.net_in, second.net_in) {
        (Some(a), Some(b), _, _) if b >= a => (b - a, "from the replication offset"),
        // Our own INFO between the samples (14 bytes) is not the source's traffic.
        (_, _, Some(a), Some(b)) if b >= a => (
            (b - a).saturating_sub(OWN_INFO_BYTES),
            "estimated from network input, reads included, as no replica is attached",
        ),
        _ => {
            return Check::ok(
                "source.backlog",
                subject,
                format!(
                    "repl-backlog-size {}; the write rate could not be measured",
                    fmt_bytes(size)
                ),
            )
        }
    };
    let rate = bytes as f64 / secs;
    let over = format!("over {}; {basis}", fmt_secs(secs));
    let v = judge_backlog(size, rate, opts.backlog_min_secs, opts.backlog_suggest_secs);
    match (v.level, v.covered_secs, v.suggested) {
        (Level::Warn, Some(covered), Some(suggested)) => Check::warn(
            "source.backlog",
            subject,
            format!(
                "repl-backlog-size {} holds only {} of writes at {} ({over})",
                fmt_bytes(size),
                fmt_secs(covered),
                fmt_rate(rate)
            ),
        )
        .advice(format!(
            "a link break longer than that forces a full resync of this source; raise it to hold {} of \
             writes at this rate: CONFIG SET repl-backlog-size {} (and in its config file)",
            fmt_secs(opts.backlog_suggest_secs as f64),
            fmt_config_size(suggested)
        )),
        (_, Some(covered), _) => Check::ok(
            "source.backlog",
            subject,
            format!(
                "repl-backlog-size {} holds {} of writes at {} ({over})",
                fmt_bytes(size),
                fmt_secs(covered),
                fmt_rate(rate)
            ),
        ),
        _ => Check::ok(
            "source.backlog",
            subject,
            format!(
                "repl-backlog-size {}; no writes seen over {} (check again at peak time)",
                fmt_bytes(size),
                fmt_secs(secs)
            ),
        ),
    }
}

fn sample_failed(subject: &str, size: u64, e: TargetError, opts: &CheckOptions) -> Check {
    Check::warn(
        "source.backlog",
        subject,
        format!(
            "repl-backlog-size {}; the write rate could not be measured: {}",
            fmt_bytes(size),
            describe(&e, opts.timeout)
        ),
    )
}

/// used_memory and keys per db (with the `--db` filter), and the memory the synced data takes: used_memory
/// minus the empty server's own (`used_memory_startup`, which the target already counts), scaled to the
/// share of keys in synced dbs.
fn check_data(subject: &str, info: &Info, opts: &CheckOptions) -> (Check, Option<u64>) {
    let used = info.u64("used_memory");
    let base = used.map(|u| u.saturating_sub(info.u64("used_memory_startup").unwrap_or(0)));
    let all = &info.db_keys();
    let total: u64 = all.iter().map(|(_, n)| n).sum();
    let synced: Vec<(u32, u64)> = all
        .iter()
        .copied()
        .filter(|(db, _)| opts.dbs.target(*db).is_some())
        .collect();
    let synced_keys: u64 = synced.iter().map(|(_, n)| n).sum();
    let data = base.map(|b| {
        if total == 0 {
            0
        } else if synced_keys == total {
            b
        } else {
            (u128::from(b) * u128::from(synced_keys) / u128::from(total)) as u64
        }
    });
    let list = |v: &[(u32, u64)]| {
        v.iter()
            .map(|(db, n)| format!("db{db} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut msg = match used {
        Some(u) => format!("used_memory {}", fmt_bytes(u)),
        None => "used_memory unknown".into(),
    };
    if total == 0 {
        msg.push_str("; no keys");
    } else {
        msg.push_str(&format!("; {total} keys ({})", list(all)));
        if synced_keys != total {
            let skipped: Vec<(u32, u64)> = all
                .iter()
                .copied()
                .filter(|(db, _)| opts.dbs.target(*db).is_none())
                .collect();
            msg.push_str(&format!(
                "; syncing {synced_keys} (not synced by --db: {})",
                list(&skipped)
            ));
        }
    }
    (Check::ok("source.data", subject, msg), data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rdb_magic() {
        assert_eq!(rdb_magic_version(b"REDIS0011"), Some(11));
        assert_eq!(rdb_magic_version(b"REDIS0009"), Some(9));
        assert_eq!(rdb_magic_version(b"VALKEY080"), Some(80));
        assert_eq!(rdb_magic_version(b"REDIS00x1"), None);
        assert_eq!(rdb_magic_version(b"HELLO0011"), None);
        assert_eq!(rdb_magic_version(b"REDIS"), None);
    }

    #[test]
    fn data_line_scales_memory_to_synced_dbs() {
        let info = Info::parse(
            "redis_version:7.0.15\r\nused_memory:11000000\r\nused_memory_startup:1000000\r\n\
             db0:keys=30,expires=0,avg_ttl=0\r\ndb2:keys=10,expires=0,avg_ttl=0\r\n",
        );
        let opts = CheckOptions::default();
        let (c, data) = check_data("source x", &info, &opts);
        assert_eq!(data, Some(10_000_000));
        assert!(
            c.message.contains("40 keys (db0 30, db2 10)"),
            "{}",
            c.message
        );
        let opts = CheckOptions {
            dbs: crate::apply::DbMap::parse(&["2".into()], &[]).unwrap(),
            ..CheckOptions::default()
        };
        let (c, data) = check_data("source x", &info, &opts);
        assert_eq!(data, Some(2_500_000));
        assert!(
            c.message
                .contains("syncing 10 (not synced by --db: db0 30)"),
            "{}",
            c.message
        );
        let empty = Info::parse("redis_version:7.0.15\r\nused_memory:900000\r\n");
        let (c, data) = check_data("source x", &empty, &CheckOptions::default());
        assert_eq!(data, Some(0));
        assert!(c.message.ends_with("no keys"), "{}", c.message);
    }
}
