use std::sync::atomic::{AtomicUsize, Ordering};

use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};

use super::*;

const H: Micros = 3_600_000_000;
const M: Micros = 60_000_000;

/// Counts how many acks were dropped.
#[derive(Debug)]
struct Token(Arc<AtomicUsize>);

impl Drop for Token {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn operator() -> WindowOperator<Token> {
    WindowOperator::new(&WindowsConfig::embedded().unwrap())
}

fn retrieval(tenant: &str, ts: Micros, ndcg: f64) -> Observation {
    Observation {
        tenant: Arc::from(tenant),
        ts,
        measure: Measure::Retrieval { ndcg: Some(ndcg) },
    }
}

fn at(partition: i32, offset: i64) -> Origin {
    Origin {
        input: 0,
        partition,
        offset,
    }
}

fn summary(closing: &Closing<Token>) -> Vec<(String, String, Micros, usize)> {
    closing
        .groups
        .iter()
        .flat_map(|g| &g.windows)
        .map(|w| {
            (
                w.tenant.to_string(),
                w.window.to_string(),
                w.start,
                w.rows.len(),
            )
        })
        .collect()
}

#[test]
fn windows_close_when_the_watermark_passes_their_end() {
    let mut op = operator();
    let now = Instant::now();
    let released = Arc::new(AtomicUsize::new(0));
    let tok = || Token(released.clone());
    op.observe(at(0, 0), &retrieval("t", 10 * M, 0.5), tok, now);
    op.observe(at(0, 1), &retrieval("t", 50 * M, 0.7), tok, now);
    assert!(
        op.close(now).groups.is_empty(),
        "watermark 40m: nothing ends"
    );
    // Max 1h15 − 10 min lateness = 1h05: the hour [0,1h) and the hop ending 1h close.
    op.observe(at(0, 2), &retrieval("t", H + 15 * M, 0.9), tok, now);
    let closing = op.close(now);
    assert_eq!(
        summary(&closing),
        vec![
            ("t".into(), "tumbling_1h".into(), 0, 2),
            ("t".into(), "hopping_24h".into(), H - 24 * H, 2),
        ]
    );
    assert!(
        closing.release.is_empty(),
        "later hops still need the first pane"
    );
    drop(closing);
    // 1d and every hop covering hour 0 end by 24h; the watermark passes it at max 24h10.
    op.observe(at(0, 3), &retrieval("t", 24 * H + 20 * M, 0.1), tok, now);
    let closing = op.close(now);
    let kinds: Vec<_> = summary(&closing).into_iter().map(|s| s.1).collect();
    assert_eq!(kinds.iter().filter(|k| *k == "tumbling_1d").count(), 1);
    assert_eq!(kinds.iter().filter(|k| *k == "hopping_24h").count(), 23);
    assert_eq!(
        closing.release.len(),
        2,
        "hour 0 is done; the hop ending 25h needs hour 1"
    );
    assert_eq!(
        released.load(Ordering::SeqCst),
        0,
        "held until the caller drops them"
    );
    drop(closing);
    assert_eq!(released.load(Ordering::SeqCst), 2);
    assert_eq!(op.stored_rows(), 2);
}

#[test]
fn a_late_event_misses_only_the_windows_already_passed() {
    let mut op = operator();
    let now = Instant::now();
    let released = Arc::new(AtomicUsize::new(0));
    op.observe(
        at(0, 0),
        &retrieval("t", 2 * H, 0.5),
        || Token(released.clone()),
        now,
    );
    // Watermark 1h50: hour [0,1h) and the hop ending at 1h have passed; the day has not.
    let a = op.observe(
        at(0, 1),
        &retrieval("t", 30 * M, 0.2),
        || Token(released.clone()),
        now,
    );
    assert_eq!(
        a.missed,
        vec!["tumbling_1h".to_string(), "hopping_24h".to_string()]
    );
    assert!(a.kept && !a.resume_point);
    op.observe(
        at(0, 2),
        &retrieval("t", 25 * H, 0.5),
        || Token(released.clone()),
        now,
    );
    let closing = op.close(now);
    let day: Vec<_> = summary(&closing)
        .into_iter()
        .filter(|s| s.1 == "tumbling_1d" || (s.1 == "hopping_24h" && s.2 == 2 * H - 24 * H))
        .collect();
    assert_eq!(
        day,
        vec![
            ("t".into(), "hopping_24h".into(), 2 * H - 24 * H, 1),
            ("t".into(), "tumbling_1d".into(), 0, 2),
        ],
        "the day and the hop ending 2h count the late event; the hop ending 1h had passed"
    );
    // Far too late for everything: reported, not kept.
    let b = op.observe(
        at(0, 3),
        &retrieval("t", 10 * M, 0.2),
        || Token(released.clone()),
        now,
    );
    assert!(!b.kept);
    assert_eq!(b.missed.len(), 3);
}

#[test]
fn interleaving_of_partitions_does_not_change_results() {
    let now = Instant::now();
    // Two partitions, each mostly ordered with some disorder, a few late events each.
    let mut per_partition: Vec<Vec<Observation>> = vec![Vec::new(), Vec::new()];
    for i in 0..400i64 {
        let jitter = (i * 7919) % (25 * M);
        per_partition[(i % 2) as usize].push(retrieval(
            if i % 3 == 0 { "a" } else { "b" },
            i * 5 * M - jitter,
            (i % 10) as f64 / 10.0,
        ));
    }
    let run = |seed: u64| {
        let mut op = operator();
        op.add_partition(0, 0, now);
        op.add_partition(0, 1, now);
        let mut order: Vec<i32> = per_partition
            .iter()
            .enumerate()
            .flat_map(|(p, evs)| std::iter::repeat_n(p as i32, evs.len()))
            .collect();
        order.shuffle(&mut StdRng::seed_from_u64(seed));
        let mut next = [0usize; 2];
        let mut out = Vec::new();
        let released = Arc::new(AtomicUsize::new(0));
        for p in order {
            let i = next[p as usize];
            next[p as usize] += 1;
            op.observe(
                at(p, i as i64),
                &per_partition[p as usize][i],
                || Token(released.clone()),
                now,
            );
            for g in op.close(now).groups {
                for w in g.windows {
                    let rows: Vec<_> = w.rows.iter().map(|r| (r.ts, r.origin)).collect();
                    out.push((w.tenant.to_string(), w.window.to_string(), w.start, rows));
                }
            }
        }
        out.sort();
        out
    };
    let first = run(1);
    assert!(first.len() > 100);
    for seed in 2..6 {
        assert_eq!(run(seed), first, "seed {seed}");
    }
}

#[test]
fn a_silent_partition_holds_windows_until_it_is_caught_up_and_idle() {
    let mut op = operator();
    let start = Instant::now();
    op.add_partition(0, 0, start);
    op.add_partition(1, 0, start);
    let released = Arc::new(AtomicUsize::new(0));
    op.observe(
        at(0, 0),
        &retrieval("t", 10 * M, 0.5),
        || Token(released.clone()),
        start,
    );
    op.observe(
        at(0, 1),
        &retrieval("t", 3 * H, 0.5),
        || Token(released.clone()),
        start,
    );
    assert_eq!(op.watermark(start), None, "input 1 has not spoken");
    assert!(op.close(start).groups.is_empty());
    let later = start + Duration::from_secs(31);
    assert_eq!(
        op.watermark(later),
        None,
        "silent, but nobody measured that input 1 is caught up"
    );
    op.set_backlog(0, 0, 0, later);
    op.set_backlog(1, 0, 0, later);
    assert_eq!(
        op.watermark(later),
        Some(3 * H - 10 * M),
        "both caught up and idle: the largest"
    );
    op.observe(
        at(0, 2),
        &retrieval("t", 3 * H + 1, 0.5),
        || Token(released.clone()),
        later,
    );
    assert_eq!(
        op.watermark(later),
        Some(3 * H + 1 - 10 * M),
        "input 1 idle"
    );
    assert!(!op.close(later).groups.is_empty());
}

#[test]
fn a_partition_with_unread_records_holds_however_long_it_is_silent() {
    let mut op = operator();
    let start = Instant::now();
    let released = Arc::new(AtomicUsize::new(0));
    let observe = |op: &mut WindowOperator<Token>, partition, offset, ts, now| {
        op.observe(
            at(partition, offset),
            &retrieval("t", ts, 0.5),
            || Token(released.clone()),
            now,
        )
    };
    observe(&mut op, 0, 0, 10 * M, start);
    observe(&mut op, 1, 0, 20 * M, start);
    let hour = start + Duration::from_secs(3600);
    // Partition 0 goes on; partition 1 has records left but delivers none for an hour.
    observe(&mut op, 0, 1, 5 * H, hour);
    op.set_backlog(0, 0, 0, hour);
    op.set_backlog(0, 1, 7, hour);
    assert_eq!(op.watermark(hour), Some(10 * M), "partition 1 holds");
    assert!(summary(&op.close(hour)).is_empty());
    assert_eq!(
        op.held_by_lag(hour),
        4,
        "window ends 01:00–04:00 wait on partition 1"
    );
    assert_eq!(op.oldest_open(hour), Some(Duration::from_secs(3600)));

    // Caught up once measured so, and only while the measurement is fresh.
    let caught_up = hour + Duration::from_secs(1);
    op.set_backlog(0, 1, 0, caught_up);
    assert_eq!(op.watermark(caught_up), Some(5 * H - 10 * M));
    assert_eq!(op.held_by_lag(caught_up), 0);
    let stale = caught_up + BACKLOG_FRESH + Duration::from_secs(1);
    assert_eq!(
        op.watermark(stale),
        Some(10 * M),
        "a stale measurement does not show a stalled partition caught up"
    );
    // A measurement taken before the partition's last event says nothing about what followed.
    let event = stale + Duration::from_secs(1);
    observe(&mut op, 1, 1, 30 * M, event);
    let silent = event + Duration::from_secs(60);
    observe(&mut op, 0, 2, 6 * H, silent);
    op.set_backlog(0, 1, 0, event - Duration::from_millis(1));
    assert_eq!(op.watermark(silent), Some(20 * M));
    op.set_backlog(0, 1, 0, silent);
    assert_eq!(op.watermark(silent), Some(6 * H - 10 * M));
}

#[test]
fn resume_points_are_records_at_or_above_their_partition_maximum() {
    let mut op = operator();
    let now = Instant::now();
    let released = Arc::new(AtomicUsize::new(0));
    let resume = |op: &mut WindowOperator<Token>, o, ts| {
        op.observe(
            at(0, o),
            &retrieval("t", ts, 0.5),
            || Token(released.clone()),
            now,
        )
        .resume_point
    };
    assert!(op.observe_unusable(at(0, 0), now), "nothing seen yet");
    assert!(resume(&mut op, 1, 5 * M));
    assert!(
        !op.observe_unusable(at(0, 2), now),
        "the maximum would be lost"
    );
    assert!(!resume(&mut op, 3, 4 * M));
    assert!(resume(&mut op, 4, 5 * M));
    assert!(resume(&mut op, 5, 6 * M));
}
