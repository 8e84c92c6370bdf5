//! Consent: attribute-level permissions, their lifecycle as a fold of signed
//! events, permission arrangements, delegation, and the decision index.
//!
//! The citizen's home operator is the consent authority: it records every
//! event ([`ConsentEvent`]), signs it, and pushes the whole log to the source
//! and the recipient's operator. Anyone holding the log can rebuild the
//! record with [`ConsentRecord::from_events`] and check each signature.
//!
//! A *permission arrangement* is a record whose audience is a member, or every
//! member with a sector label, instead of one service; it is given as soon as
//! the citizen sets it and is evaluated by [`index::Index::decide`] like a consent.
//!
//! # Layout
//! - this file: identifiers, terms, events and the record's state machine;
//! - [`copies`]: who holds a copy of a record, and how a copy grows (the merge rule);
//! - [`delegation`]: who may act for whom (guardians, mandates), bounded in depth;
//! - [`index`]: the in-memory decision index and the reference (naive) decision;
//! - [`export`]: Kantara Consent Receipt v1.1 (JWS) and ISO/IEC TS 27560 JSON-LD.

pub mod copies;
pub mod delegation;
pub mod export;
pub mod index;

use std::collections::BTreeSet;
use std::fmt;

use crate::core::ids::OperatorId;
use crate::core::keys::{KeyId, SecretKey, CONSENT_EVENT_DOMAIN};
use crate::core::trust::VerifiedTrustList;
use crate::core::wire;

// The bounds of terms and logs are in `crate::limits`, with their reasons.
use crate::limits::{
    CONSENT_EVENTS_MAX, CONSENT_GRANTORS_MAX, CONSENT_PURPOSES_MAX, CONSENT_SCOPE_MAX,
    NAME_BYTES_MAX, PURPOSE_TEXT_BYTES_MAX,
};

/// Why a name (subject, attribute, purpose, ...) is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {value:?}: {rule}")]
pub struct NameError {
    /// What kind of name.
    pub kind: &'static str,
    /// The offending value (truncated).
    pub value: String,
    /// The rule it breaks.
    pub rule: &'static str,
}

fn check_name(
    kind: &'static str,
    value: &str,
    rule: &'static str,
    ok: impl Fn(&str) -> bool,
) -> Result<(), NameError> {
    if value.is_empty() || value.len() > NAME_BYTES_MAX || !ok(value) {
        return Err(NameError {
            kind,
            value: value.chars().take(64).collect(),
            rule,
        });
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $rule:literal, $check:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps the name.
            pub fn new(value: impl Into<String>) -> Result<Self, NameError> {
                let value = value.into();
                check_name($kind, &value, $rule, $check)?;
                Ok(Self(value))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

fn printable(value: &str) -> bool {
    value.bytes().all(|b| b.is_ascii_graphic())
}

fn dotted_lowercase(value: &str) -> bool {
    value.split('.').all(|part| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    })
}

name_type!(
    /// A person as the home operator identifies them, e.g. `fi:hetu:010190-123A`.
    SubjectId,
    "subject id",
    "1 to 128 printable ASCII characters without spaces",
    printable
);
name_type!(
    /// A catalogued attribute, e.g. `income.gross_monthly`, `licence.driving.classes`.
    Attribute,
    "attribute",
    "dot-separated parts of a-z, 0-9 and _",
    dotted_lowercase
);
name_type!(
    /// A purpose as a W3C DPV term, e.g. `dpv:ServiceProvision`, or another
    /// vocabulary's CURIE (`prefix:Term`).
    Purpose,
    "purpose",
    "a CURIE such as dpv:ServiceProvision",
    |v: &str| v.split_once(':').is_some_and(|(p, t)| {
        !p.is_empty() && !t.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase())
            && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
);
name_type!(
    /// A sector label that members carry in the trust list (`education`).
    Sector,
    "sector",
    "a-z, 0-9, - and _",
    |v: &str| v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
);

/// A consumer service, e.g. `fi.helsinki/early-education`: the operator that
/// runs it, a slash, and the service's own name.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceId {
    full: String,
    operator: OperatorId,
}

impl ServiceId {
    /// Validates `operator/name`.
    pub fn new(value: impl Into<String>) -> Result<Self, NameError> {
        let full = value.into();
        let rule = "operator-id/name, e.g. fi.helsinki/early-education";
        let parsed = full.split_once('/').and_then(|(op, name)| {
            let name_ok = !name.is_empty()
                && name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
                });
            OperatorId::new(op).ok().filter(|_| name_ok)
        });
        check_name("service id", &full, rule, |_| parsed.is_some())?;
        let operator = parsed.ok_or_else(|| NameError {
            kind: "service id",
            value: full.clone(),
            rule,
        })?;
        Ok(Self { full, operator })
    }

    /// The operator that runs the service.
    pub fn operator(&self) -> &OperatorId {
        &self.operator
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.full
    }
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.full)
    }
}

impl fmt::Debug for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServiceId({})", self.full)
    }
}

crate::core::ids::random_id!(
    /// A 128-bit consent (or arrangement, or delegation) id, chosen at random
    /// by whoever asks first.
    ConsentId
);

/// What a recipient may do with an attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// Receive the value.
    Read,
    /// Receive only a yes/no answer to a predicate about it ("answer, not data").
    Verify,
}

impl Action {
    /// The action's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Verify => "verify",
        }
    }

    /// Whether permission for `self` covers a request for `wanted`: reading
    /// the value also covers verifying a predicate about it.
    pub fn covers(self, wanted: Action) -> bool {
        self == wanted || (self == Action::Read && wanted == Action::Verify)
    }
}

/// One (attribute, action) pair of a consent's scope.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ScopeItem {
    /// The attribute.
    pub attribute: Attribute,
    /// What may be done with it.
    pub action: Action,
}

/// The lawful bases of GDPR Article 6(1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LawfulBasis {
    /// (a) consent.
    Consent,
    /// (b) contract.
    Contract,
    /// (c) legal obligation.
    LegalObligation,
    /// (d) vital interest.
    VitalInterest,
    /// (e) public task.
    PublicTask,
    /// (f) legitimate interest.
    LegitimateInterest,
}

impl LawfulBasis {
    /// The DPV term of the basis.
    pub fn dpv_term(self) -> &'static str {
        match self {
            LawfulBasis::Consent => "dpv:Consent",
            LawfulBasis::Contract => "dpv:Contract",
            LawfulBasis::LegalObligation => "dpv:LegalObligation",
            LawfulBasis::VitalInterest => "dpv:VitalInterest",
            LawfulBasis::PublicTask => "dpv:PublicTask",
            LawfulBasis::LegitimateInterest => "dpv:LegitimateInterest",
        }
    }

    /// Parses a DPV term or a short name (`public-task`).
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text.trim_start_matches("dpv:") {
            "Consent" | "consent" => LawfulBasis::Consent,
            "Contract" | "contract" => LawfulBasis::Contract,
            "LegalObligation" | "legal-obligation" => LawfulBasis::LegalObligation,
            "VitalInterest" | "vital-interest" => LawfulBasis::VitalInterest,
            "PublicTask" | "public-task" => LawfulBasis::PublicTask,
            "LegitimateInterest" | "legitimate-interest" => LawfulBasis::LegitimateInterest,
            _ => return None,
        })
    }
}

/// Who a record permits.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Audience {
    /// One service of one operator (an ordinary consent).
    Service(ServiceId),
    /// Any service of one member (an arrangement).
    Member(OperatorId),
    /// Any member carrying the sector label (an arrangement).
    Sector(Sector),
}

impl Audience {
    /// Whether a request by `service` of `operator`, which carries
    /// `sectors` in the trust list, falls in this audience.
    pub fn admits(&self, operator: &OperatorId, service: &ServiceId, sectors: &[Sector]) -> bool {
        match self {
            Audience::Service(s) => s == service && s.operator() == operator,
            Audience::Member(m) => m == operator,
            Audience::Sector(label) => sectors.contains(label),
        }
    }
}

/// Whether a record is a consent to one service or a standing arrangement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// A consent asked for by a service and granted by the grantor(s).
    Consent,
    /// A citizen's standing rule for an audience.
    Arrangement,
}

/// The terms of a consent or arrangement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsentTerms {
    /// The record's id.
    pub consent_id: ConsentId,
    /// Consent or arrangement.
    pub kind: RecordKind,
    /// Whose data.
    pub subject: SubjectId,
    /// The subject's home operator: the consent authority, which signs every event.
    pub home: OperatorId,
    /// Who must grant it (the subject, or e.g. both guardians of a child).
    pub grantors: Vec<SubjectId>,
    /// Who may receive the data.
    pub audience: Audience,
    /// The operator that holds the data and enforces the decision.
    pub source: OperatorId,
    /// What may be done with which attributes.
    pub scope: Vec<ScopeItem>,
    /// Purposes (DPV terms).
    pub purposes: Vec<Purpose>,
    /// Free-text description of the purpose, shown to the citizen.
    pub purpose_text: String,
    /// Lawful basis.
    pub lawful_basis: LawfulBasis,
    /// Valid from (ms since the epoch, inclusive).
    pub not_before_ms: u64,
    /// Valid until (ms since the epoch, exclusive).
    pub not_after_ms: u64,
}

/// Why terms are invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TermsError {
    /// A list is empty or too long.
    #[error("{field} must have 1 to {max} entries, has {got}")]
    Count {
        /// The field.
        field: &'static str,
        /// Limit.
        max: usize,
        /// Actual.
        got: usize,
    },
    /// A list has duplicates.
    #[error("{0} has duplicate entries")]
    Duplicate(&'static str),
    /// The validity window is empty.
    #[error("not_after ({not_after_ms}) must be after not_before ({not_before_ms})")]
    EmptyWindow {
        /// Start.
        not_before_ms: u64,
        /// End.
        not_after_ms: u64,
    },
    /// Free text too long.
    #[error("purpose text is {0} bytes, more than {PURPOSE_TEXT_BYTES_MAX}")]
    TextTooLong(usize),
    /// An arrangement must be granted by its subject alone.
    #[error("an arrangement is granted by its subject alone")]
    ArrangementGrantors,
    /// A consent names a service, an arrangement a member or sector.
    #[error(
        "a consent's audience is one service; member and sector audiences are for arrangements"
    )]
    AudienceKind,
    /// A name is invalid.
    #[error(transparent)]
    Name(#[from] NameError),
}

impl ConsentTerms {
    /// Checks the terms' own rules (counts, duplicates, window).
    pub fn validate(&self) -> Result<(), TermsError> {
        count("grantors", self.grantors.len(), CONSENT_GRANTORS_MAX)?;
        count("scope", self.scope.len(), CONSENT_SCOPE_MAX)?;
        count("purposes", self.purposes.len(), CONSENT_PURPOSES_MAX)?;
        unique("grantors", &self.grantors)?;
        unique("scope", &self.scope)?;
        unique("purposes", &self.purposes)?;
        if self.not_after_ms <= self.not_before_ms {
            return Err(TermsError::EmptyWindow {
                not_before_ms: self.not_before_ms,
                not_after_ms: self.not_after_ms,
            });
        }
        if self.purpose_text.len() > PURPOSE_TEXT_BYTES_MAX {
            return Err(TermsError::TextTooLong(self.purpose_text.len()));
        }
        match (self.kind, &self.audience) {
            (RecordKind::Consent, Audience::Service(_)) => {}
            (RecordKind::Arrangement, Audience::Member(_) | Audience::Sector(_)) => {
                if self.grantors != [self.subject.clone()] {
                    return Err(TermsError::ArrangementGrantors);
                }
            }
            _ => return Err(TermsError::AudienceKind),
        }
        Ok(())
    }

    /// Whether `narrower` only narrows these terms: same parties, a subset of
    /// the scope and purposes, a window inside this one.
    pub fn is_narrowed_by(&self, narrower: &ConsentTerms) -> bool {
        let same_parties = self.consent_id == narrower.consent_id
            && self.kind == narrower.kind
            && self.subject == narrower.subject
            && self.home == narrower.home
            && self.grantors == narrower.grantors
            && self.audience == narrower.audience
            && self.source == narrower.source
            && self.lawful_basis == narrower.lawful_basis;
        same_parties
            // Reading may narrow to verifying the same attribute.
            && narrower.scope.iter().all(|n| {
                self.scope
                    .iter()
                    .any(|s| s.attribute == n.attribute && s.action.covers(n.action))
            })
            && narrower.purposes.iter().all(|p| self.purposes.contains(p))
            && narrower.not_before_ms >= self.not_before_ms
            && narrower.not_after_ms <= self.not_after_ms
    }
}

fn count(field: &'static str, got: usize, max: usize) -> Result<(), TermsError> {
    if got == 0 || got > max {
        return Err(TermsError::Count { field, max, got });
    }
    Ok(())
}

fn unique<T: Ord>(field: &'static str, items: &[T]) -> Result<(), TermsError> {
    let set: BTreeSet<&T> = items.iter().collect();
    if set.len() != items.len() {
        return Err(TermsError::Duplicate(field));
    }
    Ok(())
}

/// Status of a record, following DPV's consent status vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConsentStatus {
    /// Asked for; not (yet) granted by every grantor.
    Requested,
    /// Granted by every grantor and in force (within its window).
    Given,
    /// A grantor refused.
    Refused,
    /// A grantor withdrew it.
    Withdrawn,
    /// Its validity ended (`not_after` passed).
    Expired,
    /// The consent authority invalidated it.
    Invalidated,
}

impl ConsentStatus {
    /// The DPV term of the status.
    pub fn dpv_term(self) -> &'static str {
        match self {
            ConsentStatus::Requested => "dpv:ConsentRequested",
            ConsentStatus::Given => "dpv:ConsentGiven",
            ConsentStatus::Refused => "dpv:ConsentRefused",
            ConsentStatus::Withdrawn => "dpv:ConsentWithdrawn",
            ConsentStatus::Expired => "dpv:ConsentExpired",
            ConsentStatus::Invalidated => "dpv:ConsentInvalidated",
        }
    }

    /// Short lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentStatus::Requested => "requested",
            ConsentStatus::Given => "given",
            ConsentStatus::Refused => "refused",
            ConsentStatus::Withdrawn => "withdrawn",
            ConsentStatus::Expired => "expired",
            ConsentStatus::Invalidated => "invalidated",
        }
    }

    /// Whether no further event can change it.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ConsentStatus::Refused
                | ConsentStatus::Withdrawn
                | ConsentStatus::Expired
                | ConsentStatus::Invalidated
        )
    }
}

/// A person acting in an event, and on what authority.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    /// The person who acted (authenticated by the home operator).
    pub person: SubjectId,
    /// The grantor slot they filled (themselves, or whom they act for).
    pub for_grantor: SubjectId,
    /// The delegation chain from `for_grantor` to `person`; empty when they are the same.
    pub delegations: Vec<ConsentId>,
    /// How the home operator authenticated the person (e.g. `citizen-app:helsinki-app`).
    pub authentication: String,
}

/// What happened to a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The record was asked for (always the first event).
    Requested(ConsentTerms),
    /// One grantor granted it.
    Granted(Actor),
    /// One grantor refused it.
    Refused(Actor),
    /// The terms were narrowed (scope, purposes or window reduced).
    Narrowed(ConsentTerms),
    /// A grantor withdrew it.
    Withdrawn(Actor),
    /// The consent authority invalidated it.
    Invalidated {
        /// Why.
        reason: String,
    },
    /// The home recorded that the validity ended, so every party is told
    /// (parties already deny from `not_after` on; this event only notifies).
    Expired,
}

impl EventKind {
    /// Short name.
    pub fn as_str(&self) -> &'static str {
        match self {
            EventKind::Requested(_) => "requested",
            EventKind::Granted(_) => "granted",
            EventKind::Refused(_) => "refused",
            EventKind::Narrowed(_) => "narrowed",
            EventKind::Withdrawn(_) => "withdrawn",
            EventKind::Invalidated { .. } => "invalidated",
            EventKind::Expired => "expired",
        }
    }
}

/// One change to a record, recorded (and signed) by the home operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsentEvent {
    /// The record.
    pub consent_id: ConsentId,
    /// Position in the log, from 0.
    pub seq: u32,
    /// When it was recorded (ms since the epoch).
    pub at_ms: u64,
    /// The operator that recorded and signed it (the home).
    pub recorder: OperatorId,
    /// What happened.
    pub kind: EventKind,
}

/// An event as signed: the exact body bytes, the signature and the key id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedEvent {
    /// The encoded `mim4.v1.ConsentEvent`.
    pub body: Vec<u8>,
    /// Signature over [`CONSENT_EVENT_DOMAIN`] and `body`.
    pub signature: Vec<u8>,
    /// The signing key.
    pub key_id: KeyId,
}

impl ConsentEvent {
    /// Encodes and signs the event.
    pub fn sign(&self, key: &SecretKey) -> SignedEvent {
        let body = wire::encode_consent_event(self);
        SignedEvent {
            signature: key.sign(CONSENT_EVENT_DOMAIN, &body).to_vec(),
            key_id: key.public().key_id(),
            body,
        }
    }
}

/// A record's whole signed log, as pushed between operators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsentLog {
    /// The record.
    pub consent_id: ConsentId,
    /// Its signed events, in order.
    pub events: Vec<SignedEvent>,
}

impl ConsentLog {
    /// Verifies every event against the trust list and folds them into a record.
    pub fn verify(&self, trust: &VerifiedTrustList) -> Result<ConsentRecord, TransitionError> {
        if self.events.len() > CONSENT_EVENTS_MAX {
            return Err(TransitionError::TooManyEvents);
        }
        let events = self
            .events
            .iter()
            .map(|signed| verify_event(signed, trust))
            .collect::<Result<Vec<_>, _>>()?;
        let record = ConsentRecord::from_events(events)?;
        if record.id() != self.consent_id {
            return Err(TransitionError::OtherRecord(record.id()));
        }
        Ok(record)
    }

    /// The subject named by the first (`requested`) event, decoded without
    /// checking any signature: for choosing the key that seals a stored copy
    /// of the log, never for a decision (use [`ConsentLog::verify`]).
    pub fn subject(&self) -> Option<SubjectId> {
        let first = wire::decode_consent_event(&self.events.first()?.body).ok()?;
        match first.kind {
            EventKind::Requested(terms) => Some(terms.subject),
            _ => None,
        }
    }
}

/// Why an event cannot be applied to a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransitionError {
    /// The log must start with `Requested`, and only once.
    #[error("a record starts with exactly one `requested` event")]
    NotFirst,
    /// Events must come in order.
    #[error("event {got} is out of order; the next is {expected}")]
    OutOfOrder {
        /// Expected seq.
        expected: u32,
        /// Received seq.
        got: u32,
    },
    /// The event belongs to another record.
    #[error("event is for consent {0}, not this one")]
    OtherRecord(ConsentId),
    /// Recorded by someone other than the home operator.
    #[error("event recorded by {got}, but only the home operator {home} records events")]
    NotTheHome {
        /// The home.
        home: OperatorId,
        /// The recorder.
        got: OperatorId,
    },
    /// The record is in a terminal status.
    #[error("consent is {} and cannot be {}", .status.as_str(), .event)]
    Terminal {
        /// Current status.
        status: ConsentStatus,
        /// The event attempted.
        event: &'static str,
    },
    /// The actor fills no grantor slot.
    #[error("{0} is not one of the consent's grantors")]
    NotAGrantor(SubjectId),
    /// This grantor has already granted.
    #[error("{0} has already granted this consent")]
    AlreadyGranted(SubjectId),
    /// A grant or narrowing after `not_after`.
    #[error("consent expired at {not_after_ms} ms; event at {at_ms} ms comes too late")]
    AfterExpiry {
        /// End of validity.
        not_after_ms: u64,
        /// The event's time.
        at_ms: u64,
    },
    /// A narrowing that widens or changes parties.
    #[error(
        "an update may only narrow the scope, purposes or window; ask for a new consent to widen"
    )]
    NotNarrowing,
    /// The narrowed terms break a rule.
    #[error("narrowed terms are invalid: {0}")]
    Terms(TermsError),
    /// Too many events.
    #[error("a record holds at most {CONSENT_EVENTS_MAX} events")]
    TooManyEvents,
    /// An expiry recorded before `not_after`, after the record ended, or twice.
    #[error("expiry recorded at {at_ms} ms, but the consent runs until {not_after_ms} ms or has already ended")]
    NotExpired {
        /// End of validity.
        not_after_ms: u64,
        /// The event's time.
        at_ms: u64,
    },
    /// An event is dated before the previous one (a backdated grant).
    #[error("event at {at_ms} ms is dated before the previous event at {previous_ms} ms")]
    TimeReversed {
        /// The previous event's time.
        previous_ms: u64,
        /// This event's time.
        at_ms: u64,
    },
    /// An event's signature does not verify.
    #[error("event {seq}: {reason}")]
    BadSignature {
        /// Which event.
        seq: u32,
        /// Why.
        reason: String,
    },
    /// An event does not decode.
    #[error("event does not decode: {0}")]
    Malformed(#[from] wire::DecodeError),
}

/// A consent or arrangement: the fold of its events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsentRecord {
    terms: ConsentTerms,
    /// Status before time is considered (`Expired` only once the home recorded
    /// it; see [`ConsentRecord::status_at`]).
    status: ConsentStatus,
    /// Grantor slots filled so far.
    granted: BTreeSet<SubjectId>,
    /// When the last grant made it `Given`.
    given_at_ms: Option<u64>,
    /// When it was withdrawn, refused or invalidated.
    ended_at_ms: Option<u64>,
    events: Vec<ConsentEvent>,
}

impl ConsentRecord {
    /// Starts a record from its `Requested` event.
    pub fn new(event: ConsentEvent) -> Result<Self, TransitionError> {
        let EventKind::Requested(terms) = &event.kind else {
            return Err(TransitionError::NotFirst);
        };
        if event.seq != 0 {
            return Err(TransitionError::OutOfOrder {
                expected: 0,
                got: event.seq,
            });
        }
        if event.consent_id != terms.consent_id {
            return Err(TransitionError::OtherRecord(event.consent_id));
        }
        if event.recorder != terms.home {
            return Err(TransitionError::NotTheHome {
                home: terms.home.clone(),
                got: event.recorder.clone(),
            });
        }
        terms.validate().map_err(TransitionError::Terms)?;
        Ok(Self {
            terms: terms.clone(),
            status: ConsentStatus::Requested,
            granted: BTreeSet::new(),
            given_at_ms: None,
            ended_at_ms: None,
            events: vec![event],
        })
    }

    /// Rebuilds a record from its whole log.
    pub fn from_events(
        events: impl IntoIterator<Item = ConsentEvent>,
    ) -> Result<Self, TransitionError> {
        let mut events = events.into_iter();
        let first = events.next().ok_or(TransitionError::NotFirst)?;
        let mut record = Self::new(first)?;
        for event in events {
            record.apply(event)?;
        }
        Ok(record)
    }

    /// Applies the next event, or refuses it and leaves the record unchanged.
    pub fn apply(&mut self, event: ConsentEvent) -> Result<(), TransitionError> {
        self.check(&event)?;
        match &event.kind {
            EventKind::Requested(_) => return Err(TransitionError::NotFirst),
            EventKind::Granted(actor) => {
                self.granted.insert(actor.for_grantor.clone());
                if self.granted.len() == self.terms.grantors.len() {
                    self.status = ConsentStatus::Given;
                    self.given_at_ms = Some(event.at_ms);
                }
            }
            EventKind::Refused(_) => {
                self.status = ConsentStatus::Refused;
                self.ended_at_ms = Some(event.at_ms);
            }
            EventKind::Narrowed(terms) => self.terms = terms.clone(),
            EventKind::Withdrawn(_) => {
                self.status = ConsentStatus::Withdrawn;
                self.ended_at_ms = Some(event.at_ms);
            }
            EventKind::Invalidated { .. } => {
                self.status = ConsentStatus::Invalidated;
                self.ended_at_ms = Some(event.at_ms);
            }
            EventKind::Expired => {
                self.status = ConsentStatus::Expired;
                self.ended_at_ms = Some(self.terms.not_after_ms);
            }
        }
        self.events.push(event);
        Ok(())
    }

    /// Whether `event` may be applied next (the rules of every transition).
    pub fn check(&self, event: &ConsentEvent) -> Result<(), TransitionError> {
        if event.consent_id != self.terms.consent_id {
            return Err(TransitionError::OtherRecord(event.consent_id));
        }
        let expected = u32::try_from(self.events.len()).unwrap_or(u32::MAX);
        if event.seq != expected {
            return Err(TransitionError::OutOfOrder {
                expected,
                got: event.seq,
            });
        }
        if self.events.len() >= CONSENT_EVENTS_MAX {
            return Err(TransitionError::TooManyEvents);
        }
        if let Some(last) = self.events.last() {
            if event.at_ms < last.at_ms {
                return Err(TransitionError::TimeReversed {
                    previous_ms: last.at_ms,
                    at_ms: event.at_ms,
                });
            }
        }
        if event.recorder != self.terms.home {
            return Err(TransitionError::NotTheHome {
                home: self.terms.home.clone(),
                got: event.recorder.clone(),
            });
        }
        let status = self.status_at(event.at_ms);
        let terminal = |event: &'static str| TransitionError::Terminal { status, event };
        let after_expiry = TransitionError::AfterExpiry {
            not_after_ms: self.terms.not_after_ms,
            at_ms: event.at_ms,
        };
        match &event.kind {
            EventKind::Requested(_) => Err(TransitionError::NotFirst),
            EventKind::Granted(actor) => {
                if status == ConsentStatus::Expired {
                    return Err(after_expiry);
                }
                self.check_grantor(actor)?;
                if status != ConsentStatus::Requested {
                    return Err(if status == ConsentStatus::Given {
                        TransitionError::AlreadyGranted(actor.for_grantor.clone())
                    } else {
                        terminal("granted")
                    });
                }
                self.check_grantor(actor)?;
                if self.granted.contains(&actor.for_grantor) {
                    return Err(TransitionError::AlreadyGranted(actor.for_grantor.clone()));
                }
                Ok(())
            }
            EventKind::Refused(actor) => {
                if status != ConsentStatus::Requested {
                    return Err(terminal("refused"));
                }
                self.check_grantor(actor)
            }
            EventKind::Narrowed(terms) => {
                if status == ConsentStatus::Expired {
                    return Err(after_expiry);
                }
                if status.is_terminal() {
                    return Err(terminal("narrowed"));
                }
                terms.validate().map_err(TransitionError::Terms)?;
                if !self.terms.is_narrowed_by(terms) {
                    return Err(TransitionError::NotNarrowing);
                }
                Ok(())
            }
            EventKind::Withdrawn(actor) => {
                if status.is_terminal() {
                    return Err(terminal("withdrawn"));
                }
                self.check_grantor(actor)
            }
            EventKind::Invalidated { .. } => {
                if status.is_terminal() {
                    return Err(terminal("invalidated"));
                }
                Ok(())
            }
            EventKind::Expired => {
                // Only once the window has ended, and only once (status_at
                // says Expired; the stored status must not be already).
                if status != ConsentStatus::Expired || self.status == ConsentStatus::Expired {
                    return Err(TransitionError::NotExpired {
                        not_after_ms: self.terms.not_after_ms,
                        at_ms: event.at_ms,
                    });
                }
                Ok(())
            }
        }
    }

    fn check_grantor(&self, actor: &Actor) -> Result<(), TransitionError> {
        if self.terms.grantors.contains(&actor.for_grantor) {
            Ok(())
        } else {
            Err(TransitionError::NotAGrantor(actor.for_grantor.clone()))
        }
    }

    /// The current terms (after any narrowing).
    pub fn terms(&self) -> &ConsentTerms {
        &self.terms
    }

    /// The record's id.
    pub fn id(&self) -> ConsentId {
        self.terms.consent_id
    }

    /// The status at `at_ms`: `Expired` from `not_after` on, unless it ended earlier.
    pub fn status_at(&self, at_ms: u64) -> ConsentStatus {
        match self.status {
            ConsentStatus::Requested | ConsentStatus::Given if at_ms >= self.terms.not_after_ms => {
                ConsentStatus::Expired
            }
            status => status,
        }
    }

    /// Grantor slots still to be granted.
    pub fn missing_grantors(&self) -> Vec<SubjectId> {
        self.terms
            .grantors
            .iter()
            .filter(|g| !self.granted.contains(*g))
            .cloned()
            .collect()
    }

    /// Grantor slots granted so far.
    pub fn granted(&self) -> &BTreeSet<SubjectId> {
        &self.granted
    }

    /// When it became given.
    pub fn given_at_ms(&self) -> Option<u64> {
        self.given_at_ms
    }

    /// When it was refused, withdrawn or invalidated.
    pub fn ended_at_ms(&self) -> Option<u64> {
        self.ended_at_ms
    }

    /// The events, in order.
    pub fn events(&self) -> &[ConsentEvent] {
        &self.events
    }

    /// The next event's sequence number.
    pub fn next_seq(&self) -> u32 {
        u32::try_from(self.events.len()).unwrap_or(u32::MAX)
    }
}

/// Verifies a signed event against the trust list: decodes it, checks that the
/// recorder is a member whose key was valid when the event was recorded, and
/// that the signature verifies (strictly) over the exact body bytes.
pub fn verify_event(
    signed: &SignedEvent,
    trust: &VerifiedTrustList,
) -> Result<ConsentEvent, TransitionError> {
    let event = wire::decode_consent_event(&signed.body)?;
    let bad = |reason: String| TransitionError::BadSignature {
        seq: event.seq,
        reason,
    };
    let member = trust
        .member(&event.recorder)
        .ok_or_else(|| bad(format!("recorder {} is not a member", event.recorder)))?;
    let key = member.key(&signed.key_id).ok_or_else(|| {
        bad(format!(
            "key {} is not one of {}'s keys",
            signed.key_id, event.recorder
        ))
    })?;
    if !key.is_valid_at(event.at_ms) {
        return Err(bad(format!(
            "key {} was not valid when the event was recorded",
            signed.key_id
        )));
    }
    if !key
        .public_key
        .verify(CONSENT_EVENT_DOMAIN, &signed.body, &signed.signature)
    {
        return Err(bad("signature does not verify".into()));
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(scope: &[(&str, Action)]) -> ConsentTerms {
        ConsentTerms {
            consent_id: ConsentId::from_bytes([1; 16]),
            kind: RecordKind::Consent,
            subject: SubjectId::new("fi:hetu:1").unwrap(),
            home: OperatorId::new("fi.helsinki").unwrap(),
            grantors: vec![SubjectId::new("fi:hetu:1").unwrap()],
            audience: Audience::Service(ServiceId::new("fi.helsinki/edu").unwrap()),
            source: OperatorId::new("fi.incomeregister").unwrap(),
            scope: scope
                .iter()
                .map(|(a, action)| ScopeItem {
                    attribute: Attribute::new(*a).unwrap(),
                    action: *action,
                })
                .collect(),
            purposes: vec![Purpose::new("dpv:ServiceProvision").unwrap()],
            purpose_text: String::new(),
            lawful_basis: LawfulBasis::Consent,
            not_before_ms: 0,
            not_after_ms: 1_000,
        }
    }

    fn event(seq: u32, at_ms: u64, kind: EventKind) -> ConsentEvent {
        ConsentEvent {
            consent_id: ConsentId::from_bytes([1; 16]),
            seq,
            at_ms,
            recorder: OperatorId::new("fi.helsinki").unwrap(),
            kind,
        }
    }

    fn grant() -> EventKind {
        EventKind::Granted(Actor {
            person: SubjectId::new("fi:hetu:1").unwrap(),
            for_grantor: SubjectId::new("fi:hetu:1").unwrap(),
            delegations: vec![],
            authentication: "test".into(),
        })
    }

    /// A backdated event (before the previous one) is refused.
    #[test]
    fn events_cannot_be_backdated() {
        let mut record = ConsentRecord::new(event(
            0,
            500,
            EventKind::Requested(terms(&[("a.b", Action::Read)])),
        ))
        .unwrap();
        assert!(matches!(
            record.apply(event(1, 499, grant())),
            Err(TransitionError::TimeReversed {
                previous_ms: 500,
                at_ms: 499
            })
        ));
        record.apply(event(1, 500, grant())).unwrap();
    }

    /// The home may record an expiry only once the window has ended, and only once.
    #[test]
    fn expiry_is_recorded_only_after_the_end_and_once() {
        let mut record = ConsentRecord::new(event(
            0,
            0,
            EventKind::Requested(terms(&[("a.b", Action::Read)])),
        ))
        .unwrap();
        record.apply(event(1, 10, grant())).unwrap();
        assert!(matches!(
            record.apply(event(2, 999, EventKind::Expired)),
            Err(TransitionError::NotExpired {
                not_after_ms: 1_000,
                at_ms: 999
            })
        ));
        record.apply(event(2, 1_000, EventKind::Expired)).unwrap();
        assert_eq!(
            record.status_at(0),
            ConsentStatus::Expired,
            "stored, not only derived"
        );
        assert!(record.apply(event(3, 1_001, EventKind::Expired)).is_err());
        assert!(matches!(
            record.apply(event(3, 1_001, grant())),
            Err(TransitionError::AfterExpiry { .. })
        ));
    }

    /// Narrowing may reduce reading an attribute to verifying it, never the reverse.
    #[test]
    fn read_narrows_to_verify_but_not_back() {
        let read = terms(&[("a.b", Action::Read)]);
        let verify = terms(&[("a.b", Action::Verify)]);
        assert!(read.is_narrowed_by(&verify));
        assert!(!verify.is_narrowed_by(&read));
        assert!(!read.is_narrowed_by(&terms(&[("a.c", Action::Verify)])));
    }

    /// A log names its subject through its first event (what the store seals
    /// a stored copy under); a log that does not start with `requested`, or
    /// whose first event does not decode, names no one.
    #[test]
    fn a_log_names_the_subject_of_its_first_event() {
        let key = SecretKey::generate(&mut rand::rngs::OsRng);
        let t = terms(&[("a.b", Action::Read)]);
        let requested = event(1, 0, EventKind::Requested(t.clone())).sign(&key);
        let granted = event(2, 1, grant()).sign(&key);
        let log = |events: Vec<SignedEvent>| ConsentLog {
            consent_id: t.consent_id,
            events,
        };
        assert_eq!(
            log(vec![requested.clone(), granted.clone()]).subject(),
            Some(t.subject.clone())
        );
        assert_eq!(log(vec![granted.clone()]).subject(), None);
        assert_eq!(log(vec![]).subject(), None);
        let mut garbled = requested;
        garbled.body.truncate(3);
        assert_eq!(log(vec![garbled, granted]).subject(), None);
    }
}
