//! Exports of a consent record for people and for other systems: a Kantara
//! Consent Receipt v1.1 ([`kantara_receipt`]), signed by the operator as a
//! compact JWS ([`sign_jws`], checked by [`verify_jws`]), and an ISO/IEC TS
//! 27560 consent record as JSON-LD in W3C DPV terms ([`iso27560_jsonld`]).
//!
//! Everything here is a pure function of a [`ConsentRecord`], the exporting
//! operator's [`ControllerInfo`] and, where the answer depends on it, the
//! time: no file, clock, network or randomness. The receipt id is derived
//! from the record and the export instant instead of drawn at random, so
//! exporting the same state at the same instant gives the same receipt.
//!
//! The JSON-LD carries its `@context` inline instead of naming DPV's remote
//! context, so any JSON-LD processor turns it into RDF with no network
//! access: a receipt must stay checkable offline and years later.

use std::collections::BTreeSet;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha256};

use crate::core::consent::{
    Audience, ConsentId, ConsentRecord, ConsentStatus, ConsentTerms, EventKind, SubjectId,
};
use crate::core::ids::OperatorId;
use crate::core::keys::{KeyId, PublicKey, SecretKey, SIGNATURE_LEN};

/// The `version` of a Kantara Consent Receipt v1.1 (specification section 4.3.1).
pub const KANTARA_VERSION: &str = "KI-CR-v1.1.0";

/// The JSON Schema of a Kantara v1.1 receipt, written from the specification's
/// field list (sections 4.3 to 4.5); the file's `$comment` cites it.
pub const KANTARA_SCHEMA_JSON: &str = include_str!("kantara-consent-receipt-v1.1.schema.json");

/// The W3C Data Privacy Vocabulary namespace.
pub const DPV_NAMESPACE: &str = "https://w3id.org/dpv#";

/// The DPV profile for ISO/IEC TS 27560 consent records that the JSON-LD follows.
pub const DPV_27560_RECORD_PROFILE: &str = "https://w3id.org/dpv/schema/dpv-27560#record";

/// Longest compact JWS [`verify_jws`] accepts, in bytes. A receipt of a record
/// at the limits of [`crate::core::consent`] (64 scope items and 8 purposes
/// of up to 128 bytes, 1 KiB of purpose text) is about 12 KiB of JSON and
/// 16 KiB as base64url; 64 KiB leaves room for long controller details and
/// bounds the work done on a token from outside before its signature is checked.
pub const JWS_BYTES_MAX: usize = 64 * 1024;

/// The domain prefix of JWS signatures: none, because RFC 7515 signs exactly
/// `base64url(header) "." base64url(payload)`, and a JOSE library elsewhere
/// must be able to check the receipt. Domain separation still holds: that
/// input is all base64url characters and dots, while every domain-separated
/// message in [`crate::core::keys`] starts with `mim4/v1/` (a `/` is not
/// base64url), so no signature can be replayed from one use to the other.
const JWS_DOMAIN: &[u8] = b"";

/// Domain prefix of the hash a receipt id is derived from.
const RECEIPT_ID_DOMAIN: &[u8] = b"mim4/v1/kantara-receipt-id\0";

/// A postal address as schema.org `PostalAddress`, which Kantara section 4.4.6 requires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostalAddress {
    /// Street and number, e.g. `Pohjoisesplanadi 11-13`.
    pub street_address: String,
    /// Postal code, e.g. `00170`.
    pub postal_code: String,
    /// City, e.g. `Helsinki`.
    pub locality: String,
    /// ISO 3166-1 alpha-2 country code, e.g. `FI`.
    pub country: String,
}

/// The exporting operator as the PII controller a receipt names. These
/// details come from the operator's configuration, not from the record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerInfo {
    /// The operator's federation id; it becomes the controller's IRI in the JSON-LD.
    pub operator: OperatorId,
    /// Legal name (Kantara `piiController`, 4.4.3).
    pub name: String,
    /// Whether it acts on behalf of another controller (`onBehalf`, 4.4.4).
    pub on_behalf: bool,
    /// Contact person or office (`contact`, 4.4.5).
    pub contact: String,
    /// Postal address (`address`, 4.4.6).
    pub address: PostalAddress,
    /// Contact email (`email`, 4.4.7).
    pub email: String,
    /// Contact phone as an RFC 3966 global number, e.g. `+358-9-310-1691` (`phone`, 4.4.8).
    pub phone: String,
    /// A URL for contacting the controller, if any (`piiControllerUrl`, 4.4.9).
    pub url: Option<String>,
    /// The privacy policy in force (`policyUrl`, 4.4.10).
    pub policy_url: String,
    /// Jurisdiction, an ISO 3166-1 alpha-2 code such as `FI` (`jurisdiction`, 4.3.2).
    pub jurisdiction: String,
    /// Language of the consent interaction, ISO 639-1 such as `fi` (`language`, 4.3.7).
    pub language: String,
    /// The public half of the key that signs its receipts (`publicKey`, 4.3.6),
    /// so a reader of the receipt can check the JWS.
    pub public_key: PublicKey,
}

/// Why a compact JWS is refused by [`verify_jws`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// The token is longer than [`JWS_BYTES_MAX`].
    #[error("jws is {0} bytes, more than the {JWS_BYTES_MAX} allowed")]
    TooLong(usize),
    /// The token is not three dot-separated parts.
    #[error("a compact jws has 3 dot-separated parts, this one has {0}")]
    Malformed(usize),
    /// A part is not canonical unpadded base64url.
    #[error("jws {0} is not unpadded base64url")]
    Base64(&'static str),
    /// The protected header is not a JSON object.
    #[error("jws header is not a json object: {0}")]
    Header(String),
    /// The header names an algorithm other than `EdDSA`.
    #[error("jws algorithm {0:?} is not EdDSA")]
    Algorithm(String),
    /// The header lists critical extensions, none of which are supported (RFC 7515 section 4.1.11).
    #[error("jws header lists critical extensions {0}, which are not supported")]
    Critical(String),
    /// The header names no key, or another key than the one to check with.
    #[error("jws names key {got:?}, but the key to check with is {expected}")]
    KeyMismatch {
        /// The id of the key to check with.
        expected: KeyId,
        /// The `kid` in the header, if any.
        got: Option<String>,
    },
    /// The signature does not verify over the header and payload.
    #[error("jws signature does not verify")]
    BadSignature,
    /// The signed payload is not JSON.
    #[error("jws payload is not json: {0}")]
    Payload(String),
}

/// Builds the Kantara Consent Receipt v1.1 of `record` as it stands at
/// `at_ms`, naming `controller` as the PII controller.
///
/// Every field follows the Kantara Initiative Consent Receipt Specification
/// v1.1.0 (2018-02-20, <https://kantarainitiative.org/download/consent-receipt-specification/>):
/// section 4.2 requires the REQUIRED fields, which sections 4.3 (transaction),
/// 4.4 (parties) and 4.5 (data, purposes, sensitive PII) define; the
/// committed [`KANTARA_SCHEMA_JSON`] lists them. The record maps onto them
/// as follows: the subject is the `piiPrincipalId`; the audience is
/// the `service` and, since the source discloses the data to it, the
/// `thirdPartyName`; the DPV purposes are the `purposeCategory` and the free
/// text the `purpose`; the scope's attributes are the `piiCategory`; the
/// status at `at_ms` and the validity window make up the `termination`
/// text. `consentTimestamp` is when the record became given (or, if it never
/// did, when it ended or was asked for). MIM4's attribute catalogue does not
/// mark special categories yet, so `sensitive` is false and `spiCat` empty.
pub fn kantara_receipt(record: &ConsentRecord, controller: &ControllerInfo, at_ms: u64) -> Value {
    let terms = record.terms();
    let recipient = audience_name(&terms.audience);
    let purpose = json!({
        "purpose": purpose_description(terms),
        "purposeCategory": terms.purposes.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
        // Every grant is an explicit act of the grantor, signed by the home operator.
        "consentType": "EXPLICIT",
        "piiCategory": attributes(terms),
        "primaryPurpose": true,
        "termination": termination(record, at_ms),
        "thirdPartyDisclosure": true,
        "thirdPartyName": recipient,
    });
    let mut pii_controller = Map::new();
    pii_controller.insert("piiController".into(), json!(controller.name));
    pii_controller.insert("onBehalf".into(), json!(controller.on_behalf));
    pii_controller.insert("contact".into(), json!(controller.contact));
    pii_controller.insert(
        "address".into(),
        json!({
            "streetAddress": controller.address.street_address,
            "postalCode": controller.address.postal_code,
            "addressLocality": controller.address.locality,
            "addressCountry": controller.address.country,
        }),
    );
    pii_controller.insert("email".into(), json!(controller.email));
    pii_controller.insert("phone".into(), json!(controller.phone));
    if let Some(url) = &controller.url {
        pii_controller.insert("piiControllerUrl".into(), json!(url));
    }
    let consent_at_ms = record
        .given_at_ms()
        .or(record.ended_at_ms())
        .unwrap_or_else(|| requested_at_ms(record));
    json!({
        "version": KANTARA_VERSION,
        "jurisdiction": controller.jurisdiction,
        "consentTimestamp": consent_at_ms / 1000,
        "collectionMethod": collection_method(record),
        "consentReceiptID": receipt_id(record, controller, at_ms),
        "publicKey": controller.public_key.to_hex(),
        "language": controller.language,
        "piiPrincipalId": terms.subject.as_str(),
        "piiControllers": [pii_controller],
        "policyUrl": controller.policy_url,
        "services": [{ "service": recipient, "purposes": [purpose] }],
        "sensitive": false,
        "spiCat": [],
    })
}

/// Signs `payload` as a compact JWS (RFC 7515) with Ed25519 (`"alg":"EdDSA"`,
/// RFC 8037), naming the key by its [`KeyId`] in `kid`.
pub fn sign_jws(payload: &Value, key: &SecretKey) -> String {
    let header = json!({
        "alg": "EdDSA",
        "kid": key.public().key_id().as_str(),
        "typ": "JWT",
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string())
    );
    let signature = key.sign(JWS_DOMAIN, signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// Checks a compact JWS made by [`sign_jws`] against `key` and returns its
/// payload. Strict: the token is bounded, every part must be canonical
/// unpadded base64url, the header must say `EdDSA`, name `key` and list no
/// critical extensions, and the signature must pass `verify_strict`. The
/// payload is parsed only after the signature has verified.
pub fn verify_jws(jws: &str, key: &PublicKey) -> Result<Value, ExportError> {
    if jws.len() > JWS_BYTES_MAX {
        return Err(ExportError::TooLong(jws.len()));
    }
    let parts = jws.split('.').count();
    let malformed = ExportError::Malformed(parts);
    if parts != 3 {
        return Err(malformed);
    }
    let (signing_input, signature_b64) = jws.rsplit_once('.').ok_or(malformed.clone())?;
    let (header_b64, payload_b64) = signing_input.split_once('.').ok_or(malformed)?;
    let header = decode_part(header_b64, "header")?;
    let header: Value =
        serde_json::from_slice(&header).map_err(|e| ExportError::Header(e.to_string()))?;
    let Value::Object(header) = header else {
        return Err(ExportError::Header("not an object".into()));
    };
    match header.get("alg") {
        Some(Value::String(alg)) if alg == "EdDSA" => {}
        other => {
            return Err(ExportError::Algorithm(
                other.map_or_else(String::new, Value::to_string),
            ))
        }
    }
    if let Some(crit) = header.get("crit") {
        return Err(ExportError::Critical(crit.to_string()));
    }
    let expected = key.key_id();
    match header.get("kid") {
        Some(Value::String(kid)) if kid == expected.as_str() => {}
        other => {
            return Err(ExportError::KeyMismatch {
                expected,
                got: other.map(|kid| kid.as_str().map_or_else(|| kid.to_string(), str::to_owned)),
            })
        }
    }
    let signature = decode_part(signature_b64, "signature")?;
    if signature.len() != SIGNATURE_LEN
        || !key.verify(JWS_DOMAIN, signing_input.as_bytes(), &signature)
    {
        return Err(ExportError::BadSignature);
    }
    let payload = decode_part(payload_b64, "payload")?;
    serde_json::from_slice(&payload).map_err(|e| ExportError::Payload(e.to_string()))
}

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
/// The status is the one the event log records: unlike [`kantara_receipt`]
/// this takes no time, so a record whose validity ended after its last event
/// still says `ConsentGiven`; its end is stated by `dpv:hasDuration` and
/// `dct:valid`, for the reader to compare with the present.
pub fn iso27560_jsonld(record: &ConsentRecord, controller: &ControllerInfo) -> Value {
    let terms = record.terms();
    let last_event_ms = record
        .events()
        .last()
        .map_or_else(|| requested_at_ms(record), |e| e.at_ms);
    let status = record.status_at(last_event_ms);
    let indication = indication(record, status);
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
    doc.insert(
        "dpv:hasJurisdiction".into(),
        jurisdiction(&controller.jurisdiction),
    );
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
    Value::Object(doc)
}

/// Decodes one part of a compact JWS, canonical unpadded base64url only.
fn decode_part(part: &str, name: &'static str) -> Result<Vec<u8>, ExportError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| ExportError::Base64(name))
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

/// The persons who granted the record and how they were authenticated.
fn grants(record: &ConsentRecord) -> (BTreeSet<&SubjectId>, String) {
    let mut persons = BTreeSet::new();
    let mut methods = BTreeSet::new();
    for event in record.events() {
        if let EventKind::Granted(actor) = &event.kind {
            persons.insert(&actor.person);
            if !actor.authentication.is_empty() {
                methods.insert(actor.authentication.as_str());
            }
        }
    }
    let methods: Vec<&str> = methods.into_iter().collect();
    (persons, methods.join(", "))
}

/// Kantara `collectionMethod` (4.3.4): how the grants were collected.
fn collection_method(record: &ConsentRecord) -> String {
    let terms = record.terms();
    let (_, methods) = grants(record);
    let delegated = record
        .events()
        .iter()
        .filter(|e| matches!(&e.kind, EventKind::Granted(a) if a.person != a.for_grantor))
        .count();
    let mut text = format!(
        "Asked for by {}; every step recorded and signed by the home operator {}",
        audience_name(&terms.audience),
        terms.home
    );
    if methods.is_empty() {
        text.push_str("; no grant recorded");
    } else {
        text.push_str(&format!("; granted in {methods}"));
    }
    if delegated > 0 {
        text.push_str(&format!(
            "; {delegated} grant(s) made by a guardian or mandated person on a grantor's behalf"
        ));
    }
    text
}

/// Kantara `termination` (4.5.9): the status at `at_ms` and how the consent ends.
fn termination(record: &ConsentRecord, at_ms: u64) -> String {
    let terms = record.terms();
    let window = format!(
        "valid from {} until {} (UTC)",
        rfc3339(terms.not_before_ms),
        rfc3339(terms.not_after_ms)
    );
    let withdraw = format!(
        "any grantor may withdraw it at any time through the home operator {}, \
         which passes the withdrawal to every party that received data under it",
        terms.home
    );
    let ended = record
        .ended_at_ms()
        .map_or_else(|| "an unrecorded time".to_owned(), rfc3339);
    let after = "no data may be released under it any more";
    match record.status_at(at_ms) {
        ConsentStatus::Requested => format!(
            "Not in force: {} of {} grantor(s) have granted it. Once given it is {window}; {withdraw}.",
            record.granted().len(),
            terms.grantors.len()
        ),
        ConsentStatus::Given => format!("In force, {window}; {withdraw}."),
        ConsentStatus::Refused => format!("Refused at {ended}; it never came into force."),
        ConsentStatus::Withdrawn => format!("Withdrawn at {ended}; {after}."),
        ConsentStatus::Expired => {
            format!("Expired at {}; {after}.", rfc3339(terms.not_after_ms))
        }
        ConsentStatus::Invalidated => format!(
            "Invalidated by the home operator {} at {ended}; {after}.",
            terms.home
        ),
    }
}

/// A receipt id shaped as a UUID (version 8, RFC 9562: the bits are ours),
/// derived from the record's state, the exporting controller and the export
/// instant: the core draws no randomness, and the same export repeats.
fn receipt_id(record: &ConsentRecord, controller: &ControllerInfo, at_ms: u64) -> String {
    let mut hasher = Sha256::new();
    hasher.update(RECEIPT_ID_DOMAIN);
    hasher.update(record.id().as_bytes());
    hasher.update(record.next_seq().to_be_bytes());
    hasher.update(at_ms.to_be_bytes());
    hasher.update(controller.operator.as_str().as_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// When the record was asked for (its first event).
fn requested_at_ms(record: &ConsentRecord) -> u64 {
    record
        .events()
        .first()
        .map_or(record.terms().not_before_ms, |e| e.at_ms)
}

/// The purpose as text: the free text shown to the citizen, or the DPV terms if there is none.
fn purpose_description(terms: &ConsentTerms) -> String {
    if terms.purpose_text.trim().is_empty() {
        let purposes: Vec<&str> = terms.purposes.iter().map(|p| p.as_str()).collect();
        purposes.join(", ")
    } else {
        terms.purpose_text.clone()
    }
}

/// The scope's attributes, each once (an attribute may be both read and verified).
fn attributes(terms: &ConsentTerms) -> Vec<&str> {
    let set: BTreeSet<&str> = terms.scope.iter().map(|s| s.attribute.as_str()).collect();
    set.into_iter().collect()
}

/// The audience in words, for Kantara's `service` and `thirdPartyName`.
fn audience_name(audience: &Audience) -> String {
    match audience {
        Audience::Service(service) => service.as_str().to_owned(),
        Audience::Member(operator) => format!("any service of member {operator}"),
        Audience::Sector(sector) => format!("any member with sector label {sector}"),
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

/// Milliseconds since the epoch as an RFC 3339 UTC timestamp, with
/// milliseconds only when there are some. The date is Howard Hinnant's
/// `civil_from_days`, for days on or after 1970-01-01.
fn rfc3339(ms: u64) -> String {
    let seconds = ms / 1000;
    let days = seconds / 86_400;
    let second_of_day = seconds % 86_400;
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    let time = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    );
    match ms % 1000 {
        0 => format!("{time}Z"),
        millis => format!("{time}.{millis:03}Z"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use oxjsonld::JsonLdParser;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    use super::*;
    use crate::core::consent::{
        Action, Actor, Attribute, ConsentEvent, ConsentTerms, LawfulBasis, Purpose, RecordKind,
        ScopeItem, Sector, ServiceId,
    };

    const HOME: &str = "fi.helsinki";
    const SOURCE: &str = "fi.vero";
    const SERVICE: &str = "fi.espoo/early-education";
    const ASKED_AT_MS: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    const NOT_BEFORE_MS: u64 = ASKED_AT_MS;
    const NOT_AFTER_MS: u64 = 1_798_675_200_000; // 2026-12-31T00:00:00Z
    const STEP_MS: u64 = 60_000;
    const DPV: &str = "https://w3id.org/dpv#";

    fn operator(id: &str) -> OperatorId {
        OperatorId::new(id).unwrap()
    }

    fn subject(id: &str) -> SubjectId {
        SubjectId::new(id).unwrap()
    }

    fn scope(attribute: &str, action: Action) -> ScopeItem {
        ScopeItem {
            attribute: Attribute::new(attribute).unwrap(),
            action,
        }
    }

    /// `subject`'s consent `n`: [`SERVICE`] may read the income and verify
    /// the driving-licence classes held by [`SOURCE`].
    fn terms(n: u8, subject_id: &str, grantors: &[&str]) -> ConsentTerms {
        ConsentTerms {
            consent_id: ConsentId::from_bytes([n; 16]),
            kind: RecordKind::Consent,
            subject: subject(subject_id),
            home: operator(HOME),
            grantors: grantors.iter().map(|g| subject(g)).collect(),
            audience: Audience::Service(ServiceId::new(SERVICE).unwrap()),
            source: operator(SOURCE),
            scope: vec![
                scope("income.gross_monthly", Action::Read),
                scope("licence.driving.classes", Action::Verify),
            ],
            purposes: vec![
                Purpose::new("dpv:ServiceProvision").unwrap(),
                Purpose::new("dpv:EducationalServices").unwrap(),
            ],
            purpose_text: "Daycare fee set from the household's income".into(),
            lawful_basis: LawfulBasis::Consent,
            not_before_ms: NOT_BEFORE_MS,
            not_after_ms: NOT_AFTER_MS,
        }
    }

    fn alice(n: u8) -> ConsentTerms {
        terms(n, "fi:hetu:010190-123A", &["fi:hetu:010190-123A"])
    }

    /// A child's consent that both guardians must grant.
    fn child(n: u8) -> ConsentTerms {
        terms(n, "fi:hetu:150320A987B", &["mother", "father"])
    }

    /// An arrangement: any school may read the skills record.
    fn arrangement(n: u8) -> ConsentTerms {
        ConsentTerms {
            kind: RecordKind::Arrangement,
            audience: Audience::Sector(Sector::new("education").unwrap()),
            scope: vec![scope("skills.record", Action::Read)],
            purposes: vec![Purpose::new("dpv:EducationalServices").unwrap()],
            purpose_text: String::new(),
            ..alice(n)
        }
    }

    fn actor(person: &str, for_grantor: &str) -> Actor {
        Actor {
            person: subject(person),
            for_grantor: subject(for_grantor),
            delegations: Vec::new(),
            authentication: "citizen-app:helsinki-app".into(),
        }
    }

    /// A record asked for at [`ASKED_AT_MS`], then `kinds` one [`STEP_MS`] apart.
    fn record(terms: ConsentTerms, kinds: Vec<EventKind>) -> ConsentRecord {
        let id = terms.consent_id;
        let event = |seq: u32, kind| ConsentEvent {
            consent_id: id,
            seq,
            at_ms: ASKED_AT_MS + u64::from(seq) * STEP_MS,
            recorder: operator(HOME),
            kind,
        };
        let mut record = ConsentRecord::new(event(0, EventKind::Requested(terms))).unwrap();
        for (seq, kind) in (1..).zip(kinds) {
            record.apply(event(seq, kind)).unwrap();
        }
        record
    }

    fn granted(person: &str) -> EventKind {
        EventKind::Granted(actor(person, person))
    }

    fn given(terms: ConsentTerms) -> ConsentRecord {
        let grantors: Vec<String> = terms.grantors.iter().map(ToString::to_string).collect();
        record(terms, grantors.iter().map(|g| granted(g)).collect())
    }

    fn controller() -> ControllerInfo {
        ControllerInfo {
            operator: operator(HOME),
            name: "City of Helsinki".into(),
            on_behalf: false,
            contact: "Data Protection Officer".into(),
            address: PostalAddress {
                street_address: "Pohjoisesplanadi 11-13".into(),
                postal_code: "00170".into(),
                locality: "Helsinki".into(),
                country: "FI".into(),
            },
            email: "tietosuoja@hel.fi".into(),
            phone: "+358-9-310-1691".into(),
            url: Some("https://www.hel.fi/en/data-protection".into()),
            policy_url: "https://www.hel.fi/en/data-protection/privacy-policy".into(),
            jurisdiction: "FI".into(),
            language: "fi".into(),
            public_key: operator_key().public(),
        }
    }

    fn operator_key() -> SecretKey {
        SecretKey::from_bytes(&[7; 32]).unwrap()
    }

    fn validator() -> jsonschema::Validator {
        let schema: Value = serde_json::from_str(KANTARA_SCHEMA_JSON).unwrap();
        jsonschema::meta::validate(&schema).unwrap();
        jsonschema::draft202012::new(&schema).unwrap()
    }

    /// What a test expects at a JSON pointer of a receipt.
    enum Expect {
        /// Exactly this value.
        Is(&'static str, Value),
        /// A string containing this text.
        Contains(&'static str, &'static str),
    }

    /// Exports `record` at `at_ms`, checks that the receipt validates
    /// against the committed schema, and checks `expected`.
    fn check_receipt(record: &ConsentRecord, at_ms: u64, expected: &[Expect]) {
        let receipt = kantara_receipt(record, &controller(), at_ms);
        let errors: Vec<String> = validator()
            .iter_errors(&receipt)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{errors:#?}\n{receipt:#}");
        for expect in expected {
            match expect {
                Expect::Is(pointer, value) => {
                    assert_eq!(
                        receipt.pointer(pointer),
                        Some(value),
                        "{pointer} in {receipt:#}"
                    );
                }
                Expect::Contains(pointer, text) => {
                    let found = receipt
                        .pointer(pointer)
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    assert!(
                        found.contains(text),
                        "{pointer} is {found:?}, wanted {text:?}"
                    );
                }
            }
        }
    }

    /// Receipts carry the record's fields and validate, whatever the record's state.
    #[test]
    fn receipts_follow_the_record() {
        use Expect::{Contains, Is};
        let termination = "/services/0/purposes/0/termination";
        let mid_year_ms = ASKED_AT_MS + 100 * 86_400_000;
        let given_alice = given(alice(1));
        check_receipt(
            &given_alice,
            mid_year_ms,
            &[
                Is("/version", json!("KI-CR-v1.1.0")),
                Is("/jurisdiction", json!("FI")),
                Is("/language", json!("fi")),
                Is("/consentTimestamp", json!((ASKED_AT_MS + STEP_MS) / 1000)),
                Is("/piiPrincipalId", json!("fi:hetu:010190-123A")),
                Is("/piiControllers/0/piiController", json!("City of Helsinki")),
                Is("/piiControllers/0/address/addressCountry", json!("FI")),
                Is("/publicKey", json!(operator_key().public().to_hex())),
                Is(
                    "/policyUrl",
                    json!("https://www.hel.fi/en/data-protection/privacy-policy"),
                ),
                Is("/services/0/service", json!(SERVICE)),
                Is(
                    "/services/0/purposes/0/purposeCategory",
                    json!(["dpv:ServiceProvision", "dpv:EducationalServices"]),
                ),
                Is(
                    "/services/0/purposes/0/piiCategory",
                    json!(["income.gross_monthly", "licence.driving.classes"]),
                ),
                Is("/services/0/purposes/0/thirdPartyDisclosure", json!(true)),
                Is("/services/0/purposes/0/thirdPartyName", json!(SERVICE)),
                Is("/services/0/purposes/0/consentType", json!("EXPLICIT")),
                Is("/sensitive", json!(false)),
                Is("/spiCat", json!([])),
                Contains("/services/0/purposes/0/purpose", "Daycare fee"),
                Contains("/collectionMethod", "granted in citizen-app:helsinki-app"),
                Contains(
                    termination,
                    "In force, valid from 2026-01-01T00:00:00Z until 2026-12-31T00:00:00Z",
                ),
            ],
        );
        // The same record after its window: expired.
        check_receipt(
            &given_alice,
            NOT_AFTER_MS,
            &[Contains(termination, "Expired at 2026-12-31T00:00:00Z")],
        );
        // One guardian of two has granted; the second acts through a mandate later.
        check_receipt(
            &record(child(2), vec![granted("mother")]),
            mid_year_ms,
            &[
                Is("/piiPrincipalId", json!("fi:hetu:150320A987B")),
                Is("/consentTimestamp", json!(ASKED_AT_MS / 1000)),
                Contains(termination, "Not in force: 1 of 2 grantor(s)"),
            ],
        );
        check_receipt(
            &record(
                child(3),
                vec![
                    granted("mother"),
                    EventKind::Granted(actor("grandma", "father")),
                ],
            ),
            mid_year_ms,
            &[Contains(
                "/collectionMethod",
                "1 grant(s) made by a guardian or mandated person",
            )],
        );
        let withdrawn = record(
            alice(4),
            vec![
                granted("fi:hetu:010190-123A"),
                EventKind::Withdrawn(actor("fi:hetu:010190-123A", "fi:hetu:010190-123A")),
            ],
        );
        check_receipt(
            &withdrawn,
            mid_year_ms,
            &[Contains(termination, "Withdrawn at 2026-01-01T00:02:00Z")],
        );
        check_receipt(
            &record(
                alice(5),
                vec![EventKind::Refused(actor(
                    "fi:hetu:010190-123A",
                    "fi:hetu:010190-123A",
                ))],
            ),
            mid_year_ms,
            &[
                Contains(termination, "Refused at 2026-01-01T00:01:00Z"),
                Contains("/collectionMethod", "no grant recorded"),
            ],
        );
        check_receipt(
            &record(
                alice(6),
                vec![EventKind::Invalidated {
                    reason: "identity misused".into(),
                }],
            ),
            mid_year_ms,
            &[Contains(
                termination,
                "Invalidated by the home operator fi.helsinki",
            )],
        );
        // An arrangement with no free text falls back to its DPV purposes.
        check_receipt(
            &given(arrangement(7)),
            mid_year_ms,
            &[
                Is(
                    "/services/0/service",
                    json!("any member with sector label education"),
                ),
                Is(
                    "/services/0/purposes/0/purpose",
                    json!("dpv:EducationalServices"),
                ),
                Is(
                    "/services/0/purposes/0/piiCategory",
                    json!(["skills.record"]),
                ),
            ],
        );
    }

    /// Receipt ids look like UUIDs, repeat for the same export and differ otherwise.
    #[test]
    fn receipt_ids_are_derived_and_distinct() {
        let record = given(alice(1));
        let id_at =
            |at_ms| kantara_receipt(&record, &controller(), at_ms)["consentReceiptID"].clone();
        let id = id_at(ASKED_AT_MS).as_str().unwrap().to_owned();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "8", "version 8: {id}");
        assert_eq!(id_at(ASKED_AT_MS), json!(id));
        assert_ne!(id_at(ASKED_AT_MS + 1), json!(id));
        let other = kantara_receipt(&given(alice(2)), &controller(), ASKED_AT_MS);
        assert_ne!(other["consentReceiptID"], json!(id));
    }

    /// Applies `mutate` to a valid receipt and checks the schema's verdict.
    fn check_schema(mutate: impl FnOnce(&mut Value), valid: bool) {
        let mut receipt = kantara_receipt(&given(alice(1)), &controller(), ASKED_AT_MS);
        mutate(&mut receipt);
        assert_eq!(validator().is_valid(&receipt), valid, "{receipt:#}");
    }

    /// Removes the field at `pointer` (`/a/0/b`).
    fn remove(receipt: &mut Value, pointer: &str) {
        let (parent, field) = pointer.rsplit_once('/').unwrap();
        let parent = receipt
            .pointer_mut(parent)
            .unwrap()
            .as_object_mut()
            .unwrap();
        assert!(parent.remove(field).is_some(), "no {pointer}");
    }

    /// Removing any field the specification requires fails validation;
    /// removing an optional one does not.
    #[test]
    fn schema_rejects_a_receipt_missing_a_required_field() {
        let schema: Value = serde_json::from_str(KANTARA_SCHEMA_JSON).unwrap();
        let mut required: Vec<String> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| format!("/{}", f.as_str().unwrap()))
            .collect();
        assert_eq!(required.len(), 11);
        for nested in [
            "/piiControllers/0/piiController",
            "/piiControllers/0/contact",
            "/piiControllers/0/address",
            "/piiControllers/0/email",
            "/piiControllers/0/phone",
            "/services/0/service",
            "/services/0/purposes",
            "/services/0/purposes/0/purpose",
            "/services/0/purposes/0/purposeCategory",
            "/services/0/purposes/0/consentType",
            "/services/0/purposes/0/piiCategory",
            "/services/0/purposes/0/termination",
            "/services/0/purposes/0/thirdPartyDisclosure",
            // Required because thirdPartyDisclosure is true (4.5.11).
            "/services/0/purposes/0/thirdPartyName",
        ] {
            required.push(nested.to_owned());
        }
        for pointer in &required {
            check_schema(|r| remove(r, pointer), false);
        }
        for optional in [
            "/publicKey",
            "/language",
            "/piiControllers/0/onBehalf",
            "/piiControllers/0/piiControllerUrl",
            "/services/0/purposes/0/primaryPurpose",
        ] {
            check_schema(|r| remove(r, optional), true);
        }
    }

    /// Values the specification constrains are checked, not only presence.
    #[test]
    fn schema_checks_field_values() {
        check_schema(|r| r["version"] = json!("KI-CR-v1.0.0"), false);
        check_schema(|r| r["consentTimestamp"] = json!("2026-01-01"), false);
        check_schema(|r| r["jurisdiction"] = json!(""), false);
        check_schema(|r| r["piiControllers"] = json!([]), false);
        check_schema(
            |r| r["piiControllers"][0]["phone"] = json!("(09) 310 1691"),
            false,
        );
        check_schema(
            |r| r["piiControllers"][0]["phone"] = json!("tel:+358-9-310-1691"),
            true,
        );
        check_schema(
            |r| r["services"][0]["purposes"][0]["piiCategory"] = json!([]),
            false,
        );
        // Sensitive PII needs its categories (4.5.13).
        check_schema(|r| r["sensitive"] = json!(true), false);
        check_schema(
            |r| {
                r["sensitive"] = json!(true);
                r["spiCat"] = json!(["health"]);
            },
            true,
        );
        // Without disclosure, no third party needs naming.
        check_schema(
            |r| {
                r["services"][0]["purposes"][0]["thirdPartyDisclosure"] = json!(false);
                remove(r, "/services/0/purposes/0/thirdPartyName");
            },
            true,
        );
    }

    /// Checks `jws` against `key`: `Ok` with the payload, or the error.
    fn check_jws(jws: &str, key: &PublicKey, expected: Result<Value, ExportError>) {
        assert_eq!(verify_jws(jws, key), expected, "{jws}");
    }

    fn encode(bytes: impl AsRef<[u8]>) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Replaces part `index` of a compact JWS.
    fn with_part(jws: &str, index: usize, part: &str) -> String {
        let mut parts: Vec<&str> = jws.split('.').collect();
        parts[index] = part;
        parts.join(".")
    }

    /// A signed receipt verifies with the operator's key; any change to it,
    /// or another key, fails.
    #[test]
    fn jws_round_trip_and_tampering() {
        let key = operator_key();
        let public = key.public();
        let receipt = kantara_receipt(&given(alice(1)), &controller(), ASKED_AT_MS);
        let jws = sign_jws(&receipt, &key);
        check_jws(&jws, &public, Ok(receipt.clone()));

        let mut changed = receipt.clone();
        changed["piiPrincipalId"] = json!("fi:hetu:311299-999X");
        check_jws(
            &with_part(&jws, 1, &encode(changed.to_string())),
            &public,
            Err(ExportError::BadSignature),
        );

        let mut signature = URL_SAFE_NO_PAD
            .decode(jws.split('.').nth(2).unwrap())
            .unwrap();
        signature[10] ^= 1;
        check_jws(
            &with_part(&jws, 2, &encode(&signature)),
            &public,
            Err(ExportError::BadSignature),
        );
        check_jws(
            &with_part(&jws, 2, &encode(&signature[..63])),
            &public,
            Err(ExportError::BadSignature),
        );

        let other = SecretKey::from_bytes(&[8; 32]).unwrap().public();
        let kid = public.key_id().as_str().to_owned();
        check_jws(
            &jws,
            &other,
            Err(ExportError::KeyMismatch {
                expected: other.key_id(),
                got: Some(kid.clone()),
            }),
        );
        // Claiming the other key's id breaks the signature, which covers the header.
        let forged = json!({ "alg": "EdDSA", "kid": other.key_id().as_str(), "typ": "JWT" });
        check_jws(
            &with_part(&jws, 0, &encode(forged.to_string())),
            &other,
            Err(ExportError::BadSignature),
        );

        let header = |h: Value| with_part(&jws, 0, &encode(h.to_string()));
        check_jws(
            &header(json!({ "alg": "none", "kid": kid })),
            &public,
            Err(ExportError::Algorithm("\"none\"".into())),
        );
        check_jws(
            &header(json!({ "kid": kid })),
            &public,
            Err(ExportError::Algorithm(String::new())),
        );
        check_jws(
            &header(json!({ "alg": "EdDSA", "kid": kid, "crit": ["exp"] })),
            &public,
            Err(ExportError::Critical("[\"exp\"]".into())),
        );
        check_jws(
            &header(json!({ "alg": "EdDSA" })),
            &public,
            Err(ExportError::KeyMismatch {
                expected: public.key_id(),
                got: None,
            }),
        );
        check_jws(
            &header(json!(["EdDSA"])),
            &public,
            Err(ExportError::Header("not an object".into())),
        );
        let padded = format!("{}=", jws.split('.').next().unwrap());
        check_jws(
            &with_part(&jws, 0, &padded),
            &public,
            Err(ExportError::Base64("header")),
        );
        check_jws(&format!("{jws}.x"), &public, Err(ExportError::Malformed(4)));
        check_jws("a.b", &public, Err(ExportError::Malformed(2)));
        check_jws(
            &with_part(&jws, 2, "AA=="),
            &public,
            Err(ExportError::Base64("signature")),
        );
        check_jws(
            &"a".repeat(JWS_BYTES_MAX + 1),
            &public,
            Err(ExportError::TooLong(JWS_BYTES_MAX + 1)),
        );
        // A validly signed payload that is not JSON is still refused.
        let input = format!("{}.{}", jws.split('.').next().unwrap(), encode("not json"));
        let signed = format!("{input}.{}", encode(key.sign(b"", input.as_bytes())));
        assert!(matches!(
            verify_jws(&signed, &public),
            Err(ExportError::Payload(_))
        ));
    }

    /// The JWS is standard: its header is exactly the RFC 8037 one, and the
    /// signature is a plain Ed25519 signature over the signing input, which
    /// is what `SecretKey::sign` with an empty domain makes.
    #[test]
    fn jws_is_plain_ed25519_over_the_signing_input() {
        use ed25519_dalek::{Signer as _, SigningKey, Verifier as _};
        let key = operator_key();
        let jws = sign_jws(&json!({ "sub": "x" }), &key);
        let (input, signature) = jws.rsplit_once('.').unwrap();
        let (header, payload) = input.split_once('.').unwrap();
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
        assert_eq!(
            header,
            json!({ "alg": "EdDSA", "kid": key.public().key_id().as_str(), "typ": "JWT" })
        );
        assert_eq!(URL_SAFE_NO_PAD.decode(payload).unwrap(), br#"{"sub":"x"}"#);
        let dalek = SigningKey::from_bytes(&[7; 32]);
        let plain = dalek.sign(input.as_bytes());
        assert_eq!(key.sign(b"", input.as_bytes()), plain.to_bytes());
        assert_eq!(URL_SAFE_NO_PAD.decode(signature).unwrap(), plain.to_bytes());
        dalek
            .verifying_key()
            .verify(input.as_bytes(), &plain)
            .unwrap();
    }

    proptest! {
        /// Changing any one character of a signed receipt makes it fail.
        #[test]
        fn any_changed_character_fails(index in any::<prop::sample::Index>(), replacement in "[A-Za-z0-9_.-]") {
            let key = operator_key();
            let jws = sign_jws(&json!({ "piiPrincipalId": "fi:hetu:010190-123A" }), &key);
            let at = index.index(jws.len());
            let original = &jws[at..=at];
            prop_assume!(original != replacement.as_str());
            let changed = format!("{}{}{}", &jws[..at], replacement, &jws[at + 1..]);
            prop_assert!(verify_jws(&changed, &key.public()).is_err());
        }

        /// Arbitrary input never panics the verifier.
        #[test]
        fn arbitrary_input_is_refused(text in "\\PC{0,200}") {
            prop_assert!(verify_jws(&text, &operator_key().public()).is_err());
        }
    }

    /// The N-Triples of a JSON-LD document, produced by a real JSON-LD
    /// processor (oxigraph's `oxjsonld`: expansion and the to-RDF algorithm
    /// of JSON-LD 1.0, whose documents JSON-LD 1.1 reads the same way) with
    /// no document loader, so every remote context is refused. Every triple
    /// must be in the default graph.
    fn triples(document: &str) -> Result<BTreeSet<String>, String> {
        let mut triples = BTreeSet::new();
        for quad in JsonLdParser::new().for_slice(document.as_bytes()) {
            let quad = quad.map_err(|e| e.to_string())?;
            if !quad.graph_name.is_default_graph() {
                return Err(format!("a triple outside the default graph: {quad}"));
            }
            triples.insert(format!(
                "{} {} {} .",
                quad.subject, quad.predicate, quad.object
            ));
        }
        Ok(triples)
    }

    /// Exports `record` as JSON-LD, turns it into RDF offline, and checks
    /// that every triple in `expected` is there.
    fn check_jsonld(record: &ConsentRecord, expected: &[String]) {
        let document = iso27560_jsonld(record, &controller());
        assert!(
            document["@context"].is_object(),
            "the context must be inline"
        );
        let triples = triples(&document.to_string()).unwrap();
        for triple in expected {
            assert!(
                triples.contains(triple),
                "missing {triple}\nin {triples:#?}"
            );
        }
    }

    fn iri(iri: &str) -> String {
        format!("<{iri}>")
    }

    fn dpv(term: &str) -> String {
        iri(&format!("{DPV}{term}"))
    }

    /// The N-Triples line `<subject> dpv:property object .`.
    fn has(subject: &str, property: &str, object: &str) -> String {
        format!("{subject} {} {object} .", dpv(property))
    }

    /// The IRI of a record, in N-Triples form.
    fn record_iri(record: &ConsentRecord) -> String {
        iri(&format!("urn:mim4:consent:{}", record.id()))
    }

    /// An `xsd:dateTime` literal in N-Triples form.
    fn date_time_literal(text: &str) -> String {
        format!("\"{text}\"^^<http://www.w3.org/2001/XMLSchema#dateTime>")
    }

    /// The 27560 record parses offline and states the record's facts as RDF.
    #[test]
    fn jsonld_states_the_record_as_triples() {
        let alice_given = given(alice(1));
        let me = record_iri(&alice_given);
        let alice_iri = iri("urn:mim4:subject:fi:hetu:010190-123A");
        let rdf_type = "<http://www.w3.org/1999/02/22-rdf-syntax-ns#type>";
        let dct = |property: &str, object: &str| {
            format!("{me} <http://purl.org/dc/terms/{property}> {object} .")
        };
        check_jsonld(
            &alice_given,
            &[
                format!("{me} {rdf_type} {} .", dpv("ConsentRecord")),
                has(&me, "hasPurpose", &dpv("ServiceProvision")),
                has(&me, "hasPurpose", &dpv("EducationalServices")),
                has(&me, "hasConsentStatus", &dpv("ConsentGiven")),
                has(&me, "hasLegalBasis", &dpv("Consent")),
                has(&me, "hasDataSubject", &alice_iri),
                has(
                    &me,
                    "hasDataController",
                    &iri("urn:mim4:operator:fi.helsinki"),
                ),
                has(&me, "hasDataSource", &iri("urn:mim4:operator:fi.vero")),
                has(
                    &me,
                    "hasRecipient",
                    &iri(&format!("urn:mim4:service:{SERVICE}")),
                ),
                has(
                    &me,
                    "hasPersonalData",
                    &iri("urn:mim4:attribute:income.gross_monthly"),
                ),
                has(
                    &me,
                    "hasPersonalData",
                    &iri("urn:mim4:attribute:licence.driving.classes"),
                ),
                has(&me, "isIndicatedBy", &alice_iri),
                has(
                    &me,
                    "isIndicatedAtTime",
                    &date_time_literal("2026-01-01T00:01:00Z"),
                ),
                has(&me, "hasIndicationMethod", "\"citizen-app:helsinki-app\""),
                has(&me, "hasJurisdiction", &iri("https://w3id.org/dpv/loc#FI")),
                dct("conformsTo", &iri(DPV_27560_RECORD_PROFILE)),
                dct("creator", &iri("urn:mim4:operator:fi.helsinki")),
            ],
        );
        let withdrawn = record_withdrawn_by_odd_subject();
        let me = record_iri(&withdrawn);
        check_jsonld(
            &withdrawn,
            &[
                has(&me, "hasConsentStatus", &dpv("ConsentWithdrawn")),
                has(&me, "hasDataSubject", &iri("urn:mim4:subject:x%23y%3Fz%25")),
                has(
                    &me,
                    "isIndicatedAtTime",
                    &date_time_literal("2026-01-01T00:02:00Z"),
                ),
            ],
        );
        let asked = record(child(3), vec![granted("mother")]);
        let me = record_iri(&asked);
        check_jsonld(
            &asked,
            &[has(&me, "hasConsentStatus", &dpv("ConsentRequested"))],
        );
        let sector = given(arrangement(4));
        let me = record_iri(&sector);
        check_jsonld(
            &sector,
            &[has(&me, "hasRecipient", &iri("urn:mim4:sector:education"))],
        );
    }

    /// A subject id with characters a URN may not carry, who grants and withdraws.
    fn record_withdrawn_by_odd_subject() -> ConsentRecord {
        let odd = "x#y?z%";
        record(
            terms(9, odd, &[odd]),
            vec![granted(odd), EventKind::Withdrawn(actor(odd, odd))],
        )
    }

    /// The processor in these tests really is offline: a document that names
    /// a remote context fails, so the inline context is what makes ours parse.
    #[test]
    fn remote_contexts_are_refused_offline() {
        let remote = r#"{"@context": "https://w3id.org/dpv", "@id": "urn:x", "hasPurpose": "y"}"#;
        assert!(triples(remote).is_err());
    }

    fn check_rfc3339(ms: u64, expected: &str) {
        assert_eq!(rfc3339(ms), expected);
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        check_rfc3339(0, "1970-01-01T00:00:00Z");
        check_rfc3339(951_782_400_000, "2000-02-29T00:00:00Z");
        check_rfc3339(1_735_689_600_123, "2025-01-01T00:00:00.123Z");
        check_rfc3339(NOT_AFTER_MS, "2026-12-31T00:00:00Z");
        check_rfc3339(NOT_AFTER_MS - 1, "2026-12-30T23:59:59.999Z");
    }
}
