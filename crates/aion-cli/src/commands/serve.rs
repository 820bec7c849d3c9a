//! `aion serve`: the control API and web panel.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use aion_api::ApiOptions;
use anyhow::Result;
use tokio_util::sync::CancellationToken;

use super::gate::InitialSettings;
use crate::Context;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, env = "AION_API_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Bearer token the training and settings routes require. Without one the server starts
    /// only on a loopback address with --insecure-loopback.
    #[arg(long, env = "AION_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Serve the mutating routes without a token (loopback addresses only; local development).
    #[arg(long)]
    pub insecure_loopback: bool,
    /// Gate pipeline TOML for the recipe of jobs started here (default: the embedded one).
    #[arg(long, env = "AION_GATE_PIPELINE", value_name = "FILE")]
    pub pipeline: Option<PathBuf>,
}

pub fn options(args: Args, ctx: &Context) -> Result<ApiOptions> {
    let gate = super::gate::load(args.pipeline.as_deref())?;
    let gate_options = super::gate::options(ctx, &gate, &InitialSettings::default(), false)?;
    // The process's own stage metrics (all of them under `aion up`); absent when --metrics-addr
    // already serves them.
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .ok()
        .map(|handle| Arc::new(move || handle.render()) as aion_api::MetricsRender);
    Ok(ApiOptions {
        addr: args.addr,
        token: args.token.filter(|t| !t.is_empty()),
        insecure_loopback: args.insecure_loopback,
        data_dir: ctx.state_dir.clone(),
        kafka: ctx.kafka.clone(),
        gate,
        gate_options,
        metrics,
    })
}

pub async fn run(args: Args, ctx: &Context, stop: CancellationToken) -> Result<()> {
    Ok(aion_api::serve(options(args, ctx)?, stop).await?)
}
