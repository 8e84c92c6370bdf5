//! Chaos, short: 20 s of memos between three operators and consent
//! grant/withdraw cycles while random nodes are SIGKILLed and restarted and,
//! where namespaces can be made, operators are partitioned; then the offline
//! check of every store.

// Helpers outside #[test] functions panic on failure too; that is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use mim4_testnet::chaos::{self, Options};
use mim4_testnet::{checker, netns, Federation};

/// The tests of this file run one at a time: a lab made by one deletes the
/// namespaces of killed tools, which the other test leaves for `down` to find.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Every invariant holds after 20 s of faults (no acknowledged memo lost,
/// none applied twice, every withdrawal at the home and at every party), there
/// was traffic of both kinds, and no node process is left afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_seconds_of_kills_break_no_invariant() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let fed_dir = dir.path().join("federation");
    let report = chaos::run(&Options {
        duration: Duration::from_secs(20),
        seed: 20_240_608,
        operators: 3,
        dir: Some(fed_dir.clone()),
        node_bin: None,
        partitions: true,
        scenario: Some(mim4_testnet::scenario::Scenario::load("daycare").unwrap()),
    })
    .await
    .unwrap();
    report.print();
    assert!(report.is_clean(), "{:?}", report.verdict.violations);
    assert!(report.kills > 0, "no node was killed");
    let check = report.verdict.check.as_ref().unwrap();
    assert!(check.acknowledged > 0, "no memo was acknowledged");
    assert_eq!(check.databases_opened, 3);
    assert!(
        report.consent_traffic.withdrawals_acknowledged
            + report.consent_traffic.withdrawals_unacknowledged
            > 0,
        "no consent was withdrawn"
    );
    assert!(report.drained);
    // The daycare scenario looped during the faults (its runs may fail under faults).
    let runs = &report.scenario_runs;
    assert_eq!(
        runs.scenario.as_deref(),
        Some("Helsinki daycare fees"),
        "{runs:?}"
    );
    assert!(
        runs.passed + runs.failed >= 1,
        "no scenario run ended: {runs:?}"
    );
    // Partitions happen wherever namespaces can be made (root, iproute2).
    match netns::Lab::available() {
        Ok(()) => {
            let p = &report.partitions;
            assert!(p.injected, "{p:?}");
            assert!(p.cuts + p.isolations > 0, "{p:?}");
            let pid = std::process::id();
            let left: Vec<String> = std::fs::read_dir("/run/netns")
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| n.starts_with(&format!("m4n{pid}-")))
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(left, Vec::<String>::new(), "namespaces left behind");
        }
        Err(why) => {
            assert!(
                !netns::required(),
                "{}=1 but network namespaces are unavailable: {why}",
                netns::REQUIRE_ENV
            );
            eprintln!("partitions not tested: {why}");
            assert!(!report.partitions.injected);
        }
    }

    // No node process is left: none of those it started, none in the state file.
    assert!(!report.verdict.node_pids.is_empty());
    assert_eq!(
        checker::live_nodes(&report.verdict.node_pids),
        Vec::<u32>::new()
    );
    let federation = Federation::open(&fed_dir).unwrap().unwrap();
    for op in federation.operators() {
        assert!(!federation.is_running(&op.id), "{} still runs", op.id);
    }
}

/// Names of the lab namespaces of process `pid`.
fn lab_namespaces(pid: u32) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("m4n{pid}-")))
                .collect()
        })
        .unwrap_or_default()
}

/// Pids of the processes in namespace `ns`.
fn namespace_pids(ns: &str) -> Vec<u32> {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The chaos tool SIGKILLed mid-run leaves its nodes running in its
/// namespaces; `down` (of any testnet folder) kills them and deletes the
/// namespaces.
#[test]
fn down_after_a_killed_chaos_run_removes_its_nodes_and_namespaces() {
    let _one = ONE_AT_A_TIME.blocking_lock();
    if let Err(why) = mim4_testnet::netns::Lab::available() {
        assert!(
            !netns::required(),
            "{}=1 but network namespaces are unavailable: {why}",
            netns::REQUIRE_ENV
        );
        eprintln!("skipped: network namespaces unavailable here: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tool = std::process::Command::new(env!("CARGO_BIN_EXE_mim4-testnet"))
        .arg("--dir")
        .arg(dir.path().join("chaos"))
        .args(["chaos", "--duration", "120s", "--seed", "7"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // If an assertion fails before `down` below: kill the tool, stop its nodes.
    let mut guard = mim4_testnet::DownOnDrop::with_tool(dir.path().join("chaos"), tool);
    let tool = guard.tool().unwrap();
    let tool_pid = tool.id();
    // Wait until every node of the three operators runs in its namespace.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let nodes = loop {
        let namespaces = lab_namespaces(tool_pid);
        let nodes: Vec<u32> = namespaces
            .iter()
            .filter(|n| !n.ends_with("-hub"))
            .flat_map(|n| namespace_pids(n))
            .collect();
        if namespaces.len() == 4 && nodes.len() == 3 {
            break nodes;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the chaos run did not start its nodes: {namespaces:?} {nodes:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    tool.kill().unwrap();
    tool.wait().unwrap();
    assert_eq!(
        lab_namespaces(tool_pid).len(),
        4,
        "the killed tool cleaned up"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mim4-testnet"))
        .arg("--dir")
        .arg(dir.path().join("other"))
        .arg("down")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("removed 4 network namespace(s)"),
        "{stdout}"
    );
    assert_eq!(lab_namespaces(tool_pid), Vec::<String>::new());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while let Some(pid) = nodes
        .iter()
        .find(|p| checker::live_nodes(&[**p]).len() == 1)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "node {pid} still runs"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
