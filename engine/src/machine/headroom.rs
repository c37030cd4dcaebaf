//! The headroom protocol between partitions (DESIGN §5): the slice side and the home side.
//!
//! A slice reserves only from its own headroom. When it is short it parks the prepare and
//! sends a `Borrow` to the account's home; the home's bank answers with a `Grant` (it
//! lowered itself first) or a `Deny`. Slices give headroom back with `Return`: when idle,
//! when centralised (every credit and release goes straight back) and when the home sends
//! a `Recall`. A recall round gathers all free headroom at the bank; once every partition
//! has answered, the account is *centralised* and the home can grant exactly or refuse
//! without a false rejection, and apply limit decreases. Every message moves headroom from
//! a giver that lowered itself first to a receiver that raises itself when the message is
//! applied, so for every account, at every step:
//! `bank + Σ slice headroom + in flight = limit − position − reserved`.
//!
//! Peer messages are input like any other: none may panic a partition, because the
//! runtime re-sends an unconfirmed message after every restart and one that panics would
//! keep its receiver down for good. An account may be unknown where a message lands
//! (creation reaches the partitions one by one), so every home-side handler looks the
//! bank up with `bank_mut` and answers or refuses without one (see there).

use super::account::{Bank, BankMode, HomeRequest, Money};
use super::admin::admin_done;
use super::{checked_add, checked_sub, Denial, Fault, Output, PartitionState};
use crate::command::{ErrorCode, PeerMessage, TimestampMs};
use crate::ids::{AccountKey, TransferId};

impl PartitionState {
    // ----- slice side: borrowing, serving parked prepares, giving back ------------------

    /// Sends the borrows the payer's parked prepares need: one per parked prepare while
    /// centralised, one at a time (with a demand-sized chunk) while distributed.
    pub(super) fn request_borrows(&mut self, account: AccountKey, out: &mut Output) {
        let home = self.home_of(&account);
        let slice = &mut self.accounts.get_mut(&account).expect("account").slice;
        let mut borrows = Vec::new();
        if slice.centralised {
            for parked in slice.parked.iter_mut().filter(|p| !p.borrow_sent) {
                parked.borrow_sent = true;
                borrows.push((parked.prepare.transfer_id, parked.prepare.amount, 0));
            }
        } else if !slice.parked.iter().any(|p| p.borrow_sent) {
            if let Some(first) = slice.parked.front_mut() {
                first.borrow_sent = true;
                let first_id = first.prepare.transfer_id;
                let first_amount = first.prepare.amount;
                let rest: i64 = slice.parked.iter().skip(1).map(|p| p.prepare.amount).sum();
                let demand = i64::try_from(slice.recent_demand).unwrap_or(i64::MAX);
                let extra = rest.saturating_add(demand).saturating_add(first_amount);
                slice.recent_demand = 0;
                borrows.push((first_id, first_amount, extra));
            }
        }
        for (transfer_id, amount, extra) in borrows {
            self.send(
                home,
                PeerMessage::Borrow {
                    account,
                    transfer_id,
                    amount,
                    extra,
                },
                out,
            );
        }
    }

    /// Serves parked prepares in order while headroom lasts (distributed slices), then
    /// settles the slice.
    pub(super) fn serve_parked(
        &mut self,
        now_ms: TimestampMs,
        account: AccountKey,
        out: &mut Output,
    ) {
        loop {
            let slice = &mut self.accounts.get_mut(&account).expect("account").slice;
            if slice.centralised {
                // Each parked prepare has its own exact borrow out at the home; serving one
                // from a local credit would leave its grant travelling unused while the
                // home refuses others (a false rejection). Credits go back via `settle`.
                break;
            }
            let Some(front) = slice.parked.front() else {
                break;
            };
            if slice.headroom < Money::from(front.prepare.amount) {
                break;
            }
            let parked = slice.parked.pop_front().expect("front exists");
            self.parked_count -= 1;
            self.reserve(now_ms, parked.prepare, out);
        }
        self.request_borrows(account, out);
    }

    /// A centralised slice keeps no free headroom between steps: give it back.
    pub(super) fn settle(&mut self, account: AccountKey, out: &mut Output) {
        let home = self.home_of(&account);
        let slice = &mut self.accounts.get_mut(&account).expect("account").slice;
        if slice.centralised && slice.headroom > 0 {
            let amount = slice.headroom;
            slice.headroom = 0;
            self.send_return(home, account, amount, None, out);
        }
    }

    pub(super) fn send_return(
        &mut self,
        home: u32,
        account: AccountKey,
        amount: Money,
        round: Option<u64>,
        out: &mut Output,
    ) {
        let amount = i64::try_from(amount).expect("returned headroom fits in i64");
        self.send(
            home,
            PeerMessage::Return {
                account,
                amount,
                round,
            },
            out,
        );
    }

    pub(super) fn slice_grant(
        &mut self,
        account: AccountKey,
        transfer_id: TransferId,
        amount: i64,
        distributed: bool,
        round: u64,
        out: &mut Output,
    ) {
        assert!(amount >= 0, "negative grant");
        let slice = &mut self.accounts.entry(account).or_default().slice;
        slice.headroom = checked_add(slice.headroom, Money::from(amount));
        if distributed && round >= slice.round_seen {
            slice.centralised = false;
        }
        let centralised = slice.centralised;
        let mut granted = None;
        if let Some(index) = slice
            .parked
            .iter()
            .position(|p| p.prepare.transfer_id == transfer_id)
        {
            slice.parked[index].borrow_sent = false;
            granted = Some(index);
        }
        let now_ms = slice.last_used_ms;
        if centralised {
            // Exactly this prepare, if it still waits; everything else goes back.
            if let Some(index) = granted {
                let fits = slice.headroom >= Money::from(slice.parked[index].prepare.amount);
                if fits {
                    let parked = slice.parked.remove(index).expect("index in range");
                    self.parked_count -= 1;
                    self.reserve(now_ms, parked.prepare, out);
                }
            }
            self.request_borrows(account, out);
            self.settle(account, out);
        } else {
            self.serve_parked(now_ms, account, out);
        }
    }

    pub(super) fn slice_deny(
        &mut self,
        account: AccountKey,
        transfer_id: TransferId,
        code: ErrorCode,
        out: &mut Output,
    ) {
        if !self.accounts.contains_key(&account) {
            return;
        }
        // A grant may have served it already: then the deny is moot.
        let slice = &self.accounts[&account].slice;
        let waiting = slice
            .parked
            .iter()
            .any(|p| p.prepare.transfer_id == transfer_id && p.borrow_sent);
        if waiting {
            let expiration_ms = self
                .transfers
                .get(&transfer_id)
                .map(|t| t.expiration_ms)
                .unwrap_or(0);
            self.refuse_parked(account, transfer_id, code, expiration_ms, out);
        }
        let now_ms = self.accounts[&account].slice.last_used_ms;
        self.serve_parked(now_ms, account, out);
        self.settle(account, out);
    }

    pub(super) fn slice_recall(&mut self, account: AccountKey, round: u64, out: &mut Output) {
        let home = self.home_of(&account);
        let slice = &mut self.accounts.entry(account).or_default().slice;
        if round > slice.round_seen {
            slice.round_seen = round;
        }
        slice.centralised = true;
        let amount = slice.headroom;
        slice.headroom = 0;
        slice.recent_demand = 0;
        self.send_return(home, account, amount, Some(round), out);
        self.request_borrows(account, out);
    }

    // ----- home side: the bank ----------------------------------------------------------
    //
    // A home-side handler finds no bank when the account was not (yet) created here (or
    // the message reached a partition that is not the home); it then answers without ever
    // moving headroom out of existence:
    //
    // - a borrow is denied (3100), so its parked prepare is refused;
    // - a return (idle, settle, or a recall answer) creates the bank, exactly as
    //   `Admin::CreateAccount` would at the home, and adds the amount: the headroom is
    //   kept, and the creation, when it arrives, keeps the bank it finds;
    // - a message that reached a partition which is not the account's home (only possible
    //   if sender and receiver disagree about the routing) is refused (borrow) or passed
    //   on to the home (return), so headroom never rests where no bank can count it.

    /// The bank of an account, if this partition holds one for it.
    pub(super) fn bank_mut(&mut self, account: &AccountKey) -> Option<&mut Bank> {
        self.accounts.get_mut(account).and_then(|e| e.bank.as_mut())
    }

    /// Refuses a borrow: the slice refuses the parked prepare it was for.
    fn deny(
        &mut self,
        to: u32,
        account: AccountKey,
        transfer_id: TransferId,
        code: ErrorCode,
        out: &mut Output,
    ) {
        self.send(
            to,
            PeerMessage::Deny {
                account,
                transfer_id,
                code,
            },
            out,
        );
    }

    pub(super) fn home_borrow(
        &mut self,
        account: AccountKey,
        request: HomeRequest,
        out: &mut Output,
    ) {
        let HomeRequest::Borrow {
            from,
            transfer_id,
            amount,
            extra,
            ..
        } = request
        else {
            unreachable!("only borrows arrive here")
        };
        let is_home = self.home_of(&account) == self.partition;
        let Some(bank) = self.bank_mut(&account).filter(|_| is_home) else {
            // Not (yet) created at its home, or not the home at all: refuse the prepare.
            self.deny(from, account, transfer_id, ErrorCode::Validation, out);
            return;
        };
        match bank.mode {
            BankMode::Recalling { .. } => bank.queue.push_back(request),
            BankMode::Centralised => self.home_decide(account, request, out),
            BankMode::Distributed => {
                let amount_m = Money::from(amount);
                if bank.bank >= amount_m {
                    // Grant the amount plus at most half of what would remain, so one slice
                    // cannot drain the bank for everyone else.
                    let spare = (bank.bank - amount_m) / 2;
                    let grant = amount_m + Money::from(extra).min(spare);
                    bank.bank = checked_sub(bank.bank, grant);
                    let round = bank.round;
                    let grant = i64::try_from(grant).expect("grant fits in i64");
                    self.send(
                        from,
                        PeerMessage::Grant {
                            account,
                            transfer_id,
                            amount: grant,
                            distributed: true,
                            round,
                        },
                        out,
                    );
                } else {
                    bank.queue.push_back(request);
                    self.start_recall(account, out);
                }
            }
        }
    }

    pub(super) fn start_recall(&mut self, account: AccountKey, out: &mut Output) {
        let partitions = self.partitions;
        let Some(bank) = self.bank_mut(&account) else {
            return; // no bank, nothing to gather it into
        };
        bank.round += 1;
        let round = bank.round;
        bank.mode = BankMode::Recalling {
            round,
            waiting_for: (0..partitions).collect(),
        };
        for to in 0..partitions {
            self.send(to, PeerMessage::Recall { account, round }, out);
        }
    }

    pub(super) fn home_return(
        &mut self,
        from: u32,
        account: AccountKey,
        amount: i64,
        round: Option<u64>,
        out: &mut Output,
    ) {
        assert!(amount >= 0, "negative return");
        let home = self.home_of(&account);
        if home != self.partition {
            // Misrouted: pass the headroom on to the home as a plain return (a recall
            // answer counts only from the partition that was asked).
            self.send_return(home, account, Money::from(amount), None, out);
            return;
        }
        // The home may not have the bank yet (see above): create it as the creation would.
        let bank = self
            .accounts
            .entry(account)
            .or_default()
            .bank
            .get_or_insert_with(Bank::new);
        bank.bank = checked_add(bank.bank, Money::from(amount));
        let mut complete = false;
        if let (
            BankMode::Recalling {
                round: current,
                waiting_for,
            },
            Some(answer),
        ) = (&mut bank.mode, round)
        {
            if answer == *current {
                waiting_for.remove(&from);
                complete = waiting_for.is_empty();
            }
        }
        if complete {
            bank.mode = BankMode::Centralised;
            let queue = std::mem::take(&mut bank.queue);
            for request in queue {
                // A decision may have started another round: the rest wait for it.
                if let Some(bank) = self.bank_mut(&account) {
                    if matches!(bank.mode, BankMode::Recalling { .. }) {
                        bank.queue.push_back(request);
                        continue;
                    }
                }
                self.home_decide(account, request, out);
            }
        }
        self.maybe_decentralise(account);
    }

    /// Decides a request while centralised: the bank is all the free headroom there is.
    fn home_decide(&mut self, account: AccountKey, request: HomeRequest, out: &mut Output) {
        match request {
            HomeRequest::Borrow {
                from,
                transfer_id,
                amount,
                extra,
                since_round,
            } => {
                let skip_limit_check = self.fault == Fault::SkipLimitCheck;
                let Some(bank) = self.bank_mut(&account) else {
                    self.deny(from, account, transfer_id, ErrorCode::Validation, out);
                    return;
                };
                let amount_m = Money::from(amount);
                if bank.bank < amount_m && !skip_limit_check && bank.round <= since_round {
                    // Not yet proven short: gather once more before refusing.
                    bank.queue.push_back(HomeRequest::Borrow {
                        from,
                        transfer_id,
                        amount,
                        extra,
                        since_round,
                    });
                    if !matches!(bank.mode, BankMode::Recalling { .. }) {
                        self.start_recall(account, out);
                    }
                    return;
                }
                if bank.bank >= amount_m || skip_limit_check {
                    bank.bank = checked_sub(bank.bank, amount_m);
                    let round = bank.round;
                    self.send(
                        from,
                        PeerMessage::Grant {
                            account,
                            transfer_id,
                            amount,
                            distributed: false,
                            round,
                        },
                        out,
                    );
                } else {
                    // Liquidity is checked first, as central-ledger does.
                    let used = bank.limit() - bank.bank;
                    let code = if bank.cover() - used < amount_m {
                        ErrorCode::PayerLiquidity
                    } else {
                        ErrorCode::PayerLimit
                    };
                    out.denials.push(Denial {
                        account,
                        amount,
                        bank: bank.bank,
                    });
                    self.send(
                        from,
                        PeerMessage::Deny {
                            account,
                            transfer_id,
                            code,
                        },
                        out,
                    );
                }
            }
            HomeRequest::Decrease { request_id, change } => {
                let entry = super::ledger::decrease_entry(&change, request_id);
                let before = self.home_balances(&account);
                let result = self.apply_decrease(account, change);
                if let (Some((kind, cause)), Some(before)) = (entry, before) {
                    self.ledger_home(account, before, kind, cause, out);
                }
                out.events.push(admin_done(request_id, result));
            }
            // Its turn has come: evaluated now, and it may itself wait for a round.
            HomeRequest::Admin { request_id, admin } => self.admin_now(request_id, admin, out),
        }
        self.maybe_decentralise(account);
    }

    pub(super) fn maybe_decentralise(&mut self, account: AccountKey) {
        let pct = self.limits.centralise_exit_pct;
        let Some(bank) = self.bank_mut(&account) else {
            return;
        };
        if bank.mode == BankMode::Centralised && bank.queue.is_empty() {
            let threshold = (bank.limit() * Money::from(pct) / 100).max(1);
            if bank.bank >= threshold {
                bank.mode = BankMode::Distributed;
            }
        }
    }
}
