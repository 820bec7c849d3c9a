//! Labelled relevance judgments for later retrievals. A human judged the documents of one
//! retrieval's query; later retrievals of the same tenant and the same *normalised* query that
//! arrive without any judgment of their own are scored with those judgments. Events that carry
//! judgments (a `judgments` list or a `rel` on any result) are left alone: the application's own
//! judgments win.

use std::collections::HashMap;

use aion_events::{Judgment, LabelEvent, RetrievalEvent};
use chrono::{DateTime, Utc};

/// The query as judgments are keyed: lower-cased, runs of whitespace collapsed to one space,
/// trimmed, trailing `?`, `!` and `.` dropped. "Qual o  prazo?" and "qual o prazo" meet.
pub fn normalise_query(query: &str) -> String {
    let words: Vec<String> = query.split_whitespace().map(str::to_lowercase).collect();
    words
        .join(" ")
        .trim_end_matches(['?', '!', '.'])
        .trim_end()
        .to_owned()
}

/// What judgments are keyed by: the SHA-256 (hex) of the normalised query. The labels table
/// stores it beside the redacted query, so a query that named a person still finds its
/// judgments while the table holds no name.
pub fn query_key(query: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(normalise_query(query).as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Judgments per (tenant, [`query_key`]); the most recently labelled list wins.
#[derive(Debug, Default, Clone)]
pub struct JudgmentMap {
    map: HashMap<(String, String), (DateTime<Utc>, Vec<Judgment>)>,
}

impl JudgmentMap {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Takes the judgments of `label`, if it has some; returns whether it changed the map.
    pub fn insert(&mut self, label: &LabelEvent) -> bool {
        let (Some(query), Some(judgments)) = (&label.query, &label.judgments) else {
            return false;
        };
        self.insert_keyed(
            &label.tenant_id,
            query_key(query),
            label.labelled_at,
            judgments,
        )
    }

    /// Takes judgments given at `labelled_at` for the query with [`query_key`] `key`; returns
    /// whether they changed the map.
    pub fn insert_keyed(
        &mut self,
        tenant: &str,
        key: String,
        labelled_at: DateTime<Utc>,
        judgments: &[Judgment],
    ) -> bool {
        let key = (tenant.to_owned(), key);
        match self.map.get(&key) {
            Some((at, _)) if *at >= labelled_at => false,
            _ => {
                self.map.insert(key, (labelled_at, judgments.to_vec()));
                true
            }
        }
    }

    /// The judgments for a tenant's query, if any were labelled.
    pub fn get(&self, tenant: &str, query: &str) -> Option<&[Judgment]> {
        if self.map.is_empty() {
            return None;
        }
        self.map
            .get(&(tenant.to_owned(), query_key(query)))
            .map(|(_, j)| j.as_slice())
    }

    /// Gives `event` the labelled judgments of its query when it carries none of its own;
    /// returns whether it did.
    pub fn fill(&self, event: &mut RetrievalEvent) -> bool {
        let judged = event.judgments.is_some() || event.results.iter().any(|r| r.rel.is_some());
        if judged {
            return false;
        }
        match self.get(&event.tenant_id, &event.query) {
            Some(j) => {
                event.judgments = Some(j.to_vec());
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use aion_events::RetrievalResult;

    use super::*;

    fn label(tenant: &str, query: &str, at: &str, rels: &[(&str, u8)]) -> LabelEvent {
        LabelEvent {
            event_id: "r-1".into(),
            tenant_id: tenant.into(),
            labelled_at: at.parse().unwrap(),
            labeller: "ana".into(),
            correct: None,
            query: Some(query.into()),
            judgments: Some(
                rels.iter()
                    .map(|&(d, rel)| Judgment {
                        doc_id: d.into(),
                        rel,
                    })
                    .collect(),
            ),
        }
    }

    fn retrieval(tenant: &str, query: &str, rel: Option<u8>) -> RetrievalEvent {
        RetrievalEvent {
            event_id: "r-2".into(),
            tenant_id: tenant.into(),
            ts: "2026-11-30T12:00:00Z".parse().unwrap(),
            query: query.into(),
            results: vec![RetrievalResult {
                doc_id: "d1".into(),
                rank: 1,
                text: "t".into(),
                score: 1.0,
                rel,
            }],
            judgments: None,
        }
    }

    #[test]
    fn queries_normalise_case_space_and_final_punctuation() {
        assert_eq!(
            normalise_query("  Qual o   PRAZO do reembolso? "),
            "qual o prazo do reembolso"
        );
        assert_eq!(normalise_query("São Paulo!!"), "são paulo");
        assert_eq!(normalise_query("   "), "");
    }

    #[test]
    fn unjudged_retrievals_of_the_same_query_and_tenant_get_the_labels() {
        let mut map = JudgmentMap::new();
        assert!(map.insert(&label(
            "acme",
            "Refund policy?",
            "2026-11-30T10:00:00Z",
            &[("d1", 3)]
        )));
        let mut e = retrieval("acme", "refund  POLICY", None);
        assert!(map.fill(&mut e));
        assert_eq!(e.judgments.as_ref().unwrap()[0].rel, 3);
        // Another tenant, another query, or an event with its own judgment: untouched.
        for mut e in [
            retrieval("globex", "refund policy", None),
            retrieval("acme", "refund status", None),
            retrieval("acme", "refund policy", Some(0)),
        ] {
            assert!(!map.fill(&mut e));
            assert_eq!(e.judgments, None);
        }
    }

    #[test]
    fn the_latest_labelled_judgments_win_whatever_the_arrival_order() {
        let newer = label("acme", "q", "2026-11-30T11:00:00Z", &[("d1", 1)]);
        let older = label("acme", "q", "2026-11-30T10:00:00Z", &[("d1", 3)]);
        for order in [[&newer, &older], [&older, &newer]] {
            let mut map = JudgmentMap::new();
            for l in order {
                map.insert(l);
            }
            assert_eq!(map.get("acme", "Q").unwrap()[0].rel, 1);
        }
        let mut answer_only = newer.clone();
        answer_only.judgments = None;
        assert!(!JudgmentMap::new().insert(&answer_only));
    }
}
