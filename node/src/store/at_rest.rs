//! Encryption at rest: the node storage key, per-subject data keys, and the
//! keyring whose rotation makes an erased subject's old copies unreadable.
//!
//! # Keys
//! - The *storage key* (256 bits, `storage.key` beside `operator.key`, mode
//!   0600) never enters the database directory. Two keys are derived from it
//!   with HMAC-SHA-256 under fixed labels: the *hash key* and the *keyring key*.
//! - The *hash key* turns a subject id into a [`SubjectHash`] (HMAC-SHA-256),
//!   which is what sled keys carry instead of the id: the id itself is
//!   personal data. It is deterministic, so someone holding the storage key
//!   can test whether a guessed id is in the database, but not list the ids.
//! - Each subject has a random 256-bit *data key* that encrypts its records
//!   (XChaCha20-Poly1305, random 192-bit nonces, the record's tree and key as
//!   associated data so a value cannot be moved to another subject or
//!   attribute). Data keys are stored in the `subject_keys` tree, wrapped
//!   (same AEAD) under the current *epoch key*.
//! - The epoch keys live in the `keyring` file of the data directory,
//!   encrypted under the keyring key. Normally it holds one epoch.
//!
//! # Erasure and sled's old copies
//! sled is log-structured: a removed value stays in its files until the
//! segment is reused, so deleting a subject's wrapped data key does not
//! remove it from disk. [`Vault::rotate`] therefore follows every erasure: it
//! adds a new epoch key to the keyring, rewraps every remaining data key under
//! it, flushes, and rewrites the keyring with only the new epoch (a new file
//! renamed over the old one, both synced). The erased subject's key was never
//! wrapped under the new epoch, and the old epoch key is in no file any more,
//! so the copies sled keeps (of the wrapped key and of the records) cannot be
//! decrypted with the storage key and everything left in the directory.
//! This holds at the level of files: blocks the file system freed are not
//! scrubbed, and a backup taken before the erasure still holds the old
//! keyring (the storage key opens it). A crash during a rotation leaves both
//! epochs in the keyring; [`Vault::open`] finishes the rotation.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use sha2::Sha256;
use zeroize::{Zeroize as _, ZeroizeOnDrop, Zeroizing};

use crate::core::consent::SubjectId;

/// Bytes of every key here (storage, derived, epoch and data keys).
pub const KEY_BYTES: usize = 32;
/// Bytes of an XChaCha20-Poly1305 nonce.
const NONCE_BYTES: usize = 24;
/// Bytes of the Poly1305 tag.
const TAG_BYTES: usize = 16;
/// A wrapped data key: epoch (4, big-endian) ‖ nonce ‖ ciphertext of the key ‖ tag.
const WRAPPED_BYTES: usize = 4 + NONCE_BYTES + KEY_BYTES + TAG_BYTES;
/// The keyring file's name in the data directory.
pub const KEYRING_FILE: &str = "keyring";
/// Most epochs a keyring holds: the current one and, during a rotation, the previous one.
const EPOCHS_MAX: usize = 2;

const LABEL_HASH: &[u8] = b"mim4/at-rest/v1/subject-hash";
const LABEL_KEYRING: &[u8] = b"mim4/at-rest/v1/keyring";
const AAD_KEYRING: &[u8] = b"mim4/at-rest/v1/keyring-file";
const AAD_WRAP: &[u8] = b"mim4/at-rest/v1/subject-key";
const LABEL_MESSAGES: &[u8] = b"mim4/at-rest/v1/messages";

/// Errors of encryption at rest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// sled failed.
    #[error("database error: {0}")]
    Sled(#[from] sled::Error),
    /// The keyring file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The keyring does not decrypt with this storage key.
    #[error(
        "{path} does not decrypt with this storage key: the database was created with \
         another storage.key (restore that file)"
    )]
    WrongStorageKey {
        /// The keyring file.
        path: String,
    },
    /// The keyring or a wrapped key is malformed.
    #[error("corrupt key material: {0}")]
    Corrupt(String),
    /// The database holds data but no keyring: written before encryption at rest.
    #[error(
        "the database in {dir} has no keyring: it was created by a version without \
         encryption at rest (or the keyring file was lost); move it away and let the node \
         create a new one"
    )]
    OlderVersion {
        /// The data directory.
        dir: String,
    },
}

/// The node storage key: wraps the keyring and keys the subject hashes.
/// Zeroized on drop; `Debug` never prints it.
#[derive(Clone, ZeroizeOnDrop)]
pub struct StorageKey([u8; KEY_BYTES]);

impl StorageKey {
    /// A new random key.
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// The key with these bytes.
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Self {
        Self(bytes)
    }

    /// The key's bytes, for writing its file only.
    pub fn to_bytes(&self) -> Zeroizing<[u8; KEY_BYTES]> {
        Zeroizing::new(self.0)
    }

    /// The key that seals the inbox and outbox entries (messages carry consent
    /// logs between operators). Derived from the storage key, so it never
    /// enters the data directory; it is not per subject, so erasing a subject
    /// does not shred the messages about it (they expire with their lifetime).
    pub fn messages_key(&self) -> Result<DataKey, Error> {
        Ok(DataKey(*self.derive(LABEL_MESSAGES)?))
    }

    /// HMAC-SHA-256 of `label` under the storage key: a key for one purpose.
    fn derive(&self, label: &[u8]) -> Result<Zeroizing<[u8; KEY_BYTES]>, Error> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .map_err(|e| Error::Corrupt(format!("storage key: {e}")))?;
        mac.update(label);
        Ok(Zeroizing::new(mac.finalize().into_bytes().into()))
    }
}

impl fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StorageKey(<redacted>)")
    }
}

/// A subject id under the node's hash key: what sled keys carry instead of the id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubjectHash(pub [u8; KEY_BYTES]);

impl SubjectHash {
    /// The hash's bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_BYTES] {
        &self.0
    }
}

impl fmt::Debug for SubjectHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A prefix is enough to tell hashes apart in logs and tests.
        write!(f, "SubjectHash({}…)", hex::encode(&self.0[..4]))
    }
}

/// A subject's data key, zeroized on drop.
#[derive(ZeroizeOnDrop)]
pub struct DataKey([u8; KEY_BYTES]);

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

impl DataKey {
    /// Encrypts `plaintext` bound to `aad`: nonce ‖ ciphertext ‖ tag.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        seal(&self.0, aad, plaintext)
    }

    /// Decrypts what [`DataKey::seal`] made with the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        open(&self.0, aad, sealed)
    }
}

fn seal(key: &[u8; KEY_BYTES], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, Error> {
    let mut nonce = [0u8; NONCE_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let cipher = XChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(key));
    let ciphertext = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| Error::Corrupt("encryption failed".into()))?;
    let mut out = Vec::with_capacity(NONCE_BYTES + ciphertext.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

fn open(key: &[u8; KEY_BYTES], aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
    if sealed.len() < NONCE_BYTES + TAG_BYTES {
        return Err(Error::Corrupt("sealed value too short".into()));
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_BYTES);
    let cipher = XChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(key));
    cipher
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| Error::Corrupt("authentication failed".into()))
}

/// Epoch number → epoch key.
type Epochs = BTreeMap<u32, Zeroizing<[u8; KEY_BYTES]>>;

/// Subject hashes, data keys and the keyring of one database.
/// Cheap to clone (shared); `Debug` prints no key.
#[derive(Clone)]
pub struct Vault {
    inner: Arc<Inner>,
}

struct Inner {
    /// The keyring file.
    keyring_path: PathBuf,
    /// Subject hash → wrapped data key.
    keys: sled::Tree,
    /// HMAC-SHA-256 keyed with the hash key, cloned for each hash.
    hasher: Hmac<Sha256>,
    keyring_key: Zeroizing<[u8; KEY_BYTES]>,
    /// The keyring in memory; the highest epoch is the current one.
    epochs: RwLock<Epochs>,
    /// Serialises creating data keys with erasures and rotations, so no key is
    /// created under an epoch that is being retired, and no record is written
    /// for a subject while it is being erased.
    writer: Mutex<()>,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("keyring", &self.inner.keyring_path)
            .finish_non_exhaustive()
    }
}

/// A guard that holds the vault's writer lock.
pub type WriterGuard<'a> = MutexGuard<'a, ()>;

impl Vault {
    /// Opens the vault of the database `db` in `dir`: reads (or, for a new
    /// database, creates) the keyring, and finishes a rotation a crash
    /// interrupted. A database with data but no keyring is refused.
    pub fn open(db: &sled::Db, dir: &Path, key: &StorageKey) -> Result<Self, Error> {
        let keyring_path = dir.join(KEYRING_FILE);
        let keyring_key = key.derive(LABEL_KEYRING)?;
        let hash_key = key.derive(LABEL_HASH)?;
        let hasher = <Hmac<Sha256> as Mac>::new_from_slice(hash_key.as_ref())
            .map_err(|e| Error::Corrupt(format!("hash key: {e}")))?;
        let epochs = match read_keyring(&keyring_path, &keyring_key)? {
            Some(epochs) => epochs,
            None => {
                if holds_data(db)? {
                    return Err(Error::OlderVersion {
                        dir: dir.display().to_string(),
                    });
                }
                let mut first = Zeroizing::new([0u8; KEY_BYTES]);
                rand::rngs::OsRng.fill_bytes(first.as_mut());
                let epochs = Epochs::from([(1, first)]);
                write_keyring(&keyring_path, &keyring_key, &epochs)?;
                epochs
            }
        };
        let vault = Self {
            inner: Arc::new(Inner {
                keyring_path,
                keys: db.open_tree("subject_keys")?,
                hasher,
                keyring_key,
                epochs: RwLock::new(epochs),
                writer: Mutex::new(()),
            }),
        };
        if vault.read_epochs().len() > 1 {
            let _writer = vault.writer();
            vault.finish_rotation()?;
        }
        Ok(vault)
    }

    /// The subject's hash.
    pub fn hash(&self, subject: &SubjectId) -> SubjectHash {
        let mut mac = self.inner.hasher.clone();
        mac.update(subject.as_str().as_bytes());
        SubjectHash(mac.finalize().into_bytes().into())
    }

    /// Takes the writer lock (see [`Inner::writer`]); held by whoever creates
    /// data keys and writes records with them, and by erasure.
    pub fn writer(&self) -> WriterGuard<'_> {
        match self.inner.writer.lock() {
            Ok(guard) => guard,
            // The lock guards no data of its own; a panic while holding it
            // leaves nothing half-done that the next holder must repair.
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn read_epochs(&self) -> std::sync::RwLockReadGuard<'_, Epochs> {
        match self.inner.epochs.read() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn write_epochs(&self) -> std::sync::RwLockWriteGuard<'_, Epochs> {
        match self.inner.epochs.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The subject's data key, if it has one (none: never stored, or erased).
    pub fn data_key(&self, subject: &SubjectHash) -> Result<Option<DataKey>, Error> {
        // A rotation may retire the epoch between reading the wrapped key and
        // looking the epoch up; the second read sees the rewrapped key.
        for _ in 0..2 {
            let Some(wrapped) = self.inner.keys.get(subject.as_bytes())? else {
                return Ok(None);
            };
            match self.unwrap_key(subject, &wrapped) {
                Ok(key) => return Ok(Some(key)),
                Err(UnwrapError::UnknownEpoch(_)) => continue,
                Err(UnwrapError::Other(e)) => return Err(e),
            }
        }
        Err(Error::Corrupt(
            "data key wrapped under a retired epoch".into(),
        ))
    }

    /// The subject's data key, created (under the current epoch) if it has
    /// none. Call it with the [`Vault::writer`] lock held.
    pub fn data_key_or_create(
        &self,
        _writer: &WriterGuard<'_>,
        subject: &SubjectHash,
    ) -> Result<DataKey, Error> {
        if let Some(key) = self.data_key(subject)? {
            return Ok(key);
        }
        let mut bytes = [0u8; KEY_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let key = DataKey(bytes);
        bytes.zeroize();
        let wrapped = self.wrap_key(subject, &key)?;
        self.inner.keys.insert(subject.as_bytes(), wrapped)?;
        Ok(key)
    }

    fn wrap_key(&self, subject: &SubjectHash, key: &DataKey) -> Result<Vec<u8>, Error> {
        let epochs = self.read_epochs();
        let (epoch, epoch_key) = epochs
            .iter()
            .next_back()
            .ok_or_else(|| Error::Corrupt("empty keyring".into()))?;
        let sealed = seal(epoch_key, &wrap_aad(subject, *epoch), &key.0)?;
        let mut out = Vec::with_capacity(WRAPPED_BYTES);
        out.extend_from_slice(&epoch.to_be_bytes());
        out.extend_from_slice(&sealed);
        debug_assert_eq!(out.len(), WRAPPED_BYTES);
        Ok(out)
    }

    fn unwrap_key(&self, subject: &SubjectHash, wrapped: &[u8]) -> Result<DataKey, UnwrapError> {
        let (epoch, sealed) = split_wrapped(wrapped).map_err(UnwrapError::Other)?;
        let epochs = self.read_epochs();
        let epoch_key = epochs.get(&epoch).ok_or(UnwrapError::UnknownEpoch(epoch))?;
        let plain =
            open(epoch_key, &wrap_aad(subject, epoch), sealed).map_err(UnwrapError::Other)?;
        let bytes: [u8; KEY_BYTES] = plain
            .as_slice()
            .try_into()
            .map_err(|_| UnwrapError::Other(Error::Corrupt("data key length".into())))?;
        Ok(DataKey(bytes))
    }

    /// Tries to unwrap `wrapped` as `subject`'s data key with the keyring in
    /// force; `false` if no epoch key in it opens it. For tests and audits of
    /// copies found on disk.
    pub fn can_unwrap(&self, subject: &SubjectHash, wrapped: &[u8]) -> bool {
        self.unwrap_key(subject, wrapped).is_ok()
    }

    /// Deletes the subject's wrapped data key (not yet durable, and its old
    /// copies stay readable until [`Vault::rotate`]).
    pub fn remove_data_key(
        &self,
        _writer: &WriterGuard<'_>,
        subject: &SubjectHash,
    ) -> Result<bool, Error> {
        Ok(self.inner.keys.remove(subject.as_bytes())?.is_some())
    }

    /// The `subject_keys` tree (erasure removes from it in its transaction).
    pub(crate) fn keys_tree(&self) -> &sled::Tree {
        &self.inner.keys
    }

    /// Starts a new epoch, rewraps every data key under it, flushes, and
    /// rewrites the keyring without the old epoch: from then on no file holds
    /// a key that opens a data key wrapped before. Returns how many keys were
    /// rewrapped. Call it with the [`Vault::writer`] lock held, after the
    /// erased keys' removal is durable.
    pub fn rotate(&self, _writer: &WriterGuard<'_>) -> Result<usize, Error> {
        {
            let mut epochs = self.write_epochs();
            let next = epochs
                .keys()
                .next_back()
                .copied()
                .unwrap_or(0)
                .checked_add(1)
                .ok_or_else(|| Error::Corrupt("epoch counter exhausted".into()))?;
            if epochs.len() >= EPOCHS_MAX {
                return Err(Error::Corrupt("rotation started twice".into()));
            }
            let mut key = Zeroizing::new([0u8; KEY_BYTES]);
            rand::rngs::OsRng.fill_bytes(key.as_mut());
            epochs.insert(next, key);
            write_keyring(&self.inner.keyring_path, &self.inner.keyring_key, &epochs)?;
        }
        self.finish_rotation()
    }

    /// Rewraps every data key under the newest epoch, flushes, and keeps only
    /// that epoch in the keyring (memory and file).
    fn finish_rotation(&self) -> Result<usize, Error> {
        let current = self
            .read_epochs()
            .keys()
            .next_back()
            .copied()
            .ok_or_else(|| Error::Corrupt("empty keyring".into()))?;
        let mut rewrapped = 0;
        for item in self.inner.keys.iter() {
            let (hash, wrapped) = item?;
            let (epoch, _) = split_wrapped(&wrapped)?;
            if epoch == current {
                continue;
            }
            let subject = SubjectHash(
                hash.as_ref()
                    .try_into()
                    .map_err(|_| Error::Corrupt("subject hash length".into()))?,
            );
            let key = self.unwrap_key(&subject, &wrapped).map_err(|e| match e {
                UnwrapError::UnknownEpoch(epoch) => {
                    Error::Corrupt(format!("data key under unknown epoch {epoch}"))
                }
                UnwrapError::Other(e) => e,
            })?;
            let again = self.wrap_key(&subject, &key)?;
            // Under the writer lock nobody else changes this tree; the
            // compare-and-swap only guards that assumption.
            self.inner
                .keys
                .compare_and_swap(hash, Some(wrapped), Some(again))?
                .map_err(|_| Error::Corrupt("data key changed during rotation".into()))?;
            rewrapped += 1;
        }
        self.inner.keys.flush()?;
        let mut epochs = self.write_epochs();
        epochs.retain(|epoch, _| *epoch == current);
        write_keyring(&self.inner.keyring_path, &self.inner.keyring_key, &epochs)?;
        Ok(rewrapped)
    }
}

enum UnwrapError {
    UnknownEpoch(u32),
    Other(Error),
}

fn wrap_aad(subject: &SubjectHash, epoch: u32) -> Vec<u8> {
    let mut aad = AAD_WRAP.to_vec();
    aad.extend_from_slice(subject.as_bytes());
    aad.extend_from_slice(&epoch.to_be_bytes());
    aad
}

fn split_wrapped(wrapped: &[u8]) -> Result<(u32, &[u8]), Error> {
    if wrapped.len() != WRAPPED_BYTES {
        return Err(Error::Corrupt(format!(
            "wrapped data key of {} bytes",
            wrapped.len()
        )));
    }
    let (epoch, sealed) = wrapped.split_at(4);
    let epoch = u32::from_be_bytes(
        epoch
            .try_into()
            .map_err(|_| Error::Corrupt("epoch".into()))?,
    );
    Ok((epoch, sealed))
}

/// Whether any tree of `db` holds an entry (a database written before).
fn holds_data(db: &sled::Db) -> Result<bool, Error> {
    for name in db.tree_names() {
        if !db.open_tree(name)?.is_empty() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The keyring file: nonce ‖ XChaCha20-Poly1305(keyring key, postcard(epochs)).
fn read_keyring(path: &Path, keyring_key: &[u8; KEY_BYTES]) -> Result<Option<Epochs>, Error> {
    let shown = || path.display().to_string();
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Io {
                path: shown(),
                source,
            })
        }
    };
    let plain = open(keyring_key, AAD_KEYRING, &bytes)
        .map_err(|_| Error::WrongStorageKey { path: shown() })?;
    let list = keyring_from_bytes(&plain)?;
    if list.is_empty() || list.len() > EPOCHS_MAX {
        return Err(Error::Corrupt(format!("keyring of {} epochs", list.len())));
    }
    Ok(Some(
        list.into_iter()
            .map(|(epoch, mut key)| {
                let kept = Zeroizing::new(key);
                key.zeroize();
                (epoch, kept)
            })
            .collect(),
    ))
}

/// The keyring's plaintext, before it is sealed into the file: postcard of
/// `[(epoch, epoch key)]` (a stored format: see "The on-disk format" in the
/// `store` module).
pub(super) fn keyring_bytes(list: &[(u32, [u8; KEY_BYTES])]) -> Result<Zeroizing<Vec<u8>>, Error> {
    postcard::to_stdvec(list)
        .map(Zeroizing::new)
        .map_err(|e| Error::Corrupt(format!("keyring: {e}")))
}

/// Decodes the keyring's plaintext ([`keyring_bytes`]).
pub(super) fn keyring_from_bytes(plain: &[u8]) -> Result<Vec<(u32, [u8; KEY_BYTES])>, Error> {
    postcard::from_bytes(plain).map_err(|e| Error::Corrupt(format!("keyring: {e}")))
}

/// Writes the keyring to a new file, syncs it, renames it over the old one and
/// syncs the directory: the old file's content is then in no file.
fn write_keyring(path: &Path, keyring_key: &[u8; KEY_BYTES], epochs: &Epochs) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let list: Vec<(u32, [u8; KEY_BYTES])> = epochs.iter().map(|(e, k)| (*e, **k)).collect();
    let plain = keyring_bytes(&list)?;
    let mut list = list;
    for (_, key) in &mut list {
        key.zeroize();
    }
    let sealed = seal(keyring_key, AAD_KEYRING, &plain)?;
    let tmp = path.with_extension("tmp");
    // A leftover from a crash holds a keyring that never replaced the real one.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
        _ => {}
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(&sealed).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Debug` of the storage and data keys prints no key bytes.
    #[test]
    fn debug_prints_no_key_bytes() {
        let key = StorageKey::from_bytes([0xab; KEY_BYTES]);
        let shown = format!("{key:?} {:?}", DataKey([0xcd; KEY_BYTES]));
        assert_eq!(shown, "StorageKey(<redacted>) DataKey(<redacted>)");
        assert!(!shown.contains("ab") && !shown.contains("171"));
    }

    /// A sealed value opens only with its key and its associated data.
    #[test]
    fn seal_binds_key_and_aad() {
        let key = DataKey([1; KEY_BYTES]);
        let sealed = key.seal(b"registry:a", b"secret").unwrap();
        assert_eq!(
            key.open(b"registry:a", &sealed).unwrap().as_slice(),
            b"secret"
        );
        assert!(key.open(b"registry:b", &sealed).is_err());
        assert!(DataKey([2; KEY_BYTES])
            .open(b"registry:a", &sealed)
            .is_err());
        assert!(key.open(b"registry:a", &sealed[..10]).is_err());
    }

    /// Another storage key does not open the keyring; a database with data and
    /// no keyring is refused as older.
    #[test]
    fn wrong_key_and_older_database_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = StorageKey::generate();
        {
            let db = sled::open(dir.path()).unwrap();
            let vault = Vault::open(&db, dir.path(), &key).unwrap();
            let w = vault.writer();
            vault
                .data_key_or_create(&w, &SubjectHash([7; KEY_BYTES]))
                .unwrap();
            drop(w);
            db.flush().unwrap();
        }
        let db = sled::open(dir.path()).unwrap();
        let err = Vault::open(&db, dir.path(), &StorageKey::generate()).unwrap_err();
        assert!(matches!(err, Error::WrongStorageKey { .. }), "{err}");
        fs::remove_file(dir.path().join(KEYRING_FILE)).unwrap();
        let err = Vault::open(&db, dir.path(), &key).unwrap_err();
        assert!(matches!(err, Error::OlderVersion { .. }), "{err}");
        assert!(err.to_string().contains("without encryption at rest"));
    }

    /// A rotation keeps every remaining data key; a key wrapped before it no
    /// longer unwraps; a rotation a crash interrupted is finished at open.
    #[test]
    fn rotation_rewraps_and_retires() {
        let dir = tempfile::tempdir().unwrap();
        let key = StorageKey::generate();
        let db = sled::open(dir.path()).unwrap();
        let vault = Vault::open(&db, dir.path(), &key).unwrap();
        let a = SubjectHash([1; KEY_BYTES]);
        let b = SubjectHash([2; KEY_BYTES]);
        let w = vault.writer();
        let a_key = vault.data_key_or_create(&w, &a).unwrap();
        vault.data_key_or_create(&w, &b).unwrap();
        let old_a = vault.keys_tree().get(a.as_bytes()).unwrap().unwrap();
        assert!(vault.remove_data_key(&w, &b).unwrap());
        assert_eq!(vault.rotate(&w).unwrap(), 1);
        drop(w);
        assert_eq!(vault.data_key(&a).unwrap().unwrap().0, a_key.0);
        assert!(vault.data_key(&b).unwrap().is_none());
        assert!(!vault.can_unwrap(&a, &old_a));

        // A crash after the new epoch was written, before the rewrap.
        {
            let mut epochs = vault.write_epochs();
            epochs.insert(9, Zeroizing::new([9; KEY_BYTES]));
            write_keyring(&vault.inner.keyring_path, &vault.inner.keyring_key, &epochs).unwrap();
        }
        drop(vault);
        let vault = Vault::open(&db, dir.path(), &key).unwrap();
        assert_eq!(
            vault.read_epochs().keys().copied().collect::<Vec<_>>(),
            vec![9]
        );
        assert_eq!(vault.data_key(&a).unwrap().unwrap().0, a_key.0);
    }
}
