//! The GPT-2-style byte-level BPE tokenizer that llama.cpp stores in GGUF metadata
//! (`tokenizer.ggml.model = "gpt2"`), rebuilt as a `tokenizers::Tokenizer` so that the GGUF and
//! the Hugging Face `tokenizer.json` paths give the same ids.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::{Error, Result};

/// llama.cpp's `tokenizer.ggml.token_type` for control tokens (`<|im_start|>` and friends).
const TOKEN_TYPE_CONTROL: i32 = 3;

/// Ids the model needs besides the vocabulary.
#[derive(Debug, Clone, Copy)]
pub struct SpecialIds {
    pub bos: Option<u32>,
    pub eos: u32,
    pub pad: Option<u32>,
}

/// Builds the tokenizer from `tokenizer.ggml.tokens` / `.merges` / `.token_type`.
pub fn from_gguf_metadata(md: &HashMap<String, Value>) -> Result<(Tokenizer, SpecialIds)> {
    let get = |key: &str| {
        md.get(key)
            .ok_or_else(|| Error::Invalid(format!("GGUF metadata has no {key}")))
    };
    let model = get("tokenizer.ggml.model")?.to_string()?;
    if model != "gpt2" {
        return Err(Error::Invalid(format!(
            "GGUF tokenizer model {model:?} is not supported (only byte-level BPE, \"gpt2\")"
        )));
    }
    let tokens = get("tokenizer.ggml.tokens")?
        .to_vec()?
        .iter()
        .map(|v| v.to_string().cloned())
        .collect::<candle_core::Result<Vec<_>>>()?;
    let merges = get("tokenizer.ggml.merges")?
        .to_vec()?
        .iter()
        .map(|v| {
            let m = v.to_string()?;
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| candle_core::Error::Msg(format!("bad merge {m:?}")))
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let types = match md.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()?
            .iter()
            .map(Value::to_i32)
            .collect::<candle_core::Result<Vec<_>>>()?,
        None => Vec::new(),
    };

    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.clone(), id as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    let mut tokenizer = Tokenizer::new(bpe);
    // Same settings as SmolLM2's tokenizer.json: no prefix space, GPT-2 split regex.
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    // Control tokens must never be split into bytes by the BPE, so they are added as special.
    let specials: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &t)| t == TOKEN_TYPE_CONTROL)
        .map(|(tok, _)| AddedToken::from(tok.clone(), true))
        .collect();
    tokenizer
        .add_special_tokens(specials)
        .map_err(|e| Error::Tokenizer(e.to_string()))?;

    let id = |key: &str| -> Result<Option<u32>> {
        md.get(key)
            .map(|v| v.to_u32())
            .transpose()
            .map_err(Into::into)
    };
    let eos = id("tokenizer.ggml.eos_token_id")?
        .ok_or_else(|| Error::Invalid("GGUF metadata has no tokenizer.ggml.eos_token_id".into()))?;
    let ids = SpecialIds {
        bos: id("tokenizer.ggml.bos_token_id")?,
        eos,
        pad: id("tokenizer.ggml.padding_token_id")?,
    };
    Ok((tokenizer, ids))
}
