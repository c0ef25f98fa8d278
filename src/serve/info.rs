//! `INFO` and `ROLE` of `ferry serve`: the fields tooling reads from a replica, from the running job's
//! status.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use super::conn::R;
use super::{lock, Replica};
use crate::status::{SourceState, StatusSnapshot};

/// What the replica side looks like now.
struct View {
    host: String,
    port: u16,
    snap: StatusSnapshot,
    last_io_s: u64,
    down_s: Option<u64>,
    last_error: Option<String>,
}

async fn view(replica: &Replica) -> Option<View> {
    let up = lock(&replica.upstream);
    let u = up.as_ref()?;
    let snap = lock(&u.status).snapshot();
    let last_io_s = lock(&u.last_io).1.elapsed().as_secs();
    let down_s = lock(&u.down_since).map(|t| t.elapsed().as_secs());
    let last_error = lock(&u.last_error).clone();
    Some(View {
        host: u.host.clone(),
        port: u.port,
        snap,
        last_io_s,
        down_s,
        last_error,
    })
}

impl View {
    fn state(&self) -> SourceState {
        match self.snap.sources.first().map(|s| s.state.as_str()) {
            Some("full_sync") => SourceState::FullSync,
            Some("streaming") => SourceState::Streaming,
            Some("link_down") => SourceState::LinkDown,
            Some("done") => SourceState::Done,
            Some("failed") => SourceState::Failed,
            _ => SourceState::Connecting,
        }
    }

    fn received(&self) -> i64 {
        self.snap
            .sources
            .first()
            .map_or(0, |s| s.received_offset.max(0))
    }

    /// What the target applied (0 while unknown, as a replica that has nothing yet).
    fn applied(&self) -> i64 {
        self.snap
            .sources
            .first()
            .map_or(0, |s| s.applied_offset.max(0))
    }
}

/// `INFO [section …]`: `server`, `clients`, `replication`, `ferry`, `keyspace`; `all`, `everything` and
/// `default` (or none) give them all.
pub async fn info(replica: &Replica, sections: &[Vec<u8>]) -> String {
    let want: Vec<String> = sections
        .iter()
        .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase())
        .collect();
    let all = want.is_empty()
        || want
            .iter()
            .any(|w| matches!(w.as_str(), "all" | "everything" | "default"));
    let has = |name: &str| all || want.iter().any(|w| w == name);
    let v = view(replica).await;
    let mut out = String::new();
    if has("server") {
        let _ = write!(
            out,
            "# Server\r\nredis_version:7.0.0\r\nferry_version:{}\r\nredis_mode:standalone\r\nos:{}\r\n\
             process_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            std::process::id(),
            replica.cfg.listen.port(),
            replica.started.elapsed().as_secs()
        );
    }
    if has("clients") {
        let _ = write!(
            out,
            "# Clients\r\nconnected_clients:{}\r\n\r\n",
            replica.clients.load(Ordering::Relaxed)
        );
    }
    if has("replication") {
        out.push_str(&replication(v.as_ref()));
    }
    if has("ferry") {
        out.push_str(&ferry(replica, v.as_ref()));
    }
    if has("keyspace") {
        out.push_str("# Keyspace\r\n\r\n");
    }
    out
}

fn replication(v: Option<&View>) -> String {
    let Some(v) = v else {
        return "# Replication\r\nrole:master\r\nconnected_slaves:0\r\nmaster_failover_state:no-failover\r\n\
                master_replid:0000000000000000000000000000000000000000\r\n\
                master_replid2:0000000000000000000000000000000000000000\r\nmaster_repl_offset:0\r\n\
                second_repl_offset:-1\r\nrepl_backlog_active:0\r\n\r\n"
            .to_string();
    };
    let state = v.state();
    let up = state == SourceState::Streaming;
    let syncing = state == SourceState::FullSync;
    let mut o = String::new();
    let _ = write!(
        o,
        "# Replication\r\nrole:slave\r\nmaster_host:{}\r\nmaster_port:{}\r\nmaster_link_status:{}\r\n\
         master_last_io_seconds_ago:{}\r\nmaster_sync_in_progress:{}\r\nslave_read_repl_offset:{}\r\n\
         slave_repl_offset:{}\r\n",
        v.host,
        v.port,
        if up { "up" } else { "down" },
        if up || syncing { v.last_io_s as i64 } else { -1 },
        u8::from(syncing),
        v.received(),
        v.applied()
    );
    if syncing {
        let rdb = &v.snap.sources[0].rdb;
        let total = rdb.bytes_total;
        let _ = write!(
            o,
            "master_sync_total_bytes:{total}\r\nmaster_sync_read_bytes:{}\r\nmaster_sync_left_bytes:{}\r\n\
             master_sync_perc:{:.2}\r\nmaster_sync_last_io_seconds_ago:{}\r\n",
            rdb.bytes_received,
            if total >= 0 { total - rdb.bytes_received as i64 } else { -1 },
            if total > 0 { rdb.bytes_received as f64 * 100.0 / total as f64 } else { 0.0 },
            v.last_io_s
        );
    }
    if let (false, Some(s)) = (up, v.down_s) {
        let _ = write!(o, "master_link_down_since_seconds:{s}\r\n");
    }
    let replid = v
        .snap
        .sources
        .first()
        .and_then(|s| s.replid.clone())
        .unwrap_or_else(|| "0".repeat(40));
    let _ = write!(
        o,
        "slave_priority:100\r\nslave_read_only:1\r\nreplica_announced:1\r\nconnected_slaves:0\r\n\
         master_failover_state:no-failover\r\nmaster_replid:{replid}\r\n\
         master_replid2:0000000000000000000000000000000000000000\r\nmaster_repl_offset:{}\r\n\
         second_repl_offset:-1\r\nrepl_backlog_active:0\r\n\r\n",
        v.applied()
    );
    o
}

fn ferry(replica: &Replica, v: Option<&View>) -> String {
    let mut o = String::new();
    let _ = write!(o, "# Ferry\r\nferry_target:{}\r\n", replica.target_shown());
    let Some(v) = v else {
        o.push_str("ferry_state:idle\r\n\r\n");
        return o;
    };
    let src = v.snap.sources.first();
    let state = src.map_or("connecting", |s| s.state.as_str());
    let rejected: u64 = v.snap.targets.iter().map(|t| t.writes_rejected).sum();
    let keys = v.snap.apply.as_ref().map_or(0, |a| a.keys_applied);
    let _ = write!(
        o,
        "ferry_state:{state}\r\nferry_phase:{}\r\nferry_lag_bytes:{}\r\nferry_lag_ms:{}\r\n\
         ferry_keys_applied:{keys}\r\nferry_writes_rejected:{rejected}\r\nferry_full_syncs:{}\r\n\
         ferry_partial_syncs:{}\r\n",
        v.snap.job.phase,
        src.map_or(-1, |s| s.lag_bytes),
        src.map_or(-1, |s| s.lag_ms),
        src.map_or(0, |s| s.full_syncs),
        src.map_or(0, |s| s.partial_syncs),
    );
    let error = src
        .and_then(|s| s.last_error.clone())
        .or_else(|| v.last_error.clone());
    if let Some(e) = error {
        let _ = write!(o, "ferry_last_error:{}\r\n", e.replace(['\r', '\n'], " "));
    }
    o.push_str("\r\n");
    o
}

/// `ROLE`: `slave host port state offset` while a `REPLICAOF` is in force (state `connect`,
/// `connecting`, `sync` or `connected`, as Redis says), `master 0 []` otherwise.
pub async fn role(replica: &Replica) -> R {
    let Some(v) = view(replica).await else {
        return R::Array(vec![R::bulk("master"), R::Int(0), R::Array(Vec::new())]);
    };
    let state = match v.state() {
        SourceState::Streaming => "connected",
        SourceState::FullSync => "sync",
        SourceState::Connecting => "connecting",
        _ => "connect",
    };
    R::Array(vec![
        R::bulk("slave"),
        R::bulk(v.host.clone()),
        R::Int(i64::from(v.port)),
        R::bulk(state),
        R::Int(v.applied()),
    ])
}
