//! The predicate language of data requests: a predicate as it arrives on the
//! wire (attribute, operator, JSON operand) is parsed, validated against the
//! catalogue, and evaluated on a JSON value.
//!
//! Invariants: nothing panics; `!=` answers the opposite of `==` on any
//! value; an evaluable `==` holds of the operand itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mim4_node::core::consent::{Purpose, ServiceId, SubjectId};
use mim4_node::core::exchange::{self, DataRequest, Op, Predicate};
use mim4_node::core::ids::MessageId;
use mim4_node::core::wire;
use mim4_proto::v1 as pb;

fuzz_target!(|input: (u8, String, String, String, String)| {
    let (choice, attribute, op, operand, value) = input;
    let world = mim4_fuzz::world();
    // Half the time a catalogued attribute, so validation reaches the type checks.
    let attribute = match mim4_fuzz::VALUE_TYPES.get(usize::from(choice % 12)) {
        Some(&value_type) => mim4_fuzz::attribute_name(value_type),
        None => attribute,
    };
    let raw = pb::Predicate {
        attribute,
        op,
        value_json: operand,
    };
    let Ok(predicate) = wire::predicate_from_pb(raw) else {
        return;
    };
    let request = DataRequest {
        request_id: MessageId::from_bytes([1; 16]),
        subject: SubjectId::new("fi:hetu:010180-1234").unwrap(),
        service: ServiceId::new("fi.helsinki/early-education").unwrap(),
        purpose: Purpose::new("dpv:ServiceProvision").unwrap(),
        attributes: Vec::new(),
        predicates: vec![predicate.clone()],
    };
    let _ = exchange::validate(&request, &world.trust, &world.sender.id, None);
    let Ok(value) = serde_json::from_str::<serde_json::Value>(&value) else {
        return;
    };
    let _ = exchange::evaluate(&predicate, &value);
    let with_op = |op| Predicate {
        op,
        ..predicate.clone()
    };
    let equal = exchange::evaluate(&with_op(Op::Equal), &value);
    let not_equal = exchange::evaluate(&with_op(Op::NotEqual), &value);
    assert_eq!(equal.map(|b| !b), not_equal);
    if let Some(itself) = exchange::evaluate(&with_op(Op::Equal), &predicate.operand) {
        assert!(itself, "{} == itself is false", predicate.operand);
    }
});
