//! The ISO/IEC TS 27560 consent record as JSON-LD in W3C DPV terms, with
//! its `@context` inline, so that any JSON-LD processor turns it into RDF
//! with no network access: a record must stay checkable offline and years
//! later.

use serde_json::{json, Map, Value};

use super::{attributes, grants, purpose_description, requested_at_ms, rfc3339, ControllerInfo};
use crate::core::consent::{
    Audience, ConsentId, ConsentRecord, ConsentStatus, ConsentTerms, EventKind, SubjectId,
};
use crate::core::ids::OperatorId;

/// The W3C Data Privacy Vocabulary namespace.
pub const DPV_NAMESPACE: &str = "https://w3id.org/dpv#";

/// The DPV profile for ISO/IEC TS 27560 consent records that the JSON-LD follows.
pub const DPV_27560_RECORD_PROFILE: &str = "https://w3id.org/dpv/schema/dpv-27560#record";

/// Builds the ISO/IEC TS 27560 consent record of `record` as JSON-LD in W3C
/// DPV terms, following the DPVCG guide "Consent Records and Receipts as per
/// ISO/IEC TS 27560:2023 using DPV" (profile [`DPV_27560_RECORD_PROFILE`]).
///
/// The record is `urn:mim4:consent:<hex id>`; subjects, operators, services,
/// sectors and attributes get `urn:mim4:` IRIs too, and DPV terms
/// (`dpv:ServiceProvision`) are written as full IRIs under [`DPV_NAMESPACE`].
/// A purpose from another vocabulary keeps its `prefix:Term` form, which
/// JSON-LD reads as an absolute IRI.
///
/// The status is the one the event log records: unlike [`kantara_receipt`](super::kantara_receipt)
/// this takes no time, so a record whose validity ended after its last event
/// still says `ConsentGiven`; its end is stated by `dpv:hasDuration` and
/// `dct:valid`, for the reader to compare with the present.
pub fn iso27560_jsonld(record: &ConsentRecord, controller: &ControllerInfo) -> Value {
    let terms = record.terms();
    let mut doc = Map::new();
    doc.insert(
        "@context".into(),
        json!({
            "dpv": DPV_NAMESPACE,
            "dct": "http://purl.org/dc/terms/",
            "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
            "xsd": "http://www.w3.org/2001/XMLSchema#",
        }),
    );
    doc.insert("@id".into(), json!(consent_iri(record.id())));
    doc.insert("@type".into(), json!("dpv:ConsentRecord"));
    doc.insert("dct:identifier".into(), json!(record.id().to_string()));
    doc.insert("dct:conformsTo".into(), id(DPV_27560_RECORD_PROFILE));
    // The home operator is the consent authority that records every event.
    doc.insert("dct:creator".into(), id(&operator_iri(&terms.home)));
    doc.insert("dct:description".into(), json!(purpose_description(terms)));
    insert_parties(&mut doc, terms, controller);
    insert_processing(&mut doc, terms);
    insert_status(&mut doc, record);
    doc.insert(
        "dpv:hasJurisdiction".into(),
        jurisdiction(&controller.jurisdiction),
    );
    insert_validity(&mut doc, terms);
    Value::Object(doc)
}

/// The data subject, the exporting controller, the source and the recipient.
fn insert_parties(doc: &mut Map<String, Value>, terms: &ConsentTerms, controller: &ControllerInfo) {
    doc.insert(
        "dpv:hasDataSubject".into(),
        json!({ "@id": subject_iri(&terms.subject), "@type": "dpv:DataSubject" }),
    );
    doc.insert(
        "dpv:hasDataController".into(),
        json!({
            "@id": operator_iri(&controller.operator),
            "@type": "dpv:DataController",
            "dpv:hasName": controller.name,
        }),
    );
    doc.insert("dpv:hasDataSource".into(), id(&operator_iri(&terms.source)));
    doc.insert(
        "dpv:hasRecipient".into(),
        id(&audience_iri(&terms.audience)),
    );
}

/// The purposes, the personal data and the legal basis.
fn insert_processing(doc: &mut Map<String, Value>, terms: &ConsentTerms) {
    doc.insert(
        "dpv:hasPurpose".into(),
        Value::Array(
            terms
                .purposes
                .iter()
                .map(|p| id(&dpv_iri(p.as_str())))
                .collect(),
        ),
    );
    doc.insert(
        "dpv:hasPersonalData".into(),
        Value::Array(
            attributes(terms)
                .iter()
                .map(|a| id(&format!("urn:mim4:attribute:{a}")))
                .collect(),
        ),
    );
    doc.insert(
        "dpv:hasLegalBasis".into(),
        id(&dpv_iri(terms.lawful_basis.dpv_term())),
    );
}

/// The status the event log records, and who indicated it, when and how.
fn insert_status(doc: &mut Map<String, Value>, record: &ConsentRecord) {
    let last_event_ms = record
        .events()
        .last()
        .map_or_else(|| requested_at_ms(record), |e| e.at_ms);
    let status = record.status_at(last_event_ms);
    let indication = indication(record, status);
    doc.insert(
        "dpv:hasConsentStatus".into(),
        id(&dpv_iri(status.dpv_term())),
    );
    doc.insert("dpv:isIndicatedAtTime".into(), date_time(indication.at_ms));
    if !indication.by.is_empty() {
        doc.insert(
            "dpv:isIndicatedBy".into(),
            Value::Array(indication.by.iter().map(|iri| id(iri)).collect()),
        );
    }
    doc.insert("dpv:hasIndicationMethod".into(), json!(indication.method));
}

/// The validity window: its end as a DPV duration and both ends as a DCMI period.
fn insert_validity(doc: &mut Map<String, Value>, terms: &ConsentTerms) {
    doc.insert(
        "dpv:hasDuration".into(),
        json!({ "@type": "dpv:UntilTimeDuration", "rdf:value": date_time(terms.not_after_ms) }),
    );
    // DCMI Period encoding of the validity window, both ends in W3C-DTF.
    doc.insert(
        "dct:valid".into(),
        json!({
            "@value": format!(
                "start={}; end={}; scheme=W3C-DTF",
                rfc3339(terms.not_before_ms),
                rfc3339(terms.not_after_ms)
            ),
            "@type": "dct:Period",
        }),
    );
}

/// Who set a record's current status, when and how.
#[derive(Debug)]
struct Indication {
    at_ms: u64,
    /// IRIs of the persons or parties that indicated it.
    by: Vec<String>,
    method: String,
}

/// The event(s) behind `status`: every grant for `Given`, the last refusal,
/// withdrawal or invalidation for those, the request for `Requested`.
fn indication(record: &ConsentRecord, status: ConsentStatus) -> Indication {
    let terms = record.terms();
    let home = operator_iri(&terms.home);
    let ended_at_ms = record
        .ended_at_ms()
        .unwrap_or_else(|| requested_at_ms(record));
    match status {
        ConsentStatus::Given => {
            let (persons, method) = grants(record);
            Indication {
                at_ms: record
                    .given_at_ms()
                    .unwrap_or_else(|| requested_at_ms(record)),
                by: persons.iter().map(|p| subject_iri(p)).collect(),
                method,
            }
        }
        ConsentStatus::Refused | ConsentStatus::Withdrawn => {
            let actor = record
                .events()
                .iter()
                .rev()
                .find_map(|e| match (&e.kind, status) {
                    (EventKind::Refused(actor), ConsentStatus::Refused)
                    | (EventKind::Withdrawn(actor), ConsentStatus::Withdrawn) => Some(actor),
                    _ => None,
                });
            Indication {
                at_ms: ended_at_ms,
                by: actor.map(|a| subject_iri(&a.person)).into_iter().collect(),
                method: actor.map_or_else(String::new, |a| a.authentication.clone()),
            }
        }
        ConsentStatus::Invalidated => {
            let reason = record.events().iter().rev().find_map(|e| match &e.kind {
                EventKind::Invalidated { reason } => Some(reason.as_str()),
                _ => None,
            });
            Indication {
                at_ms: ended_at_ms,
                by: vec![home],
                method: format!(
                    "invalidated by the consent authority: {}",
                    reason.unwrap_or("no reason recorded")
                ),
            }
        }
        ConsentStatus::Requested => Indication {
            at_ms: requested_at_ms(record),
            by: vec![audience_iri(&terms.audience)],
            method: format!("request recorded by the home operator {}", terms.home),
        },
        ConsentStatus::Expired => Indication {
            at_ms: terms.not_after_ms,
            by: Vec::new(),
            method: "validity period ended".into(),
        },
    }
}

fn audience_iri(audience: &Audience) -> String {
    match audience {
        Audience::Service(service) => format!("urn:mim4:service:{}", service.as_str()),
        Audience::Member(operator) => operator_iri(operator),
        Audience::Sector(sector) => format!("urn:mim4:sector:{sector}"),
    }
}

fn consent_iri(id: ConsentId) -> String {
    format!("urn:mim4:consent:{id}")
}

fn operator_iri(operator: &OperatorId) -> String {
    format!("urn:mim4:operator:{operator}")
}

/// A subject's IRI. Subject ids are any printable ASCII, so the characters
/// a URN may not carry (`#`, `?`, `%`, `<`, ...) are percent-encoded.
fn subject_iri(subject: &SubjectId) -> String {
    let mut iri = String::from("urn:mim4:subject:");
    for byte in subject.as_str().bytes() {
        let allowed = byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&byte);
        if allowed {
            iri.push(char::from(byte));
        } else {
            iri.push_str(&format!("%{byte:02X}"));
        }
    }
    iri
}

/// Expands a `dpv:` CURIE to its IRI; other CURIEs stay as they are.
fn dpv_iri(curie: &str) -> String {
    match curie.strip_prefix("dpv:") {
        Some(term) => format!("{DPV_NAMESPACE}{term}"),
        None => curie.to_owned(),
    }
}

/// A jurisdiction: a DPV location IRI for an ISO 3166-1 alpha-2 code, else the text.
fn jurisdiction(text: &str) -> Value {
    if text.len() == 2 && text.bytes().all(|b| b.is_ascii_uppercase()) {
        id(&format!("https://w3id.org/dpv/loc#{text}"))
    } else {
        json!(text)
    }
}

/// A JSON-LD node reference.
fn id(iri: &str) -> Value {
    json!({ "@id": iri })
}

/// A typed `xsd:dateTime` literal.
fn date_time(ms: u64) -> Value {
    json!({ "@value": rfc3339(ms), "@type": "xsd:dateTime" })
}
