//! The control log over a [`PartitionedLog`]: append control records, and bring a node's
//! [`Ownership`] fold up to date with what others appended.
//!
//! The fold itself is sans IO ([`crate::ownership`]); this is the thin IO around it that
//! every node, gateway and operator tool uses the same way.

use crate::limits::{REPLAY_READ_BYTES, REPLAY_READ_RECORDS};
use crate::log::{ClusterTopics, PartitionedLog, ReadBound};
use crate::ownership::{Applied, Ownership};
use crate::records::ControlRecord;
use crate::ShardingError;
use std::sync::Arc;
use std::time::Duration;

/// The control log of one hub. Cheap to clone.
#[derive(Clone)]
pub struct ControlLog {
    log: Arc<dyn PartitionedLog>,
    topic: String,
}

impl ControlLog {
    pub fn new(log: Arc<dyn PartitionedLog>, topics: &ClusterTopics) -> ControlLog {
        ControlLog {
            log,
            topic: topics.control.clone(),
        }
    }

    /// Appends `records` in order; returns their offsets once durable.
    pub async fn append(&self, records: &[ControlRecord]) -> Result<Vec<u64>, ShardingError> {
        let encoded = records
            .iter()
            .map(ControlRecord::encode)
            .collect::<Result<Vec<_>, _>>()?;
        self.log
            .append(&self.topic, ClusterTopics::CONTROL_PARTITION, encoded)
            .await
    }

    /// Reads what follows `ownership`'s position (waiting up to `wait` for the first
    /// record) and applies it, told of at `now_ms`. Returns what each record did. A record
    /// that cannot be read stops the fold before it: the records before it are applied and
    /// returned, and the next call fails with an error naming its offset.
    pub async fn catch_up(
        &self,
        ownership: &mut Ownership,
        now_ms: u64,
        wait: Duration,
    ) -> Result<Vec<Applied>, ShardingError> {
        let records = self
            .log
            .read(
                &self.topic,
                ClusterTopics::CONTROL_PARTITION,
                ownership.next_offset(),
                ReadBound::new(REPLAY_READ_RECORDS, REPLAY_READ_BYTES),
                wait,
            )
            .await?;
        let mut applied = Vec::with_capacity(records.len());
        for record in &records {
            match ownership.apply_log_record(&self.topic, record, now_ms) {
                Ok(outcome) => applied.push(outcome),
                // What applied before the bad record is returned first; the fold stays
                // before it, so the next call reports it.
                Err(err) if applied.is_empty() => return Err(err),
                Err(_) => break,
            }
        }
        Ok(applied)
    }

    /// Applies everything up to the control log's end offset as of now.
    pub async fn catch_up_to_end(
        &self,
        ownership: &mut Ownership,
        now_ms: u64,
    ) -> Result<Vec<Applied>, ShardingError> {
        let end = self
            .log
            .end_offset(&self.topic, ClusterTopics::CONTROL_PARTITION)
            .await?;
        let mut applied = Vec::new();
        let mut empty_reads = 0u32;
        // Bounded: each turn applies at least one record or counts an empty read.
        while ownership.next_offset() < end {
            let step = self
                .catch_up(
                    ownership,
                    now_ms,
                    Duration::from_millis(crate::limits::REPLAY_READ_WAIT_MS),
                )
                .await?;
            if step.is_empty() {
                empty_reads += 1;
                if empty_reads >= crate::limits::REPLAY_EMPTY_READS_MAX {
                    return Err(ShardingError::Timeout {
                        op: format!("reading {}[0] to offset {end}", self.topic),
                        after_ms: u64::from(crate::limits::REPLAY_EMPTY_READS_MAX)
                            * crate::limits::REPLAY_READ_WAIT_MS,
                    });
                }
            }
            applied.extend(step);
        }
        Ok(applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{FormatRange, Heartbeat, NodeId};
    use crate::routing::PartitionCount;
    use crate::MemoryLog;

    #[tokio::test]
    async fn the_records_before_a_bad_one_apply_then_it_is_reported() {
        let topics = ClusterTopics::new("", PartitionCount::new(2).expect("count"));
        let memory = Arc::new(MemoryLog::new());
        memory.create_topics_now(&topics.specs()).expect("topics");
        let heartbeat = ControlRecord::Heartbeat(Heartbeat {
            node: NodeId::new("a").expect("id"),
            sent_at_ms: 0,
            formats: FormatRange::sharding_formats(),
            warm: vec![],
        })
        .encode()
        .expect("encode");
        memory
            .append_now(
                "control",
                0,
                vec![heartbeat.clone(), b"junk".to_vec(), heartbeat],
            )
            .expect("append");
        let control = ControlLog::new(memory, &topics);
        let mut fold = Ownership::new(topics.partitions, Duration::from_secs(1));
        let wait = Duration::from_millis(10);
        let first = control
            .catch_up(&mut fold, 0, wait)
            .await
            .expect("the prefix");
        assert_eq!(first.len(), 1);
        let err = control
            .catch_up(&mut fold, 0, wait)
            .await
            .expect_err("the junk");
        assert!(
            err.to_string()
                .starts_with("record at control[0] offset 1 refused"),
            "{err}"
        );
        assert_eq!(fold.next_offset(), 1);
    }
}
