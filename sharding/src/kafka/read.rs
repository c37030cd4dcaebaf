//! Reads of the Kafka log: a pool of assigned consumers, used from blocking threads.
//!
//! A consumer remembers which partition and offset its last read stopped at, and a record
//! it fetched but could not return (the read's byte bound was full). A read that continues
//! exactly there takes that consumer and starts from its buffer; any other read re-assigns
//! a free consumer to its partition and offset, which drops that consumer's buffer.

use super::kafka_error;
use crate::limits::READ_POLL_SLICE_MS;
use crate::log::{LogRecord, ReadBound};
use crate::ShardingError;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

struct Reader {
    consumer: BaseConsumer,
    /// Where the last read stopped: the next record of this partition is at this offset.
    at: Option<(String, u32, u64)>,
    /// A record fetched at `at`'s offset but not yet returned.
    held: Option<LogRecord>,
}

/// How a read ends when it has nothing yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadMode {
    /// Wait for the first record until the read's wait is over.
    Wait,
    /// Return as soon as the broker says the end of the partition is reached.
    UntilEnd,
}

pub(super) struct ReaderPool {
    readers: Vec<Mutex<Reader>>,
}

fn lock(reader: &Mutex<Reader>) -> MutexGuard<'_, Reader> {
    // A panic mid-read leaves at worst a stale position; forget it.
    reader.lock().unwrap_or_else(|poisoned| {
        let mut guard = poisoned.into_inner();
        guard.at = None;
        guard.held = None;
        guard
    })
}

impl ReaderPool {
    pub(super) fn new(
        config: &ClientConfig,
        brokers: &str,
        count: usize,
    ) -> Result<ReaderPool, ShardingError> {
        let readers = (0..count)
            .map(|_| {
                let consumer: BaseConsumer = config
                    .create()
                    .map_err(|source| kafka_error("create consumer", brokers, source))?;
                Ok(Mutex::new(Reader {
                    consumer,
                    at: None,
                    held: None,
                }))
            })
            .collect::<Result<Vec<_>, ShardingError>>()?;
        Ok(ReaderPool { readers })
    }

    /// The consumer to serve a read at `topic[partition]` `from`: one positioned there if
    /// free, else any free one, else (all busy) this partition's own slot, waited for.
    fn take(&self, topic: &str, partition: u32, from: u64) -> MutexGuard<'_, Reader> {
        let mut free = None;
        for reader in &self.readers {
            if let Ok(guard) = reader.try_lock() {
                let matches = guard
                    .at
                    .as_ref()
                    .is_some_and(|(t, p, o)| t == topic && *p == partition && *o == from);
                if matches {
                    return guard;
                }
                if free.is_none() {
                    free = Some(guard);
                }
            }
        }
        free.unwrap_or_else(|| lock(&self.readers[partition as usize % self.readers.len()]))
    }

    pub(super) fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        bound: ReadBound,
        wait: Duration,
        mode: ReadMode,
    ) -> Result<Vec<LogRecord>, ReadError> {
        let mut reader = self.take(topic, partition, from);
        // A probe re-assigns, so that the broker's answer at the end of the log comes as a
        // fresh end-of-partition event (librdkafka signals it once per arrival there).
        let positioned = mode == ReadMode::Wait
            && reader
                .at
                .as_ref()
                .is_some_and(|(t, p, o)| t == topic && *p == partition && *o == from);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        if positioned {
            if let Some(held) = reader.held.take() {
                bytes = held.payload.len();
                out.push(held);
            }
        } else {
            reader.at = None;
            reader.held = None;
            let mut assignment = TopicPartitionList::new();
            let offset = i64::try_from(from).unwrap_or(i64::MAX);
            assignment
                .add_partition_offset(topic, partition as i32, Offset::Offset(offset))
                .map_err(|source| kafka_error("assign", format!("{topic}[{partition}]"), source))?;
            reader
                .consumer
                .assign(&assignment)
                .map_err(|source| kafka_error("assign", format!("{topic}[{partition}]"), source))?;
        }
        let deadline = Instant::now() + wait;
        let mut next = from + out.len() as u64;
        let slice = Duration::from_millis(READ_POLL_SLICE_MS);
        // Bounded: every turn either takes a record (at most max_records), or polls for at
        // most one slice until the deadline.
        while out.len() < bound.max_records {
            let now = Instant::now();
            let timeout = if out.is_empty() {
                deadline.saturating_duration_since(now).min(slice)
            } else {
                Duration::ZERO
            };
            match reader.consumer.poll(timeout) {
                Some(Ok(message)) => {
                    if message.topic() != topic || message.partition() != partition as i32 {
                        continue; // left over from an earlier assignment
                    }
                    let Ok(offset) = u64::try_from(message.offset()) else {
                        continue;
                    };
                    if offset < next {
                        continue; // already returned
                    }
                    let record = LogRecord {
                        offset,
                        payload: message.payload().unwrap_or_default().to_vec(),
                    };
                    next = offset + 1;
                    if !out.is_empty()
                        && bytes.saturating_add(record.payload.len()) > bound.max_bytes
                    {
                        next = offset;
                        reader.held = Some(record);
                        break;
                    }
                    bytes = bytes.saturating_add(record.payload.len());
                    out.push(record);
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    if !out.is_empty() || mode == ReadMode::UntilEnd || Instant::now() >= deadline {
                        break;
                    }
                }
                Some(Err(source)) => {
                    reader.at = None;
                    reader.held = None;
                    return Err(Self::read_error(topic, partition, from, source));
                }
                None => {
                    if !out.is_empty() || Instant::now() >= deadline {
                        break;
                    }
                }
            }
        }
        reader.at = Some((topic.to_owned(), partition, next));
        Ok(out)
    }

    fn read_error(topic: &str, partition: u32, from: u64, source: KafkaError) -> ReadError {
        match source.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange) => {
                ReadError::OutOfRange
            }
            Some(
                RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownPartition,
            ) => ReadError::Failed(ShardingError::UnknownTopic {
                topic: topic.to_owned(),
            }),
            _ => ReadError::Failed(kafka_error(
                "read",
                format!("{topic}[{partition}] from offset {from}"),
                source,
            )),
        }
    }
}

/// Why a read failed: outside the log (the caller adds the log's bounds), or otherwise.
pub(super) enum ReadError {
    OutOfRange,
    Failed(ShardingError),
}

impl From<ShardingError> for ReadError {
    fn from(err: ShardingError) -> ReadError {
        ReadError::Failed(err)
    }
}
