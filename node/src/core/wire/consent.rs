//! Consent terms, events, signed logs and their actors.

use mim4_proto::v1 as pb;
use prost::Message as _;

use crate::core::consent::{
    Action, Actor, Attribute, Audience, ConsentEvent, ConsentId, ConsentLog, ConsentTerms,
    EventKind, LawfulBasis, Purpose, RecordKind, ScopeItem, Sector, ServiceId, SignedEvent,
    SubjectId, TermsError,
};
use crate::core::ids::OperatorId;
use crate::core::keys::{KeyId, SIGNATURE_LEN};
use crate::limits;

use super::{at_most_bytes, at_most_items, consent_id_field, operator_id_field, DecodeError};

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

pub(super) fn actor_to_pb(actor: &Actor) -> pb::ConsentActor {
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

pub(super) fn actor_from_pb(raw: pb::ConsentActor) -> Result<Actor, DecodeError> {
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
    let missing = DecodeError::MissingOneof {
        message: "consent event",
        field: "kind",
    };
    let kind = match raw.kind.ok_or(missing)? {
        K::Requested(terms) => EventKind::Requested(terms_from_pb(terms)?),
        K::Granted(actor) => EventKind::Granted(actor_from_pb(actor)?),
        K::Refused(actor) => EventKind::Refused(actor_from_pb(actor)?),
        K::Narrowed(terms) => EventKind::Narrowed(terms_from_pb(terms)?),
        K::Withdrawn(actor) => EventKind::Withdrawn(actor_from_pb(actor)?),
        K::Invalidated(reason) => {
            at_most_bytes("invalidation reason", &reason, limits::TEXT_FIELD_BYTES_MAX)?;
            EventKind::Invalidated { reason }
        }
        K::Expired(_) => EventKind::Expired,
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
