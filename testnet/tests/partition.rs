//! The partition suite, short: the income register cut off for 5 s while
//! consents are granted and withdrawn, then Stockholm's node paused for 3 s
//! under traffic; the full one is `scripts/partition.sh` (30 s and 10 s).

// Helpers outside #[test] functions panic on failure too; that is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use mim4_testnet::netns;
use mim4_testnet::partition::{self, Options};

/// Both faults held messages back (a backlog at the heal), every outbox was
/// empty within the bound after each heal, and the offline check is clean.
/// Skipped (and says so) where network namespaces cannot be made, unless
/// `MIM4_REQUIRE_NETNS=1`: then it fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_and_a_pause_lose_and_duplicate_nothing() {
    if let Err(why) = mim4_testnet::netns::Lab::available() {
        assert!(
            !netns::required(),
            "{}=1 but network namespaces are unavailable: {why}",
            netns::REQUIRE_ENV
        );
        // scripts/test.sh reads this line (it runs the test with --nocapture).
        eprintln!("skipped: network namespaces unavailable here: {why}");
        eprintln!(
            "!!! the partition suite did NOT run; set {}=1 to make this a failure",
            netns::REQUIRE_ENV
        );
        return;
    }
    let report = partition::run(&Options {
        cut: Duration::from_secs(5),
        pause: Duration::from_secs(3),
        seed: 20_261_123,
        node_bin: None,
    })
    .await
    .unwrap();
    report.print();
    assert!(report.is_clean(), "{:?}", report.verdict.violations);
    for phase in [&report.cut, &report.pause] {
        assert!(
            phase.backlog_at_heal > 0,
            "the fault held nothing back: {phase:?}"
        );
        let delivered = phase.delivered_ms.expect("delivered within the bound");
        assert!(delivered <= report.delivery_bound_ms);
    }
    assert!(
        report.cut.consents.withdrawals_acknowledged > 0,
        "{:?}",
        report.cut
    );
    let check = report.verdict.check.as_ref().unwrap();
    assert!(check.acknowledged > 0);
    assert_eq!((check.lost, check.duplicated, check.unexpected), (0, 0, 0));
    assert_eq!(check.databases_opened, 3);
    assert!(!report.verdict.kept, "the folder of a clean run is removed");
    assert!(report.verdict.nodes_left.is_empty());
}
