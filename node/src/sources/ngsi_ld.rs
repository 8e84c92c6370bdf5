//! NGSI-LD (ETSI GS CIM 009), the data model of OASC MIM1: how a node reads
//! a subject's attributes from NGSI-LD entities, whether a context broker
//! serves them over HTTP or a file holds them.
//!
//! A [`Mapping`] says which entities hold a subject (an entity type, and either
//! an identifier attribute or an entity id prefix) and which NGSI-LD attribute
//! holds each catalogue attribute. The mapping and the reading of entities are
//! shared with [`super::registry`], which loads NGSI-LD files with the same
//! mapping; the HTTP adapter [`NgsiLdSource`] reads the same entities from a
//! broker through `GET {base}/ngsi-ld/v1/entities`.
//!
//! # Layout
//! - `entity`: the entity model: [`Mapping`], [`SubjectKey`], [`Multiplicity`],
//!   and how entities and their attribute values (normalized or keyValues) are read.
//!   No I/O; the registry uses it directly.
//! - `client`: the HTTP adapter [`NgsiLdSource`] and its [`Config`]: queries,
//!   pagination, bounds on what a broker sends, the subject check on every entity.
//! - [`ConfigError`] (here): why a mapping or an adapter configuration is invalid.

mod client;
pub(crate) mod entity;

pub use client::{
    Config, MediaType, NgsiLdSource, Representation, PAGES_MAX, PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX,
    READ_TIMEOUT_DEFAULT, RESPONSE_BYTES_MAX,
};
pub use entity::{
    Mapping, Multiplicity, SubjectKey, MAPPED_ATTRIBUTES_MAX, NGSI_LD_NAME_BYTES_MAX,
};

/// Why a mapping or adapter configuration is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// An NGSI-LD name is empty, too long, or has characters that would break a query.
    #[error("invalid NGSI-LD {kind} {value:?}: 1 to 256 printable ASCII characters without , \" ' ; = ( ) < > | & \\")]
    Name {
        /// What the name names (entity type, attribute, id prefix).
        kind: &'static str,
        /// The offending name, truncated.
        value: String,
    },
    /// The mapping maps more catalogue attributes than [`MAPPED_ATTRIBUTES_MAX`].
    #[error("the mapping maps more than {MAPPED_ATTRIBUTES_MAX} attributes")]
    TooManyAttributes,
    /// The base URL cannot be parsed or is not `http://host[:port][/path]`.
    #[error("invalid broker base URL {url:?}: {reason}")]
    BaseUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The page size is 0 or above [`PAGE_SIZE_MAX`].
    #[error("page size {0} is outside 1..={PAGE_SIZE_MAX}")]
    PageSize(u32),
    /// The timeout is zero.
    #[error("the read timeout must be above zero")]
    Timeout,
    /// The JSON-LD context URL or tenant cannot be sent in an HTTP header.
    #[error("the {0} cannot be sent as an HTTP header value")]
    Header(&'static str),
}
