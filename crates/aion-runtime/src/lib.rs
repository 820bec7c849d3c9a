//! The stage runtime: one loop for every stage.
//!
//! A [`Stage`] says what it reads and writes ([`Plan`]) and handles records; [`run`] owns the rest:
//! - the source and the sink, and at start a check that every output topic and each input's
//!   dead-letter topic exist (a missing topic fails at start, not at the first delivery);
//! - batching (up to [`Plan::batch`] records, or what arrived within [`Plan::max_wait`]), ticks
//!   ([`Stage::tick`]) and backpressure ([`Stage::accepting`]);
//! - decode → dead letter ([`Output::decode`]);
//! - rebalances ([`Stage::revoked`]; with [`Plan::replay_on_revoke`] the source is reopened so
//!   the stage rebuilds its state from the committed offsets);
//! - a clean stop: [`Stage::finish`], then outputs drained and offsets committed;
//! - the **error exit**: the stage and everything it holds is dropped without an outcome, so
//!   nothing it held is stored or committed (the next run replays it); the error is counted,
//!   logged and returned.
//!
//! Every stage counts the same things, labelled with its name ([`Stage::NAME`]): records received
//! (by the source), sent and dead-lettered, handler errors, and the handler's latency as a
//! histogram; [`Counts`] holds the same numbers for live summaries.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod relay;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aion_events::{decode, DecodeLimits, Reject, Schema};
use aion_kafka::{Delivery, KafkaConfig, OwnedHeaders, Record, Sink, Source, SourceConfig};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// How long a clean stop waits for outputs in flight before committing what is durable.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What a stage reads and writes, and how the runner feeds it.
#[derive(Debug, Clone)]
pub struct Plan {
    pub inputs: Vec<String>,
    /// Topics the stage publishes to (besides its inputs' dead-letter topics, which are implied).
    pub outputs: Vec<String>,
    pub group_id: String,
    pub holding: Holding,
    /// Offsets are stored only at records the stage marked ([`aion_kafka::Ack::mark_resume_point`]).
    pub resume_points: bool,
    /// Store and commit offsets; off for dry runs, which read without moving any group.
    pub commit: bool,
    /// Records handed to one [`Stage::handle`] call at most.
    pub batch: usize,
    /// How long the first record of a batch waits for more.
    pub max_wait: Duration,
    /// Reopen the source after a revoke: for stages whose state is rebuilt by replaying from the
    /// committed offsets (what a member keeps after a rebalance is not what it had).
    pub replay_on_revoke: bool,
    pub decode: DecodeLimits,
    /// The cluster outputs and dead letters go to, when not the inputs' (a relay between
    /// clusters).
    pub output_cluster: Option<KafkaConfig>,
}

impl Plan {
    /// One record per call, outputs settling acks, committing.
    pub fn new(inputs: Vec<String>, outputs: Vec<String>, group_id: impl Into<String>) -> Self {
        Self {
            inputs,
            outputs,
            group_id: group_id.into(),
            holding: Holding::Outputs,
            resume_points: false,
            commit: true,
            batch: 1,
            max_wait: Duration::ZERO,
            replay_on_revoke: false,
            decode: DecodeLimits::default(),
            output_cluster: None,
        }
    }
}

/// Where a stage keeps acks until they are done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    /// In its outputs only: an ack is done by a delivery report moments later. Reading pauses
    /// beyond 10,000 records in flight; a revoke and a stop wait for outputs in flight.
    Outputs,
    /// In its state (open windows, file buffers, a running job) by design: no in-flight cap, and a
    /// revoke or a stop does not wait — what is held is replayed.
    State,
}

/// A stage: what it does with records; [`run`] does the rest.
pub trait Stage: Send {
    type Error: From<aion_kafka::Error> + std::fmt::Display + Send;

    /// The stage's name: CLI verb, metric label, client id.
    const NAME: &'static str;

    /// Handles records in the order read (at most [`Plan::batch`]). Each record's ack must be
    /// done (or handed to an output, or kept in state) explicitly: a dropped ack is replayed.
    fn handle(
        &mut self,
        io: &mut Io<'_>,
        records: Vec<Record>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Time-driven work (closing windows, rolling files); runs after every batch and every tick.
    fn advance(
        &mut self,
        _io: &mut Io<'_>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        async { Ok(()) }
    }

    /// Partitions were taken from this member: settle or drop what is held for them.
    fn revoked(
        &mut self,
        _io: &mut Io<'_>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        async { Ok(()) }
    }

    /// A clean stop: save what can be saved. What is still held afterwards is replayed.
    fn finish(&mut self, _io: &mut Io<'_>) -> impl Future<Output = Result<(), Self::Error>> + Send {
        async { Ok(()) }
    }

    /// How long to wait for a record before [`Stage::advance`] runs anyway (`None`: no ticks).
    fn tick(&self) -> Option<Duration> {
        None
    }

    /// Whether to read more now (false: backpressure, only ticks run).
    fn accepting(&self) -> bool {
        true
    }
}

/// Live counts of one stage run, readable while it runs.
#[derive(Debug, Default)]
pub struct Counts {
    pub received: AtomicU64,
    pub sent: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub errors: AtomicU64,
}

impl Counts {
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.load(Ordering::Relaxed)
    }
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

/// A stage's outputs: publishing and dead-lettering, counted. Copy it into work that outlives a
/// borrow of [`Io`] (a job run under [`Io::keep_polling`]).
#[derive(Clone, Copy)]
pub struct Output<'a> {
    sink: &'a Sink,
    counts: &'a Counts,
    stage: &'static str,
    limits: &'a DecodeLimits,
}

impl<'a> Output<'a> {
    /// Queues one record; `ack` (if any) is done once the broker acknowledged it.
    pub async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
        ack: Option<aion_kafka::Ack>,
    ) -> aion_kafka::Result<()> {
        self.sink.send(topic, key, payload, headers, ack).await?;
        self.sent(1);
        Ok(())
    }

    /// Queues one record and returns its delivery, for outputs the stage must know durable.
    pub async fn send_confirmed(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        payload: &[u8],
    ) -> aion_kafka::Result<Delivery> {
        let delivery = self
            .sink
            .send_confirmed(topic, partition, key, payload)
            .await?;
        self.sent(1);
        Ok(delivery)
    }

    /// Sends `record` to its topic's dead-letter topic with the reason.
    pub async fn dead_letter(&self, record: Record, reject: &Reject) -> aion_kafka::Result<()> {
        self.sink
            .dead_letter(record, &reject.path, &reject.message)
            .await?;
        self.counts.dead_lettered.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The event in `record`, or `None` once the record is dead-lettered.
    pub async fn decode<E: Schema>(
        &self,
        record: Record,
    ) -> aion_kafka::Result<Option<(Record, E)>> {
        match decode::<E>(&record.payload, self.limits) {
            Ok(event) => Ok(Some((record, event))),
            Err(reject) => {
                self.dead_letter(record, &reject).await?;
                Ok(None)
            }
        }
    }

    /// The decode limits of this run.
    pub fn limits(&self) -> &'a DecodeLimits {
        self.limits
    }

    fn sent(&self, n: u64) {
        self.counts.sent.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("aion_sent_events_total", "stage" => self.stage).increment(n);
    }
}

/// What a stage's handlers get: its outputs and its source.
pub struct Io<'a> {
    out: Output<'a>,
    source: &'a mut Source,
    deferred: &'a mut VecDeque<Record>,
}

impl<'a> std::ops::Deref for Io<'a> {
    type Target = Output<'a>;
    fn deref(&self) -> &Output<'a> {
        &self.out
    }
}

impl<'a> Io<'a> {
    /// The outputs, to move into work run under [`Io::keep_polling`].
    pub fn output(&self) -> Output<'a> {
        self.out
    }

    /// The source, for what only it knows (backlog, revocations).
    pub fn source(&self) -> &Source {
        self.source
    }

    /// Runs `work` (minutes to hours: a training job) with the assigned partitions paused while
    /// the source keeps polling, so the group never evicts this member meanwhile. Records of
    /// partitions assigned during the work are kept and handled next.
    pub async fn keep_polling<F: Future>(&mut self, work: F) -> aion_kafka::Result<F::Output> {
        self.source.pause()?;
        tokio::pin!(work);
        let output = loop {
            tokio::select! {
                output = &mut work => break output,
                record = self.source.recv() => self.deferred.push_back(record?),
            }
        };
        self.source.resume()?;
        Ok(output)
    }
}

/// Runs `stage` until `stop` is cancelled or it fails. On an error, nothing the stage held is
/// committed: it is dropped without an outcome and replayed by the next run.
pub async fn run<S: Stage>(
    kafka: &KafkaConfig,
    plan: &Plan,
    mut stage: S,
    stop: CancellationToken,
    counts: &Counts,
) -> Result<(), S::Error> {
    let mut source = open(kafka, plan, S::NAME)?;
    let outputs = plan.output_cluster.as_ref().unwrap_or(kafka);
    for topic in plan
        .outputs
        .iter()
        .cloned()
        .chain(plan.inputs.iter().map(|t| aion_events::topics::dlq(t)))
    {
        aion_kafka::partition_count(outputs, &topic)?;
    }
    let sink = Sink::new(outputs, S::NAME)?;
    let mut deferred = VecDeque::new();
    info!(stage = S::NAME, group = %plan.group_id, inputs = ?plan.inputs, "stage started");
    let result = drive(
        kafka,
        plan,
        &mut stage,
        &mut source,
        &sink,
        &mut deferred,
        &stop,
        counts,
    )
    .await;
    match result {
        Ok(()) => {
            // What is still held (open windows, unfinished buffers) is replayed by the next run.
            drop((stage, deferred));
            sink.flush(DRAIN_TIMEOUT)?;
            let wait = match plan.holding {
                Holding::Outputs => DRAIN_TIMEOUT,
                Holding::State => Duration::ZERO,
            };
            source.shutdown(wait).await?;
            info!(
                stage = S::NAME,
                received = counts.received(),
                sent = counts.sent(),
                dead_lettered = counts.dead_lettered(),
                "stage stopped"
            );
            Ok(())
        }
        Err(e) => {
            counts.errors.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("aion_stage_errors_total", "stage" => S::NAME).increment(1);
            error!(stage = S::NAME, error = %e, "stage failed; what it held is not committed and will be replayed");
            // The stage first: its acks end pending, so closing the source stores none of them.
            drop((stage, deferred));
            drop(source);
            Err(e)
        }
    }
}

fn open(kafka: &KafkaConfig, plan: &Plan, stage: &str) -> aion_kafka::Result<Source> {
    let mut config = SourceConfig::new(stage, plan.inputs.clone(), plan.group_id.clone());
    config.explicit_resume_points = plan.resume_points;
    config.commit = plan.commit;
    if plan.holding == Holding::State {
        config.max_in_flight = None;
        config.revoke_wait = Duration::ZERO;
    }
    Source::new(kafka, &config)
}

#[allow(clippy::too_many_arguments)] // the run's parts, kept apart so the error exit can drop them in order
async fn drive<S: Stage>(
    kafka: &KafkaConfig,
    plan: &Plan,
    stage: &mut S,
    source: &mut Source,
    sink: &Sink,
    deferred: &mut VecDeque<Record>,
    stop: &CancellationToken,
    counts: &Counts,
) -> Result<(), S::Error> {
    let out = Output {
        sink,
        counts,
        stage: S::NAME,
        limits: &plan.decode,
    };
    let batch_size = plan.batch.max(1);
    let mut revocations = source.revocations();
    loop {
        if stop.is_cancelled() {
            break;
        }
        let mut batch = Vec::new();
        if deferred.is_empty() {
            let tick = stage.tick();
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                r = source.recv(), if stage.accepting() => batch.push(r?),
                () = sleep(tick) => {}
            }
            let deadline = Instant::now() + plan.max_wait;
            while !batch.is_empty() && batch.len() < batch_size {
                tokio::select! {
                    r = source.recv() => batch.push(r?),
                    () = tokio::time::sleep_until(deadline) => break,
                    () = stop.cancelled() => break,
                }
            }
        } else {
            let n = deferred.len().min(batch_size);
            batch.extend(deferred.drain(..n));
        }
        let mut io = Io {
            out,
            source: &mut *source,
            deferred: &mut *deferred,
        };
        if io.source.revocations() != revocations {
            revocations = io.source.revocations();
            stage.revoked(&mut io).await?;
            if plan.replay_on_revoke {
                warn!(
                    stage = S::NAME,
                    "partitions reassigned: rebuilding state from the committed offsets"
                );
                // Read but not handled: replayed from the committed offsets like the rest.
                drop(batch);
                io.deferred.clear();
                let old = std::mem::replace(io.source, open(kafka, plan, S::NAME)?);
                old.shutdown(Duration::ZERO).await?;
                revocations = io.source.revocations();
                continue;
            }
        }
        if !batch.is_empty() {
            counts
                .received
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            let started = Instant::now();
            stage.handle(&mut io, batch).await?;
            metrics::histogram!("aion_stage_handle_seconds", "stage" => S::NAME)
                .record(started.elapsed().as_secs_f64());
        }
        stage.advance(&mut io).await?;
    }
    let mut io = Io {
        out,
        source,
        deferred,
    };
    stage.finish(&mut io).await
}

async fn sleep(tick: Option<Duration>) {
    match tick {
        Some(t) => tokio::time::sleep(t).await,
        None => std::future::pending().await,
    }
}
