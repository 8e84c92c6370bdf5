//! The terms of a consent or arrangement: what may be done with which
//! attributes, for whom, why and when, and the rules terms must keep
//! ([`ConsentTerms::validate`]) and narrowing must keep
//! ([`ConsentTerms::is_narrowed_by`]).

use std::collections::BTreeSet;

use super::names::{Attribute, ConsentId, NameError, Purpose, Sector, ServiceId, SubjectId};
use crate::core::ids::OperatorId;
// The bounds of terms are in `crate::limits`, with their reasons.
use crate::limits::{
    CONSENT_GRANTORS_MAX, CONSENT_PURPOSES_MAX, CONSENT_SCOPE_MAX, PURPOSE_TEXT_BYTES_MAX,
};

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
