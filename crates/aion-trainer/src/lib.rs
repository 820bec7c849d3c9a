//! QLoRA fine-tuning of a LLaMA-family decoder on candle, CPU first.
//!
//! The crate owns the ML core of the trainer stage: loading a base model (a llama.cpp GGUF or a
//! Hugging Face directory), its 4-bit NormalFloat storage ([`nf4`]), the decoder with LoRA adapters
//! ([`model`]), the PEFT adapter format ([`adapter`]) and the training loop with checkpoints
//! ([`train`]); and the stage on top ([`stage`]): triggers in, jobs from the shards named in them
//! ([`dataset`]), status events out.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))] // test code: a panic is the failure report

pub mod adapter;
pub mod dataset;
pub mod model;
pub mod nf4;
pub mod stage;
pub mod tokenizer;
pub mod train;
pub mod weights;

pub use adapter::{export_dequantised, load_adapter, save_adapter};
pub use dataset::DataFilter;
pub use model::{BaseModel, Llama, LlamaConfig, Lora, LoraConfig, Storage};
pub use stage::{run, Stats, TrainerOptions};
pub use train::{
    alpaca_prompt, generate, held_out_loss, train, Example, Outcome, Progress, Schedule,
    TrainConfig,
};

use std::path::PathBuf;

/// Everything that can go wrong in the trainer library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The model files or the configuration do not describe something this crate can run.
    #[error("{0}")]
    Invalid(String),
    #[error("kafka: {0}")]
    Kafka(#[from] aion_kafka::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<aion_events::durable::FileError> for Error {
    fn from(e: aion_events::durable::FileError) -> Self {
        Error::Io {
            path: e.path,
            source: e.source,
        }
    }
}

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}

pub(crate) fn json_err(path: impl Into<PathBuf>) -> impl FnOnce(serde_json::Error) -> Error {
    let path = path.into();
    move |source| Error::Json { path, source }
}
