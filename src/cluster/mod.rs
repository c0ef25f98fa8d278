//! Redis Cluster, for targets and sources: key slots, the slot map and its discovery, redirections, and
//! which arguments of a command are keys.
//!
//! - [`slot`]: [`key_slot`] (CRC-16/XMODEM with the `{hash tag}` rule of `keyHashSlot`), and names of
//!   ferry's own that land in a chosen slot ([`slot_tag`], [`key_in_slot`], [`same_slot_name`]).
//! - [`map`]: the [`SlotMap`] read from `CLUSTER SHARDS` (7.0+) or `CLUSTER SLOTS` (3.0+),
//!   [`Redirect`]ions (`MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN`, `LOADING`); `target::shard::discover` asks
//!   seed nodes for the map (it needs a client, and this module stays pure).
//! - [`keys`]: [`command_keys`], where the keys of every command a master propagates are, and
//!   [`split_rule`], which multi-key commands can be cut per slot.
//!
//! The specification is Redis' source: `src/cluster.h` (`keyHashSlot`), `src/cluster.c` (`getNodeByQuery`,
//! `clusterRedirectClient`, the `CLUSTER SLOTS`/`SHARDS` replies), `src/commands/*.json` (key specs) and
//! `src/db.c` (the `*GetKeys` functions). Everything here is pure; the tests check it against
//! real servers (`CLUSTER KEYSLOT`, `COMMAND GETKEYS`, the replies of a real cluster).

pub mod keys;
pub mod map;
pub mod slot;

#[cfg(test)]
mod tests;

pub use keys::{command_keys, split_rule, KeyRoute, Split};
pub use map::{join_host_port, split_host_port, Node, Redirect, SlotMap};
pub use slot::{hashed_part, key_in_slot, key_slot, same_slot_name, slot_tag, SLOTS};
