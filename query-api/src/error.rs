//! Every error response: an RFC 9457 `application/problem+json` body with a
//! status, a stable `type` and a `detail` that never carries internals or HR
//! values.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error the API answers with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The entity type in the path is not valid or not configured: 404 for
    /// every caller (entity type names are no secret: the anonymous view
    /// already tells 401 from 404), never cached.
    #[error("unknown entity type")]
    UnknownEntity(String),
    /// The id in the path is not a valid id.
    #[error("invalid id: {0}")]
    InvalidId(String),
    /// The request itself is malformed (path encoding and the like).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No such entity. Cached like the entity's 200 would be for this
    /// caller (see [`crate::cache_policy::not_found`]), so a token holder's
    /// 404 is never stored by a shared cache for others.
    #[error("not found")]
    NotFound {
        /// `Cache-Control` of the 404.
        cache_control: HeaderValue,
        /// `Vary`, the same as the entity's 200.
        vary: HeaderValue,
    },
    /// `If-Match` / `If-Unmodified-Since` failed.
    #[error("precondition failed")]
    PreconditionFailed,
    /// The cache is cold or rebuilding.
    #[error("cache not ready")]
    NotReady {
        /// `Retry-After` seconds.
        retry_after: u64,
    },
    /// Redis did not answer. The cause is logged once, not sent.
    #[error("backend unavailable")]
    Unavailable {
        /// `Retry-After` seconds.
        retry_after: u64,
    },
    /// No route matched.
    #[error("no such resource")]
    NoRoute,
    /// Only GET and HEAD are served.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// No token where one is needed (`invalid: false`), or a token that is
    /// malformed or unknown (`invalid: true`).
    #[error("unauthorized")]
    Unauthorized {
        /// A token was given but is not valid.
        invalid: bool,
    },
    /// The token has no grant for this entity.
    #[error("forbidden")]
    Forbidden,
    /// The token's rate limit is exhausted.
    #[error("too many requests")]
    TooManyRequests {
        /// `Retry-After` seconds.
        retry_after: u64,
    },
    /// The request's header section is larger than allowed.
    #[error("request headers too large")]
    HeadersTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// A cursor that this API did not issue (or issued for the other kind
    /// of resource).
    #[error("malformed cursor")]
    BadCursor,
    /// A cursor of a generation that was rebuilt away, of a cache life that
    /// ended (Redis lost its data), or older than the change log keeps:
    /// the client resyncs from the collection (`Link: rel="resync"`).
    #[error("cursor gone")]
    CursorGone {
        /// Why, for the `detail`.
        why: &'static str,
        /// The collection to resync from (`/v1/{entity}`).
        resync: String,
    },
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    title: &'a str,
    status: u16,
    detail: String,
}

impl ApiError {
    /// Whether the error came from reading the cache (a missing id, a cache
    /// not ready, Redis failing), not from the request alone.
    pub(crate) fn after_lookup(&self) -> bool {
        matches!(
            self,
            ApiError::NotFound { .. } | ApiError::NotReady { .. } | ApiError::Unavailable { .. }
        )
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::UnknownEntity(_) => (
                StatusCode::NOT_FOUND,
                "unknown-entity",
                "Unknown entity type",
            ),
            ApiError::InvalidId(_) => (StatusCode::BAD_REQUEST, "invalid-id", "Invalid id"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request", "Bad request"),
            ApiError::NotFound { .. } => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            ApiError::PreconditionFailed => (
                StatusCode::PRECONDITION_FAILED,
                "precondition-failed",
                "Precondition failed",
            ),
            ApiError::NotReady { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "cache-not-ready",
                "Cache not ready",
            ),
            ApiError::Unavailable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "backend-unavailable",
                "Backend unavailable",
            ),
            ApiError::NoRoute => (StatusCode::NOT_FOUND, "no-route", "No such resource"),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            ApiError::Unauthorized { .. } => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Authentication required",
            ),
            ApiError::Forbidden => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            ApiError::TooManyRequests { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
            ),
            ApiError::HeadersTooLarge { .. } => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers-too-large",
                "Request header fields too large",
            ),
            ApiError::BadCursor => (StatusCode::BAD_REQUEST, "bad-cursor", "Malformed cursor"),
            ApiError::CursorGone { .. } => (StatusCode::GONE, "cursor-gone", "Resync required"),
        }
    }

    fn detail(&self) -> String {
        match self {
            ApiError::UnknownEntity(e) => format!("entity type {e:?} is not served here"),
            ApiError::InvalidId(why) => format!("the id {why}"),
            ApiError::BadRequest(why) => why.clone(),
            ApiError::NotFound { .. } => "no entity with this id".into(),
            ApiError::PreconditionFailed => {
                "the entity does not match the request's preconditions".into()
            }
            ApiError::NotReady { .. } => {
                "the cache is warming up or rebuilding; retry later".into()
            }
            ApiError::Unavailable { .. } => "the cache backend is unreachable; retry later".into(),
            ApiError::NoRoute => "see /openapi.json for the API".into(),
            ApiError::MethodNotAllowed => "only GET and HEAD are served".into(),
            ApiError::Unauthorized { invalid: false } => {
                "send a bearer token: Authorization: Bearer <token>".into()
            }
            ApiError::Unauthorized { invalid: true } => {
                "the bearer token is malformed or not known".into()
            }
            ApiError::Forbidden => "the token grants no view of this entity type".into(),
            ApiError::TooManyRequests { retry_after } => {
                format!("the token's request rate is exhausted; retry in {retry_after} s")
            }
            ApiError::HeadersTooLarge { limit } => {
                format!("the request's header fields exceed {limit} bytes")
            }
            ApiError::BadCursor => {
                "the cursor was not issued by this API for this resource; use the `next` link \
                 as it was given"
                    .into()
            }
            ApiError::CursorGone { why, resync } => format!(
                "{why}; changes since this cursor cannot be listed: resync from {resync} and \
                 follow the change feed from the cursor it starts with"
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, slug, title) = self.parts();
        let kind = format!("https://foldcache.dev/problems/{slug}");
        let body = Problem {
            kind: &kind,
            title,
            status: status.as_u16(),
            detail: self.detail(),
        };
        let mut res = (status, Json(body)).into_response();
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        // Errors are never stored, so no cache hands one caller's error to
        // another; the one exception, a missing entity, carries the caching
        // headers of the entity's 200 for the same caller.
        match &self {
            ApiError::NotFound {
                cache_control,
                vary,
            } => {
                h.insert(header::CACHE_CONTROL, cache_control.clone());
                h.insert(header::VARY, vary.clone());
            }
            _ => {
                h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            }
        }
        if let ApiError::CursorGone { resync, .. } = &self
            && let Ok(link) = HeaderValue::try_from(format!("<{resync}>; rel=\"resync\""))
        {
            h.insert(header::LINK, link);
        }
        if matches!(self, ApiError::MethodNotAllowed) {
            h.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        match &self {
            ApiError::Unauthorized { invalid: false } => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"foldcache\""),
                );
            }
            ApiError::Unauthorized { invalid: true } => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"foldcache\", error=\"invalid_token\""),
                );
            }
            ApiError::Forbidden => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        "Bearer realm=\"foldcache\", error=\"insufficient_scope\"",
                    ),
                );
            }
            _ => {}
        }
        if let ApiError::NotReady { retry_after }
        | ApiError::Unavailable { retry_after }
        | ApiError::TooManyRequests { retry_after } = self
        {
            h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        }
        res
    }
}
