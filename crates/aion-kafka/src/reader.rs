//! A plain reader that never commits: for `aion tail`, tests and the bare-consumer benchmark.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::{Error, KafkaConfig, Result};

/// A record as read, with its headers.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl RawRecord {
    /// The value of header `name`, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// Reads every partition of some topics from the beginning (or the end), committing nothing.
pub struct Reader {
    consumer: BaseConsumer,
}

impl Reader {
    pub fn new(kafka: &KafkaConfig, topics: &[&str], from_beginning: bool) -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mut c = kafka.client("reader");
        c.set(
            "group.id",
            format!("aion-reader-{}-{nanos}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .set(
            "auto.offset.reset",
            if from_beginning { "earliest" } else { "latest" },
        )
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        .set("enable.partition.eof", "false")
        // The broker's default long poll (500 ms) idles a fetch that could return; shorter
        // polls measured 4x the read throughput on the local broker.
        .set("fetch.wait.max.ms", "100");
        kafka.apply_overrides(&mut c);
        let consumer: BaseConsumer = c.create()?;
        // Assigned, not subscribed: no group join, so reading starts at once.
        let start = if from_beginning {
            Offset::Beginning
        } else {
            Offset::End
        };
        let mut tpl = TopicPartitionList::new();
        for topic in topics {
            let metadata = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .map_err(|e| kafka.unreachable(e))?;
            let partitions = metadata
                .topics()
                .iter()
                .flat_map(|t| t.partitions())
                .map(|p| p.id())
                .collect::<Vec<_>>();
            if partitions.is_empty() {
                return Err(Error::UnknownTopic((*topic).to_owned()));
            }
            for p in partitions {
                tpl.add_partition_offset(topic, p, start)?;
            }
        }
        consumer.assign(&tpl)?;
        Ok(Self { consumer })
    }

    /// The next record, or `None` if none arrived within `timeout`.
    pub fn next(&self, timeout: Duration) -> Result<Option<RawRecord>> {
        match self.consumer.poll(timeout) {
            None => Ok(None),
            Some(Err(e)) => Err(e.into()),
            Some(Ok(m)) => Ok(Some(RawRecord {
                topic: m.topic().to_owned(),
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_owned(),
                                    h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            })),
        }
    }

    /// Reads until `idle` passes without a record (or `limit` records were read).
    pub fn drain(&self, idle: Duration, limit: Option<usize>) -> Result<Vec<RawRecord>> {
        let mut out = Vec::new();
        while limit.is_none_or(|l| out.len() < l) {
            match self.next(idle)? {
                Some(r) => out.push(r),
                None => break,
            }
        }
        Ok(out)
    }
}
