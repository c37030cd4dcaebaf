//! The in-process runtime end to end: results only after durability, recovery after a
//! restart, a corrupt record stopping only its partition, overload answered at once.

use engine::command::{Admin, Command, ErrorCode, Event, Fulfil, Prepare, TransferState};
use engine::ids::{AccountKey, Currency, FspId, TransferId};
use engine::limits::Limits;
use engine::runtime::{now_ms, Delivery, Hub, HubConfig};
use engine::storage::{Storage, Store};
use engine::EngineError;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::Receiver;

const PARTITIONS: u32 = 4;

/// The FSPIOP code of a refusal; `None` for success or any other error.
fn refusal<T>(result: Result<T, EngineError>) -> Option<ErrorCode> {
    match result {
        Err(EngineError::Refused { code, .. }) => Some(code),
        _ => None,
    }
}

fn fsp(name: &str) -> FspId {
    FspId::new(name).expect("name")
}

fn usd() -> Currency {
    Currency::new("USD").expect("currency")
}

fn id(n: u64) -> TransferId {
    TransferId::parse(&format!("6f2a1c3e-0000-4000-8000-{n:012x}")).expect("id")
}

fn limits() -> Limits {
    Limits {
        snapshot_every_batches: 3,
        ..Limits::default()
    }
}

fn open(dir: &Path, limits: Limits) -> (Hub, Receiver<Delivery>) {
    Hub::open(HubConfig {
        data_dir: dir.to_path_buf(),
        partitions: PARTITIONS,
        limits,
    })
    .expect("open hub")
}

async fn provision(hub: &Hub, name: &str, ndc: i64, funds: i64, n: u64) {
    let account = AccountKey::new(fsp(name), usd());
    hub.admin(now_ms(), Admin::CreateAccount { account })
        .await
        .expect("create");
    hub.admin(
        now_ms(),
        Admin::InitialPositionAndLimits {
            account,
            position: 0,
            ndc,
        },
    )
    .await
    .expect("limits");
    hub.admin(
        now_ms(),
        Admin::FundsIn {
            account,
            amount: funds,
            funds_id: id(900_000 + n),
        },
    )
    .await
    .expect("funds");
}

/// Waits for the next event about `transfer`, skipping others.
async fn next_about(events: &mut Receiver<Delivery>, transfer: TransferId) -> Event {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("an event within 10 s")
            .expect("event stream open")
            .into_event();
        if event.transfer_id() == Some(transfer) {
            return event;
        }
    }
}

fn prepare(n: u64, payer: &str, payee: &str, amount: i64, condition: [u8; 32]) -> Prepare {
    Prepare {
        transfer_id: id(n),
        payer: fsp(payer),
        payee: fsp(payee),
        currency: usd(),
        amount,
        condition,
        expiration_ms: now_ms() + 60_000,
        body_hash: [n as u8; 16],
        payload: b"original prepare".to_vec(),
    }
}

fn fulfil(n: u64, payee: &str, fulfilment: [u8; 32]) -> Fulfil {
    Fulfil {
        transfer_id: id(n),
        source: fsp(payee),
        fulfilment,
        completed_ms: now_ms(),
        notify_payee: false,
        body_hash: [0xf0 ^ n as u8; 16],
        payload: Vec::new(),
    }
}

/// The payee fulfils transfer `n` at `now_ms`; the commit event must follow.
async fn fulfil_and_expect_commit(
    hub: &Hub,
    events: &mut Receiver<Delivery>,
    now_ms: i64,
    n: u64,
    fulfilment: [u8; 32],
) {
    hub.fulfil(now_ms, fulfil(n, "payeefsp", fulfilment))
        .await
        .expect("fulfil");
    match next_about(events, id(n)).await {
        Event::Committed { .. } => {}
        other => panic!("expected transfer {n} committed, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_commit_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fulfilment = [9u8; 32];
    let condition: [u8; 32] = Sha256::digest(fulfilment).into();
    {
        let (hub, mut events) = open(dir.path(), limits());
        provision(&hub, "payerfsp", 100_000, 100_000, 1).await;
        provision(&hub, "payeefsp", 100_000, 100_000, 2).await;
        for n in 1..=20u64 {
            hub.prepare(
                now_ms(),
                prepare(n, "payerfsp", "payeefsp", 1_000, condition),
            )
            .await
            .expect("prepare");
            match next_about(&mut events, id(n)).await {
                Event::Reserved { payload, .. } => assert_eq!(payload, b"original prepare"),
                other => panic!("expected Reserved, got {other:?}"),
            }
            if n <= 15 {
                fulfil_and_expect_commit(&hub, &mut events, now_ms(), n, fulfilment).await;
            }
        }
        let payer = hub
            .account(AccountKey::new(fsp("payerfsp"), usd()))
            .await
            .expect("the partitions answer")
            .expect("payer");
        assert_eq!((payer.position, payer.reserved), (15_000, 5_000));
        let view = hub.get_transfer(id(3), fsp("payerfsp")).await.expect("get");
        assert_eq!(view.state, TransferState::Committed);
        assert_eq!(
            refusal(hub.get_transfer(id(3), fsp("otherfsp")).await),
            Some(ErrorCode::GenericClient)
        );
        assert_eq!(
            refusal(hub.get_transfer(id(999), fsp("payerfsp")).await),
            Some(ErrorCode::TransferNotFound)
        );
        hub.shutdown().await.expect("clean shutdown");
    }
    // Reopen: snapshot + WAL replay give back every acknowledged result.
    let (hub, mut events) = open(dir.path(), limits());
    let payer = hub
        .account(AccountKey::new(fsp("payerfsp"), usd()))
        .await
        .expect("the partitions answer")
        .expect("payer");
    let payee = hub
        .account(AccountKey::new(fsp("payeefsp"), usd()))
        .await
        .expect("the partitions answer")
        .expect("payee");
    assert_eq!((payer.position, payer.reserved), (15_000, 5_000));
    assert_eq!((payee.position, payee.reserved), (-15_000, 0));
    assert_eq!(
        hub.get_transfer(id(3), fsp("payeefsp"))
            .await
            .expect("get")
            .state,
        TransferState::Committed
    );
    assert_eq!(
        hub.get_transfer(id(18), fsp("payeefsp"))
            .await
            .expect("get")
            .state,
        TransferState::Reserved
    );
    assert!(hub
        .partitions()
        .iter()
        .all(|p| p.epoch == 2 && p.stopped.is_none()));
    // Duplicates of archived transfers are still recognised after the restart, both
    // while the archive filters load and after (exact answers either way).
    for round in 0..2u64 {
        if round == 1 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let n = 3 + round;
        hub.prepare(
            now_ms(),
            prepare(n, "payerfsp", "payeefsp", 1_000, condition),
        )
        .await
        .expect("resend");
        match next_about(&mut events, id(n)).await {
            Event::StateResent {
                state,
                fulfilment: Some(f),
                ..
            } => {
                assert_eq!((state, f), (TransferState::Committed, fulfilment))
            }
            other => panic!("expected the committed state re-sent, got {other:?}"),
        }
        let mut modified = prepare(n, "payerfsp", "payeefsp", 1_000, condition);
        modified.body_hash = [0xee; 16];
        hub.prepare(now_ms(), modified)
            .await
            .expect("modified resend");
        match next_about(&mut events, id(n)).await {
            Event::RequestRefused { code, .. } => assert_eq!(code, ErrorCode::ModifiedRequest),
            other => panic!("expected 3106, got {other:?}"),
        }
    }
    let payer = hub
        .account(AccountKey::new(fsp("payerfsp"), usd()))
        .await
        .expect("the partitions answer")
        .expect("payer");
    assert_eq!(payer.reserved, 5_000, "duplicates reserved nothing");
    hub.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_record_stops_only_its_partition_and_names_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (hub, _events) = open(dir.path(), Limits::default());
        provision(&hub, "payerfsp", 100_000, 100_000, 1).await;
        hub.shutdown().await.expect("clean shutdown");
    }
    let victim = 1u32;
    {
        let store = Store::open(dir.path(), PARTITIONS, 8 << 20).expect("store");
        let next = last_batch(&store, victim) + 1;
        store
            .append_encoded(victim, next, &[0xde, 0xad, 0xbe, 0xef])
            .expect("write garbage");
        store.sync().expect("sync");
    }
    let (hub, _events) = open(dir.path(), Limits::default());
    assert_only_stopped(&hub, victim, "wal/", "victim stopped");
    // Commands for the stopped partition are refused with the reason; others still work.
    let error = hub
        .submit(victim, Command::Tick { now_ms: now_ms() })
        .await
        .expect_err("stopped");
    assert!(
        matches!(error, EngineError::PartitionStopped { partition, .. } if partition == victim)
    );
    let alive = (0..PARTITIONS)
        .find(|p| *p != victim)
        .expect("another partition");
    hub.submit(alive, Command::Tick { now_ms: now_ms() })
        .await
        .expect("healthy partition works");
    hub.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_mailbox_answers_overloaded_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hub, _events) = open(
        dir.path(),
        Limits {
            mailbox_capacity: 4,
            ..Limits::default()
        },
    );
    let mut overloaded = 0;
    for _ in 0..10_000 {
        match hub.enqueue(0, Command::Tick { now_ms: now_ms() }) {
            Ok(()) => {}
            Err(EngineError::Overloaded { partition: 0 }) => overloaded += 1,
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert!(overloaded > 0, "a bounded mailbox must refuse when full");
    hub.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_prepares_use_exactly_the_headroom() {
    for round in 0..40u64 {
        let dir = tempfile::tempdir().expect("tempdir");
        let (hub, mut events) = open(dir.path(), Limits::default());
        provision(&hub, "payerfsp", 50_000, 100_000, 1).await;
        provision(&hub, "payeefsp", 100_000, 100_000, 2).await;
        let condition = [1u8; 32];
        for n in 0..200u64 {
            let p = prepare(1_000 + n, "payerfsp", "payeefsp", 1_000, condition);
            let partition = hub.partition_of(&p.transfer_id);
            hub.enqueue(
                partition,
                Command::Prepare {
                    now_ms: now_ms(),
                    prepare: p,
                },
            )
            .expect("enqueue");
            // Arrivals spread in time, as over HTTP, so slices borrow, spend and recall
            // while prepares keep coming.
            if n % (1 + round % 7) == 0 {
                tokio::time::sleep(Duration::from_micros(200 * (round % 5))).await;
            }
        }
        let (mut reserved, mut refused) = (0, Vec::new());
        while reserved + refused.len() < 200 {
            let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
                .await
                .expect("event")
                .expect("open")
                .into_event();
            match event {
                Event::Reserved { .. } => reserved += 1,
                Event::PrepareRefused { code, .. } => refused.push(code),
                _ => {}
            }
        }
        assert_eq!(reserved, 50, "round {round}: refusals {refused:?}");
        hub.shutdown().await.expect("clean shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_drop_the_wal_behind_them_and_every_finished_transfer_is_archived() {
    let dir = tempfile::tempdir().expect("tempdir");
    // WAL segments of 1 KiB hold a few batches each, so trimming can free most of them.
    let store = Arc::new(Store::open_with(dir.path(), PARTITIONS, 8 << 20, 1024).expect("store"));
    let fulfilment = [9u8; 32];
    let condition: [u8; 32] = Sha256::digest(fulfilment).into();
    const TRANSFERS: u64 = 200;
    {
        let (hub, mut events) =
            Hub::open_with_store(store.clone(), PARTITIONS, limits()).expect("hub");
        provision(&hub, "payerfsp", 10_000_000, 10_000_000, 1).await;
        provision(&hub, "payeefsp", 10_000_000, 10_000_000, 2).await;
        for n in 1..=TRANSFERS {
            hub.prepare(now_ms(), prepare(n, "payerfsp", "payeefsp", 10, condition))
                .await
                .expect("prepare");
            next_about(&mut events, id(n)).await;
            fulfil_and_expect_commit(&hub, &mut events, now_ms(), n, fulfilment).await;
        }
        hub.shutdown().await.expect("clean shutdown");
    }
    // Every partition snapshotted every 3 batches; the trimmer deleted the segments
    // that the snapshots cover, so what is left is the segment being written and the
    // few behind it holding batches after the last snapshots (about 400 batches were
    // written, a few per segment).
    let left: usize = (0..PARTITIONS)
        .map(|p| store.batches_after(p, 0).expect("wal").len())
        .sum();
    assert!(
        left <= 12 * PARTITIONS as usize,
        "{left} WAL records left behind snapshots"
    );
    // The archiver wrote every finished transfer before the hub stopped.
    assert!(store.archive_stats().records >= TRANSFERS);
    for n in 1..=TRANSFERS {
        let record = store.finished(&id(n)).expect("read").expect("archived");
        assert_eq!(record.state, TransferState::Committed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_id_is_deduplicated_for_the_retention_window_and_then_forgotten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let retention_ms = 60_000;
    let limits = Limits {
        retention_ms,
        ..limits()
    };
    let fulfilment = [9u8; 32];
    let condition: [u8; 32] = Sha256::digest(fulfilment).into();
    let (hub, mut events) = open(dir.path(), limits);
    provision(&hub, "payerfsp", 100_000, 100_000, 1).await;
    provision(&hub, "payeefsp", 100_000, 100_000, 2).await;
    let start = now_ms();
    let mut first = prepare(1, "payerfsp", "payeefsp", 1_000, condition);
    first.expiration_ms = start + 10 * retention_ms;
    hub.prepare(start, first.clone()).await.expect("prepare");
    next_about(&mut events, id(1)).await;
    fulfil_and_expect_commit(&hub, &mut events, start, 1, fulfilment).await;
    // Both while the finished transfer is in memory and after the archiver has it.
    for wait_ms in [0, 600] {
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        // Inside retention: the same prepare is a duplicate, answered with the state.
        hub.prepare(start + retention_ms - 1, first.clone())
            .await
            .expect("resend");
        assert!(
            matches!(
                next_about(&mut events, id(1)).await,
                Event::StateResent {
                    state: TransferState::Committed,
                    ..
                }
            ),
            "a resend inside retention is a duplicate"
        );
    }
    // Past retention the id is forgotten: the same prepare starts a new transfer.
    hub.prepare(start + retention_ms + 1, first.clone())
        .await
        .expect("reuse");
    assert!(
        matches!(next_about(&mut events, id(1)).await, Event::Reserved { .. }),
        "an id reused after retention starts a new transfer"
    );
    let payer = hub
        .account(AccountKey::new(fsp("payerfsp"), usd()))
        .await
        .expect("the partitions answer")
        .expect("payer");
    assert_eq!((payer.position, payer.reserved), (1_000, 1_000));
    hub.shutdown().await.expect("clean shutdown");
}

/// Writes a WAL record for `partition` after its last one, as another owner would.
fn append_foreign_record(dir: &Path, partition: u32, epoch: u64) {
    let store = Store::open(dir, PARTITIONS, 8 << 20).expect("store");
    let next = last_batch(&store, partition) + 1;
    let inputs = [(Command::Tick { now_ms: now_ms() }, None)];
    store
        .append_batch(
            partition,
            &engine::storage::WalRecordRef {
                batch_seq: next,
                epoch,
                inputs: inputs.iter().map(|(c, p)| (c, p)).collect(),
            },
        )
        .expect("append");
    store.sync().expect("sync");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_written_at_a_later_owner_epoch_stops_its_partition() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (hub, _events) = open(dir.path(), Limits::default());
        provision(&hub, "payerfsp", 100_000, 100_000, 1).await;
        hub.shutdown().await.expect("clean shutdown");
    }
    let victim = 2u32;
    // This directory was opened once (epoch 1); its next start takes epoch 2, so a
    // record of epoch 7 comes from an owner this node never was.
    append_foreign_record(dir.path(), victim, 7);
    let (hub, _events) = open(dir.path(), Limits::default());
    assert_only_stopped(
        &hub,
        victim,
        "epoch 7",
        "the partition with a later owner's record is stopped",
    );
    hub.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_partition_does_not_hold_wal_trimming_back_for_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let victim = 1u32;
    {
        let (hub, _events) = open(dir.path(), Limits::default());
        provision(&hub, "payerfsp", 10_000_000, 10_000_000, 1).await;
        provision(&hub, "payeefsp", 10_000_000, 10_000_000, 2).await;
        hub.shutdown().await.expect("clean shutdown");
    }
    {
        let store = Store::open(dir.path(), PARTITIONS, 8 << 20).expect("store");
        let next = last_batch(&store, victim) + 1;
        store
            .append_encoded(victim, next, &[0xde, 0xad, 0xbe, 0xef])
            .expect("write garbage");
        store.sync().expect("sync");
    }
    // 1 KiB segments: the traffic below fills dozens of them, and the others' snapshots
    // (every 3 batches) let them go unless the stopped partition holds them.
    let store = Arc::new(Store::open_with(dir.path(), PARTITIONS, 8 << 20, 1024).expect("store"));
    let fulfilment = [9u8; 32];
    let condition: [u8; 32] = Sha256::digest(fulfilment).into();
    {
        let (hub, mut events) =
            Hub::open_with_store(store.clone(), PARTITIONS, limits()).expect("hub");
        assert!(hub.partitions()[victim as usize].stopped.is_some());
        let mut done = 0;
        for n in 1..=400u64 {
            if hub.partition_of(&id(n)) == victim {
                continue;
            }
            hub.prepare(now_ms(), prepare(n, "payerfsp", "payeefsp", 10, condition))
                .await
                .expect("prepare");
            next_about(&mut events, id(n)).await;
            fulfil_and_expect_commit(&hub, &mut events, now_ms(), n, fulfilment).await;
            done += 1;
        }
        assert!(done > 200);
        hub.shutdown().await.expect("clean shutdown");
    }
    let left: usize = (0..PARTITIONS)
        .filter(|p| *p != victim)
        .map(|p| store.batches_after(p, 0).expect("wal").len())
        .sum();
    assert!(
        left <= 12 * PARTITIONS as usize,
        "{left} WAL records of healthy partitions left: the stopped one holds trimming back"
    );
    // The stopped partition's records are all still there for the operator: its
    // damaged record still stops it, naming the record.
    let reason = store
        .batches_after(victim, 0)
        .expect_err("the damaged record is kept")
        .to_string();
    assert!(reason.contains(&format!("partition {victim}")), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decodable_but_inconsistent_snapshot_stops_only_its_partition() {
    let dir = tempfile::tempdir().expect("tempdir");
    let victim = 3u32;
    {
        let (hub, _events) = open(dir.path(), Limits::default());
        provision(&hub, "payerfsp", 100_000, 100_000, 1).await;
        hub.shutdown().await.expect("clean shutdown");
    }
    {
        let store = Store::open(dir.path(), PARTITIONS, 8 << 20).expect("store");
        let batch_seq = last_batch(&store, victim);
        // A state that decodes but whose account reserves money no open transfer holds.
        let mut state = engine::machine::PartitionState::new(victim, PARTITIONS, Limits::default());
        state.batch_seq = batch_seq;
        state
            .accounts
            .entry(AccountKey::new(fsp("payerfsp"), usd()))
            .or_default()
            .slice
            .reserved = 500;
        store
            .write_snapshot(
                victim,
                &engine::storage::SnapshotRecord {
                    batch_seq,
                    state: state.snapshot_bytes(),
                    unconfirmed: Vec::new(),
                    unarchived: Vec::new(),
                    outbox: Vec::new(),
                    next_event_seq: 0,
                    unledgered: Vec::new(),
                },
            )
            .expect("snapshot");
        store.sync().expect("sync");
        store.truncate_batches(victim, batch_seq).expect("durable");
    }
    let (hub, _events) = open(dir.path(), Limits::default());
    assert_only_stopped(
        &hub,
        victim,
        "reserved",
        "the partition with the inconsistent snapshot is stopped",
    );
    hub.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_creation_completes_on_every_partition_even_when_mailboxes_are_full() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hub, mut events) = open(
        dir.path(),
        Limits {
            mailbox_capacity: 2,
            ..limits()
        },
    );
    // Keep every mailbox full of ticks while the accounts are created.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let (hub, stop) = (hub.clone(), stop.clone());
        tokio::spawn(async move {
            let mut refused = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for p in 0..PARTITIONS {
                    if hub.enqueue(p, Command::Tick { now_ms: now_ms() }).is_err() {
                        refused += 1;
                    }
                }
                tokio::task::yield_now().await;
            }
            refused
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    for name in ["payerfsp", "payeefsp"] {
        let account = AccountKey::new(fsp(name), usd());
        hub.admin(now_ms(), Admin::CreateAccount { account })
            .await
            .unwrap_or_else(|e| panic!("creating {name} while mailboxes are full: {e:?}"));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let refused = flood.await.expect("flood");
    assert!(
        refused > 0,
        "the mailboxes were never full: the test proves nothing"
    );
    for name in ["payerfsp", "payeefsp"] {
        let account = AccountKey::new(fsp(name), usd());
        hub.admin(
            now_ms(),
            Admin::InitialPositionAndLimits {
                account,
                position: 0,
                ndc: 1_000_000,
            },
        )
        .await
        .expect("limits");
        hub.admin(
            now_ms(),
            Admin::FundsIn {
                account,
                amount: 1_000_000,
                funds_id: id(800_000 + name.len() as u64),
            },
        )
        .await
        .expect("funds");
    }
    // The account exists on every partition: a prepare routed to each is reserved.
    let condition = [3u8; 32];
    let mut seen = std::collections::BTreeSet::new();
    for n in 1..=200u64 {
        let partition = hub.partition_of(&id(n));
        if !seen.insert(partition) {
            continue;
        }
        hub.prepare(now_ms(), prepare(n, "payerfsp", "payeefsp", 10, condition))
            .await
            .expect("prepare");
        match next_about(&mut events, id(n)).await {
            Event::Reserved { .. } => {}
            other => panic!("partition {partition} does not know the account: {other:?}"),
        }
    }
    assert_eq!(seen.len(), PARTITIONS as usize);
    hub.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fdatasync_stops_the_hub_acknowledges_nothing_and_shutdown_reports_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(dir.path(), PARTITIONS, 8 << 20).expect("store"));
    let (hub, _events) = Hub::open_with_store(store.clone(), PARTITIONS, limits()).expect("hub");
    provision(&hub, "payerfsp", 100_000, 100_000, 1).await;
    provision(&hub, "payeefsp", 100_000, 100_000, 2).await;
    assert!(hub.storage_failed().is_none());
    // The next fdatasync reports a writeback error, once, as Linux does.
    store.inject_sync_failure(engine::storage::SyncFault::Wal);
    let condition = [5u8; 32];
    let first = hub
        .prepare(now_ms(), prepare(1, "payerfsp", "payeefsp", 10, condition))
        .await;
    assert!(
        first.is_err(),
        "a prepare whose sync failed was acknowledged"
    );
    // Linux would report the next sync as fine: the store must not.
    let second = hub
        .prepare(now_ms(), prepare(2, "payerfsp", "payeefsp", 10, condition))
        .await;
    assert!(
        second.is_err(),
        "a prepare after a failed sync was acknowledged"
    );
    let reason = hub.storage_failed().expect("the store says it failed");
    assert!(reason.contains("WAL"), "{reason}");
    assert!(
        hub.shutdown().await.is_err(),
        "shutdown after a failed sync must not report a clean stop"
    );
}

/// Partition `victim` alone is stopped, with a reason that names it and `mentions`.
fn assert_only_stopped(hub: &Hub, victim: u32, mentions: &str, what: &str) {
    let statuses = hub.partitions();
    let reason = statuses[victim as usize].stopped.clone().expect(what);
    assert!(
        reason.contains(&format!("partition {victim}")) && reason.contains(mentions),
        "{reason}"
    );
    assert!(statuses
        .iter()
        .filter(|s| s.partition != victim)
        .all(|s| s.stopped.is_none()));
}

/// The newest batch of `partition` in the WAL (0 if none).
fn last_batch(store: &Store, partition: u32) -> u64 {
    store
        .batches_after(partition, 0)
        .expect("read")
        .last()
        .map(|r| r.batch_seq)
        .unwrap_or(0)
}

// ----- the results outbox: a consumer that stops reading never stops the ledger, and
// results not yet delivered when the hub stopped are published again after the restart
// (callbacks are at least once, not only for the batches recovery replays).

/// The event stream's consumer reads nothing at all: every prepare must still be
/// acknowledged, because the ledger never waits for the notifier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_reads_nothing_never_stops_the_ledger() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = Limits {
        events_capacity: 4,
        ..Limits::default()
    };
    let (hub, _events_never_read) = open(dir.path(), limits);
    provision(&hub, "payerfsp", 1_000_000, 1_000_000, 1).await;
    provision(&hub, "payeefsp", 1_000_000, 1_000_000, 2).await;
    for n in 1..=64u64 {
        tokio::time::timeout(
            Duration::from_secs(10),
            hub.prepare(now_ms(), prepare(n, "payerfsp", "payeefsp", 10, [7; 32])),
        )
        .await
        .unwrap_or_else(|_| panic!("prepare {n} still waiting after 10 s: the ledger stopped"))
        .expect("prepare accepted");
    }
    let payer = hub
        .account(AccountKey::new(fsp("payerfsp"), usd()))
        .await
        .expect("the partitions answer")
        .expect("payer");
    assert_eq!(payer.reserved, 640, "every prepare reserved");
    hub.shutdown().await.expect("clean shutdown");
}

/// Results that the consumer has not taken when the hub stops come back after the
/// restart, even though a snapshot after every batch leaves recovery nothing to replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undelivered_results_are_published_again_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = Limits {
        snapshot_every_batches: 1,
        ..Limits::default()
    };
    const TRANSFERS: u64 = 12;
    {
        let (hub, events_not_taken) = open(dir.path(), limits.clone());
        provision(&hub, "payerfsp", 1_000_000, 1_000_000, 1).await;
        provision(&hub, "payeefsp", 1_000_000, 1_000_000, 2).await;
        for n in 1..=TRANSFERS {
            hub.prepare(now_ms(), prepare(n, "payerfsp", "payeefsp", 10, [7; 32]))
                .await
                .expect("prepare");
        }
        // Give every partition time to snapshot behind its last batch.
        tokio::time::sleep(Duration::from_millis(200)).await;
        hub.shutdown().await.expect("clean shutdown");
        drop(events_not_taken);
    }
    let (hub, mut events) = open(dir.path(), limits);
    let mut reserved = std::collections::BTreeSet::new();
    while reserved.len() < TRANSFERS as usize {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {TRANSFERS} undelivered results came back: {reserved:?}",
                    reserved.len()
                )
            })
            .expect("stream open")
            .into_event();
        if let Event::Reserved { parties, .. } = event {
            reserved.insert(parties.transfer_id);
        }
    }
    assert_eq!(
        reserved,
        (1..=TRANSFERS)
            .map(id)
            .collect::<std::collections::BTreeSet<_>>()
    );
    hub.shutdown().await.expect("clean shutdown");
}

/// A burst of large prepares queued at once must not make one WAL record larger than the
/// log takes (`BODY_BYTES_MAX`): the batch is cut by size, every prepare is answered, and
/// the partition keeps running. (A DFSP could once stop a partition for good by sending
/// a few thousand 64 KiB prepares at the same moment: the batch that took them all was
/// refused by the WAL.)
#[tokio::test(flavor = "current_thread")]
async fn a_burst_of_large_prepares_is_split_into_batches_the_wal_takes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = Limits::default();
    let payload_bytes = limits.payload_bytes_max;
    let (hub, mut events) = open(dir.path(), limits);
    provision(&hub, "payerfsp", 1_000_000_000, 1_000_000_000, 1).await;
    provision(&hub, "payeefsp", 1_000_000_000, 1_000_000_000, 2).await;
    // Enough prepares on one partition that their payloads alone pass the WAL's bound.
    let count = engine::storage::wal::BODY_BYTES_MAX / payload_bytes + 64;
    let target = 0;
    let mut burst = Vec::with_capacity(count);
    let mut n = 0u64;
    while burst.len() < count {
        n += 1;
        if hub.partition_of(&id(n)) != target {
            continue;
        }
        let mut command = prepare(n, "payerfsp", "payeefsp", 1, [7; 32]);
        command.payload = vec![b'x'; payload_bytes];
        burst.push(Command::Prepare {
            now_ms: now_ms(),
            prepare: command,
        });
    }
    // A current-thread runtime: nothing else runs until this loop is done, so the whole
    // burst is in the mailbox before the actor's next turn.
    for command in burst {
        hub.enqueue(target, command).expect("the mailbox has room");
    }
    // Each prepare is answered: reserved, or refused as "try later" where more of them
    // wait for headroom from the payer's home than a partition parks.
    let (mut answered, mut reserved) = (0, 0);
    while answered < count {
        let delivery = tokio::time::timeout(Duration::from_secs(60), events.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{answered} of {count} answered; partition: {:?}",
                    hub.partitions()[target as usize].stopped
                )
            })
            .expect("event stream open");
        match &*delivery.event {
            Event::Reserved { .. } => {
                answered += 1;
                reserved += 1;
            }
            Event::PrepareRefused {
                code: ErrorCode::ServiceUnavailable,
                ..
            } => answered += 1,
            Event::PrepareRefused { code, .. } => panic!("refused: {code:?}"),
            _ => {}
        }
    }
    assert_eq!(hub.partitions()[target as usize].stopped, None);
    assert!(reserved >= count / 2, "{reserved} of {count} reserved");
    hub.shutdown().await.expect("clean shutdown");
}
