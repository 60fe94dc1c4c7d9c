//! Two companies, one directory: per-source jq programs through the real
//! broker, `ingest` and query-api.
//!
//! Northwind publishes plain JSON states keyed `N<n>` with its own field
//! names, department codes and a `status` that filters leavers out; Globex
//! publishes Debezium events keyed `{"emp_no": n}` with other names and a
//! nested org unit. Each source's config maps its records into the one
//! canonical employee shape. A random log of both (updates, tombstones,
//! filtered states, records the programs cannot handle, states the
//! entity's JSON Schema refuses) is folded, and every
//! served employee is compared with a reference merge computed here,
//! independently of jq: after a SIGKILL of ingest in mid-stream, and again
//! after an on-demand rebuild. A record a program cannot handle is
//! dead-lettered (its reason never quotes it) and its partition goes on.
//! A bad program stops both binaries at start with one line.

use anyhow::{Context, Result, ensure};
use foldcache::{Rec, Stack, eventually, foldcache_binary, live_generation, produce_all, unique};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::{Headers, Message};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);

/// A value that must never leave the record: it stands for HR data.
const SECRET: &str = "salary-7c2e-private";

/// The two sources' programs, as an operator would write them.
fn merger_toml(northwind: &str, globex: &str) -> String {
    format!(
        r#"
[[sources]]
topic = "{northwind}"
entity = "employees"
id_prefix = "nw."
transform = '''
def teams: {{"D10": "team-eng", "D20": "team-ops"}};
select(.status != "terminated")
| {{id: $id, company: "northwind", name: .full_name, email: .contact.mail,
    team_id: (teams[.dept] // null), level: (.grade | tonumber)}}
'''

[[sources]]
topic = "{globex}"
entity = "employees"
format = "debezium"
id_prefix = "gx."
id_from_key = '"E\(.emp_no)"'
transform = '''
{{id: $id, company: "globex", name: "\(.first_name) \(.last_name)",
  email: .email_address,
  team_id: ({{"ENG": "team-eng", "OPS": "team-ops"}}[.org.unit] // null),
  level: .level}}
'''
"#
    )
}

/// The directory's canonical shape: both companies' states must fit it.
const EMPLOYEE_SCHEMA: &str = r#"{
  "type": "object",
  "required": ["id", "company", "name", "email"],
  "properties": {
    "company": {"enum": ["northwind", "globex"]},
    "email": {"type": "string"},
    "level": {"type": "integer", "minimum": 1}
  }
}"#;

/// Served id -> canonical state (None: not served).
type Reference = BTreeMap<String, Option<Value>>;

/// A random log of both companies. `Some(id)` with each record is the
/// canonical id it concerns (None for records that cannot be keyed).
fn random_log(seed: u64, northwind: &str, globex: &str, n: usize) -> Vec<Rec> {
    let mut rng = StdRng::seed_from_u64(seed);
    let depts = ["D10", "D20", "D99"];
    let units = ["ENG", "OPS", "HQ"];
    (0..n)
        .map(|_| {
            let k = rng.random_range(0..120);
            let roll = rng.random_range(0..100);
            if rng.random_bool(0.5) {
                let key = format!("N{k}").into_bytes();
                let value = match roll {
                    0..12 => None,
                    12..20 => Some(json!({"full_name": "x", "grade": "not-a-number",
                                          "salary": SECRET})),
                    _ => Some(json!({
                        "full_name": format!("Northwind {k}-{}", rng.random::<u16>()),
                        "contact": {"mail": format!("n{k}@northwind.example")},
                        "dept": depts[rng.random_range(0..depts.len())],
                        "grade": rng.random_range(1..9).to_string(),
                        "status": if roll < 35 { "terminated" } else { "active" },
                        "salary": SECRET,
                    })),
                };
                Rec {
                    topic: northwind.to_owned(),
                    key: Some(key),
                    value: value.map(|v| v.to_string().into_bytes()),
                }
            } else {
                let key = json!({"emp_no": k}).to_string().into_bytes();
                let mut after = json!({
                    "first_name": format!("Globex{k}"),
                    "last_name": format!("L{}", rng.random::<u16>()),
                    "email_address": format!("g{k}@globex.example"),
                    "org": {"unit": units[rng.random_range(0..units.len())]},
                    "level": rng.random_range(1..9),
                    "pay": SECRET,
                });
                if roll >= 95 {
                    // No email: the entity's schema refuses the state.
                    after["email_address"] = Value::Null;
                }
                let value = match roll {
                    0..8 => None,
                    8..16 => Some(json!({"op": "d", "before": after, "after": null})),
                    16..20 => Some(json!({"op": "u", "after": "not an object"})),
                    _ => Some(json!({"op": if roll < 40 { "c" } else { "u" },
                                     "before": null, "after": after})),
                };
                Rec {
                    topic: globex.to_owned(),
                    key: Some(key),
                    value: value.map(|v| v.to_string().into_bytes()),
                }
            }
        })
        .collect()
}

/// The reference merge, written without jq: what each source's programs
/// say, record by record, the last record of a key winning.
fn reference_merge(log: &[Rec], northwind: &str) -> Reference {
    let mut reference = Reference::new();
    for r in log {
        let value: Option<Value> = r.value.as_ref().map(|v| serde_json::from_slice(v).unwrap());
        let (id, state) = if r.topic == northwind {
            let key = r.key.as_deref().unwrap_or_default();
            let id = format!("nw.{}", String::from_utf8_lossy(key));
            let Some(v) = value else {
                reference.insert(id, None);
                continue;
            };
            let Ok(level) = v["grade"].as_str().unwrap_or("").parse::<i64>() else {
                continue; // poison: nothing changes
            };
            if v["status"] == "terminated" {
                (id, None)
            } else {
                let team = match v["dept"].as_str() {
                    Some("D10") => json!("team-eng"),
                    Some("D20") => json!("team-ops"),
                    _ => Value::Null,
                };
                let state = json!({"id": id, "company": "northwind", "name": v["full_name"],
                    "email": v["contact"]["mail"], "team_id": team, "level": level});
                (id, Some(state))
            }
        } else {
            let key: Value = serde_json::from_slice(r.key.as_deref().unwrap_or(b"{}")).unwrap();
            let id = format!("gx.E{}", key["emp_no"]);
            let after = match value {
                None => None,
                Some(v) if v["op"] == "d" => None,
                Some(v) if v["after"]["email_address"].is_null() && v["after"].is_object() => {
                    continue; // fails the schema: nothing changes
                }
                Some(v) if v["after"].is_object() => Some(v["after"].clone()),
                Some(_) => continue, // poison: nothing changes
            };
            let state = after.map(|a| {
                let team = match a["org"]["unit"].as_str() {
                    Some("ENG") => json!("team-eng"),
                    Some("OPS") => json!("team-ops"),
                    _ => Value::Null,
                };
                let name = format!(
                    "{} {}",
                    a["first_name"].as_str().unwrap_or(""),
                    a["last_name"].as_str().unwrap_or("")
                );
                json!({"id": id, "company": "globex", "name": name,
                       "email": a["email_address"], "team_id": team, "level": a["level"]})
            });
            (id, state)
        };
        reference.insert(id, state);
    }
    reference
}

/// Every difference between what query-api serves and the reference, and
/// the collection's ids against the reference's live ids.
async fn differences(stack: &Stack, reference: &Reference) -> Result<Vec<String>> {
    let client = reqwest::Client::new();
    let mut diffs = Vec::new();
    for (id, want) in reference {
        let url = format!("{}/v1/employees/{id}", stack.base_url());
        let r = client.get(&url).send().await?;
        let got = match r.status().as_u16() {
            200 => Some(r.json::<Value>().await?),
            404 => None,
            s => anyhow::bail!("{url}: {s}"),
        };
        if &got != want {
            diffs.push(format!("{id}: served {got:?} != reference {want:?}"));
        }
    }
    let mut served = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{}/v1/employees?limit=1000", stack.base_url());
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = client.get(&url).send().await?.json().await?;
        for item in page["items"].as_array().context("items")? {
            served.push(item["id"].as_str().context("id")?.to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let live: Vec<&String> = reference
        .iter()
        .filter_map(|(id, v)| v.as_ref().map(|_| id))
        .collect();
    if served.iter().collect::<Vec<_>>() != live {
        diffs.push(format!(
            "collection serves {} ids, reference has {} live",
            served.len(),
            live.len()
        ));
    }
    Ok(diffs)
}

fn merged(ends: &mut HashMap<(String, i32), i64>, more: HashMap<(String, i32), i64>) {
    for (tp, e) in more {
        let x = ends.entry(tp).or_insert(0);
        *x = (*x).max(e);
    }
}

/// The dead letters read so far: (reason, error) by origin topic.
async fn dead_letters(consumer: &StreamConsumer, at_least: usize) -> Result<Vec<(String, String)>> {
    let mut letters = Vec::new();
    while letters.len() < at_least {
        let m = tokio::time::timeout(WAIT, consumer.recv())
            .await
            .context("waiting for dead letters")??;
        let header = |name: &str| {
            m.headers()
                .and_then(|h| h.iter().find(|x| x.key == name))
                .and_then(|x| x.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        letters.push((header("foldcache.reason"), header("foldcache.error")));
    }
    Ok(letters)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_companies_merge_into_one_directory_through_sigkill_and_rebuild() -> Result<()> {
    let stack = Stack::start(2, "").await?;
    let id = unique("m");
    let (northwind, globex) = (format!("{id}.northwind"), format!("{id}.globex"));
    stack
        .broker
        .create_topics(&[&northwind, &globex], 2)
        .await?;
    let schema = stack.config_path().with_file_name("employees.schema.json");
    std::fs::write(&schema, EMPLOYEE_SCHEMA)?;
    let config = stack.config_toml()
        + &merger_toml(&northwind, &globex)
        + &format!(
            "\n[entities.employees]\nschema_file = {:?}\n",
            schema.to_string_lossy()
        );
    std::fs::write(stack.config_path(), config)?;

    let log = random_log(0x13, &northwind, &globex, 3_000);
    let reference = reference_merge(&log, &northwind);
    ensure!(
        reference.values().filter(|v| v.is_some()).count() > 50
            && reference.values().any(Option::is_none),
        "the log leaves both served and removed people"
    );
    let producer = stack.producer()?;
    let con = stack.redis.connection().await?;
    let dlq = stack.dead_letter_consumer()?;

    let batches = [("FOLDCACHE__INGEST__BATCH_MAX_EVENTS", "100")];
    let mut ingest = stack.spawn_ingest_with(&batches)?;
    let _api = stack.spawn_query_api()?;
    let (first, rest) = log.split_at(1_000);
    let mut ends = produce_all(&producer, first).await?;
    stack.wait_folded(&ends, WAIT).await?;

    // SIGKILL in the middle of the rest.
    let producing = {
        let (rest, producer) = (rest.to_vec(), producer.clone());
        tokio::spawn(async move { produce_all(&producer, &rest).await })
    };
    stack.wait_folded_past(1_600, WAIT).await?;
    ingest.kill();
    merged(&mut ends, producing.await??);
    let mut ingest = stack.spawn_ingest_with(&batches)?;
    stack.wait_folded(&ends, WAIT).await?;
    stack.wait_ready(WAIT).await?;
    let diffs = differences(&stack, &reference).await?;
    ensure!(
        diffs.is_empty(),
        "after SIGKILL: {} differences, first: {:#?}",
        diffs.len(),
        &diffs[..diffs.len().min(5)]
    );

    // An on-demand rebuild replays both companies into a new generation.
    stack.rebuild().await?;
    let mut c = con.clone();
    ensure!(
        live_generation(&mut c).await? == Some(2),
        "the rebuild swapped"
    );
    // query-api follows the swap within a poll.
    let diffs = eventually("query-api to serve the rebuilt generation", WAIT, || {
        let (stack, reference) = (&stack, &reference);
        async move {
            let d = differences(stack, reference).await?;
            Ok(d.is_empty().then_some(d))
        }
    })
    .await;
    ensure!(
        diffs.is_ok(),
        "after the rebuild: {:#?}",
        differences(&stack, &reference).await?
    );

    // Every record a program could not handle was dead-lettered with a
    // reason that never quotes it.
    let poison = log
        .iter()
        .filter(|r| {
            r.value.as_ref().is_some_and(|v| {
                let s = String::from_utf8_lossy(v);
                s.contains("not-a-number")
                    || s.contains("not an object")
                    || s.contains(r#""email_address":null"#)
            })
        })
        .count();
    let letters = dead_letters(&dlq, poison).await?;
    for (reason, error) in &letters {
        ensure!(
            ["transform_error", "bad_envelope", "schema_violation"].contains(&reason.as_str()),
            "unexpected reason {reason}: {error}"
        );
        ensure!(
            !error.contains(SECRET),
            "a reason quotes the record: {error}"
        );
    }
    for reason in ["transform_error", "schema_violation"] {
        ensure!(letters.iter().any(|(r, _)| r == reason), "{letters:?}");
    }
    assert!(ingest.terminate(Duration::from_secs(15)), "SIGTERM drains");
    let log_text = std::fs::read_to_string(ingest.log_path())?;
    ensure!(!log_text.contains(SECRET), "ingest logged an HR value");
    Ok(())
}

/// A bad program: each binary prints one line naming the key, the program
/// and where it is wrong, and exits 1, before connecting to anything.
#[test]
fn a_bad_program_stops_both_binaries_with_one_line() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("foldcache.toml");
    std::fs::write(
        &path,
        r#"
[[sources]]
topic = "northwind.people"
entity = "employees"
transform = '''
{name: .full_name,
 team_id: teams[.dept]}
'''
"#,
    )?;
    for binary in ["ingest", "query-api"] {
        let out = std::process::Command::new(foldcache_binary(binary)?)
            .arg("--config")
            .arg(&path)
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{binary}: {stderr}");
        assert_eq!(
            stderr,
            "error: configuration: sources[0].transform = \"{name: .full_name,\\n team_id: teams[.dept]}\\n\": \
             not a valid jq program: undefined filter `teams` at line 2 column 11\n",
            "{binary}"
        );
    }
    Ok(())
}
