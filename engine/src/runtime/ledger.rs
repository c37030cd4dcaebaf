//! Reading the position ledger (`crate::ledger`): the store's entries of an account,
//! with those the partitions still hold in memory (released, not yet written by the
//! archiver), so a query sees every change acknowledged before it.

use super::*;
use crate::ledger::{sort_dedup, Entry};
use crate::limits::LEDGER_QUERY_ENTRIES_MAX;

/// One page of an account's ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerPage {
    /// In time order, then by where they were made.
    pub entries: Vec<Entry>,
    /// Set when the answer was cut at its bound: the next page starts at this time.
    pub next_from_ms: Option<TimestampMs>,
}

impl Hub {
    /// The account's ledger entries with `from_ms <= at_ms <= to_ms`: at most
    /// `entries_max` (itself at most [`LEDGER_QUERY_ENTRIES_MAX`]).
    pub async fn ledger(
        &self,
        account: AccountKey,
        from_ms: TimestampMs,
        to_ms: TimestampMs,
        entries_max: usize,
    ) -> Result<LedgerPage, EngineError> {
        let entries_max = entries_max.clamp(1, LEDGER_QUERY_ENTRIES_MAX);
        // Memory first, then the store: an entry that leaves a partition's memory in
        // between was written to the store before it left.
        let mut entries = Vec::new();
        for (p, query) in self.shared.queries.iter().enumerate() {
            let (reply, answer) = oneshot::channel();
            query
                .send(Query::Ledger {
                    account,
                    from_ms,
                    to_ms,
                    reply,
                })
                .await
                .map_err(|_| self.closed(p as u32))?;
            entries.extend(answer.await.map_err(|_| self.closed(p as u32))?);
        }
        let store = self.store()?;
        let written = tokio::task::spawn_blocking(move || {
            store.ledger_range(&account, from_ms, to_ms, entries_max)
        })
        .await
        .map_err(|e| EngineError::Storage(format!("ledger read failed: {e}")))??;
        entries.extend(written);
        sort_dedup(&mut entries);
        Ok(cut(entries, entries_max))
    }
}

/// Cuts a sorted answer to `entries_max`, at a change of time when it can, so that the
/// next page (from `next_from_ms`) repeats nothing.
fn cut(mut entries: Vec<Entry>, entries_max: usize) -> LedgerPage {
    if entries.len() <= entries_max {
        return LedgerPage {
            entries,
            next_from_ms: None,
        };
    }
    let first_cut_ms = entries[entries_max].at_ms;
    entries.truncate(entries_max);
    // Keep whole milliseconds; if every kept entry shares the cut's time, keep them all
    // (the next page then repeats some).
    if let Some(last) = entries.iter().rposition(|e| e.at_ms != first_cut_ms) {
        entries.truncate(last + 1);
    }
    LedgerPage {
        entries,
        next_from_ms: Some(first_cut_ms),
    }
}
