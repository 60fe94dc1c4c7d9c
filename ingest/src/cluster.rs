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
use std::collections::{BTreeMap, HashMap, VecDeque};
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
    /// The live generation's next offset per `{topic}/{partition}`, from
    /// Redis (every instance's partitions).
    pub offsets: BTreeMap<String, i64>,
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
        let mut view = Self::from_parts(&state, &beats, now_ms());
        if view.epoch.is_some() {
            view.offsets = redis::cmd("HGETALL")
                .arg(keys.offsets(view.live_gen))
                .query_async(con)
                .await?;
        }
        Ok(view)
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
            offsets: BTreeMap::new(),
        }
    }

    /// Records folded into the live generation (offsets summed).
    pub fn folded(&self) -> i64 {
        self.offsets.values().sum()
    }

    /// What changed from `prev` to `self`, in words (for the console's
    /// recent events).
    pub fn changes_since(&self, prev: &ClusterView) -> Vec<String> {
        let mut out = Vec::new();
        match (&prev.epoch, &self.epoch) {
            (Some(a), Some(b)) if a != b => out.push(
                "the cache went cold (new epoch): every topic is replayed from offset zero".into(),
            ),
            (Some(_), None) => out.push("Redis holds no foldcache cache (lost its data?)".into()),
            _ => {}
        }
        if let Some((g, _)) = self.build
            && prev.build.map(|(p, _)| p) != Some(g)
        {
            out.push(format!("rebuild of generation {g} started"));
        }
        if self.epoch == prev.epoch && self.live_gen != prev.live_gen {
            out.push(format!(
                "generation {} swapped in: readers switched from generation {}",
                self.live_gen, prev.live_gen
            ));
        }
        if let Some((g, _)) = prev.build
            && self.build.is_none()
            && self.live_gen != g
        {
            out.push(format!("rebuild of generation {g} abandoned"));
        }
        if let Some((g, _)) = prev.retired
            && self.retired.is_none()
            && self.epoch == prev.epoch
        {
            out.push(format!("retired generation {g} removed (clean-up done)"));
        }
        if self.ready != prev.ready {
            out.push(if self.ready {
                format!("cache ready: generation {} caught up", self.live_gen)
            } else {
                "cache not ready: lookups answer 503 until it catches up".into()
            });
        }
        for i in &self.instances {
            let before = prev.instances.iter().find(|p| p.id == i.id).map(|p| p.live);
            if i.live && before != Some(true) {
                out.push(format!("instance {} is beating", i.id));
            } else if !i.live && before == Some(true) {
                out.push(format!("instance {} stopped beating", i.id));
            }
        }
        out
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

/// Recent events kept for the console.
const EVENTS: usize = 30;

/// The window the fold rate is measured over.
const RATE_WINDOW_MS: i64 = 10_000;

/// What the console shows of the deployment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The latest view (`None` until the first read, or while Redis does
    /// not answer).
    pub view: Option<ClusterView>,
    /// Why the last read failed, if it did.
    pub error: Option<String>,
    /// Records folded per second into the live generation, over the last
    /// ten seconds.
    pub fold_rate: Option<f64>,
    /// Recent changes, newest first: `(ms, what)`.
    pub events: VecDeque<(i64, String)>,
    samples: VecDeque<(i64, i64, u64)>,
}

impl Snapshot {
    /// Takes a new view: events, fold rate.
    pub fn update(&mut self, view: ClusterView) {
        if let Some(prev) = &self.view {
            for what in view.changes_since(prev) {
                tracing::info!(event = %what, "deployment changed");
                self.events.push_front((view.at_ms, what));
            }
            self.events.truncate(EVENTS);
        }
        let key = (view.at_ms, view.folded(), view.live_gen);
        // Samples of another generation are not comparable.
        self.samples
            .retain(|s| s.2 == view.live_gen && key.0 - s.0 <= RATE_WINDOW_MS);
        self.fold_rate = self.samples.front().and_then(|&(at, folded, _)| {
            (key.0 > at).then(|| (key.1 - folded).max(0) as f64 * 1000.0 / (key.0 - at) as f64)
        });
        self.samples.push_back(key);
        self.view = Some(view);
        self.error = None;
    }
}

/// The latest [`Snapshot`], shared with the console.
pub type Latest = Arc<Mutex<Snapshot>>;

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
                crate::progress::lock(&latest).update(view);
            }
            Err(e) => {
                // Reconnect next time; the partition tasks report Redis
                // trouble themselves.
                con = None;
                let mut l = crate::progress::lock(&latest);
                l.error = Some(format!("Redis did not answer: {e}"));
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
    fn changes_are_told_in_words_and_the_fold_rate_measured() {
        let base = |live: &str, build: Option<&str>, retired: Option<&str>, ready: &str| {
            let mut m: HashMap<String, String> =
                [("epoch", "e1"), ("live_gen", live), ("ready", ready)]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
            if let Some(b) = build {
                m.insert("build_gen".into(), b.into());
            }
            if let Some(r) = retired {
                m.insert("retired_gen".into(), r.into());
            }
            m
        };
        let mut snap = Snapshot::default();
        let mut v = ClusterView::from_parts(&base("1", None, None, "1"), &[], 1_000);
        v.offsets.insert("t/0".into(), 100);
        snap.update(v);
        let mut v = ClusterView::from_parts(&base("1", Some("2"), None, "1"), &[], 3_000);
        v.offsets.insert("t/0".into(), 300);
        snap.update(v);
        assert_eq!(snap.fold_rate, Some(100.0));
        snap.update(ClusterView::from_parts(
            &base("2", None, Some("1"), "1"),
            &[],
            4_000,
        ));
        assert_eq!(snap.fold_rate, None, "a new generation starts its own rate");
        snap.update(ClusterView::from_parts(
            &base("2", None, None, "1"),
            &[],
            5_000,
        ));
        let events: Vec<&str> = snap.events.iter().rev().map(|(_, e)| e.as_str()).collect();
        assert_eq!(
            events,
            [
                "rebuild of generation 2 started",
                "generation 2 swapped in: readers switched from generation 1",
                "retired generation 1 removed (clean-up done)"
            ]
        );
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
