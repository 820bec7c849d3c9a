//! Golden pipeline test of the windows stage against a real broker: fixed events (out of order,
//! late, invalid) → metrics.v1 records and the Parquet table, compared with
//! `tests/fixtures/windows_expected.jsonl`; once straight, once killed (-9) and restarted midway,
//! once after an error exit in group mode. A mismatch writes what the run produced next to the
//! test binary (`windows_actual.jsonl`) for review; the test never rewrites the expected file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aion_kafka::{headers, Reader, Sink};
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Float64Type, Int64Type, TimestampMicrosecondType};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{json, Value};

use crate::Stack;

const T0: &str = "2026-11-02T00:00:00Z";

fn at(minutes: i64) -> String {
    let t0: chrono::DateTime<chrono::Utc> = T0.parse().unwrap();
    (t0 + chrono::Duration::minutes(minutes)).to_rfc3339()
}

/// A retrieval event whose results carry the given grades in rank order (`None`: unjudged).
fn retrieval(id: &str, tenant: &str, minutes: i64, rels: &[Option<u8>]) -> Value {
    let results: Vec<Value> = rels
        .iter()
        .enumerate()
        .map(|(i, rel)| {
            let mut r = json!({"doc_id": format!("d{i}"), "rank": i + 1, "text": "t", "score": 1.0 - i as f64 / 10.0});
            if let Some(rel) = rel {
                r["rel"] = json!(rel);
            }
            r
        })
        .collect();
    json!({"event_id": id, "tenant_id": tenant, "ts": at(minutes), "query": "q", "results": results})
}

fn answer(id: &str, tenant: &str, minutes: i64, fallback: bool, confidence: f64) -> Value {
    json!({"event_id": id, "tenant_id": tenant, "ts": at(minutes), "prompt": "p", "reply": "r",
           "confidence": confidence, "fallback": fallback, "provider": "local", "model": "m", "latency_ms": 5})
}

/// (topic, payload) in publish order.
type Records = Vec<(&'static str, Vec<u8>)>;

/// The input: first half, then second half.
fn input() -> (Records, Records) {
    let r = |v: Value| ("retrieval.v1", serde_json::to_vec(&v).unwrap());
    let a = |v: Value| ("answer.v1", serde_json::to_vec(&v).unwrap());
    let first = vec![
        r(retrieval("r1", "acme", 5, &[Some(1), Some(0)])), // nDCG 1
        r(retrieval("r2", "acme", 20, &[Some(0), Some(1)])), // 1/log2(3)
        r(retrieval("r3", "globex", 30, &[Some(2), Some(2)])),
        // Out of order, within the 10 min lateness (watermark 00:20).
        r(retrieval("r4", "acme", 10, &[Some(0), Some(1)])),
        r(retrieval("r5", "acme", 90, &[Some(1)])),
        // Late for hour 0 (watermark 01:20): counts in the day and later hops only.
        r(retrieval("r6", "acme", 50, &[Some(0), Some(0), Some(1)])),
        ("retrieval.v1", b"{not json".to_vec()),
        a(answer("a1", "acme", 15, false, 0.9)),
        a(answer("a2", "acme", 40, true, 0.3)),
        a(answer("a3", "globex", 45, false, 0.8)),
        a(answer("a4", "acme", 70, true, 0.4)),
    ];
    let second = vec![
        r(retrieval("r7", "globex", 130, &[None, None])), // counted, not scored
        r(retrieval("r8", "acme", 26 * 60, &[Some(1), Some(1)])),
        a(answer("a5", "globex", 26 * 60 + 5, true, 0.2)),
        // Far ahead on both topics: the watermark passes every window above.
        r(retrieval("r9", "zz-flush", 80 * 60, &[Some(1)])),
        a(answer("a6", "zz-flush", 80 * 60, false, 1.0)),
    ];
    (first, second)
}

async fn publish(s: &Stack, records: &[(&str, Vec<u8>)]) {
    let sink = Sink::new(&s.kafka, "test").unwrap();
    for (topic, payload) in records {
        sink.send(topic, Some(b"k"), payload, None, None)
            .await
            .unwrap();
    }
    sink.flush(Duration::from_secs(30)).unwrap();
}

fn expected_path() -> PathBuf {
    crate::repo_file("crates/aion-cli/tests/fixtures/windows_expected.jsonl")
}

/// metrics.v1 read so far, by key; a key seen twice must carry the same value.
fn read_metrics(s: &Stack, reader: &Reader, into: &mut BTreeMap<String, Value>) {
    for r in reader.drain(Duration::from_secs(1), None).unwrap() {
        let key = String::from_utf8(r.key.clone().unwrap()).unwrap();
        let value: Value = serde_json::from_slice(&r.payload).unwrap();
        if let Some(previous) = into.insert(key.clone(), value.clone()) {
            assert_eq!(
                previous,
                value,
                "{key} published twice with different values\n{}",
                s.logs()
            );
        }
    }
}

fn wait_for(s: &Stack, reader: &Reader, got: &mut BTreeMap<String, Value>, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} window results\n{}",
            got.len(),
            s.logs()
        );
        read_metrics(s, reader, got);
    }
}

/// Every row of the Parquet table, as (tenant/window/start key, judged, ndcg_mean, fallback_rate).
fn parquet_rows(root: &Path) -> BTreeMap<String, (i64, Option<f64>, Option<f64>)> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            assert_eq!(
                path.extension().unwrap(),
                "parquet",
                "{} left behind",
                path.display()
            );
            let file = std::fs::File::open(&path).unwrap();
            for batch in ParquetRecordBatchReaderBuilder::try_new(file)
                .unwrap()
                .build()
                .unwrap()
            {
                let b: RecordBatch = batch.unwrap();
                let col = |n: &str| b.column_by_name(n).unwrap().clone();
                let float = |n: &str, i: usize| {
                    let c = col(n);
                    let c = c.as_primitive::<Float64Type>();
                    (!datafusion::arrow::array::Array::is_null(c, i)).then(|| c.value(i))
                };
                for i in 0..b.num_rows() {
                    let start = col("window_start")
                        .as_primitive::<TimestampMicrosecondType>()
                        .value(i);
                    let start = chrono::DateTime::from_timestamp_micros(start).unwrap();
                    let key = format!(
                        "{}/{}/{}",
                        col("tenant_id").as_string::<i32>().value(i),
                        col("window").as_string::<i32>().value(i),
                        start.format("%Y-%m-%dT%H:%M:%SZ")
                    );
                    let judged = col("judged_events").as_primitive::<Int64Type>().value(i);
                    let row = (judged, float("ndcg_mean", i), float("fallback_rate", i));
                    assert!(
                        out.insert(key.clone(), row).is_none(),
                        "{key} written twice"
                    );
                }
            }
        }
    }
    out
}

/// How a golden run is interrupted.
#[derive(Clone, Copy, PartialEq)]
enum Interruption {
    None,
    /// SIGKILL once the first window closed, then a restart.
    Kill9Midway,
    /// Group mode, the metrics table unwritable: the stage exits with an error at the first
    /// window close holding every event of the windows still open; the fault is cleared and the
    /// stage restarted.
    ErrorExitInGroupMode,
}

async fn run_pipeline(how: Interruption) -> (Stack, BTreeMap<String, Value>) {
    let s = Stack::start();
    s.run(&["topics", "create", "--partitions", "1"]);
    let (first, second) = input();
    let reader = Reader::new(&s.kafka, &["metrics.v1"], true).unwrap();
    let mut got = BTreeMap::new();
    let group = [("AION_KAFKA_ASSIGNMENT", "group")];
    let env: &[(&str, &str)] = if how == Interruption::ErrorExitInGroupMode {
        &group
    } else {
        &[]
    };
    // A file where the table's directory goes: every window write fails.
    let blocked = s.state.path().join("metrics");
    if how == Interruption::ErrorExitInGroupMode {
        std::fs::write(&blocked, "in the way").unwrap();
    }
    publish(&s, &first).await;
    let args = ["windows", "run"];
    let mut stage = s.spawn_with(&args, "windows.log", env);
    match how {
        Interruption::None => publish(&s, &second).await,
        Interruption::Kill9Midway => {
            // Hour 0 closes once both topics are past 01:10: results exist, later windows are open.
            wait_for(&s, &reader, &mut got, 1);
            stage.kill();
            publish(&s, &second).await;
            stage = s.spawn_with(&args, "windows-restarted.log", env);
        }
        Interruption::ErrorExitInGroupMode => {
            assert!(!stage.wait(), "the stage must fail\n{}", s.logs());
            let log = std::fs::read_to_string(s.state.path().join("windows.log")).unwrap();
            assert!(log.contains("metrics"), "the error names the table\n{log}");
            std::fs::remove_file(&blocked).unwrap();
            publish(&s, &second).await;
            stage = s.spawn_with(&args, "windows-restarted.log", env);
        }
    }
    let expected_len = std::fs::read_to_string(expected_path())
        .map(|t| t.lines().count())
        .unwrap_or(1);
    wait_for(&s, &reader, &mut got, expected_len);
    // Anything published twice shows up here (with a different value it fails).
    std::thread::sleep(Duration::from_secs(2));
    read_metrics(&s, &reader, &mut got);
    assert!(stage.terminate(), "clean stop\n{}", s.logs());
    (s, got)
}

fn check(s: &Stack, got: &BTreeMap<String, Value>) {
    let lines: Vec<String> = got.values().map(|v| v.to_string()).collect();
    let expected = std::fs::read_to_string(expected_path()).unwrap();
    let expected: Vec<&str> = expected.lines().collect();
    if lines != expected {
        let actual = std::env::current_exe()
            .unwrap()
            .with_file_name("windows_actual.jsonl");
        std::fs::write(&actual, lines.join("\n") + "\n").unwrap();
        panic!(
            "window results differ from the golden file {}; this run's are in {}",
            expected_path().display(),
            actual.display()
        );
    }

    // The metrics table holds the same windows and values.
    let table = parquet_rows(&s.state.path().join("metrics"));
    let from_topic: BTreeMap<String, (i64, Option<f64>, Option<f64>)> = got
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                (
                    v["judged_events"].as_i64().unwrap(),
                    v["ndcg_mean"].as_f64(),
                    v["fallback_rate"].as_f64(),
                ),
            )
        })
        .collect();
    assert_eq!(table, from_topic);

    // Side outputs: the late event with the windows it missed, the invalid one in the DLQ.
    let late = Reader::new(&s.kafka, &["retrieval.v1.late"], true)
        .unwrap()
        .drain(Duration::from_secs(2), None)
        .unwrap();
    let late_ids: Vec<(String, String)> = late
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_slice(&r.payload).unwrap();
            (
                v["event_id"].as_str().unwrap().to_owned(),
                r.header("aion.late.windows").unwrap().to_owned(),
            )
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        late_ids,
        vec![("r6".to_string(), "tumbling_1h,hopping_24h".to_string())]
    );
    let dlq = Reader::new(&s.kafka, &["retrieval.v1.dlq"], true)
        .unwrap()
        .drain(Duration::from_secs(2), None)
        .unwrap();
    assert!(
        !dlq.is_empty()
            && dlq
                .iter()
                .all(|r| r.payload == b"{not json" && r.header(headers::REASON).is_some())
    );
}

/// An analyst reruns the stream's SQL over the Parquet history and gets the published results.
fn check_analyst_rerun(s: &Stack, got: &BTreeMap<String, Value>) {
    let sql = crate::repo_file("pipelines/windows.sql");
    let out = s.run(&["sql", "--format", "json", &format!("@{}", sql.display())]);
    let mut rerun = BTreeMap::new();
    for line in out.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let start: chrono::DateTime<chrono::Utc> =
            v["window_start"].as_str().unwrap().parse().unwrap();
        let key = format!(
            "{}/{}/{}",
            v["tenant_id"].as_str().unwrap(),
            v["window"].as_str().unwrap(),
            start.format("%Y-%m-%dT%H:%M:%SZ")
        );
        rerun.insert(key, v);
    }
    assert_eq!(
        rerun.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>()
    );
    for (key, published) in got {
        for field in [
            "retrieval_events",
            "judged_events",
            "answers",
            "fallbacks",
            "ndcg_mean",
            "ndcg_p50",
            "ndcg_p10",
            "fallback_rate",
            "confidence_mean",
        ] {
            // Arrow's JSON writer leaves NULL fields out.
            let (a, b) = (
                published[field].as_f64(),
                rerun[key].get(field).and_then(Value::as_f64),
            );
            assert!(
                a.zip(b)
                    .map_or(a.is_none() && b.is_none(), |(a, b)| (a - b).abs() < 1e-12),
                "{key} {field}: published {a:?}, rerun {b:?}"
            );
        }
    }
}

/// Hand-computed values of a few windows, so the golden file itself is checked.
fn check_by_hand(got: &BTreeMap<String, Value>) {
    let hour0 = &got["acme/tumbling_1h/2026-11-02T00:00:00Z"];
    let third = 1.0 / 3f64.log2();
    // r1, r2, r4 (r6 came late): nDCG 1, 1/log2 3, 1/log2 3; answers a1, a2.
    assert_eq!(hour0["retrieval_events"], 3);
    assert!((hour0["ndcg_mean"].as_f64().unwrap() - (1.0 + 2.0 * third) / 3.0).abs() < 1e-12);
    assert!((hour0["ndcg_p50"].as_f64().unwrap() - third).abs() < 1e-12);
    assert_eq!(
        (hour0["answers"].as_u64(), hour0["fallback_rate"].as_f64()),
        (Some(2), Some(0.5))
    );
    let day = &got["acme/tumbling_1d/2026-11-02T00:00:00Z"];
    // The day counts the late r6 (nDCG 0.5) and r5.
    assert_eq!(day["judged_events"], 5);
    assert!(
        (day["ndcg_mean"].as_f64().unwrap() - (1.0 + 2.0 * third + 1.0 + 0.5) / 5.0).abs() < 1e-12
    );
    assert_eq!(
        (day["answers"].as_u64(), day["fallbacks"].as_u64()),
        (Some(3), Some(2))
    );
    let globex = &got["globex/tumbling_1h/2026-11-02T02:00:00Z"];
    assert_eq!(
        (
            globex["retrieval_events"].as_u64(),
            globex["judged_events"].as_u64()
        ),
        (Some(1), Some(0))
    );
    assert!(globex["ndcg_mean"].is_null());
    assert!(
        !got.keys().any(|k| k.starts_with("zz-flush/")),
        "the flush events' windows stay open"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn windows_golden_results_straight() {
    let (s, got) = run_pipeline(Interruption::None).await;
    check_by_hand(&got);
    check(&s, &got);
    check_analyst_rerun(&s, &got);
}

/// An error exit under group membership (the production default): once the fault is cleared and
/// the stage restarted, the results are the golden ones, so nothing the failed run held was
/// committed. (When a dropped ack counted as done, the restart saw none of the first half.)
#[tokio::test(flavor = "multi_thread")]
async fn windows_golden_results_after_an_error_exit_in_group_mode() {
    let (s, got) = run_pipeline(Interruption::ErrorExitInGroupMode).await;
    check_by_hand(&got);
    check(&s, &got);
}

#[tokio::test(flavor = "multi_thread")]
async fn windows_golden_results_after_kill_9_midway() {
    let (s, got) = run_pipeline(Interruption::Kill9Midway).await;
    check_by_hand(&got);
    check(&s, &got);
    check_analyst_rerun(&s, &got);
}
