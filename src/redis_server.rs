//! A private redis-server on a free port.
//!
//! Nothing is saved on its own (`--save ""`, no AOF), as foldcache's Redis is
//! a cache; [`RedisServer::snapshot`] takes an RDB snapshot on demand, and
//! [`RedisServer::start_again`] restarts the same server (same port) empty
//! or from such a snapshot: the faults "Redis restarted empty" and "Redis
//! restored from an older snapshot". [`RedisServer::pause`] is SIGSTOP.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::binaries::redis_server_binary;
use crate::process::Process;
use crate::{eventually, free_port, unique};

const DUMP: &str = "dump.rdb";

/// A private redis-server. Restarted, paused and killed through `&self`.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    bin: PathBuf,
    dir: PathBuf,
    process: Mutex<Option<Process>>,
}

impl RedisServer {
    /// Starts it and waits until it answers PING.
    pub async fn start() -> Result<Self> {
        Self::start_on(&redis_server_binary()?, free_port()).await
    }

    /// Starts one on `port` (to restart "the same" Redis empty).
    pub async fn start_on(bin: &Path, port: u16) -> Result<Self> {
        let dir = std::env::temp_dir().join(unique("redis-"));
        std::fs::create_dir_all(&dir)?;
        let server = Self {
            port,
            bin: bin.to_owned(),
            dir,
            process: Mutex::new(None),
        };
        server.launch()?;
        server.wait_for_ping().await?;
        Ok(server)
    }

    fn launch(&self) -> Result<()> {
        let port = self.port.to_string();
        let dir = self.dir.to_string_lossy().into_owned();
        let process = Process::spawn(
            "redis-server",
            &self.bin,
            &[
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--dir",
                &dir,
                "--dbfilename",
                DUMP,
                "--save",
                "",
                "--appendonly",
                "no",
                "--loglevel",
                "warning",
            ],
            &[],
        )?;
        *self.lock() = Some(process);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Process>> {
        self.process.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn wait_for_ping(&self) -> Result<()> {
        let client = redis::Client::open(self.url())?;
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
        .await
    }

    /// The OS process id, while running (benchmarks read its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.lock().as_ref().and_then(Process::pid)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A fresh multiplexed connection. Without redis-rs's default 500 ms
    /// response timeout: a test folding thousands of records in one script
    /// on a loaded machine must wait for it, not fail.
    pub async fn connection(&self) -> Result<redis::aio::MultiplexedConnection> {
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(Duration::from_secs(60)))
            .set_connection_timeout(Some(Duration::from_secs(10)));
        Ok(redis::Client::open(self.url())?
            .get_multiplexed_async_connection_with_config(&config)
            .await?)
    }

    /// Takes an RDB snapshot now (`SAVE`) and copies it to `to`.
    pub async fn snapshot(&self, to: &Path) -> Result<()> {
        let mut con = self.connection().await?;
        let () = redis::cmd("SAVE").query_async(&mut con).await?;
        std::fs::copy(self.dir.join(DUMP), to)
            .with_context(|| format!("copying the snapshot to {}", to.display()))?;
        Ok(())
    }

    /// SIGKILL: the server is gone (with everything in memory) until
    /// [`RedisServer::start_again`].
    pub fn kill(&self) {
        if let Some(mut p) = self.lock().take() {
            p.kill();
        }
    }

    /// Starts the killed server again on the same port: empty, or loaded
    /// from `snapshot` (an RDB file from [`RedisServer::snapshot`]).
    pub async fn start_again(&self, snapshot: Option<&Path>) -> Result<()> {
        if self.lock().is_some() {
            bail!("redis-server is already running");
        }
        let dump = self.dir.join(DUMP);
        match snapshot {
            Some(rdb) => {
                std::fs::copy(rdb, &dump)
                    .with_context(|| format!("restoring {}", rdb.display()))?;
            }
            None => {
                let _ = std::fs::remove_file(&dump);
            }
        }
        self.launch()?;
        self.wait_for_ping().await
    }

    /// SIGSTOP: the server holds its connections but answers nothing.
    pub fn pause(&self) -> Result<()> {
        self.signal("STOP")
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) -> Result<()> {
        self.signal("CONT")
    }

    fn signal(&self, sig: &str) -> Result<()> {
        match self.lock().as_ref() {
            Some(p) => p.signal(sig),
            None => bail!("redis-server is not running"),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.resume();
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
