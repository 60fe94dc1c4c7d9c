//! query-api's in-process cache against a real redis-server: every update
//! folded by ingest's own code is served, and never an older version after
//! it (10,000 updates, each invalidating a cached entry); when the
//! invalidation connection drops, the cache is emptied and bypassed until
//! the connection is back. How fast an update is served is a benchmark
//! (docs/BENCHMARKS.md), not a test bound: this test prints it.

use anyhow::{Result, ensure};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use foldcache::{RedisServer, eventually};
use foldcache_common::config::{Config, ValueFormat};
use foldcache_common::id::EntityName;
use foldcache_common::keys::KeySpace;
use foldcache_ingest::decode::decode;
use foldcache_ingest::fold::{Folder, PartitionBatch};
use foldcache_ingest::source::Source;
use foldcache_query_api::local_cache::{LocalCache, TRACKING_CLIENT_NAME};
use foldcache_query_api::store::Store;
use foldcache_query_api::{AppState, router, view_names};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;

const EPOCH: &str = "test-epoch";

struct Fixture {
    redis: RedisServer,
    con: redis::aio::MultiplexedConnection,
    keys: KeySpace,
    folder: Folder,
    source: Source,
    app: Router,
    cache: Arc<LocalCache>,
    offset: i64,
    _tracker: tokio::task::JoinHandle<()>,
}

impl Fixture {
    async fn start() -> Result<Self> {
        let redis = RedisServer::start().await?;
        let mut con = redis.connection().await?;
        let keys = KeySpace::new("fc");
        foldcache::seed_ready_cache(&mut con, &keys, EPOCH).await?;
        let config = Config::default();
        let client = redis::Client::open(redis.url())?;
        let cache = LocalCache::new(10_000, view_names(&config));
        let tracker = tokio::spawn(cache.clone().track(client.clone(), "fc".into()));
        let store = Store::connect(client, keys.clone())
            .await?
            .with_local_cache(cache.clone());
        let app = router(AppState::new(store, &config), false);
        let mut f = Self {
            redis,
            con,
            folder: Folder::new(keys.clone()),
            keys,
            source: Source {
                topic: "hr.employees".into(),
                entity: EntityName::parse("employees")?,
                format: ValueFormat::Json,
                id_prefix: String::new(),
                ttl_ms: 600_000,
                programs: Default::default(),
                role: foldcache_ingest::source::Role::State,
            },
            app,
            cache,
            offset: 0,
            _tracker: tracker,
        };
        f.write(0).await?;
        let cache = f.cache.clone();
        eventually("tracking to be on", Duration::from_secs(10), || {
            let cache = cache.clone();
            async move { Ok(cache.enabled().then_some(())) }
        })
        .await?;
        Ok(f)
    }

    /// Folds `{"id": "E1", "v": v}` as ingest does.
    async fn write(&mut self, v: u64) -> Result<()> {
        let value = json!({"id": "E1", "v": v}).to_string();
        let d = decode(&self.source, Some(b"E1"), Some(value.as_bytes()), 1 << 20)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut batch = PartitionBatch::new("hr.employees", 0);
        batch.push(&self.keys, 1, &self.source, self.offset, 0, d);
        self.offset += 1;
        self.folder.fold(&mut self.con, EPOCH, 1, &[batch]).await?;
        Ok(())
    }

    async fn read_v(&self) -> Result<u64> {
        let res = self
            .app
            .clone()
            .oneshot(Request::get("/v1/employees/E1").body(Body::empty())?)
            .await?;
        ensure!(res.status() == StatusCode::OK, "status {}", res.status());
        let body = res.into_body().collect().await?.to_bytes();
        let v: Value = serde_json::from_slice(&body)?;
        Ok(v["v"].as_u64().unwrap_or(u64::MAX))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_folded_update_is_served_and_never_goes_back() -> Result<()> {
    let mut f = Fixture::start().await?;
    let mut worst = Duration::ZERO;
    let mut total = Duration::ZERO;
    const UPDATES: u64 = 10_000;
    for v in 1..=UPDATES {
        // Cache the current version first, so each update must invalidate
        // a cached entry.
        f.read_v().await?;
        f.read_v().await?;
        f.write(v).await?;
        let folded = Instant::now();
        loop {
            let got = f.read_v().await?;
            if got == v {
                break;
            }
            ensure!(got < v, "read {got} after writing {v}");
            ensure!(
                folded.elapsed() < Duration::from_secs(30),
                "update {v} not served after 30 s (still {got})"
            );
            tokio::task::yield_now().await;
        }
        let took = folded.elapsed();
        worst = worst.max(took);
        total += took;
    }
    let stats = f.cache.stats();
    println!(
        "{UPDATES} updates: worst {worst:?}, mean {:?}; {stats:?}",
        total / UPDATES as u32
    );
    // The cache was really in use: most reads were hits, each update was
    // invalidated by Redis.
    assert!(stats.hits >= UPDATES, "{stats:?}");
    assert!(stats.invalidations >= UPDATES, "{stats:?}");
    assert_eq!(stats.bypassed, 0, "{stats:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_invalidation_connection_empties_and_bypasses_the_cache() -> Result<()> {
    let mut f = Fixture::start().await?;
    // The cache turns on once its tracking connection is up; then a second
    // read of an entry is a hit.
    let cache = f.cache.clone();
    eventually("the cache to turn on", Duration::from_secs(30), || {
        let cache = cache.clone();
        async move { Ok(cache.enabled().then_some(())) }
    })
    .await?;
    // Reads until one hits: an invalidation that arrives as tracking
    // starts (seen in CI) may empty the cache between the first two.
    for _ in 0..50 {
        f.read_v().await?;
        if f.cache.stats().hits >= 1 {
            break;
        }
    }
    assert!(f.cache.entry_count() >= 1);
    assert!(f.cache.stats().hits >= 1, "{:?}", f.cache.stats());

    // Kill the tracking connection, as a Redis restart or a network cut
    // would, and keep it from coming back (Redis takes no new connection
    // while `maxclients` is reached) for as long as this test looks: the
    // window in which the cache must be off.
    let mut admin = f.redis.connection().await?;
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query_async(&mut admin)
        .await?;
    let connected: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("connected_clients in INFO");
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxclients")
        .arg(connected - 1)
        .query_async(&mut admin)
        .await?;
    let kill = |mut admin: redis::aio::MultiplexedConnection| async move {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut admin)
            .await?;
        let mut killed = 0;
        for line in list.lines().filter(|l| l.contains(TRACKING_CLIENT_NAME)) {
            if let Some(id) = line.split(' ').find_map(|kv| kv.strip_prefix("id=")) {
                let _: redis::RedisResult<i64> = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("ID")
                    .arg(id)
                    .query_async(&mut admin)
                    .await;
                killed += 1;
            }
        }
        anyhow::Ok(killed)
    };
    ensure!(kill(admin.clone()).await? == 1, "one tracking connection");
    eventually("the cache to turn off", Duration::from_secs(30), || {
        let cache = cache.clone();
        async move { Ok((!cache.enabled()).then_some(())) }
    })
    .await?;
    // Emptied, and bypassed: every read goes to Redis and sees every write
    // at once, with no invalidation arriving.
    assert_eq!(
        f.cache.entry_count(),
        0,
        "emptied when the connection dropped"
    );
    let before = f.cache.stats();
    let bypassed_reads = 10;
    for v in 100..100 + bypassed_reads {
        assert!(!f.cache.enabled(), "the tracking connection cannot be back");
        f.write(v).await?;
        assert_eq!(f.read_v().await?, v, "a bypassed read is never stale");
    }
    let after = f.cache.stats();
    assert_eq!(after.hits, before.hits, "no hit while off");
    assert!(after.bypassed >= before.bypassed + bypassed_reads);
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxclients")
        .arg(10_000)
        .query_async(&mut admin)
        .await?;

    // Back: tracking on again, and the cache serves (and stays exact).
    eventually(
        "the cache to turn on again",
        Duration::from_secs(30),
        || {
            let cache = cache.clone();
            async move { Ok(cache.enabled().then_some(())) }
        },
    )
    .await?;
    f.write(500).await?;
    // Reads until one hits, each exact: the invalidation of this write may
    // arrive after the first read filled the entry and empty it again, as
    // at the first start above.
    for _ in 0..50 {
        assert_eq!(f.read_v().await?, 500);
        if f.cache.stats().hits > after.hits {
            break;
        }
    }
    assert!(
        f.cache.stats().hits > after.hits,
        "serving from the cache again"
    );
    f.write(501).await?;
    let folded = Instant::now();
    while f.read_v().await? != 501 {
        ensure!(
            folded.elapsed() < Duration::from_secs(30),
            "stale after reconnect"
        );
    }
    let _ = &mut admin;
    Ok(())
}
