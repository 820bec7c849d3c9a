//! The answer history as `aion label-queue` and `aion tune-fallback` read it: a tenant's answers
//! from the `shards` table (deduplicated by `event_id`), the ids already queued or labelled, and
//! the answer-quality labels.

use std::collections::{HashMap, HashSet};

use anyhow::{bail, Context as _, Result};
use chrono::{DateTime, Utc};
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::prelude::SessionContext;

use aion_api::tables::{LABELS_TABLE, LABEL_QUEUE_TABLE, SHARDS_TABLE};

/// One answer of the `shards` table.
#[derive(Debug, Clone)]
pub struct AnswerRow {
    pub event_id: String,
    pub tenant_id: String,
    pub ts: DateTime<Utc>,
    pub instruction: String,
    pub response: String,
    pub confidence: f64,
    pub fallback: bool,
    pub retrieval_event_id: Option<String>,
}

/// Which part of the history.
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// One tenant, or all.
    pub tenant: Option<String>,
    /// Answers at or after this event time.
    pub since: Option<DateTime<Utc>>,
    /// Else the last this-many days of event time before the newest answer (of the tenant).
    pub days: Option<i64>,
}

fn column(batch: &RecordBatch, name: &str, to: &DataType) -> Result<std::sync::Arc<dyn Array>> {
    let col = batch
        .column_by_name(name)
        .with_context(|| format!("column {name} missing"))?;
    Ok(cast(col, to)?)
}

fn strings(batch: &RecordBatch, name: &str) -> Result<Vec<Option<String>>> {
    let col = column(batch, name, &DataType::Utf8)?;
    let col = col.as_string::<i32>();
    Ok((0..col.len())
        .map(|i| col.is_valid(i).then(|| col.value(i).to_owned()))
        .collect())
}

fn required(batch: &RecordBatch, name: &str) -> Result<Vec<String>> {
    strings(batch, name)?
        .into_iter()
        .map(|s| s.with_context(|| format!("null {name}")))
        .collect()
}

fn floats(batch: &RecordBatch, name: &str) -> Result<Vec<f64>> {
    let col = column(batch, name, &DataType::Float64)?;
    Ok(col.as_primitive::<Float64Type>().values().to_vec())
}

fn bools(batch: &RecordBatch, name: &str) -> Result<Vec<Option<bool>>> {
    let col = column(batch, name, &DataType::Boolean)?;
    let col = col.as_boolean();
    Ok((0..col.len())
        .map(|i| col.is_valid(i).then(|| col.value(i)))
        .collect())
}

fn micros(batch: &RecordBatch, name: &str) -> Result<Vec<DateTime<Utc>>> {
    let col = column(
        batch,
        name,
        &DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Microsecond, None),
    )?;
    let col = cast(&col, &DataType::Int64)?;
    col.as_primitive::<Int64Type>()
        .values()
        .iter()
        .map(|&us| DateTime::from_timestamp_micros(us).context("timestamp out of range"))
        .collect()
}

/// The tenants that have answers in the `shards` table.
pub async fn tenants(session: &SessionContext) -> Result<Vec<String>> {
    if !session.table_exist(SHARDS_TABLE)? {
        return Ok(Vec::new());
    }
    let sql = format!("SELECT DISTINCT tenant_id FROM {SHARDS_TABLE} ORDER BY tenant_id");
    let mut out = Vec::new();
    for b in session.sql(&sql).await?.collect().await? {
        out.extend(required(&b, "tenant_id")?);
    }
    Ok(out)
}

/// The answers of `window`, oldest first, one per `event_id` (the first stored row wins).
/// Fails, naming the tenants there are, when the table or the tenant has no answer.
pub async fn answers(session: &SessionContext, window: &Window) -> Result<Vec<AnswerRow>> {
    let known = tenants(session).await?;
    if known.is_empty() {
        bail!("no answers: the `shards` table is empty (run `aion shards run`)");
    }
    // Tenant ids are validated ([A-Za-z0-9_.-]) before they reach this query.
    let tenant_filter = match &window.tenant {
        Some(t) => {
            if !known.contains(t) {
                bail!(
                    "unknown tenant {t:?}: no answers in the `shards` table (tenants with answers: {})",
                    known.join(", ")
                );
            }
            format!("WHERE tenant_id = '{t}'")
        }
        None => String::new(),
    };
    let sql = format!(
        "SELECT event_id, tenant_id, ts, instruction, response, confidence, fallback, \
         retrieval_event_id FROM {SHARDS_TABLE} {tenant_filter} \
         ORDER BY ts, event_id, source_partition, source_offset"
    );
    let mut rows = Vec::new();
    let mut seen = HashSet::new();
    for b in session.sql(&sql).await?.collect().await? {
        let ids = required(&b, "event_id")?;
        let tenants = required(&b, "tenant_id")?;
        let ts = micros(&b, "ts")?;
        let instructions = required(&b, "instruction")?;
        let responses = required(&b, "response")?;
        let confidences = floats(&b, "confidence")?;
        let fallbacks = bools(&b, "fallback")?;
        let retrievals = strings(&b, "retrieval_event_id")?;
        for (i, id) in ids.into_iter().enumerate() {
            if !seen.insert((tenants[i].clone(), id.clone())) {
                continue;
            }
            rows.push(AnswerRow {
                event_id: id,
                tenant_id: tenants[i].clone(),
                ts: ts[i],
                instruction: instructions[i].clone(),
                response: responses[i].clone(),
                confidence: confidences[i],
                fallback: fallbacks[i].unwrap_or(false),
                retrieval_event_id: retrievals[i].clone(),
            });
        }
    }
    let since = match (window.since, window.days) {
        (Some(since), _) => Some(since),
        (None, Some(days)) => rows
            .iter()
            .map(|r| r.ts)
            .max()
            .map(|newest| newest - chrono::Duration::days(days)),
        (None, None) => None,
    };
    if let Some(since) = since {
        rows.retain(|r| r.ts >= since);
    }
    Ok(rows)
}

/// Event ids of `tenant` (or all) in `table`, if the table exists.
async fn ids(
    session: &SessionContext,
    table: &str,
    tenant: Option<&str>,
) -> Result<HashSet<String>> {
    if !session.table_exist(table)? {
        return Ok(HashSet::new());
    }
    let filter = tenant.map_or(String::new(), |t| format!("WHERE tenant_id = '{t}'"));
    let mut out = HashSet::new();
    for b in session
        .sql(&format!("SELECT DISTINCT event_id FROM {table} {filter}"))
        .await?
        .collect()
        .await?
    {
        out.extend(required(&b, "event_id")?);
    }
    Ok(out)
}

/// Event ids already in the label queue or labelled, for `tenant`.
pub async fn queued_or_labelled(session: &SessionContext, tenant: &str) -> Result<HashSet<String>> {
    let mut out = ids(session, LABEL_QUEUE_TABLE, Some(tenant)).await?;
    out.extend(ids(session, LABELS_TABLE, Some(tenant)).await?);
    Ok(out)
}

/// Answer-quality labels per (tenant, event id): the latest `labelled_at` wins.
pub async fn correctness(
    session: &SessionContext,
    tenant: Option<&str>,
) -> Result<HashMap<(String, String), bool>> {
    let mut out = HashMap::new();
    if !session.table_exist(LABELS_TABLE)? {
        return Ok(out);
    }
    let filter = tenant.map_or(String::new(), |t| format!("AND tenant_id = '{t}'"));
    let sql = format!(
        "SELECT tenant_id, event_id, correct FROM {LABELS_TABLE} \
         WHERE correct IS NOT NULL {filter} ORDER BY labelled_at, labeller"
    );
    for b in session.sql(&sql).await?.collect().await? {
        let tenants = required(&b, "tenant_id")?;
        let ids = required(&b, "event_id")?;
        let correct = bools(&b, "correct")?;
        for (i, id) in ids.into_iter().enumerate() {
            if let Some(c) = correct[i] {
                out.insert((tenants[i].clone(), id), c);
            }
        }
    }
    Ok(out)
}
