//! The trigger gate through the real broker: the degradation scenario → windows → gate, with the
//! gate killed (-9) and restarted in the middle; triggers name their window's worst entities.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aion_kafka::{Reader, Sink};
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::Stack;

/// Generated lines of one topic file, split at event time `cut`.
fn split(path: &std::path::Path, cut: DateTime<Utc>) -> (Vec<String>, Vec<String>) {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .partition(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or(Value::Null);
            v["ts"]
                .as_str()
                .and_then(|t| t.parse::<DateTime<Utc>>().ok())
                .is_none_or(|t| t < cut)
        })
}

async fn publish(s: &Stack, topic: &str, lines: &[String]) {
    let sink = Sink::new(&s.kafka, "test").unwrap();
    for l in lines {
        let v: Value = serde_json::from_str(l).unwrap_or(Value::Null);
        let key = v["tenant_id"].as_str().unwrap_or("x").to_owned();
        sink.send(topic, Some(key.as_bytes()), l.as_bytes(), None, None)
            .await
            .unwrap();
    }
    sink.flush(Duration::from_secs(60)).unwrap();
}

/// Triggers by id; an id seen twice must carry the same trigger.
fn triggers(s: &Stack, reader: &Reader, into: &mut BTreeMap<String, Value>) {
    for r in reader.drain(Duration::from_secs(2), None).unwrap() {
        let v: Value = serde_json::from_slice(&r.payload).unwrap();
        let id = v["trigger_id"].as_str().unwrap().to_owned();
        if let Some(previous) = into.insert(id.clone(), v.clone()) {
            assert_eq!(previous, v, "{id} fired twice differently\n{}", s.logs());
        }
    }
}

fn wait_for_metrics_end(s: &Stack, reader: &Reader, until: DateTime<Utc>) {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut latest: Option<DateTime<Utc>> = None;
    while latest.is_none_or(|l| l < until) {
        assert!(
            Instant::now() < deadline,
            "windows stage stuck at {latest:?}\n{}",
            s.logs()
        );
        for r in reader.drain(Duration::from_secs(1), None).unwrap() {
            let v: Value = serde_json::from_slice(&r.payload).unwrap();
            let end: DateTime<Utc> = v["window_end"].as_str().unwrap().parse().unwrap();
            latest = latest.max(Some(end));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_trigger_per_cooldown_for_the_degraded_tenant_only_across_a_gate_kill() {
    let s = Stack::start();
    s.run(&["topics", "create", "--partitions", "1"]);
    let dir = s.state.path().join("traffic");
    let start: DateTime<Utc> = "2026-11-01T00:00:00Z".parse().unwrap();
    s.run(&[
        "produce",
        "--to-dir",
        dir.to_str().unwrap(),
        "--count",
        "12000",
        "--seed",
        "7",
        "--scenario",
        "degrade",
        "--degrade-at",
        "0.5",
        "--degrade-tenants",
        "acme",
        "--tenants",
        "acme,globex,initech",
        "--span-hours",
        "48",
        "--start",
        "2026-11-01T00:00:00Z",
        "--late-fraction",
        "0",
    ]);
    let cut = start + chrono::Duration::hours(36);
    let (r1, r2) = split(&dir.join("retrieval.v1.jsonl"), cut);
    let (a1, a2) = split(&dir.join("answer.v1.jsonl"), cut);
    let metrics = Reader::new(&s.kafka, &["metrics.v1"], true).unwrap();
    let out = Reader::new(&s.kafka, &["train.trigger.v1"], true).unwrap();
    let mut got = BTreeMap::new();

    // The entity table the shard stage would have written: the triggers name their worst entities.
    crate::write_entity_table(
        s.state.path(),
        &std::fs::read_to_string(dir.join("retrieval.v1.jsonl")).unwrap(),
    );
    let vocabulary: Vec<String> = aion_traffic::entities().map(str::to_lowercase).collect();
    let _windows = s.spawn(&["windows", "run"], "windows.log");
    let mut gate = s.spawn(&["gate", "run"], "gate.log");
    publish(&s, "retrieval.v1", &r1).await;
    publish(&s, "answer.v1", &a1).await;
    wait_for_metrics_end(&s, &metrics, cut - chrono::Duration::hours(1));
    std::thread::sleep(Duration::from_secs(3));
    triggers(&s, &out, &mut got);
    assert!(
        !got.is_empty(),
        "acme degraded from 24 h on: a trigger by 35 h\n{}",
        s.logs()
    );
    gate.kill();

    publish(&s, "retrieval.v1", &r2).await;
    publish(&s, "answer.v1", &a2).await;
    let _gate = s.spawn(&["gate", "run"], "gate2.log");
    wait_for_metrics_end(&s, &metrics, start + chrono::Duration::hours(47));
    std::thread::sleep(Duration::from_secs(5));
    triggers(&s, &out, &mut got);

    let tenants: Vec<&str> = got
        .values()
        .map(|t| t["tenant_id"].as_str().unwrap())
        .collect();
    assert!(
        tenants.iter().all(|t| *t == "acme"),
        "healthy tenants fired: {tenants:?}"
    );
    let mut ends: Vec<DateTime<Utc>> = got
        .values()
        .map(|t| t["at"].as_str().unwrap().parse().unwrap())
        .collect();
    ends.sort();
    eprintln!("acme triggers at {ends:?}");
    assert!(
        ends.len() >= 3,
        "degraded for ~24 h with a 6 h cooldown: {ends:?}\n{}",
        s.logs()
    );
    for pair in ends.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            chrono::Duration::hours(6),
            "one trigger per cooldown: {ends:?}"
        );
    }
    check_index_rebuilds(&s, &[r1, r2].concat());
    for t in got.values() {
        let breached = t["fallback_rate"].as_f64().is_some_and(|r| r > 0.18)
            || t["ndcg_mean"].as_f64().is_some_and(|n| n < 0.82);
        assert!(breached, "trigger without a breach: {t}");
        assert_eq!(t["window"], "hopping_24h");
        assert!(t["answers"].as_u64().unwrap() >= 50);
        assert_eq!(t["recipe"]["lora_r"], 16);
        let worst = t["top_entities"].as_array().unwrap();
        assert_eq!(worst.len(), 5, "{t}");
        assert!(
            worst
                .iter()
                .all(|e| vocabulary.iter().any(|v| e == v.as_str())),
            "{t}"
        );
    }
}

/// Every 1,000 new documents of a tenant (the default ΔN) asked for one rebuild, numbered 1..n,
/// each id once, across the gate's kill.
fn check_index_rebuilds(s: &Stack, retrievals: &[String]) {
    let mut distinct: BTreeMap<String, std::collections::HashSet<String>> = BTreeMap::new();
    for l in retrievals {
        let v: Value = serde_json::from_str(l).unwrap();
        let docs = distinct
            .entry(v["tenant_id"].as_str().unwrap().to_owned())
            .or_default();
        for r in v["results"].as_array().unwrap() {
            docs.insert(r["doc_id"].as_str().unwrap().to_owned());
        }
    }
    let mut requests: BTreeMap<String, Value> = BTreeMap::new();
    let records = Reader::new(&s.kafka, &["index.rebuild.v1"], true)
        .unwrap()
        .drain(Duration::from_secs(3), None)
        .unwrap();
    for r in records {
        let v: Value = serde_json::from_slice(&r.payload).unwrap();
        let id = v["rebuild_id"].as_str().unwrap().to_owned();
        if let Some(previous) = requests.insert(id.clone(), v.clone()) {
            assert_eq!(previous, v, "{id} requested twice differently");
        }
    }
    for (tenant, docs) in &distinct {
        eprintln!("{tenant}: {} distinct documents", docs.len());
        let mine: Vec<&Value> = requests
            .values()
            .filter(|v| v["tenant_id"] == tenant.as_str())
            .collect();
        // A request fires at the event that reaches ΔN; an event adds at most 12 documents.
        let (most, least) = (docs.len() / 1000, docs.len() / 1012);
        assert!(
            (least..=most).contains(&mine.len()),
            "{tenant}: {} distinct documents, {} requests",
            docs.len(),
            mine.len()
        );
        let mut ids: Vec<String> = mine
            .iter()
            .map(|v| v["rebuild_id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort_by_key(|id| id.rsplit('/').next().unwrap().parse::<u64>().unwrap());
        let expected: Vec<String> = (1..=mine.len()).map(|n| format!("{tenant}/{n}")).collect();
        assert_eq!(ids, expected);
        assert!(mine
            .iter()
            .all(|v| v["new_documents"].as_u64().unwrap() >= 1000));
    }
}

#[test]
fn settings_are_validated_persisted_and_a_manual_trigger_is_published() {
    let s = Stack::start();
    s.run(&["topics", "create", "--partitions", "1"]);
    let shown: Value =
        serde_json::from_str(&s.run(&["gate", "settings", "--tau-ndcg", "0.7"])).unwrap();
    assert_eq!(shown["tau_ndcg"], 0.7);
    let shown: Value = serde_json::from_str(&s.run(&["gate", "settings"])).unwrap();
    assert_eq!(
        (shown["tau_ndcg"].as_f64(), shown["tau_fallback"].as_f64()),
        (Some(0.7), Some(0.18))
    );
    let bad = s
        .aion()
        .args(["gate", "settings", "--tau-fallback", "1.5"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("tau_fallback must be within (0, 1)"));
    let env = s
        .aion()
        .env("AION_TAU_FALLBACK", "0.25")
        .args(["gate", "settings", "--reset"])
        .output()
        .unwrap();
    let reset: Value = serde_json::from_slice(&env.stdout).unwrap();
    assert_eq!(reset["tau_ndcg"], 0.82, "reset forgets run-time changes");

    let bad_tenant = s
        .aion()
        .args(["train", "trigger", "--tenant", "../x"])
        .output()
        .unwrap();
    assert!(!bad_tenant.status.success());
    let printed: Value = serde_json::from_str(&s.run(&[
        "train", "trigger", "--tenant", "acme", "--reason", "new docs",
    ]))
    .unwrap();
    let published = Reader::new(&s.kafka, &["train.trigger.v1"], true)
        .unwrap()
        .drain(Duration::from_secs(3), None)
        .unwrap();
    assert_eq!(published.len(), 1);
    let v: Value = serde_json::from_slice(&published[0].payload).unwrap();
    assert_eq!(v, printed);
    assert_eq!(
        (v["reason"].as_str(), v["note"].as_str()),
        (Some("manual"), Some("new docs"))
    );
}

/// `gate run --dry-run` logs what would fire, publishes nothing and commits nothing in any group:
/// the real gate, started after it, still evaluates every window and fires.
/// One degraded window of `acme` on `metrics.v1`: the gate fires on it.
fn publish_degraded_window(s: &Stack) {
    let degraded = serde_json::json!({"tenant_id": "acme", "window": "hopping_24h",
        "window_start": "2026-11-24T13:00:00Z", "window_end": "2026-11-25T13:00:00Z",
        "retrieval_events": 120, "judged_events": 80, "ndcg_mean": 0.6, "ndcg_p50": 0.6,
        "ndcg_p10": 0.3, "answers": 118, "fallbacks": 50, "fallback_rate": 0.42,
        "confidence_mean": 0.5});
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(s.publish([(
            "metrics.v1".to_owned(),
            "acme".to_owned(),
            serde_json::to_vec(&degraded).unwrap(),
        )]));
}

/// The triggers published so far.
fn published_triggers(s: &Stack) -> Vec<aion_kafka::RawRecord> {
    Reader::new(&s.kafka, &["train.trigger.v1"], true)
        .unwrap()
        .drain(Duration::from_secs(2), None)
        .unwrap()
}

/// Waits up to a minute for the first trigger.
fn wait_for_triggers(s: &Stack) -> Vec<aion_kafka::RawRecord> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut fired = Vec::new();
    while fired.is_empty() && Instant::now() < deadline {
        fired = published_triggers(s);
    }
    fired
}

/// An error exit under group membership: the shard manifest cannot be read when the trigger is
/// about to fire, so the gate fails holding the breaching window. The failed run commits nothing;
/// restarted once the fault is cleared, the gate fires. (When a dropped ack counted as done, the
/// failed run committed the window and the trigger never fired.)
#[test]
fn an_unreadable_manifest_at_fire_time_in_group_mode_delays_the_trigger_and_loses_none() {
    let s = Stack::start();
    s.run(&["topics", "create", "--partitions", "1"]);
    publish_degraded_window(&s);
    let manifest = s
        .state
        .path()
        .join("shards")
        .join(aion_events::SHARD_MANIFEST);
    std::fs::create_dir_all(&manifest).unwrap();
    let group = [("AION_KAFKA_ASSIGNMENT", "group")];
    let failing = s.spawn_with(&["gate", "run"], "gate-failing.log", &group);
    assert!(!failing.wait(), "the gate must fail\n{}", s.logs());
    let committed = || aion_kafka::committed_offsets(&s.kafka, "aion.gate", "metrics.v1").unwrap();
    assert!(
        committed().is_empty(),
        "the failed run committed {:?}",
        committed()
    );
    assert!(published_triggers(&s).is_empty());
    std::fs::remove_dir(&manifest).unwrap();
    let gate = s.spawn_with(&["gate", "run"], "gate.log", &group);
    let fired = wait_for_triggers(&s);
    assert!(gate.terminate(), "{}", s.logs());
    assert_eq!(fired.len(), 1, "{}", s.logs());
    assert_eq!(committed().get(&0), Some(&1));
}

#[test]
fn a_dry_run_moves_no_offset_and_the_real_gate_still_fires() {
    let s = Stack::start();
    s.run(&["topics", "create", "--partitions", "1"]);
    publish_degraded_window(&s);
    let mut dry = s.spawn(&["gate", "run", "--dry-run"], "dry-run.log");
    assert!(dry.wait_for_line("dry run: would fire"), "{}", s.logs());
    assert!(dry.terminate(), "{}", s.logs());
    let committed =
        |group: &str| aion_kafka::committed_offsets(&s.kafka, group, "metrics.v1").unwrap();
    for group in ["aion.gate", "aion.gate-dry-run"] {
        assert!(
            committed(group).is_empty(),
            "{group} committed {:?}",
            committed(group)
        );
    }
    assert!(
        published_triggers(&s).is_empty(),
        "a dry run published a trigger"
    );

    let gate = s.spawn(&["gate", "run"], "gate.log");
    let fired = wait_for_triggers(&s);
    assert!(gate.terminate(), "{}", s.logs());
    assert_eq!(fired.len(), 1, "{}", s.logs());
    assert_eq!(committed("aion.gate").get(&0), Some(&1));
}
