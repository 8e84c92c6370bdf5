//! Hostile input on the peer port: envelopes built and sent by hand to a
//! running node's `OperatorPeer` server. Each refusal must carry the precise
//! gRPC code and a reason a person can read, and the node must go on serving
//! afterwards (its status answers and a normal memo is still delivered).

use std::time::Duration;

use mim4_node::clock::now_ms;
use mim4_node::core::delivery::{self, Expected, SenderContext};
use mim4_node::core::envelope::{Envelope, Memo, Payload, SignedEnvelope};
use mim4_node::core::ids::{MessageId, OperatorId};
use mim4_node::core::keys::{SecretKey, ENVELOPE_DOMAIN};
use mim4_node::core::wire;
use mim4_node::limits;
use mim4_proto::v1 as pb;
use tonic::Code;

use crate::util::{until_delivered, TestNet};

/// How long any wait in these tests may take before it fails.
const DEADLINE: Duration = Duration::from_secs(60);

const HOUR_MS: u64 = 60 * 60 * 1000;

/// A memo envelope from `sender` to `recipient`, created at `created_at_ms`
/// and expiring `lifetime_ms` later, with a fresh random id.
fn memo(
    sender: &OperatorId,
    recipient: &OperatorId,
    created_at_ms: u64,
    lifetime_ms: u64,
    text: &str,
) -> Envelope {
    SenderContext {
        me: sender,
        rulebook_version: "mim4-rulebook-1.0",
        trust_list_version: 1,
        lifetime_ms,
    }
    .envelope(
        MessageId::from_bytes(rand::random()),
        recipient.clone(),
        created_at_ms,
        None,
        Payload::Memo(Memo {
            subject: "by hand".into(),
            text: text.into(),
        }),
    )
}

/// A valid memo from node `from` to node `to`, signed with `from`'s key.
fn valid_memo(net: &TestNet, from: usize, to: usize, text: &str) -> Vec<u8> {
    memo(&net.id(from), &net.id(to), now_ms(), HOUR_MS, text)
        .seal(&net.keys[from])
        .bytes
}

/// Sends `envelope` to node `to`'s peer port as node 1 would: over TLS with
/// node 1's certificate (the envelopes here claim to come from node 1, or fail
/// verification before the sender is compared with the TLS peer).
async fn deliver(net: &TestNet, to: usize, envelope: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    let mut client = net.peer_client(1, to);
    client
        .deliver(pb::DeliverRequest { envelope })
        .await
        .map(|response| response.into_inner().receipt)
}

/// Delivers `envelope` to node 0, expects a refusal with code `expected` whose
/// message contains one of `words`, then checks that node 0 still serves.
/// Returns the refusal for further checks.
async fn check(net: &TestNet, envelope: Vec<u8>, expected: Code, words: &[&str]) -> tonic::Status {
    let status = match deliver(net, 0, envelope).await {
        Ok(receipt) => panic!(
            "hostile envelope accepted with a {}-byte receipt",
            receipt.len()
        ),
        Err(status) => status,
    };
    assert_eq!(status.code(), expected, "{status:?}");
    assert_readable(status.message(), words);
    assert_still_serving(net).await;
    status
}

/// A readable reason: one line of text that names the cause.
fn assert_readable(message: &str, words: &[&str]) {
    assert!(!message.trim().is_empty(), "empty refusal message");
    assert!(
        !message.contains('\n'),
        "multi-line refusal message: {message:?}"
    );
    let lower = message.to_lowercase();
    assert!(
        words.iter().any(|word| lower.contains(word)),
        "refusal message {message:?} mentions none of {words:?}"
    );
}

/// Node 0 answers `GetStatus`, and a memo sent by node 1 through its API is
/// delivered to node 0 and listed there.
async fn assert_still_serving(net: &TestNet) {
    let status = net.admin(0).await.status().await.unwrap();
    assert_eq!(status.operator_id, net.id(0).as_str());
    let sender = net.admin(1).await;
    let id = sender
        .send_message(net.id(0).as_str(), "still there?", "a normal memo")
        .await
        .unwrap();
    until_delivered(&sender, id, DEADLINE).await;
    let listed = net.admin(0).await.messages(0, 1000).await.unwrap();
    assert!(
        listed.iter().any(|m| m.message_id == id.0),
        "memo {id} not listed at node 0"
    );
}

/// Re-encodes a sealed envelope with another key id and signature, leaving the body as it is.
fn resigned(bytes: &[u8], signature: Vec<u8>, key: &SecretKey) -> Vec<u8> {
    let signed = wire::decode_signed_envelope(bytes).unwrap();
    wire::encode_signed_envelope(&SignedEnvelope {
        body: signed.body,
        signature,
        key_id: key.public().key_id(),
    })
}

/// An envelope that claims to come from node 1 but is signed by another key is
/// refused as unauthenticated, whether it names the forger's key or node 1's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_envelope_is_unauthenticated() {
    let mut net = TestNet::new(2);
    net.start_all().await;
    let forger = SecretKey::generate(&mut rand::rngs::OsRng);

    // Signed by the forger and naming the forger's key: the key is not node 1's.
    let own_key = memo(&net.id(1), &net.id(0), now_ms(), HOUR_MS, "forged").seal(&forger);
    let status = check(&net, own_key.bytes, Code::Unauthenticated, &["key"]).await;
    assert!(
        status.message().contains("not one of the sender's keys"),
        "{status:?}"
    );

    // Signed by the forger but naming node 1's key: the signature does not verify.
    let sealed = memo(&net.id(1), &net.id(0), now_ms(), HOUR_MS, "forged").seal(&forger);
    let body = wire::decode_signed_envelope(&sealed.bytes).unwrap().body;
    let signature = forger.sign(ENVELOPE_DOMAIN, &body).to_vec();
    let claimed_key = resigned(&sealed.bytes, signature, &net.keys[1]);
    let status = check(&net, claimed_key, Code::Unauthenticated, &["signature"]).await;
    assert!(status.message().contains("does not verify"), "{status:?}");

    let listed = net.admin(0).await.messages(0, 1000).await.unwrap();
    let forged = listed
        .iter()
        .filter(|m| m.memo.as_ref().is_some_and(|memo| memo.text == "forged"));
    assert_eq!(forged.count(), 0, "{listed:?}");
    net.shutdown().await;
}

/// A valid envelope with one byte of its body flipped (inside the memo text,
/// so the body still decodes) fails the signature check: Unauthenticated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_body_is_unauthenticated() {
    let mut net = TestNet::new(2);
    net.start_all().await;
    let marker = b"pay 100 euros";
    let mut bytes = valid_memo(&net, 1, 0, "pay 100 euros");
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker)
        .unwrap();
    // '1' -> '9': still valid UTF-8, so only the signature can tell.
    bytes[at + 4] ^= b'1' ^ b'9';
    let status = check(&net, bytes, Code::Unauthenticated, &["signature"]).await;
    assert!(status.message().contains("altered"), "{status:?}");
    net.shutdown().await;
}

/// The same valid bytes delivered twice: the first gets a receipt, the second
/// AlreadyExists with that same receipt in the details, and the recipient
/// lists the memo once. The same id with another body is AlreadyExists with
/// no receipt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_envelope_is_already_exists_with_the_first_receipt() {
    let mut net = TestNet::new(2);
    net.start_all().await;
    let envelope = memo(&net.id(1), &net.id(0), now_ms(), HOUR_MS, "once only");
    let sealed = envelope.seal(&net.keys[1]);

    let receipt = deliver(&net, 0, sealed.bytes.clone()).await.unwrap();
    assert!(!receipt.is_empty());
    // The receipt is node 0's signed acknowledgement of exactly this body.
    let trust = net.nodes[1].as_ref().unwrap().shared.trust();
    delivery::check_receipt(
        &net.id(1),
        &trust,
        net.configs[1].envelope_limits,
        &receipt,
        &Expected {
            message_id: sealed.message_id,
            recipient: &net.id(0),
            body_sha256: sealed.body_sha256,
        },
        now_ms(),
    )
    .unwrap();

    let status = check(
        &net,
        sealed.bytes,
        Code::AlreadyExists,
        &["already applied"],
    )
    .await;
    assert!(!status.details().is_empty(), "{status:?}");
    assert_eq!(status.details(), &receipt[..]);

    // Same id, different body: refused, and no receipt is handed out for it.
    let mut other = envelope.clone();
    other.payload = Payload::Memo(Memo {
        subject: "by hand".into(),
        text: "a different text".into(),
    });
    let status = check(
        &net,
        other.seal(&net.keys[1]).bytes,
        Code::AlreadyExists,
        &["different message"],
    )
    .await;
    assert!(status.details().is_empty(), "{status:?}");

    let listed = net.admin(0).await.messages(0, 1000).await.unwrap();
    let copies = listed
        .iter()
        .filter(|m| m.message_id == sealed.message_id.as_bytes())
        .count();
    assert_eq!(copies, 1, "{listed:?}");
    net.shutdown().await;
}

/// An envelope from an operator that is not in the trust list is Unauthenticated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_from_an_unknown_operator_is_unauthenticated() {
    let mut net = TestNet::new(2);
    net.start_all().await;
    let stranger = OperatorId::new("xx.stranger").unwrap();
    let key = SecretKey::generate(&mut rand::rngs::OsRng);
    let bytes = memo(&stranger, &net.id(0), now_ms(), HOUR_MS, "let me in")
        .seal(&key)
        .bytes;
    let status = check(&net, bytes, Code::Unauthenticated, &["not a member"]).await;
    assert!(status.message().contains("xx.stranger"), "{status:?}");
    net.shutdown().await;
}

/// A valid envelope from node 1 addressed to node 2, delivered to node 0, is InvalidArgument.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_addressed_to_another_node_is_invalid_argument() {
    let mut net = TestNet::new(3);
    // Node 2 only needs to be a member; it does not have to run.
    net.start(0).await;
    net.start(1).await;
    let bytes = valid_memo(&net, 1, 2, "wrong door");
    let status = check(&net, bytes, Code::InvalidArgument, &["addressed to"]).await;
    assert!(status.message().contains(net.id(2).as_str()), "{status:?}");
    net.shutdown().await;
}

/// Envelopes outside their time window: expired and created beyond the clock
/// skew are FailedPrecondition; a lifetime over the limit is InvalidArgument.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_far_future_envelopes_are_refused() {
    let mut net = TestNet::new(2);
    net.start_all().await;
    let now = now_ms();
    let cases: &[(&str, u64, u64, Code, &[&str])] = &[
        (
            "expired an hour ago",
            now - 2 * HOUR_MS,
            HOUR_MS,
            Code::FailedPrecondition,
            &["expired"],
        ),
        (
            "created an hour ahead",
            now + HOUR_MS,
            HOUR_MS,
            Code::FailedPrecondition,
            &["clock-skew"],
        ),
        (
            "lifetime over the limit",
            now,
            limits::MESSAGE_LIFETIME_MS_MAX + 1,
            Code::InvalidArgument,
            &["lifetime"],
        ),
    ];
    for &(case, created_at_ms, lifetime_ms, code, words) in cases {
        println!("case: {case}");
        let bytes = memo(&net.id(1), &net.id(0), created_at_ms, lifetime_ms, case)
            .seal(&net.keys[1])
            .bytes;
        check(&net, bytes, code, words).await;
    }
    net.shutdown().await;
}

/// A 2 MiB request is stopped by the transport's size limit (OutOfRange or
/// ResourceExhausted); an envelope just over the envelope limit but inside the
/// transport's framing room is ResourceExhausted from the node itself. The
/// node keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_refused() {
    let mut net = TestNet::new(2);
    net.start_all().await;

    let huge = vec![0x5a; 2 * 1024 * 1024];
    let status = deliver(&net, 0, huge).await.unwrap_err();
    println!("2 MiB request: {status:?}");
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{status:?}"
    );
    assert_readable(status.message(), &["too large", "more than"]);
    assert_still_serving(&net).await;

    let just_over = vec![0x5a; net.configs[0].envelope_limits.message_bytes_max + 1];
    check(&net, just_over, Code::ResourceExhausted, &["more than"]).await;
    net.shutdown().await;
}

/// Bytes that are not a signed envelope, or whose body is not an envelope, are InvalidArgument.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_are_invalid_argument() {
    let mut net = TestNet::new(2);
    net.start_all().await;
    let garbage_body = wire::encode_signed_envelope(&SignedEnvelope {
        body: b"not an envelope body".to_vec(),
        signature: vec![0; 64],
        key_id: net.keys[1].public().key_id(),
    });
    let cases: &[(&str, Vec<u8>)] = &[
        ("text", b"this is not an envelope".to_vec()),
        ("empty", Vec::new()),
        ("all ones", vec![0xff; 300]),
        ("garbage body", garbage_body),
    ];
    for (case, bytes) in cases {
        println!("case: {case}");
        check(&net, bytes.clone(), Code::InvalidArgument, &["malformed"]).await;
    }
    net.shutdown().await;
}

/// The replay window survives a restart: an envelope applied before node 0
/// stopped is refused as a replay after it starts again, with the original
/// receipt, and is still listed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_after_restart_is_refused() {
    let mut net = TestNet::new(2);
    net.start(0).await;
    let envelope = valid_memo(&net, 1, 0, "before the restart");
    let receipt = deliver(&net, 0, envelope.clone()).await.unwrap();
    net.stop(0).await;
    net.start(0).await;
    let status = deliver(&net, 0, envelope).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert!(status.message().contains("already applied"), "{status:?}");
    assert_eq!(status.details(), receipt.as_slice());
    let listed = net.admin(0).await.messages(0, 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    net.shutdown().await;
}
