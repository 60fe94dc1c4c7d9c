//! A whole foldcache deployment on private services.

use anyhow::Result;
use rdkafka::ClientConfig;
use rdkafka::consumer::Consumer;
use std::path::PathBuf;
use std::time::Duration;

use crate::{
    Broker, BrokerStorage, Process, RedisServer, eventually, foldcache_binary, free_port,
    http_status, unique,
};

/// Topic names of one test stack (unique per stack).
#[derive(Debug, Clone)]
pub struct Topics {
    /// Feeds `employees`.
    pub employees: String,
    /// Feeds `teams`.
    pub teams: String,
    /// Feeds `permissions`.
    pub permissions: String,
    /// Dead letters.
    pub dead_letter: String,
}

/// A whole foldcache deployment on private services: its own Redis, its own
/// broker, unique topics, a config file, and the real `ingest` and
/// `query-api` binaries started on demand.
#[derive(Debug)]
pub struct Stack {
    /// The private Redis.
    pub redis: RedisServer,
    /// The private broker.
    pub broker: Broker,
    /// Topic names.
    pub topics: Topics,
    /// Port of query-api's public listener.
    pub http_port: u16,
    /// Port of query-api's metrics listener.
    pub metrics_port: u16,
    dir: PathBuf,
    extra_toml: String,
}

impl Stack {
    /// Starts Redis and a broker and creates the topics with `partitions`
    /// partitions each. `extra_toml` is appended to the generated config
    /// (for per-test overrides such as `[entities.employees]` tables).
    pub async fn start(partitions: i32, extra_toml: &str) -> Result<Self> {
        Self::start_with(partitions, extra_toml, BrokerStorage::Sqlite).await
    }

    /// [`Stack::start`] with the broker's storage chosen.
    pub async fn start_with(
        partitions: i32,
        extra_toml: &str,
        storage: BrokerStorage,
    ) -> Result<Self> {
        let (redis, broker) = tokio::try_join!(RedisServer::start(), Broker::start_with(storage))?;
        let id = unique("t");
        let topics = Topics {
            employees: format!("{id}.employees"),
            teams: format!("{id}.teams"),
            permissions: format!("{id}.permissions"),
            dead_letter: format!("{id}.dlq"),
        };
        broker
            .create_topics(
                &[&topics.employees, &topics.teams, &topics.permissions],
                partitions,
            )
            .await?;
        broker.create_topics(&[&topics.dead_letter], 1).await?;
        let dir = std::env::temp_dir().join(&id);
        std::fs::create_dir_all(&dir)?;
        let stack = Self {
            redis,
            broker,
            topics,
            http_port: free_port(),
            metrics_port: free_port(),
            dir,
            extra_toml: extra_toml.to_owned(),
        };
        std::fs::write(stack.config_path(), stack.config_toml())?;
        Ok(stack)
    }

    /// The generated config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("foldcache.toml")
    }

    /// The generated config text.
    pub fn config_toml(&self) -> String {
        format!(
            r#"[redis]
url = "{redis}"
key_prefix = "fc"

[kafka]
brokers = "{brokers}"
group_id = "{emp}-group"
dead_letter_topic = "{dlq}"

[kafka.client]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"

[ingest]
batch_linger_ms = 2
admin_listen = "127.0.0.1:0"
heartbeat_interval_ms = 200

[http]
listen = "127.0.0.1:{http}"
metrics_listen = "127.0.0.1:{metrics}"
state_poll_ms = 100
retry_after_secs = 1

[log]
# query-api's store logs each miss it answers 404 or 503 for, with the
# generation it read: the evidence a false 404 would need
# (docs/OPERATIONS.md, Known issues).
filter = "info,foldcache_query_api::store=debug"

[[sources]]
topic = "{emp}"
entity = "employees"

[[sources]]
topic = "{teams}"
entity = "teams"

[[sources]]
topic = "{perms}"
entity = "permissions"

{extra}
"#,
            redis = self.redis.url(),
            brokers = self.broker.bootstrap(),
            dlq = self.topics.dead_letter,
            http = self.http_port,
            metrics = self.metrics_port,
            emp = self.topics.employees,
            teams = self.topics.teams,
            perms = self.topics.permissions,
            extra = self.extra_toml,
        )
    }

    /// Starts an `ingest` process on this stack.
    pub fn spawn_ingest(&self) -> Result<Process> {
        self.spawn_ingest_with(&[])
    }

    /// Starts an `ingest` process with extra environment (config overrides
    /// such as `FOLDCACHE__INGEST__BATCH_MAX_EVENTS`).
    pub fn spawn_ingest_with(&self, env: &[(&str, &str)]) -> Result<Process> {
        let config = self.config_path();
        Process::spawn(
            &format!("ingest@{}", self.http_port),
            &foldcache_binary("ingest")?,
            &["--config", &config.to_string_lossy(), "run"],
            env,
        )
    }

    /// Starts a `query-api` process on this stack.
    pub fn spawn_query_api(&self) -> Result<Process> {
        self.spawn_query_api_with(&[])
    }

    /// Starts a `query-api` process with extra environment.
    pub fn spawn_query_api_with(&self, env: &[(&str, &str)]) -> Result<Process> {
        let config = self.config_path();
        Process::spawn(
            &format!("query-api@{}", self.http_port),
            &foldcache_binary("query-api")?,
            &["--config", &config.to_string_lossy()],
            env,
        )
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// An idempotent producer on this stack's broker.
    pub fn producer(&self) -> Result<rdkafka::producer::FutureProducer> {
        Ok(ClientConfig::new()
            .set("bootstrap.servers", self.broker.bootstrap())
            .set("enable.idempotence", "true")
            .set("linger.ms", "2")
            .create()?)
    }

    /// Produces one record and waits for its acknowledgement; returns
    /// `(partition, offset)`.
    pub async fn produce(
        &self,
        producer: &rdkafka::producer::FutureProducer,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<(i32, i64)> {
        let mut record: rdkafka::producer::FutureRecord<'_, [u8], [u8]> =
            rdkafka::producer::FutureRecord::to(topic);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(v) = value {
            record = record.payload(v);
        }
        let delivery = producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)?;
        Ok((delivery.partition, delivery.offset))
    }

    /// Waits until generation 1's stored offsets add up to more than
    /// `records`: a point in mid-stream (for a SIGKILL there).
    pub async fn wait_folded_past(&self, records: i64, timeout: Duration) -> Result<()> {
        let con = self.redis.connection().await?;
        eventually("ingest to be mid-stream", timeout, || {
            let mut con = con.clone();
            async move {
                let stored: std::collections::HashMap<String, i64> =
                    redis::AsyncCommands::hgetall(&mut con, "fc:g1:offsets").await?;
                Ok((stored.values().sum::<i64>() > records).then_some(()))
            }
        })
        .await
    }

    /// Waits until the live generation's stored offsets reach `ends`
    /// (`(topic, partition)` -> offset after the last record produced);
    /// on timeout the error shows what is stored.
    pub async fn wait_folded(
        &self,
        ends: &std::collections::HashMap<(String, i32), i64>,
        timeout: Duration,
    ) -> Result<()> {
        let con = self.redis.connection().await?;
        async fn stored(
            con: &mut redis::aio::MultiplexedConnection,
        ) -> Result<std::collections::HashMap<String, i64>> {
            let g = crate::live_generation(con).await?.unwrap_or(1);
            Ok(redis::AsyncCommands::hgetall(con, format!("fc:g{g}:offsets")).await?)
        }
        let r = eventually("ingest to fold every produced record", timeout, || {
            let mut con = con.clone();
            async move {
                let stored = stored(&mut con).await?;
                Ok(ends
                    .iter()
                    .all(|((t, p), end)| stored.get(&format!("{t}/{p}")).is_some_and(|s| s >= end))
                    .then_some(()))
            }
        })
        .await;
        if r.is_err() {
            let stored = stored(&mut con.clone()).await?;
            anyhow::bail!("not folded: stored {stored:?}, produced ends {ends:?}");
        }
        r
    }

    /// Runs `ingest rebuild` on this stack's config, which follows the
    /// rebuild to the swap; its standard output, or an error with both
    /// streams when it fails.
    pub async fn rebuild(&self) -> Result<String> {
        let out = tokio::process::Command::new(foldcache_binary("ingest")?)
            .args(["--config", &self.config_path().to_string_lossy(), "rebuild"])
            .output()
            .await?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        anyhow::ensure!(
            out.status.success(),
            "ingest rebuild: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(stdout)
    }

    /// Waits until query-api's `/readyz` answers 200.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let url = format!("{}/readyz", self.base_url());
        eventually("query-api /readyz", timeout, || {
            let url = url.clone();
            async move {
                Ok(http_status(&url)
                    .await
                    .ok()
                    .filter(|s| *s == 200)
                    .map(|_| ()))
            }
        })
        .await
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Stack {
    /// A consumer of this stack's dead-letter topic, from its beginning.
    pub fn dead_letter_consumer(&self) -> Result<rdkafka::consumer::StreamConsumer> {
        let consumer: rdkafka::consumer::StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.broker.bootstrap())
            .set("group.id", unique("dlq-reader"))
            .set("auto.offset.reset", "earliest")
            .create()?;
        consumer.subscribe(&[&self.topics.dead_letter])?;
        Ok(consumer)
    }
}
