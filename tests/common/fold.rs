//! Records folded by ingest's own decode and fold code, without a broker:
//! the one loop every test that writes Redis directly shares.

use anyhow::Result;
use foldcache_common::keys::KeySpace;
use foldcache_ingest::decode::decode;
use foldcache_ingest::fold::PartitionBatch;
use foldcache_ingest::source::Source;
use serde_json::Value;

/// One record as the broker delivers it.
pub struct Record<'a> {
    pub key: &'a str,
    /// The value's bytes; `None` is a tombstone.
    pub value: Option<&'a [u8]>,
    pub offset: i64,
    pub timestamp_ms: i64,
}

/// Decodes `record` as ingest does for `source` and adds it to `batch`,
/// for generation `generation`.
pub fn push(
    batch: &mut PartitionBatch,
    keys: &KeySpace,
    generation: u64,
    source: &Source,
    record: Record<'_>,
) -> Result<()> {
    let d = decode(source, Some(record.key.as_bytes()), record.value, 1 << 20)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    batch.push(
        keys,
        generation,
        source,
        record.offset,
        record.timestamp_ms,
        d,
    );
    Ok(())
}

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
        let record = Record {
            key,
            value: value.as_deref().map(str::as_bytes),
            offset: *offset,
            timestamp_ms: 1_000,
        };
        push(&mut batch, keys, 1, source, record)?;
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
