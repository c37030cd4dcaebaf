//! The log scenarios against the in-process log.

mod common;

use sharding::{MemoryLog, PartitionedLog};
use std::sync::Arc;

async fn log(prefix: &str) -> (Arc<dyn PartitionedLog>, sharding::ClusterTopics) {
    let topics = common::topics(prefix);
    let log: Arc<dyn PartitionedLog> = Arc::new(MemoryLog::new());
    log.create_topics(&topics.specs())
        .await
        .expect("create topics");
    (log, topics)
}

#[tokio::test]
async fn produce_and_consume() {
    let (log, topics) = log("").await;
    common::produce_and_consume(log, &topics).await;
}

#[tokio::test]
async fn a_stale_owner_is_fenced_by_the_log_order() {
    let (log, topics) = log("").await;
    common::stale_owner_is_fenced(log, &topics).await;
}

#[tokio::test]
async fn restore_from_the_log() {
    let (log, topics) = log("").await;
    common::restore_from_the_log(log, &topics).await;
}

#[tokio::test]
async fn bad_records_are_refused_with_their_place() {
    let (log, topics) = log("").await;
    common::bad_records_are_refused(log, &topics).await;
}
