//! The records of one partition waiting to be folded: the last record of
//! each key, as the fold script will write it.

use super::fields::Fields;
use crate::decode::Decoded;
use crate::source::{Role, Source};
use foldcache_common::id::EntityName;
use foldcache_common::keys::{KeySpace, META_ETAG, META_MODIFIED_MS, META_SOURCE};
use foldcache_common::state::etag_of;
use std::collections::HashMap;

/// How a batch's records are folded (one topic, so one kind per batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Kind {
    /// Whole states replace their entity's hash.
    #[default]
    Replace,
    /// Parts of merged entities.
    Part,
    /// Identity links of a merged entity.
    Link,
}

/// What one key's last record asks for.
#[derive(Debug, Clone)]
pub(super) enum Op {
    /// Remove the entity (whole state), or the source's part of it.
    Remove,
    /// A whole state: every field, meta fields included.
    Replace(Fields),
    /// A source's part: its members (canonical JSON each), sorted by name.
    Part(Vec<(String, String)>),
    /// Fold the id's parts into this canonical id (`None`: unlinked).
    Link(Option<String>),
}

/// One pending write for one key.
#[derive(Debug, Clone)]
pub(super) struct Write {
    /// The entity id (for parts and links, as the source names it).
    pub(super) id: String,
    pub(super) offset: i64,
    pub(super) ttl_ms: u64,
    /// The record's time (ms): Last-Modified.
    pub(super) modified_ms: i64,
    pub(super) op: Op,
}

impl Write {
    /// Bytes it holds on the heap.
    fn heap_bytes(&self) -> usize {
        let op = match &self.op {
            Op::Remove | Op::Link(None) => 0,
            Op::Link(Some(target)) => target.capacity(),
            Op::Replace(fields) => fields.heap_bytes(),
            Op::Part(members) => members
                .iter()
                .map(|(n, v)| size_of::<(String, String)>() + n.capacity() + v.capacity())
                .sum(),
        };
        self.id.capacity() + op
    }
}

/// The records of one partition waiting to be folded.
#[derive(Debug, Clone)]
pub struct PartitionBatch {
    pub(super) topic: String,
    pub(super) partition: i32,
    /// The entity type the topic feeds (known once a record was pushed).
    pub(super) entity: Option<EntityName>,
    pub(super) kind: Kind,
    next_offset: i64,
    /// By Redis key (whole states) or by id (parts, links).
    pub(super) writes: HashMap<String, Write>,
}

impl PartitionBatch {
    /// An empty batch for one partition.
    pub fn new(topic: &str, partition: i32) -> Self {
        Self {
            topic: topic.to_owned(),
            partition,
            entity: None,
            kind: Kind::Replace,
            next_offset: 0,
            writes: HashMap::new(),
        }
    }

    /// Adds a decoded record at `offset` with record time `timestamp_ms`;
    /// returns about how many bytes the batch holds for it (a record that
    /// replaces one of the same key in the batch still counts in full).
    pub fn push(
        &mut self,
        keys: &KeySpace,
        generation: u64,
        source: &Source,
        offset: i64,
        timestamp_ms: i64,
        decoded: Decoded,
    ) -> usize {
        self.advance(offset);
        if self.entity.is_none() {
            self.entity = Some(source.entity.clone());
            self.kind = match source.role {
                Role::State => Kind::Replace,
                Role::Part { .. } => Kind::Part,
                Role::Links => Kind::Link,
            };
        }
        let id = decoded.id().as_str().to_owned();
        let key = match self.kind {
            Kind::Replace => keys.entity(generation, &source.entity, decoded.id()),
            Kind::Part | Kind::Link => id.clone(),
        };
        let op = match decoded {
            Decoded::Delete { .. } | Decoded::Filtered { .. } => Op::Remove,
            Decoded::Link { target, .. } => Op::Link(target.map(|t| t.as_str().to_owned())),
            Decoded::Upsert { state, .. } if self.kind == Kind::Part => {
                Op::Part(state.fields().to_vec())
            }
            Decoded::Upsert { state, .. } => {
                let etag = etag_of(&state.body());
                let modified = timestamp_ms.to_string();
                let source_tag = self.source_tag(offset);
                let meta = [
                    (META_ETAG, etag.as_str()),
                    (META_MODIFIED_MS, modified.as_str()),
                    (META_SOURCE, source_tag.as_str()),
                ];
                let pairs = state.fields().iter().map(|(n, v)| (n.as_str(), v.as_str()));
                let bytes = pairs
                    .clone()
                    .chain(meta)
                    .map(|(n, v)| n.len() + v.len())
                    .sum();
                let mut f = Fields::with_capacity(state.fields().len() + meta.len(), bytes);
                for (name, value) in pairs.chain(meta) {
                    f.push(name, value);
                }
                Op::Replace(f)
            }
        };
        let write = Write {
            id,
            offset,
            ttl_ms: source.ttl_ms,
            modified_ms: timestamp_ms,
            op,
        };
        let held = key.capacity() + write.heap_bytes() + size_of::<(u64, String, Write)>();
        self.writes.insert(key, write);
        held
    }

    /// `{topic}/{partition}/{offset}`: where a state came from (`_fc:src`).
    pub(super) fn source_tag(&self, offset: i64) -> String {
        format!("{}/{}/{offset}", self.topic, self.partition)
    }

    /// Moves the batch's end past `offset` without a write (a dead-lettered
    /// record still counts as consumed).
    pub fn advance(&mut self, offset: i64) {
        self.next_offset = self.next_offset.max(offset + 1);
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The offset after the last record in the batch.
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// Cache tags (`entity/id`) of the entities this batch replaces, as
    /// query-api's surrogate-key header names them. Parts and links name
    /// the entities they changed in the fold's outcome instead (only the
    /// script knows their canonical ids).
    pub fn tags(&self) -> Vec<String> {
        let Some(entity) = &self.entity else {
            return Vec::new();
        };
        if self.kind != Kind::Replace {
            return Vec::new();
        }
        self.writes
            .values()
            .map(|w| format!("{entity}/{}", w.id))
            .collect()
    }

    /// Distinct keys to write.
    pub fn len(&self) -> usize {
        self.writes.len()
    }

    /// Whether nothing is to be written (the offset may still advance).
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }
}
