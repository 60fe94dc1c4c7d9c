//! A reference sync client: keeps a local copy of one entity type in sync
//! with foldcache using only its public HTTP API.
//!
//! The protocol (docs/HTTP.md, *Keeping a copy in sync*):
//!
//! 1. **Start of the change feed.** `GET /v1/{entity}/changes` (no `since`)
//!    answers no events and a `next` link: where the log ends *now*. Take it
//!    before the bulk pass, so no change made during the pass is lost.
//! 2. **Bulk pass.** Follow `GET /v1/{entity}?limit=N` and its `next` links
//!    to the end; the items are the new copy. A 410 during the pass (a
//!    rebuild swapped generations) restarts at step 1.
//! 3. **Changes.** From the cursor of step 1: poll
//!    `GET /v1/{entity}/changes?since=C` (optionally with `Prefer: wait=N`)
//!    or stream it (`Accept: text/event-stream`, resuming with
//!    `Last-Event-ID` after a disconnect). Apply events in order: `upsert`
//!    stores the event's state, `delete` removes the id. An event may carry
//!    a state the copy already has (the bulk pass saw it); applying it again
//!    is harmless.
//! 4. **Resync.** A 410 (`cursor-gone`: the generation was rebuilt away, the
//!    cache was replaced, or the cursor is older than the retained log) or
//!    an `event: resync` on a stream means the feed cannot say what changed:
//!    go back to step 1.
//!
//! Run against `scripts/dev demo`:
//!
//! ```sh
//! cargo run --example sync_client -- --base http://127.0.0.1:8080 --entity employees \
//!     --token demo-hr-token --mode sse
//! ```
//!
//! It prints one line per bulk pass and per batch of applied events. The
//! end-to-end test `tests/propagation.rs` runs this very code (it includes
//! this file as a module) against a real broker, through disconnects and a
//! rebuild, and compares the copy with a reference fold of the log.

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// One entity's local copy and the position of its change feed.
#[derive(Debug)]
pub struct SyncClient {
    http: reqwest::Client,
    base: String,
    entity: String,
    token: Option<String>,
    page_limit: usize,
    /// id -> state, as the API serves it to this client's token.
    pub copy: BTreeMap<String, Value>,
    /// Where the change feed continues (an opaque cursor); `None` before
    /// the first bulk pass.
    pub cursor: Option<String>,
    /// What happened so far.
    pub stats: Stats,
}

/// Counters of a sync client's life.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Bulk passes completed (the first one and every resync).
    pub bulk_passes: u64,
    /// Bulk passes restarted because the generation changed under them.
    pub restarted_passes: u64,
    /// 410s and `resync` events that sent the client back to a bulk pass.
    pub resyncs: u64,
    /// Event streams opened after the first (resumed with Last-Event-ID).
    pub resumed_streams: u64,
    /// Events applied.
    pub events: u64,
    /// Events whose state the copy already had (allowed by the protocol).
    pub repeated_states: u64,
    /// The cursor of every event applied since the last bulk pass.
    pub applied_cursors: Vec<String>,
}

/// How an event stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The caller's event budget was used up (the client hung up).
    Budget,
    /// The server ended the stream (a slow client, a shutdown): resume.
    Closed,
    /// The feed said resync (and the client did).
    Resynced,
}

impl SyncClient {
    /// A client of `base` (`http://host:port`) for `entity`.
    pub fn new(base: &str, entity: &str, token: Option<&str>) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap_or_default(),
            base: base.trim_end_matches('/').to_owned(),
            entity: entity.to_owned(),
            token: token.map(str::to_owned),
            page_limit: 100,
            copy: BTreeMap::new(),
            cursor: None,
            stats: Stats::default(),
        }
    }

    fn get(&self, path_or_url: &str) -> reqwest::RequestBuilder {
        let url = if path_or_url.starts_with('/') {
            format!("{}{path_or_url}", self.base)
        } else {
            path_or_url.to_owned()
        };
        let req = self.http.get(url);
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// GETs JSON; `Ok(None)` for 410 (resync), errors for anything else
    /// but 200. A 503 (cache warming up or rebuilding) is retried.
    async fn json(&self, path: &str, prefer_wait: Option<u64>) -> Result<Option<Value>> {
        loop {
            let mut req = self.get(path);
            if let Some(w) = prefer_wait {
                req = req.header("prefer", format!("wait={w}"));
            }
            let res = req.send().await.with_context(|| format!("GET {path}"))?;
            match res.status().as_u16() {
                200 => return Ok(Some(res.json().await?)),
                410 => return Ok(None),
                503 => {
                    let wait = res
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(1u64);
                    tokio::time::sleep(Duration::from_secs(wait.min(5))).await;
                }
                s => bail!("GET {path}: {s}: {}", res.text().await.unwrap_or_default()),
            }
        }
    }

    /// Steps 1 and 2: the feed's current end, then a whole bulk pass; the
    /// copy is replaced by what the pass read.
    pub async fn resync(&mut self) -> Result<()> {
        loop {
            let tail = self
                .json(&format!("/v1/{}/changes", self.entity), None)
                .await?
                .ok_or_else(|| anyhow!("410 without a cursor"))?;
            let since = cursor_of(&tail["next"]).ok_or_else(|| anyhow!("no next cursor"))?;
            let mut copy = BTreeMap::new();
            let mut next = Some(format!("/v1/{}?limit={}", self.entity, self.page_limit));
            let mut complete = true;
            while let Some(url) = next.take() {
                let Some(page) = self.json(&url, None).await? else {
                    // The generation changed under the pass: start over.
                    complete = false;
                    break;
                };
                for item in page["items"].as_array().into_iter().flatten() {
                    if let Some(id) = item["id"].as_str() {
                        copy.insert(id.to_owned(), item["state"].clone());
                    }
                }
                next = page["next"].as_str().map(str::to_owned);
            }
            if !complete {
                self.stats.restarted_passes += 1;
                continue;
            }
            self.copy = copy;
            self.cursor = Some(since);
            self.stats.bulk_passes += 1;
            self.stats.applied_cursors.clear();
            return Ok(());
        }
    }

    fn apply(&mut self, event: &Value) -> Result<()> {
        let id = event["id"]
            .as_str()
            .ok_or_else(|| anyhow!("event without id: {event}"))?
            .to_owned();
        match event["op"].as_str() {
            Some("upsert") => {
                let state = event["state"].clone();
                if self.copy.get(&id) == Some(&state) {
                    self.stats.repeated_states += 1;
                }
                self.copy.insert(id, state);
            }
            Some("delete") => {
                self.copy.remove(&id);
            }
            other => bail!("unknown op {other:?}"),
        }
        if let Some(c) = event["cursor"].as_str() {
            self.cursor = Some(c.to_owned());
            self.stats.applied_cursors.push(c.to_owned());
        }
        self.stats.events += 1;
        Ok(())
    }

    /// Step 3 by polling: applies change pages until one comes back empty
    /// (the first may wait `wait_secs` for a change); resyncs on 410.
    /// Returns the events applied.
    pub async fn poll(&mut self, wait_secs: Option<u64>) -> Result<u64> {
        if self.cursor.is_none() {
            self.resync().await?;
        }
        let before = self.stats.events;
        let mut wait = wait_secs;
        loop {
            let since = self.cursor.clone().unwrap_or_default();
            let url = format!(
                "/v1/{}/changes?since={since}&limit={}",
                self.entity, self.page_limit
            );
            let Some(page) = self.json(&url, wait.take()).await? else {
                self.stats.resyncs += 1;
                self.resync().await?;
                continue;
            };
            let events = page["events"].as_array().cloned().unwrap_or_default();
            for e in &events {
                self.apply(e)?;
            }
            // Superseded entries move the cursor without an event.
            if let Some(c) = cursor_of(&page["next"]) {
                self.cursor = Some(c);
            }
            if events.is_empty() {
                return Ok(self.stats.events - before);
            }
        }
    }

    /// Step 3 by streaming: opens an event stream from the cursor (as
    /// `Last-Event-ID`), applies up to `budget` events, and returns how it
    /// ended. Resyncs on 410 and on `event: resync`.
    pub async fn stream(&mut self, budget: u64) -> Result<StreamEnd> {
        if self.cursor.is_none() {
            self.resync().await?;
        } else {
            self.stats.resumed_streams += 1;
        }
        let mut req = self
            .get(&format!("/v1/{}/changes", self.entity))
            .header("accept", "text/event-stream");
        if let Some(c) = &self.cursor {
            req = req.header("last-event-id", c);
        }
        let mut res = req.send().await?;
        match res.status().as_u16() {
            200 => {}
            410 => {
                self.stats.resyncs += 1;
                self.resync().await?;
                return Ok(StreamEnd::Resynced);
            }
            s => bail!(
                "event stream: {s}: {}",
                res.text().await.unwrap_or_default()
            ),
        }
        let mut buf = String::new();
        let mut applied = 0;
        loop {
            while let Some(end) = buf.find("\n\n") {
                let frame: String = buf.drain(..end + 2).collect();
                let (mut event, mut data) = (String::new(), String::new());
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                match event.as_str() {
                    "upsert" | "delete" => {
                        self.apply(&serde_json::from_str(&data)?)?;
                        applied += 1;
                        if applied >= budget {
                            return Ok(StreamEnd::Budget);
                        }
                    }
                    "resync" => {
                        self.stats.resyncs += 1;
                        self.resync().await?;
                        return Ok(StreamEnd::Resynced);
                    }
                    _ => {} // heartbeats, retry hints
                }
            }
            match res.chunk().await? {
                Some(bytes) => buf.push_str(&String::from_utf8_lossy(&bytes)),
                None => return Ok(StreamEnd::Closed),
            }
        }
    }
}

/// The `since` cursor of a `next` link.
fn cursor_of(next: &Value) -> Option<String> {
    let url = next.as_str()?;
    let query = url.split_once('?')?.1;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("since="))
        .map(str::to_owned)
}

/// `--base URL --entity NAME [--token T] [--mode poll|sse]`.
#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let base = arg("--base").unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let entity = arg("--entity").unwrap_or_else(|| "employees".into());
    let token = arg("--token");
    let sse = arg("--mode").as_deref() == Some("sse");
    let mut client = SyncClient::new(&base, &entity, token.as_deref());
    client.resync().await?;
    println!("bulk pass: {} {entity}", client.copy.len());
    loop {
        let passes = client.stats.bulk_passes;
        let applied = if sse {
            let before = client.stats.events;
            let end = client.stream(u64::MAX).await?;
            if end == StreamEnd::Closed {
                // Disconnected (a slow reader, a restart): resume shortly.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            client.stats.events - before
        } else {
            client.poll(Some(30)).await?
        };
        if client.stats.bulk_passes != passes {
            println!("resync: bulk pass: {} {entity}", client.copy.len());
        }
        if applied > 0 {
            println!("applied {applied} events: {} {entity}", client.copy.len());
        }
    }
}
