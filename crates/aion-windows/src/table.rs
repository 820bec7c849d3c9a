//! The stage's Parquet tables, Hive-partitioned `<root>/tenant_id=<t>/date=<YYYY-MM-DD>/<file>`:
//!
//! - `metrics`: one file `w-<end>.parquet` per tenant and window end (every window of the tenant
//!   that closed at that instant), dated by the windows' last instant;
//! - `window_history`: one file `p-<start>.parquet` per tenant and pane, written when no open
//!   window needs the pane any more: each event once, with the watermark it arrived at, so
//!   `pipelines/window_events.sql` rebuilds the stream's window input exactly.
//!
//! File names are functions of what the files hold, so a replay meets the same files. A
//! metrics file's existence says its windows' results are durable: the topic records are
//! acknowledged before the file is renamed into place. Files are written once
//! ([`Table::write_once`]): a replay re-forms a pane from the records after its resume point
//! only, a subset of what the first run wrote, and must not replace it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::DateTime;
use datafusion::arrow::array::{ArrayRef, RecordBatch, TimestampMicrosecondBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;

use crate::aggregate::{timestamp, MeasureColumns};
use crate::operator::{Micros, ReleasedPane};
use crate::Result;

/// A Hive-partitioned Parquet table.
#[derive(Debug, Clone)]
pub struct Table {
    root: PathBuf,
}

fn stamp(t: Micros) -> String {
    DateTime::from_timestamp_micros(t)
        .unwrap_or_default()
        .format("%Y%m%dT%H%M%SZ")
        .to_string()
}

impl Table {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, tenant: &str, day_of: Micros, file: &str) -> PathBuf {
        // Tenant ids were validated on decode: they cannot leave their directory.
        let day = DateTime::from_timestamp_micros(day_of).unwrap_or_default();
        self.root
            .join(format!("tenant_id={tenant}"))
            .join(format!("date={}", day.format("%Y-%m-%d")))
            .join(file)
    }

    /// The metrics file of `tenant`'s windows ending at `end`.
    pub fn window_file(&self, tenant: &str, end: Micros) -> PathBuf {
        self.path(tenant, end - 1, &format!("w-{}.parquet", stamp(end)))
    }

    /// The history file of `tenant`'s pane starting at `start`.
    pub fn pane_file(&self, tenant: &str, start: Micros) -> PathBuf {
        self.path(tenant, start, &format!("p-{}.parquet", stamp(start)))
    }

    /// [`Table::write`] unless `path` exists; whether it wrote.
    pub fn write_once(&self, path: &Path, rows: &RecordBatch) -> Result<bool> {
        if path.exists() {
            return Ok(false);
        }
        self.write(path, rows)?;
        Ok(true)
    }

    /// Writes `rows` (without `tenant_id`: it is the directory) to `path`, durably
    /// ([`aion_events::durable::replace_file`]).
    pub fn write(&self, path: &Path, rows: &RecordBatch) -> Result<()> {
        let mut rows = rows.clone();
        if let Ok(i) = rows.schema().index_of("tenant_id") {
            rows.remove_column(i);
        }
        aion_events::durable::replace_file(path, |file| {
            let props = WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::default()))
                .build();
            let mut writer = ArrowWriter::try_new(file, rows.schema(), Some(props))?;
            writer.write(&rows)?;
            Ok(writer.into_inner()?)
        })
    }
}

/// Rows of the `window_history` table: one per event of a released pane.
pub fn pane_batch(pane: &ReleasedPane) -> Result<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("kind", DataType::Utf8, false),
        Field::new("ts", timestamp(), false),
        Field::new("ndcg", DataType::Float64, true),
        Field::new("fallback", DataType::Boolean, true),
        Field::new("confidence", DataType::Float64, true),
        // The effective watermark on arrival: the event counts in windows ending after it.
        Field::new("arrived_at", timestamp(), true),
    ]));
    let n = pane.rows.len();
    let ts_builder = || TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let (mut ts, mut arrived) = (ts_builder(), ts_builder());
    let mut measures = MeasureColumns::with_capacity(n);
    for row in &pane.rows {
        ts.append_value(row.ts);
        arrived.append_option((row.arrived_at != Micros::MIN).then_some(row.arrived_at));
        measures.push(row.measure);
    }
    let [kind, ndcg, fallback, confidence] = measures.finish();
    let columns: Vec<ArrayRef> = vec![
        kind,
        Arc::new(ts.finish()),
        ndcg,
        fallback,
        confidence,
        Arc::new(arrived.finish()),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}

#[cfg(test)]
mod tests {
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use super::*;
    use crate::operator::{Measure, Origin, Row};

    fn pane(events: i64) -> ReleasedPane {
        ReleasedPane {
            tenant: Arc::from("acme"),
            start: 0,
            rows: (0..events)
                .map(|i| Row {
                    ts: i,
                    arrived_at: Micros::MIN,
                    origin: Origin {
                        input: 1,
                        partition: 0,
                        offset: i,
                    },
                    measure: Measure::Answer {
                        fallback: false,
                        confidence: 0.5,
                    },
                })
                .collect(),
        }
    }

    #[test]
    fn a_replayed_subset_never_replaces_a_written_pane() {
        let dir = tempfile::tempdir().unwrap();
        let table = Table::new(dir.path());
        let path = table.pane_file("acme", 0);
        assert!(table
            .write_once(&path, &pane_batch(&pane(3)).unwrap())
            .unwrap());
        assert!(!table
            .write_once(&path, &pane_batch(&pane(1)).unwrap())
            .unwrap());
        let rows: usize =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap())
                .unwrap()
                .build()
                .unwrap()
                .map(|b| b.unwrap().num_rows())
                .sum();
        assert_eq!(rows, 3);
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [path.file_name().unwrap()], "no temporary file left");
    }
}
