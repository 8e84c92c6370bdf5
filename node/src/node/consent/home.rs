//! Consent at the home operator: checking and recording each event (a
//! request, a grant or refusal, a withdrawal, a narrowing, an arrangement, a
//! delegation), storing and flushing the log, and pushing it to every party;
//! the expiry of records whose window ended, and re-pushes to parties that
//! lack the latest version; exports of a record (Kantara, ISO/IEC TS 27560).

use std::collections::BTreeSet;
use std::sync::Arc;

use tracing::{info, warn};

use super::{parties, random_id, ConsentError};
use crate::clock::now_ms;
use crate::core::consent::delegation::{Delegation, DelegationKind};
use crate::core::consent::export::{self, ControllerInfo, PostalAddress};
use crate::core::consent::{
    Actor, Audience, ConsentEvent, ConsentId, ConsentLog, ConsentRecord, ConsentTerms, EventKind,
    RecordKind, SubjectId, TermsError,
};
use crate::core::envelope::Payload;
use crate::core::ids::OperatorId;
use crate::node::Node;
use crate::store::{self, ConsentDelivery};

impl Node {
    pub(super) fn check_members(&self, terms: &ConsentTerms) -> Result<(), ConsentError> {
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
    pub(super) async fn record_requested(
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
    pub(super) async fn record_event(
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
    pub(super) async fn commit_home(
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
    pub(super) async fn push_log(
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
    pub(super) fn lagging_parties(
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
    pub(super) async fn repush_one(
        self: &Arc<Self>,
        stored: ConsentLog,
    ) -> Result<usize, ConsentError> {
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
    pub(super) fn authority(
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

    pub(super) fn controller_info(&self) -> Result<ControllerInfo, ConsentError> {
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
