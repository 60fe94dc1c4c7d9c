//! Decode + fold preparation per record: JSON parse, canonical encoding,
//! SHA-256 validator and the argument list of the fold script. The Redis
//! round trip is measured by the load benchmark (docs/BENCHMARKS.md).

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use foldcache_common::config::ValueFormat;
use foldcache_common::id::EntityName;
use foldcache_common::keys::KeySpace;
use foldcache_ingest::decode::decode;
use foldcache_ingest::fold::PartitionBatch;
use foldcache_ingest::generate::{GenOptions, Generator};
use foldcache_ingest::source::Source;
use std::hint::black_box;

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

fn bench(c: &mut Criterion) {
    let source = Source {
        topic: "hr.employees".into(),
        entity: EntityName::parse("employees").expect("valid name"),
        format: ValueFormat::Json,
        id_prefix: String::new(),
        ttl_ms: 604_800_000,
        programs: Default::default(),
    };
    let keys = KeySpace::new("fc");
    let recs = records();
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(recs.len() as u64));
    g.bench_function("decode_1000_employees", |b| {
        b.iter(|| {
            for (k, v) in &recs {
                black_box(decode(&source, Some(k), Some(v), 1 << 20).ok());
            }
        })
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

criterion_group!(benches, bench);
criterion_main!(benches);
