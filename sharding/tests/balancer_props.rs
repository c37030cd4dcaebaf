//! Property tests of the balancer, through the control log's fold: plans are applied as the
//! fold applies them (compare-and-set on epochs), and the outcome is checked.
//!
//! * never two owners: a plan names each partition at most once and every assignment in
//!   it applies (its expected epoch is the partition's epoch);
//! * after a rebalance, every partition is on an eligible node and the eligible nodes'
//!   counts differ by at most one;
//! * a rebalance moves exactly the minimum number of partitions (found by brute force over
//!   which nodes get the extra partition);
//! * failover and drain move only what must move, and never push a node past its target.

use proptest::prelude::*;
use sharding::balancer::{plan_drain, plan_failover, plan_rebalance, targets, ClusterView};
use sharding::{
    Applied, Assign, AssignReason, ControlRecord, Drain, Epoch, FormatRange, Heartbeat, NodeId,
    Ownership, PartitionCount,
};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const NOW_MS: u64 = 1_000_000;
const LIVENESS: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq)]
enum NodeState {
    Live,
    Dead,
    Drained,
}

#[derive(Debug, Clone)]
struct Scenario {
    nodes: Vec<(NodeState, BTreeSet<u32>)>,
    /// Per partition: owner index (None: never assigned) and its epoch (>= 1 if owned).
    owners: Vec<(Option<usize>, u64)>,
}

fn node_id(index: usize) -> NodeId {
    NodeId::new(format!("n{index}")).expect("node id")
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (1usize..=7, 1u32..=24).prop_flat_map(|(nodes, partitions)| {
        let node = (
            prop_oneof![
                6 => Just(NodeState::Live),
                2 => Just(NodeState::Dead),
                1 => Just(NodeState::Drained)
            ],
            proptest::collection::btree_set(0..partitions, 0..=partitions as usize),
        );
        let owner = (proptest::option::weighted(0.85, 0..nodes), 1u64..=5);
        (
            proptest::collection::vec(node, nodes),
            proptest::collection::vec(owner, partitions as usize),
        )
            .prop_map(|(nodes, owners)| Scenario { nodes, owners })
    })
}

/// The fold that results from the scenario's control log.
fn fold(scenario: &Scenario) -> Ownership {
    let count = PartitionCount::new(scenario.owners.len() as u32).expect("count");
    let mut fold = Ownership::new(count, LIVENESS);
    let mut offset = 0u64;
    let mut apply = |fold: &mut Ownership, record: ControlRecord, at: u64| {
        let applied = fold.apply(offset, &record, at);
        offset += 1;
        applied
    };
    for (index, (state, warm)) in scenario.nodes.iter().enumerate() {
        let seen = if *state == NodeState::Dead { 0 } else { NOW_MS };
        apply(
            &mut fold,
            ControlRecord::Heartbeat(Heartbeat {
                node: node_id(index),
                sent_at_ms: seen,
                formats: FormatRange::sharding_formats(),
                warm: warm.iter().copied().collect(),
            }),
            seen,
        );
        if *state == NodeState::Drained {
            apply(
                &mut fold,
                ControlRecord::Drain(Drain {
                    node: node_id(index),
                    drained: true,
                }),
                NOW_MS,
            );
        }
    }
    for (partition, (owner, epoch)) in scenario.owners.iter().enumerate() {
        if let Some(owner) = owner {
            let applied = apply(
                &mut fold,
                ControlRecord::Assign(Assign {
                    partition: partition as u32,
                    node: node_id(*owner),
                    epoch: Epoch(*epoch),
                    expected_epoch: Epoch(0),
                    reason: AssignReason::Initial,
                }),
                NOW_MS,
            );
            assert!(matches!(applied, Applied::Assigned { .. }));
        }
    }
    fold
}

/// Applies `plan` through the fold; every assignment must apply.
fn apply_plan(fold: &mut Ownership, plan: &[Assign]) -> Result<(), TestCaseError> {
    let mut seen = BTreeSet::new();
    for assign in plan {
        prop_assert!(
            seen.insert(assign.partition),
            "partition {} twice in a plan",
            assign.partition
        );
        prop_assert_eq!(assign.epoch.0, assign.expected_epoch.0 + 1);
        let offset = fold.next_offset();
        let applied = fold.apply(offset, &ControlRecord::Assign(assign.clone()), NOW_MS);
        prop_assert!(matches!(applied, Applied::Assigned { .. }), "{:?}", applied);
    }
    Ok(())
}

fn eligible(scenario: &Scenario) -> Vec<NodeId> {
    scenario
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, (state, _))| *state == NodeState::Live)
        .map(|(index, _)| node_id(index))
        .collect()
}

fn counts(fold: &Ownership, nodes: &[NodeId]) -> BTreeMap<NodeId, usize> {
    nodes
        .iter()
        .map(|node| (node.clone(), fold.partitions_of(node).len()))
        .collect()
}

/// The fewest moves that balance the cluster, by brute force over which nodes get the
/// `N % k` extra partitions.
fn minimum_moves(fold: &Ownership, eligible: &[NodeId]) -> usize {
    let total = fold.partition_count() as usize;
    let k = eligible.len();
    let before = counts(fold, eligible);
    let orphans = total - before.values().sum::<usize>();
    let (base, extra) = (total / k, total % k);
    let mut best = usize::MAX;
    for mask in 0u32..(1 << k) {
        if mask.count_ones() as usize != extra {
            continue;
        }
        let excess: usize = eligible
            .iter()
            .enumerate()
            .map(|(i, node)| {
                let target = base + usize::from(mask & (1 << i) != 0);
                before[node].saturating_sub(target)
            })
            .sum();
        best = best.min(orphans + excess);
    }
    best
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn rebalance_is_even_minimal_and_single_owner(scenario in scenario()) {
        let mut fold = fold(&scenario);
        let view = ClusterView::from_ownership(&fold, NOW_MS, &[]);
        let plan = plan_rebalance(&view);
        let eligible = eligible(&scenario);
        if eligible.is_empty() {
            prop_assert!(plan.is_empty());
            return Ok(());
        }
        let minimum = minimum_moves(&fold, &eligible);
        apply_plan(&mut fold, &plan)?;
        prop_assert_eq!(plan.len(), minimum, "moves");
        let after = counts(&fold, &eligible);
        prop_assert_eq!(after.values().sum::<usize>(), fold.partition_count() as usize,
            "every partition on an eligible node");
        let max = after.values().max().copied().unwrap_or(0);
        let min = after.values().min().copied().unwrap_or(0);
        prop_assert!(max - min <= 1, "counts {:?}", after);
        // A second rebalance has nothing left to do.
        let again = plan_rebalance(&ClusterView::from_ownership(&fold, NOW_MS, &[]));
        prop_assert!(again.is_empty(), "{:?}", again);
    }

    #[test]
    fn failover_moves_only_orphans_and_respects_targets(scenario in scenario()) {
        let mut fold = fold(&scenario);
        let view = ClusterView::from_ownership(&fold, NOW_MS, &[]);
        let eligible = eligible(&scenario);
        let plan = plan_failover(&view);
        let owned_by_eligible = |fold: &Ownership, p: u32| {
            fold.owner(p).and_then(|o| o.node.clone()).is_some_and(|n| eligible.contains(&n))
        };
        let orphans: BTreeSet<u32> =
            (0..fold.partition_count()).filter(|p| !owned_by_eligible(&fold, *p)).collect();
        let target = targets(&view, &eligible);
        let before = counts(&fold, &eligible);
        for assign in &plan {
            prop_assert!(orphans.contains(&assign.partition), "moved a healthy partition");
        }
        apply_plan(&mut fold, &plan)?;
        if eligible.is_empty() {
            prop_assert!(plan.is_empty());
            return Ok(());
        }
        prop_assert_eq!(plan.len(), orphans.len(), "every orphan placed");
        for (node, count) in counts(&fold, &eligible) {
            prop_assert!(count <= target[&node].max(before[&node]), "{} over its target", node);
        }
    }

    #[test]
    fn drain_empties_the_node_and_moves_nothing_healthy(scenario in scenario(), pick in 0usize..7) {
        let mut fold = fold(&scenario);
        let eligible = eligible(&scenario);
        let Some(drained) = eligible.get(pick % eligible.len().max(1)).cloned() else {
            return Ok(());
        };
        let view = ClusterView::from_ownership(&fold, NOW_MS, &[]);
        let others: Vec<NodeId> = eligible.iter().filter(|n| **n != drained).cloned().collect();
        let result = plan_drain(&view, &drained);
        if others.is_empty() {
            let holds = !fold.partitions_of(&drained).is_empty();
            prop_assert_eq!(result.is_err(), holds);
            return Ok(());
        }
        let plan = result.expect("others can take the partitions");
        for assign in &plan {
            let owner = fold.owner(assign.partition).and_then(|o| o.node.clone());
            prop_assert!(
                owner.as_ref() == Some(&drained) || !owner.is_some_and(|o| others.contains(&o)),
                "drain moved partition {} of a healthy node", assign.partition
            );
        }
        apply_plan(&mut fold, &plan)?;
        prop_assert!(fold.partitions_of(&drained).is_empty());
    }
}
