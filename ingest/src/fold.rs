//! The fold: one atomic Redis script call per partition batch.
//!
//! For each batch of one partition, a Lua script, in one atomic step:
//! 1. checks the cache epoch (a Redis that lost foldcache's data has lost it,
//!    and ingest must replay rather than write into a half-empty cache);
//! 2. reads the partition's stored next offset (the *fence*) and skips every
//!    record below it: re-deliveries, replays after a crash and a zombie
//!    instance after a rebalance can never regress a key;
//! 3. replaces each entity hash (`DEL` + `HSET` + `PEXPIRE`, so no reader ever
//!    sees a mix of old and new fields) or deletes it for a tombstone;
//! 4. keeps the entity type's derived keys exact in the same step: the
//!    sorted set of every id (the collection's order), the secondary
//!    indexes (an update moves the id from its old entries to its new ones,
//!    found in the hash's `_fc:ix` meta field; a tombstone removes them) and
//!    the change log (a stream entry `op u|d, id, etag` for every change:
//!    a state equal to the stored one is no change), trimmed by length
//!    and age; the newest removed entry is recorded in the stream
//!    (`XSETID ... MAXDELETEDID`), so a reader can tell a cursor that lost
//!    changes from one that did not;
//! 5. advances the partition's offset.
//!
//! So no change is announced that is not in the cache, and none is missed.
//! Within a batch only the last record of each key is sent (the earlier ones
//! would be overwritten in the same atomic step anyway), so the change log
//! holds one entry per key and batch.

use crate::decode::Decoded;
use crate::source::Source;
use foldcache_common::config::Config;
use foldcache_common::id::EntityName;
use foldcache_common::index::{IndexSpec, entries_of};
use foldcache_common::keys::{
    KeySpace, META_ETAG, META_INDEX, META_MODIFIED_MS, META_SOURCE, partition_field, state_field,
};
use foldcache_common::state::etag_of;
use redis::aio::ConnectionLike;
use std::collections::HashMap;
use std::sync::Arc;
use thiserror::Error;

const FOLD_LUA: &str = r"
-- KEYS[1] state hash, KEYS[2] offsets hash, KEYS[3] the entity type's ids
-- (sorted set), KEYS[4] its change log (stream), KEYS[5..] entity hashes
-- ARGV[1] epoch, ARGV[2] partition field, ARGV[3] next offset after the batch,
-- ARGV[4] 'epoch', ARGV[5] generation, ARGV[6] the offset the caller knows
-- is stored (its position), ARGV[7] index key prefix, ARGV[8] change log
-- length bound (0: none), ARGV[9] change log max age in ms (0: none), ARGV[10]
-- unique index names, space-separated,
-- then per entity key: id, offset, ttl_ms, etag, mod, index entries
-- ('\n'-separated), nfields (-1 = delete), name, value, ... (the fields
-- include _fc:etag, _fc:mod and, if not empty, _fc:ix)
if redis.call('HGET', KEYS[1], ARGV[4]) ~= ARGV[1] then
  return {-1, 0, 0, 0}
end
-- A generation replaced by a rebuild is frozen at the swap: readers that
-- have not switched yet never see it move ahead of the new one.
if redis.call('HGET', KEYS[1], 'live_gen') ~= ARGV[5]
   and redis.call('HGET', KEYS[1], 'build_gen') ~= ARGV[5] then
  return {-2, 0, 0, 0}
end
local stored = redis.call('HGET', KEYS[2], ARGV[2])
local fence = 0
if stored then fence = tonumber(stored) end
-- Redis acknowledged offsets up to ARGV[6] and now holds less: it went
-- back in time (restored snapshot, failed over to a lagging replica).
if tonumber(ARGV[6]) > fence then
  return {-3, fence, 0, 0}
end
local maxlen = tonumber(ARGV[8])
local unique = {}
for name in string.gmatch(ARGV[10], '%S+') do unique[name] = true end
local function entries(s)
  local t = {}
  if s then for e in string.gmatch(s, '[^\n]+') do t[e] = true end end
  return t
end
local conflicts, logged = 0, 0
-- Moves an id from its old index entries to its new ones.
local function reindex(id, old, new)
  for e in pairs(old) do
    if not new[e] then redis.call('ZREM', ARGV[7] .. e, id) end
  end
  for e in pairs(new) do
    if not old[e] then
      local k = ARGV[7] .. e
      redis.call('ZADD', k, 0, id)
      if unique[string.match(e, '^[^:]+')] and redis.call('ZCARD', k) > 1 then
        conflicts = conflicts + 1
      end
    end
  end
end
-- The change log entry, in the same atomic step as the data.
local last_id
local function log_change(op, id, etag)
  last_id = redis.call('XADD', KEYS[4], '*', 'op', op, 'id', id, 'etag', etag)
  logged = logged + 1
end
-- Removes the log's entries up to and including `cut` and records it as
-- the newest removed entry (XINFO's max-deleted-entry-id), so that readers
-- know exactly which cursors have lost changes.
local function trim_through(cut)
  local ms, seq = string.match(cut, '^(%d+)-(%d+)$')
  redis.call('XTRIM', KEYS[4], 'MINID', ms .. '-' .. (tonumber(seq) + 1))
  redis.call('XSETID', KEYS[4], last_id, 'MAXDELETEDID', cut)
end
local up, del, skip = 0, 0, 0
local c = 11
for i = 5, #KEYS do
  local id = ARGV[c]
  local off = tonumber(ARGV[c + 1])
  local n = tonumber(ARGV[c + 6])
  if off < fence then
    skip = skip + 1
  elseif n < 0 then
    local old = redis.call('HGET', KEYS[i], '_fc:ix')
    redis.call('DEL', KEYS[i])
    if old then reindex(id, entries(old), {}) end
    redis.call('ZREM', KEYS[3], id)
    log_change('d', id, '')
    del = del + 1
  else
    local etag, mod, ix = ARGV[c + 3], ARGV[c + 4], ARGV[c + 5]
    local prev = redis.call('HMGET', KEYS[i], '_fc:mod', '_fc:etag', '_fc:ix')
    redis.call('DEL', KEYS[i])
    -- In chunks: unpack() of thousands of members overflows Lua's stack.
    local last = c + 6 + 2 * n
    local from = c + 7
    while from <= last do
      local to = math.min(from + 999, last)
      redis.call('HSET', KEYS[i], unpack(ARGV, from, to))
      from = to + 1
    end
    -- Last-Modified never moves backwards for a key that exists.
    if prev[1] and tonumber(prev[1]) and tonumber(mod) and tonumber(prev[1]) > tonumber(mod) then
      redis.call('HSET', KEYS[i], '_fc:mod', prev[1])
    end
    redis.call('PEXPIRE', KEYS[i], ARGV[c + 2])
    if (prev[3] or '') ~= ix then reindex(id, entries(prev[3]), entries(ix)) end
    redis.call('ZADD', KEYS[3], 0, id)
    -- The same state again (an upstream duplicate) is no change.
    if prev[2] ~= etag then log_change('u', id, etag) end
    up = up + 1
  end
  if n > 0 then c = c + 7 + 2 * n else c = c + 7 end
end
-- Retention, by length (in steps, so that trimming is amortised) and by
-- age.
if logged > 0 then
  if maxlen > 0 then
    local len = redis.call('XLEN', KEYS[4])
    if len > maxlen + math.max(100, math.floor(maxlen / 10)) then
      local old = redis.call('XRANGE', KEYS[4], '-', '+', 'COUNT', len - maxlen)
      trim_through(old[#old][1])
    end
  end
  local maxage = tonumber(ARGV[9])
  if maxage > 0 then
    local t = redis.call('TIME')
    local minms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - maxage
    local first = redis.call('XRANGE', KEYS[4], '-', '+', 'COUNT', 1)
    if first[1] and tonumber(string.match(first[1][1], '^(%d+)')) < minms then
      local cut = redis.call('XREVRANGE', KEYS[4], '(' .. minms .. '-0', '-', 'COUNT', 1)
      if cut[1] then trim_through(cut[1][1]) end
    end
  end
end
if tonumber(ARGV[3]) > fence then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
end
return {up, del, skip, conflicts}
";

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

/// One pending write for one key.
#[derive(Debug, Clone)]
struct Write {
    id: String,
    offset: i64,
    ttl_ms: u64,
    /// `None` deletes; otherwise every field, meta fields included.
    fields: Option<Vec<(String, String)>>,
}

/// The records of one partition waiting to be folded.
#[derive(Debug, Clone)]
pub struct PartitionBatch {
    topic: String,
    partition: i32,
    /// The entity type the topic feeds (known once a record was pushed).
    entity: Option<EntityName>,
    next_offset: i64,
    writes: HashMap<String, Write>,
}

impl PartitionBatch {
    /// An empty batch for one partition.
    pub fn new(topic: &str, partition: i32) -> Self {
        Self {
            topic: topic.to_owned(),
            partition,
            entity: None,
            next_offset: 0,
            writes: HashMap::new(),
        }
    }

    /// Adds a decoded record at `offset` with record time `timestamp_ms`.
    pub fn push(
        &mut self,
        keys: &KeySpace,
        generation: u64,
        source: &Source,
        offset: i64,
        timestamp_ms: i64,
        decoded: Decoded,
    ) {
        self.advance(offset);
        if self.entity.is_none() {
            self.entity = Some(source.entity.clone());
        }
        let id = decoded.id().as_str().to_owned();
        let key = keys.entity(generation, &source.entity, decoded.id());
        let fields = match decoded {
            Decoded::Delete { .. } | Decoded::Filtered { .. } => None,
            Decoded::Upsert { state, .. } => {
                let etag = etag_of(&state.body());
                let mut f: Vec<(String, String)> = Vec::with_capacity(state.fields().len() + 3);
                f.extend(state.fields().iter().cloned());
                f.push((META_ETAG.into(), etag));
                f.push((META_MODIFIED_MS.into(), timestamp_ms.to_string()));
                f.push((
                    META_SOURCE.into(),
                    format!("{}/{}/{offset}", self.topic, self.partition),
                ));
                Some(f)
            }
        };
        self.writes.insert(
            key,
            Write {
                id,
                offset,
                ttl_ms: source.ttl_ms,
                fields,
            },
        );
    }

    /// Moves the batch's end past `offset` without a write (a dead-lettered
    /// record still counts as consumed).
    pub fn advance(&mut self, offset: i64) {
        self.next_offset = self.next_offset.max(offset + 1);
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The offset after the last record in the batch.
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// Cache tags (`entity/id`) of the entities this batch writes, as
    /// query-api's surrogate-key header names them.
    pub fn tags(&self) -> Vec<String> {
        let Some(entity) = &self.entity else {
            return Vec::new();
        };
        self.writes
            .values()
            .map(|w| format!("{entity}/{}", w.id))
            .collect()
    }

    /// Distinct keys to write.
    pub fn len(&self) -> usize {
        self.writes.len()
    }

    /// Whether nothing is to be written (the offset may still advance).
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }
}

/// What a fold did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FoldOutcome {
    /// Hashes replaced.
    pub upserted: u64,
    /// Hashes deleted.
    pub deleted: u64,
    /// Records below the partition's fence (already folded).
    pub skipped: u64,
    /// Ids that entered a unique index entry another id already holds.
    pub unique_conflicts: u64,
}

/// What the fold keeps beside one entity type's hashes.
#[derive(Debug, Clone, Default)]
struct Derived {
    indexes: Vec<IndexSpec>,
    /// Names of the unique indexes, space-separated (the script's form).
    unique: String,
    changes_max_len: u64,
    changes_max_age_ms: u64,
}

/// Writes partition batches with the fold script.
#[derive(Debug, Clone)]
pub struct Folder {
    keys: KeySpace,
    script: redis::Script,
    derived: Arc<HashMap<String, Derived>>,
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
                let unique = indexes
                    .iter()
                    .filter(|i| i.unique)
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(" ");
                (
                    name.clone(),
                    Derived {
                        indexes,
                        unique,
                        changes_max_len: e.changes_max_len,
                        changes_max_age_ms: e.changes_max_age_secs.saturating_mul(1000),
                    },
                )
            })
            .collect();
        Self {
            keys,
            script: redis::Script::new(FOLD_LUA),
            derived: Arc::new(derived),
        }
    }

    /// Folds `batches` (of generation `generation`, guarded by `epoch`) in
    /// one pipelined round trip; returns one outcome per batch, in order. Either every batch's script ran, or an error
    /// is returned and the caller retries the whole set (the fence makes the
    /// retry exact).
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
            pipe.invoke_script(&self.invocation(epoch, generation, b, known));
        }
        let replies: Vec<(i64, i64, i64, i64)> = match pipe.query_async(con).await {
            Ok(r) => r,
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                // A restarted or flushed Redis forgets scripts: load and retry.
                self.script.prepare_invoke().load_async(con).await?;
                pipe.query_async(con).await?
            }
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::with_capacity(replies.len());
        for (b, (up, del, skip, conflicts)) in batches.iter().zip(replies) {
            if up == -1 {
                return Err(FoldError::EpochChanged);
            }
            if up == -2 {
                return Err(FoldError::Retired);
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
            });
        }
        Ok(out)
    }

    fn invocation(
        &self,
        epoch: &str,
        generation: u64,
        b: &PartitionBatch,
        known: i64,
    ) -> redis::ScriptInvocation<'_> {
        let mut inv = self.script.prepare_invoke();
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
            .arg(b.next_offset)
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
            .arg(&derived.unique);
        for (key, w) in &b.writes {
            inv.key(key).arg(&w.id).arg(w.offset).arg(w.ttl_ms);
            match &w.fields {
                None => {
                    inv.arg("").arg("").arg("").arg(-1);
                }
                Some(fields) => {
                    let meta = |name: &str| {
                        fields
                            .iter()
                            .rev()
                            .find(|(k, _)| k == name)
                            .map_or("", |(_, v)| v.as_str())
                    };
                    let entries = entries_of(&derived.indexes, fields);
                    inv.arg(meta(META_ETAG))
                        .arg(meta(META_MODIFIED_MS))
                        .arg(&entries);
                    inv.arg(fields.len() + usize::from(!entries.is_empty()));
                    for (name, value) in fields {
                        inv.arg(name).arg(value);
                    }
                    if !entries.is_empty() {
                        inv.arg(META_INDEX).arg(entries);
                    }
                }
            }
        }
        inv
    }
}
