//! Persistence on sled behind a narrow interface.
//!
//! Trees:
//! - `trust`: the current signed trust list (key `current`);
//! - `seen`: message id → what was applied (the replay window and the stored receipt);
//! - `seen_expiry`: `expires_at_ms ‖ message id` → (), to prune `seen` in order;
//! - `inbox`: sequence number → received message (sealed, see below);
//! - `outbox`: message id → outgoing message with its delivery state (sealed);
//! - `consents`: consent id → the record's signed event log;
//! - `delegations`: delegation id → who may act for whom;
//! - `consent_deliveries`: consent id ‖ operator → the latest push of the record to that party;
//! - `served`: requester ‖ request id → the data response this holder gave (idempotency);
//! - `received`: request id → the responses this requester received, each value with its consent id;
//! - `request_states`: side ‖ request id → the request's state and when it changed;
//! - `registry`: the built-in data source (see `sources::registry`);
//! - `subject_keys`: subject hash → the subject's wrapped data key (see [`at_rest`]);
//! - `subject_records`: subject hash ‖ tree tag ‖ record key → (), every
//!   record sealed under the subject's data key (in `served`, `received`,
//!   `consents`, `delegations`, `inbox`, `outbox`), for erasure.
//!
//! # Encryption at rest
//! Everything about one citizen is stored encrypted with the subject's data
//! key ([`at_rest`]): the registry's values, the `served` and `received`
//! responses, consent logs (under their subject's key), delegations (under
//! their principal's), and inbox and outbox entries about one subject (consent
//! offers and records). Such a value starts with the subject hash, so that a
//! read finds the key; registry keys carry the subject hash instead of the
//! subject id. [`Store::erase_subject`] deletes a subject's key and records
//! and rotates the keyring, after which no file of the data directory holds
//! anything that decrypts the subject's old copies (sled keeps those until
//! compaction). Other messages (memos, trust-list updates) and the replay
//! entries (`seen`: sender, digests, receipt) are sealed under a messages key
//! derived from the storage key. In clear: keys of every tree (ids, sequence
//! numbers, operator ids, subject hashes), the trust list (public), the
//! delivery records of consents and the data requests' states (ids, operator
//! ids, states and times: no subject id, no values).
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

pub mod at_rest;

pub use at_rest::{StorageKey, SubjectHash, Vault, WriterGuard};

use crate::core::consent::delegation::{Delegation, DelegationKind};
use crate::core::consent::{ConsentId, ConsentLog, SubjectId};
use crate::core::delivery::Applied;
use crate::core::exchange::DataResponse;
use crate::core::ids::{MessageId, OperatorId};
use crate::core::wire;
use prost::Message as _;
use zeroize::Zeroizing;

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
    /// Keys of encryption at rest: wrong storage key, older database, corrupt key material.
    #[error(transparent)]
    AtRest(#[from] at_rest::Error),
    /// The database was written by an older version in another format (one
    /// that kept consent logs, delegations or messages in clear, or sealed
    /// them differently).
    #[error(
        "the database in {dir} was written by an older mim4-node in storage format {found} \
         (this one writes {}: consent logs, delegations and messages sealed, messages about a \
         citizen under the citizen's key); move it away and let the node create a new one",
        String::from_utf8_lossy(FORMAT)
    )]
    OldFormat {
        /// The data directory.
        dir: String,
        /// The format marker found (`none` before markers).
        found: String,
    },
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
    registry: sled::Tree,
    subject_records: sled::Tree,
    vault: Vault,
    /// Seals the values of `inbox` and `outbox` ([`at_rest::StorageKey::messages_key`]).
    messages_key: Arc<at_rest::DataKey>,
    counters: Arc<Counters>,
    group: Arc<GroupCommit>,
}

/// Which key seals an inbox or outbox entry.
enum Sealing {
    /// The messages key: a message about no one citizen.
    Node,
    /// A subject's data key: a message about that subject (a consent notice).
    Subject(SubjectHash, at_rest::DataKey),
}

impl Sealing {
    /// The `subject_records` entry of a message sealed this way, if any.
    fn index(&self, tag: u8, key: &[u8]) -> Option<Vec<u8>> {
        match self {
            Sealing::Node => None,
            Sealing::Subject(hash, _) => Some(record_index_key(hash, tag, key)),
        }
    }
}

/// Group commit: a writer bumps `written`, then waits until a flush that
/// started after its write has finished.
#[derive(Debug, Default)]
struct GroupCommit {
    written: AtomicU64,
    flushed: AtomicU64,
    /// Held by the flush in progress, inside its blocking task (so also by
    /// one whose caller stopped waiting), until that task let go of the database.
    lock: Arc<tokio::sync::Mutex<()>>,
}

const TRUST_KEY: &[u8] = b"current";
/// The storage format this version writes, kept under the key `format`.
const FORMAT: &[u8] = b"sealed-2";
/// Header of an inbox or outbox entry sealed under the messages key.
const SEALED_BY_NODE: u8 = 0;
/// Header of an inbox or outbox entry sealed under its subject's data key.
const SEALED_BY_SUBJECT: u8 = 1;

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
            tracing::warn!(
                file = %entry.path().display(),
                "removed a sled snapshot left unfinished by a crash"
            );
            removed += 1;
        }
    }
    Ok(removed)
}

impl Store {
    /// Opens (or creates) the database in `dir`, whose records are encrypted
    /// under `key` (see [`at_rest`]). A database from a version without
    /// encryption at rest is refused ([`at_rest::Error::OlderVersion`]).
    pub fn open(dir: &Path, key: &StorageKey) -> Result<Self> {
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
        let vault = Vault::open(&db, dir, key)?;
        let messages_key = Arc::new(key.messages_key()?);
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
            registry: db.open_tree("registry")?,
            subject_records: db.open_tree("subject_records")?,
            vault,
            messages_key,
            db,
            counters: Arc::new(Counters::default()),
            group: Arc::new(GroupCommit::default()),
        };
        store.check_format(dir)?;
        store.rebuild_counters()?;
        Ok(store)
    }

    /// Refuses a database written in another format ([`FORMAT`]: consent
    /// logs, delegations or messages in clear, or sealed differently), and
    /// marks a new or empty one.
    fn check_format(&self, dir: &Path) -> Result<()> {
        const FORMAT_KEY: &[u8] = b"format";
        let found = self.db.get(FORMAT_KEY)?;
        if found.as_deref() == Some(FORMAT) {
            return Ok(());
        }
        let written = [
            &self.consents,
            &self.delegations,
            &self.inbox,
            &self.outbox,
            &self.seen,
        ];
        if written.iter().any(|tree| !tree.is_empty()) {
            return Err(Error::OldFormat {
                dir: dir.display().to_string(),
                found: found.map_or_else(
                    || "none".to_owned(),
                    |f| String::from_utf8_lossy(&f).into_owned(),
                ),
            });
        }
        self.db.insert(FORMAT_KEY, FORMAT)?;
        self.db.flush()?;
        Ok(())
    }

    /// Counts the inbox and the outbox by state (at open, and after an erasure).
    fn rebuild_counters(&self) -> Result<()> {
        let c = &self.counters;
        let (mut pending, mut delivered, mut expired) = (0, 0, 0);
        for item in self.outbox.iter() {
            let (key, value) = item?;
            let Some((outgoing, _)) = self.open_message::<Outgoing>("outbox", &key, &value)? else {
                continue;
            };
            *match outgoing.state {
                OutgoingState::Pending => &mut pending,
                OutgoingState::Delivered => &mut delivered,
                OutgoingState::Expired => &mut expired,
            } += 1;
        }
        c.received.store(self.inbox.len() as u64, Ordering::Relaxed);
        c.pending.store(pending, Ordering::Relaxed);
        c.delivered.store(delivered, Ordering::Relaxed);
        c.expired.store(expired, Ordering::Relaxed);
        Ok(())
    }

    /// Makes every write made before this call durable. Concurrent callers
    /// share one flush. Cancel-safe: dropping the future loses no data, it only
    /// stops waiting.
    pub async fn durable(&self) -> Result<()> {
        let mine = self.group.written.fetch_add(1, Ordering::AcqRel) + 1;
        let guard = self.group.lock.clone().lock_owned().await;
        if self.group.flushed.load(Ordering::Acquire) >= mine {
            return Ok(());
        }
        // Everything written up to here is covered by this flush.
        let target = self.group.written.load(Ordering::Acquire);
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let flushed = db.flush();
            drop(db);
            drop(guard);
            flushed
        })
        .await
        .map_err(|e| Error::Flush(e.to_string()))??;
        self.group.flushed.store(target, Ordering::Release);
        Ok(())
    }

    /// Waits until no flush task is running: a flush started by a caller
    /// that stopped waiting (a request cancelled at shutdown) still holds the
    /// database, and with it sled's lock on the directory, until it ends.
    pub async fn idle(&self) {
        drop(self.group.lock.lock().await);
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
        let plain = self
            .messages_key
            .open(&message_aad("seen", id.as_bytes()), &value)
            .map_err(|_| undecryptable("seen"))?;
        let seen: Seen = decode("seen", &plain)?;
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
    /// A message about one `subject` (a consent notice) is sealed under that
    /// subject's data key, so erasing the subject erases it too.
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
        subject: Option<&SubjectId>,
    ) -> Result<Option<u64>> {
        // Sequence numbers start at 1 so that `after_seq = 0` means "from the start".
        let seq = self.db.generate_id()?.saturating_add(1);
        let seen = Zeroizing::new(encode(&Seen {
            sender: sender.clone(),
            body_sha256,
            applied_at_ms,
            expires_at_ms,
            receipt: receipt.to_vec(),
        })?);
        let seen = self
            .messages_key
            .seal(&message_aad("seen", id.as_bytes()), &seen)?;
        let (_writer, sealing) = self.sealing_for(subject)?;
        let index = sealing.index(TAG_INBOX, &seq.to_be_bytes());
        let incoming = self.seal_message(
            "inbox",
            &seq.to_be_bytes(),
            &sealing,
            &Incoming {
                seq,
                message_id: id,
                sender: sender.clone(),
                received_at_ms: applied_at_ms,
                envelope: envelope.to_vec(),
                envelope_sha256: Sha256::digest(envelope).into(),
            },
        )?;
        let mut expiry_key = expires_at_ms.to_be_bytes().to_vec();
        expiry_key.extend_from_slice(id.as_bytes());
        let trees = (
            &self.seen,
            &self.seen_expiry,
            &self.inbox,
            &self.trust,
            &self.subject_records,
        );
        let outcome = trees.transaction(
            |(seen_tree, expiry_tree, inbox_tree, trust_tree, index_tree)| {
                if seen_tree.get(id.as_bytes())?.is_some() {
                    return Ok(None);
                }
                seen_tree.insert(id.as_bytes().as_slice(), seen.as_slice())?;
                expiry_tree.insert(expiry_key.as_slice(), &[][..])?;
                inbox_tree.insert(&seq.to_be_bytes(), incoming.as_slice())?;
                if let Some(index) = &index {
                    index_tree.insert(index.as_slice(), &[][..])?;
                }
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
        for item in self.inbox.range(start..) {
            if out.len() == limit {
                break;
            }
            let (key, value) = item?;
            let Some((incoming, _)) = self.open_message::<Incoming>("inbox", &key, &value)? else {
                continue;
            };
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

    /// Stores a new outgoing message (call [`Store::durable`] before
    /// acknowledging); one about a `subject` is sealed under its data key.
    pub fn enqueue(
        &self,
        id: MessageId,
        outgoing: &Outgoing,
        subject: Option<&SubjectId>,
    ) -> Result<()> {
        debug_assert_eq!(outgoing.state, OutgoingState::Pending);
        let (_writer, sealing) = self.sealing_for(subject)?;
        let sealed = self.seal_message("outbox", id.as_bytes(), &sealing, outgoing)?;
        let index = sealing.index(TAG_OUTBOX, id.as_bytes());
        (&self.outbox, &self.subject_records)
            .transaction(|(outbox, index_tree)| {
                outbox.insert(id.as_bytes().as_slice(), sealed.as_slice())?;
                if let Some(index) = &index {
                    index_tree.insert(index.as_slice(), &[][..])?;
                }
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e| transaction_error("outbox", e))?;
        self.counters.pending.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// One outgoing message (none either if its subject was erased).
    pub fn outgoing(&self, id: &MessageId) -> Result<Option<Outgoing>> {
        let Some(value) = self.outbox.get(id.as_bytes())? else {
            return Ok(None);
        };
        let Some((outgoing, _)) = self.open_message::<Outgoing>("outbox", id.as_bytes(), &value)?
        else {
            return Ok(None);
        };
        check_digest("outbox", &outgoing.envelope, &outgoing.envelope_sha256)?;
        Ok(Some(outgoing))
    }

    /// Every outgoing message still pending (read at start to resume delivery).
    pub fn pending(&self) -> Result<Vec<(MessageId, Outgoing)>> {
        let mut out = Vec::new();
        for item in self.outbox.iter() {
            let (key, value) = item?;
            let Some((outgoing, _)) = self.open_message::<Outgoing>("outbox", &key, &value)? else {
                continue;
            };
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
            if let Some((outgoing, _)) = self.open_message("outbox", &key, &value)? {
                out.push((id, outgoing));
            }
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
        let mut failed = None;
        // The closure may run more than once (compare-and-swap); an entry it
        // cannot read or reseal is left exactly as it was.
        self.outbox.fetch_and_update(id.as_bytes(), |old| {
            (before_state, after, failed) = (None, None, None);
            let old = old?;
            let changed = self
                .open_message::<Outgoing>("outbox", id.as_bytes(), old)
                .and_then(|opened| {
                    let Some((mut outgoing, sealing)) = opened else {
                        return Ok(None);
                    };
                    let before = outgoing.state;
                    change(&mut outgoing);
                    let bytes = self.seal_message("outbox", id.as_bytes(), &sealing, &outgoing)?;
                    Ok(Some((before, outgoing, bytes)))
                });
            match changed {
                Ok(Some((before, outgoing, bytes))) => {
                    (before_state, after) = (Some(before), Some(outgoing));
                    Some(bytes)
                }
                Ok(None) => Some(old.to_vec()),
                Err(e) => {
                    failed = Some(e);
                    Some(old.to_vec())
                }
            }
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        if let (Some(before), Some(after)) = (before_state, &after) {
            if before != after.state {
                self.counter(before).fetch_sub(1, Ordering::Relaxed);
                self.counter(after.state).fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(after)
    }

    /// The sealing of a new inbox or outbox entry about `subject` (creating
    /// its data key if needed), with the vault's writer lock for a subject:
    /// hold it until the entry is written, so an erasure cannot come between.
    fn sealing_for(
        &self,
        subject: Option<&SubjectId>,
    ) -> Result<(Option<WriterGuard<'_>>, Sealing)> {
        let Some(subject) = subject else {
            return Ok((None, Sealing::Node));
        };
        let writer = self.vault.writer();
        let hash = self.vault.hash(subject);
        let data_key = self.vault.data_key_or_create(&writer, &hash)?;
        Ok((Some(writer), Sealing::Subject(hash, data_key)))
    }

    /// Encodes and seals an inbox or outbox entry, bound to its tree and key:
    /// `SEALED_BY_NODE ‖ sealed under the messages key`, or, for a message
    /// about one subject, `SEALED_BY_SUBJECT ‖ subject hash ‖ sealed under
    /// the subject's data key`. The caller writes the `subject_records` entry.
    fn seal_message<T: Serialize>(
        &self,
        tree: &str,
        key: &[u8],
        sealing: &Sealing,
        value: &T,
    ) -> Result<Vec<u8>> {
        let plain = Zeroizing::new(encode(value)?);
        Ok(match sealing {
            Sealing::Node => {
                let mut sealed = vec![SEALED_BY_NODE];
                sealed.extend(self.messages_key.seal(&message_aad(tree, key), &plain)?);
                sealed
            }
            Sealing::Subject(hash, data_key) => {
                let mut sealed = vec![SEALED_BY_SUBJECT];
                sealed.extend_from_slice(hash.as_bytes());
                sealed.extend(data_key.seal(&record_aad(tree, key, hash), &plain)?);
                sealed
            }
        })
    }

    /// Opens and decodes an inbox or outbox entry sealed by
    /// [`Store::seal_message`], with its sealing; `None` if it was sealed for
    /// a subject whose data key is gone (erased).
    fn open_message<T: for<'de> Deserialize<'de>>(
        &self,
        tree: &'static str,
        key: &[u8],
        sealed: &[u8],
    ) -> Result<Option<(T, Sealing)>> {
        let (sealing, plain) = match sealed.split_first() {
            Some((&SEALED_BY_NODE, rest)) => (
                Sealing::Node,
                self.messages_key
                    .open(&message_aad(tree, key), rest)
                    .map_err(|_| undecryptable(tree))?,
            ),
            Some((&SEALED_BY_SUBJECT, rest)) => {
                let (hash, rest) = rest.split_first_chunk::<32>().ok_or(Error::Corrupt {
                    tree,
                    reason: "entry shorter than a subject hash".into(),
                })?;
                let hash = SubjectHash(*hash);
                let Some(data_key) = self.vault.data_key(&hash)? else {
                    return Ok(None);
                };
                let plain = data_key
                    .open(&record_aad(tree, key, &hash), rest)
                    .map_err(|_| undecryptable(tree))?;
                (Sealing::Subject(hash, data_key), plain)
            }
            _ => {
                return Err(Error::Corrupt {
                    tree,
                    reason: "entry has no known sealing header".into(),
                })
            }
        };
        Ok(Some((decode(tree, &plain)?, sealing)))
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
    /// `None` too if its subject was erased.
    pub fn consent_log(&self, id: &ConsentId) -> Result<Option<ConsentLog>> {
        let Some(sealed) = self.consents.get(id.as_bytes())? else {
            return Ok(None);
        };
        let Some(bytes) = self.open_record(TAG_CONSENT, id.as_bytes(), &sealed)? else {
            return Ok(None);
        };
        wire::decode_consent_log(&bytes)
            .map(Some)
            .map_err(|e| Error::Corrupt {
                tree: "consents",
                reason: e.to_string(),
            })
    }

    /// Stores a record's signed log, encrypted under its `subject`'s data key
    /// (call [`Store::durable`] before acknowledging).
    pub fn put_consent_log(&self, log: &ConsentLog, subject: &SubjectId) -> Result<()> {
        let plain = Zeroizing::new(wire::encode_consent_log(log));
        self.put_record(TAG_CONSENT, log.consent_id.as_bytes(), subject, &plain)
    }

    /// Every stored log (read at start to build the decision index), but
    /// those of erased subjects.
    pub fn consent_logs(&self) -> Result<Vec<ConsentLog>> {
        let mut out = Vec::new();
        for item in self.consents.iter() {
            let (key, sealed) = item?;
            let Some(bytes) = self.open_record(TAG_CONSENT, &key, &sealed)? else {
                continue;
            };
            out.push(
                wire::decode_consent_log(&bytes).map_err(|e| Error::Corrupt {
                    tree: "consents",
                    reason: e.to_string(),
                })?,
            );
        }
        Ok(out)
    }

    /// Stores a delegation, encrypted under its principal's data key.
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
        let plain = Zeroizing::new(encode(&stored)?);
        self.put_record(TAG_DELEGATION, d.id.as_bytes(), &d.principal, &plain)
    }

    /// Every stored delegation, but those of erased principals.
    pub fn delegations(&self) -> Result<Vec<Delegation>> {
        let corrupt = |reason: String| Error::Corrupt {
            tree: "delegations",
            reason,
        };
        let mut out = Vec::new();
        for item in self.delegations.iter() {
            let (key, sealed) = item?;
            let Some(bytes) = self.open_record(TAG_DELEGATION, &key, &sealed)? else {
                continue;
            };
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
    /// The response already given to `requester` for `request_id` (none
    /// either if there is none or if its subject was erased).
    pub fn served(
        &self,
        requester: &OperatorId,
        request_id: &MessageId,
    ) -> Result<Option<DataResponse>> {
        let key = served_key(requester, request_id);
        let Some(sealed) = self.served.get(&key)? else {
            return Ok(None);
        };
        self.open_record(TAG_SERVED, &key, &sealed)?
            .map(|bytes| decode_response("served", &bytes))
            .transpose()
    }

    /// Stores the response given to `requester` about `subject`, encrypted
    /// with the subject's data key (call [`Store::durable`] before sending it).
    pub fn put_served(
        &self,
        requester: &OperatorId,
        subject: &SubjectId,
        response: &DataResponse,
    ) -> Result<()> {
        let key = served_key(requester, &response.request_id);
        let plain = Zeroizing::new(wire::data_response_to_pb(response).encode_to_vec());
        self.put_record(TAG_SERVED, &key, subject, &plain)
    }

    /// The responses received for a request made by this node (none either if
    /// there are none or if their subject was erased).
    pub fn received(&self, request_id: &MessageId) -> Result<Option<Vec<DataResponse>>> {
        let Some(sealed) = self.received.get(request_id.as_bytes())? else {
            return Ok(None);
        };
        let Some(bytes) = self.open_record(TAG_RECEIVED, request_id.as_bytes(), &sealed)? else {
            return Ok(None);
        };
        let list =
            mim4_proto::v1::ReceivedData::decode(bytes.as_slice()).map_err(|e| Error::Corrupt {
                tree: "received",
                reason: e.to_string(),
            })?;
        list.responses
            .into_iter()
            .map(|r| {
                wire::data_response_from_pb(r).map_err(|e| Error::Corrupt {
                    tree: "received",
                    reason: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// Stores the responses received for a request about `subject` (each
    /// value keeps its consent id), encrypted with the subject's data key.
    pub fn put_received(
        &self,
        request_id: &MessageId,
        subject: &SubjectId,
        responses: &[DataResponse],
    ) -> Result<()> {
        let list = mim4_proto::v1::ReceivedData {
            responses: responses.iter().map(wire::data_response_to_pb).collect(),
        };
        let plain = Zeroizing::new(list.encode_to_vec());
        self.put_record(TAG_RECEIVED, request_id.as_bytes(), subject, &plain)
    }

    /// The tree a record tag names.
    fn record_tree(&self, tag: u8) -> Result<(&'static str, &sled::Tree)> {
        match tag {
            TAG_SERVED => Ok(("served", &self.served)),
            TAG_RECEIVED => Ok(("received", &self.received)),
            TAG_CONSENT => Ok(("consents", &self.consents)),
            TAG_DELEGATION => Ok(("delegations", &self.delegations)),
            TAG_INBOX => Ok(("inbox", &self.inbox)),
            TAG_OUTBOX => Ok(("outbox", &self.outbox)),
            _ => Err(Error::Corrupt {
                tree: "subject_records",
                reason: format!("unknown tree tag {tag}"),
            }),
        }
    }

    /// Writes `plain` encrypted under `subject`'s data key as `key` of the
    /// tagged tree, with its `subject_records` entry, in one transaction.
    fn put_record(&self, tag: u8, key: &[u8], subject: &SubjectId, plain: &[u8]) -> Result<()> {
        let (name, tree) = self.record_tree(tag)?;
        let hash = self.vault.hash(subject);
        let writer = self.vault.writer();
        let data_key = self.vault.data_key_or_create(&writer, &hash)?;
        let mut sealed = hash.as_bytes().to_vec();
        sealed.extend_from_slice(&data_key.seal(&record_aad(name, key, &hash), plain)?);
        let index = record_index_key(&hash, tag, key);
        (tree, &self.subject_records)
            .transaction(|(tree, index_tree)| {
                tree.insert(key, sealed.as_slice())?;
                index_tree.insert(index.as_slice(), &[][..])?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e| transaction_error(name, e))?;
        Ok(())
    }

    /// Decrypts a record of the tagged tree; `None` if its subject's data key
    /// is gone (erased).
    fn open_record(
        &self,
        tag: u8,
        key: &[u8],
        sealed: &[u8],
    ) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let (name, _) = self.record_tree(tag)?;
        let corrupt = |reason: &str| Error::Corrupt {
            tree: name,
            reason: reason.into(),
        };
        let (hash, ciphertext) = sealed
            .split_first_chunk::<32>()
            .ok_or_else(|| corrupt("record shorter than a subject hash"))?;
        let hash = SubjectHash(*hash);
        let Some(data_key) = self.vault.data_key(&hash)? else {
            return Ok(None);
        };
        data_key
            .open(&record_aad(name, key, &hash), ciphertext)
            .map(Some)
            .map_err(|_| corrupt("record does not decrypt (altered on disk)"))
    }

    /// Erases a subject: deletes its wrapped data key, its registry entries
    /// and its `served` and `received` records in one transaction, flushes,
    /// then rotates the keyring ([`Vault::rotate`]) and flushes again. Once it
    /// returns, no file of the data directory holds the subject's values in
    /// clear (they never were) nor a key that decrypts the copies sled may
    /// still keep of its records and wrapped key. Blocking (flushes; rewraps
    /// every data key): call it from `spawn_blocking` in async code.
    ///
    /// Its consent logs, the delegations it gave and the inbox and outbox
    /// messages about it are deleted with them: they are sealed under its data
    /// key (the consents' subject, the delegations' principal), so their old
    /// copies are unreadable too. A pending message about the subject is thus
    /// no longer delivered (the delivery loop finds it gone).
    pub fn erase_subject(&self, subject: &SubjectId) -> Result<Erasure> {
        let hash = self.vault.hash(subject);
        let writer = self.vault.writer();
        let registry_keys = self
            .registry
            .scan_prefix(hash.as_bytes())
            .keys()
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let records = self
            .subject_records
            .scan_prefix(hash.as_bytes())
            .keys()
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut targets = Vec::with_capacity(records.len());
        for index in &records {
            let (tag, key) = index
                .get(32..)
                .and_then(<[u8]>::split_first)
                .ok_or_else(|| Error::Corrupt {
                    tree: "subject_records",
                    reason: "entry shorter than a subject hash and a tag".into(),
                })?;
            self.record_tree(*tag)?;
            targets.push((*tag, key.to_vec()));
        }
        let had_key = (
            self.vault.keys_tree(),
            &self.subject_records,
            &self.served,
            &self.received,
            &self.registry,
            &self.consents,
            &self.delegations,
            &self.inbox,
            &self.outbox,
        )
            .transaction(
                |(
                    keys,
                    index,
                    served,
                    received,
                    registry,
                    consents,
                    delegations,
                    inbox,
                    outbox,
                )| {
                    let had_key = keys.remove(hash.as_bytes().as_slice())?.is_some();
                    for (entry, (tag, key)) in records.iter().zip(&targets) {
                        index.remove(entry)?;
                        let tree = match *tag {
                            TAG_SERVED => served,
                            TAG_RECEIVED => received,
                            TAG_CONSENT => consents,
                            TAG_INBOX => inbox,
                            TAG_OUTBOX => outbox,
                            _ => delegations,
                        };
                        tree.remove(key.as_slice())?;
                    }
                    for key in &registry_keys {
                        registry.remove(key)?;
                    }
                    Ok::<_, ConflictableTransactionError<()>>(had_key)
                },
            )
            .map_err(|e| transaction_error("subject_keys", e))?;
        self.db.flush()?;
        self.rebuild_counters()?;
        let rewrapped = self.vault.rotate(&writer)?;
        self.db.flush()?;
        Ok(Erasure {
            had_key,
            records: records.len(),
            registry_entries: registry_keys.len(),
            keys_rewrapped: rewrapped,
        })
    }

    /// The vault of this database (subject hashes and data keys).
    pub fn vault(&self) -> &Vault {
        &self.vault
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
        Ok(self.registry.clone())
    }
}

/// What [`Store::erase_subject`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Erasure {
    /// The subject had a data key (something was stored about it).
    pub had_key: bool,
    /// Records sealed under the subject's key deleted (`served`, `received`,
    /// consent logs, delegations, inbox and outbox messages).
    pub records: usize,
    /// Registry entries deleted (values and the marker).
    pub registry_entries: usize,
    /// Other subjects' data keys rewrapped under the new epoch.
    pub keys_rewrapped: usize,
}

/// Tag of `served` in `subject_records` keys.
const TAG_SERVED: u8 = b's';
/// Tag of `received` in `subject_records` keys.
const TAG_RECEIVED: u8 = b'r';
/// Tag of the `consents` tree (signed consent logs) in `subject_records`.
const TAG_CONSENT: u8 = b'c';
/// Tag of the `delegations` tree in `subject_records`.
const TAG_DELEGATION: u8 = b'd';
/// Tag of the `inbox` tree (messages about the subject) in `subject_records`.
const TAG_INBOX: u8 = b'i';
/// Tag of the `outbox` tree (messages about the subject) in `subject_records`.
const TAG_OUTBOX: u8 = b'o';

fn undecryptable(tree: &'static str) -> Error {
    Error::Corrupt {
        tree,
        reason: "entry does not decrypt (altered on disk, or another storage key)".into(),
    }
}

fn served_key(requester: &OperatorId, request_id: &MessageId) -> Vec<u8> {
    let mut key = requester.as_str().as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(request_id.as_bytes());
    key
}

/// `subject hash ‖ tag ‖ record key`.
fn record_index_key(hash: &SubjectHash, tag: u8, key: &[u8]) -> Vec<u8> {
    let mut index = hash.as_bytes().to_vec();
    index.push(tag);
    index.extend_from_slice(key);
    index
}

/// Binds a sealed record to its tree, key and subject, so it cannot be moved.
/// Binds a sealed inbox or outbox entry to its tree and key.
fn message_aad(tree: &str, key: &[u8]) -> Vec<u8> {
    let mut aad = b"mim4/at-rest/v1/message/".to_vec();
    aad.extend_from_slice(tree.as_bytes());
    aad.push(0);
    aad.extend_from_slice(key);
    aad
}

fn record_aad(tree: &str, key: &[u8], hash: &SubjectHash) -> Vec<u8> {
    let mut aad = tree.as_bytes().to_vec();
    aad.push(0);
    aad.extend_from_slice(hash.as_bytes());
    aad.extend_from_slice(key);
    aad
}

fn transaction_error(tree: &'static str, e: TransactionError<()>) -> Error {
    match e {
        TransactionError::Storage(e) => Error::Sled(e),
        TransactionError::Abort(()) => Error::Corrupt {
            tree,
            reason: "transaction aborted".into(),
        },
    }
}

fn decode_response(tree: &'static str, bytes: &[u8]) -> Result<DataResponse> {
    let raw = mim4_proto::v1::DataResponse::decode(bytes).map_err(|e| Error::Corrupt {
        tree,
        reason: e.to_string(),
    })?;
    wire::data_response_from_pb(raw).map_err(|e| Error::Corrupt {
        tree,
        reason: e.to_string(),
    })
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

    /// `open`, again while sled's directory lock of a database just dropped
    /// in this process is still held (sled's IO threads end a moment after
    /// its last handle), for up to 10 s.
    fn when_unlocked<T, E: std::fmt::Display>(
        mut open: impl FnMut() -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let start = std::time::Instant::now();
        loop {
            match open() {
                Err(e)
                    if e.to_string().contains("could not acquire lock")
                        && start.elapsed() < std::time::Duration::from_secs(10) =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    /// A snapshot that sled was still writing when the process was killed (an
    /// empty `snap.*.generating` file) no longer keeps the database from
    /// opening, and what was flushed before is still there.
    #[test]
    fn opens_after_a_kill_during_snapshot_writing() {
        let dir = tempfile::tempdir().unwrap();
        let key = StorageKey::generate();
        {
            let store = Store::open(dir.path(), &key).unwrap();
            store.set_trust_list(b"list").unwrap();
            store.flush_blocking().unwrap();
        }
        std::fs::write(dir.path().join("snap.7FFFFFFFFFFFFFFF.generating"), b"").unwrap();
        let store = Store::open(dir.path(), &key).unwrap();
        assert_eq!(store.trust_list().unwrap().as_deref(), Some(&b"list"[..]));
        assert!(!dir.path().join("snap.7FFFFFFFFFFFFFFF.generating").exists());
    }

    /// Occurrences of each needle in every file under `dir` (recursively), and
    /// the bytes scanned.
    fn scan(dir: &Path, needles: &[&[u8]]) -> (Vec<usize>, u64) {
        let mut hits = vec![0; needles.len()];
        let mut scanned = 0;
        let mut folders = vec![dir.to_path_buf()];
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(folder).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    folders.push(path);
                    continue;
                }
                let bytes = std::fs::read(&path).unwrap();
                scanned += bytes.len() as u64;
                for (needle, hits) in needles.iter().zip(&mut hits) {
                    *hits += bytes.windows(needle.len()).filter(|w| w == needle).count();
                }
            }
        }
        (hits, scanned)
    }

    /// Crypto-erasure, checked on the raw files of the data directory: a
    /// subject's values (a random 32-byte marker, in the registry, `served`,
    /// `received`, a consent log, and messages in the inbox and outbox) and its
    /// id (also in a delegation) are never on disk in clear; after
    /// `erase_subject`, a flush and closing the store, the old keyring is in
    /// no file, and the subject's wrapped data key (which sled may still keep
    /// in an old segment) no longer unwraps with the keyring that remains,
    /// while other subjects read as before.
    #[test]
    fn erased_subject_is_unrecoverable_from_the_files() {
        use crate::core::exchange::Released;
        use crate::sources::registry::Registry;
        use crate::sources::{DataSource as _, SourceError};
        use rand::RngCore as _;

        let random_hex = || {
            let mut bytes = [0u8; 16];
            rand::rngs::OsRng.fill_bytes(&mut bytes);
            hex::encode(bytes)
        };
        let marker = random_hex();
        assert_eq!(marker.len(), 32);
        let erased = SubjectId::new(format!("fi:test:erased-{}", random_hex())).unwrap();
        let kept = SubjectId::new(format!("fi:test:kept-{}", random_hex())).unwrap();
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        let key = StorageKey::generate();
        let store = Store::open(&dir, &key).unwrap();
        let registry = Registry::new(store.registry_tree().unwrap(), store.vault().clone());
        let file = serde_json::json!({"subjects": {
            erased.as_str(): {"test.marker": marker, "income.gross_monthly": 3150},
            kept.as_str(): {"test.marker": "kept value"},
        }});
        registry.load_json(&file.to_string()).unwrap();
        let request_id = MessageId::from_bytes([9; 16]);
        let response = DataResponse {
            request_id,
            source: OperatorId::new("fi.helsinki").unwrap(),
            values: vec![Released {
                attribute: crate::core::consent::Attribute::new("test.marker").unwrap(),
                value: serde_json::json!(marker),
                consent_id: ConsentId::from_bytes([1; 16]),
                retrieved_at_ms: 1,
            }],
            answers: vec![],
            withheld: vec![],
        };
        let requester = OperatorId::new("fi.espoo").unwrap();
        store.put_served(&requester, &erased, &response).unwrap();
        store
            .put_received(&request_id, &erased, std::slice::from_ref(&response))
            .unwrap();
        // A consent log about the subject and a delegation it gave: both name
        // it, so both are sealed under its key.
        let consent_id = ConsentId::from_bytes([3; 16]);
        let log = ConsentLog {
            consent_id,
            events: vec![crate::core::consent::SignedEvent {
                body: format!("{} {marker}", erased.as_str()).into_bytes(),
                signature: vec![0; 64],
                key_id: crate::core::keys::KeyId::from_wire("0011223344556677"),
            }],
        };
        store.put_consent_log(&log, &erased).unwrap();
        let delegation = Delegation {
            id: ConsentId::from_bytes([4; 16]),
            principal: erased.clone(),
            agent: kept.clone(),
            kind: DelegationKind::Mandate,
            not_before_ms: 0,
            not_after_ms: u64::MAX,
            revoked: false,
        };
        store.put_delegation(&delegation).unwrap();
        assert_eq!(store.consent_log(&consent_id).unwrap(), Some(log.clone()));
        assert_eq!(store.consent_logs().unwrap(), vec![log]);
        assert_eq!(store.delegations().unwrap(), vec![delegation]);
        // Messages about the subject in the outbox and the inbox (consent
        // logs travel in envelopes) are sealed under its key; a memo to the
        // same peer, about no one, under the messages key.
        let envelope = format!("envelope about {} {marker}", erased.as_str()).into_bytes();
        let memo = b"a memo about no one".to_vec();
        let outgoing = |envelope: &[u8]| Outgoing {
            recipient: requester.clone(),
            envelope: envelope.to_vec(),
            body_sha256: [0; 32],
            envelope_sha256: Sha256::digest(envelope).into(),
            expires_at_ms: u64::MAX,
            state: OutgoingState::Pending,
            attempts: 0,
            last_error: None,
            receipt: None,
        };
        let (sent, sent_memo) = (
            MessageId::from_bytes([5; 16]),
            MessageId::from_bytes([7; 16]),
        );
        store
            .enqueue(sent, &outgoing(&envelope), Some(&erased))
            .unwrap();
        store.enqueue(sent_memo, &outgoing(&memo), None).unwrap();
        for id in [sent, sent_memo] {
            store
                .update_outgoing(&id, |o| o.attempts = 1)
                .unwrap()
                .unwrap();
            assert_eq!(store.outgoing(&id).unwrap().unwrap().attempts, 1);
        }
        assert_eq!(store.pending().unwrap().len(), 2);
        for (id, envelope, subject) in [(6, &envelope, Some(&erased)), (8, &memo, None)] {
            store
                .record_applied(
                    MessageId::from_bytes([id; 16]),
                    &requester,
                    [0; 32],
                    u64::MAX,
                    1,
                    envelope,
                    // The replay entry keeps the receipt: sealed too.
                    format!("receipt {marker}").as_bytes(),
                    None,
                    subject,
                )
                .unwrap()
                .unwrap();
        }
        let received: Vec<_> = store.incoming(0, 10).unwrap();
        assert_eq!(received.len(), 2);
        assert_eq!(received[0].envelope, envelope);
        assert_eq!(store.stats().received, 2);
        assert_eq!(store.stats().pending, 2);
        assert_eq!(
            store.served(&requester, &request_id).unwrap(),
            Some(response.clone())
        );
        store.flush_blocking().unwrap();

        let hash = store.vault().hash(&erased);
        let wrapped = store
            .vault()
            .keys_tree()
            .get(hash.as_bytes())
            .unwrap()
            .unwrap()
            .to_vec();
        let old_keyring = std::fs::read(dir.join(at_rest::KEYRING_FILE)).unwrap();
        let needles: [&[u8]; 5] = [
            marker.as_bytes(),
            erased.as_str().as_bytes(),
            &wrapped,
            &old_keyring,
            // Control: attribute names are stored in clear, so the scan does find plaintext.
            b"test.marker",
        ];
        let (before, scanned_before) = scan(&dir, &needles);
        assert_eq!(before[0], 0, "the marker is on disk in clear");
        assert_eq!(before[1], 0, "the subject id is on disk in clear");
        assert!(before[2] >= 1, "the wrapped key is in the files");
        assert_eq!(before[3], 1, "the keyring is one file");
        assert!(before[4] >= 1, "the scan finds plaintext");

        let erasure = store.erase_subject(&erased).unwrap();
        assert_eq!(
            erasure,
            Erasure {
                had_key: true,
                records: 6,
                registry_entries: 3,
                keys_rewrapped: 1,
            }
        );
        assert_eq!((store.stats().received, store.stats().pending), (1, 1));
        store.flush_blocking().unwrap();
        drop(registry);
        drop(store);

        let (after, scanned_after) = scan(&dir, &needles);
        eprintln!(
            "raw scan of {}: before erasure {scanned_before} bytes, hits (marker, subject id, \
             wrapped key, keyring, control) = {before:?}; after erasure and close \
             {scanned_after} bytes, hits = {after:?}",
            dir.display()
        );
        assert_eq!(after[0], 0, "the marker is on disk in clear");
        assert_eq!(after[1], 0, "the subject id is on disk in clear");
        assert_eq!(after[3], 0, "the old keyring is still in a file");

        // Whatever copies of the wrapped key sled kept, the keyring that is
        // left (opened with the storage key) does not unwrap it.
        let store = Store::open(&dir, &key).unwrap();
        assert!(!store.vault().can_unwrap(&hash, &wrapped));
        assert!(store.vault().data_key(&hash).unwrap().is_none());
        assert_eq!(store.served(&requester, &request_id).unwrap(), None);
        assert_eq!(store.received(&request_id).unwrap(), None);
        assert_eq!(store.consent_log(&consent_id).unwrap(), None);
        assert!(store.consent_logs().unwrap().is_empty());
        assert!(store.delegations().unwrap().is_empty());
        assert!(store.consents.is_empty() && store.delegations.is_empty());
        // The messages about the subject went with it; the memo stays.
        let received = store.incoming(0, 10).unwrap();
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].envelope, memo);
        let sent = store.all_outgoing().unwrap();
        assert_eq!(sent.len(), 1);
        assert_eq!((sent[0].0, &sent[0].1.envelope), (sent_memo, &memo));
        assert_eq!((store.stats().received, store.stats().pending), (1, 1));
        let registry = Registry::new(store.registry_tree().unwrap(), store.vault().clone());
        let attributes = [crate::core::consent::Attribute::new("test.marker").unwrap()];
        let read = |subject| futures::executor::block_on(registry.read(subject, &attributes));
        assert_eq!(read(&erased), Err(SourceError::UnknownSubject));
        assert_eq!(
            read(&kept).unwrap().values().next(),
            Some(&serde_json::json!("kept value"))
        );
        // Nothing of the subject is left in the trees.
        assert!(store.registry.scan_prefix(hash.as_bytes()).next().is_none());
        assert!(store
            .subject_records
            .scan_prefix(hash.as_bytes())
            .next()
            .is_none());
    }

    /// A database whose consent logs were written in clear (by a version
    /// before they were sealed) or in the previous sealed format is refused
    /// with an error that says so; a new one is marked and opens again.
    #[test]
    fn databases_of_older_formats_are_refused() {
        let key = StorageKey::generate();
        for marker in [None, Some(&b"sealed-consents-messages-1"[..])] {
            let dir = tempfile::tempdir().unwrap();
            drop(Store::open(dir.path(), &key).unwrap());
            drop(when_unlocked(|| Store::open(dir.path(), &key)).unwrap());
            {
                let db = when_unlocked(|| sled::open(dir.path())).unwrap();
                match marker {
                    None => db.remove(b"format").unwrap(),
                    Some(marker) => db.insert(b"format", marker).unwrap(),
                };
                db.open_tree("consents")
                    .unwrap()
                    .insert([1u8; 16], b"a log in clear".as_slice())
                    .unwrap();
                db.flush().unwrap();
            }
            let Err(err) = when_unlocked(|| Store::open(dir.path(), &key)) else {
                panic!("opened a database of format {marker:?}");
            };
            let Error::OldFormat { found, .. } = &err else {
                panic!("{err}");
            };
            let expected = marker.map_or("none".into(), |m| String::from_utf8_lossy(m));
            assert_eq!(found.as_str(), expected);
            assert!(err.to_string().contains("older mim4-node"), "{err}");
        }
    }

    /// A database written before encryption at rest (data, no keyring) is
    /// refused with an error that says to re-create it; another storage key is
    /// refused too.
    #[test]
    fn older_database_or_other_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            db.open_tree("trust")
                .unwrap()
                .insert(TRUST_KEY, b"list")
                .unwrap();
            db.flush().unwrap();
        }
        let err = Store::open(dir.path(), &StorageKey::generate()).unwrap_err();
        assert!(
            err.to_string().contains("without encryption at rest"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path(), &StorageKey::generate()).unwrap());
        let err = Store::open(dir.path(), &StorageKey::generate()).unwrap_err();
        assert!(err.to_string().contains("another storage.key"), "{err}");
    }
}
