//! Ingest's own HTTP endpoints, on `ingest.admin_listen`: Prometheus
//! `/metrics`, liveness `/healthz`, readiness `/readyz` (200 once the cache
//! has caught up with the log), and the rebuild endpoints:
//! `POST /admin/rebuild` (a bearer token with the admin scope: an
//! `[[auth.tokens]]` entry with `admin = true`, or `ingest.admin_token`; none
//! configured, no rebuild) and `GET /admin/rebuild` (progress as JSON).
//! Every admin action is written to the `audit` log target.
//!
//! The web console (`/console`, see [`crate::console`]) is served here too,
//! with the same admin tokens.

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
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Installs the global Prometheus recorder (once per process).
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    const LATENCY: &[f64] = &[
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ];
    Ok(foldcache_common::metrics_recorder::install(LATENCY)?)
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
    /// The configuration (sources, entities, views, the dead-letter topic).
    pub config: std::sync::Arc<Config>,
    /// The deployment as Redis shows it, read every second.
    pub cluster: crate::cluster::Latest,
    /// The dead-letter topic's counts and latest letters.
    pub dead_letters: crate::dead_letter_tools::Live,
    /// The console's signed-in sessions.
    pub sessions: crate::console::Sessions,
    /// One redrive at a time (a double submit must not produce twice).
    pub redrive_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
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
        .merge(crate::console::routes())
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

/// An RFC 9457 problem+json answer.
pub fn problem(status: StatusCode, detail: &str) -> Response {
    let body = json!({"type": "about:blank", "title": status.canonical_reason(), "status": status.as_u16(), "detail": detail});
    let mut r = (status, Json(body)).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        "application/problem+json".parse().expect("static"),
    );
    r
}

/// A token holder, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's configured `name` (never the token).
    pub name: String,
    /// May call admin actions.
    pub admin: bool,
    /// Entity -> view the token may read (the console shows values only
    /// within these).
    pub grants: BTreeMap<String, String>,
}

/// Who may call admin endpoints: `ingest.admin_token` and every
/// `[[auth.tokens]]` entry, by SHA-256 (a token itself is never kept).
#[derive(Debug, Clone, Default)]
pub struct AdminTokens {
    by_hash: HashMap<[u8; 32], Caller>,
}

impl AdminTokens {
    /// From config.
    pub fn new(config: &Config) -> Self {
        let mut by_hash: HashMap<[u8; 32], Caller> = config
            .auth
            .tokens
            .iter()
            .filter_map(|t| {
                Some((
                    parse_token_hash(&t.sha256)?,
                    Caller {
                        name: t.name.clone(),
                        admin: t.admin,
                        grants: t.grants.clone(),
                    },
                ))
            })
            .collect();
        if let Some(t) = &config.ingest.admin_token {
            by_hash.insert(
                token_hash(t.expose()),
                Caller {
                    name: "ingest.admin_token".into(),
                    admin: true,
                    grants: BTreeMap::new(),
                },
            );
        }
        Self { by_hash }
    }

    /// Checks a token: the caller if it has the admin scope; else the
    /// status (401 unknown, 403 no admin scope or none configured) and why.
    pub fn check(&self, token: &str) -> Result<Caller, (StatusCode, String)> {
        self.any_admin()?;
        match self.by_hash.get(&token_hash(token)) {
            None => Err((StatusCode::UNAUTHORIZED, "unknown token".into())),
            Some(c) if !c.admin => Err((
                StatusCode::FORBIDDEN,
                format!("token {:?} has no admin scope", c.name),
            )),
            Some(c) => Ok(c.clone()),
        }
    }

    /// Checks the request's bearer token (see [`AdminTokens::check`]).
    pub fn authorize(&self, headers: &HeaderMap) -> Result<Caller, (StatusCode, String)> {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token);
        match given {
            Some(t) => self.check(t),
            None => {
                // Say first when nothing could ever be accepted.
                self.any_admin()?;
                Err((
                    StatusCode::UNAUTHORIZED,
                    "send Authorization: Bearer <admin token>".into(),
                ))
            }
        }
    }

    /// `Err(403)` when no token has the admin scope: admin actions are off.
    pub fn any_admin(&self) -> Result<(), (StatusCode, String)> {
        if self.by_hash.values().any(|c| c.admin) {
            Ok(())
        } else {
            Err((
                StatusCode::FORBIDDEN,
                "no admin token is configured (ingest.admin_token or [[auth.tokens]] with admin = true): admin actions are disabled".into(),
            ))
        }
    }
}

async fn start_rebuild(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    let who = match s.admins.authorize(&headers) {
        Ok(caller) => caller.name,
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
