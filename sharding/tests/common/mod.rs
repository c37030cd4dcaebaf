//! Scenarios run against every implementation of the partitioned log: the in-process log,
//! librdkafka's mock cluster and a real broker process. Each takes the log as
//! `Arc<dyn PartitionedLog>` with its topics already created.

#![allow(dead_code)] // each test binary uses some of the scenarios

use sharding::balancer::{plan_failover, plan_move, ClusterView};
use sharding::{
    Applied, ClusterTopics, ControlLog, ControlRecord, Epoch, EventCursor, EventItem, EventReader,
    EventWriter, FormatRange, Heartbeat, LogRecord, NodeId, Ownership, PartitionCount,
    PartitionedLog, ReadBound, ShardingError,
};
use std::sync::Arc;
use std::time::Duration;

pub const PARTITIONS: u32 = 4;
pub const LIVENESS: Duration = Duration::from_secs(5);
pub const WAIT: Duration = Duration::from_secs(5);

pub fn topics(prefix: &str) -> ClusterTopics {
    ClusterTopics::new(prefix, PartitionCount::new(PARTITIONS).expect("count"))
}

pub fn node(id: &str) -> NodeId {
    NodeId::new(id).expect("node id")
}

fn heartbeat(id: &str) -> ControlRecord {
    ControlRecord::Heartbeat(Heartbeat {
        node: node(id),
        sent_at_ms: 0,
        formats: FormatRange::sharding_formats(),
        warm: Vec::new(),
    })
}

/// Reads `topic[partition]` from `from` up to `end`, in as many reads as needed.
pub async fn read_all(
    log: &dyn PartitionedLog,
    topic: &str,
    partition: u32,
    from: u64,
    end: u64,
) -> Vec<LogRecord> {
    let mut out = Vec::new();
    let mut next = from;
    for _ in 0..100 {
        if next >= end {
            break;
        }
        let records = log
            .read(topic, partition, next, ReadBound::new(3, 1 << 20), WAIT)
            .await
            .expect("read");
        if let Some(last) = records.last() {
            next = last.offset + 1;
        }
        out.extend(records);
    }
    out
}

/// Append, read back in bounded pieces, end offsets, a read past the end, a waiting read.
/// The partition's end offset once it has reached `expected`, or the last answer after
/// a bounded wait. The tansu broker acknowledges a multi-record append (`acks=all`,
/// durable) before its high watermark covers the whole batch: for a moment it reports the
/// batch's first offset + 1, so an end asked at once can be short. The end a reader is
/// told is a moment's answer anyway; what the scenarios check is that it reaches every
/// acknowledged record, and never goes past them.
async fn settled_end(log: &dyn PartitionedLog, topic: &str, partition: u32, expected: u64) -> u64 {
    let mut end = 0;
    for _ in 0..SETTLE_TRIES {
        end = log.end_offset(topic, partition).await.expect("end");
        if end >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(SETTLE_PAUSE_MS)).await;
    }
    end
}

/// How often, and how far apart, [`settled_end`] asks: up to about 5 s.
const SETTLE_TRIES: u32 = 50;
const SETTLE_PAUSE_MS: u64 = 100;

pub async fn produce_and_consume(log: Arc<dyn PartitionedLog>, topics: &ClusterTopics) {
    assert_eq!(
        log.partition_count(&topics.events).await.expect("count"),
        PARTITIONS
    );
    assert_eq!(
        log.partition_count(&topics.control).await.expect("count"),
        1
    );
    let batch: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; usize::from(i) + 1]).collect();
    let offsets = log
        .append(&topics.commands, 2, batch.clone())
        .await
        .expect("append");
    assert_eq!(
        offsets,
        (0..10).collect::<Vec<u64>>(),
        "a fresh partition starts at 0"
    );
    assert_eq!(
        settled_end(log.as_ref(), &topics.commands, 2, 10).await,
        10,
        "the end after a multi-record append"
    );
    let more = log
        .append(&topics.commands, 2, vec![b"x".to_vec()])
        .await
        .expect("append");
    assert_eq!(more, [10]);
    assert_eq!(settled_end(log.as_ref(), &topics.commands, 2, 11).await, 11);
    assert_eq!(log.end_offset(&topics.commands, 1).await.expect("end"), 0);

    let back = read_all(log.as_ref(), &topics.commands, 2, 0, 11).await;
    let payloads: Vec<Vec<u8>> = back.iter().map(|r| r.payload.clone()).collect();
    let mut expected = batch;
    expected.push(b"x".to_vec());
    assert_eq!(payloads, expected);
    assert!(back.iter().enumerate().all(|(i, r)| r.offset == i as u64));

    // Count and byte bounds; a continued read; a read from the middle.
    let first = log
        .read(&topics.commands, 2, 0, ReadBound::new(4, 1 << 20), WAIT)
        .await
        .expect("read");
    assert_eq!(first.len(), 4);
    let next = log
        .read(&topics.commands, 2, 4, ReadBound::new(100, 5), WAIT)
        .await
        .expect("read");
    assert_eq!(next.first().map(|r| r.offset), Some(4));
    assert_eq!(
        next.len(),
        1,
        "record 4 has 5 bytes: the byte bound is full"
    );
    // (A read may return fewer records than are there: only at least one.)
    let middle = read_all(log.as_ref(), &topics.commands, 2, 9, 11).await;
    assert_eq!(middle.iter().map(|r| r.offset).collect::<Vec<_>>(), [9, 10]);

    // Nothing there yet: an empty answer after the wait.
    let empty = log
        .read(
            &topics.commands,
            1,
            0,
            ReadBound::new(10, 1 << 20),
            Duration::from_millis(100),
        )
        .await
        .expect("read");
    assert!(empty.is_empty());
    // Past the end: an error naming the log's range, never a silent jump.
    let err = log
        .read(&topics.commands, 2, 50, ReadBound::new(10, 1 << 20), WAIT)
        .await
        .expect_err("past the end");
    assert!(
        matches!(
            err,
            ShardingError::OffsetOutOfRange {
                offset: 50,
                end: 11,
                ..
            }
        ),
        "{err}"
    );

    // A waiting reader gets a record appended while it waits.
    let writer = Arc::clone(&log);
    let topic = topics.commands.clone();
    let append = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        writer
            .append(&topic, 3, vec![b"late".to_vec()])
            .await
            .expect("append")
    });
    let got = log
        .read(&topics.commands, 3, 0, ReadBound::new(10, 1 << 20), WAIT)
        .await
        .expect("read");
    assert_eq!(append.await.expect("task"), [0]);
    assert_eq!(
        got.iter().map(|r| r.payload.as_slice()).collect::<Vec<_>>(),
        [b"late"]
    );
}

/// What a reader from the start of `events[partition]` accepts: the payloads of valid
/// events, and the epochs of the markers it counted.
///
/// `end` is the offset after the last record written, as the writers' appends returned it.
pub async fn valid_payloads(
    log: Arc<dyn PartitionedLog>,
    topics: &ClusterTopics,
    partition: u32,
    end: u64,
) -> (Vec<Vec<u8>>, Vec<Epoch>, u64) {
    let mut reader = EventReader::new(log, topics.events.clone(), partition, EventCursor::START);
    let mut payloads = Vec::new();
    let mut markers = Vec::new();
    reader
        .replay_to(end, |item| {
            match item {
                EventItem::Event(event) => payloads.push(event.payload),
                EventItem::Marker(marker) => markers.push(marker.epoch),
            }
            Ok(())
        })
        .await
        .expect("replay");
    (payloads, markers, reader.ignored())
}

/// Node a owns partition 1; an operator moves it to b; a keeps writing (it has not read the
/// control log); b takes over (marker, restore up to its marker) and writes. Every reader
/// accepts a's records before the move and b's after, none of a's late ones.
pub async fn stale_owner_is_fenced(log: Arc<dyn PartitionedLog>, topics: &ClusterTopics) {
    const P: u32 = 1;
    let control = ControlLog::new(Arc::clone(&log), topics);
    let now = 1_000;
    control
        .append(&[heartbeat("a"), heartbeat("b")])
        .await
        .expect("heartbeats");
    let mut fold = Ownership::new(topics.partitions, LIVENESS);
    control.catch_up_to_end(&mut fold, now).await.expect("fold");

    // The first assignment of every partition: spread over a and b.
    let initial = plan_failover(&ClusterView::from_ownership(&fold, now, &[]));
    assert_eq!(initial.len(), PARTITIONS as usize);
    let records: Vec<ControlRecord> = initial.into_iter().map(ControlRecord::Assign).collect();
    control.append(&records).await.expect("assign");
    control.catch_up_to_end(&mut fold, now).await.expect("fold");
    let owner = fold.owner(P).expect("partition").clone();
    let (old, new) = if owner.node == Some(node("a")) {
        ("a", "b")
    } else {
        ("b", "a")
    };
    assert_eq!(owner.epoch, Epoch(1));

    // The first owner fences the partition and writes.
    let a = EventWriter::new(
        Arc::clone(&log),
        topics.events.clone(),
        P,
        node(old),
        owner.epoch,
    );
    a.write_marker().await.expect("marker");
    a.append(&[b"a1".to_vec(), b"a2".to_vec()])
        .await
        .expect("append");

    // The operator moves the partition; the new owner learns it from the control log.
    let moved = plan_move(&ClusterView::from_ownership(&fold, now, &[]), P, &node(new))
        .expect("plan the move");
    control
        .append(&[ControlRecord::Assign(moved)])
        .await
        .expect("move");
    let applied = control.catch_up_to_end(&mut fold, now).await.expect("fold");
    assert!(matches!(
        applied.as_slice(),
        [Applied::Assigned {
            epoch: Epoch(2),
            ..
        }]
    ));
    let epoch = fold.owner(P).expect("partition").epoch;

    // The new owner fences, then restores up to its own marker.
    let b = EventWriter::new(Arc::clone(&log), topics.events.clone(), P, node(new), epoch);
    let marker = b.write_marker().await.expect("marker");
    let mut restore = EventReader::new(
        Arc::clone(&log),
        topics.events.clone(),
        P,
        EventCursor::START,
    );
    let mut restored = Vec::new();
    restore
        .replay_to(marker + 1, |item| {
            if let EventItem::Event(event) = item {
                restored.push(event.payload);
            }
            Ok(())
        })
        .await
        .expect("restore");
    assert_eq!(restored, [b"a1".to_vec(), b"a2".to_vec()]);
    assert_eq!(
        restore.cursor().epoch,
        Some(epoch),
        "its own marker is the latest"
    );

    // The stale owner keeps writing, even a marker of its old epoch; the new owner writes.
    a.append(&[b"a-late-1".to_vec()])
        .await
        .expect("stale append");
    a.write_marker().await.expect("stale marker");
    a.append(&[b"a-late-2".to_vec()])
        .await
        .expect("stale append");
    let written = b
        .append(&[b"b1".to_vec(), b"b2".to_vec()])
        .await
        .expect("append");
    let end = written.last().expect("offsets") + 1;

    let (payloads, markers, ignored) = valid_payloads(Arc::clone(&log), topics, P, end).await;
    assert_eq!(
        payloads,
        [
            b"a1".to_vec(),
            b"a2".to_vec(),
            b"b1".to_vec(),
            b"b2".to_vec()
        ],
        "no reader accepts the stale owner's late records"
    );
    assert_eq!(markers, [Epoch(1), Epoch(2)]);
    assert_eq!(ignored, 3, "two late frames and one late marker");

    // A reader resuming from the restore's cursor sees only what followed.
    let mut tail = EventReader::new(Arc::clone(&log), topics.events.clone(), P, restore.cursor());
    let mut after = Vec::new();
    tail.replay_to(end, |item| {
        if let EventItem::Event(event) = item {
            after.push(event.payload);
        }
        Ok(())
    })
    .await
    .expect("tail");
    assert_eq!(after, [b"b1".to_vec(), b"b2".to_vec()]);
}

/// A restore from the log rebuilds exactly what the owners wrote under their epochs, over
/// several owner changes, read in small pieces.
pub async fn restore_from_the_log(log: Arc<dyn PartitionedLog>, topics: &ClusterTopics) {
    const P: u32 = 3;
    let mut expected = Vec::new();
    let mut end = 0;
    for epoch in 1..=3u64 {
        let writer = EventWriter::new(
            Arc::clone(&log),
            topics.events.clone(),
            P,
            node(&format!("n{epoch}")),
            Epoch(epoch),
        );
        writer.write_marker().await.expect("marker");
        let batch: Vec<Vec<u8>> = (0..25u32)
            .map(|i| format!("epoch {epoch} event {i}").into_bytes())
            .collect();
        let offsets = writer.append(&batch).await.expect("append");
        end = offsets.last().expect("offsets") + 1;
        expected.extend(batch);
    }
    let (payloads, markers, ignored) = valid_payloads(Arc::clone(&log), topics, P, end).await;
    assert_eq!(payloads, expected);
    assert_eq!(markers, [Epoch(1), Epoch(2), Epoch(3)]);
    assert_eq!(ignored, 0);
}

/// Foreign, truncated and future-version records stop the reader with an error naming
/// topic, partition and offset.
pub async fn bad_records_are_refused(log: Arc<dyn PartitionedLog>, topics: &ClusterTopics) {
    let cases: [(u32, Vec<u8>, &str); 4] = [
        (
            0,
            br#"{"transferId":"x"}"#.to_vec(),
            "not a record of this hub: first byte 0x7b",
        ),
        (
            0,
            vec![0xC1, 0x01, 0x01, 0x90],
            "an engine record (kind tag 0x01), foreign to this log",
        ),
        (2, vec![0xC1, 0x51], "truncated: 2 bytes"),
        (
            2,
            vec![0xC1, 0x51, 0x07, 0x92, 0x01, 0xC4, 0x00],
            "event frame record has format version 7; this build reads versions 1 to 1",
        ),
    ];
    for (partition, bytes, why) in cases {
        let writer = EventWriter::new(
            Arc::clone(&log),
            topics.events.clone(),
            partition,
            node("w"),
            Epoch(1),
        );
        let start = log
            .end_offset(&topics.events, partition)
            .await
            .expect("end");
        writer.write_marker().await.expect("marker");
        let bad = log
            .append(&topics.events, partition, vec![bytes])
            .await
            .expect("append raw bytes")[0];
        writer.append(&[b"after".to_vec()]).await.expect("append");
        // From this case's marker on (a reader cannot pass an earlier case's bad record).
        let cursor = EventCursor {
            next_offset: start,
            epoch: None,
        };
        let mut reader =
            EventReader::new(Arc::clone(&log), topics.events.clone(), partition, cursor);
        let err = reader
            .replay_to(bad + 2, |_| Ok(()))
            .await
            .expect_err("a bad record stops the reader");
        let text = err.to_string();
        let place = format!(
            "record at {}[{partition}] offset {bad} refused: ",
            topics.events
        );
        assert!(text.starts_with(&place), "{text}");
        assert!(text.contains(why), "{text}");
        assert_eq!(
            reader.cursor().next_offset,
            bad,
            "stopped at the bad record"
        );
        // The reader does not move past it on a second try either.
        assert!(reader.replay_to(bad + 2, |_| Ok(())).await.is_err());
    }

    // The control log's fold refuses a future-version record the same way.
    let bad = log
        .append(&topics.control, 0, vec![vec![0xC1, 0x40, 0x02, 0x90]])
        .await
        .expect("append")[0];
    let control = ControlLog::new(Arc::clone(&log), topics);
    let mut fold = Ownership::new(topics.partitions, LIVENESS);
    let err = control
        .catch_up_to_end(&mut fold, 0)
        .await
        .expect_err("future heartbeat");
    assert!(
        err.to_string().starts_with(&format!(
            "record at {}[0] offset {bad} refused: heartbeat record has format version 2",
            topics.control
        )),
        "{err}"
    );
}
