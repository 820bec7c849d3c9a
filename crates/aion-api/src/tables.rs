//! The Parquet tables the stages write, registered in a DataFusion session: what `aion sql` and
//! the API's read endpoints query.

use std::path::Path;

use aion_windows::{HISTORY_TABLE, METRICS_TABLE, WINDOW_EVENTS_VIEW};
use datafusion::arrow::datatypes::DataType;
use datafusion::error::Result;
use datafusion::prelude::{ParquetReadOptions, SessionContext};

/// The shard table, under the data dir.
pub const SHARDS_TABLE: &str = "shards";
/// The entity mentions of enriched retrieval events, under the data dir.
pub const ENTITIES_TABLE: &str = "entities";
/// The human labels of `labels.v1`, under the data dir (`tenant_id=<t>/date=<labelled day>/`).
pub const LABELS_TABLE: &str = aion_windows::LABELS_TABLE;
/// The answers sent to labelling by `aion label-queue`, under the data dir (`tenant_id=<t>/`).
pub const LABEL_QUEUE_TABLE: &str = "label_queue";

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

/// A session with every table that has data registered (`tenant_id` and `date` from the Hive
/// directory names; `label_queue` has `tenant_id` only), and the view `window_events` when the history exists.
pub async fn session(data_dir: &Path) -> Result<SessionContext> {
    let ctx = SessionContext::new();
    let partitions = vec![
        ("tenant_id".to_owned(), DataType::Utf8),
        ("date".to_owned(), DataType::Utf8),
    ];
    for name in [
        METRICS_TABLE,
        HISTORY_TABLE,
        SHARDS_TABLE,
        ENTITIES_TABLE,
        LABELS_TABLE,
    ] {
        let dir = data_dir.join(name);
        if !has_parquet(&dir) {
            continue;
        }
        let options = ParquetReadOptions::default().table_partition_cols(partitions.clone());
        ctx.register_parquet(name, format!("{}/", dir.display()), options)
            .await?;
    }
    let queue = data_dir.join(LABEL_QUEUE_TABLE);
    if has_parquet(&queue) {
        let options = ParquetReadOptions::default().table_partition_cols(partitions[..1].to_vec());
        ctx.register_parquet(LABEL_QUEUE_TABLE, format!("{}/", queue.display()), options)
            .await?;
    }
    if ctx.table_exist(HISTORY_TABLE)? {
        ctx.sql(WINDOW_EVENTS_VIEW).await?.collect().await?;
    }
    Ok(ctx)
}
