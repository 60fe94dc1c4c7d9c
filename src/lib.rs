//! The foldcache test kit: real services for end-to-end tests and load
//! benchmarks.
//!
//! - [`RedisServer`]: a private `redis-server` on a free port, nothing on
//!   disk, killed on drop.
//! - [`Broker`]: a private Tansu (Kafka-protocol) broker on a free port with
//!   in-memory storage, killed on drop.
//! - [`Process`]: one of foldcache's own binaries (`ingest`, `query-api`),
//!   started with a generated config, killed on drop (or with SIGKILL on
//!   demand, to test crash recovery).
//!
//! Binaries are found through the environment (`FOLDCACHE_TANSU`,
//! `FOLDCACHE_REDIS_SERVER`), then `PATH`, then the cache that `scripts/dev`
//! builds into (`~/.cache/foldcache/tansu-0.6.0/bin/tansu`).

use anyhow::{Context, Result, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port on 127.0.0.1")
}

/// A name unique to this process and call, for topics, groups and prefixes.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}{}x{}x{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `check` every 50 ms until it returns `Ok(Some(_))` or `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() > timeout {
            match last_err {
                Some(e) => bail!("timed out after {timeout:?} waiting for {what}: {e:#}"),
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A child process killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

/// Where [`Process`] writes the output of every process it starts:
/// `$FOLDCACHE_TEST_LOGS`, or `target/test-logs` in the workspace.
pub fn test_log_dir() -> PathBuf {
    std::env::var_os("FOLDCACHE_TEST_LOGS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-logs"),
        PathBuf::from,
    )
}

impl Process {
    /// Starts `program` with `args`. Its stdout and stderr go to a file of
    /// their own under [`test_log_dir`] (see [`Process::log_path`]) and to
    /// the test's stderr, each line prefixed with `[name port]`, so that the
    /// interleaved output of concurrent tests says which process wrote what.
    pub fn spawn(name: &str, program: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let dir = test_log_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = dir.join(format!("{}.log", unique(&format!("{name}-"))));
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        let file = std::sync::Arc::new(std::sync::Mutex::new(
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?,
        ));
        let tag = format!("[{name} {}]", child.id());
        if let Some(out) = child.stdout.take() {
            tee(out, tag.clone(), file.clone());
        }
        if let Some(err) = child.stderr.take() {
            tee(err, tag, file);
        }
        Ok(Self {
            name: name.into(),
            child: Some(child),
            log,
        })
    }

    /// The file holding everything this process wrote.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// SIGKILL now: the crash that recovery must survive.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait up to `grace` for a clean exit; returns whether the
    /// process exited successfully in time.
    pub fn terminate(&mut self, grace: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!(name = %self.name, "did not exit after SIGTERM; killing");
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// Waits up to `timeout` for the process to exit by itself; returns
    /// whether it exited successfully (killing it on timeout).
    pub fn wait(&mut self, timeout: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// The OS process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

fn tee(
    from: impl std::io::Read + Send + 'static,
    tag: String,
    file: std::sync::Arc<std::sync::Mutex<std::fs::File>>,
) {
    use std::io::{BufRead, Write};
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut f) = file.lock() {
                let _ = writeln!(f, "{line}");
            }
            eprintln!("{tag} {line}");
        }
    });
}

/// The Tansu broker: `$FOLDCACHE_TANSU`, `PATH`, or the cache that
/// `scripts/dev install` builds into.
pub fn tansu_binary() -> Result<PathBuf> {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let cache = std::env::var("XDG_CACHE_HOME").unwrap_or_else(|_| format!("{home}/.cache"));
    find_binary(
        "FOLDCACHE_TANSU",
        "tansu",
        &[PathBuf::from(format!(
            "{cache}/foldcache/tansu-0.6.0/bin/tansu"
        ))],
    )
}

/// The `redis-server` to start: `$FOLDCACHE_REDIS_SERVER`, `PATH`, or
/// Debian's.
pub fn redis_server_binary() -> Result<PathBuf> {
    find_binary(
        "FOLDCACHE_REDIS_SERVER",
        "redis-server",
        &[PathBuf::from("/usr/bin/redis-server")],
    )
}

fn find_binary(env_var: &str, name: &str, fallbacks: &[PathBuf]) -> Result<PathBuf> {
    if let Ok(p) = std::env::var(env_var) {
        return Ok(PathBuf::from(p));
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    fallbacks
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .with_context(|| format!("{name} not found (set {env_var}, or run `scripts/dev install`)"))
}

/// The path of one of foldcache's binaries (`ingest`, `query-api`) in the
/// same target directory as the running test. `scripts/dev test` builds them
/// before the tests run.
pub fn foldcache_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test-binary>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable has no target directory")?;
    let p = dir.join(name);
    if !p.is_file() {
        bail!(
            "{} is missing: run `cargo build --workspace --bins` first (scripts/dev test does)",
            p.display()
        );
    }
    Ok(p)
}

/// A private redis-server on a free port, with nothing on disk.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    _process: Process,
}

impl RedisServer {
    /// Starts it and waits until it answers PING.
    pub async fn start() -> Result<Self> {
        Self::start_on(&redis_server_binary()?, free_port()).await
    }

    /// Starts one on `port` (to restart "the same" Redis empty).
    pub async fn start_on(bin: &Path, port: u16) -> Result<Self> {
        let port_s = port.to_string();
        let process = Process::spawn(
            "redis-server",
            bin,
            &[
                "--port",
                &port_s,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--loglevel",
                "warning",
            ],
            &[],
        )?;
        let server = Self {
            port,
            _process: process,
        };
        let client = redis::Client::open(server.url())?;
        eventually(
            "redis-server to answer PING",
            Duration::from_secs(10),
            || {
                let client = client.clone();
                async move {
                    let mut con = client.get_multiplexed_async_connection().await?;
                    let pong: String = redis::cmd("PING").query_async(&mut con).await?;
                    Ok((pong == "PONG").then_some(()))
                }
            },
        )
        .await?;
        Ok(server)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A fresh multiplexed connection.
    pub async fn connection(&self) -> Result<redis::aio::MultiplexedConnection> {
        Ok(redis::Client::open(self.url())?
            .get_multiplexed_async_connection()
            .await?)
    }
}

/// A private Tansu broker (Kafka protocol) on a free port, in-memory storage.
#[derive(Debug)]
pub struct Broker {
    port: u16,
    _process: Process,
}

impl Broker {
    /// Starts it and waits until it answers a metadata request.
    pub async fn start() -> Result<Self> {
        let port = free_port();
        let broker = Self::spawn(port, port)?;
        broker.wait_for_metadata(ClientConfig::new()).await?;
        Ok(broker)
    }

    /// Starts one listening on `port` that tells clients to connect to
    /// `advertised` (a TLS terminator in front of it, say). Returns at once.
    pub fn spawn(port: u16, advertised: u16) -> Result<Self> {
        let bin = tansu_binary()?;
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised_url = format!("tcp://127.0.0.1:{advertised}");
        let process = Process::spawn(
            "tansu",
            &bin,
            &[
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised_url,
                "--storage-engine",
                "memory://tansu/",
            ],
            &[("RUST_LOG", "warn")],
        )?;
        Ok(Self {
            port,
            _process: process,
        })
    }

    /// Waits until the broker answers a metadata request made with `client`
    /// (plus `bootstrap.servers`, if `client` has none).
    pub async fn wait_for_metadata(&self, mut client: ClientConfig) -> Result<()> {
        if client.get("bootstrap.servers").is_none() {
            client.set("bootstrap.servers", self.bootstrap());
        }
        eventually(
            "the broker to answer metadata",
            Duration::from_secs(20),
            || {
                let client = client.clone();
                async move {
                    tokio::task::spawn_blocking(move || {
                        let c: BaseConsumer = client.create()?;
                        Ok(c.fetch_metadata(None, Duration::from_secs(2))
                            .ok()
                            .map(|_| ()))
                    })
                    .await?
                }
            },
        )
        .await
    }

    /// `127.0.0.1:PORT`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates compacted topics with `partitions` partitions each.
    pub async fn create_topics(&self, topics: &[&str], partitions: i32) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .create()?;
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| {
                NewTopic::new(t, partitions, TopicReplication::Fixed(1))
                    .set("cleanup.policy", "compact")
            })
            .collect();
        for r in admin.create_topics(&new, &AdminOptions::new()).await? {
            if let Err((topic, code)) = r {
                bail!("creating topic {topic}: {code}");
            }
        }
        Ok(())
    }
}

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
        let (redis, broker) = tokio::try_join!(RedisServer::start(), Broker::start())?;
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
filter = "info"

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

/// The status of a plain GET, with a minimal HTTP/1.1 client (so the kit
/// needs no HTTP library).
pub async fn http_status(url: &str) -> Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").context("only http:// URLs")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = tokio::net::TcpStream::connect(host).await?;
    s.write_all(
        format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let line = String::from_utf8_lossy(&buf);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status line")
}

/// A TLS terminator: accepts TLS on a free port with the given certificate
/// and forwards the plain bytes to `127.0.0.1:upstream`. Stands in for a
/// broker's TLS listener where the broker has none (Tansu 0.6.0). Stops
/// when dropped.
#[derive(Debug)]
pub struct TlsProxy {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl TlsProxy {
    /// Starts it on `port` (PEM certificate chain and key files).
    pub async fn start(port: u16, cert: &Path, key: &Path, upstream: u16) -> Result<Self> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(key)?;
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    if let Ok(mut up) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                    }
                });
            }
        });
        Ok(Self { port, task })
    }

    /// The TLS port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Writes a ready cache marker (`live_gen = 1`) and a fresh ingest
/// heartbeat, as a running ingest would: the state query-api needs to
/// serve what a test folds with ingest's code directly.
pub async fn seed_ready_cache(
    con: &mut redis::aio::MultiplexedConnection,
    keys: &foldcache_common::keys::KeySpace,
    epoch: &str,
) -> Result<()> {
    let now = foldcache_common::runtime::now_ms();
    let beat = foldcache_common::keys::InstanceBeat {
        alive_ms: now,
        fresh_ms: Some(now),
        interval_ms: 1000,
    };
    let () = redis::pipe()
        .hset_multiple(
            keys.state(),
            &[("epoch", epoch), ("live_gen", "1"), ("ready", "1")],
        )
        .hset(keys.instances(), "i1", beat.encode())
        .query_async(con)
        .await?;
    Ok(())
}

/// The live generation in the `fc` key space (`None`: no cache yet).
pub async fn live_generation(con: &mut redis::aio::MultiplexedConnection) -> Result<Option<u64>> {
    Ok(redis::cmd("HGET")
        .arg("fc:state")
        .arg("live_gen")
        .query_async(con)
        .await?)
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
