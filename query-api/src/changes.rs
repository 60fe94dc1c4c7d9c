//! `GET /v1/{entity}/changes`: the change feed, polled or streamed.
//!
//! - `?since=<cursor>&limit=N`: the changes after the cursor, oldest first,
//!   at most `limit` per page: `{"events":[...],"next":"<url>"}`. Without
//!   `since`: no events, and `next` starts at the log's current end (take it
//!   before a bulk pass). `Prefer: wait=N`: an empty page waits up to N s
//!   for a change.
//! - `Accept: text/event-stream`: Server-Sent Events from `since` (or from
//!   `Last-Event-ID`, which wins, or from now): `event: upsert|delete`,
//!   `id:` the event's cursor, `data:` the event's JSON; heartbeats (`:`
//!   comment lines) every `http.sse_heartbeat_secs`; `event: resync` and the
//!   end of the stream when the generation changes.
//!
//! An event is `{"cursor","etag","id","op":"upsert","state"}` (the state in
//! the caller's view, exactly the state the change wrote, with its ETag) or
//! `{"cursor","id","op":"delete"}`. An upsert whose state has changed again
//! since is left out: a later event carries the newer state. So applying
//! the events in order to a copy taken after `since` makes it equal to the
//! cache; an event may repeat a state the copy already has (a bulk pass
//! that read it after the change), never skip one.
//!
//! A cursor of another generation or cache life, or older than the log
//! keeps (trimmed by `changes_max_len` / `changes_max_age_secs`), answers
//! **410** `cursor-gone` with `Link: </v1/{entity}>; rel="resync"`: there is
//! no silent gap.
//!
//! Slow SSE clients: each connection has a queue of
//! `http.sse_buffer_events` events. Catching up from Redis goes at the
//! client's pace, but a client that accepts nothing for a heartbeat
//! interval is disconnected; once live, an event that does not fit the
//! queue ends the stream. Either way the client resumes with
//! `Last-Event-ID`, and a client that stops reading costs at most one
//! queue.

use crate::auth::{Authenticated, Caller, View};
use crate::collection::{cursor_error, parse_limit};
use crate::conditional::Validators;
use crate::cursor::{Cursor, Scope, StreamPos};
use crate::error::ApiError;
use crate::hub::{Change, render_event, sse_frame};
use crate::routes::{entity_policy, truncate, unavailable};
use crate::store::ChangesRead;
use crate::{AppState, EntityPolicy, prefer};
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use foldcache_common::id::EntityName;
use foldcache_common::state::etag_of;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// Entries read from Redis per catch-up step of an event stream.
const CATCH_UP_BATCH: usize = 256;
/// How long a request waits for a feed to start before answering 503.
const FEED_PATIENCE: Duration = Duration::from_secs(5);

/// `GET|HEAD /v1/{entity}/changes`.
pub async fn get_changes(
    State(app): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(entity): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (name, policy) = entity_policy(&app, &entity)?;
    let view = caller.view(name.as_str())?.clone();
    let mut since = None;
    let mut limit = None;
    for (k, v) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        match &*k {
            "since" if since.is_none() => since = Some(v.into_owned()),
            "limit" if limit.is_none() => limit = Some(parse_limit(&v, app.pages.max_limit)?),
            "since" | "limit" => return Err(ApiError::BadRequest(format!("{k} is given twice"))),
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {:?}: the change feed takes since and limit",
                    truncate(other)
                )));
            }
        }
    }
    let state = app.store.view();
    if !state.serves(policy.max_staleness_ms) {
        return Err(ApiError::NotReady {
            retry_after: app.retry_after,
        });
    }
    let scope = state.scope();
    // Last-Event-ID (an EventSource reconnecting) wins over the URL's since.
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned);
    let cursor = last_event_id.or(since);
    let after = cursor
        .as_deref()
        .map(|c| Cursor::changes_after(c, &scope))
        .transpose()
        .map_err(|e| gone(e, &name, "the cursor belongs to a generation that was rebuilt away or to a cache that was replaced"))?;
    if wants_event_stream(&headers) {
        return stream(app.clone(), &name, view, scope, after).await;
    }
    let limit = limit.unwrap_or(app.pages.default_limit);
    poll(
        &app, &caller, &name, policy, &view, &scope, after, limit, &headers,
    )
    .await
}

fn gone(e: crate::cursor::CursorError, name: &EntityName, why: &'static str) -> ApiError {
    cursor_error(e, format!("/v1/{name}"), why)
}

const TOO_OLD: &str = "the change log no longer holds every change after this cursor (it keeps \
                       about changes_max_len entries for changes_max_age_secs)";

fn wants_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|m| {
            m.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
        })
}

/// Reads the log after `after` and checks that nothing after it was
/// trimmed away (410) and that the cursor is not from the future (410: not
/// a position of this log).
async fn read_after(
    app: &AppState,
    name: &EntityName,
    generation: u64,
    after: StreamPos,
    limit: usize,
) -> Result<ChangesRead, ApiError> {
    let read = app
        .store
        .changes(generation, name, after, limit)
        .await
        .map_err(|e| unavailable(app, name, &e))?;
    if read.max_deleted > after || after > read.last {
        return Err(gone(crate::cursor::CursorError::Gone, name, TOO_OLD));
    }
    Ok(read)
}

/// Where the log of `generation` ends now.
async fn tail(app: &AppState, name: &EntityName, generation: u64) -> Result<StreamPos, ApiError> {
    Ok(app
        .store
        .changes(generation, name, StreamPos::default(), 0)
        .await
        .map_err(|e| unavailable(app, name, &e))?
        .last)
}

#[allow(clippy::too_many_arguments)]
async fn poll(
    app: &AppState,
    caller: &Caller,
    name: &EntityName,
    policy: &EntityPolicy,
    view: &View,
    scope: &Scope,
    after: Option<StreamPos>,
    limit: usize,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let wait = prefer::applied(headers, app.max_wait_secs).filter(|_| after.is_some());
    let (events, next) = match after {
        // No cursor: where the log ends now.
        None => (Vec::new(), tail(app, name, scope.generation).await?),
        Some(after) => {
            let deadline = wait.map(|w| tokio::time::Instant::now() + w);
            let feed = match wait {
                Some(_) => app.hub.feed(name, FEED_PATIENCE).await,
                None => None,
            };
            loop {
                // Subscribe before reading, so a change between the read and
                // the wait is not missed.
                let mut moved = feed.as_ref().map(|f| f.position());
                if let Some(m) = moved.as_mut() {
                    m.borrow_and_update();
                }
                let read = read_after(app, name, scope.generation, after, limit).await?;
                let scanned = read.entries.last().map_or(after, |e| e.pos);
                let events: Vec<Vec<u8>> = read
                    .entries
                    .iter()
                    .filter_map(|e| render_event(scope, e, view))
                    .collect();
                let (Some(deadline), Some(m), true) = (deadline, moved.as_mut(), events.is_empty())
                else {
                    break (events, scanned);
                };
                if scanned != after {
                    // Only superseded entries: nothing to wait for, move on.
                    break (events, scanned);
                }
                let mut closing = app.closing.clone();
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => break (events, scanned),
                    _ = closing.wait_for(|c| *c) => break (events, scanned),
                    r = m.changed() => if r.is_err() { break (events, scanned) },
                }
                if !app
                    .store
                    .still_serves(scope.generation, policy.max_staleness_ms)
                    .await
                    .map_err(|e| unavailable(app, name, &e))?
                {
                    return Err(gone(
                        crate::cursor::CursorError::Gone,
                        name,
                        "the generation changed while waiting",
                    ));
                }
            }
        }
    };
    let next_cursor = Cursor::Changes {
        scope: scope.clone(),
        after: next,
    }
    .encode();
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("since", &next_cursor);
    if limit != app.pages.default_limit {
        q.append_pair("limit", &limit.to_string());
    }
    let next_url = format!("/v1/{name}/changes?{}", q.finish());
    let mut body = Vec::with_capacity(events.iter().map(|e| e.len() + 1).sum::<usize>() + 128);
    body.extend_from_slice(b"{\"events\":[");
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(e);
    }
    body.extend_from_slice(b"],\"next\":");
    body.extend_from_slice(
        serde_json::to_string(&next_url)
            .unwrap_or_else(|_| "null".into())
            .as_bytes(),
    );
    body.push(b'}');
    let etag = etag_of(&body);
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // A page grows as changes arrive and loses superseded entries: always
    // revalidate (the ETag makes that cheap).
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(
            if crate::routes::private_audience(app, caller) || policy_is_no_store(policy) {
                "private, no-cache"
            } else {
                "no-cache"
            },
        ),
    );
    h.insert(header::VARY, vary(app));
    if let Ok(link) = HeaderValue::try_from(format!("<{next_url}>; rel=\"next\"")) {
        h.insert(header::LINK, link);
    }
    if let Some(w) = wait {
        h.insert("preference-applied", prefer::preference_applied(w));
    }
    let mut res = (StatusCode::OK, h, body).into_response();
    res.extensions_mut().insert(Validators::new(etag, None));
    Ok(res)
}

/// `Vary` of the feed: one URL answers JSON or an event stream by
/// `Accept`.
fn vary(app: &AppState) -> HeaderValue {
    HeaderValue::from_static(if app.auth.enabled {
        "Accept, Accept-Encoding, Authorization"
    } else {
        "Accept, Accept-Encoding"
    })
}

fn policy_is_no_store(policy: &EntityPolicy) -> bool {
    policy.cache_control.as_bytes() == b"no-store"
}

/// The event stream.
async fn stream(
    app: AppState,
    name: &EntityName,
    view: Arc<View>,
    scope: Scope,
    after: Option<StreamPos>,
) -> Result<Response, ApiError> {
    let feed = app
        .hub
        .feed(name, FEED_PATIENCE)
        .await
        .ok_or(ApiError::NotReady {
            retry_after: app.retry_after,
        })?;
    // Subscribe before the first read: nothing falls between them.
    let rx = feed.subscribe();
    let after = match after {
        Some(a) => {
            read_after(&app, name, scope.generation, a, 0).await?;
            a
        }
        None => tail(&app, name, scope.generation).await?,
    };
    let (tx, out) = mpsc::channel::<Bytes>(app.sse.buffer_events);
    let producer = Producer {
        app: app.clone(),
        name: name.clone(),
        view,
        scope,
        pos: after,
        tx,
    };
    metrics::gauge!("foldcache_http_sse_connections").increment(1.0);
    tokio::spawn(async move {
        let reason = producer.run(rx).await;
        metrics::gauge!("foldcache_http_sse_connections").decrement(1.0);
        metrics::counter!("foldcache_http_sse_ended_total", "reason" => reason).increment(1);
    });
    let mut res = Response::new(axum::body::Body::from_stream(body(out, app.sse.heartbeat)));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::VARY, vary(&app));
    // nginx: do not buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(res)
}

/// Most bytes one write of an event stream takes from its queue.
const WRITE_BYTES: usize = 64 * 1024;

/// The response body of an event stream: the queue's frames, several at a
/// time when they wait (one write instead of many), and a heartbeat comment
/// after `heartbeat` without one.
fn body(
    out: mpsc::Receiver<Bytes>,
    heartbeat: Duration,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
    futures_util::stream::unfold(out, move |mut out| async move {
        let first = match tokio::time::timeout(heartbeat, out.recv()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return None,
            Err(_) => return Some((Ok(Bytes::from_static(b":heartbeat\n\n")), out)),
        };
        let mut more = Vec::new();
        let mut len = first.len();
        while len < WRITE_BYTES {
            match out.try_recv() {
                Ok(frame) => {
                    len += frame.len();
                    more.push(frame);
                }
                Err(_) => break,
            }
        }
        if more.is_empty() {
            return Some((Ok(first), out));
        }
        let mut joined = Vec::with_capacity(len);
        joined.extend_from_slice(&first);
        for f in more {
            joined.extend_from_slice(&f);
        }
        Some((Ok(Bytes::from(joined)), out))
    })
}

/// One event stream's producer: catches up from Redis, then forwards the
/// live feed.
struct Producer {
    app: AppState,
    name: EntityName,
    view: Arc<View>,
    scope: Scope,
    pos: StreamPos,
    tx: mpsc::Sender<Bytes>,
}

impl Producer {
    /// Runs until the client goes, the generation changes, the client falls
    /// behind, or query-api shuts down; returns why (a metrics label).
    async fn run(mut self, mut rx: broadcast::Receiver<Arc<Change>>) -> &'static str {
        let mut closing = self.app.closing.clone();
        let _ = self
            .tx
            .send(Bytes::from_static(b"retry: 1000\n:ok\n\n"))
            .await;
        'catch_up: loop {
            // Catch up from Redis, at the client's pace.
            loop {
                if self.app.store.view().scope() != self.scope {
                    return self.resync();
                }
                let read = match read_after(
                    &self.app,
                    &self.name,
                    self.scope.generation,
                    self.pos,
                    CATCH_UP_BATCH,
                )
                .await
                {
                    Ok(r) => r,
                    Err(ApiError::CursorGone { .. }) => return self.resync(),
                    Err(_) => return "redis",
                };
                let Some(last) = read.entries.last().map(|e| e.pos) else {
                    break;
                };
                for e in &read.entries {
                    let Some(frame) = sse_frame(&self.scope, e, &self.view) else {
                        continue;
                    };
                    // The client's own backlog goes at its pace, but a
                    // client that takes nothing for a heartbeat interval is
                    // too slow: it resumes later with Last-Event-ID.
                    match self.tx.send_timeout(frame, self.app.sse.heartbeat).await {
                        Ok(()) => {}
                        Err(mpsc::error::SendTimeoutError::Timeout(_)) => return "slow",
                        Err(mpsc::error::SendTimeoutError::Closed(_)) => return "client",
                    }
                }
                self.pos = last;
            }
            // Live: forward the feed; the queue is the only buffer.
            loop {
                let change = tokio::select! {
                    r = rx.recv() => r,
                    _ = self.tx.closed() => return "client",
                    _ = closing.wait_for(|c| *c) => return "shutdown",
                };
                match change {
                    Ok(change) => match &*change {
                        Change::Resync(s) if *s == self.scope => {
                            // The feed (re)started on our log after we read
                            // it: read what may lie between.
                            continue 'catch_up;
                        }
                        Change::Resync(_) => return self.resync(),
                        Change::Event(ev) if ev.scope == self.scope && ev.entry.pos > self.pos => {
                            let frame = ev.frame(&self.view);
                            if frame.is_empty() {
                                continue;
                            }
                            match self.tx.try_send(frame) {
                                Ok(()) => self.pos = ev.entry.pos,
                                Err(mpsc::error::TrySendError::Full(_)) => return "slow",
                                Err(mpsc::error::TrySendError::Closed(_)) => return "client",
                            }
                        }
                        Change::Event(_) => {}
                    },
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // The ring moved on without us. A client whose queue
                        // is full is too slow; otherwise read the gap from
                        // Redis.
                        if self.tx.capacity() == 0 {
                            return "slow";
                        }
                        rx = rx.resubscribe();
                        continue 'catch_up;
                    }
                    Err(broadcast::error::RecvError::Closed) => return "shutdown",
                }
            }
        }
    }

    fn resync(&self) -> &'static str {
        let data = format!("{{\"resync\":\"/v1/{}\"}}", self.name);
        // Never wait for a client that does not read: it reconnects, gets
        // 410 and resyncs all the same.
        let _ = self
            .tx
            .try_send(Bytes::from(format!("event: resync\ndata: {data}\n\n")));
        "resync"
    }
}
