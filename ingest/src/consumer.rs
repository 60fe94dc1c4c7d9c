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

use crate::cache_state::{EpochLost, StateStore};
use crate::dead_letter::{DeadLetter, DeadLetters};
use crate::decode::{Decoded, decode};
use crate::fold::{FoldError, Folder, PartitionBatch};
use crate::progress::{FetchView, Progress, Tp};
use crate::rebuild::Rebuilds;
use crate::source::Sources;
use anyhow::Context as _;
use foldcache_common::config::{Config, ResumeMode};
use foldcache_common::keys::{InstanceBeat, KeySpace, state_field};
use foldcache_common::runtime::now_ms;
use futures::StreamExt as _;
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
use tokio_util::sync::CancellationToken;

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

/// What a flush did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flushed {
    Ok,
    EpochLost,
    Retired,
}

/// Why a consume loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Shutdown,
    EpochLost,
    /// Its generation was replaced by a rebuild and its grace is over.
    Retired,
}

/// The generation a consumer writes, under which epoch.
#[derive(Debug, Clone)]
struct Gen {
    epoch: String,
    generation: u64,
}

/// What a consumer's generation is right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Live,
    Build,
    Retired,
}

/// The generations named by the cache marker.
#[derive(Debug, Clone, Copy)]
struct Generations {
    live: u64,
    build: Option<u64>,
    retired: Option<(u64, i64)>,
}

impl Generations {
    fn role_of(&self, generation: u64) -> Role {
        if generation == self.live {
            Role::Live
        } else if Some(generation) == self.build {
            Role::Build
        } else {
            // Replaced by a swap, or a build that is no longer wanted.
            Role::Retired
        }
    }
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
    /// Rebuild protocol.
    rebuilds: Rebuilds,
}

impl Ingest {
    /// Validates the config and opens the Redis client (no I/O yet).
    pub fn new(config: Config) -> anyhow::Result<Self> {
        let sources = Sources::from_config(&config)?;
        let keys = KeySpace::new(config.redis.key_prefix.clone());
        let redis = foldcache_common::redis_client::client(&config.redis)?;
        Ok(Self {
            folder: Folder::new(keys.clone()),
            state: StateStore::new(keys.clone()),
            rebuilds: Rebuilds::new(keys.clone()),
            sources,
            keys,
            redis,
            config,
            ready: watch::channel(false).0,
            instance: format!("{:016x}", rand::random::<u64>()),
            purger: std::sync::OnceLock::new(),
        })
    }

    /// The rebuild protocol (for the admin endpoint).
    pub fn rebuilds(&self) -> &Rebuilds {
        &self.rebuilds
    }

    /// The Redis client (for the admin endpoint).
    pub fn redis(&self) -> &redis::Client {
        &self.redis
    }

    /// Whether the cache is ready (for `/readyz`).
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// Runs until `shutdown` resolves: drains the current batches, stores
    /// their offsets, and returns.
    ///
    /// One consumer runs per generation this instance serves: the live one,
    /// and during an on-demand rebuild the one being built (see
    /// [`crate::rebuild`]). If Redis loses the epoch, every consumer stops and
    /// the cache is initialised anew.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        let shutdown_token = CancellationToken::new();
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
            let epoch_token = shutdown_token.child_token();
            let mut running = futures::stream::FuturesUnordered::new();
            let mut serving: HashSet<u64> = HashSet::new();
            let consumer_con = con.clone();
            let spawn = |generation: u64| {
                let g = Gen {
                    epoch: state.epoch.clone(),
                    generation,
                };
                let token = epoch_token.clone();
                let con = consumer_con.clone();
                async move { (generation, self.consume(g, con, token).await) }
            };
            running.push(spawn(state.live_gen));
            serving.insert(state.live_gen);
            let mut watch = tokio::time::interval(Duration::from_millis(500));
            let mut lost = false;
            let mut shutting_down = false;
            while !running.is_empty() {
                tokio::select! {
                    () = &mut shutdown, if !shutting_down => {
                        shutting_down = true;
                        shutdown_token.cancel();
                    }
                    Some((generation, exit)) = running.next() => {
                        serving.remove(&generation);
                        match exit? {
                            Exit::EpochLost => {
                                lost = true;
                                epoch_token.cancel();
                            }
                            Exit::Retired => tracing::info!(generation, "generation retired: its consumer stopped"),
                            Exit::Shutdown => {}
                        }
                    }
                    _ = watch.tick(), if !shutting_down && !lost => {
                        match self.generations(&mut con).await {
                            Ok(g) => {
                                for generation in [Some(g.live), g.build].into_iter().flatten() {
                                    if serving.insert(generation) {
                                        tracing::info!(generation, "starting a consumer for generation");
                                        running.push(spawn(generation));
                                    }
                                }
                                if let Some((retired, at)) = g.retired
                                    && now_ms() > at + 1000
                                    && !serving.contains(&retired)
                                {
                                    self.remove_retired(&mut con, retired).await;
                                }
                            }
                            Err(e) => tracing::warn!(error = %e, "reading generations failed"),
                        }
                    }
                }
            }
            if shutting_down {
                if let Err(e) = self.state.retire(&mut con, &self.instance, now_ms()).await {
                    tracing::warn!(error = %e, "removing this instance's heartbeat failed");
                }
                return Ok(());
            }
            if lost {
                tracing::warn!(
                    "Redis lost foldcache's data (cache epoch gone): replaying every topic from offset zero"
                );
                metrics::counter!("foldcache_ingest_redis_losses_total").increment(1);
                self.ready.send_replace(false);
            }
            // Otherwise every consumer retired at once (a swap raced a
            // restart): start over from the marker.
        }
    }

    /// Live, building and retired generations, from the cache marker.
    async fn generations(
        &self,
        con: &mut redis::aio::ConnectionManager,
    ) -> redis::RedisResult<Generations> {
        let (live, build, retired, retire_at): (
            Option<u64>,
            Option<u64>,
            Option<u64>,
            Option<i64>,
        ) = redis::cmd("HMGET")
            .arg(self.keys.state())
            .arg(state_field::LIVE_GEN)
            .arg(state_field::BUILD_GEN)
            .arg(state_field::RETIRED_GEN)
            .arg(state_field::RETIRE_AT_MS)
            .query_async(con)
            .await?;
        Ok(Generations {
            live: live.unwrap_or(0),
            build,
            retired: retired.zip(retire_at),
        })
    }

    /// Removes a retired generation's keys (one instance, elected by a lock).
    async fn remove_retired(&self, con: &mut redis::aio::ConnectionManager, generation: u64) {
        let lock = format!("{}:cleanup_lock", self.keys.prefix());
        let won: redis::RedisResult<Option<String>> = redis::cmd("SET")
            .arg(&lock)
            .arg(&self.instance)
            .arg("NX")
            .arg("PX")
            .arg(60_000)
            .query_async(con)
            .await;
        if !matches!(won, Ok(Some(_))) {
            return;
        }
        match self.rebuilds.remove_generation(con, generation).await {
            Ok(n) => {
                tracing::info!(generation, keys = n, "retired generation removed");
                let _: redis::RedisResult<()> = redis::cmd("HDEL")
                    .arg(self.keys.state())
                    .arg(state_field::RETIRED_GEN)
                    .arg(state_field::RETIRE_AT_MS)
                    .query_async(con)
                    .await;
            }
            Err(e) => {
                tracing::warn!(generation, error = %e, "removing a retired generation failed")
            }
        }
        let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&lock).query_async(con).await;
    }

    async fn connect(&self) -> redis::aio::ConnectionManager {
        retry("connecting to Redis", || {
            redis::aio::ConnectionManager::new(self.redis.clone())
        })
        .await
    }

    fn consumer(&self, g: &Gen) -> anyhow::Result<Arc<StreamConsumer<IngestContext>>> {
        let ctx = IngestContext {
            state: self.state.clone(),
            redis: self.redis.clone(),
            generation: g.generation,
            resume: self.config.ingest.resume,
            progress: Mutex::new(Progress::default()),
            assign_failed: AtomicBool::new(false),
        };
        let mut cc = kafka_client_config(&self.config);
        // One group per generation: during a rebuild an instance runs two
        // consumers that must each get every partition.
        cc.set(
            "group.id",
            format!("{}-g{}", self.config.kafka.group_id, g.generation),
        )
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

    /// One generation's consumer: until shutdown, until Redis loses the
    /// epoch, or until its generation is retired.
    ///
    /// Its role follows the cache marker, read every tick: the live
    /// generation heartbeats and marks readiness; the generation being built
    /// records its progress and tries the swap (and so becomes live without a
    /// restart); a retired generation keeps folding until its grace ends.
    async fn consume(
        &self,
        g: Gen,
        mut con: redis::aio::ConnectionManager,
        cancel: CancellationToken,
    ) -> anyhow::Result<Exit> {
        let con = &mut con;
        let consumer = self.consumer(&g)?;
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
        let mut all_partitions: Vec<Tp> = Vec::new();
        let mut partitions_checked = Instant::now() - Duration::from_secs(3600);
        let mut marked: HashSet<Tp> = HashSet::new();
        let mut targeted: HashSet<Tp> = HashSet::new();
        let mut tick = tokio::time::interval(Duration::from_millis(
            ingest_cfg.heartbeat_interval_ms.clamp(50, 200),
        ));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heartbeat = Instant::now() - Duration::from_secs(3600);
        let heartbeat_every = Duration::from_millis(ingest_cfg.heartbeat_interval_ms);
        let mut ready = false;

        let exit = loop {
            if consumer.context().assign_failed.load(Ordering::SeqCst) {
                anyhow::bail!("could not read partition offsets from Redis during a rebalance");
            }
            let deadline = batch
                .started
                .map(|s| tokio::time::Instant::from_std(s + linger));
            tokio::select! {
                biased;
                () = cancel.cancelled() => break Exit::Shutdown,
                () = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await },
                    if deadline.is_some() =>
                {
                    match self.flush(&consumer, &dead, con, &g, &mut batch).await? {
                        Flushed::Ok => {}
                        Flushed::EpochLost => break Exit::EpochLost,
                        Flushed::Retired => break Exit::Retired,
                    }
                }
                msg = consumer.recv(), if batch.records < ingest_cfg.batch_max_events => {
                    match msg {
                        Ok(m) => self.add(consumer.context(), &mut batch, &g, &m),
                        Err(e) => log_kafka_error(&e),
                    }
                    if batch.records >= ingest_cfg.batch_max_events {
                        match self.flush(&consumer, &dead, con, &g, &mut batch).await? {
                            Flushed::Ok => {}
                            Flushed::EpochLost => break Exit::EpochLost,
                            Flushed::Retired => break Exit::Retired,
                        }
                    }
                }
                _ = tick.tick() => {
                    let gens = match self.generations(con).await {
                        Ok(gens) => gens,
                        Err(e) => {
                            tracing::warn!(error = %e, "reading the cache marker failed");
                            continue;
                        }
                    };
                    let role = gens.role_of(g.generation);
                    if role == Role::Retired {
                        // Frozen since the swap (the fold script refuses it).
                        break Exit::Retired;
                    }
                    if role == Role::Live && last_heartbeat.elapsed() >= heartbeat_every {
                        last_heartbeat = Instant::now();
                        let now = now_ms();
                        let beat = InstanceBeat {
                            alive_ms: now,
                            fresh_ms: lock(&consumer.context().progress).fresh_ms(now),
                            interval_ms: heartbeat_every.as_millis() as i64,
                        };
                        match self.state.heartbeat(&mut con.clone(), &g.epoch, &self.instance, beat).await {
                            Ok(Err(EpochLost)) => break Exit::EpochLost,
                            Ok(Ok(())) => {}
                            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
                        }
                        let lags = lock(&consumer.context().progress).lag();
                        for ((t, p), lag) in lags {
                            metrics::gauge!("foldcache_ingest_partition_lag", "topic" => t, "partition" => p.to_string()).set(lag as f64);
                        }
                    }
                    if role == Role::Live && ready {
                        continue;
                    }
                    if partitions_checked.elapsed() > Duration::from_secs(5) || all_partitions.is_empty() {
                        all_partitions = self.all_partitions(&consumer).await.unwrap_or_default();
                        partitions_checked = Instant::now();
                    }
                    if all_partitions.is_empty() {
                        continue;
                    }
                    let newly: Vec<_> = consumer.context().caught_up().into_iter()
                        .filter(|(t, p, _)| !marked.contains(&(t.clone(), *p)))
                        .collect();
                    let outcome = if role == Role::Live {
                        self.state.record_caught_up(&mut con.clone(), &g.epoch, g.generation, &newly, &all_partitions).await
                    } else {
                        let targets: Vec<(String, i32, i64)> = lock(&consumer.context().progress)
                            .targets()
                            .into_iter()
                            .filter(|((t, p), _)| !targeted.contains(&(t.clone(), *p)))
                            .map(|((t, p), hi)| (t, p, hi))
                            .collect();
                        let r = self.rebuilds.try_swap(
                            &mut con.clone(), &g.epoch, g.generation, gens.live, now_ms(),
                            ingest_cfg.rebuild_retire_grace_ms, &newly, &targets, &all_partitions,
                        ).await;
                        if r.is_ok() {
                            targeted.extend(targets.into_iter().map(|(t, p, _)| (t, p)));
                        }
                        self.build_metrics(con, g.generation).await;
                        r
                    };
                    match outcome {
                        Ok(Err(EpochLost)) => break Exit::EpochLost,
                        Ok(Ok(done)) => {
                            for (t, p, off) in newly {
                                tracing::info!(topic = %t, partition = p, offset = off, generation = g.generation, "partition caught up");
                                marked.insert((t, p));
                            }
                            if done && role == Role::Live {
                                tracing::info!(generation = g.generation, "cache ready: every partition has caught up");
                                ready = true;
                                self.ready.send_replace(true);
                            } else if done {
                                tracing::info!(generation = g.generation, retired = gens.live, "rebuild complete: readers switched to the new generation");
                                metrics::counter!("foldcache_rebuilds_total", "outcome" => "swapped").increment(1);
                                ready = true;
                                self.ready.send_replace(true);
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "recording caught-up partitions failed"),
                    }
                }
            }
        };
        if exit != Exit::EpochLost {
            tracing::info!(
                records = batch.records,
                generation = g.generation,
                "stopping: folding the last batch"
            );
            self.flush(&consumer, &dead, con, &g, &mut batch).await?;
            if let Err(e) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Async) {
                tracing::debug!(error = %e, "final offset commit (mirror) failed");
            }
        }
        Ok(exit)
    }

    /// Prometheus gauges of a running build.
    async fn build_metrics(&self, con: &mut redis::aio::ConnectionManager, generation: u64) {
        if let Ok(p) = self.rebuilds.progress(con).await
            && p.generation == Some(generation)
        {
            metrics::gauge!("foldcache_rebuild_generation").set(generation as f64);
            metrics::gauge!("foldcache_rebuild_done_offsets").set(p.done as f64);
            metrics::gauge!("foldcache_rebuild_target_offsets").set(p.target as f64);
        }
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

    fn add(&self, ctx: &IngestContext, batch: &mut Batch, g: &Gen, m: &BorrowedMessage<'_>) {
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
                    g.generation,
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
    /// until it answers.
    async fn flush(
        &self,
        consumer: &StreamConsumer<IngestContext>,
        dead: &DeadLetters,
        con: &mut redis::aio::ConnectionManager,
        g: &Gen,
        batch: &mut Batch,
    ) -> anyhow::Result<Flushed> {
        if batch.records == 0 {
            batch.started = None;
            return Ok(Flushed::Ok);
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
                .fold(con, &g.epoch, g.generation, &partitions)
                .await
            {
                Ok(o) => break o,
                Err(FoldError::EpochChanged) => {
                    *batch = Batch::default();
                    return Ok(Flushed::EpochLost);
                }
                Err(FoldError::Retired) => {
                    *batch = Batch::default();
                    return Ok(Flushed::Retired);
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
        Ok(Flushed::Ok)
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
