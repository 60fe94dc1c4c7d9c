//! `ingest dead-letters list|show|redrive` against a real broker, Redis and
//! `ingest`: poison records are listed by reason with their origin, key,
//! size and hash (never their value); a redrive refuses what would still
//! fail, envelopes and superseded records, and after the fix (a config
//! change, ingest restarted) puts the record back on its origin partition,
//! where it is folded.

use anyhow::{Context, Result, ensure};
use foldcache::{Stack, eventually, foldcache_binary};
use rdkafka::producer::{FutureProducer, FutureRecord};
use redis::AsyncCommands;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(90);

/// A value nobody may see again: it stands for HR data.
const SECRET: &str = "salary-9f1c-private";

async fn send(
    p: &FutureProducer,
    topic: &str,
    partition: i32,
    key: &str,
    value: &[u8],
) -> Result<i64> {
    let r = FutureRecord::to(topic)
        .partition(partition)
        .key(key)
        .payload(value);
    Ok(p.send(r, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| e)?
        .offset)
}

struct Cli {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn cli(stack: &Stack, args: &[&str], env: &[(&str, &str)]) -> Result<Cli> {
    let mut cmd = tokio::process::Command::new(foldcache_binary("ingest")?);
    cmd.arg("--config")
        .arg(stack.config_path())
        .arg("dead-letters")
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await?;
    let c = Cli {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    // Whatever it printed, never a value.
    ensure!(
        !c.stdout.contains(SECRET) && !c.stderr.contains(SECRET),
        "a dead letter's value was printed: {} {}",
        c.stdout,
        c.stderr
    );
    Ok(c)
}

async fn list_json(stack: &Stack) -> Result<Value> {
    let c = cli(stack, &["list", "--json", "--latest", "10"], &[]).await?;
    ensure!(c.code == Some(0), "list: {} {}", c.stdout, c.stderr);
    Ok(serde_json::from_str(&c.stdout)?)
}

/// The letter of `reason` whose origin offset is `offset`.
fn letter(list: &Value, reason: &str, offset: i64) -> Result<Value> {
    list["reasons"][reason]["latest"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["origin_offset"] == offset)
        .cloned()
        .with_context(|| format!("no {reason} letter from offset {offset} in {list}"))
}

fn position(l: &Value) -> String {
    format!("{}:{}", l["partition"], l["offset"])
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_listed_shown_and_redriven_after_the_fix() -> Result<()> {
    let stack = Stack::start(2, "").await?;
    let emp = stack.topics.employees.clone();
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", stack.broker.bootstrap())
        .set("message.max.bytes", "5000000")
        .set("linger.ms", "0")
        .create()?;
    let wide = format!(r#"{{"name":"n","pay":"{SECRET}","team":"t"}}"#);
    let ok = send(&producer, &emp, 0, "E1", br#"{"name":"one"}"#).await?;
    let wide_at = send(&producer, &emp, 1, "E2", wide.as_bytes()).await?;
    let json_at = send(&producer, &emp, 0, "E3", format!("{{{SECRET}").as_bytes()).await?;
    // E4 is poison, then fixed upstream by a later record.
    let old_at = send(&producer, &emp, 0, "E4", wide.as_bytes()).await?;
    send(&producer, &emp, 0, "E4", br#"{"name":"four"}"#).await?;
    // Too big for the dead-letter topic: an envelope.
    let big = format!(r#"{{"pay":"{SECRET}","pad":"{}"}}"#, "x".repeat(1_200_000));
    let big_at = send(&producer, &emp, 1, "E5", big.as_bytes()).await?;
    ensure!(ok == 0);

    // Objects are limited to two members: E2 and E4's first record are
    // dead-lettered as too wide.
    let narrow = [("FOLDCACHE__INGEST__MAX_MEMBERS", "2")];
    let mut ingest = stack.spawn_ingest_with(&narrow)?;
    let con = stack.redis.connection().await?;
    eventually("E4's later record folded", WAIT, || {
        let mut con = con.clone();
        async move {
            let name: Option<String> = con.hget("fc:g1:employees:E4", "name").await?;
            Ok((name.as_deref() == Some("\"four\"")).then_some(()))
        }
    })
    .await?;
    let list = eventually("four dead letters", WAIT, || async {
        let l = list_json(&stack).await?;
        Ok((l["total"] == 4).then_some(l))
    })
    .await?;
    assert_eq!(list["reasons"]["too_many_members"]["count"], 2, "{list}");
    assert_eq!(list["reasons"]["invalid_json"]["count"], 1, "{list}");
    assert_eq!(list["reasons"]["too_large"]["count"], 1, "{list}");
    let e2 = letter(&list, "too_many_members", wide_at)?;
    assert_eq!(e2["origin_topic"], emp.as_str());
    assert_eq!(e2["origin_partition"], 1);
    assert_eq!(e2["key"], "E2");
    assert_eq!(e2["value_digest"]["size"], wide.len());
    assert_eq!(
        e2["value_digest"]["sha256"],
        hex(&Sha256::digest(wide.as_bytes()))
    );
    let e3 = letter(&list, "invalid_json", json_at)?;
    let e4 = letter(&list, "too_many_members", old_at)?;
    let e5 = letter(&list, "too_large", big_at)?;
    assert_eq!(e5["envelope"], true);
    assert_eq!(e5["value_digest"]["size"], big.len(), "the original's size");

    // The text listing: counts per reason, origins, never a value.
    let text = cli(&stack, &["list"], &[]).await?;
    assert_eq!(text.code, Some(0), "{}", text.stderr);
    assert!(text.stdout.contains("4 letters"), "{}", text.stdout);
    assert!(text.stdout.contains("too_many_members"), "{}", text.stdout);
    assert!(
        text.stdout.contains(&format!("{emp}/1/{wide_at}")),
        "{}",
        text.stdout
    );
    let show = cli(&stack, &["show", &position(&e2)], &[]).await?;
    assert_eq!(show.code, Some(0), "{}", show.stderr);
    assert!(
        show.stdout.contains(&hex(&Sha256::digest(wide.as_bytes()))),
        "{}",
        show.stdout
    );
    let missing = cli(&stack, &["show", "0:99999"], &[]).await?;
    assert_eq!(missing.code, Some(1));
    assert!(
        missing.stderr.contains("no dead letter at 0:99999"),
        "{}",
        missing.stderr
    );
    let bad = cli(&stack, &["show", "zero"], &[]).await?;
    assert_eq!(bad.code, Some(2), "clap refuses a malformed position");

    // Before the fix: everything is refused, and why.
    let before = cli(
        &stack,
        &[
            "redrive",
            "--reason",
            "too_many_members",
            "--reason",
            "invalid_json",
            "--reason",
            "too_large",
            "--dry-run",
            "--json",
        ],
        &narrow,
    )
    .await?;
    assert_eq!(before.code, Some(1), "{}", before.stderr);
    let outcomes: Value = serde_json::from_str(&before.stdout)?;
    let why = |pos: &str| -> String {
        outcomes
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| position(&r["letter"]) == pos)
            .and_then(|r| r["why"].as_str())
            .unwrap_or("not refused")
            .to_owned()
    };
    assert!(
        why(&position(&e2)).starts_with("would still fail: too_many_members"),
        "{outcomes}"
    );
    assert!(
        why(&position(&e3)).starts_with("would still fail: invalid_json"),
        "{outcomes}"
    );
    assert!(why(&position(&e4)).starts_with("superseded"), "{outcomes}");
    assert!(why(&position(&e5)).starts_with("an envelope"), "{outcomes}");

    // The fix: objects of any width (the default); ingest restarted.
    ingest.terminate(Duration::from_secs(20));
    let _ingest = stack.spawn_ingest()?;
    let dry = cli(&stack, &["redrive", &position(&e2), "--dry-run"], &[]).await?;
    assert_eq!(dry.code, Some(0), "{} {}", dry.stdout, dry.stderr);
    assert!(
        dry.stdout
            .contains(&format!("would be re-driven to {emp}/1")),
        "{}",
        dry.stdout
    );
    assert!(dry.stdout.contains("dry run: nothing was produced"));
    let elsewhere = cli(
        &stack,
        &[
            "redrive",
            &position(&e2),
            "--dry-run",
            "--to",
            &stack.topics.teams,
        ],
        &[],
    )
    .await?;
    assert_eq!(elsewhere.code, Some(0), "{}", elsewhere.stderr);
    assert!(
        elsewhere
            .stdout
            .contains(&format!("would be re-driven to {}", stack.topics.teams)),
        "{}",
        elsewhere.stdout
    );
    let done = cli(&stack, &["redrive", &position(&e2), "--json"], &[]).await?;
    assert_eq!(done.code, Some(0), "{} {}", done.stdout, done.stderr);
    let done: Value = serde_json::from_str(&done.stdout)?;
    assert_eq!(done[0]["outcome"], "redriven", "{done}");
    assert_eq!(done[0]["partition"], 1, "back on its origin partition");
    let new_offset = done[0]["offset"].as_i64().context("offset")?;
    assert!(new_offset > wide_at);
    // Folded, whole, from the re-driven record.
    eventually("the re-driven E2 folded", WAIT, || {
        let mut con = con.clone();
        let want = format!("{emp}/1/{new_offset}");
        async move {
            let src: Option<String> = con.hget("fc:g1:employees:E2", "_fc:src").await?;
            Ok((src.as_deref() == Some(want.as_str())).then_some(()))
        }
    })
    .await?;
    let fields: usize = con.clone().hlen("fc:g1:employees:E2").await?;
    assert_eq!(fields, 3 + 3, "three members and three meta fields");
    // A second redrive of the same letter is refused: the cache holds it.
    let again = cli(&stack, &["redrive", &position(&e2)], &[]).await?;
    assert_eq!(again.code, Some(1));
    assert!(
        again.stdout.contains("refused: superseded"),
        "{}",
        again.stdout
    );
    // Selecting nothing is an error, and so is the dead-letter topic as
    // destination.
    let nothing = cli(&stack, &["redrive"], &[]).await?;
    assert_eq!(nothing.code, Some(1));
    assert!(
        nothing.stderr.contains("select dead letters"),
        "{}",
        nothing.stderr
    );
    let dlq = stack.topics.dead_letter.clone();
    let into_dlq = cli(&stack, &["redrive", "--all", "--to", &dlq], &[]).await?;
    assert_eq!(into_dlq.code, Some(1));
    // Every redrive is in the audit log, by position, never with a key or a
    // value.
    assert!(
        again.stderr.contains("audit") && again.stderr.contains("action=\"redrive\""),
        "{}",
        again.stderr
    );
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
