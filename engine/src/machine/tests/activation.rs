//! Unit tests of one currency account's activation switch (`Admin::SetAccountActive`).

use super::*;

fn partition_of(n: u64, partitions: u32) -> u32 {
    let count = sharding::PartitionCount::new(partitions).expect("count");
    sharding::transfer_partition(tid(n).as_str(), count)
}

#[test]
fn an_inactive_account_neither_pays_nor_receives_until_it_is_active_again() {
    let mut hub = Hub::new(2);
    let (a, b) = (usd("dfsp1"), usd("dfsp2"));
    hub.open_account(a, 0, 1_000, 1_000);
    hub.open_account(b, 0, 1_000, 1_000);
    let switch = |hub: &mut Hub, account: AccountKey, active: bool| {
        for p in 0..hub.partitions() {
            let command = hub.admin_command(Admin::SetAccountActive { account, active });
            let results = admin_results(&hub.run(p, vec![command]));
            assert_eq!(results.len(), 1, "every partition answers");
            assert_eq!(results[0].1, None);
        }
    };
    switch(&mut hub, a, false);
    for (n, payer, payee) in [(1, "dfsp1", "dfsp2"), (2, "dfsp2", "dfsp1")] {
        let p = partition_of(n, hub.partitions());
        let events = hub.run(p, vec![hub.prepare(n, payer, payee, 10)]);
        assert_eq!(refusal_code(&events), ErrorCode::Validation, "transfer {n}");
    }
    assert_eq!(hub.account(&a), (0, 0, 1_000), "nothing reserved or moved");
    assert_eq!(hub.account(&b), (0, 0, 1_000));
    switch(&mut hub, a, true);
    let n = 3;
    let p = partition_of(n, hub.partitions());
    let events = hub.run(p, vec![hub.prepare(n, "dfsp1", "dfsp2", 10)]);
    assert!(
        matches!(only(&events), Event::Reserved { .. }),
        "{events:?}"
    );
    // The switch survives a snapshot.
    switch(&mut hub, b, false);
    let bytes = hub.parts[1].snapshot_bytes();
    let restored = PartitionState::from_snapshot(&bytes, Limits::default()).expect("restores");
    assert!(restored.inactive_accounts.contains(&b));
}
