//! `train.trigger.v1`: a request to adapt a tenant's model, from the trigger gate or an operator.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::validate_tenant_id;
use crate::{Reject, Schema};

/// Why a trigger fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerReason {
    /// The fallback rate rose above τ_f.
    FallbackRate,
    /// Mean nDCG fell below τ_n.
    Ndcg,
    /// Both at once.
    FallbackRateAndNdcg,
    /// An operator asked for it.
    Manual,
}

/// The thresholds in force when the trigger fired.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    pub tau_fallback: f64,
    pub tau_ndcg: f64,
    pub min_answers: u64,
    pub min_judged: u64,
    pub cooldown_hours: f64,
}

/// How the trainer should train: from the gate's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    pub base_model: String,
    pub lora_r: u32,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub learning_rate: f64,
    pub epochs: u32,
    pub batch_size: u32,
    pub grad_accum: u32,
}

/// One trigger. Replays re-create it with the same `trigger_id`; consumers dedupe by it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainTrigger {
    /// `<tenant>/<window>/<window start>` for gate triggers, `<tenant>/manual/<time>` otherwise.
    pub trigger_id: String,
    pub tenant_id: String,
    pub reason: TriggerReason,
    /// Free text from the operator of a manual trigger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The degraded window (absent for manual triggers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_start: Option<DateTime<Utc>>,
    /// When it fired, in event time (the window's end) or wall time for manual triggers.
    pub at: DateTime<Utc>,
    pub fallback_rate: Option<f64>,
    pub ndcg_mean: Option<f64>,
    pub answers: u64,
    pub judged_events: u64,
    pub thresholds: Thresholds,
    /// The degraded window's entities with the lowest mean nDCG, worst first, when the entity
    /// table holds the window (`pipelines/trigger_entities.sql`).
    #[serde(default)]
    pub top_entities: Vec<String>,
    /// Training shards to use (the shard manifest at trigger time), when shards exist.
    #[serde(default)]
    pub shards: Vec<String>,
    pub recipe: Recipe,
}

impl TrainTrigger {
    /// Record key: the tenant, so a tenant's triggers stay in order.
    pub fn key(&self) -> &str {
        &self.tenant_id
    }
}

impl Schema for TrainTrigger {
    const NAME: &'static str = "train.trigger.v1";

    fn validate(&self) -> Result<(), Reject> {
        validate_tenant_id(&self.tenant_id)?;
        if !self.trigger_id.starts_with(&format!("{}/", self.tenant_id)) {
            return Err(Reject::new(
                "trigger_id",
                "trigger_id must start with the tenant id and '/'",
            ));
        }
        if self.reason != TriggerReason::Manual && self.window.is_none() {
            return Err(Reject::new(
                "window",
                "a gate trigger names its degraded window",
            ));
        }
        Ok(())
    }
}
