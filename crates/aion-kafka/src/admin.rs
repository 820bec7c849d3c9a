//! Explicit topic creation: Kafka-protocol brokers used here do not auto-create topics, and
//! production clusters should not.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::sink::MAX_MESSAGE_BYTES;
use crate::{Error, KafkaConfig, Result};

/// A topic to create.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication: i32,
}

/// Creates the topics; ones that already exist are left as they are. Returns the names created.
pub async fn create_topics(kafka: &KafkaConfig, topics: &[TopicSpec]) -> Result<Vec<String>> {
    if topics.is_empty() {
        return Ok(Vec::new());
    }
    let mut c = kafka.client("admin");
    kafka.apply_overrides(&mut c);
    let admin: AdminClient<DefaultClientContext> = c.create()?;
    let max_bytes = MAX_MESSAGE_BYTES.to_string();
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            NewTopic::new(
                &t.name,
                t.partitions,
                TopicReplication::Fixed(t.replication),
            )
            // As large as the producer may send: an oversized input must still fit its
            // dead-letter topic, or it would stop the stage on every replay.
            .set("max.message.bytes", &max_bytes)
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let mut created = Vec::new();
    for result in admin.create_topics(&new, &options).await? {
        match result {
            Ok(name) => created.push(name),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(Error::CreateTopic {
                    topic,
                    reason: code.to_string(),
                })
            }
        }
    }
    Ok(created)
}

/// Number of partitions of `topic`, or [`Error::UnknownTopic`].
pub fn partition_count(kafka: &KafkaConfig, topic: &str) -> Result<usize> {
    let mut c = kafka.client("metadata");
    kafka.apply_overrides(&mut c);
    let consumer: BaseConsumer = c.create()?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| kafka.unreachable(e))?;
    match metadata.topics().iter().find(|t| t.name() == topic) {
        Some(t) if !t.partitions().is_empty() => Ok(t.partitions().len()),
        _ => Err(Error::UnknownTopic(topic.to_owned())),
    }
}

/// Offsets committed by consumer group `group` on each partition of `topic` (partitions without a
/// commit are absent). Reads without joining the group, so it never triggers a rebalance.
pub fn committed_offsets(
    kafka: &KafkaConfig,
    group: &str,
    topic: &str,
) -> Result<BTreeMap<i32, i64>> {
    let mut c = kafka.client("metadata");
    c.set("group.id", group);
    kafka.apply_overrides(&mut c);
    let consumer: BaseConsumer = c.create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partition_count(kafka, topic)? {
        tpl.add_partition(topic, p as i32);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect())
}

/// Records currently held by `topic` (high minus low watermark, summed over partitions).
pub fn topic_records(kafka: &KafkaConfig, topic: &str) -> Result<i64> {
    let mut c = kafka.client("metadata");
    kafka.apply_overrides(&mut c);
    let consumer: BaseConsumer = c.create()?;
    let mut total = 0;
    for p in 0..partition_count(kafka, topic)? {
        let (low, high) = consumer.fetch_watermarks(topic, p as i32, Duration::from_secs(10))?;
        total += high - low;
    }
    Ok(total)
}
