//! foldcache's configuration, shared by `ingest` and `query-api`.
//!
//! Layers, later ones winning: built-in defaults ([`Config::default`]), then a
//! TOML file (`--config PATH` or `FOLDCACHE_CONFIG`), then environment
//! variables named `FOLDCACHE__SECTION__KEY` (for example
//! `FOLDCACHE__REDIS__URL`, `FOLDCACHE__ENTITIES__EMPLOYEES__MAX_AGE_SECS`).
//! Tables merge key by key; arrays (`sources`) replace the default whole.
//! Unknown keys are an error.

use crate::id::EntityName;
use crate::secret::Secret;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use thiserror::Error;

mod validate;

/// A configuration that could not be loaded or does not make sense.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file is missing or a value has the wrong shape or an unknown key.
    #[error("configuration error")]
    Load(#[from] Box<figment::Error>),
    /// The values parse but contradict each other.
    #[error("configuration: {0}")]
    Invalid(String),
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the cache lives.
    pub redis: RedisConfig,
    /// The brokers and the consumer group.
    pub kafka: KafkaConfig,
    /// Ingest's batching, limits and endpoints.
    pub ingest: IngestConfig,
    /// query-api's listeners.
    pub http: HttpConfig,
    /// Logging.
    pub log: LogConfig,
    /// Which topic feeds which entity.
    pub sources: Vec<SourceConfig>,
    /// Per-entity settings, by entity name.
    pub entities: BTreeMap<String, EntityConfig>,
    /// Who may read what (query-api) and who may administer (ingest).
    pub auth: AuthConfig,
}

/// Callers, their grants, and what anonymous callers get.
///
/// Open mode: with no `tokens` at all, every entity is served to anyone
/// with its `full` view (and both binaries log a warning at start). Once a
/// token exists, a request without one gets only what `anonymous` grants,
/// else 401.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Entity -> view served to requests without a token (only when tokens
    /// are configured; see open mode). Such responses keep the entity's
    /// `cache_control` (typically `public`).
    pub anonymous: BTreeMap<String, String>,
    /// `false` (default): responses to token holders carry
    /// `Cache-Control: private`, so no shared cache stores them. `true`:
    /// they keep the entity's `cache_control` and rely on
    /// `Vary: Authorization`; only for a shared cache that keys on the
    /// `Authorization` header.
    pub shared_cache_keys_on_authorization: bool,
    /// Default request rate per token, per second (`0`: unlimited); a
    /// token's own `rate_per_sec` wins.
    pub rate_per_sec: u32,
    /// Requests a token may send at once above its rate.
    pub burst: u32,
    /// The API keys.
    pub tokens: Vec<TokenConfig>,
}

/// One API key. Only its SHA-256 is configured (`ingest hash-token` prints
/// it); the token itself never appears in config, logs or errors.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it: appears in logs, metrics and the audit log.
    pub name: String,
    /// Lower-case hex SHA-256 of the bearer token.
    pub sha256: String,
    /// Entity -> view this token may read. An entity not listed: 403.
    #[serde(default)]
    pub grants: BTreeMap<String, String>,
    /// May call admin endpoints (`POST /admin/rebuild`).
    #[serde(default)]
    pub admin: bool,
    /// Requests per second (`0`: unlimited); unset: `auth.rate_per_sec`.
    #[serde(default)]
    pub rate_per_sec: Option<u32>,
    /// Burst above the rate; unset: `auth.burst`.
    #[serde(default)]
    pub burst: Option<u32>,
}

/// The view every entity has: all fields.
pub const FULL_VIEW: &str = "full";

/// Redis connection and key space.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://...` for TLS.
    /// May carry an ACL user and password, hence a secret: give it through
    /// `FOLDCACHE__REDIS__URL` or `url = { file = "..." }`; never printed.
    pub url: Secret<String>,
    /// PEM CA certificate(s) to trust for `rediss://` (default: the
    /// system's roots).
    #[serde(default)]
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate for mutual TLS (with `tls_key_file`).
    #[serde(default)]
    pub tls_cert_file: Option<std::path::PathBuf>,
    /// PEM private key of `tls_cert_file`.
    #[serde(default)]
    pub tls_key_file: Option<std::path::PathBuf>,
    /// Prefix of every key foldcache writes (see [`crate::keys`]).
    pub key_prefix: String,
}

/// Kafka (or any Kafka-protocol broker).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Consumer group shared by all ingest instances of one deployment.
    pub group_id: String,
    /// Topic that receives poison records, with the reason in headers.
    pub dead_letter_topic: String,
    /// Extra librdkafka properties (`security.protocol`, `sasl.mechanism`,
    /// ...), applied to every client. Values may be credentials: never logged.
    pub client: BTreeMap<String, Secret<String>>,
    /// Extra librdkafka properties for ingest's consumers only (the
    /// generation consumers, the dead-letter readers), over `client`:
    /// consumer properties such as `fetch.max.bytes` that librdkafka would
    /// warn about in a producer. Values never logged.
    #[serde(default)]
    pub consumer: BTreeMap<String, Secret<String>>,
    /// Extra librdkafka properties for ingest's producers only (dead
    /// letters, re-drives, `ingest generate`), over `client`. Values never
    /// logged.
    #[serde(default)]
    pub producer: BTreeMap<String, Secret<String>>,
    /// Whether ingest creates the dead-letter topic at start when it is
    /// missing (needs the CreateTopics permission). If false, or if creating
    /// it fails, ingest refuses to start and names the topic.
    pub dead_letter_create: bool,
    /// Partitions of a dead-letter topic that ingest creates.
    pub dead_letter_partitions: i32,
    /// Replication factor of a dead-letter topic that ingest creates; `-1`
    /// takes the broker's `default.replication.factor`.
    pub dead_letter_replication_factor: i32,
    /// A dead letter (key + value + headers) larger than this is replaced by
    /// an envelope that fits (reason, origin, sizes, SHA-256 and the first
    /// bytes of key and value). Keep it below the dead-letter producer's
    /// `message.max.bytes` and the topic's `max.message.bytes`.
    pub dead_letter_max_bytes: usize,
}

impl KafkaConfig {
    /// Every extra librdkafka property with the section that holds it
    /// (`client`, `consumer`, `producer`).
    pub fn properties(&self) -> impl Iterator<Item = (&'static str, &String, &Secret<String>)> {
        [
            ("client", &self.client),
            ("consumer", &self.consumer),
            ("producer", &self.producer),
        ]
        .into_iter()
        .flat_map(|(section, properties)| {
            properties
                .iter()
                .map(move |(name, value)| (section, name, value))
        })
    }
}

/// Ingest's tuning knobs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// A batch is written when it holds this many records...
    pub batch_max_events: usize,
    /// ...or when its first record has waited this long.
    pub batch_linger_ms: u64,
    /// Bytes of records read but not yet folded, held by every partition
    /// of the process together (batches being filled and being written).
    pub unfolded_max_bytes: usize,
    /// Records with a larger value are dead-lettered.
    pub max_value_bytes: usize,
    /// Prometheus metrics and health endpoints (`/metrics`, `/healthz`,
    /// `/readyz`).
    pub admin_listen: SocketAddr,
    /// How often ingest refreshes its heartbeat in Redis.
    pub heartbeat_interval_ms: u64,
    /// Where a newly assigned partition starts reading.
    pub resume: ResumeMode,
    /// Optional CDN purge hook called after entities change.
    pub purge: PurgeConfig,
    /// After a rebuild's swap, the old generation keeps being folded this
    /// long (query-api instances move to the new one within one
    /// `http.state_poll_ms`), then its keys are removed.
    pub rebuild_retire_grace_ms: u64,
    /// Bearer token of `POST /admin/rebuild` on `admin_listen`. Unset: the
    /// endpoint refuses every request (use the `ingest rebuild` CLI).
    pub admin_token: Option<Secret<String>>,
    /// Objects with more top-level members than this are dead-lettered
    /// (`too_many_members`); 0 folds objects of any width.
    pub max_members: usize,
    /// On SIGTERM, how long partitions may take to fold their last batch
    /// and store its offsets before ingest exits anyway (what was not
    /// stored is folded again by the next owner: nothing is lost).
    pub drain_timeout_ms: u64,
    /// Longest pause between two retries of a transient failure (Redis or
    /// broker unreachable); retries back off exponentially with jitter.
    pub retry_max_backoff_ms: u64,
    /// Kafka consumers per generation in this process, members of the
    /// same group that share out its partitions: each keeps a fetch in
    /// flight, so a replay reads that many times in parallel from a
    /// broker that leads every partition (one consumer's fetches to one
    /// broker are serial).
    pub consumers: usize,
}

/// A purge hook: after each fold, ingest sends `method url` with the changed
/// entities' cache tags (`entity/id`, as query-api's surrogate-key header
/// names them) in `header`, space-separated, at most 100 per request. Best
/// effort: failures are logged and counted, never block the fold.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeConfig {
    /// `http://varnish:6081/` and the like; empty disables the hook.
    pub url: String,
    /// HTTP method (`PURGE` for Varnish xkey, `POST` for most CDNs' APIs).
    pub method: String,
    /// Header carrying the tags (`xkey-purge`, `Surrogate-Key`, ...).
    pub header: String,
}

/// Where a newly assigned partition starts reading. Either way, records
/// below the offset stored in Redis are skipped, so the result is the same;
/// only the work differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResumeMode {
    /// Read the partition from its beginning and skip, inside ingest, what
    /// Redis already holds. Correct on every broker, including Tansu 0.6.0,
    /// whose Fetch returns only batches that *start* at or after the
    /// requested offset (so a fetch from inside a batch silently skips the
    /// rest of it). Costs one read of the partition per assignment.
    Replay,
    /// Fetch from the stored offset. Use with Apache Kafka and Redpanda.
    Seek,
}

/// query-api's listeners.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// The public API.
    pub listen: SocketAddr,
    /// Prometheus metrics, on its own port.
    pub metrics_listen: SocketAddr,
    /// How often query-api re-reads the cache state (live generation,
    /// readiness).
    pub state_poll_ms: u64,
    /// `Retry-After` seconds on 503 while the cache is not ready.
    pub retry_after_secs: u64,
    /// gzip, br and zstd response compression (each coding gets its own
    /// ETag, see docs/HTTP.md).
    pub compression: bool,
    /// Header naming the cache tags of a response for CDN purges:
    /// `Surrogate-Key` (Fastly, Varnish), `xkey` (Varnish xkey),
    /// `Cache-Tag` (Cloudflare, comma-separated); empty: none.
    pub surrogate_key_header: String,
    /// Most ids in one batch lookup.
    pub max_batch_ids: usize,
    /// Entities (per view) held in query-api's in-process cache, kept exact
    /// by Redis client-side-caching invalidations; `0` disables it.
    pub local_cache_entries: u64,
    /// Serve HTTPS on `listen` with this certificate (unset: plain HTTP).
    #[serde(default)]
    pub tls: Option<HttpTlsConfig>,
    /// Items per collection page and per change page when the request
    /// gives no `limit`.
    #[serde(default = "default_page_limit")]
    pub default_page_limit: usize,
    /// Most items a request may ask for with `limit` (collections, filters,
    /// change pages).
    #[serde(default = "max_page_limit")]
    pub max_page_limit: usize,
    /// Longest `Prefer: wait=N` honoured (long-polls of an entity or of a
    /// change page); a longer wait is cut to this (and
    /// `Preference-Applied` says so).
    #[serde(default = "max_wait_secs")]
    pub max_wait_secs: u64,
    /// A Server-Sent Events stream sends a comment line after this many
    /// idle seconds, so proxies keep it open and clients notice a dead one.
    #[serde(default = "sse_heartbeat_secs")]
    pub sse_heartbeat_secs: u64,
    /// Change events queued for one SSE connection at most; a client that
    /// falls this far behind the live feed is disconnected (it resumes with
    /// `Last-Event-ID`), so a slow reader never grows query-api's memory.
    #[serde(default = "sse_buffer_events")]
    pub sse_buffer_events: usize,
    /// Threads that serve requests; `0`: one per CPU core. Fewer than the
    /// cores leaves the rest to other processes on the same machine (a
    /// sidecar, a load generator): the runtime's threads then do not fight
    /// them for the cores.
    #[serde(default)]
    pub worker_threads: usize,
}

const fn default_page_limit() -> usize {
    100
}
const fn max_page_limit() -> usize {
    1000
}
const fn max_wait_secs() -> u64 {
    60
}
const fn sse_heartbeat_secs() -> u64 {
    15
}
const fn sse_buffer_events() -> usize {
    1024
}
const fn changes_max_len() -> u64 {
    100_000
}
const fn changes_max_age_secs() -> u64 {
    7 * 24 * 3600
}

/// query-api's server certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: std::path::PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: std::path::PathBuf,
}

/// Log output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `tracing` filter directives, e.g. `info,foldcache_ingest=debug`.
    /// `RUST_LOG` wins when set.
    pub filter: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// One topic folded into one entity.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// The compacted topic.
    pub topic: String,
    /// The entity it feeds (a key of `entities`).
    pub entity: String,
    /// How record values are encoded.
    #[serde(default)]
    pub format: ValueFormat,
    /// Prepended to every record key to form the entity id, so that two
    /// sources feeding one entity never collide (`acme.` + `E1`).
    #[serde(default)]
    pub id_prefix: String,
    /// A jq program from the record's state (the value, or a Debezium
    /// event's `after`) to the canonical state; `$id` is the record's
    /// entity id. No output filters the record out (see
    /// [`crate::transform`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<String>,
    /// A jq program from the record key (a string, or a Debezium key's
    /// JSON) to the source id, before `id_prefix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_from_key: Option<String>,
    /// Only with `entities.<entity>.merge`: the top-level members this
    /// source contributes (the others in its states are ignored); unset:
    /// every member of its states.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<String>>,
    /// Only with `entities.<entity>.merge`: when two sources hold the same
    /// member of one entity, the higher priority wins; on equal priorities
    /// the source listed first in `sources` wins.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    /// A JSON Schema this source's states must satisfy after `transform`,
    /// instead of `entities.<entity>.schema_file` (for a source that
    /// contributes only some members of a merged entity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_file: Option<PathBuf>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// Record value encodings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueFormat {
    /// The value is the entity's full state as a JSON object; null deletes.
    #[default]
    Json,
    /// A Debezium change event: `after` is the state, `op: "d"` deletes.
    Debezium,
}

/// Per-entity settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntityConfig {
    /// TTL of each entity hash, set with every write and refreshed by ingest
    /// every `ttl_secs / 4` while it runs, so live entities never expire
    /// while the pipeline is healthy. Must be at least twice
    /// `freshness_secs`.
    pub ttl_secs: u64,
    /// Freshness bound: when the pipeline has not confirmed for this long
    /// that every produced record is folded (ingest down or stuck),
    /// query-api answers 503 instead of an answer older than the bound.
    /// Required (at least 1): entities have TTLs, so without a bound a
    /// stopped ingest would let them expire into false 404s.
    pub freshness_secs: u64,
    /// `Cache-Control` of a 200/304 for this entity.
    pub cache_control: CacheControlConfig,
    /// `max-age` (and `s-maxage`) of a 404 for this entity.
    pub not_found_max_age_secs: u64,
    /// Named field projections, for example
    /// `directory = ["id", "name", "email", "team_id", "title"]`; `["*"]`
    /// is every field. Every entity also has the view `full` (all fields).
    #[serde(default)]
    pub views: BTreeMap<String, Vec<String>>,
    /// Secondary indexes by name (the name is the collection filter:
    /// `GET /v1/employees?team_id=T1`), maintained by the fold in the same
    /// atomic step as the data.
    #[serde(default)]
    pub indexes: BTreeMap<String, IndexConfig>,
    /// The change log keeps about this many entries (`XADD ... MAXLEN ~`);
    /// `0`: no length bound. A change cursor older than what is kept
    /// answers 410 (resync from the collection).
    #[serde(default = "changes_max_len")]
    pub changes_max_len: u64,
    /// The change log keeps entries for about this many seconds (`XTRIM
    /// MINID ~`); `0`: no time bound.
    #[serde(default = "changes_max_age_secs")]
    pub changes_max_age_secs: u64,
    /// A JSON Schema file every state of this entity must satisfy after its
    /// source's `transform` (see [`crate::schema`]); a state that fails it
    /// is dead-lettered with the failing path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_file: Option<PathBuf>,
    /// Several sources, one entity: each source's record is that source's
    /// *part* of the entity (its members; a tombstone removes the part
    /// only), and the served entity is the union of its parts, the
    /// higher-priority source winning a member two parts hold. The entity
    /// is removed when no source holds it. See docs/ARCHITECTURE.md,
    /// *Merged entities*.
    #[serde(default, skip_serializing_if = "is_false")]
    pub merge: bool,
    /// With `merge`: a compacted topic of identity links, key = an id as
    /// a source's records name it (after `id_prefix`), value = the
    /// canonical id its parts are folded into (a tombstone unlinks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub links_topic: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One secondary index of an entity.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexConfig {
    /// The field path whose values are indexed: `team_id`, `address.city`,
    /// `grants[].system` (`[]` walks an array). See [`crate::index`].
    pub field: String,
    /// One id per value is expected (`employees.email`): a second holder is
    /// counted (`foldcache_ingest_unique_conflicts_total`) but still served.
    #[serde(default)]
    pub unique: bool,
}

impl EntityConfig {
    /// The indexes, resolved (a validated config has only valid paths).
    pub fn index_specs(&self) -> Vec<crate::index::IndexSpec> {
        self.indexes
            .iter()
            .filter_map(|(name, ix)| {
                Some(crate::index::IndexSpec {
                    name: name.clone(),
                    path: crate::index::FieldPath::parse(&ix.field).ok()?,
                    unique: ix.unique,
                })
            })
            .collect()
    }
}

/// `Cache-Control` directives of one entity's responses.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheControlConfig {
    /// Who may store the response.
    pub visibility: Visibility,
    /// `max-age`.
    pub max_age_secs: u64,
    /// `s-maxage` for shared caches (public only).
    pub s_maxage_secs: Option<u64>,
    /// `stale-while-revalidate`.
    pub stale_while_revalidate_secs: Option<u64>,
    /// `stale-if-error`: lets caches serve their copy while foldcache answers
    /// 503 (for example during a rebuild).
    pub stale_if_error_secs: Option<u64>,
}

/// Cache audience.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Visibility {
    /// Any cache, including CDNs.
    Public,
    /// Only the caller's own cache.
    Private,
    /// Nothing stores it.
    NoStore,
}

impl Default for Config {
    fn default() -> Self {
        let entity = |max_age, swr, sie, freshness| EntityConfig {
            ttl_secs: 7 * 24 * 3600,
            freshness_secs: freshness,
            cache_control: CacheControlConfig {
                visibility: Visibility::Public,
                max_age_secs: max_age,
                s_maxage_secs: None,
                stale_while_revalidate_secs: Some(swr),
                stale_if_error_secs: Some(sie),
            },
            not_found_max_age_secs: 5,
            views: BTreeMap::new(),
            indexes: BTreeMap::new(),
            changes_max_len: changes_max_len(),
            changes_max_age_secs: changes_max_age_secs(),
            schema_file: None,
            merge: false,
            links_topic: None,
        };
        let index = |field: &str, unique| IndexConfig {
            field: field.into(),
            unique,
        };
        let mut employees = entity(60, 30, 86400, 3600);
        employees.indexes = BTreeMap::from([
            ("email".into(), index("email", true)),
            ("team_id".into(), index("team_id", false)),
            ("manager_id".into(), index("manager_id", false)),
        ]);
        let mut teams = entity(300, 60, 86400, 3600);
        teams.indexes = BTreeMap::from([("parent_id".into(), index("parent_id", false))]);
        let mut permissions = entity(30, 15, 86400, 600);
        permissions.indexes = BTreeMap::from([
            ("employee_id".into(), index("employee_id", false)),
            ("system".into(), index("grants[].system", false)),
        ]);
        let source = |topic: &str, entity: &str| SourceConfig {
            topic: topic.into(),
            entity: entity.into(),
            format: ValueFormat::Json,
            id_prefix: String::new(),
            transform: None,
            id_from_key: None,
            fields: None,
            priority: 0,
            schema_file: None,
        };
        Self {
            redis: RedisConfig {
                url: Secret::new("redis://127.0.0.1:6379".into()),
                tls_ca_file: None,
                tls_cert_file: None,
                tls_key_file: None,
                key_prefix: "fc".into(),
            },
            kafka: KafkaConfig {
                brokers: "127.0.0.1:9092".into(),
                group_id: "foldcache-ingest".into(),
                dead_letter_topic: "foldcache.dead-letter".into(),
                client: BTreeMap::new(),
                consumer: BTreeMap::new(),
                producer: BTreeMap::new(),
                dead_letter_create: true,
                dead_letter_partitions: 1,
                dead_letter_replication_factor: -1,
                dead_letter_max_bytes: 900_000,
            },
            ingest: IngestConfig {
                batch_max_events: 500,
                batch_linger_ms: 5,
                unfolded_max_bytes: 32 << 20,
                max_value_bytes: 1 << 20,
                admin_listen: ([127, 0, 0, 1], 9600).into(),
                heartbeat_interval_ms: 1000,
                resume: ResumeMode::Replay,
                purge: PurgeConfig {
                    url: String::new(),
                    method: "PURGE".into(),
                    header: "xkey-purge".into(),
                },
                rebuild_retire_grace_ms: 5000,
                admin_token: None,
                max_members: 0,
                drain_timeout_ms: 10_000,
                retry_max_backoff_ms: 5_000,
                consumers: 1,
            },
            http: HttpConfig {
                listen: ([127, 0, 0, 1], 8080).into(),
                metrics_listen: ([127, 0, 0, 1], 9601).into(),
                state_poll_ms: 250,
                retry_after_secs: 5,
                compression: true,
                surrogate_key_header: "Surrogate-Key".into(),
                max_batch_ids: 100,
                local_cache_entries: 100_000,
                tls: None,
                default_page_limit: default_page_limit(),
                max_page_limit: max_page_limit(),
                max_wait_secs: max_wait_secs(),
                sse_heartbeat_secs: sse_heartbeat_secs(),
                sse_buffer_events: sse_buffer_events(),
                worker_threads: 0,
            },
            log: LogConfig {
                filter: "info".into(),
                format: LogFormat::Text,
            },
            sources: vec![
                source("hr.employees", "employees"),
                source("hr.teams", "teams"),
                source("hr.permissions", "permissions"),
            ],
            entities: BTreeMap::from([
                ("employees".into(), employees),
                ("teams".into(), teams),
                ("permissions".into(), permissions),
            ]),
            auth: AuthConfig {
                anonymous: BTreeMap::new(),
                shared_cache_keys_on_authorization: false,
                rate_per_sec: 0,
                burst: 50,
                tokens: Vec::new(),
            },
        }
    }
}

impl Config {
    /// Loads defaults, then `file` (which must exist if given), then the
    /// `FOLDCACHE__*` environment, and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::Invalid(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let config: Config = figment
            .merge(Env::prefixed("FOLDCACHE__").split("__"))
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: every value that would break a promise
    /// (see [`validate`] for the rules). The error is one line naming the
    /// key, its value and why.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate::check(self)
    }

    /// Open mode: no tokens configured, everything is served to anyone.
    pub fn auth_is_open(&self) -> bool {
        self.auth.tokens.is_empty()
    }

    /// The entity config behind a validated name, if configured.
    pub fn entity(&self, name: &EntityName) -> Option<&EntityConfig> {
        self.entities.get(name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's own signature
    fn file_then_env_override_defaults() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            f,
            "[redis]\nkey_prefix = \"t1\"\n[entities.employees.cache_control]\nmax_age_secs = 7"
        )
        .unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("FOLDCACHE__KAFKA__BROKERS", "10.0.0.1:9092");
            let c = Config::load(Some(f.path())).unwrap();
            assert_eq!(c.redis.key_prefix, "t1");
            assert_eq!(c.kafka.brokers, "10.0.0.1:9092");
            assert_eq!(c.entities["employees"].cache_control.max_age_secs, 7);
            // untouched defaults survive the merge
            assert_eq!(c.entities["employees"].ttl_secs, 7 * 24 * 3600);
            assert!(c.entities.contains_key("teams"));
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_errors() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "[redis]\nurll = \"x\"").unwrap();
        let err = Config::load(Some(f.path())).unwrap_err();
        let cause = std::error::Error::source(&err)
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(cause.contains("urll"), "{err}: {cause}");
    }

    #[test]
    fn a_source_must_name_a_configured_entity() {
        let mut c = Config::default();
        c.sources[0].entity = "nope".into();
        assert!(c.validate().is_err());
    }

    #[test]
    fn missing_file_is_an_error() {
        assert!(Config::load(Some(Path::new("/nonexistent/foldcache.toml"))).is_err());
    }
}
