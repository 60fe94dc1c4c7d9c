//! Ingest's own HTTP endpoints, on `ingest.admin_listen`: Prometheus
//! `/metrics`, liveness `/healthz`, readiness `/readyz` (200 once the cache
//! has caught up with the log), and the rebuild endpoints:
//! `POST /admin/rebuild` (a bearer token with the admin scope: an
//! `[[auth.tokens]]` entry with `admin = true`, or `ingest.admin_token`; none
//! configured, no rebuild) and `GET /admin/rebuild` (progress as JSON).
//! Every admin action is written to the `audit` log target.

use crate::rebuild::{Rebuilds, RequestOutcome};
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use foldcache_common::config::Config;
use foldcache_common::runtime::now_ms;
use foldcache_common::secret::{bearer_token, parse_token_hash, token_hash};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use std::collections::HashMap;
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
    /// Partition statuses per generation (stalls, positions).
    pub statuses: crate::progress::AllStatuses,
    /// Rebuild protocol.
    pub rebuilds: Rebuilds,
    /// Redis.
    pub redis: redis::Client,
    /// Who may call admin actions.
    pub admins: AdminTokens,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("admins", &self.admins.by_hash.len())
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
        .route("/readyz", get(readyz))
        .route("/admin/rebuild", get(progress).post(start_rebuild))
        .with_state(state);
    axum::serve(listener, app).await
}

/// 200 once the cache has caught up, else 503; the body says which
/// partitions are where, and which are stalled and why.
async fn readyz(State(s): State<AdminState>) -> Response {
    let ready = *s.ready.borrow();
    let mut partitions = Vec::new();
    for (generation, statuses) in crate::progress::lock(&s.statuses).iter() {
        for ((topic, partition), st) in crate::progress::lock(statuses).iter() {
            partitions.push(json!({
                "generation": generation,
                "topic": topic,
                "partition": partition,
                "position": st.position,
                "end": st.end,
                "caught_up": st.caught_up,
                "stalled": st.stalled,
            }));
        }
    }
    let stalled = partitions
        .iter()
        .filter(|p| !p["stalled"].is_null())
        .count();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ready { "ready" } else { "catching up" },
        "stalled_partitions": stalled,
        "partitions": partitions,
    });
    (status, Json(body)).into_response()
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

/// Who may call admin endpoints: `ingest.admin_token` and every
/// `[[auth.tokens]]` entry, by SHA-256 (a token itself is never kept).
#[derive(Debug, Clone, Default)]
pub struct AdminTokens {
    by_hash: HashMap<[u8; 32], (String, bool)>,
}

impl AdminTokens {
    /// From config.
    pub fn new(config: &Config) -> Self {
        let mut by_hash: HashMap<[u8; 32], (String, bool)> = config
            .auth
            .tokens
            .iter()
            .filter_map(|t| Some((parse_token_hash(&t.sha256)?, (t.name.clone(), t.admin))))
            .collect();
        if let Some(t) = &config.ingest.admin_token {
            by_hash.insert(token_hash(t.expose()), ("ingest.admin_token".into(), true));
        }
        Self { by_hash }
    }

    /// Checks the request's bearer token; returns the caller's configured
    /// name for the audit log.
    fn authorize(&self, headers: &HeaderMap) -> Result<String, (StatusCode, String)> {
        if !self.by_hash.values().any(|(_, admin)| *admin) {
            return Err((
                StatusCode::FORBIDDEN,
                "no admin token is configured (ingest.admin_token or [[auth.tokens]] with admin = true): admin actions are disabled".into(),
            ));
        }
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .ok_or((
                StatusCode::UNAUTHORIZED,
                "send Authorization: Bearer <admin token>".into(),
            ))?;
        match self.by_hash.get(&token_hash(given)) {
            None => Err((StatusCode::UNAUTHORIZED, "unknown token".into())),
            Some((name, false)) => Err((
                StatusCode::FORBIDDEN,
                format!("token {name:?} has no admin scope"),
            )),
            Some((name, true)) => Ok(name.clone()),
        }
    }
}

async fn start_rebuild(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    let who = match s.admins.authorize(&headers) {
        Ok(who) => who,
        Err((status, why)) => {
            tracing::warn!(target: "audit", action = "rebuild", outcome = "refused", status = status.as_u16(), reason = %why, "admin action refused");
            return problem(status, &why);
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
