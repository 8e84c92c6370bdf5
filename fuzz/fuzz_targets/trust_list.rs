//! Trust-list decoding: the input as a signed trust list (checked against the
//! governance anchor and offered as an update), and as a list body that
//! governance signs validly, so the fuzzer reaches every rule of the body
//! decoder.
//!
//! Invariants: nothing panics; a signed body verifies exactly when it
//! decodes, to the same list; a decoded list survives an encode/decode round
//! trip unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mim4_node::core::keys::TRUST_LIST_DOMAIN;
use mim4_node::core::trust::{SignedTrustList, VerifiedTrustList};
use mim4_node::core::wire;

fuzz_target!(|data: &[u8]| {
    let world = mim4_fuzz::world();
    let anchor = [world.governance.public()];

    if let Ok(signed) = SignedTrustList::decode(data) {
        let _ = VerifiedTrustList::verify_with_anchor(signed.clone(), &anchor, 1);
        let _ = world.trust.check_update(signed, mim4_fuzz::NOW);
    }

    let decoded = wire::decode_trust_list(data);
    let signed = SignedTrustList {
        body: data.to_vec(),
        signatures: vec![(
            world.governance.public().key_id(),
            world.governance.sign(TRUST_LIST_DOMAIN, data).to_vec(),
        )],
    };
    match (
        VerifiedTrustList::verify_with_anchor(signed, &anchor, 1),
        &decoded,
    ) {
        (Ok(verified), Ok(list)) => assert_eq!(verified.list(), list),
        (Err(_), Err(_)) => {}
        (verified, decoded) => panic!("verified {verified:?}, decoded {decoded:?}"),
    }
    if let Ok(list) = decoded {
        let again = wire::decode_trust_list(&wire::encode_trust_list(&list));
        assert_eq!(again.as_ref(), Ok(&list));
    }
});
