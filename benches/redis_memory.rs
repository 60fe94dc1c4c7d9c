//! Redis memory per employee, by key kind: N generator employees (default
//! 100,000) folded by ingest's own decode and fold code into a real
//! redis-server with the default config (indexes `email` unique, `team_id`,
//! `manager_id`), then `INFO memory` and `MEMORY USAGE` of a sample of each
//! key kind. The baseline is the employee's canonical JSON (the body
//! query-api serves), measured in the same run.
//!
//! No broker: this measures the key scheme, not the pipeline
//! (`benches/ingest_load.rs` measures that).
//!
//! Run: `scripts/dev bench-memory [EMPLOYEES]`.

#[path = "support/commandstats.rs"]
mod commandstats;
#[path = "support/employees.rs"]
mod employees;

use anyhow::{Context, Result};
use commandstats::command_stats;
use employees::{Folded, batch_size, count_arg, fold_employees, ready_redis};
use foldcache_common::config::Config;
use std::collections::BTreeMap;

const EPOCH: &str = "bench-epoch";

#[tokio::main]
async fn main() -> Result<()> {
    let employees = count_arg(100_000);
    let (redis, mut con, keys) = ready_redis(EPOCH).await?;
    let before = used_memory(&mut con).await?;
    let redis_pid = redis.pid().context("redis pid")?;
    let cpu_before = foldcache::cpu_secs(redis_pid);
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async::<()>(&mut con)
        .await?;
    let Folded {
        employees: folded,
        json_bytes,
        sample,
    } = fold_employees(&mut con, &keys, EPOCH, &Config::default(), employees).await?;
    let redis_cpu = foldcache::cpu_secs(redis_pid) - cpu_before;
    let commands = command_stats(&mut con).await?;
    let used = used_memory(&mut con).await? - before;
    let n = folded as f64;

    // Sample every key kind.
    let mut kinds: BTreeMap<String, (u64, u64, BTreeMap<String, u64>)> = BTreeMap::new();
    let mut cursor = 0u64;
    let mut sampled = 0usize;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut con)
            .await?;
        for k in batch {
            let bytes: Option<u64> = redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(&k)
                .arg("SAMPLES")
                .arg(0)
                .query_async(&mut con)
                .await?;
            let encoding: String = redis::cmd("OBJECT")
                .arg("ENCODING")
                .arg(&k)
                .query_async(&mut con)
                .await?;
            let e = kinds.entry(kind_of(&k)).or_default();
            e.0 += 1;
            e.1 += bytes.unwrap_or(0);
            *e.2.entry(encoding).or_default() += 1;
            sampled += 1;
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    println!(
        "\n## Redis memory per employee ({folded} employees, default config)\n\n\
         canonical JSON: {:.0} bytes per employee (the baseline)\n\
         used_memory growth: {:.0} bytes per employee = {:.2}x the canonical JSON\n\
         Redis CPU of the fold: {:.1} us per employee ({} per script call)\n",
        json_bytes as f64 / n,
        used as f64 / n,
        used as f64 / json_bytes as f64,
        redis_cpu * 1e6 / n,
        batch_size()
    );
    println!("| key kind | keys | encodings | MEMORY USAGE bytes per employee |");
    println!("|---|---:|---|---:|");
    for (k, (count, bytes, encodings)) in &kinds {
        let encodings: Vec<String> = encodings.iter().map(|(e, c)| format!("{e} {c}")).collect();
        println!(
            "| `{k}` | {count} | {} | {:.0} |",
            encodings.join(", "),
            *bytes as f64 / n
        );
    }
    let total: u64 = kinds.values().map(|v| v.1).sum();
    println!("| all ({sampled} keys) | | | {:.0} |", total as f64 / n);
    println!(
        "\n## Where Redis spends the fold (INFO commandstats; the script's own \
         commands are counted inside it as well)\n"
    );
    println!("| command | calls per employee | us per employee |");
    println!("|---|---:|---:|");
    for (name, calls, usec) in commands {
        println!(
            "| `{name}` | {:.2} | {:.2} |",
            calls as f64 / n,
            usec as f64 / n
        );
    }
    floors(&mut con, &sample).await
}

/// What any layout of the same bodies costs at least, measured beside the
/// fold: each sampled body alone in a string key named like its entity
/// hash, with a TTL (the floor of every uncompressed layout), then the
/// same compressed by zstd with a dictionary trained on the first half of
/// the sample (what compression could reach), with what compressing and
/// decompressing cost per body.
async fn floors(
    con: &mut redis::aio::MultiplexedConnection,
    sample: &[(String, Vec<u8>)],
) -> Result<()> {
    let (train, test) = sample.split_at(sample.len() / 2);
    if train.is_empty() || test.is_empty() {
        return Ok(());
    }
    let train: Vec<&[u8]> = train.iter().map(|(_, b)| b.as_slice()).collect();
    let json = test.iter().map(|(_, b)| b.len()).sum::<usize>() as f64 / test.len() as f64;
    let plain = stored_bytes(con, "p", test.iter().map(|(id, b)| (id, b.clone()))).await?;
    let dict = zstd::dict::from_samples(&train, DICT_BYTES)?;
    let mut packer = zstd::bulk::Compressor::with_dictionary(3, &dict)?;
    let started = std::time::Instant::now();
    let packed: Vec<(&String, Vec<u8>)> = test
        .iter()
        .map(|(id, b)| Ok((id, packer.compress(b)?)))
        .collect::<Result<_>>()?;
    let pack_us = started.elapsed().as_secs_f64() * 1e6 / test.len() as f64;
    let mut unpacker = zstd::bulk::Decompressor::with_dictionary(&dict)?;
    let started = std::time::Instant::now();
    for ((_, b), (_, z)) in test.iter().zip(&packed) {
        anyhow::ensure!(unpacker.decompress(z, b.len())? == *b, "zstd round trip");
    }
    let unpack_us = started.elapsed().as_secs_f64() * 1e6 / test.len() as f64;
    let zbytes = packed.iter().map(|(_, z)| z.len()).sum::<usize>() as f64 / test.len() as f64;
    let zstored = stored_bytes(con, "z", packed.into_iter()).await?;
    println!(
        "\n## Floors: the same bodies in the leanest layouts ({} employees, the sample's second half)\n",
        test.len()
    );
    println!(
        "| stored per employee | value bytes | used_memory bytes per employee | / canonical JSON |"
    );
    println!("|---|---:|---:|---:|");
    println!(
        "| the canonical JSON alone, one string key with a TTL | {json:.0} | {plain:.0} | {:.2}x |",
        plain / json
    );
    println!(
        "| zstd level 3, {} KiB dictionary trained on the first {} bodies, one string key with a TTL | {zbytes:.0} | {zstored:.0} | {:.2}x |",
        DICT_BYTES / 1024,
        train.len(),
        zstored / json
    );
    println!(
        "\nzstd with the dictionary: {pack_us:.2} us to compress and {unpack_us:.2} us to decompress one body (this process, one thread)"
    );
    Ok(())
}

/// zstd dictionary size of [`floors`].
const DICT_BYTES: usize = 16 * 1024;

/// `used_memory` growth per key for `values` stored as string keys named
/// like entity hashes (`fc:g9:{kind}employees:{id}`) with a TTL, removed
/// again afterwards.
async fn stored_bytes<'a>(
    con: &mut redis::aio::MultiplexedConnection,
    kind: &str,
    values: impl Iterator<Item = (&'a String, Vec<u8>)>,
) -> Result<f64> {
    let before = used_memory(con).await?;
    let mut keys = Vec::new();
    let mut pipe = redis::pipe();
    for (id, v) in values {
        let key = format!("fc:g9:{kind}employees:{id}");
        pipe.cmd("SET")
            .arg(&key)
            .arg(v)
            .arg("PX")
            .arg(604_800_000)
            .ignore();
        keys.push(key);
    }
    pipe.query_async::<()>(con).await?;
    let grown = used_memory(con).await?.saturating_sub(before) as f64 / keys.len() as f64;
    for chunk in keys.chunks(1000) {
        redis::cmd("DEL").arg(chunk).query_async::<()>(con).await?;
    }
    Ok(grown)
}

/// `fc:g1:employees:E00001` → `{entity hash}`, `fc:g1:{employees}:_ix:team_id:…`
/// → `_ix:team_id:*`, `fc:g1:{employees}:_uix:email` → itself.
fn kind_of(key: &str) -> String {
    let parts: Vec<&str> = key.splitn(5, ':').collect();
    match parts.as_slice() {
        [_, _, _, rest, _] if rest.starts_with("_ix") => format!("{}:{}:*", parts[2], rest),
        [_, _, e, "_uix", index] => format!("{e}:_uix:{index} (unique index)"),
        [_, g, e, last] if g.starts_with('g') && !last.starts_with('_') => {
            format!("{e}:{{id}} (entity hash)")
        }
        [_, g, e, last] if g.starts_with('g') => format!("{e}:{last}"),
        _ => parts.iter().take(2).cloned().collect::<Vec<_>>().join(":"),
    }
}

async fn used_memory(con: &mut redis::aio::MultiplexedConnection) -> Result<u64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(con).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no used_memory")
}
