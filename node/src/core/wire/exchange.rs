//! Data requests, predicates and data responses.

use mim4_proto::v1 as pb;

use crate::core::consent::{Attribute, Purpose, ServiceId, SubjectId};
use crate::core::exchange::{Answer, DataRequest, DataResponse, Op, Predicate, Released, Withheld};
use crate::limits;

use super::{
    at_most_bytes, at_most_items, consent_id_field, message_id_field, operator_id_field, required,
    DecodeError,
};

pub(super) fn predicate_to_pb(p: &Predicate) -> pb::Predicate {
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
                let predicate = required(a.predicate, "answer", "predicate")?;
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
