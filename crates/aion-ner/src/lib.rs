//! Named-entity recognition on candle: a BERT token classifier (Hugging Face
//! `BertForTokenClassification` directories: `config.json` with `id2label`, `model.safetensors`,
//! `tokenizer.json`), entity spans with character offsets and scores, aggregated like
//! transformers' `aggregation_strategy="simple"`, and long texts split into overlapping windows.
//!
//! Owns inference only: no Kafka, no storage.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod classifier;
mod entities;

pub use classifier::TokenClassifier;
pub use entities::{group_simple, Entity, TokenPrediction};

/// Errors of model loading and inference.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {message}")]
    Load { path: String, message: String },
    #[error("inference: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
