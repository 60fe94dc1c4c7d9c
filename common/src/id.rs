//! Validated names: an [`EntityName`] (`employees`) and an [`EntityId`]
//! (`E000123`). Both end up inside Redis keys, so both are parsed, never
//! trusted: no `:`, braces, glob characters, white space, control characters
//! or non-ASCII bytes can reach the key scheme, and lengths are bounded.

use std::fmt;
use thiserror::Error;

/// The longest entity id accepted, in bytes.
pub const MAX_ID_LEN: usize = 128;
/// The longest entity name accepted, in bytes.
pub const MAX_ENTITY_NAME_LEN: usize = 32;

/// Why a string is not a valid id or entity name.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum IdError {
    /// The string is empty.
    #[error("must not be empty")]
    Empty,
    /// The string is longer than allowed.
    #[error("longer than {max} bytes")]
    TooLong {
        /// The limit that was exceeded.
        max: usize,
    },
    /// A byte outside the allowed set, at this position.
    #[error("character at byte {position} is not allowed (allowed: {allowed})")]
    BadCharacter {
        /// Byte offset of the first offending character.
        position: usize,
        /// Human description of the allowed set.
        allowed: &'static str,
    },
    /// The bytes are not UTF-8 (a Kafka key or a URL segment).
    #[error("is not valid UTF-8 (at byte {position})")]
    NotUtf8 {
        /// Byte offset of the first invalid byte.
        position: usize,
    },
    /// First or last character is not a letter or digit.
    #[error("must start and end with a letter or digit")]
    BadEdge,
}

const ID_ALLOWED: &str = "ASCII letters, digits, '.', '_' and '-'";
const NAME_ALLOWED: &str = "lowercase ASCII letters, digits and '_'";

/// An entity id as it appears in a URL, a Kafka key and a Redis key.
///
/// Allowed: 1 to [`MAX_ID_LEN`] bytes of `[A-Za-z0-9._-]`, starting and ending
/// with a letter or digit (so `.`, `..`, `-x` are refused).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityId(String);

impl EntityId {
    /// Parses and validates an id.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        validate(s, MAX_ID_LEN, ID_ALLOWED, |b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
        })?;
        let (first, last) = (s.as_bytes()[0], s.as_bytes()[s.len() - 1]);
        if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
            return Err(IdError::BadEdge);
        }
        Ok(Self(s.to_owned()))
    }

    /// Parses raw bytes (a Kafka key): non-UTF-8 is refused like any other
    /// bad character.
    pub fn parse_bytes(b: &[u8]) -> Result<Self, IdError> {
        match std::str::from_utf8(b) {
            Ok(s) => Self::parse(s),
            Err(e) => Err(IdError::NotUtf8 {
                position: e.valid_up_to(),
            }),
        }
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name of an entity type (`employees`, `teams`, `permissions`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityName(String);

impl EntityName {
    /// Parses and validates an entity name: `[a-z0-9_]`, starting with a
    /// letter, at most [`MAX_ENTITY_NAME_LEN`] bytes.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        validate(s, MAX_ENTITY_NAME_LEN, NAME_ALLOWED, |b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'
        })?;
        if !s.as_bytes()[0].is_ascii_lowercase() {
            return Err(IdError::BadEdge);
        }
        Ok(Self(s.to_owned()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EntityName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn validate(
    s: &str,
    max: usize,
    allowed: &'static str,
    ok: impl Fn(u8) -> bool,
) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > max {
        return Err(IdError::TooLong { max });
    }
    match s.bytes().position(|b| !ok(b)) {
        Some(position) => Err(IdError::BadCharacter { position, allowed }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_ordinary_ids() {
        for ok in ["E000123", "acme.E1", "T-42", "a", "x_y.z-9"] {
            assert_eq!(EntityId::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_key_scheme_injection() {
        let long = "a".repeat(10 * 1024);
        for bad in [
            "", "*", "{x}", "..", ".", "a b", "a\nb", "a\0b", "a:b", "é", "-a", "a-", &long,
        ] {
            assert!(EntityId::parse(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(EntityId::parse_bytes(&[0x45, 0xff, 0x31]).is_err());
    }

    #[test]
    fn entity_names() {
        assert!(EntityName::parse("employees").is_ok());
        for bad in ["", "Employees", "1x", "a-b", "a:b", &"a".repeat(33)] {
            assert!(EntityName::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    proptest! {
        #[test]
        fn a_valid_id_never_contains_key_syntax(s in "\\PC{0,40}") {
            if let Ok(id) = EntityId::parse(&s) {
                let forbidden = [':', '{', '}', '*', '?', '[', ']', ' '];
                prop_assert!(!id.as_str().contains(forbidden), "{:?}", id);
                prop_assert!(id.as_str().len() <= MAX_ID_LEN);
            }
        }
    }
}
