//! The shard writer stage: `answer.v1` in, Parquet training shards out; and, when configured,
//! `retrieval.enriched.v1` in, the entity-mention table out; and `labels.v1` in, the `labels`
//! table out (all through [`ShardWriter`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aion_events::{
    decode, AnswerEvent, DecodeLimits, EnrichedRetrieval, LabelEvent, Schema, ShardEntry,
};
use aion_kafka::{Ack, KafkaConfig, Record, Sink, Source, SourceConfig};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::labels::LabelRow;
use crate::redact::Redactor;
use crate::writer::{RollPolicy, ShardRecord, ShardWriter};
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
    /// The enriched-retrieval topic and the root of the entity-mention table, if wanted.
    pub entities: Option<(String, PathBuf)>,
    /// The labels topic and the root of the `labels` table, if wanted.
    pub labels: Option<(String, PathBuf)>,
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
    let mut topics = vec![options.topic.clone()];
    topics.extend(options.entities.iter().map(|(topic, _)| topic.clone()));
    topics.extend(options.labels.iter().map(|(topic, _)| topic.clone()));
    let mut config = SourceConfig::new(STAGE, topics.clone(), options.group_id.clone());
    // Buffers hold acks until their file is renamed into place: the roll policy bounds them.
    config.max_in_flight = None;
    config.revoke_wait = Duration::ZERO;
    let mut source = Source::new(&options.kafka, &config)?;
    for topic in &topics {
        aion_kafka::partition_count(&options.kafka, &aion_events::topics::dlq(topic))?;
    }
    let sink = Sink::new(&options.kafka, STAGE)?;
    let redactor = || options.redact.then(Redactor::new);
    let mut answers: ShardWriter<AnswerEvent, Ack> =
        ShardWriter::open(&options.root, options.policy.clone(), redactor())?;
    let mut entities: Option<ShardWriter<EnrichedRetrieval, Ack>> = options
        .entities
        .as_ref()
        .map(|(_, root)| ShardWriter::open(root, options.policy.clone(), redactor()))
        .transpose()?;
    // Labels carry no assistant text to redact.
    let mut labels: Option<ShardWriter<LabelRow, Ack>> = options
        .labels
        .as_ref()
        .map(|(_, root)| ShardWriter::open(root, options.policy.clone(), None))
        .transpose()?;
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
            if *record.topic == *options.topic {
                buffer(&mut answers, record, &sink, &options.decode).await?;
            } else if options
                .labels
                .as_ref()
                .is_some_and(|(t, _)| *t == *record.topic)
            {
                if let Some(writer) = labels.as_mut() {
                    buffer_label(writer, record, &sink, &options.decode).await?;
                }
            } else if let Some(writer) = entities.as_mut() {
                buffer(writer, record, &sink, &options.decode).await?;
            }
        }
        // A rebalance moves partitions: what is buffered for them is replayed by their new owner.
        let force = source.revocations() != revocations;
        revocations = source.revocations();
        let now = Instant::now();
        let (acks, entries) = answers.roll(now, force)?;
        committed(&entries, "shards", stats);
        // Durable now: their offsets may be stored.
        drop(acks);
        if let Some(writer) = entities.as_mut() {
            let (acks, entries) = writer.roll(now, force)?;
            committed(&entries, "entities", stats);
            drop(acks);
        }
        if let Some(writer) = labels.as_mut() {
            let (acks, entries) = writer.roll(now, force)?;
            committed(&entries, "labels", stats);
            drop(acks);
        }
        stats
            .skipped_replays
            .store(answers.skipped_replays, Ordering::Relaxed);
    };
    let buffered = answers
        .into_acks()
        .chain(entities.into_iter().flat_map(ShardWriter::into_acks))
        .chain(labels.into_iter().flat_map(ShardWriter::into_acks));
    for ack in buffered {
        ack.abandon();
    }
    sink.flush(Duration::from_secs(30))?;
    source.shutdown(Duration::ZERO).await?;
    result
}

/// Decodes `record` into `writer`'s buffers, or dead-letters it.
async fn buffer<R: ShardRecord + Schema>(
    writer: &mut ShardWriter<R, Ack>,
    record: Record,
    sink: &Sink,
    limits: &DecodeLimits,
) -> Result<()> {
    match decode::<R>(&record.payload, limits) {
        Ok(event) => {
            writer.push(record.partition, record.offset, event, record.ack);
        }
        Err(reject) => {
            sink.dead_letter(record, &reject.path, &reject.message)
                .await?
        }
    }
    Ok(())
}

/// Decodes a `labels.v1` record into the labels table's buffers, or dead-letters it.
async fn buffer_label(
    writer: &mut ShardWriter<LabelRow, Ack>,
    record: Record,
    sink: &Sink,
    limits: &DecodeLimits,
) -> Result<()> {
    match decode::<LabelEvent>(&record.payload, limits) {
        Ok(label) => {
            writer.push(record.partition, record.offset, label.into(), record.ack);
        }
        Err(reject) => {
            sink.dead_letter(record, &reject.path, &reject.message)
                .await?
        }
    }
    Ok(())
}

fn committed(entries: &[ShardEntry], table: &'static str, stats: &Stats) {
    for e in entries {
        if table == "shards" {
            stats.written.fetch_add(e.rows as u64, Ordering::Relaxed);
            stats.shards.fetch_add(1, Ordering::Relaxed);
        }
        metrics::counter!("aion_shards_committed_total", "table" => table).increment(1);
        info!(table, path = %e.path, rows = e.rows, "shard committed");
    }
}
