//! The **Transport** figures: signed envelopes per second and round-trip
//! p50/p99 over libp2p next to gRPC in the same run, against the same node,
//! and the time to set up a connection and get a first answer on each.
//! Reported, never asserted; the ratio libp2p/gRPC is the figure to read.
//!
//! Run: `cargo bench -p mim4-node --bench transport` (in-process node on
//! loopback, real sled, TLS 1.3 for gRPC, noise + yamux for libp2p). The
//! envelopes are sealed beforehand, so both sides measure the same work: a
//! transport round trip plus the receiver's verify, apply, flush and receipt.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[allow(dead_code)]
#[path = "../tests/node/util.rs"]
mod util;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use libp2p::request_response;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm};
use mim4_node::core::ids::OperatorId;
use mim4_node::core::keys::SecretKey;
use mim4_proto::v1 as pb;
use tokio::task::JoinSet;
use util::{RawCodec, TestNet, Transports};

/// Envelopes per transport and run.
const ENVELOPES: usize = 4_000;
/// Requests in flight at once.
const CONCURRENCY: usize = 16;
/// Connections set up per transport for the setup figure.
const SETUPS: usize = 30;
/// Bound on any single run.
const RUN_DEADLINE: Duration = Duration::from_secs(120);

fn memos(
    from: &OperatorId,
    to: &OperatorId,
    key: &SecretKey,
    version: u64,
    n: usize,
) -> Vec<Vec<u8>> {
    let text = "x".repeat(200);
    (0..n)
        .map(|_| util::sealed_memo(from, to, key, version, "bench", &text))
        .collect()
}

struct Figures {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: usize,
}

fn figures(mut latencies: Vec<f64>, seconds: f64, errors: usize) -> Figures {
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Figures {
        per_second: latencies.len() as f64 / seconds,
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        errors,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn grpc_run(net: &TestNet, envelopes: Vec<Vec<u8>>) -> Figures {
    let client = net.peer_client(1, 0);
    // Warm the connection.
    client
        .clone()
        .fetch_trust_list(pb::FetchTrustListRequest {})
        .await
        .unwrap();
    let chunks: Vec<Vec<Vec<u8>>> = envelopes
        .chunks(envelopes.len().div_ceil(CONCURRENCY))
        .map(<[Vec<u8>]>::to_vec)
        .collect();
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for chunk in chunks {
        let mut client = client.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(chunk.len());
            let mut errors = 0;
            for envelope in chunk {
                let sent = Instant::now();
                match client.deliver(pb::DeliverRequest { envelope }).await {
                    Ok(_) => latencies.push(sent.elapsed().as_secs_f64() * 1e3),
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        });
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    while let Some(joined) = tasks.join_next().await {
        let (l, e) = joined.unwrap();
        latencies.extend(l);
        errors += e;
    }
    figures(latencies, started.elapsed().as_secs_f64(), errors)
}

fn p2p_client(key: &SecretKey) -> Swarm<request_response::Behaviour<RawCodec>> {
    util::raw_client(mim4_node::transport::p2p::keypair(key).unwrap())
}

fn request(kind: pb::peer_request::Kind) -> Vec<u8> {
    util::frame(&pb::PeerRequest { kind: Some(kind) })
}

/// Drives `swarm` until the response to one request arrives; `Err` on failure.
async fn one_answer(
    swarm: &mut Swarm<request_response::Behaviour<RawCodec>>,
) -> Result<(), String> {
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Response { .. },
                ..
            }) => return Ok(()),
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure { error, .. }) => {
                return Err(error.to_string())
            }
            _ => {}
        }
    }
}

async fn p2p_run(
    key: &SecretKey,
    peer: PeerId,
    addr: Multiaddr,
    envelopes: Vec<Vec<u8>>,
) -> Figures {
    let mut swarm = p2p_client(key);
    let fetch = request(pb::peer_request::Kind::FetchTrustList(
        pb::FetchTrustListRequest {},
    ));
    swarm
        .behaviour_mut()
        .send_request_with_addresses(&peer, fetch, vec![addr]);
    one_answer(&mut swarm).await.unwrap();
    let mut queue = envelopes.into_iter();
    let mut in_flight = HashMap::new();
    let mut latencies = Vec::new();
    let mut errors = 0;
    let started = Instant::now();
    loop {
        while in_flight.len() < CONCURRENCY {
            let Some(envelope) = queue.next() else { break };
            let kind = pb::peer_request::Kind::Deliver(pb::DeliverRequest { envelope });
            let id = swarm.behaviour_mut().send_request(&peer, request(kind));
            in_flight.insert(id, Instant::now());
        }
        if in_flight.is_empty() || started.elapsed() > RUN_DEADLINE {
            break;
        }
        match swarm.select_next_some().await {
            SwarmEvent::Behaviour(request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            }) => {
                if let Some(sent) = in_flight.remove(&request_id) {
                    match response.kind {
                        Some(pb::peer_response::Kind::Deliver(_)) => {
                            latencies.push(sent.elapsed().as_secs_f64() * 1e3)
                        }
                        _ => errors += 1,
                    }
                }
            }
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                request_id, ..
            }) => {
                in_flight.remove(&request_id);
                errors += 1;
            }
            _ => {}
        }
    }
    figures(latencies, started.elapsed().as_secs_f64(), errors)
}

/// Median time from nothing to a first answered `FetchTrustList`: TCP + TLS
/// 1.3 (both sides' certificates checked against the trust list) + HTTP/2.
async fn grpc_setup(net: &TestNet) -> f64 {
    let mut times = Vec::new();
    for _ in 0..SETUPS {
        let started = Instant::now();
        let mut client = net.peer_client(1, 0);
        client
            .fetch_trust_list(pb::FetchTrustListRequest {})
            .await
            .unwrap();
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    median(times)
}

/// The same for libp2p: TCP + multistream + noise + yamux + the first stream.
async fn p2p_setup(key: &SecretKey, peer: PeerId, addr: &Multiaddr) -> f64 {
    let mut times = Vec::new();
    for _ in 0..SETUPS {
        let mut swarm = p2p_client(key);
        let started = Instant::now();
        let fetch = request(pb::peer_request::Kind::FetchTrustList(
            pb::FetchTrustListRequest {},
        ));
        swarm
            .behaviour_mut()
            .send_request_with_addresses(&peer, fetch, vec![addr.clone()]);
        one_answer(&mut swarm).await.unwrap();
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    median(times)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut net = TestNet::over(2, Transports::Both);
        net.start(0).await;
        let (peer, addr) = {
            let node = net.nodes[0].as_ref().unwrap();
            (node.peer_id, node.p2p_addrs[0].clone())
        };
        let version = net.nodes[0].as_ref().unwrap().shared.trust().version();
        let (from, to) = (net.id(1), net.id(0));
        let key = SecretKey::from_bytes(&net.keys[1].to_bytes()[..]).unwrap();
        let grpc_setup_ms = grpc_setup(&net).await;
        let p2p_setup_ms = p2p_setup(&key, peer, &addr).await;
        // Alternate the order so neither transport always runs on a warmer node.
        let grpc_a = grpc_run(&net, memos(&from, &to, &key, version, ENVELOPES)).await;
        let p2p_a = p2p_run(&key, peer, addr.clone(), memos(&from, &to, &key, version, ENVELOPES)).await;
        let p2p_b = p2p_run(&key, peer, addr.clone(), memos(&from, &to, &key, version, ENVELOPES)).await;
        let grpc_b = grpc_run(&net, memos(&from, &to, &key, version, ENVELOPES)).await;
        println!(
            "transport ({} build): {ENVELOPES} sealed memos per run, {CONCURRENCY} in flight, one receiver (verify, apply, flush, receipt)",
            if cfg!(debug_assertions) { "debug" } else { "release" }
        );
        for (name, f) in [("gRPC (TLS 1.3)  #1", &grpc_a), ("libp2p (noise)  #1", &p2p_a), ("libp2p (noise)  #2", &p2p_b), ("gRPC (TLS 1.3)  #2", &grpc_b)] {
            println!(
                "  {name}: {:>8.0} envelopes/s  p50 {:>6.2} ms  p99 {:>6.2} ms  errors {}",
                f.per_second, f.p50_ms, f.p99_ms, f.errors
            );
        }
        let ratio = (p2p_a.per_second + p2p_b.per_second) / (grpc_a.per_second + grpc_b.per_second);
        println!("  throughput libp2p / gRPC: {ratio:.2} (target >= 0.7)");
        println!(
            "  connection setup to first answer (median of {SETUPS}): gRPC {grpc_setup_ms:.2} ms, libp2p {p2p_setup_ms:.2} ms (target <= 5 ms)"
        );
        net.shutdown().await;
    });
}
