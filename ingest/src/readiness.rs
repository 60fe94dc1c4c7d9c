//! Caught-up bookkeeping of one generation: records partitions that reached
//! their end in `{prefix}:g{gen}:caught_up`, sets `ready` once every
//! partition of every source topic has (the live generation), or tries the
//! swap (a generation being built; see `rebuild.rs`).

use crate::cache_state::{EpochLost, Role, StateStore};
use crate::progress::{Statuses, Tp, lock};
use crate::rebalance::KafkaConsumer;
use crate::rebuild::Rebuilds;
use crate::retry::Stall;
use foldcache_common::runtime::now_ms;
use rdkafka::consumer::Consumer as _;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often caught-up partitions are recorded.
const EVERY: Duration = Duration::from_millis(200);
/// How often the list of every partition is read from broker metadata.
const METADATA_EVERY: Duration = Duration::from_secs(5);

/// Readiness and swap for one generation's consumer.
#[derive(Debug)]
pub struct Readiness {
    /// The marker store.
    pub state: StateStore,
    /// The rebuild protocol.
    pub rebuilds: Rebuilds,
    /// The epoch written under.
    pub epoch: String,
    /// The generation.
    pub generation: u64,
    /// Its partition statuses.
    pub statuses: Statuses,
    /// Every source topic.
    pub topics: Vec<String>,
    /// Grace of a retired generation after a swap.
    pub retire_grace_ms: u64,
    /// Where readiness is published (`/readyz`).
    pub ready: watch::Sender<bool>,
}

impl Readiness {
    /// Runs until Redis lost foldcache's data.
    pub async fn run(
        self,
        mut con: redis::aio::ConnectionManager,
        consumer: Arc<KafkaConsumer>,
        role: watch::Receiver<Role>,
    ) -> EpochLost {
        let mut marked: HashSet<Tp> = HashSet::new();
        let mut targeted: HashSet<Tp> = HashSet::new();
        let mut all: Vec<Tp> = Vec::new();
        let mut checked: Option<Instant> = None;
        let mut ready = false;
        let mut stall = Stall::default();
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let role = *role.borrow();
            if role == Role::Retired || (role == Role::Live && ready) {
                continue;
            }
            if checked.is_none_or(|c| c.elapsed() > METADATA_EVERY) || all.is_empty() {
                all = all_partitions(consumer.clone(), self.topics.clone())
                    .await
                    .unwrap_or_default();
                checked = Some(Instant::now());
            }
            if all.is_empty() {
                continue;
            }
            let (newly, targets) = {
                let statuses = lock(&self.statuses);
                let newly: Vec<(String, i32, i64)> = statuses
                    .iter()
                    .filter(|(tp, s)| s.caught_up && !marked.contains(*tp))
                    .map(|((t, p), s)| (t.clone(), *p, s.position))
                    .collect();
                let targets: Vec<(String, i32, i64)> = statuses
                    .iter()
                    .filter(|(tp, _)| !targeted.contains(*tp))
                    .filter_map(|((t, p), s)| s.end.map(|e| (t.clone(), *p, e)))
                    .collect();
                (newly, targets)
            };
            let outcome = if role == Role::Live {
                self.state
                    .record_caught_up(&mut con, &self.epoch, self.generation, &newly, &all)
                    .await
            } else {
                let live = match self.state.generations(&mut con).await {
                    Ok(g) => g.live,
                    Err(e) => {
                        if stall.failed("redis") {
                            tracing::warn!(error = %e, "reading the cache marker failed; retrying");
                        }
                        continue;
                    }
                };
                // Before the swap attempt: a build that completes in its
                // first round still shows its progress once.
                self.build_metrics(&mut con).await;
                let r = self
                    .rebuilds
                    .try_swap(
                        &mut con,
                        &self.epoch,
                        self.generation,
                        live,
                        now_ms(),
                        self.retire_grace_ms,
                        &newly,
                        &targets,
                        &all,
                    )
                    .await;
                if r.is_ok() {
                    targeted.extend(targets.into_iter().map(|(t, p, _)| (t, p)));
                }
                r
            };
            match outcome {
                Ok(Err(EpochLost)) => return EpochLost,
                Ok(Ok(done)) => {
                    stall.recovered();
                    for (t, p, off) in newly {
                        tracing::info!(topic = %t, partition = p, offset = off, generation = self.generation, "partition caught up");
                        marked.insert((t, p));
                    }
                    if done && role == Role::Live {
                        tracing::info!(
                            generation = self.generation,
                            "cache ready: every partition has caught up"
                        );
                    } else if done {
                        tracing::info!(
                            generation = self.generation,
                            "rebuild complete: readers switched to the new generation"
                        );
                        metrics::counter!("foldcache_rebuilds_total", "outcome" => "swapped")
                            .increment(1);
                    }
                    if done {
                        ready = true;
                        self.ready.send_replace(true);
                    }
                }
                Err(e) => {
                    if stall.failed("redis") {
                        tracing::warn!(error = %e, generation = self.generation, "recording caught-up partitions failed; retrying");
                    }
                }
            }
        }
    }

    /// Prometheus gauges of a running build.
    async fn build_metrics(&self, con: &mut redis::aio::ConnectionManager) {
        if let Ok(p) = self.rebuilds.progress(con).await
            && p.generation == Some(self.generation)
        {
            metrics::gauge!("foldcache_rebuild_generation").set(self.generation as f64);
            metrics::gauge!("foldcache_rebuild_done_offsets").set(p.done as f64);
            metrics::gauge!("foldcache_rebuild_target_offsets").set(p.target as f64);
        }
    }
}

/// Every partition of every source topic, from broker metadata; empty while
/// a topic has none (the cache cannot be ready).
async fn all_partitions(
    consumer: Arc<KafkaConsumer>,
    topics: Vec<String>,
) -> anyhow::Result<Vec<Tp>> {
    tokio::task::spawn_blocking(move || {
        let mut all = Vec::new();
        for t in &topics {
            let md = consumer.fetch_metadata(Some(t), Duration::from_secs(5))?;
            for mt in md.topics() {
                if mt.error().is_some() || mt.partitions().is_empty() {
                    anyhow::bail!("topic {t} has no partitions (yet)");
                }
                all.extend(mt.partitions().iter().map(|p| (t.clone(), p.id())));
            }
        }
        Ok(all)
    })
    .await?
}
