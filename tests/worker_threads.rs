//! `http.worker_threads`: query-api's runtime has as many threads as its
//! config names (as its start-up line reports them, read off the runtime
//! itself), and a value no machine needs stops it with one line.

use anyhow::{Result, ensure};
use foldcache::{Stack, eventually, foldcache_binary, http_status};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn query_api_runs_the_worker_threads_its_config_names() -> Result<()> {
    let stack = Stack::start(1, "").await?;
    // Two counts, so that neither can be the machine's default by chance.
    for n in ["1", "3"] {
        let mut api = stack.spawn_query_api_with(&[("FOLDCACHE__HTTP__WORKER_THREADS", n)])?;
        let line = eventually("query-api to listen", WAIT, || async {
            let log = std::fs::read_to_string(api.log_path()).unwrap_or_default();
            Ok(log
                .lines()
                .find(|l| l.contains("query-api listening"))
                .map(str::to_owned))
        })
        .await?;
        ensure!(
            line.contains(&format!("workers={n}")),
            "asked for {n} workers, started with: {line}"
        );
        // And it serves on them.
        let status = http_status(&format!("{}/healthz", stack.base_url())).await?;
        ensure!(status == 200, "/healthz answered {status}");
        ensure!(
            api.terminate(Duration::from_secs(10)),
            "query-api did not stop"
        );
    }
    Ok(())
}

#[test]
fn worker_threads_past_the_bound_stop_query_api_with_one_line() -> Result<()> {
    let out = std::process::Command::new(foldcache_binary("query-api")?)
        .env("FOLDCACHE__HTTP__WORKER_THREADS", "20000")
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1),
        "exit {:?}: {stderr}",
        out.status
    );
    ensure!(
        stderr.lines().count() == 1
            && stderr.starts_with(
                "error: configuration: http.worker_threads = 20000: must be at most 1024"
            ),
        "{stderr}"
    );
    Ok(())
}
