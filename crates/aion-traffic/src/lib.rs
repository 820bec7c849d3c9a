//! Synthetic assistant traffic: retrieval and answer events in Brazilian Portuguese and English
//! that mention people, companies, places, products, e-mails and CPF numbers, with graded
//! relevance judgments, confidences and fallbacks.
//!
//! Deterministic for a seed: the same configuration yields the same events (and event ids), so a
//! re-run is deduplicated downstream. The degradation scenario lowers retrieval quality and raises
//! the fallback rate of chosen tenants from a chosen point of the stream on.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod corpus;
mod text;

use aion_events::{topics, AnswerEvent, Judgment, RetrievalEvent, RetrievalResult};
use chrono::{DateTime, Duration, Utc};
use rand::{rngs::StdRng, Rng, SeedableRng};

pub use corpus::{Corpus, REALISTIC_EXPONENT, REALISTIC_PASSAGES};
pub use text::{cpf, entities, people};

/// What the generator produces.
#[derive(Debug, Clone)]
pub struct TrafficConfig {
    pub seed: u64,
    pub tenants: Vec<String>,
    /// Number of events (retrievals and answers together).
    pub count: u64,
    /// Event time of the first event.
    pub start: DateTime<Utc>,
    /// Event time the whole stream covers; events are spread evenly over it.
    pub span: Duration,
    pub scenario: Scenario,
    /// Fraction of events published as broken payloads (exercises the dead-letter path).
    pub invalid_fraction: f64,
    /// Fraction of events whose event time lags by up to two hours (out of order / late).
    pub late_fraction: f64,
}

/// How quality evolves over the stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Scenario {
    /// Healthy throughout: mean nDCG ≈ 0.9, fallback rate ≈ 10 %.
    Steady,
    /// From `at` (fraction 0..=1 of the stream) on, `tenants` degrade: retrieval rankings become
    /// noisy (nDCG well below 0.82) and the fallback rate rises to ≈ 50 %.
    Degrade { at: f64, tenants: Vec<String> },
    /// From `at` on, retrievals whose query mentions `entity` (case-insensitive; one of
    /// [`entities`]) degrade in every tenant — noisy rankings, lower confidence — while every
    /// other query stays healthy: the case the per-entity quality breakdown must single out.
    DegradeEntity { at: f64, entity: String },
}

/// One record to publish.
#[derive(Debug, Clone)]
pub struct Payload {
    pub topic: &'static str,
    /// The tenant id: keeps a tenant's events in order on one partition.
    pub key: String,
    pub bytes: Vec<u8>,
    /// False for the deliberately broken payloads.
    pub valid: bool,
}

/// Iterator over the configured stream.
pub struct Generator {
    config: TrafficConfig,
    rng: StdRng,
    index: u64,
    /// The answer that follows the last retrieval.
    pending_answer: Option<AnswerEvent>,
    /// Where result passages come from (else each is written for its query).
    corpus: Option<Corpus>,
}

impl Generator {
    pub fn new(config: TrafficConfig) -> Self {
        let rng = StdRng::seed_from_u64(config.seed);
        Self {
            config,
            rng,
            index: 0,
            pending_answer: None,
            corpus: None,
        }
    }

    /// Results retrieved from `corpus` (by its popularity law) instead of passages written for
    /// each query: the traffic repeats passages the way real retrieval does.
    pub fn with_corpus(mut self, corpus: Corpus) -> Self {
        self.corpus = Some(corpus);
        self
    }

    fn event_time(&mut self) -> DateTime<Utc> {
        let step = self.config.span.num_milliseconds() as f64 / self.config.count.max(1) as f64;
        let mut ts = self.config.start + Duration::milliseconds((self.index as f64 * step) as i64);
        if self
            .rng
            .random_bool(self.config.late_fraction.clamp(0.0, 1.0))
        {
            ts -= Duration::seconds(self.rng.random_range(60..7200));
        }
        ts
    }

    fn degraded(&self, tenant: &str, query: &str) -> bool {
        let from = |at: &f64| self.index as f64 >= at * self.config.count as f64;
        match &self.config.scenario {
            Scenario::Steady => false,
            Scenario::Degrade { at, tenants } => from(at) && tenants.iter().any(|t| t == tenant),
            Scenario::DegradeEntity { at, entity } => {
                from(at) && query.to_lowercase().contains(&entity.to_lowercase())
            }
        }
    }

    fn retrieval(&mut self, tenant: String, ts: DateTime<Utc>) -> (RetrievalEvent, AnswerEvent) {
        let seq = self.index;
        let topic = text::Topic::pick(&mut self.rng);
        let query = topic.query(&mut self.rng);
        let degraded = self.degraded(&tenant, &query);
        // Candidate documents with their grades: a few relevant, most not.
        let n = self.rng.random_range(5..=10usize);
        let mut drawn = std::collections::HashSet::new();
        let mut docs: Vec<(String, u8, String)> = (0..n + 2)
            .map(|i| {
                let grade = match i {
                    0 => 3,
                    1 => 2,
                    2 | 3 => 1,
                    _ => 0,
                };
                if let Some(corpus) = &self.corpus {
                    // Distinct passages: a result list names a document once.
                    let id = std::iter::repeat_with(|| corpus.draw(&mut self.rng))
                        .find(|id| drawn.insert(*id))
                        .unwrap_or_default();
                    return (format!("kb-{id}"), grade, corpus.passage(id));
                }
                let doc = format!(
                    "kb-{}-{}#{}",
                    topic.slug(),
                    self.rng.random_range(1..400),
                    i
                );
                (doc, grade, topic.passage(&mut self.rng, grade))
            })
            .collect();
        // Ranking: grade plus noise; degraded retrieval is mostly noise.
        let noise = if degraded { 6.0 } else { 1.1 };
        let mut keyed: Vec<(f64, usize)> = docs
            .iter()
            .enumerate()
            .map(|(i, d)| (d.1 as f64 + self.rng.random::<f64>() * noise, i))
            .collect();
        keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
        let judged = self.rng.random_bool(0.85);
        let results: Vec<RetrievalResult> = keyed
            .iter()
            .take(n)
            .enumerate()
            .map(|(rank, &(key, i))| RetrievalResult {
                doc_id: docs[i].0.clone(),
                rank: rank as u32 + 1,
                text: std::mem::take(&mut docs[i].2),
                score: (key * 1000.0).round() / 1000.0,
                rel: judged.then_some(docs[i].1),
            })
            .collect();
        let judgments = judged.then(|| {
            docs.iter()
                .filter(|d| d.1 > 0)
                .map(|d| Judgment {
                    doc_id: d.0.clone(),
                    rel: d.1,
                })
                .collect()
        });
        let retrieval = RetrievalEvent {
            event_id: format!("{tenant}-{seq:09}-r"),
            tenant_id: tenant.clone(),
            ts,
            query: query.clone(),
            results,
            judgments,
        };
        let confidence: f64 = (if degraded { 0.5 } else { 0.78 }
            + self.rng.random_range(-0.35..0.35f64))
        .clamp(0.0, 1.0);
        let confidence = (confidence * 1000.0).round() / 1000.0;
        let fallback = confidence < 0.5;
        let answer = AnswerEvent {
            event_id: format!("{tenant}-{seq:09}-a"),
            tenant_id: tenant,
            ts: ts + Duration::milliseconds(self.rng.random_range(300..2500)),
            prompt: query,
            reply: topic.reply(&mut self.rng),
            confidence,
            fallback,
            provider: if fallback { "external" } else { "local" }.into(),
            model: if fallback {
                "fallback-llm"
            } else {
                "smollm2-135m-instruct"
            }
            .into(),
            latency_ms: if fallback {
                self.rng.random_range(900..4000)
            } else {
                self.rng.random_range(150..900)
            },
            retrieval_event_id: Some(retrieval.event_id.clone()),
        };
        (retrieval, answer)
    }
}

impl Iterator for Generator {
    type Item = Payload;

    fn next(&mut self) -> Option<Payload> {
        if self.index >= self.config.count {
            return None;
        }
        let (topic, tenant, mut bytes) = match self.pending_answer.take() {
            Some(answer) => (
                topics::ANSWER,
                answer.tenant_id.clone(),
                serde_json::to_vec(&answer).unwrap_or_default(),
            ),
            None => {
                let tenant = self.config.tenants
                    [self.rng.random_range(0..self.config.tenants.len())]
                .clone();
                let ts = self.event_time();
                let (retrieval, answer) = self.retrieval(tenant.clone(), ts);
                self.pending_answer = Some(answer);
                (
                    topics::RETRIEVAL,
                    tenant,
                    serde_json::to_vec(&retrieval).unwrap_or_default(),
                )
            }
        };
        self.index += 1;
        let valid = !self
            .rng
            .random_bool(self.config.invalid_fraction.clamp(0.0, 1.0));
        if !valid {
            text::corrupt(&mut bytes, &mut self.rng);
        }
        Some(Payload {
            topic,
            key: tenant,
            bytes,
            valid,
        })
    }
}

#[cfg(test)]
mod tests;
