//! A value that must never be printed: Redis URLs with passwords, tokens.
//!
//! In config, a secret is either the value itself (best given through the
//! environment, `FOLDCACHE__REDIS__URL=...`) or a table naming a file that
//! holds it, `url = { file = "/run/secrets/redis-url" }` (trailing newlines
//! are dropped). Never on the command line.

use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

/// Holds a credential (or a URL that may carry one). `Debug` and `Display`
/// print `[redacted]`; only [`Secret::expose`] gives the value out.
#[derive(Clone, PartialEq, Eq, Serialize, Default)]
#[serde(transparent)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a value.
    pub const fn new(value: T) -> Self {
        Self(value)
    }

    /// The wrapped value; call it only where the value is used, never to log.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Source {
    Value(String),
    File {
        /// Path of a file holding the value.
        file: std::path::PathBuf,
    },
}

impl<'de> Deserialize<'de> for Secret<String> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Source::deserialize(d)? {
            Source::Value(v) => Ok(Self(v)),
            Source::File { file } => std::fs::read_to_string(&file)
                .map(|v| Self(v.trim_end_matches(['\n', '\r']).to_owned()))
                .map_err(|e| {
                    serde::de::Error::custom(format!(
                        "reading the secret file {}: {e}",
                        file.display()
                    ))
                }),
        }
    }
}

/// SHA-256 of a bearer token: what `[[auth.tokens]] sha256` holds (in
/// lower-case hex, [`token_hash_hex`]).
pub fn token_hash(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// [`token_hash`] in lower-case hex.
pub fn token_hash_hex(token: &str) -> String {
    token_hash(token)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The 32 bytes of a configured `sha256` (64 hex digits), or `None`.
pub fn parse_token_hash(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The token of an `Authorization: Bearer <token>` value (scheme matched
/// case-insensitively), or `None` for another scheme or an empty token.
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("redis://:hunter2@host".to_string());
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(s.expose(), "redis://:hunter2@host");
    }

    #[test]
    fn token_hashes_and_bearer_values_parse() {
        let h = token_hash_hex("t");
        assert_eq!(parse_token_hash(&h), Some(token_hash("t")));
        assert_eq!(parse_token_hash("zz"), None);
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
    }

    #[test]
    fn a_secret_is_read_from_a_file_or_given_inline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "hunter2\n").unwrap();
        let from_file: Secret<String> =
            serde_json::from_value(serde_json::json!({ "file": path.to_string_lossy() })).unwrap();
        assert_eq!(from_file.expose(), "hunter2");
        let inline: Secret<String> = serde_json::from_value(serde_json::json!("x")).unwrap();
        assert_eq!(inline.expose(), "x");
        let missing = serde_json::from_value::<Secret<String>>(
            serde_json::json!({ "file": "/nonexistent/secret" }),
        )
        .unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/secret"));
    }
}
