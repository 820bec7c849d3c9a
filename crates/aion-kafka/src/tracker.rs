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

    pub fn partition(&self) -> i32 {
        self.0.key.1
    }

    pub fn offset(&self) -> i64 {
        self.0.offset
    }
}

impl Drop for AckInner {
    fn drop(&mut self) {
        if self.failed.load(Ordering::Acquire) {
            self.tracker.fail(&self.key, self.offset);
        } else {
            self.tracker.done(&self.key, self.offset);
        }
    }
}

#[derive(Default)]
struct PartitionState {
    /// Offsets handed out and not yet stored, in consumption order, with their done flag.
    pending: VecDeque<(i64, bool)>,
    /// Highest offset whose record and all predecessors are done, not yet passed to librdkafka.
    storable: Option<i64>,
}

#[derive(Default)]
struct State {
    partitions: HashMap<PartitionKey, PartitionState>,
    failed: Option<(PartitionKey, i64)>,
}

/// Shared between a [`crate::Source`], its rebalance callbacks and every outstanding [`Ack`].
#[derive(Default)]
pub(crate) struct Tracker {
    state: Mutex<State>,
    settled: Condvar,
    any_failed: AtomicBool,
}

impl Tracker {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain bookkeeping behind; keep going with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a record handed to the stage and returns its acknowledgement token.
    pub(crate) fn track(self: &Arc<Self>, key: PartitionKey, offset: i64) -> Ack {
        let mut state = self.lock();
        let p = state.partitions.entry(key.clone()).or_default();
        if p.pending.back().is_some_and(|&(last, _)| last >= offset) {
            // The consumer was repositioned (seek or re-assignment): earlier bookkeeping is void.
            p.pending.clear();
            p.storable = None;
        }
        p.pending.push_back((offset, false));
        drop(state);
        Ack(Arc::new(AckInner {
            tracker: self.clone(),
            key,
            offset,
            failed: AtomicBool::new(false),
        }))
    }

    fn done(&self, key: &PartitionKey, offset: i64) {
        let mut state = self.lock();
        // A revoked partition is no longer tracked: its late acks are ignored (the new owner
        // replays from the last committed offset).
        let Some(p) = state.partitions.get_mut(key) else {
            return;
        };
        if let Ok(i) = p.pending.binary_search_by_key(&offset, |&(o, _)| o) {
            p.pending[i].1 = true;
        }
        while let Some(&(o, true)) = p.pending.front() {
            p.storable = Some(o);
            p.pending.pop_front();
        }
        if p.pending.is_empty() {
            self.settled.notify_all();
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

    /// Offsets ready to be stored (the last done offset of each partition's done prefix).
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

    /// Number of records handed out and not yet acknowledged.
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
        let t = Arc::new(Tracker::default());
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
        assert_eq!(t.take_storable(), vec![(key(0), 12)]);
        drop(b);
        drop(a14);
        assert_eq!(t.take_storable(), vec![(key(1), 7)]);
        drop(a13);
        assert_eq!(t.take_storable(), vec![(key(0), 14)]);
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn a_clone_keeps_the_record_pending() {
        let t = Arc::new(Tracker::default());
        let ack = t.track(key(0), 1);
        let held_by_window = ack.clone();
        drop(ack);
        assert!(t.take_storable().is_empty());
        drop(held_by_window);
        assert_eq!(t.take_storable(), vec![(key(0), 1)]);
    }

    #[test]
    fn a_failed_output_blocks_the_partition_and_is_reported() {
        let t = Arc::new(Tracker::default());
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
    fn revoked_partitions_ignore_late_acks() {
        let t = Arc::new(Tracker::default());
        let ack = t.track(key(3), 5);
        t.forget(&[key(3)]);
        drop(ack);
        assert!(t.take_storable().is_empty());
    }

    #[test]
    fn wait_settled_returns_when_acks_arrive_from_another_thread() {
        let t = Arc::new(Tracker::default());
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
            let t = Arc::new(Tracker::default());
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
                    // Expected: the last offset of the longest prefix of this partition's records
                    // that are all done.
                    let expected = tracked
                        .iter()
                        .filter(|(q, _)| *q == p)
                        .take_while(|r| done.contains(r))
                        .last()
                        .map(|(_, o)| *o);
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
