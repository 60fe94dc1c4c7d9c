//! Rebuilds: on demand (admin endpoint and CLI) while a writer keeps
//! producing and a reader keeps reading; and after Redis loses its data
//! (flush, and a restart of the Redis process) while events keep arriving.

use anyhow::{Result, ensure};
use foldcache::{RedisServer, Stack, eventually, foldcache_binary};
use redis::AsyncCommands;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

const KEYS: usize = 60;

/// Produces `{"v": n}` for keys E0..E59 in rounds until `stop`; returns the
/// last version per key.
async fn writer(
    stack: Arc<Stack>,
    stop: Arc<AtomicBool>,
    start: u64,
) -> Result<HashMap<String, u64>> {
    let producer = stack.producer()?;
    let mut last = HashMap::new();
    let mut v = start;
    while !stop.load(Ordering::Relaxed) {
        v += 1;
        let mut deliveries = Vec::new();
        for k in 0..KEYS {
            let id = format!("E{k}");
            let body = json!({"id": id, "v": v}).to_string();
            let rec = rdkafka::producer::FutureRecord::to(&stack.topics.employees)
                .key(id.as_str())
                .payload(body.as_str());
            deliveries.push(producer.send_result(rec).map_err(|(e, _)| e)?);
            last.insert(id, v);
        }
        for d in deliveries {
            d.await?.map_err(|(e, _)| e)?;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(last)
}

/// Reads random ids until `stop`: never a 404, never an older version than
/// already seen for that id. Returns (requests, 503s).
async fn reader(base: String, stop: Arc<AtomicBool>, allow_503: bool) -> Result<(u64, u64)> {
    let client = reqwest::Client::new();
    let mut seen: HashMap<usize, u64> = HashMap::new();
    let (mut n, mut unavailable) = (0u64, 0u64);
    let mut k = 0usize;
    while !stop.load(Ordering::Relaxed) {
        k = (k * 7 + 13) % KEYS;
        let r = client
            .get(format!("{base}/v1/employees/E{k}"))
            .send()
            .await?;
        n += 1;
        match r.status() {
            StatusCode::OK => {
                let v = r.json::<Value>().await?["v"].as_u64().unwrap_or(0);
                let prev = seen.insert(k, v).unwrap_or(0);
                ensure!(v >= prev, "E{k}: read version {v} after {prev}");
            }
            StatusCode::SERVICE_UNAVAILABLE if allow_503 => unavailable += 1,
            other => anyhow::bail!("E{k}: unexpected {other} from {base}"),
        }
    }
    Ok((n, unavailable))
}

/// Waits for the cache, starts the writer and waits until its first round
/// is served: every key, since the keys are spread over partitions that
/// ingest folds independently (one key served says nothing of a key on
/// another partition, and a reader asking for that one too early gets a
/// true 404).
async fn start_writing(
    stack: &Arc<Stack>,
) -> Result<(
    Arc<AtomicBool>,
    tokio::task::JoinHandle<Result<HashMap<String, u64>>>,
)> {
    stack.wait_ready(WAIT).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let w = tokio::spawn(writer(stack.clone(), stop.clone(), 0));
    let base = stack.base_url();
    eventually("the first round to be served", WAIT, || async {
        for k in 0..KEYS {
            let url = format!("{base}/v1/employees/E{k}");
            if reqwest::get(&url).await?.status() != 200 {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await?;
    Ok((stop, w))
}

/// Stops the writer and the reader; the reader kept reading and was never
/// answered 503, and every key ends at the writer's last version.
async fn stop_and_check(
    stack: &Stack,
    stop: &AtomicBool,
    w: tokio::task::JoinHandle<Result<HashMap<String, u64>>>,
    r: tokio::task::JoinHandle<Result<(u64, u64)>>,
) -> Result<()> {
    stop.store(true, Ordering::Relaxed);
    let last = w.await??;
    let (reads, unavailable) = r.await??;
    assert!(reads > 100, "the reader kept reading ({reads})");
    assert_eq!(unavailable, 0);
    assert_final(stack, &last).await
}

async fn live_gen(con: &mut redis::aio::MultiplexedConnection) -> Result<u64> {
    Ok(con
        .hget::<_, _, Option<u64>>("fc:state", "live_gen")
        .await?
        .unwrap_or(0))
}

/// Every key equals the writer's last version, in the live generation.
async fn assert_final(stack: &Stack, last: &HashMap<String, u64>) -> Result<()> {
    let mut con = stack.redis.connection().await?;
    eventually("the last versions to be folded", WAIT, || {
        let mut con = con.clone();
        async move {
            let g = live_gen(&mut con).await?;
            for (id, v) in last {
                let got: Option<String> = con.hget(format!("fc:g{g}:employees:{id}"), "v").await?;
                if got.as_deref() != Some(v.to_string().as_str()) {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        }
    })
    .await?;
    let g = live_gen(&mut con).await?;
    let keys: Vec<String> = con.keys(format!("fc:g{g}:employees:*")).await?;
    ensure!(keys.len() == KEYS, "{} keys in generation {g}", keys.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn on_demand_rebuild_swaps_generations_without_a_404_or_a_step_back() -> Result<()> {
    let admin_port = foldcache::free_port();
    // Tokens: an admin ("ops") and a reader; anonymous reads stay open for
    // the reader task.
    let auth = r#"
[auth]
anonymous = { employees = "full" }

[[auth.tokens]]
name = "ops"
sha256 = "dca1dca2f14b59150c804ed2248984c452ed6cedaa13af35fd12a6e3144aa3b1"
admin = true

[[auth.tokens]]
name = "reader"
sha256 = "fcb324dd10d2ce4bda1acc9c8d4657ea10e4011e36665e46507422619003c4df"
grants = { employees = "full" }
"#;
    let stack = Arc::new(Stack::start(2, auth).await?);
    let admin_listen = format!("127.0.0.1:{admin_port}");
    let ingest = stack.spawn_ingest_with(&[
        ("FOLDCACHE__INGEST__ADMIN_LISTEN", &admin_listen),
        ("FOLDCACHE__INGEST__REBUILD_RETIRE_GRACE_MS", "1500"),
    ])?;
    let _api = stack.spawn_query_api()?;
    let (stop, w) = start_writing(&stack).await?;
    let base = stack.base_url();
    let r = tokio::spawn(reader(base.clone(), stop.clone(), false));

    // The admin endpoint: no token, an unknown one, a read token, then the
    // admin's.
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{admin_port}/admin/rebuild");
    assert_eq!(
        client.post(&url).send().await?.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        client.post(&url).bearer_auth("nope").send().await?.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        client
            .post(&url)
            .bearer_auth("reader-token-81d2")
            .send()
            .await?
            .status(),
        StatusCode::FORBIDDEN,
        "a read token has no admin scope"
    );
    let started = client
        .post(&url)
        .bearer_auth("ops-admin-token-3c9e")
        .send()
        .await?;
    assert_eq!(started.status(), StatusCode::ACCEPTED);
    assert_eq!(
        started.json::<Value>().await?,
        json!({"outcome": "started", "generation": 2})
    );
    // Only one at a time.
    let again = client
        .post(&url)
        .bearer_auth("ops-admin-token-3c9e")
        .send()
        .await?;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    assert_eq!(
        again.json::<Value>().await?["outcome"],
        json!("already_running")
    );

    let mut con = stack.redis.connection().await?;
    eventually("readers to switch to generation 2", WAIT, || {
        let mut con = con.clone();
        async move { Ok((live_gen(&mut con).await? == 2).then_some(())) }
    })
    .await?;
    // Old generation removed after its grace.
    eventually("generation 1 to be removed", WAIT, || {
        let mut con = con.clone();
        async move {
            let left: Vec<String> = con.keys("fc:g1:*").await?;
            Ok(left.is_empty().then_some(()))
        }
    })
    .await?;

    // The CLI: a second rebuild, followed to the swap.
    let stdout = stack.rebuild().await?;
    assert!(stdout.contains("rebuild complete"), "{stdout}");
    assert_eq!(live_gen(&mut con).await?, 3);

    stop_and_check(&stack, &stop, w, r).await?;

    // The audit log: who, what, outcome (the line's timestamp is when);
    // the refusals too; never a token.
    let log = std::fs::read_to_string(ingest.log_path())?;
    let audit: Vec<&str> = log.lines().filter(|l| l.contains("audit")).collect();
    assert!(
        audit.iter().any(|l| l.contains("action=\"rebuild\"")
            && l.contains("who=ops")
            && l.contains("outcome=\"started\"")),
        "{audit:#?}"
    );
    assert!(
        audit
            .iter()
            .any(|l| l.contains("outcome=\"refused\"") && l.contains("status=403")),
        "{audit:#?}"
    );
    for secret in ["ops-admin-token-3c9e", "reader-token-81d2"] {
        assert!(!log.contains(secret), "a token in the log");
    }
    Ok(())
}

/// `ingest.consumers = 2`: each generation's two consumers share out its
/// partitions (both log assignments), and a rebuild read through them is
/// as exact: no 404, no step back, every key at its last version.
#[tokio::test(flavor = "multi_thread")]
async fn two_consumers_per_generation_share_the_partitions_and_rebuild_exactly() -> Result<()> {
    let stack = Arc::new(Stack::start(4, "").await?);
    let ingest = stack.spawn_ingest_with(&[
        ("FOLDCACHE__INGEST__CONSUMERS", "2"),
        ("FOLDCACHE__INGEST__REBUILD_RETIRE_GRACE_MS", "1500"),
    ])?;
    let _api = stack.spawn_query_api()?;
    let (stop, w) = start_writing(&stack).await?;
    let r = tokio::spawn(reader(stack.base_url(), stop.clone(), false));

    let stdout = stack.rebuild().await?;
    assert!(stdout.contains("rebuild complete"), "{stdout}");
    let mut con = stack.redis.connection().await?;
    assert_eq!(live_gen(&mut con).await?, 2);

    stop_and_check(&stack, &stop, w, r).await?;

    let log = std::fs::read_to_string(ingest.log_path())?;
    let assigned = |generation: u64, consumer: usize| {
        log.lines()
            .filter(|l| l.contains("partition assigned"))
            .filter(|l| l.contains(&format!("generation={generation} ")))
            .filter(|l| l.contains(&format!("consumer={consumer}")))
            .count()
    };
    for generation in [1, 2] {
        for consumer in [0, 1] {
            assert!(
                assigned(generation, consumer) > 0,
                "generation {generation}: consumer {consumer} was assigned no partition"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_flush_and_restart_while_writing_give_503_never_404_then_the_reference() -> Result<()>
{
    let stack = Arc::new(Stack::start(2, "").await?);
    let mut ingest = stack.spawn_ingest()?;
    let _api = stack.spawn_query_api()?;
    let (stop, w) = start_writing(&stack).await?;
    let base = stack.base_url();
    // Versions may step back across a loss (the rebuilt cache replays), but
    // never a 404: only 200 or 503.
    let poll_stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (base, stop) = (base.clone(), poll_stop.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut counts: HashMap<u16, u64> = HashMap::new();
            let mut k = 0;
            while !stop.load(Ordering::Relaxed) {
                k = (k + 7) % KEYS;
                let s = client
                    .get(format!("{base}/v1/employees/E{k}"))
                    .send()
                    .await?
                    .status()
                    .as_u16();
                *counts.entry(s).or_default() += 1;
                anyhow::ensure!(s == 200 || s == 503, "E{k}: {s}");
            }
            Ok::<_, anyhow::Error>(counts)
        })
    };

    // 1. FLUSHALL.
    let mut con = stack.redis.connection().await?;
    let () = redis::cmd("FLUSHALL").query_async(&mut con).await?;
    stack.wait_ready(WAIT).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 2. The Redis process restarts empty on the same port.
    let port = stack.redis.port();
    let _: redis::RedisResult<()> = redis::cmd("SHUTDOWN")
        .arg("NOSAVE")
        .query_async(&mut con)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let bin = std::path::Path::new("/usr/bin/redis-server");
    let _restarted: RedisServer = RedisServer::start_on(bin, port).await?;
    stack.wait_ready(WAIT).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    poll_stop.store(true, Ordering::Relaxed);
    let counts = poller.await??;
    assert!(counts.get(&200).copied().unwrap_or(0) > 0, "{counts:?}");
    stop.store(true, Ordering::Relaxed);
    let last = w.await??;
    assert_final(&stack, &last).await?;
    assert!(ingest.is_running(), "ingest survived both losses");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rebuild_interrupted_by_sigkill_resumes_and_readers_never_see_it_half_built() -> Result<()>
{
    let stack = Arc::new(Stack::start(2, "").await?);
    // One event per batch: the build takes long enough to be caught half
    // done. The live generation folds the same way.
    let mut ingest = stack.spawn_ingest_with(&[("FOLDCACHE__INGEST__BATCH_MAX_EVENTS", "1")])?;
    let _api = stack.spawn_query_api()?;
    let (stop, w) = start_writing(&stack).await?;
    let base = stack.base_url();
    // One event per batch also slows the live generation, which then falls
    // behind the writer beyond the freshness bound: honest 503s are allowed,
    // a 404 or an older version than one already read is not.
    let r = tokio::spawn(reader(base.clone(), stop.clone(), true));
    // A few thousand records to replay.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Request a rebuild and kill ingest once the new generation holds some
    // entities but is not complete: the build is left half done.
    let out = tokio::process::Command::new(foldcache_binary("ingest")?)
        .args([
            "--config",
            &stack.config_path().to_string_lossy(),
            "rebuild",
            "--no-wait",
        ])
        .output()
        .await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut con = stack.redis.connection().await?;
    let half_built = eventually("the build to fold its first entities", WAIT, || {
        let mut con = con.clone();
        async move {
            let keys: Vec<String> = con.keys("fc:g2:employees:*").await?;
            Ok((!keys.is_empty()).then_some(keys.len()))
        }
    })
    .await?;
    ingest.kill();
    let build: Option<u64> = con.hget("fc:state", "build_gen").await?;
    ensure!(
        build == Some(2) && live_gen(&mut con).await? == 1,
        "the build finished before it could be interrupted (build_gen {build:?}); \
         this test needs a longer log"
    );
    eprintln!("ingest killed with generation 2 half built ({half_built} of {KEYS} entities)");
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A new ingest resumes the build and swaps when it is complete.
    let _ingest = stack.spawn_ingest()?;
    eventually("the resumed build to swap in", WAIT, || {
        let mut con = con.clone();
        async move { Ok((live_gen(&mut con).await? == 2).then_some(())) }
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    let last = w.await??;
    let (reads, unavailable) = r.await??;
    assert!(
        reads - unavailable > 50,
        "the reader kept being served ({reads} reads, {unavailable} 503s)"
    );
    assert_final(&stack, &last).await?;
    Ok(())
}
