//! Messages: the replay window (`seen`, `seen_expiry`), the inbox of applied
//! messages and the outbox of messages being delivered.
//!
//! A received message is recorded once, atomically, with its receipt
//! ([`Store::record_applied`]); a sent one is stored before it is
//! acknowledged and updated as delivery goes ([`Store::enqueue`],
//! [`Store::update_outgoing`]). Entries are sealed: a message about one
//! subject (a consent notice) under that subject's data key, so erasing the
//! subject erases it too; any other message and every replay entry under the
//! messages key. Each entry keeps the SHA-256 of its envelope, checked when
//! read back.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use sled::transaction::ConflictableTransactionError;
use sled::Transactional as _;
use zeroize::Zeroizing;

use super::subjects::{record_aad, record_index_key, TAG_INBOX, TAG_OUTBOX};
use super::{
    at_rest, decode, encode, transaction_error, Error, Result, Store, SubjectHash, WriterGuard,
    TRUST_KEY,
};
use crate::core::consent::SubjectId;
use crate::core::delivery::Applied;
use crate::core::ids::{MessageId, OperatorId};

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

/// A message just applied, as [`Store::record_applied`] records it.
#[derive(Clone, Copy, Debug)]
pub struct AppliedMessage<'a> {
    /// The message id (the replay window's key).
    pub message_id: MessageId,
    /// The sender, checked to be the peer it came from.
    pub sender: &'a OperatorId,
    /// SHA-256 of the envelope body (what the receipt quotes).
    pub body_sha256: [u8; 32],
    /// The message's expiry (ms since the epoch): its replay entry is kept
    /// until then.
    pub expires_at_ms: u64,
    /// When it was applied (ms since the epoch).
    pub applied_at_ms: u64,
    /// The encoded `SignedEnvelope` as received (kept in the inbox).
    pub envelope: &'a [u8],
    /// This node's encoded signed receipt (kept with the replay entry, so a
    /// retransmission is answered with it).
    pub receipt: &'a [u8],
    /// For a trust-list update: the new signed list, stored in the same
    /// transaction.
    pub new_trust_list: Option<&'a [u8]>,
    /// The subject the message is about (a consent notice), whose data key
    /// seals its inbox entry; `None` for a message about no one citizen.
    pub subject: Option<&'a SubjectId>,
}

/// A replay entry: what was applied under one message id, and the receipt
/// given for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Seen {
    pub(super) sender: OperatorId,
    pub(super) body_sha256: [u8; 32],
    pub(super) applied_at_ms: u64,
    pub(super) expires_at_ms: u64,
    pub(super) receipt: Vec<u8>,
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

/// Header of an inbox or outbox entry sealed under the messages key.
const SEALED_BY_NODE: u8 = 0;
/// Header of an inbox or outbox entry sealed under its subject's data key.
const SEALED_BY_SUBJECT: u8 = 1;

impl Store {
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
    /// A message about one subject (a consent notice) is sealed under that
    /// subject's data key, so erasing the subject erases it too.
    /// Returns `None` if the id was applied concurrently (the caller answers
    /// with the stored receipt). Not yet durable: call [`Store::durable`].
    pub fn record_applied(&self, message: AppliedMessage<'_>) -> Result<Option<u64>> {
        let AppliedMessage {
            message_id: id,
            sender,
            body_sha256,
            expires_at_ms,
            applied_at_ms,
            envelope,
            receipt,
            new_trust_list,
            subject,
        } = message;
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
        let outcome = trees
            .transaction(
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
            )
            .map_err(|e| transaction_error("seen", e))?;
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
                out.push((outbox_id(&key)?, outgoing));
            }
        }
        Ok(out)
    }

    /// Every outgoing message, in id order (for offline checks and export).
    pub fn all_outgoing(&self) -> Result<Vec<(MessageId, Outgoing)>> {
        let mut out = Vec::new();
        for item in self.outbox.iter() {
            let (key, value) = item?;
            let id = outbox_id(&key)?;
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

    // -- counters and sealing -----------------------------------------------

    /// Counts the inbox and the outbox by state (at open, and after an erasure).
    pub(super) fn rebuild_counters(&self) -> Result<()> {
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

    fn counter(&self, state: OutgoingState) -> &AtomicU64 {
        match state {
            OutgoingState::Pending => &self.counters.pending,
            OutgoingState::Delivered => &self.counters.delivered,
            OutgoingState::Expired => &self.counters.expired,
        }
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
}

/// The message id an outbox key holds.
fn outbox_id(key: &[u8]) -> Result<MessageId> {
    MessageId::from_slice(key).ok_or_else(|| Error::Corrupt {
        tree: "outbox",
        reason: "key is not a message id".into(),
    })
}

fn undecryptable(tree: &'static str) -> Error {
    Error::Corrupt {
        tree,
        reason: "entry does not decrypt (altered on disk, or another storage key)".into(),
    }
}

/// Binds a sealed replay, inbox or outbox entry to its tree and key.
fn message_aad(tree: &str, key: &[u8]) -> Vec<u8> {
    let mut aad = b"mim4/at-rest/v1/message/".to_vec();
    aad.extend_from_slice(tree.as_bytes());
    aad.push(0);
    aad.extend_from_slice(key);
    aad
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
