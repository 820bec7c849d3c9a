//! Broker tests of the delivery contract, each against a fresh real Kafka-protocol broker (Nisshi).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::Duration;

use aion_broker::Broker;
use aion_kafka::{create_topics, KafkaConfig, Reader, Sink, Source, SourceConfig, TopicSpec};

mod delivery;
mod security;

pub struct Setup {
    pub broker: Broker,
    pub kafka: KafkaConfig,
}

impl Setup {
    pub async fn new(topics: &[(&str, i32)]) -> Setup {
        let broker =
            Broker::start_temporary().expect("start broker (run scripts/setup to install it)");
        let kafka = KafkaConfig::new(broker.bootstrap());
        let specs: Vec<TopicSpec> = topics
            .iter()
            .map(|(n, p)| TopicSpec {
                name: n.to_string(),
                partitions: *p,
                replication: 1,
            })
            .collect();
        create_topics(&kafka, &specs).await.expect("create topics");
        Setup { broker, kafka }
    }

    pub async fn produce(&self, topic: &str, n: usize) {
        let sink = Sink::new(&self.kafka, "test").unwrap();
        for i in 0..n {
            let key = format!("k{}", i % 7);
            sink.send(
                topic,
                Some(key.as_bytes()),
                format!("{i}").as_bytes(),
                None,
                None,
            )
            .await
            .unwrap();
        }
        sink.flush(Duration::from_secs(30)).unwrap();
        assert_eq!(sink.failed_deliveries(), 0);
    }

    pub fn source(&self, topic: &str, group: &str) -> Source {
        Source::new(
            &self.kafka,
            &SourceConfig::new("test", vec![topic.into()], group),
        )
        .unwrap()
    }

    pub fn read_all(&self, topic: &str) -> Vec<aion_kafka::RawRecord> {
        Reader::new(&self.kafka, &[topic], true)
            .unwrap()
            .drain(Duration::from_secs(3), None)
            .unwrap()
    }
}
