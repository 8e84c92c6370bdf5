//! Subjects: records sealed under one citizen's data key, the index of them
//! (`subject_records`), and the erasure of a citizen.
//!
//! A record about a subject (in `served`, `received`, `consents`,
//! `delegations`, and inbox and outbox entries about it) is
//! `subject hash ‖ sealed under the subject's data key`, bound to its tree,
//! key and subject, and is listed in `subject_records` in the same
//! transaction, so [`Store::erase_subject`] finds every one of them without
//! reading the others.

use sled::transaction::ConflictableTransactionError;
use sled::Transactional as _;
use zeroize::Zeroizing;

use super::{transaction_error, Error, Result, Store, SubjectHash};
use crate::core::consent::SubjectId;

/// Tag of `served` in `subject_records` keys.
pub(super) const TAG_SERVED: u8 = b's';
/// Tag of `received` in `subject_records` keys.
pub(super) const TAG_RECEIVED: u8 = b'r';
/// Tag of the `consents` tree (signed consent logs) in `subject_records`.
pub(super) const TAG_CONSENT: u8 = b'c';
/// Tag of the `delegations` tree in `subject_records`.
pub(super) const TAG_DELEGATION: u8 = b'd';
/// Tag of the `inbox` tree (messages about the subject) in `subject_records`.
pub(super) const TAG_INBOX: u8 = b'i';
/// Tag of the `outbox` tree (messages about the subject) in `subject_records`.
pub(super) const TAG_OUTBOX: u8 = b'o';

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

impl Store {
    /// Erases a subject: deletes its wrapped data key, its registry entries
    /// and its `served` and `received` records in one transaction, flushes,
    /// then rotates the keyring ([`Vault::rotate`](super::Vault::rotate)) and flushes again.
    /// Once it returns, no file of the data directory holds the subject's
    /// values in clear (they never were) nor a key that decrypts the copies
    /// sled may still keep of its records and wrapped key. Blocking (flushes;
    /// rewraps every data key): call it from `spawn_blocking` in async code.
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
        let had_key = self.delete_subject(&hash, &records, &targets, &registry_keys)?;
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

    /// Deletes, in one transaction, a subject's wrapped data key, its
    /// `subject_records` entries with the records they name (`targets`: tag
    /// and key of each), and its registry entries; returns whether it had a
    /// data key.
    fn delete_subject(
        &self,
        hash: &SubjectHash,
        records: &[sled::IVec],
        targets: &[(u8, Vec<u8>)],
        registry_keys: &[sled::IVec],
    ) -> Result<bool> {
        (
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
                    for (entry, (tag, key)) in records.iter().zip(targets) {
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
                    for key in registry_keys {
                        registry.remove(key)?;
                    }
                    Ok::<_, ConflictableTransactionError<()>>(had_key)
                },
            )
            .map_err(|e| transaction_error("subject_keys", e))
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
    pub(super) fn put_record(
        &self,
        tag: u8,
        key: &[u8],
        subject: &SubjectId,
        plain: &[u8],
    ) -> Result<()> {
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
    pub(super) fn open_record(
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
}

/// `subject hash ‖ tag ‖ record key`.
pub(super) fn record_index_key(hash: &SubjectHash, tag: u8, key: &[u8]) -> Vec<u8> {
    let mut index = hash.as_bytes().to_vec();
    index.push(tag);
    index.extend_from_slice(key);
    index
}

/// Binds a sealed record to its tree, key and subject, so it cannot be moved.
pub(super) fn record_aad(tree: &str, key: &[u8], hash: &SubjectHash) -> Vec<u8> {
    let mut aad = tree.as_bytes().to_vec();
    aad.push(0);
    aad.extend_from_slice(hash.as_bytes());
    aad.extend_from_slice(key);
    aad
}
