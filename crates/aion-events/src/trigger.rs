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
    /// Training shards to use, listed. Triggers of this product leave it empty and set
    /// `manifest_lines` instead: a list of every shard outgrows any record size within days.
    #[serde(default)]
    pub shards: Vec<String>,
    /// The shard manifest's line count when the trigger fired: the trainer uses the tenant's
    /// files among those lines (what was committed then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_lines: Option<u64>,
    pub recipe: Recipe,
}

impl TrainTrigger {
    /// Record key: the tenant, so a tenant's triggers stay in order.
    pub fn key(&self) -> &str {
        &self.tenant_id
    }
}

/// Longest trigger id: the tenant id (≤ 128) and a window and start, with room to spare; a job
/// directory named after it stays under file-name limits.
pub const MAX_TRIGGER_ID_BYTES: usize = 200;
/// Most shard files one trigger may name.
pub const MAX_TRIGGER_SHARDS: usize = 20_000;
/// Most entities one trigger may name, and the longest.
pub const MAX_TOP_ENTITIES: usize = 100;
const MAX_ENTITY_BYTES: usize = 200;

/// Whether `path` is a file inside `tenant`'s partition of the shard table: relative, starting
/// with `tenant_id=<tenant>/`, no `.`/`..` or empty components, no backslash, a Parquet file.
pub fn shard_path_of_tenant(path: &str, tenant: &str) -> bool {
    let Some(rest) = path.strip_prefix(&format!("tenant_id={tenant}/")) else {
        return false;
    };
    path.len() <= 1024
        && !path.contains('\\')
        && rest
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.chars().any(char::is_control))
        && rest.ends_with(".parquet")
}

impl Recipe {
    /// Ranges the trainer accepts: beyond them a job would abort the process or never finish.
    pub fn validate(&self) -> Result<(), Reject> {
        let check = |ok: bool, field: &str, range: &str| {
            if ok {
                Ok(())
            } else {
                Err(Reject::new(
                    format!("recipe.{field}"),
                    format!("recipe.{field} must be in {range}"),
                ))
            }
        };
        check(
            !self.base_model.is_empty() && self.base_model.len() <= 200,
            "base_model",
            "1..=200 bytes",
        )?;
        check((1..=256).contains(&self.lora_r), "lora_r", "1..=256")?;
        check(
            self.lora_alpha > 0.0 && self.lora_alpha <= 1024.0,
            "lora_alpha",
            "(0, 1024]",
        )?;
        check(
            (0.0..1.0).contains(&self.lora_dropout),
            "lora_dropout",
            "[0, 1)",
        )?;
        check(
            self.learning_rate > 0.0 && self.learning_rate <= 1.0,
            "learning_rate",
            "(0, 1]",
        )?;
        check((1..=100).contains(&self.epochs), "epochs", "1..=100")?;
        check(
            (1..=1024).contains(&self.batch_size),
            "batch_size",
            "1..=1024",
        )?;
        check(
            (1..=1024).contains(&self.grad_accum),
            "grad_accum",
            "1..=1024",
        )
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
        if self.trigger_id.len() > MAX_TRIGGER_ID_BYTES
            || self.trigger_id.chars().any(char::is_control)
        {
            return Err(Reject::new(
                "trigger_id",
                format!("trigger_id must be at most {MAX_TRIGGER_ID_BYTES} bytes, without control characters"),
            ));
        }
        if self.shards.len() > MAX_TRIGGER_SHARDS {
            return Err(Reject::new(
                "shards",
                format!("a trigger names at most {MAX_TRIGGER_SHARDS} shard files"),
            ));
        }
        if let Some(bad) = self
            .shards
            .iter()
            .find(|p| !shard_path_of_tenant(p, &self.tenant_id))
        {
            return Err(Reject::new(
                "shards",
                format!(
                    "shard {bad:?} is not a Parquet file under tenant_id={}/ of the shard table",
                    self.tenant_id
                ),
            ));
        }
        if self.top_entities.len() > MAX_TOP_ENTITIES
            || self.top_entities.iter().any(|e| e.len() > MAX_ENTITY_BYTES)
        {
            return Err(Reject::new(
                "top_entities",
                format!("at most {MAX_TOP_ENTITIES} entities of at most {MAX_ENTITY_BYTES} bytes"),
            ));
        }
        self.recipe.validate()?;
        if self.reason != TriggerReason::Manual && self.window.is_none() {
            return Err(Reject::new(
                "window",
                "a gate trigger names its degraded window",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode, DecodeLimits};

    fn trigger() -> serde_json::Value {
        serde_json::json!({
            "trigger_id": "acme/manual/2026-11-24T13:00:00Z", "tenant_id": "acme", "reason": "manual",
            "at": "2026-11-24T13:00:00Z", "fallback_rate": null, "ndcg_mean": null, "answers": 0,
            "judged_events": 0,
            "thresholds": {"tau_fallback": 0.18, "tau_ndcg": 0.82, "min_answers": 50, "min_judged": 50, "cooldown_hours": 6.0},
            "shards": ["tenant_id=acme/date=2026-11-24/part-000-000000000000-000000000009.parquet"],
            "recipe": {"base_model": "m", "lora_r": 16, "lora_alpha": 16.0, "lora_dropout": 0.05,
                       "learning_rate": 0.0002, "epochs": 2, "batch_size": 2, "grad_accum": 8}
        })
    }

    fn refused(change: impl Fn(&mut serde_json::Value)) -> Option<String> {
        let mut t = trigger();
        change(&mut t);
        decode::<TrainTrigger>(&serde_json::to_vec(&t).unwrap(), &DecodeLimits::default())
            .err()
            .map(|r| r.path)
    }

    #[test]
    fn hostile_triggers_are_refused_with_the_field() {
        assert_eq!(refused(|_| {}), None);
        for path in [
            "tenant_id=globex/date=2026-11-24/part.parquet",
            "tenant_id=acme/../tenant_id=globex/date=2026-11-24/part.parquet",
            "tenant_id=acme/./part.parquet",
            "tenant_id=acme//part.parquet",
            "/etc/passwd",
            "tenant_id=acme/date=2026-11-24/status.json",
            "tenant_id=acme\\..\\x.parquet",
        ] {
            assert_eq!(
                refused(|t| t["shards"] = serde_json::json!([path])),
                Some("shards".into()),
                "{path}"
            );
        }
        assert_eq!(
            refused(|t| t["trigger_id"] = format!("acme/{}", "x".repeat(300)).into()),
            Some("trigger_id".into())
        );
        assert_eq!(
            refused(|t| t["recipe"]["lora_r"] = 1_000_000.into()),
            Some("recipe.lora_r".into())
        );
        assert_eq!(
            refused(|t| t["recipe"]["lora_dropout"] = 1.0.into()),
            Some("recipe.lora_dropout".into())
        );
        assert_eq!(
            refused(|t| t["recipe"]["batch_size"] = 0.into()),
            Some("recipe.batch_size".into())
        );
        assert_eq!(
            refused(|t| t["top_entities"] = serde_json::json!(vec!["e"; 101])),
            Some("top_entities".into())
        );
    }
}
