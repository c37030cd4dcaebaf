//! Unit tests of settlement windows and settlement steps (`machine::settlement`), on the
//! in-memory hub of the parent module.

use super::*;
use crate::machine::settlement::{SettleStep, WindowNets};

impl Hub {
    /// Closes `window` on every partition; the result code of each.
    fn close_window(&mut self, window: u64) -> Vec<Option<ErrorCode>> {
        (0..self.partitions())
            .map(|p| {
                let command = self.admin_command(Admin::CloseWindow { window });
                admin_results(&self.run(p, vec![command]))
                    .into_iter()
                    .map(|(_, code)| code)
                    .next()
                    .expect("each partition answers a close")
            })
            .collect()
    }

    /// A closed window's nets summed over partitions (every partition must still keep it).
    fn window(&self, window: u64) -> WindowNets {
        let mut sum = WindowNets::default();
        for part in &self.parts {
            sum.merge(
                &part
                    .settlement
                    .closed_window(window)
                    .expect("a closed window's nets are kept"),
            );
        }
        sum
    }

    fn settle(
        &mut self,
        account: AccountKey,
        settlement: u64,
        step: SettleStep,
        net: i64,
    ) -> Option<ErrorCode> {
        self.admin(
            account,
            Admin::Settle {
                account,
                settlement,
                step,
                net,
            },
        )
    }

    /// The hub's multilateral and settlement balances in USD, summed over partitions.
    fn hub_usd(&self) -> (Money, Money, Money) {
        let usd = Currency::new("USD").expect("currency");
        self.parts.iter().fold((0, 0, 0), |(m, s, r), part| {
            let hub = part.settlement.hub.get(&usd).copied().unwrap_or_default();
            (
                m + hub.multilateral,
                s + hub.settlement,
                r + hub.reconciliation,
            )
        })
    }

    /// Commits transfer `n` of `amount` from `payer` to `payee` on its partition.
    fn commit(&mut self, n: u64, payer: &str, payee: &str, amount: i64) {
        let p = self.parts[0].partition_of_transfer(n, self.partitions());
        let events = self.run(p, vec![self.prepare(n, payer, payee, amount)]);
        assert!(
            events.iter().any(|e| matches!(e, Event::Reserved { .. })),
            "{events:?}"
        );
        let events = self.run(p, vec![self.fulfil(n, payee)]);
        assert!(
            events.iter().any(|e| matches!(e, Event::Committed { .. })),
            "{events:?}"
        );
    }
}

impl PartitionState {
    fn partition_of_transfer(&self, n: u64, partitions: u32) -> u32 {
        let count = sharding::PartitionCount::new(partitions).expect("count");
        sharding::transfer_partition(tid(n).as_str(), count)
    }
}

fn two_dfsps_on(partitions: u32) -> Hub {
    let mut hub = Hub::new(partitions);
    hub.open_account(usd("dfsp1"), 0, 1_000, 1_000);
    hub.open_account(usd("dfsp2"), 0, 1_000, 1_000);
    hub
}

#[test]
fn commits_count_in_the_window_open_on_their_partition() {
    let mut hub = two_dfsps_on(3);
    let (a, b) = (usd("dfsp1"), usd("dfsp2"));
    hub.commit(1, "dfsp1", "dfsp2", 100);
    hub.commit(2, "dfsp2", "dfsp1", 30);
    // A prepare reserved in window 1 and committed after the close counts in window 2.
    let late = 3;
    let p = hub.parts[0].partition_of_transfer(late, 3);
    hub.run(p, vec![hub.prepare(late, "dfsp1", "dfsp2", 7)]);
    assert_eq!(hub.close_window(1), vec![None, None, None]);
    hub.run(p, vec![hub.fulfil(late, "dfsp2")]);

    let one = hub.window(1);
    assert_eq!(one.nets.get(&a), Some(&70));
    assert_eq!(one.nets.get(&b), Some(&-70));
    assert_eq!(one.transfers, 2);
    assert_eq!(
        one.nets.values().sum::<Money>(),
        0,
        "a window's nets sum to zero"
    );

    assert_eq!(hub.close_window(2), vec![None, None, None]);
    let two = hub.window(2);
    assert_eq!(two.nets.get(&a), Some(&7));
    assert_eq!(two.transfers, 1);

    // A resent close changes nothing; a window that has not opened cannot close.
    assert_eq!(hub.close_window(1), vec![None, None, None]);
    assert_eq!(hub.window(1), one);
    assert!(hub
        .close_window(9)
        .iter()
        .all(|code| *code == Some(ErrorCode::Validation)));
}

#[test]
fn a_settlement_brings_positions_back_and_moves_the_covers() {
    let mut hub = two_dfsps_on(3);
    let (a, b) = (usd("dfsp1"), usd("dfsp2"));
    hub.commit(1, "dfsp1", "dfsp2", 400);
    hub.close_window(1);
    let nets = hub.window(1);
    let (net_a, net_b) = (nets.nets[&a] as i64, nets.nets[&b] as i64);
    assert_eq!((net_a, net_b), (400, -400));
    assert_eq!(hub.account(&a), (400, 0, 1_000));
    assert_eq!(hub.account(&b), (-400, 0, 1_000));

    assert_eq!(hub.settle(a, 1, SettleStep::Reserve, net_a), None);
    assert_eq!(hub.settle(b, 1, SettleStep::Reserve, net_b), None);
    // Reserve: the receiver's position rises back; the sender's waits for the commit.
    assert_eq!(hub.account(&b), (0, 0, 1_000));
    assert_eq!(hub.account(&a), (400, 0, 1_000));
    assert_eq!(
        hub.hub_usd().0,
        -400,
        "the hub's side of the receiver's rise"
    );

    assert_eq!(hub.settle(a, 1, SettleStep::Commit, net_a), None);
    assert_eq!(hub.settle(b, 1, SettleStep::Commit, net_b), None);
    // Commit: the sender's position and cover fall by its net, the receiver's cover rises.
    assert_eq!(hub.account(&a), (0, 0, 600));
    assert_eq!(hub.account(&b), (0, 0, 1_000));
    assert_eq!(hub.bank(&a).liquidity, 600);
    assert_eq!(hub.bank(&b).liquidity, 1_400);
    let (multilateral, settlement, reconciliation) = hub.hub_usd();
    assert_eq!(
        (multilateral, settlement),
        (0, 0),
        "a settled settlement nets to zero"
    );
    assert_eq!(
        reconciliation, -2_000,
        "the two funds-in came from reconciliation"
    );

    // A resent commit changes nothing; an earlier step after it is refused.
    assert_eq!(hub.settle(a, 1, SettleStep::Commit, net_a), None);
    assert_eq!(
        hub.settle(b, 1, SettleStep::Reserve, net_b),
        Some(ErrorCode::Validation)
    );
    assert_eq!(hub.account(&a), (0, 0, 600));
    assert_eq!(hub.account(&b), (0, 0, 1_000));
}

#[test]
fn an_aborted_settlement_restores_everything() {
    let mut hub = two_dfsps_on(2);
    let (a, b) = (usd("dfsp1"), usd("dfsp2"));
    hub.commit(1, "dfsp1", "dfsp2", 250);
    hub.close_window(1);
    let before = (hub.account(&a), hub.account(&b), hub.hub_usd());
    assert_eq!(hub.settle(a, 7, SettleStep::Reserve, 250), None);
    assert_eq!(hub.settle(b, 7, SettleStep::Reserve, -250), None);
    assert_eq!(hub.settle(a, 7, SettleStep::Abort, 250), None);
    assert_eq!(hub.settle(b, 7, SettleStep::Abort, -250), None);
    assert_eq!((hub.account(&a), hub.account(&b), hub.hub_usd()), before);
    // Once aborted, it cannot commit.
    assert_eq!(
        hub.settle(b, 7, SettleStep::Commit, -250),
        Some(ErrorCode::Validation)
    );
    assert_eq!((hub.account(&a), hub.account(&b), hub.hub_usd()), before);
}

#[test]
fn settlement_steps_out_of_order_or_with_another_net_change_nothing() {
    let mut hub = two_dfsps_on(2);
    let a = usd("dfsp1");
    hub.commit(1, "dfsp1", "dfsp2", 90);
    hub.close_window(1);
    let before = hub.account(&a);
    assert_eq!(
        hub.settle(a, 1, SettleStep::Commit, 90),
        Some(ErrorCode::Validation),
        "commit before reserve"
    );
    assert_eq!(hub.settle(a, 1, SettleStep::Reserve, 90), None);
    assert_eq!(
        hub.settle(a, 1, SettleStep::Reserve, 91),
        Some(ErrorCode::ModifiedRequest),
        "the same settlement with another net"
    );
    assert_eq!(hub.settle(a, 1, SettleStep::Commit, 90), None);
    assert_eq!(
        hub.settle(a, 1, SettleStep::Abort, 90),
        Some(ErrorCode::Validation),
        "abort after commit"
    );
    assert_eq!(hub.account(&a), (before.0 - 90, 0, before.2 - 90));
    assert_eq!(
        hub.settle(usd("nobody"), 1, SettleStep::Reserve, 5),
        Some(ErrorCode::Validation),
        "unknown account"
    );
}

#[test]
fn a_receivers_reserve_gathers_lent_headroom_first_and_may_exceed_the_limit() {
    // The receiver has lent headroom to partition 2: its position rise must wait for the
    // recall round, then applies in full even past the NDC (never refused).
    let (mut hub, account) = Hub::with_lent_headroom("recv", 100);
    let (_, _, limit) = hub.account(&account);
    assert_eq!(limit, 100);
    let results = hub.admin_batch(
        account,
        vec![Admin::Settle {
            account,
            settlement: 1,
            step: SettleStep::Reserve,
            net: -500,
        }],
    );
    assert_eq!(results.len(), 1, "answered once the recall round is done");
    assert_eq!(results[0].1, None);
    let (position, reserved, limit) = hub.account(&account);
    assert_eq!(position + reserved, 10 + 500);
    assert!(
        position + reserved > limit,
        "a settlement may leave it above its limit"
    );
    assert_eq!(hub.bank(&account).mode, BankMode::Centralised);
    // Nothing can be reserved for it now.
    let n = id_on(2, 4, 1_000);
    let events = hub.run(2, vec![hub.prepare(n, account.fsp.as_str(), "dfsp2", 1)]);
    assert_eq!(refusal_code(&events), ErrorCode::PayerLimit);
}
