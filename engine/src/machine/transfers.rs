//! The life of a transfer on its own partition: prepare, fulfil, reject, abort and expiry.
//!
//! A transfer lives on exactly one partition, and every step of it is a local step there.
//! A prepare is checked for duplicates first (an identical resend must get the state again,
//! not a refusal for some other reason), then validated, then reserved from the payer's
//! slice on this partition, or parked until the slice borrows enough from the payer's home
//! (`headroom.rs`). A fulfil turns the payer's reservation into position and credits the
//! payee's slice here; a reject, a wrong fulfilment or the expiry releases the reservation.
//! Every final state is recorded as a `FinishedTransfer`, refusals of parked prepares
//! included, so that a resend gets the same answer.

use super::account::{Money, OpenTransfer, Parked};
use super::{checked_add, checked_sub, Fault, Output, PartitionState};
use crate::command::{
    BodyHash, ErrorCode, Event, FinishedTransfer, Fulfil, Parties, Prepare, Reject, TimestampMs,
    TransferState,
};
use crate::ids::{AccountKey, FspId, TransferId};
use crate::ledger::{Cause, EntryKind};
use sha2::{Digest, Sha256};

impl PartitionState {
    fn account_usable(&self, account: &AccountKey) -> bool {
        self.accounts.contains_key(account)
            && !self.inactive_accounts.contains(account)
            && self
                .participants
                .get(&account.fsp)
                .is_some_and(|flags| flags.active)
    }

    /// The archived record of a transfer, if the runtime found one that is still inside
    /// the retention window and was finished by an earlier batch.
    fn finished_record(
        &self,
        transfer_id: &TransferId,
        prior: Option<FinishedTransfer>,
        now_ms: TimestampMs,
    ) -> Option<FinishedTransfer> {
        if let Some(record) = self.finished_in_batch.get(transfer_id) {
            return Some(record.clone());
        }
        prior.filter(|record| {
            record.parties.transfer_id == *transfer_id
                && record.finished_batch < self.batch_seq
                && record.finished_ms.saturating_add(self.limits.retention_ms) > now_ms
        })
    }

    pub(super) fn prepare(
        &mut self,
        now_ms: TimestampMs,
        prepare: Prepare,
        prior: Option<FinishedTransfer>,
        out: &mut Output,
    ) {
        let transfer_id = prepare.transfer_id;
        let parties = Parties {
            transfer_id,
            payer: prepare.payer,
            payee: prepare.payee,
            currency: prepare.currency,
            amount: prepare.amount,
        };
        // Duplicates first: an identical resend must not be refused for other reasons.
        if let Some(open) = self.transfers.get(&transfer_id) {
            if open.prepare_hash != prepare.body_hash {
                out.events.push(Event::RequestRefused {
                    transfer_id,
                    to: prepare.payer,
                    code: ErrorCode::ModifiedRequest,
                });
            } else if open.reserved {
                out.events.push(Event::StateResent {
                    parties: open.parties,
                    to: prepare.payer,
                    state: TransferState::Reserved,
                    fulfilment: None,
                    completed_ms: None,
                });
            }
            // Same body, still waiting for headroom: in progress, ignored.
            return;
        }
        if let Some(record) = self.finished_record(&transfer_id, prior, now_ms) {
            if record.prepare_hash != prepare.body_hash {
                out.events.push(Event::RequestRefused {
                    transfer_id,
                    to: prepare.payer,
                    code: ErrorCode::ModifiedRequest,
                });
            } else {
                out.events.push(state_resent(&record, prepare.payer));
            }
            return;
        }
        let refuse = |code: ErrorCode, out: &mut Output, prepare: Prepare| {
            out.events.push(Event::PrepareRefused {
                parties,
                code,
                payload: prepare.payload,
            });
        };
        let payer = AccountKey::new(prepare.payer, prepare.currency);
        let payee = AccountKey::new(prepare.payee, prepare.currency);
        if prepare.payer == prepare.payee
            || prepare.amount <= 0
            || prepare.expiration_ms <= now_ms
            || prepare.payload.len() > self.limits.payload_bytes_max
            || !self.account_usable(&payer)
            || !self.account_usable(&payee)
        {
            return refuse(ErrorCode::Validation, out, prepare);
        }
        if self.transfers.len() >= self.limits.open_transfers_max {
            return refuse(ErrorCode::ServiceUnavailable, out, prepare);
        }
        let entry = self
            .accounts
            .get_mut(&payer)
            .expect("payer account checked above");
        let slice = &mut entry.slice;
        let fits = slice.parked.is_empty() && slice.headroom >= Money::from(prepare.amount);
        if !fits && self.parked_count >= self.limits.parked_prepares_max {
            return refuse(ErrorCode::ServiceUnavailable, out, prepare);
        }
        self.transfers.insert(
            transfer_id,
            OpenTransfer {
                parties,
                condition: prepare.condition,
                expiration_ms: prepare.expiration_ms,
                prepare_hash: prepare.body_hash,
                reserved: false,
            },
        );
        self.expiry.insert((prepare.expiration_ms, transfer_id));
        if fits {
            self.reserve(now_ms, prepare, out);
        } else {
            self.parked_count += 1;
            let slice = &mut self.accounts.get_mut(&payer).expect("payer account").slice;
            slice.parked.push_back(Parked {
                prepare,
                borrow_sent: false,
            });
            self.request_borrows(payer, out);
        }
    }

    /// Reserves a prepare from its payer's slice. The caller checked the headroom.
    pub(super) fn reserve(&mut self, now_ms: TimestampMs, prepare: Prepare, out: &mut Output) {
        let payer = AccountKey::new(prepare.payer, prepare.currency);
        let amount = Money::from(prepare.amount);
        let slice = &mut self.accounts.get_mut(&payer).expect("payer account").slice;
        assert!(slice.headroom >= amount, "reserve beyond slice headroom");
        slice.headroom = checked_sub(slice.headroom, amount);
        slice.reserved = checked_add(slice.reserved, amount);
        slice.last_used_ms = now_ms;
        slice.recent_demand = checked_add(slice.recent_demand, amount);
        self.ledger_slice(
            payer,
            EntryKind::Reserve,
            Cause::Transfer(prepare.transfer_id),
            0,
            prepare.amount,
            out,
        );
        let open = self
            .transfers
            .get_mut(&prepare.transfer_id)
            .expect("open transfer");
        assert!(
            !open.reserved,
            "transfer {} reserved twice",
            prepare.transfer_id
        );
        open.reserved = true;
        out.reservations.push((payer, prepare.amount));
        out.events.push(Event::Reserved {
            parties: open.parties,
            expiration_ms: prepare.expiration_ms,
            payload: prepare.payload,
        });
    }

    pub(super) fn fulfil(
        &mut self,
        now_ms: TimestampMs,
        fulfil: Fulfil,
        prior: Option<FinishedTransfer>,
        out: &mut Output,
    ) {
        let transfer_id = fulfil.transfer_id;
        let Some(open) = self.transfers.get(&transfer_id) else {
            return self.late_final(
                transfer_id,
                fulfil.source,
                fulfil.body_hash,
                prior,
                now_ms,
                out,
            );
        };
        if let Some(code) = payee_refusal(open, fulfil.source, now_ms) {
            return self.refuse_payee(transfer_id, fulfil.source, code, now_ms, out);
        }
        let open = open.clone();
        let digest: [u8; 32] = Sha256::digest(fulfil.fulfilment).into();
        if digest != open.condition {
            self.abort(
                now_ms,
                transfer_id,
                ErrorCode::Validation,
                true,
                Some(fulfil.body_hash),
                fulfil.payload,
                out,
            );
            return;
        }
        let parties = open.parties;
        let amount = Money::from(parties.amount);
        let payer = AccountKey::new(parties.payer, parties.currency);
        let payee = AccountKey::new(parties.payee, parties.currency);
        {
            let slice = &mut self.accounts.get_mut(&payer).expect("payer account").slice;
            slice.reserved = checked_sub(slice.reserved, amount);
            assert!(slice.reserved >= 0, "payer reserved went negative");
            slice.position = checked_add(slice.position, amount);
        }
        let cause = Cause::Transfer(transfer_id);
        self.ledger_slice(
            payer,
            EntryKind::Commit,
            cause,
            parties.amount,
            -parties.amount,
            out,
        );
        {
            // The payee's credit raises its headroom on this very partition.
            let slice = &mut self.accounts.get_mut(&payee).expect("payee account").slice;
            slice.position = checked_sub(slice.position, amount);
            slice.headroom = checked_add(slice.headroom, amount);
        }
        if self.fault != Fault::LedgerDropsCredit {
            self.ledger_slice(payee, EntryKind::Credit, cause, -parties.amount, 0, out);
        }
        let count_twice = self.fault == Fault::CountCommitTwice;
        self.settlement
            .record_commit(payer, payee, amount, count_twice);
        self.close(transfer_id, open.expiration_ms);
        let record = FinishedTransfer {
            parties,
            state: TransferState::Committed,
            fulfilment: Some(fulfil.fulfilment),
            completed_ms: Some(fulfil.completed_ms),
            error_code: None,
            prepare_hash: open.prepare_hash,
            final_hash: Some(fulfil.body_hash),
            finished_ms: now_ms,
            finished_batch: self.batch_seq,
        };
        self.finish(record, out);
        out.events.push(Event::Committed {
            parties,
            fulfilment: fulfil.fulfilment,
            completed_ms: fulfil.completed_ms,
            notify_payee: fulfil.notify_payee,
            payload: fulfil.payload,
        });
        self.serve_parked(now_ms, payee, out);
        self.settle(payee, out);
    }

    pub(super) fn reject(
        &mut self,
        now_ms: TimestampMs,
        reject: Reject,
        prior: Option<FinishedTransfer>,
        out: &mut Output,
    ) {
        let transfer_id = reject.transfer_id;
        let Some(open) = self.transfers.get(&transfer_id) else {
            return self.late_final(
                transfer_id,
                reject.source,
                reject.body_hash,
                prior,
                now_ms,
                out,
            );
        };
        if let Some(code) = payee_refusal(open, reject.source, now_ms) {
            return self.refuse_payee(transfer_id, reject.source, code, now_ms, out);
        }
        let code = ErrorCode::Payee(reject.error_code);
        self.abort(
            now_ms,
            transfer_id,
            code,
            false,
            Some(reject.body_hash),
            reject.payload,
            out,
        );
    }

    /// Refuses a payee's fulfil or reject of an open transfer with `code` (from
    /// [`payee_refusal`]); a late one also times the transfer out now rather than at the
    /// next tick.
    fn refuse_payee(
        &mut self,
        transfer_id: TransferId,
        source: FspId,
        code: ErrorCode,
        now_ms: TimestampMs,
        out: &mut Output,
    ) {
        out.events.push(Event::RequestRefused {
            transfer_id,
            to: source,
            code,
        });
        if code == ErrorCode::TransferExpired {
            self.abort(
                now_ms,
                transfer_id,
                ErrorCode::TransferExpired,
                true,
                None,
                Vec::new(),
                out,
            );
        }
    }

    /// A fulfil or reject for a transfer that is not open here.
    fn late_final(
        &mut self,
        transfer_id: TransferId,
        source: FspId,
        body_hash: BodyHash,
        prior: Option<FinishedTransfer>,
        now_ms: TimestampMs,
        out: &mut Output,
    ) {
        let code = match self.finished_record(&transfer_id, prior, now_ms) {
            None => ErrorCode::TransferNotFound,
            Some(record) if record.final_hash == Some(body_hash) => {
                out.events.push(state_resent(&record, source));
                return;
            }
            Some(record)
                if record.final_hash.is_none()
                    && record.error_code == Some(ErrorCode::TransferExpired) =>
            {
                ErrorCode::TransferExpired
            }
            // Refused at prepare (never reserved): there is nothing to fulfil or reject.
            Some(record) if record.final_hash.is_none() => ErrorCode::Validation,
            Some(_) => ErrorCode::ModifiedRequest,
        };
        out.events.push(Event::RequestRefused {
            transfer_id,
            to: source,
            code,
        });
    }

    /// Releases a reservation and finishes the transfer as ABORTED.
    #[allow(clippy::too_many_arguments)]
    fn abort(
        &mut self,
        now_ms: TimestampMs,
        transfer_id: TransferId,
        code: ErrorCode,
        notify_payee: bool,
        final_hash: Option<BodyHash>,
        payload: Vec<u8>,
        out: &mut Output,
    ) {
        let open = self
            .transfers
            .get(&transfer_id)
            .expect("open transfer")
            .clone();
        assert!(open.reserved, "abort of a transfer that was never reserved");
        let parties = open.parties;
        let payer = AccountKey::new(parties.payer, parties.currency);
        let amount = Money::from(parties.amount);
        {
            let slice = &mut self.accounts.get_mut(&payer).expect("payer account").slice;
            slice.reserved = checked_sub(slice.reserved, amount);
            assert!(slice.reserved >= 0, "payer reserved went negative");
            slice.headroom = checked_add(slice.headroom, amount);
        }
        self.ledger_slice(
            payer,
            EntryKind::Release,
            Cause::Transfer(transfer_id),
            0,
            -parties.amount,
            out,
        );
        self.close(transfer_id, open.expiration_ms);
        let record = FinishedTransfer {
            parties,
            state: TransferState::Aborted,
            fulfilment: None,
            completed_ms: None,
            error_code: Some(code),
            prepare_hash: open.prepare_hash,
            final_hash,
            finished_ms: now_ms,
            finished_batch: self.batch_seq,
        };
        self.finish(record, out);
        out.events.push(Event::Aborted {
            parties,
            code,
            notify_payee,
            payload,
        });
        self.serve_parked(now_ms, payer, out);
        self.settle(payer, out);
    }

    fn close(&mut self, transfer_id: TransferId, expiration_ms: TimestampMs) {
        self.transfers.remove(&transfer_id);
        self.expiry.remove(&(expiration_ms, transfer_id));
    }

    fn finish(&mut self, record: FinishedTransfer, out: &mut Output) {
        self.finished_in_batch
            .insert(record.parties.transfer_id, record.clone());
        out.finished.push(record);
    }

    /// Refuses a parked prepare and forgets it.
    ///
    /// The refusal is the transfer's final state (ABORTED with `code`): it is recorded like
    /// any finished transfer, so a resend of the same prepare gets the same answer instead
    /// of being treated as new. `finished_ms` is the hub time of the refusal, or, when the
    /// deciding message carries no time, the transfer's expiration (which only lengthens
    /// its retention a little).
    pub(super) fn refuse_parked(
        &mut self,
        account: AccountKey,
        transfer_id: TransferId,
        code: ErrorCode,
        finished_ms: TimestampMs,
        out: &mut Output,
    ) -> bool {
        let slice = &mut self.accounts.get_mut(&account).expect("account").slice;
        let Some(index) = slice
            .parked
            .iter()
            .position(|p| p.prepare.transfer_id == transfer_id)
        else {
            return false;
        };
        let parked = slice.parked.remove(index).expect("index in range");
        self.parked_count -= 1;
        let open = self
            .transfers
            .get(&transfer_id)
            .expect("parked transfer is open")
            .clone();
        self.close(transfer_id, open.expiration_ms);
        let record = FinishedTransfer {
            parties: open.parties,
            state: TransferState::Aborted,
            fulfilment: None,
            completed_ms: None,
            error_code: Some(code),
            prepare_hash: open.prepare_hash,
            final_hash: None,
            finished_ms,
            finished_batch: self.batch_seq,
        };
        self.finish(record, out);
        out.events.push(Event::PrepareRefused {
            parties: open.parties,
            code,
            payload: parked.prepare.payload,
        });
        true
    }

    pub(super) fn tick(&mut self, now_ms: TimestampMs, out: &mut Output) {
        // Expire everything due, oldest first.
        while let Some(&(expiration_ms, transfer_id)) = self.expiry.first() {
            if expiration_ms > now_ms {
                break;
            }
            let open = self
                .transfers
                .get(&transfer_id)
                .expect("expiry index matches open transfers")
                .clone();
            if open.reserved {
                self.abort(
                    now_ms,
                    transfer_id,
                    ErrorCode::TransferExpired,
                    true,
                    None,
                    Vec::new(),
                    out,
                );
            } else {
                let payer = AccountKey::new(open.parties.payer, open.parties.currency);
                let refused =
                    self.refuse_parked(payer, transfer_id, ErrorCode::TransferExpired, now_ms, out);
                assert!(
                    refused,
                    "unreserved open transfer {transfer_id} is not parked"
                );
            }
        }
        // Idle distributed slices give their headroom back to the bank.
        let idle_ms = self.limits.idle_return_ms;
        let idle: Vec<AccountKey> = self
            .accounts
            .iter()
            .filter(|(_, e)| {
                let s = &e.slice;
                !s.centralised
                    && s.headroom > 0
                    && s.parked.is_empty()
                    && s.last_used_ms.saturating_add(idle_ms) <= now_ms
            })
            .map(|(k, _)| *k)
            .collect();
        for account in idle {
            let home = self.home_of(&account);
            if home == self.partition {
                continue; // the home's own slice may keep working capital
            }
            let slice = &mut self.accounts.get_mut(&account).expect("account").slice;
            let amount = slice.headroom;
            slice.headroom = 0;
            slice.recent_demand = 0;
            self.send_return(home, account, amount, None, out);
        }
    }
}

fn state_resent(record: &FinishedTransfer, to: FspId) -> Event {
    Event::StateResent {
        parties: record.parties,
        to,
        state: record.state,
        fulfilment: record.fulfilment,
        completed_ms: record.completed_ms,
    }
}

/// Why `source` may not fulfil or reject the open transfer now, if it may not: only the
/// payee of a reserved transfer may (else 3100), and only before its expiration (else
/// 3303).
fn payee_refusal(open: &OpenTransfer, source: FspId, now_ms: TimestampMs) -> Option<ErrorCode> {
    if source != open.parties.payee || !open.reserved {
        Some(ErrorCode::Validation)
    } else if now_ms >= open.expiration_ms {
        Some(ErrorCode::TransferExpired)
    } else {
        None
    }
}
