//! Supervised fine-tuning of LoRA adapters on instruction/response pairs: Alpaca prompt, loss on
//! the response only, AdamW, gradient accumulation, checkpoints every N steps and resume.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Tensor, TensorId, Var, D};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::adapter::save_adapter;
use crate::model::{BaseModel, Lora, LoraConfig};
use crate::{io_err, json_err, Error, Result};

/// One supervised pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    pub instruction: String,
    pub response: String,
}

/// The Alpaca prompt the model is trained on (and must be prompted with).
pub fn alpaca_prompt(instruction: &str) -> String {
    format!("### Instruction:\n{instruction}\n\n### Response:\n")
}

/// Everything a run needs besides the data. Defaults follow the QLoRA paper's recipe for small
/// models, scaled to a CPU budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Adapter shape (rank, alpha, dropout, target modules).
    pub lora: LoraConfig,
    /// Longest prompt + response in tokens; longer examples lose the end of their response.
    /// 1024 covers typical RAG answers and keeps attention memory bounded on CPU.
    pub max_len: usize,
    /// Share of examples held out (by a hash of the instruction, so the split is stable across
    /// runs and resumes). 0.1 is enough to see over-fitting without starving training.
    pub held_out_fraction: f64,
    /// AdamW peak learning rate; 2e-4 is QLoRA's value for small models.
    pub lr: f64,
    /// How the rate moves over the run (after warm-up).
    pub schedule: Schedule,
    /// Share of the run's optimiser steps over which the rate rises linearly from 0 to `lr`
    /// (transformers' `warmup_ratio`; the warm-up steps are rounded up). 0.03, as in QLoRA.
    pub warmup_ratio: f64,
    /// AdamW first-moment decay (PyTorch default).
    pub beta1: f64,
    /// AdamW second-moment decay (PyTorch default).
    pub beta2: f64,
    /// AdamW denominator epsilon (PyTorch default).
    pub eps: f64,
    /// Decoupled weight decay; 0 as in QLoRA, LoRA's zero-initialised B needs no pull to zero.
    pub weight_decay: f64,
    /// Sequences per forward pass. QLoRA's micro-batch; measured peak RSS with SmolLM2-135M at
    /// 2 × 1024 tokens: 15.8 GB (use 1 × 16 accumulation on smaller machines).
    pub batch_size: usize,
    /// Micro-batches per optimiser step: 2 × 8 = 16 examples per step, QLoRA's batch size.
    pub grad_accum: usize,
    /// Passes over the training split.
    pub epochs: usize,
    /// Stop after this many optimiser steps even if epochs remain (smoke runs, benchmarks).
    pub max_steps: Option<usize>,
    /// Optimiser steps between checkpoints; 200 steps is minutes to hours of CPU work.
    pub checkpoint_every: usize,
    /// Checkpoints kept in the job directory (older ones are deleted).
    pub keep_checkpoints: usize,
    /// Recompute each block's activations during backward instead of keeping them (transformers'
    /// `gradient_checkpointing`): activation memory of one block instead of all, for about one
    /// more forward pass of compute. For long sequences and big bases; off by default.
    pub gradient_checkpointing: bool,
    /// Seeds the LoRA init, the data order and the dropout masks.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            lora: LoraConfig::default(),
            max_len: 1024,
            held_out_fraction: 0.1,
            lr: 2e-4,
            schedule: Schedule::Linear,
            warmup_ratio: 0.03,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            batch_size: 2,
            grad_accum: 8,
            epochs: 2,
            max_steps: None,
            checkpoint_every: 200,
            keep_checkpoints: 2,
            gradient_checkpointing: false,
            seed: 0,
        }
    }
}

/// The learning-rate schedule after warm-up, as transformers' `lr_scheduler_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Linear decay from `lr` to 0 at the last step: transformers' default, and what the
    /// trainers a QLoRA recipe comes from run.
    Linear,
    /// `lr` until the end.
    Constant,
}

impl TrainConfig {
    /// The rate of the optimiser step after `done` steps of `total`, as transformers'
    /// `get_linear_schedule_with_warmup` / `get_constant_schedule_with_warmup` give it (the
    /// scheduler is stepped after the optimiser, so the first step runs at the rate of step 0).
    pub fn lr_at(&self, done: usize, total: usize) -> f64 {
        let warmup = (total as f64 * self.warmup_ratio).ceil() as usize;
        let factor = if done < warmup {
            done as f64 / warmup.max(1) as f64
        } else {
            match self.schedule {
                Schedule::Constant => 1.0,
                Schedule::Linear => {
                    (total.saturating_sub(done)) as f64 / total.saturating_sub(warmup).max(1) as f64
                }
            }
        };
        self.lr * factor
    }
}

/// Reported after every optimiser step.
#[derive(Debug, Clone)]
pub struct Progress {
    /// 1-based optimiser step just finished.
    pub step: usize,
    pub total_steps: usize,
    /// 0-based epoch of that step.
    pub epoch: usize,
    /// Mean loss per response token over the step's examples.
    pub loss: f64,
    /// The learning rate the step ran at.
    pub lr: f64,
    /// Real (unpadded) tokens of the step through forward + backward, per second.
    pub tokens_per_s: f64,
    /// Remaining steps × mean step time of this run so far.
    pub eta: Duration,
}

/// How a run ended. Whether to promote the adapter is left to the caller.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `<job_dir>/adapter` when the run finished; None when cancelled.
    pub adapter_dir: Option<PathBuf>,
    /// Held-out loss of the base model (None when the held-out split is empty).
    pub held_out_before: Option<f64>,
    /// Held-out loss with the trained adapter (None when cancelled or the split is empty).
    pub held_out_after: Option<f64>,
    /// Last optimiser step done.
    pub steps: usize,
    pub cancelled: bool,
    /// Step of the checkpoint this run resumed from.
    pub resumed_from: Option<usize>,
}

/// Whether an example belongs to the held-out split.
pub fn is_held_out(example: &Example, fraction: f64) -> bool {
    (aion_events::fnv1a(example.instruction.as_bytes()) % 10_000) as f64 / 10_000.0 < fraction
}

/// A tokenised example: `ids` = prompt ++ response ++ EOS (truncated), loss on `ids[prompt_len..]`.
#[derive(Debug, Clone)]
struct Encoded {
    ids: Vec<u32>,
    prompt_len: usize,
}

/// Prompt and response are tokenised separately (the prompt ends in a newline, so nothing would
/// merge across) so the loss mask falls exactly on the response. No BOS: SmolLM2's tokenizer
/// adds none. Examples whose prompt alone fills `max_len` have nothing to learn and are dropped.
fn encode(base: &BaseModel, examples: &[&Example], max_len: usize) -> Result<Vec<Encoded>> {
    let mut out = Vec::with_capacity(examples.len());
    for ex in examples {
        let tok = |s: &str| -> Result<Vec<u32>> {
            Ok(base
                .tokenizer
                .encode(s, false)
                .map_err(|e| Error::Tokenizer(e.to_string()))?
                .get_ids()
                .to_vec())
        };
        let mut ids = tok(&alpaca_prompt(&ex.instruction))?;
        let prompt_len = ids.len();
        ids.extend(tok(&ex.response)?);
        ids.push(base.special.eos);
        ids.truncate(max_len);
        if prompt_len < ids.len() {
            out.push(Encoded { ids, prompt_len });
        } else {
            tracing::warn!(
                prompt_len,
                max_len,
                "example skipped: prompt fills the context"
            );
        }
    }
    Ok(out)
}

/// A micro-batch as model inputs: right-padded ids and where its response tokens are.
struct Batch {
    ids: Tensor,
    lengths: Vec<usize>,
    /// Flat `[batch × seq]` positions that predict a response token, and those tokens.
    positions: Tensor,
    targets: Tensor,
    /// Response tokens.
    n: usize,
}

impl Batch {
    fn new(base: &BaseModel, batch: &[&Encoded]) -> Result<Self> {
        let t = batch.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        let pad = base.special.pad.unwrap_or(base.special.eos);
        let mut ids = Vec::with_capacity(batch.len() * t);
        let (mut positions, mut targets) = (Vec::new(), Vec::new());
        for (r, e) in batch.iter().enumerate() {
            ids.extend(&e.ids);
            ids.resize((r + 1) * t, pad);
            for p in e.prompt_len - 1..e.ids.len() - 1 {
                positions.push((r * t + p) as u32);
                targets.push(e.ids[p + 1]);
            }
        }
        let lengths: Vec<usize> = batch.iter().map(|e| e.ids.len()).collect();
        let device = base.model.device();
        let n = positions.len();
        Ok(Self {
            ids: Tensor::from_vec(ids, (batch.len(), t), device)?,
            lengths,
            positions: Tensor::from_vec(positions, n, device)?,
            targets: Tensor::from_vec(targets, (n, 1), device)?,
            n,
        })
    }

    /// Sum of response-token NLL given the final hidden states `[batch, seq, hidden]`. The
    /// lm_head runs only on the positions that predict a response token: the prompt's logits
    /// are never materialised.
    fn nll(&self, base: &BaseModel, hidden: &Tensor) -> Result<Tensor> {
        let hidden = hidden
            .reshape((self.lengths.len() * self.ids.dim(1)?, ()))?
            .index_select(&self.positions, 0)?;
        let loss = CrossEntropy {
            targets: self.targets.clone(),
        };
        Ok(loss.nll(&base.model.logits(&hidden)?)?.sum_all()?)
    }
}

/// Sum of response-token NLL of a micro-batch (a scalar tensor, differentiable w.r.t. the LoRA
/// variables) and the number of tokens it covers.
fn batch_nll(
    base: &BaseModel,
    lora: Option<&Lora>,
    batch: &[&Encoded],
    dropout: Option<&mut StdRng>,
) -> Result<(Tensor, usize)> {
    let inputs = Batch::new(base, batch)?;
    let hidden = base
        .model
        .hidden(&inputs.ids, Some(&inputs.lengths), lora, dropout)?;
    Ok((inputs.nll(base, &hidden)?, inputs.n))
}

/// One micro-batch's summed NLL and the gradients of `nll × scale` by LoRA variable id, with
/// the whole graph kept or with gradient checkpointing as `config` says.
fn micro_grads(
    base: &BaseModel,
    lora: &Lora,
    batch: &[&Encoded],
    dropout: &mut StdRng,
    scale: f64,
    config: &TrainConfig,
) -> Result<(f64, HashMap<TensorId, Tensor>)> {
    if config.gradient_checkpointing {
        let inputs = Batch::new(base, batch)?;
        let (scaled, grads) = base.model.checkpointed_grads(
            &inputs.ids,
            Some(&inputs.lengths),
            lora,
            Some(dropout),
            |hidden| Ok((inputs.nll(base, hidden)? * scale)?),
        )?;
        return Ok((scaled.to_scalar::<f32>()? as f64 / scale, grads));
    }
    let (nll, _) = batch_nll(base, Some(lora), batch, Some(dropout))?;
    let store = (&nll * scale)?.backward()?;
    let grads = lora
        .named_vars()
        .into_iter()
        .filter_map(|(_, var)| Some((var.as_tensor().id(), store.get(var.as_tensor())?.detach())))
        .collect();
    Ok((nll.to_scalar::<f32>()? as f64, grads))
}

/// Per-row `−log softmax(logits)[target]` for logits `[n, vocab]`, fused so that autograd keeps
/// only the logits (not the 3 vocabulary-sized intermediates of log-softmax); backward is
/// `softmax − one_hot`, recomputed from the logits.
struct CrossEntropy {
    /// u32 `[n, 1]`.
    targets: Tensor,
}

impl CrossEntropy {
    /// Per-row NLL `[n]` of `logits` `[n, vocab]`: the fused op on the CPU,
    /// [`CrossEntropy::nll_by_tensor_ops`] elsewhere.
    fn nll(self, logits: &Tensor) -> Result<Tensor> {
        if logits.device().is_cpu() {
            Ok(logits.apply_op1(self)?)
        } else {
            self.nll_by_tensor_ops(logits)
        }
    }

    /// The device-generic path: log-softmax and gather as candle's differentiable ops (autograd
    /// then also keeps the vocabulary-sized intermediates).
    fn nll_by_tensor_ops(&self, logits: &Tensor) -> Result<Tensor> {
        let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
        Ok(logp.gather(&self.targets, 1)?.neg()?.flatten_all()?)
    }
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("cross-entropy: f32 only");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("cross-entropy: contiguous input only");
        };
        let logits = Tensor::from_slice(&data[start..end], layout.shape(), &Device::Cpu)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let nll = logp.gather(&self.targets, 1)?.neg()?.flatten_all()?;
        let shape = nll.shape().clone();
        Ok((CpuStorage::F32(nll.to_vec1()?), shape))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        _nll: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let probs = candle_nn::ops::softmax_last_dim(logits)?;
        let minus_one = Tensor::full(-1f32, self.targets.shape(), logits.device())?;
        let probs = probs.scatter_add(&self.targets, &minus_one, 1)?;
        Ok(Some(probs.broadcast_mul(&grad.unsqueeze(1)?)?))
    }
}

/// Mean loss per response token of `examples` (None if they have no response tokens), with
/// `lora` applied if given; no dropout, no gradients kept.
pub fn held_out_loss(
    base: &BaseModel,
    lora: Option<&Lora>,
    examples: &[Example],
    config: &TrainConfig,
) -> Result<Option<f64>> {
    let refs: Vec<&Example> = examples.iter().collect();
    let encoded = encode(base, &refs, config.max_len)?;
    let (mut sum, mut tokens) = (0f64, 0usize);
    for chunk in encoded.chunks(config.batch_size.max(1)) {
        let batch: Vec<&Encoded> = chunk.iter().collect();
        let (nll, n) = batch_nll(base, lora, &batch, None)?;
        sum += nll.to_scalar::<f32>()? as f64;
        tokens += n;
    }
    Ok((tokens > 0).then(|| sum / tokens as f64))
}

/// AdamW (Loshchilov & Hutter), as `torch.optim.AdamW`: decoupled weight decay, bias-corrected
/// moments. Written out so its moments can be checkpointed by name.
struct AdamW {
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: usize,
}

impl AdamW {
    fn new(vars: &[(String, &Var)]) -> Result<Self> {
        let zeros = |v: &Var| v.as_tensor().zeros_like();
        Ok(Self {
            m: vars
                .iter()
                .map(|(_, v)| zeros(v))
                .collect::<candle_core::Result<_>>()?,
            v: vars
                .iter()
                .map(|(_, v)| zeros(v))
                .collect::<candle_core::Result<_>>()?,
            t: 0,
        })
    }

    fn step(
        &mut self,
        vars: &[(String, &Var)],
        grads: &[Tensor],
        c: &TrainConfig,
        lr: f64,
    ) -> Result<()> {
        self.t += 1;
        let bc1 = 1.0 - c.beta1.powi(self.t as i32);
        let bc2 = 1.0 - c.beta2.powi(self.t as i32);
        for (i, ((_, var), g)) in vars.iter().zip(grads).enumerate() {
            let mut p = var.as_detached_tensor();
            if c.weight_decay > 0.0 {
                p = (p * (1.0 - lr * c.weight_decay))?;
            }
            self.m[i] = ((&self.m[i] * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            self.v[i] = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let denom = ((&self.v[i] / bc2)?.sqrt()? + c.eps)?;
            let update = ((&self.m[i] / bc1)? / denom)?;
            var.set(&(p - (update * lr)?)?)?;
        }
        Ok(())
    }
}

/// Position in the run, written with each checkpoint.
#[derive(Debug, Serialize, Deserialize)]
struct CheckpointState {
    /// Optimiser steps done.
    step: usize,
    /// Epoch and micro-batch offset (in examples) the next step starts at. Data order and
    /// dropout masks are derived from `seed`, the epoch and the step, so these plus the seed are
    /// the whole RNG state.
    epoch: usize,
    next_example: usize,
    seed: u64,
    adam_t: usize,
    lora: LoraConfig,
    loss: f64,
}

const CHECKPOINTS: &str = "checkpoints";

fn checkpoint_dirs(job_dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let dir = job_dir.join(CHECKPOINTS);
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
        let path = entry.map_err(io_err(&dir))?.path();
        let step = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("step-"))
            .and_then(|s| s.parse::<usize>().ok());
        if let Some(step) = step {
            out.push((step, path));
        }
    }
    out.sort();
    Ok(out)
}

fn save_checkpoint(
    job_dir: &Path,
    state: &CheckpointState,
    vars: &[(String, &Var)],
    adam: &AdamW,
    keep: usize,
) -> Result<()> {
    let dir = job_dir
        .join(CHECKPOINTS)
        .join(format!("step-{:08}", state.step));
    let mut tensors = HashMap::new();
    for (i, (name, var)) in vars.iter().enumerate() {
        tensors.insert(format!("lora.{name}"), var.as_detached_tensor());
        tensors.insert(format!("adam_m.{name}"), adam.m[i].clone());
        tensors.insert(format!("adam_v.{name}"), adam.v[i].clone());
    }
    aion_events::durable::replace_dir(&dir, |tmp| {
        candle_core::safetensors::save(&tensors, tmp.join("state.safetensors"))?;
        let path = tmp.join("state.json");
        let json = serde_json::to_string_pretty(state).map_err(json_err(&path))?;
        std::fs::write(&path, json).map_err(io_err(&path))
    })?;
    let all = checkpoint_dirs(job_dir)?;
    for (_, old) in all.iter().take(all.len().saturating_sub(keep.max(1))) {
        std::fs::remove_dir_all(old).map_err(io_err(old))?;
    }
    tracing::info!(step = state.step, dir = %dir.display(), "checkpoint written");
    Ok(())
}

/// Restores LoRA weights and AdamW moments in place; returns the saved position.
fn load_checkpoint(
    dir: &Path,
    vars: &[(String, &Var)],
    adam: &mut AdamW,
    lora: &LoraConfig,
) -> Result<CheckpointState> {
    let path = dir.join("state.json");
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    let state: CheckpointState = serde_json::from_str(&text).map_err(json_err(&path))?;
    if &state.lora != lora {
        return Err(Error::Invalid(format!(
            "{}: checkpoint has a different LoRA configuration than this run",
            dir.display()
        )));
    }
    let device = vars
        .first()
        .map_or(Device::Cpu, |(_, v)| v.device().clone());
    let tensors = candle_core::safetensors::load(dir.join("state.safetensors"), &device)?;
    let get = |key: String| {
        tensors
            .get(&key)
            .cloned()
            .ok_or_else(|| Error::Invalid(format!("{}: checkpoint has no {key}", dir.display())))
    };
    for (i, (name, var)) in vars.iter().enumerate() {
        var.set(&get(format!("lora.{name}"))?)?;
        adam.m[i] = get(format!("adam_m.{name}"))?;
        adam.v[i] = get(format!("adam_v.{name}"))?;
    }
    adam.t = state.adam_t;
    Ok(state)
}

/// Trains LoRA adapters on `examples` (minus the held-out split) and writes them in PEFT format
/// to `<job_dir>/adapter`. Resumes from the newest checkpoint in `<job_dir>/checkpoints` if any.
/// `on_step` runs after every optimiser step; `Break` cancels there: a checkpoint of that step is
/// written, no adapter.
pub fn train(
    base: &BaseModel,
    examples: &[Example],
    config: &TrainConfig,
    job_dir: &Path,
    on_step: &mut dyn FnMut(&Progress) -> ControlFlow<()>,
) -> Result<Outcome> {
    if config.batch_size == 0 || config.grad_accum == 0 {
        return Err(Error::Invalid(
            "batch_size and grad_accum must be at least 1".into(),
        ));
    }
    std::fs::create_dir_all(job_dir).map_err(io_err(job_dir))?;
    let (held, train_set): (Vec<&Example>, Vec<&Example>) = examples
        .iter()
        .partition(|e| is_held_out(e, config.held_out_fraction));
    let held: Vec<Example> = held.into_iter().cloned().collect();
    let data = encode(base, &train_set, config.max_len)?;
    if data.is_empty() {
        return Err(Error::Invalid(
            "no training examples left after the held-out split".into(),
        ));
    }
    let per_step = config.batch_size * config.grad_accum;
    let steps_per_epoch = data.len().div_ceil(per_step);
    let total_steps = (steps_per_epoch * config.epochs).min(config.max_steps.unwrap_or(usize::MAX));

    let held_out_before = held_out_loss(base, None, &held, config)?;
    let lora = Lora::new(&config.lora, &base.model, config.seed)?;
    let vars = lora.named_vars();
    let vars: Vec<(String, &Var)> = vars.into_iter().collect();
    let mut adam = AdamW::new(&vars)?;
    let mut step = 0;
    let mut resumed_from = None;
    if let Some((_, dir)) = checkpoint_dirs(job_dir)?.pop() {
        let state = load_checkpoint(&dir, &vars, &mut adam, &config.lora)?;
        tracing::info!(step = state.step, dir = %dir.display(), "resuming from checkpoint");
        step = state.step;
        resumed_from = Some(step);
    }
    tracing::info!(
        train = data.len(),
        held_out = held.len(),
        total_steps,
        start = step,
        "training"
    );

    let started = Instant::now();
    let first_step = step;
    while step < total_steps {
        let step_start = Instant::now();
        let epoch = step / steps_per_epoch;
        let mut order: Vec<usize> = (0..data.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(
            config.seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9),
        ));
        let from = (step % steps_per_epoch) * per_step;
        let chosen: Vec<&Encoded> = order[from..(from + per_step).min(data.len())]
            .iter()
            .map(|&i| &data[i])
            .collect();
        let step_tokens: usize = chosen.iter().map(|e| e.ids.len() - e.prompt_len).sum();
        let mut dropout =
            StdRng::seed_from_u64(config.seed.wrapping_add(1_000_003 * (step as u64 + 1)));
        let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
        let (mut loss_sum, mut seen_tokens) = (0f64, 0usize);
        for micro in chosen.chunks(config.batch_size) {
            // Gradient of the step's mean loss per response token.
            let scale = 1.0 / step_tokens as f64;
            let (nll, mut store) = micro_grads(base, &lora, micro, &mut dropout, scale, config)?;
            loss_sum += nll;
            for (acc, (_, var)) in grads.iter_mut().zip(&vars) {
                if let Some(g) = store.remove(&var.as_tensor().id()) {
                    *acc = Some(match acc.take() {
                        Some(a) => (a + g)?,
                        None => g,
                    });
                }
            }
            seen_tokens += micro.iter().map(|e| e.ids.len()).sum::<usize>();
        }
        let grads = grads
            .into_iter()
            .zip(&vars)
            .map(|(g, (_, v))| g.map_or_else(|| v.as_tensor().zeros_like(), Ok))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let lr = config.lr_at(step, total_steps);
        adam.step(&vars, &grads, config, lr)?;
        step += 1;

        let loss = loss_sum / step_tokens as f64;
        let elapsed = step_start.elapsed();
        let mean_step = started.elapsed() / (step - first_step) as u32;
        let progress = Progress {
            step,
            total_steps,
            epoch,
            loss,
            lr,
            tokens_per_s: seen_tokens as f64 / elapsed.as_secs_f64().max(1e-9),
            eta: mean_step * (total_steps - step) as u32,
        };
        tracing::debug!(step, loss, lr, tokens_per_s = progress.tokens_per_s, "step");
        let flow = on_step(&progress);
        let state = || CheckpointState {
            step,
            epoch: step / steps_per_epoch,
            next_example: (step % steps_per_epoch) * per_step,
            seed: config.seed,
            adam_t: adam.t,
            lora: config.lora.clone(),
            loss,
        };
        if flow.is_break() {
            save_checkpoint(job_dir, &state(), &vars, &adam, config.keep_checkpoints)?;
            return Ok(Outcome {
                adapter_dir: None,
                held_out_before,
                held_out_after: None,
                steps: step,
                cancelled: true,
                resumed_from,
            });
        }
        if step % config.checkpoint_every.max(1) == 0 && step < total_steps {
            save_checkpoint(job_dir, &state(), &vars, &adam, config.keep_checkpoints)?;
        }
    }

    let held_out_after = held_out_loss(base, Some(&lora), &held, config)?;
    let adapter_dir = job_dir.join("adapter");
    save_adapter(&lora, &base.name_or_path, &adapter_dir)?;
    Ok(Outcome {
        adapter_dir: Some(adapter_dir),
        held_out_before,
        held_out_after,
        steps: step,
        cancelled: false,
        resumed_from,
    })
}

/// Greedy continuation of `prompt` (raw text: wrap an instruction with [`alpaca_prompt`]) until
/// EOS or `max_new_tokens`. With an adapter, it is merged into an f32 copy of the base first.
pub fn generate(
    base: &BaseModel,
    adapter: Option<&Lora>,
    prompt: &str,
    max_new_tokens: usize,
) -> Result<String> {
    let model = base.model.merged(adapter)?;
    let mut ids = base
        .tokenizer
        .encode(prompt, false)
        .map_err(|e| Error::Tokenizer(e.to_string()))?
        .get_ids()
        .to_vec();
    let start = ids.len();
    for _ in 0..max_new_tokens {
        let input = Tensor::new(ids.as_slice(), model.device())?.unsqueeze(0)?;
        let hidden = model.hidden(&input, None, None, None)?;
        let last = hidden.narrow(1, ids.len() - 1, 1)?;
        let next = model
            .logits(&last)?
            .flatten_all()?
            .argmax(0)?
            .to_scalar::<u32>()?;
        if next == base.special.eos {
            break;
        }
        ids.push(next);
    }
    base.tokenizer
        .decode(&ids[start..], true)
        .map_err(|e| Error::Tokenizer(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand::Rng;

    /// The device-generic loss (run here on the CPU) equals the fused CPU op, forward and the
    /// gradient of the logits.
    #[test]
    fn the_loss_by_tensor_ops_equals_the_cpu_op() {
        let (n, vocab) = (6, 50);
        let mut rng = StdRng::seed_from_u64(7);
        let data: Vec<f32> = (0..n * vocab)
            .map(|_| rng.random_range(-8.0..8.0))
            .collect();
        let logits = Var::from_vec(data, (n, vocab), &Device::Cpu).unwrap();
        let targets: Vec<u32> = (0..n as u32).map(|i| i * 7 % vocab as u32).collect();
        let loss = || CrossEntropy {
            targets: Tensor::from_vec(targets.clone(), (n, 1), &Device::Cpu).unwrap(),
        };
        let fused = loss().nll(logits.as_tensor()).unwrap();
        let generic = loss().nll_by_tensor_ops(logits.as_tensor()).unwrap();
        let diff = |a: &Tensor, b: &Tensor| -> f32 {
            let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
            d.to_scalar().unwrap()
        };
        assert!(diff(&fused, &generic) < 1e-5);
        let weights = Tensor::arange(1f32, n as f32 + 1.0, &Device::Cpu).unwrap();
        let grad = |nll: Tensor| {
            let g = (nll * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            g.get(&logits).unwrap().clone()
        };
        assert!(diff(&grad(fused), &grad(generic)) < 1e-5);
    }

    fn config(schedule: Schedule, warmup_ratio: f64) -> TrainConfig {
        TrainConfig {
            lr: 1.0,
            schedule,
            warmup_ratio,
            ..TrainConfig::default()
        }
    }

    /// The factors transformers' `get_linear_schedule_with_warmup` and
    /// `get_constant_schedule_with_warmup` give, with the warm-up steps of `warmup_ratio`
    /// (`ceil(total × ratio)`), worked out by hand.
    #[test]
    fn the_rate_follows_transformers_schedules() {
        let cases = [
            // ceil(10 × 0.03) = 1 warm-up step: the first step runs at 0.
            (
                Schedule::Linear,
                0.03,
                10,
                [(0, 0.0), (1, 1.0), (5, 5.0 / 9.0), (9, 1.0 / 9.0)],
            ),
            (
                Schedule::Linear,
                0.1,
                100,
                [(5, 0.5), (10, 1.0), (55, 0.5), (99, 1.0 / 90.0)],
            ),
            (
                Schedule::Linear,
                0.0,
                4,
                [(0, 1.0), (1, 0.75), (2, 0.5), (3, 0.25)],
            ),
            (
                Schedule::Constant,
                0.1,
                100,
                [(0, 0.0), (5, 0.5), (10, 1.0), (99, 1.0)],
            ),
        ];
        for (schedule, ratio, total, expected) in cases {
            for (done, factor) in expected {
                let lr = config(schedule, ratio).lr_at(done, total);
                assert!(
                    (lr - factor).abs() < 1e-12,
                    "{schedule:?} {ratio} step {done} of {total}: {lr}, not {factor}"
                );
            }
        }
    }
}
