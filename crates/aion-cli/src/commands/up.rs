//! `aion up`: the whole loop on one machine, on the embedded defaults.

use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::{relay, Context};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Loopback port of the local broker.
    #[arg(long, default_value_t = 9092, env = "AION_BROKER_PORT")]
    pub port: u16,
    /// Use the brokers from the configuration instead of starting the local one.
    #[arg(long)]
    pub external_broker: bool,
    /// Synthetic events to publish (0: none, only run the stages).
    #[arg(long, default_value_t = 20_000)]
    pub events: u64,
    /// Synthetic events per second.
    #[arg(long, default_value_t = 500)]
    pub rate: u64,
}

pub async fn run(args: Args, mut ctx: Context, stop: CancellationToken) -> Result<()> {
    if !args.external_broker {
        let port = aion_broker::start_background(args.port, &ctx.broker_dir()).context("starting the local broker")?;
        ctx.kafka.brokers = format!("127.0.0.1:{port}");
        println!("broker      127.0.0.1:{port} (storage {}; `aion broker stop` stops it)", ctx.broker_dir().display());
    }
    let mut topics = super::topics::product_topics();
    topics.extend(aion_events::topics::INPUTS.iter().map(|t| format!("{t}.valid")));
    super::topics::create(&ctx, &topics, None, None).await?;
    println!("topics      {}", topics.join(", "));

    let inputs: Vec<relay::Input> = aion_events::topics::INPUTS.iter().map(|t| t.parse()).collect::<Result<_, _>>().map_err(anyhow::Error::msg)?;
    let relay = {
        let (ctx, stop) = (ctx.clone(), stop.clone());
        tokio::spawn(async move { relay::run(&ctx, &inputs, "valid", None, stop).await })
    };
    if args.events > 0 {
        let produce = super::produce::Args {
            count: args.events,
            rate: args.rate,
            tenants: vec!["acme".into(), "globex".into(), "initech".into()],
            seed: 42,
            scenario: super::produce::ScenarioName::Degrade,
            degrade_at: 0.5,
            degrade_tenants: vec!["acme".into()],
            span_hours: 48,
            start: None,
            invalid_fraction: 0.01,
            late_fraction: 0.01,
        };
        super::produce::run(produce, &ctx, stop.clone()).await?;
    }
    println!("running     relay (retrieval.v1, answer.v1 → *.valid, bad events → *.dlq); Ctrl-C stops");
    info!("waiting for Ctrl-C");
    let stats = relay.await??;
    tokio::time::sleep(Duration::from_millis(10)).await;
    println!("stopped     received {} forwarded {} dead-lettered {}", stats.received, stats.forwarded, stats.dead_lettered);
    Ok(())
}
