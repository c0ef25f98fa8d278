//! Replication link tests against real masters.
