//! LLaMA-family decoder (LLaMA, Mistral, Qwen2, SmolLM) with NF4 linear layers and LoRA adapters.
//!
//! Mirrors Hugging Face `transformers/models/llama/modeling_llama.py`: RMSNorm, rotary embeddings
//! with `rotate_half`, grouped-query attention, SwiGLU MLP. Everything is written with
//! differentiable candle ops (candle-nn's fused rope/RMSNorm kernels have no backward pass) except
//! the NF4 matmul and the masked softmax, which are custom ops with their own backward.
//! Sliding-window attention (Mistral, Qwen2) is not implemented: training sequences are far
//! shorter than those windows.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Shape, Tensor, TensorId, Var, D};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Deserializer, Serialize};
use tokenizers::Tokenizer;

use crate::nf4::{Nf4Linear, Nf4Tensor};
use crate::tokenizer::SpecialIds;
use crate::{weights, Error, Result};

/// The subset of a Hugging Face `config.json` the decoder needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Absent in configs without grouped-query attention.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Absent when it is `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub vocab_size: usize,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_model_type")]
    pub model_type: String,
    #[serde(default, deserialize_with = "one_or_first")]
    pub bos_token_id: Option<u32>,
    /// Some configs list several end tokens; the first one ends generation here.
    #[serde(default, deserialize_with = "one_or_first")]
    pub eos_token_id: Option<u32>,
}

// transformers' LlamaConfig defaults.
fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_max_position_embeddings() -> usize {
    2048
}
fn default_model_type() -> String {
    "llama".into()
}

fn one_or_first<'de, De: Deserializer<'de>>(d: De) -> std::result::Result<Option<u32>, De::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(u32),
        Many(Vec<u32>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => None,
        Some(OneOrMany::One(x)) => Some(x),
        Some(OneOrMany::Many(v)) => v.first().copied(),
    })
}

impl LlamaConfig {
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }
}

/// The linear layers of a decoder block, by their Hugging Face names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Proj {
    pub const ALL: [Proj; 7] = [
        Proj::Q,
        Proj::K,
        Proj::V,
        Proj::O,
        Proj::Gate,
        Proj::Up,
        Proj::Down,
    ];

    /// `q_proj`, …: the names PEFT's `target_modules` uses.
    pub fn name(self) -> &'static str {
        match self {
            Proj::Q => "q_proj",
            Proj::K => "k_proj",
            Proj::V => "v_proj",
            Proj::O => "o_proj",
            Proj::Gate => "gate_proj",
            Proj::Up => "up_proj",
            Proj::Down => "down_proj",
        }
    }

    /// Dotted path inside a layer: `self_attn.q_proj`.
    pub fn path(self) -> String {
        let parent = match self {
            Proj::Q | Proj::K | Proj::V | Proj::O => "self_attn",
            Proj::Gate | Proj::Up | Proj::Down => "mlp",
        };
        format!("{parent}.{}", self.name())
    }

    pub fn from_name(name: &str) -> Option<Proj> {
        Proj::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// Weight of a linear layer: NF4 for the frozen base being trained, f32 for merged models.
#[derive(Debug, Clone)]
enum Weight {
    Nf4(Nf4Linear),
    Dense(Tensor),
}

#[derive(Debug, Clone)]
struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            Weight::Nf4(w) => w.forward(x)?,
            Weight::Dense(w) => x.broadcast_matmul(&w.to_dtype(x.dtype())?.t()?)?,
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(&b.to_dtype(x.dtype())?)?,
            None => y,
        })
    }

    fn dense_weight(&self) -> Result<Tensor> {
        match &self.weight {
            Weight::Nf4(w) => w.weight().dequantize_tensor(),
            Weight::Dense(w) => Ok(w.clone()),
        }
    }

    fn dims(&self) -> Result<(usize, usize)> {
        Ok(match &self.weight {
            Weight::Nf4(w) => w.weight().dims(),
            Weight::Dense(w) => w.dims2()?,
        })
    }

    fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Self {
            weight: match &self.weight {
                Weight::Nf4(w) => Weight::Nf4(Nf4Linear::new(w.weight().to_device(device)?)),
                Weight::Dense(w) => Weight::Dense(w.to_device(device)?),
            },
            bias: self
                .bias
                .as_ref()
                .map(|b| b.to_device(device))
                .transpose()?,
        })
    }
}

#[derive(Debug, Clone)]
struct Block {
    input_norm: Tensor,
    post_norm: Tensor,
    /// Indexed like [`Proj::ALL`].
    projs: Vec<Linear>,
}

/// How the base weights are stored in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// NF4, optionally with double-quantised scales (QLoRA's default).
    Nf4 { double_quant: bool },
    /// Plain f32 (merged models, reference runs).
    F32,
}

/// The decoder. Embedding, norms and the (usually tied) lm_head stay f32 whatever the storage,
/// as bitsandbytes leaves `lm_head` unquantised.
#[derive(Debug, Clone)]
pub struct Llama {
    config: LlamaConfig,
    /// The dtype hidden states and matmuls run in (see [`Llama::with_compute_dtype`]).
    compute: DType,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    lm_head: Tensor,
    cos: Tensor,
    sin: Tensor,
}

fn rope_tables(cfg: &LlamaConfig) -> Result<(Tensor, Tensor)> {
    let dim = cfg.head_dim();
    let inv: Vec<f32> = (0..dim / 2)
        .map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / dim as f64) as f32)
        .collect();
    let n = cfg.max_position_embeddings;
    let inv = Tensor::from_vec(inv, (1, dim / 2), &Device::Cpu)?;
    let pos = Tensor::arange(0u32, n as u32, &Device::Cpu)?
        .to_dtype(DType::F32)?
        .reshape((n, 1))?;
    let freqs = pos.broadcast_mul(&inv)?;
    Ok((freqs.cos()?, freqs.sin()?))
}

impl Llama {
    /// Builds the decoder from HF-named f32 tensors.
    pub fn load(
        config: &LlamaConfig,
        tensors: &HashMap<String, Tensor>,
        storage: Storage,
    ) -> Result<Self> {
        let get = |name: &str| {
            tensors
                .get(name)
                .cloned()
                .ok_or_else(|| Error::Invalid(format!("missing tensor {name}")))
        };
        let mut blocks = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let prefix = format!("model.layers.{i}");
            let mut projs = Vec::with_capacity(7);
            for p in Proj::ALL {
                let w = get(&format!("{prefix}.{}.weight", p.path()))?;
                let weight = match storage {
                    Storage::Nf4 { double_quant } => {
                        let (rows, cols) = w.dims2()?;
                        let data = w.flatten_all()?.to_vec1::<f32>()?;
                        Weight::Nf4(Nf4Linear::new(Nf4Tensor::quantize(
                            &data,
                            rows,
                            cols,
                            double_quant,
                        )?))
                    }
                    Storage::F32 => Weight::Dense(w),
                };
                let bias = tensors.get(&format!("{prefix}.{}.bias", p.path())).cloned();
                projs.push(Linear { weight, bias });
            }
            blocks.push(Block {
                input_norm: get(&format!("{prefix}.input_layernorm.weight"))?,
                post_norm: get(&format!("{prefix}.post_attention_layernorm.weight"))?,
                projs,
            });
        }
        let embed = get("model.embed_tokens.weight")?;
        let lm_head = match tensors.get("lm_head.weight") {
            Some(w) if !config.tie_word_embeddings => w.clone(),
            _ => embed.clone(),
        };
        let (cos, sin) = rope_tables(config)?;
        Ok(Self {
            config: config.clone(),
            compute: DType::F32,
            embed,
            blocks,
            norm: get("model.norm.weight")?,
            lm_head,
            cos,
            sin,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Where its weights are, and so where it computes.
    pub fn device(&self) -> &Device {
        self.embed.device()
    }

    /// The same model computing in `dtype`, QLoRA's `bnb_4bit_compute_dtype`: NF4 weights are
    /// dequantised to it and every matmul of the blocks (LoRA's included) runs in it, while the
    /// weights the model keeps (norms, embedding, lm_head, LoRA masters) stay f32. RMSNorm,
    /// the attention softmax and the logits are computed in f32, as transformers does. Anything
    /// but f32 takes the device-generic ops, also on the CPU.
    pub fn with_compute_dtype(&self, dtype: DType) -> Llama {
        Llama {
            compute: dtype,
            ..self.clone()
        }
    }

    /// The same model on `device` (NF4 weights stay NF4 there).
    pub fn to_device(&self, device: &Device) -> Result<Llama> {
        let blocks = self
            .blocks
            .iter()
            .map(|b| {
                Ok(Block {
                    input_norm: b.input_norm.to_device(device)?,
                    post_norm: b.post_norm.to_device(device)?,
                    projs: b
                        .projs
                        .iter()
                        .map(|p| p.to_device(device))
                        .collect::<Result<_>>()?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Llama {
            config: self.config.clone(),
            compute: self.compute,
            embed: self.embed.to_device(device)?,
            blocks,
            norm: self.norm.to_device(device)?,
            lm_head: self.lm_head.to_device(device)?,
            cos: self.cos.to_device(device)?,
            sin: self.sin.to_device(device)?,
        })
    }

    /// `(out, in)` of a projection (same in every layer).
    pub fn proj_dims(&self, proj: Proj) -> Result<(usize, usize)> {
        let block = self
            .blocks
            .first()
            .ok_or_else(|| Error::Invalid("model without layers".into()))?;
        block.projs[proj_index(proj)].dims()
    }

    /// A plain f32 copy with `lora` merged in (`W + α/r · B A`): what generation runs on.
    pub fn merged(&self, lora: Option<&Lora>) -> Result<Llama> {
        let mut out = self.clone();
        for (i, block) in out.blocks.iter_mut().enumerate() {
            for (k, p) in Proj::ALL.into_iter().enumerate() {
                let mut w = block.projs[k].dense_weight()?;
                if let Some(pair) = lora.and_then(|l| l.pair(i, p)) {
                    let delta = pair.b.as_tensor().matmul(pair.a.as_tensor())?;
                    w = (w + (delta * lora.map_or(0.0, Lora::scaling))?)?;
                }
                block.projs[k].weight = Weight::Dense(w);
            }
        }
        Ok(out)
    }

    /// All weights in HF names and layout, f32 (NF4 dequantised); `lm_head.weight` only if untied.
    pub fn hf_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        out.insert("model.embed_tokens.weight".into(), self.embed.clone());
        out.insert("model.norm.weight".into(), self.norm.clone());
        if !self.config.tie_word_embeddings {
            out.insert("lm_head.weight".into(), self.lm_head.clone());
        }
        for (i, block) in self.blocks.iter().enumerate() {
            let prefix = format!("model.layers.{i}");
            out.insert(
                format!("{prefix}.input_layernorm.weight"),
                block.input_norm.clone(),
            );
            out.insert(
                format!("{prefix}.post_attention_layernorm.weight"),
                block.post_norm.clone(),
            );
            for (k, p) in Proj::ALL.into_iter().enumerate() {
                out.insert(
                    format!("{prefix}.{}.weight", p.path()),
                    block.projs[k].dense_weight()?,
                );
                if let Some(b) = &block.projs[k].bias {
                    out.insert(format!("{prefix}.{}.bias", p.path()), b.clone());
                }
            }
        }
        Ok(out)
    }

    pub fn has_qkv_bias(&self) -> bool {
        self.blocks
            .first()
            .is_some_and(|b| b.projs[proj_index(Proj::Q)].bias.is_some())
    }

    /// Final-norm hidden states `[batch, seq, hidden]` of right-padded `ids` (`[batch, seq]`, u32).
    /// `lengths[b]` real tokens in row `b` (padding keys are masked); `dropout` is the RNG for LoRA
    /// dropout while training (None: no dropout).
    pub fn hidden(
        &self,
        ids: &Tensor,
        lengths: Option<&[usize]>,
        lora: Option<&Lora>,
        mut dropout: Option<&mut StdRng>,
    ) -> Result<Tensor> {
        let (pass, mut h) = self.pass(ids, lengths)?;
        for i in 0..self.blocks.len() {
            h = self.block(i, &h, &pass, lora, dropout.as_deref_mut())?;
        }
        rms_norm(&h, &self.norm, pass.eps)
    }

    /// The gradients of `head(hidden(ids, …))` with respect to `lora`'s variables, with gradient
    /// checkpointing: the forward keeps only each block's input, and the backward recomputes one
    /// block at a time (the dropout RNG replayed from its state before the block), so autograd
    /// holds one block's activations instead of every block's, at the cost of a second forward.
    /// The variables and gradients equal [`Llama::hidden`] + `backward` (up to float summation
    /// order). Returns `head`'s value (detached) and the gradients by variable id.
    pub fn checkpointed_grads(
        &self,
        ids: &Tensor,
        lengths: Option<&[usize]>,
        lora: &Lora,
        mut dropout: Option<&mut StdRng>,
        head: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<(Tensor, HashMap<TensorId, Tensor>)> {
        let (pass, mut h) = self.pass(ids, lengths)?;
        let mut inputs = Vec::with_capacity(self.blocks.len());
        for i in 0..self.blocks.len() {
            inputs.push((h.clone(), dropout.as_deref().cloned()));
            h = self
                .block(i, &h, &pass, Some(lora), dropout.as_deref_mut())?
                .detach();
        }
        let top = Var::from_tensor(&h)?;
        let value = head(&rms_norm(top.as_tensor(), &self.norm, pass.eps)?)?;
        let mut grad = value
            .backward()?
            .get(top.as_tensor())
            .map(Tensor::detach)
            .ok_or_else(|| {
                Error::Invalid("the head does not depend on the hidden states".into())
            })?;
        let vars = lora.named_vars();
        let mut grads = HashMap::new();
        for (i, (input, mut rng)) in inputs.into_iter().enumerate().rev() {
            let x = Var::from_tensor(&input)?;
            let out = self.block(i, x.as_tensor(), &pass, Some(lora), rng.as_mut())?;
            let store = (out * &grad)?.sum_all()?.backward()?;
            for (_, var) in &vars {
                if let Some(g) = store.get(var.as_tensor()) {
                    grads.insert(var.as_tensor().id(), g.detach());
                }
            }
            if let Some(g) = store.get(x.as_tensor()) {
                grad = g.detach();
            }
        }
        Ok((value.detach(), grads))
    }

    /// What every block of one forward pass shares, and the embedded input.
    fn pass(&self, ids: &Tensor, lengths: Option<&[usize]>) -> Result<(Pass, Tensor)> {
        let (b, t) = ids.dims2()?;
        if t > self.config.max_position_embeddings {
            return Err(Error::Invalid(format!(
                "sequence of {t} tokens exceeds the model's {} positions",
                self.config.max_position_embeddings
            )));
        }
        let dtype = self.compute;
        let pass = Pass {
            b,
            t,
            cos: self.cos.narrow(0, 0, t)?.to_dtype(dtype)?,
            sin: self.sin.narrow(0, 0, t)?.to_dtype(dtype)?,
            attention: CausalAttention::new(t, lengths, self.device())?,
            eps: self.config.rms_norm_eps as f32,
        };
        let h = self
            .embed
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, self.config.hidden_size))?
            .to_dtype(dtype)?;
        Ok((pass, h))
    }

    /// Decoder block `i` on `h` `[batch, seq, hidden]`.
    fn block(
        &self,
        i: usize,
        h: &Tensor,
        pass: &Pass,
        lora: Option<&Lora>,
        mut dropout: Option<&mut StdRng>,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.kv_heads(), cfg.head_dim());
        let (b, t, dtype) = (pass.b, pass.t, self.compute);
        let block = &self.blocks[i];
        let mut proj = |p: Proj, x: &Tensor| -> Result<Tensor> {
            let y = block.projs[proj_index(p)].forward(x)?;
            match lora.and_then(|l| l.pair(i, p)) {
                Some(pair) => {
                    let Some(l) = lora else { return Ok(y) };
                    let x = match dropout.as_deref_mut() {
                        Some(rng) if l.config.dropout > 0.0 => {
                            lora_dropout(x, l.config.dropout, rng)?
                        }
                        _ => x.clone(),
                    };
                    // The f32 masters cast to the compute dtype: the cast is differentiable,
                    // so their gradients arrive in f32.
                    let a = pair.a.as_tensor().to_dtype(dtype)?;
                    let b = pair.b.as_tensor().to_dtype(dtype)?;
                    let delta = x.broadcast_matmul(&a.t()?)?.broadcast_matmul(&b.t()?)?;
                    Ok((y + (delta * l.scaling())?)?)
                }
                None => Ok(y),
            }
        };
        let x = rms_norm(h, &block.input_norm, pass.eps)?;
        let q = proj(Proj::Q, &x)?
            .reshape((b, t, nh, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let k = proj(Proj::K, &x)?
            .reshape((b, t, nkv, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let v = proj(Proj::V, &x)?
            .reshape((b, t, nkv, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = candle_nn::rotary_emb::rope_slow(&q, &pass.cos, &pass.sin)?;
        let k = candle_nn::rotary_emb::rope_slow(&k, &pass.cos, &pass.sin)?;
        let (k, v) = (repeat_kv(&k, nh / nkv)?, repeat_kv(&v, nh / nkv)?);
        let q = (q / (hd as f64).sqrt())?;
        let probs = pass.attention.probs(&q, &k)?;
        let attn = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, t, nh * hd))?;
        let h = (h + proj(Proj::O, &attn)?)?;

        let x = rms_norm(&h, &block.post_norm, pass.eps)?;
        let gate = proj(Proj::Gate, &x)?.silu()?;
        let up = proj(Proj::Up, &x)?;
        Ok((&h + proj(Proj::Down, &(gate * up)?)?)?)
    }

    /// `[..., hidden]` → `[..., vocab]`, in f32 whatever the compute dtype.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(hidden
            .to_dtype(DType::F32)?
            .broadcast_matmul(&self.lm_head.t()?)?)
    }

    /// Logits `[batch, seq, vocab]` of right-padded `ids`, no dropout.
    pub fn forward(
        &self,
        ids: &Tensor,
        lengths: Option<&[usize]>,
        lora: Option<&Lora>,
    ) -> Result<Tensor> {
        self.logits(&self.hidden(ids, lengths, lora, None)?)
    }
}

/// transformers' `LlamaRMSNorm`: normalised in f32, the (f32) weight applied, back to `x`'s dtype.
fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    let dtype = x.dtype();
    let y = candle_nn::ops::rms_norm_slow(&x.to_dtype(DType::F32)?, weight, eps)?;
    Ok(y.to_dtype(dtype)?)
}

/// What the blocks of one forward pass share.
struct Pass {
    b: usize,
    t: usize,
    /// Rotary tables for the `t` positions, in the compute dtype.
    cos: Tensor,
    sin: Tensor,
    attention: CausalAttention,
    eps: f32,
}

fn proj_index(p: Proj) -> usize {
    Proj::ALL.iter().position(|&q| q == p).unwrap_or_default()
}

/// HF `repeat_kv`: KV head `j` serves query heads `j·n .. j·n + n`.
fn repeat_kv(x: &Tensor, n: usize) -> Result<Tensor> {
    if n == 1 {
        return Ok(x.clone());
    }
    let (b, kv, t, d) = x.dims4()?;
    Ok(Tensor::cat(&vec![x; n], 2)?.reshape((b, kv * n, t, d))?)
}

/// Inverted dropout with our own seeded RNG (candle's CPU RNG cannot be seeded), so a resumed run
/// draws the same masks.
fn lora_dropout(x: &Tensor, p: f32, rng: &mut StdRng) -> Result<Tensor> {
    let keep = 1.0 / (1.0 - p);
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| if rng.random::<f32>() < p { 0.0 } else { keep })
        .collect();
    Ok((x * Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?)?)
}

/// Attention probabilities `softmax(q kᵀ + mask)` for `q`, `k` `[b, h, t, d]` (q pre-scaled by
/// 1/√d), with the causal and padding mask applied inside: masked entries come out exactly 0 (as
/// with HF's `finfo.min` mask). One op rather than matmul + mask + softmax so that autograd keeps
/// one `[b, h, t, t]` tensor per layer (the probabilities) instead of three: at 2 × 1024 tokens
/// that is 2.2 GB instead of 6.7 GB over 30 layers.
#[derive(Clone)]
struct CausalAttention {
    /// Additive mask `[b or 1, 1, t, t]`: 0 or `f32::MIN`.
    mask: Tensor,
}

impl CausalAttention {
    fn new(t: usize, lengths: Option<&[usize]>, device: &Device) -> Result<Self> {
        let pos = Tensor::arange(0u32, t as u32, device)?;
        // key j > query i
        let mut masked = pos
            .reshape((1, 1, 1, t))?
            .broadcast_gt(&pos.reshape((1, 1, t, 1))?)?;
        if let Some(lengths) = lengths {
            let lengths: Vec<u32> = lengths.iter().map(|&l| l as u32).collect();
            let b = lengths.len();
            let len = Tensor::from_vec(lengths, (b, 1, 1, 1), device)?;
            let pad = pos.reshape((1, 1, 1, t))?.broadcast_ge(&len)?;
            masked = masked.broadcast_maximum(&pad)?;
        }
        let shape = masked.shape().clone();
        let min = Tensor::full(f32::MIN, &shape, device)?;
        let zero = Tensor::zeros(&shape, DType::F32, device)?;
        Ok(Self {
            mask: masked.where_cond(&min, &zero)?,
        })
    }

    /// `softmax(q kᵀ + mask)` `[b, h, t, t]` in `q`'s dtype: the fused op for f32 on the CPU,
    /// [`CausalAttention::probs_by_tensor_ops`] otherwise.
    fn probs(&self, q: &Tensor, k: &Tensor) -> Result<Tensor> {
        if q.device().is_cpu() && q.dtype() == DType::F32 {
            Ok(q.apply_op2(k, self.clone())?)
        } else {
            self.probs_by_tensor_ops(q, k)
        }
    }

    /// The device-generic path: candle's differentiable ops (autograd then also keeps the
    /// scores and the softmax's intermediates). The scores matmul runs in `q`'s dtype, the mask
    /// and softmax in f32 (transformers' eager attention).
    fn probs_by_tensor_ops(&self, q: &Tensor, k: &Tensor) -> Result<Tensor> {
        let scores = q
            .matmul(&k.t()?)?
            .to_dtype(DType::F32)?
            .broadcast_add(&self.mask)?;
        Ok(candle_nn::ops::softmax(&scores, D::Minus1)?.to_dtype(q.dtype())?)
    }
}

fn cpu_tensor(storage: &CpuStorage, layout: &Layout) -> candle_core::Result<Tensor> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("causal-attention: f32 only");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("causal-attention: contiguous input only");
    };
    Tensor::from_slice(&data[start..end], layout.shape(), &Device::Cpu)
}

impl CustomOp2 for CausalAttention {
    fn name(&self) -> &'static str {
        "causal-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_layout: &Layout,
        k: &CpuStorage,
        k_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (q, k) = (cpu_tensor(q, q_layout)?, cpu_tensor(k, k_layout)?);
        let scores = q.matmul(&k.t()?)?.broadcast_add(&self.mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let shape = probs.shape().clone();
        Ok((CpuStorage::F32(probs.flatten_all()?.to_vec1()?), shape))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        probs: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // Softmax: dS = P ⊙ (dP − Σ dP⊙P); masked entries have P = 0 and get no gradient.
        let dot = (grad * probs)?.sum_keepdim(D::Minus1)?;
        let ds = (probs * grad.broadcast_sub(&dot)?)?;
        Ok((Some(ds.matmul(k)?), Some(ds.t()?.matmul(q)?)))
    }
}

/// LoRA hyper-parameters (PEFT's `LoraConfig` fields of the same meaning).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank of the update `B A`. 16 is the QLoRA paper's common choice for small models.
    #[serde(default = "default_r")]
    pub r: usize,
    /// Scale numerator: the update is multiplied by `alpha / r`. 2·r, the usual PEFT recipe.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Dropout on the LoRA input while training. 0.05, QLoRA's value for models under 13B.
    #[serde(default = "default_dropout")]
    pub dropout: f32,
    /// Projections that get an adapter, by PEFT name. The attention projections, as the brief of
    /// the stage asks; `gate_proj`, `up_proj`, `down_proj` work too.
    #[serde(default = "default_targets")]
    pub target_modules: Vec<String>,
}

fn default_r() -> usize {
    16
}
fn default_alpha() -> f64 {
    32.0
}
fn default_dropout() -> f32 {
    0.05
}
fn default_targets() -> Vec<String> {
    ["q_proj", "k_proj", "v_proj", "o_proj"]
        .map(String::from)
        .to_vec()
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: default_r(),
            alpha: default_alpha(),
            dropout: default_dropout(),
            target_modules: default_targets(),
        }
    }
}

impl LoraConfig {
    pub fn targets(&self) -> Result<Vec<Proj>> {
        self.target_modules
            .iter()
            .map(|n| {
                Proj::from_name(n)
                    .ok_or_else(|| Error::Invalid(format!("unknown LoRA target module {n:?}")))
            })
            .collect()
    }
}

/// One adapter: `A` `[r, in]`, `B` `[out, r]`.
#[derive(Debug, Clone)]
pub struct LoraPair {
    pub a: Var,
    pub b: Var,
}

/// LoRA adapters for every layer of a model; the only trainable parameters.
#[derive(Debug, Clone)]
pub struct Lora {
    pub config: LoraConfig,
    /// `layers[i]`: adapters of layer `i`, in [`LoraConfig::targets`] order.
    layers: Vec<Vec<(Proj, LoraPair)>>,
}

impl Lora {
    /// Fresh adapters as PEFT initialises them: `A` Kaiming-uniform (`a = √5`, so
    /// U(±1/√in)), `B` zeros, so the adapted model starts equal to the base.
    /// On the model's device.
    pub fn new(config: &LoraConfig, model: &Llama, seed: u64) -> Result<Self> {
        let device = model.device();
        let mut rng = StdRng::seed_from_u64(seed);
        let targets = config.targets()?;
        let mut layers = Vec::with_capacity(model.config.num_hidden_layers);
        for _ in 0..model.config.num_hidden_layers {
            let mut pairs = Vec::with_capacity(targets.len());
            for &p in &targets {
                let (out, inp) = model.proj_dims(p)?;
                let bound = 1.0 / (inp as f32).sqrt();
                let a: Vec<f32> = (0..config.r * inp)
                    .map(|_| rng.random_range(-bound..bound))
                    .collect();
                let a = Var::from_tensor(&Tensor::from_vec(a, (config.r, inp), device)?)?;
                let b = Var::zeros((out, config.r), DType::F32, device)?;
                pairs.push((p, LoraPair { a, b }));
            }
            layers.push(pairs);
        }
        Ok(Self {
            config: config.clone(),
            layers,
        })
    }

    /// Builds adapters from PEFT-named tensors (see [`Lora::named_tensors`]).
    pub fn from_named(
        config: &LoraConfig,
        layers: usize,
        tensors: &HashMap<String, Tensor>,
    ) -> Result<Self> {
        let targets = config.targets()?;
        let mut out = Vec::with_capacity(layers);
        for i in 0..layers {
            let mut pairs = Vec::with_capacity(targets.len());
            for &p in &targets {
                let get = |which: &str| {
                    let name = peft_name(i, p, which);
                    tensors
                        .get(&name)
                        .ok_or_else(|| Error::Invalid(format!("adapter has no {name}")))
                        .and_then(|t| Ok(Var::from_tensor(&t.to_dtype(DType::F32)?)?))
                };
                pairs.push((
                    p,
                    LoraPair {
                        a: get("A")?,
                        b: get("B")?,
                    },
                ));
            }
            out.push(pairs);
        }
        Ok(Self {
            config: config.clone(),
            layers: out,
        })
    }

    pub fn scaling(&self) -> f64 {
        self.config.alpha / self.config.r as f64
    }

    pub fn pair(&self, layer: usize, proj: Proj) -> Option<&LoraPair> {
        self.layers
            .get(layer)?
            .iter()
            .find(|(p, _)| *p == proj)
            .map(|(_, pair)| pair)
    }

    /// Every trainable variable with its PEFT tensor name, in a fixed order.
    pub fn named_vars(&self) -> Vec<(String, &Var)> {
        let mut out = Vec::new();
        for (i, pairs) in self.layers.iter().enumerate() {
            for (p, pair) in pairs {
                out.push((peft_name(i, *p, "A"), &pair.a));
                out.push((peft_name(i, *p, "B"), &pair.b));
            }
        }
        out
    }

    /// Current values by PEFT name.
    pub fn named_tensors(&self) -> HashMap<String, Tensor> {
        self.named_vars()
            .into_iter()
            .map(|(n, v)| (n, v.as_detached_tensor()))
            .collect()
    }
}

/// `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`.
pub fn peft_name(layer: usize, proj: Proj, which: &str) -> String {
    format!(
        "base_model.model.model.layers.{layer}.{}.lora_{which}.weight",
        proj.path()
    )
}

/// A frozen base model ready for training: NF4 decoder plus its tokenizer.
pub struct BaseModel {
    pub model: Llama,
    pub tokenizer: Tokenizer,
    pub special: SpecialIds,
    /// Recorded as `base_model_name_or_path` in saved adapters.
    pub name_or_path: String,
}

impl BaseModel {
    /// Loads a GGUF file or HF directory (see [`weights::load`]), stores its linear layers as
    /// `storage` says and puts it on `device`, computing in bf16 off the CPU
    /// ([`Llama::with_compute_dtype`]).
    pub fn load(path: &Path, storage: Storage, device: &Device) -> Result<Self> {
        let loaded = weights::load(path)?;
        let model = Llama::load(&loaded.config, &loaded.tensors, storage)?;
        // f32 on the CPU (its fused ops are f32; candle's CPU bf16 matmul widens to f32); bf16
        // compute elsewhere, as QLoRA's recipe runs on a GPU.
        let model = if device.is_cpu() {
            model
        } else {
            model.to_device(device)?.with_compute_dtype(DType::BF16)
        };
        Ok(Self {
            model,
            tokenizer: loaded.tokenizer,
            special: loaded.special,
            name_or_path: loaded.name_or_path,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn random(shape: (usize, usize, usize, usize), seed: u64) -> Tensor {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        let data: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// The device-generic attention (run here on the CPU) equals the fused CPU op, forward and
    /// the gradients of q and k, with padded rows masked.
    #[test]
    fn attention_by_tensor_ops_equals_the_cpu_op() {
        let (b, h, t, d) = (2, 3, 7, 8);
        let attention = CausalAttention::new(t, Some(&[7, 4]), &Device::Cpu).unwrap();
        let q = Var::from_tensor(&random((b, h, t, d), 1)).unwrap();
        let k = Var::from_tensor(&random((b, h, t, d), 2)).unwrap();
        let probe = random((b, h, t, t), 3);
        let fused = attention.probs(q.as_tensor(), k.as_tensor()).unwrap();
        let generic = attention
            .probs_by_tensor_ops(q.as_tensor(), k.as_tensor())
            .unwrap();
        assert!(max_diff(&fused, &generic) < 1e-6);
        let grads = |p: Tensor| (p * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let (g_fused, g_generic) = (grads(fused), grads(generic));
        for var in [&q, &k] {
            let (a, b) = (g_fused.get(var).unwrap(), g_generic.get(var).unwrap());
            assert!(max_diff(a, b) < 1e-5, "{}", max_diff(a, b));
        }
    }
}
