//! The NGSI-LD entity model: how entities name their subject and hold the
//! attributes of the catalogue ([`Mapping`]), and how an entity and its
//! attribute values are read from JSON, normalized or keyValues (ETSI GS CIM
//! 009 clause 4.5).
//!
//! Both readers of NGSI-LD use it: the HTTP adapter
//! ([`NgsiLdSource`](super::NgsiLdSource)) on a broker's answers, and the
//! built-in registry ([`crate::sources::registry`]) on NGSI-LD files. It
//! does no I/O.

use std::collections::BTreeMap;

use serde_json::Value;

use super::ConfigError;
use crate::core::consent::Attribute;
pub use crate::limits::MAPPED_ATTRIBUTES_MAX;
pub use crate::limits::NGSI_LD_NAME_BYTES_MAX;

/// How the entities of a source name their subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectKey {
    /// An entity attribute (a Property) holds the subject id as a string; the
    /// adapter selects entities with `q=<attribute>=="<subject id>"`.
    Attribute(String),
    /// The entity id is this prefix followed by the subject id
    /// (`urn:ngsi-ld:Person:` + `fi:hetu:010180-1234`); the adapter selects
    /// the entity with `id=`.
    ///
    /// CIM 009 treats `attrs` as a filter too, so a subject whose entity has
    /// none of the requested attributes reads as
    /// [`SourceError::UnknownSubject`](crate::sources::SourceError::UnknownSubject)
    /// in this mode; [`SubjectKey::Attribute`] does not have this ambiguity.
    IdPrefix(String),
}

/// How many entities one subject has in a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Multiplicity {
    /// One entity per subject (a person record); more is an error.
    #[default]
    One,
    /// Any number of entities per subject (a diploma register: one entity
    /// per diploma). Each catalogue attribute then reads as a JSON array with
    /// one element per entity that has it, in entity id order.
    Many,
}

/// How NGSI-LD entities become subjects and catalogue attributes.
///
/// Built with [`Mapping::new`] and [`Mapping::with_attribute`], which validate
/// every name, so a mapping always yields a well-formed query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    entity_type: String,
    subject: SubjectKey,
    multiplicity: Multiplicity,
    /// Catalogue attribute → NGSI-LD attribute name (short term or URI).
    attributes: BTreeMap<Attribute, String>,
}

fn valid_ngsi_ld_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NGSI_LD_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b",\"';=()<>|&\\".contains(&b))
}

fn check_name(kind: &'static str, name: &str) -> Result<(), ConfigError> {
    if valid_ngsi_ld_name(name) {
        Ok(())
    } else {
        Err(ConfigError::Name {
            kind,
            value: name.chars().take(64).collect(),
        })
    }
}

impl Mapping {
    /// A mapping for entities of `entity_type` whose subject is found by `subject`,
    /// with no attributes mapped yet and [`Multiplicity::One`].
    pub fn new(entity_type: &str, subject: SubjectKey) -> Result<Self, ConfigError> {
        check_name("entity type", entity_type)?;
        match &subject {
            SubjectKey::Attribute(name) => check_name("subject attribute", name)?,
            SubjectKey::IdPrefix(prefix) => check_name("id prefix", prefix)?,
        }
        Ok(Self {
            entity_type: entity_type.to_owned(),
            subject,
            multiplicity: Multiplicity::One,
            attributes: BTreeMap::new(),
        })
    }

    /// Maps catalogue `attribute` to the NGSI-LD attribute `ngsi_ld_name`
    /// (replacing an earlier mapping of the same catalogue attribute).
    pub fn with_attribute(
        mut self,
        attribute: Attribute,
        ngsi_ld_name: &str,
    ) -> Result<Self, ConfigError> {
        check_name("attribute", ngsi_ld_name)?;
        if self.attributes.len() >= MAPPED_ATTRIBUTES_MAX
            && !self.attributes.contains_key(&attribute)
        {
            return Err(ConfigError::TooManyAttributes);
        }
        self.attributes.insert(attribute, ngsi_ld_name.to_owned());
        Ok(self)
    }

    /// Sets how many entities a subject has.
    pub fn with_multiplicity(mut self, multiplicity: Multiplicity) -> Self {
        self.multiplicity = multiplicity;
        self
    }

    /// The NGSI-LD entity type.
    pub fn entity_type(&self) -> &str {
        &self.entity_type
    }

    /// How entities name their subject.
    pub fn subject_key(&self) -> &SubjectKey {
        &self.subject
    }

    /// How many entities a subject has.
    pub fn multiplicity(&self) -> Multiplicity {
        self.multiplicity
    }

    /// The mapped attributes: catalogue attribute → NGSI-LD attribute name.
    pub fn attributes(&self) -> &BTreeMap<Attribute, String> {
        &self.attributes
    }

    /// The subject an entity belongs to, checked against this mapping, or why
    /// the entity cannot be placed. `form` says how to read attribute values.
    pub(crate) fn subject_of(&self, entity: &Entity<'_>, form: Form) -> Result<String, String> {
        match &self.subject {
            SubjectKey::IdPrefix(prefix) => match entity.id.strip_prefix(prefix.as_str()) {
                Some(rest) if !rest.is_empty() => Ok(rest.to_owned()),
                _ => Err(format!("its id does not start with {prefix:?}")),
            },
            SubjectKey::Attribute(name) => {
                let raw = entity
                    .attributes
                    .get(name.as_str())
                    .ok_or_else(|| format!("it has no {name:?} attribute naming its subject"))?;
                match attribute_value(raw, form) {
                    Ok(Value::String(subject)) => Ok(subject),
                    Ok(_) => Err(format!("its {name:?} attribute is not a string")),
                    Err(reason) => Err(format!("its {name:?} attribute: {reason}")),
                }
            }
        }
    }
}

/// How attribute values are read from an entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// Only the normalized representation is valid.
    Normalized,
    /// Values are bare (keyValues).
    KeyValues,
    /// Normalized attribute objects are unwrapped, anything else is a bare value
    /// (files, which may be written either way).
    Detect,
}
/// An entity as received: its id, types and attributes (borrowed from the JSON).
#[derive(Debug)]
pub(crate) struct Entity<'a> {
    pub(crate) id: &'a str,
    types: Vec<&'a str>,
    attributes: &'a serde_json::Map<String, Value>,
}

impl<'a> Entity<'a> {
    /// Checks the entity's shape: a JSON object with a string `id` and a
    /// string (or array of strings) `type`.
    pub(crate) fn parse(value: &'a Value) -> Result<Self, String> {
        let object = value.as_object().ok_or("it is not a JSON object")?;
        let id = object
            .get("id")
            .and_then(Value::as_str)
            .ok_or("it has no string \"id\"")?;
        let types = match object.get("type") {
            Some(Value::String(one)) => vec![one.as_str()],
            Some(Value::Array(many)) => many
                .iter()
                .map(|t| t.as_str().ok_or("its \"type\" array holds a non-string"))
                .collect::<Result<Vec<_>, _>>()?,
            _ => return Err("it has no string \"type\"".into()),
        };
        Ok(Self {
            id,
            types,
            attributes: object,
        })
    }

    /// Whether the entity is of `entity_type` (NGSI-LD entities may have several types).
    pub(crate) fn has_type(&self, entity_type: &str) -> bool {
        self.types.contains(&entity_type)
    }

    /// The value of attribute `name`, `Ok(None)` if the entity lacks it.
    pub(crate) fn value(&self, name: &str, form: Form) -> Result<Option<Value>, String> {
        match self.attributes.get(name) {
            None => Ok(None),
            Some(raw) => attribute_value(raw, form)
                .map(Some)
                .map_err(|reason| format!("attribute {name:?}: {reason}")),
        }
    }
}

/// The NGSI-LD attribute types (CIM 009 clause 4.5) and the member holding
/// each one's value.
const ATTRIBUTE_KINDS: [(&str, &str); 8] = [
    ("Property", "value"),
    ("GeoProperty", "value"),
    ("Relationship", "object"),
    ("LanguageProperty", "languageMap"),
    ("VocabProperty", "vocab"),
    ("JsonProperty", "json"),
    ("ListProperty", "valueList"),
    ("ListRelationship", "objectList"),
];

/// The member that holds the value of a normalized attribute of `kind`.
///
/// Kinds compare case-insensitively, since published examples carry
/// spellings such as "Geoproperty"; unknown kinds hold a `value`.
fn value_member(kind: &str) -> &'static str {
    ATTRIBUTE_KINDS
        .iter()
        .find(|(known, _)| known.eq_ignore_ascii_case(kind))
        .map_or("value", |(_, member)| member)
}

/// Whether `raw` is a normalized attribute object: its `type` is an NGSI-LD
/// attribute type. A bare value such as GeoJSON (`"type": "Point"`) is not.
fn is_normalized(raw: &Value) -> bool {
    raw.get("type").and_then(Value::as_str).is_some_and(|kind| {
        ATTRIBUTE_KINDS
            .iter()
            .any(|(known, _)| known.eq_ignore_ascii_case(kind))
    })
}

/// Reads one attribute's value in the given form.
///
/// A multi-attribute (an array of instances with `datasetId`s) reads as its
/// default instance, the one without a `datasetId`, as keyValues does (CIM 009
/// clause 4.5.5).
fn attribute_value(raw: &Value, form: Form) -> Result<Value, String> {
    let normalized = match form {
        Form::KeyValues => false,
        Form::Normalized => true,
        Form::Detect => match raw {
            Value::Array(items) => !items.is_empty() && items.iter().all(is_normalized),
            other => is_normalized(other),
        },
    };
    if !normalized {
        return Ok(raw.clone());
    }
    let instance = match raw {
        Value::Array(instances) => instances
            .iter()
            .find(|i| i.get("datasetId").is_none())
            .ok_or("a multi-attribute without a default instance (one without datasetId)")?,
        other => other,
    };
    let object = instance
        .as_object()
        .ok_or("not a normalized attribute object")?;
    let kind = object
        .get("type")
        .and_then(Value::as_str)
        .ok_or("a normalized attribute without a string \"type\"")?;
    let member = value_member(kind);
    object
        .get(member)
        .cloned()
        .ok_or_else(|| format!("a {kind} without \"{member}\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Checks how one raw attribute reads in `form`: the value, or an error containing `expected_err`.
    fn check(raw: Value, form: Form, expected: Result<Value, &str>) {
        let got = attribute_value(&raw, form);
        match (got, expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{raw}"),
            (Err(got), Err(want)) => assert!(got.contains(want), "{raw}: {got}"),
            (got, want) => panic!("{raw}: got {got:?}, want {want:?}"),
        }
    }

    /// Normalized, keyValues and detected attribute values read as CIM 009 defines them.
    #[test]
    fn attribute_values_in_each_form() {
        use Form::*;
        check(
            json!({"type": "Property", "value": 3150}),
            Normalized,
            Ok(json!(3150)),
        );
        check(
            json!({"type": "Relationship", "object": "urn:x"}),
            Normalized,
            Ok(json!("urn:x")),
        );
        check(
            json!({"type": "LanguageProperty", "languageMap": {"fi": "Helsinki"}}),
            Normalized,
            Ok(json!({"fi": "Helsinki"})),
        );
        check(
            json!({"type": "Geoproperty", "value": {"type": "Point", "coordinates": [1, 2]}}),
            Normalized,
            Ok(json!({"type": "Point", "coordinates": [1, 2]})),
        );
        check(
            json!([{"type": "Property", "value": 1, "datasetId": "urn:a"}, {"type": "Property", "value": 2}]),
            Normalized,
            Ok(json!(2)),
        );
        check(
            json!([{"type": "Property", "value": 1, "datasetId": "urn:a"}]),
            Normalized,
            Err("without a default instance"),
        );
        check(
            json!({"type": "Property"}),
            Normalized,
            Err("without \"value\""),
        );
        check(json!(42), Normalized, Err("not a normalized attribute"));
        check(
            json!({"value": 1}),
            Normalized,
            Err("without a string \"type\""),
        );
        check(json!(["B", "C"]), KeyValues, Ok(json!(["B", "C"])));
        check(
            json!({"type": "Property", "value": 1}),
            KeyValues,
            Ok(json!({"type": "Property", "value": 1})),
        );
        check(
            json!({"type": "Property", "value": 1}),
            Detect,
            Ok(json!(1)),
        );
        check(
            json!({"type": "Point", "coordinates": [1, 2]}),
            Detect,
            Ok(json!({"type": "Point", "coordinates": [1, 2]})),
        );
        check(json!(["B"]), Detect, Ok(json!(["B"])));
    }
}
