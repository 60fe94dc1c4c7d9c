//! A private Tansu broker (Kafka protocol) on a free port.
//!
//! By default its log lives in an SQLite file (Tansu's `libsql` engine) in a
//! directory of its own, so that [`Broker::restart`] keeps every record, as a
//! real broker does. [`BrokerStorage::Memory`] is Tansu's in-memory engine:
//! faster to start, but a restart loses the log (and its Fetch/ListOffsets
//! answers differ from Kafka's, see tests/broker_quirks.rs).

use anyhow::{Result, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::binaries::tansu_binary;
use crate::process::Process;
use crate::{eventually, free_port, unique};

/// Where a [`Broker`] keeps its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerStorage {
    /// `sqlite://tansu.db` in the broker's own directory: survives restarts.
    Sqlite,
    /// `memory://tansu/`: lost when the process stops.
    Memory,
}

impl BrokerStorage {
    fn url(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite://tansu.db",
            Self::Memory => "memory://tansu/",
        }
    }
}

/// A private Tansu broker. Stopped, started again and killed through `&self`,
/// so that a test can inject faults into a broker its [`crate::Stack`] owns.
#[derive(Debug)]
pub struct Broker {
    port: u16,
    advertised: u16,
    storage: BrokerStorage,
    dir: PathBuf,
    process: Mutex<Option<Process>>,
}

impl Broker {
    /// Starts one with durable (SQLite) storage and waits until it answers a
    /// metadata request.
    pub async fn start() -> Result<Self> {
        Self::start_with(BrokerStorage::Sqlite).await
    }

    /// Starts one with the given storage and waits for it.
    pub async fn start_with(storage: BrokerStorage) -> Result<Self> {
        let port = free_port();
        let broker = Self::spawn_with(port, port, storage)?;
        broker.wait_for_metadata(ClientConfig::new()).await?;
        Ok(broker)
    }

    /// Starts one (durable) listening on `port` that tells clients to connect
    /// to `advertised` (a TLS terminator in front of it, say). Returns at once.
    pub fn spawn(port: u16, advertised: u16) -> Result<Self> {
        Self::spawn_with(port, advertised, BrokerStorage::Sqlite)
    }

    fn spawn_with(port: u16, advertised: u16, storage: BrokerStorage) -> Result<Self> {
        let dir = std::env::temp_dir().join(unique("tansu-"));
        std::fs::create_dir_all(&dir)?;
        let broker = Self {
            port,
            advertised,
            storage,
            dir,
            process: Mutex::new(None),
        };
        broker.launch()?;
        Ok(broker)
    }

    fn launch(&self) -> Result<()> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised_url = format!("tcp://127.0.0.1:{}", self.advertised);
        let process = Process::spawn_in(
            &self.dir,
            "tansu",
            &tansu_binary()?,
            &[
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised_url,
                "--storage-engine",
                self.storage.url(),
            ],
            &[("RUST_LOG", "warn")],
        )?;
        *self.lock() = Some(process);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Process>> {
        self.process.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where the broker keeps its files (its SQLite log, with `Sqlite`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its storage engine.
    pub fn storage(&self) -> BrokerStorage {
        self.storage
    }

    /// SIGTERM, then SIGKILL after `grace`: the broker is down until
    /// [`Broker::start_again`].
    pub fn stop(&self, grace: Duration) {
        if let Some(mut p) = self.lock().take() {
            p.terminate(grace);
        }
    }

    /// SIGKILL: a crash.
    pub fn kill(&self) {
        if let Some(mut p) = self.lock().take() {
            p.kill();
        }
    }

    /// Starts the stopped broker again on the same port and storage, and
    /// waits until it answers metadata.
    pub async fn start_again(&self) -> Result<()> {
        if self.lock().is_some() {
            bail!("the broker is already running");
        }
        self.launch()?;
        self.wait_for_metadata(ClientConfig::new()).await
    }

    /// Stops it (SIGTERM, 5 s grace) and starts it again.
    pub async fn restart(&self) -> Result<()> {
        self.stop(Duration::from_secs(5));
        self.start_again().await
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

    /// The OS process id, while running (benchmarks read its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.lock().as_ref().and_then(Process::pid)
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

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
