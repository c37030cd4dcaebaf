//! Recovery of one partition at open: its snapshot, then the WAL after it, checked
//! (batch numbers contiguous, owner epochs older than this start's, the state's ledger
//! invariants), giving the state, the unconfirmed peer messages and the outbox of
//! unacknowledged results. A partition that cannot recover stops alone.

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

pub(super) fn recover(
    store: &dyn Storage,
    partition: u32,
    partitions: u32,
    epoch: u64,
    limits: &Limits,
) -> Result<Recovered, EngineError> {
    let (mut state, mut unconfirmed, mut outbox, snapshot_batch) =
        match store.load_snapshot(partition)? {
            Some(snapshot) => {
                let state = PartitionState::from_snapshot(&snapshot.state, limits.clone())
                    .map_err(|e| EngineError::Corrupt {
                        partition,
                        what: format!("snap/{}", snapshot.batch_seq),
                        detail: e.to_string(),
                    })?;
                if state.partition != partition || state.partitions != partitions {
                    return Err(EngineError::Corrupt {
                        partition,
                        what: "snapshot".into(),
                        detail: "belongs to another partition".into(),
                    });
                }
                let outbox = restore_outbox(partition, limits, &snapshot)?;
                let unconfirmed = snapshot
                    .unconfirmed
                    .into_iter()
                    .map(|o| ((o.to, o.seq), o))
                    .collect();
                store.archive(&snapshot.unarchived)?;
                store.sync_archive()?;
                (state, unconfirmed, outbox, snapshot.batch_seq)
            }
            None => (
                PartitionState::new(partition, partitions, limits.clone()),
                BTreeMap::new(),
                Outbox::restore(limits.outbox_events_max, 0, Vec::new()),
                0,
            ),
        };
    let mut last_epoch = 0;
    for record in store.batches_after(partition, state.batch_seq)? {
        if record.batch_seq != state.batch_seq + 1 {
            return Err(EngineError::Corrupt {
                partition,
                what: format!("wal/{}", record.batch_seq),
                detail: format!("expected batch {}", state.batch_seq + 1),
            });
        }
        // Owner epochs only grow along the log, and all of them are older than the
        // epoch this start has just taken: anything else was written by another owner.
        if record.epoch < last_epoch || record.epoch >= epoch {
            return Err(EngineError::Corrupt {
                partition,
                what: format!("wal/{}", record.batch_seq),
                detail: format!(
                    "written at owner epoch {}: epochs must not fall along the log (the \
                     record before had {last_epoch}) and must be older than this start's \
                     epoch {epoch}",
                    record.epoch
                ),
            });
        }
        last_epoch = record.epoch;
        let inputs = record
            .inputs
            .into_iter()
            .map(|(command, prior)| Input { command, prior })
            .collect();
        let output = state.apply_batch(inputs);
        for message in output.messages {
            unconfirmed.insert((message.to, message.seq), message);
        }
        store.archive(&output.finished)?;
        for event in output.events {
            if !matches!(event, Event::AdminDone { .. }) {
                outbox.push(event);
            }
        }
    }
    store.sync_archive()?;
    state.check().map_err(|detail| EngineError::Corrupt {
        partition,
        what: format!("state after replay to batch {}", state.batch_seq),
        detail,
    })?;
    info!(partition, batch = state.batch_seq, "partition recovered");
    Ok(Recovered {
        state,
        unconfirmed,
        outbox,
        snapshot_batch,
    })
}

/// The outbox a snapshot recorded, checked: its events are numbered below its next
/// number, in order.
pub(super) fn restore_outbox(
    partition: u32,
    limits: &Limits,
    snapshot: &SnapshotRecord,
) -> Result<Outbox, EngineError> {
    let ordered = snapshot.outbox.windows(2).all(|w| w[0].0 < w[1].0)
        && snapshot
            .outbox
            .last()
            .is_none_or(|(seq, _)| *seq < snapshot.next_event_seq);
    if !ordered {
        return Err(EngineError::Corrupt {
            partition,
            what: format!("snap/{}", snapshot.batch_seq),
            detail: "outbox events out of order".into(),
        });
    }
    Ok(Outbox::restore(
        limits.outbox_events_max,
        snapshot.next_event_seq,
        snapshot.outbox.clone(),
    ))
}
