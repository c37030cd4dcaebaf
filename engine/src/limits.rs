//! Every bound and tunable of the engine, in one place (TigerBeetle style: put a limit on
//! everything). Names carry their unit last.

/// Bounds and tunables of one engine process. `Limits::default()` is what the hub runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Group commit: at most this many commands are applied and made durable together.
    pub batch_size_max: usize,
    /// Group commit: a batch takes no more client commands once their WAL bytes (payload
    /// plus a fixed bound per command, `Command::wal_bytes_max`) reach this, so a burst of
    /// large prepares never makes a record the WAL refuses (`BODY_BYTES_MAX`).
    pub batch_bytes_max: usize,
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
    /// Entries of the position ledger (`crate::ledger`) are kept at least this long
    /// (whole minutes are dropped once wholly older).
    pub ledger_retention_ms: i64,
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
        DEFAULT
    }
}

/// What the hub runs with (`Limits::default()`), as a constant so that the relations
/// between bounds are checked at compile time (below).
pub const DEFAULT: Limits = Limits {
    batch_size_max: 8192,
    batch_bytes_max: 64 * 1024 * 1024,
    batch_wait_us: 100,
    mailbox_capacity: 65_536,
    open_transfers_max: 1_000_000,
    parked_prepares_max: 4_096,
    payload_bytes_max: 64 * 1024,
    retention_ms: 24 * 3_600 * 1_000,
    ledger_retention_ms: LEDGER_RETENTION_MS_DEFAULT,
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
    wal_segment_bytes: SEGMENT_BYTES_MAX,
    archive_filter_bytes_max: 128 * 1024 * 1024,
};

// ----- fixed bounds of the runtime -----------------------------------------------------
// Bounds that are not worth configuring, in one place with the rest.

/// What the position ledger keeps by default: 90 days, a quarter's audits.
pub const LEDGER_RETENTION_MS_DEFAULT: i64 = 90 * 24 * 3_600 * 1_000;
/// The position ledger groups an account's entries per this span of hub time on disk:
/// the unit of its range reads and of its retention.
pub const LEDGER_BUCKET_MS: u64 = 60_000;
/// Entries in one stored chunk of the position ledger, at most; with an entry's encoded
/// size well under 200 bytes a chunk stays under `CHUNK_BYTES_MAX` (a test checks).
pub const LEDGER_CHUNK_ENTRIES_MAX: usize = 256;
/// A query of the position ledger answers at most this many entries (the answer says
/// when it was cut, and from when to go on).
pub const LEDGER_QUERY_ENTRIES_MAX: usize = 10_000;

/// The compactor drops position ledger entries past retention this often.
pub const LEDGER_PRUNE_INTERVAL_MS: u64 = 60_000;

/// Bound on archiver backlog, in batches of finished transfers.
pub const ARCHIVE_QUEUE_BATCHES_MAX: usize = 1_024;
/// The archiver makes at most this many jobs durable with one sync.
pub const ARCHIVE_JOBS_PER_SYNC_MAX: usize = 4_096;
/// The archiver makes its writes durable at most this often.
pub const ARCHIVE_SYNC_INTERVAL_MS: u64 = 200;
/// Bound on WAL trims waiting for the trimmer (a full queue skips a trim: the next
/// snapshot's trim covers it).
pub const TRIM_QUEUE_MAX: usize = 256;
/// Bound on sync requests waiting for the syncer.
pub const SYNC_QUEUE_MAX: usize = 4_096;
/// With nothing to merge or prune, the compactor looks again after this long.
pub const COMPACTOR_IDLE_MS: u64 = 100;
/// Nice value of the maintenance threads (compactor, trimmer, filter loader): their work
/// can wait, so when the cores are busy the actors and the syncer (and, in the embedded
/// hub, the HTTP workers) go first. The archiver keeps the normal priority: partitions
/// wait for it when their cache of finished transfers is full.
pub const MAINTENANCE_NICE: i32 = 10;

/// An admin command that finds a partition's mailbox full is tried this many times...
pub const ADMIN_SUBMIT_ATTEMPTS_MAX: u32 = 100;
/// ...this long apart (so for up to about 2 s) before the operator gets a 503.
pub const ADMIN_RETRY_WAIT_MS: u64 = 20;
/// Bound on queued read queries per partition.
pub const QUERY_QUEUE_MAX: usize = 1_024;

// ----- settlement ----------------------------------------------------------------------

/// Closed settlement windows whose nets each partition keeps (`machine::settlement`); the
/// hub reads a window's nets right after closing it, so a few are plenty.
pub const CLOSED_WINDOWS_KEPT_MAX: usize = 16;
/// Settlement windows and settlements the hub's settlement book keeps (then the oldest
/// settled or aborted ones are forgotten).
pub const SETTLEMENT_BOOK_ENTRIES_MAX: usize = 10_000;
/// Accounts one settlement may cover (each is one admin step per state change).
pub const SETTLEMENT_ACCOUNTS_MAX: usize = 100_000;

// ----- the partition actor -------------------------------------------------------------

/// Batches applied ahead of durability, per partition: batch k+1 is applied while batch
/// k is being synced.
pub const PIPELINE_DEPTH_MAX: usize = 2;
/// An idle actor wakes at least this often (to offer results the event channel had no
/// room for).
pub const IDLE_TURN_MS: u64 = 50;

/// A batch's encoding buffer keeps at most this much capacity between batches (a rare
/// huge batch does not pin its memory for good).
pub const WAL_BUFFER_RETAINED_BYTES_MAX: usize = 8 << 20;

/// A command's WAL bytes apart from its payload are at most this (ids, names, amounts,
/// hashes, the condition, and the archived record looked up for a duplicate check: a few
/// hundred bytes in MessagePack, FSP names and currencies being short and bounded).
pub const COMMAND_FIXED_BYTES_MAX: usize = 1_024;

// ----- storage: the WAL -----------------------------------------------------------------

/// Default size at which the log rolls to a new segment file.
pub const SEGMENT_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Largest frame body (a group commit's encoded batch).
pub const BODY_BYTES_MAX: usize = 256 * 1024 * 1024;

// ----- storage: sled (snapshots, registry, archive) -------------------------------------

/// Largest value written to sled in one piece.
///
/// sled 0.34 writes any page larger than `segment_size / 4` as a separate blob file and
/// never fsyncs blob files, so a blob would escape our fdatasync of the data file. A leaf
/// page holds at most 17 entries before it splits, so pages stay below
/// `17 * CHUNK_BYTES_MAX` (about 1.1 MiB), far under the 4 MiB threshold of
/// [`SEGMENT_BYTES`]. A test checks that no blob file is ever written.
pub const CHUNK_BYTES_MAX: usize = 64 * 1024;
/// sled segment size (a power of two); sets the blob threshold above.
pub const SEGMENT_BYTES: usize = 16 * 1024 * 1024;
/// Largest encoded batch or snapshot, in chunks (4 GiB at 64 KiB per chunk).
pub const CHUNKS_MAX: usize = 65_535;
/// How long opening a sled database waits for the file lock of a handle just dropped.
/// sled lets go of its lock only when its background threads have let go of the
/// database, a moment after the last handle is dropped, so a reopen in the same process
/// (a test, or an embedded hub stopped and started again) can find it still held. A lock
/// still held after this (another process has the directory) refuses the open.
pub const SLED_LOCK_WAIT_MS_MAX: u64 = 2_000;
/// Pause between two attempts to take that lock.
pub const SLED_LOCK_RETRY_MS: u64 = 10;

/// Runs of one level merged together into one run of the next level.
pub const FAN_IN: usize = 8;
/// Largest encoded finished transfer (they are a few hundred bytes; a larger one means a
/// bug, and would break the chunk size bound that keeps sled from writing blob files).
pub const RECORD_BYTES_MAX: usize = CHUNK_BYTES_MAX / 16;
/// Chunk keys removed per sled batch when a run is deleted.
pub const DELETE_KEYS_PER_BATCH_MAX: usize = 4_096;

// ----- relations between the bounds, checked when the engine is compiled -----------------

// One borrow per parked prepare plus a tick must always fit in a partition's peer lane.
const _: () = assert!(DEFAULT.parked_prepares_max < DEFAULT.peer_lane_capacity);
// A batch can take every command a full mailbox holds, and at least one.
const _: () = assert!(DEFAULT.batch_size_max >= 1);
const _: () = assert!(DEFAULT.batch_size_max <= DEFAULT.mailbox_capacity);
// The outbox holds at least what the event channel can hold in flight.
const _: () = assert!(DEFAULT.outbox_events_max >= DEFAULT.events_capacity);
// A prepare expiring before the duplicate check forgets it: expiry must be decided
// inside retention, and idle returns well inside it.
const _: () = assert!(DEFAULT.idle_return_ms < DEFAULT.retention_ms);
// The archiver can make a full queue durable with one sync.
const _: () = assert!(ARCHIVE_JOBS_PER_SYNC_MAX >= ARCHIVE_QUEUE_BATCHES_MAX);
// An admin change waits for a full mailbox at most a few seconds before the operator
// is told the hub is overloaded.
const _: () = assert!(ADMIN_SUBMIT_ATTEMPTS_MAX as u64 * ADMIN_RETRY_WAIT_MS <= 5_000);
const _: () = assert!(DEFAULT.centralise_exit_pct > 0 && DEFAULT.centralise_exit_pct <= 100);
// The largest batch fits one WAL record: client commands up to batch_bytes_max, plus the
// last one taken (at most one payload over), plus peer messages (as many as
// batch_size_max, of fixed size), plus the record's own header.
const _: () = assert!(
    DEFAULT.batch_bytes_max
        + DEFAULT.payload_bytes_max
        + (2 * DEFAULT.batch_size_max + 1) * COMMAND_FIXED_BYTES_MAX
        + 4_096
        <= BODY_BYTES_MAX
);
// Pipelining needs at least the batch being synced and the one being applied.
const _: () = assert!(PIPELINE_DEPTH_MAX >= 1);
// The default WAL segment is within the largest a segment may be, and a frame's body
// fits a segment's `u32` length field.
const _: () = assert!(DEFAULT.wal_segment_bytes <= SEGMENT_BYTES_MAX);
const _: () = assert!(BODY_BYTES_MAX as u64 <= u32::MAX as u64);
// sled's blob threshold is segment_size / 4: a leaf page of 17 chunks must stay under it
// (see CHUNK_BYTES_MAX), and an archived record fits a chunk many times over.
const _: () = assert!(17 * CHUNK_BYTES_MAX < SEGMENT_BYTES / 4);
const _: () = assert!(RECORD_BYTES_MAX * 16 <= CHUNK_BYTES_MAX);
const _: () = assert!(SEGMENT_BYTES.is_power_of_two());
// A reopen waits for sled's lock in at least a few attempts.
const _: () = assert!(SLED_LOCK_RETRY_MS * 10 <= SLED_LOCK_WAIT_MS_MAX);

impl Limits {
    /// Checks a configuration the operator gave: every bound positive and the relations
    /// above kept. `Err` names the first broken one.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("batch_size_max", self.batch_size_max as u64),
            ("mailbox_capacity", self.mailbox_capacity as u64),
            ("open_transfers_max", self.open_transfers_max as u64),
            ("parked_prepares_max", self.parked_prepares_max as u64),
            ("peer_lane_capacity", self.peer_lane_capacity as u64),
            ("events_capacity", self.events_capacity as u64),
            ("outbox_events_max", self.outbox_events_max as u64),
            ("snapshot_every_batches", self.snapshot_every_batches),
            ("finished_cache_max", self.finished_cache_max as u64),
            ("wal_segment_bytes", self.wal_segment_bytes),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(format!("{name} must be positive"));
        }
        if self.parked_prepares_max >= self.peer_lane_capacity {
            return Err("parked_prepares_max must be below peer_lane_capacity".into());
        }
        if self.retention_ms <= 0 || self.idle_return_ms >= self.retention_ms {
            return Err("retention_ms must be positive and above idle_return_ms".into());
        }
        let batch_bytes_max = self
            .batch_bytes_max
            .checked_add(self.payload_bytes_max)
            .and_then(|b| b.checked_add((2 * self.batch_size_max + 1) * COMMAND_FIXED_BYTES_MAX))
            .and_then(|b| b.checked_add(4_096));
        if self.batch_bytes_max == 0 || batch_bytes_max.is_none_or(|b| b > BODY_BYTES_MAX) {
            return Err(format!(
                "batch_bytes_max must be positive, and with payload_bytes_max and \
                 batch_size_max commands of fixed size fit a WAL record of {BODY_BYTES_MAX} bytes"
            ));
        }
        if self.wal_segment_bytes > SEGMENT_BYTES_MAX {
            return Err(format!(
                "wal_segment_bytes must be at most {SEGMENT_BYTES_MAX}"
            ));
        }
        if !(1..=100).contains(&self.centralise_exit_pct) {
            return Err("centralise_exit_pct must be 1..=100".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_a_broken_relation_is_named() {
        assert_eq!(Limits::default().validate(), Ok(()));
        let zero = Limits {
            outbox_events_max: 0,
            ..Limits::default()
        };
        assert_eq!(
            zero.validate(),
            Err("outbox_events_max must be positive".to_string())
        );
        let lane = Limits {
            peer_lane_capacity: 16,
            parked_prepares_max: 16,
            ..Limits::default()
        };
        assert!(lane
            .validate()
            .is_err_and(|e| e.contains("peer_lane_capacity")));
    }
}
