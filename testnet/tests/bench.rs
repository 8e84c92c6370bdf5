//! `mim4-testnet bench` as a short, bounded run: both rows measured without
//! errors, and no node left running afterwards. Speed is not asserted (it
//! depends on the machine); the run only has to work and clean up.

// Helpers outside #[test] functions panic on failure too; that is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

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

/// A 2-second, 500-request run reports a signed row and an echo row, each
/// with positive requests/s and zero errors, and stops every node it started:
/// neither the pids it reports nor those in its state file are alive.
#[test]
fn short_bench_reports_both_rows_and_leaves_no_node() {
    let dir = tempfile::tempdir().unwrap();
    let net = dir.path().join("net");
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_mim4-testnet"))
        .arg("--dir")
        .arg(&net)
        .args(["bench", "--duration", "2s", "--requests", "500", "--json"])
        .output()
        .unwrap();
    eprintln!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "bench failed");
    // Start-up, consent, warm-up and two bounded phases; a generous bound that
    // only catches a run that does not stop by itself.
    assert!(started.elapsed() < Duration::from_secs(180));

    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["signed", "echo"]);
    for row in rows {
        assert!(row["rps"].as_f64().unwrap() > 0.0, "{row}");
        assert_eq!(row["errors"], 0, "{row}");
        let requests = row["requests"].as_u64().unwrap();
        assert!((1..=500).contains(&requests), "{row}");
    }
    assert!(report["echo_payload_bytes"].as_u64().unwrap() > 0);

    let pids: Vec<u64> = report["node_pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    assert_eq!(pids.len(), 2, "{report}");
    assert!(
        pids.iter().all(|&p| !pid_alive(p)),
        "a node survived: {pids:?}"
    );

    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(net.join("testnet.json")).unwrap()).unwrap();
    for op in state["operators"].as_array().unwrap() {
        assert!(
            op["pid"].as_u64().is_none_or(|p| !pid_alive(p)),
            "state file still names a live node: {op}"
        );
    }
}
