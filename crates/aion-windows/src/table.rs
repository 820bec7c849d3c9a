//! The Parquet metrics table: `<root>/tenant_id=<t>/date=<YYYY-MM-DD>/w-<window end>.parquet`,
//! one file per tenant and window end (every window of the tenant that closed at that instant).
//!
//! The file name is a function of the windows it holds, so a replay rewrites the same file, and
//! its existence says the windows' results are durable: the topic records are acknowledged
//! before the file is renamed into place.

use std::fs::File;
use std::path::{Path, PathBuf};

use chrono::DateTime;
use datafusion::arrow::array::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;

use crate::operator::Micros;
use crate::{Error, Result};

/// A Hive-partitioned Parquet table of window results.
#[derive(Debug, Clone)]
pub struct MetricsTable {
    root: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

impl MetricsTable {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file of `tenant`'s windows ending at `end`. The date is the day of the windows' last
    /// instant, so the windows of a day (and the day window itself) land under that day.
    pub fn path(&self, tenant: &str, end: Micros) -> PathBuf {
        // Tenant ids were validated on decode: they cannot leave their directory.
        let last = DateTime::from_timestamp_micros(end - 1).unwrap_or_default();
        let end = DateTime::from_timestamp_micros(end).unwrap_or_default();
        self.root
            .join(format!("tenant_id={tenant}"))
            .join(format!("date={}", last.format("%Y-%m-%d")))
            .join(format!("w-{}.parquet", end.format("%Y%m%dT%H%M%SZ")))
    }

    pub fn contains(&self, tenant: &str, end: Micros) -> bool {
        self.path(tenant, end).exists()
    }

    /// Writes the rows (without `tenant_id`: it is the directory) to a temporary file, fsyncs
    /// it, renames it into place and fsyncs the directory.
    pub fn write(&self, tenant: &str, end: Micros, rows: &RecordBatch) -> Result<PathBuf> {
        let path = self.path(tenant, end);
        let dir = path.parent().unwrap_or(&self.root).to_owned();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let mut rows = rows.clone();
        if let Ok(i) = rows.schema().index_of("tenant_id") {
            rows.remove_column(i);
        }
        let tmp = path.with_extension("parquet.tmp");
        let file = File::create(&tmp).map_err(io(&tmp))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .build();
        let mut writer = ArrowWriter::try_new(file, rows.schema(), Some(props))?;
        writer.write(&rows)?;
        let file = writer.into_inner()?;
        file.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&dir))?;
        Ok(path)
    }
}
