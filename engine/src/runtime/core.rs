//! The IO-free core of a partition actor: everything the actor decides, nothing it waits
//! for.
//!
//! Why a core. The partition actor's correctness lives in its bookkeeping, not in its
//! channels: which batch may be released (only the oldest, only after its sync said Ok),
//! which confirmations a release may publish (the inbound watermarks captured when *that*
//! batch was staged, never the live state, which already includes later batches not yet
//! durable), which peer messages stay unconfirmed (and are re-sent after a restart), what
//! a snapshot records, what recovery rebuilds. Kept in one struct with no tokio, no clock,
//! no channel and no thread, the same code is driven by the tokio actor in production
//! (`actor.rs`, which only moves bytes between this core and the world) and by the seeded
//! simulation (`engine/tests/sim.rs`), which steps it over a simulated disk with crashes
//! and power losses. A simulation of a copy would prove the copy.
//!
//! The life of a batch:
//!
//! 1. [`Core::stage`] applies it to the state and returns its encoded WAL record; the
//!    caller writes the record and asks for a sync. The batch joins the pipeline of
//!    staged batches with its output and its inbound watermarks.
//! 2. [`Core::release_oldest`] is called with the outcome of the sync that covers the
//!    oldest staged batch. On Ok it hands back what the batch produced: the messages to
//!    deliver (kept as unconfirmed until their receivers confirm them), the confirmations
//!    to publish, the finished transfers for the archiver, the admin results; its events
//!    go into the outbox. A failed sync releases nothing: the partition must stop, since
//!    nothing of the batch may ever be told.
//! 3. [`Core::prune_unconfirmed`] drops sent messages that their receivers have confirmed.
//! 4. Every `snapshot_every_batches` batches, once the pipeline is empty,
//!    [`Core::snapshot`] gives the record to write.
//!
//! The fault switches ([`CoreFault`]) exist only so that the simulation can prove that it
//! catches these bugs; production code never sets them (there is no configuration for it).

use super::outbox::Outbox;
use crate::command::{Command, Event, FinishedTransfer, TimestampMs};
use crate::ids::TransferId;
use crate::limits::{Limits, WAL_BUFFER_RETAINED_BYTES_MAX};
use crate::machine::{Outgoing, Output, PartitionState};
use crate::storage::Storage;
// Taken through the runtime's imports, which exist for this (the actor's batch encoding
// used to live there).
use super::{Input, SnapshotRecord, WalRecordRef};
use crate::storage::encode_batch_into;
use crate::EngineError;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use tracing::info;

/// Injected bugs for the simulation's fault tests (like `machine::Fault`). Off by default
/// and unreachable from any configuration.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CoreFault {
    #[default]
    None,
    /// A batch's confirmations are handed out when it is staged, before it is durable.
    ConfirmAtStage,
    /// Recovery forgets the snapshot's unconfirmed peer messages and unacknowledged
    /// results.
    RecoveryDropsOutbox,
    /// A failed sync is taken as a success: the batch is released anyway.
    IgnoreSyncError,
}

/// Hub time carried by a command, if any.
pub fn command_time(command: &Command) -> Option<TimestampMs> {
    match command {
        Command::Prepare { now_ms, .. }
        | Command::Fulfil { now_ms, .. }
        | Command::Reject { now_ms, .. }
        | Command::Tick { now_ms }
        | Command::Admin { now_ms, .. } => Some(*now_ms),
        Command::Peer { .. } => None,
    }
}

/// Finds the archived record of a transfer neither open nor cached in the core:
/// `lookup(id, now_ms)`, `now_ms` being the hub time of the command asking (if any).
pub type Lookup<'a> = dyn FnMut(&TransferId, Option<TimestampMs>) -> Result<Option<FinishedTransfer>, EngineError>
    + 'a;

/// A batch applied and written, waiting for its sync.
struct StagedBatch {
    batch_seq: u64,
    count: usize,
    output: Output,
    /// The inbound watermarks once this batch was applied: its confirmations.
    confirms: Vec<(u32, u64)>,
}

/// What [`Core::stage`] hands back: the WAL record to write and what the caller may
/// learn at once (the batch's output, for its duplicate filter or a simulation's checks;
/// none of it may be told to anybody before the batch is released).
pub struct Staged<'a> {
    pub batch_seq: u64,
    /// The encoded WAL record of the batch (for `Storage::append_encoded`), in the
    /// core's reused buffer.
    pub body: &'a [u8],
    /// What the batch produced (not yet released).
    pub output: &'a Output,
    /// Confirmations to publish right now: always empty, except under
    /// [`CoreFault::ConfirmAtStage`].
    pub confirm_now: Vec<(u32, u64)>,
}

/// Everything a durable batch releases (its events are in the outbox already).
#[derive(Debug)]
pub struct Released {
    pub batch_seq: u64,
    /// Commands in the batch.
    pub count: usize,
    /// Refusals decided by the home in this batch.
    pub denials: usize,
    /// `(sender, watermark)`: how far this partition has now durably applied each
    /// sender's messages.
    pub confirmations: Vec<(u32, u64)>,
    /// Peer messages to deliver (also kept as unconfirmed by the core).
    pub messages: Vec<Outgoing>,
    /// Finished transfers for the archiver (kept in the core's cache until archived).
    pub finished: Vec<FinishedTransfer>,
    /// Position ledger entries for the archiver (kept by the core until written).
    pub ledger: Arc<Vec<crate::ledger::Entry>>,
    /// `Event::AdminDone` results, for the operators waiting on them (not in the outbox).
    pub admin_done: Vec<Event>,
    /// Events pushed into the outbox: their sequence numbers.
    pub events: std::ops::Range<u64>,
    /// Old outbox events shed to stay in bound.
    pub shed: u64,
}

/// The IO-free core of one partition (see the module docs).
pub struct Core {
    partition: u32,
    epoch: u64,
    state: PartitionState,
    /// Messages sent whose receiver has not yet made them durable (re-sent after a crash).
    unconfirmed: BTreeMap<(u32, u64), Outgoing>,
    /// Released results not yet acknowledged by the event consumer.
    outbox: Outbox,
    /// Finished transfers not yet known to be archived, for duplicate checks and GET.
    finished_cache: HashMap<TransferId, FinishedTransfer>,
    finished_order: VecDeque<(u64, Vec<TransferId>)>,
    /// Released position ledger entries not yet known to be written, by batch: readers
    /// see them here until the store has them, and snapshots record them.
    ledger_unwritten: VecDeque<(u64, Arc<Vec<crate::ledger::Entry>>)>,
    /// Batches staged and not yet released, oldest first.
    staged: VecDeque<StagedBatch>,
    last_snapshot_batch: u64,
    snapshot_every_batches: u64,
    /// The WAL record of the batch being staged, reused from batch to batch (capacity
    /// kept up to `WAL_BUFFER_RETAINED_BYTES_MAX`).
    wal_buffer: Vec<u8>,
    fault: CoreFault,
}

impl Core {
    /// A core over a state recovered (or new), with what recovery rebuilt around it.
    pub fn from_parts(
        epoch: u64,
        state: PartitionState,
        unconfirmed: BTreeMap<(u32, u64), Outgoing>,
        outbox: Outbox,
        last_snapshot_batch: u64,
        limits: &Limits,
    ) -> Core {
        Core {
            partition: state.partition,
            epoch,
            state,
            unconfirmed,
            outbox,
            finished_cache: HashMap::new(),
            finished_order: VecDeque::new(),
            ledger_unwritten: VecDeque::new(),
            staged: VecDeque::new(),
            last_snapshot_batch,
            snapshot_every_batches: limits.snapshot_every_batches,
            wal_buffer: Vec::new(),
            fault: CoreFault::None,
        }
    }

    /// Switches an injected bug on (simulation only).
    #[doc(hidden)]
    pub fn set_fault(&mut self, fault: CoreFault) {
        self.fault = fault;
    }

    pub fn partition(&self) -> u32 {
        self.partition
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The live state (it includes staged batches that are not yet durable).
    pub fn state(&self) -> &PartitionState {
        &self.state
    }

    /// The state, for injecting machine faults (simulation only).
    #[doc(hidden)]
    pub fn state_mut(&mut self) -> &mut PartitionState {
        &mut self.state
    }

    /// Sent messages not yet confirmed by their receivers, by `(to, seq)`.
    pub fn unconfirmed(&self) -> &BTreeMap<(u32, u64), Outgoing> {
        &self.unconfirmed
    }

    /// Batches staged and not yet released.
    pub fn staged_len(&self) -> usize {
        self.staged.len()
    }

    /// The account's released ledger entries not yet known to be written, with
    /// `from_ms <= at_ms <= to_ms`.
    pub fn unwritten_ledger(
        &self,
        account: &crate::ids::AccountKey,
        from_ms: i64,
        to_ms: i64,
    ) -> Vec<crate::ledger::Entry> {
        self.ledger_unwritten
            .iter()
            .flat_map(|(_, entries)| entries.iter())
            .filter(|e| e.account == *account && (from_ms..=to_ms).contains(&e.at_ms))
            .cloned()
            .collect()
    }

    /// A finished transfer still held in memory (not yet known to be archived).
    pub fn cached_finished(&self, id: &TransferId) -> Option<&FinishedTransfer> {
        self.finished_cache.get(id)
    }

    pub fn finished_cache_len(&self) -> usize {
        self.finished_cache.len()
    }

    /// Applies a batch and encodes its WAL record. `lookup(id, now_ms)` finds the archived
    /// record of a transfer that is neither open nor cached here (the caller's archive).
    pub fn stage(
        &mut self,
        commands: Vec<Command>,
        lookup: &mut Lookup<'_>,
    ) -> Result<Staged<'_>, EngineError> {
        assert!(!commands.is_empty(), "an empty batch is never staged");
        let count = commands.len();
        let mut inputs = Vec::with_capacity(count);
        for command in commands {
            let prior = match command.transfer_id() {
                Some(id) if !self.state.is_open(&id) => match self.finished_cache.get(&id) {
                    Some(record) => Some(record.clone()),
                    None => lookup(&id, command_time(&command))?,
                },
                _ => None,
            };
            inputs.push(Input { command, prior });
        }
        // The WAL record is encoded before applying (applying consumes the input) without
        // cloning it; the caller writes it after: a batch that trips an invariant never
        // reaches disk.
        let batch_seq = self.state.batch_seq + 1;
        if self.wal_buffer.capacity() > WAL_BUFFER_RETAINED_BYTES_MAX {
            self.wal_buffer = Vec::new();
        }
        encode_batch_into(
            &WalRecordRef {
                batch_seq,
                epoch: self.epoch,
                inputs: inputs.iter().map(|i| (&i.command, &i.prior)).collect(),
            },
            &mut self.wal_buffer,
        )?;
        let output = self.state.apply_batch(inputs);
        assert_eq!(
            self.state.batch_seq, batch_seq,
            "batch numbering out of step"
        );
        if cfg!(debug_assertions) {
            self.state.audit();
        }
        // Finished transfers stay readable (GET, duplicates) until the archiver has them.
        for record in &output.finished {
            self.finished_cache
                .insert(record.parties.transfer_id, record.clone());
        }
        let confirms: Vec<(u32, u64)> = self
            .state
            .inbound
            .iter()
            .map(|(from, inbound)| (*from, inbound.watermark))
            .collect();
        let confirm_now = if self.fault == CoreFault::ConfirmAtStage {
            confirms.clone()
        } else {
            Vec::new()
        };
        self.staged.push_back(StagedBatch {
            batch_seq,
            count,
            output,
            confirms,
        });
        let last = self.staged.back().expect("just pushed");
        Ok(Staged {
            batch_seq,
            body: &self.wal_buffer,
            output: &last.output,
            confirm_now,
        })
    }

    /// Releases the oldest staged batch, given the outcome of the sync that covers it. A
    /// failed sync releases nothing and is returned: the partition must stop.
    pub fn release_oldest(
        &mut self,
        synced: Result<(), EngineError>,
    ) -> Result<Released, EngineError> {
        if let Err(e) = synced {
            if self.fault != CoreFault::IgnoreSyncError {
                return Err(e);
            }
        }
        let StagedBatch {
            batch_seq,
            count,
            output,
            confirms,
        } = self
            .staged
            .pop_front()
            .expect("release_oldest needs a staged batch");
        let confirmations = if self.fault == CoreFault::ConfirmAtStage {
            Vec::new()
        } else {
            confirms
        };
        for message in &output.messages {
            self.unconfirmed
                .insert((message.to, message.seq), message.clone());
        }
        if !output.finished.is_empty() {
            let ids: Vec<TransferId> = output
                .finished
                .iter()
                .map(|r| r.parties.transfer_id)
                .collect();
            self.finished_order.push_back((batch_seq, ids));
        }
        let ledger = Arc::new(output.ledger);
        if !ledger.is_empty() {
            self.ledger_unwritten
                .push_back((batch_seq, Arc::clone(&ledger)));
        }
        let first_event = self.outbox.next_seq();
        let mut admin_done = Vec::new();
        let mut shed = 0;
        for event in output.events {
            if matches!(event, Event::AdminDone { .. }) {
                admin_done.push(event);
            } else {
                shed += self.outbox.push(event);
            }
        }
        Ok(Released {
            batch_seq,
            count,
            denials: output.denials.len(),
            confirmations,
            messages: output.messages,
            finished: output.finished,
            ledger,
            admin_done,
            events: first_event..self.outbox.next_seq(),
            shed,
        })
    }

    /// Drops sent messages their receivers have durably applied: `confirmed(to)` is how
    /// far partition `to` has confirmed this partition's messages.
    pub fn prune_unconfirmed(&mut self, confirmed: &dyn Fn(u32) -> u64) {
        self.unconfirmed
            .retain(|(to, seq), _| *seq > confirmed(*to));
    }

    /// Drops cached finished transfers of batches up to `archived_upto` (durable in the
    /// archive now).
    pub fn trim_finished_cache(&mut self, archived_upto: u64) {
        while self
            .ledger_unwritten
            .front()
            .is_some_and(|(batch, _)| *batch <= archived_upto)
        {
            self.ledger_unwritten.pop_front();
        }
        while let Some((batch, _)) = self.finished_order.front() {
            if *batch > archived_upto {
                break;
            }
            let (_, ids) = self.finished_order.pop_front().expect("front exists");
            for id in ids {
                self.finished_cache.remove(&id);
            }
        }
    }

    /// Whether a snapshot is due (taken once the pipeline has drained).
    pub fn snapshot_due(&self) -> bool {
        self.state.batch_seq - self.last_snapshot_batch >= self.snapshot_every_batches
    }

    /// The snapshot record of the state as of the last staged batch. Call it with an
    /// empty pipeline: everything it records is then released.
    pub fn snapshot(&mut self) -> SnapshotRecord {
        assert!(
            self.staged.is_empty(),
            "a snapshot must not record unreleased batches"
        );
        let snapshot = SnapshotRecord {
            batch_seq: self.state.batch_seq,
            state: self.state.snapshot_bytes(),
            unconfirmed: self.unconfirmed.values().cloned().collect(),
            // Finished transfers the archiver may not have written yet: recovery writes them.
            unarchived: self.finished_cache.values().cloned().collect(),
            outbox: self.outbox.pending_events(),
            next_event_seq: self.outbox.next_seq(),
            unledgered: self
                .ledger_unwritten
                .iter()
                .flat_map(|(_, entries)| entries.iter().cloned())
                .collect(),
        };
        self.last_snapshot_batch = snapshot.batch_seq;
        snapshot
    }

    /// The outbox (the actor dispatches from it and takes acknowledgements into it).
    pub(super) fn outbox_mut(&mut self) -> &mut Outbox {
        &mut self.outbox
    }

    /// The next released event not yet handed out, if any.
    pub fn next_event(&self) -> Option<(u64, Arc<Event>)> {
        self.outbox.next_to_dispatch()
    }

    /// Event `seq` was handed to its consumer.
    pub fn event_dispatched(&mut self, seq: u64) {
        self.outbox.dispatched(seq);
    }

    /// Event `seq` was acknowledged by its consumer.
    pub fn ack_event(&mut self, seq: u64) {
        self.outbox.ack(seq);
    }

    /// Events released and not yet acknowledged.
    pub fn events_pending(&self) -> usize {
        self.outbox.pending()
    }

    /// The events released and not yet acknowledged, by sequence number (cloned: for
    /// checks, not for the hot path).
    pub fn pending_events(&self) -> Vec<(u64, Event)> {
        self.outbox.pending_events()
    }

    /// The newest staged batch's number and output, if any batch is staged.
    pub fn newest_staged(&self) -> Option<(u64, &Output)> {
        self.staged.back().map(|b| (b.batch_seq, &b.output))
    }

    /// Recovery: the snapshot, then the WAL after it, checked (batch numbers contiguous,
    /// owner epochs older than `epoch`, the state's ledger invariants). Replaying gives the
    /// same outputs the original run gave: its messages are kept unconfirmed (re-sent;
    /// receivers drop duplicates), its finished transfers re-archived, its events
    /// republished (callbacks are at least once).
    pub fn recover(
        store: &dyn Storage,
        partition: u32,
        partitions: u32,
        epoch: u64,
        limits: &Limits,
        fault: CoreFault,
    ) -> Result<Core, EngineError> {
        let (mut state, mut unconfirmed, mut outbox, snapshot_batch) =
            match store.load_snapshot(partition)? {
                Some(mut snapshot) => {
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
                    if fault == CoreFault::RecoveryDropsOutbox {
                        snapshot.unconfirmed.clear();
                        snapshot.outbox.clear();
                    }
                    let outbox = restore_outbox(partition, limits, &snapshot)?;
                    let unconfirmed = snapshot
                        .unconfirmed
                        .into_iter()
                        .map(|o| ((o.to, o.seq), o))
                        .collect();
                    store.archive(&snapshot.unarchived)?;
                    store.ledger_add(&snapshot.unledgered)?;
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
            if fault != CoreFault::RecoveryDropsOutbox {
                for message in output.messages {
                    unconfirmed.insert((message.to, message.seq), message);
                }
            }
            store.archive(&output.finished)?;
            store.ledger_add(&output.ledger)?;
            for event in output.events {
                if !matches!(event, Event::AdminDone { .. })
                    && fault != CoreFault::RecoveryDropsOutbox
                {
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
        Ok(Core::from_parts(
            epoch,
            state,
            unconfirmed,
            outbox,
            snapshot_batch,
            limits,
        ))
    }
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
