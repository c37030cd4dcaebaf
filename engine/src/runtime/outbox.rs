//! The results outbox of one partition: every event a durable batch produced, from the
//! moment it is released until its consumer (the notifier) has finished with it.
//!
//! Why it exists. The event stream to the notifier is a bounded channel. If the actor
//! waited for room in it, a notifier held up by DFSPs that never answer would stop the
//! ledger for everybody; if the actor dropped what does not fit, a result could be lost;
//! and a result still in the channel or in the notifier when the process dies would be
//! gone too, because recovery replays only the batches after the last snapshot. So an
//! event goes into the outbox first and leaves it only when it is **acknowledged**: its
//! [`Delivery`] and every [`AckToken`] cloned from it have been dropped (the notifier
//! keeps a token in each callback task until the callback is delivered or finally given
//! up). Handing events to the channel is `try_reserve`: a full channel leaves them in the
//! outbox, dispatched again on the actor's next turn; the ledger never waits for it.
//!
//! Durability. The outbox's pending events are part of every snapshot, and the events of
//! batches after the snapshot are produced again by replaying them, so after a crash every
//! event not yet acknowledged is published again (callbacks are at least once; the
//! notifier's receivers see a duplicate at worst, which FSPIOP callbacks tolerate).
//!
//! Bound. At most `outbox_events_max` events are kept per partition. Past it the oldest
//! are shed (counted and logged): a consumer that takes nothing forever costs bounded
//! memory, and a DFSP can still GET a transfer whose callback was shed.
//!
//! Sequence numbers are dense per partition and follow release order, which is batch
//! order, so replaying the same log gives every event the same number.

use crate::command::Event;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// What the event consumer receives: one result, with the token that acknowledges it.
/// Dropping the `Delivery` (and every [`AckToken`] taken from it) acknowledges it.
pub struct Delivery {
    pub partition: u32,
    /// The event's sequence number on its partition.
    pub seq: u64,
    pub event: Arc<Event>,
    token: AckToken,
}

impl Delivery {
    /// A token that keeps the event unacknowledged for as long as it lives (hand one to
    /// each task that works on the event).
    pub fn token(&self) -> AckToken {
        self.token.clone()
    }

    /// The event, cloned out (acknowledging it once this delivery is dropped).
    pub fn into_event(self) -> Event {
        Arc::try_unwrap(self.event).unwrap_or_else(|shared| (*shared).clone())
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("partition", &self.partition)
            .field("seq", &self.seq)
            .field("event", &self.event)
            .finish()
    }
}

/// Keeps one event unacknowledged while any clone of it lives.
#[derive(Clone)]
pub struct AckToken(#[allow(dead_code)] Arc<AckOnDrop>);

struct AckOnDrop {
    seq: u64,
    acks: Arc<Acks>,
}

impl Drop for AckOnDrop {
    fn drop(&mut self) {
        self.acks.push(self.seq);
    }
}

/// Acknowledged sequence numbers of one partition, collected from the consumer's tasks
/// and taken by the actor on its next turn.
#[derive(Default)]
pub struct Acks {
    seqs: Mutex<Vec<u64>>,
}

impl Acks {
    fn push(&self, seq: u64) {
        self.seqs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(seq);
    }

    fn take(&self) -> Vec<u64> {
        std::mem::take(
            &mut *self
                .seqs
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }
}

/// The pure bookkeeping of the outbox: no channel, no lock, no clock.
#[derive(Debug)]
pub struct Outbox {
    /// Sequence number of `slots[0]`.
    base_seq: u64,
    /// `None`: acknowledged (a hole until everything before it is acknowledged too).
    slots: VecDeque<Option<Arc<Event>>>,
    /// Sequence number of the first event not yet handed to the consumer.
    next_dispatch_seq: u64,
    /// Events not yet acknowledged (the `Some` slots).
    pending: usize,
    events_max: usize,
}

impl Outbox {
    /// An outbox whose next event gets `next_seq`, holding the pending events of a
    /// snapshot (sorted, all below `next_seq`).
    pub fn restore(events_max: usize, next_seq: u64, pending: Vec<(u64, Event)>) -> Outbox {
        assert!(events_max > 0, "outbox_events_max must be positive");
        let base_seq = pending.first().map_or(next_seq, |(seq, _)| *seq);
        let mut outbox = Outbox {
            base_seq,
            slots: VecDeque::new(),
            next_dispatch_seq: base_seq,
            pending: 0,
            events_max,
        };
        for (seq, event) in pending {
            assert!(
                seq >= outbox.base_seq + outbox.slots.len() as u64 && seq < next_seq,
                "outbox entries out of order"
            );
            while outbox.base_seq + (outbox.slots.len() as u64) < seq {
                outbox.slots.push_back(None);
            }
            outbox.slots.push_back(Some(Arc::new(event)));
            outbox.pending += 1;
        }
        while outbox.base_seq + (outbox.slots.len() as u64) < next_seq {
            outbox.slots.push_back(None);
        }
        outbox.pop_acknowledged();
        outbox
    }

    pub fn next_seq(&self) -> u64 {
        self.base_seq + self.slots.len() as u64
    }

    /// Events not yet acknowledged.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Adds a released event; returns how many old events were shed to stay in bound.
    pub fn push(&mut self, event: Event) -> u64 {
        self.slots.push_back(Some(Arc::new(event)));
        self.pending += 1;
        let mut shed = 0;
        while self.pending > self.events_max {
            if let Some(Some(_)) = self.slots.pop_front() {
                self.pending -= 1;
                shed += 1;
            }
            self.base_seq += 1;
            self.pop_acknowledged();
        }
        self.next_dispatch_seq = self.next_dispatch_seq.max(self.base_seq);
        shed
    }

    /// Marks an event acknowledged (unknown or repeated numbers are ignored: an event
    /// shed over the bound may still be acknowledged later by its consumer).
    pub fn ack(&mut self, seq: u64) {
        let Some(index) = seq.checked_sub(self.base_seq) else {
            return;
        };
        if let Some(slot) = self.slots.get_mut(index as usize) {
            if slot.take().is_some() {
                self.pending -= 1;
            }
        }
        self.pop_acknowledged();
    }

    fn pop_acknowledged(&mut self) {
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.base_seq += 1;
        }
        self.next_dispatch_seq = self.next_dispatch_seq.max(self.base_seq);
    }

    /// The next event to hand to the consumer, if any.
    pub fn next_to_dispatch(&self) -> Option<(u64, Arc<Event>)> {
        let mut seq = self.next_dispatch_seq;
        while seq < self.next_seq() {
            if let Some(Some(event)) = self.slots.get((seq - self.base_seq) as usize) {
                return Some((seq, event.clone()));
            }
            seq += 1;
        }
        None
    }

    /// The consumer has event `seq` (everything before it was handed over or acked).
    pub fn dispatched(&mut self, seq: u64) {
        self.next_dispatch_seq = seq + 1;
    }

    /// Pending events, for a snapshot.
    pub fn pending_events(&self) -> Vec<(u64, Event)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, slot)| {
                slot.as_ref()
                    .map(|event| (self.base_seq + i as u64, (**event).clone()))
            })
            .collect()
    }
}

/// Builds the delivery of event `seq`, acknowledged into `acks` when dropped.
pub fn delivery(partition: u32, seq: u64, event: Arc<Event>, acks: &Arc<Acks>) -> Delivery {
    Delivery {
        partition,
        seq,
        event,
        token: AckToken(Arc::new(AckOnDrop {
            seq,
            acks: acks.clone(),
        })),
    }
}

/// Takes the acknowledgements that arrived since the last call into `outbox`.
pub fn take_acks(outbox: &mut Outbox, acks: &Acks) {
    for seq in acks.take() {
        outbox.ack(seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::ErrorCode;
    use crate::ids::{FspId, TransferId};

    fn event(n: u64) -> Event {
        Event::RequestRefused {
            transfer_id: TransferId::parse(&format!("00000000-0000-4000-8000-{n:012x}"))
                .expect("id"),
            to: FspId::new("dfsp").expect("fsp"),
            code: ErrorCode::Validation,
        }
    }

    #[test]
    fn events_leave_only_when_acknowledged_in_any_order() {
        let mut outbox = Outbox::restore(16, 0, Vec::new());
        for n in 0..5 {
            outbox.push(event(n));
        }
        for seq in 0..5 {
            let (got, _) = outbox.next_to_dispatch().expect("one to dispatch");
            assert_eq!(got, seq);
            outbox.dispatched(seq);
        }
        assert!(outbox.next_to_dispatch().is_none());
        outbox.ack(3);
        outbox.ack(0);
        assert_eq!(outbox.pending(), 3);
        let kept: Vec<u64> = outbox.pending_events().iter().map(|(s, _)| *s).collect();
        assert_eq!(kept, vec![1, 2, 4]);
        // A snapshot of it, restored, hands out exactly the pending ones again.
        let mut restored = Outbox::restore(16, outbox.next_seq(), outbox.pending_events());
        let mut again = Vec::new();
        while let Some((seq, _)) = restored.next_to_dispatch() {
            restored.dispatched(seq);
            again.push(seq);
        }
        assert_eq!(again, vec![1, 2, 4]);
        assert_eq!(restored.next_seq(), 5);
    }

    #[test]
    fn over_its_bound_the_oldest_are_shed() {
        let mut outbox = Outbox::restore(3, 0, Vec::new());
        let shed: u64 = (0..5).map(|n| outbox.push(event(n))).sum();
        assert_eq!((shed, outbox.pending()), (2, 3));
        assert_eq!(outbox.next_to_dispatch().map(|(s, _)| s), Some(2));
        // A late acknowledgement of a shed event changes nothing.
        outbox.ack(0);
        assert_eq!(outbox.pending(), 3);
    }

    #[test]
    fn dropping_every_token_acknowledges() {
        let acks = Arc::new(Acks::default());
        let mut outbox = Outbox::restore(8, 0, Vec::new());
        outbox.push(event(1));
        let (seq, shared) = outbox.next_to_dispatch().expect("event");
        outbox.dispatched(seq);
        let delivery = delivery(0, seq, shared, &acks);
        let token = delivery.token();
        drop(delivery);
        take_acks(&mut outbox, &acks);
        assert_eq!(outbox.pending(), 1, "a token still lives");
        drop(token);
        take_acks(&mut outbox, &acks);
        assert_eq!(outbox.pending(), 0);
    }
}
