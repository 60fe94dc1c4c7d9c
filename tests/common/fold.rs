//! Records folded by ingest's own decode and fold code, without a broker:
//! the one loop every test that writes Redis directly shares.

use anyhow::Result;
use foldcache_common::keys::KeySpace;
use foldcache_ingest::decode::decode;
use foldcache_ingest::fold::PartitionBatch;
use foldcache_ingest::source::Source;
use serde_json::Value;

/// One partition batch of `source`'s topic (partition 0, generation 1):
/// `records` (key, state or `None` for a tombstone) at offsets from
/// `*offset` on, which moves past them. Every record has time 1,000 ms.
pub fn batch(
    keys: &KeySpace,
    source: &Source,
    offset: &mut i64,
    records: &[(&str, Option<Value>)],
) -> Result<PartitionBatch> {
    let mut batch = PartitionBatch::new(&source.topic, 0);
    for (key, v) in records {
        let value = v.as_ref().map(Value::to_string);
        let d = decode(
            source,
            Some(key.as_bytes()),
            value.as_deref().map(str::as_bytes),
            1 << 20,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        batch.push(keys, 1, source, *offset, 1_000, d);
        *offset += 1;
    }
    Ok(batch)
}

/// A private redis-server holding an empty ready cache (generation 1 of the
/// `fc` key space, guarded by `epoch`), a connection to it and the key space.
pub async fn ready_cache(
    epoch: &str,
) -> Result<(
    foldcache::RedisServer,
    redis::aio::MultiplexedConnection,
    KeySpace,
)> {
    let redis = foldcache::RedisServer::start().await?;
    let mut con = redis.connection().await?;
    let keys = KeySpace::new("fc");
    foldcache::seed_ready_cache(&mut con, &keys, epoch).await?;
    Ok((redis, con, keys))
}
