//! Cost of sealing and verifying an envelope, next to its floor: one raw
//! Ed25519 signature and one strict verification of the same bytes, measured
//! in the same run. `verify / raw_verify` is the overhead of decoding,
//! membership lookup and the other checks.
//!
//! Run: `cargo bench -p mim4-node --bench envelope`.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ed25519_dalek::{Signer as _, SigningKey};
use mim4_node::core::delivery::SenderContext;
use mim4_node::core::envelope::{EnvelopeLimits, Memo, Payload, Verifier};
use mim4_node::core::ids::{MessageId, OperatorId};
use mim4_node::core::keys::SecretKey;
use mim4_node::core::trust::{
    GovernanceKey, Member, MemberKey, MemberStatus, Role, TrustList, VerifiedTrustList,
};

const NOW_MS: u64 = 1_800_000_000_000;

fn member(id: &str, key: &SecretKey) -> Member {
    Member {
        operator_id: OperatorId::new(id).unwrap(),
        name: id.into(),
        country: "FI".into(),
        roles: vec![Role::Operator],
        keys: vec![MemberKey {
            public_key: key.public(),
            not_before_ms: 0,
            not_after_ms: None,
        }],
        grpc_endpoint: "http://127.0.0.1:1".into(),
        p2p_addrs: vec![],
        status: MemberStatus::Active,
        sectors: vec![],
    }
}

fn bench(c: &mut Criterion) {
    let governance = SecretKey::from_bytes(&[9; 32]).unwrap();
    let sender_key = SecretKey::from_bytes(&[1; 32]).unwrap();
    let receiver_key = SecretKey::from_bytes(&[2; 32]).unwrap();
    let sender = OperatorId::new("fi.helsinki").unwrap();
    let receiver = OperatorId::new("fi.incomeregister").unwrap();
    let list = TrustList {
        federation_id: "bench".into(),
        version: 1,
        issued_at_ms: 0,
        valid_until_ms: u64::MAX,
        rulebook_version: "r".into(),
        governance_keys: vec![GovernanceKey {
            public_key: governance.public(),
        }],
        threshold: 1,
        members: vec![
            member("fi.helsinki", &sender_key),
            member("fi.incomeregister", &receiver_key),
        ],
        attributes: Vec::new(),
        services: Vec::new(),
    };
    let trust =
        VerifiedTrustList::verify_with_anchor(list.sign(&[&governance]), &[governance.public()], 1)
            .unwrap();
    let context = SenderContext {
        me: &sender,
        rulebook_version: "r",
        trust_list_version: 1,
        lifetime_ms: 60_000,
    };
    let memo = Payload::Memo(Memo {
        subject: "income".into(),
        text: "x".repeat(200),
    });
    let envelope = context.envelope(
        MessageId::from_bytes([5; 16]),
        receiver.clone(),
        NOW_MS,
        None,
        memo,
    );
    let sealed = envelope.seal(&sender_key);
    let verifier = Verifier {
        me: &receiver,
        trust: &trust,
        limits: EnvelopeLimits::default(),
    };

    let raw_key = SigningKey::from_bytes(&[1; 32]);
    let raw_signature = raw_key.sign(&sealed.bytes);
    let raw_verifying_key = raw_key.verifying_key();

    let mut group = c.benchmark_group("envelope");
    group.throughput(Throughput::Elements(1));
    group.bench_function("raw_sign (floor)", |b| {
        b.iter(|| raw_key.sign(&sealed.bytes))
    });
    group.bench_function("seal", |b| b.iter(|| envelope.seal(&sender_key)));
    group.bench_function("raw_verify_strict (floor)", |b| {
        b.iter(|| {
            raw_verifying_key
                .verify_strict(&sealed.bytes, &raw_signature)
                .unwrap()
        })
    });
    group.bench_function("verify", |b| {
        b.iter(|| verifier.verify(&sealed.bytes, NOW_MS).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
