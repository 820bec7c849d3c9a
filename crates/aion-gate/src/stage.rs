//! The gate stage: `metrics.v1` in, `train.trigger.v1` out.
//!
//! Delivery: a metrics record's offset is stored after its trigger (if any) is acknowledged and the
//! state file is saved. A crash before the save re-fires the same `trigger_id` (consumers dedupe);
//! after it, the replayed window is recognised and ignored.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aion_events::{
    DecodeLimits, Schema as _, Thresholds, TrainTrigger, TriggerReason, WindowMetrics,
};
use aion_kafka::{KafkaConfig, Record};
use aion_runtime::{Io, Plan, Stage};
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{Gate, GateConfig, Result, Settings, SettingsStore, Verdict};

const STAGE: &str = "gate";
/// How often run-time settings are re-read.
const SETTINGS_REFRESH: Duration = Duration::from_secs(1);

/// Where and how one gate runs.
#[derive(Debug, Clone)]
pub struct GateOptions {
    pub kafka: KafkaConfig,
    pub group_id: String,
    /// Holds `gate/state.json`.
    pub state_dir: PathBuf,
    /// Run-time settings; when it holds none, `initial` applies.
    pub settings: SettingsStore,
    pub initial: Settings,
    /// Log what would fire; publish nothing, keep no state, commit no offset (give it a group of
    /// its own).
    pub dry_run: bool,
    /// Root of the shard table whose manifest a trigger snapshots (`None`: no shards).
    pub shards_root: Option<PathBuf>,
    /// Root of the entity table a trigger's worst entities come from (`None`: none recorded).
    pub entities_root: Option<PathBuf>,
    pub decode: DecodeLimits,
}

impl GateOptions {
    /// The settings in force now.
    pub fn current_settings(&self) -> Result<Settings> {
        Ok(self
            .settings
            .load()?
            .unwrap_or_else(|| self.initial.clone()))
    }
}

/// Live counts.
#[derive(Debug, Default)]
pub struct Stats {
    pub counts: aion_runtime::Counts,
    pub evaluated: AtomicU64,
    pub fired: AtomicU64,
    /// The latest evaluated window of each tenant: (window end, mean nDCG, fallback rate).
    pub latest: std::sync::Mutex<std::collections::BTreeMap<String, Latest>>,
}

/// A tenant's most recent evaluated window, for live summaries.
#[derive(Debug, Clone, PartialEq)]
pub struct Latest {
    pub window_end: DateTime<Utc>,
    pub ndcg_mean: Option<f64>,
    pub fallback_rate: Option<f64>,
}

fn thresholds(s: &Settings) -> Thresholds {
    Thresholds {
        tau_fallback: s.tau_fallback,
        tau_ndcg: s.tau_ndcg,
        min_answers: s.min_answers,
        min_judged: s.min_judged,
        cooldown_hours: s.cooldown_hours,
    }
}

/// The trigger for a degraded window; its id is the window's key, so a replay repeats it.
pub fn trigger(
    config: &GateConfig,
    settings: &Settings,
    m: &WindowMetrics,
    reason: TriggerReason,
) -> TrainTrigger {
    TrainTrigger {
        trigger_id: m.key(),
        tenant_id: m.tenant_id.clone(),
        reason,
        note: None,
        window: Some(m.window.clone()),
        window_start: Some(m.window_start),
        at: m.window_end,
        fallback_rate: m.fallback_rate,
        ndcg_mean: m.ndcg_mean,
        answers: m.answers,
        judged_events: m.judged_events,
        thresholds: thresholds(settings),
        top_entities: Vec::new(),
        shards: Vec::new(),
        manifest_lines: None,
        recipe: config.recipe.clone(),
    }
}

/// An operator's trigger for `tenant`.
pub fn manual_trigger(
    config: &GateConfig,
    settings: &Settings,
    tenant: &str,
    note: Option<String>,
    now: DateTime<Utc>,
) -> TrainTrigger {
    TrainTrigger {
        trigger_id: format!("{tenant}/manual/{}", now.format("%Y-%m-%dT%H:%M:%S%.3fZ")),
        tenant_id: tenant.to_owned(),
        reason: TriggerReason::Manual,
        note,
        window: None,
        window_start: None,
        at: now,
        fallback_rate: None,
        ndcg_mean: None,
        answers: 0,
        judged_events: 0,
        thresholds: thresholds(settings),
        top_entities: Vec::new(),
        shards: Vec::new(),
        manifest_lines: None,
        recipe: config.recipe.clone(),
    }
}

/// What is committed to the shard table at trigger time: the manifest's line count (the trainer
/// resolves the tenant's files among those lines). A number, however many shards exist. A
/// replayed trigger may see more lines than its first publication; the trainer keeps the first
/// per id.
pub fn shard_snapshot(options: &GateOptions) -> Result<Option<u64>> {
    let Some(root) = &options.shards_root else {
        return Ok(None);
    };
    aion_events::manifest_lines(root)
        .map(Some)
        .map_err(|e| crate::io(&root.join(aion_events::SHARD_MANIFEST), e))
}

/// The window's worst entities. A trigger matters more than its annotation: an unreadable table
/// is logged and the trigger goes out without them.
async fn top_entities(
    config: &GateConfig,
    options: &GateOptions,
    m: &WindowMetrics,
) -> Vec<String> {
    let Some(root) = &options.entities_root else {
        return Vec::new();
    };
    match crate::worst_entities(
        root,
        &m.tenant_id,
        m.window_start,
        m.window_end,
        &config.top_entities,
    )
    .await
    {
        Ok(worst) => worst,
        Err(error) => {
            warn!(%error, tenant = %m.tenant_id, "trigger goes out without its worst entities");
            Vec::new()
        }
    }
}

/// The gate as a stage of the runtime.
struct GateStage<'a> {
    config: &'a GateConfig,
    options: &'a GateOptions,
    stats: &'a Stats,
    gate: Gate,
    path: PathBuf,
    settings: Settings,
    next_refresh: Instant,
}

impl Stage for GateStage<'_> {
    type Error = crate::Error;
    const NAME: &'static str = STAGE;

    async fn handle(&mut self, io: &mut Io<'_>, records: Vec<Record>) -> Result<()> {
        for record in records {
            self.refresh_settings();
            if let Some((record, m)) = io.decode::<WindowMetrics>(record).await? {
                self.evaluate(io, &m).await?;
                // The record's offset may be stored now: trigger acknowledged, state saved.
                record.ack.done();
            }
        }
        Ok(())
    }
}

impl GateStage<'_> {
    fn refresh_settings(&mut self) {
        if Instant::now() < self.next_refresh {
            return;
        }
        match self.options.current_settings() {
            Ok(s) if s != self.settings => {
                info!(?s, "gate settings changed");
                self.settings = s;
            }
            Ok(_) => {}
            // A bad edit must not stop the gate: keep the last good settings.
            Err(error) => warn!(%error, "ignoring unreadable gate settings"),
        }
        self.next_refresh = Instant::now() + SETTINGS_REFRESH;
    }

    /// Evaluates one window; fires (trigger acknowledged) and saves the state when it counts.
    async fn evaluate(&mut self, io: &Io<'_>, m: &WindowMetrics) -> Result<()> {
        let (config, options, stats) = (self.config, self.options, self.stats);
        let verdict = self.gate.evaluate(&config.window, m, &self.settings);
        if verdict == Verdict::Ignored {
            return Ok(());
        }
        stats.evaluated.fetch_add(1, Ordering::Relaxed);
        {
            let mut latest = stats.latest.lock().unwrap_or_else(|p| p.into_inner());
            let newer = latest
                .get(&m.tenant_id)
                .is_none_or(|l| l.window_end <= m.window_end);
            if newer {
                let l = Latest {
                    window_end: m.window_end,
                    ndcg_mean: m.ndcg_mean,
                    fallback_rate: m.fallback_rate,
                };
                latest.insert(m.tenant_id.clone(), l);
            }
        }
        match verdict {
            Verdict::Fire(reason) => {
                let mut t = trigger(config, &self.settings, m, reason);
                t.manifest_lines = shard_snapshot(options)?;
                t.top_entities = top_entities(config, options, m).await;
                debug_assert!(t.validate().is_ok());
                stats.fired.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("aion_triggers_total", "stage" => STAGE).increment(1);
                if options.dry_run {
                    info!(trigger_id = %t.trigger_id, ?reason, fallback_rate = ?m.fallback_rate, ndcg = ?m.ndcg_mean, "dry run: would fire");
                } else {
                    let payload = serde_json::to_vec(&t)?;
                    io.send_confirmed(
                        &config.output_topic,
                        None,
                        Some(t.key().as_bytes()),
                        &payload,
                    )
                    .await?
                    .wait(&config.output_topic)
                    .await?;
                    info!(trigger_id = %t.trigger_id, ?reason, fallback_rate = ?m.fallback_rate, ndcg = ?m.ndcg_mean, "trigger fired");
                }
            }
            Verdict::Quiet(why) => {
                tracing::debug!(tenant = %m.tenant_id, end = %m.window_end, %why, "quiet");
            }
            Verdict::Ignored => {}
        }
        if !options.dry_run {
            self.gate.save(&self.path)?;
        }
        Ok(())
    }
}

/// Runs until `stop` is cancelled.
pub async fn run(
    config: &GateConfig,
    options: &GateOptions,
    stop: CancellationToken,
    stats: &Stats,
) -> Result<()> {
    let mut plan = Plan::new(
        vec![config.input_topic.clone()],
        vec![config.output_topic.clone()],
        options.group_id.clone(),
    );
    // A dry run reads in a group of its own and commits nothing: the production gate's offsets
    // never move because of it.
    plan.commit = !options.dry_run;
    plan.decode = options.decode;
    let path = aion_events::layout::StateDir::new(&options.state_dir).gate_state();
    let gate = if options.dry_run {
        Gate::default()
    } else {
        Gate::load(&path)?
    };
    let settings = options.current_settings()?;
    info!(window = %config.window, ?settings, dry_run = options.dry_run, "gate settings");
    let stage = GateStage {
        config,
        options,
        stats,
        gate,
        path,
        settings,
        next_refresh: Instant::now() + SETTINGS_REFRESH,
    };
    aion_runtime::run(&options.kafka, &plan, stage, stop, &stats.counts).await
}
