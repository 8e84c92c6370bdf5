//! `mim4-testnet crashloop`: the crash loop, in the style of sled's crash
//! tests. Each run starts a fresh federation of three real `mim4-node`
//! processes, streams memos from two senders to a receiver through the SDK,
//! SIGKILLs the receiver at moments drawn from a seeded RNG (some right after
//! a restart, while it opens its database and recovers), restarts it, drains
//! every outbox, stops the nodes and checks every store offline with
//! [`checker`]. A run is clean when nothing acknowledged was lost, nothing was
//! applied twice or unasked, and every database opened.
//!
//! Run `i` uses seed `seed + i`, so `--seed <that> --runs 1` replays its kill
//! schedule (the timing of the nodes themselves is not replayable). Every run
//! is bounded in memos, kills and time. The folders of clean runs are removed;
//! those with a violation are kept, with the node logs, and named in the summary.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::Serialize;
use tokio::task::JoinSet;

use crate::checker::{self, Ledger};
use crate::guard::{temporary_dir, NodeGuard};
use crate::{node_binary, Federation, DEFAULT_OPERATORS};

pub use crate::node_binary::BROKEN_FEATURE;
/// Operators per run: two senders and the receiver between them.
const OPERATORS: usize = 3;
/// Bounds of the options, so that a typo cannot start an endless loop.
const RUNS_MAX: usize = 10_000;
const KILLS_MAX: usize = 50;
/// Memos per sender and run, at most (about 10 s of streaming in a debug build).
const MEMOS_PER_SENDER_MAX: usize = 2_000;
/// Pause between two memos of one sender, so the receiver is killed mid-stream
/// rather than mid-backlog.
const SEND_PAUSE: Duration = Duration::from_millis(3);
/// Deadline of one `SendMessage` call; a slower call counts as unanswered.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a node may take to start.
const START_WAIT: Duration = Duration::from_secs(60);
/// How long the outboxes may take to drain after the last restart: retries
/// back off up to a minute, so this covers one full backoff and then some.
const DRAIN_WAIT: Duration = Duration::from_secs(120);
/// Acknowledged memos before the first kill, so every kill hits a live stream.
const FIRST_KILL_AFTER_ACKS: usize = 20;
/// A kill while streaming comes this long after the receiver answers (ms, range).
const STREAMING_KILL_MS: std::ops::RangeInclusive<u64> = 10..=500;
/// A kill during recovery comes this long after the process started (ms, at most).
const RECOVERY_KILL_MS_MAX: u64 = 50;
/// Share of kills (after the first) made during open and recovery; the last
/// kill of a run is one if none was before.
const RECOVERY_KILL_PROBABILITY: f64 = 0.3;
/// How long the receiver stays dead (ms, at most).
const DOWN_MS_MAX: u64 = 300;
/// Streaming after the last restart, so the recovered receiver takes new memos too.
const TAIL: Duration = Duration::from_millis(300);

/// `mim4-testnet crashloop` options.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// Number of runs.
    #[arg(long, default_value_t = 50)]
    pub runs: usize,
    /// Seed of the kill schedules (default: random; printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// SIGKILLs of the receiver per run.
    #[arg(long, default_value_t = 3)]
    pub kills: usize,
    /// Write the JSON summary to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Build the node with the test-only `broken-ack-before-flush` feature and
    /// expect lost messages: exits non-zero if the loop finds none.
    #[arg(long)]
    pub broken: bool,
    /// Keep the folder of every run (default: only runs with a violation).
    #[arg(long)]
    pub keep: bool,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Number of runs.
    pub runs: usize,
    /// Seed of the first run's kill schedule.
    pub seed: u64,
    /// Kills per run.
    pub kills: usize,
    /// Folder for the runs' federations (a temporary one when `None`).
    pub dir: Option<PathBuf>,
    /// The `mim4-node` binary (see [`node_binary::find`]).
    pub node_bin: Option<PathBuf>,
    /// Run `mim4-node-broken`, which acknowledges before flushing (see
    /// [`node_binary::find_broken`]), instead of the node.
    pub broken_node: bool,
    /// Keep every run's folder.
    pub keep: bool,
}

/// One SIGKILL.
#[derive(Clone, Debug, Serialize)]
pub struct Kill {
    /// When, in ms since the first kill's wait began.
    pub at_ms: u64,
    /// `streaming` (the receiver was answering) or `recovering` (it had just been started).
    pub phase: &'static str,
    /// How long it stayed dead, in ms.
    pub down_ms: u64,
}

/// One run.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// Index from 0.
    pub run: usize,
    /// Seed of its kill schedule.
    pub seed: u64,
    /// The kills.
    pub kills: Vec<Kill>,
    /// Whether the run got through its kills and drain (else only the
    /// databases of its check count: memos may still sit in outboxes).
    pub completed: bool,
    /// The offline check (absent when even that failed).
    pub check: Option<checker::Report>,
    /// Violated invariants, and the error if the run failed.
    pub violations: Vec<String>,
    /// Time to start the three nodes, in ms.
    pub start_ms: u64,
    /// From the first memo to the end of the stream, in ms.
    pub stream_ms: u64,
    /// Time for the outboxes to drain, in ms.
    pub drain_ms: u64,
    /// Whether they drained before the deadline.
    pub drained: bool,
    /// Time of the offline check, in ms.
    pub check_ms: u64,
    /// The whole run, in ms.
    pub elapsed_ms: u64,
    /// Node processes still alive after the run (must be none).
    pub nodes_left: Vec<u32>,
    /// The run's folder, if kept.
    pub dir: Option<PathBuf>,
}

/// Sums over all runs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Totals {
    /// Memos attempted.
    pub attempted: usize,
    /// Memos acknowledged.
    pub acknowledged: usize,
    /// Memos applied.
    pub applied: usize,
    /// Memos without an answer.
    pub unknown: usize,
    /// Acknowledged, never applied.
    pub lost: usize,
    /// Applied more than once.
    pub duplicated: usize,
    /// Applied, never attempted.
    pub unexpected: usize,
    /// Stores that opened.
    pub databases_opened: usize,
    /// Stores that did not.
    pub databases_failed: usize,
    /// SIGKILLs.
    pub kills: usize,
    /// Of which right after a restart.
    pub kills_recovering: usize,
    /// Runs with any violation (or error).
    pub runs_with_violations: usize,
    /// Runs that lost an acknowledged memo.
    pub runs_with_loss: usize,
    /// Runs that failed before their check.
    pub runs_failed: usize,
    /// Node processes left alive.
    pub nodes_left: usize,
}

/// The JSON summary.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Seed of run 0 (run `i` uses `seed + i`).
    pub seed: u64,
    /// Runs made.
    pub runs: usize,
    /// Kills per run.
    pub kills_per_run: usize,
    /// The node binary.
    pub node_bin: PathBuf,
    /// Whether it was the broken node, which acknowledges before flushing.
    pub broken_node: bool,
    /// Sums.
    pub totals: Totals,
    /// Whole loop, in seconds.
    pub elapsed_s: f64,
    /// Mean run, in seconds.
    pub run_s_mean: f64,
    /// Longest run, in seconds.
    pub run_s_max: f64,
    /// Where the runs' folders went.
    pub dir: PathBuf,
    /// Every run.
    pub run_reports: Vec<RunReport>,
}

impl Summary {
    /// Whether every run was clean.
    pub fn is_clean(&self) -> bool {
        self.totals.runs_with_violations == 0
    }
}

/// The `crashloop` subcommand: runs the loop, prints one line per run and the
/// totals, writes the JSON summary, and fails unless the verdict holds (no
/// violation; with `--broken`, at least one lost message).
pub async fn command(
    args: &Args,
    dir: Option<PathBuf>,
    node_bin: Option<PathBuf>,
) -> anyhow::Result<()> {
    let options = Options {
        runs: args.runs,
        seed: args.seed.unwrap_or_else(rand::random),
        kills: args.kills,
        dir,
        node_bin,
        broken_node: args.broken,
        keep: args.keep,
    };
    let summary = tokio::select! {
        summary = run(&options, |r| eprintln!("{}", run_line(r, options.runs))) => summary?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted; every node this loop started was stopped"),
    };
    let t = &summary.totals;
    println!(
        "crash loop: {} run(s), seed {}, {} kills ({} during recovery): attempted {}, acknowledged {}, \
         applied {}, unknown {}, lost {}, duplicated {}, unexpected {}, databases opened {}/{}, \
         nodes left {}; {:.1} s (run mean {:.1} s, max {:.1} s)",
        summary.runs,
        summary.seed,
        t.kills,
        t.kills_recovering,
        t.attempted,
        t.acknowledged,
        t.applied,
        t.unknown,
        t.lost,
        t.duplicated,
        t.unexpected,
        t.databases_opened,
        t.databases_opened + t.databases_failed,
        t.nodes_left,
        summary.elapsed_s,
        summary.run_s_mean,
        summary.run_s_max,
    );
    if let Some(path) = &args.json {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(path, serde_json::to_vec_pretty(&summary)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("summary written to {}", path.display());
    }
    if args.broken {
        if t.lost == 0 {
            bail!(
                "the crash loop did not catch the broken node ({BROKEN_FEATURE}): no acknowledged memo was lost"
            );
        }
        println!(
            "the crash loop caught the broken node ({BROKEN_FEATURE}): {} acknowledged memo(s) lost in {} of {} run(s)",
            t.lost, t.runs_with_loss, summary.runs
        );
        return Ok(());
    }
    if !summary.is_clean() {
        bail!(
            "{} of {} run(s) violated an invariant; their folders are kept under {}",
            t.runs_with_violations,
            summary.runs,
            summary.dir.display()
        );
    }
    Ok(())
}

fn run_line(r: &RunReport, runs: usize) -> String {
    let recovering = r.kills.iter().filter(|k| k.phase == "recovering").count();
    let figures = r.check.as_ref().map_or_else(
        || "no check".to_owned(),
        |c| {
            format!(
                "acknowledged {}, applied {}, lost {}, duplicated {}, unexpected {}, databases {}/{}",
                c.acknowledged,
                c.applied,
                c.lost,
                c.duplicated,
                c.unexpected,
                c.databases_opened,
                c.databases_opened + c.databases_failed.len()
            )
        },
    );
    let verdict = if r.violations.is_empty() {
        "ok".to_owned()
    } else {
        format!("VIOLATION: {}", r.violations.join("; "))
    };
    format!(
        "run {}/{runs} seed {}: {} kills ({recovering} recovering), {figures}; {:.1} s; {verdict}",
        r.run + 1,
        r.seed,
        r.kills.len(),
        r.elapsed_ms as f64 / 1_000.0,
    )
}

/// Runs the loop; `on_run` sees each run's report as it ends. A run that
/// fails (a node that does not start again, say) is reported as a violation
/// and the loop goes on; only set-up errors end it.
pub async fn run(options: &Options, mut on_run: impl FnMut(&RunReport)) -> anyhow::Result<Summary> {
    if !(1..=RUNS_MAX).contains(&options.runs) {
        bail!("--runs must be between 1 and {RUNS_MAX}");
    }
    if !(1..=KILLS_MAX).contains(&options.kills) {
        bail!("--kills must be between 1 and {KILLS_MAX}");
    }
    let node_bin = match (options.broken_node, &options.node_bin) {
        (true, Some(_)) => bail!("a node binary and the broken node exclude each other"),
        (true, None) => node_binary::find_broken()?,
        (false, explicit) => node_binary::find(explicit.as_deref())?,
    };
    let (dir, temporary) = match &options.dir {
        Some(dir) => (dir.clone(), false),
        None => (temporary_dir("mim4-crashloop"), true),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let started = Instant::now();
    let mut reports = Vec::with_capacity(options.runs);
    let mut totals = Totals::default();
    for run in 0..options.runs {
        let seed = options.seed.wrapping_add(run as u64);
        let run_dir = dir.join(format!("run-{run:04}"));
        let report = run_once(run, seed, &run_dir, &node_bin, options).await;
        add(&mut totals, &report);
        on_run(&report);
        reports.push(report);
    }
    if temporary && totals.runs_with_violations == 0 && !options.keep {
        // Only the (now empty) folder is left.
        let _ = std::fs::remove_dir(&dir);
    }
    let run_s: Vec<f64> = reports
        .iter()
        .map(|r| r.elapsed_ms as f64 / 1_000.0)
        .collect();
    Ok(Summary {
        seed: options.seed,
        runs: options.runs,
        kills_per_run: options.kills,
        node_bin,
        broken_node: options.broken_node,
        totals,
        elapsed_s: started.elapsed().as_secs_f64(),
        run_s_mean: run_s.iter().sum::<f64>() / run_s.len().max(1) as f64,
        run_s_max: run_s.iter().copied().fold(0.0, f64::max),
        dir,
        run_reports: reports,
    })
}

fn add(totals: &mut Totals, report: &RunReport) {
    totals.kills += report.kills.len();
    totals.kills_recovering += report
        .kills
        .iter()
        .filter(|k| k.phase == "recovering")
        .count();
    totals.nodes_left += report.nodes_left.len();
    totals.runs_with_violations += usize::from(!report.violations.is_empty());
    totals.runs_failed += usize::from(!report.completed);
    let Some(c) = &report.check else {
        return;
    };
    totals.databases_opened += c.databases_opened;
    totals.databases_failed += c.databases_failed.len();
    if !report.completed {
        return;
    }
    totals.attempted += c.attempted;
    totals.acknowledged += c.acknowledged;
    totals.applied += c.applied;
    totals.unknown += c.unknown;
    totals.lost += c.lost;
    totals.duplicated += c.duplicated;
    totals.unexpected += c.unexpected;
    totals.runs_with_loss += usize::from(c.lost > 0);
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One run, start to offline check; errors become a violation of the report.
async fn run_once(
    run: usize,
    seed: u64,
    dir: &std::path::Path,
    node_bin: &std::path::Path,
    options: &Options,
) -> RunReport {
    let started = Instant::now();
    let mut report = RunReport {
        run,
        seed,
        kills: Vec::new(),
        completed: false,
        check: None,
        violations: Vec::new(),
        start_ms: 0,
        stream_ms: 0,
        drain_ms: 0,
        drained: false,
        check_ms: 0,
        elapsed_ms: 0,
        nodes_left: Vec::new(),
        dir: None,
    };
    let mut pids = Vec::new();
    if let Err(e) = crash(run, seed, dir, node_bin, options, &mut report, &mut pids).await {
        report.violations.push(format!("run failed: {e:#}"));
    }
    report.nodes_left = checker::live_nodes(&pids);
    if !report.nodes_left.is_empty() {
        report.violations.push(format!(
            "node process(es) left running: {:?}",
            report.nodes_left
        ));
    }
    if report.violations.is_empty() && !options.keep {
        if let Err(e) = std::fs::remove_dir_all(dir) {
            report
                .violations
                .push(format!("removing {}: {e}", dir.display()));
        }
    }
    if dir.exists() {
        report.dir = Some(dir.to_owned());
    }
    report.elapsed_ms = ms(started.elapsed());
    report
}

async fn crash(
    run: usize,
    seed: u64,
    dir: &std::path::Path,
    node_bin: &std::path::Path,
    options: &Options,
    report: &mut RunReport,
    pids: &mut Vec<u32>,
) -> anyhow::Result<()> {
    let federation = Federation::create(dir, &DEFAULT_OPERATORS[..OPERATORS], node_bin.to_owned())?;
    let mut guard = NodeGuard::new(federation, "crashloop");
    let ledger = Arc::new(Mutex::new(Ledger::with_prefix(&format!("crash {run} "))));
    let outcome = stream_and_kill(seed, options, &mut guard, report, &ledger).await;
    // Stop the nodes on every way out; the check needs them stopped.
    pids.extend_from_slice(&guard.pids);
    let federation = guard.stop()?;
    let ledger = ledger
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let checked = Instant::now();
    let check = checker::check(&federation, &ledger)?;
    report.check_ms = ms(checked.elapsed());
    match outcome {
        Ok(()) => {
            report.completed = true;
            report.violations.extend(check.violations());
        }
        Err(e) => {
            // Without the drain only the databases can be judged.
            report.violations.push(format!("run failed: {e:#}"));
            report.violations.extend(
                check
                    .databases_failed
                    .iter()
                    .map(|d| format!("database does not open: {d}")),
            );
        }
    }
    report.check = Some(check);
    Ok(())
}

/// Starts the nodes, streams, kills and restarts the receiver, drains;
/// `ledger` records what the senders were told.
async fn stream_and_kill(
    seed: u64,
    options: &Options,
    guard: &mut NodeGuard,
    report: &mut RunReport,
    ledger: &Arc<Mutex<Ledger>>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    guard.start_all_ready(START_WAIT).await?;
    report.start_ms = ms(started.elapsed());
    let ids = guard.ids()?;
    let receiver = ids[1].clone();
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = JoinSet::new();
    let streaming = Instant::now();
    for from in [&ids[0], &ids[2]] {
        let client = guard.federation()?.admin(from).await?;
        senders.spawn(stream(
            client,
            from.clone(),
            receiver.clone(),
            ledger.clone(),
            stop.clone(),
        ));
    }
    let kills = kill_receiver(
        seed,
        options.kills,
        &receiver,
        ledger,
        guard,
        &mut report.kills,
    )
    .await;
    // Stop the senders whatever happened, then report a failed schedule.
    stop.store(true, Ordering::Relaxed);
    while let Some(joined) = senders.join_next().await {
        joined.context("a sender task failed")?;
    }
    kills?;
    report.stream_ms = ms(streaming.elapsed());
    let draining = Instant::now();
    report.drained = guard.drain(DRAIN_WAIT).await?;
    report.drain_ms = ms(draining.elapsed());
    Ok(())
}

/// Streams memos `from` → `to` until `stop` (or [`MEMOS_PER_SENDER_MAX`]).
/// A memo is attempted before the call and acknowledged when it returns OK.
async fn stream(
    client: mim4_sdk::Client,
    from: String,
    to: String,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) {
    let prefix = ledger
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .memo_prefix
        .clone();
    for n in 0..MEMOS_PER_SENDER_MAX {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let text = format!("{prefix}{from}->{to} #{n}");
        ledger
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .attempt(&text);
        let sent =
            tokio::time::timeout(CALL_TIMEOUT, client.send_message(&to, "crash loop", &text));
        if let Ok(Ok(_)) = sent.await {
            ledger
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .acknowledge(&text);
        }
        tokio::time::sleep(SEND_PAUSE).await;
    }
}

/// The kill schedule: waits for the stream, then `kills` times: wait (for the
/// receiver to answer, or only a few ms after a restart), SIGKILL, stay dead,
/// restart; each kill goes into `done` as it happens. Ends with the receiver
/// answering and a short tail of streaming.
async fn kill_receiver(
    seed: u64,
    kills: usize,
    receiver: &str,
    ledger: &Mutex<Ledger>,
    guard: &mut NodeGuard,
    done: &mut Vec<Kill>,
) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let deadline = tokio::time::Instant::now() + START_WAIT;
    while ledger
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .acknowledged
        .len()
        < FIRST_KILL_AFTER_ACKS
    {
        if tokio::time::Instant::now() >= deadline {
            bail!("the stream did not start within {} s", START_WAIT.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let schedule = Instant::now();
    for k in 0..kills {
        // Every run with two kills or more has at least one during recovery.
        let none_yet = done.iter().all(|kill: &Kill| kill.phase != "recovering");
        let recovering =
            k > 0 && (rng.gen_bool(RECOVERY_KILL_PROBABILITY) || (k + 1 == kills && none_yet));
        if recovering {
            sleep_ms(rng.gen_range(0..=RECOVERY_KILL_MS_MAX)).await;
        } else {
            guard.federation()?.wait_ready(receiver, START_WAIT).await?;
            sleep_ms(rng.gen_range(STREAMING_KILL_MS)).await;
        }
        let at_ms = ms(schedule.elapsed());
        if !guard.federation()?.kill(receiver)? {
            bail!("{receiver} was not running when it was to be killed (kill {k})");
        }
        let down_ms = rng.gen_range(0..=DOWN_MS_MAX);
        sleep_ms(down_ms).await;
        guard.start(receiver)?;
        done.push(Kill {
            at_ms,
            phase: if recovering {
                "recovering"
            } else {
                "streaming"
            },
            down_ms,
        });
    }
    guard.federation()?.wait_ready(receiver, START_WAIT).await?;
    tokio::time::sleep(TAIL).await;
    Ok(())
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}
