//! Confirmations of peer messages follow durability, not application.
//!
//! A receiver tells a sender "I have durably applied your messages up to n", and the
//! sender then forgets them (it would re-send them after a crash otherwise). If the
//! receiver confirmed a message applied in a batch that is not yet durable, a power loss
//! would lose the message on both sides: a lost grant, a stuck recall round.
//!
//! The test holds the WAL's fdatasync back with a gate in front of the real store, lets
//! partition 0 apply batch k (a tick) and then batch k+1 (a peer message), opens the gate
//! for one sync only (batch k becomes durable, k+1 does not) and checks what partition 0
//! has confirmed to the sender.

use engine::command::{Admin, Command, PeerMessage};
use engine::ids::{AccountKey, Currency, FspId, TransferId};
use engine::limits::Limits;
use engine::runtime::{now_ms, Hub};
use engine::storage::{ArchiveStats, SnapshotRecord, Storage, Store, WalRecord, WalRecordRef};
use engine::EngineError;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const PARTITIONS: u32 = 2;

/// The real store, with syncs that wait for permits and a count of appended batches.
struct GatedStore {
    inner: Store,
    /// Syncs allowed before the gate closes again; `u64::MAX` is open.
    permits: Mutex<u64>,
    opened: Condvar,
    appended: Mutex<Vec<u64>>,
    /// While set, every append of partition 0 takes this long: the actor is slower than
    /// the syncer, so each batch gets a sync round of its own.
    slow_append: Mutex<Option<Duration>>,
}

impl GatedStore {
    fn slow(&self, partition: u32) {
        let delay = *self.slow_append.lock().expect("lock");
        if let Some(delay) = delay.filter(|_| partition == 0) {
            std::thread::sleep(delay);
        }
    }

    fn allow(&self, syncs: u64) {
        *self.permits.lock().expect("lock") = syncs;
        self.opened.notify_all();
    }

    fn appended(&self, partition: u32) -> u64 {
        self.appended.lock().expect("lock")[partition as usize]
    }
}

impl Storage for GatedStore {
    fn append_encoded(
        &self,
        partition: u32,
        batch_seq: u64,
        body: &[u8],
    ) -> Result<(), EngineError> {
        self.slow(partition);
        self.appended.lock().expect("lock")[partition as usize] += 1;
        self.inner.append_encoded(partition, batch_seq, body)
    }
    fn append_batch(&self, partition: u32, record: &WalRecordRef<'_>) -> Result<(), EngineError> {
        self.slow(partition);
        self.appended.lock().expect("lock")[partition as usize] += 1;
        self.inner.append_batch(partition, record)
    }
    fn batches_after(&self, partition: u32, after: u64) -> Result<Vec<WalRecord>, EngineError> {
        self.inner.batches_after(partition, after)
    }
    fn write_snapshot(&self, partition: u32, snapshot: &SnapshotRecord) -> Result<(), EngineError> {
        self.inner.write_snapshot(partition, snapshot)
    }
    fn load_snapshot(&self, partition: u32) -> Result<Option<SnapshotRecord>, EngineError> {
        self.inner.load_snapshot(partition)
    }
    fn truncate_batches(&self, partition: u32, upto: u64) -> Result<(), EngineError> {
        self.inner.truncate_batches(partition, upto)
    }
    fn next_epoch(&self, partition: u32) -> Result<u64, EngineError> {
        self.inner.next_epoch(partition)
    }
    fn archive(&self, records: &[engine::command::FinishedTransfer]) -> Result<(), EngineError> {
        self.inner.archive(records)
    }
    fn sync_archive(&self) -> Result<(), EngineError> {
        self.inner.sync_archive()
    }
    fn finished(
        &self,
        transfer_id: &TransferId,
    ) -> Result<Option<engine::command::FinishedTransfer>, EngineError> {
        self.inner.finished(transfer_id)
    }
    fn for_each_finished(&self, visit: &mut dyn FnMut(u64, i64)) -> Result<(), EngineError> {
        self.inner.for_each_finished(visit)
    }
    fn maintain_archive(&self, before_ms: i64, stop: &AtomicBool) -> Result<bool, EngineError> {
        self.inner.maintain_archive(before_ms, stop)
    }
    fn archive_stats(&self) -> ArchiveStats {
        self.inner.archive_stats()
    }
    fn ledger_add(&self, entries: &[engine::ledger::Entry]) -> Result<(), EngineError> {
        self.inner.ledger_add(entries)
    }
    fn ledger_range(
        &self,
        account: &engine::ids::AccountKey,
        from_ms: i64,
        to_ms: i64,
        entries_max: usize,
    ) -> Result<Vec<engine::ledger::Entry>, EngineError> {
        self.inner
            .ledger_range(account, from_ms, to_ms, entries_max)
    }
    fn prune_ledger(&self, before_ms: i64) -> Result<u64, EngineError> {
        self.inner.prune_ledger(before_ms)
    }
    fn ledger_stats(&self) -> engine::storage::LedgerStats {
        self.inner.ledger_stats()
    }
    fn registry_put(&self, key: &str, value: &[u8]) -> Result<(), EngineError> {
        self.inner.registry_put(key, value)
    }
    fn registry_get(&self, key: &str) -> Result<Option<Vec<u8>>, EngineError> {
        self.inner.registry_get(key)
    }
    fn registry_scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, EngineError> {
        self.inner.registry_scan(prefix)
    }
    fn sync(&self) -> Result<(), EngineError> {
        let mut permits = self.permits.lock().expect("lock");
        while *permits == 0 {
            permits = self.opened.wait(permits).expect("lock");
        }
        if *permits != u64::MAX {
            *permits -= 1;
        }
        drop(permits);
        self.inner.sync()
    }
    fn failed(&self) -> Option<String> {
        self.inner.failed()
    }
    fn fsyncs(&self) -> u64 {
        self.inner.fsyncs()
    }
    fn sync_time_us(&self) -> (u64, u64) {
        self.inner.sync_time_us()
    }
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_confirmed_only_once_the_batch_that_applied_it_is_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(GatedStore {
        inner: Store::open(dir.path(), PARTITIONS, 8 << 20).expect("store"),
        permits: Mutex::new(u64::MAX),
        opened: Condvar::new(),
        appended: Mutex::new(vec![0; PARTITIONS as usize]),
        slow_append: Mutex::new(None),
    });
    let limits = Limits {
        // One command per batch, so that the tick and the message are two batches.
        batch_size_max: 1,
        tick_interval_ms: 3_600_000,
        ..Limits::default()
    };
    let (hub, _events) = Hub::open_with_store(store.clone(), PARTITIONS, limits).expect("hub");
    let account = AccountKey::new(
        FspId::new("slicefsp").expect("fsp"),
        Currency::new("USD").expect("currency"),
    );
    tokio::time::timeout(
        Duration::from_secs(10),
        hub.admin(now_ms(), Admin::CreateAccount { account }),
    )
    .await
    .expect("account created within 10 s")
    .expect("create");
    // The ticker's first tick fires at once; let it settle before closing the gate.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = store.appended(0);
    let batch_before = hub.partitions()[0].committed_batch;
    store.allow(0);
    *store.slow_append.lock().expect("lock") = Some(Duration::from_millis(100));
    hub.enqueue(0, Command::Tick { now_ms: now_ms() })
        .expect("tick");
    // A message from partition 1 (a recall round that asks nothing of a slice with no
    // headroom), sent through partition 0's log like any other.
    hub.enqueue(
        0,
        Command::Peer {
            from: 1,
            seq: 1,
            message: PeerMessage::Recall { account, round: 1 },
        },
    )
    .expect("message");
    wait_until("both batches applied and written", || {
        store.appended(0) >= before + 2
    })
    .await;
    // One sync: the tick's batch becomes durable, the message's does not.
    store.allow(1);
    wait_until("the tick's batch released", || {
        hub.partitions()[0].committed_batch > batch_before
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        hub.partitions()[0].committed_batch,
        batch_before + 1,
        "only the first batch is durable"
    );
    assert_eq!(
        hub.confirmed_watermark(0, 1),
        0,
        "partition 0 confirmed a message whose batch is not durable"
    );
    store.allow(u64::MAX);
    wait_until("the message confirmed once durable", || {
        hub.confirmed_watermark(0, 1) == 1
    })
    .await;
    tokio::time::timeout(Duration::from_secs(10), hub.shutdown())
        .await
        .expect("shut down within 10 s")
        .expect("clean shutdown");
}
