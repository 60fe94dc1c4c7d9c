//! The foldcache test kit: real services for end-to-end tests and load
//! benchmarks.
//!
//! - [`RedisServer`]: a private `redis-server` on a free port; snapshots,
//!   restarts (empty or from a snapshot) and pauses on demand.
//! - [`Broker`]: a private Tansu (Kafka-protocol) broker on a free port,
//!   its log in SQLite so that it survives [`Broker::restart`].
//! - [`Stack`]: both, unique topics and a config file, with foldcache's own
//!   binaries (`ingest`, `query-api`) started on demand.
//! - [`Rec`], [`produce_all`]: a log of records produced in order, and
//!   where it ends per partition.
//! - [`Process`]: a child process whose output is kept, killed on drop (or
//!   with SIGKILL on demand, to test crash recovery).
//!
//! Binaries are found through the environment (`FOLDCACHE_TANSU`,
//! `FOLDCACHE_REDIS_SERVER`), then `PATH`, then the cache that `scripts/dev`
//! builds into (`~/.cache/foldcache/tansu-0.6.0-durable/bin/tansu`).

mod binaries;
mod broker;
mod process;
mod records;
mod redis_server;
mod stack;
mod tls_proxy;

pub use binaries::{foldcache_binary, redis_server_binary, tansu_binary};
pub use broker::{Broker, BrokerStorage};
pub use process::{Process, cpu_secs, test_log_dir};
pub use records::{Rec, produce_all};
pub use redis_server::RedisServer;
pub use stack::{Stack, Topics};
pub use tls_proxy::TlsProxy;

use anyhow::{Context, Result, bail};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A port nobody listens on right now, and one this process has not
/// handed out before (the kernel may give the same ephemeral port to two
/// binds in a row, and a stack asks for several before anything binds them).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind an ephemeral port on 127.0.0.1");
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A name unique to this process and call, for topics, groups and prefixes.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}{}x{}x{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `check` every 50 ms until it returns `Ok(Some(_))` or `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() > timeout {
            match last_err {
                Some(e) => bail!("timed out after {timeout:?} waiting for {what}: {e:#}"),
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The status of a plain GET, with a minimal HTTP/1.1 client (so the kit
/// needs no HTTP library).
pub async fn http_status(url: &str) -> Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").context("only http:// URLs")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = tokio::net::TcpStream::connect(host).await?;
    s.write_all(
        format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let line = String::from_utf8_lossy(&buf);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status line")
}

/// Writes a ready cache marker (`live_gen = 1`, verified on this Redis
/// process) and a fresh ingest heartbeat, as a running ingest would: the
/// state query-api needs to serve what a test folds with ingest's code
/// directly.
pub async fn seed_ready_cache(
    con: &mut redis::aio::MultiplexedConnection,
    keys: &foldcache_common::keys::KeySpace,
    epoch: &str,
) -> Result<()> {
    let now = foldcache_common::runtime::now_ms();
    let beat = foldcache_common::keys::InstanceBeat {
        alive_ms: now,
        fresh_ms: Some(now),
        interval_ms: 1000,
    };
    let info: String = redis::cmd("INFO").arg("server").query_async(con).await?;
    let run_id = info
        .lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .map(str::trim)
        .context("no run_id in INFO server")?;
    let () = redis::pipe()
        .hset_multiple(
            keys.state(),
            &[
                ("epoch", epoch),
                ("live_gen", "1"),
                ("ready", "1"),
                (foldcache_common::keys::state_field::REDIS_RUN_ID, run_id),
            ],
        )
        .hset(keys.instances(), "i1", beat.encode())
        .query_async(con)
        .await?;
    Ok(())
}

/// The live generation in the `fc` key space (`None`: no cache yet).
pub async fn live_generation(con: &mut redis::aio::MultiplexedConnection) -> Result<Option<u64>> {
    Ok(redis::cmd("HGET")
        .arg("fc:state")
        .arg("live_gen")
        .query_async(con)
        .await?)
}
