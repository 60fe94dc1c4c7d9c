//! Differential tests of the fold: random logs through the real broker
//! (upserts, updates, tombstones, re-created keys, re-produced duplicates,
//! poison records, several partitions and topics) are folded by the real
//! `ingest` binary, and every key in Redis is compared with a reference fold
//! computed here. Also through SIGKILL and restart, and with two instances
//! in one consumer group.

use anyhow::{Result, ensure};
use foldcache::{Rec, Stack, produce_all};
use foldcache_common::state::{EntityState, assemble_body};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::AsyncCommands;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(90);

/// What the log says each key should be: `(entity, id) -> state or deleted`.
type Reference = BTreeMap<(String, String), Option<Value>>;

fn random_state(rng: &mut StdRng, id: &str) -> Value {
    let mut o = serde_json::Map::new();
    o.insert("id".into(), json!(id));
    for f in 0..rng.random_range(0..6) {
        let v = match rng.random_range(0..6) {
            0 => json!(rng.random::<i32>()),
            1 => json!(rng.random_bool(0.5)),
            2 => Value::Null,
            3 => json!(format!("이름-{}", rng.random::<u16>())),
            4 => json!([rng.random::<u8>(), {"k": rng.random::<u8>()}]),
            _ => json!({"nested": {"x": rng.random::<u16>(), "y": "é\"\\"}}),
        };
        o.insert(format!("f{f}"), v);
    }
    Value::Object(o)
}

/// A random log of `n` records over `keys` keys per topic.
fn random_log(seed: u64, topics: &[(&str, &str)], keys: usize, n: usize) -> Vec<Rec> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut log: Vec<Rec> = Vec::with_capacity(n);
    while log.len() < n {
        let (topic, _) = topics[rng.random_range(0..topics.len())];
        let id = format!("K{}", rng.random_range(0..keys));
        let rec = |key: Option<&[u8]>, value: Option<Vec<u8>>| Rec {
            topic: topic.to_owned(),
            key: key.map(<[u8]>::to_vec),
            value,
        };
        let roll = rng.random_range(0..100);
        if roll < 60 {
            let v = random_state(&mut rng, &id);
            log.push(rec(Some(id.as_bytes()), Some(v.to_string().into_bytes())));
        } else if roll < 75 {
            log.push(rec(Some(id.as_bytes()), None));
        } else if roll < 85 && !log.is_empty() {
            // Re-produce an earlier record verbatim (an upstream duplicate).
            let prev = log[rng.random_range(0..log.len())].clone();
            log.push(prev);
        } else {
            let poison = match rng.random_range(0..5) {
                0 => rec(Some(id.as_bytes()), Some(b"{\"broken\": ".to_vec())),
                1 => rec(Some(id.as_bytes()), Some(b"[1,2,3]".to_vec())),
                2 => rec(Some(b"bad key*"), Some(b"{}".to_vec())),
                3 => rec(Some(id.as_bytes()), Some(vec![0xff, 0xfe, 0x7b])),
                _ => rec(None, Some(b"{}".to_vec())),
            };
            log.push(poison);
        }
    }
    log
}

/// The reference fold, written independently of ingest: the last valid
/// record of each key wins; a null value deletes; a record without a
/// `K<digits>` key, or whose value is not a UTF-8 JSON object, changes
/// nothing.
fn reference_fold(log: &[Rec], topics: &[(&str, &str)]) -> Reference {
    let entity_of: HashMap<&str, &str> = topics.iter().copied().collect();
    let mut reference = Reference::new();
    for r in log {
        let Some(id) = r
            .key
            .as_ref()
            .and_then(|k| String::from_utf8(k.clone()).ok())
        else {
            continue;
        };
        if !(id.starts_with('K') && id[1..].bytes().all(|b| b.is_ascii_digit())) {
            continue;
        }
        let entity = entity_of[r.topic.as_str()].to_owned();
        match &r.value {
            None => {
                reference.insert((entity, id), None);
            }
            Some(v) => {
                if let Ok(obj @ Value::Object(_)) = serde_json::from_slice::<Value>(v) {
                    reference.insert((entity, id), Some(obj));
                }
            }
        }
    }
    reference
}

/// Every difference between Redis and the reference fold.
async fn differences(
    con: &mut redis::aio::MultiplexedConnection,
    reference: &Reference,
) -> Result<Vec<String>> {
    let mut diffs = Vec::new();
    for ((entity, id), want) in reference {
        let key = format!("fc:g1:{entity}:{id}");
        let fields: Vec<(String, String)> = con.hgetall(&key).await?;
        let got = if fields.is_empty() {
            None
        } else {
            let mut data: Vec<(&str, &str)> = fields
                .iter()
                .filter(|(k, _)| !k.starts_with("_fc:"))
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let body = assemble_body(&mut data);
            let etag = fields
                .iter()
                .find(|(k, _)| k == "_fc:etag")
                .map(|(_, v)| v.clone());
            let expected_etag = want
                .clone()
                .and_then(|w| EntityState::from_value(w).ok())
                .map(|s| foldcache_common::state::etag_of(&s.body()));
            if want.is_some() && etag != expected_etag {
                diffs.push(format!("{key}: stored etag {etag:?} != {expected_etag:?}"));
            }
            Some(serde_json::from_slice::<Value>(&body)?)
        };
        if &got != want {
            let src = fields
                .iter()
                .find(|(k, _)| k == "_fc:src")
                .map(|(_, v)| v.as_str());
            diffs.push(format!(
                "{key}: redis (from {src:?}) {got:?} != log {want:?}"
            ));
        }
    }
    // No key that the log does not have.
    for entity in ["employees", "teams"] {
        let keys: Vec<String> = con.keys(format!("fc:g1:{entity}:*")).await?;
        let live = reference
            .iter()
            .filter(|((e, _), v)| e == entity && v.is_some())
            .count();
        if keys.len() != live {
            diffs.push(format!(
                "{entity}: {} keys in Redis, {live} live in the log",
                keys.len()
            ));
        }
    }
    Ok(diffs)
}

fn topics(stack: &Stack) -> [(String, &'static str); 2] {
    [
        (stack.topics.employees.clone(), "employees"),
        (stack.topics.teams.clone(), "teams"),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn random_log_folds_exactly_even_through_sigkill() -> Result<()> {
    let stack = Stack::start(3, "").await?;
    let t = topics(&stack);
    let tt: Vec<(&str, &str)> = t.iter().map(|(a, b)| (a.as_str(), *b)).collect();
    let log = random_log(0xF01D, &tt, 300, 12_000);
    let reference = reference_fold(&log, &tt);
    let producer = stack.producer()?;
    let mut con = stack.redis.connection().await?;

    // Phase 1: the first third, folded by a first ingest.
    let small_batches = [("FOLDCACHE__INGEST__BATCH_MAX_EVENTS", "200")];
    let mut ingest = stack.spawn_ingest_with(&small_batches)?;
    let (first, rest) = log.split_at(4_000);
    let ends = produce_all(&producer, first).await?;
    stack.wait_folded(&ends, WAIT).await?;

    // Phase 2: SIGKILL in the middle of folding the rest.
    let producing = {
        let rest = rest.to_vec();
        let producer = producer.clone();
        tokio::spawn(async move { produce_all(&producer, &rest).await })
    };
    stack.wait_folded_past(6_000, WAIT).await?;
    ingest.kill();
    let ends_rest = producing.await??;
    let mut ingest = stack.spawn_ingest_with(&small_batches)?;
    let mut all_ends = ends;
    for (tp, e) in ends_rest {
        let x = all_ends.entry(tp).or_insert(0);
        *x = (*x).max(e);
    }
    stack.wait_folded(&all_ends, WAIT).await?;
    let diffs = differences(&mut con, &reference).await?;
    ensure!(
        diffs.is_empty(),
        "{} differences, first: {:#?}",
        diffs.len(),
        &diffs[..diffs.len().min(5)]
    );
    assert!(
        reference.values().any(Option::is_none),
        "the log deletes keys"
    );
    assert!(
        ingest.terminate(Duration::from_secs(10)),
        "SIGTERM drains and exits 0"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_in_one_group_fold_exactly_and_after_one_stops() -> Result<()> {
    let stack = Stack::start(4, "").await?;
    let t = topics(&stack);
    let tt: Vec<(&str, &str)> = t.iter().map(|(a, b)| (a.as_str(), *b)).collect();
    let log = random_log(0xBEEF, &tt, 200, 6_000);
    let reference = reference_fold(&log, &tt);
    let (first, rest) = log.split_at(3_000);
    let producer = stack.producer()?;
    let mut con = stack.redis.connection().await?;

    let mut a = stack.spawn_ingest()?;
    let _b = stack.spawn_ingest()?;
    let ends = produce_all(&producer, first).await?;
    stack.wait_folded(&ends, WAIT).await?;
    let ref_first = reference_fold(first, &tt);
    let diffs = differences(&mut con, &ref_first).await?;
    ensure!(
        diffs.is_empty(),
        "two instances: {} differences: {:#?}",
        diffs.len(),
        &diffs[..diffs.len().min(5)]
    );

    // Stop one instance: the other takes over its partitions.
    assert!(
        a.terminate(Duration::from_secs(15)),
        "SIGTERM drains and exits 0"
    );
    let ends = produce_all(&producer, rest).await?;
    stack.wait_folded(&ends, WAIT).await?;
    let diffs = differences(&mut con, &reference).await?;
    ensure!(
        diffs.is_empty(),
        "after one stopped: {} differences: {:#?}",
        diffs.len(),
        &diffs[..diffs.len().min(5)]
    );
    Ok(())
}
