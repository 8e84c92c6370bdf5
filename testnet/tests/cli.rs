//! The `mim4-testnet` tool as a tester uses it: `up`, `status`, `demo`, `down`.

// Helpers outside #[test] functions panic on failure too; that is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

fn testnet(dir: &Path, args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_mim4-testnet"))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    eprintln!(
        "$ mim4-testnet {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn pid_alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            let state = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some(Some('Z' | 'X')))
        })
        .unwrap_or(false)
}

/// `up` starts three healthy nodes (and is idempotent), `status --json`
/// reports them, `demo` verifies every pairwise receipt, and `down` stops
/// every process it started, leaving none behind.
#[test]
fn up_status_demo_down_leaves_no_process_behind() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().join("net");
    // `down` on every way out, a failed assertion included.
    let _down = mim4_testnet::DownOnDrop::new(&dir);

    let up = testnet(&dir, &["up", "--operators", "3"]);
    assert!(up.status.success());
    let table = String::from_utf8_lossy(&up.stdout);
    for operator in ["fi.helsinki", "fi.incomeregister", "se.stockholm"] {
        assert!(table.contains(operator), "{table}");
    }

    let again = testnet(&dir, &["up"]);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("already running"));

    let status = testnet(&dir, &["status", "--json"]);
    assert!(status.status.success());
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(json["running"], true, "{json}");
    let operators = json["operators"].as_array().unwrap();
    assert_eq!(operators.len(), 3);
    let pids: Vec<u64> = operators
        .iter()
        .map(|o| o["pid"].as_u64().unwrap())
        .collect();
    assert!(operators
        .iter()
        .all(|o| o["trust_list_version"] == 1 && o["peers"] == 2));
    assert!(pids.iter().all(|&p| pid_alive(p)));

    let demo = testnet(&dir, &["demo"]);
    assert!(demo.status.success(), "demo failed");
    let report = String::from_utf8_lossy(&demo.stdout);
    let receipts = report
        .lines()
        .filter(|l| l.contains(" -> ") && l.trim_end().ends_with(" ok"))
        .count();
    assert_eq!(receipts, 6, "six verified receipts: {report}");
    assert!(report.contains("All receipts verified"));
    assert!(
        report.contains("Helsinki daycare fees: all 9 steps passed"),
        "{report}"
    );
    assert!(
        report.contains("the next request for parent 2's income is denied ok"),
        "{report}"
    );

    let logs = testnet(&dir, &["logs", "fi.helsinki", "-n", "5"]);
    assert!(logs.status.success());
    assert!(String::from_utf8_lossy(&logs.stdout).contains("fi.helsinki"));

    let down = testnet(&dir, &["down"]);
    assert!(down.status.success());
    assert!(String::from_utf8_lossy(&down.stdout).contains("stopped 3 node(s)"));
    for pid in pids {
        assert!(!pid_alive(pid), "node process {pid} survived `down`");
    }
    let status = testnet(&dir, &["status", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(json["running"], false);

    let reset = testnet(&dir, &["reset"]);
    assert!(reset.status.success());
    assert!(!dir.exists());
}

/// A bad argument gets a clear error and a non-zero exit, and starts nothing.
#[test]
fn bad_arguments_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = testnet(dir.path(), &["up", "--operators", "99"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--operators must be between 1 and 8"));
    let out = testnet(dir.path(), &["logs", "xx.nowhere"]);
    assert!(!out.status.success());
}
