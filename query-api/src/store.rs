//! Reads entities from Redis.
//!
//! A background task polls the cache marker (`{prefix}:state`) so that every
//! lookup knows the live generation and readiness without an extra round
//! trip. A lookup that finds no hash re-reads the marker before answering
//! 404: if Redis was flushed, replaced or is rebuilding, the answer is 503,
//! never a false 404.

use crate::auth::View;
use crate::conditional::Validators;
use crate::cursor::{Scope, StreamPos, epoch_tag};
use crate::local_cache::LocalCache;
use foldcache_common::id::{EntityId, EntityName};
use foldcache_common::keys::{
    InstanceBeat, KeySpace, META_ETAG, META_MODIFIED_MS, META_PREFIX, state_field,
};
use foldcache_common::runtime::now_ms;
use foldcache_common::state::assemble_body;
use redis::aio::ConnectionManager;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// The cache marker as last read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheView {
    /// Whether a marker exists at all (absent: Redis is empty).
    pub present: bool,
    /// A short tag of the cache epoch (see [`crate::cursor::epoch_tag`]).
    pub epoch_tag: String,
    /// Generation to read.
    pub live_gen: u64,
    /// Caught up at least once.
    pub ready: bool,
    /// Every record produced before this time (ms) is folded, as the ingest
    /// instances last reported; `None` if unknown.
    pub fresh_ms: Option<i64>,
}

/// One entity, as served in one view.
#[derive(Debug, Clone)]
pub struct Entity {
    /// Canonical JSON body.
    pub body: bytes::Bytes,
    /// Record time, ms since the epoch.
    pub modified_ms: i64,
    /// This view's ETag and `Last-Modified`, header forms rendered.
    pub validators: Validators,
    /// The cache tags of a single lookup, rendered by the first response
    /// that sends them (a cached entity keeps them).
    pub surrogate_keys: std::sync::OnceLock<Option<http::HeaderValue>>,
}

/// The result of a lookup.
#[derive(Debug)]
pub enum Lookup {
    /// The entity.
    Found(Arc<Entity>),
    /// The log has no such entity (the cache is ready and current).
    NotFound,
    /// The cache is cold or rebuilding: no answer can be trusted.
    NotReady,
}

/// Redis-backed entity reads.
#[derive(Clone)]
pub struct Store {
    client: redis::Client,
    keys: KeySpace,
    local: Option<Arc<LocalCache>>,
    con: ConnectionManager,
    view: watch::Receiver<CacheView>,
    view_tx: watch::Sender<CacheView>,
    /// Failed reads so far ([`Store::distrust`]). A read that began before
    /// one is not answered from what it got: the connection manager may
    /// have reconnected it meanwhile to another Redis (restarted from an
    /// older snapshot, a lagging replica) that the marker was never
    /// verified on.
    distrusts: Arc<AtomicU64>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Connects (the connection manager reconnects by itself afterwards).
    pub async fn connect(client: redis::Client, keys: KeySpace) -> redis::RedisResult<Self> {
        let con = ConnectionManager::new(client.clone()).await?;
        let (view_tx, view) = watch::channel(CacheView::default());
        let store = Self {
            client,
            keys,
            local: None,
            con,
            view,
            view_tx,
            distrusts: Arc::default(),
        };
        store.refresh().await?;
        Ok(store)
    }

    /// Serves from `cache` while its invalidation connection is up (start
    /// [`LocalCache::track`] beside it).
    pub fn with_local_cache(mut self, cache: Arc<LocalCache>) -> Self {
        self.local = Some(cache);
        self
    }

    /// The in-process cache, if any.
    pub fn local_cache(&self) -> Option<&Arc<LocalCache>> {
        self.local.as_ref()
    }

    /// Re-reads the cache marker and the ingest instances' heartbeats.
    pub async fn refresh(&self) -> redis::RedisResult<CacheView> {
        let mark = self.mark();
        type Marker = (Option<String>, Option<u64>, Option<String>, Option<String>);
        let ((epoch, gen_, ready, verified_on), beats, info): (
            Marker,
            Vec<(String, String)>,
            String,
        ) = redis::pipe()
            .cmd("HMGET")
            .arg(self.keys.state())
            .arg(state_field::EPOCH)
            .arg(state_field::LIVE_GEN)
            .arg(state_field::READY)
            .arg(state_field::REDIS_RUN_ID)
            .cmd("HGETALL")
            .arg(self.keys.instances())
            .cmd("INFO")
            .arg("server")
            .query_async(&mut self.con.clone())
            .await?;
        // A Redis process the cache was not verified on (restarted from a
        // snapshot, failed over) may hold less than ingest acknowledged:
        // not ready until ingest has caught up on it and says so.
        let verified = verified_on.is_some() && verified_on.as_deref() == run_id(&info);
        let beats: Vec<InstanceBeat> = beats
            .iter()
            .filter_map(|(_, v)| InstanceBeat::decode(v))
            .collect();
        let view = CacheView {
            present: epoch.is_some(),
            epoch_tag: epoch.as_deref().map(epoch_tag).unwrap_or_default(),
            live_gen: gen_.unwrap_or(0),
            // A read failed while this one was under way: what it got may
            // be the Redis that failed; the next refresh decides.
            ready: epoch.is_some()
                && ready.as_deref() == Some("1")
                && verified
                && self.unchanged_since(mark),
            fresh_ms: InstanceBeat::pipeline_fresh_ms(&beats, now_ms()),
        };
        self.view_tx.send_if_modified(|v| {
            let changed = *v != view;
            if (v.present, v.live_gen, v.ready) != (view.present, view.live_gen, view.ready) {
                tracing::info!(
                    present = view.present,
                    generation = view.live_gen,
                    ready = view.ready,
                    "cache state changed"
                );
            }
            *v = view.clone();
            changed
        });
        Ok(view)
    }

    /// Unknown is not ready: after a failed read, nothing is served until
    /// the next successful [`Store::refresh`] (the failure may have been
    /// Redis going away, and the one that answers next may be another).
    fn distrust(&self) {
        self.view_tx.send_if_modified(|v| {
            let changed = v.ready;
            v.ready = false;
            changed
        });
        self.distrusts.fetch_add(1, Ordering::SeqCst);
    }

    /// Taken before a read's readiness check; see [`Store::unchanged_since`].
    fn mark(&self) -> u64 {
        self.distrusts.load(Ordering::SeqCst)
    }

    /// Whether no read failed since `mark`: what a read begun then got
    /// comes from the Redis the marker was verified on.
    fn unchanged_since(&self, mark: u64) -> bool {
        self.distrusts.load(Ordering::SeqCst) == mark
    }

    /// Awaits `read`, begun at `mark`: a failure distrusts the marker, and
    /// `None` says another read failed meanwhile (what this one got may come
    /// from a Redis the marker was never verified on).
    async fn guarded<T>(
        &self,
        mark: u64,
        read: impl Future<Output = redis::RedisResult<T>>,
    ) -> redis::RedisResult<Option<T>> {
        let got = read.await.inspect_err(|_| self.distrust())?;
        Ok(self.unchanged_since(mark).then_some(got))
    }

    /// The error a read begun before a failed one answers with.
    fn superseded() -> redis::RedisError {
        redis::RedisError::from((
            redis::ErrorKind::Io,
            "the Redis connection failed during the read",
        ))
    }

    /// Polls the marker every `every` until the task is dropped.
    pub async fn poll_state(self, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "reading the cache state failed");
                self.distrust();
            }
        }
    }

    /// The marker as last read.
    pub fn view(&self) -> CacheView {
        self.view.borrow().clone()
    }

    /// Notified whenever the marker changes.
    pub fn watch_view(&self) -> watch::Receiver<CacheView> {
        self.view.clone()
    }

    /// The client (for connections of their own: blocking reads).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// The key scheme.
    pub fn keys(&self) -> &KeySpace {
        &self.keys
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> bool {
        redis::cmd("PING")
            .query_async::<String>(&mut self.con.clone())
            .await
            .is_ok()
    }

    /// Looks up one entity. With `max_staleness_ms`, a pipeline that has not
    /// confirmed freshness within that bound answers [`Lookup::NotReady`].
    pub async fn get(
        &self,
        entity: &EntityName,
        id: &EntityId,
        max_staleness_ms: Option<i64>,
        view: &View,
    ) -> redis::RedisResult<Lookup> {
        // Only the generation is read on a hit: the marker is cloned (its
        // strings with it) only for a Redis read.
        let mark = self.mark();
        let live_gen = {
            let state = self.view.borrow();
            if !state.serves(max_staleness_ms) {
                return Ok(Lookup::NotReady);
            }
            state.live_gen
        };
        let key = self.keys.entity(live_gen, entity, id);
        let ticket = match self.local.as_ref().map(|c| c.lookup(&key, &view.name)) {
            Some(Ok(hit)) => return Ok(Lookup::Found(hit)),
            Some(Err(ticket)) => ticket,
            None => None,
        };
        let read = self
            .guarded(
                mark,
                self.read(&key, live_gen, entity, max_staleness_ms, view),
            )
            .await
            .map(|r| r.unwrap_or(Lookup::NotReady));
        if let (Some(cache), Some(ticket)) = (&self.local, ticket) {
            match &read {
                Ok(Lookup::Found(e)) => cache.complete(ticket, e.clone()),
                _ => cache.abandon(ticket),
            }
        }
        read
    }

    async fn read(
        &self,
        key: &str,
        live_gen: u64,
        entity: &EntityName,
        max_staleness_ms: Option<i64>,
        view: &View,
    ) -> redis::RedisResult<Lookup> {
        let fields: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut self.con.clone())
            .await?;
        if fields.is_empty() {
            // Confirm before saying 404: the marker may have changed since the
            // last poll (flush, rebuild, generation swap).
            let now = self.refresh().await?;
            let not_found = now.ready && now.live_gen == live_gen && !stale(&now, max_staleness_ms);
            tracing::debug!(
                %entity,
                generation = live_gen,
                generation_now = now.live_gen,
                not_found,
                "no hash for the id"
            );
            return Ok(if not_found {
                Lookup::NotFound
            } else {
                Lookup::NotReady
            });
        }
        Ok(decode_hash(&fields, view).map_or(Lookup::NotFound, |e| Lookup::Found(Arc::new(e))))
    }
}

impl Store {
    /// Looks up several entities of one type in one round trip; `None` when
    /// the cache is not ready (or not fresh within `max_staleness_ms`).
    pub async fn get_many(
        &self,
        entity: &EntityName,
        ids: &[EntityId],
        max_staleness_ms: Option<i64>,
        view: &View,
    ) -> redis::RedisResult<Option<Vec<Option<Entity>>>> {
        let mark = self.mark();
        let state = self.view();
        if !state.ready || stale(&state, max_staleness_ms) {
            return Ok(None);
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HGETALL")
                .arg(self.keys.entity(state.live_gen, entity, id));
        }
        let mut con = self.con.clone();
        let read = pipe.query_async::<Vec<Vec<(String, String)>>>(&mut con);
        let Some(hashes) = self.guarded(mark, read).await? else {
            return Ok(None);
        };
        if hashes.iter().any(Vec::is_empty) {
            let now = self.refresh().await?;
            if !now.ready || now.live_gen != state.live_gen || stale(&now, max_staleness_ms) {
                return Ok(None);
            }
        }
        Ok(Some(hashes.iter().map(|h| decode_hash(h, view)).collect()))
    }
}

/// The `run_id` line of `INFO server`.
fn run_id(info: &str) -> Option<&str> {
    info.lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .map(str::trim)
}

impl CacheView {
    /// The cache life and generation cursors are tied to.
    pub fn scope(&self) -> Scope {
        Scope {
            epoch_tag: self.epoch_tag.clone(),
            generation: self.live_gen,
        }
    }

    /// Whether reads may be answered (ready, and fresh within the bound).
    pub fn serves(&self, max_staleness_ms: Option<i64>) -> bool {
        self.ready && !stale(self, max_staleness_ms)
    }
}

/// Reads one page of ids and their hashes, atomically: `ZRANGE BYLEX` over
/// the ids (or an index's ids) and `HGETALL` of each.
const PAGE_LUA: &str = r"
-- KEYS[1] sorted set of ids; ARGV[1] ZRANGE start ('-' or '(' .. id),
-- ARGV[2] page size, ARGV[3] entity key prefix. One id more than the page
-- is listed (whether another page follows); its hash is not read.
local n = tonumber(ARGV[2])
local ids = redis.call('ZRANGE', KEYS[1], ARGV[1], '+', 'BYLEX', 'LIMIT', 0, n + 1)
local hashes = {}
for i, id in ipairs(ids) do
  if i <= n then hashes[i] = redis.call('HGETALL', ARGV[3] .. id) end
end
return {ids, hashes}
";

/// [`PAGE_LUA`] as a script, its SHA-1 computed once (not per page).
static PAGE_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(PAGE_LUA));

/// [`PAGE_LUA`] for a unique index's value: its first holder from the
/// index's hash, the others (conflicts, or every holder an older ingest
/// listed) from the value's sorted set, merged in byte order.
const PAGE_UNIQUE_LUA: &str = r"
-- KEYS[1] the unique index's hash, KEYS[2] the value's sorted set;
-- ARGV[1] ZRANGE start ('-' or '(' .. id), ARGV[2] page size, ARGV[3]
-- entity key prefix, ARGV[4] the encoded value; after LUA_BYTES_LT.
local n = tonumber(ARGV[2])
local ids = redis.call('ZRANGE', KEYS[2], ARGV[1], '+', 'BYLEX', 'LIMIT', 0, n + 1)
local first = redis.call('HGET', KEYS[1], ARGV[4])
if first and (ARGV[1] == '-' or bytes_lt(string.sub(ARGV[1], 2), first)) then
  local at = #ids + 1
  for i, id in ipairs(ids) do
    if id == first then at = nil; break end
    if bytes_lt(first, id) then at = i; break end
  end
  if at then table.insert(ids, at, first) end
  if #ids > n + 1 then ids[#ids] = nil end
end
local hashes = {}
for i, id in ipairs(ids) do
  if i <= n then hashes[i] = redis.call('HGETALL', ARGV[3] .. id) end
end
return {ids, hashes}
";

/// [`PAGE_UNIQUE_LUA`] as a script.
static PAGE_UNIQUE_SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(&[foldcache_common::index::LUA_BYTES_LT, PAGE_UNIQUE_LUA].concat())
});

/// Reads a change log after a position, atomically with the states its
/// upserts name and with what the log has lost to trimming.
const CHANGES_LUA: &str = r"
-- KEYS[1] change log; ARGV[1] exclusive start id, ARGV[2] how many,
-- ARGV[3] entity key prefix
if redis.call('EXISTS', KEYS[1]) == 0 then return {'0-0', '0-0', {}, {}} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local maxdel, last = '0-0', '0-0'
for i = 1, #info, 2 do
  if info[i] == 'max-deleted-entry-id' then maxdel = info[i + 1]
  elseif info[i] == 'last-generated-id' then last = info[i + 1] end
end
local entries = {}
if tonumber(ARGV[2]) > 0 then
  entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', tonumber(ARGV[2]))
end
local states, seen = {}, {}
for i, e in ipairs(entries) do
  local f = e[2]
  local id, op
  for j = 1, #f, 2 do
    if f[j] == 'id' then id = f[j + 1] elseif f[j] == 'op' then op = f[j + 1] end
  end
  if op == 'u' and id then
    if seen[id] == nil then seen[id] = redis.call('HGETALL', ARGV[3] .. id) end
    states[i] = seen[id]
  else
    states[i] = {}
  end
end
return {maxdel, last, entries, states}
";

/// [`CHANGES_LUA`] as a script, its SHA-1 computed once (not per read).
static CHANGES_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(CHANGES_LUA));

/// Which ids a page walks.
#[derive(Debug, Clone)]
pub enum PageSource {
    /// Every id of the entity type.
    All,
    /// The ids holding `value` in index `index`.
    Index {
        /// The index name.
        index: String,
        /// The filter value.
        value: String,
        /// Declared unique: kept as one hash per index
        /// ([`KeySpace::unique_index`](foldcache_common::keys::KeySpace::unique_index)).
        unique: bool,
    },
}

/// One page of a collection, as read from Redis.
#[derive(Debug)]
pub struct Page {
    /// The entities of the page that exist, in order, with their stored
    /// hashes (meta fields included).
    pub items: Vec<(EntityId, Vec<(String, String)>)>,
    /// The last id walked, when more ids follow (the next page's cursor).
    pub more_after: Option<EntityId>,
    /// Ids listed whose hash was gone (expired, or a generation being
    /// removed): the caller confirms the generation before trusting the
    /// page.
    pub missing: usize,
}

/// What a change log holds after a position.
#[derive(Debug)]
pub struct ChangesRead {
    /// The newest entry the log ever removed by trimming (`0-0`: none): a
    /// cursor below it has missed changes.
    pub max_deleted: StreamPos,
    /// The newest entry ever written (the tail).
    pub last: StreamPos,
    /// The entries read, oldest first.
    pub entries: Vec<ChangeEntry>,
}

/// One change log entry, with the state it names as it is now.
#[derive(Debug, Clone)]
pub struct ChangeEntry {
    /// Its position.
    pub pos: StreamPos,
    /// The entity.
    pub id: EntityId,
    /// What happened.
    pub op: ChangeOp,
}

/// What a change did.
#[derive(Debug, Clone)]
pub enum ChangeOp {
    /// The entity got this state (its stored hash, meta fields included).
    Upsert(Arc<Vec<(String, String)>>),
    /// The entity was deleted.
    Delete,
    /// An upsert whose state has changed again since (a later entry holds
    /// it) or is gone: it carries nothing a client needs.
    Superseded,
}

impl Store {
    /// One page of `entity`'s ids after `after` (at most `limit`) in
    /// generation `generation`, with their hashes, read atomically. Ids
    /// whose hash is gone, and, for an index, whose state no longer holds
    /// the value, are left out (the next fold removes such entries).
    pub async fn page(
        &self,
        generation: u64,
        entity: &EntityName,
        source: &PageSource,
        after: Option<&EntityId>,
        limit: usize,
    ) -> redis::RedisResult<Page> {
        let mark = self.mark();
        let start = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
        // A unique index's value: its hash, and the field that names it.
        let (mut inv, field) = match source {
            PageSource::All => (PAGE_SCRIPT.key(self.keys.ids(generation, entity)), None),
            PageSource::Index {
                index,
                value,
                unique: false,
            } => (
                PAGE_SCRIPT.key(self.keys.index(generation, entity, index, value)),
                None,
            ),
            PageSource::Index {
                index,
                value,
                unique: true,
            } => (
                PAGE_UNIQUE_SCRIPT.key(self.keys.unique_index(generation, entity, index)),
                Some((
                    self.keys.index(generation, entity, index, value),
                    foldcache_common::index::encode_value(value),
                )),
            ),
        };
        if let Some((set, _)) = &field {
            inv.key(set);
        }
        inv.arg(start)
            .arg(limit)
            .arg(self.keys.entity_prefix(generation, entity));
        if let Some((_, encoded)) = &field {
            inv.arg(encoded);
        }
        let (ids, hashes): (Vec<String>, Vec<Vec<(String, String)>>) = self
            .guarded(mark, inv.invoke_async(&mut self.con.clone()))
            .await?
            .ok_or_else(Self::superseded)?;
        let more = ids.len() > limit;
        let mut items = Vec::with_capacity(limit.min(ids.len()));
        let mut last = None;
        let mut missing = 0;
        for (id, hash) in ids.into_iter().zip(hashes).take(limit) {
            let Ok(id) = EntityId::parse(&id) else {
                continue;
            };
            last = Some(id.clone());
            if hash.is_empty() {
                missing += 1;
                continue;
            }
            if let PageSource::Index { index, value, .. } = source
                && !foldcache_common::index::holds(&hash, index, value)
            {
                continue;
            }
            items.push((id, hash));
        }
        Ok(Page {
            items,
            more_after: if more { last } else { None },
            missing,
        })
    }

    /// The change log of `entity` in `generation` after `after`: at most
    /// `limit` entries (0: only the log's bounds), each with the state it
    /// names as it is now, read atomically.
    pub async fn changes(
        &self,
        generation: u64,
        entity: &EntityName,
        after: StreamPos,
        limit: usize,
    ) -> redis::RedisResult<ChangesRead> {
        let mark = self.mark();
        type Raw = (
            String,
            String,
            Vec<(String, Vec<(String, String)>)>,
            Vec<Vec<(String, String)>>,
        );
        let mut script = CHANGES_SCRIPT.key(self.keys.changes(generation, entity));
        script
            .arg(after.to_string())
            .arg(limit)
            .arg(self.keys.entity_prefix(generation, entity));
        let (maxdel, last, entries, states): Raw = self
            .guarded(mark, script.invoke_async(&mut self.con.clone()))
            .await?
            .ok_or_else(Self::superseded)?;
        let mut out = Vec::with_capacity(entries.len());
        for ((pos, fields), state) in entries.into_iter().zip(states) {
            let Some(pos) = StreamPos::parse(&pos) else {
                continue;
            };
            let field = |name: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.as_str())
            };
            let Some(id) = field("id").and_then(|id| EntityId::parse(id).ok()) else {
                continue;
            };
            let op = match field("op") {
                Some("d") => ChangeOp::Delete,
                Some("u") => {
                    let logged = field("etag").unwrap_or("");
                    let now = state
                        .iter()
                        .find(|(k, _)| k == META_ETAG)
                        .map(|(_, v)| v.as_str());
                    if now == Some(logged) {
                        ChangeOp::Upsert(Arc::new(state))
                    } else {
                        ChangeOp::Superseded
                    }
                }
                _ => continue,
            };
            out.push(ChangeEntry { pos, id, op });
        }
        Ok(ChangesRead {
            max_deleted: StreamPos::parse(&maxdel).unwrap_or_default(),
            last: StreamPos::parse(&last).unwrap_or_default(),
            entries: out,
        })
    }

    /// Looks up one entity in Redis, never in the in-process cache (whose
    /// invalidation may trail a change the change feed already announced).
    pub async fn get_uncached(
        &self,
        entity: &EntityName,
        id: &EntityId,
        max_staleness_ms: Option<i64>,
        view: &View,
    ) -> redis::RedisResult<Lookup> {
        let mark = self.mark();
        let state = self.view();
        if !state.serves(max_staleness_ms) {
            return Ok(Lookup::NotReady);
        }
        let key = self.keys.entity(state.live_gen, entity, id);
        let read = self.read(&key, state.live_gen, entity, max_staleness_ms, view);
        Ok(self.guarded(mark, read).await?.unwrap_or(Lookup::NotReady))
    }

    /// Re-reads the marker: whether `generation` is still live and served.
    pub async fn still_serves(
        &self,
        generation: u64,
        max_staleness_ms: Option<i64>,
    ) -> redis::RedisResult<bool> {
        let now = self.refresh().await?;
        Ok(now.live_gen == generation && now.serves(max_staleness_ms))
    }
}

fn stale(view: &CacheView, max_staleness_ms: Option<i64>) -> bool {
    max_staleness_ms.is_some_and(|bound| view.fresh_ms.is_none_or(|f| now_ms() - f > bound))
}

/// Splits a hash into `view`'s body and validator. `None` if the stored
/// validators are missing (never written by ingest).
pub fn decode_hash(fields: &[(String, String)], view: &View) -> Option<Entity> {
    if fields.is_empty() {
        return None;
    }
    let mut etag = None;
    let mut modified_ms = None;
    let mut data: Vec<(&str, &str)> = Vec::with_capacity(fields.len());
    for (k, v) in fields {
        match k.as_str() {
            META_ETAG => etag = Some(v.clone()),
            META_MODIFIED_MS => modified_ms = v.parse().ok(),
            other if other.starts_with(META_PREFIX) => {}
            other if view.shows(other) => data.push((other, v)),
            _ => {}
        }
    }
    let modified_ms: i64 = modified_ms?;
    Some(Entity {
        body: assemble_body(&mut data).into(),
        modified_ms,
        validators: Validators::new(
            view.etag(&etag?),
            Some(std::time::UNIX_EPOCH + Duration::from_millis(modified_ms.max(0) as u64)),
        ),
        surrogate_keys: std::sync::OnceLock::new(),
    })
}
