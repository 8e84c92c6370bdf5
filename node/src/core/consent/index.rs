//! The decision index: "may this recipient do this with this attribute of
//! this subject, from this source, for this purpose, at this instant?"
//!
//! Records are compiled into per-(subject, attribute) lists in one flat table,
//! keyed by a keyed hash of the pair, so a decision is one hash lookup and a
//! scan of the few compact entries that name that attribute. Operators,
//! services, sectors, attributes and purposes are interned into small ids, so
//! an entry holds no strings but the (shared) subject it is checked against.
//! Time is an argument: expiry takes effect at its instant without a sweeper.
//! [`decide_naive`] answers the same question by scanning every record; it is
//! the reference the index is tested against.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::Arc;

use crate::core::consent::{
    Action, Attribute, Audience, ConsentId, ConsentRecord, ConsentStatus, Purpose, Sector,
    ServiceId, SubjectId,
};
use crate::core::ids::OperatorId;
use crate::limits::CONSENT_PURPOSES_MAX;

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
    verdict_by(
        consent_id,
        status,
        not_before_ms,
        not_after_ms,
        missing,
        || purposes.contains(query.purpose),
        query,
    )
}

/// [`verdict`], with the purpose check as a closure (called only if needed).
fn verdict_by(
    consent_id: ConsentId,
    status: ConsentStatus,
    not_before_ms: u64,
    not_after_ms: u64,
    missing: u32,
    covers_purpose: impl FnOnce() -> bool,
    query: &Query<'_>,
) -> Decision {
    let deny = Decision::Deny;
    match status {
        ConsentStatus::Given if query.at_ms < not_before_ms => deny(DenyReason::NotYetValid {
            consent_id,
            not_before_ms,
        }),
        ConsentStatus::Given if !covers_purpose() => {
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

/// FxHash (as in rustc): fast for the short, trusted names of the side tables.
#[derive(Clone, Copy, Debug, Default)]
struct FxHasher {
    hash: u64,
}

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// Passes an already well-mixed `u64` key through unchanged.
#[derive(Clone, Copy, Debug, Default)]
struct KeyHasher {
    hash: u64,
}

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed with this hasher; stay correct regardless.
        for &b in bytes {
            self.hash = (self.hash.rotate_left(8) ^ u64::from(b)).wrapping_mul(FX_SEED);
        }
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.hash = i;
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

/// Names interned into dense `u32` ids. Ids are never reused, so the table
/// grows only with the number of distinct names ever indexed.
#[derive(Debug, Default)]
struct Interner {
    ids: FxMap<Box<str>, u32>,
}

impl Interner {
    fn intern(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = u32::try_from(self.ids.len()).unwrap_or(u32::MAX);
        self.ids.insert(name.into(), id);
        id
    }

    #[inline]
    fn get(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }
}

/// An interned audience.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Aud {
    /// A service id.
    Service(u32),
    /// An operator id.
    Member(u32),
    /// A sector id.
    Sector(u32),
}

/// The interned parts of a query, resolved lazily (only when an entry needs them).
struct Resolved {
    source: Option<u32>,
    operator: Option<u32>,
    service: Option<u32>,
    /// The operator running the query's service (if the service is known);
    /// a service audience admits only if it equals the query's operator.
    service_operator: Option<u32>,
}

/// A record's purposes as interned ids, inline (records carry at most
/// [`CONSENT_PURPOSES_MAX`]).
#[derive(Clone, Debug)]
enum Purposes {
    Inline {
        ids: [u32; CONSENT_PURPOSES_MAX],
        len: u8,
    },
    Heap(Box<[u32]>),
}

impl Purposes {
    fn new(ids: &[u32]) -> Self {
        match u8::try_from(ids.len()) {
            Ok(len) if ids.len() <= CONSENT_PURPOSES_MAX => {
                let mut inline = [0u32; CONSENT_PURPOSES_MAX];
                inline[..ids.len()].copy_from_slice(ids);
                Purposes::Inline { ids: inline, len }
            }
            _ => Purposes::Heap(ids.into()),
        }
    }

    #[inline]
    fn contains(&self, id: u32) -> bool {
        match self {
            Purposes::Inline { ids, len } => ids[..usize::from(*len)].contains(&id),
            Purposes::Heap(ids) => ids.contains(&id),
        }
    }
}

/// Longest subject id kept inline in an entry.
const SUBJECT_INLINE_MAX: usize = 30;

/// An entry's subject, inline when short so that checking it costs no
/// pointer chase; longer ones share the subject's one allocation.
#[derive(Clone, Debug)]
enum SubjectKey {
    Inline {
        len: u8,
        bytes: [u8; SUBJECT_INLINE_MAX],
    },
    Shared(Arc<str>),
}

impl SubjectKey {
    fn new(subject: &Arc<str>) -> Self {
        let raw = subject.as_bytes();
        match u8::try_from(raw.len()) {
            Ok(len) if raw.len() <= SUBJECT_INLINE_MAX => {
                let mut bytes = [0u8; SUBJECT_INLINE_MAX];
                bytes[..raw.len()].copy_from_slice(raw);
                SubjectKey::Inline { len, bytes }
            }
            _ => SubjectKey::Shared(Arc::clone(subject)),
        }
    }

    #[inline]
    fn is(&self, subject: &str) -> bool {
        match self {
            SubjectKey::Inline { len, bytes } => &bytes[..usize::from(*len)] == subject.as_bytes(),
            SubjectKey::Shared(shared) => &**shared == subject,
        }
    }
}

/// One record's permission for one attribute, as the index stores it.
#[derive(Clone, Debug)]
struct Entry {
    /// The subject; checked on lookup so that a collision of the table's
    /// 64-bit key is harmless.
    subject: SubjectKey,
    attribute: u32,
    source: u32,
    audience: Aud,
    consent_id: ConsentId,
    not_before_ms: u64,
    not_after_ms: u64,
    purposes: Purposes,
    missing: u32,
    action: Action,
    /// Status before time (never `Expired`).
    status: ConsentStatus,
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

/// The entries under one table key: almost always one, stored inline.
#[derive(Clone, Debug)]
enum Slot {
    One(Entry),
    Many(Vec<Entry>),
}

impl Slot {
    #[inline]
    fn entries(&self) -> &[Entry] {
        match self {
            Slot::One(entry) => std::slice::from_ref(entry),
            Slot::Many(entries) => entries,
        }
    }
}

/// Which parties a record concerns, to tell "attribute not covered" from "no consent".
#[derive(Clone, Debug)]
struct Summary {
    consent_id: ConsentId,
    source: u32,
    audience: Aud,
    attributes: Vec<u32>,
}

/// The in-memory decision index over every record a node holds.
#[derive(Debug, Default)]
pub struct Index {
    /// Entries keyed by a keyed hash of (subject, attribute id).
    entries: HashMap<u64, Slot, BuildHasherDefault<KeyHasher>>,
    /// The key of `entries`; randomly keyed, so keys cannot be forced to collide.
    keys: RandomState,
    summaries: HashMap<Arc<str>, Vec<Summary>>,
    subject_of: HashMap<ConsentId, Arc<str>>,
    operators: Interner,
    services: Interner,
    /// The operator id of each interned service, by service id.
    service_operators: Vec<u32>,
    sectors: Interner,
    /// Sector names by id, to match a query's sector labels.
    sector_names: Vec<Sector>,
    attributes: Interner,
    purposes: Interner,
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

    #[inline]
    fn key(&self, subject: &str, attribute: u32) -> u64 {
        self.keys.hash_one((subject, attribute))
    }

    fn intern_audience(&mut self, audience: &Audience) -> Aud {
        match audience {
            Audience::Service(service) => {
                let before = self.services.ids.len();
                let id = self.services.intern(service.as_str());
                if self.services.ids.len() != before {
                    let operator = self.operators.intern(service.operator().as_str());
                    self.service_operators.push(operator);
                }
                Aud::Service(id)
            }
            Audience::Member(operator) => Aud::Member(self.operators.intern(operator.as_str())),
            Audience::Sector(sector) => {
                let before = self.sectors.ids.len();
                let id = self.sectors.intern(sector.as_str());
                if self.sectors.ids.len() != before {
                    self.sector_names.push(sector.clone());
                }
                Aud::Sector(id)
            }
        }
    }

    /// Adds a record, or replaces its previous version.
    pub fn upsert(&mut self, record: &ConsentRecord) {
        self.remove(record.id());
        let terms = record.terms();
        let consent_id = record.id();
        let missing = u32::try_from(record.missing_grantors().len()).unwrap_or(u32::MAX);
        // The status before time: `status_at(0)` cannot be Expired because a
        // valid window ends after 0.
        let status = record.status_at(0);
        let subject: Arc<str> = match self.summaries.get_key_value(terms.subject.as_str()) {
            Some((subject, _)) => Arc::clone(subject),
            None => Arc::from(terms.subject.as_str()),
        };
        let source = self.operators.intern(terms.source.as_str());
        let audience = self.intern_audience(&terms.audience);
        let purpose_ids: Vec<u32> = terms
            .purposes
            .iter()
            .map(|p| self.purposes.intern(p.as_str()))
            .collect();
        let purposes = Purposes::new(&purpose_ids);
        let subject_key = SubjectKey::new(&subject);
        let mut attributes = Vec::with_capacity(terms.scope.len());
        for item in &terms.scope {
            let attribute = self.attributes.intern(item.attribute.as_str());
            attributes.push(attribute);
            let entry = Entry {
                subject: subject_key.clone(),
                attribute,
                source,
                audience,
                consent_id,
                not_before_ms: terms.not_before_ms,
                not_after_ms: terms.not_after_ms,
                purposes: purposes.clone(),
                missing,
                action: item.action,
                status,
            };
            let key = self.key(&subject, attribute);
            match self.entries.entry(key) {
                std::collections::hash_map::Entry::Vacant(vacant) => {
                    vacant.insert(Slot::One(entry));
                }
                std::collections::hash_map::Entry::Occupied(mut occupied) => {
                    let slot = occupied.get_mut();
                    match slot {
                        Slot::Many(entries) => entries.push(entry),
                        Slot::One(_) => {
                            let Slot::One(first) =
                                std::mem::replace(slot, Slot::Many(Vec::with_capacity(2)))
                            else {
                                unreachable!("matched Slot::One above")
                            };
                            *slot = Slot::Many(vec![first, entry]);
                        }
                    }
                }
            }
        }
        self.summaries
            .entry(Arc::clone(&subject))
            .or_default()
            .push(Summary {
                consent_id,
                source,
                audience,
                attributes,
            });
        self.subject_of.insert(consent_id, subject);
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
        for &attribute in &summary.attributes {
            let key = self.key(&subject, attribute);
            let std::collections::hash_map::Entry::Occupied(mut occupied) = self.entries.entry(key)
            else {
                continue;
            };
            let empty = match occupied.get_mut() {
                Slot::One(entry) => entry.consent_id == consent_id,
                Slot::Many(entries) => {
                    entries.retain(|e| e.consent_id != consent_id);
                    if entries.len() == 1 {
                        if let Some(last) = entries.pop() {
                            *occupied.get_mut() = Slot::One(last);
                        }
                        false
                    } else {
                        entries.is_empty()
                    }
                }
            };
            if empty {
                occupied.remove();
            }
        }
    }

    /// How many records about `subject` the index holds.
    pub fn count_of(&self, subject: &SubjectId) -> usize {
        self.summaries.get(subject.as_str()).map_or(0, Vec::len)
    }

    /// Ids of the records about `subject`.
    pub fn records_of(&self, subject: &SubjectId) -> Vec<ConsentId> {
        self.summaries
            .get(subject.as_str())
            .map(|s| s.iter().map(|s| s.consent_id).collect())
            .unwrap_or_default()
    }

    fn resolve(&self, query: &Query<'_>) -> Resolved {
        let service = self.services.get(query.service.as_str());
        Resolved {
            source: self.operators.get(query.source.as_str()),
            operator: self.operators.get(query.operator.as_str()),
            service,
            service_operator: service.and_then(|s| self.service_operators.get(s as usize).copied()),
        }
    }

    #[inline]
    fn admits(&self, audience: Aud, resolved: &Resolved, query: &Query<'_>) -> bool {
        match audience {
            Aud::Service(id) => {
                resolved.service == Some(id)
                    && resolved.operator.is_some()
                    && resolved.service_operator == resolved.operator
            }
            Aud::Member(id) => resolved.operator == Some(id),
            Aud::Sector(id) => self
                .sector_names
                .get(id as usize)
                .is_some_and(|label| query.sectors.contains(label)),
        }
    }

    /// Answers a query.
    pub fn decide(&self, query: &Query<'_>) -> Decision {
        let subject = query.subject.as_str();
        let mut resolved = None;
        let mut best = None;
        if let Some(attribute) = self.attributes.get(query.attribute.as_str()) {
            let key = self.key(subject, attribute);
            if let Some(slot) = self.entries.get(&key) {
                let resolved = resolved.get_or_insert_with(|| self.resolve(query));
                let mut purpose = None;
                for entry in slot.entries() {
                    if Some(entry.source) != resolved.source
                        || entry.attribute != attribute
                        || !entry.action.covers(query.action)
                        || !entry.subject.is(subject)
                        || !self.admits(entry.audience, resolved, query)
                    {
                        continue;
                    }
                    let decision = verdict_by(
                        entry.consent_id,
                        entry.status_at(query.at_ms),
                        entry.not_before_ms,
                        entry.not_after_ms,
                        entry.missing,
                        || {
                            purpose
                                .get_or_insert_with(|| self.purposes.get(query.purpose.as_str()))
                                .is_some_and(|id| entry.purposes.contains(id))
                        },
                        query,
                    );
                    best = better(best, (decision, entry.consent_id));
                }
            }
        }
        if best.is_some() {
            return finish(best, true);
        }
        // Slow path, only on denial: does any record name this recipient and source?
        let any_for_recipient = self.summaries.get(subject).is_some_and(|summaries| {
            let resolved = resolved.get_or_insert_with(|| self.resolve(query));
            resolved.source.is_some()
                && summaries.iter().any(|s| {
                    Some(s.source) == resolved.source && self.admits(s.audience, resolved, query)
                })
        });
        finish(None, any_for_recipient)
    }
}
