//! Tests of the trust list: governance signatures against the anchor, the
//! rules for accepting a newer list, member and governance key rotation, and
//! the validation a list body gets when decoded.

use mim4_proto::v1 as pb;
use prost::Message as _;

use crate::core::envelope::RejectReason;
use crate::core::keys::{PublicKey, SecretKey, TRUST_LIST_DOMAIN};
use crate::core::trust::{
    MemberKey, MemberStatus, SignedTrustList, TrustList, TrustListError, VerifiedTrustList,
};
use crate::core::wire;

use super::util::{
    anchor, member_mut, message_id, secret, trust_list, Fixture, Operator, DAY_MS, FEDERATION,
    GOVERNANCE_SEED, NOW,
};

/// Whether an error's message reads as a sentence about the list or its governance.
fn readable(error: &TrustListError) -> bool {
    let sentence = error.to_string();
    sentence.len() > 20 && (sentence.contains("trust list") || sentence.contains("governance"))
}

/// Verifies `signed` against `anchor` and compares the outcome (the version on success).
fn check_anchor(
    signed: SignedTrustList,
    anchor: &[PublicKey],
    threshold: u32,
    want: Result<u64, TrustListError>,
) {
    let got = VerifiedTrustList::verify_with_anchor(signed, anchor, threshold);
    if let Err(error) = &got {
        assert!(readable(error), "{error}");
    }
    assert_eq!(got.map(|verified| verified.version()), want);
}

/// Offers `candidate` to `current` at `now_ms` and compares the outcome (the version on success).
fn check_update(
    current: &VerifiedTrustList,
    candidate: SignedTrustList,
    now_ms: u64,
    want: Result<u64, TrustListError>,
) -> Option<VerifiedTrustList> {
    let got = current.check_update(candidate, now_ms);
    if let Err(error) = &got {
        assert!(readable(error), "{error}");
    }
    let outcome = got
        .as_ref()
        .map(VerifiedTrustList::version)
        .map_err(Clone::clone);
    assert_eq!(outcome, want);
    got.ok()
}

/// The fixture's list as version `version`, with its other fields unchanged.
fn version(fx: &Fixture, version: u64) -> TrustList {
    TrustList {
        version,
        ..fx.list()
    }
}

/// A list signed by the anchor key verifies; one also signed by an outsider verifies too.
#[test]
fn list_signed_by_the_anchor_verifies() {
    let fx = Fixture::new();
    let outsider = secret(0x55);
    let list = fx.list();
    check_anchor(
        list.sign(&[&fx.governance]),
        &anchor(&[&fx.governance]),
        1,
        Ok(1),
    );
    check_anchor(
        list.sign(&[&outsider, &fx.governance]),
        &anchor(&[&fx.governance]),
        1,
        Ok(1),
    );
    assert_eq!(fx.trust.list(), &list);
}

/// A list signed only by a key outside the anchor has no valid signature.
#[test]
fn signature_by_a_key_outside_the_anchor_is_not_enough() {
    let fx = Fixture::new();
    let outsider = secret(0x55);
    let not_enough = |valid, needed| Err(TrustListError::NotEnoughSignatures { valid, needed });
    check_anchor(
        fx.list().sign(&[&outsider]),
        &anchor(&[&fx.governance]),
        1,
        not_enough(0, 1),
    );
    check_anchor(
        fx.list().sign(&[]),
        &anchor(&[&fx.governance]),
        1,
        not_enough(0, 1),
    );
    // A signature made for another purpose (an envelope) does not count either.
    let mut signed = fx.list().sign(&[&fx.governance]);
    signed.signatures[0].1 = fx
        .governance
        .sign(crate::core::keys::ENVELOPE_DOMAIN, &signed.body)
        .to_vec();
    let bad = TrustListError::BadSignature {
        key_id: fx.governance.public().key_id(),
    };
    check_anchor(signed, &anchor(&[&fx.governance]), 1, Err(bad));
}

/// A list altered after signing, or a forged signature under the governance key id, is refused.
#[test]
fn altered_or_forged_list_is_a_bad_signature() {
    let fx = Fixture::new();
    let signed = fx.list().sign(&[&fx.governance]);
    let bad = || TrustListError::BadSignature {
        key_id: fx.governance.public().key_id(),
    };
    // Altered: stockholm revoked in the body, governance's real signature kept.
    let mut altered = fx.list();
    member_mut(&mut altered, &fx.stockholm.id).status = MemberStatus::Revoked;
    let tampered = SignedTrustList {
        body: wire::encode_trust_list(&altered),
        signatures: signed.signatures.clone(),
    };
    check_anchor(tampered, &anchor(&[&fx.governance]), 1, Err(bad()));
    // Forged: an outsider's signature labelled with governance's key id.
    let outsider = secret(0x55);
    let forged = SignedTrustList {
        signatures: vec![(
            fx.governance.public().key_id(),
            outsider.sign(TRUST_LIST_DOMAIN, &signed.body).to_vec(),
        )],
        ..signed
    };
    check_anchor(forged, &anchor(&[&fx.governance]), 1, Err(bad()));
}

/// k of n counts distinct anchor keys: the same signature twice is still one.
#[test]
fn threshold_counts_distinct_keys() {
    let keys = [secret(0x61), secret(0x62), secret(0x63)];
    let all: Vec<&SecretKey> = keys.iter().collect();
    let operator = Operator::new("fi.helsinki", 0x11);
    let list = trust_list(1, &all, 2, vec![operator.member()]);
    let pinned = anchor(&all);
    check_anchor(list.sign(&[&keys[0], &keys[2]]), &pinned, 2, Ok(1));
    check_anchor(list.sign(&all), &pinned, 2, Ok(1));
    let not_enough = Err(TrustListError::NotEnoughSignatures {
        valid: 1,
        needed: 2,
    });
    check_anchor(list.sign(&[&keys[1]]), &pinned, 2, not_enough.clone());
    check_anchor(list.sign(&[&keys[1], &keys[1]]), &pinned, 2, not_enough);
    let zero = Err(TrustListError::Invalid(
        "threshold must be at least 1".into(),
    ));
    check_anchor(list.sign(&all), &pinned, 0, zero);
}

/// A candidate for the same federation, newer, current and signed by governance replaces the list.
#[test]
fn newer_list_signed_by_governance_is_accepted() {
    let fx = Fixture::new();
    let next = check_update(
        &fx.trust,
        version(&fx, 2).sign(&[&fx.governance]),
        NOW,
        Ok(2),
    )
    .unwrap();
    check_update(&next, version(&fx, 7).sign(&[&fx.governance]), NOW, Ok(7));
    check_update(
        &next,
        version(&fx, u64::MAX).sign(&[&fx.governance]),
        NOW,
        Ok(u64::MAX),
    );
}

/// A candidate whose version is not higher than the current one is refused.
#[test]
fn older_or_equal_version_is_refused() {
    let fx = Fixture::new();
    let check = |got: u64| {
        let want = Err(TrustListError::NotNewer { current: 1, got });
        check_update(
            &fx.trust,
            version(&fx, got).sign(&[&fx.governance]),
            NOW,
            want,
        );
    };
    check(1);
    check(0);
    let current = check_update(
        &fx.trust,
        version(&fx, 5).sign(&[&fx.governance]),
        NOW,
        Ok(5),
    )
    .unwrap();
    let want = Err(TrustListError::NotNewer { current: 5, got: 4 });
    check_update(&current, version(&fx, 4).sign(&[&fx.governance]), NOW, want);
}

/// A candidate for another federation is refused, even when signed by this one's governance.
#[test]
fn other_federation_is_refused() {
    let fx = Fixture::new();
    let other = TrustList {
        federation_id: "eu.other".to_owned(),
        ..version(&fx, 2)
    };
    let want = Err(TrustListError::OtherFederation {
        expected: FEDERATION.to_owned(),
        got: "eu.other".to_owned(),
    });
    check_update(&fx.trust, other.sign(&[&fx.governance]), NOW, want);
}

/// A candidate whose validity already ended (valid_until is exclusive) is refused.
#[test]
fn expired_candidate_is_refused() {
    let fx = Fixture::new();
    let check = |valid_until_ms: u64, want: Result<u64, TrustListError>| {
        let candidate = TrustList {
            valid_until_ms,
            ..version(&fx, 2)
        };
        check_update(&fx.trust, candidate.sign(&[&fx.governance]), NOW, want);
    };
    let expired = |valid_until_ms| {
        Err(TrustListError::Expired {
            valid_until_ms,
            now_ms: NOW,
        })
    };
    check(NOW - DAY_MS, expired(NOW - DAY_MS));
    check(NOW, expired(NOW));
    check(NOW + 1, Ok(2));
}

/// An update must be signed by the current list's governance, not by anyone else.
#[test]
fn update_not_signed_by_current_governance_is_refused() {
    let fx = Fixture::new();
    let outsider = secret(0x55);
    let want = Err(TrustListError::NotEnoughSignatures {
        valid: 0,
        needed: 1,
    });
    check_update(&fx.trust, version(&fx, 2).sign(&[&outsider]), NOW, want);
    let mut altered = version(&fx, 2);
    member_mut(&mut altered, &fx.stockholm.id).status = MemberStatus::Suspended;
    let tampered = SignedTrustList {
        body: wire::encode_trust_list(&altered),
        ..version(&fx, 2).sign(&[&fx.governance])
    };
    let bad = Err(TrustListError::BadSignature {
        key_id: fx.governance.public().key_id(),
    });
    check_update(&fx.trust, tampered, NOW, bad);
}

/// Governance rotates its key: v2 names the new key and is signed by the old one;
/// from then on only the new key counts.
#[test]
fn governance_key_rotation() {
    let fx = Fixture::new();
    let old = &fx.governance;
    let new = secret(0x66);
    let members = fx.list().members;
    let v2 = trust_list(2, &[&new], 1, members.clone());
    let v3 = trust_list(3, &[&new], 1, members);
    let current = check_update(&fx.trust, v2.sign(&[old]), NOW, Ok(2)).unwrap();
    let not_enough = Err(TrustListError::NotEnoughSignatures {
        valid: 0,
        needed: 1,
    });
    check_update(&current, v3.sign(&[old]), NOW, not_enough);
    check_update(&current, v3.sign(&[&new]), NOW, Ok(3));
    // Before the rotation the new key alone was not enough.
    let not_yet = Err(TrustListError::NotEnoughSignatures {
        valid: 0,
        needed: 1,
    });
    check_update(&fx.trust, v2.sign(&[&new]), NOW, not_yet);
}

/// Seals a memo from helsinki to stockholm with `key` at `at_ms` and checks that it
/// verifies at `at_ms` (`accepted`) or is refused because the key is not valid then.
fn check_key_at(fx: &Fixture, key: &SecretKey, at_ms: u64, accepted: bool) {
    let sealed = fx
        .helsinki
        .memo(&fx.stockholm, message_id(1), at_ms)
        .seal(key);
    match fx.verifier(&fx.stockholm).verify(&sealed.bytes, at_ms) {
        Ok(verified) => {
            assert!(accepted, "accepted at {at_ms}");
            assert_eq!(verified.key_id(), &key.public().key_id());
        }
        Err(rejection) => {
            assert!(!accepted, "refused at {at_ms}: {rejection}");
            assert!(
                matches!(rejection.reason, RejectReason::KeyNotValidNow { .. }),
                "{rejection}"
            );
        }
    }
}

/// During a member's key rotation both keys verify in the overlap, only the old one
/// before the new key's not_before, and only the new one from the old key's not_after.
#[test]
fn member_key_rotation_overlap() {
    let new_from = NOW + DAY_MS;
    let old_until = NOW + 2 * DAY_MS;
    let new_key = secret(0x77);
    let new_public = new_key.public();
    let fx = Fixture::with_list(|list| {
        let id = list.members[0].operator_id.clone();
        let keys = &mut member_mut(list, &id).keys;
        keys[0].not_after_ms = Some(old_until);
        keys.push(MemberKey {
            public_key: new_public,
            not_before_ms: new_from,
            not_after_ms: None,
        });
    });
    assert_eq!(fx.trust.list().members[0].operator_id, fx.helsinki.id);
    let old_key = &fx.helsinki.key;
    for at_ms in [NOW, new_from - 1] {
        check_key_at(&fx, old_key, at_ms, true);
        check_key_at(&fx, &new_key, at_ms, false);
    }
    for at_ms in [new_from, old_until - 1] {
        check_key_at(&fx, old_key, at_ms, true);
        check_key_at(&fx, &new_key, at_ms, true);
    }
    for at_ms in [old_until, old_until + DAY_MS] {
        check_key_at(&fx, old_key, at_ms, false);
        check_key_at(&fx, &new_key, at_ms, true);
    }
}

/// Decodes a trust-list body and checks that it is accepted, or refused as
/// invalid with a message containing `word`.
fn check_decode(body: &[u8], want: Result<(), &str>) {
    match (wire::decode_trust_list(body), want) {
        (Ok(_), Ok(())) => {}
        (Err(TrustListError::Invalid(message)), Err(word)) => {
            assert!(message.contains(word), "{message:?} lacks {word:?}");
        }
        (got, want) => panic!("decoded to {got:?}, wanted {want:?}"),
    }
    // The same body under a valid signature is refused the same way.
    let governance = secret(GOVERNANCE_SEED);
    let signed = SignedTrustList {
        body: body.to_vec(),
        signatures: vec![(
            governance.public().key_id(),
            governance.sign(TRUST_LIST_DOMAIN, body).to_vec(),
        )],
    };
    let verified = VerifiedTrustList::verify_with_anchor(signed, &anchor(&[&governance]), 1);
    assert_eq!(verified.is_ok(), want.is_ok(), "{verified:?}");
}

/// Re-encodes the fixture's list after `edit` changed its wire form.
fn edited_body(fx: &Fixture, edit: impl FnOnce(&mut pb::TrustList)) -> Vec<u8> {
    let mut raw = pb::TrustList::decode(wire::encode_trust_list(&fx.list()).as_slice()).unwrap();
    edit(&mut raw);
    raw.encode_to_vec()
}

/// A list body that breaks a rule (duplicate member, mismatched key id, bad threshold) is invalid.
#[test]
fn invalid_list_bodies_are_refused() {
    let fx = Fixture::new();
    check_decode(&edited_body(&fx, |_| {}), Ok(()));
    check_decode(
        &edited_body(&fx, |raw| raw.members.push(raw.members[1].clone())),
        Err("listed twice"),
    );
    check_decode(
        &edited_body(&fx, |raw| {
            raw.members[0].keys[0].key_id = "0000000000000000".into()
        }),
        Err("does not match"),
    );
    check_decode(
        &edited_body(&fx, |raw| {
            let other = raw.members[1].keys[0].key_id.clone();
            raw.members[0].keys[0].key_id = other;
        }),
        Err("does not match"),
    );
    check_decode(
        &edited_body(&fx, |raw| {
            raw.governance_keys[0].key_id = "0000000000000000".into()
        }),
        Err("does not match"),
    );
    check_decode(&edited_body(&fx, |raw| raw.threshold = 0), Err("threshold"));
    check_decode(&edited_body(&fx, |raw| raw.threshold = 2), Err("threshold"));
    check_decode(
        &edited_body(&fx, |raw| raw.governance_keys.clear()),
        Err("governance keys"),
    );
    check_decode(
        &edited_body(&fx, |raw| raw.members[0].keys.clear()),
        Err("keys"),
    );
    check_decode(
        &edited_body(&fx, |raw| raw.federation_id.clear()),
        Err("federation_id"),
    );
    check_decode(
        &edited_body(&fx, |raw| raw.members[0].operator_id = "Not An Id".into()),
        Err("operator id"),
    );
    check_decode(
        &edited_body(&fx, |raw| raw.members[0].keys[0].public_key.truncate(31)),
        Err("32 bytes"),
    );
}
