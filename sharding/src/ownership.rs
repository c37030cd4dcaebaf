//! Who owns which partition: the fold of the control log (DESIGN §7), sans IO.
//!
//! The control log is one partition, so it is one total order that every node reads the
//! same. Every node folds it with [`Ownership::apply`] and so reaches the same view of
//! owners and epochs, record by record. There is no coordinator to elect: operators, the
//! failure detector and rolling upgrades all *append* to the control log, and the fold
//! decides.
//!
//! * `Assign{partition, node, epoch, expected_epoch}` applies only if `expected_epoch` is
//!   the partition's epoch at that place in the log, and `epoch` is greater: a
//!   compare-and-set by log order. Two failure detectors that both saw a node die and both
//!   append an assignment for its partition produce one winner (the first in the log) and
//!   one refusal, identically on every node.
//! * A `Heartbeat` makes its node live until `liveness_timeout` after the time the fold
//!   was told it arrived (time is passed in: the fold reads no clock). It also records the
//!   record formats the node reads and the partitions it keeps warm copies of.
//!   Liveness is the only part of the view that depends on the local clock; it decides
//!   nothing by itself: it only makes a node append assignments, which the fold then
//!   orders.
//! * `Drain{node, drained}` marks a node as drained (no partitions for it) or undrained.
//!
//! Records are applied by offset; a record at or below the last applied offset is a
//! redelivery and changes nothing, so re-reading the control log is harmless.

use crate::limits::NODES_MAX;
use crate::log::LogRecord;
use crate::records::{Assign, ControlRecord, Epoch, FormatRange, Heartbeat, NodeId};
use crate::routing::PartitionCount;
use crate::ShardingError;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// One partition's owner as of the applied prefix of the control log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PartitionOwner {
    /// `None` before the partition's first assignment.
    pub node: Option<NodeId>,
    pub epoch: Epoch,
    /// The control-log offset of the assignment in force.
    pub assigned_at: Option<u64>,
}

/// What the control log says about one node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeStatus {
    /// When the fold was told of its latest heartbeat (`None`: never, e.g. a drain
    /// recorded for a node that has not started).
    pub last_heartbeat_ms: Option<u64>,
    pub formats: Vec<FormatRange>,
    pub warm: BTreeSet<u32>,
    pub drained: bool,
}

impl NodeStatus {
    /// Whether the node reads records of `kind` (tag) in `version`.
    pub fn reads(&self, kind: u8, version: u8) -> bool {
        self.formats.iter().any(|range| range.reads(kind, version))
    }
}

/// Why an assignment did not apply. The same on every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssignRefusal {
    /// The partition's epoch had moved on: another assignment won.
    EpochMismatch { expected: Epoch, current: Epoch },
    /// `epoch` is not greater than `expected_epoch`.
    EpochNotGrowing,
    /// No such partition in this cluster.
    NoSuchPartition { partitions: u32 },
}

/// What one control record did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Heartbeat {
        node: NodeId,
    },
    Assigned {
        partition: u32,
        from: Option<NodeId>,
        to: NodeId,
        epoch: Epoch,
    },
    AssignRefused {
        partition: u32,
        refusal: AssignRefusal,
    },
    Drain {
        node: NodeId,
        drained: bool,
    },
    /// A heartbeat from one node more than [`NODES_MAX`]: ignored (and worth an alarm).
    TooManyNodes {
        node: NodeId,
    },
    /// A record at or below the last applied offset: already applied.
    Redelivered,
}

/// The fold. See the module documentation.
#[derive(Debug, Clone)]
pub struct Ownership {
    partitions: Vec<PartitionOwner>,
    nodes: BTreeMap<NodeId, NodeStatus>,
    liveness_timeout_ms: u64,
    next_offset: u64,
}

impl Ownership {
    pub fn new(partitions: PartitionCount, liveness_timeout: Duration) -> Ownership {
        Ownership {
            partitions: vec![PartitionOwner::default(); partitions.get() as usize],
            nodes: BTreeMap::new(),
            liveness_timeout_ms: u64::try_from(liveness_timeout.as_millis()).unwrap_or(u64::MAX),
            next_offset: 0,
        }
    }

    /// The control-log offset to read next.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    pub fn partition_count(&self) -> u32 {
        self.partitions.len() as u32
    }

    /// Applies the record at `offset` of the control log, told of at `now_ms`.
    pub fn apply(&mut self, offset: u64, record: &ControlRecord, now_ms: u64) -> Applied {
        if offset < self.next_offset {
            return Applied::Redelivered;
        }
        self.next_offset = offset + 1;
        match record {
            ControlRecord::Heartbeat(heartbeat) => self.heartbeat(heartbeat, now_ms),
            ControlRecord::Assign(assign) => self.assign(offset, assign),
            ControlRecord::Drain(drain) => {
                if !self.nodes.contains_key(&drain.node) && self.nodes.len() >= NODES_MAX {
                    return Applied::TooManyNodes {
                        node: drain.node.clone(),
                    };
                }
                self.nodes.entry(drain.node.clone()).or_default().drained = drain.drained;
                Applied::Drain {
                    node: drain.node.clone(),
                    drained: drain.drained,
                }
            }
        }
    }

    /// Decodes and applies a record read from `topic[0]`. A record that cannot be read is
    /// an error naming topic, partition and offset, and is not applied: the fold stops
    /// there (the node must not guess at ownership).
    pub fn apply_log_record(
        &mut self,
        topic: &str,
        record: &LogRecord,
        now_ms: u64,
    ) -> Result<Applied, ShardingError> {
        if record.offset < self.next_offset {
            return Ok(Applied::Redelivered);
        }
        let decoded = ControlRecord::decode(topic, 0, record.offset, &record.payload)?;
        Ok(self.apply(record.offset, &decoded, now_ms))
    }

    fn heartbeat(&mut self, heartbeat: &Heartbeat, now_ms: u64) -> Applied {
        if !self.nodes.contains_key(&heartbeat.node) && self.nodes.len() >= NODES_MAX {
            return Applied::TooManyNodes {
                node: heartbeat.node.clone(),
            };
        }
        let partitions = self.partition_count();
        let status = self.nodes.entry(heartbeat.node.clone()).or_default();
        status.last_heartbeat_ms = Some(now_ms);
        status.formats = heartbeat.formats.clone();
        status.warm = heartbeat
            .warm
            .iter()
            .copied()
            .filter(|p| *p < partitions)
            .collect();
        Applied::Heartbeat {
            node: heartbeat.node.clone(),
        }
    }

    fn assign(&mut self, offset: u64, assign: &Assign) -> Applied {
        let partitions = self.partition_count();
        let Some(owner) = self.partitions.get_mut(assign.partition as usize) else {
            return Applied::AssignRefused {
                partition: assign.partition,
                refusal: AssignRefusal::NoSuchPartition { partitions },
            };
        };
        if owner.epoch != assign.expected_epoch {
            return Applied::AssignRefused {
                partition: assign.partition,
                refusal: AssignRefusal::EpochMismatch {
                    expected: assign.expected_epoch,
                    current: owner.epoch,
                },
            };
        }
        if assign.epoch <= assign.expected_epoch {
            return Applied::AssignRefused {
                partition: assign.partition,
                refusal: AssignRefusal::EpochNotGrowing,
            };
        }
        let from = owner.node.replace(assign.node.clone());
        owner.epoch = assign.epoch;
        owner.assigned_at = Some(offset);
        Applied::Assigned {
            partition: assign.partition,
            from,
            to: assign.node.clone(),
            epoch: assign.epoch,
        }
    }

    pub fn owner(&self, partition: u32) -> Option<&PartitionOwner> {
        self.partitions.get(partition as usize)
    }

    pub fn owners(&self) -> &[PartitionOwner] {
        &self.partitions
    }

    pub fn node(&self, node: &NodeId) -> Option<&NodeStatus> {
        self.nodes.get(node)
    }

    pub fn nodes(&self) -> &BTreeMap<NodeId, NodeStatus> {
        &self.nodes
    }

    /// Whether `node` heartbeat within the liveness timeout before `now_ms`.
    pub fn is_live(&self, node: &NodeId, now_ms: u64) -> bool {
        self.nodes
            .get(node)
            .and_then(|status| status.last_heartbeat_ms)
            .is_some_and(|seen| now_ms.saturating_sub(seen) < self.liveness_timeout_ms)
    }

    /// The partitions `node` owns.
    pub fn partitions_of(&self, node: &NodeId) -> Vec<u32> {
        (0..self.partition_count())
            .filter(|p| self.partitions[*p as usize].node.as_ref() == Some(node))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{AssignReason, Drain};

    fn node(id: &str) -> NodeId {
        NodeId::new(id).expect("node id")
    }

    fn assign(partition: u32, to: &str, expected: u64, epoch: u64) -> ControlRecord {
        ControlRecord::Assign(Assign {
            partition,
            node: node(to),
            epoch: Epoch(epoch),
            expected_epoch: Epoch(expected),
            reason: AssignReason::Move,
        })
    }

    fn heartbeat(id: &str) -> ControlRecord {
        ControlRecord::Heartbeat(Heartbeat {
            node: node(id),
            sent_at_ms: 0,
            formats: FormatRange::sharding_formats(),
            warm: vec![1, 99],
        })
    }

    fn ownership() -> Ownership {
        Ownership::new(
            PartitionCount::new(4).expect("count"),
            Duration::from_millis(1_000),
        )
    }

    #[test]
    fn assignments_are_compare_and_set_by_log_order() {
        let mut fold = ownership();
        assert!(matches!(
            fold.apply(0, &assign(2, "a", 0, 1), 0),
            Applied::Assigned { .. }
        ));
        // Two detectors race for partition 2: the first in the log wins.
        assert!(matches!(
            fold.apply(1, &assign(2, "b", 1, 2), 0),
            Applied::Assigned { from: Some(_), .. }
        ));
        assert_eq!(
            fold.apply(2, &assign(2, "c", 1, 2), 0),
            Applied::AssignRefused {
                partition: 2,
                refusal: AssignRefusal::EpochMismatch {
                    expected: Epoch(1),
                    current: Epoch(2)
                }
            }
        );
        assert_eq!(
            fold.apply(3, &assign(2, "c", 2, 2), 0),
            Applied::AssignRefused {
                partition: 2,
                refusal: AssignRefusal::EpochNotGrowing
            }
        );
        assert!(matches!(
            fold.apply(4, &assign(9, "c", 0, 1), 0),
            Applied::AssignRefused {
                refusal: AssignRefusal::NoSuchPartition { partitions: 4 },
                ..
            }
        ));
        let owner = fold.owner(2).expect("partition 2");
        assert_eq!(owner.node, Some(node("b")));
        assert_eq!(owner.epoch, Epoch(2));
        assert_eq!(owner.assigned_at, Some(1));
        assert_eq!(fold.partitions_of(&node("b")), [2]);
        // Redelivery of an applied record changes nothing.
        assert_eq!(
            fold.apply(0, &assign(2, "a", 2, 3), 0),
            Applied::Redelivered
        );
        assert_eq!(fold.next_offset(), 5);
    }

    #[test]
    fn heartbeats_give_liveness_for_the_timeout() {
        let mut fold = ownership();
        fold.apply(0, &heartbeat("a"), 10_000);
        assert!(fold.is_live(&node("a"), 10_999));
        assert!(!fold.is_live(&node("a"), 11_000));
        assert!(!fold.is_live(&node("z"), 10_000));
        let status = fold.node(&node("a")).expect("known");
        assert_eq!(
            status.warm,
            BTreeSet::from([1]),
            "partition 99 does not exist"
        );
        assert!(status.reads(0x51, 1));
        assert!(!status.reads(0x51, 2));
        fold.apply(
            1,
            &ControlRecord::Drain(Drain {
                node: node("a"),
                drained: true,
            }),
            10_000,
        );
        assert!(fold.node(&node("a")).expect("known").drained);
    }

    #[test]
    fn an_unreadable_control_record_is_not_applied() {
        let mut fold = ownership();
        let record = LogRecord {
            offset: 7,
            payload: vec![0xC1, 0x41, 2, 0x90],
        };
        let err = fold
            .apply_log_record("control", &record, 0)
            .expect_err("future");
        assert_eq!(
            err.to_string(),
            "record at control[0] offset 7 refused: assign record has format version 2; \
             this build reads versions 1 to 1"
        );
        assert_eq!(fold.next_offset(), 0, "the fold stops before it");
    }
}
