//! Integration tests: one binary (link time on two cores), one module per area, real servers throughout.

mod support;

mod client;
mod cluster_fixture;
mod cluster_keys;
mod cluster_source;
mod cluster_target;
mod exact;
mod fault_proxy;
mod fixtures;
mod fullsync;
mod link;
mod master_mode;
mod precheck;
mod proxy;
mod rdb;
mod rdb_bad_input;
mod serve;
mod smoke;
mod soak;
mod status;
mod stream;
mod topologies;
mod twemproxy;
mod verify;
mod verify_sync;
mod versions_sync;
