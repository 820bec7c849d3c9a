//! `metrics.v1`: one closed window's quality aggregates for one tenant, published by the windows
//! stage and read by the trigger gate and the panel.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::validate_tenant_id;
use crate::{Reject, Schema};

/// Aggregates of one tenant's events in one event-time window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowMetrics {
    pub tenant_id: String,
    /// Window kind as named in the pipeline, e.g. `tumbling_1h`, `hopping_24h`.
    pub window: String,
    /// Inclusive start and exclusive end, event time.
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    /// Retrieval events in the window, scored or not.
    pub retrieval_events: u64,
    /// Retrieval events that carried judgments and so have an nDCG.
    pub judged_events: u64,
    /// Mean, median and 10th percentile (continuous) of per-event nDCG@k; absent without judged
    /// events.
    pub ndcg_mean: Option<f64>,
    pub ndcg_p50: Option<f64>,
    pub ndcg_p10: Option<f64>,
    pub answers: u64,
    /// Answers that fell back to an external LLM.
    pub fallbacks: u64,
    /// fallbacks / answers; absent without answers.
    pub fallback_rate: Option<f64>,
    pub confidence_mean: Option<f64>,
}

impl WindowMetrics {
    /// Record key on `metrics.v1`: the same window always gets the same key, so a replayed result
    /// replaces, never duplicates, the first one on a compacted topic.
    pub fn key(&self) -> String {
        format!(
            "{}/{}/{}",
            self.tenant_id,
            self.window,
            self.window_start.format("%Y-%m-%dT%H:%M:%SZ")
        )
    }
}

fn unit_interval(path: &str, value: Option<f64>) -> Result<(), Reject> {
    match value {
        Some(v) if !(v.is_finite() && (0.0..=1.0).contains(&v)) => Err(Reject::new(
            path,
            format!("{path} must be within 0..=1, got {v}"),
        )),
        _ => Ok(()),
    }
}

impl Schema for WindowMetrics {
    const NAME: &'static str = "metrics.v1";

    fn validate(&self) -> Result<(), Reject> {
        validate_tenant_id(&self.tenant_id)?;
        if self.window.is_empty() {
            return Err(Reject::new("window", "window must not be empty"));
        }
        if self.window_end <= self.window_start {
            return Err(Reject::new(
                "window_end",
                "window_end must be after window_start",
            ));
        }
        if self.judged_events > self.retrieval_events {
            return Err(Reject::new(
                "judged_events",
                "more judged events than retrieval events",
            ));
        }
        if self.fallbacks > self.answers {
            return Err(Reject::new("fallbacks", "more fallbacks than answers"));
        }
        unit_interval("ndcg_mean", self.ndcg_mean)?;
        unit_interval("ndcg_p50", self.ndcg_p50)?;
        unit_interval("ndcg_p10", self.ndcg_p10)?;
        unit_interval("fallback_rate", self.fallback_rate)?;
        unit_interval("confidence_mean", self.confidence_mean)
    }
}
