//! Training examples from the shard table: the files a trigger names (or, for a trigger without
//! any, every committed shard of its tenant), filtered and deduplicated by `event_id`; rows that
//! mention one of the trigger's worst entities weigh more.

use std::collections::HashSet;
use std::path::Path;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type};
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
    /// A row whose retrieval named one of the trigger's worst entities counts this many times
    /// (1: no weighting). Its copies share the instruction, so they stay on one side of the
    /// held-out split.
    pub entity_weight: usize,
}

impl Default for DataFilter {
    fn default() -> Self {
        Self {
            fallback: true,
            min_local_confidence: 0.8,
            max_examples: 20_000,
            entity_weight: 2,
        }
    }
}

/// The order a trigger's files are read in, so that the cap keeps what fired it: the files of the
/// days its window covers (`from` to `to`, UTC) first, then the rest newest first. `files` come
/// in manifest order (oldest first) and hold their day as `date=YYYY-MM-DD`.
pub fn order_for_window(
    files: &[String],
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
) -> Vec<String> {
    let (first, last) = (
        from.format("%Y-%m-%d").to_string(),
        to.format("%Y-%m-%d").to_string(),
    );
    let in_window = |f: &String| {
        f.split('/')
            .find_map(|part| part.strip_prefix("date="))
            .is_some_and(|day| first.as_str() <= day && day <= last.as_str())
    };
    let (window, rest): (Vec<&String>, Vec<&String>) = files.iter().partition(|f| in_window(f));
    window
        .into_iter()
        .chain(rest.into_iter().rev())
        .cloned()
        .collect()
}

/// Reads `files` (relative to `root`) into examples, weighting the rows that mention one of
/// `worst_entities` (compared without case).
pub fn load_examples(
    root: &Path,
    files: &[String],
    filter: &DataFilter,
    worst_entities: &[String],
) -> Result<Vec<Example>> {
    let worst: HashSet<String> = worst_entities.iter().map(|e| e.to_lowercase()).collect();
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
            for (id, example, entities) in rows(&batch, filter)
                .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?
            {
                if !seen.insert(id) {
                    continue;
                }
                let weight = if entities.iter().any(|e| worst.contains(&e.to_lowercase())) {
                    filter.entity_weight.max(1)
                } else {
                    1
                };
                for _ in 0..weight {
                    if out.len() >= filter.max_examples {
                        return Ok(out);
                    }
                    out.push(example.clone());
                }
            }
        }
    }
    Ok(out)
}

/// The kept rows of a batch: event id, example, the entities of its retrieval (none in shards
/// written before the join, or when the retrieval was not seen in time).
fn rows(
    batch: &RecordBatch,
    filter: &DataFilter,
) -> Result<Vec<(String, Example, Vec<String>)>, String> {
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
    let entities = match batch.column_by_name("entities") {
        Some(c) => Some(c.as_list_opt::<i32>().ok_or("entities is not a list")?),
        None => None,
    };
    let entities_of = |i: usize| -> Vec<String> {
        let Some(list) = entities.filter(|l| l.is_valid(i)) else {
            return Vec::new();
        };
        // Parquet strings may be read as views; the cast is a no-op for plain Utf8.
        cast(&list.value(i), &DataType::Utf8)
            .map(|a| {
                a.as_string::<i32>()
                    .iter()
                    .flatten()
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
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
                entities_of(i),
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{
        BooleanArray, Float64Array, ListBuilder, StringArray, StringBuilder,
    };
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::parquet::arrow::ArrowWriter;

    use super::*;

    /// A shard file of fallback answers `(id, entities)`.
    fn shard(dir: &Path, rows: &[(&str, &[&str])]) -> String {
        let mut entities = ListBuilder::new(StringBuilder::new());
        for (_, names) in rows {
            for n in *names {
                entities.values().append_value(n);
            }
            entities.append(true);
        }
        let text = |prefix: &str| {
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|(id, _)| format!("{prefix}{id}")),
            ))
        };
        let entities = entities.finish();
        let schema = Arc::new(Schema::new(vec![
            Field::new("event_id", DataType::Utf8, false),
            Field::new("instruction", DataType::Utf8, false),
            Field::new("response", DataType::Utf8, false),
            Field::new("confidence", DataType::Float64, false),
            Field::new("fallback", DataType::Boolean, false),
            Field::new("entities", entities.data_type().clone(), true),
        ]));
        let n = rows.len();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                text(""),
                text("question "),
                text("answer "),
                Arc::new(Float64Array::from(vec![0.3; n])),
                Arc::new(BooleanArray::from(vec![true; n])),
                Arc::new(entities),
            ],
        )
        .unwrap();
        let file = std::fs::File::create(dir.join("part.parquet")).unwrap();
        let mut w = ArrowWriter::try_new(file, schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        "part.parquet".into()
    }

    #[test]
    fn a_triggers_window_is_read_first_then_the_newest_history() {
        let files: Vec<String> = [
            "2026-11-01",
            "2026-11-02",
            "2026-11-03",
            "2026-11-04",
            "2026-11-05",
        ]
        .iter()
        .map(|d| format!("tenant_id=acme/date={d}/part-000-000000000000-000000000001.parquet"))
        .collect();
        let at = |t: &str| t.parse::<chrono::DateTime<chrono::Utc>>().unwrap();
        let days: Vec<String> = order_for_window(
            &files,
            at("2026-11-02T13:00:00Z"),
            at("2026-11-03T13:00:00Z"),
        )
        .iter()
        .map(|f| f[20..30].to_owned())
        .collect();
        assert_eq!(
            days,
            [
                "2026-11-02",
                "2026-11-03",
                "2026-11-05",
                "2026-11-04",
                "2026-11-01"
            ]
        );
    }

    #[test]
    fn rows_naming_a_worst_entity_count_entity_weight_times() {
        let dir = tempfile::tempdir().unwrap();
        let rows: &[(&str, &[&str])] = &[
            ("a", &["Curitiba", "Maria"]),
            ("b", &["Lisboa"]),
            ("c", &[]),
            ("a", &["Curitiba"]),
        ];
        let files = vec![shard(dir.path(), rows)];
        let filter = DataFilter {
            entity_weight: 3,
            ..DataFilter::default()
        };
        let instructions = |worst: &[String]| -> Vec<String> {
            load_examples(dir.path(), &files, &filter, worst)
                .unwrap()
                .into_iter()
                .map(|e| e.instruction)
                .collect()
        };
        // Case does not matter; a duplicated event id is still read once.
        assert_eq!(
            instructions(&["curitiba".into()]),
            [
                "question a",
                "question a",
                "question a",
                "question b",
                "question c"
            ]
        );
        assert_eq!(
            instructions(&[]),
            ["question a", "question b", "question c"]
        );
        let capped = DataFilter {
            max_examples: 2,
            ..filter.clone()
        };
        assert_eq!(
            load_examples(dir.path(), &files, &capped, &["Curitiba".into()])
                .unwrap()
                .len(),
            2
        );
    }
}
