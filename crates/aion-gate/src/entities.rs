//! The worst entities of a degraded window (`pipelines/trigger_entities.sql` over the shard
//! stage's `entities` table), recorded in the trigger so the operator and the trainer see which
//! entities the assistant serves worst.

use std::path::Path;

use chrono::{DateTime, Utc};
use datafusion::arrow::array::AsArray;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use datafusion::scalar::ScalarValue;
use serde::Deserialize;

/// The pipeline's query, embedded so the binary runs without the source tree.
pub const TRIGGER_ENTITIES_SQL: &str = include_str!("../../../pipelines/trigger_entities.sql");

/// How many entities a trigger records, and how much evidence each needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopEntities {
    /// Entities recorded per trigger (0: the table is not read).
    pub limit: usize,
    /// Judged retrievals an entity needs in the window to be ranked.
    pub min_judged: u64,
}

impl Default for TopEntities {
    fn default() -> Self {
        Self {
            limit: 5,
            min_judged: 5,
        }
    }
}

/// The tenant's entities in `[start, end)` with the lowest mean nDCG, worst first. A missing or
/// empty table gives none.
pub async fn worst_entities(
    entities_root: &Path,
    tenant: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    rule: &TopEntities,
) -> datafusion::error::Result<Vec<String>> {
    if rule.limit == 0 || !entities_root.join(format!("tenant_id={tenant}")).is_dir() {
        return Ok(Vec::new());
    }
    // Through the manifest, as every reader of a shard table (compactions applied).
    let ctx = SessionContext::new_with_config_rt(SessionConfig::new(), aion_tables::runtime()?);
    let options = ParquetReadOptions::default().table_partition_cols(vec![
        ("tenant_id".to_owned(), DataType::Utf8),
        ("date".to_owned(), DataType::Utf8),
    ]);
    ctx.register_parquet("entities", format!("{}/", entities_root.display()), options)
        .await?;
    let micros = |t: DateTime<Utc>| {
        ScalarValue::TimestampMicrosecond(Some(t.timestamp_micros()), Some("UTC".into()))
    };
    let day = |t: DateTime<Utc>| ScalarValue::from(t.format("%Y-%m-%d").to_string());
    let batches = ctx
        .sql(TRIGGER_ENTITIES_SQL)
        .await?
        .with_param_values(vec![
            ScalarValue::from(tenant),
            micros(start),
            micros(end),
            day(start),
            day(end),
            ScalarValue::Int64(Some(i64::try_from(rule.min_judged).unwrap_or(i64::MAX))),
        ])?
        .limit(0, Some(rule.limit))?
        .collect()
        .await?;
    let mut worst = Vec::with_capacity(rule.limit);
    for batch in &batches {
        // Parquet strings may come back as views; the cast is a no-op for plain Utf8.
        let names = batch
            .column_by_name("entity")
            .map(|c| cast(c, &DataType::Utf8))
            .transpose()?
            .ok_or_else(|| {
                datafusion::error::DataFusionError::Plan(
                    "trigger_entities.sql must return a column `entity`".into(),
                )
            })?;
        let names = names.as_string::<i32>();
        worst.extend(names.iter().flatten().map(str::to_owned));
    }
    Ok(worst)
}
