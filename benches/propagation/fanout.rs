//! Fan-out of changes to many subscribers: query-api's event streams, and
//! Redis pub/sub as the baseline.
//!
//! SSE delay is measured from the fold: every event's cursor names its
//! change log entry, whose id is the Redis time (ms) of the fold's `XADD`;
//! the client subtracts it from its own clock (same machine) when the bytes
//! arrive. Millisecond ids add up to 1 ms (0.5 ms on average) to each
//! delay. Pub/sub messages carry the publish time in microseconds.

use anyhow::{Context, Result, ensure};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use foldcache_common::config::Config;
use foldcache_ingest::generate::Generator;
use futures::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// Percentiles of delays, in milliseconds.
#[derive(Debug)]
pub struct Delay {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Delay {
    fn of(mut ms: Vec<f64>) -> Result<Self> {
        ensure!(!ms.is_empty(), "no deliveries measured");
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
        Ok(Self {
            p50: at(0.50),
            p99: at(0.99),
            max: at(1.0),
        })
    }
}

/// What the event-stream run measured.
#[derive(Debug)]
pub struct SseRun {
    pub delay: Delay,
    /// Events received, all subscribers.
    pub delivered: u64,
    /// Changes produced.
    pub changes: u64,
    /// Streams that ended before the run did (slow-client disconnects).
    pub ended_early: usize,
    /// Mean size of an event's `data`.
    pub mean_event_bytes: usize,
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// The fold time (ms) named by a change cursor: base64url of
/// `c|epoch|generation|ms-seq`.
fn fold_ms(cursor: &str) -> Option<f64> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor.trim()).ok()?).ok()?;
    let pos = text.rsplit('|').next()?;
    pos.split_once('-')?.0.parse().ok()
}

/// `subscribers` event streams on `/v1/employees/changes` while the
/// generator's updates (after its seed data) are produced at `rate`/s.
pub async fn sse(
    base: &str,
    config: &Config,
    generator: Generator,
    subscribers: usize,
    rate: u64,
) -> Result<SseRun> {
    let client = reqwest::Client::new();
    let connected = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        let req = client
            .get(format!("{base}/v1/employees/changes"))
            .header("accept", "text/event-stream");
        let connected = connected.clone();
        let mut stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut res = req.send().await?.error_for_status()?;
            connected.fetch_add(1, Ordering::SeqCst);
            let mut delays = Vec::new();
            let (mut data_bytes, mut buf) = (0usize, Vec::<u8>::new());
            let ended_early = loop {
                let chunk = tokio::select! {
                    c = res.chunk() => c?,
                    _ = stop.wait_for(|s| *s) => break false,
                };
                let Some(chunk) = chunk else {
                    break !*stop.borrow();
                };
                let at = now_ms();
                buf.extend_from_slice(&chunk);
                let cut = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
                for line in buf[..cut].split(|b| *b == b'\n') {
                    if let Some(id) = line.strip_prefix(b"id: ") {
                        if let Some(ms) = fold_ms(&String::from_utf8_lossy(id)) {
                            delays.push(at - ms);
                        }
                    } else if let Some(d) = line.strip_prefix(b"data: ") {
                        data_bytes += d.len();
                    }
                }
                buf.drain(..cut);
            };
            anyhow::Ok((delays, data_bytes, ended_early))
        }));
    }
    while connected.load(Ordering::SeqCst) < subscribers {
        ensure!(
            !tasks.iter().any(|t| t.is_finished()),
            "a subscriber failed to connect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("{subscribers} event streams open; producing {rate} changes/s");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cfg = config.clone();
    // The generator's seed data (already produced) comes first: skip it.
    let seed = crate::TEAMS + 2 * crate::EMPLOYEES;
    let changes = tokio::task::spawn_blocking(move || {
        foldcache_ingest::produce::produce(&cfg, generator.events().skip(seed), rate)
    })
    .await??;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_tx.send_replace(true);
    let (mut all, mut delivered, mut data_bytes, mut ended_early) = (Vec::new(), 0u64, 0, 0);
    for t in tasks {
        let (delays, bytes, early) = t.await??;
        delivered += delays.len() as u64;
        data_bytes += bytes;
        ended_early += usize::from(early);
        all.extend(delays);
    }
    eprintln!("SSE: {delivered} events delivered for {changes} changes");
    Ok(SseRun {
        delay: Delay::of(all)?,
        delivered,
        changes,
        ended_early,
        mean_event_bytes: data_bytes / (delivered.max(1) as usize),
    })
}

/// `subscribers` Redis pub/sub connections on one channel while one
/// connection publishes `rate` messages/s of `size` bytes for `secs`.
pub async fn pubsub(
    url: &str,
    subscribers: usize,
    rate: u64,
    secs: u64,
    size: usize,
) -> Result<Delay> {
    let client = redis::Client::open(url)?;
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe("foldcache-bench").await?;
        let mut stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            let mut delays = Vec::new();
            loop {
                let msg = tokio::select! {
                    m = messages.next() => m,
                    _ = stop.wait_for(|s| *s) => break,
                };
                let Some(msg) = msg else { break };
                let at = now_ms();
                let payload = msg.get_payload_bytes();
                let sent = payload
                    .split(|b| *b == b'|')
                    .next()
                    .and_then(|t| std::str::from_utf8(t).ok())
                    .and_then(|t| t.parse::<f64>().ok());
                if let Some(us) = sent {
                    delays.push(at - us / 1000.0);
                }
            }
            delays
        }));
    }
    eprintln!("{subscribers} pub/sub subscribers; publishing {rate} messages/s");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .context("publisher")?;
    let padding = "x".repeat(size);
    let start = tokio::time::Instant::now();
    let total = rate * secs;
    for sent in 0..total {
        let due = start + Duration::from_secs_f64(sent as f64 / rate as f64);
        tokio::time::sleep_until(due).await;
        let us = (now_ms() * 1000.0) as u64;
        let () = redis::cmd("PUBLISH")
            .arg("foldcache-bench")
            .arg(format!("{us}|{padding}"))
            .query_async::<i64>(&mut con)
            .await
            .map(|_| ())?;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_tx.send_replace(true);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    eprintln!("pub/sub: {} messages delivered for {total}", all.len());
    Delay::of(all)
}
