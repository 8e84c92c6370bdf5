//! Chaos, short: 20 s of memos between three operators and consent
//! grant/withdraw cycles while random nodes are SIGKILLed and restarted, then
//! the offline check of every store.

// Helpers outside #[test] functions panic on failure too; that is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use mim4_testnet::chaos::{self, Options};
use mim4_testnet::{checker, Federation};

/// Every invariant holds after 20 s of faults (no acknowledged memo lost,
/// none applied twice, every withdrawal at the home and at every party), there
/// was traffic of both kinds, and no node process is left afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_seconds_of_kills_break_no_invariant() {
    let dir = tempfile::tempdir().unwrap();
    let fed_dir = dir.path().join("federation");
    let report = chaos::run(&Options {
        duration: Duration::from_secs(20),
        seed: 20_240_608,
        operators: 3,
        dir: Some(fed_dir.clone()),
        node_bin: None,
    })
    .await
    .unwrap();
    report.print();
    assert!(report.is_clean(), "{:?}", report.violations);
    assert!(report.kills > 0, "no node was killed");
    let check = report.check.as_ref().unwrap();
    assert!(check.acknowledged > 0, "no memo was acknowledged");
    assert_eq!(check.databases_opened, 3);
    assert!(
        report.consent_traffic.withdrawals_acknowledged
            + report.consent_traffic.withdrawals_unacknowledged
            > 0,
        "no consent was withdrawn"
    );
    assert!(report.drained);

    // No node process is left: none of those it started, none in the state file.
    assert!(!report.node_pids.is_empty());
    assert_eq!(checker::live_nodes(&report.node_pids), Vec::<u32>::new());
    let federation = Federation::open(&fed_dir).unwrap().unwrap();
    for op in federation.operators() {
        assert!(!federation.is_running(&op.id), "{} still runs", op.id);
    }
}
