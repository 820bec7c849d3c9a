//! The Parquet tables the stages write, registered in a DataFusion session: what `aion sql` and
//! the API's read endpoints query.

use std::path::{Path, PathBuf};

use aion_events::layout::Table;
use aion_windows::{HISTORY_TABLE, WINDOW_EVENTS_VIEW};
use datafusion::arrow::datatypes::DataType;
use datafusion::error::Result;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};

/// The shard table, under the data dir.
pub const SHARDS_TABLE: &str = Table::Shards.name();
/// The entity mentions of enriched retrieval events, under the data dir.
pub const ENTITIES_TABLE: &str = Table::Entities.name();
/// The human labels of `labels.v1`, under the data dir (`tenant_id=<t>/date=<labelled day>/`).
pub const LABELS_TABLE: &str = aion_windows::LABELS_TABLE;
/// The answers sent to labelling by `aion label-queue`, under the data dir (`tenant_id=<t>/`).
pub const LABEL_QUEUE_TABLE: &str = Table::LabelQueue.name();

fn has_parquet(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            has_parquet(&p)
        } else {
            p.extension().is_some_and(|x| x == "parquet")
        }
    })
}

/// Which tables hold data (what a session registers).
fn present(data_dir: &Path) -> Vec<bool> {
    Table::ALL
        .iter()
        .map(|t| has_parquet(&data_dir.join(t.name())))
        .collect()
}

/// A session kept between requests. Registering a table reads the footers of all its files, so
/// it happens once, and again only when a table that had no data gets some; queries list the
/// files of registered tables themselves, so new files are read without it.
pub struct Cached {
    data_dir: PathBuf,
    session: tokio::sync::Mutex<Option<(Vec<bool>, SessionContext)>>,
}

impl Cached {
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            session: tokio::sync::Mutex::new(None),
        }
    }

    pub async fn session(&self) -> Result<SessionContext> {
        let now = present(&self.data_dir);
        let mut cached = self.session.lock().await;
        if let Some((then, ctx)) = &*cached {
            if *then == now {
                return Ok(ctx.clone());
            }
        }
        let ctx = session(&self.data_dir).await?;
        *cached = Some((now, ctx.clone()));
        Ok(ctx)
    }
}

/// A session with every table that has data registered (its partition columns, from the Hive
/// directory names, as [`Table::partitions`] lists them), and the view `window_events` when the
/// history exists.
pub async fn session(data_dir: &Path) -> Result<SessionContext> {
    // Shard tables are read through their manifests: a compaction in progress or a file not yet
    // committed never shows.
    let ctx = SessionContext::new_with_config_rt(SessionConfig::new(), aion_tables::runtime()?);
    for table in Table::ALL {
        let dir = data_dir.join(table.name());
        if !has_parquet(&dir) {
            continue;
        }
        let partitions = table
            .partitions()
            .iter()
            .map(|c| ((*c).to_owned(), DataType::Utf8))
            .collect();
        // The catalogue's columns where the product fixes them: files written by older versions
        // (other integer types, fewer optional columns) are read as today's schema.
        let schema = table.schema();
        let mut options = ParquetReadOptions::default().table_partition_cols(partitions);
        if let Some(schema) = &schema {
            options = options.schema(schema);
        }
        ctx.register_parquet(table.name(), format!("{}/", dir.display()), options)
            .await?;
    }
    if ctx.table_exist(HISTORY_TABLE)? {
        ctx.sql(WINDOW_EVENTS_VIEW).await?.collect().await?;
    }
    Ok(ctx)
}
