//! Every built-in scenario runs green against a real eight-operator testnet,
//! a wrong expectation fails `run` at the right step, and `down` after the
//! tool was killed leaves no node behind.

// Helpers outside #[test] functions panic on failure too; that is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use mim4_testnet::DownOnDrop;

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

/// Live processes with `needle` in their command line.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
            })
            .unwrap_or(true);
        if !zombie && String::from_utf8_lossy(&cmdline).contains(needle) {
            found.push(pid);
        }
    }
    found
}

#[test]
fn built_in_scenarios_pass_and_a_wrong_expectation_fails_at_its_step() {
    let dir = tempfile::tempdir().unwrap();
    let net = dir.path().join("net");
    // `down` on every way out, a failed assertion included.
    let _down = DownOnDrop::new(&net);
    assert!(testnet(&net, &["up", "--operators", "8"]).status.success());

    for (scenario, steps) in [("daycare", 9), ("job-seeker", 9), ("skills", 5)] {
        let out = testnet(&net, &["run", scenario]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{scenario} failed:\n{stdout}");
        assert!(
            stdout.contains(&format!("all {steps} steps passed")),
            "{stdout}"
        );
    }

    // A second run repeats (earlier consents are withdrawn first); the report is JSON.
    let out = testnet(&net, &["run", "daycare", "--json"]);
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["passed"], true, "{report}");
    assert!(report["cleared"].as_u64().unwrap() >= 1, "{report}");
    let fee = &report["steps"][4];
    assert_eq!(fee["action"], "compute");
    assert!(
        fee["detail"].as_str().unwrap().ends_with("= 94.59"),
        "{fee}"
    );

    // The daycare file with step 8 expecting an answer after the withdrawal.
    let text = mim4_testnet::scenario::BUILT_IN[0].1;
    let marker = "name = \"the next request for parent 2's income is denied\"";
    let (head, tail) = text.split_at(text.find(marker).unwrap());
    let wrong = format!(
        "{head}{}",
        tail.replacen(
            "expect = \"denied\"",
            "expect = \"answered\"\nwithin = \"3s\"",
            1
        )
    );
    let file = dir.path().join("wrong.toml");
    std::fs::write(&file, wrong).unwrap();
    let out = testnet(&net, &["run", file.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAILED at step 8"), "{stdout}");
    assert!(
        stdout.contains("the next request for parent 2's income is denied FAILED"),
        "{stdout}"
    );
    assert!(stdout.contains("expected answered, got denied"), "{stdout}");

    let out = testnet(&net, &["run", file.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["passed"], false);
    assert_eq!(report["steps"].as_array().unwrap().len(), 8);
    assert_eq!(report["skipped"], 1);

    // A file that does not parse is refused before anything runs, with its line.
    std::fs::write(&file, "name = \"x\"\noperators = [\n").unwrap();
    let out = testnet(&net, &["run", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line"));

    assert!(testnet(&net, &["down"]).status.success());
    assert!(processes_mentioning(net.to_str().unwrap()).is_empty());
}

/// `up` killed with SIGKILL at several moments of start-up: `down` afterwards
/// stops every node it had started, recorded or not.
#[test]
fn down_after_the_tool_was_killed_leaves_no_orphan() {
    let dir = tempfile::tempdir().unwrap();
    for (round, delay_ms) in [300u64, 1_500, 4_000].into_iter().enumerate() {
        let net = dir.path().join(format!("net{round}"));
        let needle = net.to_str().unwrap().to_owned();
        let tool = Command::new(env!("CARGO_BIN_EXE_mim4-testnet"))
            .arg("--dir")
            .arg(&net)
            .args(["up", "--operators", "3"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kills the tool and stops its nodes if an assertion below fails.
        let mut guard = DownOnDrop::with_tool(&net, tool);
        let tool = guard.tool().unwrap();
        // Wait until at least one node exists (or the tool finished), then a bit more.
        let deadline = Instant::now() + Duration::from_secs(120);
        while processes_mentioning(&format!("{needle}/")).is_empty()
            && tool.try_wait().unwrap().is_none()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = tool.kill();
        let _ = tool.wait();
        let out = testnet(&net, &["down"]);
        assert!(out.status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = processes_mentioning(&format!("{needle}/"));
            if left.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: processes left after down: {left:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The same built-in scenarios pass on an eight-operator federation whose
/// operators all offer only libp2p, and on a mixed one (alternately gRPC
/// only and libp2p only), and `status --json` says which operator offers what.
#[test]
fn built_in_scenarios_pass_over_libp2p_and_a_mixed_federation() {
    for transport in ["libp2p", "mixed"] {
        let dir = tempfile::tempdir().unwrap();
        let net = dir.path().join("net");
        let _down = DownOnDrop::new(&net);
        let up = testnet(&net, &["up", "--operators", "8", "--transport", transport]);
        assert!(up.status.success(), "up --transport {transport}");
        for scenario in ["daycare", "job-seeker", "skills"] {
            let out = testnet(&net, &["run", scenario]);
            assert!(out.status.success(), "{scenario} over {transport}");
        }
        let out = testnet(&net, &["status", "--json"]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let offers: Vec<&str> = status["operators"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["transport"].as_str().unwrap())
            .collect();
        assert_eq!(offers.len(), 8);
        match transport {
            "libp2p" => assert!(offers.iter().all(|t| *t == "libp2p"), "{offers:?}"),
            _ => {
                assert_eq!(
                    offers.iter().filter(|t| **t == "grpc").count(),
                    4,
                    "{offers:?}"
                );
                assert_eq!(
                    offers.iter().filter(|t| **t == "libp2p").count(),
                    4,
                    "{offers:?}"
                );
            }
        }
        assert!(testnet(&net, &["down"]).status.success());
    }
}
