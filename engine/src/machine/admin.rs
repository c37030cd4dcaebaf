//! Operator commands: account creation, activation, limits and funds movements.
//!
//! Participant-wide commands (create an account, activate) reach every partition. Changes of
//! one account's limits or funds run at the account's home, against its bank. An increase
//! applies at once; a decrease (lower NDC, funds-out reserve, an initial position) first
//! gathers all headroom with a recall round, so that no slice keeps an allowance the new
//! limit no longer has. Changes of one account apply, and are acknowledged, in the order
//! they arrived: while one waits, later ones queue behind it and are evaluated when their
//! turn comes. Funds movements are idempotent by funds id, as transfers are by transfer id:
//! the same id with the same body changes nothing, with another body it is refused (3106).

use super::account::{Bank, BankMode, Decrease, FundsRecord, HomeRequest, Money};
use super::{checked_add, checked_sub, Output, ParticipantFlags, PartitionState};
use crate::command::{Admin, ErrorCode, Event, TimestampMs};
use crate::ids::{AccountKey, TransferId};

/// `Ok` on success; `Err((code, message))` for an admin refusal.
type AdminResult = Result<(), (ErrorCode, String)>;

pub(super) enum Change {
    Nothing,
    /// The change moves headroom by `delta`; when negative it waits for a recall round.
    Headroom(Money, Decrease),
}

/// The account an admin change is about; `None` for the participant-wide ones.
fn admin_account(admin: &Admin) -> Option<AccountKey> {
    match admin {
        Admin::CreateAccount { .. }
        | Admin::SetActive { .. }
        | Admin::SetAccountActive { .. }
        | Admin::CloseWindow { .. } => None,
        Admin::Settle { account, .. }
        | Admin::InitialPositionAndLimits { account, .. }
        | Admin::SetNdc { account, .. }
        | Admin::FundsIn { account, .. }
        | Admin::FundsOutReserve { account, .. }
        | Admin::FundsOutCommit { account, .. }
        | Admin::FundsOutAbort { account, .. } => Some(*account),
    }
}

fn admin_err(message: &str) -> (ErrorCode, String) {
    (ErrorCode::Validation, message.to_string())
}

fn check_non_negative(value: i64, what: &str) -> Result<(), (ErrorCode, String)> {
    if value < 0 {
        return Err((
            ErrorCode::Validation,
            format!("{what} must not be negative"),
        ));
    }
    Ok(())
}

fn check_positive(amount: i64) -> Result<(), (ErrorCode, String)> {
    if amount <= 0 {
        return Err((
            ErrorCode::Validation,
            "amount must be greater than zero".into(),
        ));
    }
    Ok(())
}

/// Idempotency of a funds-out reserve, as for transfers: `None` when the funds id is new;
/// `Some(Ok)` when it was used by a reserve of the same amount (whatever became of it
/// since: a resend changes nothing); `Some(Err(3106))` when it was used with another body
/// (another amount, or a funds-in).
fn funds_out_seen(bank: &Bank, funds_id: TransferId, amount: i64) -> Option<AdminResult> {
    let seen = match bank.funds.get(&funds_id)? {
        FundsRecord::In { .. } => None,
        FundsRecord::OutReserved { amount: seen }
        | FundsRecord::OutCommitted { amount: seen }
        | FundsRecord::OutAborted { amount: seen } => Some(*seen),
    };
    if seen == Some(amount) {
        return Some(Ok(()));
    }
    Some(Err((
        ErrorCode::ModifiedRequest,
        "funds transfer id already used".into(),
    )))
}

pub(super) fn admin_done(request_id: u64, result: AdminResult) -> Event {
    match result {
        Ok(()) => Event::AdminDone {
            request_id,
            code: None,
            message: String::new(),
        },
        Err((code, message)) => Event::AdminDone {
            request_id,
            code: Some(code),
            message,
        },
    }
}

impl PartitionState {
    pub(super) fn admin(
        &mut self,
        _now_ms: TimestampMs,
        request_id: u64,
        admin: Admin,
        out: &mut Output,
    ) {
        match admin {
            Admin::CreateAccount { account } => {
                let is_home = self.home_of(&account) == self.partition;
                let entry = self.accounts.entry(account).or_default();
                if is_home && entry.bank.is_none() {
                    entry.bank = Some(Bank::new());
                }
                self.participants
                    .entry(account.fsp)
                    .or_insert(ParticipantFlags { active: true });
                if is_home {
                    out.events.push(admin_done(request_id, Ok(())));
                }
            }
            Admin::SetActive { fsp, active } => {
                self.participants.entry(fsp).or_default().active = active;
                out.events.push(admin_done(request_id, Ok(())));
            }
            Admin::SetAccountActive { account, active } => {
                if active {
                    self.inactive_accounts.remove(&account);
                } else {
                    self.inactive_accounts.insert(account);
                }
                out.events.push(admin_done(request_id, Ok(())));
            }
            Admin::CloseWindow { window } => {
                let result = self.settlement.close(window).map_err(|not_open| {
                    admin_err(&format!(
                        "window {window} is not open on partition {} (window {} is)",
                        self.partition, not_open.open
                    ))
                });
                out.events.push(admin_done(request_id, result));
            }
            other => self.home_admin(request_id, other, out),
        }
    }

    /// An account's admin change whose turn has come (see `home_admin`), evaluated against
    /// the bank as it is now; what it moves of the account's balances goes into the
    /// position ledger.
    pub(super) fn admin_now(&mut self, request_id: u64, admin: Admin, out: &mut Output) {
        let entry = admin_account(&admin).and_then(|account| {
            let (kind, cause) = super::ledger::admin_entry(&admin, request_id)?;
            Some((account, self.home_balances(&account)?, kind, cause))
        });
        self.admin_apply(request_id, admin, out);
        if let Some((account, before, kind, cause)) = entry {
            self.ledger_home(account, before, kind, cause, out);
        }
    }

    fn admin_apply(&mut self, request_id: u64, admin: Admin, out: &mut Output) {
        match admin {
            Admin::CreateAccount { .. }
            | Admin::SetActive { .. }
            | Admin::SetAccountActive { .. }
            | Admin::CloseWindow { .. } => out.events.push(admin_done(
                request_id,
                Err(admin_err("not a change of one account")),
            )),
            Admin::Settle {
                account,
                settlement,
                step,
                net,
            } => self.settle_step(request_id, account, settlement, step, net, out),
            Admin::InitialPositionAndLimits {
                account,
                position,
                ndc,
            } => self.admin_change(request_id, account, out, |bank| {
                if bank.limits_set {
                    return Err(admin_err("initial position and limits are already set"));
                }
                check_non_negative(ndc, "limit")?;
                let delta =
                    Money::from(ndc).min(bank.cover()) - bank.limit() - Money::from(position);
                Ok(Change::Headroom(
                    delta,
                    Decrease::InitialPositionAndLimits { position, ndc },
                ))
            }),
            Admin::SetNdc { account, ndc } => self.admin_change(request_id, account, out, |bank| {
                if !bank.limits_set {
                    return Err(admin_err("set the initial position and limits first"));
                }
                check_non_negative(ndc, "limit")?;
                let delta = Money::from(ndc).min(bank.cover()) - bank.limit();
                Ok(Change::Headroom(delta, Decrease::SetNdc { ndc }))
            }),
            Admin::FundsIn {
                account,
                amount,
                funds_id,
            } => {
                let mut moved = 0;
                self.admin_change(request_id, account, out, |bank| {
                    check_positive(amount)?;
                    match bank.funds.get(&funds_id) {
                        Some(FundsRecord::In { amount: seen }) if *seen == amount => {
                            return Ok(Change::Nothing)
                        }
                        Some(_) => {
                            return Err((
                                ErrorCode::ModifiedRequest,
                                "funds transfer id already used".into(),
                            ))
                        }
                        None => {}
                    }
                    let before = bank.limit();
                    bank.liquidity = checked_add(bank.liquidity, Money::from(amount));
                    bank.bank = checked_add(bank.bank, bank.limit() - before);
                    bank.funds.insert(funds_id, FundsRecord::In { amount });
                    moved = amount;
                    Ok(Change::Nothing)
                });
                // Double entry: the money comes from the hub's reconciliation account.
                let hub = self.settlement.hub_mut(account.currency);
                hub.reconciliation = checked_sub(hub.reconciliation, Money::from(moved));
            }
            Admin::FundsOutReserve {
                account,
                amount,
                funds_id,
            } => self.admin_change(request_id, account, out, |bank| {
                check_positive(amount)?;
                if let Some(seen) = funds_out_seen(bank, funds_id, amount) {
                    return seen.map(|()| Change::Nothing);
                }
                if bank.cover() < Money::from(amount) {
                    return Err((
                        ErrorCode::PayerLiquidity,
                        "insufficient settlement funds".into(),
                    ));
                }
                let delta = (bank.cover() - Money::from(amount)).min(bank.ndc) - bank.limit();
                Ok(Change::Headroom(
                    delta,
                    Decrease::FundsOutReserve { amount, funds_id },
                ))
            }),
            Admin::FundsOutCommit { account, funds_id } => {
                let mut moved = 0;
                self.admin_change(request_id, account, out, |bank| {
                    match bank.funds.get(&funds_id).copied() {
                        Some(FundsRecord::OutReserved { amount }) => {
                            // The cover was already set aside: the limit does not change.
                            bank.funds_out_reserved =
                                checked_sub(bank.funds_out_reserved, Money::from(amount));
                            bank.liquidity = checked_sub(bank.liquidity, Money::from(amount));
                            bank.funds
                                .insert(funds_id, FundsRecord::OutCommitted { amount });
                            moved = amount;
                            Ok(Change::Nothing)
                        }
                        Some(FundsRecord::OutCommitted { .. }) => Ok(Change::Nothing),
                        Some(_) => Err(admin_err("funds out is not reserved")),
                        None => Err((ErrorCode::TransferNotFound, "unknown funds out".into())),
                    }
                });
                // Double entry: the money goes back to the hub's reconciliation account.
                let hub = self.settlement.hub_mut(account.currency);
                hub.reconciliation = checked_add(hub.reconciliation, Money::from(moved));
            }
            Admin::FundsOutAbort { account, funds_id } => {
                self.admin_change(request_id, account, out, |bank| {
                    match bank.funds.get(&funds_id).copied() {
                        Some(FundsRecord::OutReserved { amount }) => {
                            let before = bank.limit();
                            bank.funds_out_reserved =
                                checked_sub(bank.funds_out_reserved, Money::from(amount));
                            bank.bank = checked_add(bank.bank, bank.limit() - before);
                            bank.funds
                                .insert(funds_id, FundsRecord::OutAborted { amount });
                            Ok(Change::Nothing)
                        }
                        Some(FundsRecord::OutAborted { .. }) => Ok(Change::Nothing),
                        Some(_) => Err(admin_err("funds out is not reserved")),
                        None => Err((ErrorCode::TransferNotFound, "unknown funds out".into())),
                    }
                })
            }
        }
    }

    /// Takes an admin change of one account at its home, in arrival order.
    ///
    /// Every admin change of an account applies, and is acknowledged, in the order the
    /// commands arrived. A decrease may have to wait for a recall round (`admin_change`);
    /// while any admin change of the account waits in the bank queue, later ones queue
    /// behind it (as `HomeRequest::Admin`), even increases that could apply at once:
    /// otherwise an increase acknowledged meanwhile would be undone when the older decrease
    /// lands. A queued change is evaluated only when its turn comes, since the world may
    /// have moved (the decrease before it changed the limit, a funds id got used).
    fn home_admin(&mut self, request_id: u64, admin: Admin, out: &mut Output) {
        let Some(account) = admin_account(&admin) else {
            return self.admin_now(request_id, admin, out);
        };
        assert_eq!(
            self.home_of(&account),
            self.partition,
            "admin command routed to a non-home partition"
        );
        if let Some(bank) = self.bank_mut(&account) {
            if bank.queue.iter().any(HomeRequest::is_admin) {
                bank.queue
                    .push_back(HomeRequest::Admin { request_id, admin });
                return;
            }
        }
        self.admin_now(request_id, admin, out);
    }

    /// Runs an admin change at the account's home. Increases apply at once; a decrease
    /// first gathers all headroom (a recall round) so that no slice can spend headroom the
    /// new limit no longer has.
    pub(super) fn admin_change(
        &mut self,
        request_id: u64,
        account: AccountKey,
        out: &mut Output,
        change: impl FnOnce(&mut Bank) -> Result<Change, (ErrorCode, String)>,
    ) {
        let Some(bank) = self.bank_mut(&account) else {
            out.events.push(admin_done(
                request_id,
                Err((ErrorCode::Validation, "unknown account".into())),
            ));
            return;
        };
        match change(bank) {
            Err(error) => out.events.push(admin_done(request_id, Err(error))),
            Ok(Change::Nothing) => {
                out.events.push(admin_done(request_id, Ok(())));
                self.maybe_decentralise(account);
            }
            Ok(Change::Headroom(delta, decrease)) => {
                if delta >= 0 || bank.mode == BankMode::Centralised {
                    let result = self.apply_decrease(account, decrease);
                    out.events.push(admin_done(request_id, result));
                    self.maybe_decentralise(account);
                } else {
                    let recalling = matches!(bank.mode, BankMode::Recalling { .. });
                    bank.queue.push_back(HomeRequest::Decrease {
                        request_id,
                        change: decrease,
                    });
                    if !recalling {
                        self.start_recall(account, out);
                    }
                }
            }
        }
    }

    /// Applies a limit or position change to the bank (re-validating: the world may have
    /// moved while it waited for a recall round).
    pub(super) fn apply_decrease(&mut self, account: AccountKey, change: Decrease) -> AdminResult {
        // Borrowed field by field: a settlement step also writes the settlement book.
        let Some(bank) = self
            .accounts
            .get_mut(&account)
            .and_then(|e| e.bank.as_mut())
        else {
            return Err((ErrorCode::Validation, "unknown account".into()));
        };
        let before = bank.limit();
        match change {
            Decrease::SetNdc { ndc } => {
                bank.ndc = Money::from(ndc);
                bank.bank = checked_add(bank.bank, bank.limit() - before);
            }
            Decrease::InitialPositionAndLimits { position, ndc } => {
                if bank.limits_set {
                    return Err(admin_err("initial position and limits are already set"));
                }
                bank.limits_set = true;
                bank.ndc = Money::from(ndc);
                bank.base_position = checked_add(bank.base_position, Money::from(position));
                bank.bank = checked_add(bank.bank, bank.limit() - before - Money::from(position));
            }
            Decrease::FundsOutReserve { amount, funds_id } => {
                // Checked again: another request with this id may have been applied while
                // this one waited for its recall round.
                if let Some(seen) = funds_out_seen(bank, funds_id, amount) {
                    return seen;
                }
                if bank.cover() < Money::from(amount) {
                    return Err((
                        ErrorCode::PayerLiquidity,
                        "insufficient settlement funds".into(),
                    ));
                }
                bank.funds_out_reserved = checked_add(bank.funds_out_reserved, Money::from(amount));
                bank.bank = checked_add(bank.bank, bank.limit() - before);
                bank.funds
                    .insert(funds_id, FundsRecord::OutReserved { amount });
            }
            Decrease::SettleReserve { settlement, net } => {
                return super::settlement::apply_reserve(
                    &mut self.settlement,
                    bank,
                    account,
                    settlement,
                    net,
                );
            }
        }
        Ok(())
    }
}
