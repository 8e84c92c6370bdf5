//! Envelopes and signed envelopes (and memos, the payload they carry for
//! people): encoding, and decoding with every field checked.

use mim4_proto::v1 as pb;
use prost::Message as _;

use crate::core::envelope::{Envelope, Memo, Payload, Receipt, SignedEnvelope};
use crate::core::keys::{KeyId, SIGNATURE_LEN};
use crate::limits;

use super::{
    at_most_bytes, consent_id_field, consent_log_from_pb, consent_log_to_pb, data_request_from_pb,
    data_request_to_pb, data_response_from_pb, data_response_to_pb, message_id_field,
    operator_id_field, required, signed_trust_list_from_pb, signed_trust_list_to_pb, terms_from_pb,
    terms_to_pb, DecodeError,
};

/// Encodes an envelope body.
pub fn encode_envelope(envelope: &Envelope) -> Vec<u8> {
    envelope_to_pb(envelope).encode_to_vec()
}

pub(super) fn envelope_to_pb(envelope: &Envelope) -> pb::Envelope {
    use pb::envelope::Payload as P;
    let payload = match &envelope.payload {
        Payload::Memo(memo) => P::Memo(memo_to_pb(memo)),
        Payload::Receipt(receipt) => P::Receipt(pb::Receipt {
            message_id: receipt.message_id.as_bytes().to_vec(),
            body_sha256: receipt.body_sha256.to_vec(),
            outcome: pb::ReceiptOutcome::Applied as i32,
            applied_at_ms: receipt.applied_at_ms,
        }),
        Payload::TrustListUpdate(list) => P::TrustListUpdate(pb::TrustListUpdate {
            trust_list: Some(signed_trust_list_to_pb(list)),
        }),
        Payload::ConsentOffer(terms) => P::ConsentOffer(pb::ConsentOffer {
            terms: Some(terms_to_pb(terms)),
        }),
        Payload::ConsentRecord(log) => P::ConsentRecord(consent_log_to_pb(log)),
        Payload::ConsentStatusQuery(id) => P::ConsentStatusQuery(pb::ConsentStatusQuery {
            consent_id: id.as_bytes().to_vec(),
        }),
        Payload::ConsentStatusAnswer(log) => P::ConsentStatusAnswer(consent_log_to_pb(log)),
        Payload::DataRequest(request) => P::DataRequest(data_request_to_pb(request)),
        Payload::DataResponse(response) => P::DataResponse(data_response_to_pb(response)),
    };
    pb::Envelope {
        protocol_version: envelope.protocol_version,
        rulebook_version: envelope.rulebook_version.clone(),
        trust_list_version: envelope.trust_list_version,
        message_id: envelope.message_id.as_bytes().to_vec(),
        sender: envelope.sender.to_string(),
        recipient: envelope.recipient.to_string(),
        created_at_ms: envelope.created_at_ms,
        expires_at_ms: envelope.expires_at_ms,
        in_reply_to: envelope
            .in_reply_to
            .map(|id| id.as_bytes().to_vec())
            .unwrap_or_default(),
        payload: Some(payload),
    }
}

/// Converts a memo to its wire type (also used by the local API).
pub fn memo_to_pb(memo: &Memo) -> pb::Memo {
    pb::Memo {
        subject: memo.subject.clone(),
        text: memo.text.clone(),
    }
}

/// Validates a memo from the wire or the local API.
pub fn memo_from_pb(memo: pb::Memo) -> Result<Memo, DecodeError> {
    at_most_bytes(
        "memo subject",
        &memo.subject,
        limits::MEMO_SUBJECT_BYTES_MAX,
    )?;
    at_most_bytes("memo text", &memo.text, limits::MEMO_TEXT_BYTES_MAX)?;
    Ok(Memo {
        subject: memo.subject,
        text: memo.text,
    })
}

/// Decodes and validates an envelope body.
///
/// Long (about 80 lines) as a flat list of the header fields and payload
/// kinds, each converted once; splitting it would scatter the one mapping.
pub fn decode_envelope(body: &[u8]) -> Result<Envelope, DecodeError> {
    use pb::envelope::Payload as P;
    let raw = pb::Envelope::decode(body).map_err(|source| DecodeError::Protobuf {
        message: "body",
        source,
    })?;
    let message_id = message_id_field(&raw.message_id, "message_id")?;
    let sender = operator_id_field(raw.sender, "sender")?;
    let recipient = operator_id_field(raw.recipient, "recipient")?;
    let in_reply_to = if raw.in_reply_to.is_empty() {
        None
    } else {
        Some(message_id_field(&raw.in_reply_to, "in_reply_to")?)
    };
    at_most_bytes(
        "rulebook_version",
        &raw.rulebook_version,
        limits::TEXT_FIELD_BYTES_MAX,
    )?;
    let missing = DecodeError::MissingOneof {
        message: "envelope",
        field: "payload",
    };
    let payload = match raw.payload.ok_or(missing)? {
        P::Memo(memo) => Payload::Memo(memo_from_pb(memo)?),
        P::Receipt(receipt) => {
            if receipt.outcome != pb::ReceiptOutcome::Applied as i32 {
                return Err(DecodeError::UnknownEnum {
                    field: "receipt outcome",
                    value: receipt.outcome,
                });
            }
            Payload::Receipt(Receipt {
                message_id: message_id_field(&receipt.message_id, "receipt.message_id")?,
                body_sha256: receipt.body_sha256.as_slice().try_into().map_err(|_| {
                    DecodeError::Length {
                        field: "receipt.body_sha256",
                        expected: 32,
                        got: receipt.body_sha256.len(),
                    }
                })?,
                applied_at_ms: receipt.applied_at_ms,
            })
        }
        P::TrustListUpdate(update) => {
            let list = required(update.trust_list, "trust_list_update", "trust list")?;
            Payload::TrustListUpdate(signed_trust_list_from_pb(list)?)
        }
        P::ConsentOffer(offer) => {
            let terms = required(offer.terms, "consent_offer", "terms")?;
            Payload::ConsentOffer(terms_from_pb(terms)?)
        }
        P::ConsentRecord(log) => Payload::ConsentRecord(consent_log_from_pb(log)?),
        P::ConsentStatusQuery(query) => Payload::ConsentStatusQuery(consent_id_field(
            &query.consent_id,
            "consent_status_query.consent_id",
        )?),
        P::ConsentStatusAnswer(log) => Payload::ConsentStatusAnswer(consent_log_from_pb(log)?),
        P::DataRequest(request) => Payload::DataRequest(data_request_from_pb(request)?),
        P::DataResponse(response) => Payload::DataResponse(data_response_from_pb(response)?),
    };
    Ok(Envelope {
        protocol_version: raw.protocol_version,
        rulebook_version: raw.rulebook_version,
        trust_list_version: raw.trust_list_version,
        message_id,
        sender,
        recipient,
        created_at_ms: raw.created_at_ms,
        expires_at_ms: raw.expires_at_ms,
        in_reply_to,
        payload,
    })
}

/// Encodes a signed envelope.
pub fn encode_signed_envelope(signed: &SignedEnvelope) -> Vec<u8> {
    signed_envelope_to_pb(signed).encode_to_vec()
}

/// Converts a signed envelope to its wire type.
pub fn signed_envelope_to_pb(signed: &SignedEnvelope) -> pb::SignedEnvelope {
    pb::SignedEnvelope {
        body: signed.body.clone(),
        signature: signed.signature.clone(),
        key_id: signed.key_id.to_string(),
    }
}

/// Decodes a signed envelope (not verified).
pub fn decode_signed_envelope(bytes: &[u8]) -> Result<SignedEnvelope, DecodeError> {
    let raw = pb::SignedEnvelope::decode(bytes).map_err(|source| DecodeError::Protobuf {
        message: "signed envelope",
        source,
    })?;
    // prost skips unknown fields, lets a repeated field override an earlier
    // one and takes fields in any order; refuse all three, so one message has
    // one byte form, the canonical one (replay and storage see exactly what
    // was signed and nothing else). The copy is bounded by the size limit.
    if raw.encoded_len() != bytes.len() || raw.encode_to_vec() != bytes {
        return Err(DecodeError::NotCanonical);
    }
    if raw.signature.len() != SIGNATURE_LEN {
        return Err(DecodeError::Length {
            field: "signature",
            expected: SIGNATURE_LEN,
            got: raw.signature.len(),
        });
    }
    if raw.key_id.is_empty() || raw.key_id.len() > 64 {
        return Err(DecodeError::LengthRange {
            field: "key_id",
            min: 1,
            max: 64,
            got: raw.key_id.len(),
        });
    }
    Ok(SignedEnvelope {
        body: raw.body,
        signature: raw.signature,
        key_id: KeyId::from_wire(&raw.key_id),
    })
}

// ---------------------------------------------------------------------------
// Trust list
// ---------------------------------------------------------------------------
