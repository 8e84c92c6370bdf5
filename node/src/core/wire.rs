//! The one module that knows the wire format: conversions between the
//! generated `mim4_proto::v1` types and the core's domain types.
//!
//! Decoders validate as they convert (lengths, ids, keys, enum values), so a
//! domain value that exists is well formed. Callers check size limits before
//! calling a decoder.
//!
//! # Layout
//! - this file: [`DecodeError`], the one decode error, and the field checks all decoders share;
//! - `envelope`: envelopes, signed envelopes, memos;
//! - `trust`: the trust list and its signed form;
//! - `consent`: terms, events, signed logs;
//! - `exchange`: data requests, predicates, data responses.

use crate::core::consent::{ConsentId, NameError, TermsError};
use crate::core::ids::{MessageId, OperatorId, OperatorIdError};
use crate::core::keys::KeyError;
use crate::core::trust::TrustListError;

mod consent;
mod envelope;
mod exchange;
mod trust;

pub use self::consent::{
    consent_log_from_pb, consent_log_to_pb, decode_consent_event, decode_consent_log,
    encode_consent_event, encode_consent_log, terms_from_pb, terms_to_pb,
};
pub use self::envelope::{
    decode_envelope, decode_signed_envelope, encode_envelope, encode_signed_envelope, memo_from_pb,
    memo_to_pb, signed_envelope_to_pb,
};
pub use self::exchange::{
    data_request_from_pb, data_request_to_pb, data_response_from_pb, data_response_to_pb,
    predicate_from_pb,
};
pub use self::trust::{
    decode_signed_trust_list, decode_trust_list, encode_signed_trust_list, encode_trust_list,
    role_to_pb, signed_trust_list_from_pb, signed_trust_list_to_pb, status_to_pb,
};

/// Why bytes, or a generated wire message, do not make a domain value.
///
/// The messages name the field and, where there is one, the value and the
/// limit: they reach peers (inside a `malformed` refusal), the local API and
/// the logs, so a reader can tell which rule an input broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes are not a protobuf message of the expected type.
    #[error("{message} does not decode: {source}")]
    Protobuf {
        /// Which message was expected.
        message: &'static str,
        /// What prost found.
        source: prost::DecodeError,
    },
    /// The bytes decode, but are not the one canonical encoding of what they decode to.
    #[error("signed envelope has unknown, repeated, padded or reordered fields")]
    NotCanonical,
    /// A field the message needs is absent.
    #[error("{message} carries no {field}")]
    Missing {
        /// The message.
        message: &'static str,
        /// The absent field.
        field: &'static str,
    },
    /// A `oneof` is unset, or set to a case this node does not know (prost
    /// reads both as `None`).
    #[error("{message} has no {field} (or one this node does not know)")]
    MissingOneof {
        /// The message.
        message: &'static str,
        /// The `oneof`.
        field: &'static str,
    },
    /// A fixed-size field (an id, a hash, a signature) has another length.
    #[error("{field} must be {expected} bytes, got {got}")]
    Length {
        /// The field.
        field: &'static str,
        /// Its one valid length.
        expected: usize,
        /// Its length here.
        got: usize,
    },
    /// A field's length is outside its bounds.
    #[error("{field} must be {min} to {max} bytes, got {got}")]
    LengthRange {
        /// The field.
        field: &'static str,
        /// Fewest bytes allowed.
        min: usize,
        /// Most bytes allowed.
        max: usize,
        /// Its length here.
        got: usize,
    },
    /// A text or value is longer than its limit.
    #[error("{field} is {size} bytes, more than the {max} allowed")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its size here.
        size: usize,
        /// Most bytes allowed.
        max: usize,
    },
    /// A list holds more items than its limit.
    #[error("{count} {field}, more than the {max} allowed")]
    TooMany {
        /// What the list holds.
        field: &'static str,
        /// Items here.
        count: usize,
        /// Most items allowed.
        max: usize,
    },
    /// A list holds fewer or more items than its bounds.
    #[error("{count} {field}, {min} to {max} allowed")]
    Count {
        /// What the list holds.
        field: &'static str,
        /// Items here.
        count: usize,
        /// Fewest items allowed.
        min: usize,
        /// Most items allowed.
        max: usize,
    },
    /// A protobuf enum field holds a number this node does not know.
    #[error("{field} {value} is not known")]
    UnknownEnum {
        /// The field.
        field: &'static str,
        /// The number received.
        value: i32,
    },
    /// A text field that names one of a fixed set of words holds another.
    #[error("{field} {value:?} is not one of {known}")]
    NotOneOf {
        /// The field.
        field: &'static str,
        /// The text received.
        value: String,
        /// The words allowed.
        known: &'static str,
    },
    /// A field that carries JSON text does not parse as JSON.
    #[error("{field} is not JSON: {reason}")]
    NotJson {
        /// The field.
        field: &'static str,
        /// What the parser found (as text: `serde_json::Error` cannot be cloned or compared).
        reason: String,
    },
    /// An operator id field is not an operator id.
    #[error("{field}: {source}")]
    OperatorId {
        /// The field.
        field: &'static str,
        /// The rule it breaks.
        source: OperatorIdError,
    },
    /// A public key does not decode, is not a curve point, or is weak.
    #[error("key {key_id}: {source}")]
    Key {
        /// The id the key was listed under.
        key_id: String,
        /// What is wrong with it.
        source: KeyError,
    },
    /// A key is listed under an id that is not its own.
    #[error("key id {key_id} does not match its key")]
    KeyMismatch {
        /// The id it was listed under.
        key_id: String,
    },
    /// A trust-list member entry breaks a rule.
    #[error("member {operator_id}: {source}")]
    Member {
        /// The member.
        operator_id: OperatorId,
        /// The rule it breaks.
        source: Box<DecodeError>,
    },
    /// A name (subject, service, purpose, attribute) is invalid.
    #[error(transparent)]
    Name(#[from] NameError),
    /// Consent terms break a rule.
    #[error(transparent)]
    Terms(#[from] TermsError),
    /// A trust list carried in an envelope is refused.
    #[error(transparent)]
    TrustList(#[from] TrustListError),
}

/// A fixed-length id in `field`: `len` bytes that `parse` accepts.
fn id_field<T>(
    bytes: &[u8],
    field: &'static str,
    len: usize,
    parse: fn(&[u8]) -> Option<T>,
) -> Result<T, DecodeError> {
    parse(bytes).ok_or(DecodeError::Length {
        field,
        expected: len,
        got: bytes.len(),
    })
}

pub(super) fn message_id_field(
    bytes: &[u8],
    field: &'static str,
) -> Result<MessageId, DecodeError> {
    id_field(bytes, field, MessageId::LEN, MessageId::from_slice)
}

pub(super) fn consent_id_field(
    bytes: &[u8],
    field: &'static str,
) -> Result<ConsentId, DecodeError> {
    id_field(bytes, field, ConsentId::LEN, ConsentId::from_slice)
}

pub(super) fn operator_id_field(
    id: String,
    field: &'static str,
) -> Result<OperatorId, DecodeError> {
    OperatorId::new(id).map_err(|source| DecodeError::OperatorId { field, source })
}

/// Refuses `count` over `max` with the error `over` makes of the field, the
/// count and the bound.
fn at_most(
    field: &'static str,
    count: usize,
    max: usize,
    over: fn(&'static str, usize, usize) -> DecodeError,
) -> Result<(), DecodeError> {
    if count > max {
        return Err(over(field, count, max));
    }
    Ok(())
}

/// Refuses a text longer than `max` bytes.
pub(super) fn at_most_bytes(
    field: &'static str,
    text: &str,
    max: usize,
) -> Result<(), DecodeError> {
    at_most(field, text.len(), max, |field, size, max| {
        DecodeError::TooLong { field, size, max }
    })
}

/// Refuses a list of more than `max` items.
pub(super) fn at_most_items<T>(
    field: &'static str,
    items: &[T],
    max: usize,
) -> Result<(), DecodeError> {
    at_most(field, items.len(), max, |field, count, max| {
        DecodeError::TooMany { field, count, max }
    })
}

/// The value of a message field that must be set.
pub(super) fn required<T>(
    value: Option<T>,
    message: &'static str,
    field: &'static str,
) -> Result<T, DecodeError> {
    value.ok_or(DecodeError::Missing { message, field })
}

#[cfg(test)]
mod tests {
    use mim4_proto::v1 as pb;
    use prost::Message as _;

    use super::*;
    use crate::limits;

    /// Checks that a decoder refuses its input with exactly `expected` as the message.
    fn check<T: std::fmt::Debug>(got: Result<T, DecodeError>, expected: &str) {
        match got {
            Err(e) => assert_eq!(e.to_string(), expected),
            Ok(value) => panic!("decoded to {value:?}, wanted {expected:?}"),
        }
    }

    /// Each refusal names the field and carries the value and limit it broke.
    #[test]
    fn decode_errors_name_the_field_and_the_limit() {
        let max = limits::MEMO_TEXT_BYTES_MAX;
        let memo = pb::Memo {
            subject: String::new(),
            text: "x".repeat(max + 1),
        };
        check(
            memo_from_pb(memo),
            &format!(
                "memo text is {} bytes, more than the {max} allowed",
                max + 1
            ),
        );
        // The rest of the text is prost's own.
        let refused = decode_signed_envelope(&[0xff])
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert!(
            matches!(&refused, Err(text) if text.starts_with("signed envelope does not decode: ")),
            "{refused:?}"
        );
        let empty = pb::Envelope::default().encode_to_vec();
        check(
            decode_envelope(&empty),
            "message_id must be 16 bytes, got 0",
        );
        let no_payload = pb::Envelope {
            message_id: vec![1; 16],
            sender: "fi.helsinki".into(),
            recipient: "se.stockholm".into(),
            ..pb::Envelope::default()
        };
        check(
            decode_envelope(&no_payload.encode_to_vec()),
            "envelope has no payload (or one this node does not know)",
        );
        let max = limits::REQUEST_ATTRIBUTES_MAX;
        let request = pb::DataRequest {
            attributes: vec!["a.b".into(); max + 1],
            ..pb::DataRequest::default()
        };
        check(
            data_request_from_pb(request),
            &format!(
                "{} attributes and predicates in a request, more than the {max} allowed",
                max + 1
            ),
        );
        let predicate = pb::Predicate {
            attribute: "income.gross_monthly".into(),
            op: "~".into(),
            value_json: "1".into(),
        };
        check(
            predicate_from_pb(predicate),
            "predicate operator \"~\" is not one of < <= > >= == != contains",
        );
        check(
            consent_log_from_pb(pb::ConsentRecordUpdate::default()),
            &format!(
                "0 events in a consent log, 1 to {} allowed",
                limits::CONSENT_EVENTS_MAX
            ),
        );
    }
}
