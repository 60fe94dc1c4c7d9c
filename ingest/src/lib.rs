//! foldcache ingest: folds compacted Kafka topics of HR entities into Redis.
//!
//! A tour, in the order a record travels:
//! - [`consumer`]: the consume loop, the rebalance callback that starts each
//!   partition at its offset stored in Redis, and caught-up detection.
//! - [`decode`]: key and value to [`decode::Decoded`] (upsert or tombstone) or
//!   to a [`decode::Poison`] reason.
//! - [`dead_letter`]: poison records to the dead-letter topic.
//! - [`fold`]: the atomic Redis script that writes a partition batch and its
//!   offset together, fenced so that nothing ever regresses.
//! - [`progress`]: per-partition position, caught-up and freshness.
//! - [`cache_state`]: the cache marker (epoch, generation, readiness,
//!   heartbeat) that tells ingest when Redis lost its data.
//! - [`ttl_refresh`]: keeps live entities from expiring while ingest runs.
//! - [`purge`]: the optional CDN purge hook.
//! - [`rebuild`]: on-demand rebuilds into a new generation, and the swap.
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`generate`], [`produce`], [`topics`]: the demo data set and tooling.

pub mod admin;
pub mod cache_state;
pub mod consumer;
pub mod dead_letter;
pub mod decode;
pub mod fold;
pub mod generate;
pub mod produce;
pub mod progress;
pub mod purge;
pub mod rebuild;
pub mod rebuild_cli;
pub mod scan;
pub mod source;
pub mod topics;
pub mod ttl_refresh;

pub use consumer::Ingest;
