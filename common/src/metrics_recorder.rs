//! The Prometheus recorder both binaries install: `_seconds` histograms in
//! the caller's buckets, and the upkeep that drains their samples.

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use std::time::Duration;

/// How often recorded histogram samples are drained into their buckets.
/// Without it they pile up until the next scrape, and forever where
/// nothing scrapes (one sample per HTTP request in query-api).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the global recorder (once per process, inside a Tokio runtime)
/// and starts its upkeep; the handle renders `/metrics`.
pub fn install(latency_buckets: &[f64]) -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), latency_buckets)?
        .install_recorder()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP_EVERY);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}
