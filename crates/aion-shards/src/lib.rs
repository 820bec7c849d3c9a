//! Training shards: answer events joined with their retrieval's nDCG and entities, PII redacted,
//! as Hive-partitioned Parquet files with a manifest the trigger and trainer reference; and,
//! written the same way, the entity mentions of enriched retrieval events and the human labels
//! of `labels.v1`. Owns those tables; reads the wire types of `aion-events` and the delivery
//! contract of `aion-kafka`; knows no other stage.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod compact;
mod entities;
mod join;
mod labels;
pub mod redact;
mod remote;
mod stage;
mod writer;

pub use aion_events::ShardEntry;
pub use compact::{compact, CompactPolicy, Compacted};
pub use entities::EntityRow;
pub use join::{Joined, Joiner, RetrievalSignals, TrainingRow};
pub use labels::LabelRow;
pub use remote::Remote;
pub use stage::{run, JoinOptions, ShardOptions, Stats};
pub use writer::{read_manifest, RollPolicy, ShardRecord, ShardWriter, MANIFEST};

/// Errors of the shard writer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("arrow: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error("parquet: {0}")]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),
    #[error("manifest: {0}")]
    Manifest(String),
    #[error("{0}")]
    Remote(String),
    #[error(transparent)]
    Kafka(#[from] aion_kafka::Error),
    #[error("redaction needs a NER model to find names in answers (or turn redaction off)")]
    NoEntityFinder,
    #[error("finding names to redact: {0}")]
    EntityFinder(String),
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
