//! What readers see of the Parquet tables the stages write. A shard table (training shards, entity
//! mentions, labels) is the set of files its manifest commits, compactions applied
//! ([`aion_events::committed_files`]), not whatever its directories hold: a file renamed into
//! place but not yet committed, or replaced by a compaction and not yet deleted, is not part of
//! it. [`runtime`] gives DataFusion a local file system that lists exactly that, so SQL over a
//! table never counts a row twice or misses one while it is being compacted. Tables without a
//! manifest (the window tables) are listed as they are.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// A DataFusion runtime whose `file://` store lists only committed files, with no cache of file
/// listings (DataFusion keeps them forever by default; a session kept between queries must see
/// the files committed since).
pub fn runtime() -> datafusion::error::Result<Arc<RuntimeEnv>> {
    let runtime = RuntimeEnvBuilder::new()
        .with_object_list_cache_limit(0)
        .build_arc()?;
    runtime.register_object_store(
        ObjectStoreUrl::local_filesystem().as_ref(),
        Arc::new(Committed::default()),
    );
    Ok(runtime)
}

/// A table's committed files (relative paths) as of its manifest's size and modification time.
type Snapshot = (u64, SystemTime, Arc<HashSet<PathBuf>>);

/// The local file system, listing only the committed files of tables that have a manifest.
#[derive(Debug, Default)]
pub struct Committed {
    fs: Arc<LocalFileSystem>,
    /// Parsed manifests by table root: parsed again only when the manifest changed.
    manifests: Arc<Mutex<HashMap<PathBuf, Snapshot>>>,
}

impl std::fmt::Display for Committed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Committed({})", self.fs)
    }
}

/// Decides, per listed object, whether readers see it.
struct Filter {
    fs: Arc<LocalFileSystem>,
    manifests: Arc<Mutex<HashMap<PathBuf, Snapshot>>>,
    /// Tables met in this listing: their committed files, or `None` without a manifest.
    seen: HashMap<PathBuf, Option<Arc<HashSet<PathBuf>>>>,
}

impl Filter {
    fn keeps(&mut self, location: &Path) -> Result<bool> {
        let path = self.fs.path_to_filesystem(location)?;
        // The table root is the directory above the first Hive partition `tenant_id=...`.
        let Some((root, rel)) = split_at_partition(&path) else {
            return Ok(true);
        };
        if !self.seen.contains_key(&root) {
            let committed = self.committed(&root)?;
            self.seen.insert(root.clone(), committed);
        }
        Ok(match &self.seen[&root] {
            Some(files) => files.contains(&rel),
            None => true,
        })
    }

    /// Reads the manifest of the table `prefix` is in (or is the root of) before anything is
    /// listed. Read after the listing, a compaction committing in between would hide both the
    /// files it replaces (the manifest says so) and the one it wrote (listed too early).
    fn prime(&mut self, prefix: Option<&Path>) -> Result<()> {
        let Some(prefix) = prefix else {
            return Ok(());
        };
        let path = self.fs.path_to_filesystem(prefix)?;
        let root = split_at_partition(&path).map_or(path, |(root, _)| root);
        if !self.seen.contains_key(&root) {
            let committed = self.committed(&root)?;
            self.seen.insert(root, committed);
        }
        Ok(())
    }

    fn committed(&self, root: &FsPath) -> Result<Option<Arc<HashSet<PathBuf>>>> {
        let manifest = root.join(aion_events::SHARD_MANIFEST);
        let meta = match std::fs::metadata(&manifest) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(generic(&manifest, e)),
        };
        let modified = meta.modified().map_err(|e| generic(&manifest, e))?;
        let mut cache = self
            .manifests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((len, at, files)) = cache.get(root) {
            if (*len, *at) == (meta.len(), modified) {
                return Ok(Some(files.clone()));
            }
        }
        let text = std::fs::read_to_string(&manifest).map_err(|e| generic(&manifest, e))?;
        let entries = aion_events::parse_manifest(&text);
        // Sized and stamped before the read: a line appended meanwhile changes them, so the
        // next listing parses again.
        let files: Arc<HashSet<PathBuf>> = Arc::new(
            aion_events::committed_files(&entries)
                .into_iter()
                .map(PathBuf::from)
                .collect(),
        );
        cache.insert(root.to_owned(), (meta.len(), modified, files.clone()));
        Ok(Some(files))
    }
}

/// (table root, path below it) of a file under a `tenant_id=` partition directory.
fn split_at_partition(path: &FsPath) -> Option<(PathBuf, PathBuf)> {
    let mut root = PathBuf::new();
    let mut components = path.components();
    for c in components.by_ref() {
        if c.as_os_str().to_string_lossy().starts_with("tenant_id=") {
            let mut rel = PathBuf::from(c.as_os_str());
            rel.extend(components);
            return Some((root, rel));
        }
        root.push(c);
    }
    None
}

fn generic(path: &FsPath, e: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "Committed",
        source: format!("{}: {e}", path.display()).into(),
    }
}

impl Committed {
    fn filter(&self) -> Filter {
        Filter {
            fs: self.fs.clone(),
            manifests: self.manifests.clone(),
            seen: HashMap::new(),
        }
    }
}

#[async_trait::async_trait]
impl ObjectStore for Committed {
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let mut filter = self.filter();
        if let Err(e) = filter.prime(prefix) {
            return futures::stream::once(futures::future::ready(Err(e))).boxed();
        }
        self.fs
            .list(prefix)
            .try_filter_map(move |meta| {
                futures::future::ready(filter.keeps(&meta.location).map(|k| k.then_some(meta)))
            })
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let mut filter = self.filter();
        filter.prime(prefix)?;
        let mut listed = self.fs.list_with_delimiter(prefix).await?;
        let mut objects = Vec::with_capacity(listed.objects.len());
        for meta in listed.objects {
            if filter.keeps(&meta.location)? {
                objects.push(meta);
            }
        }
        listed.objects = objects;
        Ok(listed)
    }

    // Reads and writes go to the file system as they are.

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.fs.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.fs.get_ranges(location, ranges).await
    }

    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.fs.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.fs.put_multipart_opts(location, opts).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.fs.delete_stream(locations)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.fs.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_root_is_above_the_first_tenant_partition() {
        let (root, rel) =
            split_at_partition(FsPath::new("/s/shards/tenant_id=a/date=d/part-1.parquet")).unwrap();
        assert_eq!(root, FsPath::new("/s/shards"));
        assert_eq!(rel, FsPath::new("tenant_id=a/date=d/part-1.parquet"));
        assert!(split_at_partition(FsPath::new("/s/shards/_manifest.jsonl")).is_none());
    }

    #[tokio::test]
    async fn a_listing_holds_the_committed_files_of_manifest_tables_and_everything_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let file = |rel: &str| {
            let path = dir.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"x").unwrap();
        };
        for rel in [
            "shards/tenant_id=a/date=d/part-1.parquet",
            "shards/tenant_id=a/date=d/part-2.parquet",
            "shards/tenant_id=a/date=d/compact-1.parquet",
            "shards/tenant_id=a/date=d/part-3.parquet",
            "metrics/tenant_id=a/date=d/w.parquet",
        ] {
            file(rel);
        }
        let line = |path: &str, replaces: &[&str]| {
            serde_json::json!({"path": path, "tenant_id": "a", "date": "d", "source_partition": 0,
                "first_offset": 0, "last_offset": 0, "rows": 1, "replaces": replaces})
            .to_string()
                + "\n"
        };
        // part-3 is renamed into place but not committed; part-1/2 were compacted.
        let manifest = line("tenant_id=a/date=d/part-1.parquet", &[])
            + &line("tenant_id=a/date=d/part-2.parquet", &[])
            + &line(
                "tenant_id=a/date=d/compact-1.parquet",
                &[
                    "tenant_id=a/date=d/part-1.parquet",
                    "tenant_id=a/date=d/part-2.parquet",
                ],
            );
        std::fs::write(dir.path().join("shards/_manifest.jsonl"), manifest).unwrap();

        let store = Committed::default();
        let prefix = Path::from_filesystem_path(dir.path()).unwrap();
        let mut listed: Vec<String> = store
            .list(Some(&prefix))
            .map_ok(|m| m.location.as_ref().rsplit('/').next().unwrap().to_owned())
            .try_collect()
            .await
            .unwrap();
        listed.sort();
        assert_eq!(
            listed,
            ["_manifest.jsonl", "compact-1.parquet", "w.parquet"]
        );

        let day = Path::from_filesystem_path(dir.path().join("shards/tenant_id=a/date=d")).unwrap();
        let objects = store.list_with_delimiter(Some(&day)).await.unwrap().objects;
        assert_eq!(objects.len(), 1);
        assert!(objects[0].location.as_ref().ends_with("compact-1.parquet"));
    }
}
