//! The trigger gate: reads closed windows' metrics (`metrics.v1`), decides per tenant whether
//! quality dropped enough to train (thresholds, minimum samples, cooldown, hysteresis) and publishes
//! explained `train.trigger.v1` events; and the index-rebuild rule (`index.rebuild.v1` every ΔN new
//! documents seen in a tenant's retrieval results). Owns their state files and the persisted
//! run-time settings.
//!
//! Reads the wire types of `aion-events`, the delivery contract of `aion-kafka` and, through
//! DataFusion, the Parquet tables the shard stage leaves on disk; knows no other stage.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod config;
mod entities;
mod gate;
mod index;
mod stage;

use std::path::Path;

pub use config::{
    GateConfig, IndexRebuildConfig, Settings, SettingsStore, DEFAULT_PIPELINE, MAX_COOLDOWN_HOURS,
};
pub use entities::{worst_entities, TopEntities, TRIGGER_ENTITIES_SQL};
pub use gate::{Gate, TenantState, Verdict};
pub use index::{run_index, IndexWatch};
pub use stage::{manual_trigger, run, shard_snapshot, trigger, GateOptions, Latest, Stats};

/// Errors of the gate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid gate configuration {origin}: {message}")]
    Config { origin: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("gate state: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Kafka(#[from] aion_kafka::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<aion_events::durable::FileError> for Error {
    fn from(e: aion_events::durable::FileError) -> Self {
        io(&e.path, e.source)
    }
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A JSON state file, or the default state when it does not exist yet.
fn load_json<T: serde::de::DeserializeOwned + Default>(path: &Path) -> Result<T> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(io(path, e)),
    }
}

fn save_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    Ok(aion_events::durable::replace_bytes(
        path,
        &serde_json::to_vec(value)?,
    )?)
}
