//! A log of records for end-to-end tests, produced in order.

use anyhow::{Result, ensure};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::HashMap;

/// One record to produce.
#[derive(Clone, Debug)]
pub struct Rec {
    /// Its topic.
    pub topic: String,
    /// Its key (`None`: no key).
    pub key: Option<Vec<u8>>,
    /// Its value (`None`: a tombstone).
    pub value: Option<Vec<u8>>,
}

/// Produces `log` in order (enqueued one by one, so per-key order is the
/// log's) and checks that the broker kept each key's records in that
/// order; returns the highest offset + 1 per (topic, partition).
pub async fn produce_all(
    producer: &FutureProducer,
    log: &[Rec],
) -> Result<HashMap<(String, i32), i64>> {
    let mut deliveries = Vec::with_capacity(log.len());
    for r in log {
        let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&r.topic);
        if let Some(k) = &r.key {
            rec = rec.key(k.as_slice());
        }
        if let Some(v) = &r.value {
            rec = rec.payload(v.as_slice());
        }
        let delivery = producer.send_result(rec).map_err(|(e, _)| e)?;
        deliveries.push((r.topic.clone(), delivery));
    }
    let mut ends: HashMap<(String, i32), i64> = HashMap::new();
    type TopicKey = (String, Option<Vec<u8>>);
    let mut last_of_key: HashMap<TopicKey, (i32, i64)> = HashMap::new();
    for ((topic, d), r) in deliveries.into_iter().zip(log) {
        let d = d.await?.map_err(|(e, _)| e)?;
        // The test's premise: the broker keeps each key's records in
        // production order.
        if let Some(prev) =
            last_of_key.insert((topic.clone(), r.key.clone()), (d.partition, d.offset))
        {
            ensure!(
                prev.0 != d.partition || prev.1 < d.offset,
                "broker reordered a key: {prev:?} then {:?}",
                (d.partition, d.offset)
            );
        }
        let e = ends.entry((topic, d.partition)).or_insert(0);
        *e = (*e).max(d.offset + 1);
    }
    Ok(ends)
}
