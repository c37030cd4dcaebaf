//! Every bound and tunable of the engine, in one place (TigerBeetle style: put a limit on
//! everything). Names carry their unit last.

/// Bounds and tunables of one engine process. `Limits::default()` is what the hub runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Group commit: at most this many commands are applied and made durable together.
    pub batch_size_max: usize,
    /// Group commit: after the first command arrives, wait at most this long for more.
    pub batch_wait_us: u64,
    /// Capacity of each partition actor's mailbox; a full mailbox answers "overloaded".
    pub mailbox_capacity: usize,
    /// Open (not yet final) transfers one partition holds in memory.
    pub open_transfers_max: usize,
    /// Prepares one partition keeps waiting for headroom from the home bank.
    pub parked_prepares_max: usize,
    /// Size of the opaque payload a transfer command may carry.
    pub payload_bytes_max: usize,
    /// Finished transfers stay queryable and deduplicated for this long.
    pub retention_ms: i64,
    /// A distributed slice gives its free headroom back after this long without use.
    pub idle_return_ms: i64,
    /// The home leaves centralised mode once the bank holds this share (percent) of the limit.
    pub centralise_exit_pct: i64,
    /// How often the runtime sends `Tick` to each partition.
    pub tick_interval_ms: u64,
    /// A snapshot is written after this many batches, and the command WAL before it dropped.
    pub snapshot_every_batches: u64,
    /// Finished transfers kept in memory until the archiver has written them.
    pub finished_cache_max: usize,
    /// Capacity of each partition's peer lane (messages from other partitions and ticks).
    pub peer_lane_capacity: usize,
    /// Capacity of the event channel to the notifier.
    pub events_capacity: usize,
    /// Results one partition keeps until its event consumer acknowledges them (the
    /// outbox, also written into snapshots so that a crash loses none); past it the
    /// oldest are shed, so a consumer that stopped costs bounded memory.
    pub outbox_events_max: usize,
    /// Out-of-order peer messages one partition tolerates per sender.
    pub peer_reorder_window_max: usize,
    /// sled page cache, in bytes.
    pub sled_cache_bytes: u64,
    /// The WAL rolls to a new segment file at about this size; whole segments are what
    /// trimming deletes, so this also bounds how much log a restart scans past the
    /// snapshots.
    pub wal_segment_bytes: u64,
    /// Memory for the "certainly not archived" filters of all partitions together
    /// (about 1.25 bytes per finished transfer inside the retention window; beyond that,
    /// duplicate checks of new transfers go to disk: slower, still exact).
    pub archive_filter_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            batch_size_max: 8192,
            batch_wait_us: 100,
            mailbox_capacity: 65_536,
            open_transfers_max: 1_000_000,
            parked_prepares_max: 4_096,
            payload_bytes_max: 64 * 1024,
            retention_ms: 24 * 3_600 * 1_000,
            idle_return_ms: 5_000,
            centralise_exit_pct: 20,
            tick_interval_ms: 100,
            snapshot_every_batches: 2_000,
            finished_cache_max: 1_000_000,
            peer_lane_capacity: 1 << 20,
            events_capacity: 65_536,
            outbox_events_max: 65_536,
            peer_reorder_window_max: 100_000,
            sled_cache_bytes: 256 * 1024 * 1024,
            wal_segment_bytes: crate::storage::wal::SEGMENT_BYTES_MAX,
            archive_filter_bytes_max: 128 * 1024 * 1024,
        }
    }
}
