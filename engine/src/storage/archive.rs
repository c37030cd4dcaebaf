//! The archive of finished transfers: a small log-structured merge tree kept in its own
//! sled database.
//!
//! Why not one sled key per transfer (the first design): transferIds are random, and sled
//! spends about 8 µs of CPU per insert of a random key (page deltas all over the tree, then
//! their consolidation). At tens of thousands of finished transfers per second that was the
//! engine's largest cost. Here the archiver's writes become a few large sequential values
//! per sync round, and the random-access index is paid for by merging, in bulk.
//!
//! Layout, one tree `runs`:
//! * `m` ++ run (u64 BE) → [`RunMeta`]: level, record count, finishing-time range, and the
//!   runs this one replaces.
//! * `c` ++ run (u64 BE) ++ first hash (u64 BE) → one chunk: records of the run in order of
//!   their transferId's routing hash, with an entry table in front (see [`ChunkView`]).
//!   Records with equal hashes never straddle two chunks, so the chunk that may hold a hash
//!   is the last one whose first hash is at or below it.
//!
//! Life of a record:
//! * `add` encodes it into a pending buffer; `sync` writes everything pending as one new
//!   run of level 0 (one sled batch: a run appears whole or not at all), then flushes sled
//!   and fdatasyncs its data file. The runtime drops its in-memory copy only after that.
//! * `maintain` merges [`FAN_IN`] runs of one level into one run of the next, streaming
//!   chunk by chunk (memory: one chunk per input). The merged run's chunks are written
//!   first and its meta last; it is made durable; only then does it replace its inputs in
//!   the visible list, and only then are the inputs deleted. A crash before the meta leaves
//!   orphan chunks, deleted at open; a crash after it leaves inputs that the merged run
//!   names as replaced, deleted at open. Either way every record stays readable.
//! * `maintain` also deletes whole runs whose newest record finished before the retention
//!   cutoff. A merged run lives until its newest record expires, so a record can stay on
//!   disk for up to retention + its run's time span; readers that care (the duplicate
//!   check) ignore records older than retention, and a lookup returns the newest record of
//!   an id, so an id reused after retention finds its own record.
//!
//! Reads probe every visible run: one sled range read finds the chunk, a binary search of
//! its entry table finds the hash. The visible list is behind an `RwLock` held for the
//! whole lookup, so a run is never deleted under a reader: deletion takes the write lock
//! first. The number of runs is bounded by merging: at most `FAN_IN - 1` per level between
//! merges, and levels grow by `FAN_IN` each.

use super::{corrupt, open_sled, storage_err, CHUNK_BYTES_MAX, SEGMENT_BYTES};
use crate::command::FinishedTransfer;
use crate::ids::TransferId;
use crate::EngineError;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

pub use crate::limits::{DELETE_KEYS_PER_BATCH_MAX, FAN_IN, RECORD_BYTES_MAX};

const META_PREFIX: u8 = b'm';
const CHUNK_PREFIX: u8 = b'c';
const CHUNK_MAGIC: u8 = b'A';
const CHUNK_VERSION: u8 = 1;
/// magic, version, entry count (u32 BE).
const CHUNK_HEADER_BYTES: usize = 6;
/// hash (u64 BE), finished_ms (i64 BE), end offset of the record in the body (u32 BE).
const ENTRY_BYTES: usize = 20;

/// What is known about one run without reading its chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunMeta {
    pub run: u64,
    pub level: u8,
    pub records: u64,
    pub oldest_ms: i64,
    pub newest_ms: i64,
    /// Runs merged into this one; deleted once this one is durable (again at open, in case
    /// a crash came between).
    pub replaces: Vec<u64>,
}

/// Counts for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ArchiveStats {
    pub runs: usize,
    pub records: u64,
    pub merges: u64,
    pub runs_pruned: u64,
}

pub struct Archive {
    db: sled::Db,
    file: File,
    tree: sled::Tree,
    /// Runs readers may probe, oldest first.
    visible: RwLock<Vec<RunMeta>>,
    /// Encoded records waiting for `sync`: (hash, finished_ms, bytes).
    pending: Mutex<Vec<(u64, i64, Vec<u8>)>>,
    next_run: AtomicU64,
    /// One maintenance pass (merge or prune) at a time.
    maintenance: Mutex<()>,
    merges: AtomicU64,
    runs_pruned: AtomicU64,
}

fn meta_key(run: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = META_PREFIX;
    key[1..].copy_from_slice(&run.to_be_bytes());
    key
}

fn run_prefix(run: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = CHUNK_PREFIX;
    key[1..].copy_from_slice(&run.to_be_bytes());
    key
}

fn chunk_key(run: u64, first_hash: u64) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[..9].copy_from_slice(&run_prefix(run));
    key[9..].copy_from_slice(&first_hash.to_be_bytes());
    key
}

fn archive_corrupt(what: impl std::fmt::Display, detail: impl std::fmt::Display) -> EngineError {
    corrupt(0, &format!("archive/{what}"), detail)
}

/// A parsed, validated chunk, borrowing its bytes.
pub struct ChunkView<'a> {
    entries: &'a [u8],
    body: &'a [u8],
    count: usize,
}

impl<'a> ChunkView<'a> {
    pub fn parse(raw: &'a [u8]) -> Result<ChunkView<'a>, String> {
        if raw.len() < CHUNK_HEADER_BYTES || raw[0] != CHUNK_MAGIC || raw[1] != CHUNK_VERSION {
            return Err("bad chunk header".into());
        }
        let count = u32::from_be_bytes([raw[2], raw[3], raw[4], raw[5]]) as usize;
        let table_end = count
            .checked_mul(ENTRY_BYTES)
            .and_then(|t| t.checked_add(CHUNK_HEADER_BYTES))
            .filter(|end| *end <= raw.len())
            .ok_or("entry table longer than the chunk")?;
        let view = ChunkView {
            entries: &raw[CHUNK_HEADER_BYTES..table_end],
            body: &raw[table_end..],
            count,
        };
        // Hashes ascend, record ends ascend and the last one ends the body.
        let mut previous = (0u64, 0usize);
        for index in 0..count {
            let (hash, _, end) = view.entry(index);
            if hash < previous.0 || end < previous.1 || end > view.body.len() {
                return Err(format!("entry {index} out of order"));
            }
            previous = (hash, end);
        }
        if previous.1 != view.body.len() {
            return Err("records do not fill the chunk".into());
        }
        Ok(view)
    }

    /// A chunk `parse` has already accepted: reads the header only.
    fn trusted(raw: &'a [u8]) -> ChunkView<'a> {
        let count = u32::from_be_bytes([raw[2], raw[3], raw[4], raw[5]]) as usize;
        let table_end = CHUNK_HEADER_BYTES + count * ENTRY_BYTES;
        ChunkView {
            entries: &raw[CHUNK_HEADER_BYTES..table_end],
            body: &raw[table_end..],
            count,
        }
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// (hash, finished_ms, end offset) of entry `index` (< `len()`).
    fn entry(&self, index: usize) -> (u64, i64, usize) {
        let e = &self.entries[index * ENTRY_BYTES..(index + 1) * ENTRY_BYTES];
        let word = |range: std::ops::Range<usize>| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&e[range]);
            bytes
        };
        let end = u32::from_be_bytes([e[16], e[17], e[18], e[19]]) as usize;
        (
            u64::from_be_bytes(word(0..8)),
            i64::from_be_bytes(word(8..16)),
            end,
        )
    }

    pub fn hash(&self, index: usize) -> u64 {
        self.entry(index).0
    }

    pub fn finished_ms(&self, index: usize) -> i64 {
        self.entry(index).1
    }

    /// The encoded record of entry `index`.
    pub fn record(&self, index: usize) -> &'a [u8] {
        let start = if index == 0 {
            0
        } else {
            self.entry(index - 1).2
        };
        &self.body[start..self.entry(index).2]
    }

    /// Indexes of the entries with this hash.
    fn matching(&self, hash: u64) -> std::ops::Range<usize> {
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.hash(mid) < hash {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let mut end = lo;
        while end < self.count && self.hash(end) == hash {
            end += 1;
        }
        lo..end
    }
}

/// A finished chunk: its key and its value.
type Chunk = ([u8; 17], Vec<u8>);

/// Builds one run: cuts records (given in hash order) into chunks of at most
/// `CHUNK_BYTES_MAX`; `push` returns each chunk as it fills, `take_chunk` the last one.
struct RunBuilder {
    meta: RunMeta,
    entries: Vec<(u64, i64, u32)>,
    body: Vec<u8>,
    last_hash: Option<u64>,
}

impl RunBuilder {
    fn new(run: u64, level: u8) -> RunBuilder {
        RunBuilder {
            meta: RunMeta {
                run,
                level,
                records: 0,
                oldest_ms: i64::MAX,
                newest_ms: i64::MIN,
                replaces: Vec::new(),
            },
            entries: Vec::new(),
            body: Vec::new(),
            last_hash: None,
        }
    }

    fn chunk_bytes(&self) -> usize {
        CHUNK_HEADER_BYTES + self.entries.len() * ENTRY_BYTES + self.body.len()
    }

    /// Adds a record; returns a finished chunk (key, value) when this record starts a new one.
    fn push(
        &mut self,
        hash: u64,
        finished_ms: i64,
        record: &[u8],
    ) -> Result<Option<Chunk>, EngineError> {
        if record.len() > RECORD_BYTES_MAX {
            return Err(EngineError::Storage(format!(
                "finished transfer record of {} bytes exceeds {RECORD_BYTES_MAX}",
                record.len()
            )));
        }
        assert!(
            !matches!(self.last_hash, Some(last) if last > hash),
            "archive run records out of hash order"
        );
        let full = self.chunk_bytes() + ENTRY_BYTES + record.len() > CHUNK_BYTES_MAX;
        let emitted = if full && self.last_hash != Some(hash) && !self.entries.is_empty() {
            self.take_chunk()
        } else {
            None
        };
        self.body.extend_from_slice(record);
        let end = u32::try_from(self.body.len()).map_err(storage_err)?;
        self.entries.push((hash, finished_ms, end));
        self.last_hash = Some(hash);
        self.meta.records += 1;
        self.meta.oldest_ms = self.meta.oldest_ms.min(finished_ms);
        self.meta.newest_ms = self.meta.newest_ms.max(finished_ms);
        Ok(emitted)
    }

    /// The chunk built so far, if any.
    fn take_chunk(&mut self) -> Option<Chunk> {
        let first_hash = self.entries.first()?.0;
        let mut value = Vec::with_capacity(self.chunk_bytes());
        value.push(CHUNK_MAGIC);
        value.push(CHUNK_VERSION);
        value.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        for (hash, finished_ms, end) in self.entries.drain(..) {
            value.extend_from_slice(&hash.to_be_bytes());
            value.extend_from_slice(&finished_ms.to_be_bytes());
            value.extend_from_slice(&end.to_be_bytes());
        }
        value.append(&mut self.body);
        Some((chunk_key(self.meta.run, first_hash), value))
    }
}

/// Reads one run's chunks in hash order, record by record (for merging).
struct RunCursor {
    run: u64,
    chunks: sled::Iter,
    chunk: Option<sled::IVec>,
    index: usize,
    count: usize,
}

impl RunCursor {
    fn new(tree: &sled::Tree, run: u64) -> RunCursor {
        RunCursor {
            run,
            chunks: tree.scan_prefix(run_prefix(run)),
            chunk: None,
            index: 0,
            count: 0,
        }
    }

    /// Makes the next record current; false at the end of the run.
    fn fill(&mut self) -> Result<bool, EngineError> {
        while self.chunk.is_none() || self.index >= self.count {
            match self.chunks.next() {
                None => {
                    self.chunk = None;
                    return Ok(false);
                }
                Some(item) => {
                    let (_, value) = item.map_err(storage_err)?;
                    let count = ChunkView::parse(&value)
                        .map_err(|e| archive_corrupt(format!("run {}", self.run), e))?
                        .len();
                    self.chunk = Some(value);
                    self.index = 0;
                    self.count = count;
                }
            }
        }
        Ok(true)
    }

    /// The current chunk, or none at the end of the run.
    fn view(&self) -> Option<ChunkView<'_>> {
        // Validated by `parse` in `fill`.
        self.chunk.as_ref().map(|chunk| ChunkView::trusted(chunk))
    }
}

impl Archive {
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Archive, EngineError> {
        let db = open_sled(
            &sled::Config::new()
                .path(dir)
                .cache_capacity(cache_bytes)
                .flush_every_ms(Some(500))
                .segment_size(SEGMENT_BYTES),
        )?;
        let file = File::open(dir.join("db")).map_err(storage_err)?;
        let tree = db.open_tree("runs").map_err(storage_err)?;
        let mut metas: BTreeMap<u64, RunMeta> = BTreeMap::new();
        for item in tree.scan_prefix([META_PREFIX]) {
            let (key, value) = item.map_err(storage_err)?;
            let meta: RunMeta =
                crate::codec::decode_record(crate::codec::RecordKind::ArchiveRunMeta, &value)
                    .map_err(|e| archive_corrupt(String::from_utf8_lossy(&key), e))?;
            if key[..] != meta_key(meta.run) {
                return Err(archive_corrupt(
                    format!("meta of run {}", meta.run),
                    "key mismatch",
                ));
            }
            metas.insert(meta.run, meta);
        }
        // Runs with a meta and a merged run naming them replaced, or chunks without a meta:
        // left by a crash during a merge or a deletion.
        let replaced: BTreeSet<u64> = metas.values().flat_map(|m| m.replaces.clone()).collect();
        let mut highest = metas.keys().next_back().copied().unwrap_or(0);
        let mut orphans = BTreeSet::new();
        for key in tree.scan_prefix([CHUNK_PREFIX]).keys() {
            let key = key.map_err(storage_err)?;
            if key.len() != 17 {
                return Err(archive_corrupt("chunk key", "malformed"));
            }
            let mut run = [0u8; 8];
            run.copy_from_slice(&key[1..9]);
            let run = u64::from_be_bytes(run);
            highest = highest.max(run);
            if !metas.contains_key(&run) {
                orphans.insert(run);
            }
        }
        let archive = Archive {
            db,
            file,
            tree,
            visible: RwLock::new(Vec::new()),
            pending: Mutex::new(Vec::new()),
            next_run: AtomicU64::new(highest + 1),
            maintenance: Mutex::new(()),
            merges: AtomicU64::new(0),
            runs_pruned: AtomicU64::new(0),
        };
        for run in replaced.iter().chain(orphans.iter()) {
            metas.remove(run);
            archive.delete_run(*run)?;
        }
        *archive.write_visible() = metas.into_values().collect();
        archive.sync()?;
        Ok(archive)
    }

    fn read_visible(&self) -> std::sync::RwLockReadGuard<'_, Vec<RunMeta>> {
        self.visible.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_visible(&self) -> std::sync::RwLockWriteGuard<'_, Vec<RunMeta>> {
        self.visible.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues finished transfers; they are written and made durable by the next `sync`.
    pub fn add(&self, records: &[FinishedTransfer]) -> Result<(), EngineError> {
        let mut encoded = Vec::with_capacity(records.len());
        for record in records {
            let bytes =
                crate::codec::encode_record(crate::codec::RecordKind::ArchiveRecord, record)
                    .map_err(storage_err)?;
            encoded.push((
                record.parties.transfer_id.route_hash(),
                record.finished_ms,
                bytes,
            ));
        }
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .append(&mut encoded);
        Ok(())
    }

    /// Writes what is pending as one level-0 run, then flushes sled and fdatasyncs.
    pub fn sync(&self) -> Result<(), EngineError> {
        let mut records =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if !records.is_empty() {
            records.sort_unstable_by_key(|(hash, _, _)| *hash);
            let run = self.next_run.fetch_add(1, Ordering::Relaxed);
            let mut builder = RunBuilder::new(run, 0);
            let mut batch = sled::Batch::default();
            for (hash, finished_ms, bytes) in &records {
                if let Some((key, value)) = builder.push(*hash, *finished_ms, bytes)? {
                    batch.insert(&key[..], value);
                }
            }
            if let Some((key, value)) = builder.take_chunk() {
                batch.insert(&key[..], value);
            }
            let meta = builder.meta;
            batch.insert(
                &meta_key(run)[..],
                crate::codec::encode_record(crate::codec::RecordKind::ArchiveRunMeta, &meta)
                    .map_err(storage_err)?,
            );
            self.tree.apply_batch(batch).map_err(storage_err)?;
            self.write_visible().push(meta);
        }
        self.db.flush().map_err(storage_err)?;
        self.file.sync_data().map_err(storage_err)?;
        Ok(())
    }

    /// The newest archived record of this transferId, if any.
    pub fn get(&self, id: &TransferId) -> Result<Option<FinishedTransfer>, EngineError> {
        let hash = id.route_hash();
        let visible = self.read_visible();
        let mut best: Option<FinishedTransfer> = None;
        for meta in visible.iter() {
            let Some(item) = self
                .tree
                .range(chunk_key(meta.run, 0)..=chunk_key(meta.run, hash))
                .next_back()
            else {
                continue;
            };
            let (_, value) = item.map_err(storage_err)?;
            let chunk = ChunkView::parse(&value)
                .map_err(|e| archive_corrupt(format!("run {}", meta.run), e))?;
            for index in chunk.matching(hash) {
                let record: FinishedTransfer = crate::codec::decode_record(
                    crate::codec::RecordKind::ArchiveRecord,
                    chunk.record(index),
                )
                .map_err(|e| archive_corrupt(format!("run {}/{id}", meta.run), e))?;
                let newer = !matches!(&best, Some(b) if b.finished_ms >= record.finished_ms);
                if record.parties.transfer_id == *id && newer {
                    best = Some(record);
                }
            }
        }
        Ok(best)
    }

    /// Calls `visit(hash, finished_ms)` for every archived record (reads chunk headers only).
    pub fn for_each(&self, visit: &mut dyn FnMut(u64, i64)) -> Result<(), EngineError> {
        let visible = self.read_visible();
        for meta in visible.iter() {
            for item in self.tree.scan_prefix(run_prefix(meta.run)) {
                let (_, value) = item.map_err(storage_err)?;
                let chunk = ChunkView::parse(&value)
                    .map_err(|e| archive_corrupt(format!("run {}", meta.run), e))?;
                for index in 0..chunk.len() {
                    visit(chunk.hash(index), chunk.finished_ms(index));
                }
            }
        }
        Ok(())
    }

    /// The archive's database, for the position ledger's tree (`ledger.rs`): one sync
    /// makes both durable.
    pub(super) fn db(&self) -> &sled::Db {
        &self.db
    }

    pub fn stats(&self) -> ArchiveStats {
        let visible = self.read_visible();
        ArchiveStats {
            runs: visible.len(),
            records: visible.iter().map(|m| m.records).sum(),
            merges: self.merges.load(Ordering::Relaxed),
            runs_pruned: self.runs_pruned.load(Ordering::Relaxed),
        }
    }

    /// One maintenance step: deletes runs wholly older than `before_ms`, then merges one
    /// group of runs if a level is full. Returns whether there was anything to do. A merge
    /// checks `stop` between chunks and gives up cleanly when it is set.
    pub fn maintain(&self, before_ms: i64, stop: &AtomicBool) -> Result<bool, EngineError> {
        let _one_at_a_time = self.maintenance.lock().unwrap_or_else(|e| e.into_inner());
        let expired: Vec<u64> = {
            let mut visible = self.write_visible();
            let expired = visible
                .iter()
                .filter(|m| m.newest_ms < before_ms)
                .map(|m| m.run)
                .collect::<Vec<_>>();
            visible.retain(|m| m.newest_ms >= before_ms);
            expired
        };
        for run in &expired {
            self.delete_run(*run)?;
            self.runs_pruned.fetch_add(1, Ordering::Relaxed);
        }
        let inputs = self.merge_candidates();
        if inputs.is_empty() {
            return Ok(!expired.is_empty());
        }
        self.merge(&inputs, stop)?;
        Ok(true)
    }

    /// The `FAN_IN` oldest runs of the lowest level that has that many, if any.
    fn merge_candidates(&self) -> Vec<RunMeta> {
        let visible = self.read_visible();
        let mut by_level: BTreeMap<u8, Vec<&RunMeta>> = BTreeMap::new();
        for meta in visible.iter() {
            by_level.entry(meta.level).or_default().push(meta);
        }
        for runs in by_level.values_mut() {
            if runs.len() >= FAN_IN {
                runs.sort_by_key(|m| m.run);
                return runs[..FAN_IN].iter().map(|m| (*m).clone()).collect();
            }
        }
        Vec::new()
    }

    fn merge(&self, inputs: &[RunMeta], stop: &AtomicBool) -> Result<(), EngineError> {
        let level = inputs
            .iter()
            .map(|m| m.level)
            .max()
            .unwrap_or(0)
            .saturating_add(1);
        let run = self.next_run.fetch_add(1, Ordering::Relaxed);
        let mut builder = RunBuilder::new(run, level);
        builder.meta.replaces = inputs.iter().map(|m| m.run).collect();
        let mut cursors: Vec<RunCursor> = inputs
            .iter()
            .map(|m| RunCursor::new(&self.tree, m.run))
            .collect();
        for cursor in cursors.iter_mut() {
            cursor.fill()?;
        }
        loop {
            // The cursor whose current record has the smallest hash (FAN_IN is small).
            let mut smallest: Option<(u64, usize)> = None;
            for (i, cursor) in cursors.iter().enumerate() {
                if let Some(view) = cursor.view() {
                    let hash = view.hash(cursor.index);
                    if !matches!(smallest, Some((h, _)) if h <= hash) {
                        smallest = Some((hash, i));
                    }
                }
            }
            let Some((hash, i)) = smallest else { break };
            let cursor = &mut cursors[i];
            let emitted = match cursor.view() {
                Some(view) => builder.push(
                    hash,
                    view.finished_ms(cursor.index),
                    view.record(cursor.index),
                )?,
                None => None,
            };
            cursor.index += 1;
            cursor.fill()?;
            if let Some((key, value)) = emitted {
                self.tree.insert(&key[..], value).map_err(storage_err)?;
                if stop.load(Ordering::Relaxed) {
                    // Give up: the partial run has no meta, so nobody reads it.
                    return self.delete_run(run);
                }
            }
        }
        if let Some((key, value)) = builder.take_chunk() {
            self.tree.insert(&key[..], value).map_err(storage_err)?;
        }
        let meta = builder.meta;
        let expected: u64 = inputs.iter().map(|m| m.records).sum();
        assert_eq!(meta.records, expected, "a merge lost or invented records");
        self.tree
            .insert(
                &meta_key(run)[..],
                crate::codec::encode_record(crate::codec::RecordKind::ArchiveRunMeta, &meta)
                    .map_err(storage_err)?,
            )
            .map_err(storage_err)?;
        self.db.flush().map_err(storage_err)?;
        self.file.sync_data().map_err(storage_err)?;
        // Durable: now it replaces its inputs for readers, and then the inputs go.
        {
            let mut visible = self.write_visible();
            visible.retain(|m| !meta.replaces.contains(&m.run));
            visible.push(meta.clone());
        }
        for input in &meta.replaces {
            self.delete_run(*input)?;
        }
        self.merges.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Deletes a run's meta, then its chunks (a crash in between leaves orphan chunks,
    /// which `open` deletes). The caller has removed it from the visible list.
    fn delete_run(&self, run: u64) -> Result<(), EngineError> {
        self.tree.remove(meta_key(run)).map_err(storage_err)?;
        let mut batch = sled::Batch::default();
        let mut in_batch = 0;
        for key in self.tree.scan_prefix(run_prefix(run)).keys() {
            batch.remove(key.map_err(storage_err)?);
            in_batch += 1;
            if in_batch == DELETE_KEYS_PER_BATCH_MAX {
                self.tree
                    .apply_batch(std::mem::take(&mut batch))
                    .map_err(storage_err)?;
                in_batch = 0;
            }
        }
        self.tree.apply_batch(batch).map_err(storage_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Parties, TransferState};
    use crate::ids::{Currency, FspId};

    fn id(n: u64) -> TransferId {
        TransferId::parse(&format!("00000000-0000-4000-8000-{n:012}")).expect("id")
    }

    fn record(n: u64, finished_ms: i64) -> FinishedTransfer {
        FinishedTransfer {
            parties: Parties {
                transfer_id: id(n),
                payer: FspId::new("payerfsp").expect("fsp"),
                payee: FspId::new("payeefsp").expect("fsp"),
                currency: Currency::new("USD").expect("USD"),
                amount: n as i64 + 1,
            },
            state: TransferState::Committed,
            fulfilment: Some([n as u8; 32]),
            completed_ms: Some(finished_ms),
            error_code: None,
            prepare_hash: [1; 16],
            final_hash: Some([2; 16]),
            finished_ms,
            finished_batch: n,
        }
    }

    /// Writes `rounds` level-0 runs of `per_round` records, numbered from 0.
    fn fill(archive: &Archive, rounds: u64, per_round: u64) {
        for round in 0..rounds {
            let records: Vec<_> = (round * per_round..(round + 1) * per_round)
                .map(|n| record(n, 1_000 + round as i64))
                .collect();
            archive.add(&records).expect("add");
            archive.sync().expect("sync");
        }
    }

    fn merge_all(archive: &Archive) {
        let stop = AtomicBool::new(false);
        let mut steps = 0;
        while archive.maintain(i64::MIN, &stop).expect("maintain") {
            steps += 1;
            assert!(steps < 1_000, "maintenance never settles");
        }
    }

    fn assert_all_found(archive: &Archive, count: u64) {
        for n in 0..count {
            let found = archive.get(&id(n)).expect("get");
            assert_eq!(
                found,
                Some(record(n, found.as_ref().map_or(0, |r| r.finished_ms)))
            );
            assert_eq!(found.map(|r| r.parties.amount), Some(n as i64 + 1));
        }
        assert_eq!(archive.get(&id(count + 7)).expect("get"), None);
    }

    #[test]
    fn records_are_found_before_and_after_merging_and_after_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = Archive::open(dir.path(), 8 << 20).expect("open");
        // 20 rounds of 700: chunks of several hundred records, two levels of merging.
        fill(&archive, 20, 700);
        assert_eq!(archive.stats().runs, 20);
        assert_all_found(&archive, 14_000);
        merge_all(&archive);
        let stats = archive.stats();
        assert_eq!(stats.records, 14_000, "merging keeps every record");
        assert_eq!(stats.merges, 2);
        assert_eq!(stats.runs, 6, "two merged runs + four level-0 runs left");
        assert_all_found(&archive, 14_000);
        let mut visited = 0;
        archive
            .for_each(&mut |hash, finished_ms| {
                assert!(finished_ms >= 1_000);
                assert_ne!(hash, 0);
                visited += 1;
            })
            .expect("for_each");
        assert_eq!(visited, 14_000);
        drop(archive);
        let archive = Archive::open(dir.path(), 8 << 20).expect("reopen");
        assert_eq!(archive.stats().runs, 6);
        assert_all_found(&archive, 14_000);
        // Run ids are never reused after a reopen.
        fill(&archive, 1, 1);
        assert_eq!(archive.stats().runs, 7);
        let blobs = std::fs::read_dir(dir.path().join("blobs"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(blobs, 0, "sled wrote blob files, which it never fsyncs");
    }

    #[test]
    fn a_reused_id_finds_its_newest_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = Archive::open(dir.path(), 8 << 20).expect("open");
        archive.add(&[record(5, 10)]).expect("add");
        archive.sync().expect("sync");
        archive.add(&[record(5, 90_000)]).expect("add");
        archive.sync().expect("sync");
        archive.add(&[record(5, 50)]).expect("add");
        archive.sync().expect("sync");
        assert_eq!(archive.get(&id(5)).expect("get"), Some(record(5, 90_000)));
    }

    #[test]
    fn a_directory_in_use_is_refused_after_a_bounded_wait() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _held = Archive::open(dir.path(), 8 << 20).expect("open");
        let started = std::time::Instant::now();
        let refused = Archive::open(dir.path(), 8 << 20)
            .err()
            .expect("a second open");
        let waited = started.elapsed();
        assert!(
            refused.to_string().contains("could not acquire lock"),
            "{refused}"
        );
        let bound = std::time::Duration::from_millis(super::super::SLED_LOCK_WAIT_MS_MAX);
        assert!(waited >= bound && waited < bound * 3, "waited {waited:?}");
    }

    #[test]
    fn expired_runs_are_deleted_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = Archive::open(dir.path(), 8 << 20).expect("open");
        fill(&archive, 3, 10); // finished at 1_000, 1_001, 1_002
        let stop = AtomicBool::new(false);
        assert!(archive.maintain(1_002, &stop).expect("maintain"));
        let stats = archive.stats();
        assert_eq!((stats.runs, stats.records, stats.runs_pruned), (1, 10, 2));
        assert_eq!(archive.get(&id(3)).expect("get"), None);
        assert_eq!(archive.get(&id(25)).expect("get"), Some(record(25, 1_002)));
        drop(archive);
        let archive = Archive::open(dir.path(), 8 << 20).expect("reopen");
        assert_eq!(archive.stats().records, 10);
        let mut chunks = 0;
        for item in archive.tree.scan_prefix([CHUNK_PREFIX]) {
            item.expect("chunk");
            chunks += 1;
        }
        assert_eq!(chunks, 1, "the expired runs' chunks are gone from disk");
    }

    #[test]
    fn a_crash_in_the_middle_of_a_merge_loses_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = Archive::open(dir.path(), 8 << 20).expect("open");
        fill(&archive, FAN_IN as u64, 500);
        let inputs = archive.merge_candidates();
        assert_eq!(inputs.len(), FAN_IN);
        // Crash 1: the merged run's chunks are written but not its meta (a stop at the
        // first chunk leaves exactly that state, then cleans it; re-create it by hand).
        let orphan = archive.next_run.fetch_add(1, Ordering::Relaxed);
        let mut builder = RunBuilder::new(orphan, 1);
        let chunk = builder
            .push(1, 1, b"x")
            .expect("push")
            .or_else(|| builder.take_chunk())
            .expect("chunk");
        archive.tree.insert(&chunk.0[..], chunk.1).expect("insert");
        // Crash 2: a merged run is durable but its inputs were not deleted yet.
        let stop = AtomicBool::new(false);
        let merged = archive.next_run.load(Ordering::Relaxed);
        {
            // Merge, then put the inputs back as they were before the deletion.
            let saved: Vec<(sled::IVec, sled::IVec)> = archive
                .tree
                .iter()
                .map(|item| item.expect("item"))
                .filter(|(key, _)| key.len() == 17 && key[..] != chunk_key(orphan, 1)[..])
                .chain(inputs.iter().map(|m| {
                    archive
                        .tree
                        .get(meta_key(m.run))
                        .expect("get")
                        .map(|v| (sled::IVec::from(&meta_key(m.run)[..]), v))
                        .expect("meta")
                }))
                .collect();
            archive.merge(&inputs, &stop).expect("merge");
            for (key, value) in saved {
                archive.tree.insert(key, value).expect("restore");
            }
            archive.sync().expect("sync");
        }
        drop(archive);
        let archive = Archive::open(dir.path(), 8 << 20).expect("reopen");
        let stats = archive.stats();
        assert_eq!(
            (stats.runs, stats.records),
            (1, 4_000),
            "only the merged run is left"
        );
        assert_eq!(archive.read_visible()[0].run, merged);
        assert_all_found(&archive, 4_000);
        assert_eq!(
            archive.tree.scan_prefix(run_prefix(orphan)).count(),
            0,
            "orphan chunks are deleted at open"
        );
    }

    #[test]
    fn a_merge_told_to_stop_leaves_the_inputs_as_they_were() {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = Archive::open(dir.path(), 8 << 20).expect("open");
        fill(&archive, FAN_IN as u64, 500);
        let stop = AtomicBool::new(true);
        assert!(archive.maintain(i64::MIN, &stop).expect("maintain"));
        assert_eq!(archive.stats().runs, FAN_IN);
        assert_eq!(archive.stats().merges, 0);
        assert_all_found(&archive, 4_000);
        let metas = archive.tree.scan_prefix([META_PREFIX]).count();
        assert_eq!(metas, FAN_IN, "the abandoned run left no meta");
    }

    #[test]
    fn lookups_never_miss_while_runs_are_merged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = std::sync::Arc::new(Archive::open(dir.path(), 8 << 20).expect("open"));
        fill(&archive, 3 * FAN_IN as u64, 200);
        let count = 3 * FAN_IN as u64 * 200;
        let reader = {
            let archive = archive.clone();
            std::thread::spawn(move || {
                let mut looked = 0u64;
                for round in 0..3 {
                    for n in (round..count).step_by(7) {
                        assert!(
                            archive.get(&id(n)).expect("get").is_some(),
                            "transfer {n} went missing during a merge"
                        );
                        looked += 1;
                    }
                }
                looked
            })
        };
        merge_all(&archive);
        let looked = reader.join().expect("reader");
        assert!(looked > 1_000);
        assert_eq!(archive.stats().records, count);
    }

    #[test]
    fn a_garbled_chunk_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = Archive::open(dir.path(), 8 << 20).expect("open");
        fill(&archive, 1, 10);
        let (key, mut value) = archive
            .tree
            .scan_prefix([CHUNK_PREFIX])
            .next()
            .expect("a chunk")
            .expect("read");
        let mut bytes = value.to_vec();
        // The first entry's end offset points past the chunk.
        bytes[CHUNK_HEADER_BYTES + 16..CHUNK_HEADER_BYTES + 20].copy_from_slice(&[0xff; 4]);
        value = bytes.into();
        archive.tree.insert(key, value).expect("insert");
        let error = (0..10)
            .find_map(|n| archive.get(&id(n)).err())
            .expect("a lookup must fail");
        assert!(matches!(error, EngineError::Corrupt { .. }), "{error}");
        assert!(error.to_string().contains("archive/run"), "{error}");
    }

    #[test]
    fn chunks_respect_the_size_bound() {
        let mut builder = RunBuilder::new(1, 0);
        let record = vec![7u8; 300];
        let mut chunks = Vec::new();
        for hash in 0..1_000u64 {
            chunks.extend(builder.push(hash, 0, &record).expect("push"));
        }
        chunks.extend(builder.take_chunk());
        assert!(chunks.len() > 1);
        let mut total = 0;
        for (key, value) in &chunks {
            assert!(value.len() <= CHUNK_BYTES_MAX);
            let view = ChunkView::parse(value).expect("parse");
            assert_eq!(key[9..], view.hash(0).to_be_bytes());
            total += view.len();
        }
        assert_eq!(total, 1_000);
        assert!(builder
            .push(5, 0, &vec![0u8; RECORD_BYTES_MAX + 1])
            .is_err());
    }
}
