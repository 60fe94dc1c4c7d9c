//! foldcache ingest: folds compacted Kafka topics of HR entities into Redis.
//!
//! A tour, in the order a record travels:
//! - [`supervisor`]: the running [`Ingest`]: which generations run, what
//!   happens when Redis loses its data or the cache goes back in time.
//! - [`consumer`]: one generation's Kafka consumer: the thread that polls
//!   its main queue, and one task per assigned partition.
//! - [`rebalance`]: librdkafka's callbacks: each assigned partition starts at
//!   its offset stored in Redis on its own split queue; a revoked one is
//!   drained before it is released.
//! - [`partition`]: one partition's pipeline: queue → decode → batch → dead
//!   letters → fold → offset. A partition that cannot progress stalls only
//!   itself.
//! - [`decode`]: key and value to [`decode::Decoded`] (upsert or tombstone) or
//!   to a [`decode::Poison`] reason.
//! - [`dead_letter`]: poison records (or an envelope, if too big) to the
//!   dead-letter topic; the start-up check that the topic exists.
//! - [`dead_letter_tools`], [`dead_letter_cli`]: reading the dead-letter
//!   topic (never a value) and re-driving letters after the upstream fix.
//! - [`fold`]: the atomic Redis script that writes a partition batch and its
//!   offset together, fenced so that nothing ever regresses.
//! - [`progress`]: per-partition position, caught-up, freshness and the
//!   check that a partition's log did not go back in time.
//! - [`heartbeat`], [`readiness`]: the jobs that are not per record: the
//!   live generation's heartbeat (and the check that Redis did not go back
//!   in time), caught-up bookkeeping, readiness and the rebuild swap.
//! - [`cache_state`]: the cache marker (epoch, generations, readiness) that
//!   tells ingest when Redis lost its data, and going cold.
//! - [`retry`]: capped, jittered backoff and stall reporting.
//! - [`ttl_refresh`]: keeps live entities from expiring while ingest runs.
//! - [`purge`]: the optional CDN purge hook.
//! - [`rebuild`]: on-demand rebuilds into a new generation, and the swap.
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz`, the admin actions.
//! - [`console`]: the operator's web console on the admin port.
//! - [`cluster`]: the deployment as Redis shows it (marker, instances,
//!   freshness), for the console and as gauges for alerts.
//! - [`generate`], [`produce`], [`topics`], [`kafka`]: the demo data set and
//!   tooling.

pub mod admin;
pub mod budget;
pub mod cache_state;
pub mod cluster;
pub mod console;
pub mod consumer;
pub mod dead_letter;
pub mod dead_letter_cli;
pub mod dead_letter_tools;
pub mod decode;
pub mod fold;
pub mod generate;
pub mod generate_merger;
pub mod heartbeat;
pub mod kafka;
pub mod partition;
pub mod produce;
pub mod progress;
pub mod purge;
pub mod readiness;
pub mod rebalance;
pub mod rebuild;
pub mod rebuild_cli;
pub mod retry;
pub mod scan;
pub mod source;
pub mod supervisor;
pub mod topics;
pub mod ttl_refresh;

pub use supervisor::Ingest;
