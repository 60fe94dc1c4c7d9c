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
//! 4. advances the partition's offset.
//!
//! Within a batch only the last record of each key is sent (the earlier ones
//! would be overwritten in the same atomic step anyway).

use crate::decode::Decoded;
use crate::source::Source;
use foldcache_common::keys::{
    KeySpace, META_ETAG, META_MODIFIED_MS, META_SOURCE, partition_field, state_field,
};
use foldcache_common::state::etag_of;
use redis::aio::ConnectionLike;
use std::collections::HashMap;
use thiserror::Error;

const FOLD_LUA: &str = r"
-- KEYS[1] state hash, KEYS[2] offsets hash, KEYS[3..] entity hashes
-- ARGV[1] epoch, ARGV[2] partition field, ARGV[3] next offset after the batch,
-- ARGV[4] 'epoch', ARGV[5] generation, ARGV[6] the offset the caller knows
-- is stored (its position),
-- then per entity key: offset, ttl_ms, nfields (-1 = delete), name, value, ...
if redis.call('HGET', KEYS[1], ARGV[4]) ~= ARGV[1] then
  return {-1, 0, 0}
end
-- A generation replaced by a rebuild is frozen at the swap: readers that
-- have not switched yet never see it move ahead of the new one.
if redis.call('HGET', KEYS[1], 'live_gen') ~= ARGV[5]
   and redis.call('HGET', KEYS[1], 'build_gen') ~= ARGV[5] then
  return {-2, 0, 0}
end
local stored = redis.call('HGET', KEYS[2], ARGV[2])
local fence = 0
if stored then fence = tonumber(stored) end
-- Redis acknowledged offsets up to ARGV[6] and now holds less: it went
-- back in time (restored snapshot, failed over to a lagging replica).
if tonumber(ARGV[6]) > fence then
  return {-3, fence, 0}
end
local up, del, skip = 0, 0, 0
local c = 7
for i = 3, #KEYS do
  local off = tonumber(ARGV[c])
  local n = tonumber(ARGV[c + 2])
  if off < fence then
    skip = skip + 1
  elseif n < 0 then
    redis.call('DEL', KEYS[i])
    del = del + 1
  else
    local prev = redis.call('HGET', KEYS[i], '_fc:mod')
    redis.call('DEL', KEYS[i])
    -- In chunks: unpack() of thousands of members overflows Lua's stack.
    local last = c + 2 + 2 * n
    local from = c + 3
    while from <= last do
      local to = math.min(from + 999, last)
      redis.call('HSET', KEYS[i], unpack(ARGV, from, to))
      from = to + 1
    end
    -- Last-Modified never moves backwards for a key that exists.
    local now = redis.call('HGET', KEYS[i], '_fc:mod')
    if prev and now and tonumber(prev) and tonumber(now) and tonumber(prev) > tonumber(now) then
      redis.call('HSET', KEYS[i], '_fc:mod', prev)
    end
    redis.call('PEXPIRE', KEYS[i], ARGV[c + 1])
    up = up + 1
  end
  if n > 0 then c = c + 3 + 2 * n else c = c + 3 end
end
if tonumber(ARGV[3]) > fence then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
end
return {up, del, skip}
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
    next_offset: i64,
    writes: HashMap<String, Write>,
}

impl PartitionBatch {
    /// An empty batch for one partition.
    pub fn new(topic: &str, partition: i32) -> Self {
        Self {
            topic: topic.to_owned(),
            partition,
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
        let key = keys.entity(generation, &source.entity, decoded.id());
        let fields = match decoded {
            Decoded::Delete { .. } => None,
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
        self.writes
            .keys()
            .filter_map(|key| {
                // `{prefix}:g{gen}:{entity}:{id}`: ids and names have no ':'.
                let mut parts = key.rsplitn(3, ':');
                let (id, entity) = (parts.next()?, parts.next()?);
                Some(format!("{entity}/{id}"))
            })
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
}

/// Writes partition batches with the fold script.
#[derive(Debug, Clone)]
pub struct Folder {
    keys: KeySpace,
    script: redis::Script,
}

impl Folder {
    /// A folder over `keys`.
    pub fn new(keys: KeySpace) -> Self {
        Self {
            keys,
            script: redis::Script::new(FOLD_LUA),
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
        let replies: Vec<(i64, i64, i64)> = match pipe.query_async(con).await {
            Ok(r) => r,
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                // A restarted or flushed Redis forgets scripts: load and retry.
                self.script.prepare_invoke().load_async(con).await?;
                pipe.query_async(con).await?
            }
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::with_capacity(replies.len());
        for (up, del, skip) in replies {
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
            out.push(FoldOutcome {
                upserted: up as u64,
                deleted: del as u64,
                skipped: skip as u64,
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
        inv.key(self.keys.state())
            .key(self.keys.offsets(generation));
        inv.arg(epoch)
            .arg(partition_field(&b.topic, b.partition))
            .arg(b.next_offset)
            .arg(state_field::EPOCH)
            .arg(generation)
            .arg(known);
        for (key, w) in &b.writes {
            inv.key(key).arg(w.offset).arg(w.ttl_ms);
            match &w.fields {
                None => {
                    inv.arg(-1);
                }
                Some(fields) => {
                    inv.arg(fields.len());
                    for (name, value) in fields {
                        inv.arg(name).arg(value);
                    }
                }
            }
        }
        inv
    }
}
