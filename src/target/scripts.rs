//! Lua script bodies ferry has seen, by SHA1: the source's `EVAL`s and `SCRIPT LOAD`s and its RDB's `lua`
//! AUX fields.
//!
//! A master that replicates scripts verbatim (before Redis 5.0, or `lua-replicate-commands no` up to 6.2)
//! sends `EVAL body …` once and `EVALSHA sha …` afterwards. A target that never ran the `EVAL` — another node
//! of a cluster, a master added to it later, a replica promoted after a failover, a node reached after the
//! job restarted on a new slot layout — answers that `EVALSHA` with `NOSCRIPT`. So every applier `SCRIPT
//! LOAD`s the body before the first `EVALSHA` it sends to its connection, and the bodies live here, in one
//! registry for the whole process: they are named by their content, so one entry serves every source and
//! job, and it outlives the appliers that a link cut or a layout change replaces.
//!
//! Bounded: at most [`MAX_BYTES`] of bodies; past that the oldest are forgotten. An `EVALSHA` of a forgotten
//! script that reaches a node without it fails there with `NOSCRIPT`, counted and logged as every rejected
//! write is — never silent.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;

/// Bodies kept at most (sum of their lengths).
pub const MAX_BYTES: usize = 64 << 20;

struct Registry {
    max_bytes: usize,
    bodies: HashMap<String, Bytes>,
    /// Insertion order, for forgetting the oldest.
    order: VecDeque<String>,
    bytes: usize,
}

impl Registry {
    fn new(max_bytes: usize) -> Registry {
        Registry {
            max_bytes,
            bodies: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
        }
    }

    fn remember(&mut self, sha: &str, body: &Bytes) {
        if self.bodies.contains_key(sha) {
            return;
        }
        self.bytes += body.len();
        self.bodies.insert(sha.to_owned(), body.clone());
        self.order.push_back(sha.to_owned());
        while self.bytes > self.max_bytes && self.order.len() > 1 {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(b) = self.bodies.remove(&old) {
                self.bytes -= b.len();
            }
        }
    }
}

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    static R: OnceLock<Mutex<Registry>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(Registry::new(MAX_BYTES)))
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Lowercase hex SHA1 of a script body, as Redis names scripts.
pub fn sha(body: &[u8]) -> String {
    use sha1::{Digest, Sha1};
    use std::fmt::Write;
    let d = Sha1::digest(body);
    let mut out = String::with_capacity(40);
    for b in d {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Remember `body`; returns its SHA1.
pub fn remember(body: &Bytes) -> String {
    let sha = sha(body);
    registry().remember(&sha, body);
    sha
}

/// The body whose SHA1 is `sha` (lowercase hex), if it was seen.
pub fn body(sha: &str) -> Option<Bytes> {
    registry().bodies.get(sha).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_found_by_the_sha_redis_gives_it() {
        // From the Redis EVALSHA documentation: SCRIPT LOAD "return 1" answers this SHA1.
        let b = Bytes::from_static(b"return 1");
        assert_eq!(remember(&b), "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
        assert_eq!(body("e0e1f9fabfc9d4800c877a703b823ac0578ff8db"), Some(b));
        assert_eq!(body("0000000000000000000000000000000000000000"), None);
    }

    #[test]
    fn the_oldest_bodies_are_forgotten_past_the_bound() {
        let mut r = Registry::new(10);
        let (a, b) = (Bytes::from_static(b"123456"), Bytes::from_static(b"abcdef"));
        r.remember("a", &a);
        r.remember("a", &a);
        assert_eq!(r.bytes, 6, "a body seen twice is kept once");
        r.remember("b", &b);
        assert!(!r.bodies.contains_key("a"), "the oldest body is forgotten");
        assert_eq!(r.bodies.get("b"), Some(&b));
        assert_eq!(r.bytes, 6);
        // One body bigger than the bound is still kept (until the next one arrives).
        r.remember("c", &Bytes::from_static(b"0123456789abc"));
        assert_eq!(r.order.len(), 1);
        assert_eq!(r.bytes, 13);
    }
}
