//! Real `mim4-node` processes on loopback, killed with SIGKILL mid-stream.
//!
//! Results are counted by `mim4_testnet::checker` as Jepsen's total-queue
//! checker does: attempted, acknowledged, applied; lost = acknowledged but not
//! applied, duplicated = applied more than once, unexpected = applied but never
//! attempted. The applied set is read from every node's sled store offline,
//! after the nodes have stopped, not from the nodes' own counters. The crash
//! loop (`tests/crashloop.rs`) repeats this with seeded kill schedules.

// Helpers outside #[test] functions panic on failure too; that is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mim4_node::store::OutgoingState;
use mim4_testnet::checker::{self, Ledger};
use mim4_testnet::{node_binary, Federation, StopOnDrop, Transports, DEFAULT_OPERATORS};

/// Three nodes; every pair exchanges memos while two senders stream to the
/// receiver, which is killed with SIGKILL mid-stream and restarted. In the
/// end every acknowledged memo is applied exactly once, none is lost and none
/// is unexpected, and every sender holds a receipt for each.
/// The same test code runs over gRPC, libp2p and a mixed federation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_killed_mid_stream_loses_and_duplicates_nothing_over_grpc() {
    receiver_killed_mid_stream(Transports::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_killed_mid_stream_loses_and_duplicates_nothing_over_libp2p() {
    receiver_killed_mid_stream(Transports::Libp2p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_killed_mid_stream_loses_and_duplicates_nothing_in_a_mixed_federation() {
    receiver_killed_mid_stream(Transports::Mixed).await;
}

async fn receiver_killed_mid_stream(transports: Transports) {
    const PER_SENDER: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let node_bin = node_binary::find(None).unwrap();
    // Stops the nodes on a failed assertion too: they run in their own process group.
    let mut federation = StopOnDrop::new(
        Federation::create_over(dir.path(), &DEFAULT_OPERATORS[..3], node_bin, transports).unwrap(),
    );
    federation.start_all().unwrap();
    let ids: Vec<String> = federation
        .operators()
        .iter()
        .map(|o| o.id.clone())
        .collect();
    for id in &ids {
        federation
            .wait_ready(id, Duration::from_secs(60))
            .await
            .unwrap();
    }
    let receiver = ids[1].clone();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut sent_ids = Vec::new();

    // Every pair first exchanges one memo.
    for from in &ids {
        let client = federation.admin(from).await.unwrap();
        for to in ids.iter().filter(|to| *to != from) {
            let tag = format!("pair {from}->{to}");
            ledger.lock().unwrap().attempted.insert(tag.clone());
            let id = client.send_message(to, "pair", &tag).await.unwrap();
            ledger.lock().unwrap().acknowledged.insert(tag);
            sent_ids.push((client.clone(), id));
        }
    }

    // Two senders stream to the receiver; the API call returns once the memo is durable
    // in the sender's outbox, which is what "acknowledged" means here.
    let mut senders = tokio::task::JoinSet::new();
    for from in [ids[0].clone(), ids[2].clone()] {
        let client = federation.admin(&from).await.unwrap();
        let ledger = ledger.clone();
        let receiver = receiver.clone();
        senders.spawn(async move {
            let mut sent = Vec::new();
            for n in 0..PER_SENDER {
                let tag = format!("stream {from} #{n}");
                ledger.lock().unwrap().attempted.insert(tag.clone());
                if let Ok(id) = client.send_message(&receiver, "stream", &tag).await {
                    ledger.lock().unwrap().acknowledged.insert(tag);
                    sent.push((client.clone(), id));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            sent
        });
    }

    // Kill the receiver once a third of the stream is acknowledged, keep it
    // down while more piles up in the outboxes, then restart it.
    let threshold = PER_SENDER * 2 / 3;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while ledger.lock().unwrap().acknowledged.len() < threshold {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stream did not start"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(federation.kill(&receiver).unwrap(), "receiver was running");
    tokio::time::sleep(Duration::from_millis(300)).await;
    federation.start(&receiver).unwrap();
    federation
        .wait_ready(&receiver, Duration::from_secs(60))
        .await
        .unwrap();

    while let Some(sent) = senders.join_next().await {
        sent_ids.extend(sent.unwrap());
    }
    for (client, id) in &sent_ids {
        let outgoing = client
            .wait_delivered(*id, Duration::from_secs(90))
            .await
            .unwrap();
        assert_eq!(outgoing.state, mim4_sdk::Delivery::Delivered, "{id}");
    }
    assert_eq!(federation.stop_all().unwrap(), 3);

    // Offline check of every store.
    let ledger = ledger.lock().unwrap().clone();
    let report = checker::check(&federation, &ledger).unwrap();
    println!("{}", report.summary());
    assert!(
        report.is_clean(),
        "{:?}: {:#?}",
        report.violations(),
        report.samples
    );
    assert_eq!(
        report.databases_opened, 3,
        "every database opens after the crash"
    );
    assert_eq!(
        ledger.acknowledged.len(),
        6 + 2 * PER_SENDER,
        "every send was acknowledged"
    );
    assert_eq!(report.applied, ledger.acknowledged.len());

    // Every sender's outbox holds a receipt for every message, read offline too.
    for id in &ids {
        let store =
            checker::open_store(&federation.operator(id).unwrap().dir.join("data")).unwrap();
        for (message_id, outgoing) in store.all_outgoing().unwrap() {
            assert_eq!(
                outgoing.state,
                OutgoingState::Delivered,
                "{id} {message_id}"
            );
            assert!(
                outgoing.receipt.is_some(),
                "{id} {message_id} has no receipt"
            );
        }
    }
}
