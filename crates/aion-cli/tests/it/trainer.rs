//! The trainer through the real broker, on the real SmolLM2-135M weights: answers → shards →
//! manual trigger → a QLoRA job → a PEFT adapter, `completed` on `train.status.v1`, the trigger's
//! offset stored after; a redelivered trigger does not run twice; a cancel stops a job with no
//! adapter; `aion generate` runs the adapter.

use std::time::{Duration, Instant};

use aion_kafka::{committed_offsets, Reader, Sink};
use serde_json::{json, Value};

use crate::Stack;

const WAIT: Duration = Duration::from_secs(300);

/// The default gate pipeline with a recipe small enough for CPU tests: one example per step.
fn tiny_recipe() -> String {
    let mut text = include_str!("../../../../pipelines/gate.toml").to_owned();
    for (from, to) in [
        ("lora_r = 16", "lora_r = 4"),
        ("lora_dropout = 0.05", "lora_dropout = 0.0"),
        ("learning_rate = 0.0002", "learning_rate = 0.001"),
        ("epochs = 2", "epochs = 1"),
        ("batch_size = 2", "batch_size = 1"),
        ("grad_accum = 8", "grad_accum = 1"),
    ] {
        assert!(text.contains(from), "pipelines/gate.toml changed: {from}");
        text = text.replace(from, to);
    }
    text
}

/// Reads statuses into `seen` until `until` holds or `limit` passes.
fn statuses(
    reader: &Reader,
    until: impl Fn(&[Value]) -> bool,
    seen: &mut Vec<Value>,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    while !until(seen) && Instant::now() < deadline {
        if let Some(r) = reader.next(Duration::from_millis(500)).unwrap() {
            seen.push(serde_json::from_slice(&r.payload).unwrap());
        }
    }
}

/// Waits until `group` has stored the trigger's offset (1: after the only trigger).
fn wait_committed(s: &Stack, group: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let committed = || committed_offsets(&s.kafka, group, "train.trigger.v1").unwrap();
    while committed().get(&0) != Some(&1) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        committed().get(&0),
        Some(&1),
        "offset stored after the final state\n{}",
        s.logs()
    );
}

fn state_of<'a>(seen: &'a [Value], job: &str) -> Vec<&'a str> {
    seen.iter()
        .filter(|s| s["job_id"] == job)
        .map(|s| s["state"].as_str().unwrap())
        .collect()
}

/// 30 fallback answers of `acme` through the shard stage, then a manual trigger with the tiny
/// recipe: returns the trigger and the pipeline file it was made with.
async fn trigger_a_job(s: &Stack) -> (Value, String) {
    let sink = Sink::new(&s.kafka, "test").unwrap();
    let cities = ["Curitiba", "Recife", "Belém", "Natal", "Manaus", "Goiânia"];
    for i in 0..30 {
        let city = cities[i % cities.len()];
        let answer = json!({
            "event_id": format!("a{i}"), "tenant_id": "acme", "ts": "2026-11-02T10:00:00Z",
            "prompt": format!("Qual o prazo de entrega para {city}? Pedido {i}."),
            "reply": format!("A entrega para {city} leva {} dias úteis.", 2 + i % 5),
            "confidence": 0.4, "fallback": true, "provider": "external", "model": "big",
            "latency_ms": 800
        });
        sink.send(
            "answer.v1",
            Some(b"acme"),
            answer.to_string().as_bytes(),
            None,
            None,
        )
        .await
        .unwrap();
    }
    sink.flush(Duration::from_secs(30)).unwrap();
    let shards = s.spawn(&["shards", "run", "--max-age-secs", "1"], "shards.log");
    let root = s.state.path().join("shards");
    let deadline = Instant::now() + Duration::from_secs(60);
    while aion_shards::read_manifest(&root).map_or(0, |m| m.iter().map(|e| e.rows).sum()) < 30
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(shards.terminate(), "{}", s.logs());

    let gate = s.state.path().join("gate.toml");
    std::fs::write(&gate, tiny_recipe()).unwrap();
    let gate = gate.to_str().unwrap().to_owned();
    let trigger: Value = serde_json::from_str(&s.run(&[
        "train",
        "trigger",
        "--tenant",
        "acme",
        "--pipeline",
        &gate,
    ]))
    .unwrap();
    assert!(
        trigger["shards"].as_array().unwrap().is_empty()
            && trigger["manifest_lines"].as_u64().is_some_and(|n| n > 0),
        "{trigger}"
    );
    (trigger, gate)
}

/// A job longer than `max.poll.interval.ms`, with two trainer members in the group: the member
/// running it pauses its partition and keeps polling, so it is never evicted and the other member
/// never starts the job. (Without the polling the runner was evicted after the interval and the
/// trigger handed to the other member, which trained it a second time.)
#[tokio::test(flavor = "multi_thread")]
async fn a_job_longer_than_the_poll_interval_runs_once_with_two_members() {
    let s = Stack::start();
    s.run(&["topics", "create", "--partitions", "1"]);
    let (trigger, _) = trigger_a_job(&s).await;
    let job = trigger["trigger_id"].as_str().unwrap().to_owned();
    let config = s.state.path().join("aion.toml");
    // librdkafka's floor for the interval is the session timeout: the stages' 6 s, set for every
    // client here (the cancel reader's default is 45 s).
    std::fs::write(
        &config,
        "[kafka.properties]\n\"max.poll.interval.ms\" = \"7000\"\n\"session.timeout.ms\" = \"6000\"\n",
    )
    .unwrap();
    let env = [
        ("AION_KAFKA_ASSIGNMENT", "group"),
        ("AION_CONFIG", config.to_str().unwrap()),
    ];
    let args = ["trainer", "run", "--max-steps", "12", "--max-len", "48"];
    let reader = Reader::new(&s.kafka, &["train.status.v1"], true).unwrap();
    let mut seen = Vec::new();
    let first = s.spawn_with(&args, "trainer-a.log", &env);
    let second = s.spawn_with(&args, "trainer-b.log", &env);
    statuses(
        &reader,
        |seen| state_of(seen, &job).contains(&"completed"),
        &mut seen,
        WAIT,
    );
    wait_committed(&s, "aion.trainer");
    // Anything a second run would publish arrives by now.
    statuses(&reader, |_| false, &mut seen, Duration::from_secs(5));
    let states = state_of(&seen, &job);
    let count = |state: &str| states.iter().filter(|s| **s == state).count();
    assert_eq!(
        (count("queued"), count("completed")),
        (1, 1),
        "{states:?}\n{}",
        s.logs()
    );
    let at = |state: &str| {
        let status = seen
            .iter()
            .find(|s| s["job_id"] == job.as_str() && s["state"] == state)
            .unwrap();
        status["at"]
            .as_str()
            .unwrap()
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap()
    };
    assert!(
        at("completed") - at("queued") > chrono::Duration::seconds(10),
        "the job must outlast the poll interval to test anything"
    );
    assert!(first.terminate() && second.terminate(), "{}", s.logs());
}

/// An error exit under group membership: the job's final status cannot be written, so the trainer
/// fails after training. The failed run commits nothing; once the fault is cleared, the restarted
/// trainer runs the job to `completed` and only then stores the trigger's offset. (When a dropped
/// ack counted as done, the failed run committed the trigger and the job never finished.)
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_status_write_in_group_mode_runs_the_job_again() {
    let s = Stack::start();
    s.run(&["topics", "create", "--partitions", "1"]);
    let (trigger, _) = trigger_a_job(&s).await;
    let job = trigger["trigger_id"].as_str().unwrap().to_owned();
    let trigger: aion_events::TrainTrigger = serde_json::from_value(trigger).unwrap();
    let adapters = s.state.path().join("adapters");
    let status =
        aion_trainer::stage::job_dir(&adapters, &trigger).join(aion_trainer::stage::STATUS_FILE);
    // A non-empty directory where the status file goes: renaming onto it fails.
    std::fs::create_dir_all(status.join("in-the-way")).unwrap();
    let group = [("AION_KAFKA_ASSIGNMENT", "group")];
    let args = ["trainer", "run", "--max-steps", "1", "--max-len", "48"];
    let failing = s.spawn_with(&args, "trainer-failing.log", &group);
    assert!(!failing.wait(), "the trainer must fail\n{}", s.logs());
    assert_eq!(
        committed_offsets(&s.kafka, "aion.trainer", "train.trigger.v1").unwrap(),
        Default::default(),
        "the failed run committed the trigger"
    );
    std::fs::remove_dir_all(&status).unwrap();
    let reader = Reader::new(&s.kafka, &["train.status.v1"], true).unwrap();
    let mut seen = Vec::new();
    let trainer = s.spawn_with(&args, "trainer.log", &group);
    statuses(
        &reader,
        |seen| state_of(seen, &job).contains(&"completed"),
        &mut seen,
        WAIT,
    );
    assert_eq!(
        state_of(&seen, &job).last(),
        Some(&"completed"),
        "{seen:?}\n{}",
        s.logs()
    );
    wait_committed(&s, "aion.trainer");
    assert!(trainer.terminate(), "clean stop\n{}", s.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trigger_trains_an_adapter_once_and_a_cancel_stops_a_job() {
    let s = Stack::start();
    s.run(&["topics", "create", "--partitions", "1"]);
    let (trigger, gate) = trigger_a_job(&s).await;
    let gate = gate.as_str();
    let job = trigger["trigger_id"].as_str().unwrap().to_owned();

    let reader = Reader::new(&s.kafka, &["train.status.v1"], true).unwrap();
    let mut seen = Vec::new();
    let trainer = s.spawn(
        &["trainer", "run", "--max-steps", "4", "--max-len", "48"],
        "trainer.log",
    );
    statuses(
        &reader,
        |seen| state_of(seen, &job).contains(&"completed"),
        &mut seen,
        WAIT,
    );
    let states = state_of(&seen, &job);
    assert_eq!(states.first(), Some(&"queued"), "{seen:?}\n{}", s.logs());
    assert_eq!(
        states.iter().filter(|s| **s == "running").count(),
        4,
        "{seen:?}"
    );
    assert_eq!(states.last(), Some(&"completed"), "{seen:?}\n{}", s.logs());
    let done = seen
        .iter()
        .rev()
        .find(|s| s["job_id"] == job.as_str())
        .unwrap();
    let adapter = std::path::PathBuf::from(done["adapter"].as_str().unwrap());
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        assert!(adapter.join(f).is_file(), "{f} in {}", adapter.display());
    }
    assert!(
        done["held_out_before"].is_number() && done["held_out_after"].is_number(),
        "{done}"
    );
    let listed = s.run(&["train", "status", "--tenant", "acme"]);
    assert!(
        listed.contains(&job) && listed.contains("completed"),
        "{listed}"
    );
    wait_committed(&s, "aion.trainer");

    // Redelivered to a new group: recognised as done, no second job.
    let again = s
        .aion()
        .env("AION_GROUP_PREFIX", "again")
        .args(["trainer", "run", "--max-steps", "4", "--max-len", "48"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut again = crate::Running::new(again, None);
    wait_committed(&s, "again.trainer");
    again.kill();
    let before = seen.len();
    statuses(&reader, |_| false, &mut seen, Duration::from_secs(3));
    assert_eq!(state_of(&seen[before..], &job), Vec::<&str>::new());

    // A long job, cancelled after its first step: no adapter, `cancelled`.
    let long: Value = serde_json::from_str(&s.run(&[
        "train",
        "trigger",
        "--tenant",
        "acme",
        "--pipeline",
        gate,
        "--reason",
        "long",
    ]))
    .unwrap();
    let long = long["trigger_id"].as_str().unwrap().to_owned();
    drop(trainer);
    let trainer = s.spawn(
        &["trainer", "run", "--max-steps", "500", "--max-len", "48"],
        "trainer2.log",
    );
    statuses(
        &reader,
        |seen| state_of(seen, &long).contains(&"running"),
        &mut seen,
        WAIT,
    );
    s.run(&["train", "cancel", "--job", &long]);
    statuses(
        &reader,
        |seen| state_of(seen, &long).contains(&"cancelled"),
        &mut seen,
        WAIT,
    );
    assert_eq!(
        state_of(&seen, &long).last(),
        Some(&"cancelled"),
        "{seen:?}\n{}",
        s.logs()
    );
    let cancelled = seen
        .iter()
        .rev()
        .find(|s| s["job_id"] == long.as_str())
        .unwrap();
    assert!(cancelled["adapter"].is_null(), "{cancelled}");
    assert!(trainer.terminate(), "clean stop\n{}", s.logs());

    let text = s.run(&[
        "generate",
        "--adapter",
        adapter.to_str().unwrap(),
        "--max-new-tokens",
        "4",
        "Qual o prazo de entrega para Curitiba?",
    ]);
    assert!(!text.trim().is_empty());
}

/// Triggers that name another tenant's shards, escape the shard table, ask for an absurd recipe
/// or carry an id too long for a job directory: each goes to the DLQ with its reason and, when it
/// names a job of its own, a `failed` status; the trainer neither crashes nor trains.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_triggers_are_refused_with_a_reason_and_a_failed_status() {
    let s = Stack::start();
    s.run(&["topics", "create", "--partitions", "1"]);
    let valid = json!({
        "trigger_id": "acme/manual/1", "tenant_id": "acme", "reason": "manual",
        "at": "2026-11-24T13:00:00Z", "fallback_rate": null, "ndcg_mean": null, "answers": 0,
        "judged_events": 0,
        "thresholds": {"tau_fallback": 0.18, "tau_ndcg": 0.82, "min_answers": 50, "min_judged": 50, "cooldown_hours": 6.0},
        "shards": [],
        "recipe": {"base_model": "m", "lora_r": 4, "lora_alpha": 16.0, "lora_dropout": 0.0,
                   "learning_rate": 0.001, "epochs": 1, "batch_size": 1, "grad_accum": 1}
    });
    let hostile = |id: &str, change: &dyn Fn(&mut Value)| {
        let mut t = valid.clone();
        t["trigger_id"] = json!(format!("acme/{id}"));
        change(&mut t);
        t
    };
    let long_id = "x".repeat(300);
    // (trigger, field refused, whether a failed status names it)
    let cases = [
        (
            hostile("cross-tenant", &|t| {
                t["shards"] = json!(["tenant_id=globex/date=2026-11-24/part-000.parquet"])
            }),
            "shards",
            true,
        ),
        (
            hostile("traversal", &|t| {
                t["shards"] = json!(["tenant_id=acme/../../../../etc/x.parquet"])
            }),
            "shards",
            true,
        ),
        (
            hostile("huge-rank", &|t| t["recipe"]["lora_r"] = json!(1u64 << 30)),
            "recipe.lora_r",
            true,
        ),
        (hostile(&long_id, &|_| {}), "trigger_id", false),
    ];
    s.publish(cases.iter().map(|(t, _, _)| {
        (
            "train.trigger.v1".to_owned(),
            "acme".to_owned(),
            serde_json::to_vec(t).unwrap(),
        )
    }))
    .await;
    let status_reader = Reader::new(&s.kafka, &["train.status.v1"], true).unwrap();
    let trainer = s.spawn(&["trainer", "run", "--max-steps", "1"], "trainer.log");

    let dlq = Reader::new(&s.kafka, &["train.trigger.v1.dlq"], true).unwrap();
    let mut dead = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while dead.len() < cases.len() && Instant::now() < deadline {
        dead.extend(dlq.drain(Duration::from_secs(1), None).unwrap());
    }
    assert_eq!(dead.len(), cases.len(), "{}", s.logs());
    for (record, (trigger, field, _)) in dead.iter().zip(&cases) {
        assert_eq!(record.payload, serde_json::to_vec(trigger).unwrap());
        let reason = record
            .header(aion_kafka::headers::REASON)
            .unwrap_or_default();
        assert!(reason.contains(field), "{field}: {reason}");
    }
    let mut seen = Vec::new();
    statuses(&status_reader, |seen| seen.len() >= 3, &mut seen, WAIT);
    for (trigger, field, named) in &cases {
        let job = trigger["trigger_id"].as_str().unwrap();
        let states = state_of(&seen, job);
        if *named {
            assert_eq!(states, ["failed"], "{job}: {seen:?}");
            let status = seen.iter().find(|s| s["job_id"] == job).unwrap();
            assert!(
                status["reason"].as_str().unwrap().contains(field),
                "{status}"
            );
        } else {
            assert!(states.is_empty(), "{seen:?}");
        }
    }
    assert!(
        !s.state.path().join("adapters").exists(),
        "no job ran for a refused trigger"
    );
    assert!(
        trainer.terminate(),
        "still running, stops cleanly\n{}",
        s.logs()
    );
}

/// A training device this build cannot open (no `cuda` feature here) fails the trainer at start,
/// naming it; a name that is no device is refused with the choices.
#[test]
fn a_training_device_it_cannot_open_fails_at_start_naming_it() {
    let s = Stack::offline();
    let run = |device: &str| {
        let out = s
            .aion()
            .args(["trainer", "run", "--device", device])
            .output()
            .unwrap();
        assert!(!out.status.success(), "--device {device} must fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let cuda = run("cuda:1");
    assert!(cuda.contains("training device cuda:1"), "{cuda}");
    let gpu = run("gpu");
    assert!(gpu.contains("use cpu, cuda or cuda:N"), "{gpu}");
}
