//! Messages between real nodes: receipts, restarts, trust-list spread.

use std::time::Duration;

use mim4_sdk::Delivery;

use crate::util::{eventually, TestNet, Transports};

/// Every pair of three nodes exchanges a memo, each gets a verified receipt,
/// and each recipient lists exactly the memos sent to it.
async fn every_pair_exchanges_a_memo_with_a_receipt(transports: Transports) {
    let mut net = TestNet::over(3, transports);
    net.start_all().await;
    let mut sent = Vec::new();
    for from in 0..3 {
        let client = net.admin(from).await;
        for to in (0..3).filter(|&to| to != from) {
            let id = client
                .send_message(net.id(to).as_str(), "hello", &format!("{from}->{to}"))
                .await
                .unwrap();
            sent.push((client.clone(), id));
        }
    }
    for (client, id) in sent {
        let outgoing = client
            .wait_delivered(id, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(outgoing.state, Delivery::Delivered);
        assert!(!outgoing.receipt.is_empty());
    }
    for to in 0..3 {
        let messages = net.admin(to).await.messages(0, 100).await.unwrap();
        assert_eq!(messages.len(), 2, "node {to} got {messages:?}");
    }
    net.shutdown().await;
}

/// A message sent while the recipient is down is delivered once it starts,
/// and the sender's outbox survives its own restart in between.
async fn outbox_delivers_after_the_recipient_and_the_sender_restart(transports: Transports) {
    let mut net = TestNet::over(2, transports);
    net.start(0).await;
    let id = net
        .admin(0)
        .await
        .send_message(net.id(1).as_str(), "queued", "while you were away")
        .await
        .unwrap();
    net.stop(0).await;
    net.start(0).await;
    net.start(1).await;
    let client = net.admin(0).await;
    let outgoing = client
        .wait_delivered(id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(outgoing.state, Delivery::Delivered);
    assert!(outgoing.attempts >= 1);
    let received = net.admin(1).await.messages(0, 10).await.unwrap();
    assert_eq!(received.len(), 1);
    net.shutdown().await;
}

/// A newer trust list installed at one node reaches the others, and a member
/// suspended in it is refused by all of them.
async fn trust_list_spreads_and_suspension_takes_effect(transports: Transports) {
    let mut net = TestNet::over(3, transports);
    net.start_all().await;
    let v2 = net.sign_next(|draft| {
        draft.member_mut("se.stockholm").unwrap().status = "suspended".into();
    });
    let version = net.admin(0).await.install_trust_list(v2).await.unwrap();
    assert_eq!(version, 2);
    for i in 0..3 {
        let what = format!("node {i} on trust list v2");
        net.until_trust_version(i, 2, &what, Duration::from_secs(60))
            .await;
    }
    // The suspended member's message is refused by the recipient and stays pending.
    let id = net
        .admin(2)
        .await
        .send_message(net.id(0).as_str(), "still here?", "")
        .await
        .unwrap();
    let client = net.admin(2).await;
    let outgoing = eventually("a refused attempt", Duration::from_secs(60), || {
        let client = client.clone();
        async move {
            let o = client.outgoing(id).await.ok()?;
            o.last_error.is_some().then_some(o)
        }
    })
    .await;
    assert_eq!(outgoing.state, Delivery::Pending);
    let error = outgoing.last_error.unwrap();
    assert!(error.contains("suspended"), "{error}");
    // And the others no longer deliver to it.
    let refused = net
        .admin(0)
        .await
        .send_message("se.stockholm", "x", "")
        .await
        .unwrap_err();
    assert!(
        matches!(refused, mim4_sdk::CallError::NotFound(_)),
        "{refused}"
    );
    net.shutdown().await;
}

/// A stopped node has released its database when `shutdown` returns, even
/// while a peer still holds a connection to it and an API client one to its
/// API: the same folder opens again at once (no retry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_the_database_while_connections_are_open() {
    let mut net = TestNet::new(2);
    net.start(0).await;
    let mut peer = net.peer_client(1, 0);
    peer.fetch_trust_list(mim4_proto::v1::FetchTrustListRequest {})
        .await
        .unwrap();
    let admin = net.admin(0).await;
    admin.status().await.unwrap();
    net.stop(0).await;
    let config = &net.configs[0];
    let key = mim4_node::identity::open_storage_key(
        &mim4_node::identity::storage_key_file(&config.key_file),
        &config.data_dir,
    )
    .unwrap();
    let reopened = mim4_node::store::Store::open(&config.data_dir, &key);
    assert!(reopened.is_ok(), "{:?}", reopened.err());
    drop(reopened);
    // And the node itself starts again on it.
    net.start(0).await;
    admin.status().await.unwrap();
    net.shutdown().await;
    drop(peer);
}

over_transports!(
    every_pair_exchanges_a_memo_with_a_receipt,
    outbox_delivers_after_the_recipient_and_the_sender_restart,
    trust_list_spreads_and_suspension_takes_effect,
);
