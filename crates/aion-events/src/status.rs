//! `train.status.v1` (what a training job is doing) and `train.control.v1` (operator requests to
//! a running trainer).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::{validate_id, validate_tenant_id};
use crate::{Reject, Schema};

/// The life of a job: queued → running → one of completed, failed, cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl JobState {
    /// Completed, failed and cancelled are final: a job in one of them never runs again.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// The state as the wire names it (a metric label; a test keeps it equal to serde's).
    pub fn name(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// One status report of a training job. Key: the tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainStatus {
    /// The trigger it runs for (`trigger_id`): one job per trigger.
    pub job_id: String,
    pub tenant_id: String,
    pub state: JobState,
    /// Wall time of the report.
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_steps: Option<u64>,
    /// Training loss of the last optimiser step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_s: Option<f64>,
    /// Held-out loss of the base model and of base + adapter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_out_before: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_out_after: Option<f64>,
    /// The adapter directory (completed jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    /// Whether the adapter became the tenant's current one (held-out loss improved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted: Option<bool>,
    /// Why a job failed, or who cancelled it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl TrainStatus {
    /// A report with only the identity and state filled in.
    pub fn new(job_id: &str, tenant_id: &str, state: JobState) -> Self {
        Self {
            job_id: job_id.to_owned(),
            tenant_id: tenant_id.to_owned(),
            state,
            at: Utc::now(),
            step: None,
            total_steps: None,
            loss: None,
            tokens_per_s: None,
            eta_s: None,
            held_out_before: None,
            held_out_after: None,
            adapter: None,
            promoted: None,
            reason: None,
        }
    }
}

impl Schema for TrainStatus {
    const NAME: &'static str = "train.status.v1";

    fn validate(&self) -> Result<(), Reject> {
        validate_id("job_id", &self.job_id)?;
        validate_tenant_id(&self.tenant_id)
    }
}

/// What an operator asks of a trainer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlAction {
    /// Stop the job at its next step; no adapter is written, checkpoints are kept.
    Cancel,
}

/// One control request. Key: the job id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainControl {
    pub job_id: String,
    pub action: ControlAction,
    pub at: DateTime<Utc>,
}

impl Schema for TrainControl {
    const NAME: &'static str = "train.control.v1";

    fn validate(&self) -> Result<(), Reject> {
        validate_id("job_id", &self.job_id)
    }
}

#[cfg(test)]
mod tests {
    use super::JobState;

    #[test]
    fn state_names_are_the_wire_names() {
        use JobState::*;
        for state in [Queued, Running, Completed, Failed, Cancelled] {
            assert_eq!(serde_json::to_value(state).unwrap(), state.name());
        }
    }
}
