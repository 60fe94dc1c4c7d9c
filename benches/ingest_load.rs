//! Load benchmark of the fold: N employee events (default 1,000,000) through
//! a real Tansu broker into a real Redis, measured beside two baselines in
//! the same run:
//!
//! 1. a plain librdkafka consumer draining the same topic (read ceiling);
//! 2. `redis-benchmark -P 64` HSET of the same field count (write ceiling).
//!
//! Prints events/s for each, ingest's ratio to the lower baseline (target
//! ≥ 0.5), ingest's peak RSS and Redis memory per entity; then ingest again
//! with a realistic per-source mapping (`generate::EMPLOYEE_MAPPING`) and
//! its ratio to the run without (target ≥ 0.8); then with the entity
//! merged (`merge = true`, its one source a part): the cost of the merge
//! fold and its Redis memory.
//!
//! Run: `scripts/dev bench-ingest [EVENTS]` (builds release binaries first).
//! `cargo bench --bench ingest_load -- N --plain [--repeat K]` runs only
//! the fold from an empty Redis (K times), one row each, as
//! `scripts/dev bench-curve` does; stderr shows ingest's RSS at each tenth
//! of the fold, and `FOLDCACHE_BENCH_LOG=info` keeps ingest's log (under
//! target/test-logs) to see where the time to ready goes.
//! `FOLDCACHE_BENCH_INSTANCES=N` folds with N ingest processes in one
//! consumer group (their RSS and CPU summed); `FOLDCACHE_BENCH_DRAINERS=N`
//! also drains the topic with N consumers at once (the baseline for N
//! instances).

#[path = "support/commandstats.rs"]
mod commandstats;

use anyhow::{Context, Result};
use commandstats::command_stats;
use foldcache::{Broker, RedisServer, cpu_secs, foldcache_binary, unique};
use foldcache_common::config::{Config, SourceConfig, ValueFormat};
use foldcache_ingest::generate::{EMPLOYEE_MAPPING, GenOptions, Generator, Kind};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use redis::AsyncCommands;
use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 6;

#[tokio::main]
async fn main() -> Result<()> {
    let events: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    // `--plain`: only the run from an empty Redis, printed as one row of
    // the scale curve (`scripts/dev bench-curve`).
    let plain_only = std::env::args().any(|a| a == "--plain");
    // `--repeat N` (with `--plain`): N folds from an empty Redis on the
    // same topic, against the same drain; their ratios vary by ±15 % on
    // two shared cores, so the median of several is the figure to quote.
    let repeat: usize = std::env::args()
        .skip_while(|a| a != "--repeat")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
        .max(1);
    let redis = RedisServer::start().await?;
    let broker = Broker::start().await?;
    let id = unique("bench");
    let topic = format!("{id}.employees");
    broker
        .create_topics(
            &[&topic, &format!("{id}.teams"), &format!("{id}.permissions")],
            PARTITIONS,
        )
        .await?;
    broker.create_topics(&[&format!("{id}.dlq")], 1).await?;

    let mut config = Config::default();
    config.kafka.brokers = broker.bootstrap();
    config.kafka.dead_letter_topic = format!("{id}.dlq");
    config.sources = ["employees", "teams", "permissions"]
        .iter()
        .map(|e| SourceConfig {
            topic: format!("{id}.{e}"),
            entity: (*e).into(),
            format: ValueFormat::Json,
            id_prefix: String::new(),
            transform: None,
            id_from_key: None,
            fields: None,
            priority: 0,
            schema_file: None,
        })
        .collect();

    // Produce N employee states (distinct ids).
    eprintln!("producing {events} employee events to {topic} ({PARTITIONS} partitions)...");
    let t = Instant::now();
    let opts = GenOptions {
        seed: 7,
        employees: events,
        teams: 1000,
        updates: 0,
        deletes: 0,
    };
    let cfg = config.clone();
    let produced = tokio::task::spawn_blocking(move || {
        let evs = Generator::new(opts)
            .events()
            .filter(|e| e.kind == Kind::Employee);
        foldcache_ingest::produce::produce(&cfg, evs, 0)
    })
    .await??;
    let produce_secs = t.elapsed().as_secs_f64();
    eprintln!("produced {produced} in {produce_secs:.1} s");

    // Baseline 1: a plain consumer drains the topic.
    let bootstrap = broker.bootstrap();
    let topic_c = topic.clone();
    let broker_cpu0 = cpu_secs(broker.pid().context("broker pid")?);
    let (drain_secs, drained_bytes) =
        tokio::task::spawn_blocking(move || drain(&bootstrap, &topic_c, produced)).await??;
    let drain_broker_cpu = cpu_secs(broker.pid().context("broker pid")?) - broker_cpu0;
    // `FOLDCACHE_BENCH_DRAINERS=N`: the same read by N consumers at once
    // (partitions shared out), each with its own fetch in flight: the
    // broker's pace when it is asked in parallel, as N ingest instances ask.
    if let Some(n) = std::env::var("FOLDCACHE_BENCH_DRAINERS")
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
        .filter(|n| *n > 1)
    {
        let bootstrap = broker.bootstrap();
        let topic_c = topic.clone();
        let secs =
            tokio::task::spawn_blocking(move || drain_parallel(&bootstrap, &topic_c, n)).await??;
        eprintln!("{n} plain consumers drained the topic in {secs:.2} s");
    }
    // What the broker spends serving a bare reader, beside what it spends
    // serving ingest (each fold row's CPU seconds).
    eprintln!("plain drain: broker CPU {drain_broker_cpu:.1} s over {drain_secs:.1} s");

    // Baseline 2: redis-benchmark HSET with the same field count.
    let sample = sample_field_count(&config)?;
    let hset_rate = redis_benchmark_hset(redis.port(), events, sample)?;

    // foldcache ingest from an empty Redis: as the source wrote the
    // records, then again with a realistic per-source mapping.
    let dir = std::env::temp_dir().join(&id);
    std::fs::create_dir_all(&dir)?;
    let mut con = redis.connection().await?;
    let broker_pid = broker.pid().context("broker pid")?;
    let plain = fold_run(&dir, &config, &redis, broker_pid, &topic, produced, "").await?;
    let keys: u64 = redis::cmd("DBSIZE").query_async(&mut con).await?;
    let used = used_memory(&mut con).await?;
    if plain_only {
        let row = |run: &FoldRun, used: u64| {
            let ready = run.ready_secs.unwrap_or(run.secs);
            println!(
                "| {produced} | {ready:.1} s | {drain_secs:.1} s | {:.2}x | {:.0} | {:.2} | {:.1} MiB | {:.0} B = {:.2}x | {}; {:.0} records per fold call |",
                ready / drain_secs,
                produced as f64 / run.secs,
                (produced as f64 / run.secs) / (produced as f64 / drain_secs).min(hset_rate),
                run.peak_rss_kb as f64 / 1024.0,
                used as f64 / produced.max(1) as f64,
                used as f64 / drained_bytes.max(1) as f64,
                run.cpu.line(run.secs),
                produced as f64 / run.fold_calls.max(1) as f64,
            );
        };
        row(&plain, used);
        let mut ratios = vec![plain.ready_secs.unwrap_or(plain.secs) / drain_secs];
        let mut peaks = vec![plain.peak_rss_kb];
        for _ in 1..repeat {
            let run = fold_run(&dir, &config, &redis, broker_pid, &topic, produced, "").await?;
            row(&run, used_memory(&mut con).await?);
            ratios.push(run.ready_secs.unwrap_or(run.secs) / drain_secs);
            peaks.push(run.peak_rss_kb);
        }
        if repeat > 1 {
            ratios.sort_by(f64::total_cmp);
            peaks.sort_unstable();
            println!(
                "{repeat} folds: ready / drain median {:.2}x (min {:.2}x, max {:.2}x); ingest peak RSS median {:.1} MiB (max {:.1} MiB)",
                ratios[repeat / 2],
                ratios[0],
                ratios[repeat - 1],
                peaks[repeat / 2] as f64 / 1024.0,
                peaks[repeat - 1] as f64 / 1024.0,
            );
        }
        // Settings compared on the same topic, one row each, in the order
        // given: `FOLDCACHE_BENCH_VARIANTS` holds TOML snippets separated
        // by lines of `---`.
        for variant in variants() {
            println!("variant: {}", variant.replace('\n', "; "));
            let run = fold_run(
                &dir, &config, &redis, broker_pid, &topic, produced, &variant,
            )
            .await?;
            row(&run, used_memory(&mut con).await?);
        }
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(());
    }
    let mut mapped_config = config.clone();
    mapped_config.sources[0].transform = Some(EMPLOYEE_MAPPING.into());
    let mapped = fold_run(
        &dir,
        &mapped_config,
        &redis,
        broker_pid,
        &topic,
        produced,
        "",
    )
    .await?;
    let mut merged_config = config.clone();
    if let Some(e) = merged_config.entities.get_mut("employees") {
        e.merge = true;
    }
    let merged = fold_run(
        &dir,
        &merged_config,
        &redis,
        broker_pid,
        &topic,
        produced,
        "",
    )
    .await?;
    let merged_used = used_memory(&mut con).await?;
    let FoldRun {
        secs: ingest_secs,
        ready_secs,
        peak_rss_kb,
        cpu,
        fold_calls,
    } = plain;

    let ingest_rate = produced as f64 / ingest_secs;
    let drain_rate = produced as f64 / drain_secs;
    let floor = drain_rate.min(hset_rate);
    println!(
        "\n## ingest load benchmark ({produced} events, {PARTITIONS} partitions, {sample} fields per hash)\n"
    );
    println!("| run | seconds | events/s | ratio to ingest |");
    println!("|---|---:|---:|---:|");
    println!(
        "| plain consumer drain (Tansu) | {drain_secs:.2} | {drain_rate:.0} | {:.2} |",
        ingest_rate / drain_rate
    );
    println!(
        "| redis-benchmark -P 64 HSET ({sample} fields) | {:.2} | {hset_rate:.0} | {:.2} |",
        events as f64 / hset_rate,
        ingest_rate / hset_rate
    );
    println!(
        "| **foldcache ingest** (empty Redis to all folded) | {ingest_secs:.2} | {ingest_rate:.0} | 1.00 |"
    );
    let mapped_rate = produced as f64 / mapped.secs;
    println!(
        "| **foldcache ingest with a per-source mapping** (`transform`, below) | {:.2} | {mapped_rate:.0} | {:.2} |",
        mapped.secs,
        ingest_rate / mapped_rate
    );
    let merged_rate = produced as f64 / merged.secs;
    println!(
        "| **foldcache ingest, entity merged** (`merge = true`: parts and re-merge) | {:.2} | {merged_rate:.0} | {:.2} |",
        merged.secs,
        ingest_rate / merged_rate
    );
    println!(
        "\ningest / min(baselines) = {:.2} (target >= 0.8)",
        ingest_rate / floor
    );
    println!(
        "ingest with mapping / without = {:.2} (target >= 0.8); peak RSS {:.1} MiB; mapping:\n```jq\n{EMPLOYEE_MAPPING}\n```",
        mapped_rate / ingest_rate,
        mapped.peak_rss_kb as f64 / 1024.0
    );
    if let Some(r) = ready_secs {
        println!(
            "Redis empty -> cache ready (ready=1): {r:.2} s; plain consumer drain of the same topic: {drain_secs:.2} s ({:.2}x)",
            r / drain_secs
        );
    }
    println!("ingest peak RSS: {:.1} MiB", peak_rss_kb as f64 / 1024.0);
    println!("plain drain: broker CPU {drain_broker_cpu:.1} s over {drain_secs:.1} s");
    println!(
        "ingest run: {}; {:.0} records per fold call",
        cpu.line(ingest_secs),
        produced as f64 / fold_calls.max(1) as f64
    );
    println!(
        "Redis: {keys} keys (entities, ids, indexes, change log), used_memory {:.1} MiB, {:.0} bytes per employee",
        used as f64 / 1048576.0,
        used as f64 / produced.max(1) as f64
    );
    println!(
        "merged: {:.2}x the whole-state fold's rate; peak RSS {:.1} MiB; Redis used_memory {:.1} MiB, {:.0} bytes per employee",
        merged_rate / ingest_rate,
        merged.peak_rss_kb as f64 / 1024.0,
        merged_used as f64 / 1048576.0,
        merged_used as f64 / produced.max(1) as f64
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn used_memory(con: &mut redis::aio::MultiplexedConnection) -> Result<u64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(con).await?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

/// One ingest run from an empty Redis until every record is folded.
struct FoldRun {
    secs: f64,
    ready_secs: Option<f64>,
    peak_rss_kb: u64,
    /// CPU seconds (user + system) of ingest, Redis and the broker during
    /// the run: what the two cores were spent on.
    cpu: Cpu,
    /// Fold script calls (one per partition batch): records per call is
    /// the batch size the backlog actually got.
    fold_calls: u64,
}

/// CPU seconds per process over a run.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    ingest: f64,
    redis: f64,
    broker: f64,
}

impl Cpu {
    fn line(&self, secs: f64) -> String {
        format!(
            "CPU seconds: ingest {:.1}, Redis {:.1}, broker {:.1}; together {:.2} of the 2 cores over {secs:.1} s",
            self.ingest,
            self.redis,
            self.broker,
            (self.ingest + self.redis + self.broker) / secs
        )
    }
}

async fn fold_run(
    dir: &std::path::Path,
    config: &Config,
    redis: &RedisServer,
    broker_pid: u32,
    topic: &str,
    produced: u64,
    variant: &str,
) -> Result<FoldRun> {
    let redis_pid = redis.pid().context("redis pid")?;
    let path = dir.join("foldcache.toml");
    std::fs::write(&path, bench_toml(config, &redis.url(), variant))?;
    let mut con = redis.connection().await?;
    let () = redis::cmd("FLUSHALL").query_async(&mut con).await?;
    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut con)
        .await?;
    let (redis0, broker0) = (cpu_secs(redis_pid), cpu_secs(broker_pid));
    let t = Instant::now();
    // `FOLDCACHE_BENCH_LOG=info` shows where the time to ready goes (the
    // logs are under target/test-logs).
    let log = std::env::var("FOLDCACHE_BENCH_LOG").unwrap_or_else(|_| "warn".into());
    // `FOLDCACHE_BENCH_INSTANCES=N`: N ingest processes in one consumer
    // group (the partitions shared out), as a deployment scales out; RSS
    // and CPU are their sums.
    let instances: usize = std::env::var("FOLDCACHE_BENCH_INSTANCES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
        .max(1);
    let mut ingests = Vec::with_capacity(instances);
    for _ in 0..instances {
        ingests.push(foldcache::Process::spawn(
            "ingest",
            &foldcache_binary("ingest")?,
            &["--config", &path.to_string_lossy(), "run"],
            // Through the environment, so that settings under test may open
            // their own `[ingest]` table.
            &[
                ("RUST_LOG", log.as_str()),
                ("FOLDCACHE__INGEST__ADMIN_LISTEN", "127.0.0.1:0"),
            ],
        )?);
    }
    let pids = ingests
        .iter()
        .map(|i| i.pid().context("ingest pid"))
        .collect::<Result<Vec<u32>>>()?;
    let rss_kb = |pids: &[u32]| pids.iter().map(|&p| rss_kb(p)).sum::<u64>();
    let hwm_kb = |pids: &[u32]| pids.iter().map(|&p| hwm_kb(p)).sum::<u64>();
    let mut peak_rss_kb = 0;
    let mut ready_secs = None;
    // RSS as the fold goes: where the peak is reached says what holds it.
    let mut by_tenth: Vec<u64> = Vec::new();
    loop {
        if ready_secs.is_none() {
            let ready: Option<String> = con.hget("fc:state", "ready").await?;
            if ready.as_deref() == Some("1") {
                ready_secs = Some(t.elapsed().as_secs_f64());
            }
        }
        let offsets: HashMap<String, i64> = con.hgetall("fc:g1:offsets").await?;
        let done: i64 = offsets
            .iter()
            .filter(|(k, _)| k.starts_with(topic))
            .map(|(_, v)| v)
            .sum();
        let rss = rss_kb(&pids);
        peak_rss_kb = peak_rss_kb.max(rss);
        while (by_tenth.len() as u64 + 1) * produced <= 10 * done as u64 && by_tenth.len() < 10 {
            by_tenth.push(rss);
        }
        if done as u64 >= produced && ready_secs.is_some() {
            break;
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(600.max(produced / 2_000)),
            "ingest did not finish: {done}/{produced}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    peak_rss_kb = peak_rss_kb.max(hwm_kb(&pids));
    eprintln!(
        "ingest RSS at each tenth folded (MiB): {}",
        by_tenth
            .iter()
            .map(|kb| format!("{:.0}", *kb as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let folding_rss_kb = peak_rss_kb;
    let cpu = Cpu {
        ingest: pids.iter().map(|&p| cpu_secs(p)).sum(),
        redis: cpu_secs(redis_pid) - redis0,
        broker: cpu_secs(broker_pid) - broker0,
    };
    // The peak counts the shutdown too (each partition folds its last
    // batch): VmHWM is read until the process is gone.
    for ingest in &mut ingests {
        ingest.signal("TERM")?;
    }
    let stop = Instant::now();
    while stop.elapsed() < Duration::from_secs(10) {
        let hwm = hwm_kb(&pids);
        if hwm == 0 {
            break;
        }
        peak_rss_kb = peak_rss_kb.max(hwm);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for ingest in &mut ingests {
        ingest.wait(Duration::from_secs(10));
    }
    if peak_rss_kb > folding_rss_kb {
        eprintln!(
            "ingest peak RSS {:.1} MiB while folding, {:.1} MiB with its shutdown",
            folding_rss_kb as f64 / 1024.0,
            peak_rss_kb as f64 / 1024.0
        );
    }
    let fold_calls = command_stats(&mut con)
        .await?
        .into_iter()
        .find_map(|(name, calls, _)| (name == "evalsha").then_some(calls))
        .unwrap_or(0);
    Ok(FoldRun {
        secs,
        ready_secs,
        peak_rss_kb,
        cpu,
        fold_calls,
    })
}

/// Seconds for `n` consumers, each assigned every `n`-th partition, to
/// read the topic to its end together.
fn drain_parallel(bootstrap: &str, topic: &str, n: i32) -> Result<f64> {
    let t = Instant::now();
    let readers: Vec<_> = (0..n)
        .map(|k| {
            let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
            std::thread::spawn(move || -> Result<()> {
                let consumer: BaseConsumer = ClientConfig::new()
                    .set("bootstrap.servers", &bootstrap)
                    .set("group.id", unique("drain"))
                    .set("enable.auto.commit", "false")
                    .set("enable.partition.eof", "true")
                    .create()?;
                let mut tpl = TopicPartitionList::new();
                let mine: Vec<i32> = (0..PARTITIONS).filter(|p| p % n == k).collect();
                for p in &mine {
                    tpl.add_partition_offset(&topic, *p, Offset::Beginning)?;
                }
                consumer.assign(&tpl)?;
                let mut ended = 0;
                while ended < mine.len() {
                    match consumer.poll(Duration::from_secs(10)) {
                        Some(Ok(_)) => {}
                        Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => ended += 1,
                        Some(Err(e)) => anyhow::bail!("drain: {e}"),
                        None => anyhow::bail!("drain stalled"),
                    }
                }
                Ok(())
            })
        })
        .collect();
    for r in readers {
        r.join()
            .map_err(|_| anyhow::anyhow!("a drain thread panicked"))??;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Seconds to drain `expect` records, and their value bytes.
fn drain(bootstrap: &str, topic: &str, expect: u64) -> Result<(f64, usize)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("drain"))
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let t = Instant::now();
    let mut n = 0u64;
    let mut bytes = 0usize;
    while n < expect {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(m)) => {
                n += 1;
                bytes += m.payload().map_or(0, <[u8]>::len);
            }
            Some(Err(e)) => anyhow::bail!("drain: {e}"),
            None => anyhow::bail!("drain stalled at {n}/{expect}"),
        }
    }
    let secs = t.elapsed().as_secs_f64();
    eprintln!("plain consumer drained {n} records ({bytes} bytes) in {secs:.2} s");
    Ok((secs, bytes))
}

/// Fields per entity hash as ingest writes them (members + 3 meta fields).
fn sample_field_count(_config: &Config) -> Result<usize> {
    let opts = GenOptions {
        seed: 7,
        employees: 1,
        teams: 1,
        updates: 0,
        deletes: 0,
    };
    let e = Generator::new(opts)
        .events()
        .find(|e| e.kind == Kind::Employee)
        .and_then(|e| e.value)
        .context("no employee")?;
    Ok(e.as_object().map_or(0, |o| o.len()) + 3)
}

fn redis_benchmark_hset(port: u16, n: usize, fields: usize) -> Result<f64> {
    let mut args: Vec<String> = [
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-P",
        "64",
        "-n",
        &n.to_string(),
        "-r",
        &n.to_string(),
        "-q",
        "HSET",
        "bench:__rand_int__",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for f in 0..fields {
        args.push(format!("field{f:02}"));
        args.push("\"a-typical-hr-value-of-24b\"".into());
    }
    let out = Command::new("redis-benchmark")
        .args(&args)
        .output()
        .context("running redis-benchmark")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.rsplit('\r').next().unwrap_or("").trim();
    eprintln!(
        "redis-benchmark: ...{}",
        &last[last.len().saturating_sub(60)..]
    );
    text.split("requests per second")
        .next()
        .and_then(|s| s.rsplit(':').next())
        .and_then(|s| s.trim().parse().ok())
        .context("could not parse redis-benchmark output")
}

fn rss_kb(pid: u32) -> u64 {
    status_kb(pid, "VmRSS:")
}

fn hwm_kb(pid: u32) -> u64 {
    status_kb(pid, "VmHWM:")
}

fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The TOML snippets of `FOLDCACHE_BENCH_VARIANTS` (separated by lines of
/// `---`), blank ones left out.
fn variants() -> Vec<String> {
    let all = std::env::var("FOLDCACHE_BENCH_VARIANTS").unwrap_or_default();
    all.split("\n---\n")
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect()
}

fn bench_toml(config: &Config, redis_url: &str, variant: &str) -> String {
    let mut s = format!(
        "[redis]\nurl = \"{redis_url}\"\n[kafka]\nbrokers = \"{}\"\ngroup_id = \"{}\"\ndead_letter_topic = \"{}\"\n",
        config.kafka.brokers,
        unique("bench-group"),
        config.kafka.dead_letter_topic
    );
    for (name, e) in &config.entities {
        if e.merge {
            s.push_str(&format!("[entities.{name}]\nmerge = true\n"));
        }
    }
    for src in &config.sources {
        s.push_str(&format!(
            "[[sources]]\ntopic = \"{}\"\nentity = \"{}\"\n",
            src.topic, src.entity
        ));
        if let Some(t) = &src.transform {
            s.push_str(&format!("transform = '''\n{t}\n'''\n"));
        }
    }
    // Settings under test (e.g. `[kafka.client]` properties), appended.
    if let Ok(extra) = std::env::var("FOLDCACHE_BENCH_TOML") {
        s.push('\n');
        s.push_str(&extra);
        s.push('\n');
    }
    s.push('\n');
    s.push_str(variant);
    s.push('\n');
    s
}
