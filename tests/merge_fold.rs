//! Merged entities, folded by ingest's own decode and fold code into a real
//! redis-server and read back as query-api serves them.
//!
//! Three sources feed `employees`: the HR system (`hr`, priority 1), a
//! legacy system (`legacy`, priority 0, its own ids) and the access system
//! (`access`, only `grants`), plus a links topic. The rules under test:
//! each source owns its part; a tombstone removes only that part; the
//! entity goes when no part is left; the higher priority wins a member two
//! parts hold; a link moves a source id's parts to the canonical id, even
//! when it arrives after them. A random log folded in two different
//! interleavings of the topics (each topic's order kept, as partitions
//! keep it) and batchings must serve exactly what a reference model says.

mod common;

use anyhow::{Context, Result, ensure};
use axum::http::{Method, StatusCode};
use foldcache::RedisServer;
use foldcache_common::config::Config;
use foldcache_common::id::EntityName;
use foldcache_common::keys::KeySpace;
use foldcache_ingest::fold::{Folder, PartitionBatch};
use foldcache_ingest::source::Sources;
use foldcache_query_api::store::Store;
use foldcache_query_api::{AppState, router};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use redis::AsyncCommands;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

const EPOCH: &str = "test-epoch";
const HR: &str = "hr";
const LEGACY: &str = "legacy";
const ACCESS: &str = "access";
const LINKS: &str = "links";

fn config() -> Config {
    let toml = r#"
[[sources]]
topic = "hr"
entity = "employees"
priority = 1

[[sources]]
topic = "legacy"
entity = "employees"

[[sources]]
topic = "access"
entity = "employees"
fields = ["grants"]

[[sources]]
topic = "hr.teams"
entity = "teams"

[entities.employees]
merge = true
links_topic = "links"
"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, toml).unwrap();
    Config::load(Some(&path)).unwrap()
}

/// One record: topic, key, value (None: tombstone).
#[derive(Debug, Clone)]
struct Rec {
    topic: &'static str,
    key: String,
    value: Option<String>,
}

fn rec(topic: &'static str, key: &str, value: Option<Value>) -> Rec {
    Rec {
        topic,
        key: key.into(),
        value: value.map(|v| match v {
            Value::String(s) => s,
            v => v.to_string(),
        }),
    }
}

struct Cache {
    keys: KeySpace,
    folder: Folder,
    sources: Sources,
    offsets: BTreeMap<&'static str, i64>,
}

impl Cache {
    async fn new(con: &mut redis::aio::MultiplexedConnection, prefix: &str) -> Result<Self> {
        let keys = KeySpace::new(prefix);
        foldcache::seed_ready_cache(con, &keys, EPOCH).await?;
        let config = config();
        Ok(Self {
            folder: Folder::from_config(keys.clone(), &config),
            sources: Sources::from_config(&config)?,
            keys,
            offsets: BTreeMap::new(),
        })
    }

    /// Folds `records` of one topic as one batch, at the topic's next
    /// offsets.
    async fn fold(
        &mut self,
        con: &mut redis::aio::MultiplexedConnection,
        records: &[Rec],
    ) -> Result<()> {
        let Some(first) = records.first() else {
            return Ok(());
        };
        let source = self.sources.get(first.topic).context("source")?.clone();
        let mut batch = PartitionBatch::new(first.topic, 0);
        let offset = self.offsets.entry(first.topic).or_insert(0);
        for r in records {
            assert_eq!(r.topic, first.topic);
            let record = common::fold::Record {
                key: &r.key,
                value: r.value.as_deref().map(str::as_bytes),
                offset: *offset,
                timestamp_ms: 1_000 + *offset,
            };
            common::fold::push(&mut batch, &self.keys, 1, &source, record)?;
            *offset += 1;
        }
        self.folder.fold(con, EPOCH, 1, &[batch]).await?;
        Ok(())
    }

    /// The served state of `id`, read from its hash as query-api reads it.
    async fn served(
        &self,
        con: &mut redis::aio::MultiplexedConnection,
        id: &str,
    ) -> Result<Option<Value>> {
        let key = format!("{}:g1:employees:{id}", self.keys.prefix());
        let all: BTreeMap<String, String> = con.hgetall(&key).await?;
        if all.is_empty() {
            return Ok(None);
        }
        let mut out = Map::new();
        for (name, json) in &all {
            if !name.starts_with("_fc:") {
                out.insert(name.clone(), serde_json::from_str(json)?);
            }
        }
        Ok(Some(Value::Object(out)))
    }

    async fn ids(&self, con: &mut redis::aio::MultiplexedConnection) -> Result<Vec<String>> {
        let e = EntityName::parse("employees")?;
        Ok(con.zrange(self.keys.ids(1, &e), 0, -1).await?)
    }
}

async fn setup(prefix: &str) -> Result<(RedisServer, redis::aio::MultiplexedConnection, Cache)> {
    let redis = RedisServer::start().await?;
    let mut con = redis.connection().await?;
    let cache = Cache::new(&mut con, prefix).await?;
    Ok((redis, con, cache))
}

#[tokio::test]
async fn each_source_owns_its_part_and_the_entity_goes_with_the_last_part() -> Result<()> {
    let (redis, mut con, mut cache) = setup("fc").await?;
    let grants = json!({"id": "ignored", "grants": [{"system": "github"}], "name": "not owned"});
    cache
        .fold(&mut con, &[rec(ACCESS, "E1", Some(grants))])
        .await?;
    // Only the access part: only its field, the rest of its state ignored.
    assert_eq!(
        cache.served(&mut con, "E1").await?,
        Some(json!({"grants": [{"system": "github"}]}))
    );
    let hr = json!({"id": "E1", "name": "Ada", "team_id": "T1"});
    cache.fold(&mut con, &[rec(HR, "E1", Some(hr))]).await?;
    let merged = json!({"id": "E1", "name": "Ada", "team_id": "T1",
                        "grants": [{"system": "github"}]});
    assert_eq!(cache.served(&mut con, "E1").await?, Some(merged.clone()));

    // query-api serves the merged body; its ETag is the SHA-1 of those
    // exact bytes and a matching If-None-Match gets a 304.
    let store = Store::connect(redis::Client::open(redis.url())?, cache.keys.clone()).await?;
    let app = router(AppState::new(store, &config()), false);
    let res = common::send(&app, Method::GET, "/v1/employees/E1", &[]).await?;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.json(), merged);
    let etag = res.header("etag").context("etag")?.to_owned();
    let sha1: String = redis::cmd("EVAL")
        .arg("return redis.sha1hex(ARGV[1])")
        .arg(0)
        .arg(res.body.as_slice())
        .query_async(&mut con)
        .await?;
    assert_eq!(etag, format!("\"{sha1}\""));
    let res = common::send(
        &app,
        Method::GET,
        "/v1/employees/E1",
        &[("if-none-match", &etag)],
    )
    .await?;
    assert_eq!(res.status, StatusCode::NOT_MODIFIED);
    // The team index sees the merged entity.
    let res = common::send(&app, Method::GET, "/v1/employees?team_id=T1", &[]).await?;
    let page: Value = serde_json::from_slice(&res.body)?;
    assert_eq!(page["items"][0]["id"], "E1", "{page}");

    // HR's tombstone removes HR's members only.
    cache.fold(&mut con, &[rec(HR, "E1", None)]).await?;
    assert_eq!(
        cache.served(&mut con, "E1").await?,
        Some(json!({"grants": [{"system": "github"}]}))
    );
    let res = common::send(&app, Method::GET, "/v1/employees?team_id=T1", &[]).await?;
    let page: Value = serde_json::from_slice(&res.body)?;
    assert_eq!(
        page["items"],
        json!([]),
        "the index entry left with HR's part"
    );
    // The last part's tombstone removes the entity, from the ids too.
    cache.fold(&mut con, &[rec(ACCESS, "E1", None)]).await?;
    assert_eq!(cache.served(&mut con, "E1").await?, None);
    assert!(cache.ids(&mut con).await?.is_empty());
    let res = common::send(&app, Method::GET, "/v1/employees/E1", &[]).await?;
    assert_eq!(res.status, StatusCode::NOT_FOUND);

    // The change log saw: u (access), u (merged), u (HR gone), d.
    let e = EntityName::parse("employees")?;
    let log: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(cache.keys.changes(1, &e))
        .arg("-")
        .arg("+")
        .query_async(&mut con)
        .await?;
    // Each entry: op, u|d, id, ..., etag, ...
    let ops: Vec<&str> = log.iter().map(|(_, f)| f[1].as_str()).collect();
    assert_eq!(ops, ["u", "u", "u", "d"]);
    Ok(())
}

#[tokio::test]
async fn priority_decides_a_shared_member_and_a_late_link_moves_parts() -> Result<()> {
    let (_redis, mut con, mut cache) = setup("fc").await?;
    let legacy = json!({"id": "L7", "name": "Old Name", "phone": "123"});
    cache
        .fold(&mut con, &[rec(LEGACY, "L7", Some(legacy))])
        .await?;
    cache
        .fold(
            &mut con,
            &[rec(HR, "E7", Some(json!({"id": "E7", "name": "New Name"})))],
        )
        .await?;
    assert_eq!(
        cache.served(&mut con, "L7").await?,
        Some(json!({"id": "L7", "name": "Old Name", "phone": "123"}))
    );
    // The link arrives after both: L7's part moves to E7, where HR's
    // higher priority wins `name` and `id`, the legacy part adds `phone`.
    cache
        .fold(&mut con, &[rec(LINKS, "L7", Some(json!("E7")))])
        .await?;
    assert_eq!(cache.served(&mut con, "L7").await?, None);
    assert_eq!(
        cache.served(&mut con, "E7").await?,
        Some(json!({"id": "E7", "name": "New Name", "phone": "123"}))
    );
    assert_eq!(cache.ids(&mut con).await?, ["E7"]);
    // A later legacy record under L7 goes straight to E7.
    let legacy = json!({"id": "L7", "name": "Old Name", "phone": "456"});
    cache
        .fold(&mut con, &[rec(LEGACY, "L7", Some(legacy))])
        .await?;
    assert_eq!(
        cache.served(&mut con, "E7").await?,
        Some(json!({"id": "E7", "name": "New Name", "phone": "456"}))
    );
    // HR lets go: the legacy values show through.
    cache.fold(&mut con, &[rec(HR, "E7", None)]).await?;
    assert_eq!(
        cache.served(&mut con, "E7").await?,
        Some(json!({"id": "L7", "name": "Old Name", "phone": "456"}))
    );
    // Unlinked: the part goes back under its own id.
    cache.fold(&mut con, &[rec(LINKS, "L7", None)]).await?;
    assert_eq!(cache.served(&mut con, "E7").await?, None);
    assert_eq!(
        cache.served(&mut con, "L7").await?,
        Some(json!({"id": "L7", "name": "Old Name", "phone": "456"}))
    );
    assert_eq!(cache.ids(&mut con).await?, ["L7"]);
    Ok(())
}

#[tokio::test]
async fn the_ttl_sweep_keeps_the_parts_of_a_live_merged_entity() -> Result<()> {
    let (redis, mut con, mut cache) = setup("fc").await?;
    let hr = json!({"id": "E1", "name": "Ada"});
    cache.fold(&mut con, &[rec(HR, "E1", Some(hr))]).await?;
    let parts = "fc:g1:{employees}:_parts:E1";
    let entity = "fc:g1:employees:E1";
    for key in [parts, entity] {
        let () = con.pexpire(key, 5_000).await?;
    }
    let mut manager = redis::aio::ConnectionManager::new(redis::Client::open(redis.url())?).await?;
    foldcache_ingest::ttl_refresh::TtlRefresher::new(&config(), "test")
        .sweep(&mut manager, 1)
        .await?;
    for key in [parts, entity] {
        let ttl: i64 = con.pttl(key).await?;
        assert!(ttl > 5_000, "{key}: the sweep reset its TTL ({ttl} ms)");
    }
    Ok(())
}

/// What the reference model holds: each (topic, source id)'s members, and
/// the links.
#[derive(Default)]
struct Model {
    parts: BTreeMap<(&'static str, String), Map<String, Value>>,
    links: BTreeMap<String, String>,
}

impl Model {
    fn apply(&mut self, r: &Rec) {
        if r.topic == LINKS {
            match &r.value {
                Some(v) => self.links.insert(r.key.clone(), v.clone()),
                None => self.links.remove(&r.key),
            };
            return;
        }
        let key = (r.topic, r.key.clone());
        match &r.value {
            None => {
                self.parts.remove(&key);
            }
            Some(v) => {
                let Value::Object(mut m) = serde_json::from_str(v).unwrap() else {
                    unreachable!()
                };
                if r.topic == ACCESS {
                    m.retain(|k, _| k == "grants");
                }
                self.parts.insert(key, m);
            }
        }
    }

    /// Canonical id -> served state.
    fn served(&self) -> BTreeMap<String, Value> {
        let rank = |t: &str| match t {
            HR => 0,
            LEGACY => 1,
            _ => 2,
        };
        type Parts<'a> = Vec<(usize, &'a String, &'a Map<String, Value>)>;
        let mut by_id: BTreeMap<String, Parts<'_>> = BTreeMap::new();
        for ((topic, sid), members) in &self.parts {
            let canon = self.links.get(sid).unwrap_or(sid).clone();
            by_id
                .entry(canon)
                .or_default()
                .push((rank(topic), sid, members));
        }
        by_id
            .into_iter()
            .map(|(id, mut parts)| {
                parts.sort_by(|a, b| (a.0, a.1.as_bytes()).cmp(&(b.0, b.1.as_bytes())));
                let mut out = Map::new();
                for (_, _, members) in parts {
                    for (k, v) in members {
                        out.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                }
                (id, Value::Object(out))
            })
            .collect()
    }
}

fn random_log(rng: &mut StdRng, n: usize) -> Vec<Rec> {
    let ids = |p: &'static str| (0..8).map(move |i| format!("{p}{i}"));
    let all: Vec<String> = ids("E").chain(ids("L")).collect();
    (0..n)
        .map(|_| {
            let id = all[rng.random_range(0..all.len())].clone();
            let roll = rng.random_range(0..100);
            match rng.random_range(0..4) {
                0 => {
                    let target = (roll >= 30).then(|| format!("E{}", rng.random_range(0..8)));
                    rec(LINKS, &id, target.map(Value::String))
                }
                t => {
                    let topic = [HR, LEGACY, ACCESS][t - 1];
                    let value = (roll >= 20).then(|| {
                        json!({"id": id, "name": format!("{topic}-{}", rng.random_range(0..5)),
                               "team_id": format!("T{}", rng.random_range(0..3)),
                               "grants": [rng.random_range(0..3)], "src": topic})
                    });
                    rec(topic, &id, value)
                }
            }
        })
        .collect()
}

/// The log split by topic (each topic's order kept), then interleaved at
/// random in batches of random sizes.
fn random_batches(rng: &mut StdRng, log: &[Rec]) -> Vec<Vec<Rec>> {
    let mut queues: Vec<Vec<Rec>> = [HR, LEGACY, ACCESS, LINKS]
        .iter()
        .map(|t| log.iter().filter(|r| r.topic == *t).cloned().collect())
        .collect();
    for q in &mut queues {
        q.reverse();
    }
    let mut out = Vec::new();
    loop {
        let live: Vec<usize> = (0..queues.len())
            .filter(|i| !queues[*i].is_empty())
            .collect();
        let Some(&q) = live.choose(rng) else {
            return out;
        };
        let n = rng.random_range(1..12).min(queues[q].len());
        let len = queues[q].len();
        let mut batch: Vec<Rec> = queues[q].split_off(len - n);
        batch.reverse();
        out.push(batch);
    }
}

#[tokio::test]
async fn any_interleaving_of_the_topics_serves_the_reference_merge() -> Result<()> {
    let redis = RedisServer::start().await?;
    let mut con = redis.connection().await?;
    for seed in 0..6u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let log = random_log(&mut rng, 400);
        let mut model = Model::default();
        log.iter().for_each(|r| model.apply(r));
        let want = model.served();
        ensure!(!want.is_empty(), "seed {seed}: the log leaves people");
        for run in 0..2 {
            let mut cache = Cache::new(&mut con, &format!("s{seed}r{run}")).await?;
            for batch in random_batches(&mut rng, &log) {
                cache.fold(&mut con, &batch).await?;
            }
            let ids = cache.ids(&mut con).await?;
            ensure!(
                ids == want.keys().cloned().collect::<Vec<_>>(),
                "seed {seed} run {run}: ids {ids:?} != {:?}",
                want.keys()
            );
            for (id, state) in &want {
                let got = cache.served(&mut con, id).await?;
                ensure!(
                    got.as_ref() == Some(state),
                    "seed {seed} run {run}: {id}: served {got:?} != reference {state}"
                );
            }
        }
    }
    Ok(())
}
