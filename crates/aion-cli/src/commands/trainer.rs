//! `aion trainer run` (the QLoRA trainer stage), `aion train cancel|status`, `aion generate` and
//! `aion adapters merge`.

use std::path::{Path, PathBuf};

use aion_events::{topics, ControlAction, TrainControl, TrainStatus};
use aion_kafka::Sink;
use aion_trainer::stage::{final_status, STATUS_FILE};
use aion_trainer::{BaseModel, DataFilter, Stats, Storage, TrainConfig, TrainerOptions};
use anyhow::{bail, Context as _, Result};
use clap::Subcommand;
use tokio_util::sync::CancellationToken;

use crate::Context;

/// The offline base model `scripts/setup` installs.
pub fn default_base() -> PathBuf {
    aion_broker::cache_dir().join("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
}

#[derive(Debug, Subcommand)]
pub enum Action {
    /// Consume `train.trigger.v1` and run one QLoRA job per trigger (NF4 base + LoRA on q/k/v/o),
    /// reporting on `train.status.v1`; adapters land in `<adapters dir>/<tenant>/<job>/adapter`
    /// (PEFT format) and are promoted when their held-out loss beats the base's.
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
pub struct BaseArgs {
    /// Base model: a GGUF file or a Hugging Face directory (default: the offline
    /// SmolLM2-135M-Instruct `scripts/setup` installs).
    #[arg(long, env = "AION_BASE_MODEL", value_name = "PATH")]
    pub base: Option<PathBuf>,
}

impl BaseArgs {
    fn path(&self) -> PathBuf {
        self.base.clone().unwrap_or_else(default_base)
    }
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub base: BaseArgs,
    /// Training settings as TOML (fields of the trainer's TrainConfig: max_len, held_out_fraction,
    /// schedule = "linear" | "constant", warmup_ratio, gradient_checkpointing = true for long
    /// sequences, checkpoint_every, keep_checkpoints, seed, ...); a trigger's recipe still sets
    /// the LoRA shape, learning rate, epochs and batch. (Not `--config`: that is the global
    /// product configuration, `AION_CONFIG`.)
    #[arg(long, value_name = "FILE")]
    pub train_config: Option<PathBuf>,
    /// Stop each job after this many optimiser steps (smoke runs, CPU demos).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Longest example in tokens.
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Use at most this many training rows per job.
    #[arg(long, default_value_t = DataFilter::default().max_examples)]
    pub max_examples: usize,
    /// Use local (non-fallback) answers with at least this confidence; fallback answers are
    /// always used.
    #[arg(long, default_value_t = DataFilter::default().min_local_confidence)]
    pub min_local_confidence: f64,
    /// A row whose retrieval named one of the trigger's worst entities (`top_entities`) counts
    /// this many times (1: no weighting).
    #[arg(long, default_value_t = DataFilter::default().entity_weight as u64, value_parser = clap::value_parser!(u64).range(1..))]
    pub entity_weight: u64,
    /// Root of the adapter directories (default: `<state dir>/adapters`).
    #[arg(long, env = "AION_ADAPTERS_DIR", value_name = "DIR")]
    pub adapters_dir: Option<PathBuf>,
    /// Where jobs train: `cpu` (f32 compute), or `cuda` / `cuda:N` for a GPU (bf16 compute over
    /// the NF4 base, f32 adapters and optimiser state; a build with `--features cuda`).
    #[arg(
        long,
        env = "AION_TRAIN_DEVICE",
        default_value = "cpu",
        value_name = "DEVICE"
    )]
    pub device: String,
}

impl RunArgs {
    /// The defaults of `aion trainer run` (for `aion up`).
    pub fn defaults() -> Self {
        Self {
            base: BaseArgs { base: None },
            train_config: None,
            max_steps: None,
            max_len: None,
            max_examples: DataFilter::default().max_examples,
            min_local_confidence: DataFilter::default().min_local_confidence,
            entity_weight: DataFilter::default().entity_weight as u64,
            adapters_dir: None,
            device: "cpu".into(),
        }
    }
}

/// `cpu`, `cuda` or `cuda:N`; a CUDA device this build or machine cannot open fails here, at
/// start, with candle's reason.
pub fn device(name: &str) -> Result<candle_core::Device> {
    let cuda = |ordinal: usize| {
        candle_core::Device::new_cuda(ordinal)
            .with_context(|| format!("opening the training device {name}"))
    };
    match name {
        "cpu" => Ok(candle_core::Device::Cpu),
        "cuda" => cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(ordinal)) => cuda(ordinal),
            _ => anyhow::bail!("`{other}` is not a training device: use cpu, cuda or cuda:N"),
        },
    }
}

pub fn adapters_dir(ctx: &Context, explicit: Option<PathBuf>) -> PathBuf {
    explicit.unwrap_or_else(|| ctx.state().adapters())
}

pub fn options(ctx: &Context, args: RunArgs) -> Result<TrainerOptions> {
    let mut config: TrainConfig = match &args.train_config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("{}", path.display()))?
        }
        None => TrainConfig::default(),
    };
    if args.max_steps.is_some() {
        config.max_steps = args.max_steps;
    }
    if let Some(max_len) = args.max_len {
        config.max_len = max_len;
    }
    Ok(TrainerOptions {
        kafka: ctx.kafka.clone(),
        group_id: ctx.group("trainer"),
        shards_root: ctx.state().table(aion_events::layout::Table::Shards),
        adapters_root: adapters_dir(ctx, args.adapters_dir),
        base_model: args.base.path(),
        device: device(&args.device)?,
        config,
        filter: DataFilter {
            fallback: true,
            min_local_confidence: args.min_local_confidence,
            max_examples: args.max_examples,
            entity_weight: usize::try_from(args.entity_weight).unwrap_or(usize::MAX),
        },
        decode: ctx.decode_limits(),
        progress_bar: aion_trainer::stage::interactive(),
    })
}

pub async fn run(action: Action, ctx: &Context, stop: CancellationToken) -> Result<()> {
    match action {
        Action::Run(args) => {
            let options = options(ctx, args)?;
            Ok(aion_trainer::run(&options, stop, &Stats::default()).await?)
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    /// The job to cancel: its trigger id (`aion train status` lists them).
    #[arg(long)]
    pub job: String,
}

/// Publishes a cancel request; the trainer stops the job at its next step.
pub async fn cancel(args: CancelArgs, ctx: &Context) -> Result<()> {
    let control = TrainControl {
        job_id: args.job,
        action: ControlAction::Cancel,
        at: chrono::Utc::now(),
    };
    aion_kafka::partition_count(&ctx.kafka, topics::TRAIN_CONTROL)?;
    let sink = Sink::new(&ctx.kafka, "train-cancel")?;
    sink.send_confirmed(
        topics::TRAIN_CONTROL,
        None,
        Some(control.job_id.as_bytes()),
        &serde_json::to_vec(&control)?,
    )
    .await?
    .wait(topics::TRAIN_CONTROL)
    .await?;
    println!("{}", serde_json::to_string(&control)?);
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Only this tenant's jobs.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Root of the adapter directories (default: `<state dir>/adapters`).
    #[arg(long, env = "AION_ADAPTERS_DIR", value_name = "DIR")]
    pub adapters_dir: Option<PathBuf>,
}

/// Finished jobs recorded under the adapters directory, oldest first, as JSON lines.
pub fn finished_jobs(root: &Path, tenant: Option<&str>) -> Result<Vec<TrainStatus>> {
    let mut jobs = Vec::new();
    let Ok(tenants) = std::fs::read_dir(root) else {
        return Ok(jobs);
    };
    for t in tenants.flatten() {
        if tenant.is_some_and(|want| t.file_name().to_str() != Some(want)) {
            continue;
        }
        for job in std::fs::read_dir(t.path())?.flatten() {
            if job.path().join(STATUS_FILE).is_file() {
                jobs.extend(final_status(&job.path()));
            }
        }
    }
    jobs.sort_by_key(|s| s.at);
    Ok(jobs)
}

pub fn status(args: StatusArgs, ctx: &Context) -> Result<()> {
    let root = adapters_dir(ctx, args.adapters_dir);
    for job in finished_jobs(&root, args.tenant.as_deref())? {
        println!("{}", serde_json::to_string(&job)?);
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// The instruction (wrapped in the Alpaca prompt the trainer uses, unless --raw).
    pub prompt: String,
    #[command(flatten)]
    pub base: BaseArgs,
    /// A PEFT adapter directory applied to the base.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// Pass the prompt to the model as is.
    #[arg(long)]
    pub raw: bool,
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
}

fn load_base(base: &BaseArgs, storage: Storage) -> Result<BaseModel> {
    let path = base.path();
    BaseModel::load(&path, storage, &candle_core::Device::Cpu).with_context(|| {
        format!(
            "loading the base model {} (scripts/setup installs the offline one)",
            path.display()
        )
    })
}

fn load_lora(base: &BaseModel, dir: &Path) -> Result<aion_trainer::Lora> {
    aion_trainer::load_adapter(dir, base.model.config().num_hidden_layers)
        .with_context(|| format!("loading the adapter {}", dir.display()))
}

/// Greedy generation with the base and, if given, an adapter.
pub fn generate(args: GenerateArgs) -> Result<()> {
    let base = load_base(&args.base, Storage::Nf4 { double_quant: true })?;
    let lora = args
        .adapter
        .as_deref()
        .map(|d| load_lora(&base, d))
        .transpose()?;
    let prompt = if args.raw {
        args.prompt
    } else {
        aion_trainer::alpaca_prompt(&args.prompt)
    };
    println!(
        "{}",
        aion_trainer::generate(&base, lora.as_ref(), &prompt, args.max_new_tokens)?
    );
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum AdaptersAction {
    /// Merge an adapter into the (NF4-dequantised) base and write a Hugging Face directory
    /// (config.json, model.safetensors, tokenizer.json) any runtime can serve.
    Merge(MergeArgs),
}

#[derive(Debug, clap::Args)]
pub struct MergeArgs {
    #[command(flatten)]
    pub base: BaseArgs,
    /// The PEFT adapter directory.
    #[arg(long, value_name = "DIR")]
    pub adapter: PathBuf,
    /// Where to write the merged model (must not exist).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

pub fn adapters(action: AdaptersAction) -> Result<()> {
    match action {
        AdaptersAction::Merge(args) => {
            if args.out.exists() {
                bail!("{} exists; choose a new directory", args.out.display());
            }
            let base = load_base(&args.base, Storage::Nf4 { double_quant: true })?;
            let lora = load_lora(&base, &args.adapter)?;
            let merged = BaseModel {
                model: base.model.merged(Some(&lora))?,
                ..base
            };
            aion_trainer::export_dequantised(&merged, &args.out)?;
            println!("{}", args.out.display());
            Ok(())
        }
    }
}
