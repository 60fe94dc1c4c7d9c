//! Per-partition progress: where ingest stands against what fetches report.
//!
//! Two questions are answered here, from the same data:
//! - *caught up*: everything below the partition's high watermark, as
//!   reported by a Fetch response after this consumer started, is folded;
//! - *fresh as of T*: every record produced before time T is folded. Each
//!   statistics snapshot `(T, high watermark)` is kept until the folded
//!   position passes that watermark; then the partition is fresh as of T.
//!
//! High watermarks come from librdkafka's statistics, which take them from
//! Fetch responses. ListOffsets is never used (Tansu 0.6.0 answers it with
//! the last batch's base offset + 1).

use std::collections::{HashMap, VecDeque};

/// `(topic, partition)`.
pub type Tp = (String, i32);

/// What one statistics snapshot said about a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchView {
    /// High watermark from the last Fetch response.
    pub hi: i64,
    /// librdkafka's next fetch offset.
    pub next_fetch: i64,
    /// Records fetched but not yet handed to ingest.
    pub queued: i64,
    /// Offset after the last record handed to ingest.
    pub app_offset: i64,
}

impl FetchView {
    /// Whether a partition folded up to `position` has nothing left below
    /// this view's watermark.
    ///
    /// Only `position >= hi` is trusted. librdkafka's per-partition fetch
    /// queue can be empty while fetched records still wait in the consumer
    /// queue, so "fetcher at the end, nothing queued" is no proof: with a
    /// broker that returns a whole partition in one response it declared a
    /// replay caught up before a single record was folded (a false 404 after
    /// a Redis flush, caught by tests/rebuild.rs). Known limit: a partition
    /// whose last offset is a transaction marker (never delivered) only
    /// counts as caught up once a data record follows it.
    fn satisfied_by(&self, position: i64) -> bool {
        position >= self.hi
    }
}

/// Snapshots kept per partition; older ones are dropped, which only makes
/// the freshness estimate more conservative.
const HISTORY: usize = 64;

#[derive(Debug, Default)]
struct Partition {
    position: i64,
    view: Option<FetchView>,
    history: VecDeque<(i64, i64)>,
    fresh_ms: Option<i64>,
}

impl Partition {
    fn settle(&mut self) {
        while let Some(&(at, hi)) = self.history.front() {
            if hi > self.position {
                break;
            }
            self.history.pop_front();
            self.fresh_ms = Some(self.fresh_ms.map_or(at, |f| f.max(at)));
        }
    }
}

/// Progress of every assigned partition.
#[derive(Debug, Default)]
pub struct Progress {
    parts: HashMap<Tp, Partition>,
}

impl Progress {
    /// A partition was assigned; everything below `start` is already folded.
    pub fn assign(&mut self, tp: Tp, start: i64) {
        self.parts.insert(
            tp,
            Partition {
                position: start,
                ..Partition::default()
            },
        );
    }

    /// A partition was revoked.
    pub fn revoke(&mut self, tp: &Tp) {
        self.parts.remove(tp);
    }

    /// The next offset to fold, if the partition is assigned.
    pub fn position(&self, tp: &Tp) -> Option<i64> {
        self.parts.get(tp).map(|p| p.position)
    }

    /// Everything below `next` is folded.
    pub fn folded(&mut self, tp: &Tp, next: i64) {
        if let Some(p) = self.parts.get_mut(tp) {
            p.position = p.position.max(next);
            p.settle();
        }
    }

    /// A statistics snapshot taken at `now_ms`.
    pub fn observe(&mut self, tp: &Tp, view: FetchView, now_ms: i64) {
        let Some(p) = self.parts.get_mut(tp) else {
            return;
        };
        p.view = Some(view);
        if view.satisfied_by(p.position) {
            p.history.clear();
            p.fresh_ms = Some(now_ms);
        } else {
            if p.history.len() == HISTORY {
                p.history.pop_front();
            }
            p.history.push_back((now_ms, view.hi));
        }
    }

    /// Partitions with nothing left below their last reported watermark,
    /// with their position.
    pub fn caught_up(&self) -> Vec<(Tp, i64)> {
        self.parts
            .iter()
            .filter(|(_, p)| p.view.is_some_and(|v| v.satisfied_by(p.position)))
            .map(|(tp, p)| (tp.clone(), p.position))
            .collect()
    }

    /// Every record produced before the returned time (ms) is folded, for
    /// every assigned partition. `None` while some partition has no
    /// estimate yet; `Some(now_ms)` when nothing is assigned.
    pub fn fresh_ms(&self, now_ms: i64) -> Option<i64> {
        self.parts
            .values()
            .try_fold(now_ms, |acc, p| p.fresh_ms.map(|f| acc.min(f)))
    }

    /// The last reported end of each partition (a build's progress target).
    pub fn targets(&self) -> Vec<(Tp, i64)> {
        self.parts
            .iter()
            .filter_map(|(tp, p)| p.view.map(|v| (tp.clone(), v.hi)))
            .collect()
    }

    /// Records between the folded position and the last reported watermark.
    pub fn lag(&self) -> Vec<(Tp, i64)> {
        self.parts
            .iter()
            .filter_map(|(tp, p)| p.view.map(|v| (tp.clone(), (v.hi - p.position).max(0))))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp() -> Tp {
        ("t".into(), 0)
    }

    fn view(hi: i64) -> FetchView {
        FetchView {
            hi,
            next_fetch: hi,
            queued: 1,
            app_offset: hi,
        }
    }

    #[test]
    fn caught_up_only_once_the_reported_end_is_folded() {
        let mut p = Progress::default();
        p.assign(tp(), 0);
        assert!(p.caught_up().is_empty(), "no fetch seen yet");
        p.observe(&tp(), view(10), 1_000);
        assert!(p.caught_up().is_empty());
        p.folded(&tp(), 10);
        assert_eq!(p.caught_up(), vec![(tp(), 10)]);
    }

    #[test]
    fn freshness_is_the_time_of_the_last_passed_watermark() {
        let mut p = Progress::default();
        p.assign(tp(), 0);
        assert_eq!(p.fresh_ms(5_000), None);
        p.observe(&tp(), view(10), 1_000);
        p.observe(&tp(), view(20), 2_000);
        p.observe(&tp(), view(30), 3_000);
        p.folded(&tp(), 25);
        assert_eq!(
            p.fresh_ms(5_000),
            Some(2_000),
            "records produced before t=2s are folded"
        );
        p.folded(&tp(), 30);
        assert_eq!(p.fresh_ms(5_000), Some(3_000));
        // At the end with nothing pending: fresh as of the snapshot.
        p.observe(&tp(), view(30), 4_000);
        assert_eq!(p.fresh_ms(5_000), Some(4_000));
    }

    #[test]
    fn freshness_is_the_minimum_over_partitions_and_now_when_idle() {
        let mut p = Progress::default();
        assert_eq!(
            p.fresh_ms(9_000),
            Some(9_000),
            "nothing assigned, nothing stale"
        );
        p.assign(tp(), 0);
        p.assign(("t".into(), 1), 0);
        p.observe(&tp(), view(0), 1_000);
        p.observe(&("t".into(), 1), view(0), 2_000);
        assert_eq!(p.fresh_ms(9_000), Some(1_000));
    }

    #[test]
    fn fetched_but_undelivered_records_are_not_caught_up() {
        let mut p = Progress::default();
        p.assign(tp(), 0);
        // The whole partition was fetched (next_fetch = hi) and moved to the
        // consumer queue (fetch queue empty), but nothing is folded yet.
        let view = FetchView {
            hi: 5000,
            next_fetch: 5000,
            queued: 0,
            app_offset: -1001,
        };
        p.observe(&tp(), view, 1_000);
        assert!(p.caught_up().is_empty());
        assert_eq!(p.fresh_ms(2_000), None);
    }
}
