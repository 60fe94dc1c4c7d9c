//! The staging hashes of whole-state folds, through ingest's own fold into
//! a real redis-server: each new state is written by a plain `HSET` into a
//! staging hash and renamed onto its entity's key by the fold script.
//!
//! - a fold, a replay below the fence and a tombstone leave no staging
//!   hash, and every entity hash holds exactly its state;
//! - a batch whose staging hashes are gone when its script runs writes
//!   nothing and says so (`StageLost`); staged again, it folds;
//! - a batch refused by a guard drops its staging hashes.

#[path = "common/fold.rs"]
mod fold;

use anyhow::{Result, ensure};
use foldcache::RedisServer;
use foldcache_common::config::Config;
use foldcache_common::keys::KeySpace;
use foldcache_ingest::fold::{FoldError, Folder, PartitionBatch};
use foldcache_ingest::source::{Source, Sources};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncCommands, Cmd, Pipeline, RedisFuture, Value};
use serde_json::{Value as Json, json};
use std::collections::HashMap;
use std::sync::Arc;

const EPOCH: &str = "test-epoch";
const TOPIC: &str = "hr.employees";

struct Cache {
    _redis: RedisServer,
    con: MultiplexedConnection,
    keys: KeySpace,
    folder: Folder,
    source: Arc<Source>,
    offset: i64,
}

impl Cache {
    async fn new() -> Result<Self> {
        let (redis, con, keys) = fold::ready_cache(EPOCH).await?;
        let config = Config::default();
        let source = Sources::from_config(&config)?
            .get(TOPIC)
            .expect("employees source")
            .clone();
        Ok(Self {
            folder: Folder::from_config(keys.clone(), &config),
            source,
            _redis: redis,
            con,
            keys,
            offset: 0,
        })
    }

    fn batch(&mut self, records: &[(&str, Option<Json>)]) -> Result<PartitionBatch> {
        fold::batch(&self.keys, &self.source, &mut self.offset, records)
    }

    /// Every key of the key space matching `pattern` (after `fc:`).
    async fn keys_like(&mut self, pattern: &str) -> Result<Vec<String>> {
        Ok(self.con.keys(format!("fc:{pattern}")).await?)
    }

    /// The entity hash of `id`, meta fields left out.
    async fn members(&mut self, id: &str) -> Result<HashMap<String, String>> {
        let all: HashMap<String, String> =
            self.con.hgetall(format!("fc:g1:employees:{id}")).await?;
        Ok(all
            .into_iter()
            .filter(|(k, _)| !k.starts_with("_fc:"))
            .collect())
    }

    async fn offset_stored(&mut self) -> Result<Option<i64>> {
        Ok(self.con.hget("fc:g1:offsets", format!("{TOPIC}/0")).await?)
    }
}

fn person(id: &str, name: &str) -> Json {
    json!({"id": id, "name": name, "email": format!("{id}@x.example"), "team_id": "T1"})
}

/// Canonical JSON of each member, as the entity hash holds them.
fn fields(state: &Json) -> HashMap<String, String> {
    state
        .as_object()
        .expect("object")
        .iter()
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn folds_replays_and_tombstones_leave_no_staging_hash() -> Result<()> {
    let mut cache = Cache::new().await?;
    let (a, b) = (person("E1", "Ada"), person("E2", "Bo"));
    let first = cache.batch(&[("E1", Some(a.clone())), ("E2", Some(b.clone()))])?;
    let out = cache
        .folder
        .fold(&mut cache.con, EPOCH, 1, std::slice::from_ref(&first))
        .await?;
    assert_eq!(out[0].upserted, 2);
    assert_eq!(cache.members("E1").await?, fields(&a));
    assert_eq!(cache.members("E2").await?, fields(&b));
    assert!(cache.keys_like("stage:*").await?.is_empty());

    // The same batch again is below the fence: skipped, staging dropped.
    let out = cache
        .folder
        .fold(&mut cache.con, EPOCH, 1, &[first])
        .await?;
    assert_eq!((out[0].upserted, out[0].skipped), (0, 2));
    assert!(cache.keys_like("stage:*").await?.is_empty());

    // A new state replaces every field (none of the old one is left); a
    // tombstone removes the hash.
    let a2 = json!({"id": "E1", "name": "Ada L.", "team_id": "T2"});
    let next = cache.batch(&[("E1", Some(a2.clone())), ("E2", None)])?;
    let out = cache.folder.fold(&mut cache.con, EPOCH, 1, &[next]).await?;
    assert_eq!((out[0].upserted, out[0].deleted), (1, 1));
    assert_eq!(cache.members("E1").await?, fields(&a2));
    assert!(cache.members("E2").await?.is_empty());
    assert!(cache.keys_like("stage:*").await?.is_empty());
    let ttl: i64 = cache.con.pttl("fc:g1:employees:E1").await?;
    ensure!(ttl > 0, "the renamed hash has the entity's TTL, not none");
    Ok(())
}

#[tokio::test]
async fn a_batch_whose_staging_hashes_are_gone_writes_nothing_and_is_staged_again() -> Result<()> {
    let mut cache = Cache::new().await?;
    let batch = cache.batch(&[("E1", Some(person("E1", "Ada"))), ("E2", None)])?;
    let mut losing = LosesStages {
        inner: cache.con.clone(),
    };
    let err = cache
        .folder
        .fold(&mut losing, EPOCH, 1, std::slice::from_ref(&batch))
        .await
        .expect_err("the batch must be refused");
    assert!(matches!(err, FoldError::StageLost), "{err}");
    assert!(cache.keys_like("g1:employees:*").await?.is_empty());
    assert!(cache.keys_like("g1:{employees}:*").await?.is_empty());
    assert_eq!(cache.offset_stored().await?, None, "the offset stays");

    let out = cache
        .folder
        .fold(&mut cache.con, EPOCH, 1, &[batch])
        .await?;
    assert_eq!(out[0].upserted, 1);
    assert_eq!(cache.members("E1").await?, fields(&person("E1", "Ada")));
    assert_eq!(cache.offset_stored().await?, Some(2));
    assert!(cache.keys_like("stage:*").await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_refused_batch_drops_its_staging_hashes() -> Result<()> {
    let mut cache = Cache::new().await?;
    let () = cache.con.hset("fc:state", "epoch", "another").await?;
    let batch = cache.batch(&[("E1", Some(person("E1", "Ada")))])?;
    let err = cache
        .folder
        .fold(&mut cache.con, EPOCH, 1, &[batch])
        .await
        .expect_err("the epoch guard must refuse");
    assert!(matches!(err, FoldError::EpochChanged), "{err}");
    assert!(cache.keys_like("stage:*").await?.is_empty());
    assert!(cache.keys_like("g1:employees:*").await?.is_empty());
    Ok(())
}

/// A connection on which every staging hash is lost between the pipeline's
/// staging commands and its script calls (as if they had expired).
struct LosesStages {
    inner: MultiplexedConnection,
}

impl LosesStages {
    async fn split(&mut self, pipeline: &Pipeline) -> redis::RedisResult<Vec<Value>> {
        let (mut staging, mut scripts) = (redis::pipe(), redis::pipe());
        for cmd in pipeline.cmd_iter() {
            let name = match cmd.args_iter().next() {
                Some(redis::Arg::Simple(n)) => n.to_ascii_uppercase(),
                _ => Vec::new(),
            };
            if name == b"HSET" || name == b"PEXPIRE" {
                staging.add_command(cmd.clone());
            } else {
                scripts.add_command(cmd.clone());
            }
        }
        let mut out: Vec<Value> = staging.query_async(&mut self.inner).await?;
        let staged: Vec<String> = self.inner.keys("fc:stage:*").await?;
        if !staged.is_empty() {
            let _: i64 = self.inner.del(staged).await?;
        }
        out.extend(scripts.query_async::<Vec<Value>>(&mut self.inner).await?);
        Ok(out)
    }
}

impl ConnectionLike for LosesStages {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.inner.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        _offset: usize,
        _count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(self.split(pipeline))
    }

    fn get_db(&self) -> i64 {
        0
    }
}
