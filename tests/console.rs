//! The web console as an operator uses it, in headless Chromium against a
//! real broker, Redis and `ingest` (screenshots in
//! `target/screenshots/console/`):
//!
//! 1. a read token is refused; an admin token signs in;
//! 2. a poison record while Redis refuses writes: its dead letter and the
//!    stalled partition appear on the overview by themselves (live
//!    updates), and the stall clears when Redis accepts writes again;
//! 3. a rebuild started from the rebuild page (after a confirmation) is
//!    followed to its swap and clean-up;
//! 4. after the fix (a wider `ingest.max_members`, ingest restarted) the
//!    dead letter is re-driven from the dead-letters page (dry run, then
//!    confirmation) and folded;
//! 5. the lookup shows an entity's status, ETag, `_fc` source and TTL; its
//!    values only to an admin token whose grant covers them;
//!
//! and no page's HTML ever holds an HR value of the data set for a token
//! without the right. Bad requests get problem+json; every action is in the
//! audit log.

mod support;

use anyhow::{Context, Result, ensure};
use foldcache::{Stack, eventually, foldcache_binary, free_port};
use foldcache_common::secret::token_hash_hex;
use foldcache_ingest::generate::{GenOptions, Generator, Kind};
use redis::AsyncCommands;
use std::collections::BTreeSet;
use std::time::Duration;
use support::browser::Browser;

const WAIT: Duration = Duration::from_secs(90);
const OPS_TOKEN: &str = "console-ops-token-3e7a90";
const AUDITOR_TOKEN: &str = "console-auditor-token-b2c481";
const READER_TOKEN: &str = "console-reader-token-5f0d36";

/// Text values of the generated employees (names, emails, phones, birth
/// dates, salaries as text) that a token without a grant must never see.
fn hr_values(employees: usize, teams: usize) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for e in Generator::new(GenOptions {
        seed: 42,
        employees,
        teams,
        updates: 0,
        deletes: 0,
    })
    .events()
    {
        if !matches!(e.kind, Kind::Employee) {
            continue;
        }
        let Some(v) = e.value else { continue };
        for f in ["name", "name_en", "email", "phone", "birth_date"] {
            if let Some(s) = v[f].as_str() {
                out.insert(s.to_owned());
            }
        }
    }
    out
}

/// What a screen reader needs of a page: a language, one `<h1>`, every
/// visible form control labelled, every table captioned.
fn assert_accessible(html: &str, page: &str) -> Result<()> {
    ensure!(html.contains("<html lang=\"en\""), "{page}: no lang");
    ensure!(html.matches("<h1").count() == 1, "{page}: one h1");
    ensure!(
        html.matches("<table").count() == html.matches("<caption").count(),
        "{page}: a table without a caption"
    );
    for tag in html
        .split('<')
        .filter(|t| t.starts_with("input") || t.starts_with("select"))
    {
        if tag.contains("type=\"hidden\"") {
            continue;
        }
        let id = tag
            .split("id=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .with_context(|| format!("{page}: a control without an id: <{tag}"))?;
        ensure!(
            html.contains(&format!("for=\"{id}\"")),
            "{page}: no label for #{id}"
        );
    }
    Ok(())
}

fn assert_no_hr_value(html: &str, values: &BTreeSet<String>, page: &str) -> Result<()> {
    let leaked: Vec<&String> = values
        .iter()
        .filter(|v| html.contains(v.as_str()))
        .collect();
    ensure!(
        leaked.is_empty(),
        "{page}: HR values in the page: {leaked:?}"
    );
    Ok(())
}

/// A poison record: wider than `ingest.max_members = 30`.
fn wide_employee() -> String {
    let mut m = serde_json::Map::new();
    m.insert("name".into(), "Poison Wide-Person".into());
    m.insert(
        "salary".into(),
        serde_json::json!({"amount": 987_654, "currency": "EUR"}),
    );
    for i in 0..40 {
        m.insert(format!("extra_{i:02}"), i.into());
    }
    serde_json::Value::Object(m).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_uses_the_console_in_a_browser() -> Result<()> {
    let extra = format!(
        r#"
[entities.employees.views]
directory = ["id", "name", "email", "team_id", "title"]

[auth]
anonymous = {{ employees = "directory" }}

[[auth.tokens]]
name = "ops"
sha256 = "{ops}"
admin = true

[[auth.tokens]]
name = "auditor"
sha256 = "{auditor}"
admin = true
grants = {{ employees = "full" }}

[[auth.tokens]]
name = "reader"
sha256 = "{reader}"
grants = {{ employees = "full" }}
"#,
        ops = token_hash_hex(OPS_TOKEN),
        auditor = token_hash_hex(AUDITOR_TOKEN),
        reader = token_hash_hex(READER_TOKEN),
    );
    let stack = Stack::start(2, &extra).await?;
    let config = stack.config_path().to_string_lossy().into_owned();
    let (employees, teams) = (60, 6);
    let out = tokio::process::Command::new(foldcache_binary("ingest")?)
        .args(["--config", &config, "generate"])
        .args([
            "--employees",
            &employees.to_string(),
            "--teams",
            &teams.to_string(),
        ])
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hr = hr_values(employees, teams);
    ensure!(hr.len() > 100, "{} values", hr.len());

    let admin_port = free_port();
    let admin = format!("127.0.0.1:{admin_port}");
    let base = format!("http://{admin}");
    let narrow = [
        ("FOLDCACHE__INGEST__ADMIN_LISTEN", admin.as_str()),
        ("FOLDCACHE__INGEST__MAX_MEMBERS", "30"),
        ("FOLDCACHE__INGEST__REBUILD_RETIRE_GRACE_MS", "1500"),
    ];
    let mut ingest = stack.spawn_ingest_with(&narrow)?;
    let mut con = stack.redis.connection().await?;
    eventually("the cache to be ready", WAIT, || {
        let mut con = con.clone();
        async move {
            let ready: Option<String> = con.hget("fc:state", "ready").await?;
            Ok((ready.as_deref() == Some("1")).then_some(()))
        }
    })
    .await?;

    let browser = Browser::start("console").await?;
    let mut pages_seen: Vec<(String, String)> = Vec::new();

    // 1. Sign in: a read token is refused, an admin token is let in.
    browser.client.goto(&format!("{base}/console")).await?;
    browser.wait_for("Admin token", WAIT).await?;
    ensure!(
        browser.client.current_url().await?.path() == "/console/login",
        "not signed in: sent to the sign-in page"
    );
    browser.shot("01-sign-in").await?;
    browser.fill("#token", READER_TOKEN).await?;
    browser.click("#sign-in").await?;
    let refused = browser.wait_for("has no admin scope", WAIT).await?;
    ensure!(refused.contains("Not signed in"), "{refused}");
    browser.shot("02-read-token-refused").await?;
    browser.fill("#token", OPS_TOKEN).await?;
    browser.click("#sign-in").await?;
    let overview = browser.wait_for("Signed in as", WAIT).await?;
    ensure!(overview.contains(">Ready<"), "{overview}");
    ensure!(overview.contains("Ingest instances") && overview.contains("Freshness per entity"));
    browser.shot("03-overview").await?;
    pages_seen.push(("overview".into(), overview));

    // 2. Redis refuses writes (scripts); a poison record and a good one
    // arrive on partition 0: the poison is dead-lettered, the partition
    // stalls, and the overview shows both by itself.
    let () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg("-@scripting")
        .query_async(&mut con)
        .await?;
    let producer = stack.producer()?;
    let emp = stack.topics.employees.clone();
    let poison = wide_employee();
    let record = rdkafka::producer::FutureRecord::to(&emp)
        .partition(0)
        .key("EPOISON1")
        .payload(poison.as_bytes());
    producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| e)?;
    let good = rdkafka::producer::FutureRecord::to(&emp)
        .partition(0)
        .key("ENEW0001")
        .payload(r#"{"name":"New Hire"}"#);
    producer
        .send(good, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| e)?;
    let stalled = browser.wait_for("stalled: redis", WAIT).await?;
    let stalled = if stalled.contains("too_many_members") {
        stalled
    } else {
        browser.wait_for("too_many_members", WAIT).await?
    };
    ensure!(
        stalled.contains(&format!("{emp}/0")),
        "the stalled partition is named"
    );
    browser.shot("04-stalled-partition-and-dead-letter").await?;
    pages_seen.push(("overview, stalled".into(), stalled));
    let () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg("+@all")
        .query_async(&mut con)
        .await?;
    eventually("the stall to clear on the page", WAIT, || {
        let client = browser.client.clone();
        async move {
            let html = client.source().await?;
            Ok((!html.contains("stalled: redis") && html.contains("1 dead letter")).then_some(()))
        }
    })
    .await?;
    browser.shot("05-recovered").await?;

    // 3. A rebuild, confirmed, followed to its swap and clean-up.
    browser.click("a[href='/console/rebuild']").await?;
    browser.wait_for("Start a rebuild…", WAIT).await?;
    browser.click("#start-rebuild").await?;
    browser.wait_for("Yes, start the rebuild", WAIT).await?;
    browser.shot("06-rebuild-confirm").await?;
    browser.click("#confirm-rebuild").await?;
    let started = browser
        .wait_for("Rebuild of generation 2 started", WAIT)
        .await?;
    ensure!(
        browser.client.current_url().await?.path() == "/console/rebuild",
        "back on the rebuild page"
    );
    browser.shot("07-rebuild-started").await?;
    pages_seen.push(("rebuild".into(), started));
    browser
        .wait_for(
            "generation 2 swapped in: readers switched from generation 1",
            WAIT,
        )
        .await?;
    let cleaned = browser
        .wait_for("retired generation 1 removed (clean-up done)", WAIT)
        .await?;
    ensure!(cleaned.contains("Readers use generation 2"), "{cleaned}");
    browser.shot("08-rebuild-swapped-and-cleaned").await?;
    pages_seen.push(("rebuild, swapped".into(), cleaned));

    // 4. The fix: objects of any width; ingest restarted (sessions live in
    // its memory: sign in again). Then re-drive the dead letter.
    ensure!(ingest.terminate(WAIT), "ingest stops cleanly");
    let _ingest = stack.spawn_ingest_with(&[
        ("FOLDCACHE__INGEST__ADMIN_LISTEN", admin.as_str()),
        ("FOLDCACHE__INGEST__REBUILD_RETIRE_GRACE_MS", "1500"),
    ])?;
    eventually("the admin port after the restart", WAIT, || {
        let url = format!("{base}/healthz");
        async move { Ok(reqwest::get(&url).await.ok().map(|_| ())) }
    })
    .await?;
    browser
        .client
        .goto(&format!("{base}/console/dead-letters"))
        .await?;
    browser.wait_for("Admin token", WAIT).await?;
    browser.fill("#token", OPS_TOKEN).await?;
    browser.click("#sign-in").await?;
    let letters = browser.wait_for("EPOISON1", WAIT).await?;
    ensure!(
        browser.client.current_url().await?.path() == "/console/dead-letters",
        "back where the sign-in started"
    );
    browser.shot("09-dead-letters").await?;
    pages_seen.push(("dead letters".into(), letters));
    browser.click("input[name=letter]").await?;
    browser.click("#check-redrive").await?;
    let check = browser.wait_for("Dry run", WAIT).await?;
    ensure!(check.contains(&format!("would go to {emp}/0")), "{check}");
    browser.shot("10-redrive-dry-run").await?;
    pages_seen.push(("redrive dry run".into(), check));
    browser.click("#confirm-redrive").await?;
    let done = browser.wait_for("Done:", WAIT).await?;
    ensure!(done.contains(&format!("re-driven to {emp}/0/")), "{done}");
    browser.shot("11-redriven").await?;
    pages_seen.push(("redrive done".into(), done));
    eventually("the re-driven record folded", WAIT, || {
        let mut con = con.clone();
        async move {
            let g = foldcache::live_generation(&mut con).await?.unwrap_or(0);
            let n: usize = con.hlen(format!("fc:g{g}:employees:EPOISON1")).await?;
            Ok((n == 42 + 3).then_some(()))
        }
    })
    .await?;

    // 5. Lookup: status, validators, source, TTL; no values for ops (no
    // grant), values for the auditor (grant: full).
    let id = "E000002";
    browser
        .client
        .goto(&format!("{base}/console/lookup?entity=employees&id={id}"))
        .await?;
    let looked = browser.wait_for("query-api would answer", WAIT).await?;
    ensure!(looked.contains(">200<"), "{looked}");
    ensure!(
        looked.contains("ETag (full view)") && looked.contains("_fc:src") && looked.contains("TTL")
    );
    ensure!(looked.contains("has no grant for employees"), "{looked}");
    browser.shot("12-lookup-without-values").await?;
    pages_seen.push(("lookup as ops".into(), looked));
    let poison_page = {
        browser
            .client
            .goto(&format!(
                "{base}/console/lookup?entity=employees&id=EPOISON1"
            ))
            .await?;
        browser.wait_for("query-api would answer", WAIT).await?
    };
    ensure!(!poison_page.contains("Poison Wide-Person") && !poison_page.contains("987654"));
    // Every page ops saw: no HR value, and never the poison record's.
    for (name, html) in &pages_seen {
        assert_accessible(html, name)?;
        assert_no_hr_value(html, &hr, name)?;
        ensure!(
            !html.contains("Poison Wide-Person"),
            "{name}: the poison value"
        );
        ensure!(!html.contains(OPS_TOKEN), "{name}: the token");
    }
    // The auditor may read employees: the values are there.
    browser
        .client
        .goto(&format!("{base}/console/login"))
        .await?;
    browser.fill("#token", AUDITOR_TOKEN).await?;
    browser.click("#sign-in").await?;
    browser.wait_for("Signed in as", WAIT).await?;
    browser
        .client
        .goto(&format!("{base}/console/lookup?entity=employees&id={id}"))
        .await?;
    let full = browser.wait_for("Values of the view", WAIT).await?;
    let shown = hr.iter().filter(|v| full.contains(v.as_str())).count();
    ensure!(
        shown >= 3,
        "the auditor sees the employee's values ({shown})"
    );
    browser.shot("13-lookup-with-values").await?;
    browser.close().await?;

    // Without JavaScript and without a browser: complete pages with a
    // bearer token; a read token is 403; bad requests are problem+json.
    let http = reqwest::Client::new();
    let page = http
        .get(format!("{base}/console"))
        .bearer_auth(OPS_TOKEN)
        .header("accept", "text/html")
        .send()
        .await?;
    ensure!(page.status() == 200);
    let text = page.text().await?;
    ensure!(text.contains("<table>") && text.contains("http-equiv=\"refresh\""));
    let reader = http
        .get(format!("{base}/console"))
        .bearer_auth(READER_TOKEN)
        .send()
        .await?;
    ensure!(reader.status() == 403);
    let bad = http
        .get(format!("{base}/console/lookup?entity=nope&id=E1"))
        .bearer_auth(OPS_TOKEN)
        .send()
        .await?;
    ensure!(bad.status() == 400);
    ensure!(
        bad.headers()["content-type"] == "application/problem+json",
        "{:?}",
        bad.headers()
    );
    let no_session = http
        .post(format!("{base}/console/rebuild"))
        .form(&[("confirm", "yes")])
        .send()
        .await?;
    ensure!(no_session.status() == 401, "{}", no_session.status());

    // The audit log: sign-ins (and the refused one), the rebuild, the
    // re-drive, the lookups; never a token.
    let log = std::fs::read_to_string(ingest.log_path()).context("first ingest log")?;
    let log2 = std::fs::read_to_string(_ingest.log_path()).context("second ingest log")?;
    let all = format!("{log}{log2}");
    for needle in [
        "action=\"console_sign_in\"",
        "outcome=\"refused\"",
        "action=\"rebuild\" who=ops via=\"console\" outcome=\"started\"",
        "action=\"redrive\"",
        "action=\"lookup\" who=ops",
        "action=\"lookup\" who=auditor",
    ] {
        ensure!(all.contains(needle), "audit log lacks {needle}");
    }
    for secret in [OPS_TOKEN, AUDITOR_TOKEN, READER_TOKEN] {
        ensure!(!all.contains(secret), "a token in the log");
    }
    Ok(())
}
