//! Fan-out of the change logs to long-polls and event streams.
//!
//! One **feed** per entity type, started on first use: a task on a Redis
//! connection of its own tails the live generation's change log (`XREAD
//! BLOCK`), reads each batch of entries with the states they name (one
//! atomic script, [`Store::changes`]) and
//!
//! - publishes every entry that still carries its state to a
//!   `tokio::sync::broadcast` ring of `max(http.sse_buffer_events, 2048)`
//!   events (one ring shared by all subscribers: memory does not grow with
//!   them; a subscriber that falls a whole ring behind is told so and
//!   catches up from Redis, or is disconnected if its own queue is full,
//!   see `changes.rs`);
//! - wakes the long-polls waiting on the ids it names (one `Notify` per
//!   waited id, so a change wakes only its own waiters);
//! - publishes its position, which wakes change-page long-polls.
//!
//! When the live generation or the cache life changes (a rebuild's swap,
//! Redis lost), the feed publishes [`Change::Resync`], wakes every waiter
//! and starts over at the new log's tail.
//!
//! Ordering argument (no lost wake-up): [`Hub::feed`] returns only once the
//! feed has read its starting position, so every change committed after
//! that is seen by the feed. A long-poll registers its waiter *before* it
//! reads the entity: a change before the read is seen by the read, one
//! after it wakes the waiter.

use crate::auth::View;
use crate::cursor::{Scope, StreamPos};
use crate::store::{ChangeEntry, ChangeOp, Store};
use foldcache_common::id::EntityName;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, broadcast, watch};

/// How many log entries one feed read takes at most.
const FEED_BATCH: usize = 512;
/// The smallest ring: a few feed reads, so a burst does not send every
/// subscriber back to Redis.
const MIN_RING: usize = 4 * FEED_BATCH;
/// How long a feed's `XREAD` blocks before it re-checks the generation.
const BLOCK_MS: u64 = 1000;

/// What a feed publishes.
#[derive(Debug)]
pub enum Change {
    /// One change of one entity, with its state (`None`: deleted).
    Event(Event),
    /// The live generation or cache life is now `Scope`: cursors of the old
    /// one are gone, clients resync.
    Resync(Scope),
}

/// One change, as every subscriber receives it.
#[derive(Debug)]
pub struct Event {
    /// The log it came from.
    pub scope: Scope,
    /// Its entry.
    pub entry: ChangeEntry,
    /// Rendered SSE frames per view name, made once for all subscribers of a
    /// view.
    rendered: Mutex<Vec<(String, bytes::Bytes)>>,
}

impl Event {
    fn new(scope: Scope, entry: ChangeEntry) -> Self {
        Self {
            scope,
            entry,
            rendered: Mutex::new(Vec::new()),
        }
    }

    /// The event's whole Server-Sent Events frame in `view`, rendered once
    /// per view and shared (not copied) by every stream of that view; empty
    /// for an entry the view cannot render.
    pub fn frame(&self, view: &View) -> bytes::Bytes {
        let mut r = self.rendered.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, b)) = r.iter().find(|(v, _)| *v == view.name) {
            return b.clone();
        }
        let b = sse_frame(&self.scope, &self.entry, view).unwrap_or_default();
        r.push((view.name.clone(), b.clone()));
        b
    }
}

/// One change as a Server-Sent Events frame:
/// `event: upsert|delete`, `id:` its cursor, `data:` its JSON
/// ([`render_event`]); `None` for a superseded entry.
pub fn sse_frame(scope: &Scope, entry: &ChangeEntry, view: &View) -> Option<bytes::Bytes> {
    let cursor = change_cursor(scope, entry);
    let json = event_json(&cursor, entry, view)?;
    let op = match entry.op {
        ChangeOp::Delete => "delete",
        _ => "upsert",
    };
    let mut out = Vec::with_capacity(json.len() + cursor.len() + 32);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(op.as_bytes());
    out.extend_from_slice(b"\nid: ");
    out.extend_from_slice(cursor.as_bytes());
    out.push(b'\n');
    // Compact JSON has no line breaks; split all the same, as SSE requires.
    for line in json.split(|b| *b == b'\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.push(b'\n');
    Some(out.into())
}

/// The JSON of one change in `view`:
/// `{"cursor":..,"etag":..,"id":..,"op":"upsert","state":{..}}` or
/// `{"cursor":..,"id":..,"op":"delete"}`; `None` for a superseded entry.
pub fn render_event(scope: &Scope, entry: &ChangeEntry, view: &View) -> Option<Vec<u8>> {
    event_json(&change_cursor(scope, entry), entry, view)
}

/// The cursor that resumes after `entry`.
fn change_cursor(scope: &Scope, entry: &ChangeEntry) -> String {
    crate::cursor::Cursor::Changes {
        scope: scope.clone(),
        after: entry.pos,
    }
    .encode()
}

/// [`render_event`] with its cursor already encoded.
fn event_json(cursor: &str, entry: &ChangeEntry, view: &View) -> Option<Vec<u8>> {
    // Cursors are base64url, ids `[A-Za-z0-9._-]`, ETags base64url: no
    // escaping needed.
    match &entry.op {
        ChangeOp::Upsert(fields) => {
            let e = crate::store::decode_hash(fields, view)?;
            let mut out = Vec::with_capacity(e.body.len() + 160);
            out.extend_from_slice(b"{\"cursor\":\"");
            out.extend_from_slice(cursor.as_bytes());
            out.extend_from_slice(b"\",\"etag\":\"\\\"");
            out.extend_from_slice(e.validators.etag.as_bytes());
            out.extend_from_slice(b"\\\"\",\"id\":\"");
            out.extend_from_slice(entry.id.as_str().as_bytes());
            out.extend_from_slice(b"\",\"op\":\"upsert\",\"state\":");
            out.extend_from_slice(&e.body);
            out.push(b'}');
            Some(out)
        }
        ChangeOp::Delete => Some(
            format!(
                "{{\"cursor\":\"{cursor}\",\"id\":\"{}\",\"op\":\"delete\"}}",
                entry.id
            )
            .into_bytes(),
        ),
        ChangeOp::Superseded => None,
    }
}

/// Where a feed is: the log it tails and the last entry it has published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedPos {
    /// The log.
    pub scope: Scope,
    /// The last entry read.
    pub pos: StreamPos,
}

/// One entity type's feed.
#[derive(Debug)]
pub struct Feed {
    tx: broadcast::Sender<Arc<Change>>,
    pos: watch::Receiver<Option<FeedPos>>,
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
}

/// A registered long-poll: woken when its id changes (or the generation
/// does). Deregisters on drop.
#[derive(Debug)]
pub struct Waiter {
    feed: Arc<Feed>,
    id: String,
    notify: Arc<Notify>,
}

impl Waiter {
    /// The wake-up to wait for.
    pub fn notify(&self) -> &Notify {
        &self.notify
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut w = self.feed.waiters.lock().unwrap_or_else(|e| e.into_inner());
        // Clones happen under this lock: 2 = the map's and ours.
        if Arc::strong_count(&self.notify) <= 2 {
            w.remove(&self.id);
        }
    }
}

impl Feed {
    /// Subscribes to the feed's events.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.tx.subscribe()
    }

    /// The feed's position, as it moves.
    pub fn position(&self) -> watch::Receiver<Option<FeedPos>> {
        self.pos.clone()
    }

    /// Registers a long-poll on `id`.
    pub fn wait_on(self: &Arc<Self>, id: &str) -> Waiter {
        let mut w = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        let notify = w.entry(id.to_owned()).or_default().clone();
        Waiter {
            feed: self.clone(),
            id: id.to_owned(),
            notify,
        }
    }

    fn wake(&self, id: &str) {
        let w = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = w.get(id) {
            n.notify_waiters();
        }
    }

    fn wake_all(&self) {
        let w = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        for n in w.values() {
            n.notify_waiters();
        }
    }

    /// Long-polls registered now.
    pub fn waiting(&self) -> usize {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// The feeds of one query-api process.
#[derive(Debug)]
pub struct Hub {
    store: Store,
    capacity: usize,
    feeds: Mutex<HashMap<String, Arc<Feed>>>,
}

impl Hub {
    /// A hub over `store`; each feed's ring holds `capacity` events.
    pub fn new(store: Store, capacity: usize) -> Self {
        Self {
            store,
            capacity: capacity.max(MIN_RING),
            feeds: Mutex::new(HashMap::new()),
        }
    }

    /// The feed of `entity`, started if needed; returns once the feed knows
    /// its starting position (`None` if it did not within `patience`: the
    /// cache is not ready or Redis does not answer).
    pub async fn feed(&self, entity: &EntityName, patience: Duration) -> Option<Arc<Feed>> {
        let feed = {
            let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
            match feeds.get(entity.as_str()) {
                Some(f) => f.clone(),
                None => {
                    let (tx, _) = broadcast::channel(self.capacity);
                    let (pos_tx, pos) = watch::channel(None);
                    let feed = Arc::new(Feed {
                        tx,
                        pos,
                        waiters: Mutex::new(HashMap::new()),
                    });
                    feeds.insert(entity.as_str().to_owned(), feed.clone());
                    tokio::spawn(tail(
                        self.store.clone(),
                        entity.clone(),
                        Arc::downgrade(&feed),
                        pos_tx,
                    ));
                    feed
                }
            }
        };
        let mut pos = feed.position();
        let ready = tokio::time::timeout(patience, pos.wait_for(Option::is_some)).await;
        matches!(ready, Ok(Ok(_))).then_some(feed)
    }
}

/// The feed task: tails the live generation's log of `entity` until the
/// feed is dropped.
async fn tail(
    store: Store,
    entity: EntityName,
    feed: std::sync::Weak<Feed>,
    pos_tx: watch::Sender<Option<FeedPos>>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut con = None;
    let mut at: Option<FeedPos> = None;
    let mut view = store.watch_view();
    loop {
        let Some(f) = feed.upgrade() else { return };
        if con.is_none() {
            let config = redis::AsyncConnectionConfig::new()
                .set_response_timeout(Some(Duration::from_millis(BLOCK_MS + 5000)));
            match store
                .client()
                .get_multiplexed_async_connection_with_config(&config)
                .await
            {
                Ok(c) => con = Some(c),
                Err(e) => {
                    tracing::warn!(%entity, error = %e, "change feed: connecting to Redis failed");
                    drop(f);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            }
        }
        let now = view.borrow_and_update().clone();
        if !now.ready {
            drop(f);
            // Not ready: wait for the marker to change.
            let _ = tokio::time::timeout(Duration::from_secs(1), view.changed()).await;
            continue;
        }
        let scope = now.scope();
        let step = match &at {
            Some(p) if p.scope == scope => step(&store, &entity, &f, con.as_mut(), p).await,
            _ => {
                // A new log: start at its tail.
                match store
                    .changes(scope.generation, &entity, StreamPos::default(), 0)
                    .await
                {
                    Ok(read) => {
                        if at.is_some() {
                            tracing::info!(%entity, generation = scope.generation, "change feed: new generation; subscribers resync");
                            let _ = f.tx.send(Arc::new(Change::Resync(scope.clone())));
                            f.wake_all();
                        }
                        Ok(Some(FeedPos {
                            scope,
                            pos: read.last,
                        }))
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match step {
            Ok(Some(p)) => {
                backoff = Duration::from_millis(100);
                at = Some(p.clone());
                pos_tx.send_replace(Some(p));
            }
            Ok(None) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(%entity, error = %e, "change feed: reading the log failed; retrying");
                con = None;
                drop(f);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Waits (blocking read) for entries after `at`, then publishes them.
/// `Ok(None)`: nothing new.
async fn step(
    store: &Store,
    entity: &EntityName,
    feed: &Feed,
    con: Option<&mut redis::aio::MultiplexedConnection>,
    at: &FeedPos,
) -> redis::RedisResult<Option<FeedPos>> {
    let Some(con) = con else { return Ok(None) };
    let key = store.keys().changes(at.scope.generation, entity);
    let got: redis::Value = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(1)
        .arg("BLOCK")
        .arg(BLOCK_MS)
        .arg("STREAMS")
        .arg(&key)
        .arg(at.pos.to_string())
        .query_async(con)
        .await?;
    if matches!(got, redis::Value::Nil) {
        return Ok(None);
    }
    let read = store
        .changes(at.scope.generation, entity, at.pos, FEED_BATCH)
        .await?;
    let Some(last) = read.entries.last().map(|e| e.pos) else {
        return Ok(None);
    };
    metrics::counter!("foldcache_http_feed_entries_total", "entity" => entity.to_string())
        .increment(read.entries.len() as u64);
    for entry in read.entries {
        feed.wake(entry.id.as_str());
        if !matches!(entry.op, ChangeOp::Superseded) {
            // No subscriber is fine: the ring is only for live ones.
            let _ = feed
                .tx
                .send(Arc::new(Change::Event(Event::new(at.scope.clone(), entry))));
        }
    }

    Ok(Some(FeedPos {
        scope: at.scope.clone(),
        pos: last,
    }))
}
