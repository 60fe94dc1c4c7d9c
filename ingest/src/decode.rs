//! Turns a Kafka record into a fold operation, or into a [`Poison`] reason.
//!
//! This is where a tombstone (null value, or Debezium `op: "d"`) becomes a
//! delete; `fold/` turns that delete into a Redis `DEL`. A source's jq
//! programs run here too: `id_from_key` on the key, `transform` on the
//! state (`foldcache_common::transform`); a state the transform filters
//! out deletes, like a tombstone, since a record is its key's whole state.

use crate::source::{Role, Source};
use foldcache_common::config::ValueFormat;
use foldcache_common::id::{EntityId, IdError};
use foldcache_common::schema::SchemaViolation;
use foldcache_common::state::{EntityState, StateError};
use foldcache_common::transform::TransformError;
use serde_json::Value;
use thiserror::Error;

/// What a record asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// Replace the entity's state.
    Upsert {
        /// The entity id (source prefix applied).
        id: EntityId,
        /// The new full state.
        state: EntityState,
    },
    /// Remove the entity.
    Delete {
        /// The entity id (source prefix applied).
        id: EntityId,
    },
    /// The source's `transform` filtered the state out: removed like a
    /// tombstone (a record is its key's whole state), counted apart.
    Filtered {
        /// The entity id (source prefix applied).
        id: EntityId,
    },
    /// An identity link (a links topic's record): the parts the sources
    /// hold under `id` are folded into `target` from now on (`None`:
    /// unlinked, back under `id`).
    Link {
        /// The id as the sources name it.
        id: EntityId,
        /// Its canonical id.
        target: Option<EntityId>,
    },
}

impl Decoded {
    /// The entity id either way.
    pub fn id(&self) -> &EntityId {
        match self {
            Decoded::Upsert { id, .. }
            | Decoded::Delete { id }
            | Decoded::Filtered { id }
            | Decoded::Link { id, .. } => id,
        }
    }
}

/// Why a record cannot be folded. It goes to the dead-letter topic with
/// [`Poison::code`] in its headers.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Poison {
    /// The record has no key, so it names no entity.
    #[error("record has no key")]
    MissingKey,
    /// The key is not a valid id.
    #[error("key is not a valid entity id: {0}")]
    InvalidId(IdError),
    /// The value is larger than `ingest.max_value_bytes`.
    #[error("value of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Value size.
        size: usize,
        /// Configured limit.
        limit: usize,
    },
    /// The value is not valid UTF-8.
    #[error("value is not valid UTF-8")]
    InvalidUtf8,
    /// The value is not JSON.
    #[error("value is not valid JSON: {0}")]
    InvalidJson(String),
    /// The value is JSON but not a usable state.
    #[error("{0}")]
    BadState(StateError),
    /// A Debezium envelope without a usable `op`/`after`.
    #[error("malformed Debezium envelope: {0}")]
    BadEnvelope(&'static str),
    /// The source's `transform` or `id_from_key` program could not handle
    /// the record (the reason never quotes the record).
    #[error("{0}")]
    Transform(TransformError),
    /// The state (after `transform`) fails the entity's JSON Schema; the
    /// reason names the paths, never the value.
    #[error("{0}")]
    Schema(SchemaViolation),
    /// The object has more top-level members than `ingest.max_members`.
    #[error("object has {members} top-level members, over the limit of {limit}")]
    TooManyMembers {
        /// Members of the object.
        members: usize,
        /// Configured limit.
        limit: usize,
    },
}

impl Poison {
    /// A stable, low-cardinality code for headers and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Poison::MissingKey => "missing_key",
            Poison::InvalidId(_) => "invalid_id",
            Poison::TooLarge { .. } => "too_large",
            Poison::InvalidUtf8 => "invalid_utf8",
            Poison::InvalidJson(_) => "invalid_json",
            Poison::BadState(StateError::NotAnObject(_)) => "not_an_object",
            Poison::BadState(StateError::ReservedField) => "reserved_field",
            Poison::BadEnvelope(_) => "bad_envelope",
            Poison::TooManyMembers { .. } => "too_many_members",
            Poison::Transform(e) => e.code(),
            Poison::Schema(_) => "schema_violation",
        }
    }
}

/// Limits a record must stay within to be folded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest value in bytes (`ingest.max_value_bytes`).
    pub max_value_bytes: usize,
    /// Most top-level members of an object; 0 = any number
    /// (`ingest.max_members`).
    pub max_members: usize,
}

/// Decodes one record of `source` with only a value size limit.
pub fn decode(
    source: &Source,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    max_value_bytes: usize,
) -> Result<Decoded, Poison> {
    let limits = Limits {
        max_value_bytes,
        max_members: 0,
    };
    decode_within(source, key, value, limits)
}

/// Decodes one record of `source` within `limits`.
pub fn decode_within(
    source: &Source,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    limits: Limits,
) -> Result<Decoded, Poison> {
    let max_value_bytes = limits.max_value_bytes;
    let key = key.ok_or(Poison::MissingKey)?;
    if source.role == Role::Links {
        return decode_link(key, value, max_value_bytes);
    }
    let id = entity_id(source, key)?;
    let Some(value) = value else {
        return Ok(Decoded::Delete { id });
    };
    let text = value_text(value, max_value_bytes)?;
    let json: Value =
        serde_json::from_str(text).map_err(|e| Poison::InvalidJson(json_error_position(&e)))?;
    let state = match source.format {
        ValueFormat::Json => json,
        ValueFormat::Debezium => match debezium_after(json)? {
            Some(after) => after,
            None => return Ok(Decoded::Delete { id }),
        },
    };
    if let Value::Object(map) = &state
        && limits.max_members > 0
        && map.len() > limits.max_members
    {
        return Err(Poison::TooManyMembers {
            members: map.len(),
            limit: limits.max_members,
        });
    }
    let state = match &source.programs.transform {
        None => state,
        Some(program) => match program
            .run_transform(state, id.as_str())
            .map_err(Poison::Transform)?
        {
            Some(object) => Value::Object(object),
            None => return Ok(Decoded::Filtered { id }),
        },
    };
    let state = match (&source.role, state) {
        (Role::Part { fields: Some(keep) }, Value::Object(mut members)) => {
            members.retain(|name, _| keep.contains(name));
            Value::Object(members)
        }
        (_, state) => state,
    };
    if let Some(schema) = &source.programs.schema {
        schema.check(&state).map_err(Poison::Schema)?;
    }
    let state = EntityState::from_value(state).map_err(Poison::BadState)?;
    Ok(Decoded::Upsert { id, state })
}

/// Only the position of a JSON error: serde's message can quote input.
fn json_error_position(e: &serde_json::Error) -> String {
    format!(
        "{:?} error at line {} column {}",
        e.classify(),
        e.line(),
        e.column()
    )
}

/// A value as text, within the size limit.
fn value_text(value: &[u8], max_value_bytes: usize) -> Result<&str, Poison> {
    if value.len() > max_value_bytes {
        return Err(Poison::TooLarge {
            size: value.len(),
            limit: max_value_bytes,
        });
    }
    std::str::from_utf8(value).map_err(|_| Poison::InvalidUtf8)
}

/// A link record: key = the id as the sources name it, value = the
/// canonical id, as text or as a JSON string; null (or JSON `null`)
/// unlinks.
fn decode_link(
    key: &[u8],
    value: Option<&[u8]>,
    max_value_bytes: usize,
) -> Result<Decoded, Poison> {
    let id = EntityId::parse(utf8_key(key)?).map_err(Poison::InvalidId)?;
    let Some(value) = value else {
        return Ok(Decoded::Link { id, target: None });
    };
    let text = value_text(value, max_value_bytes)?.trim();
    let target = match text {
        "null" => return Ok(Decoded::Link { id, target: None }),
        quoted if quoted.starts_with('"') => serde_json::from_str::<String>(quoted)
            .map_err(|e| Poison::InvalidJson(json_error_position(&e)))?,
        bare => bare.to_owned(),
    };
    let target = EntityId::parse(&target).map_err(Poison::InvalidId)?;
    Ok(Decoded::Link {
        id,
        target: Some(target),
    })
}

fn entity_id(source: &Source, key: &[u8]) -> Result<EntityId, Poison> {
    let raw = match (source.format, &source.programs.id_from_key) {
        (ValueFormat::Json, None) => utf8_key(key)?.to_owned(),
        (ValueFormat::Debezium, None) => debezium_key(key)?,
        (ValueFormat::Json, Some(program)) => program
            .run_id(Value::String(utf8_key(key)?.to_owned()))
            .map_err(Poison::Transform)?,
        (ValueFormat::Debezium, Some(program)) => program
            .run_id(debezium_key_json(key)?)
            .map_err(Poison::Transform)?,
    };
    let full = if source.id_prefix.is_empty() {
        raw
    } else {
        format!("{}{raw}", source.id_prefix)
    };
    EntityId::parse(&full).map_err(Poison::InvalidId)
}

fn utf8_key(key: &[u8]) -> Result<&str, Poison> {
    std::str::from_utf8(key).map_err(|e| {
        Poison::InvalidId(IdError::NotUtf8 {
            position: e.valid_up_to(),
        })
    })
}

/// A Debezium key's JSON, out of the converter's `payload` when schemas
/// are enabled: what `id_from_key` reads.
fn debezium_key_json(key: &[u8]) -> Result<Value, Poison> {
    let v: Value =
        serde_json::from_slice(key).map_err(|_| Poison::BadEnvelope("key is not JSON"))?;
    Ok(match v {
        Value::Object(mut m) if m.contains_key("payload") && m.len() <= 2 => {
            m.remove("payload").unwrap_or(Value::Null)
        }
        other => other,
    })
}

/// Debezium keys are JSON: `{"id": 7}`, `{"payload": {"id": 7}}` or a bare
/// string. A single-member object yields that member's value.
fn debezium_key(key: &[u8]) -> Result<String, Poison> {
    let v = debezium_key_json(key)?;
    let scalar = match v {
        Value::Object(m) if m.len() == 1 => m.into_iter().next().map(|(_, v)| v),
        other => Some(other),
    };
    match scalar {
        Some(Value::String(s)) => Ok(s),
        Some(Value::Number(n)) => Ok(n.to_string()),
        _ => Err(Poison::BadEnvelope("key is not a single string or number")),
    }
}

/// `Some(after)` for creates, updates and snapshot reads; `None` for deletes.
fn debezium_after(envelope: Value) -> Result<Option<Value>, Poison> {
    let Value::Object(mut m) = envelope else {
        return Err(Poison::BadEnvelope("envelope is not an object"));
    };
    // With the JSON converter's schemas enabled, the event sits in `payload`.
    if m.contains_key("schema")
        && let Some(Value::Object(p)) = m.remove("payload")
    {
        m = p;
    }
    match m.get("op").and_then(Value::as_str) {
        Some("d") => Ok(None),
        Some("c" | "u" | "r") => match m.remove("after") {
            Some(after @ Value::Object(_)) => Ok(Some(after)),
            _ => Err(Poison::BadEnvelope("`after` is not an object")),
        },
        Some(_) => Err(Poison::BadEnvelope("unsupported `op`")),
        None => Err(Poison::BadEnvelope("missing `op`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foldcache_common::id::EntityName;

    fn src(format: ValueFormat, prefix: &str) -> Source {
        Source {
            topic: "t".into(),
            entity: EntityName::parse("employees").unwrap(),
            format,
            id_prefix: prefix.into(),
            ttl_ms: 1000,
            programs: Default::default(),
            role: crate::source::Role::State,
        }
    }

    #[test]
    fn null_value_is_a_delete() {
        let d = decode(&src(ValueFormat::Json, ""), Some(b"E1"), None, 100).unwrap();
        assert_eq!(
            d,
            Decoded::Delete {
                id: EntityId::parse("E1").unwrap()
            }
        );
    }

    #[test]
    fn json_object_is_an_upsert_with_prefix() {
        let d = decode(
            &src(ValueFormat::Json, "acme."),
            Some(b"E1"),
            Some(br#"{"a":1}"#),
            100,
        )
        .unwrap();
        assert_eq!(d.id().as_str(), "acme.E1");
        assert!(matches!(d, Decoded::Upsert { .. }));
    }

    #[test]
    fn poison_reasons() {
        let s = src(ValueFormat::Json, "");
        let code = |k: Option<&[u8]>, v: Option<&[u8]>| decode(&s, k, v, 16).unwrap_err().code();
        assert_eq!(code(None, Some(b"{}")), "missing_key");
        assert_eq!(code(Some(b"a b"), Some(b"{}")), "invalid_id");
        assert_eq!(code(Some(b"\xff"), Some(b"{}")), "invalid_id");
        assert_eq!(code(Some(b"E1"), Some(&[b' '; 17])), "too_large");
        assert_eq!(code(Some(b"E1"), Some(b"\xff\xfe")), "invalid_utf8");
        assert_eq!(code(Some(b"E1"), Some(b"{nope")), "invalid_json");
        assert_eq!(code(Some(b"E1"), Some(b"[1]")), "not_an_object");
        assert_eq!(code(Some(b"E1"), Some(br#"{"_fc:x":1}"#)), "reserved_field");
    }

    #[test]
    fn json_error_never_quotes_the_value() {
        let s = src(ValueFormat::Json, "");
        let e = decode(&s, Some(b"E1"), Some(b"{\"salary\": secret}"), 100).unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    fn with_programs(mut s: Source, transform: &str, id_from_key: Option<&str>) -> Source {
        s.programs.transform = Some(std::sync::Arc::new(
            foldcache_common::transform::Program::transform(transform).unwrap(),
        ));
        s.programs.id_from_key = id_from_key.map(|p| {
            std::sync::Arc::new(foldcache_common::transform::Program::id_from_key(p).unwrap())
        });
        s
    }

    fn upserted(d: Decoded) -> (String, Value) {
        match d {
            Decoded::Upsert { id, state } => (
                id.as_str().to_owned(),
                serde_json::from_slice(&state.body()).unwrap(),
            ),
            other => panic!("not an upsert: {other:?}"),
        }
    }

    #[test]
    fn a_debezium_source_maps_its_ids_and_fields_into_the_canonical_shape() {
        let s = with_programs(
            src(ValueFormat::Debezium, "gx."),
            r#"{id: $id, name: "\(.first) \(.last)", company: "globex"}"#,
            Some(r#""E\(.emp_no)""#),
        );
        let up = decode(
            &s,
            Some(br#"{"payload":{"emp_no":42}}"#),
            Some(br#"{"op":"c","after":{"first":"Ada","last":"L","salary":9}}"#),
            1000,
        )
        .unwrap();
        assert_eq!(
            upserted(up),
            (
                "gx.E42".to_owned(),
                serde_json::json!({"id": "gx.E42", "name": "Ada L", "company": "globex"})
            )
        );
        // A tombstone carries only the key: the id program still names it.
        let del = decode(&s, Some(br#"{"emp_no":42}"#), None, 1000).unwrap();
        assert_eq!(del.id().as_str(), "gx.E42");
        assert!(matches!(del, Decoded::Delete { .. }));
    }

    #[test]
    fn a_filtered_state_deletes_and_failures_are_poison_without_values() {
        let s = with_programs(
            src(ValueFormat::Json, ""),
            r#"select(.status != "gone") | {n: (.n + 1)}"#,
            None,
        );
        let filtered = decode(&s, Some(b"E1"), Some(br#"{"status":"gone"}"#), 100).unwrap();
        assert_eq!(
            filtered,
            Decoded::Filtered {
                id: EntityId::parse("E1").unwrap()
            }
        );
        let e = decode(&s, Some(b"E1"), Some(br#"{"n":"SECRET"}"#), 100).unwrap_err();
        assert_eq!(e.code(), "transform_error");
        assert!(!e.to_string().contains("SECRET"), "{e}");
        let s = with_programs(src(ValueFormat::Json, ""), ".n", Some(".x"));
        let e = decode(&s, Some(b"E1"), Some(br#"{"n":1}"#), 100).unwrap_err();
        assert_eq!(e.code(), "transform_error", "a string key has no .x: {e}");
        let s = with_programs(src(ValueFormat::Json, ""), ".n", None);
        let e = decode(&s, Some(b"E1"), Some(br#"{"n":1}"#), 100).unwrap_err();
        assert_eq!(e.code(), "transform_output");
        let mut s = with_programs(src(ValueFormat::Json, ""), "{email: .mail}", None);
        s.programs.schema = Some(std::sync::Arc::new(
            foldcache_common::schema::Schema::compile(&serde_json::json!({
                "properties": {"email": {"type": "string"}}
            }))
            .unwrap(),
        ));
        let e = decode(&s, Some(b"E1"), Some(br#"{"mail":9876}"#), 100).unwrap_err();
        assert_eq!(e.code(), "schema_violation");
        assert!(e.to_string().contains("\"/email\""), "{e}");
        assert!(!e.to_string().contains("9876"), "{e}");
        let s = with_programs(src(ValueFormat::Json, ""), r#"{"_fc:x": 1}"#, None);
        let e = decode(&s, Some(b"E1"), Some(b"{}"), 100).unwrap_err();
        assert_eq!(e.code(), "reserved_field");
    }

    #[test]
    fn debezium_envelopes() {
        let s = src(ValueFormat::Debezium, "");
        let up = decode(
            &s,
            Some(br#"{"id":"E7"}"#),
            Some(br#"{"op":"u","before":null,"after":{"n":1}}"#),
            1000,
        )
        .unwrap();
        assert_eq!(up.id().as_str(), "E7");
        assert!(matches!(up, Decoded::Upsert { .. }));
        let del = decode(
            &s,
            Some(br#"{"id":7}"#),
            Some(br#"{"op":"d","before":{"n":1},"after":null}"#),
            1000,
        )
        .unwrap();
        assert_eq!(
            del,
            Decoded::Delete {
                id: EntityId::parse("7").unwrap()
            }
        );
        let wrapped = decode(
            &s,
            Some(br#"{"schema":{},"payload":{"id":"E8"}}"#),
            Some(br#"{"schema":{},"payload":{"op":"c","after":{"n":2}}}"#),
            1000,
        )
        .unwrap();
        assert_eq!(wrapped.id().as_str(), "E8");
        assert!(decode(&s, Some(br#"{"id":"E7"}"#), Some(br#"{"op":"t"}"#), 1000).is_err());
        assert_eq!(
            decode(&s, Some(br#"{"id":"E7"}"#), None, 1000).unwrap(),
            Decoded::Delete {
                id: EntityId::parse("E7").unwrap()
            }
        );
    }
}
