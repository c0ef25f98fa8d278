//! Running a verify job: scanners stream keys (SCAN per server and db, optionally sampled) into a bounded
//! channel, workers compare batches ([`super::compare`]), differing keys are re-checked in later rounds,
//! and the counts become a [`Report`].

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::compare::{self, CompareOptions, Conns, Env, Verdict};
use super::error::{self, VerifyError};
use super::report::{Counts, DbCounts, DbKeyCount, Difference, Kind, Report, TargetReport};
use super::topology::{self, Endpoint, Group};
use crate::apply::sweep::OwnKeys;
use crate::apply::DbMap;
use crate::checkpoint::source_id;
use crate::job::{DEFAULT_CHECKPOINT_KEY_PREFIX, DEFAULT_HEARTBEAT_KEY, TMP_PREFIX};
use crate::resp::Reply;
use crate::target::client::{Client, Pipeline, Role};

/// What is compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every key: presence, type, value, TTL.
    Full,
    /// Presence and type only.
    Keys,
    /// Keys per db only.
    Count,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Keys => "keys",
            Mode::Count => "count",
        }
    }
}

/// Everything a verify run needs, after parsing.
#[derive(Clone, Debug)]
pub struct Settings {
    pub mode: Mode,
    /// Compare this fraction (0 < f ≤ 1) of the keys, chosen at random as they are scanned.
    pub sample: Option<f64>,
    /// Seed of the sample (a run with the same seed and data picks the same keys).
    pub seed: u64,
    /// `SCAN … COUNT`: keys asked for per SCAN call, and the batch size of comparisons.
    pub scan_count: usize,
    /// Concurrent comparison workers (each with its own connections).
    pub parallel: usize,
    /// Elements per page of a big collection.
    pub page: usize,
    /// Piece size of big strings; values up to this size are read whole.
    pub chunk_bytes: usize,
    pub ttl_tolerance_ms: u64,
    /// Re-checks of a differing key before it is reported.
    pub rounds: u32,
    /// Pause before each re-check round.
    pub round_pause: Duration,
    /// Keys per second, at most (both directions together).
    pub rate: Option<f64>,
    /// Use the DUMP fast path when both sides write the same RDB version.
    pub dump: bool,
    /// `--db` / `--map-db`: the source dbs compared and the target db each is compared with.
    pub dbmap: DbMap,
    /// ferry's heartbeat key (`--heartbeat-key`): ignored on both sides.
    pub heartbeat_key: Option<Bytes>,
    /// Prefix of ferry's in-target checkpoint keys (`--checkpoint-key-prefix`): ignored on both sides.
    pub checkpoint_key_prefix: Option<Bytes>,
    /// Differences listed in the report (all are counted).
    pub max_listed: usize,
    /// Differing keys held for re-checking; beyond this, differences are reported without re-check.
    pub max_recheck: usize,
    pub timeout: Duration,
    /// Draw a progress bar when stderr is a terminal.
    pub progress: bool,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            mode: Mode::Full,
            sample: None,
            seed: 0,
            scan_count: 1000,
            parallel: 4,
            page: 1000,
            chunk_bytes: 1 << 20,
            ttl_tolerance_ms: 2000,
            rounds: 3,
            round_pause: Duration::from_millis(1000),
            rate: None,
            dump: true,
            dbmap: DbMap::default(),
            heartbeat_key: Some(Bytes::from_static(DEFAULT_HEARTBEAT_KEY.as_bytes())),
            checkpoint_key_prefix: Some(Bytes::from_static(
                DEFAULT_CHECKPOINT_KEY_PREFIX.as_bytes(),
            )),
            max_listed: 100_000,
            max_recheck: 100_000,
            timeout: Duration::from_secs(10),
            progress: true,
        }
    }
}

impl Settings {
    /// ferry's own keys, never compared: the heartbeat key (and a cluster source master's own,
    /// `<heartbeat key>:{tag}`), keys with the checkpoint prefix, temporary keys (`ferry:tmp:`). A user key
    /// such as `ferry:other` is data.
    pub fn own_keys(&self) -> OwnKeys {
        let per_master = self.heartbeat_key.iter().map(|k| {
            let mut p = k.to_vec();
            p.extend_from_slice(b":{");
            Bytes::from(p)
        });
        OwnKeys {
            prefixes: std::iter::once(Bytes::from_static(TMP_PREFIX.as_bytes()))
                .chain(self.checkpoint_key_prefix.clone())
                .chain(per_master)
                .collect(),
            exact: self.heartbeat_key.iter().cloned().collect(),
        }
    }

    /// The names of ferry's own keys that `--mode count` looks for (it counts keys, it cannot scan them):
    /// the heartbeat key and the checkpoint key of every source server (`<prefix><source id>`, as `ferry
    /// sync` names them).
    fn own_key_names(&self, sources: &[Group]) -> Vec<Bytes> {
        let mut v: Vec<Bytes> = self.heartbeat_key.iter().cloned().collect();
        if let Some(prefix) = &self.checkpoint_key_prefix {
            for n in sources.iter().flat_map(|g| g.nodes.iter()) {
                let mut k = prefix.to_vec();
                k.extend_from_slice(source_id(&n.addr.to_string()).as_bytes());
                v.push(Bytes::from(k));
            }
        }
        v.sort();
        v.dedup();
        v
    }
}

/// A verify job: sources, targets (each compared with all sources), settings.
#[derive(Clone, Debug)]
pub struct VerifyConfig {
    pub sources: Vec<Endpoint>,
    pub targets: Vec<Endpoint>,
    pub settings: Settings,
}

/// Compare every target with the sources. `Err` when the comparison could not be made (a server
/// unreachable or failing, a bad config, interrupted); differences are in the `Ok` report.
pub async fn run(cfg: &VerifyConfig, cancel: CancellationToken) -> Result<Report, VerifyError> {
    let t0 = Instant::now();
    let s = &cfg.settings;
    let mut sources = Vec::with_capacity(cfg.sources.len());
    for ep in &cfg.sources {
        sources.push(topology::resolve(ep, Role::Source, s.timeout).await?);
    }
    let mut targets = Vec::with_capacity(cfg.targets.len());
    let mut keys_done = 0u64;
    for ep in &cfg.targets {
        let tg = topology::resolve(ep, Role::Target, s.timeout).await?;
        tracing::info!(target_endpoint = %ep, servers = tg.nodes.len(), sources = sources.len(),
            mode = s.mode.name(), "verifying");
        if s.mode == Mode::Count && tg.slots.is_some() {
            return Err(VerifyError::Config(format!(
                "target {ep}: --mode count cannot tell ferry's per-slot checkpoint keys from data on a cluster \
                 target; use --mode sample or --mode full"
            )));
        }
        let tr = if s.mode == Mode::Count {
            count_target(s, &sources, &tg, &cancel).await?
        } else {
            verify_target(s, &sources, tg, &cancel).await?
        };
        keys_done += tr.totals.checked + tr.totals.target_keys_checked;
        targets.push(tr);
    }
    let elapsed = t0.elapsed();
    let equal = targets.iter().all(|t| t.total_differences() == 0);
    Ok(Report {
        mode: s.mode.name().to_string(),
        sample_percent: s.sample.map(|f| f * 100.0),
        sources: cfg.sources.iter().map(|e| e.to_string()).collect(),
        targets,
        elapsed_ms: elapsed.as_millis() as u64,
        keys_per_sec: keys_done as f64 / elapsed.as_secs_f64().max(1e-3),
        equal,
    })
}

/// A batch of keys of one server and db.
struct Work {
    role: Role,
    node: usize,
    db: u32,
    keys: Vec<Bytes>,
}

struct Tally {
    per: BTreeMap<(Role, usize, u32), Counts>,
    diffs: Vec<Difference>,
    truncated: bool,
    by_kind: BTreeMap<Kind, u64>,
    suspects: Vec<(Role, usize, u32, Bytes)>,
    overflow_warned: bool,
}

struct Shared {
    env: Env,
    s: Settings,
    /// Keys never compared ([`Settings::own_keys`]).
    own: OwnKeys,
    tally: Mutex<Tally>,
    progress: ProgressBar,
    rate: Option<Rate>,
    cancel: CancellationToken,
    done: AtomicU64,
}

impl Shared {
    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Count the verdicts of a batch; differing keys become suspects for the next round, or (in the last
    /// round) differences.
    fn record(&self, w: &Work, verdicts: Vec<Verdict>, round: u32) {
        let mut guard = self.tally();
        let t = &mut *guard;
        for (key, v) in w.keys.iter().zip(verdicts) {
            let c = t.per.entry((w.role, w.node, w.db)).or_default();
            if round == 0 {
                match w.role {
                    Role::Source => c.checked += 1,
                    Role::Target => c.target_keys_checked += 1,
                }
            }
            match v {
                Verdict::Match => {
                    if w.role == Role::Source {
                        c.matched += 1;
                        if round > 0 {
                            c.matched_on_recheck += 1;
                        }
                    }
                }
                Verdict::Expired => c.skipped_expired += 1,
                Verdict::NotCompared => c.not_compared += 1,
                Verdict::Diff(kind, detail) => {
                    if round < self.s.rounds && t.suspects.len() < self.s.max_recheck {
                        t.suspects.push((w.role, w.node, w.db, key.clone()));
                        continue;
                    }
                    if round < self.s.rounds && !t.overflow_warned {
                        t.overflow_warned = true;
                        tracing::warn!(
                            max_recheck = self.s.max_recheck,
                            "more differing keys than --max-recheck: the rest are reported without a re-check"
                        );
                    }
                    if let Some(n) = c.kind_mut(kind) {
                        *n += 1;
                    }
                    *t.by_kind.entry(kind).or_default() += 1;
                    if t.diffs.len() >= self.s.max_listed {
                        t.truncated = true;
                        continue;
                    }
                    let (source, src_node, tn) = match w.role {
                        Role::Source => (
                            Some(self.env.src[w.node].shown.clone()),
                            Some(w.node),
                            self.env.target_of(key),
                        ),
                        Role::Target => (None, None, w.node),
                    };
                    let mut d = Difference::new(
                        kind,
                        w.db,
                        key,
                        source,
                        self.env.tgt.nodes[tn].shown.clone(),
                        detail,
                    );
                    d.src_node = src_node;
                    d.tgt_node = tn;
                    if w.role == Role::Source {
                        d.target_db = self.env.target_db(w.db).filter(|&t| t != w.db);
                    }
                    t.diffs.push(d);
                }
            }
        }
    }
}

/// A shared keys-per-second budget.
struct Rate {
    per_sec: f64,
    next: Mutex<Instant>,
}

impl Rate {
    async fn acquire(&self, n: usize, cancel: &CancellationToken) -> Result<(), VerifyError> {
        let at = {
            let mut g = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let start = (*g).max(Instant::now());
            *g = start + Duration::from_secs_f64(n as f64 / self.per_sec.max(1e-3));
            start
        };
        if at > Instant::now() {
            tokio::select! {
                _ = tokio::time::sleep_until(at.into()) => {}
                _ = cancel.cancelled() => return Err(VerifyError::Cancelled),
            }
        }
        Ok(())
    }
}

/// A small deterministic generator for sampling (splitmix64).
struct SplitMix(u64);
impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

fn progress_bar(enabled: bool, total: u64) -> ProgressBar {
    if !enabled || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "verify [{elapsed_precise}] {wide_bar} {pos}/{len} keys ({per_sec}, eta {eta}) {msg}",
    ) {
        pb.set_style(style);
    }
    pb
}

async fn verify_target(
    s: &Settings,
    sources: &[Group],
    tg: Group,
    cancel: &CancellationToken,
) -> Result<TargetReport, VerifyError> {
    let opt = CompareOptions {
        keys_only: s.mode == Mode::Keys,
        page: s.page.max(1),
        chunk_bytes: s.chunk_bytes.max(1),
        ttl_tolerance_ms: s.ttl_tolerance_ms as i64,
        dump: s.dump,
        timeout: s.timeout,
    };
    let target_shown = tg.shown.clone();
    let env = Env::new(opt, s.dbmap.clone(), sources, tg);
    let total: u64 = env
        .src
        .iter()
        .chain(env.tgt.nodes.iter())
        .flat_map(|n| n.keyspace.iter().map(|(_, k)| *k))
        .sum();
    let sh = Arc::new(Shared {
        s: s.clone(),
        own: s.own_keys(),
        tally: Mutex::new(Tally {
            per: BTreeMap::new(),
            diffs: Vec::new(),
            truncated: false,
            by_kind: BTreeMap::new(),
            suspects: Vec::new(),
            overflow_warned: false,
        }),
        progress: progress_bar(s.progress, total),
        rate: s.rate.filter(|r| *r > 0.0).map(|r| Rate {
            per_sec: r,
            next: Mutex::new(Instant::now()),
        }),
        cancel: cancel.child_token(),
        done: AtomicU64::new(0),
        env,
    });

    // The first pass: every source server forward, every target server in reverse.
    let (tx, rx) = mpsc::channel::<Work>(s.parallel.max(1) * 2);
    let mut feeders = Vec::new();
    for node in 0..sh.env.src.len() {
        feeders.push((Role::Source, node));
    }
    for node in 0..sh.env.tgt.nodes.len() {
        feeders.push((Role::Target, node));
    }
    let mut set = JoinSet::new();
    for (role, node) in feeders {
        let (sh, tx) = (sh.clone(), tx.clone());
        set.spawn(async move { scan(sh, role, node, tx).await });
    }
    drop(tx);
    run_pool(&sh, 0, rx, set).await?;
    sh.progress.finish_and_clear();

    // Re-check rounds.
    for round in 1..=s.rounds {
        let suspects = std::mem::take(&mut sh.tally().suspects);
        if suspects.is_empty() {
            break;
        }
        tracing::info!(
            keys = suspects.len(),
            round,
            rounds = s.rounds,
            pause_ms = s.round_pause.as_millis() as u64,
            "re-checking keys that differed (live data may have been in flight)"
        );
        tokio::select! {
            _ = tokio::time::sleep(s.round_pause) => {}
            _ = sh.cancel.cancelled() => return Err(VerifyError::Cancelled),
        }
        let mut groups: BTreeMap<(Role, usize, u32), Vec<Bytes>> = BTreeMap::new();
        for (role, node, db, key) in suspects {
            groups.entry((role, node, db)).or_default().push(key);
        }
        let (tx, rx) = mpsc::channel::<Work>(s.parallel.max(1) * 2);
        let batch = s.scan_count.max(1);
        let mut set = JoinSet::new();
        let csh = sh.clone();
        set.spawn(async move {
            for ((role, node, db), keys) in groups {
                for chunk in keys.chunks(batch) {
                    let w = Work {
                        role,
                        node,
                        db,
                        keys: chunk.to_vec(),
                    };
                    tokio::select! {
                        r = tx.send(w) => if r.is_err() { return Ok(()) },
                        _ = csh.cancel.cancelled() => return Err(VerifyError::Cancelled),
                    }
                }
            }
            Ok(())
        });
        run_pool(&sh, round, rx, set).await?;
    }

    let mut t = std::mem::replace(
        &mut *sh.tally(),
        Tally {
            per: BTreeMap::new(),
            diffs: Vec::new(),
            truncated: false,
            by_kind: BTreeMap::new(),
            suspects: Vec::new(),
            overflow_warned: false,
        },
    );
    pair_other_db(&mut t, &sh.env.dbmap);
    // A stable order (workers finish in any order): by kind, db, key.
    t.diffs
        .sort_by(|a, b| (a.kind, a.db, &a.raw_key).cmp(&(b.kind, b.db, &b.raw_key)));
    let mut totals = Counts::default();
    let per_db = t
        .per
        .iter()
        .map(|(&(role, node, db), c)| {
            totals.add(c);
            DbCounts {
                role,
                server: sh.env.node(role, node).shown.clone(),
                db,
                counts: c.clone(),
            }
        })
        .collect();
    t.by_kind.retain(|_, n| *n > 0);
    Ok(TargetReport {
        target: target_shown,
        totals,
        per_db,
        key_counts: Vec::new(),
        differences_by_kind: t.by_kind,
        differences: t.diffs,
        differences_truncated: t.truncated,
        peak_reply_bytes: sh.env.peak_reply_bytes.load(Ordering::Relaxed),
    })
}

/// A key missing in one db and extra in another is one difference: "in another db".
fn pair_other_db(t: &mut Tally, dbmap: &DbMap) {
    let mut missing: HashMap<Bytes, Vec<usize>> = HashMap::new();
    for (i, d) in t.diffs.iter().enumerate() {
        if d.kind == Kind::Missing {
            missing.entry(d.raw_key.clone()).or_default().push(i);
        }
    }
    if missing.is_empty() {
        return;
    }
    let mut remove = Vec::new();
    for j in 0..t.diffs.len() {
        if t.diffs[j].kind != Kind::Extra {
            continue;
        }
        let Some(list) = missing.get_mut(&t.diffs[j].raw_key) else {
            continue;
        };
        let extra_db = t.diffs[j].db;
        let Some(pos) = list
            .iter()
            .position(|&i| dbmap.target(t.diffs[i].db) != Some(extra_db))
        else {
            continue;
        };
        let i = list.swap_remove(pos);
        let tgt_node = t.diffs[j].tgt_node;
        let (src_db, src_node) = (t.diffs[i].db, t.diffs[i].src_node.unwrap_or(0));
        let target = t.diffs[j].target.clone();
        let d = &mut t.diffs[i];
        d.kind = Kind::OtherDb;
        d.target_db = Some(extra_db);
        d.target = target;
        d.detail = format!("in db{src_db} on the source, in db{extra_db} on the target");
        if let Some(c) = t.per.get_mut(&(Role::Source, src_node, src_db)) {
            c.missing = c.missing.saturating_sub(1);
            c.other_db += 1;
        }
        if let Some(c) = t.per.get_mut(&(Role::Target, tgt_node, extra_db)) {
            c.extra = c.extra.saturating_sub(1);
        }
        for (k, delta) in [
            (Kind::Missing, -1i64),
            (Kind::Extra, -1),
            (Kind::OtherDb, 1),
        ] {
            let e = t.by_kind.entry(k).or_default();
            *e = (*e as i64 + delta).max(0) as u64;
        }
        remove.push(j);
    }
    remove.sort_unstable();
    for j in remove.into_iter().rev() {
        t.diffs.remove(j);
    }
}

/// Run workers over the batches fed into `rx` by the tasks in `set` until all are done; the first failure
/// stops everything.
async fn run_pool(
    sh: &Arc<Shared>,
    round: u32,
    rx: mpsc::Receiver<Work>,
    mut set: JoinSet<Result<(), VerifyError>>,
) -> Result<(), VerifyError> {
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    for _ in 0..sh.s.parallel.max(1) {
        let (sh, rx) = (sh.clone(), rx.clone());
        set.spawn(async move {
            let mut conns = Conns::new(&sh.env);
            loop {
                let w = {
                    let mut g = rx.lock().await;
                    tokio::select! {
                        w = g.recv() => w,
                        _ = sh.cancel.cancelled() => return Err(VerifyError::Cancelled),
                    }
                };
                let Some(w) = w else {
                    return Ok(());
                };
                if let Some(rate) = &sh.rate {
                    rate.acquire(w.keys.len(), &sh.cancel).await?;
                }
                let fut = async {
                    match w.role {
                        Role::Source => {
                            compare::forward(&sh.env, &mut conns, w.node, w.db, &w.keys).await
                        }
                        Role::Target => {
                            compare::reverse(&sh.env, &mut conns, w.node, w.db, &w.keys).await
                        }
                    }
                };
                let verdicts = tokio::select! {
                    v = fut => v?,
                    _ = sh.cancel.cancelled() => return Err(VerifyError::Cancelled),
                };
                sh.record(&w, verdicts, round);
                if round == 0 {
                    sh.done.fetch_add(w.keys.len() as u64, Ordering::Relaxed);
                }
            }
        });
    }
    drop(rx);
    let mut first: Option<VerifyError> = None;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.tick().await;
    loop {
        tokio::select! {
            r = set.join_next() => {
                let Some(r) = r else { break };
                let err = match r {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e),
                    Err(e) => Some(VerifyError::Config(format!("internal error: a verify task failed: {e}"))),
                };
                if let Some(e) = err {
                    if first.is_none() && !matches!(e, VerifyError::Cancelled) {
                        first = Some(e);
                    }
                    sh.cancel.cancel();
                }
            }
            _ = tick.tick() => {
                let done = sh.done.load(Ordering::Relaxed);
                let t = sh.tally();
                let diffs: u64 = t.by_kind.values().sum();
                tracing::info!(
                    keys = done,
                    keys_per_sec = (done as f64 / started.elapsed().as_secs_f64().max(1e-3)) as u64,
                    differing_so_far = t.suspects.len() as u64 + diffs,
                    round,
                    "verify progress"
                );
            }
        }
    }
    if let Some(e) = first {
        return Err(e);
    }
    if sh.cancel.is_cancelled() {
        return Err(VerifyError::Cancelled);
    }
    Ok(())
}

/// SCAN every db of one server that holds keys, batch by batch into `tx` (sampled, ferry's own key left
/// out).
async fn scan(
    sh: Arc<Shared>,
    role: Role,
    node: usize,
    tx: mpsc::Sender<Work>,
) -> Result<(), VerifyError> {
    let n = sh.env.node(role, node).clone();
    let mut conn = Client::connect_as(&n.addr, role, sh.s.timeout)
        .await
        .map_err(error::on(role))?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (role, node).hash(&mut h);
    let mut rng = SplitMix(sh.s.seed ^ h.finish());
    let count = sh.s.scan_count.max(1).to_string();
    for &(db, keys) in &n.keyspace {
        let compared = match role {
            Role::Source => sh.env.target_db(db).is_some(),
            Role::Target => !sh.env.source_dbs(db).is_empty(),
        };
        if !compared {
            tracing::debug!(%role, server = %n.shown, db, keys, "db left out by --db/--map-db");
            sh.progress.inc(keys);
            continue;
        }
        tracing::debug!(%role, server = %n.shown, db, keys, "scanning");
        conn.use_db(db);
        let mut cursor = Bytes::from_static(b"0");
        loop {
            if sh.cancel.is_cancelled() {
                return Err(VerifyError::Cancelled);
            }
            let r = conn
                .read_ok(&[b"SCAN", &cursor, b"COUNT", count.as_bytes()])
                .await
                .map_err(error::on(role))?;
            let (next, keys) = compare::scan_reply(&r);
            let scanned = keys.len() as u64;
            let keys: Vec<Bytes> = keys
                .into_iter()
                .filter(|k| !sh.own.contains(k))
                .filter(|_| match sh.s.sample {
                    Some(p) => rng.chance(p),
                    None => true,
                })
                .collect();
            sh.progress.inc(scanned);
            if !keys.is_empty() {
                let w = Work {
                    role,
                    node,
                    db,
                    keys,
                };
                tokio::select! {
                    r = tx.send(w) => if r.is_err() { return Ok(()) },
                    _ = sh.cancel.cancelled() => return Err(VerifyError::Cancelled),
                }
            }
            cursor = next;
            if cursor.as_ref() == b"0" {
                break;
            }
        }
    }
    Ok(())
}

/// Keys in `db` (DBSIZE), ferry's own keys named in `own` not counted.
async fn keys_in(c: &mut Client, db: u32, own: &[Bytes]) -> Result<u64, VerifyError> {
    let role = c.role();
    c.use_db(db);
    let mut p = Pipeline::reads();
    p.push(&[b"DBSIZE"]);
    if !own.is_empty() {
        // EXISTS k1 k2 … counts the keys that exist.
        let mut args: Vec<&[u8]> = vec![b"EXISTS"];
        args.extend(own.iter().map(|k| k.as_ref()));
        p.push(&args);
    }
    let r = c.run(&p).await.map_err(error::on(role))?;
    if let Some(Reply::Error(e)) = r.iter().find(|x| x.is_error()) {
        return Err(VerifyError::from_client(
            role,
            c.command_error(b"DBSIZE", e),
        ));
    }
    let n = r.first().and_then(|x| x.as_int()).unwrap_or(0)
        - r.get(1).and_then(|x| x.as_int()).unwrap_or(0);
    Ok(n.max(0) as u64)
}

/// `--mode count`: keys per db (DBSIZE, minus ferry's own keys found by name: the heartbeat key and the
/// sources' checkpoint keys), sources summed against the target, re-counted in later rounds while they
/// differ.
async fn count_target(
    s: &Settings,
    sources: &[Group],
    tg: &Group,
    cancel: &CancellationToken,
) -> Result<TargetReport, VerifyError> {
    // Target dbs compared: where kept source dbs with keys go, and target dbs with keys that some source
    // db maps to.
    let mut dbs: Vec<u32> = sources
        .iter()
        .flat_map(|g| g.nodes.iter())
        .flat_map(|n| n.keyspace.iter().filter_map(|(d, _)| s.dbmap.target(*d)))
        .chain(
            tg.nodes
                .iter()
                .flat_map(|n| n.keyspace.iter().map(|(d, _)| *d))
                .filter(|d| !compare::source_dbs(&s.dbmap, *d).is_empty()),
        )
        .collect();
    dbs.sort_unstable();
    dbs.dedup();
    let mut conns = Vec::new();
    for (role, n) in sources
        .iter()
        .flat_map(|g| g.nodes.iter().map(|n| (Role::Source, n)))
        .chain(tg.nodes.iter().map(|n| (Role::Target, n)))
    {
        conns.push((
            role,
            Client::connect_as(&n.addr, role, s.timeout)
                .await
                .map_err(error::on(role))?,
        ));
    }
    let own_names = s.own_key_names(sources);
    let mut counts = Vec::new();
    for round in 0..=s.rounds {
        counts.clear();
        for &db in &dbs {
            let src_dbs = compare::source_dbs(&s.dbmap, db);
            let (mut src, mut tgt) = (0u64, 0u64);
            for (role, c) in conns.iter_mut() {
                let own = [db];
                let dbs_here: &[u32] = match role {
                    Role::Source => &src_dbs,
                    Role::Target => &own,
                };
                for &d in dbs_here {
                    let n = keys_in(c, d, &own_names).await?;
                    match role {
                        Role::Source => src += n,
                        Role::Target => tgt += n,
                    }
                }
            }
            counts.push(DbKeyCount {
                db,
                source_dbs: src_dbs,
                source_keys: src,
                target_keys: tgt,
            });
        }
        if counts.iter().all(|c| c.source_keys == c.target_keys) || round == s.rounds {
            break;
        }
        tracing::info!(
            round = round + 1,
            rounds = s.rounds,
            "key counts differ; counting again"
        );
        tokio::select! {
            _ = tokio::time::sleep(s.round_pause) => {}
            _ = cancel.cancelled() => return Err(VerifyError::Cancelled),
        }
    }
    let differences: Vec<Difference> = counts
        .iter()
        .filter(|c| c.source_keys != c.target_keys)
        .map(|c| {
            Difference::new(
                Kind::Count,
                c.db,
                &Bytes::new(),
                None,
                tg.shown.clone(),
                format!(
                    "{} keys on the source(s), {} on the target",
                    c.source_keys, c.target_keys
                ),
            )
        })
        .collect();
    let mut by_kind = BTreeMap::new();
    if !differences.is_empty() {
        by_kind.insert(Kind::Count, differences.len() as u64);
    }
    Ok(TargetReport {
        target: tg.shown.clone(),
        totals: Counts::default(),
        per_db: Vec::new(),
        key_counts: counts,
        differences_by_kind: by_kind,
        differences,
        differences_truncated: false,
        peak_reply_bytes: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_keys_are_exactly_ferrys() {
        let own = Settings::default().own_keys();
        for k in [
            &b"ferry:heartbeat"[..],
            b"ferry:heartbeat:{06S}",
            b"ferry:checkpoint:127.0.0.1_6379",
            b"ferry:tmp:127.0.0.1_6379:7",
        ] {
            assert!(own.contains(k), "{}", String::from_utf8_lossy(k));
        }
        for k in [&b"ferry:other"[..], b"ferry:heartbeat:x", b"ferry:", b"x"] {
            assert!(!own.contains(k), "{}", String::from_utf8_lossy(k));
        }
        // As given on the command line: another prefix, no heartbeat key.
        let s = Settings {
            checkpoint_key_prefix: Some(Bytes::from_static(b"cp:")),
            heartbeat_key: None,
            ..Settings::default()
        };
        let own = s.own_keys();
        assert!(own.contains(b"cp:127.0.0.1_6379") && own.contains(b"ferry:tmp:a:1"));
        assert!(
            !own.contains(b"ferry:checkpoint:127.0.0.1_6379") && !own.contains(b"ferry:heartbeat")
        );
        // --mode count looks them up by name: one checkpoint key per source server.
        let node = |url: &str| topology::Node {
            addr: url.parse().unwrap(),
            shown: url.into(),
            caps: topology::Caps::from_info(&crate::target::ServerInfo::parse(
                "redis_version:7.0.0",
            )),
            keyspace: Vec::new(),
        };
        let group = Group {
            shown: "pool".into(),
            nodes: vec![
                node("redis://127.0.0.1:7001"),
                node("redis://u:pw@127.0.0.1:7002"),
            ],
            router: None,
            slots: None,
        };
        let names: Vec<Bytes> = Settings::default().own_key_names(std::slice::from_ref(&group));
        assert_eq!(
            names,
            [
                &b"ferry:checkpoint:127.0.0.1_7001"[..],
                b"ferry:checkpoint:127.0.0.1_7002",
                b"ferry:heartbeat"
            ]
        );
        assert_eq!(s.own_key_names(&[group]).len(), 2);
    }

    #[test]
    fn sampling_rate_is_close() {
        let mut r = SplitMix(42);
        let n = (0..100_000).filter(|_| r.chance(0.1)).count();
        assert!((9_000..11_000).contains(&n), "{n}");
        let mut r = SplitMix(1);
        assert_eq!((0..1000).filter(|_| r.chance(1.0)).count(), 1000);
    }
}
