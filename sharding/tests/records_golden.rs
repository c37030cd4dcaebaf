//! Golden bytes of every record kind `sharding` writes. These bytes are the format other
//! readers (a reporting read side, an auditor's tool) rely on: a change to a record type
//! that changes them must come with a new format version (`records::envelope`), never
//! silently. Each sample is also decoded back.

use sharding::{
    encode_epoch_marker, encode_event_frame, Assign, AssignReason, ControlRecord, Drain, Epoch,
    EventCursor, EventFilter, EventItem, FormatRange, Heartbeat, LogRecord, NodeId, ValidEvent,
};

fn node(id: &str) -> NodeId {
    NodeId::new(id).expect("node id")
}

fn control_golden(record: ControlRecord, golden: &[u8]) {
    let bytes = record.encode().expect("encode");
    assert_eq!(bytes, golden, "{:?}", record.kind());
    let back = ControlRecord::decode("control", 0, 0, golden).expect("decode golden bytes");
    assert_eq!(back, record);
}

#[test]
fn heartbeat() {
    control_golden(
        ControlRecord::Heartbeat(Heartbeat {
            node: node("n1"),
            sent_at_ms: 1_700_000_000_000,
            formats: vec![FormatRange {
                kind: 0x51,
                oldest: 1,
                newest: 1,
            }],
            warm: vec![0, 7, 300],
        }),
        &[
            0xC1, 0x40, 0x01, // envelope: heartbeat, version 1
            0x94, // [node, sent_at_ms, formats, warm]
            0xA2, b'n', b'1', // "n1"
            0xCF, 0x00, 0x00, 0x01, 0x8B, 0xCF, 0xE5, 0x68, 0x00, // u64 1_700_000_000_000
            0x91, 0x93, 0x51, 0x01, 0x01, // [[0x51, 1, 1]]
            0x93, 0x00, 0x07, 0xCD, 0x01, 0x2C, // [0, 7, 300]
        ],
    );
}

#[test]
fn assign() {
    control_golden(
        ControlRecord::Assign(Assign {
            partition: 3,
            node: node("n2"),
            epoch: Epoch(4),
            expected_epoch: Epoch(3),
            reason: AssignReason::Failover,
        }),
        &[
            0xC1, 0x41, 0x01, // envelope: assign, version 1
            0x95, // [partition, node, epoch, expected_epoch, reason]
            0x03, 0xA2, b'n', b'2', 0x04, 0x03, // 3, "n2", 4, 3
            0xA8, b'F', b'a', b'i', b'l', b'o', b'v', b'e', b'r', // "Failover"
        ],
    );
}

#[test]
fn every_assign_reason_by_name() {
    for (reason, name) in [
        (AssignReason::Initial, "Initial"),
        (AssignReason::Move, "Move"),
        (AssignReason::Rebalance, "Rebalance"),
        (AssignReason::Drain, "Drain"),
        (AssignReason::Failover, "Failover"),
    ] {
        let bytes = ControlRecord::Assign(Assign {
            partition: 0,
            node: node("a"),
            epoch: Epoch(1),
            expected_epoch: Epoch(0),
            reason,
        })
        .encode()
        .expect("encode");
        let mut tail = vec![0xA0 | name.len() as u8];
        tail.extend_from_slice(name.as_bytes());
        assert!(bytes.ends_with(&tail), "{reason:?}: {bytes:02x?}");
    }
}

#[test]
fn drain() {
    control_golden(
        ControlRecord::Drain(Drain {
            node: node("n1"),
            drained: true,
        }),
        &[0xC1, 0x42, 0x01, 0x92, 0xA2, b'n', b'1', 0xC3],
    );
}

#[test]
fn epoch_marker_and_event_frame() {
    let marker = encode_epoch_marker(5, Epoch(2), &node("n1")).expect("marker");
    assert_eq!(
        marker,
        [
            0xC1, 0x50, 0x01, // envelope: epoch marker, version 1
            0x93, 0x05, 0x02, 0xA2, b'n', b'1', // [partition 5, epoch 2, "n1"]
        ]
    );
    let frame = encode_event_frame(Epoch(2), &[0xDE, 0xAD]).expect("frame");
    assert_eq!(
        frame,
        [
            0xC1, 0x51, 0x01, // envelope: event frame, version 1
            0x92, 0x02, // [epoch 2, payload]
            0xC4, 0x02, 0xDE, 0xAD, // bin 8 of 2 bytes
        ]
    );
    // The payload is always `bin`, even empty or of small bytes.
    let empty = encode_event_frame(Epoch(300), &[]).expect("frame");
    assert_eq!(
        empty,
        [0xC1, 0x51, 0x01, 0x92, 0xCD, 0x01, 0x2C, 0xC4, 0x00]
    );
    let small = encode_event_frame(Epoch(1), &[1, 2]).expect("frame");
    assert_eq!(
        small,
        [0xC1, 0x51, 0x01, 0x92, 0x01, 0xC4, 0x02, 0x01, 0x02]
    );

    let mut filter = EventFilter::new("events", 5, EventCursor::START);
    let items: Vec<EventItem> = [marker, frame]
        .into_iter()
        .enumerate()
        .filter_map(|(offset, payload)| {
            filter
                .admit(LogRecord {
                    offset: offset as u64,
                    payload,
                })
                .expect("golden bytes decode")
        })
        .collect();
    assert_eq!(
        items.last(),
        Some(&EventItem::Event(ValidEvent {
            offset: 1,
            epoch: Epoch(2),
            payload: vec![0xDE, 0xAD],
        }))
    );
}
