//! The clock-skew suite: envelopes whose sender's clock is off by a range of
//! offsets, sent to a running node over the real peer transport. Inside the
//! window (created up to the skew bound in the future, not yet expired) they
//! are applied; outside it they are refused with their own reason
//! (`clock_skew` for the future, `expired` for the past) and leave no trace:
//! the same message id sent again with a correct clock is applied, not
//! refused as a replay. The summary goes to
//! `$CARGO_TARGET_DIR/reliability/clock-skew.json` (`target/` by default);
//! `scripts/clock-skew.sh` runs it.

use std::collections::BTreeMap;

use mim4_node::clock::now_ms;
use mim4_node::core::envelope::{Envelope, Memo, Payload, PROTOCOL_VERSION};
use mim4_node::core::ids::MessageId;
use mim4_node::limits;
use mim4_node::transport::grpc::REASON_METADATA_KEY;
use mim4_proto::v1 as pb;
use rand::{Rng as _, SeedableRng as _};
use serde_json::json;
use tonic::Code;

use crate::util::TestNet;

const SECOND_MS: i64 = 1_000;
const MINUTE_MS: i64 = 60 * SECOND_MS;
const HOUR_MS: i64 = 60 * MINUTE_MS;
/// Lifetime of every envelope of the suite.
const LIFETIME_MS: i64 = HOUR_MS;
/// Distance kept from each boundary, far above the time a case takes.
const MARGIN_MS: i64 = 5 * SECOND_MS;

/// What a case must produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Applied,
    Refused(&'static str),
}

/// The sender clock offsets tried, each with its verdict under the node's
/// default bound (skew `S`, lifetime one hour).
fn cases() -> Vec<(&'static str, i64, Expect)> {
    let skew = i64::try_from(limits::CLOCK_SKEW_MS_DEFAULT).unwrap();
    let skewed = Expect::Refused("clock_skew");
    let expired = Expect::Refused("expired");
    vec![
        ("in sync", 0, Expect::Applied),
        ("1 s ahead", SECOND_MS, Expect::Applied),
        ("S/2 ahead", skew / 2, Expect::Applied),
        ("just inside S ahead", skew - MARGIN_MS, Expect::Applied),
        ("just beyond S ahead", skew + MARGIN_MS, skewed),
        ("2S ahead", 2 * skew, skewed),
        ("1 h ahead", HOUR_MS, skewed),
        ("1 day ahead", 24 * HOUR_MS, skewed),
        ("1 s behind", -SECOND_MS, Expect::Applied),
        ("S behind", -skew, Expect::Applied),
        ("30 min behind", -30 * MINUTE_MS, Expect::Applied),
        (
            "just inside lifetime behind",
            -(LIFETIME_MS - MARGIN_MS),
            Expect::Applied,
        ),
        (
            "just beyond lifetime behind",
            -(LIFETIME_MS + MARGIN_MS),
            expired,
        ),
        ("1 day behind", -24 * HOUR_MS, expired),
    ]
}

fn memo(net: &TestNet, id: MessageId, created_at_ms: u64, label: &str) -> Envelope {
    Envelope {
        protocol_version: PROTOCOL_VERSION,
        rulebook_version: "mim4-rulebook-1.0".into(),
        trust_list_version: 1,
        message_id: id,
        sender: net.id(1),
        recipient: net.id(0),
        created_at_ms,
        expires_at_ms: created_at_ms + u64::try_from(LIFETIME_MS).unwrap(),
        in_reply_to: None,
        payload: Payload::Memo(Memo {
            subject: "clock skew".into(),
            text: label.into(),
        }),
    }
}

/// `Ok(())` if applied, else the gRPC code and `mim4-reason`.
async fn deliver(
    client: &mut pb::operator_peer_client::OperatorPeerClient<tonic::transport::Channel>,
    envelope: Vec<u8>,
) -> Result<(), (Code, String)> {
    match client.deliver(pb::DeliverRequest { envelope }).await {
        Ok(_) => Ok(()),
        Err(status) => Err((
            status.code(),
            status
                .metadata()
                .get(REASON_METADATA_KEY)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned(),
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_skew_inside_the_window_is_accepted_outside_refused_without_a_trace() {
    let mut net = TestNet::new(2);
    net.start(0).await;
    let mut client = net.peer_client(1, 0);
    const SEED: u64 = 0x5eed_c10c;
    let started = std::time::Instant::now();
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
    let sender_key = mim4_node::identity::read_secret_key(&net.configs[1].key_file).unwrap();
    let mut results = Vec::new();
    let mut applied_ids = Vec::new();
    for (label, offset_ms, expect) in cases() {
        let id = MessageId::from_bytes(rng.gen());
        let case_started = std::time::Instant::now();
        let now = i64::try_from(now_ms()).unwrap();
        let created = u64::try_from(now + offset_ms).unwrap();
        let outcome = deliver(
            &mut client,
            memo(&net, id, created, label).seal(&sender_key).bytes,
        )
        .await;
        let got = match &outcome {
            Ok(()) => Expect::Applied,
            Err((Code::FailedPrecondition, reason)) if reason == "clock_skew" => {
                Expect::Refused("clock_skew")
            }
            Err((Code::FailedPrecondition, reason)) if reason == "expired" => {
                Expect::Refused("expired")
            }
            Err(other) => panic!("{label}: unexpected refusal {other:?}"),
        };
        assert_eq!(got, expect, "{label} (offset {offset_ms} ms)");
        // A refused envelope left nothing behind: its id, sent again with a
        // clock in sync, is applied (a recorded id would be refused as a replay).
        let resent = match got {
            Expect::Applied => {
                applied_ids.push(id);
                None
            }
            Expect::Refused(_) => {
                let again = memo(&net, id, now_ms(), label).seal(&sender_key).bytes;
                let outcome = deliver(&mut client, again).await;
                assert_eq!(
                    outcome,
                    Ok(()),
                    "{label}: the id was kept after the refusal"
                );
                applied_ids.push(id);
                Some(true)
            }
        };
        results.push(json!({
            "case": label,
            "offset_ms": offset_ms,
            "outcome": match got { Expect::Applied => "applied".to_owned(), Expect::Refused(r) => format!("refused: {r}") },
            "same_id_in_sync_applied_after": resent,
            "ms": case_started.elapsed().as_secs_f64() * 1e3,
        }));
    }

    // Exactly the applied envelopes are in the node's inbox, each once.
    let admin = net.admin(0).await;
    let listed = admin.messages(0, 1_000).await.unwrap();
    let mut counts: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    for message in &listed {
        *counts.entry(message.message_id.clone()).or_default() += 1;
    }
    assert_eq!(listed.len(), applied_ids.len(), "{listed:?}");
    for id in &applied_ids {
        assert_eq!(counts.get(id.as_bytes().as_slice()), Some(&1), "{id}");
    }

    let refused = results
        .iter()
        .filter(|r| {
            r["outcome"]
                .as_str()
                .is_some_and(|o| o.starts_with("refused"))
        })
        .count();
    let summary = json!({
        "suite": "clock-skew",
        "seed": SEED,
        "seconds": started.elapsed().as_secs_f64(),
        "clock_skew_ms_max": limits::CLOCK_SKEW_MS_DEFAULT,
        "lifetime_ms": LIFETIME_MS,
        "cases": results.len(),
        "applied_first_time": results.len() - refused,
        "refused": refused,
        "inbox_after": listed.len(),
        "results": results,
    });
    let path = crate::util::reliability_dir().join("clock-skew.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&summary).unwrap()).unwrap();
    eprintln!(
        "clock skew: {} cases, {} refused (each id applied once when resent in sync); summary in {}",
        summary["cases"],
        refused,
        path.display()
    );
    net.shutdown().await;
}
