//! Where the services and binaries the kit starts are found.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// The Tansu broker: `$FOLDCACHE_TANSU`, `PATH`, or the cache that
/// `scripts/dev install` builds into.
pub fn tansu_binary() -> Result<PathBuf> {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let cache = std::env::var("XDG_CACHE_HOME").unwrap_or_else(|_| format!("{home}/.cache"));
    find_binary(
        "FOLDCACHE_TANSU",
        "tansu",
        &[PathBuf::from(format!(
            "{cache}/foldcache/tansu-0.6.0-durable/bin/tansu"
        ))],
    )
}

/// The `redis-server` to start: `$FOLDCACHE_REDIS_SERVER`, `PATH`, or
/// Debian's.
pub fn redis_server_binary() -> Result<PathBuf> {
    find_binary(
        "FOLDCACHE_REDIS_SERVER",
        "redis-server",
        &[PathBuf::from("/usr/bin/redis-server")],
    )
}

fn find_binary(env_var: &str, name: &str, fallbacks: &[PathBuf]) -> Result<PathBuf> {
    if let Ok(p) = std::env::var(env_var) {
        return Ok(PathBuf::from(p));
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    fallbacks
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .with_context(|| format!("{name} not found (set {env_var}, or run `scripts/dev install`)"))
}

/// The path of one of foldcache's binaries (`ingest`, `query-api`) in the
/// same target directory as the running test. `scripts/dev test` builds them
/// before the tests run.
pub fn foldcache_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test-binary>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable has no target directory")?;
    let p = dir.join(name);
    if !p.is_file() {
        bail!(
            "{} is missing: run `cargo build --workspace --bins` first (scripts/dev test does)",
            p.display()
        );
    }
    Ok(p)
}
