//! The live generation's heartbeat: liveness and freshness of this instance
//! (`{prefix}:instances`), and the check that Redis still holds every offset
//! it acknowledged (an idle partition writes nothing, so only this notices a
//! Redis restored from an older snapshot while nothing changes).

use crate::cache_state::{Beat, BeatReport, Role, StateStore};
use crate::progress::{Statuses, Tp, fresh_ms, lock};
use crate::retry::Stall;
use foldcache_common::keys::{InstanceBeat, partition_field};
use foldcache_common::runtime::now_ms;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// Why the heartbeat stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatExit {
    /// Redis lost foldcache's data.
    EpochLost,
    /// Redis holds less than it acknowledged.
    RedisWentBack,
}

/// Beats for one generation's consumer while its role is live.
#[derive(Debug)]
pub struct Heartbeat {
    /// The marker store.
    pub state: StateStore,
    /// The epoch written under.
    pub epoch: String,
    /// The generation.
    pub generation: u64,
    /// This process's instance id.
    pub instance: String,
    /// The generation's partition statuses.
    pub statuses: Statuses,
    /// Beat interval.
    pub every: Duration,
    /// Whether the last beat found an unverified Redis (for logging the
    /// change once).
    pub unverified: AtomicBool,
}

impl Heartbeat {
    /// Runs until Redis lost or regressed foldcache's data.
    pub async fn run(
        self,
        mut con: redis::aio::ConnectionManager,
        role: watch::Receiver<Role>,
    ) -> HeartbeatExit {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stall = Stall::default();
        loop {
            tick.tick().await;
            if *role.borrow() != Role::Live {
                continue;
            }
            match self.beat(&mut con).await {
                Ok(None) => {
                    if let Some(failures) = stall.recovered() {
                        tracing::info!(failures, "heartbeat recovered");
                    }
                }
                Ok(Some(exit)) => return exit,
                Err(e) => {
                    if stall.failed("redis") {
                        tracing::warn!(error = %e, "heartbeat failed; retrying every interval");
                    }
                }
            }
        }
    }

    async fn beat(
        &self,
        con: &mut redis::aio::ConnectionManager,
    ) -> redis::RedisResult<Option<HeartbeatExit>> {
        let now = now_ms();
        let (positions, fresh, caught_up): (Vec<(Tp, i64)>, Option<i64>, bool) = {
            let statuses = lock(&self.statuses);
            let positions = statuses
                .iter()
                .map(|(tp, s)| (tp.clone(), s.position))
                .filter(|(_, p)| *p > 0)
                .collect();
            let caught_up = !statuses.is_empty() && statuses.values().all(|s| s.caught_up);
            (positions, fresh_ms(statuses.values(), now), caught_up)
        };
        let beat = InstanceBeat {
            alive_ms: now,
            fresh_ms: fresh,
            interval_ms: self.every.as_millis() as i64,
        };
        let found = self
            .state
            .heartbeat(
                con,
                &BeatReport {
                    epoch: &self.epoch,
                    generation: self.generation,
                    instance: &self.instance,
                    beat,
                    caught_up,
                    positions: &positions,
                },
            )
            .await?;
        match found {
            Beat::Ok => {
                if self.unverified.swap(false, Ordering::Relaxed) {
                    tracing::info!(
                        "this Redis verified: every partition caught up from what it holds; readers are let in"
                    );
                }
                Ok(None)
            }
            Beat::Unverified => {
                if !self.unverified.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "Redis restarted or was replaced since the cache was verified; readers get 503 until this instance's partitions have caught up from what it holds"
                    );
                }
                Ok(None)
            }
            Beat::EpochLost => Ok(Some(HeartbeatExit::EpochLost)),
            Beat::WentBack { partition, stored } => {
                let position = positions
                    .iter()
                    .find(|((t, p), _)| partition_field(t, *p) == partition)
                    .map_or(0, |(_, p)| *p);
                tracing::error!(%partition, position, stored, generation = self.generation,
                    "Redis went back in time: it holds an offset below one it acknowledged");
                Ok(Some(HeartbeatExit::RedisWentBack))
            }
        }
    }
}
