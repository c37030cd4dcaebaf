//! Partitions, ownership and the logs of a hub cluster.
//!
//! # What a cluster is made of
//!
//! All work is split into N partitions, fixed when the cluster is created. A transfer lives
//! on `H(transferId) mod N` ([`routing`]). Three topics carry everything durable
//! ([`ClusterTopics`]):
//!
//! * `commands` (N partitions): what gateways ask of partition p, in the order p applies it;
//! * `events` (N partitions): what partition p decided; the changelog p is rebuilt from;
//! * `control` (1 partition): node heartbeats, assignments of partitions to nodes, drains.
//!
//! They live in a [`PartitionedLog`]: the in-process [`MemoryLog`] for the embedded hub and
//! simulations, or Kafka ([`KafkaLog`]) for clusters. This crate is the only one that knows
//! Kafka; the engine and the gateway see the trait.
//!
//! # Who owns a partition
//!
//! Every node folds the control log the same way ([`Ownership`]): an
//! `Assign{partition, node, epoch, expected_epoch}` applies only if the partition's epoch
//! at that place in the log is `expected_epoch` (compare-and-set by log order), so any
//! number of operators, balancers and failure detectors can append assignments and all
//! nodes agree on the winner. Heartbeats say which nodes are live (a configured timeout),
//! which record formats they read, and which partitions they keep warm standby copies of.
//! The [`balancer`] plans the assignments: spread evenly moving as few partitions as
//! possible, drain a node, fail a dead node's partitions over to live nodes (warm standbys
//! first), move one partition.
//!
//! # Why a stale owner cannot do harm
//!
//! A node can keep writing after it lost a partition (a pause, a network partition, a
//! control log it has not read yet). Kafka's group membership does not stop it. The
//! fence is in the event log itself ([`validity`]): the new owner of p at epoch e first
//! appends an `Epoch(e)` marker to `events[p]`, and a record of `events[p]` counts only if
//! its epoch equals the latest marker before it. The stale owner's later records carry
//! the old epoch and sit after the new marker: every reader ignores them. The only public
//! way to read the event log ([`EventReader`], [`EventFilter`]) applies that rule; the
//! event records have no other public decoder.
//!
//! # A node's life, in calls of this crate
//!
//! 1. Start: `KafkaLog::new`, `create_topics(&topics.specs())` (idempotent; a wrong count is
//!    refused), then an [`Ownership`] caught up with [`ControlLog::catch_up_to_end`].
//! 2. Every heartbeat interval: append a [`Heartbeat`] (the formats it reads, the
//!    partitions it keeps warm), and keep folding the control log.
//! 3. When the fold assigns it partition p at epoch e: [`EventWriter::write_marker`] on
//!    `events[p]`, replay `events[p]` with an [`EventReader`] to the marker's offset + 1
//!    (from its local copy's [`EventCursor`], or from the start), check that the reader's
//!    epoch is e (else a newer owner already fenced: do not take commands), then take
//!    commands and write results with [`EventWriter::append`].
//! 4. When the fold moves p away: stop taking its commands; whatever it still writes is
//!    ignored by every reader.
//! 5. Whoever watches liveness (every node may) plans [`balancer::plan_failover`] on a
//!    [`balancer::ClusterView`] and appends the plan; operators append
//!    [`balancer::plan_move`], [`balancer::plan_drain`] (after a [`Drain`] record) and
//!    [`balancer::plan_rebalance`]. A plan from a stale view is refused by the fold, never
//!    half-applied.
//!
//! # Records
//!
//! Every record this crate writes is the engine's envelope (`0xC1 | kind tag | version |
//! MessagePack body`) with kind tags in `0x40..=0x7F` ([`records`]), pinned by golden
//! bytes, so that tools outside the project can read the logs. A foreign, truncated,
//! garbled or future-version record is refused with an error naming topic, partition and
//! offset ([`ShardingError::Record`]); readers stop there and never skip it.
//!
//! # Testing against Kafka
//!
//! `cargo test -p sharding` runs the Kafka log against librdkafka's built-in mock cluster
//! and against a real Kafka-protocol broker process ([`local_broker`]: `tansu`, installed by
//! `.ci/setup/20-kafka-broker.sh`; the test fails, saying how to install it, if it is
//! missing).

pub mod balancer;
pub mod control_log;
mod error;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod limits;
pub mod local_broker;
pub mod log;
pub mod memory_log;
pub mod ownership;
pub mod records;
pub mod routing;
pub mod validity;

pub use control_log::ControlLog;
pub use error::ShardingError;
#[cfg(feature = "kafka")]
pub use kafka::{KafkaConfig, KafkaLog};
pub use log::{ClusterTopics, LogFuture, LogRecord, PartitionedLog, ReadBound, TopicSpec};
pub use memory_log::MemoryLog;
pub use ownership::{Applied, AssignRefusal, NodeStatus, Ownership, PartitionOwner};
pub use records::{
    encode_epoch_marker, encode_event_frame, Assign, AssignReason, ControlRecord, Drain, Epoch,
    FormatRange, Heartbeat, NodeId, RecordError, RecordKind,
};
pub use routing::{home_partition, route_hash, transfer_partition, PartitionCount, PARTITIONS_MAX};
pub use validity::{
    EventCursor, EventFilter, EventItem, EventReader, EventWriter, MarkerSeen, ValidEvent,
};
