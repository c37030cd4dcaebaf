//! Settlement through the in-process runtime: a day of transfers across partitions, a
//! window close, a settlement walked through every state, an abort, and a crash at every
//! point between two steps of either, each checked against positions and covers computed
//! here independently of the engine.

use engine::command::{Admin, ErrorCode, Event, Fulfil, Prepare};
use engine::ids::{AccountKey, Currency, FspId, TransferId};
use engine::limits::Limits;
use engine::runtime::{now_ms, Delivery, Hub, HubConfig};
use engine::settlement::{AccountUpdate, SettlementState, WindowState};
use engine::EngineError;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc::Receiver;

const PARTITIONS: u32 = 4;
const NDC: i64 = 100_000;
const FUNDS: i64 = 50_000;
const DFSPS: [&str; 4] = ["bank-a", "bank-b", "wallet-c", "wallet-d"];

fn account(name: &str) -> AccountKey {
    AccountKey::new(
        FspId::new(name).expect("name"),
        Currency::new("USD").expect("currency"),
    )
}

fn id(n: u64) -> TransferId {
    TransferId::parse(&format!("5e771e00-0000-4000-8000-{n:012x}")).expect("id")
}

fn open(dir: &Path) -> (Hub, Receiver<Delivery>) {
    Hub::open(HubConfig {
        data_dir: dir.to_path_buf(),
        partitions: PARTITIONS,
        limits: Limits {
            snapshot_every_batches: 5,
            ..Limits::default()
        },
    })
    .expect("open hub")
}

/// What the test expects, computed from what it sent: positions and covers per DFSP.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Reference {
    position: BTreeMap<&'static str, i128>,
    cover: BTreeMap<&'static str, i128>,
    /// Nets of the window being filled.
    window: BTreeMap<&'static str, i64>,
}

struct Day {
    hub: Hub,
    events: Receiver<Delivery>,
    reference: Reference,
    next_transfer: u64,
}

impl Day {
    async fn start(dir: &Path) -> Day {
        let (hub, events) = open(dir);
        let mut reference = Reference::default();
        for (n, name) in DFSPS.iter().enumerate() {
            let account = account(name);
            hub.admin(now_ms(), Admin::CreateAccount { account })
                .await
                .expect("create");
            hub.admin(
                now_ms(),
                Admin::InitialPositionAndLimits {
                    account,
                    position: 0,
                    ndc: NDC,
                },
            )
            .await
            .expect("limits");
            hub.admin(
                now_ms(),
                Admin::FundsIn {
                    account,
                    amount: FUNDS,
                    funds_id: id(900_000 + n as u64),
                },
            )
            .await
            .expect("funds in");
            reference.position.insert(name, 0);
            reference.cover.insert(name, i128::from(FUNDS));
        }
        Day {
            hub,
            events,
            reference,
            next_transfer: 1,
        }
    }

    async fn next_about(&mut self, transfer: TransferId) -> Event {
        loop {
            let event = tokio::time::timeout(Duration::from_secs(10), self.events.recv())
                .await
                .expect("an event within 10 s")
                .expect("event stream open")
                .into_event();
            if event.transfer_id() == Some(transfer) {
                return event;
            }
        }
    }

    /// One committed transfer, prepare then fulfil.
    async fn transfer(&mut self, payer: &'static str, payee: &'static str, amount: i64) {
        let n = self.next_transfer;
        self.next_transfer += 1;
        let fulfilment: [u8; 32] = Sha256::digest(n.to_be_bytes()).into();
        let prepare = Prepare {
            transfer_id: id(n),
            payer: account(payer).fsp,
            payee: account(payee).fsp,
            currency: account(payer).currency,
            amount,
            condition: Sha256::digest(fulfilment).into(),
            expiration_ms: now_ms() + 60_000,
            body_hash: [n as u8; 16],
            payload: Vec::new(),
        };
        self.hub.prepare(now_ms(), prepare).await.expect("prepare");
        let reserved = self.next_about(id(n)).await;
        assert!(matches!(reserved, Event::Reserved { .. }), "{reserved:?}");
        let fulfil = Fulfil {
            transfer_id: id(n),
            source: account(payee).fsp,
            fulfilment,
            completed_ms: now_ms(),
            notify_payee: false,
            body_hash: [0xf0 ^ n as u8; 16],
            payload: Vec::new(),
        };
        self.hub.fulfil(now_ms(), fulfil).await.expect("fulfil");
        let committed = self.next_about(id(n)).await;
        assert!(
            matches!(committed, Event::Committed { .. }),
            "{committed:?}"
        );
        *self.reference.position.get_mut(payer).expect("dfsp") += i128::from(amount);
        *self.reference.position.get_mut(payee).expect("dfsp") -= i128::from(amount);
        *self.reference.window.entry(payer).or_default() += amount;
        *self.reference.window.entry(payee).or_default() -= amount;
    }

    /// A day of traffic: every DFSP pays every other, in amounts that leave a mix of net
    /// senders and receivers, on transfers spread over the partitions.
    async fn traffic(&mut self) {
        for round in 0..3i64 {
            for (i, payer) in DFSPS.iter().enumerate() {
                for (j, payee) in DFSPS.iter().enumerate() {
                    if i != j {
                        let amount = 100 * (i as i64 + 1) + 7 * (j as i64) + round;
                        self.transfer(payer, payee, amount).await;
                    }
                }
            }
        }
    }

    /// Positions and covers as the hub reports them.
    async fn figures(&self) -> (BTreeMap<&'static str, i128>, BTreeMap<&'static str, i128>) {
        let mut position = BTreeMap::new();
        let mut cover = BTreeMap::new();
        for name in DFSPS {
            let view = self
                .hub
                .account(account(name))
                .await
                .expect("account answers")
                .expect("account exists");
            assert_eq!(view.reserved, 0, "{name} has nothing reserved");
            position.insert(name, view.position);
            cover.insert(name, view.liquidity_cover);
        }
        (position, cover)
    }

    async fn assert_matches_reference(&self) {
        let (position, cover) = self.figures().await;
        assert_eq!(position, self.reference.position, "positions");
        assert_eq!(cover, self.reference.cover, "liquidity covers");
    }

    /// Closes the open window; the reference's window nets move into the returned map.
    async fn close(&mut self, window: u64) -> BTreeMap<&'static str, i64> {
        let closed = self
            .hub
            .close_window(now_ms(), window, "end of day")
            .await
            .expect("close");
        assert_eq!(closed.state, WindowState::Closed);
        let nets = std::mem::take(&mut self.reference.window);
        for (name, net) in &nets {
            assert_eq!(
                closed.nets.nets.get(&account(name)).copied().unwrap_or(0),
                i128::from(*net),
                "net of {name} in window {window}"
            );
        }
        nets
    }

    fn updates(state: SettlementState) -> Vec<AccountUpdate> {
        DFSPS
            .iter()
            .map(|name| AccountUpdate {
                account: account(name),
                state,
                reason: format!("to {}", state.as_str()),
                external_reference: None,
            })
            .collect()
    }

    /// What moving every account into `state` does to the reference (central-settlement's
    /// rules as `machine::settlement` documents them).
    fn expect_state(
        reference: &mut Reference,
        nets: &BTreeMap<&'static str, i64>,
        state: SettlementState,
    ) {
        for (name, net) in nets {
            let net = i128::from(*net);
            match state {
                SettlementState::PsTransfersReserved if net < 0 => {
                    *reference.position.get_mut(name).expect("dfsp") -= net
                }
                SettlementState::PsTransfersCommitted => {
                    *reference.cover.get_mut(name).expect("dfsp") -= net;
                    if net > 0 {
                        *reference.position.get_mut(name).expect("dfsp") -= net;
                    }
                }
                _ => {}
            }
        }
    }
}

const STEPS: [SettlementState; 4] = [
    SettlementState::PsTransfersRecorded,
    SettlementState::PsTransfersReserved,
    SettlementState::PsTransfersCommitted,
    SettlementState::Settled,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_closes_and_settles_through_every_state() {
    let dir = tempfile::tempdir().expect("dir");
    let mut day = Day::start(dir.path()).await;
    day.traffic().await;
    day.assert_matches_reference().await;
    let nets = day.close(1).await;
    assert!(nets.values().any(|n| *n > 0) && nets.values().any(|n| *n < 0));
    assert_eq!(nets.values().sum::<i64>(), 0, "a window's nets sum to zero");
    let next = day
        .hub
        .settlement_window(now_ms(), 2)
        .await
        .expect("window 2");
    assert_eq!(
        next.state,
        WindowState::Open,
        "closing opens the next window"
    );

    // Traffic goes on in window 2 while window 1 settles.
    day.transfer("bank-a", "wallet-c", 55).await;
    let settlement = day
        .hub
        .create_settlement(now_ms(), "DEFERREDNET", "daily", &[1])
        .await
        .expect("settlement");
    assert_eq!(settlement.state, SettlementState::PendingSettlement);
    for (name, net) in &nets {
        assert_eq!(settlement.accounts[&account(name)].net, *net);
    }
    let window = day
        .hub
        .settlement_window(now_ms(), 1)
        .await
        .expect("window 1");
    assert_eq!(window.state, WindowState::PendingSettlement);

    for state in STEPS {
        let record = day
            .hub
            .update_settlement(now_ms(), settlement.id, &Day::updates(state), "step")
            .await
            .expect("settlement step");
        assert_eq!(record.state, state);
        Day::expect_state(&mut day.reference, &nets, state);
        day.assert_matches_reference().await;
    }
    let window = day
        .hub
        .settlement_window(now_ms(), 1)
        .await
        .expect("window 1");
    assert_eq!(window.state, WindowState::Settled);
    // Only window 2's transfer is left in the positions.
    let (position, _) = day.figures().await;
    assert_eq!(position["bank-a"], 55);
    assert_eq!(position["wallet-c"], -55);
    let hub_accounts = day.hub.hub_accounts().await.expect("hub accounts");
    let usd = &hub_accounts[&account("bank-a").currency];
    assert_eq!((usd.multilateral, usd.settlement), (0, 0));
    assert_eq!(usd.reconciliation, -i128::from(FUNDS) * DFSPS.len() as i128);

    // Bad input changes nothing, with a clear error.
    fn refused<T>(result: Result<T, EngineError>) -> Option<ErrorCode> {
        match result {
            Err(EngineError::Refused { code, .. }) => Some(code),
            Err(EngineError::NotFound(_)) => None,
            Ok(_) => panic!("accepted"),
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        refused(day.hub.close_window(now_ms(), 1, "again").await),
        Some(ErrorCode::Validation),
        "a closed window cannot close"
    );
    assert_eq!(
        refused(
            day.hub
                .create_settlement(now_ms(), "DEFERREDNET", "x", &[2])
                .await
        ),
        Some(ErrorCode::Validation),
        "an open window cannot be settled"
    );
    assert!(matches!(
        day.hub
            .create_settlement(now_ms(), "DEFERREDNET", "x", &[99])
            .await,
        Err(EngineError::NotFound(_))
    ));
    assert_eq!(
        refused(
            day.hub
                .update_settlement(
                    now_ms(),
                    settlement.id,
                    &Day::updates(SettlementState::PsTransfersRecorded),
                    "back"
                )
                .await
        ),
        Some(ErrorCode::Validation),
        "a settled settlement cannot change"
    );
    day.assert_matches_reference().await;
    day.hub.shutdown().await.expect("clean shutdown");

    // Everything is durable: a restart shows the same book and figures.
    let (hub, events) = open(dir.path());
    let day = Day {
        hub,
        events,
        reference: day.reference,
        next_transfer: day.next_transfer,
    };
    let record = day
        .hub
        .settlement(now_ms(), settlement.id)
        .await
        .expect("kept");
    assert_eq!(record.state, SettlementState::Settled);
    day.assert_matches_reference().await;
    day.hub.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_settlement_restores_every_position_and_cover() {
    let dir = tempfile::tempdir().expect("dir");
    let mut day = Day::start(dir.path()).await;
    day.traffic().await;
    let nets = day.close(1).await;
    let before = day.reference.clone();
    let settlement = day
        .hub
        .create_settlement(now_ms(), "DEFERREDNET", "daily", &[1])
        .await
        .expect("settlement");
    for state in &STEPS[..2] {
        day.hub
            .update_settlement(now_ms(), settlement.id, &Day::updates(*state), "step")
            .await
            .expect("step");
        Day::expect_state(&mut day.reference, &nets, *state);
    }
    day.assert_matches_reference().await;
    assert_ne!(
        day.reference, before,
        "the reserve moved the receivers' positions"
    );
    let aborted = day
        .hub
        .abort_settlement(now_ms(), settlement.id, "bank holiday")
        .await
        .expect("abort");
    assert_eq!(aborted.state, SettlementState::Aborted);
    day.reference = before;
    day.assert_matches_reference().await;
    let window = day
        .hub
        .settlement_window(now_ms(), 1)
        .await
        .expect("window");
    assert_eq!(window.state, WindowState::Aborted);
    // An aborted window can be settled again, to the end this time.
    let again = day
        .hub
        .create_settlement(now_ms(), "DEFERREDNET", "retry", &[1])
        .await
        .expect("settle again");
    for state in STEPS {
        day.hub
            .update_settlement(now_ms(), again.id, &Day::updates(state), "step")
            .await
            .expect("step");
        Day::expect_state(&mut day.reference, &nets, state);
    }
    day.assert_matches_reference().await;
    // Once committed, a settlement cannot be aborted.
    assert!(matches!(
        day.hub.abort_settlement(now_ms(), again.id, "late").await,
        Err(EngineError::Refused {
            code: ErrorCode::Validation,
            ..
        })
    ));
    day.hub.shutdown().await.expect("clean shutdown");
}

/// The operations of a settlement, in order; each crash test stops in one of them.
#[derive(Debug, Clone, Copy)]
enum Operation {
    Close,
    Step(SettlementState),
    Abort,
}

async fn run(day: &mut Day, operation: Operation, settlement: u64) -> Result<(), EngineError> {
    match operation {
        Operation::Close => day
            .hub
            .close_window(now_ms(), 1, "end of day")
            .await
            .map(|_| ()),
        Operation::Step(state) => day
            .hub
            .update_settlement(now_ms(), settlement, &Day::updates(state), "step")
            .await
            .map(|_| ()),
        Operation::Abort => day
            .hub
            .abort_settlement(now_ms(), settlement, "abort")
            .await
            .map(|_| ()),
    }
}

/// Runs the settlement up to `operation`, stops it after `stop` of its steps (as a crash
/// would), restarts the hub, and checks that the operation is then complete, exactly once.
async fn crash_in(operation: Operation, before: &[Operation], stop: usize) {
    let dir = tempfile::tempdir().expect("dir");
    let mut day = Day::start(dir.path()).await;
    day.traffic().await;
    let nets = day.reference.window.clone();
    for earlier in before {
        run(&mut day, *earlier, 1).await.expect("earlier operation");
        if let Operation::Close = earlier {
            day.reference.window.clear();
            day.hub
                .create_settlement(now_ms(), "DEFERREDNET", "daily", &[1])
                .await
                .expect("settlement");
        }
        if let Operation::Step(state) = earlier {
            Day::expect_state(&mut day.reference, &nets, *state);
        }
    }
    let reference_before = day.reference.clone();
    day.hub.stop_settlement_after(stop);
    let interrupted = run(&mut day, operation, 1).await;
    assert!(
        interrupted.is_err(),
        "{operation:?} stopped after {stop} steps must not report success"
    );
    // The crash: the process goes away without finishing.
    let _ = day.hub.shutdown().await;
    let next_transfer = day.next_transfer;
    drop(day);
    let (hub, events) = open(dir.path());
    let mut day = Day {
        hub,
        events,
        reference: reference_before,
        next_transfer,
    };
    // The next request finishes the interrupted one; the operator's retry changes nothing.
    match operation {
        Operation::Close => {
            let window = day
                .hub
                .settlement_window(now_ms(), 1)
                .await
                .expect("window");
            assert_eq!(window.state, WindowState::Closed, "stopped after {stop}");
            for (name, net) in &nets {
                assert_eq!(window.nets.nets[&account(name)], i128::from(*net));
            }
            let next = day.hub.settlement_window(now_ms(), 2).await.expect("next");
            assert_eq!(next.state, WindowState::Open);
        }
        Operation::Step(state) => {
            let record = day.hub.settlement(now_ms(), 1).await.expect("settlement");
            assert_eq!(record.state, state, "stopped after {stop}");
            run(&mut day, operation, 1)
                .await
                .expect("a retry is accepted");
            Day::expect_state(&mut day.reference, &nets, state);
        }
        Operation::Abort => {
            let record = day.hub.settlement(now_ms(), 1).await.expect("settlement");
            assert_eq!(
                record.state,
                SettlementState::Aborted,
                "stopped after {stop}"
            );
            run(&mut day, operation, 1)
                .await
                .expect("a retry is accepted");
            day.reference.position = day
                .reference
                .position
                .keys()
                .map(|name| (*name, i128::from(nets.get(name).copied().unwrap_or(0))))
                .collect();
        }
    }
    day.assert_matches_reference().await;
    day.hub.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_any_two_settlement_steps_loses_and_duplicates_nothing() {
    use Operation::*;
    use SettlementState::*;
    let accounts = DFSPS.len();
    // A close has two points (before and after the partitions have it); a settlement step
    // one before each account's step and one before recording the new states.
    for stop in 0..2 {
        crash_in(Close, &[], stop).await;
    }
    let mut before = vec![Close];
    for state in [
        PsTransfersRecorded,
        PsTransfersReserved,
        PsTransfersCommitted,
        Settled,
    ] {
        for stop in 0..=accounts {
            crash_in(Step(state), &before, stop).await;
        }
        if state == PsTransfersReserved {
            for stop in 0..=accounts {
                crash_in(Abort, &before, stop).await;
            }
        }
        before.push(Step(state));
    }
}
