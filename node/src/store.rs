//! Persistence on sled behind a narrow interface: the node's database.
//!
//! # Layout
//! - `store.rs` (this file): the [`Store`] type, opening a data directory,
//!   the storage format marker, group commit ([`Store::durable`]), the trust
//!   list, the counters and the error type;
//! - `store/messages.rs`: the replay window (`seen`), the inbox and the
//!   outbox, and how their entries are sealed;
//! - `store/consents.rs`: consent logs, delegations and the delivery of each
//!   log to its parties;
//! - `store/exchange.rs`: data responses served and received, and the state
//!   of each data request;
//! - `store/subjects.rs`: records sealed under a subject's data key, and
//!   erasure of a subject;
//! - [`at_rest`]: the keys of encryption at rest (storage key, data keys,
//!   keyring);
//! - `store/tests.rs`: crash, erasure and format tests, among them the golden
//!   bytes of every stored record.
//!
//! # Trees
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
//! # Durability
//! Every state change that is acknowledged to someone (a receipt to a peer, an
//! answer to an API client) goes through [`Store::durable`] first, which
//! flushes sled to disk. Concurrent callers share one flush (group commit).
//! Each inbox and outbox entry carries the SHA-256 of the envelope it holds,
//! checked again when read back (paired assertions).
//!
//! # The on-disk format, and the rule that guards it
//! Values are encoded in two ways before they are sealed:
//! - the store's own records with postcard, whose format is the Rust type's
//!   field order: `Seen`, [`Incoming`], [`Outgoing`], [`ConsentDelivery`],
//!   `StoredDelegation`, a request's ([`RequestState`], time), and the
//!   keyring file ([`at_rest`]);
//! - consent logs and data responses as the prost messages of
//!   `proto/proto/mim4/v1/mim4.proto`: `ConsentRecordUpdate` (`consents`),
//!   `DataResponse` (`served`) and `ReceivedData` (`received`), with the
//!   messages inside them (`SignedConsentEvent`, `AttributeValue`,
//!   `PredicateAnswer`, `Predicate`, `Withheld`). A change to one of these in
//!   the `.proto` (a field number, a type, a field removed) is therefore a
//!   change of the storage format, not only of the wire.
//!
//! Envelopes and receipts (in `inbox`, `outbox` and `seen`) and the trust
//! list (in `trust`) are kept as the exact signed bytes that travelled: their
//! format is the wire protocol's, and changing it is a protocol version
//! change (field numbers are never reused; see the `.proto`).
//!
//! **Rule:** `tests::stored_record_formats_are_unchanged` holds golden bytes
//! of every stored record kind above, encoded with the same function the
//! store uses, and decodes them back. When it fails, the on-disk format
//! changed. If that is intended, bump the format marker `FORMAT` (in this
//! file), make `Store::check_format` handle or refuse databases of the older
//! format (it refuses one only if a tree it lists holds records: list the
//! trees whose format changed), and then update the golden bytes. A new
//! stored record kind gets its golden bytes in that test.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sled::transaction::TransactionError;

pub mod at_rest;
mod consents;
mod exchange;
mod messages;
mod subjects;
#[cfg(test)]
mod tests;

pub use at_rest::{StorageKey, SubjectHash, Vault, WriterGuard};
pub use consents::ConsentDelivery;
pub use exchange::RequestState;
pub use messages::{AppliedMessage, Incoming, Outgoing, OutgoingState};
pub use subjects::Erasure;

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
    /// Seals the values of `seen`, `inbox` and `outbox` ([`at_rest::StorageKey::messages_key`]).
    messages_key: Arc<at_rest::DataKey>,
    counters: Arc<Counters>,
    group: Arc<GroupCommit>,
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
/// Bump it when the encoding of a stored record changes (see "The on-disk
/// format" above and `tests::stored_record_formats_are_unchanged`).
const FORMAT: &[u8] = b"sealed-2";

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
        // The trees whose format changed since the first marker; a database
        // that holds records only elsewhere is marked and opens.
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

    /// The stored signed trust list, if any.
    pub fn trust_list(&self) -> Result<Option<Vec<u8>>> {
        Ok(self.trust.get(TRUST_KEY)?.map(|v| v.to_vec()))
    }

    /// Replaces the stored trust list (call [`Store::durable`] before relying on it).
    pub fn set_trust_list(&self, signed: &[u8]) -> Result<()> {
        self.trust.insert(TRUST_KEY, signed)?;
        Ok(())
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

    /// The vault of this database (subject hashes and data keys).
    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    /// The tree of the built-in registry data source.
    pub fn registry_tree(&self) -> Result<sled::Tree> {
        Ok(self.registry.clone())
    }
}

/// Encodes one of the store's own records (postcard: the format is the
/// type's field order; see "The on-disk format" above).
fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    postcard::to_stdvec(value).map_err(|e| Error::Corrupt {
        tree: "encode",
        reason: e.to_string(),
    })
}

/// Decodes one of the store's own records, read from `tree`.
fn decode<T: for<'de> Deserialize<'de>>(tree: &'static str, bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| Error::Corrupt {
        tree,
        reason: e.to_string(),
    })
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
