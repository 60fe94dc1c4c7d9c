//! Decode + fold preparation per record: JSON parse, canonical encoding,
//! SHA-256 validator and the argument list of the fold script; and the
//! same decode with each kind of per-source jq program (`transform`,
//! `id_from_key`), whose difference to the plain decode is the program's
//! cost per record. The Redis round trip is measured by the load benchmark
//! (docs/BENCHMARKS.md).

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use foldcache_common::config::ValueFormat;
use foldcache_common::id::EntityName;
use foldcache_common::keys::KeySpace;
use foldcache_common::transform::Program;
use foldcache_ingest::decode::decode;
use foldcache_ingest::fold::PartitionBatch;
use foldcache_ingest::generate::{EMPLOYEE_MAPPING, GenOptions, Generator};
use foldcache_ingest::source::{Source, SourcePrograms};
use std::hint::black_box;
use std::sync::Arc;

fn records() -> Vec<(Vec<u8>, Vec<u8>)> {
    let opts = GenOptions {
        seed: 1,
        employees: 1000,
        teams: 0,
        updates: 0,
        deletes: 0,
    };
    Generator::new(opts)
        .events()
        .filter(|e| e.kind == foldcache_ingest::generate::Kind::Employee)
        .filter_map(|e| Some((e.key.into_bytes(), serde_json::to_vec(&e.value?).ok()?)))
        .collect()
}

/// One program of each kind the configuration documents, on the
/// generator's employee shape; `realistic` is a whole company's mapping.
const TRANSFORMS: &[(&str, &str)] = &[
    ("identity", "."),
    ("rename", ". + {mail: .email} | del(.email)"),
    ("drop", "del(.salary, .birth_date, .phone)"),
    ("constant", r#". + {source: "northwind"}"#),
    (
        "nested_pick",
        ". + {city: .address.city, country: .address.country} | del(.address)",
    ),
    (
        "convert",
        ".hire_year = (.hire_date[0:4] | tonumber) | .fte = (.fte | tostring)",
    ),
    (
        "code_table",
        r#".division = ({"T000000": "eng", "T000001": "ops", "T000002": "sales",
            "T000003": "hr", "T000004": "finance", "T000005": "legal"}[.team_id] // "other")"#,
    ),
    ("filter", "select(.active)"),
    ("realistic", EMPLOYEE_MAPPING),
];

fn transforms(c: &mut Criterion) {
    let recs = records();
    let mut g = c.benchmark_group("transform");
    g.throughput(Throughput::Elements(recs.len() as u64));
    let plain = employees_source(SourcePrograms::default());
    g.bench_function("none", |b| b.iter(|| decode_all(&plain, &recs)));
    for (name, code) in TRANSFORMS {
        let program = Program::transform(code).expect("the bench's programs compile");
        let source = employees_source(SourcePrograms {
            transform: Some(Arc::new(program)),
            id_from_key: None,
            schema: None,
        });
        g.bench_function(*name, |b| b.iter(|| decode_all(&source, &recs)));
    }
    let program = Program::id_from_key(r#""nw-" + ascii_downcase"#).expect("compiles");
    let source = employees_source(SourcePrograms {
        transform: None,
        id_from_key: Some(Arc::new(program)),
        schema: None,
    });
    g.bench_function("id_from_key", |b| b.iter(|| decode_all(&source, &recs)));
    g.finish();
}

fn decode_all(source: &Source, recs: &[(Vec<u8>, Vec<u8>)]) {
    for (k, v) in recs {
        black_box(decode(source, Some(k), Some(v), 1 << 20).ok());
    }
}

fn employees_source(programs: SourcePrograms) -> Source {
    Source {
        topic: "hr.employees".into(),
        entity: EntityName::parse("employees").expect("valid name"),
        format: ValueFormat::Json,
        id_prefix: String::new(),
        ttl_ms: 604_800_000,
        programs,
        role: foldcache_ingest::source::Role::State,
    }
}

fn bench(c: &mut Criterion) {
    let source = employees_source(SourcePrograms::default());
    let keys = KeySpace::new("fc");
    let recs = records();
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(recs.len() as u64));
    g.bench_function("decode_1000_employees", |b| {
        b.iter(|| decode_all(&source, &recs))
    });
    g.bench_function("decode_and_batch_1000_employees", |b| {
        b.iter_batched(
            || PartitionBatch::new("hr.employees", 0),
            |mut batch| {
                for (i, (k, v)) in recs.iter().enumerate() {
                    if let Ok(d) = decode(&source, Some(k), Some(v), 1 << 20) {
                        batch.push(&keys, 1, &source, i as i64, 1_700_000_000_000, d);
                    }
                }
                black_box(batch)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench, transforms);
criterion_main!(benches);
