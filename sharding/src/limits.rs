//! Every bound, batch size and timeout of the crate, in one place.
//!
//! Each constant says what it bounds and why it has the value it has. Configuration that
//! an operator tunes per cluster (broker addresses, the liveness timeout, replication) is
//! in [`crate::kafka::KafkaConfig`] and [`crate::ownership::Ownership::new`]; what is here
//! is fixed by the code's own needs.

// ---- records -------------------------------------------------------------------------

/// Largest record the crate appends or accepts, envelope included. Kafka's default
/// `message.max.bytes` is about 1 MiB; an engine batch of events is far below it. A bigger
/// record is refused before it is sent, with an error naming its size.
pub const RECORD_BYTES_MAX: usize = 900 * 1024;

/// Most records one `append` call takes. A group commit of the engine is at most a few
/// thousand records; a bigger call is a caller bug, refused rather than queued.
pub const APPEND_RECORDS_MAX: usize = 10_000;

// ---- the in-process log ---------------------------------------------------------------

/// Bytes one partition of the in-process log holds before an append is refused with
/// `LogFull`. The in-process log keeps everything in memory and never trims: it is for
/// the embedded hub's wiring, simulations and tests, not for unbounded history.
pub const MEMORY_PARTITION_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Topics the in-process log holds.
pub const MEMORY_TOPICS_MAX: usize = 64;

// ---- Kafka producer -------------------------------------------------------------------

/// How long the producer waits to fill a batch (`linger.ms`). A group commit hands over
/// all its records at once, so a short linger already batches them; a longer one would
/// add its whole value to every acknowledgement's latency.
pub const PRODUCE_LINGER_MS: u32 = 2;

/// Records per produce batch (`batch.num.messages`).
pub const PRODUCE_BATCH_RECORDS_MAX: u32 = 10_000;

/// Bytes per produce batch (`batch.size`).
pub const PRODUCE_BATCH_BYTES_MAX: u32 = 1024 * 1024;

/// Records the producer's local queue holds (`queue.buffering.max.messages`): the bound
/// on records handed to librdkafka and not yet acknowledged by the brokers.
pub const PRODUCE_QUEUE_RECORDS_MAX: u32 = 100_000;

/// Kilobytes the producer's local queue holds (`queue.buffering.max.kbytes`).
pub const PRODUCE_QUEUE_KBYTES_MAX: u32 = 256 * 1024;

/// How long a record may wait for its acknowledgement, retries included
/// (`message.timeout.ms`). Past it the append fails; the caller stops the partition
/// rather than guess whether the record landed.
pub const PRODUCE_DELIVERY_TIMEOUT_MS: u32 = 30_000;

/// How long `append` waits for room when the local queue is full, in one wait. The wait
/// is repeated at most [`PRODUCE_QUEUE_FULL_RETRIES`] times.
pub const PRODUCE_QUEUE_FULL_WAIT_MS: u64 = 10;

/// How many times `append` waits for room in a full local queue before it fails with
/// `Overloaded` (10 ms × 500 = 5 s of back-pressure at most).
pub const PRODUCE_QUEUE_FULL_RETRIES: u32 = 500;

// ---- Kafka reads ----------------------------------------------------------------------

/// Consumers a Kafka log keeps for reads. Each is a librdkafka handle with its own threads
/// and fetch buffer; a read that continues where the previous read of the same partition
/// stopped reuses that consumer's buffered records instead of fetching again.
pub const READ_CONSUMERS: usize = 4;

/// Most read consumers one Kafka log may be configured with.
pub const READ_CONSUMERS_MAX: usize = 64;

/// How long a broker may hold a fetch that has no data yet (`fetch.wait.max.ms`): the
/// latency of a tailing reader when records arrive.
pub const READ_FETCH_WAIT_MS: u32 = 10;

/// Bytes fetched per partition per request (`max.partition.fetch.bytes`).
pub const READ_PARTITION_FETCH_BYTES: u32 = 1024 * 1024;

/// Kilobytes a read consumer buffers ahead of the reader (`queued.max.messages.kbytes`).
pub const READ_QUEUE_KBYTES_MAX: u32 = 16 * 1024;

/// How long one poll of a read consumer blocks; a read polls in slices of this until its
/// own wait is over, so it never overshoots that wait by more than one slice.
pub const READ_POLL_SLICE_MS: u64 = 20;

/// How long the read that confirms a partition's end offset waits for the broker's
/// answer (it ends at once when the broker says "end of partition").
pub const END_PROBE_WAIT_MS: u64 = 500;

/// Reads that confirmation makes at most: a partition still being appended to is chased
/// this far, no further (an end offset is a moment's answer anyway).
pub const END_PROBE_READS_MAX: u32 = 4;

/// Records one read returns at most, whatever the caller asks.
pub const READ_RECORDS_MAX: usize = 10_000;

/// Longest a read waits for its first record, whatever the caller asks.
pub const READ_WAIT_MAX_MS: u64 = 30_000;

// ---- Kafka metadata and admin ---------------------------------------------------------

/// How long a metadata request, a watermark query or a topic creation may take.
pub const ADMIN_TIMEOUT_MS: u64 = 10_000;

/// How many times topic creation re-reads the metadata of a topic it just created before
/// it gives up waiting for the brokers to show it (100 ms apart: 5 s).
pub const CREATE_TOPIC_METADATA_RETRIES: u32 = 50;

/// Pause between those re-reads.
pub const CREATE_TOPIC_METADATA_PAUSE_MS: u64 = 100;

// ---- restore and event cursors --------------------------------------------------------

/// Records read per step while replaying a partition's events or looking for the
/// epoch marker before an offset.
pub const REPLAY_READ_RECORDS: usize = 2_000;

/// Bytes read per replay step.
pub const REPLAY_READ_BYTES: usize = 8 * 1024 * 1024;

/// How many empty reads in a row a replay accepts before it fails: the log's end offset
/// was known when the replay started, so records below it must come.
pub const REPLAY_EMPTY_READS_MAX: u32 = 50;

/// How long each of those reads waits.
pub const REPLAY_READ_WAIT_MS: u64 = 200;

// ---- control log ----------------------------------------------------------------------

/// Nodes the control log's fold keeps track of. A heartbeat from one more node is refused
/// (and named): a cluster of this size is a configuration error, not growth.
pub const NODES_MAX: usize = 256;

/// Longest node id, in bytes.
pub const NODE_ID_BYTES_MAX: usize = 64;

/// Format ranges one heartbeat may advertise.
pub const HEARTBEAT_FORMATS_MAX: usize = 64;

// ---- the local broker for tests -------------------------------------------------------

/// How long a started broker has to accept connections before the start fails.
pub const BROKER_START_TIMEOUT_MS: u64 = 15_000;

/// Pause between connection attempts while a broker starts.
pub const BROKER_START_POLL_MS: u64 = 50;

/// How long a stopped broker has to exit after SIGKILL before the stop reports it.
pub const BROKER_STOP_TIMEOUT_MS: u64 = 5_000;
