//! The live generation's heartbeat: liveness and freshness of this instance
//! (`{prefix}:instances`), and the check that Redis still holds every offset
//! it acknowledged (an idle partition writes nothing, so only this notices a
//! Redis restored from an older snapshot while nothing changes).

use crate::cache_state::{EpochLost, Role, StateStore};
use crate::progress::{Statuses, Tp, fresh_ms, lock};
use crate::retry::Stall;
use foldcache_common::keys::InstanceBeat;
use foldcache_common::runtime::now_ms;
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
        let (positions, fresh): (Vec<(Tp, i64)>, Option<i64>) = {
            let statuses = lock(&self.statuses);
            let positions = statuses
                .iter()
                .map(|(tp, s)| (tp.clone(), s.position))
                .collect();
            (positions, fresh_ms(statuses.values(), now))
        };
        let beat = InstanceBeat {
            alive_ms: now,
            fresh_ms: fresh,
            interval_ms: self.every.as_millis() as i64,
        };
        if let Err(EpochLost) = self
            .state
            .heartbeat(con, &self.epoch, &self.instance, beat)
            .await?
        {
            return Ok(Some(HeartbeatExit::EpochLost));
        }
        // Positions were published after Redis acknowledged them, so Redis
        // can only hold as much or more, unless it went back in time.
        let known: Vec<(Tp, i64)> = positions.into_iter().filter(|(_, p)| *p > 0).collect();
        let tps: Vec<Tp> = known.iter().map(|(tp, _)| tp.clone()).collect();
        let stored = self
            .state
            .stored_offsets(con, self.generation, &tps)
            .await?;
        for ((tp, position), stored) in known.iter().zip(stored) {
            if stored.unwrap_or(0) < *position {
                tracing::error!(topic = %tp.0, partition = tp.1, position, stored = stored.unwrap_or(0),
                    generation = self.generation, "Redis went back in time: it holds an offset below one it acknowledged");
                return Ok(Some(HeartbeatExit::RedisWentBack));
            }
        }
        Ok(None)
    }
}
