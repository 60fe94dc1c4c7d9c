//! Propagation benchmarks (issue 12), each beside a baseline measured in the
//! same run, on one private stack (Redis, the Tansu broker, the release
//! `ingest` and `query-api`) holding the demo's data set:
//!
//! 1. a collection page of 100 employees, beside the batch lookup of the
//!    same 100 ids (`?id=..` ×100);
//! 2. a team-members lookup (`?team_id=T..`), beside a single-employee
//!    lookup;
//! 3. SSE fan-out: 1,000 event-stream subscribers while 1,000 changes/s go
//!    through the broker, delay from the fold (the change log entry's Redis
//!    time) to each client; beside Redis pub/sub fanning the same rate out
//!    to 1,000 subscribers;
//! 4. the memory of 10,000 idle long-polls and 10,000 idle event streams,
//!    beside 10,000 idle keep-alive connections, each on a fresh query-api.
//!
//! HTTP rates come from wrk (`-t1 -c50`, random URLs of the kind). Run:
//! `scripts/dev bench-propagation` (builds release binaries first). Prints a
//! Markdown table for docs/BENCHMARKS.md.

mod fanout;
mod idle;
mod wrk;

use anyhow::{Context, Result, ensure};
use foldcache::Stack;
use foldcache_common::config::{Config, SourceConfig, ValueFormat};
use foldcache_ingest::generate::{GenOptions, Generator};
use serde_json::Value;
use std::time::{Duration, Instant};

/// The demo's data set.
const EMPLOYEES: usize = 10_000;
const TEAMS: usize = 10_000;
const SUBSCRIBERS: usize = 1_000;
const CHANGES_PER_SEC: u64 = 1_000;
const FANOUT_SECS: u64 = 20;
const IDLE: usize = 10_000;

#[tokio::main]
async fn main() -> Result<()> {
    let stack = Stack::start(3, "").await?;
    let config = producer_config(&stack);
    eprintln!("producing the demo data set: {EMPLOYEES} employees, {TEAMS} teams, permissions");
    let cfg = config.clone();
    tokio::task::spawn_blocking(move || {
        foldcache_ingest::produce::produce(&cfg, generator(0).events(), 0)
    })
    .await??;
    let _ingest = stack.spawn_ingest()?;
    let mut api = stack.spawn_query_api()?;
    stack.wait_ready(Duration::from_secs(180)).await?;
    let base = stack.base_url();
    let pages = wait_for_all_pages(&base).await?;
    let mut rows = Vec::new();

    // 1. A page of 100 beside the batch lookup of the same ids.
    let page_urls: Vec<String> = pages.iter().map(|p| p.url.clone()).collect();
    let batch_urls: Vec<String> = pages
        .iter()
        .map(|p| {
            let ids: Vec<String> = p.ids.iter().map(|i| format!("id={i}")).collect();
            format!("/v1/employees?{}", ids.join("&"))
        })
        .collect();
    let page = wrk::run(&base, &page_urls, &[])?;
    let batch = wrk::run(&base, &batch_urls, &[])?;
    rows.push(row(
        "collection page of 100 employees (`?limit=100&cursor=..`)",
        &page,
        "batch lookup of the same 100 ids (`?id=..` ×100)",
        &batch,
    ));

    // 2. Team members beside a single lookup.
    let team_urls: Vec<String> = (0..TEAMS)
        .map(|i| {
            format!(
                "/v1/employees?team_id={}",
                foldcache_ingest::generate::team_id(i)
            )
        })
        .collect();
    let one_urls: Vec<String> = pages
        .iter()
        .flat_map(|p| p.ids.iter().map(|i| format!("/v1/employees/{i}")))
        .collect();
    let members = wrk::run(&base, &team_urls, &[])?;
    let single = wrk::run(&base, &one_urls, &[])?;
    rows.push(row(
        "team members (`?team_id=T..`, 1 to 10 members)",
        &members,
        "one employee (`/v1/employees/E..`)",
        &single,
    ));

    // 3. SSE fan-out beside Redis pub/sub.
    let sse = fanout::sse(
        &base,
        &config,
        generator(FANOUT_SECS as usize * CHANGES_PER_SEC as usize),
        SUBSCRIBERS,
        CHANGES_PER_SEC,
    )
    .await?;
    let pubsub = fanout::pubsub(
        &stack.redis.url(),
        SUBSCRIBERS,
        CHANGES_PER_SEC,
        FANOUT_SECS,
        sse.mean_event_bytes,
    )
    .await?;

    // 4. Idle connections, each kind on a fresh query-api. Long-polls wait
    // on distinct employees with their current ETags (read after the
    // fan-out's changes).
    let validators: Vec<(String, String)> = wait_for_all_pages(&base)
        .await?
        .iter()
        .flat_map(|p| p.ids.iter().cloned().zip(p.etags.iter().cloned()))
        .collect();
    let mut idle = Vec::new();
    for kind in [
        idle::Kind::KeepAlive,
        idle::Kind::LongPoll,
        idle::Kind::Stream,
    ] {
        api.terminate(Duration::from_secs(10));
        api = stack.spawn_query_api()?;
        stack.wait_ready(Duration::from_secs(60)).await?;
        let pid = api.pid().context("query-api pid")?;
        idle.push((
            kind,
            idle::measure(&base, pid, kind, IDLE, &validators).await?,
        ));
    }

    println!("\n| benchmark | foldcache | baseline (same run) | ratio |\n|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    println!(
        "| SSE fan-out, {SUBSCRIBERS} subscribers × {CHANGES_PER_SEC} changes/s, delay fold → client | p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} events, {} changes, {} streams ended early) | Redis pub/sub, {SUBSCRIBERS} subscribers × {CHANGES_PER_SEC} msg/s of {} B: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms | p99 {:.2}× |",
        sse.delay.p50,
        sse.delay.p99,
        sse.delay.max,
        sse.delivered,
        sse.changes,
        sse.ended_early,
        sse.mean_event_bytes,
        pubsub.p50,
        pubsub.p99,
        pubsub.max,
        sse.delay.p99 / pubsub.p99.max(0.001),
    );
    let base_kib = idle
        .iter()
        .find(|(k, _)| *k == idle::Kind::KeepAlive)
        .map(|(_, m)| m.kib_per_connection)
        .unwrap_or(0.0);
    for (kind, m) in &idle {
        if *kind == idle::Kind::KeepAlive {
            continue;
        }
        println!(
            "| memory of {IDLE} idle {} | {:.1} KiB per connection ({:.0} MiB in all) | {IDLE} idle keep-alive connections: {base_kib:.1} KiB each | {:.2}× |",
            kind.label(),
            m.kib_per_connection,
            m.total_mib,
            m.kib_per_connection / base_kib.max(0.001),
        );
    }
    Ok(())
}

/// The seeded generator of the demo data set, with `updates` changes after
/// it (so the states of the updates follow the seed's).
fn generator(updates: usize) -> Generator {
    Generator::new(GenOptions {
        seed: 42,
        employees: EMPLOYEES,
        teams: TEAMS,
        updates,
        deletes: 0,
    })
}

/// A producer config on the stack's topics.
fn producer_config(stack: &Stack) -> Config {
    let mut config = Config::default();
    config.kafka.brokers = stack.broker.bootstrap();
    config.sources = [
        (&stack.topics.employees, "employees"),
        (&stack.topics.teams, "teams"),
        (&stack.topics.permissions, "permissions"),
    ]
    .iter()
    .map(|(topic, entity)| SourceConfig {
        topic: (*topic).clone(),
        entity: (*entity).into(),
        format: ValueFormat::Json,
        id_prefix: String::new(),
        transform: None,
        id_from_key: None,
        fields: None,
        priority: 0,
        schema_file: None,
    })
    .collect();
    config
}

/// One page of the collection: its URL, its ids and their ETags.
struct Page {
    url: String,
    ids: Vec<String>,
    etags: Vec<String>,
}

/// Walks the collection in pages of 100 until it holds every employee.
async fn wait_for_all_pages(base: &str) -> Result<Vec<Page>> {
    let client = reqwest::Client::new();
    let t = Instant::now();
    loop {
        let mut pages = Vec::new();
        let mut url = "/v1/employees?limit=100".to_owned();
        loop {
            let body: Value = client
                .get(format!("{base}{url}"))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let items = body["items"].as_array().context("page without items")?;
            let field = |name: &str| -> Vec<String> {
                items
                    .iter()
                    .filter_map(|i| i[name].as_str().map(str::to_owned))
                    .collect()
            };
            let (ids, etags) = (field("id"), field("etag"));
            pages.push(Page { url, ids, etags });
            match body["next"].as_str() {
                Some(next) => url = next.to_owned(),
                None => break,
            }
        }
        let n: usize = pages.iter().map(|p| p.ids.len()).sum();
        if n == EMPLOYEES {
            eprintln!(
                "all {n} employees served after {:.1} s",
                t.elapsed().as_secs_f64()
            );
            return Ok(pages);
        }
        ensure!(
            t.elapsed() < Duration::from_secs(300),
            "only {n} employees served"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A table row: foldcache beside its baseline.
fn row(what: &str, ours: &wrk::Rate, base_what: &str, base: &wrk::Rate) -> String {
    format!(
        "| {what} | {:.0} req/s, p99 {:.2} ms | {base_what}: {:.0} req/s, p99 {:.2} ms | {:.2}× |",
        ours.per_sec,
        ours.p99_ms,
        base.per_sec,
        base.p99_ms,
        ours.per_sec / base.per_sec.max(0.001),
    )
}
