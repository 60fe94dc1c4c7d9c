//! The shipped alert rules and dashboard (deploy/prometheus, deploy/grafana):
//!
//! - `promtool check rules` accepts the rules and `promtool test rules` runs
//!   their unit tests (each alert fires when it should, not before its
//!   `for`, and not on a healthy deployment);
//! - every metric they name is one foldcache's code exports, and every panel
//!   query is valid PromQL;
//! - a real Prometheus scraping a real ingest and query-api (demo data,
//!   requests, a poison record, a rebuild, a Redis flush, a rate-limited
//!   token, CDN purges) finds a series for every panel query.

use anyhow::{Context, Result, ensure};
use foldcache::{Process, Stack, eventually, foldcache_binary, free_port};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rules() -> PathBuf {
    root().join("deploy/prometheus/foldcache.rules.yml")
}

fn dashboard() -> Result<Value> {
    let path = root().join("deploy/grafana/foldcache.json");
    Ok(serde_json::from_str(&std::fs::read_to_string(&path)?)?)
}

/// Runs `promtool` with `args`; returns its output, failing if it fails.
fn promtool(args: &[&str]) -> Result<String> {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .context("running promtool (Debian's prometheus package: scripts/dev install)")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "promtool {args:?} failed:\n{text}");
    Ok(text)
}

/// Every panel query of the dashboard, with the job variables resolved.
fn panel_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                let expr = expr
                    .replace("$ingest_job", "foldcache-ingest")
                    .replace("$query_job", "foldcache-query-api");
                let title = format!(
                    "{} / {}",
                    p["title"].as_str().unwrap_or("?"),
                    t["legendFormat"].as_str().unwrap_or("?")
                );
                out.push((title, expr));
            }
        }
    }
    out
}

/// `foldcache_*` metric names in `text`, histogram suffixes removed.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("foldcache_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let name = name
            .strip_suffix("_bucket")
            .or_else(|| name.strip_suffix("_sum"))
            .or_else(|| name.strip_suffix("_count"))
            .unwrap_or(name);
        names.insert(name.to_owned());
        rest = &tail[end..];
    }
    names
}

/// The source text of every `.rs` file under `dir`.
fn sources(dir: &Path) -> Result<String> {
    let mut text = String::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            text.push_str(&sources(&path)?);
        } else if path.extension().is_some_and(|e| e == "rs") {
            text.push_str(&std::fs::read_to_string(&path)?);
        }
    }
    Ok(text)
}

#[test]
fn promtool_accepts_the_rules_and_the_example_config() -> Result<()> {
    let out = promtool(&["check", "rules", &rules().to_string_lossy()])?;
    assert!(out.contains("SUCCESS: 9 rules found"), "{out}");
    let config = root().join("deploy/prometheus/prometheus.yml");
    promtool(&["check", "config", &config.to_string_lossy()])?;
    Ok(())
}

#[test]
fn the_rules_unit_tests_pass() -> Result<()> {
    let tests = root().join("deploy/prometheus/foldcache.rules.test.yml");
    let out = promtool(&["test", "rules", &tests.to_string_lossy()])?;
    assert!(out.contains("SUCCESS"), "{out}");
    Ok(())
}

#[test]
fn the_rules_unit_tests_can_fail() -> Result<()> {
    // A rule that never fires must fail the unit tests: they test something.
    let dir = tempfile::tempdir()?;
    let broken = std::fs::read_to_string(rules())?.replace(
        "expr: max without (instance) (foldcache_ingest_partition_stalled) == 1",
        "expr: max without (instance) (foldcache_ingest_partition_stalled) == 2",
    );
    std::fs::write(dir.path().join("foldcache.rules.yml"), broken)?;
    std::fs::copy(
        root().join("deploy/prometheus/foldcache.rules.test.yml"),
        dir.path().join("foldcache.rules.test.yml"),
    )?;
    let out = Command::new("promtool")
        .args(["test", "rules", "foldcache.rules.test.yml"])
        .current_dir(dir.path())
        .output()?;
    assert!(!out.status.success(), "a broken rule passed its unit tests");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("FoldcachePartitionStalled"), "{text}");
    Ok(())
}

#[test]
fn every_metric_in_the_rules_and_the_dashboard_is_exported_by_the_code() -> Result<()> {
    let code = sources(&root().join("ingest/src"))? + &sources(&root().join("query-api/src"))?;
    let rule_text: String = std::fs::read_to_string(rules())?
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let mut used = metric_names(&rule_text);
    let queries = panel_queries(&dashboard()?);
    assert!(queries.len() >= 20, "{} panel queries", queries.len());
    for (_, q) in &queries {
        used.extend(metric_names(q));
    }
    let missing: Vec<&String> = used
        .iter()
        .filter(|n| !code.contains(&format!("\"{n}\"")))
        .collect();
    assert!(missing.is_empty(), "not exported by any code: {missing:?}");
    // And the dashboard shows every metric the code exports.
    let dash_names: BTreeSet<String> = queries.iter().flat_map(|(_, q)| metric_names(q)).collect();
    let exported = metric_names(
        &code
            .lines()
            .filter(|l| l.contains("!(\"foldcache_"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    assert!(exported.len() >= 20, "{exported:?}");
    let unshown: Vec<&String> = exported.difference(&dash_names).collect();
    assert!(unshown.is_empty(), "exported but on no panel: {unshown:?}");
    Ok(())
}

#[test]
fn every_panel_query_is_valid_promql() -> Result<()> {
    // promtool parses each query as a recording rule (JSON is YAML).
    let rules: Vec<Value> = panel_queries(&dashboard()?)
        .into_iter()
        .enumerate()
        .map(|(i, (_, expr))| serde_json::json!({"record": format!("panel:q{i}"), "expr": expr}))
        .collect();
    let file = serde_json::json!({"groups": [{"name": "panels", "rules": rules}]});
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("panels.yml");
    std::fs::write(&path, serde_json::to_string_pretty(&file)?)?;
    promtool(&["check", "rules", &path.to_string_lossy()])?;
    Ok(())
}

/// Metrics that only an event this test does not cause would produce: the
/// propagation API's feed fan-out, event streams and unique-index
/// conflicts (tests/propagation_api.rs and tests/propagation.rs drive
/// them). Redis going back in time is caused below, by a restore from an
/// older snapshot.
const EVENT_ONLY: &[&str] = &[
    "foldcache_http_feed_entries_total",
    "foldcache_http_sse_connections",
    "foldcache_http_sse_ended_total",
    "foldcache_ingest_unique_conflicts_total",
];

const ADMIN_TOKEN: &str = "alerts-admin-token-5d20c1";
const LIMITED_TOKEN: &str = "alerts-limited-token-9e41b7";

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_finds_a_series_for_every_panel_on_a_running_stack() -> Result<()> {
    use foldcache_common::secret::token_hash_hex;
    // A CDN purge endpoint that accepts everything.
    let purge = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let purge_port = purge.local_addr()?.port();
    let purge_task = tokio::spawn(async move {
        let app = axum::Router::new().fallback(|| async { "purged" });
        let _ = axum::serve(purge, app).await;
    });
    let extra = format!(
        r#"
[ingest.purge]
url = "http://127.0.0.1:{purge_port}/"

[auth]
anonymous = {{ employees = "full", teams = "full" }}

[[auth.tokens]]
name = "ops"
sha256 = "{admin}"
admin = true

[[auth.tokens]]
name = "limited"
sha256 = "{limited}"
grants = {{ employees = "full" }}
rate_per_sec = 1
burst = 1
"#,
        admin = token_hash_hex(ADMIN_TOKEN),
        limited = token_hash_hex(LIMITED_TOKEN),
    );
    let stack = Stack::start(2, &extra).await?;
    let config = stack.config_path().to_string_lossy().into_owned();
    // The demo's data set, smaller.
    let out = tokio::process::Command::new(foldcache_binary("ingest")?)
        .args(["--config", &config, "generate"])
        .args(["--employees", "300", "--teams", "50"])
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let admin_port = free_port();
    let admin_listen = format!("127.0.0.1:{admin_port}");
    let mut ingest =
        stack.spawn_ingest_with(&[("FOLDCACHE__INGEST__ADMIN_LISTEN", &admin_listen)])?;
    let _api = stack.spawn_query_api()?;

    // Prometheus, scraping both every second.
    let prom_dir = tempfile::tempdir()?;
    let prom_port = free_port();
    std::fs::write(
        prom_dir.path().join("prometheus.yml"),
        format!(
            r#"global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {rules}
scrape_configs:
  - job_name: foldcache-ingest
    static_configs:
      - targets: ["127.0.0.1:{admin_port}"]
  - job_name: foldcache-query-api
    static_configs:
      - targets: ["127.0.0.1:{metrics}"]
"#,
            rules = rules().display(),
            metrics = stack.metrics_port,
        ),
    )?;
    let prom_config = prom_dir.path().join("prometheus.yml");
    let tsdb = prom_dir.path().join("data");
    let _prometheus = Process::spawn(
        "prometheus",
        Path::new("prometheus"),
        &[
            &format!("--config.file={}", prom_config.display()),
            &format!("--storage.tsdb.path={}", tsdb.display()),
            &format!("--web.listen-address=127.0.0.1:{prom_port}"),
        ],
        &[],
    )?;
    let start = foldcache_common::runtime::now_ms() as f64 / 1000.0;

    stack.wait_ready(WAIT).await?;
    let http = reqwest::Client::new();
    let base = stack.base_url();
    // 200, 304, 404 and 429 answers.
    let ok = http
        .get(format!("{base}/v1/employees/E000001"))
        .send()
        .await?;
    ensure!(ok.status() == 200, "{}", ok.status());
    let etag = ok.headers()["etag"].to_str()?.to_owned();
    let not_modified = http
        .get(format!("{base}/v1/employees/E000001"))
        .header("if-none-match", &etag)
        .send()
        .await?;
    ensure!(not_modified.status() == 304);
    ensure!(
        http.get(format!("{base}/v1/employees/E999999"))
            .send()
            .await?
            .status()
            == 404
    );
    eventually("a 429 for the rate-limited token", WAIT, || {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let s = http
                .get(format!("{base}/v1/employees/E000002"))
                .bearer_auth(LIMITED_TOKEN)
                .send()
                .await?
                .status();
            Ok((s == 429).then_some(()))
        }
    })
    .await?;
    // A poison record.
    let producer = stack.producer()?;
    stack
        .produce(
            &producer,
            &stack.topics.employees,
            Some(b"E000003"),
            Some(b"{not json"),
        )
        .await?;
    // A rebuild, to its swap.
    let started = http
        .post(format!("http://{admin_listen}/admin/rebuild"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?;
    ensure!(started.status() == 202, "{}", started.status());
    let mut con = stack.redis.connection().await?;
    eventually("the rebuild to swap", WAIT, || {
        let mut con = con.clone();
        async move { Ok((foldcache::live_generation(&mut con).await? == Some(2)).then_some(())) }
    })
    .await?;
    // Redis loses its data; the cache replays.
    let () = redis::cmd("FLUSHALL").query_async(&mut con).await?;
    eventually("the replay to begin", WAIT, || {
        let mut con = con.clone();
        async move { Ok((foldcache::live_generation(&mut con).await? == Some(1)).then_some(())) }
    })
    .await?;
    stack.wait_ready(WAIT).await?;
    // Redis goes back in time: restored from a snapshot older than what
    // ingest acknowledged since. Ingest notices and replays.
    let rdb = std::env::temp_dir()
        .join(foldcache::unique("alerts-"))
        .with_extension("rdb");
    stack.redis.snapshot(&rdb).await?;
    for i in 0..20 {
        let key = format!("E9{i:05}");
        let body = format!("{{\"id\":\"{key}\",\"name\":\"after the snapshot\"}}");
        stack
            .produce(
                &producer,
                &stack.topics.employees,
                Some(key.as_bytes()),
                Some(body.as_bytes()),
            )
            .await?;
    }
    eventually("the records after the snapshot to be folded", WAIT, || {
        let mut con = con.clone();
        async move {
            let g = foldcache::live_generation(&mut con).await?.unwrap_or(0);
            let n: u64 = redis::cmd("EXISTS")
                .arg(format!("fc:g{g}:employees:E900019"))
                .query_async(&mut con)
                .await?;
            Ok((n == 1).then_some(()))
        }
    })
    .await?;
    stack.redis.kill();
    stack.redis.start_again(Some(&rdb)).await?;
    let _ = std::fs::remove_file(&rdb);
    stack.wait_ready(WAIT).await?;
    // Prometheus has at least two samples of everything so far (rates need
    // two) before the restart resets ingest's counters.
    let prom = format!("http://127.0.0.1:{prom_port}");
    let names: BTreeSet<String> = panel_queries(&dashboard()?)
        .iter()
        .flat_map(|(_, q)| metric_names(q))
        .filter(|n| {
            !EVENT_ONLY.contains(&n.as_str()) && n != "foldcache_ingest_replay_skipped_total"
        })
        .collect();
    for name in &names {
        // A histogram's samples are its `_count`'s.
        let query =
            format!("count_over_time({name}[10m]) >= 2 or count_over_time({name}_count[10m]) >= 2");
        eventually(&format!("two samples of {name}"), WAIT, || {
            let (http, prom, query) = (http.clone(), prom.clone(), query.clone());
            async move {
                let r: Value = http
                    .get(format!("{prom}/api/v1/query"))
                    .query(&[("query", query.as_str())])
                    .send()
                    .await?
                    .json()
                    .await?;
                Ok(r["data"]["result"]
                    .as_array()
                    .is_some_and(|a| !a.is_empty())
                    .then_some(()))
            }
        })
        .await?;
    }
    // The poison record and the flush fired their alerts.
    let employees = stack.topics.employees.clone();
    eventually("the dead-letter and went-back alerts", WAIT, || {
        let (http, prom, employees) = (http.clone(), prom.clone(), employees.clone());
        async move {
            let alerts: Value = http
                .get(format!("{prom}/api/v1/alerts"))
                .send()
                .await?
                .json()
                .await?;
            let firing = |name: &str| {
                alerts["data"]["alerts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|a| {
                        a["labels"]["alertname"] == name
                            && a["state"] == "firing"
                            && (name != "FoldcacheDeadLettersRising"
                                || (a["labels"]["reason"] == "invalid_json"
                                    && a["labels"]["topic"] == employees.as_str()))
                    })
            };
            Ok((firing("FoldcacheDeadLettersRising") && firing("FoldcacheWentBack")).then_some(()))
        }
    })
    .await?;
    // A restart: the new process replays each partition from its
    // beginning and skips what Redis holds.
    ensure!(ingest.terminate(WAIT), "ingest did not stop cleanly");
    let _ingest = stack.spawn_ingest_with(&[("FOLDCACHE__INGEST__ADMIN_LISTEN", &admin_listen)])?;
    stack.wait_ready(WAIT).await?;

    // Every panel query finds at least one series over the test's span.
    let mut missing: Vec<(String, String)> = panel_queries(&dashboard()?)
        .into_iter()
        .filter(|(_, expr)| {
            !metric_names(expr)
                .iter()
                .all(|n| EVENT_ONLY.contains(&n.as_str()))
        })
        .collect();
    let waiting = std::time::Instant::now();
    while !missing.is_empty() {
        let end = foldcache_common::runtime::now_ms() as f64 / 1000.0;
        let mut still = Vec::new();
        for (title, expr) in missing {
            let r: Value = http
                .get(format!("{prom}/api/v1/query_range"))
                .query(&[
                    ("query", expr.as_str()),
                    ("start", &start.to_string()),
                    ("end", &end.to_string()),
                    ("step", "1"),
                ])
                .send()
                .await?
                .json()
                .await?;
            ensure!(r["status"] == "success", "{title}: {r}");
            let found = r["data"]["result"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|s| s["values"].as_array().is_some_and(|v| !v.is_empty()))
            });
            if !found {
                still.push((title, expr));
            }
        }
        missing = still;
        ensure!(
            missing.is_empty() || waiting.elapsed() < WAIT,
            "no series for these panels: {missing:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The rules load in a real Prometheus too.
    let rules_state: Value = http
        .get(format!("{prom}/api/v1/rules"))
        .send()
        .await?
        .json()
        .await?;
    let loaded = rules_state["data"]["groups"][0]["rules"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(loaded, 9, "{rules_state}");
    purge_task.abort();
    Ok(())
}
