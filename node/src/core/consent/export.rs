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
//!
//! # Layout
//! - here: what every format takes ([`ControllerInfo`], [`PostalAddress`]),
//!   [`ExportError`], the entry points (re-exported from the format modules),
//!   and the readings of a record that both formats share (who granted it,
//!   when it was asked for, its purpose and attributes, RFC 3339 times).
//! - `kantara`: the Kantara Consent Receipt v1.1 ([`kantara_receipt`]) and
//!   its committed JSON Schema ([`KANTARA_SCHEMA_JSON`]).
//! - `jws`: the compact JWS that signs a receipt ([`sign_jws`], [`verify_jws`]).
//! - `iso27560`: the ISO/IEC TS 27560 record as DPV JSON-LD ([`iso27560_jsonld`]).
//! - `tests`: the tests of all three, which share their fixtures.

use std::collections::BTreeSet;

use crate::core::consent::{ConsentRecord, ConsentTerms, EventKind, SubjectId};
use crate::core::ids::OperatorId;
use crate::core::keys::{KeyId, PublicKey};

mod iso27560;
mod jws;
mod kantara;
#[cfg(test)]
mod tests;

pub use iso27560::{iso27560_jsonld, DPV_27560_RECORD_PROFILE, DPV_NAMESPACE};
pub use jws::{sign_jws, verify_jws, JWS_BYTES_MAX};
pub use kantara::{kantara_receipt, KANTARA_SCHEMA_JSON, KANTARA_VERSION};

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
