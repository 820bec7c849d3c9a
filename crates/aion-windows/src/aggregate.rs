//! Runs the pipeline's SQL (DataFusion) over the events of closed windows.

use std::collections::HashMap;
use std::sync::Arc;

use aion_events::{Schema as _, WindowMetrics};
use chrono::{DateTime, Utc};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, Float64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder, UInt32Array,
};
use datafusion::arrow::compute::{cast, take_record_batch};
use datafusion::arrow::datatypes::{
    DataType, Field, Float64Type, Int64Type, Schema, SchemaRef, TimestampMicrosecondType,
};
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::operator::{ClosedGroup, Measure, Micros};
use crate::{Error, Result};

/// The table the SQL reads.
pub const INPUT_TABLE: &str = "window_events";

pub(crate) use aion_events::layout::schemas::timestamp;

/// Schema of [`INPUT_TABLE`]; `pipelines/windows.sql` documents it.
pub fn input_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("tenant_id", DataType::Utf8, false),
        Field::new("window", DataType::Utf8, false),
        Field::new("window_start", timestamp(), false),
        Field::new("window_end", timestamp(), false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("ts", timestamp(), false),
        Field::new("ndcg", DataType::Float64, true),
        Field::new("fallback", DataType::Boolean, true),
        Field::new("confidence", DataType::Float64, true),
    ]))
}

/// The aggregate result of one [`ClosedGroup`]: its metrics records and its SQL output rows.
#[derive(Debug)]
pub struct GroupResult {
    pub tenant: Arc<str>,
    pub end: Micros,
    pub metrics: Vec<WindowMetrics>,
    pub rows: RecordBatch,
}

/// A DataFusion session bound to one aggregate query.
pub struct Aggregator {
    ctx: SessionContext,
    sql: String,
}

impl Aggregator {
    /// Plans the query once over an empty input, so a broken SQL file fails at start with
    /// DataFusion's message rather than at the first window close.
    pub async fn new(sql: &str) -> Result<Self> {
        // One partition: the stage is a single task per core, and the input is small per close.
        let config = SessionConfig::new().with_target_partitions(1);
        let aggregator = Self {
            ctx: SessionContext::new_with_config(config),
            sql: sql.to_owned(),
        };
        aggregator
            .query(RecordBatch::new_empty(input_schema()))
            .await?;
        Ok(aggregator)
    }

    async fn query(&self, input: RecordBatch) -> Result<RecordBatch> {
        let table = MemTable::try_new(input.schema(), vec![vec![input]])?;
        self.ctx.deregister_table(INPUT_TABLE)?;
        self.ctx.register_table(INPUT_TABLE, Arc::new(table))?;
        let frame = self.ctx.sql(&self.sql).await?;
        let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
        let batches = frame.collect().await?;
        let batch = datafusion::arrow::compute::concat_batches(&schema, &batches)?;
        for (name, _) in OUTPUT_COLUMNS {
            if batch.column_by_name(name).is_none() {
                return Err(Error::Sql(format!(
                    "the aggregate SQL must return a column named {name}"
                )));
            }
        }
        Ok(batch)
    }

    /// Aggregates the closed groups: one result per group, in the groups' order.
    pub async fn aggregate(&self, groups: &[ClosedGroup]) -> Result<Vec<GroupResult>> {
        let output = self.query(input_batch(groups)?).await?;
        let metrics = metrics_of(&output)?;
        // The result rows of each (tenant, window end), indexed once: matching every group
        // against every row was quadratic in the tenants closing together.
        let mut rows_of: HashMap<(&str, i64), Vec<u32>> = HashMap::new();
        for (i, m) in metrics.iter().enumerate() {
            rows_of
                .entry((m.tenant_id.as_str(), m.window_end.timestamp_micros()))
                .or_default()
                .push(i as u32);
        }
        let mut results: Vec<GroupResult> = Vec::with_capacity(groups.len());
        for group in groups {
            let indices = rows_of
                .get(&(&*group.tenant, group.end))
                .cloned()
                .unwrap_or_default();
            let rows = take_record_batch(&output, &UInt32Array::from(indices.clone()))?;
            results.push(GroupResult {
                tenant: group.tenant.clone(),
                end: group.end,
                metrics: indices
                    .iter()
                    .map(|&i| metrics[i as usize].clone())
                    .collect(),
                rows,
            });
        }
        Ok(results)
    }
}

/// The columns a [`Measure`] fills: `kind`, `ndcg`, `fallback`, `confidence` (NULL where the
/// event kind has no such value). Shared by the aggregate's input and the history table.
pub(crate) struct MeasureColumns {
    kind: StringBuilder,
    ndcg: Float64Builder,
    fallback: BooleanBuilder,
    confidence: Float64Builder,
}

impl MeasureColumns {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self {
            kind: StringBuilder::with_capacity(n, n * 9),
            ndcg: Float64Builder::with_capacity(n),
            fallback: BooleanBuilder::with_capacity(n),
            confidence: Float64Builder::with_capacity(n),
        }
    }

    pub(crate) fn push(&mut self, measure: Measure) {
        match measure {
            Measure::Retrieval { ndcg } => {
                self.kind.append_value("retrieval");
                self.ndcg.append_option(ndcg);
                self.fallback.append_null();
                self.confidence.append_null();
            }
            Measure::Answer {
                fallback,
                confidence,
            } => {
                self.kind.append_value("answer");
                self.ndcg.append_null();
                self.fallback.append_value(fallback);
                self.confidence.append_value(confidence);
            }
        }
    }

    pub(crate) fn finish(mut self) -> [ArrayRef; 4] {
        [
            Arc::new(self.kind.finish()),
            Arc::new(self.ndcg.finish()),
            Arc::new(self.fallback.finish()),
            Arc::new(self.confidence.finish()),
        ]
    }
}

/// Expands closed windows into one input row per (event, window).
fn input_batch(groups: &[ClosedGroup]) -> Result<RecordBatch> {
    let n: usize = groups
        .iter()
        .flat_map(|g| &g.windows)
        .map(|w| w.rows.len())
        .sum();
    let mut tenant = StringBuilder::with_capacity(n, n * 8);
    let mut window = StringBuilder::with_capacity(n, n * 12);
    let ts_builder = || TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let (mut start, mut end, mut ts) = (ts_builder(), ts_builder(), ts_builder());
    let mut measures = MeasureColumns::with_capacity(n);
    for w in groups.iter().flat_map(|g| &g.windows) {
        for row in &w.rows {
            tenant.append_value(&w.tenant);
            window.append_value(&w.window);
            start.append_value(w.start);
            end.append_value(w.end);
            ts.append_value(row.ts);
            measures.push(row.measure);
        }
    }
    let [kind, ndcg, fallback, confidence] = measures.finish();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(tenant.finish()),
        Arc::new(window.finish()),
        Arc::new(start.finish()),
        Arc::new(end.finish()),
        kind,
        Arc::new(ts.finish()),
        ndcg,
        fallback,
        confidence,
    ];
    Ok(RecordBatch::try_new(input_schema(), columns)?)
}

/// An output column's name and the type it is cast to.
type OutputColumn = (&'static str, fn() -> DataType);

/// The columns `metrics.v1` is read from.
const OUTPUT_COLUMNS: [OutputColumn; 13] = [
    ("tenant_id", || DataType::Utf8),
    ("window", || DataType::Utf8),
    ("window_start", timestamp),
    ("window_end", timestamp),
    ("retrieval_events", || DataType::Int64),
    ("judged_events", || DataType::Int64),
    ("ndcg_mean", || DataType::Float64),
    ("ndcg_p50", || DataType::Float64),
    ("ndcg_p10", || DataType::Float64),
    ("answers", || DataType::Int64),
    ("fallbacks", || DataType::Int64),
    ("fallback_rate", || DataType::Float64),
    ("confidence_mean", || DataType::Float64),
];

fn metrics_of(batch: &RecordBatch) -> Result<Vec<WindowMetrics>> {
    let mut columns = Vec::with_capacity(OUTPUT_COLUMNS.len());
    for (name, data_type) in OUTPUT_COLUMNS {
        let column = batch
            .column_by_name(name)
            .ok_or_else(|| Error::Sql(format!("missing output column {name}")))?;
        columns.push(cast(column, &data_type()).map_err(|e| {
            Error::Sql(format!(
                "output column {name} is not a {}: {e}",
                data_type()
            ))
        })?);
    }
    let string = |i: usize, row: usize| columns[i].as_string::<i32>().value(row).to_owned();
    let time = |i: usize, row: usize| -> Result<DateTime<Utc>> {
        let us = columns[i]
            .as_primitive::<TimestampMicrosecondType>()
            .value(row);
        DateTime::from_timestamp_micros(us)
            .ok_or_else(|| Error::Sql(format!("timestamp {us} out of range")))
    };
    let count = |i: usize, row: usize| -> Result<u64> {
        let c = columns[i].as_primitive::<Int64Type>();
        if c.is_null(row) {
            return Err(Error::Sql(format!("{} is NULL", OUTPUT_COLUMNS[i].0)));
        }
        u64::try_from(c.value(row))
            .map_err(|_| Error::Sql(format!("{} is negative", OUTPUT_COLUMNS[i].0)))
    };
    let float = |i: usize, row: usize| {
        let c = columns[i].as_primitive::<Float64Type>();
        (!c.is_null(row)).then(|| c.value(row))
    };
    (0..batch.num_rows())
        .map(|row| {
            let m = WindowMetrics {
                tenant_id: string(0, row),
                window: string(1, row),
                window_start: time(2, row)?,
                window_end: time(3, row)?,
                retrieval_events: count(4, row)?,
                judged_events: count(5, row)?,
                ndcg_mean: float(6, row),
                ndcg_p50: float(7, row),
                ndcg_p10: float(8, row),
                answers: count(9, row)?,
                fallbacks: count(10, row)?,
                fallback_rate: float(11, row),
                confidence_mean: float(12, row),
            };
            m.validate()
                .map_err(|r| Error::Sql(format!("result row {row}: {r}")))?;
            Ok(m)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::{ClosedWindow, Origin, Row};

    fn row(ts: Micros, measure: Measure) -> Row {
        Row {
            ts,
            arrived_at: Micros::MIN,
            origin: Origin {
                input: 0,
                partition: 0,
                offset: ts,
            },
            measure,
        }
    }

    #[tokio::test]
    async fn the_pipeline_sql_computes_the_metrics_by_hand() {
        let aggregator = Aggregator::new(crate::DEFAULT_SQL).await.unwrap();
        let r = |ndcg| Measure::Retrieval { ndcg };
        let a = |fallback, confidence| Measure::Answer {
            fallback,
            confidence,
        };
        let window = ClosedWindow {
            tenant: Arc::from("acme"),
            window: Arc::from("tumbling_1h"),
            start: 0,
            end: 3_600_000_000,
            rows: vec![
                row(1, r(Some(0.2))),
                row(2, r(Some(0.4))),
                row(3, r(Some(0.6))),
                row(4, r(Some(1.0))),
                row(5, r(None)),
                row(6, a(true, 0.5)),
                row(7, a(false, 0.9)),
                row(8, a(false, 1.0)),
                row(9, a(false, 0.6)),
            ],
        };
        let groups = [ClosedGroup {
            tenant: window.tenant.clone(),
            end: window.end,
            windows: vec![window],
        }];
        let results = aggregator.aggregate(&groups).await.unwrap();
        assert_eq!(results.len(), 1);
        let m = &results[0].metrics[0];
        assert_eq!((m.retrieval_events, m.judged_events), (5, 4));
        assert!((m.ndcg_mean.unwrap() - 0.55).abs() < 1e-12);
        // Continuous percentiles of [0.2, 0.4, 0.6, 1.0]: p50 = 0.5, p10 = 0.2 + 0.3·0.2 = 0.26.
        assert!((m.ndcg_p50.unwrap() - 0.5).abs() < 1e-12);
        assert!((m.ndcg_p10.unwrap() - 0.26).abs() < 1e-12);
        assert_eq!((m.answers, m.fallbacks), (4, 1));
        assert_eq!(m.fallback_rate, Some(0.25));
        assert!((m.confidence_mean.unwrap() - 0.75).abs() < 1e-12);
        assert_eq!(m.key(), "acme/tumbling_1h/1970-01-01T00:00:00Z");
        assert_eq!(results[0].rows.num_rows(), 1);
    }

    #[tokio::test]
    async fn a_window_without_answers_or_judgments_has_no_rates() {
        let aggregator = Aggregator::new(crate::DEFAULT_SQL).await.unwrap();
        let window = ClosedWindow {
            tenant: Arc::from("t"),
            window: Arc::from("tumbling_1h"),
            start: 0,
            end: 3_600_000_000,
            rows: vec![row(1, Measure::Retrieval { ndcg: None })],
        };
        let groups = [ClosedGroup {
            tenant: window.tenant.clone(),
            end: window.end,
            windows: vec![window],
        }];
        let m = &aggregator.aggregate(&groups).await.unwrap()[0].metrics[0];
        assert_eq!((m.retrieval_events, m.judged_events, m.answers), (1, 0, 0));
        assert_eq!(
            (m.ndcg_mean, m.fallback_rate, m.confidence_mean),
            (None, None, None)
        );
    }

    #[tokio::test]
    async fn sql_without_the_contract_columns_is_refused_at_start() {
        let err = Aggregator::new("SELECT tenant_id FROM window_events")
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("column named window"), "{err}");
        let err = Aggregator::new("SELECT nope FROM window_events")
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
