//! The HTTP surface: `GET|HEAD /v1/{entity}/{id}`, the batch lookup
//! `GET|HEAD /v1/{entity}?id=a&id=b`, `/healthz`, `/readyz`, `/openapi.json`.
//!
//! Handlers answer 200 with the representation and attach its
//! [`Validators`]; preconditions (304/412) are evaluated by
//! [`crate::conditional::layer`] once the final encoding is known.

use crate::AppState;
use crate::EntityPolicy;
use crate::auth::{Authenticated, Caller};
use crate::conditional::{Revalidation, Validators, not_modified_identity};
use crate::error::ApiError;
use crate::store::{Entity, Lookup};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use foldcache_common::id::{EntityId, EntityName};
use foldcache_common::state::etag_of;
use std::time::{Duration, SystemTime};

/// `GET /v1/{entity}/{id}` (HEAD is served by the same handler; axum drops
/// the body).
pub async fn get_entity(
    State(app): State<AppState>,
    Authenticated(caller): Authenticated,
    long_poll: LongPoll,
    revalidation: Revalidation,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((entity, id)) = path.map_err(|e| ApiError::BadRequest(path_problem(&e)))?;
    entity_response(&app, &caller, long_poll, revalidation, &entity, &id).await
}

/// The answer to a single lookup of `id` of `entity` by `caller`, before
/// the conditional layer: a 200 with its [`Validators`], the 304 of a plain
/// revalidation, or the error.
pub(crate) async fn entity_response(
    app: &AppState,
    caller: &Caller,
    long_poll: LongPoll,
    revalidation: Revalidation,
    entity: &str,
    id: &str,
) -> Result<Response, ApiError> {
    let (name, policy) = entity_policy(app, entity)?;
    let view = caller.view(name.as_str())?;
    let id = EntityId::parse(id).map_err(|e| ApiError::InvalidId(e.to_string()))?;
    let mut lookup = app
        .store
        .get(&name, &id, policy.max_staleness_ms, view)
        .await
        .map_err(|e| unavailable(app, &name, &e))?;
    let mut applied = None;
    if let LongPoll(Some((secs, inm))) = long_poll {
        let wait = Duration::from_secs(secs.min(app.max_wait_secs));
        applied = Some(wait);
        if let Lookup::Found(e) = &lookup
            && client_has(&inm, &e.validators.etag)
        {
            lookup = wait_for_change(app, &name, &id, policy, view, &inm, wait).await?;
        }
    }
    let entity = match lookup {
        Lookup::Found(e) => e,
        Lookup::NotFound => return Err(not_found(app, policy, caller)),
        Lookup::NotReady => {
            return Err(ApiError::NotReady {
                retry_after: app.retry_after,
            });
        }
    };
    if applied.is_none() && revalidation.holds(&entity.validators) {
        // The common revalidation, answered without building the 200.
        return Ok(not_modified_identity(
            &entity.validators.clone().not_after(SystemTime::now()),
            cache_control(app, policy, caller).clone(),
            vary(app),
            entity.body.len(),
        ));
    }
    let tags = app.entity_surrogate_keys(&name, &id, &entity);
    let mut res = representation(
        app,
        policy,
        caller,
        entity.body.clone(),
        entity.validators.clone(),
        tags,
    );
    if let Some(wait) = applied {
        res.headers_mut()
            .insert(PREFERENCE_APPLIED, crate::prefer::preference_applied(wait));
    }
    Ok(res)
}

/// `Preference-Applied` (RFC 7240).
pub(crate) const PREFERENCE_APPLIED: header::HeaderName =
    header::HeaderName::from_static("preference-applied");

/// A long-poll: `Prefer: wait=N` (seconds) with an `If-None-Match`. Only
/// the `Prefer` header is looked up on the common path.
#[derive(Debug)]
pub struct LongPoll(pub(crate) Option<(u64, headers::IfNoneMatch)>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for LongPoll {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        use headers::HeaderMapExt;
        if !parts.headers.contains_key("prefer") {
            return Ok(Self(None));
        }
        let Some(secs) = crate::prefer::wait_secs(&parts.headers) else {
            return Ok(Self(None));
        };
        Ok(Self(
            parts
                .headers
                .typed_try_get::<headers::IfNoneMatch>()
                .ok()
                .flatten()
                .map(|inm| (secs, inm)),
        ))
    }
}

/// Whether `inm` matches the entity's tag in any content coding (the client
/// holds the current representation).
fn client_has(inm: &headers::IfNoneMatch, etag: &str) -> bool {
    ["", "-gzip", "-br", "-zstd"].iter().any(|coding| {
        format!("\"{etag}{coding}\"")
            .parse::<headers::ETag>()
            .is_ok_and(|t| !inm.precondition_passes(&t))
    })
}

/// Waits until the entity no longer matches `inm` (changed, deleted, or
/// the cache stopped serving) or `wait` passes; returns the lookup to
/// answer with (the unchanged entity on time-out: the conditional layer
/// turns it into a 304).
async fn wait_for_change(
    app: &AppState,
    name: &EntityName,
    id: &EntityId,
    policy: &EntityPolicy,
    view: &std::sync::Arc<crate::auth::View>,
    inm: &headers::IfNoneMatch,
    wait: Duration,
) -> Result<Lookup, ApiError> {
    let deadline = tokio::time::Instant::now() + wait;
    let Some(feed) = app.hub.feed(name, wait.min(Duration::from_secs(5))).await else {
        return Err(ApiError::NotReady {
            retry_after: app.retry_after,
        });
    };
    let mut closing = app.closing.clone();
    loop {
        // Register before reading: a change after the read wakes us.
        let waiter = feed.wait_on(id.as_str());
        let woken = waiter.notify().notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let lookup = app
            .store
            .get_uncached(name, id, policy.max_staleness_ms, view)
            .await
            .map_err(|e| unavailable(app, name, &e))?;
        let current = match &lookup {
            Lookup::Found(e) => client_has(inm, &e.validators.etag),
            _ => false,
        };
        if !current {
            return Ok(lookup);
        }
        tokio::select! {
            _ = &mut woken => {}
            _ = tokio::time::sleep_until(deadline) => return Ok(lookup),
            _ = closing.wait_for(|c| *c) => return Ok(lookup),
        }
    }
}

/// `GET /v1/{entity}?id=a&id=b`: several entities in one response, a JSON
/// object from id to state (`null` for an id the log does not have), ids in
/// sorted order. Its validator is the SHA-256 of that body. It has no
/// `Last-Modified`: the newest member's date moves backwards when that
/// member is deleted, and an `If-Modified-Since` would then answer 304 for
/// a body that changed.
pub(crate) async fn get_batch(
    app: &AppState,
    caller: &Caller,
    name: EntityName,
    policy: &EntityPolicy,
    params: &[(String, String)],
) -> Result<Response, ApiError> {
    let view = caller.view(name.as_str())?;
    let mut ids = Vec::new();
    for (k, v) in params {
        if k != "id" {
            return Err(ApiError::BadRequest(format!(
                "unknown query parameter {:?} (a batch lookup takes only id)",
                truncate(k)
            )));
        }
        ids.push(EntityId::parse(v).map_err(|e| ApiError::InvalidId(e.to_string()))?);
    }
    ids.sort();
    ids.dedup();
    if ids.is_empty() {
        return Err(ApiError::BadRequest(
            "give at least one id: ?id=A&id=B".into(),
        ));
    }
    if ids.len() > app.max_batch_ids {
        return Err(ApiError::BadRequest(format!(
            "at most {} ids per request",
            app.max_batch_ids
        )));
    }
    let found = match app
        .store
        .get_many(&name, &ids, policy.max_staleness_ms, view)
        .await
        .map_err(|e| unavailable(app, &name, &e))?
    {
        Some(found) => found,
        None => {
            return Err(ApiError::NotReady {
                retry_after: app.retry_after,
            });
        }
    };
    let body = batch_body(&ids, &found);
    let etag = etag_of(&body);
    let tags = app.surrogate_keys(&name, &ids);
    Ok(representation(
        app,
        policy,
        caller,
        body.into(),
        Validators::new(etag, None),
        tags,
    ))
}

fn batch_body(ids: &[EntityId], found: &[Option<Entity>]) -> Vec<u8> {
    let mut body = Vec::with_capacity(found.iter().flatten().map(|e| e.body.len() + 16).sum());
    body.push(b'{');
    for (i, (id, e)) in ids.iter().zip(found).enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.push(b'"');
        body.extend_from_slice(id.as_str().as_bytes()); // ids need no escaping
        body.extend_from_slice(b"\":");
        match e {
            Some(e) => body.extend_from_slice(&e.body),
            None => body.extend_from_slice(b"null"),
        }
    }
    body.push(b'}');
    body
}

/// Whether this caller's responses are kept out of shared caches: a token
/// holder's, unless the operator opted in to shared caches keyed on
/// `Authorization`.
pub(crate) fn private_audience(app: &AppState, caller: &Caller) -> bool {
    caller.authenticated && !app.auth.shared_cache
}

/// `Vary` of every response about an entity (200, 304, 404): once tokens
/// are configured the answer depends on `Authorization`.
pub(crate) fn vary(app: &AppState) -> HeaderValue {
    HeaderValue::from_static(if app.auth.enabled {
        "Accept-Encoding, Authorization"
    } else {
        "Accept-Encoding"
    })
}

/// The 404 for a missing entity, cached like the entity's 200 for the same
/// caller: a token holder's is `private`, so no shared cache hands it to
/// someone who would get a 401 or 403.
pub(crate) fn not_found(app: &AppState, policy: &EntityPolicy, caller: &Caller) -> ApiError {
    let cache_control = if private_audience(app, caller) {
        &policy.private_not_found_cache_control
    } else {
        &policy.not_found_cache_control
    };
    ApiError::NotFound {
        cache_control: cache_control.clone(),
        vary: vary(app),
    }
}

/// `Cache-Control` of a 200 or 304 about an entity for this caller.
fn cache_control<'a>(app: &AppState, policy: &'a EntityPolicy, caller: &Caller) -> &'a HeaderValue {
    if private_audience(app, caller) {
        &policy.private_cache_control
    } else {
        &policy.cache_control
    }
}

/// A 200 with the body, its validators and caching headers: the entity's
/// `Cache-Control` for anonymous callers, `private` for token holders
/// (unless the operator opted in to shared caches keyed on
/// `Authorization`).
pub(crate) fn representation(
    app: &AppState,
    policy: &EntityPolicy,
    caller: &Caller,
    body: bytes::Bytes,
    validators: Validators,
    surrogate: Option<(header::HeaderName, HeaderValue)>,
) -> Response {
    let mut headers = HeaderMap::with_capacity(8);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        cache_control(app, policy, caller).clone(),
    );
    headers.insert(header::VARY, vary(app));
    let validators = validators.not_after(SystemTime::now());
    if let Some(date) = &validators.last_modified_header {
        headers.insert(header::LAST_MODIFIED, date.clone());
    }
    if let Some((name, value)) = surrogate {
        headers.insert(name, value);
    }
    let mut res = (StatusCode::OK, headers, body).into_response();
    res.extensions_mut().insert(validators);
    res
}

pub(crate) fn entity_policy<'a>(
    app: &'a AppState,
    entity: &str,
) -> Result<(EntityName, &'a EntityPolicy), ApiError> {
    let name = EntityName::parse(entity).map_err(|_| ApiError::UnknownEntity(truncate(entity)))?;
    let policy = app
        .entities
        .get(name.as_str())
        .ok_or_else(|| ApiError::UnknownEntity(truncate(entity)))?;
    Ok((name, policy))
}

pub(crate) fn unavailable(app: &AppState, entity: &EntityName, e: &redis::RedisError) -> ApiError {
    tracing::error!(error = %e, %entity, "Redis lookup failed");
    ApiError::Unavailable {
        retry_after: app.retry_after,
    }
}

/// Liveness: the process serves HTTP.
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: Redis answers, the cache has caught up with the log, and the
/// ingest instances have reported how fresh it is.
pub async fn readyz(State(app): State<AppState>) -> Response {
    let view = app.store.view();
    if view.ready && view.fresh_ms.is_some() && app.store.ping().await {
        (StatusCode::OK, "ready").into_response()
    } else {
        ApiError::NotReady {
            retry_after: app.retry_after,
        }
        .into_response()
    }
}

/// The OpenAPI 3.1 description of this API.
pub async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        include_str!("../openapi.json"),
    )
        .into_response()
}

/// Any other path.
pub async fn fallback() -> ApiError {
    ApiError::NoRoute
}

fn path_problem(e: &PathRejection) -> String {
    // axum's message names the failing segment, never echoes raw bytes.
    format!("malformed path: {}", e.body_text())
}

pub(crate) fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}
