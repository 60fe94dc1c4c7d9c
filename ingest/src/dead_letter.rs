//! The dead-letter topic: poison records are copied there, key and value
//! untouched, with the reason and their origin in headers, and acknowledged
//! by the broker before their partition's offset moves past them.
//!
//! A record too big for the dead-letter topic is replaced by an *envelope*
//! that fits: a JSON object with the reason, the origin, the sizes, the
//! SHA-256 and the first bytes of key and value. Nothing vanishes without a
//! trace, and nothing too big can stall its partition.
//!
//! At start, [`ensure_topic`] checks that the topic exists, creates it when
//! `kafka.dead_letter_create` allows, and otherwise refuses to start.

use crate::kafka::{ClientKind, kafka_client_config};
use base64::Engine as _;
use foldcache_common::config::Config;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use sha2::{Digest, Sha256};
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
    /// `true` when the value is an envelope standing for a record too big
    /// for the dead-letter topic.
    pub const ENVELOPE: &str = "foldcache.envelope";
}

/// Bytes of key and value an envelope keeps.
const ENVELOPE_HEAD_BYTES: usize = 1024;

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

impl DeadLetter {
    fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len)
            + self.value.as_ref().map_or(0, Vec::len)
            + self.error.len()
            + self.topic.len()
            + 256
    }

    /// The envelope standing for this record: origin, sizes, hashes and the
    /// first bytes, as JSON.
    pub fn envelope(&self) -> Vec<u8> {
        let part = |b: &Option<Vec<u8>>| match b {
            None => serde_json::Value::Null,
            Some(b) => serde_json::json!({
                "size": b.len(),
                "sha256": hex(&Sha256::digest(b)),
                "head_base64": base64::engine::general_purpose::STANDARD
                    .encode(&b[..b.len().min(ENVELOPE_HEAD_BYTES)]),
            }),
        };
        let error: String = self.error.chars().take(ENVELOPE_HEAD_BYTES).collect();
        serde_json::to_vec(&serde_json::json!({
            "foldcache_envelope": 1,
            "reason": self.reason,
            "error": error,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "key": part(&self.key),
            "value": part(&self.value),
        }))
        .unwrap_or_default()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a dead letter could not be sent (the caller retries).
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The dead-letter topic does not exist (any more).
    #[error("dead-letter topic {0:?} does not exist")]
    NoTopic(String),
    /// The broker refused or could not be reached.
    #[error("dead-letter produce failed: {0}")]
    Kafka(KafkaError),
}

impl SendError {
    /// A short, stable reason for stall reports and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            SendError::NoTopic(_) => "dead_letter_topic_missing",
            SendError::Kafka(_) => "dead_letter_produce",
        }
    }
}

/// Sends dead letters.
#[derive(Clone)]
pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
    max_bytes: usize,
    /// Set when `kafka.dead_letter_create` allows ingest to create the topic
    /// again if it disappears while ingest runs.
    recreate: Option<std::sync::Arc<Config>>,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl DeadLetters {
    /// Wraps a producer writing to `topic`; letters over `max_bytes` go as
    /// envelopes.
    pub fn new(producer: FutureProducer, topic: String, max_bytes: usize) -> Self {
        Self {
            producer,
            topic,
            max_bytes,
            recreate: None,
        }
    }

    /// Lets [`DeadLetters::send`] create the topic again (as at start, with
    /// [`ensure_topic`]) when the broker says it does not exist, if
    /// `kafka.dead_letter_create` is set.
    pub fn recreating_with(mut self, config: &Config) -> Self {
        self.recreate = config
            .kafka
            .dead_letter_create
            .then(|| std::sync::Arc::new(config.clone()));
        self
    }

    /// Sends one letter and waits for the broker's acknowledgement. A letter
    /// too big for the topic (by the configured limit, or by the producer's
    /// or broker's answer) is sent as its envelope instead.
    pub async fn send(&self, l: &DeadLetter) -> Result<(), SendError> {
        match self.send_once(l).await {
            Err(SendError::NoTopic(topic)) => {
                let Some(config) = &self.recreate else {
                    return Err(SendError::NoTopic(topic));
                };
                tracing::warn!(%topic, "the dead-letter topic disappeared; creating it again");
                if let Err(e) = ensure_topic(config).await {
                    tracing::warn!(%topic, error = %format!("{e:#}"), "could not create the dead-letter topic");
                    return Err(SendError::NoTopic(topic));
                }
                self.send_once(l).await
            }
            other => other,
        }
    }

    async fn send_once(&self, l: &DeadLetter) -> Result<(), SendError> {
        let oversized = l.size() > self.max_bytes;
        let result = if oversized {
            self.produce(l, true).await
        } else {
            match self.produce(l, false).await {
                Err(SendError::Kafka(e)) if too_big(&e) => self.produce(l, true).await,
                other => other,
            }
        };
        result?;
        metrics::counter!("foldcache_ingest_dead_letters_total",
            "topic" => l.topic.clone(), "reason" => l.reason)
        .increment(1);
        tracing::warn!(topic = %l.topic, partition = l.partition, offset = l.offset,
            reason = l.reason, error = %l.error, envelope = oversized, "record dead-lettered");
        Ok(())
    }

    async fn produce(&self, l: &DeadLetter, envelope: bool) -> Result<(), SendError> {
        let partition = l.partition.to_string();
        let offset = l.offset.to_string();
        let error: String = l.error.chars().take(ENVELOPE_HEAD_BYTES).collect();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: header::REASON,
                value: Some(l.reason),
            })
            .insert(Header {
                key: header::ERROR,
                value: Some(error.as_str()),
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
            })
            .insert(Header {
                key: header::ENVELOPE,
                value: Some(if envelope { "true" } else { "false" }),
            });
        let body;
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.topic).headers(headers);
        if envelope {
            body = l.envelope();
            record = record.payload(body.as_slice());
            if let Some(k) = l.key.as_ref().filter(|k| k.len() <= ENVELOPE_HEAD_BYTES) {
                record = record.key(k.as_slice());
            }
        } else {
            if let Some(k) = &l.key {
                record = record.key(k.as_slice());
            }
            if let Some(v) = &l.value {
                record = record.payload(v.as_slice());
            }
        }
        match self.producer.send(record, Duration::from_secs(30)).await {
            Ok(_) => Ok(()),
            Err((e, _)) if missing_topic(&e) => Err(SendError::NoTopic(self.topic.clone())),
            Err((e, _)) => Err(SendError::Kafka(e)),
        }
    }
}

fn too_big(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidRecord
        )
    )
}

fn missing_topic(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic)
    )
}

/// Makes sure the dead-letter topic exists before ingest consumes anything:
/// creates it if `kafka.dead_letter_create` allows, else fails with one line
/// naming the topic and how to create it.
pub async fn ensure_topic(config: &Config) -> anyhow::Result<()> {
    let topic = config.kafka.dead_letter_topic.clone();
    let exists = {
        let cc = kafka_client_config(config, ClientKind::Admin);
        let t = topic.clone();
        tokio::task::spawn_blocking(move || topic_exists(&cc, &t)).await??
    };
    if exists {
        return Ok(());
    }
    let how = "create it (`ingest --config <file> create-topics`, or your broker's tools: cleanup.policy=delete), \
         or set kafka.dead_letter_create = true and allow ingest to create topics";
    if !config.kafka.dead_letter_create {
        anyhow::bail!("the dead-letter topic {topic:?} does not exist: {how}");
    }
    let admin: AdminClient<DefaultClientContext> = kafka_client_config(config, ClientKind::Admin)
        .create()
        .map_err(|e| anyhow::anyhow!("creating the Kafka admin client: {e}"))?;
    let new = NewTopic::new(
        &topic,
        config.kafka.dead_letter_partitions,
        TopicReplication::Fixed(config.kafka.dead_letter_replication_factor),
    )
    .set("cleanup.policy", "delete");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics([&new], &opts).await.map_err(|e| {
        anyhow::anyhow!(
            "the dead-letter topic {topic:?} does not exist and creating it failed ({e}): {how}"
        )
    })?;
    for r in results {
        match r {
            Ok(_) => tracing::info!(%topic, "dead-letter topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => anyhow::bail!(
                "the dead-letter topic {topic:?} does not exist and creating it failed ({code}): {how}"
            ),
        }
    }
    Ok(())
}

fn topic_exists(cc: &rdkafka::ClientConfig, topic: &str) -> anyhow::Result<bool> {
    let mut cc = cc.clone();
    // Metadata for one topic must not create it on brokers that auto-create.
    cc.set("allow.auto.create.topics", "false");
    let consumer: BaseConsumer = cc
        .create()
        .map_err(|e| anyhow::anyhow!("creating a Kafka client: {e}"))?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .map_err(|e| {
            anyhow::anyhow!("reading broker metadata for the dead-letter topic {topic:?}: {e}")
        })?;
    Ok(md
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_is_small_and_names_the_record() {
        let l = DeadLetter {
            topic: "hr.employees".into(),
            partition: 2,
            offset: 77,
            key: Some(vec![b'k'; 3_000_000]),
            value: Some(vec![b'v'; 1_500_000]),
            reason: "too_large",
            error: "value of 1500000 bytes exceeds the limit".into(),
        };
        let env = l.envelope();
        assert!(env.len() < 8 * 1024, "{}", env.len());
        let v: serde_json::Value = serde_json::from_slice(&env).expect("json");
        assert_eq!(v["offset"], 77);
        assert_eq!(v["value"]["size"], 1_500_000);
        assert_eq!(v["key"]["size"], 3_000_000);
        assert_eq!(v["value"]["sha256"].as_str().map(str::len), Some(64));
    }
}
