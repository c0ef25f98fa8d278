//! Twemproxy (nutcracker): its configs and its key placement.
//!
//! - [`config`]: read a nutcracker YAML file into [`Pool`]s — the source form `twemproxy:PATH[#POOL]`
//!   names every redis-server master of a pool ([`Pool::masters`]).
//! - [`hash`]: the twelve key hashes of twemproxy's `hashkit`, bit-exact.
//! - [`dist`]: hash tags and the distributions (ketama, modula; random is refused for targets), so a
//!   [`Router`] can send each key straight to the backend nutcracker would have chosen.
//!
//! The specification is twemproxy's own source (`nc_conf.c`, `nc_server.c`, `hashkit/`); every rule
//! taken from it is noted where it is implemented. `docs/twemproxy.md` is the user-facing account.
//!
//! This module depends only on std, serde/serde_norway, md-5 and [`crate::endpoint`].

pub mod config;
pub mod dist;
pub mod hash;

use std::path::PathBuf;

pub use config::{Listen, Pool, ServerEntry, TwemproxyConfig};
pub use dist::{hash_tag_slice, Distribution, Router};
pub use hash::{CChar, Hash};

/// Why a nutcracker config or pool could not be used. Never contains a `redis_auth` password.
#[derive(Debug, thiserror::Error)]
pub enum TwemproxyError {
    #[error("cannot read twemproxy config {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a nutcracker config: {message}", path.display())]
    Yaml { path: PathBuf, message: String },
    #[error("{}: has no pools", path.display())]
    NoPools { path: PathBuf },
    #[error("{}: pool '{pool}': {key}: '{value}' {reason}", path.display())]
    InvalidValue {
        path: PathBuf,
        pool: String,
        key: String,
        value: String,
        reason: String,
    },
    #[error("{}: pool '{pool}': {message}", path.display())]
    InvalidPool {
        path: PathBuf,
        pool: String,
        message: String,
    },
    #[error("{}: pools '{first}' and '{second}' have the same listen address '{listen}'", path.display())]
    SameListen {
        path: PathBuf,
        first: String,
        second: String,
        listen: String,
    },
    #[error(
        "{} has {} pools ({}): name one, as twemproxy:{}#POOL",
        path.display(), pools.len(), pools.join(", "), path.display()
    )]
    PoolNotChosen { path: PathBuf, pools: Vec<String> },
    #[error("{} has no pool '{name}'; its pools: {}", path.display(), pools.join(", "))]
    NoSuchPool {
        path: PathBuf,
        name: String,
        pools: Vec<String>,
    },
    #[error(
        "pool '{pool}' uses distribution: random, which puts each write on a random server: a key's \
         place is not determined, so ferry cannot write to it as a target (use ketama or modula)"
    )]
    RandomDistribution { pool: String },
    #[error(
        "pool '{pool}': server '{server}' is a unix socket; ferry reaches sources over TCP only \
         (give the master as --source redis://HOST:PORT instead)"
    )]
    UnixSocketServer { pool: String, server: String },
    #[error(
        "pool '{pool}' is a memcached pool (redis: false is the default): it has no Redis masters"
    )]
    NotRedis { pool: String },
}
