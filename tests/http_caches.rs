//! query-api behind real shared caches (Debian's nginx and Varnish) with a
//! short s-maxage: the second request is a cache hit; after expiry the cache
//! revalidates and query-api answers 304 (counted in its own metrics); after
//! the entity changes in Kafka the cache serves the new body and ETag.

use anyhow::{Context, Result};
use foldcache::{Process, Stack, eventually, free_port};
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);
const CACHE_CONTROL: &str = "[entities.employees.cache_control]\nvisibility = \"public\"\n\
    max_age_secs = 2\ns_maxage_secs = 2\nstale_while_revalidate_secs = 0\nstale_if_error_secs = 0\n";

/// Sum of query-api's `foldcache_http_requests_total` for one status.
async fn served(stack: &Stack, status: u16) -> Result<u64> {
    let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", stack.metrics_port))
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| {
            l.starts_with("foldcache_http_requests_total")
                && l.contains(&format!("status=\"{status}\""))
                && l.contains("/v1/{entity}/{id}")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

async fn fetch(url: &str) -> Result<reqwest::Response> {
    Ok(reqwest::Client::new()
        .get(url)
        .header("accept-encoding", "gzip")
        .send()
        .await?)
}

fn start_nginx(dir: &Path, port: u16, upstream: u16) -> Result<Process> {
    std::fs::create_dir_all(dir.join("cache"))?;
    let conf = format!(
        "user root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  proxy_cache_path {d}/cache keys_zone=fc:1m;\n  proxy_temp_path {d}/tmp;\n\
           client_body_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp; uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n\
           server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://127.0.0.1:{upstream};\n\
               proxy_http_version 1.1;\n      proxy_cache fc;\n      proxy_cache_revalidate on;\n\
               add_header X-Cache-Status $upstream_cache_status always;\n    }}\n  }}\n}}\n",
        d = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    Process::spawn(
        "nginx",
        Path::new("/usr/sbin/nginx"),
        &[
            "-c",
            &path.to_string_lossy(),
            "-p",
            &dir.to_string_lossy(),
            "-g",
            "daemon off;",
        ],
        &[],
    )
}

fn start_varnish(dir: &Path, port: u16, upstream: u16) -> Result<Process> {
    std::fs::create_dir_all(dir)?;
    // keep: expired objects stay for conditional revalidation (304s).
    let vcl = format!(
        "vcl 4.1;\nbackend default {{ .host = \"127.0.0.1\"; .port = \"{upstream}\"; }}\n\
         sub vcl_backend_response {{ set beresp.grace = 0s; set beresp.keep = 1h; }}\n"
    );
    let path = dir.join("default.vcl");
    std::fs::write(&path, vcl)?;
    Process::spawn(
        "varnishd",
        Path::new("/usr/sbin/varnishd"),
        &[
            "-F",
            "-a",
            &format!("127.0.0.1:{port}"),
            "-f",
            &path.to_string_lossy(),
            "-n",
            &dir.join("work").to_string_lossy(),
            "-s",
            "malloc,16m",
        ],
        &[],
    )
}

/// Stops a server with SIGTERM (its workers go with it), not SIGKILL.
struct Graceful(Process);

impl Drop for Graceful {
    fn drop(&mut self) {
        self.0.terminate(Duration::from_secs(5));
    }
}

/// Runs the hit / revalidate / update scenario through the cache at `port`.
async fn scenario(
    stack: &Stack,
    port: u16,
    is_hit: impl Fn(&reqwest::Response) -> bool,
    id: &str,
) -> Result<()> {
    let producer = stack.producer()?;
    let topic = &stack.topics.employees;
    stack
        .produce(
            &producer,
            topic,
            Some(id.as_bytes()),
            Some(br#"{"name":"v1"}"#),
        )
        .await?;
    let direct = format!("{}/v1/employees/{id}", stack.base_url());
    eventually("the entity to be served", WAIT, || async {
        Ok((fetch(&direct).await?.status() == 200).then_some(()))
    })
    .await?;

    let url = format!("http://127.0.0.1:{port}/v1/employees/{id}");
    let first = eventually("the cache to answer", WAIT, || async {
        Ok(fetch(&url).await.ok().filter(|r| r.status() == 200))
    })
    .await?;
    let tag1 = first.headers()["etag"].to_str()?.to_owned();
    let second = fetch(&url).await?;
    assert_eq!(second.status(), 200);
    assert!(
        is_hit(&second),
        "second request is a cache hit: {:?}",
        second.headers()
    );

    // After s-maxage the cache revalidates: query-api answers 304.
    let before = served(stack, 304).await?;
    // nginx keeps expiry in whole seconds: max-age=2 can last up to 3 s.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let third = fetch(&url).await?;
    let third_headers = format!("{:?}", third.headers());
    assert_eq!(third.status(), 200);
    assert_eq!(third.headers()["etag"].to_str()?, tag1);
    assert!(third.text().await?.contains("v1"));
    let counted = eventually(
        "query-api to count a 304",
        Duration::from_secs(5),
        || async { Ok((served(stack, 304).await? > before).then_some(())) },
    )
    .await;
    if let Err(e) = counted {
        anyhow::bail!(
            "{e}; third response: {third_headers}; 304s {before}, 200s {}",
            served(stack, 200).await?
        );
    }

    // The entity changes in Kafka: after expiry, new body and new ETag.
    stack
        .produce(
            &producer,
            topic,
            Some(id.as_bytes()),
            Some(br#"{"name":"v2"}"#),
        )
        .await?;
    eventually("the update to be folded", WAIT, || async {
        Ok(fetch(&direct)
            .await?
            .text()
            .await?
            .contains("v2")
            .then_some(()))
    })
    .await?;
    let r = eventually("the cache to serve the update", WAIT, || async {
        let r = fetch(&url).await?;
        let tag = r.headers()["etag"].to_str()?.to_owned();
        let body = r.text().await?;
        Ok(body.contains("v2").then_some(tag))
    })
    .await?;
    assert_ne!(
        r.trim_start_matches("W/"),
        tag1.trim_start_matches("W/"),
        "a new ETag with the new body"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_and_varnish_cache_hit_revalidate_with_304_and_pick_up_changes() -> Result<()> {
    let stack = Stack::start(1, CACHE_CONTROL).await?;
    let _ingest = stack.spawn_ingest()?;
    let _api = stack.spawn_query_api()?;
    stack.wait_ready(WAIT).await?;
    let dir = std::env::temp_dir().join(foldcache::unique("caches"));

    let nginx_port = free_port();
    let _nginx =
        Graceful(start_nginx(&dir.join("nginx"), nginx_port, stack.http_port).context("nginx")?);
    scenario(
        &stack,
        nginx_port,
        |r| {
            r.headers()
                .get("x-cache-status")
                .is_some_and(|v| v == "HIT")
        },
        "N1",
    )
    .await
    .context("nginx")?;

    let varnish_port = free_port();
    let _varnish = Graceful(
        start_varnish(&dir.join("varnish"), varnish_port, stack.http_port).context("varnish")?,
    );
    // X-Varnish carries two transaction ids on a hit.
    scenario(
        &stack,
        varnish_port,
        |r| {
            r.headers()
                .get("x-varnish")
                .is_some_and(|v| v.to_str().is_ok_and(|s| s.contains(' ')))
        },
        "V1",
    )
    .await
    .context("varnish")?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// ingest's purge hook against Varnish's xkey: a change in Kafka reaches
/// clients of the cache long before the cached copy's s-maxage runs out.
#[tokio::test(flavor = "multi_thread")]
async fn ingest_purges_varnish_by_surrogate_key_when_an_entity_changes() -> Result<()> {
    let varnish_port = free_port();
    let extra = format!(
        "[entities.employees.cache_control]\nvisibility = \"public\"\nmax_age_secs = 600\ns_maxage_secs = 600\n\
         stale_while_revalidate_secs = 0\n\n[ingest.purge]\nurl = \"http://127.0.0.1:{varnish_port}/\"\n\
         method = \"PURGE\"\nheader = \"xkey-purge\"\n"
    );
    let stack = Stack::start(1, &extra).await?;
    let dir = std::env::temp_dir().join(foldcache::unique("xkey"));
    std::fs::create_dir_all(&dir)?;
    let vcl = format!(
        "vcl 4.1;\nimport xkey;\nbackend default {{ .host = \"127.0.0.1\"; .port = \"{}\"; }}\n\
         sub vcl_recv {{ if (req.method == \"PURGE\") {{\n\
           set req.http.n-gone = xkey.purge(req.http.xkey-purge);\n\
           return (synth(200, \"Purged \" + req.http.n-gone)); }} }}\n",
        stack.http_port
    );
    std::fs::write(dir.join("xkey.vcl"), vcl)?;
    let _varnish = Graceful(Process::spawn(
        "varnishd",
        Path::new("/usr/sbin/varnishd"),
        &[
            "-F",
            "-a",
            &format!("127.0.0.1:{varnish_port}"),
            "-f",
            &dir.join("xkey.vcl").to_string_lossy(),
            "-n",
            &dir.join("work").to_string_lossy(),
            "-s",
            "malloc,16m",
        ],
        &[],
    )?);
    // query-api names cache tags in the header xkey reads.
    let api = foldcache::Process::spawn(
        "query-api",
        &foldcache::foldcache_binary("query-api")?,
        &["--config", &stack.config_path().to_string_lossy()],
        &[("FOLDCACHE__HTTP__SURROGATE_KEY_HEADER", "xkey")],
    )?;
    let _ingest = stack.spawn_ingest()?;
    stack.wait_ready(WAIT).await?;
    let producer = stack.producer()?;
    stack
        .produce(
            &producer,
            &stack.topics.employees,
            Some(b"P1"),
            Some(br#"{"name":"before"}"#),
        )
        .await?;
    let url = format!("http://127.0.0.1:{varnish_port}/v1/employees/P1");
    eventually("Varnish to serve P1", WAIT, || async {
        let r = fetch(&url).await.ok().filter(|r| r.status() == 200);
        Ok(match r {
            Some(r) => r.text().await?.contains("before").then_some(()),
            None => None,
        })
    })
    .await?;
    let hit = fetch(&url).await?;
    assert!(hit.headers()["x-varnish"].to_str()?.contains(' '), "cached");

    stack
        .produce(
            &producer,
            &stack.topics.employees,
            Some(b"P1"),
            Some(br#"{"name":"after"}"#),
        )
        .await?;
    eventually(
        "the purge to reach Varnish (s-maxage is 600 s)",
        Duration::from_secs(10),
        || async {
            Ok(fetch(&url)
                .await?
                .text()
                .await?
                .contains("after")
                .then_some(()))
        },
    )
    .await?;
    drop(api);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

const AUDIENCES: &str = r#"
[entities.employees.cache_control]
visibility = "public"
max_age_secs = 60
s_maxage_secs = 60

[entities.employees.views]
directory = ["id", "name"]

[auth]
anonymous = { employees = "directory" }

[[auth.tokens]]
name = "payroll"
sha256 = "TOKEN_HR"
grants = { employees = "full" }

[[auth.tokens]]
name = "intranet"
sha256 = "TOKEN_DIR"
grants = { employees = "directory" }
"#;
const HR_TOKEN: &str = "cache-hr-token-51ac";
const DIRECTORY_TOKEN: &str = "cache-directory-token-0d7e";

async fn fetch_as(
    url: &str,
    token: Option<&str>,
) -> Result<(reqwest::header::HeaderMap, serde_json::Value)> {
    let mut req = reqwest::Client::new().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await?;
    anyhow::ensure!(r.status() == 200, "{url}: {}", r.status());
    let headers = r.headers().clone();
    Ok((headers, r.json().await?))
}

/// Through nginx and Varnish: a token holder's full record is never stored
/// for anyone else (it is `private`), anonymous callers get the public
/// directory view (cached, a hit the second time), and a token holder never
/// gets the cached anonymous copy (`Vary: Authorization`).
#[tokio::test(flavor = "multi_thread")]
async fn shared_caches_never_hand_one_audience_s_response_to_another() -> Result<()> {
    let config = AUDIENCES
        .replace(
            "TOKEN_HR",
            &foldcache_common::secret::token_hash_hex(HR_TOKEN),
        )
        .replace(
            "TOKEN_DIR",
            &foldcache_common::secret::token_hash_hex(DIRECTORY_TOKEN),
        );
    let stack = Stack::start(1, &config).await?;
    let _ingest = stack.spawn_ingest()?;
    let _api = stack.spawn_query_api()?;
    let producer = stack.producer()?;
    stack
        .produce(
            &producer,
            &stack.topics.employees,
            Some(b"A1"),
            Some(br#"{"id":"A1","name":"Kim","salary":{"amount":91000,"currency":"USD"}}"#),
        )
        .await?;
    let direct = format!("{}/v1/employees/A1", stack.base_url());
    eventually("A1 to be served", WAIT, || async {
        let r = reqwest::Client::new()
            .get(&direct)
            .bearer_auth(HR_TOKEN)
            .send()
            .await?;
        Ok((r.status() == 200).then_some(()))
    })
    .await?;
    let dir = std::env::temp_dir().join(foldcache::unique("audiences"));
    let (nginx_port, varnish_port) = (free_port(), free_port());
    let _nginx = Graceful(start_nginx(
        &dir.join("nginx"),
        nginx_port,
        stack.http_port,
    )?);
    let _varnish = Graceful(start_varnish(
        &dir.join("varnish"),
        varnish_port,
        stack.http_port,
    )?);
    for (cache, port) in [("nginx", nginx_port), ("varnish", varnish_port)] {
        let url = format!("http://127.0.0.1:{port}/v1/employees/A1");
        eventually(&format!("{cache} to answer"), WAIT, || async {
            Ok(reqwest::get(&url).await.ok().filter(|r| r.status() == 200))
        })
        .await?;
        // The token holder first: full record, private.
        for _ in 0..2 {
            let (headers, body) = fetch_as(&url, Some(HR_TOKEN)).await?;
            assert_eq!(body["salary"]["amount"], 91000, "{cache}");
            assert!(
                headers["cache-control"].to_str()?.starts_with("private"),
                "{cache}"
            );
        }
        // Anonymous callers never see it, even right after.
        for _ in 0..3 {
            let (_, body) = fetch_as(&url, None).await?;
            assert_eq!(
                body,
                serde_json::json!({"id": "A1", "name": "Kim"}),
                "{cache}: the directory view"
            );
        }
        // The directory token gets its view; the hr token still the full
        // record, never the cached anonymous copy.
        let (_, body) = fetch_as(&url, Some(DIRECTORY_TOKEN)).await?;
        assert_eq!(
            body,
            serde_json::json!({"id": "A1", "name": "Kim"}),
            "{cache}"
        );
        let (_, body) = fetch_as(&url, Some(HR_TOKEN)).await?;
        assert_eq!(body["salary"]["amount"], 91000, "{cache}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
