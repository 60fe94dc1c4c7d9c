//! The deployment as Redis shows it: the cache marker (epoch, live
//! generation, readiness, a running build), every ingest instance's
//! heartbeat and the pipeline's freshness, computed as query-api computes it.
//!
//! [`watch`] reads it every second for the console and exports it as gauges,
//! so that dashboards and alerts see what readers see, from any one ingest
//! instance:
//!
//! | metric | meaning |
//! |---|---|
//! | `foldcache_cache_ready` | 1 when the live generation has caught up (query-api serves), else 0 |
//! | `foldcache_cache_live_generation` | the generation readers use |
//! | `foldcache_cache_staleness_seconds` | now minus the pipeline's freshness (`+Inf` while no instance has reported one) |
//! | `foldcache_entity_freshness_bound_seconds{entity}` | `entities.<name>.freshness_secs`: past it, lookups answer 503 |
//! | `foldcache_ingest_instances_live` | instances whose heartbeat is recent |
//! | `foldcache_rebuild_in_progress` | 1 while an on-demand rebuild runs |

use foldcache_common::config::Config;
use foldcache_common::keys::{InstanceBeat, KeySpace, state_field};
use foldcache_common::runtime::now_ms;
use redis::aio::ConnectionLike;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often [`watch`] reads the marker.
const EVERY: Duration = Duration::from_secs(1);

/// One ingest instance's last heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// The instance's random id.
    pub id: String,
    /// Its last beat.
    pub beat: InstanceBeat,
    /// Whether the beat is recent (within three intervals, at least 3 s).
    pub live: bool,
}

/// The deployment at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// When it was read, ms since the epoch.
    pub at_ms: i64,
    /// The cache epoch (`None`: Redis holds no foldcache cache).
    pub epoch: Option<String>,
    /// The generation readers use.
    pub live_gen: u64,
    /// Whether the live generation has caught up.
    pub ready: bool,
    /// A generation being built, and when it was requested.
    pub build: Option<(u64, i64)>,
    /// A generation replaced by a swap, and when its removal begins.
    pub retired: Option<(u64, i64)>,
    /// Every instance that ever beat in this epoch, by id.
    pub instances: Vec<Instance>,
    /// Every record produced before this time is folded (as query-api
    /// computes it).
    pub fresh_ms: Option<i64>,
}

impl ClusterView {
    /// Reads the marker and the heartbeats in one round trip.
    pub async fn read<C: ConnectionLike + Send>(
        con: &mut C,
        keys: &KeySpace,
    ) -> redis::RedisResult<Self> {
        let (state, beats): (HashMap<String, String>, Vec<(String, String)>) = redis::pipe()
            .hgetall(keys.state())
            .hgetall(keys.instances())
            .query_async(con)
            .await?;
        Ok(Self::from_parts(&state, &beats, now_ms()))
    }

    /// Builds the view from the raw hashes.
    pub fn from_parts(
        state: &HashMap<String, String>,
        beats: &[(String, String)],
        now: i64,
    ) -> Self {
        let num = |f: &str| state.get(f).and_then(|v| v.parse::<i64>().ok());
        let mut instances: Vec<Instance> = beats
            .iter()
            .filter_map(|(id, v)| {
                let beat = InstanceBeat::decode(v)?;
                Some(Instance {
                    id: id.clone(),
                    live: now - beat.alive_ms <= (3 * beat.interval_ms).max(3000),
                    beat,
                })
            })
            .collect();
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        let all: Vec<InstanceBeat> = instances.iter().map(|i| i.beat).collect();
        let epoch = state.get(state_field::EPOCH).cloned();
        Self {
            at_ms: now,
            ready: epoch.is_some()
                && state.get(state_field::READY).map(String::as_str) == Some("1"),
            epoch,
            live_gen: num(state_field::LIVE_GEN).unwrap_or(0).max(0) as u64,
            build: num(state_field::BUILD_GEN).map(|g| {
                (
                    g.max(0) as u64,
                    num(state_field::BUILD_STARTED_MS).unwrap_or(0),
                )
            }),
            retired: num(state_field::RETIRED_GEN)
                .map(|g| (g.max(0) as u64, num(state_field::RETIRE_AT_MS).unwrap_or(0))),
            fresh_ms: InstanceBeat::pipeline_fresh_ms(&all, now),
            instances,
        }
    }

    /// Seconds since the pipeline was last known fresh (`None`: unknown).
    pub fn staleness_secs(&self) -> Option<f64> {
        self.fresh_ms
            .map(|f| ((self.at_ms - f).max(0)) as f64 / 1000.0)
    }

    fn export(&self) {
        metrics::gauge!("foldcache_cache_ready").set(if self.ready { 1.0 } else { 0.0 });
        metrics::gauge!("foldcache_cache_live_generation").set(self.live_gen as f64);
        metrics::gauge!("foldcache_cache_staleness_seconds")
            .set(self.staleness_secs().unwrap_or(f64::INFINITY));
        metrics::gauge!("foldcache_ingest_instances_live")
            .set(self.instances.iter().filter(|i| i.live).count() as f64);
        metrics::gauge!("foldcache_rebuild_in_progress").set(if self.build.is_some() {
            1.0
        } else {
            0.0
        });
    }
}

/// The latest [`ClusterView`], shared with the console (`None` until the
/// first read, or while Redis does not answer).
pub type Latest = Arc<Mutex<Option<ClusterView>>>;

/// Reads the deployment every second, publishes it in `latest` and as
/// gauges; runs until the task is dropped.
pub async fn watch(config: Config, redis: redis::Client, latest: Latest) {
    for (name, e) in &config.entities {
        metrics::gauge!("foldcache_entity_freshness_bound_seconds", "entity" => name.clone())
            .set(e.freshness_secs as f64);
    }
    let keys = KeySpace::new(config.redis.key_prefix.clone());
    let mut con: Option<redis::aio::MultiplexedConnection> = None;
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if con.is_none() {
            con = redis.get_multiplexed_async_connection().await.ok();
        }
        let Some(c) = con.as_mut() else { continue };
        match ClusterView::read(c, &keys).await {
            Ok(view) => {
                view.export();
                *crate::progress::lock(&latest) = Some(view);
            }
            Err(_) => {
                // Reconnect next time; the partition tasks report Redis
                // trouble themselves.
                con = None;
                *crate::progress::lock(&latest) = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_reads_the_marker_and_the_beats() {
        let state: HashMap<String, String> = [
            ("epoch", "e1"),
            ("live_gen", "3"),
            ("ready", "1"),
            ("build_gen", "4"),
            ("build_started_ms", "900"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let now = 100_000;
        let beats = vec![
            ("b".to_owned(), format!("{now}:{}:1000", now - 2_000)),
            ("a".to_owned(), "10:5:1000".to_owned()),
            ("junk".to_owned(), "x".to_owned()),
        ];
        let v = ClusterView::from_parts(&state, &beats, now);
        assert!(v.ready);
        assert_eq!(v.live_gen, 3);
        assert_eq!(v.build, Some((4, 900)));
        assert_eq!(v.retired, None);
        assert_eq!(
            v.instances
                .iter()
                .map(|i| (i.id.as_str(), i.live))
                .collect::<Vec<_>>(),
            [("a", false), ("b", true)]
        );
        assert_eq!(v.staleness_secs(), Some(2.0));
    }

    #[test]
    fn no_epoch_is_never_ready() {
        let state: HashMap<String, String> =
            [("ready".to_owned(), "1".to_owned())].into_iter().collect();
        let v = ClusterView::from_parts(&state, &[], 1);
        assert!(!v.ready);
        assert_eq!(v.staleness_secs(), None);
    }
}
