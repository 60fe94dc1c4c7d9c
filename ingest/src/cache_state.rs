//! The cache marker (`{prefix}:state`): epoch, live generation, readiness and
//! heartbeat, and the per-partition caught-up record.
//!
//! The epoch is a random id written the first time ingest meets a Redis. Every
//! write of ingest is guarded by it (see `fold/`), so a Redis that was
//! flushed or replaced (epoch gone) is noticed at the next batch or heartbeat,
//! whichever comes first, and ingest replays the log from offset zero.

use foldcache_common::keys::{InstanceBeat, KeySpace, partition_field};
use redis::aio::ConnectionLike;

const INIT_LUA: &str = r"
-- KEYS[1] state; ARGV[1] a fresh epoch
if redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'live_gen', '1', 'ready', '0')
end
return redis.call('HMGET', KEYS[1], 'epoch', 'live_gen', 'ready')
";

const HEARTBEAT_LUA: &str = r"
-- KEYS[1] state, KEYS[2] instances, KEYS[3] offsets of the live generation
-- ARGV[1] epoch, ARGV[2] now in ms, ARGV[3] instance id, ARGV[4] encoded
-- InstanceBeat, ARGV[5] '1' if every partition of this instance is caught
-- up, then (partition field, acknowledged position) pairs.
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return {-1, false, false} end
for i = 6, #ARGV, 2 do
  local stored = tonumber(redis.call('HGET', KEYS[3], ARGV[i]) or '0')
  if stored < tonumber(ARGV[i + 1]) then return {-3, ARGV[i], stored} end
end
local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
if redis.call('HGET', KEYS[1], 'redis_run_id') ~= run_id then
  if ARGV[5] ~= '1' then return {2, false, false} end
  redis.call('HSET', KEYS[1], 'redis_run_id', run_id)
end
redis.call('HSET', KEYS[1], 'heartbeat_ms', ARGV[2])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
-- Always three elements: the reply decodes into one tuple.
return {1, false, false}
";

const CAUGHT_UP_LUA: &str = r"
-- KEYS[1] state, KEYS[2] caught_up hash
-- ARGV[1] epoch, ARGV[2] number of newly caught-up pairs,
-- then (partition field, offset) pairs, then every partition field that must
-- be caught up for the cache to be ready.
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return -1 end
local n = tonumber(ARGV[2])
for i = 0, n - 1 do
  redis.call('HSETNX', KEYS[2], ARGV[3 + 2 * i], ARGV[4 + 2 * i])
end
for i = 3 + 2 * n, #ARGV do
  if redis.call('HEXISTS', KEYS[2], ARGV[i]) == 0 then return 0 end
end
redis.call('HSET', KEYS[1], 'ready', '1')
return 1
";

/// Appends `count, (field, offset)...` for partition offsets to a script
/// invocation.
pub(crate) fn push_offsets(inv: &mut redis::ScriptInvocation<'_>, offsets: &[(String, i32, i64)]) {
    inv.arg(offsets.len());
    for (t, p, o) in offsets {
        inv.arg(partition_field(t, *p)).arg(*o);
    }
}

/// Ingest's view of the cache marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheState {
    /// The epoch every write is guarded by.
    pub epoch: String,
    /// The generation being written and served.
    pub live_gen: u64,
    /// Whether the live generation has caught up once.
    pub ready: bool,
}

/// What one instance reports in a heartbeat.
#[derive(Debug)]
pub struct BeatReport<'a> {
    /// The epoch it folds into.
    pub epoch: &'a str,
    /// Its live generation.
    pub generation: u64,
    /// Its instance id.
    pub instance: &'a str,
    /// Liveness and freshness.
    pub beat: InstanceBeat,
    /// Whether every partition it owns is caught up.
    pub caught_up: bool,
    /// Positions it knows were acknowledged, per partition.
    pub positions: &'a [((String, i32), i64)],
}

/// What a heartbeat found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Beat {
    /// Beat recorded.
    Ok,
    /// The epoch is not ours any more.
    EpochLost,
    /// Redis holds `stored` for `partition`, below a position this instance
    /// acknowledged: Redis went back in time.
    WentBack {
        /// `topic/partition`.
        partition: String,
        /// The offset Redis holds.
        stored: i64,
    },
    /// A Redis process this cache was not verified on, and this instance
    /// is not caught up yet: no beat, readers stay out.
    Unverified,
}

/// Redis lost foldcache's data (the epoch is gone or different).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochLost;

/// Reads and maintains the cache marker.
#[derive(Debug, Clone)]
pub struct StateStore {
    keys: KeySpace,
    init: redis::Script,
    heartbeat: redis::Script,
    caught_up: redis::Script,
    go_cold: redis::Script,
}

impl StateStore {
    /// A store over `keys`.
    pub fn new(keys: KeySpace) -> Self {
        Self {
            keys,
            init: redis::Script::new(INIT_LUA),
            heartbeat: redis::Script::new(HEARTBEAT_LUA),
            caught_up: redis::Script::new(CAUGHT_UP_LUA),
            go_cold: redis::Script::new(GO_COLD_LUA),
        }
    }

    /// Returns the current marker, creating it (new epoch, generation 1, not
    /// ready) if Redis has none: an empty Redis is a cold cache.
    pub async fn init<C: ConnectionLike + Send>(
        &self,
        con: &mut C,
    ) -> redis::RedisResult<CacheState> {
        let fresh = format!("{:032x}", rand::random::<u128>());
        let (epoch, live_gen, ready): (String, u64, String) = self
            .init
            .key(self.keys.state())
            .arg(&fresh)
            .invoke_async(con)
            .await?;
        if epoch == fresh {
            tracing::info!(%epoch, "initialised an empty cache: replaying every topic from offset zero");
        }
        Ok(CacheState {
            epoch,
            live_gen,
            ready: ready == "1",
        })
    }

    /// Checks that Redis still holds every position this instance knows it
    /// acknowledged, and that it is the Redis process this cache was last
    /// verified on; then refreshes this instance's heartbeat. A different
    /// Redis process (restarted, restored, failed over) is verified, and
    /// readers let back in, only by an instance whose partitions are all
    /// `caught_up` from what that Redis holds.
    pub async fn heartbeat<C: ConnectionLike + Send>(
        &self,
        con: &mut C,
        report: &BeatReport<'_>,
    ) -> redis::RedisResult<Beat> {
        let mut call = self.heartbeat.prepare_invoke();
        call.key(self.keys.state())
            .key(self.keys.instances())
            .key(self.keys.offsets(report.generation))
            .arg(report.epoch)
            .arg(report.beat.alive_ms)
            .arg(report.instance)
            .arg(report.beat.encode())
            .arg(if report.caught_up { "1" } else { "0" });
        for ((t, p), position) in report.positions {
            call.arg(partition_field(t, *p)).arg(*position);
        }
        let r: (i64, Option<String>, Option<i64>) = call.invoke_async(con).await?;
        Ok(match r {
            (-1, ..) => Beat::EpochLost,
            (-3, field, stored) => Beat::WentBack {
                partition: field.unwrap_or_default(),
                stored: stored.unwrap_or(0),
            },
            (2, ..) => Beat::Unverified,
            _ => Beat::Ok,
        })
    }

    /// Removes this instance's heartbeat (clean shutdown), and the beats of
    /// instances silent for over an hour.
    pub async fn retire<C: ConnectionLike + Send>(
        &self,
        con: &mut C,
        instance: &str,
        now_ms: i64,
    ) -> redis::RedisResult<()> {
        let beats: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(self.keys.instances())
            .query_async(con)
            .await?;
        let mut gone: Vec<&str> = beats
            .iter()
            .filter(|(_, v)| {
                InstanceBeat::decode(v).is_none_or(|b| now_ms - b.alive_ms > 3_600_000)
            })
            .map(|(k, _)| k.as_str())
            .collect();
        gone.push(instance);
        redis::cmd("HDEL")
            .arg(self.keys.instances())
            .arg(gone)
            .query_async(con)
            .await
    }

    /// Records partitions that reached their end (`(topic, partition,
    /// offset)`) and sets `ready` once every partition in `all` has. Returns
    /// whether the cache is ready.
    pub async fn record_caught_up<C: ConnectionLike + Send>(
        &self,
        con: &mut C,
        epoch: &str,
        generation: u64,
        newly: &[(String, i32, i64)],
        all: &[(String, i32)],
    ) -> redis::RedisResult<Result<bool, EpochLost>> {
        let mut inv = self.caught_up.prepare_invoke();
        inv.key(self.keys.state())
            .key(self.keys.caught_up(generation))
            .arg(epoch);
        push_offsets(&mut inv, newly);
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

    /// The stored next offset of a partition, if any (sync: called from the
    /// rebalance callback).
    pub fn stored_offset(
        &self,
        con: &mut redis::Connection,
        generation: u64,
        topic: &str,
        partition: i32,
    ) -> redis::RedisResult<Option<i64>> {
        redis::cmd("HGET")
            .arg(self.keys.offsets(generation))
            .arg(partition_field(topic, partition))
            .query(con)
    }
}

/// What a consumer's generation is right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Served to readers.
    Live,
    /// Being built by a rebuild.
    Build,
    /// Replaced by a swap, or a build that is no longer wanted.
    Retired,
}

/// The generations named by the cache marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generations {
    /// Served to readers.
    pub live: u64,
    /// Being built.
    pub build: Option<u64>,
    /// Replaced, with the time its keys may be removed.
    pub retired: Option<(u64, i64)>,
    /// Abandoned when the cache went cold (its keys may be removed).
    pub abandoned: Option<u64>,
}

impl Generations {
    /// The role of `generation`.
    pub fn role_of(&self, generation: u64) -> Role {
        if generation == self.live {
            Role::Live
        } else if Some(generation) == self.build {
            Role::Build
        } else {
            Role::Retired
        }
    }
}

impl StateStore {
    /// Live, building, retired and abandoned generations, from the marker.
    pub async fn generations<C: ConnectionLike + Send>(
        &self,
        con: &mut C,
    ) -> redis::RedisResult<Generations> {
        use foldcache_common::keys::state_field;
        type Fields = (
            Option<u64>,
            Option<u64>,
            Option<u64>,
            Option<i64>,
            Option<u64>,
        );
        let (live, build, retired, retire_at, abandoned): Fields = redis::cmd("HMGET")
            .arg(self.keys.state())
            .arg(state_field::LIVE_GEN)
            .arg(state_field::BUILD_GEN)
            .arg(state_field::RETIRED_GEN)
            .arg(state_field::RETIRE_AT_MS)
            .arg(ABANDONED_GEN)
            .query_async(con)
            .await?;
        Ok(Generations {
            live: live.unwrap_or(0),
            build,
            retired: retired.zip(retire_at),
            abandoned,
        })
    }

    /// Stored next offsets of `tps` in `generation` (`None` where none).
    pub async fn stored_offsets<C: ConnectionLike + Send>(
        &self,
        con: &mut C,
        generation: u64,
        tps: &[(String, i32)],
    ) -> redis::RedisResult<Vec<Option<i64>>> {
        if tps.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.keys.offsets(generation));
        for (t, p) in tps {
            cmd.arg(partition_field(t, *p));
        }
        cmd.query_async(con).await
    }

    /// The cache went cold on purpose because Redis or a source went back in
    /// time: a fresh epoch and a fresh, empty live generation (`ready = 0`,
    /// so readers get 503), the old live generation retired for removal and
    /// any build abandoned. Every ingest instance sees the epoch change and
    /// replays every topic from offset zero. Does nothing if the epoch is no
    /// longer `epoch` (another instance, or a flush, got there first).
    pub async fn go_cold<C: ConnectionLike + Send>(
        &self,
        con: &mut C,
        epoch: &str,
        now_ms: i64,
    ) -> redis::RedisResult<Option<u64>> {
        let fresh = format!("{:032x}", rand::random::<u128>());
        let n: i64 = self
            .go_cold
            .key(self.keys.state())
            .arg(epoch)
            .arg(&fresh)
            .arg(now_ms)
            .invoke_async(con)
            .await?;
        Ok((n > 0).then_some(n as u64))
    }
}

/// Marker field: a build generation abandoned when the cache went cold.
pub const ABANDONED_GEN: &str = "abandoned_gen";

const GO_COLD_LUA: &str = r"
-- KEYS[1] state; ARGV[1] the epoch that went back, ARGV[2] a fresh epoch,
-- ARGV[3] now ms
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
local live = tonumber(redis.call('HGET', KEYS[1], 'live_gen') or '0')
local build = tonumber(redis.call('HGET', KEYS[1], 'build_gen') or '0')
local maxg = tonumber(redis.call('HGET', KEYS[1], 'max_gen') or '0')
local n = math.max(live, build, maxg) + 1
redis.call('HSET', KEYS[1], 'epoch', ARGV[2], 'live_gen', n, 'max_gen', n,
  'ready', '0', 'retired_gen', live, 'retire_at_ms', ARGV[3])
if build > 0 then redis.call('HSET', KEYS[1], 'abandoned_gen', build) end
redis.call('HDEL', KEYS[1], 'build_gen', 'build_started_ms')
return n
";
