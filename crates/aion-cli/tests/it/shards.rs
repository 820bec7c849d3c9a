//! The shard writer through the real broker: killed with SIGKILL at random points, every valid
//! answer still ends up in exactly one shard row, no PII the generator planted reaches a shard, and
//! readers never see a temporary file.

use std::collections::BTreeMap;
use std::time::Duration;

use aion_traffic::{Generator, Scenario, TrafficConfig};
use datafusion::arrow::array::AsArray;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::Stack;

/// (event_id → instruction) of every row of every shard file; panics on a visible temp file.
fn shard_rows(root: &std::path::Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    // None before the writer has opened the table.
    let mut dirs: Vec<_> = root.exists().then(|| root.to_owned()).into_iter().collect();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            if path.is_dir() {
                dirs.push(path);
            } else if name.ends_with(".parquet") {
                let file = std::fs::File::open(&path).unwrap();
                for batch in ParquetRecordBatchReaderBuilder::try_new(file)
                    .unwrap()
                    .build()
                    .unwrap()
                {
                    let b = batch.unwrap();
                    let ids = b
                        .column_by_name("event_id")
                        .unwrap()
                        .as_string::<i32>()
                        .clone();
                    let text = b
                        .column_by_name("instruction")
                        .unwrap()
                        .as_string::<i32>()
                        .clone();
                    for i in 0..b.num_rows() {
                        out.push((ids.value(i).to_owned(), text.value(i).to_owned()));
                    }
                }
            } else {
                // Hidden, or the table's own `_` files, which Spark, Hive and pyarrow skip.
                assert!(
                    name.starts_with('.')
                        || ["_manifest.jsonl", "_types.v2"].contains(&name.as_str()),
                    "{name}: a file readers would pick up"
                );
            }
        }
    }
    out
}

/// The answers of `count` generated events (two tenants, 2 % invalid).
fn answer_traffic(count: u64) -> Vec<aion_traffic::Payload> {
    Generator::new(TrafficConfig {
        seed: 21,
        tenants: vec!["acme".into(), "globex".into()],
        count,
        start: "2026-11-01T00:00:00Z".parse().unwrap(),
        span: chrono::Duration::hours(72),
        scenario: Scenario::Steady,
        invalid_fraction: 0.02,
        late_fraction: 0.0,
    })
    .filter(|p| p.topic == aion_events::topics::ANSWER)
    .collect()
}

/// Publishes `traffic`; returns the valid answers' prompts by event id.
async fn publish(s: &Stack, traffic: &[aion_traffic::Payload]) -> BTreeMap<String, String> {
    let mut expected = BTreeMap::new();
    let sink = aion_kafka::Sink::new(&s.kafka, "test").unwrap();
    for p in traffic {
        sink.send(p.topic, Some(p.key.as_bytes()), &p.bytes, None, None)
            .await
            .unwrap();
        if p.valid {
            let v: Value = serde_json::from_slice(&p.bytes).unwrap();
            expected.insert(
                v["event_id"].as_str().unwrap().to_owned(),
                v["prompt"].as_str().unwrap().to_owned(),
            );
        }
    }
    sink.flush(Duration::from_secs(60)).unwrap();
    expected
}

/// Publishes the answers of `count` generated events; returns the valid ones' prompts by id.
async fn publish_answers(s: &Stack, count: u64) -> BTreeMap<String, String> {
    publish(s, &answer_traffic(count)).await
}

/// The shard rows once there are as many as `expected` (or after a bound far above what the
/// tests take on 2 cores, for a stuck stage); checks each expected answer is in exactly one row.
fn rows_once_each(s: &Stack, expected: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let root = s.state.path().join("shards");
    let deadline = std::time::Instant::now() + Duration::from_secs(900);
    let rows = loop {
        let rows = shard_rows(&root);
        if rows.len() >= expected.len() || std::time::Instant::now() > deadline {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (id, _) in &rows {
        *seen.entry(id).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "written more than once: {:?}",
        &twice[..twice.len().min(5)]
    );
    let missing: Vec<_> = expected
        .keys()
        .filter(|id| !seen.contains_key(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} answers missing\n{}",
        missing.len(),
        s.logs()
    );
    rows
}

/// No enricher feeds these tests: a short join wait keeps rows flowing.
const SHARD_ARGS: [&str; 8] = [
    "shards",
    "run",
    "--max-rows",
    "150",
    "--max-age-secs",
    "1",
    "--join-wait-secs",
    "1",
];

#[tokio::test(flavor = "multi_thread")]
async fn every_answer_lands_in_exactly_one_redacted_row_across_ten_kill_9() {
    let s = Stack::start();
    s.run(&["topics", "create"]);
    // The name finder runs on every answer (≈ 15 a second in a debug build): 1,500 answers.
    let expected = publish_answers(&s, 3_000).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for _ in 0..10 {
        let mut writer = s.spawn(&SHARD_ARGS, "shards.log");
        std::thread::sleep(Duration::from_millis(rng.random_range(300..2500)));
        writer.kill();
    }
    // The killed members hold their partitions until their sessions expire (6 s); the local
    // broker does not always move them to a member that joined meanwhile, so let them expire.
    std::thread::sleep(Duration::from_secs(8));
    let writer = s.spawn(&SHARD_ARGS, "shards.log");
    let rows = rows_once_each(&s, &expected);
    assert!(writer.terminate(), "clean stop\n{}", s.logs());

    // The generator plants e-mails, CPFs and phone numbers in prompts; none may survive.
    let pii = regex::Regex::new(r"@|\d{3}\.\d{3}\.\d{3}-\d{2}|\(\d{3}\) \d{3}-\d{4}").unwrap();
    let planted = expected.values().filter(|p| pii.is_match(p)).count();
    assert!(planted > 100, "the input carries PII ({planted} prompts)");
    for (id, text) in &rows {
        assert!(!pii.is_match(text), "{id}: PII left in {text:?}");
    }
    assert!(
        rows.iter().any(|(_, t)| t.contains("<CPF>"))
            && rows.iter().any(|(_, t)| t.contains("<EMAIL>"))
    );
}

const GROUP: [(&str, &str); 1] = [("AION_KAFKA_ASSIGNMENT", "group")];

/// Runs the shard stage in group mode, which must fail after it became ready, with `fault` in its
/// log.
fn fails_in_group_mode(s: &Stack, args: &[&str], fault: &str) {
    let failing = s.spawn_with(args, "shards-failing.log", &GROUP);
    assert!(!failing.wait(), "the stage must fail\n{}", s.logs());
    let log = std::fs::read_to_string(s.state.path().join("shards-failing.log")).unwrap();
    assert!(
        log.contains("stage ready") && log.contains(fault),
        "it fails at {fault}\n{log}"
    );
}

/// An error exit under group membership (the production default): one tenant's directory for one
/// day is a dangling link, so the stage fails at the first roll of that day's rows while holding
/// buffered rows. Once the fault is cleared and the stage restarted, every answer is in exactly
/// one row. (When a dropped ack counted as done, the failed roll's rows were committed and never
/// written.)
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_shard_write_in_group_mode_loses_no_answer() {
    let s = Stack::start();
    s.run(&["topics", "create"]);
    let expected = publish_answers(&s, 400).await;
    let blocked = s.state.path().join("shards/tenant_id=acme/date=2026-11-02");
    std::fs::create_dir_all(blocked.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(s.state.path().join("gone"), &blocked).unwrap();
    fails_in_group_mode(&s, &SHARD_ARGS, "date=2026-11-02");
    std::fs::remove_file(&blocked).unwrap();
    let writer = s.spawn_with(&SHARD_ARGS, "shards.log", &GROUP);
    rows_once_each(&s, &expected);
    assert!(writer.terminate(), "clean stop\n{}", s.logs());
}

/// An object-store outage under group membership (`shards run --remote`): the bucket cannot be
/// written (a file stands where its directory goes), so the stage fails at its first upload, after
/// the roll committed rows locally and before their offsets were stored. Once the store is back
/// and the stage restarted, every answer is in exactly one row, and the copy holds the local
/// table byte for byte: every committed file and the manifest.
#[tokio::test(flavor = "multi_thread")]
async fn an_object_store_outage_in_group_mode_loses_no_answer_and_the_copy_catches_up() {
    let s = Stack::start();
    s.run(&["topics", "create"]);
    let expected = publish_answers(&s, 400).await;
    let bucket = s.state.path().join("bucket");
    std::fs::write(&bucket, "the store is down").unwrap();
    let url = format!("file://{}", bucket.display());
    let args: Vec<&str> = SHARD_ARGS
        .iter()
        .copied()
        .chain(["--remote", &url])
        .collect();
    fails_in_group_mode(&s, &args, "bucket");
    assert!(
        s.table_rows("shards") > 0,
        "the failed run committed rows locally first\n{}",
        s.logs()
    );
    std::fs::remove_file(&bucket).unwrap();
    let writer = s.spawn_with(&args, "shards.log", &GROUP);
    rows_once_each(&s, &expected);
    assert!(writer.terminate(), "clean stop\n{}", s.logs());
    let local = s.state.path().join("shards");
    let copy = bucket.join("shards");
    let manifest = aion_shards::read_manifest(&local).unwrap();
    assert_eq!(
        std::fs::read(copy.join(aion_shards::MANIFEST)).unwrap(),
        std::fs::read(local.join(aion_shards::MANIFEST)).unwrap(),
        "the copy's manifest"
    );
    for path in aion_events::committed_files(&manifest) {
        assert_eq!(
            std::fs::read(copy.join(path)).ok(),
            Some(std::fs::read(local.join(path)).unwrap()),
            "{path} in the copy"
        );
    }
}

/// Enriched retrieval events → the entity-mention table → the heatmap SQL: counts per tenant ×
/// entity × hour, names as placeholders, a bad record dead-lettered, offsets stored after.
#[tokio::test(flavor = "multi_thread")]
async fn enriched_events_feed_the_entity_heatmap_without_names() {
    let s = Stack::start();
    s.run(&["topics", "create", "--partitions", "1"]);
    let sink = aion_kafka::Sink::new(&s.kafka, "test").unwrap();
    let term = |text: &str, kind: &str| serde_json::json!({"text": text, "type": kind, "score": 3, "source": "ner"});
    for (i, (tenant, hour)) in [("acme", 10), ("acme", 10), ("acme", 11), ("globex", 10)]
        .into_iter()
        .enumerate()
    {
        let event = serde_json::json!({
            "event_id": format!("r{i}"), "tenant_id": tenant,
            "ts": format!("2026-11-02T{hour}:15:00Z"), "query": "q", "results": [],
            "entities": [term("maria", "GIVEN_NAME"), term("curitiba", "CITY"),
                         {"text": "maria quer reembolso", "type": "KEYPHRASE", "score": 1, "source": "keyphrase"}]
        });
        sink.send(
            "retrieval.enriched.v1",
            Some(tenant.as_bytes()),
            event.to_string().as_bytes(),
            None,
            None,
        )
        .await
        .unwrap();
    }
    sink.send(
        "retrieval.enriched.v1",
        None,
        b"{\"event_id\": 1}",
        None,
        None,
    )
    .await
    .unwrap();
    sink.flush(Duration::from_secs(30)).unwrap();

    let stage = s.spawn(&["shards", "run", "--max-age-secs", "1"], "shards.log");
    let root = s.state.path().join("entities");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while aion_shards::read_manifest(&root).map_or(0, |m| m.iter().map(|e| e.rows).sum::<usize>())
        < 4
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(stage.terminate(), "clean stop\n{}", s.logs());
    let heatmap = s.run(&[
        "sql",
        &format!(
            "@{}",
            crate::repo_file("pipelines/entity_heatmap.sql").display()
        ),
        "--format",
        "json",
    ]);
    let rows: Vec<Value> = heatmap
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let count = |tenant: &str, entity: &str, hour: &str| {
        rows.iter()
            .find(|r| {
                r["tenant_id"] == tenant
                    && r["entity"] == entity
                    && r["hour"].as_str().unwrap().contains(hour)
            })
            .map(|r| r["mentions"].as_i64().unwrap())
    };
    assert_eq!(count("acme", "curitiba", "T10"), Some(2), "{heatmap}");
    assert_eq!(count("acme", "curitiba", "T11"), Some(1), "{heatmap}");
    assert_eq!(count("globex", "<PERSON>", "T10"), Some(1), "{heatmap}");
    assert_eq!(
        count("acme", "<PERSON> quer reembolso", "T10"),
        Some(2),
        "{heatmap}"
    );
    assert!(!heatmap.contains("maria"), "{heatmap}");
    let dlq = aion_kafka::Reader::new(&s.kafka, &["retrieval.enriched.v1.dlq"], true)
        .unwrap()
        .drain(Duration::from_secs(5), Some(1))
        .unwrap();
    assert_eq!(dlq.len(), 1);
    let committed =
        aion_kafka::committed_offsets(&s.kafka, "aion.shards", "retrieval.enriched.v1").unwrap();
    assert_eq!(
        committed.get(&0),
        Some(&5),
        "every record's offset stored once durable"
    );
}

/// Answers joined with their enriched retrieval through the broker: the row carries the
/// retrieval's nDCG@10 and entities, the names the NER model found are redacted from the answer's
/// text whatever their case, an answer whose retrieval never comes is written without them after
/// the wait; DuckDB and pyarrow read the same rows and values as `aion sql`.
#[tokio::test(flavor = "multi_thread")]
async fn answers_carry_their_retrievals_ndcg_and_entities_and_lose_the_names() {
    let s = Stack::start();
    s.run(&["topics", "create", "--partitions", "1"]);
    let sink = aion_kafka::Sink::new(&s.kafka, "test").unwrap();
    let answer = |id: &str, retrieval: &str, prompt: &str| {
        serde_json::json!({
            "event_id": id, "tenant_id": "acme", "ts": "2026-11-02T10:00:00Z", "prompt": prompt,
            "reply": "Maria, seu reembolso sai em 5 dias.", "confidence": 0.4, "fallback": true,
            "provider": "fallback", "model": "ext", "latency_ms": 900,
            "retrieval_event_id": retrieval
        })
    };
    // Answers first: their retrievals are enriched (and so arrive) later.
    for (id, retrieval, prompt) in [
        ("a1", "r1", "Maria Silva pediu reembolso em Curitiba"),
        ("a2", "r-missing", "Onde fica a loja de Recife?"),
        ("a3", "r3", "Qual o prazo, MARIA SILVA?"),
    ] {
        let event = answer(id, retrieval, prompt).to_string();
        sink.send("answer.v1", Some(b"acme"), event.as_bytes(), None, None)
            .await
            .unwrap();
    }
    let term = |text: &str, kind: &str, source: &str| serde_json::json!({"text": text, "type": kind, "score": 3, "source": source});
    for (id, rels) in [("r1", [3, 0, 2]), ("r3", [0, 0, 0])] {
        let event = serde_json::json!({
            "event_id": id, "tenant_id": "acme", "ts": "2026-11-02T09:59:59Z",
            "query": "Maria Silva pediu reembolso em Curitiba",
            "results": (0..3).map(|i| serde_json::json!({
                "doc_id": format!("d{i}"), "rank": i + 1, "text": "t", "score": 1.0, "rel": rels[i]
            })).collect::<Vec<_>>(),
            "entities": [term("maria silva", "GIVEN_NAME", "ner"), term("curitiba", "CITY", "ner"),
                         term("pediu reembolso", "KEYPHRASE", "keyphrase")]
        });
        sink.send(
            "retrieval.enriched.v1",
            Some(b"acme"),
            event.to_string().as_bytes(),
            None,
            None,
        )
        .await
        .unwrap();
    }
    sink.flush(Duration::from_secs(30)).unwrap();

    let args = [
        "shards",
        "run",
        "--max-age-secs",
        "1",
        "--join-wait-secs",
        "4",
    ];
    let stage = s.spawn(&args, "shards.log");
    let root = s.state.path().join("shards");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while (!root.is_dir() || shard_rows(&root).len() < 3) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(stage.terminate(), "clean stop\n{}", s.logs());
    let query = "SELECT tenant_id, date, event_id, instruction, response, confidence, fallback, \
                 latency_ms, ndcg, entities FROM shards ORDER BY event_id";
    let out = s.run(&["sql", query, "--format", "json"]);
    let rows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3, "{out}");
    // r1: rels 3, 0, 2 → DCG 3 + 2/log2(4) = 4; ideal 3, 2, 0 → 3 + 2/log2(3).
    let expected = 4.0 / (3.0 + 2.0 / 3f64.log2());
    assert!(
        (rows[0]["ndcg"].as_f64().unwrap() - expected).abs() < 1e-12,
        "{out}"
    );
    assert_eq!(
        rows[0]["entities"],
        serde_json::json!(["<PERSON>", "curitiba"]),
        "NER entities only, names as placeholders: {out}"
    );
    assert_eq!(
        rows[0]["instruction"],
        "<PERSON> pediu reembolso em Curitiba"
    );
    assert!(
        rows[1]["ndcg"].is_null() && rows[1]["entities"].is_null(),
        "{out}"
    );
    assert_eq!(rows[2]["ndcg"], 0.0, "all-zero judgments score 0: {out}");
    assert_eq!(rows[2]["instruction"], "Qual o prazo, <PERSON>?");
    // The name in the reply goes only where the retrieval named it ("maria silva" ≠ "Maria").
    assert!(
        !out.contains("Maria Silva") && !out.contains("MARIA"),
        "{out}"
    );

    let expected_file = s.state.path().join("aion_sql.jsonl");
    std::fs::write(&expected_file, &out).unwrap();
    let check = std::process::Command::new(crate::ndcg::reference_python())
        .arg(crate::repo_file("scripts/checks/shards_interop.py"))
        .arg(&root)
        .arg(&expected_file)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(check.status.success(), "interop check failed:\n{report}");
    assert!(report.contains("ok: 3 rows identical"), "{report}");
}

/// `count(*)` and `count(distinct event_id)` of the shard table under `state`, as `aion sql`
/// answers them (it needs no broker).
fn sql_counts(state: &std::path::Path) -> (u64, u64) {
    let query = "select count(*) as n, count(distinct event_id) as d from shards";
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aion"))
        .env("AION_STATE_DIR", state)
        .args(["sql", "--format", "csv", query])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let parsed = text.lines().nth(1).and_then(|row| {
        let (n, d) = row.split_once(',')?;
        Some((n.parse().ok()?, d.parse().ok()?))
    });
    parsed.unwrap_or_else(|| panic!("aion sql: {text}{}", String::from_utf8_lossy(&out.stderr)))
}

fn parquet_files(root: &std::path::Path) -> usize {
    let mut n = 0;
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for path in std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()) {
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|x| x == "parquet") {
                n += 1;
            }
        }
    }
    n
}

/// Compaction while the writer keeps writing: SQL readers running throughout count every answer
/// exactly once (never the small files and the compacted one together, never neither), a trigger's
/// snapshot from before resolves to files that exist and hold its rows, and after the grace the
/// small files are gone. (Read by directory listing, as before the manifest-driven readers, the
/// table counted the compacted rows twice.)
#[tokio::test(flavor = "multi_thread")]
async fn compaction_under_a_running_writer_keeps_every_answer_once_for_every_reader() {
    let s = Stack::start();
    s.run(&["topics", "create"]);
    let traffic = answer_traffic(1_200);
    let chunks: Vec<&[aion_traffic::Payload]> = traffic.chunks(traffic.len() / 4 + 1).collect();
    let writer = s.spawn(&SHARD_ARGS, "shards.log");
    let root = s.state.path().join("shards");
    // Each chunk written before the next is published: several files per (partition, tenant,
    // day), as a day of one-minute rolls makes.
    let mut all = BTreeMap::new();
    for chunk in &chunks[..2] {
        all.extend(publish(&s, chunk).await);
        rows_with_committed(&s, all.len());
    }
    let n = all.len() as u64;
    assert_eq!(sql_counts(s.state.path()), (n, n));
    let small = parquet_files(&root);
    let snapshot = aion_events::manifest_lines(&root).unwrap();

    // Readers query throughout; the other chunks arrive while the table is compacted.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (done, state) = (done.clone(), s.state.path().to_owned());
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                seen.push(sql_counts(&state));
            }
            seen
        })
    };
    // `aion shards compact` prints "<table>: <N> files merged into ..." per table.
    let compact = || -> usize {
        let out = s.run(&["shards", "compact", "--grace-secs", "3600"]);
        out.lines()
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<usize>().ok())
            .sum()
    };
    let mut merged = 0;
    for chunk in &chunks[2..] {
        merged += compact();
        all.extend(publish(&s, chunk).await);
    }
    rows_with_committed(&s, all.len());
    merged += compact();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = reader.join().unwrap();
    assert!(
        merged >= small,
        "{merged} files merged, {small} small ones at first"
    );
    assert!(
        seen.len() >= 3,
        "the reader ran during compaction: {seen:?}"
    );
    for (count, distinct) in &seen {
        assert_eq!(
            distinct,
            count,
            "a row counted twice ({} queries)",
            seen.len()
        );
        assert!(*count >= n, "rows went missing: {seen:?}");
    }
    let everything = all.len() as u64;
    assert_eq!(sql_counts(s.state.path()), (everything, everything));

    // A trigger from before the compaction resolves to files that exist and hold its rows.
    let acme = aion_events::tenant_shards(&root, "acme", Some(snapshot)).unwrap();
    assert!(acme.iter().any(|p| p.contains("/compact-")), "{acme:?}");
    assert!(acme.iter().all(|p| root.join(p).is_file()));

    // Past the grace the replaced files are deleted; nothing is lost, and each (partition,
    // tenant, day) is one file.
    assert!(writer.terminate(), "clean stop\n{}", s.logs());
    let within_grace = parquet_files(&root);
    let out = s.run(&["shards", "compact", "--grace-secs", "0"]);
    assert!(out.contains("deleted"), "{out}");
    assert_eq!(sql_counts(s.state.path()), (everything, everything));
    let entries = aion_shards::read_manifest(&root).unwrap();
    let live = aion_events::committed_files(&entries);
    assert_eq!(
        parquet_files(&root),
        live.len(),
        "only committed files remain"
    );
    assert!(live.len() < within_grace);
    let groups: std::collections::HashSet<_> = entries
        .iter()
        .filter(|e| live.contains(e.path.as_str()))
        .map(|e| (e.source_partition, &e.tenant_id, &e.date))
        .collect();
    assert_eq!(groups.len(), live.len());
}

/// Waits until the committed files (compactions applied) hold `expected` rows.
fn rows_with_committed(s: &Stack, expected: usize) {
    let root = s.state.path().join("shards");
    let deadline = std::time::Instant::now() + Duration::from_secs(900);
    loop {
        let entries = aion_shards::read_manifest(&root).unwrap();
        let live = aion_events::committed_files(&entries);
        let rows: usize = entries
            .iter()
            .filter(|e| live.contains(e.path.as_str()))
            .map(|e| e.rows)
            .sum();
        if rows >= expected {
            assert_eq!(rows, expected, "rows written twice");
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{rows} of {expected}\n{}",
            s.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
