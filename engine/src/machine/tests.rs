//! Unit tests of the partition state machine, through its public surface: commands in,
//! events and peer messages out. A small in-memory `Hub` plays the runtime: it applies one
//! batch at a time, keeps the archive of finished transfers (handed back as
//! `Input::prior`, as the runtime does) and delivers peer messages in order.

use super::account::{Bank, BankMode};
use super::*;
use crate::command::{Admin, ErrorCode, Fulfil, Prepare, Reject, TransferState};
use crate::ids::Currency;
use sha2::{Digest, Sha256};
use std::collections::VecDeque;

const T0: TimestampMs = 1_700_000_000_000;

fn fsp(name: &str) -> FspId {
    FspId::new(name).expect("valid participant name")
}

fn usd(name: &str) -> AccountKey {
    AccountKey::new(fsp(name), Currency::new("USD").expect("currency"))
}

fn tid(n: u64) -> TransferId {
    TransferId::parse(&format!("00000000-0000-4000-8000-{n:012x}")).expect("valid id")
}

/// The preimage the payee of transfer `n` knows.
fn fulfilment(n: u64) -> [u8; 32] {
    Sha256::digest(n.to_be_bytes()).into()
}

/// The first transfer number `>= from` that routes to `partition`.
fn id_on(partition: u32, partitions: u32, from: u64) -> u64 {
    let count = sharding::PartitionCount::new(partitions).expect("count");
    (from..)
        .find(|n| sharding::transfer_partition(tid(*n).as_str(), count) == partition)
        .expect("some id routes there")
}

/// A participant name whose USD account has its home at `partition`.
fn name_homed_at(partition: u32, partitions: u32, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|name| home_of(&usd(name), partitions) == partition)
        .expect("some name homes there")
}

/// Partitions wired together in memory.
struct Hub {
    parts: Vec<PartitionState>,
    archive: HashMap<TransferId, FinishedTransfer>,
    /// Peer messages not yet delivered, in the order they were sent.
    in_flight: VecDeque<(u32, Outgoing)>,
    now_ms: TimestampMs,
    next_request: u64,
}

impl Hub {
    fn new(partitions: u32) -> Hub {
        Hub {
            parts: (0..partitions)
                .map(|p| PartitionState::new(p, partitions, Limits::default()))
                .collect(),
            archive: HashMap::new(),
            in_flight: VecDeque::new(),
            now_ms: T0,
            next_request: 1,
        }
    }

    fn partitions(&self) -> u32 {
        self.parts.len() as u32
    }

    /// Applies `commands` as one batch on partition `p`; its peer messages join the
    /// in-flight queue (they are also left in the returned output, for inspection).
    fn apply(&mut self, p: u32, commands: Vec<Command>) -> Output {
        let inputs = commands
            .into_iter()
            .map(|command| {
                let prior = command
                    .transfer_id()
                    .filter(|id| !self.parts[p as usize].is_open(id))
                    .and_then(|id| self.archive.get(&id).cloned());
                Input { command, prior }
            })
            .collect();
        let out = self.parts[p as usize].apply_batch(inputs);
        for record in &out.finished {
            self.archive
                .insert(record.parties.transfer_id, record.clone());
        }
        for message in &out.messages {
            self.in_flight.push_back((p, message.clone()));
        }
        self.parts[p as usize].audit();
        out
    }

    /// Delivers one in-flight message (one batch at its destination).
    fn deliver_one(&mut self) -> Option<Output> {
        let (from, Outgoing { to, seq, message }) = self.in_flight.pop_front()?;
        Some(self.apply(to, vec![Command::Peer { from, seq, message }]))
    }

    /// Delivers until nothing is in flight; returns every event produced meanwhile.
    fn deliver_all(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        while let Some(out) = self.deliver_one() {
            events.extend(out.events);
        }
        events
    }

    /// Applies one batch, then delivers everything: all events of the exchange.
    fn run(&mut self, p: u32, commands: Vec<Command>) -> Vec<Event> {
        let mut events = self.apply(p, commands).events;
        events.extend(self.deliver_all());
        events
    }

    fn admin_command(&mut self, admin: Admin) -> Command {
        let request_id = self.next_request;
        self.next_request += 1;
        Command::Admin {
            now_ms: self.now_ms,
            request_id,
            admin,
        }
    }

    /// An admin request at the account's home, run to completion: its result code.
    fn admin(&mut self, account: AccountKey, admin: Admin) -> Option<ErrorCode> {
        let command = self.admin_command(admin);
        let Command::Admin { request_id, .. } = command else {
            unreachable!()
        };
        let home = home_of(&account, self.partitions());
        let events = self.run(home, vec![command]);
        let results: Vec<Option<ErrorCode>> = events
            .iter()
            .filter_map(|e| match e {
                Event::AdminDone {
                    request_id: done,
                    code,
                    ..
                } if *done == request_id => Some(*code),
                _ => None,
            })
            .collect();
        assert_eq!(results.len(), 1, "one result per admin request: {events:?}");
        results[0]
    }

    /// Creates an account everywhere and sets its initial position, NDC and funds.
    fn open_account(&mut self, account: AccountKey, position: i64, ndc: i64, funds: i64) {
        for p in 0..self.partitions() {
            let command = self.admin_command(Admin::CreateAccount { account });
            self.run(p, vec![command]);
        }
        let limits = Admin::InitialPositionAndLimits {
            account,
            position,
            ndc,
        };
        assert_eq!(self.admin(account, limits), None);
        if funds > 0 {
            let funds_id = tid(900_000_000 + self.next_request);
            let funds_in = Admin::FundsIn {
                account,
                amount: funds,
                funds_id,
            };
            assert_eq!(self.admin(account, funds_in), None);
        }
    }

    fn prepare(&self, n: u64, payer: &str, payee: &str, amount: i64) -> Command {
        Command::Prepare {
            now_ms: self.now_ms,
            prepare: Prepare {
                transfer_id: tid(n),
                payer: fsp(payer),
                payee: fsp(payee),
                currency: Currency::new("USD").expect("currency"),
                amount,
                condition: Sha256::digest(fulfilment(n)).into(),
                expiration_ms: self.now_ms + 60_000,
                body_hash: [n as u8; 16],
                payload: format!("prepare {n}").into_bytes(),
            },
        }
    }

    fn fulfil(&self, n: u64, payee: &str) -> Command {
        Command::Fulfil {
            now_ms: self.now_ms,
            fulfil: Fulfil {
                transfer_id: tid(n),
                source: fsp(payee),
                fulfilment: fulfilment(n),
                completed_ms: self.now_ms,
                notify_payee: true,
                body_hash: [0xf0; 16],
                payload: format!("fulfil {n}").into_bytes(),
            },
        }
    }

    fn reject(&self, n: u64, payee: &str, error_code: u16) -> Command {
        Command::Reject {
            now_ms: self.now_ms,
            reject: Reject {
                transfer_id: tid(n),
                source: fsp(payee),
                error_code,
                body_hash: [0xe0; 16],
                payload: Vec::new(),
            },
        }
    }

    fn bank(&self, account: &AccountKey) -> &Bank {
        let home = home_of(account, self.partitions()) as usize;
        self.parts[home].accounts[account]
            .bank
            .as_ref()
            .expect("the home has the bank")
    }

    fn slice(&self, p: u32, account: &AccountKey) -> &account::Slice {
        &self.parts[p as usize].accounts[account].slice
    }

    /// (position, reserved, limit) of an account, summed over all partitions, after
    /// checking DESIGN §5's bookkeeping with nothing in flight:
    /// `bank + Σ slice headroom == limit − position − reserved`.
    fn account(&self, account: &AccountKey) -> (Money, Money, Money) {
        assert!(self.in_flight.is_empty(), "deliver everything first");
        let bank = self.bank(account);
        let mut position = bank.base_position;
        let mut reserved = 0;
        let mut headroom = 0;
        for part in &self.parts {
            if let Some(entry) = part.accounts.get(account) {
                position += entry.slice.position;
                reserved += entry.slice.reserved;
                headroom += entry.slice.headroom;
            }
        }
        assert_eq!(
            bank.bank + headroom,
            bank.limit() - position - reserved,
            "headroom bookkeeping of {account:?}"
        );
        (position, reserved, bank.limit())
    }
}

impl Hub {
    /// Delivers `message` to `to` as if `from` had just sent it (its sequence number is
    /// taken from `from`'s counter, so later real messages are not mistaken for it).
    fn inject(&mut self, from: u32, to: u32, message: PeerMessage) -> Output {
        assert!(self.in_flight.is_empty(), "deliver everything first");
        let slot = &mut self.parts[from as usize].outbound_seq[to as usize];
        *slot += 1;
        let seq = *slot;
        self.apply(to, vec![Command::Peer { from, seq, message }])
    }

    /// Creates an account on partition `p` only (creation reaches partitions one by one).
    fn create_on(&mut self, p: u32, account: AccountKey) {
        let command = self.admin_command(Admin::CreateAccount { account });
        self.run(p, vec![command]);
    }
}

impl Hub {
    /// Several admin requests for `account` in one batch at its home, run to completion:
    /// the AdminDone results in the order they were released, as (request id, code).
    fn admin_batch(
        &mut self,
        account: AccountKey,
        admins: Vec<Admin>,
    ) -> Vec<(u64, Option<ErrorCode>)> {
        let commands: Vec<Command> = admins.into_iter().map(|a| self.admin_command(a)).collect();
        let home = home_of(&account, self.partitions());
        self.run(home, commands)
            .into_iter()
            .filter_map(|event| match event {
                Event::AdminDone {
                    request_id, code, ..
                } => Some((request_id, code)),
                _ => None,
            })
            .collect()
    }

    /// A multi-partition hub whose `account` (funds 1,000, NDC `ndc`) has lent headroom to
    /// partition 2, so that any decrease must wait for a recall round.
    fn with_lent_headroom(account_prefix: &str, ndc: i64) -> (Hub, AccountKey) {
        let partitions = 4;
        let mut hub = Hub::new(partitions);
        let account = usd(&name_homed_at(0, partitions, account_prefix));
        hub.open_account(account, 0, ndc, 1_000);
        hub.open_account(usd("dfsp2"), 0, 10_000, 10_000);
        let n = id_on(2, partitions, 1);
        let events = hub.run(2, vec![hub.prepare(n, account.fsp.as_str(), "dfsp2", 10)]);
        assert!(
            matches!(only(&events), Event::Reserved { .. }),
            "{events:?}"
        );
        assert!(
            hub.slice(2, &account).headroom > 0,
            "partition 2 holds spare headroom"
        );
        (hub, account)
    }
}

/// The single event of a list, or a panic naming them all.
fn only(events: &[Event]) -> &Event {
    assert_eq!(events.len(), 1, "expected one event, got {events:?}");
    &events[0]
}

fn refusal_code(events: &[Event]) -> ErrorCode {
    match only(events) {
        Event::PrepareRefused { code, .. } => *code,
        other => panic!("expected a prepare refusal, got {other:?}"),
    }
}

/// One partition, two DFSPs with room to trade.
fn two_dfsps() -> Hub {
    let mut hub = Hub::new(1);
    hub.open_account(usd("dfsp1"), 0, 1_000, 1_000);
    hub.open_account(usd("dfsp2"), 0, 1_000, 1_000);
    hub
}

// ----- transfers --------------------------------------------------------------------------

#[test]
fn golden_path_prepare_then_fulfil_commits() {
    let mut hub = two_dfsps();
    let events = hub.run(0, vec![hub.prepare(1, "dfsp1", "dfsp2", 100)]);
    match only(&events) {
        Event::Reserved {
            parties,
            expiration_ms,
            payload,
        } => {
            assert_eq!(parties.transfer_id, tid(1));
            assert_eq!((parties.payer, parties.payee), (fsp("dfsp1"), fsp("dfsp2")));
            assert_eq!(parties.amount, 100);
            assert_eq!(*expiration_ms, T0 + 60_000);
            assert_eq!(
                payload, b"prepare 1",
                "the prepare is forwarded as received"
            );
        }
        other => panic!("expected RESERVED, got {other:?}"),
    }
    assert_eq!(hub.account(&usd("dfsp1")), (0, 100, 1_000));
    assert!(hub.parts[0].is_open(&tid(1)));

    let out = hub.apply(0, vec![hub.fulfil(1, "dfsp2")]);
    match only(&out.events) {
        Event::Committed {
            parties,
            fulfilment: sent,
            notify_payee,
            payload,
            ..
        } => {
            assert_eq!(parties.transfer_id, tid(1));
            assert_eq!(*sent, fulfilment(1));
            assert!(notify_payee);
            assert_eq!(payload, b"fulfil 1");
        }
        other => panic!("expected COMMITTED, got {other:?}"),
    }
    assert_eq!(out.finished.len(), 1);
    assert_eq!(out.finished[0].state, TransferState::Committed);
    assert_eq!(out.finished[0].final_hash, Some([0xf0; 16]));
    assert!(
        !hub.parts[0].is_open(&tid(1)),
        "finished transfers leave memory"
    );
    // The payer's reservation became a debit; the payee's position dropped by as much.
    assert_eq!(hub.account(&usd("dfsp1")), (100, 0, 1_000));
    assert_eq!(hub.account(&usd("dfsp2")), (-100, 0, 1_000));
}

#[test]
fn golden_path_across_partitions_borrows_from_the_home() {
    let partitions = 4;
    let mut hub = Hub::new(partitions);
    let payer = name_homed_at(0, partitions, "payer");
    hub.open_account(usd(&payer), 0, 1_000, 1_000);
    hub.open_account(usd("dfsp2"), 0, 1_000, 1_000);
    let n = id_on(2, partitions, 1);
    // The slice on partition 2 has no headroom: the prepare parks and borrows.
    let out = hub.apply(2, vec![hub.prepare(n, &payer, "dfsp2", 100)]);
    assert!(
        out.events.is_empty(),
        "parked while borrowing: {:?}",
        out.events
    );
    assert!(matches!(
        out.messages.as_slice(),
        [Outgoing {
            to: 0,
            message: PeerMessage::Borrow { amount: 100, .. },
            ..
        }]
    ));
    let events = hub.deliver_all();
    assert!(matches!(only(&events), Event::Reserved { .. }));
    let events = hub.run(2, vec![hub.fulfil(n, "dfsp2")]);
    assert!(matches!(only(&events), Event::Committed { .. }));
    assert_eq!(hub.account(&usd(&payer)), (100, 0, 1_000));
    // The payee was credited on the transfer's partition.
    assert_eq!(hub.slice(2, &usd("dfsp2")).position, -100);
    assert_eq!(hub.account(&usd("dfsp2")), (-100, 0, 1_000));
}

#[test]
fn duplicate_prepare_same_body_resends_state_different_body_is_3106() {
    let mut hub = two_dfsps();
    let prepare = hub.prepare(1, "dfsp1", "dfsp2", 100);
    let mut modified = prepare.clone();
    if let Command::Prepare { prepare, .. } = &mut modified {
        prepare.body_hash = [0xaa; 16];
        prepare.amount = 200;
    }
    hub.run(0, vec![prepare.clone()]);

    // While RESERVED: same body → the state again; different body → 3106. Nothing moves.
    let events = hub.run(0, vec![prepare.clone()]);
    assert!(matches!(
        only(&events),
        Event::StateResent { state: TransferState::Reserved, to, .. } if *to == fsp("dfsp1")
    ));
    let events = hub.run(0, vec![modified.clone()]);
    assert!(matches!(
        only(&events),
        Event::RequestRefused { code: ErrorCode::ModifiedRequest, to, .. } if *to == fsp("dfsp1")
    ));
    assert_eq!(hub.account(&usd("dfsp1")), (0, 100, 1_000));

    // Once COMMITTED (found in the archive): the final state, with the fulfilment.
    let fulfil = hub.fulfil(1, "dfsp2");
    hub.run(0, vec![fulfil.clone()]);
    let events = hub.run(0, vec![prepare.clone()]);
    match only(&events) {
        Event::StateResent {
            state,
            fulfilment: sent,
            ..
        } => {
            assert_eq!(*state, TransferState::Committed);
            assert_eq!(*sent, Some(fulfilment(1)));
        }
        other => panic!("expected the state re-sent, got {other:?}"),
    }
    let events = hub.run(0, vec![modified]);
    assert_eq!(
        only(&events),
        &Event::RequestRefused {
            transfer_id: tid(1),
            to: fsp("dfsp1"),
            code: ErrorCode::ModifiedRequest
        }
    );
    // The payee resends its fulfil: same body → state; another body → 3106.
    let events = hub.run(0, vec![fulfil.clone()]);
    assert!(matches!(
        only(&events),
        Event::StateResent { state: TransferState::Committed, to, .. } if *to == fsp("dfsp2")
    ));
    let mut other_fulfil = fulfil;
    if let Command::Fulfil { fulfil, .. } = &mut other_fulfil {
        fulfil.body_hash = [0xbb; 16];
    }
    let events = hub.run(0, vec![other_fulfil]);
    assert!(matches!(
        only(&events),
        Event::RequestRefused {
            code: ErrorCode::ModifiedRequest,
            ..
        }
    ));
    assert_eq!(
        hub.account(&usd("dfsp1")),
        (100, 0, 1_000),
        "committed once"
    );
}

#[test]
fn duplicate_in_the_batch_that_finished_the_transfer_sees_the_final_state() {
    let mut hub = two_dfsps();
    let prepare = hub.prepare(1, "dfsp1", "dfsp2", 100);
    let out = hub.apply(0, vec![prepare.clone(), hub.fulfil(1, "dfsp2"), prepare]);
    assert!(matches!(out.events[0], Event::Reserved { .. }));
    assert!(matches!(out.events[1], Event::Committed { .. }));
    assert!(matches!(
        out.events[2],
        Event::StateResent {
            state: TransferState::Committed,
            ..
        }
    ));
    assert_eq!(out.events.len(), 3);
    assert_eq!(hub.account(&usd("dfsp1")), (100, 0, 1_000));
}

#[test]
fn duplicate_prepare_while_parked_is_ignored() {
    let partitions = 4;
    let mut hub = Hub::new(partitions);
    let payer = name_homed_at(0, partitions, "payer");
    hub.open_account(usd(&payer), 0, 1_000, 1_000);
    hub.open_account(usd("dfsp2"), 0, 1_000, 1_000);
    let n = id_on(3, partitions, 1);
    let prepare = hub.prepare(n, &payer, "dfsp2", 100);
    assert!(hub.apply(3, vec![prepare.clone()]).events.is_empty());
    // Still waiting for headroom: in progress, the resend is ignored.
    let out = hub.apply(3, vec![prepare]);
    assert!(out.events.is_empty() && out.messages.is_empty());
    let events = hub.deliver_all();
    assert!(matches!(only(&events), Event::Reserved { .. }));
    assert_eq!(hub.account(&usd(&payer)), (0, 100, 1_000), "reserved once");
}

#[test]
fn reject_releases_the_reservation() {
    let mut hub = two_dfsps();
    let events = hub.run(0, vec![hub.prepare(1, "dfsp1", "dfsp2", 1_000)]);
    assert!(matches!(only(&events), Event::Reserved { .. }));
    // All headroom is reserved.
    let events = hub.run(0, vec![hub.prepare(2, "dfsp1", "dfsp2", 1)]);
    assert_eq!(refusal_code(&events), ErrorCode::PayerLiquidity);
    // Only the payee may answer.
    let events = hub.run(0, vec![hub.reject(1, "dfsp1", 5101)]);
    assert!(matches!(
        only(&events),
        Event::RequestRefused {
            code: ErrorCode::Validation,
            ..
        }
    ));
    let events = hub.run(0, vec![hub.reject(1, "dfsp2", 5101)]);
    match only(&events) {
        Event::Aborted {
            code, notify_payee, ..
        } => {
            assert_eq!(*code, ErrorCode::Payee(5101));
            assert_eq!(code.code(), 5101);
            assert!(
                !notify_payee,
                "the payee sent the reject; it need not hear back"
            );
        }
        other => panic!("expected ABORTED, got {other:?}"),
    }
    assert_eq!(hub.account(&usd("dfsp1")), (0, 0, 1_000));
    let events = hub.run(0, vec![hub.prepare(3, "dfsp1", "dfsp2", 1_000)]);
    assert!(
        matches!(only(&events), Event::Reserved { .. }),
        "headroom is back"
    );
}

#[test]
fn tick_expires_reserved_transfers() {
    let mut hub = two_dfsps();
    let mut prepare = hub.prepare(1, "dfsp1", "dfsp2", 100);
    if let Command::Prepare { prepare, .. } = &mut prepare {
        prepare.expiration_ms = T0 + 1_000;
    }
    hub.run(0, vec![prepare]);
    let events = hub.run(0, vec![Command::Tick { now_ms: T0 + 999 }]);
    assert!(events.is_empty(), "not due yet: {events:?}");
    let events = hub.run(0, vec![Command::Tick { now_ms: T0 + 1_000 }]);
    match only(&events) {
        Event::Aborted {
            code, notify_payee, ..
        } => {
            assert_eq!(*code, ErrorCode::TransferExpired);
            assert!(notify_payee, "both parties hear of a timeout");
        }
        other => panic!("expected ABORTED by expiry, got {other:?}"),
    }
    assert_eq!(hub.account(&usd("dfsp1")), (0, 0, 1_000));
    // A fulfil that comes later is told the transfer expired.
    hub.now_ms = T0 + 2_000;
    let events = hub.run(0, vec![hub.fulfil(1, "dfsp2")]);
    assert_eq!(
        only(&events),
        &Event::RequestRefused {
            transfer_id: tid(1),
            to: fsp("dfsp2"),
            code: ErrorCode::TransferExpired
        }
    );
    assert_eq!(
        hub.account(&usd("dfsp1")),
        (0, 0, 1_000),
        "nothing committed"
    );
}

#[test]
fn fulfil_after_the_expiration_aborts_before_the_tick() {
    let mut hub = two_dfsps();
    let mut prepare = hub.prepare(1, "dfsp1", "dfsp2", 100);
    if let Command::Prepare { prepare, .. } = &mut prepare {
        prepare.expiration_ms = T0 + 500;
    }
    hub.run(0, vec![prepare]);
    hub.now_ms = T0 + 500;
    let events = hub.run(0, vec![hub.fulfil(1, "dfsp2")]);
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(matches!(
        events[0],
        Event::RequestRefused {
            code: ErrorCode::TransferExpired,
            ..
        }
    ));
    assert!(matches!(
        events[1],
        Event::Aborted {
            code: ErrorCode::TransferExpired,
            ..
        }
    ));
    assert_eq!(hub.account(&usd("dfsp1")), (0, 0, 1_000));
    assert_eq!(hub.account(&usd("dfsp2")), (0, 0, 1_000));
}

#[test]
fn wrong_fulfilment_aborts_with_3100() {
    let mut hub = two_dfsps();
    hub.run(0, vec![hub.prepare(1, "dfsp1", "dfsp2", 100)]);
    let mut fulfil = hub.fulfil(1, "dfsp2");
    if let Command::Fulfil { fulfil, .. } = &mut fulfil {
        fulfil.fulfilment = fulfilment(2);
    }
    let events = hub.run(0, vec![fulfil]);
    assert!(matches!(
        only(&events),
        Event::Aborted {
            code: ErrorCode::Validation,
            notify_payee: true,
            ..
        }
    ));
    assert_eq!(hub.account(&usd("dfsp1")), (0, 0, 1_000));
}

#[test]
fn parked_prepare_expires_with_3303() {
    let partitions = 4;
    let mut hub = Hub::new(partitions);
    let payer = name_homed_at(0, partitions, "payer");
    hub.open_account(usd(&payer), 0, 1_000, 1_000);
    hub.open_account(usd("dfsp2"), 0, 1_000, 1_000);
    let n = id_on(1, partitions, 1);
    let mut prepare = hub.prepare(n, &payer, "dfsp2", 100);
    if let Command::Prepare { prepare, .. } = &mut prepare {
        prepare.expiration_ms = T0 + 100;
    }
    hub.apply(1, vec![prepare]);
    // The borrow is still on its way when the prepare expires.
    let out = hub.apply(1, vec![Command::Tick { now_ms: T0 + 100 }]);
    assert_eq!(refusal_code(&out.events), ErrorCode::TransferExpired);
    // The grant that arrives later goes back to the bank: nothing is lost.
    let events = hub.deliver_all();
    assert!(events.is_empty(), "{events:?}");
    let tick = Command::Tick {
        now_ms: T0 + 100 + hub.parts[1].limits().idle_return_ms,
    };
    hub.run(1, vec![tick]);
    assert_eq!(hub.account(&usd(&payer)), (0, 0, 1_000));
    assert_eq!(
        hub.slice(1, &usd(&payer)).headroom,
        0,
        "idle headroom returned"
    );
}

#[test]
fn refusal_codes_check_liquidity_before_the_net_debit_cap() {
    let mut hub = Hub::new(1);
    hub.open_account(usd("payee"), 0, 0, 0);
    // Liquidity cover binds (limit = min(1000, 500) = 500).
    hub.open_account(usd("covered"), 0, 1_000, 500);
    let events = hub.run(0, vec![hub.prepare(1, "covered", "payee", 600)]);
    assert_eq!(refusal_code(&events), ErrorCode::PayerLiquidity);
    // The NDC binds (limit = min(300, 500) = 300).
    hub.open_account(usd("capped"), 0, 300, 500);
    let events = hub.run(0, vec![hub.prepare(2, "capped", "payee", 400)]);
    assert_eq!(refusal_code(&events), ErrorCode::PayerLimit);
    assert_eq!(ErrorCode::PayerLimit.code(), 4200);
    // Both exceeded: liquidity is checked first.
    let events = hub.run(0, vec![hub.prepare(3, "capped", "payee", 600)]);
    assert_eq!(refusal_code(&events), ErrorCode::PayerLiquidity);
    assert_eq!(ErrorCode::PayerLiquidity.code(), 4001);
    // Exactly at the limit is allowed; one more is not.
    let events = hub.run(0, vec![hub.prepare(4, "capped", "payee", 300)]);
    assert!(matches!(only(&events), Event::Reserved { .. }));
    let events = hub.run(0, vec![hub.prepare(5, "capped", "payee", 1)]);
    assert_eq!(refusal_code(&events), ErrorCode::PayerLimit);
    // The initial position counts: 200 + 301 > 500.
    hub.open_account(usd("indebted"), 200, 1_000, 500);
    let events = hub.run(0, vec![hub.prepare(6, "indebted", "payee", 301)]);
    assert_eq!(refusal_code(&events), ErrorCode::PayerLiquidity);
    let events = hub.run(0, vec![hub.prepare(7, "indebted", "payee", 300)]);
    assert!(matches!(only(&events), Event::Reserved { .. }));
}

// ----- admin --------------------------------------------------------------------------------

#[test]
fn funds_in_and_two_phase_funds_out() {
    let mut hub = Hub::new(1);
    let account = usd("dfsp1");
    hub.open_account(usd("payee"), 0, 0, 0);
    hub.open_account(account, 0, 10_000, 0);
    assert_eq!(hub.account(&account), (0, 0, 0), "no funds, no limit");
    let funds_in = Admin::FundsIn {
        account,
        amount: 1_000,
        funds_id: tid(100),
    };
    assert_eq!(hub.admin(account, funds_in.clone()), None);
    assert_eq!(hub.account(&account), (0, 0, 1_000));
    // Idempotent by funds id; reusing the id for another amount is refused.
    assert_eq!(hub.admin(account, funds_in), None);
    assert_eq!(hub.bank(&account).liquidity, 1_000);
    let reused = Admin::FundsIn {
        account,
        amount: 5,
        funds_id: tid(100),
    };
    assert_eq!(hub.admin(account, reused), Some(ErrorCode::ModifiedRequest));

    // Funds out, phase one: the cover is set aside at once.
    let out = Admin::FundsOutReserve {
        account,
        amount: 400,
        funds_id: tid(101),
    };
    assert_eq!(hub.admin(account, out), None);
    assert_eq!(hub.account(&account), (0, 0, 600));
    assert_eq!(hub.bank(&account).liquidity, 1_000);
    let events = hub.run(0, vec![hub.prepare(1, "dfsp1", "payee", 601)]);
    assert_eq!(refusal_code(&events), ErrorCode::PayerLiquidity);
    // Phase two: commit takes the money out; the limit does not move again.
    let commit = Admin::FundsOutCommit {
        account,
        funds_id: tid(101),
    };
    assert_eq!(hub.admin(account, commit.clone()), None);
    assert_eq!(hub.account(&account), (0, 0, 600));
    assert_eq!(hub.bank(&account).liquidity, 600);
    assert_eq!(hub.bank(&account).funds_out_reserved, 0);
    assert_eq!(hub.admin(account, commit), None, "commit is idempotent");

    // Another funds out, aborted: the cover comes back.
    let out = Admin::FundsOutReserve {
        account,
        amount: 100,
        funds_id: tid(102),
    };
    assert_eq!(hub.admin(account, out), None);
    assert_eq!(hub.account(&account), (0, 0, 500));
    let abort = Admin::FundsOutAbort {
        account,
        funds_id: tid(102),
    };
    assert_eq!(hub.admin(account, abort.clone()), None);
    assert_eq!(hub.account(&account), (0, 0, 600));
    assert_eq!(hub.admin(account, abort), None, "abort is idempotent");
    let late_commit = Admin::FundsOutCommit {
        account,
        funds_id: tid(102),
    };
    assert_eq!(hub.admin(account, late_commit), Some(ErrorCode::Validation));

    // More than the cover cannot be withdrawn; unknown withdrawals are not found.
    let too_much = Admin::FundsOutReserve {
        account,
        amount: 601,
        funds_id: tid(103),
    };
    assert_eq!(
        hub.admin(account, too_much),
        Some(ErrorCode::PayerLiquidity)
    );
    let unknown = Admin::FundsOutCommit {
        account,
        funds_id: tid(104),
    };
    assert_eq!(
        hub.admin(account, unknown),
        Some(ErrorCode::TransferNotFound)
    );
    assert_eq!(hub.account(&account), (0, 0, 600));
}

#[test]
fn admin_requests_are_refused_precisely() {
    let mut hub = Hub::new(1);
    let account = usd("dfsp1");
    let unknown = usd("nobody");
    assert_eq!(
        hub.admin(
            unknown,
            Admin::SetNdc {
                account: unknown,
                ndc: 5
            }
        ),
        Some(ErrorCode::Validation)
    );
    let command = hub.admin_command(Admin::CreateAccount { account });
    hub.run(0, vec![command]);
    assert_eq!(
        hub.admin(account, Admin::SetNdc { account, ndc: 5 }),
        Some(ErrorCode::Validation),
        "limits come first"
    );
    let limits = Admin::InitialPositionAndLimits {
        account,
        position: 0,
        ndc: 100,
    };
    assert_eq!(hub.admin(account, limits.clone()), None);
    assert_eq!(
        hub.admin(account, limits),
        Some(ErrorCode::Validation),
        "allowed once"
    );
    assert_eq!(
        hub.admin(account, Admin::SetNdc { account, ndc: -1 }),
        Some(ErrorCode::Validation)
    );
    let zero = Admin::FundsIn {
        account,
        amount: 0,
        funds_id: tid(1),
    };
    assert_eq!(hub.admin(account, zero), Some(ErrorCode::Validation));
}

#[test]
fn limit_decrease_recalls_headroom_from_slices() {
    let partitions = 4;
    let mut hub = Hub::new(partitions);
    let payer = name_homed_at(0, partitions, "payer");
    let account = usd(&payer);
    hub.open_account(account, 0, 10_000, 10_000);
    hub.open_account(usd("dfsp2"), 0, 1_000, 1_000);
    // A prepare on partition 2 borrows; the home grants it with spare headroom.
    let n = id_on(2, partitions, 1);
    let events = hub.run(2, vec![hub.prepare(n, &payer, "dfsp2", 100)]);
    assert!(matches!(only(&events), Event::Reserved { .. }));
    let spare = hub.slice(2, &account).headroom;
    assert!(spare > 0, "a distributed slice keeps spare headroom");
    assert_eq!(hub.account(&account), (0, 100, 10_000));

    // Lowering the NDC cannot apply while slices hold headroom: the home recalls it first.
    let command = hub.admin_command(Admin::SetNdc { account, ndc: 500 });
    let out = hub.apply(0, vec![command]);
    assert!(
        out.events.is_empty(),
        "waits for the recall: {:?}",
        out.events
    );
    let recalled: Vec<u32> = out
        .messages
        .iter()
        .filter(|m| matches!(m.message, PeerMessage::Recall { .. }))
        .map(|m| m.to)
        .collect();
    assert_eq!(recalled, vec![1, 2, 3], "every other partition is asked");
    assert!(matches!(
        hub.bank(&account).mode,
        BankMode::Recalling { .. }
    ));
    assert_eq!(hub.bank(&account).ndc, 10_000, "not applied yet");

    let events = hub.deliver_all();
    assert!(matches!(only(&events), Event::AdminDone { code: None, .. }));
    assert_eq!(hub.bank(&account).ndc, 500);
    assert!(!matches!(
        hub.bank(&account).mode,
        BankMode::Recalling { .. }
    ));
    for p in 0..partitions {
        let slice = hub.slice(p, &account);
        assert_eq!(slice.headroom, 0, "partition {p} gave its headroom back");
        assert!(slice.centralised);
    }
    assert_eq!(hub.account(&account), (0, 100, 500));

    // Now the whole headroom is 400: 401 is refused, 400 fits exactly.
    let n2 = id_on(2, partitions, n + 1);
    let events = hub.run(2, vec![hub.prepare(n2, &payer, "dfsp2", 401)]);
    assert_eq!(refusal_code(&events), ErrorCode::PayerLimit);
    let n3 = id_on(3, partitions, n2 + 1);
    let events = hub.run(3, vec![hub.prepare(n3, &payer, "dfsp2", 400)]);
    assert!(matches!(only(&events), Event::Reserved { .. }));
    assert_eq!(hub.account(&account), (0, 500, 500));
}

/// Two reserves with one funds id queue behind the same recall round: the second, with
/// another amount, is a modified request; with the same amount it changes nothing.
#[test]
fn funds_out_reserves_with_one_id_queued_behind_one_round_are_checked_exactly() {
    let (mut hub, account) = Hub::with_lent_headroom("out", 10_000);
    let reserve = |amount: i64, n: u64| Admin::FundsOutReserve {
        account,
        amount,
        funds_id: tid(n),
    };
    let first = hub.next_request;
    let results = hub.admin_batch(account, vec![reserve(100, 500), reserve(200, 500)]);
    assert_eq!(
        results,
        vec![(first, None), (first + 1, Some(ErrorCode::ModifiedRequest))]
    );
    assert_eq!(hub.bank(&account).funds_out_reserved, 100);
    assert_eq!(hub.account(&account), (0, 10, 900));

    // The same body twice in one round: one success that reserves, one that changes nothing.
    let first = hub.next_request;
    let n = id_on(2, 4, 10);
    hub.run(2, vec![hub.fulfil(id_on(2, 4, 1), "dfsp2")]);
    hub.run(2, vec![hub.prepare(n, account.fsp.as_str(), "dfsp2", 10)]);
    let results = hub.admin_batch(account, vec![reserve(50, 501), reserve(50, 501)]);
    assert_eq!(results, vec![(first, None), (first + 1, None)]);
    assert_eq!(hub.bank(&account).funds_out_reserved, 150);
    assert_eq!(hub.account(&account).2, 850);
}

/// A funds-in and a funds-out reserve with one id: whichever comes second is refused,
/// also when the reserve waited for a recall round while the funds-in arrived.
#[test]
fn funds_id_reused_across_kinds_is_a_modified_request() {
    let (mut hub, account) = Hub::with_lent_headroom("kind", 10_000);
    let first = hub.next_request;
    let results = hub.admin_batch(
        account,
        vec![
            Admin::FundsOutReserve {
                account,
                amount: 100,
                funds_id: tid(600),
            },
            Admin::FundsIn {
                account,
                amount: 100,
                funds_id: tid(600),
            },
        ],
    );
    // Which one is applied is the admin-order rule's business; here: exactly one is, and
    // the books agree with it.
    let applied: Vec<u64> = results
        .iter()
        .filter(|(_, code)| code.is_none())
        .map(|(request_id, _)| *request_id)
        .collect();
    let refused = results
        .iter()
        .filter(|(_, code)| *code == Some(ErrorCode::ModifiedRequest))
        .count();
    assert_eq!((applied.len(), refused), (1, 1), "{results:?}");
    let bank = hub.bank(&account);
    if applied[0] == first {
        assert_eq!((bank.liquidity, bank.funds_out_reserved), (1_000, 100));
        assert_eq!(hub.account(&account).2, 900);
    } else {
        assert_eq!((bank.liquidity, bank.funds_out_reserved), (1_100, 0));
        assert_eq!(hub.account(&account).2, 1_100);
    }
}

/// A reserve sent again after its commit (same id, same amount) changes nothing and
/// succeeds; with another amount it is a modified request.
#[test]
fn funds_out_reserve_resent_after_commit_changes_nothing() {
    let mut hub = Hub::new(1);
    let account = usd("dfsp1");
    hub.open_account(account, 0, 10_000, 1_000);
    let reserve = |amount: i64| Admin::FundsOutReserve {
        account,
        amount,
        funds_id: tid(700),
    };
    assert_eq!(hub.admin(account, reserve(300)), None);
    let commit = Admin::FundsOutCommit {
        account,
        funds_id: tid(700),
    };
    assert_eq!(hub.admin(account, commit), None);
    assert_eq!(hub.account(&account), (0, 0, 700));
    assert_eq!(hub.admin(account, reserve(300)), None);
    assert_eq!(
        hub.admin(account, reserve(301)),
        Some(ErrorCode::ModifiedRequest)
    );
    assert_eq!(hub.account(&account), (0, 0, 700));
    assert_eq!(hub.bank(&account).liquidity, 700);
    assert_eq!(hub.bank(&account).funds_out_reserved, 0);
}

/// The AdminDone results among `events`, as (request id, code), in release order.
fn admin_results(events: &[Event]) -> Vec<(u64, Option<ErrorCode>)> {
    events
        .iter()
        .filter_map(|event| match event {
            Event::AdminDone {
                request_id, code, ..
            } => Some((*request_id, *code)),
            _ => None,
        })
        .collect()
}

/// A decrease waits for its recall round; an increase that arrives meanwhile must not
/// overtake it, or the decrease would land last and the acknowledged 500 be lost.
#[test]
fn limit_increase_queues_behind_a_pending_decrease() {
    let (mut hub, account) = Hub::with_lent_headroom("order", 300);
    assert_eq!(hub.account(&account).2, 300);
    let decrease = hub.admin_command(Admin::SetNdc { account, ndc: 100 });
    let increase = hub.admin_command(Admin::SetNdc { account, ndc: 500 });
    let first = hub.next_request - 2;
    let mut events = hub.apply(0, vec![decrease]).events;
    assert!(events.is_empty(), "the decrease waits: {events:?}");
    events.extend(hub.apply(0, vec![increase]).events);
    events.extend(hub.deliver_all());
    assert_eq!(
        admin_results(&events),
        vec![(first, None), (first + 1, None)],
        "acknowledged in request order"
    );
    assert_eq!(
        hub.bank(&account).ndc,
        500,
        "the last acknowledged limit holds"
    );
    assert_eq!(hub.account(&account), (0, 10, 500));
}

/// Every kind of admin change queues behind a pending one, and is evaluated when its turn
/// comes: a funds-in, a refused request, and a reserve whose id a funds-in took first.
#[test]
fn admin_changes_behind_a_pending_decrease_keep_their_order() {
    let (mut hub, account) = Hub::with_lent_headroom("fifo", 300);
    let first = hub.next_request;
    let results = hub.admin_batch(
        account,
        vec![
            Admin::SetNdc { account, ndc: 100 },
            Admin::FundsIn {
                account,
                amount: 500,
                funds_id: tid(800),
            },
            Admin::SetNdc { account, ndc: -1 },
            Admin::FundsIn {
                account,
                amount: 1,
                funds_id: tid(801),
            },
            Admin::FundsOutReserve {
                account,
                amount: 1,
                funds_id: tid(801),
            },
            Admin::SetNdc { account, ndc: 700 },
        ],
    );
    assert_eq!(
        results,
        vec![
            (first, None),
            (first + 1, None),
            (first + 2, Some(ErrorCode::Validation)),
            (first + 3, None),
            (first + 4, Some(ErrorCode::ModifiedRequest)),
            (first + 5, None),
        ]
    );
    let bank = hub.bank(&account);
    assert_eq!(
        (bank.ndc, bank.liquidity, bank.funds_out_reserved),
        (700, 1_501, 0)
    );
    assert_eq!(hub.account(&account), (0, 10, 700));
}

// ----- the headroom protocol ------------------------------------------------------------

#[test]
fn peer_messages_apply_exactly_once() {
    let partitions = 2;
    let mut hub = Hub::new(partitions);
    let payer = name_homed_at(0, partitions, "payer");
    let account = usd(&payer);
    hub.open_account(account, 0, 1_000, 1_000);
    hub.open_account(usd("dfsp2"), 0, 1_000, 1_000);
    let n = id_on(1, partitions, 1);
    hub.apply(1, vec![hub.prepare(n, &payer, "dfsp2", 100)]);
    let borrow = hub.deliver_one().expect("the borrow");
    let grant = borrow.messages[0].clone();
    assert!(matches!(grant.message, PeerMessage::Grant { .. }));
    let events = hub.deliver_all();
    assert!(matches!(only(&events), Event::Reserved { .. }));
    let after_first = hub.slice(1, &account).clone();

    // The same grant delivered again (a redelivery) changes nothing.
    let again = Command::Peer {
        from: 0,
        seq: grant.seq,
        message: grant.message.clone(),
    };
    let out = hub.apply(1, vec![again.clone(), again]);
    assert!(out.events.is_empty() && out.messages.is_empty());
    assert_eq!(hub.slice(1, &account), &after_first);
    hub.account(&account);

    // Out of order: seq 3 before seq 2, then both again. Each counts once.
    let bank_before = hub.bank(&account).bank;
    let next = hub.parts[0].inbound.get(&1).map_or(0, |i| i.watermark);
    let give_back = |seq: u64, amount: i64| Command::Peer {
        from: 1,
        seq,
        message: PeerMessage::Return {
            account,
            amount,
            round: None,
        },
    };
    hub.apply(0, vec![give_back(next + 2, 20)]);
    assert_eq!(hub.parts[0].inbound[&1].watermark, next);
    hub.apply(0, vec![give_back(next + 1, 10)]);
    assert_eq!(hub.parts[0].inbound[&1].watermark, next + 2);
    assert!(hub.parts[0].inbound[&1].above.is_empty());
    hub.apply(0, vec![give_back(next + 1, 10), give_back(next + 2, 20)]);
    assert_eq!(hub.bank(&account).bank, bank_before + 30);
}

#[test]
fn payee_credit_on_a_centralised_slice_goes_back_to_the_bank() {
    let partitions = 4;
    let mut hub = Hub::new(partitions);
    let payer = name_homed_at(0, partitions, "payer");
    let account = usd(&payer);
    hub.open_account(account, 0, 1_000, 1_000);
    hub.open_account(usd("dfsp2"), 0, 10_000, 10_000);
    // Exhaust the payer so that it is centralised.
    let n = id_on(1, partitions, 1);
    let events = hub.run(1, vec![hub.prepare(n, &payer, "dfsp2", 1_000)]);
    assert!(matches!(only(&events), Event::Reserved { .. }));
    let n2 = id_on(1, partitions, n + 1);
    let events = hub.run(1, vec![hub.prepare(n2, &payer, "dfsp2", 1)]);
    assert_eq!(refusal_code(&events), ErrorCode::PayerLiquidity);
    assert!(hub.slice(1, &account).centralised);
    // dfsp2 pays the payer on partition 1: the credit is returned to the home bank.
    let n3 = id_on(1, partitions, n2 + 1);
    hub.run(1, vec![hub.prepare(n3, "dfsp2", &payer, 300)]);
    hub.run(1, vec![hub.fulfil(n3, &payer)]);
    assert_eq!(hub.slice(1, &account).headroom, 0);
    assert_eq!(hub.bank(&account).bank, 300);
    assert_eq!(hub.account(&account), (-300, 1_000, 1_000));
}

// ----- peer messages for accounts a partition does not know ----------------------------

/// Creation reached partition 2 but not yet the home (0): a payee credit on 2 gives the
/// slice headroom, and its idle return reaches a home with no bank. The home keeps the
/// headroom (it creates the bank, as the creation will) instead of panicking.
#[test]
fn idle_return_to_a_home_that_has_no_bank_yet_keeps_the_headroom() {
    let partitions = 4;
    let mut hub = Hub::new(partitions);
    let late = usd(&name_homed_at(0, partitions, "late"));
    hub.open_account(usd("dfsp2"), 0, 10_000, 10_000);
    hub.create_on(2, late);
    let n = id_on(2, partitions, 1);
    let events = hub.run(2, vec![hub.prepare(n, "dfsp2", late.fsp.as_str(), 300)]);
    assert!(
        matches!(only(&events), Event::Reserved { .. }),
        "{events:?}"
    );
    let events = hub.run(2, vec![hub.fulfil(n, late.fsp.as_str())]);
    assert!(
        matches!(only(&events), Event::Committed { .. }),
        "{events:?}"
    );
    assert_eq!(hub.slice(2, &late).headroom, 300);
    assert!(
        !hub.parts[0].accounts.contains_key(&late),
        "unknown at home"
    );

    hub.now_ms += hub.parts[2].limits().idle_return_ms;
    let out = hub.apply(2, vec![Command::Tick { now_ms: hub.now_ms }]);
    let returns: Vec<&Outgoing> = out
        .messages
        .iter()
        .filter(|m| matches!(m.message, PeerMessage::Return { account, .. } if account == late))
        .collect();
    assert!(matches!(
        returns.as_slice(),
        [Outgoing {
            to: 0,
            message: PeerMessage::Return {
                amount: 300,
                round: None,
                ..
            },
            ..
        }]
    ));
    let events = hub.deliver_all();
    assert!(events.is_empty(), "a return is not answered: {events:?}");
    assert_eq!(hub.bank(&late).bank, 300, "the headroom reached the bank");
    assert_eq!(hub.slice(2, &late).headroom, 0);
    // bank + Σ slice headroom == limit − position − reserved: 300 == 0 − (−300) − 0.
    assert_eq!(hub.account(&late), (-300, 0, 0));

    // The creation then reaches the home: it keeps the bank, and the account carries on.
    hub.create_on(0, late);
    assert_eq!(hub.bank(&late).bank, 300);
    let limits = Admin::InitialPositionAndLimits {
        account: late,
        position: 0,
        ndc: 1_000,
    };
    assert_eq!(hub.admin(late, limits), None);
    assert_eq!(hub.account(&late), (-300, 0, 0), "no cover yet: limit 0");
}

/// A borrow for an account its home does not know is refused, whichever partition it
/// reached; the parked prepare is refused with 3100 and nothing is reserved.
#[test]
fn borrow_for_an_account_unknown_at_the_home_is_denied() {
    let partitions = 4;
    let mut hub = Hub::new(partitions);
    let late = usd(&name_homed_at(0, partitions, "late"));
    hub.open_account(usd("dfsp2"), 0, 10_000, 10_000);
    hub.create_on(2, late);
    let n = id_on(2, partitions, 1);
    let out = hub.apply(2, vec![hub.prepare(n, late.fsp.as_str(), "dfsp2", 100)]);
    assert!(out.events.is_empty(), "parked while borrowing");
    let answer = hub.deliver_one().expect("the borrow reaches the home");
    assert!(matches!(
        answer.messages.as_slice(),
        [Outgoing {
            to: 2,
            message: PeerMessage::Deny {
                code: ErrorCode::Validation,
                ..
            },
            ..
        }]
    ));
    let events = hub.deliver_all();
    assert_eq!(refusal_code(&events), ErrorCode::Validation);
    assert_eq!(hub.slice(2, &late).reserved, 0);
    assert!(hub.parts[2].transfers.is_empty());

    // A borrow that reaches a partition which is not the account's home is refused too.
    let borrow = PeerMessage::Borrow {
        account: usd("dfsp2"),
        transfer_id: tid(77),
        amount: 10,
        extra: 0,
    };
    let not_home = (home_of(&usd("dfsp2"), partitions) + 1) % partitions;
    let from = (not_home + 1) % partitions;
    let out = hub.inject(from, not_home, borrow);
    assert!(matches!(
        out.messages.as_slice(),
        [Outgoing {
            message: PeerMessage::Deny {
                code: ErrorCode::Validation,
                ..
            },
            ..
        }]
    ));
    hub.deliver_all();
    hub.account(&usd("dfsp2"));
}

/// A recall answer (a return with a round) for an account the home does not know: the
/// headroom is kept in a new bank, no round is in progress, nothing else happens.
#[test]
fn recall_answer_for_an_account_unknown_at_the_home_is_kept() {
    let partitions = 2;
    let mut hub = Hub::new(partitions);
    let late = usd(&name_homed_at(0, partitions, "late"));
    let answer = PeerMessage::Return {
        account: late,
        amount: 40,
        round: Some(1),
    };
    let out = hub.inject(1, 0, answer);
    assert!(out.events.is_empty() && out.messages.is_empty(), "{out:?}");
    let bank = hub.bank(&late);
    assert_eq!(bank.bank, 40);
    assert_eq!(bank.mode, BankMode::Distributed);
    assert_eq!(bank.round, 0);
    // A recall reaching a partition that does not know the account answers with nothing.
    let recall = PeerMessage::Recall {
        account: usd("stranger"),
        round: 1,
    };
    let stranger_home = home_of(&usd("stranger"), partitions);
    let out = hub.inject(stranger_home, 1 - stranger_home, recall);
    assert!(matches!(
        out.messages.as_slice(),
        [Outgoing {
            message: PeerMessage::Return {
                amount: 0,
                round: Some(1),
                ..
            },
            ..
        }]
    ));
    hub.deliver_all();
}

// ----- determinism ------------------------------------------------------------------------

/// A multi-partition workload with every kind of command; returns each partition's
/// batches (its inputs, in order) as applied.
fn record_workload() -> (Hub, Vec<Vec<Vec<Input>>>) {
    let partitions = 3;
    let mut hub = Hub::new(partitions);
    let mut batches: Vec<Vec<Vec<Input>>> = vec![Vec::new(); partitions as usize];
    // Capture inputs by wrapping `apply`: run everything through `step`.
    fn step(hub: &mut Hub, batches: &mut [Vec<Vec<Input>>], p: u32, commands: Vec<Command>) {
        let inputs: Vec<Input> = commands
            .iter()
            .map(|command| Input {
                command: command.clone(),
                prior: command
                    .transfer_id()
                    .filter(|id| !hub.parts[p as usize].is_open(id))
                    .and_then(|id| hub.archive.get(&id).cloned()),
            })
            .collect();
        batches[p as usize].push(inputs);
        hub.apply(p, commands);
        while let Some((from, Outgoing { to, seq, message })) = hub.in_flight.pop_front() {
            let command = Command::Peer { from, seq, message };
            batches[to as usize].push(vec![Input::new(command.clone())]);
            hub.apply(to, vec![command]);
        }
    }
    let names = ["dfsp1", "dfsp2", "dfsp3"];
    for (i, name) in names.iter().enumerate() {
        let account = usd(name);
        for p in 0..partitions {
            let command = hub.admin_command(Admin::CreateAccount { account });
            step(&mut hub, &mut batches, p, vec![command]);
        }
        let home = home_of(&account, partitions);
        let limits = hub.admin_command(Admin::InitialPositionAndLimits {
            account,
            position: 10 * i as i64,
            ndc: 800,
        });
        let funds = hub.admin_command(Admin::FundsIn {
            account,
            amount: 700,
            funds_id: tid(1_000 + i as u64),
        });
        step(&mut hub, &mut batches, home, vec![limits, funds]);
    }
    let count = sharding::PartitionCount::new(partitions).expect("count");
    for n in 1..=64u64 {
        hub.now_ms += 7;
        let payer = names[(n % 3) as usize];
        let payee = names[((n + 1) % 3) as usize];
        let p = sharding::transfer_partition(tid(n).as_str(), count);
        let mut commands = vec![hub.prepare(n, payer, payee, 37 + (n as i64 * 13) % 200)];
        if n % 4 == 0 {
            commands.push(hub.fulfil(n, payee)); // in the same batch
        }
        step(&mut hub, &mut batches, p, commands);
        if n % 4 == 1 {
            let command = hub.fulfil(n, payee);
            step(&mut hub, &mut batches, p, vec![command]);
        }
        if n % 5 == 2 {
            let command = hub.reject(n, payee, 5105);
            step(&mut hub, &mut batches, p, vec![command]);
        }
        if n % 10 == 0 {
            let account = usd(payer);
            let home = home_of(&account, partitions);
            let ndc = 200 + (n as i64 * 31) % 900;
            let command = hub.admin_command(Admin::SetNdc { account, ndc });
            step(&mut hub, &mut batches, home, vec![command]);
        }
        if n % 15 == 0 {
            for p in 0..partitions {
                let tick = Command::Tick {
                    now_ms: hub.now_ms + 60_000,
                };
                step(&mut hub, &mut batches, p, vec![tick]);
            }
        }
    }
    (hub, batches)
}

#[test]
fn snapshot_round_trip_gives_identical_bytes() {
    let (hub, _) = record_workload();
    for original in &hub.parts {
        let bytes = original.snapshot_bytes();
        let restored =
            PartitionState::from_snapshot(&bytes, Limits::default()).expect("snapshot decodes");
        assert_eq!(&restored, original, "partition {}", original.partition);
        assert_eq!(restored.snapshot_bytes(), bytes);
    }
    // The workload left something in every interesting place.
    let all = || hub.parts.iter();
    assert!(all().any(|p| !p.transfers.is_empty()), "open transfers");
    assert!(all().any(|p| p.accounts.values().any(|e| e.slice.headroom > 0)));
    assert!(all().any(|p| !p.inbound.is_empty()));
}

#[test]
fn restored_state_continues_exactly_like_the_original() {
    let (mut hub, _) = record_workload();
    let p = 1;
    let mut restored =
        PartitionState::from_snapshot(&hub.parts[p].snapshot_bytes(), Limits::default())
            .expect("snapshot decodes");
    let count = sharding::PartitionCount::new(3).expect("count");
    let n = (500..)
        .find(|n| sharding::transfer_partition(tid(*n).as_str(), count) == p as u32)
        .expect("an id");
    let batch = [
        hub.prepare(n, "dfsp2", "dfsp3", 5),
        Command::Tick {
            now_ms: hub.now_ms + 600_000,
        },
    ];
    let inputs: Vec<Input> = batch.into_iter().map(Input::new).collect();
    let a = hub.parts[p].apply_batch(inputs.clone());
    let b = restored.apply_batch(inputs);
    assert_eq!(a.events, b.events);
    assert_eq!(a.messages, b.messages);
    assert_eq!(hub.parts[p].snapshot_bytes(), restored.snapshot_bytes());
}

#[test]
fn replaying_the_same_batches_gives_identical_snapshots() {
    let (hub, batches) = record_workload();
    for (p, batches) in batches.into_iter().enumerate() {
        let mut replayed = PartitionState::new(p as u32, 3, Limits::default());
        for inputs in batches {
            replayed.apply_batch(inputs);
        }
        assert_eq!(
            replayed.snapshot_bytes(),
            hub.parts[p].snapshot_bytes(),
            "partition {p} replays to the same bytes"
        );
    }
}

#[test]
fn corrupt_snapshots_are_refused() {
    let (hub, _) = record_workload();
    let bytes = hub.parts[0].snapshot_bytes();
    assert!(PartitionState::from_snapshot(&bytes[..bytes.len() / 2], Limits::default()).is_err());
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(PartitionState::from_snapshot(&trailing, Limits::default()).is_err());
    assert!(PartitionState::from_snapshot(&[], Limits::default()).is_err());
}

/// Bytes that decode but hold a state breaking a ledger invariant (here an account's
/// `reserved` out of step with its open transfers) are refused with an error naming the
/// account, not a panic that would stop the whole hub at open.
#[test]
fn decodable_but_inconsistent_snapshot_is_refused_with_an_error() {
    let mut hub = two_dfsps();
    hub.run(0, vec![hub.prepare(1, "dfsp1", "dfsp2", 100)]);
    let mut broken = hub.parts[0].clone();
    let entry = broken.accounts.get_mut(&usd("dfsp1")).expect("account");
    entry.slice.reserved += 1;
    let error = broken.check().expect_err("reserved out of step");
    assert!(error.contains("dfsp1"), "names the account: {error}");
    let result = PartitionState::from_snapshot(&broken.snapshot_bytes(), Limits::default());
    let error = result
        .expect_err("an inconsistent state is refused")
        .to_string();
    assert!(
        error.contains("dfsp1") && error.contains("reserved"),
        "{error}"
    );
    // The state it came from is consistent and opens.
    assert_eq!(hub.parts[0].check(), Ok(()));
    assert!(
        PartitionState::from_snapshot(&hub.parts[0].snapshot_bytes(), Limits::default()).is_ok()
    );
}

/// A parked prepare whose transfer is not open (or is already reserved) is inconsistent
/// too: a grant for it would find no transfer to reserve.
#[test]
fn snapshot_with_a_parked_prepare_that_is_not_open_is_refused() {
    let partitions = 4;
    let mut hub = Hub::new(partitions);
    let payer = name_homed_at(0, partitions, "payer");
    hub.open_account(usd(&payer), 0, 1_000, 1_000);
    hub.open_account(usd("dfsp2"), 0, 1_000, 1_000);
    let n = id_on(3, partitions, 1);
    hub.apply(3, vec![hub.prepare(n, &payer, "dfsp2", 100)]);
    assert_eq!(hub.parts[3].check(), Ok(()));
    let mut broken = hub.parts[3].clone();
    let open = broken
        .transfers
        .get_mut(&tid(n))
        .expect("parked transfer is open");
    open.reserved = true;
    broken
        .accounts
        .get_mut(&usd(&payer))
        .expect("payer")
        .slice
        .reserved += 100;
    broken.parked_count -= 1;
    let error = broken.check().expect_err("parked but reserved");
    assert!(
        error.contains(tid(n).as_str()),
        "names the transfer: {error}"
    );
    assert!(PartitionState::from_snapshot(&broken.snapshot_bytes(), Limits::default()).is_err());
}

/// A decodable snapshot whose partition count the routing cannot serve is refused, not a
/// panic in the routing hash when the check asks an account's home.
#[test]
fn snapshot_with_a_partition_count_out_of_range_is_refused() {
    let partitions = sharding::PARTITIONS_MAX + 1;
    let mut state = PartitionState::new(0, partitions, Limits::default());
    let entry = account::AccountEntry {
        bank: Some(Bank::new()),
        ..Default::default()
    };
    state.accounts.insert(usd("dfsp1"), entry);
    let result = PartitionState::from_snapshot(&state.snapshot_bytes(), Limits::default());
    let error = result.expect_err("too many partitions").to_string();
    assert!(error.contains("partition"), "{error}");
}

#[test]
fn a_refused_prepare_is_final_and_a_resend_gets_the_same_answer() {
    let mut hub = Hub::new(1);
    hub.open_account(usd("payee"), 0, 0, 0);
    hub.open_account(usd("capped"), 0, 300, 500);
    let events = hub.run(0, vec![hub.prepare(1, "capped", "payee", 400)]);
    assert_eq!(refusal_code(&events), ErrorCode::PayerLimit);
    // Headroom appears (the NDC rises), then the same prepare is sent again: it must not
    // be reserved now, since the payer was told it was refused.
    let account = usd("capped");
    assert_eq!(
        hub.admin(
            account,
            Admin::SetNdc {
                account,
                ndc: 1_000
            }
        ),
        None
    );
    let events = hub.run(0, vec![hub.prepare(1, "capped", "payee", 400)]);
    match only(&events) {
        Event::StateResent { state, .. } => assert_eq!(*state, TransferState::Aborted),
        other => panic!("expected the ABORTED state re-sent, got {other:?}"),
    }
    assert_eq!(hub.account(&account).1, 0, "nothing reserved by the resend");
    // A fulfil for it is refused: it was never reserved.
    let events = hub.run(0, vec![hub.fulfil(1, "payee")]);
    match only(&events) {
        Event::RequestRefused { code, .. } => assert_eq!(*code, ErrorCode::Validation),
        other => panic!("expected 3100, got {other:?}"),
    }
}

mod activation;
mod settlement;
