//! [`Both`]: the router and the service query-api serves, compared on
//! every request.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// The router and the service query-api serves (the same router behind its
/// single-lookup fast path), as one service: each request goes through
/// both, which must answer the same status, headers (in the same order)
/// and body; the answer is the served one.
#[derive(Clone)]
pub struct Both {
    pub router: Router,
    pub api: foldcache_query_api::fast_path::Api,
}

impl Both {
    /// Over one app state.
    pub fn new(state: foldcache_query_api::AppState, compression: bool) -> Self {
        Self {
            router: foldcache_query_api::router(state.clone(), compression),
            api: foldcache_query_api::service(state, compression),
        }
    }
}

impl tower::Service<Request<Body>> for Both {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let (parts, _) = req.into_parts();
        let what = format!("{} {} {:?}", parts.method, parts.uri, parts.headers);
        let request = move || {
            let mut r = Request::new(Body::empty());
            *r.method_mut() = parts.method.clone();
            *r.uri_mut() = parts.uri.clone();
            *r.headers_mut() = parts.headers.clone();
            r
        };
        let (router, api) = (self.router.clone(), self.api.clone());
        Box::pin(async move {
            let routed = collect(router.oneshot(request()).await).await;
            let served = collect(api.oneshot(request()).await).await;
            assert_eq!(routed.0, served.0, "status of {what}");
            let pairs = |h: &axum::http::HeaderMap| {
                h.iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(pairs(&routed.1), pairs(&served.1), "headers of {what}");
            assert_eq!(routed.2, served.2, "body of {what}");
            let mut res = axum::response::Response::new(Body::from(served.2));
            *res.status_mut() = served.0;
            *res.headers_mut() = served.1;
            Ok(res)
        })
    }
}

async fn collect(
    res: Result<axum::response::Response, std::convert::Infallible>,
) -> (StatusCode, axum::http::HeaderMap, axum::body::Bytes) {
    let Ok(res) = res;
    let (parts, body) = res.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (parts.status, parts.headers, body)
}
