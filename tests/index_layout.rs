//! How an entity hash keeps its index entries, through ingest's own fold
//! into a real redis-server and query-api's real router:
//!
//! - one meta field per index (`_fc:ix:{index}`), so a typical employee's
//!   hash stays in Redis's compact listpack encoding;
//! - an update moves the id between index entries, a tombstone removes it;
//! - a hash folded by an older ingest (every entry in `_fc:ix`) keeps its
//!   indexes exact when it is next folded, and is filtered by the same
//!   rule until then.

mod common;

use anyhow::Result;
use axum::Router;
use axum::http::{Method, StatusCode};
use foldcache::RedisServer;
use foldcache_common::config::Config;
use foldcache_common::id::EntityName;
use foldcache_common::keys::KeySpace;
use foldcache_ingest::fold::Folder;
use foldcache_ingest::generate::{GenOptions, Generator, Kind};
use foldcache_ingest::source::Sources;
use foldcache_query_api::store::Store;
use foldcache_query_api::{AppState, router};
use redis::AsyncCommands;
use serde_json::{Value, json};
use std::collections::BTreeMap;

const EPOCH: &str = "test-epoch";
const TOPIC: &str = "hr.employees";

struct Cache {
    _redis: RedisServer,
    con: redis::aio::MultiplexedConnection,
    keys: KeySpace,
    folder: Folder,
    sources: Sources,
    offset: i64,
    app: Router,
}

impl Cache {
    async fn new() -> Result<Self> {
        let (redis, con, keys) = common::fold::ready_cache(EPOCH).await?;
        let config = Config::default();
        let store = Store::connect(redis::Client::open(redis.url())?, keys.clone()).await?;
        let app = router(AppState::new(store, &config), config.http.compression);
        Ok(Self {
            folder: Folder::from_config(keys.clone(), &config),
            sources: Sources::from_config(&config)?,
            _redis: redis,
            con,
            keys,
            offset: 0,
            app,
        })
    }

    /// Folds `records` (id, state or `None` for a tombstone) of the
    /// employees topic as one batch.
    async fn fold(&mut self, records: &[(&str, Option<Value>)]) -> Result<()> {
        let source = self.sources.get(TOPIC).expect("employees source").clone();
        let batch = common::fold::batch(&self.keys, &source, &mut self.offset, records)?;
        self.folder.fold(&mut self.con, EPOCH, 1, &[batch]).await?;
        Ok(())
    }

    fn hash_key(&self, id: &str) -> String {
        format!("fc:g1:employees:{id}")
    }

    /// Members of index `index`'s entry for `value`, as Redis holds them:
    /// the value's sorted set, and for the unique `email` index its first
    /// holder in the index's hash before them.
    async fn index(&mut self, index: &str, value: &str) -> Result<Vec<String>> {
        let e = EntityName::parse("employees")?;
        let mut ids: Vec<String> = Vec::new();
        if index == "email" {
            let first: Option<String> = self
                .con
                .hget(self.keys.unique_index(1, &e, index), value)
                .await?;
            ids.extend(first);
        }
        let rest: Vec<String> = self
            .con
            .zrange(self.keys.index(1, &e, index, value), 0, -1)
            .await?;
        ids.extend(rest);
        Ok(ids)
    }

    /// Whether index `index` has a sorted set for `value`.
    async fn has_set(&mut self, index: &str, value: &str) -> Result<bool> {
        let e = EntityName::parse("employees")?;
        Ok(self
            .con
            .exists(self.keys.index(1, &e, index, value))
            .await?)
    }

    /// The number of keys in Redis.
    async fn keys_count(&mut self) -> Result<usize> {
        Ok(redis::cmd("DBSIZE").query_async(&mut self.con).await?)
    }

    /// Rewrites `person(id, "a@x.example", team)`'s hash as an older ingest
    /// stored it: every index entry in one `_fc:ix` field.
    async fn as_older_layout(&mut self, id: &str, team: &str) -> Result<()> {
        let key = self.hash_key(id);
        let () = redis::pipe()
            .hdel(
                &key,
                &["_fc:ix:email", "_fc:ix:team_id", "_fc:ix:manager_id"],
            )
            .hset(
                &key,
                "_fc:ix",
                format!("email:a@x.example\nmanager_id:E9\nteam_id:{team}"),
            )
            .query_async(&mut self.con)
            .await?;
        Ok(())
    }

    /// Ids query-api serves for `?{index}={value}`.
    async fn served(&self, index: &str, value: &str) -> Result<Vec<String>> {
        self.served_page(&format!("/v1/employees?{index}={value}"))
            .await
            .map(|(ids, _)| ids)
    }

    /// The ids of one collection page and its `next` link.
    async fn served_page(&self, path: &str) -> Result<(Vec<String>, Option<String>)> {
        let res = common::send(&self.app, Method::GET, path, &[]).await?;
        assert_eq!(res.status, StatusCode::OK);
        assert!(res.header("etag").is_some());
        let body = res.json();
        let ids = body["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|i| i["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Ok((ids, body["next"].as_str().map(str::to_owned)))
    }
}

fn person(id: &str, email: &str, team: &str) -> Value {
    json!({"id": id, "name": "A Person", "email": email, "team_id": team, "manager_id": "E9"})
}

#[tokio::test]
async fn a_typical_employee_hash_is_listpack_encoded() -> Result<()> {
    let mut cache = Cache::new().await?;
    let opts = GenOptions {
        seed: 7,
        employees: 50,
        teams: 10,
        updates: 0,
        deletes: 0,
    };
    let employees: Vec<(String, Value)> = Generator::new(opts)
        .events()
        .filter(|e| e.kind == Kind::Employee)
        .filter_map(|e| Some((e.key, e.value?)))
        .collect();
    let records: Vec<(&str, Option<Value>)> = employees
        .iter()
        .map(|(k, v)| (k.as_str(), Some(v.clone())))
        .collect();
    cache.fold(&records).await?;
    let mut encodings: BTreeMap<String, usize> = BTreeMap::new();
    for (id, _) in &employees {
        let enc: String = redis::cmd("OBJECT")
            .arg("ENCODING")
            .arg(cache.hash_key(id))
            .query_async(&mut cache.con)
            .await?;
        *encodings.entry(enc).or_default() += 1;
    }
    assert_eq!(
        encodings,
        BTreeMap::from([("listpack".to_owned(), employees.len())])
    );
    let fields: BTreeMap<String, String> =
        cache.con.hgetall(cache.hash_key(&employees[0].0)).await?;
    assert!(fields.contains_key("_fc:ix:email"));
    assert!(fields.contains_key("_fc:ix:team_id"));
    assert!(!fields.contains_key("_fc:ix"));
    Ok(())
}

#[tokio::test]
async fn updates_move_index_entries_and_tombstones_remove_them() -> Result<()> {
    let mut cache = Cache::new().await?;
    cache
        .fold(&[
            ("E1", Some(person("E1", "a@x.example", "T1"))),
            ("E2", Some(person("E2", "b@x.example", "T1"))),
        ])
        .await?;
    assert_eq!(cache.index("team_id", "T1").await?, ["E1", "E2"]);
    assert_eq!(cache.served("team_id", "T1").await?, ["E1", "E2"]);
    let fields: BTreeMap<String, String> = cache.con.hgetall(cache.hash_key("E1")).await?;
    assert_eq!(
        fields.get("_fc:ix:email").map(String::as_str),
        Some("a@x.example")
    );

    cache
        .fold(&[("E1", Some(person("E1", "c@x.example", "T2")))])
        .await?;
    assert_eq!(cache.index("team_id", "T1").await?, ["E2"]);
    assert_eq!(cache.index("team_id", "T2").await?, ["E1"]);
    assert!(cache.index("email", "a@x.example").await?.is_empty());
    assert_eq!(cache.index("email", "c@x.example").await?, ["E1"]);
    assert_eq!(cache.served("team_id", "T2").await?, ["E1"]);

    // A state without the member leaves the index and loses the field.
    cache
        .fold(&[("E2", Some(json!({"id": "E2", "name": "B"})))])
        .await?;
    assert!(cache.index("team_id", "T1").await?.is_empty());
    let fields: BTreeMap<String, String> = cache.con.hgetall(cache.hash_key("E2")).await?;
    assert!(fields.keys().all(|k| !k.starts_with("_fc:ix")));

    cache.fold(&[("E1", None)]).await?;
    assert!(cache.index("team_id", "T2").await?.is_empty());
    assert!(cache.index("email", "c@x.example").await?.is_empty());
    assert!(cache.index("manager_id", "E9").await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_hash_of_the_older_layout_keeps_its_indexes_exact() -> Result<()> {
    let mut cache = Cache::new().await?;
    cache
        .fold(&[("E1", Some(person("E1", "a@x.example", "T1")))])
        .await?;
    cache.as_older_layout("E1", "T1").await?;
    // Filtered by the older field until it is folded again.
    assert_eq!(cache.served("team_id", "T1").await?, ["E1"]);

    cache
        .fold(&[("E1", Some(person("E1", "a@x.example", "T2")))])
        .await?;
    assert!(cache.index("team_id", "T1").await?.is_empty());
    assert_eq!(cache.index("team_id", "T2").await?, ["E1"]);
    assert_eq!(cache.index("email", "a@x.example").await?, ["E1"]);
    let fields: BTreeMap<String, String> = cache.con.hgetall(cache.hash_key("E1")).await?;
    assert!(!fields.contains_key("_fc:ix"));
    assert_eq!(fields.get("_fc:ix:team_id").map(String::as_str), Some("T2"));

    // And a tombstone of an older-layout hash removes its entries.
    cache.as_older_layout("E1", "T2").await?;
    cache.fold(&[("E1", None)]).await?;
    assert!(cache.index("team_id", "T2").await?.is_empty());
    assert!(cache.index("email", "a@x.example").await?.is_empty());
    assert!(cache.index("manager_id", "E9").await?.is_empty());
    Ok(())
}

/// A unique index is one hash (value → first holder), not one key per
/// value; a second holder of a value is a conflict, counted and served,
/// and takes the first place when the first holder leaves.
#[tokio::test]
async fn a_unique_index_is_one_hash_and_serves_every_holder() -> Result<()> {
    let mut cache = Cache::new().await?;
    cache
        .fold(&[
            ("E1", Some(person("E1", "a@x.example", "T1"))),
            ("E2", Some(person("E2", "b@x.example", "T1"))),
        ])
        .await?;
    let e = EntityName::parse("employees")?;
    let hash: BTreeMap<String, String> = cache
        .con
        .hgetall(cache.keys.unique_index(1, &e, "email"))
        .await?;
    assert_eq!(
        hash,
        BTreeMap::from([
            ("a@x.example".to_owned(), "E1".to_owned()),
            ("b@x.example".to_owned(), "E2".to_owned())
        ])
    );
    assert!(
        !cache.has_set("email", "a@x.example").await?,
        "no sorted set for a value with one holder"
    );

    // Three more holders of a@x.example in one batch, one of them sorting
    // before E1: every one is a conflict, every one is served, in order.
    let before = cache.keys_count().await?;
    let folded = cache
        .folder
        .fold(
            &mut cache.con,
            EPOCH,
            1,
            &[common::fold::batch(
                &cache.keys,
                &cache.sources.get(TOPIC).expect("employees source").clone(),
                &mut cache.offset,
                &[
                    ("E0", Some(person("E0", "a@x.example", "T1"))),
                    ("E3", Some(person("E3", "a@x.example", "T1"))),
                    ("E4", Some(person("E4", "a@x.example", "T1"))),
                ],
            )?],
        )
        .await?;
    assert_eq!(folded[0].unique_conflicts, 3);
    assert_eq!(
        cache.index("email", "a@x.example").await?,
        ["E1", "E0", "E3", "E4"]
    );
    assert_eq!(
        cache.served("email", "a@x.example").await?,
        ["E0", "E1", "E3", "E4"]
    );
    // Paged two at a time, across the hash's holder and the set's.
    let (first, next) = cache
        .served_page("/v1/employees?email=a@x.example&limit=2")
        .await?;
    assert_eq!(first, ["E0", "E1"]);
    let (second, last) = cache.served_page(&next.expect("a next page")).await?;
    assert_eq!(second, ["E3", "E4"]);
    assert_eq!(last, None);
    // Three entity hashes and one sorted set for the conflicts.
    assert_eq!(cache.keys_count().await?, before + 4);

    // The first holder leaves: the smallest waiting one takes its place.
    cache
        .fold(&[("E1", Some(person("E1", "c@x.example", "T1")))])
        .await?;
    assert_eq!(
        cache.index("email", "a@x.example").await?,
        ["E0", "E3", "E4"]
    );
    assert_eq!(cache.index("email", "c@x.example").await?, ["E1"]);
    // Holders leave in any order; the last one takes the field with it.
    cache.fold(&[("E3", None), ("E0", None)]).await?;
    assert_eq!(cache.index("email", "a@x.example").await?, ["E4"]);
    cache.fold(&[("E4", None)]).await?;
    assert!(cache.index("email", "a@x.example").await?.is_empty());
    assert!(cache.served("email", "a@x.example").await?.is_empty());
    assert!(!cache.has_set("email", "a@x.example").await?);
    Ok(())
}

/// A unique index value kept by an older ingest (a sorted set of its own,
/// no field in the hash) is still served, and emptied when its holder
/// leaves.
#[tokio::test]
async fn a_unique_value_of_the_older_layout_is_served_and_emptied() -> Result<()> {
    let mut cache = Cache::new().await?;
    cache
        .fold(&[("E1", Some(person("E1", "a@x.example", "T1")))])
        .await?;
    let e = EntityName::parse("employees")?;
    let uix = cache.keys.unique_index(1, &e, "email");
    let set = cache.keys.index(1, &e, "email", "a@x.example");
    let () = redis::pipe()
        .hdel(&uix, "a@x.example")
        .zadd(&set, "E1", 0)
        .query_async(&mut cache.con)
        .await?;
    assert_eq!(cache.served("email", "a@x.example").await?, ["E1"]);
    cache
        .fold(&[("E1", Some(person("E1", "b@x.example", "T1")))])
        .await?;
    assert!(
        !cache.has_set("email", "a@x.example").await?,
        "the older set is emptied"
    );
    assert!(cache.served("email", "a@x.example").await?.is_empty());
    assert_eq!(cache.served("email", "b@x.example").await?, ["E1"]);
    Ok(())
}
