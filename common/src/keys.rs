//! The Redis key scheme. Every key foldcache touches is built here.
//!
//! ```text
//! {prefix}:state                      hash  cache marker and live generation (see StateField)
//! {prefix}:g{gen}:offsets             hash  "{topic}/{partition}" -> next offset to fold
//! {prefix}:g{gen}:caught_up           hash  "{topic}/{partition}" -> offset at which the
//!                                           partition was first seen at its end
//! {prefix}:g{gen}:{entity}:{id}       hash  one entity: its top-level JSON members
//!                                           plus the reserved `_fc:` meta fields
//! ```
//!
//! Ids and entity names are validated ([`crate::id`]) so they cannot contain
//! `:`, braces or glob characters: no id can address another key.

use crate::id::{EntityId, EntityName};

/// Prefix of the reserved meta fields inside an entity hash. A source object
/// with a top-level member starting with this prefix is refused as poison.
pub const META_PREFIX: &str = "_fc:";
/// Meta field: the strong validator (base64url SHA-256 of the canonical body).
pub const META_ETAG: &str = "_fc:etag";
/// Meta field: the Kafka record timestamp in milliseconds since the epoch,
/// served as `Last-Modified`.
pub const META_MODIFIED_MS: &str = "_fc:mod";
/// Meta field: where the state came from, `{topic}/{partition}/{offset}`.
pub const META_SOURCE: &str = "_fc:src";

/// Fields of the `{prefix}:state` hash.
pub mod state_field {
    /// Random id written when foldcache first initialises this Redis. Its
    /// absence means Redis lost (or never had) foldcache's data.
    pub const EPOCH: &str = "epoch";
    /// The generation readers use (a decimal number).
    pub const LIVE_GEN: &str = "live_gen";
    /// `1` once the live generation has caught up with the log.
    pub const READY: &str = "ready";
    /// Milliseconds since the epoch of ingest's last heartbeat.
    pub const HEARTBEAT_MS: &str = "heartbeat_ms";
}

/// Builds keys under one prefix.
#[derive(Debug, Clone)]
pub struct KeySpace {
    prefix: String,
}

impl KeySpace {
    /// A key space under `prefix` (for example `fc`).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The cache marker and live-generation hash.
    pub fn state(&self) -> String {
        format!("{}:state", self.prefix)
    }

    /// Next offset to fold per `{topic}/{partition}`, for one generation.
    pub fn offsets(&self, generation: u64) -> String {
        format!("{}:g{generation}:offsets", self.prefix)
    }

    /// Partitions that reached their end at least once, for one generation.
    pub fn caught_up(&self, generation: u64) -> String {
        format!("{}:g{generation}:caught_up", self.prefix)
    }

    /// One entity's hash.
    pub fn entity(&self, generation: u64, entity: &EntityName, id: &EntityId) -> String {
        format!("{}:g{generation}:{entity}:{id}", self.prefix)
    }

    /// A glob that matches every key of one generation (for SCAN-based
    /// clean-up of a retired generation).
    pub fn generation_pattern(&self, generation: u64) -> String {
        format!("{}:g{generation}:*", self.prefix)
    }
}

/// The field name under which a partition's offset is kept.
pub fn partition_field(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_layout() {
        let ks = KeySpace::new("fc");
        let e = EntityName::parse("employees").unwrap();
        let id = EntityId::parse("E1").unwrap();
        assert_eq!(ks.entity(3, &e, &id), "fc:g3:employees:E1");
        assert_eq!(ks.offsets(3), "fc:g3:offsets");
        assert_eq!(ks.state(), "fc:state");
        assert_eq!(partition_field("hr.teams", 2), "hr.teams/2");
    }
}
