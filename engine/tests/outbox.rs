//! The runtime's results outbox: a consumer that stops reading the event stream (a dead
//! notifier, DFSPs that never answer) never stops the ledger, and results that were not
//! yet delivered when the hub stopped are published again after the restart (callbacks
//! are at least once across a crash, not only for the batches that recovery replays).

use engine::command::{Admin, Event, Prepare};
use engine::ids::{AccountKey, Currency, FspId, TransferId};
use engine::limits::Limits;
use engine::runtime::{now_ms, Delivery, Hub, HubConfig};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc::Receiver;

const PARTITIONS: u32 = 2;

fn fsp(name: &str) -> FspId {
    FspId::new(name).expect("name")
}

fn usd() -> Currency {
    Currency::new("USD").expect("currency")
}

fn id(n: u64) -> TransferId {
    TransferId::parse(&format!("7b1d2e4f-0000-4000-8000-{n:012x}")).expect("id")
}

fn open(dir: &Path, limits: Limits) -> (Hub, Receiver<Delivery>) {
    Hub::open(HubConfig {
        data_dir: dir.to_path_buf(),
        partitions: PARTITIONS,
        limits,
    })
    .expect("open hub")
}

async fn provision(hub: &Hub, name: &str, n: u64) {
    let account = AccountKey::new(fsp(name), usd());
    hub.admin(now_ms(), Admin::CreateAccount { account })
        .await
        .expect("create");
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
            funds_id: id(900_000 + n),
        },
    )
    .await
    .expect("funds");
}

fn prepare(n: u64) -> Prepare {
    Prepare {
        transfer_id: id(n),
        payer: fsp("payerfsp"),
        payee: fsp("payeefsp"),
        currency: usd(),
        amount: 10,
        condition: [7; 32],
        expiration_ms: now_ms() + 600_000,
        body_hash: [n as u8; 16],
        payload: b"prepare".to_vec(),
    }
}

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
    provision(&hub, "payerfsp", 1).await;
    provision(&hub, "payeefsp", 2).await;
    for n in 1..=64u64 {
        tokio::time::timeout(Duration::from_secs(10), hub.prepare(now_ms(), prepare(n)))
            .await
            .unwrap_or_else(|_| panic!("prepare {n} still waiting after 10 s: the ledger stopped"))
            .expect("prepare accepted");
    }
    let payer = hub
        .account(AccountKey::new(fsp("payerfsp"), usd()))
        .await
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
        provision(&hub, "payerfsp", 1).await;
        provision(&hub, "payeefsp", 2).await;
        for n in 1..=TRANSFERS {
            hub.prepare(now_ms(), prepare(n)).await.expect("prepare");
        }
        // Give every partition time to snapshot behind its last batch.
        tokio::time::sleep(Duration::from_millis(200)).await;
        hub.shutdown().await.expect("clean shutdown");
        drop(events_not_taken);
    }
    let (hub, mut events) = open(dir.path(), limits);
    let mut reserved = BTreeSet::new();
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
    assert_eq!(reserved, (1..=TRANSFERS).map(id).collect::<BTreeSet<_>>());
    hub.shutdown().await.expect("clean shutdown");
}
