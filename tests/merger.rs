//! Two companies, one directory: per-source jq programs through the real
//! broker, `ingest` and query-api.
//!
//! Northwind publishes plain JSON states keyed `N<n>` with its own field
//! names, department codes and a `status` that filters leavers out; Globex
//! publishes Debezium events keyed `{"emp_no": n}` with other names and a
//! nested org unit. Each source's config maps its records into the one
//! canonical employee shape. The access system publishes each person's
//! `grants` (the only member it owns), and a links topic says which Globex
//! people moved to Northwind (`gx.E5` -> `nw.N17`): their Globex part is
//! folded into the Northwind entity, Northwind winning the members both
//! hold. A random log of all four (updates, tombstones, filtered states,
//! links and unlinks, records the programs cannot handle, states a JSON
//! Schema refuses, bad links) is folded, and every served employee is
//! compared with a reference merge computed here, independently of jq and
//! of the fold: after a SIGKILL of ingest in mid-stream, and again after an
//! on-demand rebuild. A record a program cannot handle is
//! dead-lettered (its reason never quotes it) and its partition goes on.
//! A bad program stops both binaries at start with one line.

use anyhow::{Context, Result, ensure};
use foldcache::{Rec, Stack, eventually, foldcache_binary, live_generation, produce_all, unique};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::{Headers, Message};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);

/// A value that must never leave the record: it stands for HR data.
const SECRET: &str = "salary-7c2e-private";

/// The sources' programs, as an operator would write them.
fn merger_toml(topics: &Topics) -> String {
    let Topics {
        northwind,
        globex,
        access,
        links,
    } = topics;
    format!(
        r#"
[[sources]]
topic = "{northwind}"
entity = "employees"
id_prefix = "nw."
# People moving from Globex keep Northwind's values where both hold one.
priority = 1
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

[[sources]]
topic = "{access}"
entity = "employees"
fields = ["grants"]
schema_file = "GRANTS_SCHEMA"

[entities.employees]
merge = true
links_topic = "{links}"
"#
    )
}

/// The four topics of one run.
struct Topics {
    northwind: String,
    globex: String,
    access: String,
    links: String,
}

/// What the access system's states must hold.
const GRANTS_SCHEMA: &str = r#"{"type": "object", "required": ["grants"],
  "properties": {"grants": {"type": "array"}}}"#;

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

/// A random log of the four topics.
fn random_log(seed: u64, t: &Topics, n: usize) -> Vec<Rec> {
    let mut rng = StdRng::seed_from_u64(seed);
    let depts = ["D10", "D20", "D99"];
    let units = ["ENG", "OPS", "HQ"];
    let systems = ["github", "vpn", "payroll"];
    (0..n)
        .map(|_| {
            let k = rng.random_range(0..120);
            let roll = rng.random_range(0..100);
            let (topic, key, value) = match rng.random_range(0..100) {
                0..40 => {
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
                    (&t.northwind, format!("N{k}"), value)
                }
                40..80 => {
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
                    (&t.globex, json!({"emp_no": k}).to_string(), value)
                }
                80..92 => {
                    let who = if rng.random_bool(0.5) {
                        format!("nw.N{k}")
                    } else {
                        format!("gx.E{k}")
                    };
                    let value = match roll {
                        0..15 => None,
                        // Not an array: the access source's schema refuses it.
                        15..20 => Some(json!({"grants": SECRET})),
                        _ => Some(json!({"grants": [systems[rng.random_range(0..3)]],
                                         "name": "not owned", "salary": SECRET})),
                    };
                    (&t.access, who, value)
                }
                _ => {
                    let target = format!("nw.N{}", rng.random_range(0..120));
                    let value = match roll {
                        0..20 => None,
                        20..25 => Some(Value::String("not an id!".into())),
                        25..60 => Some(Value::String(target)),
                        // As a JSON string: the same link.
                        _ => Some(Value::String(Value::String(target).to_string())),
                    };
                    (&t.links, format!("gx.E{k}"), value)
                }
            };
            Rec {
                topic: topic.clone(),
                key: Some(key.into_bytes()),
                value: value.map(|v| match v {
                    Value::String(s) => s.into_bytes(),
                    v => v.to_string().into_bytes(),
                }),
            }
        })
        .collect()
}

/// What one record of a company's or the access system's topic says of
/// its source id: `Some((id, None))` the source no longer holds it,
/// `Some((id, Some(part)))` its part, `None` nothing (dead-lettered).
fn part_of(r: &Rec, t: &Topics) -> Option<(String, Option<Value>)> {
    let value: Option<Value> = r.value.as_ref().map(|v| serde_json::from_slice(v).unwrap());
    let key = r.key.as_deref().unwrap_or_default();
    if r.topic == t.access {
        let id = String::from_utf8_lossy(key).into_owned();
        return match value {
            None => Some((id, None)),
            Some(v) if v["grants"].is_array() => Some((id, Some(json!({"grants": v["grants"]})))),
            Some(_) => None,
        };
    }
    if r.topic == t.northwind {
        let id = format!("nw.{}", String::from_utf8_lossy(key));
        let Some(v) = value else {
            return Some((id, None));
        };
        let level = v["grade"].as_str().unwrap_or("").parse::<i64>().ok()?;
        if v["status"] == "terminated" {
            return Some((id, None));
        }
        let team = match v["dept"].as_str() {
            Some("D10") => json!("team-eng"),
            Some("D20") => json!("team-ops"),
            _ => Value::Null,
        };
        let state = json!({"id": id, "company": "northwind", "name": v["full_name"],
            "email": v["contact"]["mail"], "team_id": team, "level": level});
        return Some((id, Some(state)));
    }
    let key: Value = serde_json::from_slice(r.key.as_deref().unwrap_or(b"{}")).unwrap();
    let id = format!("gx.E{}", key["emp_no"]);
    let after = match value {
        None => None,
        Some(v) if v["op"] == "d" => None,
        // Fails the schema: nothing changes.
        Some(v) if v["after"]["email_address"].is_null() && v["after"].is_object() => return None,
        Some(v) if v["after"].is_object() => Some(v["after"].clone()),
        Some(_) => return None,
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
    Some((id, state))
}

/// The reference merge, written without jq and without the fold: each
/// source's last part per id, each id's last link, then per canonical id
/// the union of the parts folded into it, the higher-priority source
/// (Northwind, then Globex, then access) winning a member.
fn reference_merge(log: &[Rec], t: &Topics) -> Reference {
    let mut parts: BTreeMap<(usize, String), Value> = BTreeMap::new();
    let mut links: BTreeMap<String, String> = BTreeMap::new();
    let mut ids = std::collections::BTreeSet::new();
    for r in log {
        if r.topic == t.links {
            let id = String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned();
            match r.value.as_deref().map(String::from_utf8_lossy) {
                None => {
                    links.remove(&id);
                }
                Some(v) if v.contains(' ') => {} // not an id: dead-lettered
                Some(v) => {
                    let target = v.trim_matches('"').to_owned();
                    ids.insert(target.clone());
                    links.insert(id, target);
                }
            }
            continue;
        }
        let rank = [&t.northwind, &t.globex, &t.access]
            .iter()
            .position(|x| **x == r.topic)
            .unwrap();
        let Some((id, part)) = part_of(r, t) else {
            continue;
        };
        ids.insert(id.clone());
        match part {
            Some(p) => parts.insert((rank, id), p),
            None => parts.remove(&(rank, id)),
        };
    }
    let mut served: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    // (rank, id) order is the precedence order.
    for ((_, id), part) in &parts {
        let canonical = links.get(id).unwrap_or(id);
        let entity = served.entry(canonical.clone()).or_default();
        for (k, v) in part.as_object().unwrap() {
            entity.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    ids.into_iter()
        .map(|id| {
            let state = served.remove(&id).map(Value::Object);
            (id, state)
        })
        .collect()
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
    let topics = Topics {
        northwind: format!("{id}.northwind"),
        globex: format!("{id}.globex"),
        access: format!("{id}.access"),
        links: format!("{id}.links"),
    };
    stack
        .broker
        .create_topics(
            &[
                &topics.northwind,
                &topics.globex,
                &topics.access,
                &topics.links,
            ],
            2,
        )
        .await?;
    let schema = stack.config_path().with_file_name("employees.schema.json");
    std::fs::write(&schema, EMPLOYEE_SCHEMA)?;
    let grants = stack.config_path().with_file_name("grants.schema.json");
    std::fs::write(&grants, GRANTS_SCHEMA)?;
    let config = stack.config_toml()
        + &merger_toml(&topics).replace("GRANTS_SCHEMA", &grants.to_string_lossy())
        + &format!("schema_file = {:?}\n", schema.to_string_lossy());
    std::fs::write(stack.config_path(), config)?;

    let log = random_log(0x13, &topics, 3_000);
    let reference = reference_merge(&log, &topics);
    ensure!(
        reference.values().filter(|v| v.is_some()).count() > 50
            && reference.values().any(Option::is_none),
        "the log leaves both served and removed people"
    );
    // The log exercises every rule: linked people with both companies'
    // parts, grants on their own and with a company's part.
    let merged_both = reference
        .values()
        .flatten()
        .filter(|v| {
            v["id"].as_str().is_some_and(|i| i.starts_with("nw.")) && v.get("grants").is_some()
        })
        .count();
    ensure!(merged_both > 5, "{merged_both} people merged with grants");
    ensure!(
        reference.values().flatten().any(|v| v.get("id").is_none()),
        "someone is held by the access system alone"
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
                    || s == "not an id!"
                    || s == format!(r#"{{"grants":"{SECRET}"}}"#)
            })
        })
        .count();
    let letters = dead_letters(&dlq, poison).await?;
    for (reason, error) in &letters {
        ensure!(
            [
                "transform_error",
                "bad_envelope",
                "schema_violation",
                "invalid_id"
            ]
            .contains(&reason.as_str()),
            "unexpected reason {reason}: {error}"
        );
        ensure!(
            !error.contains(SECRET),
            "a reason quotes the record: {error}"
        );
    }
    for reason in ["transform_error", "schema_violation", "invalid_id"] {
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
