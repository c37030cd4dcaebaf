//! The Kafka log against a real Kafka-protocol broker process on 127.0.0.1: `tansu`,
//! memory-backed, started and stopped by this test (`sharding::local_broker`).
//!
//! Unlike the mock cluster, the broker implements CreateTopics: the three topics are created
//! by the crate's own admin client with explicit partition counts (the broker does not
//! auto-create). If the broker binary is not installed the test fails, saying how to
//! install it (`.ci/setup/20-kafka-broker.sh`); CI installs it.
//!
//! A gap of this broker build that the test covers: it reports the high watermark after a
//! multi-record batch as the batch's first offset + 1 (1 after a batch of 10 records at
//! offsets 0-9). `KafkaLog::end_offset` confirms the watermark with a read there, so the
//! end offset is right on this broker as on Kafka (`produce_and_consume` checks it).

mod common;

use sharding::local_broker::LocalBroker;
use sharding::{KafkaConfig, KafkaLog, PartitionedLog, ShardingError, TopicSpec};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_broker_creates_the_topics_and_keeps_the_records() {
    let mut broker = LocalBroker::start().unwrap_or_else(|err| panic!("{err}"));
    let mut config = KafkaConfig::new(broker.bootstrap(), "sharding-broker-test");
    config.replication_factor = 1;
    let log: Arc<dyn PartitionedLog> = Arc::new(KafkaLog::new(config).expect("clients"));
    let topics = common::topics("");

    // Nothing exists until the admin client creates it.
    let err = log
        .partition_count(&topics.events)
        .await
        .expect_err("not yet created");
    assert!(matches!(err, ShardingError::UnknownTopic { .. }), "{err}");
    log.create_topics(&topics.specs())
        .await
        .expect("create the three topics");
    assert_eq!(
        log.partition_count(&topics.commands).await.expect("count"),
        common::PARTITIONS
    );
    assert_eq!(
        log.partition_count(&topics.events).await.expect("count"),
        common::PARTITIONS
    );
    assert_eq!(
        log.partition_count(&topics.control).await.expect("count"),
        1
    );
    log.create_topics(&topics.specs())
        .await
        .expect("creating again changes nothing");
    let wrong = [TopicSpec {
        name: topics.control.clone(),
        partitions: 2,
    }];
    let err = log.create_topics(&wrong).await.expect_err("wrong count");
    assert!(
        matches!(
            err,
            ShardingError::TopicMismatch {
                found: 1,
                wanted: 2,
                ..
            }
        ),
        "{err}"
    );

    common::produce_and_consume(Arc::clone(&log), &topics).await;
    common::stale_owner_is_fenced(Arc::clone(&log), &topics).await;
    common::restore_from_the_log(Arc::clone(&log), &topics).await;

    let pid = broker.pid().expect("running");
    drop(log);
    broker.stop().expect("stop the broker");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "broker pid {pid} is gone"
    );
}
