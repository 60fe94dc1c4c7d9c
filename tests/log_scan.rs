//! No HR value and no secret ever reaches a log.
//!
//! 1. A demo-scale run (10,000 employees, 10,000 teams, 10,000 permission
//!    records through `ingest generate`, as `scripts/dev demo` does) with
//!    tokens, foldcache's crates logging at `debug`, poison records, bad
//!    requests, refused and accepted admin actions and a rebuild: the logs of
//!    every process are scanned for every name, email, phone number, birth
//!    date and salary of the data set, and every token: 0 hits.
//! 2. `scripts/dev test` runs the ignored test here after the whole suite:
//!    it scans every log the integration tests wrote (`target/test-logs`)
//!    for the same data set's values and for every secret the tests use
//!    (string literals of the form `...-token-<hex>` / `...-pw-<hex>` in
//!    `tests/*.rs`).

use anyhow::{Context, Result, ensure};
use foldcache::{Process, Stack, eventually, foldcache_binary, test_log_dir};
use foldcache_ingest::generate::{GenOptions, Generator, Kind};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);
const ADMIN_TOKEN: &str = "scan-admin-token-6b1f04";
const HR_TOKEN: &str = "scan-hr-token-a93c27";
const DIRECTORY_TOKEN: &str = "scan-directory-token-4e8d15";

/// Values of the demo data set (seed 42) that must never be logged: text
/// values (names, emails, phones, birth dates, team names) and salaries
/// (matched as whole numbers).
struct HrValues {
    text: BTreeSet<String>,
    numbers: BTreeSet<String>,
}

fn hr_values() -> HrValues {
    let mut text = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    let events = Generator::new(GenOptions {
        seed: 42,
        employees: 10_000,
        teams: 10_000,
        updates: 0,
        deletes: 0,
    })
    .events();
    for e in events {
        let Some(v) = e.value else { continue };
        match e.kind {
            Kind::Employee => {
                for f in ["name", "name_en", "email", "phone", "birth_date"] {
                    if let Some(s) = v[f].as_str() {
                        text.insert(s.to_owned());
                    }
                }
                if let Some(n) = v["salary"]["amount"].as_i64() {
                    numbers.insert(n.to_string());
                }
            }
            Kind::Team => {
                if let Some(s) = v["name"].as_str() {
                    text.insert(s.to_owned());
                }
            }
            _ => {}
        }
    }
    HrValues { text, numbers }
}

/// Finds every value (text anywhere; a number only where it stands alone:
/// not inside a longer number or a timestamp's fraction) in one pass.
struct Scanner {
    patterns: Vec<(String, bool)>,
    automaton: aho_corasick::AhoCorasick,
}

impl Scanner {
    fn new(hr: &HrValues, secrets: &[String]) -> Self {
        let patterns: Vec<(String, bool)> = hr
            .text
            .iter()
            .chain(secrets)
            .map(|s| (s.clone(), false))
            .chain(hr.numbers.iter().map(|n| (n.clone(), true)))
            .collect();
        let automaton = aho_corasick::AhoCorasick::new(patterns.iter().map(|(p, _)| p))
            .expect("patterns compile");
        Self {
            patterns,
            automaton,
        }
    }

    fn hits(&self, log: &str) -> Vec<String> {
        let bytes = log.as_bytes();
        let mut found = BTreeSet::new();
        for m in self.automaton.find_overlapping_iter(log) {
            let (value, number) = &self.patterns[m.pattern().as_usize()];
            if *number {
                let before = m.start().checked_sub(1).map(|j| bytes[j]);
                let after = bytes.get(m.end()).copied();
                // Inside a longer word (a hex instance id such as
                // `fc83000e…`) it is not the number.
                if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'.')
                    || after.is_some_and(|b| b.is_ascii_alphanumeric())
                {
                    continue;
                }
            }
            found.insert(value.clone());
        }
        found.into_iter().collect()
    }
}

fn scan(files: &[PathBuf], hr: &HrValues, secrets: &[String]) -> Result<usize> {
    let scanner = Scanner::new(hr, secrets);
    let mut lines = 0;
    for f in files {
        let log = std::fs::read_to_string(f).with_context(|| f.display().to_string())?;
        lines += log.lines().count();
        let found = scanner.hits(&log);
        ensure!(
            found.is_empty(),
            "{} holds {} HR value(s) or secret(s), e.g. line {:?}",
            f.display(),
            found.len(),
            log.lines()
                .find(|l| found.iter().any(|v| l.contains(v.as_str())))
        );
    }
    Ok(lines)
}

#[test]
fn the_scanner_finds_what_it_looks_for() {
    let hr = hr_values();
    let name = hr.text.iter().next().unwrap().clone();
    let salary = hr.numbers.iter().next().unwrap().clone();
    let scanner = Scanner::new(&hr, &["x-token-00".to_owned()]);
    assert_eq!(scanner.hits(&format!("a {name} b")), vec![name]);
    assert_eq!(
        scanner.hits(&format!("amount={salary}\n")),
        vec![salary.clone()]
    );
    assert!(
        scanner
            .hits(&format!("t=22:17:43.{salary}Z 9{salary}"))
            .is_empty()
    );
    assert_eq!(scanner.hits("Bearer x-token-00").len(), 1);
}

fn token_toml(name: &str, token: &str, grants: &str, admin: bool) -> String {
    format!(
        "[[auth.tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\ngrants = {grants}\nadmin = {admin}\n",
        foldcache_common::secret::token_hash_hex(token)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_demo_scale_run_logs_no_hr_value_and_no_token() -> Result<()> {
    let admin_port = foldcache::free_port();
    let extra = format!(
        "[entities.employees.views]\ndirectory = [\"id\", \"name\", \"email\", \"team_id\", \"title\"]\n\n\
         [auth]\nanonymous = {{ teams = \"full\" }}\n\n{}{}{}",
        token_toml("scan-admin", ADMIN_TOKEN, "{}", true),
        token_toml(
            "scan-hr",
            HR_TOKEN,
            "{ employees = \"full\", permissions = \"full\" }",
            false
        ),
        token_toml(
            "scan-directory",
            DIRECTORY_TOKEN,
            "{ employees = \"directory\" }",
            false
        ),
    );
    let stack = Stack::start(3, &extra).await?;
    let debug = "info,foldcache_ingest=debug,foldcache_query_api=debug,foldcache_common=debug";
    let admin_listen = format!("127.0.0.1:{admin_port}");
    let ingest = stack.spawn_ingest_with(&[
        ("FOLDCACHE__LOG__FILTER", debug),
        ("FOLDCACHE__INGEST__ADMIN_LISTEN", &admin_listen),
        ("FOLDCACHE__INGEST__REBUILD_RETIRE_GRACE_MS", "500"),
    ])?;
    let api = stack.spawn_query_api_with(&[("FOLDCACHE__LOG__FILTER", debug)])?;
    let config = stack.config_path().to_string_lossy().into_owned();
    let mut generate = Process::spawn(
        "ingest-generate",
        &foldcache_binary("ingest")?,
        &[
            "--config",
            &config,
            "generate",
            "--employees",
            "10000",
            "--teams",
            "10000",
        ],
        &[("FOLDCACHE__LOG__FILTER", debug)],
    )?;
    ensure!(generate.wait(WAIT), "ingest generate failed");

    // Poison: values holding HR data that do not decode.
    let producer = stack.producer()?;
    let hr = hr_values();
    let a_name = hr.text.iter().next().context("a name")?.clone();
    for (key, value) in [
        ("E000001", format!("{{\"name\": \"{a_name}\", \"salary\": ")),
        ("bad key with spaces", format!("{{\"name\": \"{a_name}\"}}")),
        ("E000002", format!("[\"{a_name}\"]")),
    ] {
        stack
            .produce(
                &producer,
                &stack.topics.employees,
                Some(key.as_bytes()),
                Some(value.as_bytes()),
            )
            .await?;
    }

    let client = reqwest::Client::new();
    let base = stack.base_url();
    let last = format!("{base}/v1/employees/E010000");
    eventually("the data set to be served", WAIT, || {
        let (client, last) = (client.clone(), last.clone());
        async move {
            let r = client.get(&last).bearer_auth(HR_TOKEN).send().await?;
            Ok((r.status() == 200).then_some(()))
        }
    })
    .await?;
    // Requests of every kind: authorised, refused, bad, missing, batch.
    for (uri, token) in [
        ("/v1/employees/E000001", Some(HR_TOKEN)),
        ("/v1/employees/E000001", Some(DIRECTORY_TOKEN)),
        ("/v1/employees/E000001", None),
        ("/v1/employees/E000001", Some("not-a-token")),
        ("/v1/permissions/E000001", Some(DIRECTORY_TOKEN)),
        ("/v1/employees/E999999", Some(HR_TOKEN)),
        ("/v1/employees/%00bad", Some(HR_TOKEN)),
        ("/v1/employees?id=E000001&id=E000002", Some(DIRECTORY_TOKEN)),
        ("/v1/teams/T000001", None),
        // The propagation API: pages, filters (a value of the data set
        // among them), bad filters and cursors, the change feed.
        ("/v1/employees?limit=50", Some(HR_TOKEN)),
        ("/v1/employees?team_id=T000002", Some(DIRECTORY_TOKEN)),
        ("/v1/employees?email=nobody%40example.com", Some(HR_TOKEN)),
        ("/v1/employees?salary=5000000", Some(HR_TOKEN)),
        ("/v1/employees?cursor=Z2FyYmFnZQ", Some(HR_TOKEN)),
        ("/v1/permissions?system=github", Some(HR_TOKEN)),
        ("/v1/employees/changes", Some(HR_TOKEN)),
        (
            "/v1/employees/changes?since=Z2FyYmFnZQ",
            Some(DIRECTORY_TOKEN),
        ),
    ] {
        let mut req = client.get(format!("{base}{uri}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await?;
    }
    // Admin: refused (read token, unknown token), then a rebuild to the swap.
    let admin = format!("http://{admin_listen}/admin/rebuild");
    for t in [HR_TOKEN, "guess"] {
        client.post(&admin).bearer_auth(t).send().await?;
    }
    let r = client.post(&admin).bearer_auth(ADMIN_TOKEN).send().await?;
    ensure!(r.status() == 202, "rebuild: {}", r.status());
    let mut con = stack.redis.connection().await?;
    eventually("the rebuild to swap", WAIT, || {
        let mut con = con.clone();
        async move {
            let g = foldcache::live_generation(&mut con).await?;
            Ok((g == Some(2)).then_some(()))
        }
    })
    .await?;
    let _ = &mut con;

    let files = [
        ingest.log_path().to_owned(),
        api.log_path().to_owned(),
        generate.log_path().to_owned(),
    ];
    drop(api);
    drop(ingest);
    let secrets: Vec<String> = [
        ADMIN_TOKEN,
        HR_TOKEN,
        DIRECTORY_TOKEN,
        "not-a-token",
        "guess",
    ]
    .map(str::to_owned)
    .to_vec();
    let lines = scan(&files, &hr, &secrets)?;
    // The scan read real logs: debug lines of both binaries, the dead
    // letters and the audit.
    let all: String = files
        .iter()
        .map(std::fs::read_to_string)
        .collect::<Result<_, _>>()?;
    assert!(lines > 50, "only {lines} log lines");
    for expected in ["dead", "audit", "DEBUG", "rebuild"] {
        assert!(all.contains(expected), "no {expected:?} in the logs");
    }
    Ok(())
}

/// Secrets the tests use: string literals like `"ops-admin-token-3c9e"`.
fn test_secrets() -> Result<Vec<String>> {
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")];
    let mut files = Vec::new();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                files.push(path);
            }
        }
    }
    let mut out = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(f)?;
        for lit in text.split('"').skip(1).step_by(2) {
            let parts: Vec<&str> = lit.split('-').collect();
            let n = parts.len();
            if n >= 3
                && matches!(parts[n - 2], "token" | "pw")
                && parts[n - 1].len() >= 4
                && parts[n - 1].bytes().all(|b| b.is_ascii_hexdigit())
            {
                out.insert(lit.to_owned());
            }
        }
    }
    Ok(out.into_iter().collect())
}

/// Run by `scripts/dev test` after the suite: every log of the integration
/// tests' processes.
#[test]
#[ignore = "scans the logs of a whole test run; scripts/dev test runs it last"]
fn the_integration_tests_logged_no_hr_value_and_no_secret() -> Result<()> {
    let secrets = test_secrets()?;
    ensure!(secrets.len() >= 8, "found only {secrets:?}");
    let files: Vec<PathBuf> = std::fs::read_dir(test_log_dir())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .filter(|p| {
            // foldcache's own processes (brokers, Redis, caches are not ours).
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with("ingest") || name.starts_with("query-api")
        })
        .collect();
    ensure!(files.len() > 20, "only {} log files", files.len());
    let lines = scan(&files, &hr_values(), &secrets)?;
    println!(
        "{} log files, {lines} lines: no HR value, no secret",
        files.len()
    );
    Ok(())
}
