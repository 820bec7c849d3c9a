//! Reading base weights into Hugging Face names and layout, f32, whatever the source: a llama.cpp
//! GGUF file (dequantised, tokenizer from its metadata) or a Hugging Face directory
//! (config.json + *.safetensors + tokenizer.json).

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use tokenizers::Tokenizer;

use crate::model::LlamaConfig;
use crate::tokenizer::{self, SpecialIds};
use crate::{io_err, json_err, Error, Result};

/// A base model as read from disk, before it is quantised.
pub struct Loaded {
    pub config: LlamaConfig,
    /// HF names (`model.layers.0.self_attn.q_proj.weight`), HF layout, f32.
    pub tensors: HashMap<String, Tensor>,
    pub tokenizer: Tokenizer,
    pub special: SpecialIds,
    /// What `base_model_name_or_path` of a saved adapter points at.
    pub name_or_path: String,
}

/// Loads a `.gguf` file or a Hugging Face model directory.
pub fn load(path: &Path) -> Result<Loaded> {
    if path.is_dir() {
        load_hf_dir(path)
    } else {
        load_gguf(path)
    }
}

/// GGUF tensor names → HF names; Q and K get their rotary permutation undone (see [`unpermute`]).
fn hf_name(gguf: &str) -> Option<String> {
    let name = match gguf {
        "token_embd.weight" => "model.embed_tokens.weight".to_string(),
        "output_norm.weight" => "model.norm.weight".to_string(),
        "output.weight" => "lm_head.weight".to_string(),
        _ => {
            let rest = gguf.strip_prefix("blk.")?;
            let (layer, rest) = rest.split_once('.')?;
            let (module, kind) = rest.split_once('.')?;
            let hf = match module {
                "attn_norm" => "input_layernorm",
                "ffn_norm" => "post_attention_layernorm",
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                _ => return None,
            };
            format!("model.layers.{layer}.{hf}.{kind}")
        }
    };
    Some(name)
}

/// llama.cpp's converter (`convert_hf_to_gguf.py`, `LlamaModel.permute`) reorders the rows of
/// each Q/K head from HF's half-split rotary layout (`rotate_half`) to GGML's interleaved pairs.
/// We undo it so the model in memory, and therefore every LoRA tensor we save, is in HF layout
/// and PEFT can apply our adapters to the original checkpoint; the decoder then uses HF rope.
/// Per head the GGUF rows are (half, 2) where HF's are (2, half).
pub fn unpermute(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let half = out / heads / 2;
    Ok(w.reshape((heads, half, 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))?)
}

fn load_gguf(path: &Path) -> Result<Loaded> {
    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    let content = gguf_file::Content::read(&mut file)?;
    let md = &content.metadata;
    let arch = md
        .get("general.architecture")
        .map(|v| v.to_string().cloned())
        .transpose()?
        .unwrap_or_default();
    if arch != "llama" {
        return Err(Error::Invalid(format!(
            "{}: GGUF architecture {arch:?} is not supported (llama only)",
            path.display()
        )));
    }
    let get = |key: &str| {
        md.get(key)
            .ok_or_else(|| Error::Invalid(format!("{}: no {key} in GGUF metadata", path.display())))
    };
    let heads = get("llama.attention.head_count")?.to_u32()? as usize;
    let kv_heads = get("llama.attention.head_count_kv")?.to_u32()? as usize;
    let (tokenizer, special) = tokenizer::from_gguf_metadata(md)?;
    let has_output = content.tensor_infos.contains_key("output.weight");
    let config = LlamaConfig {
        hidden_size: get("llama.embedding_length")?.to_u32()? as usize,
        intermediate_size: get("llama.feed_forward_length")?.to_u32()? as usize,
        num_hidden_layers: get("llama.block_count")?.to_u32()? as usize,
        num_attention_heads: heads,
        num_key_value_heads: Some(kv_heads),
        head_dim: None,
        vocab_size: tokenizer.get_vocab_size(true),
        rms_norm_eps: get("llama.attention.layer_norm_rms_epsilon")?.to_f32()? as f64,
        rope_theta: md
            .get("llama.rope.freq_base")
            .map(|v| v.to_f32())
            .transpose()?
            .map_or(10_000.0, f64::from),
        max_position_embeddings: get("llama.context_length")?.to_u32()? as usize,
        tie_word_embeddings: !has_output,
        model_type: "llama".into(),
        bos_token_id: special.bos,
        eos_token_id: Some(special.eos),
    };

    let mut tensors = HashMap::new();
    for name in content.tensor_infos.keys() {
        let Some(hf) = hf_name(name) else {
            continue; // e.g. rope_freqs: recomputed from the config.
        };
        let q = content.tensor(&mut file, name, &Device::Cpu)?;
        let mut w = q.dequantize(&Device::Cpu)?.to_dtype(DType::F32)?;
        if hf.ends_with("q_proj.weight") {
            w = unpermute(&w, heads)?;
        } else if hf.ends_with("k_proj.weight") {
            w = unpermute(&w, kv_heads)?;
        }
        tensors.insert(hf, w);
    }
    let name_or_path = md
        .get("general.name")
        .and_then(|v| v.to_string().ok().cloned())
        .unwrap_or_else(|| path.display().to_string());
    Ok(Loaded {
        config,
        tensors,
        tokenizer,
        special,
        name_or_path,
    })
}

fn load_hf_dir(dir: &Path) -> Result<Loaded> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(io_err(&config_path))?;
    let config: LlamaConfig = serde_json::from_str(&text).map_err(json_err(&config_path))?;
    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer = Tokenizer::from_file(&tokenizer_path)
        .map_err(|e| Error::Tokenizer(format!("{}: {e}", tokenizer_path.display())))?;

    let mut tensors = HashMap::new();
    let entries = std::fs::read_dir(dir).map_err(io_err(dir))?;
    for entry in entries {
        let path = entry.map_err(io_err(dir))?.path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            for (name, t) in candle_core::safetensors::load(&path, &Device::Cpu)? {
                tensors.insert(name, t.to_dtype(DType::F32)?);
            }
        }
    }
    if tensors.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no *.safetensors",
            dir.display()
        )));
    }
    let eos = config
        .eos_token_id
        .or_else(|| tokenizer.token_to_id("<|endoftext|>"))
        .or_else(|| tokenizer.token_to_id("</s>"))
        .ok_or_else(|| Error::Invalid(format!("{}: no eos_token_id", dir.display())))?;
    let special = SpecialIds {
        bos: config.bos_token_id,
        eos,
        pad: None,
    };
    Ok(Loaded {
        config,
        tensors,
        tokenizer,
        special,
        name_or_path: dir.display().to_string(),
    })
}
