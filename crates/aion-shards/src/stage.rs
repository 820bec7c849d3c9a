//! The shard writer stage: `answer.v1` in, Parquet training shards out.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aion_events::{decode, AnswerEvent, DecodeLimits};
use aion_kafka::{Ack, KafkaConfig, Sink, Source, SourceConfig};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::redact::Redactor;
use crate::writer::{RollPolicy, ShardWriter};
use crate::Result;

const STAGE: &str = "shards";
/// How often buffers are checked against the age limit.
const TICK: Duration = Duration::from_millis(500);

/// Where and how the shard writer runs.
#[derive(Debug, Clone)]
pub struct ShardOptions {
    pub kafka: KafkaConfig,
    pub group_id: String,
    pub topic: String,
    /// Root of the shard table.
    pub root: PathBuf,
    pub policy: RollPolicy,
    /// Redact PII before writing (on by default; off only for data known to be clean).
    pub redact: bool,
    pub decode: DecodeLimits,
}

/// Live counts.
#[derive(Debug, Default)]
pub struct Stats {
    pub received: AtomicU64,
    pub written: AtomicU64,
    pub shards: AtomicU64,
    pub skipped_replays: AtomicU64,
}

/// Runs until `stop`; buffered rows are abandoned (replayed by the next run), never half-written.
pub async fn run(options: &ShardOptions, stop: CancellationToken, stats: &Stats) -> Result<()> {
    let mut config =
        SourceConfig::new(STAGE, vec![options.topic.clone()], options.group_id.clone());
    // Buffers hold acks until their file is renamed into place: the roll policy bounds them.
    config.max_in_flight = None;
    config.revoke_wait = Duration::ZERO;
    let mut source = Source::new(&options.kafka, &config)?;
    aion_kafka::partition_count(&options.kafka, &aion_events::topics::dlq(&options.topic))?;
    let sink = Sink::new(&options.kafka, STAGE)?;
    let redactor = options.redact.then(Redactor::new);
    let mut writer: ShardWriter<Ack> =
        ShardWriter::open(&options.root, options.policy.clone(), redactor)?;
    info!(root = %options.root.display(), redact = options.redact, "shard writer started");
    let mut revocations = source.revocations();
    let result = loop {
        let record = tokio::select! {
            r = source.recv() => Some(r?),
            () = tokio::time::sleep(TICK) => None,
            () = stop.cancelled() => break Ok(()),
        };
        if let Some(record) = record {
            stats.received.fetch_add(1, Ordering::Relaxed);
            match decode::<AnswerEvent>(&record.payload, &options.decode) {
                Ok(event) => {
                    writer.push(record.partition, record.offset, event, record.ack);
                }
                Err(reject) => {
                    sink.dead_letter(record, &reject.path, &reject.message)
                        .await?
                }
            }
        }
        // A rebalance moves partitions: what is buffered for them is replayed by their new owner.
        let force = source.revocations() != revocations;
        revocations = source.revocations();
        let (acks, entries) = writer.roll(Instant::now(), force)?;
        for e in &entries {
            stats.written.fetch_add(e.rows as u64, Ordering::Relaxed);
            stats.shards.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("aion_shards_committed_total", "stage" => STAGE).increment(1);
            info!(path = %e.path, rows = e.rows, "shard committed");
        }
        // Durable now: their offsets may be stored.
        drop(acks);
        stats
            .skipped_replays
            .store(writer.skipped_replays, Ordering::Relaxed);
    };
    for ack in writer.into_acks() {
        ack.abandon();
    }
    sink.flush(Duration::from_secs(30))?;
    source.shutdown(Duration::ZERO).await?;
    result
}
