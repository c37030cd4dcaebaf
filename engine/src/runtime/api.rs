//! The runtime's public vocabulary: configuration and the views the hub
//! answers with (transfers, accounts, partitions, metrics).

use crate::command::{TimestampMs, TransferState};
use crate::ids::{AccountKey, FspId, TransferId};
use crate::limits::Limits;
use std::path::PathBuf;

/// Configuration of an in-process hub engine.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub data_dir: PathBuf,
    pub partitions: u32,
    pub limits: Limits,
}

/// What GET /transfers/{id} shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferView {
    pub transfer_id: TransferId,
    pub payer: FspId,
    pub payee: FspId,
    pub state: TransferState,
    pub fulfilment: Option<[u8; 32]>,
    pub completed_ms: Option<TimestampMs>,
}

/// An account's figures summed over all slices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountView {
    pub account: AccountKey,
    pub active: bool,
    pub position: i128,
    pub reserved: i128,
    pub ndc: i128,
    pub liquidity_cover: i128,
    pub limits_set: bool,
    /// `min(ndc, liquidity cover)`.
    pub limit: i128,
    /// Free headroom: the home's bank plus every slice's allowance. Once no headroom is
    /// travelling between partitions (at quiescence) it equals
    /// `limit - position - reserved` exactly (DESIGN §5, invariant 1).
    pub headroom: i128,
}

/// Operator view of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionStatus {
    pub partition: u32,
    pub owner: String,
    pub epoch: u64,
    pub committed_batch: u64,
    pub queue_depth: usize,
    pub applied_commands: u64,
    /// Why the partition stopped, if it did.
    pub stopped: Option<String>,
}

/// Engine-wide counters for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineMetrics {
    pub fsyncs: u64,
    pub batches: u64,
    pub commands: u64,
    pub parked_prepares: u64,
    pub flush_latency_us_total: u64,
    pub denials: u64,
    /// Time spent making sled durable (its flush, then fdatasync of its data file):
    /// registry and epoch writes, and snapshots before WAL segments are deleted;
    /// microseconds.
    pub sled_flush_us_total: u64,
    /// Time the syncer spent in the WAL's fdatasync, microseconds.
    pub fdatasync_us_total: u64,
    /// Results released and not yet acknowledged by the event consumer, all partitions.
    pub outbox_events: u64,
    /// Results shed because an outbox was over `outbox_events_max` (a consumer far
    /// behind); the DFSP can still GET the transfer.
    pub events_shed: u64,
}
