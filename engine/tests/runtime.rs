//! The in-process runtime end to end: results only after durability, recovery after a
//! restart, a corrupt record stopping only its partition, overload answered at once.

use engine::command::{Admin, Command, ErrorCode, Event, Fulfil, Prepare, TransferState};
use engine::ids::{AccountKey, Currency, FspId, TransferId};
use engine::limits::Limits;
use engine::runtime::{now_ms, Delivery, Hub, HubConfig, SubmitError};
use engine::storage::{Storage, Store};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::Receiver;

const PARTITIONS: u32 = 4;

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
            .expect("payer");
        assert_eq!((payer.position, payer.reserved), (15_000, 5_000));
        let view = hub.get_transfer(id(3), fsp("payerfsp")).await.expect("get");
        assert_eq!(view.state, TransferState::Committed);
        assert_eq!(
            hub.get_transfer(id(3), fsp("otherfsp")).await,
            Err(ErrorCode::GenericClient)
        );
        assert_eq!(
            hub.get_transfer(id(999), fsp("payerfsp")).await,
            Err(ErrorCode::TransferNotFound)
        );
        hub.shutdown().await;
    }
    // Reopen: snapshot + WAL replay give back every acknowledged result.
    let (hub, mut events) = open(dir.path(), limits());
    let payer = hub
        .account(AccountKey::new(fsp("payerfsp"), usd()))
        .await
        .expect("payer");
    let payee = hub
        .account(AccountKey::new(fsp("payeefsp"), usd()))
        .await
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
        .expect("payer");
    assert_eq!(payer.reserved, 5_000, "duplicates reserved nothing");
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_record_stops_only_its_partition_and_names_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (hub, _events) = open(dir.path(), Limits::default());
        provision(&hub, "payerfsp", 100_000, 100_000, 1).await;
        hub.shutdown().await;
    }
    let victim = 1u32;
    {
        let store = Store::open(dir.path(), PARTITIONS, 8 << 20).expect("store");
        let next = store
            .batches_after(victim, 0)
            .expect("read")
            .last()
            .map(|r| r.batch_seq)
            .unwrap_or(0)
            + 1;
        store
            .append_encoded(victim, next, &[0xde, 0xad, 0xbe, 0xef])
            .expect("write garbage");
        store.sync().expect("sync");
    }
    let (hub, _events) = open(dir.path(), Limits::default());
    let statuses = hub.partitions();
    let reason = statuses[victim as usize]
        .stopped
        .clone()
        .expect("victim stopped");
    assert!(
        reason.contains(&format!("partition {victim}")) && reason.contains("wal/"),
        "{reason}"
    );
    assert!(statuses
        .iter()
        .filter(|s| s.partition != victim)
        .all(|s| s.stopped.is_none()));
    // Commands for the stopped partition are refused with the reason; others still work.
    let error = hub
        .submit(victim, Command::Tick { now_ms: now_ms() })
        .await
        .expect_err("stopped");
    assert!(
        matches!(error, SubmitError::PartitionStopped { partition, .. } if partition == victim)
    );
    let alive = (0..PARTITIONS)
        .find(|p| *p != victim)
        .expect("another partition");
    hub.submit(alive, Command::Tick { now_ms: now_ms() })
        .await
        .expect("healthy partition works");
    hub.shutdown().await;
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
            Err(SubmitError::Overloaded { partition: 0 }) => overloaded += 1,
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert!(overloaded > 0, "a bounded mailbox must refuse when full");
    hub.shutdown().await;
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
        hub.shutdown().await;
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
        hub.shutdown().await;
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
        .expect("payer");
    assert_eq!((payer.position, payer.reserved), (1_000, 1_000));
    hub.shutdown().await;
}
