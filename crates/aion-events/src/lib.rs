//! Event types of every AION Stream topic, mirroring the JSON Schemas under `schemas/`, and the one
//! decoder every stage uses: bytes → typed, validated event, or a [`Reject`] naming the field path and
//! what is wrong with it (the reason a dead-letter record carries).
//!
//! This crate owns the wire contract. It knows nothing of Kafka or models; of storage, only what
//! every stage shares: the shard manifest's format, how a file is replaced durably ([`durable`])
//! and what a state directory holds ([`layout`]).

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod decode;
pub mod durable;
mod enriched;
mod event;
mod hash;
mod label;
pub mod layout;
mod manifest;
mod metrics;
pub mod ndcg;
mod rebuild;
mod schema_files;
mod status;
pub mod telemetry;
pub mod topics;
mod trigger;

pub use decode::{decode, DecodeLimits, Reject};
pub use enriched::{EnrichedRetrieval, Mention, Term, NAME_PARTICLES};
pub use event::{
    validate_tenant_id, AnswerEvent, Judgment, Relevance, RetrievalEvent, RetrievalResult, Schema,
    MAX_RELEVANCE,
};
pub use hash::fnv1a;
pub use label::LabelEvent;
pub use manifest::{
    committed_files, manifest_lines, parse_manifest, tenant_shards, ShardEntry, SHARD_MANIFEST,
};
pub use metrics::WindowMetrics;
pub use rebuild::{IndexRebuild, RebuildReason};
pub use schema_files::{SchemaFile, SCHEMA_FILES};
pub use status::{ControlAction, JobState, TrainControl, TrainStatus};
pub use trigger::{
    shard_path_of_tenant, Recipe, Thresholds, TrainTrigger, TriggerReason, MAX_TRIGGER_ID_BYTES,
};
