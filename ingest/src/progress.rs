//! Per-partition progress: where one partition stands against what fetches
//! report, owned by that partition's task.
//!
//! Three questions are answered here, from the same data:
//! - *caught up*: everything below the partition's end, as reported by a
//!   Fetch response after this consumer started, is folded;
//! - *fresh as of T*: every record produced before time T is folded. Each
//!   statistics snapshot `(T, end)` is kept until the folded position passes
//!   that end; then the partition is fresh as of T;
//! - *gone back in time*: the broker reports an end below the offset Redis
//!   already holds (topic deleted and re-created, broker data loss).
//!
//! Ends come from librdkafka's statistics, which take them from Fetch
//! responses. ListOffsets is never used (Tansu 0.6.0 answers it with the
//! last batch's base offset + 1).
//!
//! Only the partition's own task reads its records, so only it can say
//! "nothing received is still unfolded"; it passes that as `idle` to
//! [`PartitionProgress::observe`]. That is what lets a partition whose last
//! records are transaction markers (never delivered) count as caught up:
//! librdkafka moves its application offset past control records, and an
//! idle task has folded everything it was handed.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

/// `(topic, partition)`.
pub type Tp = (String, i32);

/// What one statistics snapshot said about a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchView {
    /// High watermark from the last Fetch response.
    pub hi: i64,
    /// Offset after the last record (or control record) handed to ingest;
    /// negative while nothing was.
    pub app_offset: i64,
    /// When the snapshot was taken, ms since the epoch.
    pub at_ms: i64,
}

/// The latest statistics snapshot of every partition a consumer fetches,
/// written by librdkafka's statistics callback, read by partition tasks.
pub type FetchViews = Arc<Mutex<BTreeMap<Tp, FetchView>>>;

/// Snapshots kept per partition; older ones are dropped, which only makes
/// the freshness estimate more conservative.
const HISTORY: usize = 64;

/// A snapshot describes the log after the position last moved only if it
/// was taken this much later (a fetch response can be that old when the
/// statistics are emitted).
const SETTLE_MS: i64 = 2_000;

/// How long an end below the stored position must persist before the log
/// counts as gone back in time.
const CONFIRM_MS: i64 = 5_000;

/// One partition's progress.
#[derive(Debug, Clone, Default)]
pub struct PartitionProgress {
    /// Next offset to fold: everything below is in Redis.
    position: i64,
    view: Option<FetchView>,
    history: VecDeque<(i64, i64)>,
    fresh_ms: Option<i64>,
    caught_up: bool,
    /// When the position last moved (or the task started).
    moved_at_ms: i64,
    /// Since when settled snapshots report an end below the position.
    behind_since_ms: Option<i64>,
}

impl PartitionProgress {
    /// A partition whose records below `start` are already folded.
    pub fn new(start: i64) -> Self {
        Self::new_at(start, foldcache_common::runtime::now_ms())
    }

    /// Like [`PartitionProgress::new`], at time `now_ms`.
    pub fn new_at(start: i64, now_ms: i64) -> Self {
        Self {
            position: start,
            moved_at_ms: now_ms,
            ..Self::default()
        }
    }

    /// The next offset to fold.
    pub fn position(&self) -> i64 {
        self.position
    }

    /// Everything below `next` is folded.
    pub fn folded(&mut self, next: i64) {
        if next > self.position {
            self.moved_at_ms = foldcache_common::runtime::now_ms();
            self.behind_since_ms = None;
        }
        self.position = self.position.max(next);
        while let Some(&(at, hi)) = self.history.front() {
            if hi > self.position {
                break;
            }
            self.history.pop_front();
            self.fresh_ms = Some(self.fresh_ms.map_or(at, |f| f.max(at)));
        }
    }

    /// A statistics snapshot; `idle` says that every record the task was
    /// handed so far is folded.
    pub fn observe(&mut self, view: FetchView, idle: bool) {
        if view.hi < 0 {
            return;
        }
        self.view = Some(view);
        let settled = view.at_ms >= self.moved_at_ms + SETTLE_MS;
        self.behind_since_ms = if settled && view.hi < self.position {
            Some(self.behind_since_ms.unwrap_or(view.at_ms))
        } else {
            None
        };
        let at_end = self.position >= view.hi || (idle && view.app_offset >= view.hi);
        if at_end {
            self.caught_up = true;
            self.history.clear();
            self.fresh_ms = Some(self.fresh_ms.map_or(view.at_ms, |f| f.max(view.at_ms)));
        } else if self.history.back().is_none_or(|&(_, hi)| hi != view.hi) {
            if self.history.len() == HISTORY {
                self.history.pop_front();
            }
            self.history.push_back((view.at_ms, view.hi));
        }
    }

    /// Whether the partition reached a fetch-reported end at least once.
    pub fn caught_up(&self) -> bool {
        self.caught_up
    }

    /// Every record produced before the returned time (ms) is folded.
    pub fn fresh_ms(&self) -> Option<i64> {
        self.fresh_ms
    }

    /// The last fetch-reported end.
    pub fn end(&self) -> Option<i64> {
        self.view.map(|v| v.hi)
    }

    /// Records between the folded position and the reported end.
    pub fn lag(&self) -> Option<i64> {
        self.view.map(|v| (v.hi - self.position).max(0))
    }

    /// `Some(end)` when the broker has reported an end below what Redis
    /// already holds, in snapshots taken well after the position last moved,
    /// for a while: the partition's log went back in time. (A snapshot older
    /// than the last fold naturally reports a smaller end.)
    pub fn source_went_back(&self) -> Option<i64> {
        let since = self.behind_since_ms?;
        self.view
            .filter(|v| v.hi < self.position && v.at_ms - since >= CONFIRM_MS)
            .map(|v| v.hi)
    }
}

/// What the jobs that are not per record (heartbeat, readiness, `/readyz`)
/// see of one partition: a copy its task publishes after each change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionStatus {
    /// Next offset to fold.
    pub position: i64,
    /// Last fetch-reported end.
    pub end: Option<i64>,
    /// Reached its end at least once.
    pub caught_up: bool,
    /// Every record produced before this time is folded.
    pub fresh_ms: Option<i64>,
    /// Why the partition cannot progress right now, if it cannot.
    pub stalled: Option<String>,
}

impl PartitionStatus {
    /// The status of `p`, with the task's stall reason.
    pub fn of(p: &PartitionProgress, stalled: Option<String>) -> Self {
        Self {
            position: p.position(),
            end: p.end(),
            caught_up: p.caught_up(),
            fresh_ms: p.fresh_ms(),
            stalled,
        }
    }
}

/// Every assigned partition's status, for one generation's consumer. Each
/// entry has one writer: its partition's task.
pub type Statuses = Arc<Mutex<BTreeMap<Tp, PartitionStatus>>>;

/// The partition statuses of every generation this instance consumes, for
/// `/readyz`.
pub type AllStatuses = Arc<Mutex<BTreeMap<u64, Statuses>>>;

/// Freshness of a set of partitions: the least fresh; `None` while one has
/// no estimate; `Some(now_ms)` when none is assigned.
pub fn fresh_ms<'a>(
    statuses: impl IntoIterator<Item = &'a PartitionStatus>,
    now_ms: i64,
) -> Option<i64> {
    statuses
        .into_iter()
        .try_fold(now_ms, |acc, s| s.fresh_ms.map(|f| acc.min(f)))
}

/// Locks a short-lived map. A panic while holding it leaves a plain map
/// behind; continuing with it is safe.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(hi: i64, app: i64, at: i64) -> FetchView {
        FetchView {
            hi,
            app_offset: app,
            at_ms: at,
        }
    }

    #[test]
    fn caught_up_only_once_the_reported_end_is_folded() {
        let mut p = PartitionProgress::new(0);
        assert!(!p.caught_up(), "no fetch seen yet");
        p.observe(view(10, -1001, 1_000), false);
        assert!(!p.caught_up());
        p.folded(10);
        p.observe(view(10, 10, 1_100), true);
        assert!(p.caught_up());
    }

    #[test]
    fn delivered_but_unfolded_records_are_not_caught_up() {
        // The whole partition was handed to the task (app offset at the
        // end), but the task still holds records in its batch.
        let mut p = PartitionProgress::new(0);
        p.observe(view(5000, 5000, 1_000), false);
        assert!(!p.caught_up());
        assert_eq!(p.fresh_ms(), None);
    }

    #[test]
    fn a_trailing_transaction_marker_counts_as_caught_up_when_idle() {
        // Records 0..=8 are data, 9 is a commit marker: position stops at 9
        // but librdkafka's application offset moves past the marker.
        let mut p = PartitionProgress::new(0);
        p.folded(9);
        p.observe(view(10, 10, 1_000), true);
        assert!(p.caught_up());
        assert_eq!(p.fresh_ms(), Some(1_000));
    }

    #[test]
    fn freshness_is_the_time_of_the_last_passed_end() {
        let mut p = PartitionProgress::new(0);
        p.observe(view(10, 0, 1_000), false);
        p.observe(view(20, 0, 2_000), false);
        p.observe(view(30, 0, 3_000), false);
        p.folded(25);
        assert_eq!(p.fresh_ms(), Some(2_000));
        p.folded(30);
        assert_eq!(p.fresh_ms(), Some(3_000));
        p.observe(view(30, 30, 4_000), true);
        assert_eq!(p.fresh_ms(), Some(4_000));
    }

    #[test]
    fn an_end_below_the_stored_position_for_a_while_is_a_log_gone_back() {
        let mut p = PartitionProgress::new_at(500, 0);
        assert_eq!(p.source_went_back(), None);
        p.observe(view(12, -1001, 1_000), false);
        assert_eq!(
            p.source_went_back(),
            None,
            "not settled: taken right after start"
        );
        p.observe(view(12, 12, 3_000), true);
        assert_eq!(p.source_went_back(), None, "not for long enough yet");
        p.observe(view(12, 12, 8_000), true);
        assert_eq!(p.source_went_back(), Some(12));
        let mut q = PartitionProgress::new_at(500, 0);
        q.observe(view(500, 500, 9_000), true);
        assert_eq!(q.source_went_back(), None);
    }

    #[test]
    fn a_snapshot_older_than_the_last_fold_is_no_log_gone_back() {
        let mut p = PartitionProgress::new_at(0, 0);
        p.folded(10);
        // Snapshots keep reporting the end seen before the fold for a
        // moment; the position moved at wall-clock time, much later than
        // these snapshot times.
        for at in [3_000, 9_000, 20_000] {
            p.observe(view(5, 5, at), false);
        }
        assert_eq!(p.source_went_back(), None);
    }

    #[test]
    fn freshness_is_the_minimum_over_partitions_and_now_when_idle() {
        assert_eq!(fresh_ms([], 9_000), Some(9_000));
        let a = PartitionStatus {
            fresh_ms: Some(1_000),
            ..PartitionStatus::default()
        };
        let b = PartitionStatus {
            fresh_ms: Some(2_000),
            ..PartitionStatus::default()
        };
        assert_eq!(fresh_ms([&a, &b], 9_000), Some(1_000));
        let c = PartitionStatus::default();
        assert_eq!(fresh_ms([&a, &c], 9_000), None);
    }
}
