//! Rate limits per peer and per API client, and the trust-list lifecycle:
//! expiry fails closed and recovers by refresh, and a revocation installed at
//! one node reaches every node, including connections already open.

use std::collections::HashMap;
use std::time::Duration;

use mim4_node::api::clients::{self, ClientRole};
use mim4_node::core::delivery::SenderContext;
use mim4_node::core::envelope::{Memo, Payload};
use mim4_node::core::ids::MessageId;
use mim4_node::core::keys::SecretKey;
use mim4_node::node::now_ms;
use mim4_node::rate_limit::Rate;
use mim4_node::transport::grpc::REASON_METADATA_KEY;
use mim4_proto::v1 as pb;
use pb::operator_api_client::OperatorApiClient;
use pb::operator_peer_client::OperatorPeerClient;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tonic::Code;

use crate::util::{eventually, TestNet, OPERATORS};

/// How long any wait in these tests may take before it fails.
const DEADLINE: Duration = Duration::from_secs(120);

/// A memo from node `from` to node `to`, sealed with `key` under node
/// `from`'s current trust-list version (node `from` must be running, or
/// `version` is given).
fn memo_envelope(net: &TestNet, from: usize, to: usize, key: &SecretKey, version: u64) -> Vec<u8> {
    SenderContext {
        me: &net.id(from),
        rulebook_version: "mim4-rulebook-1.0",
        trust_list_version: version,
        lifetime_ms: 60 * 60 * 1000,
    }
    .envelope(
        MessageId::from_bytes(rand::random()),
        net.id(to),
        now_ms(),
        None,
        Payload::Memo(Memo {
            subject: format!("from {}", net.id(from)),
            text: String::new(),
        }),
    )
    .seal(key)
    .bytes
}

fn version_at(net: &TestNet, i: usize) -> u64 {
    net.nodes[i].as_ref().unwrap().shared.trust().version()
}

fn reason(status: &tonic::Status) -> &str {
    status
        .metadata()
        .get(REASON_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

async fn deliver(
    client: &mut OperatorPeerClient<Channel>,
    envelope: Vec<u8>,
) -> Result<(), tonic::Status> {
    client
        .deliver(pb::DeliverRequest { envelope })
        .await
        .map(|_| ())
}

/// A peer flooding far over its quota gets RESOURCE_EXHAUSTED (reason
/// `rate_limited`, naming the peer and the limit) for the excess, while
/// another peer's messages are all accepted; the flooding operator's
/// acknowledged messages are still delivered by its outbox's retries, each
/// applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_peer_is_throttled_while_others_are_served() {
    let mut net = TestNet::new(3);
    let rate = Rate {
        per_second: 20,
        burst: 10,
    };
    net.configs[0].limits.peer_rate = rate;
    net.start_all().await;
    let (a, b) = (1, 2);

    // A floods node 0 with 200 concurrent deliveries of valid memos, over
    // one connection (more connections per key would be closed at once).
    let version = version_at(&net, 0);
    let a_client = net.peer_client(a, 0);
    let mut flood = JoinSet::new();
    for _ in 0..200 {
        let mut client = a_client.clone();
        let envelope = memo_envelope(&net, a, 0, &net.keys[a], version);
        flood.spawn(async move { deliver(&mut client, envelope).await });
    }
    // Meanwhile B sends normally: three memos, within its own bucket.
    let mut b_client = net.peer_client(b, 0);
    for _ in 0..3 {
        let envelope = memo_envelope(&net, b, 0, &net.keys[b], version);
        deliver(&mut b_client, envelope)
            .await
            .expect("B's memo is accepted during A's flood");
    }
    let (mut accepted, mut limited) = (0, 0);
    while let Some(outcome) = flood.join_next().await {
        match outcome.unwrap() {
            Ok(()) => accepted += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert_eq!(reason(&status), "rate_limited", "{status:?}");
                assert!(status.message().contains(OPERATORS[a]), "{status:?}");
                assert!(
                    status.message().contains("20 requests/s (burst 10)"),
                    "{status:?}"
                );
                limited += 1;
            }
        }
    }
    assert!(
        limited > 0,
        "the flood was not limited ({accepted} accepted)"
    );
    assert!(accepted > 0, "nothing of the flood was accepted");
    // Still serving, B included.
    let envelope = memo_envelope(&net, b, 0, &net.keys[b], version);
    deliver(&mut b_client, envelope).await.unwrap();

    // A's node sends 40 memos through its outbox (32 in flight at once, far
    // over the burst): refused ones are retried with backoff, none dropped.
    let sender = net.admin(a).await;
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(
            sender
                .send_message(OPERATORS[0], &format!("queued {i}"), "")
                .await
                .unwrap(),
        );
    }
    for id in &ids {
        eventually(&format!("memo {id} delivered"), DEADLINE, || {
            let sender = sender.clone();
            let id = *id;
            async move {
                let outgoing = sender.outgoing(id).await.ok()?;
                (outgoing.state == mim4_sdk::Delivery::Delivered).then_some(())
            }
        })
        .await;
    }
    let received = net.admin(0).await.messages(0, 1000).await.unwrap();
    let mut times: HashMap<Vec<u8>, usize> = HashMap::new();
    for message in &received {
        *times.entry(message.message_id.clone()).or_default() += 1;
    }
    for id in &ids {
        assert_eq!(
            times.get(id.0.as_slice()),
            Some(&1),
            "memo {id} applied once"
        );
    }
    let status = net.admin(0).await.status().await.unwrap();
    assert!(status.refusals.get("rate_limited").is_some_and(|&n| n > 0));
    net.shutdown().await;
}

/// An API client over its rate gets RESOURCE_EXHAUSTED naming it and the
/// limit, while another client of the same node is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_client_over_its_rate_is_refused_while_another_is_served() {
    let mut net = TestNet::new(1);
    net.configs[0].limits.api_rate = Rate {
        per_second: 1,
        burst: 5,
    };
    net.start_all().await;
    let clients_file = net.configs[0].clients_file.clone();
    let credential = |id: &str| {
        clients::add(
            &clients_file,
            id,
            ClientRole::Admin,
            None,
            rand::random(),
            0,
        )
        .unwrap()
    };
    let noisy = credential("noisy-app");
    let quiet = credential("quiet-app");
    let channel = Channel::from_shared(net.api_url(0))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut api = OperatorApiClient::new(channel);
    let status_of = |credential: &str| {
        let mut request = tonic::Request::new(pb::GetStatusRequest {});
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {credential}").parse().unwrap(),
        );
        request
    };
    let mut refused = None;
    for _ in 0..50 {
        if let Err(status) = api.get_status(status_of(&noisy)).await {
            refused = Some(status);
            break;
        }
    }
    let refused = refused.expect("50 calls at once exceed a burst of 5");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(reason(&refused), "rate_limited");
    assert!(refused.message().contains("noisy-app"), "{refused:?}");
    assert!(
        refused.message().contains("1 requests/s (burst 5)"),
        "{refused:?}"
    );
    let served = api
        .get_status(status_of(&quiet))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(served.caller_id, "quiet-app");
    net.shutdown().await;
}

/// A node whose trust list has expired refuses to send and to accept, with
/// reason `trust_list_expired` naming the version, shows it in its status, and
/// recovers by itself once a newer list is installed at a peer: its refresh
/// fetches it (pushes to it are refused while its list is expired).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_trust_list_fails_closed_then_recovers_by_refresh() {
    let mut net = TestNet::new(2);
    // Both start on v2, valid for 4 s, and refresh every 200 ms.
    let short = net
        .draft
        .sign_next(&[&net.governance], now_ms(), 4_000)
        .unwrap()
        .encode();
    for config in &mut net.configs {
        std::fs::write(&config.trust_list, &short).unwrap();
        config.limits.trust_refresh_interval_ms = 200;
    }
    net.start_all().await;
    let admin1 = net.admin(1).await;
    eventually("node 1's list expired", DEADLINE, || {
        let admin1 = admin1.clone();
        async move { admin1.status().await.ok()?.trust_list_expired.then_some(()) }
    })
    .await;
    let status = admin1.status().await.unwrap();
    assert_eq!(status.trust_list_version, 2);

    // Accepting: refused before anything else, naming the list.
    let mut client = net.peer_client(0, 1);
    let refused = deliver(&mut client, memo_envelope(&net, 0, 1, &net.keys[0], 2))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(reason(&refused), "trust_list_expired", "{refused:?}");
    assert!(refused.message().contains("version 2"), "{refused:?}");
    // Sending: refused at the API, naming the list.
    let error = admin1
        .send_message(OPERATORS[0], "under an expired list", "")
        .await
        .unwrap_err();
    assert!(
        matches!(&error, mim4_sdk::CallError::FailedPrecondition(m)
            if m.contains("trust list expired") && m.contains("version 2")),
        "{error:?}"
    );

    // Governance signs v3; it is installed at node 0 only.
    let v3 = net.sign_next(|_| {});
    assert_eq!(net.admin(0).await.install_trust_list(v3).await.unwrap(), 3);
    eventually("node 1 refreshed to v3", DEADLINE, || {
        let admin1 = admin1.clone();
        async move {
            let status = admin1.status().await.ok()?;
            (status.trust_list_version == 3 && !status.trust_list_expired).then_some(())
        }
    })
    .await;
    // Traffic flows again, both ways.
    let id = admin1
        .send_message(OPERATORS[0], "after the refresh", "")
        .await
        .unwrap();
    eventually("memo delivered after recovery", DEADLINE, || {
        let admin1 = admin1.clone();
        async move {
            let outgoing = admin1.outgoing(id).await.ok()?;
            (outgoing.state == mim4_sdk::Delivery::Delivered).then_some(())
        }
    })
    .await;
    let mut client = net.peer_client(0, 1);
    deliver(&mut client, memo_envelope(&net, 0, 1, &net.keys[0], 3))
        .await
        .unwrap();
    net.shutdown().await;
}

/// A revocation installed at one node is enforced by the others within the
/// deadline (offer and periodic refresh), also on TLS connections the revoked
/// member opened before: the peer port re-checks the key on every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_at_one_node_reaches_every_node_and_open_connections() {
    // Four members; three run, the fourth (revoked) talks to them by hand.
    let mut net = TestNet::new(4);
    for config in &mut net.configs {
        config.limits.trust_refresh_interval_ms = 300;
    }
    for i in 0..3 {
        net.start(i).await;
    }
    let revoked = 3;
    let revoked_id = net.id(revoked);
    let revoked_key = SecretKey::from_bytes(&net.keys[revoked].to_bytes()[..]).unwrap();
    // Connections opened (and used) before the revocation.
    let mut open: Vec<OperatorPeerClient<Channel>> = [1, 2]
        .iter()
        .map(|&to| net.peer_client_with_key(&revoked_id, &revoked_key, to))
        .collect();
    for (client, to) in open.iter_mut().zip([1, 2]) {
        deliver(client, memo_envelope(&net, revoked, to, &revoked_key, 1))
            .await
            .expect("accepted while active");
    }

    let v2 = net.sign_next(|draft| {
        draft.member_mut(OPERATORS[revoked]).unwrap().status = "revoked".into();
    });
    assert_eq!(net.admin(0).await.install_trust_list(v2).await.unwrap(), 2);

    for (client, to) in open.iter_mut().zip([1, 2]) {
        let status = eventually(
            &format!("node {to} refuses the revoked member"),
            DEADLINE,
            || {
                let mut client = client.clone();
                let envelope = memo_envelope(&net, revoked, to, &revoked_key, 1);
                async move { deliver(&mut client, envelope).await.err() }
            },
        )
        .await;
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert_eq!(reason(&status), "tls_peer_refused", "{status:?}");
        assert!(status.message().contains("revoked"), "{status:?}");
    }
    net.shutdown().await;
}
