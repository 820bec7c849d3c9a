//! Retrieval quality and fallback rate over event time: per-event nDCG@k, per-tenant tumbling and
//! hopping windows with per-partition watermarks, aggregated by the pipeline's DataFusion SQL,
//! published to `metrics.v1` and stored as a Parquet table.
//!
//! Owns the windows stage end to end (its run loop included); it reads the wire types of
//! `aion-events` and the delivery contract of `aion-kafka`, and knows no other stage.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod config;
mod ndcg;
mod operator;

pub use config::{parse_duration, WindowSpec, WindowsConfig, DEFAULT_PIPELINE, DEFAULT_SQL};
pub use ndcg::{ndcg, Gain};
pub use operator::{
    Admission, ClosedGroup, ClosedWindow, Closing, Measure, Micros, Observation, Origin,
    WindowOperator,
};

/// Errors of the windows stage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid pipeline {path}: {message}")]
    Pipeline { path: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
