//! `aion-bench`: speeds and memory side by side with their targets and references. Benchmarks,
//! not tests: they print tables, they do not assert. A binary of its own, so the product binary
//! (`aion`) carries commands only.

mod ner;
mod relay;
mod shards;
mod tenants;
mod train;
mod windows;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

use aion_cli::Context;

/// AION Stream's benchmarks: each prints its measurements side by side with its target and an
/// outside reference (a bare Kafka consumer, pyarrow, onnxruntime, PEFT), in one run.
///
/// Broker benchmarks start a local broker of their own unless told to use the configured one;
/// stages benchmarked as processes run the `aion` binary built next to this one.
#[derive(Debug, Parser)]
#[command(name = "aion-bench", version)]
struct Cli {
    #[command(flatten)]
    globals: aion_cli::Globals,
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Decode/validate speed per core, produce and consume rates, and the relay against a bare
    /// consumer.
    Relay(relay::Args),
    /// Window aggregation events/s per core, memory at 100k..5M events, and the delay from the
    /// watermark passing a window end to its result being durable (real broker).
    Windows(windows::Args),
    /// Shard rows written per CPU-second, next to pyarrow writing the same rows and layout.
    Shards(shards::Args),
    /// Enrichment events and tokens per CPU-second by inference batch size, next to the Python
    /// onnxruntime pipeline on the same texts.
    Ner(ner::Args),
    /// LoRA training tokens/s and peak RSS with the base in NF4 and in f32, next to PEFT on
    /// torch-CPU training the same adapter on the same token ids.
    Train(train::Args),
    /// Peak memory and open files of the windows, shards and gate stages, and how long until
    /// every result is durable, at 5,000 and 50,000 tenants of one event pair each.
    Tenants(tenants::Args),
}

#[tokio::main]
async fn main() -> ExitCode {
    let Cli { globals, action } = Cli::parse();
    aion_cli::run(&globals, |ctx| run(action, ctx)).await
}

async fn run(action: Action, ctx: Context) -> Result<()> {
    let ctx = &ctx;
    match action {
        Action::Relay(args) => relay::run(args, ctx).await,
        Action::Windows(args) => windows::run(args, ctx).await,
        Action::Shards(args) => shards::run(args, ctx).await,
        Action::Ner(args) => ner::run(args).await,
        Action::Train(args) => train::run(args).await,
        Action::Tenants(args) => tenants::run(args, ctx).await,
    }
}

/// The context a broker benchmark runs in: a fresh local broker (kept alive by the returned
/// handle) unless `configured_brokers`, and group ids of their own; with the run's id.
fn bench_context(
    ctx: &Context,
    configured_brokers: bool,
) -> Result<(Context, Option<aion_broker::Broker>, i64)> {
    let mut ctx = ctx.clone();
    let broker = if configured_brokers {
        None
    } else {
        let broker = aion_broker::Broker::start_temporary()?;
        ctx.kafka.brokers = broker.bootstrap();
        Some(broker)
    };
    let run_id = chrono::Utc::now().timestamp_millis();
    ctx.config.kafka.group_prefix = format!("bench.{run_id}");
    Ok((ctx, broker, run_id))
}

/// The `aion` binary built next to this one: the stages a benchmark runs as processes.
fn aion_binary() -> Result<std::path::PathBuf> {
    let aion = std::env::current_exe()
        .context("locating aion-bench")?
        .with_file_name("aion");
    anyhow::ensure!(
        aion.is_file(),
        "no aion binary at {} (build the workspace: `cargo build --workspace`)",
        aion.display()
    );
    Ok(aion)
}

/// The Python of the reference checks: `explicit`, else the venv `scripts/setup` makes.
fn reference_python(explicit: Option<std::path::PathBuf>) -> std::path::PathBuf {
    explicit.unwrap_or_else(|| aion_broker::cache_dir().join("venv/bin/python"))
}

/// `VmRSS`, `VmHWM`, ... of a process (`self` or a pid) in bytes.
fn proc_status_bytes(process: &str, field: &str) -> Result<u64> {
    let path = format!("/proc/{process}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .with_context(|| format!("no {field} in {path}"))
}

/// CPU seconds this process has used (user + system), from /proc.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}
