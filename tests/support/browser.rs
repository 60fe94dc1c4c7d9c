//! Headless Chromium for the console's browser tests: Debian's `chromium`
//! driven through `chromedriver` (WebDriver) with `fantoccini`, screenshots
//! kept under `target/screenshots/` for the reviewer.

use anyhow::{Context, Result};
use fantoccini::{Client, ClientBuilder, Locator};
use foldcache::{Process, eventually, free_port};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A chromedriver and one headless Chromium session; both end on drop.
pub struct Browser {
    /// The WebDriver session.
    pub client: Client,
    _driver: Process,
    shots: PathBuf,
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session.
    /// Screenshots go to `target/screenshots/{name}/`.
    pub async fn start(name: &str) -> Result<Self> {
        let port = free_port();
        let driver = Process::spawn(
            "chromedriver",
            Path::new(
                &std::env::var("FOLDCACHE_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into()),
            ),
            &[&format!("--port={port}")],
            &[],
        )?;
        let url = format!("http://127.0.0.1:{port}");
        let status = format!("{url}/status");
        eventually("chromedriver to answer", Duration::from_secs(30), || {
            let status = status.clone();
            async move {
                Ok(reqwest::get(&status)
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(|_| ()))
            }
        })
        .await?;
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": std::env::var("FOLDCACHE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,1600", "--lang=en-US"]
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&url)
            .await
            .context("starting a headless Chromium session (Debian's chromium and chromium-driver: scripts/dev install)")?;
        let shots = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/screenshots")
            .join(name);
        std::fs::create_dir_all(&shots)?;
        Ok(Self {
            client,
            _driver: driver,
            shots,
        })
    }

    /// Saves a screenshot of the window as `{name}.png`.
    pub async fn shot(&self, name: &str) -> Result<PathBuf> {
        let png = self.client.screenshot().await?;
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png)?;
        Ok(path)
    }

    /// Waits until the page (as the browser has it, live updates included)
    /// contains `text`; returns the HTML.
    pub async fn wait_for(&self, text: &str, timeout: Duration) -> Result<String> {
        let client = self.client.clone();
        eventually(&format!("the page to show {text:?}"), timeout, || {
            let client = client.clone();
            async move {
                let html = client.source().await?;
                Ok(html.contains(text).then_some(html))
            }
        })
        .await
    }

    /// Types into the field `css`.
    pub async fn fill(&self, css: &str, text: &str) -> Result<()> {
        let field = self.client.find(Locator::Css(css)).await?;
        field.clear().await?;
        field.send_keys(text).await?;
        Ok(())
    }

    /// Clicks the element `css`.
    pub async fn click(&self, css: &str) -> Result<()> {
        self.client.find(Locator::Css(css)).await?.click().await?;
        Ok(())
    }
}

impl Browser {
    /// Ends the session (Chromium exits), then chromedriver.
    pub async fn close(self) -> Result<()> {
        self.client.close().await?;
        Ok(())
    }
}
