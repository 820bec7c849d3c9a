//! The JSON Schemas of `schemas/`, embedded in the binary: what `aion schemas register` hands a
//! schema registry, wherever the binary runs.

use crate::topics;

/// One topic's JSON Schema.
#[derive(Debug, Clone, Copy)]
pub struct SchemaFile {
    pub topic: &'static str,
    /// Its file name under `schemas/`, which other schemas' `$ref`s name.
    pub file: &'static str,
    pub text: &'static str,
}

macro_rules! schema {
    ($topic:expr, $file:literal) => {
        SchemaFile {
            topic: $topic,
            file: $file,
            text: include_str!(concat!("../../../schemas/", $file)),
        }
    };
}

/// Every topic's schema, retrieval.v1 first: the others refer to its definitions.
pub const SCHEMA_FILES: &[SchemaFile] = &[
    schema!(topics::RETRIEVAL, "retrieval.v1.schema.json"),
    schema!(topics::ANSWER, "answer.v1.schema.json"),
    schema!(topics::METRICS, "metrics.v1.schema.json"),
    schema!(topics::TRAIN_TRIGGER, "train.trigger.v1.schema.json"),
    schema!(topics::TRAIN_STATUS, "train.status.v1.schema.json"),
    schema!(topics::TRAIN_CONTROL, "train.control.v1.schema.json"),
    schema!(topics::INDEX_REBUILD, "index.rebuild.v1.schema.json"),
    schema!(
        topics::RETRIEVAL_ENRICHED,
        "retrieval.enriched.v1.schema.json"
    ),
    schema!(topics::LABELS, "labels.v1.schema.json"),
];
