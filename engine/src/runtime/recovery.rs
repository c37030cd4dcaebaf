//! Recovery of one partition at open: its snapshot, then the WAL after it, checked
//! (batch numbers contiguous, owner epochs older than this start's, the state's ledger
//! invariants), giving the partition's core: its state, the unconfirmed peer messages and the
//! outbox of unacknowledged results. A partition that cannot recover stops alone. The replay itself
//! is [`Core::recover`] (IO-free but for the `Storage` it reads), so that the simulation
//! recovers its partitions with the very code the hub runs.

use super::*;

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
) -> Result<Core, String> {
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

/// Recovery proper is the core's ([`Core::recover`]); the actor runs the recovered core.
pub(super) fn recover(
    store: &dyn Storage,
    partition: u32,
    partitions: u32,
    epoch: u64,
    limits: &Limits,
) -> Result<Core, EngineError> {
    Core::recover(store, partition, partitions, epoch, limits, CoreFault::None)
}
