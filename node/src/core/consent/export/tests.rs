//! Tests of the exports: receipts against the committed schema and the
//! record's state, JWS round trips and tampering, the JSON-LD as RDF triples,
//! and timestamps.

use std::collections::BTreeSet;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use oxjsonld::JsonLdParser;
use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;
use crate::core::consent::{
    Action, Actor, Attribute, Audience, ConsentEvent, ConsentId, ConsentTerms, LawfulBasis,
    Purpose, RecordKind, ScopeItem, Sector, ServiceId,
};
use crate::core::keys::SecretKey;

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
    // Longer than 80 lines: one table of cases, one record state each, read top to bottom.
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
    let id_at = |at_ms| kantara_receipt(&record, &controller(), at_ms)["consentReceiptID"].clone();
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
    // Longer than 80 lines: one round trip, then one tampered token per way a token can be wrong.
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
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
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
