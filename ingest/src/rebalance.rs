//! librdkafka's callbacks for one generation's consumer: statistics (fetch
//! ends for progress) and rebalances (which partitions this instance owns).
//!
//! On assignment, each partition's start comes from Redis (its offset stored
//! with the data), the assignment is applied, and each partition's fetch
//! queue is split off the consumer's main queue and handed, with its start,
//! to the generation's loop, which runs one task per partition
//! (`partition.rs`). On revocation the callback waits until the loop has
//! drained the revoked partitions' tasks (last batch folded, offsets stored)
//! or `ingest.drain_timeout_ms` passed, and only then lets librdkafka
//! release them, so the next owner starts where this one stopped.
//!
//! The callbacks run on the thread that polls the consumer's main queue
//! (`consumer.rs`), never on a tokio worker, so waiting there blocks no
//! partition.

use crate::cache_state::StateStore;
use crate::progress::{FetchView, FetchViews, Tp, lock};
use foldcache_common::config::ResumeMode;
use foldcache_common::runtime::now_ms;
use rdkafka::ClientContext;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{
    BaseConsumer, Consumer as _, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;
use tokio::sync::mpsc;

/// The Kafka consumer of one generation.
pub type KafkaConsumer = StreamConsumer<IngestContext>;

/// A partition's own fetch queue.
pub type PartitionQueue = StreamPartitionQueue<IngestContext>;

/// A partition newly owned by this instance.
pub struct Assigned {
    /// Which.
    pub tp: Tp,
    /// The consumer that owns it (one of the generation's).
    pub consumer: Arc<KafkaConsumer>,
    /// Its fetch queue, split off the main queue.
    pub queue: PartitionQueue,
    /// Next offset to fold, as stored in Redis (0 if none).
    pub start: i64,
}

impl std::fmt::Debug for Assigned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assigned")
            .field("tp", &self.tp)
            .field("start", &self.start)
            .finish_non_exhaustive()
    }
}

/// What a rebalance asks of the generation's loop.
#[derive(Debug)]
pub enum Ownership {
    /// Start a task for each of these partitions.
    Assigned(Vec<Assigned>),
    /// Drain these partitions' tasks, then answer on the channel.
    Revoked(Vec<Tp>, std::sync::mpsc::SyncSender<()>),
}

/// State shared between a generation's loop and librdkafka's callbacks.
#[derive(Debug)]
pub struct IngestContext {
    generation: u64,
    /// Which of the generation's consumers (`ingest.consumers`), from 0.
    member: usize,
    resume: ResumeMode,
    state: StateStore,
    redis: redis::Client,
    views: FetchViews,
    ownership: mpsc::UnboundedSender<Ownership>,
    consumer: OnceLock<Weak<KafkaConsumer>>,
    /// The partitions assigned to this consumer.
    owned: Mutex<HashSet<Tp>>,
    /// Set once the loop stopped listening: rebalances then apply at once.
    closing: AtomicBool,
    drain_timeout: Duration,
}

impl IngestContext {
    /// A context for generation `generation`'s consumer.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        generation: u64,
        member: usize,
        resume: ResumeMode,
        state: StateStore,
        redis: redis::Client,
        views: FetchViews,
        ownership: mpsc::UnboundedSender<Ownership>,
        drain_timeout: Duration,
    ) -> Self {
        Self {
            generation,
            member,
            resume,
            state,
            redis,
            views,
            ownership,
            consumer: OnceLock::new(),
            owned: Mutex::default(),
            closing: AtomicBool::new(false),
            drain_timeout,
        }
    }

    /// The consumer this context belongs to (partition queues are split from
    /// it); set once, right after it is created.
    pub fn set_consumer(&self, consumer: Weak<KafkaConsumer>) {
        let _ = self.consumer.set(consumer);
    }

    /// The loop no longer listens: later rebalances apply without waiting.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    fn assign(&self, base: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let elements: Vec<Tp> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        let stored = match self.stored_offsets(&elements) {
            Ok(s) => s,
            Err(e) => {
                // Safe: every partition then replays from its beginning and
                // the fold's fence skips what Redis already holds.
                tracing::warn!(error = %e, generation = self.generation,
                    "reading start offsets from Redis failed: replaying the assigned partitions from their beginning");
                vec![None; elements.len()]
            }
        };
        for ((t, p), s) in elements.iter().zip(&stored) {
            let offset = match (self.resume, s) {
                (ResumeMode::Seek, Some(o)) => Offset::Offset(*o),
                _ => Offset::Beginning,
            };
            if let Err(e) = tpl.set_partition_offset(t, *p, offset) {
                tracing::warn!(topic = %t, partition = p, error = %e, "setting a start offset failed");
            }
            lock(&self.views).remove(&(t.clone(), *p));
        }
        let applied = match base.rebalance_protocol() {
            RebalanceProtocol::Cooperative => base.incremental_assign(tpl),
            _ => base.assign(tpl),
        };
        if let Err(e) = applied {
            tracing::error!(error = %e, generation = self.generation, "applying an assignment failed");
            return;
        }
        lock(&self.owned).extend(elements.iter().cloned());
        // Split right after the assignment (an assignment resets split
        // queues), before this thread polls the main queue again.
        let Some(consumer) = self.consumer.get().and_then(Weak::upgrade) else {
            return;
        };
        let mut assigned = Vec::with_capacity(elements.len());
        for ((t, p), s) in elements.into_iter().zip(stored) {
            match consumer.split_partition_queue(&t, p) {
                Some(queue) => {
                    tracing::info!(topic = %t, partition = p, offset = s.unwrap_or(0),
                        generation = self.generation, consumer = self.member, "partition assigned");
                    assigned.push(Assigned {
                        tp: (t, p),
                        consumer: consumer.clone(),
                        queue,
                        start: s.unwrap_or(0),
                    });
                }
                None => {
                    tracing::error!(topic = %t, partition = p, "splitting a partition queue failed")
                }
            }
        }
        let _ = self.ownership.send(Ownership::Assigned(assigned));
    }

    fn revoke(&self, base: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let tps: Vec<Tp> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        if !self.closing.load(Ordering::SeqCst) && !tps.is_empty() {
            let (done, wait) = std::sync::mpsc::sync_channel(1);
            if self
                .ownership
                .send(Ownership::Revoked(tps.clone(), done))
                .is_ok()
                && wait
                    .recv_timeout(self.drain_timeout + Duration::from_secs(1))
                    .is_err()
            {
                tracing::warn!(
                    generation = self.generation,
                    "revoked partitions did not drain in time"
                );
            }
        }
        for (t, p) in &tps {
            tracing::info!(topic = %t, partition = p, generation = self.generation,
                consumer = self.member, "partition revoked");
        }
        {
            let mut owned = lock(&self.owned);
            for tp in &tps {
                owned.remove(tp);
            }
        }
        let applied = match base.rebalance_protocol() {
            RebalanceProtocol::Cooperative => base.incremental_unassign(tpl),
            _ => base.unassign(),
        };
        if let Err(e) = applied {
            tracing::warn!(error = %e, "releasing revoked partitions failed");
        }
    }

    /// Each partition's stored next offset. A short synchronous Redis read
    /// on the callback thread: rebalances are rare and the read is bounded
    /// by its timeout.
    fn stored_offsets(&self, tps: &[Tp]) -> anyhow::Result<Vec<Option<i64>>> {
        let mut con = self
            .redis
            .get_connection_with_timeout(Duration::from_secs(5))?;
        con.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut out = Vec::with_capacity(tps.len());
        for (t, p) in tps {
            out.push(self.state.stored_offset(&mut con, self.generation, t, *p)?);
        }
        Ok(out)
    }
}

impl ClientContext for IngestContext {
    fn stats(&self, stats: Statistics) {
        let at_ms = now_ms();
        let owned = lock(&self.owned);
        let mut views = lock(&self.views);
        for (topic, t) in &stats.topics {
            for (p, s) in &t.partitions {
                if *p < 0 || s.hi_offset < 0 {
                    continue;
                }
                // Only the partitions this consumer owns: a generation's
                // other consumers report theirs, and librdkafka goes on
                // reporting a revoked one's last figures.
                let tp = (topic.clone(), *p);
                if !owned.contains(&tp) {
                    continue;
                }
                views.insert(
                    tp,
                    FetchView {
                        hi: s.hi_offset,
                        app_offset: s.app_offset,
                        at_ms,
                    },
                );
            }
        }
    }
}

impl ConsumerContext for IngestContext {
    fn rebalance(
        &self,
        base: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(base, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.revoke(base, tpl),
            other => {
                tracing::error!(error = ?other, generation = self.generation, "rebalance error");
                lock(&self.owned).clear();
                let _ = base.unassign();
            }
        }
    }
}
