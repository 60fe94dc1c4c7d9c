//! Sources resolved from config: which entity a topic feeds, how its values
//! are encoded and how its keys become ids.

use foldcache_common::config::{Config, EntityConfig, ValueFormat};
use foldcache_common::id::EntityName;
use foldcache_common::schema::Schema;
use foldcache_common::transform::{Compile, Program};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// One configured topic, validated.
#[derive(Debug, Clone)]
pub struct Source {
    /// The topic.
    pub topic: String,
    /// The entity it feeds.
    pub entity: EntityName,
    /// Value encoding.
    pub format: ValueFormat,
    /// Prepended to each record key to form the entity id.
    pub id_prefix: String,
    /// TTL of each entity hash, in milliseconds.
    pub ttl_ms: u64,
    /// The source's jq programs, compiled once at start.
    pub programs: SourcePrograms,
    /// What a record of the topic is to its entity.
    pub role: Role,
}

/// What a record of a source's topic is to its entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The entity's whole state: it replaces what is stored.
    State,
    /// One source's part of a merged entity (`entities.<name>.merge`).
    Part {
        /// The members it contributes (`sources[].fields`); `None`: all.
        fields: Option<Arc<BTreeSet<String>>>,
    },
    /// An identity link of a merged entity (`entities.<name>.links_topic`):
    /// key = an id as the sources name it, value = its canonical id.
    Links,
}

/// A source's compiled jq programs (`transform`, `id_from_key`) and its
/// entity's schema; none by default, so records are folded as the source
/// wrote them.
#[derive(Debug, Clone, Default)]
pub struct SourcePrograms {
    /// Record state -> canonical state (no output: filtered out).
    pub transform: Option<Arc<Program>>,
    /// Record key -> source id, before `id_prefix`.
    pub id_from_key: Option<Arc<Program>>,
    /// The entity's canonical JSON Schema, checked after `transform`
    /// (shared by every source of the entity).
    pub schema: Option<Arc<Schema>>,
}

impl SourcePrograms {
    /// Compiles the programs of one configured source.
    fn compile(
        topic: &str,
        transform: Option<&str>,
        id_from_key: Option<&str>,
    ) -> anyhow::Result<Self> {
        let compile = |name: &str, code: Option<&str>, f: Compile| {
            code.map(|c| {
                f(c).map(Arc::new)
                    .map_err(|why| anyhow::anyhow!("source {topic:?}: {name}: {why}"))
            })
            .transpose()
        };
        Ok(Self {
            transform: compile("transform", transform, Program::transform)?,
            id_from_key: compile("id_from_key", id_from_key, Program::id_from_key)?,
            schema: None,
        })
    }
}

/// All sources by topic.
#[derive(Debug, Clone)]
pub struct Sources(HashMap<String, Arc<Source>>);

impl Sources {
    /// Resolves the config's sources (the config is already validated).
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let mut map = HashMap::new();
        let mut schemas: HashMap<&str, Arc<Schema>> = HashMap::new();
        for (name, e) in &config.entities {
            if let Some(path) = &e.schema_file {
                let schema = Schema::load(path)
                    .map_err(|why| anyhow::anyhow!("entities.{name}.schema_file: {why}"))?;
                schemas.insert(name, Arc::new(schema));
            }
        }
        for s in &config.sources {
            let schema = match &s.schema_file {
                Some(path) => Some(Arc::new(Schema::load(path).map_err(|why| {
                    anyhow::anyhow!("sources {:?}: schema_file: {why}", s.topic)
                })?)),
                None => schemas.get(s.entity.as_str()).cloned(),
            };
            let entity = EntityName::parse(&s.entity)
                .map_err(|e| anyhow::anyhow!("entity {:?}: {e}", s.entity))?;
            let ec: &EntityConfig = config
                .entity(&entity)
                .ok_or_else(|| anyhow::anyhow!("entity {entity} is not configured"))?;
            map.insert(
                s.topic.clone(),
                Arc::new(Source {
                    topic: s.topic.clone(),
                    entity,
                    format: s.format,
                    id_prefix: s.id_prefix.clone(),
                    ttl_ms: ec.ttl_secs.saturating_mul(1000),
                    programs: SourcePrograms {
                        schema,
                        ..SourcePrograms::compile(
                            &s.topic,
                            s.transform.as_deref(),
                            s.id_from_key.as_deref(),
                        )?
                    },
                    role: if ec.merge {
                        Role::Part {
                            fields: s
                                .fields
                                .as_ref()
                                .map(|f| Arc::new(f.iter().cloned().collect())),
                        }
                    } else {
                        Role::State
                    },
                }),
            );
        }
        for (name, e) in &config.entities {
            let Some(topic) = &e.links_topic else {
                continue;
            };
            let entity =
                EntityName::parse(name).map_err(|why| anyhow::anyhow!("entity {name:?}: {why}"))?;
            map.insert(
                topic.clone(),
                Arc::new(Source {
                    topic: topic.clone(),
                    entity,
                    format: ValueFormat::Json,
                    id_prefix: String::new(),
                    ttl_ms: e.ttl_secs.saturating_mul(1000),
                    programs: SourcePrograms::default(),
                    role: Role::Links,
                }),
            );
        }
        Ok(Self(map))
    }

    /// The source of a topic.
    pub fn get(&self, topic: &str) -> Option<&Arc<Source>> {
        self.0.get(topic)
    }

    /// Every topic, for the subscription.
    pub fn topics(&self) -> Vec<&str> {
        let mut t: Vec<&str> = self.0.keys().map(String::as_str).collect();
        t.sort_unstable();
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_of_an_entity_gets_its_programs_and_the_entity_schema() {
        let dir = std::env::temp_dir().join(format!("fc-source-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let schema = dir.join("employees.json");
        std::fs::write(&schema, r#"{"required": ["id"]}"#).unwrap();
        let mut config = Config::default();
        config.entities.get_mut("employees").unwrap().schema_file = Some(schema);
        config.sources[0].transform = Some("{id: $id}".into());
        config.sources[0].id_from_key = Some(r#""E" + ."#.into());
        let sources = Sources::from_config(&config).unwrap();
        let employees = sources.get("hr.employees").unwrap();
        assert!(employees.programs.transform.is_some());
        assert!(employees.programs.id_from_key.is_some());
        assert!(employees.programs.schema.is_some());
        let teams = sources.get("hr.teams").unwrap();
        assert!(teams.programs.transform.is_none() && teams.programs.schema.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
