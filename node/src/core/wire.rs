//! The one module that knows the wire format: conversions between the
//! generated `mim4_proto::v1` types and the core's domain types.
//!
//! Decoders validate as they convert (lengths, ids, keys, enum values), so a
//! domain value that exists is well formed. Callers check size limits before
//! calling a decoder.

use mim4_proto::v1 as pb;
use prost::Message as _;

use crate::core::consent::{
    Action, Actor, Attribute, Audience, ConsentEvent, ConsentId, ConsentLog, ConsentTerms,
    EventKind, LawfulBasis, NameError, Purpose, RecordKind, ScopeItem, Sector, ServiceId,
    SignedEvent, SubjectId, TermsError,
};
use crate::core::envelope::{Envelope, Memo, Payload, Receipt, SignedEnvelope};
use crate::core::exchange::{Answer, DataRequest, DataResponse, Op, Predicate, Released, Withheld};
use crate::core::ids::{MessageId, OperatorId, OperatorIdError};
use crate::core::keys::{KeyError, KeyId, PublicKey, SIGNATURE_LEN};
use crate::core::trust::{
    CatalogueAttribute, GovernanceKey, Member, MemberKey, MemberStatus, Role, ServiceEntry,
    SignedTrustList, TrustList, TrustListError, ValueType,
};
use crate::limits;

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

// ---------------------------------------------------------------------------
// Envelopes
// ---------------------------------------------------------------------------

/// Encodes an envelope body.
pub fn encode_envelope(envelope: &Envelope) -> Vec<u8> {
    envelope_to_pb(envelope).encode_to_vec()
}

fn envelope_to_pb(envelope: &Envelope) -> pb::Envelope {
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
    let payload = match raw.payload {
        None => {
            return Err(DecodeError::MissingOneof {
                message: "envelope",
                field: "payload",
            })
        }
        Some(P::Memo(memo)) => Payload::Memo(memo_from_pb(memo)?),
        Some(P::Receipt(receipt)) => {
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
        Some(P::TrustListUpdate(update)) => {
            let list = update.trust_list.ok_or(DecodeError::Missing {
                message: "trust_list_update",
                field: "trust list",
            })?;
            Payload::TrustListUpdate(signed_trust_list_from_pb(list)?)
        }
        Some(P::ConsentOffer(offer)) => {
            let terms = offer.terms.ok_or(DecodeError::Missing {
                message: "consent_offer",
                field: "terms",
            })?;
            Payload::ConsentOffer(terms_from_pb(terms)?)
        }
        Some(P::ConsentRecord(log)) => Payload::ConsentRecord(consent_log_from_pb(log)?),
        Some(P::ConsentStatusQuery(query)) => Payload::ConsentStatusQuery(consent_id_field(
            &query.consent_id,
            "consent_status_query.consent_id",
        )?),
        Some(P::ConsentStatusAnswer(log)) => {
            Payload::ConsentStatusAnswer(consent_log_from_pb(log)?)
        }
        Some(P::DataRequest(request)) => Payload::DataRequest(data_request_from_pb(request)?),
        Some(P::DataResponse(response)) => Payload::DataResponse(data_response_from_pb(response)?),
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

fn message_id_field(bytes: &[u8], field: &'static str) -> Result<MessageId, DecodeError> {
    MessageId::from_slice(bytes).ok_or(DecodeError::Length {
        field,
        expected: MessageId::LEN,
        got: bytes.len(),
    })
}

fn consent_id_field(bytes: &[u8], field: &'static str) -> Result<ConsentId, DecodeError> {
    ConsentId::from_slice(bytes).ok_or(DecodeError::Length {
        field,
        expected: ConsentId::LEN,
        got: bytes.len(),
    })
}

fn operator_id_field(id: String, field: &'static str) -> Result<OperatorId, DecodeError> {
    OperatorId::new(id).map_err(|source| DecodeError::OperatorId { field, source })
}

/// Refuses a text longer than `max` bytes.
fn at_most_bytes(field: &'static str, text: &str, max: usize) -> Result<(), DecodeError> {
    if text.len() > max {
        return Err(DecodeError::TooLong {
            field,
            size: text.len(),
            max,
        });
    }
    Ok(())
}

/// Refuses a list of more than `max` items.
fn at_most_items<T>(field: &'static str, items: &[T], max: usize) -> Result<(), DecodeError> {
    if items.len() > max {
        return Err(DecodeError::TooMany {
            field,
            count: items.len(),
            max,
        });
    }
    Ok(())
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

/// Encodes a trust list body.
pub fn encode_trust_list(list: &TrustList) -> Vec<u8> {
    let raw = pb::TrustList {
        federation_id: list.federation_id.clone(),
        version: list.version,
        issued_at_ms: list.issued_at_ms,
        valid_until_ms: list.valid_until_ms,
        rulebook_version: list.rulebook_version.clone(),
        governance_keys: list
            .governance_keys
            .iter()
            .map(|g| pb::GovernanceKey {
                key_id: g.public_key.key_id().to_string(),
                public_key: g.public_key.to_bytes().to_vec(),
            })
            .collect(),
        threshold: list.threshold,
        members: list.members.iter().map(member_to_pb).collect(),
        attributes: list
            .attributes
            .iter()
            .map(|a| pb::CatalogueAttribute {
                name: a.name.to_string(),
                value_type: a.value_type.as_str().into(),
                unit: a.unit.clone(),
                sensitivity: a.sensitivity.clone(),
                description: a.description.clone(),
                sources: a.sources.iter().map(ToString::to_string).collect(),
            })
            .collect(),
        services: list
            .services
            .iter()
            .map(|s| pb::ServiceEntry {
                service_id: s.service_id.to_string(),
                name: s.name.clone(),
                purposes: s.purposes.iter().map(ToString::to_string).collect(),
            })
            .collect(),
    };
    raw.encode_to_vec()
}

fn member_to_pb(member: &Member) -> pb::Member {
    pb::Member {
        operator_id: member.operator_id.to_string(),
        name: member.name.clone(),
        country: member.country.clone(),
        roles: member.roles.iter().map(|r| role_to_pb(*r) as i32).collect(),
        keys: member
            .keys
            .iter()
            .map(|k| pb::MemberKey {
                key_id: k.public_key.key_id().to_string(),
                public_key: k.public_key.to_bytes().to_vec(),
                not_before_ms: k.not_before_ms,
                not_after_ms: k.not_after_ms.unwrap_or(0),
            })
            .collect(),
        grpc_endpoint: member.grpc_endpoint.clone(),
        p2p_addrs: member.p2p_addrs.clone(),
        status: status_to_pb(member.status) as i32,
        sectors: member.sectors.clone(),
    }
}

/// Converts a role to its wire enum.
pub fn role_to_pb(role: Role) -> pb::Role {
    match role {
        Role::Operator => pb::Role::Operator,
        Role::Source => pb::Role::Source,
        Role::Consumer => pb::Role::Consumer,
    }
}

/// Converts a status to its wire enum.
pub fn status_to_pb(status: MemberStatus) -> pb::MemberStatus {
    match status {
        MemberStatus::Active => pb::MemberStatus::Active,
        MemberStatus::Suspended => pb::MemberStatus::Suspended,
        MemberStatus::Revoked => pb::MemberStatus::Revoked,
    }
}

/// Decodes and validates a trust list body.
pub fn decode_trust_list(body: &[u8]) -> Result<TrustList, TrustListError> {
    if body.len() > limits::TRUST_LIST_BYTES_MAX {
        return Err(TrustListError::Oversized {
            size: body.len(),
            max: limits::TRUST_LIST_BYTES_MAX,
        });
    }
    let raw = pb::TrustList::decode(body).map_err(|e| TrustListError::Malformed(e.to_string()))?;
    let invalid = |text: String| TrustListError::Invalid(text);
    if raw.federation_id.is_empty() || raw.federation_id.len() > limits::TEXT_FIELD_BYTES_MAX {
        return Err(invalid("federation_id must be 1 to 512 bytes".into()));
    }
    if raw.governance_keys.is_empty() || raw.governance_keys.len() > limits::GOVERNANCE_KEYS_MAX {
        return Err(invalid(format!(
            "a list names 1 to {} governance keys, this one {}",
            limits::GOVERNANCE_KEYS_MAX,
            raw.governance_keys.len()
        )));
    }
    let governance_keys = governance_keys_from_pb(raw.governance_keys)?;
    if raw.threshold == 0 || raw.threshold as usize > governance_keys.len() {
        return Err(invalid(format!(
            "threshold {} must be between 1 and the {} governance keys",
            raw.threshold,
            governance_keys.len()
        )));
    }
    let members = members_from_pb(raw.members)?;
    if raw.attributes.len() > limits::CATALOGUE_ATTRIBUTES_MAX
        || raw.services.len() > limits::REGISTRY_SERVICES_MAX
    {
        return Err(invalid(format!(
            "at most {} attributes and {} services",
            limits::CATALOGUE_ATTRIBUTES_MAX,
            limits::REGISTRY_SERVICES_MAX
        )));
    }
    let attributes = raw
        .attributes
        .into_iter()
        .map(catalogue_attribute_from_pb)
        .collect::<Result<_, _>>()?;
    let services = raw
        .services
        .into_iter()
        .map(service_from_pb)
        .collect::<Result<_, _>>()?;
    Ok(TrustList {
        attributes,
        services,
        federation_id: raw.federation_id,
        version: raw.version,
        issued_at_ms: raw.issued_at_ms,
        valid_until_ms: raw.valid_until_ms,
        rulebook_version: raw.rulebook_version,
        governance_keys,
        threshold: raw.threshold,
        members,
    })
}

/// A trust list's governance keys, each checked against its key id.
fn governance_keys_from_pb(
    keys: Vec<pb::GovernanceKey>,
) -> Result<Vec<GovernanceKey>, TrustListError> {
    let invalid = TrustListError::Invalid;
    let mut governance_keys = Vec::with_capacity(keys.len());
    for g in keys {
        let public_key = PublicKey::from_bytes(&g.public_key)
            .map_err(|e| invalid(format!("governance key {}: {e}", g.key_id)))?;
        if public_key.key_id().as_str() != g.key_id {
            return Err(invalid(format!(
                "governance key id {} does not match its key",
                g.key_id
            )));
        }
        governance_keys.push(GovernanceKey { public_key });
    }
    Ok(governance_keys)
}

/// A trust list's members, at most [`limits::MEMBERS_MAX`], none listed twice.
fn members_from_pb(raw: Vec<pb::Member>) -> Result<Vec<Member>, TrustListError> {
    let invalid = TrustListError::Invalid;
    if raw.len() > limits::MEMBERS_MAX {
        return Err(invalid(format!(
            "{} members, more than the {} allowed",
            raw.len(),
            limits::MEMBERS_MAX
        )));
    }
    let mut members = Vec::with_capacity(raw.len());
    let mut seen_ids = std::collections::BTreeSet::new();
    for m in raw {
        let member = member_from_pb(m).map_err(|e| invalid(e.to_string()))?;
        if !seen_ids.insert(member.operator_id.clone()) {
            return Err(invalid(format!(
                "member {} is listed twice",
                member.operator_id
            )));
        }
        members.push(member);
    }
    Ok(members)
}

/// One attribute of the catalogue: its type, short texts and 1 to
/// [`limits::ATTRIBUTE_SOURCES_MAX`] sources.
fn catalogue_attribute_from_pb(
    a: pb::CatalogueAttribute,
) -> Result<CatalogueAttribute, TrustListError> {
    let invalid = TrustListError::Invalid;
    let name = Attribute::new(a.name).map_err(|e| invalid(e.to_string()))?;
    let text_ok = [&a.unit, &a.sensitivity, &a.description]
        .iter()
        .all(|t| t.len() <= limits::TEXT_FIELD_BYTES_MAX);
    if !text_ok || a.sources.is_empty() || a.sources.len() > limits::ATTRIBUTE_SOURCES_MAX {
        return Err(invalid(format!(
            "attribute {name}: 1 to {} sources and short texts",
            limits::ATTRIBUTE_SOURCES_MAX
        )));
    }
    Ok(CatalogueAttribute {
        value_type: ValueType::parse(&a.value_type)
            .ok_or_else(|| invalid(format!("attribute {name}: unknown type {:?}", a.value_type)))?,
        unit: a.unit,
        sensitivity: a.sensitivity,
        description: a.description,
        sources: a
            .sources
            .into_iter()
            .map(|s| OperatorId::new(s).map_err(|e| invalid(format!("attribute {name}: {e}"))))
            .collect::<Result<_, _>>()?,
        name,
    })
}

/// One service of the registry, with at most [`limits::SERVICE_PURPOSES_MAX`] purposes.
fn service_from_pb(entry: pb::ServiceEntry) -> Result<ServiceEntry, TrustListError> {
    let invalid = TrustListError::Invalid;
    let service_id = ServiceId::new(entry.service_id).map_err(|e| invalid(e.to_string()))?;
    if entry.name.len() > limits::TEXT_FIELD_BYTES_MAX
        || entry.purposes.len() > limits::SERVICE_PURPOSES_MAX
    {
        return Err(invalid(format!(
            "service {service_id}: name too long or too many purposes"
        )));
    }
    Ok(ServiceEntry {
        purposes: entry
            .purposes
            .into_iter()
            .map(|p| Purpose::new(p).map_err(|e| invalid(format!("service {service_id}: {e}"))))
            .collect::<Result<_, _>>()?,
        name: entry.name,
        service_id,
    })
}

fn member_from_pb(m: pb::Member) -> Result<Member, DecodeError> {
    let operator_id = operator_id_field(m.operator_id, "operator_id")?;
    let in_member = |source: DecodeError| DecodeError::Member {
        operator_id: operator_id.clone(),
        source: Box::new(source),
    };
    let text_max = limits::TEXT_FIELD_BYTES_MAX;
    at_most_bytes("name", &m.name, text_max).map_err(in_member)?;
    at_most_bytes("country", &m.country, text_max).map_err(in_member)?;
    at_most_bytes("grpc_endpoint", &m.grpc_endpoint, text_max).map_err(in_member)?;
    at_most_items("p2p addresses", &m.p2p_addrs, 16).map_err(in_member)?;
    for addr in &m.p2p_addrs {
        at_most_bytes("p2p address", addr, text_max).map_err(in_member)?;
    }
    at_most_items("sectors", &m.sectors, 32).map_err(in_member)?;
    for sector in &m.sectors {
        at_most_bytes("sector", sector, text_max).map_err(in_member)?;
    }
    if m.keys.is_empty() || m.keys.len() > limits::KEYS_PER_MEMBER_MAX {
        return Err(in_member(DecodeError::Count {
            field: "keys",
            count: m.keys.len(),
            min: 1,
            max: limits::KEYS_PER_MEMBER_MAX,
        }));
    }
    let mut keys = Vec::with_capacity(m.keys.len());
    for k in m.keys {
        let public_key = PublicKey::from_bytes(&k.public_key).map_err(|source| {
            in_member(DecodeError::Key {
                key_id: k.key_id.clone(),
                source,
            })
        })?;
        if public_key.key_id().as_str() != k.key_id {
            return Err(in_member(DecodeError::KeyMismatch { key_id: k.key_id }));
        }
        keys.push(MemberKey {
            public_key,
            not_before_ms: k.not_before_ms,
            not_after_ms: (k.not_after_ms != 0).then_some(k.not_after_ms),
        });
    }
    let mut roles = Vec::with_capacity(m.roles.len());
    for r in m.roles {
        roles.push(match pb::Role::try_from(r) {
            Ok(pb::Role::Operator) => Role::Operator,
            Ok(pb::Role::Source) => Role::Source,
            Ok(pb::Role::Consumer) => Role::Consumer,
            _ => {
                return Err(in_member(DecodeError::UnknownEnum {
                    field: "role",
                    value: r,
                }))
            }
        });
    }
    let status = match pb::MemberStatus::try_from(m.status) {
        Ok(pb::MemberStatus::Active) => MemberStatus::Active,
        Ok(pb::MemberStatus::Suspended) => MemberStatus::Suspended,
        Ok(pb::MemberStatus::Revoked) => MemberStatus::Revoked,
        _ => {
            return Err(in_member(DecodeError::UnknownEnum {
                field: "status",
                value: m.status,
            }))
        }
    };
    Ok(Member {
        operator_id,
        name: m.name,
        country: m.country,
        roles,
        keys,
        grpc_endpoint: m.grpc_endpoint,
        p2p_addrs: m.p2p_addrs,
        status,
        sectors: m.sectors,
    })
}

/// Encodes a signed trust list.
pub fn encode_signed_trust_list(signed: &SignedTrustList) -> Vec<u8> {
    signed_trust_list_to_pb(signed).encode_to_vec()
}

/// Converts a signed trust list to its wire type.
pub fn signed_trust_list_to_pb(signed: &SignedTrustList) -> pb::SignedTrustList {
    pb::SignedTrustList {
        body: signed.body.clone(),
        signatures: signed
            .signatures
            .iter()
            .map(|(key_id, signature)| pb::GovernanceSignature {
                key_id: key_id.to_string(),
                signature: signature.clone(),
            })
            .collect(),
    }
}

/// Decodes a signed trust list (signatures not yet checked).
pub fn decode_signed_trust_list(bytes: &[u8]) -> Result<SignedTrustList, TrustListError> {
    if bytes.len() > limits::TRUST_LIST_BYTES_MAX {
        return Err(TrustListError::Oversized {
            size: bytes.len(),
            max: limits::TRUST_LIST_BYTES_MAX,
        });
    }
    let raw =
        pb::SignedTrustList::decode(bytes).map_err(|e| TrustListError::Malformed(e.to_string()))?;
    signed_trust_list_from_pb(raw)
}

/// Validates a signed trust list from its wire type.
pub fn signed_trust_list_from_pb(
    raw: pb::SignedTrustList,
) -> Result<SignedTrustList, TrustListError> {
    if raw.signatures.len() > limits::GOVERNANCE_KEYS_MAX {
        return Err(TrustListError::Invalid(format!(
            "{} signatures, more than the {} allowed",
            raw.signatures.len(),
            limits::GOVERNANCE_KEYS_MAX
        )));
    }
    Ok(SignedTrustList {
        body: raw.body,
        signatures: raw
            .signatures
            .into_iter()
            .map(|s| (KeyId::from_wire(&s.key_id), s.signature))
            .collect(),
    })
}

// ---------------------------------------------------------------------------
// Consent
// ---------------------------------------------------------------------------

/// Converts consent terms to their wire type (also used by the local API).
pub fn terms_to_pb(terms: &ConsentTerms) -> pb::ConsentTerms {
    let (service, member, sector) = match &terms.audience {
        Audience::Service(s) => (s.to_string(), String::new(), String::new()),
        Audience::Member(m) => (String::new(), m.to_string(), String::new()),
        Audience::Sector(s) => (String::new(), String::new(), s.to_string()),
    };
    pb::ConsentTerms {
        consent_id: terms.consent_id.as_bytes().to_vec(),
        kind: match terms.kind {
            RecordKind::Consent => "consent".into(),
            RecordKind::Arrangement => "arrangement".into(),
        },
        subject: terms.subject.to_string(),
        home: terms.home.to_string(),
        grantors: terms.grantors.iter().map(ToString::to_string).collect(),
        audience_service: service,
        audience_member: member,
        audience_sector: sector,
        source: terms.source.to_string(),
        scope: terms
            .scope
            .iter()
            .map(|s| pb::ScopeItem {
                attribute: s.attribute.to_string(),
                action: s.action.as_str().into(),
            })
            .collect(),
        purposes: terms.purposes.iter().map(ToString::to_string).collect(),
        purpose_text: terms.purpose_text.clone(),
        lawful_basis: terms.lawful_basis.dpv_term().into(),
        not_before_ms: terms.not_before_ms,
        not_after_ms: terms.not_after_ms,
    }
}

/// Validates consent terms from the wire or the local API.
///
/// Long (about 90 lines) as a flat list of the terms' fields, each checked
/// once against its bound, in the order of the message.
pub fn terms_from_pb(raw: pb::ConsentTerms) -> Result<ConsentTerms, TermsError> {
    let invalid = |field: &'static str, value: &str, rule: &'static str| {
        TermsError::Name(crate::core::consent::NameError {
            kind: field,
            value: value.chars().take(64).collect(),
            rule,
        })
    };
    let consent_id = ConsentId::from_slice(&raw.consent_id)
        .ok_or_else(|| invalid("consent id", "", "16 bytes"))?;
    let kind = match raw.kind.as_str() {
        "consent" | "" => RecordKind::Consent,
        "arrangement" => RecordKind::Arrangement,
        other => return Err(invalid("kind", other, "consent or arrangement")),
    };
    let operator = |field: &'static str, value: &str| {
        OperatorId::new(value)
            .map_err(|_| invalid(field, value, "an operator id such as fi.helsinki"))
    };
    let audience = match (
        raw.audience_service.is_empty(),
        raw.audience_member.is_empty(),
        raw.audience_sector.is_empty(),
    ) {
        (false, true, true) => Audience::Service(ServiceId::new(raw.audience_service)?),
        (true, false, true) => Audience::Member(operator("audience member", &raw.audience_member)?),
        (true, true, false) => Audience::Sector(Sector::new(raw.audience_sector)?),
        _ => {
            return Err(invalid(
                "audience",
                "",
                "exactly one of audience_service, audience_member, audience_sector",
            ))
        }
    };
    for (field, got, max) in [
        ("grantors", raw.grantors.len(), limits::CONSENT_GRANTORS_MAX),
        ("scope", raw.scope.len(), limits::CONSENT_SCOPE_MAX),
        ("purposes", raw.purposes.len(), limits::CONSENT_PURPOSES_MAX),
    ] {
        if got > max {
            return Err(TermsError::Count { field, max, got });
        }
    }
    let scope = raw
        .scope
        .into_iter()
        .map(|s| {
            let action = match s.action.as_str() {
                "read" | "" => Action::Read,
                "verify" => Action::Verify,
                other => return Err(invalid("action", other, "read or verify")),
            };
            Ok(ScopeItem {
                attribute: Attribute::new(s.attribute)?,
                action,
            })
        })
        .collect::<Result<Vec<_>, TermsError>>()?;
    let terms = ConsentTerms {
        consent_id,
        kind,
        subject: SubjectId::new(raw.subject)?,
        home: operator("home", &raw.home)?,
        grantors: raw
            .grantors
            .into_iter()
            .map(SubjectId::new)
            .collect::<Result<_, _>>()?,
        audience,
        source: operator("source", &raw.source)?,
        scope,
        purposes: raw
            .purposes
            .into_iter()
            .map(Purpose::new)
            .collect::<Result<_, _>>()?,
        purpose_text: raw.purpose_text,
        lawful_basis: LawfulBasis::parse(&raw.lawful_basis).ok_or_else(|| {
            invalid(
                "lawful basis",
                &raw.lawful_basis,
                "a DPV lawful basis such as dpv:Consent",
            )
        })?,
        not_before_ms: raw.not_before_ms,
        not_after_ms: raw.not_after_ms,
    };
    terms.validate()?;
    Ok(terms)
}

fn actor_to_pb(actor: &Actor) -> pb::ConsentActor {
    pb::ConsentActor {
        person: actor.person.to_string(),
        for_grantor: actor.for_grantor.to_string(),
        delegations: actor
            .delegations
            .iter()
            .map(|d| d.as_bytes().to_vec())
            .collect(),
        authentication: actor.authentication.clone(),
    }
}

fn actor_from_pb(raw: pb::ConsentActor) -> Result<Actor, DecodeError> {
    at_most_items(
        "delegations of an actor",
        &raw.delegations,
        limits::DELEGATION_DEPTH_MAX,
    )?;
    at_most_bytes(
        "actor authentication",
        &raw.authentication,
        limits::TEXT_FIELD_BYTES_MAX,
    )?;
    Ok(Actor {
        person: SubjectId::new(raw.person)?,
        for_grantor: SubjectId::new(raw.for_grantor)?,
        delegations: raw
            .delegations
            .iter()
            .map(|d| consent_id_field(d, "delegation id"))
            .collect::<Result<_, _>>()?,
        authentication: raw.authentication,
    })
}

/// Encodes a consent event body.
pub fn encode_consent_event(event: &ConsentEvent) -> Vec<u8> {
    use pb::consent_event::Kind as K;
    let kind = match &event.kind {
        EventKind::Requested(terms) => K::Requested(terms_to_pb(terms)),
        EventKind::Granted(actor) => K::Granted(actor_to_pb(actor)),
        EventKind::Refused(actor) => K::Refused(actor_to_pb(actor)),
        EventKind::Narrowed(terms) => K::Narrowed(terms_to_pb(terms)),
        EventKind::Withdrawn(actor) => K::Withdrawn(actor_to_pb(actor)),
        EventKind::Invalidated { reason } => K::Invalidated(reason.clone()),
        EventKind::Expired => K::Expired(true),
    };
    pb::ConsentEvent {
        consent_id: event.consent_id.as_bytes().to_vec(),
        seq: event.seq,
        at_ms: event.at_ms,
        recorder: event.recorder.to_string(),
        kind: Some(kind),
    }
    .encode_to_vec()
}

/// Decodes and validates a consent event body.
pub fn decode_consent_event(body: &[u8]) -> Result<ConsentEvent, DecodeError> {
    use pb::consent_event::Kind as K;
    if body.len() > limits::MESSAGE_BYTES_MAX {
        return Err(DecodeError::TooLong {
            field: "consent event",
            size: body.len(),
            max: limits::MESSAGE_BYTES_MAX,
        });
    }
    let raw = pb::ConsentEvent::decode(body).map_err(|source| DecodeError::Protobuf {
        message: "consent event",
        source,
    })?;
    let kind = match raw.kind {
        None => {
            return Err(DecodeError::MissingOneof {
                message: "consent event",
                field: "kind",
            })
        }
        Some(K::Requested(terms)) => EventKind::Requested(terms_from_pb(terms)?),
        Some(K::Granted(actor)) => EventKind::Granted(actor_from_pb(actor)?),
        Some(K::Refused(actor)) => EventKind::Refused(actor_from_pb(actor)?),
        Some(K::Narrowed(terms)) => EventKind::Narrowed(terms_from_pb(terms)?),
        Some(K::Withdrawn(actor)) => EventKind::Withdrawn(actor_from_pb(actor)?),
        Some(K::Invalidated(reason)) => {
            at_most_bytes("invalidation reason", &reason, limits::TEXT_FIELD_BYTES_MAX)?;
            EventKind::Invalidated { reason }
        }
        Some(K::Expired(_)) => EventKind::Expired,
    };
    Ok(ConsentEvent {
        consent_id: consent_id_field(&raw.consent_id, "consent event consent_id")?,
        seq: raw.seq,
        at_ms: raw.at_ms,
        recorder: operator_id_field(raw.recorder, "recorder")?,
        kind,
    })
}

/// Converts a signed consent log to its wire type.
pub fn consent_log_to_pb(log: &ConsentLog) -> pb::ConsentRecordUpdate {
    pb::ConsentRecordUpdate {
        consent_id: log.consent_id.as_bytes().to_vec(),
        events: log
            .events
            .iter()
            .map(|e| pb::SignedConsentEvent {
                body: e.body.clone(),
                signature: e.signature.clone(),
                key_id: e.key_id.to_string(),
            })
            .collect(),
    }
}

/// Validates a signed consent log from its wire type (signatures not yet checked).
pub fn consent_log_from_pb(raw: pb::ConsentRecordUpdate) -> Result<ConsentLog, DecodeError> {
    if raw.events.is_empty() || raw.events.len() > limits::CONSENT_EVENTS_MAX {
        return Err(DecodeError::Count {
            field: "events in a consent log",
            count: raw.events.len(),
            min: 1,
            max: limits::CONSENT_EVENTS_MAX,
        });
    }
    Ok(ConsentLog {
        consent_id: consent_id_field(&raw.consent_id, "consent log consent_id")?,
        events: raw
            .events
            .into_iter()
            .map(|e| {
                if e.signature.len() != SIGNATURE_LEN {
                    return Err(DecodeError::Length {
                        field: "consent event signature",
                        expected: SIGNATURE_LEN,
                        got: e.signature.len(),
                    });
                }
                at_most_bytes("consent event key_id", &e.key_id, 64)?;
                Ok(SignedEvent {
                    body: e.body,
                    signature: e.signature,
                    key_id: KeyId::from_wire(&e.key_id),
                })
            })
            .collect::<Result<_, _>>()?,
    })
}

/// Encodes a signed consent log for storage.
pub fn encode_consent_log(log: &ConsentLog) -> Vec<u8> {
    consent_log_to_pb(log).encode_to_vec()
}

/// Decodes a signed consent log from storage.
pub fn decode_consent_log(bytes: &[u8]) -> Result<ConsentLog, DecodeError> {
    let raw = pb::ConsentRecordUpdate::decode(bytes).map_err(|source| DecodeError::Protobuf {
        message: "consent log",
        source,
    })?;
    consent_log_from_pb(raw)
}

// ---------------------------------------------------------------------------
// Data exchange
// ---------------------------------------------------------------------------

fn predicate_to_pb(p: &Predicate) -> pb::Predicate {
    pb::Predicate {
        attribute: p.attribute.to_string(),
        op: p.op.as_str().into(),
        value_json: p.operand.to_string(),
    }
}

/// Validates a predicate from the wire or the local API.
pub fn predicate_from_pb(raw: pb::Predicate) -> Result<Predicate, DecodeError> {
    at_most_bytes(
        "predicate operand",
        &raw.value_json,
        limits::PREDICATE_OPERAND_BYTES_MAX,
    )?;
    Ok(Predicate {
        attribute: Attribute::new(raw.attribute)?,
        op: Op::parse(&raw.op).ok_or_else(|| DecodeError::NotOneOf {
            field: "predicate operator",
            value: raw.op.clone(),
            known: "< <= > >= == != contains",
        })?,
        operand: serde_json::from_str(&raw.value_json).map_err(|e| DecodeError::NotJson {
            field: "predicate operand",
            reason: e.to_string(),
        })?,
    })
}

/// Converts a data request to its wire type.
pub fn data_request_to_pb(r: &DataRequest) -> pb::DataRequest {
    pb::DataRequest {
        request_id: r.request_id.as_bytes().to_vec(),
        subject: r.subject.to_string(),
        service: r.service.to_string(),
        purpose: r.purpose.to_string(),
        attributes: r.attributes.iter().map(ToString::to_string).collect(),
        predicates: r.predicates.iter().map(predicate_to_pb).collect(),
    }
}

/// Validates a data request from the wire or the local API (not yet against the catalogue).
pub fn data_request_from_pb(raw: pb::DataRequest) -> Result<DataRequest, DecodeError> {
    let asked = raw.attributes.len() + raw.predicates.len();
    if asked > limits::REQUEST_ATTRIBUTES_MAX {
        return Err(DecodeError::TooMany {
            field: "attributes and predicates in a request",
            count: asked,
            max: limits::REQUEST_ATTRIBUTES_MAX,
        });
    }
    Ok(DataRequest {
        request_id: message_id_field(&raw.request_id, "request_id")?,
        subject: SubjectId::new(raw.subject)?,
        service: ServiceId::new(raw.service)?,
        purpose: Purpose::new(raw.purpose)?,
        attributes: raw
            .attributes
            .into_iter()
            .map(Attribute::new)
            .collect::<Result<_, _>>()?,
        predicates: raw
            .predicates
            .into_iter()
            .map(predicate_from_pb)
            .collect::<Result<_, _>>()?,
    })
}

/// Converts a data response to its wire type (also used by the local API).
pub fn data_response_to_pb(r: &DataResponse) -> pb::DataResponse {
    pb::DataResponse {
        request_id: r.request_id.as_bytes().to_vec(),
        source: r.source.to_string(),
        values: r
            .values
            .iter()
            .map(|v| pb::AttributeValue {
                attribute: v.attribute.to_string(),
                value_json: v.value.to_string(),
                consent_id: v.consent_id.as_bytes().to_vec(),
                retrieved_at_ms: v.retrieved_at_ms,
            })
            .collect(),
        answers: r
            .answers
            .iter()
            .map(|a| pb::PredicateAnswer {
                predicate: Some(predicate_to_pb(&a.predicate)),
                holds: a.holds,
                consent_id: a.consent_id.as_bytes().to_vec(),
            })
            .collect(),
        withheld: r
            .withheld
            .iter()
            .map(|w| pb::Withheld {
                attribute: w.attribute.to_string(),
                code: w.code.clone(),
                reason: w.reason.clone(),
                predicate: w.predicate,
            })
            .collect(),
    }
}

/// Validates a data response from the wire.
pub fn data_response_from_pb(raw: pb::DataResponse) -> Result<DataResponse, DecodeError> {
    // A response answers one request, so no list in it outgrows what a request may ask for.
    let bound = limits::REQUEST_ATTRIBUTES_MAX;
    at_most_items("values in a response", &raw.values, bound)?;
    at_most_items("answers in a response", &raw.answers, bound)?;
    at_most_items("withheld entries in a response", &raw.withheld, bound)?;
    Ok(DataResponse {
        request_id: message_id_field(&raw.request_id, "request_id")?,
        source: operator_id_field(raw.source, "source")?,
        values: raw
            .values
            .into_iter()
            .map(|v| {
                at_most_bytes(
                    "released value",
                    &v.value_json,
                    limits::ATTRIBUTE_VALUE_BYTES_MAX,
                )?;
                Ok(Released {
                    value: serde_json::from_str(&v.value_json).map_err(|e| {
                        DecodeError::NotJson {
                            field: "value",
                            reason: e.to_string(),
                        }
                    })?,
                    consent_id: consent_id_field(&v.consent_id, "consent_id")?,
                    retrieved_at_ms: v.retrieved_at_ms,
                    attribute: Attribute::new(v.attribute)?,
                })
            })
            .collect::<Result<_, DecodeError>>()?,
        answers: raw
            .answers
            .into_iter()
            .map(|a| {
                let predicate = a.predicate.ok_or(DecodeError::Missing {
                    message: "answer",
                    field: "predicate",
                })?;
                Ok(Answer {
                    predicate: predicate_from_pb(predicate)?,
                    holds: a.holds,
                    consent_id: consent_id_field(&a.consent_id, "consent_id")?,
                })
            })
            .collect::<Result<_, DecodeError>>()?,
        withheld: raw
            .withheld
            .into_iter()
            .map(|w| {
                at_most_bytes("withheld code", &w.code, 64)?;
                at_most_bytes("withheld reason", &w.reason, limits::TEXT_FIELD_BYTES_MAX)?;
                Ok(Withheld {
                    attribute: Attribute::new(w.attribute)?,
                    code: w.code,
                    reason: w.reason,
                    predicate: w.predicate,
                })
            })
            .collect::<Result<_, DecodeError>>()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
