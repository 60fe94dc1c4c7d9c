//! Pins the Tansu 0.6.0 behaviours foldcache works around, so that a broker
//! upgrade that changes them is noticed.

use foldcache::Stack;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use std::time::Duration;

/// Offsets of the records a fresh consumer gets when it starts at `start`.
async fn read_from(stack: &Stack, topic: &str, start: i64) -> anyhow::Result<Vec<i64>> {
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", stack.broker.bootstrap())
        .set("group.id", foldcache::unique("quirk"))
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(start))?;
    consumer.assign(&tpl)?;
    let mut offsets = Vec::new();
    while let Ok(m) = tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await {
        offsets.push(m?.offset());
    }
    Ok(offsets)
}

/// Tansu's Fetch returns only batches whose base offset is at or after the
/// requested offset: starting inside a batch skips the rest of that batch.
/// This is why `ingest.resume` defaults to `replay`.
#[tokio::test(flavor = "multi_thread")]
async fn tansu_fetch_from_inside_a_batch_skips_the_rest_of_it() -> anyhow::Result<()> {
    let stack = Stack::start(1, "").await?;
    let producer = stack.producer()?;
    let topic = stack.topics.teams.clone();
    // One batch of 100 records (enqueued together, one linger window)...
    let mut deliveries = Vec::new();
    for i in 0..100 {
        let v = format!("{{\"i\":{i}}}");
        let r: FutureRecord<'_, str, str> = FutureRecord::to(&topic).key("k").payload(v.as_str());
        deliveries.push(producer.send_result(r).map_err(|(e, _)| e)?);
    }
    for d in deliveries {
        d.await?.map_err(|(e, _)| e)?;
    }
    // ...then one more batch of one record.
    stack
        .produce(&producer, &topic, Some(b"k"), Some(b"{}"))
        .await?;

    assert_eq!(read_from(&stack, &topic, 0).await?.len(), 101);
    let from_inside = read_from(&stack, &topic, 50).await?;
    // Records 50..99 never come (and 0.6.0 even repeats offset 100).
    assert!(
        !from_inside.iter().any(|o| (50..100).contains(o)),
        "Tansu changed: a fetch from inside a batch now returns {from_inside:?}; \
         reconsider ingest.resume's default"
    );
    assert!(from_inside.iter().all(|o| *o == 100), "{from_inside:?}");
    Ok(())
}
