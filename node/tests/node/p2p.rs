//! libp2p-specific behaviour: QUIC, non-members, frame limits, fallback from
//! gRPC, Kademlia, and interop with another libp2p implementation (js-libp2p).
//! The protocol tests that run over every transport are in `exchange`,
//! `consent` and `exchange_data` (`over_transports!`).

use std::time::Duration;

use futures::StreamExt as _;
use libp2p::swarm::SwarmEvent;
use libp2p::{identity, Multiaddr, PeerId};
use mim4_proto::v1 as pb;
use mim4_sdk::Delivery;

use crate::util::{
    deliver_request, eventually, frame, raw_client, raw_request, TestNet, Transports,
};

/// The refusal in `response`, which must be one.
fn refusal(response: pb::PeerResponse) -> pb::PeerRefusal {
    match response.kind {
        Some(pb::peer_response::Kind::Refusal(refusal)) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Node `i`'s first libp2p address and its PeerId.
fn address(net: &TestNet, i: usize) -> (PeerId, Multiaddr) {
    let handle = net.nodes[i].as_ref().unwrap();
    (handle.peer_id, handle.p2p_addrs[0].clone())
}

/// Sends a memo from `from` to `to` and waits for its verified receipt.
async fn memo(net: &TestNet, from: usize, to: usize, text: &str) {
    let client = net.admin(from).await;
    let id = client
        .send_message(net.id(to).as_str(), "memo", text)
        .await
        .unwrap();
    let outgoing = client
        .wait_delivered(id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(outgoing.state, Delivery::Delivered, "{from}->{to}");
}

/// Two members that offer only QUIC exchange memos both ways with receipts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_exchanges_memos_over_quic() {
    let mut net = TestNet::over(2, Transports::Quic);
    net.start_all().await;
    assert!(address(&net, 0).1.to_string().contains("/quic-v1"));
    memo(&net, 0, 1, "over QUIC").await;
    memo(&net, 1, 0, "and back").await;
    for i in 0..2 {
        assert_eq!(net.admin(i).await.messages(0, 10).await.unwrap().len(), 1);
    }
    net.shutdown().await;
}

/// The PeerId a node presents is the one derived from its operator key in
/// the trust list, and its API reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_id_is_derived_from_the_operator_key() {
    let mut net = TestNet::over(1, Transports::Libp2p);
    net.start_all().await;
    let expected = mim4_node::transport::p2p::peer_id(&net.keys[0].public());
    assert_eq!(address(&net, 0).0, expected);
    let listed = &net.draft.members[0].p2p_addrs[0];
    assert!(listed.ends_with(&format!("/p2p/{expected}")), "{listed}");
    // The API says so too: the node's own PeerId and listeners, and the
    // PeerIds of each member's keys.
    let admin = net.admin(0).await;
    let status = admin.status().await.unwrap();
    assert_eq!(status.peer_id, expected.to_string());
    assert_eq!(
        status.p2p_listen_addrs,
        vec![address(&net, 0).1.to_string()]
    );
    let peers = admin.peers().await.unwrap();
    assert_eq!(peers[0].peer_ids, vec![expected.to_string()]);
    assert_eq!(&peers[0].p2p_addrs[0], listed);
    net.shutdown().await;
}

/// A PeerId that is not a member gets its envelope requests refused
/// (`not_a_member`, PERMISSION_DENIED) before anything is decoded, its
/// connection is closed after a short while, and the node keeps serving members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_member_peer_id_is_refused_and_disconnected() {
    let mut net = TestNet::over(2, Transports::Libp2p);
    net.start_all().await;
    let (peer, addr) = address(&net, 0);
    let mut stranger = raw_client(identity::Keypair::generate_ed25519());
    let response = raw_request(
        &mut stranger,
        peer,
        addr,
        frame(&deliver_request(vec![1, 2, 3])),
    )
    .await;
    let refused = refusal(response);
    assert_eq!(refused.reason, "not_a_member");
    assert_eq!(refused.code, tonic::Code::PermissionDenied as u32);
    // The node closes the stranger's connection within its short lifetime.
    let closed = async {
        loop {
            if let SwarmEvent::ConnectionClosed { peer_id, .. } = stranger.select_next_some().await
            {
                if peer_id == peer {
                    return;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), closed)
        .await
        .expect("the non-member connection is closed");
    memo(&net, 1, 0, "members still served").await;
    net.shutdown().await;
}

/// A frame announcing more than the node's message limit is refused from
/// its 4-byte header (`oversized`, RESOURCE_EXHAUSTED) without the body being
/// read, a frame that is not a `PeerRequest` is refused as `malformed`, and
/// an envelope signed by another member than the noise peer as `not_from_peer`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_malformed_and_misattributed_frames_are_refused() {
    let mut net = TestNet::over(3, Transports::Libp2p);
    net.start_all().await;
    let (peer, addr) = address(&net, 0);
    let member_key = mim4_node::transport::p2p::keypair(&net.keys[1]).unwrap();
    let mut member = raw_client(member_key);
    // Announce 2 MiB, send 16 bytes.
    let mut oversized = (2u32 * 1024 * 1024).to_be_bytes().to_vec();
    oversized.extend_from_slice(&[0u8; 16]);
    let refused = refusal(raw_request(&mut member, peer, addr.clone(), oversized).await);
    assert_eq!(refused.reason, "oversized", "{}", refused.message);
    assert_eq!(refused.code, tonic::Code::ResourceExhausted as u32);
    let mut garbage = 8u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0xff; 8]);
    let refused = refusal(raw_request(&mut member, peer, addr.clone(), garbage).await);
    assert_eq!(refused.reason, "malformed", "{}", refused.message);
    assert_eq!(refused.code, tonic::Code::InvalidArgument as u32);
    // An envelope node 2 sealed, carried by node 1's libp2p identity.
    let client = net.admin(2).await;
    let id = client
        .send_message(net.id(0).as_str(), "memo", "mine")
        .await
        .unwrap();
    client
        .wait_delivered(id, Duration::from_secs(60))
        .await
        .unwrap();
    let received = net.admin(0).await.messages(0, 10).await.unwrap();
    let sealed = received
        .iter()
        .find(|m| m.sender == net.id(2).as_str())
        .unwrap()
        .envelope
        .clone();
    let refused =
        refusal(raw_request(&mut member, peer, addr, frame(&deliver_request(sealed))).await);
    assert_eq!(refused.reason, "not_from_peer", "{}", refused.message);
    memo(&net, 1, 0, "still served").await;
    net.shutdown().await;
}

/// Members offer gRPC and libp2p and prefer gRPC; node 1's gRPC endpoint in
/// the trust list is blocked (nothing listens there). Every message still
/// arrives over libp2p, each applied once, and replies go over gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_grpc_blocked_messages_arrive_over_libp2p_once_each() {
    let mut net = TestNet::over(2, Transports::Both);
    let blocked = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let blocked_addr = blocked.local_addr().unwrap();
    drop(blocked);
    let id1 = net.id(1).to_string();
    let v2 = net.sign_next(|d| {
        d.member_mut(&id1).unwrap().grpc_endpoint = format!("https://{blocked_addr}");
    });
    for config in &net.configs {
        std::fs::write(&config.trust_list, &v2).unwrap();
    }
    net.start_all().await;
    let client = net.admin(0).await;
    let mut ids = Vec::new();
    for n in 0..10 {
        ids.push(
            client
                .send_message(net.id(1).as_str(), "memo", &format!("#{n}"))
                .await
                .unwrap(),
        );
    }
    for id in ids {
        let outgoing = client
            .wait_delivered(id, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(outgoing.state, Delivery::Delivered);
    }
    let received = net.admin(1).await.messages(0, 100).await.unwrap();
    assert_eq!(received.len(), 10, "each message applied once");
    let mut texts: Vec<_> = received.iter().map(|m| format!("{:?}", m.memo)).collect();
    texts.sort();
    texts.dedup();
    assert_eq!(texts.len(), 10);
    memo(&net, 1, 0, "back over gRPC").await;
    net.shutdown().await;
}

/// Node 2 moves to a new libp2p address that the trust list does not name.
/// It talks to node 1, which learns the new address; node 0, which knows
/// only the listed (dead) address, finds it through Kademlia and delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_moved_is_found_through_kademlia() {
    let mut net = TestNet::over(3, Transports::Libp2p);
    net.start_all().await;
    net.stop(2).await;
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let listed = net.draft.members[2].p2p_addrs[0].clone();
    net.configs[2].p2p_listen = vec![format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()];
    net.start(2).await;
    assert!(
        !listed.contains(&format!("/tcp/{port}/")),
        "a new address: {listed}"
    );
    memo(&net, 2, 1, "I moved").await;
    memo(&net, 0, 2, "found you").await;
    let received = net.admin(2).await.messages(0, 10).await.unwrap();
    assert_eq!(received.len(), 1);
    net.shutdown().await;
}

/// Another libp2p implementation (js-libp2p, installed by
/// `scripts/interop-setup.sh` from the npm registry) connects over TCP +
/// noise + yamux, identifies the node, pings it, and sees the PeerId the
/// trust list names; as a non-member it is offered neither Kademlia nor
/// gossipsub; with a wrong expected PeerId it fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_libp2p_identifies_and_pings_the_node() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let setup = tokio::process::Command::new("bash")
        .arg(root.join("scripts/interop-setup.sh"))
        .output()
        .await
        .unwrap();
    assert!(
        setup.status.success(),
        "interop setup failed (needs node >= 20 and npm): {}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let mut net = TestNet::over(1, Transports::Libp2p);
    net.start_all().await;
    let (peer, addr) = address(&net, 0);
    let expected = mim4_node::transport::p2p::peer_id(&net.keys[0].public());
    let probe = |expect: String| {
        let script = root.join("testnet/interop/js/probe.mjs");
        let target = format!("{addr}/p2p/{peer}");
        async move {
            let run = tokio::process::Command::new("node")
                .arg(script)
                .arg(target)
                .args(["--expect-peer", &expect, "--timeout-ms", "20000"])
                .kill_on_drop(true)
                .output();
            let output = tokio::time::timeout(Duration::from_secs(40), run)
                .await
                .expect("the probe ends by itself")
                .unwrap();
            let line = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            let json: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                panic!(
                    "probe printed {line:?} ({e}); stderr: {}",
                    String::from_utf8_lossy(&output.stderr)
                )
            });
            (output.status.success(), json)
        }
    };
    let (ok, json) = probe(expected.to_string()).await;
    assert!(ok, "{json}");
    assert_eq!(json["peer_id"], expected.to_string());
    assert_eq!(json["protocol_version"], "/mim4/1.0.0");
    let protocols: Vec<&str> = json["protocols"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    for wanted in ["/ipfs/id/1.0.0", "/ipfs/ping/1.0.0"] {
        assert!(protocols.contains(&wanted), "{protocols:?}");
    }
    // The probe is not a member: Kademlia and gossipsub are not even offered
    // on its connection (the envelope protocol is, to refuse it with a reason).
    assert!(
        !protocols
            .iter()
            .any(|p| p.starts_with("/mim4/kad") || p.starts_with("/meshsub")),
        "{protocols:?}"
    );
    assert_eq!(json["encryption"], "/noise");
    assert_eq!(json["multiplexer"], "/yamux/1.0.0");
    assert_eq!(json["ping_ms"].as_array().unwrap().len(), 3);
    // A PeerId other than the trust list's is detected.
    let other = identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id()
        .to_string();
    let (ok, json) = probe(other).await;
    assert!(!ok, "{json}");
    assert!(
        json["error"].as_str().unwrap().contains("mismatch"),
        "{json}"
    );
    // The node still serves after the stranger's visits.
    eventually("the node answers", Duration::from_secs(30), || {
        let client = net.admin(0);
        async move { client.await.status().await.ok() }
    })
    .await;
    net.shutdown().await;
}

/// A node that starts with a newer trust list than its peers connects to
/// them and announces its version by gossip as soon as they join the topic
/// (and they theirs): each side learns that the other is behind or ahead and
/// the list is fetched or offered, verified and installed, long before the
/// periodic refresh (50 s here) and with no other traffic to carry versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_trust_list_spreads_by_gossip() {
    let mut net = TestNet::over(3, Transports::Libp2p);
    for config in &mut net.configs {
        config.limits.trust_refresh_interval_ms = 50_000;
    }
    net.start(1).await;
    net.start(2).await;
    let id0 = net.id(0).to_string();
    let v2 = net.sign_next(|d| {
        d.member_mut(&id0).unwrap().sectors.push("mobility".into());
    });
    std::fs::write(&net.configs[0].trust_list, &v2).unwrap();
    net.start(0).await;
    assert_eq!(
        net.admin(0)
            .await
            .status()
            .await
            .unwrap()
            .trust_list_version,
        2
    );
    for i in [1, 2] {
        let what = format!("node {i} on v2 through gossip");
        net.until_trust_version(i, 2, &what, Duration::from_secs(25))
            .await;
    }
    net.shutdown().await;
}

/// A member's requests over gRPC and over libp2p take from one bucket: once
/// its burst is spent on one transport, the other refuses it too
/// (`rate_limited`), so using both does not double its quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_transports_share_a_members_rate() {
    let mut net = TestNet::over(2, Transports::Both);
    net.configs[0].limits.peer_rate = mim4_node::rate_limit::Rate {
        per_second: 1,
        burst: 3,
    };
    net.start(0).await;
    let mut grpc = net.peer_client(1, 0);
    for _ in 0..3 {
        grpc.fetch_trust_list(pb::FetchTrustListRequest {})
            .await
            .unwrap();
    }
    let (peer, addr) = address(&net, 0);
    let mut p2p = raw_client(mim4_node::transport::p2p::keypair(&net.keys[1]).unwrap());
    let fetch = frame(&pb::PeerRequest {
        kind: Some(pb::peer_request::Kind::FetchTrustList(
            pb::FetchTrustListRequest {},
        )),
    });
    let refused = refusal(raw_request(&mut p2p, peer, addr, fetch).await);
    assert_eq!(refused.reason, "rate_limited", "{}", refused.message);
    assert_eq!(refused.code, tonic::Code::ResourceExhausted as u32);
    net.shutdown().await;
}
