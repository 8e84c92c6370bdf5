//! Property tests of envelope verification: whatever bytes arrive, `verify`
//! returns (never panics) and refuses anything but an untouched envelope.
//!
//! The decoders get the same property as the fuzz targets in `fuzz/` (which
//! mirror the tests under "Decoders" below): any input gives a value or a
//! typed error, never a panic. Envelope bodies, predicates, consent-receipt
//! JWS and trust lists.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use mim4_proto::v1 as pb;
use proptest::prelude::*;

use crate::core::consent::export::{sign_jws, verify_jws, ExportError};
use crate::core::consent::{Attribute, Purpose, ServiceId, SubjectId};
use crate::core::envelope::{RejectReason, SignedEnvelope};
use crate::core::exchange::{self, DataRequest, Op, Predicate};
use crate::core::keys::{ENVELOPE_DOMAIN, TRUST_LIST_DOMAIN};
use crate::core::trust::{CatalogueAttribute, SignedTrustList, ValueType, VerifiedTrustList};
use crate::core::wire;

use super::util::{anchor, message_id, Fixture, NOW};

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

/// The fields of a valid signed envelope in another order are refused: one
/// message has one byte form, so a replay cannot pass for new bytes.
#[test]
fn reordered_outer_fields_are_refused() {
    let fx = Fixture::new();
    let sealed = fx.helsinki.sealed_memo(&fx.stockholm);
    let signed = super::util::decode_signed(&sealed.bytes);
    let fields = [
        (1, signed.body.clone()),
        (2, signed.signature.clone()),
        (3, signed.key_id.as_str().as_bytes().to_vec()),
    ];
    for order in [[0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]] {
        let mut bytes = Vec::new();
        for i in order {
            let (tag, value) = &fields[i];
            prost::encoding::bytes::encode(*tag, value, &mut bytes);
        }
        assert_eq!(bytes.len(), sealed.bytes.len());
        match fx.verifier(&fx.stockholm).verify(&bytes, NOW) {
            Err(rejection) => assert!(
                matches!(rejection.reason, RejectReason::Malformed(_)),
                "{order:?}: {rejection}"
            ),
            Ok(_) => panic!("fields in order {order:?} verified"),
        }
    }
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

// ---------------------------------------------------------------------------
// Decoders: any input gives a value or a typed error, never a panic.
// ---------------------------------------------------------------------------

/// Bytes that are mostly a valid encoding with a few bytes changed, so the
/// decoders get past the first tag; plus some wholly random bytes.
fn mutated(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = valid.len();
    prop_oneof![
        3 => prop::collection::vec((0..len, any::<u8>()), 1..8).prop_map(move |edits| {
            let mut bytes = valid.clone();
            for (at, byte) in edits {
                bytes[at] = byte;
            }
            bytes
        }),
        1 => prop::collection::vec(any::<u8>(), 0..512),
    ]
}

/// A catalogue with one attribute of each value type, named after it.
fn catalogue_fixture() -> Fixture {
    Fixture::with_list(|list| {
        for value_type in [
            ValueType::Integer,
            ValueType::Number,
            ValueType::String,
            ValueType::Boolean,
            ValueType::Date,
            ValueType::StringList,
        ] {
            list.attributes.push(CatalogueAttribute {
                name: Attribute::new(format!("test.{}", value_type.as_str().replace('-', "_")))
                    .unwrap(),
                value_type,
                unit: String::new(),
                sensitivity: "normal".into(),
                description: String::new(),
                sources: vec![list.members[0].operator_id.clone()],
            });
        }
    })
}

/// Small JSON texts: valid values of every kind, and fragments that are not JSON.
fn json_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|x| x.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}".prop_map(|d| format!("\"{d}\"")),
        "[a-z ]{0,12}".prop_map(|t| format!("\"{t}\"")),
        prop::collection::vec("[a-z]{0,4}", 0..4)
            .prop_map(|items| { serde_json::Value::from(items).to_string() }),
        Just("null".to_owned()),
        Just("{\"a\": [1, {\"b\": null}]}".to_owned()),
        ".{0,40}",
    ]
}

proptest! {
    /// Any body, validly signed by a member, verifies or is refused with a
    /// typed reason; it is refused as malformed exactly when the body does
    /// not decode, and a body that verifies is the one that was signed.
    #[test]
    fn any_signed_body_verifies_or_is_refused(
        body in mutated(wire::encode_envelope(
            &Fixture::new().helsinki.memo(&Fixture::new().stockholm, message_id(7), NOW),
        )),
    ) {
        let fx = Fixture::new();
        let bytes = wire::encode_signed_envelope(&SignedEnvelope {
            signature: fx.helsinki.key.sign(ENVELOPE_DOMAIN, &body).to_vec(),
            key_id: fx.helsinki.key.public().key_id(),
            body: body.clone(),
        });
        let decoded = wire::decode_envelope(&body);
        match fx.verifier(&fx.stockholm).verify(&bytes, NOW) {
            Ok(verified) => prop_assert_eq!(Some(verified.envelope()), decoded.as_ref().ok()),
            Err(rejection) => prop_assert_eq!(
                matches!(rejection.reason, RejectReason::Malformed(_)),
                decoded.is_err(),
                "{}", rejection
            ),
        }
    }

    /// The outer decoder takes any bytes and either decodes a signed envelope
    /// that re-encodes to exactly those bytes, or refuses them.
    #[test]
    fn signed_envelope_decoding_is_exact(
        bytes in mutated(Fixture::new().helsinki.sealed_memo(&Fixture::new().stockholm).bytes),
    ) {
        if let Ok(signed) = wire::decode_signed_envelope(&bytes) {
            prop_assert_eq!(wire::encode_signed_envelope(&signed), bytes);
        }
    }

    /// Any predicate from the wire decodes or is refused; a decoded one is
    /// validated against the catalogue without panicking, and evaluates on
    /// any JSON value to an answer or `None`. An evaluable equality holds of
    /// the operand itself, and `!=` always answers the opposite of `==`.
    #[test]
    fn predicates_parse_validate_and_evaluate(
        attribute in prop_oneof![
            "test\\.(integer|number|string|boolean|date|string_list)",
            ".{0,24}",
        ],
        op in prop_oneof![
            prop::sample::select(vec!["<", "<=", ">", ">=", "==", "!=", "contains"])
                .prop_map(str::to_owned),
            ".{0,4}",
        ],
        operand in json_text(),
        value in json_text(),
    ) {
        let raw = pb::Predicate { attribute, op, value_json: operand };
        let Ok(predicate) = wire::predicate_from_pb(raw) else {
            return Ok(());
        };
        let fx = catalogue_fixture();
        let request = DataRequest {
            request_id: message_id(1),
            subject: SubjectId::new("fi:hetu:010180-1234").unwrap(),
            service: ServiceId::new("fi.helsinki/early-education").unwrap(),
            purpose: Purpose::new("dpv:ServiceProvision").unwrap(),
            attributes: Vec::new(),
            predicates: vec![predicate.clone()],
        };
        let _validated = exchange::validate(&request, &fx.trust, &fx.helsinki.id, None);
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&value) else {
            return Ok(());
        };
        let _answer = exchange::evaluate(&predicate, &value);
        let with_op = |op| Predicate { op, ..predicate.clone() };
        let equal = exchange::evaluate(&with_op(Op::Equal), &value);
        let not_equal = exchange::evaluate(&with_op(Op::NotEqual), &value);
        prop_assert_eq!(equal.map(|b| !b), not_equal);
        if let Some(itself) = exchange::evaluate(&with_op(Op::Equal), &predicate.operand) {
            prop_assert!(itself, "{} == itself is false", predicate.operand);
        }
    }

    /// Any text offered as a consent-receipt JWS is refused with a typed
    /// error (only a token signed by the key can pass).
    #[test]
    fn any_text_is_refused_as_a_jws(jws in prop_oneof![
        ".{0,200}",
        "[A-Za-z0-9_-]{0,60}\\.[A-Za-z0-9_-]{0,60}\\.[A-Za-z0-9_-]{0,90}",
    ]) {
        let fx = Fixture::new();
        prop_assert!(verify_jws(&jws, &fx.helsinki.key.public()).is_err());
    }

    /// A JWS whose header and payload are any bytes, signed by the key: it
    /// verifies exactly when the header is an EdDSA header naming the key
    /// (and nothing critical) and the payload is JSON, and then it returns
    /// that JSON. A token made by `sign_jws` always verifies.
    #[test]
    fn signed_jws_with_any_header_and_payload(
        header in prop_oneof![
            Just(br#"{"alg":"EdDSA","kid":"KID","typ":"JWT"}"#.to_vec()),
            Just(br#"{"alg":"EdDSA","kid":"KID","crit":["b64"]}"#.to_vec()),
            Just(br#"{"alg":"none","kid":"KID"}"#.to_vec()),
            json_text().prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..64),
        ],
        payload in prop_oneof![
            json_text().prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..64),
        ],
    ) {
        let fx = Fixture::new();
        let key = &fx.helsinki.key;
        let kid = key.public().key_id().to_string();
        let header = String::from_utf8_lossy(&header).replace("KID", &kid).into_bytes();
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&header),
            URL_SAFE_NO_PAD.encode(&payload)
        );
        let signature = key.sign(b"", signing_input.as_bytes());
        let jws = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature));
        let header_ok = serde_json::from_slice::<serde_json::Value>(&header)
            .ok()
            .and_then(|h| h.as_object().cloned())
            .is_some_and(|h| {
                h.get("alg").and_then(|a| a.as_str()) == Some("EdDSA")
                    && h.get("kid").and_then(|k| k.as_str()) == Some(kid.as_str())
                    && !h.contains_key("crit")
            });
        let payload_json = serde_json::from_slice::<serde_json::Value>(&payload);
        match verify_jws(&jws, &key.public()) {
            Ok(value) => {
                prop_assert!(header_ok);
                prop_assert_eq!(Some(&value), payload_json.as_ref().ok());
            }
            Err(ExportError::Payload(_)) => prop_assert!(header_ok && payload_json.is_err()),
            Err(error) => prop_assert!(!header_ok, "{}", error),
        }
        if let Ok(value) = payload_json {
            let token = sign_jws(&value, key);
            prop_assert_eq!(verify_jws(&token, &key.public()), Ok(value));
        }
    }

    /// Any trust-list bytes decode or are refused with a typed error, signed
    /// or not; a body that governance signs verifies exactly when it decodes.
    #[test]
    fn trust_list_decoding_never_panics(
        signed_bytes in mutated(Fixture::new().trust.signed().encode()),
        body in mutated(wire::encode_trust_list(&Fixture::new().list())),
    ) {
        let fx = Fixture::new();
        let governance = anchor(&[&fx.governance]);
        if let Ok(signed) = SignedTrustList::decode(&signed_bytes) {
            let _verified = VerifiedTrustList::verify_with_anchor(signed.clone(), &governance, 1);
            let _updated = fx.trust.check_update(signed, NOW);
        }
        let decoded = wire::decode_trust_list(&body);
        let signed = SignedTrustList {
            signatures: vec![(
                fx.governance.public().key_id(),
                fx.governance.sign(TRUST_LIST_DOMAIN, &body).to_vec(),
            )],
            body,
        };
        let verified = VerifiedTrustList::verify_with_anchor(signed, &governance, 1);
        prop_assert_eq!(verified.is_ok(), decoded.is_ok());
        if let (Ok(verified), Ok(decoded)) = (verified, decoded) {
            prop_assert_eq!(verified.list(), &decoded);
        }
    }
}
