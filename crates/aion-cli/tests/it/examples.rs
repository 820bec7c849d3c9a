//! The producer example (`examples/producers/`) as an application would run it: its events follow
//! the contract, keyed by tenant, each answer naming its retrieval.

use std::time::Duration;

use aion_events::{decode, AnswerEvent, DecodeLimits, RetrievalEvent};
use aion_kafka::Reader;

use crate::Stack;

#[test]
fn the_python_producer_example_publishes_events_the_stages_accept() {
    let s = Stack::start();
    s.run(&["topics", "create", "--partitions", "1"]);
    let out = std::process::Command::new(aion_broker::cache_dir().join("venv/bin/python"))
        .arg(crate::repo_file("examples/producers/python_rag_app.py"))
        .args([
            "--brokers",
            &s.kafka.brokers,
            "--tenant",
            "acme",
            "--requests",
            "5",
        ])
        .output()
        .expect("run python (scripts/setup --tests installs confluent-kafka)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let read = |topic: &str| {
        Reader::new(&s.kafka, &[topic], true)
            .unwrap()
            .drain(Duration::from_secs(3), Some(5))
            .unwrap()
    };
    let limits = DecodeLimits::default();
    let mut retrievals = Vec::new();
    for r in read("retrieval.v1") {
        assert_eq!(r.key.as_deref(), Some(&b"acme"[..]));
        let event: RetrievalEvent = decode(&r.payload, &limits).unwrap();
        retrievals.push(event.event_id);
    }
    let mut answered = Vec::new();
    for r in read("answer.v1") {
        assert_eq!(r.key.as_deref(), Some(&b"acme"[..]));
        let event: AnswerEvent = decode(&r.payload, &limits).unwrap();
        answered.push(event.retrieval_event_id.unwrap());
    }
    assert_eq!(retrievals.len(), 5);
    assert_eq!(answered, retrievals);
}
