//! One bad record costs one dead letter, never the directory: hostile
//! records on one partition, good records on the other partitions and after
//! them on the same partition, against a real broker, Redis and `ingest`.

use anyhow::Result;
use foldcache::{Process, Stack, eventually, foldcache_binary};
use rdkafka::Message as _;
use rdkafka::message::Headers as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use redis::AsyncCommands;
use std::collections::BTreeMap;
use std::time::Duration;

const T: Duration = Duration::from_secs(90);

async fn send(
    p: &FutureProducer,
    topic: &str,
    partition: i32,
    key: &str,
    value: &[u8],
) -> Result<i64> {
    let r = FutureRecord::to(topic)
        .partition(partition)
        .key(key)
        .payload(value);
    let delivery = p
        .send(r, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| e)?;
    Ok(delivery.offset)
}

fn big_producer(stack: &Stack) -> Result<FutureProducer> {
    Ok(rdkafka::ClientConfig::new()
        .set("bootstrap.servers", stack.broker.bootstrap())
        .set("message.max.bytes", "10000000")
        .set("linger.ms", "0")
        .create()?)
}

/// Hostile values: each must be dead-lettered (or, for the wide object,
/// folded) without holding anything else back.
fn hostile() -> Vec<(&'static str, Vec<u8>, Option<&'static str>)> {
    let wide: BTreeMap<String, u32> = (0..5000).map(|i| (format!("f{i:05}"), i)).collect();
    let mut deep = String::new();
    for _ in 0..5000 {
        deep.push_str("{\"a\":");
    }
    deep.push('1');
    for _ in 0..5000 {
        deep.push('}');
    }
    vec![
        ("H1", vec![b'x'; 1_500_000], Some("too_large")),
        (
            "H2",
            format!("{{\"{}\":1}}", "n".repeat(2_000_000)).into_bytes(),
            Some("too_large"),
        ),
        ("H3", serde_json::to_vec(&wide).expect("json"), None),
        ("H4", deep.into_bytes(), Some("invalid_json")),
        ("H5", b"[1,2,3]".to_vec(), Some("not_an_object")),
        ("H6", vec![0xff, 0xfe, 0x00], Some("invalid_utf8")),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_records_on_one_partition_stall_nothing() -> Result<()> {
    let stack = Stack::start(3, "").await?;
    let p = big_producer(&stack)?;
    let emp = stack.topics.employees.clone();
    for (key, value, _) in hostile() {
        send(&p, &emp, 0, key, &value).await?;
    }
    // Good records after the hostile ones on the same partition and on the
    // others.
    for part in 0..3 {
        for i in 0..20 {
            let key = format!("G{part}x{i}");
            send(
                &p,
                &emp,
                part,
                &key,
                format!(r#"{{"name":"good {i}"}}"#).as_bytes(),
            )
            .await?;
        }
    }
    let _ingest = stack.spawn_ingest()?;
    let mut con = stack.redis.connection().await?;
    eventually("every good record folded and the cache ready", T, || {
        let mut con = con.clone();
        async move {
            let ready: Option<String> = con.hget("fc:state", "ready").await?;
            let mut n = 0;
            for part in 0..3 {
                for i in 0..20 {
                    let k = format!("fc:g1:employees:G{part}x{i}");
                    if con.exists(&k).await? {
                        n += 1;
                    }
                }
            }
            Ok((ready.as_deref() == Some("1") && n == 60).then_some(()))
        }
    })
    .await?;
    let wide: usize = con.hlen("fc:g1:employees:H3").await?;
    assert_eq!(
        wide,
        5000 + 3,
        "a 5,000-member object folds whole (plus 3 meta fields)"
    );

    // Each poison record is on the dead-letter topic with its reason; the
    // oversized ones as envelopes.
    let dlq = stack.dead_letter_consumer()?;
    let mut seen: BTreeMap<String, (String, bool, usize)> = BTreeMap::new();
    let want: Vec<_> = hostile()
        .into_iter()
        .filter(|(_, _, r)| r.is_some())
        .collect();
    while seen.len() < want.len() {
        let m = tokio::time::timeout(T, dlq.recv()).await??;
        let header = |name: &str| {
            m.headers().and_then(|h| {
                h.iter()
                    .find(|x| x.key == name)
                    .and_then(|x| x.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
        };
        let offset = header("foldcache.offset").unwrap_or_default();
        let reason = header("foldcache.reason").unwrap_or_default();
        let envelope = header("foldcache.envelope").as_deref() == Some("true");
        seen.insert(offset, (reason, envelope, m.payload_len()));
    }
    let reasons: Vec<&str> = seen.values().map(|(r, _, _)| r.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "too_large",
            "too_large",
            "invalid_json",
            "not_an_object",
            "invalid_utf8"
        ]
    );
    let (_, envelope, size) = &seen["0"];
    assert!(
        *envelope && *size < 16 * 1024,
        "a 1.5 MB record is dead-lettered as a small envelope"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_dead_letter_topic_is_created_or_refused_with_one_line() -> Result<()> {
    let stack = Stack::start(1, "").await?;
    let missing = format!("{}.absent-dlq", stack.topics.employees);

    // Not allowed to create it: refuse to start, naming the topic.
    let config = stack.config_path();
    let mut refused = Process::spawn(
        "ingest-no-dlq",
        &foldcache_binary("ingest")?,
        &["--config", &config.to_string_lossy(), "run"],
        &[
            ("FOLDCACHE__KAFKA__DEAD_LETTER_TOPIC", &missing),
            ("FOLDCACHE__KAFKA__DEAD_LETTER_CREATE", "false"),
        ],
    )?;
    assert!(!refused.wait(T), "ingest must exit with an error");
    let log = std::fs::read_to_string(refused.log_path())?;
    let line = log
        .lines()
        .find(|l| l.contains("error:"))
        .unwrap_or_default()
        .to_owned();
    assert!(line.contains(&missing) && line.contains("create"), "{log}");

    // Allowed: it is created at start and poison lands there.
    let p = big_producer(&stack)?;
    send(&p, &stack.topics.employees, 0, "BAD", b"not json").await?;
    send(&p, &stack.topics.employees, 0, "OK1", br#"{"name":"ok"}"#).await?;
    let _ingest = stack.spawn_ingest_with(&[("FOLDCACHE__KAFKA__DEAD_LETTER_TOPIC", &missing)])?;
    let con = stack.redis.connection().await?;
    eventually("the good record after the poison one", T, || {
        let mut con = con.clone();
        async move {
            Ok(con
                .exists::<_, bool>("fc:g1:employees:OK1")
                .await?
                .then_some(()))
        }
    })
    .await?;
    Ok(())
}
