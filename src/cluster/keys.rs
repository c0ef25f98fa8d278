//! Which arguments of a command are keys, so a write can be sent to the node owning their slot; and which
//! multi-key commands can be cut into one command per slot with the same effect.
//!
//! The table covers every command a master propagates to its replicas, Redis 2.8 to 8.4 and Valkey up to
//! 9.1 — including the forms a master rewrites commands into (`PEXPIREAT`, `SET … PXAT`, `LPOP` for
//! `BLPOP`, `XCLAIM`/`XGROUP SETID` for `XREADGROUP`, `DEL`/`UNLINK` for expiries, …) and the commands kept
//! as written — plus the read-only commands its own rules name (`EXISTS`, `TOUCH`, `PFCOUNT`, `SORT_RO`,
//! the `*_RO` script calls, …). Not in it: 8.0's experimental `SFLUSH` (slot ranges, no key) and module
//! commands other than Redis 8's vector sets. The key positions are those of Redis' `src/commands/*.json` key specs and
//! of the `*GetKeys` functions of `src/db.c`, checked against `COMMAND GETKEYS` of real servers by
//! `tests/integration/cluster_keys.rs`.
//!
//! Where options and keys mix, the options are parsed as the command itself parses them (`SORT`'s
//! `sortCommandGeneric`, `GEORADIUS`'s `georadiusGeneric`, `XREAD`'s `xreadCommand`, `MIGRATE`): a line the
//! command would refuse as a syntax error is [`KeyRoute::Unknown`] (a master never propagates one), so a
//! form this table does not know is reported rather than sent to a guessed node.
//!
//! One entry is not a key in Redis' own sense but routes by slot all the same: the channel of `SPUBLISH`
//! (a sharded channel lives in its slot's shard; `COMMAND GETKEYS` finds no key in it).

/// Where a command's keys are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRoute {
    /// The command has no key (`FLUSHALL`, `FLUSHDB`, `SWAPDB`, `SELECT`, `MULTI`, `EXEC`, `PING`,
    /// `REPLCONF`, `SCRIPT …`, `FUNCTION …`, `PUBLISH`, `XGROUP HELP`). Where it goes (every master, any,
    /// none) is the caller's decision.
    Keyless,
    /// The argument indexes that are keys, in increasing order. Empty only for a script call naming no key
    /// (`EVAL script 0 …`, `FCALL f 0`).
    Keys(Vec<usize>),
    /// A command this table does not know, or a line its command would refuse (too few arguments, a bad
    /// `numkeys`, an unknown option): the caller reports it.
    Unknown,
}

/// How a multi-key command can be cut into one command per slot with the same effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// Only whole: its keys must all be in one slot (or the command is single-key).
    Whole,
    /// The arguments from `first` on come in groups of `step`, each group starting with a key; a command
    /// with any subset of the groups has the same effect on those keys (`DEL`, `UNLINK`, `TOUCH`, `EXISTS`:
    /// step 1; `MSET`: step 2). `MSETNX` is not one: it sets all its keys or none.
    PerKey { first: usize, step: usize },
}

/// The grammar of a command's key arguments.
#[derive(Clone, Copy)]
enum Shape {
    Keyless,
    /// One key, at this index.
    At(usize),
    /// Keys at 1 and 2 (source, destination).
    Pair,
    /// Every argument from this index on.
    From(usize),
    /// Every argument from 1 but the last (a blocking pop's timeout).
    AllButLast,
    /// `key value` pairs from 1 on.
    Pairs,
    /// A count at `count`, then that many keys (`step` apart), after an optional destination key at 1.
    NumKeys {
        dest: bool,
        count: usize,
        step: usize,
        zero_ok: bool,
    },
    Sort,
    /// `GEORADIUS` (options from 6) and `GEORADIUSBYMEMBER` (from 5).
    GeoRadius(usize),
    /// `XREAD` (false) and `XREADGROUP` (true).
    XRead(bool),
    Migrate,
    XGroup,
    Unknown,
}

/// Uppercase `name` into `buf`; `None` if it is longer than any command name.
fn upper<'a>(name: &[u8], buf: &'a mut [u8; 32]) -> Option<&'a [u8]> {
    let up = buf.get_mut(..name.len())?;
    up.copy_from_slice(name);
    up.make_ascii_uppercase();
    Some(up)
}

fn shape(name: &[u8]) -> Shape {
    use Shape::*;
    let num = |dest, count, step, zero_ok| NumKeys {
        dest,
        count,
        step,
        zero_ok,
    };
    match name {
        // No key.
        b"FLUSHALL" | b"FLUSHDB" | b"SWAPDB" | b"SELECT" | b"MULTI" | b"EXEC" | b"DISCARD"
        | b"PING" | b"REPLCONF" | b"SCRIPT" | b"FUNCTION" | b"PUBLISH" => Keyless,

        // Strings.
        b"SET" | b"SETNX" | b"SETEX" | b"PSETEX" | b"GETSET" | b"GETDEL" | b"GETEX" | b"APPEND"
        | b"INCR" | b"DECR" | b"INCRBY" | b"DECRBY" | b"INCRBYFLOAT" | b"SETRANGE" | b"SETBIT"
        | b"BITFIELD" | b"BITFIELD_RO" | b"GET" | b"DELEX" | b"DELIFEQ" => At(1),
        b"MSET" | b"MSETNX" => Pairs,
        b"MSETEX" => num(false, 1, 2, false),
        b"MGET" => From(1),
        b"BITOP" => From(2),
        b"PFADD" => At(1),
        b"PFMERGE" | b"PFCOUNT" => From(1),
        b"PFDEBUG" => At(2),

        // Lists.
        b"LPUSH" | b"RPUSH" | b"LPUSHX" | b"RPUSHX" | b"LPOP" | b"RPOP" | b"LINSERT" | b"LSET"
        | b"LTRIM" | b"LREM" => At(1),
        b"LMOVE" | b"BLMOVE" | b"RPOPLPUSH" | b"BRPOPLPUSH" => Pair,
        b"BLPOP" | b"BRPOP" => AllButLast,
        b"LMPOP" => num(false, 1, 1, false),
        b"BLMPOP" => num(false, 2, 1, false),

        // Sets.
        b"SADD" | b"SREM" | b"SPOP" => At(1),
        b"SMOVE" => Pair,
        b"SINTERSTORE" | b"SUNIONSTORE" | b"SDIFFSTORE" => From(1),
        b"SINTERCARD" => num(false, 1, 1, false),

        // Sorted sets.
        b"ZADD" | b"ZINCRBY" | b"ZREM" | b"ZREMRANGEBYSCORE" | b"ZREMRANGEBYRANK"
        | b"ZREMRANGEBYLEX" | b"ZPOPMIN" | b"ZPOPMAX" => At(1),
        b"BZPOPMIN" | b"BZPOPMAX" => AllButLast,
        b"ZUNIONSTORE" | b"ZINTERSTORE" | b"ZDIFFSTORE" => num(true, 2, 1, false),
        b"ZRANGESTORE" => Pair,
        b"ZMPOP" | b"ZINTERCARD" => num(false, 1, 1, false),
        b"BZMPOP" => num(false, 2, 1, false),

        // Hashes (field expiry: 7.4; HGETDEL, HGETEX, HSETEX: 8.0 and Valkey 9).
        b"HSET" | b"HMSET" | b"HSETNX" | b"HDEL" | b"HINCRBY" | b"HINCRBYFLOAT" | b"HEXPIRE"
        | b"HPEXPIRE" | b"HEXPIREAT" | b"HPEXPIREAT" | b"HPERSIST" | b"HGETDEL" | b"HGETEX"
        | b"HSETEX" => At(1),

        // Streams.
        b"XADD" | b"XDEL" | b"XTRIM" | b"XSETID" | b"XACK" | b"XCLAIM" | b"XAUTOCLAIM"
        | b"XDELEX" | b"XACKDEL" => At(1),
        b"XGROUP" => XGroup,
        b"XREAD" => XRead(false),
        b"XREADGROUP" => XRead(true),

        // Geo.
        b"GEOADD" | b"GEORADIUS_RO" | b"GEORADIUSBYMEMBER_RO" => At(1),
        b"GEORADIUS" => GeoRadius(6),
        b"GEORADIUSBYMEMBER" => GeoRadius(5),
        b"GEOSEARCHSTORE" => Pair,

        // Vector sets (Redis 8).
        b"VADD" | b"VREM" | b"VSETATTR" => At(1),

        // Keys in general.
        b"DEL" | b"UNLINK" | b"EXISTS" | b"TOUCH" => From(1),
        b"EXPIRE" | b"PEXPIRE" | b"EXPIREAT" | b"PEXPIREAT" | b"PERSIST" | b"MOVE" | b"RESTORE"
        | b"RESTORE-ASKING" | b"SORT_RO" => At(1),
        b"RENAME" | b"RENAMENX" | b"COPY" => Pair,
        b"SORT" => Sort,
        b"MIGRATE" => Migrate,

        // Scripts and functions.
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" => {
            num(false, 2, 1, true)
        }

        // Pub/sub: a sharded channel routes like a key.
        b"SPUBLISH" => At(1),

        _ => Unknown,
    }
}

/// The key arguments of the command line `args` (`args[0]` is the name, in any case).
pub fn command_keys(args: &[&[u8]]) -> KeyRoute {
    let Some(name) = args.first() else {
        return KeyRoute::Unknown;
    };
    let mut buf = [0u8; 32];
    let Some(name) = upper(name, &mut buf) else {
        return KeyRoute::Unknown;
    };
    let n = args.len();
    let keys = |v: Vec<usize>| KeyRoute::Keys(v);
    match shape(name) {
        Shape::Keyless => KeyRoute::Keyless,
        Shape::Unknown => KeyRoute::Unknown,
        Shape::At(i) if n > i => keys(vec![i]),
        Shape::Pair if n > 2 => keys(vec![1, 2]),
        Shape::From(i) if n > i => keys((i..n).collect()),
        Shape::AllButLast if n > 2 => keys((1..n - 1).collect()),
        Shape::Pairs if n > 1 && n % 2 == 1 => keys((1..n).step_by(2).collect()),
        Shape::NumKeys {
            dest,
            count,
            step,
            zero_ok,
        } => numkeys(args, dest, count, step, zero_ok),
        Shape::Sort => sort(args),
        Shape::GeoRadius(base) => georadius(args, base),
        Shape::XRead(group) => xread(args, group),
        Shape::Migrate => migrate(args),
        Shape::XGroup => {
            let mut sub = [0u8; 32];
            match args.get(1).and_then(|s| upper(s, &mut sub)) {
                Some(b"CREATE" | b"SETID" | b"DESTROY" | b"CREATECONSUMER" | b"DELCONSUMER")
                    if n > 2 =>
                {
                    keys(vec![2])
                }
                Some(b"HELP") => KeyRoute::Keyless,
                _ => KeyRoute::Unknown,
            }
        }
        // Too few arguments for the shape.
        _ => KeyRoute::Unknown,
    }
}

/// How the command `name` (any case) can be cut per slot.
pub fn split_rule(name: &[u8]) -> Split {
    let mut buf = [0u8; 32];
    match upper(name, &mut buf) {
        Some(b"DEL" | b"UNLINK" | b"TOUCH" | b"EXISTS") => Split::PerKey { first: 1, step: 1 },
        Some(b"MSET") => Split::PerKey { first: 1, step: 2 },
        _ => Split::Whole,
    }
}

/// A non-negative integer as Redis' `string2ll` reads it (no sign, no leading zero, no spaces).
fn count(arg: &[u8]) -> Option<usize> {
    match arg {
        [b'0'] => Some(0),
        [b'1'..=b'9', rest @ ..] if rest.iter().all(u8::is_ascii_digit) => {
            std::str::from_utf8(arg).ok()?.parse().ok()
        }
        _ => None,
    }
}

/// `[dest] numkeys key…` (keys `step` apart); more keys than arguments, or zero keys where the command
/// wants one, is a line the command refuses.
fn numkeys(args: &[&[u8]], dest: bool, at: usize, step: usize, zero_ok: bool) -> KeyRoute {
    let Some(num) = args.get(at).and_then(|a| count(a)) else {
        return KeyRoute::Unknown;
    };
    let first = at + 1;
    if (num == 0 && !zero_ok) || num > (args.len() - first) / step {
        return KeyRoute::Unknown;
    }
    let mut keys = Vec::with_capacity(num + usize::from(dest));
    if dest {
        keys.push(1);
    }
    keys.extend((0..num).map(|i| first + i * step));
    KeyRoute::Keys(keys)
}

fn is(arg: &[u8], word: &str) -> bool {
    arg.eq_ignore_ascii_case(word.as_bytes())
}

/// `SORT key [BY pattern] [LIMIT offset count] [GET pattern …] [ASC|DESC] [ALPHA] [STORE dest]`, as
/// `sortCommandGeneric` reads it: the last `STORE` wins. (`BY`/`GET` patterns name keys too, read only
/// and not routable: Redis refuses them in cluster mode.)
fn sort(args: &[&[u8]]) -> KeyRoute {
    let n = args.len();
    if n < 2 {
        return KeyRoute::Unknown;
    }
    let mut store = None;
    let mut j = 2;
    while j < n {
        let (a, left) = (args[j], n - j - 1);
        if is(a, "ASC") || is(a, "DESC") || is(a, "ALPHA") {
        } else if is(a, "LIMIT") && left >= 2 {
            j += 2;
        } else if is(a, "STORE") && left >= 1 {
            store = Some(j + 1);
            j += 1;
        } else if (is(a, "BY") || is(a, "GET")) && left >= 1 {
            j += 1;
        } else {
            return KeyRoute::Unknown;
        }
        j += 1;
    }
    KeyRoute::Keys(std::iter::once(1).chain(store).collect())
}

/// `GEORADIUS key lon lat radius unit …` / `GEORADIUSBYMEMBER key member radius unit …`, options from
/// `base` as `georadiusGeneric` reads them: the last `STORE`/`STOREDIST` wins.
fn georadius(args: &[&[u8]], base: usize) -> KeyRoute {
    let n = args.len();
    if n < base {
        return KeyRoute::Unknown;
    }
    let mut store = None;
    let mut j = base;
    while j < n {
        let (a, left) = (args[j], n - j - 1);
        if ["WITHDIST", "WITHHASH", "WITHCOORD", "ANY", "ASC", "DESC"]
            .iter()
            .any(|w| is(a, w))
        {
        } else if is(a, "COUNT") && left >= 1 {
            j += 1;
        } else if (is(a, "STORE") || is(a, "STOREDIST")) && left >= 1 {
            store = Some(j + 1);
            j += 1;
        } else {
            return KeyRoute::Unknown;
        }
        j += 1;
    }
    KeyRoute::Keys(std::iter::once(1).chain(store).collect())
}

/// `XREAD [COUNT n] [BLOCK ms] STREAMS key… id…` and `XREADGROUP GROUP g c [COUNT n] [BLOCK ms] [CLAIM
/// ms] [NOACK] STREAMS key… id…`, as `xreadCommand` reads them: the first `STREAMS` in option position
/// starts the keys, which are the first half of what follows. (`CLAIM` is 8.4's; `MAXCOUNT`/`MAXSIZE`,
/// newer still, are taken as options with a value too.)
fn xread(args: &[&[u8]], group: bool) -> KeyRoute {
    let n = args.len();
    let mut has_group = false;
    let mut j = 1;
    while j < n {
        let (a, left) = (args[j], n - j - 1);
        let valued = ["BLOCK", "COUNT", "MAXCOUNT", "MAXSIZE"]
            .iter()
            .any(|w| is(a, w))
            || (group && is(a, "CLAIM"));
        if valued && left >= 1 {
            j += 1;
        } else if is(a, "STREAMS") && left >= 1 {
            let rest = n - j - 1;
            if rest % 2 != 0 || (group && !has_group) {
                return KeyRoute::Unknown;
            }
            return KeyRoute::Keys((j + 1..j + 1 + rest / 2).collect());
        } else if group && is(a, "GROUP") && left >= 2 {
            has_group = true;
            j += 2;
        } else if !(group && is(a, "NOACK")) {
            return KeyRoute::Unknown;
        }
        j += 1;
    }
    KeyRoute::Unknown
}

/// `MIGRATE host port key|"" db timeout [COPY] [REPLACE] [AUTH pw | AUTH2 user pw] [KEYS key…]`.
fn migrate(args: &[&[u8]]) -> KeyRoute {
    let n = args.len();
    if n < 6 {
        return KeyRoute::Unknown;
    }
    let mut j = 6;
    while j < n {
        let (a, left) = (args[j], n - j - 1);
        if is(a, "COPY") || is(a, "REPLACE") {
        } else if is(a, "AUTH") && left >= 1 {
            j += 1;
        } else if is(a, "AUTH2") && left >= 2 {
            j += 2;
        } else if is(a, "KEYS") {
            if !args[3].is_empty() || j + 1 == n {
                return KeyRoute::Unknown;
            }
            return KeyRoute::Keys((j + 1..n).collect());
        } else {
            return KeyRoute::Unknown;
        }
        j += 1;
    }
    KeyRoute::Keys(vec![3])
}
