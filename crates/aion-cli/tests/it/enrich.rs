//! The enricher through the real broker: retrieval events in, enriched events out (original fields
//! kept, entities added), offsets committed after.

use std::time::Duration;

use aion_kafka::{committed_offsets, Reader, Sink};
use serde_json::{json, Value};

use crate::Stack;

#[tokio::test(flavor = "multi_thread")]
async fn retrieval_events_come_out_enriched_and_offsets_are_committed_after() {
    let s = Stack::start();
    s.run(&["topics", "create", "--partitions", "1"]);
    let sink = Sink::new(&s.kafka, "test").unwrap();
    let people = ["John Smith", "Maria Garcia", "Ana Souza"];
    for (i, person) in people.iter().enumerate() {
        let event = json!({
            "event_id": format!("r{i}"), "tenant_id": "acme", "ts": "2026-11-02T10:00:00Z",
            "query": format!("My name is {person}, where is my refund?"), "custom": i,
            "results": [{"doc_id": "d1", "rank": 1, "text": "Refunds take five business days.", "score": 0.9}]
        });
        sink.send(
            "retrieval.v1",
            Some(b"acme"),
            event.to_string().as_bytes(),
            None,
            None,
        )
        .await
        .unwrap();
    }
    sink.send("retrieval.v1", Some(b"acme"), b"{broken", None, None)
        .await
        .unwrap();
    sink.flush(Duration::from_secs(30)).unwrap();

    let enricher = s.spawn(&["enrich", "run"], "enrich.log");
    let reader = Reader::new(&s.kafka, &["retrieval.enriched.v1"], true).unwrap();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while out.len() < people.len() && std::time::Instant::now() < deadline {
        out.extend(reader.drain(Duration::from_secs(1), None).unwrap());
    }
    assert!(enricher.terminate(), "clean stop\n{}", s.logs());
    assert_eq!(out.len(), people.len(), "{}", s.logs());
    for (r, person) in out.iter().zip(people) {
        let v: Value = serde_json::from_slice(&r.payload).unwrap();
        assert!(v["custom"].is_number(), "unknown fields are kept");
        let terms = v["entities"].as_array().unwrap();
        let first = person.split(' ').next().unwrap().to_lowercase();
        assert!(
            terms.iter().any(|t| t["text"] == first.as_str()
                && t["type"] == "GIVEN_NAME"
                && t["score"] == 3),
            "{person}: {terms:?}"
        );
        assert!(
            terms.iter().any(|t| t["source"] == "keyphrase"),
            "{terms:?}"
        );
    }
    // 3 valid + 1 dead-lettered: the committed position is past all four.
    let committed = committed_offsets(&s.kafka, "aion.enrich", "retrieval.v1").unwrap();
    assert_eq!(committed.values().sum::<i64>(), 4, "{committed:?}");
}
