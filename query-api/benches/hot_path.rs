//! The query-api read path's hot functions, per request, over the demo
//! data set's employees: rendering a stored hash into a view's body and
//! validators, the view ETag, the SHA-256 ETag of a body, conditional
//! evaluation, and an in-process cache hit. Baseline in the same run:
//! `serde_json::to_vec` of the same employee (what a naive server would do
//! per request). The network round trip is measured by the load benchmark
//! (benches/http, docs/BENCHMARKS.md).

use criterion::{Criterion, criterion_group, criterion_main};
use foldcache_common::config::FULL_VIEW;
use foldcache_common::keys::{META_ETAG, META_MODIFIED_MS};
use foldcache_common::state::{EntityState, etag_of};
use foldcache_query_api::auth::View;
use foldcache_query_api::conditional::{Outcome, evaluate};
use foldcache_query_api::local_cache::LocalCache;
use foldcache_query_api::store::decode_hash;
use headers::{ETag, HeaderMapExt};
use http::{HeaderMap, HeaderValue};
use serde_json::{Value, json};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

fn employee() -> Value {
    json!({"active": true, "address": {"city": "Incheon", "country": "KR"},
        "birth_date": "1968-01-25", "company": "hanbit", "contractor": true,
        "email": "yeji.kwon1@hanbit.co.kr", "fte": 1.0, "hire_date": "2020-12-01",
        "id": "E000001", "manager_id": null, "name": "권예지", "name_en": "Yeji Kwon",
        "phone": "+82-10-9135-3687", "salary": {"amount": 127_658_000, "currency": "KRW"},
        "skills": ["go", "sql", "python"], "team_id": "T004339", "title": "HR Business Partner"})
}

/// The hash as ingest stores it: one canonical field per member, plus the
/// validators.
fn stored() -> Vec<(String, String)> {
    let state = EntityState::from_value(employee()).expect("an object");
    let mut fields = state.fields().to_vec();
    fields.push((META_ETAG.into(), etag_of(&state.body())));
    fields.push((META_MODIFIED_MS.into(), "1735689600000".into()));
    fields
}

fn bench(c: &mut Criterion) {
    let value = employee();
    let fields = stored();
    let full = View::new("employees", FULL_VIEW, None);
    let directory = View::new(
        "employees",
        "directory",
        Some(
            ["id", "name", "email", "team_id", "title"]
                .map(str::to_owned)
                .into(),
        ),
    );
    let body = decode_hash(&fields, &full).expect("renders").body;
    let etag = format!("\"{}\"", etag_of(&body));
    let tag: ETag = etag.parse().expect("a tag");
    let mut g = c.benchmark_group("query_api");

    g.bench_function("baseline: serde_json::to_vec of the employee", |b| {
        b.iter(|| serde_json::to_vec(black_box(&value)))
    });
    g.bench_function("render stored hash, full view", |b| {
        b.iter(|| decode_hash(black_box(&fields), &full))
    });
    g.bench_function("render stored hash, directory view", |b| {
        b.iter(|| decode_hash(black_box(&fields), &directory))
    });
    g.bench_function("etag_of body (SHA-256)", |b| {
        b.iter(|| etag_of(black_box(&body)))
    });
    g.bench_function("view etag (directory)", |b| {
        b.iter(|| directory.etag(black_box("HjdMDHUEp9HVxsAyO4t58ywxgqxkPbSWgZQfSAcqysc")))
    });
    let mut inm = HeaderMap::new();
    inm.insert(
        http::header::IF_NONE_MATCH,
        HeaderValue::from_str(&format!("\"a\", W/\"b\", {etag}")).expect("ascii"),
    );
    let date = SystemTime::UNIX_EPOCH + Duration::from_secs(1_735_689_600);
    let when = Some(date);
    g.bench_function("evaluate If-None-Match list (304)", |b| {
        b.iter(|| {
            let o = evaluate(black_box(&inm), &tag, when);
            assert_eq!(o, Outcome::NotModified);
        })
    });
    let mut ims = HeaderMap::new();
    ims.typed_insert(headers::IfModifiedSince::from(date));
    g.bench_function("evaluate If-Modified-Since (304)", |b| {
        b.iter(|| evaluate(black_box(&ims), &tag, when))
    });

    // The cache turns on only with a live invalidation connection: a real
    // Redis (FOLDCACHE_BENCH_REDIS, default the machine's 127.0.0.1:6379).
    let url =
        std::env::var("FOLDCACHE_BENCH_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let cache = LocalCache::new(10_000, vec![FULL_VIEW.to_owned()]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let tracking = rt.block_on(async {
        let client = redis::Client::open(url.as_str()).ok()?;
        let _task = tokio::spawn(cache.clone().track(client, "fcbench".into()));
        for _ in 0..50 {
            if cache.enabled() {
                return Some(_task);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    });
    if tracking.is_some() {
        let entity = Arc::new(decode_hash(&fields, &full).expect("renders"));
        let key = "fcbench:g1:employees:E000001";
        if let Err(Some(ticket)) = cache.lookup(key, FULL_VIEW) {
            cache.complete(ticket, entity);
        }
        assert!(cache.lookup(key, FULL_VIEW).is_ok(), "cached");
        g.bench_function("local cache hit", |b| {
            b.iter(|| cache.lookup(black_box(key), FULL_VIEW).is_ok())
        });
    } else {
        eprintln!("no Redis at {url}: skipping the local cache benchmark");
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
