//! The fold: one atomic Redis script call per partition batch.
//!
//! For each batch of one partition, a Lua script, in one atomic step:
//! 1. checks the cache epoch (a Redis that lost foldcache's data has lost it,
//!    and ingest must replay rather than write into a half-empty cache);
//! 2. reads the partition's stored next offset (the *fence*) and skips every
//!    record below it: re-deliveries, replays after a crash and a zombie
//!    instance after a rebalance can never regress a key;
//! 3. replaces each entity hash (`RENAME` of a staging hash that ingest
//!    filled with a plain `HSET` just before, in the same pipeline, then
//!    `PEXPIRE`: no reader ever sees a mix of old and new fields, and the
//!    fields never cross into Lua) or deletes it for a tombstone;
//! 4. keeps the entity type's derived keys exact in the same step: the
//!    sorted set of every id (the collection's order), the secondary
//!    indexes (an update moves the id from its old entries to its new ones,
//!    found in the hash's `_fc:ix:{index}` meta fields; a tombstone removes
//!    them) and
//!    the change log (a stream entry `op u|d, id, etag` for every change:
//!    a state equal to the stored one is no change), trimmed by length
//!    and age; the newest removed entry is recorded in the stream
//!    (`XSETID ... MAXDELETEDID`), so a reader can tell a cursor that lost
//!    changes from one that did not;
//! 5. advances the partition's offset.
//!
//! A merged entity (`entities.<name>.merge`) is folded by a second script
//! with the same guards, derived keys and offset step: each record
//! replaces its source's *part* of the entity and the served members are
//! recomputed from the parts; a links topic's record moves parts between
//! canonical ids ([`lua::MERGE`]).
//!
//! So no change is announced that is not in the cache, and none is missed.
//! Within a batch only the last record of each key is sent (the earlier ones
//! would be overwritten in the same atomic step anyway), so the change log
//! holds one entry per key and batch.

mod batch;
mod fields;
mod lua;

pub use batch::PartitionBatch;

use batch::{Kind, Op};
use foldcache_common::config::{Config, SourceConfig};
use foldcache_common::index::{IndexSpec, LUA_BYTES_LT, entries_by, entries_of, meta_fields};
use foldcache_common::keys::{KeySpace, META_ETAG, META_MODIFIED_MS, partition_field, state_field};
use foldcache_common::state::write_json_string;
use redis::aio::ConnectionLike;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use thiserror::Error;

/// How long a staging hash lives if its script never runs (the connection
/// broke between the two): long past any pipeline, short enough that a
/// leak goes soon. A script that finds one gone refuses its batch, which is
/// staged again.
const STAGE_TTL_MS: u64 = 5 * 60 * 1000;

/// The fold failed.
#[derive(Debug, Error)]
pub enum FoldError {
    /// Redis refused or the connection broke; the batch can be retried.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The cache epoch in Redis is not ours: Redis lost (or was replaced by
    /// one without) foldcache's data. Nothing was written.
    #[error("the cache epoch changed: Redis lost foldcache's data")]
    EpochChanged,
    /// The generation is neither live nor being built (a rebuild replaced
    /// it). Nothing was written.
    #[error("the generation was retired by a rebuild")]
    Retired,
    /// A staging hash expired before its script ran. Nothing was written;
    /// the batch can be retried (it is staged again).
    #[error("a staging hash expired before the fold script ran")]
    StageLost,
    /// Redis holds an offset below one it acknowledged before: it went back
    /// in time. Nothing was written.
    #[error(
        "Redis went back in time: partition offset {stored} is below the acknowledged {expected}"
    )]
    WentBack {
        /// What Redis holds now.
        stored: i64,
        /// What it had acknowledged.
        expected: i64,
    },
}

/// What a fold did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FoldOutcome {
    /// Hashes replaced (merged entities: served states that changed).
    pub upserted: u64,
    /// Hashes deleted.
    pub deleted: u64,
    /// Records below the partition's fence (already folded).
    pub skipped: u64,
    /// Ids that entered a unique index entry another id already holds.
    pub unique_conflicts: u64,
    /// Merged entities whose served state changed (canonical ids); empty
    /// for whole-state batches, whose ids [`PartitionBatch::tags`] names.
    pub changed_ids: Vec<String>,
}

/// What the fold keeps beside one entity type's hashes.
#[derive(Debug, Clone, Default)]
struct Derived {
    indexes: Vec<IndexSpec>,
    /// The index names, space-separated, a unique one followed by `!` (the
    /// script's form).
    names: String,
    changes_max_len: u64,
    changes_max_age_ms: u64,
    /// Merged entities: the source topics by precedence, highest first,
    /// space-separated.
    precedence: String,
}

/// Writes partition batches with the fold scripts.
#[derive(Debug, Clone)]
pub struct Folder {
    keys: KeySpace,
    replace: redis::Script,
    merge: redis::Script,
    derived: Arc<HashMap<String, Derived>>,
    /// Names this process's staging hashes apart from any other's.
    token: Arc<str>,
    /// Fold calls so far: names each call's staging hashes apart.
    calls: Arc<AtomicU64>,
}

impl Folder {
    /// A folder over `keys` with the built-in entities' indexes and change
    /// log retention ([`Config::default`]).
    pub fn new(keys: KeySpace) -> Self {
        Self::from_config(keys, &Config::default())
    }

    /// A folder over `keys` maintaining `config`'s indexes and change logs.
    pub fn from_config(keys: KeySpace, config: &Config) -> Self {
        let derived = config
            .entities
            .iter()
            .map(|(name, e)| {
                let indexes = e.index_specs();
                let names = indexes
                    .iter()
                    .map(|i| format!("{}{}", i.name, if i.unique { "!" } else { "" }))
                    .collect::<Vec<_>>()
                    .join(" ");
                (
                    name.clone(),
                    Derived {
                        indexes,
                        names,
                        changes_max_len: e.changes_max_len,
                        changes_max_age_ms: e.changes_max_age_secs.saturating_mul(1000),
                        precedence: precedence(config, name),
                    },
                )
            })
            .collect();
        Self {
            keys,
            replace: redis::Script::new(
                &[
                    lua::REPLACE_REFUSED,
                    LUA_BYTES_LT,
                    lua::PRELUDE,
                    lua::REPLACE,
                    lua::EPILOGUE,
                ]
                .concat(),
            ),
            merge: redis::Script::new(
                &[
                    lua::MERGE_REFUSED,
                    LUA_BYTES_LT,
                    lua::PRELUDE,
                    lua::MERGE,
                    lua::EPILOGUE,
                ]
                .concat(),
            ),
            derived: Arc::new(derived),
            token: format!("{:016x}", rand::random::<u64>()).into(),
            calls: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Folds `batches` (of generation `generation`, guarded by `epoch`) in
    /// one pipelined round trip; returns one outcome per batch, in order.
    /// Either every batch's script ran, or an error is returned and the
    /// caller retries the whole set (the fence makes the retry exact).
    pub async fn fold<C: ConnectionLike + Send>(
        &self,
        con: &mut C,
        epoch: &str,
        generation: u64,
        batches: &[PartitionBatch],
    ) -> Result<Vec<FoldOutcome>, FoldError> {
        self.fold_from(con, epoch, generation, batches, &[]).await
    }

    /// Like [`Folder::fold`], with the offset each batch's partition is known
    /// to have stored (`known[i]` for `batches[i]`, missing = unknown): a
    /// Redis holding less went back in time and nothing is written.
    pub async fn fold_from<C: ConnectionLike + Send>(
        &self,
        con: &mut C,
        epoch: &str,
        generation: u64,
        batches: &[PartitionBatch],
        known: &[i64],
    ) -> Result<Vec<FoldOutcome>, FoldError> {
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (i, b) in batches.iter().enumerate() {
            let known = known.get(i).copied().unwrap_or(-1);
            let inv = self.invocation(&mut pipe, epoch, generation, b, known);
            pipe.invoke_script(&inv);
        }
        type Reply = (i64, i64, i64, i64, Vec<String>);
        let replies: Vec<Reply> = match pipe.query_async(con).await {
            Ok(r) => r,
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                // A restarted or flushed Redis forgets scripts: load and retry.
                self.replace.prepare_invoke().load_async(con).await?;
                self.merge.prepare_invoke().load_async(con).await?;
                pipe.query_async(con).await?
            }
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::with_capacity(replies.len());
        for (b, (up, del, skip, conflicts, changed_ids)) in batches.iter().zip(replies) {
            if up == -1 {
                return Err(FoldError::EpochChanged);
            }
            if up == -2 {
                return Err(FoldError::Retired);
            }
            if up == -4 {
                return Err(FoldError::StageLost);
            }
            if up == -3 {
                let expected = known.iter().copied().max().unwrap_or(-1);
                return Err(FoldError::WentBack {
                    stored: del,
                    expected,
                });
            }
            if conflicts > 0
                && let Some(entity) = &b.entity
            {
                metrics::counter!("foldcache_ingest_unique_conflicts_total", "entity" => entity.to_string())
                    .increment(conflicts as u64);
            }
            out.push(FoldOutcome {
                upserted: up as u64,
                deleted: del as u64,
                skipped: skip as u64,
                unique_conflicts: conflicts as u64,
                changed_ids,
            });
        }
        Ok(out)
    }

    /// The script call of one batch; a whole-state batch's staging HSETs go
    /// into `pipe` first.
    fn invocation<'a>(
        &'a self,
        pipe: &mut redis::Pipeline,
        epoch: &str,
        generation: u64,
        b: &PartitionBatch,
        known: i64,
    ) -> redis::ScriptInvocation<'a> {
        let mut inv = match b.kind {
            Kind::Replace => self.replace.prepare_invoke(),
            Kind::Part | Kind::Link => self.merge.prepare_invoke(),
        };
        let none = Derived::default();
        let derived = b
            .entity
            .as_ref()
            .and_then(|e| self.derived.get(e.as_str()))
            .unwrap_or(&none);
        inv.key(self.keys.state())
            .key(self.keys.offsets(generation));
        match &b.entity {
            Some(entity) => {
                inv.key(self.keys.ids(generation, entity))
                    .key(self.keys.changes(generation, entity));
            }
            // Nothing but an offset to store (every record dead-lettered):
            // no entity key is touched, the two slots are never used.
            None => {
                inv.key(self.keys.state()).key(self.keys.state());
            }
        }
        inv.arg(epoch)
            .arg(partition_field(&b.topic, b.partition))
            .arg(b.next_offset())
            .arg(state_field::EPOCH)
            .arg(generation)
            .arg(known)
            .arg(
                b.entity
                    .as_ref()
                    .map(|e| self.keys.index_prefix(generation, e))
                    .unwrap_or_default(),
            )
            .arg(derived.changes_max_len)
            .arg(derived.changes_max_age_ms)
            .arg(&derived.names);
        match (b.kind, &b.entity) {
            (_, None) => {}
            (Kind::Replace, Some(entity)) => {
                let call = self.calls.fetch_add(1, Ordering::Relaxed);
                let stage = format!("{}{call:x}:", self.keys.stage_prefix(entity, &self.token));
                replace_args(pipe, &mut inv, b, derived, &stage);
            }
            (Kind::Part | Kind::Link, Some(entity)) => {
                inv.key(self.keys.links(generation, entity))
                    .arg(self.keys.entity_prefix(generation, entity))
                    .arg(self.keys.parts_prefix(generation, entity))
                    .arg(&derived.precedence)
                    .arg(&b.topic)
                    .arg(if b.kind == Kind::Link { "link" } else { "part" });
                merge_args(&mut inv, b, derived);
            }
        }
        inv
    }
}

/// The source topics of merged entity `entity`, highest precedence first:
/// by `priority`, then by their order in `sources`.
fn precedence(config: &Config, entity: &str) -> String {
    let mut sources: Vec<(usize, &SourceConfig)> = config
        .sources
        .iter()
        .enumerate()
        .filter(|(_, s)| s.entity == entity)
        .collect();
    sources.sort_by_key(|(i, s)| (std::cmp::Reverse(s.priority), *i));
    sources
        .iter()
        .map(|(_, s)| s.topic.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whole states: one entity hash per key, each new state staged in
/// `pipe` under `stage` + its place in the batch (see [`lua::REPLACE`]).
fn replace_args(
    pipe: &mut redis::Pipeline,
    inv: &mut redis::ScriptInvocation<'_>,
    b: &PartitionBatch,
    derived: &Derived,
    stage: &str,
) {
    for (n, (key, w)) in b.writes.iter().enumerate() {
        let staged = format!("{stage}{n}");
        inv.key(key)
            .key(&staged)
            .arg(&w.id)
            .arg(w.offset)
            .arg(w.ttl_ms);
        match &w.op {
            Op::Replace(fields) => {
                let entries = entries_by(&derived.indexes, |name| fields.get(name));
                let index_fields = meta_fields(&entries);
                inv.arg(fields.get(META_ETAG).unwrap_or(""))
                    .arg(fields.get(META_MODIFIED_MS).unwrap_or(""))
                    .arg(&entries)
                    .arg("u");
                let hset = pipe.cmd("HSET").arg(&staged);
                let index_pairs = index_fields.iter().map(|(n, v)| (n.as_str(), v.as_str()));
                for (name, value) in fields.iter().chain(index_pairs) {
                    hset.arg(name).arg(value);
                }
                hset.ignore();
                pipe.cmd("PEXPIRE").arg(&staged).arg(STAGE_TTL_MS).ignore();
            }
            Op::Remove | Op::Part(_) | Op::Link(_) => {
                inv.arg("").arg("").arg("").arg("d");
            }
        }
    }
}

/// Parts and links, by the id the source names (see [`lua::MERGE`]).
fn merge_args(inv: &mut redis::ScriptInvocation<'_>, b: &PartitionBatch, derived: &Derived) {
    let mut name_json = Vec::new();
    for w in b.writes.values() {
        inv.arg(&w.id)
            .arg(w.offset)
            .arg(w.ttl_ms)
            .arg(w.modified_ms)
            .arg(b.source_tag(w.offset));
        match &w.op {
            Op::Link(target) => {
                inv.arg(target.as_deref().unwrap_or(""));
            }
            Op::Part(members) => {
                inv.arg(members.len());
                for member in members {
                    name_json.clear();
                    write_json_string(&member.0, &mut name_json);
                    inv.arg(&member.0)
                        .arg(name_json.as_slice())
                        .arg(&member.1)
                        .arg(entries_of(&derived.indexes, std::slice::from_ref(member)));
                }
            }
            Op::Remove | Op::Replace(_) => {
                inv.arg(-1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_sources_rank_by_priority_then_by_their_place_in_the_config() {
        let mut config = Config::default();
        config.entities.get_mut("employees").unwrap().merge = true;
        let source = |topic: &str, priority| SourceConfig {
            topic: topic.into(),
            priority,
            ..config.sources[0].clone()
        };
        config.sources = vec![
            source("a", 0),
            source("b", 5),
            source("c", 0),
            source("d", 5),
        ];
        assert_eq!(precedence(&config, "employees"), "b d a c");
        assert_eq!(precedence(&config, "teams"), "");
    }
}
