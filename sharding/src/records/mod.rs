//! The records `sharding` puts on the logs, and their exact encoding.
//!
//! Two logs carry them:
//!
//! * the **control log** (topic `control`, one partition): [`ControlRecord`]s. Every node
//!   folds it the same way ([`crate::ownership`]): heartbeats (liveness, the record formats
//!   a node reads, the partitions it keeps warm copies of), assignments (compare-and-set on
//!   a partition's epoch) and drains.
//! * the **event log** (topic `events`, N partitions): each record is either the
//!   `Epoch(e)` marker a new owner writes before anything else, or an event frame carrying
//!   the writer's epoch and the engine's payload (opaque bytes here). Writers encode with
//!   [`encode_epoch_marker`] and [`encode_event_frame`]; there is deliberately **no public
//!   decoder** for them: the only way to read events is through the validity filter
//!   ([`crate::validity`]), so no reader can forget the epoch rule.
//!
//! Every record is an envelope ([`envelope`]) around a positional MessagePack body. The
//! bodies, field by field (golden bytes in `tests/records_golden.rs`):
//!
//! | kind (tag) | body |
//! | --- | --- |
//! | heartbeat (0x40) | `[node: str, sent_at_ms: u64, formats: [[kind: u8, oldest: u8, newest: u8]...], warm: [u32...]]` |
//! | assign (0x41) | `[partition: u32, node: str, epoch: u64, expected_epoch: u64, reason: str]` |
//! | drain (0x42) | `[node: str, drained: bool]` |
//! | epoch marker (0x50) | `[partition: u32, epoch: u64, node: str]` |
//! | event frame (0x51) | `[epoch: u64, payload: bin]` |

pub mod envelope;

pub use envelope::{RecordError, RecordKind, ENGINE_TAGS, ENVELOPE_MAGIC, SHARDING_TAGS};

use crate::limits::{HEARTBEAT_FORMATS_MAX, NODE_ID_BYTES_MAX, RECORD_BYTES_MAX};
use crate::ShardingError;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A node's name in the cluster (`--node-id`): 1 to 64 bytes of `A-Z a-z 0-9 . _ -`,
/// e.g. a StatefulSet pod name such as `engine-0`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

impl NodeId {
    pub fn new(id: impl Into<String>) -> Result<NodeId, ShardingError> {
        let id = id.into();
        let valid = !id.is_empty()
            && id.len() <= NODE_ID_BYTES_MAX
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
        if valid {
            Ok(NodeId(id))
        } else {
            Err(ShardingError::Config(format!(
                "node id {id:?}: 1 to {NODE_ID_BYTES_MAX} bytes of A-Z a-z 0-9 . _ -"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NodeId {
    type Error = String;
    fn try_from(id: String) -> Result<NodeId, String> {
        NodeId::new(id).map_err(|err| err.to_string())
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> String {
        id.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A partition's ownership epoch: 0 before its first owner, +1 (at least) with every
/// change of owner. It is the fencing token of DESIGN §7.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl Epoch {
    pub const NONE: Epoch = Epoch(0);

    /// The next epoch, or `None` at `u64::MAX` (never reached: one move per nanosecond
    /// would take 584 years).
    pub fn next(self) -> Option<Epoch> {
        self.0.checked_add(1).map(Epoch)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The format versions a node reads for one record kind (a kind tag of the engine's or of
/// this crate's range).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormatRange {
    pub kind: u8,
    pub oldest: u8,
    pub newest: u8,
}

impl FormatRange {
    pub fn reads(&self, kind: u8, version: u8) -> bool {
        self.kind == kind && (self.oldest..=self.newest).contains(&version)
    }

    /// The ranges of this crate's own record kinds, for a node's heartbeat.
    pub fn sharding_formats() -> Vec<FormatRange> {
        RecordKind::ALL
            .iter()
            .map(|kind| FormatRange {
                kind: kind.tag(),
                oldest: 1,
                newest: kind.version(),
            })
            .collect()
    }
}

/// Why an assignment was made. Recorded for operators (`GET /partitions`, the audit of the
/// control log); the fold does not depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AssignReason {
    /// A partition's first owner.
    Initial,
    /// An operator moved it.
    Move,
    /// The balancer spread partitions.
    Rebalance,
    /// Its owner is being drained.
    Drain,
    /// Its owner missed heartbeats past the liveness timeout.
    Failover,
}

/// A node's heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node: NodeId,
    /// The sender's clock, for operators. Liveness uses the time the fold is told.
    pub sent_at_ms: u64,
    /// The record formats the node reads: a partition whose records carry a format a node
    /// does not read is never given to it.
    pub formats: Vec<FormatRange>,
    /// The partitions it keeps a warm standby copy of (failover prefers these nodes).
    pub warm: Vec<u32>,
}

/// `Assign{partition, node, epoch, expected_epoch}` of DESIGN §7: applies only if the
/// partition's epoch, at this record's place in the log, is `expected_epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assign {
    pub partition: u32,
    pub node: NodeId,
    pub epoch: Epoch,
    pub expected_epoch: Epoch,
    pub reason: AssignReason,
}

/// An operator's (or a `preStop` hook's) intent: a drained node is given no partitions and
/// the balancer moves its partitions away. `drained: false` undrains it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    pub node: NodeId,
    pub drained: bool,
}

/// One record of the control log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlRecord {
    Heartbeat(Heartbeat),
    Assign(Assign),
    Drain(Drain),
}

const CONTROL_KINDS: [RecordKind; 3] =
    [RecordKind::Heartbeat, RecordKind::Assign, RecordKind::Drain];

impl ControlRecord {
    pub fn kind(&self) -> RecordKind {
        match self {
            ControlRecord::Heartbeat(_) => RecordKind::Heartbeat,
            ControlRecord::Assign(_) => RecordKind::Assign,
            ControlRecord::Drain(_) => RecordKind::Drain,
        }
    }

    /// The record's bytes on the control log.
    pub fn encode(&self) -> Result<Vec<u8>, ShardingError> {
        let kind = self.kind();
        let encoded = match self {
            ControlRecord::Heartbeat(heartbeat) => {
                if heartbeat.formats.len() > HEARTBEAT_FORMATS_MAX {
                    return Err(ShardingError::Config(format!(
                        "a heartbeat advertises at most {HEARTBEAT_FORMATS_MAX} formats"
                    )));
                }
                envelope::encode(kind, heartbeat)
            }
            ControlRecord::Assign(assign) => envelope::encode(kind, assign),
            ControlRecord::Drain(drain) => envelope::encode(kind, drain),
        };
        let bytes = encoded.map_err(|source| ShardingError::Encode {
            kind: kind.name(),
            source,
        })?;
        check_size(kind, bytes)
    }

    /// Reads a control record found at `topic[partition]` `offset`. A foreign, truncated,
    /// garbled or future-version record is refused with an error naming that place.
    pub fn decode(
        topic: &str,
        partition: u32,
        offset: u64,
        bytes: &[u8],
    ) -> Result<ControlRecord, ShardingError> {
        Self::decode_bytes(bytes).map_err(|source| ShardingError::Record {
            topic: topic.to_owned(),
            partition,
            offset,
            source,
        })
    }

    fn decode_bytes(bytes: &[u8]) -> Result<ControlRecord, RecordError> {
        let (kind, body) = envelope::open(bytes, "a control record", &CONTROL_KINDS)?;
        Ok(match kind {
            RecordKind::Heartbeat => {
                let heartbeat: Heartbeat = envelope::decode_body(kind, body)?;
                if heartbeat.formats.len() > HEARTBEAT_FORMATS_MAX {
                    return Err(RecordError::Invalid {
                        kind,
                        version: kind.version(),
                        reason: format!(
                            "{} format ranges, at most {HEARTBEAT_FORMATS_MAX}",
                            heartbeat.formats.len()
                        ),
                    });
                }
                ControlRecord::Heartbeat(heartbeat)
            }
            RecordKind::Assign => ControlRecord::Assign(envelope::decode_body(kind, body)?),
            RecordKind::Drain => ControlRecord::Drain(envelope::decode_body(kind, body)?),
            RecordKind::EpochMarker | RecordKind::EventFrame => {
                // `open` accepted only control kinds.
                return Err(RecordError::WrongKind {
                    expected: "a control record",
                    found_tag: kind.tag(),
                });
            }
        })
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct MarkerBody {
    pub partition: u32,
    pub epoch: Epoch,
    pub node: NodeId,
}

#[derive(Serialize)]
struct FrameRef<'a> {
    epoch: Epoch,
    payload: Bin<'a>,
}

/// Bytes written as MessagePack `bin` whatever their length or values (a plain slice of
/// few small bytes would be written as an array), so that outside readers always find
/// `bin` there.
struct Bin<'a>(&'a [u8]);

impl Serialize for Bin<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

#[derive(Deserialize)]
pub(crate) struct FrameBody {
    pub epoch: Epoch,
    pub payload: Vec<u8>,
}

/// A record of the event log, as only the validity filter sees it.
pub(crate) enum EventLogRecord {
    Marker(MarkerBody),
    Frame(FrameBody),
}

const EVENT_KINDS: [RecordKind; 2] = [RecordKind::EpochMarker, RecordKind::EventFrame];

pub(crate) fn decode_event_record(bytes: &[u8]) -> Result<EventLogRecord, RecordError> {
    let (kind, body) = envelope::open(bytes, "an event-log record", &EVENT_KINDS)?;
    Ok(match kind {
        RecordKind::EpochMarker => EventLogRecord::Marker(envelope::decode_body(kind, body)?),
        _ => EventLogRecord::Frame(envelope::decode_body(kind, body)?),
    })
}

/// The `Epoch(e)` marker the owner of `partition` at `epoch` appends to `events[partition]`
/// before anything else.
pub fn encode_epoch_marker(
    partition: u32,
    epoch: Epoch,
    node: &NodeId,
) -> Result<Vec<u8>, ShardingError> {
    let kind = RecordKind::EpochMarker;
    let body = MarkerBody {
        partition,
        epoch,
        node: node.clone(),
    };
    let bytes = envelope::encode(kind, &body).map_err(|source| ShardingError::Encode {
        kind: kind.name(),
        source,
    })?;
    check_size(kind, bytes)
}

/// One event record of the owner at `epoch`: the engine's `payload`, framed.
pub fn encode_event_frame(epoch: Epoch, payload: &[u8]) -> Result<Vec<u8>, ShardingError> {
    let kind = RecordKind::EventFrame;
    let bytes = envelope::encode(
        kind,
        &FrameRef {
            epoch,
            payload: Bin(payload),
        },
    )
    .map_err(|source| ShardingError::Encode {
        kind: kind.name(),
        source,
    })?;
    check_size(kind, bytes)
}

fn check_size(kind: RecordKind, bytes: Vec<u8>) -> Result<Vec<u8>, ShardingError> {
    if bytes.len() > RECORD_BYTES_MAX {
        return Err(ShardingError::Config(format!(
            "{kind} record of {} bytes: records are at most {RECORD_BYTES_MAX} bytes",
            bytes.len()
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> NodeId {
        NodeId::new(id).expect("valid node id")
    }

    #[test]
    fn node_ids_are_checked() {
        assert!(NodeId::new("engine-0").is_ok());
        assert!(NodeId::new("").is_err());
        assert!(NodeId::new("a b").is_err());
        assert!(NodeId::new("x".repeat(NODE_ID_BYTES_MAX + 1)).is_err());
        // A record carrying a bad node id is refused by the decoder, not admitted.
        let bytes = [0xC1, 0x42, 1, 0x92, 0xA0, 0xC3]; // Drain{node: "", drained: true}
        let err = ControlRecord::decode("control", 0, 5, &bytes).expect_err("empty id");
        assert!(err.to_string().contains("control[0] offset 5"), "{err}");
    }

    #[test]
    fn control_records_round_trip() {
        let records = [
            ControlRecord::Heartbeat(Heartbeat {
                node: node("n1"),
                sent_at_ms: 1_700_000_000_000,
                formats: FormatRange::sharding_formats(),
                warm: vec![0, 7],
            }),
            ControlRecord::Assign(Assign {
                partition: 3,
                node: node("n2"),
                epoch: Epoch(4),
                expected_epoch: Epoch(3),
                reason: AssignReason::Failover,
            }),
            ControlRecord::Drain(Drain {
                node: node("n1"),
                drained: true,
            }),
        ];
        for record in records {
            let bytes = record.encode().expect("encode");
            let back = ControlRecord::decode("control", 0, 1, &bytes).expect("decode");
            assert_eq!(back, record);
        }
    }

    #[test]
    fn an_event_record_is_not_a_control_record() {
        let frame = encode_event_frame(Epoch(1), b"x").expect("encode");
        let err = ControlRecord::decode("control", 0, 9, &frame).expect_err("frame");
        assert_eq!(
            err.to_string(),
            "record at control[0] offset 9 refused: expected a control record, \
             found an event frame record (kind tag 0x51)"
        );
    }

    #[test]
    fn oversized_records_are_refused_before_they_are_sent() {
        let payload = vec![0u8; RECORD_BYTES_MAX];
        assert!(encode_event_frame(Epoch(1), &payload).is_err());
    }
}
