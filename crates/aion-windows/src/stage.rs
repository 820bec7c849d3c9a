//! The windows stage: consumes retrieval and answer events, scores them, closes windows on the
//! watermark and publishes each closed window's aggregates to `metrics.v1` and the Parquet table.
//!
//! Delivery: an event's offset is stored only once every window it counts in is durable (topic
//! records acknowledged, then the Parquet file renamed into place) and, if it was late, its
//! `<topic>.late` record is acknowledged; invalid events go to `<topic>.dlq`. Offsets are stored
//! only at resume points, so a replay rebuilds every watermark exactly. A rebalance restarts the
//! stage's state from the committed offsets.
//!
//! Retrievals without judgments are scored with labelled judgments of their query from the
//! `labels` table under the data dir ([`crate::labels`]), re-read every few seconds.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aion_events::{decode, AnswerEvent, DecodeLimits, RetrievalEvent};
use aion_kafka::{headers, Ack, KafkaConfig, OwnedHeaders, Record, Source};
use aion_runtime::{Holding, Io, Plan, Stage};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use aion_labels::JudgmentMap;
use datafusion::arrow::compute::concat_batches;

use crate::aggregate::Aggregator;
use crate::labels::{LabelledJudgments, LABELS_TABLE};
use crate::operator::{
    ClosedGroup, Closing, Measure, Observation, Origin, ReleasedPane, WindowOperator,
};
use crate::table::{panes_batch, Table};
use crate::{Error, Result, WindowsConfig};

/// Table of closed windows' aggregates, under [`StageOptions::data_dir`].
pub const METRICS_TABLE: &str = aion_events::layout::Table::Metrics.name();
/// Table of every counted event once, under [`StageOptions::data_dir`].
pub const HISTORY_TABLE: &str = aion_events::layout::Table::WindowHistory.name();

/// Header of a `<topic>.late` record: the windows it missed, comma-separated.
pub const LATE_WINDOWS_HEADER: &str = "aion.late.windows";

const STAGE: &str = "windows";
/// Watermarks also advance by time (idle partitions), so the loop wakes at least this often.
const TICK: Duration = Duration::from_millis(500);
/// How often the inputs' backlog is asked of the broker: a partition counts as caught up for
/// [`crate::operator::BACKLOG_FRESH`] after a measurement.
const BACKLOG_EVERY: Duration = Duration::from_secs(1);
/// A broker slower than this leaves the backlog unmeasured: partitions keep holding.
const BACKLOG_TIMEOUT: Duration = Duration::from_secs(1);

/// Where and how one windows stage runs.
#[derive(Debug, Clone)]
pub struct StageOptions {
    pub kafka: KafkaConfig,
    pub group_id: String,
    /// Where the Parquet tables go: `metrics/` and `window_history/` under it.
    pub data_dir: PathBuf,
    pub decode: DecodeLimits,
}

/// Live counts, readable while the stage runs.
#[derive(Debug, Default)]
pub struct Stats {
    /// Received, sent (window results and late records) and dead-lettered records.
    pub counts: aion_runtime::Counts,
    pub late: AtomicU64,
    pub windows_closed: AtomicU64,
    pub stored_events: AtomicU64,
    /// Records of the inputs in the log and not read yet, at the last measurement.
    pub input_lag: AtomicU64,
    /// Windows the watermark would close if partitions with unread records did not hold it.
    pub held_by_lag: AtomicU64,
    /// Seconds from the watermark passing window ends to their results being durable, the most
    /// recent [`CLOSE_DELAYS_KEPT`].
    pub close_delays: Mutex<VecDeque<f64>>,
}

/// How many close delays [`Stats`] keeps.
pub const CLOSE_DELAYS_KEPT: usize = 10_000;

/// Where closed windows go besides the topic.
struct Outputs {
    aggregator: Aggregator,
    metrics: Table,
    history: Table,
    topic: String,
    topic_partitions: usize,
}

/// The windows stage as a stage of the runtime.
struct WindowsStage<'a> {
    config: &'a WindowsConfig,
    stats: &'a Stats,
    inputs: [String; 2],
    /// Every input partition (input, partition), assigned here or not.
    declared: Vec<(u8, i32)>,
    operator: WindowOperator<Ack>,
    outputs: Outputs,
    labelled: LabelledJudgments,
    next_backlog: Instant,
}

impl Stage for WindowsStage<'_> {
    type Error = Error;
    const NAME: &'static str = STAGE;

    async fn handle(&mut self, io: &mut Io<'_>, records: Vec<Record>) -> Result<()> {
        for record in records {
            let input = u8::from(*record.topic != *self.inputs[0]);
            admit(
                self.config,
                io,
                &mut self.operator,
                input,
                record,
                self.stats,
                self.labelled.map(),
            )
            .await?;
        }
        Ok(())
    }

    async fn advance(&mut self, io: &mut Io<'_>) -> Result<()> {
        let stats = self.stats;
        self.labelled.refresh(Instant::now());
        if Instant::now() >= self.next_backlog {
            measure_backlog(
                io.source(),
                &self.inputs,
                &self.declared,
                &mut self.operator,
                stats,
            );
            self.next_backlog = Instant::now() + BACKLOG_EVERY;
        }
        let advanced = Instant::now();
        let Closing {
            groups,
            released,
            release,
        } = self.operator.close(advanced);
        if !groups.is_empty() || !released.is_empty() {
            publish(io, &self.outputs, groups, &released, stats).await?;
            let delay = advanced.elapsed().as_secs_f64();
            metrics::histogram!("aion_window_close_delay_seconds").record(delay);
            let mut delays = stats.close_delays.lock().unwrap_or_else(|p| p.into_inner());
            if delays.len() == CLOSE_DELAYS_KEPT {
                delays.pop_front();
            }
            delays.push_back(delay);
        }
        // Only now, with the results durable, may these events' offsets be stored.
        release.into_iter().for_each(Ack::done);
        stats
            .stored_events
            .store(self.operator.stored_rows() as u64, Ordering::Relaxed);
        Ok(())
    }

    async fn revoked(&mut self, _io: &mut Io<'_>) -> Result<()> {
        // Open windows are rebuilt by replaying from the committed offsets (the runtime reopens
        // the source): what this member held is dropped without an outcome.
        self.operator = operator(self.config, &self.declared);
        Ok(())
    }

    fn tick(&self) -> Option<Duration> {
        Some(TICK)
    }
}

/// A window operator with nothing open, over every declared input partition.
fn operator(config: &WindowsConfig, declared: &[(u8, i32)]) -> WindowOperator<Ack> {
    let mut operator = WindowOperator::new(config);
    let now = Instant::now();
    for &(input, partition) in declared {
        operator.add_partition(input, partition, now);
    }
    operator
}

/// Runs until `stop` is cancelled. A rebalance rebuilds the state by replay and goes on.
pub async fn run(
    config: &WindowsConfig,
    options: &StageOptions,
    stop: CancellationToken,
    stats: &Stats,
) -> Result<()> {
    let inputs = [config.retrieval_topic.clone(), config.answer_topic.clone()];
    let mut outputs = vec![config.output_topic.clone()];
    outputs.extend(inputs.iter().map(|t| aion_events::topics::late(t)));
    let mut plan = Plan::new(inputs.to_vec(), outputs, options.group_id.clone());
    // Acks wait in open windows by design.
    plan.holding = Holding::State;
    plan.resume_points = true;
    plan.replay_on_revoke = true;
    plan.decode = options.decode;
    let mut declared = Vec::new();
    for (i, topic) in inputs.iter().enumerate() {
        for partition in 0..aion_kafka::partition_count(&options.kafka, topic)? {
            declared.push((i as u8, partition as i32));
        }
    }
    let outputs = Outputs {
        aggregator: Aggregator::new(&config.sql_text).await?,
        metrics: Table::metrics(options.data_dir.join(METRICS_TABLE)),
        history: Table::history(options.data_dir.join(HISTORY_TABLE)),
        topic: config.output_topic.clone(),
        topic_partitions: aion_kafka::partition_count(&options.kafka, &config.output_topic)?,
    };
    for table in [&outputs.metrics, &outputs.history] {
        let moved = table.migrate_tenant_directories()?;
        if moved > 0 {
            info!(moved, table = %table.root().display(), "moved files of the per-tenant layout into the per-day one");
        }
    }
    let mut labelled = LabelledJudgments::new(options.data_dir.join(LABELS_TABLE));
    labelled.refresh(Instant::now());
    info!(data = %options.data_dir.display(), "window tables open");
    let stage = WindowsStage {
        config,
        stats,
        operator: operator(config, &declared),
        inputs,
        declared,
        outputs,
        labelled,
        next_backlog: Instant::now(),
    };
    aion_runtime::run(&options.kafka, &plan, stage, stop, &stats.counts).await
}

/// Asks the broker how far behind each input partition is, so that only caught-up partitions go
/// idle, and reports it. A partition not assigned to this member has nothing to read here.
fn measure_backlog(
    source: &Source,
    inputs: &[String; 2],
    declared: &[(u8, i32)],
    operator: &mut WindowOperator<Ack>,
    stats: &Stats,
) {
    let measured = Instant::now();
    // Broker round trips: the runtime's other tasks (every stage of `aion up`) move to the other
    // workers meanwhile.
    let backlog = match tokio::task::block_in_place(|| source.backlog(BACKLOG_TIMEOUT)) {
        Ok(b) => b,
        Err(error) => {
            // Unmeasured partitions keep holding the watermark: safe, only slower.
            debug!(%error, "input backlog not measured");
            return;
        }
    };
    let mut total = 0;
    for &(input, partition) in declared {
        let topic = &inputs[usize::from(input)];
        let records = match backlog
            .iter()
            .find(|b| b.partition == partition && *b.topic == **topic)
        {
            Some(b) => b.records,
            None if !backlog.is_empty() => Some(0),
            None => None,
        };
        if let Some(records) = records {
            operator.set_backlog(input, partition, records, measured);
            total += records;
            metrics::gauge!("aion_window_input_lag", "topic" => topic.clone(), "partition" => partition.to_string())
                .set(records as f64);
        }
    }
    let held = operator.held_by_lag(measured);
    stats.input_lag.store(total as u64, Ordering::Relaxed);
    stats.held_by_lag.store(held as u64, Ordering::Relaxed);
    metrics::gauge!("aion_windows_held_by_lag").set(held as f64);
    let oldest = operator.oldest_open(measured).unwrap_or_default();
    metrics::gauge!("aion_window_oldest_open_seconds").set(oldest.as_secs_f64());
}

/// Decodes one record of input 0 (retrieval) or 1 (answer) into what its windows aggregate.
pub fn observation(
    config: &WindowsConfig,
    limits: &DecodeLimits,
    input: u8,
    payload: &[u8],
) -> Result<Observation, aion_events::Reject> {
    observation_with(config, limits, input, payload, &JudgmentMap::new())
}

/// [`observation`], scoring a retrieval that carries no judgment with the labelled judgments of
/// its query in `judgments`, if any.
pub fn observation_with(
    config: &WindowsConfig,
    limits: &DecodeLimits,
    input: u8,
    payload: &[u8],
    judgments: &JudgmentMap,
) -> Result<Observation, aion_events::Reject> {
    if input == 0 {
        decode::<RetrievalEvent>(payload, limits).map(|mut e| {
            if !judgments.is_empty() {
                judgments.fill(&mut e);
            }
            Observation {
                tenant: Arc::from(e.tenant_id.as_str()),
                ts: e.ts.timestamp_micros(),
                measure: Measure::Retrieval {
                    ndcg: aion_events::ndcg::ndcg(
                        &e.results,
                        e.judgments.as_deref(),
                        config.ndcg.k,
                        config.ndcg.gain,
                    ),
                },
            }
        })
    } else {
        decode::<AnswerEvent>(payload, limits).map(|e| Observation {
            tenant: Arc::from(e.tenant_id.as_str()),
            ts: e.ts.timestamp_micros(),
            measure: Measure::Answer {
                fallback: e.fallback,
                confidence: e.confidence,
            },
        })
    }
}

/// Refuses an event stamped more than `max_ahead` after `now`: it would move its partition's
/// watermark past every honest event after it.
fn not_ahead(
    observation: Observation,
    max_ahead: Duration,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Observation, aion_events::Reject> {
    let limit = now.timestamp_micros() + i64::try_from(max_ahead.as_micros()).unwrap_or(i64::MAX);
    if observation.ts <= limit {
        return Ok(observation);
    }
    let ts = chrono::DateTime::from_timestamp_micros(observation.ts)
        .map_or_else(|| observation.ts.to_string(), |t| t.to_rfc3339());
    Err(aion_events::Reject::new(
        "ts",
        format!(
            "event time {ts} is more than {}s ahead of this stage's clock ({}): the producer's clock is wrong",
            max_ahead.as_secs(),
            now.to_rfc3339()
        ),
    ))
}

async fn admit(
    config: &WindowsConfig,
    io: &Io<'_>,
    operator: &mut WindowOperator<Ack>,
    input: u8,
    record: Record,
    stats: &Stats,
    judgments: &JudgmentMap,
) -> Result<()> {
    let now = Instant::now();
    let origin = Origin {
        input,
        partition: record.partition,
        offset: record.offset,
    };
    let observation = observation_with(config, io.limits(), input, &record.payload, judgments)
        .and_then(|o| not_ahead(o, config.watermark.max_ahead, chrono::Utc::now()));
    let observation = match observation {
        Ok(o) => o,
        Err(reject) => {
            if operator.observe_unusable(origin, now) {
                record.ack.mark_resume_point();
            }
            io.dead_letter(record, &reject).await?;
            return Ok(());
        }
    };
    let admission = operator.observe(origin, &observation, || record.ack.clone(), now);
    if admission.resume_point {
        record.ack.mark_resume_point();
    }
    if !admission.missed.is_empty() {
        stats.late.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("aion_late_events_total", "stage" => STAGE, "topic" => record.topic.to_string())
            .increment(1);
        let missed = admission.missed.join(",");
        debug!(topic = %record.topic, offset = record.offset, %missed, "late event");
        let headers: OwnedHeaders =
            headers::lineage(&record.topic, record.partition, record.offset)
                .insert(rdkafka_header(LATE_WINDOWS_HEADER, &missed));
        io.send(
            &aion_events::topics::late(&record.topic),
            record.key.as_deref(),
            &record.payload,
            Some(headers),
            Some(record.ack),
        )
        .await?;
    } else {
        // Its only outputs are the windows it counts in: their clones of the ack say when.
        record.ack.done();
    }
    Ok(())
}

fn rdkafka_header<'a>(key: &'a str, value: &'a str) -> aion_kafka::Header<'a, &'a [u8]> {
    aion_kafka::Header {
        key,
        value: Some(value.as_bytes()),
    }
}

/// A tenant's results all go to one partition (FNV-1a of the tenant id), so the trigger gate reads
/// each tenant's windows in the order they closed, while keys stay per window.
fn tenant_partition(tenant: &str, partitions: usize) -> Option<i32> {
    let hash = aion_events::fnv1a(tenant.as_bytes());
    i32::try_from(hash % partitions.max(1) as u64).ok()
}

/// Closed (tenant, window end) groups aggregated and made durable together.
const GROUPS_PER_BATCH: usize = 4096;

/// Aggregates the closed groups and makes their results durable: metrics records acknowledged,
/// then one Parquet file per window end and batch; then the released panes' history. Results and
/// panes an earlier run wrote (a replay closes them again) are skipped.
async fn publish(
    io: &Io<'_>,
    outputs: &Outputs,
    groups: Vec<ClosedGroup>,
    released: &[ReleasedPane],
    stats: &Stats,
) -> Result<()> {
    let groups = outputs.metrics.unwritten(groups, |g| (g.end, &*g.tenant))?;
    // In bounded batches: one watermark step can close every tenant's windows at once (50,000
    // tenants close 1.2 million groups), and aggregating them all before writing any held every
    // result and delivery in memory together.
    for groups in groups.chunks(GROUPS_PER_BATCH) {
        let results = outputs.aggregator.aggregate(groups).await?;
        let mut deliveries = Vec::new();
        for m in results.iter().flat_map(|r| &r.metrics) {
            let payload = serde_json::to_vec(m).map_err(|e| Error::Sql(e.to_string()))?;
            let partition = tenant_partition(&m.tenant_id, outputs.topic_partitions);
            deliveries.push(
                io.send_confirmed(
                    &outputs.topic,
                    partition,
                    Some(m.key().as_bytes()),
                    &payload,
                )
                .await?,
            );
        }
        for delivery in deliveries {
            delivery.wait(&outputs.topic).await?;
        }
        // Groups close in (window end, tenant) order.
        for same_end in results.chunk_by(|a, b| a.end == b.end) {
            let schema = same_end[0].rows.schema();
            let rows = concat_batches(&schema, same_end.iter().map(|r| &r.rows))?;
            outputs.metrics.write(same_end[0].end, &rows)?;
        }
        let closed = results.iter().map(|r| r.metrics.len() as u64).sum();
        stats.windows_closed.fetch_add(closed, Ordering::Relaxed);
    }
    let mut panes: Vec<&ReleasedPane> = released.iter().collect();
    panes.sort_by(|a, b| (a.start, &a.tenant).cmp(&(b.start, &b.tenant)));
    let panes = outputs
        .history
        .unwritten(panes, |p| (p.start, &*p.tenant))?;
    for batch in panes.chunks(GROUPS_PER_BATCH) {
        for same_start in batch.chunk_by(|a, b| a.start == b.start) {
            outputs
                .history
                .write(same_start[0].start, &panes_batch(same_start)?)?;
        }
    }
    Ok(())
}
