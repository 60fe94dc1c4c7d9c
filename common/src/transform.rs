//! Per-source transformation programs: jq (the `jaq` implementation),
//! compiled once at start, run on every record of the source.
//!
//! Two programs per `[[sources]]` entry, both optional:
//! - `transform` maps the record's state (the JSON value, or a Debezium
//!   event's `after`) to the canonical state. `$id` is the entity id the
//!   record gets. One object out: the new state; no output (`select`,
//!   `empty`): the record is filtered out; anything else is poison.
//! - `id_from_key` maps the record key (a string for `format = "json"`,
//!   the key's JSON for `format = "debezium"`) to the source id, before
//!   `id_prefix`. It runs on tombstones too, which carry only the key: that
//!   is why an id is built from the key and never from the value.
//!
//! Errors never quote a record's value: jq's own messages do (`cannot use
//! {"salary": ...} as number`), so a runtime failure is reported by kind
//! only, and HR values never reach a log line or a dead letter's reason.

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Native, Vars, data};
use jaq_json::Val;
use serde_json::{Map, Value};
use thiserror::Error;

type Data = data::JustLut<Val>;

/// A compiled jq program.
pub struct Program {
    filter: jaq_core::compile::Filter<Native<Data>>,
    /// Whether the program reads `$id` (then it is passed).
    vars: &'static [&'static str],
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program").field("vars", &self.vars).finish()
    }
}

/// Why a program did not turn a record into what it must.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum TransformError {
    /// The program raised an error (a type error, `error(...)`, ...). Its
    /// message is not kept: it may quote the record.
    #[error("the {0} program raised an error")]
    Raised(&'static str),
    /// The program yielded more than one value.
    #[error("the {0} program yielded more than one value")]
    SeveralOutputs(&'static str),
    /// `transform` yielded something other than an object.
    #[error("the transform program yielded a {0}, not an object")]
    NotAnObject(&'static str),
    /// `id_from_key` yielded nothing, or something other than a string or
    /// an integer.
    #[error("the id_from_key program yielded {0}, not one string or integer")]
    NotAnId(&'static str),
    /// An object key that is not a string (jaq allows them, JSON does not).
    #[error("the transform program yielded an object with a non-string key")]
    NonStringKey,
}

impl TransformError {
    /// A stable, low-cardinality code for dead-letter headers and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            TransformError::Raised(_) => "transform_error",
            TransformError::SeveralOutputs(_)
            | TransformError::NotAnObject(_)
            | TransformError::NotAnId(_)
            | TransformError::NonStringKey => "transform_output",
        }
    }
}

/// Filters a program may not call: `env` would read the process's
/// secrets (`FOLDCACHE__REDIS__URL`), `debug` and `stderr` would write HR
/// values to ingest's log, `halt` and `input` mean nothing per record.
/// (Native ones and the definitions built on them.)
const WITHHELD: &[&str] = &[
    "env",
    "debug",
    "debug_empty",
    "stderr",
    "stderr_empty",
    "halt",
    "halt_error",
    "input",
    "inputs",
];

/// A program's compiler: [`Program::transform`] or [`Program::id_from_key`].
pub type Compile = fn(&str) -> Result<Program, String>;

/// The variables `transform` programs may read.
const TRANSFORM_VARS: &[&str] = &["$id"];

impl Program {
    /// Compiles a `transform` program (`$id` defined). The error is one
    /// line naming what is wrong and where (a byte offset in the program).
    pub fn transform(code: &str) -> Result<Self, String> {
        Self::compile(code, TRANSFORM_VARS)
    }

    /// Compiles an `id_from_key` program (no variables).
    pub fn id_from_key(code: &str) -> Result<Self, String> {
        Self::compile(code, &[])
    }

    fn compile(code: &str, vars: &'static [&'static str]) -> Result<Self, String> {
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs())
            .filter(|def| !WITHHELD.contains(&def.name));
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs())
            .filter(|(name, _, _)| !WITHHELD.contains(name));
        let arena = Arena::default();
        let modules = Loader::new(defs)
            .load(&arena, File { code, path: () })
            .map_err(|errs| load_error(code, errs))?;
        let filter = Compiler::default()
            .with_funs(funs)
            .with_global_vars(vars.iter().copied())
            .compile(modules)
            .map_err(|errs| {
                errs.into_iter().flat_map(|(_, e)| e).next().map_or_else(
                    || "does not compile".to_owned(),
                    |(name, undefined)| {
                        format!(
                            "undefined {} `{name}` at {}",
                            undefined.as_str(),
                            position(code, name)
                        )
                    },
                )
            })?;
        Ok(Self { filter, vars })
    }

    /// Runs `transform` on a state: `Ok(Some(object))`, `Ok(None)` when
    /// the record is filtered out.
    pub fn run_transform(
        &self,
        state: Value,
        id: &str,
    ) -> Result<Option<Map<String, Value>>, TransformError> {
        let vars = [Val::utf8_str(id.to_owned())];
        match self.run_one(to_val(state), &vars[..self.vars.len()], "transform")? {
            None => Ok(None),
            Some(Val::Obj(map)) => {
                let mut out = Map::with_capacity(map.len());
                for (k, v) in map.iter() {
                    let Val::TStr(k) = k else {
                        return Err(TransformError::NonStringKey);
                    };
                    out.insert(String::from_utf8_lossy(k).into_owned(), to_value(v));
                }
                Ok(Some(out))
            }
            Some(other) => Err(TransformError::NotAnObject(type_name(&other))),
        }
    }

    /// Runs `id_from_key` on a key: the source id (before `id_prefix`).
    pub fn run_id(&self, key: Value) -> Result<String, TransformError> {
        match self.run_one(to_val(key), &[], "id_from_key")? {
            Some(Val::TStr(s)) => Ok(String::from_utf8_lossy(&s).into_owned()),
            Some(Val::Num(n)) if n.as_isize().is_some() => Ok(n.to_string()),
            Some(other) => Err(TransformError::NotAnId(type_name(&other))),
            None => Err(TransformError::NotAnId("nothing")),
        }
    }

    /// The program's only output, if any.
    fn run_one(
        &self,
        input: Val,
        vars: &[Val],
        program: &'static str,
    ) -> Result<Option<Val>, TransformError> {
        let ctx = Ctx::<Data>::new(&self.filter.lut, Vars::new(vars.iter().cloned()));
        let mut out = self.filter.id.run((ctx, input));
        let first = match out.next() {
            None => return Ok(None),
            Some(r) => r.map_err(|_| TransformError::Raised(program))?,
        };
        if out.next().is_some() {
            return Err(TransformError::SeveralOutputs(program));
        }
        Ok(Some(first))
    }
}

/// The first load (lex or parse) error as one line.
fn load_error<P>(code: &str, errs: jaq_core::load::Errors<&str, P>) -> String {
    use jaq_core::load::Error;
    let expected =
        |what: &str, at: &str| format!("does not parse: expected {what} at {}", position(code, at));
    let first = errs.into_iter().next().map(|(_, e)| e);
    let line = match first {
        Some(Error::Lex(errs)) => errs.first().map(|(e, at)| expected(e.as_str(), at)),
        Some(Error::Parse(errs)) => errs.first().map(|(e, at)| expected(e.as_str(), at)),
        Some(Error::Io(errs)) => errs
            .first()
            .map(|(path, why)| format!("cannot load module {path:?}: {why}")),
        None => None,
    };
    line.unwrap_or_else(|| "does not parse".to_owned())
}

/// Where `part` (a slice of `code`, as jaq's errors are) starts in `code`:
/// `line L column C`, both from 1, columns in characters.
fn position(code: &str, part: &str) -> String {
    let offset = (part.as_ptr() as usize)
        .checked_sub(code.as_ptr() as usize)
        .filter(|o| *o <= code.len())
        .unwrap_or(0);
    let before = &code[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line} column {column}")
}

fn type_name(v: &Val) -> &'static str {
    match v {
        Val::Null => "null",
        Val::Bool(_) => "boolean",
        Val::Num(_) => "number",
        Val::BStr(_) | Val::TStr(_) => "string",
        Val::Arr(_) => "array",
        Val::Obj(_) => "object",
    }
}

/// serde_json's value as jaq's.
fn to_val(v: Value) -> Val {
    match v {
        Value::Null => Val::Null,
        Value::Bool(b) => Val::Bool(b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64().and_then(|i| isize::try_from(i).ok()) {
                Val::from(i)
            } else if let Some(u) = n.as_u64() {
                Val::Num(jaq_json::Num::from_integral(u))
            } else {
                Val::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => Val::utf8_str(s),
        Value::Array(a) => a.into_iter().map(to_val).collect(),
        Value::Object(m) => Val::obj(
            m.into_iter()
                .map(|(k, v)| (Val::utf8_str(k), to_val(v)))
                .collect(),
        ),
    }
}

/// jaq's value as serde_json's. Byte strings become (lossy) strings,
/// non-finite numbers null (as jq prints them), non-string keys their JSON
/// text.
fn to_value(v: &Val) -> Value {
    match v {
        Val::Null => Value::Null,
        Val::Bool(b) => Value::Bool(*b),
        Val::Num(n) => match n {
            jaq_json::Num::Int(i) => Value::from(*i as i64),
            jaq_json::Num::Float(f) => serde_json::Number::from_f64(*f)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            other => serde_json::from_str(&other.to_string()).unwrap_or(Value::Null),
        },
        Val::BStr(s) | Val::TStr(s) => Value::String(String::from_utf8_lossy(s).into_owned()),
        Val::Arr(a) => Value::Array(a.iter().map(to_value).collect()),
        Val::Obj(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let k = match k {
                        Val::BStr(s) | Val::TStr(s) => String::from_utf8_lossy(s).into_owned(),
                        other => other.to_string(),
                    };
                    (k, to_value(v))
                })
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn transform(code: &str, input: Value) -> Result<Option<Value>, TransformError> {
        Program::transform(code)
            .unwrap()
            .run_transform(input, "nw.7")
            .map(|o| o.map(Value::Object))
    }

    #[test]
    fn renames_drops_constants_nested_picks_conversions_and_code_tables() {
        let program = r#"
            def teams: {"D10": "T001", "D20": "T002"};
            { id: $id, name: .full_name, email: .contact.mail,
              company: "northwind", age: (.age_text | tonumber),
              team_id: (teams[.dept] // null) }"#;
        let out = transform(
            program,
            json!({"full_name": "Ada", "contact": {"mail": "a@x"}, "age_text": "37",
                   "dept": "D20", "salary": 1}),
        )
        .unwrap();
        assert_eq!(
            out,
            Some(
                json!({"id": "nw.7", "name": "Ada", "email": "a@x", "company": "northwind",
                        "age": 37, "team_id": "T002"})
            )
        );
        let dropped = transform("del(.salary)", json!({"a": [1, 2.5, null], "salary": 3}));
        assert_eq!(dropped.unwrap(), Some(json!({"a": [1, 2.5, null]})));
    }

    #[test]
    fn no_output_filters_the_record_out() {
        let p = r#"select(.status != "terminated")"#;
        assert_eq!(transform(p, json!({"status": "terminated"})).unwrap(), None);
        assert!(transform(p, json!({"status": "active"})).unwrap().is_some());
    }

    #[test]
    fn bad_outputs_and_runtime_errors_never_quote_the_value() {
        let e = transform(".salary + 1", json!({"salary": "SECRET"})).unwrap_err();
        assert_eq!(e.code(), "transform_error");
        assert!(!e.to_string().contains("SECRET"), "{e}");
        let e = transform(r#"error("SECRET")"#, json!({})).unwrap_err();
        assert!(!e.to_string().contains("SECRET"), "{e}");
        assert_eq!(
            transform(".a", json!({"a": 1})).unwrap_err().code(),
            "transform_output"
        );
        assert_eq!(
            transform(".[]", json!({"a": {}, "b": {}}))
                .unwrap_err()
                .code(),
            "transform_output"
        );
    }

    #[test]
    fn ids_come_from_the_key() {
        let p = Program::id_from_key(r#""\(.company)-\(.emp_no)""#).unwrap();
        assert_eq!(
            p.run_id(json!({"company": "gx", "emp_no": 7})).unwrap(),
            "gx-7"
        );
        let p = Program::id_from_key(".emp_no").unwrap();
        assert_eq!(p.run_id(json!({"emp_no": 7})).unwrap(), "7");
        assert_eq!(
            p.run_id(json!({"emp_no": null})).unwrap_err().code(),
            "transform_output"
        );
    }

    #[test]
    fn bad_programs_are_one_line_with_a_position() {
        let e = Program::transform("{name: .a").unwrap_err();
        assert!(e.starts_with("does not parse: expected"), "{e}");
        assert!(!e.contains('\n'));
        let e = Program::transform("{name: nosuch(.a)}").unwrap_err();
        assert_eq!(e, "undefined filter `nosuch` at line 1 column 8");
        let e = Program::id_from_key("$id").unwrap_err();
        assert_eq!(e, "undefined variable `$id` at line 1 column 1");
    }

    #[test]
    fn no_program_reads_the_environment_or_writes_the_log() {
        for code in [
            "env",
            "$ENV",
            "debug",
            "debug(.a)",
            "stderr",
            "input",
            "halt",
        ] {
            let e = Program::transform(code).unwrap_err();
            assert!(e.starts_with("undefined "), "{code}: {e}");
        }
        assert!(Program::transform("now | floor").is_ok());
    }

    #[test]
    fn programs_are_shared_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Program>();
    }
}
