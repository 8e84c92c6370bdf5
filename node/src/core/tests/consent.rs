//! Tests of consent: every transition of the record's state machine (legal
//! and illegal), the rules on terms, signed logs checked against the trust
//! list, the wire form of events and terms, the decision index, and property
//! tests that the index always agrees with the naive scan over every record.
//!
//! Time is an argument everywhere: the fixture's clock is [`NOW`], a consent's
//! window is `[NOT_BEFORE, NOT_AFTER)`, and it was asked for a day earlier.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::strategy::ValueTree as _;
use proptest::test_runner::TestRunner;

use crate::core::consent::index::{decide_naive, Decision, DenyReason, Index, Query};
use crate::core::consent::{
    Action, Actor, Attribute, Audience, ConsentEvent, ConsentId, ConsentLog, ConsentRecord,
    ConsentStatus, ConsentTerms, EventKind, LawfulBasis, Purpose, RecordKind, ScopeItem, Sector,
    ServiceId, SignedEvent, SubjectId, TermsError, TransitionError,
};
use crate::core::ids::OperatorId;
use crate::core::keys::{SecretKey, CONSENT_EVENT_DOMAIN, ENVELOPE_DOMAIN};
use crate::core::trust::{MemberKey, VerifiedTrustList};
use crate::core::wire;
use crate::limits::{
    CONSENT_EVENTS_MAX, CONSENT_GRANTORS_MAX, CONSENT_PURPOSES_MAX, CONSENT_SCOPE_MAX,
    PURPOSE_TEXT_BYTES_MAX,
};

use super::util::{member_mut, secret, Fixture, DAY_MS, NOW};

// ---------------------------------------------------------------------------
// Fixture: parties, names, terms and event scripts
// ---------------------------------------------------------------------------

/// The subject's home operator: the consent authority that records and signs every event.
const HOME: &str = "fi.helsinki";
/// The operator that runs the consuming service.
const RECIPIENT: &str = "se.stockholm";
/// The consuming service.
const SERVICE: &str = "se.stockholm/early-education";
/// The operator that holds the data.
const SOURCE: &str = "fr.iledefrance";

const ALICE: &str = "fi:alice";
const BOB: &str = "fi:bob";
const CHILD: &str = "fi:child";
const MOTHER: &str = "fi:mother";
const FATHER: &str = "fi:father";
const LAWYER: &str = "fi:lawyer";
const MALLORY: &str = "fi:mallory";

const INCOME: &str = "income.gross_monthly";
const LICENCE: &str = "licence.driving.classes";
const SKILLS: &str = "skills.record";

const SERVICE_PROVISION: &str = "dpv:ServiceProvision";
const EDUCATION: &str = "dpv:EducationalServices";
const RESEARCH: &str = "dpv:ResearchAndDevelopment";

/// First instant of the default window (inclusive).
const NOT_BEFORE: u64 = NOW;
/// End of the default window (exclusive).
const NOT_AFTER: u64 = NOW + 30 * DAY_MS;
/// When the default consent was asked for.
const ASKED_AT: u64 = NOW - DAY_MS;
/// Time between consecutive events of a script.
const STEP_MS: u64 = 60_000;

fn subject(name: &str) -> SubjectId {
    SubjectId::new(name).unwrap()
}

fn operator(id: &str) -> OperatorId {
    OperatorId::new(id).unwrap()
}

fn service(id: &str) -> ServiceId {
    ServiceId::new(id).unwrap()
}

fn attribute(name: &str) -> Attribute {
    Attribute::new(name).unwrap()
}

fn purpose(term: &str) -> Purpose {
    Purpose::new(term).unwrap()
}

fn sector(label: &str) -> Sector {
    Sector::new(label).unwrap()
}

fn consent_id(n: u8) -> ConsentId {
    ConsentId::from_bytes([n; 16])
}

fn read(name: &str) -> ScopeItem {
    ScopeItem {
        attribute: attribute(name),
        action: Action::Read,
    }
}

fn verify(name: &str) -> ScopeItem {
    ScopeItem {
        attribute: attribute(name),
        action: Action::Verify,
    }
}

/// Alice's consent `n`: [`SERVICE`] may read her income and verify her
/// driving-licence classes held by [`SOURCE`], for service provision or
/// education, within `[NOT_BEFORE, NOT_AFTER)`.
fn terms(n: u8) -> ConsentTerms {
    ConsentTerms {
        consent_id: consent_id(n),
        kind: RecordKind::Consent,
        subject: subject(ALICE),
        home: operator(HOME),
        grantors: vec![subject(ALICE)],
        audience: Audience::Service(service(SERVICE)),
        source: operator(SOURCE),
        scope: vec![read(INCOME), verify(LICENCE)],
        purposes: vec![purpose(SERVICE_PROVISION), purpose(EDUCATION)],
        purpose_text: "Daycare fee set from the household's income".to_owned(),
        lawful_basis: LawfulBasis::Consent,
        not_before_ms: NOT_BEFORE,
        not_after_ms: NOT_AFTER,
    }
}

/// The child's consent `n`, which both guardians must grant.
fn guardians_terms(n: u8) -> ConsentTerms {
    ConsentTerms {
        subject: subject(CHILD),
        grantors: vec![subject(MOTHER), subject(FATHER)],
        ..terms(n)
    }
}

/// Alice's standing arrangement `n`: `audience` may read her skills record
/// held by [`SOURCE`] for education.
fn arrangement(n: u8, audience: Audience) -> ConsentTerms {
    ConsentTerms {
        kind: RecordKind::Arrangement,
        audience,
        scope: vec![read(SKILLS)],
        purposes: vec![purpose(EDUCATION)],
        purpose_text: "My skills record is open to schools".to_owned(),
        ..terms(n)
    }
}

/// `person` acting for themselves.
fn actor(person: &str) -> Actor {
    acting_for(person, person, Vec::new())
}

/// `person` filling `grantor`'s slot through `delegations`.
fn acting_for(person: &str, grantor: &str, delegations: Vec<ConsentId>) -> Actor {
    Actor {
        person: subject(person),
        for_grantor: subject(grantor),
        delegations,
        authentication: "citizen-app:helsinki-app".to_owned(),
    }
}

/// An event recorded by [`HOME`].
fn event(id: ConsentId, seq: u32, at_ms: u64, kind: EventKind) -> ConsentEvent {
    ConsentEvent {
        consent_id: id,
        seq,
        at_ms,
        recorder: operator(HOME),
        kind,
    }
}

/// A log under construction: each event gets the next seq and, unless
/// given, a time [`STEP_MS`] after the previous one.
#[derive(Clone, Debug)]
struct Script {
    events: Vec<ConsentEvent>,
}

impl Script {
    /// A log that starts with `terms` being asked for at [`ASKED_AT`].
    fn requested(terms: ConsentTerms) -> Self {
        Self {
            events: vec![event(
                terms.consent_id,
                0,
                ASKED_AT,
                EventKind::Requested(terms),
            )],
        }
    }

    fn then_at(mut self, at_ms: u64, kind: EventKind) -> Self {
        let id = self.events[0].consent_id;
        let seq = u32::try_from(self.events.len()).unwrap();
        self.events.push(event(id, seq, at_ms, kind));
        self
    }

    fn then(self, kind: EventKind) -> Self {
        let at_ms = self.events.last().unwrap().at_ms + STEP_MS;
        self.then_at(at_ms, kind)
    }

    fn granted(self, grantor: &str) -> Self {
        self.then(EventKind::Granted(actor(grantor)))
    }

    fn refused(self, grantor: &str) -> Self {
        self.then(EventKind::Refused(actor(grantor)))
    }

    fn withdrawn(self, grantor: &str) -> Self {
        self.then(EventKind::Withdrawn(actor(grantor)))
    }

    fn narrowed(self, terms: ConsentTerms) -> Self {
        self.then(EventKind::Narrowed(terms))
    }

    fn invalidated(self) -> Self {
        self.then(EventKind::Invalidated {
            reason: "the grantor's identity was misused".to_owned(),
        })
    }

    /// Changes the last event (to make it illegal).
    fn edit_last(mut self, edit: impl FnOnce(&mut ConsentEvent)) -> Self {
        edit(self.events.last_mut().unwrap());
        self
    }

    fn events(&self) -> Vec<ConsentEvent> {
        self.events.clone()
    }

    /// The folded record; the script must be legal.
    fn record(&self) -> ConsentRecord {
        ConsentRecord::from_events(self.events()).unwrap()
    }
}

/// A record of `terms` in `status` (not `Expired`, which is a matter of time).
fn record(terms: ConsentTerms, status: ConsentStatus) -> ConsentRecord {
    let grantors: Vec<String> = terms.grantors.iter().map(ToString::to_string).collect();
    let mut script = Script::requested(terms);
    let grant_all = |mut script: Script| {
        for grantor in &grantors {
            script = script.granted(grantor);
        }
        script
    };
    script = match status {
        ConsentStatus::Requested => script,
        ConsentStatus::Given => grant_all(script),
        ConsentStatus::Refused => script.refused(&grantors[0]),
        ConsentStatus::Withdrawn => grant_all(script).withdrawn(&grantors[0]),
        ConsentStatus::Invalidated => grant_all(script).invalidated(),
        ConsentStatus::Expired => panic!("expiry is a matter of time, not of events"),
    };
    script.record()
}

// ---------------------------------------------------------------------------
// State machine
// ---------------------------------------------------------------------------

/// Folds `events`, the last one through `check` and `apply`, and compares the
/// outcome (the status at the last event's time) with `want`. `check` must
/// agree with `apply`, a refused event must leave the record unchanged, and
/// `from_events` over the whole log must give the same outcome.
#[track_caller]
fn check(events: Vec<ConsentEvent>, want: Result<ConsentStatus, TransitionError>) {
    let folded = ConsentRecord::from_events(events.clone());
    let mut events = events;
    let last = events.pop().expect("a log has at least one event");
    let at_ms = last.at_ms;
    let got = if events.is_empty() {
        ConsentRecord::new(last).map(|record| record.status_at(at_ms))
    } else {
        let mut record =
            ConsentRecord::from_events(events).expect("every event but the last is legal");
        let before = record.clone();
        let checked = record.check(&last);
        let applied = record.apply(last);
        assert_eq!(checked, applied, "check and apply disagree");
        if applied.is_err() {
            assert_eq!(record, before, "a refused event changed the record");
        }
        applied.map(|()| record.status_at(at_ms))
    };
    if let Err(error) = &got {
        assert!(error.to_string().len() > 10, "unreadable error {error:?}");
    }
    assert_eq!(
        folded.map(|record| record.status_at(at_ms)),
        got,
        "from_events and apply disagree"
    );
    assert_eq!(got, want);
}

/// A consent with one grantor is requested until that grantor grants it, then given.
#[test]
fn single_grantor_requested_then_given() {
    let asked = Script::requested(terms(1));
    check(asked.events(), Ok(ConsentStatus::Requested));
    let granted = asked.granted(ALICE);
    check(granted.events(), Ok(ConsentStatus::Given));

    let record = granted.record();
    assert_eq!(record.given_at_ms(), Some(ASKED_AT + STEP_MS));
    assert_eq!(record.ended_at_ms(), None);
    assert!(record.missing_grantors().is_empty());
    assert_eq!(record.granted(), &BTreeSet::from([subject(ALICE)]));
    assert_eq!(record.next_seq(), 2);
}

/// A consent for a child is given only once both guardians have granted it,
/// in either order, in person or through a mandated person.
#[test]
fn two_guardians_must_both_grant() {
    let asked = Script::requested(guardians_terms(1));
    check(
        asked.clone().granted(MOTHER).events(),
        Ok(ConsentStatus::Requested),
    );
    check(
        asked.clone().granted(FATHER).events(),
        Ok(ConsentStatus::Requested),
    );
    check(
        asked.clone().granted(MOTHER).granted(FATHER).events(),
        Ok(ConsentStatus::Given),
    );
    check(
        asked.clone().granted(FATHER).granted(MOTHER).events(),
        Ok(ConsentStatus::Given),
    );
    let by_mandate = asked
        .clone()
        .granted(MOTHER)
        .then(EventKind::Granted(acting_for(
            LAWYER,
            FATHER,
            vec![consent_id(0xd1)],
        )));
    check(by_mandate.events(), Ok(ConsentStatus::Given));

    let half = asked.clone().granted(MOTHER).record();
    assert_eq!(half.missing_grantors(), vec![subject(FATHER)]);
    assert_eq!(half.given_at_ms(), None);
    let both = asked.granted(MOTHER).granted(FATHER).record();
    assert!(both.missing_grantors().is_empty());
    assert_eq!(both.given_at_ms(), Some(ASKED_AT + 2 * STEP_MS));
}

/// A refusal by any grantor ends the record, also after a co-grantor granted.
#[test]
fn refused() {
    check(
        Script::requested(terms(1)).refused(ALICE).events(),
        Ok(ConsentStatus::Refused),
    );
    let split = Script::requested(guardians_terms(1))
        .granted(MOTHER)
        .refused(FATHER);
    check(split.events(), Ok(ConsentStatus::Refused));
    assert_eq!(split.record().ended_at_ms(), Some(ASKED_AT + 2 * STEP_MS));
}

/// A given consent can be withdrawn, and so can one still awaiting a co-grantor.
#[test]
fn withdrawn() {
    let after_given = Script::requested(terms(1)).granted(ALICE).withdrawn(ALICE);
    check(after_given.events(), Ok(ConsentStatus::Withdrawn));
    assert_eq!(
        after_given.record().ended_at_ms(),
        Some(ASKED_AT + 2 * STEP_MS)
    );
    check(
        Script::requested(guardians_terms(1))
            .granted(MOTHER)
            .withdrawn(MOTHER)
            .events(),
        Ok(ConsentStatus::Withdrawn),
    );
    check(
        Script::requested(guardians_terms(1))
            .granted(MOTHER)
            .withdrawn(FATHER)
            .events(),
        Ok(ConsentStatus::Withdrawn),
    );
}

/// The consent authority can invalidate a requested or a given record.
#[test]
fn invalidated() {
    check(
        Script::requested(terms(1)).invalidated().events(),
        Ok(ConsentStatus::Invalidated),
    );
    check(
        Script::requested(terms(1))
            .granted(ALICE)
            .invalidated()
            .events(),
        Ok(ConsentStatus::Invalidated),
    );
}

/// Narrowing to a subset of the scope or purposes, or to a shorter window,
/// is accepted while requested or given and replaces the terms.
#[test]
fn narrowing_is_accepted() {
    let given = Script::requested(terms(1)).granted(ALICE);
    let narrower = [
        ConsentTerms {
            scope: vec![read(INCOME)],
            ..terms(1)
        },
        ConsentTerms {
            purposes: vec![purpose(EDUCATION)],
            ..terms(1)
        },
        ConsentTerms {
            not_after_ms: NOT_AFTER - DAY_MS,
            ..terms(1)
        },
        ConsentTerms {
            not_before_ms: NOT_BEFORE + DAY_MS,
            ..terms(1)
        },
        terms(1),
    ];
    for narrowed in narrower {
        let script = given.clone().narrowed(narrowed.clone());
        check(script.events(), Ok(ConsentStatus::Given));
        assert_eq!(script.record().terms(), &narrowed);
        check(
            Script::requested(terms(1))
                .narrowed(narrowed.clone())
                .events(),
            Ok(ConsentStatus::Requested),
        );
    }
    // An earlier end moves the expiry with it.
    let shorter = given
        .narrowed(ConsentTerms {
            not_after_ms: NOT_AFTER - DAY_MS,
            ..terms(1)
        })
        .record();
    assert_eq!(
        shorter.status_at(NOT_AFTER - DAY_MS - 1),
        ConsentStatus::Given
    );
    assert_eq!(
        shorter.status_at(NOT_AFTER - DAY_MS),
        ConsentStatus::Expired
    );
}

/// Transitions out of a final status are refused with `Terminal`, naming the
/// status and the attempted event.
#[test]
fn terminal_statuses_refuse_further_events() {
    let terminal = |status, event: &'static str| -> Result<ConsentStatus, TransitionError> {
        Err(TransitionError::Terminal { status, event })
    };
    let refused = Script::requested(terms(1)).refused(ALICE);
    let withdrawn = Script::requested(terms(1)).granted(ALICE).withdrawn(ALICE);
    let invalidated = Script::requested(terms(1)).granted(ALICE).invalidated();
    let table = [
        (
            refused.clone().withdrawn(ALICE),
            terminal(ConsentStatus::Refused, "withdrawn"),
        ),
        (
            refused.clone().granted(ALICE),
            terminal(ConsentStatus::Refused, "granted"),
        ),
        (
            refused.clone().invalidated(),
            terminal(ConsentStatus::Refused, "invalidated"),
        ),
        (
            withdrawn.clone().invalidated(),
            terminal(ConsentStatus::Withdrawn, "invalidated"),
        ),
        (
            withdrawn.clone().withdrawn(ALICE),
            terminal(ConsentStatus::Withdrawn, "withdrawn"),
        ),
        (
            withdrawn.clone().refused(ALICE),
            terminal(ConsentStatus::Withdrawn, "refused"),
        ),
        (
            withdrawn.clone().narrowed(terms(1)),
            terminal(ConsentStatus::Withdrawn, "narrowed"),
        ),
        (
            invalidated.clone().granted(ALICE),
            terminal(ConsentStatus::Invalidated, "granted"),
        ),
        (
            invalidated.withdrawn(ALICE),
            terminal(ConsentStatus::Invalidated, "withdrawn"),
        ),
        // A given consent cannot be refused afterwards; it can be withdrawn.
        (
            Script::requested(terms(1)).granted(ALICE).refused(ALICE),
            terminal(ConsentStatus::Given, "refused"),
        ),
        // The second guardian cannot revive what the first withdrew.
        (
            Script::requested(guardians_terms(1))
                .granted(MOTHER)
                .withdrawn(MOTHER)
                .granted(FATHER),
            terminal(ConsentStatus::Withdrawn, "granted"),
        ),
        (
            Script::requested(guardians_terms(1))
                .granted(MOTHER)
                .refused(FATHER)
                .granted(FATHER),
            terminal(ConsentStatus::Refused, "granted"),
        ),
    ];
    for (script, want) in table {
        check(script.events(), want);
    }
}

/// Grants and narrowings at or after `not_after` are refused with
/// `AfterExpiry`; a grant one millisecond earlier is accepted, and an expired
/// consent can no longer be withdrawn or refused.
#[test]
fn events_after_expiry() {
    let asked = Script::requested(terms(1));
    check(
        asked
            .clone()
            .then_at(NOT_AFTER - 1, EventKind::Granted(actor(ALICE)))
            .events(),
        Ok(ConsentStatus::Given),
    );
    check(
        asked
            .clone()
            .then_at(NOT_AFTER, EventKind::Granted(actor(ALICE)))
            .events(),
        Err(TransitionError::AfterExpiry {
            not_after_ms: NOT_AFTER,
            at_ms: NOT_AFTER,
        }),
    );
    let half = Script::requested(guardians_terms(1)).granted(MOTHER);
    check(
        half.then_at(NOT_AFTER + DAY_MS, EventKind::Granted(actor(FATHER)))
            .events(),
        Err(TransitionError::AfterExpiry {
            not_after_ms: NOT_AFTER,
            at_ms: NOT_AFTER + DAY_MS,
        }),
    );
    let given = asked.clone().granted(ALICE);
    check(
        given
            .clone()
            .then_at(NOT_AFTER, EventKind::Narrowed(terms(1)))
            .events(),
        Err(TransitionError::AfterExpiry {
            not_after_ms: NOT_AFTER,
            at_ms: NOT_AFTER,
        }),
    );
    check(
        given
            .then_at(NOT_AFTER, EventKind::Withdrawn(actor(ALICE)))
            .events(),
        Err(TransitionError::Terminal {
            status: ConsentStatus::Expired,
            event: "withdrawn",
        }),
    );
    check(
        asked
            .then_at(NOT_AFTER, EventKind::Refused(actor(ALICE)))
            .events(),
        Err(TransitionError::Terminal {
            status: ConsentStatus::Expired,
            event: "refused",
        }),
    );
}

/// Only grantors may grant, refuse or withdraw, and each grantor grants once.
#[test]
fn grantor_rules() {
    let asked = Script::requested(terms(1));
    let not_a_grantor: Result<ConsentStatus, TransitionError> =
        Err(TransitionError::NotAGrantor(subject(MALLORY)));
    check(
        asked.clone().granted(MALLORY).events(),
        not_a_grantor.clone(),
    );
    check(
        asked.clone().refused(MALLORY).events(),
        not_a_grantor.clone(),
    );
    check(
        asked.clone().granted(ALICE).withdrawn(MALLORY).events(),
        not_a_grantor.clone(),
    );
    // Alice acting for someone who is not a grantor fills no slot.
    check(
        asked
            .clone()
            .then(EventKind::Granted(acting_for(ALICE, MALLORY, Vec::new())))
            .events(),
        not_a_grantor,
    );
    // The subject of a guardians' consent is not one of its grantors.
    check(
        Script::requested(guardians_terms(1))
            .granted(CHILD)
            .events(),
        Err(TransitionError::NotAGrantor(subject(CHILD))),
    );

    let already = |who: &str| -> Result<ConsentStatus, TransitionError> {
        Err(TransitionError::AlreadyGranted(subject(who)))
    };
    check(asked.granted(ALICE).granted(ALICE).events(), already(ALICE));
    check(
        Script::requested(guardians_terms(1))
            .granted(MOTHER)
            .granted(MOTHER)
            .events(),
        already(MOTHER),
    );
    // A mandated person cannot fill a slot its grantor already filled.
    check(
        Script::requested(guardians_terms(1))
            .granted(MOTHER)
            .then(EventKind::Granted(acting_for(
                LAWYER,
                MOTHER,
                vec![consent_id(0xd1)],
            )))
            .events(),
        already(MOTHER),
    );
}

/// A narrowing that widens anything, or changes the parties, is refused with
/// `NotNarrowing`; one that breaks the terms' own rules with `Terms`.
#[test]
fn widening_is_refused() {
    let given = Script::requested(terms(1)).granted(ALICE);
    let wider = [
        ConsentTerms {
            scope: vec![read(INCOME), verify(LICENCE), read(SKILLS)],
            ..terms(1)
        },
        ConsentTerms {
            scope: vec![read(INCOME), read(LICENCE)],
            ..terms(1)
        },
        ConsentTerms {
            purposes: vec![
                purpose(SERVICE_PROVISION),
                purpose(EDUCATION),
                purpose(RESEARCH),
            ],
            ..terms(1)
        },
        ConsentTerms {
            purposes: vec![purpose(RESEARCH)],
            ..terms(1)
        },
        ConsentTerms {
            not_after_ms: NOT_AFTER + 1,
            ..terms(1)
        },
        ConsentTerms {
            not_before_ms: NOT_BEFORE - 1,
            ..terms(1)
        },
        ConsentTerms {
            audience: Audience::Service(service("se.stockholm/benefits")),
            ..terms(1)
        },
        ConsentTerms {
            source: operator("fi.espoo"),
            ..terms(1)
        },
        ConsentTerms {
            grantors: vec![subject(ALICE), subject(BOB)],
            ..terms(1)
        },
        ConsentTerms {
            lawful_basis: LawfulBasis::PublicTask,
            ..terms(1)
        },
        ConsentTerms {
            consent_id: consent_id(2),
            ..terms(1)
        },
    ];
    for terms in wider {
        check(
            given.clone().narrowed(terms).events(),
            Err(TransitionError::NotNarrowing),
        );
    }
    check(
        given
            .narrowed(ConsentTerms {
                scope: Vec::new(),
                ..terms(1)
            })
            .events(),
        Err(TransitionError::Terms(TermsError::Count {
            field: "scope",
            max: CONSENT_SCOPE_MAX,
            got: 0,
        })),
    );
}

/// Events out of order, recorded by another operator, for another record,
/// a second `Requested`, a log not starting with `Requested`, and a log
/// beyond [`CONSENT_EVENTS_MAX`] are refused with their own variants.
#[test]
fn malformed_logs_are_refused() {
    let asked = Script::requested(terms(1));
    let given = asked.clone().granted(ALICE);
    let table = [
        (
            given.clone().edit_last(|e| e.seq = 2),
            Err(TransitionError::OutOfOrder {
                expected: 1,
                got: 2,
            }),
        ),
        (
            given.clone().withdrawn(ALICE).edit_last(|e| e.seq = 1),
            Err(TransitionError::OutOfOrder {
                expected: 2,
                got: 1,
            }),
        ),
        (
            asked.clone().edit_last(|e| e.seq = 1),
            Err(TransitionError::OutOfOrder {
                expected: 0,
                got: 1,
            }),
        ),
        (
            given
                .clone()
                .edit_last(|e| e.recorder = operator(RECIPIENT)),
            Err(TransitionError::NotTheHome {
                home: operator(HOME),
                got: operator(RECIPIENT),
            }),
        ),
        (
            asked.clone().edit_last(|e| e.recorder = operator(SOURCE)),
            Err(TransitionError::NotTheHome {
                home: operator(HOME),
                got: operator(SOURCE),
            }),
        ),
        (
            given.clone().edit_last(|e| e.consent_id = consent_id(2)),
            Err(TransitionError::OtherRecord(consent_id(2))),
        ),
        (
            asked.clone().edit_last(|e| e.consent_id = consent_id(2)),
            Err(TransitionError::OtherRecord(consent_id(2))),
        ),
        (
            given.clone().then(EventKind::Requested(terms(1))),
            Err(TransitionError::NotFirst),
        ),
        (
            asked.clone().then(EventKind::Requested(terms(1))),
            Err(TransitionError::NotFirst),
        ),
        (
            Script {
                events: vec![event(
                    consent_id(1),
                    0,
                    ASKED_AT,
                    EventKind::Granted(actor(ALICE)),
                )],
            },
            Err(TransitionError::NotFirst),
        ),
        (
            Script::requested(ConsentTerms {
                purposes: Vec::new(),
                ..terms(1)
            }),
            Err(TransitionError::Terms(TermsError::Count {
                field: "purposes",
                max: CONSENT_PURPOSES_MAX,
                got: 0,
            })),
        ),
    ];
    for (script, want) in table {
        check(script.events(), want);
    }
    assert_eq!(
        ConsentRecord::from_events(Vec::new()),
        Err(TransitionError::NotFirst)
    );
}

/// A log holds at most [`CONSENT_EVENTS_MAX`] events: the last that fits is
/// accepted and the next is refused with `TooManyEvents`.
#[test]
fn too_many_events() {
    let mut full = Script::requested(terms(1));
    for _ in 1..CONSENT_EVENTS_MAX {
        full = full.narrowed(terms(1));
    }
    assert_eq!(full.events.len(), CONSENT_EVENTS_MAX);
    check(full.events(), Ok(ConsentStatus::Requested));
    check(
        full.clone().granted(ALICE).events(),
        Err(TransitionError::TooManyEvents),
    );
    check(
        full.invalidated().events(),
        Err(TransitionError::TooManyEvents),
    );
}

/// `status_at` turns requested and given records into `Expired` from
/// `not_after` on (exclusive end), and leaves ended records as they ended.
#[test]
fn status_at_expires_at_not_after() {
    let table = [
        (ConsentStatus::Given, ConsentStatus::Expired),
        (ConsentStatus::Requested, ConsentStatus::Expired),
        (ConsentStatus::Withdrawn, ConsentStatus::Withdrawn),
        (ConsentStatus::Refused, ConsentStatus::Refused),
        (ConsentStatus::Invalidated, ConsentStatus::Invalidated),
    ];
    for (status, later) in table {
        let record = record(terms(1), status);
        assert_eq!(record.status_at(0), status);
        assert_eq!(
            record.status_at(NOT_BEFORE - 1),
            status,
            "before the window"
        );
        assert_eq!(record.status_at(NOT_AFTER - 1), status);
        assert_eq!(
            record.status_at(NOT_AFTER),
            later,
            "{status:?} at not_after"
        );
        assert_eq!(record.status_at(u64::MAX), later);
        assert!(later.is_terminal());
    }
}

// ---------------------------------------------------------------------------
// Terms
// ---------------------------------------------------------------------------

/// Validates `terms` and compares with `want`; a record asked for with
/// invalid terms must be refused with the same error.
#[track_caller]
fn check_terms(terms: ConsentTerms, want: Result<(), TermsError>) {
    assert_eq!(terms.validate(), want);
    let asked = ConsentRecord::new(event(
        terms.consent_id,
        0,
        ASKED_AT,
        EventKind::Requested(terms),
    ));
    assert_eq!(asked.map(|_| ()), want.map_err(TransitionError::Terms));
}

/// Names of `n` distinct attributes.
fn attributes(n: usize) -> Vec<ScopeItem> {
    (0..n)
        .map(|i| read(&format!("catalogue.item_{i}")))
        .collect()
}

/// Every rule on terms is enforced with its own error.
#[test]
fn terms_rules() {
    check_terms(terms(1), Ok(()));
    check_terms(guardians_terms(1), Ok(()));
    check_terms(
        ConsentTerms {
            scope: attributes(CONSENT_SCOPE_MAX),
            ..terms(1)
        },
        Ok(()),
    );
    let count = |field: &'static str, max: usize, got: usize| -> Result<(), TermsError> {
        Err(TermsError::Count { field, max, got })
    };
    check_terms(
        ConsentTerms {
            scope: Vec::new(),
            ..terms(1)
        },
        count("scope", CONSENT_SCOPE_MAX, 0),
    );
    check_terms(
        ConsentTerms {
            scope: attributes(CONSENT_SCOPE_MAX + 1),
            ..terms(1)
        },
        count("scope", CONSENT_SCOPE_MAX, CONSENT_SCOPE_MAX + 1),
    );
    check_terms(
        ConsentTerms {
            grantors: Vec::new(),
            ..terms(1)
        },
        count("grantors", CONSENT_GRANTORS_MAX, 0),
    );
    check_terms(
        ConsentTerms {
            grantors: (0..=CONSENT_GRANTORS_MAX)
                .map(|i| subject(&format!("fi:guardian{i}")))
                .collect(),
            ..terms(1)
        },
        count("grantors", CONSENT_GRANTORS_MAX, CONSENT_GRANTORS_MAX + 1),
    );
    check_terms(
        ConsentTerms {
            purposes: (0..=CONSENT_PURPOSES_MAX)
                .map(|i| purpose(&format!("dpv:Purpose{i}")))
                .collect(),
            ..terms(1)
        },
        count("purposes", CONSENT_PURPOSES_MAX, CONSENT_PURPOSES_MAX + 1),
    );
    check_terms(
        ConsentTerms {
            purposes: vec![
                purpose(EDUCATION),
                purpose(SERVICE_PROVISION),
                purpose(EDUCATION),
            ],
            ..terms(1)
        },
        Err(TermsError::Duplicate("purposes")),
    );
    check_terms(
        ConsentTerms {
            scope: vec![read(INCOME), read(INCOME)],
            ..terms(1)
        },
        Err(TermsError::Duplicate("scope")),
    );
    check_terms(
        ConsentTerms {
            grantors: vec![subject(MOTHER), subject(MOTHER)],
            ..terms(1)
        },
        Err(TermsError::Duplicate("grantors")),
    );
    for (not_before_ms, not_after_ms) in [(NOW, NOW), (NOW, NOW - 1), (1, 0)] {
        check_terms(
            ConsentTerms {
                not_before_ms,
                not_after_ms,
                ..terms(1)
            },
            Err(TermsError::EmptyWindow {
                not_before_ms,
                not_after_ms,
            }),
        );
    }
    check_terms(
        ConsentTerms {
            not_before_ms: 0,
            not_after_ms: 1,
            ..terms(1)
        },
        Ok(()),
    );
    check_terms(
        ConsentTerms {
            purpose_text: "x".repeat(PURPOSE_TEXT_BYTES_MAX),
            ..terms(1)
        },
        Ok(()),
    );
    check_terms(
        ConsentTerms {
            purpose_text: "x".repeat(PURPOSE_TEXT_BYTES_MAX + 1),
            ..terms(1)
        },
        Err(TermsError::TextTooLong(PURPOSE_TEXT_BYTES_MAX + 1)),
    );
}

/// A consent names one service; an arrangement names a member or a sector
/// and is granted by its subject alone.
#[test]
fn audience_and_kind_rules() {
    check_terms(
        arrangement(1, Audience::Member(operator(RECIPIENT))),
        Ok(()),
    );
    check_terms(
        arrangement(1, Audience::Sector(sector("education"))),
        Ok(()),
    );
    let by_guardian = ConsentTerms {
        grantors: vec![subject(MOTHER)],
        ..arrangement(1, Audience::Sector(sector("education")))
    };
    check_terms(by_guardian, Err(TermsError::ArrangementGrantors));
    let shared = ConsentTerms {
        grantors: vec![subject(ALICE), subject(BOB)],
        ..arrangement(1, Audience::Member(operator(RECIPIENT)))
    };
    check_terms(shared, Err(TermsError::ArrangementGrantors));
    check_terms(
        ConsentTerms {
            audience: Audience::Sector(sector("education")),
            ..terms(1)
        },
        Err(TermsError::AudienceKind),
    );
    check_terms(
        ConsentTerms {
            audience: Audience::Member(operator(RECIPIENT)),
            ..terms(1)
        },
        Err(TermsError::AudienceKind),
    );
    check_terms(
        arrangement(1, Audience::Service(service(SERVICE))),
        Err(TermsError::AudienceKind),
    );
}

/// Names are validated at construction: attributes are dotted lowercase,
/// purposes CURIEs, services `operator/name`.
#[test]
fn names_are_validated() {
    assert!(Attribute::new("income.gross_monthly").is_ok());
    let long = "a".repeat(129);
    for bad in [
        "",
        "Income",
        "income..gross",
        "income.",
        "income gross",
        long.as_str(),
    ] {
        assert!(Attribute::new(bad).is_err(), "attribute {bad:?}");
    }
    assert!(Purpose::new("dpv:ServiceProvision").is_ok());
    for bad in [
        "ServiceProvision",
        "dpv:",
        ":Term",
        "DPV:Term",
        "dpv:Service Provision",
    ] {
        assert!(Purpose::new(bad).is_err(), "purpose {bad:?}");
    }
    let daycare = service(SERVICE);
    assert_eq!(daycare.operator(), &operator(RECIPIENT));
    for bad in [
        "se.stockholm",
        "se.stockholm/",
        "/daycare",
        "se.stockholm/Daycare",
    ] {
        assert!(ServiceId::new(bad).is_err(), "service {bad:?}");
    }
    assert!(SubjectId::new("fi:with space").is_err());
    assert!(Sector::new("Education").is_err());
}

// ---------------------------------------------------------------------------
// Signed logs
// ---------------------------------------------------------------------------

/// Signs each event with `key`.
fn signed_log(events: &[ConsentEvent], key: &SecretKey) -> ConsentLog {
    ConsentLog {
        consent_id: events[0].consent_id,
        events: events.iter().map(|event| event.sign(key)).collect(),
    }
}

/// A `BadSignature` for event `seq` whose reason contains `reason`.
fn bad(seq: u32, reason: &str) -> TransitionError {
    TransitionError::BadSignature {
        seq,
        reason: reason.to_owned(),
    }
}

/// Verifies `log` against `trust` and compares the outcome (the status at
/// [`NOW`]) with `want`; for `BadSignature`, the wanted reason is a part of
/// the reason given.
#[track_caller]
fn check_log(
    log: &ConsentLog,
    trust: &VerifiedTrustList,
    want: Result<ConsentStatus, TransitionError>,
) {
    let got = log.verify(trust);
    match (&got, &want) {
        (
            Err(TransitionError::BadSignature { seq, reason }),
            Err(TransitionError::BadSignature {
                seq: want_seq,
                reason: want_reason,
            }),
        ) => {
            assert_eq!(seq, want_seq, "{reason}");
            assert!(
                reason.contains(want_reason.as_str()),
                "{reason:?} does not say {want_reason:?}"
            );
        }
        _ => assert_eq!(got.map(|record| record.status_at(NOW)), want),
    }
}

/// A log signed by the home operator's key verifies and folds into the same
/// record as its events.
#[test]
fn signed_log_verifies() {
    let fx = Fixture::new();
    let script = Script::requested(guardians_terms(1))
        .granted(MOTHER)
        .granted(FATHER)
        .withdrawn(FATHER);
    let log = signed_log(&script.events, &fx.helsinki.key);
    check_log(&log, &fx.trust, Ok(ConsentStatus::Withdrawn));
    assert_eq!(log.verify(&fx.trust).unwrap(), script.record());
    let given = Script::requested(terms(1)).granted(ALICE);
    check_log(
        &signed_log(&given.events, &fx.helsinki.key),
        &fx.trust,
        Ok(ConsentStatus::Given),
    );
}

/// A changed event body, a changed signature, a key that is not the
/// recorder's, a recorder that is no member, and a signature under another
/// domain are all refused with `BadSignature` for the event concerned.
#[test]
fn tampered_or_foreign_signatures_are_refused() {
    let fx = Fixture::new();
    let script = Script::requested(terms(1)).granted(ALICE).withdrawn(ALICE);
    let good = signed_log(&script.events, &fx.helsinki.key);

    // The withdrawal's time moved back, with the original signature kept.
    let mut moved = good.clone();
    let mut earlier = script.events[2].clone();
    earlier.at_ms -= 1;
    moved.events[2].body = wire::encode_consent_event(&earlier);
    check_log(&moved, &fx.trust, Err(bad(2, "does not verify")));

    // The grant turned into a refusal, with the original signature kept.
    let mut turned = good.clone();
    let mut refusal = script.events[1].clone();
    refusal.kind = EventKind::Refused(actor(ALICE));
    turned.events[1].body = wire::encode_consent_event(&refusal);
    check_log(&turned, &fx.trust, Err(bad(1, "does not verify")));

    let mut flipped = good.clone();
    flipped.events[0].signature[10] ^= 0x01;
    check_log(&flipped, &fx.trust, Err(bad(0, "does not verify")));

    // Signed by a key that is in no member's entry.
    let outsider = secret(0x55);
    let mut foreign = good.clone();
    foreign.events[1] = script.events[1].sign(&outsider);
    check_log(&foreign, &fx.trust, Err(bad(1, "is not one of")));

    // Signed by another member's key, in the home operator's name.
    check_log(
        &signed_log(&script.events, &fx.stockholm.key),
        &fx.trust,
        Err(bad(0, "is not one of")),
    );

    // Signed with the right key but under the envelope domain.
    let mut other_domain = good.clone();
    other_domain.events[1].signature = fx
        .helsinki
        .key
        .sign(ENVELOPE_DOMAIN, &good.events[1].body)
        .to_vec();
    check_log(&other_domain, &fx.trust, Err(bad(1, "does not verify")));
    assert!(fx.helsinki.key.public().verify(
        CONSENT_EVENT_DOMAIN,
        &good.events[1].body,
        &good.events[1].signature
    ));

    // The home operator is not a member at all.
    let stranger = "de.berlin";
    let stranger_terms = ConsentTerms {
        home: operator(stranger),
        ..terms(1)
    };
    let mut events = Script::requested(stranger_terms).events();
    events[0].recorder = operator(stranger);
    check_log(
        &signed_log(&events, &outsider),
        &fx.trust,
        Err(bad(0, "not a member")),
    );

    check_log(&good, &fx.trust, Ok(ConsentStatus::Withdrawn));
}

/// A member key signs only within its validity window, judged at each
/// event's `at_ms`: events before its start or from its end on are refused,
/// and after a rotation each event verifies under the key valid at its time.
#[test]
fn member_key_outside_its_window_is_refused() {
    let script = Script::requested(terms(1)).granted(ALICE).withdrawn(ALICE);
    let home = operator(HOME);
    // The grant is at ASKED_AT + STEP_MS, the withdrawal at ASKED_AT + 2 * STEP_MS.
    let rotation_at = ASKED_AT + 2 * STEP_MS;

    let ended = Fixture::with_list(|list| {
        member_mut(list, &home).keys[0].not_after_ms = Some(rotation_at);
    });
    check_log(
        &signed_log(&script.events, &ended.helsinki.key),
        &ended.trust,
        Err(bad(2, "was not valid")),
    );
    let one_ms_more = Fixture::with_list(|list| {
        member_mut(list, &home).keys[0].not_after_ms = Some(rotation_at + 1);
    });
    check_log(
        &signed_log(&script.events, &one_ms_more.helsinki.key),
        &one_ms_more.trust,
        Ok(ConsentStatus::Withdrawn),
    );
    let late = Fixture::with_list(|list| {
        member_mut(list, &home).keys[0].not_before_ms = ASKED_AT + 1;
    });
    check_log(
        &signed_log(&script.events, &late.helsinki.key),
        &late.trust,
        Err(bad(0, "was not valid")),
    );

    let new_key = secret(0x44);
    let rotated = Fixture::with_list(|list| {
        let member = member_mut(list, &home);
        member.keys[0].not_after_ms = Some(rotation_at);
        member.keys.push(MemberKey {
            public_key: new_key.public(),
            not_before_ms: rotation_at,
            not_after_ms: None,
        });
    });
    let mut log = signed_log(&script.events, &rotated.helsinki.key);
    check_log(&log, &rotated.trust, Err(bad(2, "was not valid")));
    log.events[2] = script.events[2].sign(&new_key);
    check_log(&log, &rotated.trust, Ok(ConsentStatus::Withdrawn));
    log.events[1] = script.events[1].sign(&new_key);
    check_log(&log, &rotated.trust, Err(bad(1, "was not valid")));
}

/// A verified log must be legal, name the record it carries, fit in
/// [`CONSENT_EVENTS_MAX`] events, and hold bodies that decode.
#[test]
fn signed_log_rules() {
    let fx = Fixture::new();
    let key = &fx.helsinki.key;
    let twice = Script::requested(terms(1)).granted(ALICE).granted(ALICE);
    check_log(
        &signed_log(&twice.events, key),
        &fx.trust,
        Err(TransitionError::AlreadyGranted(subject(ALICE))),
    );

    let mut relabelled = signed_log(&Script::requested(terms(1)).events, key);
    relabelled.consent_id = consent_id(9);
    check_log(
        &relabelled,
        &fx.trust,
        Err(TransitionError::OtherRecord(consent_id(1))),
    );

    let mut long = Script::requested(terms(1));
    for _ in 0..CONSENT_EVENTS_MAX {
        long = long.narrowed(terms(1));
    }
    check_log(
        &signed_log(&long.events, key),
        &fx.trust,
        Err(TransitionError::TooManyEvents),
    );

    let empty = ConsentLog {
        consent_id: consent_id(1),
        events: Vec::new(),
    };
    check_log(&empty, &fx.trust, Err(TransitionError::NotFirst));

    let body = b"not a consent event".to_vec();
    let garbage = ConsentLog {
        consent_id: consent_id(1),
        events: vec![SignedEvent {
            signature: key.sign(CONSENT_EVENT_DOMAIN, &body).to_vec(),
            key_id: key.public().key_id(),
            body,
        }],
    };
    assert!(matches!(
        garbage.verify(&fx.trust),
        Err(TransitionError::Malformed(_))
    ));
}

// ---------------------------------------------------------------------------
// Wire
// ---------------------------------------------------------------------------

/// Encodes and decodes `event` (and its terms, if any) and expects them back unchanged.
#[track_caller]
fn check_wire(event: &ConsentEvent) {
    let body = wire::encode_consent_event(event);
    assert_eq!(wire::decode_consent_event(&body).as_ref(), Ok(event));
    if let EventKind::Requested(terms) | EventKind::Narrowed(terms) = &event.kind {
        assert_eq!(
            wire::terms_from_pb(wire::terms_to_pb(terms)).as_ref(),
            Ok(terms)
        );
    }
}

/// Every event kind, every audience, both actions and every lawful basis
/// survive encoding and decoding.
#[test]
fn wire_round_trip_preserves_every_event_kind() {
    let id = consent_id(1);
    let bases = [
        LawfulBasis::Consent,
        LawfulBasis::Contract,
        LawfulBasis::LegalObligation,
        LawfulBasis::VitalInterest,
        LawfulBasis::PublicTask,
        LawfulBasis::LegitimateInterest,
    ];
    for lawful_basis in bases {
        check_wire(&event(
            id,
            0,
            ASKED_AT,
            EventKind::Requested(ConsentTerms {
                lawful_basis,
                ..terms(1)
            }),
        ));
    }
    let kinds = [
        EventKind::Requested(guardians_terms(1)),
        EventKind::Requested(arrangement(1, Audience::Member(operator(RECIPIENT)))),
        EventKind::Requested(arrangement(1, Audience::Sector(sector("education")))),
        EventKind::Requested(ConsentTerms {
            purpose_text: String::new(),
            ..terms(1)
        }),
        EventKind::Requested(ConsentTerms {
            purpose_text: "Päivähoitomaksu – ✓".to_owned(),
            scope: vec![verify(INCOME), read(INCOME)],
            ..terms(1)
        }),
        EventKind::Granted(actor(ALICE)),
        EventKind::Granted(acting_for(
            LAWYER,
            FATHER,
            vec![consent_id(0xd1), consent_id(0xd2)],
        )),
        EventKind::Refused(actor(MOTHER)),
        EventKind::Narrowed(ConsentTerms {
            scope: vec![read(INCOME)],
            not_after_ms: NOT_AFTER - 1,
            ..terms(1)
        }),
        EventKind::Withdrawn(acting_for(MOTHER, CHILD, vec![consent_id(0xd3)])),
        EventKind::Invalidated {
            reason: "identity misuse reported".to_owned(),
        },
        EventKind::Invalidated {
            reason: String::new(),
        },
    ];
    for (seq, kind) in (0u32..).zip(kinds) {
        check_wire(&event(id, seq, u64::MAX - u64::from(seq), kind));
    }
}

/// Decoding refuses events that could not have been produced by a valid
/// record: invalid terms, a delegation chain deeper than the limit, no kind.
#[test]
fn wire_refuses_invalid_events() {
    let invalid_terms = event(
        consent_id(1),
        0,
        ASKED_AT,
        EventKind::Requested(ConsentTerms {
            not_after_ms: NOT_BEFORE,
            ..terms(1)
        }),
    );
    assert!(wire::decode_consent_event(&wire::encode_consent_event(&invalid_terms)).is_err());
    let deep = event(
        consent_id(1),
        1,
        ASKED_AT,
        EventKind::Granted(acting_for(
            MALLORY,
            ALICE,
            vec![consent_id(1), consent_id(2), consent_id(3)],
        )),
    );
    assert!(wire::decode_consent_event(&wire::encode_consent_event(&deep)).is_err());
    assert!(wire::decode_consent_event(&[]).is_err(), "no kind");
    let mut pb_terms = wire::terms_to_pb(&terms(1));
    pb_terms.audience_sector = "education".to_owned();
    assert!(
        wire::terms_from_pb(pb_terms).is_err(),
        "two audiences at once"
    );
}

// ---------------------------------------------------------------------------
// Decisions
// ---------------------------------------------------------------------------

/// A request to the index, owning what [`Query`] borrows. By default
/// [`SERVICE`] asks to read Alice's income from [`SOURCE`] for service
/// provision, a day into the default window.
#[derive(Clone, Debug)]
struct Ask {
    subject: SubjectId,
    operator: OperatorId,
    service: ServiceId,
    sectors: Vec<Sector>,
    source: OperatorId,
    attribute: Attribute,
    action: Action,
    purpose: Purpose,
    at_ms: u64,
}

impl Ask {
    fn new() -> Self {
        Self {
            subject: subject(ALICE),
            operator: operator(RECIPIENT),
            service: service(SERVICE),
            sectors: Vec::new(),
            source: operator(SOURCE),
            attribute: attribute(INCOME),
            action: Action::Read,
            purpose: purpose(SERVICE_PROVISION),
            at_ms: NOW + DAY_MS,
        }
    }

    fn query(&self) -> Query<'_> {
        Query {
            subject: &self.subject,
            operator: &self.operator,
            service: &self.service,
            sectors: &self.sectors,
            source: &self.source,
            attribute: &self.attribute,
            action: self.action,
            purpose: &self.purpose,
            at_ms: self.at_ms,
        }
    }

    fn at(self, at_ms: u64) -> Self {
        Self { at_ms, ..self }
    }

    fn subject(self, name: &str) -> Self {
        Self {
            subject: subject(name),
            ..self
        }
    }

    /// Asked by `service`, run by its own operator.
    fn by(self, id: &str) -> Self {
        let service = service(id);
        Self {
            operator: service.operator().clone(),
            service,
            ..self
        }
    }

    fn sectors(self, labels: &[&str]) -> Self {
        Self {
            sectors: labels.iter().map(|label| sector(label)).collect(),
            ..self
        }
    }

    fn attribute(self, name: &str, action: Action) -> Self {
        Self {
            attribute: attribute(name),
            action,
            ..self
        }
    }

    fn purpose(self, term: &str) -> Self {
        Self {
            purpose: purpose(term),
            ..self
        }
    }
}

/// Asks `index`, which holds exactly `records`, and the naive scan over
/// `records`, and expects `want` from both.
#[track_caller]
fn check_decide_in(index: &Index, records: &[ConsentRecord], ask: &Ask, want: &Decision) {
    assert_eq!(index.len(), records.len());
    let query = ask.query();
    assert_eq!(&decide_naive(records, &query), want, "naive scan");
    assert_eq!(&index.decide(&query), want, "index");
}

/// Indexes `records` and expects `want` for `ask` from the index and the naive scan.
#[track_caller]
fn check_decide(records: &[ConsentRecord], ask: &Ask, want: Decision) {
    let mut index = Index::new();
    for record in records {
        index.upsert(record);
    }
    check_decide_in(&index, records, ask, &want);
}

fn allow(n: u8) -> Decision {
    Decision::Allow {
        consent_id: consent_id(n),
    }
}

fn deny(reason: DenyReason) -> Decision {
    Decision::Deny(reason)
}

/// A given consent allows exactly what it names, and an empty index allows nothing.
#[test]
fn decide_allows_what_is_given() {
    let given = [record(terms(1), ConsentStatus::Given)];
    check_decide(&given, &Ask::new(), allow(1));
    check_decide(&given, &Ask::new().purpose(EDUCATION), allow(1));
    check_decide(
        &given,
        &Ask::new().attribute(LICENCE, Action::Verify),
        allow(1),
    );
    check_decide(&[], &Ask::new(), deny(DenyReason::NoConsent));
    let two = [
        record(terms(1), ConsentStatus::Given),
        record(guardians_terms(2), ConsentStatus::Given),
    ];
    check_decide(&two, &Ask::new().subject(CHILD), allow(2));
}

/// Each deny reason arises from its own cause.
#[test]
fn decide_denies_with_each_reason() {
    let given = || record(terms(1), ConsentStatus::Given);
    let id = consent_id(1);
    let no_consent = deny(DenyReason::NoConsent);
    let table = [
        // Another subject, service, operator or source: nothing for that recipient.
        (vec![given()], Ask::new().subject(BOB), no_consent.clone()),
        (
            vec![given()],
            Ask::new().by("se.stockholm/benefits"),
            no_consent.clone(),
        ),
        (
            vec![given()],
            Ask {
                operator: operator(SOURCE),
                ..Ask::new()
            },
            no_consent.clone(),
        ),
        (
            vec![given()],
            Ask {
                source: operator("fi.espoo"),
                ..Ask::new()
            },
            no_consent,
        ),
        (
            vec![given()],
            Ask::new().attribute(SKILLS, Action::Read),
            deny(DenyReason::AttributeNotCovered),
        ),
        (
            vec![given()],
            Ask::new().purpose(RESEARCH),
            deny(DenyReason::PurposeNotCovered { consent_id: id }),
        ),
        (
            vec![given()],
            Ask::new().at(NOT_BEFORE - 1),
            deny(DenyReason::NotYetValid {
                consent_id: id,
                not_before_ms: NOT_BEFORE,
            }),
        ),
        (vec![given()], Ask::new().at(NOT_BEFORE), allow(1)),
        (
            vec![record(terms(1), ConsentStatus::Requested)],
            Ask::new(),
            deny(DenyReason::AwaitingGrantors {
                consent_id: id,
                missing: 1,
            }),
        ),
        (
            vec![record(guardians_terms(1), ConsentStatus::Requested)],
            Ask::new().subject(CHILD),
            deny(DenyReason::AwaitingGrantors {
                consent_id: id,
                missing: 2,
            }),
        ),
        (
            vec![Script::requested(guardians_terms(1))
                .granted(FATHER)
                .record()],
            Ask::new().subject(CHILD),
            deny(DenyReason::AwaitingGrantors {
                consent_id: id,
                missing: 1,
            }),
        ),
        (vec![given()], Ask::new().at(NOT_AFTER - 1), allow(1)),
        (
            vec![given()],
            Ask::new().at(NOT_AFTER),
            deny(DenyReason::Expired {
                consent_id: id,
                not_after_ms: NOT_AFTER,
            }),
        ),
        (
            vec![record(terms(1), ConsentStatus::Requested)],
            Ask::new().at(NOT_AFTER),
            deny(DenyReason::Expired {
                consent_id: id,
                not_after_ms: NOT_AFTER,
            }),
        ),
        (
            vec![record(terms(1), ConsentStatus::Withdrawn)],
            Ask::new(),
            deny(DenyReason::Withdrawn { consent_id: id }),
        ),
        (
            vec![record(terms(1), ConsentStatus::Withdrawn)],
            Ask::new().at(NOT_AFTER),
            deny(DenyReason::Withdrawn { consent_id: id }),
        ),
        (
            vec![record(terms(1), ConsentStatus::Refused)],
            Ask::new(),
            deny(DenyReason::Refused { consent_id: id }),
        ),
        (
            vec![record(terms(1), ConsentStatus::Invalidated)],
            Ask::new(),
            deny(DenyReason::Invalidated { consent_id: id }),
        ),
    ];
    for (records, ask, want) in table {
        check_decide(&records, &ask, want);
    }
}

/// A narrowing takes effect in decisions: a dropped attribute or purpose is
/// no longer covered and an earlier end expires the consent at that instant.
#[test]
fn decide_follows_narrowing() {
    let end = NOT_AFTER - 10 * DAY_MS;
    let narrowed = Script::requested(terms(1))
        .granted(ALICE)
        .narrowed(ConsentTerms {
            scope: vec![verify(LICENCE)],
            purposes: vec![purpose(EDUCATION)],
            not_after_ms: end,
            ..terms(1)
        })
        .record();
    let records = [narrowed];
    check_decide(&records, &Ask::new(), deny(DenyReason::AttributeNotCovered));
    let licence = Ask::new().attribute(LICENCE, Action::Verify);
    check_decide(
        &records,
        &licence,
        deny(DenyReason::PurposeNotCovered {
            consent_id: consent_id(1),
        }),
    );
    let licence = licence.purpose(EDUCATION);
    check_decide(&records, &licence.clone().at(end - 1), allow(1));
    check_decide(
        &records,
        &licence.at(end),
        deny(DenyReason::Expired {
            consent_id: consent_id(1),
            not_after_ms: end,
        }),
    );
}

/// Permission to read covers a request to verify, but permission to verify
/// does not cover a request to read.
#[test]
fn read_covers_verify_but_not_the_reverse() {
    let records = [record(terms(1), ConsentStatus::Given)];
    check_decide(
        &records,
        &Ask::new().attribute(INCOME, Action::Verify),
        allow(1),
    );
    check_decide(
        &records,
        &Ask::new().attribute(LICENCE, Action::Read),
        deny(DenyReason::AttributeNotCovered),
    );
    check_decide(
        &records,
        &Ask::new().attribute(LICENCE, Action::Verify),
        allow(1),
    );
    assert!(Action::Read.covers(Action::Verify));
    assert!(!Action::Verify.covers(Action::Read));
}

/// An arrangement for a member admits every service of that member and no
/// other member, even one running a service of the same name.
#[test]
fn arrangement_for_a_member() {
    let records = [record(
        arrangement(1, Audience::Member(operator(RECIPIENT))),
        ConsentStatus::Given,
    )];
    let skills = Ask::new()
        .attribute(SKILLS, Action::Read)
        .purpose(EDUCATION);
    check_decide(&records, &skills.clone().by(SERVICE), allow(1));
    check_decide(
        &records,
        &skills.clone().by("se.stockholm/adult-education"),
        allow(1),
    );
    check_decide(
        &records,
        &skills.clone().by("fi.espoo/early-education"),
        deny(DenyReason::NoConsent),
    );
    check_decide(
        &records,
        &skills.clone().by(SERVICE).purpose(SERVICE_PROVISION),
        deny(DenyReason::PurposeNotCovered {
            consent_id: consent_id(1),
        }),
    );
    check_decide(
        &records,
        &Ask::new().purpose(EDUCATION),
        deny(DenyReason::AttributeNotCovered),
    );
    let requested = [record(
        arrangement(1, Audience::Member(operator(RECIPIENT))),
        ConsentStatus::Requested,
    )];
    check_decide(
        &requested,
        &skills.by(SERVICE),
        deny(DenyReason::AwaitingGrantors {
            consent_id: consent_id(1),
            missing: 1,
        }),
    );
}

/// An arrangement for a sector admits any member carrying the label in the
/// trust list, whatever service asks, and nobody without it.
#[test]
fn arrangement_for_a_sector() {
    let records = [record(
        arrangement(1, Audience::Sector(sector("education"))),
        ConsentStatus::Given,
    )];
    let skills = Ask::new()
        .attribute(SKILLS, Action::Read)
        .purpose(EDUCATION);
    check_decide(
        &records,
        &skills.clone().by("fi.espoo/school").sectors(&["education"]),
        allow(1),
    );
    check_decide(
        &records,
        &skills.clone().sectors(&["health", "education"]),
        allow(1),
    );
    check_decide(
        &records,
        &skills.clone().sectors(&["health"]),
        deny(DenyReason::NoConsent),
    );
    check_decide(&records, &skills.clone(), deny(DenyReason::NoConsent));
    check_decide(
        &records,
        &skills.sectors(&["education"]).at(NOT_AFTER),
        deny(DenyReason::Expired {
            consent_id: consent_id(1),
            not_after_ms: NOT_AFTER,
        }),
    );
}

/// With several records, any allow wins (the lowest id among allows), and
/// among denials the reason closest to an allow wins: purpose, not yet
/// valid, awaiting grantors, expired, withdrawn, refused, invalidated,
/// attribute not covered, no consent. Removing records one by one walks
/// down that order, in the index as in the naive scan.
#[test]
fn most_specific_reason_wins_and_remove_forgets() {
    let later = NOW + 2 * DAY_MS;
    let ask = Ask::new();
    let mut records = vec![
        record(
            ConsentTerms {
                purposes: vec![purpose(EDUCATION)],
                ..terms(1)
            },
            ConsentStatus::Given,
        ),
        record(
            ConsentTerms {
                not_before_ms: later,
                ..terms(2)
            },
            ConsentStatus::Given,
        ),
        record(terms(3), ConsentStatus::Requested),
        record(
            ConsentTerms {
                not_after_ms: ask.at_ms,
                ..terms(4)
            },
            ConsentStatus::Given,
        ),
        record(terms(5), ConsentStatus::Withdrawn),
        record(terms(6), ConsentStatus::Refused),
        record(terms(7), ConsentStatus::Invalidated),
        record(
            ConsentTerms {
                scope: vec![read(SKILLS)],
                ..terms(8)
            },
            ConsentStatus::Given,
        ),
    ];
    let walk = [
        deny(DenyReason::PurposeNotCovered {
            consent_id: consent_id(1),
        }),
        deny(DenyReason::NotYetValid {
            consent_id: consent_id(2),
            not_before_ms: later,
        }),
        deny(DenyReason::AwaitingGrantors {
            consent_id: consent_id(3),
            missing: 1,
        }),
        deny(DenyReason::Expired {
            consent_id: consent_id(4),
            not_after_ms: ask.at_ms,
        }),
        deny(DenyReason::Withdrawn {
            consent_id: consent_id(5),
        }),
        deny(DenyReason::Refused {
            consent_id: consent_id(6),
        }),
        deny(DenyReason::Invalidated {
            consent_id: consent_id(7),
        }),
        deny(DenyReason::AttributeNotCovered),
    ];
    let mut index = Index::new();
    // Upsert in reverse so that the index's order is not the ranking's.
    for record in records.iter().rev() {
        index.upsert(record);
    }
    let mut allowed = records.clone();
    allowed.push(record(terms(9), ConsentStatus::Given));
    allowed.push(record(terms(10), ConsentStatus::Given));
    check_decide(&allowed, &ask, allow(9));

    for want in walk {
        check_decide_in(&index, &records, &ask, &want);
        let first = records.remove(0);
        index.remove(first.id());
    }
    check_decide_in(&index, &records, &ask, &deny(DenyReason::NoConsent));
    assert!(index.is_empty());

    // Among equally specific denials, the lowest id is named.
    let withdrawn = [
        record(terms(7), ConsentStatus::Withdrawn),
        record(terms(3), ConsentStatus::Withdrawn),
        record(terms(5), ConsentStatus::Withdrawn),
    ];
    check_decide(
        &withdrawn,
        &ask,
        deny(DenyReason::Withdrawn {
            consent_id: consent_id(3),
        }),
    );
}

/// `upsert` replaces a record's previous version, `remove` forgets it (and
/// ignores unknown ids), and other records of the subject stay.
#[test]
fn upsert_replaces_and_remove_forgets() {
    let mut index = Index::new();
    let given = record(terms(1), ConsentStatus::Given);
    let other = record(
        ConsentTerms {
            scope: vec![read(LICENCE)],
            ..terms(2)
        },
        ConsentStatus::Given,
    );
    index.upsert(&given);
    index.upsert(&other);
    index.upsert(&given);
    check_decide_in(
        &index,
        &[given.clone(), other.clone()],
        &Ask::new(),
        &allow(1),
    );

    let withdrawn = record(terms(1), ConsentStatus::Withdrawn);
    index.upsert(&withdrawn);
    let records = [withdrawn, other.clone()];
    check_decide_in(
        &index,
        &records,
        &Ask::new(),
        &deny(DenyReason::Withdrawn {
            consent_id: consent_id(1),
        }),
    );

    index.remove(consent_id(1));
    index.remove(consent_id(1));
    index.remove(consent_id(42));
    let records = [other];
    check_decide_in(
        &index,
        &records,
        &Ask::new(),
        &deny(DenyReason::AttributeNotCovered),
    );
    check_decide_in(
        &index,
        &records,
        &Ask::new().attribute(LICENCE, Action::Verify),
        &allow(2),
    );
    index.remove(consent_id(2));
    check_decide_in(&index, &[], &Ask::new(), &deny(DenyReason::NoConsent));
    assert!(index.is_empty());
}

// ---------------------------------------------------------------------------
// Property tests: the index against the naive scan
// ---------------------------------------------------------------------------

const POOL_SUBJECTS: [&str; 3] = ["fi:alice", "fi:bob", "fi:child"];
/// The queries also ask about a subject that no record names.
const POOL_QUERY_SUBJECTS: [&str; 4] = ["fi:alice", "fi:bob", "fi:child", "fi:nobody"];
const POOL_GUARDIANS: [&str; 2] = [MOTHER, FATHER];
const POOL_OPERATORS: [&str; 3] = ["se.stockholm", "fr.iledefrance", "fi.espoo"];
const POOL_SERVICE_NAMES: [&str; 2] = ["daycare", "benefits"];
const POOL_SOURCES: [&str; 2] = ["fi.incomeregister", "fi.skills"];
const POOL_SECTORS: [&str; 2] = ["education", "health"];
const POOL_ATTRIBUTES: [&str; 4] = [INCOME, LICENCE, SKILLS, "housing.rent_monthly"];
const POOL_PURPOSES: [&str; 3] = [SERVICE_PROVISION, EDUCATION, RESEARCH];
/// Windows that overlap and start before and after [`NOW`].
const POOL_WINDOWS: [(u64, u64); 3] = [
    (NOW, NOW + 100),
    (NOW + 50, NOW + 200),
    (NOW - 1000, NOW + 60),
];
/// When events happen: before, inside and after the windows.
const POOL_EVENT_TIMES: [u64; 6] = [
    NOW - 2000,
    NOW - 10,
    NOW + 20,
    NOW + 70,
    NOW + 150,
    NOW + 250,
];
/// When queries are asked: every window edge, one either side, and the extremes.
const POOL_QUERY_TIMES: [u64; 17] = [
    0,
    NOW - 1001,
    NOW - 1000,
    NOW - 999,
    NOW - 1,
    NOW,
    NOW + 1,
    NOW + 49,
    NOW + 50,
    NOW + 59,
    NOW + 60,
    NOW + 99,
    NOW + 100,
    NOW + 101,
    NOW + 199,
    NOW + 200,
    u64::MAX,
];

/// Who a generated record is for.
#[derive(Clone, Copy, Debug)]
enum AudienceSpec {
    Service { operator: usize, name: usize },
    Member(usize),
    Sector(usize),
}

/// One generated event; `who` picks a grantor slot (past the grantors: an outsider).
#[derive(Clone, Copy, Debug)]
enum EventSpec {
    Grant {
        who: usize,
        at: usize,
    },
    Refuse {
        who: usize,
        at: usize,
    },
    Withdraw {
        who: usize,
        at: usize,
    },
    Invalidate {
        at: usize,
    },
    Narrow {
        scope_mask: u8,
        purpose_mask: u8,
        end_cut_ms: u64,
        start_push_ms: u64,
        at: usize,
    },
}

/// One generated record, and what happens to it after the first check.
#[derive(Clone, Debug)]
struct RecordSpec {
    subject: usize,
    guardians: bool,
    audience: AudienceSpec,
    source: usize,
    scope: Vec<(usize, bool)>,
    purpose_mask: u8,
    window: usize,
    events: Vec<EventSpec>,
    removed: bool,
    update: Option<Vec<EventSpec>>,
}

/// One generated query.
#[derive(Clone, Copy, Debug)]
struct AskSpec {
    subject: usize,
    operator: usize,
    /// Run by `operator`, or (when set) another operator's service it claims.
    service_of: Option<usize>,
    service_name: usize,
    sector_mask: u8,
    source: usize,
    attribute: usize,
    read: bool,
    purpose: usize,
    at: usize,
}

fn event_spec() -> impl Strategy<Value = EventSpec> {
    let at = 0..POOL_EVENT_TIMES.len();
    prop_oneof![
        4 => (0..3usize, at.clone()).prop_map(|(who, at)| EventSpec::Grant { who, at }),
        1 => (0..3usize, at.clone()).prop_map(|(who, at)| EventSpec::Refuse { who, at }),
        1 => (0..3usize, at.clone()).prop_map(|(who, at)| EventSpec::Withdraw { who, at }),
        1 => at.clone().prop_map(|at| EventSpec::Invalidate { at }),
        2 => (any::<u8>(), any::<u8>(), prop::sample::select(vec![0u64, 10, 40, 150]),
              prop::sample::select(vec![0u64, 5, 60]), at)
            .prop_map(|(scope_mask, purpose_mask, end_cut_ms, start_push_ms, at)| EventSpec::Narrow {
                scope_mask, purpose_mask, end_cut_ms, start_push_ms, at,
            }),
    ]
}

fn audience_spec() -> impl Strategy<Value = AudienceSpec> {
    prop_oneof![
        4 => (0..POOL_OPERATORS.len(), 0..POOL_SERVICE_NAMES.len())
            .prop_map(|(operator, name)| AudienceSpec::Service { operator, name }),
        1 => (0..POOL_OPERATORS.len()).prop_map(AudienceSpec::Member),
        1 => (0..POOL_SECTORS.len()).prop_map(AudienceSpec::Sector),
    ]
}

fn record_spec() -> impl Strategy<Value = RecordSpec> {
    (
        (
            0..POOL_SUBJECTS.len(),
            any::<bool>(),
            audience_spec(),
            0..POOL_SOURCES.len(),
        ),
        prop::collection::vec((0..POOL_ATTRIBUTES.len(), any::<bool>()), 1..4),
        (1u8..8, 0..POOL_WINDOWS.len()),
        prop::collection::vec(event_spec(), 0..6),
        (
            any::<bool>(),
            prop::option::of(prop::collection::vec(event_spec(), 0..6)),
        ),
    )
        .prop_map(
            |(
                (subject, guardians, audience, source),
                scope,
                (purpose_mask, window),
                events,
                (removed, update),
            )| {
                RecordSpec {
                    subject,
                    guardians,
                    audience,
                    source,
                    scope,
                    purpose_mask,
                    window,
                    events,
                    removed,
                    update,
                }
            },
        )
}

fn ask_spec() -> impl Strategy<Value = AskSpec> {
    (
        (0..POOL_QUERY_SUBJECTS.len(), 0..POOL_OPERATORS.len()),
        (
            prop::option::weighted(0.15, 0..POOL_OPERATORS.len()),
            0..POOL_SERVICE_NAMES.len(),
            0u8..4,
        ),
        (
            0..POOL_SOURCES.len(),
            0..POOL_ATTRIBUTES.len(),
            any::<bool>(),
        ),
        (0..POOL_PURPOSES.len(), 0..POOL_QUERY_TIMES.len()),
    )
        .prop_map(
            |(
                (subject, operator),
                (service_of, service_name, sector_mask),
                (source, attribute, read),
                (purpose, at),
            )| {
                AskSpec {
                    subject,
                    operator,
                    service_of,
                    service_name,
                    sector_mask,
                    source,
                    attribute,
                    read,
                    purpose,
                    at,
                }
            },
        )
}

/// Up to 24 records and 64 queries about them.
fn scenario() -> impl Strategy<Value = (Vec<RecordSpec>, Vec<AskSpec>)> {
    (
        prop::collection::vec(record_spec(), 1..24),
        prop::collection::vec(ask_spec(), 1..64),
    )
}

fn pool_service(operator: usize, name: usize) -> ServiceId {
    service(&format!(
        "{}/{}",
        POOL_OPERATORS[operator], POOL_SERVICE_NAMES[name]
    ))
}

fn pool_action(read: bool) -> Action {
    if read {
        Action::Read
    } else {
        Action::Verify
    }
}

/// The items of `items` whose bit is set in `mask`.
fn masked<T: Clone>(items: &[T], mask: u8) -> Vec<T> {
    items
        .iter()
        .enumerate()
        .filter(|(i, _)| *i < 8 && mask & (1u8 << i) != 0)
        .map(|(_, item)| item.clone())
        .collect()
}

/// The record's terms, with id `n`.
fn spec_terms(n: u16, spec: &RecordSpec) -> ConsentTerms {
    let mut id = [0u8; 16];
    id[14..].copy_from_slice(&n.to_be_bytes());
    let subject_name = POOL_SUBJECTS[spec.subject];
    let (kind, audience) = match spec.audience {
        AudienceSpec::Service { operator, name } => (
            RecordKind::Consent,
            Audience::Service(pool_service(operator, name)),
        ),
        AudienceSpec::Member(m) => (
            RecordKind::Arrangement,
            Audience::Member(operator(POOL_OPERATORS[m])),
        ),
        AudienceSpec::Sector(s) => (
            RecordKind::Arrangement,
            Audience::Sector(sector(POOL_SECTORS[s])),
        ),
    };
    let grantors = if kind == RecordKind::Consent && spec.guardians {
        POOL_GUARDIANS.iter().map(|g| subject(g)).collect()
    } else {
        vec![subject(subject_name)]
    };
    let mut scope: Vec<ScopeItem> = Vec::new();
    for &(a, read) in &spec.scope {
        let item = ScopeItem {
            attribute: attribute(POOL_ATTRIBUTES[a]),
            action: pool_action(read),
        };
        if !scope.contains(&item) {
            scope.push(item);
        }
    }
    let purposes = masked(
        &POOL_PURPOSES.iter().map(|p| purpose(p)).collect::<Vec<_>>(),
        spec.purpose_mask,
    );
    let (not_before_ms, not_after_ms) = POOL_WINDOWS[spec.window];
    ConsentTerms {
        consent_id: ConsentId::from_bytes(id),
        kind,
        subject: subject(subject_name),
        home: operator(HOME),
        grantors,
        audience,
        source: operator(POOL_SOURCES[spec.source]),
        scope,
        purposes,
        purpose_text: String::new(),
        lawful_basis: LawfulBasis::Consent,
        not_before_ms,
        not_after_ms,
    }
}

/// Applies each generated event that is legal next, skipping the others.
fn apply_specs(record: &mut ConsentRecord, events: &[EventSpec]) {
    for spec in events {
        let grantor = |who: usize| {
            record
                .terms()
                .grantors
                .get(who)
                .cloned()
                .unwrap_or_else(|| subject(MALLORY))
        };
        let actor = |who: usize| {
            let grantor = grantor(who);
            Actor {
                person: grantor.clone(),
                for_grantor: grantor,
                delegations: Vec::new(),
                authentication: String::new(),
            }
        };
        let (at, kind) = match *spec {
            EventSpec::Grant { who, at } => (at, EventKind::Granted(actor(who))),
            EventSpec::Refuse { who, at } => (at, EventKind::Refused(actor(who))),
            EventSpec::Withdraw { who, at } => (at, EventKind::Withdrawn(actor(who))),
            EventSpec::Invalidate { at } => (
                at,
                EventKind::Invalidated {
                    reason: String::new(),
                },
            ),
            EventSpec::Narrow {
                scope_mask,
                purpose_mask,
                end_cut_ms,
                start_push_ms,
                at,
            } => {
                let current = record.terms();
                let narrowed = ConsentTerms {
                    scope: masked(&current.scope, scope_mask),
                    purposes: masked(&current.purposes, purpose_mask),
                    not_after_ms: current.not_after_ms - end_cut_ms,
                    not_before_ms: current.not_before_ms + start_push_ms,
                    ..current.clone()
                };
                (at, EventKind::Narrowed(narrowed))
            }
        };
        let next = ConsentEvent {
            consent_id: record.id(),
            seq: record.next_seq(),
            at_ms: POOL_EVENT_TIMES[at],
            recorder: operator(HOME),
            kind,
        };
        let before = record.clone();
        if record.apply(next).is_err() {
            assert_eq!(*record, before, "a refused event changed the record");
        }
    }
}

/// The record `n` a spec describes.
fn spec_record(n: u16, spec: &RecordSpec) -> ConsentRecord {
    let terms = spec_terms(n, spec);
    let mut record = ConsentRecord::new(event(
        terms.consent_id,
        0,
        NOW - 3000,
        EventKind::Requested(terms),
    ))
    .unwrap();
    apply_specs(&mut record, &spec.events);
    record
}

fn spec_ask(spec: &AskSpec) -> Ask {
    let runs = spec.service_of.unwrap_or(spec.operator);
    Ask {
        subject: subject(POOL_QUERY_SUBJECTS[spec.subject]),
        operator: operator(POOL_OPERATORS[spec.operator]),
        service: pool_service(runs, spec.service_name),
        sectors: masked(
            &POOL_SECTORS.iter().map(|s| sector(s)).collect::<Vec<_>>(),
            spec.sector_mask,
        ),
        source: operator(POOL_SOURCES[spec.source]),
        attribute: attribute(POOL_ATTRIBUTES[spec.attribute]),
        action: pool_action(spec.read),
        purpose: purpose(POOL_PURPOSES[spec.purpose]),
        at_ms: POOL_QUERY_TIMES[spec.at],
    }
}

/// The records of a scenario, ids 0, 1, ...
fn spec_records(specs: &[RecordSpec]) -> Vec<ConsentRecord> {
    (0u16..)
        .zip(specs)
        .map(|(n, spec)| spec_record(n, spec))
        .collect()
}

/// Compares the index with the naive scan over `live` for every ask.
fn agree(
    index: &Index,
    live: &BTreeMap<ConsentId, ConsentRecord>,
    asks: &[Ask],
    stage: &str,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(index.len(), live.len(), "{}", stage);
    for ask in asks {
        let query = ask.query();
        prop_assert_eq!(
            index.decide(&query),
            decide_naive(live.values(), &query),
            "{} {:?}",
            stage,
            ask
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// For random records in every status and random queries around their
    /// windows, the index decides exactly as the naive scan: after upserting
    /// every record, after removing a random subset, and after upserting
    /// updated versions of some records (removed or not).
    #[test]
    fn index_agrees_with_the_naive_scan((specs, ask_specs) in scenario()) {
        let records = spec_records(&specs);
        let asks: Vec<Ask> = ask_specs.iter().map(spec_ask).collect();
        let mut live: BTreeMap<ConsentId, ConsentRecord> = BTreeMap::new();
        let mut index = Index::new();
        for record in &records {
            index.upsert(record);
            live.insert(record.id(), record.clone());
        }
        agree(&index, &live, &asks, "after upserting")?;

        for (spec, record) in specs.iter().zip(&records) {
            if spec.removed {
                index.remove(record.id());
                live.remove(&record.id());
            }
        }
        agree(&index, &live, &asks, "after removing")?;

        for (spec, record) in specs.iter().zip(&records) {
            if let Some(more) = &spec.update {
                let mut updated = record.clone();
                apply_specs(&mut updated, more);
                index.upsert(&updated);
                live.insert(updated.id(), updated);
            }
        }
        agree(&index, &live, &asks, "after updating")?;
    }

    /// Any generated terms and events survive the wire unchanged.
    #[test]
    fn generated_events_survive_the_wire(spec in record_spec(), text in "\\PC{0,40}") {
        let mut record = spec_record(7, &spec);
        if let Some(more) = &spec.update {
            apply_specs(&mut record, more);
        }
        let terms = ConsentTerms { purpose_text: text, ..record.terms().clone() };
        prop_assert_eq!(wire::terms_from_pb(wire::terms_to_pb(&terms)), Ok(terms));
        for event in record.events() {
            let body = wire::encode_consent_event(event);
            let decoded = wire::decode_consent_event(&body);
            prop_assert_eq!(decoded.as_ref(), Ok(event));
        }
    }

    /// Random bytes never make the event decoder panic.
    #[test]
    fn random_bytes_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = wire::decode_consent_event(&bytes);
    }

    /// Any single-byte change to any body or signature of a valid signed log
    /// makes the log fail to verify.
    #[test]
    fn any_changed_byte_of_a_signed_log_is_refused(
        which in any::<prop::sample::Index>(),
        position in any::<prop::sample::Index>(),
        in_signature in any::<bool>(),
        mask in 1u8..=255,
    ) {
        let fx = Fixture::new();
        let script = Script::requested(guardians_terms(1)).granted(MOTHER).granted(FATHER);
        let mut log = signed_log(&script.events, &fx.helsinki.key);
        let signed = &mut log.events[which.index(script.events.len())];
        let bytes = if in_signature { &mut signed.signature } else { &mut signed.body };
        let at = position.index(bytes.len());
        bytes[at] ^= mask;
        prop_assert!(log.verify(&fx.trust).is_err());
    }
}

/// The generators reach every status (expiry included) and every decision,
/// so the property test above compares the index with the naive scan on all
/// of them rather than on a few.
#[test]
fn generators_reach_every_status_and_decision() {
    let mut runner = TestRunner::deterministic();
    let mut statuses = BTreeSet::new();
    let mut decisions = BTreeSet::new();
    let strategy = scenario();
    for _ in 0..300 {
        let (specs, ask_specs) = strategy.new_tree(&mut runner).unwrap().current();
        let records = spec_records(&specs);
        for record in &records {
            for at_ms in POOL_QUERY_TIMES {
                statuses.insert(record.status_at(at_ms).as_str());
            }
        }
        for spec in &ask_specs {
            let ask = spec_ask(spec);
            let code = match decide_naive(&records, &ask.query()) {
                Decision::Allow { .. } => "allow",
                Decision::Deny(reason) => reason.code(),
            };
            decisions.insert(code);
        }
    }
    let all_statuses = [
        ConsentStatus::Requested,
        ConsentStatus::Given,
        ConsentStatus::Refused,
        ConsentStatus::Withdrawn,
        ConsentStatus::Expired,
        ConsentStatus::Invalidated,
    ];
    for status in all_statuses {
        assert!(
            statuses.contains(status.as_str()),
            "{status:?} never generated"
        );
    }
    let all_decisions = [
        "allow",
        "no-consent",
        "attribute-not-covered",
        "purpose-not-covered",
        "not-yet-valid",
        "awaiting-grantors",
        "expired",
        "withdrawn",
        "refused",
        "invalidated",
    ];
    for code in all_decisions {
        assert!(
            decisions.contains(code),
            "{code} never decided: {decisions:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Copies: who holds one, and how a pushed log merges into it
// ---------------------------------------------------------------------------

/// The source, the home and the audience's operator hold a copy; a sector
/// arrangement names no one beyond source and home.
#[test]
fn parties_are_source_home_and_audience() {
    use crate::core::consent::copies::parties;
    let consent = parties(&terms(1));
    let want: BTreeSet<OperatorId> = [HOME, SOURCE, "se.stockholm"]
        .into_iter()
        .map(operator)
        .collect();
    assert_eq!(consent, want);
    let sector = parties(&arrangement(2, Audience::Sector(sector("education"))));
    assert_eq!(sector, [HOME, SOURCE].into_iter().map(operator).collect());
}

/// A party keeps a pushed log only if it verifies, comes from the record's
/// home, concerns the party, and extends its copy; a log that contradicts the
/// copy is equivocation, and an older or equal one changes nothing.
#[test]
fn a_pushed_log_merges_only_as_a_verified_extension_from_home() {
    use crate::core::consent::copies::{merge, MergeError, Merged};
    let fx = Fixture::new();
    let (home, source) = (operator(HOME), operator(SOURCE));
    let given = Script::requested(terms(1)).granted(ALICE);
    let short = signed_log(&given.events, &fx.helsinki.key);
    let long = signed_log(&given.clone().withdrawn(ALICE).events, &fx.helsinki.key);
    let merged = |held: Option<&ConsentLog>, pushed: &ConsentLog, sender: &OperatorId| {
        merge(&fx.trust, &source, &[], sender, held, pushed)
    };

    assert!(matches!(
        merged(None, &short, &home),
        Ok(Merged::Extends(_))
    ));
    assert!(matches!(
        merged(Some(&short), &long, &home),
        Ok(Merged::Extends(_))
    ));
    assert!(matches!(
        merged(Some(&long), &short, &home),
        Ok(Merged::Unchanged)
    ));
    assert!(matches!(
        merged(Some(&long), &long, &home),
        Ok(Merged::Unchanged)
    ));

    // Another history of the same record: refused, whatever its length.
    let other = signed_log(
        &Script::requested(terms(1)).refused(ALICE).events,
        &fx.helsinki.key,
    );
    assert!(matches!(
        merged(Some(&long), &other, &home),
        Err(MergeError::Equivocation)
    ));
    // Pushed by someone other than the home.
    assert!(matches!(
        merged(None, &short, &source),
        Err(MergeError::NotFromHome { .. })
    ));
    // Not the source, not in the audience.
    let stranger = merge(
        &fx.trust,
        &operator("xx.elsewhere"),
        &[],
        &home,
        None,
        &short,
    );
    assert!(matches!(stranger, Err(MergeError::NotARecipient)));
    // Signed by a key that is not the home's.
    let forged = signed_log(&given.events, &fx.stockholm.key);
    assert!(matches!(
        merged(None, &forged, &home),
        Err(MergeError::Invalid(_))
    ));
}
