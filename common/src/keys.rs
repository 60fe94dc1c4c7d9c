//! The Redis key scheme. Every key foldcache touches is built here.
//!
//! ```text
//! {prefix}:state                      hash  cache marker and live generation (see state_field)
//! {prefix}:instances                  hash  ingest instance -> liveness and freshness
//! {prefix}:ttl_refresh_lock           string  elects the instance that refreshes TTLs
//! {prefix}:g{gen}:offsets             hash  "{topic}/{partition}" -> next offset to fold
//! {prefix}:g{gen}:targets             hash  "{topic}/{partition}" -> end offset a build
//!                                           first saw (progress target)
//! {prefix}:g{gen}:caught_up           hash  "{topic}/{partition}" -> offset at which the
//!                                           partition was first seen at its end
//! {prefix}:g{gen}:{entity}:{id}       hash  one entity: its top-level JSON members
//!                                           plus the reserved `_fc:` meta fields
//! {prefix}:g{gen}:{{entity}}:_ids      zset  every id of the entity (score 0: the
//!                                           members sort by bytes, the collection order)
//! {prefix}:g{gen}:{{entity}}:_changes  stream the change log: one entry per change
//!                                           (`op` u|d, `id`, `etag`)
//! {prefix}:g{gen}:{{entity}}:_ix:{index}:{value}
//!                                     zset  ids whose state holds `value` in `index`
//! {prefix}:g{gen}:{{entity}}:_links    hash  merged entities' identity links: an id
//!                                           as a source names it -> its canonical id
//! {prefix}:g{gen}:{{entity}}:_parts:{id}
//!                                     hash  a merged entity's parts: `{topic}:{source id}`
//!                                           -> what that source holds (cmsgpack)
//! ```
//!
//! Ids and entity names are validated ([`crate::id`]) so they cannot contain
//! `:`, braces or glob characters: no id can address another key. Index
//! values are encoded ([`crate::index::encode_value`]) for the same reason.
//!
//! The derived keys of one entity type (ids, change log, indexes) carry the
//! Redis Cluster hash tag `{entity}`, so they live in one slot with each
//! other; they start with `_` after the tag, which no id can, so they can
//! never collide with an entity key should entity keys take the same tag
//! (docs/ARCHITECTURE.md, *Redis Cluster*).

use crate::id::{EntityId, EntityName};

/// Prefix of the reserved meta fields inside an entity hash. A source object
/// with a top-level member starting with this prefix is refused as poison.
pub const META_PREFIX: &str = "_fc:";
/// Meta field: the strong validator (base64url SHA-256 of the canonical body).
pub const META_ETAG: &str = "_fc:etag";
/// Meta field: the Kafka record timestamp in milliseconds since the epoch,
/// served as `Last-Modified`.
pub const META_MODIFIED_MS: &str = "_fc:mod";
/// Meta field: where the state came from, `{topic}/{partition}/{offset}`.
pub const META_SOURCE: &str = "_fc:src";
/// Meta field prefix: `_fc:ix:{index}` holds the state's encoded values in
/// that index (`\n`-separated, sorted, see [`crate::index`]), so that the
/// next fold of the id can move or remove them; absent when the state has
/// no value in the index. One field per index keeps each value short, so a
/// typical entity hash stays in Redis's compact listpack encoding (any
/// value over `hash-max-listpack-value`, 64 bytes by default, turns the
/// whole hash into a hash table: 3× the memory).
pub const META_INDEX_PREFIX: &str = "_fc:ix:";
/// Meta field of the layout before [`META_INDEX_PREFIX`]: every index
/// entry (`{index}:{encoded value}`) in one field. Still read, never
/// written: a cache folded by an older ingest keeps its indexes exact.
pub const META_INDEX_LEGACY: &str = "_fc:ix";

/// Fields of the `{prefix}:state` hash.
pub mod state_field {
    /// Random id written when foldcache first initialises this Redis. Its
    /// absence means Redis lost (or never had) foldcache's data.
    pub const EPOCH: &str = "epoch";
    /// The generation readers use (a decimal number).
    pub const LIVE_GEN: &str = "live_gen";
    /// `1` once the live generation has caught up with the log.
    pub const READY: &str = "ready";
    /// Milliseconds since the epoch of ingest's last heartbeat.
    pub const HEARTBEAT_MS: &str = "heartbeat_ms";
    /// The generation being built by an on-demand rebuild, if any.
    pub const BUILD_GEN: &str = "build_gen";
    /// When that build was requested (ms).
    pub const BUILD_STARTED_MS: &str = "build_started_ms";
    /// The `run_id` of the Redis process the cache was last verified on:
    /// readers are served only while it is the current process's.
    pub const REDIS_RUN_ID: &str = "redis_run_id";
    /// Highest generation number ever handed out (never reused).
    pub const MAX_GEN: &str = "max_gen";
    /// The generation replaced by the last swap, until its keys are removed.
    pub const RETIRED_GEN: &str = "retired_gen";
    /// When the retired generation stops being folded (ms).
    pub const RETIRE_AT_MS: &str = "retire_at_ms";
}

/// Builds keys under one prefix.
#[derive(Debug, Clone)]
pub struct KeySpace {
    prefix: String,
}

impl KeySpace {
    /// A key space under `prefix` (for example `fc`).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The cache marker and live-generation hash.
    pub fn state(&self) -> String {
        format!("{}:state", self.prefix)
    }

    /// Live ingest instances: `{instance}` -> `{alive_ms}:{fresh_ms}:{interval_ms}`
    /// (see [`InstanceBeat`]).
    pub fn instances(&self) -> String {
        format!("{}:instances", self.prefix)
    }

    /// Lock that elects one ingest instance to refresh TTLs.
    pub fn ttl_refresh_lock(&self) -> String {
        format!("{}:ttl_refresh_lock", self.prefix)
    }

    /// Next offset to fold per `{topic}/{partition}`, for one generation.
    pub fn offsets(&self, generation: u64) -> String {
        format!("{}:g{generation}:offsets", self.prefix)
    }

    /// Per `{topic}/{partition}`: the end a build first saw (its progress
    /// target), for one generation being built.
    pub fn targets(&self, generation: u64) -> String {
        format!("{}:g{generation}:targets", self.prefix)
    }

    /// Partitions that reached their end at least once, for one generation.
    pub fn caught_up(&self, generation: u64) -> String {
        format!("{}:g{generation}:caught_up", self.prefix)
    }

    /// One entity's hash.
    pub fn entity(&self, generation: u64, entity: &EntityName, id: &EntityId) -> String {
        format!("{}:g{generation}:{entity}:{id}", self.prefix)
    }

    /// The common prefix of one entity type's hashes: `{prefix}:g{gen}:{entity}:`
    /// (an id appended gives [`KeySpace::entity`]).
    pub fn entity_prefix(&self, generation: u64, entity: &EntityName) -> String {
        format!("{}:g{generation}:{entity}:", self.prefix)
    }

    /// Every id of one entity type, a sorted set with score 0 (ordered by
    /// bytes): the collection's order.
    pub fn ids(&self, generation: u64, entity: &EntityName) -> String {
        format!("{}:g{generation}:{{{entity}}}:_ids", self.prefix)
    }

    /// One entity type's change log (a stream) in one generation.
    pub fn changes(&self, generation: u64, entity: &EntityName) -> String {
        format!("{}:g{generation}:{{{entity}}}:_changes", self.prefix)
    }

    /// A merged entity type's identity links (id as the sources name it ->
    /// canonical id), as its links topic last said, in one generation.
    pub fn links(&self, generation: u64, entity: &EntityName) -> String {
        format!("{}:g{generation}:{{{entity}}}:_links", self.prefix)
    }

    /// The common prefix of a merged entity type's parts hashes (an id
    /// appended gives the hash of the parts folded into that id).
    pub fn parts_prefix(&self, generation: u64, entity: &EntityName) -> String {
        format!("{}:g{generation}:{{{entity}}}:_parts:", self.prefix)
    }

    /// The prefix of one entity type's index keys; an index entry
    /// (`{index}:{encoded value}`) appended gives [`KeySpace::index`].
    pub fn index_prefix(&self, generation: u64, entity: &EntityName) -> String {
        format!("{}:g{generation}:{{{entity}}}:_ix:", self.prefix)
    }

    /// The sorted set of ids whose state holds `value` in `index` (a
    /// unique index: [`KeySpace::unique_index`]; a sorted set of this name
    /// is then one an older ingest wrote, still read and emptied).
    pub fn index(&self, generation: u64, entity: &EntityName, index: &str, value: &str) -> String {
        let mut k = self.index_prefix(generation, entity);
        k.push_str(&crate::index::entry(index, value));
        k
    }

    /// A unique index (one hash per index): encoded value → its first
    /// holder's id; the holders after it (conflicts) wait in the value's
    /// [`KeySpace::index`] sorted set. One field per value instead of one
    /// sorted set per value: a million e-mail addresses are a million
    /// fields of one key, not a million keys. The fold script derives it
    /// from [`KeySpace::index_prefix`] (`_ix:` → `_uix:`).
    pub fn unique_index(&self, generation: u64, entity: &EntityName, index: &str) -> String {
        format!("{}:g{generation}:{{{entity}}}:_uix:{index}", self.prefix)
    }

    /// The prefix of the staging hashes of one fold call (`token` names the
    /// call): ingest writes each whole state there with a plain `HSET`, and
    /// the fold script `RENAME`s it onto the entity's key, so the state's
    /// fields never pass through Lua. Outside `{prefix}:g`, so query-api's
    /// invalidation tracking never hears of them; they expire by themselves
    /// if their script never runs.
    pub fn stage_prefix(&self, entity: &EntityName, token: &str) -> String {
        format!("{}:stage:{{{entity}}}:{token}:", self.prefix)
    }

    /// A glob that matches every key of one generation (for SCAN-based
    /// clean-up of a retired generation).
    pub fn generation_pattern(&self, generation: u64) -> String {
        format!("{}:g{generation}:*", self.prefix)
    }
}

/// One ingest instance's heartbeat: alive at `alive_ms`; every record
/// produced before `fresh_ms` is folded (`None`: not known yet); beats every
/// `interval_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceBeat {
    /// Time of the beat, ms since the epoch.
    pub alive_ms: i64,
    /// Freshness of the instance's partitions, ms since the epoch.
    pub fresh_ms: Option<i64>,
    /// Beat interval in ms.
    pub interval_ms: i64,
}

impl InstanceBeat {
    /// `alive:fresh:interval`, fresh `-1` when unknown.
    pub fn encode(&self) -> String {
        format!(
            "{}:{}:{}",
            self.alive_ms,
            self.fresh_ms.unwrap_or(-1),
            self.interval_ms
        )
    }

    /// Parses [`InstanceBeat::encode`]'s output.
    pub fn decode(s: &str) -> Option<Self> {
        let mut it = s.split(':').map(str::parse::<i64>);
        let (alive_ms, fresh, interval_ms) = (it.next()?.ok()?, it.next()?.ok()?, it.next()?.ok()?);
        Some(Self {
            alive_ms,
            fresh_ms: (fresh >= 0).then_some(fresh),
            interval_ms,
        })
    }

    /// Freshness of the whole pipeline from every instance's beat at `now_ms`:
    /// the least fresh of the live instances (a beat within three intervals,
    /// at least 3 s); if none is live, the freshest beat ever recorded (ingest
    /// is down and the data ages from there). `None` if nothing is known.
    pub fn pipeline_fresh_ms(beats: &[InstanceBeat], now_ms: i64) -> Option<i64> {
        let live = |b: &&InstanceBeat| now_ms - b.alive_ms <= (3 * b.interval_ms).max(3000);
        if beats.iter().any(|b| live(&b)) {
            beats
                .iter()
                .filter(live)
                .map(|b| b.fresh_ms)
                .try_fold(i64::MAX, |acc, f| f.map(|f| acc.min(f)))
        } else {
            beats.iter().filter_map(|b| b.fresh_ms).max()
        }
    }
}

/// The field name under which a partition's offset is kept.
pub fn partition_field(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_freshness() {
        let b = |alive_ms, fresh_ms| InstanceBeat {
            alive_ms,
            fresh_ms,
            interval_ms: 1000,
        };
        assert_eq!(
            InstanceBeat::decode(&b(5, Some(4)).encode()),
            Some(b(5, Some(4)))
        );
        assert_eq!(InstanceBeat::decode(&b(5, None).encode()), Some(b(5, None)));
        let now = 100_000;
        // Two live instances: the staler one bounds the pipeline.
        assert_eq!(
            InstanceBeat::pipeline_fresh_ms(
                &[b(now, Some(90_000)), b(now - 500, Some(80_000))],
                now
            ),
            Some(80_000)
        );
        // A dead instance (crashed, its partitions taken over) is ignored.
        assert_eq!(
            InstanceBeat::pipeline_fresh_ms(&[b(now, Some(90_000)), b(now - 60_000, Some(1))], now),
            Some(90_000)
        );
        // Everything dead: the data ages from the freshest beat.
        assert_eq!(
            InstanceBeat::pipeline_fresh_ms(
                &[b(10_000, Some(9_000)), b(20_000, Some(19_000))],
                now
            ),
            Some(19_000)
        );
        // A live instance without an estimate yet: unknown.
        assert_eq!(InstanceBeat::pipeline_fresh_ms(&[b(now, None)], now), None);
        assert_eq!(InstanceBeat::pipeline_fresh_ms(&[], now), None);
    }

    #[test]
    fn key_layout() {
        let ks = KeySpace::new("fc");
        let e = EntityName::parse("employees").unwrap();
        let id = EntityId::parse("E1").unwrap();
        assert_eq!(ks.entity(3, &e, &id), "fc:g3:employees:E1");
        assert_eq!(ks.offsets(3), "fc:g3:offsets");
        assert_eq!(ks.state(), "fc:state");
        assert_eq!(partition_field("hr.teams", 2), "hr.teams/2");
        assert_eq!(ks.ids(3, &e), "fc:g3:{employees}:_ids");
        assert_eq!(ks.changes(3, &e), "fc:g3:{employees}:_changes");
        assert_eq!(ks.links(3, &e), "fc:g3:{employees}:_links");
        assert_eq!(ks.parts_prefix(3, &e), "fc:g3:{employees}:_parts:");
        assert_eq!(
            ks.index(3, &e, "email", "a b@x"),
            "fc:g3:{employees}:_ix:email:a%20b@x"
        );
        assert_eq!(
            ks.unique_index(3, &e, "email"),
            "fc:g3:{employees}:_uix:email"
        );
        // Every derived key is removed with its generation.
        let glob = ks.generation_pattern(3);
        assert!(ks.changes(3, &e).starts_with(&glob[..glob.len() - 1]));
    }
}
