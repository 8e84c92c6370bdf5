//! `mim4-testnet chaos`: traffic under random crashes, checked offline.
//!
//! For a bounded time, every operator sends memos to random others through
//! the SDK, and a consent cycle runs over and over (a service asks, the
//! citizen grants at the home, then withdraws), while SIGKILLs hit random
//! nodes at random moments drawn from a seeded RNG, some right after a
//! restart (during open and recovery). Then every node is started, the
//! outboxes drain, the nodes stop, and [`checker`] reads every store: no
//! acknowledged memo lost, none applied twice or unasked, every stored consent
//! log valid, every acknowledged withdrawal recorded at the home and every
//! withdrawal delivered to every party.
//!
//! This module holds the fault schedules and the run around them; the
//! traffic itself (memos, consent cycles, a looped scenario) is the
//! `traffic` module's, which the [`partition`](crate::partition) suite runs too.
//!
//! Where the machine allows it (root, iproute2, network namespaces), a new
//! federation runs in a private network of namespaces ([`netns::Lab`](crate::netns::Lab)) and,
//! beside the kills, a second seeded schedule partitions operators: a pair
//! cut off from each other, or one operator cut off from everyone (the tool
//! included), for a few seconds at a time; everything is healed before the
//! drain. Otherwise, or on an existing testnet, the report says why
//! partitions were not injected. Every node the run started is stopped, and
//! every namespace deleted, on every way out (an error, a panic, Ctrl-C).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::Serialize;

use crate::checker::{self, Ledger};
use crate::guard::{temporary_dir, NodeGuard};
use crate::netns::Lab;
use crate::traffic::{self, Traffic, HOME, SOURCE};
pub use crate::traffic::{ConsentTraffic, ScenarioRuns};
use crate::{bench, node_binary, Federation, Placement, DEFAULT_OPERATORS};

/// Longest run the options accept.
const DURATION_MAX: Duration = Duration::from_secs(3_600);
/// At most this many kills per run, whatever the duration.
const KILLS_MAX: usize = 10_000;
/// Pause between two faults (ms, range).
const FAULT_PAUSE_MS: std::ops::RangeInclusive<u64> = 200..=1_500;
/// How long a killed node stays dead (ms, at most).
const DOWN_MS_MAX: u64 = 800;
/// Share of kills followed by a second kill during open and recovery.
const RECOVERY_KILL_PROBABILITY: f64 = 0.25;
/// That second kill comes this long after the restart (ms, at most).
const RECOVERY_KILL_MS_MAX: u64 = 50;
/// How long a node may take to start.
const START_WAIT: Duration = Duration::from_secs(60);
/// How long the outboxes may take to drain (retries back off up to a minute).
const DRAIN_WAIT: Duration = Duration::from_secs(120);
/// Pause between two partitions (ms, range).
const PARTITION_PAUSE_MS: std::ops::RangeInclusive<u64> = 300..=2_000;
/// How long a partition lasts (ms, range).
const PARTITION_MS: std::ops::RangeInclusive<u64> = 500..=5_000;
/// Share of partitions that cut one operator off from everyone (the others cut a pair).
const ISOLATION_PROBABILITY: f64 = 0.3;

/// `mim4-testnet chaos` options.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// How long to inject faults (e.g. 60s, 2m); draining and checking come after.
    #[arg(long, default_value = "60s", value_parser = bench::parse_duration)]
    pub duration: Duration,
    /// Seed of the fault schedule (default: random; printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Operators of a new federation (2 to 8; consents need 3 for a third-party consumer).
    #[arg(long, default_value_t = 3)]
    pub operators: usize,
    /// The report as JSON: on stdout (`--json`), or into FILE (`--json FILE`,
    /// with the figures printed as text too).
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
    pub json: Option<PathBuf>,
    /// Kills only: no network namespaces, no partitions.
    #[arg(long)]
    pub no_partitions: bool,
    /// A scenario (built-in name or file) run over and over during the
    /// faults, beside the memos and consent cycles; `none` for none.
    #[arg(long, default_value = "daycare")]
    pub scenario: String,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// How long to inject faults.
    pub duration: Duration,
    /// Seed of the fault schedule.
    pub seed: u64,
    /// Operators of a new federation.
    pub operators: usize,
    /// The federation's folder: an existing testnet is used (and its nodes
    /// started again afterwards if they were running), else one is created.
    /// `None`: a new temporary one, removed after a clean run.
    pub dir: Option<PathBuf>,
    /// The `mim4-node` binary (see [`node_binary::find`]).
    pub node_bin: Option<PathBuf>,
    /// Partition operators where the machine allows it (a new federation only).
    pub partitions: bool,
    /// A scenario looped during the faults (skipped if the federation lacks its operators).
    pub scenario: Option<crate::scenario::Scenario>,
}

/// Partition figures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Partitions {
    /// Whether partitions were injected.
    pub injected: bool,
    /// How (or why not).
    pub note: String,
    /// Pairs cut off from each other.
    pub cuts: usize,
    /// Operators cut off from everyone.
    pub isolations: usize,
    /// Sum of the partitions' durations, in ms.
    pub partitioned_ms: u64,
}

/// The result of a run.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Seed of the fault schedule.
    pub seed: u64,
    /// Faults were injected for this long, in seconds.
    pub duration_s: f64,
    /// The operators.
    pub operators: Vec<String>,
    /// SIGKILLs.
    pub kills: usize,
    /// Of which during open and recovery (right after a restart).
    pub kills_recovering: usize,
    /// Kills per operator.
    pub kills_by_operator: BTreeMap<String, usize>,
    /// Partitions.
    pub partitions: Partitions,
    /// The consumer service of the consent traffic (none without Helsinki and the income register).
    pub consent_consumer: Option<String>,
    /// Consent traffic.
    pub consent_traffic: ConsentTraffic,
    /// The looped scenario.
    pub scenario_runs: ScenarioRuns,
    /// Whether the outboxes drained before the deadline.
    pub drained: bool,
    /// Time to drain, in ms.
    pub drain_ms: u64,
    /// The check, the violations, the processes and the folder (nodes of a
    /// federation that was running before are started again, and not counted).
    #[serde(flatten)]
    pub verdict: checker::Verdict,
}

impl Report {
    /// The report of a run on `federation` before anything happened;
    /// `injected` says whether partitions will be, and `no_lab` why not.
    fn new(options: &Options, federation: &Federation, injected: bool, no_lab: String) -> Self {
        Self {
            seed: options.seed,
            duration_s: options.duration.as_secs_f64(),
            operators: federation
                .operators()
                .iter()
                .map(|o| o.id.clone())
                .collect(),
            kills: 0,
            kills_recovering: 0,
            kills_by_operator: BTreeMap::new(),
            partitions: Partitions {
                injected,
                note: if injected {
                    "each node in its own network namespace, bridged; \
                     cuts are blackhole routes, isolations a port down"
                        .to_owned()
                } else {
                    no_lab
                },
                ..Partitions::default()
            },
            consent_consumer: None,
            consent_traffic: ConsentTraffic::default(),
            scenario_runs: ScenarioRuns::default(),
            drained: false,
            drain_ms: 0,
            verdict: checker::Verdict::new(federation.dir().to_owned()),
        }
    }

    /// Whether every invariant held.
    pub fn is_clean(&self) -> bool {
        self.verdict.is_clean()
    }

    /// Prints the figures.
    pub fn print(&self) {
        println!(
            "chaos: seed {}, {:.0} s of faults on {} operators ({})",
            self.seed,
            self.duration_s,
            self.operators.len(),
            self.operators.join(", ")
        );
        let by: Vec<String> = self
            .kills_by_operator
            .iter()
            .map(|(op, n)| format!("{op} {n}"))
            .collect();
        println!(
            "  kills: {} ({} during recovery): {}",
            self.kills,
            self.kills_recovering,
            by.join(", ")
        );
        let p = &self.partitions;
        if p.injected {
            println!(
                "  partitions: {} pair cuts, {} isolations, {:.1} s partitioned ({})",
                p.cuts,
                p.isolations,
                p.partitioned_ms as f64 / 1_000.0,
                p.note
            );
        } else {
            println!("  partitions: not injected ({})", p.note);
        }
        let c = &self.consent_traffic;
        match &self.consent_consumer {
            Some(consumer) => println!(
                "  consents for {consumer}: requested {}, granted {}, withdrawals acknowledged {} \
                 (+{} took effect unacknowledged), abandoned {}",
                c.requested,
                c.granted,
                c.withdrawals_acknowledged,
                c.withdrawals_unacknowledged,
                c.abandoned,
            ),
            None => println!("  consents: no traffic (needs {HOME} and {SOURCE})"),
        }
        let r = &self.scenario_runs;
        if let Some(name) = &r.scenario {
            println!(
                "  scenario \"{name}\" looped: {} passed, {} failed under faults, {} interrupted at the end",
                r.passed, r.failed, r.interrupted
            );
            if let Some(failure) = &r.last_failure {
                println!("    latest failure: {failure}");
            }
        }
        println!(
            "  drain: {} in {:.1} s",
            if self.drained {
                "complete"
            } else {
                "INCOMPLETE"
            },
            self.drain_ms as f64 / 1_000.0
        );
        self.verdict.print();
    }
}

/// The `chaos` subcommand. `dir` is the testnet folder and `dir_given` whether
/// it was named: a named folder, or the default one while its nodes run, is
/// used; otherwise a temporary federation is made. Fails on a violation.
pub async fn command(
    args: &Args,
    dir: &Path,
    dir_given: bool,
    node_bin: Option<PathBuf>,
) -> anyhow::Result<()> {
    let running_here = Federation::open(dir)
        .ok()
        .flatten()
        .is_some_and(|f| f.operators().iter().any(|o| f.is_running(&o.id)));
    let options = Options {
        duration: args.duration,
        seed: args.seed.unwrap_or_else(rand::random),
        operators: args.operators,
        dir: (dir_given || running_here).then(|| dir.to_owned()),
        node_bin,
        partitions: !args.no_partitions,
        scenario: match args.scenario.as_str() {
            "none" => None,
            name => Some(crate::scenario::Scenario::load(name)?),
        },
    };
    let report = run(&options).await?;
    emit(&report, args.json.as_deref(), Report::print)?;
    if !report.is_clean() {
        bail!(
            "chaos found {} violation(s)",
            report.verdict.violations.len()
        );
    }
    Ok(())
}

/// Shows a suite's report: as JSON on stdout (`json` is `-`), printed and
/// written as JSON into the file `json`, or printed.
pub(crate) fn emit<R: Serialize>(
    report: &R,
    json: Option<&Path>,
    print: impl Fn(&R),
) -> anyhow::Result<()> {
    match json {
        Some(path) if path.as_os_str() == "-" => {
            println!("{}", serde_json::to_string_pretty(report)?);
        }
        Some(path) => {
            print(report);
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            std::fs::write(path, serde_json::to_vec_pretty(report)?)
                .with_context(|| format!("writing {}", path.display()))?;
            println!("report written to {}", path.display());
        }
        None => print(report),
    }
    Ok(())
}

/// Runs chaos and returns the report (violations are in it, not errors).
/// Errors are set-up failures. Ctrl-C stops the nodes and returns an error.
///
/// With partitions, the run happens on a thread (and runtime) inside the
/// lab's hub namespace, so that the tool reaches every node.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    if options.duration.is_zero() || options.duration > DURATION_MAX {
        bail!(
            "--duration must be above zero and at most {} s",
            DURATION_MAX.as_secs()
        );
    }
    if !(2..=DEFAULT_OPERATORS.len()).contains(&options.operators) {
        bail!(
            "--operators must be between 2 and {}",
            DEFAULT_OPERATORS.len()
        );
    }
    let existing = match &options.dir {
        Some(dir) => Federation::open(dir)?.is_some(),
        None => false,
    };
    let lab = match (options.partitions, existing) {
        (false, _) => Err("--no-partitions".to_owned()),
        (true, true) => Err("an existing testnet runs in the host's network namespace".to_owned()),
        (true, false) => {
            Lab::available().map_err(|why| format!("network namespaces unavailable here: {why}"))
        }
    };
    let lab = match lab {
        Ok(()) => Arc::new(Lab::create(options.operators)?),
        Err(why) => return run_with(options, None, why).await,
    };
    let options = options.clone();
    lab.in_hub(move |lab| async move { run_with(&options, Some(lab), String::new()).await })
        .await
}

/// [`run`], in a lab (with partitions) or not (`no_lab` says why).
async fn run_with(
    options: &Options,
    lab: Option<Arc<Lab>>,
    no_lab: String,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let (federation, was_running, temporary) = open_federation(options, lab.as_deref())?;
    eprintln!(
        "chaos: {} operators in {}, faults for {:.0} s, seed {}",
        federation.operators().len(),
        federation.dir().display(),
        options.duration.as_secs_f64(),
        options.seed
    );
    let mut report = Report::new(options, &federation, lab.is_some(), no_lab);
    let mut guard = NodeGuard::new(federation, "chaos");
    let ledger = traffic::new_ledger("chaos");
    let outcome = tokio::select! {
        outcome = inject(options, lab.as_deref(), &mut guard, &mut report, &ledger) => Some(outcome),
        _ = tokio::signal::ctrl_c() => None,
    };
    // Stop the nodes before checking (and on every way out).
    let federation = report.verdict.stop_and_check(guard, outcome, &ledger)?;
    // It was running before: leave it running.
    if let Some(mut federation) = federation {
        start_again(&mut federation, &was_running).await;
    }
    report.verdict.finish(temporary, started)?;
    Ok(report)
}

/// The federation to run on: the one in `options.dir` if there is one (with
/// the operators that were running in it), else a new one there or in a
/// temporary folder (`true` in the third place), placed in `lab` if given.
fn open_federation(
    options: &Options,
    lab: Option<&Lab>,
) -> anyhow::Result<(Federation, Vec<String>, bool)> {
    let node_bin = node_binary::find(options.node_bin.as_deref())?;
    let (dir, temporary) = match &options.dir {
        Some(dir) => (dir.clone(), false),
        None => (temporary_dir("mim4-chaos"), true),
    };
    let (federation, was_running) = match Federation::open(&dir)? {
        Some(mut existing) => {
            let running: Vec<String> = existing
                .operators()
                .iter()
                .filter(|o| existing.is_running(&o.id))
                .map(|o| o.id.clone())
                .collect();
            if existing.node_bin() != node_bin {
                existing.set_node_bin(node_bin)?;
            }
            (existing, running)
        }
        None => {
            let specs = &DEFAULT_OPERATORS[..options.operators];
            let federation = match lab {
                Some(lab) => {
                    let placement: Vec<Placement> =
                        (0..specs.len()).map(|i| lab.placement(i)).collect();
                    Federation::create_placed(&dir, specs, &placement, node_bin)?
                }
                None => Federation::create(&dir, specs, node_bin)?,
            };
            (federation, Vec::new())
        }
    };
    if federation.operators().len() < 2 {
        bail!("chaos needs at least 2 operators");
    }
    Ok((federation, was_running, temporary))
}

/// Starts the operators of a federation that was running before the run
/// again; a failure is printed, not returned, since the run's verdict stands.
async fn start_again(federation: &mut Federation, was_running: &[String]) {
    for id in was_running {
        let started = match federation.start(id) {
            Ok(_) => federation.wait_ready(id, START_WAIT).await,
            Err(e) => Err(e),
        };
        if let Err(e) = started {
            eprintln!("chaos: could not start {id} again: {e:#}");
        }
    }
}

/// Starts the nodes and the traffic, injects faults until the duration has
/// passed, winds the traffic down, restarts every node and drains; `ledger`
/// records what the clients were told.
async fn inject(
    options: &Options,
    lab: Option<&Lab>,
    guard: &mut NodeGuard,
    report: &mut Report,
    ledger: &Arc<Mutex<Ledger>>,
) -> anyhow::Result<()> {
    guard.start_all_ready(START_WAIT).await?;
    let ids = guard.ids()?;
    let traffic = Traffic::start(
        "",
        guard.federation()?,
        ledger,
        options.seed,
        options.scenario.as_ref(),
    )?;
    report.consent_consumer = traffic.consumer.clone();
    let (faults, partitions) = tokio::join!(
        faults(options, &ids, guard, report),
        partitions(options, lab),
    );
    let partitions = partitions?;
    report.partitions.cuts = partitions.cuts;
    report.partitions.isolations = partitions.isolations;
    report.partitions.partitioned_ms = partitions.partitioned_ms;
    let wound_down = traffic.stop().await;
    report.consent_traffic = wound_down.consents;
    report.scenario_runs = wound_down.scenario_runs;
    faults?;
    wound_down.outcome?;

    guard.start_all_ready(START_WAIT).await?;
    let draining = Instant::now();
    report.drained = guard.drain(DRAIN_WAIT).await?;
    report.drain_ms = u64::try_from(draining.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(())
}

/// The fault schedule: until the duration has passed, pause, SIGKILL a
/// random node, keep it dead a while, restart it, and now and then kill it
/// again right after the restart.
async fn faults(
    options: &Options,
    ids: &[String],
    guard: &mut NodeGuard,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(options.seed);
    let deadline = tokio::time::Instant::now() + options.duration;
    while report.kills < KILLS_MAX {
        let pause = Duration::from_millis(rng.gen_range(FAULT_PAUSE_MS));
        let now = tokio::time::Instant::now();
        if now + pause >= deadline {
            tokio::time::sleep_until(deadline).await;
            break;
        }
        tokio::time::sleep(pause).await;
        let victim = &ids[rng.gen_range(0..ids.len())];
        let second = rng.gen_bool(RECOVERY_KILL_PROBABILITY);
        for recovering in [false, true] {
            if recovering {
                if !second {
                    break;
                }
                sleep_ms(rng.gen_range(0..=RECOVERY_KILL_MS_MAX)).await;
            }
            // A node that died by itself shows up when it is started again.
            if guard.federation()?.kill(victim)? {
                report.kills += 1;
                report.kills_recovering += usize::from(recovering);
                *report.kills_by_operator.entry(victim.clone()).or_default() += 1;
            }
            sleep_ms(rng.gen_range(0..=DOWN_MS_MAX)).await;
            guard.start(victim)?;
        }
    }
    Ok(())
}

/// The partition schedule (with a lab): until the duration has passed,
/// pause, then cut a random pair off from each other or one operator off
/// from everyone, for a while, and heal. Everything is healed when it returns.
async fn partitions(options: &Options, lab: Option<&Lab>) -> anyhow::Result<Partitions> {
    let mut figures = Partitions::default();
    let Some(lab) = lab.filter(|lab| lab.len() >= 2) else {
        return Ok(figures);
    };
    let mut rng = StdRng::seed_from_u64(options.seed ^ 0x9a27_11e5);
    let deadline = tokio::time::Instant::now() + options.duration;
    loop {
        sleep_ms(rng.gen_range(PARTITION_PAUSE_MS)).await;
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(figures);
        }
        let hold = Duration::from_millis(rng.gen_range(PARTITION_MS)).min(deadline - now);
        let a = rng.gen_range(0..lab.len());
        if rng.gen_bool(ISOLATION_PROBABILITY) {
            lab.isolate(a)?;
            tokio::time::sleep(hold).await;
            lab.rejoin(a)?;
            figures.isolations += 1;
        } else {
            let b = (a + rng.gen_range(1..lab.len())) % lab.len();
            lab.cut(a, b)?;
            tokio::time::sleep(hold).await;
            lab.heal(a, b)?;
            figures.cuts += 1;
        }
        figures.partitioned_ms += u64::try_from(hold.as_millis()).unwrap_or(u64::MAX);
    }
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}
