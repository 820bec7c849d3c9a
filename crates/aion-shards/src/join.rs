//! Answers joined with the enriched retrieval they were grounded on (`retrieval_event_id`): a
//! training row gets that retrieval's nDCG and entities when the retrieval is seen within a
//! bounded wait, and is written without them otherwise — held at most `wait`, never dropped.
//!
//! Rows leave in source-offset order per partition (a row waiting for its retrieval holds back
//! the rows behind it): the shard writer's replay check assumes that a committed file's offset
//! range holds every row of that range.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aion_events::{AnswerEvent, EnrichedRetrieval, Term};

/// What a training row learns from its retrieval.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrievalSignals {
    /// nDCG@k of the retrieval, when it was judged.
    pub ndcg: Option<f64>,
    /// The retrieval's entity mentions (terms the NER model found), best first.
    pub entities: Vec<Term>,
}

impl RetrievalSignals {
    pub fn of(event: &EnrichedRetrieval, k: usize, gain: aion_events::ndcg::Gain) -> Self {
        Self {
            ndcg: aion_events::ndcg::ndcg(&event.results, event.judgments.as_deref(), k, gain),
            entities: event
                .entities
                .iter()
                .filter(|t| t.source.contains("ner"))
                .cloned()
                .collect(),
        }
    }
}

/// One row of the training-shard table: an answer and, when known, its retrieval's signals.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingRow {
    pub answer: AnswerEvent,
    pub retrieval: Option<Arc<RetrievalSignals>>,
}

struct Pending<A> {
    offset: i64,
    answer: AnswerEvent,
    ack: A,
    retrieval: Option<Arc<RetrievalSignals>>,
    deadline: Instant,
}

impl<A> Pending<A> {
    fn ready(&self, now: Instant) -> bool {
        self.retrieval.is_some() || self.answer.retrieval_event_id.is_none() || self.deadline <= now
    }
}

/// The join key: a retrieval joins only answers of its own tenant, whatever ids they carry.
fn key(tenant_id: &str, event_id: &str) -> String {
    format!("{tenant_id}\u{0}{event_id}")
}

/// A row ready for the writer: `(source partition, source offset, row, ack)`.
pub type Joined<A> = (i32, i64, TrainingRow, A);

/// The join state: recent retrievals' signals and the answers waiting for theirs.
pub struct Joiner<A> {
    wait: Duration,
    capacity: usize,
    /// Keyed by [`key`] (tenant, retrieval event id), as `waiting` is.
    seen: HashMap<String, Arc<RetrievalSignals>>,
    /// Insertion order of `seen`, oldest first, for eviction at `capacity`.
    order: VecDeque<String>,
    queues: BTreeMap<i32, VecDeque<Pending<A>>>,
    /// Retrieval id → the (partition, offset) of answers waiting for it.
    waiting: HashMap<String, Vec<(i32, i64)>>,
    pub timed_out: u64,
    pub joined: u64,
}

impl<A> Joiner<A> {
    /// `wait`: how long an answer waits for its retrieval (zero: no join). `capacity`: how many
    /// retrievals' signals are remembered for answers that come after them.
    pub fn new(wait: Duration, capacity: usize) -> Self {
        Self {
            wait,
            capacity: capacity.max(1),
            seen: HashMap::new(),
            order: VecDeque::new(),
            queues: BTreeMap::new(),
            waiting: HashMap::new(),
            timed_out: 0,
            joined: 0,
        }
    }

    /// Remembers a retrieval's signals and completes the answers of its tenant waiting for them.
    pub fn retrieval(&mut self, tenant_id: &str, event_id: &str, signals: RetrievalSignals) {
        let signals = Arc::new(signals);
        let event_id = &key(tenant_id, event_id);
        if self
            .seen
            .insert(event_id.to_owned(), signals.clone())
            .is_none()
        {
            self.order.push_back(event_id.to_owned());
            if self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.seen.remove(&old);
                }
            }
        }
        for (partition, offset) in self.waiting.remove(event_id).unwrap_or_default() {
            let Some(queue) = self.queues.get_mut(&partition) else {
                continue;
            };
            if let Ok(i) = queue.binary_search_by_key(&offset, |p| p.offset) {
                queue[i].retrieval = Some(signals.clone());
            }
        }
    }

    /// Queues an answer behind the earlier ones of its partition.
    pub fn answer(
        &mut self,
        partition: i32,
        offset: i64,
        answer: AnswerEvent,
        ack: A,
        now: Instant,
    ) {
        let mut retrieval = None;
        if let Some(id) = &answer.retrieval_event_id {
            let id = key(&answer.tenant_id, id);
            retrieval = self.seen.get(&id).cloned();
            if retrieval.is_none() && !self.wait.is_zero() {
                self.waiting
                    .entry(id)
                    .or_default()
                    .push((partition, offset));
            }
        }
        self.queues
            .entry(partition)
            .or_default()
            .push_back(Pending {
                offset,
                answer,
                ack,
                retrieval,
                deadline: now + self.wait,
            });
    }

    /// Rows that may be written now, per partition in offset order.
    /// At most `max` of them: each batch goes through the name finder before the next is taken.
    pub fn ready(&mut self, now: Instant, max: usize) -> Vec<Joined<A>> {
        self.release(|p| p.ready(now), max)
    }

    /// Whether a row could be released now.
    pub fn has_ready(&self, now: Instant) -> bool {
        self.queues
            .values()
            .any(|q| q.front().is_some_and(|p| p.ready(now)))
    }

    /// Every queued row, joined or not (on a rebalance or before a forced roll).
    pub fn drain(&mut self) -> Vec<Joined<A>> {
        self.release(|_| true, usize::MAX)
    }

    /// Answers queued and not yet released.
    pub fn pending(&self) -> usize {
        self.queues.values().map(VecDeque::len).sum()
    }

    fn release(&mut self, release: impl Fn(&Pending<A>) -> bool, max: usize) -> Vec<Joined<A>> {
        let mut out = Vec::new();
        for (&partition, queue) in &mut self.queues {
            while out.len() < max && queue.front().is_some_and(&release) {
                let Some(p) = queue.pop_front() else { break };
                if let Some(id) = &p.answer.retrieval_event_id {
                    if p.retrieval.is_some() {
                        self.joined += 1;
                    } else {
                        self.timed_out += 1;
                        let id = key(&p.answer.tenant_id, id);
                        if let Some(w) = self.waiting.get_mut(&id) {
                            w.retain(|&(q, o)| (q, o) != (partition, p.offset));
                            if w.is_empty() {
                                self.waiting.remove(&id);
                            }
                        }
                    }
                }
                let row = TrainingRow {
                    answer: p.answer,
                    retrieval: p.retrieval,
                };
                out.push((partition, p.offset, row, p.ack));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(id: &str, retrieval: Option<&str>) -> AnswerEvent {
        serde_json::from_value(serde_json::json!({
            "event_id": id, "tenant_id": "acme", "ts": "2026-11-02T10:00:00Z", "prompt": "p",
            "reply": "r", "confidence": 0.5, "fallback": false, "provider": "local", "model": "m",
            "latency_ms": 1, "retrieval_event_id": retrieval
        }))
        .unwrap()
    }

    fn signals(ndcg: f64) -> RetrievalSignals {
        RetrievalSignals {
            ndcg: Some(ndcg),
            entities: Vec::new(),
        }
    }

    fn ids(rows: &[Joined<()>]) -> Vec<(i64, Option<f64>)> {
        rows.iter()
            .map(|(_, o, r, ())| (*o, r.retrieval.as_ref().and_then(|s| s.ndcg)))
            .collect()
    }

    #[test]
    fn a_waiting_answer_holds_back_its_partition_until_joined_or_timed_out() {
        let t0 = Instant::now();
        let mut j: Joiner<()> = Joiner::new(Duration::from_secs(10), 100);
        j.retrieval("acme", "r0", signals(0.5));
        j.answer(0, 1, answer("a1", Some("r0")), (), t0);
        j.answer(0, 2, answer("a2", Some("r2")), (), t0);
        j.answer(0, 3, answer("a3", None), (), t0);
        j.answer(1, 9, answer("b9", None), (), t0);
        // a1 joined at once, a2 waits, a3 (no retrieval) stays behind a2; partition 1 is free.
        assert_eq!(ids(&j.ready(t0, usize::MAX)), [(1, Some(0.5)), (9, None)]);
        j.retrieval("acme", "r2", signals(0.25));
        assert_eq!(ids(&j.ready(t0, usize::MAX)), [(2, Some(0.25)), (3, None)]);
        j.answer(0, 4, answer("a4", Some("never")), (), t0);
        j.answer(0, 5, answer("a5", Some("r0")), (), t0);
        assert!(j.ready(t0 + Duration::from_secs(9), usize::MAX).is_empty());
        assert_eq!(
            ids(&j.ready(t0 + Duration::from_secs(10), usize::MAX)),
            [(4, None), (5, Some(0.5))]
        );
        assert_eq!((j.joined, j.timed_out, j.pending()), (3, 1, 0));
        assert!(j.waiting.is_empty());
    }

    #[test]
    fn remembered_retrievals_are_bounded_and_drain_releases_everything() {
        let t0 = Instant::now();
        let mut j: Joiner<()> = Joiner::new(Duration::from_secs(10), 2);
        for i in 0..3 {
            j.retrieval("acme", &format!("r{i}"), signals(f64::from(i)));
        }
        j.answer(0, 0, answer("a0", Some("r0")), (), t0);
        j.answer(0, 1, answer("a1", Some("r2")), (), t0);
        assert!(
            j.ready(t0, usize::MAX).is_empty(),
            "r0 was forgotten: a0 waits"
        );
        assert_eq!(ids(&j.drain()), [(0, None), (1, Some(2.0))]);
        assert_eq!(j.pending(), 0);
    }

    #[test]
    fn rows_are_released_in_bounded_batches_in_offset_order() {
        let t0 = Instant::now();
        let mut j: Joiner<()> = Joiner::new(Duration::ZERO, 10);
        for o in 0..5 {
            j.answer(0, o, answer(&format!("a{o}"), None), (), t0);
        }
        assert_eq!(ids(&j.ready(t0, 2)), [(0, None), (1, None)]);
        assert!(j.has_ready(t0));
        assert_eq!(ids(&j.ready(t0, 10)), [(2, None), (3, None), (4, None)]);
        assert!(!j.has_ready(t0));
    }

    #[test]
    fn another_tenants_retrieval_never_joins() {
        let t0 = Instant::now();
        let mut j: Joiner<()> = Joiner::new(Duration::from_secs(10), 10);
        // globex publishes a retrieval under the id acme's answer names.
        j.retrieval("globex", "r0", signals(0.9));
        j.answer(0, 0, answer("a0", Some("r0")), (), t0);
        assert!(
            j.ready(t0, usize::MAX).is_empty(),
            "still waiting for acme's r0"
        );
        j.retrieval("globex", "r0", signals(0.8));
        assert!(j.ready(t0, usize::MAX).is_empty());
        j.retrieval("acme", "r0", signals(0.5));
        assert_eq!(ids(&j.ready(t0, usize::MAX)), [(0, Some(0.5))]);
    }

    #[test]
    fn without_a_wait_nothing_is_held() {
        let t0 = Instant::now();
        let mut j: Joiner<()> = Joiner::new(Duration::ZERO, 10);
        j.answer(0, 0, answer("a0", Some("r0")), (), t0);
        assert_eq!(ids(&j.ready(t0, usize::MAX)), [(0, None)]);
        assert!(j.waiting.is_empty());
    }
}
