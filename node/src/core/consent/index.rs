//! The decision index: "may this recipient do this with this attribute of
//! this subject, from this source, for this purpose, at this instant?"
//!
//! Records are compiled into per-(subject, attribute) lists, so a decision is
//! two hash lookups and a scan of the few records that name that attribute.
//! Time is an argument: expiry takes effect at its instant without a sweeper.
//! [`decide_naive`] answers the same question by scanning every record; it is
//! the reference the index is tested against.

use std::collections::HashMap;

use crate::core::consent::{
    Action, Attribute, Audience, ConsentId, ConsentRecord, ConsentStatus, Purpose, Sector,
    ServiceId, SubjectId,
};
use crate::core::ids::OperatorId;

/// One question to the index.
#[derive(Clone, Copy, Debug)]
pub struct Query<'a> {
    /// Whose data.
    pub subject: &'a SubjectId,
    /// The requesting operator.
    pub operator: &'a OperatorId,
    /// The requesting service.
    pub service: &'a ServiceId,
    /// The requesting operator's sector labels (from the trust list).
    pub sectors: &'a [Sector],
    /// The operator holding the data.
    pub source: &'a OperatorId,
    /// The attribute.
    pub attribute: &'a Attribute,
    /// What the recipient wants to do with it.
    pub action: Action,
    /// Why.
    pub purpose: &'a Purpose,
    /// When (ms since the epoch).
    pub at_ms: u64,
}

/// The answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Permitted under this consent or arrangement (the lowest id if several permit).
    Allow {
        /// The record that permits it.
        consent_id: ConsentId,
    },
    /// Not permitted.
    Deny(DenyReason),
}

/// Why a request is denied: the most specific reason among the records that
/// name the subject, recipient, source and attribute.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DenyReason {
    /// No record for this subject, recipient and source.
    #[error("no consent or arrangement covers this recipient and source")]
    NoConsent,
    /// Records exist for this recipient and source, but none covers the attribute and action.
    #[error("the consent does not cover this attribute or action")]
    AttributeNotCovered,
    /// A record is given for the attribute, but not for this purpose.
    #[error("the consent does not cover this purpose (consent {consent_id})")]
    PurposeNotCovered {
        /// The record.
        consent_id: ConsentId,
    },
    /// Given, but its window starts later.
    #[error("the consent is valid only from {not_before_ms} ms (consent {consent_id})")]
    NotYetValid {
        /// The record.
        consent_id: ConsentId,
        /// Start of validity.
        not_before_ms: u64,
    },
    /// Requested, waiting for grantors.
    #[error("the consent awaits {missing} grantor(s) (consent {consent_id})")]
    AwaitingGrantors {
        /// The record.
        consent_id: ConsentId,
        /// How many have not granted yet.
        missing: u32,
    },
    /// Expired.
    #[error("the consent expired at {not_after_ms} ms (consent {consent_id})")]
    Expired {
        /// The record.
        consent_id: ConsentId,
        /// End of validity.
        not_after_ms: u64,
    },
    /// Withdrawn.
    #[error("the consent was withdrawn (consent {consent_id})")]
    Withdrawn {
        /// The record.
        consent_id: ConsentId,
    },
    /// Refused.
    #[error("the consent was refused (consent {consent_id})")]
    Refused {
        /// The record.
        consent_id: ConsentId,
    },
    /// Invalidated by the consent authority.
    #[error("the consent was invalidated (consent {consent_id})")]
    Invalidated {
        /// The record.
        consent_id: ConsentId,
    },
}

impl DenyReason {
    /// Specificity: the reason closest to an allow wins when several records apply.
    fn rank(&self) -> u8 {
        match self {
            DenyReason::NoConsent => 0,
            DenyReason::AttributeNotCovered => 1,
            DenyReason::Invalidated { .. } => 2,
            DenyReason::Refused { .. } => 3,
            DenyReason::Withdrawn { .. } => 4,
            DenyReason::Expired { .. } => 5,
            DenyReason::AwaitingGrantors { .. } => 6,
            DenyReason::NotYetValid { .. } => 7,
            DenyReason::PurposeNotCovered { .. } => 8,
        }
    }

    /// Short machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            DenyReason::NoConsent => "no-consent",
            DenyReason::AttributeNotCovered => "attribute-not-covered",
            DenyReason::PurposeNotCovered { .. } => "purpose-not-covered",
            DenyReason::NotYetValid { .. } => "not-yet-valid",
            DenyReason::AwaitingGrantors { .. } => "awaiting-grantors",
            DenyReason::Expired { .. } => "expired",
            DenyReason::Withdrawn { .. } => "withdrawn",
            DenyReason::Refused { .. } => "refused",
            DenyReason::Invalidated { .. } => "invalidated",
        }
    }
}

/// What one record says about one query, given that it names the subject,
/// the source, an audience admitting the recipient, and the attribute/action.
fn verdict(
    consent_id: ConsentId,
    status: ConsentStatus,
    not_before_ms: u64,
    not_after_ms: u64,
    missing: u32,
    purposes: &[Purpose],
    query: &Query<'_>,
) -> Decision {
    let deny = Decision::Deny;
    match status {
        ConsentStatus::Given if query.at_ms < not_before_ms => deny(DenyReason::NotYetValid {
            consent_id,
            not_before_ms,
        }),
        ConsentStatus::Given if !purposes.contains(query.purpose) => {
            deny(DenyReason::PurposeNotCovered { consent_id })
        }
        ConsentStatus::Given => Decision::Allow { consent_id },
        ConsentStatus::Requested => deny(DenyReason::AwaitingGrantors {
            consent_id,
            missing,
        }),
        ConsentStatus::Expired => deny(DenyReason::Expired {
            consent_id,
            not_after_ms,
        }),
        ConsentStatus::Withdrawn => deny(DenyReason::Withdrawn { consent_id }),
        ConsentStatus::Refused => deny(DenyReason::Refused { consent_id }),
        ConsentStatus::Invalidated => deny(DenyReason::Invalidated { consent_id }),
    }
}

/// Keeps the better of two decisions: any allow (lowest id) beats any deny;
/// among denies the higher rank wins, then the lower consent id.
fn better(
    current: Option<(Decision, ConsentId)>,
    candidate: (Decision, ConsentId),
) -> Option<(Decision, ConsentId)> {
    let Some(current) = current else {
        return Some(candidate);
    };
    let key = |(decision, id): &(Decision, ConsentId)| match decision {
        Decision::Allow { .. } => (u8::MAX, std::cmp::Reverse(*id)),
        Decision::Deny(reason) => (reason.rank(), std::cmp::Reverse(*id)),
    };
    Some(if key(&candidate) > key(&current) {
        candidate
    } else {
        current
    })
}

fn finish(best: Option<(Decision, ConsentId)>, any_for_recipient: bool) -> Decision {
    match best {
        Some((decision, _)) => decision,
        None if any_for_recipient => Decision::Deny(DenyReason::AttributeNotCovered),
        None => Decision::Deny(DenyReason::NoConsent),
    }
}

/// The reference decision: scans every record.
pub fn decide_naive<'r>(
    records: impl IntoIterator<Item = &'r ConsentRecord>,
    query: &Query<'_>,
) -> Decision {
    let mut best = None;
    let mut any_for_recipient = false;
    for record in records {
        let terms = record.terms();
        if &terms.subject != query.subject
            || &terms.source != query.source
            || !terms
                .audience
                .admits(query.operator, query.service, query.sectors)
        {
            continue;
        }
        any_for_recipient = true;
        let covered = terms
            .scope
            .iter()
            .any(|s| &s.attribute == query.attribute && s.action.covers(query.action));
        if !covered {
            continue;
        }
        let missing = u32::try_from(record.missing_grantors().len()).unwrap_or(u32::MAX);
        let decision = verdict(
            record.id(),
            record.status_at(query.at_ms),
            terms.not_before_ms,
            terms.not_after_ms,
            missing,
            &terms.purposes,
            query,
        );
        best = better(best, (decision, record.id()));
    }
    finish(best, any_for_recipient)
}

/// One record's permission for one attribute, as the index stores it.
#[derive(Clone, Debug)]
struct Entry {
    consent_id: ConsentId,
    source: OperatorId,
    audience: Audience,
    action: Action,
    purposes: Vec<Purpose>,
    not_before_ms: u64,
    not_after_ms: u64,
    /// Status before time (never `Expired`).
    status: ConsentStatus,
    missing: u32,
}

impl Entry {
    fn status_at(&self, at_ms: u64) -> ConsentStatus {
        match self.status {
            ConsentStatus::Requested | ConsentStatus::Given if at_ms >= self.not_after_ms => {
                ConsentStatus::Expired
            }
            status => status,
        }
    }
}

/// Which parties a record concerns, to tell "attribute not covered" from "no consent".
#[derive(Clone, Debug)]
struct Summary {
    consent_id: ConsentId,
    source: OperatorId,
    audience: Audience,
    attributes: Vec<Attribute>,
}

/// The in-memory decision index over every record a node holds.
#[derive(Debug, Default)]
pub struct Index {
    by_subject: HashMap<SubjectId, HashMap<Attribute, Vec<Entry>>>,
    summaries: HashMap<SubjectId, Vec<Summary>>,
    subject_of: HashMap<ConsentId, SubjectId>,
}

impl Index {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of records indexed.
    pub fn len(&self) -> usize {
        self.subject_of.len()
    }

    /// Whether no record is indexed.
    pub fn is_empty(&self) -> bool {
        self.subject_of.is_empty()
    }

    /// Adds a record, or replaces its previous version.
    pub fn upsert(&mut self, record: &ConsentRecord) {
        self.remove(record.id());
        let terms = record.terms();
        let missing = u32::try_from(record.missing_grantors().len()).unwrap_or(u32::MAX);
        // The status before time: `status_at(0)` cannot be Expired because a
        // valid window ends after 0.
        let status = record.status_at(0);
        let attributes = self.by_subject.entry(terms.subject.clone()).or_default();
        for item in &terms.scope {
            attributes
                .entry(item.attribute.clone())
                .or_default()
                .push(Entry {
                    consent_id: record.id(),
                    source: terms.source.clone(),
                    audience: terms.audience.clone(),
                    action: item.action,
                    purposes: terms.purposes.clone(),
                    not_before_ms: terms.not_before_ms,
                    not_after_ms: terms.not_after_ms,
                    status,
                    missing,
                });
        }
        self.summaries
            .entry(terms.subject.clone())
            .or_default()
            .push(Summary {
                consent_id: record.id(),
                source: terms.source.clone(),
                audience: terms.audience.clone(),
                attributes: terms.scope.iter().map(|s| s.attribute.clone()).collect(),
            });
        self.subject_of.insert(record.id(), terms.subject.clone());
    }

    /// Removes a record.
    pub fn remove(&mut self, consent_id: ConsentId) {
        let Some(subject) = self.subject_of.remove(&consent_id) else {
            return;
        };
        let Some(summaries) = self.summaries.get_mut(&subject) else {
            return;
        };
        let Some(position) = summaries.iter().position(|s| s.consent_id == consent_id) else {
            return;
        };
        let summary = summaries.swap_remove(position);
        if summaries.is_empty() {
            self.summaries.remove(&subject);
        }
        if let Some(attributes) = self.by_subject.get_mut(&subject) {
            for attribute in &summary.attributes {
                if let Some(entries) = attributes.get_mut(attribute) {
                    entries.retain(|e| e.consent_id != consent_id);
                    if entries.is_empty() {
                        attributes.remove(attribute);
                    }
                }
            }
            if attributes.is_empty() {
                self.by_subject.remove(&subject);
            }
        }
    }

    /// Ids of the records about `subject`.
    pub fn records_of(&self, subject: &SubjectId) -> Vec<ConsentId> {
        self.summaries
            .get(subject)
            .map(|s| s.iter().map(|s| s.consent_id).collect())
            .unwrap_or_default()
    }

    /// Answers a query.
    pub fn decide(&self, query: &Query<'_>) -> Decision {
        let entries = self
            .by_subject
            .get(query.subject)
            .and_then(|attributes| attributes.get(query.attribute));
        let mut best = None;
        for entry in entries.into_iter().flatten() {
            if &entry.source != query.source
                || !entry.action.covers(query.action)
                || !entry
                    .audience
                    .admits(query.operator, query.service, query.sectors)
            {
                continue;
            }
            let decision = verdict(
                entry.consent_id,
                entry.status_at(query.at_ms),
                entry.not_before_ms,
                entry.not_after_ms,
                entry.missing,
                &entry.purposes,
                query,
            );
            best = better(best, (decision, entry.consent_id));
        }
        if best.is_some() {
            return finish(best, true);
        }
        // Slow path, only on denial: does any record name this recipient and source?
        let any_for_recipient = self.summaries.get(query.subject).is_some_and(|summaries| {
            summaries.iter().any(|s| {
                &s.source == query.source
                    && s.audience
                        .admits(query.operator, query.service, query.sectors)
            })
        });
        finish(None, any_for_recipient)
    }
}
