//! The data behind the random-reads-at-scale benchmark
//! (`benches/http/scale.sh`): a private redis-server holding N generator
//! employees (default 1,000,000) folded by ingest's own decode and fold
//! code, as a ready cache that query-api serves: the cache marker, and an
//! ingest heartbeat kept fresh every second (query-api answers 503 once the
//! pipeline's freshness is older than the entity's `freshness_secs`).
//!
//! No broker: the benchmark measures reads, not the pipeline. Prints
//! `redis-port PORT` once the data is in, then serves until SIGTERM or
//! Ctrl-C (Redis is stopped with it).
//!
//! Run: `scripts/dev bench-http-scale [EMPLOYEES]`.

#[path = "support/employees.rs"]
mod employees;

use anyhow::Result;
use foldcache_common::config::Config;
use foldcache_common::keys::{InstanceBeat, KeySpace};
use foldcache_common::runtime::{now_ms, shutdown_signal};
use std::io::Write;
use std::time::{Duration, Instant};

const EPOCH: &str = "bench-epoch";

#[tokio::main]
async fn main() -> Result<()> {
    let employees = employees::count_arg(1_000_000);
    let (redis, mut con, keys) = employees::ready_redis(EPOCH).await?;
    let start = Instant::now();
    let folded =
        employees::fold_employees(&mut con, &keys, EPOCH, &Config::default(), employees).await?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "folded {} employees in {secs:.1} s ({:.0}/s), {:.0} bytes of JSON each",
        folded.employees,
        folded.employees as f64 / secs,
        folded.json_bytes as f64 / folded.employees as f64
    );
    println!("redis-port {}", redis.port());
    std::io::stdout().flush()?;
    let beat = async {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            heartbeat(&mut con, &keys).await?;
        }
    };
    tokio::select! {
        r = beat => r,
        () = shutdown_signal() => Ok(()),
    }
}

/// What a running ingest writes every `heartbeat_interval_ms`: alive now,
/// every record folded (nothing else is produced).
async fn heartbeat(con: &mut redis::aio::MultiplexedConnection, keys: &KeySpace) -> Result<()> {
    let now = now_ms();
    let beat = InstanceBeat {
        alive_ms: now,
        fresh_ms: Some(now),
        interval_ms: 1000,
    };
    let () = redis::cmd("HSET")
        .arg(keys.instances())
        .arg("i1")
        .arg(beat.encode())
        .query_async(con)
        .await?;
    Ok(())
}
