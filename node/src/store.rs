//! Persistence on sled behind a narrow interface.
//!
//! Trees:
//! - `trust`: the current signed trust list (key `current`);
//! - `seen`: message id → what was applied (the replay window and the stored receipt);
//! - `seen_expiry`: `expires_at_ms ‖ message id` → (), to prune `seen` in order;
//! - `inbox`: sequence number → received message;
//! - `outbox`: message id → outgoing message with its delivery state;
//! - `consents`: consent id → the record's signed event log;
//! - `delegations`: delegation id → who may act for whom;
//! - `consent_deliveries`: consent id ‖ operator → the latest push of the record to that party;
//! - `served`: requester ‖ request id → the data response this holder gave (idempotency);
//! - `received`: request id → the responses this requester received, each value with its consent id;
//! - `request_states`: side ‖ request id → the request's state and when it changed;
//! - `registry`: the built-in data source (see `sources::registry`).
//!
//! Every state change that is acknowledged to someone (a receipt to a peer, an
//! answer to an API client) goes through [`Store::durable`] first, which
//! flushes sled to disk. Concurrent callers share one flush (group commit).
//! Records are encoded with postcard; each carries the SHA-256 of the envelope
//! it holds, checked again when read back (paired assertions).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional as _;

use crate::core::consent::delegation::{Delegation, DelegationKind};
use crate::core::consent::{ConsentId, ConsentLog, SubjectId};
use crate::core::delivery::Applied;
use crate::core::exchange::DataResponse;
use crate::core::ids::{MessageId, OperatorId};
use crate::core::wire;
use prost::Message as _;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// sled failed (I/O error or corruption).
    #[error("database error: {0}")]
    Sled(#[from] sled::Error),
    /// A record does not decode or fails its integrity check.
    #[error("corrupt record in tree {tree}: {reason}")]
    Corrupt {
        /// The tree.
        tree: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The flush task could not run.
    #[error("flush task failed: {0}")]
    Flush(String),
}

/// Result alias of the store.
pub type Result<T> = std::result::Result<T, Error>;

/// Delivery state of an outgoing message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutgoingState {
    /// Stored, being delivered.
    Pending,
    /// A valid receipt came back.
    Delivered,
    /// Expired before a receipt came back.
    Expired,
}

/// An outgoing message and its delivery state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outgoing {
    /// Recipient.
    pub recipient: OperatorId,
    /// The encoded `SignedEnvelope`, exactly as sent on every attempt.
    pub envelope: Vec<u8>,
    /// SHA-256 of the envelope body (what the receipt must quote).
    pub body_sha256: [u8; 32],
    /// SHA-256 of `envelope`, checked when read back.
    pub envelope_sha256: [u8; 32],
    /// Expiry of the message (ms since the epoch).
    pub expires_at_ms: u64,
    /// State.
    pub state: OutgoingState,
    /// Attempts made so far.
    pub attempts: u32,
    /// Last delivery error.
    pub last_error: Option<String>,
    /// The recipient's encoded signed receipt, once delivered.
    pub receipt: Option<Vec<u8>>,
}

/// A received and applied message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incoming {
    /// Sequence number in the inbox (monotonic across restarts).
    pub seq: u64,
    /// Message id.
    pub message_id: MessageId,
    /// Sender.
    pub sender: OperatorId,
    /// When it was applied (ms since the epoch).
    pub received_at_ms: u64,
    /// The encoded `SignedEnvelope` as received.
    pub envelope: Vec<u8>,
    /// SHA-256 of `envelope`, checked when read back.
    pub envelope_sha256: [u8; 32],
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Seen {
    sender: OperatorId,
    body_sha256: [u8; 32],
    applied_at_ms: u64,
    expires_at_ms: u64,
    receipt: Vec<u8>,
}

// Serde for the id newtypes lives here, with the store, because only the store
// persists them this way.
impl Serialize for MessageId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_bytes(self.as_bytes())
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let bytes = <Vec<u8>>::deserialize(d)?;
        MessageId::from_slice(&bytes).ok_or_else(|| serde::de::Error::custom("message id length"))
    }
}

/// Counters kept in memory, rebuilt by one scan at open.
#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    pending: AtomicU64,
    delivered: AtomicU64,
    expired: AtomicU64,
}

/// Snapshot of the store's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages applied.
    pub received: u64,
    /// Outgoing messages awaiting a receipt.
    pub pending: u64,
    /// Outgoing messages with a receipt.
    pub delivered: u64,
    /// Outgoing messages that expired undelivered.
    pub expired: u64,
}

/// The node's database. Cheap to clone (all handles are shared).
#[derive(Clone, Debug)]
pub struct Store {
    db: sled::Db,
    trust: sled::Tree,
    seen: sled::Tree,
    seen_expiry: sled::Tree,
    inbox: sled::Tree,
    outbox: sled::Tree,
    consents: sled::Tree,
    delegations: sled::Tree,
    consent_deliveries: sled::Tree,
    served: sled::Tree,
    received: sled::Tree,
    request_states: sled::Tree,
    counters: Arc<Counters>,
    group: Arc<GroupCommit>,
}

/// Group commit: a writer bumps `written`, then waits until a flush that
/// started after its write has finished.
#[derive(Debug, Default)]
struct GroupCommit {
    written: AtomicU64,
    flushed: AtomicU64,
    lock: tokio::sync::Mutex<()>,
}

const TRUST_KEY: &[u8] = b"current";

/// Removes the snapshot files sled was still writing when its process died;
/// returns how many.
///
/// sled 0.34 writes a snapshot to `snap.<lsn>.generating`, syncs it, renames it
/// to `snap.<lsn>` and only then deletes the older snapshots; but at open it
/// takes the newest `snap.*` file, a leftover `.generating` one included, so a
/// SIGKILL while a snapshot is written leaves a database that never opens again
/// (`empty/corrupt snapshot file found`, `Corruption { at: None }`; sled issues
/// 1527 and 1533). Such a file never became the snapshot and the previous one
/// is still there, so removing it is what sled should do. Called only after an
/// open failed with corruption, so never under a process that holds the database.
/// Found by the crash loop (`scripts/crash-loop.sh`).
fn remove_unfinished_snapshots(dir: &Path) -> Result<usize> {
    let io = |e: std::io::Error| Error::Sled(e.into());
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            std::fs::remove_file(entry.path()).map_err(io)?;
            removed += 1;
        }
    }
    Ok(removed)
}

impl Store {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let config = sled::Config::new()
            .path(dir)
            // Durability comes from explicit flushes before every acknowledgement;
            // the background flush only bounds how much unacknowledged work a crash loses.
            // (Off with the test-only `broken-ack-before-flush` feature, so a crash
            // loses every write it did not flush.)
            .flush_every_ms((!cfg!(feature = "broken-ack-before-flush")).then_some(1_000));
        let db = match config.open() {
            Err(sled::Error::Corruption { .. }) if remove_unfinished_snapshots(dir)? > 0 => {
                config.open()?
            }
            opened => opened?,
        };
        let store = Self {
            trust: db.open_tree("trust")?,
            seen: db.open_tree("seen")?,
            seen_expiry: db.open_tree("seen_expiry")?,
            inbox: db.open_tree("inbox")?,
            outbox: db.open_tree("outbox")?,
            consents: db.open_tree("consents")?,
            delegations: db.open_tree("delegations")?,
            consent_deliveries: db.open_tree("consent_deliveries")?,
            served: db.open_tree("served")?,
            received: db.open_tree("received")?,
            request_states: db.open_tree("request_states")?,
            db,
            counters: Arc::new(Counters::default()),
            group: Arc::new(GroupCommit::default()),
        };
        store.rebuild_counters()?;
        Ok(store)
    }

    fn rebuild_counters(&self) -> Result<()> {
        let c = &self.counters;
        c.received.store(self.inbox.len() as u64, Ordering::Relaxed);
        for item in self.outbox.iter() {
            let (_, value) = item?;
            let outgoing: Outgoing = decode("outbox", &value)?;
            match outgoing.state {
                OutgoingState::Pending => &c.pending,
                OutgoingState::Delivered => &c.delivered,
                OutgoingState::Expired => &c.expired,
            }
            .fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Makes every write made before this call durable. Concurrent callers
    /// share one flush. Cancel-safe: dropping the future loses no data, it only
    /// stops waiting.
    pub async fn durable(&self) -> Result<()> {
        let mine = self.group.written.fetch_add(1, Ordering::AcqRel) + 1;
        let _guard = self.group.lock.lock().await;
        if self.group.flushed.load(Ordering::Acquire) >= mine {
            return Ok(());
        }
        // Everything written up to here is covered by this flush.
        let target = self.group.written.load(Ordering::Acquire);
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| Error::Flush(e.to_string()))??;
        self.group.flushed.store(target, Ordering::Release);
        Ok(())
    }

    /// Flushes synchronously (for command-line tools and shutdown).
    pub fn flush_blocking(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    // -- trust list ---------------------------------------------------------

    /// The stored signed trust list, if any.
    pub fn trust_list(&self) -> Result<Option<Vec<u8>>> {
        Ok(self.trust.get(TRUST_KEY)?.map(|v| v.to_vec()))
    }

    /// Replaces the stored trust list (call [`Store::durable`] before relying on it).
    pub fn set_trust_list(&self, signed: &[u8]) -> Result<()> {
        self.trust.insert(TRUST_KEY, signed)?;
        Ok(())
    }

    // -- receiving ----------------------------------------------------------

    /// What was applied under `id`, if it is in the replay window.
    pub fn applied(&self, id: &MessageId) -> Result<Option<(Applied, Vec<u8>)>> {
        let Some(value) = self.seen.get(id.as_bytes())? else {
            return Ok(None);
        };
        let seen: Seen = decode("seen", &value)?;
        Ok(Some((
            Applied {
                body_sha256: seen.body_sha256,
                applied_at_ms: seen.applied_at_ms,
            },
            seen.receipt,
        )))
    }

    /// Records an applied message atomically: the replay entry with its
    /// receipt, the inbox entry, and (for a trust-list update) the new list.
    /// Returns `None` if the id was applied concurrently (the caller answers
    /// with the stored receipt). Not yet durable: call [`Store::durable`].
    #[allow(clippy::too_many_arguments)]
    pub fn record_applied(
        &self,
        id: MessageId,
        sender: &OperatorId,
        body_sha256: [u8; 32],
        expires_at_ms: u64,
        applied_at_ms: u64,
        envelope: &[u8],
        receipt: &[u8],
        new_trust_list: Option<&[u8]>,
    ) -> Result<Option<u64>> {
        // Sequence numbers start at 1 so that `after_seq = 0` means "from the start".
        let seq = self.db.generate_id()?.saturating_add(1);
        let seen = encode(&Seen {
            sender: sender.clone(),
            body_sha256,
            applied_at_ms,
            expires_at_ms,
            receipt: receipt.to_vec(),
        })?;
        let incoming = encode(&Incoming {
            seq,
            message_id: id,
            sender: sender.clone(),
            received_at_ms: applied_at_ms,
            envelope: envelope.to_vec(),
            envelope_sha256: Sha256::digest(envelope).into(),
        })?;
        let mut expiry_key = expires_at_ms.to_be_bytes().to_vec();
        expiry_key.extend_from_slice(id.as_bytes());
        let outcome = (&self.seen, &self.seen_expiry, &self.inbox, &self.trust).transaction(
            |(seen_tree, expiry_tree, inbox_tree, trust_tree)| {
                if seen_tree.get(id.as_bytes())?.is_some() {
                    return Ok(None);
                }
                seen_tree.insert(id.as_bytes().as_slice(), seen.as_slice())?;
                expiry_tree.insert(expiry_key.as_slice(), &[][..])?;
                inbox_tree.insert(&seq.to_be_bytes(), incoming.as_slice())?;
                if let Some(list) = new_trust_list {
                    trust_tree.insert(TRUST_KEY, list)?;
                }
                Ok::<_, ConflictableTransactionError<()>>(Some(seq))
            },
        );
        let outcome = outcome.map_err(|e| match e {
            TransactionError::Storage(e) => Error::Sled(e),
            TransactionError::Abort(()) => Error::Corrupt {
                tree: "seen",
                reason: "transaction aborted".into(),
            },
        })?;
        if outcome.is_some() {
            self.counters.received.fetch_add(1, Ordering::Relaxed);
        }
        Ok(outcome)
    }

    /// Received messages with a sequence number above `after_seq`, at most `limit`.
    pub fn incoming(&self, after_seq: u64, limit: usize) -> Result<Vec<Incoming>> {
        let start = after_seq.saturating_add(1).to_be_bytes();
        let mut out = Vec::new();
        for item in self.inbox.range(start..).take(limit) {
            let (_, value) = item?;
            let incoming: Incoming = decode("inbox", &value)?;
            check_digest("inbox", &incoming.envelope, &incoming.envelope_sha256)?;
            out.push(incoming);
        }
        Ok(out)
    }

    /// Deletes replay entries whose message expired before `before_ms`.
    /// Bounded: at most `max` entries per call. Returns how many were deleted.
    pub fn prune_seen(&self, before_ms: u64, max: usize) -> Result<usize> {
        let end = before_ms.to_be_bytes();
        let mut pruned = 0;
        for item in self.seen_expiry.range(..end.as_slice()).take(max) {
            let (key, _) = item?;
            if let Some(id) = key.get(8..) {
                self.seen.remove(id)?;
            }
            self.seen_expiry.remove(key)?;
            pruned += 1;
        }
        Ok(pruned)
    }

    // -- sending ------------------------------------------------------------

    /// Stores a new outgoing message (call [`Store::durable`] before acknowledging).
    pub fn enqueue(&self, id: MessageId, outgoing: &Outgoing) -> Result<()> {
        debug_assert_eq!(outgoing.state, OutgoingState::Pending);
        self.outbox.insert(id.as_bytes(), encode(outgoing)?)?;
        self.counters.pending.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// One outgoing message.
    pub fn outgoing(&self, id: &MessageId) -> Result<Option<Outgoing>> {
        let Some(value) = self.outbox.get(id.as_bytes())? else {
            return Ok(None);
        };
        let outgoing: Outgoing = decode("outbox", &value)?;
        check_digest("outbox", &outgoing.envelope, &outgoing.envelope_sha256)?;
        Ok(Some(outgoing))
    }

    /// Every outgoing message still pending (read at start to resume delivery).
    pub fn pending(&self) -> Result<Vec<(MessageId, Outgoing)>> {
        let mut out = Vec::new();
        for item in self.outbox.iter() {
            let (key, value) = item?;
            let outgoing: Outgoing = decode("outbox", &value)?;
            if outgoing.state == OutgoingState::Pending {
                let id = MessageId::from_slice(&key).ok_or_else(|| Error::Corrupt {
                    tree: "outbox",
                    reason: "key is not a message id".into(),
                })?;
                out.push((id, outgoing));
            }
        }
        Ok(out)
    }

    /// Every outgoing message, in id order (for offline checks and export).
    pub fn all_outgoing(&self) -> Result<Vec<(MessageId, Outgoing)>> {
        let mut out = Vec::new();
        for item in self.outbox.iter() {
            let (key, value) = item?;
            let id = MessageId::from_slice(&key).ok_or_else(|| Error::Corrupt {
                tree: "outbox",
                reason: "key is not a message id".into(),
            })?;
            out.push((id, decode("outbox", &value)?));
        }
        Ok(out)
    }

    /// Updates an outgoing message with `change`, moving the counters with its state.
    pub fn update_outgoing(
        &self,
        id: &MessageId,
        change: impl Fn(&mut Outgoing),
    ) -> Result<Option<Outgoing>> {
        let mut before_state = None;
        let mut after: Option<Outgoing> = None;
        self.outbox.fetch_and_update(id.as_bytes(), |old| {
            let mut outgoing: Outgoing = decode("outbox", old?).ok()?;
            before_state = Some(outgoing.state);
            change(&mut outgoing);
            let bytes = encode(&outgoing).ok()?;
            after = Some(outgoing);
            Some(bytes)
        })?;
        if let (Some(before), Some(after)) = (before_state, &after) {
            if before != after.state {
                self.counter(before).fetch_sub(1, Ordering::Relaxed);
                self.counter(after.state).fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(after)
    }

    fn counter(&self, state: OutgoingState) -> &AtomicU64 {
        match state {
            OutgoingState::Pending => &self.counters.pending,
            OutgoingState::Delivered => &self.counters.delivered,
            OutgoingState::Expired => &self.counters.expired,
        }
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        Stats {
            received: c.received.load(Ordering::Relaxed),
            pending: c.pending.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            expired: c.expired.load(Ordering::Relaxed),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct StoredDelegation {
    id: [u8; 16],
    principal: String,
    agent: String,
    kind: String,
    not_before_ms: u64,
    not_after_ms: u64,
    revoked: bool,
}

/// The life of a data request, on either side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestState {
    /// Received or sent, not yet decided.
    Requested,
    /// Consent checked per attribute; reading what is allowed.
    Authorised,
    /// Something was released or answered.
    Fulfilled,
    /// Everything was withheld.
    Denied,
    /// A source failed or could not be reached.
    Failed,
}

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

impl Store {
    /// A record's signed log.
    pub fn consent_log(&self, id: &ConsentId) -> Result<Option<ConsentLog>> {
        let Some(bytes) = self.consents.get(id.as_bytes())? else {
            return Ok(None);
        };
        wire::decode_consent_log(&bytes)
            .map(Some)
            .map_err(|reason| Error::Corrupt {
                tree: "consents",
                reason,
            })
    }

    /// Stores a record's signed log (call [`Store::durable`] before acknowledging).
    pub fn put_consent_log(&self, log: &ConsentLog) -> Result<()> {
        self.consents
            .insert(log.consent_id.as_bytes(), wire::encode_consent_log(log))?;
        Ok(())
    }

    /// Every stored log (read at start to build the decision index).
    pub fn consent_logs(&self) -> Result<Vec<ConsentLog>> {
        let mut out = Vec::new();
        for item in self.consents.iter() {
            let (_, bytes) = item?;
            out.push(
                wire::decode_consent_log(&bytes).map_err(|reason| Error::Corrupt {
                    tree: "consents",
                    reason,
                })?,
            );
        }
        Ok(out)
    }

    /// Stores a delegation.
    pub fn put_delegation(&self, d: &Delegation) -> Result<()> {
        let stored = StoredDelegation {
            id: *d.id.as_bytes(),
            principal: d.principal.to_string(),
            agent: d.agent.to_string(),
            kind: d.kind.as_str().to_owned(),
            not_before_ms: d.not_before_ms,
            not_after_ms: d.not_after_ms,
            revoked: d.revoked,
        };
        self.delegations.insert(d.id.as_bytes(), encode(&stored)?)?;
        Ok(())
    }

    /// Every stored delegation.
    pub fn delegations(&self) -> Result<Vec<Delegation>> {
        let corrupt = |reason: String| Error::Corrupt {
            tree: "delegations",
            reason,
        };
        let mut out = Vec::new();
        for item in self.delegations.iter() {
            let (_, bytes) = item?;
            let s: StoredDelegation = decode("delegations", &bytes)?;
            out.push(Delegation {
                id: ConsentId::from_bytes(s.id),
                principal: SubjectId::new(s.principal).map_err(|e| corrupt(e.to_string()))?,
                agent: SubjectId::new(s.agent).map_err(|e| corrupt(e.to_string()))?,
                kind: DelegationKind::parse(&s.kind).ok_or_else(|| corrupt(s.kind.clone()))?,
                not_before_ms: s.not_before_ms,
                not_after_ms: s.not_after_ms,
                revoked: s.revoked,
            });
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

impl Store {
    /// The response already given to `requester` for `request_id`.
    pub fn served(
        &self,
        requester: &OperatorId,
        request_id: &MessageId,
    ) -> Result<Option<DataResponse>> {
        let mut key = requester.as_str().as_bytes().to_vec();
        key.push(0);
        key.extend_from_slice(request_id.as_bytes());
        self.served
            .get(key)?
            .map(|bytes| decode_response("served", &bytes))
            .transpose()
    }

    /// Stores the response given to `requester` (call [`Store::durable`] before sending it).
    pub fn put_served(&self, requester: &OperatorId, response: &DataResponse) -> Result<()> {
        let mut key = requester.as_str().as_bytes().to_vec();
        key.push(0);
        key.extend_from_slice(response.request_id.as_bytes());
        self.served
            .insert(key, wire::data_response_to_pb(response).encode_to_vec())?;
        Ok(())
    }

    /// The responses received for a request made by this node.
    pub fn received(&self, request_id: &MessageId) -> Result<Option<Vec<DataResponse>>> {
        let Some(bytes) = self.received.get(request_id.as_bytes())? else {
            return Ok(None);
        };
        let list =
            mim4_proto::v1::ReceivedData::decode(bytes.as_ref()).map_err(|e| Error::Corrupt {
                tree: "received",
                reason: e.to_string(),
            })?;
        list.responses
            .into_iter()
            .map(|r| {
                wire::data_response_from_pb(r).map_err(|reason| Error::Corrupt {
                    tree: "received",
                    reason,
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// Stores the responses received for a request (each value keeps its consent id).
    pub fn put_received(&self, request_id: &MessageId, responses: &[DataResponse]) -> Result<()> {
        let list = mim4_proto::v1::ReceivedData {
            responses: responses.iter().map(wire::data_response_to_pb).collect(),
        };
        self.received
            .insert(request_id.as_bytes(), list.encode_to_vec())?;
        Ok(())
    }

    /// Records a data request's state: `side` is `requester` or `holder`,
    /// `state` one of requested, authorised, fulfilled, denied, failed.
    pub fn set_request_state(
        &self,
        side: &str,
        request_id: &MessageId,
        state: RequestState,
        at_ms: u64,
    ) -> Result<()> {
        let mut key = side.as_bytes().to_vec();
        key.push(0);
        key.extend_from_slice(request_id.as_bytes());
        self.request_states.insert(key, encode(&(state, at_ms))?)?;
        Ok(())
    }

    /// A data request's last recorded state and when it was recorded.
    pub fn request_state(
        &self,
        side: &str,
        request_id: &MessageId,
    ) -> Result<Option<(RequestState, u64)>> {
        let mut key = side.as_bytes().to_vec();
        key.push(0);
        key.extend_from_slice(request_id.as_bytes());
        self.request_states
            .get(key)?
            .map(|bytes| decode("request_states", &bytes))
            .transpose()
    }

    /// The tree of the built-in registry data source.
    pub fn registry_tree(&self) -> Result<sled::Tree> {
        Ok(self.db.open_tree("registry")?)
    }
}

fn decode_response(tree: &'static str, bytes: &[u8]) -> Result<DataResponse> {
    let raw = mim4_proto::v1::DataResponse::decode(bytes).map_err(|e| Error::Corrupt {
        tree,
        reason: e.to_string(),
    })?;
    wire::data_response_from_pb(raw).map_err(|reason| Error::Corrupt { tree, reason })
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    postcard::to_stdvec(value).map_err(|e| Error::Corrupt {
        tree: "encode",
        reason: e.to_string(),
    })
}

fn decode<T: for<'de> Deserialize<'de>>(tree: &'static str, bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| Error::Corrupt {
        tree,
        reason: e.to_string(),
    })
}

fn check_digest(tree: &'static str, bytes: &[u8], expected: &[u8; 32]) -> Result<()> {
    let actual: [u8; 32] = Sha256::digest(bytes).into();
    if &actual == expected {
        Ok(())
    } else {
        Err(Error::Corrupt {
            tree,
            reason: "envelope digest does not match (data altered on disk)".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot that sled was still writing when the process was killed (an
    /// empty `snap.*.generating` file) no longer keeps the database from
    /// opening, and what was flushed before is still there.
    #[test]
    fn opens_after_a_kill_during_snapshot_writing() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.set_trust_list(b"list").unwrap();
            store.flush_blocking().unwrap();
        }
        std::fs::write(dir.path().join("snap.7FFFFFFFFFFFFFFF.generating"), b"").unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.trust_list().unwrap().as_deref(), Some(&b"list"[..]));
        assert!(!dir.path().join("snap.7FFFFFFFFFFFFFFF.generating").exists());
    }
}
