//! Training examples from the shard table: the files a trigger names (or, for a trigger without
//! any, every committed shard of its tenant), filtered and deduplicated by `event_id`.

use std::collections::HashSet;
use std::path::Path;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::Float64Type;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};

use crate::{io_err, Error, Example, Result};

/// Which answers become examples. The fallback model's answers are what the local model should
/// learn; local answers only when the assistant was confident in them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataFilter {
    /// Use answers that came from the fallback (external) model.
    pub fallback: bool,
    /// Use local answers with at least this confidence (above 1: none).
    pub min_local_confidence: f64,
    /// Keep at most this many examples (the newest files' rows last, so the first N by order).
    pub max_examples: usize,
}

impl Default for DataFilter {
    fn default() -> Self {
        Self {
            fallback: true,
            min_local_confidence: 0.8,
            max_examples: 20_000,
        }
    }
}

/// Reads `files` (relative to `root`) into examples.
pub fn load_examples(root: &Path, files: &[String], filter: &DataFilter) -> Result<Vec<Example>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for rel in files {
        if rel.split('/').any(|part| part == ".." || part.is_empty()) {
            return Err(Error::Invalid(format!(
                "shard path {rel:?} leaves the shard table"
            )));
        }
        let path = root.join(rel);
        let file = std::fs::File::open(&path).map_err(io_err(&path))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.with_batch_size(4096).build())
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        for batch in reader {
            let batch = batch.map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
            for (id, example) in rows(&batch, filter)
                .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?
            {
                if out.len() >= filter.max_examples {
                    return Ok(out);
                }
                if seen.insert(id) {
                    out.push(example);
                }
            }
        }
    }
    Ok(out)
}

fn rows(batch: &RecordBatch, filter: &DataFilter) -> Result<Vec<(String, Example)>, String> {
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| format!("not a training shard: no column {name}"))
    };
    let ids = column("event_id")?
        .as_string_opt::<i32>()
        .ok_or("event_id is not text")?;
    let instructions = column("instruction")?
        .as_string_opt::<i32>()
        .ok_or("instruction is not text")?;
    let responses = column("response")?
        .as_string_opt::<i32>()
        .ok_or("response is not text")?;
    let confidence = column("confidence")?
        .as_primitive_opt::<Float64Type>()
        .ok_or("confidence is not a float")?;
    let fallback = column("fallback")?
        .as_boolean_opt()
        .ok_or("fallback is not a boolean")?;
    Ok((0..batch.num_rows())
        .filter(|&i| {
            if fallback.value(i) {
                filter.fallback
            } else {
                !confidence.is_null(i) && confidence.value(i) >= filter.min_local_confidence
            }
        })
        .filter(|&i| !responses.value(i).trim().is_empty())
        .map(|i| {
            (
                ids.value(i).to_owned(),
                Example {
                    instruction: instructions.value(i).to_owned(),
                    response: responses.value(i).to_owned(),
                },
            )
        })
        .collect())
}
