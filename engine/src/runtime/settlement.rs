//! The settlement book at work: loads it from the store, closes windows and moves
//! settlements through the partitions, and stores every record before and after (intent,
//! then observed; see `crate::settlement`).
//!
//! One settlement operation runs at a time (the book's lock): they are operator requests,
//! rare next to transfers, and serialising them keeps the intent records simple. Each
//! operation first finishes whatever a crash interrupted (`resume`), so an interrupted close
//! or settlement step is completed exactly once, by the next request or query, before any
//! other change.
//!
//! Transfers never wait for any of this: a close is one command in each partition's log,
//! and a settlement step one admin command at one account's home.

use super::*;
use crate::codec::{decode_record, encode_record, RecordKind};
use crate::command::Admin;
use crate::settlement::{step_into, AccountUpdate, Book, SettlementRecord, WindowRecord};

const WINDOW_KEY_PREFIX: &str = "settlement/window/";
const SETTLEMENT_KEY_PREFIX: &str = "settlement/settlement/";

fn window_key(id: WindowId) -> String {
    format!("{WINDOW_KEY_PREFIX}{id:020}")
}

fn settlement_key(id: u64) -> String {
    format!("{SETTLEMENT_KEY_PREFIX}{id:020}")
}

fn codec_error(error: crate::codec::CodecError) -> EngineError {
    EngineError::Store {
        source: Box::new(error),
    }
}

/// The hub's own accounts in one currency, summed over partitions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubAccountsView {
    /// HUB_MULTILATERAL_SETTLEMENT: the opposite of every settlement change of a position.
    pub multilateral: Money,
    /// The opposite of every settlement change of a liquidity cover (zero once every
    /// settlement that started moving covers has finished).
    pub settlement: Money,
    /// HUB_RECONCILIATION: the opposite of every funds in and funds out.
    pub reconciliation: Money,
}

impl Hub {
    /// Every settlement window the book keeps, oldest first.
    pub async fn settlement_windows(
        &self,
        now_ms: TimestampMs,
    ) -> Result<Vec<WindowRecord>, EngineError> {
        let mut guard = self.book(now_ms).await?;
        Ok(book_of(&mut guard).windows.values().cloned().collect())
    }

    pub async fn settlement_window(
        &self,
        now_ms: TimestampMs,
        id: WindowId,
    ) -> Result<WindowRecord, EngineError> {
        let mut guard = self.book(now_ms).await?;
        book_of(&mut guard).window(id).cloned()
    }

    /// Every settlement the book keeps, oldest first.
    pub async fn settlements(
        &self,
        now_ms: TimestampMs,
    ) -> Result<Vec<SettlementRecord>, EngineError> {
        let mut guard = self.book(now_ms).await?;
        Ok(book_of(&mut guard).settlements.values().cloned().collect())
    }

    pub async fn settlement(
        &self,
        now_ms: TimestampMs,
        id: u64,
    ) -> Result<SettlementRecord, EngineError> {
        let mut guard = self.book(now_ms).await?;
        book_of(&mut guard).settlement(id).cloned()
    }

    /// Closes window `id` (the open one) on every partition and opens the next; returns
    /// the closed window with its nets.
    pub async fn close_window(
        &self,
        now_ms: TimestampMs,
        id: WindowId,
        reason: &str,
    ) -> Result<WindowRecord, EngineError> {
        let mut guard = self.book(now_ms).await?;
        let book = book_of(&mut guard);
        let intent = book.begin_close(id, reason, now_ms)?;
        self.put_records(&[], &[&intent]).await?;
        self.finish_close(book, id, now_ms).await
    }

    /// A settlement of closed (or aborted) windows, PENDING_SETTLEMENT.
    pub async fn create_settlement(
        &self,
        now_ms: TimestampMs,
        model: &str,
        reason: &str,
        windows: &[WindowId],
    ) -> Result<SettlementRecord, EngineError> {
        let mut guard = self.book(now_ms).await?;
        let book = book_of(&mut guard);
        let (record, windows) = book.create_settlement(model, reason, windows, now_ms)?;
        let windows: Vec<&WindowRecord> = windows.iter().collect();
        self.put_records(&[&record], &windows).await?;
        Ok(record)
    }

    /// Moves accounts of settlement `id` on by one state each (central-settlement's PUT).
    pub async fn update_settlement(
        &self,
        now_ms: TimestampMs,
        id: u64,
        updates: &[AccountUpdate],
        reason: &str,
    ) -> Result<SettlementRecord, EngineError> {
        let mut guard = self.book(now_ms).await?;
        let book = book_of(&mut guard);
        match book.plan_update(id, updates, reason)? {
            None => book.settlement(id).cloned(),
            Some(intent) => {
                self.put_records(&[&intent], &[]).await?;
                self.apply_pending(book, id, now_ms).await
            }
        }
    }

    /// Aborts settlement `id` (refused once money has moved at commit).
    pub async fn abort_settlement(
        &self,
        now_ms: TimestampMs,
        id: u64,
        reason: &str,
    ) -> Result<SettlementRecord, EngineError> {
        let mut guard = self.book(now_ms).await?;
        let book = book_of(&mut guard);
        match book.plan_abort(id, reason)? {
            None => book.settlement(id).cloned(),
            Some(intent) => {
                self.put_records(&[&intent], &[]).await?;
                self.apply_pending(book, id, now_ms).await
            }
        }
    }

    /// The hub's accounts per currency, summed over partitions.
    pub async fn hub_accounts(&self) -> Result<BTreeMap<Currency, HubAccountsView>, EngineError> {
        let mut sums: BTreeMap<Currency, HubAccountsView> = BTreeMap::new();
        for (p, query) in self.shared.queries.iter().enumerate() {
            let (reply, answer) = oneshot::channel();
            query
                .send(Query::HubBalances { reply })
                .await
                .map_err(|_| self.closed(p as u32))?;
            let figures = answer.await.map_err(|_| self.closed(p as u32))?;
            for (currency, hub) in figures {
                let sum = sums.entry(currency).or_default();
                sum.multilateral += hub.multilateral;
                sum.settlement += hub.settlement;
                sum.reconciliation += hub.reconciliation;
            }
        }
        Ok(sums)
    }

    /// Test-only fault injection: from now on, settlement operations of this hub stop
    /// after `steps` steps (a close counts as one, each account's step of a settlement as
    /// one), leaving their intent stored, as a crash at that point would. A hub opened
    /// afterwards on the same data must finish them.
    #[doc(hidden)]
    pub fn stop_settlement_after(&self, steps: usize) {
        self.shared
            .settlement_stop_after
            .store(steps, Ordering::SeqCst);
    }

    fn crash_point(&self, steps_done: usize) -> Result<(), EngineError> {
        if steps_done >= self.shared.settlement_stop_after.load(Ordering::SeqCst) {
            return Err(EngineError::ShuttingDown);
        }
        Ok(())
    }

    /// The book, loaded on first use, with any interrupted change finished.
    async fn book(
        &self,
        now_ms: TimestampMs,
    ) -> Result<tokio::sync::MutexGuard<'_, Option<Book>>, EngineError> {
        let mut guard = self.shared.settlement.lock().await;
        if guard.is_none() {
            *guard = Some(self.load_book(now_ms).await?);
        }
        self.resume(book_of(&mut guard), now_ms).await?;
        Ok(guard)
    }

    async fn load_book(&self, now_ms: TimestampMs) -> Result<Book, EngineError> {
        let store = self.store()?;
        let mut book = Book::default();
        for (_, bytes) in store.registry_scan(WINDOW_KEY_PREFIX)? {
            let record: WindowRecord =
                decode_record(RecordKind::SettlementWindow, &bytes).map_err(codec_error)?;
            book.windows.insert(record.id, record);
        }
        for (_, bytes) in store.registry_scan(SETTLEMENT_KEY_PREFIX)? {
            let record: SettlementRecord =
                decode_record(RecordKind::Settlement, &bytes).map_err(codec_error)?;
            book.settlements.insert(record.id, record);
        }
        // Exactly one window is open. A crash between storing a closed window and its
        // successor leaves none (and a new hub has none yet): open it now.
        if let Some(opened) = book.ensure_open(now_ms) {
            self.put_records(&[], &[&opened]).await?;
        }
        Ok(book)
    }

    /// Finishes what a crash interrupted: a decided close, decided settlement changes.
    async fn resume(&self, book: &mut Book, now_ms: TimestampMs) -> Result<(), EngineError> {
        let (closing, pending) = book.unfinished();
        if let Some(id) = closing {
            info!(
                window = id,
                "finishing an interrupted settlement window close"
            );
            self.finish_close(book, id, now_ms).await?;
        }
        for id in pending {
            info!(
                settlement = id,
                "finishing an interrupted settlement change"
            );
            self.apply_pending(book, id, now_ms).await?;
        }
        Ok(())
    }

    async fn finish_close(
        &self,
        book: &mut Book,
        id: WindowId,
        now_ms: TimestampMs,
    ) -> Result<WindowRecord, EngineError> {
        self.crash_point(0)?;
        self.admin(now_ms, Admin::CloseWindow { window: id })
            .await?;
        self.crash_point(1)?;
        // Every partition acknowledged the close, so durably: its nets no longer change.
        let mut nets = WindowNets::default();
        for (p, query) in self.shared.queries.iter().enumerate() {
            let p = p as u32;
            let (reply, answer) = oneshot::channel();
            query
                .send(Query::WindowNets { window: id, reply })
                .await
                .map_err(|_| self.closed(p))?;
            let here = answer.await.map_err(|_| self.closed(p))?.ok_or_else(|| {
                EngineError::Storage(format!(
                    "partition {p} closed settlement window {id} but keeps no nets of it"
                ))
            })?;
            nets.merge(&here);
        }
        let [closed, next] = book.finish_close(id, nets, now_ms)?;
        self.put_records(&[], &[&closed, &next]).await?;
        info!(
            window = id,
            transfers = closed.nets.transfers,
            "settlement window closed"
        );
        Ok(closed)
    }

    /// Applies the decided change of settlement `id` at every account's home (each step
    /// is idempotent there), then records the new states.
    async fn apply_pending(
        &self,
        book: &mut Book,
        id: u64,
        now_ms: TimestampMs,
    ) -> Result<SettlementRecord, EngineError> {
        let record = book.settlement(id)?.clone();
        if let Some(pending) = &record.pending {
            for (done, (account, state)) in pending.accounts.iter().enumerate() {
                self.crash_point(done)?;
                let Some(step) = step_into(*state) else {
                    continue;
                };
                let net = record.accounts[account].net;
                self.admin(
                    now_ms,
                    Admin::Settle {
                        account: *account,
                        settlement: id,
                        step,
                        net,
                    },
                )
                .await?;
            }
        }
        self.crash_point(record.pending.as_ref().map_or(0, |p| p.accounts.len()))?;
        let (record, windows) = book.finish_update(id, now_ms)?;
        let windows: Vec<&WindowRecord> = windows.iter().collect();
        self.put_records(&[&record], &windows).await?;
        Ok(record)
    }

    /// Stores settlement and window records, then makes them durable with one sync.
    async fn put_records(
        &self,
        settlements: &[&SettlementRecord],
        windows: &[&WindowRecord],
    ) -> Result<(), EngineError> {
        let store = self.store()?;
        for record in settlements {
            let bytes = encode_record(RecordKind::Settlement, *record).map_err(codec_error)?;
            store.registry_put(&settlement_key(record.id), &bytes)?;
        }
        for record in windows {
            let bytes =
                encode_record(RecordKind::SettlementWindow, *record).map_err(codec_error)?;
            store.registry_put(&window_key(record.id), &bytes)?;
        }
        self.sync().await
    }
}

/// The loaded book behind the lock (`Hub::book` loads it before handing the guard out).
fn book_of<'a>(guard: &'a mut tokio::sync::MutexGuard<'_, Option<Book>>) -> &'a mut Book {
    guard
        .as_mut()
        .expect("Hub::book loads the settlement book before handing out its lock")
}
