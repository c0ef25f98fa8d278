//! Key placement: hash tags (`nc_server.c`, `server_pool_idx`) and the distributions of twemproxy's
//! `hashkit` (`nc_ketama.c`, `nc_modula.c`, `nc_random.c`).
//!
//! Two facts of twemproxy that a re-implementation easily misses:
//! - **Server order.** nutcracker sorts a pool's servers by name (`conf_validate_server`: by length, then
//!   bytewise) before building its distribution, so modula's `hash % total_weight` slots follow that
//!   order, not the file's. [`Router`] builds in nutcracker's order and answers indexes into
//!   [`Pool::servers`] (file order).
//! - **Ejected hosts.** With `auto_eject_hosts: true`, nutcracker drops a failing server from the
//!   distribution for `server_retry_timeout` and re-places its keys on the others. ferry cannot see that
//!   state: a [`Router`] always places keys as if every server were live.

use std::fmt;

use super::config::Pool;
use super::hash::{md5_digest, CChar, Hash};
use super::TwemproxyError;

/// A twemproxy `distribution:` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Distribution {
    /// Consistent hashing on an MD5 continuum, 160 points per server scaled by weight.
    Ketama,
    /// `hash % total_weight`, each server owning `weight` consecutive slots.
    Modula,
    /// A random server for each request: not a placement at all.
    Random,
}

impl Distribution {
    pub const ALL: [Distribution; 3] = [
        Distribution::Ketama,
        Distribution::Modula,
        Distribution::Random,
    ];

    /// The name used in a nutcracker config.
    pub fn name(self) -> &'static str {
        match self {
            Distribution::Ketama => "ketama",
            Distribution::Modula => "modula",
            Distribution::Random => "random",
        }
    }

    /// The distribution named exactly `name`.
    pub fn from_name(name: &str) -> Option<Distribution> {
        Distribution::ALL.into_iter().find(|d| d.name() == name)
    }
}

impl fmt::Display for Distribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The part of `key` that twemproxy hashes: with a hash tag `[open, close]`, the bytes after the first
/// `open` up to the first `close` after it — if both are present and that part is not empty; else the
/// whole key.
pub fn hash_tag_slice(key: &[u8], tag: Option<[u8; 2]>) -> &[u8] {
    let Some([open, close]) = tag else {
        return key;
    };
    let Some(start) = key.iter().position(|&b| b == open) else {
        return key;
    };
    match key[start + 1..].iter().position(|&b| b == close) {
        Some(len) if len > 0 => &key[start + 1..start + 1 + len],
        _ => key,
    }
}

const KETAMA_POINTS_PER_SERVER: f32 = 160.0;
/// `KETAMA_MAX_HOSTLEN - 1`: snprintf's limit on the `name-index` string.
const KETAMA_MAX_HOST: usize = 272;

#[derive(Clone, Debug)]
enum Placement {
    /// One server: nutcracker skips hashing.
    Single,
    /// Continuum points `(value, server index)`, sorted by value.
    Ketama(Vec<(u32, usize)>),
    /// Cumulative weights in nutcracker's server order: slot `s` belongs to the first entry whose end
    /// exceeds it.
    Modula { ends: Vec<(u64, usize)>, total: u32 },
}

/// Where twemproxy puts a key: built from a [`Pool`], answers an index into `pool.servers`.
#[derive(Clone, Debug)]
pub struct Router {
    hash: Hash,
    hash_tag: Option<[u8; 2]>,
    c_char: CChar,
    placement: Placement,
}

impl Router {
    /// The placement of `pool`, as nutcracker computes it with every server live. Refused for
    /// `distribution: random`, whose placement is not determined.
    pub fn new(pool: &Pool) -> Result<Router, TwemproxyError> {
        if pool.distribution == Distribution::Random {
            return Err(TwemproxyError::RandomDistribution {
                pool: pool.name.clone(),
            });
        }
        // nutcracker's server order: by key name, shorter first, then bytewise.
        let mut order: Vec<usize> = (0..pool.servers.len()).collect();
        order.sort_by(|&a, &b| {
            let (a, b) = (
                pool.servers[a].key_name().as_bytes(),
                pool.servers[b].key_name().as_bytes(),
            );
            a.len().cmp(&b.len()).then(a.cmp(b))
        });
        let placement = if pool.servers.len() == 1 {
            Placement::Single
        } else {
            match pool.distribution {
                Distribution::Ketama => Placement::Ketama(ketama_continuum(pool, &order)),
                Distribution::Modula => {
                    let mut end = 0u64;
                    let ends = order
                        .iter()
                        .map(|&i| {
                            end += u64::from(pool.servers[i].weight);
                            (end, i)
                        })
                        .collect();
                    // nutcracker counts slots in a uint32_t.
                    let total = pool
                        .servers
                        .iter()
                        .fold(0u32, |t, s| t.wrapping_add(s.weight));
                    Placement::Modula { ends, total }
                }
                Distribution::Random => unreachable!("refused above"),
            }
        };
        Ok(Router {
            hash: pool.hash,
            hash_tag: pool.hash_tag,
            c_char: CChar::Signed,
            placement,
        })
    }

    /// Hash as a nutcracker built with this `char` signedness (default: signed, as on x86_64).
    pub fn with_c_char(mut self, c: CChar) -> Router {
        self.c_char = c;
        self
    }

    /// The value nutcracker's distribution receives for `key`: the hash of its tagged part, or 0 for an
    /// empty key.
    pub fn hash_of(&self, key: &[u8]) -> u32 {
        let k = hash_tag_slice(key, self.hash_tag);
        if k.is_empty() {
            0
        } else {
            self.hash.hash_as(k, self.c_char)
        }
    }

    /// The index into `pool.servers` of the server that holds `key`.
    pub fn server_for(&self, key: &[u8]) -> usize {
        match &self.placement {
            Placement::Single => 0,
            Placement::Ketama(points) => {
                let h = self.hash_of(key);
                // The first point at or after the hash, wrapping to the first.
                let i = points.partition_point(|&(v, _)| v < h);
                points.get(i).unwrap_or(&points[0]).1
            }
            Placement::Modula { ends, total } => {
                let slot = u64::from(self.hash_of(key) % (*total).max(1));
                let i = ends.partition_point(|&(end, _)| end <= slot);
                ends[i.min(ends.len() - 1)].1
            }
        }
    }
}

/// The ketama continuum as `ketama_update` builds it with every server live.
fn ketama_continuum(pool: &Pool, order: &[usize]) -> Vec<(u32, usize)> {
    let nlive = order.len() as f32;
    let total_weight = pool
        .servers
        .iter()
        .fold(0u32, |t, s| t.wrapping_add(s.weight)) as f32;
    let mut points = Vec::new();
    for &i in order {
        let server = &pool.servers[i];
        let n = ketama_points(server.weight as f32 / total_weight, nlive);
        for p in 0..n / 4 {
            let mut host = format!("{}-{}", server.key_name(), p).into_bytes();
            host.truncate(KETAMA_MAX_HOST);
            let d = md5_digest(&host);
            for x in 0..4 {
                let value =
                    u32::from_le_bytes([d[4 * x], d[4 * x + 1], d[4 * x + 2], d[4 * x + 3]]);
                points.push((value, i));
            }
        }
    }
    // qsort by value; equal values (a 32-bit collision) keep build order, as glibc's merge sort does.
    points.sort_by_key(|&(v, _)| v);
    points
}

/// Points for a server with share `pct` of the weight among `nlive` servers, in C's float arithmetic:
/// `floorf(pct * 160 / 4 * (float)nlive + 0.0000000001) * 4` — the sum is done in double and rounded
/// back to float for `floorf`.
fn ketama_points(pct: f32, nlive: f32) -> u32 {
    let x = pct * KETAMA_POINTS_PER_SERVER / 4.0 * nlive;
    let x = (f64::from(x) + 0.000_000_000_1) as f32;
    (x.floor() * 4.0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::twemproxy::TwemproxyConfig;

    fn pool(dist: &str, hash: &str, tag: Option<&str>, servers: &[&str]) -> Pool {
        let mut y = format!(
            "p:\n  listen: 127.0.0.1:1\n  redis: true\n  distribution: {dist}\n  hash: {hash}\n"
        );
        if let Some(t) = tag {
            y.push_str(&format!("  hash_tag: \"{t}\"\n"));
        }
        y.push_str("  servers:\n");
        for s in servers {
            y.push_str(&format!("   - {s}\n"));
        }
        TwemproxyConfig::parse(&y, "t.yml").unwrap().pools()[0].clone()
    }

    #[test]
    fn hash_tags_as_nc_server_c() {
        let t = Some(*b"{}");
        assert_eq!(hash_tag_slice(b"{user1}:a", t), b"user1");
        assert_eq!(hash_tag_slice(b"x{a}{b}", t), b"a");
        assert_eq!(
            hash_tag_slice(b"{}a{b}", t),
            b"{}a{b}",
            "empty first tag: whole key"
        );
        assert_eq!(hash_tag_slice(b"a{b", t), b"a{b");
        assert_eq!(hash_tag_slice(b"a}b{", t), b"a}b{");
        assert_eq!(hash_tag_slice(b"}{x}", t), b"x");
        assert_eq!(hash_tag_slice(b"{{x}", t), b"{x");
        assert_eq!(hash_tag_slice(b"{user1}:a", None), b"{user1}:a");
        let same = Some(*b"$$");
        assert_eq!(hash_tag_slice(b"a$b$c", same), b"b");
        assert_eq!(hash_tag_slice(b"a$$c", same), b"a$$c");
    }

    #[test]
    fn ketama_points_follow_weight_in_float() {
        // Equal weights: 160 points each, whatever the count.
        for n in 1..=10 {
            assert_eq!(ketama_points(1.0 / n as f32, n as f32), 160, "n={n}");
        }
        // 1:2:3 → 40*3*pct, floored to a multiple of 4.
        assert_eq!(ketama_points(1.0 / 6.0, 3.0), 80);
        assert_eq!(ketama_points(2.0 / 6.0, 3.0), 160);
        assert_eq!(ketama_points(3.0 / 6.0, 3.0), 240);
        // A tiny weight gets no point at all (1 of 1001 over 2 servers).
        assert_eq!(ketama_points(1.0 / 1001.0, 2.0), 0);
        let p = pool("ketama", "md5", None, &["h:1:1 a", "h:2:1000 b"]);
        let r = Router::new(&p).unwrap();
        for i in 0..200u32 {
            assert_eq!(r.server_for(format!("k{i}").as_bytes()), 1);
        }
    }

    #[test]
    fn ketama_continuum_size_and_order() {
        let p = pool(
            "ketama",
            "fnv1a_64",
            None,
            &["h:1:1 a", "h:2:2 b", "h:3:3 c"],
        );
        let order = [0, 1, 2];
        let c = ketama_continuum(&p, &order);
        assert_eq!(c.len(), 80 + 160 + 240);
        assert!(c.windows(2).all(|w| w[0].0 <= w[1].0));
        // The first point of server "a" is md5("a-0") read little-endian, word 0.
        let d = md5_digest(b"a-0");
        let v = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
        assert!(c.contains(&(v, 0)));
    }

    #[test]
    fn modula_uses_nutcrackers_server_order_and_weights() {
        // File order b, aa, a; nutcracker's order (length, then bytes): a, b, aa.
        let p = pool(
            "modula",
            "crc32a",
            None,
            &["h:1:2 b", "h:2:1 aa", "h:3:3 a"],
        );
        let r = Router::new(&p).unwrap();
        // Slots of hash % 6: a (file 2) owns 0..3, b (file 0) owns 3..5, aa (file 1) owns 5.
        let want = [2, 2, 2, 0, 0, 1];
        let mut seen = [false; 6];
        for i in 0..2000u32 {
            let key = format!("key:{i}");
            let slot = (crate::twemproxy::hash::crc32a(key.as_bytes()) % 6) as usize;
            seen[slot] = true;
            assert_eq!(r.server_for(key.as_bytes()), want[slot], "{key}");
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn empty_key_single_server_and_random() {
        let p = pool("modula", "md5", None, &["h:1:1 a", "h:2:1 b", "h:3:1 c"]);
        let r = Router::new(&p).unwrap();
        assert_eq!(r.hash_of(b""), 0);
        assert_eq!(
            r.server_for(b""),
            0,
            "hash 0 → slot 0 → first server by name"
        );
        let one = pool("ketama", "md5", None, &["h:1:1 only"]);
        assert_eq!(Router::new(&one).unwrap().server_for(b"anything"), 0);
        let rnd = pool("random", "md5", None, &["h:1:1 a", "h:2:1 b"]);
        let e = Router::new(&rnd).unwrap_err().to_string();
        assert!(e.contains("random") && e.contains("'p'"), "{e}");
    }

    #[test]
    fn tags_keep_tagged_keys_together() {
        let p = pool(
            "ketama",
            "murmur",
            Some("{}"),
            &["h:1:1 a", "h:2:1 b", "h:3:1 c"],
        );
        let r = Router::new(&p).unwrap();
        let home = r.server_for(b"{user:42}");
        for i in 0..100 {
            assert_eq!(r.server_for(format!("{{user:42}}:{i}").as_bytes()), home);
            assert_eq!(r.server_for(format!("x{i}{{user:42}}y").as_bytes()), home);
        }
    }
}
