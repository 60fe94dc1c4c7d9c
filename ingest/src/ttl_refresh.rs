//! Keeps live entities from expiring while the pipeline is healthy.
//!
//! Every entity hash gets `entities.<name>.ttl_secs` with each write. An
//! entity that is never updated again would expire after that, although it
//! is still the last value in the log; so one ingest instance (elected by a
//! short Redis lock) walks the live generation every `ttl / 4` with `SCAN`
//! and resets each entity's TTL. If ingest stops, TTLs run out at the
//! earliest `3/4 ttl` later; the freshness bound (`freshness_secs`, at most
//! half the TTL) turns reads into 503 before that, so expiry never shows as
//! a false 404.

use crate::scan::Scan;
use foldcache_common::config::Config;
use foldcache_common::keys::{KeySpace, state_field};
use redis::aio::ConnectionManager;
use std::collections::HashMap;
use std::time::Duration;

/// Refreshes TTLs until the task is dropped.
#[derive(Debug)]
pub struct TtlRefresher {
    keys: KeySpace,
    ttl_ms: HashMap<String, u64>,
    every: Duration,
    instance: String,
}

impl TtlRefresher {
    /// From config: one sweep every quarter of the shortest TTL (at least
    /// every second).
    pub fn new(config: &Config, instance: &str) -> Self {
        let ttl_ms: HashMap<String, u64> = config
            .entities
            .iter()
            .map(|(n, e)| (n.clone(), e.ttl_secs.saturating_mul(1000)))
            .collect();
        let shortest = ttl_ms.values().copied().min().unwrap_or(3_600_000);
        Self {
            keys: KeySpace::new(config.redis.key_prefix.clone()),
            ttl_ms,
            every: Duration::from_millis((shortest / 4).max(1000)),
            instance: instance.to_owned(),
        }
    }

    /// Sweeps forever, one sweep per period, by whichever instance holds
    /// the lock.
    pub async fn run(self, mut con: ConnectionManager) {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // writes just set fresh TTLs
        loop {
            tick.tick().await;
            match self.sweep_if_elected(&mut con).await {
                Ok(Some(n)) => tracing::info!(keys = n, "entity TTLs refreshed"),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "refreshing entity TTLs failed"),
            }
        }
    }

    /// One sweep if this instance wins the lock; returns keys refreshed.
    pub async fn sweep_if_elected(
        &self,
        con: &mut ConnectionManager,
    ) -> redis::RedisResult<Option<u64>> {
        let won: Option<String> = redis::cmd("SET")
            .arg(self.keys.ttl_refresh_lock())
            .arg(&self.instance)
            .arg("NX")
            .arg("PX")
            .arg((self.every.as_millis() as u64 / 2).max(500))
            .query_async(con)
            .await?;
        if won.is_none() {
            return Ok(None);
        }
        let generation: Option<u64> = redis::cmd("HGET")
            .arg(self.keys.state())
            .arg(state_field::LIVE_GEN)
            .query_async(con)
            .await?;
        let Some(generation) = generation else {
            return Ok(Some(0));
        };
        self.sweep(con, generation).await.map(Some)
    }

    /// Resets the TTL of every entity hash (and merged entity's parts) of
    /// `generation`.
    pub async fn sweep(
        &self,
        con: &mut ConnectionManager,
        generation: u64,
    ) -> redis::RedisResult<u64> {
        let pattern = self.keys.generation_pattern(generation);
        let prefix_len = pattern.len() - 1;
        let mut refreshed = 0;
        let mut scan = Scan::new(pattern, 1000);
        while let Some(keys) = scan.next_page(con).await? {
            let mut pipe = redis::pipe();
            for key in &keys {
                // `{prefix}:g{gen}:{entity}:{id}`, or a merged entity's
                // parts, `{prefix}:g{gen}:{{entity}}:_parts:{id}`; other
                // keys have no second ':' or are derived keys.
                let Some((entity, rest)) = key[prefix_len..].split_once(':') else {
                    continue;
                };
                let entity = match entity.strip_prefix('{').and_then(|e| e.strip_suffix('}')) {
                    Some(tagged) if rest.starts_with("_parts:") => tagged,
                    Some(_) => continue,
                    None => entity,
                };
                if let Some(ttl) = self.ttl_ms.get(entity) {
                    pipe.cmd("PEXPIRE").arg(key).arg(*ttl).ignore();
                    refreshed += 1;
                }
            }
            pipe.query_async::<()>(con).await?;
        }
        Ok(refreshed)
    }
}
