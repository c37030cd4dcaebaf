//! Durable storage: the only module that knows sled or touches data files.
//!
//! Layout under the data directory:
//!
//! * `wal/`: the write-ahead log of applied batches, one append-only file log shared by
//!   every partition (see [`wal`]): one checksummed frame per group commit (not per
//!   transfer) holding the encoded [`WalRecord`]. One `fdatasync` makes every partition's
//!   frames durable. Each frame also records how far its segment was durable when it was
//!   appended, so that at open a tail written after the last sync (torn, or lost pages
//!   followed by surviving ones) is cut, while damage to synced frames is refused.
//!   `wal/held/{p}`: the records of a stopped partition p set aside
//!   ([`Storage::set_aside_partition`]) so that the log can be trimmed without it.
//! * `sled/`, one sled database with several trees:
//!   * `snap/{p}`: the latest snapshot of partition p's state, split into chunks of at most
//!     [`CHUNK_BYTES_MAX`] because sled 0.34 writes larger values as separate blob files
//!     that it never fsyncs; plus the messages it sent that the receivers have not yet made
//!     durable.
//!   * `meta`: partition count and per-partition epoch.
//!   * `registry`: the gateway's participant registry (opaque bytes by key).
//! * `archive/`, a second sled database: finished transfers, findable by transferId for
//!   GET and the duplicate check, written off the critical path by the archiver as sorted
//!   runs that are merged in the background (see [`archive`]). It has its own flush +
//!   fdatasync (`sync_archive`); the runtime counts a transfer as archived only after
//!   that, and until then keeps it in memory and in its snapshots.
//!
//! Durability: [`Store::sync`] (the group commit) is one `fdatasync` of the WAL. sled's
//! `flush()` issues `sync_file_range`, which survives a process crash but not a power
//! loss, so wherever sled must be durable it is followed by `fdatasync` of sled's data
//! file: in `sync` when a registry entry or epoch was written since the last one, and in
//! `truncate_batches` before WAL segments behind a snapshot are deleted. Nothing is
//! released to a client before `sync` returns.
//!
//! A failed sync is final. Linux reports a writeback error to one `fdatasync` and lets the
//! next one succeed although the lost pages are gone, so after any failed write, flush or
//! fdatasync (of the WAL, of sled in `sync` or `truncate_batches`, or of the archive in
//! `sync_archive`) the store refuses every later `sync`, `sync_archive`, trim and append
//! until it is reopened; [`Storage::failed`] says why and since when, so that the runtime
//! can turn readiness false. A reopen recovers from what really is on disk.

use crate::command::{Command, FinishedTransfer};
use crate::ids::{AccountKey, TransferId};
use crate::ledger::Entry;
use crate::machine::Outgoing;
use crate::EngineError;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

pub mod archive;
pub mod ledger;
pub mod wal;
pub use archive::ArchiveStats;
pub use ledger::LedgerStats;

pub use crate::limits::{
    CHUNKS_MAX, CHUNK_BYTES_MAX, SEGMENT_BYTES, SLED_LOCK_RETRY_MS, SLED_LOCK_WAIT_MS_MAX,
};

const RECORD_MAGIC: u8 = b'W';
const RECORD_VERSION: u8 = 1;

/// One group commit of one partition: its input in log order, with the archived records
/// the runtime looked up for it, so that a replay sees exactly the same input.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WalRecord {
    pub batch_seq: u64,
    pub epoch: u64,
    pub inputs: Vec<(Command, Option<FinishedTransfer>)>,
}

/// The borrowed form of [`WalRecord`], encoded identically: lets the runtime write a batch
/// without cloning its commands.
#[derive(Serialize)]
pub struct WalRecordRef<'a> {
    pub batch_seq: u64,
    pub epoch: u64,
    pub inputs: Vec<(&'a Command, &'a Option<FinishedTransfer>)>,
}

/// Encodes a batch record (before the batch is applied, so that applying can consume it).
pub fn encode_batch(record: &WalRecordRef<'_>) -> Result<Vec<u8>, EngineError> {
    crate::codec::encode_record(crate::codec::RecordKind::WalBatch, record).map_err(storage_err)
}

/// [`encode_batch`] into a buffer the caller reuses from batch to batch.
pub fn encode_batch_into(record: &WalRecordRef<'_>, out: &mut Vec<u8>) -> Result<(), EngineError> {
    crate::codec::encode_record_into(crate::codec::RecordKind::WalBatch, record, out)
        .map_err(storage_err)
}

/// A partition snapshot: the state bytes (see `PartitionState::snapshot_bytes`) and the
/// sent messages not yet confirmed durable by their receivers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub batch_seq: u64,
    pub state: Vec<u8>,
    pub unconfirmed: Vec<Outgoing>,
    /// Finished transfers not yet known to be archived when the snapshot was taken.
    pub unarchived: Vec<FinishedTransfer>,
    /// Results published but not yet acknowledged by the event consumer (the outbox),
    /// by event sequence number: recovery publishes them again.
    pub outbox: Vec<(u64, crate::command::Event)>,
    /// Sequence number the partition's next event gets.
    pub next_event_seq: u64,
    /// Position ledger entries not yet known to be written by the archiver.
    pub unledgered: Vec<Entry>,
}

/// Format version 1 of [`SnapshotRecord`], from before the position ledger: read (no
/// entries pending), never written.
#[derive(Debug, Clone, Deserialize)]
pub struct SnapshotRecordV1 {
    pub batch_seq: u64,
    pub state: Vec<u8>,
    pub unconfirmed: Vec<Outgoing>,
    pub unarchived: Vec<FinishedTransfer>,
    pub outbox: Vec<(u64, crate::command::Event)>,
    pub next_event_seq: u64,
}

impl SnapshotRecordV1 {
    pub fn upgrade(self) -> SnapshotRecord {
        SnapshotRecord {
            batch_seq: self.batch_seq,
            state: self.state,
            unconfirmed: self.unconfirmed,
            unarchived: self.unarchived,
            outbox: self.outbox,
            next_event_seq: self.next_event_seq,
            unledgered: Vec::new(),
        }
    }
}

/// Decodes a stored snapshot record of any version this build reads.
pub fn decode_snapshot(bytes: &[u8]) -> Result<SnapshotRecord, crate::codec::CodecError> {
    use crate::codec::{decode_body, open_record, RecordKind};
    let kind = RecordKind::Snapshot;
    let (version, body) = open_record(kind, bytes)?;
    if version == 1 {
        let old: SnapshotRecordV1 = decode_body(kind, version, body)?;
        return Ok(old.upgrade());
    }
    decode_body(kind, version, body)
}

/// What the runtime needs from durable storage. The implementation is [`Store`] (a file
/// WAL, sled for the rest).
pub trait Storage: Send + Sync + 'static {
    /// Writes one batch record of partition `partition` (not yet durable: call `sync`).
    fn append_batch(&self, partition: u32, record: &WalRecordRef<'_>) -> Result<(), EngineError> {
        self.append_encoded(partition, record.batch_seq, &encode_batch(record)?)
    }
    /// Writes a batch record encoded by [`encode_batch`] (not yet durable: call `sync`).
    fn append_encoded(
        &self,
        partition: u32,
        batch_seq: u64,
        body: &[u8],
    ) -> Result<(), EngineError>;
    /// Batch records after `after`, in order. Stops the partition on a malformed record.
    fn batches_after(&self, partition: u32, after: u64) -> Result<Vec<WalRecord>, EngineError>;
    fn write_snapshot(&self, partition: u32, snapshot: &SnapshotRecord) -> Result<(), EngineError>;
    fn load_snapshot(&self, partition: u32) -> Result<Option<SnapshotRecord>, EngineError>;
    /// Drops batch records up to and including `upto` (they are in a snapshot), after
    /// making that snapshot durable. Only garbage collection: it may keep more.
    fn truncate_batches(&self, partition: u32, upto: u64) -> Result<(), EngineError>;
    /// Sets a stopped partition's batch records aside, so that WAL trimming stops waiting
    /// for it: its records after the batch its snapshot covers are copied, byte for byte,
    /// into a file of their own (made durable before this returns), and `batches_after`
    /// keeps returning them (then any newer ones), also after a restart, so the partition
    /// recovers once it is repaired. Its first `truncate_batches` past them deletes the
    /// copy. Call it only for a partition that has stopped: records it writes afterwards
    /// hold the log back again. See [`wal::Wal::set_aside`]. A store that cannot (a test
    /// double) refuses, and the log then keeps waiting for the partition.
    fn set_aside_partition(&self, partition: u32) -> Result<(), EngineError> {
        Err(EngineError::Storage(format!(
            "this store cannot set partition {partition}'s records aside"
        )))
    }
    /// Bumps and returns the partition's owner epoch (durable at the next `sync`).
    fn next_epoch(&self, partition: u32) -> Result<u64, EngineError>;
    /// Writes finished transfers to the archive (durable after `sync_archive`).
    fn archive(&self, records: &[FinishedTransfer]) -> Result<(), EngineError>;
    /// Makes the archive durable: writes what `archive` queued, then its own sled flush
    /// and fdatasync of its data file.
    fn sync_archive(&self) -> Result<(), EngineError>;
    /// The newest archived record of this transferId (it may be older than retention).
    fn finished(&self, transfer_id: &TransferId) -> Result<Option<FinishedTransfer>, EngineError>;
    /// Calls `visit(routing hash, finished_ms)` for every archived transfer (used to fill
    /// the filters at start).
    fn for_each_finished(&self, visit: &mut dyn FnMut(u64, i64)) -> Result<(), EngineError>;
    /// One step of archive upkeep: drops what finished before `before_ms` (whole runs),
    /// merges runs. Returns whether there was work. Gives up cleanly when `stop` is set.
    fn maintain_archive(&self, before_ms: i64, stop: &AtomicBool) -> Result<bool, EngineError>;
    fn archive_stats(&self) -> ArchiveStats;
    /// Queues position ledger entries (durable after `sync_archive`).
    fn ledger_add(&self, entries: &[Entry]) -> Result<(), EngineError>;
    /// The account's durable ledger entries with `from_ms <= at_ms <= to_ms`, in time
    /// order without repeats: at most `entries_max`, plus one more if there are more.
    fn ledger_range(
        &self,
        account: &AccountKey,
        from_ms: i64,
        to_ms: i64,
        entries_max: usize,
    ) -> Result<Vec<Entry>, EngineError>;
    /// Drops ledger entries of minutes wholly before `before_ms`; returns the chunks
    /// dropped.
    fn prune_ledger(&self, before_ms: i64) -> Result<u64, EngineError>;
    fn ledger_stats(&self) -> LedgerStats;
    fn registry_put(&self, key: &str, value: &[u8]) -> Result<(), EngineError>;
    fn registry_get(&self, key: &str) -> Result<Option<Vec<u8>>, EngineError>;
    fn registry_scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, EngineError>;
    /// Makes every batch record, registry entry and epoch written so far durable: one
    /// fdatasync of the WAL, preceded by a sled flush + fdatasync only when a registry
    /// entry or epoch was written since the last one.
    fn sync(&self) -> Result<(), EngineError>;
    /// Why the store refuses to make anything durable, if it does: set by the first failed
    /// write or fdatasync of the WAL or of sled (a batch, a snapshot, the archive) and kept
    /// until the store is reopened. The runtime turns readiness false on it.
    fn failed(&self) -> Option<String>;
    /// Real fsyncs issued so far.
    fn fsyncs(&self) -> u64;
    /// Time spent making sled durable (flush + fdatasync) and in the WAL's fdatasync so
    /// far, in microseconds.
    fn sync_time_us(&self) -> (u64, u64);
}

/// The sled-backed [`Storage`].
pub struct Store {
    db: sled::Db,
    data_file: File,
    meta: sled::Tree,
    archive: archive::Archive,
    /// The position ledger, a tree of the archive's database.
    ledger: ledger::Ledger,
    registry: sled::Tree,
    wal: wal::Wal,
    snap: Vec<sled::Tree>,
    /// Set by writes to sled that a client waits for (registry, epochs); `sync` then
    /// flushes sled too. Snapshots do not set it: the trimmer makes them durable.
    sled_dirty: AtomicBool,
    fsyncs: AtomicU64,
    flush_us: AtomicU64,
    fdatasync_us: AtomicU64,
    /// Test-only fault: the next fdatasync of sled's data file fails without syncing.
    sled_sync_fault_armed: AtomicBool,
    /// Set by the first failed flush or fdatasync of sled or of the archive: from then on
    /// nothing is made durable (the WAL keeps its own reason, see [`wal::Wal::failed`]).
    sled_failed: Mutex<Option<String>>,
}

/// Which fdatasync [`Store::inject_sync_failure`] makes fail.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub enum SyncFault {
    /// The WAL's (group commit, segment roll).
    Wal,
    /// sled's data file (snapshots, registry, epochs).
    Sled,
}

fn storage_err(e: impl std::error::Error + Send + Sync + 'static) -> EngineError {
    EngineError::Store {
        source: Box::new(e),
    }
}

/// Opens a sled database, waiting up to [`SLED_LOCK_WAIT_MS_MAX`] for a lock that a
/// handle dropped a moment ago in this process still holds.
fn open_sled(config: &sled::Config) -> Result<sled::Db, EngineError> {
    let mut waited_ms = 0;
    loop {
        match config.open() {
            // sled reports a held lock only as this message (an `Other` IO error).
            Err(sled::Error::Io(e))
                if e.to_string().starts_with("could not acquire lock")
                    && waited_ms < SLED_LOCK_WAIT_MS_MAX =>
            {
                std::thread::sleep(std::time::Duration::from_millis(SLED_LOCK_RETRY_MS));
                waited_ms += SLED_LOCK_RETRY_MS;
            }
            other => return other.map_err(storage_err),
        }
    }
}

impl Store {
    /// Opens or creates the store under `dir` for `partitions` partitions. A store created
    /// with another partition count is refused: routing depends on it.
    pub fn open(dir: &Path, partitions: u32, cache_bytes: u64) -> Result<Store, EngineError> {
        Self::open_with(dir, partitions, cache_bytes, wal::SEGMENT_BYTES_MAX)
    }

    /// [`Store::open`] with a chosen WAL segment size (tests use small ones).
    pub fn open_with(
        dir: &Path,
        partitions: u32,
        cache_bytes: u64,
        wal_segment_bytes: u64,
    ) -> Result<Store, EngineError> {
        std::fs::create_dir_all(dir).map_err(storage_err)?;
        let db = open_sled(
            &sled::Config::new()
                .path(dir.join("sled"))
                .cache_capacity(cache_bytes)
                .flush_every_ms(Some(500))
                .segment_size(SEGMENT_BYTES),
        )?;
        // fsync acts on the inode, so a second handle on sled's data file syncs its writes.
        let data_file = File::open(dir.join("sled").join("db")).map_err(storage_err)?;
        let meta = db.open_tree("meta").map_err(storage_err)?;
        let stored = meta.get("partitions").map_err(storage_err)?;
        match stored {
            Some(raw) => {
                let count =
                    decode_u64(&raw).ok_or_else(|| corrupt(0, "meta/partitions", "not a u64"))?;
                if count != u64::from(partitions) {
                    return Err(EngineError::Config(format!(
                        "data directory was created with {count} partitions, not {partitions}"
                    )));
                }
            }
            None => {
                meta.insert("partitions", &u64::from(partitions).to_be_bytes())
                    .map_err(storage_err)?;
            }
        }
        // The first format kept the WAL in sled trees; such a directory is refused rather
        // than recovered without its log.
        for name in db.tree_names() {
            if name.starts_with(b"wal/") && !db.open_tree(&name).map_err(storage_err)?.is_empty() {
                return Err(EngineError::Config(
                    "data directory holds a WAL in the old format (sled trees)".to_string(),
                ));
            }
        }
        let mut snap = Vec::new();
        for p in 0..partitions {
            snap.push(db.open_tree(format!("snap/{p}")).map_err(storage_err)?);
        }
        let wal = wal::Wal::open(&dir.join("wal"), partitions, wal_segment_bytes)?;
        let archive = archive::Archive::open(&dir.join("archive"), cache_bytes / 2)?;
        let ledger = ledger::Ledger::open(archive.db())?;
        let store = Store {
            archive,
            ledger,
            registry: db.open_tree("registry").map_err(storage_err)?,
            db,
            data_file,
            meta,
            wal,
            snap,
            sled_dirty: AtomicBool::new(true),
            fsyncs: AtomicU64::new(0),
            flush_us: AtomicU64::new(0),
            fdatasync_us: AtomicU64::new(0),
            sled_sync_fault_armed: AtomicBool::new(false),
            sled_failed: Mutex::new(None),
        };
        store.sync()?;
        Ok(store)
    }

    /// Makes every sled write so far durable: flush (`sync_file_range`), then fdatasync.
    /// A failure stops the store (see [`Store::stop`]).
    fn sync_sled(&self) -> Result<(), EngineError> {
        self.refuse_if_stopped()?;
        let started = std::time::Instant::now();
        self.db.flush().map_err(|e| self.stop(storage_err(e)))?;
        let synced = if self.sled_sync_fault_armed.swap(false, Ordering::AcqRel) {
            Err(std::io::Error::other("injected fdatasync failure"))
        } else {
            self.data_file.sync_data()
        };
        synced.map_err(|source| {
            self.stop(EngineError::Io {
                what: "fdatasync of sled's data file".into(),
                source,
            })
        })?;
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.flush_us
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Records the first failed sled or archive sync. Linux reports a writeback error
    /// once and may report the next fdatasync as a success although the pages it failed
    /// to write are gone, so a later success proves nothing: the store never again claims
    /// durability until it is reopened (and recovery sees what really is on disk).
    fn stop(&self, e: EngineError) -> EngineError {
        let mut failed = self.lock_sled_failed();
        if failed.is_none() {
            *failed = Some(wal::stopped_since_now(&e));
            tracing::error!(error = %e, "storage stopped: nothing more is made durable until reopened");
        }
        e
    }

    fn refuse_if_stopped(&self) -> Result<(), EngineError> {
        match &*self.lock_sled_failed() {
            Some(reason) => Err(EngineError::Storage(format!("storage stopped {reason}"))),
            None => Ok(()),
        }
    }

    fn lock_sled_failed(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        // An `Option` assignment cannot be left half done: poisoning is ignored.
        self.sled_failed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Store {
    /// Test hook: the next fdatasync of the WAL or of sled's data file fails without
    /// syncing, once, the way Linux reports a writeback error once. Nothing in the engine
    /// calls it.
    #[doc(hidden)]
    pub fn inject_sync_failure(&self, fault: SyncFault) {
        match fault {
            SyncFault::Wal => self.wal.inject_sync_failure(),
            SyncFault::Sled => self.sled_sync_fault_armed.store(true, Ordering::Release),
        }
    }
}

fn corrupt(partition: u32, what: &str, detail: impl std::fmt::Display) -> EngineError {
    EngineError::Corrupt {
        partition,
        what: what.to_string(),
        detail: detail.to_string(),
    }
}

fn decode_u64(raw: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(raw.try_into().ok()?))
}

fn chunk_key(seq: u64, chunk: u16) -> [u8; 10] {
    let mut key = [0u8; 10];
    key[..8].copy_from_slice(&seq.to_be_bytes());
    key[8..].copy_from_slice(&chunk.to_be_bytes());
    key
}

/// Splits `body` into chunks; chunk 0 starts with a header (magic, version, chunk count,
/// body length) so that a missing or extra chunk is detected on read.
fn write_chunks(batch: &mut sled::Batch, seq: u64, body: &[u8]) -> Result<(), EngineError> {
    let chunks: Vec<&[u8]> = if body.is_empty() {
        vec![&[][..]]
    } else {
        body.chunks(CHUNK_BYTES_MAX).collect()
    };
    if chunks.len() > CHUNKS_MAX {
        return Err(EngineError::Storage(format!(
            "record of {} bytes is too large",
            body.len()
        )));
    }
    for (index, chunk) in chunks.iter().enumerate() {
        let mut value = Vec::with_capacity(chunk.len() + 16);
        if index == 0 {
            value.push(RECORD_MAGIC);
            value.push(RECORD_VERSION);
            value.extend_from_slice(&(chunks.len() as u16).to_be_bytes());
            value.extend_from_slice(&(body.len() as u64).to_be_bytes());
        }
        value.extend_from_slice(chunk);
        batch.insert(&chunk_key(seq, index as u16)[..], value);
    }
    Ok(())
}

/// Reassembles the records of a partition's chunked snapshot tree, in key order.
fn read_chunked(tree: &sled::Tree, partition: u32) -> Result<Vec<(u64, Vec<u8>)>, EngineError> {
    let what = "snap";
    let mut records = Vec::new();
    let mut current: Option<(u64, u16, u16, usize, Vec<u8>)> = None; // seq, next chunk, count, len, body
    let finish = |current: Option<(u64, u16, u16, usize, Vec<u8>)>,
                  records: &mut Vec<(u64, Vec<u8>)>|
     -> Result<(), EngineError> {
        if let Some((seq, next, count, len, body)) = current {
            if next != count || body.len() != len {
                return Err(corrupt(
                    partition,
                    &format!("{what}/{seq}"),
                    "incomplete record",
                ));
            }
            records.push((seq, body));
        }
        Ok(())
    };
    for item in tree.iter() {
        let (key, value) = item.map_err(storage_err)?;
        if key.len() != 10 {
            return Err(corrupt(partition, what, "malformed key"));
        }
        let seq = decode_u64(&key[..8]).ok_or_else(|| corrupt(partition, what, "malformed key"))?;
        let chunk = u16::from_be_bytes([key[8], key[9]]);
        if chunk == 0 {
            finish(current.take(), &mut records)?;
            if value.len() < 12 || value[0] != RECORD_MAGIC || value[1] != RECORD_VERSION {
                return Err(corrupt(
                    partition,
                    &format!("{what}/{seq}"),
                    "bad record header",
                ));
            }
            let count = u16::from_be_bytes([value[2], value[3]]);
            let len = decode_u64(&value[4..12])
                .ok_or_else(|| corrupt(partition, what, "bad length"))?
                as usize;
            current = Some((seq, 1, count, len, value[12..].to_vec()));
        } else {
            match current.as_mut() {
                Some((cur_seq, next, _, _, body)) if *cur_seq == seq && *next == chunk => {
                    body.extend_from_slice(&value);
                    *next += 1;
                }
                _ => {
                    return Err(corrupt(
                        partition,
                        &format!("{what}/{seq}"),
                        format!("unexpected chunk {chunk}"),
                    ))
                }
            }
        }
    }
    finish(current, &mut records)?;
    Ok(records)
}

impl Storage for Store {
    fn append_encoded(
        &self,
        partition: u32,
        batch_seq: u64,
        body: &[u8],
    ) -> Result<(), EngineError> {
        self.refuse_if_stopped()?;
        self.wal.append(partition, batch_seq, body)
    }

    fn batches_after(&self, partition: u32, after: u64) -> Result<Vec<WalRecord>, EngineError> {
        let mut out = Vec::new();
        for (seq, body) in self.wal.read(partition, after)? {
            let record: WalRecord =
                crate::codec::decode_record(crate::codec::RecordKind::WalBatch, &body)
                    .map_err(|e| corrupt(partition, &format!("wal/{seq}"), e))?;
            if record.batch_seq != seq {
                return Err(corrupt(
                    partition,
                    &format!("wal/{seq}"),
                    "sequence does not match its frame",
                ));
            }
            out.push(record);
        }
        Ok(out)
    }

    fn write_snapshot(&self, partition: u32, snapshot: &SnapshotRecord) -> Result<(), EngineError> {
        let body = crate::codec::encode_record(crate::codec::RecordKind::Snapshot, snapshot)
            .map_err(storage_err)?;
        let tree = &self.snap[partition as usize];
        let mut batch = sled::Batch::default();
        // Only one snapshot is kept: remove the previous one's chunks in the same batch.
        for key in tree.iter().keys() {
            batch.remove(key.map_err(storage_err)?);
        }
        write_chunks(&mut batch, snapshot.batch_seq, &body)?;
        tree.apply_batch(batch).map_err(storage_err)
    }

    fn load_snapshot(&self, partition: u32) -> Result<Option<SnapshotRecord>, EngineError> {
        let records = read_chunked(&self.snap[partition as usize], partition)?;
        let Some((seq, body)) = records.into_iter().last() else {
            return Ok(None);
        };
        let snapshot =
            decode_snapshot(&body).map_err(|e| corrupt(partition, &format!("snap/{seq}"), e))?;
        Ok(Some(snapshot))
    }

    fn truncate_batches(&self, partition: u32, upto: u64) -> Result<(), EngineError> {
        // The snapshot covering `upto` must be durable before the log behind it goes.
        self.sync_sled()?;
        self.wal.trim(partition, upto)
    }

    fn set_aside_partition(&self, partition: u32) -> Result<(), EngineError> {
        self.wal.set_aside(partition)
    }

    fn next_epoch(&self, partition: u32) -> Result<u64, EngineError> {
        let key = format!("epoch/{partition}");
        let current = match self.meta.get(&key).map_err(storage_err)? {
            Some(raw) => {
                decode_u64(&raw).ok_or_else(|| corrupt(partition, "meta/epoch", "not a u64"))?
            }
            None => 0,
        };
        let next = current + 1;
        self.meta
            .insert(key, &next.to_be_bytes())
            .map_err(storage_err)?;
        self.sled_dirty.store(true, Ordering::Release);
        Ok(next)
    }

    fn archive(&self, records: &[FinishedTransfer]) -> Result<(), EngineError> {
        self.archive.add(records)
    }

    fn sync_archive(&self) -> Result<(), EngineError> {
        self.refuse_if_stopped()?;
        self.ledger.write().map_err(|e| self.stop(e))?;
        self.archive.sync().map_err(|e| self.stop(e))
    }

    fn finished(&self, transfer_id: &TransferId) -> Result<Option<FinishedTransfer>, EngineError> {
        self.archive.get(transfer_id)
    }

    fn for_each_finished(&self, visit: &mut dyn FnMut(u64, i64)) -> Result<(), EngineError> {
        self.archive.for_each(visit)
    }

    fn maintain_archive(&self, before_ms: i64, stop: &AtomicBool) -> Result<bool, EngineError> {
        self.archive.maintain(before_ms, stop)
    }

    fn archive_stats(&self) -> ArchiveStats {
        self.archive.stats()
    }

    fn ledger_add(&self, entries: &[Entry]) -> Result<(), EngineError> {
        self.ledger.add(entries);
        Ok(())
    }

    fn ledger_range(
        &self,
        account: &AccountKey,
        from_ms: i64,
        to_ms: i64,
        entries_max: usize,
    ) -> Result<Vec<Entry>, EngineError> {
        self.ledger.range(account, from_ms, to_ms, entries_max)
    }

    fn prune_ledger(&self, before_ms: i64) -> Result<u64, EngineError> {
        self.ledger.prune(before_ms)
    }

    fn ledger_stats(&self) -> LedgerStats {
        self.ledger.stats()
    }

    fn registry_put(&self, key: &str, value: &[u8]) -> Result<(), EngineError> {
        self.registry.insert(key, value).map_err(storage_err)?;
        self.sled_dirty.store(true, Ordering::Release);
        Ok(())
    }

    fn registry_get(&self, key: &str) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(self
            .registry
            .get(key)
            .map_err(storage_err)?
            .map(|v| v.to_vec()))
    }

    fn registry_scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, EngineError> {
        let mut out = Vec::new();
        for item in self.registry.scan_prefix(prefix) {
            let (key, value) = item.map_err(storage_err)?;
            let key = String::from_utf8(key.to_vec()).map_err(|e| corrupt(0, "registry", e))?;
            out.push((key, value.to_vec()));
        }
        Ok(out)
    }

    fn sync(&self) -> Result<(), EngineError> {
        // Refused even when sled is clean: a failed sled sync may have lost a registry
        // entry or an epoch that a client was told is durable.
        self.refuse_if_stopped()?;
        if self.sled_dirty.swap(false, Ordering::AcqRel) {
            self.sync_sled()?;
        }
        let started = std::time::Instant::now();
        self.wal.sync()?;
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.fdatasync_us
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn sync_time_us(&self) -> (u64, u64) {
        (
            self.flush_us.load(Ordering::Relaxed),
            self.fdatasync_us.load(Ordering::Relaxed),
        )
    }

    fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }

    fn failed(&self) -> Option<String> {
        let sled = self.lock_sled_failed().clone();
        match (sled, self.wal.failed()) {
            (Some(sled), Some(wal)) => Some(format!("{sled}; WAL stopped {wal}")),
            (Some(sled), None) => Some(sled),
            (None, wal) => wal.map(|wal| format!("WAL stopped {wal}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;

    fn borrowed(seq: u64, inputs: &[(Command, Option<FinishedTransfer>)]) -> WalRecordRef<'_> {
        WalRecordRef {
            batch_seq: seq,
            epoch: 1,
            inputs: inputs.iter().map(|(c, p)| (c, p)).collect(),
        }
    }

    #[test]
    fn batches_round_trip_and_truncation_frees_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Small WAL segments, so that truncation can delete some.
        let store = Store::open_with(dir.path(), 2, 8 << 20, 64 * 1024).expect("open");
        for seq in 1..=3u64 {
            let inputs: Vec<_> = (0..5_000)
                .map(|i| (Command::Tick { now_ms: i }, None))
                .collect();
            store
                .append_batch(1, &borrowed(seq, &inputs))
                .expect("append");
        }
        store.sync().expect("sync");
        let all = store.batches_after(1, 0).expect("read");
        assert_eq!(
            all.iter().map(|r| r.batch_seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(all[2].inputs.len(), 5_000);
        assert!(store.batches_after(0, 0).expect("read").is_empty());
        let segments = store.wal.segments();
        store.truncate_batches(1, 2).expect("truncate");
        assert!(store.wal.segments() < segments, "covered segments deleted");
        let rest = store.batches_after(1, 2).expect("read");
        assert_eq!(
            rest.iter().map(|r| r.batch_seq).collect::<Vec<_>>(),
            vec![3]
        );
        assert!(store.fsyncs() >= 2);
    }

    #[test]
    fn no_page_is_ever_written_as_an_unsynced_blob() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1, 8 << 20).expect("open");
        // Many large snapshots, each replacing the last.
        for seq in 1..=20u64 {
            let snapshot = SnapshotRecord {
                batch_seq: seq,
                state: vec![seq as u8; 3 << 20],
                unconfirmed: Vec::new(),
                unarchived: Vec::new(),
                outbox: Vec::new(),
                next_event_seq: 0,
                unledgered: Vec::new(),
            };
            store.write_snapshot(0, &snapshot).expect("snapshot");
            store.truncate_batches(0, seq).expect("sync sled");
        }
        let blobs = std::fs::read_dir(dir.path().join("sled").join("blobs"))
            .expect("blobs dir")
            .count();
        assert_eq!(blobs, 0, "sled wrote blob files, which it never fsyncs");
        let last = store.load_snapshot(0).expect("load").expect("a snapshot");
        assert_eq!((last.batch_seq, last.state.len()), (20, 3 << 20));
    }

    #[test]
    fn a_missing_snapshot_chunk_is_reported_not_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1, 8 << 20).expect("open");
        let snapshot = SnapshotRecord {
            batch_seq: 1,
            state: vec![7; 3 * CHUNK_BYTES_MAX],
            unconfirmed: Vec::new(),
            unarchived: Vec::new(),
            outbox: Vec::new(),
            next_event_seq: 0,
            unledgered: Vec::new(),
        };
        store.write_snapshot(0, &snapshot).expect("snapshot");
        store.snap[0].remove(chunk_key(1, 1)).expect("remove");
        let error = store.load_snapshot(0).expect_err("must fail");
        assert!(
            matches!(error, EngineError::Corrupt { partition: 0, .. }),
            "{error}"
        );
    }

    #[test]
    fn a_garbled_record_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1, 8 << 20).expect("open");
        let mut value = vec![RECORD_MAGIC, RECORD_VERSION, 0, 1];
        value.extend_from_slice(&3u64.to_be_bytes());
        value.extend_from_slice(&[0xff, 0xff, 0xff]);
        store.snap[0]
            .insert(chunk_key(1, 0), value)
            .expect("insert");
        let error = store.load_snapshot(0).expect_err("must fail");
        assert!(error.to_string().contains("snap/1"), "{error}");
        // A WAL frame that is intact but does not decode names its batch.
        store.append_encoded(0, 5, &[0xde, 0xad]).expect("append");
        let error = store.batches_after(0, 0).expect_err("must fail");
        assert!(error.to_string().contains("wal/5"), "{error}");
    }

    #[test]
    fn a_failed_sled_sync_fails_every_later_sync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1, 8 << 20).expect("open");
        assert!(store.failed().is_none());
        store.registry_put("dfsp/a", b"1").expect("put");
        store.inject_sync_failure(SyncFault::Sled);
        let first = store.sync().expect_err("the injected failure");
        assert!(first.to_string().contains("injected"), "{first}");
        // The registry entry may be gone although the next fdatasync would succeed.
        let second = store.sync().expect_err("a failed sync is sticky");
        assert!(second.to_string().contains("injected"), "{second}");
        let reason = store.failed().expect("the store reports why it stopped");
        assert!(
            reason.contains("injected") && reason.contains("since"),
            "{reason}"
        );
        // Nothing else is made durable either.
        store
            .truncate_batches(0, 1)
            .expect_err("trimming needs a durable sled");
        store
            .sync_archive()
            .expect_err("the archive is not synced either");
    }

    #[test]
    fn a_failed_sled_sync_while_trimming_fails_every_later_sync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1, 8 << 20).expect("open");
        store.inject_sync_failure(SyncFault::Sled);
        store
            .truncate_batches(0, 1)
            .expect_err("the injected failure");
        store.sync().expect_err("a failed sync is sticky");
        assert!(store.failed().is_some());
    }

    #[test]
    fn a_failed_wal_sync_fails_every_later_sync_and_append() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1, 8 << 20).expect("open");
        let inputs = [(Command::Tick { now_ms: 1 }, None)];
        store
            .append_batch(0, &borrowed(1, &inputs))
            .expect("append");
        store.inject_sync_failure(SyncFault::Wal);
        store.sync().expect_err("the injected failure");
        store.sync().expect_err("a failed sync is sticky");
        store
            .append_batch(0, &borrowed(2, &inputs))
            .expect_err("appends are refused");
        let reason = store.failed().expect("the store reports why it stopped");
        assert!(reason.contains("injected"), "{reason}");
    }

    #[test]
    fn a_stopped_partition_set_aside_lets_the_others_trim() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inputs: Vec<_> = (0..200)
            .map(|i| (Command::Tick { now_ms: i }, None))
            .collect();
        {
            let store = Store::open_with(dir.path(), 2, 8 << 20, 4 * 1024).expect("open");
            for seq in 1..=20u64 {
                for partition in 0..2 {
                    store
                        .append_batch(partition, &borrowed(seq, &inputs))
                        .expect("append");
                }
            }
            store.sync().expect("sync");
            // Partition 1 is stopped and never trims: the log hardly shrinks.
            store.truncate_batches(0, 20).expect("truncate");
            assert!(store.wal.segments() > 10, "{}", store.wal.segments());
            store.set_aside_partition(1).expect("set aside");
            store.truncate_batches(0, 20).expect("truncate");
            assert_eq!(store.wal.segments(), 1);
        }
        let store = Store::open_with(dir.path(), 2, 8 << 20, 4 * 1024).expect("reopen");
        let records = store.batches_after(1, 0).expect("read");
        assert_eq!(
            records.iter().map(|r| r.batch_seq).collect::<Vec<_>>(),
            (1..=20).collect::<Vec<_>>()
        );
        assert!(records.iter().all(|r| r.inputs.len() == 200));
    }

    #[test]
    fn partition_count_is_fixed_at_creation() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(Store::open(dir.path(), 4, 8 << 20).expect("open"));
        let error = Store::open(dir.path(), 8, 8 << 20)
            .err()
            .expect("must refuse");
        assert!(matches!(error, EngineError::Config(_)));
    }
}
