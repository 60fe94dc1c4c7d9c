//! Reads entities from Redis.
//!
//! A background task polls the cache marker (`{prefix}:state`) so that every
//! lookup knows the live generation and readiness without an extra round
//! trip. A lookup that finds no hash re-reads the marker before answering
//! 404: if Redis was flushed, replaced or is rebuilding, the answer is 503,
//! never a false 404.

use crate::auth::View;
use crate::conditional::Validators;
use crate::local_cache::LocalCache;
use foldcache_common::id::{EntityId, EntityName};
use foldcache_common::keys::{
    InstanceBeat, KeySpace, META_ETAG, META_MODIFIED_MS, META_PREFIX, state_field,
};
use foldcache_common::runtime::now_ms;
use foldcache_common::state::assemble_body;
use redis::aio::ConnectionManager;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The cache marker as last read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheView {
    /// Whether a marker exists at all (absent: Redis is empty).
    pub present: bool,
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
    keys: KeySpace,
    local: Option<Arc<LocalCache>>,
    con: ConnectionManager,
    view: watch::Receiver<CacheView>,
    view_tx: watch::Sender<CacheView>,
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
        let con = ConnectionManager::new(client).await?;
        let (view_tx, view) = watch::channel(CacheView::default());
        let store = Self {
            keys,
            local: None,
            con,
            view,
            view_tx,
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
            live_gen: gen_.unwrap_or(0),
            ready: epoch.is_some() && ready.as_deref() == Some("1") && verified,
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
        let state = self.view();
        if !state.ready || stale(&state, max_staleness_ms) {
            return Ok(Lookup::NotReady);
        }
        let key = self.keys.entity(state.live_gen, entity, id);
        let ticket = match self.local.as_ref().map(|c| c.lookup(&key, &view.name)) {
            Some(Ok(hit)) => return Ok(Lookup::Found(hit)),
            Some(Err(ticket)) => ticket,
            None => None,
        };
        let read = self
            .read(&key, &state, entity, max_staleness_ms, view)
            .await
            .inspect_err(|_| self.distrust());
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
        state: &CacheView,
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
            let not_found =
                now.ready && now.live_gen == state.live_gen && !stale(&now, max_staleness_ms);
            tracing::debug!(
                %entity,
                generation = state.live_gen,
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
        let state = self.view();
        if !state.ready || stale(&state, max_staleness_ms) {
            return Ok(None);
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HGETALL")
                .arg(self.keys.entity(state.live_gen, entity, id));
        }
        let hashes: Vec<Vec<(String, String)>> = pipe
            .query_async(&mut self.con.clone())
            .await
            .inspect_err(|_| self.distrust())?;
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
    })
}
