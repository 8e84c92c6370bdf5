//! Delegation: a guardian or a mandated person acting for someone else.
//!
//! The home operator records delegations (`principal` lets `agent` act for
//! them) and, when someone grants or withdraws for a grantor, looks up the
//! chain of delegations that gives them that authority. Chains are limited to
//! [`DELEGATION_DEPTH_MAX`] links, so a mandate cannot be passed on indefinitely.

use std::collections::{BTreeSet, HashMap};

use crate::core::consent::{ConsentId, SubjectId};

use crate::limits::{DELEGATIONS_PER_AGENT_MAX, DELEGATION_DEPTH_MAX};

/// The legal ground of a delegation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DelegationKind {
    /// A parent or legal guardian of a minor or protected adult.
    Guardian,
    /// A power of attorney or other mandate given by the principal.
    Mandate,
}

impl DelegationKind {
    /// The kind's name.
    pub fn as_str(self) -> &'static str {
        match self {
            DelegationKind::Guardian => "guardian",
            DelegationKind::Mandate => "mandate",
        }
    }

    /// Parses a name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "guardian" => Some(DelegationKind::Guardian),
            "mandate" => Some(DelegationKind::Mandate),
            _ => None,
        }
    }
}

/// "`agent` may act for `principal`" within a window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delegation {
    /// Its id.
    pub id: ConsentId,
    /// Who is represented.
    pub principal: SubjectId,
    /// Who may act.
    pub agent: SubjectId,
    /// On what ground.
    pub kind: DelegationKind,
    /// Valid from (ms since the epoch, inclusive).
    pub not_before_ms: u64,
    /// Valid until (ms since the epoch, exclusive).
    pub not_after_ms: u64,
    /// Ended early.
    pub revoked: bool,
}

impl Delegation {
    fn is_valid_at(&self, at_ms: u64) -> bool {
        !self.revoked && self.not_before_ms <= at_ms && at_ms < self.not_after_ms
    }
}

/// Why a delegation cannot be recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DelegationError {
    /// Someone cannot represent themselves.
    #[error("a person cannot delegate to themselves")]
    ToSelf,
    /// Empty window.
    #[error("the delegation's window is empty")]
    EmptyWindow,
    /// The agent holds too many.
    #[error("{0} already holds the maximum of {DELEGATIONS_PER_AGENT_MAX} delegations")]
    TooMany(SubjectId),
}

/// All delegations a home operator knows, indexed by agent.
#[derive(Clone, Debug, Default)]
pub struct Delegations {
    by_agent: HashMap<SubjectId, Vec<Delegation>>,
}

impl Delegations {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a delegation (or replaces one with the same id).
    pub fn insert(&mut self, delegation: Delegation) -> Result<(), DelegationError> {
        if delegation.principal == delegation.agent {
            return Err(DelegationError::ToSelf);
        }
        if delegation.not_after_ms <= delegation.not_before_ms {
            return Err(DelegationError::EmptyWindow);
        }
        let held = self.by_agent.entry(delegation.agent.clone()).or_default();
        if let Some(existing) = held.iter_mut().find(|d| d.id == delegation.id) {
            *existing = delegation;
            return Ok(());
        }
        if held.len() >= DELEGATIONS_PER_AGENT_MAX {
            return Err(DelegationError::TooMany(delegation.agent));
        }
        held.push(delegation);
        Ok(())
    }

    /// Every delegation, for listing and persistence.
    pub fn all(&self) -> impl Iterator<Item = &Delegation> {
        self.by_agent.values().flatten()
    }

    /// The shortest chain (principal's delegation first) by which `person`
    /// may act for `principal` at `at_ms`: empty if they are the same person,
    /// `None` if there is no chain of at most [`DELEGATION_DEPTH_MAX`] valid links.
    pub fn authority(
        &self,
        principal: &SubjectId,
        person: &SubjectId,
        at_ms: u64,
    ) -> Option<Vec<ConsentId>> {
        if principal == person {
            return Some(Vec::new());
        }
        // Breadth-first from the person upwards: each step follows a
        // delegation held by the current agent to its principal.
        let mut frontier: Vec<(SubjectId, Vec<ConsentId>)> = vec![(person.clone(), Vec::new())];
        let mut seen: BTreeSet<SubjectId> = BTreeSet::from([person.clone()]);
        for _ in 0..DELEGATION_DEPTH_MAX {
            let mut next = Vec::new();
            for (agent, chain) in &frontier {
                for d in self.by_agent.get(agent).into_iter().flatten() {
                    if !d.is_valid_at(at_ms) || !seen.insert(d.principal.clone()) {
                        continue;
                    }
                    let mut longer = vec![d.id];
                    longer.extend(chain.iter().copied());
                    if &d.principal == principal {
                        return Some(longer);
                    }
                    next.push((d.principal.clone(), longer));
                }
            }
            frontier = next;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(name: &str) -> SubjectId {
        SubjectId::new(name).unwrap()
    }

    fn delegation(n: u8, principal: &str, agent: &str, not_after_ms: u64) -> Delegation {
        Delegation {
            id: ConsentId::from_bytes([n; 16]),
            principal: person(principal),
            agent: person(agent),
            kind: DelegationKind::Guardian,
            not_before_ms: 0,
            not_after_ms,
            revoked: false,
        }
    }

    #[test]
    fn chains_are_found_within_depth_and_window() {
        let mut d = Delegations::new();
        d.insert(delegation(1, "child", "mother", 100)).unwrap();
        d.insert(delegation(2, "mother", "lawyer", 100)).unwrap();
        d.insert(delegation(3, "lawyer", "clerk", 100)).unwrap();
        let child = person("child");
        assert_eq!(d.authority(&child, &child, 5), Some(vec![]));
        assert_eq!(
            d.authority(&child, &person("mother"), 5),
            Some(vec![ConsentId::from_bytes([1; 16])])
        );
        assert_eq!(
            d.authority(&child, &person("lawyer"), 5),
            Some(vec![
                ConsentId::from_bytes([1; 16]),
                ConsentId::from_bytes([2; 16])
            ])
        );
        assert_eq!(
            d.authority(&child, &person("clerk"), 5),
            None,
            "depth 3 is too deep"
        );
        assert_eq!(d.authority(&child, &person("mother"), 100), None, "expired");
        assert_eq!(
            d.authority(&person("mother"), &person("child"), 5),
            None,
            "not reversed"
        );
    }

    #[test]
    fn revoked_and_invalid_delegations() {
        let mut d = Delegations::new();
        let mut g = delegation(1, "child", "father", 100);
        d.insert(g.clone()).unwrap();
        g.revoked = true;
        d.insert(g).unwrap();
        assert_eq!(d.authority(&person("child"), &person("father"), 5), None);
        assert_eq!(
            d.insert(delegation(2, "a", "a", 100)),
            Err(DelegationError::ToSelf)
        );
        assert_eq!(
            d.insert(delegation(3, "a", "b", 0)),
            Err(DelegationError::EmptyWindow)
        );
    }

    /// An agent holds up to [`DELEGATIONS_PER_AGENT_MAX`] delegations; the
    /// next one is `TooMany`, while replacing a held one and another agent's
    /// are still accepted.
    #[test]
    fn delegations_per_agent_are_bounded() {
        let mut d = Delegations::new();
        let at_limit = u8::try_from(DELEGATIONS_PER_AGENT_MAX).unwrap();
        for n in 0..at_limit {
            d.insert(delegation(n, &format!("child{n}"), "guardian", 100))
                .unwrap();
        }
        assert_eq!(d.all().count(), DELEGATIONS_PER_AGENT_MAX);
        assert_eq!(
            d.insert(delegation(at_limit, "one.more", "guardian", 100)),
            Err(DelegationError::TooMany(person("guardian")))
        );
        d.insert(delegation(0, "child0", "guardian", 200)).unwrap();
        d.insert(delegation(at_limit, "one.more", "other", 100))
            .unwrap();
        assert_eq!(d.all().count(), DELEGATIONS_PER_AGENT_MAX + 1);
    }
}
