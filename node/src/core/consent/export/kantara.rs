//! The Kantara Consent Receipt v1.1: a record as the receipt a person keeps,
//! in the fields of the Kantara Initiative Consent Receipt Specification
//! v1.1.0, checked against the committed JSON Schema
//! ([`KANTARA_SCHEMA_JSON`]). The operator signs it with [`super::sign_jws`].

use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha256};

use super::{attributes, grants, purpose_description, requested_at_ms, rfc3339, ControllerInfo};
use crate::core::consent::{Audience, ConsentRecord, ConsentStatus, EventKind};

/// The `version` of a Kantara Consent Receipt v1.1 (specification section 4.3.1).
pub const KANTARA_VERSION: &str = "KI-CR-v1.1.0";

/// The JSON Schema of a Kantara v1.1 receipt, written from the specification's
/// field list (sections 4.3 to 4.5); the file's `$comment` cites it.
pub const KANTARA_SCHEMA_JSON: &str = include_str!("kantara-consent-receipt-v1.1.schema.json");

/// Domain prefix of the hash a receipt id is derived from.
const RECEIPT_ID_DOMAIN: &[u8] = b"mim4/v1/kantara-receipt-id\0";

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

/// The audience in words, for Kantara's `service` and `thirdPartyName`.
fn audience_name(audience: &Audience) -> String {
    match audience {
        Audience::Service(service) => service.as_str().to_owned(),
        Audience::Member(operator) => format!("any service of member {operator}"),
        Audience::Sector(sector) => format!("any member with sector label {sector}"),
    }
}
