//! The fault matrix's world: a writer producing updates and tombstones with
//! a reference fold of what the broker acknowledged, readers polling over
//! HTTP and judging every answer, and the final comparison.
//!
//! Keys: `S*` (stable) are created before any fault and only ever updated,
//! so a 404 for one of them is always false, and a reader that sees a lower
//! version after a higher one has been served a regressed (stale) value.
//! `C*` (churn) are updated and tombstoned at random; they are judged at the
//! end against the reference fold. `P0` is the recovery probe.

use anyhow::{Context, Result, bail};
use foldcache::{Process, Stack, eventually};
use rand::Rng;
use rand::seq::IndexedRandom;
use rdkafka::producer::{FutureProducer, FutureRecord};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const STABLE: usize = 40;
pub const CHURN: usize = 40;
pub const WAIT: Duration = Duration::from_secs(120);

/// What the readers saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub reads: AtomicU64,
    pub ok: AtomicU64,
    pub unavailable: AtomicU64,
    pub false_404: AtomicU64,
    pub regressed: AtomicU64,
    pub other: AtomicU64,
}

/// One fault matrix run: a stack, its ingest instances and query-api, the
/// writer and the readers.
pub struct Run {
    pub stack: Arc<Stack>,
    ingests: Mutex<Vec<Option<Process>>>,
    ingest_env: Vec<(String, String)>,
    _api: Process,
    producer: FutureProducer,
    /// The last acknowledged state per key: `Some(v)` or `None` (tombstone).
    reference: Mutex<HashMap<String, Option<u64>>>,
    next_v: AtomicU64,
    /// While set, the writer produces nothing.
    pub writer_paused: AtomicBool,
    /// While unset, readers do not judge (a fault that rewrites the log).
    pub judging: AtomicBool,
    stop: AtomicBool,
    pub seen: Seen,
    tasks: Mutex<Vec<tokio::task::JoinHandle<Result<()>>>>,
    dead_letter_topic: Mutex<String>,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run").finish_non_exhaustive()
    }
}

impl Run {
    /// Starts a stack with 3 partitions, `instances` ingest processes (with
    /// `ingest_env` config overrides) and query-api; writes every stable key
    /// and waits until they are served; then starts the writer and two
    /// readers.
    pub async fn start(instances: usize, ingest_env: &[(&str, &str)]) -> Result<Arc<Self>> {
        Self::start_on(Stack::start(3, "").await?, instances, ingest_env).await
    }

    /// [`Run::start`] on a stack the caller prepared.
    pub async fn start_on(
        stack: Stack,
        instances: usize,
        ingest_env: &[(&str, &str)],
    ) -> Result<Arc<Self>> {
        let stack = Arc::new(stack);
        let ingest_env: Vec<(String, String)> = ingest_env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut ingests = Vec::new();
        for _ in 0..instances {
            ingests.push(Some(spawn_ingest(&stack, &ingest_env)?));
        }
        let api = stack.spawn_query_api()?;
        let dead_letter_topic = Mutex::new(stack.topics.dead_letter.clone());
        let run = Arc::new(Self {
            producer: writer_producer(&stack)?,
            stack,
            ingests: Mutex::new(ingests),
            ingest_env,
            _api: api,
            reference: Mutex::new(HashMap::new()),
            next_v: AtomicU64::new(1),
            writer_paused: AtomicBool::new(false),
            judging: AtomicBool::new(true),
            stop: AtomicBool::new(false),
            seen: Seen::default(),
            dead_letter_topic,
            tasks: Mutex::new(Vec::new()),
        });
        let stable: Vec<String> = (0..STABLE).map(|k| format!("S{k}")).collect();
        run.write_round(&stable, false).await?;
        run.stack.wait_ready(WAIT).await?;
        run.wait_served(&stable).await?;
        let mut tasks = run.tasks.lock().expect("tasks");
        tasks.push(tokio::spawn(run.clone().writer()));
        for r in 0..2 {
            tasks.push(tokio::spawn(run.clone().reader(r)));
        }
        drop(tasks);
        Ok(run)
    }

    fn version(&self) -> u64 {
        self.next_v.fetch_add(1, Ordering::Relaxed)
    }

    /// Produces one record per key (an update, or with `tombstones` at
    /// random a tombstone for churn keys), waits for every acknowledgement
    /// and records the acknowledged states in the reference.
    async fn write_round(&self, keys: &[String], tombstones: bool) -> Result<()> {
        let mut sent = Vec::new();
        for key in keys {
            let delete = tombstones && key.starts_with('C') && rand::rng().random_bool(0.3);
            let state = (!delete).then(|| self.version());
            let body = state.map(|v| body(key, v));
            let mut rec: FutureRecord<'_, str, str> =
                FutureRecord::to(&self.stack.topics.employees).key(key.as_str());
            if let Some(b) = &body {
                rec = rec.payload(b.as_str());
            }
            let delivery = self.producer.send_result(rec).map_err(|(e, _)| e)?;
            sent.push((key.clone(), state, delivery));
        }
        for (key, state, delivery) in sent {
            if let Err((e, _)) = delivery.await.context("delivery future dropped")? {
                // A broker that just restarted may refuse a produce (Tansu
                // 0.6.0 answers UNKNOWN once); an HR system sends again.
                // The keys of one round are distinct and rounds follow each
                // other, so the order per key holds.
                eprintln!("writer: producing {key} failed ({e}); sending it again");
                self.send_until_acknowledged(&key, state).await?;
            }
            self.reference.lock().expect("reference").insert(key, state);
        }
        Ok(())
    }

    async fn send_until_acknowledged(&self, key: &str, state: Option<u64>) -> Result<()> {
        let body = state.map(|v| body(key, v));
        let deadline = Instant::now() + WAIT;
        loop {
            let mut rec: FutureRecord<'_, str, str> =
                FutureRecord::to(&self.stack.topics.employees).key(key);
            if let Some(b) = &body {
                rec = rec.payload(b.as_str());
            }
            match self.producer.send(rec, Duration::from_secs(30)).await {
                Ok(_) => return Ok(()),
                Err((e, _)) if Instant::now() < deadline => {
                    eprintln!("writer: producing {key} failed again ({e})");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err((e, _)) => return Err(e).with_context(|| format!("producing {key}")),
            }
        }
    }

    async fn writer(self: Arc<Self>) -> Result<()> {
        let all: Vec<String> = (0..STABLE)
            .map(|k| format!("S{k}"))
            .chain((0..CHURN).map(|k| format!("C{k}")))
            .collect();
        while !self.stop.load(Ordering::Relaxed) {
            if self.writer_paused.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            let keys: Vec<String> = all.choose_multiple(&mut rand::rng(), 16).cloned().collect();
            self.write_round(&keys, true).await?;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok(())
    }

    async fn reader(self: Arc<Self>, n: usize) -> Result<()> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()?;
        let base = self.stack.base_url();
        let mut seen: HashMap<usize, u64> = HashMap::new();
        let mut k = n;
        while !self.stop.load(Ordering::Relaxed) {
            k = (k * 7 + 13) % STABLE;
            let judging = self.judging.load(Ordering::Relaxed);
            let r = client.get(format!("{base}/v1/employees/S{k}")).send().await;
            self.seen.reads.fetch_add(1, Ordering::Relaxed);
            let Ok(r) = r else {
                self.seen.unavailable.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            match r.status() {
                StatusCode::OK => {
                    self.seen.ok.fetch_add(1, Ordering::Relaxed);
                    let Ok(body) = r.json::<Value>().await else {
                        self.seen.other.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let v = body["v"].as_u64().unwrap_or(0);
                    let prev = seen.insert(k, v).unwrap_or(0);
                    if judging && v < prev {
                        eprintln!("reader {n}: S{k} read version {v} after {prev}");
                        self.seen.regressed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                StatusCode::SERVICE_UNAVAILABLE => {
                    self.seen.unavailable.fetch_add(1, Ordering::Relaxed);
                }
                StatusCode::NOT_FOUND if judging => {
                    eprintln!("reader {n}: false 404 for S{k}");
                    self.seen.false_404.fetch_add(1, Ordering::Relaxed);
                }
                s => {
                    eprintln!("reader {n}: S{k} answered {s}");
                    self.seen.other.fetch_add(1, Ordering::Relaxed);
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Waits until every key in `keys` is served at its reference state.
    async fn wait_served(&self, keys: &[String]) -> Result<()> {
        self.wait_served_within(keys, WAIT).await
    }

    async fn wait_served_within(&self, keys: &[String], within: Duration) -> Result<()> {
        eventually(
            "the keys to be served at their reference state",
            within,
            || async { Ok(self.served_all(keys).await?.then_some(())) },
        )
        .await
    }

    /// Writes every stable key once.
    pub async fn write_stable(&self) -> Result<()> {
        let stable: Vec<String> = (0..STABLE).map(|k| format!("S{k}")).collect();
        self.write_round(&stable, false).await
    }

    /// Whether every key in `keys` is served at its reference state now.
    pub async fn served_all(&self, keys: &[String]) -> Result<bool> {
        let client = reqwest::Client::new();
        let base = self.stack.base_url();
        for key in keys {
            let want = self
                .reference
                .lock()
                .expect("reference")
                .get(key)
                .copied()
                .flatten();
            if served(&client, &format!("{base}/v1/employees/{key}")).await? != Some(want) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The recovery probe: writes `P0` and returns when it is served.
    pub async fn probe(&self) -> Result<()> {
        self.probe_within(WAIT).await
    }

    /// [`Run::probe`] with its own time limit (a soak's log grows, and a
    /// replay from offset zero with it).
    pub async fn probe_within(&self, within: Duration) -> Result<()> {
        let key = vec!["P0".to_owned()];
        self.write_round(&key, false).await?;
        self.wait_served_within(&key, within).await
    }

    /// SIGKILLs ingest instance `i`.
    pub fn kill_ingest(&self, i: usize) {
        if let Some(mut p) = self.ingests.lock().expect("ingests")[i].take() {
            p.kill();
        }
    }

    /// Starts ingest instance `i` again, as a supervisor would.
    pub fn restart_ingest(&self, i: usize) -> Result<()> {
        let mut ingests = self.ingests.lock().expect("ingests");
        if let Some(p) = ingests[i].as_mut()
            && p.is_running()
        {
            return Ok(());
        }
        ingests[i] = Some(spawn_ingest(&self.stack, &self.ingest_env)?);
        Ok(())
    }

    /// Restarts every ingest instance that died, as a supervisor would;
    /// returns how many.
    pub fn supervise(&self) -> Result<usize> {
        let n = self.ingests.lock().expect("ingests").len();
        let mut restarted = 0;
        for i in 0..n {
            let dead = {
                let mut ingests = self.ingests.lock().expect("ingests");
                !ingests[i].as_mut().is_some_and(Process::is_running)
            };
            if dead {
                eprintln!("supervisor: ingest {i} exited; starting it again");
                self.restart_ingest(i)?;
                restarted += 1;
            }
        }
        Ok(restarted)
    }

    /// The dead-letter topic ingest was configured with.
    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter_topic.lock().expect("topic").clone()
    }

    /// Says ingest was configured with another dead-letter topic.
    pub fn set_dead_letter_topic(&self, topic: &str) {
        *self.dead_letter_topic.lock().expect("topic") = topic.to_owned();
    }

    /// Forgets the reference (the log was deleted).
    pub fn forget_reference(&self) {
        self.reference.lock().expect("reference").clear();
    }

    /// Stops the writer and the readers, waits until every key written is
    /// served at its reference state, and returns the number of keys that
    /// are not ("lost": missing, older, or present after a tombstone).
    pub async fn finish(&self) -> Result<usize> {
        self.stop.store(true, Ordering::Relaxed);
        let tasks: Vec<_> = self.tasks.lock().expect("tasks").drain(..).collect();
        for t in tasks {
            t.await??;
        }
        let reference = self.reference.lock().expect("reference").clone();
        let client = reqwest::Client::new();
        let base = self.stack.base_url();
        let deadline = Instant::now() + WAIT;
        loop {
            let mut wrong = Vec::new();
            for (key, want) in &reference {
                let got = served(&client, &format!("{base}/v1/employees/{key}")).await?;
                if got != Some(*want) {
                    wrong.push(format!("{key}: want {want:?}, got {got:?}"));
                }
            }
            if wrong.is_empty() {
                return Ok(0);
            }
            if Instant::now() > deadline {
                eprintln!("not as the reference fold: {wrong:?}");
                return Ok(wrong.len());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// An employee's state at version `v`.
fn body(key: &str, v: u64) -> String {
    json!({"id": key, "v": v, "name": format!("person {key}"), "pad": "x".repeat(200)}).to_string()
}

/// The HR systems' producer. Not idempotent: Tansu 0.6.0's SQLite engine
/// panics on a produce from an idempotent producer that outlived a broker
/// restart (`idempotent_message_check`: "more or less than one row") and
/// then answers nothing. One request in flight keeps the order per key
/// through retries; a retried record is a harmless duplicate.
pub fn writer_producer(stack: &Stack) -> Result<FutureProducer> {
    Ok(rdkafka::ClientConfig::new()
        .set("bootstrap.servers", stack.broker.bootstrap())
        .set("enable.idempotence", "false")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "1")
        .set("linger.ms", "2")
        .create()?)
}

fn spawn_ingest(stack: &Stack, env: &[(String, String)]) -> Result<Process> {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    stack.spawn_ingest_with(&env)
}

/// What query-api serves for a key: `Some(Some(v))` (200 with version `v`),
/// `Some(None)` (404), `None` (not ready: 503 or no answer).
async fn served(client: &reqwest::Client, url: &str) -> Result<Option<Option<u64>>> {
    let Ok(r) = client.get(url).timeout(Duration::from_secs(3)).send().await else {
        return Ok(None);
    };
    match r.status() {
        StatusCode::OK => Ok(Some(r.json::<Value>().await?["v"].as_u64())),
        StatusCode::NOT_FOUND => Ok(Some(None)),
        StatusCode::SERVICE_UNAVAILABLE => Ok(None),
        s => bail!("{url}: unexpected {s}"),
    }
}

/// One row of the table in docs/RELIABILITY.md.
#[derive(Debug)]
pub struct Row {
    pub fault: &'static str,
    pub recovery: Duration,
    pub lost: usize,
    pub regressed: u64,
    pub false_404: u64,
    pub unavailable: u64,
    pub reads: u64,
}

impl Row {
    /// Prints the row and appends it to `target/fault-matrix.md`; fails
    /// the test unless nothing was lost, regressed or falsely missing.
    pub fn check(&self) -> Result<()> {
        let line = format!(
            "| {} | {:.1} s | {} | {} | {} | {} of {} |",
            self.fault,
            self.recovery.as_secs_f64(),
            self.lost,
            self.regressed,
            self.false_404,
            self.unavailable,
            self.reads,
        );
        eprintln!("fault matrix: {line}");
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fault-matrix.md");
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            use std::io::Write as _;
            let _ = writeln!(f, "{line}");
        }
        anyhow::ensure!(
            self.lost == 0 && self.regressed == 0 && self.false_404 == 0,
            "{}: {} lost, {} regressed reads, {} false 404s",
            self.fault,
            self.lost,
            self.regressed,
            self.false_404
        );
        Ok(())
    }
}

impl Run {
    /// Injects `fault` (which returns when the fault is over), measures the
    /// time from there until a new write is served, and finishes.
    pub async fn measure<F, Fut>(self: &Arc<Self>, name: &'static str, fault: F) -> Result<Row>
    where
        F: FnOnce(Arc<Self>) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        // Let the writer and readers run before the fault.
        tokio::time::sleep(Duration::from_secs(1)).await;
        fault(self.clone()).await?;
        let t0 = Instant::now();
        self.probe().await?;
        let recovery = t0.elapsed();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let lost = self.finish().await?;
        Ok(Row {
            fault: name,
            recovery,
            lost,
            regressed: self.seen.regressed.load(Ordering::Relaxed),
            false_404: self.seen.false_404.load(Ordering::Relaxed),
            unavailable: self.seen.unavailable.load(Ordering::Relaxed),
            reads: self.seen.reads.load(Ordering::Relaxed),
        })
    }
}
