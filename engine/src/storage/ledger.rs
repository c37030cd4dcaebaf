//! The position ledger's entries on disk (`crate::ledger`), in one tree `ledger` of the
//! archive's sled database, so that the archive's flush and fdatasync make both durable.
//!
//! Layout: one value per account, minute and write round:
//!
//! ```text
//! account (fsp length u8, fsp, currency) ++ bucket (at_ms / LEDGER_BUCKET_MS, u64 BE)
//!     ++ first entry's id (partition u32 BE, batch u64 BE, index u32 BE)  →  chunk
//! ```
//!
//! where a chunk is a [`RecordKind::LedgerChunk`] record: up to [`LEDGER_CHUNK_ENTRIES_MAX`]
//! entries of that account whose time falls in that bucket. Why this shape:
//!
//! * **Writes are few and large.** At tens of thousands of transfers a second every
//!   transfer makes two or three entries; one sled key per entry would cost several µs of
//!   CPU each (see `archive.rs`). Grouped per account and minute, a write round is a
//!   handful of keys however busy the hub is.
//! * **Reads are one range scan.** The entries of an account between two times are in the
//!   keys from the first time's bucket to the last time's; the account's prefix is never
//!   a prefix of another account's (its length comes first).
//! * **Retention drops whole keys**: every chunk of a bucket older than the cutoff.
//!
//! A chunk is written once and never changed. Recovery writes the entries of the batches
//! it replays again, possibly grouped into other chunks: readers drop repeated ids
//! (`ledger::sort_dedup`).

use super::{corrupt, storage_err};
use crate::codec::RecordKind;
use crate::ids::AccountKey;
use crate::ledger::{sort_dedup, Entry};
use crate::limits::{DELETE_KEYS_PER_BATCH_MAX, LEDGER_BUCKET_MS, LEDGER_CHUNK_ENTRIES_MAX};
use crate::EngineError;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Counts for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LedgerStats {
    pub entries_written: u64,
    pub chunks_written: u64,
    pub chunks_pruned: u64,
}

pub struct Ledger {
    tree: sled::Tree,
    /// Entries waiting for `write`.
    pending: Mutex<Vec<Entry>>,
    entries_written: AtomicU64,
    chunks_written: AtomicU64,
    chunks_pruned: AtomicU64,
}

fn account_prefix(account: &AccountKey) -> Vec<u8> {
    let fsp = account.fsp.as_str().as_bytes();
    let mut key = Vec::with_capacity(1 + fsp.len() + 3 + 8 + 16);
    key.push(u8::try_from(fsp.len()).expect("an fspId is shorter than 256 bytes"));
    key.extend_from_slice(fsp);
    key.extend_from_slice(account.currency.as_str().as_bytes());
    key
}

fn bucket_of(at_ms: i64) -> u64 {
    // Hub times are after 1970; an earlier one (a test's) counts in bucket 0.
    u64::try_from(at_ms.max(0)).expect("non-negative") / LEDGER_BUCKET_MS
}

fn chunk_key(account: &AccountKey, bucket: u64, first: &Entry) -> Vec<u8> {
    let mut key = account_prefix(account);
    key.extend_from_slice(&bucket.to_be_bytes());
    key.extend_from_slice(&first.id.partition.to_be_bytes());
    key.extend_from_slice(&first.id.batch_seq.to_be_bytes());
    key.extend_from_slice(&first.id.index.to_be_bytes());
    key
}

fn ledger_corrupt(key: &[u8], detail: impl std::fmt::Display) -> EngineError {
    corrupt(0, &format!("ledger/{}", hex(key)), detail)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Ledger {
    pub fn open(db: &sled::Db) -> Result<Ledger, EngineError> {
        Ok(Ledger {
            tree: db.open_tree("ledger").map_err(storage_err)?,
            pending: Mutex::new(Vec::new()),
            entries_written: AtomicU64::new(0),
            chunks_written: AtomicU64::new(0),
            chunks_pruned: AtomicU64::new(0),
        })
    }

    /// Queues entries for the next `write`.
    pub fn add(&self, entries: &[Entry]) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(entries);
    }

    /// Writes what is pending as chunks, in one sled batch (not yet durable: the archive's
    /// sync makes it so).
    pub fn write(&self) -> Result<(), EngineError> {
        let entries = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if entries.is_empty() {
            return Ok(());
        }
        let count = entries.len() as u64;
        let mut groups: BTreeMap<(AccountKey, u64), Vec<Entry>> = BTreeMap::new();
        for entry in entries {
            groups
                .entry((entry.account, bucket_of(entry.at_ms)))
                .or_default()
                .push(entry);
        }
        let mut batch = sled::Batch::default();
        let mut chunks = 0;
        for ((account, bucket), group) in groups {
            for chunk in group.chunks(LEDGER_CHUNK_ENTRIES_MAX) {
                let value = crate::codec::encode_record(RecordKind::LedgerChunk, &chunk)
                    .map_err(storage_err)?;
                batch.insert(chunk_key(&account, bucket, &chunk[0]), value);
                chunks += 1;
            }
        }
        self.tree.apply_batch(batch).map_err(storage_err)?;
        self.entries_written.fetch_add(count, Ordering::Relaxed);
        self.chunks_written.fetch_add(chunks, Ordering::Relaxed);
        Ok(())
    }

    /// The account's written entries with `from_ms <= at_ms <= to_ms`, in time order,
    /// without repeats: at most `entries_max` of them, plus the first one past it if any
    /// (so the caller can tell the answer was cut). Reads whole buckets: it stops after
    /// the bucket in which the answer passed `entries_max`.
    pub fn range(
        &self,
        account: &AccountKey,
        from_ms: i64,
        to_ms: i64,
        entries_max: usize,
    ) -> Result<Vec<Entry>, EngineError> {
        let mut out = Vec::new();
        if from_ms > to_ms {
            return Ok(out);
        }
        let prefix = account_prefix(account);
        let mut start = prefix.clone();
        start.extend_from_slice(&bucket_of(from_ms).to_be_bytes());
        let mut end = prefix.clone();
        end.extend_from_slice(&bucket_of(to_ms).to_be_bytes());
        end.extend_from_slice(&[0xFF; 16]);
        let mut bucket_now = None;
        for item in self.tree.range(start..=end) {
            let (key, value) = item.map_err(storage_err)?;
            let bucket = &key[prefix.len()..prefix.len() + 8];
            if bucket_now.as_deref() != Some(bucket) {
                // A bucket is complete: stop if the answer is already long enough.
                if out.len() > entries_max {
                    break;
                }
                bucket_now = Some(bucket.to_vec());
            }
            let chunk: Vec<Entry> = crate::codec::decode_record(RecordKind::LedgerChunk, &value)
                .map_err(|e| ledger_corrupt(&key, e))?;
            out.extend(
                chunk
                    .into_iter()
                    .filter(|e| e.account == *account && (from_ms..=to_ms).contains(&e.at_ms)),
            );
        }
        sort_dedup(&mut out);
        out.truncate(entries_max.saturating_add(1));
        Ok(out)
    }

    /// Deletes every chunk of a bucket wholly before `before_ms`, of every account, at
    /// most [`DELETE_KEYS_PER_BATCH_MAX`] keys per sled batch. Returns the chunks deleted.
    pub fn prune(&self, before_ms: i64) -> Result<u64, EngineError> {
        let cutoff = bucket_of(before_ms);
        let mut pruned = 0;
        let mut cursor: Vec<u8> = Vec::new();
        loop {
            let Some(item) = self.tree.range(cursor.clone()..).keys().next() else {
                break;
            };
            let key = item.map_err(storage_err)?;
            let prefix_len = 1 + usize::from(key[0]) + 3;
            if key.len() != prefix_len + 8 + 16 {
                return Err(ledger_corrupt(&key, "key of the wrong length"));
            }
            let prefix = key[..prefix_len].to_vec();
            let mut end = prefix.clone();
            end.extend_from_slice(&cutoff.to_be_bytes());
            let mut batch = sled::Batch::default();
            let mut in_batch = 0;
            for old in self.tree.range(prefix.clone()..end).keys() {
                batch.remove(old.map_err(storage_err)?);
                in_batch += 1;
                pruned += 1;
                if in_batch == DELETE_KEYS_PER_BATCH_MAX {
                    self.tree
                        .apply_batch(std::mem::take(&mut batch))
                        .map_err(storage_err)?;
                    in_batch = 0;
                }
            }
            self.tree.apply_batch(batch).map_err(storage_err)?;
            // Past every key of this account: the next account's prefix differs in a byte.
            cursor = prefix;
            cursor.extend_from_slice(&[0xFF; 24]);
            cursor.push(0);
        }
        self.chunks_pruned.fetch_add(pruned, Ordering::Relaxed);
        Ok(pruned)
    }

    pub fn stats(&self) -> LedgerStats {
        LedgerStats {
            entries_written: self.entries_written.load(Ordering::Relaxed),
            chunks_written: self.chunks_written.load(Ordering::Relaxed),
            chunks_pruned: self.chunks_pruned.load(Ordering::Relaxed),
        }
    }
}
