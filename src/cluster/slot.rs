//! Key slots: which of the 16384 slots a key belongs to, and names of our own that land in a given slot.
//!
//! [`key_slot`] is `keyHashSlot` of Redis' `src/cluster.h`: CRC-16/XMODEM of the key, or of its hash tag,
//! masked to 14 bits. The hash tag rule, exactly:
//!
//! - the tag starts after the **first** `{` of the key;
//! - it ends before the first `}` after that `{`;
//! - with no `}` after the first `{`, or nothing between them (`{}`), the whole key is hashed.
//!
//! So `a{b}{c}` hashes `b`, `{{a}}` hashes `{a`, `{}a{b}` hashes the whole key (the first `{` decides, and
//! its tag is empty), and `a}{b` hashes `b`.
//!
//! [`slot_tag`] is the other direction: a short tag of letters and digits for every slot, so ferry can name
//! a key of its own that lives in the same slot (the same node, the same `MULTI`) as a user's key.

use std::sync::OnceLock;

use crc::{Crc, CRC_16_XMODEM};

/// How many slots a Redis Cluster has.
pub const SLOTS: usize = 16384;

/// CRC-16/XMODEM (polynomial 0x1021, initial 0, no reflection), Redis' `crc16()` of `src/crc16.c`.
const CRC16: Crc<u16> = Crc::<u16>::new(&CRC_16_XMODEM);

/// The low 14 bits: `SLOTS - 1`.
const SLOT_MASK: u16 = (SLOTS - 1) as u16;

/// The part of `key` that is hashed: its hash tag when it has a non-empty one, else the whole key.
pub fn hashed_part(key: &[u8]) -> &[u8] {
    let Some(open) = memchr::memchr(b'{', key) else {
        return key;
    };
    match memchr::memchr(b'}', &key[open + 1..]) {
        // `}` right after `{`: an empty tag, so the whole key.
        Some(0) | None => key,
        Some(len) => &key[open + 1..open + 1 + len],
    }
}

/// The slot of `key`, as `CLUSTER KEYSLOT` answers it.
pub fn key_slot(key: &[u8]) -> u16 {
    CRC16.checksum(hashed_part(key)) & SLOT_MASK
}

/// What a tag may be made of, in the order they are tried: digits, then upper case, then lower case (the
/// ASCII order, so among equally short tags the smallest byte string wins).
const TAG_ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The longest tag the table may hold. Three characters already reach every slot (62^3 = 238328 strings
/// for 16384 slots; the table build checks it); a fourth is room to spare.
const MAX_TAG: usize = 4;

/// One slot's tag: the bytes and how many of them are used.
pub(super) type Tag = ([u8; MAX_TAG], u8);

/// The tag of every slot, built on first use.
static TAGS: OnceLock<Vec<Tag>> = OnceLock::new();

/// The shortest tag `T` of ASCII letters and digits with `key_slot(b"{T}") == slot` (the smallest byte
/// string among the shortest ones). A table of all 16384 tags is built on the first call (a few ms).
///
/// Panics if `slot >= 16384`.
pub fn slot_tag(slot: u16) -> &'static [u8] {
    let (bytes, len) = &TAGS.get_or_init(build_tags)[usize::from(slot)];
    &bytes[..usize::from(*len)]
}

/// Every string over [`TAG_ALPHABET`], shortest first and in alphabet order within a length, until every
/// slot has its first hit.
pub(super) fn build_tags() -> Vec<Tag> {
    let mut tags: Vec<Tag> = vec![([0; MAX_TAG], 0); SLOTS];
    let mut missing = SLOTS;
    let mut digits = [0usize; MAX_TAG];
    let mut buf = [0u8; MAX_TAG];
    for len in 1..=MAX_TAG {
        digits[..len].fill(0);
        'strings: loop {
            for (b, &d) in buf[..len].iter_mut().zip(&digits[..len]) {
                *b = TAG_ALPHABET[d];
            }
            let slot = usize::from(CRC16.checksum(&buf[..len]) & SLOT_MASK);
            if tags[slot].1 == 0 {
                tags[slot] = (buf, len as u8);
                missing -= 1;
                if missing == 0 {
                    return tags;
                }
            }
            // The next string of this length: count in base 62, the last character fastest.
            for i in (0..len).rev() {
                digits[i] += 1;
                if digits[i] < TAG_ALPHABET.len() {
                    continue 'strings;
                }
                digits[i] = 0;
            }
            break;
        }
    }
    panic!("{missing} slots have no tag of at most {MAX_TAG} characters");
}

/// A key name of our own in `slot`: `prefix` + `{` + [`slot_tag`] + `}`.
///
/// `prefix` must not contain `{` (the first `{` of a key decides its tag; checked in debug builds).
pub fn key_in_slot(prefix: &[u8], slot: u16) -> Vec<u8> {
    debug_assert!(
        !prefix.contains(&b'{'),
        "a prefix with '{{' would decide the key's slot itself"
    );
    let tag = slot_tag(slot);
    let mut key = Vec::with_capacity(prefix.len() + tag.len() + 2);
    key.extend_from_slice(prefix);
    key.push(b'{');
    key.extend_from_slice(tag);
    key.push(b'}');
    key
}

/// A key name of our own in the same slot as `key` (see [`key_in_slot`]; the same rule for `prefix`).
pub fn same_slot_name(prefix: &[u8], key: &[u8]) -> Vec<u8> {
    key_in_slot(prefix, key_slot(key))
}
