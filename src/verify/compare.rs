//! Comparing one batch of keys: a source node's keys against the target (forward), or a target node's keys
//! against the sources (reverse).
//!
//! Forward, per batch, in pipelined rounds where both sides are read at once:
//! 1. `TYPE` and the expiry (`PEXPIRETIME` when every server has it, else `PTTL` turned into an absolute
//!    time with the local clock) — decides missing, type and TTL differences and keys that expired;
//! 2. the size (`STRLEN`, `LLEN`, `SCARD`, `ZCARD`, `HLEN`, `XLEN`; `MEMORY USAGE` for collections) — a size
//!    difference is a value difference without reading values;
//! 3. small values (a string up to `chunk_bytes`, a collection of up to `page` elements and `chunk_bytes`
//!    of memory): `DUMP` on both sides when both write the same RDB version, equal payloads are equal values;
//!    otherwise (or when the payloads differ only in encoding) the whole value is read type-aware:
//!    `GET`, `LRANGE`, `SMEMBERS`, `ZRANGE … WITHSCORES`, `HGETALL`, `XRANGE` + `XINFO`;
//! 4. big values, one at a time in pieces, never loaded whole: `GETRANGE` pieces, `LRANGE`/`ZRANGE` pages
//!    (both sides in the same order), `SSCAN`/`HSCAN` pages on the source probed on the target with
//!    `SMISMEMBER`/`HMGET` (the sizes are already known equal, so nothing extra can hide on the target),
//!    `XRANGE` pages for streams.
//!
//! Hash field expiries are compared (`HPEXPIRETIME`) when both servers have them. Values never leave this
//! module: a difference is described by sizes, positions, type names and expiry times only.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::error::{self, VerifyError};
use super::report::Kind;
use super::topology::{Group, Node};
use crate::apply::DbMap;
use crate::resp::Reply;
use crate::target::client::{Client, Pipeline, Role};
use crate::twemproxy::Router;

/// Memory budget of one round of whole-value reads, per worker and side.
const ROUND_BUDGET_BYTES: u64 = 8 << 20;

/// How long a target that looks merely behind the source (a running sync applies each change a few
/// milliseconds after the source) is re-read before its difference counts, and how often.
const CATCH_UP: Duration = Duration::from_millis(200);
const CATCH_UP_STEP: Duration = Duration::from_millis(10);

/// The settings the comparison itself needs.
#[derive(Clone, Debug)]
pub struct CompareOptions {
    /// Presence and type only (`--mode keys`).
    pub keys_only: bool,
    /// Elements per page of a big collection; collections up to this many elements may be read whole.
    pub page: usize,
    /// Strings are compared in pieces of this size; values up to this size may be read whole.
    pub chunk_bytes: usize,
    /// Expiries closer than this are equal.
    pub ttl_tolerance_ms: i64,
    /// Compare `DUMP` payloads first when both sides write the same RDB version.
    pub dump: bool,
    pub timeout: Duration,
}

/// A group of source nodes and how keys are placed over them.
#[derive(Clone, Debug)]
pub struct SourceGroup {
    pub router: Option<Router>,
    /// A Redis Cluster source: the master that owns each slot.
    pub slots: Option<std::sync::Arc<crate::cluster::SlotMap>>,
    /// Indexes into [`Env::src`].
    pub nodes: Vec<usize>,
}

/// Everything shared by the workers comparing with one target.
pub struct Env {
    pub opt: CompareOptions,
    /// `--db` / `--map-db`: which source dbs are compared, and with which target db.
    pub dbmap: DbMap,
    /// Every source node, all groups flattened.
    pub src: Vec<Node>,
    pub groups: Vec<SourceGroup>,
    pub tgt: Group,
    /// Every server has `PEXPIRETIME`: expiries are compared as the servers' own absolute times.
    pub abs_ttl: bool,
    dump_ok: AtomicBool,
    memory_usage_ok: AtomicBool,
    /// The most reply bytes one comparison round trip made a worker hold (per server).
    pub peak_reply_bytes: AtomicU64,
}

impl Env {
    pub fn new(opt: CompareOptions, dbmap: DbMap, sources: &[Group], tgt: Group) -> Env {
        let mut src = Vec::new();
        let mut groups = Vec::new();
        for g in sources {
            let start = src.len();
            src.extend(g.nodes.iter().cloned());
            groups.push(SourceGroup {
                router: if g.nodes.len() > 1 {
                    g.router.clone()
                } else {
                    None
                },
                slots: g.slots.clone(),
                nodes: (start..src.len()).collect(),
            });
        }
        let abs_ttl = src
            .iter()
            .chain(tgt.nodes.iter())
            .all(|n| n.caps.pexpiretime);
        let dump = opt.dump;
        Env {
            opt,
            dbmap,
            src,
            groups,
            tgt,
            abs_ttl,
            dump_ok: AtomicBool::new(dump),
            memory_usage_ok: AtomicBool::new(true),
            peak_reply_bytes: AtomicU64::new(0),
        }
    }

    /// The source nodes that may hold `key`: the routed master of each twemproxy pool, every other master.
    pub fn candidates(&self, key: &[u8]) -> Vec<usize> {
        let mut v = Vec::new();
        for g in &self.groups {
            if let Some(map) = &g.slots {
                if let Some(&n) = map
                    .owner(crate::cluster::key_slot(key))
                    .and_then(|o| g.nodes.get(o))
                {
                    v.push(n);
                }
                continue;
            }
            match &g.router {
                Some(r) => {
                    if let Some(&n) = g.nodes.get(r.server_for(key)) {
                        v.push(n);
                    }
                }
                None => v.extend(g.nodes.iter().copied()),
            }
        }
        v
    }

    /// The target db source db `db` is compared with; `None` when `--db` leaves it out.
    pub fn target_db(&self, db: u32) -> Option<u32> {
        self.dbmap.target(db)
    }

    /// The source dbs compared with target db `db`.
    pub fn source_dbs(&self, db: u32) -> Vec<u32> {
        source_dbs(&self.dbmap, db)
    }

    /// The target node that holds (or should hold) `key`.
    pub fn target_of(&self, key: &[u8]) -> usize {
        self.tgt
            .owner(key)
            .filter(|&i| i < self.tgt.nodes.len())
            .unwrap_or(0)
    }

    pub fn node(&self, role: Role, i: usize) -> &Node {
        match role {
            Role::Source => &self.src[i],
            Role::Target => &self.tgt.nodes[i],
        }
    }

    fn fast_path(&self, s: usize, t: usize) -> bool {
        let (a, b) = (self.src[s].caps.rdb, self.tgt.nodes[t].caps.rdb);
        self.dump_ok.load(Ordering::Relaxed) && a == b && a > 0
    }

    fn hash_field_ttl(&self, s: usize, t: usize) -> bool {
        self.src[s].caps.hash_field_ttl && self.tgt.nodes[t].caps.hash_field_ttl
    }
}

/// The source dbs that `--db`/`--map-db` send into target db `db`.
pub fn source_dbs(m: &DbMap, db: u32) -> Vec<u32> {
    let mut v: Vec<u32> = m
        .map
        .iter()
        .filter(|(_, &t)| t == db)
        .map(|(&s, _)| s)
        .collect();
    if !m.map.contains_key(&db) {
        v.push(db);
    }
    if let Some(keep) = &m.keep {
        v.retain(|d| keep.contains(d));
    }
    v.sort_unstable();
    v.dedup();
    v
}

/// A worker's connections, opened on first use.
pub struct Conns {
    src: Vec<Option<Client>>,
    tgt: Vec<Option<Client>>,
}

impl Conns {
    pub fn new(env: &Env) -> Conns {
        Conns {
            src: (0..env.src.len()).map(|_| None).collect(),
            tgt: (0..env.tgt.nodes.len()).map(|_| None).collect(),
        }
    }
}

/// The db each side runs in: a source db and the target db it is compared with (`--map-db`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dbs {
    pub src: u32,
    pub tgt: u32,
}

/// Where a queued command's reply will be.
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    role: Role,
    node: usize,
    pos: usize,
}

/// Commands for one round trip to every server involved (both sides at once).
pub struct Calls {
    src: Vec<(Pipeline, Vec<Bytes>)>,
    tgt: Vec<(Pipeline, Vec<Bytes>)>,
}

/// The replies of a [`Calls`], and the local time they arrived (for `PTTL`).
pub struct Replies {
    src: Vec<Vec<Reply>>,
    tgt: Vec<Vec<Reply>>,
    src_names: Vec<Vec<Bytes>>,
    tgt_names: Vec<Vec<Bytes>>,
    pub now_ms: i64,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Calls {
    pub fn new(env: &Env) -> Calls {
        Calls {
            src: (0..env.src.len())
                .map(|_| (Pipeline::reads(), Vec::new()))
                .collect(),
            tgt: (0..env.tgt.nodes.len())
                .map(|_| (Pipeline::reads(), Vec::new()))
                .collect(),
        }
    }

    pub fn push(&mut self, role: Role, node: usize, args: &[&[u8]]) -> Slot {
        let side = match role {
            Role::Source => &mut self.src,
            Role::Target => &mut self.tgt,
        };
        let (p, names) = &mut side[node];
        names.push(Bytes::copy_from_slice(args.first().copied().unwrap_or(b"")));
        Slot {
            role,
            node,
            pos: p.push(args),
        }
    }

    pub fn s(&mut self, node: usize, args: &[&[u8]]) -> Slot {
        self.push(Role::Source, node, args)
    }

    pub fn t(&mut self, node: usize, args: &[&[u8]]) -> Slot {
        self.push(Role::Target, node, args)
    }

    /// Send everything (sources and target concurrently) in `db` and read every reply.
    pub async fn exec(self, env: &Env, conns: &mut Conns, db: Dbs) -> Result<Replies, VerifyError> {
        let (src_p, src_names): (Vec<_>, Vec<_>) = self.src.into_iter().unzip();
        let (tgt_p, tgt_names): (Vec<_>, Vec<_>) = self.tgt.into_iter().unzip();
        let (a, b) = tokio::join!(
            run_side(env, &mut conns.src, &env.src, Role::Source, db.src, &src_p),
            run_side(
                env,
                &mut conns.tgt,
                &env.tgt.nodes,
                Role::Target,
                db.tgt,
                &tgt_p
            ),
        );
        Ok(Replies {
            src: a?,
            tgt: b?,
            src_names,
            tgt_names,
            now_ms: now_ms(),
        })
    }
}

async fn run_side(
    env: &Env,
    conns: &mut [Option<Client>],
    nodes: &[Node],
    role: Role,
    db: u32,
    pipes: &[Pipeline],
) -> Result<Vec<Vec<Reply>>, VerifyError> {
    let timeout = env.opt.timeout;
    let mut out = Vec::with_capacity(pipes.len());
    for (i, p) in pipes.iter().enumerate() {
        if p.is_empty() {
            out.push(Vec::new());
            continue;
        }
        if conns[i].is_none() {
            conns[i] = Some(
                Client::connect_as(&nodes[i].addr, role, timeout)
                    .await
                    .map_err(error::on(role))?,
            );
        }
        let Some(c) = conns[i].as_mut() else {
            out.push(Vec::new());
            continue;
        };
        c.use_db(db);
        out.push(c.run(p).await.map_err(error::on(role))?);
        env.peak_reply_bytes
            .fetch_max(c.last_reply_bytes(), Ordering::Relaxed);
    }
    Ok(out)
}

static NULL: Reply = Reply::Null;

/// A reply that cannot be used as it is.
enum Bad {
    /// `WRONGTYPE`: the key changed type between two rounds; compare it again later.
    Changed,
    Fail(VerifyError),
}

impl From<VerifyError> for Bad {
    fn from(e: VerifyError) -> Bad {
        Bad::Fail(e)
    }
}

impl Replies {
    fn raw(&self, s: Slot) -> &Reply {
        let v = match s.role {
            Role::Source => &self.src,
            Role::Target => &self.tgt,
        };
        v.get(s.node).and_then(|r| r.get(s.pos)).unwrap_or(&NULL)
    }

    /// The reply in `s`; `WRONGTYPE` is [`Bad::Changed`], any other error reply a failure naming the
    /// server and command.
    fn get(&self, env: &Env, s: Slot) -> Result<&Reply, Bad> {
        let r = self.raw(s);
        if let Reply::Error(e) = r {
            if e.starts_with(b"WRONGTYPE") {
                return Err(Bad::Changed);
            }
            let names = match s.role {
                Role::Source => &self.src_names,
                Role::Target => &self.tgt_names,
            };
            let what = names
                .get(s.node)
                .and_then(|n| n.get(s.pos))
                .map(|b| String::from_utf8_lossy(b).to_uppercase())
                .unwrap_or_default();
            return Err(Bad::Fail(VerifyError::Command {
                role: s.role,
                addr: env.node(s.role, s.node).shown.clone(),
                what,
                msg: String::from_utf8_lossy(e).into_owned(),
            }));
        }
        Ok(r)
    }
}

/// The outcome for one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Match,
    /// Expired or deleted while being verified (or about to expire within the tolerance).
    Expired,
    /// A type verify cannot compare here (module type without a usable `DUMP` on both sides).
    NotCompared,
    Diff(Kind, String),
}

const CHANGED: &str = "changed while being compared";

fn changed() -> Verdict {
    Verdict::Diff(Kind::Value, CHANGED.into())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ty {
    None,
    Str,
    List,
    Set,
    ZSet,
    Hash,
    Stream,
    Other,
}

impl Ty {
    fn of(r: &Reply) -> Ty {
        match r.as_bytes() {
            Some(b"none") => Ty::None,
            Some(b"string") => Ty::Str,
            Some(b"list") => Ty::List,
            Some(b"set") => Ty::Set,
            Some(b"zset") => Ty::ZSet,
            Some(b"hash") => Ty::Hash,
            Some(b"stream") => Ty::Stream,
            _ => Ty::Other,
        }
    }

    fn size_cmd(self) -> Option<&'static [u8]> {
        Some(match self {
            Ty::Str => b"STRLEN",
            Ty::List => b"LLEN",
            Ty::Set => b"SCARD",
            Ty::ZSet => b"ZCARD",
            Ty::Hash => b"HLEN",
            Ty::Stream => b"XLEN",
            Ty::None | Ty::Other => return None,
        })
    }

    fn unit(self) -> &'static str {
        match self {
            Ty::Str => "length",
            Ty::List => "length",
            Ty::Set | Ty::ZSet => "members",
            Ty::Hash => "fields",
            Ty::Stream => "entries",
            Ty::None | Ty::Other => "size",
        }
    }
}

fn type_name(r: &Reply) -> String {
    r.as_bytes()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_else(|| "?".into())
}

/// An expiry as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exp {
    NoKey,
    Persistent,
    At(i64),
}

fn exp_of(r: &Reply, abs: bool, now: i64) -> Exp {
    match r.as_int() {
        Some(-2) | None => Exp::NoKey,
        Some(-1) => Exp::Persistent,
        Some(v) if abs => Exp::At(v),
        Some(v) => Exp::At(now + v),
    }
}

fn ttl_difference(s: Exp, t: Exp, tol: i64, now: i64) -> Option<String> {
    match (s, t) {
        (Exp::Persistent, Exp::At(x)) => Some(format!(
            "the target key expires (in {} ms), the source key does not",
            x - now
        )),
        (Exp::At(x), Exp::Persistent) => Some(format!(
            "the source key expires in {} ms, the target key does not",
            x - now
        )),
        (Exp::At(a), Exp::At(b)) if (a - b).abs() > tol => Some(format!(
            "expiries differ by {} ms (source in {} ms, target in {} ms; tolerance {tol} ms)",
            b - a,
            a - now,
            b - now
        )),
        _ => None,
    }
}

/// Per-key state of a forward comparison.
struct St {
    i: usize,
    tn: usize,
    ty: Ty,
    tyname: String,
    ttl_note: Option<String>,
    size: u64,
    mem: Option<u64>,
    verdict: Option<Verdict>,
}

/// Compare `keys` of source node `s`, db `db`, with the target. One verdict per key, in order.
pub async fn forward(
    env: &Env,
    conns: &mut Conns,
    s: usize,
    db: u32,
    keys: &[Bytes],
) -> Result<Vec<Verdict>, VerifyError> {
    let ttl_cmd: &[u8] = if env.abs_ttl { b"PEXPIRETIME" } else { b"PTTL" };
    let tol = env.opt.ttl_tolerance_ms;
    let db = Dbs {
        src: db,
        tgt: env.target_db(db).unwrap_or(db),
    };

    // Round 1: type and expiry.
    let mut c = Calls::new(env);
    let mut slots = Vec::with_capacity(keys.len());
    for k in keys {
        let tn = env.target_of(k);
        slots.push((
            tn,
            c.s(s, &[b"TYPE", k]),
            c.s(s, &[ttl_cmd, k]),
            c.t(tn, &[b"TYPE", k]),
            c.t(tn, &[ttl_cmd, k]),
        ));
    }
    let r = c.exec(env, conns, db).await?;
    let now = r.now_ms;
    let mut st = Vec::with_capacity(keys.len());
    for (i, &(tn, sty, sexp, tty, texp)) in slots.iter().enumerate() {
        let get = |slot| match r.get(env, slot) {
            Ok(x) => Ok(x),
            Err(Bad::Changed) => Ok(&NULL),
            Err(Bad::Fail(e)) => Err(e),
        };
        let (sty_r, tty_r) = (get(sty)?, get(tty)?);
        let (sty, tty) = (Ty::of(sty_r), Ty::of(tty_r));
        let (sexp, texp) = (
            exp_of(get(sexp)?, env.abs_ttl, now),
            exp_of(get(texp)?, env.abs_ttl, now),
        );
        let mut k = St {
            i,
            tn,
            ty: sty,
            tyname: type_name(sty_r),
            ttl_note: None,
            size: 0,
            mem: None,
            verdict: None,
        };
        k.verdict = if sty == Ty::None {
            // Gone from the source since it was scanned: nothing to compare (a target copy that
            // remains is found by the reverse direction).
            Some(Verdict::Expired)
        } else if tty == Ty::None {
            match sexp {
                Exp::At(x) if x - now <= tol => Some(Verdict::Expired),
                _ => Some(Verdict::Diff(
                    Kind::Missing,
                    format!("not on the target ({} on the source)", k.tyname),
                )),
            }
        } else if sty != tty || (sty == Ty::Other && sty_r != tty_r) {
            Some(Verdict::Diff(
                Kind::Type,
                format!(
                    "{} on the source, {} on the target",
                    k.tyname,
                    type_name(tty_r)
                ),
            ))
        } else if env.opt.keys_only {
            Some(Verdict::Match)
        } else {
            k.ttl_note = ttl_difference(sexp, texp, tol, now);
            None
        };
        st.push(k);
    }
    if env.opt.keys_only {
        return Ok(st.into_iter().map(finish).collect());
    }

    // Round 2: sizes.
    let use_mem = env.memory_usage_ok.load(Ordering::Relaxed);
    let mut c = Calls::new(env);
    let mut slots = Vec::new();
    for k in st.iter().filter(|k| k.verdict.is_none()) {
        let key: &[u8] = &keys[k.i];
        let Some(cmd) = k.ty.size_cmd() else {
            continue;
        };
        let mem = (use_mem && k.ty != Ty::Str).then(|| c.s(s, &[b"MEMORY", b"USAGE", key]));
        slots.push((k.i, c.s(s, &[cmd, key]), c.t(k.tn, &[cmd, key]), mem));
    }
    let r = c.exec(env, conns, db).await?;
    // Keys whose sizes differ: (index, source size, target size), given a moment to catch up below.
    let mut behind: Vec<(usize, i64, i64)> = Vec::new();
    for (i, ss, ts, mem) in slots {
        let k = &mut st[i];
        let sizes = (r.get(env, ss), r.get(env, ts));
        match sizes {
            (Ok(a), Ok(b)) => {
                let (a, b) = (a.as_int().unwrap_or(0), b.as_int().unwrap_or(0));
                if a != b {
                    behind.push((i, a, b));
                }
                k.size = a.max(0) as u64;
            }
            (Err(Bad::Fail(e)), _) | (_, Err(Bad::Fail(e))) => return Err(e),
            _ => k.verdict = Some(changed()),
        }
        if let Some(m) = mem {
            match r.raw(m) {
                Reply::Error(e) => {
                    if env.memory_usage_ok.swap(false, Ordering::Relaxed) {
                        tracing::info!(server = %env.src[s].shown, error = %String::from_utf8_lossy(e),
                            "MEMORY USAGE is not available; collections are sized by element count");
                    }
                }
                other => k.mem = other.as_int().map(|v| v.max(0) as u64),
            }
        }
    }

    settle_sizes(env, conns, s, db, keys, &mut st, behind).await?;

    // Round 3: small values (DUMP, then whole reads); big values in pieces.
    let (page, chunk) = (env.opt.page as u64, env.opt.chunk_bytes as u64);
    let estimate = |k: &St| match k.ty {
        Ty::Str => k.size,
        Ty::Other => 64 << 10,
        _ => k.mem.unwrap_or(k.size.saturating_mul(64)),
    };
    let mut small = Vec::new();
    let mut big = Vec::new();
    for k in st.iter().filter(|k| k.verdict.is_none()) {
        let is_small = match k.ty {
            Ty::Str => k.size <= chunk,
            Ty::Other => true,
            _ => k.size <= page && estimate(k) <= chunk,
        };
        if is_small {
            small.push(k.i);
        } else {
            big.push(k.i);
        }
    }
    let mut start = 0;
    while start < small.len() {
        let mut end = start;
        let mut bytes = 0u64;
        while end < small.len()
            && (end == start || bytes + estimate(&st[small[end]]) <= ROUND_BUDGET_BYTES)
        {
            bytes += estimate(&st[small[end]]);
            end += 1;
        }
        compare_small(env, conns, s, db, keys, &mut st, &small[start..end]).await?;
        start = end;
    }
    for i in big {
        let k = &st[i];
        let v = compare_big(env, conns, s, k.tn, db, &keys[i], k.ty, &k.tyname, k.size).await?;
        st[i].verdict = v;
    }
    Ok(st.into_iter().map(finish).collect())
}

/// The final verdict: a value difference (noting a TTL difference too), then a TTL difference, else
/// equal.
fn finish(k: St) -> Verdict {
    match (k.verdict, k.ttl_note) {
        (Some(Verdict::Diff(Kind::Value, d)), Some(t)) => {
            Verdict::Diff(Kind::Value, format!("{d}; also TTL: {t}"))
        }
        (Some(Verdict::Match) | None, Some(t)) => Verdict::Diff(Kind::Ttl, t),
        (Some(v), _) => v,
        (None, None) => Verdict::Match,
    }
}

/// DUMP fast path, then whole reads, for the keys at `idx` (all small).
async fn compare_small(
    env: &Env,
    conns: &mut Conns,
    s: usize,
    db: Dbs,
    keys: &[Bytes],
    st: &mut [St],
    idx: &[usize],
) -> Result<(), VerifyError> {
    // DUMP where both sides write the same RDB version.
    let mut rest: Vec<usize> = Vec::new();
    let mut c = Calls::new(env);
    let mut dumps = Vec::new();
    for &i in idx {
        let k = &st[i];
        if env.fast_path(s, k.tn) {
            let key: &[u8] = &keys[i];
            dumps.push((i, c.s(s, &[b"DUMP", key]), c.t(k.tn, &[b"DUMP", key])));
        } else {
            rest.push(i);
        }
    }
    if !dumps.is_empty() {
        let r = c.exec(env, conns, db).await?;
        for (i, a, b) in dumps {
            match (r.raw(a), r.raw(b)) {
                (Reply::Bulk(Some(x)), Reply::Bulk(Some(y))) if x == y => {
                    // Equal payloads: equal values (and equal hash field expiries, which DUMP carries).
                    st[i].verdict = Some(Verdict::Match);
                }
                (Reply::Error(e), _) | (_, Reply::Error(e)) => {
                    if env.dump_ok.swap(false, Ordering::Relaxed) {
                        tracing::warn!(error = %String::from_utf8_lossy(e),
                            "DUMP is refused; comparing every value type-aware (slower)");
                    }
                    rest.push(i);
                }
                (Reply::Bulk(None), _) | (_, Reply::Bulk(None)) => st[i].verdict = Some(changed()),
                _ if st[i].ty == Ty::Other => {
                    st[i].verdict = Some(Verdict::Diff(
                        Kind::Value,
                        format!("{}: the DUMP payloads differ", st[i].tyname),
                    ))
                }
                // Different payloads may still be equal values in other encodings.
                _ => rest.push(i),
            }
        }
    }
    if rest.is_empty() {
        return Ok(());
    }

    // Whole reads.
    let mut c = Calls::new(env);
    let mut reads = Vec::new();
    // A list is read up to the length both sides were found to have: elements appended to the source
    // since are not compared (the target may not have them yet).
    let last: Vec<String> = rest
        .iter()
        .map(|&i| st[i].size.saturating_sub(1).to_string())
        .collect();
    for (&i, last) in rest.iter().zip(&last) {
        let k = &st[i];
        let key: &[u8] = &keys[i];
        let cmds: Vec<Vec<&[u8]>> = match k.ty {
            Ty::Str => vec![vec![b"GET", key]],
            Ty::List => vec![vec![b"LRANGE", key, b"0", last.as_bytes()]],
            Ty::Set => vec![vec![b"SMEMBERS", key]],
            Ty::ZSet => vec![vec![b"ZRANGE", key, b"0", b"-1", b"WITHSCORES"]],
            Ty::Hash => vec![vec![b"HGETALL", key]],
            Ty::Stream => vec![
                vec![b"XRANGE", key, b"-", b"+"],
                vec![b"XINFO", b"STREAM", key],
                vec![b"XINFO", b"GROUPS", key],
            ],
            Ty::None | Ty::Other => {
                st[i].verdict = Some(Verdict::NotCompared);
                continue;
            }
        };
        let ss: Vec<Slot> = cmds.iter().map(|a| c.s(s, a)).collect();
        let ts: Vec<Slot> = cmds.iter().map(|a| c.t(k.tn, a)).collect();
        reads.push((i, ss, ts));
    }
    let r = c.exec(env, conns, db).await?;
    let mut hfe = Vec::new();
    for (i, ss, ts) in reads {
        let k = &st[i];
        let got: Result<Vec<(&Reply, &Reply)>, Bad> = ss
            .iter()
            .zip(&ts)
            .map(|(&a, &b)| Ok((r.get(env, a)?, r.get(env, b)?)))
            .collect();
        let pairs = match got {
            Ok(p) => p,
            Err(Bad::Changed) => {
                st[i].verdict = Some(changed());
                continue;
            }
            Err(Bad::Fail(e)) => return Err(e),
        };
        let (a, b) = pairs[0];
        let caught_up;
        let b = if k.ty == Ty::List && is_strict_prefix(b, a) {
            let last = k.size.saturating_sub(1).to_string();
            let args: [&[u8]; 4] = [b"LRANGE", &keys[i], b"0", last.as_bytes()];
            match reread_behind(env, conns, k.tn, db, &args, a, b.clone()).await {
                Ok(r) => {
                    caught_up = r;
                    &caught_up
                }
                Err(Bad::Changed) => {
                    st[i].verdict = Some(changed());
                    continue;
                }
                Err(Bad::Fail(e)) => return Err(e),
            }
        } else {
            b
        };
        let detail = match k.ty {
            Ty::Str => cmp_string(a, b),
            Ty::List => cmp_list(a, b, 0),
            Ty::Set => cmp_set(a, b),
            Ty::ZSet => cmp_zset(a, b, 0),
            Ty::Hash => cmp_hash(a, b),
            Ty::Stream => cmp_stream_entries(a, b, 0)
                .or_else(|| cmp_stream_info(pairs[1].0, pairs[1].1))
                .or_else(|| cmp_groups(pairs[2].0, pairs[2].1)),
            Ty::None | Ty::Other => None,
        };
        match detail {
            Some(d) => {
                st[i].verdict = Some(Verdict::Diff(Kind::Value, format!("{}: {d}", k.tyname)))
            }
            None if k.ty == Ty::Hash && env.hash_field_ttl(s, k.tn) => {
                let fields: Vec<Bytes> = pairs_of(a)
                    .into_iter()
                    .map(|(f, _)| Bytes::copy_from_slice(f))
                    .collect();
                hfe.push((i, fields));
            }
            None => st[i].verdict = Some(Verdict::Match),
        }
    }
    // Hash field expiries.
    if !hfe.is_empty() {
        let mut c = Calls::new(env);
        let mut q = Vec::new();
        for (i, fields) in &hfe {
            if fields.is_empty() {
                continue;
            }
            let args = hfe_args(&keys[*i], fields);
            let args: Vec<&[u8]> = args.iter().map(|a| a.as_ref()).collect();
            q.push((*i, c.s(s, &args), c.t(st[*i].tn, &args)));
        }
        let r = c.exec(env, conns, db).await?;
        for (i, _) in &hfe {
            st[*i].verdict = Some(Verdict::Match);
        }
        for (i, a, b) in q {
            let v = match (r.get(env, a), r.get(env, b)) {
                (Ok(a), Ok(b)) => match cmp_field_ttls(a, b, env.opt.ttl_tolerance_ms, 0) {
                    Some(d) => Verdict::Diff(Kind::Ttl, format!("hash: {d}")),
                    None => Verdict::Match,
                },
                (Err(Bad::Fail(e)), _) | (_, Err(Bad::Fail(e))) => return Err(e),
                _ => changed(),
            };
            st[i].verdict = Some(v);
        }
    }
    Ok(())
}

fn hfe_args(key: &[u8], fields: &[Bytes]) -> Vec<Bytes> {
    let mut v = vec![
        Bytes::from_static(b"HPEXPIRETIME"),
        Bytes::copy_from_slice(key),
        Bytes::from_static(b"FIELDS"),
        Bytes::from(fields.len().to_string()),
    ];
    v.extend(fields.iter().cloned());
    v
}

/// One big value, piece by piece. `None` when equal.
#[allow(clippy::too_many_arguments)]
async fn compare_big(
    env: &Env,
    conns: &mut Conns,
    s: usize,
    tn: usize,
    db: Dbs,
    key: &Bytes,
    ty: Ty,
    tyname: &str,
    size: u64,
) -> Result<Option<Verdict>, VerifyError> {
    let res = match ty {
        Ty::Str => big_string(env, conns, s, tn, db, key, size).await,
        Ty::List => big_ranged(env, conns, s, tn, db, key, size, false).await,
        Ty::ZSet => big_ranged(env, conns, s, tn, db, key, size, true).await,
        Ty::Set => big_set(env, conns, s, tn, db, key).await,
        Ty::Hash => big_hash(env, conns, s, tn, db, key).await,
        Ty::Stream => big_stream(env, conns, s, tn, db, key).await,
        Ty::None | Ty::Other => return Ok(Some(Verdict::NotCompared)),
    };
    match res {
        Ok(None) => Ok(None),
        Ok(Some((kind, d))) => Ok(Some(Verdict::Diff(kind, format!("{tyname}: {d}")))),
        Err(Bad::Changed) => Ok(Some(changed())),
        Err(Bad::Fail(e)) => Err(e),
    }
}

type Found = Result<Option<(Kind, String)>, Bad>;

fn value(d: String) -> Option<(Kind, String)> {
    Some((Kind::Value, d))
}

async fn big_string(
    env: &Env,
    conns: &mut Conns,
    s: usize,
    tn: usize,
    db: Dbs,
    key: &[u8],
    len: u64,
) -> Found {
    let chunk = env.opt.chunk_bytes.max(1) as u64;
    let mut off = 0u64;
    while off < len {
        let (a, b) = (off.to_string(), (off + chunk - 1).to_string());
        let mut c = Calls::new(env);
        let args: [&[u8]; 4] = [b"GETRANGE", key, a.as_bytes(), b.as_bytes()];
        let (x, y) = (c.s(s, &args), c.t(tn, &args));
        let r = c.exec(env, conns, db).await?;
        let (x, y) = (r.get(env, x)?, r.get(env, y)?);
        if x != y {
            return Ok(value(format!(
                "bytes differ in {off}..{} (length {len})",
                (off + chunk).min(len)
            )));
        }
        off += chunk;
    }
    Ok(None)
}

/// Lists (`LRANGE`) and sorted sets (`ZRANGE … WITHSCORES`, ordered by score then member) in pages by
/// index on both sides.
#[allow(clippy::too_many_arguments)]
async fn big_ranged(
    env: &Env,
    conns: &mut Conns,
    s: usize,
    tn: usize,
    db: Dbs,
    key: &[u8],
    len: u64,
    zset: bool,
) -> Found {
    let page = env.opt.page.max(1) as u64;
    let mut start = 0u64;
    while start < len {
        // Pages end at the length both sides were found to have, so both read the same ranks even while
        // the source grows.
        let (a, b) = (start.to_string(), ((start + page).min(len) - 1).to_string());
        let mut c = Calls::new(env);
        let args: Vec<&[u8]> = if zset {
            vec![b"ZRANGE", key, a.as_bytes(), b.as_bytes(), b"WITHSCORES"]
        } else {
            vec![b"LRANGE", key, a.as_bytes(), b.as_bytes()]
        };
        let (x, y) = (c.s(s, &args), c.t(tn, &args));
        let r = c.exec(env, conns, db).await?;
        let (x, y) = (r.get(env, x)?, r.get(env, y)?);
        let caught_up;
        let y = if !zset && is_strict_prefix(y, x) {
            caught_up = reread_behind(env, conns, tn, db, &args, x, y.clone()).await?;
            &caught_up
        } else {
            y
        };
        let d = if zset {
            cmp_zset(x, y, start)
        } else {
            cmp_list(x, y, start)
        };
        if let Some(d) = d {
            return Ok(value(d));
        }
        start += page;
    }
    Ok(None)
}

/// Whether the target's page `t` is a strict prefix of the source's page `s`: the target has not (yet)
/// got the elements the source has after it.
fn is_strict_prefix(t: &Reply, s: &Reply) -> bool {
    let (t, s) = (bulks(t), bulks(s));
    t.len() < s.len() && s.starts_with(&t)
}

/// The target's page `tgt` (read with `args`) is a strict prefix of the source's `src`: read it again,
/// for up to [`CATCH_UP`], until it is not (caught up, or something else); the last reply read.
async fn reread_behind(
    env: &Env,
    conns: &mut Conns,
    tn: usize,
    db: Dbs,
    args: &[&[u8]],
    src: &Reply,
    mut tgt: Reply,
) -> Result<Reply, Bad> {
    let deadline = Instant::now() + CATCH_UP;
    while is_strict_prefix(&tgt, src) && Instant::now() < deadline {
        tokio::time::sleep(CATCH_UP_STEP).await;
        let mut c = Calls::new(env);
        let y = c.t(tn, args);
        let r = c.exec(env, conns, db).await?;
        tgt = r.get(env, y)?.clone();
    }
    Ok(tgt)
}

/// The size to compare a key at, once its sizes read again agree: `target` read after the source's
/// `first` read and before its `source` read. Equal sizes; or, for a list, a target between the two
/// source reads (it has what the source had at first, and no more than the source has now: elements were
/// appended in between), compared up to `first`. `None` while they disagree.
fn settled(ty: Ty, first: i64, target: i64, source: i64) -> Option<u64> {
    if target == source {
        Some(source.max(0) as u64)
    } else if ty == Ty::List && first <= target && target <= source {
        Some(first.max(0) as u64)
    } else {
        None
    }
}

/// Keys whose sizes differed (`behind`: index, source size, target size) may belong to a target that is
/// merely behind: their sizes are read again, the target's first and then the source's, for up to
/// [`CATCH_UP`]. A key settles when both sizes are equal, or, for a list, when the target holds at least
/// what the source had at the first read and no more than the source has now (elements appended in
/// between): it is then compared up to the first read's length. What has not settled is a difference.
async fn settle_sizes(
    env: &Env,
    conns: &mut Conns,
    s: usize,
    db: Dbs,
    keys: &[Bytes],
    st: &mut [St],
    mut behind: Vec<(usize, i64, i64)>,
) -> Result<(), VerifyError> {
    let deadline = Instant::now() + CATCH_UP;
    while !behind.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(CATCH_UP_STEP).await;
        let size_cmd = |i: usize| st[i].ty.size_cmd().unwrap_or(b"EXISTS");
        let mut c = Calls::new(env);
        let t_slots: Vec<Slot> = behind
            .iter()
            .map(|&(i, _, _)| c.t(st[i].tn, &[size_cmd(i), &keys[i]]))
            .collect();
        let tr = c.exec(env, conns, db).await?;
        let mut c = Calls::new(env);
        let s_slots: Vec<Slot> = behind
            .iter()
            .map(|&(i, _, _)| c.s(s, &[size_cmd(i), &keys[i]]))
            .collect();
        let sr = c.exec(env, conns, db).await?;
        let mut still = Vec::new();
        for ((i, first, _), (ts, ss)) in behind.into_iter().zip(t_slots.into_iter().zip(s_slots)) {
            let (b, a) = match (tr.get(env, ts), sr.get(env, ss)) {
                (Ok(b), Ok(a)) => (b.as_int().unwrap_or(0), a.as_int().unwrap_or(0)),
                (Err(Bad::Fail(e)), _) | (_, Err(Bad::Fail(e))) => return Err(e),
                _ => {
                    st[i].verdict = Some(changed());
                    continue;
                }
            };
            match settled(st[i].ty, first, b, a) {
                Some(size) => st[i].size = size,
                None => still.push((i, a, b)),
            }
        }
        behind = still;
    }
    for (i, a, b) in behind {
        let k = &mut st[i];
        k.size = a.max(0) as u64;
        k.verdict = Some(Verdict::Diff(
            Kind::Value,
            format!(
                "{}: {} {a} on the source, {b} on the target",
                k.tyname,
                k.ty.unit()
            ),
        ));
    }
    Ok(())
}

/// `[cursor, [elements…]]` of a SCAN-family reply.
pub(super) fn scan_reply(r: &Reply) -> (Bytes, Vec<Bytes>) {
    match r {
        Reply::Array(Some(v)) if v.len() == 2 => {
            let cursor = v[0]
                .as_bytes()
                .map(Bytes::copy_from_slice)
                .unwrap_or_else(|| Bytes::from_static(b"0"));
            let items = match &v[1] {
                Reply::Array(Some(items)) => items
                    .iter()
                    .filter_map(|x| x.as_bytes().map(Bytes::copy_from_slice))
                    .collect(),
                _ => Vec::new(),
            };
            (cursor, items)
        }
        _ => (Bytes::from_static(b"0"), Vec::new()),
    }
}

/// Every source member (SSCAN pages) must be on the target; the sizes are already equal.
async fn big_set(env: &Env, conns: &mut Conns, s: usize, tn: usize, db: Dbs, key: &[u8]) -> Found {
    let page = env.opt.page.max(1).to_string();
    let mut cursor = Bytes::from_static(b"0");
    let mut missing = 0u64;
    let multi = env.tgt.nodes[tn].caps.smismember;
    loop {
        let mut c = Calls::new(env);
        let x = c.s(s, &[b"SSCAN", key, &cursor, b"COUNT", page.as_bytes()]);
        let r = c.exec(env, conns, db).await?;
        let (next, members) = scan_reply(r.get(env, x)?);
        if !members.is_empty() {
            let mut c = Calls::new(env);
            let mut q = Vec::new();
            if multi {
                let mut args: Vec<&[u8]> = vec![b"SMISMEMBER", key];
                args.extend(members.iter().map(|m| m.as_ref()));
                q.push(c.t(tn, &args));
            } else {
                for m in &members {
                    q.push(c.t(tn, &[b"SISMEMBER", key, m]));
                }
            }
            let r = c.exec(env, conns, db).await?;
            for slot in q {
                match r.get(env, slot)? {
                    Reply::Array(Some(v)) => {
                        missing += v.iter().filter(|x| x.as_int() == Some(0)).count() as u64
                    }
                    x => missing += u64::from(x.as_int() == Some(0)),
                }
            }
        }
        cursor = next;
        if cursor.as_ref() == b"0" {
            break;
        }
    }
    Ok((missing > 0).then(|| {
        (
            Kind::Value,
            format!("{missing} member(s) of the source are not on the target (sizes equal)"),
        )
    }))
}

/// Every source field (HSCAN pages) must have the same value on the target (`HMGET`), and the same
/// expiry when both servers have hash field expiry; the sizes are already equal.
async fn big_hash(env: &Env, conns: &mut Conns, s: usize, tn: usize, db: Dbs, key: &[u8]) -> Found {
    let page = env.opt.page.max(1).to_string();
    let hfe = env.hash_field_ttl(s, tn);
    let mut cursor = Bytes::from_static(b"0");
    let (mut missing, mut differ) = (0u64, 0u64);
    let mut ttl_note = None;
    loop {
        let mut c = Calls::new(env);
        let x = c.s(s, &[b"HSCAN", key, &cursor, b"COUNT", page.as_bytes()]);
        let r = c.exec(env, conns, db).await?;
        let (next, flat) = scan_reply(r.get(env, x)?);
        let (fields, values): (Vec<Bytes>, Vec<Bytes>) = flat
            .chunks_exact(2)
            .map(|p| (p[0].clone(), p[1].clone()))
            .unzip();
        if !fields.is_empty() {
            let mut c = Calls::new(env);
            let mut args: Vec<&[u8]> = vec![b"HMGET", key];
            args.extend(fields.iter().map(|f| f.as_ref()));
            let got = c.t(tn, &args);
            let ttls = hfe.then(|| {
                let a = hfe_args(key, &fields);
                let a: Vec<&[u8]> = a.iter().map(|x| x.as_ref()).collect();
                (c.s(s, &a), c.t(tn, &a))
            });
            let r = c.exec(env, conns, db).await?;
            if let Reply::Array(Some(v)) = r.get(env, got)? {
                for (want, have) in values.iter().zip(v) {
                    match have {
                        Reply::Bulk(Some(h)) if h == want => {}
                        Reply::Bulk(Some(_)) => differ += 1,
                        _ => missing += 1,
                    }
                }
            }
            if let (Some((a, b)), None) = (ttls, &ttl_note) {
                ttl_note =
                    cmp_field_ttls(r.get(env, a)?, r.get(env, b)?, env.opt.ttl_tolerance_ms, 0);
            }
        }
        cursor = next;
        if cursor.as_ref() == b"0" {
            break;
        }
    }
    if missing + differ > 0 {
        return Ok(value(format!(
            "{missing} field(s) of the source are not on the target, {differ} field value(s) differ"
        )));
    }
    Ok(ttl_note.map(|d| (Kind::Ttl, d)))
}

/// The ID after `id` (`ms-seq` + 1), for `XRANGE` on servers without the exclusive `(` form.
fn next_id(id: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(id).ok()?;
    let (ms, seq) = s.split_once('-')?;
    let (ms, seq): (u64, u64) = (ms.parse().ok()?, seq.parse().ok()?);
    Some(match seq.checked_add(1) {
        Some(q) => format!("{ms}-{q}"),
        None => format!("{}-0", ms.checked_add(1)?),
    })
}

async fn big_stream(
    env: &Env,
    conns: &mut Conns,
    s: usize,
    tn: usize,
    db: Dbs,
    key: &[u8],
) -> Found {
    let page_n = env.opt.page.max(1) as u64;
    let page = page_n.to_string();
    let exclusive = env.src[s].caps.xrange_exclusive && env.tgt.nodes[tn].caps.xrange_exclusive;
    let mut start = "-".to_string();
    let mut done = 0u64;
    loop {
        let mut c = Calls::new(env);
        let args: [&[u8]; 6] = [
            b"XRANGE",
            key,
            start.as_bytes(),
            b"+",
            b"COUNT",
            page.as_bytes(),
        ];
        let (x, y) = (c.s(s, &args), c.t(tn, &args));
        let r = c.exec(env, conns, db).await?;
        let (x, y) = (r.get(env, x)?, r.get(env, y)?);
        if let Some(d) = cmp_stream_entries(x, y, done) {
            return Ok(value(d));
        }
        let entries = match x {
            Reply::Array(Some(v)) => v,
            _ => break,
        };
        let Some(last) = entries.last().and_then(entry_id) else {
            break;
        };
        done += entries.len() as u64;
        start = if exclusive {
            format!("({}", String::from_utf8_lossy(last))
        } else {
            match next_id(last) {
                Some(n) => n,
                None => break,
            }
        };
        if (entries.len() as u64) < page_n {
            break;
        }
    }
    let mut c = Calls::new(env);
    let (a, b) = (
        c.s(s, &[b"XINFO", b"STREAM", key]),
        c.t(tn, &[b"XINFO", b"STREAM", key]),
    );
    let (g, h) = (
        c.s(s, &[b"XINFO", b"GROUPS", key]),
        c.t(tn, &[b"XINFO", b"GROUPS", key]),
    );
    let r = c.exec(env, conns, db).await?;
    let (a, b, g, h) = (
        r.get(env, a)?,
        r.get(env, b)?,
        r.get(env, g)?,
        r.get(env, h)?,
    );
    Ok(cmp_stream_info(a, b)
        .or_else(|| cmp_groups(g, h))
        .map(|d| (Kind::Value, d)))
}

/// Compare a target node's keys (target db `db`) with the sources: each must be on a source that may hold
/// it, in a source db that maps to `db`.
pub async fn reverse(
    env: &Env,
    conns: &mut Conns,
    t: usize,
    db: u32,
    keys: &[Bytes],
) -> Result<Vec<Verdict>, VerifyError> {
    let ttl_cmd: &[u8] = if env.abs_ttl { b"PEXPIRETIME" } else { b"PTTL" };
    let src_dbs = env.source_dbs(db);
    let mut found = vec![false; keys.len()];
    let mut texp = vec![Exp::NoKey; keys.len()];
    let mut now = now_ms();
    let cands: Vec<Vec<usize>> = keys.iter().map(|k| env.candidates(k)).collect();
    // One round per source db mapped here (usually one); the target's expiries come with the first.
    let rounds = src_dbs.len().max(1);
    for round in 0..rounds {
        let sdb = src_dbs.get(round).copied();
        let mut c = Calls::new(env);
        let mut slots = Vec::with_capacity(keys.len());
        for (i, k) in keys.iter().enumerate() {
            let exp = (round == 0).then(|| c.t(t, &[ttl_cmd, k]));
            let exists: Vec<Slot> = match sdb {
                Some(_) => cands[i].iter().map(|&n| c.s(n, &[b"EXISTS", k])).collect(),
                None => Vec::new(),
            };
            slots.push((exp, exists));
        }
        let dbs = Dbs {
            src: sdb.unwrap_or(db),
            tgt: db,
        };
        let r = c.exec(env, conns, dbs).await?;
        if round == 0 {
            now = r.now_ms;
        }
        for (i, (exp, exists)) in slots.into_iter().enumerate() {
            if let Some(e) = exp {
                texp[i] = match r.get(env, e) {
                    Ok(x) => exp_of(x, env.abs_ttl, now),
                    Err(Bad::Changed) => Exp::NoKey,
                    Err(Bad::Fail(e)) => return Err(e),
                };
            }
            for e in exists {
                match r.get(env, e) {
                    Ok(x) => found[i] |= x.as_int().unwrap_or(0) > 0,
                    Err(Bad::Fail(e)) => return Err(e),
                    Err(Bad::Changed) => {}
                }
            }
        }
    }
    let mut out = Vec::with_capacity(keys.len());
    for i in 0..keys.len() {
        out.push(match texp[i] {
            Exp::NoKey => Verdict::Expired,
            _ if found[i] => Verdict::Match,
            Exp::At(x) if x - now <= env.opt.ttl_tolerance_ms => Verdict::Expired,
            _ => Verdict::Diff(
                Kind::Extra,
                match (cands[i].len(), env.src.len(), src_dbs.is_empty()) {
                    (_, _, true) => format!("no source db is compared with db{db}"),
                    (1, n, _) if n > 1 => {
                        format!("not on its source {}", env.src[cands[i][0]].shown)
                    }
                    _ => "on no source".to_string(),
                },
            ),
        });
    }
    Ok(out)
}

// ---- value comparisons (no values in the messages) ----

fn bulks(r: &Reply) -> Vec<&[u8]> {
    match r {
        Reply::Array(Some(v)) | Reply::Set(v) => v.iter().filter_map(|x| x.as_bytes()).collect(),
        _ => Vec::new(),
    }
}

fn pairs_of(r: &Reply) -> Vec<(&[u8], &[u8])> {
    let mut v: Vec<(&[u8], &[u8])> = match r {
        Reply::Map(m) => m
            .iter()
            .filter_map(|(k, v)| Some((k.as_bytes()?, v.as_bytes()?)))
            .collect(),
        _ => bulks(r).chunks_exact(2).map(|p| (p[0], p[1])).collect(),
    };
    v.sort_unstable();
    v
}

fn cmp_string(a: &Reply, b: &Reply) -> Option<String> {
    let (x, y) = (a.as_bytes().unwrap_or(b""), b.as_bytes().unwrap_or(b""));
    if x == y {
        return None;
    }
    if x.len() != y.len() {
        return Some(format!(
            "length {} on the source, {} on the target",
            x.len(),
            y.len()
        ));
    }
    let at = x.iter().zip(y).position(|(p, q)| p != q).unwrap_or(0);
    Some(format!(
        "bytes differ from offset {at} (length {})",
        x.len()
    ))
}

fn cmp_list(a: &Reply, b: &Reply, base: u64) -> Option<String> {
    let (x, y) = (bulks(a), bulks(b));
    if x == y {
        return None;
    }
    match x.iter().zip(&y).position(|(p, q)| p != q) {
        Some(i) => Some(format!("element {} differs", base + i as u64)),
        None => Some(format!(
            "{} elements from index {base} on the source, {} on the target (changed while compared?)",
            x.len(),
            y.len()
        )),
    }
}

fn cmp_set(a: &Reply, b: &Reply) -> Option<String> {
    let (mut x, mut y) = (bulks(a), bulks(b));
    x.sort_unstable();
    y.sort_unstable();
    if x == y {
        return None;
    }
    let only_src = x.iter().filter(|m| y.binary_search(m).is_err()).count();
    let only_tgt = y.iter().filter(|m| x.binary_search(m).is_err()).count();
    Some(format!(
        "{only_src} member(s) only on the source, {only_tgt} only on the target"
    ))
}

fn score_eq(a: &[u8], b: &[u8]) -> bool {
    if a == b {
        return true;
    }
    let p = |s: &[u8]| std::str::from_utf8(s).ok()?.parse::<f64>().ok();
    matches!((p(a), p(b)), (Some(x), Some(y)) if x == y)
}

fn cmp_zset(a: &Reply, b: &Reply, base: u64) -> Option<String> {
    let pairs = |r: &Reply| -> Vec<(Vec<u8>, Vec<u8>)> {
        bulks(r)
            .chunks_exact(2)
            .map(|p| (p[0].to_vec(), p[1].to_vec()))
            .collect()
    };
    let (x, y) = (pairs(a), pairs(b));
    for (i, ((m1, s1), (m2, s2))) in x.iter().zip(&y).enumerate() {
        if m1 != m2 {
            return Some(format!("member at rank {} differs", base + i as u64));
        }
        if !score_eq(s1, s2) {
            return Some(format!(
                "score of the member at rank {} differs",
                base + i as u64
            ));
        }
    }
    (x.len() != y.len()).then(|| {
        format!(
            "{} members from rank {base} on the source, {} on the target (changed while compared?)",
            x.len(),
            y.len()
        )
    })
}

fn cmp_hash(a: &Reply, b: &Reply) -> Option<String> {
    let (x, y) = (pairs_of(a), pairs_of(b));
    if x == y {
        return None;
    }
    let mut missing = 0;
    let mut differ = 0;
    for (f, v) in &x {
        match y.binary_search_by(|(g, _)| g.cmp(f)) {
            Ok(j) if y[j].1 == *v => {}
            Ok(_) => differ += 1,
            Err(_) => missing += 1,
        }
    }
    let extra = y
        .iter()
        .filter(|(g, _)| x.binary_search_by(|(f, _)| f.cmp(g)).is_err())
        .count();
    Some(format!(
        "{missing} field(s) missing on the target, {extra} extra, {differ} field value(s) differ"
    ))
}

fn entry_id(e: &Reply) -> Option<&[u8]> {
    match e {
        Reply::Array(Some(v)) => v.first()?.as_bytes(),
        _ => None,
    }
}

fn cmp_stream_entries(a: &Reply, b: &Reply, base: u64) -> Option<String> {
    let empty = Vec::new();
    let (x, y) = match (a, b) {
        (Reply::Array(Some(x)), Reply::Array(Some(y))) => (x, y),
        (Reply::Array(Some(x)), _) => (x, &empty),
        (_, Reply::Array(Some(y))) => (&empty, y),
        _ => return None,
    };
    for (i, (p, q)) in x.iter().zip(y).enumerate() {
        if p != q {
            let (ip, iq) = (entry_id(p).unwrap_or(b"?"), entry_id(q).unwrap_or(b"?"));
            return Some(if ip == iq {
                format!(
                    "entry {} ({}) differs in its fields",
                    base + i as u64,
                    String::from_utf8_lossy(ip)
                )
            } else {
                format!(
                    "entry {} has ID {} on the source, {} on the target",
                    base + i as u64,
                    String::from_utf8_lossy(ip),
                    String::from_utf8_lossy(iq)
                )
            });
        }
    }
    (x.len() != y.len()).then(|| {
        format!(
            "{} entries from entry {base} on the source, {} on the target",
            x.len(),
            y.len()
        )
    })
}

/// `XINFO` replies as field → value (RESP2 flat pairs or a RESP3 map).
fn xinfo_fields(r: &Reply) -> Vec<(&[u8], &Reply)> {
    match r {
        Reply::Map(m) => m
            .iter()
            .filter_map(|(k, v)| Some((k.as_bytes()?, v)))
            .collect(),
        Reply::Array(Some(v)) => v
            .chunks_exact(2)
            .filter_map(|p| Some((p[0].as_bytes()?, &p[1])))
            .collect(),
        _ => Vec::new(),
    }
}

fn field<'a>(f: &[(&[u8], &'a Reply)], name: &[u8]) -> Option<&'a Reply> {
    f.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
}

fn shown_scalar(r: &Reply) -> String {
    match r {
        Reply::Integer(i) => i.to_string(),
        Reply::Bulk(None) | Reply::Null => "nil".into(),
        r => r
            .as_bytes()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_else(|| "?".into()),
    }
}

/// Stream metadata that survives a copy: the last ID and (7.0+) the counters, where both sides report
/// them. The first/last entries are compared with the entries; the radix-tree sizes depend on history.
const STREAM_FIELDS: [&[u8]; 4] = [
    b"last-generated-id",
    b"max-deleted-entry-id",
    b"entries-added",
    b"recorded-first-entry-id",
];

fn cmp_stream_info(a: &Reply, b: &Reply) -> Option<String> {
    let (x, y) = (xinfo_fields(a), xinfo_fields(b));
    for f in STREAM_FIELDS {
        if let (Some(p), Some(q)) = (field(&x, f), field(&y, f)) {
            if p != q {
                return Some(format!(
                    "{} is {} on the source, {} on the target",
                    String::from_utf8_lossy(f),
                    shown_scalar(p),
                    shown_scalar(q)
                ));
            }
        }
    }
    None
}

/// A consumer group's name and its compared fields.
type GroupSummary = (Vec<u8>, Vec<(Vec<u8>, Reply)>);

const GROUP_FIELDS: [&[u8]; 4] = [
    b"consumers",
    b"pending",
    b"last-delivered-id",
    b"entries-read",
];

fn cmp_groups(a: &Reply, b: &Reply) -> Option<String> {
    let groups = |r: &Reply| -> Vec<GroupSummary> {
        let list = match r {
            Reply::Array(Some(v)) => v.as_slice(),
            _ => &[],
        };
        let mut g: Vec<_> = list
            .iter()
            .map(|g| {
                let f = xinfo_fields(g);
                let name = field(&f, b"name")
                    .and_then(|n| n.as_bytes())
                    .unwrap_or(b"")
                    .to_vec();
                let vals = GROUP_FIELDS
                    .iter()
                    .filter_map(|k| field(&f, k).map(|v| (k.to_vec(), v.clone())))
                    .collect();
                (name, vals)
            })
            .collect();
        g.sort_by(|p, q| p.0.cmp(&q.0));
        g
    };
    let (x, y) = (groups(a), groups(b));
    for (name, vals) in &x {
        let shown = crate::target::pool::escape_key(name);
        let Some((_, other)) = y.iter().find(|(n, _)| n == name) else {
            return Some(format!("consumer group \"{shown}\" is not on the target"));
        };
        for (k, v) in vals {
            if let Some((_, w)) = other.iter().find(|(j, _)| j == k) {
                if v != w {
                    return Some(format!(
                        "consumer group \"{shown}\": {} is {} on the source, {} on the target",
                        String::from_utf8_lossy(k),
                        shown_scalar(v),
                        shown_scalar(w)
                    ));
                }
            }
        }
    }
    (x.len() != y.len()).then(|| {
        format!(
            "{} consumer group(s) on the source, {} on the target",
            x.len(),
            y.len()
        )
    })
}

/// `HPEXPIRETIME` replies (one per field, in the same order): -1 no expiry, -2 no field, else ms.
fn cmp_field_ttls(a: &Reply, b: &Reply, tol: i64, base: u64) -> Option<String> {
    let ints = |r: &Reply| -> Vec<i64> {
        match r {
            Reply::Array(Some(v)) => v.iter().map(|x| x.as_int().unwrap_or(-2)).collect(),
            _ => Vec::new(),
        }
    };
    let (x, y) = (ints(a), ints(b));
    let mut n = 0u64;
    let mut first = None;
    for (i, (p, q)) in x.iter().zip(&y).enumerate() {
        let differs = match (*p, *q) {
            (p, q) if p >= 0 && q >= 0 => (p - q).abs() > tol,
            (p, q) => p != q,
        };
        if differs {
            n += 1;
            first.get_or_insert(base + i as u64);
        }
    }
    first
        .map(|f| format!("{n} field expiry(ies) differ (first at field {f} of the source's order)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arr(items: &[&[u8]]) -> Reply {
        Reply::Array(Some(
            items
                .iter()
                .map(|b| Reply::Bulk(Some(Bytes::copy_from_slice(b))))
                .collect(),
        ))
    }

    #[test]
    fn comparisons_name_positions_not_values() {
        let d = cmp_string(&arr(&[]), &arr(&[])).is_none();
        assert!(d);
        let a = Reply::Bulk(Some(Bytes::from_static(b"secret-a")));
        let b = Reply::Bulk(Some(Bytes::from_static(b"secret-b")));
        let d = cmp_string(&a, &b).unwrap();
        assert!(d.contains("offset 7") && !d.contains("secret"), "{d}");
        let d = cmp_list(&arr(&[b"x", b"y"]), &arr(&[b"x", b"z"]), 10).unwrap();
        assert_eq!(d, "element 11 differs");
        assert!(cmp_set(&arr(&[b"a", b"b"]), &arr(&[b"b", b"a"])).is_none());
        let d = cmp_set(&arr(&[b"a", b"b"]), &arr(&[b"b", b"c"])).unwrap();
        assert_eq!(d, "1 member(s) only on the source, 1 only on the target");
        assert!(cmp_zset(&arr(&[b"a", b"1"]), &arr(&[b"a", b"1.0"]), 0).is_none());
        let d = cmp_zset(&arr(&[b"a", b"1"]), &arr(&[b"a", b"2"]), 0).unwrap();
        assert_eq!(d, "score of the member at rank 0 differs");
        assert!(cmp_hash(
            &arr(&[b"f", b"1", b"g", b"2"]),
            &arr(&[b"g", b"2", b"f", b"1"])
        )
        .is_none());
        let d = cmp_hash(&arr(&[b"f", b"1", b"g", b"2"]), &arr(&[b"g", b"3"])).unwrap();
        assert_eq!(
            d,
            "1 field(s) missing on the target, 0 extra, 1 field value(s) differ"
        );
    }

    #[test]
    fn ttl_rules() {
        let now = 1_000_000;
        assert!(ttl_difference(Exp::Persistent, Exp::Persistent, 2000, now).is_none());
        assert!(ttl_difference(Exp::At(now + 5000), Exp::At(now + 6999), 2000, now).is_none());
        assert!(ttl_difference(Exp::At(now + 5000), Exp::At(now + 7001), 2000, now).is_some());
        assert!(ttl_difference(Exp::At(now + 5000), Exp::Persistent, 2000, now).is_some());
        assert!(ttl_difference(Exp::Persistent, Exp::At(now + 5000), 2000, now).is_some());
        assert_eq!(exp_of(&Reply::Integer(100), false, now), Exp::At(now + 100));
        assert_eq!(exp_of(&Reply::Integer(100), true, now), Exp::At(100));
        assert_eq!(exp_of(&Reply::Integer(-2), true, now), Exp::NoKey);
    }

    #[test]
    fn a_target_behind_settles_a_target_different_does_not() {
        // Equal sizes, any type.
        assert_eq!(settled(Ty::Set, 10, 12, 12), Some(12));
        // A list the source appended to: the target caught up with the first read, or past it.
        assert_eq!(settled(Ty::List, 100, 100, 108), Some(100));
        assert_eq!(settled(Ty::List, 100, 105, 108), Some(100));
        // Still behind the first read, or ahead of what the source has: a difference (for now).
        assert_eq!(settled(Ty::List, 100, 99, 108), None);
        assert_eq!(settled(Ty::List, 100, 109, 108), None);
        // A static list with an extra element on the target never settles.
        assert_eq!(settled(Ty::List, 3, 4, 3), None);
        // Only lists are compared up to a first length.
        assert_eq!(settled(Ty::Set, 100, 105, 108), None);
        assert!(is_strict_prefix(&arr(&[b"a"]), &arr(&[b"a", b"b"])));
        assert!(!is_strict_prefix(&arr(&[b"a", b"b"]), &arr(&[b"a", b"b"])));
        assert!(!is_strict_prefix(&arr(&[b"x"]), &arr(&[b"a", b"b"])));
        assert!(!is_strict_prefix(
            &arr(&[b"a", b"b", b"c"]),
            &arr(&[b"a", b"b"])
        ));
    }

    #[test]
    fn next_stream_id() {
        assert_eq!(next_id(b"5-1").as_deref(), Some("5-2"));
        assert_eq!(
            next_id(format!("5-{}", u64::MAX).as_bytes()).as_deref(),
            Some("6-0")
        );
        assert_eq!(next_id(b"junk"), None);
    }

    #[test]
    fn field_ttls() {
        let a = Reply::Array(Some(vec![Reply::Integer(-1), Reply::Integer(5000)]));
        let b = Reply::Array(Some(vec![Reply::Integer(-1), Reply::Integer(5500)]));
        assert!(cmp_field_ttls(&a, &b, 2000, 0).is_none());
        let c = Reply::Array(Some(vec![Reply::Integer(100), Reply::Integer(5500)]));
        assert!(cmp_field_ttls(&a, &c, 2000, 0).is_some());
    }
}
