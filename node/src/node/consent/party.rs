//! Consent at the other parties: the consent notices a home pushes (an offer
//! to record, a log to merge by the core's `copies::merge` rule), a pull of the
//! current log from the home, and the home's answer to such a status query.

use std::sync::Arc;

use tonic::Code;
use tracing::{info, warn};

use super::ConsentError;
use crate::clock::now_ms;
use crate::core::consent::copies;
use crate::core::consent::{Audience, ConsentId, ConsentLog, ConsentRecord};
use crate::core::envelope::Payload;
use crate::core::ids::OperatorId;
use crate::node::Node;

impl Node {
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
    pub(super) async fn merge_log(
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
