//! Compaction of a shard table: the small files the writer rolls (one per source partition,
//! tenant and day every minute by default) merged into large ones, exactly once.
//!
//! A run of consecutive files of one (source partition, tenant, day) becomes
//! `compact-<partition>-<first offset>-<last offset>.parquet` beside them: written under a
//! temporary name, fsynced and renamed, then committed by one manifest line that names the files
//! it `replaces`. Readers resolve the table through the manifest, so the switch is that one
//! append: before it they read the small files, after it the compacted one. A crash before the
//! append leaves an unnamed compacted file readers never see (the next pass removes it); the
//! offsets range of the new entry is the union of the old ones, so the writer's replay check is
//! unchanged. Replaced files are deleted by a later pass, `grace` after their replacement, so a
//! query or a training job that listed them just before still finds them.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::path::Path;
use std::time::{Duration, SystemTime};

use aion_events::ShardEntry;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::arrow::ArrowWriter;
use tracing::{info, warn};

use crate::writer::{append_entry, file_properties, io, table_files};
use crate::{read_manifest, Error, Remote, Result, MANIFEST};

/// Lock file of a table's compaction: one compactor per table at a time.
const LOCK: &str = "_compaction.lock";
/// Name prefix of compacted files (the writer's own files start with `part-`).
const PREFIX: &str = "compact-";

/// Which files are merged, and when replaced ones go.
#[derive(Debug, Clone)]
pub struct CompactPolicy {
    /// A compacted file holds at most this many rows; files this large are left as they are.
    pub target_rows: usize,
    /// A run of fewer files than this is not worth a rewrite.
    pub min_files: usize,
    /// How long replaced files stay after their replacement is committed, for readers that
    /// listed them before.
    pub grace: Duration,
}

impl Default for CompactPolicy {
    fn default() -> Self {
        // A day of one tenant's one-minute files is 1,440 files; a million rows scan well in one
        // file. 15 minutes is longer than any query and than a trainer needs to read its rows.
        Self {
            target_rows: 1_000_000,
            min_files: 2,
            grace: Duration::from_secs(15 * 60),
        }
    }
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Compacted {
    /// Files replaced by this pass.
    pub replaced: usize,
    /// Compacted files this pass wrote.
    pub written: usize,
    /// Rows those hold.
    pub rows: usize,
    /// Files deleted: replaced longer than `grace` ago, or compacted by a pass that stopped
    /// before committing them.
    pub deleted: usize,
}

/// One compaction pass over the table at `root`. With `remote`, a compacted file is uploaded
/// before the manifest line that commits it, and the manifest after.
pub async fn compact(
    root: &Path,
    policy: &CompactPolicy,
    remote: Option<&Remote>,
) -> Result<Compacted> {
    let mut done = Compacted::default();
    let manifest_path = root.join(MANIFEST);
    if !manifest_path.exists() {
        return Ok(done);
    }
    let lock_path = root.join(LOCK);
    let lock = File::create(&lock_path).map_err(io(&lock_path))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(Error::Manifest(format!(
                "{}: another compaction of this table is running",
                root.display()
            )))
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
    }
    let entries = read_manifest(root)?;
    done.deleted += vacuum(root, &entries, policy.grace, remote).await?;

    let live = aion_events::committed_files(&entries);
    let mut groups: BTreeMap<(i32, &str, &str), Vec<&ShardEntry>> = BTreeMap::new();
    for e in entries.iter().filter(|e| live.contains(e.path.as_str())) {
        groups
            .entry((e.source_partition, &e.tenant_id, &e.date))
            .or_default()
            .push(e);
    }
    let mut manifest = OpenOptions::new()
        .append(true)
        .open(&manifest_path)
        .map_err(io(&manifest_path))?;
    for files in groups.values_mut() {
        files.sort_by_key(|e| e.first_offset);
        for run in runs(files, policy) {
            let Some(entry) = merge(root, run)? else {
                continue;
            };
            if let Some(remote) = remote {
                remote
                    .upload_files(root, std::slice::from_ref(&entry))
                    .await?;
            }
            append_entry(&mut manifest, &manifest_path, &entry)?;
            info!(path = %entry.path, files = run.len(), rows = entry.rows, "compacted");
            done.replaced += run.len();
            done.written += 1;
            done.rows += entry.rows;
        }
    }
    if let Some(remote) = remote.filter(|_| done.written > 0) {
        remote.upload_manifest(root).await?;
    }
    if policy.grace.is_zero() && done.written > 0 {
        done.deleted += vacuum(root, &read_manifest(root)?, Duration::ZERO, remote).await?;
    }
    Ok(done)
}

/// Consecutive files (by offset) whose rows fit `target_rows` together, `min_files` or more; a
/// file as large as the target stays alone.
fn runs<'a>(files: &'a [&'a ShardEntry], policy: &CompactPolicy) -> Vec<&'a [&'a ShardEntry]> {
    let min = policy.min_files.max(2);
    let mut out = Vec::new();
    let mut flush = |run: &'a [&'a ShardEntry]| {
        if run.len() >= min {
            out.push(run);
        }
    };
    let (mut start, mut rows) = (0, 0);
    for (i, e) in files.iter().enumerate() {
        if e.rows >= policy.target_rows {
            flush(&files[start..i]);
            (start, rows) = (i + 1, 0);
            continue;
        }
        if rows + e.rows > policy.target_rows {
            flush(&files[start..i]);
            (start, rows) = (i, 0);
        }
        rows += e.rows;
    }
    flush(&files[start..]);
    out
}

/// Writes the rows of `run` into one file; its entry, or none when the files' schemas differ
/// (written by different versions: left for a migration, not mixed).
fn merge(root: &Path, run: &[&ShardEntry]) -> Result<Option<ShardEntry>> {
    let (head, tail) = (run[0], run[run.len() - 1]);
    let dir = head
        .path
        .rsplit_once('/')
        .map_or(String::new(), |(d, _)| format!("{d}/"));
    let rel = format!(
        "{dir}{PREFIX}{:03}-{:012}-{:012}.parquet",
        head.source_partition, head.first_offset, tail.last_offset
    );
    let readers = run
        .iter()
        .map(|e| {
            let path = root.join(&e.path);
            let file = File::open(&path).map_err(io(&path))?;
            Ok(ParquetRecordBatchReaderBuilder::try_new(file)?)
        })
        .collect::<Result<Vec<_>>>()?;
    let schema = readers[0].schema().clone();
    if let Some(other) = run
        .iter()
        .zip(&readers)
        .find(|(_, r)| r.schema() != &schema)
    {
        warn!(first = %head.path, other = %other.0.path, "not compacted: the files' schemas differ");
        return Ok(None);
    }
    let expected: usize = run.iter().map(|e| e.rows).sum();
    let mut rows = 0;
    aion_events::durable::replace_file(&root.join(&rel), |file| {
        let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(file_properties()))?;
        for reader in readers {
            for batch in reader.build()? {
                let batch = batch?;
                rows += batch.num_rows();
                writer.write(&batch)?;
            }
        }
        if rows != expected {
            return Err(Error::Manifest(format!(
                "{rel}: the manifest names {expected} rows in the files it replaces, they hold {rows}"
            )));
        }
        Ok::<_, Error>(writer.into_inner()?)
    })?;
    Ok(Some(ShardEntry {
        path: rel,
        tenant_id: head.tenant_id.clone(),
        date: head.date.clone(),
        source_partition: head.source_partition,
        first_offset: head.first_offset,
        last_offset: tail.last_offset,
        rows,
        replaces: run.iter().map(|e| e.path.clone()).collect(),
    }))
}

/// Deletes files replaced at least `grace` ago (by the compacted file's modification time) and
/// compacted files no manifest line names (a pass stopped before committing them); from `remote`
/// first, so the copy never keeps a file the local table dropped (its readers would count the
/// rows twice).
async fn vacuum(
    root: &Path,
    entries: &[ShardEntry],
    grace: Duration,
    remote: Option<&Remote>,
) -> Result<usize> {
    let named: HashSet<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    let live = aion_events::committed_files(entries);
    let now = SystemTime::now();
    let mut doomed = Vec::new();
    for e in entries.iter().filter(|e| !e.replaces.is_empty()) {
        let path = root.join(&e.path);
        let age = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .map_err(io(&path))?;
        if now.duration_since(age).unwrap_or_default() >= grace {
            doomed.extend(
                e.replaces
                    .iter()
                    .filter(|r| !live.contains(r.as_str()) && root.join(r).exists())
                    .cloned(),
            );
        }
    }
    for file in table_files(root)? {
        if file.name.starts_with(PREFIX) && !named.contains(file.rel.as_str()) {
            warn!(path = %file.rel, "removing a compacted file that was never committed");
            doomed.push(file.rel);
        }
    }
    if let Some(remote) = remote {
        remote.delete_files(&doomed).await?;
    }
    let mut deleted = 0;
    for rel in &doomed {
        let path = root.join(rel);
        match std::fs::remove_file(&path) {
            Ok(()) => deleted += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::{RollPolicy, ShardWriter, TrainingRow};

    fn answer(id: &str, tenant: &str, day: u32) -> TrainingRow {
        TrainingRow {
            answer: serde_json::from_value(serde_json::json!({
                "event_id": id, "tenant_id": tenant, "ts": format!("2026-11-{day:02}T10:00:00Z"),
                "prompt": format!("question {id}"), "reply": "ok", "confidence": 0.9,
                "fallback": false, "provider": "local", "model": "m", "latency_ms": 3
            }))
            .unwrap(),
            retrieval: None,
        }
    }

    /// Writes `n` answers over two tenants and two days on partitions 0 and 1, one file per
    /// answer (the writer's minute rolls, compressed).
    fn table(root: &Path, n: i64) -> ShardWriter<TrainingRow, ()> {
        let mut w = ShardWriter::open(root, RollPolicy::default(), None).unwrap();
        for o in 0..n {
            let tenant = if o % 3 == 0 { "globex" } else { "acme" };
            let row = answer(&format!("e{o}"), tenant, 2 + (o % 2) as u32);
            w.push((o % 2) as i32, o, row, ());
            w.roll(Instant::now(), true).unwrap();
        }
        w
    }

    /// (event ids, file count) a reader of the committed files sees.
    fn rows(root: &Path) -> (Vec<String>, usize) {
        let entries = read_manifest(root).unwrap();
        let live = aion_events::committed_files(&entries);
        let mut ids = Vec::new();
        for rel in &live {
            let file = File::open(root.join(rel)).unwrap();
            for batch in ParquetRecordBatchReaderBuilder::try_new(file)
                .unwrap()
                .build()
                .unwrap()
            {
                let batch = batch.unwrap();
                let col = batch.column_by_name("event_id").unwrap();
                let col = datafusion::arrow::array::AsArray::as_string::<i32>(col);
                ids.extend(col.iter().flatten().map(str::to_owned));
            }
        }
        ids.sort();
        (ids, live.len())
    }

    fn parquet_files(root: &Path) -> usize {
        table_files(root)
            .unwrap()
            .iter()
            .filter(|f| f.name.ends_with(".parquet"))
            .count()
    }

    #[tokio::test]
    async fn compaction_keeps_every_row_once_and_the_writer_still_skips_its_replays() {
        let dir = tempfile::tempdir().unwrap();
        drop(table(dir.path(), 40));
        let before = rows(dir.path());
        assert_eq!((before.0.len(), before.1), (40, 40));
        let snapshot = aion_events::manifest_lines(dir.path()).unwrap();

        let policy = CompactPolicy {
            grace: Duration::from_secs(3600),
            ..CompactPolicy::default()
        };
        let done = compact(dir.path(), &policy, None).await.unwrap();
        // (partition, tenant, day): partition 0 holds day 2, partition 1 day 3; both tenants.
        assert_eq!((done.replaced, done.written, done.rows), (40, 4, 40));
        let after = rows(dir.path());
        assert_eq!(after.0, before.0, "the same rows, once");
        assert_eq!(after.1, 4);
        // Within the grace the replaced files stay for readers that listed them.
        assert_eq!(parquet_files(dir.path()), 44);
        // A trigger's snapshot from before resolves to the compacted files.
        let acme = aion_events::tenant_shards(dir.path(), "acme", Some(snapshot)).unwrap();
        assert_eq!(acme.len(), 2);
        assert!(acme.iter().all(|p| p.contains("/compact-")));
        // A second pass has nothing to merge.
        let again = compact(dir.path(), &policy, None).await.unwrap();
        assert_eq!(again.written, 0);

        // The writer restarted from offset 0 (a replay) writes nothing again.
        let mut w: ShardWriter<TrainingRow, ()> =
            ShardWriter::open(dir.path(), RollPolicy::default(), None).unwrap();
        for o in 0..42 {
            let tenant = if o % 3 == 0 { "globex" } else { "acme" };
            w.push(
                (o % 2) as i32,
                o,
                answer(&format!("e{o}"), tenant, 2 + (o % 2) as u32),
                (),
            );
        }
        assert_eq!((w.skipped_replays, w.buffered()), (40, 2));
        w.roll(Instant::now(), true).unwrap();
        assert_eq!(rows(dir.path()).0.len(), 42);

        // After the grace the replaced files go; the new files are compacted with the old.
        let now = CompactPolicy {
            grace: Duration::ZERO,
            ..policy
        };
        let done = compact(dir.path(), &now, None).await.unwrap();
        assert_eq!((done.replaced, done.written), (4, 2));
        assert_eq!(done.deleted, 40 + 4);
        assert_eq!(parquet_files(dir.path()), 4);
        let last = rows(dir.path());
        assert_eq!((last.0.len(), last.1), (42, 4));
    }

    #[tokio::test]
    async fn a_compacted_file_never_committed_is_invisible_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        drop(table(dir.path(), 6));
        let manifest = std::fs::read(dir.path().join(MANIFEST)).unwrap();
        compact(dir.path(), &CompactPolicy::default(), None)
            .await
            .unwrap();
        // A stop between the compacted files' rename and their manifest lines.
        std::fs::write(dir.path().join(MANIFEST), manifest).unwrap();
        assert_eq!(rows(dir.path()).0.len(), 6);
        // Two (partition, tenant, day) groups had two files each.
        assert_eq!(parquet_files(dir.path()), 6 + 2);
        // The writer does not adopt it as one of its own files.
        drop(
            ShardWriter::<TrainingRow, ()>::open(dir.path(), RollPolicy::default(), None).unwrap(),
        );
        assert_eq!(read_manifest(dir.path()).unwrap().len(), 6);
        let done = compact(dir.path(), &CompactPolicy::default(), None)
            .await
            .unwrap();
        assert_eq!((done.deleted, done.written), (2, 2));
        assert_eq!(rows(dir.path()).0.len(), 6);
    }

    #[tokio::test]
    async fn the_remote_copy_drops_what_the_local_table_drops() {
        let (dir, bucket) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        drop(table(dir.path(), 10));
        let remote = Remote::parse(&format!("file://{}", bucket.path().display())).unwrap();
        assert_eq!(remote.catch_up(dir.path()).await.unwrap(), 10);
        let now = CompactPolicy {
            grace: Duration::ZERO,
            ..CompactPolicy::default()
        };
        let done = compact(dir.path(), &now, Some(&remote)).await.unwrap();
        assert_eq!((done.replaced, done.deleted), (10, 10));
        let files = |root: &Path| {
            let mut names: Vec<String> = table_files(root)
                .unwrap()
                .into_iter()
                .map(|f| f.rel)
                .filter(|r| r.ends_with(".parquet"))
                .collect();
            names.sort();
            names
        };
        assert_eq!(files(bucket.path()), files(dir.path()));
        assert_eq!(files(bucket.path()).len(), 4);
        assert_eq!(
            std::fs::read(bucket.path().join(MANIFEST)).unwrap(),
            std::fs::read(dir.path().join(MANIFEST)).unwrap()
        );
    }

    #[test]
    fn runs_fit_the_target_and_leave_large_files_alone() {
        let entry = |rows| ShardEntry {
            path: String::new(),
            tenant_id: String::new(),
            date: String::new(),
            source_partition: 0,
            first_offset: 0,
            last_offset: 0,
            rows,
            replaces: Vec::new(),
        };
        let files: Vec<ShardEntry> = [3, 3, 3, 10, 2, 2, 9, 1].into_iter().map(entry).collect();
        let refs: Vec<&ShardEntry> = files.iter().collect();
        let policy = CompactPolicy {
            target_rows: 10,
            ..CompactPolicy::default()
        };
        let sizes: Vec<Vec<usize>> = runs(&refs, &policy)
            .iter()
            .map(|r| r.iter().map(|e| e.rows).collect())
            .collect();
        assert_eq!(sizes, [vec![3, 3, 3], vec![2, 2], vec![9, 1]]);
    }
}
