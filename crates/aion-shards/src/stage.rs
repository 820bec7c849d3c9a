//! The shard writer stage: `answer.v1` in, Parquet training shards out; and, when configured,
//! `retrieval.enriched.v1` in, the entity-mention table out and each answer joined with its
//! retrieval's signals ([`Joiner`]); and `labels.v1` in, the `labels` table out (all tables
//! through [`ShardWriter`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aion_events::ndcg::Gain;
use aion_events::{
    decode, AnswerEvent, DecodeLimits, EnrichedRetrieval, LabelEvent, Mention, Schema, ShardEntry,
};
use aion_kafka::{Ack, KafkaConfig, Record, Sink, Source, SourceConfig};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::entities::EntityRow;
use crate::join::{Joiner, RetrievalSignals, TrainingRow};
use crate::labels::LabelRow;
use crate::redact::{redact_spans, Counts, EntityFinder, Redactor};
use crate::remote::Remote;
use crate::writer::{RollPolicy, ShardRecord, ShardWriter};
use crate::{Error, Result};

const STAGE: &str = "shards";
/// How often buffers are checked against the age limit.
const TICK: Duration = Duration::from_millis(500);
/// Rows redacted per loop turn: the name finder takes tens of milliseconds a row on one core, so
/// a turn stays short enough to roll files and see a stop in time.
const REDACT_BATCH: usize = 64;
/// Answers queued for the join or the name finder beyond which reading pauses (backpressure).
const MAX_QUEUED: usize = 20_000;

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
    /// Object storage the tables are copied to (`<url>/shards/…`, `<url>/entities/…`), if any.
    pub remote: Option<Remote>,
    /// How answers are joined with their enriched retrieval (only with `entities`).
    pub join: JoinOptions,
    /// Redact PII before writing (on by default; off only for data known to be clean).
    pub redact: bool,
    /// The model that finds names in each answer's own prompt and reply; required with `redact`,
    /// so a row never depends on its retrieval's enrichment (late, missing or foreign) for it.
    pub finder: Option<Arc<dyn EntityFinder>>,
    pub decode: DecodeLimits,
}

/// The answer → retrieval join.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// How long an answer waits for its enriched retrieval before it is written without its
    /// signals; rows behind it on its partition wait with it.
    pub wait: Duration,
    /// Retrievals remembered for answers that arrive after them.
    pub capacity: usize,
    /// nDCG cut-off and gain: the windows stage's, so both report the same number.
    pub ndcg_k: usize,
    pub ndcg_gain: Gain,
}

impl Default for JoinOptions {
    fn default() -> Self {
        // The enricher runs a model per event and trails the raw topic by seconds; 30 s covers
        // that without holding shards back for long. 200k retrievals ≈ tens of MB.
        Self {
            wait: Duration::from_secs(30),
            capacity: 200_000,
            ndcg_k: 10,
            ndcg_gain: Gain::Linear,
        }
    }
}

/// Live counts.
#[derive(Debug, Default)]
pub struct Stats {
    pub received: AtomicU64,
    pub written: AtomicU64,
    pub shards: AtomicU64,
    pub skipped_replays: AtomicU64,
    /// Rows written with their retrieval's signals, and rows whose retrieval was not seen in time.
    pub joined: AtomicU64,
    pub join_timeouts: AtomicU64,
    /// PII replaced by placeholders (per type: the metric `aion_redactions_total{type}`).
    pub redacted: AtomicU64,
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
    let finder = match (&options.finder, options.redact) {
        (Some(f), true) => Some(f.clone()),
        (None, true) => return Err(Error::NoEntityFinder),
        (_, false) => None,
    };
    let patterns = Redactor::new();
    let mut source = Source::new(&options.kafka, &config)?;
    for topic in &topics {
        aion_kafka::partition_count(&options.kafka, &aion_events::topics::dlq(topic))?;
    }
    let sink = Sink::new(&options.kafka, STAGE)?;
    let redactor = || options.redact.then(Redactor::new);
    let mut answers: ShardWriter<TrainingRow, Ack> =
        ShardWriter::open(&options.root, options.policy.clone(), redactor())?;
    let join = &options.join;
    let wait = if options.entities.is_some() {
        join.wait
    } else {
        Duration::ZERO
    };
    let mut joiner: Joiner<Ack> = Joiner::new(wait, join.capacity);
    let mut entities: Option<ShardWriter<EntityRow, Ack>> = options
        .entities
        .as_ref()
        .map(|(_, root)| ShardWriter::open(root, options.policy.clone(), redactor()))
        .transpose()?;
    let mut labels: Option<ShardWriter<LabelRow, Ack>> = options
        .labels
        .as_ref()
        .map(|(_, root)| ShardWriter::open(root, options.policy.clone(), redactor()))
        .transpose()?;
    // Each table's copy sits under its local directory's name.
    let copy = |root: &PathBuf| {
        options.remote.as_ref().map(|r| {
            r.table(
                &root
                    .file_name()
                    .map_or_else(|| "shards".into(), |n| n.to_string_lossy().into_owned()),
            )
        })
    };
    let answers_copy = copy(&options.root);
    let entities_copy = options.entities.as_ref().and_then(|(_, root)| copy(root));
    let labels_copy = options.labels.as_ref().and_then(|(_, root)| copy(root));
    for (remote, root) in [
        (&answers_copy, Some(&options.root)),
        (&entities_copy, options.entities.as_ref().map(|(_, r)| r)),
        (&labels_copy, options.labels.as_ref().map(|(_, r)| r)),
    ] {
        if let (Some(remote), Some(root)) = (remote, root) {
            remote.catch_up(root).await?;
        }
    }
    info!(root = %options.root.display(), redact = options.redact, remote = options.remote.is_some(), "shard writer started");
    let mut revocations = source.revocations();
    let result = loop {
        // Rows waiting for the name finder: take the next batch at once.
        let tick = if joiner.has_ready(Instant::now()) {
            Duration::ZERO
        } else {
            TICK
        };
        let record = tokio::select! {
            biased;
            () = stop.cancelled() => break Ok(()),
            r = source.recv(), if joiner.pending() < MAX_QUEUED => Some(r?),
            () = tokio::time::sleep(tick) => None,
        };
        if let Some(record) = record {
            stats.received.fetch_add(1, Ordering::Relaxed);
            if *record.topic == *options.topic {
                if let Some((record, answer)) =
                    decoded::<AnswerEvent>(record, &sink, &options.decode).await?
                {
                    let (partition, offset) = (record.partition, record.offset);
                    joiner.answer(partition, offset, answer, record.ack, Instant::now());
                }
            } else if options
                .labels
                .as_ref()
                .is_some_and(|(t, _)| *t == *record.topic)
            {
                if let Some(writer) = labels.as_mut() {
                    if let Some((record, label)) =
                        decoded::<LabelEvent>(record, &sink, &options.decode).await?
                    {
                        // Keyed by the query as labelled, then redacted like a prompt.
                        let mut row = LabelRow::from(label);
                        if let (Some(finder), Some(query)) = (&finder, &mut row.label.query) {
                            let found =
                                tokio::task::block_in_place(|| finder.find(&[query.as_str()]))
                                    .map_err(Error::EntityFinder)?;
                            let spans = found.first().map_or(&[][..], Vec::as_slice);
                            *query = redact_spans(query, spans, &mut writer.redactions);
                        }
                        writer.push(record.partition, record.offset, row, record.ack);
                    }
                }
            } else if let Some(writer) = entities.as_mut() {
                if let Some((record, mut event)) =
                    decoded::<EnrichedRetrieval>(record, &sink, &options.decode).await?
                {
                    if let Some(finder) = &finder {
                        // The names in the query and passages, found here whatever the enricher
                        // found: the table redacts them inside its terms (keyphrases included).
                        let found =
                            tokio::task::block_in_place(|| names_in(finder.as_ref(), &event))?;
                        event.mentions.extend(found);
                    }
                    let signals = RetrievalSignals::of(&event, join.ndcg_k, join.ndcg_gain);
                    let ndcg = signals.ndcg;
                    joiner.retrieval(&event.tenant_id, &event.event_id, signals);
                    let row = EntityRow { event, ndcg };
                    writer.push(record.partition, record.offset, row, record.ack);
                }
            }
        }
        // A rebalance moves partitions: what is buffered for them is replayed by their new owner.
        let force = source.revocations() != revocations;
        revocations = source.revocations();
        let now = Instant::now();
        let mut released = if force {
            joiner.drain()
        } else {
            joiner.ready(now, REDACT_BATCH)
        };
        if let Some(finder) = &finder {
            // The model takes a core for a while: hand this worker's other tasks on meanwhile.
            tokio::task::block_in_place(|| {
                redact_names(
                    finder.as_ref(),
                    &patterns,
                    &mut released,
                    &mut answers.redactions,
                )
            })?;
        }
        for (partition, offset, row, ack) in released {
            answers.push(partition, offset, row, ack);
        }
        stats.joined.store(joiner.joined, Ordering::Relaxed);
        stats
            .join_timeouts
            .store(joiner.timed_out, Ordering::Relaxed);
        roll(
            &mut answers,
            now,
            force,
            &options.root,
            &answers_copy,
            "shards",
            stats,
        )
        .await?;
        if let (Some(writer), Some((_, root))) = (entities.as_mut(), options.entities.as_ref()) {
            roll(writer, now, force, root, &entities_copy, "entities", stats).await?;
        }
        if let (Some(writer), Some((_, root))) = (labels.as_mut(), options.labels.as_ref()) {
            roll(writer, now, force, root, &labels_copy, "labels", stats).await?;
        }
        stats
            .skipped_replays
            .store(answers.skipped_replays, Ordering::Relaxed);
        let redacted = std::mem::take(&mut answers.redactions)
            .into_iter()
            .chain(
                entities
                    .as_mut()
                    .into_iter()
                    .flat_map(|w| std::mem::take(&mut w.redactions)),
            )
            .chain(
                labels
                    .as_mut()
                    .into_iter()
                    .flat_map(|w| std::mem::take(&mut w.redactions)),
            );
        for (pii, n) in redacted {
            stats.redacted.fetch_add(n, Ordering::Relaxed);
            metrics::counter!("aion_redactions_total", "type" => pii.name()).increment(n);
        }
    };
    // Buffered rows are not durable: dropped without an outcome, they are replayed.
    drop((answers, joiner, entities, labels));
    sink.flush(Duration::from_secs(30))?;
    source.shutdown(Duration::ZERO).await?;
    result
}

/// Redacts each row's prompt and reply: the patterns first (typed placeholders such as `<CPF>`),
/// then what `finder` finds in the rest.
fn redact_names<A>(
    finder: &dyn EntityFinder,
    patterns: &Redactor,
    rows: &mut [crate::Joined<A>],
    counts: &mut Counts,
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let texts: Vec<String> = rows
        .iter()
        .flat_map(|(_, _, row, _)| [&row.answer.prompt, &row.answer.reply])
        .map(|text| patterns.redact(text, counts))
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let found = finder.find(&refs).map_err(Error::EntityFinder)?;
    let mut redacted = refs
        .iter()
        .zip(&found)
        .map(|(text, spans)| redact_spans(text, spans, counts));
    for (_, _, row, _) in rows {
        if let (Some(prompt), Some(reply)) = (redacted.next(), redacted.next()) {
            row.answer.prompt = prompt;
            row.answer.reply = reply;
        }
    }
    Ok(())
}

/// What `finder` finds in a retrieval's query and its best passages (the enricher's sample).
fn names_in(finder: &dyn EntityFinder, event: &EnrichedRetrieval) -> Result<Vec<Mention>> {
    let mut results: Vec<_> = event.results.iter().collect();
    results.sort_by_key(|r| r.rank);
    let texts: Vec<&str> = std::iter::once(event.query.as_str())
        .chain(results.iter().take(3).map(|r| r.text.as_str()))
        .collect();
    let found = finder.find(&texts).map_err(Error::EntityFinder)?;
    Ok(texts
        .iter()
        .zip(found)
        .flat_map(|(text, spans)| {
            spans.into_iter().filter_map(move |(kind, start, end)| {
                Some(Mention {
                    text: text.get(start..end)?.to_owned(),
                    kind,
                    score: 1.0,
                })
            })
        })
        .collect())
}

/// The event of `record`, or `None` once it is dead-lettered.
async fn decoded<E: Schema>(
    record: Record,
    sink: &Sink,
    limits: &DecodeLimits,
) -> Result<Option<(Record, E)>> {
    match decode::<E>(&record.payload, limits) {
        Ok(event) => Ok(Some((record, event))),
        Err(reject) => {
            sink.dead_letter(record, &reject.path, &reject.message)
                .await?;
            Ok(None)
        }
    }
}

/// Writes the buffers of `writer` that are due, copies them to `remote`, and only then releases
/// their rows' acks (their offsets may be stored).
async fn roll<R: ShardRecord>(
    writer: &mut ShardWriter<R, Ack>,
    now: Instant,
    force: bool,
    root: &Path,
    remote: &Option<Remote>,
    table: &'static str,
    stats: &Stats,
) -> Result<()> {
    let (acks, entries) = writer.roll(now, force)?;
    if let Some(remote) = remote {
        remote.upload(root, &entries).await?;
    }
    committed(&entries, table, stats);
    acks.into_iter().for_each(Ack::done);
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
