//! LoRA adapters on disk in PEFT's format (`adapter_config.json` + `adapter_model.safetensors`),
//! and the dequantised base as a Hugging Face model directory, so that Python PEFT can load the
//! exact base and adapter we trained.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::model::{BaseModel, Lora, LoraConfig};
use crate::{io_err, json_err, Error, Result};

const CONFIG_FILE: &str = "adapter_config.json";
const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// The fields of PEFT's `adapter_config.json` we write and read (PEFT ignores missing optional
/// fields; we ignore the many we do not use).
#[derive(Debug, Serialize, Deserialize)]
struct PeftConfig {
    peft_type: String,
    task_type: String,
    r: usize,
    lora_alpha: f64,
    lora_dropout: f32,
    target_modules: Vec<String>,
    bias: String,
    base_model_name_or_path: String,
    fan_in_fan_out: bool,
    inference_mode: bool,
}

/// Writes `lora` to `dir` (replacing an existing adapter there) with
/// [`aion_events::durable::replace_dir`]: a reader never sees a half-written adapter.
pub fn save_adapter(lora: &Lora, base_model_name_or_path: &str, dir: &Path) -> Result<()> {
    let config = PeftConfig {
        peft_type: "LORA".into(),
        task_type: "CAUSAL_LM".into(),
        r: lora.config.r,
        lora_alpha: lora.config.alpha,
        lora_dropout: lora.config.dropout,
        target_modules: lora.config.target_modules.clone(),
        bias: "none".into(),
        base_model_name_or_path: base_model_name_or_path.into(),
        fan_in_fan_out: false,
        inference_mode: true,
    };
    aion_events::durable::replace_dir(dir, |tmp| {
        let json =
            serde_json::to_string_pretty(&config).map_err(json_err(tmp.join(CONFIG_FILE)))?;
        std::fs::write(tmp.join(CONFIG_FILE), json).map_err(io_err(tmp.join(CONFIG_FILE)))?;
        candle_core::safetensors::save(&lora.named_tensors(), tmp.join(WEIGHTS_FILE))?;
        Ok(())
    })
}

/// Reads a PEFT LoRA adapter for a model of `layers` decoder layers.
pub fn load_adapter(dir: &Path, layers: usize) -> Result<Lora> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    let peft: PeftConfig = serde_json::from_str(&text).map_err(json_err(&path))?;
    if peft.peft_type != "LORA" || peft.bias != "none" || peft.fan_in_fan_out {
        return Err(Error::Invalid(format!(
            "{}: only LoRA adapters without bias and with fan_in_fan_out false are supported",
            path.display()
        )));
    }
    let config = LoraConfig {
        r: peft.r,
        alpha: peft.lora_alpha,
        dropout: peft.lora_dropout,
        target_modules: peft.target_modules,
    };
    let tensors = candle_core::safetensors::load(dir.join(WEIGHTS_FILE), &Device::Cpu)?;
    Lora::from_named(&config, layers, &tensors)
}

/// Writes the base exactly as the trainer sees it (NF4 dequantised, HF layout) as a Hugging Face
/// `LlamaForCausalLM` (or `Qwen2ForCausalLM` when q/k/v have biases) directory: `config.json`,
/// `model.safetensors`, `tokenizer.json`.
pub fn export_dequantised(base: &BaseModel, dir: &Path) -> Result<()> {
    let cfg = base.model.config();
    let (arch, model_type) = if base.model.has_qkv_bias() {
        ("Qwen2ForCausalLM", "qwen2")
    } else {
        ("LlamaForCausalLM", "llama")
    };
    let config = serde_json::json!({
        "architectures": [arch],
        "model_type": model_type,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.kv_heads(),
        "head_dim": cfg.head_dim(),
        "vocab_size": cfg.vocab_size,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "bos_token_id": base.special.bos,
        "eos_token_id": base.special.eos,
        "hidden_act": "silu",
        "attention_bias": false,
        "mlp_bias": false,
        "torch_dtype": "float32",
    });
    let tensors: HashMap<String, _> = base.model.hf_tensors()?;
    aion_events::durable::replace_dir(dir, |tmp| {
        let path = tmp.join("config.json");
        let json = serde_json::to_string_pretty(&config).map_err(json_err(&path))?;
        std::fs::write(&path, json).map_err(io_err(&path))?;
        candle_core::safetensors::save(&tensors, tmp.join("model.safetensors"))?;
        base.tokenizer
            .save(tmp.join("tokenizer.json"), false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(())
    })
}
