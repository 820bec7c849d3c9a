//! Per-partition, in-order offset tracking (the acknowledgement half of the delivery contract).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub(crate) type PartitionKey = (Arc<str>, i32);

/// Acknowledgement token of one consumed record.
///
/// Dropping the last clone says "every output of this record is durable"; [`Ack::fail`] says one
/// never will be. Clone it when a record fans out to several outputs (each holds a clone until
/// its output is durable), keep it inside window state until the window result is durable, or
/// drop it right away when the record has no output at all. Never drop it before the output is
/// durable: that is what lets the offset be stored.
#[derive(Clone)]
pub struct Ack(Arc<AckInner>);

struct AckInner {
    tracker: Arc<Tracker>,
    key: PartitionKey,
    offset: i64,
    failed: AtomicBool,
    abandoned: AtomicBool,
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Ack({}/{}@{})",
            self.0.key.0, self.0.key.1, self.0.offset
        )
    }
}

impl Ack {
    /// Marks the record as failed: its offset (and every later one on its partition) will not be
    /// stored, and the source reports [`crate::Error::OutputFailed`] so the stage stops and replays.
    pub fn fail(&self) {
        self.0.failed.store(true, Ordering::Release);
    }

    /// Gives the record up without an outcome: it stays pending, so its offset is never stored by
    /// this run and the next one replays it. For state discarded on shutdown or rebalance
    /// (an open window), where dropping the ack would wrongly say "durable".
    pub fn abandon(self) {
        self.0.abandoned.store(true, Ordering::Release);
    }

    /// Marks this record as a place a replay may start from (see
    /// [`crate::SourceConfig::explicit_resume_points`]).
    pub fn mark_resume_point(&self) {
        self.0.tracker.mark_resume_point(&self.0.key, self.0.offset);
    }

    pub fn partition(&self) -> i32 {
        self.0.key.1
    }

    pub fn offset(&self) -> i64 {
        self.0.offset
    }
}

impl Drop for AckInner {
    fn drop(&mut self) {
        if self.abandoned.load(Ordering::Acquire) {
            return;
        }
        if self.failed.load(Ordering::Acquire) {
            self.tracker.fail(&self.key, self.offset);
        } else {
            self.tracker.done(&self.key, self.offset);
        }
    }
}

#[derive(Clone, Copy)]
struct Pending {
    offset: i64,
    done: bool,
    /// A replay may start at this record.
    resume: bool,
}

#[derive(Default)]
struct PartitionState {
    /// Records handed out and not yet behind the stored position, in consumption order.
    pending: VecDeque<Pending>,
    /// Position (next offset to read) to hand to librdkafka: every record before it is done and a
    /// replay may start there.
    storable: Option<i64>,
    /// The highest position made storable so far: once a record was released, a resume point
    /// marked later at the front is a new position.
    position: Option<i64>,
}

#[derive(Default)]
struct State {
    partitions: HashMap<PartitionKey, PartitionState>,
    failed: Option<(PartitionKey, i64)>,
}

/// Shared between a [`crate::Source`], its rebalance callbacks and every outstanding [`Ack`].
#[derive(Default)]
pub(crate) struct Tracker {
    /// Whether only records marked with [`Ack::mark_resume_point`] (and never the end of what
    /// was consumed) may be the start of a replay.
    explicit_resume_points: bool,
    state: Mutex<State>,
    settled: Condvar,
    any_failed: AtomicBool,
}

impl Tracker {
    pub(crate) fn new(explicit_resume_points: bool) -> Self {
        Self {
            explicit_resume_points,
            ..Self::default()
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain bookkeeping behind; keep going with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a record handed to the stage and returns its acknowledgement token.
    pub(crate) fn track(self: &Arc<Self>, key: PartitionKey, offset: i64) -> Ack {
        let mut state = self.lock();
        let p = state.partitions.entry(key.clone()).or_default();
        if p.pending.back().is_some_and(|last| last.offset >= offset) {
            // The consumer was repositioned (seek or re-assignment): earlier bookkeeping is void.
            p.pending.clear();
            p.storable = None;
            p.position = None;
        }
        p.pending.push_back(Pending {
            offset,
            done: false,
            resume: !self.explicit_resume_points,
        });
        drop(state);
        Ack(Arc::new(AckInner {
            tracker: self.clone(),
            key,
            offset,
            failed: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
        }))
    }

    fn done(&self, key: &PartitionKey, offset: i64) {
        self.update(key, offset, |e| e.done = true);
    }

    fn mark_resume_point(&self, key: &PartitionKey, offset: i64) {
        self.update(key, offset, |e| e.resume = true);
    }

    /// Changes one pending record, then advances its partition.
    fn update(&self, key: &PartitionKey, offset: i64, change: impl FnOnce(&mut Pending)) {
        let mut state = self.lock();
        // A revoked partition is no longer tracked: its late acks are ignored (the new owner
        // replays from the last committed offset).
        let Some(p) = state.partitions.get_mut(key) else {
            return;
        };
        if let Ok(i) = p.pending.binary_search_by_key(&offset, |e| e.offset) {
            change(&mut p.pending[i]);
        }
        self.advance(p);
        if p.pending.is_empty() {
            self.settled.notify_all();
        }
    }

    /// Drops the done prefix and moves the storable position to the last place a replay may
    /// start from: a resume point whose predecessors are all done, or (without explicit resume
    /// points) the end of the done prefix.
    fn advance(&self, p: &mut PartitionState) {
        let set = |p: &mut PartitionState, position: i64| {
            if p.position.is_none_or(|current| current < position) {
                p.position = Some(position);
                p.storable = Some(position);
            }
        };
        while let Some(&Pending {
            offset,
            done,
            resume,
        }) = p.pending.front()
        {
            if resume && p.position.is_some() {
                set(p, offset);
            }
            if !done {
                return;
            }
            let next = offset + 1;
            p.pending.pop_front();
            match p.pending.front() {
                Some(f) if f.resume => set(p, f.offset),
                None if !self.explicit_resume_points => set(p, next),
                _ => {}
            }
        }
    }

    fn fail(&self, key: &PartitionKey, offset: i64) {
        let mut state = self.lock();
        state.failed.get_or_insert((key.clone(), offset));
        self.any_failed.store(true, Ordering::Release);
        self.settled.notify_all();
    }

    /// The first output failure, if any.
    pub(crate) fn failure(&self) -> Option<(PartitionKey, i64)> {
        if !self.any_failed.load(Ordering::Acquire) {
            return None;
        }
        self.lock().failed.clone()
    }

    /// Positions ready to be stored: the next offset to read of each partition.
    pub(crate) fn take_storable(&self) -> Vec<(PartitionKey, i64)> {
        let mut state = self.lock();
        state
            .partitions
            .iter_mut()
            .filter_map(|(k, p)| p.storable.take().map(|o| (k.clone(), o)))
            .collect()
    }

    /// Waits until the given partitions (all, if `None`) have nothing pending, an output failed,
    /// or `timeout` passed. Returns whether everything settled.
    pub(crate) fn wait_settled(&self, keys: Option<&[PartitionKey]>, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            let busy = |s: &State| match keys {
                Some(keys) => keys
                    .iter()
                    .any(|k| s.partitions.get(k).is_some_and(|p| !p.pending.is_empty())),
                None => s.partitions.values().any(|p| !p.pending.is_empty()),
            };
            if !busy(&state) {
                return true;
            }
            let now = Instant::now();
            if state.failed.is_some() || now >= deadline {
                return false;
            }
            state = self
                .settled
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Stops tracking partitions (after revoke); outstanding acks for them become no-ops.
    pub(crate) fn forget(&self, keys: &[PartitionKey]) {
        let mut state = self.lock();
        for k in keys {
            state.partitions.remove(k);
        }
    }

    /// Number of records handed out and not yet behind the storable position.
    pub(crate) fn in_flight(&self) -> usize {
        self.lock()
            .partitions
            .values()
            .map(|p| p.pending.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: i32) -> PartitionKey {
        (Arc::from("t"), p)
    }

    #[test]
    fn stores_only_the_contiguous_done_prefix_per_partition() {
        let t = Arc::new(Tracker::new(false));
        let a: Vec<Ack> = (10..15).map(|o| t.track(key(0), o)).collect();
        let b = t.track(key(1), 7);
        let mut a = a.into_iter();
        let (a10, a11, a12, a13, a14) = (
            a.next().unwrap(),
            a.next().unwrap(),
            a.next().unwrap(),
            a.next().unwrap(),
            a.next().unwrap(),
        );
        drop(a12);
        drop(a11);
        assert!(t.take_storable().is_empty(), "10 is still pending");
        drop(a10);
        assert_eq!(t.take_storable(), vec![(key(0), 13)]);
        drop(b);
        drop(a14);
        assert_eq!(t.take_storable(), vec![(key(1), 8)]);
        drop(a13);
        assert_eq!(t.take_storable(), vec![(key(0), 15)]);
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn a_clone_keeps_the_record_pending() {
        let t = Arc::new(Tracker::new(false));
        let ack = t.track(key(0), 1);
        let held_by_window = ack.clone();
        drop(ack);
        assert!(t.take_storable().is_empty());
        drop(held_by_window);
        assert_eq!(t.take_storable(), vec![(key(0), 2)]);
    }

    #[test]
    fn a_failed_output_blocks_the_partition_and_is_reported() {
        let t = Arc::new(Tracker::new(false));
        let first = t.track(key(0), 1);
        let second = t.track(key(0), 2);
        first.fail();
        drop(first);
        drop(second);
        assert!(
            t.take_storable().is_empty(),
            "nothing past a failed record is stored"
        );
        assert_eq!(t.failure(), Some((key(0), 1)));
        assert!(
            !t.wait_settled(None, Duration::from_secs(5)),
            "a failure ends the wait at once"
        );
    }

    #[test]
    fn explicit_resume_points_store_only_positions_a_replay_may_start_from() {
        let t = Arc::new(Tracker::new(true));
        let acks: Vec<Ack> = (0..5).map(|o| t.track(key(0), o)).collect();
        acks[0].mark_resume_point();
        acks[3].mark_resume_point();
        let mut acks = acks.into_iter();
        drop(acks.next());
        assert_eq!(
            t.take_storable(),
            vec![],
            "0 is a resume point but 1 and 2 are not"
        );
        drop(acks.next());
        drop(acks.next());
        assert_eq!(t.take_storable(), vec![(key(0), 3)]);
        drop(acks.next());
        drop(acks.next());
        assert_eq!(
            t.take_storable(),
            vec![],
            "the end of what was consumed is not a resume point"
        );
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn an_abandoned_record_is_never_stored() {
        let t = Arc::new(Tracker::new(false));
        let first = t.track(key(0), 1);
        let second = t.track(key(0), 2);
        first.clone().abandon();
        drop(first);
        drop(second);
        assert!(t.take_storable().is_empty());
        assert_eq!(t.in_flight(), 2);
    }

    #[test]
    fn revoked_partitions_ignore_late_acks() {
        let t = Arc::new(Tracker::new(false));
        let ack = t.track(key(3), 5);
        t.forget(&[key(3)]);
        drop(ack);
        assert!(t.take_storable().is_empty());
    }

    #[test]
    fn wait_settled_returns_when_acks_arrive_from_another_thread() {
        let t = Arc::new(Tracker::new(false));
        let ack = t.track(key(0), 1);
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(ack);
        });
        assert!(t.wait_settled(Some(&[key(0)]), Duration::from_secs(10)));
        h.join().unwrap();
    }

    /// Any order of acks, with some outputs failing: what is stored is always exactly the
    /// contiguous acked prefix of each partition, never beyond a failed or pending record.
    #[test]
    fn stored_offsets_are_the_contiguous_acked_prefix_for_random_ack_orders() {
        use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};
        for seed in 0..300 {
            let mut rng = StdRng::seed_from_u64(seed);
            let t = Arc::new(Tracker::new(false));
            let mut acks: Vec<(i32, i64, Ack)> = Vec::new();
            let mut next = [0i64; 3];
            for _ in 0..rng.random_range(1..60) {
                let p = rng.random_range(0..3);
                // Offsets grow per partition, with gaps (compaction, control records).
                next[p as usize] += rng.random_range(1..3);
                acks.push((p, next[p as usize], t.track(key(p), next[p as usize])));
            }
            let tracked: Vec<(i32, i64)> = acks.iter().map(|(p, o, _)| (*p, *o)).collect();
            acks.shuffle(&mut rng);
            let mut done: Vec<(i32, i64)> = Vec::new();
            let mut failed: Vec<(i32, i64)> = Vec::new();
            let mut stored: std::collections::HashMap<i32, i64> = Default::default();
            for (p, o, ack) in acks {
                if rng.random_bool(0.05) {
                    ack.fail();
                    failed.push((p, o));
                } else {
                    done.push((p, o));
                }
                drop(ack);
                for ((_, partition), offset) in t.take_storable() {
                    let previous = stored.insert(partition, offset);
                    assert!(
                        previous.is_none_or(|prev| prev < offset),
                        "seed {seed}: stored offsets go back"
                    );
                }
                for p in 0..3 {
                    // Expected: the position after the longest prefix of this partition's
                    // records that are all done: the next record's offset, or the last + 1.
                    let own: Vec<i64> = tracked
                        .iter()
                        .filter(|(q, _)| *q == p)
                        .map(|(_, o)| *o)
                        .collect();
                    let prefix = own.iter().take_while(|o| done.contains(&(p, **o))).count();
                    let expected = match (prefix, own.get(prefix)) {
                        (0, _) => None,
                        (_, Some(next)) => Some(*next),
                        (_, None) => Some(own[prefix - 1] + 1),
                    };
                    assert_eq!(
                        stored.get(&p).copied(),
                        expected,
                        "seed {seed}, partition {p}"
                    );
                }
            }
            assert_eq!(t.failure().is_some(), !failed.is_empty(), "seed {seed}");
        }
    }
}
