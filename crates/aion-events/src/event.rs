use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::decode::Reject;

/// Highest judged relevance grade. Grades are integers 0..=3 (0 = not relevant, 3 = perfect), the
/// TREC convention: it is what trec_eval/pytrec_eval read, linear gain equals the grade, and
/// exponential gain 2^rel − 1 stays an integer. A 0..1 float would be a score, not a judgment.
pub const MAX_RELEVANCE: u8 = 3;

/// A judged relevance grade, 0..=[`MAX_RELEVANCE`].
pub type Relevance = u8;

/// As the schemas' `maxLength`: characters, not bytes.
const MAX_ID_CHARS: usize = 128;
const MAX_TENANT_BYTES: usize = 64;

/// A topic's payload type: its schema name and the checks JSON decoding alone cannot express.
pub trait Schema: Serialize + DeserializeOwned {
    /// Schema id, e.g. `retrieval.v1`; the file `schemas/<NAME>.schema.json` describes it.
    const NAME: &'static str;
    /// Semantic validation after a successful decode.
    fn validate(&self) -> Result<(), Reject>;
}

/// One retrieval made by the assistant: the query and the ranked results it got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrievalEvent {
    /// Unique id of this event (dedupe key downstream).
    pub event_id: String,
    /// Tenant the query belongs to; also a storage partition name, hence [`validate_tenant_id`].
    pub tenant_id: String,
    /// Event time: when the retrieval happened, not when it reached Kafka.
    pub ts: DateTime<Utc>,
    /// The user's query.
    pub query: String,
    /// Results as ranked by the retriever.
    pub results: Vec<RetrievalResult>,
    /// Full relevance judgment list for the query, including documents not retrieved; the ideal DCG
    /// is computed from it when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judgments: Option<Vec<Judgment>>,
}

/// One ranked result of a retrieval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrievalResult {
    /// Document or chunk id.
    pub doc_id: String,
    /// 1-based position in the ranking; unique within the event.
    pub rank: u32,
    /// Passage text shown to the model.
    pub text: String,
    /// Retriever score (any finite scale).
    pub score: f64,
    /// Judged relevance of this result, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rel: Option<Relevance>,
}

/// A relevance judgment of one document for the event's query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Judgment {
    pub doc_id: String,
    pub rel: Relevance,
}

/// One answer produced for a user: by the local model, or by the external fallback LLM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerEvent {
    pub event_id: String,
    pub tenant_id: String,
    /// Event time of the answer.
    pub ts: DateTime<Utc>,
    /// What the user asked (becomes the training instruction).
    pub prompt: String,
    /// What the user got (becomes the training response).
    pub reply: String,
    /// The local model's confidence in 0..=1.
    pub confidence: f64,
    /// True when the answer had to fall back to the external LLM.
    pub fallback: bool,
    /// Who produced the reply, e.g. `local` or the fallback vendor.
    pub provider: String,
    /// Model that produced the reply.
    pub model: String,
    /// End-to-end answer latency.
    pub latency_ms: u64,
    /// The retrieval this answer was grounded on, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrieval_event_id: Option<String>,
}

impl Schema for RetrievalEvent {
    const NAME: &'static str = "retrieval.v1";

    fn validate(&self) -> Result<(), Reject> {
        validate_id("event_id", &self.event_id)?;
        validate_tenant_id(&self.tenant_id)?;
        non_blank("query", &self.query)?;
        if let Some((i, j)) = first_duplicate(self.results.iter().map(|r| r.rank)) {
            let rank = self.results[i].rank;
            return Err(Reject::new(
                format!("results[{i}].rank"),
                format!("duplicate rank {rank} (also at results[{j}])"),
            ));
        }
        if let Some((i, j)) = first_duplicate(self.results.iter().map(|r| r.doc_id.as_str())) {
            return Err(Reject::new(
                format!("results[{i}].doc_id"),
                format!("duplicate doc_id (also at results[{j}])"),
            ));
        }
        for (i, r) in self.results.iter().enumerate() {
            // Paths are formatted only on failure: this loop runs for every result of every event.
            let at = |field: &str, message: String| {
                Reject::new(format!("results[{i}].{field}"), message)
            };
            if r.rank == 0 {
                return Err(at("rank", "rank must be >= 1".into()));
            }
            check_id(&r.doc_id).map_err(|m| at("doc_id", m))?;
            if !r.score.is_finite() {
                return Err(at("score", "score must be a finite number".into()));
            }
            if let Some(rel) = r.rel {
                check_rel(rel).map_err(|m| at("rel", m))?;
            }
        }
        if let Some(judgments) = &self.judgments {
            if let Some((i, k)) = first_duplicate(judgments.iter().map(|j| j.doc_id.as_str())) {
                return Err(Reject::new(
                    format!("judgments[{i}].doc_id"),
                    format!("duplicate doc_id (also at judgments[{k}])"),
                ));
            }
            for (i, j) in judgments.iter().enumerate() {
                let at = |field: &str, message: String| {
                    Reject::new(format!("judgments[{i}].{field}"), message)
                };
                check_id(&j.doc_id).map_err(|m| at("doc_id", m))?;
                check_rel(j.rel).map_err(|m| at("rel", m))?;
            }
        }
        Ok(())
    }
}

impl Schema for AnswerEvent {
    const NAME: &'static str = "answer.v1";

    fn validate(&self) -> Result<(), Reject> {
        validate_id("event_id", &self.event_id)?;
        validate_tenant_id(&self.tenant_id)?;
        non_blank("prompt", &self.prompt)?;
        if !(self.confidence.is_finite() && (0.0..=1.0).contains(&self.confidence)) {
            return Err(Reject::new(
                "confidence",
                format!("confidence must be within 0..=1, got {}", self.confidence),
            ));
        }
        non_blank("provider", &self.provider)?;
        non_blank("model", &self.model)?;
        if let Some(id) = &self.retrieval_event_id {
            validate_id("retrieval_event_id", id)?;
        }
        Ok(())
    }
}

/// A tenant id names a storage partition (`tenant_id=<id>/`), so it must never be able to leave it:
/// 1..=64 bytes of `[A-Za-z0-9_.-]`, starting with a letter or digit, without `..`.
pub fn validate_tenant_id(tenant: &str) -> Result<(), Reject> {
    let bad = |msg: String| Err(Reject::new("tenant_id", msg));
    if tenant.is_empty() {
        return bad("tenant_id must not be empty".into());
    }
    if tenant.len() > MAX_TENANT_BYTES {
        return bad(format!("tenant_id longer than {MAX_TENANT_BYTES} bytes"));
    }
    if let Some(c) = tenant
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return bad(format!(
            "tenant_id contains {c:?}; allowed: ASCII letters, digits, '_', '.', '-'"
        ));
    }
    if !tenant.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return bad("tenant_id must start with a letter or digit".into());
    }
    if tenant.contains("..") {
        return bad("tenant_id must not contain '..'".into());
    }
    Ok(())
}

/// The first item equal to an earlier one, as (its index, the earlier index). This runs for every
/// event: short lists (the common case) are compared pairwise without allocating, long ones sorted.
pub(crate) fn first_duplicate<T, I>(items: I) -> Option<(usize, usize)>
where
    T: Ord + Copy,
    I: Iterator<Item = T> + Clone,
{
    const PAIRWISE_UP_TO: usize = 32;
    if items.clone().nth(PAIRWISE_UP_TO).is_none() {
        return items
            .clone()
            .enumerate()
            .find_map(|(i, a)| items.clone().take(i).position(|b| b == a).map(|j| (i, j)));
    }
    let mut sorted: Vec<(T, usize)> = items.enumerate().map(|(i, v)| (v, i)).collect();
    sorted.sort_unstable();
    sorted
        .windows(2)
        .filter(|w| w[0].0 == w[1].0)
        .map(|w| (w[1].1, w[0].1))
        .min()
}

pub(crate) fn validate_id(path: &str, id: &str) -> Result<(), Reject> {
    check_id(id).map_err(|m| Reject::new(path, m))
}

fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("must not be empty".into());
    }
    // Every character takes a byte at least: an id of at most 128 bytes needs no counting.
    if id.len() > MAX_ID_CHARS && id.chars().count() > MAX_ID_CHARS {
        return Err(format!("longer than {MAX_ID_CHARS} characters"));
    }
    // Printable ASCII (nearly every id) settles it without decoding characters.
    if !id.bytes().all(|b| (0x20..0x7f).contains(&b)) && id.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

pub(crate) fn check_rel(rel: Relevance) -> Result<(), String> {
    if rel > MAX_RELEVANCE {
        return Err(format!("relevance {rel} out of range 0..={MAX_RELEVANCE}"));
    }
    Ok(())
}

fn non_blank(path: &str, s: &str) -> Result<(), Reject> {
    if s.trim().is_empty() {
        return Err(Reject::new(path, "must not be empty"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::first_duplicate;

    #[test]
    fn first_duplicate_short_and_long_lists_agree() {
        for n in [0usize, 1, 5, 33, 200] {
            let mut v: Vec<u32> = (0..n as u32).collect();
            assert_eq!(first_duplicate(v.iter().copied()), None);
            if n > 3 {
                v[n - 1] = 2;
                v[n - 2] = 1;
                assert_eq!(
                    first_duplicate(v.iter().copied()),
                    Some((n - 2, 1)),
                    "n = {n}"
                );
            }
        }
    }
}
