//! The CDN purge hook: after a fold, the changed entities' cache tags go to
//! a configured URL, off the fold's path (a bounded queue; when it is full,
//! tags are dropped and counted rather than slowing ingest: caches still
//! expire by their own `max-age`).

use foldcache_common::config::PurgeConfig;
use tokio::sync::mpsc;

const QUEUE: usize = 1024;
const TAGS_PER_REQUEST: usize = 100;

/// Sends purge requests in the background.
#[derive(Debug, Clone)]
pub struct Purger {
    tx: Option<mpsc::Sender<Vec<String>>>,
}

impl Purger {
    /// Starts the sender task if a URL is configured.
    pub fn start(config: &PurgeConfig) -> anyhow::Result<Self> {
        if config.url.is_empty() {
            return Ok(Self { tx: None });
        }
        let method = reqwest::Method::from_bytes(config.method.as_bytes())?;
        let header = reqwest::header::HeaderName::from_bytes(config.header.as_bytes())?;
        let url = reqwest::Url::parse(&config.url)?;
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            .build()?;
        let (tx, mut rx) = mpsc::channel::<Vec<String>>(QUEUE);
        tokio::spawn(async move {
            while let Some(tags) = rx.recv().await {
                for chunk in tags.chunks(TAGS_PER_REQUEST) {
                    let r = client
                        .request(method.clone(), url.clone())
                        .header(header.clone(), chunk.join(" "))
                        .send()
                        .await;
                    let outcome = match r {
                        Ok(res) if res.status().is_success() => "ok",
                        Ok(res) => {
                            tracing::warn!(status = %res.status(), "purge hook refused");
                            "refused"
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "purge hook failed");
                            "failed"
                        }
                    };
                    metrics::counter!("foldcache_ingest_purges_total", "outcome" => outcome)
                        .increment(1);
                }
            }
        });
        Ok(Self { tx: Some(tx) })
    }

    /// Queues the tags of changed entities (`entity/id`).
    pub fn purge(&self, tags: Vec<String>) {
        let Some(tx) = &self.tx else {
            return;
        };
        if tags.is_empty() {
            return;
        }
        if tx.try_send(tags).is_err() {
            metrics::counter!("foldcache_ingest_purges_total", "outcome" => "dropped").increment(1);
        }
    }

    /// Whether a hook is configured.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }
}
