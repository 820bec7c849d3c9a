//! Retrieval quality and fallback rate over event time: per-event nDCG@k, per-tenant tumbling and
//! hopping windows with per-partition watermarks, aggregated by the pipeline's DataFusion SQL,
//! published to `metrics.v1` and stored as Parquet tables (window results, and the event history
//! an analyst reruns the same SQL over). Retrievals without judgments are scored with the ones a
//! human labelled for the same query (the `labels` table), when there are some.
//!
//! Owns the windows stage end to end (its run loop included); it reads the wire types of
//! `aion-events` and the delivery contract of `aion-kafka`, and knows no other stage.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod aggregate;
mod config;
mod labels;
mod operator;
mod stage;
mod table;

pub use aggregate::{input_schema, Aggregator, GroupResult, INPUT_TABLE};
pub use config::{
    parse_duration, WindowSpec, WindowsConfig, DEFAULT_PIPELINE, DEFAULT_SQL, WINDOW_EVENTS_VIEW,
};
pub use labels::{LabelledJudgments, LABELS_TABLE};
pub use operator::{
    Admission, ClosedGroup, ClosedWindow, Closing, Measure, Micros, Observation, Origin,
    ReleasedPane, WindowOperator,
};
pub use stage::{
    observation, observation_with, run, StageOptions, Stats, HISTORY_TABLE, LATE_WINDOWS_HEADER,
    METRICS_TABLE,
};

/// Errors of the windows stage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid pipeline {path}: {message}")]
    Pipeline { path: String, message: String },
    #[error("aggregate SQL: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error("arrow: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error("parquet: {0}")]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),
    #[error("aggregate SQL result: {0}")]
    Sql(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Kafka(#[from] aion_kafka::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<aion_events::durable::FileError> for Error {
    fn from(e: aion_events::durable::FileError) -> Self {
        Error::Io {
            path: e.path.display().to_string(),
            source: e.source,
        }
    }
}
