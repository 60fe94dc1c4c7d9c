//! Produces generated events to the configured source topics.

use crate::generate::{Event, Kind};
use crate::generate_merger::Record;
use crate::kafka::{ClientKind, kafka_client_config};
use anyhow::Context as _;
use foldcache_common::config::Config;
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct Deliveries {
    failed: AtomicU64,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            tracing::error!(error = %e, "delivery failed");
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The topic that feeds `kind`'s entity: the first configured source for it.
pub fn topic_for(config: &Config, kind: Kind) -> anyhow::Result<&str> {
    config
        .sources
        .iter()
        .find(|s| s.entity == kind.entity())
        .map(|s| s.topic.as_str())
        .with_context(|| format!("no source topic feeds entity {}", kind.entity()))
}

/// Produces `events` in order (idempotent producer, so per-key order holds
/// through retries), at most `rate` per second when `rate > 0`, and waits for
/// every delivery. Returns how many were produced. Blocking: call it from a
/// blocking thread.
pub fn produce(
    config: &Config,
    events: impl Iterator<Item = Event>,
    rate: u64,
) -> anyhow::Result<u64> {
    let topics = [Kind::Employee, Kind::Team, Kind::Permission]
        .map(|k| topic_for(config, k).map(str::to_owned));
    let records = events.map(|e| {
        let topic = match e.kind {
            Kind::Employee => &topics[0],
            Kind::Team => &topics[1],
            Kind::Permission => &topics[2],
        };
        let topic = topic.as_ref().map_err(|why| anyhow::anyhow!("{why}"))?;
        let payload = e.value.map(|v| v.to_string().into_bytes());
        Ok((topic.clone(), e.key, payload))
    });
    produce_records(config, records, rate)
}

/// Like [`produce`], for records already addressed to their topics; the
/// first `Err` stops it.
pub fn produce_records(
    config: &Config,
    records: impl Iterator<Item = anyhow::Result<Record>>,
    rate: u64,
) -> anyhow::Result<u64> {
    let producer: ThreadedProducer<Deliveries> = kafka_client_config(config, ClientKind::Producer)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "200000")
        .create_with_context(Deliveries::default())
        .context("creating the producer")?;
    let start = Instant::now();
    let mut sent = 0u64;
    for record in records {
        let (topic, key, payload) = record?;
        let mut record: BaseRecord<'_, str, [u8]> = BaseRecord::to(&topic).key(key.as_str());
        if let Some(p) = &payload {
            record = record.payload(p.as_slice());
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((e, _)) => return Err(e).context("producing an event"),
            }
        }
        sent += 1;
        if rate > 0 {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .context("flushing the producer")?;
    let failed = producer.context().failed.load(Ordering::Relaxed);
    anyhow::ensure!(failed == 0, "{failed} of {sent} events were not delivered");
    Ok(sent)
}
