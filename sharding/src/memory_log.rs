//! The in-process partitioned log: every topic in memory, bounded, never trimmed.
//!
//! It is the log of the embedded hub's wiring, of simulations and of tests. Appends are
//! durable the moment they return (there is nothing to lose but the process itself), so
//! the [`PartitionedLog`] contract holds trivially. Each partition holds at most
//! [`MEMORY_PARTITION_BYTES_MAX`] bytes (or the bound given to
//! [`MemoryLog::with_partition_bytes_max`]); a full partition refuses appends with
//! [`ShardingError::LogFull`] instead of growing.
//!
//! Besides the async trait, the log offers the same operations as plain functions
//! (`*_now`), for a deterministic simulation that drives it without a runtime.

use crate::limits::{MEMORY_PARTITION_BYTES_MAX, MEMORY_TOPICS_MAX};
use crate::log::{
    check_append, clamp_read, LogFuture, LogRecord, PartitionedLog, ReadBound, TopicSpec,
};
use crate::routing::PARTITIONS_MAX;
use crate::ShardingError;
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;

#[derive(Default)]
struct Partition {
    records: Vec<Vec<u8>>,
    bytes: usize,
}

/// See the module documentation.
pub struct MemoryLog {
    topics: Mutex<BTreeMap<String, Vec<Partition>>>,
    appended: Notify,
    partition_bytes_max: usize,
}

impl Default for MemoryLog {
    fn default() -> Self {
        MemoryLog::new()
    }
}

impl MemoryLog {
    pub fn new() -> MemoryLog {
        MemoryLog::with_partition_bytes_max(MEMORY_PARTITION_BYTES_MAX)
    }

    /// A log whose partitions hold at most `bytes` bytes each.
    pub fn with_partition_bytes_max(bytes: usize) -> MemoryLog {
        MemoryLog {
            topics: Mutex::new(BTreeMap::new()),
            appended: Notify::new(),
            partition_bytes_max: bytes,
        }
    }

    fn topics(&self) -> MutexGuard<'_, BTreeMap<String, Vec<Partition>>> {
        // A panic while holding the lock cannot leave a partition half-appended: appends
        // check everything before they change anything.
        self.topics
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn create_topics_now(&self, specs: &[TopicSpec]) -> Result<(), ShardingError> {
        let mut topics = self.topics();
        for spec in specs {
            if spec.partitions == 0 || spec.partitions > PARTITIONS_MAX {
                return Err(ShardingError::Config(format!(
                    "topic {} with {} partitions: 1 to {PARTITIONS_MAX}",
                    spec.name, spec.partitions
                )));
            }
            match topics.get(&spec.name) {
                Some(existing) if existing.len() as u32 == spec.partitions => {}
                Some(existing) => {
                    return Err(ShardingError::TopicMismatch {
                        topic: spec.name.clone(),
                        found: existing.len() as u32,
                        wanted: spec.partitions,
                    })
                }
                None => {
                    if topics.len() >= MEMORY_TOPICS_MAX {
                        return Err(ShardingError::Config(format!(
                            "the in-process log holds at most {MEMORY_TOPICS_MAX} topics"
                        )));
                    }
                    let partitions = (0..spec.partitions).map(|_| Partition::default()).collect();
                    topics.insert(spec.name.clone(), partitions);
                }
            }
        }
        Ok(())
    }

    pub fn append_now(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<Vec<u8>>,
    ) -> Result<Vec<u64>, ShardingError> {
        check_append(topic, partition, &records)?;
        let offsets = {
            let mut topics = self.topics();
            let log = partition_mut(&mut topics, topic, partition)?;
            let added: usize = records.iter().map(Vec::len).sum();
            if log.bytes.saturating_add(added) > self.partition_bytes_max {
                return Err(ShardingError::LogFull {
                    topic: topic.to_owned(),
                    partition,
                    limit_bytes: self.partition_bytes_max,
                });
            }
            let first = log.records.len() as u64;
            log.bytes += added;
            let count = records.len() as u64;
            log.records.extend(records);
            (first..first + count).collect()
        };
        self.appended.notify_waiters();
        Ok(offsets)
    }

    pub fn read_now(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        bound: ReadBound,
    ) -> Result<Vec<LogRecord>, ShardingError> {
        let mut topics = self.topics();
        let log = partition_mut(&mut topics, topic, partition)?;
        let end = log.records.len() as u64;
        if from > end {
            return Err(ShardingError::OffsetOutOfRange {
                topic: topic.to_owned(),
                partition,
                offset: from,
                start: 0,
                end,
            });
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for (offset, payload) in log.records.iter().enumerate().skip(from as usize) {
            if out.len() >= bound.max_records
                || (!out.is_empty() && bytes.saturating_add(payload.len()) > bound.max_bytes)
            {
                break;
            }
            bytes = bytes.saturating_add(payload.len());
            out.push(LogRecord {
                offset: offset as u64,
                payload: payload.clone(),
            });
        }
        Ok(out)
    }

    pub fn end_offset_now(&self, topic: &str, partition: u32) -> Result<u64, ShardingError> {
        let mut topics = self.topics();
        Ok(partition_mut(&mut topics, topic, partition)?.records.len() as u64)
    }

    pub fn partition_count_now(&self, topic: &str) -> Result<u32, ShardingError> {
        self.topics()
            .get(topic)
            .map(|partitions| partitions.len() as u32)
            .ok_or_else(|| ShardingError::UnknownTopic {
                topic: topic.to_owned(),
            })
    }

    async fn read_waiting(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        bound: ReadBound,
        wait: Duration,
    ) -> Result<Vec<LogRecord>, ShardingError> {
        let (bound, wait) = clamp_read(bound, wait);
        let deadline = tokio::time::Instant::now() + wait;
        // Bounded by the deadline: each turn either returns or waits for an append.
        loop {
            let notified = self.appended.notified();
            tokio::pin!(notified);
            // Registered before the read, so an append between the read and the wait
            // still wakes this reader.
            notified.as_mut().enable();
            let records = self.read_now(topic, partition, from, bound)?;
            if !records.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(records);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }
}

fn partition_mut<'a>(
    topics: &'a mut BTreeMap<String, Vec<Partition>>,
    topic: &str,
    partition: u32,
) -> Result<&'a mut Partition, ShardingError> {
    let partitions = topics
        .get_mut(topic)
        .ok_or_else(|| ShardingError::UnknownTopic {
            topic: topic.to_owned(),
        })?;
    let count = partitions.len() as u32;
    partitions
        .get_mut(partition as usize)
        .ok_or_else(|| ShardingError::UnknownPartition {
            topic: topic.to_owned(),
            partition,
            partitions: count,
        })
}

impl PartitionedLog for MemoryLog {
    fn create_topics<'a>(&'a self, topics: &'a [TopicSpec]) -> LogFuture<'a, ()> {
        Box::pin(async move { self.create_topics_now(topics) })
    }

    fn append<'a>(
        &'a self,
        topic: &'a str,
        partition: u32,
        records: Vec<Vec<u8>>,
    ) -> LogFuture<'a, Vec<u64>> {
        Box::pin(async move { self.append_now(topic, partition, records) })
    }

    fn read<'a>(
        &'a self,
        topic: &'a str,
        partition: u32,
        from: u64,
        bound: ReadBound,
        wait: Duration,
    ) -> LogFuture<'a, Vec<LogRecord>> {
        Box::pin(self.read_waiting(topic, partition, from, bound, wait))
    }

    fn end_offset<'a>(&'a self, topic: &'a str, partition: u32) -> LogFuture<'a, u64> {
        Box::pin(async move { self.end_offset_now(topic, partition) })
    }

    fn partition_count<'a>(&'a self, topic: &'a str) -> LogFuture<'a, u32> {
        Box::pin(async move { self.partition_count_now(topic) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn spec(name: &str, partitions: u32) -> TopicSpec {
        TopicSpec {
            name: name.to_owned(),
            partitions,
        }
    }

    #[test]
    fn append_read_and_bounds() {
        let log = MemoryLog::new();
        log.create_topics_now(&[spec("t", 2)]).expect("create");
        let offsets = log
            .append_now("t", 1, vec![b"a".to_vec(), b"bb".to_vec(), b"ccc".to_vec()])
            .expect("append");
        assert_eq!(offsets, [0, 1, 2]);
        assert_eq!(log.end_offset_now("t", 1).expect("end"), 3);
        assert_eq!(log.end_offset_now("t", 0).expect("end"), 0);
        let two = log
            .read_now("t", 1, 0, ReadBound::new(2, 1 << 20))
            .expect("read");
        assert_eq!(two.len(), 2);
        // A byte bound smaller than the first record still returns that record.
        let one = log
            .read_now("t", 1, 1, ReadBound::new(10, 1))
            .expect("read");
        assert_eq!(
            one,
            [LogRecord {
                offset: 1,
                payload: b"bb".to_vec()
            }]
        );
        let bytes = log
            .read_now("t", 1, 0, ReadBound::new(10, 3))
            .expect("read");
        assert_eq!(bytes.len(), 2, "a + bb fit in 3 bytes, ccc does not");
        assert!(log
            .read_now("t", 1, 3, ReadBound::new(10, 10))
            .expect("read")
            .is_empty());
        assert!(matches!(
            log.read_now("t", 1, 4, ReadBound::new(10, 10)),
            Err(ShardingError::OffsetOutOfRange {
                offset: 4,
                end: 3,
                ..
            })
        ));
        assert!(matches!(
            log.append_now("t", 2, vec![]),
            Err(ShardingError::UnknownPartition {
                partition: 2,
                partitions: 2,
                ..
            })
        ));
        assert!(matches!(
            log.append_now("nope", 0, vec![]),
            Err(ShardingError::UnknownTopic { .. })
        ));
    }

    #[test]
    fn topics_are_created_explicitly_and_never_resized() {
        let log = MemoryLog::new();
        log.create_topics_now(&[spec("t", 3)]).expect("create");
        log.create_topics_now(&[spec("t", 3)])
            .expect("same count is fine");
        assert!(matches!(
            log.create_topics_now(&[spec("t", 4)]),
            Err(ShardingError::TopicMismatch {
                found: 3,
                wanted: 4,
                ..
            })
        ));
        assert!(log.create_topics_now(&[spec("z", 0)]).is_err());
    }

    #[test]
    fn a_full_partition_refuses_appends() {
        let log = MemoryLog::with_partition_bytes_max(4);
        log.create_topics_now(&[spec("t", 1)]).expect("create");
        log.append_now("t", 0, vec![b"abc".to_vec()]).expect("fits");
        let err = log
            .append_now("t", 0, vec![b"de".to_vec()])
            .expect_err("full");
        assert!(
            matches!(err, ShardingError::LogFull { limit_bytes: 4, .. }),
            "{err}"
        );
        assert_eq!(
            log.end_offset_now("t", 0).expect("end"),
            1,
            "nothing half-appended"
        );
    }

    #[tokio::test]
    async fn a_waiting_read_wakes_on_append_and_times_out_without_one() {
        let log = Arc::new(MemoryLog::new());
        log.create_topics_now(&[spec("t", 1)]).expect("create");
        let bound = ReadBound::new(10, 1 << 20);
        let empty = log
            .read("t", 0, 0, bound, Duration::from_millis(20))
            .await
            .expect("read");
        assert!(empty.is_empty());
        let writer = Arc::clone(&log);
        let task = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            writer
                .append_now("t", 0, vec![b"x".to_vec()])
                .expect("append");
        });
        let got = log
            .read("t", 0, 0, bound, Duration::from_secs(10))
            .await
            .expect("read");
        assert_eq!(got.len(), 1);
        task.await.expect("writer");
    }
}
