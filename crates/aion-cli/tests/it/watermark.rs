//! Watermarks against what a machine or a client can do to them.
//!
//! A partition that lags is not idle: the windows stage stalled (SIGSTOP) for longer than
//! `idle_timeout` while its inputs still hold records closes no window over them, nor does it
//! after a kill -9 and a restart that replays the open windows; an input that is
//! genuinely quiet (caught up, empty) still lets windows close; and a replay from scratch by
//! another group, in group mode, publishes the same windows and the same (empty) late set.
//! Expected window contents are counted from the input, not taken from a run.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use aion_kafka::{Reader, Sink};
use serde_json::{json, Value};

use crate::Stack;

const T0: &str = "2026-11-02T00:00:00Z";
/// Minutes between two events of one partition.
const STEP: i64 = 5;
const TENANTS: [&str; 2] = ["acme", "globex"];

/// One event of `topic` on `partition` at `minute`; tenants alternate along the partition.
fn event(topic: &str, partition: i32, minute: i64) -> Value {
    let t0: chrono::DateTime<chrono::Utc> = T0.parse().unwrap();
    let ts = (t0 + chrono::Duration::minutes(minute)).to_rfc3339();
    let tenant = TENANTS[((minute / STEP) % 2) as usize];
    let id = format!("{topic}-{partition}-{minute}");
    if topic == "retrieval.v1" {
        json!({"event_id": id, "tenant_id": tenant, "ts": ts, "query": "q",
               "results": [{"doc_id": "d", "rank": 1, "text": "t", "score": 1.0, "rel": 1}]})
    } else {
        json!({"event_id": id, "tenant_id": tenant, "ts": ts, "prompt": "p", "reply": "r",
               "confidence": 0.5, "fallback": partition == 0, "provider": "local", "model": "m",
               "latency_ms": 5})
    }
}

/// The partitions that carry events: both retrieval partitions and answer partition 0. Answer
/// partition 1 stays empty: a quiet input that must not hold windows forever.
const FED: [(&str, i32); 3] = [("retrieval.v1", 0), ("retrieval.v1", 1), ("answer.v1", 0)];

/// Events of minutes `[from, to)` on every fed partition, each partition in time order.
fn events(from: i64, to: i64) -> Vec<(&'static str, i32, Value)> {
    let mut out = Vec::new();
    for (topic, partition) in FED {
        for minute in (from..to).step_by(STEP as usize) {
            out.push((topic, partition, event(topic, partition, minute)));
        }
    }
    out
}

async fn publish(s: &Stack, events: &[(&str, i32, Value)]) {
    let sink = Sink::new(&s.kafka, "test").unwrap();
    let mut deliveries = Vec::new();
    for (topic, partition, value) in events {
        let payload = serde_json::to_vec(value).unwrap();
        deliveries.push((
            *topic,
            sink.send_confirmed(topic, Some(*partition), None, &payload)
                .await
                .unwrap(),
        ));
    }
    for (topic, d) in deliveries {
        d.wait(topic).await.unwrap();
    }
}

/// Expected `tumbling_1h` results by key `<tenant>/<start hour>`: (retrieval events, answers).
fn expected_hours(events: &[(&str, i32, Value)], hours: i64) -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    for (topic, _, v) in events {
        let ts: chrono::DateTime<chrono::Utc> = v["ts"].as_str().unwrap().parse().unwrap();
        let t0: chrono::DateTime<chrono::Utc> = T0.parse().unwrap();
        let hour = (ts - t0).num_hours();
        if hour >= hours {
            continue;
        }
        let e = out
            .entry(format!("{}/{hour}", v["tenant_id"].as_str().unwrap()))
            .or_insert((0, 0));
        if *topic == "retrieval.v1" {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    out
}

/// `tumbling_1h` results read from metrics.v1 so far, by `<tenant>/<start hour>`.
fn read_hours(reader: &Reader, into: &mut BTreeMap<String, (u64, u64)>) {
    let t0: chrono::DateTime<chrono::Utc> = T0.parse().unwrap();
    for r in reader.drain(Duration::from_millis(500), None).unwrap() {
        let v: Value = serde_json::from_slice(&r.payload).unwrap();
        if v["window"] != "tumbling_1h" {
            continue;
        }
        let start: chrono::DateTime<chrono::Utc> =
            v["window_start"].as_str().unwrap().parse().unwrap();
        let key = format!(
            "{}/{}",
            v["tenant_id"].as_str().unwrap(),
            (start - t0).num_hours()
        );
        let got = (
            v["retrieval_events"].as_u64().unwrap(),
            v["answers"].as_u64().unwrap(),
        );
        if let Some(previous) = into.insert(key.clone(), got) {
            assert_eq!(previous, got, "{key} published twice with different values");
        }
    }
}

fn wait_hours(s: &Stack, reader: &Reader, got: &mut BTreeMap<String, (u64, u64)>, hours: i64) {
    let deadline = Instant::now() + Duration::from_secs(300);
    let done = |got: &BTreeMap<String, (u64, u64)>| {
        TENANTS
            .iter()
            .all(|t| got.contains_key(&format!("{t}/{}", hours - 1)))
    };
    while !done(got) {
        assert!(
            Instant::now() < deadline,
            "hour {} not closed; got {got:?}\n{}",
            hours - 1,
            s.logs()
        );
        read_hours(reader, got);
    }
}

fn late_records(s: &Stack) -> usize {
    ["retrieval.v1.late", "answer.v1.late"]
        .iter()
        .map(|t| {
            Reader::new(&s.kafka, &[t], true)
                .unwrap()
                .drain(Duration::from_secs(2), None)
                .unwrap()
                .len()
        })
        .sum()
}

/// The embedded pipeline publishing to `output`, with a 1 s idle timeout (30 s by default): a
/// stall of a few seconds then outlasts it, as a slow broker or an overloaded stage outlasts 30 s
/// in production.
fn pipeline(dir: &Path, output: &str) -> String {
    let pipelines = crate::repo_file("pipelines");
    let toml = std::fs::read_to_string(pipelines.join("windows.toml")).unwrap();
    let edited = toml
        .replace("idle_timeout = \"30s\"", "idle_timeout = \"1s\"")
        .replace(
            "output_topic = \"metrics.v1\"",
            &format!("output_topic = \"{output}\""),
        );
    assert_eq!(
        edited.matches("\"1s\"").count() + edited.matches(output).count(),
        2,
        "the embedded pipeline sets idle_timeout and output_topic"
    );
    let path = dir.join(format!("windows-{output}.toml"));
    std::fs::write(&path, edited).unwrap();
    std::fs::copy(pipelines.join("windows.sql"), dir.join("windows.sql")).unwrap();
    path.display().to_string()
}

fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_stage_closes_no_window_over_records_still_in_the_log() {
    let s = Stack::start();
    s.run(&["topics", "create", "--partitions", "2"]);
    s.run(&["topics", "create", "--partitions", "2", "metrics.replay"]);
    let live = pipeline(s.state.path(), "metrics.v1");
    let reader = Reader::new(&s.kafka, &["metrics.v1"], true).unwrap();

    // Hours 0–9, then the stage: windows close although answer partition 1 never has an event.
    let first = events(0, 10 * 60);
    publish(&s, &first).await;
    let mut stage = s.spawn(&["windows", "run", "--pipeline", &live], "windows.log");
    let mut got = BTreeMap::new();
    wait_hours(&s, &reader, &mut got, 9);

    // The stage stalls for five idle timeouts while hours 10–29 land on every fed partition.
    signal(stage.pid(), "-STOP");
    let second = events(10 * 60, 30 * 60);
    publish(&s, &second).await;
    std::thread::sleep(Duration::from_secs(5));
    signal(stage.pid(), "-CONT");

    // Killed once hour 19 closed, the restarted stage replays the open windows from the log.
    wait_hours(&s, &reader, &mut got, 20);
    stage.kill();
    let stage = s.spawn(
        &["windows", "run", "--pipeline", &live],
        "windows-restarted.log",
    );

    // The largest event is 29:55: the watermark reaches 29:45, so hours 0–28 close.
    let all: Vec<_> = first.iter().chain(&second).cloned().collect();
    let expected = expected_hours(&all, 29);
    wait_hours(&s, &reader, &mut got, 29);
    assert!(stage.terminate(), "clean stop\n{}", s.logs());
    read_hours(&reader, &mut got);
    assert_eq!(late_records(&s), 0, "no event was late\n{}", s.logs());
    assert_eq!(got, expected, "every hour holds all of its events");

    // A replay from the log's start by another group, in group mode, decides the same.
    let replay_dir = s.state.path().join("replay");
    let replay = s.spawn_with(
        &[
            "windows",
            "run",
            "--pipeline",
            &pipeline(s.state.path(), "metrics.replay"),
            "--data-dir",
            &replay_dir.display().to_string(),
        ],
        "replay.log",
        &[
            ("AION_GROUP_PREFIX", "replay"),
            ("AION_KAFKA_ASSIGNMENT", "group"),
        ],
    );
    let replay_reader = Reader::new(&s.kafka, &["metrics.replay"], true).unwrap();
    let mut replayed = BTreeMap::new();
    wait_hours(&s, &replay_reader, &mut replayed, 29);
    assert!(replay.terminate(), "clean stop\n{}", s.logs());
    assert_eq!(late_records(&s), 0, "the replay found no late event either");
    assert_eq!(replayed, expected);
}

/// One retrieval stamped 2099 by a client with a broken clock goes to the DLQ with the reason;
/// its partition's watermark stays honest and every later hour counts all of its events.
#[tokio::test(flavor = "multi_thread")]
async fn an_event_from_a_broken_clock_is_dead_lettered_and_blinds_nothing() {
    let s = Stack::start();
    s.run(&["topics", "create", "--partitions", "2"]);
    let reader = Reader::new(&s.kafka, &["metrics.v1"], true).unwrap();
    let before = events(0, 3 * 60);
    let mut broken = event("retrieval.v1", 0, 3 * 60);
    broken["event_id"] = json!("broken-clock");
    broken["ts"] = json!("2099-01-01T00:00:00Z");
    let after = events(3 * 60, 6 * 60);
    let mut all = before.clone();
    all.push(("retrieval.v1", 0, broken.clone()));
    all.extend(after.iter().cloned());
    publish(&s, &all).await;
    let stage = s.spawn(&["windows", "run"], "windows.log");

    // The largest honest event is 05:55: hours 0–4 close, each with all of its events.
    let honest: Vec<_> = before.iter().chain(&after).cloned().collect();
    let mut got = BTreeMap::new();
    wait_hours(&s, &reader, &mut got, 5);
    assert!(stage.terminate(), "clean stop\n{}", s.logs());
    read_hours(&reader, &mut got);
    assert_eq!(got, expected_hours(&honest, 5));
    assert_eq!(late_records(&s), 0, "{}", s.logs());
    let dlq = Reader::new(&s.kafka, &["retrieval.v1.dlq"], true)
        .unwrap()
        .drain(Duration::from_secs(2), None)
        .unwrap();
    assert_eq!(dlq.len(), 1, "{}", s.logs());
    assert_eq!(dlq[0].payload, serde_json::to_vec(&broken).unwrap());
    let reason = dlq[0]
        .header(aion_kafka::headers::REASON)
        .unwrap_or_default();
    assert!(reason.contains("ahead of this stage's clock"), "{reason}");
}
