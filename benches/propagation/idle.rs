//! The memory query-api spends on idle connections: the growth of its RSS
//! while N connections of one kind are open, per connection.

use anyhow::{Context, Result, ensure};
use futures::StreamExt;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Which idle connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A keep-alive connection after one `/healthz` (the baseline).
    KeepAlive,
    /// `GET /v1/employees/{id}` with its ETag and `Prefer: wait=60`.
    LongPoll,
    /// `GET /v1/employees/changes` as an event stream, no changes.
    Stream,
}

impl Kind {
    /// For the table.
    pub fn label(self) -> &'static str {
        match self {
            Kind::KeepAlive => "keep-alive connections",
            Kind::LongPoll => "long-polls (`Prefer: wait=60`, one employee each)",
            Kind::Stream => "event streams (`Accept: text/event-stream`)",
        }
    }

    fn request(self, id: &str, etag: &str) -> String {
        match self {
            Kind::KeepAlive => "GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n".into(),
            Kind::LongPoll => format!(
                "GET /v1/employees/{id} HTTP/1.1\r\nHost: bench\r\nIf-None-Match: {etag}\r\nPrefer: wait=60\r\n\r\n"
            ),
            Kind::Stream => "GET /v1/employees/changes HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n".into(),
        }
    }
}

/// What one kind cost.
#[derive(Debug)]
pub struct Idle {
    pub kib_per_connection: f64,
    pub total_mib: f64,
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// Opens `n` connections of `kind` to `base` (query-api's pid `pid`), each
/// long-poll on one of `validators` (id, ETag), and measures.
pub async fn measure(
    base: &str,
    pid: u32,
    kind: Kind,
    n: usize,
    validators: &[(String, String)],
) -> Result<Idle> {
    let addr = base.trim_start_matches("http://").to_owned();
    ensure!(!validators.is_empty(), "no validators");
    // Warm up: one connection of the kind (starts the feed, fills pools).
    let warm = open(&addr, kind, &validators[0]).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(pid)?;
    let conns: Vec<TcpStream> = futures::stream::iter(0..n)
        .map(|i| open(&addr, kind, &validators[i % validators.len()]))
        .buffer_unordered(200)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid)?;
    // A long-poll answered already was not idle: count them.
    let mut answered = 0;
    if kind == Kind::LongPoll {
        let mut buf = [0u8; 64];
        for c in &conns {
            if matches!(c.try_read(&mut buf), Ok(k) if k > 0) {
                answered += 1;
            }
        }
    }
    ensure!(
        answered == 0,
        "{answered} long-polls were answered while idle"
    );
    drop((conns, warm));
    let grown = after.saturating_sub(before) as f64;
    eprintln!("{n} idle {}: RSS {before} → {after} KiB", kind.label());
    Ok(Idle {
        kib_per_connection: grown / n as f64,
        total_mib: grown / 1024.0,
    })
}

/// One connection with its request sent; for kinds that answer at once,
/// the answer's head read.
async fn open(addr: &str, kind: Kind, (id, etag): &(String, String)) -> Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(kind.request(id, etag).as_bytes()).await?;
    if kind != Kind::LongPoll {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let k = s.read(&mut buf).await?;
            ensure!(k > 0, "connection closed before the answer");
            head.extend_from_slice(&buf[..k]);
        }
        ensure!(head.starts_with(b"HTTP/1.1 200"), "answer was not 200");
    }
    Ok(s)
}
