//! Model-based property test (DESIGN §10, item 1): random sequences of prepares, fulfils,
//! rejects, ticks and limit changes for ONE payer account on a single partition, compared
//! step by step with a reference ledger written here from the definitions alone:
//!
//! ```text
//! limit = min(NDC, liquidity cover)     cover = funds in − funds out (reserved or done)
//! a prepare of `amount` is RESERVED  iff  position + reserved + amount <= limit
//! otherwise it is refused: 4001 if position + reserved + amount > cover, else 4200
//! ```
//!
//! On one partition the account's bank and its only slice hold all its headroom, so every
//! decision is taken in the step of its command: each result must match the reference
//! exactly, and the machine's position, reserved and limit must equal the reference's after
//! every step. Payees and a "rich" DFSP that pays the payer back (lowering its position)
//! complete the picture.

use engine::command::{
    Admin, Command, ErrorCode, Event, Fulfil, Prepare, Reject, TimestampMs, TransferState,
};
use engine::ids::{AccountKey, Currency, FspId, TransferId};
use engine::limits::Limits;
use engine::machine::account::Money;
use engine::machine::{Input, Output, PartitionState};
use proptest::prelude::*;
use proptest::sample::Index;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

const START_MS: TimestampMs = 1_700_000_000_000;

#[derive(Debug, Clone)]
enum Op {
    /// The payer sends a prepare to payee 0 or 1.
    Prepare {
        amount: i64,
        payee: usize,
        expires_in_ms: i64,
    },
    /// The payee of an open transfer fulfils it (with the right preimage, or a wrong one).
    Fulfil {
        pick: Index,
        valid: bool,
    },
    /// The payee of an open transfer rejects it.
    Reject {
        pick: Index,
    },
    /// The payer resends the prepare of an open transfer: its state is re-sent, no effect.
    Resend {
        pick: Index,
    },
    /// Hub time passes without a tick: a fulfil may now arrive after the expiration.
    Wait {
        ms: i64,
    },
    /// Hub time passes and a tick expires what is due.
    Tick {
        ms: i64,
    },
    SetNdc {
        ndc: i64,
    },
    FundsIn {
        amount: i64,
    },
    FundsOutReserve {
        amount: i64,
    },
    FundsOutFinish {
        pick: Index,
        commit: bool,
    },
    /// The rich DFSP pays the payer (prepare and fulfil): the payer's position drops.
    Credit {
        amount: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (1i64..=400, 0usize..2, 1i64..=3_000).prop_map(|(amount, payee, expires_in_ms)| {
            Op::Prepare { amount, payee, expires_in_ms }
        }),
        4 => (any::<Index>(), prop::bool::weighted(0.9))
            .prop_map(|(pick, valid)| Op::Fulfil { pick, valid }),
        1 => any::<Index>().prop_map(|pick| Op::Reject { pick }),
        1 => any::<Index>().prop_map(|pick| Op::Resend { pick }),
        1 => (1i64..=1_500).prop_map(|ms| Op::Wait { ms }),
        2 => (0i64..=1_500).prop_map(|ms| Op::Tick { ms }),
        1 => (0i64..=3_000).prop_map(|ndc| Op::SetNdc { ndc }),
        1 => (1i64..=1_500).prop_map(|amount| Op::FundsIn { amount }),
        1 => (1i64..=1_500).prop_map(|amount| Op::FundsOutReserve { amount }),
        1 => (any::<Index>(), any::<bool>())
            .prop_map(|(pick, commit)| Op::FundsOutFinish { pick, commit }),
        1 => (1i64..=400).prop_map(|amount| Op::Credit { amount }),
    ]
}

// ----- the reference ledger ---------------------------------------------------------------

#[derive(Debug, Clone)]
struct OpenRef {
    amount: i64,
    expiration_ms: TimestampMs,
    payee: usize,
}

/// The payer account, from the definitions. Nothing about slices, banks or messages.
#[derive(Debug, Default)]
struct Reference {
    position: Money,
    reserved: Money,
    ndc: Money,
    liquidity: Money,
    out_reserved: Money,
    /// The payer's RESERVED transfers.
    open: BTreeMap<TransferId, OpenRef>,
    /// Funds-out reservations not yet committed or aborted.
    funds_out: Vec<(TransferId, i64)>,
    /// Positions of the two payees.
    payees: [Money; 2],
}

impl Reference {
    fn cover(&self) -> Money {
        self.liquidity - self.out_reserved
    }

    fn limit(&self) -> Money {
        self.ndc.min(self.cover())
    }

    /// The answer to a prepare of `amount`: `None` is RESERVED.
    fn decide(&self, amount: i64) -> Option<ErrorCode> {
        let needed = self.position + self.reserved + Money::from(amount);
        if needed <= self.limit() {
            None
        } else if needed > self.cover() {
            Some(ErrorCode::PayerLiquidity) // liquidity is checked first
        } else {
            Some(ErrorCode::PayerLimit)
        }
    }
}

// ----- the machine under test -------------------------------------------------------------

struct Hub {
    state: PartitionState,
    now_ms: TimestampMs,
    next: u64,
    payer: AccountKey,
    payees: [AccountKey; 2],
    rich: AccountKey,
}

fn fsp(name: &str) -> FspId {
    FspId::new(name).expect("valid participant name")
}

fn fulfilment_of(n: u64) -> [u8; 32] {
    Sha256::digest(n.to_le_bytes()).into()
}

impl Hub {
    fn new() -> Hub {
        let usd = Currency::new("USD").expect("currency");
        Hub {
            state: PartitionState::new(0, 1, Limits::default()),
            now_ms: START_MS,
            next: 1,
            payer: AccountKey::new(fsp("payer"), usd),
            payees: [
                AccountKey::new(fsp("payee1"), usd),
                AccountKey::new(fsp("payee2"), usd),
            ],
            rich: AccountKey::new(fsp("rich"), usd),
        }
    }

    fn apply(&mut self, command: Command) -> Output {
        self.state.apply_batch(vec![Input::new(command)])
    }

    fn fresh(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    fn id(n: u64) -> TransferId {
        TransferId::parse(&format!("00000000-0000-4000-8000-{n:012x}")).expect("valid id")
    }

    fn admin(&mut self, admin: Admin) -> Option<ErrorCode> {
        let request_id = self.fresh();
        let now_ms = self.now_ms;
        let out = self.apply(Command::Admin {
            now_ms,
            request_id,
            admin,
        });
        match out.events.as_slice() {
            [Event::AdminDone {
                request_id: done,
                code,
                ..
            }] if *done == request_id => *code,
            other => panic!("expected one admin result, got {other:?}"),
        }
    }

    fn prepare_command(
        &mut self,
        n: u64,
        payer: AccountKey,
        payee: AccountKey,
        amount: i64,
        expires_in_ms: i64,
    ) -> Command {
        Command::Prepare {
            now_ms: self.now_ms,
            prepare: Prepare {
                transfer_id: Hub::id(n),
                payer: payer.fsp,
                payee: payee.fsp,
                currency: payer.currency,
                amount,
                condition: Sha256::digest(fulfilment_of(n)).into(),
                expiration_ms: self.now_ms + expires_in_ms,
                body_hash: [n as u8; 16],
                payload: Vec::new(),
            },
        }
    }

    /// The payer's position, reserved and limit as the machine has them, after checking
    /// the headroom bookkeeping: on one partition nothing is ever in flight, so
    /// `bank + slice headroom == limit − position − reserved` exactly.
    fn payer_view(&self) -> (Money, Money, Money) {
        let entry = &self.state.accounts[&self.payer];
        let bank = entry.bank.as_ref().expect("payer's home is partition 0");
        let position = bank.base_position + entry.slice.position;
        let reserved = entry.slice.reserved;
        let limit = bank.limit();
        assert_eq!(
            bank.bank + entry.slice.headroom,
            limit - position - reserved,
            "headroom bookkeeping: bank + slice headroom != limit - position - reserved"
        );
        (position, reserved, limit)
    }

    fn position_of(&self, account: &AccountKey) -> Money {
        let entry = &self.state.accounts[account];
        entry.slice.position + entry.bank.as_ref().map_or(0, |b| b.base_position)
    }
}

/// What a fulfil, reject or late answer must produce, from the reference's point of view.
fn expect_final(
    out: &Output,
    id: TransferId,
    expected: TransferState,
    code: Option<ErrorCode>,
) -> Result<(), TestCaseError> {
    let finals: Vec<&Event> = out
        .events
        .iter()
        .filter(|e| matches!(e, Event::Committed { .. } | Event::Aborted { .. }))
        .collect();
    prop_assert_eq!(
        finals.len(),
        1,
        "one final event expected: {:?}",
        out.events
    );
    match (finals[0], expected) {
        (Event::Committed { parties, .. }, TransferState::Committed) => {
            prop_assert_eq!(parties.transfer_id, id);
        }
        (
            Event::Aborted {
                parties, code: got, ..
            },
            TransferState::Aborted,
        ) => {
            prop_assert_eq!(parties.transfer_id, id);
            prop_assert_eq!(Some(*got), code);
        }
        (event, _) => prop_assert!(false, "expected {:?}, got {:?}", expected, event),
    }
    Ok(())
}

fn run(
    initial_position: i64,
    initial_ndc: i64,
    initial_funds: i64,
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    let mut hub = Hub::new();
    let mut reference = Reference::default();
    // Setup: four accounts, the payer's limits and funds, a rich DFSP with ample room.
    for account in [hub.payer, hub.payees[0], hub.payees[1], hub.rich] {
        prop_assert_eq!(hub.admin(Admin::CreateAccount { account }), None);
    }
    let payer = hub.payer;
    let rich = hub.rich;
    prop_assert_eq!(
        hub.admin(Admin::InitialPositionAndLimits {
            account: payer,
            position: initial_position,
            ndc: initial_ndc,
        }),
        None
    );
    reference.position = Money::from(initial_position);
    reference.ndc = Money::from(initial_ndc);
    if initial_funds > 0 {
        let funds_id = Hub::id(hub.fresh());
        prop_assert_eq!(
            hub.admin(Admin::FundsIn {
                account: payer,
                amount: initial_funds,
                funds_id
            }),
            None
        );
        reference.liquidity = Money::from(initial_funds);
    }
    let plenty = 1_000_000_000_000;
    prop_assert_eq!(
        hub.admin(Admin::InitialPositionAndLimits {
            account: rich,
            position: 0,
            ndc: plenty
        }),
        None
    );
    let funds_id = Hub::id(hub.fresh());
    prop_assert_eq!(
        hub.admin(Admin::FundsIn {
            account: rich,
            amount: plenty,
            funds_id
        }),
        None
    );

    for op in ops {
        match op {
            Op::Prepare {
                amount,
                payee,
                expires_in_ms,
            } => {
                let n = hub.fresh();
                let id = Hub::id(n);
                let command =
                    hub.prepare_command(n, payer, hub.payees[payee], amount, expires_in_ms);
                let out = hub.apply(command);
                prop_assert_eq!(
                    out.events.len(),
                    1,
                    "one answer per prepare: {:?}",
                    out.events
                );
                match (reference.decide(amount), &out.events[0]) {
                    (None, Event::Reserved { parties, .. }) => {
                        prop_assert_eq!(parties.transfer_id, id);
                        reference.reserved += Money::from(amount);
                        reference.open.insert(
                            id,
                            OpenRef {
                                amount,
                                expiration_ms: hub.now_ms + expires_in_ms,
                                payee,
                            },
                        );
                    }
                    (Some(code), Event::PrepareRefused { code: got, .. }) => {
                        prop_assert_eq!(*got, code, "refusal code for {}", amount);
                    }
                    (expected, got) => prop_assert!(
                        false,
                        "prepare of {} with position {} reserved {} limit {} cover {}: \
                         expected {:?} (None = reserved), got {:?}",
                        amount,
                        reference.position,
                        reference.reserved,
                        reference.limit(),
                        reference.cover(),
                        expected,
                        got
                    ),
                }
                prop_assert!(out.denials.iter().all(|d| d.bank < Money::from(d.amount)));
            }
            Op::Fulfil { pick, valid } => {
                let Some((id, open)) = pick_open(&reference, pick) else {
                    continue;
                };
                let n = hub.fresh();
                let fulfilment = if valid {
                    fulfilment_of(transfer_number(&id))
                } else {
                    fulfilment_of(n)
                };
                let now_ms = hub.now_ms;
                let out = hub.apply(Command::Fulfil {
                    now_ms,
                    fulfil: Fulfil {
                        transfer_id: id,
                        source: hub.payees[open.payee].fsp,
                        fulfilment,
                        completed_ms: now_ms,
                        notify_payee: false,
                        body_hash: [n as u8; 16],
                        payload: Vec::new(),
                    },
                });
                reference.open.remove(&id);
                reference.reserved -= Money::from(open.amount);
                if now_ms >= open.expiration_ms {
                    expect_final(
                        &out,
                        id,
                        TransferState::Aborted,
                        Some(ErrorCode::TransferExpired),
                    )?;
                } else if !valid {
                    expect_final(
                        &out,
                        id,
                        TransferState::Aborted,
                        Some(ErrorCode::Validation),
                    )?;
                } else {
                    expect_final(&out, id, TransferState::Committed, None)?;
                    reference.position += Money::from(open.amount);
                    reference.payees[open.payee] -= Money::from(open.amount);
                }
            }
            Op::Reject { pick } => {
                let Some((id, open)) = pick_open(&reference, pick) else {
                    continue;
                };
                let n = hub.fresh();
                let now_ms = hub.now_ms;
                let out = hub.apply(Command::Reject {
                    now_ms,
                    reject: Reject {
                        transfer_id: id,
                        source: hub.payees[open.payee].fsp,
                        error_code: 5101,
                        body_hash: [n as u8; 16],
                        payload: Vec::new(),
                    },
                });
                reference.open.remove(&id);
                reference.reserved -= Money::from(open.amount);
                let code = if now_ms >= open.expiration_ms {
                    ErrorCode::TransferExpired
                } else {
                    ErrorCode::Payee(5101)
                };
                expect_final(&out, id, TransferState::Aborted, Some(code))?;
            }
            Op::Resend { pick } => {
                let Some((id, open)) = pick_open(&reference, pick) else {
                    continue;
                };
                // The same body as the original (the ids encode their number).
                let n = transfer_number(&id);
                let payee = hub.payees[open.payee];
                let mut command = hub.prepare_command(n, payer, payee, open.amount, 0);
                if let Command::Prepare { prepare, .. } = &mut command {
                    prepare.expiration_ms = open.expiration_ms;
                }
                let out = hub.apply(command);
                match out.events.as_slice() {
                    [Event::StateResent {
                        state: TransferState::Reserved,
                        ..
                    }] => {}
                    other => prop_assert!(false, "resend of an open transfer gave {:?}", other),
                }
            }
            Op::Wait { ms } => hub.now_ms += ms,
            Op::Tick { ms } => {
                hub.now_ms += ms;
                let now_ms = hub.now_ms;
                let out = hub.apply(Command::Tick { now_ms });
                let due: Vec<TransferId> = reference
                    .open
                    .iter()
                    .filter(|(_, o)| o.expiration_ms <= now_ms)
                    .map(|(id, _)| *id)
                    .collect();
                let mut expired: Vec<TransferId> = out
                    .events
                    .iter()
                    .map(|e| match e {
                        Event::Aborted {
                            parties,
                            code: ErrorCode::TransferExpired,
                            ..
                        } => Ok(parties.transfer_id),
                        other => Err(format!("unexpected event on tick: {other:?}")),
                    })
                    .collect::<Result<_, _>>()
                    .map_err(TestCaseError::fail)?;
                expired.sort();
                prop_assert_eq!(&expired, &due);
                for id in due {
                    let open = reference.open.remove(&id).expect("due transfers are open");
                    reference.reserved -= Money::from(open.amount);
                }
            }
            Op::SetNdc { ndc } => {
                prop_assert_eq!(
                    hub.admin(Admin::SetNdc {
                        account: payer,
                        ndc
                    }),
                    None
                );
                reference.ndc = Money::from(ndc);
            }
            Op::FundsIn { amount } => {
                let funds_id = Hub::id(hub.fresh());
                prop_assert_eq!(
                    hub.admin(Admin::FundsIn {
                        account: payer,
                        amount,
                        funds_id
                    }),
                    None
                );
                reference.liquidity += Money::from(amount);
            }
            Op::FundsOutReserve { amount } => {
                let funds_id = Hub::id(hub.fresh());
                let got = hub.admin(Admin::FundsOutReserve {
                    account: payer,
                    amount,
                    funds_id,
                });
                if reference.cover() < Money::from(amount) {
                    prop_assert_eq!(got, Some(ErrorCode::PayerLiquidity));
                } else {
                    prop_assert_eq!(got, None);
                    reference.out_reserved += Money::from(amount);
                    reference.funds_out.push((funds_id, amount));
                }
            }
            Op::FundsOutFinish { pick, commit } => {
                if reference.funds_out.is_empty() {
                    continue;
                }
                let (funds_id, amount) = reference
                    .funds_out
                    .remove(pick.index(reference.funds_out.len()));
                let admin = if commit {
                    Admin::FundsOutCommit {
                        account: payer,
                        funds_id,
                    }
                } else {
                    Admin::FundsOutAbort {
                        account: payer,
                        funds_id,
                    }
                };
                prop_assert_eq!(hub.admin(admin), None);
                reference.out_reserved -= Money::from(amount);
                if commit {
                    reference.liquidity -= Money::from(amount);
                }
            }
            Op::Credit { amount } => {
                let n = hub.fresh();
                let id = Hub::id(n);
                let command = hub.prepare_command(n, rich, payer, amount, 60_000);
                let out = hub.apply(command);
                prop_assert!(
                    matches!(out.events.as_slice(), [Event::Reserved { .. }]),
                    "the rich DFSP's prepare: {:?}",
                    out.events
                );
                let now_ms = hub.now_ms;
                let out = hub.apply(Command::Fulfil {
                    now_ms,
                    fulfil: Fulfil {
                        transfer_id: id,
                        source: payer.fsp,
                        fulfilment: fulfilment_of(n),
                        completed_ms: now_ms,
                        notify_payee: false,
                        body_hash: [0; 16],
                        payload: Vec::new(),
                    },
                });
                expect_final(&out, id, TransferState::Committed, None)?;
                reference.position -= Money::from(amount);
            }
        }
        // After every step the machine and the reference agree.
        let (position, reserved, limit) = hub.payer_view();
        prop_assert_eq!(position, reference.position, "position after {:?}", op);
        prop_assert_eq!(reserved, reference.reserved, "reserved after {:?}", op);
        prop_assert_eq!(limit, reference.limit(), "limit after {:?}", op);
        for (i, payee) in hub.payees.iter().enumerate() {
            prop_assert_eq!(hub.position_of(payee), reference.payees[i]);
        }
        prop_assert_eq!(
            hub.state.transfers.len(),
            reference.open.len(),
            "open transfers"
        );
        hub.state.audit();
    }
    Ok(())
}

fn pick_open(reference: &Reference, pick: Index) -> Option<(TransferId, OpenRef)> {
    if reference.open.is_empty() {
        return None;
    }
    let (id, open) = reference
        .open
        .iter()
        .nth(pick.index(reference.open.len()))?;
    Some((*id, open.clone()))
}

/// The number a test transfer id was made from (its last 12 hex digits).
fn transfer_number(id: &TransferId) -> u64 {
    let text = id.as_str();
    u64::from_str_radix(&text[text.len() - 12..], 16).expect("test ids end in hex")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Every prepare answer, position, reservation and limit matches the reference ledger.
    #[test]
    fn one_payer_matches_the_reference_ledger(
        initial_position in 0i64..=1_000,
        initial_ndc in 0i64..=3_000,
        initial_funds in 0i64..=3_000,
        ops in prop::collection::vec(op(), 1..120),
    ) {
        run(initial_position, initial_ndc, initial_funds, ops)?;
    }
}
