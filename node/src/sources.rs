//! Data sources: the registries a node answers data requests from.
//!
//! A source is reached through the [`DataSource`] trait, so the request
//! logic does not know whether values come from the node's own sled-backed
//! registry (loaded from JSON or NGSI-LD files; what the testnet uses) or from
//! an unchanged NGSI-LD context broker over HTTP (OASC MIM1).
//!
//! # Layout
//! - [`registry`]: the built-in registry in sled, loaded from JSON or NGSI-LD files.
//! - [`ngsi_ld`]: the NGSI-LD entity model (shared with the registry) and the HTTP adapter (`/ngsi-ld/v1/entities`).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use crate::core::consent::{Attribute, SubjectId};

pub mod ngsi_ld;
pub mod registry;

/// What a read returns: the attributes found (missing ones are absent).
pub type Values = BTreeMap<Attribute, serde_json::Value>;

/// A boxed future, so that sources can be used as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a source could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The source has no record of the subject.
    #[error("the source has no record of this subject")]
    UnknownSubject,
    /// The source cannot be reached or failed; the request may be retried.
    #[error("the source is unavailable: {0}")]
    Unavailable(String),
    /// The source answered with something that is not a valid record.
    #[error("the source answered with an invalid record: {0}")]
    Malformed(String),
    /// More entities match the subject than
    /// [`crate::limits::ENTITIES_PER_SUBJECT_MAX`]: the subject's data is
    /// larger than a read may hold (or the source ignored the query).
    #[error("more than {max} entities match the subject at the source")]
    TooManyEntities {
        /// The limit.
        max: usize,
    },
}

/// A registry that holds attribute values of subjects.
///
/// Implementations must read only the attributes asked for (data
/// minimisation), bound what they read from remote input, and be cancel-safe
/// (a dropped future leaves nothing half-done).
pub trait DataSource: Send + Sync + std::fmt::Debug {
    /// Reads `attributes` of `subject`. Attributes the source does not hold
    /// for this subject are absent from the result; a subject the source does
    /// not know at all is [`SourceError::UnknownSubject`].
    fn read<'a>(
        &'a self,
        subject: &'a SubjectId,
        attributes: &'a [Attribute],
    ) -> BoxFuture<'a, Result<Values, SourceError>>;

    /// A short description for logs and status (`sled registry`, `ngsi-ld http://...`).
    fn describe(&self) -> String;
}
