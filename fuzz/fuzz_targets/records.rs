//! Every stored-record decoder. The first byte picks the decoder, the rest is the record.
//! Where a decoder has an encoder, what it accepts must survive decode → encode → decode
//! unchanged (compared as values, or as the bytes of the two encodings where the type has
//! no equality); see fuzz/README.md for each.
#![no_main]

use engine::codec::{decode_record, encode_record, RecordKind};
use engine::command::FinishedTransfer;
use engine::limits::Limits;
use engine::machine::PartitionState;
use engine::storage::archive::{ChunkView, RunMeta};
use engine::storage::wal::decode_frames;
use engine::storage::{encode_batch, SnapshotRecord, WalRecord, WalRecordRef};
use gateway::fspiop::Stash;
use gateway::registry::Participant;
use libfuzzer_sys::fuzz_target;
use sharding::records::{encode_epoch_marker, encode_event_frame, ControlRecord, Epoch};
use sharding::validity::{EventCursor, EventFilter, EventItem};
use sharding::LogRecord;

/// Decodes `bytes` as a record of `kind`; if that works, encodes the value, decodes the
/// encoding and encodes again: both decodes must succeed and both encodings be equal.
fn engine_round_trip<T>(kind: RecordKind, bytes: &[u8]) -> Option<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let value: T = decode_record(kind, bytes).ok()?;
    let first = encode_record(kind, &value).expect("a decoded record encodes");
    let again: T = decode_record(kind, &first).expect("an encoded record decodes");
    let second = encode_record(kind, &again).expect("a decoded record encodes");
    assert_eq!(
        first, second,
        "{kind}: decode -> encode -> decode changed the record"
    );
    Some(value)
}

fn wal_batch(bytes: &[u8]) {
    let Some(record) = engine_round_trip::<WalRecord>(RecordKind::WalBatch, bytes) else {
        return;
    };
    // The borrowed form the runtime writes is encoded identically.
    let by_ref = WalRecordRef {
        batch_seq: record.batch_seq,
        epoch: record.epoch,
        inputs: record.inputs.iter().map(|(c, f)| (c, f)).collect(),
    };
    let owned = encode_record(RecordKind::WalBatch, &record).expect("encodes");
    assert_eq!(encode_batch(&by_ref).expect("encodes"), owned);
}

fn partition_state(bytes: &[u8]) {
    let Ok(state) = PartitionState::from_snapshot(bytes, Limits::default()) else {
        return;
    };
    let first = state.snapshot_bytes();
    let again = PartitionState::from_snapshot(&first, Limits::default())
        .expect("a state's own snapshot is accepted");
    assert_eq!(
        first,
        again.snapshot_bytes(),
        "snapshot -> state -> snapshot changed"
    );
}

fn snapshot(bytes: &[u8]) {
    if let Some(record) = engine_round_trip::<SnapshotRecord>(RecordKind::Snapshot, bytes) {
        partition_state(&record.state);
    }
}

fn finished_transfer(bytes: &[u8]) {
    let Ok(value) = decode_record::<FinishedTransfer>(RecordKind::ArchiveRecord, bytes) else {
        return;
    };
    let encoded = encode_record(RecordKind::ArchiveRecord, &value).expect("encodes");
    let again: FinishedTransfer =
        decode_record(RecordKind::ArchiveRecord, &encoded).expect("decodes");
    assert_eq!(again, value);
}

fn run_meta(bytes: &[u8]) {
    let Ok(value) = decode_record::<RunMeta>(RecordKind::ArchiveRunMeta, bytes) else {
        return;
    };
    let encoded = encode_record(RecordKind::ArchiveRunMeta, &value).expect("encodes");
    let again: RunMeta = decode_record(RecordKind::ArchiveRunMeta, &encoded).expect("decodes");
    assert_eq!(again, value);
}

fn archive_chunk(bytes: &[u8]) {
    let Ok(view) = ChunkView::parse(bytes) else {
        return;
    };
    assert_eq!(view.is_empty(), view.len() == 0);
    let mut total = 0;
    for index in 0..view.len() {
        if index > 0 {
            assert!(view.hash(index - 1) <= view.hash(index), "hashes ascend");
        }
        let _ = view.finished_ms(index);
        let record = view.record(index);
        total += record.len();
        finished_transfer(record);
    }
    assert!(total <= bytes.len());
}

/// One WAL frame as `Wal::append` lays it out: magic, partition, batch, durable offset,
/// body length, CRC (over the fields and the body), body; all little-endian.
fn frame(partition: u32, batch_seq: u64, durable: u64, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).expect("small body");
    let mut crc = crc32fast::Hasher::new();
    crc.update(&partition.to_le_bytes());
    crc.update(&batch_seq.to_le_bytes());
    crc.update(&durable.to_le_bytes());
    crc.update(&len.to_le_bytes());
    crc.update(body);
    let mut out = Vec::with_capacity(32 + body.len());
    out.extend_from_slice(b"LAW2");
    out.extend_from_slice(&partition.to_le_bytes());
    out.extend_from_slice(&batch_seq.to_le_bytes());
    out.extend_from_slice(&durable.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// A segment's bytes as they are: the frames read back, framed again, read the same.
fn wal_segment(bytes: &[u8]) {
    let Some((&pick, segment)) = bytes.split_first() else {
        return;
    };
    let partition = u32::from(pick % 4);
    let after = u64::from(pick / 4);
    let Ok(frames) = decode_frames(segment, partition, after) else {
        return;
    };
    let mut rebuilt = Vec::new();
    for (batch_seq, body) in &frames {
        assert!(*batch_seq > after);
        rebuilt.extend(frame(partition, *batch_seq, 0, body));
    }
    assert_eq!(decode_frames(&rebuilt, partition, after).ok(), Some(frames));
}

/// Frames made from the input (each: partition byte, batch byte, length byte, body), in
/// a segment, then one byte flipped if the input asks: intact frames read back exactly;
/// a flipped byte is never read as a different intact frame of the partition.
fn wal_frames(bytes: &[u8]) {
    let Some((&flip, mut rest)) = bytes.split_first() else {
        return;
    };
    let mut segment = Vec::new();
    let mut expected = Vec::new();
    while let [partition, batch, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (body, tail) = tail.split_at(len);
        let (partition, batch_seq) = (u32::from(partition % 3), u64::from(*batch));
        if partition == 0 && batch_seq > 0 {
            expected.push((batch_seq, body.to_vec()));
        }
        segment.extend(frame(partition, batch_seq, segment.len() as u64, body));
        rest = tail;
    }
    assert_eq!(decode_frames(&segment, 0, 0).ok(), Some(expected.clone()));
    if flip > 0 && !segment.is_empty() {
        let at = usize::from(flip) * 7 % segment.len();
        segment[at] ^= flip;
        if let Ok(frames) = decode_frames(&segment, 0, 0) {
            // Either the damage hit another partition's frame or its body (then a CRC
            // mismatch would have been an error for partition 0): what is read is a
            // subset of what was written, in order.
            let mut written = expected.iter();
            for got in &frames {
                assert!(
                    written.any(|w| w == got),
                    "a damaged segment yielded {got:?}"
                );
            }
        }
    }
}

fn stash(bytes: &[u8]) {
    let Some(value) = Stash::decode(bytes) else {
        return;
    };
    assert_eq!(Stash::decode(&value.encode()), Some(value));
}

/// The registry's record decoder (`Registry::load`), then what the admin API derives
/// from a record: every account id of an accepted record can be formed and maps back.
fn participant(bytes: &[u8]) {
    let Some(value) = Participant::decode(bytes) else {
        return;
    };
    let encoded = serde_json::to_vec(&value).expect("a participant serialises");
    let again = Participant::decode(&encoded).expect("its own encoding decodes");
    assert_eq!(again, value);
    for index in 0..value.currencies.len() {
        for settlement in [false, true] {
            let id = value.account_id(index, settlement);
            assert_eq!(
                value.account(id),
                Some((value.currencies[index].clone(), settlement))
            );
        }
    }
    let _ = value.account(0);
    let _ = value.account(u64::MAX);
}

fn control_record(bytes: &[u8]) {
    let Ok(record) = ControlRecord::decode("control", 0, 0, bytes) else {
        return;
    };
    let encoded = record.encode().expect("a decoded control record encodes");
    let again = ControlRecord::decode("control", 0, 0, &encoded).expect("decodes");
    assert_eq!(again, record);
}

/// The unsigned integer at the start of `bytes` (MessagePack).
fn msgpack_uint(bytes: &[u8]) -> Option<u64> {
    let be = |n: usize| -> Option<u64> {
        let raw = bytes.get(1..1 + n)?;
        Some(raw.iter().fold(0, |acc, b| (acc << 8) | u64::from(*b)))
    };
    match *bytes.first()? {
        b @ 0x00..=0x7f => Some(u64::from(b)),
        0xcc => be(1),
        0xcd => be(2),
        0xce => be(4),
        0xcf => be(8),
        _ => None,
    }
}

/// Event-log records through the validity filter that reads them. A marker's body is
/// `[partition, epoch, node]`, a frame's `[epoch, payload]`: their first integer, read by
/// hand, sets up a filter of that partition, or one that counts that epoch.
fn event_record(bytes: &[u8]) {
    let admit = |partition: u32, cursor: EventCursor, payload: &[u8]| {
        let mut filter = EventFilter::new("events", partition, cursor);
        filter.admit(LogRecord {
            offset: 0,
            payload: payload.to_vec(),
        })
    };
    let start = EventCursor::START;
    let first = bytes.get(4..).and_then(msgpack_uint);
    let partition = first.and_then(|p| u32::try_from(p).ok()).unwrap_or(0);
    if let Ok(Some(EventItem::Marker(marker))) = admit(partition, start, bytes) {
        let encoded = encode_epoch_marker(partition, marker.epoch, &marker.node).expect("encodes");
        assert_eq!(
            admit(partition, start, &encoded).ok(),
            Some(Some(EventItem::Marker(marker)))
        );
    }
    if let Some(epoch) = first {
        let counting = EventCursor {
            next_offset: 0,
            epoch: Some(Epoch(epoch)),
        };
        if let Ok(Some(EventItem::Event(event))) = admit(0, counting, bytes) {
            let encoded = encode_event_frame(event.epoch, &event.payload).expect("encodes");
            assert_eq!(
                admit(0, counting, &encoded).ok(),
                Some(Some(EventItem::Event(event)))
            );
        }
    }
}

const DECODERS: [fn(&[u8]); 12] = [
    wal_batch,
    snapshot,
    partition_state,
    finished_transfer,
    run_meta,
    archive_chunk,
    wal_segment,
    wal_frames,
    stash,
    participant,
    control_record,
    event_record,
];

fuzz_target!(|data: &[u8]| {
    if let Some((&pick, record)) = data.split_first() {
        DECODERS[usize::from(pick) % DECODERS.len()](record);
    }
});
