//! Identifiers: operator ids and message ids, validated at construction.

use std::fmt;

use crate::limits::OPERATOR_ID_BYTES_MAX;

/// The federation-wide name of an operator, e.g. `fi.helsinki`.
///
/// Lowercase ASCII letters, digits, `.`, `-` and `_`, starting with a letter,
/// at most [`OPERATOR_ID_BYTES_MAX`] bytes. The restriction keeps ids safe to
/// use as file names, log fields and sled key prefixes.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OperatorId(String);

/// Why a string is not a valid [`OperatorId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OperatorIdError {
    /// The id is empty.
    #[error("operator id is empty")]
    Empty,
    /// The id is longer than the limit.
    #[error("operator id is {0} bytes, more than the {OPERATOR_ID_BYTES_MAX} allowed")]
    TooLong(usize),
    /// The id contains a character outside `[a-z0-9._-]` or does not start with a letter.
    #[error("operator id {0:?} must start with a-z and contain only a-z, 0-9, '.', '-', '_'")]
    BadCharacter(String),
}

impl OperatorId {
    /// Validates and wraps an operator id.
    pub fn new(id: impl Into<String>) -> Result<Self, OperatorIdError> {
        let id = id.into();
        if id.is_empty() {
            return Err(OperatorIdError::Empty);
        }
        if id.len() > OPERATOR_ID_BYTES_MAX {
            return Err(OperatorIdError::TooLong(id.len()));
        }
        let first_is_letter = id.as_bytes()[0].is_ascii_lowercase();
        let all_allowed = id.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        });
        if !first_is_letter || !all_allowed {
            return Err(OperatorIdError::BadCharacter(id));
        }
        Ok(Self(id))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for OperatorId {
    type Error = OperatorIdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<OperatorId> for String {
    fn from(value: OperatorId) -> Self {
        value.0
    }
}

impl std::str::FromStr for OperatorId {
    type Err = OperatorIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for OperatorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl fmt::Debug for OperatorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OperatorId({})", self.0)
    }
}

/// Defines a 128-bit random identifier newtype, displayed as 32 lowercase hex
/// digits. The caller supplies the randomness (the core reads no RNG).
macro_rules! random_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name([u8; 16]);

        impl $name {
            /// Length in bytes.
            pub const LEN: usize = 16;

            /// Wraps 16 bytes.
            pub const fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(bytes)
            }

            /// Parses exactly 16 bytes.
            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                <[u8; 16]>::try_from(bytes).ok().map(Self)
            }

            /// Parses 32 hex digits.
            pub fn from_hex(hex_digits: &str) -> Option<Self> {
                let mut bytes = [0u8; 16];
                hex::decode_to_slice(hex_digits, &mut bytes).ok()?;
                Some(Self(bytes))
            }

            /// The raw bytes.
            pub const fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(&hex::encode(self.0))
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }
    };
}
pub(crate) use random_id;

random_id!(
    /// A 128-bit random message id.
    MessageId
);

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, ok: bool) {
        assert_eq!(OperatorId::new(input).is_ok(), ok, "{input:?}");
    }

    #[test]
    fn operator_ids() {
        check("fi.helsinki", true);
        check("se.arbetsformedlingen", true);
        check("fr.iledefrance-skills_2", true);
        check("", false);
        check("Fi.helsinki", false);
        check("1fi", false);
        check("fi helsinki", false);
        check("fi/../etc", false);
        check(&"a".repeat(OPERATOR_ID_BYTES_MAX), true);
        check(&"a".repeat(OPERATOR_ID_BYTES_MAX + 1), false);
    }

    #[test]
    fn message_id_hex_round_trip() {
        let id = MessageId::from_bytes([7; 16]);
        assert_eq!(MessageId::from_hex(&id.to_string()), Some(id));
        assert_eq!(MessageId::from_hex("zz"), None);
        assert_eq!(MessageId::from_slice(&[1; 15]), None);
    }
}
