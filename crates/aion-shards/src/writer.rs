//! Shard tables on disk (the training shards, the entity mentions): Hive partitions `tenant_id=<t>/date=<YYYY-MM-DD>/`, one buffer per
//! (source partition, tenant, day), rolled by rows, bytes or age into
//! `part-<partition>-<first offset>-<last offset>.parquet` (temporary name, fsync, rename, then a
//! manifest line), and only then are the rows' offsets released.
//!
//! A buffer holds every row of its (partition, tenant, day) between its first and last offset, so
//! after a crash a replayed row whose offset falls inside a committed file's range is already in
//! that file and is skipped: replays never duplicate rows, whatever the roll points were.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aion_events::ShardEntry;
use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, ListBuilder, RecordBatch,
    StringBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};

use crate::join::TrainingRow;
use crate::redact::{Counts, Pii, PrivateEntities, Redactor};
use crate::{Error, Result};

/// When a buffer becomes a file.
#[derive(Debug, Clone)]
pub struct RollPolicy {
    pub max_rows: usize,
    pub max_bytes: usize,
    pub max_age: Duration,
}

impl Default for RollPolicy {
    fn default() -> Self {
        // Files of tens of thousands of rows scan well; a minute bounds how stale the newest
        // training data and how long offsets stay unstored.
        Self {
            max_rows: 50_000,
            max_bytes: 64 << 20,
            max_age: Duration::from_secs(60),
        }
    }
}

/// An event a shard table holds: partitioned by tenant and day, deduplicated by `event_id`,
/// redacted before it is buffered, and turned into Arrow columns when its file is written.
pub trait ShardRecord {
    fn event_id(&self) -> &str;
    fn tenant_id(&self) -> &str;
    /// `YYYY-MM-DD` of the event time.
    fn date(&self) -> String;
    /// Replaces PII in every free-text field.
    fn redact(&mut self, redactor: &Redactor, counts: &mut Counts);
    /// Approximate bytes in a file, for the roll policy.
    fn size(&self) -> usize;
    fn schema() -> SchemaRef;
    /// The file's columns: `schema()` for `(record, source offset)` pairs of one partition.
    fn batch(rows: &[(Self, i64)], partition: i32) -> Result<RecordBatch>
    where
        Self: Sized;
}

struct Buffer<R, A> {
    rows: Vec<(R, i64)>,
    ids: HashSet<String>,
    acks: Vec<A>,
    first: i64,
    last: i64,
    bytes: usize,
    opened: Instant,
}

type BufferKey = (i32, String, String);

/// A shard table writer of records `R`. `A` is the acknowledgement a buffered row holds.
pub struct ShardWriter<R, A> {
    root: PathBuf,
    policy: RollPolicy,
    redactor: Option<Redactor>,
    buffers: BTreeMap<BufferKey, Buffer<R, A>>,
    /// Committed offset ranges per (partition, tenant, day), from the manifest.
    committed: BTreeMap<BufferKey, Vec<(i64, i64)>>,
    manifest: File,
    /// Acks of replayed rows already in a committed shard: durable, handed back by the next roll.
    replayed: Vec<A>,
    pub redactions: Counts,
    pub skipped_replays: u64,
}

pub use aion_events::SHARD_MANIFEST as MANIFEST;

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Appends one entry to the manifest and syncs it: the commit point of a shard file.
pub(crate) fn append_entry(manifest: &mut File, path: &Path, entry: &ShardEntry) -> Result<()> {
    let mut line = serde_json::to_vec(entry).map_err(|e| Error::Manifest(e.to_string()))?;
    line.push(b'\n');
    manifest.write_all(&line).map_err(io(path))?;
    manifest.sync_data().map_err(io(path))
}

/// Shard files in place that the manifest does not name: renamed into place, then the writer
/// stopped before appending their entry. Their offsets were never stored (the entry is the commit
/// point), so the replay would write their rows again and readers of the table would count them
/// twice; adopting them (entry appended, offsets counted as committed) keeps every row once.
/// Only names this writer gives (`tenant_id=T/date=D/part-P-FIRST-LAST.parquet`) are adopted.
fn orphans(root: &Path, named: &HashSet<&str>) -> Result<Vec<ShardEntry>> {
    let mut found = Vec::new();
    for file in table_files(root)? {
        let Some((partition, first, last)) = shard_name(&file.name) else {
            continue;
        };
        if named.contains(file.rel.as_str()) {
            continue;
        }
        let path = root.join(&file.rel);
        let reader = File::open(&path)
            .map_err(io(&path))
            .and_then(|f| Ok(SerializedFileReader::new(f)?))?;
        found.push(ShardEntry {
            path: file.rel,
            tenant_id: file.tenant,
            date: file.date,
            source_partition: partition,
            first_offset: first,
            last_offset: last,
            rows: usize::try_from(reader.metadata().file_metadata().num_rows()).unwrap_or(0),
            replaces: Vec::new(),
        });
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}

/// A file in a table's `tenant_id=<t>/date=<d>/` directories.
pub(crate) struct TableFile {
    pub tenant: String,
    pub date: String,
    pub name: String,
    /// Relative to the table's root, as the manifest names it.
    pub rel: String,
}

/// Every file in the table's partition directories (none when the table does not exist yet).
pub(crate) fn table_files(root: &Path) -> Result<Vec<TableFile>> {
    let list = |dir: &Path| -> Result<Vec<std::fs::DirEntry>> {
        match std::fs::read_dir(dir) {
            Ok(entries) => Ok(entries.flatten().collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io(dir)(e)),
        }
    };
    let mut out = Vec::new();
    for tenant_dir in list(root)? {
        let tenant_name = tenant_dir.file_name().to_string_lossy().into_owned();
        let Some(tenant) = tenant_name.strip_prefix("tenant_id=") else {
            continue;
        };
        for date_dir in list(&tenant_dir.path())? {
            let date_name = date_dir.file_name().to_string_lossy().into_owned();
            let Some(date) = date_name.strip_prefix("date=") else {
                continue;
            };
            for file in list(&date_dir.path())? {
                let name = file.file_name().to_string_lossy().into_owned();
                out.push(TableFile {
                    tenant: tenant.to_owned(),
                    date: date.to_owned(),
                    rel: format!("{tenant_name}/{date_name}/{name}"),
                    name,
                });
            }
        }
    }
    Ok(out)
}

/// (source partition, first offset, last offset) of a shard file name `part-P-FIRST-LAST.parquet`.
fn shard_name(name: &str) -> Option<(i32, i64, i64)> {
    let mut parts = name
        .strip_prefix("part-")?
        .strip_suffix(".parquet")?
        .split('-');
    let parsed = (
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    );
    parts.next().is_none().then_some(parsed)
}

/// Reads the manifest of a shard table (empty if there is none yet).
pub fn read_manifest(root: &Path) -> Result<Vec<ShardEntry>> {
    let path = root.join(MANIFEST);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(aion_events::parse_manifest(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io(&path)(e)),
    }
}

/// The training shard table: one row per answer, with its retrieval's signals when joined.
impl ShardRecord for TrainingRow {
    fn event_id(&self) -> &str {
        &self.answer.event_id
    }

    fn tenant_id(&self) -> &str {
        &self.answer.tenant_id
    }

    fn date(&self) -> String {
        self.answer.ts.format("%Y-%m-%d").to_string()
    }

    /// Person names, addresses and other identifying entities the NER model found in the joined
    /// retrieval are replaced wherever they occur in the prompt and reply (any case), then the
    /// patterns run; the entity list keeps only placeholders of those.
    fn redact(&mut self, redactor: &Redactor, counts: &mut Counts) {
        let a = &mut self.answer;
        if let Some(signals) = self.retrieval.as_mut() {
            let private = PrivateEntities::of_terms(&signals.entities);
            a.prompt = private.redact(&a.prompt, counts);
            a.reply = private.redact(&a.reply, counts);
            if !private.is_empty() {
                let s = std::sync::Arc::make_mut(signals);
                for t in &mut s.entities {
                    if let Some(pii) = Pii::of_entity(&t.kind) {
                        t.text = pii.placeholder().to_owned();
                    }
                }
            }
        }
        a.prompt = redactor.redact(&a.prompt, counts);
        a.reply = redactor.redact(&a.reply, counts);
    }

    fn size(&self) -> usize {
        let entities = self
            .retrieval
            .as_ref()
            .map_or(0, |s| s.entities.iter().map(|t| t.text.len() + 4).sum());
        self.answer.prompt.len() + self.answer.reply.len() + entities + 136
    }

    fn schema() -> SchemaRef {
        aion_events::layout::schemas::shards()
    }

    fn batch(rows: &[(Self, i64)], partition: i32) -> Result<RecordBatch> {
        training_batch(rows, partition)
    }
}

impl<R: ShardRecord, A> ShardWriter<R, A> {
    /// Opens (or creates) the table at `root`. `redactor: None` writes raw text.
    pub fn open(root: &Path, policy: RollPolicy, redactor: Option<Redactor>) -> Result<Self> {
        std::fs::create_dir_all(root).map_err(io(root))?;
        let mut committed: BTreeMap<BufferKey, Vec<(i64, i64)>> = BTreeMap::new();
        let entries = read_manifest(root)?;
        let named: HashSet<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        let orphans = orphans(root, &named)?;
        for e in entries.iter().chain(&orphans) {
            committed
                .entry((e.source_partition, e.tenant_id.clone(), e.date.clone()))
                .or_default()
                .push((e.first_offset, e.last_offset));
        }
        let path = root.join(MANIFEST);
        let mut manifest = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        // A crash mid-append leaves a torn last line: end it, or the next entry would be glued
        // to it and lost with it. (Appending, not truncating: another writer may share the file.)
        let torn = std::fs::read(&path)
            .map_err(io(&path))?
            .last()
            .is_some_and(|b| *b != b'\n');
        if torn {
            manifest.write_all(b"\n").map_err(io(&path))?;
            manifest.sync_data().map_err(io(&path))?;
        }
        for entry in &orphans {
            tracing::warn!(path = %entry.path, rows = entry.rows, "adopting a shard file the manifest did not name (a stop between its rename and its entry)");
            append_entry(&mut manifest, &path, entry)?;
        }
        let migrated = migrate_types(root, &entries, &R::schema())?;
        if migrated > 0 {
            tracing::info!(files = migrated, table = %root.display(), "rewrote files of 0.1 with the current column types");
        }
        Ok(Self {
            root: root.to_owned(),
            policy,
            redactor,
            buffers: BTreeMap::new(),
            committed,
            manifest,
            replayed: Vec::new(),
            redactions: Counts::new(),
            skipped_replays: 0,
        })
    }

    /// Buffers one record. Returns false when the row is already in a committed shard (its ack
    /// comes back from the next roll) or duplicates an `event_id` of its buffer (its ack comes back
    /// with the buffer's).
    pub fn push(&mut self, partition: i32, offset: i64, mut record: R, ack: A) -> bool {
        let key = (partition, record.tenant_id().to_owned(), record.date());
        if self
            .committed
            .get(&key)
            .is_some_and(|ranges| ranges.iter().any(|&(f, l)| (f..=l).contains(&offset)))
        {
            self.skipped_replays += 1;
            self.replayed.push(ack);
            return false;
        }
        let buffer = self.buffers.entry(key).or_insert_with(|| Buffer {
            rows: Vec::new(),
            ids: HashSet::new(),
            acks: Vec::new(),
            first: offset,
            last: offset,
            bytes: 0,
            opened: Instant::now(),
        });
        buffer.last = offset;
        buffer.acks.push(ack);
        if !buffer.ids.insert(record.event_id().to_owned()) {
            return false;
        }
        if let Some(r) = &self.redactor {
            record.redact(r, &mut self.redactions);
        }
        buffer.bytes += record.size();
        buffer.rows.push((record, offset));
        true
    }

    /// Writes every buffer the policy says is due (all of them with `force`), returning the acks
    /// now durable (replays of committed rows included) and the new manifest entries.
    pub fn roll(&mut self, now: Instant, force: bool) -> Result<(Vec<A>, Vec<ShardEntry>)> {
        let due: Vec<BufferKey> = self
            .buffers
            .iter()
            .filter(|(_, b)| {
                force
                    || b.rows.len() >= self.policy.max_rows
                    || b.bytes >= self.policy.max_bytes
                    || now.duration_since(b.opened) >= self.policy.max_age
            })
            .map(|(k, _)| k.clone())
            .collect();
        let (mut acks, mut entries) = (std::mem::take(&mut self.replayed), Vec::new());
        for key in due {
            let Some(buffer) = self.buffers.remove(&key) else {
                continue;
            };
            let entry = self.write(&key, &buffer)?;
            self.committed
                .entry(key)
                .or_default()
                .push((entry.first_offset, entry.last_offset));
            acks.extend(buffer.acks);
            entries.push(entry);
        }
        Ok((acks, entries))
    }

    fn write(&mut self, key: &BufferKey, buffer: &Buffer<R, A>) -> Result<ShardEntry> {
        let (partition, tenant, date) = key;
        let rel = format!(
            "tenant_id={tenant}/date={date}/part-{partition:03}-{:012}-{:012}.parquet",
            buffer.first, buffer.last
        );
        aion_events::durable::replace_file(&self.root.join(&rel), |file| {
            let mut writer = ArrowWriter::try_new(file, R::schema(), Some(file_properties()))?;
            writer.write(&R::batch(&buffer.rows, *partition)?)?;
            Ok::<_, Error>(writer.into_inner()?)
        })?;
        let entry = ShardEntry {
            path: rel,
            tenant_id: tenant.clone(),
            date: date.clone(),
            source_partition: *partition,
            first_offset: buffer.first,
            last_offset: buffer.last,
            rows: buffer.rows.len(),
            replaces: Vec::new(),
        };
        append_entry(&mut self.manifest, &self.root.join(MANIFEST), &entry)?;
        Ok(entry)
    }

    /// Rows buffered, not yet in a file.
    pub fn buffered(&self) -> usize {
        self.buffers.values().map(|b| b.rows.len()).sum()
    }
}

/// In a table's root once every committed file has the current column types.
const TYPES_CURRENT: &str = "_types.v2";

/// Rewrites committed files whose columns differ in type from `schema` — 0.1 wrote `latency_ms`
/// and the entity `score` unsigned, which Spark reads as decimals and Hive and Athena refuse —
/// with those columns cast, in place and durably (same rows, so the manifest stays true); once
/// per table. How many it rewrote. A stop halfway is harmless: the next start finishes it.
fn migrate_types(root: &Path, entries: &[ShardEntry], schema: &SchemaRef) -> Result<usize> {
    let marker = root.join(TYPES_CURRENT);
    if marker.exists() {
        return Ok(0);
    }
    let mut rewritten = 0;
    for rel in aion_events::committed_files(entries) {
        let current = |f: &Field| {
            schema
                .field_with_name(f.name())
                .map_or_else(|_| f.data_type().clone(), |c| c.data_type().clone())
        };
        rewritten += usize::from(retype_file(&root.join(rel), current)?);
    }
    aion_events::durable::replace_bytes(&marker, b"")?;
    Ok(rewritten)
}

/// Rewrites the Parquet file at `path` in place, durably, with each column cast to the type
/// `retype` gives its field; whether any type changed (if none, the file is left alone).
fn retype_file(path: &Path, retype: impl Fn(&Field) -> DataType) -> Result<bool> {
    let file = File::open(path).map_err(io(path))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)?;
    let fields: Vec<Field> = reader
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_data_type(retype(f)))
        .collect();
    let target = Arc::new(Schema::new(fields));
    if target.fields() == reader.schema().fields() {
        return Ok(false);
    }
    let batches = reader.build()?.collect::<Result<Vec<_>, _>>()?;
    aion_events::durable::replace_file(path, |file| {
        let mut writer = ArrowWriter::try_new(file, target.clone(), Some(file_properties()))?;
        for batch in &batches {
            let columns = batch
                .columns()
                .iter()
                .zip(target.fields())
                .map(|(c, f)| datafusion::arrow::compute::cast(c, f.data_type()))
                .collect::<Result<Vec<_>, _>>()?;
            writer.write(&RecordBatch::try_new(target.clone(), columns)?)?;
        }
        Ok::<_, Error>(writer.into_inner()?)
    })?;
    Ok(true)
}

/// How every file of a shard table is written (compacted ones too): zstd, row groups of up to
/// 128k rows.
pub(crate) fn file_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(128 * 1024))
        .build()
}

fn training_batch(rows: &[(TrainingRow, i64)], partition: i32) -> Result<RecordBatch> {
    let n = rows.len();
    let text = |avg: usize| StringBuilder::with_capacity(n, n * avg);
    let (mut id, mut instruction, mut response) = (text(24), text(96), text(160));
    let (mut provider, mut model, mut retrieval) = (text(8), text(16), text(24));
    let mut ts = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut confidence = Float64Builder::with_capacity(n);
    let mut fallback = BooleanBuilder::with_capacity(n);
    let mut latency = Int64Builder::with_capacity(n);
    let mut ndcg = Float64Builder::with_capacity(n);
    let mut entities = ListBuilder::with_capacity(text(12), n);
    let mut source_partition = Int32Builder::with_capacity(n);
    let mut source_offset = Int64Builder::with_capacity(n);
    for (row, offset) in rows {
        let e = &row.answer;
        id.append_value(&e.event_id);
        ts.append_value(e.ts.timestamp_micros());
        instruction.append_value(&e.prompt);
        response.append_value(&e.reply);
        confidence.append_value(e.confidence);
        fallback.append_value(e.fallback);
        provider.append_value(&e.provider);
        model.append_value(&e.model);
        latency.append_value(i64::try_from(e.latency_ms).unwrap_or(i64::MAX));
        retrieval.append_option(e.retrieval_event_id.as_deref());
        match &row.retrieval {
            Some(s) => {
                ndcg.append_option(s.ndcg);
                for t in &s.entities {
                    entities.values().append_value(&t.text);
                }
                entities.append(true);
            }
            None => {
                ndcg.append_null();
                entities.append(false);
            }
        }
        source_partition.append_value(partition);
        source_offset.append_value(*offset);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(ts.finish()),
        Arc::new(instruction.finish()),
        Arc::new(response.finish()),
        Arc::new(confidence.finish()),
        Arc::new(fallback.finish()),
        Arc::new(provider.finish()),
        Arc::new(model.finish()),
        Arc::new(latency.finish()),
        Arc::new(retrieval.finish()),
        Arc::new(ndcg.finish()),
        Arc::new(entities.finish()),
        Arc::new(source_partition.finish()),
        Arc::new(source_offset.finish()),
    ];
    Ok(RecordBatch::try_new(
        aion_events::layout::schemas::shards(),
        columns,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The training table at `root`, rolling buffers at `max_rows`.
    fn writer(root: &Path, max_rows: usize) -> ShardWriter<TrainingRow, ()> {
        let policy = RollPolicy {
            max_rows,
            ..RollPolicy::default()
        };
        ShardWriter::open(root, policy, None).unwrap()
    }

    fn answer(id: &str, tenant: &str, prompt: &str) -> TrainingRow {
        TrainingRow {
            answer: serde_json::from_value(serde_json::json!({
                "event_id": id, "tenant_id": tenant, "ts": "2026-11-02T10:00:00Z",
                "prompt": prompt, "reply": "ok", "confidence": 0.9, "fallback": false,
                "provider": "local", "model": "m", "latency_ms": 3
            }))
            .unwrap(),
            retrieval: None,
        }
    }

    /// The type of `column` in the Parquet file at `path`, and its rows.
    fn column_type(path: &Path, column: &str) -> (DataType, usize) {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap();
        let t = reader
            .schema()
            .field_with_name(column)
            .unwrap()
            .data_type()
            .clone();
        (
            t,
            reader.build().unwrap().map(|b| b.unwrap().num_rows()).sum(),
        )
    }

    #[test]
    fn files_of_0_1_with_unsigned_columns_are_rewritten_signed_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), 2);
        for o in 0..4 {
            w.push(0, o, answer(&format!("e{o}"), "acme", "p"), ());
        }
        w.roll(Instant::now(), true).unwrap();
        drop(w);
        let files: Vec<PathBuf> = read_manifest(dir.path())
            .unwrap()
            .iter()
            .map(|e| dir.path().join(&e.path))
            .collect();
        assert!(!files.is_empty());
        let rows = |path: &Path| column_type(path, "latency_ms").1;
        let before: Vec<usize> = files.iter().map(|p| rows(p)).collect();
        assert_eq!(before.iter().sum::<usize>(), 4);
        // As 0.1 wrote them: latency_ms unsigned, and no marker.
        for path in &files {
            let unsigned = |f: &Field| match f.name().as_str() {
                "latency_ms" => DataType::UInt64,
                _ => f.data_type().clone(),
            };
            assert!(retype_file(path, unsigned).unwrap());
            assert_eq!(column_type(path, "latency_ms").0, DataType::UInt64);
        }
        std::fs::remove_file(dir.path().join(TYPES_CURRENT)).unwrap();

        let manifest = std::fs::read(dir.path().join(MANIFEST)).unwrap();
        drop(writer(dir.path(), 2));
        for (path, rows) in files.iter().zip(before) {
            assert_eq!(column_type(path, "latency_ms"), (DataType::Int64, rows));
        }
        assert_eq!(std::fs::read(dir.path().join(MANIFEST)).unwrap(), manifest);
        assert!(dir.path().join(TYPES_CURRENT).exists());
        // Once: the marker spares later starts the footers.
        assert_eq!(
            migrate_types(
                dir.path(),
                &read_manifest(dir.path()).unwrap(),
                &TrainingRow::schema()
            )
            .unwrap(),
            0
        );
    }

    #[test]
    fn rolled_rows_are_never_written_twice_after_a_replay() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), 3);
        for o in 0..5 {
            w.push(0, o, answer(&format!("e{o}"), "acme", "p"), ());
        }
        let (acks, entries) = w.roll(Instant::now(), false).unwrap();
        assert_eq!(
            (acks.len(), entries.len()),
            (5, 1),
            "the buffer of 3 rows (plus none) rolled"
        );
        assert_eq!(
            entries[0].path,
            "tenant_id=acme/date=2026-11-02/part-000-000000000000-000000000004.parquet"
        );
        assert_eq!(w.buffered(), 0);
        // A crash before the offsets were committed: the replay meets committed offsets.
        let mut again = writer(dir.path(), 3);
        for o in 0..6 {
            again.push(0, o, answer(&format!("e{o}"), "acme", "p"), ());
        }
        assert_eq!(again.skipped_replays, 5);
        assert_eq!(again.buffered(), 1);
        let (_, entries) = again.roll(Instant::now(), true).unwrap();
        assert_eq!(entries[0].first_offset, 5);
        assert_eq!(read_manifest(dir.path()).unwrap().len(), 2);
    }

    #[test]
    fn a_torn_last_manifest_line_does_not_swallow_the_next_entry() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), 1);
        w.push(0, 0, answer("e0", "acme", "p"), ());
        w.roll(Instant::now(), true).unwrap();
        drop(w);
        // A crash half-way through the second entry's line.
        let manifest = dir.path().join(MANIFEST);
        let mut text = std::fs::read_to_string(&manifest).unwrap();
        text += &text.clone()[..40];
        std::fs::write(&manifest, text).unwrap();
        let mut w = writer(dir.path(), 1);
        w.push(0, 1, answer("e1", "acme", "p"), ());
        w.roll(Instant::now(), true).unwrap();
        let offsets: Vec<i64> = read_manifest(dir.path())
            .unwrap()
            .iter()
            .map(|e| e.first_offset)
            .collect();
        assert_eq!(offsets, [0, 1]);
    }

    #[test]
    fn a_shard_file_without_its_manifest_entry_is_adopted_not_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), 2);
        for o in 0..2 {
            w.push(0, o, answer(&format!("e{o}"), "acme", "p"), ());
        }
        let (_, entries) = w.roll(Instant::now(), false).unwrap();
        drop(w);
        // A stop between the file's rename and its manifest entry.
        std::fs::write(dir.path().join(MANIFEST), "").unwrap();
        std::fs::write(
            dir.path().join("tenant_id=acme/date=2026-11-02/notes.txt"),
            "x",
        )
        .unwrap();
        let mut again = writer(dir.path(), 2);
        assert_eq!(
            read_manifest(dir.path()).unwrap(),
            entries,
            "adopted as written"
        );
        // The replay meets the adopted offsets: nothing is written twice.
        for o in 0..3 {
            again.push(0, o, answer(&format!("e{o}"), "acme", "p"), ());
        }
        assert_eq!((again.skipped_replays, again.buffered()), (2, 1));
    }

    #[test]
    fn duplicate_event_ids_in_a_buffer_are_written_once_and_pii_never_reaches_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut w: ShardWriter<TrainingRow, ()> =
            ShardWriter::open(dir.path(), RollPolicy::default(), Some(Redactor::new())).unwrap();
        assert!(w.push(1, 7, answer("x", "acme", "CPF 529.982.247-25, a@b.com"), ()));
        assert!(!w.push(1, 8, answer("x", "acme", "CPF 529.982.247-25, a@b.com"), ()));
        let (acks, entries) = w.roll(Instant::now(), true).unwrap();
        assert_eq!((acks.len(), entries[0].rows), (2, 1));
        let file = File::open(dir.path().join(&entries[0].path)).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let col = batch.column_by_name("instruction").unwrap();
            let text = datafusion::arrow::array::AsArray::as_string::<i32>(col).value(0);
            assert_eq!(text, "CPF <CPF>, <EMAIL>");
        }
        assert_eq!(w.redactions.values().sum::<u64>(), 2);
    }
}
