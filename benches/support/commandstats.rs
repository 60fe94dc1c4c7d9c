//! Redis's own profile of the commands it ran (`INFO commandstats`).

use anyhow::Result;

/// `INFO commandstats` as (command, calls, microseconds), the most
/// expensive first: the profile of what the fold asks Redis to do.
pub async fn command_stats(
    con: &mut redis::aio::MultiplexedConnection,
) -> Result<Vec<(String, u64, u64)>> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(con)
        .await?;
    let mut stats: Vec<(String, u64, u64)> = info
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |k: &str| {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
                    .and_then(|v| v.parse::<u64>().ok())
            };
            Some((name.to_owned(), field("calls")?, field("usec")?))
        })
        .collect();
    stats.sort_by_key(|s| std::cmp::Reverse(s.2));
    Ok(stats)
}
