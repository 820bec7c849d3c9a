//! The consuming half: records with acknowledgement tokens, offsets stored only behind acks.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::tracker::{Ack, PartitionKey, Tracker};
use crate::{Assignment, Error, KafkaConfig, Result};

/// Set by the first [`Source::recv`] of the process: from then on a stage has records whose offsets
/// its own shutdown must settle. Before it, a stop can end the process without any commit.
static CONSUMING: AtomicBool = AtomicBool::new(false);

/// Whether any [`Source`] of this process has started handing out records.
pub fn consuming() -> bool {
    CONSUMING.load(Ordering::Acquire)
}

/// Set once a [`Source`] of this process subscribed or was assigned its partitions.
static STARTED: AtomicBool = AtomicBool::new(false);
/// Group members of this process still waiting for their first assignment.
static JOINING: AtomicUsize = AtomicUsize::new(0);

/// Whether this process started consuming and every consumer it started has its partitions:
/// assigned directly, or by its group's first rebalance (possibly none, when the group has more
/// members than partitions). What a stage's readiness endpoint answers.
pub fn joined() -> bool {
    STARTED.load(Ordering::Acquire) && JOINING.load(Ordering::Acquire) == 0
}

/// How often acknowledged offsets are handed to librdkafka (which commits them every
/// `auto.commit.interval.ms`). Short enough that a crash replays little, long enough to batch.
const STORE_INTERVAL: Duration = Duration::from_millis(200);

/// Consumer settings of one stage.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Stage name: metric label and client id suffix.
    pub stage: String,
    /// Topics to consume.
    pub topics: Vec<String>,
    /// Consumer group; members of one group share the partitions.
    pub group_id: String,
    /// On partition revoke, how long to wait for in-flight outputs of the revoked partitions before
    /// committing what is durable. Stages whose acks wait on open windows set this to zero: their
    /// open state is rebuilt by the next owner's replay.
    pub revoke_wait: Duration,
    /// Records handed out but not yet acknowledged beyond which `recv` waits for acks first:
    /// backpressure, so a stage cannot run ahead of its outputs. `None` for stages that hold acks
    /// in open windows by design.
    pub max_in_flight: Option<usize>,
    /// Store offsets only at records the stage marked with [`crate::Ack::mark_resume_point`],
    /// never at the end of what was consumed. For stages whose state is rebuilt by replay and
    /// needs the replay to start at a record that carries it (a watermark-setting event).
    pub explicit_resume_points: bool,
    /// Store and commit offsets. Off for dry runs: they read without moving any group.
    pub commit: bool,
}

impl SourceConfig {
    pub fn new(stage: impl Into<String>, topics: Vec<String>, group_id: impl Into<String>) -> Self {
        Self {
            stage: stage.into(),
            topics,
            group_id: group_id.into(),
            revoke_wait: Duration::from_secs(10),
            max_in_flight: Some(10_000),
            explicit_resume_points: false,
            commit: true,
        }
    }
}

/// Records of one assigned partition that are in the log and not yet handed out by
/// [`Source::recv`] (see [`Source::backlog`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backlog {
    pub topic: Arc<str>,
    pub partition: i32,
    /// `None` when the broker did not say (an error for that partition).
    pub records: Option<i64>,
}

/// One consumed record. Its [`Ack`] is done once every output made from it is durable (or done at
/// once when the record has no output).
#[derive(Debug)]
pub struct Record {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    /// The payload; a record without one (a tombstone) has an empty payload.
    pub payload: Vec<u8>,
    /// Broker/producer timestamp in ms since the epoch, when the record has one.
    pub timestamp_ms: Option<i64>,
    pub ack: Ack,
}

pub(crate) struct SourceContext {
    /// Counted in [`JOINING`] until the first assignment (or the end of the source).
    joining: AtomicBool,
    commit: bool,
    tracker: Arc<Tracker>,
    revocations: Arc<AtomicU64>,
    revoke_wait: Duration,
    stage: String,
}

impl ClientContext for SourceContext {
    /// librdkafka's periodic statistics carry the consumer lag of every assigned partition.
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in statistics.topics {
            for (partition, p) in t.partitions {
                // -1: unknown (not assigned, or no offset fetched yet); -1 is librdkafka's UA partition.
                if partition >= 0 && p.consumer_lag >= 0 {
                    metrics::gauge!(
                        "aion_consumer_lag",
                        "stage" => self.stage.clone(),
                        "topic" => topic.clone(),
                        "partition" => partition.to_string()
                    )
                    .set(p.consumer_lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let keys: Vec<PartitionKey> = tpl
            .elements()
            .iter()
            .map(|e| (Arc::from(e.topic()), e.partition()))
            .collect();
        // Flush on revoke: let in-flight outputs land, store what is durable, commit it before
        // the partitions move, so the next owner replays as little as possible.
        // With no wait (stages holding acks in open windows) pending records are the normal case.
        if !self.tracker.wait_settled(Some(&keys), self.revoke_wait) && !self.revoke_wait.is_zero()
        {
            warn!(
                partitions = keys.len(),
                "revoked partitions still had outputs in flight; they will be replayed"
            );
        }
        store(consumer, &self.tracker);
        if let Err(error) = commit_sync(consumer) {
            warn!(%error, "offset commit on revoke failed; the next owner replays from the last commit");
        }
        self.tracker.forget(&keys);
        self.revocations.fetch_add(1, Ordering::Release);
        info!(partitions = keys.len(), "partitions revoked");
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            info!(partitions = tpl.count(), "partitions assigned");
            self.joined();
        }
    }
}

impl SourceContext {
    fn joined(&self) {
        if self.joining.swap(false, Ordering::AcqRel) {
            JOINING.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for SourceContext {
    /// A source that ends (or failed to start) before its first assignment waits no more.
    fn drop(&mut self) {
        self.joined();
    }
}

/// Hands acknowledged positions to librdkafka; a read-only source (`commit` off) only drops them.
fn store<C: Consumer<SourceContext>>(consumer: &C, tracker: &Tracker) {
    let storable = tracker.take_storable();
    if !consumer.context().commit {
        return;
    }
    for ((topic, partition), position) in storable {
        // `store_offset` stores `offset + 1`; the tracker hands out the next offset to read.
        if let Err(error) = consumer.store_offset(&topic, partition, position - 1) {
            // The partition was revoked meanwhile; its new owner replays from the last commit.
            debug!(%topic, partition, position, %error, "offset not stored");
        }
    }
}

/// Commits stored offsets now (never, for a read-only source). Nothing stored since the last
/// commit is not an error.
fn commit_sync<C: Consumer<SourceContext>>(consumer: &C) -> Result<()> {
    if !consumer.context().commit {
        return Ok(());
    }
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// A consumer-group member that hands out [`Record`]s and stores offsets behind their acks.
pub struct Source {
    consumer: StreamConsumer<SourceContext>,
    tracker: Arc<Tracker>,
    revocations: Arc<AtomicU64>,
    topics: Vec<Arc<str>>,
    next_store: Instant,
    stage: String,
    received: u64,
    max_in_flight: Option<usize>,
}

impl Source {
    /// Joins the group and subscribes. Fails if a topic does not exist, rather than idling.
    pub fn new(kafka: &KafkaConfig, config: &SourceConfig) -> Result<Self> {
        let tracker = Arc::new(Tracker::new(config.explicit_resume_points));
        let mut c = kafka.client(&config.stage);
        c.set("group.id", &config.group_id)
            .set(
                "enable.auto.commit",
                if config.commit { "true" } else { "false" },
            )
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // A killed member's partitions move after the session timeout. Keep it short: the local
            // broker does not rebalance when a member expires after a replacement already joined
            // (measured with 30 s: the replacement kept zero partitions); 6 s is what works there.
            // Raise it through `kafka.properties` on a busy production cluster.
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1000")
            .set("enable.partition.eof", "false")
            // The broker's default long poll (500 ms) idles a fetch that could return; shorter
            // polls measured 4x the read throughput on the local broker.
            .set("fetch.wait.max.ms", "100")
            // Feeds the consumer-lag gauge.
            .set("statistics.interval.ms", "5000");
        kafka.apply_overrides(&mut c);
        let revocations = Arc::new(AtomicU64::new(0));
        let group = kafka.assignment == Assignment::Group;
        if group {
            JOINING.fetch_add(1, Ordering::AcqRel);
        }
        let context = SourceContext {
            joining: AtomicBool::new(group),
            commit: config.commit,
            tracker: tracker.clone(),
            revocations: revocations.clone(),
            revoke_wait: config.revoke_wait,
            stage: config.stage.clone(),
        };
        let consumer: StreamConsumer<SourceContext> = c.create_with_context(context)?;
        let mut partitions = TopicPartitionList::new();
        for topic in &config.topics {
            let metadata = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .map_err(|e| kafka.unreachable(e))?;
            if metadata.topics().iter().all(|t| t.partitions().is_empty()) {
                return Err(Error::UnknownTopic(topic.clone()));
            }
            for t in metadata.topics().iter().filter(|t| t.name() == topic) {
                for p in t.partitions() {
                    // The group's committed offset, else `auto.offset.reset`.
                    partitions.add_partition_offset(topic, p.id(), Offset::Stored)?;
                }
            }
        }
        match kafka.assignment {
            Assignment::Group => {
                let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
                consumer.subscribe(&topics)?;
            }
            Assignment::All => {
                consumer.assign(&partitions)?;
                info!(stage = %config.stage, partitions = partitions.count(), "partitions assigned directly");
            }
        }
        STARTED.store(true, Ordering::Release);
        Ok(Self {
            consumer,
            tracker,
            revocations,
            topics: config
                .topics
                .iter()
                .map(|t| Arc::from(t.as_str()))
                .collect(),
            next_store: Instant::now() + STORE_INTERVAL,
            stage: config.stage.clone(),
            received: 0,
            max_in_flight: config.max_in_flight,
        })
    }

    /// The next record. Stores acknowledged offsets on the way, and fails once any output failed.
    pub async fn recv(&mut self) -> Result<Record> {
        if !CONSUMING.swap(true, Ordering::AcqRel) {
            // The readiness line: tests and operators wait for it before they signal or measure.
            info!(stage = %self.stage, "stage ready: consuming");
        }
        loop {
            self.check_failure()?;
            if Instant::now() >= self.next_store {
                self.store_acked();
            }
            if self
                .max_in_flight
                .is_some_and(|max| self.tracker.in_flight() >= max)
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            tokio::select! {
                message = self.consumer.recv() => {
                    let message = match message {
                        Ok(m) => m,
                        Err(error) => {
                            // librdkafka retries transport errors itself; report, pause briefly
                            // (a down broker reports at once, every poll) and go on.
                            warn!(stage = %self.stage, %error, "consume error");
                            metrics::counter!("aion_consume_errors_total", "stage" => self.stage.clone()).increment(1);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let topic = self.topic_name(message.topic());
                    let (partition, offset) = (message.partition(), message.offset());
                    let ack = self.tracker.track((topic.clone(), partition), offset);
                    self.received += 1;
                    return Ok(Record {
                        topic,
                        partition,
                        offset,
                        key: message.key().map(<[u8]>::to_vec),
                        payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                        timestamp_ms: message.timestamp().to_millis(),
                        ack,
                    });
                }
                _ = tokio::time::sleep_until(self.next_store) => {}
            }
        }
    }

    /// Hands the offsets of acknowledged records to librdkafka and reports counters.
    pub fn store_acked(&mut self) {
        store(&self.consumer, &self.tracker);
        metrics::counter!("aion_received_events_total", "stage" => self.stage.clone())
            .increment(self.received);
        self.received = 0;
        self.next_store = Instant::now() + STORE_INTERVAL;
    }

    /// Stops fetching from every partition assigned now, while [`Source::recv`] keeps polling:
    /// a stage busy for longer than `max.poll.interval.ms` with one record (a training job) stays
    /// a group member and answers rebalances. Partitions assigned later are not paused, so `recv`
    /// may still hand out their records.
    pub fn pause(&self) -> Result<()> {
        Ok(self.consumer.pause(&self.consumer.assignment()?)?)
    }

    /// Fetches again from every assigned partition, from where the stage stopped reading.
    pub fn resume(&self) -> Result<()> {
        Ok(self.consumer.resume(&self.consumer.assignment()?)?)
    }

    /// How many times partitions were taken from this member. Stages holding per-partition state
    /// compare it to rebuild that state when it changes.
    pub fn revocations(&self) -> u64 {
        self.revocations.load(Ordering::Acquire)
    }

    /// How many records of each assigned partition are in the log but not handed out yet, asked
    /// of the broker now (one request per broker, plus the committed offsets of partitions that
    /// have handed out nothing). Blocks up to `timeout`. Records already fetched into the local
    /// queue still count: only [`Source::recv`] moves a partition's position.
    pub fn backlog(&self, timeout: Duration) -> Result<Vec<Backlog>> {
        let positions = self.consumer.position()?;
        if positions.count() == 0 {
            return Ok(Vec::new());
        }
        let with = |offset: Offset| -> Result<TopicPartitionList> {
            let mut tpl = TopicPartitionList::new();
            for e in positions.elements() {
                tpl.add_partition_offset(e.topic(), e.partition(), offset)?;
            }
            Ok(tpl)
        };
        // A timestamp of END asks for the log end offset (ListOffsets "latest").
        let ends = self
            .consumer
            .offsets_for_times(with(Offset::End)?, timeout)?;
        let mut starts = positions.clone();
        if positions
            .elements()
            .iter()
            .any(|e| e.offset() == Offset::Invalid)
        {
            // Nothing handed out yet: the source starts at the committed offset, else at the log
            // start (`auto.offset.reset=earliest`).
            let committed = self
                .consumer
                .committed_offsets(with(Offset::Invalid)?, timeout)?;
            let log_starts = self
                .consumer
                .offsets_for_times(with(Offset::Beginning)?, timeout)?;
            for e in positions.elements() {
                if e.offset() != Offset::Invalid {
                    continue;
                }
                let find = |tpl: &TopicPartitionList| {
                    tpl.find_partition(e.topic(), e.partition())
                        .map(|p| p.offset())
                };
                let start = match find(&committed) {
                    Some(Offset::Offset(o)) => Offset::Offset(o),
                    _ => find(&log_starts).unwrap_or(Offset::Invalid),
                };
                starts.set_partition_offset(e.topic(), e.partition(), start)?;
            }
        }
        let mut out = Vec::new();
        for e in starts.elements() {
            let end = ends
                .find_partition(e.topic(), e.partition())
                .map(|p| p.offset());
            let records = match (e.offset(), end) {
                (Offset::Offset(start), Some(Offset::Offset(end))) => Some((end - start).max(0)),
                _ => None,
            };
            out.push(Backlog {
                topic: self.topic_name(e.topic()),
                partition: e.partition(),
                records,
            });
        }
        Ok(out)
    }

    fn topic_name(&self, topic: &str) -> Arc<str> {
        match self.topics.iter().find(|t| ***t == *topic) {
            Some(t) => t.clone(),
            None => Arc::from(topic),
        }
    }

    /// Records handed out and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.tracker.in_flight()
    }

    fn check_failure(&self) -> Result<()> {
        match self.tracker.failure() {
            Some(((topic, partition), offset)) => Err(Error::OutputFailed {
                topic: topic.to_string(),
                partition,
                offset,
            }),
            None => Ok(()),
        }
    }

    /// Graceful stop: waits up to `timeout` for in-flight outputs, stores what is durable and
    /// commits synchronously. Whatever is still in flight is replayed by the next run.
    pub async fn shutdown(mut self, timeout: Duration) -> Result<()> {
        let tracker = self.tracker.clone();
        let settled = tokio::task::spawn_blocking(move || tracker.wait_settled(None, timeout))
            .await
            .unwrap_or(false);
        self.store_acked();
        let committed = commit_sync(&self.consumer);
        if self.consumer.subscription().is_ok_and(|s| s.count() > 0) {
            self.consumer.unsubscribe();
        } else if let Err(error) = self.consumer.unassign() {
            debug!(stage = %self.stage, %error, "unassign on shutdown");
        }
        match &committed {
            Ok(()) => {
                info!(stage = %self.stage, settled, in_flight = self.in_flight(), "source closed, offsets committed")
            }
            Err(error) => {
                warn!(stage = %self.stage, %error, "final offset commit failed; the next run replays from the last commit")
            }
        }
        self.check_failure()?;
        committed
    }
}
