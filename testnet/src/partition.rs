//! `mim4-testnet partition`: the partition suite.
//!
//! Three operators, each node in its own network namespace ([`Lab`]), and
//! the client traffic that [`chaos`](crate::chaos) runs too (the `traffic`
//! module: memos between every pair, consent grant/withdraw cycles). Two phases:
//!
//! 1. **Cut**: after a warm-up, the income register (the source of every
//!    consent, so every grant and withdrawal is pushed to it) is cut off from
//!    both other operators for `--cut` (30 s) while consents are granted and
//!    withdrawn; the pushes and memos to it wait in outboxes. At the heal the
//!    traffic stops, and every outbox must be empty within the longest retry
//!    delay plus 5 s.
//! 2. **Pause**: the traffic again, and Stockholm's node (the consumer) is
//!    SIGSTOPped for `--pause` (10 s) and continued; again every outbox must
//!    be empty within the same bound.
//!
//! Then the nodes stop and the [`checker`] reads every store offline: no
//! acknowledged memo lost, none applied twice or unasked, every withdrawal at
//! the home and at every party. The outbox backlog at each heal is reported,
//! which shows the fault really held messages back.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde::Serialize;

use crate::checker::{self, Ledger};
use crate::guard::{temporary_dir, NodeGuard};
use crate::netns::Lab;
use crate::traffic::{self, ConsentTraffic, Traffic};
use crate::{bench, node_binary, Federation, Placement, DEFAULT_OPERATORS};

/// The operator cut off in the first phase (the source of the consents).
const CUT: &str = "fi.incomeregister";
/// The operator paused in the second phase (the consumer).
const PAUSED: &str = "se.stockholm";
/// Traffic before a fault starts.
const WARM_UP: Duration = Duration::from_secs(2);
/// Longest accepted cut or pause.
const FAULT_MAX: Duration = Duration::from_secs(600);
/// Every outbox must be empty this long after a heal: the longest retry
/// delay (a message whose retry was just scheduled) plus 5 s.
const DELIVERY_BOUND: Duration =
    Duration::from_millis(mim4_node::limits::RETRY_DELAY_MS_MAX + 5_000);
/// How long a node may take to start.
const START_WAIT: Duration = Duration::from_secs(60);

/// `mim4-testnet partition` options.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// How long the income register is cut off.
    #[arg(long, default_value = "30s", value_parser = bench::parse_duration)]
    pub cut: Duration,
    /// How long Stockholm's node is paused (SIGSTOP).
    #[arg(long, default_value = "10s", value_parser = bench::parse_duration)]
    pub pause: Duration,
    /// Seed of the traffic (default: random; printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// The report as JSON: on stdout (`--json`), or into FILE (`--json FILE`,
    /// with the figures printed as text too).
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
    pub json: Option<PathBuf>,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// How long the income register is cut off.
    pub cut: Duration,
    /// How long Stockholm's node is paused.
    pub pause: Duration,
    /// Seed of the traffic.
    pub seed: u64,
    /// The `mim4-node` binary (see [`node_binary::find`]).
    pub node_bin: Option<PathBuf>,
}

/// One fault and its aftermath.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Phase {
    /// The operator cut off or paused.
    pub operator: String,
    /// How long, in seconds.
    pub fault_s: f64,
    /// Consent traffic during the phase.
    pub consents: ConsentTraffic,
    /// Messages waiting in the outboxes of the nodes that answered, at the heal.
    pub backlog_at_heal: u64,
    /// From the heal until every outbox was empty, in ms (`None`: not within the bound).
    pub delivered_ms: Option<u64>,
}

/// The result of a run.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Seed of the traffic.
    pub seed: u64,
    /// The operators.
    pub operators: Vec<String>,
    /// The cut.
    pub cut: Phase,
    /// The pause.
    pub pause: Phase,
    /// Every outbox must be empty this long after a heal, in ms.
    pub delivery_bound_ms: u64,
    /// The check, the violations, the processes and the folder (kept after a violation).
    #[serde(flatten)]
    pub verdict: checker::Verdict,
}

impl Report {
    /// Whether every invariant held.
    pub fn is_clean(&self) -> bool {
        self.verdict.is_clean()
    }

    /// Prints the figures.
    pub fn print(&self) {
        println!(
            "partition: seed {}, operators {}",
            self.seed,
            self.operators.join(", ")
        );
        for (what, phase) in [("cut off", &self.cut), ("paused", &self.pause)] {
            let c = &phase.consents;
            println!(
                "  {} {what} for {:.0} s: consents requested {}, granted {}, withdrawn {} (+{} unacknowledged); \
                 backlog at heal {}; every outbox empty {}",
                phase.operator,
                phase.fault_s,
                c.requested,
                c.granted,
                c.withdrawals_acknowledged,
                c.withdrawals_unacknowledged,
                phase.backlog_at_heal,
                match phase.delivered_ms {
                    Some(ms) => format!(
                        "{:.1} s after the heal (bound {:.0} s)",
                        ms as f64 / 1_000.0,
                        self.delivery_bound_ms as f64 / 1_000.0
                    ),
                    None => format!(
                        "NOT within {:.0} s of the heal",
                        self.delivery_bound_ms as f64 / 1_000.0
                    ),
                }
            );
        }
        self.verdict.print();
    }
}

/// The `partition` subcommand. Fails on a violation.
pub async fn command(args: &Args, node_bin: Option<PathBuf>) -> anyhow::Result<()> {
    let report = run(&Options {
        cut: args.cut,
        pause: args.pause,
        seed: args.seed.unwrap_or_else(rand::random),
        node_bin,
    })
    .await?;
    crate::chaos::emit(&report, args.json.as_deref(), Report::print)?;
    if !report.is_clean() {
        bail!(
            "partition found {} violation(s)",
            report.verdict.violations.len()
        );
    }
    Ok(())
}

/// Runs the suite and returns the report (violations are in it, not errors).
/// Errors are set-up failures, including a machine without network namespaces.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    for (name, value) in [("--cut", options.cut), ("--pause", options.pause)] {
        if value.is_zero() || value > FAULT_MAX {
            bail!(
                "{name} must be above zero and at most {} s",
                FAULT_MAX.as_secs()
            );
        }
    }
    Lab::available()
        .map_err(|why| anyhow::anyhow!("the partition suite needs network namespaces: {why}"))?;
    let lab = Arc::new(Lab::create(3)?);
    let options = options.clone();
    lab.in_hub(move |lab| async move { run_in(&options, &lab).await })
        .await
}

async fn run_in(options: &Options, lab: &Lab) -> anyhow::Result<Report> {
    let started = Instant::now();
    let node_bin = node_binary::find(options.node_bin.as_deref())?;
    let dir = temporary_dir("mim4-partition");
    let specs = &DEFAULT_OPERATORS[..3];
    let placement: Vec<Placement> = (0..specs.len()).map(|i| lab.placement(i)).collect();
    let federation = Federation::create_placed(&dir, specs, &placement, node_bin)?;
    let ids: Vec<String> = federation
        .operators()
        .iter()
        .map(|o| o.id.clone())
        .collect();
    eprintln!(
        "partition: {} in {}, cut {:.0} s, pause {:.0} s, seed {}",
        ids.join(", "),
        dir.display(),
        options.cut.as_secs_f64(),
        options.pause.as_secs_f64(),
        options.seed
    );
    let mut report = Report {
        seed: options.seed,
        operators: ids,
        cut: Phase::default(),
        pause: Phase::default(),
        delivery_bound_ms: u64::try_from(DELIVERY_BOUND.as_millis()).unwrap_or(u64::MAX),
        verdict: checker::Verdict::new(federation.dir().to_owned()),
    };
    let mut guard = NodeGuard::new(federation, "partition");
    let ledger = traffic::new_ledger("partition");
    let outcome = tokio::select! {
        outcome = phases(options, lab, &mut guard, &mut report, &ledger) => Some(outcome),
        _ = tokio::signal::ctrl_c() => None,
    };
    let bound = report.delivery_bound_ms;
    for phase in [&report.cut, &report.pause] {
        if phase.delivered_ms.is_none() && !phase.operator.is_empty() {
            report.verdict.violations.push(format!(
                "outboxes not empty within {bound} ms of the heal of {}",
                phase.operator
            ));
        }
    }
    report.verdict.stop_and_check(guard, outcome, &ledger)?;
    report.verdict.finish(true, started)?;
    Ok(report)
}

/// The cut, then the pause.
async fn phases(
    options: &Options,
    lab: &Lab,
    guard: &mut NodeGuard,
    report: &mut Report,
    ledger: &Arc<Mutex<Ledger>>,
) -> anyhow::Result<()> {
    guard.start_all_ready(START_WAIT).await?;
    let ids = guard.ids()?;
    let index = |id: &str| {
        ids.iter()
            .position(|o| o == id)
            .with_context(|| format!("{id} is not in the federation"))
    };
    let cut = index(CUT)?;
    index(PAUSED)?;

    // 1. The income register cut off from both others.
    report.cut.operator = CUT.to_owned();
    report.cut.fault_s = options.cut.as_secs_f64();
    let traffic = Traffic::start("cut ", guard.federation()?, ledger, options.seed, None)?;
    tokio::time::sleep(WARM_UP).await;
    let others: Vec<usize> = (0..ids.len()).filter(|&i| i != cut).collect();
    for &other in &others {
        lab.cut(cut, other)?;
    }
    tokio::time::sleep(options.cut).await;
    report.cut.backlog_at_heal = backlog(guard, &ids).await?;
    for &other in &others {
        lab.heal(cut, other)?;
    }
    let healed = Instant::now();
    let wound_down = traffic.stop().await;
    report.cut.consents = wound_down.consents;
    wound_down.outcome?;
    report.cut.delivered_ms = drained_since(guard, healed).await?;

    // 2. Stockholm's node paused.
    report.pause.operator = PAUSED.to_owned();
    report.pause.fault_s = options.pause.as_secs_f64();
    let traffic = Traffic::start(
        "pause ",
        guard.federation()?,
        ledger,
        options.seed.wrapping_add(1),
        None,
    )?;
    tokio::time::sleep(WARM_UP).await;
    let pid = guard
        .federation()?
        .operator(PAUSED)?
        .pid
        .with_context(|| format!("{PAUSED} is not running"))?;
    let pid = Pid::from_raw(i32::try_from(pid)?);
    signal::kill(pid, Signal::SIGSTOP).context("pausing the node")?;
    tokio::time::sleep(options.pause).await;
    let backlog_paused = backlog(guard, &ids).await;
    signal::kill(pid, Signal::SIGCONT).context("continuing the node")?;
    report.pause.backlog_at_heal = backlog_paused?;
    let healed = Instant::now();
    let wound_down = traffic.stop().await;
    report.pause.consents = wound_down.consents;
    wound_down.outcome?;
    report.pause.delivered_ms = drained_since(guard, healed).await?;
    Ok(())
}

/// Messages waiting in the outboxes of the nodes that answer now.
async fn backlog(guard: &mut NodeGuard, ids: &[String]) -> anyhow::Result<u64> {
    let mut pending = 0;
    for id in ids {
        let federation = guard.federation()?;
        let status = tokio::time::timeout(Duration::from_secs(2), async {
            federation
                .admin(id)
                .await?
                .status()
                .await
                .map_err(anyhow::Error::from)
        })
        .await;
        if let Ok(Ok(status)) = status {
            pending += status.outbox_pending;
        }
    }
    Ok(pending)
}

/// Time from `healed` until every outbox is empty, if within [`DELIVERY_BOUND`].
async fn drained_since(guard: &mut NodeGuard, healed: Instant) -> anyhow::Result<Option<u64>> {
    let left = DELIVERY_BOUND.saturating_sub(healed.elapsed());
    if !guard.drain(left).await? {
        return Ok(None);
    }
    Ok(Some(
        u64::try_from(healed.elapsed().as_millis()).unwrap_or(u64::MAX),
    ))
}
