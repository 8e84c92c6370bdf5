//! Tests of envelope verification, replay and receipt checks: one test per
//! reason an envelope is refused, each asserting the exact [`RejectReason`]
//! and that its message reads as a sentence.

use crate::core::delivery::{self, Applied, Expected, ReceiptError};
use crate::core::envelope::{
    Envelope, EnvelopeLimits, Payload, Receipt, RejectReason, Rejection, SignedEnvelope,
    VerifiedEnvelope, Verifier, PROTOCOL_VERSION,
};
use crate::core::ids::OperatorId;
use crate::core::keys::{KeyId, SIGNATURE_LEN};
use crate::core::trust::MemberStatus;
use crate::core::wire;
use crate::limits;

use super::util::{
    decode_signed, member_mut, message_id, with_edited_body, Fixture, Operator, DAY_MS, NOW,
    TRUST_LIST_VALID_UNTIL,
};

/// What `Verifier::verify` should do with an input.
#[derive(Clone, Copy)]
enum Want {
    /// Accept it.
    Accept,
    /// Refuse it for a reason the predicate matches, with a message containing the word.
    Refuse(fn(&RejectReason) -> bool, &'static str),
}

/// Verifies `bytes` at `now_ms`, checks the outcome against `want` and returns the rejection.
///
/// A refusal must carry a readable message, and must name the message id and
/// sender exactly when the body could be decoded.
fn check_verify(
    verifier: &Verifier<'_>,
    bytes: &[u8],
    now_ms: u64,
    want: Want,
) -> Option<Rejection> {
    let result = verifier.verify(bytes, now_ms);
    match (&result, want) {
        (Ok(_), Want::Accept) => {}
        (Err(rejection), Want::Refuse(matches_reason, word)) => {
            let reason = &rejection.reason;
            assert!(matches_reason(reason), "unexpected reason {reason:?}");
            let sentence = reason.to_string();
            assert!(
                sentence.len() > 10 && sentence.contains(word),
                "{sentence:?} lacks {word:?}"
            );
            assert!(rejection.to_string().contains(&sentence), "{rejection}");
            let anonymous = matches!(
                reason,
                RejectReason::Oversized { .. } | RejectReason::Malformed(_)
            );
            assert_eq!(rejection.message_id.is_none(), anonymous, "{rejection:?}");
            assert_eq!(rejection.sender.is_none(), anonymous, "{rejection:?}");
        }
        (Ok(verified), Want::Refuse(_, word)) => {
            panic!(
                "accepted {:?}, expected a refusal about {word:?}",
                verified.envelope()
            )
        }
        (Err(rejection), Want::Accept) => panic!("refused: {rejection}"),
    }
    result.err()
}

/// Shorthand for a refusal whose reason matches a pattern, with a key word of its message.
macro_rules! refuse {
    ($pattern:pat, $word:literal) => {
        Want::Refuse(|reason| matches!(reason, $pattern), $word)
    };
}

/// Seals a memo from helsinki to stockholm, changed by `edit` before helsinki
/// signs it, and verifies it as stockholm at `now_ms`.
fn check_memo(fx: &Fixture, edit: impl FnOnce(&mut Envelope), now_ms: u64, want: Want) {
    let mut envelope = fx.helsinki.memo(&fx.stockholm, message_id(1), NOW);
    edit(&mut envelope);
    let sealed = envelope.seal(&fx.helsinki.key);
    check_verify(&fx.verifier(&fx.stockholm), &sealed.bytes, now_ms, want);
}

/// The id of the fixture's helsinki operator, for editing its trust-list entry.
fn helsinki_id() -> OperatorId {
    OperatorId::new("fi.helsinki").unwrap()
}

/// A valid envelope verifies, and the verified content equals what was sealed.
#[test]
fn valid_envelope_verifies_and_round_trips() {
    let fx = Fixture::new();
    let envelope = fx.helsinki.memo(&fx.stockholm, message_id(1), NOW);
    let sealed = envelope.seal(&fx.helsinki.key);
    let verified = fx
        .verifier(&fx.stockholm)
        .verify(&sealed.bytes, NOW)
        .unwrap();
    assert_eq!(verified.envelope(), &envelope);
    assert_eq!(verified.envelope().payload, envelope.payload);
    assert_eq!(verified.key_id(), &fx.helsinki.key.public().key_id());
    assert_eq!(verified.body_sha256(), sealed.body_sha256);
    assert_eq!(sealed.message_id, envelope.message_id);
}

/// Changing one byte of the signed body (inside the memo subject) breaks the signature.
#[test]
fn tampered_body_is_refused_as_bad_signature() {
    let fx = Fixture::new();
    let sealed = fx.helsinki.sealed_memo(&fx.stockholm);
    let mut signed = decode_signed(&sealed.bytes);
    let at = signed.body.windows(5).position(|w| w == b"hello").unwrap();
    signed.body[at] = b'j';
    let bytes = wire::encode_signed_envelope(&signed);
    check_verify(
        &fx.verifier(&fx.stockholm),
        &bytes,
        NOW,
        refuse!(RejectReason::BadSignature, "signature"),
    );
}

/// Changing a header field and re-encoding the body under the old signature is refused.
#[test]
fn tampered_header_is_refused_as_bad_signature() {
    let fx = Fixture::new();
    let sealed = fx.helsinki.sealed_memo(&fx.stockholm);
    let bad_signature = refuse!(RejectReason::BadSignature, "signature");
    let check = |edit: fn(&mut Envelope), want: Want| {
        let bytes = with_edited_body(&sealed.bytes, edit);
        assert_ne!(bytes, sealed.bytes);
        check_verify(&fx.verifier(&fx.stockholm), &bytes, NOW, want);
    };
    // Redirected to another member, who then sees a body its sender never signed.
    let recipient = fx.iledefrance.id.clone();
    let bytes = with_edited_body(&sealed.bytes, |e| e.recipient = recipient);
    check_verify(&fx.verifier(&fx.iledefrance), &bytes, NOW, bad_signature);
    check(|e| e.created_at_ms += 1, bad_signature);
    check(|e| e.expires_at_ms += DAY_MS, bad_signature);
    check(|e| e.message_id = message_id(99), bad_signature);
    check(|e| e.trust_list_version += 1, bad_signature);
    check(|e| e.rulebook_version.push('x'), bad_signature);
    check(|e| e.in_reply_to = Some(message_id(3)), bad_signature);
    check(
        |e| {
            if let Payload::Memo(memo) = &mut e.payload {
                memo.text.push('!');
            }
        },
        bad_signature,
    );
    // Claiming another sender fails earlier: the key is not one of that sender's keys.
    check(
        |e| e.sender = OperatorId::new("fr.iledefrance").unwrap(),
        refuse!(RejectReason::UnknownKey(_), "key"),
    );
}

/// An envelope that claims to come from helsinki but is signed with iledefrance's key is refused.
#[test]
fn signature_by_another_members_key_is_refused() {
    let fx = Fixture::new();
    let verifier = fx.verifier(&fx.stockholm);
    // Honest key id: the key is not one of helsinki's keys.
    let forged = fx
        .helsinki
        .memo(&fx.stockholm, message_id(1), NOW)
        .seal(&fx.iledefrance.key);
    let rejection = check_verify(
        &verifier,
        &forged.bytes,
        NOW,
        refuse!(RejectReason::UnknownKey(_), "not one of the sender's keys"),
    )
    .unwrap();
    assert_eq!(
        rejection.reason,
        RejectReason::UnknownKey(fx.iledefrance.key.public().key_id())
    );
    // Key id rewritten to helsinki's: the signature does not verify under that key.
    let mut signed = decode_signed(&forged.bytes);
    signed.key_id = fx.helsinki.key.public().key_id();
    let bytes = wire::encode_signed_envelope(&signed);
    check_verify(
        &verifier,
        &bytes,
        NOW,
        refuse!(RejectReason::BadSignature, "signature"),
    );
}

/// An envelope from an operator missing from the trust list is refused.
#[test]
fn unknown_sender_is_refused() {
    let fx = Fixture::new();
    let outsider = Operator::new("de.berlin", 0x44);
    let sealed = outsider.sealed_memo(&fx.stockholm);
    let rejection = check_verify(
        &fx.verifier(&fx.stockholm),
        &sealed.bytes,
        NOW,
        refuse!(RejectReason::UnknownSender, "not a member"),
    )
    .unwrap();
    assert_eq!(rejection.sender, Some(outsider.id));
}

/// An envelope from a suspended member is refused, even though its signature is valid.
#[test]
fn suspended_sender_is_refused() {
    let id = helsinki_id();
    let fx = Fixture::with_list(|list| member_mut(list, &id).status = MemberStatus::Suspended);
    check_memo(
        &fx,
        |_| {},
        NOW,
        refuse!(
            RejectReason::SenderNotActive(MemberStatus::Suspended),
            "suspended"
        ),
    );
}

/// An envelope from a revoked member is refused, even though its signature is valid.
#[test]
fn revoked_sender_is_refused() {
    let id = helsinki_id();
    let fx = Fixture::with_list(|list| member_mut(list, &id).status = MemberStatus::Revoked);
    check_memo(
        &fx,
        |_| {},
        NOW,
        refuse!(
            RejectReason::SenderNotActive(MemberStatus::Revoked),
            "revoked"
        ),
    );
}

/// A key is refused before its not_before and from its (exclusive) not_after on, judged at arrival.
#[test]
fn key_outside_its_validity_window_is_refused() {
    let id = helsinki_id();
    let window = |not_before_ms: u64, not_after_ms: Option<u64>| {
        Fixture::with_list(|list| {
            let key = &mut member_mut(list, &id).keys[0];
            key.not_before_ms = not_before_ms;
            key.not_after_ms = not_after_ms;
        })
    };
    let not_valid = refuse!(RejectReason::KeyNotValidNow { .. }, "not valid now");
    check_memo(&window(NOW + 1, None), |_| {}, NOW, not_valid);
    check_memo(&window(NOW, None), |_| {}, NOW, Want::Accept);
    check_memo(&window(0, Some(NOW)), |_| {}, NOW, not_valid);
    check_memo(&window(0, Some(NOW - DAY_MS)), |_| {}, NOW, not_valid);
    check_memo(&window(0, Some(NOW + 1)), |_| {}, NOW, Want::Accept);
    // Validity is judged at arrival, not at the claimed creation time.
    let created_before_end = |e: &mut Envelope| e.created_at_ms = NOW - 1;
    check_memo(&window(0, Some(NOW)), created_before_end, NOW, not_valid);

    let fx = window(NOW - DAY_MS, Some(NOW));
    let sealed = fx.helsinki.sealed_memo(&fx.stockholm);
    let rejection =
        check_verify(&fx.verifier(&fx.stockholm), &sealed.bytes, NOW, not_valid).unwrap();
    assert_eq!(
        rejection.reason,
        RejectReason::KeyNotValidNow {
            key_id: fx.helsinki.key.public().key_id(),
            not_before_ms: NOW - DAY_MS,
            not_after_ms: Some(NOW),
        }
    );
}

/// The validity-window message reads cleanly, with no space before the closing parenthesis.
#[test]
fn key_not_valid_message_is_clean() {
    let fx = Fixture::new();
    let key_id = fx.helsinki.key.public().key_id();
    let reason = RejectReason::KeyNotValidNow {
        key_id: key_id.clone(),
        not_before_ms: 1,
        not_after_ms: Some(5),
    };
    assert_eq!(
        reason.to_string(),
        format!("key {key_id} is not valid now (valid from 1 ms until 5 ms)")
    );
}

/// A message is refused once now reaches its expiry (the expiry instant itself is expired).
#[test]
fn expired_message_is_refused() {
    let fx = Fixture::new();
    let expired = refuse!(RejectReason::Expired { .. }, "expired");
    let lifetime_ms = limits::MESSAGE_LIFETIME_MS_DEFAULT;
    // Each message lives one default lifetime from its creation.
    let check = |created_at_ms: u64, now_ms: u64, want: Want| {
        let lived = move |e: &mut Envelope| {
            e.created_at_ms = created_at_ms;
            e.expires_at_ms = created_at_ms + lifetime_ms;
        };
        check_memo(&fx, lived, now_ms, want);
    };
    check(NOW - 2 * lifetime_ms, NOW, expired);
    check(NOW - lifetime_ms, NOW, expired);
    check(NOW - lifetime_ms + 1, NOW, Want::Accept);
    check(NOW, NOW + lifetime_ms, expired);
    check(NOW, NOW + lifetime_ms - 1, Want::Accept);
}

/// A message created further in the future than the clock-skew bound is refused.
#[test]
fn message_from_the_future_is_refused_as_clock_skew() {
    let fx = Fixture::new();
    let skew_ms = limits::CLOCK_SKEW_MS_DEFAULT;
    let skewed = refuse!(RejectReason::ClockSkew { .. }, "clock-skew");
    // Expiry follows creation, so only the skew can refuse these.
    let created_at = |at: u64| {
        move |e: &mut Envelope| {
            e.created_at_ms = at;
            e.expires_at_ms = at + DAY_MS;
        }
    };
    check_memo(&fx, created_at(NOW + skew_ms), NOW, Want::Accept);
    check_memo(&fx, created_at(NOW + skew_ms + 1), NOW, skewed);
    check_memo(&fx, created_at(NOW + DAY_MS), NOW, skewed);
}

/// A lifetime over the limit, an expiry before creation or equal to it is refused.
#[test]
fn bad_lifetime_is_refused() {
    let fx = Fixture::new();
    let max_ms = limits::MESSAGE_LIFETIME_MS_MAX;
    let bad = refuse!(RejectReason::BadLifetime { .. }, "lifetime");
    check_memo(&fx, |e| e.expires_at_ms = NOW + max_ms, NOW, Want::Accept);
    check_memo(&fx, |e| e.expires_at_ms = NOW + max_ms + 1, NOW, bad);
    check_memo(&fx, |e| e.expires_at_ms = u64::MAX, NOW, bad);
    check_memo(&fx, |e| e.expires_at_ms = NOW, NOW, bad);
    check_memo(&fx, |e| e.expires_at_ms = NOW - 1, NOW, bad);
    check_memo(&fx, |e| e.expires_at_ms = 0, NOW, bad);

    let mut envelope = fx.helsinki.memo(&fx.stockholm, message_id(1), NOW);
    envelope.expires_at_ms = NOW + max_ms + 1;
    let sealed = envelope.seal(&fx.helsinki.key);
    let rejection = check_verify(&fx.verifier(&fx.stockholm), &sealed.bytes, NOW, bad).unwrap();
    assert_eq!(
        rejection.reason,
        RejectReason::BadLifetime {
            lifetime_ms: max_ms + 1,
            max_ms
        }
    );
}

/// Runs `delivery::check_replay` against `prior` and compares the outcome with `want`.
fn check_replay(
    verified: &VerifiedEnvelope,
    prior: Option<&Applied>,
    want: Result<(), RejectReason>,
) {
    let got = delivery::check_replay(verified, prior);
    if let Err(reason) = &got {
        let sentence = reason.to_string();
        assert!(sentence.contains("already"), "{sentence:?}");
    }
    assert_eq!(got, want);
}

/// A message id already applied is refused: Replayed for the same body, IdReused for another.
#[test]
fn replayed_id_is_refused() {
    let fx = Fixture::new();
    let sealed = fx.helsinki.sealed_memo(&fx.stockholm);
    let verified = fx
        .verifier(&fx.stockholm)
        .verify(&sealed.bytes, NOW)
        .unwrap();
    let same = Applied {
        body_sha256: sealed.body_sha256,
        applied_at_ms: NOW - 5,
    };
    let mut other_digest = sealed.body_sha256;
    other_digest[31] ^= 1;
    let other = Applied {
        body_sha256: other_digest,
        applied_at_ms: NOW - 5,
    };
    check_replay(&verified, None, Ok(()));
    check_replay(
        &verified,
        Some(&same),
        Err(RejectReason::Replayed {
            first_applied_at_ms: NOW - 5,
        }),
    );
    check_replay(&verified, Some(&other), Err(RejectReason::IdReused));
}

/// Bytes over the size limit are refused before decoding, even when they are not an envelope.
#[test]
fn oversized_bytes_are_refused_before_decoding() {
    let fx = Fixture::new();
    let sealed = fx.helsinki.sealed_memo(&fx.stockholm);
    let limited = |message_bytes_max: usize| Verifier {
        limits: EnvelopeLimits {
            message_bytes_max,
            ..EnvelopeLimits::default()
        },
        ..fx.verifier(&fx.stockholm)
    };
    let oversized = refuse!(RejectReason::Oversized { .. }, "more than");
    let len = sealed.bytes.len();
    check_verify(&limited(len), &sealed.bytes, NOW, Want::Accept);
    let rejection = check_verify(&limited(len - 1), &sealed.bytes, NOW, oversized).unwrap();
    assert_eq!(
        rejection.reason,
        RejectReason::Oversized {
            size: len,
            max: len - 1
        }
    );
    // Garbage one byte over the default limit: refused for its size, not as malformed.
    let garbage = vec![0xff; limits::MESSAGE_BYTES_MAX + 1];
    check_verify(&fx.verifier(&fx.stockholm), &garbage, NOW, oversized);
}

/// Bytes that do not decode to a signed envelope with a valid body are refused as malformed.
#[test]
fn garbage_is_refused_as_malformed() {
    let fx = Fixture::new();
    let verifier = fx.verifier(&fx.stockholm);
    let malformed = refuse!(RejectReason::Malformed(_), "malformed");
    let check = |bytes: &[u8]| {
        check_verify(&verifier, bytes, NOW, malformed);
    };
    let signed = |body: Vec<u8>, signature_len: usize, key_id: &str| {
        wire::encode_signed_envelope(&SignedEnvelope {
            body,
            signature: vec![7; signature_len],
            key_id: KeyId::from_wire(key_id),
        })
    };
    let sealed = fx.helsinki.sealed_memo(&fx.stockholm);
    let body = decode_signed(&sealed.bytes).body;
    check(b"");
    check(&[0xff; 16]);
    check(b"this is not a protobuf message at all");
    check(&sealed.bytes[..sealed.bytes.len() / 2]);
    check(&signed(
        b"not an envelope".to_vec(),
        SIGNATURE_LEN,
        "0011223344556677",
    ));
    check(&signed(Vec::new(), SIGNATURE_LEN, "0011223344556677"));
    check(&signed(body.clone(), SIGNATURE_LEN - 1, "0011223344556677"));
    check(&signed(body.clone(), SIGNATURE_LEN + 1, "0011223344556677"));
    check(&signed(body.clone(), SIGNATURE_LEN, ""));
    check(&signed(body, SIGNATURE_LEN, &"a".repeat(65)));
}

/// A valid envelope addressed to another member is refused by this node.
#[test]
fn wrong_recipient_is_refused() {
    let fx = Fixture::new();
    let sealed = fx.helsinki.sealed_memo(&fx.stockholm);
    let rejection = check_verify(
        &fx.verifier(&fx.iledefrance),
        &sealed.bytes,
        NOW,
        refuse!(RejectReason::WrongRecipient(_), "addressed to"),
    )
    .unwrap();
    assert_eq!(
        rejection.reason,
        RejectReason::WrongRecipient(fx.stockholm.id.clone())
    );
}

/// An envelope of a protocol version other than this node's is refused.
#[test]
fn unsupported_protocol_version_is_refused() {
    let fx = Fixture::new();
    let check = |version: u32, want: Want| {
        check_memo(&fx, |e| e.protocol_version = version, NOW, want);
    };
    let unsupported = refuse!(RejectReason::UnsupportedProtocol(_), "not supported");
    check(PROTOCOL_VERSION, Want::Accept);
    check(0, unsupported);
    check(PROTOCOL_VERSION + 1, unsupported);
    check(u32::MAX, unsupported);
}

/// Once the node's own trust list has expired it accepts nothing, valid envelopes included.
#[test]
fn expired_trust_list_refuses_everything() {
    let fx = Fixture::new();
    let expired = refuse!(RejectReason::TrustListExpired { .. }, "trust list expired");
    let check = |now_ms: u64, want: Want| {
        let created = |e: &mut Envelope| {
            e.created_at_ms = TRUST_LIST_VALID_UNTIL - 1;
            e.expires_at_ms = TRUST_LIST_VALID_UNTIL + DAY_MS;
        };
        check_memo(&fx, created, now_ms, want);
    };
    check(TRUST_LIST_VALID_UNTIL - 1, Want::Accept);
    check(TRUST_LIST_VALID_UNTIL, expired);
    check(TRUST_LIST_VALID_UNTIL + 1, expired);
}

/// Checks a receipt `bytes` as helsinki, the sender of the original, against `expected`.
fn check_receipt(
    fx: &Fixture,
    bytes: &[u8],
    expected: &Expected<'_>,
    want: Result<Receipt, ReceiptError>,
) {
    let got = delivery::check_receipt(
        &fx.helsinki.id,
        &fx.trust,
        EnvelopeLimits::default(),
        bytes,
        expected,
        NOW,
    );
    if let Err(error) = &got {
        assert!(error.to_string().contains("receipt"), "{error}");
    }
    assert_eq!(got.map(|(_, receipt)| receipt), want);
}

/// A receipt is accepted only when signed by the recipient, for the message and body sent.
#[test]
fn receipts_are_checked() {
    let fx = Fixture::new();
    let sent = fx.helsinki.sealed_memo(&fx.stockholm);
    let applied = fx.verifier(&fx.stockholm).verify(&sent.bytes, NOW).unwrap();
    let expected = Expected {
        message_id: sent.message_id,
        recipient: &fx.stockholm.id,
        body_sha256: sent.body_sha256,
    };
    let receipt_from = |operator: &Operator| {
        operator
            .sender()
            .receipt(message_id(50), &applied, NOW)
            .seal(&operator.key)
            .bytes
    };
    let good = receipt_from(&fx.stockholm);
    let receipt = Receipt {
        message_id: sent.message_id,
        body_sha256: sent.body_sha256,
        applied_at_ms: NOW,
    };
    check_receipt(&fx, &good, &expected, Ok(receipt));

    // A valid receipt, but signed by a third member rather than the recipient.
    let third = receipt_from(&fx.iledefrance);
    let wrong_signer = ReceiptError::WrongSigner {
        expected: fx.stockholm.id.clone(),
        got: fx.iledefrance.id.clone(),
    };
    check_receipt(&fx, &third, &expected, Err(wrong_signer));

    // The recipient acknowledges a message or a body other than the one sent.
    let other_id = Expected {
        message_id: message_id(8),
        ..expected.clone()
    };
    let mismatch_id = ReceiptError::Mismatch {
        expected_id: message_id(8),
        got_id: sent.message_id,
        digest_matches: true,
    };
    check_receipt(&fx, &good, &other_id, Err(mismatch_id));
    let other_digest = Expected {
        body_sha256: [0; 32],
        ..expected.clone()
    };
    let mismatch_digest = ReceiptError::Mismatch {
        expected_id: sent.message_id,
        got_id: sent.message_id,
        digest_matches: false,
    };
    check_receipt(&fx, &good, &other_digest, Err(mismatch_digest));

    // A memo from the recipient is not a receipt.
    let memo = fx.stockholm.sealed_memo(&fx.helsinki);
    check_receipt(
        &fx,
        &memo.bytes,
        &expected,
        Err(ReceiptError::NotAReceipt("memo")),
    );

    // A receipt altered on the way fails as an envelope.
    let altered = with_edited_body(&good, |e| e.created_at_ms -= 1);
    let rejection = fx.verifier(&fx.helsinki).verify(&altered, NOW).unwrap_err();
    assert_eq!(rejection.reason, RejectReason::BadSignature);
    check_receipt(
        &fx,
        &altered,
        &expected,
        Err(ReceiptError::Envelope(rejection)),
    );
}
