//! Shared by the router-level tests: one request through the real router
//! (or the service query-api serves, or both: [`both::Both`]), and its response
//! with the body collected.

use anyhow::Result;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

// Only tests/http_rules.rs sends every request through both.
#[allow(dead_code)]
pub mod both;
// Only the tests that fold without a broker use it.
#[allow(dead_code)]
pub mod fold;

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
