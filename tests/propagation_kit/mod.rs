//! Test support for the propagation API: an in-process query-api (the real
//! `serve`, on a free port) over a private redis-server written by ingest's
//! own fold code, tokens with views, and a small Server-Sent Events reader.
#![allow(dead_code)]

#[path = "../common/fold.rs"]
mod fold;
use anyhow::{Context, Result, bail};
use foldcache::RedisServer;
use foldcache_common::config::{Config, TokenConfig, ValueFormat};
use foldcache_common::id::EntityName;
use foldcache_common::keys::KeySpace;
use foldcache_common::secret::{Secret, token_hash_hex};
use foldcache_ingest::fold::{Folder, PartitionBatch};
use foldcache_ingest::source::Source;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// The epoch the fixtures write under.
pub const EPOCH: &str = "propagation-epoch";
/// Reads everything (`full`).
pub const HR_TOKEN: &str = "hr-token-5b1e0c";
/// Reads the employee directory view and teams.
pub const DIRECTORY_TOKEN: &str = "directory-token-77a1f2";
/// The directory view's fields.
pub const DIRECTORY: [&str; 5] = ["id", "name", "email", "team_id", "title"];

fn token(name: &str, secret: &str, grants: &[(&str, &str)]) -> TokenConfig {
    TokenConfig {
        name: name.into(),
        sha256: token_hash_hex(secret),
        grants: grants
            .iter()
            .map(|(e, v)| ((*e).to_owned(), (*v).to_owned()))
            .collect(),
        admin: false,
        rate_per_sec: None,
        burst: None,
    }
}

/// The default config with a `directory` view of employees, an HR token
/// (everything) and a directory token; anonymous callers read the
/// directory.
pub fn config_with_tokens() -> Config {
    let mut c = Config::default();
    let employees = c.entities.get_mut("employees").expect("default entity");
    employees.views = BTreeMap::from([(
        "directory".to_owned(),
        DIRECTORY.iter().map(|s| (*s).to_owned()).collect(),
    )]);
    c.auth.anonymous = BTreeMap::from([("employees".to_owned(), "directory".to_owned())]);
    c.auth.tokens = vec![
        token(
            "hr",
            HR_TOKEN,
            &[
                ("employees", "full"),
                ("teams", "full"),
                ("permissions", "full"),
            ],
        ),
        token(
            "directory-app",
            DIRECTORY_TOKEN,
            &[("employees", "directory"), ("teams", "full")],
        ),
    ];
    c.http.state_poll_ms = 50;
    c
}

/// A private Redis, a ready cache marker, and an in-process query-api.
pub struct Api {
    pub redis: RedisServer,
    pub con: redis::aio::MultiplexedConnection,
    pub base: String,
    pub keys: KeySpace,
    pub config: Config,
    /// The generation folds go to.
    pub generation: u64,
    offsets: HashMap<String, i64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Api {
    /// Starts it with `config` (its Redis URL is replaced).
    pub async fn start(mut config: Config) -> Result<Self> {
        let redis = RedisServer::start().await?;
        let mut con = redis.connection().await?;
        let keys = KeySpace::new("fc");
        foldcache::seed_ready_cache(&mut con, &keys, EPOCH).await?;
        config.redis.url = Secret::new(redis.url());
        config.validate()?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let served = config.clone();
        let server = tokio::spawn(async move {
            let shutdown = async move {
                let _ = rx.await;
            };
            if let Err(e) = foldcache_query_api::serve(listener, &served, shutdown).await {
                eprintln!("query-api: {e:#}");
            }
        });
        let api = Self {
            redis,
            con,
            base,
            keys,
            config,
            generation: 1,
            offsets: HashMap::new(),
            stop: Some(tx),
            server: Some(server),
        };
        foldcache::eventually("query-api to answer", Duration::from_secs(20), || async {
            Ok(
                (foldcache::http_status(&format!("{}/healthz", api.base)).await? == 200)
                    .then_some(()),
            )
        })
        .await?;
        Ok(api)
    }

    /// Folds `records` of `entity` as one batch of one partition, as ingest
    /// does, into [`Api::generation`].
    pub async fn fold(&mut self, entity: &str, records: &[(&str, Option<Value>)]) -> Result<()> {
        let source = Source {
            topic: format!("hr.{entity}"),
            entity: EntityName::parse(entity)?,
            format: ValueFormat::Json,
            id_prefix: String::new(),
            ttl_ms: 600_000,
            programs: Default::default(),
            role: foldcache_ingest::source::Role::State,
        };
        let mut batch = PartitionBatch::new(&source.topic, 0);
        let offset = self.offsets.entry(entity.to_owned()).or_insert(0);
        for (id, v) in records {
            let value = v.as_ref().map(Value::to_string);
            let record = fold::Record {
                key: id,
                value: value.as_deref().map(str::as_bytes),
                offset: *offset,
                timestamp_ms: 1_735_689_600_000,
            };
            fold::push(&mut batch, &self.keys, self.generation, &source, record)?;
            *offset += 1;
        }
        Folder::from_config(self.keys.clone(), &self.config)
            .fold(&mut self.con, EPOCH, self.generation, &[batch])
            .await?;
        Ok(())
    }

    /// Starts generation `generation` as a rebuild would (its folds are
    /// accepted from now on), without swapping.
    pub async fn build(&mut self, generation: u64) -> Result<()> {
        let () = redis::cmd("HSET")
            .arg(self.keys.state())
            .arg("build_gen")
            .arg(generation)
            .query_async(&mut self.con)
            .await?;
        self.generation = generation;
        self.offsets.clear();
        Ok(())
    }

    /// Swaps readers to the generation being built and waits until
    /// query-api has noticed.
    pub async fn swap(&mut self) -> Result<()> {
        let () = redis::pipe()
            .hset(self.keys.state(), "live_gen", self.generation)
            .hdel(self.keys.state(), "build_gen")
            .query_async(&mut self.con)
            .await?;
        // query-api polls the marker every state_poll_ms.
        tokio::time::sleep(Duration::from_millis(self.config.http.state_poll_ms * 4)).await;
        Ok(())
    }

    /// `GET path` with a bearer token and headers.
    pub async fn get(
        &self,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<reqwest::Response> {
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        };
        let mut req = reqwest::Client::new().get(url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Ok(req.send().await?)
    }

    /// `GET path` expecting 200 with JSON.
    pub async fn json(&self, path: &str, token: Option<&str>) -> Result<Value> {
        let r = self.get(path, token, &[]).await?;
        if r.status() != 200 {
            bail!("GET {path}: {} {}", r.status(), r.text().await?);
        }
        Ok(r.json().await?)
    }

    /// Stops query-api (gracefully) and waits for it.
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.server.take() {
            h.await?;
        }
        Ok(())
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        if let Some(h) = self.server.take() {
            h.abort();
        }
    }
}

/// One Server-Sent Events frame.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Frame {
    /// `event:` (empty for a plain message).
    pub event: String,
    /// `id:`.
    pub id: Option<String>,
    /// `data:` lines joined by `\n`.
    pub data: String,
    /// Whether the frame held only comments (a heartbeat).
    pub comment_only: bool,
}

impl Frame {
    /// The data as JSON.
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.data).with_context(|| format!("SSE data {:?}", self.data))
    }
}

/// Reads frames from an event-stream response.
pub struct SseReader {
    res: reqwest::Response,
    buf: String,
}

impl SseReader {
    /// Wraps a 200 `text/event-stream` response.
    pub fn new(res: reqwest::Response) -> Result<Self> {
        let ct = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if res.status() != 200 || !ct.starts_with("text/event-stream") {
            bail!("not an event stream: {} {ct}", res.status());
        }
        Ok(Self {
            res,
            buf: String::new(),
        })
    }

    /// The next frame (comments included), or `None` at the end of the
    /// stream.
    pub async fn next_frame(&mut self) -> Result<Option<Frame>> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let raw: String = self.buf.drain(..end + 2).collect();
                let mut f = Frame {
                    comment_only: true,
                    ..Frame::default()
                };
                let mut data = Vec::new();
                for line in raw.lines() {
                    if line.starts_with(':') || line.is_empty() {
                        continue;
                    }
                    f.comment_only = false;
                    let (k, v) = line.split_once(':').unwrap_or((line, ""));
                    let v = v.strip_prefix(' ').unwrap_or(v);
                    match k {
                        "event" => f.event = v.to_owned(),
                        "id" => f.id = Some(v.to_owned()),
                        "data" => data.push(v.to_owned()),
                        _ => {}
                    }
                }
                f.data = data.join("\n");
                return Ok(Some(f));
            }
            match self.res.chunk().await? {
                Some(bytes) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                None => return Ok(None),
            }
        }
    }

    /// The next frame that is an event (skipping heartbeats and `retry`).
    pub async fn next_event(&mut self) -> Result<Option<Frame>> {
        while let Some(f) = self.next_frame().await? {
            if !f.comment_only && !f.event.is_empty() {
                return Ok(Some(f));
            }
        }
        Ok(None)
    }
}

/// Every member name of every object in `v`, at any depth.
pub fn member_names(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                out.push(k.clone());
                member_names(v, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| member_names(v, out)),
        _ => {}
    }
}
