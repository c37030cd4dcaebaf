//! Partition math for the hub: which partition owns a transfer, which partition is an
//! account's home.
//!
//! Everything here is a pure function of its arguments and is pinned by golden vectors:
//! changing a single output would move live transfers to a partition that has never heard
//! of them, so the functions below must never change for an existing cluster.

pub mod routing;

pub use routing::{home_partition, route_hash, transfer_partition, PartitionCount, PARTITIONS_MAX};
