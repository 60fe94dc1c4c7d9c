//! The console's lookup: one entity by id as query-api would serve it right
//! now (status and why, from the same marker, freshness and hash), with its
//! ETag, `Last-Modified`, `_fc` source offset and TTL, and its values only
//! within the caller's own grant for that entity (`[[auth.tokens]] grants`):
//! an admin token without a grant sees field names, never values.

use crate::admin::Caller;
use crate::cluster::ClusterView;
use foldcache_common::config::{Config, FULL_VIEW};
use foldcache_common::id::{EntityId, EntityName};
use foldcache_common::keys::{KeySpace, META_ETAG, META_MODIFIED_MS, META_PREFIX, META_SOURCE};
use foldcache_common::runtime::now_ms;
use std::collections::HashMap;

/// Which values the caller may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Visible {
    /// Every field (`full`, or a view of `"*"`).
    All(String),
    /// The fields of this view.
    View(String, Vec<String>),
    /// None, and why.
    Hidden(String),
}

/// One entity as the cache holds it.
#[derive(Debug, Clone)]
pub struct Found {
    /// What query-api would answer: 200, 404 or 503.
    pub status: u16,
    /// Why, in words.
    pub why: String,
    /// The Redis key read.
    pub key: String,
    /// The generation read.
    pub generation: u64,
    /// Whether the hash exists.
    pub exists: bool,
    /// Strong validator of the full view (base64url SHA-256 of the body).
    pub etag: Option<String>,
    /// The record's timestamp (served as `Last-Modified`), ms.
    pub modified_ms: Option<i64>,
    /// `topic/partition/offset` of the record the state came from.
    pub source: Option<String>,
    /// Time to live, ms (`None`: no expiry or no key).
    pub ttl_ms: Option<i64>,
    /// Every field name (not the meta fields), sorted.
    pub field_names: Vec<String>,
    /// Field values the caller may see: `(name, canonical JSON)`. Nothing
    /// else is ever read into this struct's output.
    pub values: Vec<(String, String)>,
    /// What the caller may see.
    pub visible: Visible,
}

/// What `caller` may see of `entity`.
pub fn visible(config: &Config, caller: &Caller, entity: &EntityName) -> Visible {
    let Some(view) = caller.grants.get(entity.as_str()) else {
        return Visible::Hidden(format!(
            "token {:?} has no grant for {entity} ([[auth.tokens]] grants): values are not shown",
            caller.name
        ));
    };
    if view == FULL_VIEW {
        return Visible::All(view.clone());
    }
    match config
        .entity(entity)
        .and_then(|e| e.views.get(view.as_str()))
    {
        Some(fields) if fields.iter().any(|f| f == "*") => Visible::All(view.clone()),
        Some(fields) => Visible::View(view.clone(), fields.clone()),
        None => Visible::Hidden(format!(
            "token {:?} names the view {view:?}, which {entity} does not have",
            caller.name
        )),
    }
}

/// Reads `entity`/`id` from the live generation.
pub async fn lookup<C: redis::aio::ConnectionLike + Send>(
    con: &mut C,
    config: &Config,
    caller: &Caller,
    entity: &EntityName,
    id: &EntityId,
) -> redis::RedisResult<Found> {
    let keys = KeySpace::new(config.redis.key_prefix.clone());
    let view = ClusterView::read(con, &keys).await?;
    let key = keys.entity(view.live_gen, entity, id);
    let (hash, ttl): (HashMap<String, String>, i64) = redis::pipe()
        .hgetall(&key)
        .pttl(&key)
        .query_async(con)
        .await?;
    let bound_ms = config
        .entity(entity)
        .map(|e| e.freshness_secs.saturating_mul(1000) as i64)
        .unwrap_or(i64::MAX);
    let now = now_ms();
    let (status, why) = if view.epoch.is_none() {
        (503, "Redis holds no foldcache cache".to_owned())
    } else if !view.ready {
        (
            503,
            "the cache is not ready: the live generation is catching up".to_owned(),
        )
    } else if view.fresh_ms.is_none_or(|f| now - f > bound_ms) {
        (
            503,
            format!(
                "past the freshness bound of {entity} ({} s): ingest has not confirmed recently enough that everything produced is folded",
                bound_ms / 1000
            ),
        )
    } else if hash.is_empty() {
        (
            404,
            format!("no {entity} with this id in generation {}", view.live_gen),
        )
    } else {
        (200, "served from the live generation".to_owned())
    };
    let visible = visible(config, caller, entity);
    let mut field_names: Vec<String> = hash
        .keys()
        .filter(|k| !k.starts_with(META_PREFIX))
        .cloned()
        .collect();
    field_names.sort();
    let mut values: Vec<(String, String)> = hash
        .iter()
        .filter(|(k, _)| !k.starts_with(META_PREFIX))
        .filter(|(k, _)| match &visible {
            Visible::All(_) => true,
            Visible::View(_, fields) => fields.contains(k),
            Visible::Hidden(_) => false,
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    values.sort();
    Ok(Found {
        status,
        why,
        generation: view.live_gen,
        exists: !hash.is_empty(),
        etag: hash.get(META_ETAG).cloned(),
        modified_ms: hash.get(META_MODIFIED_MS).and_then(|m| m.parse().ok()),
        source: hash.get(META_SOURCE).cloned(),
        ttl_ms: (ttl >= 0).then_some(ttl),
        key,
        field_names,
        values,
        visible,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(grants: &[(&str, &str)]) -> Caller {
        Caller {
            name: "ops".into(),
            admin: true,
            grants: grants
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn values_follow_the_callers_own_grant() {
        let mut config = Config::default();
        if let Some(e) = config.entities.get_mut("employees") {
            e.views
                .insert("directory".into(), vec!["id".into(), "name".into()]);
        }
        let emp = EntityName::parse("employees").expect("name");
        assert!(matches!(
            visible(&config, &caller(&[]), &emp),
            Visible::Hidden(_)
        ));
        assert_eq!(
            visible(&config, &caller(&[("employees", "full")]), &emp),
            Visible::All("full".into())
        );
        assert_eq!(
            visible(&config, &caller(&[("employees", "directory")]), &emp),
            Visible::View("directory".into(), vec!["id".into(), "name".into()])
        );
    }
}
