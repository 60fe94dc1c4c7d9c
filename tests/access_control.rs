//! Access control over the service query-api serves (the real router behind
//! its single-lookup fast path, `oneshot`) and a real
//! redis-server holding the demo data set (10,000 employees, 10,000 teams,
//! 10,000 permission records) folded by ingest's own code: tokens, grants,
//! views, per-view ETags, private caching, rate limits.

mod common;

use anyhow::{Result, ensure};
use axum::http::Method;
use axum::http::StatusCode;
use common::{Res, send};
use foldcache::RedisServer;
use foldcache_common::config::{Config, TokenConfig, ValueFormat};
use foldcache_common::id::EntityName;
use foldcache_common::keys::KeySpace;
use foldcache_common::secret::token_hash_hex;
use foldcache_ingest::decode::decode;
use foldcache_ingest::fold::{Folder, PartitionBatch};
use foldcache_ingest::generate::{GenOptions, Generator};
use foldcache_ingest::source::Source;
use foldcache_query_api::fast_path::Api;
use foldcache_query_api::store::Store;
use foldcache_query_api::{AppState, service};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

const DIRECTORY: [&str; 5] = ["id", "name", "email", "team_id", "title"];
const HR_TOKEN: &str = "hr-token-7f3a9c";
const DIRECTORY_TOKEN: &str = "directory-token-52be11";
const TEAMS_ONLY_TOKEN: &str = "teams-token-0c4d88";
const LIMITED_TOKEN: &str = "limited-token-9e2f70";

fn token(name: &str, secret: &str, grants: &[(&str, &str)]) -> TokenConfig {
    TokenConfig {
        name: name.into(),
        sha256: token_hash_hex(secret),
        grants: grants
            .iter()
            .map(|(e, v)| ((*e).to_owned(), (*v).to_owned()))
            .collect(),
        admin: false,
        rate_per_sec: None,
        burst: None,
    }
}

fn config() -> Config {
    let mut c = Config::default();
    let employees = c.entities.get_mut("employees").expect("default entity");
    employees.views = BTreeMap::from([
        (
            "directory".to_owned(),
            DIRECTORY.iter().map(|s| (*s).to_owned()).collect(),
        ),
        ("hr".to_owned(), vec!["*".to_owned()]),
    ]);
    c.auth.anonymous = BTreeMap::from([("teams".to_owned(), "full".to_owned())]);
    let mut limited = token("limited", LIMITED_TOKEN, &[("teams", "full")]);
    limited.rate_per_sec = Some(1);
    limited.burst = Some(2);
    c.auth.tokens = vec![
        token(
            "payroll",
            HR_TOKEN,
            &[("employees", "hr"), ("permissions", "full")],
        ),
        token(
            "directory-app",
            DIRECTORY_TOKEN,
            &[("employees", "directory"), ("teams", "full")],
        ),
        token("teams-app", TEAMS_ONLY_TOKEN, &[("teams", "full")]),
        limited,
    ];
    c.validate().expect("valid config");
    c
}

struct Fixture {
    _redis: RedisServer,
    app: Api,
    employees: Vec<(String, Value)>,
}

/// The demo data set, folded into a private Redis as ingest writes it.
async fn fixture(config: &Config) -> Result<Fixture> {
    let redis = RedisServer::start().await?;
    let mut con = redis.connection().await?;
    let keys = KeySpace::new("fc");
    let epoch = "test-epoch";
    foldcache::seed_ready_cache(&mut con, &keys, epoch).await?;
    let now = foldcache_common::runtime::now_ms();
    let folder = Folder::new(keys.clone());
    let mut employees = Vec::new();
    let events: Vec<_> = Generator::new(GenOptions {
        seed: 42,
        employees: 10_000,
        teams: 10_000,
        updates: 0,
        deletes: 0,
    })
    .events()
    .collect();
    for (chunk_no, chunk) in events.chunks(1000).enumerate() {
        let mut batches: BTreeMap<&str, PartitionBatch> = BTreeMap::new();
        for (i, e) in chunk.iter().enumerate() {
            let entity = e.kind.entity();
            let source = Source {
                topic: format!("hr.{entity}"),
                entity: EntityName::parse(entity)?,
                format: ValueFormat::Json,
                id_prefix: String::new(),
                ttl_ms: 600_000,
                programs: Default::default(),
                role: foldcache_ingest::source::Role::State,
            };
            let value = e.value.as_ref().map(Value::to_string);
            let d = decode(
                &source,
                Some(e.key.as_bytes()),
                value.as_deref().map(str::as_bytes),
                1 << 20,
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            batches
                .entry(entity)
                .or_insert_with(|| PartitionBatch::new(&format!("hr.{entity}"), 0))
                .push(&keys, 1, &source, (chunk_no * 1000 + i) as i64, now, d);
            if entity == "employees"
                && let Some(v) = &e.value
            {
                employees.push((e.key.clone(), v.clone()));
            }
        }
        let batches: Vec<_> = batches.into_values().collect();
        folder.fold(&mut con, epoch, 1, &batches).await?;
    }
    let store = Store::connect(redis::Client::open(redis.url())?, keys).await?;
    let app = service(AppState::new(store, config), config.http.compression);
    Ok(Fixture {
        _redis: redis,
        app,
        employees,
    })
}

async fn get(app: &Api, uri: &str, bearer: Option<&str>, extra: &[(&str, &str)]) -> Result<Res> {
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = extra.to_vec();
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    send(app, Method::GET, uri, &headers).await
}

#[tokio::test]
async fn access_control_over_the_demo_data_set() -> Result<()> {
    let config = config();
    let f = fixture(&config).await?;
    let app = &f.app;
    let e1 = "/v1/employees/E000001";

    // No token: 401 with a Bearer challenge; a bad or unknown token: 401
    // invalid_token. Problem+json, never cached.
    let r = get(app, e1, None, &[]).await?;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"foldcache\"")
    );
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    for bad in ["wrong-token", ""] {
        let r = get(app, e1, Some(bad), &[]).await?;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "token {bad:?}");
    }
    let r = get(app, e1, None, &[("authorization", "Basic dXNlcjpwdw==")]).await?;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("invalid_token")
    );

    // A token without the entity's scope: 403, for single and batch lookups.
    for uri in [e1, "/v1/employees?id=E000001"] {
        let r = get(app, uri, Some(TEAMS_ONLY_TOKEN), &[]).await?;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{uri}");
        assert!(
            r.header("www-authenticate")
                .unwrap()
                .contains("insufficient_scope")
        );
    }
    let r = get(app, "/v1/permissions/E000001", Some(DIRECTORY_TOKEN), &[]).await?;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Anonymous callers get what auth.anonymous grants, public.
    let r = get(app, "/v1/teams/T000001", None, &[]).await?;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("cache-control").unwrap().starts_with("public"));
    assert_eq!(r.header("vary"), Some("Accept-Encoding, Authorization"));

    // hr sees everything; directory only its fields; their ETags differ;
    // token-authenticated responses are private.
    let hr = get(app, e1, Some(HR_TOKEN), &[]).await?;
    let dir = get(app, e1, Some(DIRECTORY_TOKEN), &[]).await?;
    assert_eq!(hr.status, StatusCode::OK);
    assert_eq!(dir.status, StatusCode::OK);
    assert_eq!(
        hr.json(),
        f.employees[0].1,
        "the hr view is the whole state"
    );
    let dir_keys: BTreeSet<String> = dir.json().as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        dir_keys,
        DIRECTORY.iter().map(|s| (*s).to_owned()).collect()
    );
    let (hr_tag, dir_tag) = (hr.header("etag").unwrap(), dir.header("etag").unwrap());
    assert_ne!(hr_tag, dir_tag, "two views never share a validator");
    for r in [&hr, &dir] {
        assert!(
            r.header("cache-control").unwrap().starts_with("private, "),
            "{:?}",
            r.header("cache-control")
        );
        assert_eq!(r.header("vary"), Some("Accept-Encoding, Authorization"));
    }
    // Each view revalidates with its own tag only.
    let r = get(
        app,
        e1,
        Some(DIRECTORY_TOKEN),
        &[("if-none-match", dir_tag)],
    )
    .await?;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert!(r.header("cache-control").unwrap().starts_with("private"));
    let r = get(app, e1, Some(DIRECTORY_TOKEN), &[("if-none-match", hr_tag)]).await?;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the hr tag must not validate the directory view"
    );

    // Every field of every employee of the data set: the directory token
    // never receives one outside its view (batch lookups of 100), while the
    // hr token receives them all (so this check can fail).
    let allowed: BTreeSet<&str> = DIRECTORY.into_iter().collect();
    let mut hidden_fields_seen = BTreeSet::new();
    for chunk in f.employees.chunks(100) {
        let query: Vec<String> = chunk.iter().map(|(id, _)| format!("id={id}")).collect();
        let uri = format!("/v1/employees?{}", query.join("&"));
        let dir = get(app, &uri, Some(DIRECTORY_TOKEN), &[]).await?;
        let hr = get(app, &uri, Some(HR_TOKEN), &[]).await?;
        ensure!(dir.status == StatusCode::OK && hr.status == StatusCode::OK);
        assert!(dir.header("cache-control").unwrap().starts_with("private"));
        let (dir, hr) = (dir.json(), hr.json());
        for (id, state) in chunk {
            let got = dir[id].as_object().expect("a directory entry per id");
            for (field, value) in got {
                assert!(
                    allowed.contains(field.as_str()),
                    "{id}: field {field} leaked"
                );
                assert_eq!(&state[field], value, "{id}.{field}");
            }
            for field in DIRECTORY {
                assert_eq!(got.get(field), state.get(field), "{id}.{field}");
            }
            assert_eq!(&hr[id], state, "{id}: hr view");
            hidden_fields_seen.extend(
                state
                    .as_object()
                    .unwrap()
                    .keys()
                    .filter(|k| !allowed.contains(k.as_str()))
                    .cloned(),
            );
        }
    }
    for sensitive in ["salary", "phone", "birth_date", "address"] {
        assert!(
            hidden_fields_seen.contains(sensitive),
            "{sensitive} in the data set"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_token_over_its_rate_gets_429_with_retry_after() -> Result<()> {
    let config = config();
    let f = fixture(&config).await?;
    let uri = "/v1/teams/T000001";
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(get(&f.app, uri, Some(LIMITED_TOKEN), &[]).await?);
    }
    assert_eq!(statuses[0].status, StatusCode::OK);
    assert_eq!(statuses[1].status, StatusCode::OK, "burst of 2");
    let limited = statuses
        .iter()
        .find(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .expect("a 429 after the burst");
    assert_eq!(limited.header("retry-after"), Some("1"));
    assert_eq!(
        limited.header("content-type"),
        Some("application/problem+json")
    );
    // Other tokens are not affected.
    let r = get(&f.app, uri, Some(DIRECTORY_TOKEN), &[]).await?;
    assert_eq!(r.status, StatusCode::OK);
    // The bucket refills.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let r = get(&f.app, uri, Some(LIMITED_TOKEN), &[]).await?;
    assert_eq!(r.status, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn opting_in_to_shared_caches_keeps_public_and_varies_on_authorization() -> Result<()> {
    let mut config = config();
    config.auth.shared_cache_keys_on_authorization = true;
    let f = fixture(&config).await?;
    for (uri, status) in [
        ("/v1/employees/E000002", StatusCode::OK),
        ("/v1/employees/E9999999", StatusCode::NOT_FOUND),
    ] {
        let r = get(&f.app, uri, Some(DIRECTORY_TOKEN), &[]).await?;
        assert_eq!(r.status, status);
        assert!(r.header("cache-control").unwrap().starts_with("public"));
        assert_eq!(r.header("vary"), Some("Accept-Encoding, Authorization"));
    }
    Ok(())
}

/// Whether a shared cache may store this response and hand it to another
/// caller: `public`, or no `private` / `no-store`.
fn shareable(r: &Res) -> bool {
    let cc = r.header("cache-control").unwrap_or("");
    !(cc == "no-store" || cc.starts_with("private"))
}

/// A request and the error it must get: method, path, bearer token, extra
/// headers, status.
type ErrorCase<'a> = (
    Method,
    &'a str,
    Option<&'a str>,
    &'a [(&'a str, &'a str)],
    StatusCode,
);

#[tokio::test]
async fn no_error_answered_to_a_token_holder_is_shareable() -> Result<()> {
    let config = config();
    let f = fixture(&config).await?;
    let app = &f.app;
    let e1 = "/v1/employees/E000001";
    let cases: [ErrorCase; 10] = [
        (
            Method::GET,
            "/v1/employees/E9999999",
            Some(HR_TOKEN),
            &[],
            StatusCode::NOT_FOUND,
        ),
        (
            Method::HEAD,
            "/v1/employees/E9999999",
            Some(HR_TOKEN),
            &[],
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            "/v1/nosuch/E1",
            Some(HR_TOKEN),
            &[],
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            "/nope",
            Some(HR_TOKEN),
            &[],
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            "/v1/employees/a%20b",
            Some(HR_TOKEN),
            &[],
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/v1/employees?limit=0",
            Some(HR_TOKEN),
            &[],
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            e1,
            Some(TEAMS_ONLY_TOKEN),
            &[],
            StatusCode::FORBIDDEN,
        ),
        (
            Method::GET,
            e1,
            Some("not-a-known-token"),
            &[],
            StatusCode::UNAUTHORIZED,
        ),
        (
            Method::GET,
            e1,
            Some(HR_TOKEN),
            &[("if-match", "\"x\"")],
            StatusCode::PRECONDITION_FAILED,
        ),
        (
            Method::POST,
            e1,
            Some(HR_TOKEN),
            &[],
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ];
    for (method, uri, bearer, extra, status) in cases {
        let auth = bearer.map(|t| format!("Bearer {t}"));
        let mut headers = extra.to_vec();
        if let Some(a) = &auth {
            headers.push(("authorization", a));
        }
        let r = send(app, method.clone(), uri, &headers).await?;
        assert_eq!(r.status, status, "{method} {uri}");
        assert!(
            !shareable(&r),
            "{method} {uri} ({status}) to a token holder is shareable: {:?}",
            r.header("cache-control")
        );
    }
    // The token holder's 404 for a missing id: private, like its 200s.
    let r = get(app, "/v1/employees/E9999999", Some(HR_TOKEN), &[]).await?;
    assert_eq!(r.header("cache-control"), Some("private, max-age=5"));
    assert_eq!(r.header("vary"), Some("Accept-Encoding, Authorization"));
    // An anonymous caller's 404 stays public, but varies on Authorization so
    // no cache serves it to a token holder.
    let r = get(app, "/v1/teams/T9999999", None, &[]).await?;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.header("cache-control"), Some("public, max-age=5"));
    assert_eq!(r.header("vary"), Some("Accept-Encoding, Authorization"));
    // A rate-limited token: 429, never stored.
    let mut last = None;
    for _ in 0..4 {
        last = Some(get(app, "/v1/teams/T000001", Some(LIMITED_TOKEN), &[]).await?);
    }
    let r = last.unwrap();
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(!shareable(&r));
    Ok(())
}

#[tokio::test]
async fn an_unknown_entity_type_is_the_same_404_for_every_caller() -> Result<()> {
    let config = config();
    let f = fixture(&config).await?;
    let app = &f.app;
    let mut bodies = BTreeSet::new();
    for uri in ["/v1/salaries/E000001", "/v1/salaries?id=E000001"] {
        for bearer in [None, Some(HR_TOKEN), Some(TEAMS_ONLY_TOKEN)] {
            let r = get(app, uri, bearer, &[]).await?;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{uri} {bearer:?}");
            assert_eq!(r.header("content-type"), Some("application/problem+json"));
            assert_eq!(r.header("cache-control"), Some("no-store"));
            assert_eq!(r.header("www-authenticate"), None);
            bodies.insert(r.body.clone());
        }
    }
    assert_eq!(bodies.len(), 1, "one answer whoever asks");
    // Configured types the caller may not read: 401 without a token, 403
    // with one, whatever the id (no id is looked up).
    for id in ["E000001", "E9999999", "a%20b"] {
        let uri = format!("/v1/employees/{id}");
        assert_eq!(
            get(app, &uri, None, &[]).await?.status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            get(app, &uri, Some(TEAMS_ONLY_TOKEN), &[]).await?.status,
            StatusCode::FORBIDDEN
        );
    }
    // An unknown token is refused before the path is looked at.
    let r = get(app, "/v1/salaries/E000001", Some("not-a-known-token"), &[]).await?;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    Ok(())
}
