//! The log scenarios against Kafka, through librdkafka's built-in mock cluster
//! (`rdkafka::mocking::MockCluster`: real Kafka wire protocol on loopback sockets, in this
//! process).
//!
//! The mock has no CreateTopics: topics are made with the mock's own `create_topic`, and
//! `KafkaLog::create_topics` is then checked to find them with the right counts (and to
//! refuse a wrong count). Topic creation through the admin API is tested against the real
//! broker (`tests/kafka_broker.rs`). The Kafka log reads with assigned consumers, not a
//! consumer group, so the mock's group rebalance delays do not apply; `session.timeout.ms`
//! is set short anyway, as for every client of a test cluster.

mod common;

use rdkafka::mocking::MockCluster;
use sharding::{ClusterTopics, KafkaConfig, KafkaLog, PartitionedLog, ShardingError, TopicSpec};
use std::sync::Arc;

fn mock_log(
    mock: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    prefix: &str,
) -> (Arc<dyn PartitionedLog>, ClusterTopics) {
    let topics = common::topics(prefix);
    for spec in topics.specs() {
        mock.create_topic(&spec.name, spec.partitions as i32, 1)
            .expect("mock topic");
    }
    let mut config = KafkaConfig::new(mock.bootstrap_servers(), "sharding-test");
    config.replication_factor = 1;
    config
        .client_settings
        .push(("session.timeout.ms".to_owned(), "6000".to_owned()));
    let log: Arc<dyn PartitionedLog> = Arc::new(KafkaLog::new(config).expect("clients"));
    (log, topics)
}

fn mock() -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    MockCluster::new(1).expect("mock cluster")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_and_consume() {
    let mock = mock();
    let (log, topics) = mock_log(&mock, "");
    log.create_topics(&topics.specs())
        .await
        .expect("existing topics with the right counts are accepted");
    let wrong = [TopicSpec {
        name: topics.events.clone(),
        partitions: common::PARTITIONS + 1,
    }];
    let err = log.create_topics(&wrong).await.expect_err("wrong count");
    assert!(
        matches!(
            err,
            ShardingError::TopicMismatch {
                found: 4,
                wanted: 5,
                ..
            }
        ),
        "{err}"
    );
    common::produce_and_consume(log, &topics).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_owner_is_fenced_by_the_log_order() {
    let mock = mock();
    let (log, topics) = mock_log(&mock, "fence.");
    common::stale_owner_is_fenced(log, &topics).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_from_the_log() {
    let mock = mock();
    let (log, topics) = mock_log(&mock, "restore.");
    common::restore_from_the_log(log, &topics).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_are_refused_with_their_place() {
    let mock = mock();
    let (log, topics) = mock_log(&mock, "bad.");
    common::bad_records_are_refused(log, &topics).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_topic_is_not_created_by_using_it() {
    let mock = mock();
    let (log, _topics) = mock_log(&mock, "");
    let err = log.partition_count("nosuch").await.expect_err("unknown");
    assert!(matches!(err, ShardingError::UnknownTopic { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_errors_are_retried_without_loss_or_duplicates() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let mock = mock();
    let (log, topics) = mock_log(&mock, "retry.");
    // Warm up (metadata, producer id), then make the next produce requests fail with
    // errors the idempotent producer retries.
    log.append(&topics.events, 0, vec![b"first".to_vec()])
        .await
        .expect("append");
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        ],
    );
    let batch: Vec<Vec<u8>> = (0..50u32).map(|i| i.to_be_bytes().to_vec()).collect();
    let offsets = log
        .append(&topics.events, 0, batch.clone())
        .await
        .expect("append through the errors");
    assert_eq!(offsets, (1..=50).collect::<Vec<u64>>());
    let back = common::read_all(log.as_ref(), &topics.events, 0, 1, 51).await;
    let payloads: Vec<Vec<u8>> = back.into_iter().map(|r| r.payload).collect();
    assert_eq!(payloads, batch, "each record once, in order");
    assert_eq!(log.end_offset(&topics.events, 0).await.expect("end"), 51);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_produce_is_an_error_of_the_append() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let mock = mock();
    let (log, topics) = mock_log(&mock, "refused.");
    log.append(&topics.commands, 1, vec![b"warm".to_vec()])
        .await
        .expect("append");
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    let err = log
        .append(&topics.commands, 1, vec![b"refused".to_vec()])
        .await
        .expect_err("the broker refused it");
    assert!(
        matches!(&err, ShardingError::Kafka { op: "produce", target, .. } if target == "refused.commands[1]"),
        "{err}"
    );
}
