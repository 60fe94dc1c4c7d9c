//! foldcache query-api: HR entities from Redis over HTTP, with strong ETags,
//! `Last-Modified`, per-entity `Cache-Control` and 304s.
//!
//! - [`routes`]: the handlers of single lookups (and their long-polls).
//! - [`collection`]: collection pages, index filters and batch lookups.
//! - [`changes`]: the change feed, polled and as Server-Sent Events.
//! - [`hub`]: one change-log tail per entity type, fanned out to streams
//!   and long-polls.
//! - [`cursor`]: opaque, generation-bound cursors.
//! - [`prefer`]: `Prefer: wait`.
//! - [`conditional`]: where `If-None-Match` and friends are evaluated.
//! - [`cache_policy`]: `Cache-Control` per entity.
//! - [`store`]: Redis reads and the cache-state poller (503, never a false
//!   404).
//! - [`error`]: problem+json errors.
//!
//! The app is built from a bound listener, the config and a shutdown future
//! ([`serve`]), so tests bind port 0.

pub mod auth;
pub mod cache_policy;
pub mod changes;
pub mod collection;
pub mod conditional;
pub mod cursor;
pub mod error;
pub mod fast_path;
pub mod hub;
pub mod local_cache;
pub mod prefer;
pub mod routes;
pub mod store;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use foldcache_common::config::Config;
use foldcache_common::id::{EntityId, EntityName};
use foldcache_common::keys::KeySpace;
use http::{HeaderName, HeaderValue, StatusCode};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::Store;
use tokio::net::TcpListener;
use tower_http::compression::{CompressionLayer, CompressionLevel};

/// Per-entity response policy, derived once from config.
#[derive(Debug, Clone)]
pub struct EntityPolicy {
    /// `Cache-Control` of 200/304 to anonymous callers.
    pub cache_control: HeaderValue,
    /// `Cache-Control` of 200/304 to token holders: the same directives,
    /// but `private`.
    pub private_cache_control: HeaderValue,
    /// `Cache-Control` of a 404 to anonymous callers.
    pub not_found_cache_control: HeaderValue,
    /// `Cache-Control` of a 404 to token holders (`private`, like their
    /// 200s).
    pub private_not_found_cache_control: HeaderValue,
    /// Freshness bound in ms (`None`: unbounded).
    pub max_staleness_ms: Option<i64>,
    /// Secondary indexes (collection filters).
    pub indexes: Vec<foldcache_common::index::IndexSpec>,
}

/// Page sizes of collections and change pages.
#[derive(Debug, Clone, Copy)]
pub struct PageLimits {
    /// Without `limit`.
    pub default_limit: usize,
    /// The largest `limit` accepted.
    pub max_limit: usize,
}

/// Server-Sent Events settings.
#[derive(Debug, Clone, Copy)]
pub struct SseSettings {
    /// Idle time before a heartbeat comment.
    pub heartbeat: Duration,
    /// Events queued per connection at most.
    pub buffer_events: usize,
}

/// Shared state of the handlers: one `Arc`, so the per-request clone axum
/// makes is one atomic increment.
#[derive(Debug, Clone)]
pub struct AppState(Arc<App>);

impl std::ops::Deref for AppState {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}

/// What [`AppState`] holds.
#[derive(Debug)]
pub struct App {
    /// Redis reads.
    pub store: Store,
    /// Policies by entity name; an entity not here is not served.
    pub entities: Arc<HashMap<String, EntityPolicy>>,
    /// `Retry-After` on 503.
    pub retry_after: u64,
    /// Most ids per batch lookup.
    pub max_batch_ids: usize,
    /// Cache-tag header name, and whether tags are comma-separated.
    pub surrogate: Option<(HeaderName, bool)>,
    /// Callers, grants and views.
    pub auth: Arc<auth::Auth>,
    /// Change-log tails for event streams and long-polls.
    pub hub: hub::Hub,
    /// Page sizes.
    pub pages: PageLimits,
    /// Longest `Prefer: wait` honoured, in seconds.
    pub max_wait_secs: u64,
    /// Event streams.
    pub sse: SseSettings,
    /// `true` once the server shuts down: event streams and long-polls end
    /// so that in-flight requests can finish.
    pub closing: tokio::sync::watch::Receiver<bool>,
    closer: tokio::sync::watch::Sender<bool>,
}

impl AppState {
    /// Derives policies from config.
    pub fn new(store: Store, config: &Config) -> Self {
        let entities = config
            .entities
            .iter()
            .map(|(name, e)| {
                let private = cache_policy::private(&e.cache_control);
                (
                    name.clone(),
                    EntityPolicy {
                        cache_control: cache_policy::cache_control(&e.cache_control),
                        private_cache_control: cache_policy::cache_control(&private),
                        not_found_cache_control: cache_policy::not_found(
                            &e.cache_control,
                            e.not_found_max_age_secs,
                        ),
                        private_not_found_cache_control: cache_policy::not_found(
                            &private,
                            e.not_found_max_age_secs,
                        ),
                        max_staleness_ms: (e.freshness_secs > 0)
                            .then(|| e.freshness_secs.saturating_mul(1000) as i64),
                        indexes: e.index_specs(),
                    },
                )
            })
            .collect();
        let header = config.http.surrogate_key_header.trim();
        let surrogate = (!header.is_empty())
            .then(|| HeaderName::from_bytes(header.as_bytes()).ok())
            .flatten()
            .map(|name| {
                let commas = name.as_str().eq_ignore_ascii_case("cache-tag");
                (name, commas)
            });
        let (closer, closing) = tokio::sync::watch::channel(false);
        Self(Arc::new(App {
            hub: hub::Hub::new(store.clone(), config.http.sse_buffer_events),
            store,
            entities: Arc::new(entities),
            retry_after: config.http.retry_after_secs,
            max_batch_ids: config.http.max_batch_ids,
            surrogate,
            auth: Arc::new(auth::Auth::new(config)),
            pages: PageLimits {
                default_limit: config.http.default_page_limit,
                max_limit: config.http.max_page_limit,
            },
            max_wait_secs: config.http.max_wait_secs,
            sse: SseSettings {
                heartbeat: Duration::from_secs(config.http.sse_heartbeat_secs),
                buffer_events: config.http.sse_buffer_events,
            },
            closing,
            closer,
        }))
    }

    /// Ends every event stream and long-poll (the server is shutting down).
    pub fn close(&self) {
        self.closer.send_replace(true);
    }

    /// Cache tags of a response about `ids` of `entity`: the entity type and
    /// `entity/id` per id. Ids only, never field values.
    pub fn surrogate_keys(
        &self,
        entity: &EntityName,
        ids: &[EntityId],
    ) -> Option<(HeaderName, HeaderValue)> {
        let (name, commas) = self.surrogate.as_ref()?;
        let sep = if *commas { "," } else { " " };
        let mut v = entity.to_string();
        for id in ids {
            v.push_str(sep);
            v.push_str(entity.as_str());
            v.push('/');
            v.push_str(id.as_str());
        }
        // Entity names and ids are validated ASCII.
        HeaderValue::from_str(&v).ok().map(|v| (name.clone(), v))
    }

    /// [`AppState::surrogate_keys`] of a single lookup of `found` (`id` of
    /// `entity`), rendered once per cached entity.
    pub fn entity_surrogate_keys(
        &self,
        entity: &EntityName,
        id: &EntityId,
        found: &store::Entity,
    ) -> Option<(HeaderName, HeaderValue)> {
        let (name, _) = self.surrogate.as_ref()?;
        let value = found.surrogate_keys.get_or_init(|| {
            self.surrogate_keys(entity, std::slice::from_ref(id))
                .map(|(_, v)| v)
        });
        value.clone().map(|v| (name.clone(), v))
    }
}

/// The router with every route and middleware. Layer order, outermost
/// first: metrics (sees the final status), conditional requests (see the
/// final encoding), compression, handlers.
pub fn router(state: AppState, compression: bool) -> Router {
    let mut app = Router::new()
        .route("/v1/{entity}/changes", get(changes::get_changes))
        .route("/v1/{entity}/{id}", get(routes::get_entity))
        .route("/v1/{entity}", get(collection::get_collection))
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/openapi.json", get(routes::openapi))
        .fallback(routes::fallback)
        .method_not_allowed_fallback(|| async { error::ApiError::MethodNotAllowed })
        .with_state(state);
    if compression {
        app = app.layer(
            CompressionLayer::new()
                .gzip(true)
                .br(true)
                .zstd(true)
                .quality(CompressionLevel::Precise(4)),
        );
    }
    app.layer(middleware::from_fn(conditional::layer))
        .layer(middleware::from_fn(track_metrics))
}

/// What query-api serves: [`router`] behind the single-lookup fast path
/// ([`fast_path::Api`]).
pub fn service(state: AppState, compression: bool) -> fast_path::Api {
    fast_path::Api::new(state.clone(), router(state, compression), compression)
}

/// Largest header section accepted, in bytes (names + values).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

const ROUTES: [&str; 8] = [
    "/v1/{entity}/{id}",
    "/v1/{entity}",
    "/v1/{entity}/changes",
    "/healthz",
    "/readyz",
    "/openapi.json",
    "other",
    "unmatched",
];
/// Route templates a request can match (the others are labels).
const MATCHED_ROUTES: usize = 6;
/// The index of `/v1/{entity}/{id}` in [`ROUTES`].
const ROUTE_ENTITY: usize = 0;
const STATUSES: [u16; 14] = [
    200, 304, 400, 401, 403, 404, 405, 410, 412, 429, 431, 500, 503, 0,
];

/// Metric handles, registered once per (route, method, status) instead of
/// looked up by labels on every request.
struct HttpMetrics {
    requests: Vec<std::sync::OnceLock<metrics::Counter>>,
    latency: Vec<std::sync::OnceLock<metrics::Histogram>>,
}

fn http_metrics() -> &'static HttpMetrics {
    static M: std::sync::OnceLock<HttpMetrics> = std::sync::OnceLock::new();
    M.get_or_init(|| HttpMetrics {
        requests: (0..ROUTES.len() * 2 * STATUSES.len())
            .map(|_| std::sync::OnceLock::new())
            .collect(),
        latency: (0..ROUTES.len())
            .map(|_| std::sync::OnceLock::new())
            .collect(),
    })
}

fn count_request(route: usize, head: bool, status: StatusCode, elapsed: Duration) {
    let m = http_metrics();
    let s = STATUSES
        .iter()
        .position(|c| *c == status.as_u16())
        .unwrap_or(STATUSES.len() - 1);
    let idx = (route * 2 + usize::from(head)) * STATUSES.len() + s;
    m.requests[idx]
        .get_or_init(|| {
            let status: metrics::SharedString = match STATUSES[s] {
                0 => "other".into(),
                code => code.to_string().into(),
            };
            metrics::counter!("foldcache_http_requests_total",
                "route" => ROUTES[route],
                "method" => if head { "HEAD" } else { "GET" },
                "status" => status)
        })
        .increment(1);
    m.latency[route]
        .get_or_init(|| {
            metrics::histogram!("foldcache_http_request_duration_seconds", "route" => ROUTES[route])
        })
        .record(elapsed.as_secs_f64());
}

/// The size of a header section as [`MAX_HEADER_BYTES`] counts it.
fn header_bytes(headers: &http::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum()
}

/// Records request counts and latency by route template and status (and
/// refuses oversized header sections first: one middleware, not two, on
/// the hot path).
async fn track_metrics(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let head = req.method() == http::Method::HEAD;
    if header_bytes(req.headers()) > MAX_HEADER_BYTES {
        count_request(
            ROUTES.len() - 1,
            head,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            start.elapsed(),
        );
        return axum::response::IntoResponse::into_response(error::ApiError::HeadersTooLarge {
            limit: MAX_HEADER_BYTES,
        });
    }
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or(ROUTES.len() - 1, |p| {
            ROUTES[..MATCHED_ROUTES]
                .iter()
                .position(|r| *r == p.as_str())
                .unwrap_or(MATCHED_ROUTES)
        });
    let res = next.run(req).await;
    count_request(route, head, res.status(), start.elapsed());
    res
}

/// Every view name of every entity (`full` included).
pub fn view_names(config: &Config) -> Vec<String> {
    let mut names: Vec<String> = config
        .entities
        .values()
        .flat_map(|e| e.views.keys().cloned())
        .chain(std::iter::once(
            foldcache_common::config::FULL_VIEW.to_owned(),
        ))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Connects to Redis, starts the state poller and serves `listener` until
/// `shutdown` resolves (in-flight requests finish).
pub async fn serve(
    listener: TcpListener,
    config: &Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let client = foldcache_common::redis_client::client(&config.redis)?;
    let keys = KeySpace::new(config.redis.key_prefix.clone());
    let mut store = loop {
        match Store::connect(client.clone(), keys.clone()).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %e, "connecting to Redis failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let tracker = (config.http.local_cache_entries > 0).then(|| {
        let cache =
            local_cache::LocalCache::new(config.http.local_cache_entries, view_names(config));
        store = store.clone().with_local_cache(cache.clone());
        tokio::spawn(cache.track(client.clone(), config.redis.key_prefix.clone()))
    });
    let poller = tokio::spawn(
        store
            .clone()
            .poll_state(Duration::from_millis(config.http.state_poll_ms)),
    );
    if config.auth_is_open() {
        tracing::warn!(
            "auth: no [[auth.tokens]] configured; every entity is served to anyone with its full view"
        );
    }
    let state = AppState::new(store, config);
    let app = axum::ServiceExt::<Request>::into_make_service(service(
        state.clone(),
        config.http.compression,
    ));
    // On shutdown, end event streams and long-polls first: graceful
    // shutdown waits for in-flight requests, and those would never finish.
    let mut closing = state.closing.clone();
    let closer = state.clone();
    tokio::spawn(async move {
        shutdown.await;
        closer.close();
    });
    let shutdown = async move {
        let _ = closing.wait_for(|c| *c).await;
    };
    // What the runtime has, not what the config asked for (`0`: the cores).
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    let result = match &config.http.tls {
        None => {
            tracing::info!(addr = %listener.local_addr()?, workers, "query-api listening (HTTP)");
            use axum::serve::ListenerExt;
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(tls) => {
            let rustls = axum_server::tls_rustls::RustlsConfig::from_pem_chain_file(
                &tls.cert_file,
                &tls.key_file,
            )
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "http.tls: loading {} and {}: {e}",
                    tls.cert_file.display(),
                    tls.key_file.display()
                )
            })?;
            tracing::info!(addr = %listener.local_addr()?, workers, "query-api listening (HTTPS)");
            let handle = axum_server::Handle::new();
            let on_shutdown = handle.clone();
            tokio::spawn(async move {
                shutdown.await;
                on_shutdown.graceful_shutdown(Some(Duration::from_secs(10)));
            });
            axum_server::from_tcp_rustls(listener.into_std()?, rustls)?
                .handle(handle)
                .serve(app)
                .await
        }
    };
    poller.abort();
    if let Some(t) = tracker {
        t.abort();
    }
    Ok(result?)
}
