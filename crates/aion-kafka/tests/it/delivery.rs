use std::collections::BTreeMap;
use std::time::Duration;

use aion_kafka::{committed_offsets, headers, Error, KafkaConfig, Sink, Source, SourceConfig};

use crate::Setup;

/// Receives `n` records with a deadline.
async fn recv_n(source: &mut Source, n: usize) -> Vec<aion_kafka::Record> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let r = tokio::time::timeout(Duration::from_secs(30), source.recv())
            .await
            .expect("records arrive")
            .unwrap();
        out.push(r);
    }
    out
}

fn committed(kafka: &KafkaConfig, group: &str) -> BTreeMap<i32, i64> {
    committed_offsets(kafka, group, "in").unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn offsets_are_committed_only_up_to_the_first_unacknowledged_record() {
    let s = Setup::new(&[("in", 1)]).await;
    s.produce("in", 100).await;
    let mut source = s.source("in", "g1");
    let records = recv_n(&mut source, 100).await;
    let mut held = Vec::new();
    for r in records {
        // Records 40 and 70 have outputs still in flight; everything else is durable.
        if r.offset == 40 || r.offset == 70 {
            held.push(r.ack);
        } else {
            r.ack.done();
        }
    }
    source.shutdown(Duration::from_millis(500)).await.unwrap();
    drop(held);

    assert_eq!(committed(&s.kafka, "g1"), BTreeMap::from([(0, 40)]));
    let mut again = s.source("in", "g1");
    let first = recv_n(&mut again, 1).await.remove(0);
    assert_eq!(
        first.offset, 40,
        "resumes at the first record whose output was not durable"
    );
}

/// An error exit under group membership: the stage returns early (a `?`) holding acks of work it
/// never wrote. Closing the consumer revokes its partitions, and the revoke commits what is done:
/// only the records the stage said were done, never what it merely dropped.
#[tokio::test(flavor = "multi_thread")]
async fn an_error_exit_in_group_mode_commits_nothing_it_did_not_finish() {
    let s = Setup::new(&[("in", 1)]).await;
    s.produce("in", 100).await;
    // The default revoke wait: records nobody will finish must not hold the close for it (a wait
    // past the session timeout loses the group membership and with it the final commit).
    let config = SourceConfig::new("test", vec!["in".into()], "g7");
    async fn failing_stage(source: &mut Source) -> Result<(), &'static str> {
        let mut window = Vec::new();
        loop {
            let r = source.recv().await.map_err(|_| "recv")?;
            if r.offset < 30 {
                r.ack.done();
            } else {
                // Held in open state, then the write of that state fails.
                window.push(r.ack);
                if window.len() == 50 {
                    return Err("metrics directory not writable");
                }
            }
        }
    }
    let mut source = Source::new(&s.kafka, &config).unwrap();
    assert!(failing_stage(&mut source).await.is_err());
    drop(source);
    assert_eq!(committed(&s.kafka, "g7"), BTreeMap::from([(0, 30)]));
    let mut again = Source::new(&s.kafka, &config).unwrap();
    assert_eq!(recv_n(&mut again, 1).await[0].offset, 30);
}

#[tokio::test(flavor = "multi_thread")]
async fn produced_outputs_release_acks_after_broker_acknowledgement() {
    let s = Setup::new(&[("in", 3), ("out", 3)]).await;
    s.produce("in", 300).await;
    let mut source = s.source("in", "g2");
    let sink = Sink::new(&s.kafka, "test").unwrap();
    for r in recv_n(&mut source, 300).await {
        sink.send("out", r.key.as_deref(), &r.payload, None, Some(r.ack))
            .await
            .unwrap();
    }
    sink.flush(Duration::from_secs(30)).unwrap();
    source.shutdown(Duration::from_secs(30)).await.unwrap();

    let out = s.read_all("out");
    assert_eq!(out.len(), 300);
    let c = committed(&s.kafka, "g2");
    assert_eq!(c.values().sum::<i64>(), 300, "{c:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_carry_original_bytes_reason_and_source() {
    let s = Setup::new(&[("in", 1), ("in.dlq", 1)]).await;
    let sink = Sink::new(&s.kafka, "test").unwrap();
    sink.send("in", Some(b"tenant"), b"{not json", None, None)
        .await
        .unwrap();
    sink.flush(Duration::from_secs(10)).unwrap();
    let mut source = s.source("in", "g3");
    let r = recv_n(&mut source, 1).await.remove(0);
    sink.dead_letter(r, "results[2].rank", "duplicate rank 1")
        .await
        .unwrap();
    sink.flush(Duration::from_secs(10)).unwrap();
    source.shutdown(Duration::from_secs(10)).await.unwrap();

    let dlq = s.read_all("in.dlq");
    assert_eq!(dlq.len(), 1);
    let d = &dlq[0];
    assert_eq!(d.payload, b"{not json");
    assert_eq!(d.key.as_deref(), Some(&b"tenant"[..]));
    assert_eq!(
        d.header(headers::REASON),
        Some("results[2].rank: duplicate rank 1")
    );
    assert_eq!(d.header(headers::PATH), Some("results[2].rank"));
    assert_eq!(d.header(headers::SOURCE_TOPIC), Some("in"));
    assert_eq!(d.header(headers::SOURCE_PARTITION), Some("0"));
    assert_eq!(d.header(headers::SOURCE_OFFSET), Some("0"));
    assert_eq!(d.header(headers::STAGE), Some("test"));
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_partitions_are_committed_before_they_move() {
    let s = Setup::new(&[("in", 4)]).await;
    s.produce("in", 400).await;
    // Auto-commit effectively off: only the revoke flush can commit these offsets.
    let mut kafka: KafkaConfig = s.kafka.clone();
    kafka
        .properties
        .insert("auto.commit.interval.ms".into(), "600000".into());
    let config = SourceConfig::new("test", vec!["in".into()], "g4");
    let mut a = Source::new(&kafka, &config).unwrap();
    for r in recv_n(&mut a, 400).await {
        r.ack.done();
    }
    let mut b = Source::new(&kafka, &config).unwrap();
    // Both members poll so the rebalance completes; `a` revokes (and commits) in its poll.
    let replayed = tokio::select! {
        r = b.recv() => Some(r.unwrap().offset),
        _ = async { loop { let _ = a.recv().await; } } => None,
        _ = tokio::time::sleep(Duration::from_secs(15)) => None,
    };
    assert_eq!(
        replayed, None,
        "a record was replayed: the revoke did not commit"
    );
    assert_eq!(committed(&s.kafka, "g4").values().sum::<i64>(), 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn subscribing_to_a_missing_topic_is_a_clear_error() {
    let s = Setup::new(&[]).await;
    match Source::new(
        &s.kafka,
        &SourceConfig::new("test", vec!["nope".into()], "g5"),
    ) {
        Err(Error::UnknownTopic(t)) => assert_eq!(t, "nope"),
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("subscribed to a missing topic"),
    }
}

/// Direct assignment (`aion up`): no group membership, yet offsets are fetched from and committed
/// to the group, so a restart resumes where the last run's durable outputs ended — and two runs
/// never split the partitions between them.
#[tokio::test(flavor = "multi_thread")]
async fn direct_assignment_reads_every_partition_and_resumes_from_committed_offsets() {
    let s = Setup::new(&[("in", 3)]).await;
    s.produce("in", 300).await;
    let mut kafka: KafkaConfig = s.kafka.clone();
    kafka.assignment = aion_kafka::Assignment::All;
    let config = SourceConfig::new("test", vec!["in".into()], "g6");
    let mut first = Source::new(&kafka, &config).unwrap();
    let records = recv_n(&mut first, 300).await;
    let partitions: std::collections::BTreeSet<i32> = records.iter().map(|r| r.partition).collect();
    assert_eq!(
        partitions.len(),
        3,
        "every partition read by the one member"
    );
    // The last record of each partition stays unacknowledged: it must be read again.
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    for r in &records {
        let e = last.entry(r.partition).or_default();
        *e = (*e).max(r.offset);
    }
    let mut held = Vec::new();
    for r in records {
        if last[&r.partition] == r.offset {
            held.push(r.ack);
        } else {
            r.ack.done();
        }
    }
    first.shutdown(Duration::from_millis(500)).await.unwrap();
    drop(held);
    assert_eq!(committed(&s.kafka, "g6"), last);

    let mut again = Source::new(&kafka, &config).unwrap();
    let replayed = recv_n(&mut again, 3).await;
    let mut got: Vec<(i32, i64)> = replayed.iter().map(|r| (r.partition, r.offset)).collect();
    got.sort_unstable();
    assert_eq!(got, last.into_iter().collect::<Vec<_>>());
    assert_eq!(again.revocations(), 0);
}
