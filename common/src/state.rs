//! An entity's state as foldcache stores and serves it.
//!
//! A state is a JSON object. It is stored as a Redis hash with one field per
//! top-level member; each field's value is the *canonical* JSON encoding of
//! that member (so numbers, booleans, nulls, arrays and nested objects keep
//! their types). The body served over HTTP is the canonical encoding of the
//! whole object, rebuilt from the hash by [`assemble_body`]; the strong ETag
//! is the SHA-256 of exactly those bytes, computed once by ingest.
//!
//! Canonical encoding: no insignificant white space, object members sorted by
//! the UTF-8 bytes of their names at every depth, strings escaped as
//! `serde_json` escapes them, numbers as `serde_json` prints them. Two
//! states get the same ETag if and only if they encode to the same bytes.

use crate::keys::META_PREFIX;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Why a JSON value cannot be an entity state.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StateError {
    /// The value is not a JSON object.
    #[error("state is a JSON {0}, not an object")]
    NotAnObject(&'static str),
    /// A top-level member uses foldcache's reserved prefix.
    #[error("top-level member name uses the reserved prefix `_fc:`")]
    ReservedField,
}

/// A state ready to be written: canonical member encodings, sorted by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityState {
    fields: Vec<(String, String)>,
}

impl EntityState {
    /// Builds the state from a decoded JSON value.
    pub fn from_value(value: Value) -> Result<Self, StateError> {
        match value {
            Value::Object(map) => Self::from_object(map),
            other => Err(StateError::NotAnObject(kind(&other))),
        }
    }

    /// Builds the state from a JSON object.
    pub fn from_object(map: Map<String, Value>) -> Result<Self, StateError> {
        let mut fields = Vec::with_capacity(map.len());
        for (name, value) in map {
            if name.starts_with(META_PREFIX) {
                return Err(StateError::ReservedField);
            }
            let mut encoded = Vec::new();
            write_canonical(&value, &mut encoded);
            // write_canonical only emits UTF-8 (serde_json output and ASCII).
            let encoded = String::from_utf8(encoded).unwrap_or_default();
            fields.push((name, encoded));
        }
        fields.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        Ok(Self { fields })
    }

    /// `(name, canonical JSON)` per top-level member, sorted by name.
    pub fn fields(&self) -> &[(String, String)] {
        &self.fields
    }

    /// The canonical encoding of the whole object: the HTTP body.
    pub fn body(&self) -> Vec<u8> {
        let mut refs: Vec<(&str, &str)> = self
            .fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assemble_body(&mut refs)
    }
}

/// Rebuilds the canonical body from `(name, canonical JSON)` pairs, as read
/// back from a hash (meta fields already removed). Sorts `fields` in place.
pub fn assemble_body(fields: &mut [(&str, &str)]) -> Vec<u8> {
    fields.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let len: usize = fields.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
    let mut out = Vec::with_capacity(len + 2);
    out.push(b'{');
    for (i, (name, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json_string(name, &mut out);
        out.push(b':');
        out.extend_from_slice(value.as_bytes());
    }
    out.push(b'}');
    out
}

/// The strong validator of a body: URL-safe base64 (no padding) of its
/// SHA-256, 43 characters, without the surrounding quotes.
pub fn etag_of(body: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(body))
}

/// Writes `value` in canonical form.
pub fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (name, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json_string(name, out);
                out.push(b':');
                write_canonical(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out);
            }
            out.push(b']');
        }
        // Scalars: serde_json's own compact printing is canonical enough
        // (deterministic number formatting and string escaping).
        scalar => {
            // Writing to a Vec cannot fail.
            let _ignored = serde_json::to_writer(&mut *out, scalar);
        }
    }
}

/// Writes `s` as a JSON string, escaped as the canonical encoding escapes
/// member names and string values.
pub fn write_json_string(s: &str, out: &mut Vec<u8>) {
    let _ignored = serde_json::to_writer(&mut *out, s);
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn canonical_body_sorts_members_at_every_depth() {
        let v = json!({"b": 1, "a": {"z": [1, {"y": null, "x": true}], "c": "é\n"}, "n": 1.5});
        let s = EntityState::from_value(v).unwrap();
        assert_eq!(
            String::from_utf8(s.body()).unwrap(),
            r#"{"a":{"c":"é\n","z":[1,{"x":true,"y":null}]},"b":1,"n":1.5}"#
        );
    }

    #[test]
    fn body_round_trips_to_the_same_value() {
        let v = json!({"name": "김민준", "salary": 5_000_000, "active": true, "manager": null,
                       "skills": ["rust", "sql"], "address": {"city": "Seoul"}});
        let s = EntityState::from_value(v.clone()).unwrap();
        let back: Value = serde_json::from_slice(&s.body()).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn refuses_non_objects_and_reserved_members() {
        assert_eq!(
            EntityState::from_value(json!([1])),
            Err(StateError::NotAnObject("array"))
        );
        assert_eq!(
            EntityState::from_value(json!({"_fc:etag": "x"})),
            Err(StateError::ReservedField)
        );
    }

    #[test]
    fn etag_is_43_url_safe_characters() {
        let e = etag_of(b"{}");
        assert_eq!(e.len(), 43);
        assert!(
            e.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            "\\PC{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("\\PC{0,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn etag_changes_iff_content_changes(
            a in prop::collection::btree_map("[a-z]{1,6}", arb_json(), 0..6),
            b in prop::collection::btree_map("[a-z]{1,6}", arb_json(), 0..6),
        ) {
            let va = Value::Object(a.into_iter().collect());
            let vb = Value::Object(b.into_iter().collect());
            let sa = EntityState::from_value(va.clone()).unwrap();
            let sb = EntityState::from_value(vb.clone()).unwrap();
            prop_assert_eq!(va == vb, etag_of(&sa.body()) == etag_of(&sb.body()));
            // The hash fields reassemble to exactly the body that was hashed.
            let mut refs: Vec<(&str, &str)> =
                sa.fields().iter().rev().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            prop_assert_eq!(assemble_body(&mut refs), sa.body());
        }
    }
}
