//! A simulated disk behind `engine::storage::Storage`, for the seeded simulation.
//!
//! It keeps in memory what the real `Store` keeps in files, and models what the real
//! store *promises*, no more:
//!
//! * **WAL frames** (one log for every partition of the node) have a durable prefix and a
//!   volatile tail. `sync` makes every frame written so far durable. A **power loss**
//!   keeps the durable prefix and a random prefix of the tail (the kernel may have written
//!   some pages back on its own); the last frame kept may be **torn** (garbled). Every
//!   frame carries a checksum and whether it was covered by a sync, so recovery cuts a
//!   damaged unsynced tail (as the real WAL does) but refuses a damaged synced frame: a
//!   **corrupted byte of an old record** makes `batches_after` of its partition return
//!   `EngineError::Corrupt`, never a silently different record.
//! * **sled's trees** (snapshots, owner epochs, the registry) become durable at a `sync`
//!   after an epoch or registry write (the real store flushes sled then), and at
//!   `truncate_batches` (which makes snapshots durable before trimming the WAL). A power
//!   loss puts them back to their durable versions.
//! * the **archive** is durable after `sync_archive`.
//! * **failures are sticky**, as in the real store: after a failed write or sync every
//!   later append, sync and archive sync is refused until the disk is reopened (a node
//!   restart). A failed sync also loses the volatile WAL tail: Linux may drop the dirty
//!   pages of a failed writeback, so what it did not make durable must count as gone.
//! * a process crash without power loss loses nothing (the page cache survives it).
//!
//! Faults are drawn from the disk's own seeded PRNG, so a seed replays exactly. The test
//! bug [`SimDisk::set_lying_sync`] makes `sync` answer Ok without making anything durable
//! (the simulated counterpart of a `Wal::sync` that skips its fdatasync).

use engine::codec::{decode_record, RecordKind};
use engine::command::FinishedTransfer;
use engine::ids::{AccountKey, TransferId};
use engine::ledger::{Entry, EntryId};
use engine::storage::{ArchiveStats, LedgerStats, SnapshotRecord, Storage, WalRecord};
use engine::EngineError;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

/// Fault rates, in events per million operations of the kind.
#[derive(Debug, Clone, Copy)]
pub struct DiskFaults {
    pub sync_fail_ppm: u64,
    pub write_fail_ppm: u64,
    /// Chance that a power loss tears the last frame it keeps.
    pub torn_write_ppm: u64,
}

impl DiskFaults {
    pub const NONE: DiskFaults = DiskFaults {
        sync_fail_ppm: 0,
        write_fail_ppm: 0,
        torn_write_ppm: 0,
    };
}

/// Counts of what the disk did, for the simulation's coverage report.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiskStats {
    pub syncs: u64,
    pub sync_failures: u64,
    pub write_failures: u64,
    pub torn_writes: u64,
    pub frames_lost: u64,
    pub torn_tails_cut: u64,
}

struct Frame {
    partition: u32,
    batch_seq: u64,
    body: Vec<u8>,
    checksum: u64,
    /// Covered by a completed sync.
    synced: bool,
}

/// A byte flipped in a durable frame, kept to undo it (the operator's repair).
struct Damage {
    partition: u32,
    batch_seq: u64,
    at: usize,
    original: u8,
}

struct Inner {
    rng: u64,
    faults: DiskFaults,
    lying_sync: bool,
    /// The WAL: a synced prefix then the volatile tail.
    wal: Vec<Frame>,
    /// sled's trees and the archive: what is durable, overlaid with what was written
    /// since (lost by a power loss, made durable by a flush).
    snapshots: Overlay<u32, SnapshotRecord>,
    epochs: Overlay<u32, u64>,
    registry: Overlay<String, Vec<u8>>,
    /// An epoch or registry entry was written since the last sled flush.
    sled_dirty: bool,
    archive: Overlay<TransferId, FinishedTransfer>,
    /// The position ledger, durable with the archive (one database, one sync).
    ledger: Overlay<EntryId, Entry>,
    failed: Option<String>,
    damage: Option<Damage>,
    stats: DiskStats,
}

/// The simulated disk of one node.
pub struct SimDisk {
    inner: Mutex<Inner>,
}

/// A durable map with a volatile layer of newer writes on top.
struct Overlay<K, V> {
    durable: BTreeMap<K, V>,
    volatile: BTreeMap<K, V>,
}

impl<K: Ord + Clone, V: Clone> Overlay<K, V> {
    fn new() -> Overlay<K, V> {
        Overlay {
            durable: BTreeMap::new(),
            volatile: BTreeMap::new(),
        }
    }

    fn get(&self, key: &K) -> Option<&V> {
        self.volatile.get(key).or_else(|| self.durable.get(key))
    }

    fn insert(&mut self, key: K, value: V) {
        self.volatile.insert(key, value);
    }

    fn make_durable(&mut self) {
        let volatile = std::mem::take(&mut self.volatile);
        self.durable.extend(volatile);
    }

    fn lose_volatile(&mut self) {
        self.volatile.clear();
    }

    /// Every current entry, newest value per key.
    fn current(&self) -> BTreeMap<&K, &V> {
        let mut all: BTreeMap<&K, &V> = self.durable.iter().collect();
        all.extend(self.volatile.iter());
        all
    }
}

fn checksum(bytes: &[u8]) -> u64 {
    // FNV-1a: enough to tell a flipped byte, which is all a simulated disk needs.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

impl Inner {
    fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn roll_ppm(&mut self, ppm: u64) -> bool {
        ppm > 0 && self.next() % 1_000_000 < ppm
    }

    fn refuse(&self) -> Result<(), EngineError> {
        match &self.failed {
            Some(why) => Err(EngineError::Storage(format!(
                "the simulated disk refuses after an earlier failure: {why}"
            ))),
            None => Ok(()),
        }
    }

    /// A failed write or sync: sticky until reopen, and the volatile tail is gone.
    fn fail(&mut self, why: String) -> EngineError {
        let before = self.wal.len();
        self.wal.retain(|frame| frame.synced);
        self.stats.frames_lost += (before - self.wal.len()) as u64;
        self.failed = Some(why.clone());
        EngineError::Storage(why)
    }

    fn flush_sled(&mut self) {
        self.snapshots.make_durable();
        self.epochs.make_durable();
        self.registry.make_durable();
        self.sled_dirty = false;
    }
}

impl SimDisk {
    pub fn new(seed: u64, faults: DiskFaults) -> SimDisk {
        SimDisk {
            inner: Mutex::new(Inner {
                rng: seed | 1,
                faults,
                lying_sync: false,
                wal: Vec::new(),
                snapshots: Overlay::new(),
                epochs: Overlay::new(),
                registry: Overlay::new(),
                sled_dirty: false,
                archive: Overlay::new(),
                ledger: Overlay::new(),
                failed: None,
                damage: None,
                stats: DiskStats::default(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The injected bug: `sync` says Ok without making anything durable.
    pub fn set_lying_sync(&self, lying: bool) {
        self.lock().lying_sync = lying;
    }

    pub fn stats(&self) -> DiskStats {
        self.lock().stats
    }

    /// The process died (no power loss): everything written survives; the store is
    /// reopened, so an earlier failure no longer refuses.
    pub fn reopen(&self) {
        self.lock().failed = None;
    }

    /// Power loss, then reopen: every write not covered by a completed sync is lost but
    /// for a random prefix of the WAL's tail, whose last frame may be torn.
    pub fn power_loss(&self) {
        let mut inner = self.lock();
        let synced = inner.wal.iter().take_while(|f| f.synced).count();
        assert!(
            inner.wal[synced..].iter().all(|f| !f.synced),
            "synced frames form a prefix"
        );
        let tail = inner.wal.len() - synced;
        let kept = if tail == 0 {
            0
        } else {
            (inner.next() % (tail as u64 + 1)) as usize
        };
        inner.stats.frames_lost += (tail - kept) as u64;
        inner.wal.truncate(synced + kept);
        let torn_ppm = inner.faults.torn_write_ppm;
        if kept > 0 && inner.roll_ppm(torn_ppm) {
            let at = inner.next() as usize;
            let last = inner.wal.last_mut().expect("a kept frame");
            if last.body.is_empty() {
                last.checksum ^= 1;
            } else {
                let at = at % last.body.len();
                last.body[at] ^= 0x5a;
            }
            inner.stats.torn_writes += 1;
        }
        inner.snapshots.lose_volatile();
        inner.epochs.lose_volatile();
        inner.registry.lose_volatile();
        inner.sled_dirty = false;
        inner.archive.lose_volatile();
        inner.ledger.lose_volatile();
        inner.failed = None;
    }

    /// Flips a byte of a random durable frame (bit rot in an old segment). Returns its
    /// partition, if there was a durable frame to damage.
    pub fn corrupt_old_record(&self) -> Option<u32> {
        let mut inner = self.lock();
        assert!(inner.damage.is_none(), "one damage at a time");
        let synced = inner.wal.iter().take_while(|f| f.synced).count();
        if synced == 0 {
            return None;
        }
        let index = (inner.next() % synced as u64) as usize;
        let at_roll = inner.next() as usize;
        let frame = &mut inner.wal[index];
        let at = at_roll % frame.body.len();
        let original = frame.body[at];
        frame.body[at] ^= 0xff;
        let damage = Damage {
            partition: frame.partition,
            batch_seq: frame.batch_seq,
            at,
            original,
        };
        let partition = damage.partition;
        inner.damage = Some(damage);
        Some(partition)
    }

    /// Undoes the damage (an operator restores the segment from a replica).
    pub fn repair(&self) {
        let mut inner = self.lock();
        let damage = inner.damage.take().expect("something to repair");
        let frame = inner
            .wal
            .iter_mut()
            .find(|f| f.partition == damage.partition && f.batch_seq == damage.batch_seq)
            .expect("the damaged frame is still there");
        frame.body[damage.at] = damage.original;
        assert_eq!(frame.checksum, checksum(&frame.body), "repaired exactly");
    }
}

impl Storage for SimDisk {
    fn append_encoded(
        &self,
        partition: u32,
        batch_seq: u64,
        body: &[u8],
    ) -> Result<(), EngineError> {
        let mut inner = self.lock();
        inner.refuse()?;
        let ppm = inner.faults.write_fail_ppm;
        if inner.roll_ppm(ppm) {
            inner.stats.write_failures += 1;
            return Err(inner.fail(format!(
                "simulated write failure (partition {partition}, batch {batch_seq})"
            )));
        }
        inner.wal.push(Frame {
            partition,
            batch_seq,
            body: body.to_vec(),
            checksum: checksum(body),
            synced: false,
        });
        Ok(())
    }

    fn batches_after(&self, partition: u32, after: u64) -> Result<Vec<WalRecord>, EngineError> {
        let mut inner = self.lock();
        // A damaged frame no sync covered is a torn tail: cut it and everything after it
        // (nothing after it was synced either). Damage to a synced frame is refused.
        if let Some(cut) = inner
            .wal
            .iter()
            .position(|f| !f.synced && checksum(&f.body) != f.checksum)
        {
            inner.wal.truncate(cut);
            inner.stats.torn_tails_cut += 1;
        }
        let mut records = Vec::new();
        for frame in inner.wal.iter().filter(|f| f.partition == partition) {
            if checksum(&frame.body) != frame.checksum {
                return Err(EngineError::Corrupt {
                    partition,
                    what: format!("wal/{}", frame.batch_seq),
                    detail: "checksum mismatch in a synced frame".into(),
                });
            }
            if frame.batch_seq <= after {
                continue;
            }
            let record: WalRecord =
                decode_record(RecordKind::WalBatch, &frame.body).map_err(|e| {
                    EngineError::Corrupt {
                        partition,
                        what: format!("wal/{}", frame.batch_seq),
                        detail: e.to_string(),
                    }
                })?;
            if record.batch_seq != frame.batch_seq {
                return Err(EngineError::Corrupt {
                    partition,
                    what: format!("wal/{}", frame.batch_seq),
                    detail: format!("the frame holds batch {}", record.batch_seq),
                });
            }
            records.push(record);
        }
        Ok(records)
    }

    fn write_snapshot(&self, partition: u32, snapshot: &SnapshotRecord) -> Result<(), EngineError> {
        let mut inner = self.lock();
        inner.refuse()?;
        inner.snapshots.insert(partition, snapshot.clone());
        Ok(())
    }

    fn load_snapshot(&self, partition: u32) -> Result<Option<SnapshotRecord>, EngineError> {
        Ok(self.lock().snapshots.get(&partition).cloned())
    }

    fn truncate_batches(&self, partition: u32, upto: u64) -> Result<(), EngineError> {
        let mut inner = self.lock();
        inner.refuse()?;
        // The snapshot covering these batches is made durable first.
        inner.flush_sled();
        let covered = inner
            .snapshots
            .durable
            .get(&partition)
            .map_or(0, |s| s.batch_seq);
        assert!(
            upto <= covered,
            "trimming batch {upto} of partition {partition} past its durable snapshot {covered}"
        );
        let damaged = inner.damage.as_ref().map(|d| (d.partition, d.batch_seq));
        // Only synced frames are trimmed (the real WAL deletes whole synced segments).
        inner.wal.retain(|f| {
            f.partition != partition
                || f.batch_seq > upto
                || !f.synced
                || damaged == Some((f.partition, f.batch_seq))
        });
        Ok(())
    }

    fn next_epoch(&self, partition: u32) -> Result<u64, EngineError> {
        let mut inner = self.lock();
        let epoch = inner.epochs.get(&partition).copied().unwrap_or(0) + 1;
        inner.epochs.insert(partition, epoch);
        inner.sled_dirty = true;
        Ok(epoch)
    }

    fn archive(&self, records: &[FinishedTransfer]) -> Result<(), EngineError> {
        let mut inner = self.lock();
        for record in records {
            inner
                .archive
                .insert(record.parties.transfer_id, record.clone());
        }
        Ok(())
    }

    fn sync_archive(&self) -> Result<(), EngineError> {
        let mut inner = self.lock();
        inner.refuse()?;
        inner.archive.make_durable();
        inner.ledger.make_durable();
        Ok(())
    }

    fn finished(&self, transfer_id: &TransferId) -> Result<Option<FinishedTransfer>, EngineError> {
        Ok(self.lock().archive.get(transfer_id).cloned())
    }

    fn for_each_finished(&self, visit: &mut dyn FnMut(u64, i64)) -> Result<(), EngineError> {
        let inner = self.lock();
        for record in inner.archive.current().values() {
            visit(record.parties.transfer_id.route_hash(), record.finished_ms);
        }
        Ok(())
    }

    fn maintain_archive(&self, _before_ms: i64, _stop: &AtomicBool) -> Result<bool, EngineError> {
        Ok(false)
    }

    fn archive_stats(&self) -> ArchiveStats {
        ArchiveStats {
            records: self.lock().archive.current().len() as u64,
            ..ArchiveStats::default()
        }
    }

    fn ledger_add(&self, entries: &[Entry]) -> Result<(), EngineError> {
        let mut inner = self.lock();
        for entry in entries {
            inner.ledger.insert(entry.id, entry.clone());
        }
        Ok(())
    }

    fn ledger_range(
        &self,
        account: &AccountKey,
        from_ms: i64,
        to_ms: i64,
        entries_max: usize,
    ) -> Result<Vec<Entry>, EngineError> {
        let inner = self.lock();
        let mut out: Vec<Entry> = inner
            .ledger
            .current()
            .into_values()
            .filter(|e| e.account == *account && (from_ms..=to_ms).contains(&e.at_ms))
            .cloned()
            .collect();
        engine::ledger::sort_dedup(&mut out);
        out.truncate(entries_max.saturating_add(1));
        Ok(out)
    }

    fn prune_ledger(&self, _before_ms: i64) -> Result<u64, EngineError> {
        Ok(0)
    }

    fn ledger_stats(&self) -> LedgerStats {
        LedgerStats {
            entries_written: self.lock().ledger.current().len() as u64,
            ..LedgerStats::default()
        }
    }

    fn registry_put(&self, key: &str, value: &[u8]) -> Result<(), EngineError> {
        let mut inner = self.lock();
        inner.refuse()?;
        inner.registry.insert(key.to_string(), value.to_vec());
        inner.sled_dirty = true;
        Ok(())
    }

    fn registry_get(&self, key: &str) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(self.lock().registry.get(&key.to_string()).cloned())
    }

    fn registry_scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, EngineError> {
        Ok(self
            .lock()
            .registry
            .current()
            .into_iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn sync(&self) -> Result<(), EngineError> {
        let mut inner = self.lock();
        inner.refuse()?;
        inner.stats.syncs += 1;
        let ppm = inner.faults.sync_fail_ppm;
        if inner.roll_ppm(ppm) {
            inner.stats.sync_failures += 1;
            return Err(inner.fail("simulated fdatasync failure".into()));
        }
        if inner.lying_sync {
            return Ok(());
        }
        if inner.sled_dirty {
            inner.flush_sled();
        }
        for frame in inner.wal.iter_mut() {
            frame.synced = true;
        }
        Ok(())
    }

    fn failed(&self) -> Option<String> {
        self.lock().failed.clone()
    }

    fn fsyncs(&self) -> u64 {
        self.lock().stats.syncs
    }

    fn sync_time_us(&self) -> (u64, u64) {
        (0, 0)
    }
}
