//! Per-partition, in-order offset tracking (the acknowledgement half of the delivery contract).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub(crate) type PartitionKey = (Arc<str>, i32);

/// Acknowledgement token of one consumed record.
///
/// A record is done only when every clone of its token said so with [`Ack::done`] (the sink does
/// it on the broker's delivery report). Clone it when a record fans out to several outputs (each
/// clone is done when its output is durable), keep it inside window state until the window
/// result is durable. [`Ack::fail`] says an output never will be. A token dropped without
/// [`Ack::done`] (an error exit, a panic, state discarded on shutdown or rebalance) leaves its
/// record pending: its offset is never stored by this run and the next one replays it.
pub struct Ack {
    inner: Arc<AckInner>,
    /// Whether this clone reported its output durable.
    done: bool,
}

struct AckInner {
    tracker: Arc<Tracker>,
    key: PartitionKey,
    offset: i64,
    failed: AtomicBool,
    /// A clone was dropped without an outcome.
    unfinished: AtomicBool,
}

impl Clone for Ack {
    /// A new obligation: the clone must be done as well.
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            done: false,
        }
    }
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let AckInner { key, offset, .. } = &*self.inner;
        write!(f, "Ack({}/{}@{offset})", key.0, key.1)
    }
}

impl Ack {
    /// Says this clone's output is durable. The record is done (its offset may be stored) once
    /// every clone said so.
    pub fn done(mut self) {
        self.done = true;
    }

    /// Marks the record as failed: its offset (and every later one on its partition) will not be
    /// stored, and the source reports [`crate::Error::OutputFailed`] so the stage stops and replays.
    pub fn fail(&self) {
        self.inner.failed.store(true, Ordering::Release);
    }

    /// Marks this record as a place a replay may start from (see
    /// [`crate::SourceConfig::explicit_resume_points`]).
    pub fn mark_resume_point(&self) {
        self.inner
            .tracker
            .mark_resume_point(&self.inner.key, self.inner.offset);
    }

    pub fn partition(&self) -> i32 {
        self.inner.key.1
    }

    pub fn offset(&self) -> i64 {
        self.inner.offset
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if !self.done {
            self.inner.unfinished.store(true, Ordering::Release);
        }
    }
}

impl Drop for AckInner {
    fn drop(&mut self) {
        if self.failed.load(Ordering::Acquire) {
            self.tracker.fail(&self.key, self.offset);
        } else if self.unfinished.load(Ordering::Acquire) {
            self.tracker.abandoned(&self.key, self.offset);
        } else {
            self.tracker.done(&self.key, self.offset);
        }
    }
}

#[derive(Clone, Copy)]
struct Pending {
    offset: i64,
    done: bool,
    /// Every token is gone and one was dropped without an outcome: the record will never be done
    /// by this run (it blocks its partition's position, but nobody needs to wait for it).
    abandoned: bool,
    /// A replay may start at this record.
    resume: bool,
}

#[derive(Default)]
struct PartitionState {
    /// Records handed out and not yet behind the stored position, in consumption order.
    pending: VecDeque<Pending>,
    /// Pending records neither done nor abandoned: what a wait for settling waits for.
    unsettled: usize,
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
            p.unsettled = 0;
            p.storable = None;
            p.position = None;
        }
        p.pending.push_back(Pending {
            offset,
            done: false,
            abandoned: false,
            resume: !self.explicit_resume_points,
        });
        p.unsettled += 1;
        drop(state);
        Ack {
            inner: Arc::new(AckInner {
                tracker: self.clone(),
                key,
                offset,
                failed: AtomicBool::new(false),
                unfinished: AtomicBool::new(false),
            }),
            done: false,
        }
    }

    fn done(&self, key: &PartitionKey, offset: i64) {
        self.update(key, offset, |e| e.done = true);
    }

    fn abandoned(&self, key: &PartitionKey, offset: i64) {
        self.update(key, offset, |e| e.abandoned = true);
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
            let e = &mut p.pending[i];
            let was_settled = e.done || e.abandoned;
            change(e);
            if !was_settled && (e.done || e.abandoned) {
                p.unsettled -= 1;
                if p.unsettled == 0 {
                    self.settled.notify_all();
                }
            }
        }
        self.advance(p);
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
            ..
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

    /// Waits until every record of the given partitions (all, if `None`) is done or abandoned, an
    /// output failed, or `timeout` passed. Returns whether everything settled.
    pub(crate) fn wait_settled(&self, keys: Option<&[PartitionKey]>, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            let busy = |s: &State| match keys {
                Some(keys) => keys
                    .iter()
                    .any(|k| s.partitions.get(k).is_some_and(|p| p.unsettled > 0)),
                None => s.partitions.values().any(|p| p.unsettled > 0),
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
        let mut a: Vec<Option<Ack>> = (10..15).map(|o| Some(t.track(key(0), o))).collect();
        let b = t.track(key(1), 7);
        let mut done = |i: usize| a[i].take().unwrap().done();
        done(2);
        done(1);
        assert!(t.take_storable().is_empty(), "10 is still pending");
        done(0);
        assert_eq!(t.take_storable(), vec![(key(0), 13)]);
        b.done();
        done(4);
        assert_eq!(t.take_storable(), vec![(key(1), 8)]);
        done(3);
        assert_eq!(t.take_storable(), vec![(key(0), 15)]);
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn every_clone_must_be_done() {
        let t = Arc::new(Tracker::new(false));
        let ack = t.track(key(0), 1);
        let held_by_window = ack.clone();
        ack.done();
        assert!(t.take_storable().is_empty());
        held_by_window.done();
        assert_eq!(t.take_storable(), vec![(key(0), 2)]);
    }

    #[test]
    fn a_token_dropped_without_an_outcome_leaves_its_record_pending() {
        let t = Arc::new(Tracker::new(false));
        let first = t.track(key(0), 1);
        let second = t.track(key(0), 2);
        // An error exit drops what it holds: one clone of the first record, nothing said.
        drop(first.clone());
        first.done();
        second.done();
        assert!(t.take_storable().is_empty());
        assert_eq!(t.in_flight(), 2);
        assert!(t.failure().is_none(), "pending, not failed");
        let started = Instant::now();
        assert!(t.wait_settled(None, Duration::from_secs(30)));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nobody waits for a record no token can finish"
        );
    }

    #[test]
    fn a_failed_output_blocks_the_partition_and_is_reported() {
        let t = Arc::new(Tracker::new(false));
        let first = t.track(key(0), 1);
        let second = t.track(key(0), 2);
        first.fail();
        first.done();
        second.done();
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
        let mut done = || acks.next().unwrap().done();
        done();
        assert_eq!(
            t.take_storable(),
            vec![],
            "0 is a resume point but 1 and 2 are not"
        );
        done();
        done();
        assert_eq!(t.take_storable(), vec![(key(0), 3)]);
        done();
        done();
        assert_eq!(
            t.take_storable(),
            vec![],
            "the end of what was consumed is not a resume point"
        );
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn revoked_partitions_ignore_late_acks() {
        let t = Arc::new(Tracker::new(false));
        let ack = t.track(key(3), 5);
        t.forget(&[key(3)]);
        ack.done();
        assert!(t.take_storable().is_empty());
    }

    #[test]
    fn wait_settled_returns_when_acks_arrive_from_another_thread() {
        let t = Arc::new(Tracker::new(false));
        let ack = t.track(key(0), 1);
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            ack.done();
        });
        assert!(t.wait_settled(Some(&[key(0)]), Duration::from_secs(10)));
        h.join().unwrap();
    }

    /// Any order of outcomes (done, done by every clone, failed, dropped without a word, one clone
    /// of several dropped): what is stored is always exactly the contiguous prefix of each
    /// partition's records that were explicitly done, never beyond a failed or pending record.
    #[test]
    fn stored_offsets_are_the_contiguous_done_prefix_for_random_outcome_orders() {
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
                let ack = t.track(key(p), next[p as usize]);
                // Fan-out: some records go to two outputs, each holding a clone.
                if rng.random_bool(0.2) {
                    acks.push((p, next[p as usize], ack.clone()));
                }
                acks.push((p, next[p as usize], ack));
            }
            let tracked: Vec<(i32, i64)> = {
                let mut v: Vec<(i32, i64)> = acks.iter().map(|(p, o, _)| (*p, *o)).collect();
                v.dedup();
                v
            };
            acks.shuffle(&mut rng);
            // A record counts as done once every clone is done and none failed or was dropped.
            let mut outstanding: HashMap<(i32, i64), usize> = HashMap::new();
            for (p, o, _) in &acks {
                *outstanding.entry((*p, *o)).or_default() += 1;
            }
            let mut spoiled: Vec<(i32, i64)> = Vec::new();
            let mut failed = false;
            let mut stored: HashMap<i32, i64> = HashMap::new();
            for (p, o, ack) in acks {
                match rng.random_range(0..20) {
                    0 => {
                        ack.fail();
                        ack.done();
                        failed = true;
                        spoiled.push((p, o));
                    }
                    1 => {
                        drop(ack);
                        spoiled.push((p, o));
                    }
                    _ => ack.done(),
                }
                *outstanding.get_mut(&(p, o)).unwrap() -= 1;
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
                    let is_done =
                        |o: &i64| outstanding[&(p, *o)] == 0 && !spoiled.contains(&(p, *o));
                    let prefix = own.iter().take_while(|o| is_done(o)).count();
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
            assert_eq!(t.failure().is_some(), failed, "seed {seed}");
        }
    }
}
