//! Reading and re-driving the dead-letter topic (`ingest dead-letters
//! list|show|redrive`, and the console's dead-letters page).
//!
//! A dead letter is described by its metadata only ([`Letter`]): where it
//! sits on the dead-letter topic, where it came from (the
//! `foldcache.topic/partition/offset` headers), its reason and error, its
//! key, and the size and SHA-256 of its value. The value itself is never
//! shown or logged: it may hold HR data. For an envelope (a record too big
//! to dead-letter whole, see `dead_letter.rs`) size and hash are the
//! original record's, from the envelope.
//!
//! Reading: Tansu 0.6.0 answers a fetch from inside a batch with the next
//! batch only, so single records are never fetched by offset: every
//! partition is read from its beginning to the end its fetches report
//! (`enable.partition.eof`). Dead-letter topics are small and
//! `cleanup.policy=delete`.
//!
//! Re-driving produces a letter's original key and value to its origin
//! topic and partition again (or to `--to TOPIC`), after the upstream or
//! config fix, refusing:
//! - envelopes (the original value was not kept);
//! - records that would still fail decoding under the current config;
//! - records the cache has already superseded: the entity's `_fc:src` is a
//!   later offset of the same partition (which also makes a second redrive
//!   of the same letter a refusal once the first one is folded).

use crate::dead_letter::header;
use crate::decode::{Limits, decode_within};
use crate::kafka::{ClientKind, kafka_client_config};
use crate::source::{Source, Sources};
use base64::Engine as _;
use foldcache_common::config::Config;
use foldcache_common::keys::{KeySpace, META_SOURCE, state_field};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Header on a re-driven record: the dead letter it came from,
/// `{dead-letter topic}/{partition}/{offset}`.
pub const REDRIVEN_FROM: &str = "foldcache.redriven_from";

/// Longest shown key, in characters.
const KEY_SHOWN_CHARS: usize = 128;

/// How long a read of the whole topic may go without any answer.
const SILENCE: Duration = Duration::from_secs(30);

/// One record of the dead-letter topic, as read (value included: only the
/// redrive uses it).
#[derive(Clone)]
pub struct Raw {
    /// Partition on the dead-letter topic.
    pub partition: i32,
    /// Offset on the dead-letter topic.
    pub offset: i64,
    /// Record timestamp, ms.
    pub timestamp_ms: Option<i64>,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value (possibly HR data: never shown).
    pub value: Option<Vec<u8>>,
    /// Headers.
    pub headers: Vec<(String, String)>,
}

impl std::fmt::Debug for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Raw")
            .field("partition", &self.partition)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

impl Raw {
    fn from_message(m: &impl rdkafka::Message) -> Self {
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|x| {
                        (
                            x.key.to_owned(),
                            x.value
                                .map(|v| String::from_utf8_lossy(v).into_owned())
                                .unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Size and SHA-256 of a key or value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Digest256 {
    /// Bytes.
    pub size: u64,
    /// Lower-case hex SHA-256.
    pub sha256: String,
}

impl Digest256 {
    fn of(b: &[u8]) -> Self {
        Self {
            size: b.len() as u64,
            sha256: hex(&Sha256::digest(b)),
        }
    }

    fn from_envelope(v: &serde_json::Value) -> Option<Self> {
        Some(Self {
            size: v["size"].as_u64()?,
            sha256: v["sha256"].as_str()?.to_owned(),
        })
    }
}

/// A dead letter's metadata: everything but the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Letter {
    /// Partition on the dead-letter topic.
    pub partition: i32,
    /// Offset on the dead-letter topic.
    pub offset: i64,
    /// When it was dead-lettered, ms.
    pub timestamp_ms: Option<i64>,
    /// Reason code (`invalid_json`, ...).
    pub reason: String,
    /// Reason text (never quotes the value).
    pub error: String,
    /// Origin topic.
    pub origin_topic: String,
    /// Origin partition.
    pub origin_partition: Option<i32>,
    /// Origin offset.
    pub origin_offset: Option<i64>,
    /// The key, as text (lossy UTF-8, control characters escaped, at most
    /// 128 characters); `None` for a record without key.
    pub key: Option<String>,
    /// The original key's size and hash.
    pub key_digest: Option<Digest256>,
    /// The original value's size and hash (`None`: a null value).
    pub value_digest: Option<Digest256>,
    /// The record on the topic is an envelope standing for the original.
    pub envelope: bool,
}

impl Letter {
    /// `partition:offset` on the dead-letter topic.
    pub fn position(&self) -> String {
        format!("{}:{}", self.partition, self.offset)
    }

    /// `topic/partition/offset` of the original record.
    pub fn origin(&self) -> String {
        format!(
            "{}/{}/{}",
            self.origin_topic,
            self.origin_partition.map_or("?".into(), |p| p.to_string()),
            self.origin_offset.map_or("?".into(), |o| o.to_string())
        )
    }

    /// Describes `raw` without its value.
    pub fn of(raw: &Raw) -> Self {
        let envelope = raw.header(header::ENVELOPE) == Some("true");
        let env: Option<serde_json::Value> = envelope
            .then(|| {
                raw.value
                    .as_deref()
                    .and_then(|v| serde_json::from_slice(v).ok())
            })
            .flatten();
        let (key_digest, value_digest) = match &env {
            Some(e) => (
                Digest256::from_envelope(&e["key"]),
                Digest256::from_envelope(&e["value"]),
            ),
            None => (
                raw.key.as_deref().map(Digest256::of),
                raw.value.as_deref().map(Digest256::of),
            ),
        };
        let key = raw.key.as_deref().map(shown_key).or_else(|| {
            // An envelope keeps only a short key; a longer one is in its
            // first bytes.
            env.as_ref()
                .and_then(|e| e["key"]["head_base64"].as_str())
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .map(|k| shown_key(&k))
        });
        Self {
            partition: raw.partition,
            offset: raw.offset,
            timestamp_ms: raw.timestamp_ms,
            reason: raw.header(header::REASON).unwrap_or("unknown").to_owned(),
            error: raw.header(header::ERROR).unwrap_or_default().to_owned(),
            origin_topic: raw.header(header::TOPIC).unwrap_or_default().to_owned(),
            origin_partition: raw.header(header::PARTITION).and_then(|p| p.parse().ok()),
            origin_offset: raw.header(header::OFFSET).and_then(|o| o.parse().ok()),
            key,
            key_digest,
            value_digest,
            envelope,
        }
    }
}

/// A key for display: lossy UTF-8, control characters escaped, shortened.
fn shown_key(k: &[u8]) -> String {
    let text = String::from_utf8_lossy(k);
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == KEY_SHOWN_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `2026-11-01 12:00:03Z` for a time in ms since the Unix epoch (UTC).
pub fn format_utc_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Counts per reason and the latest letters of each reason.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Letters read.
    pub total: u64,
    /// Per reason code.
    pub reasons: BTreeMap<String, ReasonSummary>,
    /// Whether the whole topic has been read once (the console's follower
    /// says `false` while it catches up).
    pub complete: bool,
}

/// One reason's letters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReasonSummary {
    /// How many.
    pub count: u64,
    /// The latest, newest first.
    pub latest: VecDeque<Letter>,
}

impl Summary {
    /// Adds one letter, keeping `keep` latest per reason.
    pub fn add(&mut self, l: Letter, keep: usize) {
        self.total += 1;
        let r = self.reasons.entry(l.reason.clone()).or_default();
        r.count += 1;
        // Partitions are read concurrently: keep newest first by time, then
        // position.
        let at = r
            .latest
            .iter()
            .position(|x| (x.timestamp_ms, x.offset) < (l.timestamp_ms, l.offset))
            .unwrap_or(r.latest.len());
        r.latest.insert(at, l);
        r.latest.truncate(keep);
    }

    /// Every kept letter, newest first.
    pub fn latest(&self) -> Vec<&Letter> {
        let mut all: Vec<&Letter> = self.reasons.values().flat_map(|r| &r.latest).collect();
        all.sort_by_key(|l| std::cmp::Reverse((l.timestamp_ms, l.partition, l.offset)));
        all
    }
}

/// The dead-letter readers' librdkafka context: the end of a partition is
/// how they know they have read it all (`enable.partition.eof`), which
/// librdkafka also reports as a global error (logged at ERROR by default,
/// once per console start for an empty topic); any other error is logged
/// as before.
#[derive(Debug, Default)]
struct ReaderContext;

impl rdkafka::ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error, KafkaError::Global(RDKafkaErrorCode::PartitionEOF)) {
            tracing::debug!(reason, "dead-letter reader: end of a partition");
        } else {
            tracing::error!(%error, reason, "librdkafka error (dead-letter reader)");
        }
    }
}

impl ConsumerContext for ReaderContext {}

/// A consumer of the dead-letter topic.
type Reader = BaseConsumer<ReaderContext>;

/// A consumer of the dead-letter topic that commits nothing.
fn reader(config: &Config, eof: bool) -> anyhow::Result<Reader> {
    let mut cc: ClientConfig = kafka_client_config(config, ClientKind::Consumer);
    cc.set(
        "group.id",
        format!("foldcache-dead-letters-{:08x}", rand::random::<u32>()),
    )
    .set("enable.auto.commit", "false")
    .set("enable.auto.offset.store", "false")
    .set("auto.offset.reset", "earliest")
    .set("enable.partition.eof", if eof { "true" } else { "false" })
    .set("isolation.level", "read_committed")
    .set("allow.auto.create.topics", "false");
    cc.create_with_context(ReaderContext)
        .map_err(|e| anyhow::anyhow!("creating a Kafka consumer: {e}"))
}

/// The dead-letter topic's partitions, from broker metadata.
fn partitions(consumer: &Reader, topic: &str) -> anyhow::Result<Vec<i32>> {
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .map_err(|e| anyhow::anyhow!("reading broker metadata for {topic:?}: {e}"))?;
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    anyhow::ensure!(
        !parts.is_empty(),
        "the dead-letter topic {topic:?} does not exist (kafka.dead_letter_topic)"
    );
    Ok(parts)
}

fn assign_from_start(consumer: &Reader, topic: &str, parts: &[i32]) -> anyhow::Result<()> {
    let mut tpl = TopicPartitionList::new();
    for p in parts {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    consumer
        .assign(&tpl)
        .map_err(|e| anyhow::anyhow!("assigning {topic:?}: {e}"))
}

/// Reads the whole dead-letter topic, from the beginning of every partition
/// to the end its fetches report, calling `visit` for each record.
/// Blocking: call it from `spawn_blocking`.
pub fn read_all(config: &Config, mut visit: impl FnMut(Raw)) -> anyhow::Result<()> {
    let topic = &config.kafka.dead_letter_topic;
    let consumer = reader(config, true)?;
    let parts = partitions(&consumer, topic)?;
    assign_from_start(&consumer, topic, &parts)?;
    let mut open: HashSet<i32> = parts.into_iter().collect();
    let mut heard = Instant::now();
    while !open.is_empty() {
        match consumer.poll(Duration::from_millis(500)) {
            None => anyhow::ensure!(
                heard.elapsed() < SILENCE,
                "the broker sent nothing from {topic:?} for {} s",
                SILENCE.as_secs()
            ),
            Some(Err(KafkaError::PartitionEOF(p))) => {
                heard = Instant::now();
                open.remove(&p);
            }
            Some(Err(e)) => anyhow::bail!("reading {topic:?}: {e}"),
            Some(Ok(m)) => {
                heard = Instant::now();
                visit(Raw::from_message(&m));
            }
        }
    }
    Ok(())
}

/// The summary of the whole topic, keeping `keep` latest letters per
/// reason.
pub async fn summary(config: &Config, keep: usize) -> anyhow::Result<Summary> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || {
        let mut s = Summary::default();
        read_all(&config, |raw| s.add(Letter::of(&raw), keep))?;
        s.complete = true;
        Ok(s)
    })
    .await?
}

/// The dead letters selected by `selection`, with their values (for a
/// redrive) .
pub async fn select(config: &Config, selection: &Selection) -> anyhow::Result<Vec<Raw>> {
    let (config, selection) = (config.clone(), selection.clone());
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        read_all(&config, |raw| {
            if selection.matches(&Letter::of(&raw)) {
                out.push(raw);
            }
        })?;
        out.sort_by_key(|r| (r.partition, r.offset));
        Ok(out)
    })
    .await?
}

/// Which dead letters an action applies to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Every letter.
    pub all: bool,
    /// Letters of these reasons.
    pub reasons: Vec<String>,
    /// Letters at these `(partition, offset)` positions of the dead-letter
    /// topic.
    pub positions: Vec<(i32, i64)>,
}

impl Selection {
    /// Whether anything is selected at all.
    pub fn is_empty(&self) -> bool {
        !self.all && self.reasons.is_empty() && self.positions.is_empty()
    }

    /// Whether `l` is selected.
    pub fn matches(&self, l: &Letter) -> bool {
        self.all
            || self.reasons.contains(&l.reason)
            || self.positions.contains(&(l.partition, l.offset))
    }
}

/// Parses a dead-letter position `PARTITION:OFFSET`.
pub fn parse_position(s: &str) -> Result<(i32, i64), String> {
    let (p, o) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected PARTITION:OFFSET, e.g. 0:17"))?;
    let p: i32 = p
        .parse()
        .map_err(|_| format!("{s:?}: partition is not a number"))?;
    let o: i64 = o
        .parse()
        .map_err(|_| format!("{s:?}: offset is not a number"))?;
    if p < 0 || o < 0 {
        return Err(format!("{s:?}: partition and offset are never negative"));
    }
    Ok((p, o))
}

/// What a redrive did (or, in a dry run, would do) with one letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Produced again.
    Redriven {
        /// Where to.
        topic: String,
        /// Partition.
        partition: i32,
        /// Offset.
        offset: i64,
    },
    /// Dry run: it would be produced to `topic` (`partition`: the origin's
    /// when re-driven to its own topic).
    WouldRedrive {
        /// Where to.
        topic: String,
        /// Partition, when fixed.
        partition: Option<i32>,
    },
    /// Not re-driven, and why.
    Refused {
        /// Why.
        why: String,
    },
}

/// One letter's redrive.
#[derive(Debug, Clone, Serialize)]
pub struct Redrive {
    /// The letter.
    pub letter: Letter,
    /// What happened.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Re-drives dead letters.
pub struct Redriver {
    sources: Sources,
    limits: Limits,
    keys: KeySpace,
    redis: redis::aio::MultiplexedConnection,
    producer: FutureProducer,
    dead_letter_topic: String,
}

impl std::fmt::Debug for Redriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redriver").finish_non_exhaustive()
    }
}

impl Redriver {
    /// Connects to Redis and makes an idempotent producer.
    pub async fn new(config: &Config, redis: &redis::Client) -> anyhow::Result<Self> {
        let producer: FutureProducer = kafka_client_config(config, ClientKind::Producer)
            .set("enable.idempotence", "true")
            .set(
                "message.max.bytes",
                (config.ingest.max_value_bytes + 65536).to_string(),
            )
            .create()
            .map_err(|e| anyhow::anyhow!("creating a Kafka producer: {e}"))?;
        Ok(Self {
            sources: Sources::from_config(config)?,
            limits: Limits {
                max_value_bytes: config.ingest.max_value_bytes,
                max_members: config.ingest.max_members,
            },
            keys: KeySpace::new(config.redis.key_prefix.clone()),
            redis: redis
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| anyhow::anyhow!("connecting to Redis: {e}"))?,
            producer,
            dead_letter_topic: config.kafka.dead_letter_topic.clone(),
        })
    }

    /// Re-drives each letter of `raws` to its origin topic (or `to`), or in
    /// a dry run says what it would do.
    pub async fn redrive(
        &mut self,
        raws: &[Raw],
        to: Option<&str>,
        dry_run: bool,
    ) -> anyhow::Result<Vec<Redrive>> {
        let mut out = Vec::new();
        // A replay from offset zero (a rebuild, a Redis loss) dead-letters a
        // poison record again: one origin record is produced once.
        let mut origins: HashMap<String, String> = HashMap::new();
        for raw in raws {
            let letter = Letter::of(raw);
            if let Some(first) = origins.get(&letter.origin()) {
                let why = format!(
                    "a copy of {first} (the same origin record, dead-lettered again by a replay)"
                );
                out.push(Redrive {
                    letter,
                    outcome: Outcome::Refused { why },
                });
                continue;
            }
            origins.insert(letter.origin(), letter.position());
            let outcome = match self.check(raw, &letter, to).await? {
                Err(why) => Outcome::Refused { why },
                Ok((topic, partition)) if dry_run => Outcome::WouldRedrive { topic, partition },
                Ok((topic, partition)) => {
                    let (partition, offset) = self.produce(raw, &topic, partition).await?;
                    Outcome::Redriven {
                        topic,
                        partition,
                        offset,
                    }
                }
            };
            out.push(Redrive { letter, outcome });
        }
        Ok(out)
    }

    /// `Ok(Ok((topic, partition)))` where the letter may go; `Ok(Err(why))`
    /// when it must not.
    async fn check(
        &mut self,
        raw: &Raw,
        l: &Letter,
        to: Option<&str>,
    ) -> anyhow::Result<Result<(String, Option<i32>), String>> {
        if l.envelope {
            return Ok(Err(
                "an envelope: the original record was too big to keep; \
                 produce it again from the upstream system"
                    .into(),
            ));
        }
        let topic = to.unwrap_or(&l.origin_topic).to_owned();
        let Some(source) = self
            .sources
            .get(&topic)
            .or_else(|| self.sources.get(&l.origin_topic))
            .cloned()
        else {
            return Ok(Err(format!(
                "neither {topic:?} nor the origin {:?} is a configured source: \
                 its records cannot be checked",
                l.origin_topic
            )));
        };
        // The key alone names the entity (a null value decodes as a delete
        // of it): a superseded record is refused whatever its value.
        if let Ok(d) = decode_within(&source, raw.key.as_deref(), None, self.limits)
            && let Some(why) = self.superseded(&source, d.id(), l).await?
        {
            return Ok(Err(why));
        }
        if let Err(p) = decode_within(
            &source,
            raw.key.as_deref(),
            raw.value.as_deref(),
            self.limits,
        ) {
            return Ok(Err(format!("would still fail: {} ({p})", p.code())));
        }
        let partition = (topic == l.origin_topic)
            .then_some(l.origin_partition)
            .flatten();
        Ok(Ok((topic, partition)))
    }

    /// Whether the live cache already holds a later record of the same
    /// partition for this entity.
    async fn superseded(
        &mut self,
        source: &Source,
        id: &foldcache_common::id::EntityId,
        l: &Letter,
    ) -> anyhow::Result<Option<String>> {
        let live: Option<u64> = redis::cmd("HGET")
            .arg(self.keys.state())
            .arg(state_field::LIVE_GEN)
            .query_async(&mut self.redis)
            .await?;
        let Some(live) = live else { return Ok(None) };
        let src: Option<String> = redis::cmd("HGET")
            .arg(self.keys.entity(live, &source.entity, id))
            .arg(META_SOURCE)
            .query_async(&mut self.redis)
            .await?;
        let Some(src) = src else { return Ok(None) };
        let mut it = src.rsplitn(3, '/');
        let (offset, partition, topic) = (it.next(), it.next(), it.next());
        let later = topic == Some(l.origin_topic.as_str())
            && partition.and_then(|p| p.parse::<i32>().ok()) == l.origin_partition
            && offset
                .and_then(|o| o.parse::<i64>().ok())
                .zip(l.origin_offset)
                .is_some_and(|(held, origin)| held > origin);
        Ok(later.then(|| {
            format!(
                "superseded: the cache holds a later record of this entity ({src}); \
                 re-driving would bring back an older state"
            )
        }))
    }

    async fn produce(
        &self,
        raw: &Raw,
        topic: &str,
        partition: Option<i32>,
    ) -> anyhow::Result<(i32, i64)> {
        let from = format!(
            "{}/{}/{}",
            self.dead_letter_topic, raw.partition, raw.offset
        );
        let headers = OwnedHeaders::new().insert(Header {
            key: REDRIVEN_FROM,
            value: Some(from.as_str()),
        });
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
        if let Some(p) = partition {
            record = record.partition(p);
        }
        if let Some(k) = &raw.key {
            record = record.key(k.as_slice());
        }
        if let Some(v) = &raw.value {
            record = record.payload(v.as_slice());
        }
        let d = self
            .producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("producing to {topic:?}: {e}"))?;
        Ok((d.partition, d.offset))
    }
}

/// The console's live summary of the dead-letter topic, kept by
/// [`follow`].
pub type Live = Arc<Mutex<Summary>>;

/// Letters kept per reason by [`follow`].
pub const FOLLOW_KEEP: usize = 20;

/// Follows the dead-letter topic from its beginning for as long as the
/// task lives, keeping counts per reason and the latest letters (never a
/// value) in `live`. Blocking: run it on its own thread.
pub fn follow(config: &Config, live: &Live) {
    let topic = config.kafka.dead_letter_topic.clone();
    let mut stall = crate::retry::Stall::default();
    loop {
        match follow_once(config, &topic, live, &mut stall) {
            Ok(()) => return,
            Err(e) => {
                if stall.failed("dead_letter_topic") {
                    tracing::warn!(%topic, error = %e, "reading the dead-letter topic for the console failed; retrying");
                }
                std::thread::sleep(Duration::from_secs(2));
            }
        }
    }
}

fn follow_once(
    config: &Config,
    topic: &str,
    live: &Live,
    stall: &mut crate::retry::Stall,
) -> anyhow::Result<()> {
    let consumer = reader(config, true)?;
    let parts = partitions(&consumer, topic)?;
    assign_from_start(&consumer, topic, &parts)?;
    if stall.recovered().is_some() {
        tracing::info!(%topic, "reading the dead-letter topic for the console recovered");
    }
    *crate::progress::lock(live) = Summary::default();
    let mut open: HashSet<i32> = parts.into_iter().collect();
    loop {
        if Arc::strong_count(live) == 1 {
            // Nobody reads the summary any more: the console is gone.
            return Ok(());
        }
        match consumer.poll(Duration::from_millis(500)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
                if open.is_empty() {
                    crate::progress::lock(live).complete = true;
                }
            }
            Some(Err(e)) => anyhow::bail!("{e}"),
            Some(Ok(m)) => {
                let letter = Letter::of(&Raw::from_message(&m));
                crate::progress::lock(live).add(letter, FOLLOW_KEEP);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(offset: i64, reason: &str, envelope: bool, value: &[u8]) -> Raw {
        Raw {
            partition: 0,
            offset,
            timestamp_ms: Some(1_000 + offset),
            key: Some(b"E1\n".to_vec()),
            value: Some(value.to_vec()),
            headers: vec![
                (header::REASON.into(), reason.into()),
                (header::ERROR.into(), "bad".into()),
                (header::TOPIC.into(), "hr.employees".into()),
                (header::PARTITION.into(), "2".into()),
                (header::OFFSET.into(), "77".into()),
                (
                    header::ENVELOPE.into(),
                    if envelope { "true" } else { "false" }.into(),
                ),
            ],
        }
    }

    #[test]
    fn a_letter_has_hashes_and_sizes_never_the_value() {
        let l = Letter::of(&raw(5, "invalid_json", false, b"{secret salary"));
        assert_eq!(l.origin(), "hr.employees/2/77");
        assert_eq!(l.position(), "0:5");
        assert_eq!(l.key.as_deref(), Some("E1\\n"));
        let v = l.value_digest.clone().expect("value");
        assert_eq!(v.size, 14);
        assert_eq!(v.sha256, hex(&Sha256::digest(b"{secret salary")));
        let json = serde_json::to_string(&l).expect("json");
        assert!(!json.contains("secret"), "{json}");
    }

    #[test]
    fn an_envelope_letter_describes_the_original() {
        let dl = crate::dead_letter::DeadLetter {
            topic: "hr.employees".into(),
            partition: 2,
            offset: 77,
            key: Some(b"E1".to_vec()),
            value: Some(vec![b'v'; 2_000_000]),
            reason: "too_large",
            error: "too big".into(),
        };
        let l = Letter::of(&raw(6, "too_large", true, &dl.envelope()));
        assert!(l.envelope);
        assert_eq!(l.value_digest.map(|d| d.size), Some(2_000_000));
        assert_eq!(l.key_digest.map(|d| d.size), Some(2));
        let json = serde_json::to_string(&Letter::of(&raw(6, "too_large", true, &dl.envelope())))
            .expect("json");
        assert!(!json.contains("vvvv"), "no bytes of the value");
    }

    #[test]
    fn the_summary_counts_and_keeps_the_latest_per_reason() {
        let mut s = Summary::default();
        for o in 0..30 {
            s.add(Letter::of(&raw(o, "invalid_json", false, b"x")), 5);
        }
        s.add(Letter::of(&raw(40, "too_large", false, b"x")), 5);
        assert_eq!(s.total, 31);
        let j = &s.reasons["invalid_json"];
        assert_eq!(j.count, 30);
        assert_eq!(
            j.latest.iter().map(|l| l.offset).collect::<Vec<_>>(),
            [29, 28, 27, 26, 25]
        );
        assert_eq!(s.latest()[0].offset, 40);
    }

    #[test]
    fn positions_parse_strictly() {
        assert_eq!(parse_position("0:17"), Ok((0, 17)));
        assert!(parse_position("17").is_err());
        assert!(parse_position("a:1").is_err());
        assert!(parse_position("-1:1").is_err());
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(format_utc_ms(0), "1970-01-01 00:00:00Z");
        assert_eq!(format_utc_ms(1_793_534_403_000), "2026-11-01 12:00:03Z");
        assert_eq!(format_utc_ms(951_825_600_000), "2000-02-29 12:00:00Z");
    }

    #[test]
    fn long_keys_are_shortened() {
        let k = shown_key(&[b'k'; 500]);
        assert_eq!(k.chars().count(), KEY_SHOWN_CHARS + 1);
    }
}
