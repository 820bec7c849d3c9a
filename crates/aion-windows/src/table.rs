//! The stage's Parquet tables, Hive-partitioned by day, `<root>/date=<YYYY-MM-DD>/<file>`, each
//! file holding the tenants that closed together (column `tenant_id`, rows in tenant order):
//!
//! - `metrics`: `w-<end>-<tenants>.parquet`, the results of windows ending at `end`, dated by the
//!   windows' last instant;
//! - `window_history`: `p-<start>-<tenants>.parquet`, the events of panes starting at `start` that
//!   no open window needs any more: each event once, with the watermark it arrived at, so
//!   `pipelines/window_events.sql` rebuilds the stream's window input exactly.
//!
//! `<tenants>` is a hash of the tenants in the file. One file per close, not per tenant: at 50,000
//! tenants a file (and its fsyncs) per tenant and window end kept closes ~40 minutes behind.
//!
//! A tenant found in a file says its rows for that key are durable: metrics records are
//! acknowledged before the file is renamed into place, and a replay, which closes the same windows
//! again, skips the tenants already written ([`Table::unwritten`]). That also keeps a pane
//! written once: a replay re-forms it from the records after its resume point only, a subset.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::DateTime;
use datafusion::arrow::array::{
    ArrayRef, AsArray, RecordBatch, StringArray, TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::arrow::{ArrowWriter, ProjectionMask};
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;

use crate::aggregate::MeasureColumns;
use crate::operator::{Micros, ReleasedPane};
use crate::{Error, Result};

/// What a table's files are keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    /// A window end: `w-<end>`, dated by the windows' last instant.
    WindowEnd,
    /// A pane start: `p-<start>`, dated by it.
    PaneStart,
}

/// One of the stage's Parquet tables.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    root: PathBuf,
    key: Key,
}

fn stamp(t: Micros) -> String {
    DateTime::from_timestamp_micros(t)
        .unwrap_or_default()
        .format("%Y%m%dT%H%M%SZ")
        .to_string()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

impl Table {
    /// The `metrics` table: window results by window end.
    pub fn metrics(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            key: Key::WindowEnd,
        }
    }

    /// The `window_history` table: released panes by pane start.
    pub fn history(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            key: Key::PaneStart,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The day directory and the file-name prefix of the files of `key`.
    fn place(&self, key: Micros) -> (PathBuf, String) {
        let (letter, day_of) = match self.key {
            Key::WindowEnd => ('w', key - 1),
            Key::PaneStart => ('p', key),
        };
        let day = DateTime::from_timestamp_micros(day_of).unwrap_or_default();
        let dir = self.root.join(format!("date={}", day.format("%Y-%m-%d")));
        (dir, format!("{letter}-{}", stamp(key)))
    }

    /// The tenants whose rows for `key` are in the table already.
    fn written_tenants(&self, key: Micros) -> Result<HashSet<String>> {
        let (dir, prefix) = self.place(key);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
            Err(e) => return Err(io(&dir)(e)),
        };
        let prefix = format!("{prefix}-");
        let mut tenants = HashSet::new();
        for entry in entries {
            let path = entry.map_err(io(&dir))?.path();
            let ours = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".parquet"));
            if ours {
                tenants.extend(tenants_of(&path)?);
            }
        }
        Ok(tenants)
    }

    /// `items` without those whose tenant's rows for their key are in the table already: what a
    /// replay closes again and an earlier run wrote.
    pub fn unwritten<T>(
        &self,
        mut items: Vec<T>,
        key: impl Fn(&T) -> (Micros, &str),
    ) -> Result<Vec<T>> {
        let mut written: HashMap<Micros, HashSet<String>> = HashMap::new();
        for item in &items {
            let (k, _) = key(item);
            if let Entry::Vacant(e) = written.entry(k) {
                e.insert(self.written_tenants(k)?);
            }
        }
        items.retain(|item| {
            let (k, tenant) = key(item);
            !written[&k].contains(tenant)
        });
        Ok(items)
    }

    /// Writes `rows` (with a `tenant_id` column, in tenant order) as the file of `key` and their
    /// tenants, durably ([`aion_events::durable::replace_file`]); a file with the same tenants
    /// is left as it is.
    pub fn write(&self, key: Micros, rows: &RecordBatch) -> Result<()> {
        let (dir, prefix) = self.place(key);
        write_new(&dir, &prefix, rows)
    }

    /// Moves the files of the earlier layout (`tenant_id=<t>/date=<d>/<w|p>-<stamp>.parquet`, a
    /// file per tenant without a `tenant_id` column) into this one; how many. A stop halfway is
    /// harmless: a file is removed only once its copy is durable, and a copy is never made twice.
    pub fn migrate_tenant_directories(&self) -> Result<usize> {
        let mut moved = 0;
        for (tenant, tenant_dir) in subdirectories(&self.root, "tenant_id=")? {
            for (day, day_dir) in subdirectories(&tenant_dir, "date=")? {
                for entry in std::fs::read_dir(&day_dir).map_err(io(&day_dir))? {
                    let old = entry.map_err(io(&day_dir))?.path();
                    let Some(stem) = old
                        .file_name()
                        .and_then(|n| n.to_str())
                        .and_then(|n| n.strip_suffix(".parquet"))
                        .filter(|n| !n.starts_with('.'))
                    else {
                        continue;
                    };
                    let rows = with_tenant(&read_all(&old)?, &tenant)?;
                    write_new(&self.root.join(format!("date={day}")), stem, &rows)?;
                    std::fs::remove_file(&old).map_err(io(&old))?;
                    moved += 1;
                }
                // Leftover hidden temporaries of the old writer are not worth keeping.
                std::fs::remove_dir_all(&day_dir).map_err(io(&day_dir))?;
            }
            std::fs::remove_dir_all(&tenant_dir).map_err(io(&tenant_dir))?;
        }
        Ok(moved)
    }
}

/// Writes `rows` to `<dir>/<prefix>-<hash of their tenants>.parquet` unless that file exists.
fn write_new(dir: &Path, prefix: &str, rows: &RecordBatch) -> Result<()> {
    if rows.num_rows() == 0 {
        return Ok(());
    }
    let path = dir.join(format!("{prefix}-{:016x}.parquet", tenants_hash(rows)?));
    if path.exists() {
        return Ok(());
    }
    aion_events::durable::replace_file(&path, |file| {
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .build();
        let mut writer = ArrowWriter::try_new(file, rows.schema(), Some(props))?;
        writer.write(rows)?;
        Ok(writer.into_inner()?)
    })
}

/// The directories `<dir>/<prefix><value>`, as (value, path).
fn subdirectories(dir: &Path, prefix: &str) -> Result<Vec<(String, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let path = entry.map_err(io(dir))?.path();
        let value = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(prefix))
            .map(str::to_owned);
        if let Some(value) = value.filter(|_| path.is_dir()) {
            found.push((value, path));
        }
    }
    Ok(found)
}

fn read_all(path: &Path) -> Result<RecordBatch> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
    let schema = builder.schema().clone();
    let batches = builder.build()?.collect::<Result<Vec<_>, _>>()?;
    Ok(datafusion::arrow::compute::concat_batches(
        &schema, &batches,
    )?)
}

/// `rows` with a first column `tenant_id` holding `tenant`.
fn with_tenant(rows: &RecordBatch, tenant: &str) -> Result<RecordBatch> {
    let mut fields = vec![Arc::new(Field::new("tenant_id", DataType::Utf8, false))];
    fields.extend(rows.schema().fields().iter().cloned());
    let mut columns: Vec<ArrayRef> =
        vec![Arc::new(StringArray::from(vec![tenant; rows.num_rows()]))];
    columns.extend(rows.columns().iter().cloned());
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

fn tenant_column(rows: &RecordBatch) -> Result<&StringArray> {
    rows.column_by_name("tenant_id")
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or_else(|| Error::Sql("window table rows need a string column tenant_id".into()))
}

/// FNV-1a of the distinct tenants of `rows`, in order: a file's name, the same for the same tenants.
fn tenants_hash(rows: &RecordBatch) -> Result<u64> {
    let column = tenant_column(rows)?;
    let mut text = String::new();
    let mut last = None;
    for tenant in column.iter().flatten() {
        if last != Some(tenant) {
            text.push_str(tenant);
            text.push('\n');
            last = Some(tenant);
        }
    }
    Ok(aion_events::fnv1a(text.as_bytes()))
}

/// The tenants in a table file (its `tenant_id` column only is read).
fn tenants_of(path: &Path) -> Result<HashSet<String>> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
    let mask = ProjectionMask::columns(builder.parquet_schema(), ["tenant_id"]);
    let mut tenants = HashSet::new();
    for batch in builder.with_projection(mask).build()? {
        let batch = batch?;
        tenants.extend(tenant_column(&batch)?.iter().flatten().map(str::to_owned));
    }
    Ok(tenants)
}

/// Rows of the `window_history` table: one per event of the released panes (given in tenant
/// order).
pub fn panes_batch(panes: &[&ReleasedPane]) -> Result<RecordBatch> {
    let schema = aion_events::layout::schemas::window_history();
    let n = panes.iter().map(|p| p.rows.len()).sum();
    let mut tenants = Vec::with_capacity(n);
    let ts_builder = || TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let (mut ts, mut arrived) = (ts_builder(), ts_builder());
    let mut measures = MeasureColumns::with_capacity(n);
    for pane in panes {
        for row in &pane.rows {
            tenants.push(&*pane.tenant);
            ts.append_value(row.ts);
            arrived.append_option((row.arrived_at != Micros::MIN).then_some(row.arrived_at));
            measures.push(row.measure);
        }
    }
    let [kind, ndcg, fallback, confidence] = measures.finish();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(tenants)),
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
    use super::*;
    use crate::operator::{Measure, Origin, Row};

    fn pane(tenant: &str, start: Micros, events: i64) -> ReleasedPane {
        ReleasedPane {
            tenant: Arc::from(tenant),
            start,
            rows: (0..events)
                .map(|i| Row {
                    ts: start + i,
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

    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                found.extend(files(&path));
            } else {
                found.push(path);
            }
        }
        found.sort();
        found
    }

    fn rows_by_tenant(dir: &Path) -> Vec<(String, usize)> {
        let mut counts = std::collections::BTreeMap::new();
        for path in files(dir) {
            let rows = read_all(&path).unwrap();
            for tenant in tenant_column(&rows).unwrap().iter().flatten() {
                *counts.entry(tenant.to_owned()).or_insert(0) += 1;
            }
        }
        counts.into_iter().collect()
    }

    const HOUR: Micros = 3_600_000_000;

    #[test]
    fn a_replay_writes_only_the_tenants_no_earlier_close_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let table = Table::history(dir.path());
        let first = [pane("acme", HOUR, 3), pane("globex", HOUR, 2)];
        table
            .write(
                HOUR,
                &panes_batch(&first.iter().collect::<Vec<_>>()).unwrap(),
            )
            .unwrap();
        // The replay re-forms acme's pane from a subset of its events, and meets a tenant (and an
        // hour) the first run never closed.
        let replay = [
            pane("acme", HOUR, 1),
            pane("initech", HOUR, 4),
            pane("acme", 2 * HOUR, 1),
        ];
        let todo = table
            .unwritten(replay.iter().collect(), |p| (p.start, &*p.tenant))
            .unwrap();
        let todo: Vec<_> = todo.iter().map(|p| (&*p.tenant, p.start)).collect();
        assert_eq!(todo, [("initech", HOUR), ("acme", 2 * HOUR)]);
        table
            .write(HOUR, &panes_batch(&[&replay[1]]).unwrap())
            .unwrap();
        table
            .write(2 * HOUR, &panes_batch(&[&replay[2]]).unwrap())
            .unwrap();
        assert_eq!(
            rows_by_tenant(dir.path()),
            [
                ("acme".into(), 4),
                ("globex".into(), 2),
                ("initech".into(), 4)
            ]
        );
        let names: Vec<_> = files(dir.path())
            .iter()
            .map(|p| p.strip_prefix(dir.path()).unwrap().display().to_string())
            .collect();
        assert_eq!(
            names.len(),
            3,
            "one file per close, no temporary left: {names:?}"
        );
        assert!(
            names
                .iter()
                .all(|n| n.starts_with("date=1970-01-01/p-19700101T0")),
            "{names:?}"
        );
    }

    #[test]
    fn the_per_tenant_layout_moves_into_the_shared_one_once() {
        let dir = tempfile::tempdir().unwrap();
        let table = Table::metrics(dir.path());
        for (tenant, rows) in [("acme", 2), ("globex", 1)] {
            let window: ArrayRef = Arc::new(StringArray::from(vec!["tumbling_1h"; rows]));
            let batch = RecordBatch::try_from_iter([("window", window)]).unwrap();
            let old = dir.path().join(format!(
                "tenant_id={tenant}/date=1970-01-01/w-19700101T010000Z.parquet"
            ));
            aion_events::durable::replace_file(&old, |file| {
                let mut writer = ArrowWriter::try_new(file, batch.schema(), None)?;
                writer.write(&batch)?;
                Ok::<_, Error>(writer.into_inner()?)
            })
            .unwrap();
        }
        assert_eq!(table.migrate_tenant_directories().unwrap(), 2);
        assert_eq!(table.migrate_tenant_directories().unwrap(), 0);
        assert_eq!(
            rows_by_tenant(dir.path()),
            [("acme".into(), 2), ("globex".into(), 1)]
        );
        assert!(files(dir.path())
            .iter()
            .all(|p| p.starts_with(dir.path().join("date=1970-01-01"))));
        // Both are found as written for their window end, as the stage's own files would be.
        let todo = table
            .unwritten(vec![("acme", HOUR), ("initech", HOUR)], |(t, end)| {
                (*end, *t)
            })
            .unwrap();
        assert_eq!(todo, [("initech", HOUR)]);
    }
}
