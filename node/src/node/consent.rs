//! The driver's consent side: the decision index and delegations in memory,
//! the errors of every consent operation, and the loops that expire and
//! re-push records.
//!
//! # Layout
//! - this file: the state ([`ConsentState`], `Consents`), [`ConsentError`],
//!   loading at start, reads (`consent`, `decide`, ...), the loops;
//! - [`home`]: recording events at the subject's home operator and pushing them;
//! - [`party`]: the notices a home pushes to the other parties, pulls, status queries.
//!
//! Writes to consent records are serialised by one async mutex per node
//! (`Consents::writer`), so a record's log grows one event at a time; reads
//! (`decide`) only take the index's read lock for a few microseconds.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use tracing::{info, warn};

use crate::clock::{now_ms, random_id_bytes};
use crate::core::consent::copies;
use crate::core::consent::delegation::{DelegationError, Delegations};
use crate::core::consent::index::{Decision, Index, Query};
use crate::core::consent::{
    ConsentId, ConsentLog, ConsentRecord, ConsentTerms, Sector, SubjectId, TermsError,
    TransitionError,
};
use crate::core::ids::OperatorId;
use crate::core::reason::Reason;
use crate::core::trust::VerifiedTrustList;
use crate::limits;
use crate::node::{Error, Node, SendError};
use crate::store::{self, ConsentDelivery, Store};

mod home;
mod party;

pub use home::GrantorAction;

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
}

/// Once a second, records the expiry of consents this node is home of whose
/// validity ended, so every party is told. Decisions never wait for this:
/// every copy denies from `not_after` on by itself.
pub(crate) async fn expiry_loop(shared: Arc<Node>, cancel: CancellationToken) -> Result<(), Error> {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(Duration::from_millis(limits::EXPIRY_INTERVAL_MS)) => {}
        }
        let recorded = shared.expire_due(now_ms(), limits::EXPIRY_BATCH_MAX).await;
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
/// pushes), then every [`limits::REPUSH_INTERVAL_MS`] (pushes that expired while a party was away).
pub(crate) async fn repush_loop(shared: Arc<Node>, cancel: CancellationToken) -> Result<(), Error> {
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
            () = tokio::time::sleep(Duration::from_millis(limits::REPUSH_INTERVAL_MS)) => {}
        }
    }
}
