//! Cluster redirections followed in place, by the writer pool of a cluster target's node.
//!
//! A node answers a write of a slot it does not serve (any more, or not now) with a redirection, and the
//! write was not applied. What the pool does with it ([`Redirect`]):
//!
//! - **`ASK <slot> <node>`**: the slot is being migrated and the key is already on (or new to) the
//!   importing node: the write goes to that node, after `ASKING`. The job's slot map is unchanged.
//! - **`MOVED <slot> <node>`**: the slot was moved to another master *of the same layout* (a resharding):
//!   the write goes there. Only when the answering node is still a master (a failover is not followed in
//!   place: the promoted replica may lack writes the old master acknowledged; the job continues from each
//!   slot's checkpoint instead) and the new owner is a master the job started with (a new master lacks the
//!   function libraries and gets them before the job continues on a new layout).
//! - **`TRYAGAIN`**, **`CLUSTERDOWN`**, **`LOADING`**: written again after a backoff (transactions only:
//!   a single command of a pipeline may have later commands on the same key already applied behind it).
//!
//! A followed `MOVED` marks the job's layout as outdated ([`Redirects::drifted`]); the job continues on the
//! new layout once the cluster has settled and every source streams (see `sync`), so that the writes of
//! the moved slots stop paying the detour.
//!
//! Why this is exact: `MIGRATE` moves a key atomically, a write that got a redirection was not applied,
//! and the pool sends what was redirected to its new node before it looks at any later reply — every later
//! write of the same slot on the same connection was redirected too, and is sent after it, in order. A
//! stream batch of the in-target checkpoint mode is one transaction per slot, with the slot's checkpoint
//! key inside: wherever it lands, the checkpoint lands with it. A chain of redirections that leads a single
//! command back to the node that first refused it cannot prove that order (a migration was undone under
//! it), so that is a layout change instead.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::endpoint::RedisAddr;

/// The masters of the layout a cluster target's job runs on, shared by its nodes' pools, and whether a
/// write had to follow a `MOVED` since.
#[derive(Debug)]
pub struct Redirects {
    /// The target as the operator named it (for logs).
    label: String,
    /// Every master of the layout, with credentials (the nodes the job writes to).
    masters: Vec<RedisAddr>,
    drifted: AtomicBool,
    /// Which of the two kinds of writes that must not meet in one run happened (see [`Redirects::forward`]).
    met: Mutex<Met>,
}

#[derive(Debug, Default)]
struct Met {
    /// A write went to another node than the one its applier writes to.
    forwarded: bool,
    /// A write that touches a whole node (a flush, a sweep of a source's keys) was applied.
    node_wide: bool,
}

impl Redirects {
    pub fn new(label: impl Into<String>, masters: Vec<RedisAddr>) -> Redirects {
        Redirects {
            label: label.into(),
            masters,
            drifted: AtomicBool::new(false),
            met: Mutex::new(Met::default()),
        }
    }

    /// The master of the layout at `host_port` (as `RedisAddr::host_port` and
    /// [`crate::cluster::Redirect::resolve`] write it), with its credentials.
    pub fn master(&self, host_port: &str) -> Option<&RedisAddr> {
        self.masters.iter().find(|m| m.host_port() == host_port)
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// A write followed a `MOVED`: the job's slot map is outdated.
    pub fn drift(&self) {
        if !self.drifted.swap(true, Ordering::Relaxed) {
            tracing::info!(target_spec = %self.label,
                "slots moved between the cluster target's masters (a resharding): their writes follow the \
                 redirections, and the job continues on the new layout once the cluster has settled");
        }
    }

    /// May a write go to another node than its applier's? Not once a node-wide write (a flush, a sweep)
    /// was applied in this run, and after a yes no node-wide write is.
    ///
    /// Each node's applier applies its source's flushes and sweeps to its own node, at its own pace (the
    /// appliers of one source run a few batches apart), while a forwarded write reaches a node from another
    /// node's applier: a flush of that node could then land between a write and the writes it precedes in
    /// the stream. So in one run either writes are forwarded or node-wide writes are applied, never both:
    /// whichever comes second is a layout change, and the job continues on the new layout from every slot's
    /// checkpoint (exact, as after a failover).
    pub fn forward(&self) -> bool {
        let mut m = self.met.lock().unwrap_or_else(|p| p.into_inner());
        if m.node_wide {
            return false;
        }
        m.forwarded = true;
        true
    }

    /// May a node-wide write (a flush, a sweep) be applied? Not once a write was forwarded in this run (see
    /// [`Redirects::forward`]).
    pub fn node_wide(&self) -> bool {
        let mut m = self.met.lock().unwrap_or_else(|p| p.into_inner());
        if m.forwarded {
            return false;
        }
        m.node_wide = true;
        true
    }

    /// Whether a write followed a `MOVED` since the job started on its layout.
    pub fn drifted(&self) -> bool {
        self.drifted.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masters_are_found_by_the_address_redirections_name() {
        let a = RedisAddr {
            host: "127.0.0.1".into(),
            port: 7001,
            auth: None,
        };
        let r = Redirects::new("cluster://127.0.0.1:7001", vec![a.clone()]);
        assert_eq!(r.master("127.0.0.1:7001"), Some(&a));
        assert_eq!(r.master("127.0.0.1:7002"), None);
        assert!(!r.drifted());
        r.drift();
        assert!(r.drifted());
        // Forwarded writes and node-wide writes never meet in one run.
        assert!(r.forward());
        assert!(!r.node_wide());
        let r = Redirects::new("c", vec![]);
        assert!(r.node_wide());
        assert!(!r.forward());
    }
}
