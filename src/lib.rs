//! ferry moves live Redis data.
//!
//! It presents itself to each source master as a replica (`PSYNC`), receives the RDB snapshot and then the
//! replication command stream, and applies both to one or more targets through a pipelined writer pool.
//!
//! # Layout
//! One module per layer of the data path (see `docs/architecture.md`):
//!
//! - [`resp`]: RESP2 wire format — the zero-copy command decoder used on the replication stream (exact byte
//!   spans), the reply parser used by every client connection, and command encoding.
//! - [`rdb`]: the streaming RDB decoder (fed with chunks, yields entries with their raw serialized bytes),
//!   value decoding for the re-encode path, DUMP-payload framing, CRC64 and LZF.
//! - [`repl`]: the replication link to one source master: handshake, `PSYNC`, RDB transfer (disk and
//!   diskless), command stream, `REPLCONF ACK`. It knows nothing about targets.
//! - [`spool`]: the byte spool between the link and the consumer: memory first, then disk, so the master is
//!   never made to wait for the target.
//! - [`source`]: source kinds (`redis://` master, `rdb:` file) turned into one stream of events.
//! - [`apply`]: the only place that knows what a write means: RESTORE vs native re-encoding, big-key
//!   chunking, db tracking, expiry handling.
//! - [`target`]: connections to targets, pipelining, reply checking in order, reconnects, error accounting;
//!   [`target::client::Client`], the one connection type for everything but the data path (prechecks,
//!   administrative commands, `ferry verify`'s pipelined reads); write latency ([`target::latency`]).
//! - [`info`]: the one parser of `INFO` replies (fields, sections, keyspace); [`target::ServerInfo`] is the
//!   typed summary built from it.
//! - [`checkpoint`]: per-source replication position, written atomically, for resume.
//! - [`endpoint`]: parsing of `redis://`, `cluster://`, `rdb:`, `twemproxy:` endpoints, and the [`endpoint::Secret`] type
//!   that never prints.
//! - [`job`]: the job plan: `ferry sync`'s configuration, its sources with twemproxy pools and clusters
//!   expanded, and how
//!   each source tells its keys on a shared target; the names of ferry's own keys. Below `sync`,
//!   `precheck`, `source` and `verify`.
//! - [`keyset`]: an exact, disk-backed set of (db, key) for key ownership after full resyncs and RDB loads.
//! - [`master`]: master mode (`--apply replication`): ferry as the target's master — one merged RDB from
//!   every source's snapshot, one merged command stream, the target's ACKs mapped back to each source.
//! - [`sync`]: the `ferry sync` job wiring sources → apply → targets with shutdown and exit status.
//! - [`precheck`]: `ferry check` and the checks `ferry sync` runs before any write.
//! - [`verify`]: `ferry verify`, the key-by-key proof of a copy.
//! - [`status`]: the metrics registry, `/status` `/metrics` `/healthz`, progress bars and summary logs. It
//!   reads the other layers' counters; only `sync`, `source` and `cli` import it (to register and draw).
//! - [`twemproxy`]: nutcracker configs and nutcracker's exact key placement.
//! - [`cluster`]: Redis Cluster: key slots, the slot map and its discovery, redirections, and which
//!   arguments of a command are keys.
//! - [`follow`]: a Redis Cluster *source* while the job runs: which of its masters owns which slot, where
//!   each master is after a failover (its link asks before reconnecting), slots moving between them.
//! - [`signal`]: SIGINT/SIGTERM cancel a job's root token (`sync` and `verify`).
//! - [`cli`]: the command line; only `main` uses it.
//!
//! Imports point down: no two modules import each other (`docs/architecture.md` lists the arrows; the
//! unit test in `src/layout.rs` fails on an import cycle).
#![forbid(unsafe_code)]

pub mod apply;
pub mod checkpoint;
pub mod cli;
pub mod cluster;
pub mod endpoint;
pub mod follow;
pub mod info;
pub mod job;
pub mod keyset;
pub mod master;
pub mod precheck;
pub mod proxy;
pub mod rdb;
pub mod repl;
pub mod resp;
pub mod serve;
pub mod signal;
pub mod source;
pub mod spool;
pub mod status;
pub mod sync;
pub mod target;
pub mod twemproxy;
pub mod verify;

#[cfg(test)]
mod layout;
#[cfg(test)]
mod testutil;
