//! Named-entity recognition on candle: a BERT token classifier (Hugging Face
//! `BertForTokenClassification` directories: `config.json` with `id2label`, `model.safetensors`,
//! `tokenizer.json`), entities as whole words with byte offsets and scores, aggregated like
//! transformers' `aggregation_strategy` "first" / "max" / "average", and long texts split into
//! overlapping windows that never cut a word.
//!
//! Also the statistical keyphrase extractor and the term scoring (entities 3, keyphrases 1).
//! And the enricher stage that runs them over `retrieval.v1`.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod cache;
mod classifier;
mod encoder;
mod entities;
mod hub;
mod kernels;
mod keyphrases;
mod redaction;
mod stage;
mod terms;

pub use cache::SegmentCache;
pub use classifier::TokenClassifier;
pub use encoder::Precision;
pub use entities::{aggregate, argmax, likely_names, Aggregation, Entity, TokenPrediction};
pub use hub::{pull, Hub};
pub use keyphrases::keyphrases;
pub use redaction::{NameFinder, REDACTION_NAME_THRESHOLD};
pub use stage::{
    enrich, run, sample_text, segments, EnrichOptions, Stats, DEFAULT_CACHE_ENTRIES, EVENT_TERMS,
    SAMPLE_CHARS,
};
pub use terms::{merge_entities, top_terms, Term, ENTITY_WEIGHT, KEYPHRASE_WEIGHT, PERSON};

/// 320 varied Brazilian Portuguese and English texts (names, e-mails, phones, cities, addresses,
/// CPFs, and text without entities) for the parity check and the benchmark; written by
/// `scripts/models/make_ner_texts.py`.
pub fn parity_texts() -> Vec<String> {
    include_str!("../data/texts.jsonl")
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Errors of model loading and inference.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {message}")]
    Load { path: String, message: String },
    #[error("inference: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error(transparent)]
    Kafka(#[from] aion_kafka::Error),
    #[error("event JSON: {0}")]
    Json(#[from] serde_json::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
