//! The propagation API over real HTTP (the real `serve`, in process) and a
//! real redis-server written by ingest's own fold code: collection pages,
//! index filters, change polls, event streams and long-polls, with views
//! and grants on every one of them.

mod propagation_kit;

use anyhow::{Result, ensure};
use propagation_kit::{
    Api, DIRECTORY, DIRECTORY_TOKEN, HR_TOKEN, SseReader, config_with_tokens, member_names,
};
use redis::AsyncCommands;
use serde_json::{Value, json};
use std::collections::BTreeSet;

fn employee(i: usize, team: &str) -> Value {
    json!({
        "id": format!("E{i:03}"),
        "name": format!("사원 {i}"),
        "email": format!("e{i}@hanbit.co.kr"),
        "team_id": team,
        "manager_id": if i > 1 { json!("E001") } else { Value::Null },
        "title": "Engineer",
        "salary": {"amount": 50_000_000 + i, "currency": "KRW"},
    })
}

fn ids_of(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| i["id"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// No member outside the directory view anywhere in `v`'s states.
fn assert_directory_only(states: impl IntoIterator<Item = Value>) {
    let allowed: BTreeSet<&str> = DIRECTORY.into_iter().collect();
    for s in states {
        let mut names = Vec::new();
        member_names(&s, &mut names);
        for n in names {
            assert!(allowed.contains(n.as_str()), "field {n:?} leaked: {s}");
        }
    }
}

/// Follows `next` from `first` to the end; returns every page.
async fn all_pages(api: &Api, first: &str, token: Option<&str>) -> Result<Vec<Value>> {
    let mut pages = Vec::new();
    let mut next = Some(first.to_owned());
    while let Some(url) = next {
        let page = api.json(&url, token).await?;
        next = page["next"].as_str().map(str::to_owned);
        pages.push(page);
        ensure!(pages.len() < 1000, "paging does not end");
    }
    Ok(pages)
}

#[tokio::test(flavor = "multi_thread")]
async fn collection_pages_are_stable_cacheable_and_generation_bound() -> Result<()> {
    let mut api = Api::start(config_with_tokens()).await?;
    let records: Vec<(String, Option<Value>)> = (1..=25)
        .map(|i| (format!("E{i:03}"), Some(employee(i, "T1"))))
        .collect();
    let refs: Vec<(&str, Option<Value>)> = records
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    api.fold("employees", &refs).await?;

    let r = api
        .get("/v1/employees?limit=10", Some(HR_TOKEN), &[])
        .await?;
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str()?.to_owned();
    assert!(etag.starts_with('"'), "strong ETag: {etag}");
    assert_eq!(
        r.headers()["cache-control"],
        "private, max-age=60, stale-while-revalidate=30, stale-if-error=86400"
    );
    assert!(r.headers()["vary"].to_str()?.contains("Authorization"));
    let tags = r.headers()["surrogate-key"].to_str()?.to_owned();
    assert!(tags.starts_with("employees employees/E001 "), "{tags}");
    let link = r.headers()["link"].to_str()?.to_owned();
    let page1: Value = r.json().await?;
    assert_eq!(
        ids_of(&page1),
        (1..=10).map(|i| format!("E{i:03}")).collect::<Vec<_>>()
    );
    assert_eq!(page1["items"][0]["state"], employee(1, "T1"));
    let next = page1["next"].as_str().unwrap_or_default().to_owned();
    assert!(next.starts_with("/v1/employees?limit=10&cursor="), "{next}");
    assert_eq!(link, format!("<{next}>; rel=\"next\""));
    // Every item's ETag is the one a single lookup gives.
    let single = api.get("/v1/employees/E001", Some(HR_TOKEN), &[]).await?;
    assert_eq!(
        page1["items"][0]["etag"].as_str(),
        single.headers()["etag"].to_str().ok()
    );

    // Revalidation: 304 while nothing changed.
    let r = api
        .get(
            "/v1/employees?limit=10",
            Some(HR_TOKEN),
            &[("if-none-match", &etag)],
        )
        .await?;
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["etag"].to_str()?, etag);

    // During the pass: an id after the cursor appears, a deleted one is
    // skipped; the pass sees every other id exactly once.
    api.fold(
        "employees",
        &[("E015", None), ("E030", Some(employee(30, "T1")))],
    )
    .await?;
    let rest = all_pages(&api, &next, Some(HR_TOKEN)).await?;
    let mut seen = ids_of(&page1);
    for p in &rest {
        seen.extend(ids_of(p));
    }
    let mut expected: Vec<String> = (1..=25)
        .filter(|i| *i != 15)
        .map(|i| format!("E{i:03}"))
        .collect();
    expected.push("E030".into());
    assert_eq!(seen, expected);
    assert_eq!(rest.last().map(|p| p["next"].clone()), Some(Value::Null));
    // The changed page has a new ETag.
    let r = api
        .get(
            "/v1/employees?limit=10",
            Some(HR_TOKEN),
            &[("if-none-match", &etag)],
        )
        .await?;
    assert_eq!(r.status(), 304, "page 1 did not change");

    // The directory view: every page, no field outside it; anonymous
    // callers get it with public caching.
    for token in [Some(DIRECTORY_TOKEN), None] {
        let pages = all_pages(&api, "/v1/employees?limit=7", token).await?;
        let states = pages
            .iter()
            .flat_map(|p| p["items"].as_array().cloned().unwrap_or_default())
            .map(|i| i["state"].clone());
        assert_directory_only(states);
    }
    let anon = api.get("/v1/employees", None, &[]).await?;
    assert!(
        anon.headers()["cache-control"]
            .to_str()?
            .starts_with("public")
    );
    assert_ne!(anon.headers()["etag"].to_str()?, etag, "views differ");
    let body = anon.text().await?;
    assert!(!body.contains("salary") && !body.contains("50000001"));

    // Bad requests: problem+json 400.
    for bad in [
        "/v1/employees?limit=0",
        "/v1/employees?limit=100000",
        "/v1/employees?limit=x",
        "/v1/employees?cursor=garbage",
        "/v1/employees?salary=1",
        "/v1/employees?team_id=T1&manager_id=E001",
        "/v1/employees?limit=1&limit=2",
    ] {
        let r = api.get(bad, Some(HR_TOKEN), &[]).await?;
        assert_eq!(r.status(), 400, "{bad}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        assert_eq!(r.headers()["cache-control"], "no-store");
    }
    // A change cursor is not a page cursor.
    let tail = api.json("/v1/employees/changes", Some(HR_TOKEN)).await?;
    let since = tail["next"].as_str().unwrap_or_default();
    let cursor = since.split("since=").nth(1).unwrap_or_default();
    let r = api
        .get(
            &format!("/v1/employees?cursor={cursor}"),
            Some(HR_TOKEN),
            &[],
        )
        .await?;
    assert_eq!(r.status(), 400);

    // A rebuild: the new generation serves the same collection, and a
    // cursor of the old one is gone.
    api.build(2).await?;
    let mut recs: Vec<(String, Option<Value>)> = (1..=25)
        .filter(|i| *i != 15)
        .map(|i| (format!("E{i:03}"), Some(employee(i, "T1"))))
        .collect();
    recs.push(("E030".into(), Some(employee(30, "T1"))));
    let refs: Vec<(&str, Option<Value>)> =
        recs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    api.fold("employees", &refs).await?;
    api.swap().await?;
    let r = api.get(&next, Some(HR_TOKEN), &[]).await?;
    assert_eq!(r.status(), 410);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(r.headers()["link"], "</v1/employees>; rel=\"resync\"");
    let pages = all_pages(&api, "/v1/employees?limit=10", Some(HR_TOKEN)).await?;
    let again: Vec<String> = pages.iter().flat_map(ids_of).collect();
    assert_eq!(again, expected);
    api.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn index_filters_follow_moves_email_changes_and_tombstones() -> Result<()> {
    let mut api = Api::start(config_with_tokens()).await?;
    api.fold(
        "employees",
        &[
            ("E001", Some(employee(1, "T1"))),
            ("E002", Some(employee(2, "T1"))),
            ("E003", Some(employee(3, "T2"))),
        ],
    )
    .await?;
    api.fold(
        "permissions",
        &[
            (
                "E001",
                Some(json!({"employee_id": "E001", "grants": [{"system": "github", "role": "admin"}, {"system": "jira", "role": "read"}]})),
            ),
            (
                "E002",
                Some(json!({"employee_id": "E002", "grants": [{"system": "jira", "role": "write"}]})),
            ),
        ],
    )
    .await?;
    let team = |t: &str| format!("/v1/employees?team_id={t}");
    let ids = |v: Value| ids_of(&v);
    assert_eq!(
        ids(api.json(&team("T1"), Some(HR_TOKEN)).await?),
        ["E001", "E002"]
    );
    assert_eq!(ids(api.json(&team("T2"), Some(HR_TOKEN)).await?), ["E003"]);
    assert_eq!(
        ids(api
            .json("/v1/employees?manager_id=E001", Some(HR_TOKEN))
            .await?),
        ["E002", "E003"]
    );
    assert_eq!(
        ids(api
            .json("/v1/permissions?system=jira", Some(HR_TOKEN))
            .await?),
        ["E001", "E002"]
    );
    assert_eq!(
        ids(api
            .json("/v1/permissions?system=github", Some(HR_TOKEN))
            .await?),
        ["E001"]
    );
    assert_eq!(
        ids(api
            .json("/v1/permissions?employee_id=E002", Some(HR_TOKEN))
            .await?),
        ["E002"]
    );
    // Paging a filter keeps the filter.
    let p = api
        .json(&format!("{}&limit=1", team("T1")), Some(HR_TOKEN))
        .await?;
    assert_eq!(ids_of(&p), ["E001"]);
    let next = p["next"].as_str().unwrap_or_default().to_owned();
    assert!(
        next.starts_with("/v1/employees?team_id=T1&limit=1&cursor="),
        "{next}"
    );
    assert_eq!(ids(api.json(&next, Some(HR_TOKEN)).await?), ["E002"]);

    // A filter page is cacheable and revalidates.
    let r = api.get(&team("T1"), Some(HR_TOKEN), &[]).await?;
    let etag = r.headers()["etag"].to_str()?.to_owned();
    let r = api
        .get(&team("T1"), Some(HR_TOKEN), &[("if-none-match", &etag)])
        .await?;
    assert_eq!(r.status(), 304);

    // A move: out of T1, into T2; an email change; a tombstone.
    let mut moved = employee(2, "T2");
    moved["email"] = json!("new.e2@hanbit.co.kr");
    api.fold("employees", &[("E002", Some(moved)), ("E003", None)])
        .await?;
    assert_eq!(ids(api.json(&team("T1"), Some(HR_TOKEN)).await?), ["E001"]);
    assert_eq!(ids(api.json(&team("T2"), Some(HR_TOKEN)).await?), ["E002"]);
    let r = api
        .get(&team("T1"), Some(HR_TOKEN), &[("if-none-match", &etag)])
        .await?;
    assert_eq!(r.status(), 200, "the page changed");
    assert!(
        ids(api
            .json("/v1/employees?email=e2@hanbit.co.kr", Some(HR_TOKEN))
            .await?)
        .is_empty()
    );
    assert_eq!(
        ids(api
            .json("/v1/employees?email=new.e2@hanbit.co.kr", Some(HR_TOKEN))
            .await?),
        ["E002"]
    );
    assert_eq!(
        ids(api
            .json("/v1/employees?manager_id=E001", Some(HR_TOKEN))
            .await?),
        ["E002"]
    );
    // The index keys went with them: nothing left under the old values.
    let mut con = api.redis.connection().await?;
    let mut left: Vec<String> = con.keys("fc:g1:{employees}:_ix:team_id:*").await?;
    left.sort();
    assert_eq!(
        left,
        [
            "fc:g1:{employees}:_ix:team_id:T1",
            "fc:g1:{employees}:_ix:team_id:T2"
        ]
    );
    let t1: Vec<String> = con
        .zrange("fc:g1:{employees}:_ix:team_id:T1", 0, -1)
        .await?;
    assert_eq!(t1, ["E001"]);
    let old_mail: bool = con
        .hexists("fc:g1:{employees}:_uix:email", "e2@hanbit.co.kr")
        .await?;
    assert!(!old_mail);
    let old_set: bool = con
        .exists("fc:g1:{employees}:_ix:email:e2@hanbit.co.kr")
        .await?;
    assert!(!old_set);
    // A re-creation comes back into its indexes.
    api.fold("employees", &[("E003", Some(employee(3, "T1")))])
        .await?;
    assert_eq!(
        ids(api.json(&team("T1"), Some(HR_TOKEN)).await?),
        ["E001", "E003"]
    );
    // Values with any characters round-trip.
    let mut odd = employee(9, "팀 A:{x}*");
    odd["email"] = json!("a b%c@x");
    api.fold("employees", &[("E009", Some(odd))]).await?;
    assert_eq!(
        ids(api
            .json(
                "/v1/employees?team_id=%ED%8C%80%20A%3A%7Bx%7D*",
                Some(HR_TOKEN)
            )
            .await?),
        ["E009"]
    );
    assert_eq!(
        ids(api
            .json("/v1/employees?email=a%20b%25c%40x", Some(HR_TOKEN))
            .await?),
        ["E009"]
    );

    // Views: the directory token filters on fields of its view only, and
    // gets its view.
    let r = api
        .get("/v1/employees?manager_id=E001", Some(DIRECTORY_TOKEN), &[])
        .await?;
    assert_eq!(r.status(), 400, "manager_id is outside the directory view");
    let page = api.json(&team("T1"), Some(DIRECTORY_TOKEN)).await?;
    assert_eq!(ids_of(&page), ["E001", "E003"]);
    assert_directory_only(
        page["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|i| i["state"].clone()),
    );
    // No grant: 403; no token where one is needed: 401.
    let r = api
        .get("/v1/permissions?system=jira", Some(DIRECTORY_TOKEN), &[])
        .await?;
    assert_eq!(r.status(), 403);
    let r = api.get("/v1/permissions?system=jira", None, &[]).await?;
    assert_eq!(r.status(), 401);
    api.stop().await
}

/// The cursor in a `next` URL.
fn since_of(next: &Value) -> String {
    next.as_str()
        .and_then(|u| u.split("since=").nth(1))
        .map(|s| s.split('&').next().unwrap_or(s).to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn change_polls_deliver_each_change_in_its_view_and_410_on_a_gap() -> Result<()> {
    let mut api = Api::start(config_with_tokens()).await?;
    api.fold("employees", &[("E001", Some(employee(1, "T1")))])
        .await?;
    // Without a cursor: no events, and where the log ends now.
    let tail = api.json("/v1/employees/changes", Some(HR_TOKEN)).await?;
    assert_eq!(tail["events"], json!([]));
    let start = tail["next"].as_str().unwrap_or_default().to_owned();

    let mut e2 = employee(2, "T1");
    api.fold("employees", &[("E002", Some(e2.clone()))]).await?;
    // An upsert then a delete in separate folds: the upsert's state is gone,
    // so only the delete is told.
    api.fold("employees", &[("E003", Some(employee(3, "T2")))])
        .await?;
    api.fold("employees", &[("E003", None)]).await?;
    // The same state again is no change.
    api.fold("employees", &[("E002", Some(e2.clone()))]).await?;
    e2["salary"]["amount"] = json!(1);
    api.fold("employees", &[("E002", Some(e2.clone()))]).await?;

    let page = api.json(&start, Some(HR_TOKEN)).await?;
    let events = page["events"].as_array().cloned().unwrap_or_default();
    let summary: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["op"].as_str().unwrap_or("").to_owned(),
                e["id"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    // E002's first state was superseded by its salary change.
    assert_eq!(
        summary,
        [
            ("delete".into(), "E003".into()),
            ("upsert".into(), "E002".into())
        ]
    );
    assert_eq!(events[1]["state"], e2);
    let single = api.get("/v1/employees/E002", Some(HR_TOKEN), &[]).await?;
    assert_eq!(
        events[1]["etag"].as_str(),
        single.headers()["etag"].to_str().ok()
    );
    // Each event's cursor resumes right after it.
    let after_first = api
        .json(
            &format!(
                "/v1/employees/changes?since={}",
                events[0]["cursor"].as_str().unwrap_or("")
            ),
            Some(HR_TOKEN),
        )
        .await?;
    assert_eq!(after_first["events"].as_array().map(Vec::len), Some(1));
    // Paging.
    let p1 = api
        .json(&format!("{start}&limit=1"), Some(HR_TOKEN))
        .await?;
    assert!(p1["events"].as_array().is_some_and(|e| e.len() <= 1));
    // The end: no events, the same position.
    let end = api
        .json(page["next"].as_str().unwrap_or(""), Some(HR_TOKEN))
        .await?;
    assert_eq!(end["events"], json!([]));
    assert_eq!(since_of(&end["next"]), since_of(&page["next"]));
    // Revalidation of a page.
    let r = api.get(&start, Some(HR_TOKEN), &[]).await?;
    assert_eq!(r.headers()["cache-control"], "private, no-cache");
    let etag = r.headers()["etag"].to_str()?.to_owned();
    let r = api
        .get(&start, Some(HR_TOKEN), &[("if-none-match", &etag)])
        .await?;
    assert_eq!(r.status(), 304);

    // The directory view: the same events, never a salary.
    for token in [Some(DIRECTORY_TOKEN), None] {
        let page = api.json(&start, token).await?;
        assert_eq!(page["events"].as_array().map(Vec::len), Some(2));
        let body = page.to_string();
        assert!(!body.contains("salary"), "{body}");
        assert_directory_only(
            page["events"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|e| e.get("state").cloned()),
        );
    }

    // Long-poll of a page: nothing new for a second: the empty page, and the
    // preference said applied.
    let end_url = page["next"].as_str().unwrap_or("").to_owned();
    let r = api
        .get(&end_url, Some(HR_TOKEN), &[("prefer", "wait=1")])
        .await?;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["preference-applied"], "wait=1");
    assert_eq!(r.json::<Value>().await?["events"], json!([]));
    // ... and a change while waiting answers at once with it.
    let waiting = {
        let api_base = api.base.clone();
        let url = format!("{api_base}{end_url}");
        tokio::spawn(async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(HR_TOKEN)
                .header("prefer", "wait=60")
                .send()
                .await?
                .json::<Value>()
                .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    api.fold("employees", &[("E004", Some(employee(4, "T1")))])
        .await?;
    let got = waiting.await??;
    assert_eq!(got["events"][0]["id"], "E004");

    // Errors: a page cursor, garbage, unknown parameters: 400; the log's
    // generation rebuilt away: 410 with a resync link.
    for bad in [
        "/v1/employees/changes?since=xyz",
        "/v1/employees/changes?limit=0",
        "/v1/employees/changes?from=1",
    ] {
        let r = api.get(bad, Some(HR_TOKEN), &[]).await?;
        assert_eq!(r.status(), 400, "{bad}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
    }
    api.build(2).await?;
    api.fold("employees", &[("E001", Some(employee(1, "T1")))])
        .await?;
    api.swap().await?;
    let r = api.get(&end_url, Some(HR_TOKEN), &[]).await?;
    assert_eq!(r.status(), 410);
    assert_eq!(r.headers()["link"], "</v1/employees>; rel=\"resync\"");
    let problem: Value = r.json().await?;
    assert_eq!(
        problem["type"],
        "https://foldcache.dev/problems/cursor-gone"
    );
    api.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cursor_older_than_the_retained_log_answers_410() -> Result<()> {
    let mut config = config_with_tokens();
    config
        .entities
        .get_mut("employees")
        .expect("default entity")
        .changes_max_len = 10;
    let mut api = Api::start(config).await?;
    api.fold("employees", &[("E001", Some(employee(1, "T1")))])
        .await?;
    let tail = api.json("/v1/employees/changes", Some(HR_TOKEN)).await?;
    let old = tail["next"].as_str().unwrap_or_default().to_owned();
    // Trimming is approximate (whole stream nodes of 100 entries): write
    // enough that the oldest node goes.
    for round in 0..3 {
        let recs: Vec<(String, Option<Value>)> = (0..100)
            .map(|i| (format!("E{:03}", i + 100 * round), Some(employee(i, "T1"))))
            .collect();
        let refs: Vec<(&str, Option<Value>)> =
            recs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        api.fold("employees", &refs).await?;
    }
    let mut con = api.redis.connection().await?;
    let len: usize = con.xlen("fc:g1:{employees}:_changes").await?;
    assert!(len <= 110, "trimmed to about 10 entries: {len}");
    let r = api.get(&old, Some(HR_TOKEN), &[]).await?;
    assert_eq!(r.status(), 410);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    // A fresh cursor works.
    let tail = api.json("/v1/employees/changes", Some(HR_TOKEN)).await?;
    let r = api
        .get(tail["next"].as_str().unwrap_or(""), Some(HR_TOKEN), &[])
        .await?;
    assert_eq!(r.status(), 200);
    api.stop().await
}

/// The log entries of `generation` in order, as `op id`.
async fn logged(api: &mut Api, generation: u64) -> Result<Vec<String>> {
    let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(format!("fc:g{generation}:{{employees}}:_changes"))
        .arg("-")
        .arg("+")
        .query_async(&mut api.con)
        .await?;
    // Each entry's fields: op, u|d, id, …, etag, ….
    Ok(entries
        .iter()
        .map(|(_, f)| format!("{} {}", f[1], f[3]))
        .collect())
}

/// A generation no reader can hold a cursor into (being built, or live but
/// not yet ready in its epoch) logs nothing; from the moment it is served,
/// every change is logged and delivered.
#[tokio::test(flavor = "multi_thread")]
async fn a_generation_logs_changes_from_the_moment_it_is_served() -> Result<()> {
    let mut api = Api::start(config_with_tokens()).await?;
    api.fold("employees", &[("E001", Some(employee(1, "T1")))])
        .await?;
    assert_eq!(logged(&mut api, 1).await?, ["u E001"]);

    // A rebuild: its replay lands in the data, not in a log nobody can read.
    api.build(2).await?;
    api.fold(
        "employees",
        &[
            ("E001", Some(employee(1, "T1"))),
            ("E002", Some(employee(2, "T1"))),
        ],
    )
    .await?;
    assert!(logged(&mut api, 2).await?.is_empty());
    api.swap().await?;
    let page = api.json("/v1/employees", Some(HR_TOKEN)).await?;
    assert_eq!(ids_of(&page), ["E001", "E002"]);
    let end = api.json("/v1/employees/changes", Some(HR_TOKEN)).await?;
    let end_url = end["next"].as_str().unwrap_or_default().to_owned();
    // Two batches: within one, the writes of different ids are logged in
    // the order of the batch's map, not of the records.
    api.fold("employees", &[("E003", Some(employee(3, "T2")))])
        .await?;
    api.fold("employees", &[("E002", None)]).await?;
    assert_eq!(logged(&mut api, 2).await?, ["u E003", "d E002"]);
    let got = api.json(&end_url, Some(HR_TOKEN)).await?;
    let events: Vec<(&str, &str)> = got["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["op"].as_str().unwrap_or(""),
                        e["id"].as_str().unwrap_or(""),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(events, [("upsert", "E003"), ("delete", "E002")]);

    // Live but not ready (a cold cache catching up): nothing logged until
    // it is ready.
    let () = api.con.hset("fc:state", "ready", "0").await?;
    api.fold("employees", &[("E004", Some(employee(4, "T1")))])
        .await?;
    let () = api.con.hset("fc:state", "ready", "1").await?;
    api.fold("employees", &[("E005", Some(employee(5, "T1")))])
        .await?;
    assert_eq!(logged(&mut api, 2).await?, ["u E003", "d E002", "u E005"]);
    let state: Option<String> = api.con.hget("fc:g2:employees:E004", "email").await?;
    assert_eq!(state.as_deref(), Some("\"e4@hanbit.co.kr\""));
    api.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn event_streams_resume_resync_and_stay_in_their_view() -> Result<()> {
    let mut config = config_with_tokens();
    config.http.sse_heartbeat_secs = 1;
    let mut api = Api::start(config).await?;
    api.fold("employees", &[("E001", Some(employee(1, "T1")))])
        .await?;
    let sse = [("accept", "text/event-stream")];
    let mut hr = SseReader::new(
        api.get("/v1/employees/changes", Some(HR_TOKEN), &sse)
            .await?,
    )?;
    let mut dir = SseReader::new(
        api.get("/v1/employees/changes", Some(DIRECTORY_TOKEN), &sse)
            .await?,
    )?;
    // Heartbeats keep an idle stream alive.
    let mut beat = false;
    while !beat {
        let f = hr
            .next_frame()
            .await?
            .ok_or_else(|| anyhow::anyhow!("stream ended"))?;
        beat = f.comment_only;
    }
    api.fold("employees", &[("E002", Some(employee(2, "T1")))])
        .await?;
    api.fold("employees", &[("E001", None)]).await?;
    let a = hr
        .next_event()
        .await?
        .ok_or_else(|| anyhow::anyhow!("ended"))?;
    assert_eq!(a.event, "upsert");
    assert_eq!(a.json()?["state"], employee(2, "T1"));
    assert_eq!(a.json()?["cursor"].as_str(), a.id.as_deref());
    let b = hr
        .next_event()
        .await?
        .ok_or_else(|| anyhow::anyhow!("ended"))?;
    assert_eq!(b.event, "delete");
    assert_eq!(
        b.json()?,
        json!({"cursor": b.id, "id": "E001", "op": "delete"})
    );
    // The directory stream: the same events, its view only.
    let da = dir
        .next_event()
        .await?
        .ok_or_else(|| anyhow::anyhow!("ended"))?;
    assert!(!da.data.contains("salary"), "{}", da.data);
    assert_directory_only([da.json()?["state"].clone()]);
    assert_eq!(
        dir.next_event().await?.map(|f| f.event),
        Some("delete".into())
    );

    // Resume after a disconnect: Last-Event-ID wins over since.
    drop(hr);
    let first = a.id.clone().unwrap_or_default();
    let mut again = SseReader::new(
        api.get(
            "/v1/employees/changes?since=bogus",
            Some(HR_TOKEN),
            &[("accept", "text/event-stream"), ("last-event-id", &first)],
        )
        .await?,
    )?;
    let resumed = again
        .next_event()
        .await?
        .ok_or_else(|| anyhow::anyhow!("ended"))?;
    assert_eq!(
        (resumed.event.as_str(), resumed.id.clone()),
        ("delete", b.id.clone())
    );
    // A stale Last-Event-ID is not a stream: 410.
    let r = api
        .get(
            "/v1/employees/changes",
            Some(HR_TOKEN),
            &[
                ("accept", "text/event-stream"),
                ("last-event-id", "bm90IGEgY3Vyc29y"),
            ],
        )
        .await?;
    assert_eq!(r.status(), 400);

    // A rebuild: `resync`, then the end of the stream; the old cursor is 410.
    api.build(2).await?;
    api.fold("employees", &[("E002", Some(employee(2, "T1")))])
        .await?;
    api.swap().await?;
    let end = again
        .next_event()
        .await?
        .ok_or_else(|| anyhow::anyhow!("ended"))?;
    assert_eq!(end.event, "resync");
    assert_eq!(end.json()?, json!({"resync": "/v1/employees"}));
    assert_eq!(again.next_event().await?, None, "the stream ends");
    let r = api
        .get(
            "/v1/employees/changes",
            Some(HR_TOKEN),
            &[("accept", "text/event-stream"), ("last-event-id", &first)],
        )
        .await?;
    assert_eq!(r.status(), 410);
    api.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_is_disconnected_and_resumes() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = config_with_tokens();
    config.http.sse_buffer_events = 16;
    config.http.sse_heartbeat_secs = 1;
    let mut api = Api::start(config).await?;
    api.fold("employees", &[("E000", Some(employee(0, "T1")))])
        .await?;
    // A raw client with a tiny receive window that reads nothing yet.
    let addr = api.base.trim_start_matches("http://").to_owned();
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let mut tcp = socket.connect(addr.parse()?).await?;
    tcp.write_all(
        format!(
            "GET /v1/employees/changes HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\
             Authorization: Bearer {HR_TOKEN}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    // Wait for the response head, so the stream is live.
    let mut head = vec![0u8; 1];
    let mut got = Vec::new();
    while !got.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut head).await?;
        got.push(head[0]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // Far more changes than the queue, the socket buffers and the ring hold.
    let total = 3000;
    for chunk in (0..total).collect::<Vec<_>>().chunks(500) {
        let recs: Vec<(String, Option<Value>)> = chunk
            .iter()
            .map(|i| {
                let mut e = employee(*i, "T1");
                e["bio"] = json!("x".repeat(2000));
                (format!("S{i:05}"), Some(e))
            })
            .collect();
        let refs: Vec<(&str, Option<Value>)> =
            recs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        api.fold("employees", &refs).await?;
    }
    // Now read: the server ends the stream before the last change.
    let mut body = Vec::new();
    tcp.read_to_end(&mut body).await?;
    let text = String::from_utf8_lossy(&body);
    let ids: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .collect();
    assert!(
        ids.len() < total,
        "a slow client was sent all {} events",
        ids.len()
    );
    let last = ids.last().copied().unwrap_or_default().to_owned();
    assert!(!last.is_empty(), "some events arrived first");
    // It resumes where it stopped and gets the rest, none twice.
    let mut rest = SseReader::new(
        api.get(
            "/v1/employees/changes",
            Some(HR_TOKEN),
            &[("accept", "text/event-stream"), ("last-event-id", &last)],
        )
        .await?,
    )?;
    let mut n = ids.len();
    while n < total {
        let f = rest
            .next_event()
            .await?
            .ok_or_else(|| anyhow::anyhow!("ended at {n}"))?;
        ensure!(f.event == "upsert", "{f:?}");
        n += 1;
    }
    api.stop().await
}

#[tokio::test(flavor = "multi_thread")]
async fn long_polls_answer_on_change_or_304_after_the_wait() -> Result<()> {
    let mut api = Api::start(config_with_tokens()).await?;
    api.fold("employees", &[("E001", Some(employee(1, "T1")))])
        .await?;
    let url = "/v1/employees/E001";
    let r = api.get(url, Some(HR_TOKEN), &[]).await?;
    let etag = r.headers()["etag"].to_str()?.to_owned();
    // Nothing changes: 304 after the wait, preference applied.
    let r = api
        .get(
            url,
            Some(HR_TOKEN),
            &[("if-none-match", &etag), ("prefer", "wait=1")],
        )
        .await?;
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["preference-applied"], "wait=1");
    assert_eq!(r.headers()["etag"].to_str()?, etag);
    // A stale tag: the current state at once.
    let r = api
        .get(
            url,
            Some(HR_TOKEN),
            &[("if-none-match", "\"old\""), ("prefer", "wait=30")],
        )
        .await?;
    assert_eq!(r.status(), 200);

    // A change while waiting: the new state, for each view; the directory
    // view is woken by a salary change too (its ETag changes) but never
    // sees the salary.
    let dir_etag = api.get(url, Some(DIRECTORY_TOKEN), &[]).await?.headers()["etag"]
        .to_str()?
        .to_owned();
    let base = api.base.clone();
    let spawn = |token: &'static str, tag: String| {
        let full = format!("{base}{url}");
        tokio::spawn(async move {
            reqwest::Client::new()
                .get(full)
                .bearer_auth(token)
                .header("if-none-match", tag)
                .header("prefer", "wait=60")
                .send()
                .await
        })
    };
    let hr = spawn(HR_TOKEN, etag.clone());
    let dir = spawn(DIRECTORY_TOKEN, dir_etag.clone());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut raised = employee(1, "T1");
    raised["salary"]["amount"] = json!(99_000_000);
    api.fold("employees", &[("E001", Some(raised.clone()))])
        .await?;
    let r = hr.await??;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["preference-applied"], "wait=60");
    assert_ne!(r.headers()["etag"].to_str()?, etag);
    assert_eq!(r.json::<Value>().await?, raised);
    let r = dir.await??;
    assert_eq!(r.status(), 200);
    assert_ne!(r.headers()["etag"].to_str()?, dir_etag);
    let body = r.text().await?;
    assert!(
        !body.contains("salary") && !body.contains("99000000"),
        "{body}"
    );

    // A delete while waiting: 404.
    let etag = api.get(url, Some(HR_TOKEN), &[]).await?.headers()["etag"]
        .to_str()?
        .to_owned();
    let waiting = spawn(HR_TOKEN, etag);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    api.fold("employees", &[("E001", None)]).await?;
    assert_eq!(waiting.await??.status(), 404);
    api.stop().await
}
