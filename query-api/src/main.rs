//! The `query-api` binary.

use anyhow::Context as _;
use clap::Parser;
use foldcache_common::config::Config;
use std::path::PathBuf;

// The read path allocates small, short-lived buffers per request; mimalloc
// serves them faster than glibc's malloc (docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Serves foldcache's HR entities over HTTP.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TOML config file; `FOLDCACHE__SECTION__KEY` variables override it.
    #[arg(long, short, env = "FOLDCACHE_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    // One clear line per error (causes joined), never a backtrace.
    match run_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref())?;
    // The config names the runtime's threads, so it is read before the
    // runtime exists.
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.http.worker_threads > 0 {
        runtime.worker_threads(config.http.worker_threads);
    }
    runtime
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    foldcache_common::telemetry::init(&config.log);
    foldcache_common::redis_client::install_tls_provider();

    let metrics = foldcache_common::metrics_recorder::install(&[
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5,
    ])?;
    let metrics_listener = tokio::net::TcpListener::bind(config.http.metrics_listen)
        .await
        .with_context(|| format!("binding http.metrics_listen {}", config.http.metrics_listen))?;
    tracing::info!(addr = %metrics_listener.local_addr()?, "metrics listening");
    tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || std::future::ready(metrics.render())),
        );
        axum::serve(metrics_listener, app).await
    });

    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("binding http.listen {}", config.http.listen))?;
    foldcache_query_api::serve(
        listener,
        &config,
        foldcache_common::runtime::shutdown_signal(),
    )
    .await
}
