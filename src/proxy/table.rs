//! What nutcracker (twemproxy 0.5) does with each command of the Redis protocol, as `ferry proxy` must do
//! it before the cutover: which key places the command, which commands are cut per key and merged, which
//! are answered by the proxy, and which close the client's connection (nutcracker's answer to anything it
//! does not support, or to a command with the wrong number of arguments). From twemproxy's
//! `src/proto/nc_redis.c` (the `redis_arg*` classes), checked against Debian's nutcracker 0.5.0.

/// Where a request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Answered by the proxy: `PING`, `QUIT`, `AUTH`.
    Local(Local),
    /// To the server of the key at this argument position, as it is.
    Key(usize),
    /// Cut into one command per server with the keys it holds, the replies merged.
    Split(Split),
    /// No key: to the first server (`COMMAND`, `LOLWUT`).
    Any,
    /// Not supported (or the wrong number of arguments): nutcracker closes the connection.
    Close,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Local {
    Ping,
    Quit,
    Auth,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// `MGET k…`: the values, in the request's key order.
    Mget,
    /// `DEL`, `UNLINK`, `TOUCH` `k…`: the sum of the servers' counts.
    Count,
    /// `MSET k v …`: `+OK` once every server answered it.
    Mset,
}

/// Commands with exactly one key and nothing else (`redis_arg0`).
const ARG0: &[&str] = &[
    "PERSIST", "PTTL", "TTL", "TYPE", "DUMP", "DECR", "GET", "GETDEL", "INCR", "STRLEN", "HGETALL",
    "HKEYS", "HLEN", "HVALS", "LLEN", "SCARD", "SMEMBERS", "ZCARD",
];
/// A key and one argument (`redis_arg1`).
const ARG1: &[&str] = &[
    "EXPIRE",
    "EXPIREAT",
    "PEXPIRE",
    "PEXPIREAT",
    "MOVE",
    "APPEND",
    "DECRBY",
    "GETBIT",
    "GETSET",
    "INCRBY",
    "INCRBYFLOAT",
    "SETNX",
    "HEXISTS",
    "HGET",
    "HSTRLEN",
    "LINDEX",
    "RPOPLPUSH",
    "SISMEMBER",
    "ZRANK",
    "ZREVRANK",
    "ZSCORE",
];
/// A key and two arguments (`redis_arg2`).
const ARG2: &[&str] = &[
    "GETRANGE",
    "PSETEX",
    "SETBIT",
    "SETEX",
    "SETRANGE",
    "HINCRBY",
    "HINCRBYFLOAT",
    "HSETNX",
    "LRANGE",
    "LREM",
    "LSET",
    "LTRIM",
    "SMOVE",
    "ZCOUNT",
    "ZLEXCOUNT",
    "ZINCRBY",
    "ZREMRANGEBYLEX",
    "ZREMRANGEBYRANK",
    "ZREMRANGEBYSCORE",
];
/// A key and three arguments (`redis_arg3`).
const ARG3: &[&str] = &["LINSERT", "LMOVE"];
/// A key and any number of arguments (`redis_argn`).
const ARGN: &[&str] = &[
    "SORT",
    "COPY",
    "BITCOUNT",
    "BITPOS",
    "BITFIELD",
    "EXISTS",
    "GETEX",
    "SET",
    "HDEL",
    "HMGET",
    "HMSET",
    "HSCAN",
    "HSET",
    "HRANDFIELD",
    "LPUSH",
    "LPUSHX",
    "RPUSH",
    "RPUSHX",
    "LPOP",
    "RPOP",
    "LPOS",
    "SADD",
    "SDIFF",
    "SDIFFSTORE",
    "SINTER",
    "SINTERSTORE",
    "SREM",
    "SUNION",
    "SUNIONSTORE",
    "SRANDMEMBER",
    "SSCAN",
    "SPOP",
    "SMISMEMBER",
    "PFADD",
    "PFMERGE",
    "PFCOUNT",
    "ZADD",
    "ZDIFF",
    "ZDIFFSTORE",
    "ZINTER",
    "ZINTERSTORE",
    "ZMSCORE",
    "ZPOPMAX",
    "ZPOPMIN",
    "ZRANDMEMBER",
    "ZRANGE",
    "ZRANGEBYLEX",
    "ZRANGEBYSCORE",
    "ZRANGESTORE",
    "ZREM",
    "ZREVRANGE",
    "ZREVRANGEBYLEX",
    "ZREVRANGEBYSCORE",
    "ZSCAN",
    "ZUNION",
    "ZUNIONSTORE",
    "GEODIST",
    "GEOPOS",
    "GEOHASH",
    "GEOADD",
    "GEORADIUS",
    "GEORADIUSBYMEMBER",
    "GEOSEARCH",
    "GEOSEARCHSTORE",
    "RESTORE",
];

/// Commands that only read (the rest may write: they wait during a cutover's write pause).
const READS: &[&str] = &[
    "PTTL",
    "TTL",
    "TYPE",
    "DUMP",
    "GET",
    "STRLEN",
    "HGETALL",
    "HKEYS",
    "HLEN",
    "HVALS",
    "LLEN",
    "SCARD",
    "SMEMBERS",
    "ZCARD",
    "GETBIT",
    "HEXISTS",
    "HGET",
    "HSTRLEN",
    "LINDEX",
    "SISMEMBER",
    "ZRANK",
    "ZREVRANK",
    "ZSCORE",
    "GETRANGE",
    "LRANGE",
    "ZCOUNT",
    "ZLEXCOUNT",
    "BITCOUNT",
    "BITPOS",
    "EXISTS",
    "HMGET",
    "HSCAN",
    "HRANDFIELD",
    "LPOS",
    "SDIFF",
    "SINTER",
    "SUNION",
    "SRANDMEMBER",
    "SSCAN",
    "SMISMEMBER",
    "PFCOUNT",
    "ZDIFF",
    "ZINTER",
    "ZMSCORE",
    "ZRANDMEMBER",
    "ZRANGE",
    "ZRANGEBYLEX",
    "ZRANGEBYSCORE",
    "ZREVRANGE",
    "ZREVRANGEBYLEX",
    "ZREVRANGEBYSCORE",
    "ZSCAN",
    "ZUNION",
    "GEODIST",
    "GEOPOS",
    "GEOHASH",
    "GEOSEARCH",
    "MGET",
    "TOUCH",
    "COMMAND",
    "LOLWUT",
    "PING",
    "QUIT",
    "AUTH",
];

fn is(list: &[&str], name: &str) -> bool {
    list.contains(&name)
}

/// Where nutcracker sends `args` (the command name already upper-cased in `name`).
pub fn route(name: &str, args: &[Vec<u8>]) -> Route {
    let n = args.len();
    match name {
        "PING" | "QUIT" if n == 1 => Route::Local(if name == "PING" {
            Local::Ping
        } else {
            Local::Quit
        }),
        "AUTH" if n == 2 => Route::Local(Local::Auth),
        "COMMAND" if n == 1 => Route::Any,
        "LOLWUT" => Route::Any,
        _ if is(ARG0, name) => key_if(n == 2),
        _ if is(ARG1, name) => key_if(n == 3),
        _ if is(ARG2, name) => key_if(n == 4),
        _ if is(ARG3, name) => key_if(n == 5),
        _ if is(ARGN, name) => key_if(n >= 2),
        "MGET" if n >= 2 => Route::Split(Split::Mget),
        "DEL" | "UNLINK" | "TOUCH" if n >= 2 => Route::Split(Split::Count),
        "MSET" if n >= 3 && n % 2 == 1 => Route::Split(Split::Mset),
        "EVAL" | "EVALSHA" if n >= 4 => {
            // The first of `numkeys` keys places the script; a script without keys is not supported.
            match std::str::from_utf8(&args[2])
                .ok()
                .and_then(|k| k.parse::<usize>().ok())
            {
                Some(k) if k >= 1 && 3 + k <= n => Route::Key(3),
                _ => Route::Close,
            }
        }
        _ => Route::Close,
    }
}

fn key_if(ok: bool) -> Route {
    if ok {
        Route::Key(1)
    } else {
        Route::Close
    }
}

/// Whether `name` only reads (reads keep flowing to the sources during a cutover's write pause).
pub fn is_read(name: &str) -> bool {
    is(READS, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(args: &[&str]) -> Route {
        let a: Vec<Vec<u8>> = args.iter().map(|s| s.as_bytes().to_vec()).collect();
        route(&args[0].to_ascii_uppercase(), &a)
    }

    #[test]
    fn routes_as_nutcracker_does() {
        assert_eq!(r(&["GET", "a"]), Route::Key(1));
        assert_eq!(r(&["GET", "a", "b"]), Route::Close);
        assert_eq!(r(&["EXPIRE", "a"]), Route::Close);
        assert_eq!(r(&["SET", "a", "1", "EX", "5"]), Route::Key(1));
        assert_eq!(r(&["MGET", "a", "b"]), Route::Split(Split::Mget));
        assert_eq!(r(&["MSET", "a"]), Route::Close);
        assert_eq!(r(&["MSET", "a", "1", "b", "2"]), Route::Split(Split::Mset));
        assert_eq!(r(&["DEL", "a", "b"]), Route::Split(Split::Count));
        assert_eq!(r(&["EVAL", "return 1", "0"]), Route::Close);
        assert_eq!(r(&["EVAL", "return 1", "1", "k"]), Route::Key(3));
        assert_eq!(r(&["EVAL", "return 1", "2", "k"]), Route::Close);
        assert_eq!(r(&["PING"]), Route::Local(Local::Ping));
        assert_eq!(r(&["PING", "x"]), Route::Close);
        for unsupported in [
            "KEYS", "SELECT", "INFO", "FLUSHALL", "RENAME", "SCAN", "MULTI", "HELLO", "BITOP",
        ] {
            assert_eq!(r(&[unsupported, "x"]), Route::Close, "{unsupported}");
        }
        assert!(is_read("GET") && is_read("MGET") && !is_read("INCR") && !is_read("EVAL"));
    }
}
