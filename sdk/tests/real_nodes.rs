//! The SDK against real nodes: two `mim4-node` processes on loopback (Helsinki
//! and the income register of the testnet), started through `mim4-testnet`'s
//! launcher and stopped by a drop guard on every way out. What the SDK
//! promises its callers: a typed error for each cause, `wait_delivered`
//! polling until a receiver that was down has taken the message, and data
//! requests with an idempotency key answered once.

// Test helpers outside #[test] functions panic on failure too; that is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use mim4_sdk::{CallError, Client, ConnectError, Delivery, MessageId, RequestError, Terms};
use mim4_testnet::{node_binary, Federation, StopOnDrop, DEFAULT_OPERATORS};
use nix::sys::signal::Signal;

const HOME: &str = "fi.helsinki";
const REGISTER: &str = "fi.incomeregister";
const SERVICE: &str = "fi.helsinki/early-education";
const PURPOSE: &str = "dpv:ServiceProvision";
/// A subject of the income register's sample data (`testnet/data/`).
const PARENT: &str = "fi:hetu:010180-123N";

/// Helsinki and the income register, running and answering.
async fn two_nodes() -> (tempfile::TempDir, StopOnDrop) {
    let dir = tempfile::tempdir().unwrap();
    let node_bin = node_binary::find(None).unwrap();
    let mut nodes =
        StopOnDrop::new(Federation::create(dir.path(), &DEFAULT_OPERATORS[..2], node_bin).unwrap());
    assert_eq!(
        nodes
            .operators()
            .iter()
            .map(|o| o.id.as_str())
            .collect::<Vec<_>>(),
        [HOME, REGISTER]
    );
    nodes.start_all().unwrap();
    for id in [HOME, REGISTER] {
        nodes.wait_ready(id, Duration::from_secs(60)).await.unwrap();
    }
    (dir, nodes)
}

/// A client of Helsinki's node with the credential of `client`.
async fn client(nodes: &Federation, client: &str) -> Client {
    let op = nodes.operator(HOME).unwrap();
    Client::connect(&op.api_url(), &op.credential(client).unwrap())
        .await
        .unwrap()
}

/// Each cause of failure gets its own variant: a URL that is not one, a node
/// that is not there, a credential that cannot be a header, one the node does
/// not know, a role that may not make the call, a message that does not
/// exist, a recipient that is not a member, an attribute not in the
/// catalogue, and a request nobody consented to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cause_of_failure_has_its_own_error() {
    let (_dir, nodes) = two_nodes().await;
    let url = nodes.operator(HOME).unwrap().api_url();

    let err = Client::connect("not a url", "x").await.unwrap_err();
    assert!(matches!(err, ConnectError::InvalidUrl { .. }), "{err}");
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let err = Client::connect(&format!("http://{closed}"), "x")
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::Unreachable { .. }), "{err}");
    let err = Client::connect(&url, "mim4:admin:\u{1}").await.unwrap_err();
    assert!(matches!(err, ConnectError::InvalidCredential), "{err}");

    let stranger = Client::connect(&url, "mim4:admin:not-the-secret")
        .await
        .unwrap();
    let err = stranger.status().await.unwrap_err();
    assert!(matches!(err, CallError::Unauthenticated(_)), "{err}");

    let service = client(&nodes, "early-education").await;
    let err = service.install_trust_list(vec![1, 2, 3]).await.unwrap_err();
    assert!(matches!(err, CallError::PermissionDenied(_)), "{err}");

    let admin = nodes.admin(HOME).await.unwrap();
    let err = admin.outgoing(MessageId([9; 16])).await.unwrap_err();
    assert!(matches!(err, CallError::NotFound(_)), "{err}");
    let err = admin
        .send_message("xx.nowhere", "hello", "to no one")
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::NotFound(_)), "{err}");

    let request = || service.request(PARENT).service(SERVICE).purpose(PURPOSE);
    let err = request()
        .attributes(["income.shoe_size"])
        .send()
        .await
        .unwrap_err();
    assert!(matches!(err, RequestError::Invalid(_)), "{err}");
    let err = request()
        .attributes(["income.gross_monthly"])
        .send()
        .await
        .unwrap_err();
    assert!(matches!(err, RequestError::Denied(_)), "{err}");
}

/// A memo to a receiver that is down is stored and acknowledged;
/// `wait_delivered` then times out with the attempts so far, and once the
/// receiver is back it returns the delivery with the receiver's signed
/// receipt, and the receiver lists the memo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_delivered_outlasts_a_receiver_that_was_down() {
    let (_dir, mut nodes) = two_nodes().await;
    assert!(nodes
        .stop(REGISTER, Signal::SIGTERM, Duration::from_secs(10))
        .unwrap());
    let admin = nodes.admin(HOME).await.unwrap();
    let id = admin
        .send_message(REGISTER, "hello", "while you were down")
        .await
        .unwrap();
    let err = admin
        .wait_delivered(id, Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::Timeout(_)), "{err}");
    assert_eq!(admin.outgoing(id).await.unwrap().state, Delivery::Pending);

    nodes.start(REGISTER).unwrap();
    nodes
        .wait_ready(REGISTER, Duration::from_secs(60))
        .await
        .unwrap();
    let delivered = admin
        .wait_delivered(id, Duration::from_secs(90))
        .await
        .unwrap();
    assert_eq!(delivered.state, Delivery::Delivered);
    assert!(delivered.attempts >= 1);
    assert!(!delivered.receipt.is_empty(), "a signed receipt");
    let received = nodes
        .admin(REGISTER)
        .await
        .unwrap()
        .messages(0, 100)
        .await
        .unwrap();
    let texts: Vec<String> = received
        .iter()
        .filter_map(|m| m.memo.as_ref().map(|memo| memo.text.clone()))
        .collect();
    assert_eq!(texts, ["while you were down"]);
}

/// With a consent granted, a data request with an idempotency key is answered
/// once: the same key again gets the stored answer (same request id, same
/// value, same moment of reading), a new key a new reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_an_idempotency_key_is_answered_once() {
    let (_dir, nodes) = two_nodes().await;
    let service = client(&nodes, "early-education").await;
    let citizen_app = client(&nodes, "citizen-app").await;
    let terms = Terms::consent(PARENT, HOME, SERVICE, REGISTER)
        .read("income.gross_monthly")
        .purpose(PURPOSE)
        .build();
    let consent = service.request_consent(terms).await.unwrap();
    citizen_app.grant(consent, PARENT, None).await.unwrap();

    let request = || {
        service
            .request(PARENT)
            .service(SERVICE)
            .purpose(PURPOSE)
            .attributes(["income.gross_monthly"])
    };
    // The grant travels to the register through the outbox: ask without a key
    // until it has arrived (a keyed request that was denied stays denied: its
    // answer is stored too).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match request().send().await {
            Err(RequestError::Denied(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => break other.map(drop).unwrap(),
        }
    }
    let ask = |key: [u8; 16]| request().idempotency_key(key).send();
    let first = ask([1; 16]).await.unwrap();
    let value = first.value("income.gross_monthly").unwrap();
    assert_eq!(value.value, serde_json::json!(2100));
    assert_eq!(value.source, REGISTER);
    assert_eq!(first.request_id, vec![1; 16]);

    tokio::time::sleep(Duration::from_millis(20)).await;
    let again = ask([1; 16]).await.unwrap();
    assert_eq!(again.request_id, first.request_id);
    assert_eq!(again.values, first.values, "the stored answer");

    let other = ask([2; 16]).await.unwrap();
    assert_eq!(other.request_id, vec![2; 16]);
    let read_again = other.value("income.gross_monthly").unwrap();
    assert_eq!(read_again.value, value.value);
    assert!(
        read_again.retrieved_at_ms > value.retrieved_at_ms,
        "a new key is a new reading"
    );
}
