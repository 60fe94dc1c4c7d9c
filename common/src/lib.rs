//! Shared pieces of foldcache's two binaries.
//!
//! - [`config`]: the typed, layered configuration (defaults, then a TOML file,
//!   then `FOLDCACHE__SECTION__KEY` environment variables).
//! - [`id`]: validated entity names and ids; nothing else ever becomes part of
//!   a Redis key.
//! - [`index`]: secondary indexes: field paths, index entries, values in keys.
//! - [`keys`]: the Redis key scheme and the reserved meta fields of an entity
//!   hash.
//! - [`state`]: an entity's state as foldcache stores it (one hash field per
//!   top-level JSON member), its canonical encoding and its strong validator.
//! - [`transform`]: per-source jq programs (`transform`, `id_from_key`),
//!   compiled once at start.
//! - [`schema`]: an entity's canonical JSON Schema, checked after `transform`.
//! - [`redis_client`]: the Redis client (TLS, ACL credentials) from `[redis]`.
//! - [`secret`]: a wrapper that keeps credentials out of logs and errors.
//! - [`runtime`]: wall-clock time and the shutdown signal.
//! - [`telemetry`]: logging set-up shared by both binaries.

pub mod config;
pub mod id;
pub mod index;
pub mod keys;
pub mod metrics_recorder;
pub mod redis_client;
pub mod runtime;
pub mod schema;
pub mod secret;
pub mod state;
pub mod telemetry;
pub mod transform;
