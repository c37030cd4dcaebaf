//! Recovery of one partition at open: its snapshot, then the WAL after it, checked
//! (batch numbers contiguous, owner epochs older than this start's, the state's ledger
//! invariants), giving the state, the unconfirmed peer messages and the outbox of
//! unacknowledged results. A partition that cannot recover stops alone. The replay itself
//! is [`Core::recover`] (IO-free but for the `Storage` it reads), so that the simulation
//! recovers its partitions with the very code the hub runs.

use super::*;

/// A partition as recovered from storage.
pub(super) struct Recovered {
    pub(super) state: PartitionState,
    pub(super) unconfirmed: BTreeMap<(u32, u64), Outgoing>,
    /// The snapshot's unacknowledged results plus those of the replayed batches: all
    /// published again (callbacks are at least once).
    pub(super) outbox: Outbox,
    pub(super) snapshot_batch: u64,
}

/// Snapshot + replay of the WAL after it. Replaying gives the same outputs the original
/// run gave: its messages are re-sent (receivers drop duplicates), its finished transfers
/// re-archived, its events republished (callbacks are at least once).
/// [`recover`], with a panic on the way (a broken ledger invariant found while replaying a
/// decodable but wrong record) stopping this partition only, not the whole hub.
pub(super) fn recover_or_stop(
    store: &dyn Storage,
    partition: u32,
    partitions: u32,
    epoch: u64,
    limits: &Limits,
) -> Result<Recovered, String> {
    let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        recover(store, partition, partitions, epoch, limits)
    }));
    match attempt {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(panic) => Err(format!(
            "partition {partition}: recovery stopped on a broken invariant: {}",
            panic_message(panic.as_ref())
        )),
    }
}

/// The text of a panic payload.
pub(super) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".to_string())
}

/// Recovery proper is the core's ([`Core::recover`]); this takes the recovered core
/// apart into what the runtime's wiring builds the actor from.
pub(super) fn recover(
    store: &dyn Storage,
    partition: u32,
    partitions: u32,
    epoch: u64,
    limits: &Limits,
) -> Result<Recovered, EngineError> {
    let core = Core::recover(store, partition, partitions, epoch, limits, CoreFault::None)?;
    let (state, unconfirmed, outbox, snapshot_batch) = core.into_recovered();
    Ok(Recovered {
        state,
        unconfirmed,
        outbox,
        snapshot_batch,
    })
}
