//! Envelope decoding and verification. The input is tried twice: as the
//! received bytes of a `SignedEnvelope`, and as an envelope body that a
//! member signed validly, so the fuzzer also reaches the body decoder and
//! every check after the signature.
//!
//! Invariants: nothing panics; a decoded `SignedEnvelope` re-encodes to the
//! very bytes received (one byte form); a body that verifies is the body that
//! decodes; a decoded body survives an encode/decode round trip unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mim4_node::core::envelope::{RejectReason, SignedEnvelope};
use mim4_node::core::keys::ENVELOPE_DOMAIN;
use mim4_node::core::wire;

fuzz_target!(|data: &[u8]| {
    let world = mim4_fuzz::world();
    let verifier = world.verifier();

    if let Ok(signed) = wire::decode_signed_envelope(data) {
        assert_eq!(wire::encode_signed_envelope(&signed), data);
    }
    let _ = verifier.verify(data, mim4_fuzz::NOW);

    let key = &world.sender.key;
    let bytes = wire::encode_signed_envelope(&SignedEnvelope {
        body: data.to_vec(),
        signature: key.sign(ENVELOPE_DOMAIN, data).to_vec(),
        key_id: key.public().key_id(),
    });
    let decoded = wire::decode_envelope(data);
    match verifier.verify(&bytes, mim4_fuzz::NOW) {
        Ok(verified) => assert_eq!(Some(verified.envelope()), decoded.as_ref().ok()),
        Err(rejection) if bytes.len() > verifier.limits.message_bytes_max => {
            assert!(matches!(rejection.reason, RejectReason::Oversized { .. }));
        }
        Err(rejection) => assert_eq!(
            matches!(rejection.reason, RejectReason::Malformed(_)),
            decoded.is_err(),
            "{rejection}"
        ),
    }
    if let Ok(envelope) = decoded {
        let again = wire::decode_envelope(&wire::encode_envelope(&envelope));
        assert_eq!(again.as_ref(), Ok(&envelope));
    }
});
