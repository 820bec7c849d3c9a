//! `retrieval.enriched.v1`: a retrieval event with the terms it is about (from the enricher).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Judgment, RetrievalResult};

/// One scored term of an event: entity mentions weigh 3, keyphrases 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Term {
    /// Lower-cased text.
    pub text: String,
    /// The entity type (of its first mention), or `KEYPHRASE`.
    #[serde(rename = "type")]
    pub kind: String,
    pub score: u32,
    /// `ner`, `keyphrase` or `ner+keyphrase`.
    pub source: String,
}

/// Words that sit inside a person's name without identifying anyone ("Maria da Silva"): the
/// enricher joins name parts across them, the shard stage never redacts them alone.
pub const NAME_PARTICLES: [&str; 8] = ["da", "de", "do", "das", "dos", "van", "von", "del"];

/// One word-level entity the NER model found, with its fine type (GIVEN_NAME and SURNAME, where
/// the terms say PERSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mention {
    /// The words as written.
    pub text: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub score: f32,
}

/// What downstream stages read of an enriched retrieval event; the rest of the original event
/// rides along in the record untouched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrichedRetrieval {
    pub event_id: String,
    pub tenant_id: String,
    pub ts: DateTime<Utc>,
    /// The original query (the shard stage finds names in it to redact from the terms).
    #[serde(default)]
    pub query: String,
    pub entities: Vec<Term>,
    /// Every entity found, word-level (absent in events of older enrichers).
    #[serde(default)]
    pub mentions: Vec<Mention>,
    /// The original event's ranking and judgments, for its nDCG.
    #[serde(default)]
    pub results: Vec<RetrievalResult>,
    #[serde(default)]
    pub judgments: Option<Vec<Judgment>>,
}

impl crate::event::Schema for EnrichedRetrieval {
    const NAME: &'static str = "retrieval.enriched.v1";

    fn validate(&self) -> Result<(), crate::Reject> {
        crate::event::validate_id("event_id", &self.event_id)?;
        crate::validate_tenant_id(&self.tenant_id)
    }
}
