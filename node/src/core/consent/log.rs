//! A record's signed log as it travels between operators, and the check of
//! each signed event against the trust list before the log is folded.

use super::event::{ConsentEvent, EventKind, SignedEvent};
use super::names::{ConsentId, SubjectId};
use super::record::{ConsentRecord, TransitionError};
use crate::core::keys::CONSENT_EVENT_DOMAIN;
use crate::core::trust::VerifiedTrustList;
use crate::core::wire;
use crate::limits::CONSENT_EVENTS_MAX;

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
