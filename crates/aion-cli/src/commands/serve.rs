//! `aion serve`: the control API and web panel.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use aion_api::access::Tokens;
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
    /// One bearer token with every right (role admin, all tenants). Every route but /healthz and
    /// the panel's files then needs it.
    #[arg(long, env = "AION_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Tokens with a role (read, operate, admin) and a tenant scope: a TOML file of
    /// `[[token]]` tables with `name`, `sha256` (hex SHA-256 of the token), `role` and `tenants`
    /// (ids, or ["*"]). Replaces --token.
    #[arg(
        long,
        env = "AION_API_TOKENS_FILE",
        value_name = "FILE",
        conflicts_with = "token"
    )]
    pub tokens_file: Option<PathBuf>,
    /// Serve without tokens (loopback addresses only; local development). Requests must then
    /// name the loopback host, and changes carry the panel page's CSRF secret.
    #[arg(long)]
    pub insecure_loopback: bool,
    /// Serve /metrics without a token (a scraper on a trusted network); by default it needs one.
    #[arg(long, env = "AION_API_PUBLIC_METRICS")]
    pub public_metrics: bool,
    /// Gate pipeline TOML for the recipe of jobs started here (default: the embedded one).
    #[arg(long, env = "AION_GATE_PIPELINE", value_name = "FILE")]
    pub pipeline: Option<PathBuf>,
}

pub fn options(args: Args, ctx: &Context) -> Result<ApiOptions> {
    let gate = super::gate::load(args.pipeline.as_deref())?;
    let gate_options = super::gate::options(ctx, &gate, &InitialSettings::default(), false)?;
    // The process's own stage metrics (all of them under `aion up`); absent when --metrics-addr
    // already serves them.
    let metrics = crate::observe::install()
        .ok()
        .map(|handle| Arc::new(move || handle.render()) as aion_api::MetricsRender);
    let tokens = match (&args.tokens_file, args.token.filter(|t| !t.is_empty())) {
        (Some(file), _) => Tokens::load(file).map_err(anyhow::Error::msg)?,
        (None, Some(token)) => Tokens::admin(&token),
        (None, None) => Tokens::default(),
    };
    Ok(ApiOptions {
        addr: args.addr,
        tokens,
        insecure_loopback: args.insecure_loopback,
        public_metrics: args.public_metrics,
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
