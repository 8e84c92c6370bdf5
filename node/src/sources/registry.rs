//! The built-in registry: attribute values of subjects kept in a sled tree,
//! loaded from JSON or NGSI-LD files. It is what the testnet's registers
//! (income, driving licences, diplomas, criminal records, skills) run on.
//!
//! # Layout in sled
//! One key per value: `subject hash ‖ attribute bytes` → the value as
//! serde_json bytes, encrypted with the subject's data key (`nonce ‖
//! ciphertext ‖ tag`, with `registry ‖ 0x00 ‖ key` as associated data; see
//! `store::at_rest`). The subject hash is the keyed HMAC of the subject id
//! (32 bytes), so the id itself is not stored and the key splits without a
//! separator. A marker key `subject hash` (empty value) records that the
//! registry knows the subject, so a read tells "known subject without these
//! attributes" from "unknown subject" without touching any other attribute of
//! the subject. Attribute names (catalogue names, not personal data) are in
//! clear.
//!
//! # Loading
//! A load parses and checks the whole file first and then writes it in one
//! atomic sled batch, so a bad file changes nothing. A file is authoritative
//! for the subjects it lists and the attributes it covers (for JSON, the
//! attributes that appear anywhere in the file; for NGSI-LD, the mapped ones):
//! for a listed subject, such an attribute absent from the file is removed.
//! Other subjects and attributes are kept, so several registers (one file
//! each) can share one registry. [`Registry::clear`] empties it.
//!
//! The size of one subject's data is bounded by the limits in
//! [`crate::limits`]: each value by [`limits::ATTRIBUTE_VALUE_BYTES_MAX`],
//! and what the registry holds for a subject after the load (the file's
//! values plus those kept from other files) by
//! [`limits::ATTRIBUTES_PER_SUBJECT_MAX`] and
//! [`limits::SUBJECT_DATA_BYTES_MAX`]; a load that would exceed one is
//! refused with its own [`LoadError`] variant.
//!
//! ## JSON format
//! ```json
//! {"subjects": {
//!     "fi:hetu:010180-1234": {"income.gross_monthly": 3150, "licence.driving.classes": ["B"]},
//!     "se:pnr:19800101-1234": {}
//! }}
//! ```
//! Keys of `subjects` are subject ids; their keys are catalogue attributes
//! (dotted lowercase) and their values any JSON value except `null`. A
//! subject with `{}` is known but holds nothing. Unknown top-level keys and
//! duplicate keys are errors.
//!
//! ## NGSI-LD format
//! A JSON array of NGSI-LD entities (or a single entity), normalized
//! (`{"type": "Property", "value": ...}`) or keyValues, turned into subjects
//! and catalogue attributes by a [`Mapping`]. Entities of other types are
//! skipped; unmapped attributes are not stored.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use super::ngsi_ld::entity::{Entity, Form, Mapping, Multiplicity};
use super::{BoxFuture, DataSource, SourceError, Values};
use crate::core::consent::{Attribute, NameError, SubjectId};
use crate::limits;
pub use crate::limits::REGISTRY_ENTITIES_MAX as ENTITIES_MAX;
pub use crate::limits::REGISTRY_FILE_BYTES_MAX as FILE_BYTES_MAX;
pub use crate::limits::REGISTRY_SUBJECTS_MAX as SUBJECTS_MAX;
use crate::store::{at_rest, SubjectHash, Vault};

/// Bytes a sealed value adds to its JSON (`nonce ‖ ciphertext ‖ tag`: a
/// 24-byte XChaCha20 nonce and a 16-byte Poly1305 tag), so that a subject's
/// stored data can be sized without decrypting it. `key_layout` checks it.
const SEALED_OVERHEAD_BYTES: usize = 24 + 16;

/// The bounds a load enforces; tests shrink them.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    file_bytes_max: usize,
    value_bytes_max: usize,
    subjects_max: usize,
    entities_max: usize,
    attributes_per_subject_max: usize,
    subject_bytes_max: usize,
}

impl Bounds {
    const DEFAULT: Bounds = Bounds {
        file_bytes_max: FILE_BYTES_MAX,
        value_bytes_max: limits::ATTRIBUTE_VALUE_BYTES_MAX,
        subjects_max: SUBJECTS_MAX,
        entities_max: ENTITIES_MAX,
        attributes_per_subject_max: limits::ATTRIBUTES_PER_SUBJECT_MAX,
        subject_bytes_max: limits::SUBJECT_DATA_BYTES_MAX,
    };
}

/// The built-in registry in a sled tree; see the module documentation.
#[derive(Clone)]
pub struct Registry {
    tree: sled::Tree,
    vault: Vault,
}

impl fmt::Debug for Registry {
    // sled's own `Debug` prints the tree's contents, which are personal data.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("tree", &String::from_utf8_lossy(&self.tree.name()))
            .finish()
    }
}

/// What a load wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadReport {
    /// Subjects written (each replaces what the registry held for the file's attributes).
    pub subjects: usize,
    /// Attribute values written.
    pub values: usize,
    /// NGSI-LD entities skipped because they are not of the mapped type.
    pub entities_skipped: usize,
}

/// Where in a file an error is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// Under this subject key of a JSON registry file (truncated to 128 characters).
    Subject(String),
    /// The entity at this index of an NGSI-LD array, with its id if it has one.
    Entity {
        /// Zero-based index in the array.
        index: usize,
        /// The entity's `id`, if it has a string one.
        id: Option<String>,
    },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Subject(subject) => write!(f, "subject {subject:?}"),
            Location::Entity {
                index,
                id: Some(id),
            } => write!(f, "entity {index} ({id})"),
            Location::Entity { index, id: None } => write!(f, "entity {index}"),
        }
    }
}

/// Why a load failed; nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file is larger than [`FILE_BYTES_MAX`].
    #[error("the file is {bytes} bytes, more than the {max} allowed")]
    FileTooLarge {
        /// The file's size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The text is not JSON of the expected shape (the reason names line and column).
    #[error("not a valid {format} file: {reason}")]
    Syntax {
        /// Which format was expected.
        format: &'static str,
        /// What the parser reported.
        reason: String,
    },
    /// The file holds more subjects than [`SUBJECTS_MAX`].
    #[error("the file holds {count} subjects, more than the {max} allowed")]
    TooManySubjects {
        /// Subjects in the file.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The file holds more entities than [`ENTITIES_MAX`].
    #[error("the file holds {count} entities, more than the {max} allowed")]
    TooManyEntities {
        /// Entities in the file.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A subject would have more attributes than
    /// [`limits::ATTRIBUTES_PER_SUBJECT_MAX`] (in the file, or with those
    /// the registry keeps for it from other files).
    #[error("{at}: the subject would have {count} attributes, more than the {max} allowed")]
    TooManyAttributes {
        /// Where.
        at: Location,
        /// Attributes the subject would have.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A subject's values would be more than
    /// [`limits::SUBJECT_DATA_BYTES_MAX`] bytes of JSON in total (in the
    /// file, or with those the registry keeps for it from other files).
    #[error(
        "{at}: the subject's values would be {bytes} bytes of JSON, more than the {max} allowed"
    )]
    SubjectTooLarge {
        /// Where.
        at: Location,
        /// The subject's total.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A subject id is not a valid [`SubjectId`].
    #[error("{at}: invalid subject id: {source}")]
    Subject {
        /// Where.
        at: Location,
        /// Why the id is invalid.
        source: NameError,
    },
    /// An attribute name is not a valid catalogue [`Attribute`].
    #[error("{at}: invalid attribute: {source}")]
    Attribute {
        /// Where.
        at: Location,
        /// Why the name is invalid.
        source: NameError,
    },
    /// A value is `null`, which would read as absent; leave the attribute out instead.
    #[error("{at}: attribute {attribute} is null")]
    NullValue {
        /// Where.
        at: Location,
        /// The attribute.
        attribute: Attribute,
    },
    /// A value is larger than [`limits::ATTRIBUTE_VALUE_BYTES_MAX`] as JSON.
    #[error("{at}: attribute {attribute} is {bytes} bytes of JSON, more than the {max} allowed")]
    ValueTooLarge {
        /// Where.
        at: Location,
        /// The attribute.
        attribute: Attribute,
        /// The value's size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// An NGSI-LD entity is malformed or cannot be given a subject.
    #[error("{at}: {reason}")]
    Entity {
        /// Where.
        at: Location,
        /// What is wrong.
        reason: String,
    },
    /// Two NGSI-LD entities have the same id.
    #[error("{at}: the id is also used by entity {first}")]
    DuplicateEntity {
        /// The second entity.
        at: Location,
        /// Index of the first entity with this id.
        first: usize,
    },
    /// Two entities name the same subject, and the mapping expects one per subject.
    #[error("{at}: subject {subject} already has entity {first}, and the mapping expects one entity per subject")]
    DuplicateSubject {
        /// The second entity.
        at: Location,
        /// The subject.
        subject: SubjectId,
        /// Index of the first entity of the subject.
        first: usize,
    },
    /// sled failed.
    #[error("storage: {0}")]
    Store(#[from] sled::Error),
    /// A data key could not be made or read, or a value not encrypted.
    #[error("storage keys: {0}")]
    Keys(#[from] at_rest::Error),
}

/// Checked values ready to write: subject → where it is in the file, and
/// attribute → JSON bytes.
type Pending = BTreeMap<SubjectId, (Location, BTreeMap<Attribute, Vec<u8>>)>;

/// The sled key of `attribute` of `subject`, or of the subject's marker for `None`.
fn key(subject: &SubjectHash, attribute: Option<&Attribute>) -> Vec<u8> {
    let attribute = attribute.map_or("", Attribute::as_str);
    let mut key = Vec::with_capacity(subject.as_bytes().len() + attribute.len());
    key.extend_from_slice(subject.as_bytes());
    key.extend_from_slice(attribute.as_bytes());
    key
}

/// Binds an encrypted value to its tree and key (so to its subject and attribute).
fn value_aad(key: &[u8]) -> Vec<u8> {
    let mut aad = b"registry\0".to_vec();
    aad.extend_from_slice(key);
    aad
}

/// Checks one value and encodes it for sled.
fn encode_value(
    at: &Location,
    attribute: &Attribute,
    value: &Value,
    bounds: &Bounds,
) -> Result<Vec<u8>, LoadError> {
    if value.is_null() {
        return Err(LoadError::NullValue {
            at: at.clone(),
            attribute: attribute.clone(),
        });
    }
    // Serialising a `Value` cannot fail: its map keys are strings.
    let bytes = serde_json::to_vec(value).map_err(|e| LoadError::Syntax {
        format: "JSON value",
        reason: e.to_string(),
    })?;
    if bytes.len() > bounds.value_bytes_max {
        return Err(LoadError::ValueTooLarge {
            at: at.clone(),
            attribute: attribute.clone(),
            bytes: bytes.len(),
            max: bounds.value_bytes_max,
        });
    }
    Ok(bytes)
}

fn check_file_size(text: &str, bounds: &Bounds) -> Result<(), LoadError> {
    if text.len() > bounds.file_bytes_max {
        return Err(LoadError::FileTooLarge {
            bytes: text.len(),
            max: bounds.file_bytes_max,
        });
    }
    Ok(())
}

fn truncated(text: &str) -> String {
    text.chars().take(128).collect()
}

/// A JSON object kept in file order that rejects duplicate keys (serde_json
/// would silently keep the last one, hiding an error in a register file).
#[derive(Debug)]
struct UniqueMap<V>(Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for UniqueMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct UniqueVisitor<V>(std::marker::PhantomData<V>);

        impl<'de, V: Deserialize<'de>> Visitor<'de> for UniqueVisitor<V> {
            type Value = UniqueMap<V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut seen = HashSet::new();
                let mut entries = Vec::new();
                while let Some((key, value)) = access.next_entry::<String, V>()? {
                    if !seen.insert(key.clone()) {
                        return Err(serde::de::Error::custom(format!(
                            "duplicate key {:?}",
                            truncated(&key)
                        )));
                    }
                    entries.push((key, value));
                }
                Ok(UniqueMap(entries))
            }
        }

        deserializer.deserialize_map(UniqueVisitor(std::marker::PhantomData))
    }
}

/// The JSON registry file format (see the module documentation).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonFile {
    subjects: UniqueMap<UniqueMap<Value>>,
}

impl Registry {
    /// A registry kept in `tree`, its values encrypted with the data keys of
    /// `vault` (the node passes `Store::registry_tree` and `Store::vault`).
    pub fn new(tree: sled::Tree, vault: Vault) -> Self {
        Self { tree, vault }
    }

    /// Loads a JSON registry file (format in the module documentation).
    ///
    /// Blocking (parses and flushes to disk): call it from `spawn_blocking` in async code.
    pub fn load_json(&self, text: &str) -> Result<LoadReport, LoadError> {
        self.load_json_bounded(text, &Bounds::DEFAULT)
    }

    /// Loads an array of NGSI-LD entities (or one entity) through `mapping`.
    ///
    /// Blocking (parses and flushes to disk): call it from `spawn_blocking` in async code.
    pub fn load_ngsi_ld(&self, text: &str, mapping: &Mapping) -> Result<LoadReport, LoadError> {
        self.load_ngsi_ld_bounded(text, mapping, &Bounds::DEFAULT)
    }

    /// Removes every subject and value.
    ///
    /// Not atomic with a following load: a read in between finds nothing.
    pub fn clear(&self) -> Result<(), LoadError> {
        self.tree.clear()?;
        self.tree.flush()?;
        Ok(())
    }

    fn load_json_bounded(&self, text: &str, bounds: &Bounds) -> Result<LoadReport, LoadError> {
        check_file_size(text, bounds)?;
        let file: JsonFile = serde_json::from_str(text).map_err(|e| LoadError::Syntax {
            format: "registry JSON",
            reason: e.to_string(),
        })?;
        let subjects = file.subjects.0;
        if subjects.len() > bounds.subjects_max {
            return Err(LoadError::TooManySubjects {
                count: subjects.len(),
                max: bounds.subjects_max,
            });
        }
        let mut pending = Pending::new();
        let mut covered = BTreeSet::new();
        for (subject, attributes) in subjects {
            let at = Location::Subject(truncated(&subject));
            let subject = SubjectId::new(subject).map_err(|source| LoadError::Subject {
                at: at.clone(),
                source,
            })?;
            // Checked before parsing names, to bound the work; the total
            // with kept attributes is checked before writing.
            if attributes.0.len() > bounds.attributes_per_subject_max {
                return Err(LoadError::TooManyAttributes {
                    at,
                    count: attributes.0.len(),
                    max: bounds.attributes_per_subject_max,
                });
            }
            let mut values = BTreeMap::new();
            for (name, value) in attributes.0 {
                let attribute = Attribute::new(name).map_err(|source| LoadError::Attribute {
                    at: at.clone(),
                    source,
                })?;
                let bytes = encode_value(&at, &attribute, &value, bounds)?;
                covered.insert(attribute.clone());
                values.insert(attribute, bytes);
            }
            pending.insert(subject, (at, values));
        }
        self.write(pending, &covered, 0, bounds)
    }

    fn load_ngsi_ld_bounded(
        &self,
        text: &str,
        mapping: &Mapping,
        bounds: &Bounds,
    ) -> Result<LoadReport, LoadError> {
        check_file_size(text, bounds)?;
        let syntax = |reason: String| LoadError::Syntax {
            format: "NGSI-LD",
            reason,
        };
        let document: Value = serde_json::from_str(text).map_err(|e| syntax(e.to_string()))?;
        let entities = match &document {
            Value::Array(entities) => entities.as_slice(),
            Value::Object(_) => std::slice::from_ref(&document),
            _ => return Err(syntax("expected an array of entities or one entity".into())),
        };
        if entities.len() > bounds.entities_max {
            return Err(LoadError::TooManyEntities {
                count: entities.len(),
                max: bounds.entities_max,
            });
        }

        let (by_subject, skipped) = entities_by_subject(entities, mapping)?;
        if by_subject.len() > bounds.subjects_max {
            return Err(LoadError::TooManySubjects {
                count: by_subject.len(),
                max: bounds.subjects_max,
            });
        }

        let pending = pending_of(by_subject, mapping.multiplicity(), bounds)?;
        let covered: BTreeSet<Attribute> = mapping.attributes().keys().cloned().collect();
        self.write(pending, &covered, skipped, bounds)
    }

    /// Checks that no subject of `pending` would hold more than the bounds
    /// allow once written: its values in the file, plus those the registry
    /// keeps for it (attributes the file does not cover). Kept values are
    /// sized from their sealed length, without decrypting them.
    fn check_subject_totals(
        &self,
        pending: &Pending,
        covered: &BTreeSet<Attribute>,
        bounds: &Bounds,
    ) -> Result<(), LoadError> {
        for (subject, (at, values)) in pending {
            let mut count = values.len();
            let mut bytes: usize = values.values().map(Vec::len).sum();
            let hash = self.vault.hash(subject);
            let prefix = hash.as_bytes().len();
            for entry in self.tree.scan_prefix(hash.as_bytes()) {
                let (key, sealed) = entry?;
                let kept = std::str::from_utf8(&key[prefix..])
                    .is_ok_and(|name| !name.is_empty() && !covered.contains(name));
                if kept {
                    count += 1;
                    bytes += sealed.len().saturating_sub(SEALED_OVERHEAD_BYTES);
                }
            }
            if count > bounds.attributes_per_subject_max {
                return Err(LoadError::TooManyAttributes {
                    at: at.clone(),
                    count,
                    max: bounds.attributes_per_subject_max,
                });
            }
            if bytes > bounds.subject_bytes_max {
                return Err(LoadError::SubjectTooLarge {
                    at: at.clone(),
                    bytes,
                    max: bounds.subject_bytes_max,
                });
            }
        }
        Ok(())
    }

    /// Checks the subjects' totals, then writes checked values in one atomic
    /// batch and flushes.
    fn write(
        &self,
        pending: Pending,
        covered: &BTreeSet<Attribute>,
        entities_skipped: usize,
        bounds: &Bounds,
    ) -> Result<LoadReport, LoadError> {
        let mut batch = sled::Batch::default();
        let mut report = LoadReport {
            subjects: pending.len(),
            values: 0,
            entities_skipped,
        };
        // Held until the batch is applied, so an erasure cannot run between
        // making a subject's data key and writing values under it, and so
        // that the totals checked are those the batch extends.
        let writer = self.vault.writer();
        self.check_subject_totals(&pending, covered, bounds)?;
        for (subject, (_, values)) in pending {
            let hash = self.vault.hash(&subject);
            let data_key = self.vault.data_key_or_create(&writer, &hash)?;
            // The file is authoritative for the attributes it covers: remove
            // them first, and the inserts below (later in the batch) win.
            for attribute in covered {
                batch.remove(key(&hash, Some(attribute)));
            }
            batch.insert(key(&hash, None), Vec::new());
            for (attribute, bytes) in values {
                debug_assert!(
                    !bytes.is_empty() && bytes.len() <= limits::ATTRIBUTE_VALUE_BYTES_MAX
                );
                let key = key(&hash, Some(&attribute));
                let sealed = data_key.seal(&value_aad(&key), &zeroize::Zeroizing::new(bytes))?;
                batch.insert(key, sealed);
                report.values += 1;
            }
        }
        self.tree.apply_batch(batch)?;
        drop(writer);
        self.tree.flush()?;
        Ok(report)
    }

    /// Reads the requested keys, and the subject's marker only if none was found.
    fn read_values(
        &self,
        subject: &SubjectId,
        attributes: &[Attribute],
    ) -> Result<Values, SourceError> {
        let storage = |e: sled::Error| SourceError::Unavailable(format!("registry storage: {e}"));
        let hash = self.vault.hash(subject);
        // No data key: never loaded, or erased.
        let Some(data_key) = self
            .vault
            .data_key(&hash)
            .map_err(|e| SourceError::Unavailable(format!("registry keys: {e}")))?
        else {
            return Err(SourceError::UnknownSubject);
        };
        let mut values = Values::new();
        for attribute in attributes {
            let key = key(&hash, Some(attribute));
            let Some(sealed) = self.tree.get(&key).map_err(storage)? else {
                continue;
            };
            let bytes = data_key.open(&value_aad(&key), &sealed).map_err(|_| {
                SourceError::Malformed(format!(
                    "stored value of {attribute} does not decrypt (altered on disk)"
                ))
            })?;
            // The pair of the checks made before writing: size, then valid JSON.
            if bytes.len() > limits::ATTRIBUTE_VALUE_BYTES_MAX {
                return Err(SourceError::Malformed(format!(
                    "stored value of {attribute} is {} bytes",
                    bytes.len()
                )));
            }
            let value = serde_json::from_slice(&bytes).map_err(|e| {
                SourceError::Malformed(format!("stored value of {attribute} is not JSON: {e}"))
            })?;
            values.insert(attribute.clone(), value);
        }
        if values.is_empty() && !self.tree.contains_key(key(&hash, None)).map_err(storage)? {
            return Err(SourceError::UnknownSubject);
        }
        Ok(values)
    }
}

impl DataSource for Registry {
    fn read<'a>(
        &'a self,
        subject: &'a SubjectId,
        attributes: &'a [Attribute],
    ) -> BoxFuture<'a, Result<Values, SourceError>> {
        // sled reads are served from its page cache in microseconds; running
        // them on the caller's task avoids a blocking-pool hop per read.
        Box::pin(async move { self.read_values(subject, attributes) })
    }

    fn describe(&self) -> String {
        format!(
            "sled registry ({})",
            String::from_utf8_lossy(&self.tree.name())
        )
    }
}

/// A subject's entities in an NGSI-LD file: (entity id, index in the file, mapped values).
type Found = Vec<(String, usize, Vec<(Attribute, Value)>)>;

/// The file's entities of the mapped type, grouped by subject, and how many
/// entities of other types were skipped. Refuses a duplicate entity id, an
/// entity without its subject key, a null value, and (for one entity per
/// subject) a second entity of a subject.
fn entities_by_subject(
    entities: &[Value],
    mapping: &Mapping,
) -> Result<(BTreeMap<SubjectId, Found>, usize), LoadError> {
    let mut by_subject: BTreeMap<SubjectId, Found> = BTreeMap::new();
    let mut ids: BTreeMap<&str, usize> = BTreeMap::new();
    let mut skipped = 0;
    for (index, raw) in entities.iter().enumerate() {
        let at = |id: Option<&str>| Location::Entity {
            index,
            id: id.map(truncated),
        };
        let entity = Entity::parse(raw).map_err(|reason| LoadError::Entity {
            at: at(None),
            reason: reason.to_owned(),
        })?;
        let here = at(Some(entity.id));
        if let Some(first) = ids.insert(entity.id, index) {
            return Err(LoadError::DuplicateEntity { at: here, first });
        }
        if !entity.has_type(mapping.entity_type()) {
            skipped += 1;
            continue;
        }
        let subject = mapping
            .subject_of(&entity, Form::Detect)
            .map_err(|reason| LoadError::Entity {
                at: here.clone(),
                reason,
            })?;
        let subject = SubjectId::new(subject).map_err(|source| LoadError::Subject {
            at: here.clone(),
            source,
        })?;
        let values = mapped_values(&entity, mapping, &here)?;
        if mapping.multiplicity() == Multiplicity::One {
            if let Some((_, first, _)) = by_subject.get(&subject).and_then(|f| f.first()) {
                return Err(LoadError::DuplicateSubject {
                    at: here,
                    subject,
                    first: *first,
                });
            }
        }
        let found = by_subject.entry(subject).or_default();
        found.push((entity.id.to_owned(), index, values));
    }
    Ok((by_subject, skipped))
}

/// The mapped attributes `entity` holds; a null value is refused.
fn mapped_values(
    entity: &Entity<'_>,
    mapping: &Mapping,
    here: &Location,
) -> Result<Vec<(Attribute, Value)>, LoadError> {
    let mut values = Vec::new();
    for (attribute, name) in mapping.attributes() {
        let value = entity
            .value(name, Form::Detect)
            .map_err(|reason| LoadError::Entity {
                at: here.clone(),
                reason,
            })?;
        match value {
            None => {}
            Some(Value::Null) => {
                return Err(LoadError::NullValue {
                    at: here.clone(),
                    attribute: attribute.clone(),
                })
            }
            Some(value) => values.push((attribute.clone(), value)),
        }
    }
    Ok(values)
}

/// Each subject's values to write: one entity's values as they are, or (many
/// entities per subject) each attribute as an array in entity id order.
fn pending_of(
    by_subject: BTreeMap<SubjectId, Found>,
    multiplicity: Multiplicity,
    bounds: &Bounds,
) -> Result<Pending, LoadError> {
    let mut pending = Pending::new();
    for (subject, mut found) in by_subject {
        // Entity id order, so that arrays do not depend on file order.
        found.sort_by(|a, b| a.0.cmp(&b.0));
        let at = Location::Entity {
            index: found.first().map_or(0, |f| f.1),
            id: found.first().map(|f| truncated(&f.0)),
        };
        let mut values = BTreeMap::new();
        match multiplicity {
            Multiplicity::One => {
                for (attribute, value) in found.into_iter().flat_map(|f| f.2) {
                    let bytes = encode_value(&at, &attribute, &value, bounds)?;
                    values.insert(attribute, bytes);
                }
            }
            Multiplicity::Many => {
                let mut arrays: BTreeMap<Attribute, Vec<Value>> = BTreeMap::new();
                for (attribute, value) in found.into_iter().flat_map(|f| f.2) {
                    arrays.entry(attribute).or_default().push(value);
                }
                for (attribute, array) in arrays {
                    let bytes = encode_value(&at, &attribute, &Value::Array(array), bounds)?;
                    values.insert(attribute, bytes);
                }
            }
        }
        pending.insert(subject, (at, values));
    }
    Ok(pending)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::ngsi_ld::SubjectKey;
    use serde_json::json;

    fn registry() -> Registry {
        // A temporary sled database removes its folder, keyring included, when dropped.
        let dir = tempfile::tempdir().unwrap().keep();
        let db = sled::Config::new()
            .path(&dir)
            .temporary(true)
            .open()
            .unwrap();
        let vault = Vault::open(&db, &dir, &crate::store::StorageKey::generate()).unwrap();
        Registry::new(db.open_tree("registry").unwrap(), vault)
    }

    fn subject(id: &str) -> SubjectId {
        SubjectId::new(id).unwrap()
    }

    fn attribute(name: &str) -> Attribute {
        Attribute::new(name).unwrap()
    }

    fn read(registry: &Registry, id: &str, names: &[&str]) -> Result<Values, SourceError> {
        let attributes: Vec<Attribute> = names.iter().map(|n| attribute(n)).collect();
        futures::executor::block_on(registry.read(&subject(id), &attributes))
    }

    fn values(pairs: &[(&str, Value)]) -> Values {
        pairs
            .iter()
            .map(|(name, value)| (attribute(name), value.clone()))
            .collect()
    }

    const SMALL: Bounds = Bounds {
        file_bytes_max: 200,
        value_bytes_max: 16,
        subjects_max: 2,
        entities_max: 3,
        attributes_per_subject_max: 4,
        subject_bytes_max: 64,
    };

    /// Loads `text` as registry JSON with `bounds`: the report, or an error whose message contains `expected_err`.
    fn check(text: &str, bounds: &Bounds, expected: Result<LoadReport, &str>) {
        let registry = registry();
        match (registry.load_json_bounded(text, bounds), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{text}"),
            (Err(got), Err(want)) => {
                assert!(got.to_string().contains(want), "{text}: {got}");
                assert!(registry.tree.is_empty(), "a failed load wrote something");
            }
            (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
        }
    }

    fn report(subjects: usize, values: usize) -> LoadReport {
        LoadReport {
            subjects,
            values,
            entities_skipped: 0,
        }
    }

    /// JSON files load within their bounds, and each kind of bad input gets a precise error that names the subject.
    #[test]
    fn json_files() {
        let d = &Bounds::DEFAULT;
        check(r#"{"subjects": {}}"#, d, Ok(report(0, 0)));
        check(
            r#"{"subjects": {"fi:hetu:010180-1234": {"income.gross_monthly": 3150, "licence.driving.classes": ["B"]}, "se:pnr:1": {}}}"#,
            d,
            Ok(report(2, 2)),
        );
        check("", d, Err("not a valid registry JSON file"));
        check(r#"{"subjects": []}"#, d, Err("expected a JSON object"));
        check(r#"{"subject": {}}"#, d, Err("unknown field `subject`"));
        check(
            r#"{"subjects": {"a": {}, "a": {}}}"#,
            d,
            Err("duplicate key \"a\" at line 1"),
        );
        check(
            r#"{"subjects": {"a": {"x.y": 1, "x.y": 2}}}"#,
            d,
            Err("duplicate key \"x.y\""),
        );
        check(
            r#"{"subjects": {"has space": {}}}"#,
            d,
            Err("subject \"has space\": invalid subject id"),
        );
        check(
            r#"{"subjects": {"a": {"Income": 1}}}"#,
            d,
            Err("subject \"a\": invalid attribute: attribute \"Income\""),
        );
        check(
            r#"{"subjects": {"a": {"income": null}}}"#,
            d,
            Err("subject \"a\": attribute income is null"),
        );
        check(
            r#"{"subjects": {"a": {"x": "0123456789abcdef"}}}"#,
            &SMALL,
            Err("subject \"a\": attribute x is 18 bytes of JSON, more than the 16 allowed"),
        );
        check(
            r#"{"subjects": {"a": {}, "b": {}, "c": {}}}"#,
            &SMALL,
            Err("3 subjects, more than the 2 allowed"),
        );
        check(
            &format!(r#"{{"subjects": {{"a": {{"x": "{}"}}}}}}"#, "y".repeat(200)),
            &SMALL,
            Err("more than the 200 allowed"),
        );
    }

    /// Bounds of one subject's data: two values at most, 16 bytes each, 24 in total.
    const SUBJECT: Bounds = Bounds {
        value_bytes_max: 16,
        attributes_per_subject_max: 2,
        subject_bytes_max: 24,
        ..Bounds::DEFAULT
    };

    /// A JSON string value of exactly `bytes` bytes of JSON (quotes included).
    fn text(bytes: usize) -> Value {
        Value::from("x".repeat(bytes - 2))
    }

    /// A JSON registry file of subject `s` with these attributes.
    fn file(attributes: &[(&str, Value)]) -> String {
        let attributes: serde_json::Map<String, Value> = attributes
            .iter()
            .map(|(name, value)| ((*name).to_owned(), value.clone()))
            .collect();
        json!({"subjects": {"s": attributes}}).to_string()
    }

    /// Each limit on one subject's data accepts a load at the limit and
    /// refuses one just over it with its own variant, writing nothing.
    #[test]
    fn subject_data_at_and_over_each_limit() {
        let at = || Location::Subject("s".into());
        let accepted = [
            file(&[("a", text(16))]),
            file(&[("a", text(12)), ("b", text(12))]),
        ];
        for text in accepted {
            let registry = registry();
            registry.load_json_bounded(&text, &SUBJECT).unwrap();
        }
        let refused = [
            (file(&[("a", text(17))]), "value"),
            (
                file(&[("a", json!(1)), ("b", json!(2)), ("c", json!(3))]),
                "attributes",
            ),
            (file(&[("a", text(12)), ("b", text(13))]), "total"),
        ];
        for (text, limit) in refused {
            let registry = registry();
            let err = registry.load_json_bounded(&text, &SUBJECT).unwrap_err();
            match (limit, err) {
                (
                    "value",
                    LoadError::ValueTooLarge {
                        at: a, bytes, max, ..
                    },
                ) => {
                    assert_eq!((a, bytes, max), (at(), 17, 16));
                }
                ("attributes", LoadError::TooManyAttributes { at: a, count, max }) => {
                    assert_eq!((a, count, max), (at(), 3, 2));
                }
                ("total", LoadError::SubjectTooLarge { at: a, bytes, max }) => {
                    assert_eq!((a, bytes, max), (at(), 25, 24));
                }
                (limit, err) => panic!("{limit}: {err}"),
            }
            assert!(registry.tree.is_empty(), "{limit}: a refused load wrote");
        }
    }

    /// The per-subject limits hold for what the registry keeps from other
    /// files too: a load that would push a subject over the attribute count
    /// or the total bytes is refused and changes nothing, while replacing a
    /// covered attribute does not count it twice.
    #[test]
    fn subject_limits_count_values_kept_from_other_files() {
        let registry = registry();
        let load = |text: String| registry.load_json_bounded(&text, &SUBJECT);
        load(file(&[("a", text(12))])).unwrap();
        load(file(&[("b", text(12))])).unwrap();
        let before = read(&registry, "s", &["a", "b"]).unwrap();
        assert_eq!(before.len(), 2);
        match load(file(&[("c", json!(1))])).unwrap_err() {
            LoadError::TooManyAttributes { count, max, .. } => assert_eq!((count, max), (3, 2)),
            err => panic!("{err}"),
        }
        match load(file(&[("a", text(13))])).unwrap_err() {
            LoadError::SubjectTooLarge { bytes, max, .. } => assert_eq!((bytes, max), (25, 24)),
            err => panic!("{err}"),
        }
        assert_eq!(read(&registry, "s", &["a", "b", "c"]).unwrap(), before);
        // `a` is replaced, not added: 1 + 12 bytes in two attributes.
        load(file(&[("a", json!(1))])).unwrap();
        assert_eq!(
            read(&registry, "s", &["a", "b"]).unwrap(),
            values(&[("a", json!(1)), ("b", text(12))])
        );
        // Another subject has its own budget.
        let other = json!({"subjects": {"t": {"a": text(12), "b": text(12)}}}).to_string();
        registry.load_json_bounded(&other, &SUBJECT).unwrap();
        // An NGSI-LD load is held to the same totals, with the entity as location.
        let mapping = Mapping::new("Person", SubjectKey::Attribute("identifier".into()))
            .unwrap()
            .with_attribute(attribute("person.family_name"), "familyName")
            .unwrap();
        let entity = json!({"id": "urn:p", "type": "Person", "identifier": "s",
                            "familyName": text(12)})
        .to_string();
        match registry
            .load_ngsi_ld_bounded(&entity, &mapping, &SUBJECT)
            .unwrap_err()
        {
            LoadError::TooManyAttributes { at, count, max } => {
                assert_eq!(
                    (at, count, max),
                    (
                        Location::Entity {
                            index: 0,
                            id: Some("urn:p".into())
                        },
                        3,
                        2
                    )
                );
            }
            err => panic!("{err}"),
        }
    }

    /// A read returns exactly the requested attributes the subject has; an unknown subject is `UnknownSubject`.
    #[test]
    fn read_requested_attributes() {
        let registry = registry();
        registry
            .load_json(
                r#"{"subjects": {
                    "fi:hetu:010180-1234": {"income.gross_monthly": 3150, "licence.driving.classes": ["B"]},
                    "fi:hetu:020280-2345": {}
                }}"#,
            )
            .unwrap();
        let got = read(&registry, "fi:hetu:010180-1234", &["income.gross_monthly"]).unwrap();
        assert_eq!(got, values(&[("income.gross_monthly", json!(3150))]));
        let got = read(
            &registry,
            "fi:hetu:010180-1234",
            &[
                "licence.driving.classes",
                "criminal.record",
                "income.gross_monthly",
            ],
        )
        .unwrap();
        assert_eq!(
            got,
            values(&[
                ("income.gross_monthly", json!(3150)),
                ("licence.driving.classes", json!(["B"])),
            ])
        );
        // Known without values: an empty answer, not UnknownSubject.
        assert_eq!(
            read(&registry, "fi:hetu:020280-2345", &["income.gross_monthly"]),
            Ok(Values::new())
        );
        assert_eq!(
            read(&registry, "fi:hetu:010180-1234", &[]),
            Ok(Values::new())
        );
        assert_eq!(
            read(&registry, "fi:hetu:999999-9999", &["income.gross_monthly"]),
            Err(SourceError::UnknownSubject)
        );
        // A subject id that is a prefix of another is a different subject.
        assert_eq!(
            read(&registry, "fi:hetu:010180-123", &["income.gross_monthly"]),
            Err(SourceError::UnknownSubject)
        );
    }

    /// Keys are `subject hash ‖ attribute` with a marker `subject hash`; values are JSON
    /// bytes encrypted with the subject's data key, bound to their key.
    #[test]
    fn key_layout() {
        let registry = registry();
        registry
            .load_json(r#"{"subjects": {"s:1": {"a.b": [1, "x"]}}}"#)
            .unwrap();
        let entries: Vec<(Vec<u8>, Vec<u8>)> = registry
            .tree
            .iter()
            .map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect::<Result<_, _>>()
            .unwrap();
        let hash = registry.vault.hash(&subject("s:1"));
        let value_key = key(&hash, Some(&attribute("a.b")));
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0], (hash.as_bytes().to_vec(), vec![]));
        assert_eq!(entries[1].0, value_key);
        assert_eq!(value_key[32..], *b"a.b");
        let plain = br#"[1,"x"]"#;
        // Nonce (24) and tag (16) around a ciphertext as long as the JSON.
        assert_eq!(entries[1].1.len(), 24 + plain.len() + 16);
        assert_eq!(entries[1].1.len(), SEALED_OVERHEAD_BYTES + plain.len());
        assert!(!entries[1].1.windows(plain.len()).any(|w| w == plain));
        let data_key = registry.vault.data_key(&hash).unwrap().unwrap();
        assert_eq!(
            data_key
                .open(&value_aad(&value_key), &entries[1].1)
                .unwrap()
                .as_slice(),
            plain
        );
        // Another subject's key position does not open it.
        assert!(data_key
            .open(
                &value_aad(&key(&hash, Some(&attribute("a.c")))),
                &entries[1].1
            )
            .is_err());
        assert_eq!(format!("{registry:?}"), "Registry { tree: \"registry\" }");
        assert_eq!(registry.describe(), "sled registry (registry)");
    }

    /// A stored value that is not JSON, or does not decrypt, reads as `Malformed` (the read-back half of the write checks).
    #[test]
    fn corrupt_value_is_malformed() {
        let registry = registry();
        registry
            .load_json(r#"{"subjects": {"s": {"a": 1}}}"#)
            .unwrap();
        let hash = registry.vault.hash(&subject("s"));
        let value_key = key(&hash, Some(&attribute("a")));
        let data_key = registry.vault.data_key(&hash).unwrap().unwrap();
        let sealed = data_key.seal(&value_aad(&value_key), b"{").unwrap();
        registry.tree.insert(&value_key, sealed).unwrap();
        let err = read(&registry, "s", &["a"]).unwrap_err();
        assert!(err.to_string().contains("not JSON"), "{err}");
        // Bytes that are not sealed under the subject's key at this position.
        registry.tree.insert(&value_key, b"{".to_vec()).unwrap();
        let err = read(&registry, "s", &["a"]).unwrap_err();
        assert!(err.to_string().contains("does not decrypt"), "{err}");
    }

    /// Reloading replaces the file's attributes of listed subjects and keeps everything else; a failed load writes nothing.
    #[test]
    fn reload_semantics() {
        let registry = registry();
        registry
            .load_json(r#"{"subjects": {"a": {"income": 1, "bonus": 2}, "b": {"income": 3}}}"#)
            .unwrap();
        registry
            .load_json(r#"{"subjects": {"a": {"licence": ["B"]}}}"#)
            .unwrap();
        // Another register's attribute: added, nothing removed.
        assert_eq!(
            read(&registry, "a", &["income", "bonus", "licence"]).unwrap(),
            values(&[
                ("income", json!(1)),
                ("bonus", json!(2)),
                ("licence", json!(["B"]))
            ])
        );
        // The income register again: a's bonus is gone from the file, so from the registry.
        registry
            .load_json(r#"{"subjects": {"a": {"income": 5}, "c": {"bonus": 7}}}"#)
            .unwrap();
        assert_eq!(
            read(&registry, "a", &["income", "bonus", "licence"]).unwrap(),
            values(&[("income", json!(5)), ("licence", json!(["B"]))])
        );
        assert_eq!(
            read(&registry, "b", &["income"]).unwrap(),
            values(&[("income", json!(3))])
        );
        let err = registry
            .load_json(r#"{"subjects": {"a": {"income": 6}, "bad id": {}}}"#)
            .unwrap_err();
        assert!(matches!(err, LoadError::Subject { .. }), "{err}");
        assert_eq!(
            read(&registry, "a", &["income"]).unwrap(),
            values(&[("income", json!(5))])
        );
        registry.clear().unwrap();
        assert_eq!(
            read(&registry, "a", &["income"]),
            Err(SourceError::UnknownSubject)
        );
    }

    fn person_mapping() -> Mapping {
        Mapping::new("Person", SubjectKey::Attribute("identifier".into()))
            .unwrap()
            .with_attribute(attribute("person.family_name"), "familyName")
            .unwrap()
            .with_attribute(attribute("person.address"), "address")
            .unwrap()
            .with_attribute(attribute("person.employer"), "worksFor")
            .unwrap()
    }

    /// Normalized and keyValues entities load through a mapping: multi-attributes by default instance,
    /// Relationships by object, other types skipped, unmapped attributes not stored.
    #[test]
    fn ngsi_ld_entities() {
        let registry = registry();
        let text = json!([
            {"id": "urn:ngsi-ld:Person:1", "type": "Person",
             "identifier": {"type": "Property", "value": "fi:hetu:010180-1234"},
             "familyName": [
                {"type": "Property", "value": "Old", "datasetId": "urn:ngsi-ld:dataset:old"},
                {"type": "Property", "value": "Virtanen"}],
             "email": {"type": "Property", "value": "not@stored.example"},
             "worksFor": {"type": "Relationship", "object": "urn:ngsi-ld:Organization:1"}},
            {"id": "urn:ngsi-ld:Person:2", "type": ["Person", "Employee"],
             "identifier": "se:pnr:19800101-1234", "familyName": "Svensson",
             "address": {"addressLocality": "Malmö"}},
            {"id": "urn:ngsi-ld:Organization:1", "type": "Organization",
             "name": {"type": "Property", "value": "City"}}
        ])
        .to_string();
        let got = registry.load_ngsi_ld(&text, &person_mapping()).unwrap();
        assert_eq!(
            got,
            LoadReport {
                subjects: 2,
                values: 4,
                entities_skipped: 1
            }
        );
        assert_eq!(
            read(
                &registry,
                "fi:hetu:010180-1234",
                &["person.family_name", "person.employer"]
            )
            .unwrap(),
            values(&[
                ("person.family_name", json!("Virtanen")),
                ("person.employer", json!("urn:ngsi-ld:Organization:1")),
            ])
        );
        assert_eq!(
            read(&registry, "se:pnr:19800101-1234", &["person.address"]).unwrap(),
            values(&[("person.address", json!({"addressLocality": "Malmö"}))])
        );
        // 2 subjects × (marker + their values): the email was not stored.
        assert_eq!(registry.tree.len(), 2 + 4);
    }

    /// With `Multiplicity::Many`, a subject's entities become one array per attribute, in entity id order.
    #[test]
    fn ngsi_ld_many_entities_per_subject() {
        let registry = registry();
        let mapping = Mapping::new("Credential", SubjectKey::Attribute("holder".into()))
            .unwrap()
            .with_attribute(attribute("education.diplomas"), "name")
            .unwrap()
            .with_multiplicity(Multiplicity::Many);
        let text = json!([
            {"id": "urn:c:2", "type": "Credential", "holder": "s", "name": "MSc"},
            {"id": "urn:c:1", "type": "Credential", "holder": "s", "name": "BSc"},
            {"id": "urn:c:3", "type": "Credential", "holder": "t"}
        ])
        .to_string();
        let got = registry.load_ngsi_ld(&text, &mapping).unwrap();
        assert_eq!((got.subjects, got.values), (2, 1));
        assert_eq!(
            read(&registry, "s", &["education.diplomas"]).unwrap(),
            values(&[("education.diplomas", json!(["BSc", "MSc"]))])
        );
        assert_eq!(
            read(&registry, "t", &["education.diplomas"]),
            Ok(Values::new())
        );
    }

    /// Loads `entities` through `mapping` with small bounds: an error whose message contains `expected`, and nothing written.
    fn check_ngsi_ld(mapping: &Mapping, text: &str, expected: &str) {
        let registry = registry();
        let err = registry
            .load_ngsi_ld_bounded(text, mapping, &SMALL)
            .unwrap_err();
        assert!(err.to_string().contains(expected), "{text}: {err}");
        assert!(registry.tree.is_empty());
    }

    /// Each kind of bad NGSI-LD input gets an error naming the entity index and id.
    #[test]
    fn ngsi_ld_errors() {
        let m = &person_mapping();
        let by_id = &Mapping::new("Person", SubjectKey::IdPrefix("urn:ngsi-ld:Person:".into()))
            .unwrap()
            .with_attribute(attribute("person.family_name"), "familyName")
            .unwrap();
        check_ngsi_ld(m, "[1,", "not a valid NGSI-LD file");
        check_ngsi_ld(m, "\"x\"", "expected an array of entities or one entity");
        check_ngsi_ld(m, "[{},{},{},{}]", "4 entities, more than the 3 allowed");
        check_ngsi_ld(m, "[1]", "entity 0: it is not a JSON object");
        check_ngsi_ld(
            m,
            r#"[{"id": "urn:a"}]"#,
            "entity 0: it has no string \"type\"",
        );
        check_ngsi_ld(
            m,
            r#"[{"id": "urn:a", "type": "Person"}]"#,
            "entity 0 (urn:a): it has no \"identifier\" attribute",
        );
        check_ngsi_ld(
            m,
            r#"[{"id": "urn:a", "type": "Person", "identifier": {"type": "Property", "value": 7}}]"#,
            "entity 0 (urn:a): its \"identifier\" attribute is not a string",
        );
        check_ngsi_ld(
            m,
            r#"[{"id": "urn:a", "type": "Person", "identifier": "bad id"}]"#,
            "entity 0 (urn:a): invalid subject id",
        );
        check_ngsi_ld(
            m,
            r#"[{"id": "urn:a", "type": "Person", "identifier": "s"}, {"id": "urn:a", "type": "Person", "identifier": "t"}]"#,
            "entity 1 (urn:a): the id is also used by entity 0",
        );
        check_ngsi_ld(
            m,
            r#"[{"id": "urn:a", "type": "Person", "identifier": "s"}, {"id": "urn:b", "type": "Person", "identifier": "s"}]"#,
            "entity 1 (urn:b): subject s already has entity 0",
        );
        check_ngsi_ld(
            m,
            r#"[{"id": "urn:a", "type": "Person", "identifier": "s", "familyName": {"type": "Property"}}]"#,
            "entity 0 (urn:a): attribute \"familyName\": a Property without \"value\"",
        );
        check_ngsi_ld(
            m,
            r#"[{"id": "urn:a", "type": "Person", "identifier": "s", "familyName": "0123456789abcdef"}]"#,
            "entity 0 (urn:a): attribute person.family_name is 18 bytes",
        );
        check_ngsi_ld(
            m,
            r#"[{"id": "urn:a", "type": "Person", "identifier": "s", "familyName": {"type": "Property", "value": null}}]"#,
            "entity 0 (urn:a): attribute person.family_name is null",
        );
        check_ngsi_ld(
            by_id,
            r#"{"id": "urn:other:1", "type": "Person"}"#,
            "entity 0 (urn:other:1): its id does not start with \"urn:ngsi-ld:Person:\"",
        );
        check_ngsi_ld(
            by_id,
            r#"[{"id": "urn:ngsi-ld:Person:a", "type": "Person"}, {"id": "urn:ngsi-ld:Person:b", "type": "Person"}, {"id": "urn:ngsi-ld:Person:c", "type": "Person"}]"#,
            "3 subjects, more than the 2 allowed",
        );
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<bool>().prop_map(Value::from),
            "[ -~]{0,12}".prop_map(Value::from),
            proptest::collection::vec("[a-zA-Z]{1,3}", 0..4).prop_map(Value::from),
        ]
    }

    /// An attribute as files write them: bare, normalized, broken, or a multi-attribute.
    fn attribute_shape() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        prop_oneof![
            json_value(),
            json_value().prop_map(|v| json!({"type": "Property", "value": v})),
            json_value().prop_map(|v| json!({"type": "Relationship", "object": v})),
            Just(json!({"type": "Property"})),
            Just(Value::Null),
            json_value().prop_map(|v| json!([
                {"type": "Property", "value": v, "datasetId": "urn:d"},
                {"type": "Property", "value": 1}
            ])),
            json_value()
                .prop_map(|v| json!([{"type": "Property", "value": v, "datasetId": "urn:d"}])),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(64))]

        /// Any valid registry file loads, and every value reads back exactly as written.
        #[test]
        fn loaded_values_read_back(
            subjects in proptest::collection::btree_map(
                "[a-z]{1,2}:[0-9-]{1,8}",
                proptest::collection::btree_map("[a-z]{1,3}(\\.[a-z_0-9]{1,3}){0,2}", json_value(), 0..4),
                0..6,
            )
        ) {
            let registry = registry();
            let text = json!({ "subjects": subjects }).to_string();
            let report = registry.load_json(&text).unwrap();
            proptest::prop_assert_eq!(report.subjects, subjects.len());
            for (id, attributes) in &subjects {
                let names: Vec<&str> = attributes.keys().map(String::as_str).collect();
                let want: Values = attributes
                    .iter()
                    .map(|(name, value)| (attribute(name), value.clone()))
                    .collect();
                proptest::prop_assert_eq!(read(&registry, id, &names).unwrap(), want);
            }
        }

        /// Arbitrary text never panics a JSON load, and a refused load writes nothing.
        #[test]
        fn arbitrary_text_never_panics(text in "[ -~]{0,200}") {
            let registry = registry();
            if registry.load_json(&text).is_err() {
                proptest::prop_assert!(registry.tree.is_empty());
            }
        }

        /// Entities with arbitrary attribute shapes never panic an NGSI-LD load;
        /// a refused load writes nothing, an accepted one writes one subject.
        #[test]
        fn arbitrary_entities_never_panic(
            identifier in attribute_shape(),
            family_name in attribute_shape(),
        ) {
            let registry = registry();
            let text = json!([{
                "id": "urn:a", "type": "Person",
                "identifier": identifier, "familyName": family_name,
            }])
            .to_string();
            match registry.load_ngsi_ld(&text, &person_mapping()) {
                Ok(report) => proptest::prop_assert_eq!(report.subjects, 1),
                Err(_) => proptest::prop_assert!(registry.tree.is_empty()),
            }
        }
    }
}
