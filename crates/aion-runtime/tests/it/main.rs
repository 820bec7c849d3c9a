//! The runner against a fresh real Kafka-protocol broker, in consumer-group mode (the production
//! default): what an error exit leaves committed, and what a restart then delivers.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::BTreeSet;
use std::time::Duration;

use aion_broker::Broker;
use aion_kafka::{create_topics, Ack, KafkaConfig, Reader, Record, Sink, TopicSpec};
use aion_runtime::{Counts, Holding, Io, Plan, Stage};
use tokio_util::sync::CancellationToken;

const RECORDS: usize = 300;

#[derive(Debug, thiserror::Error)]
enum TestError {
    #[error(transparent)]
    Kafka(#[from] aion_kafka::Error),
    #[error("the output failed at record {0}")]
    Injected(String),
}

/// Holds records in state and publishes them to `out` in groups of `group` (as a window or a
/// file buffer would); fails when it reads `fail_at`.
struct Buffering {
    held: Vec<(Vec<u8>, Ack)>,
    group: usize,
    fail_at: Option<String>,
}

impl Stage for Buffering {
    type Error = TestError;
    const NAME: &'static str = "buffering";

    async fn handle(&mut self, io: &mut Io<'_>, records: Vec<Record>) -> Result<(), TestError> {
        for record in records {
            let value = String::from_utf8_lossy(&record.payload).into_owned();
            if self.fail_at.as_deref() == Some(value.as_str()) {
                return Err(TestError::Injected(value));
            }
            self.held.push((record.payload, record.ack));
            if self.held.len() >= self.group {
                for (payload, ack) in self.held.drain(..) {
                    io.send("out", None, &payload, None, Some(ack)).await?;
                }
            }
        }
        Ok(())
    }
}

fn plan() -> Plan {
    let mut plan = Plan::new(vec!["in".into()], vec!["out".into()], "runtime-test");
    plan.holding = Holding::State;
    plan
}

async fn setup() -> (Broker, KafkaConfig) {
    let broker = Broker::start_temporary().expect("start broker (run scripts/setup to install it)");
    let kafka = KafkaConfig::new(broker.bootstrap());
    let topics = [("in", 3), ("in.dlq", 1), ("out", 1)].map(|(name, partitions)| TopicSpec {
        name: name.into(),
        partitions,
        replication: 1,
    });
    create_topics(&kafka, &topics).await.unwrap();
    let sink = Sink::new(&kafka, "test").unwrap();
    for i in 0..RECORDS {
        let key = format!("k{}", i % 7);
        let value = i.to_string();
        sink.send("in", Some(key.as_bytes()), value.as_bytes(), None, None)
            .await
            .unwrap();
    }
    sink.flush(Duration::from_secs(30)).unwrap();
    (broker, kafka)
}

fn published(kafka: &KafkaConfig) -> Vec<String> {
    Reader::new(kafka, &["out"], true)
        .unwrap()
        .drain(Duration::from_secs(3), None)
        .unwrap()
        .into_iter()
        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        .collect()
}

fn committed(kafka: &KafkaConfig) -> i64 {
    aion_kafka::committed_offsets(kafka, "runtime-test", "in")
        .unwrap()
        .values()
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_exit_commits_nothing_held_and_a_restart_publishes_every_record() {
    let (_broker, kafka) = setup().await;
    let counts = Counts::default();
    let failing = Buffering {
        held: Vec::new(),
        group: 40,
        fail_at: Some("150".into()),
    };
    let plan = plan();
    let run = aion_runtime::run(&kafka, &plan, failing, CancellationToken::new(), &counts);
    let error = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the stage fails at record 150, long before this")
        .expect_err("the injected failure ends the run");
    assert!(error.to_string().contains("150"), "{error}");
    assert_eq!(counts.errors(), 1);
    let first = published(&kafka);
    // Every committed offset is behind a record that was published: what the stage held when it
    // failed is not committed.
    assert!(
        committed(&kafka) <= first.len() as i64,
        "committed {} offsets, published {} records",
        committed(&kafka),
        first.len()
    );

    // Restarted without the fault, until every record is out.
    let stop = CancellationToken::new();
    let healthy = Buffering {
        held: Vec::new(),
        group: 1,
        fail_at: None,
    };
    let counts = Counts::default();
    let run = aion_runtime::run(&kafka, &plan, healthy, stop.clone(), &counts);
    let watch = async {
        let expected: BTreeSet<String> = (0..RECORDS).map(|i| i.to_string()).collect();
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let out: BTreeSet<String> = published(&kafka).into_iter().collect();
            if out == expected {
                break;
            }
        }
        stop.cancel();
    };
    let (result, ()) =
        tokio::time::timeout(Duration::from_secs(120), async { tokio::join!(run, watch) })
            .await
            .expect("every record published within 2 minutes");
    result.unwrap();
    assert_eq!(
        committed(&kafka),
        RECORDS as i64,
        "a clean stop commits everything done"
    );
    assert_eq!(counts.errors(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_output_topic_fails_at_start_naming_it() {
    let (_broker, kafka) = setup().await;
    let mut plan = plan();
    plan.outputs.push("nowhere".into());
    let stage = Buffering {
        held: Vec::new(),
        group: 1,
        fail_at: None,
    };
    let error = aion_runtime::run(
        &kafka,
        &plan,
        stage,
        CancellationToken::new(),
        &Counts::default(),
    )
    .await
    .expect_err("no topic `nowhere`");
    assert!(error.to_string().contains("nowhere"), "{error}");
}
