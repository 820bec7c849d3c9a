//! nDCG@k of one retrieval event: what the windows aggregate and the training shards record.
//!
//! DCG@k = Σ_{i=1..k} gain(rel_i) / log2(i + 1) over the results in rank order (i is the position,
//! so gaps in rank numbers do not matter). The ideal DCG@k applies the same sum to the judged
//! grades sorted descending. Judgments come from the event's `judgments` list when present (it
//! covers documents that were not retrieved, as trec_eval's qrels do), else from the `rel` of the
//! returned results; a grade in the list wins over a result's own `rel`. Unjudged results gain 0.
//! An event with no judgment at all has no nDCG (it is counted, not scored); one whose judgments
//! are all 0 scores 0, as in trec_eval.
//!
//! Reference semantics: trec_eval's `ndcg_cut.k` (linear gain) and scikit-learn's `ndcg_score`;
//! `scripts/checks/ndcg_reference.py` checks agreement to 1e-9.

use std::collections::HashMap;

use crate::{Judgment, Relevance, RetrievalResult};
use serde::{Deserialize, Serialize};

/// How a relevance grade becomes gain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Gain {
    /// gain = rel (trec_eval's default).
    Linear,
    /// gain = 2^rel − 1 (rewards highly relevant documents more).
    Exponential,
}

impl Gain {
    fn of(self, rel: Relevance) -> f64 {
        match self {
            Gain::Linear => f64::from(rel),
            Gain::Exponential => f64::from((1u32 << rel) - 1),
        }
    }
}

fn discounted(gains: impl Iterator<Item = f64>, k: usize) -> f64 {
    gains
        .take(k)
        .enumerate()
        .map(|(i, g)| g / (i as f64 + 2.0).log2())
        .sum()
}

/// nDCG@k of a retrieval event's `results` under its `judgments`, or `None` when the event
/// carries no judgment.
pub fn ndcg(
    results: &[RetrievalResult],
    judgments: Option<&[Judgment]>,
    k: usize,
    gain: Gain,
) -> Option<f64> {
    let mut grades: HashMap<&str, Relevance> = results
        .iter()
        .filter_map(|r| r.rel.map(|rel| (r.doc_id.as_str(), rel)))
        .collect();
    if let Some(judgments) = judgments {
        grades.extend(judgments.iter().map(|j| (j.doc_id.as_str(), j.rel)));
    }
    if grades.is_empty() {
        return None;
    }
    let mut ranked: Vec<_> = results.iter().collect();
    ranked.sort_by_key(|r| r.rank);
    let dcg = discounted(
        ranked
            .iter()
            .map(|r| grades.get(r.doc_id.as_str()).map_or(0.0, |&g| gain.of(g))),
        k,
    );
    let mut ideal: Vec<Relevance> = grades.into_values().collect();
    ideal.sort_unstable_by(|a, b| b.cmp(a));
    let idcg = discounted(ideal.into_iter().map(|g| gain.of(g)), k);
    Some(if idcg > 0.0 { dcg / idcg } else { 0.0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RetrievalEvent;

    fn ndcg(e: &RetrievalEvent, k: usize, gain: Gain) -> Option<f64> {
        super::ndcg(&e.results, e.judgments.as_deref(), k, gain)
    }

    fn event(rels: &[Option<u8>], judgments: Option<Vec<(&str, u8)>>) -> RetrievalEvent {
        RetrievalEvent {
            event_id: "e".into(),
            tenant_id: "t".into(),
            ts: chrono::DateTime::UNIX_EPOCH,
            query: "q".into(),
            results: rels
                .iter()
                .enumerate()
                .map(|(i, &rel)| RetrievalResult {
                    doc_id: format!("d{i}"),
                    rank: i as u32 + 1,
                    text: String::new(),
                    score: 0.0,
                    rel,
                })
                .collect(),
            judgments: judgments.map(|js| {
                js.into_iter()
                    .map(|(d, rel)| Judgment {
                        doc_id: d.into(),
                        rel,
                    })
                    .collect()
            }),
        }
    }

    const L2: fn(f64) -> f64 = f64::log2;

    #[test]
    fn hand_computed_linear_and_exponential() {
        // rels 3, 2, 0, 1 in rank order; ideal 3, 2, 1, 0.
        let e = event(&[Some(3), Some(2), Some(0), Some(1)], None);
        let dcg = 3.0 + 2.0 / L2(3.0) + 1.0 / L2(5.0);
        let idcg = 3.0 + 2.0 / L2(3.0) + 1.0 / L2(4.0);
        assert!((ndcg(&e, 10, Gain::Linear).unwrap() - dcg / idcg).abs() < 1e-12);
        let dcg = 7.0 + 3.0 / L2(3.0) + 1.0 / L2(5.0);
        let idcg = 7.0 + 3.0 / L2(3.0) + 1.0 / L2(4.0);
        assert!((ndcg(&e, 10, Gain::Exponential).unwrap() - dcg / idcg).abs() < 1e-12);
    }

    #[test]
    fn cut_at_k_applies_to_both_sums() {
        let e = event(&[Some(0), Some(3)], None);
        assert_eq!(ndcg(&e, 1, Gain::Linear), Some(0.0));
        let expected = (3.0 / L2(3.0)) / 3.0;
        assert!((ndcg(&e, 2, Gain::Linear).unwrap() - expected).abs() < 1e-12);
    }

    #[test]
    fn judgment_list_adds_unretrieved_documents_to_the_ideal() {
        let e = event(&[Some(3)], Some(vec![("d0", 3), ("elsewhere", 3)]));
        let expected = 3.0 / (3.0 + 3.0 / L2(3.0));
        assert!((ndcg(&e, 10, Gain::Linear).unwrap() - expected).abs() < 1e-12);
    }

    #[test]
    fn judgment_list_grade_wins_and_unjudged_results_gain_nothing() {
        let e = event(&[Some(1), None], Some(vec![("d0", 3), ("d1", 0)]));
        assert_eq!(ndcg(&e, 10, Gain::Linear), Some(1.0));
        let e = event(&[None, Some(2)], None);
        let expected = (2.0 / L2(3.0)) / 2.0;
        assert!((ndcg(&e, 10, Gain::Linear).unwrap() - expected).abs() < 1e-12);
    }

    #[test]
    fn unjudged_events_are_not_scored_and_all_zero_judgments_score_zero() {
        assert_eq!(ndcg(&event(&[None, None], None), 10, Gain::Linear), None);
        assert_eq!(
            ndcg(&event(&[Some(0), Some(0)], None), 10, Gain::Linear),
            Some(0.0)
        );
    }

    #[test]
    fn ranks_not_input_order_decide_positions() {
        let mut e = event(&[Some(0), Some(3)], None);
        e.results[0].rank = 7;
        e.results[1].rank = 2;
        assert_eq!(ndcg(&e, 10, Gain::Linear), Some(1.0));
    }
}
