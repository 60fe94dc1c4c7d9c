//! Secondary indexes: which values of an entity's state an index holds, and
//! how a value becomes part of a Redis key.
//!
//! An index is declared per entity (`[entities.employees.indexes]`) with a
//! **field path** into the state:
//!
//! - `team_id`: the top-level member `team_id`;
//! - `address.city`: a member of a nested object;
//! - `grants[].system`: `[]` walks every element of an array, so a
//!   permission record with three grants is in the index under each
//!   grant's `system` (a many-valued index).
//!
//! The value at the end of the path is indexed when it is a string (as is),
//! a number (its JSON text) or a boolean (`true`/`false`); `null`, a missing
//! member, an object or an array not walked with `[]` is not indexed. A
//! filter `?team_id=T004339` matches the same text.
//!
//! ingest computes each entity's **index entries** (`{index}:{encoded
//! value}`) when it folds a state, and stores them in the entity hash (one
//! meta field per index, [`crate::keys::META_INDEX_PREFIX`]) so the next
//! fold of the same id can move or remove them without reading the old
//! state's JSON.

use crate::keys::{META_INDEX_LEGACY, META_INDEX_PREFIX};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::fmt;

/// Values longer than this many bytes are hashed in keys (`~` + hex
/// SHA-256), so a hostile 1 MB value never becomes a 1 MB key.
pub const MAX_PLAIN_VALUE_BYTES: usize = 96;

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    member: String,
    each: bool,
}

/// A parsed field path (`team_id`, `address.city`, `grants[].system`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    text: String,
    steps: Vec<Step>,
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FieldPath {
    /// Parses `member(.member)*`, each member optionally followed by `[]`.
    /// Members are 1–128 characters, none of `.`, `[`, `]`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("is empty".into());
        }
        let mut steps = Vec::new();
        for part in s.split('.') {
            let (member, each) = match part.strip_suffix("[]") {
                Some(m) => (m, true),
                None => (part, false),
            };
            if member.is_empty() || member.len() > 128 {
                return Err(format!("member {part:?} must be 1 to 128 characters"));
            }
            if member.contains(['[', ']']) || member.chars().any(char::is_control) {
                return Err(format!(
                    "member {part:?}: only a trailing \"[]\" may follow a member name"
                ));
            }
            steps.push(Step {
                member: member.to_owned(),
                each,
            });
        }
        Ok(Self {
            text: s.to_owned(),
            steps,
        })
    }

    /// The top-level member the path starts with (what a view must show for
    /// a caller to filter on the index).
    pub fn top(&self) -> &str {
        &self.steps[0].member
    }

    /// The indexed values of a state whose top-level member [`Self::top`]
    /// holds `member` (already parsed). Sorted, without duplicates.
    pub fn values(&self, member: &Value) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        walk(member, &self.steps, 0, &mut out);
        out
    }
}

fn walk(v: &Value, steps: &[Step], i: usize, out: &mut BTreeSet<String>) {
    // `v` is the value of steps[i].member.
    let step = &steps[i];
    let items: Vec<&Value> = if step.each {
        match v {
            Value::Array(a) => a.iter().collect(),
            _ => return,
        }
    } else {
        vec![v]
    };
    for item in items {
        if i + 1 == steps.len() {
            if let Some(s) = scalar_text(item) {
                out.insert(s);
            }
        } else if let Some(next) = item.get(&steps[i + 1].member) {
            walk(next, steps, i + 1, out);
        }
    }
}

/// The text a scalar is indexed (and filtered) by; `None` for null, objects
/// and arrays.
pub fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Lua for the scripts that order ids (the fold's unique indexes,
/// query-api's pages of them): `bytes_lt(a, b)`, byte order whatever
/// Redis's collation locale is (Lua's `<` on strings follows it), the
/// order of `ZRANGE … BYLEX`.
pub const LUA_BYTES_LT: &str = r"
local function bytes_lt(a, b)
  local n = math.min(#a, #b)
  for k = 1, n do
    local x, y = string.byte(a, k), string.byte(b, k)
    if x ~= y then return x < y end
  end
  return #a < #b
end
";

/// A value as it appears in a key: bytes of `[A-Za-z0-9._@+-]` as they are,
/// every other byte as `%XX`; longer than [`MAX_PLAIN_VALUE_BYTES`] (or
/// containing nothing printable): `~` and the hex SHA-256 of the value. So
/// no value can contain `:`, braces (a hash tag), glob characters or white
/// space once in a key, and equal values always give equal keys.
pub fn encode_value(value: &str) -> String {
    if value.len() > MAX_PLAIN_VALUE_BYTES {
        let digest = Sha256::digest(value.as_bytes());
        let mut s = String::with_capacity(65);
        s.push('~');
        for b in digest {
            s.push_str(&format!("{b:02x}"));
        }
        return s;
    }
    let mut s = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'+' | b'-') {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    if s.is_empty() {
        // The empty string: a key segment must not be empty.
        s.push('%');
    }
    s
}

/// One index entry: `{index}:{encoded value}`, the suffix of the index's
/// sorted-set key (see [`crate::keys::KeySpace::index_prefix`]).
pub fn entry(index: &str, value: &str) -> String {
    format!("{index}:{}", encode_value(value))
}

/// The meta fields that store `entries` (as [`entries_of`] returns them) in
/// an entity hash: `_fc:ix:{index}` → that index's encoded values, joined
/// by `\n` in sorted order; no field for an index without a value.
pub fn meta_fields(entries: &str) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = Vec::new();
    for e in entries.split('\n').filter(|e| !e.is_empty()) {
        let Some((index, value)) = e.split_once(':') else {
            continue;
        };
        match fields.last_mut() {
            Some((name, values)) if name[META_INDEX_PREFIX.len()..] == *index => {
                values.push('\n');
                values.push_str(value);
            }
            _ => fields.push((format!("{META_INDEX_PREFIX}{index}"), value.to_owned())),
        }
    }
    fields
}

/// Whether an entity hash's fields (as stored) hold `value` in `index`:
/// the check that keeps a stale index entry from being served.
pub fn holds(hash: &[(String, String)], index: &str, value: &str) -> bool {
    let encoded = encode_value(value);
    let field = format!("{META_INDEX_PREFIX}{index}");
    let legacy = entry(index, value);
    hash.iter().any(|(k, v)| {
        (*k == field && v.split('\n').any(|x| x == encoded))
            || (k == META_INDEX_LEGACY && v.split('\n').any(|x| x == legacy))
    })
}

/// A configured index, resolved.
#[derive(Debug, Clone)]
pub struct IndexSpec {
    /// The index's name, which is also the collection's filter parameter.
    pub name: String,
    /// Which values of the state it holds.
    pub path: FieldPath,
    /// Declared unique (one id per value): a second holder is counted as a
    /// conflict (`foldcache_ingest_unique_conflicts_total`), and both are
    /// still served, since the log, not the cache, is the truth.
    pub unique: bool,
}

/// The index entries of one state, given its top-level members as stored
/// (member name, canonical JSON), joined by `\n` in sorted order; empty when
/// the state is in no index.
pub fn entries_of(specs: &[IndexSpec], fields: &[(String, String)]) -> String {
    entries_by(specs, |top| {
        fields
            .iter()
            .find(|(name, _)| name == top)
            .map(|(_, json)| json.as_str())
    })
}

/// [`entries_of`] for members held some other way: `member` finds a
/// top-level member's canonical JSON by name.
pub fn entries_by<'a>(specs: &[IndexSpec], member: impl Fn(&str) -> Option<&'a str>) -> String {
    let mut entries = BTreeSet::new();
    for spec in specs {
        let Some(json) = member(spec.path.top()) else {
            continue;
        };
        let Ok(member) = serde_json::from_str::<Value>(json) else {
            continue;
        };
        for v in spec.path.values(&member) {
            entries.insert(entry(&spec.name, &v));
        }
    }
    entries.into_iter().collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(name: &str, path: &str) -> IndexSpec {
        IndexSpec {
            name: name.into(),
            path: FieldPath::parse(path).unwrap(),
            unique: false,
        }
    }

    #[test]
    fn meta_fields_group_entries_by_index_and_holds_reads_both_layouts() {
        let specs = [spec("a", "a"), spec("a1", "b[]"), spec("team", "t")];
        let fields = vec![
            ("a".to_owned(), "\"x y\"".to_owned()),
            ("b".to_owned(), "[\"q\",\"p\"]".to_owned()),
            ("t".to_owned(), "7".to_owned()),
        ];
        let entries = entries_of(&specs, &fields);
        assert_eq!(
            meta_fields(&entries),
            vec![
                ("_fc:ix:a1".to_owned(), "p\nq".to_owned()),
                ("_fc:ix:a".to_owned(), "x%20y".to_owned()),
                ("_fc:ix:team".to_owned(), "7".to_owned()),
            ]
        );
        assert!(meta_fields("").is_empty());
        let hash = meta_fields(&entries);
        assert!(holds(&hash, "a1", "q") && holds(&hash, "a", "x y"));
        assert!(!holds(&hash, "a", "q") && !holds(&hash, "team", "x y"));
        let legacy = vec![(META_INDEX_LEGACY.to_owned(), entries)];
        assert!(holds(&legacy, "a1", "p") && !holds(&legacy, "a", "p"));
    }

    #[test]
    fn paths_walk_members_and_arrays() {
        let p = FieldPath::parse("grants[].system").unwrap();
        assert_eq!(p.top(), "grants");
        let grants =
            json!([{"system": "github"}, {"system": "jira"}, {"system": "github"}, {"x": 1}]);
        assert_eq!(
            p.values(&grants).into_iter().collect::<Vec<_>>(),
            vec!["github", "jira"]
        );
        assert!(p.values(&json!({"system": "github"})).is_empty());
        let nested = FieldPath::parse("address.city").unwrap();
        assert_eq!(
            nested.values(&json!({"city": "Seoul"})),
            BTreeSet::from(["Seoul".to_owned()])
        );
        let plain = FieldPath::parse("team_id").unwrap();
        assert!(plain.values(&Value::Null).is_empty());
        assert!(plain.values(&json!(["T1"])).is_empty(), "arrays need []");
        assert_eq!(plain.values(&json!(12)), BTreeSet::from(["12".to_owned()]));
        assert_eq!(
            plain.values(&json!(true)),
            BTreeSet::from(["true".to_owned()])
        );
        for bad in ["", ".", "a..b", "a[0]", "a[]x", "[]"] {
            assert!(FieldPath::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn values_in_keys_cannot_escape_their_segment() {
        assert_eq!(
            encode_value("min.kim1@hanbit.co.kr"),
            "min.kim1@hanbit.co.kr"
        );
        assert_eq!(encode_value("T004339"), "T004339");
        assert_eq!(encode_value("a:b{c}*d e"), "a%3Ab%7Bc%7D%2Ad%20e");
        assert_eq!(encode_value("%"), "%25");
        assert_eq!(encode_value(""), "%");
        assert_eq!(encode_value("김"), "%EA%B9%80");
        let long = "x".repeat(MAX_PLAIN_VALUE_BYTES + 1);
        assert!(encode_value(&long).starts_with('~'));
        assert_eq!(encode_value(&long).len(), 65);
        assert_ne!(encode_value(&long), encode_value(&"x".repeat(200)));
    }

    #[test]
    fn entries_of_a_state() {
        let specs = [
            spec("team_id", "team_id"),
            spec("system", "grants[].system"),
        ];
        let fields = vec![
            ("team_id".to_owned(), "\"T1\"".to_owned()),
            (
                "grants".to_owned(),
                r#"[{"system":"jira"},{"system":"aws"}]"#.to_owned(),
            ),
        ];
        assert_eq!(
            entries_of(&specs, &fields),
            "system:aws\nsystem:jira\nteam_id:T1"
        );
        assert_eq!(entries_of(&specs, &[]), "");
    }
}
