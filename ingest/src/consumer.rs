//! One generation's Kafka consumer: group membership and one task per
//! assigned partition.
//!
//! ```text
//!  poller thread ── polls the main queue: rebalance + statistics callbacks
//!        │                (rebalance.rs)
//!        ▼ Ownership::{Assigned, Revoked}
//!  generation loop (this file) ── starts / drains partition tasks
//!        ├── partition task × N  (partition.rs: queue → decode → batch → fold)
//!        ├── heartbeat           (heartbeat.rs, while live)
//!        ├── readiness           (readiness.rs: caught up, ready, swap)
//!        └── role watch          (marker: live, build or retired)
//! ```
//!
//! Offsets live in Redis (`{prefix}:g{gen}:offsets`), written by the same
//! script that writes the data, so they can never disagree with it. Kafka's
//! committed offsets only mirror them for monitoring.

use crate::budget::Budget;
use crate::cache_state::{Role, StateStore};
use crate::dead_letter::DeadLetters;
use crate::decode::Limits;
use crate::fold::Folder;
use crate::heartbeat::{Heartbeat, HeartbeatExit};
use crate::kafka::{ClientKind, kafka_client_config};
use crate::partition::{PartitionExit, PartitionTask, Pipeline};
use crate::progress::{AllStatuses, FetchViews, Statuses, Tp, lock};
use crate::purge::Purger;
use crate::readiness::Readiness;
use crate::rebalance::{IngestContext, KafkaConsumer, Ownership};
use crate::rebuild::Rebuilds;
use crate::source::Sources;
use anyhow::Context as _;
use foldcache_common::config::Config;
use foldcache_common::keys::KeySpace;
use rdkafka::consumer::Consumer as _;
use rdkafka::producer::FutureProducer;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// librdkafka's bound on pre-fetched records per partition queue, and
/// foldcache's default for it (KiB). librdkafka keeps a fetch response
/// whole until every record in it is consumed, so the memory it holds
/// grows as partitions drift apart, the faster the deeper the queues: over
/// a 1,000,000-record backlog on 6 partitions ingest's peak RSS was
/// 126–210 MiB at 8 MiB and 99–132 MiB at 4 MiB, for a rebuild about 6 %
/// slower (medians of 6 and 9 runs, docs/BENCHMARKS.md, session 10).
const PREFETCH_PROPERTY: &str = "queued.max.messages.kbytes";
const PREFETCH_KBYTES: &str = "4096";

/// How often the loop reads its generation's role from the marker.
const ROLE_EVERY: Duration = Duration::from_millis(500);

/// What the cache went back in time through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WentBack {
    /// Redis holds less than it acknowledged.
    Redis,
    /// A partition's log ends below the offset Redis holds.
    Source,
}

impl WentBack {
    /// Label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            WentBack::Redis => "redis",
            WentBack::Source => "source",
        }
    }
}

/// Why a generation's consumer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Shut down (SIGTERM).
    Shutdown,
    /// Redis lost foldcache's data (epoch gone).
    EpochLost,
    /// Its generation was replaced by a rebuild.
    Retired,
    /// Redis or a source went back in time.
    WentBack(WentBack),
    /// A record reached the main queue (a partition queue split lost a
    /// race with the fetcher): start the consumer again; the fence makes
    /// that exact.
    Restart,
}

/// What a generation's consumer needs from the running ingest.
#[derive(Debug, Clone)]
pub struct Deps {
    /// The configuration.
    pub config: Config,
    /// Sources by topic.
    pub sources: Sources,
    /// Key names.
    pub keys: KeySpace,
    /// The marker store.
    pub state: StateStore,
    /// The rebuild protocol.
    pub rebuilds: Rebuilds,
    /// Redis (for the rebalance callback's synchronous reads).
    pub redis: redis::Client,
    /// The CDN purge hook.
    pub purger: Option<Purger>,
    /// This process's instance id.
    pub instance: String,
    /// Where readiness is published.
    pub ready: watch::Sender<bool>,
    /// Where partition statuses are published (`/readyz`).
    pub all_statuses: AllStatuses,
    /// The memory bound of unfolded records, shared by every generation.
    pub budget: Budget,
}

/// A running partition task, as the loop sees it.
struct Running {
    stop: CancellationToken,
    abort: AbortHandle,
}

/// Runs generation `generation`'s consumer (written under `epoch`) until
/// `cancel`, until Redis lost or regressed, or until the generation retires.
pub async fn run(
    deps: &Deps,
    epoch: &str,
    generation: u64,
    role: Role,
    con: redis::aio::ConnectionManager,
    cancel: CancellationToken,
) -> anyhow::Result<Exit> {
    let config = &deps.config;
    let drain = Duration::from_millis(config.ingest.drain_timeout_ms);
    let (own_tx, mut own_rx) = mpsc::unbounded_channel();
    let views = FetchViews::default();
    let statuses = Statuses::default();
    lock(&deps.all_statuses).insert(generation, statuses.clone());
    // `ingest.consumers` members of the generation's group share out its
    // partitions; each partition task reads through the one that owns it.
    let consumers = (0..config.ingest.consumers)
        .map(|member| {
            let own = own_tx.clone();
            create_consumer(deps, generation, member, views.clone(), own, drain)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    drop(own_tx);
    let pipeline = Arc::new(Pipeline {
        epoch: epoch.to_owned(),
        generation,
        keys: deps.keys.clone(),
        folder: Folder::from_config(deps.keys.clone(), config),
        dead: DeadLetters::new(
            kafka_client_config(config, ClientKind::Producer)
                .set("linger.ms", "5")
                .create::<FutureProducer>()
                .context("creating the dead-letter producer")?,
            config.kafka.dead_letter_topic.clone(),
            config.kafka.dead_letter_max_bytes,
        )
        .recreating_with(config),
        purger: deps.purger.clone().filter(Purger::enabled),
        statuses: statuses.clone(),
        views,
        limits: Limits {
            max_value_bytes: config.ingest.max_value_bytes,
            max_members: config.ingest.max_members,
        },
        batch_max_events: config.ingest.batch_max_events,
        budget: deps.budget.clone(),
        linger: Duration::from_millis(config.ingest.batch_linger_ms),
        retry_max: Duration::from_millis(config.ingest.retry_max_backoff_ms),
    });
    let (stray_tx, mut stray_rx) = mpsc::channel::<()>(1);
    let poller_stop = CancellationToken::new();
    for consumer in &consumers {
        spawn_poller(consumer.clone(), poller_stop.clone(), stray_tx.clone());
    }

    let (role_tx, role_rx) = watch::channel(role);
    let mut jobs: JoinSet<Exit> = JoinSet::new();
    let heartbeat = Heartbeat {
        state: deps.state.clone(),
        epoch: epoch.to_owned(),
        generation,
        instance: deps.instance.clone(),
        statuses: statuses.clone(),
        every: Duration::from_millis(config.ingest.heartbeat_interval_ms),
        unverified: Default::default(),
    };
    let (c, r) = (con.clone(), role_rx.clone());
    jobs.spawn(async move {
        match heartbeat.run(c, r).await {
            HeartbeatExit::EpochLost => Exit::EpochLost,
            HeartbeatExit::RedisWentBack => Exit::WentBack(WentBack::Redis),
        }
    });
    let readiness = Readiness {
        state: deps.state.clone(),
        rebuilds: deps.rebuilds.clone(),
        epoch: epoch.to_owned(),
        generation,
        statuses: statuses.clone(),
        topics: deps
            .sources
            .topics()
            .into_iter()
            .map(String::from)
            .collect(),
        retire_grace_ms: config.ingest.rebuild_retire_grace_ms,
        ready: deps.ready.clone(),
    };
    let (c, k, r) = (con.clone(), consumers[0].clone(), role_rx.clone());
    jobs.spawn(async move {
        readiness.run(c, k, r).await;
        Exit::EpochLost
    });

    let mut tasks: JoinSet<(Tp, PartitionExit)> = JoinSet::new();
    let mut running: HashMap<Tp, Running> = HashMap::new();
    let mut role_tick = tokio::time::interval(ROLE_EVERY);
    role_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut marker_con = con.clone();
    let mut pending: Option<Exit> = None;

    let exit = loop {
        if let Some(exit) = pending.take() {
            break exit;
        }
        tokio::select! {
            biased;
            () = cancel.cancelled() => break Exit::Shutdown,
            Some(own) = own_rx.recv() => match own {
                Ownership::Assigned(list) => {
                    for a in list {
                        let Some(source) = deps.sources.get(&a.tp.0).cloned() else { continue };
                        if let Some(old) = running.remove(&a.tp) {
                            old.abort.abort();
                        }
                        let stop = cancel.child_token();
                        let task = PartitionTask::new(
                            a.tp.clone(), source, a.consumer, pipeline.clone(),
                            con.clone(), stop.clone(), a.start,
                        );
                        let (tp, queue) = (a.tp.clone(), a.queue);
                        let abort = tasks.spawn(async move { (tp, task.run(queue).await) });
                        running.insert(a.tp, Running { stop, abort });
                    }
                }
                Ownership::Revoked(tps, done) => {
                    for tp in &tps {
                        if let Some(r) = running.get(tp) {
                            r.stop.cancel();
                        }
                    }
                    pending = drain_tasks(&mut tasks, &mut running, &statuses, Some(&tps), drain).await;
                    let _ = done.send(());
                }
            },
            Some(joined) = tasks.join_next() => {
                if let Some(exit) = partition_ended(joined, &mut running, &statuses)? {
                    break exit;
                }
            }
            Some(job) = jobs.join_next() => break job.context("a generation job panicked")?,
            Some(()) = stray_rx.recv() => break Exit::Restart,
            _ = role_tick.tick() => match deps.state.generations(&mut marker_con).await {
                Ok(g) => {
                    let now = g.role_of(generation);
                    if now == Role::Retired {
                        break Exit::Retired;
                    }
                    role_tx.send_if_modified(|r| std::mem::replace(r, now) != now);
                }
                Err(e) => tracing::debug!(error = %e, "reading the cache marker failed"),
            },
        }
    };

    // Partitions fold their last batch and store its offset, within the
    // drain time; after a loss or a regression there is nothing to save.
    let keep = matches!(exit, Exit::Shutdown | Exit::Retired | Exit::Restart);
    // Nothing more is read: librdkafka stops fetching for the partitions
    // (its queues would otherwise go on filling, up to their bound, while
    // the last batches are folded).
    for consumer in &consumers {
        if let Ok(assigned) = consumer.assignment()
            && let Err(e) = consumer.pause(&assigned)
        {
            tracing::debug!(error = %e, "pausing the partitions before the drain failed");
        }
    }
    for r in running.values() {
        if keep {
            r.stop.cancel();
        } else {
            r.abort.abort();
        }
    }
    if keep {
        tracing::info!(
            generation,
            partitions = running.len(),
            "stopping: folding the last batches"
        );
    }
    drain_tasks(&mut tasks, &mut running, &statuses, None, drain).await;
    jobs.abort_all();
    for consumer in &consumers {
        consumer.context().close();
    }
    poller_stop.cancel();
    for consumer in &consumers {
        if keep && let Err(e) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Async)
        {
            tracing::debug!(error = %e, "final offset commit (mirror) failed");
        }
    }
    drop(pipeline);
    // Assignments never taken up hold their consumer too.
    drop(own_rx);
    lock(&deps.all_statuses).remove(&generation);
    futures::future::join_all(consumers.into_iter().map(close)).await;
    Ok(exit)
}

/// Closes the consumer so that it leaves its group (its partitions go to
/// the other instances at once, not after a session timeout), off the
/// worker threads and for at most a few seconds: closing can wait on an
/// unreachable broker.
async fn close(consumer: Arc<KafkaConsumer>) {
    // The poller thread lets go of its handle once it sees the stop.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while Arc::strong_count(&consumer) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (done, closed) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        drop(consumer);
        let _ = done.send(());
    });
    if tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .is_err()
    {
        tracing::warn!("closing the Kafka consumer timed out");
    }
}

fn create_consumer(
    deps: &Deps,
    generation: u64,
    member: usize,
    views: FetchViews,
    ownership: mpsc::UnboundedSender<Ownership>,
    drain: Duration,
) -> anyhow::Result<Arc<KafkaConsumer>> {
    let config = &deps.config;
    let ctx = IngestContext::new(
        generation,
        member,
        config.ingest.resume,
        deps.state.clone(),
        deps.redis.clone(),
        views,
        ownership,
        drain,
    );
    let mut cc = kafka_client_config(config, ClientKind::Consumer);
    // One group per generation: during a rebuild an instance runs two
    // consumers that must each get every partition.
    cc.set(
        "group.id",
        format!("{}-g{}", config.kafka.group_id, generation),
    )
    .set("enable.auto.commit", "true")
    .set("enable.auto.offset.store", "false")
    .set("auto.offset.reset", "earliest")
    .set("enable.partition.eof", "false")
    // Aborted transactions are never folded; committed ones only once
    // their commit marker is in the log.
    .set("isolation.level", "read_committed")
    .set("statistics.interval.ms", "200");
    // librdkafka pre-fetches up to 64 MiB per partition queue by default:
    // most of ingest's memory at a backlog, for no throughput (a batch
    // folds 500 records). Bounded here unless the operator sets it.
    if cc.get(PREFETCH_PROPERTY).is_none() {
        cc.set(PREFETCH_PROPERTY, PREFETCH_KBYTES);
    }
    let consumer: KafkaConsumer = cc
        .create_with_context(ctx)
        .context("creating the Kafka consumer")?;
    let consumer = Arc::new(consumer);
    consumer.context().set_consumer(Arc::downgrade(&consumer));
    consumer
        .subscribe(&deps.sources.topics())
        .context("subscribing to the source topics")?;
    Ok(consumer)
}

/// Polls the main queue on a thread of its own: it serves rebalances and
/// statistics; records arrive on partition queues. A record here means a
/// split lost its race with the fetcher: the loop restarts the consumer.
fn spawn_poller(consumer: Arc<KafkaConsumer>, stop: CancellationToken, stray: mpsc::Sender<()>) {
    let handle = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("kafka-poller".into())
        .spawn(move || {
            handle.block_on(async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        m = consumer.recv() => match m {
                            Ok(m) => {
                                use rdkafka::message::Message as _;
                                tracing::warn!(topic = m.topic(), partition = m.partition(), offset = m.offset(),
                                    "a record reached the main queue; restarting the consumer");
                                let _ = stray.try_send(());
                            }
                            Err(e) => tracing::warn!(error = %e, "Kafka consumer error"),
                        },
                    }
                }
            });
        })
        .map(drop)
        .unwrap_or_else(|e| tracing::error!(error = %e, "starting the Kafka poller thread failed"));
}

/// Handles a finished partition task; returns the generation's exit if it
/// must end.
fn partition_ended(
    joined: Result<(Tp, PartitionExit), tokio::task::JoinError>,
    running: &mut HashMap<Tp, Running>,
    statuses: &Statuses,
) -> anyhow::Result<Option<Exit>> {
    let (tp, exit) = match joined {
        Ok(v) => v,
        Err(e) if e.is_cancelled() => return Ok(None),
        Err(e) => return Err(anyhow::anyhow!("a partition task panicked: {e}")),
    };
    running.remove(&tp);
    lock(statuses).remove(&tp);
    Ok(match exit {
        PartitionExit::Drained => None,
        PartitionExit::EpochLost => Some(Exit::EpochLost),
        PartitionExit::Retired => Some(Exit::Retired),
        PartitionExit::RedisWentBack => Some(Exit::WentBack(WentBack::Redis)),
        PartitionExit::SourceWentBack => Some(Exit::WentBack(WentBack::Source)),
    })
}

/// Waits for the tasks of `which` (every task if `None`) to end, up to
/// `drain`, then aborts what is left. Returns the first exit a task asked
/// for meanwhile.
async fn drain_tasks(
    tasks: &mut JoinSet<(Tp, PartitionExit)>,
    running: &mut HashMap<Tp, Running>,
    statuses: &Statuses,
    which: Option<&[Tp]>,
    drain: Duration,
) -> Option<Exit> {
    let deadline = tokio::time::Instant::now() + drain;
    let waiting = |running: &HashMap<Tp, Running>| match which {
        None => !running.is_empty(),
        Some(tps) => tps.iter().any(|tp| running.contains_key(tp)),
    };
    let mut asked = None;
    while waiting(running) {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(Some(joined)) => match partition_ended(joined, running, statuses) {
                Ok(exit) => asked = asked.or(exit),
                Err(e) => tracing::error!(error = %e, "partition task failed"),
            },
            Ok(None) => break,
            Err(_) => {
                tracing::warn!(
                    partitions = running.len(),
                    "drain time is over: stopping partitions that are still retrying (what they did not store is folded again by the next owner)"
                );
                let tps: Vec<Tp> = match which {
                    None => running.keys().cloned().collect(),
                    Some(tps) => tps.to_vec(),
                };
                for tp in tps {
                    if let Some(r) = running.remove(&tp) {
                        r.abort.abort();
                    }
                    lock(statuses).remove(&tp);
                }
                break;
            }
        }
    }
    asked
}
