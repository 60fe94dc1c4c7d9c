//! Ingest's own HTTP endpoints, on `ingest.admin_listen`: Prometheus
//! `/metrics`, liveness `/healthz` and readiness `/readyz` (200 once the cache
//! has caught up with the log).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
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

#[derive(Clone)]
struct AdminState {
    metrics: PrometheusHandle,
    ready: watch::Receiver<bool>,
}

/// Serves the admin endpoints until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    metrics: PrometheusHandle,
    ready: watch::Receiver<bool>,
) -> std::io::Result<()> {
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
        .with_state(AdminState { metrics, ready });
    axum::serve(listener, app).await
}
