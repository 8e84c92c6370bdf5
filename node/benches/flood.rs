//! The **Flood** figure: latency of a well-behaved peer (B) delivering memos
//! to a node, alone and while another peer (A) floods the same node, with the
//! per-peer rate limit effectively off and on. Reported, never asserted.
//!
//! A single pair of phases gives a noisy ratio on a shared 2-core machine, so
//! the pair "B alone", "B + A limited" runs [`ROUNDS`] times, interleaved,
//! and each round's ratio of B's p99 is reported with their median; one phase
//! with no per-peer limit shows what the limit prevents. The summary (counts,
//! p50/p99 per phase, ratios, build profile, timings) goes to
//! `$CARGO_TARGET_DIR/reliability/flood.json` (`target/` by default).
//!
//! Run: `cargo bench -p mim4-node --bench flood` or `scripts/flood.sh`
//! (in-process nodes on loopback over TLS, real sled; about 5 s per phase).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[allow(dead_code)]
#[path = "../tests/node/util.rs"]
mod util;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mim4_node::core::keys::SecretKey;
use mim4_node::rate_limit::Rate;
use mim4_proto::v1 as pb;
use tokio::task::JoinSet;
use util::TestNet;

/// Rounds of ("B alone", "B + A limited"), interleaved so that a slow moment
/// of the machine hits one round, not every phase of one kind.
const ROUNDS: usize = 3;
/// The target for B's p99 with A limited over B's p99 alone.
const RATIO_TARGET: f64 = 2.0;
/// B's deliveries per phase, one at a time.
const B_CALLS: usize = 400;
/// B "sends normally": one delivery every 10 ms (100/s), within the
/// per-peer quota of every phase, so B is never refused for its own rate.
const B_INTERVAL: Duration = Duration::from_millis(10);
/// The wait after the node's restart, before B's first call, in every phase.
const SETTLE: Duration = Duration::from_millis(1_500);
/// A's concurrent deliveries while flooding.
const A_CONCURRENCY: usize = 64;
/// A's rate when limited: a tenth of what the node can apply here.
const A_LIMITED: Rate = Rate {
    per_second: 200,
    burst: 200,
};
/// The limit "off": far above anything one peer can send.
const UNLIMITED: Rate = Rate {
    per_second: 1_000_000,
    burst: 1_000_000,
};

fn memo(
    from: &mim4_node::core::ids::OperatorId,
    to: &mim4_node::core::ids::OperatorId,
    key: &SecretKey,
    version: u64,
) -> Vec<u8> {
    util::sealed_memo(from, to, key, version, "flood", "")
}

struct Phase {
    name: &'static str,
    round: Option<usize>,
    p50_ms: f64,
    p99_ms: f64,
    b_errors: usize,
    a_accepted: u64,
    a_limited: u64,
    seconds: f64,
}

async fn phase(net: &mut TestNet, name: &'static str, flood: bool, rate: Rate) -> Phase {
    net.stop(0).await;
    net.configs[0].limits.peer_rate = rate;
    net.start(0).await;
    let version = net.nodes[0].as_ref().unwrap().shared.trust().version();
    let (a, b) = (1, 2);
    let (receiver, a_id, b_id) = (net.id(0), net.id(a), net.id(b));

    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let limited = Arc::new(AtomicU64::new(0));
    let mut flooders = JoinSet::new();
    if flood {
        let client = net.peer_client(a, 0);
        for _ in 0..A_CONCURRENCY {
            let (mut client, stop, accepted, limited) = (
                client.clone(),
                stop.clone(),
                accepted.clone(),
                limited.clone(),
            );
            let (a_id, receiver) = (a_id.clone(), receiver.clone());
            let key = SecretKey::from_bytes(&net.keys[a].to_bytes()[..]).unwrap();
            flooders.spawn(async move {
                // Bounded by the phase: B's calls end it.
                while !stop.load(Ordering::Relaxed) {
                    let envelope = memo(&a_id, &receiver, &key, version);
                    match client.deliver(pb::DeliverRequest { envelope }).await {
                        Ok(_) => accepted.fetch_add(1, Ordering::Relaxed),
                        Err(_) => limited.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
    }
    // Let the restarted node settle and the flood reach its pace (and spend
    // A's burst). B alone waits as long: without it the work a node does
    // after opening its store falls into B's first calls in one kind of
    // phase only, and the ratio compares different things.
    tokio::time::sleep(SETTLE).await;
    let mut b_client = net.peer_client(b, 0);
    let mut latencies = Vec::with_capacity(B_CALLS);
    let mut b_errors = 0;
    let start = Instant::now();
    let (a_before, l_before) = (
        accepted.load(Ordering::Relaxed),
        limited.load(Ordering::Relaxed),
    );
    let mut pace = tokio::time::interval(B_INTERVAL);
    for _ in 0..B_CALLS {
        pace.tick().await;
        let envelope = memo(&b_id, &receiver, &net.keys[b], version);
        let sent = Instant::now();
        if b_client
            .deliver(pb::DeliverRequest { envelope })
            .await
            .is_err()
        {
            b_errors += 1;
        }
        latencies.push(sent.elapsed().as_secs_f64() * 1e3);
    }
    let seconds = start.elapsed().as_secs_f64();
    let (a_accepted, a_limited) = (
        accepted.load(Ordering::Relaxed) - a_before,
        limited.load(Ordering::Relaxed) - l_before,
    );
    stop.store(true, Ordering::Relaxed);
    while flooders.join_next().await.is_some() {}
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Phase {
        name,
        round: None,
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        b_errors,
        a_accepted,
        a_limited,
        seconds,
    }
}

impl Phase {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "phase": self.name,
            "round": self.round,
            "b_calls": B_CALLS,
            "b_errors": self.b_errors,
            "b_p50_ms": self.p50_ms,
            "b_p99_ms": self.p99_ms,
            "a_accepted": self.a_accepted,
            "a_refused": self.a_limited,
            "a_accepted_per_second": self.a_accepted as f64 / self.seconds,
            "a_refused_per_second": self.a_limited as f64 / self.seconds,
            "seconds": self.seconds,
        })
    }

    fn print(&self) {
        let name = match self.round {
            Some(round) => format!("{} (round {round})", self.name),
            None => self.name.to_owned(),
        };
        println!(
            "  {name:<44} B p50 {:>7.2} ms  p99 {:>7.2} ms  B errors {}  A accepted {:>6.0}/s refused {:>7.0}/s",
            self.p50_ms,
            self.p99_ms,
            self.b_errors,
            self.a_accepted as f64 / self.seconds,
            self.a_limited as f64 / self.seconds,
        );
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

fn main() {
    let started = Instant::now();
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut net = TestNet::new(3);
        net.start_all().await;
        println!(
            "flood ({profile} build): B delivers {B_CALLS} memos one at a time, one per {} ms; A floods with {A_CONCURRENCY} concurrent deliveries; {ROUNDS} rounds",
            B_INTERVAL.as_millis()
        );
        let mut rounds = Vec::with_capacity(ROUNDS);
        for round in 1..=ROUNDS {
            let mut alone = phase(&mut net, "B alone", false, UNLIMITED).await;
            alone.round = Some(round);
            alone.print();
            let mut limited =
                phase(&mut net, "B + A flooding, A limited to 200/s", true, A_LIMITED).await;
            limited.round = Some(round);
            limited.print();
            rounds.push((alone, limited));
        }
        let unlimited = phase(&mut net, "B + A flooding, no per-peer limit", true, UNLIMITED).await;
        unlimited.print();
        net.shutdown().await;

        let ratios: Vec<f64> = rounds
            .iter()
            .map(|(alone, limited)| limited.p99_ms / alone.p99_ms)
            .collect();
        let ratio_median = median(&ratios);
        let alone_p99_median = median(&rounds.iter().map(|(a, _)| a.p99_ms).collect::<Vec<_>>());
        let limited_p99_median = median(&rounds.iter().map(|(_, l)| l.p99_ms).collect::<Vec<_>>());
        let unlimited_ratio = unlimited.p99_ms / alone_p99_median;
        let met = ratios.iter().filter(|r| **r <= RATIO_TARGET).count();
        let listed: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "  B p99 with A limited / B p99 alone, per round: {}; median {ratio_median:.2} (target <= {RATIO_TARGET}; met in {met} of {ROUNDS})",
            listed.join(", ")
        );
        println!(
            "  B p99 with no per-peer limit / median B p99 alone: {unlimited_ratio:.2}"
        );

        let mut phases: Vec<serde_json::Value> = Vec::new();
        for (alone, limited) in &rounds {
            phases.push(alone.json());
            phases.push(limited.json());
        }
        phases.push(unlimited.json());
        let summary = serde_json::json!({
            "suite": "flood",
            "build_profile": profile,
            "rounds": ROUNDS,
            "b_calls_per_phase": B_CALLS,
            "b_interval_ms": B_INTERVAL.as_millis() as u64,
            "a_concurrency": A_CONCURRENCY,
            "a_limited": { "per_second": A_LIMITED.per_second, "burst": A_LIMITED.burst },
            "phases": phases,
            "ratio_target": RATIO_TARGET,
            "ratios_limited_to_alone": ratios,
            "ratio_median": ratio_median,
            "rounds_meeting_target": met,
            "b_p99_ms_alone_median": alone_p99_median,
            "b_p99_ms_limited_median": limited_p99_median,
            "ratio_unlimited_to_alone_median": unlimited_ratio,
            "seconds": started.elapsed().as_secs_f64(),
        });
        let path = util::reliability_dir().join("flood.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&summary).unwrap()).unwrap();
        println!("  summary: {}", path.display());
    });
}
