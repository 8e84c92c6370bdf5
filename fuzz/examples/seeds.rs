//! Writes the seed inputs of the fuzz targets to `fuzz/seeds/<target>/`:
//! valid inputs of the fixture, so that a short run starts from the shapes
//! the decoders accept instead of finding them byte by byte. Deterministic
//! (fixed keys and clock); run again after a wire-format change:
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --example seeds
//! ```

// A seed that cannot be written is a failure of this one-off tool.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use mim4_node::core::consent::export::sign_jws;
use mim4_node::core::envelope::{Envelope, Memo, Payload, PROTOCOL_VERSION};
use mim4_node::core::ids::MessageId;
use mim4_node::core::wire;
use mim4_proto::v1 as pb;
use prost::Message as _;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    let world = mim4_fuzz::world();
    let memo = Envelope {
        protocol_version: PROTOCOL_VERSION,
        rulebook_version: "2025.1".into(),
        trust_list_version: 1,
        message_id: MessageId::from_bytes([7; 16]),
        sender: world.sender.id.clone(),
        recipient: world.recipient.id.clone(),
        created_at_ms: mim4_fuzz::NOW,
        expires_at_ms: mim4_fuzz::NOW + 60_000,
        in_reply_to: None,
        payload: Payload::Memo(Memo {
            subject: "hello".into(),
            text: "a note between operators".into(),
        }),
    };
    write("envelope", "memo-body", &wire::encode_envelope(&memo));
    let sealed = memo.seal(&world.sender.key).bytes;
    write("envelope", "memo-sealed", &sealed);
    // The same sealed memo as a libp2p `/mim4/envelope/1` frame: a 4-byte
    // big-endian length, then the `PeerRequest` (the codec's `write_request`).
    let request = pb::PeerRequest {
        kind: Some(pb::peer_request::Kind::Deliver(pb::DeliverRequest {
            envelope: sealed.clone(),
        })),
    }
    .encode_to_vec();
    let mut frame = u32::try_from(request.len()).unwrap().to_be_bytes().to_vec();
    frame.extend_from_slice(&request);
    write("p2p_frame", "deliver-memo", &frame);
    let update = Envelope {
        payload: Payload::TrustListUpdate(world.trust.signed().clone()),
        ..memo.clone()
    };
    write(
        "envelope",
        "trust-list-update-body",
        &wire::encode_envelope(&update),
    );

    let signed = world.trust.signed();
    write("trust_list", "signed", &signed.encode());
    write("trust_list", "body", &signed.body);

    let kid = world.sender.key.public().key_id();
    let header = format!(r#"{{"alg":"EdDSA","kid":"{kid}","typ":"JWT"}}"#);
    let mut split = header.clone().into_bytes();
    split.push(0);
    split.extend_from_slice(br#"{"version":"KI-CR-v1.1.0","consentReceiptID":"x"}"#);
    write("consent_jws", "header-and-payload", &split);
    let payload = serde_json::json!({"version": "KI-CR-v1.1.0", "jurisdiction": "FI"});
    write(
        "consent_jws",
        "token",
        sign_jws(&payload, &world.sender.key).as_bytes(),
    );
}
