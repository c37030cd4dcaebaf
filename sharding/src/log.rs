//! The partitioned log: the one abstraction the hub's durable traffic goes through.
//!
//! A log holds topics; each topic has a fixed number of partitions; each partition is an
//! ordered sequence of records (opaque bytes) numbered by offset from 0. Four operations:
//!
//! * **create topics** with explicit partition counts. Nothing is ever created implicitly:
//!   a topic created by a typo'd name or with a broker's default partition count would
//!   route transfers to partitions no engine owns.
//! * **append** a batch of records to one partition and learn their offsets *once they are
//!   durable* (for Kafka: acknowledged by all in-sync replicas). Nothing may be
//!   acknowledged to a DFSP before that.
//! * **read** from an offset, bounded by a record count and a byte count, waiting up to a
//!   given time for the first record (so tailing readers need no busy loop).
//! * **end offset**: the offset the next appended record will get.
//!
//! Two implementations: [`crate::MemoryLog`] (in-process, bounded; the embedded hub's
//! wiring, simulations and tests) and [`crate::KafkaLog`] (clusters). Callers hold either
//! as `Arc<dyn PartitionedLog>`: the methods return boxed futures so that the trait stays
//! object-safe (one allocation per call, negligible next to a network round trip or a
//! group commit).
//!
//! The topics of a hub are named by [`ClusterTopics`]: `commands` and `events` with N
//! partitions each and `control` with one.

use crate::routing::PartitionCount;
use crate::ShardingError;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// What the log's methods return.
pub type LogFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ShardingError>> + Send + 'a>>;

/// One record read from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub offset: u64,
    pub payload: Vec<u8>,
}

/// How much one read may return. A read returns at least one record when one is there,
/// even if that record alone is larger than `max_bytes`, so a large record never blocks
/// its partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadBound {
    pub max_records: usize,
    pub max_bytes: usize,
}

impl ReadBound {
    pub const fn new(max_records: usize, max_bytes: usize) -> ReadBound {
        ReadBound {
            max_records,
            max_bytes,
        }
    }
}

/// A topic to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: u32,
}

/// A log of topics with partitions. See the module documentation.
pub trait PartitionedLog: Send + Sync {
    /// Creates the topics that do not exist. A topic that exists with the same partition
    /// count is left alone; one with another count is an error ([`ShardingError::TopicMismatch`]).
    fn create_topics<'a>(&'a self, topics: &'a [TopicSpec]) -> LogFuture<'a, ()>;

    /// Appends `records` to `topic[partition]` in order and returns their offsets, once
    /// all of them are durable. On an error some of the records may be in the log: the
    /// caller must treat the partition's log as unknown past its last known offset (stop
    /// the partition, re-read the log) rather than retry blindly.
    fn append<'a>(
        &'a self,
        topic: &'a str,
        partition: u32,
        records: Vec<Vec<u8>>,
    ) -> LogFuture<'a, Vec<u64>>;

    /// Reads records of `topic[partition]` from offset `from` on, in order, within
    /// `bound`. Returns as soon as at least one record is available, or empty after
    /// `wait` if none came. `from` may equal the end offset (nothing to read yet); an
    /// offset past the end or below the log's start is [`ShardingError::OffsetOutOfRange`].
    fn read<'a>(
        &'a self,
        topic: &'a str,
        partition: u32,
        from: u64,
        bound: ReadBound,
        wait: Duration,
    ) -> LogFuture<'a, Vec<LogRecord>>;

    /// The offset the next record appended to `topic[partition]` will get.
    fn end_offset<'a>(&'a self, topic: &'a str, partition: u32) -> LogFuture<'a, u64>;

    /// The number of partitions of `topic`.
    fn partition_count<'a>(&'a self, topic: &'a str) -> LogFuture<'a, u32>;
}

/// The names and sizes of one hub's topics. A prefix lets several hubs (or several tests)
/// share one broker: `prefix = "hub1."` gives `hub1.commands`, `hub1.events`,
/// `hub1.control`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTopics {
    pub commands: String,
    pub events: String,
    pub control: String,
    pub partitions: PartitionCount,
}

impl ClusterTopics {
    /// The control log has one partition: one total order of every ownership decision.
    pub const CONTROL_PARTITION: u32 = 0;

    pub fn new(prefix: &str, partitions: PartitionCount) -> ClusterTopics {
        ClusterTopics {
            commands: format!("{prefix}commands"),
            events: format!("{prefix}events"),
            control: format!("{prefix}control"),
            partitions,
        }
    }

    /// The three topics with their partition counts, for [`PartitionedLog::create_topics`].
    pub fn specs(&self) -> Vec<TopicSpec> {
        vec![
            TopicSpec {
                name: self.commands.clone(),
                partitions: self.partitions.get(),
            },
            TopicSpec {
                name: self.events.clone(),
                partitions: self.partitions.get(),
            },
            TopicSpec {
                name: self.control.clone(),
                partitions: 1,
            },
        ]
    }
}

/// The checks every implementation makes before an append: batch size and record size.
pub(crate) fn check_append(
    topic: &str,
    partition: u32,
    records: &[Vec<u8>],
) -> Result<(), ShardingError> {
    use crate::limits::{APPEND_RECORDS_MAX, RECORD_BYTES_MAX};
    let refuse = |reason: String| ShardingError::AppendRefused {
        topic: topic.to_owned(),
        partition,
        reason,
    };
    if records.len() > APPEND_RECORDS_MAX {
        return Err(refuse(format!(
            "{} records in one append, at most {APPEND_RECORDS_MAX}",
            records.len()
        )));
    }
    if let Some(big) = records.iter().find(|r| r.len() > RECORD_BYTES_MAX) {
        return Err(refuse(format!(
            "a record of {} bytes, at most {RECORD_BYTES_MAX}",
            big.len()
        )));
    }
    Ok(())
}

/// A read's bound and wait, clamped to the crate's limits.
pub(crate) fn clamp_read(bound: ReadBound, wait: Duration) -> (ReadBound, Duration) {
    use crate::limits::{READ_RECORDS_MAX, READ_WAIT_MAX_MS};
    (
        ReadBound {
            max_records: bound.max_records.clamp(1, READ_RECORDS_MAX),
            max_bytes: bound.max_bytes.max(1),
        },
        wait.min(Duration::from_millis(READ_WAIT_MAX_MS)),
    )
}
