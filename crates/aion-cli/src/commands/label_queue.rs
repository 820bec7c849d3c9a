//! `aion label-queue`: the answers most worth a human label — confidence closest to the fallback
//! threshold τ — not yet queued or labelled, into the `label_queue` table and as JSON lines for a
//! labelling tool.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aion_api::tables::{session, LABEL_QUEUE_TABLE};
use anyhow::{bail, Context as _, Result};
use chrono::{DateTime, Utc};
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::parquet::arrow::ArrowWriter;
use serde::Serialize;

use super::answers::{self, AnswerRow, Window};
use crate::Context;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Tenant whose answers to queue.
    #[arg(long)]
    pub tenant: String,
    /// The fallback threshold τ in 0..=1: answers with confidence closest to it come first.
    #[arg(long)]
    pub tau: f64,
    /// How many answers to queue (at least 1).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Only answers with event time at or after this instant (RFC 3339).
    #[arg(long, conflicts_with = "days")]
    pub since: Option<DateTime<Utc>>,
    /// Only the last D days of event time before the tenant's newest answer.
    #[arg(long)]
    pub days: Option<i64>,
    /// Also write the JSON lines to `DIR/<queue file>.jsonl` instead of standard output.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Where the tables are (default: the state dir).
    #[arg(long, env = "AION_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// One queued answer, as the labelling tool reads it.
#[derive(Debug, Serialize)]
struct Item<'a> {
    event_id: &'a str,
    tenant_id: &'a str,
    ts: DateTime<Utc>,
    instruction: &'a str,
    response: &'a str,
    confidence: f64,
    fallback: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    retrieval_event_id: Option<&'a str>,
    tau: f64,
    distance: f64,
}

/// FNV-1a of the selected ids: the queue file's name, the same for the same selection.
fn queue_name(rows: &[AnswerRow], tau: f64) -> String {
    let mut ids: Vec<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
    ids.sort_unstable();
    let text = format!("{tau}\n{}", ids.join("\n"));
    format!("q-{:016x}", aion_events::fnv1a(text.as_bytes()))
}

fn batch(rows: &[AnswerRow], tau: f64, queued_at: DateTime<Utc>) -> Result<RecordBatch> {
    let schema = aion_events::layout::schemas::label_queue();
    let utc = |v: Vec<i64>| TimestampMicrosecondArray::from(v).with_timezone("UTC");
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| &r.event_id),
        )),
        Arc::new(utc(rows.iter().map(|r| r.ts.timestamp_micros()).collect())),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| &r.instruction),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| &r.response),
        )),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.confidence),
        )),
        Arc::new(BooleanArray::from_iter(
            rows.iter().map(|r| Some(r.fallback)),
        )),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.retrieval_event_id.as_deref()),
        )),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|_| tau))),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| (r.confidence - tau).abs()),
        )),
        Arc::new(utc(vec![queued_at.timestamp_micros(); rows.len()])),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// Writes `batch` to `path`, durably ([`aion_events::durable::replace_file`]).
fn write_parquet(path: &Path, batch: &RecordBatch) -> Result<()> {
    aion_events::durable::replace_file(path, |file| {
        let mut writer = ArrowWriter::try_new(file, batch.schema(), None)?;
        writer.write(batch)?;
        Ok(writer.into_inner()?)
    })
}

pub async fn run(args: Args, ctx: &Context) -> Result<()> {
    aion_events::validate_tenant_id(&args.tenant)
        .with_context(|| format!("--tenant {:?}", args.tenant))?;
    if !(args.tau.is_finite() && (0.0..=1.0).contains(&args.tau)) {
        bail!("--tau must be within 0..=1, got {}", args.tau);
    }
    if args.limit == 0 {
        bail!("--limit must be at least 1");
    }
    if args.days.is_some_and(|d| d <= 0) {
        bail!("--days must be positive");
    }
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| ctx.state_dir.clone());
    let session = session(&data_dir).await?;
    let window = Window {
        tenant: Some(args.tenant.clone()),
        since: args.since,
        days: args.days,
    };
    let history = answers::answers(&session, &window).await?;
    let excluded = answers::queued_or_labelled(&session, &args.tenant).await?;
    let considered = history.len();
    let selected = aion_labels::select_closest(
        history,
        |r| (r.event_id.as_str(), r.confidence),
        args.tau,
        args.limit,
        &excluded,
    )?;
    if selected.is_empty() {
        eprintln!(
            "nothing to queue: all {considered} answers of {} in the window are already queued or labelled",
            args.tenant
        );
        return Ok(());
    }
    let name = queue_name(&selected, args.tau);
    let path = data_dir
        .join(LABEL_QUEUE_TABLE)
        .join(format!("tenant_id={}", args.tenant))
        .join(format!("{name}.parquet"));
    write_parquet(&path, &batch(&selected, args.tau, Utc::now())?)?;

    let mut lines = Vec::new();
    for r in &selected {
        let item = Item {
            event_id: &r.event_id,
            tenant_id: &r.tenant_id,
            ts: r.ts,
            instruction: &r.instruction,
            response: &r.response,
            confidence: r.confidence,
            fallback: r.fallback,
            retrieval_event_id: r.retrieval_event_id.as_deref(),
            tau: args.tau,
            distance: (r.confidence - args.tau).abs(),
        };
        serde_json::to_writer(&mut lines, &item)?;
        lines.push(b'\n');
    }
    match &args.out {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let file = dir.join(format!("{}-{name}.jsonl", args.tenant));
            std::fs::write(&file, &lines).with_context(|| format!("writing {}", file.display()))?;
            eprintln!(
                "{} answers queued: {} and {}",
                selected.len(),
                path.display(),
                file.display()
            );
        }
        None => {
            std::io::stdout().lock().write_all(&lines)?;
            eprintln!("{} answers queued: {}", selected.len(), path.display());
        }
    }
    Ok(())
}
