//! The canonical JSON Schema of an entity (`entities.<name>.schema_file`),
//! compiled once at start and checked on every state after its source's
//! `transform`. A failure names the failing place by path only (the
//! state's JSON pointer and the schema's), never a value: the crate's own
//! messages quote the instance, so they are not kept.

use serde_json::Value;
use std::path::Path;
use thiserror::Error;

/// A compiled schema.
#[derive(Debug)]
pub struct Schema(jsonschema::Validator);

/// Where a state fails its schema.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("state fails the entity's JSON Schema at {instance_path:?} (schema {schema_path:?})")]
pub struct SchemaViolation {
    /// JSON pointer into the state (`/email`; `""` is the whole state).
    pub instance_path: String,
    /// JSON pointer into the schema, ending in the keyword that failed
    /// (`/properties/email/type`, `/required`).
    pub schema_path: String,
}

impl Schema {
    /// Reads and compiles a schema file; the error is one line.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
        let json: Value = serde_json::from_str(&text).map_err(|e| {
            format!(
                "not JSON: {:?} error at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            )
        })?;
        Self::compile(&json)
    }

    /// Compiles a schema; remote references are not fetched.
    pub fn compile(schema: &Value) -> Result<Self, String> {
        jsonschema::validator_for(schema)
            .map(Self)
            .map_err(|e| format!("not a valid JSON Schema at {:?}", e.schema_path().as_str()))
    }

    /// The first place where `state` fails the schema, if any.
    pub fn check(&self, state: &Value) -> Result<(), SchemaViolation> {
        self.0.validate(state).map_err(|e| SchemaViolation {
            instance_path: e.instance_path().as_str().to_owned(),
            schema_path: e.schema_path().as_str().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Schema {
        Schema::compile(&json!({
            "type": "object",
            "required": ["id", "company"],
            "properties": {
                "email": {"type": "string"},
                "level": {"type": "integer", "minimum": 1}
            }
        }))
        .unwrap()
    }

    #[test]
    fn a_failure_names_the_paths_and_never_the_value() {
        let s = schema();
        assert!(
            s.check(&json!({"id": "a", "company": "c", "level": 2}))
                .is_ok()
        );
        let e = s
            .check(&json!({"id": "a", "company": "c", "email": 12345}))
            .unwrap_err();
        assert_eq!(e.instance_path, "/email");
        assert_eq!(e.schema_path, "/properties/email/type");
        let e = s
            .check(&json!({"id": "a", "company": "c", "level": -777}))
            .unwrap_err();
        assert!(!e.to_string().contains("777"), "{e}");
        let e = s.check(&json!({"id": "SECRET"})).unwrap_err();
        assert_eq!(
            (e.instance_path.as_str(), e.schema_path.as_str()),
            ("", "/required")
        );
        assert!(!e.to_string().contains("SECRET"), "{e}");
    }

    #[test]
    fn bad_schemas_and_files_are_one_line() {
        let e = Schema::compile(&json!({"type": "no-such-type"})).unwrap_err();
        assert!(e.starts_with("not a valid JSON Schema"), "{e}");
        let e = Schema::load(Path::new("/nonexistent/schema.json")).unwrap_err();
        assert!(e.starts_with("cannot read it"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        std::fs::write(&path, "{\"type\": ").unwrap();
        let e = Schema::load(&path).unwrap_err();
        assert!(e.starts_with("not JSON: Eof error"), "{e}");
    }
}
