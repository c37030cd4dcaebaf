//! The epoch rule, as the only way to read the event log.
//!
//! DESIGN §7: *a record in `events[p]` counts only if its epoch equals the latest marker
//! before it.* A new owner of partition p at epoch e appends `Epoch(e)` to `events[p]`
//! before it writes anything else; from that place on, records of any other epoch are
//! ignored by every reader. A stale owner that keeps writing after it lost the partition
//! (it was paused, partitioned away, or has not yet read the control log) appends records
//! carrying its old epoch *after* the new marker, and they count for no one: the log's
//! order is the fence. No Kafka transactions are needed, so the rule holds on any broker
//! that keeps a partition's order.
//!
//! Two refinements make the rule airtight:
//!
//! * **Markers only go up.** A marker counts only if its epoch is greater than the latest
//!   counted marker. A slow node that was assigned epoch 3 but writes its `Epoch(3)` after
//!   the owner of epoch 4 wrote `Epoch(4)` would otherwise re-open the partition for its
//!   own stale writes.
//! * **Nothing counts before the first marker**: no owner has fenced the partition yet.
//!
//! [`EventFilter`] is the rule, sans IO: feed it the partition's records in log order and
//! it yields the valid ones. [`EventReader`] is the filter over a [`PartitionedLog`], for
//! the notifier, standby replicas and restores. The event-log records have no other public
//! decoder ([`crate::records`]), so a reader cannot skip the rule by accident.
//!
//! A record the filter cannot read (foreign, truncated, of a newer format version, or a
//! marker naming another partition) is an error naming topic, partition and offset; the
//! filter's position does not move past it, so the partition stops there rather than
//! skip it.
//!
//! A reader that resumes mid-log needs the latest marker before its offset: it keeps an
//! [`EventCursor`] (offset *and* epoch), not a bare offset. [`EventReader::skip_to`]
//! rebuilds a cursor from the start of the log when only an offset is known.
//!
//! # Taking a partition over
//!
//! With [`EventWriter`]: `let m = writer.write_marker().await?;` then replay the partition
//! with an [`EventReader`] to `m + 1` (from a local copy's cursor, or from the start), then
//! check that the reader's cursor epoch is the writer's: if a higher marker came before
//! `m`, this node's assignment is already superseded and it must not take commands.

use crate::limits::{
    REPLAY_EMPTY_READS_MAX, REPLAY_READ_BYTES, REPLAY_READ_RECORDS, REPLAY_READ_WAIT_MS,
};
use crate::log::{LogRecord, PartitionedLog, ReadBound};
use crate::records::{
    decode_event_record, encode_epoch_marker, encode_event_frame, Epoch, EventLogRecord, NodeId,
};
use crate::ShardingError;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// Where a reader of one event partition is: the next offset to read and the epoch of the
/// latest counted marker before it. Persist both to resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCursor {
    pub next_offset: u64,
    pub epoch: Option<Epoch>,
}

impl EventCursor {
    /// The start of a partition's log: no marker seen yet.
    pub const START: EventCursor = EventCursor {
        next_offset: 0,
        epoch: None,
    };
}

/// A counted epoch marker: from `offset` on, records of `epoch` are valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkerSeen {
    pub offset: u64,
    pub epoch: Epoch,
    pub node: NodeId,
}

/// An event record that counts under the epoch rule, with the engine's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidEvent {
    pub offset: u64,
    pub epoch: Epoch,
    pub payload: Vec<u8>,
}

/// What a reader of the event log sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventItem {
    Marker(MarkerSeen),
    Event(ValidEvent),
}

impl EventItem {
    pub fn offset(&self) -> u64 {
        match self {
            EventItem::Marker(marker) => marker.offset,
            EventItem::Event(event) => event.offset,
        }
    }
}

/// The epoch rule over one partition's records, fed in log order. See the module doc.
#[derive(Debug, Clone)]
pub struct EventFilter {
    topic: String,
    partition: u32,
    cursor: EventCursor,
    ignored: u64,
}

impl EventFilter {
    pub fn new(topic: impl Into<String>, partition: u32, cursor: EventCursor) -> EventFilter {
        EventFilter {
            topic: topic.into(),
            partition,
            cursor,
            ignored: 0,
        }
    }

    pub fn cursor(&self) -> EventCursor {
        self.cursor
    }

    /// Records the rule has ignored so far: stale owners' frames, stale markers, frames
    /// before the first marker. A metric: non-zero after a fenced stale owner wrote.
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    /// The next record of the partition. `Ok(Some)` if it counts, `Ok(None)` if the rule
    /// ignores it, an error if it cannot be read or is out of order (the cursor then stays
    /// before it).
    pub fn admit(&mut self, record: LogRecord) -> Result<Option<EventItem>, ShardingError> {
        let LogRecord { offset, payload } = record;
        if offset < self.cursor.next_offset {
            return Err(ShardingError::OutOfOrder {
                topic: self.topic.clone(),
                partition: self.partition,
                offset,
                expected: self.cursor.next_offset,
            });
        }
        let decoded = decode_event_record(&payload).map_err(|source| ShardingError::Record {
            topic: self.topic.clone(),
            partition: self.partition,
            offset,
            source,
        })?;
        let item = match decoded {
            EventLogRecord::Marker(marker) => {
                if marker.partition != self.partition {
                    return Err(ShardingError::MarkerForeignPartition {
                        topic: self.topic.clone(),
                        partition: self.partition,
                        offset,
                        named: marker.partition,
                    });
                }
                if self
                    .cursor
                    .epoch
                    .is_some_and(|latest| marker.epoch <= latest)
                {
                    None
                } else {
                    self.cursor.epoch = Some(marker.epoch);
                    Some(EventItem::Marker(MarkerSeen {
                        offset,
                        epoch: marker.epoch,
                        node: marker.node,
                    }))
                }
            }
            EventLogRecord::Frame(frame) => {
                if self.cursor.epoch == Some(frame.epoch) {
                    Some(EventItem::Event(ValidEvent {
                        offset,
                        epoch: frame.epoch,
                        payload: frame.payload,
                    }))
                } else {
                    None
                }
            }
        };
        if item.is_none() {
            self.ignored += 1;
        }
        self.cursor.next_offset = offset + 1;
        Ok(item)
    }

    /// Moves past a gap in the offsets (Kafka may leave some: control batches of other
    /// producers); never backwards.
    fn advance_to(&mut self, offset: u64) {
        self.cursor.next_offset = self.cursor.next_offset.max(offset);
    }
}

/// The epoch rule over a partition of the event log. See the module doc.
pub struct EventReader {
    log: Arc<dyn PartitionedLog>,
    filter: EventFilter,
}

impl EventReader {
    pub fn new(
        log: Arc<dyn PartitionedLog>,
        topic: impl Into<String>,
        partition: u32,
        cursor: EventCursor,
    ) -> EventReader {
        EventReader {
            log,
            filter: EventFilter::new(topic, partition, cursor),
        }
    }

    pub fn cursor(&self) -> EventCursor {
        self.filter.cursor()
    }

    /// Records ignored by the epoch rule so far.
    pub fn ignored(&self) -> u64 {
        self.filter.ignored()
    }

    /// The valid items among the next records, waiting up to `wait` for the first one.
    /// Empty when nothing came, or when everything read was ignored. A record that cannot
    /// be read is an error once the valid items before it have been returned.
    pub async fn next(
        &mut self,
        bound: ReadBound,
        wait: Duration,
    ) -> Result<Vec<EventItem>, ShardingError> {
        let from = self.filter.cursor().next_offset;
        let records = self
            .log
            .read(&self.filter.topic, self.filter.partition, from, bound, wait)
            .await?;
        let mut items = Vec::with_capacity(records.len());
        for record in records {
            match self.filter.admit(record) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => {}
                // The valid items before a bad record are returned first; the cursor stays
                // before the bad record, so the next call reports it.
                Err(err) if items.is_empty() => return Err(err),
                Err(_) => break,
            }
        }
        Ok(items)
    }

    /// Replays every record below `end` (typically the offset after the reader's own
    /// marker, or the end offset when the replay started), handing each valid item to
    /// `visit`. Fails if records below `end` stop coming.
    pub async fn replay_to(
        &mut self,
        end: u64,
        mut visit: impl FnMut(EventItem) -> Result<(), ShardingError> + Send,
    ) -> Result<(), ShardingError> {
        let bound = ReadBound::new(REPLAY_READ_RECORDS, REPLAY_READ_BYTES);
        let wait = Duration::from_millis(REPLAY_READ_WAIT_MS);
        let mut empty_reads = 0u32;
        while self.filter.cursor().next_offset < end {
            let from = self.filter.cursor().next_offset;
            let records = self
                .log
                .read(&self.filter.topic, self.filter.partition, from, bound, wait)
                .await?;
            if records.is_empty() {
                empty_reads += 1;
                if empty_reads >= REPLAY_EMPTY_READS_MAX {
                    return Err(ShardingError::Timeout {
                        op: format!(
                            "replay of {}[{}] to offset {end}: stuck at {from}",
                            self.filter.topic, self.filter.partition
                        ),
                        after_ms: u64::from(REPLAY_EMPTY_READS_MAX) * REPLAY_READ_WAIT_MS,
                    });
                }
                continue;
            }
            empty_reads = 0;
            for record in records {
                if record.offset >= end {
                    self.filter.advance_to(end);
                    break;
                }
                if let Some(item) = self.filter.admit(record)? {
                    visit(item)?;
                }
            }
        }
        Ok(())
    }

    /// Moves the reader to `offset` by replaying from its position, so that its cursor
    /// knows the latest marker before `offset`. For a reader that resumes from a bare
    /// offset; it costs a read of the log up to there.
    pub async fn skip_to(&mut self, offset: u64) -> Result<(), ShardingError> {
        self.replay_to(offset, |_| Ok(())).await
    }
}

/// Writes one owner's records to `events[partition]`: its marker, then its framed events.
pub struct EventWriter {
    log: Arc<dyn PartitionedLog>,
    topic: String,
    partition: u32,
    node: NodeId,
    epoch: Epoch,
}

impl EventWriter {
    pub fn new(
        log: Arc<dyn PartitionedLog>,
        topic: impl Into<String>,
        partition: u32,
        node: NodeId,
        epoch: Epoch,
    ) -> EventWriter {
        EventWriter {
            log,
            topic: topic.into(),
            partition,
            node,
            epoch,
        }
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Appends `Epoch(e)`; returns its offset once durable.
    pub async fn write_marker(&self) -> Result<u64, ShardingError> {
        let marker = encode_epoch_marker(self.partition, self.epoch, &self.node)?;
        let offsets = self
            .log
            .append(&self.topic, self.partition, vec![marker])
            .await?;
        offsets
            .first()
            .copied()
            .ok_or_else(|| ShardingError::AppendRefused {
                topic: self.topic.clone(),
                partition: self.partition,
                reason: "the log returned no offset for the marker".to_owned(),
            })
    }

    /// Appends the engine's payloads, each framed with this writer's epoch; returns their
    /// offsets once all are durable.
    pub async fn append(&self, payloads: &[Vec<u8>]) -> Result<Vec<u64>, ShardingError> {
        let frames = payloads
            .iter()
            .map(|payload| encode_event_frame(self.epoch, payload))
            .collect::<Result<Vec<_>, _>>()?;
        self.log.append(&self.topic, self.partition, frames).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::encode_event_frame;

    fn node(id: &str) -> NodeId {
        NodeId::new(id).expect("node id")
    }

    fn marker(offset: u64, partition: u32, epoch: u64) -> LogRecord {
        LogRecord {
            offset,
            payload: encode_epoch_marker(partition, Epoch(epoch), &node("n")).expect("marker"),
        }
    }

    fn frame(offset: u64, epoch: u64, payload: &[u8]) -> LogRecord {
        LogRecord {
            offset,
            payload: encode_event_frame(Epoch(epoch), payload).expect("frame"),
        }
    }

    fn payloads(filter: &mut EventFilter, records: Vec<LogRecord>) -> Vec<Vec<u8>> {
        records
            .into_iter()
            .filter_map(|r| filter.admit(r).expect("readable"))
            .filter_map(|item| match item {
                EventItem::Event(event) => Some(event.payload),
                EventItem::Marker(_) => None,
            })
            .collect()
    }

    #[test]
    fn records_count_only_under_the_latest_marker() {
        let mut filter = EventFilter::new("events", 2, EventCursor::START);
        let got = payloads(
            &mut filter,
            vec![
                frame(0, 1, b"before any marker"),
                marker(1, 2, 1),
                frame(2, 1, b"a"),
                marker(3, 2, 2),
                frame(4, 1, b"stale owner after the move"),
                frame(5, 2, b"b"),
                marker(6, 2, 1), // a late marker of the old epoch: does not reopen it
                frame(7, 1, b"stale again"),
                frame(8, 2, b"c"),
                frame(9, 3, b"an epoch nobody fenced with"),
            ],
        );
        assert_eq!(got, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(filter.ignored(), 5);
        assert_eq!(
            filter.cursor(),
            EventCursor {
                next_offset: 10,
                epoch: Some(Epoch(2))
            }
        );
    }

    #[tokio::test]
    async fn a_superseded_owner_sees_it_after_its_restore() {
        use crate::log::TopicSpec;
        use crate::MemoryLog;
        let log = Arc::new(MemoryLog::new());
        let spec = TopicSpec {
            name: "events".to_owned(),
            partitions: 1,
        };
        log.create_topics_now(&[spec]).expect("topic");
        let log: Arc<dyn PartitionedLog> = log;
        // The owner of epoch 5 fenced first; the slow node assigned epoch 4 fences after.
        let newer = EventWriter::new(Arc::clone(&log), "events", 0, node("b"), Epoch(5));
        newer.write_marker().await.expect("marker");
        let slow = EventWriter::new(Arc::clone(&log), "events", 0, node("a"), Epoch(4));
        let mine = slow.write_marker().await.expect("marker");
        let mut reader = EventReader::new(Arc::clone(&log), "events", 0, EventCursor::START);
        reader
            .replay_to(mine + 1, |_| Ok(()))
            .await
            .expect("restore");
        assert_eq!(
            reader.cursor().epoch,
            Some(Epoch(5)),
            "not the slow node's epoch"
        );
        assert_eq!(reader.ignored(), 1, "its marker did not count");
    }

    #[tokio::test]
    async fn next_returns_the_valid_items_before_a_bad_record_then_the_error() {
        use crate::log::TopicSpec;
        use crate::MemoryLog;
        let memory = Arc::new(MemoryLog::new());
        let spec = TopicSpec {
            name: "events".to_owned(),
            partitions: 1,
        };
        memory.create_topics_now(&[spec]).expect("topic");
        let records = vec![
            marker(0, 0, 1).payload,
            frame(1, 1, b"kept").payload,
            b"garbage".to_vec(),
            frame(3, 1, b"after").payload,
        ];
        memory.append_now("events", 0, records).expect("append");
        let log: Arc<dyn PartitionedLog> = memory;
        let mut reader = EventReader::new(log, "events", 0, EventCursor::START);
        let bound = ReadBound::new(100, 1 << 20);
        let wait = Duration::from_millis(10);
        let items = reader.next(bound, wait).await.expect("the valid prefix");
        assert_eq!(items.len(), 2, "marker and the kept event");
        let err = reader
            .next(bound, wait)
            .await
            .expect_err("then the bad record");
        assert!(err.to_string().contains("events[0] offset 2"), "{err}");
        assert_eq!(reader.cursor().next_offset, 2);
    }

    #[test]
    fn a_cursor_resumes_with_its_epoch() {
        let mut filter = EventFilter::new(
            "events",
            0,
            EventCursor {
                next_offset: 5,
                epoch: Some(Epoch(3)),
            },
        );
        assert_eq!(
            payloads(&mut filter, vec![frame(5, 3, b"x")]),
            [b"x".to_vec()]
        );
    }

    #[test]
    fn bad_records_stop_the_reader_where_they_are() {
        let mut filter = EventFilter::new("events", 4, EventCursor::START);
        filter.admit(marker(0, 4, 1)).expect("marker");
        let err = filter
            .admit(LogRecord {
                offset: 1,
                payload: vec![0xC1, 0x51],
            })
            .expect_err("truncated");
        assert!(
            err.to_string()
                .starts_with("record at events[4] offset 1 refused: truncated"),
            "{err}"
        );
        assert_eq!(
            filter.cursor().next_offset,
            1,
            "not moved past the bad record"
        );
        let err = filter
            .admit(marker(1, 5, 2))
            .expect_err("foreign partition");
        assert!(matches!(
            err,
            ShardingError::MarkerForeignPartition { named: 5, .. }
        ));
        let err = filter.admit(frame(0, 1, b"x")).expect_err("out of order");
        assert!(matches!(err, ShardingError::OutOfOrder { expected: 1, .. }));
    }
}
