//! The driver's consent side: recording events at the home operator, merging
//! logs pushed by the home at the other parties, the decision index, and the
//! consent payloads of received envelopes and calls.
//!
//! Writes to consent records are serialised by one async mutex per node
//! (`Consents::writer`), so a record's log grows one event at a time; reads
//! (`decide`) only take the index's read lock for a few microseconds.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use tonic::Code;
use tracing::{info, warn};

use crate::clock::{now_ms, random_id_bytes};
use crate::core::consent::copies;
use crate::core::consent::delegation::{Delegation, DelegationError, DelegationKind, Delegations};
use crate::core::consent::export::{self, ControllerInfo, PostalAddress};
use crate::core::consent::index::{Decision, Index, Query};
use crate::core::consent::{
    Actor, Audience, ConsentEvent, ConsentId, ConsentLog, ConsentRecord, ConsentTerms, EventKind,
    RecordKind, Sector, SubjectId, TermsError, TransitionError,
};
use crate::core::envelope::Payload;
use crate::core::ids::OperatorId;
use crate::core::reason::Reason;
use crate::core::trust::VerifiedTrustList;
use crate::limits;
use crate::node::{Error, Node, SendError};
use crate::store::{self, ConsentDelivery, Store};

/// The decision index and the delegation registry, kept in memory.
#[derive(Debug, Default)]
pub struct ConsentState {
    /// Every record this node holds.
    pub index: Index,
    /// Who may act for whom (kept by home operators).
    pub delegations: Delegations,
    /// Records this node is home of that are still requested or given, by
    /// `not_after`: when one passes, the home records the expiry and tells
    /// every party (they already deny from that instant on).
    expiring: std::collections::BTreeSet<(u64, ConsentId)>,
}

impl ConsentState {
    /// Indexes a record, and tracks its expiry if this node is its home.
    fn upsert(&mut self, record: &ConsentRecord, me: &OperatorId) {
        self.index.upsert(record);
        let key = (record.terms().not_after_ms, record.id());
        let open = matches!(
            record.status_at(0),
            crate::core::consent::ConsentStatus::Requested
                | crate::core::consent::ConsentStatus::Given
        );
        if &record.terms().home == me && open {
            self.expiring.insert(key);
        } else {
            self.expiring.remove(&key);
        }
    }
}

/// What the consent side owns: the in-memory state and the lock that
/// serialises changes to records.
#[derive(Debug)]
pub(super) struct Consents {
    /// The decision index and the delegation registry, behind a read lock
    /// that `decide` holds for microseconds.
    state: std::sync::RwLock<ConsentState>,
    /// Serialises changes to consent records (one event at a time per node).
    writer: tokio::sync::Mutex<()>,
}

impl Consents {
    /// The consent side over the state [`load`] built.
    pub(super) fn new(state: ConsentState) -> Self {
        Self {
            state: std::sync::RwLock::new(state),
            writer: tokio::sync::Mutex::new(()),
        }
    }
}

/// Errors of consent operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsentError {
    /// No such record here.
    #[error("no consent {0} on this node")]
    NotFound(ConsentId),
    /// Only the subject's home operator records events.
    #[error("this node is not the subject's home operator ({0} is); act there")]
    NotHome(OperatorId),
    /// The terms are invalid.
    #[error("invalid terms: {0}")]
    Terms(#[from] TermsError),
    /// The event is not allowed in the record's state.
    #[error("{0}")]
    Transition(#[from] TransitionError),
    /// The person may not act for the grantor.
    #[error("{person} may not act for {grantor}: no valid delegation of depth at most 2")]
    NoAuthority {
        /// Who tried.
        person: SubjectId,
        /// For whom.
        grantor: SubjectId,
    },
    /// The delegation is invalid.
    #[error("invalid delegation: {0}")]
    Delegation(#[from] DelegationError),
    /// The record exists already.
    #[error("consent {0} exists already")]
    Exists(ConsentId),
    /// This node holds [`limits::CONSENTS_PER_SUBJECT_MAX`] records about the
    /// subject already; a new one is refused.
    #[error("this node holds the maximum of {max} consent records about the subject")]
    SubjectFull {
        /// The limit.
        max: usize,
    },
    /// An operator named in the terms is not an active member.
    #[error("{0} is not an active member of the federation")]
    UnknownOperator(OperatorId),
    /// Sending to a peer failed.
    #[error("sending: {0}")]
    Send(#[from] SendError),
    /// A peer's answer was unusable.
    #[error("peer: {0}")]
    Peer(String),
    /// An export was asked in an unknown format, or cannot be made here.
    #[error("export: {0}")]
    Format(String),
    /// A consent notice from a peer that this node cannot apply (not its
    /// home, not a party, a log that contradicts the stored one, ...).
    #[error("{0}")]
    Notice(String),
    /// Storage failed.
    #[error("storage failure: {0}")]
    Store(#[from] store::Error),
}

/// Whether terms are refused for a list or the text over its limit.
pub(crate) fn terms_over_limit(error: &TermsError) -> bool {
    match error {
        TermsError::Count { max, got, .. } => got > max,
        TermsError::TextTooLong(_) => true,
        _ => false,
    }
}

impl ConsentError {
    /// The stable reason (`mim4-reason`) when the error is going over one
    /// of [`limits`]' bounds, refused with `RESOURCE_EXHAUSTED` on the
    /// API and the peer port alike; `None` for any other error.
    pub fn limit_reason(&self) -> Option<Reason> {
        match self {
            ConsentError::Transition(TransitionError::TooManyEvents) => Some(Reason::TooManyEvents),
            ConsentError::Transition(TransitionError::Terms(e)) | ConsentError::Terms(e)
                if terms_over_limit(e) =>
            {
                Some(Reason::TermsTooLarge)
            }
            ConsentError::SubjectFull { .. } => Some(Reason::TooManyConsents),
            ConsentError::Delegation(DelegationError::TooMany(_)) => {
                Some(Reason::TooManyDelegations)
            }
            _ => None,
        }
    }
}

/// Builds the in-memory state from the store at start. Logs are verified
/// again after reading (paired with the check before storing); a log that no
/// longer verifies (its recorder left the federation) is skipped with a warning.
pub(crate) fn load(
    store: &Store,
    trust: &VerifiedTrustList,
    me: &OperatorId,
) -> Result<ConsentState, store::Error> {
    let mut state = ConsentState::default();
    for log in store.consent_logs()? {
        match log.verify(trust) {
            Ok(record) => state.upsert(&record, me),
            Err(e) => {
                warn!(consent = %log.consent_id, error = %e, "stored consent log no longer verifies; not indexed")
            }
        }
    }
    for delegation in store.delegations()? {
        let id = delegation.id;
        if let Err(e) = state.delegations.insert(delegation) {
            warn!(delegation = %id, error = %e, "stored delegation is invalid; ignored");
        }
    }
    Ok(state)
}

/// The operators other than `me` that must hold a copy of the record.
fn parties(terms: &ConsentTerms, me: &OperatorId) -> BTreeSet<OperatorId> {
    let mut parties = copies::parties(terms);
    parties.remove(me);
    parties
}

fn random_id() -> ConsentId {
    ConsentId::from_bytes(random_id_bytes())
}

impl Node {
    fn read_consents<T>(&self, f: impl FnOnce(&ConsentState) -> T) -> T {
        match self.consents.state.read() {
            Ok(guard) => f(&guard),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    fn write_consents<T>(&self, f: impl FnOnce(&mut ConsentState) -> T) -> T {
        match self.consents.state.write() {
            Ok(mut guard) => f(&mut guard),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// The record and its signed log, as stored here.
    pub fn consent(&self, id: &ConsentId) -> Result<(ConsentRecord, ConsentLog), ConsentError> {
        let log = self
            .store
            .consent_log(id)?
            .ok_or(ConsentError::NotFound(*id))?;
        let record = log.verify(&self.trust())?;
        Ok((record, log))
    }

    /// The latest push of the record to each party (home operator only).
    pub fn consent_deliveries(&self, id: &ConsentId) -> Result<Vec<ConsentDelivery>, ConsentError> {
        Ok(self.store.consent_deliveries(id)?)
    }

    /// Ids of the records about `subject` held here.
    pub fn consents_of(&self, subject: &SubjectId) -> Vec<ConsentId> {
        self.read_consents(|state| state.index.records_of(subject))
    }

    /// Refuses a new record about `subject` when this node holds
    /// [`limits::CONSENTS_PER_SUBJECT_MAX`] already. Callers hold
    /// `Consents::writer`, so no other record is added in between.
    fn check_room_for(&self, subject: &SubjectId) -> Result<(), ConsentError> {
        let held = self.read_consents(|state| state.index.count_of(subject));
        if held >= limits::CONSENTS_PER_SUBJECT_MAX {
            return Err(ConsentError::SubjectFull {
                max: limits::CONSENTS_PER_SUBJECT_MAX,
            });
        }
        Ok(())
    }

    /// Asks the decision index.
    pub fn decide(&self, query: &Query<'_>) -> Decision {
        self.read_consents(|state| state.index.decide(query))
    }

    /// The sector labels of a member, from the trust list.
    pub fn sectors_of(&self, operator: &OperatorId) -> Vec<Sector> {
        self.trust()
            .member(operator)
            .map(|m| {
                m.sectors
                    .iter()
                    .filter_map(|s| Sector::new(s.clone()).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn check_members(&self, terms: &ConsentTerms) -> Result<(), ConsentError> {
        let trust = self.trust();
        let mut named = vec![&terms.home, &terms.source];
        match &terms.audience {
            Audience::Service(s) => named.push(s.operator()),
            Audience::Member(m) => named.push(m),
            Audience::Sector(_) => {}
        }
        for operator in named {
            let active = trust
                .member(operator)
                .is_some_and(|m| m.status == crate::core::trust::MemberStatus::Active);
            if !active {
                return Err(ConsentError::UnknownOperator(operator.clone()));
            }
        }
        Ok(())
    }

    /// Asks for a consent. At the home operator the request is recorded; elsewhere
    /// it is sent to the home as an offer (through the outbox).
    pub async fn request_consent(
        self: &Arc<Self>,
        mut terms: ConsentTerms,
    ) -> Result<ConsentId, ConsentError> {
        if terms.consent_id == ConsentId::from_bytes([0; 16]) {
            terms.consent_id = random_id();
        }
        terms.validate()?;
        self.check_members(&terms)?;
        let id = terms.consent_id;
        if &terms.home == self.operator_id() {
            self.record_requested(terms, None).await?;
        } else {
            let home = terms.home.clone();
            let message_id = self
                .send(home.clone(), Payload::ConsentOffer(terms))
                .await?;
            info!(consent = %id, %home, %message_id, "consent request sent to the home operator");
        }
        Ok(id)
    }

    /// Records a new record's first event (and, for an arrangement, the
    /// subject's grant) at the home operator.
    async fn record_requested(
        self: &Arc<Self>,
        terms: ConsentTerms,
        grant: Option<Actor>,
    ) -> Result<ConsentRecord, ConsentError> {
        let _writer = self.consents.writer.lock().await;
        let id = terms.consent_id;
        if self.store.consent_log(&id)?.is_some() {
            return Err(ConsentError::Exists(id));
        }
        self.check_room_for(&terms.subject)?;
        let now = now_ms();
        let first = ConsentEvent {
            consent_id: id,
            seq: 0,
            at_ms: now,
            recorder: self.operator_id().clone(),
            kind: EventKind::Requested(terms),
        };
        let mut record = ConsentRecord::new(first.clone())?;
        let mut events = vec![first];
        if let Some(actor) = grant {
            let event = ConsentEvent {
                consent_id: id,
                seq: 1,
                at_ms: now,
                recorder: self.operator_id().clone(),
                kind: EventKind::Granted(actor),
            };
            record.apply(event.clone())?;
            events.push(event);
        }
        let log = ConsentLog {
            consent_id: id,
            events: events.iter().map(|e| e.sign(&self.key)).collect(),
        };
        self.commit_home(record, log).await
    }

    /// Appends one event at the home operator.
    async fn record_event(
        self: &Arc<Self>,
        id: ConsentId,
        kind: impl FnOnce(&ConsentRecord, u64) -> Result<EventKind, ConsentError>,
    ) -> Result<ConsentRecord, ConsentError> {
        let _writer = self.consents.writer.lock().await;
        let (mut record, mut log) = self.consent(&id)?;
        if &record.terms().home != self.operator_id() {
            return Err(ConsentError::NotHome(record.terms().home.clone()));
        }
        let now = now_ms();
        let event = ConsentEvent {
            consent_id: id,
            seq: record.next_seq(),
            at_ms: now,
            recorder: self.operator_id().clone(),
            kind: kind(&record, now)?,
        };
        record.apply(event.clone())?;
        log.events.push(event.sign(&self.key));
        self.commit_home(record, log).await
    }

    /// Stores the new log durably, updates the index, and pushes the log to every party.
    async fn commit_home(
        self: &Arc<Self>,
        record: ConsentRecord,
        log: ConsentLog,
    ) -> Result<ConsentRecord, ConsentError> {
        self.store.put_consent_log(&log, &record.terms().subject)?;
        self.store.durable().await?;
        let me = self.operator_id().clone();
        self.write_consents(|state| state.upsert(&record, &me));
        info!(consent = %record.id(), status = record.status_at(now_ms()).as_str(), events = log.events.len(), "consent recorded");
        self.push_log(&log, parties(record.terms(), self.operator_id()))
            .await?;
        Ok(record)
    }

    /// Queues `log` to each of `parties` and records each push, durably.
    /// Callers hold `Consents::writer`.
    async fn push_log(
        self: &Arc<Self>,
        log: &ConsentLog,
        parties: BTreeSet<OperatorId>,
    ) -> Result<(), ConsentError> {
        let events = u32::try_from(log.events.len()).unwrap_or(u32::MAX);
        for party in parties {
            let message_id = self
                .send(party.clone(), Payload::ConsentRecord(log.clone()))
                .await?;
            self.store.set_consent_delivery(
                &log.consent_id,
                &ConsentDelivery {
                    operator: party,
                    events,
                    message_id,
                },
            )?;
        }
        self.store.durable().await?;
        Ok(())
    }

    /// The parties of a record this node is home of that were not sent its
    /// latest version, or whose push of it expired undelivered.
    fn lagging_parties(
        &self,
        record: &ConsentRecord,
        log: &ConsentLog,
    ) -> Result<BTreeSet<OperatorId>, ConsentError> {
        let latest = u32::try_from(log.events.len()).unwrap_or(u32::MAX);
        let deliveries = self.store.consent_deliveries(&log.consent_id)?;
        let mut lagging = BTreeSet::new();
        for party in parties(record.terms(), self.operator_id()) {
            let sent = deliveries
                .iter()
                .find(|d| d.operator == party && d.events >= latest);
            let reaches = match sent {
                None => false,
                Some(d) => !matches!(
                    self.store.outgoing(&d.message_id)?,
                    Some(out) if out.state == store::OutgoingState::Expired
                ),
            };
            if !reaches {
                lagging.insert(party);
            }
        }
        Ok(lagging)
    }

    /// Pushes again the latest version of every record this node is home of
    /// to the parties that lack it: the log is stored before its pushes are
    /// queued, so a crash in between (or a failed send, or a push that
    /// expired while a party was away) leaves a party behind until this runs.
    /// Returns how many pushes were queued; a record whose push fails (a
    /// party left the federation) is logged and the others still go.
    pub(crate) async fn repush_lagging(self: &Arc<Self>) -> Result<usize, ConsentError> {
        let mut queued = 0;
        let mut failed = 0;
        for stored in self.store.consent_logs()? {
            let id = stored.consent_id;
            match self.repush_one(stored).await {
                Ok(n) => queued += n,
                Err(e) => {
                    failed += 1;
                    warn!(consent = %id, error = %e, "could not push a consent record again; retried at the next pass");
                }
            }
        }
        if failed > 0 {
            warn!(failed, "consent records not pushed again to every party");
        }
        Ok(queued)
    }

    /// [`Node::repush_lagging`] for one stored record.
    async fn repush_one(self: &Arc<Self>, stored: ConsentLog) -> Result<usize, ConsentError> {
        let trust = self.trust();
        let me = self.operator_id().clone();
        {
            let Ok(record) = stored.verify(&trust) else {
                return Ok(0);
            };
            if record.terms().home != me || self.lagging_parties(&record, &stored)?.is_empty() {
                return Ok(0);
            }
        }
        // Re-read under the writer lock: the log may have grown meanwhile.
        let _writer = self.consents.writer.lock().await;
        let Some(log) = self.store.consent_log(&stored.consent_id)? else {
            return Ok(0);
        };
        let Ok(record) = log.verify(&trust) else {
            return Ok(0);
        };
        let lagging = self.lagging_parties(&record, &log)?;
        let n = lagging.len();
        if n > 0 {
            info!(consent = %record.id(), parties = n, events = log.events.len(), "pushing the latest version of a consent record again to parties that lack it");
            self.push_log(&log, lagging).await?;
        }
        Ok(n)
    }

    /// The delegation chain by which `person` acts for `grantor`, or an error.
    fn authority(
        &self,
        grantor: &SubjectId,
        person: &SubjectId,
        at_ms: u64,
    ) -> Result<Vec<ConsentId>, ConsentError> {
        self.read_consents(|state| state.delegations.authority(grantor, person, at_ms))
            .ok_or_else(|| ConsentError::NoAuthority {
                person: person.clone(),
                grantor: grantor.clone(),
            })
    }

    /// A grantor (or someone acting for them) grants, refuses or withdraws.
    pub async fn act_on_consent(
        self: &Arc<Self>,
        id: ConsentId,
        action: GrantorAction,
        person: SubjectId,
        for_grantor: Option<SubjectId>,
        authentication: String,
    ) -> Result<ConsentRecord, ConsentError> {
        self.record_event(id, |record, now| {
            let grantor = match for_grantor {
                Some(g) => g,
                None if action == GrantorAction::Withdraw => {
                    // Withdrawing needs no particular slot: any grantor (or their agent) may.
                    record
                        .terms()
                        .grantors
                        .iter()
                        .find(|g| self.authority(g, &person, now).is_ok())
                        .cloned()
                        .unwrap_or_else(|| person.clone())
                }
                None => person.clone(),
            };
            let delegations = self.authority(&grantor, &person, now)?;
            let actor = Actor {
                person,
                for_grantor: grantor,
                delegations,
                authentication,
            };
            Ok(match action {
                GrantorAction::Grant => EventKind::Granted(actor),
                GrantorAction::Refuse => EventKind::Refused(actor),
                GrantorAction::Withdraw => EventKind::Withdrawn(actor),
            })
        })
        .await
    }

    /// Narrows a record's terms, on behalf of one of its grantors.
    pub async fn narrow_consent(
        self: &Arc<Self>,
        id: ConsentId,
        terms: ConsentTerms,
        person: SubjectId,
    ) -> Result<ConsentRecord, ConsentError> {
        self.record_event(id, |record, now| {
            let allowed = record
                .terms()
                .grantors
                .iter()
                .any(|g| self.authority(g, &person, now).is_ok());
            if !allowed {
                return Err(ConsentError::NoAuthority {
                    person: person.clone(),
                    grantor: record.terms().subject.clone(),
                });
            }
            Ok(EventKind::Narrowed(terms))
        })
        .await
    }

    /// A citizen (or someone acting for them) sets a permission arrangement.
    pub async fn create_arrangement(
        self: &Arc<Self>,
        mut terms: ConsentTerms,
        person: SubjectId,
        authentication: String,
    ) -> Result<ConsentRecord, ConsentError> {
        if terms.consent_id == ConsentId::from_bytes([0; 16]) {
            terms.consent_id = random_id();
        }
        if terms.kind != RecordKind::Arrangement {
            return Err(ConsentError::Terms(TermsError::AudienceKind));
        }
        if &terms.home != self.operator_id() {
            return Err(ConsentError::NotHome(terms.home.clone()));
        }
        terms.validate()?;
        self.check_members(&terms)?;
        let delegations = self.authority(&terms.subject, &person, now_ms())?;
        let actor = Actor {
            person,
            for_grantor: terms.subject.clone(),
            delegations,
            authentication,
        };
        self.record_requested(terms, Some(actor)).await
    }

    /// Records a delegation (home operator's registry).
    pub async fn record_delegation(
        &self,
        principal: SubjectId,
        agent: SubjectId,
        kind: DelegationKind,
        not_before_ms: u64,
        not_after_ms: u64,
    ) -> Result<ConsentId, ConsentError> {
        let delegation = Delegation {
            id: random_id(),
            principal,
            agent,
            kind,
            not_before_ms,
            not_after_ms,
            revoked: false,
        };
        let id = delegation.id;
        self.write_consents(|state| state.delegations.insert(delegation.clone()))?;
        self.store.put_delegation(&delegation)?;
        self.store.durable().await?;
        info!(delegation = %id, kind = kind.as_str(), "delegation recorded");
        Ok(id)
    }

    /// Applies a consent payload received from `sender`; `Err` is the reason
    /// the message cannot be applied. Idempotent: a repeated offer or an
    /// older log changes nothing.
    pub(crate) async fn apply_consent_payload(
        self: &Arc<Self>,
        sender: &OperatorId,
        payload: &Payload,
    ) -> Result<(), ConsentError> {
        match payload {
            Payload::ConsentOffer(terms) => {
                if &terms.home != self.operator_id() {
                    return Err(ConsentError::Notice(format!(
                        "the offer names {} as home, not this node",
                        terms.home
                    )));
                }
                let Audience::Service(service) = &terms.audience else {
                    return Err(ConsentError::Notice(
                        "an offer asks consent for one service".into(),
                    ));
                };
                if service.operator() != sender {
                    return Err(ConsentError::Notice(format!(
                        "{sender} may only ask consent for its own services, not {service}"
                    )));
                }
                if self.store.consent_log(&terms.consent_id)?.is_some() {
                    return Ok(());
                }
                self.check_members(terms)?;
                match self.record_requested(terms.clone(), None).await {
                    Ok(_) | Err(ConsentError::Exists(_)) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Payload::ConsentRecord(log) => self.merge_log(sender, log).await,
            _ => Err(ConsentError::Notice(format!(
                "{} is not a consent notice",
                payload.kind()
            ))),
        }
    }

    /// Keeps the longer of the stored log and `log`, if `log` is the home's and extends it.
    async fn merge_log(
        self: &Arc<Self>,
        sender: &OperatorId,
        log: &ConsentLog,
    ) -> Result<(), ConsentError> {
        let me = self.operator_id();
        let sectors = self.sectors_of(me);
        let _writer = self.consents.writer.lock().await;
        let held = self.store.consent_log(&log.consent_id)?;
        let merged = copies::merge(&self.trust(), me, &sectors, sender, held.as_ref(), log);
        let record = match merged {
            Ok(copies::Merged::Extends(record)) => record,
            Ok(copies::Merged::Unchanged) => return Ok(()),
            Err(copies::MergeError::Invalid(e)) => return Err(e.into()),
            Err(e) => {
                if matches!(e, copies::MergeError::Equivocation) {
                    warn!(consent = %log.consent_id, home = %sender, "home pushed a log that contradicts the stored one (equivocation); refused");
                }
                return Err(ConsentError::Notice(e.to_string()));
            }
        };
        if held.is_none() {
            // A home that keeps to the limit never sends more; a record
            // beyond it is refused, not indexed.
            self.check_room_for(&record.terms().subject)?;
        }
        self.store.put_consent_log(log, &record.terms().subject)?;
        let me = self.operator_id().clone();
        self.write_consents(|state| state.upsert(&record, &me));
        info!(consent = %log.consent_id, status = record.status_at(now_ms()).as_str(), events = log.events.len(), "consent record updated from home");
        Ok(())
    }

    /// Records the expiry of up to `max` records whose validity ended by
    /// `now_ms` (this node being their home) and pushes it to every party.
    /// Returns how many were recorded.
    pub(crate) async fn expire_due(self: &Arc<Self>, now_ms: u64, max: usize) -> usize {
        let due: Vec<(u64, ConsentId)> = self.read_consents(|state| {
            state
                .expiring
                .iter()
                .take_while(|(not_after, _)| *not_after <= now_ms)
                .take(max)
                .copied()
                .collect()
        });
        let mut recorded = 0;
        for (not_after, id) in due {
            match self.record_event(id, |_, _| Ok(EventKind::Expired)).await {
                Ok(_) => recorded += 1,
                Err(e) => {
                    warn!(consent = %id, error = %e, "could not record expiry; not retried");
                    self.write_consents(|state| state.expiring.remove(&(not_after, id)));
                }
            }
        }
        recorded
    }

    /// Asks `from` for its copy of a record, verifies it and keeps it if newer.
    pub async fn pull_consent(
        self: &Arc<Self>,
        id: ConsentId,
        from: OperatorId,
    ) -> Result<ConsentRecord, ConsentError> {
        let answer = self
            .call(from.clone(), Payload::ConsentStatusQuery(id))
            .await
            .map_err(|e| {
                if e.is_refused_with(Code::NotFound) {
                    ConsentError::NotFound(id)
                } else {
                    ConsentError::Peer(e.to_string())
                }
            })?;
        let Payload::ConsentStatusAnswer(log) = answer else {
            return Err(ConsentError::Peer(format!(
                "{from} answered with a {}",
                answer.kind()
            )));
        };
        if log.consent_id != id {
            return Err(ConsentError::Peer(format!(
                "{from} answered about another consent"
            )));
        }
        let record = log.verify(&self.trust())?;
        let home = record.terms().home.clone();
        self.merge_log(&home, &log).await.map_err(|e| match e {
            ConsentError::Notice(reason) => ConsentError::Peer(reason),
            other => other,
        })?;
        self.store.durable().await?;
        Ok(record)
    }

    /// Answers a consent status query with the stored log.
    pub(crate) fn answer_status_query(&self, id: &ConsentId) -> Result<Payload, String> {
        match self.store.consent_log(id) {
            Ok(Some(log)) => Ok(Payload::ConsentStatusAnswer(log)),
            Ok(None) => Err(format!("no consent {id} here")),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// What a grantor does in [`Node::act_on_consent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantorAction {
    /// Grant.
    Grant,
    /// Refuse.
    Refuse,
    /// Withdraw.
    Withdraw,
}

impl Node {
    /// Exports a record: `kantara` (a Kantara Consent Receipt v1.1 signed as a
    /// compact JWS by this operator) or `iso27560` (ISO/IEC TS 27560 JSON-LD
    /// with DPV terms). Returns the content and its media type.
    pub fn export_consent(
        &self,
        record: &ConsentRecord,
        format: &str,
    ) -> Result<(String, &'static str), ConsentError> {
        let controller = self.controller_info()?;
        match format {
            "kantara" => {
                let receipt = export::kantara_receipt(record, &controller, now_ms());
                Ok((export::sign_jws(&receipt, &self.key), "application/jose"))
            }
            "iso27560" => Ok((
                export::iso27560_jsonld(record, &controller).to_string(),
                "application/ld+json",
            )),
            other => Err(ConsentError::Format(format!(
                "{other:?} is not an export format; use kantara or iso27560"
            ))),
        }
    }

    fn controller_info(&self) -> Result<ControllerInfo, ConsentError> {
        let c = self.config.controller.as_ref().ok_or_else(|| {
            ConsentError::Format(
                "this node has no [controller] section in node.toml; receipts must name the controller"
                    .into(),
            )
        })?;
        Ok(ControllerInfo {
            operator: self.operator_id().clone(),
            name: c.name.clone(),
            on_behalf: false,
            contact: c.contact.clone(),
            address: PostalAddress {
                street_address: c.street_address.clone(),
                postal_code: c.postal_code.clone(),
                locality: c.locality.clone(),
                country: c.country.clone(),
            },
            email: c.email.clone(),
            phone: c.phone.clone(),
            url: None,
            policy_url: c.policy_url.clone(),
            jurisdiction: c.country.clone(),
            language: c.language.clone(),
            public_key: self.key.public(),
        })
    }
}

/// Once a second, records the expiry of consents this node is home of whose
/// validity ended, so every party is told. Decisions never wait for this:
/// every copy denies from `not_after` on by itself.
pub(crate) async fn expiry_loop(shared: Arc<Node>, cancel: CancellationToken) -> Result<(), Error> {
    const BATCH: usize = 256;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let recorded = shared.expire_due(now_ms(), BATCH).await;
        if recorded > 0 {
            info!(
                recorded,
                "consent expiries recorded and pushed to every party"
            );
        }
    }
}

/// Pushes consent records again to parties that lack their latest version:
/// once at start (a crash may have come between storing a log and queuing its
/// pushes), then every `REPUSH_EVERY` (pushes that expired while a party was away).
pub(crate) async fn repush_loop(shared: Arc<Node>, cancel: CancellationToken) -> Result<(), Error> {
    const REPUSH_EVERY: Duration = Duration::from_secs(300);
    loop {
        match shared.repush_lagging().await {
            Ok(0) => {}
            Ok(queued) => info!(
                queued,
                "consent records pushed again to parties that lacked them"
            ),
            Err(e) => warn!(error = %e, "could not scan consent records for lagging parties"),
        }
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(REPUSH_EVERY) => {}
        }
    }
}
