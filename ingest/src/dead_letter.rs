//! The dead-letter topic: poison records are copied there, key and value
//! untouched, with the reason and their origin in headers, and acknowledged
//! by the broker before their partition's offset moves past them.

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::time::Duration;

/// Header names on dead-lettered records.
pub mod header {
    /// Low-cardinality reason code (`invalid_json`, `invalid_id`, ...).
    pub const REASON: &str = "foldcache.reason";
    /// Human-readable reason; never quotes the value.
    pub const ERROR: &str = "foldcache.error";
    /// Origin topic.
    pub const TOPIC: &str = "foldcache.topic";
    /// Origin partition.
    pub const PARTITION: &str = "foldcache.partition";
    /// Origin offset.
    pub const OFFSET: &str = "foldcache.offset";
}

/// A poison record, owned, waiting to be dead-lettered.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Origin topic.
    pub topic: String,
    /// Origin partition.
    pub partition: i32,
    /// Origin offset.
    pub offset: i64,
    /// Original key.
    pub key: Option<Vec<u8>>,
    /// Original value.
    pub value: Option<Vec<u8>>,
    /// Reason code.
    pub reason: &'static str,
    /// Reason text.
    pub error: String,
}

/// Sends dead letters.
#[derive(Clone)]
pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl DeadLetters {
    /// Wraps a producer writing to `topic`.
    pub fn new(producer: FutureProducer, topic: String) -> Self {
        Self { producer, topic }
    }

    /// Sends every letter and waits for the broker's acknowledgement,
    /// retrying until it comes: a poison record is never dropped.
    pub async fn send_all(&self, letters: &[DeadLetter]) {
        let sends = letters.iter().map(|l| self.send_one(l));
        futures::future::join_all(sends).await;
    }

    async fn send_one(&self, l: &DeadLetter) {
        let partition = l.partition.to_string();
        let offset = l.offset.to_string();
        let mut backoff = Duration::from_millis(100);
        loop {
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: header::REASON,
                    value: Some(l.reason),
                })
                .insert(Header {
                    key: header::ERROR,
                    value: Some(l.error.as_str()),
                })
                .insert(Header {
                    key: header::TOPIC,
                    value: Some(l.topic.as_str()),
                })
                .insert(Header {
                    key: header::PARTITION,
                    value: Some(partition.as_str()),
                })
                .insert(Header {
                    key: header::OFFSET,
                    value: Some(offset.as_str()),
                });
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&self.topic).headers(headers);
            if let Some(k) = &l.key {
                record = record.key(k.as_slice());
            }
            if let Some(v) = &l.value {
                record = record.payload(v.as_slice());
            }
            match self.producer.send(record, Duration::from_secs(30)).await {
                Ok(_) => {
                    metrics::counter!("foldcache_ingest_dead_letters_total",
                        "topic" => l.topic.clone(), "reason" => l.reason)
                    .increment(1);
                    tracing::warn!(topic = %l.topic, partition = l.partition, offset = l.offset,
                        reason = l.reason, error = %l.error, "record dead-lettered");
                    return;
                }
                Err((e, _)) => {
                    tracing::error!(topic = %l.topic, partition = l.partition, offset = l.offset,
                        error = %e, "dead-letter produce failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}
