//! wrk over a list of URLs, each request a random one of them.

use anyhow::{Context, Result, ensure};
use std::fmt::Write as _;
use std::process::Command;

/// Connections, threads and duration: the same as `scripts/dev bench-http`.
const CONNECTIONS: &str = "50";
const DURATION: &str = "10s";

/// What one wrk run measured.
#[derive(Debug)]
pub struct Rate {
    /// Requests per second.
    pub per_sec: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
}

/// Runs wrk against `base` with random paths of `paths` and `headers`
/// (`name: value`). Fails if any answer was not 2xx/3xx.
pub fn run(base: &str, paths: &[String], headers: &[&str]) -> Result<Rate> {
    let mut lua = String::from("local paths = {\n");
    for p in paths {
        let _ = writeln!(lua, "  {:?},", p);
    }
    lua.push_str("}\n");
    for h in headers {
        let (name, value) = h.split_once(": ").context("header without ': '")?;
        let _ = writeln!(lua, "wrk.headers[{name:?}] = {value:?}");
    }
    lua.push_str(
        "request = function() return wrk.format(\"GET\", paths[math.random(#paths)]) end\n\
         done = function(summary, latency, requests)\n\
           io.write(string.format(\"non2xx3xx %d\\n\", summary.errors.status))\n\
         end\n",
    );
    let script = std::env::temp_dir().join(format!("foldcache-wrk-{}.lua", std::process::id()));
    std::fs::write(&script, lua)?;
    let out = Command::new("wrk")
        .args(["-t1", "-c", CONNECTIONS, "-d", DURATION, "--latency", "-s"])
        .arg(&script)
        .arg(base)
        .output()
        .context("running wrk (scripts/dev bench-propagation installs it)")?;
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "wrk failed: {text}");
    let bad: u64 = field(&text, "non2xx3xx ")
        .and_then(|v| v.trim().parse().ok())
        .context("wrk printed no status count")?;
    ensure!(bad == 0, "{bad} answers were not 2xx or 3xx:\n{text}");
    let per_sec = field(&text, "Requests/sec:")
        .and_then(|v| v.trim().parse().ok())
        .context("wrk printed no rate")?;
    let p99_ms = field(&text, "99%")
        .and_then(|v| millis(v.trim()))
        .context("wrk printed no p99")?;
    eprintln!(
        "wrk {} ({} paths): {per_sec:.0} req/s, p99 {p99_ms:.2} ms",
        paths.first().map(String::as_str).unwrap_or(""),
        paths.len()
    );
    Ok(Rate { per_sec, p99_ms })
}

fn field<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.trim_start().strip_prefix(prefix))
}

/// wrk's `1.23ms`, `456.00us`, `1.20s`.
fn millis(v: &str) -> Option<f64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|n| n * scale)
}
