//! On-demand rebuilds: a new generation of keys is built beside the live one
//! and swapped in atomically once it has caught up.
//!
//! Protocol (all state in `{prefix}:state`):
//! 1. A request ([`Rebuilds::request`], from `ingest rebuild` or
//!    `POST /admin/rebuild`) sets `build_gen = N` (a fresh number from the
//!    `max_gen` counter, never reused) if no build runs and the live
//!    generation is ready.
//! 2. Every ingest instance notices `build_gen` and starts a second consumer
//!    (consumer group `{group_id}-g{N}`) that replays every topic from offset
//!    zero into `{prefix}:g{N}:*`, with its own offsets. The live consumer
//!    keeps folding the live generation meanwhile; readers keep reading it.
//! 3. The swap script ([`Rebuilds::try_swap`]) flips `live_gen` to N only
//!    when every partition of generation N has reached a fetch-reported end
//!    **and** no partition of N is behind the live generation's offset, so a
//!    reader never sees an older value after the swap.
//! 4. The old generation keeps being folded for `rebuild_retire_grace_ms`
//!    (query-api instances switch within one state poll), then its consumer
//!    stops and its keys are removed with `SCAN` + `UNLINK` in batches.
//!
//! A crash mid-build leaves `build_gen` set: instances resume the build from
//! generation N's offsets. Readers only ever follow `live_gen`, which points
//! at a generation that caught up.

use crate::cache_state::{EpochLost, push_offsets};
use crate::scan::Scan;
use foldcache_common::keys::{KeySpace, partition_field};
use foldcache_common::runtime::now_ms;
use redis::aio::ConnectionLike;
use serde::Serialize;
use std::collections::HashMap;

const REQUEST_LUA: &str = r"
-- KEYS[1] state; ARGV[1] now ms
if not redis.call('HGET', KEYS[1], 'epoch') then return {-2, 0, 0} end
local building = redis.call('HGET', KEYS[1], 'build_gen')
if building then
  return {0, tonumber(building), tonumber(redis.call('HGET', KEYS[1], 'build_started_ms') or '0')}
end
if redis.call('HGET', KEYS[1], 'ready') ~= '1' then return {-1, 0, 0} end
local live = tonumber(redis.call('HGET', KEYS[1], 'live_gen'))
local n = redis.call('HINCRBY', KEYS[1], 'max_gen', 1)
if n <= live then
  n = live + 1
  redis.call('HSET', KEYS[1], 'max_gen', n)
end
redis.call('HSET', KEYS[1], 'build_gen', n, 'build_started_ms', ARGV[1])
return {1, n, tonumber(ARGV[1])}
";

const SWAP_LUA: &str = r"
-- KEYS[1] state, KEYS[2] caught_up(N), KEYS[3] offsets(N), KEYS[4] targets(N),
-- KEYS[5] offsets(live)
-- ARGV[1] epoch, ARGV[2] N, ARGV[3] live, ARGV[4] now ms, ARGV[5] grace ms,
-- ARGV[6] n newly caught up, pairs; then n targets, pairs; then every field
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return -1 end
if redis.call('HGET', KEYS[1], 'build_gen') ~= ARGV[2] then return 0 end
if redis.call('HGET', KEYS[1], 'live_gen') ~= ARGV[3] then return 0 end
local i = 6
local n = tonumber(ARGV[i])
for j = 1, n do
  redis.call('HSETNX', KEYS[2], ARGV[i + 2 * j - 1], ARGV[i + 2 * j])
end
i = i + 2 * n + 1
n = tonumber(ARGV[i])
for j = 1, n do
  redis.call('HSETNX', KEYS[4], ARGV[i + 2 * j - 1], ARGV[i + 2 * j])
end
i = i + 2 * n + 1
for j = i, #ARGV do
  if redis.call('HEXISTS', KEYS[2], ARGV[j]) == 0 then return 0 end
end
local live = redis.call('HGETALL', KEYS[5])
for j = 1, #live, 2 do
  local mine = tonumber(redis.call('HGET', KEYS[3], live[j]) or '-1')
  if mine < tonumber(live[j + 1]) then return 0 end
end
redis.call('HSET', KEYS[1], 'live_gen', ARGV[2], 'retired_gen', ARGV[3],
  'retire_at_ms', tonumber(ARGV[4]) + tonumber(ARGV[5]))
redis.call('HDEL', KEYS[1], 'build_gen', 'build_started_ms')
return 1
";

/// What a rebuild request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RequestOutcome {
    /// A build of `generation` was started.
    Started {
        /// The generation being built.
        generation: u64,
    },
    /// A build is already running; nothing was started.
    AlreadyRunning {
        /// The generation being built.
        generation: u64,
        /// When it was requested, ms since the epoch.
        started_ms: i64,
    },
    /// The live generation is not ready (cold cache or Redis just lost):
    /// ingest is already replaying from offset zero.
    NotReady,
    /// Redis holds no foldcache state (no ingest ever ran against it).
    NoCache,
}

/// Progress of a build, for the CLI, the admin endpoint and metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BuildProgress {
    /// The generation being built (`None`: no build runs).
    pub generation: Option<u64>,
    /// The live generation.
    pub live_generation: u64,
    /// When the build was requested, ms since the epoch.
    pub started_ms: Option<i64>,
    /// Offsets folded, summed over partitions.
    pub done: i64,
    /// Target offsets (each partition's end when the build first saw it),
    /// summed over the partitions that reported one.
    pub target: i64,
    /// Offsets folded per second since the build started.
    pub events_per_sec: Option<f64>,
    /// Seconds left at that rate.
    pub eta_secs: Option<f64>,
    /// Per `{topic}/{partition}`: `(done, target)`.
    pub partitions: HashMap<String, (i64, Option<i64>)>,
}

/// Rebuild requests, swaps, progress and clean-up.
#[derive(Debug, Clone)]
pub struct Rebuilds {
    keys: KeySpace,
    request: redis::Script,
    swap: redis::Script,
}

impl Rebuilds {
    /// Over `keys`.
    pub fn new(keys: KeySpace) -> Self {
        Self {
            keys,
            request: redis::Script::new(REQUEST_LUA),
            swap: redis::Script::new(SWAP_LUA),
        }
    }

    /// Starts a build unless one runs.
    pub async fn request<C: ConnectionLike + Send>(
        &self,
        con: &mut C,
        now_ms: i64,
    ) -> redis::RedisResult<RequestOutcome> {
        let (code, generation, started_ms): (i64, u64, i64) = self
            .request
            .key(self.keys.state())
            .arg(now_ms)
            .invoke_async(con)
            .await?;
        Ok(match code {
            1 => RequestOutcome::Started { generation },
            0 => RequestOutcome::AlreadyRunning {
                generation,
                started_ms,
            },
            -1 => RequestOutcome::NotReady,
            _ => RequestOutcome::NoCache,
        })
    }

    /// Records caught-up partitions and targets of generation `build`, and
    /// swaps it in if it is complete and nowhere behind `live`. Returns
    /// whether the swap happened.
    #[allow(clippy::too_many_arguments)]
    pub async fn try_swap<C: ConnectionLike + Send>(
        &self,
        con: &mut C,
        epoch: &str,
        build: u64,
        live: u64,
        now_ms: i64,
        grace_ms: u64,
        newly: &[(String, i32, i64)],
        targets: &[(String, i32, i64)],
        all: &[(String, i32)],
    ) -> redis::RedisResult<Result<bool, EpochLost>> {
        let mut inv = self.swap.prepare_invoke();
        inv.key(self.keys.state())
            .key(self.keys.caught_up(build))
            .key(self.keys.offsets(build))
            .key(self.keys.targets(build))
            .key(self.keys.offsets(live));
        inv.arg(epoch)
            .arg(build)
            .arg(live)
            .arg(now_ms)
            .arg(grace_ms);
        push_offsets(&mut inv, newly);
        push_offsets(&mut inv, targets);
        for (t, p) in all {
            inv.arg(partition_field(t, *p));
        }
        let r: i64 = inv.invoke_async(con).await?;
        Ok(match r {
            -1 => Err(EpochLost),
            1 => Ok(true),
            _ => Ok(false),
        })
    }

    /// The running build's progress (or the live generation alone).
    pub async fn progress<C: ConnectionLike + Send>(
        &self,
        con: &mut C,
    ) -> redis::RedisResult<BuildProgress> {
        let (live, build, started): (Option<u64>, Option<u64>, Option<i64>) = redis::cmd("HMGET")
            .arg(self.keys.state())
            .arg("live_gen")
            .arg("build_gen")
            .arg("build_started_ms")
            .query_async(con)
            .await?;
        let mut p = BuildProgress {
            generation: build,
            live_generation: live.unwrap_or(0),
            started_ms: started,
            ..Default::default()
        };
        let Some(build) = build else {
            return Ok(p);
        };
        let (done, targets): (HashMap<String, i64>, HashMap<String, i64>) = redis::pipe()
            .hgetall(self.keys.offsets(build))
            .hgetall(self.keys.targets(build))
            .query_async(con)
            .await?;
        for (f, t) in &targets {
            p.partitions.insert(f.clone(), (0, Some(*t)));
            p.target += t;
        }
        for (f, d) in done {
            p.done += d;
            p.partitions.entry(f).or_insert((0, None)).0 = d;
        }
        if let Some(started) = p.started_ms {
            let secs = (now_ms() - started) as f64 / 1000.0;
            if secs > 0.0 && p.done > 0 {
                let rate = p.done as f64 / secs;
                p.events_per_sec = Some(rate);
                p.eta_secs = Some(((p.target - p.done).max(0)) as f64 / rate);
            }
        }
        Ok(p)
    }

    /// Removes every key of a retired generation, `UNLINK` in batches of
    /// 500 found by `SCAN` (never blocking Redis). Returns keys removed.
    pub async fn remove_generation<C: ConnectionLike + Send>(
        &self,
        con: &mut C,
        generation: u64,
    ) -> redis::RedisResult<u64> {
        let mut removed = 0;
        let mut scan = Scan::new(self.keys.generation_pattern(generation), 500);
        while let Some(keys) = scan.next_page(con).await? {
            if !keys.is_empty() {
                removed += keys.len() as u64;
                let () = redis::cmd("UNLINK").arg(&keys).query_async(con).await?;
            }
        }
        Ok(removed)
    }
}
