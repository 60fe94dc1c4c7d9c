//! A deterministic HR data set: teams (a hierarchy per company), employees
//! (Korean and English names, emails, salaries, nested address, skills) and
//! their system permissions, for two merged companies; then optional churn
//! (updates and tombstones). The same seed always yields the same events.

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// A realistic per-source `transform` of the generated employees into a
/// directory shape: a filter, renames by construction, nested picks, a
/// constant, a code table and a type conversion. The benchmarks measure
/// ingest with it (docs/BENCHMARKS.md).
pub const EMPLOYEE_MAPPING: &str = r#"def divisions: {"T000000": "eng", "T000001": "ops", "T000002": "sales"};
select(.active)
| {id: $id, company: "northwind", name: .name, email: .email,
   team_id: .team_id, division: (divisions[.team_id] // "other"),
   manager_id: .manager_id, title: .title, city: .address.city,
   country: .address.country, hire_year: (.hire_date[0:4] | tonumber),
   skills: .skills}"#;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenOptions {
    /// RNG seed.
    pub seed: u64,
    /// Number of employees (and of permission records).
    pub employees: usize,
    /// Number of teams.
    pub teams: usize,
    /// Full-state updates of random employees after the initial load.
    pub updates: usize,
    /// Tombstones of random employees (and their permissions) after the load.
    pub deletes: usize,
}

/// The entity an event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `employees`
    Employee,
    /// `teams`
    Team,
    /// `permissions`
    Permission,
}

impl Kind {
    /// The default entity name.
    pub fn entity(self) -> &'static str {
        match self {
            Kind::Employee => "employees",
            Kind::Team => "teams",
            Kind::Permission => "permissions",
        }
    }
}

/// One record to produce: key = id, value = full JSON state or `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Which entity.
    pub kind: Kind,
    /// Record key (the entity id).
    pub key: String,
    /// Record value: the full state, or `None` for a tombstone.
    pub value: Option<Value>,
}

impl Event {
    fn new(kind: Kind, key: String, value: Option<Value>) -> Self {
        Self { kind, key, value }
    }
}

struct Company {
    name: &'static str,
    domain: &'static str,
    korean: bool,
}

const COMPANIES: [Company; 2] = [
    Company {
        name: "hanbit",
        domain: "hanbit.co.kr",
        korean: true,
    },
    Company {
        name: "northwind",
        domain: "northwind.example",
        korean: false,
    },
];

const KO_SURNAMES: &[(&str, &str)] = &[
    ("김", "kim"),
    ("이", "lee"),
    ("박", "park"),
    ("최", "choi"),
    ("정", "jung"),
    ("강", "kang"),
    ("조", "cho"),
    ("윤", "yoon"),
    ("장", "jang"),
    ("임", "lim"),
    ("한", "han"),
    ("오", "oh"),
    ("서", "seo"),
    ("신", "shin"),
    ("권", "kwon"),
    ("황", "hwang"),
    ("안", "ahn"),
    ("송", "song"),
    ("류", "ryu"),
    ("홍", "hong"),
];
const KO_SYLLABLES: &[(&str, &str)] = &[
    ("민", "min"),
    ("준", "jun"),
    ("서", "seo"),
    ("연", "yeon"),
    ("지", "ji"),
    ("우", "woo"),
    ("하", "ha"),
    ("은", "eun"),
    ("도", "do"),
    ("현", "hyun"),
    ("수", "su"),
    ("예", "ye"),
    ("진", "jin"),
    ("영", "young"),
    ("호", "ho"),
    ("윤", "yun"),
    ("성", "sung"),
    ("재", "jae"),
    ("희", "hee"),
    ("아", "a"),
];
const EN_FIRST: &[&str] = &[
    "James",
    "Mary",
    "Robert",
    "Patricia",
    "John",
    "Jennifer",
    "Michael",
    "Linda",
    "David",
    "Elizabeth",
    "William",
    "Barbara",
    "Richard",
    "Susan",
    "Joseph",
    "Jessica",
    "Thomas",
    "Sarah",
    "Charles",
    "Karen",
    "Olivia",
    "Liam",
    "Emma",
    "Noah",
    "Ava",
];
const EN_LAST: &[&str] = &[
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Thompson",
    "White",
    "Harris",
];
const KO_TEAM_WORDS: &[&str] = &[
    "결제",
    "플랫폼",
    "데이터",
    "보안",
    "인사",
    "재무",
    "영업",
    "마케팅",
    "검색",
    "인프라",
];
const EN_TEAM_WORDS: &[&str] = &[
    "Payments",
    "Platform",
    "Data",
    "Security",
    "People",
    "Finance",
    "Sales",
    "Marketing",
    "Search",
    "Infrastructure",
];
const TITLES: &[&str] = &[
    "Software Engineer",
    "Senior Software Engineer",
    "Staff Engineer",
    "Engineering Manager",
    "Product Manager",
    "Designer",
    "Data Analyst",
    "HR Business Partner",
    "Accountant",
    "Sales Representative",
];
const SKILLS: &[&str] = &[
    "rust",
    "go",
    "sql",
    "kafka",
    "redis",
    "excel",
    "negotiation",
    "figma",
    "python",
    "k8s",
];
const KO_CITIES: &[&str] = &["Seoul", "Busan", "Incheon", "Daejeon", "Seongnam"];
const EN_CITIES: &[&str] = &["Seattle", "Austin", "London", "Dublin", "Toronto"];
const SYSTEMS: &[&str] = &[
    "github",
    "jira",
    "aws",
    "payroll",
    "salesforce",
    "vpn",
    "grafana",
];
const ROLES: &[&str] = &["read", "write", "admin"];

/// The generator: holds the current state of every employee so updates emit
/// full states.
#[derive(Debug)]
pub struct Generator {
    rng: StdRng,
    opts: GenOptions,
    employees: Vec<Option<Value>>,
}

/// Where [`Generator::events`] is: the next index of each part.
#[derive(Debug, Clone, Copy)]
enum Stage {
    Teams(usize),
    Employees(usize),
    Permissions(usize),
    Churn(usize),
}

/// `E000001` style ids.
pub fn employee_id(i: usize) -> String {
    format!("E{:06}", i + 1)
}

/// `T000001` style ids.
pub fn team_id(i: usize) -> String {
    format!("T{:06}", i + 1)
}

impl Generator {
    /// A generator for `opts`.
    pub fn new(opts: GenOptions) -> Self {
        Self {
            rng: StdRng::seed_from_u64(opts.seed),
            employees: Vec::new(),
            opts,
        }
    }

    /// Every event, in production order: teams, employees, permissions, then
    /// churn. Lazy: an event is generated when it is taken, so a data set
    /// of millions never sits in memory (only the current states, and only
    /// when there is churn to apply to them).
    pub fn events(mut self) -> impl Iterator<Item = Event> {
        let churn = self.opts.updates + self.opts.deletes;
        if churn > 0 {
            self.employees.reserve(self.opts.employees);
        }
        let mut stage = Stage::Teams(0);
        let mut pending: Option<Event> = None;
        let (mut updates, mut deletes) = (self.opts.updates, self.opts.deletes);
        std::iter::from_fn(move || {
            if let Some(e) = pending.take() {
                return Some(e);
            }
            loop {
                match stage {
                    Stage::Teams(i) if i < self.opts.teams => {
                        stage = Stage::Teams(i + 1);
                        let v = self.team(i);
                        return Some(Event::new(Kind::Team, team_id(i), Some(v)));
                    }
                    Stage::Teams(_) => stage = Stage::Employees(0),
                    Stage::Employees(i) if i < self.opts.employees => {
                        stage = Stage::Employees(i + 1);
                        let v = self.employee(i);
                        if churn > 0 {
                            self.employees.push(Some(v.clone()));
                        }
                        return Some(Event::new(Kind::Employee, employee_id(i), Some(v)));
                    }
                    Stage::Employees(_) => stage = Stage::Permissions(0),
                    Stage::Permissions(i) if i < self.opts.employees => {
                        stage = Stage::Permissions(i + 1);
                        let v = self.permissions(i);
                        return Some(Event::new(Kind::Permission, employee_id(i), Some(v)));
                    }
                    Stage::Permissions(_) => stage = Stage::Churn(0),
                    Stage::Churn(n) if n < churn && self.opts.employees > 0 => {
                        stage = Stage::Churn(n + 1);
                        let i = self.rng.random_range(0..self.opts.employees);
                        let delete = deletes > 0
                            && (updates == 0
                                || self
                                    .rng
                                    .random_bool(deletes as f64 / (updates + deletes) as f64));
                        if delete {
                            deletes -= 1;
                            self.employees[i] = None;
                            pending = Some(Event::new(Kind::Permission, employee_id(i), None));
                            return Some(Event::new(Kind::Employee, employee_id(i), None));
                        }
                        updates -= 1;
                        // Updating a deleted employee re-creates it (a re-hire).
                        let v = match self.employees[i].take() {
                            Some(mut v) => {
                                self.touch(&mut v);
                                v
                            }
                            None => self.employee(i),
                        };
                        self.employees[i] = Some(v.clone());
                        return Some(Event::new(Kind::Employee, employee_id(i), Some(v)));
                    }
                    Stage::Churn(_) => return None,
                }
            }
        })
    }

    fn company(&self, i: usize) -> &'static Company {
        &COMPANIES[i % 2]
    }

    fn team(&mut self, i: usize) -> Value {
        let c = self.company(i);
        let same_company_earlier = i / 2;
        let parent = if same_company_earlier < 5 {
            Value::Null
        } else {
            let j = self.rng.random_range(0..same_company_earlier);
            Value::String(team_id(j * 2 + i % 2))
        };
        let name = if c.korean {
            format!(
                "{}{}팀",
                KO_TEAM_WORDS.choose(&mut self.rng).unwrap_or(&"개발"),
                i + 1
            )
        } else {
            format!(
                "{} {}",
                EN_TEAM_WORDS.choose(&mut self.rng).unwrap_or(&"Platform"),
                i + 1
            )
        };
        json!({
            "id": team_id(i),
            "company": c.name,
            "name": name,
            "parent_id": parent,
            "cost_center": format!("CC-{:04}", self.rng.random_range(1000..9999)),
            "headcount_limit": self.rng.random_range(3..40),
            "active": true,
        })
    }

    fn employee(&mut self, i: usize) -> Value {
        let c = self.company(i);
        let (name, name_en, local) = if c.korean {
            let (s, sr) = *KO_SURNAMES.choose(&mut self.rng).unwrap_or(&("김", "kim"));
            let (a, ar) = *KO_SYLLABLES.choose(&mut self.rng).unwrap_or(&("민", "min"));
            let (b, br) = *KO_SYLLABLES.choose(&mut self.rng).unwrap_or(&("준", "jun"));
            let given_en = format!("{ar}{br}");
            let given_cap = format!("{}{}", given_en[..1].to_uppercase(), &given_en[1..]);
            let sur_cap = format!("{}{}", sr[..1].to_uppercase(), &sr[1..]);
            (
                format!("{s}{a}{b}"),
                Value::String(format!("{given_cap} {sur_cap}")),
                format!("{given_en}.{sr}"),
            )
        } else {
            let f = *EN_FIRST.choose(&mut self.rng).unwrap_or(&"Alex");
            let l = *EN_LAST.choose(&mut self.rng).unwrap_or(&"Doe");
            (
                format!("{f} {l}"),
                Value::Null,
                format!("{}.{}", f.to_lowercase(), l.to_lowercase()),
            )
        };
        let teams_of_company = self.opts.teams.div_ceil(2).max(1);
        let team = self.rng.random_range(0..teams_of_company) * 2 + i % 2;
        let manager = if i < 20 {
            Value::Null
        } else {
            let j = self.rng.random_range(0..i / 2) * 2 + i % 2;
            Value::String(employee_id(j))
        };
        let (currency, salary, city, phone) = if c.korean {
            (
                "KRW",
                self.rng.random_range(35_000..150_000) * 1000,
                *KO_CITIES.choose(&mut self.rng).unwrap_or(&"Seoul"),
                format!(
                    "+82-10-{:04}-{:04}",
                    self.rng.random_range(0..10_000),
                    self.rng.random_range(0..10_000)
                ),
            )
        } else {
            (
                "USD",
                self.rng.random_range(60..250) * 1000,
                *EN_CITIES.choose(&mut self.rng).unwrap_or(&"Austin"),
                format!(
                    "+1-555-{:03}-{:04}",
                    self.rng.random_range(0..1000),
                    self.rng.random_range(0..10_000)
                ),
            )
        };
        let n_skills = self.rng.random_range(1..4);
        let skills: Vec<&str> = SKILLS
            .choose_multiple(&mut self.rng, n_skills)
            .copied()
            .collect();
        json!({
            "id": employee_id(i),
            "company": c.name,
            "name": name,
            "name_en": name_en,
            "email": format!("{local}{}@{}", i + 1, c.domain),
            "team_id": team_id(team.min(self.opts.teams.saturating_sub(1))),
            "manager_id": manager,
            "title": *TITLES.choose(&mut self.rng).unwrap_or(&"Engineer"),
            "hire_date": format!("20{:02}-{:02}-{:02}", self.rng.random_range(5..26), self.rng.random_range(1..13), self.rng.random_range(1..29)),
            "birth_date": format!("19{:02}-{:02}-{:02}", self.rng.random_range(60..99), self.rng.random_range(1..13), self.rng.random_range(1..29)),
            "phone": phone,
            "salary": {"amount": salary, "currency": currency},
            "address": {"city": city, "country": if c.korean { "KR" } else { "US" }},
            "skills": skills,
            "active": true,
            "fte": if self.rng.random_bool(0.9) { json!(1.0) } else { json!(0.5) },
            "contractor": if self.rng.random_bool(0.1) { Value::Bool(true) } else { Value::Null },
        })
    }

    fn touch(&mut self, v: &mut Value) {
        if let Some(o) = v.as_object_mut() {
            o.insert(
                "title".into(),
                json!(*TITLES.choose(&mut self.rng).unwrap_or(&"Engineer")),
            );
            let bump = self.rng.random_range(1..10) * 1000;
            if let Some(s) = o.get_mut("salary").and_then(|s| s.get_mut("amount")) {
                *s = json!(s.as_i64().unwrap_or(0) + bump);
            }
        }
    }

    fn permissions(&mut self, i: usize) -> Value {
        let n = self.rng.random_range(1..5);
        let systems: Vec<&str> = SYSTEMS.choose_multiple(&mut self.rng, n).copied().collect();
        let grants: Vec<Value> = systems
            .into_iter()
            .map(|s| {
                let role = *ROLES.choose(&mut self.rng).unwrap_or(&"read");
                let day = self.rng.random_range(1..29);
                json!({"system": s, "role": role, "granted_at": format!("2025-01-{day:02}T09:00:00Z")})
            })
            .collect();
        json!({"employee_id": employee_id(i), "company": self.company(i).name, "grants": grants})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(seed: u64) -> GenOptions {
        GenOptions {
            seed,
            employees: 50,
            teams: 20,
            updates: 30,
            deletes: 10,
        }
    }

    #[test]
    fn same_seed_same_events() {
        let a: Vec<Event> = Generator::new(opts(7)).events().collect();
        let b: Vec<Event> = Generator::new(opts(7)).events().collect();
        let c: Vec<Event> = Generator::new(opts(8)).events().collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn counts_and_tombstones() {
        let ev: Vec<Event> = Generator::new(opts(1)).events().collect();
        assert_eq!(ev.iter().filter(|e| e.kind == Kind::Team).count(), 20);
        assert!(ev.iter().filter(|e| e.value.is_none()).count() >= 10);
        let korean = ev
            .iter()
            .filter_map(|e| e.value.as_ref()?.get("name")?.as_str().map(String::from))
            .any(|n| n.chars().any(|c| ('가'..='힣').contains(&c)));
        assert!(korean, "some names are Korean");
    }
}
