//! `ingest rebuild`: starts an on-demand rebuild and shows its progress
//! (per-partition offsets against the targets captured at its start,
//! events/s, ETA) until readers have switched to the new generation.

use crate::rebuild::{Rebuilds, RequestOutcome};
use anyhow::{Context as _, bail};
use foldcache_common::config::Config;
use foldcache_common::keys::KeySpace;
use indicatif::{ProgressBar, ProgressStyle};
use std::time::{Duration, Instant};

/// Requests a rebuild; with `wait`, follows it to the swap.
pub async fn run(config: &Config, wait: bool) -> anyhow::Result<()> {
    let client = foldcache_common::redis_client::client(&config.redis)?;
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .context("connecting to Redis")?;
    let rebuilds = Rebuilds::new(KeySpace::new(config.redis.key_prefix.clone()));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let outcome = rebuilds.request(&mut con, now).await?;
    // The CLI needs the config's Redis credentials: an operator's action,
    // audited like the HTTP endpoint's (who: the OS user).
    let who = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    tracing::info!(target: "audit", action = "rebuild", who = %format!("cli:{who}"), outcome = ?outcome, "admin action");
    let generation = match outcome {
        RequestOutcome::Started { generation } => {
            println!("rebuild started: building generation {generation} beside the live one");
            generation
        }
        RequestOutcome::AlreadyRunning {
            generation,
            started_ms,
        } => bail!(
            "a rebuild to generation {generation} is already running (requested {} s ago); only one runs at a time. \
             Watch it with `curl http://<ingest admin>/admin/rebuild`",
            (now - started_ms) / 1000
        ),
        RequestOutcome::NotReady => bail!(
            "the cache is not ready yet: ingest is already replaying every topic from offset zero"
        ),
        RequestOutcome::NoCache => bail!(
            "this Redis holds no foldcache cache under prefix {:?}: is ingest running with the same redis.url and key_prefix?",
            config.redis.key_prefix
        ),
    };
    if !wait {
        return Ok(());
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} generation {msg} [{bar:40}] {pos}/{len} offsets, {per_sec}, ETA {eta}",
        )
        .context("progress template")?
        .progress_chars("=> "),
    );
    bar.set_message(generation.to_string());
    let start = Instant::now();
    loop {
        let p = rebuilds.progress(&mut con).await?;
        if p.generation != Some(generation) {
            bar.finish_and_clear();
            if p.live_generation >= generation {
                println!(
                    "rebuild complete in {:.1} s: readers now use generation {generation}; the old one is removed in the background",
                    start.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            bail!("the rebuild of generation {generation} was abandoned (Redis lost its data?)");
        }
        bar.set_length(p.target.max(p.done).max(0) as u64);
        bar.set_position(p.done.max(0) as u64);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
