//! The label loop, mostly offline on tables the test writes with the stages' own writers: `aion
//! label-queue` (hand-computed selections), `aion tune-fallback` (hand-computed costs and
//! argmin), `aion labels import` validation and, on the broker, its way into the labels table;
//! and the per-entity breakdown of `pipelines/entity_quality.sql` over a `degrade-entity` stream
//! from `aion produce`.

use std::path::Path;
use std::time::{Duration, Instant};

use aion_events::{AnswerEvent, LabelEvent};
use aion_shards::{LabelRow, RollPolicy, ShardWriter, TrainingRow};

use crate::Stack;

fn answer(tenant: &str, id: &str, confidence: f64, ts: &str) -> AnswerEvent {
    AnswerEvent {
        event_id: id.into(),
        tenant_id: tenant.into(),
        ts: ts.parse().unwrap(),
        prompt: format!("question {id}"),
        reply: format!("reply {id}"),
        confidence,
        fallback: confidence < 0.5,
        provider: "local".into(),
        model: "m".into(),
        latency_ms: 100,
        retrieval_event_id: Some(format!("{id}-r")),
    }
}

fn write_shards(root: &Path, answers: Vec<AnswerEvent>) {
    let mut w: ShardWriter<TrainingRow, ()> =
        ShardWriter::open(&root.join("shards"), RollPolicy::default(), None).unwrap();
    for (i, answer) in answers.into_iter().enumerate() {
        let row = TrainingRow {
            answer,
            retrieval: None,
        };
        assert!(w.push(0, i as i64, row, ()));
    }
    w.roll(Instant::now() + Duration::from_secs(3600), true)
        .unwrap();
}

fn label(tenant: &str, id: &str, correct: bool) -> LabelEvent {
    LabelEvent {
        event_id: id.into(),
        tenant_id: tenant.into(),
        labelled_at: "2026-11-30T09:00:00Z".parse().unwrap(),
        labeller: "ana".into(),
        correct: Some(correct),
        query: None,
        judgments: None,
    }
}

fn write_labels(root: &Path, labels: Vec<LabelEvent>) {
    let mut w: ShardWriter<LabelRow, ()> =
        ShardWriter::open(&root.join("labels"), RollPolicy::default(), None).unwrap();
    for (i, l) in labels.into_iter().enumerate() {
        assert!(w.push(0, i as i64, l.into(), ()));
    }
    w.roll(Instant::now() + Duration::from_secs(3600), true)
        .unwrap();
}

fn queue(s: &Stack, args: &[&str]) -> Vec<String> {
    let mut all = vec!["label-queue", "--tenant", "acme", "--tau", "0.5"];
    all.extend_from_slice(args);
    s.run(&all)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["tenant_id"], "acme");
            assert_eq!(v["tau"], 0.5);
            v["event_id"].as_str().unwrap().to_owned()
        })
        .collect()
}

fn fails(s: &Stack, args: &[&str]) -> String {
    let out = s.aion().args(args).output().unwrap();
    assert!(!out.status.success(), "aion {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn label_queue_takes_the_closest_to_tau_once_and_skips_labelled_answers() {
    let s = Stack::offline();
    let none = fails(&s, &["label-queue", "--tenant", "acme", "--tau", "0.5"]);
    assert!(none.contains("the `shards` table is empty"), "{none}");
    let ts = "2026-11-30T08:00:00Z";
    // |C − 0.5|: a4 0, a5 .03, a6 .07, a2 .1, a3 .125, a8 .125, a1 .4, a7 .45.
    let confidences = [0.1, 0.4, 0.375, 0.5, 0.53, 0.57, 0.95, 0.625];
    let mut answers: Vec<AnswerEvent> = confidences
        .iter()
        .enumerate()
        .map(|(i, &c)| answer("acme", &format!("a{}", i + 1), c, ts))
        .collect();
    answers.push(answer("globex", "g1", 0.5, ts));
    // A replayed duplicate row of a5 in another file must not be queued twice.
    write_shards(s.state.path(), answers);
    let mut w: ShardWriter<TrainingRow, ()> =
        ShardWriter::open(&s.state.path().join("shards"), RollPolicy::default(), None).unwrap();
    let row = TrainingRow {
        answer: answer("acme", "a5", 0.53, ts),
        retrieval: None,
    };
    w.push(1, 0, row, ());
    w.roll(Instant::now() + Duration::from_secs(3600), true)
        .unwrap();
    write_labels(s.state.path(), vec![label("acme", "a4", true)]);

    assert_eq!(queue(&s, &["--limit", "3"]), ["a5", "a6", "a2"]);
    // Ties (a3, a8 at .125; a1 .4) by event id; already queued ones are skipped.
    assert_eq!(queue(&s, &["--limit", "3"]), ["a3", "a8", "a1"]);
    let out = s.state.path().join("out");
    let out_arg = out.to_str().unwrap();
    assert_eq!(
        queue(&s, &["--limit", "5", "--out", out_arg]),
        Vec::<String>::new()
    );
    let files: Vec<_> = std::fs::read_dir(&out).unwrap().flatten().collect();
    assert_eq!(files.len(), 1);
    let text = std::fs::read_to_string(files[0].path()).unwrap();
    let item: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(
        (item["event_id"].as_str(), item["confidence"].as_f64()),
        (Some("a7"), Some(0.95))
    );
    assert_eq!(item["instruction"], "question a7");
    let nothing = s
        .aion()
        .args(["label-queue", "--tenant", "acme", "--tau", "0.5"])
        .output()
        .unwrap();
    assert!(nothing.status.success() && nothing.stdout.is_empty());
    assert!(String::from_utf8_lossy(&nothing.stderr).contains("nothing to queue"));

    // The queue is a table: three files, deterministic names, every answer once.
    let dir = s.state.path().join("label_queue/tenant_id=acme");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names
        .iter()
        .all(|n| n.starts_with("q-") && n.ends_with(".parquet")));
    let sql = s.run(&[
        "sql",
        "--format",
        "csv",
        "SELECT event_id, distance FROM label_queue WHERE tenant_id = 'acme' ORDER BY distance, event_id",
    ]);
    let ids: Vec<&str> = sql
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(ids, ["a5", "a6", "a2", "a3", "a8", "a1", "a7"]);

    for (args, message) in [
        (
            vec!["--tenant", "nope", "--tau", "0.5"],
            "unknown tenant \"nope\"",
        ),
        (vec!["--tenant", "../x", "--tau", "0.5"], "tenant_id"),
        (
            vec!["--tenant", "acme", "--tau", "1.5"],
            "--tau must be within 0..=1",
        ),
        (
            vec!["--tenant", "acme", "--tau", "0.5", "--limit", "0"],
            "--limit must be at least 1",
        ),
    ] {
        let mut all = vec!["label-queue"];
        all.extend(args);
        let err = fails(&s, &all);
        assert!(err.contains(message), "{all:?}: {err}");
    }
    assert!(fails(&s, &["label-queue", "--tenant", "nope", "--tau", "0.5"]).contains("globex"));
}

/// The fixed history of `aion_labels::cost`'s unit test, through the tables and the binary.
#[test]
fn tune_fallback_reports_hand_computed_costs_argmin_and_current() {
    let s = Stack::offline();
    let confidences = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95];
    let mut answers: Vec<AnswerEvent> = confidences
        .iter()
        .enumerate()
        .map(|(i, &c)| answer("acme", &format!("a{i}"), c, "2026-11-30T08:00:00Z"))
        .collect();
    // Outside the default 7 days before the newest answer: must not count.
    answers.push(answer("acme", "old", 0.99, "2026-11-01T08:00:00Z"));
    answers.push(answer("globex", "g", 0.9, "2026-11-30T08:00:00Z"));
    write_shards(s.state.path(), answers);
    // Wrong: C = 0.2, 0.4, 0.6; right: 0.5, 0.7, 0.8, 0.95; the old answer's label is ignored.
    let mut labels: Vec<LabelEvent> = [
        (1, false),
        (3, false),
        (5, false),
        (4, true),
        (6, true),
        (7, true),
        (9, true),
    ]
    .iter()
    .map(|&(i, ok)| label("acme", &format!("a{i}"), ok))
    .collect();
    labels.push(label("acme", "old", false));
    write_labels(s.state.path(), labels);

    let args = [
        "tune-fallback",
        "--c-fallback",
        "1",
        "--c-local",
        "0.1",
        "--c-error",
        "2",
        "--tenant",
        "acme",
        "--steps",
        "11",
        "--format",
        "json",
    ];
    let out = s.aion().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 11);
    let expected = [
        0.1 + 6.0 / 7.0,
        0.1 + 6.0 / 7.0,
        0.1 + 0.9 * (0.1 + 6.0 / 7.0),
        0.2 + 0.8 * (0.1 + 2.0 / 3.0),
        0.3 + 0.7 * (0.1 + 2.0 / 3.0),
        0.7,
        0.8,
        0.64,
        0.73,
        0.82,
        1.0,
    ];
    for (row, cost) in rows.iter().zip(expected) {
        assert_eq!(row["answers"], 10, "{row}");
        assert!(
            (row["cost"].as_f64().unwrap() - cost).abs() < 1e-9,
            "{row} vs {cost}"
        );
    }
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(
        summary.contains("argmin: τ = 0.7000, cost 0.640000"),
        "{summary}"
    );
    // The recorded fallbacks are exactly C < 0.5: the inferred current τ.
    assert!(
        summary.contains("current: τ = 0.5000 (inferred"),
        "{summary}"
    );
    assert!(
        summary.contains("cost 0.700000, fallback share 0.4000"),
        "{summary}"
    );
    assert!(
        summary.contains("10 answers") && summary.contains("7 labelled"),
        "{summary}"
    );

    // Without labels (globex) the error term is left out, and the output says so.
    let table = s.run(&[
        "tune-fallback",
        "--c-fallback",
        "1",
        "--c-local",
        "0.1",
        "--c-error",
        "2",
        "--tenant",
        "globex",
        "--steps",
        "3",
        "--current",
        "0.5",
    ]);
    assert!(table.contains("cannot be estimated"), "{table}");
    assert!(
        table.contains("current: τ = 0.5000 (given by --current), cost 0.100000"),
        "{table}"
    );
    let err = fails(&s, &["tune-fallback", "--c-fallback", "1", "--c-local=-1"]);
    assert!(err.contains("c_local must be a finite number ≥ 0"), "{err}");
}

#[test]
fn labels_import_rejects_a_file_with_an_invalid_line_and_publishes_nothing() {
    // Offline: a file with a bad line must fail before any broker is contacted.
    let s = Stack::offline();
    let file = s.state.path().join("labels.jsonl");
    let good = serde_json::to_string(&label("acme", "a1", true)).unwrap();
    std::fs::write(&file, format!("{good}\n{{\"event_id\":\"a2\"}}\n{good}\n")).unwrap();
    let err = fails(&s, &["labels", "import", file.to_str().unwrap()]);
    assert!(
        err.contains("1 invalid line(s); nothing was published"),
        "{err}"
    );
    assert!(err.contains("line 2: "), "{err}");
}

/// `aion produce --scenario degrade-entity --entity Curitiba` → per-event nDCG of each retrieval
/// and one `entities` row per vocabulary entity its query names (a stand-in for the enricher,
/// whose offline model finds names and places but not products) → the answers as shards →
/// `pipelines/entity_quality.sql` ranks Curitiba worst in every tenant, and the trigger of a
/// window over that day records the same ranking (`pipelines/trigger_entities.sql`).
#[test]
fn the_entity_breakdown_ranks_the_degraded_entity_worst() {
    let s = Stack::offline();
    let dir = s.state.path().join("traffic");
    s.run(&[
        "produce",
        "--to-dir",
        dir.to_str().unwrap(),
        "--count",
        "6000",
        "--tenants",
        "acme,globex",
        "--scenario",
        "degrade-entity",
        "--entity",
        "Curitiba",
        "--degrade-at",
        "0",
        "--late-fraction",
        "0",
        "--start",
        "2026-11-29T00:00:00Z",
        "--span-hours",
        "24",
    ]);
    let read = |topic: &str| std::fs::read_to_string(dir.join(format!("{topic}.jsonl"))).unwrap();
    crate::write_entity_table(s.state.path(), &read("retrieval.v1"));
    let answers: Vec<AnswerEvent> = read("answer.v1")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    write_shards(s.state.path(), answers);

    let pipeline = crate::repo_file("pipelines/entity_quality.sql");
    let out = s.run(&[
        "sql",
        "--format",
        "json",
        &format!("@{}", pipeline.display()),
    ]);
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for tenant in ["acme", "globex"] {
        let mine: Vec<&serde_json::Value> =
            rows.iter().filter(|r| r["tenant_id"] == tenant).collect();
        assert!(mine.len() > 20, "{tenant}: {} entities", mine.len());
        let worst = mine[0];
        assert_eq!(
            worst["entity"], "curitiba",
            "{tenant}: {worst}\nthen {}",
            mine[1]
        );
        let runner_up = mine[1]["mean_ndcg"].as_f64().unwrap();
        assert!(
            worst["mean_ndcg"].as_f64().unwrap() < runner_up - 0.1,
            "{worst} vs {}",
            mine[1]
        );
        // Its answers fall back more often than the healthy entities'.
        let healthy: Vec<f64> = mine[1..]
            .iter()
            .filter_map(|r| r["fallback_rate"].as_f64())
            .collect();
        let mean = healthy.iter().sum::<f64>() / healthy.len() as f64;
        assert!(
            worst["fallback_rate"].as_f64().unwrap() > mean + 0.1,
            "{worst} vs {mean}"
        );
        // The trigger's worst entities for the day's window: the same ranking.
        let expected: Vec<&str> = mine
            .iter()
            .filter(|r| r["judged"].as_u64().unwrap() >= 5)
            .take(5)
            .map(|r| r["entity"].as_str().unwrap())
            .collect();
        let start = "2026-11-29T00:00:00Z".parse().unwrap();
        let recorded = tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(aion_gate::worst_entities(
                &s.state.path().join("entities"),
                tenant,
                start,
                start + chrono::Duration::hours(24),
                &aion_gate::TopEntities::default(),
            ))
            .unwrap();
        assert_eq!(recorded, expected, "{tenant}");
    }
}

/// `aion labels import` publishes to `labels.v1` on the broker; the shard stage writes each label
/// once into the `labels` table, where `aion sql` (and the windows stage) read it.
#[test]
fn imported_labels_travel_through_the_broker_into_the_labels_table() {
    let s = Stack::start();
    s.run(&["topics", "create"]);
    let file = s.state.path().join("labels.jsonl");
    let labels = [
        label("acme", "a1", true),
        label("acme", "a2", false),
        label("globex", "g1", true),
    ];
    let lines: Vec<String> = labels
        .iter()
        .map(|l| serde_json::to_string(l).unwrap())
        .collect();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let out = s.run(&["labels", "import", file.to_str().unwrap()]);
    assert!(out.contains("published 3 labels to labels.v1"), "{out}");

    let stage = s.spawn(&["shards", "run", "--max-age-secs", "1"], "shards.log");
    let root = s.state.path().join("labels");
    let deadline = Instant::now() + Duration::from_secs(90);
    let rows = || aion_shards::read_manifest(&root).map_or(0, |m| m.iter().map(|e| e.rows).sum());
    while rows() < 3 {
        assert!(
            Instant::now() < deadline,
            "labels table: {} rows\n{}",
            rows(),
            s.logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(stage.terminate(), "clean stop\n{}", s.logs());
    let table = s.run(&[
        "sql",
        "--format",
        "json",
        "SELECT tenant_id, event_id, labeller, correct FROM labels ORDER BY event_id",
    ]);
    let got: Vec<serde_json::Value> = table
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let expected: Vec<serde_json::Value> = labels
        .iter()
        .map(|l| {
            serde_json::json!({
                "tenant_id": l.tenant_id,
                "event_id": l.event_id,
                "labeller": l.labeller,
                "correct": l.correct,
            })
        })
        .collect();
    assert_eq!(got, expected, "{table}");
}
