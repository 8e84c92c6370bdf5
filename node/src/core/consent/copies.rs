//! Who holds a copy of a consent record, and how a copy grows.
//!
//! The home operator records every event and pushes the whole log to the
//! other parties. These two rules are the only place that decides:
//! [`parties`] (who must hold a copy: the home pushes to them, a checker
//! expects the record there) and [`merge`] (what a party does with a log
//! pushed to it: keep it only if it verifies, comes from the record's home,
//! concerns this party, and extends the copy it holds; a log that contradicts
//! the copy is equivocation and is refused). A copy therefore only ever grows
//! by a verified extension, and a pull or a late push never undoes an event.

use std::collections::BTreeSet;

use super::{Audience, ConsentLog, ConsentRecord, ConsentTerms, Sector, TransitionError};
use crate::core::ids::OperatorId;
use crate::core::trust::VerifiedTrustList;

/// Every operator that holds a copy of a record with `terms`: its source, its
/// home, and the operator of its audience (a service's operator or the member
/// named). A sector arrangement names no one: each member of the sector that
/// holds it learns it from the source's or the home's push.
pub fn parties(terms: &ConsentTerms) -> BTreeSet<OperatorId> {
    let mut parties = BTreeSet::from([terms.source.clone(), terms.home.clone()]);
    match &terms.audience {
        Audience::Service(service) => {
            parties.insert(service.operator().clone());
        }
        Audience::Member(member) => {
            parties.insert(member.clone());
        }
        Audience::Sector(_) => {}
    }
    parties
}

/// Whether `me`, with the sector labels `my_sectors`, is the source or in the
/// audience of a record with `terms` (so a pushed log is for it to hold).
pub fn is_recipient(terms: &ConsentTerms, me: &OperatorId, my_sectors: &[Sector]) -> bool {
    &terms.source == me
        || match &terms.audience {
            Audience::Service(service) => service.operator() == me,
            Audience::Member(member) => member == me,
            Audience::Sector(label) => my_sectors.contains(label),
        }
}

/// What a party does with a pushed log.
#[derive(Debug)]
#[must_use]
pub enum Merged {
    /// A verified extension of the copy held (or a first copy): store it.
    Extends(Box<ConsentRecord>),
    /// No longer than the copy held and consistent with it: nothing to do.
    Unchanged,
}

/// Why a pushed log is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MergeError {
    /// An event does not verify, or the fold of the events is invalid.
    #[error(transparent)]
    Invalid(#[from] TransitionError),
    /// Only the record's home pushes it.
    #[error("only the home operator {home} pushes this record, not {sender}")]
    NotFromHome {
        /// The record's home.
        home: OperatorId,
        /// Who pushed it.
        sender: OperatorId,
    },
    /// This node is not one of the record's recipients.
    #[error("this node is neither the source nor in the audience of the record")]
    NotARecipient,
    /// The log contradicts the copy held (the home equivocated).
    #[error("the log contradicts the stored history of this record")]
    Equivocation,
}

/// Merges `pushed`, sent by `sender`, into `held` (the copy this node holds,
/// if any), as `me` with `my_sectors`, under the trust list in force.
pub fn merge(
    trust: &VerifiedTrustList,
    me: &OperatorId,
    my_sectors: &[Sector],
    sender: &OperatorId,
    held: Option<&ConsentLog>,
    pushed: &ConsentLog,
) -> Result<Merged, MergeError> {
    let record = pushed.verify(trust)?;
    let terms = record.terms();
    if &terms.home != sender {
        return Err(MergeError::NotFromHome {
            home: terms.home.clone(),
            sender: sender.clone(),
        });
    }
    if !is_recipient(terms, me, my_sectors) {
        return Err(MergeError::NotARecipient);
    }
    let Some(held) = held else {
        return Ok(Merged::Extends(Box::new(record)));
    };
    let common = held.events.len().min(pushed.events.len());
    let consistent = held.events[..common]
        .iter()
        .zip(&pushed.events[..common])
        .all(|(a, b)| a.body == b.body);
    if !consistent {
        return Err(MergeError::Equivocation);
    }
    if held.events.len() >= pushed.events.len() {
        return Ok(Merged::Unchanged);
    }
    Ok(Merged::Extends(Box::new(record)))
}
