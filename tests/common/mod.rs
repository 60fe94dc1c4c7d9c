//! Shared by the router-level tests: one request through the real router
//! (or the service query-api serves, or both: [`Both`]), and its response
//! with the body collected.

use anyhow::Result;
use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

/// A response, body collected.
pub struct Res {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Res {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// `method uri` with `headers`, through `app`.
pub async fn send<S>(app: &S, method: Method, uri: &str, headers: &[(&str, &str)]) -> Result<Res>
where
    S: tower::Service<
            Request<Body>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone,
{
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = app.clone().oneshot(req.body(Body::empty())?).await?;
    Ok(Res {
        status: res.status(),
        headers: res.headers().clone(),
        body: res.into_body().collect().await?.to_bytes().to_vec(),
    })
}

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
        let request = move || {
            let mut r = Request::new(Body::empty());
            *r.method_mut() = parts.method.clone();
            *r.uri_mut() = parts.uri.clone();
            *r.headers_mut() = parts.headers.clone();
            r
        };
        let (router, api) = (self.router.clone(), self.api.clone());
        Box::pin(async move {
            let what = format!("{} {} {:?}", parts.method, parts.uri, parts.headers);
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
