//! `mim4-testnet`: a local MIM4 federation of real `mim4-node` processes.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::parser::ValueSource;
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use mim4_node::clock::now_ms;
use mim4_node::core::ids::OperatorId;
use mim4_testnet::scenario::{self, Scenario};
use mim4_testnet::{
    bench, chaos, crashloop, node_binary, partition, receipts, Federation, Transports,
    DEFAULT_OPERATORS,
};
use serde::Serialize;

/// Run a local MIM4 federation and its demo scenarios.
#[derive(Parser, Debug)]
#[command(name = "mim4-testnet", version, about, long_about = None)]
struct Cli {
    /// Folder of the testnet (keys, configs, databases, logs).
    #[arg(long, global = true, default_value = ".mim4-testnet")]
    dir: PathBuf,
    /// The mim4-node binary (default: beside this one, built if missing).
    #[arg(long, global = true)]
    node_bin: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create (if needed) and start the federation; idempotent.
    Up {
        /// Number of operators (1 to 8).
        #[arg(long, default_value_t = 3)]
        operators: usize,
        /// How operators reach each other: grpc, libp2p, or mixed (alternately
        /// gRPC only and libp2p only). Applies when the testnet is created.
        #[arg(long, value_enum, default_value_t = Transports::Grpc)]
        transport: Transports,
    },
    /// Show each operator: addresses, process, health and counters.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Print an operator's log (all operators if none is named).
    Logs {
        /// Operator id.
        operator: Option<String>,
        /// Lines from the end.
        #[arg(long, short = 'n', default_value_t = 40)]
        lines: usize,
    },
    /// Stop every node this testnet started (also after a crash of this tool).
    Down,
    /// Stop everything and delete the testnet folder.
    Reset,
    /// Bring the federation up if needed, have every operator send a signed
    /// message to every other and verify each signed receipt, then run a
    /// scenario (default: the Helsinki daycare fees) and leave the federation running.
    Demo {
        /// A built-in scenario (daycare, job-seeker, skills) or a scenario file.
        #[arg(default_value = "daycare")]
        scenario: String,
        /// Operators to create if no testnet exists yet (at least what the scenario needs).
        #[arg(long, default_value_t = 3)]
        operators: usize,
        /// Transports of a testnet created now: grpc, libp2p or mixed.
        #[arg(long, value_enum, default_value_t = Transports::Grpc)]
        transport: Transports,
    },
    /// Run a scenario against the running federation and report each step;
    /// exits non-zero when an expectation fails. Built-in scenarios: daycare,
    /// job-seeker, skills (the last two need `up --operators 8`).
    /// The file format is documented in testnet/scenarios/README.md.
    Run {
        /// A built-in scenario name or a scenario file (TOML).
        scenario: String,
        /// Machine-readable report.
        #[arg(long)]
        json: bool,
    },
    /// Load-test a fresh 2-operator federation: signed 3-attribute data requests
    /// through the SDK, next to a plain tonic echo of the same size (the ceiling).
    /// Runs in a temporary folder unless --dir is given; stops every node it starts.
    Bench {
        /// Concurrent clients, each with its own connection.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Longest time of each phase (e.g. 10s, 500ms, 1m).
        #[arg(long, default_value = "10s", value_parser = bench::parse_duration)]
        duration: Duration,
        /// Most requests of each phase.
        #[arg(long, default_value_t = 50_000)]
        requests: u64,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Crash loop: runs of a fresh 3-operator federation in which two senders
    /// stream memos to a receiver that is SIGKILLed and restarted at random
    /// moments; every store is checked offline after each run (nothing
    /// acknowledged lost, nothing applied twice). Temporary folder unless --dir is given.
    Crashloop(crashloop::Args),
    /// Chaos: memos between all operators, consent grant/withdraw cycles and a
    /// looped scenario while random nodes are SIGKILLed and restarted and
    /// (in network namespaces, where the machine allows it) operators are
    /// partitioned; then heal, drain, stop and check every store offline.
    /// Exits non-zero on a violation.
    Chaos(chaos::Args),
    /// Partition suite: three nodes in network namespaces; the income register
    /// cut off for 30 s while consents are granted and withdrawn, then
    /// Stockholm's node paused (SIGSTOP) under traffic; every outbox must be
    /// empty within the longest retry delay + 5 s of each heal, and every store
    /// passes the offline check. Needs root and iproute2.
    Partition(partition::Args),
}

fn main() -> anyhow::Result<()> {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // `bench` makes its own temporary federation unless a folder is named.
    let dir_given = matches.value_source("dir") == Some(ValueSource::CommandLine);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Up {
                operators,
                transport,
            } => {
                let federation =
                    up(&cli.dir, cli.node_bin.as_deref(), operators, transport).await?;
                print_table(&federation);
                println!("\nnext: mim4-testnet demo | status | logs OPERATOR | down");
                Ok(())
            }
            Command::Status { json } => status(&cli.dir, json).await,
            Command::Run { scenario, json } => {
                let scenario = Scenario::load(&scenario)?;
                let federation = Federation::open(&cli.dir)?.with_context(|| {
                    format!(
                        "no testnet in {}; start one with `mim4-testnet up --operators {}`",
                        cli.dir.display(),
                        operators_needed(&scenario).unwrap_or(DEFAULT_OPERATORS.len())
                    )
                })?;
                let report = scenario::run(&federation, &scenario, !json).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                }
                if !report.passed {
                    std::process::exit(1);
                }
                Ok(())
            }
            Command::Logs { operator, lines } => logs(&cli.dir, operator.as_deref(), lines),
            Command::Down => {
                remove_stale_labs();
                let Some(mut federation) = Federation::open(&cli.dir)? else {
                    println!("no testnet in {}", cli.dir.display());
                    return Ok(());
                };
                let stopped = federation.stop_all()?;
                println!(
                    "stopped {stopped} node(s); data kept in {}",
                    cli.dir.display()
                );
                Ok(())
            }
            Command::Reset => {
                remove_stale_labs();
                if let Some(mut federation) = Federation::open(&cli.dir)? {
                    federation.stop_all()?;
                }
                if cli.dir.exists() {
                    std::fs::remove_dir_all(&cli.dir)
                        .with_context(|| format!("removing {}", cli.dir.display()))?;
                }
                println!("testnet in {} removed", cli.dir.display());
                Ok(())
            }
            Command::Demo {
                scenario,
                operators,
                transport,
            } => {
                let scenario = Scenario::load(&scenario)?;
                let operators = operators.max(operators_needed(&scenario)?);
                let federation =
                    up(&cli.dir, cli.node_bin.as_deref(), operators, transport).await?;
                print_table(&federation);
                demo(&federation).await?;
                let report = scenario::run(&federation, &scenario, true).await?;
                if !report.passed {
                    bail!("scenario {:?} failed", scenario.name);
                }
                println!("\nThe federation keeps running:");
                println!(
                    "  mim4-testnet run job-seeker   # more scenarios: daycare, job-seeker, skills"
                );
                println!("  mim4-testnet status      # health and counters");
                println!("  mim4-testnet logs fi.helsinki");
                println!("  mim4-testnet down        # stop every node");
                Ok(())
            }
            Command::Bench {
                clients,
                duration,
                requests,
                json,
            } => {
                let report = bench::run(&bench::Options {
                    dir: dir_given.then(|| cli.dir.clone()),
                    node_bin: cli.node_bin.clone(),
                    clients,
                    duration,
                    requests_max: requests,
                })
                .await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    report.print_table();
                }
                Ok(())
            }
            Command::Crashloop(args) => {
                crashloop::command(&args, dir_given.then(|| cli.dir.clone()), cli.node_bin).await
            }
            Command::Chaos(args) => chaos::command(&args, &cli.dir, dir_given, cli.node_bin).await,
            Command::Partition(args) => partition::command(&args, cli.node_bin).await,
        }
    })
}

/// How many of the default operators (taken in order) a scenario needs.
fn operators_needed(scenario: &Scenario) -> anyhow::Result<usize> {
    scenario.operators.iter().try_fold(1, |needed, id| {
        let index = DEFAULT_OPERATORS
            .iter()
            .position(|o| o.id == id)
            .with_context(|| {
                format!(
                    "scenario {:?} needs operator {id}, which the testnet does not create",
                    scenario.name
                )
            })?;
        Ok(needed.max(index + 1))
    })
}

/// Opens or creates the testnet and starts every node that is not running.
async fn up(
    dir: &Path,
    node_bin: Option<&Path>,
    operators: usize,
    transports: Transports,
) -> anyhow::Result<Federation> {
    if !(1..=DEFAULT_OPERATORS.len()).contains(&operators) {
        bail!(
            "--operators must be between 1 and {}",
            DEFAULT_OPERATORS.len()
        );
    }
    let node_bin = node_binary::find(node_bin)?;
    let mut federation = match Federation::open(dir)? {
        Some(mut existing) => {
            if existing.node_bin() != node_bin {
                existing.set_node_bin(node_bin)?;
            }
            existing
        }
        None => {
            Federation::create_over(dir, &DEFAULT_OPERATORS[..operators], node_bin, transports)?
        }
    };
    let ids: Vec<String> = federation
        .operators()
        .iter()
        .map(|o| o.id.clone())
        .collect();
    let already = ids.iter().filter(|id| federation.is_running(id)).count();
    if already == ids.len() {
        println!(
            "testnet in {} is already running",
            federation.dir().display()
        );
        return Ok(federation);
    }
    let bar = progress(ids.len() as u64, "starting nodes");
    federation.start_all()?;
    for id in &ids {
        bar.set_message(format!("waiting for {id}"));
        federation.wait_ready(id, Duration::from_secs(60)).await?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!(
        "{} operator(s) running in {}",
        ids.len(),
        federation.dir().display()
    );
    Ok(federation)
}

fn progress(len: u64, message: &str) -> indicatif::ProgressBar {
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(len)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} [{bar:20}] {pos}/{len}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(message.to_owned());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn print_table(federation: &Federation) {
    println!(
        "\n{:<24} {:<8} {:<22} {:<22} {:<8} DATA DIR",
        "OPERATOR", "OFFERS", "PEER (gRPC/libp2p)", "API (gRPC)", "PID"
    );
    for op in federation.operators() {
        let peer = match op.p2p_addr {
            Some(addr) => format!("{addr}"),
            None => op.peer_addr.to_string(),
        };
        println!(
            "{:<24} {:<8} {:<22} {:<22} {:<8} {}",
            op.id,
            op.transport.to_string(),
            peer,
            op.api_addr.to_string(),
            op.pid.map_or("-".into(), |p| p.to_string()),
            op.dir.join("data").display()
        );
    }
}

#[derive(Serialize)]
struct OperatorStatus {
    operator: String,
    transport: String,
    peer_addr: String,
    p2p_addr: Option<String>,
    api_addr: String,
    pid: Option<u32>,
    running: bool,
    healthy: bool,
    trust_list_version: Option<u64>,
    peers: Option<u32>,
    received: Option<u64>,
    outbox_pending: Option<u64>,
    outbox_delivered: Option<u64>,
    error: Option<String>,
}

async fn status(dir: &Path, json: bool) -> anyhow::Result<()> {
    let Some(federation) = Federation::open(dir)? else {
        if json {
            println!("{{\"running\":false,\"operators\":[]}}");
        } else {
            println!(
                "no testnet in {} (start one with `mim4-testnet up`)",
                dir.display()
            );
        }
        return Ok(());
    };
    let mut rows = Vec::new();
    for op in federation.operators() {
        let running = federation.is_running(&op.id);
        let answer = if running {
            match federation.admin(&op.id).await {
                Ok(client) => client.status().await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        } else {
            Err("not running".into())
        };
        let (status, error) = match answer {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(e)),
        };
        rows.push(OperatorStatus {
            operator: op.id.clone(),
            transport: op.transport.to_string(),
            peer_addr: op.peer_addr.to_string(),
            p2p_addr: op.p2p_addr.map(|a| a.to_string()),
            api_addr: op.api_addr.to_string(),
            pid: op.pid.filter(|_| running),
            running,
            healthy: status.is_some(),
            trust_list_version: status.as_ref().map(|s| s.trust_list_version),
            peers: status.as_ref().map(|s| s.peers),
            received: status.as_ref().map(|s| s.messages_received),
            outbox_pending: status.as_ref().map(|s| s.outbox_pending),
            outbox_delivered: status.as_ref().map(|s| s.outbox_delivered),
            error,
        });
    }
    if json {
        let all_running = rows.iter().all(|r| r.healthy);
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "dir": federation.dir(),
                "running": all_running,
                "operators": rows,
            }))?
        );
        return Ok(());
    }
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    println!(
        "{:<24} {:<7} {:<22} {:<8} {:<8} {:>5} {:>6} {:>9} {:>8} {:>10}",
        "OPERATOR",
        "OFFERS",
        "API",
        "PID",
        "HEALTH",
        "TRUST",
        "PEERS",
        "RECEIVED",
        "PENDING",
        "DELIVERED"
    );
    for r in rows {
        println!(
            "{:<24} {:<7} {:<22} {:<8} {:<8} {:>5} {:>6} {:>9} {:>8} {:>10}",
            r.operator,
            r.transport,
            r.api_addr,
            dash(r.pid.map(|p| p.to_string())),
            if r.healthy {
                "ok"
            } else if r.running {
                "failing"
            } else {
                "down"
            },
            dash(r.trust_list_version.map(|v| format!("v{v}"))),
            dash(r.peers.map(|v| v.to_string())),
            dash(r.received.map(|v| v.to_string())),
            dash(r.outbox_pending.map(|v| v.to_string())),
            dash(r.outbox_delivered.map(|v| v.to_string())),
        );
    }
    Ok(())
}

fn logs(dir: &Path, operator: Option<&str>, lines: usize) -> anyhow::Result<()> {
    let federation =
        Federation::open(dir)?.with_context(|| format!("no testnet in {}", dir.display()))?;
    for op in federation.operators() {
        if operator.is_some_and(|o| o != op.id) {
            continue;
        }
        println!("==> {} ({}) <==", op.id, op.log_path().display());
        let text = std::fs::read_to_string(op.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        for line in &all[all.len().saturating_sub(lines)..] {
            println!("{line}");
        }
    }
    if let Some(name) = operator {
        federation.operator(name)?;
    }
    Ok(())
}

/// Every operator sends a memo to every other; each signed receipt is fetched
/// and verified against the trust list. Fails if any is missing or invalid.
async fn demo(federation: &Federation) -> anyhow::Result<()> {
    let trust = federation.trust_list()?;
    let ids: Vec<String> = federation
        .operators()
        .iter()
        .map(|o| o.id.clone())
        .collect();
    println!(
        "\nEvery operator sends a signed message to every other ({} messages):",
        ids.len() * ids.len().saturating_sub(1)
    );
    let mut sent = Vec::new();
    for from in &ids {
        let client = federation.admin(from).await?;
        for to in ids.iter().filter(|to| *to != from) {
            let text = format!("Hello {to}, this is {from}. Testing the federation.");
            let id = client
                .send_message(to, "testnet demo", &text)
                .await
                .with_context(|| format!("{from} sending to {to}"))?;
            sent.push((from.clone(), to.clone(), client.clone(), id));
        }
    }
    let color = std::io::stdout().is_terminal();
    let (ok_mark, bad_mark) = if color {
        ("\x1b[32m✓\x1b[0m", "\x1b[31m✗\x1b[0m")
    } else {
        ("ok", "FAILED")
    };
    println!(
        "\n{:<24}    {:<24} {:<34} {:<18} VERIFIED",
        "FROM", "TO", "RECEIPT ID", "SIGNED BY KEY"
    );
    let mut failures = 0;
    for (from, to, client, id) in sent {
        let outcome = match client.wait_delivered(id, Duration::from_secs(60)).await {
            Ok(outgoing) => receipts::check(
                &trust,
                &OperatorId::new(from.clone())?,
                &OperatorId::new(to.clone())?,
                &outgoing.envelope,
                &outgoing.receipt,
                now_ms(),
            ),
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(checked) => println!(
                "{from:<24} -> {to:<24} {:<34} {:<18} {ok_mark}",
                checked.receipt_id.to_string(),
                checked.key_id.to_string()
            ),
            Err(e) => {
                failures += 1;
                println!(
                    "{from:<24} -> {to:<24} {:<34} {:<18} {bad_mark} {e}",
                    "-", "-"
                );
            }
        }
    }
    if failures > 0 {
        bail!("{failures} receipt(s) missing or invalid");
    }
    println!(
        "\nAll receipts verified against trust list v{}. Try the SDK against it:",
        trust.version()
    );
    println!(
        "  cargo run -p mim4-sdk --example send_memo -- {} \"$(cat {})\" {}",
        federation.operators()[0].api_url(),
        federation.operators()[0]
            .dir
            .join("admin.credential")
            .display(),
        ids.get(1).map_or("se.stockholm", String::as_str)
    );
    Ok(())
}

/// Deletes the network namespaces (and kills the nodes) of chaos runs whose
/// tool was killed before it could clean up.
fn remove_stale_labs() {
    let removed = mim4_testnet::netns::remove_stale();
    if removed > 0 {
        println!("removed {removed} network namespace(s) left by a killed chaos run");
    }
}
