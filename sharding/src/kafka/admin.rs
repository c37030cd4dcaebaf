//! Topic creation with explicit partition counts, by the crate's own admin client.
//!
//! A topic that already exists with the wanted count is left alone (so every node and
//! gateway may run this at start); one with another count is refused, never "fixed":
//! changing a partition count would re-route every transfer. After creating, the brokers'
//! metadata is re-read until it shows every topic with its count, so that the first
//! append after `create_topics` does not race the topic's propagation.

use super::{kafka_error, KafkaLog};
use crate::limits::{
    ADMIN_TIMEOUT_MS, CREATE_TOPIC_METADATA_PAUSE_MS, CREATE_TOPIC_METADATA_RETRIES,
};
use crate::log::TopicSpec;
use crate::ShardingError;
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::RDKafkaErrorCode;
use std::time::Duration;

/// The `min.insync.replicas` that goes with a replication factor: all but one replica
/// must have a record before `acks=all` acknowledges it, so one broker may fail without
/// losing an acknowledged record and without stopping writes.
fn min_insync(replication_factor: i32) -> Option<String> {
    (replication_factor >= 3).then(|| (replication_factor - 1).to_string())
}

pub(super) async fn create_topics(
    log: &KafkaLog,
    specs: &[TopicSpec],
) -> Result<(), ShardingError> {
    let mut missing = Vec::new();
    for spec in specs {
        match existing_count(log, &spec.name).await? {
            Some(found) if found == spec.partitions => {}
            Some(found) => {
                return Err(ShardingError::TopicMismatch {
                    topic: spec.name.clone(),
                    found,
                    wanted: spec.partitions,
                })
            }
            None => missing.push(spec.clone()),
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let config = log.config();
    let min_insync = min_insync(config.replication_factor);
    let mut new_topics = Vec::with_capacity(missing.len());
    for spec in &missing {
        let partitions = i32::try_from(spec.partitions).map_err(|_| {
            ShardingError::Config(format!("topic {}: too many partitions", spec.name))
        })?;
        let mut topic = NewTopic::new(
            &spec.name,
            partitions,
            TopicReplication::Fixed(config.replication_factor),
        );
        for (key, value) in &config.topic_settings {
            topic = topic.set(key, value);
        }
        if let Some(min) = &min_insync {
            topic = topic.set("min.insync.replicas", min);
        }
        new_topics.push(topic);
    }
    let timeout = Duration::from_millis(ADMIN_TIMEOUT_MS);
    let options = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    let names = missing
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let results = log
        .inner
        .admin
        .create_topics(new_topics.iter(), &options)
        .await
        .map_err(|source| kafka_error("create topics", names.clone(), source))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(kafka_error(
                    "create topic",
                    topic,
                    rdkafka::error::KafkaError::AdminOp(code),
                ))
            }
        }
    }
    // Wait until the brokers show every topic with its count (bounded).
    for spec in &missing {
        let mut tries = 0u32;
        loop {
            match existing_count(log, &spec.name).await? {
                Some(found) if found == spec.partitions => break,
                Some(found) => {
                    return Err(ShardingError::TopicMismatch {
                        topic: spec.name.clone(),
                        found,
                        wanted: spec.partitions,
                    })
                }
                None => {}
            }
            tries += 1;
            if tries >= CREATE_TOPIC_METADATA_RETRIES {
                return Err(ShardingError::Timeout {
                    op: format!("topic {} to appear after its creation", spec.name),
                    after_ms: u64::from(CREATE_TOPIC_METADATA_RETRIES)
                        * CREATE_TOPIC_METADATA_PAUSE_MS,
                });
            }
            tokio::time::sleep(Duration::from_millis(CREATE_TOPIC_METADATA_PAUSE_MS)).await;
        }
    }
    Ok(())
}

async fn existing_count(log: &KafkaLog, topic: &str) -> Result<Option<u32>, ShardingError> {
    let topic = topic.to_owned();
    log.blocking("metadata", move |inner| inner.partition_count(&topic))
        .await
}
