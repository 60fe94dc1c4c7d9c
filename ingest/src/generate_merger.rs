//! The demo's merger data set: two companies' HR systems in their own
//! shapes, an access system and identity links, for the merged `people`
//! directory of `scripts/dev demo` (docs/CONFIGURATION.md, *One person in
//! both companies*).
//!
//! - Northwind publishes plain JSON states keyed `N0001`, with its own
//!   member names, department codes, a grade as text and a `status`.
//! - Globex publishes Debezium snapshot events of its `employees` table,
//!   keyed `{"emp_no": 1}`, with other names and a nested org unit.
//! - The access system publishes each person's `grants`, keyed by the id
//!   the directory gives them (`nw.N0001`, `gx.E1`).
//! - Every twentieth Globex person moved to Northwind: Northwind has a
//!   record for them too, and a link `gx.E20 -> nw.N0020` says they are
//!   one person.
//!
//! The same seed always yields the same records.

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;

/// The topics the demo's config reads the merger from.
#[derive(Debug, Clone)]
pub struct MergerTopics {
    /// Northwind's plain JSON states.
    pub northwind: String,
    /// Globex's Debezium events.
    pub globex: String,
    /// The access system's grants.
    pub access: String,
    /// Identity links.
    pub links: String,
}

/// One record: topic, key, value (`None`: tombstone).
pub type Record = (String, String, Option<Vec<u8>>);

/// Every `MOVED`-th Globex person also works at Northwind, linked.
pub const MOVED: usize = 20;

const FIRST: [&str; 8] = [
    "Ada", "Grace", "Alan", "Barbara", "Edsger", "Frances", "Ken", "Radia",
];
const LAST: [&str; 8] = [
    "Lovelace", "Hopper", "Turing", "Liskov", "Dijkstra", "Allen", "Thompson", "Perlman",
];
const SYSTEMS: [&str; 4] = ["github", "vpn", "payroll", "jira"];

/// `people` persons per company, in the order a first load produces them:
/// both companies, then grants, then links.
pub fn records(seed: u64, people: usize, topics: &MergerTopics) -> Vec<Record> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(people * 4);
    let text = |v: serde_json::Value| Some(v.to_string().into_bytes());
    for n in 1..=people {
        let (first, last) = (
            *FIRST.choose(&mut rng).unwrap_or(&"Ada"),
            *LAST.choose(&mut rng).unwrap_or(&"Lovelace"),
        );
        let state = json!({
            "full_name": format!("{first} {last}"),
            "contact": {"mail": format!("{}.{}{n}@northwind.example", first.to_lowercase(), last.to_lowercase()),
                        "phone": format!("+1-555-{:04}", rng.random_range(0..10_000))},
            "dept": (["D10", "D20", "D30"][rng.random_range(0..3)]),
            "grade": rng.random_range(1..8).to_string(),
            "status": if rng.random_range(0..50) == 0 { "terminated" } else { "active" },
            "salary": rng.random_range(50_000..150_000),
        });
        out.push((topics.northwind.clone(), format!("N{n:04}"), text(state)));
    }
    for n in 1..=people {
        let (first, last) = (
            *FIRST.choose(&mut rng).unwrap_or(&"Ada"),
            *LAST.choose(&mut rng).unwrap_or(&"Lovelace"),
        );
        let after = json!({
            "emp_no": n,
            "first_name": first,
            "last_name": last,
            "email_address": format!("{}{n}@globex.example", first.to_lowercase()),
            "org": {"unit": (["ENG", "OPS", "HQ"][rng.random_range(0..3)])},
            "level": rng.random_range(1..8),
            "hired": format!("20{:02}-0{}-1{}", rng.random_range(10..25), rng.random_range(1..10), rng.random_range(0..10)),
            "pay": rng.random_range(50_000..150_000),
        });
        let event = json!({"op": "r", "before": null, "after": after,
                           "source": {"connector": "postgresql", "db": "globex", "table": "employees"}});
        out.push((
            topics.globex.clone(),
            json!({"emp_no": n}).to_string(),
            text(event),
        ));
    }
    for n in 1..=people {
        for who in [format!("nw.N{n:04}"), format!("gx.E{n}")] {
            let mut grants = Vec::new();
            for system in SYSTEMS {
                if rng.random_bool(0.4) {
                    let role = if rng.random_bool(0.2) {
                        "admin"
                    } else {
                        "user"
                    };
                    grants.push(json!({"system": system, "role": role}));
                }
            }
            out.push((topics.access.clone(), who, text(json!({"grants": grants}))));
        }
    }
    for n in (MOVED..=people).step_by(MOVED) {
        out.push((
            topics.links.clone(),
            format!("gx.E{n}"),
            Some(format!("nw.N{n:04}").into_bytes()),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_records_and_links_every_twentieth_person() {
        let topics = MergerTopics {
            northwind: "n".into(),
            globex: "g".into(),
            access: "a".into(),
            links: "l".into(),
        };
        let a = records(7, 100, &topics);
        assert_eq!(a, records(7, 100, &topics));
        assert_eq!(a.len(), 100 + 100 + 200 + 5);
        let links: Vec<_> = a.iter().filter(|r| r.0 == "l").collect();
        assert_eq!(links[0].1, "gx.E20");
        assert_eq!(links[0].2.as_deref(), Some(&b"nw.N0020"[..]));
    }
}
