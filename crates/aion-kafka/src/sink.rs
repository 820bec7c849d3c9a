//! The producing half: idempotent, `acks=all`, and every record's delivery report completes the
//! [`Ack`] of the source record it came from.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use tokio::sync::oneshot;
use tracing::error;

use crate::source::Record;
use crate::{Ack, KafkaConfig, Result};

/// Header names of dead-letter records.
pub mod headers {
    /// `<path>: <message>`, the whole reason.
    pub const REASON: &str = "aion.dlq.reason";
    /// JSON path of the offending field (`.` for the whole payload).
    pub const PATH: &str = "aion.dlq.path";
    pub const SOURCE_TOPIC: &str = "aion.source.topic";
    pub const SOURCE_PARTITION: &str = "aion.source.partition";
    pub const SOURCE_OFFSET: &str = "aion.source.offset";
    /// Stage that rejected the record.
    pub const STAGE: &str = "aion.stage";

    use rdkafka::message::{Header, OwnedHeaders};

    /// Source coordinates of an output record: where it came from, for lineage and replay checks.
    pub fn lineage(topic: &str, partition: i32, offset: i64) -> OwnedHeaders {
        OwnedHeaders::new_with_capacity(6)
            .insert(Header {
                key: SOURCE_TOPIC,
                value: Some(topic.as_bytes()),
            })
            .insert(Header {
                key: SOURCE_PARTITION,
                value: Some(partition.to_string().as_bytes()),
            })
            .insert(Header {
                key: SOURCE_OFFSET,
                value: Some(offset.to_string().as_bytes()),
            })
    }
}

/// Largest record the producer accepts: above the decoder's limit so that an oversized input can
/// still be dead-lettered with its original bytes.
pub(crate) const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

#[derive(Default)]
struct SinkContext {
    failed: AtomicU64,
}

impl ClientContext for SinkContext {}

/// What a delivery report settles: the source record's ack and/or a waiting caller.
struct Pending {
    ack: Option<Ack>,
    confirm: Option<oneshot::Sender<bool>>,
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = Box<Pending>;

    fn delivery(&self, result: &DeliveryResult<'_>, pending: Self::DeliveryOpaque) {
        let delivered = result.is_ok();
        if let Err((error, message)) = result {
            use rdkafka::Message;
            error!(topic = message.topic(), %error, "delivery failed");
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(ack) = pending.ack {
            if !delivered {
                ack.fail();
            }
            ack.done();
        }
        if let Some(confirm) = pending.confirm {
            // The caller may have given up waiting; nothing to tell then.
            let _ = confirm.send(delivered);
        }
    }
}

/// Resolves once the broker has acknowledged a record sent with [`Sink::send_confirmed`].
pub struct Delivery(oneshot::Receiver<bool>);

impl Delivery {
    /// Waits for the delivery report; an error if the broker refused the record.
    pub async fn wait(self, topic: &str) -> Result<()> {
        match self.0.await {
            Ok(true) => Ok(()),
            _ => Err(crate::Error::Undelivered(topic.to_owned())),
        }
    }
}

/// An idempotent producer whose deliveries acknowledge source records.
pub struct Sink {
    producer: ThreadedProducer<SinkContext>,
    stage: String,
}

impl Sink {
    pub fn new(kafka: &KafkaConfig, stage: &str) -> Result<Self> {
        let mut c = kafka.client(&format!("{stage}-producer"));
        c.set("acks", "all")
            .set("enable.idempotence", "true")
            // Larger batches: a broker pays per request (the local one commits a transaction per
            // produce request); 50 ms of latency is nothing to a quality-and-training loop.
            .set("linger.ms", "50")
            .set("message.max.bytes", MAX_MESSAGE_BYTES.to_string());
        kafka.apply_overrides(&mut c);
        Ok(Self {
            producer: c.create_with_context(SinkContext::default())?,
            stage: stage.to_owned(),
        })
    }

    /// Queues one record. `ack` (if any) is done when the broker has acknowledged it; on a
    /// failed delivery the ack is failed and the source stops. Waits while the local queue is full.
    pub async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
        ack: Option<Ack>,
    ) -> Result<()> {
        self.enqueue(
            topic,
            None,
            key,
            payload,
            headers,
            Pending { ack, confirm: None },
        )
        .await
    }

    /// Queues one record and returns its [`Delivery`], for outputs whose durability the stage
    /// itself must know (a window result before its Parquet file is written). `partition` picks
    /// the partition instead of the key's hash (records of one tenant under different keys that
    /// must stay in order).
    pub async fn send_confirmed(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        payload: &[u8],
    ) -> Result<Delivery> {
        let (tx, rx) = oneshot::channel();
        let pending = Pending {
            ack: None,
            confirm: Some(tx),
        };
        self.enqueue(topic, partition, key, payload, None, pending)
            .await?;
        Ok(Delivery(rx))
    }

    async fn enqueue(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
        pending: Pending,
    ) -> Result<()> {
        let mut record = BaseRecord::with_opaque_to(topic, Box::new(pending)).payload(payload);
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(headers) = headers {
            record = record.headers(headers);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((error, r)) => {
                    if let Some(ack) = r.delivery_opaque.ack.as_ref() {
                        ack.fail();
                    }
                    return Err(error.into());
                }
            }
        }
    }

    /// Sends a record that could not be processed to `<topic>.dlq`: original key and bytes, the
    /// reason and the source coordinates as headers. The source offset is stored only once the
    /// dead-letter record is acknowledged.
    pub async fn dead_letter(&self, record: Record, path: &str, message: &str) -> Result<()> {
        let reason = format!("{path}: {message}");
        let headers = headers::lineage(&record.topic, record.partition, record.offset)
            .insert(Header {
                key: headers::REASON,
                value: Some(reason.as_bytes()),
            })
            .insert(Header {
                key: headers::PATH,
                value: Some(path.as_bytes()),
            })
            .insert(Header {
                key: headers::STAGE,
                value: Some(self.stage.as_bytes()),
            });
        let dlq = format!("{}.dlq", record.topic);
        metrics::counter!("aion_dlq_events_total", "stage" => self.stage.clone(), "topic" => record.topic.to_string())
            .increment(1);
        self.send(
            &dlq,
            record.key.as_deref(),
            &record.payload,
            Some(headers),
            Some(record.ack),
        )
        .await
    }

    /// Waits until every queued record is delivered (or `timeout`).
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        Ok(self.producer.flush(timeout)?)
    }

    /// Records handed to the producer and neither acknowledged nor failed yet.
    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }

    /// Records the broker finally refused (after librdkafka's retries).
    pub fn failed_deliveries(&self) -> u64 {
        self.producer.context().failed.load(Ordering::Relaxed)
    }
}
