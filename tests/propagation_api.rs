//! The propagation API over real HTTP (the real `serve`, in process) and a
//! real redis-server written by ingest's own fold code: collection pages,
//! index filters, change polls, event streams and long-polls, with views
//! and grants on every one of them.

mod propagation_kit;

use anyhow::{Result, ensure};
use propagation_kit::{
    Api, DIRECTORY, DIRECTORY_TOKEN, HR_TOKEN, config_with_tokens, member_names,
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
        .exists("fc:g1:{employees}:_ix:email:e2@hanbit.co.kr")
        .await?;
    assert!(!old_mail);
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
