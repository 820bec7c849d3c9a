//! A stop (SIGTERM) at any point of a stage's start-up is a clean, successful exit that commits
//! nothing it has not made durable: while the broker does not answer, right after the stage became
//! ready, and right after a group assigned it partitions.

use std::time::{Duration, Instant};

use aion_traffic::{Generator, Scenario, TrafficConfig};

use crate::Stack;

const GROUP: &str = "aion.shards";

/// Publishes `count` events of synthetic traffic; returns how many went to `answer.v1`.
async fn publish_answers(s: &Stack, count: u64) -> usize {
    let answers: Vec<_> = Generator::new(TrafficConfig {
        seed: 7,
        tenants: vec!["acme".into()],
        count,
        start: "2026-11-01T00:00:00Z".parse().unwrap(),
        span: chrono::Duration::hours(6),
        scenario: Scenario::Steady,
        invalid_fraction: 0.0,
        late_fraction: 0.0,
    })
    .filter(|p| p.topic == aion_events::topics::ANSWER)
    .map(|p| (p.topic.to_owned(), p.key, p.bytes))
    .collect();
    let n = answers.len();
    s.publish(answers).await;
    n
}

fn committed(s: &Stack) -> i64 {
    aion_kafka::committed_offsets(&s.kafka, GROUP, aion_events::topics::ANSWER)
        .unwrap()
        .values()
        .sum()
}

fn durable_rows(s: &Stack) -> i64 {
    s.table_rows("shards") as i64
}

/// A shard stage that never rolls a file by itself: whatever it consumed before the stop is
/// buffered, not durable, and must not be committed.
const NEVER_ROLLS: [&str; 6] = [
    "shards",
    "run",
    "--max-age-secs",
    "3600",
    "--max-rows",
    "1000000",
];

#[tokio::test(flavor = "multi_thread")]
async fn a_stop_during_start_up_exits_cleanly_and_commits_nothing_undurable() {
    let s = Stack::start();
    s.run(&["topics", "create", "--partitions", "2"]);
    let answers = publish_answers(&s, 400).await;
    assert!(answers > 100);

    // 1. The broker does not answer (paused): start-up is stuck in its topic checks.
    let broker = s.broker.as_ref().unwrap().pid().to_string();
    let signal = |sig: &str| {
        assert!(std::process::Command::new("kill")
            .args([sig, &broker])
            .status()
            .unwrap()
            .success());
    };
    signal("-STOP");
    let mut stage = s.spawn(&NEVER_ROLLS, "stuck.log");
    assert!(stage.wait_for_line("stage starting"), "{}", s.logs());
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    let clean = stage.signal_term();
    let took = asked.elapsed();
    signal("-CONT");
    assert!(clean, "stop while the broker is silent\n{}", s.logs());
    // Not bound by the broker calls' timeouts (10 s each, several of them).
    assert!(took < Duration::from_secs(8), "the stop took {took:?}");
    assert_eq!(committed(&s), 0);

    // 2. Right after the readiness line, with direct assignment (as `aion up` runs stages).
    let mut stage = s.spawn(&NEVER_ROLLS, "ready.log");
    assert!(stage.wait_ready(), "{}", s.logs());
    assert!(stage.signal_term(), "stop right after ready\n{}", s.logs());
    assert!(committed(&s) <= durable_rows(&s));
    assert_eq!(durable_rows(&s), 0, "nothing rolls before an hour");

    // 3. Group membership (the production default), right after the assignment.
    let mut stage = s.spawn_with(
        &NEVER_ROLLS,
        "group.log",
        &[("AION_KAFKA_ASSIGNMENT", "group")],
    );
    assert!(stage.wait_for_line("partitions assigned"), "{}", s.logs());
    assert!(
        stage.signal_term(),
        "stop right after assignment\n{}",
        s.logs()
    );
    assert_eq!(committed(&s), 0, "nothing was durable");

    // And nothing was lost: a run that rolls writes every answer once, and commits them all.
    let stage = s.spawn(&["shards", "run", "--max-age-secs", "1"], "final.log");
    let deadline = Instant::now() + Duration::from_secs(120);
    while durable_rows(&s) < answers as i64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(stage.terminate(), "clean stop\n{}", s.logs());
    assert_eq!(durable_rows(&s), answers as i64);
    assert_eq!(committed(&s), answers as i64);
}
