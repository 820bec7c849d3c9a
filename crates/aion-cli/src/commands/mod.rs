//! Subcommands. Each module owns its arguments and its run function.

mod answers;
mod broker;
pub mod enrich;
mod gate;
mod label_queue;
mod labels;
mod models;
mod ndcg;
mod produce;
mod schemas;
mod serve;
mod shards;
mod sql;
mod tail;
pub mod topics;
pub mod trainer;
mod tune;
mod up;
mod validate;
mod windows;

use anyhow::Result;
use clap::Subcommand;
use tokio_util::sync::CancellationToken;
use tracing::info;

use aion_runtime::relay;

use crate::Context;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the local development broker (Nisshi, SQLite storage, loopback only).
    #[command(subcommand)]
    Broker(broker::Action),
    /// Create or list Kafka topics (brokers here do not auto-create them).
    #[command(subcommand)]
    Topics(topics::Action),
    /// Publish synthetic retrieval and answer traffic (PT-BR and EN), optionally degrading.
    Produce(produce::Args),
    /// Print the records of a topic as JSON lines.
    Tail(tail::Args),
    /// Validate application events and forward the valid ones; invalid ones go to `<topic>.dlq`.
    Relay(RelayArgs),
    /// Windowed nDCG and fallback-rate aggregates per tenant, on event time.
    #[command(subcommand)]
    Windows(windows::Action),
    /// Entities and keyphrases of retrieval events (local NER on candle) → `retrieval.enriched.v1`.
    #[command(subcommand)]
    Enrich(EnrichAction),
    /// Token-classification models for the enricher: `pull` from the Hugging Face hub.
    #[command(subcommand)]
    Models(models::Action),
    /// Training shards: answer events, PII redacted, as Parquet under `<state dir>/shards`.
    #[command(subcommand)]
    Shards(ShardsAction),
    /// The trigger gate: thresholds over window metrics → `train.trigger.v1`.
    #[command(subcommand)]
    Gate(gate::Action),
    /// Training requests and jobs: trigger, cancel, status.
    #[command(subcommand)]
    Train(TrainAction),
    /// The QLoRA trainer stage: `train.trigger.v1` → adapters + `train.status.v1`.
    #[command(subcommand)]
    Trainer(trainer::Action),
    /// Greedy generation with the base model and, optionally, a trained adapter.
    Generate(trainer::GenerateArgs),
    /// Trained adapters: `merge` one into its base.
    #[command(subcommand)]
    Adapters(trainer::AdaptersAction),
    /// The control API and web panel: training start/cancel/status, thresholds, metric series,
    /// triggers, the entity heatmap, Prometheus metrics.
    Serve(serve::Args),
    /// SQL (DataFusion) over the Parquet tables: window metrics, the window history, shards,
    /// entities, labels and the label queue.
    Sql(sql::Args),
    /// Queue the answers most worth a human label (confidence closest to τ, not yet queued or
    /// labelled): the `label_queue` table and JSON lines for a labelling tool.
    LabelQueue(label_queue::Args),
    /// Human labels: `import` a labelling tool's JSON lines into `labels.v1`.
    #[command(subcommand)]
    Labels(labels::Action),
    /// Sweep the fallback confidence threshold τ over the answer history and print Cost(τ), its
    /// argmin and the current τ's cost.
    TuneFallback(tune::Args),
    /// Per-event nDCG@k of a file of retrieval events.
    Ndcg(ndcg::Args),
    /// Check every stage definition of a pipelines directory (TOML parsed and validated, the
    /// window aggregate planned, analysts' SQL parsed); non-zero exit if any is invalid.
    Validate(validate::Args),
    /// Run the whole loop locally: broker, topics, stages and synthetic traffic, with a live summary.
    Up(up::Args),
    /// The topics' JSON Schemas in a schema registry: `register`.
    #[command(subcommand)]
    Schemas(schemas::Action),
    /// Print a shell completion script, e.g. `aion completions bash > /etc/bash_completion.d/aion`.
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Subcommand)]
pub enum EnrichAction {
    /// Consume `retrieval.v1`, publish each event with its top 20 terms (entity mentions weigh 3,
    /// keyphrases 1) to `retrieval.enriched.v1`; invalid events go to the DLQ.
    Run(enrich::RunArgs),
}

#[derive(Debug, Subcommand)]
pub enum ShardsAction {
    /// Consume `answer.v1` and write Hive-partitioned, zstd Parquet shards with a manifest;
    /// offsets are stored only once a row's file is renamed into place.
    Run(shards::RunArgs),
    /// Merge each tenant-day's small files (one per roll) into large ones, exactly once: readers
    /// switch to a compacted file with one manifest line, replaced files are deleted after a
    /// grace period. Safe while `shards run` writes; one compaction per table at a time.
    Compact(shards::CompactArgs),
}

#[derive(Debug, Subcommand)]
pub enum TrainAction {
    /// Publish a manual trigger for a tenant (reason `manual`), as the gate would.
    Trigger(gate::TriggerArgs),
    /// Ask the trainer to stop a job at its next step (no adapter is written).
    Cancel(trainer::CancelArgs),
    /// Finished jobs (final status, losses, adapter, promotion) as JSON lines.
    Status(trainer::StatusArgs),
}

#[derive(Debug, clap::Args)]
pub struct RelayArgs {
    /// Topics to consume: a schema name (`retrieval.v1`) or `TOPIC=SCHEMA`. Repeatable.
    #[arg(long = "input", default_values = ["retrieval.v1", "answer.v1"])]
    inputs: Vec<relay::Input>,
    /// Valid records of TOPIC are forwarded to `TOPIC.SUFFIX`.
    #[arg(long, default_value = "valid", env = "AION_RELAY_SUFFIX")]
    suffix: String,
}

/// What a stop (SIGTERM/SIGINT) means to a command.
enum OnStop {
    /// A stage: once it consumes, it drains and commits what is durable itself; a stop before that
    /// ends it here, successfully — it holds nothing, so nothing is committed.
    Stage,
    /// The command handles the stop itself from its first moment (flushes, summaries).
    Own,
    /// A one-shot command is abandoned and the exit says it was interrupted.
    Interrupt,
}

impl Command {
    fn on_stop(&self) -> OnStop {
        match self {
            Command::Relay(_)
            | Command::Windows(windows::Action::Run(_))
            | Command::Enrich(_)
            | Command::Shards(_)
            | Command::Gate(gate::Action::Run(_))
            | Command::Trainer(_) => OnStop::Stage,
            Command::Produce(_) | Command::Tail(_) | Command::Serve(_) | Command::Up(_) => {
                OnStop::Own
            }
            _ => OnStop::Interrupt,
        }
    }
}

/// Runs `command`; `stop` is cancelled by the first SIGTERM/SIGINT ([`shutdown_signal`]).
pub async fn run(command: Command, ctx: Context, stop: CancellationToken) -> Result<()> {
    let on_stop = command.on_stop();
    if matches!(on_stop, OnStop::Stage) {
        info!("stage starting");
    }
    // On its own task, so that a stop is seen even while start-up waits on the broker.
    let mut work = tokio::spawn(dispatch(command, ctx, stop.clone()));
    let joined = |r: std::result::Result<Result<()>, tokio::task::JoinError>| {
        r.unwrap_or_else(|e| Err(anyhow::anyhow!("the command panicked: {e}")))
    };
    tokio::select! {
        biased;
        () = stop.cancelled(), if !matches!(on_stop, OnStop::Own) => match on_stop {
            OnStop::Stage if !aion_kafka::consuming() => {
                info!("stopped during start-up: nothing consumed, nothing committed");
                // Exit now: start-up may be blocked in a broker call for its whole timeout, and
                // the runtime would wait for it; there is nothing to drain or commit.
                std::process::exit(0)
            }
            OnStop::Stage | OnStop::Own => joined(work.await),
            OnStop::Interrupt => anyhow::bail!("interrupted"),
        },
        result = &mut work => joined(result),
    }
}

async fn dispatch(command: Command, ctx: Context, stop: CancellationToken) -> Result<()> {
    match command {
        Command::Broker(action) => broker::run(action, &ctx),
        Command::Topics(action) => topics::run(action, &ctx).await,
        Command::Produce(args) => produce::run(args, &ctx, stop).await,
        Command::Tail(args) => tail::run(args, &ctx, stop).await,
        Command::Relay(args) => {
            let (relay, mut plan) = relay::Relay::new(
                args.inputs,
                &args.suffix,
                ctx.group("relay"),
                None,
                stop.clone(),
            );
            plan.decode = ctx.decode_limits();
            let counts = aion_runtime::Counts::default();
            Ok(aion_runtime::run(&ctx.kafka, &plan, relay, stop, &counts).await?)
        }
        Command::Windows(action) => windows::run(action, &ctx, stop).await,
        Command::Enrich(EnrichAction::Run(args)) => enrich::run(args, &ctx, stop).await,
        Command::Models(action) => models::run(action).await,
        Command::Shards(ShardsAction::Run(args)) => shards::run(args, &ctx, stop).await,
        Command::Shards(ShardsAction::Compact(args)) => shards::compact(args, &ctx, stop).await,
        Command::Gate(action) => gate::run(action, &ctx, stop).await,
        Command::Train(TrainAction::Trigger(args)) => gate::trigger(args, &ctx).await,
        Command::Train(TrainAction::Cancel(args)) => trainer::cancel(args, &ctx).await,
        Command::Train(TrainAction::Status(args)) => trainer::status(args, &ctx),
        Command::Trainer(action) => trainer::run(action, &ctx, stop).await,
        Command::Generate(args) => trainer::generate(args),
        Command::Adapters(action) => trainer::adapters(action),
        Command::Serve(args) => serve::run(args, &ctx, stop).await,
        Command::Sql(args) => sql::run(args, &ctx).await,
        Command::LabelQueue(args) => label_queue::run(args, &ctx).await,
        Command::Labels(action) => labels::run(action, &ctx).await,
        Command::TuneFallback(args) => tune::run(args, &ctx).await,
        Command::Ndcg(args) => ndcg::run(args, &ctx),
        Command::Validate(args) => validate::run(args).await,
        Command::Up(args) => up::run(args, ctx, stop).await,
        Command::Schemas(action) => schemas::run(action).await,
        Command::Completions { shell } => {
            let mut cli = <crate::Cli as clap::CommandFactory>::command();
            // Into a buffer: clap_complete panics on a write error (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cli, "aion", &mut script);
            Ok(std::io::Write::write_all(&mut std::io::stdout(), &script)?)
        }
    }
}

/// Cancelled on the first SIGINT or SIGTERM: stages stop reading, drain and commit. The handlers
/// are registered before this returns, so a signal is never the default kill once it has run.
pub fn shutdown_signal() -> CancellationToken {
    use tokio::signal::unix::{signal, SignalKind};
    let token = CancellationToken::new();
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => {
            // Only without a signal driver (never on Unix with tokio's `signal` feature).
            tracing::warn!(%e, "cannot handle SIGTERM/SIGINT: they will kill the process");
            return token;
        }
    };
    let t = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: shutting down"),
            _ = int.recv() => info!("SIGINT: shutting down"),
        }
        t.cancel();
    });
    token
}
