//! The enricher through the real broker: retrieval events in, enriched events out (original fields
//! kept, entities added), offsets committed after; its model download and its benchmark.

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
        // The whole name is one PERSON term (weight 3, plus 1 when it is also a keyphrase); its
        // words keep their fine types in `mentions`.
        let terms = v["entities"].as_array().unwrap();
        assert!(
            terms
                .iter()
                .any(|t| t["text"] == person.to_lowercase().as_str()
                    && t["type"] == "PERSON"
                    && t["score"].as_u64() >= Some(3)),
            "{person}: {terms:?}"
        );
        let mentions = v["mentions"].as_array().unwrap();
        let (given, surname) = person.split_once(' ').unwrap();
        for (word, kind) in [(given, "GIVEN_NAME"), (surname, "SURNAME")] {
            assert!(
                mentions
                    .iter()
                    .any(|m| m["text"] == word && m["type"] == kind),
                "{person}: {mentions:?}"
            );
        }
        assert!(
            terms.iter().any(|t| t["source"] == "keyphrase"),
            "{terms:?}"
        );
    }
    // 3 valid + 1 dead-lettered: the committed position is past all four.
    let committed = committed_offsets(&s.kafka, "aion.enrich", "retrieval.v1").unwrap();
    assert_eq!(committed.values().sum::<i64>(), 4, "{committed:?}");
}

/// `aion models pull` against a local server laid out like the hub (`<repo>/resolve/<rev>/<file>`,
/// serving the offline model's files), and against an unreachable endpoint.
#[test]
fn models_pull_downloads_a_loadable_model_or_says_why_not() {
    let s = Stack::offline();
    let model = aion_broker::cache_dir().join("models/rampart-1.4.0");
    let root = s.state.path().join("hub");
    let files = root.join("acme/ner-small/resolve/main");
    std::fs::create_dir_all(&files).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "LICENSE",
    ] {
        std::os::unix::fs::symlink(model.join(f), files.join(f)).unwrap();
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = crate::Running::new(
        std::process::Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(&root)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
        None,
    );
    let dest = s.state.path().join("pulled");
    let pull = |endpoint: &str, repo: &str| {
        s.aion()
            .env("HF_ENDPOINT", endpoint)
            .args(["models", "pull", repo, "--dest"])
            .arg(&dest)
            .output()
            .unwrap()
    };
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut out = pull(&endpoint, "acme/ner-small");
    for _ in 0..50 {
        if out.status.success() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200)); // the server is still starting
        out = pull(&endpoint, "acme/ner-small");
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "LICENSE",
    ] {
        assert_eq!(
            std::fs::read(dest.join(f)).unwrap(),
            std::fs::read(model.join(f)).unwrap(),
            "{f}"
        );
    }
    let missing = pull(&endpoint, "acme/nothing-here");
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("does not exist"));
    server.kill();
    let offline = pull("http://127.0.0.1:1", "acme/ner-small");
    assert!(!offline.status.success());
    let message = String::from_utf8_lossy(&offline.stderr);
    assert!(message.contains("could not fetch"), "{message}");
    assert!(
        dest.join("model.safetensors").is_file(),
        "a failed pull keeps the old model"
    );
    let bad = pull(&endpoint, "../etc");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("owner/name"));
}
