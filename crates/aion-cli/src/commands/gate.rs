//! `aion gate`: the trigger gate and its run-time settings; `aion train trigger`: a manual trigger.

use std::path::PathBuf;

use aion_events::layout::Table;
use aion_gate::{GateConfig, GateOptions, Settings, SettingsStore, Stats};
use aion_kafka::Sink;
use anyhow::{Context as _, Result};
use clap::Subcommand;
use tokio_util::sync::CancellationToken;

use crate::Context;

#[derive(Debug, Subcommand)]
pub enum Action {
    /// Consume `metrics.v1` and publish `train.trigger.v1` when a tenant's fallback rate rises
    /// above τ_f or its nDCG falls below τ_n (with minimum samples, cooldown and hysteresis);
    /// alongside, publish `index.rebuild.v1` every ΔN new documents seen in `retrieval.v1`.
    Run(RunArgs),
    /// Print the thresholds in force (JSON); with flags, change and persist them. A running gate
    /// picks changes up within a second.
    Settings(SettingsArgs),
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Gate pipeline TOML (default: the embedded `pipelines/gate.toml`).
    #[arg(long, env = "AION_GATE_PIPELINE")]
    pub pipeline: Option<PathBuf>,
    /// Log what would fire over the whole metrics topic; publish nothing, keep no state, and
    /// commit no offset (group `<prefix>.gate-dry-run`: the running gate's offsets never move).
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub initial: InitialSettings,
}

/// Environment overrides of the pipeline's initial thresholds (persisted run-time settings win).
#[derive(Debug, Default, clap::Args)]
pub struct InitialSettings {
    /// Initial τ_f (fallback-rate threshold).
    #[arg(long, env = "AION_TAU_FALLBACK")]
    pub tau_fallback: Option<f64>,
    /// Initial τ_n (nDCG threshold).
    #[arg(long, env = "AION_TAU_NDCG")]
    pub tau_ndcg: Option<f64>,
    /// Initial cooldown in hours of event time.
    #[arg(long, env = "AION_COOLDOWN_HOURS")]
    pub cooldown_hours: Option<f64>,
}

#[derive(Debug, clap::Args)]
pub struct SettingsArgs {
    #[arg(long)]
    pub tau_fallback: Option<f64>,
    #[arg(long)]
    pub tau_ndcg: Option<f64>,
    #[arg(long)]
    pub min_answers: Option<u64>,
    #[arg(long)]
    pub min_judged: Option<u64>,
    #[arg(long)]
    pub cooldown_hours: Option<f64>,
    #[arg(long)]
    pub rearm_margin: Option<f64>,
    /// Forget run-time changes: back to the pipeline file and environment.
    #[arg(long, conflicts_with_all = ["tau_fallback", "tau_ndcg", "min_answers", "min_judged", "cooldown_hours", "rearm_margin"])]
    pub reset: bool,
}

#[derive(Debug, clap::Args)]
pub struct TriggerArgs {
    /// Tenant to train for.
    #[arg(long)]
    pub tenant: String,
    /// Why (kept in the trigger's `note`).
    #[arg(long)]
    pub reason: Option<String>,
    /// Gate pipeline TOML for the recipe (default: the embedded `pipelines/gate.toml`).
    #[arg(long, env = "AION_GATE_PIPELINE")]
    pub pipeline: Option<PathBuf>,
}

pub fn load(pipeline: Option<&std::path::Path>) -> Result<GateConfig> {
    Ok(match pipeline {
        Some(path) => GateConfig::load(path)?,
        None => GateConfig::embedded()?,
    })
}

fn store(ctx: &Context) -> SettingsStore {
    SettingsStore::new(ctx.state().gate_settings())
}

pub fn options(
    ctx: &Context,
    config: &GateConfig,
    initial: &InitialSettings,
    dry_run: bool,
) -> Result<GateOptions> {
    let mut settings = config.settings.clone();
    if let Some(v) = initial.tau_fallback {
        settings.tau_fallback = v;
    }
    if let Some(v) = initial.tau_ndcg {
        settings.tau_ndcg = v;
    }
    if let Some(v) = initial.cooldown_hours {
        settings.cooldown_hours = v;
    }
    settings.validate().map_err(anyhow::Error::msg)?;
    Ok(GateOptions {
        kafka: ctx.kafka.clone(),
        // A dry run never shares the production gate's group.
        group_id: ctx.group(if dry_run { "gate-dry-run" } else { "gate" }),
        state_dir: ctx.state_dir.clone(),
        settings: store(ctx),
        initial: settings,
        dry_run,
        shards_root: Some(ctx.state().table(Table::Shards)),
        entities_root: Some(ctx.state().table(Table::Entities)),
        decode: ctx.decode_limits(),
    })
}

pub async fn run(action: Action, ctx: &Context, stop: CancellationToken) -> Result<()> {
    match action {
        Action::Run(args) => {
            let config = load(args.pipeline.as_deref())?;
            let options = options(ctx, &config, &args.initial, args.dry_run)?;
            run_both(&config, &options, stop, &Stats::default()).await
        }
        Action::Settings(args) => {
            let config = load(None)?;
            let options = options(ctx, &config, &InitialSettings::default(), false)?;
            let store = store(ctx);
            if args.reset {
                match std::fs::remove_file(store.path()) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(e).context("removing the settings file")
                    }
                    _ => {}
                }
            }
            let s: Settings = store.update(&options.initial, |s| {
                let set = |field: &mut f64, v: Option<f64>| v.into_iter().for_each(|v| *field = v);
                set(&mut s.tau_fallback, args.tau_fallback);
                set(&mut s.tau_ndcg, args.tau_ndcg);
                set(&mut s.cooldown_hours, args.cooldown_hours);
                set(&mut s.rearm_margin, args.rearm_margin);
                if let Some(v) = args.min_answers {
                    s.min_answers = v;
                }
                if let Some(v) = args.min_judged {
                    s.min_judged = v;
                }
                s.validate()
            })?;
            println!("{}", serde_json::to_string_pretty(&s)?);
            Ok(())
        }
    }
}

/// The gate and the index-rebuild rule, side by side; either failing stops both.
pub async fn run_both(
    config: &GateConfig,
    options: &GateOptions,
    stop: CancellationToken,
    stats: &Stats,
) -> Result<()> {
    // Each stops the other through its own child token: cancelling the process's token would
    // read as an operator's stop, and a failure would exit as a clean stop.
    let (gate_stop, index_stop) = (stop.child_token(), stop.child_token());
    let (gate, index) = tokio::join!(
        async {
            let r = aion_gate::run(config, options, gate_stop.clone(), stats).await;
            index_stop.cancel();
            r
        },
        async {
            let r = aion_gate::run_index(config, options, index_stop.clone()).await;
            if r.is_err() {
                gate_stop.cancel();
            }
            r
        }
    );
    gate?;
    Ok(index?)
}

/// `aion train trigger`: publishes a manual trigger.
pub async fn trigger(args: TriggerArgs, ctx: &Context) -> Result<()> {
    aion_events::validate_tenant_id(&args.tenant).map_err(|r| anyhow::anyhow!("--tenant: {r}"))?;
    let config = load(args.pipeline.as_deref())?;
    let options = options(ctx, &config, &InitialSettings::default(), false)?;
    let settings = options.current_settings()?;
    let mut t = aion_gate::manual_trigger(
        &config,
        &settings,
        &args.tenant,
        args.reason,
        chrono::Utc::now(),
    );
    // The tenant's committed shards now: the job's data set, fixed whatever arrives later.
    t.manifest_lines = aion_gate::shard_snapshot(&options)?;
    aion_kafka::partition_count(&ctx.kafka, &config.output_topic)?;
    let sink = Sink::new(&ctx.kafka, "train-trigger")?;
    sink.send_confirmed(
        &config.output_topic,
        None,
        Some(t.key().as_bytes()),
        &serde_json::to_vec(&t)?,
    )
    .await?
    .wait(&config.output_topic)
    .await?;
    println!("{}", serde_json::to_string(&t)?);
    Ok(())
}
