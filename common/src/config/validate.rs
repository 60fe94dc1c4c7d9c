//! The rules serde cannot check. A configuration that would break one of
//! foldcache's promises (no false 404, no stalled partition, no answer older
//! than the freshness bound, no key outside its own key space, no record
//! lost or leaked) is refused at start with one line: the key, its value and
//! why. docs/CONFIGURATION.md lists the same rules.
//!
//! Secrets (`redis.url`, `[kafka.client]` values, `ingest.admin_token`) are
//! never part of a message.

use super::{Config, ConfigError, EntityConfig, FULL_VIEW, SourceConfig};
use crate::id::{EntityName, IdError};
use crate::keys::META_PREFIX;
use crate::schema::Schema;
use crate::transform::{Compile, Program};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;

/// Longest `redis.key_prefix`, in bytes: it is part of every key.
const MAX_KEY_PREFIX_LEN: usize = 64;
/// Longest Kafka topic name (Kafka's own limit).
const MAX_TOPIC_LEN: usize = 249;
/// Shortest TTL: ingest refreshes TTLs every `ttl / 4`, but at most once a
/// second, so a shorter TTL lets live entities expire between two sweeps.
const MIN_TTL_SECS: u64 = 4;
/// Longest TTL (ten years). A TTL is a safety net; beyond this, `PEXPIRE`
/// arithmetic (now + TTL in ms) overflows and every fold fails.
const MAX_TTL_SECS: u64 = 10 * 365 * 24 * 3600;
/// Largest record value: Redis's own limit for one string.
const MAX_VALUE_BYTES: usize = 512 << 20;
/// The smallest `ingest.unfolded_max_bytes`.
const MIN_UNFOLDED_BYTES: usize = 1 << 20;
/// Most Kafka consumers per generation (each a group member with its own
/// connections and threads).
const MAX_CONSUMERS: usize = 64;
/// Longest `Retry-After`: a cold cache warms up in minutes, and a client
/// told to wait longer stops asking long after the cache is back.
const MAX_RETRY_AFTER_SECS: u64 = 3600;
/// Most ids per batch lookup: each is one Redis read in one pipeline, and
/// 1000 ids already make a request line of over 100 KiB.
const MAX_BATCH_IDS: usize = 1000;
/// Shortest `ingest.admin_token`: it guards rebuilds of the whole cache.
const MIN_ADMIN_TOKEN_LEN: usize = 16;
/// Longest token name: it appears in logs and as a metrics label.
const MAX_TOKEN_NAME_LEN: usize = 64;
/// Most items per page: each is one hash read inside one Redis script.
const MAX_PAGE_LIMIT: usize = 10_000;
/// Longest `Prefer: wait` honoured: proxies and load balancers cut idle
/// requests long before an hour.
const MAX_WAIT_SECS: u64 = 3600;
/// Longest SSE heartbeat interval: proxies close idle connections after a
/// minute or a few.
const MAX_SSE_HEARTBEAT_SECS: u64 = 300;
/// Smallest SSE buffer: a burst of one fold batch must fit.
const MIN_SSE_BUFFER_EVENTS: usize = 16;
/// Most `http.worker_threads`: far past any machine's cores, so a typo (an
/// extra digit) is caught before it spawns thousands of threads.
const MAX_WORKER_THREADS: usize = 1024;
/// Query parameters of a collection that no index may take as its name.
const RESERVED_FILTER_NAMES: [&str; 4] = ["id", "limit", "cursor", "since"];

/// `[kafka.client]` (and `[kafka.consumer]`, `[kafka.producer]`) properties
/// foldcache sets itself, with why an operator value would hurt.
const OWNED_KAFKA_PROPERTIES: [(&str, &str); 9] = [
    ("bootstrap.servers", "set kafka.brokers instead"),
    ("group.id", "set kafka.group_id instead"),
    (
        "group.instance.id",
        "during a rebuild an instance runs two consumers, which would fence each other",
    ),
    (
        "enable.auto.offset.store",
        "offsets are stored only after Redis acknowledged the fold",
    ),
    (
        "enable.auto.commit",
        "offsets are committed as ingest stores them",
    ),
    (
        "auto.offset.reset",
        "a partition without offsets must be read from its beginning",
    ),
    (
        "isolation.level",
        "read_uncommitted would fold records of aborted transactions",
    ),
    (
        "enable.partition.eof",
        "ingest detects caught-up partitions itself",
    ),
    (
        "statistics.interval.ms",
        "ingest's freshness and readiness are computed from these statistics",
    ),
];

/// Response headers a cache-tag header must not replace: ones query-api
/// sets itself or that carry HTTP semantics.
const RESERVED_RESPONSE_HEADERS: [&str; 22] = [
    "cache-control",
    "etag",
    "last-modified",
    "vary",
    "date",
    "expires",
    "age",
    "pragma",
    "retry-after",
    "www-authenticate",
    "allow",
    "location",
    "set-cookie",
    "authorization",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "trailer",
    "te",
    "accept-ranges",
    "proxy-authenticate",
];

/// Every rule, in the order of the file's sections.
pub(super) fn check(c: &Config) -> Result<(), ConfigError> {
    redis(c)?;
    kafka(c)?;
    ingest(c)?;
    http(c)?;
    sources(c)?;
    entities(c)?;
    views(c)?;
    indexes_and_changes(c)?;
    auth(c)
}

/// One line: the key, its value, why it is refused.
/// Smallest `kafka.dead_letter_max_bytes`: an envelope must fit.
const MIN_DEAD_LETTER_BYTES: usize = 16 * 1024;

fn reject(key: impl Display, value: impl Display, why: impl Display) -> ConfigError {
    ConfigError::Invalid(format!("{key} = {value}: {why}"))
}

/// A string value as TOML would show it, control characters escaped.
fn quoted(s: &str) -> String {
    format!("{s:?}")
}

/// The first character outside `[A-Za-z0-9._-]`.
fn first_unsafe_char(s: &str) -> Option<char> {
    s.chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
}

fn redis(c: &Config) -> Result<(), ConfigError> {
    let prefix = &c.redis.key_prefix;
    let key = "redis.key_prefix";
    if prefix.is_empty() {
        return Err(reject(
            key,
            quoted(prefix),
            "must not be empty: it separates this deployment's keys from every other",
        ));
    }
    if prefix.len() > MAX_KEY_PREFIX_LEN {
        return Err(reject(
            key,
            quoted(prefix),
            format!("longer than {MAX_KEY_PREFIX_LEN} bytes"),
        ));
    }
    if let Some(bad) = first_unsafe_char(prefix) {
        return Err(reject(
            key,
            quoted(prefix),
            format!(
                "character {bad:?} is not allowed (only A-Z a-z 0-9 . _ -): the prefix is used in \
                 SCAN MATCH patterns and CLIENT TRACKING prefixes, where glob characters, ':' or \
                 braces would reach other deployments' keys or another hash slot"
            ),
        ));
    }
    Ok(())
}

fn kafka(c: &Config) -> Result<(), ConfigError> {
    let k = &c.kafka;
    if k.brokers.split(',').any(|b| b.trim().is_empty()) {
        return Err(reject(
            "kafka.brokers",
            quoted(&k.brokers),
            "must list at least one host:port, without empty entries",
        ));
    }
    if k.group_id.trim().is_empty()
        || k.group_id.trim() != k.group_id
        || k.group_id.chars().any(char::is_control)
    {
        return Err(reject(
            "kafka.group_id",
            quoted(&k.group_id),
            "must be non-empty, without surrounding white space or control characters: \
             another spelling is another consumer group, which starts over from offset zero",
        ));
    }
    check_topic("kafka.dead_letter_topic", &k.dead_letter_topic)?;
    if k.dead_letter_partitions < 1 {
        return Err(reject(
            "kafka.dead_letter_partitions",
            k.dead_letter_partitions,
            "a topic needs at least one partition",
        ));
    }
    if k.dead_letter_replication_factor == 0 || k.dead_letter_replication_factor < -1 {
        return Err(reject(
            "kafka.dead_letter_replication_factor",
            k.dead_letter_replication_factor,
            "must be -1 (the broker's default) or at least 1",
        ));
    }
    if k.dead_letter_max_bytes < MIN_DEAD_LETTER_BYTES {
        return Err(reject(
            "kafka.dead_letter_max_bytes",
            k.dead_letter_max_bytes,
            format!(
                "must be at least {MIN_DEAD_LETTER_BYTES}: an envelope (origin, sizes, hashes and \
                 the first bytes of key and value) must fit"
            ),
        ));
    }
    for (section, name, _) in k.properties() {
        if let Some((_, why)) = OWNED_KAFKA_PROPERTIES
            .iter()
            .find(|(owned, _)| owned == name)
        {
            return Err(reject(
                format!("kafka.{section}.{name:?}"),
                "[redacted]",
                format!("foldcache sets this property itself: {why}"),
            ));
        }
    }
    Ok(())
}

/// A legal Kafka topic name: 1 to 249 characters of `[A-Za-z0-9._-]`, not
/// `.` or `..`.
fn check_topic(key: &str, topic: &str) -> Result<(), ConfigError> {
    let why = if topic.is_empty() {
        "must not be empty".to_owned()
    } else if topic.len() > MAX_TOPIC_LEN {
        format!("longer than {MAX_TOPIC_LEN} characters, Kafka's limit")
    } else if let Some(bad) = first_unsafe_char(topic) {
        format!("character {bad:?} is not legal in a Kafka topic name (A-Z a-z 0-9 . _ -)")
    } else if topic == "." || topic == ".." {
        "is not a legal Kafka topic name".to_owned()
    } else {
        return Ok(());
    };
    Err(reject(key, quoted(topic), why))
}

fn ingest(c: &Config) -> Result<(), ConfigError> {
    let i = &c.ingest;
    if i.batch_max_events == 0 {
        return Err(reject(
            "ingest.batch_max_events",
            0,
            "a batch must hold at least one record, or nothing is ever folded",
        ));
    }
    if i.unfolded_max_bytes < MIN_UNFOLDED_BYTES {
        return Err(reject(
            "ingest.unfolded_max_bytes",
            i.unfolded_max_bytes,
            format!(
                "must be at least {MIN_UNFOLDED_BYTES} (1 MiB): a smaller bound folds a \
                 handful of records per round trip"
            ),
        ));
    }
    if i.max_value_bytes == 0 || i.max_value_bytes > MAX_VALUE_BYTES {
        return Err(reject(
            "ingest.max_value_bytes",
            i.max_value_bytes,
            format!(
                "must be between 1 and {MAX_VALUE_BYTES} (Redis's largest string): 0 would \
                 dead-letter every record"
            ),
        ));
    }
    if i.drain_timeout_ms == 0 {
        return Err(reject(
            "ingest.drain_timeout_ms",
            0,
            "must be positive: on SIGTERM partitions need time to fold their last batch",
        ));
    }
    if i.retry_max_backoff_ms < 50 {
        return Err(reject(
            "ingest.retry_max_backoff_ms",
            i.retry_max_backoff_ms,
            "must be at least 50: retries would hammer an unreachable Redis or broker",
        ));
    }
    if !(1..=MAX_CONSUMERS).contains(&i.consumers) {
        return Err(reject(
            "ingest.consumers",
            i.consumers,
            format!(
                "must be between 1 and {MAX_CONSUMERS}: at least one reads the sources, \
                 and each is a group member with connections and threads of its own"
            ),
        ));
    }
    if i.heartbeat_interval_ms == 0 {
        return Err(reject(
            "ingest.heartbeat_interval_ms",
            0,
            "must be positive: the heartbeat carries liveness and freshness to query-api",
        ));
    }
    let grace = i.rebuild_retire_grace_ms;
    let poll = c.http.state_poll_ms;
    if grace < poll.saturating_mul(2) {
        return Err(reject(
            "ingest.rebuild_retire_grace_ms",
            grace,
            format!(
                "must be at least twice http.state_poll_ms ({poll}): query-api instances switch \
                 to a new generation within one poll, and the old one must outlive that"
            ),
        ));
    }
    if let Some(token) = &i.admin_token {
        let t = token.expose();
        if t.len() < MIN_ADMIN_TOKEN_LEN
            || t.chars().any(|ch| ch.is_whitespace() || ch.is_control())
        {
            return Err(reject(
                "ingest.admin_token",
                "[redacted]",
                format!(
                    "must be at least {MIN_ADMIN_TOKEN_LEN} characters without white space \
                     (`ingest hash-token --new` makes one): it may rebuild the whole cache"
                ),
            ));
        }
    }
    purge(c)
}

fn purge(c: &Config) -> Result<(), ConfigError> {
    let p = &c.ingest.purge;
    if p.url.is_empty() {
        return Ok(());
    }
    let url_ok = p
        .url
        .parse::<http::Uri>()
        .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some());
    if !url_ok {
        return Err(reject(
            "ingest.purge.url",
            quoted(&p.url),
            "must be an http:// or https:// URL with a host (empty disables the hook)",
        ));
    }
    if http::Method::from_bytes(p.method.as_bytes()).is_err() {
        return Err(reject(
            "ingest.purge.method",
            quoted(&p.method),
            "is not an HTTP method: every purge would fail and CDNs would serve stale copies",
        ));
    }
    if p.header.is_empty() || http::HeaderName::from_bytes(p.header.as_bytes()).is_err() {
        return Err(reject(
            "ingest.purge.header",
            quoted(&p.header),
            "is not an HTTP header name: every purge would fail and CDNs would serve stale copies",
        ));
    }
    Ok(())
}

fn http(c: &Config) -> Result<(), ConfigError> {
    let h = &c.http;
    if h.listen == h.metrics_listen && h.listen.port() != 0 {
        return Err(reject(
            "http.metrics_listen",
            quoted(&h.metrics_listen.to_string()),
            "is the same address as http.listen; query-api binds both",
        ));
    }
    if h.state_poll_ms == 0 {
        return Err(reject(
            "http.state_poll_ms",
            0,
            "must be positive: query-api learns readiness, freshness and generation swaps by polling",
        ));
    }
    if h.retry_after_secs == 0 || h.retry_after_secs > MAX_RETRY_AFTER_SECS {
        return Err(reject(
            "http.retry_after_secs",
            h.retry_after_secs,
            format!(
                "must be between 1 and {MAX_RETRY_AFTER_SECS}: 0 invites clients to retry in a \
                 tight loop, more keeps them away long after the cache is back"
            ),
        ));
    }
    if h.max_batch_ids == 0 || h.max_batch_ids > MAX_BATCH_IDS {
        return Err(reject(
            "http.max_batch_ids",
            h.max_batch_ids,
            format!("must be between 1 and {MAX_BATCH_IDS}: 0 refuses every batch lookup"),
        ));
    }
    if h.max_page_limit == 0 || h.max_page_limit > MAX_PAGE_LIMIT {
        return Err(reject(
            "http.max_page_limit",
            h.max_page_limit,
            format!(
                "must be between 1 and {MAX_PAGE_LIMIT}: each item is one hash read of the same request"
            ),
        ));
    }
    if h.default_page_limit == 0 || h.default_page_limit > h.max_page_limit {
        return Err(reject(
            "http.default_page_limit",
            h.default_page_limit,
            format!(
                "must be between 1 and http.max_page_limit ({})",
                h.max_page_limit
            ),
        ));
    }
    if h.max_wait_secs == 0 || h.max_wait_secs > MAX_WAIT_SECS {
        return Err(reject(
            "http.max_wait_secs",
            h.max_wait_secs,
            format!(
                "must be between 1 and {MAX_WAIT_SECS}: proxies cut requests that stay idle longer"
            ),
        ));
    }
    if h.sse_heartbeat_secs == 0 || h.sse_heartbeat_secs > MAX_SSE_HEARTBEAT_SECS {
        return Err(reject(
            "http.sse_heartbeat_secs",
            h.sse_heartbeat_secs,
            format!(
                "must be between 1 and {MAX_SSE_HEARTBEAT_SECS}: proxies close event streams that \
                 stay silent longer, and clients cannot tell a quiet feed from a dead one"
            ),
        ));
    }
    if h.sse_buffer_events < MIN_SSE_BUFFER_EVENTS {
        return Err(reject(
            "http.sse_buffer_events",
            h.sse_buffer_events,
            format!(
                "must be at least {MIN_SSE_BUFFER_EVENTS}: one fold batch would disconnect every \
                 event-stream client"
            ),
        ));
    }
    if h.worker_threads > MAX_WORKER_THREADS {
        return Err(reject(
            "http.worker_threads",
            h.worker_threads,
            format!("must be at most {MAX_WORKER_THREADS} (0: one per CPU core)"),
        ));
    }
    let header = h.surrogate_key_header.trim();
    if !header.is_empty() {
        let lower = header.to_ascii_lowercase();
        let why = if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
            "is not an HTTP header name; cache tags would silently never be sent"
        } else if lower.starts_with("content-") || RESERVED_RESPONSE_HEADERS.contains(&&*lower) {
            "would replace a header with HTTP semantics (caching, validators, auth) by cache tags"
        } else {
            return Ok(());
        };
        return Err(reject(
            "http.surrogate_key_header",
            quoted(&h.surrogate_key_header),
            why,
        ));
    }
    Ok(())
}

fn sources(c: &Config) -> Result<(), ConfigError> {
    if c.sources.is_empty() {
        return Err(reject("sources", "[]", "no source configured"));
    }
    let mut topics = BTreeSet::new();
    // Kafka refuses a topic whose name differs from another only by '.'
    // versus '_' (their metric names collide).
    let mut metric_names = BTreeMap::new();
    metric_names.insert(
        c.kafka.dead_letter_topic.replace('.', "_"),
        "kafka.dead_letter_topic".to_owned(),
    );
    let mut prefixes = BTreeSet::new();
    for (i, s) in c.sources.iter().enumerate() {
        let key = format!("sources[{i}].topic");
        check_topic(&key, &s.topic)?;
        if !topics.insert(&s.topic) {
            return Err(reject(key, quoted(&s.topic), "is listed twice in sources"));
        }
        if s.topic == c.kafka.dead_letter_topic {
            return Err(reject(
                key,
                quoted(&s.topic),
                "is also kafka.dead_letter_topic: poison records would be folded, or dead-lettered again forever",
            ));
        }
        if let Some(other) = metric_names.insert(s.topic.replace('.', "_"), key.clone()) {
            return Err(reject(
                key,
                quoted(&s.topic),
                format!(
                    "collides with {other} that differs only by '.' versus '_'; Kafka refuses such pairs"
                ),
            ));
        }
        if !c.entities.contains_key(&s.entity) {
            return Err(reject(
                format!("sources[{i}].entity"),
                quoted(&s.entity),
                "is not configured under [entities]",
            ));
        }
        if !s.id_prefix.is_empty() {
            check_id_prefix(&s.id_prefix).map_err(|e| {
                reject(
                    format!("sources[{i}].id_prefix"),
                    quoted(&s.id_prefix),
                    format!("{e} (it must start like an id)"),
                )
            })?;
        }
        programs(i, s)?;
        if let Some(path) = &s.schema_file {
            schema_file(format!("sources[{i}].schema_file"), path)?;
        }
        let merged = c.entities.get(&s.entity).is_some_and(|e| e.merge);
        contribution(i, s, merged)?;
        // Merged sources share the entity's ids on purpose.
        if !merged && !prefixes.insert((&s.entity, &s.id_prefix)) {
            return Err(reject(
                format!("sources[{i}].id_prefix"),
                quoted(&s.id_prefix),
                format!(
                    "another source feeding {:?} has the same id_prefix: equal keys from two \
                     topics would overwrite (and tombstones delete) each other's entities",
                    s.entity
                ),
            ));
        }
    }
    for (name, e) in &c.entities {
        let Some(topic) = &e.links_topic else {
            continue;
        };
        let key = format!("entities.{name}.links_topic");
        check_topic(&key, topic)?;
        if !e.merge {
            return Err(reject(
                key,
                quoted(topic),
                format!(
                    "links need entities.{name}.merge = true (a link moves each source's part \
                     of an entity to its canonical id)"
                ),
            ));
        }
        if topics.contains(topic) || *topic == c.kafka.dead_letter_topic {
            return Err(reject(
                key,
                quoted(topic),
                "is also a source topic or kafka.dead_letter_topic: a topic holds links or states, not both",
            ));
        }
        if let Some(other) = metric_names.insert(topic.replace('.', "_"), key.clone()) {
            return Err(reject(
                key,
                quoted(topic),
                format!(
                    "collides with {other} (the same topic, or one that differs only by '.' \
                     versus '_')"
                ),
            ));
        }
    }
    Ok(())
}

/// A JSON Schema file must load and compile (both binaries load it again
/// at start; a bad one must stop them here first).
fn schema_file(key: String, path: &std::path::Path) -> Result<(), ConfigError> {
    Schema::load(path)
        .map(drop)
        .map_err(|why| reject(key, quoted(&path.to_string_lossy()), why))
}

/// `fields` and `priority` say how a source contributes to a merged
/// entity; elsewhere they would silently mean nothing.
fn contribution(i: usize, s: &SourceConfig, merged: bool) -> Result<(), ConfigError> {
    if !merged && (s.fields.is_some() || s.priority != 0) {
        let (key, value) = match &s.fields {
            Some(f) => ("fields", format!("{f:?}")),
            None => ("priority", s.priority.to_string()),
        };
        return Err(reject(
            format!("sources[{i}].{key}"),
            value,
            format!(
                "only means something when entities.{}.merge = true (several sources, one entity)",
                s.entity
            ),
        ));
    }
    let mut seen = BTreeSet::new();
    for f in s.fields.iter().flatten() {
        let why = if f.is_empty() {
            "a member name cannot be empty"
        } else if f.starts_with(META_PREFIX) {
            "members starting with `_fc:` are foldcache's own"
        } else if !seen.insert(f) {
            "is listed twice"
        } else {
            continue;
        };
        return Err(reject(format!("sources[{i}].fields"), quoted(f), why));
    }
    Ok(())
}

/// A source's jq programs must compile (ingest compiles them again when it
/// resolves its sources; a bad one must stop both binaries here first).
fn programs(i: usize, s: &SourceConfig) -> Result<(), ConfigError> {
    let checks: [(&str, &Option<String>, Compile); 2] = [
        ("transform", &s.transform, Program::transform),
        ("id_from_key", &s.id_from_key, Program::id_from_key),
    ];
    for (name, code, compile) in checks {
        if let Some(code) = code {
            compile(code).map_err(|why| {
                reject(
                    format!("sources[{i}].{name}"),
                    program_excerpt(code),
                    format!("not a valid jq program: {why}"),
                )
            })?;
        }
    }
    Ok(())
}

/// A program as one quoted line, cut after 60 characters: the error names
/// the line and column where it went wrong, the file holds the rest.
fn program_excerpt(code: &str) -> String {
    match code.char_indices().nth(60) {
        Some((cut, _)) => format!("{}...", quoted(&code[..cut])),
        None => quoted(code),
    }
}

/// An id prefix must itself start like an id and use only id characters
/// (it may end in a separator such as `.`).
fn check_id_prefix(prefix: &str) -> Result<(), IdError> {
    crate::id::EntityId::parse(&format!("{prefix}x")).map(|_| ())
}

fn entities(c: &Config) -> Result<(), ConfigError> {
    // How late a healthy pipeline's freshness can look to query-api: a record
    // waits up to one linger before it is folded, the fold is reported with
    // the next heartbeat, and query-api reads it with its next poll.
    let lag_ms = c
        .ingest
        .batch_linger_ms
        .saturating_add(c.ingest.heartbeat_interval_ms)
        .saturating_add(c.http.state_poll_ms);
    for (name, e) in &c.entities {
        if let Err(err) = EntityName::parse(name) {
            return Err(reject(format!("entities.{name:?}"), "{..}", err));
        }
        entity_ttl(name, e)?;
        if let Some(path) = &e.schema_file {
            schema_file(format!("entities.{name}.schema_file"), path)?;
        }
        let bound_ms = e.freshness_secs.saturating_mul(1000);
        if lag_ms.saturating_mul(2) > bound_ms {
            return Err(reject(
                format!("entities.{name}.freshness_secs"),
                e.freshness_secs,
                format!(
                    "a healthy pipeline looks up to {lag_ms} ms late (ingest.batch_linger_ms + \
                     ingest.heartbeat_interval_ms + http.state_poll_ms); the bound must be at \
                     least twice that, or reads answer 503 while nothing is wrong"
                ),
            ));
        }
    }
    Ok(())
}

fn entity_ttl(name: &str, e: &EntityConfig) -> Result<(), ConfigError> {
    let ttl_key = format!("entities.{name}.ttl_secs");
    if e.ttl_secs < MIN_TTL_SECS || e.ttl_secs > MAX_TTL_SECS {
        return Err(reject(
            ttl_key,
            e.ttl_secs,
            format!(
                "must be between {MIN_TTL_SECS} and {MAX_TTL_SECS}: ingest refreshes TTLs every \
                 ttl/4 but at most once a second, so a shorter TTL expires live entities (false \
                 404s); a longer one overflows Redis's expiry"
            ),
        ));
    }
    if e.freshness_secs == 0 {
        return Err(reject(
            format!("entities.{name}.freshness_secs"),
            0,
            "every entity has a TTL, so without a freshness bound a stopped ingest lets live \
             entities expire into false 404s; set a bound (at most half of ttl_secs)",
        ));
    }
    if e.ttl_secs / 2 < e.freshness_secs {
        return Err(reject(
            ttl_key,
            e.ttl_secs,
            format!(
                "must be at least twice freshness_secs ({}), or an entity could expire (a false \
                 404) before the bound turns reads into 503",
                e.freshness_secs
            ),
        ));
    }
    Ok(())
}

fn views(c: &Config) -> Result<(), ConfigError> {
    for (name, e) in &c.entities {
        for (view, fields) in &e.views {
            let key = format!("entities.{name}.views.{view}");
            if view == FULL_VIEW {
                return Err(reject(key, "[..]", "`full` is built in (every field)"));
            }
            if EntityName::parse(view).is_err() {
                return Err(reject(
                    key,
                    "[..]",
                    "a view name is lower-case letters, digits or '_', starting with a letter",
                ));
            }
            if fields.is_empty() {
                return Err(reject(key, "[]", "lists no fields"));
            }
            if fields.len() > 1 && fields.iter().any(|f| f == "*") {
                return Err(reject(key, "[..]", "\"*\" (every field) must stand alone"));
            }
            if let Some(f) = fields.iter().find(|f| f.starts_with(META_PREFIX)) {
                return Err(reject(
                    key,
                    "[..]",
                    format!("field {f:?}: names starting with {META_PREFIX:?} are reserved"),
                ));
            }
        }
    }
    Ok(())
}

fn indexes_and_changes(c: &Config) -> Result<(), ConfigError> {
    for (name, e) in &c.entities {
        for (index, ix) in &e.indexes {
            let key = format!("entities.{name}.indexes.{index}");
            if EntityName::parse(index).is_err() {
                return Err(reject(
                    key,
                    "{..}",
                    "an index name is lower-case letters, digits or '_', starting with a letter \
                     (it is the collection's filter parameter)",
                ));
            }
            if RESERVED_FILTER_NAMES.contains(&index.as_str()) {
                return Err(reject(
                    key,
                    "{..}",
                    format!(
                        "is a query parameter of every collection ({}); name the index otherwise",
                        RESERVED_FILTER_NAMES.join(", ")
                    ),
                ));
            }
            let path = crate::index::FieldPath::parse(&ix.field)
                .map_err(|why| reject(format!("{key}.field"), quoted(&ix.field), why))?;
            if path.top().starts_with(META_PREFIX) {
                return Err(reject(
                    format!("{key}.field"),
                    quoted(&ix.field),
                    format!("names starting with {META_PREFIX:?} are reserved"),
                ));
            }
        }
        if e.changes_max_len == 0 && e.changes_max_age_secs == 0 {
            return Err(reject(
                format!("entities.{name}.changes_max_len"),
                0,
                "with changes_max_age_secs = 0 too, the change log would grow without bound; \
                 bound it by length, by time or both",
            ));
        }
    }
    Ok(())
}

fn auth(c: &Config) -> Result<(), ConfigError> {
    let a = &c.auth;
    let view_exists = |entity: &str, view: &str| {
        c.entities
            .get(entity)
            .is_some_and(|e| view == FULL_VIEW || e.views.contains_key(view))
    };
    if a.tokens.is_empty() && !a.anonymous.is_empty() {
        return Err(reject(
            "auth.anonymous",
            "{..}",
            "has no effect without [[auth.tokens]]: open mode serves every entity's full view \
             to everyone, not these views",
        ));
    }
    for (entity, view) in &a.anonymous {
        if !view_exists(entity, view) {
            return Err(reject(
                format!("auth.anonymous.{entity}"),
                quoted(view),
                "no such view of a configured entity",
            ));
        }
    }
    if a.rate_per_sec > 0 && a.burst == 0 {
        return Err(reject(
            "auth.burst",
            0,
            "must be at least 1 while auth.rate_per_sec is set",
        ));
    }
    let mut names = BTreeSet::new();
    let mut hashes = BTreeSet::new();
    for (i, t) in a.tokens.iter().enumerate() {
        let key = |field: &str| format!("auth.tokens[{i}].{field}");
        let name_ok = !t.name.is_empty()
            && t.name.len() <= MAX_TOKEN_NAME_LEN
            && first_unsafe_char(&t.name).is_none();
        if !name_ok {
            return Err(reject(
                key("name"),
                quoted(&t.name),
                format!(
                    "must be 1 to {MAX_TOKEN_NAME_LEN} characters of A-Z a-z 0-9 . _ - (it \
                     appears in logs and metrics)"
                ),
            ));
        }
        if !names.insert(&t.name) {
            return Err(reject(key("name"), quoted(&t.name), "is used twice"));
        }
        let hex_ok = t.sha256.len() == 64
            && t.sha256
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !hex_ok {
            return Err(reject(
                key("sha256"),
                quoted(&t.sha256),
                "must be 64 lower-case hex digits, the SHA-256 of the token (see `ingest hash-token`)",
            ));
        }
        if !hashes.insert(&t.sha256) {
            return Err(reject(
                key("sha256"),
                quoted(&t.sha256),
                "the same token is configured twice",
            ));
        }
        for (entity, view) in &t.grants {
            if !view_exists(entity, view) {
                return Err(reject(
                    format!("auth.tokens[{i}].grants.{entity}"),
                    quoted(view),
                    "no such view of a configured entity",
                ));
            }
        }
        let rate = t.rate_per_sec.unwrap_or(a.rate_per_sec);
        if rate > 0 && t.burst == Some(0) {
            return Err(reject(
                key("burst"),
                0,
                "must be at least 1 while the token has a rate",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TokenConfig;

    /// The one-line message of a refused config.
    fn refused(c: &Config) -> String {
        match c.validate() {
            Err(ConfigError::Invalid(line)) => {
                assert!(!line.contains('\n'), "one line: {line}");
                line
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// Asserts the default config with `change` applied is refused with a
    /// message naming `key` and containing `why`.
    #[track_caller]
    fn assert_refused(change: impl FnOnce(&mut Config), key: &str, why: &str) {
        let mut c = Config::default();
        change(&mut c);
        let line = refused(&c);
        assert!(line.starts_with(key), "{line:?} should name {key}");
        assert!(line.contains(why), "{line:?} should say {why:?}");
    }

    fn token(name: &str, sha: char) -> TokenConfig {
        TokenConfig {
            name: name.into(),
            sha256: sha.to_string().repeat(64),
            grants: BTreeMap::new(),
            admin: false,
            rate_per_sec: None,
            burst: None,
        }
    }

    #[test]
    fn the_shipped_defaults_pass() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn freshness_off_is_refused_because_ttls_would_make_false_404s() {
        assert_refused(
            |c| c.entities.get_mut("teams").unwrap().freshness_secs = 0,
            "entities.teams.freshness_secs = 0",
            "false 404",
        );
    }

    #[test]
    fn ttls_too_short_too_long_or_below_twice_the_freshness_are_refused() {
        assert_refused(
            |c| c.entities.get_mut("teams").unwrap().ttl_secs = 0,
            "entities.teams.ttl_secs = 0",
            "between 4",
        );
        assert_refused(
            |c| c.entities.get_mut("teams").unwrap().ttl_secs = 3,
            "entities.teams.ttl_secs = 3",
            "false",
        );
        assert_refused(
            |c| c.entities.get_mut("teams").unwrap().ttl_secs = u64::MAX,
            "entities.teams.ttl_secs",
            "overflows",
        );
        assert_refused(
            |c| c.entities.get_mut("teams").unwrap().ttl_secs = 7199,
            "entities.teams.ttl_secs = 7199",
            "twice freshness_secs (3600)",
        );
        // A huge bound must not overflow into "passes" (2 * f wraps).
        assert_refused(
            |c| c.entities.get_mut("teams").unwrap().freshness_secs = 1 << 63,
            "entities.teams.ttl_secs",
            "twice freshness_secs",
        );
    }

    #[test]
    fn a_freshness_bound_a_healthy_pipeline_cannot_meet_is_refused() {
        assert_refused(
            |c| {
                let e = c.entities.get_mut("teams").unwrap();
                e.freshness_secs = 2;
                e.ttl_secs = 4;
                c.ingest.heartbeat_interval_ms = 900;
            },
            "entities.teams.freshness_secs = 2",
            "1155 ms late",
        );
        assert_refused(
            |c| c.ingest.batch_linger_ms = 3_600_000,
            "entities.employees.freshness_secs = 3600",
            "503",
        );
    }

    #[test]
    fn key_prefixes_that_are_patterns_are_refused_naming_the_character() {
        for (prefix, bad) in [
            ("f*c", "'*'"),
            ("fc?", "'?'"),
            ("f[c]", "'['"),
            ("f]", "']'"),
            ("f\\c", "'\\\\'"),
            ("{fc}", "'{'"),
            ("f}c", "'}'"),
            ("fc:g1", "':'"),
            ("f c", "' '"),
            ("fc\t", "'\\t'"),
            ("fc\u{7}", "'\\u{7}'"),
            ("fč", "'č'"),
        ] {
            let mut c = Config::default();
            c.redis.key_prefix = prefix.into();
            let line = refused(&c);
            assert!(line.starts_with("redis.key_prefix = "), "{line}");
            assert!(
                line.contains(&format!("character {bad}")),
                "{prefix:?}: {line}"
            );
        }
        assert_refused(
            |c| c.redis.key_prefix = String::new(),
            "redis.key_prefix = \"\"",
            "empty",
        );
        assert_refused(
            |c| c.redis.key_prefix = "a".repeat(65),
            "redis.key_prefix",
            "longer than 64",
        );
        let mut c = Config::default();
        c.redis.key_prefix = "prod-hr_v2.eu".into();
        c.validate().unwrap();
    }

    #[test]
    fn zero_intervals_and_limits_are_refused() {
        assert_refused(
            |c| c.http.state_poll_ms = 0,
            "http.state_poll_ms = 0",
            "polling",
        );
        assert_refused(
            |c| c.ingest.heartbeat_interval_ms = 0,
            "ingest.heartbeat_interval_ms = 0",
            "liveness",
        );
        assert_refused(
            |c| c.http.retry_after_secs = 0,
            "http.retry_after_secs = 0",
            "tight loop",
        );
        assert_refused(
            |c| c.http.retry_after_secs = 86_400,
            "http.retry_after_secs = 86400",
            "between 1 and 3600",
        );
        assert_refused(
            |c| c.ingest.unfolded_max_bytes = 1000,
            "ingest.unfolded_max_bytes = 1000",
            "at least 1048576",
        );
        assert_refused(
            |c| c.ingest.max_value_bytes = 0,
            "ingest.max_value_bytes = 0",
            "dead-letter every record",
        );
        assert_refused(
            |c| c.http.max_batch_ids = 0,
            "http.max_batch_ids = 0",
            "every batch",
        );
        assert_refused(
            |c| c.ingest.batch_max_events = 0,
            "ingest.batch_max_events = 0",
            "at least one record",
        );
        assert_refused(
            |c| c.ingest.drain_timeout_ms = 0,
            "ingest.drain_timeout_ms = 0",
            "positive",
        );
        assert_refused(
            |c| c.kafka.dead_letter_max_bytes = 100,
            "kafka.dead_letter_max_bytes = 100",
            "envelope",
        );
        assert_refused(
            |c| c.kafka.dead_letter_replication_factor = 0,
            "kafka.dead_letter_replication_factor = 0",
            "-1",
        );
        assert_refused(
            |c| c.ingest.retry_max_backoff_ms = 0,
            "ingest.retry_max_backoff_ms = 0",
            "50",
        );
        assert_refused(
            |c| c.ingest.consumers = 0,
            "ingest.consumers = 0",
            "between 1 and 64",
        );
        assert_refused(
            |c| c.ingest.consumers = 65,
            "ingest.consumers = 65",
            "between 1 and 64",
        );
    }

    #[test]
    fn a_retire_grace_readers_cannot_switch_within_is_refused() {
        assert_refused(
            |c| c.ingest.rebuild_retire_grace_ms = 100,
            "ingest.rebuild_retire_grace_ms = 100",
            "twice http.state_poll_ms (250)",
        );
        assert_refused(
            |c| {
                c.http.state_poll_ms = 3000;
                c.ingest.rebuild_retire_grace_ms = 5000;
            },
            "ingest.rebuild_retire_grace_ms = 5000",
            "(3000)",
        );
        let mut c = Config::default();
        c.ingest.rebuild_retire_grace_ms = 500;
        c.validate().unwrap();
    }

    #[test]
    fn kafka_names_are_checked() {
        assert_refused(
            |c| c.kafka.brokers = String::new(),
            "kafka.brokers = \"\"",
            "at least one",
        );
        assert_refused(
            |c| c.kafka.brokers = "a:9092,".into(),
            "kafka.brokers",
            "empty entries",
        );
        assert_refused(
            |c| c.kafka.group_id = String::new(),
            "kafka.group_id = \"\"",
            "non-empty",
        );
        assert_refused(
            |c| c.kafka.group_id = "g ".into(),
            "kafka.group_id = \"g \"",
            "white space",
        );
        assert_refused(
            |c| c.kafka.dead_letter_topic = String::new(),
            "kafka.dead_letter_topic = \"\"",
            "empty",
        );
        assert_refused(
            |c| c.kafka.dead_letter_topic = "hr.teams".into(),
            "sources[1].topic = \"hr.teams\"",
            "dead_letter_topic",
        );
        assert_refused(
            |c| c.kafka.dead_letter_topic = "hr_teams".into(),
            "sources[1].topic = \"hr.teams\"",
            "'.' versus '_'",
        );
        for (topic, why) in [
            ("hr employees", "' '"),
            ("hr/employees", "'/'"),
            ("hr:e", "':'"),
            ("..", "not a legal"),
            ("", "empty"),
        ] {
            let mut c = Config::default();
            c.sources[0].topic = topic.into();
            let line = refused(&c);
            assert!(line.starts_with("sources[0].topic"), "{line}");
            assert!(line.contains(why), "{topic:?}: {line}");
        }
        assert_refused(
            |c| c.sources[0].topic = "t".repeat(250),
            "sources[0].topic",
            "249",
        );
        assert_refused(
            |c| c.sources[2].topic = "hr.teams".into(),
            "sources[2].topic = \"hr.teams\"",
            "twice",
        );
        assert_refused(
            |c| c.sources[2].topic = "hr_teams".into(),
            "sources[2].topic = \"hr_teams\"",
            "collides with sources[1].topic",
        );
    }

    #[test]
    fn kafka_client_properties_foldcache_owns_are_refused_without_their_value() {
        let mut c = Config::default();
        c.kafka.client.insert(
            "isolation.level".into(),
            crate::secret::Secret::new("value-7d1e".into()),
        );
        let line = refused(&c);
        assert!(
            line.starts_with("kafka.client.\"isolation.level\""),
            "{line}"
        );
        assert!(line.contains("aborted"), "{line}");
        assert!(!line.contains("value-7d1e"), "{line}");
        let mut c = Config::default();
        c.kafka.consumer.insert(
            "group.id".into(),
            crate::secret::Secret::new("value-5c2a".into()),
        );
        let line = refused(&c);
        assert!(line.starts_with("kafka.consumer.\"group.id\""), "{line}");
        assert!(!line.contains("value-5c2a"), "{line}");
        let mut c = Config::default();
        c.kafka.client.insert(
            "security.protocol".into(),
            crate::secret::Secret::new("SASL_SSL".into()),
        );
        c.kafka.consumer.insert(
            "fetch.max.bytes".into(),
            crate::secret::Secret::new("3145728".into()),
        );
        c.kafka.producer.insert(
            "compression.type".into(),
            crate::secret::Secret::new("lz4".into()),
        );
        c.validate().unwrap();
    }

    #[test]
    fn a_bad_jq_program_is_one_line_naming_the_source_and_the_place() {
        let mut c = Config::default();
        c.sources[1].transform = Some("{name: .first +\n}".into());
        let line = refused(&c);
        assert_eq!(
            line,
            "sources[1].transform = \"{name: .first +\\n}\": not a valid jq program: \
             does not parse: expected term at line 2 column 1"
        );
        c.sources[1].transform = Some("{id: $id, team: teams[.dept]}".into());
        assert_eq!(
            refused(&c),
            "sources[1].transform = \"{id: $id, team: teams[.dept]}\": not a valid jq program: \
             undefined filter `teams` at line 1 column 17"
        );
        c.sources[1].transform = Some(format!("{{a: .a}}{}", " | .".repeat(30)));
        c.sources[1].id_from_key = Some("$id".into());
        let line = refused(&c);
        assert!(
            line.starts_with("sources[1].id_from_key = \"$id\""),
            "{line}"
        );
        c.sources[1].id_from_key = Some(".id".into());
        c.sources[1].transform = Some(format!("{{a: .a}}{} |", " | .".repeat(30)));
        let line = refused(&c);
        assert!(
            line.contains(". | . \"...: not a valid jq program: does not parse"),
            "{line}"
        );
    }

    #[test]
    fn an_entity_schema_must_be_a_readable_json_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("employees.json");
        let mut c = Config::default();
        c.entities.get_mut("employees").unwrap().schema_file = Some(path.clone());
        let line = refused(&c);
        assert!(
            line.starts_with(&format!(
                "entities.employees.schema_file = {:?}: cannot read it",
                path.to_string_lossy()
            )),
            "{line}"
        );
        std::fs::write(&path, r#"{"type": "objekt"}"#).unwrap();
        assert!(refused(&c).contains(": not a valid JSON Schema at"));
        std::fs::write(&path, r#"{"type": "object", "required": ["id"]}"#).unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn sources_feeding_one_entity_need_distinct_id_prefixes() {
        let mut c = Config::default();
        let mut second = c.sources[0].clone();
        second.topic = "acme.hr.employees".into();
        c.sources.push(second.clone());
        let line = refused(&c);
        assert!(line.starts_with("sources[3].id_prefix = \"\""), "{line}");
        c.sources[3].id_prefix = "acme.".into();
        c.validate().unwrap();
        assert_refused(
            |c| c.sources[0].id_prefix = "-x".into(),
            "sources[0].id_prefix",
            "start like an id",
        );
        assert_refused(
            |c| c.sources[0].entity = "nope".into(),
            "sources[0].entity = \"nope\"",
            "[entities]",
        );
        assert_refused(|c| c.sources.clear(), "sources", "no source");
    }

    #[test]
    fn merged_entities_take_fields_priorities_and_a_links_topic() {
        let merged = |c: &mut Config| {
            c.entities.get_mut("employees").unwrap().merge = true;
            let mut access = c.sources[0].clone();
            access.topic = "access.grants".into();
            access.fields = Some(vec!["grants".into()]);
            access.priority = 5;
            c.sources.push(access);
        };
        // Same id space, one owner per member: accepted.
        let mut c = Config::default();
        merged(&mut c);
        c.entities.get_mut("employees").unwrap().links_topic = Some("hr.links".into());
        c.validate().unwrap();
        assert_refused(
            |c| c.sources[0].fields = Some(vec!["name".into()]),
            "sources[0].fields = [\"name\"]",
            "entities.employees.merge = true",
        );
        assert_refused(
            |c| c.sources[1].priority = 2,
            "sources[1].priority = 2",
            "entities.teams.merge = true",
        );
        assert_refused(
            |c| {
                merged(c);
                c.sources[3].fields = Some(vec!["grants".into(), "grants".into()]);
            },
            "sources[3].fields = \"grants\"",
            "listed twice",
        );
        assert_refused(
            |c| {
                merged(c);
                c.sources[3].fields = Some(vec!["_fc:etag".into()]);
            },
            "sources[3].fields = \"_fc:etag\"",
            "foldcache's own",
        );
        assert_refused(
            |c| c.entities.get_mut("teams").unwrap().links_topic = Some("hr.links".into()),
            "entities.teams.links_topic = \"hr.links\"",
            "merge = true",
        );
        assert_refused(
            |c| {
                merged(c);
                c.entities.get_mut("employees").unwrap().links_topic = Some("hr.teams".into());
            },
            "entities.employees.links_topic = \"hr.teams\"",
            "links or states, not both",
        );
    }

    #[test]
    fn purge_and_surrogate_headers_must_work() {
        assert_refused(
            |c| c.ingest.purge.url = "varnish:6081".into(),
            "ingest.purge.url",
            "http://",
        );
        assert_refused(
            |c| {
                c.ingest.purge.url = "http://varnish:6081/".into();
                c.ingest.purge.method = "PUR GE".into();
            },
            "ingest.purge.method",
            "not an HTTP method",
        );
        assert_refused(
            |c| {
                c.ingest.purge.url = "http://varnish:6081/".into();
                c.ingest.purge.header = "x key".into();
            },
            "ingest.purge.header",
            "header name",
        );
        assert_refused(
            |c| c.http.surrogate_key_header = "Surrogate Key".into(),
            "http.surrogate_key_header",
            "silently",
        );
        for reserved in ["Cache-Control", "vary", "ETag", "Content-Type"] {
            assert_refused(
                |c| c.http.surrogate_key_header = reserved.into(),
                "http.surrogate_key_header",
                "HTTP semantics",
            );
        }
        for ok in ["xkey", "Cache-Tag", "Edge-Cache-Tag", ""] {
            let mut c = Config::default();
            c.http.surrogate_key_header = ok.into();
            c.validate().unwrap();
        }
        let mut c = Config::default();
        c.ingest.purge.url = "https://api.cdn.example/purge".into();
        c.ingest.purge.method = "POST".into();
        c.validate().unwrap();
    }

    #[test]
    fn listeners_and_admin_token() {
        assert_refused(
            |c| c.http.metrics_listen = c.http.listen,
            "http.metrics_listen = \"127.0.0.1:8080\"",
            "same address",
        );
        let mut c = Config::default();
        c.http.listen = ([127, 0, 0, 1], 0).into();
        c.http.metrics_listen = ([127, 0, 0, 1], 0).into();
        c.validate().unwrap();
        let short = "s3cr3t";
        let mut c = Config::default();
        c.ingest.admin_token = Some(crate::secret::Secret::new(short.into()));
        let line = refused(&c);
        assert!(
            line.starts_with("ingest.admin_token = [redacted]"),
            "{line}"
        );
        assert!(!line.contains(short));
    }

    #[test]
    fn indexes_page_limits_waits_and_change_retention() {
        assert_refused(
            |c| {
                c.entities.get_mut("employees").unwrap().indexes.insert(
                    "limit".into(),
                    crate::config::IndexConfig {
                        field: "x".into(),
                        unique: false,
                    },
                );
            },
            "entities.employees.indexes.limit",
            "query parameter",
        );
        assert_refused(
            |c| {
                c.entities.get_mut("employees").unwrap().indexes.insert(
                    "Team".into(),
                    crate::config::IndexConfig {
                        field: "x".into(),
                        unique: false,
                    },
                );
            },
            "entities.employees.indexes.Team",
            "lower-case",
        );
        assert_refused(
            |c| {
                c.entities.get_mut("teams").unwrap().indexes.insert(
                    "p".into(),
                    crate::config::IndexConfig {
                        field: "a[0]".into(),
                        unique: false,
                    },
                );
            },
            "entities.teams.indexes.p.field = \"a[0]\"",
            "[]",
        );
        assert_refused(
            |c| {
                c.entities.get_mut("teams").unwrap().indexes.insert(
                    "p".into(),
                    crate::config::IndexConfig {
                        field: "_fc:etag".into(),
                        unique: false,
                    },
                );
            },
            "entities.teams.indexes.p.field",
            "reserved",
        );
        assert_refused(
            |c| {
                let e = c.entities.get_mut("teams").unwrap();
                e.changes_max_len = 0;
                e.changes_max_age_secs = 0;
            },
            "entities.teams.changes_max_len = 0",
            "without bound",
        );
        assert_refused(
            |c| c.http.max_page_limit = 0,
            "http.max_page_limit = 0",
            "between",
        );
        assert_refused(
            |c| c.http.default_page_limit = 2000,
            "http.default_page_limit = 2000",
            "max_page_limit",
        );
        assert_refused(
            |c| c.http.max_wait_secs = 0,
            "http.max_wait_secs = 0",
            "between",
        );
        assert_refused(
            |c| c.http.sse_heartbeat_secs = 0,
            "http.sse_heartbeat_secs = 0",
            "between",
        );
        assert_refused(
            |c| c.http.sse_buffer_events = 1,
            "http.sse_buffer_events = 1",
            "at least",
        );
        assert_refused(
            |c| c.http.worker_threads = 10_000,
            "http.worker_threads = 10000",
            "at most 1024",
        );
    }

    #[test]
    fn views_and_auth() {
        assert_refused(
            |c| {
                c.entities
                    .get_mut("employees")
                    .unwrap()
                    .views
                    .insert("v".into(), vec!["_fc:etag".into()]);
            },
            "entities.employees.views.v",
            "reserved",
        );
        assert_refused(
            |c| {
                c.auth.anonymous.insert("teams".into(), "full".into());
            },
            "auth.anonymous",
            "open mode",
        );
        assert_refused(
            |c| c.auth.tokens = vec![token("a\nb", 'a')],
            "auth.tokens[0].name = \"a\\nb\"",
            "logs",
        );
        assert_refused(
            |c| c.auth.tokens = vec![token("a", 'a'), token("a", 'b')],
            "auth.tokens[1].name = \"a\"",
            "twice",
        );
        assert_refused(
            |c| c.auth.tokens = vec![token("a", 'a'), token("b", 'a')],
            "auth.tokens[1].sha256",
            "twice",
        );
        assert_refused(
            |c| c.auth.tokens = vec![token("a", 'A')],
            "auth.tokens[0].sha256",
            "lower-case hex",
        );
        assert_refused(
            |c| {
                let mut t = token("a", 'a');
                t.grants.insert("employees".into(), "nope".into());
                c.auth.tokens = vec![t];
            },
            "auth.tokens[0].grants.employees = \"nope\"",
            "no such view",
        );
        assert_refused(
            |c| {
                c.auth.tokens = vec![token("a", 'a')];
                c.auth.rate_per_sec = 10;
                c.auth.burst = 0;
            },
            "auth.burst = 0",
            "rate_per_sec",
        );
        assert_refused(
            |c| {
                let mut t = token("a", 'a');
                t.rate_per_sec = Some(5);
                t.burst = Some(0);
                c.auth.tokens = vec![t];
            },
            "auth.tokens[0].burst = 0",
            "rate",
        );
        // 0 keeps its documented meaning, unlimited.
        let mut c = Config::default();
        c.auth.tokens = vec![token("a", 'a')];
        c.auth.anonymous.insert("teams".into(), "full".into());
        c.validate().unwrap();
    }
}
