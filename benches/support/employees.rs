//! Generator employees folded by ingest's own decode and fold code straight
//! into Redis (no broker): the data set of the benchmarks that measure what
//! sits in Redis or reads it back, not the pipeline that puts it there.

use anyhow::{Context, Result};
use foldcache::RedisServer;
use foldcache_common::config::Config;
use foldcache_common::keys::KeySpace;
use foldcache_ingest::decode::decode;
use foldcache_ingest::fold::{Folder, PartitionBatch};
use foldcache_ingest::generate::{GenOptions, Generator, Kind};
use foldcache_ingest::source::Sources;

/// The first numeric command-line argument, else `default`.
pub fn count_arg(default: usize) -> usize {
    std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(default)
}

/// A private redis-server holding an empty ready cache (generation 1 of
/// the `fc` key space, a fresh ingest heartbeat), a connection to it and
/// its key space.
pub async fn ready_redis(
    epoch: &str,
) -> Result<(RedisServer, redis::aio::MultiplexedConnection, KeySpace)> {
    let redis = RedisServer::start().await?;
    let mut con = redis.connection().await?;
    let keys = KeySpace::new("fc");
    foldcache::seed_ready_cache(&mut con, &keys, epoch).await?;
    Ok((redis, con, keys))
}

/// Records per fold call, unless `FOLDCACHE_BENCH_BATCH` says.
const BATCH: usize = 500;

/// Records per fold call of this run.
pub fn batch_size() -> usize {
    std::env::var("FOLDCACHE_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(BATCH)
}

/// Bodies [`Folded::sample`] keeps: the first employees' canonical JSON.
const SAMPLE: usize = 10_000;

/// What [`fold_employees`] folded.
#[derive(Debug, Clone)]
pub struct Folded {
    /// Employees folded.
    pub employees: usize,
    /// Bytes of their canonical JSON (the bodies query-api serves).
    pub json_bytes: usize,
    /// The canonical JSON of the first employees (at most 10,000), with
    /// their ids.
    #[allow(
        dead_code,
        reason = "read by redis_memory only; each bench compiles this module on its own"
    )]
    pub sample: Vec<(String, Vec<u8>)>,
}

/// Folds `employees` generator employees (seed 7, 1,000 teams) into
/// generation 1 of `keys`, with `config`'s employees source and indexes.
pub async fn fold_employees(
    con: &mut redis::aio::MultiplexedConnection,
    keys: &KeySpace,
    epoch: &str,
    config: &Config,
    employees: usize,
) -> Result<Folded> {
    let folder = Folder::from_config(keys.clone(), config);
    let sources = Sources::from_config(config)?;
    let topic = config
        .sources
        .iter()
        .find(|s| s.entity == "employees")
        .context("no employees source")?
        .topic
        .clone();
    let source = sources.get(&topic).context("source")?.clone();
    let opts = GenOptions {
        seed: 7,
        employees,
        teams: 1000,
        updates: 0,
        deletes: 0,
    };
    let mut json_bytes = 0usize;
    let mut sample = Vec::new();
    let mut batch = PartitionBatch::new(&topic, 0);
    let mut offset = 0i64;
    let batch_max = batch_size();
    let events = Generator::new(opts)
        .events()
        .filter(|e| e.kind == Kind::Employee);
    for e in events {
        let value = e.value.context("employee without a value")?;
        let body = serde_json::to_vec(&value)?;
        json_bytes += body.len();
        if sample.len() < SAMPLE {
            sample.push((e.key.clone(), body.clone()));
        }
        let d = decode(&source, Some(e.key.as_bytes()), Some(&body), 1 << 20)
            .map_err(|p| anyhow::anyhow!("{p}"))?;
        batch.push(keys, 1, &source, offset, 1_000 + offset, d);
        offset += 1;
        if batch.len() >= batch_max {
            folder.fold(con, epoch, 1, &[batch]).await?;
            batch = PartitionBatch::new(&topic, 0);
        }
    }
    if !batch.is_empty() {
        folder.fold(con, epoch, 1, &[batch]).await?;
    }
    Ok(Folded {
        employees: offset as usize,
        json_bytes,
        sample,
    })
}
