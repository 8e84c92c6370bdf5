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
    EventKind, LawfulBasis, Purpose, RecordKind, ScopeItem, Sector, ServiceId, SignedEvent,
    SubjectId, TermsError,
};
use crate::core::envelope::{Envelope, Memo, Payload, Receipt, SignedEnvelope};
use crate::core::exchange::{Answer, DataRequest, DataResponse, Op, Predicate, Released, Withheld};
use crate::core::ids::{MessageId, OperatorId};
use crate::core::keys::{KeyId, PublicKey, SIGNATURE_LEN};
use crate::core::trust::{
    CatalogueAttribute, GovernanceKey, Member, MemberKey, MemberStatus, Role, ServiceEntry,
    SignedTrustList, TrustList, TrustListError, ValueType,
};
use crate::limits;

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
pub fn memo_from_pb(memo: pb::Memo) -> Result<Memo, String> {
    if memo.subject.len() > limits::MEMO_SUBJECT_BYTES_MAX {
        return Err(format!(
            "memo subject is {} bytes, more than the {} allowed",
            memo.subject.len(),
            limits::MEMO_SUBJECT_BYTES_MAX
        ));
    }
    if memo.text.len() > limits::MEMO_TEXT_BYTES_MAX {
        return Err(format!(
            "memo text is {} bytes, more than the {} allowed",
            memo.text.len(),
            limits::MEMO_TEXT_BYTES_MAX
        ));
    }
    Ok(Memo {
        subject: memo.subject,
        text: memo.text,
    })
}

/// Decodes and validates an envelope body.
pub fn decode_envelope(body: &[u8]) -> Result<Envelope, String> {
    use pb::envelope::Payload as P;
    let raw = pb::Envelope::decode(body).map_err(|e| format!("body does not decode: {e}"))?;
    let message_id = message_id_field(&raw.message_id, "message_id")?;
    let sender = OperatorId::new(raw.sender).map_err(|e| format!("sender: {e}"))?;
    let recipient = OperatorId::new(raw.recipient).map_err(|e| format!("recipient: {e}"))?;
    let in_reply_to = if raw.in_reply_to.is_empty() {
        None
    } else {
        Some(message_id_field(&raw.in_reply_to, "in_reply_to")?)
    };
    if raw.rulebook_version.len() > limits::TEXT_FIELD_BYTES_MAX {
        return Err("rulebook_version is too long".into());
    }
    let payload = match raw.payload {
        None => return Err("no payload (or a payload this node does not know)".into()),
        Some(P::Memo(memo)) => Payload::Memo(memo_from_pb(memo)?),
        Some(P::Receipt(receipt)) => {
            if receipt.outcome != pb::ReceiptOutcome::Applied as i32 {
                return Err(format!("receipt outcome {} is not known", receipt.outcome));
            }
            Payload::Receipt(Receipt {
                message_id: message_id_field(&receipt.message_id, "receipt.message_id")?,
                body_sha256: receipt
                    .body_sha256
                    .as_slice()
                    .try_into()
                    .map_err(|_| "receipt.body_sha256 must be 32 bytes".to_owned())?,
                applied_at_ms: receipt.applied_at_ms,
            })
        }
        Some(P::TrustListUpdate(update)) => {
            let list = update
                .trust_list
                .ok_or_else(|| "trust_list_update carries no trust list".to_owned())?;
            Payload::TrustListUpdate(signed_trust_list_from_pb(list).map_err(|e| e.to_string())?)
        }
        Some(P::ConsentOffer(offer)) => {
            let terms = offer
                .terms
                .ok_or_else(|| "consent_offer carries no terms".to_owned())?;
            Payload::ConsentOffer(terms_from_pb(terms).map_err(|e| e.to_string())?)
        }
        Some(P::ConsentRecord(log)) => Payload::ConsentRecord(consent_log_from_pb(log)?),
        Some(P::ConsentStatusQuery(query)) => Payload::ConsentStatusQuery(
            ConsentId::from_slice(&query.consent_id)
                .ok_or_else(|| "consent_status_query.consent_id must be 16 bytes".to_owned())?,
        ),
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

fn message_id_field(bytes: &[u8], field: &str) -> Result<MessageId, String> {
    MessageId::from_slice(bytes).ok_or_else(|| {
        format!(
            "{field} must be {} bytes, got {}",
            MessageId::LEN,
            bytes.len()
        )
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
pub fn decode_signed_envelope(bytes: &[u8]) -> Result<SignedEnvelope, String> {
    let raw = pb::SignedEnvelope::decode(bytes)
        .map_err(|e| format!("signed envelope does not decode: {e}"))?;
    // prost skips unknown fields, lets a repeated field override an earlier
    // one and takes fields in any order; refuse all three, so one message has
    // one byte form, the canonical one (replay and storage see exactly what
    // was signed and nothing else). The copy is bounded by the size limit.
    if raw.encoded_len() != bytes.len() || raw.encode_to_vec() != bytes {
        return Err("signed envelope has unknown, repeated, padded or reordered fields".into());
    }
    if raw.signature.len() != SIGNATURE_LEN {
        return Err(format!(
            "signature must be {SIGNATURE_LEN} bytes, got {}",
            raw.signature.len()
        ));
    }
    if raw.key_id.is_empty() || raw.key_id.len() > 64 {
        return Err("key_id must be 1 to 64 bytes".into());
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
    let mut governance_keys = Vec::with_capacity(raw.governance_keys.len());
    for g in raw.governance_keys {
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
    if raw.threshold == 0 || raw.threshold as usize > governance_keys.len() {
        return Err(invalid(format!(
            "threshold {} must be between 1 and the {} governance keys",
            raw.threshold,
            governance_keys.len()
        )));
    }
    if raw.members.len() > limits::MEMBERS_MAX {
        return Err(invalid(format!(
            "{} members, more than the {} allowed",
            raw.members.len(),
            limits::MEMBERS_MAX
        )));
    }
    let mut members = Vec::with_capacity(raw.members.len());
    let mut seen_ids = std::collections::BTreeSet::new();
    for m in raw.members {
        let member = member_from_pb(m).map_err(invalid)?;
        if !seen_ids.insert(member.operator_id.clone()) {
            return Err(invalid(format!(
                "member {} is listed twice",
                member.operator_id
            )));
        }
        members.push(member);
    }
    if raw.attributes.len() > limits::CATALOGUE_ATTRIBUTES_MAX
        || raw.services.len() > limits::REGISTRY_SERVICES_MAX
    {
        return Err(invalid(format!(
            "at most {} attributes and {} services",
            limits::CATALOGUE_ATTRIBUTES_MAX,
            limits::REGISTRY_SERVICES_MAX
        )));
    }
    let mut attributes = Vec::with_capacity(raw.attributes.len());
    for a in raw.attributes {
        let name = Attribute::new(a.name).map_err(|e| invalid(e.to_string()))?;
        let text_ok = [&a.unit, &a.sensitivity, &a.description]
            .iter()
            .all(|t| t.len() <= limits::TEXT_FIELD_BYTES_MAX);
        if !text_ok || a.sources.is_empty() || a.sources.len() > 8 {
            return Err(invalid(format!(
                "attribute {name}: 1 to 8 sources and short texts"
            )));
        }
        attributes.push(CatalogueAttribute {
            value_type: ValueType::parse(&a.value_type).ok_or_else(|| {
                invalid(format!("attribute {name}: unknown type {:?}", a.value_type))
            })?,
            unit: a.unit,
            sensitivity: a.sensitivity,
            description: a.description,
            sources: a
                .sources
                .into_iter()
                .map(|s| OperatorId::new(s).map_err(|e| invalid(format!("attribute {name}: {e}"))))
                .collect::<Result<_, _>>()?,
            name,
        });
    }
    let mut services = Vec::with_capacity(raw.services.len());
    for entry in raw.services {
        let service_id = ServiceId::new(entry.service_id).map_err(|e| invalid(e.to_string()))?;
        if entry.name.len() > limits::TEXT_FIELD_BYTES_MAX || entry.purposes.len() > 16 {
            return Err(invalid(format!(
                "service {service_id}: name too long or too many purposes"
            )));
        }
        services.push(ServiceEntry {
            purposes: entry
                .purposes
                .into_iter()
                .map(|p| Purpose::new(p).map_err(|e| invalid(format!("service {service_id}: {e}"))))
                .collect::<Result<_, _>>()?,
            name: entry.name,
            service_id,
        });
    }
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

fn member_from_pb(m: pb::Member) -> Result<Member, String> {
    let operator_id = OperatorId::new(m.operator_id).map_err(|e| e.to_string())?;
    let text_ok = |s: &String| s.len() <= limits::TEXT_FIELD_BYTES_MAX;
    if !text_ok(&m.name) || !text_ok(&m.country) || !text_ok(&m.grpc_endpoint) {
        return Err(format!("member {operator_id}: a text field is too long"));
    }
    if m.p2p_addrs.len() > 16 || !m.p2p_addrs.iter().all(text_ok) {
        return Err(format!(
            "member {operator_id}: too many or too long p2p addresses"
        ));
    }
    if m.sectors.len() > 32 || !m.sectors.iter().all(text_ok) {
        return Err(format!(
            "member {operator_id}: too many or too long sectors"
        ));
    }
    if m.keys.is_empty() || m.keys.len() > limits::KEYS_PER_MEMBER_MAX {
        return Err(format!(
            "member {operator_id} has {} keys, 1 to {} allowed",
            m.keys.len(),
            limits::KEYS_PER_MEMBER_MAX
        ));
    }
    let mut keys = Vec::with_capacity(m.keys.len());
    for k in m.keys {
        let public_key = PublicKey::from_bytes(&k.public_key)
            .map_err(|e| format!("member {operator_id} key {}: {e}", k.key_id))?;
        if public_key.key_id().as_str() != k.key_id {
            return Err(format!(
                "member {operator_id}: key id {} does not match its key",
                k.key_id
            ));
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
            _ => return Err(format!("member {operator_id}: unknown role {r}")),
        });
    }
    let status = match pb::MemberStatus::try_from(m.status) {
        Ok(pb::MemberStatus::Active) => MemberStatus::Active,
        Ok(pb::MemberStatus::Suspended) => MemberStatus::Suspended,
        Ok(pb::MemberStatus::Revoked) => MemberStatus::Revoked,
        _ => return Err(format!("member {operator_id}: unknown status {}", m.status)),
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

fn actor_from_pb(raw: pb::ConsentActor) -> Result<Actor, String> {
    if raw.delegations.len() > limits::DELEGATION_DEPTH_MAX
        || raw.authentication.len() > limits::TEXT_FIELD_BYTES_MAX
    {
        return Err("actor: too many delegations or authentication text too long".into());
    }
    Ok(Actor {
        person: SubjectId::new(raw.person).map_err(|e| e.to_string())?,
        for_grantor: SubjectId::new(raw.for_grantor).map_err(|e| e.to_string())?,
        delegations: raw
            .delegations
            .iter()
            .map(|d| {
                ConsentId::from_slice(d).ok_or_else(|| "delegation id must be 16 bytes".to_owned())
            })
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
pub fn decode_consent_event(body: &[u8]) -> Result<ConsentEvent, String> {
    use pb::consent_event::Kind as K;
    if body.len() > limits::MESSAGE_BYTES_MAX {
        return Err("consent event is too large".into());
    }
    let raw = pb::ConsentEvent::decode(body)
        .map_err(|e| format!("consent event does not decode: {e}"))?;
    let kind = match raw.kind {
        None => return Err("consent event has no kind".into()),
        Some(K::Requested(terms)) => {
            EventKind::Requested(terms_from_pb(terms).map_err(|e| e.to_string())?)
        }
        Some(K::Granted(actor)) => EventKind::Granted(actor_from_pb(actor)?),
        Some(K::Refused(actor)) => EventKind::Refused(actor_from_pb(actor)?),
        Some(K::Narrowed(terms)) => {
            EventKind::Narrowed(terms_from_pb(terms).map_err(|e| e.to_string())?)
        }
        Some(K::Withdrawn(actor)) => EventKind::Withdrawn(actor_from_pb(actor)?),
        Some(K::Invalidated(reason)) => {
            if reason.len() > limits::TEXT_FIELD_BYTES_MAX {
                return Err("invalidation reason is too long".into());
            }
            EventKind::Invalidated { reason }
        }
        Some(K::Expired(_)) => EventKind::Expired,
    };
    Ok(ConsentEvent {
        consent_id: ConsentId::from_slice(&raw.consent_id)
            .ok_or_else(|| "consent event: consent_id must be 16 bytes".to_owned())?,
        seq: raw.seq,
        at_ms: raw.at_ms,
        recorder: OperatorId::new(raw.recorder).map_err(|e| format!("recorder: {e}"))?,
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
pub fn consent_log_from_pb(raw: pb::ConsentRecordUpdate) -> Result<ConsentLog, String> {
    if raw.events.is_empty() || raw.events.len() > limits::CONSENT_EVENTS_MAX {
        return Err(format!(
            "a consent log has 1 to {} events, got {}",
            limits::CONSENT_EVENTS_MAX,
            raw.events.len()
        ));
    }
    Ok(ConsentLog {
        consent_id: ConsentId::from_slice(&raw.consent_id)
            .ok_or_else(|| "consent log: consent_id must be 16 bytes".to_owned())?,
        events: raw
            .events
            .into_iter()
            .map(|e| {
                if e.signature.len() != SIGNATURE_LEN || e.key_id.len() > 64 {
                    return Err("consent event: bad signature or key id length".to_owned());
                }
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
pub fn decode_consent_log(bytes: &[u8]) -> Result<ConsentLog, String> {
    let raw = pb::ConsentRecordUpdate::decode(bytes).map_err(|e| e.to_string())?;
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
pub fn predicate_from_pb(raw: pb::Predicate) -> Result<Predicate, String> {
    if raw.value_json.len() > limits::PREDICATE_OPERAND_BYTES_MAX {
        return Err("predicate operand is too large".into());
    }
    Ok(Predicate {
        attribute: Attribute::new(raw.attribute).map_err(|e| e.to_string())?,
        op: Op::parse(&raw.op).ok_or_else(|| {
            format!(
                "predicate operator {:?} is not one of < <= > >= == != contains",
                raw.op
            )
        })?,
        operand: serde_json::from_str(&raw.value_json)
            .map_err(|e| format!("predicate operand is not JSON: {e}"))?,
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
pub fn data_request_from_pb(raw: pb::DataRequest) -> Result<DataRequest, String> {
    if raw.attributes.len() + raw.predicates.len() > limits::REQUEST_ATTRIBUTES_MAX {
        return Err(format!(
            "the request asks for {} attributes and predicates, more than the {} allowed",
            raw.attributes.len() + raw.predicates.len(),
            limits::REQUEST_ATTRIBUTES_MAX
        ));
    }
    Ok(DataRequest {
        request_id: MessageId::from_slice(&raw.request_id)
            .ok_or_else(|| "request_id must be 16 bytes".to_owned())?,
        subject: SubjectId::new(raw.subject).map_err(|e| e.to_string())?,
        service: ServiceId::new(raw.service).map_err(|e| e.to_string())?,
        purpose: Purpose::new(raw.purpose).map_err(|e| e.to_string())?,
        attributes: raw
            .attributes
            .into_iter()
            .map(|a| Attribute::new(a).map_err(|e| e.to_string()))
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
pub fn data_response_from_pb(raw: pb::DataResponse) -> Result<DataResponse, String> {
    let bound = limits::REQUEST_ATTRIBUTES_MAX;
    if raw.values.len() > bound || raw.answers.len() > bound || raw.withheld.len() > bound {
        return Err("the response holds more entries than a request may ask for".into());
    }
    let consent = |bytes: &[u8]| {
        ConsentId::from_slice(bytes).ok_or_else(|| "consent_id must be 16 bytes".to_owned())
    };
    let attribute = |name: String| Attribute::new(name).map_err(|e| e.to_string());
    Ok(DataResponse {
        request_id: MessageId::from_slice(&raw.request_id)
            .ok_or_else(|| "request_id must be 16 bytes".to_owned())?,
        source: OperatorId::new(raw.source).map_err(|e| e.to_string())?,
        values: raw
            .values
            .into_iter()
            .map(|v| {
                if v.value_json.len() > limits::ATTRIBUTE_VALUE_BYTES_MAX {
                    return Err("a value exceeds the size limit".to_owned());
                }
                Ok(Released {
                    value: serde_json::from_str(&v.value_json)
                        .map_err(|e| format!("value is not JSON: {e}"))?,
                    consent_id: consent(&v.consent_id)?,
                    retrieved_at_ms: v.retrieved_at_ms,
                    attribute: attribute(v.attribute)?,
                })
            })
            .collect::<Result<_, String>>()?,
        answers: raw
            .answers
            .into_iter()
            .map(|a| {
                Ok(Answer {
                    predicate: predicate_from_pb(a.predicate.ok_or("answer without predicate")?)?,
                    holds: a.holds,
                    consent_id: consent(&a.consent_id)?,
                })
            })
            .collect::<Result<_, String>>()?,
        withheld: raw
            .withheld
            .into_iter()
            .map(|w| {
                if w.code.len() > 64 || w.reason.len() > limits::TEXT_FIELD_BYTES_MAX {
                    return Err("withheld entry text too long".to_owned());
                }
                Ok(Withheld {
                    attribute: attribute(w.attribute)?,
                    code: w.code,
                    reason: w.reason,
                    predicate: w.predicate,
                })
            })
            .collect::<Result<_, String>>()?,
    })
}
