//! The balancer: which `Assign` records to append, as a pure function of the cluster's view.
//!
//! It never changes ownership itself: it *plans* assignments, each carrying the epoch it
//! expects (`expected_epoch` = the partition's epoch in the view, `epoch` = one more), and
//! the caller appends them to the control log. If the view was stale, the fold refuses the
//! assignment ([`crate::ownership::AssignRefusal::EpochMismatch`]) and the caller plans
//! again from the newer view. So two balancers racing (two gateways, an operator and the
//! failure detector) cannot give a partition two owners.
//!
//! # Targets
//!
//! The *eligible* nodes are the live, undrained nodes that read every record format the
//! cluster requires ([`ClusterView::from_ownership`]). With N partitions over k eligible
//! nodes, every node's target is `N / k`, and `N % k` of them get one more: those that
//! already hold the most, so that as few partitions as possible move. A partition must
//! move if its owner is not eligible (dead, drained, too old a build, or none yet); in a
//! rebalance a node above its target also sheds the difference. The minimum number of
//! moves is exactly that count, and the plans reach it (property-tested in
//! `tests/balancer_props.rs`).
//!
//! # Which node gets a moved partition
//!
//! A node below its target, preferring one that keeps a warm standby copy of the partition
//! (its restore replays only the tail), then the one furthest below its target, then the
//! smallest node id (plans are deterministic).
//!
//! # The plans
//!
//! * [`plan_rebalance`]: every node to its target (the operator's `POST /rebalance`).
//! * [`plan_failover`]: only partitions whose owner is not eligible move (the failure
//!   detector's plan: it must be quick and touch nothing else).
//! * [`plan_drain`]: a node's partitions move away, nothing else (`drain` before a restart).
//! * [`plan_move`]: one partition to a chosen node (the operator's `POST /partitions/{p}/move`).

use crate::ownership::{Ownership, PartitionOwner};
use crate::records::{Assign, AssignReason, NodeId};
use crate::ShardingError;
use std::collections::{BTreeMap, BTreeSet};

/// What the balancer knows about one node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeView {
    /// Live, undrained and able to read the cluster's record formats.
    pub eligible: bool,
    /// Partitions it keeps a warm standby copy of.
    pub warm: BTreeSet<u32>,
}

/// The cluster as the balancer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    pub owners: Vec<PartitionOwner>,
    pub nodes: BTreeMap<NodeId, NodeView>,
}

/// A record format the cluster's records carry: a node that does not read it is not
/// eligible to own partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormatNeed {
    pub kind: u8,
    pub version: u8,
}

impl ClusterView {
    /// The view of the control log's fold at `now_ms`.
    pub fn from_ownership(ownership: &Ownership, now_ms: u64, needs: &[FormatNeed]) -> ClusterView {
        let nodes = ownership
            .nodes()
            .iter()
            .map(|(id, status)| {
                let eligible = ownership.is_live(id, now_ms)
                    && !status.drained
                    && needs
                        .iter()
                        .all(|need| status.reads(need.kind, need.version));
                (
                    id.clone(),
                    NodeView {
                        eligible,
                        warm: status.warm.clone(),
                    },
                )
            })
            .collect();
        ClusterView {
            owners: ownership.owners().to_vec(),
            nodes,
        }
    }

    fn eligible(&self, excluded: Option<&NodeId>) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(id, view)| view.eligible && Some(*id) != excluded)
            .map(|(id, _)| id.clone())
            .collect()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Orphans and every node's excess move.
    Rebalance,
    /// Only orphans move.
    OrphansOnly,
}

/// Every partition to a node at its target, moving as few as possible.
pub fn plan_rebalance(view: &ClusterView) -> Vec<Assign> {
    plan(view, None, Mode::Rebalance, AssignReason::Rebalance)
}

/// The partitions of ineligible (dead, drained, outdated) or missing owners to eligible
/// nodes, warm standbys first. Nothing else moves.
pub fn plan_failover(view: &ClusterView) -> Vec<Assign> {
    let reason = if view.owners.iter().all(|owner| owner.node.is_none()) {
        AssignReason::Initial
    } else {
        AssignReason::Failover
    };
    plan(view, None, Mode::OrphansOnly, reason)
}

/// Moves `node`'s partitions away (treating it as drained even if the view does not yet
/// say so), and nothing else.
pub fn plan_drain(view: &ClusterView, node: &NodeId) -> Result<Vec<Assign>, ShardingError> {
    if !view.nodes.contains_key(node) {
        return Err(ShardingError::Plan(format!(
            "drain: node {node} is not known"
        )));
    }
    let plan = plan(view, Some(node), Mode::OrphansOnly, AssignReason::Drain);
    let left = view
        .owners
        .iter()
        .filter(|owner| owner.node.as_ref() == Some(node))
        .count();
    let moved = plan
        .iter()
        .filter(|a| view.owners[a.partition as usize].node.as_ref() == Some(node))
        .count();
    if moved < left {
        return Err(ShardingError::Plan(format!(
            "drain: no other eligible node can take the {left} partitions of {node}"
        )));
    }
    Ok(plan)
}

/// Moves `partition` to `to`.
pub fn plan_move(view: &ClusterView, partition: u32, to: &NodeId) -> Result<Assign, ShardingError> {
    let owner = view.owners.get(partition as usize).ok_or_else(|| {
        ShardingError::Plan(format!(
            "move: partition {partition} does not exist ({} partitions)",
            view.owners.len()
        ))
    })?;
    if !view.nodes.get(to).is_some_and(|node| node.eligible) {
        return Err(ShardingError::Plan(format!(
            "move: node {to} is not eligible (unknown, not live, drained, or too old a build)"
        )));
    }
    if owner.node.as_ref() == Some(to) {
        return Err(ShardingError::Plan(format!(
            "move: partition {partition} is already on {to}"
        )));
    }
    assign(partition, owner, to.clone(), AssignReason::Move).ok_or_else(|| {
        ShardingError::Plan(format!("move: partition {partition}'s epoch is exhausted"))
    })
}

fn assign(
    partition: u32,
    owner: &PartitionOwner,
    to: NodeId,
    reason: AssignReason,
) -> Option<Assign> {
    Some(Assign {
        partition,
        node: to,
        epoch: owner.epoch.next()?,
        expected_epoch: owner.epoch,
        reason,
    })
}

/// Each eligible node's target count: `N / k`, plus one for the `N % k` nodes holding the
/// most already (ties: smaller id).
pub fn targets(view: &ClusterView, eligible: &[NodeId]) -> BTreeMap<NodeId, usize> {
    let total = view.owners.len();
    let k = eligible.len();
    if k == 0 {
        return BTreeMap::new();
    }
    let counts = counts(view, eligible);
    let mut order: Vec<&NodeId> = eligible.iter().collect();
    order.sort_by(|a, b| counts[*b].cmp(&counts[*a]).then_with(|| a.cmp(b)));
    order
        .into_iter()
        .enumerate()
        .map(|(rank, id)| (id.clone(), total / k + usize::from(rank < total % k)))
        .collect()
}

fn counts(view: &ClusterView, eligible: &[NodeId]) -> BTreeMap<NodeId, usize> {
    let mut counts: BTreeMap<NodeId, usize> = eligible.iter().map(|id| (id.clone(), 0)).collect();
    for owner in &view.owners {
        if let Some(count) = owner.node.as_ref().and_then(|node| counts.get_mut(node)) {
            *count += 1;
        }
    }
    counts
}

fn plan(
    view: &ClusterView,
    excluded: Option<&NodeId>,
    mode: Mode,
    reason: AssignReason,
) -> Vec<Assign> {
    let eligible = view.eligible(excluded);
    if eligible.is_empty() {
        return Vec::new();
    }
    let targets = targets(view, &eligible);
    let mut counts = counts(view, &eligible);
    let owned_by_eligible = |owner: &PartitionOwner| {
        owner
            .node
            .as_ref()
            .is_some_and(|node| targets.contains_key(node))
    };

    // The partitions that move: orphans, then (rebalance only) each node's excess.
    let mut pool: Vec<u32> = (0..view.owners.len() as u32)
        .filter(|p| !owned_by_eligible(&view.owners[*p as usize]))
        .collect();
    let mut deficit: BTreeMap<NodeId, usize> = targets
        .iter()
        .map(|(id, target)| (id.clone(), target.saturating_sub(counts[id])))
        .collect();
    if mode == Mode::Rebalance {
        for (id, target) in &targets {
            let excess = counts[id].saturating_sub(*target);
            if excess == 0 {
                continue;
            }
            // Shed first the partitions a node short of its target keeps warm.
            let mut own: Vec<u32> = (0..view.owners.len() as u32)
                .filter(|p| view.owners[*p as usize].node.as_ref() == Some(id))
                .collect();
            own.sort_by_key(|p| (!warm_elsewhere(view, *p, &deficit), *p));
            pool.extend(own.into_iter().take(excess));
            if let Some(count) = counts.get_mut(id) {
                *count = *target;
            }
        }
    }

    // Partitions with a warm copy on a node short of its target are placed first.
    pool.sort_by_key(|p| (!warm_elsewhere(view, *p, &deficit), *p));
    let mut plan = Vec::with_capacity(pool.len());
    for partition in pool {
        let best = deficit
            .iter()
            .filter(|(_, short)| **short > 0)
            .max_by(|(a, short_a), (b, short_b)| {
                let warm_a = view.nodes[*a].warm.contains(&partition);
                let warm_b = view.nodes[*b].warm.contains(&partition);
                warm_a
                    .cmp(&warm_b)
                    .then(short_a.cmp(short_b))
                    .then_with(|| b.cmp(a))
            })
            .map(|(id, _)| id.clone());
        let Some(to) = best else {
            break; // every target is met (more orphans than room: no eligible node left)
        };
        if let Some(short) = deficit.get_mut(&to) {
            *short -= 1;
        }
        let owner = &view.owners[partition as usize];
        if let Some(record) = assign(partition, owner, to, reason) {
            plan.push(record);
        }
    }
    plan
}

fn warm_elsewhere(view: &ClusterView, partition: u32, deficit: &BTreeMap<NodeId, usize>) -> bool {
    deficit
        .iter()
        .any(|(id, short)| *short > 0 && view.nodes[id].warm.contains(&partition))
}

/// The owners after `plan` is applied to `view` (for tests, simulations and operators'
/// previews).
pub fn apply_plan(view: &ClusterView, plan: &[Assign]) -> Vec<PartitionOwner> {
    let mut owners = view.owners.clone();
    for record in plan {
        if let Some(owner) = owners.get_mut(record.partition as usize) {
            if owner.epoch == record.expected_epoch && record.epoch > owner.epoch {
                owner.node = Some(record.node.clone());
                owner.epoch = record.epoch;
            }
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Epoch;

    fn node(id: &str) -> NodeId {
        NodeId::new(id).expect("node id")
    }

    fn view(owners: &[Option<&str>], nodes: &[(&str, bool, &[u32])]) -> ClusterView {
        ClusterView {
            owners: owners
                .iter()
                .map(|owner| PartitionOwner {
                    node: owner.map(node),
                    epoch: Epoch(u64::from(owner.is_some())),
                    assigned_at: None,
                })
                .collect(),
            nodes: nodes
                .iter()
                .map(|(id, eligible, warm)| {
                    (
                        node(id),
                        NodeView {
                            eligible: *eligible,
                            warm: warm.iter().copied().collect(),
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn a_new_cluster_is_spread_evenly() {
        let v = view(&[None; 5], &[("a", true, &[]), ("b", true, &[])]);
        let plan = plan_failover(&v);
        assert_eq!(plan.len(), 5);
        assert!(plan
            .iter()
            .all(|a| a.reason == AssignReason::Initial && a.epoch == Epoch(1)));
        let owners = apply_plan(&v, &plan);
        let on_a = owners.iter().filter(|o| o.node == Some(node("a"))).count();
        assert!(on_a == 2 || on_a == 3);
    }

    #[test]
    fn failover_prefers_the_warm_standby_and_moves_nothing_else() {
        let v = view(
            &[Some("a"), Some("b"), Some("c"), Some("c")],
            &[("a", true, &[]), ("b", true, &[3]), ("c", false, &[])],
        );
        let plan = plan_failover(&v);
        assert_eq!(plan.len(), 2);
        let to_of = |p: u32| {
            plan.iter()
                .find(|a| a.partition == p)
                .map(|a| a.node.clone())
        };
        assert_eq!(to_of(3), Some(node("b")), "b keeps partition 3 warm");
        assert_eq!(to_of(2), Some(node("a")));
        assert!(plan
            .iter()
            .all(|a| a.expected_epoch == Epoch(1) && a.epoch == Epoch(2)));
    }

    #[test]
    fn only_live_undrained_nodes_that_read_the_formats_are_eligible() {
        use crate::records::{ControlRecord, Drain, FormatRange, Heartbeat};
        use crate::routing::PartitionCount;
        use std::time::Duration;
        let count = PartitionCount::new(2).expect("count");
        let mut fold = Ownership::new(count, Duration::from_millis(100));
        let beat = |id: &str, newest: u8| {
            ControlRecord::Heartbeat(Heartbeat {
                node: node(id),
                sent_at_ms: 0,
                formats: vec![FormatRange {
                    kind: 0x51,
                    oldest: 1,
                    newest,
                }],
                warm: vec![],
            })
        };
        fold.apply(0, &beat("old", 1), 1_000);
        fold.apply(1, &beat("new", 2), 1_000);
        fold.apply(2, &beat("gone", 2), 0);
        fold.apply(3, &beat("drained", 2), 1_000);
        let drain = Drain {
            node: node("drained"),
            drained: true,
        };
        fold.apply(4, &ControlRecord::Drain(drain), 1_000);
        let needs = [FormatNeed {
            kind: 0x51,
            version: 2,
        }];
        let view = ClusterView::from_ownership(&fold, 1_050, &needs);
        let eligible: Vec<&str> = view
            .nodes
            .iter()
            .filter(|(_, n)| n.eligible)
            .map(|(id, _)| id.as_str())
            .collect();
        assert_eq!(eligible, ["new"], "old reads only version 1, gone is dead");
        let plan = plan_failover(&view);
        assert!(plan.iter().all(|a| a.node == node("new")));
        assert_eq!(plan.len(), 2);
    }

    #[test]
    fn drain_and_move_refuse_what_cannot_be_done() {
        let v = view(
            &[Some("a"), Some("a")],
            &[("a", true, &[]), ("b", false, &[])],
        );
        assert!(plan_drain(&v, &node("a")).is_err(), "no one to take them");
        assert!(plan_drain(&v, &node("zz")).is_err());
        assert!(plan_move(&v, 0, &node("b")).is_err(), "b not eligible");
        assert!(plan_move(&v, 0, &node("a")).is_err(), "already there");
        assert!(plan_move(&v, 7, &node("a")).is_err());
        let v = view(
            &[Some("a"), Some("a")],
            &[("a", true, &[]), ("b", true, &[])],
        );
        let plan = plan_drain(&v, &node("a")).expect("drain");
        assert_eq!(plan.len(), 2);
        assert!(plan
            .iter()
            .all(|a| a.node == node("b") && a.reason == AssignReason::Drain));
        let moved = plan_move(&v, 1, &node("b")).expect("move");
        assert_eq!((moved.expected_epoch, moved.epoch), (Epoch(1), Epoch(2)));
    }
}
