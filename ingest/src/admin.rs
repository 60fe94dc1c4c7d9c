//! Ingest's own HTTP endpoints, on `ingest.admin_listen`: Prometheus
//! `/metrics`, liveness `/healthz`, readiness `/readyz` (200 once the cache
//! has caught up with the log), and the rebuild endpoints:
//! `POST /admin/rebuild` (bearer token `ingest.admin_token`; no token
//! configured, no rebuild) and `GET /admin/rebuild` (progress as JSON).
//! Every admin action is written to the `audit` log target.

use crate::rebuild::{Rebuilds, RequestOutcome};
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use foldcache_common::runtime::now_ms;
use foldcache_common::secret::Secret;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Installs the global Prometheus recorder (once per process).
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    const LATENCY: &[f64] = &[
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ];
    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY)?
        .install_recorder()?)
}

/// What the admin endpoints need.
#[derive(Clone)]
pub struct AdminState {
    /// Prometheus exposition.
    pub metrics: PrometheusHandle,
    /// Cache readiness.
    pub ready: watch::Receiver<bool>,
    /// Rebuild protocol.
    pub rebuilds: Rebuilds,
    /// Redis.
    pub redis: redis::Client,
    /// Bearer token for admin actions; `None` refuses them all.
    pub token: Option<Secret<String>>,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

/// Serves the admin endpoints until the task is dropped.
pub async fn serve(listener: TcpListener, state: AdminState) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(s): State<AdminState>| async move { s.metrics.render() }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(s): State<AdminState>| async move {
                if *s.ready.borrow() {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "catching up")
                }
            }),
        )
        .route("/admin/rebuild", get(progress).post(start_rebuild))
        .with_state(state);
    axum::serve(listener, app).await
}

fn problem(status: StatusCode, detail: &str) -> Response {
    let body = json!({"type": "about:blank", "title": status.canonical_reason(), "status": status.as_u16(), "detail": detail});
    let mut r = (status, Json(body)).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        "application/problem+json".parse().expect("static"),
    );
    r
}

/// Checks the bearer token in constant time; returns who (a token
/// fingerprint, never the token) for the audit log.
fn authorize(
    headers: &HeaderMap,
    token: Option<&Secret<String>>,
) -> Result<String, (StatusCode, &'static str)> {
    let Some(token) = token else {
        return Err((
            StatusCode::FORBIDDEN,
            "no admin token is configured (ingest.admin_token): admin actions are disabled",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or((
            StatusCode::UNAUTHORIZED,
            "send Authorization: Bearer <admin token>",
        ))?;
    let (a, b) = (
        Sha256::digest(given.as_bytes()),
        Sha256::digest(token.expose().as_bytes()),
    );
    if a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        != 0
    {
        return Err((StatusCode::FORBIDDEN, "wrong admin token"));
    }
    Ok(format!(
        "token:{:x}",
        &a[..4]
            .iter()
            .fold(0u32, |acc, b| (acc << 8) | u32::from(*b))
    ))
}

async fn start_rebuild(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    let who = match authorize(&headers, s.token.as_ref()) {
        Ok(who) => who,
        Err((status, why)) => {
            tracing::warn!(target: "audit", action = "rebuild", outcome = "refused", status = status.as_u16(), "admin action refused");
            return problem(status, why);
        }
    };
    let outcome = async {
        let mut con = s.redis.get_multiplexed_async_connection().await?;
        s.rebuilds.request(&mut con, now_ms()).await
    }
    .await;
    match outcome {
        Ok(o) => {
            let (status, label) = match o {
                RequestOutcome::Started { .. } => (StatusCode::ACCEPTED, "started"),
                RequestOutcome::AlreadyRunning { .. } => (StatusCode::CONFLICT, "already_running"),
                RequestOutcome::NotReady => (StatusCode::CONFLICT, "not_ready"),
                RequestOutcome::NoCache => (StatusCode::CONFLICT, "no_cache"),
            };
            tracing::info!(target: "audit", action = "rebuild", %who, outcome = label, "admin action");
            (status, Json(o)).into_response()
        }
        Err(e) => {
            tracing::error!(target: "audit", action = "rebuild", %who, outcome = "error", error = %e, "admin action failed");
            problem(StatusCode::SERVICE_UNAVAILABLE, "Redis did not answer")
        }
    }
}

async fn progress(State(s): State<AdminState>) -> Response {
    let p = async {
        let mut con = s.redis.get_multiplexed_async_connection().await?;
        s.rebuilds.progress(&mut con).await
    }
    .await;
    match p {
        Ok(p) => Json(p).into_response(),
        Err(_) => problem(StatusCode::SERVICE_UNAVAILABLE, "Redis did not answer"),
    }
}
