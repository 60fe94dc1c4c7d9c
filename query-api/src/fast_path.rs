//! The service query-api serves: the common single lookup answered without
//! the router, everything else by the router.
//!
//! A plain `GET|HEAD /v1/{entity}/{id}` (no `Accept-Encoding`, no `Prefer`,
//! no precondition but at most one `If-None-Match` line, a path without
//! percent-escapes, a caller without a rate limit) is most of the traffic.
//! For it the router's work is fixed: route matching, two boxed
//! middlewares (metrics, conditional), a compression layer that leaves the
//! body as it is. [`Api`] answers such a request with the same handler
//! code ([`crate::routes::entity_response`]) and the same finishing steps
//! ([`crate::conditional::finish`], the metrics of
//! [`crate::track_metrics`]), so the bytes sent are the router's
//! (`tests/http_rules.rs` compares both on every rule). Any other request,
//! and any request the fast path cannot answer before a side effect (a 401,
//! a 403, a malformed id), goes to the router untouched.

use crate::conditional::{Conditions, Revalidation};
use crate::routes::{LongPoll, entity_response};
use crate::{AppState, MAX_HEADER_BYTES, ROUTE_ENTITY, count_request, header_bytes};
use axum::Router;
use axum::body::{Body, HttpBody as _};
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use futures_util::future::{BoxFuture, Either};
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, VARY};
use http::{HeaderValue, Method};
use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Instant;
use tower::Service;
use tower_http::compression::predicate::{DefaultPredicate, Predicate};

/// The router, with the single lookup in front of it.
#[derive(Debug, Clone)]
pub struct Api {
    state: AppState,
    router: Router,
    compression: bool,
}

impl Api {
    /// `router` (from [`crate::router`] over `state`, with `compression`)
    /// behind the fast path.
    pub fn new(state: AppState, router: Router, compression: bool) -> Self {
        Self {
            state,
            router,
            compression,
        }
    }
}

impl<B> Service<http::Request<B>> for Api
where
    B: axum::body::HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<
        <Router as Service<Request>>::Future,
        BoxFuture<'static, Result<Response, Infallible>>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let req = req.map(Body::new);
        if !plain_lookup(&req) {
            return Either::Left(self.router.call(req));
        }
        let api = self.clone();
        Either::Right(Box::pin(async move { Ok(api.lookup(req).await) }))
    }
}

/// Whether `req` is a single lookup the fast path may answer: its shape
/// alone, no state read.
fn plain_lookup(req: &Request) -> bool {
    let h = req.headers();
    (req.method() == Method::GET || req.method() == Method::HEAD)
        && entity_and_id(req.uri().path()).is_some()
        && !h.contains_key(ACCEPT_ENCODING)
        && !h.contains_key("prefer")
        && header_bytes(h) <= MAX_HEADER_BYTES
}

/// `(entity, id)` of `/v1/{entity}/{id}` as the router matches it (not
/// `/v1/{entity}/changes`), when no segment needs percent-decoding.
fn entity_and_id(path: &str) -> Option<(&str, &str)> {
    let (entity, id) = path.strip_prefix("/v1/")?.split_once('/')?;
    let plain = |s: &str| !s.is_empty() && !s.contains(['/', '%']);
    (plain(entity) && plain(id) && id != "changes").then_some((entity, id))
}

impl Api {
    async fn lookup(mut self, req: Request) -> Response {
        let start = Instant::now();
        let head = req.method() == Method::HEAD;
        let answer = {
            let h = req.headers();
            let conditions = Conditions::of(h);
            // Only a caller without a rate limit: charging one is a side
            // effect the router would repeat.
            match self.state.auth.identify(h) {
                Ok(caller) if !caller.rate_limited() && !conditions.is_any() => {
                    let revalidation = Revalidation::of(&conditions);
                    let (entity, id) = entity_and_id(req.uri().path()).unwrap_or_default();
                    let res = entity_response(
                        &self.state,
                        caller,
                        LongPoll(None),
                        revalidation,
                        entity,
                        id,
                    )
                    .await;
                    match res {
                        Ok(res) => Some(crate::conditional::finish(conditions, res)),
                        // Answered without reading a state: the router
                        // answers these (and checks the path in its order).
                        Err(e) if !e.after_lookup() => None,
                        Err(e) => Some(self.error(e)),
                    }
                }
                _ => None,
            }
        };
        let Some(mut res) = answer else {
            return match self.router.call(req).await {
                Ok(res) => res,
            };
        };
        // As axum's router finishes every response: the length, and no
        // body for HEAD.
        if !res.headers().contains_key(CONTENT_LENGTH)
            && let Some(len) = res.body().size_hint().exact()
        {
            res.headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from(len));
        }
        if head {
            *res.body_mut() = Body::empty();
        }
        count_request(ROUTE_ENTITY, head, res.status(), start.elapsed());
        res
    }

    /// An error found by the lookup, as the router's layers send it: the
    /// compression layer leaves it uncompressed (no `Accept-Encoding`) but
    /// marks it `Vary: accept-encoding` where it would compress it.
    fn error(&self, e: crate::error::ApiError) -> Response {
        let mut res = e.into_response();
        let h = res.headers();
        if self.compression
            && !h.contains_key(CONTENT_ENCODING)
            && !h.contains_key(CONTENT_RANGE)
            && DefaultPredicate::new().should_compress(&res)
            && !h.get_all(VARY).iter().any(|v| {
                v.to_str()
                    .is_ok_and(|v| v.to_ascii_lowercase().contains("accept-encoding"))
            })
        {
            res.headers_mut()
                .append(VARY, HeaderValue::from_static("accept-encoding"));
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_single_lookup_template_is_taken() {
        assert_eq!(entity_and_id("/v1/employees/E1"), Some(("employees", "E1")));
        for other in [
            "/v1/employees/changes",
            "/v1/employees",
            "/v1/employees/",
            "/v1//E1",
            "/v1/employees/E1/",
            "/v1/employees/E%31",
            "/v2/employees/E1",
            "/healthz",
        ] {
            assert_eq!(entity_and_id(other), None, "{other}");
        }
    }
}
