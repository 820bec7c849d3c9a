//! The transformer encoder of BERT-family token classifiers (BERT, DistilBERT, XLM-RoBERTa: the
//! same post-norm layers under other weight names), written for inference:
//! - sequences are packed one after another (no padding, no mask): the dense layers run once over
//!   all tokens of a batch, attention runs per sequence;
//! - Q, K and V are one matmul, with the attention scale folded into Q's weights at load;
//! - on the CPU, weights are packed once at load for the dense kernel, which fuses bias and GELU;
//!   attention and softmax are vectorised kernels too ([`crate::kernels`]), and a forward works in
//!   row-major buffers the encoder keeps, a token classifier's head included.

use std::collections::HashMap;
use std::sync::Mutex;

use aion_simd::int8::Activations;
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::kernels;

/// What the encoder reads of `config.json`, under the names of each model type.
#[derive(Deserialize)]
struct Config {
    #[serde(default)]
    model_type: String,
    #[serde(alias = "dim")]
    hidden_size: usize,
    #[serde(alias = "n_heads")]
    num_attention_heads: usize,
    #[serde(alias = "n_layers")]
    num_hidden_layers: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default = "default_act", alias = "activation")]
    hidden_act: String,
    #[serde(default)]
    pad_token_id: usize,
    max_position_embeddings: usize,
}

fn default_eps() -> f64 {
    1e-12
}

fn default_act() -> String {
    "gelu".into()
}

#[derive(Clone, Copy)]
enum Activation {
    /// Exact GELU (erf).
    Gelu,
    /// GELU's tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    Relu,
}

/// The arithmetic of the encoder's dense layers on the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// f32 throughout: the shipped model's results.
    F32,
    /// Dense layers in int8: activations quantised per block of 32 inputs, weights on their own
    /// per-block grid (a 4-bit model's own codes), as onnxruntime's `accuracy_level = 4` computes
    /// 4-bit models. Where the CPU has AVX-512 BF16, attention's second product (probabilities ×
    /// values) in bf16 with f32 sums; the scores, softmax, norms and the classifier stay f32.
    Int8,
}

impl Default for Precision {
    /// Int8 where the CPU has an int8 kernel (AVX2 or VNNI): on the offline model it runs about
    /// 2.4× f32's tokens per CPU-second at entity F1 0.992 against the shipped model (see
    /// `aion-bench ner`). f32 elsewhere, where int8 would be plain scalar code.
    fn default() -> Self {
        match aion_simd::int8::Kernel::detect() {
            aion_simd::int8::Kernel::Scalar => Self::F32,
            _ => Self::Int8,
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "int8" => Ok(Self::Int8),
            other => Err(format!("precision {other:?} is not f32 or int8")),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Int8 => "int8",
        })
    }
}

/// `x · W + b`: on the CPU the weights packed for [`kernels::dense`] or quantised for
/// [`kernels::dense_int8`], elsewhere W as `[in, out]`.
enum Dense {
    Packed(kernels::Packed),
    Quantized(aion_simd::int8::Weights),
    Tensors { weight: Tensor, bias: Tensor },
}

impl Dense {
    fn new(weight: Tensor, bias: Tensor, precision: Precision) -> candle_core::Result<Self> {
        Ok(match (weight.device(), precision) {
            (Device::Cpu, Precision::F32) => Self::Packed(kernels::Packed::new(&weight, &bias)?),
            (Device::Cpu, Precision::Int8) => Self::Quantized(kernels::quantize(&weight, &bias)?),
            (_, Precision::F32) => Self::Tensors { weight, bias },
            (device, Precision::Int8) => {
                candle_core::bail!("int8 runs on the CPU only, not {device:?}")
            }
        })
    }

    /// `activation(x · W + b)` of tensors on a device other than the CPU.
    fn forward(&self, x: &Tensor, activation: Option<Activation>) -> candle_core::Result<Tensor> {
        let Self::Tensors { weight, bias } = self else {
            candle_core::bail!(
                "dense: weights loaded for the CPU, input on {:?}",
                x.device()
            )
        };
        let y = x.matmul(weight)?.broadcast_add(bias)?;
        match activation {
            None => Ok(y),
            Some(Activation::Gelu) => y.gelu_erf(),
            Some(Activation::GeluTanh) => y.gelu(),
            Some(Activation::Relu) => y.relu(),
        }
    }

    /// `activation(x · W + b)` of row-major `x` on the CPU into `out`, exact GELU fused into the
    /// kernels; `codes` is the int8 path's buffer for the quantised rows.
    fn forward_cpu(
        &self,
        x: &[f32],
        activation: Option<Activation>,
        codes: &mut Activations,
        out: &mut Vec<f32>,
    ) -> candle_core::Result<()> {
        let gelu = matches!(activation, Some(Activation::Gelu));
        match self {
            Self::Packed(packed) => kernels::dense(x, packed, gelu, out)?,
            Self::Quantized(w) => kernels::dense_int8(x, w, gelu, codes, out)?,
            Self::Tensors { weight, .. } => {
                candle_core::bail!("dense: weights loaded for {:?}", weight.device())
            }
        }
        match activation {
            Some(Activation::GeluTanh) => kernels::gelu_tanh(out),
            Some(Activation::Relu) => out.iter_mut().for_each(|v| *v = v.max(0.0)),
            Some(Activation::Gelu) | None => {}
        }
        Ok(())
    }
}

/// A linear layer over the encoder's every output token, in f32 at any precision: a token
/// classifier's head. On the CPU the encoder applies it group by group, so only the logits leave
/// its buffers.
pub(crate) struct Head {
    dense: Dense,
    outputs: usize,
}

impl Head {
    /// `weight` `[outputs, inputs]` (as PyTorch stores a linear layer), `bias` `[outputs]`.
    pub fn new(weight: &Tensor, bias: &Tensor) -> candle_core::Result<Self> {
        let outputs = weight.dim(0)?;
        let dense = Dense::new(weight.t()?.contiguous()?, bias.clone(), Precision::F32)?;
        Ok(Self { dense, outputs })
    }
}

struct Norm {
    weight: Tensor,
    bias: Tensor,
    /// The weight and bias as the CPU kernel reads them.
    cpu: Option<kernels::LayerNorm>,
    eps: f32,
}

impl Norm {
    fn new(weight: Tensor, bias: Tensor, eps: f64) -> candle_core::Result<Self> {
        let cpu = match weight.device() {
            Device::Cpu => Some(kernels::LayerNorm {
                weight: weight.to_vec1()?,
                bias: bias.to_vec1()?,
                eps: eps as f32,
            }),
            _ => None,
        };
        Ok(Self {
            weight,
            bias,
            cpu,
            eps: eps as f32,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps)
    }

    /// `LayerNorm(x + residual)` of row-major buffers on the CPU, one fused pass, into `out`.
    fn forward_residual_cpu(
        &self,
        x: &[f32],
        residual: &[f32],
        out: &mut Vec<f32>,
    ) -> candle_core::Result<()> {
        match &self.cpu {
            Some(norm) => kernels::add_layer_norm(x, residual, norm, out),
            None => candle_core::bail!("layer norm: weights loaded for another device"),
        }
    }
}

struct Layer {
    qkv: Dense,
    attention_out: Dense,
    attention_norm: Norm,
    up: Dense,
    down: Dense,
    output_norm: Norm,
}

/// The embedding tables: row-major on the CPU, where a forward gathers rows from them itself;
/// tensors elsewhere.
enum Embeddings {
    Cpu {
        word: Vec<f32>,
        position: Vec<f32>,
        /// Token type 0's embedding (DistilBERT has none).
        token_type: Option<Vec<f32>>,
    },
    Tensors {
        word: Tensor,
        position: Tensor,
        token_type: Option<Tensor>,
    },
}

/// What a CPU forward works in, row-major `[tokens, features]`: every layer reuses them, and the
/// encoder keeps them from forward to forward (fresh buffers cost page faults and zeroing: 6 % of
/// the int8 forward). At most [`CPU_GROUP_TOKENS`] tokens' worth, about 10 MB for a BERT-small
/// shape.
#[derive(Default)]
struct Buffers {
    x: Vec<f32>,
    qkv: Vec<f32>,
    context: Vec<f32>,
    projected: Vec<f32>,
    attended: Vec<f32>,
    up: Vec<f32>,
    /// The head's outputs.
    logits: Vec<f32>,
    /// The int8 path's quantised rows.
    codes: Activations,
}

/// A loaded encoder: token ids in, hidden states (or a head's outputs) out.
pub(crate) struct Encoder {
    embeddings: Embeddings,
    embedding_norm: Norm,
    layers: Vec<Layer>,
    heads: usize,
    hidden: usize,
    activation: Activation,
    /// XLM-RoBERTa counts positions from after the padding index.
    first_position: usize,
    /// Attention's second product in bf16 where the CPU has AVX-512 BF16 (the int8 precision).
    bf16_attention: bool,
    /// The longest sequence the position embeddings cover.
    pub max_len: usize,
    /// The CPU forward's buffers; a forward that finds them taken (another thread's forward)
    /// allocates its own.
    buffers: Mutex<Buffers>,
}

/// The most tokens one CPU forward packs. More share nothing (sequences are packed, not padded),
/// and the dense layers' inputs and outputs outgrow the caches: at 1,500 tokens the up-projection
/// alone writes 9 MB.
const CPU_GROUP_TOKENS: usize = 512;

/// Weight names of one model type, relative to the model's prefix.
struct Names {
    prefixes: &'static [&'static str],
    word: &'static str,
    position: &'static str,
    token_type: Option<&'static str>,
    embedding_norm: &'static str,
    layer: &'static str,
    q: &'static str,
    k: &'static str,
    v: &'static str,
    attention_out: &'static str,
    attention_norm: &'static str,
    up: &'static str,
    down: &'static str,
    output_norm: &'static str,
}

const BERT: Names = Names {
    prefixes: &["bert.", ""],
    word: "embeddings.word_embeddings",
    position: "embeddings.position_embeddings",
    token_type: Some("embeddings.token_type_embeddings"),
    embedding_norm: "embeddings.LayerNorm",
    layer: "encoder.layer",
    q: "attention.self.query",
    k: "attention.self.key",
    v: "attention.self.value",
    attention_out: "attention.output.dense",
    attention_norm: "attention.output.LayerNorm",
    up: "intermediate.dense",
    down: "output.dense",
    output_norm: "output.LayerNorm",
};

const DISTILBERT: Names = Names {
    prefixes: &["distilbert.", ""],
    word: "embeddings.word_embeddings",
    position: "embeddings.position_embeddings",
    token_type: None,
    embedding_norm: "embeddings.LayerNorm",
    layer: "transformer.layer",
    q: "attention.q_lin",
    k: "attention.k_lin",
    v: "attention.v_lin",
    attention_out: "attention.out_lin",
    attention_norm: "sa_layer_norm",
    up: "ffn.lin1",
    down: "ffn.lin2",
    output_norm: "output_layer_norm",
};

const XLM_ROBERTA: Names = Names {
    prefixes: &["roberta.", ""],
    ..BERT
};

/// The weights of a safetensors file by name, with the errors a user can act on.
struct Weights<'a> {
    tensors: &'a HashMap<String, Tensor>,
    prefix: &'static str,
    precision: Precision,
}

impl Weights<'_> {
    fn get(&self, name: &str) -> Result<Tensor, String> {
        let full = format!("{}{name}", self.prefix);
        self.tensors
            .get(&full)
            .ok_or_else(|| format!("weight {full:?} is missing"))?
            .to_dtype(DType::F32)
            .map_err(|e| format!("{full}: {e}"))
    }

    fn dense(&self, name: &str) -> Result<Dense, String> {
        self.dense_of(&[name], 1.0)
    }

    /// Several linear layers of the same input as one: output features side by side, the first
    /// layer's weights and bias multiplied by `first_scale`.
    fn dense_of(&self, names: &[&str], first_scale: f64) -> Result<Dense, String> {
        let candle = |e: candle_core::Error| format!("{}: {e}", names.join(", "));
        let mut weights = Vec::new();
        let mut biases = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let scale = if i == 0 { first_scale } else { 1.0 };
            weights.push((self.get(&format!("{name}.weight"))? * scale).map_err(candle)?);
            biases.push((self.get(&format!("{name}.bias"))? * scale).map_err(candle)?);
        }
        let weight = Tensor::cat(&weights, 0)
            .and_then(|w| w.t()?.contiguous())
            .map_err(candle)?;
        Dense::new(
            weight,
            Tensor::cat(&biases, 0).map_err(candle)?,
            self.precision,
        )
        .map_err(candle)
    }

    fn norm(&self, name: &str, eps: f64) -> Result<Norm, String> {
        // Old checkpoints call them gamma and beta.
        let either = |a: &str, b: &str| {
            self.get(&format!("{name}.{a}"))
                .or_else(|_| self.get(&format!("{name}.{b}")))
        };
        Norm::new(either("weight", "gamma")?, either("bias", "beta")?, eps)
            .map_err(|e| format!("{name}: {e}"))
    }
}

impl Encoder {
    /// Loads the encoder of a `config.json` and its weights; errors say what is missing.
    pub fn load(
        config: &str,
        tensors: &HashMap<String, Tensor>,
        precision: Precision,
    ) -> Result<Self, String> {
        let c: Config = serde_json::from_str(config).map_err(|e| e.to_string())?;
        let names = match c.model_type.as_str() {
            "bert" | "" => &BERT,
            "distilbert" => &DISTILBERT,
            "xlm-roberta" | "roberta" => &XLM_ROBERTA,
            other => {
                return Err(format!(
                    "model_type {other:?} is not supported (bert, distilbert, xlm-roberta)"
                ))
            }
        };
        let activation = match c.hidden_act.as_str() {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => return Err(format!("hidden_act {other:?} is not supported")),
        };
        if c.num_attention_heads == 0 || !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            return Err(format!(
                "hidden size {} is not a multiple of {} heads",
                c.hidden_size, c.num_attention_heads
            ));
        }
        let prefix = names
            .prefixes
            .iter()
            .find(|p| tensors.contains_key(&format!("{p}{}.weight", names.word)))
            .ok_or_else(|| format!("weight {:?} is missing", names.word))?;
        let w = Weights {
            tensors,
            prefix,
            precision,
        };
        let head_dim = c.hidden_size / c.num_attention_heads;
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let at = |name: &str| format!("{}.{i}.{name}", names.layer);
                Ok(Layer {
                    qkv: w.dense_of(
                        &[&at(names.q), &at(names.k), &at(names.v)],
                        1.0 / (head_dim as f64).sqrt(),
                    )?,
                    attention_out: w.dense(&at(names.attention_out))?,
                    attention_norm: w.norm(&at(names.attention_norm), c.layer_norm_eps)?,
                    up: w.dense(&at(names.up))?,
                    down: w.dense(&at(names.down))?,
                    output_norm: w.norm(&at(names.output_norm), c.layer_norm_eps)?,
                })
            })
            .collect::<Result<_, String>>()?;
        let token_type = match names.token_type {
            Some(name) => Some(
                w.get(&format!("{name}.weight"))?
                    .get(0)
                    .map_err(|e| format!("{name}: {e}"))?,
            ),
            None => None,
        };
        let first_position = match names.prefixes[0] {
            "roberta." => c.pad_token_id + 1,
            _ => 0,
        };
        let word = w.get(&format!("{}.weight", names.word))?;
        let position = w.get(&format!("{}.weight", names.position))?;
        let embeddings = match word.device() {
            Device::Cpu => {
                let rows = |t: &Tensor| -> Result<Vec<f32>, String> {
                    t.flatten_all()
                        .and_then(|t| t.to_vec1())
                        .map_err(|e| format!("embeddings: {e}"))
                };
                Embeddings::Cpu {
                    word: rows(&word)?,
                    position: rows(&position)?,
                    token_type: token_type.as_ref().map(rows).transpose()?,
                }
            }
            _ => Embeddings::Tensors {
                word,
                position,
                token_type,
            },
        };
        Ok(Self {
            embeddings,
            embedding_norm: w.norm(names.embedding_norm, c.layer_norm_eps)?,
            layers,
            heads: c.num_attention_heads,
            hidden: c.hidden_size,
            activation,
            first_position,
            bf16_attention: precision == Precision::Int8,
            max_len: c.max_position_embeddings.saturating_sub(first_position),
            buffers: Mutex::default(),
        })
    }

    /// The width of a token's hidden state.
    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// Hidden states `[tokens, hidden]` of sequences packed one after another, or with a `head`
    /// its outputs `[tokens, outputs]`: `ids` holds them all, `lengths` says where each ends. Each
    /// row equals the sequence run alone.
    ///
    /// On the CPU, consecutive sequences run in groups of up to [`CPU_GROUP_TOKENS`] tokens (a
    /// longer sequence alone).
    pub fn forward(
        &self,
        ids: &[u32],
        lengths: &[usize],
        device: &Device,
        head: Option<&Head>,
    ) -> candle_core::Result<Tensor> {
        let Embeddings::Cpu { .. } = self.embeddings else {
            let x = self.forward_tensors(ids, lengths, device)?;
            return match head {
                Some(head) => head.dense.forward(&x, None),
                None => Ok(x),
            };
        };
        let mut taken = self.buffers.try_lock();
        let mut own = Buffers::default();
        let b = match &mut taken {
            Ok(buffers) => &mut **buffers,
            Err(_) => &mut own,
        };
        let width = head.map_or(self.hidden, |h| h.outputs);
        let mut out = Vec::with_capacity(ids.len() * width);
        let mut group = |ids: &[u32], lengths: &[usize], b: &mut Buffers| {
            self.forward_cpu(ids, lengths, b)?;
            match head {
                Some(head) => {
                    let logits = &mut b.logits;
                    head.dense.forward_cpu(&b.x, None, &mut b.codes, logits)?;
                    out.extend_from_slice(logits);
                }
                None => out.extend_from_slice(&b.x),
            }
            candle_core::Result::Ok(())
        };
        let (mut first, mut start, mut tokens) = (0, 0, 0);
        for (i, &n) in lengths.iter().enumerate() {
            if tokens > 0 && tokens + n > CPU_GROUP_TOKENS {
                group(&ids[start..start + tokens], &lengths[first..i], b)?;
                (first, start, tokens) = (i, start + tokens, 0);
            }
            tokens += n;
        }
        group(&ids[start..], &lengths[first..], b)?;
        Tensor::from_vec(out, (ids.len(), width), device)
    }

    /// [`Encoder::forward`] of one group of sequences on the CPU, into `b.x`.
    fn forward_cpu(
        &self,
        ids: &[u32],
        lengths: &[usize],
        b: &mut Buffers,
    ) -> candle_core::Result<()> {
        let Embeddings::Cpu {
            word,
            position,
            token_type,
        } = &self.embeddings
        else {
            candle_core::bail!("the embeddings are not on the CPU")
        };
        if lengths.iter().sum::<usize>() != ids.len() {
            candle_core::bail!("the lengths do not add up to {} tokens", ids.len());
        }
        let h = self.hidden;
        // (word + position) + token type, then the norm: the tensor path's order of additions.
        b.projected.clear();
        b.attended.clear();
        let positions = lengths
            .iter()
            .flat_map(|&n| self.first_position..self.first_position + n);
        for (&id, p) in ids.iter().zip(positions) {
            let id = id as usize;
            let w = word.get(id * h..(id + 1) * h);
            let (Some(w), Some(p)) = (w, position.get(p * h..(p + 1) * h)) else {
                candle_core::bail!("token {id} at position {p} is outside the embeddings");
            };
            b.projected.extend(w.iter().zip(p).map(|(w, p)| w + p));
            match token_type {
                Some(t) => b.attended.extend_from_slice(t),
                None => b.attended.resize(b.attended.len() + h, 0.0),
            }
        }
        let norm = &self.embedding_norm;
        norm.forward_residual_cpu(&b.projected, &b.attended, &mut b.x)?;
        for layer in &self.layers {
            layer
                .qkv
                .forward_cpu(&b.x, None, &mut b.codes, &mut b.qkv)?;
            kernels::attention(
                &b.qkv,
                lengths,
                self.heads,
                self.bf16_attention,
                &mut b.context,
            )?;
            let out = &layer.attention_out;
            out.forward_cpu(&b.context, None, &mut b.codes, &mut b.projected)?;
            let norm = &layer.attention_norm;
            norm.forward_residual_cpu(&b.projected, &b.x, &mut b.attended)?;
            let activation = Some(self.activation);
            layer
                .up
                .forward_cpu(&b.attended, activation, &mut b.codes, &mut b.up)?;
            layer
                .down
                .forward_cpu(&b.up, None, &mut b.codes, &mut b.projected)?;
            let norm = &layer.output_norm;
            norm.forward_residual_cpu(&b.projected, &b.attended, &mut b.x)?;
        }
        Ok(())
    }

    /// [`Encoder::forward`] on another device, in candle tensor ops: all sequences at once.
    fn forward_tensors(
        &self,
        ids: &[u32],
        lengths: &[usize],
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let Embeddings::Tensors {
            word,
            position,
            token_type,
        } = &self.embeddings
        else {
            candle_core::bail!("the embeddings are on the CPU, not {device:?}")
        };
        let positions: Vec<u32> = lengths
            .iter()
            .flat_map(|&n| (0..n).map(|p| (p + self.first_position) as u32))
            .collect();
        let ids = Tensor::new(ids, device)?;
        let positions = Tensor::new(positions.as_slice(), device)?;
        let mut x = word
            .index_select(&ids, 0)?
            .add(&position.index_select(&positions, 0)?)?;
        if let Some(token_type) = token_type {
            x = x.broadcast_add(token_type)?;
        }
        let mut x = self.embedding_norm.forward(&x)?;
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x, None)?;
            let context = kernels::attention_by_matmuls(&qkv, lengths, self.heads)?;
            let attended = layer.attention_out.forward(&context, None)?.add(&x)?;
            let attended = layer.attention_norm.forward(&attended)?;
            let up = layer.up.forward(&attended, Some(self.activation))?;
            x = layer
                .output_norm
                .forward(&layer.down.forward(&up, None)?.add(&attended)?)?;
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use candle_nn::VarBuilder;
    use candle_transformers::models::{bert, distilbert, xlm_roberta};

    use super::*;

    const HIDDEN: usize = 32;
    const FFN: usize = 64;
    const VOCAB: usize = 40;
    const POSITIONS: usize = 48;

    /// Random weights under the names of a model type, as a Hugging Face checkpoint holds them.
    fn random_weights(names: &Names) -> HashMap<String, Tensor> {
        let prefix = names.prefixes[0];
        let mut weights = HashMap::new();
        let mut put = |name: String, shape: &[usize]| {
            let t = Tensor::randn(0f32, 0.5, shape, &Device::Cpu).unwrap();
            weights.insert(format!("{prefix}{name}"), t);
        };
        put(format!("{}.weight", names.word), &[VOCAB, HIDDEN]);
        put(format!("{}.weight", names.position), &[POSITIONS, HIDDEN]);
        if let Some(token_type) = names.token_type {
            put(format!("{token_type}.weight"), &[2, HIDDEN]);
        }
        let mut norms = vec![names.embedding_norm.to_string()];
        for i in 0..2 {
            let at = |name: &str| format!("{}.{i}.{name}", names.layer);
            for (name, outputs, inputs) in [
                (names.q, HIDDEN, HIDDEN),
                (names.k, HIDDEN, HIDDEN),
                (names.v, HIDDEN, HIDDEN),
                (names.attention_out, HIDDEN, HIDDEN),
                (names.up, FFN, HIDDEN),
                (names.down, HIDDEN, FFN),
            ] {
                put(format!("{}.weight", at(name)), &[outputs, inputs]);
                put(format!("{}.bias", at(name)), &[outputs]);
            }
            norms.extend([at(names.attention_norm), at(names.output_norm)]);
        }
        for norm in norms {
            put(format!("{norm}.weight"), &[HIDDEN]);
            put(format!("{norm}.bias"), &[HIDDEN]);
        }
        weights
    }

    /// Packed sequences through the encoder equal each sequence alone through candle-transformers'
    /// model of the same type (the implementation the enricher used before).
    #[test]
    fn packed_sequences_equal_candle_transformers_models_run_alone() {
        let bert_config = r#"{"model_type": "bert", "vocab_size": 40, "hidden_size": 32,
            "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
            "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "max_position_embeddings": 48,
            "type_vocab_size": 2, "initializer_range": 0.02, "layer_norm_eps": 1e-12,
            "pad_token_id": 0, "classifier_dropout": null}"#;
        // candle-transformers' DistilBERT computes "gelu" with the tanh approximation (transformers
        // uses erf, as the encoder does): compared under ReLU, which both compute exactly.
        let distilbert_config = r#"{"model_type": "distilbert", "vocab_size": 40, "dim": 32,
            "n_layers": 2, "n_heads": 4, "hidden_dim": 64, "activation": "relu",
            "max_position_embeddings": 48, "initializer_range": 0.02, "pad_token_id": 0}"#;
        let xlm_config = r#"{"model_type": "xlm-roberta", "hidden_size": 32,
            "layer_norm_eps": 1e-5, "attention_probs_dropout_prob": 0.1,
            "hidden_dropout_prob": 0.1, "num_attention_heads": 4,
            "position_embedding_type": "absolute", "intermediate_size": 64, "hidden_act": "gelu",
            "num_hidden_layers": 2, "vocab_size": 40, "max_position_embeddings": 48,
            "type_vocab_size": 2, "pad_token_id": 1}"#;
        let cpu = Device::Cpu;
        // Ids from 2 up: neither BERT's nor XLM-R's padding id.
        let sequences: Vec<Vec<u32>> = [5usize, 17, 1, 46]
            .iter()
            .enumerate()
            .map(|(s, &n)| (0..n).map(|i| 2 + ((i * 7 + s * 3) % 38) as u32).collect())
            .collect();
        for (config, names) in [
            (bert_config, &BERT),
            (distilbert_config, &DISTILBERT),
            (xlm_config, &XLM_ROBERTA),
        ] {
            let weights = random_weights(names);
            let vb = VarBuilder::from_tensors(weights.clone(), DType::F32, &cpu);
            let alone = |ids: &[u32]| -> Tensor {
                let input = Tensor::new(ids, &cpu).unwrap().unsqueeze(0).unwrap();
                let out = match names.prefixes[0] {
                    "bert." => {
                        let model = bert::BertModel::load(
                            vb.clone(),
                            &serde_json::from_str(config).unwrap(),
                        )
                        .unwrap();
                        model.forward(&input, &input.zeros_like().unwrap(), None)
                    }
                    "distilbert." => {
                        let model = distilbert::DistilBertModel::load(
                            vb.clone(),
                            &serde_json::from_str(config).unwrap(),
                        )
                        .unwrap();
                        let hide = Tensor::zeros((1, 1, 1, ids.len()), DType::U8, &cpu).unwrap();
                        model.forward(&input, &hide)
                    }
                    _ => {
                        let model = xlm_roberta::XLMRobertaModel::new(
                            &serde_json::from_str(config).unwrap(),
                            vb.pp("roberta"),
                        )
                        .unwrap();
                        let zeros = input.zeros_like().unwrap();
                        model.forward(
                            &input,
                            &input.ones_like().unwrap(),
                            &zeros,
                            None,
                            None,
                            None,
                        )
                    }
                };
                out.unwrap().squeeze(0).unwrap()
            };
            let encoder = Encoder::load(config, &weights, Precision::F32).unwrap();
            let lengths: Vec<usize> = sequences.iter().map(Vec::len).collect();
            let packed = encoder
                .forward(&sequences.concat(), &lengths, &cpu, None)
                .unwrap();
            let mut start = 0;
            for ids in &sequences {
                let ours = packed.narrow(0, start, ids.len()).unwrap();
                let diff = (ours - alone(ids))
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap();
                let diff = diff.to_scalar::<f32>().unwrap();
                assert!(
                    diff < 1e-4,
                    "{}: max |Δ| {diff} at length {}",
                    names.prefixes[0],
                    ids.len()
                );
                start += ids.len();
            }
        }
    }

    /// More sequences than one CPU group holds run in several groups, invisibly: each row equals
    /// its sequence run alone, in both precisions.
    #[test]
    fn sequences_past_one_cpu_group_equal_each_run_alone() {
        let config = r#"{"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 4, "hidden_act": "gelu", "max_position_embeddings": 48}"#;
        let weights = random_weights(&BERT);
        let sequences: Vec<Vec<u32>> = (0..CPU_GROUP_TOKENS / 40 + 3)
            .map(|s| {
                (0..40 - s % 3)
                    .map(|i| 2 + ((i * 5 + s) % 38) as u32)
                    .collect()
            })
            .collect();
        let lengths: Vec<usize> = sequences.iter().map(Vec::len).collect();
        assert!(lengths.iter().sum::<usize>() > CPU_GROUP_TOKENS);
        for precision in [Precision::F32, Precision::Int8] {
            let encoder = Encoder::load(config, &weights, precision).unwrap();
            let packed = encoder
                .forward(&sequences.concat(), &lengths, &Device::Cpu, None)
                .unwrap();
            assert_eq!(packed.dims2().unwrap(), (lengths.iter().sum(), 32));
            let mut start = 0;
            for ids in &sequences {
                let ours = packed.narrow(0, start, ids.len()).unwrap();
                let alone = encoder
                    .forward(ids, &[ids.len()], &Device::Cpu, None)
                    .unwrap();
                let diff = (ours - alone).unwrap().abs().unwrap().max_all().unwrap();
                let diff = diff.to_scalar::<f32>().unwrap();
                assert!(diff < 1e-5, "{precision}: max |Δ| {diff} at {start}");
                start += ids.len();
            }
        }
    }
}
