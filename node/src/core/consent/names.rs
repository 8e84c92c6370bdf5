//! The names a consent is made of: subject ids, attributes, purposes, sector
//! labels, service ids (each validated at construction, so a value of the
//! type is a valid name) and the random [`ConsentId`].

use std::fmt;

use crate::core::ids::OperatorId;
use crate::limits::NAME_BYTES_MAX;

/// Why a name (subject, attribute, purpose, ...) is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {value:?}: {rule}")]
pub struct NameError {
    /// What kind of name.
    pub kind: &'static str,
    /// The offending value (truncated).
    pub value: String,
    /// The rule it breaks.
    pub rule: &'static str,
}

fn check_name(
    kind: &'static str,
    value: &str,
    rule: &'static str,
    ok: impl Fn(&str) -> bool,
) -> Result<(), NameError> {
    if value.is_empty() || value.len() > NAME_BYTES_MAX || !ok(value) {
        return Err(NameError {
            kind,
            value: value.chars().take(64).collect(),
            rule,
        });
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $rule:literal, $check:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps the name.
            pub fn new(value: impl Into<String>) -> Result<Self, NameError> {
                let value = value.into();
                check_name($kind, &value, $rule, $check)?;
                Ok(Self(value))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

fn printable(value: &str) -> bool {
    value.bytes().all(|b| b.is_ascii_graphic())
}

fn dotted_lowercase(value: &str) -> bool {
    value.split('.').all(|part| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    })
}

name_type!(
    /// A person as the home operator identifies them, e.g. `fi:hetu:010190-123A`.
    SubjectId,
    "subject id",
    "1 to 128 printable ASCII characters without spaces",
    printable
);
name_type!(
    /// A catalogued attribute, e.g. `income.gross_monthly`, `licence.driving.classes`.
    Attribute,
    "attribute",
    "dot-separated parts of a-z, 0-9 and _",
    dotted_lowercase
);
name_type!(
    /// A purpose as a W3C DPV term, e.g. `dpv:ServiceProvision`, or another
    /// vocabulary's CURIE (`prefix:Term`).
    Purpose,
    "purpose",
    "a CURIE such as dpv:ServiceProvision",
    |v: &str| v.split_once(':').is_some_and(|(p, t)| {
        !p.is_empty() && !t.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase())
            && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
);
name_type!(
    /// A sector label that members carry in the trust list (`education`).
    Sector,
    "sector",
    "a-z, 0-9, - and _",
    |v: &str| v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
);

/// A consumer service, e.g. `fi.helsinki/early-education`: the operator that
/// runs it, a slash, and the service's own name.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceId {
    full: String,
    operator: OperatorId,
}

impl ServiceId {
    /// Validates `operator/name`.
    pub fn new(value: impl Into<String>) -> Result<Self, NameError> {
        let full = value.into();
        let rule = "operator-id/name, e.g. fi.helsinki/early-education";
        let parsed = full.split_once('/').and_then(|(op, name)| {
            let name_ok = !name.is_empty()
                && name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
                });
            OperatorId::new(op).ok().filter(|_| name_ok)
        });
        check_name("service id", &full, rule, |_| parsed.is_some())?;
        let operator = parsed.ok_or_else(|| NameError {
            kind: "service id",
            value: full.clone(),
            rule,
        })?;
        Ok(Self { full, operator })
    }

    /// The operator that runs the service.
    pub fn operator(&self) -> &OperatorId {
        &self.operator
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.full
    }
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.full)
    }
}

impl fmt::Debug for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServiceId({})", self.full)
    }
}

crate::core::ids::random_id!(
    /// A 128-bit consent (or arrangement, or delegation) id, chosen at random
    /// by whoever asks first.
    ConsentId
);
