//! A record's state machine: its status, the rules of every transition
//! ([`ConsentRecord::check`]) and the record as the fold of its events.

use std::collections::BTreeSet;

use super::event::{Actor, ConsentEvent, EventKind};
use super::names::{ConsentId, SubjectId};
use super::terms::{ConsentTerms, TermsError};
use crate::core::ids::OperatorId;
use crate::core::wire;
// The bound of a log is in `crate::limits`, with its reason.
use crate::limits::CONSENT_EVENTS_MAX;

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
        self.check_next(event)?;
        let status = self.status_at(event.at_ms);
        let terminal = |name: &'static str| TransitionError::Terminal {
            status,
            event: name,
        };
        match &event.kind {
            EventKind::Requested(_) => Err(TransitionError::NotFirst),
            EventKind::Granted(actor) => self.check_grant(status, actor, event.at_ms),
            EventKind::Refused(actor) => {
                if status != ConsentStatus::Requested {
                    return Err(terminal("refused"));
                }
                self.check_grantor(actor)
            }
            EventKind::Narrowed(terms) => self.check_narrowing(status, terms, event.at_ms),
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
            EventKind::Expired => self.check_expiry(status, event.at_ms),
        }
    }

    /// The rules every event keeps, whatever its kind: it is for this record,
    /// comes next in order, fits in the log, is not dated before the previous
    /// event, and is recorded by the home.
    fn check_next(&self, event: &ConsentEvent) -> Result<(), TransitionError> {
        if event.consent_id != self.terms.consent_id {
            return Err(TransitionError::OtherRecord(event.consent_id));
        }
        let expected = self.next_seq();
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
        Ok(())
    }

    /// A grant comes before the end of the window, from a grantor, while the
    /// record is still requested, and once per grantor slot.
    fn check_grant(
        &self,
        status: ConsentStatus,
        actor: &Actor,
        at_ms: u64,
    ) -> Result<(), TransitionError> {
        if status == ConsentStatus::Expired {
            return Err(self.after_expiry(at_ms));
        }
        self.check_grantor(actor)?;
        match status {
            ConsentStatus::Requested if !self.granted.contains(&actor.for_grantor) => Ok(()),
            ConsentStatus::Requested | ConsentStatus::Given => {
                Err(TransitionError::AlreadyGranted(actor.for_grantor.clone()))
            }
            status => Err(TransitionError::Terminal {
                status,
                event: "granted",
            }),
        }
    }

    /// A narrowing comes before the end of the window, while the record is
    /// live, with valid terms that only narrow the current ones.
    fn check_narrowing(
        &self,
        status: ConsentStatus,
        terms: &ConsentTerms,
        at_ms: u64,
    ) -> Result<(), TransitionError> {
        if status == ConsentStatus::Expired {
            return Err(self.after_expiry(at_ms));
        }
        if status.is_terminal() {
            return Err(TransitionError::Terminal {
                status,
                event: "narrowed",
            });
        }
        terms.validate().map_err(TransitionError::Terms)?;
        if !self.terms.is_narrowed_by(terms) {
            return Err(TransitionError::NotNarrowing);
        }
        Ok(())
    }

    /// An expiry is recorded only once the window has ended, and only once
    /// (`status_at` says `Expired`; the stored status must not be already).
    fn check_expiry(&self, status: ConsentStatus, at_ms: u64) -> Result<(), TransitionError> {
        if status != ConsentStatus::Expired || self.status == ConsentStatus::Expired {
            return Err(TransitionError::NotExpired {
                not_after_ms: self.terms.not_after_ms,
                at_ms,
            });
        }
        Ok(())
    }

    /// The refusal of a grant or narrowing dated at or after `not_after`.
    fn after_expiry(&self, at_ms: u64) -> TransitionError {
        TransitionError::AfterExpiry {
            not_after_ms: self.terms.not_after_ms,
            at_ms,
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
