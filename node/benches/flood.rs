//! The **Flood** figure: latency of a well-behaved peer (B) delivering memos
//! to a node, alone and while another peer (A) floods the same node, with the
//! per-peer rate limit effectively off and on. Reported, never asserted.
//!
//! Run: `cargo bench -p mim4-node --bench flood` (in-process nodes on
//! loopback over TLS, real sled; a few seconds per phase).

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

/// B's deliveries per phase, one at a time.
const B_CALLS: usize = 400;
/// B "sends normally": one delivery every 10 ms (100/s), within the
/// per-peer quota of every phase, so B is never refused for its own rate.
const B_INTERVAL: Duration = Duration::from_millis(10);
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
        // Let the flood reach its pace (and spend A's burst).
        tokio::time::sleep(Duration::from_millis(1_500)).await;
    }
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
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        b_errors,
        a_accepted,
        a_limited,
        seconds,
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut net = TestNet::new(3);
        net.start_all().await;
        let phases = [
            phase(&mut net, "B alone", false, UNLIMITED).await,
            phase(&mut net, "B + A flooding, no per-peer limit", true, UNLIMITED).await,
            phase(&mut net, "B + A flooding, A limited to 200/s", true, A_LIMITED).await,
        ];
        println!(
            "flood ({} build): B delivers {B_CALLS} memos one at a time, one per {} ms; A floods with {A_CONCURRENCY} concurrent deliveries",
            if cfg!(debug_assertions) { "debug" } else { "release" },
            B_INTERVAL.as_millis()
        );
        for p in &phases {
            println!(
                "  {:<38} B p50 {:>7.2} ms  p99 {:>7.2} ms  B errors {}  A accepted {:>6.0}/s refused {:>7.0}/s",
                p.name,
                p.p50_ms,
                p.p99_ms,
                p.b_errors,
                p.a_accepted as f64 / p.seconds,
                p.a_limited as f64 / p.seconds,
            );
        }
        let ratio = phases[2].p99_ms / phases[0].p99_ms;
        println!("  B p99 with A limited / B p99 alone: {ratio:.2} (target <= 2)");
        net.shutdown().await;
    });
}
