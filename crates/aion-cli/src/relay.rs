//! The relay: the smallest complete stage. It decodes and validates application events, forwards
//! the valid ones byte for byte to `<topic>.<suffix>` (with their source coordinates as headers)
//! and dead-letters the rest. Every later stage has its shape; the delivery tests and the
//! throughput benchmark run it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aion_events::topics::SchemaId;
use aion_kafka::{headers, KafkaConfig, Sink, Source, SourceConfig};
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
        Ok(Self {
            topic: topic.to_owned(),
            schema,
        })
    }
}

/// Live counts of a relay run, readable while it runs (`aion up` prints them).
#[derive(Debug, Default)]
pub struct Stats {
    pub received: AtomicU64,
    pub forwarded: AtomicU64,
    pub dead_lettered: AtomicU64,
}

impl Stats {
    /// (received, forwarded, dead-lettered)
    pub fn snapshot(&self) -> (u64, u64, u64) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (
            get(&self.received),
            get(&self.forwarded),
            get(&self.dead_lettered),
        )
    }
}

const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// Runs until `stop` is cancelled (or `limit` records were handled), then drains outputs and
/// commits synchronously. Outputs and dead letters go to the `output` cluster (normally the same
/// as the input's, `ctx.kafka`).
pub async fn run(
    ctx: &Context,
    output: &KafkaConfig,
    inputs: &[Input],
    suffix: &str,
    limit: Option<u64>,
    stop: CancellationToken,
    stats: &Stats,
) -> Result<()> {
    let topics: Vec<String> = inputs.iter().map(|i| i.topic.clone()).collect();
    let mut source = Source::new(
        &ctx.kafka,
        &SourceConfig::new("relay", topics, ctx.group("relay")),
    )?;
    // Fail at start, not on the first delivery, when an output topic is missing.
    for input in inputs {
        for topic in [
            format!("{}.{suffix}", input.topic),
            aion_events::topics::dlq(&input.topic),
        ] {
            aion_kafka::partition_count(output, &topic)?;
        }
    }
    let sink = Sink::new(output, "relay")?;
    let limits = ctx.decode_limits();
    let outputs: Vec<String> = inputs
        .iter()
        .map(|i| format!("{}.{suffix}", i.topic))
        .collect();
    let mut next_report = Instant::now() + REPORT_EVERY;
    let (mut received, mut reported) = (0u64, 0u64);
    while limit.is_none_or(|l| received < l) {
        let record = tokio::select! {
            r = source.recv() => r?,
            () = stop.cancelled() => break,
        };
        received += 1;
        stats.received.fetch_add(1, Ordering::Relaxed);
        // Subscribed topics are exactly the inputs; anything else would be dead-lettered, not skipped.
        let input = inputs.iter().position(|i| *i.topic == *record.topic);
        let checked = match input {
            Some(i) => inputs[i].schema.check(&record.payload, &limits).map(|()| i),
            None => Err(aion_events::Reject::new(
                ".",
                "no schema configured for this topic",
            )),
        };
        match checked {
            Ok(i) => {
                let lineage = headers::lineage(&record.topic, record.partition, record.offset);
                sink.send(
                    &outputs[i],
                    record.key.as_deref(),
                    &record.payload,
                    Some(lineage),
                    Some(record.ack),
                )
                .await?;
                stats.forwarded.fetch_add(1, Ordering::Relaxed);
            }
            Err(reject) => {
                sink.dead_letter(record, &reject.path, &reject.message)
                    .await?;
                stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
            }
        }
        if Instant::now() >= next_report {
            let (received, forwarded, dlq) = stats.snapshot();
            metrics::counter!("aion_sent_events_total", "stage" => "relay")
                .increment(forwarded - reported);
            reported = forwarded;
            info!(
                received,
                forwarded,
                dlq,
                in_flight = source.in_flight(),
                "relay progress"
            );
            next_report = Instant::now() + REPORT_EVERY;
        }
    }
    sink.flush(SHUTDOWN_TIMEOUT)?;
    source.shutdown(SHUTDOWN_TIMEOUT).await?;
    let (received, forwarded, dlq) = stats.snapshot();
    metrics::counter!("aion_sent_events_total", "stage" => "relay").increment(forwarded - reported);
    info!(received, forwarded, dlq, "relay stopped");
    Ok(())
}
