//! The running ingest: one consumer per generation this instance serves (the
//! live one, and during an on-demand rebuild the one being built), started
//! anew when Redis loses its data, and sent back to a cold cache when Redis
//! or a source went back in time.
//!
//! A record's path is in `consumer.rs` (one generation's consumer) and
//! `partition.rs` (one partition's pipeline); this file only decides which
//! generations run and what happens when one ends.

use crate::cache_state::{Role, StateStore};
use crate::consumer::{self, Deps, Exit};
use crate::progress::AllStatuses;
use crate::rebuild::Rebuilds;
use crate::retry;
use crate::source::Sources;
use foldcache_common::config::Config;
use foldcache_common::keys::{KeySpace, state_field};
use foldcache_common::runtime::now_ms;
use futures::StreamExt as _;
use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often the supervisor reads the marker for new builds and retired
/// generations.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// How long ingest waits for a Redis reply before it counts the command as
/// failed and retries. Every partition's fold script shares one connection
/// and Redis runs them one after another: a backlog's full batches (a
/// `batch_max_events` script takes tens of milliseconds, longer on a busy
/// machine) can queue for well over redis-rs's default 500 ms, which used
/// to time out and re-send folds that were running fine.
const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A running ingest: configuration plus the long-lived clients.
#[derive(Debug)]
pub struct Ingest {
    config: Config,
    sources: Sources,
    keys: KeySpace,
    state: StateStore,
    redis: redis::Client,
    ready: watch::Sender<bool>,
    /// Random id of this process, for its heartbeat and locks.
    instance: String,
    rebuilds: Rebuilds,
    statuses: AllStatuses,
}

impl Ingest {
    /// Validates the config and opens the Redis client (no I/O yet).
    pub fn new(config: Config) -> anyhow::Result<Self> {
        let sources = Sources::from_config(&config)?;
        let keys = KeySpace::new(config.redis.key_prefix.clone());
        let redis = foldcache_common::redis_client::client(&config.redis)?;
        Ok(Self {
            state: StateStore::new(keys.clone()),
            rebuilds: Rebuilds::new(keys.clone()),
            sources,
            keys,
            redis,
            config,
            ready: watch::channel(false).0,
            instance: format!("{:016x}", rand::random::<u64>()),
            statuses: AllStatuses::default(),
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

    /// Every consumed partition's status (for `/readyz`).
    pub fn statuses(&self) -> AllStatuses {
        self.statuses.clone()
    }

    /// Whether the cache is ready (for `/readyz`).
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// Runs until `shutdown` resolves: every partition folds its last batch
    /// and stores its offset, within `ingest.drain_timeout_ms`, then it
    /// returns.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        let max = Duration::from_millis(self.config.ingest.retry_max_backoff_ms);
        let mut con = tokio::select! {
            c = retry::until_ok("connecting to Redis", max, || {
                redis::aio::ConnectionManager::new_with_config(
                    self.redis.clone(),
                    redis::aio::ConnectionManagerConfig::new()
                        .set_response_timeout(Some(REDIS_RESPONSE_TIMEOUT)),
                )
            }) => c,
            () = &mut shutdown => return Ok(()),
        };
        tokio::select! {
            r = crate::dead_letter::ensure_topic(&self.config) => r?,
            () = &mut shutdown => return Ok(()),
        }
        let purger = crate::purge::Purger::start(&self.config.ingest.purge)?;
        let deps = Deps {
            config: self.config.clone(),
            sources: self.sources.clone(),
            keys: self.keys.clone(),
            state: self.state.clone(),
            rebuilds: self.rebuilds.clone(),
            redis: self.redis.clone(),
            purger: Some(purger),
            instance: self.instance.clone(),
            ready: self.ready.clone(),
            all_statuses: self.statuses.clone(),
            budget: crate::budget::Budget::new(self.config.ingest.unfolded_max_bytes),
        };
        let refresher = tokio::spawn(
            crate::ttl_refresh::TtlRefresher::new(&self.config, &self.instance).run(con.clone()),
        );
        let _stop_refresher = AbortOnDrop(refresher);
        let shutdown_token = CancellationToken::new();
        loop {
            let state = tokio::select! {
                s = retry::until_ok("initialising the cache state", max, || {
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
            let spawn = |generation: u64, role: Role| {
                let token = epoch_token.clone();
                let (con, deps, epoch) = (consumer_con.clone(), &deps, state.epoch.clone());
                async move {
                    let exit = consumer::run(deps, &epoch, generation, role, con, token).await;
                    (generation, role, exit)
                }
            };
            running.push(spawn(state.live_gen, Role::Live));
            serving.insert(state.live_gen);
            let mut watch = tokio::time::interval(WATCH_EVERY);
            let mut cold: Option<Exit> = None;
            let mut shutting_down = false;
            while !running.is_empty() {
                tokio::select! {
                    () = &mut shutdown, if !shutting_down => {
                        shutting_down = true;
                        shutdown_token.cancel();
                    }
                    Some((generation, role, exit)) = running.next() => {
                        serving.remove(&generation);
                        match exit? {
                            e @ (Exit::EpochLost | Exit::WentBack(_)) => {
                                cold.get_or_insert(e);
                                epoch_token.cancel();
                            }
                            Exit::Retired => tracing::info!(generation, "generation retired: its consumer stopped"),
                            Exit::Restart if !shutting_down && cold.is_none() => {
                                serving.insert(generation);
                                running.push(spawn(generation, role));
                            }
                            Exit::Restart | Exit::Shutdown => {}
                        }
                    }
                    _ = watch.tick(), if !shutting_down && cold.is_none() => {
                        self.watch_marker(&mut con, &mut serving, |generation| running.push(spawn(generation, Role::Build))).await;
                    }
                }
            }
            if shutting_down {
                let retire = self.state.retire(&mut con, &self.instance, now_ms());
                match tokio::time::timeout(Duration::from_secs(2), retire).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "removing this instance's heartbeat failed")
                    }
                    Err(_) => tracing::warn!("removing this instance's heartbeat timed out"),
                }
                return Ok(());
            }
            self.ready.send_replace(false);
            match cold {
                Some(Exit::WentBack(what)) => self.go_cold(&mut con, &state.epoch, what).await,
                Some(_) => {
                    tracing::warn!(
                        "Redis lost foldcache's data (cache epoch gone): replaying every topic from offset zero"
                    );
                    metrics::counter!("foldcache_ingest_redis_losses_total").increment(1);
                }
                // Every consumer retired at once (a swap raced a restart):
                // start over from the marker.
                None => {}
            }
        }
    }

    /// Starts consumers for new generations (a rebuild) and removes retired
    /// or abandoned ones.
    async fn watch_marker(
        &self,
        con: &mut redis::aio::ConnectionManager,
        serving: &mut HashSet<u64>,
        mut start: impl FnMut(u64),
    ) {
        let g = match self.state.generations(con).await {
            Ok(g) => g,
            Err(e) => {
                tracing::debug!(error = %e, "reading generations failed");
                return;
            }
        };
        for generation in [Some(g.live), g.build].into_iter().flatten() {
            if serving.insert(generation) {
                tracing::info!(generation, "starting a consumer for generation");
                start(generation);
            }
        }
        if let Some((retired, at)) = g.retired
            && now_ms() > at + 1000
            && !serving.contains(&retired)
        {
            self.remove_generation(con, retired, state_field::RETIRED_GEN)
                .await;
        }
        if let Some(abandoned) = g.abandoned
            && !serving.contains(&abandoned)
        {
            self.remove_generation(con, abandoned, crate::cache_state::ABANDONED_GEN)
                .await;
        }
    }

    /// Redis or a source went back in time: the cache goes cold (new epoch,
    /// new empty generation, 503 until it caught up again) and every topic
    /// is replayed from offset zero.
    async fn go_cold(
        &self,
        con: &mut redis::aio::ConnectionManager,
        epoch: &str,
        what: consumer::WentBack,
    ) {
        metrics::counter!("foldcache_ingest_went_back_total", "what" => what.label()).increment(1);
        let max = Duration::from_millis(self.config.ingest.retry_max_backoff_ms);
        let generation = retry::until_ok("marking the cache cold", max, || {
            let (mut c, st) = (con.clone(), self.state.clone());
            async move { st.go_cold(&mut c, epoch, now_ms()).await }
        })
        .await;
        match generation {
            Some(generation) => tracing::warn!(
                what = what.label(),
                generation,
                "the cache went back in time: serving 503 and rebuilding every topic from offset zero into a new generation"
            ),
            None => tracing::info!(
                what = what.label(),
                "the cache went back in time and another instance already started the rebuild"
            ),
        }
    }

    /// Removes a retired or abandoned generation's keys (one instance,
    /// elected by a lock), then forgets it in the marker.
    async fn remove_generation(
        &self,
        con: &mut redis::aio::ConnectionManager,
        generation: u64,
        field: &str,
    ) {
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
                let mut hdel = redis::cmd("HDEL");
                hdel.arg(self.keys.state()).arg(field);
                if field == state_field::RETIRED_GEN {
                    hdel.arg(state_field::RETIRE_AT_MS);
                }
                let _: redis::RedisResult<()> = hdel.query_async(con).await;
            }
            Err(e) => {
                tracing::warn!(generation, error = %e, "removing a retired generation failed")
            }
        }
        let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&lock).query_async(con).await;
    }
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
