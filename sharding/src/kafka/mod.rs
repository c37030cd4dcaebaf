//! The partitioned log on Kafka, through `rdkafka` (librdkafka). The only Kafka code of the
//! project.
//!
//! # Producing
//!
//! One idempotent producer per process (`enable.idempotence=true`, `acks=all`): the broker
//! deduplicates the producer's retries by sequence number, so a retry after a lost
//! acknowledgement never writes a record twice, and `acks=all` means an append returns
//! only once every in-sync replica has the records. With `min.insync.replicas` set on the
//! topics (replication factor − 1, from 3 replicas on), an acknowledged record survives the
//! loss of a broker. Records of one append are queued together and go out in produce
//! batches bounded by [`PRODUCE_LINGER_MS`], [`PRODUCE_BATCH_RECORDS_MAX`] and
//! [`PRODUCE_BATCH_BYTES_MAX`]; the local queue is bounded too, and a full one is waited on
//! for a bounded time, then reported as [`ShardingError::Overloaded`]. A fatal producer
//! error (the idempotent producer's sequence broken, say) makes every later append fail:
//! the owner stops its partitions and a fresh `KafkaLog` is needed.
//!
//! # Reading
//!
//! Reads use plain assigned consumers (no consumer group, no offset commits): a reader
//! names the partition and offset, and the log hands back records. A small pool of
//! consumers ([`READ_CONSUMERS`]) serves reads; one that continues where the previous read
//! of that consumer stopped reuses its fetch buffer. `auto.offset.reset=error`: a read
//! outside the log is an error, never a silent jump to its start or end.
//!
//! # Topics
//!
//! Created by the crate's admin client with explicit partition counts
//! ([`PartitionedLog::create_topics`]); the clients never ask the broker to auto-create
//! one (`allow.auto.create.topics=false`). The topics keep records forever
//! (`retention.ms=-1`) unless configured otherwise: `events` is the changelog every
//! partition is rebuilt from.
//!
//! Every librdkafka call that blocks (metadata, watermarks, polls) runs on tokio's
//! blocking pool, never on a runtime worker.

mod admin;
mod read;

use crate::limits::*;
use crate::log::{
    check_append, clamp_read, LogFuture, LogRecord, PartitionedLog, ReadBound, TopicSpec,
};
use crate::ShardingError;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// How to reach the brokers, and the settings an operator chooses per cluster.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `host:port,...` of the bootstrap brokers.
    pub brokers: String,
    /// The clients' `client.id` (shows in broker logs), e.g. the node id.
    pub client_id: String,
    /// Replicas per partition of the topics this crate creates (3 in production; 1 on a
    /// single test broker).
    pub replication_factor: i32,
    /// Settings of the topics this crate creates, e.g. `retention.ms`.
    pub topic_settings: Vec<(String, String)>,
    /// Extra librdkafka settings for every client (TLS, SASL, test overrides).
    pub client_settings: Vec<(String, String)>,
    /// Consumers serving reads ([`READ_CONSUMERS`] by default): the number of reads that
    /// run at once. A read beyond them waits for one to finish (at most its wait).
    pub read_consumers: usize,
}

impl KafkaConfig {
    pub fn new(brokers: impl Into<String>, client_id: impl Into<String>) -> KafkaConfig {
        KafkaConfig {
            brokers: brokers.into(),
            client_id: client_id.into(),
            replication_factor: 3,
            topic_settings: vec![("retention.ms".to_owned(), "-1".to_owned())],
            client_settings: Vec::new(),
            read_consumers: READ_CONSUMERS,
        }
    }

    fn base(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id)
            .set("allow.auto.create.topics", "false");
        for (key, value) in &self.client_settings {
            config.set(key, value);
        }
        config
    }

    fn producer(&self) -> ClientConfig {
        let mut config = self.base();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", PRODUCE_LINGER_MS.to_string())
            .set("batch.num.messages", PRODUCE_BATCH_RECORDS_MAX.to_string())
            .set("batch.size", PRODUCE_BATCH_BYTES_MAX.to_string())
            .set(
                "queue.buffering.max.messages",
                PRODUCE_QUEUE_RECORDS_MAX.to_string(),
            )
            .set(
                "queue.buffering.max.kbytes",
                PRODUCE_QUEUE_KBYTES_MAX.to_string(),
            )
            .set(
                "message.timeout.ms",
                PRODUCE_DELIVERY_TIMEOUT_MS.to_string(),
            )
            .set(
                "message.max.bytes",
                (RECORD_BYTES_MAX + 64 * 1024).to_string(),
            );
        for (key, value) in &self.client_settings {
            config.set(key, value);
        }
        config
    }

    fn reader(&self) -> ClientConfig {
        let mut config = self.base();
        // librdkafka's assign needs a group id even without a group: it is never joined
        // (no subscribe) and never committed to.
        config
            .set("group.id", format!("{}.reader", self.client_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "error")
            .set("fetch.wait.max.ms", READ_FETCH_WAIT_MS.to_string())
            .set(
                "max.partition.fetch.bytes",
                READ_PARTITION_FETCH_BYTES.to_string(),
            )
            .set(
                "queued.max.messages.kbytes",
                READ_QUEUE_KBYTES_MAX.to_string(),
            );
        for (key, value) in &self.client_settings {
            config.set(key, value);
        }
        config
    }

    fn admin(&self) -> ClientConfig {
        self.base()
    }
}

pub(crate) fn kafka_error(
    op: &'static str,
    target: impl Into<String>,
    source: KafkaError,
) -> ShardingError {
    ShardingError::Kafka {
        op,
        target: target.into(),
        source: Box::new(source),
    }
}

struct Inner {
    config: KafkaConfig,
    producer: FutureProducer,
    readers: read::ReaderPool,
    admin: AdminClient<DefaultClientContext>,
}

impl Inner {
    /// The partition's first offset and end offset (its low and high watermarks).
    fn watermarks(&self, topic: &str, partition: u32) -> Result<(u64, u64), ShardingError> {
        let (low, high) = self
            .producer
            .client()
            .fetch_watermarks(
                topic,
                partition as i32,
                Duration::from_millis(ADMIN_TIMEOUT_MS),
            )
            .map_err(|source| kafka_error("watermarks", format!("{topic}[{partition}]"), source))?;
        Ok((
            u64::try_from(low).unwrap_or(0),
            u64::try_from(high).unwrap_or(0),
        ))
    }

    /// The partition's end offset: its high watermark, confirmed by a read there. Some
    /// Kafka-compatible brokers (the tansu build the tests use) report the high watermark
    /// of a multi-record batch as the batch's first offset + 1; a read at the reported end
    /// that finds records moves the end past them. On a broker that reports it right, the
    /// read costs one fetch that ends at once with "end of partition".
    fn end_offset(&self, topic: &str, partition: u32) -> Result<u64, ShardingError> {
        let (_, mut end) = self.watermarks(topic, partition)?;
        let bound = ReadBound::new(READ_RECORDS_MAX, REPLAY_READ_BYTES);
        let wait = Duration::from_millis(END_PROBE_WAIT_MS);
        for _ in 0..END_PROBE_READS_MAX {
            let found = match self.readers.read(
                topic,
                partition,
                end,
                bound,
                wait,
                read::ReadMode::UntilEnd,
            ) {
                Ok(found) => found,
                Err(read::ReadError::Failed(err)) => return Err(err),
                // Trimmed or truncated meanwhile: the watermark is the answer.
                Err(read::ReadError::OutOfRange) => return Ok(end),
            };
            match found.last() {
                Some(last) => end = last.offset + 1,
                None => break,
            }
        }
        Ok(end)
    }

    /// The topic's partition count, `None` if the brokers do not know the topic.
    fn partition_count(&self, topic: &str) -> Result<Option<u32>, ShardingError> {
        let metadata = self
            .producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_millis(ADMIN_TIMEOUT_MS))
            .map_err(|source| kafka_error("metadata", topic, source))?;
        let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Ok(None);
        };
        match found.error().map(RDKafkaErrorCode::from) {
            None => Ok(Some(found.partitions().len() as u32)),
            Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
                Ok(None)
            }
            Some(code) => Err(kafka_error(
                "metadata",
                topic,
                KafkaError::MetadataFetch(code),
            )),
        }
    }
}

/// The partitioned log on Kafka. See the module documentation. Cheap to clone.
#[derive(Clone)]
pub struct KafkaLog {
    inner: Arc<Inner>,
}

impl KafkaLog {
    /// Creates the clients. They connect lazily: an unreachable broker shows up as errors
    /// (or timeouts) of the first operations, not here.
    pub fn new(config: KafkaConfig) -> Result<KafkaLog, ShardingError> {
        let producer: FutureProducer = config
            .producer()
            .create()
            .map_err(|source| kafka_error("create producer", &config.brokers, source))?;
        let admin: AdminClient<DefaultClientContext> = config
            .admin()
            .create()
            .map_err(|source| kafka_error("create admin client", &config.brokers, source))?;
        if config.read_consumers == 0 || config.read_consumers > READ_CONSUMERS_MAX {
            return Err(ShardingError::Config(format!(
                "read_consumers {}: 1 to {READ_CONSUMERS_MAX}",
                config.read_consumers
            )));
        }
        let readers =
            read::ReaderPool::new(&config.reader(), &config.brokers, config.read_consumers)?;
        Ok(KafkaLog {
            inner: Arc::new(Inner {
                config,
                producer,
                readers,
                admin,
            }),
        })
    }

    pub fn config(&self) -> &KafkaConfig {
        &self.inner.config
    }

    async fn append_records(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<Vec<u8>>,
    ) -> Result<Vec<u64>, ShardingError> {
        check_append(topic, partition, &records)?;
        let target = || format!("{topic}[{partition}]");
        let kafka_partition =
            i32::try_from(partition).map_err(|_| ShardingError::UnknownPartition {
                topic: topic.to_owned(),
                partition,
                partitions: 0,
            })?;
        let mut offsets = Vec::with_capacity(records.len());
        let mut pending = VecDeque::with_capacity(records.len());
        for payload in &records {
            let mut waits = 0u32;
            loop {
                let record = FutureRecord::<(), [u8]>::to(topic)
                    .partition(kafka_partition)
                    .payload(payload.as_slice());
                match self.inner.producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push_back(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        waits += 1;
                        if waits > PRODUCE_QUEUE_FULL_RETRIES {
                            return Err(ShardingError::Overloaded {
                                topic: topic.to_owned(),
                                partition,
                            });
                        }
                        // Our own oldest record frees room when it is acknowledged.
                        if let Some(oldest) = pending.pop_front() {
                            offsets.push(delivered(oldest.await, topic, partition)?);
                        } else {
                            tokio::time::sleep(Duration::from_millis(PRODUCE_QUEUE_FULL_WAIT_MS))
                                .await;
                        }
                    }
                    Err((source, _)) => return Err(kafka_error("produce", target(), source)),
                }
            }
        }
        while let Some(delivery) = pending.pop_front() {
            offsets.push(delivered(delivery.await, topic, partition)?);
        }
        Ok(offsets)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        op: &'static str,
        work: impl FnOnce(&Inner) -> Result<T, ShardingError> + Send + 'static,
    ) -> Result<T, ShardingError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || work(&inner))
            .await
            .map_err(|err| ShardingError::Task {
                op,
                detail: err.to_string(),
            })?
    }
}

fn delivered(result: DeliveryOutput, topic: &str, partition: u32) -> Result<u64, ShardingError> {
    let target = || format!("{topic}[{partition}]");
    match result {
        Ok(Ok(delivery)) => {
            if delivery.partition != partition as i32 {
                return Err(ShardingError::AppendRefused {
                    topic: topic.to_owned(),
                    partition,
                    reason: format!("the record landed in partition {}", delivery.partition),
                });
            }
            u64::try_from(delivery.offset).map_err(|_| ShardingError::AppendRefused {
                topic: topic.to_owned(),
                partition,
                reason: format!("the broker returned offset {}", delivery.offset),
            })
        }
        Ok(Err((source, _message))) => Err(kafka_error("produce", target(), source)),
        Err(_canceled) => Err(kafka_error("produce", target(), KafkaError::Canceled)),
    }
}

/// What a delivery future yields: the broker's answer, or `Canceled` if the producer went
/// away first.
type DeliveryOutput = <rdkafka::producer::DeliveryFuture as std::future::Future>::Output;

impl PartitionedLog for KafkaLog {
    fn create_topics<'a>(&'a self, topics: &'a [TopicSpec]) -> LogFuture<'a, ()> {
        Box::pin(admin::create_topics(self, topics))
    }

    fn append<'a>(
        &'a self,
        topic: &'a str,
        partition: u32,
        records: Vec<Vec<u8>>,
    ) -> LogFuture<'a, Vec<u64>> {
        Box::pin(self.append_records(topic, partition, records))
    }

    fn read<'a>(
        &'a self,
        topic: &'a str,
        partition: u32,
        from: u64,
        bound: ReadBound,
        wait: Duration,
    ) -> LogFuture<'a, Vec<LogRecord>> {
        let (bound, wait) = clamp_read(bound, wait);
        let topic = topic.to_owned();
        Box::pin(self.blocking("read", move |inner| {
            match inner
                .readers
                .read(&topic, partition, from, bound, wait, read::ReadMode::Wait)
            {
                Ok(records) if !records.is_empty() => Ok(records),
                Ok(_) => {
                    // Nothing came: either nothing is there yet, or `from` is outside the
                    // log and the broker answered with nothing instead of an error (some
                    // Kafka-compatible brokers do). Ask, so both behave alike.
                    let (start, end) = inner.watermarks(&topic, partition)?;
                    if from < start || from > end {
                        return Err(ShardingError::OffsetOutOfRange {
                            topic,
                            partition,
                            offset: from,
                            start,
                            end,
                        });
                    }
                    Ok(Vec::new())
                }
                Err(read::ReadError::Failed(err)) => Err(err),
                Err(read::ReadError::OutOfRange) => {
                    let (start, end) = inner.watermarks(&topic, partition)?;
                    Err(ShardingError::OffsetOutOfRange {
                        topic,
                        partition,
                        offset: from,
                        start,
                        end,
                    })
                }
            }
        }))
    }

    fn end_offset<'a>(&'a self, topic: &'a str, partition: u32) -> LogFuture<'a, u64> {
        let topic = topic.to_owned();
        Box::pin(self.blocking("end offset", move |inner| {
            inner.end_offset(&topic, partition)
        }))
    }

    fn partition_count<'a>(&'a self, topic: &'a str) -> LogFuture<'a, u32> {
        let topic = topic.to_owned();
        Box::pin(self.blocking("partition count", move |inner| {
            inner
                .partition_count(&topic)?
                .ok_or(ShardingError::UnknownTopic { topic })
        }))
    }
}
