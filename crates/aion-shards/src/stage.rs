//! The shard writer stage: `answer.v1` in, Parquet training shards out; and, when configured,
//! `retrieval.enriched.v1` in, the entity-mention table out and each answer joined with its
//! retrieval's signals ([`Joiner`]); and `labels.v1` in, the `labels` table out (all tables
//! through [`ShardWriter`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aion_events::ndcg::Gain;
use aion_events::{AnswerEvent, DecodeLimits, EnrichedRetrieval, LabelEvent, Mention, ShardEntry};
use aion_kafka::{Ack, KafkaConfig, Record};
use aion_runtime::{Holding, Io, Plan, Stage};
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
    pub counts: aion_runtime::Counts,
    pub written: AtomicU64,
    pub shards: AtomicU64,
    pub skipped_replays: AtomicU64,
    /// Rows written with their retrieval's signals, and rows whose retrieval was not seen in time.
    pub joined: AtomicU64,
    pub join_timeouts: AtomicU64,
    /// PII replaced by placeholders (per type: the metric `aion_redactions_total{type}`).
    pub redacted: AtomicU64,
}

/// The shard writer as a stage of the runtime.
struct ShardStage<'a> {
    options: &'a ShardOptions,
    stats: &'a Stats,
    finder: Option<Arc<dyn EntityFinder>>,
    patterns: Redactor,
    answers: ShardWriter<TrainingRow, Ack>,
    joiner: Joiner<Ack>,
    entities: Option<ShardWriter<EntityRow, Ack>>,
    labels: Option<ShardWriter<LabelRow, Ack>>,
    answers_copy: Option<Remote>,
    entities_copy: Option<Remote>,
    labels_copy: Option<Remote>,
    /// Partitions were revoked: write out everything buffered (their new owner replays the rest).
    force: bool,
}

impl Stage for ShardStage<'_> {
    type Error = Error;
    const NAME: &'static str = STAGE;

    async fn handle(&mut self, io: &mut Io<'_>, records: Vec<Record>) -> Result<()> {
        let options = self.options;
        for record in records {
            if *record.topic == *options.topic {
                if let Some((record, answer)) = io.decode::<AnswerEvent>(record).await? {
                    let (partition, offset) = (record.partition, record.offset);
                    self.joiner
                        .answer(partition, offset, answer, record.ack, Instant::now());
                }
            } else if options
                .labels
                .as_ref()
                .is_some_and(|(t, _)| *t == *record.topic)
            {
                if let Some(writer) = self.labels.as_mut() {
                    if let Some((record, label)) = io.decode::<LabelEvent>(record).await? {
                        // Keyed by the query as labelled, then redacted like a prompt.
                        let mut row = LabelRow::from(label);
                        if let (Some(finder), Some(query)) = (&self.finder, &mut row.label.query) {
                            let found =
                                tokio::task::block_in_place(|| finder.find(&[query.as_str()]))
                                    .map_err(Error::EntityFinder)?;
                            let spans = found.first().map_or(&[][..], Vec::as_slice);
                            *query = redact_spans(query, spans, &mut writer.redactions);
                        }
                        writer.push(record.partition, record.offset, row, record.ack);
                    }
                }
            } else if let Some(writer) = self.entities.as_mut() {
                if let Some((record, mut event)) = io.decode::<EnrichedRetrieval>(record).await? {
                    if let Some(finder) = &self.finder {
                        // The names in the query and passages, found here whatever the enricher
                        // found: the table redacts them inside its terms (keyphrases included).
                        let found =
                            tokio::task::block_in_place(|| names_in(finder.as_ref(), &event))?;
                        event.mentions.extend(found);
                    }
                    let join = &options.join;
                    let signals = RetrievalSignals::of(&event, join.ndcg_k, join.ndcg_gain);
                    let ndcg = signals.ndcg;
                    self.joiner
                        .retrieval(&event.tenant_id, &event.event_id, signals);
                    let row = EntityRow { event, ndcg };
                    writer.push(record.partition, record.offset, row, record.ack);
                }
            }
        }
        Ok(())
    }

    async fn advance(&mut self, _io: &mut Io<'_>) -> Result<()> {
        let (options, stats) = (self.options, self.stats);
        let force = std::mem::take(&mut self.force);
        let now = Instant::now();
        let mut released = if force {
            self.joiner.drain()
        } else {
            self.joiner.ready(now, REDACT_BATCH)
        };
        if let Some(finder) = &self.finder {
            // The model takes a core for a while: hand this worker's other tasks on meanwhile.
            tokio::task::block_in_place(|| {
                redact_names(
                    finder.as_ref(),
                    &self.patterns,
                    &mut released,
                    &mut self.answers.redactions,
                )
            })?;
        }
        for (partition, offset, row, ack) in released {
            self.answers.push(partition, offset, row, ack);
        }
        stats.joined.store(self.joiner.joined, Ordering::Relaxed);
        stats
            .join_timeouts
            .store(self.joiner.timed_out, Ordering::Relaxed);
        roll(
            &mut self.answers,
            now,
            force,
            &options.root,
            &self.answers_copy,
            "shards",
            stats,
        )
        .await?;
        if let (Some(writer), Some((_, root))) = (self.entities.as_mut(), options.entities.as_ref())
        {
            roll(
                writer,
                now,
                force,
                root,
                &self.entities_copy,
                "entities",
                stats,
            )
            .await?;
        }
        if let (Some(writer), Some((_, root))) = (self.labels.as_mut(), options.labels.as_ref()) {
            roll(writer, now, force, root, &self.labels_copy, "labels", stats).await?;
        }
        stats
            .skipped_replays
            .store(self.answers.skipped_replays, Ordering::Relaxed);
        let redacted = std::mem::take(&mut self.answers.redactions)
            .into_iter()
            .chain(
                self.entities
                    .as_mut()
                    .into_iter()
                    .flat_map(|w| std::mem::take(&mut w.redactions)),
            )
            .chain(
                self.labels
                    .as_mut()
                    .into_iter()
                    .flat_map(|w| std::mem::take(&mut w.redactions)),
            );
        for (pii, n) in redacted {
            stats.redacted.fetch_add(n, Ordering::Relaxed);
            metrics::counter!("aion_redactions_total", "type" => pii.name()).increment(n);
        }
        Ok(())
    }

    async fn revoked(&mut self, _io: &mut Io<'_>) -> Result<()> {
        // A rebalance moves partitions: what is buffered for them is replayed by their new owner.
        self.force = true;
        Ok(())
    }

    fn tick(&self) -> Option<Duration> {
        // Rows waiting for the name finder: take the next batch at once.
        Some(if self.joiner.has_ready(Instant::now()) {
            Duration::ZERO
        } else {
            TICK
        })
    }

    fn accepting(&self) -> bool {
        self.joiner.pending() < MAX_QUEUED
    }
}

/// Runs until `stop`; buffered rows are abandoned (replayed by the next run), never half-written.
pub async fn run(options: &ShardOptions, stop: CancellationToken, stats: &Stats) -> Result<()> {
    let mut topics = vec![options.topic.clone()];
    topics.extend(options.entities.iter().map(|(topic, _)| topic.clone()));
    topics.extend(options.labels.iter().map(|(topic, _)| topic.clone()));
    let mut plan = Plan::new(topics, Vec::new(), options.group_id.clone());
    // Buffers hold acks until their file is renamed into place: the roll policy bounds them.
    plan.holding = Holding::State;
    plan.decode = options.decode;
    let finder = match (&options.finder, options.redact) {
        (Some(f), true) => Some(f.clone()),
        (None, true) => return Err(Error::NoEntityFinder),
        (_, false) => None,
    };
    let redactor = || options.redact.then(Redactor::new);
    let answers = ShardWriter::open(&options.root, options.policy.clone(), redactor())?;
    let wait = if options.entities.is_some() {
        options.join.wait
    } else {
        Duration::ZERO
    };
    let entities = options
        .entities
        .as_ref()
        .map(|(_, root)| ShardWriter::open(root, options.policy.clone(), redactor()))
        .transpose()?;
    let labels = options
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
    info!(root = %options.root.display(), redact = options.redact, remote = options.remote.is_some(), "shard tables open");
    let stage = ShardStage {
        options,
        stats,
        finder,
        patterns: Redactor::new(),
        answers,
        joiner: Joiner::new(wait, options.join.capacity),
        entities,
        labels,
        answers_copy,
        entities_copy,
        labels_copy,
        force: false,
    };
    aion_runtime::run(&options.kafka, &plan, stage, stop, &stats.counts).await
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
