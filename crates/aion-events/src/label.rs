//! Human labels (`labels.v1`): what a labelling tool sends back for an item of the label queue —
//! the quality of an answer, the relevance of a retrieval's documents, or both.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::decode::Reject;
use crate::event::{check_rel, first_duplicate, validate_id, validate_tenant_id, Schema};
use crate::Judgment;

/// One human label. Key: the tenant id. The labelled item is `event_id`: an answer's id (with
/// `correct`) or a retrieval's id (with `judgments` and the `query` they judge); one record may
/// carry both when the labeller judged an answer and the retrieval it was grounded on under the
/// same id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelEvent {
    /// The labelled answer or retrieval event.
    pub event_id: String,
    pub tenant_id: String,
    /// When the human gave the label (a later label of the same item by the same labeller wins).
    pub labelled_at: DateTime<Utc>,
    /// Who labelled it (a user or tool id; never shown to the model).
    pub labeller: String,
    /// Answer quality: was the reply correct?
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correct: Option<bool>,
    /// The query the judgments are about (required with `judgments`): later retrievals of the same
    /// normalised query that arrive without judgments are scored with these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Relevance judgments (0..=3) of documents for `query`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judgments: Option<Vec<Judgment>>,
}

impl LabelEvent {
    /// The row key of the `labels` table: one label per item, labeller and time.
    pub fn key(&self) -> String {
        format!(
            "{}/{}/{}",
            self.event_id,
            self.labeller,
            self.labelled_at.timestamp_micros()
        )
    }
}

impl Schema for LabelEvent {
    const NAME: &'static str = "labels.v1";

    fn validate(&self) -> Result<(), Reject> {
        validate_id("event_id", &self.event_id)?;
        validate_tenant_id(&self.tenant_id)?;
        validate_id("labeller", &self.labeller)?;
        if self.labeller.trim().is_empty() {
            return Err(Reject::new("labeller", "must not be blank"));
        }
        if self.correct.is_none() && self.judgments.is_none() {
            return Err(Reject::new(
                ".",
                "a label needs `correct`, `judgments` or both",
            ));
        }
        if let Some(judgments) = &self.judgments {
            match &self.query {
                Some(q) if !q.trim().is_empty() => {}
                _ => {
                    return Err(Reject::new(
                        "query",
                        "judgments need the query text they judge",
                    ))
                }
            }
            if judgments.is_empty() {
                return Err(Reject::new("judgments", "must not be empty"));
            }
            if let Some((i, k)) = first_duplicate(judgments.iter().map(|j| j.doc_id.as_str())) {
                return Err(Reject::new(
                    format!("judgments[{i}].doc_id"),
                    format!("duplicate doc_id (also at judgments[{k}])"),
                ));
            }
            for (i, j) in judgments.iter().enumerate() {
                validate_id(&format!("judgments[{i}].doc_id"), &j.doc_id)?;
                check_rel(j.rel).map_err(|m| Reject::new(format!("judgments[{i}].rel"), m))?;
            }
        }
        Ok(())
    }
}
