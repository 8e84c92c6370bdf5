//! Property tests of envelope verification: whatever bytes arrive, `verify`
//! returns (never panics) and refuses anything but an untouched envelope.

use proptest::prelude::*;

use super::util::{message_id, Fixture, NOW};

proptest! {
    /// Any single-byte change of a valid signed envelope, at any position with
    /// any non-zero mask, is refused.
    #[test]
    fn any_single_byte_change_is_refused(
        position in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let fx = Fixture::new();
        let mut bytes = fx.helsinki.sealed_memo(&fx.stockholm).bytes;
        let at = position.index(bytes.len());
        bytes[at] ^= mask;
        let verified = fx.verifier(&fx.stockholm).verify(&bytes, NOW);
        prop_assert!(verified.is_err(), "byte {} ^ {:#04x} verified", at, mask);
    }

    /// Random bytes never panic `verify` and are refused.
    #[test]
    fn random_bytes_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let fx = Fixture::new();
        prop_assert!(fx.verifier(&fx.stockholm).verify(&bytes, NOW).is_err());
    }

    /// A valid signed envelope cut short anywhere is refused.
    #[test]
    fn truncated_envelope_is_refused(keep in any::<prop::sample::Index>()) {
        let fx = Fixture::new();
        let bytes = fx.helsinki.sealed_memo(&fx.stockholm).bytes;
        let keep = keep.index(bytes.len());
        prop_assert!(fx.verifier(&fx.stockholm).verify(&bytes[..keep], NOW).is_err());
    }

    /// Bytes appended to a valid signed envelope never change what verifies:
    /// the result is a refusal, or the very envelope, key and body digest sealed.
    #[test]
    fn appended_bytes_never_change_the_verified_envelope(
        extra in prop::collection::vec(any::<u8>(), 1..64),
    ) {
        let fx = Fixture::new();
        let envelope = fx.helsinki.memo(&fx.stockholm, message_id(7), NOW);
        let sealed = envelope.seal(&fx.helsinki.key);
        let mut bytes = sealed.bytes;
        bytes.extend_from_slice(&extra);
        if let Ok(verified) = fx.verifier(&fx.stockholm).verify(&bytes, NOW) {
            prop_assert_eq!(verified.envelope(), &envelope);
            prop_assert_eq!(verified.key_id(), &fx.helsinki.key.public().key_id());
            prop_assert_eq!(verified.body_sha256(), sealed.body_sha256);
        }
    }
}

/// Every single-bit flip of a valid signed envelope, at every position, is refused.
#[test]
fn every_single_bit_flip_is_refused() {
    let fx = Fixture::new();
    let verifier = fx.verifier(&fx.stockholm);
    let sealed = fx.helsinki.sealed_memo(&fx.stockholm);
    assert!(verifier.verify(&sealed.bytes, NOW).is_ok());
    for at in 0..sealed.bytes.len() {
        for bit in 0..8 {
            let mut bytes = sealed.bytes.clone();
            bytes[at] ^= 1 << bit;
            assert!(
                verifier.verify(&bytes, NOW).is_err(),
                "byte {at} bit {bit} verified"
            );
        }
    }
}

/// Appending bytes that are not a whole protobuf field (a lone tag, a field cut short) is refused.
#[test]
fn appended_partial_field_is_refused() {
    let fx = Fixture::new();
    let verifier = fx.verifier(&fx.stockholm);
    let sealed = fx.helsinki.sealed_memo(&fx.stockholm);
    let check = |extra: &[u8]| {
        let mut bytes = sealed.bytes.clone();
        bytes.extend_from_slice(extra);
        assert!(
            verifier.verify(&bytes, NOW).is_err(),
            "appended {extra:02x?} verified"
        );
    };
    check(&[0x3d]);
    check(&[0x3d, 0, 0, 0]);
    check(&[0x0a, 0x05, 1, 2]);
    check(&[0x80]);
    check(&[0xff; 11]);
}

/// An unknown field appended to a valid signed envelope is refused.
#[test]
fn appended_unknown_field_is_refused() {
    let fx = Fixture::new();
    let mut bytes = fx.helsinki.sealed_memo(&fx.stockholm).bytes;
    // Field 7, wire type 5 (fixed32): a complete field no message of this protocol defines.
    bytes.extend_from_slice(&[0x3d, 0, 0, 0, 0]);
    assert!(fx.verifier(&fx.stockholm).verify(&bytes, NOW).is_err());
}
