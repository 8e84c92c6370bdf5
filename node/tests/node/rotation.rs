//! Key rotation without downtime: governance adds a second key for an
//! operator, the operator restarts on it while peers still accept the old
//! one, and a later trust list ends the old key.

use std::time::Duration;

use mim4_node::clock::now_ms;
use mim4_node::core::delivery::SenderContext;
use mim4_node::core::envelope::{Memo, Payload};
use mim4_node::core::ids::MessageId;
use mim4_node::core::keys::SecretKey;
use mim4_node::core::wire;
use mim4_node::identity;
use mim4_node::trust_draft::DraftKey;
use mim4_proto::v1 as pb;
use tonic::Code;

use crate::util::{eventually, until_delivered, TestNet, OPERATORS};

/// How long any wait in this test may take before it fails.
const DEADLINE: Duration = Duration::from_secs(60);

/// Installs `list` at node 0 through its admin API and waits until every
/// node reports `version`.
async fn install_everywhere(net: &TestNet, list: Vec<u8>, version: u64) {
    assert_eq!(
        net.admin(0).await.install_trust_list(list).await.unwrap(),
        version
    );
    for i in 0..net.nodes.len() {
        let client = net.admin(i).await;
        eventually(
            &format!("node {i} on trust list v{version}"),
            DEADLINE,
            || {
                let client = client.clone();
                async move {
                    let status = client.status().await.ok()?;
                    (status.trust_list_version == version).then_some(())
                }
            },
        )
        .await;
    }
}

/// Sends a memo from node 0 to node 1 through the API, waits for its receipt,
/// and returns the id of the key that signed the envelope as sent.
async fn memo_through_the_api(net: &TestNet, subject: &str) -> String {
    let client = net.admin(0).await;
    let id = client
        .send_message(net.id(1).as_str(), subject, "")
        .await
        .unwrap();
    let outgoing = until_delivered(&client, id, DEADLINE).await;
    assert!(!outgoing.receipt.is_empty());
    let listed = net.admin(1).await.messages(0, 1000).await.unwrap();
    assert!(
        listed.iter().any(|m| m.message_id == id.0),
        "memo {id} not listed at node 1"
    );
    wire::decode_signed_envelope(&outgoing.envelope)
        .unwrap()
        .key_id
        .to_string()
}

/// Delivers a memo from node 0 to node 1 signed by hand with `key`, over a
/// TLS connection authenticated with node 0's configured (current) key.
async fn deliver_signed_by(net: &TestNet, key: &SecretKey) -> Result<Vec<u8>, tonic::Status> {
    let sealed = SenderContext {
        me: &net.id(0),
        rulebook_version: "mim4-rulebook-1.0",
        trust_list_version: net
            .admin(0)
            .await
            .status()
            .await
            .unwrap()
            .trust_list_version,
        lifetime_ms: 60 * 60 * 1000,
    }
    .envelope(
        MessageId::from_bytes(rand::random()),
        net.id(1),
        now_ms(),
        None,
        Payload::Memo(Memo {
            subject: "signed by hand".into(),
            text: String::new(),
        }),
    )
    .seal(key);
    let mut client = net.peer_client(0, 1);
    client
        .deliver(pb::DeliverRequest {
            envelope: sealed.bytes,
        })
        .await
        .map(|response| response.into_inner().receipt)
}

/// An operator rotates its key without downtime: with both keys listed (v2)
/// it restarts on the new key and its memos are delivered, while envelopes
/// signed with the old key are still accepted; once v3 ends the old key,
/// those are refused as Unauthenticated ("not valid") and the new key still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_overlaps_then_ends_the_old_key() {
    let mut net = TestNet::new(2);
    net.start_all().await;
    let old_key = SecretKey::from_bytes(&net.keys[0].to_bytes()[..]).unwrap();
    let new_key = SecretKey::generate(&mut rand::rngs::OsRng);
    assert_eq!(
        memo_through_the_api(&net, "before").await,
        old_key.public().key_id().to_string()
    );

    // v2: a second key for node 0, valid from now, the old one unchanged.
    let v2 = net.sign_next(|draft| {
        draft.member_mut(OPERATORS[0]).unwrap().keys.push(DraftKey {
            public_key: new_key.public().to_hex(),
            not_before_ms: now_ms(),
            not_after_ms: None,
        });
    });
    install_everywhere(&net, v2, 2).await;

    // Restart node 0 on the new key, from a new key file.
    net.stop(0).await;
    let key_file = net.dir.path().join(OPERATORS[0]).join("operator-2.key");
    identity::write_secret_key(&key_file, &new_key).unwrap();
    net.configs[0].key_file = key_file;
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

    let signer = memo_through_the_api(&net, "after restart").await;
    assert_eq!(signer, new_key.public().key_id().to_string());
    let receipt = deliver_signed_by(&net, &old_key).await.unwrap();
    assert!(!receipt.is_empty());

    // v3: the old key ended a second ago.
    let old_hex = old_key.public().to_hex();
    let v3 = net.sign_next(|draft| {
        let member = draft.member_mut(OPERATORS[0]).unwrap();
        let old = member
            .keys
            .iter_mut()
            .find(|k| k.public_key == old_hex)
            .unwrap();
        old.not_after_ms = Some(now_ms() - 1000);
    });
    install_everywhere(&net, v3, 3).await;

    let status = deliver_signed_by(&net, &old_key).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("not valid"), "{status:?}");
    assert!(
        status
            .message()
            .contains(&old_key.public().key_id().to_string()),
        "{status:?}"
    );

    let signer = memo_through_the_api(&net, "after the old key ended").await;
    assert_eq!(signer, new_key.public().key_id().to_string());

    // Restarting node 0 on the ended key is refused at start, with the reason.
    net.stop(0).await;
    let mut config = net.configs[0].clone();
    config.key_file = net.dir.path().join(OPERATORS[0]).join("operator.key");
    let error = mim4_node::start(config).await.unwrap_err().to_string();
    assert!(error.contains("outside its validity window"), "{error}");
    net.shutdown().await;
}

/// No message fails across a rotation with overlap: node 1 keeps sending to
/// node 0 the whole time (while v2 adds node 0's new key, node 0 restarts on
/// it, and v3 ends the old key once node 0's outbox has drained), and node 0
/// sends before and after its restart. Every send is acknowledged, every memo
/// delivered with a verified receipt and applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sending_continuously_across_a_rotation_fails_nothing() {
    let mut net = TestNet::new(2);
    net.start_all().await;
    let new_key = SecretKey::generate(&mut rand::rngs::OsRng);
    let old_hex = net.keys[0].public().to_hex();

    // Node 1 sends a memo every 20 ms until told to stop.
    let stop = tokio_util::sync::CancellationToken::new();
    let sender = net.admin(1).await;
    let to_node0 = tokio::spawn({
        let stop = stop.clone();
        let sender = sender.clone();
        async move {
            let mut ids = Vec::new();
            // Bounded: at most 2,000 memos, or until stopped.
            for i in 0..2_000 {
                if stop.is_cancelled() {
                    break;
                }
                let id = sender
                    .send_message(OPERATORS[0], &format!("continuous {i}"), "")
                    .await
                    .expect("node 1 acknowledges every send");
                ids.push(id);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            ids
        }
    });
    let mut from_node0 = Vec::new();
    for i in 0..5 {
        from_node0.push(send_from_node0(&net, &format!("before {i}")).await);
    }

    let v2 = net.sign_next(|draft| {
        draft.member_mut(OPERATORS[0]).unwrap().keys.push(DraftKey {
            public_key: new_key.public().to_hex(),
            not_before_ms: now_ms(),
            not_after_ms: None,
        });
    });
    install_everywhere(&net, v2, 2).await;
    for i in 0..5 {
        from_node0.push(send_from_node0(&net, &format!("on v2, old key {i}")).await);
    }
    // Restart on the new key; node 1's memos wait in its outbox meanwhile.
    net.stop(0).await;
    let key_file = net.dir.path().join(OPERATORS[0]).join("operator-2.key");
    identity::write_secret_key(&key_file, &new_key).unwrap();
    net.configs[0].key_file = key_file;
    net.start(0).await;
    for i in 0..5 {
        from_node0.push(send_from_node0(&net, &format!("on v2, new key {i}")).await);
    }
    // Overlap ends only once nothing signed with the old key is pending.
    let node0 = net.admin(0).await;
    for id in &from_node0 {
        until_delivered(&node0, *id, DEADLINE).await;
    }
    let v3 = net.sign_next(|draft| {
        let member = draft.member_mut(OPERATORS[0]).unwrap();
        let old = member
            .keys
            .iter_mut()
            .find(|k| k.public_key == old_hex)
            .unwrap();
        old.not_after_ms = Some(now_ms() - 1000);
    });
    install_everywhere(&net, v3, 3).await;
    for i in 0..5 {
        from_node0.push(send_from_node0(&net, &format!("on v3 {i}")).await);
    }
    stop.cancel();
    let to_node0 = to_node0.await.unwrap();
    assert!(!to_node0.is_empty());

    for (client, ids, receiver) in [(&sender, &to_node0, 0), (&node0, &from_node0, 1)] {
        for id in ids {
            until_delivered(client, *id, DEADLINE).await;
        }
        // All pages (bounded: at most a few thousand memos were sent).
        let admin = net.admin(receiver).await;
        let mut received = Vec::new();
        for _ in 0..100 {
            let after = received.last().map_or(0, |m: &pb::ReceivedMessage| m.seq);
            let page = admin.messages(after, 1000).await.unwrap();
            let done = page.len() < 1000;
            received.extend(page);
            if done {
                break;
            }
        }
        for id in ids {
            let count = received.iter().filter(|m| m.message_id == id.0).count();
            assert_eq!(count, 1, "memo {id} applied once at node {receiver}");
        }
    }
    net.shutdown().await;
}

/// Sends a memo from node 0 to node 1 through node 0's API; the send must be acknowledged.
async fn send_from_node0(net: &TestNet, subject: &str) -> mim4_sdk::MessageId {
    net.admin(0)
        .await
        .send_message(OPERATORS[1], subject, "")
        .await
        .expect("node 0 acknowledges every send")
}

/// A revoked member is refused by every node within a minute of the
/// revocation being installed at one of them, with the default refresh
/// interval, a node that was down at the time included (it gets the list by
/// the retried offer or by its own refresh, whichever comes first): new
/// connections with the member's certificate fail at the handshake, and one
/// it opened before is refused request by request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_is_in_force_everywhere_within_a_minute_with_default_intervals() {
    const MINUTE: Duration = Duration::from_secs(60);
    let mut net = TestNet::new(4);
    assert_eq!(
        net.configs[0].limits.trust_refresh_interval_ms,
        mim4_node::limits::TRUST_REFRESH_INTERVAL_MS_DEFAULT
    );
    for i in 0..3 {
        net.start(i).await;
    }
    let revoked = 3;
    let (revoked_id, revoked_key) = (
        net.id(revoked),
        SecretKey::from_bytes(&net.keys[revoked].to_bytes()[..]).unwrap(),
    );
    let mut opened_before = net.peer_client_with_key(&revoked_id, &revoked_key, 1);
    opened_before
        .fetch_trust_list(pb::FetchTrustListRequest {})
        .await
        .expect("served while active");

    net.stop(2).await;
    let v2 = net.sign_next(|draft| {
        draft.member_mut(OPERATORS[revoked]).unwrap().status = "revoked".into();
    });
    assert_eq!(net.admin(0).await.install_trust_list(v2).await.unwrap(), 2);
    let installed = tokio::time::Instant::now();
    // Node 2 misses the first offers.
    tokio::time::sleep(Duration::from_secs(3)).await;
    net.start(2).await;
    for i in 0..3 {
        let left = MINUTE.saturating_sub(installed.elapsed());
        net.until_trust_version(i, 2, &format!("node {i} on the revocation"), left)
            .await;
        eprintln!(
            "node {i} holds the revocation {} ms after it was installed",
            installed.elapsed().as_millis()
        );
    }
    for i in [1, 2] {
        let status = net
            .peer_client_with_key(&revoked_id, &revoked_key, i)
            .fetch_trust_list(pb::FetchTrustListRequest {})
            .await
            .expect_err("a revoked member's new connection is refused");
        let refused_by_tls = std::error::Error::source(&status)
            .is_some_and(|source| source.is::<tonic::transport::Error>());
        assert!(refused_by_tls, "node {i}: {status:?}");
    }
    let status = opened_before
        .fetch_trust_list(pb::FetchTrustListRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("revoked"), "{status:?}");
    net.shutdown().await;
}
