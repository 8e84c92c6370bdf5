//! Consents: each record's signed event log (`consents`), the delegations
//! citizens gave (`delegations`), and the latest push of each log to each of
//! its parties (`consent_deliveries`).
//!
//! Logs are sealed under their subject's data key and delegations under
//! their principal's, so erasing a subject erases them; the delivery records
//! hold ids, operator ids and counts only, and are kept in clear.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::subjects::{TAG_CONSENT, TAG_DELEGATION};
use super::{decode, encode, Error, Result, Store};
use crate::core::consent::delegation::{Delegation, DelegationKind};
use crate::core::consent::{ConsentId, ConsentLog, SubjectId};
use crate::core::ids::{MessageId, OperatorId};
use crate::core::wire;

/// The latest push of a consent record to one party.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentDelivery {
    /// The party.
    pub operator: OperatorId,
    /// Events in the version pushed.
    pub events: u32,
    /// The outbox message carrying it.
    pub message_id: MessageId,
}

/// A delegation as stored (postcard), with its ids and kind as strings.
#[derive(Debug, Serialize, Deserialize)]
struct StoredDelegation {
    id: [u8; 16],
    principal: String,
    agent: String,
    kind: String,
    not_before_ms: u64,
    not_after_ms: u64,
    revoked: bool,
}

impl Store {
    /// A record's signed log.
    /// `None` too if its subject was erased.
    pub fn consent_log(&self, id: &ConsentId) -> Result<Option<ConsentLog>> {
        let Some(sealed) = self.consents.get(id.as_bytes())? else {
            return Ok(None);
        };
        let Some(bytes) = self.open_record(TAG_CONSENT, id.as_bytes(), &sealed)? else {
            return Ok(None);
        };
        consent_log_from_bytes(&bytes).map(Some)
    }

    /// Stores a record's signed log, encrypted under its `subject`'s data key
    /// (call [`Store::durable`] before acknowledging).
    pub fn put_consent_log(&self, log: &ConsentLog, subject: &SubjectId) -> Result<()> {
        let plain = Zeroizing::new(consent_log_bytes(log));
        self.put_record(TAG_CONSENT, log.consent_id.as_bytes(), subject, &plain)
    }

    /// Every stored log (read at start to build the decision index), but
    /// those of erased subjects.
    pub fn consent_logs(&self) -> Result<Vec<ConsentLog>> {
        self.open_all(&self.consents, TAG_CONSENT, consent_log_from_bytes)
    }

    /// Stores a delegation, encrypted under its principal's data key.
    pub fn put_delegation(&self, d: &Delegation) -> Result<()> {
        let plain = Zeroizing::new(delegation_bytes(d)?);
        self.put_record(TAG_DELEGATION, d.id.as_bytes(), &d.principal, &plain)
    }

    /// Every stored delegation, but those of erased principals.
    pub fn delegations(&self) -> Result<Vec<Delegation>> {
        self.open_all(&self.delegations, TAG_DELEGATION, delegation_from_bytes)
    }

    /// Every record of `tree` opened with its tag and decoded, but those
    /// whose subject was erased.
    fn open_all<T>(
        &self,
        tree: &sled::Tree,
        tag: u8,
        decode: impl Fn(&[u8]) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut out = Vec::new();
        for item in tree.iter() {
            let (key, sealed) = item?;
            let Some(bytes) = self.open_record(tag, &key, &sealed)? else {
                continue;
            };
            out.push(decode(&bytes)?);
        }
        Ok(out)
    }

    /// Records the latest push of a record to a party.
    pub fn set_consent_delivery(&self, id: &ConsentId, delivery: &ConsentDelivery) -> Result<()> {
        let mut key = id.as_bytes().to_vec();
        key.extend_from_slice(delivery.operator.as_str().as_bytes());
        self.consent_deliveries.insert(key, encode(delivery)?)?;
        Ok(())
    }

    /// The latest push of a record to each party.
    pub fn consent_deliveries(&self, id: &ConsentId) -> Result<Vec<ConsentDelivery>> {
        let mut out = Vec::new();
        for item in self.consent_deliveries.scan_prefix(id.as_bytes()) {
            let (_, bytes) = item?;
            out.push(decode("consent_deliveries", &bytes)?);
        }
        Ok(out)
    }
}

/// A signed consent log as stored: the prost `ConsentRecordUpdate`.
pub(super) fn consent_log_bytes(log: &ConsentLog) -> Vec<u8> {
    wire::encode_consent_log(log)
}

/// Decodes a stored consent log ([`consent_log_bytes`]).
pub(super) fn consent_log_from_bytes(bytes: &[u8]) -> Result<ConsentLog> {
    wire::decode_consent_log(bytes).map_err(|reason| Error::Corrupt {
        tree: "consents",
        reason: reason.to_string(),
    })
}

/// A delegation as stored: `StoredDelegation` in postcard.
pub(super) fn delegation_bytes(d: &Delegation) -> Result<Vec<u8>> {
    encode(&StoredDelegation {
        id: *d.id.as_bytes(),
        principal: d.principal.to_string(),
        agent: d.agent.to_string(),
        kind: d.kind.as_str().to_owned(),
        not_before_ms: d.not_before_ms,
        not_after_ms: d.not_after_ms,
        revoked: d.revoked,
    })
}

/// Decodes a stored delegation ([`delegation_bytes`]).
pub(super) fn delegation_from_bytes(bytes: &[u8]) -> Result<Delegation> {
    let corrupt = |reason: String| Error::Corrupt {
        tree: "delegations",
        reason,
    };
    let s: StoredDelegation = decode("delegations", bytes)?;
    Ok(Delegation {
        id: ConsentId::from_bytes(s.id),
        principal: SubjectId::new(s.principal).map_err(|e| corrupt(e.to_string()))?,
        agent: SubjectId::new(s.agent).map_err(|e| corrupt(e.to_string()))?,
        kind: DelegationKind::parse(&s.kind).ok_or_else(|| corrupt(s.kind.clone()))?,
        not_before_ms: s.not_before_ms,
        not_after_ms: s.not_after_ms,
        revoked: s.revoked,
    })
}
