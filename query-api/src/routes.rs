//! The HTTP surface: `GET|HEAD /v1/{entity}/{id}`, `/healthz`, `/readyz`.

use crate::AppState;
use crate::conditional::{Outcome, evaluate};
use crate::error::ApiError;
use crate::store::Lookup;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use foldcache_common::id::{EntityId, EntityName};
use headers::{ETag, HeaderMapExt, LastModified};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `GET /v1/{entity}/{id}` (HEAD is served by the same handler; axum drops
/// the body).
pub async fn get_entity(
    State(app): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    req_headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((entity, id)) = path.map_err(|e| ApiError::BadRequest(path_problem(&e)))?;
    let name =
        EntityName::parse(&entity).map_err(|_| ApiError::UnknownEntity(truncate(&entity)))?;
    let policy = app
        .entities
        .get(name.as_str())
        .ok_or_else(|| ApiError::UnknownEntity(truncate(&entity)))?;
    let id = EntityId::parse(&id).map_err(|e| ApiError::InvalidId(e.to_string()))?;
    let lookup = app
        .store
        .get(&name, &id, policy.max_staleness_ms)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, entity = %name, "Redis lookup failed");
            ApiError::Unavailable {
                retry_after: app.retry_after,
            }
        })?;
    let entity = match lookup {
        Lookup::Found(e) => e,
        Lookup::NotFound => {
            return Err(ApiError::NotFound {
                max_age: policy.not_found_max_age,
            });
        }
        Lookup::NotReady => {
            return Err(ApiError::NotReady {
                retry_after: app.retry_after,
            });
        }
    };
    let etag: ETag = format!("\"{}\"", entity.etag)
        .parse()
        .map_err(|_| ApiError::Unavailable {
            retry_after: app.retry_after,
        })?;
    let modified = UNIX_EPOCH + Duration::from_millis(entity.modified_ms.max(0) as u64);
    let mut headers = HeaderMap::new();
    headers.typed_insert(etag.clone());
    headers.typed_insert(LastModified::from(modified));
    headers.insert(header::CACHE_CONTROL, policy.cache_control.clone());
    match evaluate(&req_headers, &etag, modified) {
        Outcome::NotModified => Ok((StatusCode::NOT_MODIFIED, headers).into_response()),
        Outcome::PreconditionFailed => Err(ApiError::PreconditionFailed),
        Outcome::Proceed => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Ok((StatusCode::OK, headers, entity.body).into_response())
        }
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

/// Any other path.
pub async fn fallback() -> ApiError {
    ApiError::NoRoute
}

fn path_problem(e: &PathRejection) -> String {
    // axum's message names the failing segment, never echoes raw bytes.
    format!("malformed path: {}", e.body_text())
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Seconds since the epoch, for tests.
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
