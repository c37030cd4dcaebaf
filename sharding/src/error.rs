//! The crate's one error type, [`ShardingError`].
//!
//! Every error that concerns a record names where the record is: topic, partition and
//! offset. A reader that meets a record it cannot read stops that partition with this
//! error; it never skips the record silently (a skipped result would be a lost result).

use crate::records::RecordError;

/// Everything that can go wrong in the partitioned log, its records, the control log and
/// the balancer.
#[derive(Debug, thiserror::Error)]
pub enum ShardingError {
    /// A record on the log could not be read: foreign, truncated, from a newer build, or
    /// garbled. `source` says which.
    #[error("record at {topic}[{partition}] offset {offset} refused: {source}")]
    Record {
        topic: String,
        partition: u32,
        offset: u64,
        source: RecordError,
    },
    /// A record could not be encoded (a bug: every record type encodes).
    #[error("cannot encode a {kind} record: {source}")]
    Encode {
        kind: &'static str,
        source: rmp_serde::encode::Error,
    },
    /// An epoch marker names another partition than the one it was read from.
    #[error(
        "epoch marker at {topic}[{partition}] offset {offset} names partition {named}: \
         a record copied to the wrong partition"
    )]
    MarkerForeignPartition {
        topic: String,
        partition: u32,
        offset: u64,
        named: u32,
    },
    /// Records were handed to a reader's filter out of log order.
    #[error(
        "record at {topic}[{partition}] offset {offset} out of order: the reader is at {expected}"
    )]
    OutOfOrder {
        topic: String,
        partition: u32,
        offset: u64,
        expected: u64,
    },
    #[error("topic {topic} does not exist")]
    UnknownTopic { topic: String },
    #[error("topic {topic} has {partitions} partitions; partition {partition} does not exist")]
    UnknownPartition {
        topic: String,
        partition: u32,
        partitions: u32,
    },
    /// A topic exists with another partition count than the cluster needs. Never repaired
    /// silently: routing depends on the count.
    #[error("topic {topic} exists with {found} partitions, the cluster needs {wanted}")]
    TopicMismatch {
        topic: String,
        found: u32,
        wanted: u32,
    },
    #[error(
        "read of {topic}[{partition}] from offset {offset}: outside the log ({start}..={end})"
    )]
    OffsetOutOfRange {
        topic: String,
        partition: u32,
        offset: u64,
        start: u64,
        end: u64,
    },
    #[error("append to {topic}[{partition}] refused: {reason}")]
    AppendRefused {
        topic: String,
        partition: u32,
        reason: String,
    },
    /// The in-process log's partition is full (it never trims).
    #[error("in-process log {topic}[{partition}] is full ({limit_bytes} bytes)")]
    LogFull {
        topic: String,
        partition: u32,
        limit_bytes: usize,
    },
    /// The producer's local queue stayed full: back-pressure the caller should pass on.
    #[error("producer queue for {topic}[{partition}] stayed full")]
    Overloaded { topic: String, partition: u32 },
    /// A Kafka client call failed. For an append the records may or may not be in the log:
    /// the caller must stop the partition rather than assume either. (The source is the
    /// Kafka client's error, boxed so that no other crate depends on the client's types.)
    #[error("kafka {op} failed for {target}: {source}")]
    Kafka {
        op: &'static str,
        target: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{op} timed out after {after_ms} ms")]
    Timeout { op: String, after_ms: u64 },
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An operator's move, drain or rebalance that cannot be planned.
    #[error("cannot plan: {0}")]
    Plan(String),
    /// The local broker binary used by tests and the one-machine cluster is missing or did
    /// not start.
    #[error("local broker: {0}")]
    Broker(String),
    #[error("{op}: {source}")]
    Io { op: String, source: std::io::Error },
    /// A blocking task of the Kafka client panicked or was cancelled.
    #[error("background task of {op} failed: {detail}")]
    Task { op: &'static str, detail: String },
}
