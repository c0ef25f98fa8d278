//! Sharded targets: a Redis Cluster or a twemproxy pool written directly, one writer per master node.
//!
//! A sharded target is expanded into one *node* per master. Every key belongs to one **group** — a hash
//! slot of the cluster, or a server of the pool — and every group to one node. Each node is written like a
//! standalone target (its own pool, prechecks, checkpoint file), through appliers that keep only the keys of
//! the groups the node owns ([`Shard`]).
//!
//! The in-target checkpoint is kept **per group**: a cluster runs a `MULTI` only within one slot, so every
//! group's commands of a batch form their own transaction with their own checkpoint key, a key of ours in
//! that very group (`<prefix>{<tag>}`): it lives and moves with the group's data. A resume skips, group by
//! group, what that group's checkpoint covers, so it is exact after a crash even when the group changed
//! hands in between.

use std::sync::Arc;

use crate::cluster::SlotMap;
use crate::twemproxy::Router;

/// How keys are placed on the nodes of a sharded target.
#[derive(Debug)]
pub enum Placement {
    /// Redis Cluster: a group is a hash slot; the map as discovered at start.
    Cluster(SlotMap),
    /// A twemproxy pool: a group is a server of the pool (nutcracker's own placement), and each server is
    /// its own node.
    Twemproxy { router: Router, servers: usize },
}

impl Placement {
    /// How many groups there are.
    pub fn groups(&self) -> usize {
        match self {
            Placement::Cluster(_) => crate::cluster::SLOTS,
            Placement::Twemproxy { servers, .. } => *servers,
        }
    }

    /// The group of a key.
    pub fn group_of(&self, key: &[u8]) -> usize {
        match self {
            Placement::Cluster(_) => crate::cluster::key_slot(key) as usize,
            Placement::Twemproxy { router, .. } => router.server_for(key),
        }
    }

    /// The node (index into the target's nodes) that owns a group.
    pub fn node_of(&self, group: usize) -> Option<usize> {
        match self {
            Placement::Cluster(map) => map.owner(group as u16),
            Placement::Twemproxy { .. } => Some(group),
        }
    }

    /// A key name of ours in `group`: `prefix` and a tag that places it there.
    pub fn key_in_group(&self, prefix: &[u8], group: usize) -> Vec<u8> {
        match self {
            Placement::Cluster(_) => crate::cluster::key_in_slot(prefix, group as u16),
            Placement::Twemproxy { .. } => {
                // nutcracker hashes the whole key (or its hash_tag part): search a suffix for this prefix.
                let mut i = 0u64;
                loop {
                    let mut k = prefix.to_vec();
                    k.extend_from_slice(i.to_string().as_bytes());
                    if self.group_of(&k) == group {
                        return k;
                    }
                    i += 1;
                }
            }
        }
    }

    /// A key name of ours in the same group as `key` (for values built under a temporary name and renamed).
    pub fn key_beside(&self, prefix: &[u8], key: &[u8]) -> Vec<u8> {
        self.key_in_group(prefix, self.group_of(key))
    }
}

/// The part of a sharded target one node is: the keys of the groups it owns.
#[derive(Clone, Debug)]
pub struct Shard {
    pub placement: Arc<Placement>,
    /// This node's index.
    pub node: usize,
    /// How many nodes the target has.
    pub nodes: usize,
    /// The target as the operator named it (for logs and errors).
    pub label: String,
    /// The target's one db (0 for a cluster, the pool's `redis_db` for a twemproxy target).
    pub db: u32,
}

impl Shard {
    /// Whether this node holds `key`.
    pub fn owns(&self, key: &[u8]) -> bool {
        self.owns_group(self.placement.group_of(key))
    }

    pub fn owns_group(&self, group: usize) -> bool {
        self.placement.node_of(group) == Some(self.node)
    }

    /// The groups this node owns.
    pub fn groups(&self) -> Vec<usize> {
        (0..self.placement.groups())
            .filter(|g| self.owns_group(*g))
            .collect()
    }

    /// Whether this node is the one that takes keyless commands sent once (PUBLISH).
    pub fn is_first(&self) -> bool {
        self.node == 0
    }
}
