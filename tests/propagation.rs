//! The propagation API end to end, differentially: a random HR log
//! (creations, moves between teams, email and manager changes, salary
//! changes, tombstones, re-creations; teams re-parented; grants changed)
//! goes through a real Tansu broker into the real `ingest` and `query-api`
//! binaries, while the reference sync client (`examples/sync_client.rs`,
//! included here as it is) keeps copies through polls and event streams,
//! disconnecting and resuming, and across an on-demand rebuild. At the end
//! every copy equals the reference fold of the log (the directory token's
//! copy equals its projection: it never saw a salary), every index lookup
//! equals the reference computed from the fold, and no event was applied
//! twice within a pass.

#[allow(dead_code)]
#[path = "../examples/sync_client.rs"]
mod sync_client;

use anyhow::{Result, ensure};
use foldcache::{Stack, eventually};
use foldcache_common::secret::token_hash_hex;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{FutureProducer, FutureRecord};
use redis::AsyncCommands;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use sync_client::{StreamEnd, SyncClient};

const WAIT: Duration = Duration::from_secs(120);
const HR_TOKEN: &str = "propagation-hr-token-8d1f";
const DIRECTORY_TOKEN: &str = "propagation-directory-token-2c7a";
const ADMIN_TOKEN: &str = "propagation-admin-token-5e90";
const DIRECTORY: [&str; 5] = ["id", "name", "email", "team_id", "title"];
const EMPLOYEES: usize = 200;
const TEAMS: usize = 8;
const SYSTEMS: [&str; 4] = ["github", "jira", "aws", "vpn"];

fn extra_toml() -> String {
    format!(
        r#"
[entities.employees.views]
directory = ["id", "name", "email", "team_id", "title"]

[auth]
anonymous = {{ teams = "full" }}

[[auth.tokens]]
name = "hr"
sha256 = "{hr}"
grants = {{ employees = "full", teams = "full", permissions = "full" }}

[[auth.tokens]]
name = "directory-app"
sha256 = "{dir}"
grants = {{ employees = "directory", teams = "full" }}
"#,
        hr = token_hash_hex(HR_TOKEN),
        dir = token_hash_hex(DIRECTORY_TOKEN),
    )
}

/// The log's truth: `(entity, id) -> state`; absent = deleted or never.
type Reference = BTreeMap<(String, String), Value>;

/// Writes random changes and keeps the reference fold.
struct World {
    rng: StdRng,
    reference: Reference,
    version: u64,
    stack: Arc<Stack>,
    producer: FutureProducer,
}

impl World {
    fn state(&self, entity: &str, id: &str) -> Option<&Value> {
        self.reference.get(&(entity.to_owned(), id.to_owned()))
    }

    fn employee(&mut self, i: usize) -> Value {
        self.version += 1;
        let team = format!("T{:02}", self.rng.random_range(0..TEAMS));
        let manager = if i == 0 || self.rng.random_bool(0.2) {
            Value::Null
        } else {
            json!(format!("E{:03}", self.rng.random_range(0..i)))
        };
        let title = ["Engineer", "Manager", "Analyst"]
            .choose(&mut self.rng)
            .copied()
            .unwrap_or("Engineer");
        json!({
            "id": format!("E{i:03}"),
            "name": format!("직원 {i}"),
            "email": format!("e{i}.v{}@hanbit.co.kr", self.version),
            "team_id": team,
            "manager_id": manager,
            "title": title,
            "salary": {"amount": self.rng.random_range(40_000..200_000) * 1000, "currency": "KRW"},
        })
    }

    fn team(&mut self, i: usize) -> Value {
        let parent = if i == 0 || self.rng.random_bool(0.3) {
            Value::Null
        } else {
            json!(format!("T{:02}", self.rng.random_range(0..i)))
        };
        json!({"id": format!("T{i:02}"), "name": format!("팀 {i}"), "parent_id": parent})
    }

    fn permissions(&mut self, i: usize) -> Value {
        let n = self.rng.random_range(0..=SYSTEMS.len());
        let grants: Vec<Value> = SYSTEMS
            .choose_multiple(&mut self.rng, n)
            .map(|s| json!({"system": s, "role": "read"}))
            .collect();
        json!({"employee_id": format!("E{i:03}"), "grants": grants})
    }

    /// One random change (or a few, for a creation).
    fn change(&mut self) -> Vec<(String, String, Option<Value>)> {
        let i = self.rng.random_range(0..EMPLOYEES);
        let id = format!("E{i:03}");
        let roll = self.rng.random_range(0..100);
        let current = self.state("employees", &id).cloned();
        match (roll, current) {
            // A tombstone (the employee and their grants).
            (0..15, Some(_)) => vec![
                ("employees".into(), id.clone(), None),
                ("permissions".into(), id, None),
            ],
            // A move between teams.
            (15..40, Some(mut e)) => {
                e["team_id"] = json!(format!("T{:02}", self.rng.random_range(0..TEAMS)));
                vec![("employees".into(), id, Some(e))]
            }
            // An email change.
            (40..55, Some(mut e)) => {
                self.version += 1;
                e["email"] = json!(format!("e{i}.v{}@hanbit.co.kr", self.version));
                vec![("employees".into(), id, Some(e))]
            }
            // A new manager.
            (55..65, Some(mut e)) => {
                e["manager_id"] = json!(format!("E{:03}", self.rng.random_range(0..EMPLOYEES)));
                vec![("employees".into(), id, Some(e))]
            }
            // A salary change only (outside the directory view).
            (65..80, Some(mut e)) => {
                e["salary"]["amount"] = json!(self.rng.random_range(40_000..200_000) * 1000);
                vec![("employees".into(), id, Some(e))]
            }
            // New grants.
            (80..90, Some(_)) => {
                let p = self.permissions(i);
                vec![("permissions".into(), id, Some(p))]
            }
            // A team re-parented.
            (90..100, _) => {
                let t = self.rng.random_range(0..TEAMS);
                let v = self.team(t);
                vec![("teams".into(), format!("T{t:02}"), Some(v))]
            }
            // A creation, or a re-creation of a deleted id.
            (_, None) => {
                let e = self.employee(i);
                let p = self.permissions(i);
                vec![
                    ("employees".into(), id.clone(), Some(e)),
                    ("permissions".into(), id, Some(p)),
                ]
            }
            // The remaining rolls on an existing employee: a full rewrite.
            (_, Some(_)) => {
                let e = self.employee(i);
                vec![("employees".into(), id, Some(e))]
            }
        }
    }

    /// Produces `records` in order and folds them into the reference.
    async fn produce(&mut self, records: Vec<(String, String, Option<Value>)>) -> Result<()> {
        let topic = |entity: &str| match entity {
            "employees" => self.stack.topics.employees.clone(),
            "teams" => self.stack.topics.teams.clone(),
            _ => self.stack.topics.permissions.clone(),
        };
        let mut deliveries = Vec::with_capacity(records.len());
        for (entity, id, value) in &records {
            let t = topic(entity);
            let payload = value.as_ref().map(Value::to_string);
            let mut rec: FutureRecord<'_, str, str> = FutureRecord::to(&t).key(id.as_str());
            if let Some(p) = &payload {
                rec = rec.payload(p.as_str());
            }
            deliveries.push(self.producer.send_result(rec).map_err(|(e, _)| e)?);
        }
        for d in deliveries {
            d.await?.map_err(|(e, _)| e)?;
        }
        for (entity, id, value) in records {
            match value {
                Some(v) => self.reference.insert((entity, id), v),
                None => self.reference.remove(&(entity, id)),
            };
        }
        Ok(())
    }

    async fn round(&mut self, changes: usize) -> Result<()> {
        let mut recs = Vec::new();
        for _ in 0..changes {
            recs.extend(self.change());
        }
        self.produce(recs).await
    }

    fn of(&self, entity: &str) -> BTreeMap<String, Value> {
        self.reference
            .iter()
            .filter(|((e, _), _)| e == entity)
            .map(|((_, id), v)| (id.clone(), v.clone()))
            .collect()
    }
}

fn directory_projection(states: &BTreeMap<String, Value>) -> BTreeMap<String, Value> {
    states
        .iter()
        .map(|(id, v)| {
            let projected: serde_json::Map<String, Value> = v
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| DIRECTORY.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            (id.clone(), Value::Object(projected))
        })
        .collect()
}

/// Every id of a filtered collection, following `next` to the end.
async fn filter_ids(base: &str, token: &str, path: &str) -> Result<BTreeSet<String>> {
    let client = reqwest::Client::new();
    let mut ids = BTreeSet::new();
    let mut next = Some(path.to_owned());
    while let Some(p) = next {
        let r = client
            .get(format!("{base}{p}"))
            .bearer_auth(token)
            .send()
            .await?;
        ensure!(r.status() == 200, "GET {p}: {}", r.status());
        let page: Value = r.json().await?;
        for item in page["items"].as_array().into_iter().flatten() {
            let id = item["id"].as_str().unwrap_or_default().to_owned();
            ensure!(ids.insert(id.clone()), "{id} twice in {path}");
        }
        next = page["next"].as_str().map(str::to_owned);
    }
    Ok(ids)
}

/// An index: value -> ids.
type Index = BTreeMap<String, BTreeSet<String>>;

/// The reference index, for the values `values` extracts.
fn reference_index(
    states: &BTreeMap<String, Value>,
    values: impl Fn(&Value) -> Vec<String>,
) -> Index {
    let mut index = Index::new();
    for (id, v) in states {
        for value in values(v) {
            index.entry(value).or_default().insert(id.clone());
        }
    }
    index
}

fn no_duplicate_events(client: &SyncClient) -> Result<()> {
    let distinct: BTreeSet<&String> = client.stats.applied_cursors.iter().collect();
    ensure!(
        distinct.len() == client.stats.applied_cursors.len(),
        "an event was applied twice within one pass"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_clients_follow_a_random_log_through_disconnects_and_a_rebuild() -> Result<()> {
    let stack = Arc::new(Stack::start(2, &extra_toml()).await?);
    let admin_port = foldcache::free_port();
    let admin_listen = format!("127.0.0.1:{admin_port}");
    let _ingest = stack.spawn_ingest_with(&[
        ("FOLDCACHE__INGEST__ADMIN_LISTEN", &admin_listen),
        ("FOLDCACHE__INGEST__ADMIN_TOKEN", ADMIN_TOKEN),
        ("FOLDCACHE__INGEST__REBUILD_RETIRE_GRACE_MS", "1500"),
    ])?;
    let _api = stack.spawn_query_api()?;
    stack.wait_ready(WAIT).await?;
    let base = stack.base_url();
    let mut world = World {
        rng: StdRng::seed_from_u64(0x005e_ed12),
        reference: Reference::new(),
        version: 0,
        producer: stack.producer()?,
        stack: stack.clone(),
    };

    // The initial load.
    let mut initial = Vec::new();
    for t in 0..TEAMS {
        let v = world.team(t);
        initial.push(("teams".to_owned(), format!("T{t:02}"), Some(v)));
    }
    for i in 0..EMPLOYEES {
        if world.rng.random_bool(0.8) {
            let e = world.employee(i);
            let p = world.permissions(i);
            initial.push(("employees".to_owned(), format!("E{i:03}"), Some(e)));
            initial.push(("permissions".to_owned(), format!("E{i:03}"), Some(p)));
        }
    }
    world.produce(initial).await?;

    // The clients: a full copy that polls, a full copy that streams, the
    // directory token's copy (streams), teams and permissions (poll). The
    // first bulk passes run while the load is still being folded.
    let mut polling = SyncClient::new(&base, "employees", Some(HR_TOKEN));
    let mut streaming = SyncClient::new(&base, "employees", Some(HR_TOKEN));
    let mut directory = SyncClient::new(&base, "employees", Some(DIRECTORY_TOKEN));
    let mut teams = SyncClient::new(&base, "teams", Some(HR_TOKEN));
    let mut permissions = SyncClient::new(&base, "permissions", Some(HR_TOKEN));
    for c in [
        &mut polling,
        &mut streaming,
        &mut directory,
        &mut teams,
        &mut permissions,
    ] {
        c.resync().await?;
    }

    let con = stack.redis.connection().await?;
    let mut rebuild_requested = false;
    for round in 0..12 {
        world.round(40).await?;
        // Clients at different moments: some right away, some a round later.
        polling.poll(None).await?;
        if round % 3 != 2 {
            // Take a few events and hang up: the next call resumes with
            // Last-Event-ID.
            let end = streaming.stream(3).await?;
            ensure!(
                end != StreamEnd::Closed,
                "the server ended a stream: {end:?}"
            );
            directory.stream(2).await?;
        }
        if round % 2 == 0 {
            teams.poll(None).await?;
            permissions.poll(None).await?;
        }
        if round == 5 {
            // An on-demand rebuild while the log keeps moving.
            let r = reqwest::Client::new()
                .post(format!("http://{admin_listen}/admin/rebuild"))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await?;
            ensure!(r.status() == 202, "rebuild: {}", r.status());
            rebuild_requested = true;
        }
    }
    ensure!(rebuild_requested);
    eventually("the rebuild's swap to generation 2", WAIT, || {
        let mut con = con.clone();
        async move {
            let g: Option<u64> = con.hget("fc:state", "live_gen").await?;
            Ok((g == Some(2)).then_some(()))
        }
    })
    .await?;
    // Changes after the swap, then every client catches up.
    for _ in 0..3 {
        world.round(40).await?;
        streaming.stream(1).await?;
        directory.stream(1).await?;
    }

    let employees = world.of("employees");
    let expected_dir = directory_projection(&employees);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        for c in [
            &mut polling,
            &mut streaming,
            &mut directory,
            &mut teams,
            &mut permissions,
        ] {
            c.poll(None).await?;
        }
        if polling.copy == employees
            && streaming.copy == employees
            && directory.copy == expected_dir
            && teams.copy == world.of("teams")
            && permissions.copy == world.of("permissions")
        {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the sync clients never equalled the reference fold"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The rebuild sent every client back to a bulk pass at least once.
    for c in [&polling, &streaming, &directory, &teams, &permissions] {
        ensure!(c.stats.bulk_passes >= 2, "{:?}", c.stats);
        ensure!(c.stats.resyncs >= 1, "{:?}", c.stats);
        no_duplicate_events(c)?;
    }
    ensure!(
        streaming.stats.resumed_streams >= 5,
        "{:?}",
        streaming.stats
    );
    ensure!(polling.stats.events > 0 && streaming.stats.events > 0);

    // Every index lookup equals the reference computed from the fold.
    let text = |v: &Value| {
        v.as_str()
            .map(str::to_owned)
            .into_iter()
            .collect::<Vec<_>>()
    };
    let lookups: Vec<(&str, &str, Index)> = vec![
        (
            "employees",
            "team_id",
            reference_index(&employees, |v| text(&v["team_id"])),
        ),
        (
            "employees",
            "email",
            reference_index(&employees, |v| text(&v["email"])),
        ),
        (
            "employees",
            "manager_id",
            reference_index(&employees, |v| text(&v["manager_id"])),
        ),
        (
            "teams",
            "parent_id",
            reference_index(&world.of("teams"), |v| text(&v["parent_id"])),
        ),
        (
            "permissions",
            "employee_id",
            reference_index(&world.of("permissions"), |v| text(&v["employee_id"])),
        ),
        (
            "permissions",
            "system",
            reference_index(&world.of("permissions"), |v| {
                v["grants"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|g| g["system"].as_str().map(str::to_owned))
                    .collect()
            }),
        ),
    ];
    for (entity, index, expected) in &lookups {
        for (value, ids) in expected {
            let q: String = form_urlencoded_pair(index, value);
            let got = filter_ids(&base, HR_TOKEN, &format!("/v1/{entity}?{q}&limit=7")).await?;
            ensure!(got == *ids, "{entity}?{q}: {got:?} != {ids:?}");
        }
    }
    // Values nobody holds any more: empty pages.
    for team in 0..TEAMS {
        let t = format!("T{team:02}");
        let expected = lookups[0].2.get(&t).cloned().unwrap_or_default();
        let got = filter_ids(&base, HR_TOKEN, &format!("/v1/employees?team_id={t}")).await?;
        ensure!(got == expected, "team {t}: {got:?} != {expected:?}");
        // The directory token filters by team too, and sees its view only.
        let r = reqwest::Client::new()
            .get(format!("{base}/v1/employees?team_id={t}"))
            .bearer_auth(DIRECTORY_TOKEN)
            .send()
            .await?;
        let body = r.text().await?;
        ensure!(!body.contains("salary"), "a salary in a directory page");
    }
    Ok(())
}

fn form_urlencoded_pair(k: &str, v: &str) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    format!("{}={}", enc(k), enc(v))
}
