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
//! - this file: the module's paths (every type is re-exported here, so
//!   `crate::core::consent::X` names it wherever it lives);
//! - `names`: identifiers and validated names (subject, attribute, purpose,
//!   sector, service, [`ConsentId`]);
//! - `terms`: the terms of a record, their rules and narrowing;
//! - `event`: the events of a log and their signing;
//! - `record`: the record's status and state machine (the fold of its events);
//! - `log`: the signed log between operators and the check of each event;
//! - [`copies`]: who holds a copy of a record, and how a copy grows (the merge rule);
//! - [`delegation`]: who may act for whom (guardians, mandates), bounded in depth;
//! - [`index`]: the in-memory decision index and the reference (naive) decision;
//! - [`export`]: Kantara Consent Receipt v1.1 (JWS) and ISO/IEC TS 27560 JSON-LD.

pub mod copies;
pub mod delegation;
pub mod export;
pub mod index;

mod event;
mod log;
mod names;
mod record;
mod terms;

pub use event::{Actor, ConsentEvent, EventKind, SignedEvent};
pub use log::{verify_event, ConsentLog};
pub use names::{Attribute, ConsentId, NameError, Purpose, Sector, ServiceId, SubjectId};
pub use record::{ConsentRecord, ConsentStatus, TransitionError};
pub use terms::{Action, Audience, ConsentTerms, LawfulBasis, RecordKind, ScopeItem, TermsError};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ids::OperatorId;
    use crate::core::keys::SecretKey;

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
