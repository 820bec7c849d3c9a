//! `aion-bench train`: LoRA training tokens/s and peak memory of the trainer, with the base in
//! NF4 and in f32, next to transformers + PEFT training the same adapter on the same token ids
//! (`scripts/checks/peft_train_bench.py`). On the CPU the reference is f32 (bitsandbytes' 4-bit
//! kernels need CUDA); with `--device cuda` both sides run QLoRA's recipe, NF4 storage with bf16
//! compute, and the table adds each process's peak GPU memory.
//!
//! Each run is a child process of its own (this binary re-executed with `--child`, or Python) so
//! that its peak RSS and GPU memory are its own and not the other run's or the parent's.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aion_trainer::model::Proj;
use aion_trainer::nf4::Nf4Tensor;
use aion_trainer::{alpaca_prompt, BaseModel, Example, LoraConfig, Schedule, Storage, TrainConfig};
use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::cpu_seconds;
use aion_cli::commands::trainer::{default_base, device};

/// Examples in the synthetic set (more when `batch × steps` needs more, so no step is short).
const EXAMPLES: usize = 64;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Base model: a GGUF file or a Hugging Face directory (default: the offline
    /// SmolLM2-135M-Instruct `scripts/setup` installs).
    #[arg(long, env = "AION_BASE_MODEL", value_name = "PATH")]
    pub base: Option<PathBuf>,
    /// Optimiser steps per run; the first is a warm-up and is not timed.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(2..))]
    pub steps: u64,
    /// Sequences per optimiser step (one micro-batch, no gradient accumulation), both sides.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
    /// Tokens per sequence: every synthetic example is long enough to fill it, so no padding.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(16..))]
    pub seq_len: u64,
    /// Python with torch, transformers and peft for the reference (default: the venv
    /// `AION_PEFT_CHECK=1 scripts/setup` creates in `$AION_CACHE_DIR/venv-trainer`).
    #[arg(long, env = "AION_TRAINER_PYTHON")]
    pub python: Option<PathBuf>,
    /// Recompute activations in backward on both sides (transformers'
    /// `gradient_checkpointing_enable`): less memory at long `--seq-len`, more compute.
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// Where both sides train: `cpu`, or `cuda` / `cuda:N` (aion needs a `cuda` build, the
    /// reference bitsandbytes in the venv). On CUDA both run NF4 with bf16 compute.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Keep the exported base (`DIR/base`) and token ids (`DIR/ids.json`) here instead of a
    /// temporary directory.
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Internal: run one aion measurement in this process and print it as one JSON line.
    #[arg(long, hide = true, value_enum)]
    pub child: Option<StorageArg>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StorageArg {
    Nf4,
    F32,
}

impl StorageArg {
    fn storage(self) -> Storage {
        match self {
            StorageArg::Nf4 => Storage::Nf4 { double_quant: true },
            StorageArg::F32 => Storage::F32,
        }
    }

    fn label(self) -> &'static str {
        match self {
            StorageArg::Nf4 => "nf4",
            StorageArg::F32 => "f32",
        }
    }
}

/// One run's numbers, as the child and the Python reference print them (one JSON line).
#[derive(Debug, Serialize, Deserialize)]
struct Measured {
    /// What ran: `candle` or the reference's library versions.
    runtime: String,
    /// Real (unpadded) tokens through forward + backward + optimiser in the timed steps.
    tokens: u64,
    wall_s: f64,
    /// CPU time of all the process's threads over the timed steps.
    cpu_s: f64,
    /// Loss of the last step (mean per response token): a sanity check that both sides train.
    loss: f64,
    /// Bytes resident once the base is loaded.
    rss_after_load: u64,
    /// Peak resident bytes from the end of loading to the end of training (None when the
    /// kernel would not reset the high-water mark).
    peak_train: Option<u64>,
    /// Peak resident bytes of the whole process, loading included.
    peak_process: u64,
    /// Peak GPU memory of the process as the driver reports it (CUDA context included), sampled
    /// by the parent every 50 ms; None on the CPU.
    #[serde(default)]
    peak_gpu: Option<u64>,
}

pub async fn run(args: Args) -> Result<()> {
    if let Some(which) = args.child {
        let measured = child(&args, which)?;
        println!("{}", serde_json::to_string(&measured)?);
        return Ok(());
    }
    // A device this build or machine cannot open fails here, before anything is exported.
    let gpu = !device(&args.device)?.is_cpu();
    let base_path = args.base.clone().unwrap_or_else(default_base);
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let temporary = args.work_dir.is_none();
    let work = args.work_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("aion-bench-train-{}", std::process::id()))
    });
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let result = compare(&args, &base_path, &work, threads, gpu);
    if temporary {
        std::fs::remove_dir_all(&work).ok();
    }
    result
}

fn compare(args: &Args, base_path: &Path, work: &Path, threads: usize, gpu: bool) -> Result<()> {
    let exe = std::env::current_exe().context("locating aion-bench to re-run")?;
    let mut ours = Vec::new();
    for which in [StorageArg::Nf4, StorageArg::F32] {
        eprintln!("bench train: aion, {} base ...", which.label());
        let mut command = Command::new(&exe);
        command
            .args(["--log", "warn", "train", "--child", which.label()])
            .arg("--base")
            .arg(base_path)
            .arg("--work-dir")
            .arg(work)
            .args(["--device", &args.device])
            .args(["--steps", &args.steps.to_string()])
            .args(["--batch", &args.batch.to_string()])
            .args(["--seq-len", &args.seq_len.to_string()]);
        if args.gradient_checkpointing {
            command.arg("--gradient-checkpointing");
        }
        let measured =
            measure(command, gpu).with_context(|| format!("aion {} run", which.label()))?;
        ours.push((which, measured));
    }

    // The reference trains on the NF4-dequantised base (the same values aion's NF4 run uses),
    // exported as a Hugging Face directory, on exactly the token ids aion trains on.
    let base = BaseModel::load(
        base_path,
        Storage::Nf4 { double_quant: true },
        &candle_core::Device::Cpu,
    )
    .with_context(|| {
        format!(
            "loading {} (scripts/setup installs it)",
            base_path.display()
        )
    })?;
    let bytes = WeightBytes::of(&base)?;
    let name = base_path.file_name().map_or_else(
        || base_path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let python = args
        .python
        .clone()
        .unwrap_or_else(|| aion_broker::cache_dir().join("venv-trainer/bin/python"));
    let reference = if python.exists() {
        eprintln!("bench train: PEFT reference ...");
        Some(reference(args, &base, &python, work, threads, gpu))
    } else {
        None
    };
    drop(base);

    println!();
    let compute = if gpu { "bf16" } else { "f32" };
    let checkpointing = if args.gradient_checkpointing {
        "with"
    } else {
        "no"
    };
    println!(
        "{name} on {}: {} optimiser steps of batch {} × {} tokens (first step is warm-up, not \
         timed), LoRA r 16 α 16 on q/k/v/o, dropout 0, AdamW lr 2e-4, {compute} compute, \
         {checkpointing} gradient checkpointing, {threads} CPU threads each side",
        args.device, args.steps, args.batch, args.seq_len
    );
    println!("| side | base weights | tokens/s (wall) | tokens per CPU-s | RSS after load | peak RSS, training | peak RSS, process | peak GPU memory | last loss | wall vs PEFT |");
    println!("|------|--------------|----------------:|-----------------:|---------------:|-------------------:|------------------:|----------------:|----------:|-------------:|");
    let reference_rate = match &reference {
        Some(Ok(r)) => Some(r.tokens as f64 / r.wall_s.max(1e-9)),
        _ => None,
    };
    for (which, m) in &ours {
        let weights = match which {
            StorageArg::Nf4 => "NF4, double-quant scales",
            StorageArg::F32 => "f32",
        };
        row("aion (candle)", weights, m, reference_rate);
    }
    let reference_weights = if gpu {
        "NF4, double-quant scales (bitsandbytes)"
    } else {
        "f32 (4-bit needs CUDA)"
    };
    match &reference {
        Some(Ok(r)) => row(
            &format!("PEFT ({})", r.runtime),
            reference_weights,
            r,
            reference_rate,
        ),
        Some(Err(_)) => {
            println!("| PEFT | {reference_weights} | failed, see below | | | | | | | |")
        }
        None => println!(
            "| PEFT | {reference_weights} | not run: no {} | | | | | | | |",
            python.display()
        ),
    }

    println!();
    println!("| base weights in memory | linear layers (q k v o gate up down) | embedding, norms (f32 either way) | total |");
    println!("|------------------------|-------------------------------------:|----------------------------------:|------:|");
    for (label, linear) in [("NF4, double-quant scales", bytes.nf4), ("f32", bytes.f32)] {
        println!(
            "| {label} | {} | {} | {} |",
            mb(linear),
            mb(bytes.shared),
            mb(linear + bytes.shared)
        );
    }
    let peak = |w: StorageArg| {
        ours.iter()
            .find(|(s, _)| *s == w)
            .and_then(|(_, m)| m.peak_train)
    };
    if let (Some(nf4), Some(f32)) = (peak(StorageArg::Nf4), peak(StorageArg::F32)) {
        println!();
        println!(
            "Peak RSS while training: NF4 {} vs f32 {}, {} less; the linear weights alone differ by {}.",
            mb(nf4),
            mb(f32),
            mb(f32.saturating_sub(nf4)),
            mb(bytes.f32.saturating_sub(bytes.nf4))
        );
    }

    println!();
    println!("Notes:");
    println!("- tokens: real tokens through forward + backward + AdamW; per CPU-s counts every thread's time.");
    println!("- peak RSS, training: high-water mark reset once the base is loaded (aion loads a GGUF through f32");
    println!("  tensors before quantising, so the process peak includes a transient f32 copy).");
    if gpu {
        println!("- peak GPU memory: the driver's per-process figure (CUDA context included), sampled every 50 ms.");
        println!("- the reference is QLoRA as bitsandbytes runs it: NF4 with double quantisation, bf16 compute.");
    } else {
        println!("- the reference is f32: bitsandbytes' 4-bit (QLoRA) kernels need CUDA. On a GPU machine,");
        println!("  `--device cuda` (a `cuda` build, bitsandbytes in the venv) runs both sides as QLoRA.");
    }
    println!(
        "- the reference uses transformers' default (sdpa) attention, LoRA dropout 0, weight decay 0."
    );
    match reference {
        None => println!(
            "- reference skipped: {} not found (`AION_PEFT_CHECK=1 scripts/setup` creates it, or pass --python).",
            python.display()
        ),
        Some(Err(e)) => return Err(e),
        Some(Ok(_)) => {}
    }
    Ok(())
}

fn row(side: &str, weights: &str, m: &Measured, reference_rate: Option<f64>) {
    let wall = m.tokens as f64 / m.wall_s.max(1e-9);
    let ratio = reference_rate.map_or("".into(), |r| format!("{:.2}x", wall / r.max(1e-9)));
    println!(
        "| {side} | {weights} | {wall:.0} | {:.0} | {} | {} | {} | {} | {:.3} | {ratio} |",
        m.tokens as f64 / m.cpu_s.max(1e-9),
        mb(m.rss_after_load),
        m.peak_train.map_or("n/a".into(), mb),
        mb(m.peak_process),
        m.peak_gpu.map_or("–".into(), mb),
        m.loss
    );
}

fn mb(bytes: u64) -> String {
    format!("{:.0} MB", bytes as f64 / 1e6)
}

/// Runs one measurement process to its end and parses its result line; with `gpu`, samples the
/// process's GPU memory while it runs.
fn measure(mut command: Command, gpu: bool) -> Result<Measured> {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the measurement")?;
    let sampler = gpu.then(|| GpuSampler::start(child.id()));
    let out = child
        .wait_with_output()
        .context("waiting for the measurement")?;
    let peak_gpu = sampler.map(GpuSampler::stop).transpose()?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr));
    }
    let mut measured = parse_measured(&out.stdout)?;
    measured.peak_gpu = peak_gpu;
    Ok(measured)
}

/// Samples one process's GPU memory with `nvidia-smi` (the driver's per-process figure, the same
/// for candle and torch) and keeps the highest reading.
struct GpuSampler {
    done: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<u64>>,
}

impl GpuSampler {
    fn start(pid: u32) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let stop = done.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let out = Command::new("nvidia-smi")
                    .args([
                        "--query-compute-apps=pid,used_memory",
                        "--format=csv,noheader,nounits",
                    ])
                    .output()
                    .context("running nvidia-smi to read GPU memory")?;
                // Lines `pid, MiB`.
                let text = String::from_utf8_lossy(&out.stdout);
                for line in text.lines() {
                    if let Some((p, mib)) = line.split_once(',') {
                        if p.trim() == pid.to_string() {
                            let mib: u64 = mib.trim().parse().unwrap_or(0);
                            peak = peak.max(mib << 20);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(peak)
        });
        Self { done, thread }
    }

    fn stop(self) -> Result<u64> {
        self.done.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the GPU memory sampler panicked"))?
    }
}

fn parse_measured(stdout: &[u8]) -> Result<Measured> {
    let text = String::from_utf8_lossy(stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("no JSON result line in the run's output")?;
    serde_json::from_str(line).with_context(|| format!("parsing {line}"))
}

/// Bytes of the base weights in each storage: the linear layers are what NF4 quantises; the
/// embedding (also the tied lm_head), norms and biases stay f32.
struct WeightBytes {
    nf4: u64,
    f32: u64,
    shared: u64,
}

impl WeightBytes {
    fn of(base: &BaseModel) -> Result<Self> {
        let cfg = base.model.config();
        let layers = cfg.num_hidden_layers as u64;
        let (mut nf4, mut f32) = (0u64, 0u64);
        for p in Proj::ALL {
            let (rows, cols) = base.model.proj_dims(p)?;
            // The packed size depends only on the shape, so any values do.
            let data: Vec<f32> = (0..rows * cols).map(|i| (i % 13) as f32 - 6.0).collect();
            let q = Nf4Tensor::quantize(&data, rows, cols, true)?;
            nf4 += q.storage_bytes() as u64 * layers;
            f32 += (rows * cols * 4) as u64 * layers;
        }
        let (hidden, vocab) = (cfg.hidden_size as u64, cfg.vocab_size as u64);
        let heads = if cfg.tie_word_embeddings { 1 } else { 2 };
        let mut shared = 4 * (heads * vocab * hidden + (2 * layers + 1) * hidden);
        if base.model.has_qkv_bias() {
            for p in [Proj::Q, Proj::K, Proj::V] {
                shared += 4 * base.model.proj_dims(p)?.0 as u64 * layers;
            }
        }
        Ok(Self { nf4, f32, shared })
    }
}

/// A tokenised example as the trainer encodes it: prompt ++ response ++ EOS, cut to the
/// sequence length; loss on `ids[prompt_len..]`.
#[derive(Debug, Serialize)]
struct Encoded {
    ids: Vec<u32>,
    prompt_len: usize,
}

const TOPICS: [(&str, &str); 8] = [
    (
        "incremental index rebuilds",
        "a reconstrução incremental do índice",
    ),
    (
        "answer fallback to an external model",
        "o recurso a um modelo externo",
    ),
    (
        "nDCG over ranked results",
        "o nDCG sobre resultados ordenados",
    ),
    (
        "event-time windows with late events",
        "as janelas de tempo de evento com atrasos",
    ),
    (
        "redacting personal data in shards",
        "a remoção de dados pessoais nos fragmentos",
    ),
    (
        "LoRA adapters on a frozen base",
        "os adaptadores LoRA sobre uma base congelada",
    ),
    (
        "offset commits after durable writes",
        "a confirmação de offsets após escrita durável",
    ),
    (
        "4-bit NormalFloat weights",
        "os pesos NormalFloat de 4 bits",
    ),
];

const SENTENCES_EN: [&str; 6] = [
    "First the service reads the latest events from the broker and checks that each one is valid.",
    "Then it groups them by tenant and by window, so that every answer is counted exactly once.",
    "When quality drops below the threshold, a trigger asks the trainer for a new adapter.",
    "The trainer keeps the base model frozen and only updates two small matrices per layer.",
    "Results are written atomically, and only then is the consumer offset stored.",
    "A replay after a crash therefore produces the same files and the same metrics.",
];

const SENTENCES_PT: [&str; 6] = [
    "Primeiro o serviço lê os eventos mais recentes do broker e verifica que cada um é válido.",
    "Depois agrupa-os por cliente e por janela, para que cada resposta seja contada uma só vez.",
    "Quando a qualidade desce abaixo do limiar, um gatilho pede ao treinador um novo adaptador.",
    "O treinador mantém o modelo base congelado e só atualiza duas matrizes pequenas por camada.",
    "Os resultados são escritos de forma atómica e só então o offset do consumidor é guardado.",
    "Uma repetição após uma falha produz portanto os mesmos ficheiros e as mesmas métricas.",
];

/// `n` deterministic PT/EN instruction/response pairs, each long enough to fill `seq_len`
/// tokens, and their encodings (every one exactly `seq_len` ids).
fn dataset(base: &BaseModel, seq_len: usize, n: usize) -> Result<(Vec<Example>, Vec<Encoded>)> {
    let tok = |s: &str| -> Result<Vec<u32>> {
        Ok(base
            .tokenizer
            .encode(s, false)
            .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?
            .get_ids()
            .to_vec())
    };
    let (mut examples, mut encoded) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let (en, pt) = TOPICS[i % TOPICS.len()];
        let portuguese = (i / TOPICS.len()) % 2 == 1;
        let (instruction, sentences) = if portuguese {
            (
                format!("Explique, passo a passo ({i}), como funciona {pt} num assistente RAG."),
                &SENTENCES_PT,
            )
        } else {
            (
                format!("Explain, step by step ({i}), how {en} works in a RAG assistant."),
                &SENTENCES_EN,
            )
        };
        let prompt = tok(&alpaca_prompt(&instruction))?;
        if prompt.len() >= seq_len {
            bail!(
                "--seq-len {seq_len} is shorter than the prompt ({} tokens)",
                prompt.len()
            );
        }
        let mut response = String::new();
        let mut k = i;
        let ids = loop {
            // A few sentences at a time between tokenisations: cheap even at long sequences.
            for _ in 0..4 {
                response += &format!("{} {} ", k + 1, sentences[k % sentences.len()]);
                k += 1;
            }
            let mut ids = prompt.clone();
            ids.extend(tok(response.trim_end())?);
            ids.push(base.special.eos);
            if ids.len() >= seq_len {
                ids.truncate(seq_len);
                break ids;
            }
        };
        encoded.push(Encoded {
            ids,
            prompt_len: prompt.len(),
        });
        examples.push(Example {
            instruction,
            response: response.trim_end().to_string(),
        });
    }
    Ok((examples, encoded))
}

fn examples_needed(args: &Args) -> usize {
    EXAMPLES.max((args.batch * args.steps) as usize)
}

/// The trainer's settings for the benchmark: every example trains (no held-out split), one
/// epoch of full steps, no checkpoints inside the timed steps.
fn train_config(args: &Args) -> TrainConfig {
    TrainConfig {
        lora: LoraConfig {
            r: 16,
            alpha: 16.0,
            dropout: 0.0,
            target_modules: ["q_proj", "k_proj", "v_proj", "o_proj"]
                .map(String::from)
                .to_vec(),
        },
        max_len: args.seq_len as usize,
        held_out_fraction: 0.0,
        lr: 2e-4,
        // As the reference's plain AdamW loop: no warm-up, no decay.
        schedule: Schedule::Constant,
        warmup_ratio: 0.0,
        weight_decay: 0.0,
        batch_size: args.batch as usize,
        grad_accum: 1,
        epochs: 1,
        max_steps: Some(args.steps as usize),
        checkpoint_every: usize::MAX,
        keep_checkpoints: 1,
        gradient_checkpointing: args.gradient_checkpointing,
        ..TrainConfig::default()
    }
}

/// The child: load the base in one storage, train `steps` steps, measure.
fn child(args: &Args, which: StorageArg) -> Result<Measured> {
    let base_path = args.base.clone().unwrap_or_else(default_base);
    let work = args.work_dir.clone().context("--child needs --work-dir")?;
    let base = BaseModel::load(&base_path, which.storage(), &device(&args.device)?)
        .with_context(|| format!("loading {}", base_path.display()))?;
    let rss_after_load = crate::proc_status_bytes("self", "VmRSS")?;
    let load_peak = crate::proc_status_bytes("self", "VmHWM")?;
    let reset = reset_peak_rss();

    let (examples, encoded) = dataset(&base, args.seq_len as usize, examples_needed(args))?;
    let step_tokens: u64 = encoded
        .iter()
        .take(args.batch as usize)
        .map(|e| e.ids.len() as u64)
        .sum();
    let job_dir = work.join(format!("job-{}", which.label()));
    let mut marks: Vec<(Instant, f64)> = Vec::new();
    let mut loss = f64::NAN;
    aion_trainer::train(&base, &examples, &train_config(args), &job_dir, &mut |p| {
        marks.push((Instant::now(), cpu_seconds()));
        loss = p.loss;
        ControlFlow::Continue(())
    })?;
    std::fs::remove_dir_all(&job_dir).ok();
    let train_peak = crate::proc_status_bytes("self", "VmHWM")?;
    let (Some(first), Some(last)) = (marks.first(), marks.last()) else {
        bail!("the trainer ran no steps");
    };
    Ok(Measured {
        runtime: "candle".into(),
        tokens: step_tokens * (marks.len() as u64 - 1),
        wall_s: (last.0 - first.0).as_secs_f64(),
        cpu_s: last.1 - first.1,
        loss,
        rss_after_load,
        peak_train: reset.then_some(train_peak),
        peak_process: load_peak.max(train_peak),
        peak_gpu: None,
    })
}

/// Resets VmHWM to the current RSS (Linux ≥ 4.0), so the next reading is the peak from now on.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Exports the base, writes the token ids and runs the PEFT reference.
fn reference(
    args: &Args,
    base: &BaseModel,
    python: &Path,
    work: &Path,
    threads: usize,
    gpu: bool,
) -> Result<Measured> {
    let base_dir = work.join("base");
    if !base_dir.exists() {
        aion_trainer::export_dequantised(base, &base_dir)?;
    }
    let (_, encoded) = dataset(base, args.seq_len as usize, examples_needed(args))?;
    let ids_path = work.join("ids.json");
    std::fs::write(&ids_path, serde_json::to_vec(&encoded)?)?;
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/checks/peft_train_bench.py");
    let mut command = Command::new(python);
    command
        .arg(&script)
        .arg("--base")
        .arg(&base_dir)
        .arg("--ids")
        .arg(&ids_path)
        .args(["--batch", &args.batch.to_string()])
        .args(["--steps", &args.steps.to_string()])
        .args(["--threads", &threads.to_string()])
        .args(["--device", &args.device]);
    if gpu {
        command.args(["--nf4", "--compute-dtype", "bfloat16"]);
    }
    if args.gradient_checkpointing {
        command.arg("--gradient-checkpointing");
    }
    measure(command, gpu).with_context(|| format!("PEFT reference ({})", python.display()))
}
