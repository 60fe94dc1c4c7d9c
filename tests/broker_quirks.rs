//! Pins the Tansu 0.6.0 behaviours foldcache works around or relies on, so
//! that a broker upgrade that changes them is noticed: the in-memory
//! engine's Fetch skipping the rest of a batch, and the SQLite engine's
//! exact Fetch and durable log (the engine of the demo and the tests).

use foldcache::{BrokerStorage, Stack};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use std::time::Duration;

/// `(offset, value)` of the records a fresh consumer gets when it starts at
/// `start` on partition 0.
async fn read_from(stack: &Stack, topic: &str, start: i64) -> anyhow::Result<Vec<(i64, String)>> {
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", stack.broker.bootstrap())
        .set("group.id", foldcache::unique("quirk"))
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(start))?;
    consumer.assign(&tpl)?;
    let mut records = Vec::new();
    while let Ok(m) = tokio::time::timeout(Duration::from_secs(3), consumer.recv()).await {
        let m = m?;
        let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
        records.push((m.offset(), value));
    }
    Ok(records)
}

fn offsets(records: &[(i64, String)]) -> Vec<i64> {
    records.iter().map(|(o, _)| *o).collect()
}

/// One batch of 100 records (enqueued together, one linger window), then
/// one more batch of one record; `key(i)` is record i's key.
async fn two_batches(stack: &Stack, topic: &str, key: fn(i32) -> String) -> anyhow::Result<()> {
    let producer = stack.producer()?;
    let mut deliveries = Vec::new();
    for i in 0..100 {
        let v = format!("{{\"i\":{i}}}");
        let k = key(i);
        let r: FutureRecord<'_, str, str> =
            FutureRecord::to(topic).key(k.as_str()).payload(v.as_str());
        deliveries.push(producer.send_result(r).map_err(|(e, _)| e)?);
    }
    for d in deliveries {
        d.await?.map_err(|(e, _)| e)?;
    }
    stack
        .produce(
            &producer,
            topic,
            Some(key(100).as_bytes()),
            Some(b"{\"i\":100}"),
        )
        .await?;
    Ok(())
}

fn one_key(_: i32) -> String {
    "k".into()
}

fn distinct_keys(i: i32) -> String {
    format!("k{i}")
}

/// Tansu's in-memory engine returns only batches whose base offset is at or
/// after the requested offset: starting inside a batch skips the rest of
/// that batch. This is why `ingest.resume` defaults to `replay`.
#[tokio::test(flavor = "multi_thread")]
async fn tansu_memory_fetch_from_inside_a_batch_skips_the_rest_of_it() -> anyhow::Result<()> {
    let stack = Stack::start_with(1, "", BrokerStorage::Memory).await?;
    let topic = stack.topics.teams.clone();
    two_batches(&stack, &topic, one_key).await?;

    assert_eq!(read_from(&stack, &topic, 0).await?.len(), 101);
    let from_inside = offsets(&read_from(&stack, &topic, 50).await?);
    // Records 50..99 never come (and 0.6.0 even repeats offset 100).
    assert!(
        !from_inside.iter().any(|o| (50..100).contains(o)),
        "Tansu changed: a fetch from inside a batch now returns {from_inside:?}; \
         reconsider ingest.resume's default"
    );
    assert!(from_inside.iter().all(|o| *o == 100), "{from_inside:?}");
    Ok(())
}

/// The SQLite engine answers a fetch from inside a batch exactly, as Kafka
/// does: `resume = "seek"` is correct on it.
#[tokio::test(flavor = "multi_thread")]
async fn tansu_sqlite_fetch_from_inside_a_batch_is_exact() -> anyhow::Result<()> {
    let stack = Stack::start_with(1, "", BrokerStorage::Sqlite).await?;
    let topic = stack.topics.teams.clone();
    two_batches(&stack, &topic, one_key).await?;
    let from_inside = offsets(&read_from(&stack, &topic, 50).await?);
    assert_eq!(from_inside, (50..=100).collect::<Vec<_>>());
    Ok(())
}

/// The demo's and the tests' broker keeps its log across a graceful restart
/// and a crash: same offsets, same values (distinct keys, so that the
/// compaction Tansu runs at start removes nothing).
#[tokio::test(flavor = "multi_thread")]
async fn tansu_sqlite_keeps_the_log_across_restart_and_crash() -> anyhow::Result<()> {
    let stack = Stack::start_with(1, "", BrokerStorage::Sqlite).await?;
    let topic = stack.topics.teams.clone();
    two_batches(&stack, &topic, distinct_keys).await?;
    let before = read_from(&stack, &topic, 0).await?;
    assert_eq!(offsets(&before), (0..=100).collect::<Vec<_>>());

    stack.broker.restart().await?;
    assert_eq!(read_from(&stack, &topic, 0).await?, before, "after SIGTERM");

    stack.broker.kill();
    stack.broker.start_again().await?;
    assert_eq!(read_from(&stack, &topic, 0).await?, before, "after SIGKILL");

    // And it goes on appending after the records it kept.
    let producer = stack.producer()?;
    let (_, offset) = stack
        .produce(&producer, &topic, Some(b"k"), Some(b"{}"))
        .await?;
    assert_eq!(offset, 101);
    Ok(())
}

/// The in-memory engine loses the log on restart: why the demo and the
/// tests do not use it.
#[tokio::test(flavor = "multi_thread")]
async fn tansu_memory_loses_the_log_on_restart() -> anyhow::Result<()> {
    let stack = Stack::start_with(1, "", BrokerStorage::Memory).await?;
    let topic = stack.topics.teams.clone();
    two_batches(&stack, &topic, distinct_keys).await?;
    stack.broker.restart().await?;
    let after = read_from(&stack, &topic, 0).await.unwrap_or_default();
    assert!(
        after.is_empty(),
        "Tansu's memory engine kept {} records",
        after.len()
    );
    Ok(())
}

/// Tansu compacts compacted topics when it starts: of 101 records with one
/// key only the last survives, as in Kafka. But a fetch from before the gap
/// answers the surviving record once for every offset in the gap: a reader
/// from offset 0 gets offset 100 a hundred and one times. ingest folds
/// idempotently, so the repeats cost time, not correctness (replays over a
/// compacted log read one fetch per removed record on Tansu).
#[tokio::test(flavor = "multi_thread")]
async fn tansu_sqlite_repeats_the_record_after_a_compaction_gap() -> anyhow::Result<()> {
    let stack = Stack::start_with(1, "", BrokerStorage::Sqlite).await?;
    let topic = stack.topics.teams.clone();
    two_batches(&stack, &topic, one_key).await?;
    stack.broker.restart().await?;
    let after = read_from(&stack, &topic, 0).await?;
    assert!(
        after.iter().all(|(o, v)| *o == 100 && v == "{\"i\":100}"),
        "{after:?}"
    );
    assert_eq!(
        after.len(),
        101,
        "Tansu changed how it fetches across a compaction gap"
    );
    Ok(())
}
