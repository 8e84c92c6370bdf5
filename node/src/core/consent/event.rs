//! The events of a record's log: who acted and on what authority, what
//! happened, and the event as the home operator signs it.

use super::names::{ConsentId, SubjectId};
use super::terms::ConsentTerms;
use crate::core::ids::OperatorId;
use crate::core::keys::{KeyId, SecretKey, CONSENT_EVENT_DOMAIN};
use crate::core::wire;

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
