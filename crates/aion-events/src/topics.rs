//! Topic names. A topic carries exactly one schema; its version is part of the name so that a
//! breaking change is a new topic, never a silent reinterpretation of old records.

/// Retrieval events published by the assistant (schema `retrieval.v1`).
pub const RETRIEVAL: &str = "retrieval.v1";
/// Answer events published by the assistant (schema `answer.v1`).
pub const ANSWER: &str = "answer.v1";

/// Closed-window aggregates per tenant (schema `metrics.v1`), from the windows stage.
pub const METRICS: &str = "metrics.v1";

/// Training requests (schema `train.trigger.v1`), from the trigger gate and `aion train trigger`.
pub const TRAIN_TRIGGER: &str = "train.trigger.v1";

/// What training jobs are doing (schema `train.status.v1`), from the trainer.
pub const TRAIN_STATUS: &str = "train.status.v1";

/// Operator requests to trainers, e.g. cancel (schema `train.control.v1`).
pub const TRAIN_CONTROL: &str = "train.control.v1";

/// Index rebuild requests (schema `index.rebuild.v1`), from the gate.
pub const INDEX_REBUILD: &str = "index.rebuild.v1";

/// Retrieval events with their top entities and keyphrases, from the enricher.
pub const RETRIEVAL_ENRICHED: &str = "retrieval.enriched.v1";

/// Human labels (schema `labels.v1`): answer correctness and retrieval judgments, from
/// `aion labels import` or a labelling tool.
pub const LABELS: &str = "labels.v1";

/// Topics the applications publish to; every stage that consumes one dead-letters into [`dlq`].
pub const INPUTS: [&str; 2] = [RETRIEVAL, ANSWER];

/// Dead-letter topic of `topic`: records that failed decoding or validation, original bytes intact.
pub fn dlq(topic: &str) -> String {
    format!("{topic}.dlq")
}

/// Late side output of `topic`: events that arrived after the watermark passed the end of a window
/// they belong to (original bytes; headers say which windows they missed).
pub fn late(topic: &str) -> String {
    format!("{topic}.late")
}

/// The schemas a topic can carry, for stages that handle more than one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaId {
    Retrieval,
    Answer,
}

impl SchemaId {
    pub const ALL: [SchemaId; 2] = [SchemaId::Retrieval, SchemaId::Answer];

    pub fn name(self) -> &'static str {
        match self {
            SchemaId::Retrieval => crate::RetrievalEvent::NAME,
            SchemaId::Answer => crate::AnswerEvent::NAME,
        }
    }

    /// Looks a schema up by its name (`retrieval.v1`), which is also its topic's name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Decodes and validates `payload`, discarding the event (gates and benchmarks).
    pub fn check(self, payload: &[u8], limits: &crate::DecodeLimits) -> Result<(), crate::Reject> {
        match self {
            SchemaId::Retrieval => {
                crate::decode::<crate::RetrievalEvent>(payload, limits).map(drop)
            }
            SchemaId::Answer => crate::decode::<crate::AnswerEvent>(payload, limits).map(drop),
        }
    }
}

use crate::Schema as _;
