//! The crash loop, short: three runs of a 3-operator federation of real
//! `mim4-node` processes whose receiver is SIGKILLed three times mid-stream
//! (some kills during open and recovery), checked offline after each run.
//! The same loop must catch a node that acknowledges before flushing.
//! `scripts/crash-loop.sh` runs the long version (50 runs).

// Helpers outside #[test] functions panic on failure too; that is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use mim4_testnet::crashloop::{self, Options};

fn options(runs: usize, seed: u64, dir: &std::path::Path) -> Options {
    Options {
        runs,
        seed,
        kills: 3,
        dir: Some(dir.to_owned()),
        node_bin: None,
        broken_node: false,
        keep: false,
    }
}

/// Three seeded runs: nothing acknowledged is lost, nothing is applied twice
/// or unasked, every database opens, and no node process is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_runs_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let summary = crashloop::run(&options(3, 20_240_601, dir.path()), |r| {
        println!("{}", serde_json::to_string(r).unwrap());
    })
    .await
    .unwrap();
    let t = &summary.totals;
    println!("{}", serde_json::to_string_pretty(t).unwrap());
    for run in &summary.run_reports {
        assert!(
            run.violations.is_empty(),
            "run {}: {:?}",
            run.run,
            run.violations
        );
        assert!(run.completed, "run {} did not finish", run.run);
        let check = run.check.as_ref().unwrap();
        assert!(check.acknowledged > 0, "run {} streamed nothing", run.run);
        assert_eq!(check.databases_opened, 3, "run {}", run.run);
        assert!(run.drained, "run {} did not drain", run.run);
        assert!(run.dir.is_none(), "a clean run's folder is removed");
    }
    assert_eq!((t.lost, t.duplicated, t.unexpected), (0, 0, 0));
    assert_eq!(t.kills, 9);
    assert!(
        t.kills_recovering >= 3,
        "each run kills once during recovery"
    );
    assert_eq!(t.nodes_left, 0, "no node process is left");
}

/// With the test-only `mim4-node-broken` (feature `broken-ack-before-flush`),
/// which answers before its write is durable, the loop finds acknowledged
/// memos lost. Its first build compiles only the node again (about a
/// minute); `scripts/crash-loop.sh --broken` runs the same with a summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catches_a_node_that_acknowledges_before_flushing() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = options(2, 7, dir.path());
    options.broken_node = true;
    let summary = crashloop::run(&options, |r| {
        println!("{}", serde_json::to_string(r).unwrap());
    })
    .await
    .unwrap();
    println!("{}", serde_json::to_string_pretty(&summary.totals).unwrap());
    assert!(
        summary.totals.lost > 0,
        "the crash loop missed the broken node"
    );
    assert_eq!(summary.totals.nodes_left, 0);
}
