//! Rate limits per peer and per API client; caps on requests in flight (gRPC
//! peer and API ports, libp2p) and on connections (TLS handshakes and per
//! key, libp2p per peer); and the trust-list lifecycle: expiry fails closed and
//! recovers by refresh, and a revocation installed at one node reaches every
//! node, including connections already open.

use std::collections::HashMap;
use std::time::Duration;

use mim4_node::api::clients::{self, ClientRole};
use mim4_node::clock::now_ms;
use mim4_node::core::delivery::SenderContext;
use mim4_node::core::envelope::{Memo, Payload};
use mim4_node::core::ids::MessageId;
use mim4_node::core::keys::SecretKey;
use mim4_node::limits;
use mim4_node::rate_limit::Rate;
use mim4_node::transport::grpc::REASON_METADATA_KEY;
use mim4_proto::v1 as pb;
use pb::operator_api_client::OperatorApiClient;
use pb::operator_peer_client::OperatorPeerClient;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::Code;

use crate::util::{eventually, until_delivered, P2pSender, TestNet, Transports, OPERATORS};

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

/// A request to `path` on `channel` whose body is held back until the
/// returned sender is dropped: the server has its headers, so the request is
/// in flight there, but it cannot be answered yet. The task ends with the
/// server's answer (to a body without a message, once the sender is dropped).
fn hold<Req, Resp>(
    channel: &Channel,
    path: &'static str,
) -> (mpsc::Sender<Req>, JoinHandle<Result<Resp, tonic::Status>>)
where
    Req: prost::Message + Send + 'static,
    Resp: prost::Message + Default + Send + 'static,
{
    let (body, messages) = mpsc::channel::<Req>(1);
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    let task = tokio::spawn(async move {
        grpc.ready().await.unwrap();
        grpc.client_streaming(
            tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(messages)),
            PathAndQuery::from_static(path),
            tonic_prost::ProstCodec::<Req, Resp>::default(),
        )
        .await
        .map(tonic::Response::into_inner)
    });
    (body, task)
}

/// Requests held by [`hold`], each with the sender of its body.
type Held<Req, Resp> = Vec<(mpsc::Sender<Req>, JoinHandle<Result<Resp, tonic::Status>>)>;

/// Holds `cap` requests to `path` on `channel` until `probe` is refused
/// (`what`: the server at its cap), and returns them with the refusal. A
/// probe may take a slot before the last held request arrives and have that
/// one refused `busy`: such a request is held again, until all are in flight.
async fn hold_until_full<Req, Resp, Fut>(
    channel: &Channel,
    path: &'static str,
    cap: usize,
    what: &str,
    mut probe: impl FnMut() -> Fut,
) -> (Held<Req, Resp>, tonic::Status)
where
    Req: prost::Message + Send + 'static,
    Resp: prost::Message + Default + Send + std::fmt::Debug + 'static,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let mut held: Held<Req, Resp> = (0..cap).map(|_| hold(channel, path)).collect();
    let start = tokio::time::Instant::now();
    loop {
        for slot in &mut held {
            if slot.1.is_finished() {
                let (_, task) = std::mem::replace(slot, hold(channel, path));
                assert_busy(&task.await.unwrap().unwrap_err());
            }
        }
        if let Err(refused) = probe().await {
            return (held, refused);
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A TLS channel of its own (its own TCP connection) from member `from` to node `to`.
fn peer_channel(net: &TestNet, from: usize, to: usize) -> Channel {
    let tls = net.peer_tls(&net.id(from), &net.keys[from], to);
    mim4_node::transport::grpc::channel(&net.peer_url(to), &net.id(to), Some(&tls)).unwrap()
}

async fn fetch_trust_list(client: &mut OperatorPeerClient<Channel>) -> Result<(), tonic::Status> {
    client
        .fetch_trust_list(pb::FetchTrustListRequest {})
        .await
        .map(|_| ())
}

/// The asserts on a request refused because the server is at its cap.
fn assert_busy(status: &tonic::Status) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(status), "busy", "{status:?}");
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
        until_delivered(&sender, *id, DEADLINE).await;
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
    until_delivered(&admin1, id, DEADLINE).await;
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

/// With `concurrent_requests_max` requests in flight on the peer port (held
/// open by bodies that have not arrived), the next request, from any member
/// on any connection, is refused at once with RESOURCE_EXHAUSTED, reason
/// `busy`; once the held requests end, the node serves again, and the
/// refusals are counted in its status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_port_refuses_requests_over_its_in_flight_cap_as_busy() {
    const CAP: usize = 4;
    let mut net = TestNet::new(3);
    net.configs[0].limits.concurrent_requests_max = CAP;
    net.start(0).await;
    let (a, b) = (1, 2);
    let a_channel = peer_channel(&net, a, 0);
    let mut a_client = OperatorPeerClient::new(a_channel.clone());
    fetch_trust_list(&mut a_client)
        .await
        .expect("served below the cap");

    // Once all are in flight, the next request on the same connection is refused...
    let (held, refused) = hold_until_full::<pb::DeliverRequest, pb::DeliverResponse, _>(
        &a_channel,
        "/mim4.v1.OperatorPeer/Deliver",
        CAP,
        "the peer port at its cap",
        || {
            let mut client = a_client.clone();
            async move { fetch_trust_list(&mut client).await }
        },
    )
    .await;
    assert_busy(&refused);
    // ...and so is another member's, on its own connection: the cap is per server.
    let mut b_client = OperatorPeerClient::new(peer_channel(&net, b, 0));
    let envelope = memo_envelope(&net, b, 0, &net.keys[b], version_at(&net, 0));
    let refused = deliver(&mut b_client, envelope).await.unwrap_err();
    assert_busy(&refused);

    // The held requests were admitted: they end with the server's answer to
    // an empty body, not with `busy`.
    let (bodies, tasks): (Vec<_>, Vec<_>) = held.into_iter().unzip();
    drop(bodies);
    for task in tasks {
        let status = task.await.unwrap().unwrap_err();
        assert_ne!(reason(&status), "busy", "{status:?}");
        assert_ne!(status.code(), Code::ResourceExhausted, "{status:?}");
    }
    // Their slots are free again: both members are served.
    let envelope = memo_envelope(&net, b, 0, &net.keys[b], version_at(&net, 0));
    deliver(&mut b_client, envelope).await.unwrap();
    fetch_trust_list(&mut a_client).await.unwrap();
    let status = net.admin(0).await.status().await.unwrap();
    assert!(
        status.refusals.get("busy").is_some_and(|&n| n >= 2),
        "{:?}",
        status.refusals
    );
    net.shutdown().await;
}

/// With `concurrent_requests_max` calls in flight on the API port, the next
/// call is refused at once with RESOURCE_EXHAUSTED, reason `busy`, while gRPC
/// health still answers; once the held calls end, calls are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_port_refuses_calls_over_its_in_flight_cap_as_busy() {
    const CAP: usize = 3;
    let mut net = TestNet::new(1);
    net.configs[0].limits.concurrent_requests_max = CAP;
    net.start_all().await;
    let credential = clients::add(
        &net.configs[0].clients_file,
        "city-app",
        ClientRole::Admin,
        None,
        rand::random(),
        0,
    )
    .unwrap();
    let channel = Channel::from_shared(net.api_url(0))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let api = OperatorApiClient::new(channel.clone());
    let get_status = |api: &OperatorApiClient<Channel>| {
        let mut api = api.clone();
        let mut request = tonic::Request::new(pb::GetStatusRequest {});
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {credential}").parse().unwrap(),
        );
        async move {
            api.get_status(request)
                .await
                .map(tonic::Response::into_inner)
        }
    };
    get_status(&api).await.expect("served below the cap");

    let (held, refused) = hold_until_full::<pb::GetStatusRequest, pb::GetStatusResponse, _>(
        &channel,
        "/mim4.v1.OperatorApi/GetStatus",
        CAP,
        "the API port at its cap",
        || {
            let call = get_status(&api);
            async move { call.await.map(|_| ()) }
        },
    )
    .await;
    assert_busy(&refused);
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "mim4.v1.OperatorApi".into(),
        })
        .await
        .expect("health is not counted")
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let (bodies, tasks): (Vec<_>, Vec<_>) = held.into_iter().unzip();
    drop(bodies);
    for task in tasks {
        let status = task.await.unwrap().unwrap_err();
        assert_ne!(reason(&status), "busy", "{status:?}");
    }
    let served = get_status(&api).await.unwrap();
    assert!(
        served.refusals.get("busy").is_some_and(|&n| n >= 1),
        "{:?}",
        served.refusals
    );
    net.shutdown().await;
}

/// A peer whose requests are held as rate limited does not take the slots
/// of the in-flight cap meanwhile: with a cap of 4 and a flooding member's
/// 64 requests being held, another member's delivery is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_rate_limited_requests_leave_the_in_flight_slots_to_others() {
    let mut net = TestNet::new(3);
    net.configs[0].limits.concurrent_requests_max = 4;
    net.configs[0].limits.peer_rate = Rate {
        per_second: 1,
        burst: 1,
    };
    net.start(0).await;
    let (a, b) = (1, 2);
    let version = version_at(&net, 0);
    let mut a_client = OperatorPeerClient::new(peer_channel(&net, a, 0));
    // A spends its only token, then floods: every request is held (250 to 750 ms).
    deliver(
        &mut a_client,
        memo_envelope(&net, a, 0, &net.keys[a], version),
    )
    .await
    .unwrap();
    let mut flood = JoinSet::new();
    for _ in 0..64 {
        let mut client = a_client.clone();
        let envelope = memo_envelope(&net, a, 0, &net.keys[a], version);
        flood.spawn(async move { deliver(&mut client, envelope).await });
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut b_client = OperatorPeerClient::new(peer_channel(&net, b, 0));
    deliver(
        &mut b_client,
        memo_envelope(&net, b, 0, &net.keys[b], version),
    )
    .await
    .expect("B is served while A's refusals are held");
    let mut limited = 0;
    while let Some(outcome) = flood.join_next().await {
        if let Err(status) = outcome.unwrap() {
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            assert!(
                matches!(reason(&status), "rate_limited" | "busy"),
                "{status:?}"
            );
            limited += usize::from(reason(&status) == "rate_limited");
        }
    }
    assert!(limited > 0, "the flood was not held as rate limited");
    net.shutdown().await;
}

/// One member key may hold PEER_CONNECTIONS_PER_KEY_MAX TLS connections to
/// the peer port: the next one is closed after its handshake (no answer, no
/// reason: it is not served), while the others keep working and another
/// member still connects; a closed connection gives its place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_key_holds_at_most_its_tls_connections() {
    let mut net = TestNet::new(3);
    net.start(0).await;
    let (a, b) = (1, 2);
    let mut open: Vec<OperatorPeerClient<Channel>> = Vec::new();
    for _ in 0..limits::PEER_CONNECTIONS_PER_KEY_MAX {
        let mut client = OperatorPeerClient::new(peer_channel(&net, a, 0));
        fetch_trust_list(&mut client)
            .await
            .expect("within the cap per key");
        open.push(client);
    }
    let mut extra = OperatorPeerClient::new(peer_channel(&net, a, 0));
    let refused = fetch_trust_list(&mut extra).await.unwrap_err();
    // Which code a closed connection gets depends on when the client sees it close.
    assert!(
        matches!(
            refused.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled
        ),
        "{refused:?}"
    );
    assert!(
        std::error::Error::source(&refused).is_some(),
        "a closed connection, not a status the server sent: {refused:?}"
    );
    assert_eq!(reason(&refused), "", "{refused:?}");
    for client in &mut open {
        fetch_trust_list(client)
            .await
            .expect("the connections within the cap are served");
    }
    let mut b_client = OperatorPeerClient::new(peer_channel(&net, b, 0));
    fetch_trust_list(&mut b_client)
        .await
        .expect("the cap is per key");

    // Closing one of A's connections frees a place for a new one.
    drop(open.pop());
    eventually("a new connection of A once one closed", DEADLINE, || {
        let mut client = OperatorPeerClient::new(peer_channel(&net, a, 0));
        async move { fetch_trust_list(&mut client).await.ok() }
    })
    .await;
    net.shutdown().await;
}

/// At most TLS_HANDSHAKES_MAX handshakes run at once on the peer port:
/// while that many connections sit silent before their ClientHello (a
/// slowloris), a member's new connection waits in the kernel's accept queue
/// and its request is not served; once they close (else within
/// TLS_HANDSHAKE_TIMEOUT_MS), it is. Without the bound the request would be
/// answered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_hold_at_most_the_handshake_slots() {
    let mut net = TestNet::new(2);
    net.start(0).await;
    let addr = net.configs[0].peer_listen;
    let mut silent = Vec::new();
    for _ in 0..limits::TLS_HANDSHAKES_MAX {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // Connected after all of them, so behind them in the accept queue.
    let mut client = OperatorPeerClient::new(peer_channel(&net, 1, 0));
    let request = tokio::spawn(async move { fetch_trust_list(&mut client).await });
    // Well within both sides' handshake timeouts (10 s), which would end it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !request.is_finished(),
        "a request was served while every handshake slot was held: {:?}",
        request.await
    );
    drop(silent);
    tokio::time::timeout(DEADLINE, request)
        .await
        .expect("served once the silent connections closed")
        .unwrap()
        .expect("served once the silent connections closed");
    net.shutdown().await;
}

/// One PeerId may hold P2P_CONNECTIONS_PER_PEER_MAX libp2p connections to a
/// node: a member that dials two more keeps only that many open (the node
/// closes the excess at once), and its requests are still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_id_holds_at_most_its_libp2p_connections() {
    use futures::StreamExt as _;
    use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
    use libp2p::swarm::SwarmEvent;
    let mut net = TestNet::over(2, Transports::Libp2p);
    net.start(0).await;
    let handle = net.nodes[0].as_ref().unwrap();
    let (peer, addr) = (handle.peer_id, handle.p2p_addrs[0].clone());
    let cap = limits::P2P_CONNECTIONS_PER_PEER_MAX as usize;
    let dials = cap + 2;
    let mut member =
        crate::util::raw_client(mim4_node::transport::p2p::keypair(&net.keys[1]).unwrap());
    for _ in 0..dials {
        member
            .dial(
                DialOpts::peer_id(peer)
                    .addresses(vec![addr.clone()])
                    .condition(PeerCondition::Always)
                    .build(),
            )
            .unwrap();
    }
    // Every dial ends (connected, or failed), then the node's closures arrive.
    let (mut ended, mut open) = (0, 0usize);
    let settle = async {
        while ended < dials {
            match member.select_next_some().await {
                SwarmEvent::ConnectionEstablished { .. } => {
                    ended += 1;
                    open += 1;
                }
                SwarmEvent::OutgoingConnectionError { .. } => ended += 1,
                SwarmEvent::ConnectionClosed { .. } => open -= 1,
                _ => {}
            }
        }
        let quiet = tokio::time::sleep(Duration::from_secs(1));
        tokio::pin!(quiet);
        loop {
            tokio::select! {
                () = &mut quiet => break,
                event = member.select_next_some() => match event {
                    SwarmEvent::ConnectionEstablished { .. } => open += 1,
                    SwarmEvent::ConnectionClosed { .. } => open -= 1,
                    _ => {}
                },
            }
        }
    };
    tokio::time::timeout(DEADLINE, settle).await.unwrap();
    assert_eq!(open, cap, "connections left open of {dials} dialled");
    assert_eq!(
        member
            .network_info()
            .connection_counters()
            .num_established() as usize,
        cap
    );
    let fetch = crate::util::frame(&pb::PeerRequest {
        kind: Some(pb::peer_request::Kind::FetchTrustList(
            pb::FetchTrustListRequest {},
        )),
    });
    let answer = crate::util::raw_request(&mut member, peer, addr, fetch).await;
    assert!(
        matches!(
            answer.kind,
            Some(pb::peer_response::Kind::FetchTrustList(_))
        ),
        "{answer:?}"
    );
    net.shutdown().await;
}

/// Over libp2p, requests beyond `p2p_inbound_in_flight_max` being served are
/// refused at once with RESOURCE_EXHAUSTED, reason `busy` (the same as on
/// the gRPC ports), and the node serves again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libp2p_requests_over_the_in_flight_cap_are_refused_as_busy() {
    let mut net = TestNet::over(2, Transports::Libp2p);
    net.configs[0].limits.p2p_inbound_in_flight_max = 1;
    net.start(0).await;
    let version = version_at(&net, 0);
    let handle = net.nodes[0].as_ref().unwrap();
    let sender = P2pSender::spawn(&net.keys[1], handle.peer_id, handle.p2p_addrs[0].clone());
    let mut burst = JoinSet::new();
    for _ in 0..64 {
        let sender = sender.clone();
        let envelope = memo_envelope(&net, 1, 0, &net.keys[1], version);
        burst.spawn(async move { sender.deliver(envelope).await });
    }
    let (mut accepted, mut busy) = (0, 0);
    while let Some(response) = burst.join_next().await {
        match response.unwrap().expect("an answer").kind {
            Some(pb::peer_response::Kind::Deliver(_)) => accepted += 1,
            Some(pb::peer_response::Kind::Refusal(refusal)) => {
                assert_eq!(refusal.code, Code::ResourceExhausted as u32, "{refusal:?}");
                assert_eq!(refusal.reason, "busy", "{refusal:?}");
                busy += 1;
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!(busy > 0, "none of 64 requests at once was refused as busy");
    assert!(accepted > 0, "nothing was served");
    let envelope = memo_envelope(&net, 1, 0, &net.keys[1], version);
    let answer = sender.deliver(envelope).await.expect("an answer");
    assert!(
        matches!(answer.kind, Some(pb::peer_response::Kind::Deliver(_))),
        "{answer:?}"
    );
    let status = net.admin(0).await.status().await.unwrap();
    assert!(status.refusals.get("busy").is_some_and(|&n| n > 0));
    net.shutdown().await;
}

/// Over libp2p too, held rate-limited refusals take no room from the
/// in-flight cap: with a cap of 4 and a flooding member's 64 requests being
/// held, another member's delivery is accepted, not refused as `busy`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libp2p_held_rate_limited_requests_leave_the_in_flight_slots_to_others() {
    let mut net = TestNet::over(3, Transports::Libp2p);
    net.configs[0].limits.p2p_inbound_in_flight_max = 4;
    net.configs[0].limits.peer_rate = Rate {
        per_second: 1,
        burst: 1,
    };
    net.start(0).await;
    let version = version_at(&net, 0);
    let handle = net.nodes[0].as_ref().unwrap();
    let (peer_id, addr) = (handle.peer_id, handle.p2p_addrs[0].clone());
    let (a, b) = (1, 2);
    let a_sender = P2pSender::spawn(&net.keys[a], peer_id, addr.clone());
    let first = a_sender
        .deliver(memo_envelope(&net, a, 0, &net.keys[a], version))
        .await
        .expect("an answer");
    assert!(
        matches!(first.kind, Some(pb::peer_response::Kind::Deliver(_))),
        "{first:?}"
    );
    let mut flood = JoinSet::new();
    for _ in 0..64 {
        let sender = a_sender.clone();
        let envelope = memo_envelope(&net, a, 0, &net.keys[a], version);
        flood.spawn(async move { sender.deliver(envelope).await });
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let b_sender = P2pSender::spawn(&net.keys[b], peer_id, addr);
    let answer = b_sender
        .deliver(memo_envelope(&net, b, 0, &net.keys[b], version))
        .await
        .expect("an answer");
    assert!(
        matches!(answer.kind, Some(pb::peer_response::Kind::Deliver(_))),
        "B is served while A's refusals are held: {answer:?}"
    );
    let mut limited = 0;
    while let Some(response) = flood.join_next().await {
        if let Some(pb::peer_response::Kind::Refusal(refusal)) =
            response.unwrap().expect("an answer").kind
        {
            assert_eq!(refusal.code, Code::ResourceExhausted as u32, "{refusal:?}");
            limited += usize::from(refusal.reason == "rate_limited");
        }
    }
    assert!(limited > 0, "the flood was not held as rate limited");
    net.shutdown().await;
}
