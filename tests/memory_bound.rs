//! `ingest.unfolded_max_bytes` against a real broker, Redis and `ingest`: a
//! backlog many times the bound is folded whole and in order per key, in
//! batches the bound keeps small (each partition's batches share it), and
//! nothing stalls however little the bound leaves each partition.

use anyhow::{Context, Result};
use foldcache::{Rec, Stack, produce_all};
use redis::AsyncCommands;
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(180);

/// Records per key: each key is written this many times, the last wins.
const VERSIONS: usize = 2;
const KEYS: usize = 4_000;
/// Members per employee, each a string of `WIDTH` bytes: ~4 KiB a state.
const MEMBERS: usize = 20;
const WIDTH: usize = 200;
const BOUND: usize = 1 << 20;

fn employee(id: usize, version: usize) -> serde_json::Value {
    let mut v = json!({"id": format!("E{id}"), "version": version});
    for m in 0..MEMBERS {
        v[format!("m{m:02}")] = json!(format!("{version}-{}", "x".repeat(WIDTH)));
    }
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_many_times_the_bound_folds_whole_in_batches_it_keeps_small() -> Result<()> {
    let stack = Stack::start(2, "").await?;
    let log: Vec<Rec> = (0..VERSIONS)
        .flat_map(|version| (0..KEYS).map(move |id| (id, version)))
        .map(|(id, version)| Rec {
            topic: stack.topics.employees.clone(),
            key: Some(format!("E{id}").into_bytes()),
            value: Some(employee(id, version).to_string().into_bytes()),
        })
        .collect();
    let backlog: usize = log
        .iter()
        .map(|r| r.value.as_ref().map_or(0, Vec::len))
        .sum();
    assert!(backlog > 20 * BOUND, "the backlog must dwarf the bound");
    // The whole backlog waits in the broker before ingest starts, so
    // without the bound every batch would fill to `batch_max_events`.
    let ends = produce_all(&stack.producer()?, &log).await?;

    let bound = BOUND.to_string();
    let ingest = stack.spawn_ingest_with(&[
        ("FOLDCACHE__INGEST__UNFOLDED_MAX_BYTES", bound.as_str()),
        ("FOLDCACHE__INGEST__BATCH_MAX_EVENTS", "2000"),
        (
            "FOLDCACHE__LOG__FILTER",
            "info,foldcache_ingest::partition=debug",
        ),
    ])?;
    stack.wait_folded(&ends, WAIT).await?;

    // Every key holds its last version.
    let mut con = stack.redis.connection().await?;
    for id in 0..KEYS {
        let version: Option<String> = con
            .hget(format!("fc:g1:employees:E{id}"), "version")
            .await?;
        assert_eq!(
            version.as_deref(),
            Some((VERSIONS - 1).to_string().as_str()),
            "E{id}"
        );
    }

    // Batches as the debug log reports them: none holds much more than
    // the bound allows (a state takes ~4 KiB in a batch and counts about
    // three times that, so fewer than 100 of them fit in 1 MiB, against
    // 2,000 without the bound).
    let text = std::fs::read_to_string(ingest.log_path()).context("ingest log")?;
    let sizes: Vec<usize> = text
        .lines()
        .filter(|l| l.contains("batch folded"))
        .filter_map(|l| {
            l.split("records=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(!sizes.is_empty(), "no batch logged:\n{text}");
    assert_eq!(sizes.iter().sum::<usize>(), VERSIONS * KEYS);
    let largest = sizes.iter().max().copied().unwrap_or(0);
    let per_state = backlog / log.len();
    assert!(
        largest * per_state <= BOUND + BOUND / 2,
        "a batch of {largest} records of ~{per_state} bytes under a bound of {BOUND}"
    );
    Ok(())
}
