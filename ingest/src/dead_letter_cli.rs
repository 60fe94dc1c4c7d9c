//! `ingest dead-letters list|show|redrive`: the dead-letter topic from a
//! shell with the same config as ingest. Values are never printed (they may
//! hold HR data): a letter is shown by its origin, reason, error, key, and
//! the size and SHA-256 of its value. A redrive is audited like the admin
//! endpoints (target `audit`, who: the OS user).

use crate::dead_letter_tools::{
    self as tools, Letter, Outcome, Redrive, Redriver, Selection, format_utc_ms,
};
use foldcache_common::config::Config;

/// `list`: counts per reason and the `latest` letters of each.
pub async fn list(config: &Config, latest: usize, json: bool) -> anyhow::Result<()> {
    let s = tools::summary(config, latest).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!(
        "dead-letter topic {:?}: {} letter{}",
        config.kafka.dead_letter_topic,
        s.total,
        if s.total == 1 { "" } else { "s" }
    );
    if s.total == 0 {
        return Ok(());
    }
    println!("\n{:<24} {:>8}", "REASON", "COUNT");
    for (reason, r) in &s.reasons {
        println!("{reason:<24} {:>8}", r.count);
    }
    for (reason, r) in &s.reasons {
        println!("\nlatest {reason} (newest first):");
        for l in &r.latest {
            println!("  {}", one_line(l));
        }
    }
    println!("\nshow one: ingest dead-letters show PARTITION:OFFSET");
    Ok(())
}

/// One letter on one line: position, time, origin, key, value size and hash,
/// error.
pub fn one_line(l: &Letter) -> String {
    format!(
        "{}  {}  {}  key {}  value {}  {}{}",
        l.position(),
        l.timestamp_ms.map_or_else(|| "-".into(), format_utc_ms),
        l.origin(),
        l.key
            .as_deref()
            .map_or_else(|| "(none)".into(), |k| format!("{k:?}")),
        l.value_digest.as_ref().map_or_else(
            || "(null)".into(),
            |d| format!(
                "{} B sha256:{}",
                d.size,
                &d.sha256[..d.sha256.len().min(16)]
            )
        ),
        l.error,
        if l.envelope { "  [envelope]" } else { "" }
    )
}

/// `show PARTITION:OFFSET`: one letter's metadata.
pub async fn show(config: &Config, position: (i32, i64), json: bool) -> anyhow::Result<()> {
    let selection = Selection {
        positions: vec![position],
        ..Selection::default()
    };
    let found = tools::select(config, &selection).await?;
    let Some(raw) = found.first() else {
        anyhow::bail!(
            "no dead letter at {}:{} on {:?} (see `ingest dead-letters list`)",
            position.0,
            position.1,
            config.kafka.dead_letter_topic
        );
    };
    let l = Letter::of(raw);
    if json {
        println!("{}", serde_json::to_string_pretty(&l)?);
        return Ok(());
    }
    let digest = |d: &Option<tools::Digest256>| {
        d.as_ref().map_or_else(
            || "(null)".into(),
            |d| format!("{} bytes, sha256 {}", d.size, d.sha256),
        )
    };
    println!(
        "dead letter  {}:{}",
        config.kafka.dead_letter_topic,
        l.position()
    );
    println!(
        "when         {}",
        l.timestamp_ms.map_or_else(|| "-".into(), format_utc_ms)
    );
    println!("origin       {}", l.origin());
    println!("reason       {}", l.reason);
    println!("error        {}", l.error);
    println!(
        "key          {}",
        l.key
            .as_deref()
            .map_or_else(|| "(none)".into(), |k| format!("{k:?}"))
    );
    println!("key digest   {}", digest(&l.key_digest));
    println!("value        {} (never shown)", digest(&l.value_digest));
    if l.envelope {
        println!(
            "envelope     yes: the original record was too big to dead-letter whole; it cannot be re-driven"
        );
    }
    Ok(())
}

/// `redrive`: selected letters to their origin topic (or `to`).
pub async fn redrive(
    config: &Config,
    selection: Selection,
    to: Option<String>,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !selection.is_empty(),
        "select dead letters: PARTITION:OFFSET positions, --reason REASON, or --all"
    );
    if let Some(t) = &to {
        anyhow::ensure!(
            *t != config.kafka.dead_letter_topic,
            "--to {t:?} is the dead-letter topic itself"
        );
    }
    let raws = tools::select(config, &selection).await?;
    let redis = foldcache_common::redis_client::client(&config.redis)?;
    let mut redriver = Redriver::new(config, &redis).await?;
    let results = redriver.redrive(&raws, to.as_deref(), dry_run).await?;
    let who = format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    );
    audit(&who, &results, dry_run);
    if json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        print_results(&results, dry_run);
    }
    let refused = results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Refused { .. }))
        .count();
    anyhow::ensure!(
        !results.is_empty(),
        "no dead letter matches the selection (see `ingest dead-letters list`)"
    );
    anyhow::ensure!(
        refused == 0,
        "{refused} of {} selected dead letters {} refused (see above)",
        results.len(),
        if dry_run { "would be" } else { "were" }
    );
    Ok(())
}

fn print_results(results: &[Redrive], dry_run: bool) {
    for r in results {
        let what = match &r.outcome {
            Outcome::Redriven {
                topic,
                partition,
                offset,
            } => format!("re-driven to {topic}/{partition}/{offset}"),
            Outcome::WouldRedrive { topic, partition } => format!(
                "would be re-driven to {topic}{}",
                partition.map_or_else(String::new, |p| format!("/{p}"))
            ),
            Outcome::Refused { why } => format!("refused: {why}"),
        };
        println!("{} ({}): {what}", r.letter.position(), r.letter.origin());
    }
    if dry_run {
        println!("dry run: nothing was produced");
    }
}

/// One audit line per letter and one for the action (positions and
/// origins only: never a key or a value).
pub fn audit(who: &str, results: &[Redrive], dry_run: bool) {
    for r in results {
        let (outcome, detail) = match &r.outcome {
            Outcome::Redriven {
                topic,
                partition,
                offset,
            } => ("redriven", format!("{topic}/{partition}/{offset}")),
            Outcome::WouldRedrive { topic, .. } => ("would_redrive", topic.clone()),
            Outcome::Refused { why } => ("refused", why.clone()),
        };
        tracing::info!(target: "audit", action = "redrive", %who, dry_run,
            dead_letter = %r.letter.position(), origin = %r.letter.origin(),
            outcome, detail = %detail, "admin action");
    }
    let redriven = results
        .iter()
        .filter(|r| !matches!(r.outcome, Outcome::Refused { .. }))
        .count();
    tracing::info!(target: "audit", action = "redrive", %who, dry_run,
        selected = results.len(), redriven, refused = results.len() - redriven, "admin action");
}
