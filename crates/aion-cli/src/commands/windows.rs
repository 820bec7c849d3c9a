//! `aion windows`: the windowed nDCG / fallback-rate stage.

use std::path::PathBuf;

use aion_windows::{StageOptions, Stats, WindowsConfig};
use anyhow::{Context as _, Result};
use clap::Subcommand;
use tokio_util::sync::CancellationToken;

use crate::Context;

#[derive(Debug, Subcommand)]
pub enum Action {
    /// Consume retrieval and answer events, close event-time windows per tenant and publish their
    /// aggregates to `metrics.v1` and the Parquet tables `<state dir>/metrics` (results) and
    /// `<state dir>/window_history` (each counted event once, for `aion sql`).
    /// Late events go to `<topic>.late`, invalid ones to `<topic>.dlq`.
    Run(RunArgs),
    /// Check a pipeline file and its SQL (DataFusion plans it) without running anything.
    Validate {
        /// Pipeline TOML (default: the embedded `pipelines/windows.toml`).
        pipeline: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Pipeline TOML (default: the embedded `pipelines/windows.toml`).
    #[arg(long, env = "AION_WINDOWS_PIPELINE")]
    pub pipeline: Option<PathBuf>,
    /// Where the Parquet tables `metrics/` and `window_history/` go (default: the state dir).
    #[arg(long, env = "AION_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

pub fn load(pipeline: Option<&std::path::Path>) -> Result<WindowsConfig> {
    Ok(match pipeline {
        Some(path) => WindowsConfig::load(path)?,
        None => WindowsConfig::embedded()?,
    })
}

pub fn options(ctx: &Context, data_dir: Option<PathBuf>) -> StageOptions {
    StageOptions {
        kafka: ctx.kafka.clone(),
        group_id: ctx.group("windows"),
        data_dir: data_dir.unwrap_or_else(|| ctx.state_dir.clone()),
        decode: ctx.decode_limits(),
    }
}

pub async fn run(action: Action, ctx: &Context, stop: CancellationToken) -> Result<()> {
    match action {
        Action::Run(args) => {
            let config = load(args.pipeline.as_deref())?;
            let options = options(ctx, args.data_dir);
            Ok(aion_windows::run(&config, &options, stop, &Stats::default()).await?)
        }
        Action::Validate { pipeline } => {
            let config = load(pipeline.as_deref())?;
            aion_windows::Aggregator::new(&config.sql_text)
                .await
                .context("planning the aggregate SQL")?;
            let names: Vec<&str> = config.windows.iter().map(|w| w.name.as_str()).collect();
            println!(
                "ok: {} → {} over windows {} (pane {}s, lateness {}s)",
                config.retrieval_topic,
                config.output_topic,
                names.join(", "),
                config.pane().as_secs(),
                config.watermark.allowed_lateness.as_secs()
            );
            Ok(())
        }
    }
}
