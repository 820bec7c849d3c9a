//! The producer examples (`examples/producers/`) as an application would run them: their events
//! pass the decoder every stage reads with, keyed by tenant, each answer naming its retrieval.

use std::process::Command;
use std::time::Duration;

use aion_events::{decode, AnswerEvent, DecodeLimits, RetrievalEvent};
use aion_kafka::Reader;

use crate::Stack;

/// Runs `example` against a fresh broker (tenant `acme`, 5 requests) and checks what it published.
fn publishes_events_the_stages_accept(mut example: Command) {
    let s = Stack::start();
    s.run(&["topics", "create", "--partitions", "1"]);
    let out = example
        .args([
            "--brokers",
            &s.kafka.brokers,
            "--tenant",
            "acme",
            "--requests",
            "5",
        ])
        .output()
        .expect("run the example (scripts/setup --tests installs its packages)");
    crate::succeeded(&out);

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

#[test]
fn the_python_producer_example_publishes_events_the_stages_accept() {
    let mut python = Command::new(aion_broker::cache_dir().join("venv/bin/python"));
    python.arg(crate::repo_file("examples/producers/python_rag_app.py"));
    publishes_events_the_stages_accept(python);
}

#[test]
fn the_typescript_producer_example_publishes_events_the_stages_accept() {
    // Run from beside the packages scripts/setup installed, as `npm start` would.
    let packages = aion_broker::cache_dir().join("ts-producer");
    let dir = tempfile::tempdir_in(&packages).expect("scripts/setup --tests installs the packages");
    std::fs::copy(
        crate::repo_file("examples/producers/typescript/rag_app.ts"),
        dir.path().join("rag_app.ts"),
    )
    .unwrap();
    let mut node = Command::new("node");
    node.current_dir(dir.path())
        .args(["--import", "tsx", "rag_app.ts"]);
    publishes_events_the_stages_accept(node);
}
