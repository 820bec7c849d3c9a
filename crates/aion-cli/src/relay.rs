//! The relay: the smallest complete stage. It decodes and validates application events, forwards
//! the valid ones byte for byte to `<topic>.<suffix>` (with their source coordinates as headers)
//! and dead-letters the rest. Every later stage has its shape; the delivery tests and the
//! throughput benchmark run it.

use std::time::{Duration, Instant};

use aion_events::topics::SchemaId;
use aion_kafka::{headers, Sink, Source, SourceConfig};
use anyhow::Result;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::Context;

/// One consumed topic and the schema its records must satisfy.
#[derive(Debug, Clone)]
pub struct Input {
    pub topic: String,
    pub schema: SchemaId,
}

impl std::str::FromStr for Input {
    type Err = String;

    /// `TOPIC` (a schema name such as `retrieval.v1`) or `TOPIC=SCHEMA`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (topic, schema) = s.split_once('=').unwrap_or((s, s));
        let schema = SchemaId::from_name(schema).ok_or_else(|| {
            let known: Vec<&str> = SchemaId::ALL.iter().map(|s| s.name()).collect();
            format!("unknown schema {schema:?}; use TOPIC=SCHEMA with one of {known:?}")
        })?;
        Ok(Self { topic: topic.to_owned(), schema })
    }
}

/// Counts of one relay run.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub received: u64,
    pub forwarded: u64,
    pub dead_lettered: u64,
}

const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// Runs until `stop` is cancelled (or `limit` records were handled), then drains outputs and
/// commits synchronously.
pub async fn run(
    ctx: &Context,
    inputs: &[Input],
    suffix: &str,
    limit: Option<u64>,
    stop: CancellationToken,
) -> Result<Stats> {
    let topics: Vec<String> = inputs.iter().map(|i| i.topic.clone()).collect();
    let mut source = Source::new(&ctx.kafka, &SourceConfig::new("relay", topics, ctx.group("relay")))?;
    let sink = Sink::new(&ctx.kafka, "relay")?;
    let limits = ctx.decode_limits();
    let outputs: Vec<String> = inputs.iter().map(|i| format!("{}.{suffix}", i.topic)).collect();
    let mut stats = Stats::default();
    let mut next_report = Instant::now() + REPORT_EVERY;
    while limit.is_none_or(|l| stats.received < l) {
        let record = tokio::select! {
            r = source.recv() => r?,
            () = stop.cancelled() => break,
        };
        stats.received += 1;
        let Some(i) = inputs.iter().position(|i| *i.topic == *record.topic) else { continue };
        match inputs[i].schema.check(&record.payload, &limits) {
            Ok(()) => {
                let lineage = headers::lineage(&record.topic, record.partition, record.offset);
                sink.send(&outputs[i], record.key.as_deref(), &record.payload, Some(lineage), Some(record.ack)).await?;
                stats.forwarded += 1;
            }
            Err(reject) => {
                sink.dead_letter(record, &reject.path, &reject.message).await?;
                stats.dead_lettered += 1;
            }
        }
        if Instant::now() >= next_report {
            info!(received = stats.received, forwarded = stats.forwarded, dlq = stats.dead_lettered, in_flight = source.in_flight(), "relay progress");
            next_report = Instant::now() + REPORT_EVERY;
        }
    }
    sink.flush(SHUTDOWN_TIMEOUT)?;
    source.shutdown(SHUTDOWN_TIMEOUT).await?;
    metrics::counter!("aion_sent_events_total", "stage" => "relay").increment(stats.forwarded);
    info!(received = stats.received, forwarded = stats.forwarded, dlq = stats.dead_lettered, "relay stopped");
    Ok(stats)
}
