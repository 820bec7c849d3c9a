//! Labelled judgments for the windows stage: the `labels` table (written by the shard stage from
//! `labels.v1`) read into an [`aion_labels::JudgmentMap`], so that a retrieval arriving without
//! judgments is scored with the ones a human gave its (normalised) query.
//!
//! The table, not the topic: labels are read from files that are already durable, so this stage's
//! offsets and its restore-by-replay are untouched. New files are picked up every
//! [`REFRESH`]; a label takes effect for retrievals the stage reads after that. A replay after a
//! crash rescoring an open window may therefore use labels that arrived in the meantime (never
//! for windows already durable: those are not published again).

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aion_events::Judgment;
use aion_labels::JudgmentMap;
use chrono::{DateTime, Utc};
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::TimestampMicrosecondType;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tracing::{info, warn};

/// The labels table under the data dir.
pub const LABELS_TABLE: &str = aion_events::layout::Table::Labels.name();
/// How often the table is scanned for new files.
pub const REFRESH: Duration = Duration::from_secs(5);

/// The judgments of every label file read so far.
#[derive(Debug)]
pub struct LabelledJudgments {
    root: PathBuf,
    loaded: HashSet<PathBuf>,
    map: JudgmentMap,
    next_scan: Option<Instant>,
}

impl LabelledJudgments {
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            loaded: HashSet::new(),
            map: JudgmentMap::new(),
            next_scan: None,
        }
    }

    pub fn map(&self) -> &JudgmentMap {
        &self.map
    }

    /// Reads label files not read yet, at most every [`REFRESH`]; returns how many labels with
    /// judgments changed the map. A file that cannot be read is skipped with a warning (once).
    pub fn refresh(&mut self, now: Instant) -> usize {
        if self.next_scan.is_some_and(|t| now < t) {
            return 0;
        }
        self.next_scan = Some(now + REFRESH);
        let mut changed = 0;
        for (tenant, path) in files(&self.root) {
            if !self.loaded.insert(path.clone()) {
                continue;
            }
            match read(&path) {
                Ok(labels) => {
                    changed += labels
                        .into_iter()
                        .filter(|(key, at, judgments)| {
                            self.map.insert_keyed(&tenant, key.clone(), *at, judgments)
                        })
                        .count();
                }
                Err(error) => {
                    warn!(path = %path.display(), %error, "unreadable label file skipped")
                }
            }
        }
        if changed > 0 {
            info!(
                changed,
                queries = self.map.len(),
                "labelled judgments loaded"
            );
        }
        changed
    }
}

fn dirs(dir: &Path, prefix: &str) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            Some((name.strip_prefix(prefix)?.to_owned(), e.path()))
        })
        .collect();
    out.sort();
    out
}

/// `(tenant, file)` of every committed Parquet file: `tenant_id=<t>/date=<d>/*.parquet`, hidden
/// temporary names excluded.
fn files(root: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for (tenant, tenant_dir) in dirs(root, "tenant_id=") {
        for (_, day) in dirs(&tenant_dir, "date=") {
            for (name, path) in dirs(&day, "") {
                if !name.starts_with('.') && name.ends_with(".parquet") {
                    out.push((tenant.clone(), path));
                }
            }
        }
    }
    out
}

/// A label's judgments: (query key, labelled at, judgments).
type Labelled = (String, DateTime<Utc>, Vec<Judgment>);

fn read(path: &Path) -> Result<Vec<Labelled>, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| e.to_string())?;
        out.extend(labels(&batch)?);
    }
    Ok(out)
}

fn labels(batch: &RecordBatch) -> Result<Vec<Labelled>, String> {
    let col = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| format!("column {name} missing"))
    };
    let strings = |name: &str| -> Result<_, String> {
        col(name)?
            .as_string_opt::<i32>()
            .cloned()
            .ok_or_else(|| format!("column {name} is not text"))
    };
    let (queries, judgments) = (strings("query")?, strings("judgments")?);
    // Tables written before `query_key` existed hold the query unredacted: key it here.
    let keys = batch
        .column_by_name("query_key")
        .map(|_| strings("query_key"))
        .transpose()?;
    let at = col("labelled_at")?
        .as_primitive_opt::<TimestampMicrosecondType>()
        .cloned()
        .ok_or("column labelled_at is not a timestamp")?;
    let mut out = Vec::new();
    for i in 0..batch.num_rows() {
        if judgments.is_null(i) || queries.is_null(i) {
            continue;
        }
        let list: Vec<Judgment> = serde_json::from_str(judgments.value(i))
            .map_err(|e| format!("row {i}: judgments: {e}"))?;
        let key = match &keys {
            Some(keys) if !keys.is_null(i) => keys.value(i).to_owned(),
            _ => aion_labels::query_key(queries.value(i)),
        };
        let labelled_at = DateTime::from_timestamp_micros(at.value(i))
            .ok_or_else(|| format!("row {i}: labelled_at out of range"))?;
        out.push((key, labelled_at, list));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use aion_events::LabelEvent;
    use datafusion::arrow::array::{
        ArrayRef, BooleanArray, StringArray, TimestampMicrosecondArray,
    };
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use datafusion::parquet::arrow::ArrowWriter;

    use super::*;

    /// A file laid out as the shard stage writes the `labels` table.
    fn write(
        root: &Path,
        tenant: &str,
        name: &str,
        rows: &[(&str, i64, Option<&str>, Option<&str>)],
    ) {
        let dir = root.join(format!("tenant_id={tenant}/date=2026-11-30"));
        std::fs::create_dir_all(&dir).unwrap();
        let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let schema = Arc::new(Schema::new(vec![
            Field::new("event_id", DataType::Utf8, false),
            Field::new("labelled_at", ts, false),
            Field::new("labeller", DataType::Utf8, false),
            Field::new("correct", DataType::Boolean, true),
            Field::new("query", DataType::Utf8, true),
            Field::new("judgments", DataType::Utf8, true),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.1))
                    .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|_| "ana"))),
            Arc::new(BooleanArray::from_iter(
                rows.iter().map(|r| r.3.is_none().then_some(true)),
            )),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.2))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.3))),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
        let mut w =
            ArrowWriter::try_new(File::create(dir.join(name)).unwrap(), schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }

    #[test]
    fn label_files_fill_the_map_once_and_new_files_are_picked_up_later() {
        let dir = tempfile::tempdir().unwrap();
        let j = r#"[{"doc_id":"kb-1","rel":3},{"doc_id":"kb-2","rel":0}]"#;
        write(
            dir.path(),
            "acme",
            "part-0-0-1.parquet",
            &[
                ("r-1", 1, Some("Refund policy?"), Some(j)),
                ("a-1", 2, None, None),
            ],
        );
        write(
            dir.path(),
            "acme",
            ".part-0-2-2.parquet.tmp",
            &[("r-9", 3, Some("x"), Some(j))],
        );
        let mut labelled = LabelledJudgments::new(dir.path().to_owned());
        let t0 = Instant::now();
        assert_eq!(labelled.refresh(t0), 1);
        let got = labelled.map().get("acme", "refund policy").unwrap();
        assert_eq!((got[0].doc_id.as_str(), got[0].rel), ("kb-1", 3));
        assert!(
            labelled.map().get("acme", "x").is_none(),
            "temporary files are not read"
        );

        write(
            dir.path(),
            "globex",
            "part-0-0-0.parquet",
            &[("r-2", 5, Some("x"), Some(j))],
        );
        assert_eq!(
            labelled.refresh(t0 + Duration::from_secs(1)),
            0,
            "not before REFRESH"
        );
        assert_eq!(labelled.refresh(t0 + REFRESH), 1);
        assert!(labelled.map().get("globex", "X").is_some());
        assert_eq!(labelled.refresh(t0 + REFRESH * 2), 0, "files are read once");
    }

    #[test]
    fn an_unjudged_retrieval_is_scored_with_its_querys_labels_and_a_judged_one_keeps_its_own() {
        use crate::{observation_with, Measure, WindowsConfig};
        let config = WindowsConfig::embedded().unwrap();
        let limits = aion_events::DecodeLimits::default();
        let event = |results: &str| {
            format!(
                r#"{{"event_id":"r-2","tenant_id":"acme","ts":"2026-11-30T12:00:00Z","query":"Refund  policy","results":{results}}}"#
            )
        };
        let unjudged = event(
            r#"[{"doc_id":"kb-2","rank":1,"text":"t","score":2.0},{"doc_id":"kb-1","rank":2,"text":"t","score":1.0}]"#,
        );
        let judged = event(r#"[{"doc_id":"kb-2","rank":1,"text":"t","score":2.0,"rel":2}]"#);
        let mut map = JudgmentMap::new();
        let score = |map: &JudgmentMap, payload: &str| match observation_with(
            &config,
            &limits,
            0,
            payload.as_bytes(),
            map,
        )
        .unwrap()
        .measure
        {
            Measure::Retrieval { ndcg } => ndcg,
            Measure::Answer { .. } => panic!("not a retrieval"),
        };
        assert_eq!(
            score(&map, &unjudged),
            None,
            "no labels: counted, not scored"
        );
        map.insert(&LabelEvent {
            event_id: "r-1".into(),
            tenant_id: "acme".into(),
            labelled_at: DateTime::from_timestamp_micros(1).unwrap(),
            labeller: "ana".into(),
            correct: None,
            query: Some("refund policy?".into()),
            judgments: Some(vec![
                Judgment {
                    doc_id: "kb-1".into(),
                    rel: 3,
                },
                Judgment {
                    doc_id: "kb-2".into(),
                    rel: 0,
                },
            ]),
        });
        // kb-1 (rel 3) at rank 2: DCG = 3 / log2(3), IDCG = 3.
        let expected = 1.0 / 3f64.log2();
        let got = score(&map, &unjudged).unwrap();
        assert!((got - expected).abs() < 1e-12, "{got} vs {expected}");
        assert_eq!(score(&map, &judged), Some(1.0), "the event's own rel wins");
    }
}
