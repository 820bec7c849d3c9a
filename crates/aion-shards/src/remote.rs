//! A copy of the shard tables on object storage (S3 or any S3-compatible service, or another
//! `object_store` URL), kept in step with the local tables: a committed file is uploaded under the
//! same relative path before its rows' offsets are stored, then the manifest. An object PUT is
//! atomic, so readers of the bucket never see part of a file.
//!
//! Files committed locally whose upload did not happen (a crash in between) are uploaded when the
//! stage starts: the local table is the source the copy is rebuilt from.

use std::path::Path;
use std::sync::Arc;

use aion_events::ShardEntry;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tracing::info;

use crate::writer::io;
use crate::{read_manifest, Error, Result, MANIFEST};

/// Where a shard table is copied to.
#[derive(Debug, Clone)]
pub struct Remote {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
}

impl Remote {
    /// `s3://bucket/prefix` (credentials, region and endpoint from the usual `AWS_*` variables:
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT` for MinIO and
    /// other S3-compatible services, `AWS_ALLOW_HTTP=true` for a plain-http endpoint), or
    /// `file:///absolute/dir`.
    pub fn parse(url: &str) -> Result<Self> {
        let parsed = url::Url::parse(url).map_err(|e| remote_err(url, e))?;
        let (store, prefix): (Arc<dyn ObjectStore>, ObjectPath) = if parsed.scheme() == "s3" {
            let store = object_store::aws::AmazonS3Builder::from_env()
                .with_url(url)
                .build()
                .map_err(|e| remote_err(url, e))?;
            let prefix =
                ObjectPath::from_url_path(parsed.path()).map_err(|e| remote_err(url, e))?;
            (Arc::new(store), prefix)
        } else {
            let (store, prefix) =
                object_store::parse_url(&parsed).map_err(|e| remote_err(url, e))?;
            (Arc::from(store), prefix)
        };
        Ok(Self { store, prefix })
    }

    /// `<prefix>/<table>`: each table under its own name, as in the state dir.
    pub fn table(&self, table: &str) -> Self {
        Self {
            store: self.store.clone(),
            prefix: self.prefix.clone().join(table),
        }
    }

    /// Uploads `entries` (committed files of the table at `root`) and then the manifest.
    pub async fn upload(&self, root: &Path, entries: &[ShardEntry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        self.upload_files(root, entries).await?;
        self.upload_manifest(root).await
    }

    /// Uploads the files of `entries` (before the manifest line that commits them is).
    pub async fn upload_files(&self, root: &Path, entries: &[ShardEntry]) -> Result<()> {
        for e in entries {
            self.put(root, &e.path).await?;
        }
        Ok(())
    }

    /// Uploads the table's manifest as it is now.
    pub async fn upload_manifest(&self, root: &Path) -> Result<()> {
        self.put(root, MANIFEST).await
    }

    /// Deletes files (relative paths) from the copy; one already gone is fine.
    pub async fn delete_files(&self, rels: &[String]) -> Result<()> {
        for rel in rels {
            let location = self.location(rel)?;
            match self.store.delete(&location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(Error::Remote(format!("{location}: {e}"))),
            }
        }
        Ok(())
    }

    /// Uploads every file the table at `root` consists of (compactions applied) that the remote
    /// copy lacks or holds at another size.
    pub async fn catch_up(&self, root: &Path) -> Result<usize> {
        let entries = read_manifest(root)?;
        let live = aion_events::committed_files(&entries);
        let mut missing = Vec::new();
        for e in entries
            .iter()
            .filter(|e| live.contains(e.path.as_str()))
            .cloned()
        {
            let location = self.location(&e.path)?;
            let path = root.join(&e.path);
            let size = std::fs::metadata(&path).map_err(io(&path))?.len();
            match self.store.head(&location).await {
                // A copy of another size was rewritten here since (the column types of 0.1).
                Ok(meta) if meta.size == size => {}
                Ok(_) | Err(object_store::Error::NotFound { .. }) => missing.push(e),
                Err(e) => return Err(Error::Remote(e.to_string())),
            }
        }
        if !missing.is_empty() {
            info!(files = missing.len(), prefix = %self.prefix, "uploading shards committed before a crash");
        }
        self.upload(root, &missing).await?;
        Ok(missing.len())
    }

    async fn put(&self, root: &Path, rel: &str) -> Result<()> {
        let path = root.join(rel);
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        let location = self.location(rel)?;
        self.store
            .put(&location, PutPayload::from(bytes))
            .await
            .map_err(|e| Error::Remote(format!("{location}: {e}")))?;
        Ok(())
    }

    fn location(&self, rel: &str) -> Result<ObjectPath> {
        let mut location = self.prefix.clone();
        for part in rel.split('/') {
            let part = object_store::path::PathPart::parse(part)
                .map_err(|e| Error::Remote(format!("{rel}: {e}")))?;
            location = location.join(part);
        }
        Ok(location)
    }
}

fn remote_err(url: &str, e: impl std::fmt::Display) -> Error {
    Error::Remote(format!("object store {url}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn committed_files_and_the_manifest_reach_the_copy_and_missing_ones_catch_up() {
        let local = tempfile::tempdir().unwrap();
        let bucket = tempfile::tempdir().unwrap();
        let rel = "tenant_id=acme/date=2026-11-02/part-000-000000000000-000000000001.parquet";
        std::fs::create_dir_all(local.path().join(rel).parent().unwrap()).unwrap();
        std::fs::write(local.path().join(rel), b"parquet bytes").unwrap();
        let entry = ShardEntry {
            path: rel.into(),
            tenant_id: "acme".into(),
            date: "2026-11-02".into(),
            source_partition: 0,
            first_offset: 0,
            last_offset: 1,
            rows: 2,
            replaces: Vec::new(),
        };
        let line = serde_json::to_string(&entry).unwrap() + "\n";
        std::fs::write(local.path().join(MANIFEST), line).unwrap();

        let url = format!("file://{}", bucket.path().display());
        let remote = Remote::parse(&url).unwrap().table("shards");
        assert_eq!(remote.catch_up(local.path()).await.unwrap(), 1);
        let copied = bucket.path().join("shards").join(rel);
        assert_eq!(std::fs::read(&copied).unwrap(), b"parquet bytes");
        assert!(bucket.path().join("shards").join(MANIFEST).is_file());
        assert_eq!(
            remote.catch_up(local.path()).await.unwrap(),
            0,
            "nothing left"
        );
        // A file rewritten here since (the column types of 0.1) is uploaded again.
        std::fs::write(local.path().join(rel), b"parquet bytes, signed").unwrap();
        assert_eq!(remote.catch_up(local.path()).await.unwrap(), 1);
        assert_eq!(std::fs::read(&copied).unwrap(), b"parquet bytes, signed");

        assert!(Remote::parse("not a url").is_err());
        assert!(Remote::parse("nosuch://bucket/x").is_err());
    }
}
