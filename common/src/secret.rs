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
