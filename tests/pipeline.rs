//! End-to-end: the real `ingest` and `query-api` binaries against a private
//! redis-server and a private Tansu broker (Kafka protocol).

use anyhow::Result;
use foldcache::{Stack, eventually};
use redis::AsyncCommands;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

async fn get(url: &str, inm: Option<&str>) -> Result<reqwest::Response> {
    let mut req = reqwest::Client::new().get(url);
    if let Some(tag) = inm {
        req = req.header("If-None-Match", tag);
    }
    Ok(req.send().await?)
}

/// Waits until `url` answers `status` and returns the response.
async fn wait_status(url: &str, status: StatusCode) -> Result<reqwest::Response> {
    eventually(&format!("{url} to answer {status}"), WAIT, || async {
        let r = get(url, None).await?;
        Ok((r.status() == status).then_some(r))
    })
    .await
}

fn etag(r: &reqwest::Response) -> String {
    r.headers()["etag"].to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn insert_update_tombstone_ttl_etag_and_304() -> Result<()> {
    let stack = Stack::start(2, "").await?;
    let _ingest = stack.spawn_ingest()?;
    let _api = stack.spawn_query_api()?;
    let producer = stack.producer()?;
    let topic = &stack.topics.employees;
    stack.wait_ready(WAIT).await?;
    let url = format!("{}/v1/employees/E1", stack.base_url());

    // Insert: appears over HTTP with its JSON types intact.
    let v1 = json!({"id": "E1", "name": "김민준", "salary": 5_000_000, "active": true,
                    "manager_id": null, "skills": ["rust"], "address": {"city": "Seoul"}, "fte": 0.5});
    stack
        .produce(
            &producer,
            topic,
            Some(b"E1"),
            Some(v1.to_string().as_bytes()),
        )
        .await?;
    let r = wait_status(&url, StatusCode::OK).await?;
    let tag1 = etag(&r);
    assert!(
        tag1.starts_with('"') && !tag1.starts_with("W/"),
        "strong ETag: {tag1}"
    );
    assert!(r.headers().contains_key("last-modified"));
    assert!(
        r.headers()["cache-control"]
            .to_str()?
            .contains("max-age=60")
    );
    let body: Value = r.json().await?;
    assert_eq!(body, v1);

    // The hash carries a TTL no longer than the configured one.
    let mut con = stack.redis.connection().await?;
    let ttl: i64 = con.pttl("fc:g1:employees:E1").await?;
    assert!(ttl > 0 && ttl <= 7 * 24 * 3600 * 1000, "pttl = {ttl}");

    // A matching If-None-Match gets 304 with the validators and no body.
    let r = get(&url, Some(&tag1)).await?;
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(etag(&r), tag1);
    assert!(r.headers().contains_key("cache-control"));
    assert!(r.bytes().await?.is_empty());

    // Re-producing the same content (a duplicate at a later offset) keeps the
    // ETag: it changes only if the content changes.
    let (_, dup_offset) = stack
        .produce(
            &producer,
            topic,
            Some(b"E1"),
            Some(v1.to_string().as_bytes()),
        )
        .await?;
    eventually("the duplicate to be folded", WAIT, || {
        let mut con = con.clone();
        async move {
            let src: Option<String> = con.hget("fc:g1:employees:E1", "_fc:src").await?;
            Ok(src
                .filter(|s| s.ends_with(&format!("/{dup_offset}")))
                .map(|_| ()))
        }
    })
    .await?;
    assert_eq!(etag(&get(&url, None).await?), tag1);

    // Update: replaces the whole state (a dropped member disappears) and the
    // ETag changes; the old validator no longer gets a 304.
    let v2 = json!({"id": "E1", "name": "김민준", "salary": 5_500_000, "active": true});
    stack
        .produce(
            &producer,
            topic,
            Some(b"E1"),
            Some(v2.to_string().as_bytes()),
        )
        .await?;
    let r = eventually("the update to be served", WAIT, || async {
        let r = get(&url, None).await?;
        Ok((etag(&r) != tag1).then_some(r))
    })
    .await?;
    let tag2 = etag(&r);
    assert_eq!(r.json::<Value>().await?, v2);
    assert_eq!(get(&url, Some(&tag1)).await?.status(), StatusCode::OK);
    assert_eq!(
        get(&url, Some(&tag2)).await?.status(),
        StatusCode::NOT_MODIFIED
    );

    // Tombstone: deleted, 404 afterwards, and the key is gone from Redis.
    stack.produce(&producer, topic, Some(b"E1"), None).await?;
    let r = wait_status(&url, StatusCode::NOT_FOUND).await?;
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let exists: bool = con.exists("fc:g1:employees:E1").await?;
    assert!(!exists);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_goes_to_the_dead_letter_topic_and_never_stalls_the_partition() -> Result<()> {
    use rdkafka::message::{Headers, Message};
    let stack = Stack::start(1, "").await?;
    let _ingest = stack.spawn_ingest()?;
    let _api = stack.spawn_query_api()?;
    let producer = stack.producer()?;
    let topic = &stack.topics.teams;
    stack.wait_ready(WAIT).await?;

    // Same partition (one partition): poison first, then a good record.
    stack
        .produce(&producer, topic, Some(b"T1"), Some(b"{not json"))
        .await?;
    stack
        .produce(&producer, topic, Some(b"bad key!"), Some(b"{}"))
        .await?;
    stack
        .produce(
            &producer,
            topic,
            Some(b"T2"),
            Some(br#"{"name":"Platform"}"#),
        )
        .await?;
    let r = wait_status(&format!("{}/v1/teams/T2", stack.base_url()), StatusCode::OK).await?;
    assert_eq!(r.json::<Value>().await?, json!({"name": "Platform"}));
    // The poison record did not become an entity.
    assert_eq!(
        get(&format!("{}/v1/teams/T1", stack.base_url()), None)
            .await?
            .status(),
        StatusCode::NOT_FOUND
    );

    let consumer = stack.dead_letter_consumer()?;
    let mut reasons = Vec::new();
    while reasons.len() < 2 {
        let m = tokio::time::timeout(WAIT, consumer.recv()).await??;
        let headers = m.headers().expect("dead letters carry headers");
        let reason = headers
            .iter()
            .find(|h| h.key == "foldcache.reason")
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned());
        let origin = headers
            .iter()
            .find(|h| h.key == "foldcache.topic")
            .and_then(|h| h.value);
        assert_eq!(origin, Some(topic.as_bytes()));
        reasons.push((m.key().map(<[u8]>::to_vec), reason));
    }
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            (Some(b"T1".to_vec()), Some("invalid_json".to_owned())),
            (Some(b"bad key!".to_vec()), Some("invalid_id".to_owned())),
        ]
    );
    Ok(())
}

/// Keys that could address another Redis key (or are not ids at all) go to
/// the dead-letter topic; nothing but the valid record's key is written.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_kafka_keys_are_dead_lettered_and_write_no_key() -> Result<()> {
    use rdkafka::message::{Headers, Message};
    let stack = Stack::start(1, "").await?;
    let _ingest = stack.spawn_ingest()?;
    let _api = stack.spawn_query_api()?;
    stack.wait_ready(WAIT).await?;
    let mut con = stack.redis.connection().await?;
    let before: Vec<String> = con.keys("*").await?;
    let producer = stack.producer()?;
    let topic = &stack.topics.employees;
    let long = vec![b'a'; 10 * 1024];
    let hostile: Vec<Vec<u8>> = vec![
        b"*".to_vec(),
        b"{x}".to_vec(),
        b"..".to_vec(),
        b"a\0b".to_vec(),
        b"a b".to_vec(),
        b"a\nb".to_vec(),
        long,
        vec![0xff, 0xfe, b'E', b'1'],
        b"fc:g1:employees:E1".to_vec(),
    ];
    for key in &hostile {
        stack
            .produce(&producer, topic, Some(key), Some(br#"{"name":"x"}"#))
            .await?;
    }
    stack
        .produce(&producer, topic, Some(b"E1"), Some(br#"{"name":"ok"}"#))
        .await?;
    wait_status(
        &format!("{}/v1/employees/E1", stack.base_url()),
        StatusCode::OK,
    )
    .await?;

    let consumer = stack.dead_letter_consumer()?;
    let mut dead = Vec::new();
    while dead.len() < hostile.len() {
        let m = tokio::time::timeout(WAIT, consumer.recv()).await??;
        let reason = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "foldcache.reason"))
            .and_then(|h| h.value)
            .map(<[u8]>::to_vec);
        assert_eq!(reason.as_deref(), Some(&b"invalid_id"[..]));
        dead.push(m.key().map(<[u8]>::to_vec).unwrap_or_default());
    }
    dead.sort();
    let mut expected = hostile.clone();
    expected.sort();
    assert_eq!(
        dead, expected,
        "every hostile key is dead-lettered as it was"
    );

    // Only E1's hash (and bookkeeping: offsets, the employees' id list and
    // change log) is new.
    let after: Vec<String> = con.keys("*").await?;
    let new: Vec<&String> = after.iter().filter(|k| !before.contains(k)).collect();
    assert!(
        new.iter().all(|k| k.ends_with(":employees:E1")
            || k.ends_with(":offsets")
            || k.ends_with(":{employees}:_ids")
            || k.ends_with(":{employees}:_changes")),
        "unexpected keys: {new:?}"
    );
    assert!(new.iter().any(|k| k.ends_with(":employees:E1")));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn not_ready_is_503_with_retry_after_never_404() -> Result<()> {
    let stack = Stack::start(1, "").await?;
    // query-api without ingest: the cache was never built.
    let _api = stack.spawn_query_api()?;
    let url = format!("{}/v1/employees/E1", stack.base_url());
    let r = eventually("query-api to listen", WAIT, || async {
        Ok(get(&url, None).await.ok())
    })
    .await?;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(r.headers()["content-type"], "application/problem+json");

    // Once ingest has caught up, the same URL is a true 404.
    let _ingest = stack.spawn_ingest()?;
    stack.wait_ready(WAIT).await?;
    wait_status(&url, StatusCode::NOT_FOUND).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_flush_replays_from_offset_zero() -> Result<()> {
    let stack = Stack::start(2, "").await?;
    let _ingest = stack.spawn_ingest()?;
    let _api = stack.spawn_query_api()?;
    let producer = stack.producer()?;
    for i in 0..50 {
        let v = json!({"id": format!("E{i}"), "n": i});
        stack
            .produce(
                &producer,
                &stack.topics.employees,
                Some(format!("E{i}").as_bytes()),
                Some(v.to_string().as_bytes()),
            )
            .await?;
    }
    let url = format!("{}/v1/employees/E49", stack.base_url());
    wait_status(&url, StatusCode::OK).await?;

    let mut con = stack.redis.connection().await?;
    let () = redis::cmd("FLUSHALL").query_async(&mut con).await?;
    // Right after the flush: 503 (or already 200 again), never 404.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let s = get(&url, None).await?.status();
        assert_ne!(s, StatusCode::NOT_FOUND, "a false 404 after a Redis flush");
        if s == StatusCode::OK {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never rebuilt");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..50 {
        let r = get(&format!("{}/v1/employees/E{i}", stack.base_url()), None).await?;
        assert_eq!(r.json::<Value>().await?["n"], json!(i));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn live_entities_outlive_their_ttl_and_a_stopped_ingest_turns_reads_into_503() -> Result<()> {
    let stack = Stack::start(1, "[entities.teams]\nttl_secs = 4\nfreshness_secs = 2\n").await?;
    let mut ingest = stack.spawn_ingest()?;
    let _api = stack.spawn_query_api()?;
    let producer = stack.producer()?;
    stack.wait_ready(WAIT).await?;
    stack
        .produce(
            &producer,
            &stack.topics.teams,
            Some(b"T1"),
            Some(br#"{"name":"Data"}"#),
        )
        .await?;
    let url = format!("{}/v1/teams/T1", stack.base_url());
    wait_status(&url, StatusCode::OK).await?;

    // Twice the TTL later, never updated, still there: ingest refreshes TTLs
    // while the pipeline runs.
    let end = std::time::Instant::now() + Duration::from_secs(8);
    while std::time::Instant::now() < end {
        assert_eq!(get(&url, None).await?.status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut con = stack.redis.connection().await?;
    let ttl: i64 = con.pttl("fc:g1:teams:T1").await?;
    assert!(ttl > 0 && ttl <= 4000, "pttl = {ttl}");

    // Ingest dies: past the freshness bound the answer is 503, never a stale
    // 200 for long and never a 404.
    ingest.kill();
    let killed = std::time::Instant::now();
    loop {
        let r = get(&url, None).await?;
        match r.status() {
            StatusCode::OK => assert!(
                killed.elapsed() < Duration::from_secs(6),
                "stale answers past the bound"
            ),
            StatusCode::SERVICE_UNAVAILABLE => break,
            other => panic!("unexpected {other} after ingest stopped"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(r_retry_after(&get(&url, None).await?));

    // Ingest back: fresh again.
    let _ingest = stack.spawn_ingest()?;
    wait_status(&url, StatusCode::OK).await?;
    Ok(())
}

fn r_retry_after(r: &reqwest::Response) -> bool {
    r.status() == StatusCode::SERVICE_UNAVAILABLE && r.headers().contains_key("retry-after")
}

#[tokio::test(flavor = "multi_thread")]
async fn two_companies_fold_into_one_entity_with_namespaced_ids() -> Result<()> {
    let acme = foldcache::unique("acme");
    let globex = foldcache::unique("globex");
    let extra = format!(
        "[[sources]]\ntopic = \"{acme}\"\nentity = \"employees\"\nid_prefix = \"acme.\"\n\n\
         [[sources]]\ntopic = \"{globex}\"\nentity = \"employees\"\nid_prefix = \"globex.\"\nformat = \"debezium\"\n"
    );
    let stack = Stack::start(1, &extra).await?;
    stack.broker.create_topics(&[&acme, &globex], 1).await?;
    let _ingest = stack.spawn_ingest()?;
    let _api = stack.spawn_query_api()?;
    let producer = stack.producer()?;
    stack.wait_ready(WAIT).await?;
    // The same raw id E1 in both companies, one plain JSON, one Debezium.
    stack
        .produce(&producer, &acme, Some(b"E1"), Some(br#"{"name":"Kim"}"#))
        .await?;
    stack
        .produce(
            &producer,
            &globex,
            Some(br#"{"id":"E1"}"#),
            Some(br#"{"op":"c","before":null,"after":{"name":"Smith"}}"#),
        )
        .await?;
    let base = stack.base_url();
    let a = wait_status(&format!("{base}/v1/employees/acme.E1"), StatusCode::OK).await?;
    assert_eq!(a.json::<Value>().await?, json!({"name": "Kim"}));
    let g = wait_status(&format!("{base}/v1/employees/globex.E1"), StatusCode::OK).await?;
    assert_eq!(g.json::<Value>().await?, json!({"name": "Smith"}));
    // A Debezium delete removes only the globex employee.
    stack
        .produce(
            &producer,
            &globex,
            Some(br#"{"id":"E1"}"#),
            Some(br#"{"op":"d","before":{"name":"Smith"},"after":null}"#),
        )
        .await?;
    wait_status(
        &format!("{base}/v1/employees/globex.E1"),
        StatusCode::NOT_FOUND,
    )
    .await?;
    assert_eq!(
        get(&format!("{base}/v1/employees/acme.E1"), None)
            .await?
            .status(),
        StatusCode::OK
    );
    Ok(())
}
