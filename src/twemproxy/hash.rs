//! twemproxy's key hash functions (`src/hashkit/` of twemproxy), bit-exact.
//!
//! Each function takes the key bytes (after hash-tag extraction, see [`super::dist::hash_tag_slice`]) and
//! returns the 32-bit value that nutcracker feeds to its distribution. They are written from the C
//! definitions, including their quirks, which are *not* the textbook algorithms:
//!
//! - **C `char` is signed on x86/x86_64.** `one_at_a_time`, the four `fnv*` and `hsieh` (its 3-byte tail)
//!   read key bytes through `const char *`, so a byte ≥ 0x80 enters the hash sign-extended (0xff →
//!   0xffffffff). The plain functions here do the same, which is what a nutcracker built for x86_64
//!   does. On platforms where `char` is unsigned (Linux on aarch64/ARM, POWER, s390x) those hashes differ
//!   for such bytes: use [`Hash::hash_as`] with [`CChar::Unsigned`] for a nutcracker built there.
//! - `fnv1a_64` is computed in 32 bits with the low halves of the 64-bit FNV offset basis and prime
//!   (`0x84222325`, `0x1b3`); `fnv1_64` is real 64-bit FNV-1 truncated to its low 32 bits.
//! - `crc16` is CRC-16/XMODEM's table step without masking the register to 16 bits: the result keeps the
//!   bits shifted above bit 15.
//! - `crc32` is libmemcached's: `((~crc) >> 16) & 0x7fff`; `crc32a` is the standard CRC-32 (zlib's).
//! - `md5` is the first four digest bytes read little-endian.
//! - `hsieh` is SuperFastHash started from 0 (not from the length); `murmur` is MurmurHash2 with seed
//!   `0xdeadbeef * len`; `jenkins` is lookup3 `hashlittle` with initval 13 (little-endian byte order).
//!
//! nutcracker never hashes an empty key (it uses 0) and skips hashing when a pool has one server; that is
//! [`super::dist::Router`]'s business, not these functions'.

use md5::{Digest, Md5};
use std::fmt;

/// How the C compiler that built nutcracker treats `char`: signed on x86/x86_64 (the usual case).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CChar {
    #[default]
    Signed,
    Unsigned,
}

impl CChar {
    /// A key byte as `(uint32_t)(char)b`.
    #[inline]
    fn widen(self, b: u8) -> u32 {
        match self {
            CChar::Signed => b as i8 as i32 as u32,
            CChar::Unsigned => b as u32,
        }
    }
}

/// A twemproxy `hash:` value (variants spelled like the config names).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hash {
    OneAtATime,
    Md5,
    Crc16,
    Crc32,
    Crc32a,
    Fnv1_64,
    Fnv1a_64,
    Fnv1_32,
    Fnv1a_32,
    Hsieh,
    Murmur,
    Jenkins,
}

impl Hash {
    /// Every hash, in twemproxy's `HASH_CODEC` order.
    pub const ALL: [Hash; 12] = [
        Hash::OneAtATime,
        Hash::Md5,
        Hash::Crc16,
        Hash::Crc32,
        Hash::Crc32a,
        Hash::Fnv1_64,
        Hash::Fnv1a_64,
        Hash::Fnv1_32,
        Hash::Fnv1a_32,
        Hash::Hsieh,
        Hash::Murmur,
        Hash::Jenkins,
    ];

    /// The name used in a nutcracker config (`hash: fnv1a_64`).
    pub fn name(self) -> &'static str {
        match self {
            Hash::OneAtATime => "one_at_a_time",
            Hash::Md5 => "md5",
            Hash::Crc16 => "crc16",
            Hash::Crc32 => "crc32",
            Hash::Crc32a => "crc32a",
            Hash::Fnv1_64 => "fnv1_64",
            Hash::Fnv1a_64 => "fnv1a_64",
            Hash::Fnv1_32 => "fnv1_32",
            Hash::Fnv1a_32 => "fnv1a_32",
            Hash::Hsieh => "hsieh",
            Hash::Murmur => "murmur",
            Hash::Jenkins => "jenkins",
        }
    }

    /// The hash named exactly `name` (case-sensitive, as nutcracker compares).
    pub fn from_name(name: &str) -> Option<Hash> {
        Hash::ALL.into_iter().find(|h| h.name() == name)
    }

    /// Hash `key` as a nutcracker built for x86/x86_64 does.
    pub fn hash(self, key: &[u8]) -> u32 {
        self.hash_as(key, CChar::Signed)
    }

    /// Hash `key` as a nutcracker built with the given `char` signedness does.
    pub fn hash_as(self, key: &[u8], c: CChar) -> u32 {
        match self {
            Hash::OneAtATime => one_at_a_time_as(key, c),
            Hash::Md5 => md5(key),
            Hash::Crc16 => crc16(key),
            Hash::Crc32 => crc32(key),
            Hash::Crc32a => crc32a(key),
            Hash::Fnv1_64 => fnv1_64_as(key, c),
            Hash::Fnv1a_64 => fnv1a_64_as(key, c),
            Hash::Fnv1_32 => fnv1_32_as(key, c),
            Hash::Fnv1a_32 => fnv1a_32_as(key, c),
            Hash::Hsieh => hsieh_as(key, c),
            Hash::Murmur => murmur(key),
            Hash::Jenkins => jenkins(key),
        }
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Bob Jenkins' one-at-a-time hash (`nc_one_at_a_time.c`).
pub fn one_at_a_time(key: &[u8]) -> u32 {
    one_at_a_time_as(key, CChar::Signed)
}

fn one_at_a_time_as(key: &[u8], c: CChar) -> u32 {
    let mut v: u32 = 0;
    for &b in key {
        v = v.wrapping_add(c.widen(b));
        v = v.wrapping_add(v << 10);
        v ^= v >> 6;
    }
    v = v.wrapping_add(v << 3);
    v ^= v >> 11;
    v.wrapping_add(v << 15)
}

/// The MD5 digest of `data`.
pub(crate) fn md5_digest(data: &[u8]) -> [u8; 16] {
    Md5::digest(data).into()
}

/// MD5, first four digest bytes little-endian (`nc_md5.c`, `hash_md5`).
pub fn md5(key: &[u8]) -> u32 {
    let d = md5_digest(key);
    u32::from_le_bytes([d[0], d[1], d[2], d[3]])
}

const fn crc16_table() -> [u16; 256] {
    // CRC-16/XMODEM (CCITT polynomial 0x1021, not reflected).
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        t[i] = crc;
        i += 1;
    }
    t
}

const fn crc32_table() -> [u32; 256] {
    // The reflected CRC-32 polynomial 0xedb88320 (zlib's table).
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
            bit += 1;
        }
        t[i] = crc;
        i += 1;
    }
    t
}

static CRC16_TABLE: [u16; 256] = crc16_table();
static CRC32_TABLE: [u32; 256] = crc32_table();

/// twemproxy's crc16 (`nc_crc16.c`): the XMODEM table step on a 32-bit register that is never masked.
pub fn crc16(key: &[u8]) -> u32 {
    let mut crc: u32 = 0;
    for &b in key {
        crc = (crc << 8) ^ u32::from(CRC16_TABLE[(((crc >> 8) ^ u32::from(b)) & 0xff) as usize]);
    }
    crc
}

/// libmemcached-compatible crc32 (`nc_crc32.c`, `hash_crc32`): 15 bits of the CRC-32.
pub fn crc32(key: &[u8]) -> u32 {
    let mut crc: u32 = u32::MAX;
    for &b in key {
        crc = (crc >> 8) ^ CRC32_TABLE[((crc ^ u32::from(b)) & 0xff) as usize];
    }
    ((!crc) >> 16) & 0x7fff
}

/// The standard CRC-32 (`nc_crc32.c`, `hash_crc32a`), equal to zlib's `crc32`.
pub fn crc32a(key: &[u8]) -> u32 {
    let mut crc: u32 = !0;
    for &b in key {
        crc = CRC32_TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

const FNV_64_INIT: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_64_PRIME: u64 = 0x0000_0100_0000_01b3;
const FNV_32_INIT: u32 = 2_166_136_261;
const FNV_32_PRIME: u32 = 16_777_619;

/// 64-bit FNV-1, low 32 bits (`hash_fnv1_64`).
pub fn fnv1_64(key: &[u8]) -> u32 {
    fnv1_64_as(key, CChar::Signed)
}

fn fnv1_64_as(key: &[u8], c: CChar) -> u32 {
    let mut h = FNV_64_INIT;
    for &b in key {
        h = h.wrapping_mul(FNV_64_PRIME);
        // `(uint64_t)key[x]`: a signed char sign-extends to all 64 bits.
        h ^= match c {
            CChar::Signed => b as i8 as i64 as u64,
            CChar::Unsigned => u64::from(b),
        };
    }
    h as u32
}

/// twemproxy's "fnv1a_64" (`hash_fnv1a_64`): FNV-1a in 32 bits with the 64-bit constants truncated.
pub fn fnv1a_64(key: &[u8]) -> u32 {
    fnv1a_64_as(key, CChar::Signed)
}

fn fnv1a_64_as(key: &[u8], c: CChar) -> u32 {
    let mut h = FNV_64_INIT as u32;
    for &b in key {
        h ^= c.widen(b);
        h = h.wrapping_mul(FNV_64_PRIME as u32);
    }
    h
}

/// 32-bit FNV-1 (`hash_fnv1_32`).
pub fn fnv1_32(key: &[u8]) -> u32 {
    fnv1_32_as(key, CChar::Signed)
}

fn fnv1_32_as(key: &[u8], c: CChar) -> u32 {
    let mut h = FNV_32_INIT;
    for &b in key {
        h = h.wrapping_mul(FNV_32_PRIME);
        h ^= c.widen(b);
    }
    h
}

/// 32-bit FNV-1a (`hash_fnv1a_32`).
pub fn fnv1a_32(key: &[u8]) -> u32 {
    fnv1a_32_as(key, CChar::Signed)
}

fn fnv1a_32_as(key: &[u8], c: CChar) -> u32 {
    let mut h = FNV_32_INIT;
    for &b in key {
        h ^= c.widen(b);
        h = h.wrapping_mul(FNV_32_PRIME);
    }
    h
}

/// Paul Hsieh's SuperFastHash as twemproxy has it (`nc_hsieh.c`): initial value 0.
pub fn hsieh(key: &[u8]) -> u32 {
    hsieh_as(key, CChar::Signed)
}

fn hsieh_as(key: &[u8], c: CChar) -> u32 {
    if key.is_empty() {
        return 0;
    }
    let get16 = |s: &[u8]| u32::from(s[0]) | (u32::from(s[1]) << 8);
    let mut h: u32 = 0;
    let mut chunks = key.chunks_exact(4);
    for k in &mut chunks {
        h = h.wrapping_add(get16(&k[0..2]));
        let tmp = (get16(&k[2..4]) << 11) ^ h;
        h = (h << 16) ^ tmp;
        h = h.wrapping_add(h >> 11);
    }
    let rest = chunks.remainder();
    match rest.len() {
        3 => {
            h = h.wrapping_add(get16(&rest[0..2]));
            h ^= h << 16;
            // `(uint32_t)key[2] << 18` through `const char *`.
            h ^= c.widen(rest[2]) << 18;
            h = h.wrapping_add(h >> 11);
        }
        2 => {
            h = h.wrapping_add(get16(rest));
            h ^= h << 11;
            h = h.wrapping_add(h >> 17);
        }
        1 => {
            h = h.wrapping_add(u32::from(rest[0]));
            h ^= h << 10;
            h = h.wrapping_add(h >> 1);
        }
        _ => {}
    }
    h ^= h << 3;
    h = h.wrapping_add(h >> 5);
    h ^= h << 4;
    h = h.wrapping_add(h >> 17);
    h ^= h << 25;
    h.wrapping_add(h >> 6)
}

/// MurmurHash2 with seed `0xdeadbeef * len` (`nc_murmur.c`).
pub fn murmur(key: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = key.len() as u32;
    let mut h = 0xdead_beef_u32.wrapping_mul(len) ^ len;
    let mut chunks = key.chunks_exact(4);
    for k in &mut chunks {
        let mut k = u32::from_le_bytes([k[0], k[1], k[2], k[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// Bob Jenkins' lookup3 `hashlittle` with initval 13 (`nc_jenkins.c`).
pub fn jenkins(key: &[u8]) -> u32 {
    hashlittle(key, 13)
}

/// lookup3 `hashlittle(key, len, initval)`, little-endian reading.
fn hashlittle(key: &[u8], initval: u32) -> u32 {
    #[inline]
    fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
        *a = a.wrapping_sub(*c);
        *a ^= c.rotate_left(4);
        *c = c.wrapping_add(*b);
        *b = b.wrapping_sub(*a);
        *b ^= a.rotate_left(6);
        *a = a.wrapping_add(*c);
        *c = c.wrapping_sub(*b);
        *c ^= b.rotate_left(8);
        *b = b.wrapping_add(*a);
        *a = a.wrapping_sub(*c);
        *a ^= c.rotate_left(16);
        *c = c.wrapping_add(*b);
        *b = b.wrapping_sub(*a);
        *b ^= a.rotate_left(19);
        *a = a.wrapping_add(*c);
        *c = c.wrapping_sub(*b);
        *c ^= b.rotate_left(4);
        *b = b.wrapping_add(*a);
    }
    #[inline]
    fn finish(a: &mut u32, b: &mut u32, c: &mut u32) {
        *c ^= *b;
        *c = c.wrapping_sub(b.rotate_left(14));
        *a ^= *c;
        *a = a.wrapping_sub(c.rotate_left(11));
        *b ^= *a;
        *b = b.wrapping_sub(a.rotate_left(25));
        *c ^= *b;
        *c = c.wrapping_sub(b.rotate_left(16));
        *a ^= *c;
        *a = a.wrapping_sub(c.rotate_left(4));
        *b ^= *a;
        *b = b.wrapping_sub(a.rotate_left(14));
        *c ^= *b;
        *c = c.wrapping_sub(b.rotate_left(24));
    }
    // Little-endian word `i` of a block, zero-padded past the end (what the C masks achieve).
    fn word(k: &[u8], i: usize) -> u32 {
        let mut w = [0u8; 4];
        for (j, slot) in w.iter_mut().enumerate() {
            if let Some(&b) = k.get(i * 4 + j) {
                *slot = b;
            }
        }
        u32::from_le_bytes(w)
    }

    let init = 0xdead_beef_u32
        .wrapping_add(key.len() as u32)
        .wrapping_add(initval);
    let (mut a, mut b, mut c) = (init, init, init);
    let mut k = key;
    while k.len() > 12 {
        a = a.wrapping_add(word(k, 0));
        b = b.wrapping_add(word(k, 1));
        c = c.wrapping_add(word(k, 2));
        mix(&mut a, &mut b, &mut c);
        k = &k[12..];
    }
    if k.is_empty() {
        return c;
    }
    a = a.wrapping_add(word(k, 0));
    b = b.wrapping_add(word(k, 1));
    c = c.wrapping_add(word(k, 2));
    finish(&mut a, &mut b, &mut c);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fold a table the way the expected values below were computed from the C source's literal tables
    /// (`acc = acc * 1000003 + entry`, wrapping u64): proves our generated tables equal twemproxy's.
    fn fold(it: impl Iterator<Item = u64>) -> u64 {
        it.fold(0u64, |a, x| a.wrapping_mul(1_000_003).wrapping_add(x))
    }

    #[test]
    fn crc_tables_equal_twemproxys_literal_tables() {
        // Computed with python3 from the 256 hex literals of crc16tab[] in nc_crc16.c and crc32tab[] in
        // nc_crc32.c (twemproxy master, unchanged since 0.4).
        assert_eq!(
            fold(CRC16_TABLE.iter().map(|&x| u64::from(x))),
            0xac79_4226_19ea_a300
        );
        assert_eq!(
            fold(CRC32_TABLE.iter().map(|&x| u64::from(x))),
            0x71fd_a08f_79b5_5b00
        );
    }

    #[test]
    fn names_round_trip() {
        for h in Hash::ALL {
            assert_eq!(Hash::from_name(h.name()), Some(h));
            assert_eq!(h.to_string(), h.name());
        }
        assert_eq!(Hash::from_name("FNV1A_64"), None);
        assert_eq!(Hash::from_name("crc64"), None);
    }

    #[test]
    fn standard_functions_match_published_check_values() {
        // CRC catalogue check values for "123456789": CRC-32 = 0xcbf43926, CRC-16/XMODEM = 0x31c3.
        assert_eq!(crc32a(b"123456789"), 0xcbf4_3926);
        // twemproxy's crc16 keeps bits above 16; the XMODEM value is its low 16 bits.
        assert_eq!(crc16(b"123456789") & 0xffff, 0x31c3);
        // libmemcached crc32 = bits 16..30 of the CRC-32.
        assert_eq!(crc32(b"123456789"), (0xcbf4_3926 >> 16) & 0x7fff);
        // RFC 1321 test suite: MD5("abc") = 900150983cd24fb0d6963f7d28e17f72.
        assert_eq!(md5(b"abc"), 0x9850_0190);
        assert_eq!(md5(b""), u32::from_le_bytes([0xd4, 0x1d, 0x8c, 0xd9]));
        // FNV reference (isthe.com): FNV-1a 32 of "a" = 0xe40c292c, FNV-1 32 of "a" = 0x050c5d7e,
        // FNV-1 64 of "a" = 0xaf63bd4c8601b7be.
        assert_eq!(fnv1a_32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1_32(b"a"), 0x050c_5d7e);
        assert_eq!(fnv1_64(b"a"), 0x8601_b7be);
        // lookup3.c's own self-test (driver5): hashlittle("", 0, 0) = 0xdeadbeef and
        // hashlittle("Four score and seven years ago", 30, 0 / 1) = 0x17770551 / 0xcd628161.
        assert_eq!(hashlittle(b"", 0), 0xdead_beef);
        assert_eq!(
            hashlittle(b"Four score and seven years ago", 0),
            0x1777_0551
        );
        assert_eq!(
            hashlittle(b"Four score and seven years ago", 1),
            0xcd62_8161
        );
        assert_eq!(jenkins(b""), 0xdead_beef_u32.wrapping_add(13));
    }

    // Expected values produced once by compiling twemproxy's own src/hashkit/*.c (master, identical to
    // 0.5.0 there) with gcc on x86_64 into a small driver that printed all twelve hashes, in
    // `Hash::ALL` order, for: the texts of `TEXTS`, and for each length 0..=40 the key whose byte j is
    // `(len * 31 + j * 17 + 200) & 0xff` (mostly bytes >= 0x80, so C's signed `char` shows). The driver
    // also hashed every byte key from an odd address and found the same values (jenkins' and murmur's
    // word-reading paths agree with the byte paths). Neither the C code nor the driver is kept here.
    const TEXTS: [&str; 9] = [
        "",
        "a",
        "abc",
        "foo",
        "123456789",
        "hello world",
        "{user1000}.following",
        "k:1999",
        "Four score and seven years ago",
    ];
    const TEXT_VECTORS: [[u32; 12]; 9] = [
        [
            0x00000000, 0xd98c1dd4, 0x00000000, 0x00000000, 0x00000000, 0x84222325, 0x84222325,
            0x811c9dc5, 0x811c9dc5, 0x00000000, 0x00000000, 0xdeadbefc,
        ],
        [
            0xca2e9442, 0xb975c10c, 0x00007c87, 0x000068b7, 0xe8b7be43, 0x8601b7be, 0x8601ec8c,
            0x050c5d7e, 0xe40c292c, 0x93642e87, 0x4b41757c, 0xe0a38690,
        ],
        [
            0xed131f5b, 0x98500190, 0x7c749dd6, 0x00003524, 0x352441c2, 0x6bafadcb, 0x0541574b,
            0x439c2f4b, 0x1a47e90b, 0xe5186b3a, 0x7b0cc428, 0x8f415600,
        ],
        [
            0x238678dd, 0xdb18bdac, 0x0c3caf96, 0x00000c73, 0x8c736521, 0x6ba13533, 0xfed9d577,
            0x408f5e13, 0xa9f37ed7, 0x76d4d427, 0xc4e0338f, 0x99f84f99,
        ],
        [
            0xc66b58c5, 0x94e7f925, 0x869031c3, 0x00004bf4, 0xcbf43926, 0x2bf916d6, 0x23c6cdfc,
            0x24148816, 0xbb86b11c, 0xe4fc1670, 0xb7760690, 0x19777af6,
        ],
        [
            0x3e4a5a57, 0xbb3bb65e, 0xf2063be4, 0x00000d4a, 0x0d4a1185, 0xb1910e6f, 0x023cd2e7,
            0x548da96f, 0xd58b3fa7, 0x4f799873, 0x5e19153b, 0x153343fb,
        ],
        [
            0x601d07b4, 0x73813d21, 0xb3926fba, 0x0000760c, 0x760c43ef, 0xb60ca1a8, 0x31c09a76,
            0xf8a53b08, 0x25e77276, 0x01de784b, 0xa6e2c735, 0xa8ff9d55,
        ],
        [
            0xde88fc17, 0x36c166b8, 0xd45bcfe4, 0x00000acc, 0x0accba74, 0xce23a662, 0x09a3bbf4,
            0x472007e2, 0xe271bd94, 0xb572a3f2, 0xf825354e, 0x6f026766,
        ],
        [
            0x5554a59f, 0x8482c88b, 0xbe60a5ef, 0x00003cfe, 0x3cfe93b8, 0xce2804c6, 0x1987984c,
            0xadc7c266, 0xdc02398c, 0x0c5fc188, 0x666caeaf, 0x1ab867b2,
        ],
    ];
    const BYTE_VECTORS: [[u32; 12]; 41] = [
        [
            0x00000000, 0xd98c1dd4, 0x00000000, 0x00000000, 0x00000000, 0x84222325, 0x84222325,
            0x811c9dc5, 0x811c9dc5, 0x00000000, 0x00000000, 0xdeadbefc,
        ],
        [
            0xe4f511ba, 0x3e275a9d, 0x00008dc9, 0x00006c6c, 0xec6c9856, 0x79fe4838, 0x79fe1da6,
            0xfaf3a2f8, 0xe1f37b86, 0xc5e0ea2f, 0xf28184a7, 0x026cf35e,
        ],
        [
            0xe82bc958, 0xab13ae72, 0x0060c870, 0x00001450, 0x945030be, 0xb4eb65ac, 0xb4e596ea,
            0x0b768e4c, 0xba7191aa, 0xae9a8b79, 0xaf618837, 0xddff9557,
        ],
        [
            0xc1954ab6, 0x18db0af8, 0x74affa26, 0x00002063, 0xa063185f, 0x6c5d6c2f, 0xb722e3ff,
            0x76f422af, 0xb3ed81ff, 0x72c96d5c, 0x11ebe081, 0x0f623576,
        ],
        [
            0xb25ec54f, 0x0a6ebd45, 0xcb3cbeaf, 0x00002283, 0xa283d493, 0x4fac46f9, 0x5900f171,
            0xf937db99, 0xa31f4611, 0xf5a80131, 0xfa981432, 0xdb693830,
        ],
        [
            0x2f1f287d, 0x419cce01, 0xc7c1d860, 0x000074ba, 0x74ba0ff7, 0xdbe86ecc, 0xa06caffa,
            0xf118cd8c, 0x9ce4e35a, 0xbe78f4c6, 0xa19214b7, 0x6a40c47b,
        ],
        [
            0x42a55d50, 0xc45f2e4f, 0x3702a5d8, 0x00007097, 0xf097cca6, 0x2b032484, 0xfc2446aa,
            0x40799724, 0x9db9e96a, 0x1122431e, 0x5559ad03, 0xdb78ae3a,
        ],
        [
            0xfd5bb1a7, 0x6d38281f, 0x973f305b, 0x00005f9a, 0x5f9ac8cc, 0xf1c68b5f, 0x684a2a67,
            0x287c3c5f, 0xa76980e7, 0x9704da8d, 0xf2dd987e, 0x21827643,
        ],
        [
            0x7991fdd8, 0x9e92d56f, 0x7e88ab34, 0x000028c4, 0xa8c4d04c, 0xb5657495, 0xb191171d,
            0x47c12e35, 0x73fbabbd, 0x2ab84988, 0xa230f128, 0xd42fad7a,
        ],
        [
            0x77e4ea6e, 0x7a8553d5, 0x08b80192, 0x00000afb, 0x8afb5d08, 0xc0e99670, 0x328f2d76,
            0x496247b0, 0x216ba996, 0x6f3f3c64, 0xdaf70c69, 0xaff448ac,
        ],
        [
            0x667f81fd, 0xf7d67029, 0xa740f89a, 0x00001d3b, 0x1d3b3a84, 0x3865622c, 0x5438c462,
            0xcdd1efcc, 0xb1213ce2, 0xddeede15, 0x20843485, 0xca88069f,
        ],
        [
            0x11c67701, 0xe028f9a8, 0x043997d1, 0x00003cbc, 0x3cbc610a, 0xd8fb2d0f, 0x50ac7127,
            0x2f87770f, 0xda8fbda7, 0x2d533c2d, 0x5ec0547e, 0xc8744186,
        ],
        [
            0xb58bd8fb, 0x94d77ee8, 0x9e743eeb, 0x0000138a, 0x138a96a0, 0x4426fea9, 0xe78b9159,
            0x8adccd89, 0xc07cf839, 0xdb21bcaf, 0xaf08a97b, 0x74640054,
        ],
        [
            0x0aa9003a, 0xe0a9f687, 0xb6bcd8d2, 0x00002e7a, 0x2e7a4564, 0x9f486fa4, 0x0e1f92ca,
            0x04fd4c64, 0x16989dea, 0x5883aa53, 0x7ee5d2b5, 0xb4a02614,
        ],
        [
            0x83cfab06, 0x4aef0289, 0x87444f52, 0x00007fb0, 0x7fb0aeff, 0xa5841b14, 0x3888cd42,
            0x6f0d5f74, 0xd25e6982, 0x0a57ed13, 0x52d3083e, 0xe66535bf,
        ],
        [
            0xf4dc7d98, 0x3511b4ae, 0x8c73fa9b, 0x000045e5, 0xc5e59e13, 0x4305580f, 0xafdf9eef,
            0xaba0130f, 0xbf88046f, 0x1a38f17b, 0x2963077f, 0x1a51d914,
        ],
        [
            0xfd6826ab, 0xde430085, 0x8741ccd9, 0x000072aa, 0x72aa3e86, 0x47048d85, 0x8ff89db5,
            0x7a3a19a5, 0x081e89d5, 0x8dbdc896, 0xd4992d4e, 0x7b350578,
        ],
        [
            0x2fc18432, 0x374afa2a, 0x6f30499a, 0x00006a24, 0x6a24281b, 0xedf73568, 0xa9401b16,
            0x422f16a8, 0x6a831d36, 0x09007b33, 0x56f70e25, 0xc573d59d,
        ],
        [
            0xe45b3e3c, 0xf7f0436b, 0x01afc1d3, 0x0000142c, 0x142caff1, 0x02ee24cc, 0x62a336ca,
            0xe39b866c, 0x5ad1aeca, 0x7fc105b4, 0x62e72d71, 0x2fa3f70f,
        ],
        [
            0x8a3b4369, 0x22b59f11, 0x196948ac, 0x000070a0, 0x70a0133f, 0x2c0af86f, 0x33311d6f,
            0x28fa8f6f, 0xaa017bef, 0x5b6f27ce, 0xd62b3bf6, 0xd0208fe9,
        ],
        [
            0xb037b91a, 0xc33daf7e, 0x6cce7cf2, 0x0000070b, 0x070b3c4a, 0x18b09cd9, 0x64ede3e1,
            0x1cc9d1b9, 0xaf694741, 0x7861d605, 0xc3a78907, 0x5f5f1d7f,
        ],
        [
            0xeac393f2, 0x6bb65191, 0xfd58d3f0, 0x00006baa, 0xebaade5e, 0xde2d7e3c, 0x4cbd350a,
            0x0223c8fc, 0x4c248f2a, 0x580f05be, 0x492afcc5, 0xec95a06e,
        ],
        [
            0x5eab6183, 0xe2776030, 0xb490ed23, 0x00005ea9, 0x5ea9f816, 0x92d3a0c4, 0xaf962dea,
            0x40cf93a4, 0x05a0a2aa, 0xc9797536, 0xb263dd36, 0x21c1e19c,
        ],
        [
            0x41672350, 0xb3d2f32a, 0x92cb3ac0, 0x00007934, 0xf9343c1d, 0x1713cd9f, 0xcc3834d7,
            0x434fc41f, 0x95a26fd7, 0x5d364948, 0xb667d92e, 0x40f2c3e1,
        ],
        [
            0x7147666e, 0x965ae2dc, 0x6cdcc245, 0x00003efa, 0xbefab618, 0x1b041255, 0xa58e142d,
            0xf4b79df5, 0x2595714d, 0x2ad5b9d0, 0x6f824f9e, 0x4e77d243,
        ],
        [
            0x207fc3d1, 0x84840ec0, 0x637815de, 0x00007ae2, 0xfae274c4, 0xa45b9460, 0x5811e9e6,
            0xe40a7aa0, 0xd702de86, 0xa9629cd1, 0xb339381c, 0xab2f32c3,
        ],
        [
            0xb99cd334, 0x9c20cb33, 0x7dd62ce5, 0x000007b2, 0x07b2f92c, 0x3a3daa0c, 0xc97cb9e2,
            0x6ffed5ec, 0xda9a0f62, 0xf2653b22, 0xc5b5ab98, 0xa6f4da6c,
        ],
        [
            0xc2f7cc05, 0x946e5f7a, 0xc5a1f860, 0x00004adb, 0xcadb0c11, 0xe6ec1e4f, 0x2eb9e677,
            0x6de4244f, 0x5c08cdb7, 0xa2d20c7e, 0x29e7ddc8, 0x436ca6d7,
        ],
        [
            0x637bbe8a, 0x1a2553ec, 0xbda0b412, 0x00007960, 0xf9606739, 0x506bfc49, 0xf403bd49,
            0x34507fa9, 0xd26f0ea9, 0x2f19723b, 0x87370820, 0x63311bf3,
        ],
        [
            0xa8c001ad, 0xfe1b4507, 0xd6054820, 0x00006278, 0xe2789eeb, 0x3683e2b4, 0x3d106e5a,
            0x4555f334, 0x8190a5ba, 0x8f9d948f, 0x2d6573ac, 0x1cd49ccd,
        ],
        [
            0x9ae399a2, 0xaba11b0c, 0x5111fe02, 0x00003de5, 0xbde57dff, 0xcf835db4, 0x2d0d6aa2,
            0xfc152c54, 0x50cf60e2, 0xf4642d1d, 0xe55591bf, 0x00e8a381,
        ],
        [
            0xe7f36fc1, 0xbe6bb81c, 0x3ab11e95, 0x0000307b, 0x307b3cfa, 0x4da9500f, 0x7a7d093f,
            0x0a069bcf, 0x3ed0883f, 0x1a521ad7, 0x62c0be3f, 0xb5a3a7f9,
        ],
        [
            0x4f2b91a0, 0x27139ade, 0x73cc17fc, 0x0000598b, 0x598b624a, 0xcbb3fde5, 0xf7498bc5,
            0x81176105, 0xcd1ec1e5, 0x714a5694, 0xd88d4b0b, 0xbc5c501a,
        ],
        [
            0xe688f936, 0xb636f606, 0x92b8eb1a, 0x000068b3, 0xe8b3b7f8, 0x575bcc58, 0x9799a7c6,
            0xdae55f98, 0xd2173066, 0x9ab576d7, 0x0e6c09de, 0xba4e7732,
        ],
        [
            0xd71f4369, 0x15b5086e, 0x468fc6b1, 0x00007199, 0x719978a6, 0xb320acac, 0x0f22096a,
            0x1372a28c, 0x8ccada6a, 0x3bab1905, 0xeca5caaf, 0xbfa44886,
        ],
        [
            0x0e294faa, 0x1aab3e29, 0x13a04ac9, 0x0000458f, 0x458f19d1, 0x80c5b62f, 0x6f463d5f,
            0x87274d2f, 0xba27cb1f, 0xe5cfe7fe, 0x5a381e88, 0x3ae0e547,
        ],
        [
            0x7d812e2f, 0x6d09826e, 0xbb049ef4, 0x00002fd3, 0x2fd38cfe, 0x32d341b9, 0x1ba45591,
            0x78bfb719, 0xd7c54171, 0x4521fe39, 0x0a315004, 0x3c239f1d,
        ],
        [
            0x451303ed, 0x82e196dd, 0xf214b5b8, 0x00005d57, 0xdd57c272, 0x2d0c3e6c, 0x9a99209a,
            0x3d697cec, 0xe22a1dfa, 0xf64efb98, 0x862c42b6, 0x19534b53,
        ],
        [
            0x5638a627, 0xaf3520d2, 0x84e3f0d7, 0x000060b2, 0x60b248e5, 0x3d3b9684, 0xc8f1202a,
            0x380589a4, 0xa1856fea, 0x021f5fe6, 0x46d1a1bb, 0xf6d35a96,
        ],
        [
            0xd821bc62, 0x74f4451d, 0x328b9804, 0x00000d67, 0x0d670ac0, 0x952ca31f, 0xa3b262c7,
            0xc957695f, 0xd9b13947, 0x158cb42c, 0x364e6b77, 0x5d8aff72,
        ],
        [
            0x8667ca25, 0x62971e4b, 0x09e306f9, 0x000044ae, 0xc4ae9621, 0x6cc66995, 0x648948bd,
            0xf1647fb5, 0xa2787b5d, 0xbbb7831f, 0x7ef695a0, 0xd99bb3c6,
        ],
    ];

    fn byte_key(len: usize) -> Vec<u8> {
        (0..len)
            .map(|j| ((len * 31 + j * 17 + 200) & 0xff) as u8)
            .collect()
    }

    #[test]
    fn every_hash_matches_twemproxys_c_code() {
        let mut cases: Vec<(Vec<u8>, [u32; 12])> = TEXTS
            .iter()
            .zip(TEXT_VECTORS)
            .map(|(t, v)| (t.as_bytes().to_vec(), v))
            .collect();
        cases.extend(
            BYTE_VECTORS
                .iter()
                .enumerate()
                .map(|(len, v)| (byte_key(len), *v)),
        );
        for (key, expected) in cases {
            for (h, want) in Hash::ALL.into_iter().zip(expected) {
                assert_eq!(
                    h.hash(&key),
                    want,
                    "{h} of {key:02x?}: got {:#010x}, want {want:#010x}",
                    h.hash(&key)
                );
            }
        }
    }

    #[test]
    fn unsigned_char_differs_only_where_c_reads_char() {
        let signed_sensitive = [
            Hash::OneAtATime,
            Hash::Fnv1_64,
            Hash::Fnv1a_64,
            Hash::Fnv1_32,
            Hash::Fnv1a_32,
            Hash::Hsieh,
        ];
        let ascii = b"plain ascii key";
        // Length 7: hsieh's 3-byte tail reads its last byte (0xf7) through `char`.
        let high = [0xa1u8, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6, 0xf7];
        for h in Hash::ALL {
            assert_eq!(h.hash_as(ascii, CChar::Unsigned), h.hash(ascii), "{h}");
            let differs = h.hash_as(&high, CChar::Unsigned) != h.hash(&high);
            assert_eq!(differs, signed_sensitive.contains(&h), "{h} on {high:02x?}");
        }
    }

    #[test]
    fn crc32a_agrees_with_the_crc_crate() {
        let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
        let mut key = Vec::new();
        for i in 0..300u32 {
            key.push((i.wrapping_mul(2_654_435_761) >> 13) as u8);
            assert_eq!(crc32a(&key), crc.checksum(&key), "len {}", key.len());
        }
    }
}
