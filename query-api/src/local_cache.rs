//! An in-process cache of rendered entities, kept exact by Redis
//! server-assisted client-side caching (RESP3 `CLIENT TRACKING ... BCAST`).
//!
//! - One dedicated RESP3 connection registers `CLIENT TRACKING ON BCAST
//!   PREFIX {prefix}:g`: Redis pushes the name of every entity key that
//!   changes (a write, a delete, an expiry, a flush) to it. Each push drops
//!   that key's entries (every view of it).
//! - While that connection is not established (start-up, a drop, Redis
//!   restarting), the cache is **empty and bypassed**: every lookup reads
//!   Redis. When it drops, the cache is emptied at once; when tracking is on
//!   again, it is emptied again (changes in between were not seen) and only
//!   then used.
//! - A read that races with a change cannot insert the old value: a miss
//!   first installs a `Pending` slot with a fresh ticket; an invalidation
//!   removes it; the value read from Redis is stored only if the slot still
//!   holds that ticket and no drop happened meanwhile. Redis sends the
//!   invalidation after applying the write, and the slot is installed before
//!   the read is sent, so a read that saw the old value always has its slot
//!   removed before it completes or its insert is refused.
//!
//! Entries are keyed by `(Redis key, view)`; the generation is part of the
//! Redis key, so a rebuild's swap moves readers to new keys by itself.
//!
//! The map is a fixed set of lock-striped shards with random eviction, not
//! an LRU/LFU cache (moka): a hit is one shared lock and one probe, and
//! records nothing. moka's read bookkeeping (access-order queues, frequency
//! sketch, housekeeping run by readers) was 12 % of query-api's CPU on
//! cached reads (docs/BENCHMARKS.md), and the working set of a directory
//! fits: the bound is there for memory, not for hit rate.

use crate::store::Entity;
use redis::{PushKind, Value};
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

/// Name of the tracking connection (`CLIENT LIST` shows it).
pub const TRACKING_CLIENT_NAME: &str = "foldcache-query-api-tracking";

#[derive(Clone)]
enum Slot {
    Pending(u64),
    Ready(Arc<Entity>),
}

/// What a miss reserved: complete it with [`LocalCache::complete`].
#[derive(Debug)]
pub struct Ticket {
    key: String,
    ticket: u64,
    epoch: u64,
}

/// Shards of the map: enough that two workers rarely meet on one lock.
const SHARDS: usize = 64;

/// The entries, striped over [`SHARDS`] locks, each holding at most
/// `per_shard` entries.
struct Entries {
    shards: Box<[RwLock<HashMap<String, Slot>>]>,
    per_shard: usize,
    hasher: RandomState,
}

impl Entries {
    fn new(max_entries: u64) -> Self {
        let per_shard = usize::try_from(max_entries.div_ceil(SHARDS as u64))
            .unwrap_or(usize::MAX)
            .max(1);
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            per_shard,
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &str) -> &RwLock<HashMap<String, Slot>> {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }

    // A panic while a shard is locked leaves a map that is still whole
    // (every operation is one map call), so poisoning is ignored.
    fn read(&self, key: &str) -> RwLockReadGuard<'_, HashMap<String, Slot>> {
        self.shard(key)
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self, key: &str) -> RwLockWriteGuard<'_, HashMap<String, Slot>> {
        self.shard(key)
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Inserts into a locked shard, first evicting an arbitrary other entry
    /// if the shard is full (a `Pending` one evicted makes its read store
    /// nothing).
    fn insert(&self, shard: &mut HashMap<String, Slot>, key: String, slot: Slot) {
        if shard.len() >= self.per_shard
            && !shard.contains_key(&key)
            && let Some(victim) = shard.keys().next().cloned()
        {
            shard.remove(&victim);
        }
        shard.insert(key, slot);
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    fn clear(&self) {
        for s in self.shards.iter() {
            s.write().unwrap_or_else(PoisonError::into_inner).clear();
        }
    }
}

/// The cache.
pub struct LocalCache {
    entries: Entries,
    /// Tracking is on: the cache may be read and filled.
    enabled: AtomicBool,
    /// Bumped on every drop and every (re)connection.
    epoch: AtomicU64,
    next_ticket: AtomicU64,
    /// Every view name, to drop all views of an invalidated key.
    views: Vec<String>,
    hits: AtomicU64,
    misses: AtomicU64,
    bypassed: AtomicU64,
    invalidations: AtomicU64,
    /// `foldcache_local_cache_total` by outcome, registered once: a
    /// labelled `counter!` per lookup costs a registry search.
    outcome: Outcomes,
}

/// Handles of `foldcache_local_cache_total{outcome}`.
struct Outcomes {
    hit: metrics::Counter,
    miss: metrics::Counter,
    bypassed: metrics::Counter,
}

impl Outcomes {
    fn register() -> Self {
        let outcome =
            |o: &'static str| metrics::counter!("foldcache_local_cache_total", "outcome" => o);
        Self {
            hit: outcome("hit"),
            miss: outcome("miss"),
            bypassed: outcome("bypassed"),
        }
    }
}

impl std::fmt::Debug for LocalCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCache")
            .field("enabled", &self.enabled())
            .field("entries", &self.entries.len())
            .finish_non_exhaustive()
    }
}

/// Counters, for tests and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that read Redis while the cache was on.
    pub misses: u64,
    /// Lookups that read Redis because tracking was off.
    pub bypassed: u64,
    /// Keys invalidated by Redis.
    pub invalidations: u64,
}

fn cache_key(redis_key: &str, view: &str) -> String {
    let mut k = String::with_capacity(redis_key.len() + view.len() + 1);
    k.push_str(redis_key);
    k.push('|');
    k.push_str(view);
    k
}

impl LocalCache {
    /// A cache of at most `max_entries` rendered entities over `views`
    /// (its metrics go to the recorder installed at this point).
    pub fn new(max_entries: u64, views: Vec<String>) -> Arc<Self> {
        Arc::new(Self {
            entries: Entries::new(max_entries),
            enabled: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            next_ticket: AtomicU64::new(1),
            views,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            bypassed: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            outcome: Outcomes::register(),
        })
    }

    /// Whether tracking is on (the cache is in use).
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// Entries held (reads in flight included).
    pub fn entry_count(&self) -> u64 {
        self.entries.len() as u64
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        Stats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            bypassed: self.bypassed.load(Ordering::Relaxed),
            invalidations: self.invalidations.load(Ordering::Relaxed),
        }
    }

    /// A cached entity, or on a miss a ticket to fill it (`None` while
    /// tracking is off: read Redis and keep nothing).
    pub fn lookup(&self, redis_key: &str, view: &str) -> Result<Arc<Entity>, Option<Ticket>> {
        if !self.enabled() {
            self.bypassed.fetch_add(1, Ordering::Relaxed);
            self.outcome.bypassed.increment(1);
            return Err(None);
        }
        let key = cache_key(redis_key, view);
        if let Some(Slot::Ready(e)) = self.entries.read(&key).get(&key) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            self.outcome.hit.increment(1);
            return Ok(e.clone());
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        self.outcome.miss.increment(1);
        let epoch = self.epoch.load(Ordering::Acquire);
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        let mut shard = self.entries.write(&key);
        if shard.contains_key(&key) {
            // Another read holds the slot (or has just filled it): read
            // Redis, keep nothing.
            return Err(None);
        }
        self.entries
            .insert(&mut shard, key.clone(), Slot::Pending(ticket));
        Err(Some(Ticket { key, ticket, epoch }))
    }

    /// Stores what a miss read, unless the key changed or tracking dropped
    /// since the ticket was taken.
    pub fn complete(&self, ticket: Ticket, entity: Arc<Entity>) {
        if self.epoch.load(Ordering::Acquire) != ticket.epoch || !self.enabled() {
            return;
        }
        let Ticket { key, ticket, epoch } = ticket;
        let mut shard = self.entries.write(&key);
        if let Some(slot) = shard.get_mut(&key)
            && matches!(slot, Slot::Pending(t) if *t == ticket)
            && self.epoch.load(Ordering::Acquire) == epoch
        {
            *slot = Slot::Ready(entity);
        }
    }

    /// Abandons a ticket (the key was missing or the read failed).
    pub fn abandon(&self, ticket: Ticket) {
        let mut shard = self.entries.write(&ticket.key);
        if matches!(shard.get(&ticket.key), Some(Slot::Pending(t)) if *t == ticket.ticket) {
            shard.remove(&ticket.key);
        }
    }

    fn invalidate_key(&self, redis_key: &str) {
        self.invalidations.fetch_add(1, Ordering::Relaxed);
        for v in &self.views {
            let key = cache_key(redis_key, v);
            self.entries.write(&key).remove(&key);
        }
    }

    fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.entries.clear();
    }

    fn set_enabled(&self, on: bool) {
        // Empty before and after: whatever was cached may have changed
        // while nobody was listening.
        self.clear();
        self.enabled.store(on, Ordering::Release);
        self.clear();
        metrics::gauge!("foldcache_local_cache_enabled").set(if on { 1.0 } else { 0.0 });
    }

    /// Keeps the tracking connection up until the task is dropped: connect,
    /// register, apply invalidations; on any failure, disable, back off,
    /// retry.
    pub async fn track(self: Arc<Self>, client: redis::Client, prefix: String) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.clone().track_once(&client, &prefix).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "local cache: invalidation connection failed; cache off");
                }
            }
            self.set_enabled(false);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn track_once(
        self: Arc<Self>,
        client: &redis::Client,
        prefix: &str,
    ) -> redis::RedisResult<()> {
        let info = client.get_connection_info().clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        let resp3 = redis::Client::open(info.set_redis_settings(settings))?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let config = redis::AsyncConnectionConfig::new()
            .set_push_sender(tx)
            .set_response_timeout(Some(Duration::from_secs(2)));
        let mut con = resp3
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(TRACKING_CLIENT_NAME)
            .exec_async(&mut con)
            .await?;
        redis::cmd("CLIENT")
            .arg("TRACKING")
            .arg("ON")
            .arg("BCAST")
            .arg("PREFIX")
            .arg(format!("{prefix}:g"))
            .arg("NOLOOP")
            .exec_async(&mut con)
            .await?;
        self.set_enabled(true);
        tracing::info!("local cache: invalidations tracked; cache on");
        let mut ping = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                push = rx.recv() => {
                    let Some(push) = push else {
                        return Err(redis::RedisError::from((redis::ErrorKind::Io, "push channel closed")));
                    };
                    match push.kind {
                        PushKind::Invalidate => self.apply(&push.data),
                        PushKind::Disconnection => {
                            return Err(redis::RedisError::from((redis::ErrorKind::Io, "tracking connection closed")));
                        }
                        _ => {}
                    }
                }
                _ = ping.tick() => {
                    // Notices a silent peer; a dead connection fails here.
                    redis::cmd("PING").exec_async(&mut con).await?;
                }
            }
        }
    }

    fn apply(&self, data: &[Value]) {
        for v in data {
            match v {
                // A flush: every key is gone.
                Value::Nil => self.clear(),
                Value::Array(keys) => {
                    for k in keys {
                        // Derived keys (`{prefix}:g{gen}:{entity}:_...`:
                        // ids, change log, indexes) are never cached.
                        if let Value::BulkString(b) = k
                            && !b.contains(&b'{')
                        {
                            self.invalidate_key(&String::from_utf8_lossy(b));
                        }
                    }
                }
                _ => {}
            }
        }
    }
}
