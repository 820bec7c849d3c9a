use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use aion_events::topics;
use aion_kafka::{committed_offsets, headers, RawRecord, Reader, Sink};
use aion_traffic::{Generator, Scenario, TrafficConfig};
use serde_json::{json, Value};

use crate::Stack;

const OUTPUTS: [&str; 4] = [
    "retrieval.v1.valid",
    "answer.v1.valid",
    "retrieval.v1.dlq",
    "answer.v1.dlq",
];

/// Source coordinates of an output record, from its lineage headers.
fn source_of(r: &RawRecord) -> (String, i32, i64) {
    (
        r.header(headers::SOURCE_TOPIC).unwrap().to_owned(),
        r.header(headers::SOURCE_PARTITION)
            .unwrap()
            .parse()
            .unwrap(),
        r.header(headers::SOURCE_OFFSET).unwrap().parse().unwrap(),
    )
}

fn event_id(r: &RawRecord) -> String {
    serde_json::from_slice::<Value>(&r.payload).unwrap()["event_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn read_until(
    s: &Stack,
    reader: &Reader,
    into: &mut Vec<RawRecord>,
    done: impl Fn(&[RawRecord]) -> bool,
    what: &str,
) {
    // A bound for a stuck stage, not a speed target: alone this takes about 2 minutes on 2 cores
    // with the local broker, and it once took more than 3 under the whole suite's load.
    let deadline = Instant::now() + Duration::from_secs(600);
    while !done(into) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {} records\n{}",
            into.len(),
            s.logs()
        );
        if let Some(r) = reader.next(Duration::from_millis(200)).unwrap() {
            into.push(r);
        }
    }
}

#[test]
fn relay_delivers_every_valid_event_once_and_every_invalid_one_to_the_dlq_across_kill_9() {
    let s = Stack::start();
    s.run(&["topics", "create"]);
    s.run(&["topics", "create", "retrieval.v1.valid", "answer.v1.valid"]);
    let expected: Vec<_> = Generator::new(TrafficConfig {
        seed: 9,
        tenants: vec!["acme".into(), "globex".into(), "initech".into()],
        count: 10_000,
        start: "2026-11-01T00:00:00Z".parse().unwrap(),
        span: chrono::Duration::hours(48),
        scenario: Scenario::Steady,
        invalid_fraction: 0.05,
        late_fraction: 0.01,
    })
    .collect();
    let valid_ids: HashSet<String> = expected
        .iter()
        .filter(|p| p.valid)
        .map(|p| {
            serde_json::from_slice::<Value>(&p.bytes).unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let mut invalid: Vec<&[u8]> = expected
        .iter()
        .filter(|p| !p.valid)
        .map(|p| p.bytes.as_slice())
        .collect();
    assert!(invalid.len() > 300, "the run must exercise the DLQ");

    let reader = Reader::new(&s.kafka, &OUTPUTS, true).unwrap();
    let mut out = Vec::new();
    let mut first = s.spawn(&["relay"], "relay-1.log");
    // Traffic arrives while the relay runs, so the kill lands in the middle of the stream.
    let producer = s.spawn(
        &[
            "produce",
            "--count",
            "10000",
            // Slow enough that the kill after 3,000 outputs lands mid-stream even when the
            // reader's group join is slow (the local broker holds joins for seconds).
            "--rate",
            "800",
            "--seed",
            "9",
            "--invalid-fraction",
            "0.05",
            "--start",
            "2026-11-01T00:00:00Z",
            "--span-hours",
            "48",
            "--tenants",
            "acme,globex,initech",
        ],
        "produce.log",
    );
    read_until(
        &s,
        &reader,
        &mut out,
        |o| o.len() >= 3_000,
        "3000 outputs before the kill",
    );
    first.kill();
    let group = "aion.relay";
    let committed_at_kill: HashMap<&str, BTreeMap<i32, i64>> = topics::INPUTS
        .iter()
        .map(|t| (*t, committed_offsets(&s.kafka, group, t).unwrap()))
        .collect();

    let committed: i64 = committed_at_kill.values().flat_map(|c| c.values()).sum();
    assert!(
        committed < 9_000,
        "the kill must land mid-stream, {committed} were committed"
    );

    let second = s.spawn(&["relay"], "relay-2.log");
    assert!(producer.wait(), "aion produce failed:\n{}", s.logs());
    let distinct = |o: &[RawRecord]| o.iter().map(source_of).collect::<HashSet<_>>().len();
    read_until(
        &s,
        &reader,
        &mut out,
        |o| distinct(o) >= 10_000,
        "every input to reach an output",
    );
    assert!(second.terminate(), "graceful stop failed:\n{}", s.logs());
    out.extend(reader.drain(Duration::from_secs(2), None).unwrap());

    // Every valid event forwarded, nothing invalid forwarded.
    let forwarded: HashSet<String> = out
        .iter()
        .filter(|r| r.topic.ends_with(".valid"))
        .map(event_id)
        .collect();
    assert_eq!(forwarded, valid_ids);

    // Every invalid payload dead-lettered with its original bytes and a reason.
    let mut dead: BTreeMap<(String, i32, i64), &RawRecord> = BTreeMap::new();
    for r in out.iter().filter(|r| r.topic.ends_with(".dlq")) {
        assert!(!r.header(headers::REASON).unwrap_or_default().is_empty());
        dead.insert(source_of(r), r);
    }
    let mut dead_payloads: Vec<&[u8]> = dead.values().map(|r| r.payload.as_slice()).collect();
    dead_payloads.sort();
    invalid.sort();
    assert_eq!(dead_payloads, invalid);

    // Duplicates only within the tail that was not committed when the relay was killed.
    let mut seen = HashSet::new();
    let mut duplicates = 0;
    for r in &out {
        let (topic, partition, offset) = source_of(r);
        if !seen.insert((topic.clone(), partition, offset)) {
            duplicates += 1;
            let committed = committed_at_kill[topic.as_str()]
                .get(&partition)
                .copied()
                .unwrap_or(0);
            assert!(
                offset >= committed,
                "{topic}/{partition}@{offset} duplicated below the commit {committed}"
            );
        }
    }
    eprintln!(
        "outputs {} distinct {} duplicates {duplicates}, committed at kill {committed}",
        out.len(),
        seen.len()
    );

    // The graceful stop committed everything.
    let total: i64 = topics::INPUTS
        .iter()
        .map(|t| {
            committed_offsets(&s.kafka, group, t)
                .unwrap()
                .values()
                .sum::<i64>()
        })
        .sum();
    assert_eq!(total, 10_000);
}

fn example(event_id: &str) -> Value {
    let schema: Value =
        serde_json::from_str(include_str!("../../../../schemas/retrieval.v1.schema.json")).unwrap();
    let mut v = schema["examples"][0].clone();
    v["event_id"] = json!(event_id);
    v
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_kind_of_bad_input_is_dead_lettered_with_its_reason_and_nothing_after_it_is_lost() {
    let s = Stack::start();
    s.run(&[
        "topics",
        "create",
        "--partitions",
        "1",
        "retrieval.v1",
        "retrieval.v1.dlq",
        "retrieval.v1.valid",
    ]);
    let with = |pointer: &str, value: Value| {
        let mut v = example("bad");
        *v.pointer_mut(pointer).unwrap() = value;
        bytes(&v)
    };
    let mut huge = example("huge");
    huge["query"] = json!("x".repeat(2 * 1024 * 1024));
    let mut utf8 = bytes(&example("utf8"));
    utf8[40] = 0xff;
    let bad: Vec<(Vec<u8>, &str, &str)> = vec![
        (b"{\"event_id\": ".to_vec(), "event_id", "EOF while parsing"),
        (utf8, ".", "invalid UTF-8 at byte 40"),
        (
            {
                let mut v = example("m");
                v.as_object_mut().unwrap().remove("ts");
                bytes(&v)
            },
            ".",
            "missing field `ts`",
        ),
        (
            with("/query", json!(["not", "text"])),
            "query",
            "invalid type",
        ),
        (
            with("/results/1/rank", json!(-1)),
            "results[1].rank",
            "invalid value: integer `-1`",
        ),
        (
            with("/results/2/rank", json!(1)),
            "results[2].rank",
            "duplicate rank 1",
        ),
        (
            with("/results/0/rel", json!(7)),
            "results[0].rel",
            "out of range 0..=3",
        ),
        (
            String::from_utf8(bytes(&example("nan")))
                .unwrap()
                .replace("0.91", "NaN")
                .into_bytes(),
            "results[0].score",
            "expected value",
        ),
        (
            String::from_utf8(bytes(&example("inf")))
                .unwrap()
                .replace("0.91", "1e400")
                .into_bytes(),
            "results[0].score",
            "number out of range",
        ),
        (
            with("/tenant_id", json!("")),
            "tenant_id",
            "must not be empty",
        ),
        (
            with("/tenant_id", json!("acme/evil")),
            "tenant_id",
            "contains '/'",
        ),
        (with("/tenant_id", json!("a..b")), "tenant_id", "'..'"),
        (
            with("/tenant_id", json!("acme\u{1b}")),
            "tenant_id",
            "contains '\\u{1b}'",
        ),
        (bytes(&huge), ".", "exceeds the limit of 1048576 bytes"),
    ];
    let sink = Sink::new(&s.kafka, "test").unwrap();
    let mut good = Vec::new();
    for (i, (payload, _, _)) in bad.iter().enumerate() {
        sink.send("retrieval.v1", None, payload, None, None)
            .await
            .unwrap();
        let v = example(&format!("good-{i}"));
        sink.send("retrieval.v1", None, &bytes(&v), None, None)
            .await
            .unwrap();
        good.push(format!("good-{i}"));
    }
    sink.flush(Duration::from_secs(60)).unwrap();
    assert_eq!(
        sink.failed_deliveries(),
        0,
        "the broker refused a test record"
    );

    let metrics_addr = format!("127.0.0.1:{}", aion_broker::free_port().unwrap());
    let relay = s.spawn(
        &[
            "relay",
            "--input",
            "retrieval.v1",
            "--metrics-addr",
            &metrics_addr,
        ],
        "relay.log",
    );
    let reader = Reader::new(&s.kafka, &["retrieval.v1.dlq", "retrieval.v1.valid"], true).unwrap();
    let mut out = Vec::new();
    read_until(
        &s,
        &reader,
        &mut out,
        |o| o.len() >= 2 * bad.len(),
        "all records",
    );
    // Dead letters are counted in the stage's metrics.
    let dlq_metric = format!(
        "aion_dlq_events_total{{stage=\"relay\",topic=\"retrieval.v1\"}} {}",
        bad.len()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut metrics = get(&metrics_addr, "/metrics");
    while !metrics.contains(&dlq_metric) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        metrics = get(&metrics_addr, "/metrics");
    }
    assert!(
        metrics.contains(&dlq_metric),
        "{dlq_metric} not in\n{metrics}"
    );
    let build = format!(
        "aion_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(metrics.contains(&build), "{build} not in\n{metrics}");
    // The runtime times every batch the stage handled, as a histogram labelled with the stage.
    assert!(
        metrics.contains("# TYPE aion_stage_handle_seconds histogram")
            && metrics.contains("aion_stage_handle_seconds_count{stage=\"relay\"}"),
        "no handle-latency histogram for the relay in\n{metrics}"
    );
    // Every metric carries its HELP text from the catalogue (a histogram's series under its name).
    for line in metrics.lines().filter(|l| l.starts_with("aion_")) {
        let series = line.split(['{', ' ']).next().unwrap();
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| series.strip_suffix(suffix))
            .filter(|base| metrics.contains(&format!("# TYPE {base} histogram")))
            .unwrap_or(series);
        assert!(
            metrics.contains(&format!("# HELP {name} ")),
            "no HELP for {name} in\n{metrics}"
        );
    }
    // Liveness, and readiness once the stage has its partitions.
    assert!(get(&metrics_addr, "/healthz").starts_with("HTTP/1.1 200"));
    let ready = get(&metrics_addr, "/readyz");
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    assert!(
        relay.terminate(),
        "relay did not stop cleanly:\n{}",
        s.logs()
    );

    let dlq: Vec<&RawRecord> = out.iter().filter(|r| r.topic.ends_with(".dlq")).collect();
    assert_eq!(dlq.len(), bad.len());
    for (r, (payload, path, message)) in dlq.iter().zip(&bad) {
        assert_eq!(&r.payload, payload, "DLQ keeps the original bytes");
        assert_eq!(
            r.header(headers::PATH),
            Some(*path),
            "{:?}",
            r.header(headers::REASON)
        );
        let reason = r.header(headers::REASON).unwrap();
        assert!(
            reason.contains(message),
            "{reason:?} does not say {message:?}"
        );
    }
    let forwarded: Vec<String> = out
        .iter()
        .filter(|r| r.topic.ends_with(".valid"))
        .map(event_id)
        .collect();
    assert_eq!(
        forwarded, good,
        "every valid event after a bad one arrives, in order"
    );
}

/// `GET path` over plain HTTP: the whole response, status line first.
fn get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: aion\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}
