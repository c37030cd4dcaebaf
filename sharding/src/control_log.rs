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
    /// that cannot be read stops the fold before it, with an error naming its offset.
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
        records
            .iter()
            .map(|record| ownership.apply_log_record(&self.topic, record, now_ms))
            .collect()
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
