//! The relay: the smallest complete stage. It decodes and validates application events, forwards
//! the valid ones byte for byte to `<topic>.<suffix>` (with their source coordinates as headers)
//! and dead-letters the rest. The runtime's delivery tests and the throughput benchmark run it.

use std::time::{Duration, Instant};

use aion_events::topics::SchemaId;
use aion_kafka::{headers, Record};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::{Io, Plan, Stage};

/// One consumed topic and the schema its records must satisfy.
#[derive(Debug, Clone)]
pub struct Input {
    pub topic: String,
    pub schema: SchemaId,
}

impl std::str::FromStr for Input {
    type Err = String;

    /// `TOPIC` (a schema name such as `retrieval.v1`) or `TOPIC=SCHEMA`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (topic, schema) = s.split_once('=').unwrap_or((s, s));
        let schema = SchemaId::from_name(schema).ok_or_else(|| {
            let known: Vec<&str> = SchemaId::ALL.iter().map(|s| s.name()).collect();
            format!("unknown schema {schema:?}; use TOPIC=SCHEMA with one of {known:?}")
        })?;
        Ok(Self {
            topic: topic.to_owned(),
            schema,
        })
    }
}

const REPORT_EVERY: Duration = Duration::from_secs(5);

/// The relay stage.
pub struct Relay {
    inputs: Vec<Input>,
    outputs: Vec<String>,
    /// Stop after this many records (benchmarks).
    limit: Option<u64>,
    handled: u64,
    stop: CancellationToken,
    next_report: Instant,
}

impl Relay {
    /// A relay of `inputs` to `<topic>.<suffix>`, and its plan (group `group_id`); it cancels
    /// `stop` itself after `limit` records.
    pub fn new(
        inputs: Vec<Input>,
        suffix: &str,
        group_id: String,
        limit: Option<u64>,
        stop: CancellationToken,
    ) -> (Self, Plan) {
        let outputs: Vec<String> = inputs
            .iter()
            .map(|i| format!("{}.{suffix}", i.topic))
            .collect();
        let topics = inputs.iter().map(|i| i.topic.clone()).collect();
        let plan = Plan::new(topics, outputs.clone(), group_id);
        let relay = Self {
            inputs,
            outputs,
            limit,
            handled: 0,
            stop,
            next_report: Instant::now() + REPORT_EVERY,
        };
        (relay, plan)
    }
}

impl Stage for Relay {
    type Error = aion_kafka::Error;
    const NAME: &'static str = "relay";

    async fn handle(&mut self, io: &mut Io<'_>, records: Vec<Record>) -> aion_kafka::Result<()> {
        for record in records {
            // Subscribed topics are exactly the inputs; anything else would be dead-lettered, not
            // skipped.
            let input = self.inputs.iter().position(|i| *i.topic == *record.topic);
            let checked = match input {
                Some(i) => self.inputs[i]
                    .schema
                    .check(&record.payload, io.limits())
                    .map(|()| i),
                None => Err(aion_events::Reject::new(
                    ".",
                    "no schema configured for this topic",
                )),
            };
            match checked {
                Ok(i) => {
                    let lineage = headers::lineage(&record.topic, record.partition, record.offset);
                    io.send(
                        &self.outputs[i],
                        record.key.as_deref(),
                        &record.payload,
                        Some(lineage),
                        Some(record.ack),
                    )
                    .await?;
                }
                Err(reject) => io.dead_letter(record, &reject).await?,
            }
            self.handled += 1;
            if self.limit.is_some_and(|l| self.handled >= l) {
                self.stop.cancel();
            }
        }
        Ok(())
    }

    async fn advance(&mut self, io: &mut Io<'_>) -> aion_kafka::Result<()> {
        if Instant::now() >= self.next_report {
            info!(
                handled = self.handled,
                in_flight = io.source().in_flight(),
                "relay progress"
            );
            self.next_report = Instant::now() + REPORT_EVERY;
        }
        Ok(())
    }

    fn tick(&self) -> Option<Duration> {
        Some(REPORT_EVERY)
    }
}
