//! The consume loop: Kafka records in, partition batches folded into Redis,
//! offsets stored only after Redis acknowledged them.
//!
//! Offsets live in Redis (`{prefix}:g{gen}:offsets`), written by the same
//! script that writes the data, so they can never disagree with it. On
//! assignment, each partition starts at its Redis offset (or at the beginning
//! if Redis has none); Kafka's committed offsets only mirror them for
//! monitoring. A partition is *caught up* when everything up to the high
//! watermark reported by a fetch response (librdkafka statistics) is folded:
//! ListOffsets is never used, because Tansu 0.6.0 answers it with the last
//! batch's base offset + 1.

use crate::cache_state::{CacheState, EpochLost, StateStore};
use crate::dead_letter::{DeadLetter, DeadLetters};
use crate::decode::{Decoded, decode};
use crate::fold::{FoldError, Folder, PartitionBatch};
use crate::progress::{FetchView, Progress, Tp};
use crate::source::Sources;
use anyhow::Context as _;
use foldcache_common::config::{Config, ResumeMode};
use foldcache_common::keys::{InstanceBeat, KeySpace};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::FutureProducer;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientContext, Timestamp};
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// State shared between the consume loop and librdkafka's callbacks.
#[derive(Debug)]
pub struct IngestContext {
    state: StateStore,
    redis: redis::Client,
    generation: u64,
    /// Assigned partitions: folded position, fetch views, freshness.
    progress: Mutex<Progress>,
    /// Where assigned partitions start reading.
    resume: ResumeMode,
    /// Set when an assignment could not read its offsets from Redis: the loop
    /// stops rather than consume from a guessed position.
    assign_failed: AtomicBool,
}

impl ClientContext for IngestContext {
    fn stats(&self, stats: Statistics) {
        let now = now_ms();
        let mut progress = lock(&self.progress);
        for (topic, t) in &stats.topics {
            for (p, s) in &t.partitions {
                if *p < 0 || s.hi_offset < 0 {
                    continue;
                }
                let view = FetchView {
                    hi: s.hi_offset,
                    next_fetch: s.next_offset,
                    queued: s.fetchq_cnt,
                    app_offset: s.app_offset,
                };
                progress.observe(&(topic.clone(), *p), view, now);
            }
        }
    }
}

impl ConsumerContext for IngestContext {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                // A short synchronous Redis read inside librdkafka's rebalance
                // callback: rebalances are rare and the read is bounded by its
                // timeout; consuming from a wrong offset would be worse.
                match self.start_offsets(tpl) {
                    Ok((with_offsets, starts)) => {
                        if let Err(e) = consumer.assign(&with_offsets) {
                            tracing::error!(error = %e, "re-assigning with Redis offsets failed");
                            self.assign_failed.store(true, Ordering::SeqCst);
                            return;
                        }
                        for ((t, p), off) in &starts {
                            tracing::info!(topic = %t, partition = p, offset = off, "partition assigned");
                        }
                        let mut progress = lock(&self.progress);
                        for (tp, start) in starts {
                            progress.assign(tp, start);
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "reading start offsets from Redis failed");
                        self.assign_failed.store(true, Ordering::SeqCst);
                    }
                }
            }
            Rebalance::Revoke(tpl) => {
                let mut progress = lock(&self.progress);
                for e in tpl.elements() {
                    tracing::info!(
                        topic = e.topic(),
                        partition = e.partition(),
                        "partition revoked"
                    );
                    progress.revoke(&(e.topic().to_owned(), e.partition()));
                }
            }
            Rebalance::Error(e) => tracing::error!(error = %e, "rebalance error"),
        }
    }
}

impl IngestContext {
    fn start_offsets(
        &self,
        tpl: &TopicPartitionList,
    ) -> anyhow::Result<(TopicPartitionList, Vec<(Tp, i64)>)> {
        let mut con = self
            .redis
            .get_connection_with_timeout(Duration::from_secs(5))?;
        con.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut out = TopicPartitionList::new();
        let mut starts = Vec::new();
        for e in tpl.elements() {
            let stored =
                self.state
                    .stored_offset(&mut con, self.generation, e.topic(), e.partition())?;
            let offset = match (self.resume, stored) {
                (ResumeMode::Seek, Some(o)) => Offset::Offset(o),
                _ => Offset::Beginning,
            };
            out.add_partition_offset(e.topic(), e.partition(), offset)?;
            starts.push(((e.topic().to_owned(), e.partition()), stored.unwrap_or(0)));
        }
        Ok((out, starts))
    }

    /// Partitions whose every record up to a fetch-reported end is folded.
    fn caught_up(&self) -> Vec<(String, i32, i64)> {
        lock(&self.progress)
            .caught_up()
            .into_iter()
            .map(|((t, p), pos)| (t, p, pos))
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these short locks leaves plain maps behind;
    // continuing with them is safe.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Why a consume loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Shutdown,
    EpochLost,
}

/// A running ingest: configuration plus the long-lived clients.
#[derive(Debug)]
pub struct Ingest {
    config: Config,
    sources: Sources,
    keys: KeySpace,
    folder: Folder,
    state: StateStore,
    redis: redis::Client,
    ready: watch::Sender<bool>,
    /// Random id of this process, for its heartbeat.
    instance: String,
    /// CDN purge hook.
    purger: std::sync::OnceLock<crate::purge::Purger>,
}

impl Ingest {
    /// Validates the config and opens the Redis client (no I/O yet).
    pub fn new(config: Config) -> anyhow::Result<Self> {
        let sources = Sources::from_config(&config)?;
        let keys = KeySpace::new(config.redis.key_prefix.clone());
        let redis = redis::Client::open(config.redis.url.expose().as_str())
            .context("redis.url is not a valid Redis URL")?;
        Ok(Self {
            folder: Folder::new(keys.clone()),
            state: StateStore::new(keys.clone()),
            sources,
            keys,
            redis,
            config,
            ready: watch::channel(false).0,
            instance: format!("{:016x}", rand::random::<u64>()),
            purger: std::sync::OnceLock::new(),
        })
    }

    /// Whether the cache is ready (for `/readyz`).
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// Runs until `shutdown` resolves: drains the current batch, stores its
    /// offsets, and returns.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        let mut con = tokio::select! {
            c = self.connect() => c,
            () = &mut shutdown => return Ok(()),
        };
        let purger = crate::purge::Purger::start(&self.config.ingest.purge)?;
        let _ = self.purger.set(purger);
        let refresher = tokio::spawn(
            crate::ttl_refresh::TtlRefresher::new(&self.config, &self.instance).run(con.clone()),
        );
        let _stop_refresher = AbortOnDrop(refresher);
        loop {
            let state = tokio::select! {
                s = retry("initialising the cache state", || {
                    let (mut c, st) = (con.clone(), self.state.clone());
                    async move { st.init(&mut c).await }
                }) => s,
                () = &mut shutdown => return Ok(()),
            };
            tracing::info!(epoch = %state.epoch, generation = state.live_gen, ready = state.ready, "cache state");
            self.ready.send_replace(state.ready);
            match self.consume(&state, &mut con, &mut shutdown).await? {
                Exit::Shutdown => {
                    if let Err(e) = self.state.retire(&mut con, &self.instance, now_ms()).await {
                        tracing::warn!(error = %e, "removing this instance's heartbeat failed");
                    }
                    return Ok(());
                }
                Exit::EpochLost => {
                    tracing::warn!(
                        "Redis lost foldcache's data (cache epoch gone): replaying every topic from offset zero"
                    );
                    metrics::counter!("foldcache_ingest_redis_losses_total").increment(1);
                    self.ready.send_replace(false);
                }
            }
        }
    }

    async fn connect(&self) -> redis::aio::ConnectionManager {
        retry("connecting to Redis", || {
            redis::aio::ConnectionManager::new(self.redis.clone())
        })
        .await
    }

    fn consumer(&self, state: &CacheState) -> anyhow::Result<Arc<StreamConsumer<IngestContext>>> {
        let ctx = IngestContext {
            state: self.state.clone(),
            redis: self.redis.clone(),
            generation: state.live_gen,
            resume: self.config.ingest.resume,
            progress: Mutex::new(Progress::default()),
            assign_failed: AtomicBool::new(false),
        };
        let mut cc = kafka_client_config(&self.config);
        cc.set("group.id", &self.config.kafka.group_id)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("statistics.interval.ms", "200");
        let consumer: StreamConsumer<IngestContext> = cc
            .create_with_context(ctx)
            .context("creating the Kafka consumer")?;
        consumer
            .subscribe(&self.sources.topics())
            .context("subscribing to the source topics")?;
        Ok(Arc::new(consumer))
    }

    /// One consumer's life: until shutdown or until Redis loses our epoch.
    async fn consume(
        &self,
        state: &CacheState,
        con: &mut redis::aio::ConnectionManager,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> anyhow::Result<Exit> {
        let consumer = self.consumer(state)?;
        let dead = DeadLetters::new(
            kafka_client_config(&self.config)
                .set("linger.ms", "5")
                .create::<FutureProducer>()
                .context("creating the dead-letter producer")?,
            self.config.kafka.dead_letter_topic.clone(),
        );
        let ingest_cfg = &self.config.ingest;
        let linger = Duration::from_millis(ingest_cfg.batch_linger_ms);
        let mut batch = Batch::default();
        let mut ready = state.ready;
        let mut all_partitions: Vec<Tp> = Vec::new();
        let mut partitions_checked = Instant::now() - Duration::from_secs(3600);
        let mut marked: HashSet<Tp> = HashSet::new();
        let mut tick = tokio::time::interval(Duration::from_millis(
            ingest_cfg.heartbeat_interval_ms.clamp(50, 200),
        ));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heartbeat = Instant::now() - Duration::from_secs(3600);
        let heartbeat_every = Duration::from_millis(ingest_cfg.heartbeat_interval_ms);

        let exit = loop {
            if consumer.context().assign_failed.load(Ordering::SeqCst) {
                anyhow::bail!("could not read partition offsets from Redis during a rebalance");
            }
            let deadline = batch
                .started
                .map(|s| tokio::time::Instant::from_std(s + linger));
            tokio::select! {
                biased;
                () = &mut *shutdown => break Exit::Shutdown,
                () = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await },
                    if deadline.is_some() =>
                {
                    if self.flush(&consumer, &dead, con, state, &mut batch).await? == Some(EpochLost) {
                        break Exit::EpochLost;
                    }
                }
                msg = consumer.recv(), if batch.records < ingest_cfg.batch_max_events => {
                    match msg {
                        Ok(m) => self.add(consumer.context(), &mut batch, state, &m),
                        Err(e) => log_kafka_error(&e),
                    }
                    if batch.records >= ingest_cfg.batch_max_events
                        && self.flush(&consumer, &dead, con, state, &mut batch).await? == Some(EpochLost)
                    {
                        break Exit::EpochLost;
                    }
                }
                _ = tick.tick() => {
                    if last_heartbeat.elapsed() >= heartbeat_every {
                        last_heartbeat = Instant::now();
                        let now = now_ms();
                        let beat = InstanceBeat {
                            alive_ms: now,
                            fresh_ms: lock(&consumer.context().progress).fresh_ms(now),
                            interval_ms: heartbeat_every.as_millis() as i64,
                        };
                        match self.state.heartbeat(&mut con.clone(), &state.epoch, &self.instance, beat).await {
                            Ok(Err(EpochLost)) => break Exit::EpochLost,
                            Ok(Ok(())) => {}
                            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
                        }
                        let lags = lock(&consumer.context().progress).lag();
                        for ((t, p), lag) in lags {
                            metrics::gauge!("foldcache_ingest_partition_lag", "topic" => t, "partition" => p.to_string()).set(lag as f64);
                        }
                    }
                    if !ready {
                        if partitions_checked.elapsed() > Duration::from_secs(5) || all_partitions.is_empty() {
                            all_partitions = self.all_partitions(&consumer).await.unwrap_or_default();
                            partitions_checked = Instant::now();
                        }
                        let newly: Vec<_> = consumer.context().caught_up().into_iter()
                            .filter(|(t, p, _)| !marked.contains(&(t.clone(), *p)))
                            .collect();
                        if all_partitions.is_empty() { continue; }
                        match self.state.record_caught_up(&mut con.clone(), &state.epoch, state.live_gen, &newly, &all_partitions).await {
                            Ok(Err(EpochLost)) => break Exit::EpochLost,
                            Ok(Ok(now_ready)) => {
                                for (t, p, off) in newly {
                                    tracing::info!(topic = %t, partition = p, offset = off, "partition caught up");
                                    marked.insert((t, p));
                                }
                                if now_ready {
                                    tracing::info!(generation = state.live_gen, "cache ready: every partition has caught up");
                                    ready = true;
                                    self.ready.send_replace(true);
                                }
                            }
                            Err(e) => tracing::warn!(error = %e, "recording caught-up partitions failed"),
                        }
                    }
                }
            }
        };
        if exit == Exit::Shutdown {
            tracing::info!(
                records = batch.records,
                "shutting down: folding the last batch"
            );
            self.flush(&consumer, &dead, con, state, &mut batch).await?;
            if let Err(e) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Async) {
                tracing::debug!(error = %e, "final offset commit (mirror) failed");
            }
        }
        Ok(exit)
    }

    /// Every partition of every source topic, from broker metadata.
    async fn all_partitions(
        &self,
        consumer: &Arc<StreamConsumer<IngestContext>>,
    ) -> anyhow::Result<Vec<Tp>> {
        let consumer = consumer.clone();
        let topics: Vec<String> = self
            .sources
            .topics()
            .into_iter()
            .map(String::from)
            .collect();
        tokio::task::spawn_blocking(move || {
            let mut all = Vec::new();
            for t in &topics {
                let md = consumer.fetch_metadata(Some(t), Duration::from_secs(5))?;
                for mt in md.topics() {
                    if mt.error().is_some() || mt.partitions().is_empty() {
                        // Not created yet: the cache cannot be ready.
                        anyhow::bail!("topic {t} has no partitions (yet)");
                    }
                    all.extend(mt.partitions().iter().map(|p| (t.clone(), p.id())));
                }
            }
            Ok(all)
        })
        .await?
    }

    fn add(
        &self,
        ctx: &IngestContext,
        batch: &mut Batch,
        state: &CacheState,
        m: &BorrowedMessage<'_>,
    ) {
        let topic = m.topic();
        let Some(source) = self.sources.get(topic) else {
            return;
        };
        let (partition, offset) = (m.partition(), m.offset());
        let folded = lock(&ctx.progress).position(&(topic.to_owned(), partition));
        if folded.is_some_and(|next| offset < next) {
            // Already in Redis (a replay after assignment): not even sent.
            metrics::counter!("foldcache_ingest_replay_skipped_total").increment(1);
            return;
        }
        batch.started.get_or_insert_with(Instant::now);
        batch.records += 1;
        let pb = batch
            .partitions
            .entry((topic.to_owned(), partition))
            .or_insert_with(|| PartitionBatch::new(topic, partition));
        match decode(
            source,
            m.key(),
            m.payload(),
            self.config.ingest.max_value_bytes,
        ) {
            Ok(decoded) => {
                let kind = if matches!(decoded, Decoded::Delete { .. }) {
                    "delete"
                } else {
                    "upsert"
                };
                metrics::counter!("foldcache_ingest_records_total", "entity" => source.entity.to_string(), "kind" => kind).increment(1);
                pb.push(
                    &self.keys,
                    state.live_gen,
                    source,
                    offset,
                    timestamp_ms(m.timestamp()),
                    decoded,
                );
            }
            Err(poison) => {
                pb.advance(offset);
                batch.dead.push(DeadLetter {
                    topic: topic.to_owned(),
                    partition,
                    offset,
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    reason: poison.code(),
                    error: poison.to_string(),
                });
            }
        }
    }

    /// Dead-letters, folds and stores offsets for the batch, retrying Redis
    /// until it answers. Returns `Some(EpochLost)` if Redis lost our data.
    async fn flush(
        &self,
        consumer: &StreamConsumer<IngestContext>,
        dead: &DeadLetters,
        con: &mut redis::aio::ConnectionManager,
        state: &CacheState,
        batch: &mut Batch,
    ) -> anyhow::Result<Option<EpochLost>> {
        if batch.records == 0 {
            batch.started = None;
            return Ok(None);
        }
        let started = Instant::now();
        dead.send_all(&batch.dead).await;
        let partitions: Vec<PartitionBatch> = std::mem::take(&mut batch.partitions)
            .into_values()
            .collect();
        let mut backoff = Duration::from_millis(50);
        let outcome = loop {
            match self
                .folder
                .fold(con, &state.epoch, state.live_gen, &partitions)
                .await
            {
                Ok(o) => break o,
                Err(FoldError::EpochChanged) => {
                    *batch = Batch::default();
                    return Ok(Some(EpochLost));
                }
                Err(FoldError::Redis(e)) => {
                    tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "folding a batch into Redis failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        {
            let mut progress = lock(&consumer.context().progress);
            for pb in &partitions {
                let tp = (pb.topic().to_owned(), pb.partition());
                if progress.position(&tp).is_some() {
                    progress.folded(&tp, pb.next_offset());
                    // Mirror into the consumer group for monitoring tools.
                    let _ = consumer.store_offset(pb.topic(), pb.partition(), pb.next_offset());
                }
            }
        }
        if let Some(p) = self.purger.get().filter(|p| p.enabled()) {
            p.purge(partitions.iter().flat_map(PartitionBatch::tags).collect());
        }
        for (pb, o) in partitions.iter().zip(&outcome) {
            let entity = self
                .sources
                .get(pb.topic())
                .map_or_else(String::new, |s| s.entity.to_string());
            for (label, n) in [
                ("upserted", o.upserted),
                ("deleted", o.deleted),
                ("skipped", o.skipped),
            ] {
                metrics::counter!("foldcache_ingest_folded_total", "entity" => entity.clone(), "outcome" => label)
                    .increment(n);
            }
        }
        metrics::histogram!("foldcache_ingest_batch_seconds")
            .record(started.elapsed().as_secs_f64());
        tracing::debug!(
            records = batch.records,
            partitions = partitions.len(),
            ?outcome,
            "batch folded"
        );
        *batch = Batch::default();
        Ok(None)
    }
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Records read but not yet folded.
#[derive(Debug, Default)]
struct Batch {
    started: Option<Instant>,
    records: usize,
    partitions: BTreeMap<Tp, PartitionBatch>,
    dead: Vec<DeadLetter>,
}

/// A librdkafka config with the brokers and the extra `[kafka.client]`
/// properties (security settings and the like).
pub fn kafka_client_config(config: &Config) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &config.kafka.brokers);
    for (k, v) in &config.kafka.client {
        cc.set(k, v.expose());
    }
    cc
}

fn log_kafka_error(e: &KafkaError) {
    tracing::warn!(error = %e, "Kafka consumer error");
}

fn timestamp_ms(t: Timestamp) -> i64 {
    t.to_millis().unwrap_or_else(now_ms)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Retries `f` with capped exponential backoff until it succeeds.
async fn retry<T, E: std::fmt::Display, Fut: Future<Output = Result<T, E>>>(
    what: &str,
    mut f: impl FnMut() -> Fut,
) -> T {
    let mut backoff = Duration::from_millis(100);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "{what} failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
