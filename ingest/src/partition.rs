//! One partition's pipeline, in its own task: fetch queue → decode → batch →
//! dead letters → fold → offsets.
//!
//! The write of a batch (its dead letters, then its fold) is in flight
//! while the next batch is fetched and decoded: one write at a time, in
//! offset order, so per-key order and the offset fence are as if each
//! batch waited for the one before.
//!
//! A partition that cannot progress (Redis unreachable, the dead-letter topic
//! gone) stalls only itself: it retries with capped, jittered backoff, says
//! so once (a log line per state change, the
//! `foldcache_ingest_partition_stalled` gauge, `/readyz` detail), and every
//! other partition keeps folding. A record that can never be folded, of any
//! size or shape, costs one dead letter (an envelope if it is too big for
//! the dead-letter topic) and never stops anything.
//!
//! The task stops when its partition is revoked or ingest shuts down (it
//! folds its last batch first), or when the fold finds that its generation
//! or Redis changed under it (see [`PartitionExit`]).

use crate::budget::{Account, Budget};
use crate::dead_letter::{DeadLetter, DeadLetters, SendError};
use crate::decode::{Decoded, Limits, decode_within};
use crate::fold::{FoldError, FoldOutcome, Folder, PartitionBatch};
use crate::progress::{FetchViews, PartitionProgress, PartitionStatus, Statuses, Tp, lock};
use crate::purge::Purger;
use crate::rebalance::{KafkaConsumer, PartitionQueue};
use crate::retry::{Backoff, Stall};
use crate::source::Source;
use foldcache_common::keys::KeySpace;
use foldcache_common::runtime::now_ms;
use rdkafka::consumer::Consumer as _;
use rdkafka::message::{BorrowedMessage, Message as _};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A batch is folded once it holds this many bytes of values, whatever its
/// record count: memory stays bounded at any backlog.
const BATCH_MAX_BYTES: usize = 8 << 20;

/// What a record costs against the memory bound, as a multiple of what its
/// batch holds for it: the write encodes it twice more.
const WRITE_FACTOR: usize = 3;

/// How often an idle partition looks at its fetch statistics.
const OBSERVE_EVERY: Duration = Duration::from_millis(200);

/// What every partition task of one generation shares.
#[derive(Debug)]
pub struct Pipeline {
    /// The epoch every write is guarded by.
    pub epoch: String,
    /// The generation written.
    pub generation: u64,
    /// Key names.
    pub keys: KeySpace,
    /// The fold script.
    pub folder: Folder,
    /// The dead-letter producer.
    pub dead: DeadLetters,
    /// The CDN purge hook, if enabled.
    pub purger: Option<Purger>,
    /// Partition statuses (each task writes its own entry).
    pub statuses: Statuses,
    /// Fetch statistics (written by librdkafka's callback).
    pub views: FetchViews,
    /// Record limits.
    pub limits: Limits,
    /// Records per batch.
    pub batch_max_events: usize,
    /// The memory of unfolded records, shared by every partition.
    pub budget: Budget,
    /// Longest wait of a batch's first record.
    pub linger: Duration,
    /// Longest pause between retries.
    pub retry_max: Duration,
}

/// Why a partition task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionExit {
    /// Revoked or shut down, after folding its last batch.
    Drained,
    /// Redis lost foldcache's data (epoch gone).
    EpochLost,
    /// Its generation was replaced by a rebuild.
    Retired,
    /// Redis went back in time (holds less than it acknowledged).
    RedisWentBack,
    /// The partition's log went back in time (end below the stored offset).
    SourceWentBack,
}

/// One partition's task.
pub struct PartitionTask {
    tp: Tp,
    source: Arc<Source>,
    consumer: Arc<KafkaConsumer>,
    pipeline: Arc<Pipeline>,
    con: redis::aio::ConnectionManager,
    stop: CancellationToken,
    progress: PartitionProgress,
    stall: Stall,
    backoff: Backoff,
    started_ms: i64,
}

impl std::fmt::Debug for PartitionTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionTask")
            .field("tp", &self.tp)
            .field("progress", &self.progress)
            .finish_non_exhaustive()
    }
}

/// Records read but not yet folded.
struct Batch {
    partition: PartitionBatch,
    /// Dead letters not sent yet (a write that failed halfway resumes
    /// after the last one sent).
    dead: VecDeque<DeadLetter>,
    records: usize,
    bytes: usize,
    /// Its share of the memory bound, given back when it is dropped.
    account: Account,
    /// When the first record arrived (the linger counts from it).
    started: Option<Instant>,
    /// When its write first started.
    written: Option<Instant>,
}

impl Batch {
    fn new(tp: &Tp, budget: &Budget) -> Self {
        Self {
            partition: PartitionBatch::new(&tp.0, tp.1),
            dead: VecDeque::new(),
            records: 0,
            bytes: 0,
            account: budget.account(),
            started: None,
            written: None,
        }
    }
}

/// Why one attempt to write a batch failed.
enum WriteError {
    Dead(SendError),
    Fold(FoldError),
}

/// One attempt to write a batch, running while the next batch fills; it
/// hands the batch back, to be retried on failure.
type Write = Pin<Box<dyn Future<Output = (Batch, Result<FoldOutcome, WriteError>)> + Send>>;

/// One attempt: the batch's dead letters (each sent once), then its fold
/// with `known` as the offset Redis must hold at least.
async fn write(
    pipeline: Arc<Pipeline>,
    mut con: redis::aio::ConnectionManager,
    mut batch: Batch,
    known: i64,
) -> (Batch, Result<FoldOutcome, WriteError>) {
    while let Some(letter) = batch.dead.front() {
        if let Err(e) = pipeline.dead.send(letter).await {
            return (batch, Err(WriteError::Dead(e)));
        }
        batch.dead.pop_front();
    }
    let folded = pipeline
        .folder
        .fold_from(
            &mut con,
            &pipeline.epoch,
            pipeline.generation,
            std::slice::from_ref(&batch.partition),
            &[known],
        )
        .await
        .map(|o| o.into_iter().next().unwrap_or_default())
        .map_err(WriteError::Fold);
    (batch, folded)
}

/// The write in flight, if any.
async fn written(write: &mut Option<Write>) -> (Batch, Result<FoldOutcome, WriteError>) {
    match write {
        Some(w) => w.as_mut().await,
        None => std::future::pending().await,
    }
}

impl PartitionTask {
    /// A task for `tp`, starting at `start` (the offset stored in Redis).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        tp: Tp,
        source: Arc<Source>,
        consumer: Arc<KafkaConsumer>,
        pipeline: Arc<Pipeline>,
        con: redis::aio::ConnectionManager,
        stop: CancellationToken,
        start: i64,
    ) -> Self {
        let backoff = Backoff::new(pipeline.retry_max);
        Self {
            tp,
            source,
            consumer,
            pipeline,
            con,
            stop,
            progress: PartitionProgress::new(start),
            stall: Stall::default(),
            backoff,
            started_ms: now_ms(),
        }
    }

    /// Runs on `queue` (the partition's own fetch queue) until revoked,
    /// shut down, or its generation or Redis changed.
    pub async fn run(mut self, queue: PartitionQueue) -> PartitionExit {
        self.publish();
        // Present from the start, so dashboards and alerts see 0, not nothing.
        self.stalled_gauge(false);
        let mut batch = Batch::new(&self.tp, &self.pipeline.budget);
        let mut in_flight: Option<Write> = None;
        let mut observe = tokio::time::interval(OBSERVE_EVERY);
        observe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let exit = loop {
            // Over its share of the memory bound: no more records until
            // credit comes back, or until the batch is written.
            let starved = batch.account.short() > 0;
            let full = batch.records >= self.pipeline.batch_max_events
                || batch.bytes >= BATCH_MAX_BYTES
                || starved;
            let deadline = batch
                .started
                .map(|s| tokio::time::Instant::from_std(s + self.pipeline.linger));
            let idle = in_flight.is_none();
            tokio::select! {
                biased;
                () = self.stop.cancelled() => {
                    break self.finish(in_flight.take(), batch).await;
                }
                (done, result) = written(&mut in_flight) => {
                    in_flight = None;
                    match self.settle(done, result).await {
                        Ok(None) => {}
                        Ok(Some(retry)) => in_flight = Some(self.launch(retry)),
                        Err(exit) => break exit,
                    }
                }
                () = sleep_until(deadline), if idle && (deadline.is_some() || full) => {
                    let ready = std::mem::replace(&mut batch, Batch::new(&self.tp, &self.pipeline.budget));
                    if ready.records > 0 {
                        in_flight = Some(self.launch(ready));
                    }
                }
                () = batch.account.settle(), if starved => {}
                msg = queue.recv(), if !full => match msg {
                    Ok(m) => self.add(&mut batch, &m),
                    Err(e) => {
                        if self.stall.failed("broker") {
                            tracing::warn!(topic = %self.tp.0, partition = self.tp.1, error = %e, "fetch error");
                        }
                    }
                },
                _ = observe.tick() => {
                    if let Some(exit) = self.observe(batch.records == 0 && idle) {
                        break exit;
                    }
                }
            }
        };
        self.stalled_gauge(false);
        exit
    }

    fn add(&mut self, batch: &mut Batch, m: &BorrowedMessage<'_>) {
        let offset = m.offset();
        if offset < self.progress.position() {
            // Already in Redis (a replay after assignment): not even decoded.
            metrics::counter!("foldcache_ingest_replay_skipped_total").increment(1);
            return;
        }
        batch.started.get_or_insert_with(Instant::now);
        batch.records += 1;
        let raw = m.payload_len() + m.key().map_or(0, <[u8]>::len);
        batch.bytes += raw;
        let limits = self.pipeline.limits;
        match decode_within(&self.source, m.key(), m.payload(), limits) {
            Ok(decoded) => {
                let kind = match decoded {
                    Decoded::Upsert { .. } => "upsert",
                    Decoded::Delete { .. } => "delete",
                    Decoded::Filtered { .. } => "filtered",
                    Decoded::Link { .. } => "link",
                };
                metrics::counter!("foldcache_ingest_records_total",
                    "entity" => self.source.entity.to_string(), "kind" => kind)
                .increment(1);
                let held = batch.partition.push(
                    &self.pipeline.keys,
                    self.pipeline.generation,
                    &self.source,
                    offset,
                    m.timestamp().to_millis().unwrap_or_else(now_ms),
                    decoded,
                );
                // Its write encodes it twice more (the pipeline's commands,
                // then the request): about three times what the batch holds.
                batch.account.charge(WRITE_FACTOR * held);
            }
            Err(poison) => {
                batch.account.charge(raw);
                batch.partition.advance(offset);
                batch.dead.push_back(DeadLetter {
                    topic: self.tp.0.clone(),
                    partition: self.tp.1,
                    offset,
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    reason: poison.code(),
                    error: poison.to_string(),
                });
            }
        }
    }

    /// Starts writing `batch` (see [`write`]); Redis must hold at least
    /// this task's position.
    fn launch(&self, mut batch: Batch) -> Write {
        batch.written.get_or_insert_with(Instant::now);
        Box::pin(write(
            self.pipeline.clone(),
            self.con.clone(),
            batch,
            self.progress.position(),
        ))
    }

    /// At revocation or shutdown: the write in flight, then the last batch,
    /// each retried until it passes (the generation's loop aborts the task
    /// if a shutdown's drain time runs out first: nothing more was stored,
    /// so the next owner folds it again).
    async fn finish(&mut self, in_flight: Option<Write>, last: Batch) -> PartitionExit {
        let last = (last.records > 0).then(|| self.launch(last));
        for mut w in in_flight.into_iter().chain(last) {
            loop {
                let (done, result) = w.await;
                match self.settle(done, result).await {
                    Ok(None) => break,
                    Ok(Some(retry)) => w = self.launch(retry),
                    Err(exit) => return exit,
                }
            }
        }
        PartitionExit::Drained
    }

    /// Takes in the result of a write: the offset, the purge, the metrics;
    /// after a transient failure, waits out the backoff and hands the batch
    /// back to be written again (the fence makes the retry exact).
    async fn settle(
        &mut self,
        batch: Batch,
        result: Result<FoldOutcome, WriteError>,
    ) -> Result<Option<Batch>, PartitionExit> {
        let outcome = match result {
            Ok(o) => o,
            Err(WriteError::Dead(e)) => {
                self.failed(e.kind(), &e).await;
                return Ok(Some(batch));
            }
            Err(WriteError::Fold(FoldError::EpochChanged)) => return Err(PartitionExit::EpochLost),
            Err(WriteError::Fold(FoldError::Retired)) => return Err(PartitionExit::Retired),
            Err(WriteError::Fold(e @ FoldError::WentBack { .. })) => {
                tracing::error!(topic = %self.tp.0, partition = self.tp.1, error = %e,
                    generation = self.pipeline.generation, "Redis went back in time");
                return Err(PartitionExit::RedisWentBack);
            }
            Err(WriteError::Fold(e @ (FoldError::Redis(_) | FoldError::StageLost))) => {
                self.failed("redis", &e).await;
                return Ok(Some(batch));
            }
        };
        self.recovered();
        let next = batch.partition.next_offset();
        self.progress.folded(next);
        // Mirror into the consumer group for monitoring tools.
        let _ = self.consumer.store_offset(&self.tp.0, self.tp.1, next);
        if let Some(p) = &self.pipeline.purger {
            let mut tags = batch.partition.tags();
            let entity = &self.source.entity;
            tags.extend(
                outcome
                    .changed_ids
                    .iter()
                    .map(|id| format!("{entity}/{id}")),
            );
            p.purge(tags);
        }
        let entity = self.source.entity.to_string();
        for (label, n) in [
            ("upserted", outcome.upserted),
            ("deleted", outcome.deleted),
            ("skipped", outcome.skipped),
        ] {
            metrics::counter!("foldcache_ingest_folded_total", "entity" => entity.clone(), "outcome" => label)
                .increment(n);
        }
        if let Some(t) = batch.written {
            metrics::histogram!("foldcache_ingest_batch_seconds").record(t.elapsed().as_secs_f64());
        }
        tracing::debug!(topic = %self.tp.0, partition = self.tp.1, records = batch.records, next, "batch folded");
        self.publish();
        Ok(None)
    }

    /// Looks at the latest fetch statistics; `idle` = nothing unfolded.
    fn observe(&mut self, idle: bool) -> Option<PartitionExit> {
        let view = lock(&self.pipeline.views).get(&self.tp).copied();
        // Only snapshots taken since this task started describe this
        // assignment.
        let view = view.filter(|v| v.at_ms >= self.started_ms)?;
        self.progress.observe(view, idle);
        if let Some(end) = self.progress.source_went_back() {
            tracing::error!(topic = %self.tp.0, partition = self.tp.1, end,
                stored = self.progress.position(), generation = self.pipeline.generation,
                "the partition's log went back in time: the broker reports an end below the offset Redis holds");
            return Some(PartitionExit::SourceWentBack);
        }
        let budget = &self.pipeline.budget;
        metrics::gauge!("foldcache_ingest_unfolded_bytes")
            .set((budget.total() - budget.available()) as f64);
        if let Some(lag) = self.progress.lag() {
            metrics::gauge!("foldcache_ingest_partition_lag",
                "topic" => self.tp.0.clone(), "partition" => self.tp.1.to_string())
            .set(lag as f64);
        }
        self.publish();
        None
    }

    async fn failed(&mut self, reason: &str, error: &(dyn std::fmt::Display + Sync)) {
        if self.stall.failed(reason) {
            tracing::warn!(topic = %self.tp.0, partition = self.tp.1, reason, error = %error,
                "partition stalled: retrying with backoff");
            self.stalled_gauge(true);
            self.publish();
        }
        tokio::time::sleep(self.backoff.next_delay()).await;
    }

    fn recovered(&mut self) {
        self.backoff.reset();
        if let Some(failures) = self.stall.recovered() {
            tracing::info!(topic = %self.tp.0, partition = self.tp.1, failures, "partition recovered");
            self.stalled_gauge(false);
        }
    }

    fn stalled_gauge(&self, stalled: bool) {
        metrics::gauge!("foldcache_ingest_partition_stalled",
            "topic" => self.tp.0.clone(), "partition" => self.tp.1.to_string())
        .set(if stalled { 1.0 } else { 0.0 });
    }

    fn publish(&self) {
        let status = PartitionStatus::of(&self.progress, self.stall.reason().map(str::to_owned));
        lock(&self.pipeline.statuses).insert(self.tp.clone(), status);
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await;
}
