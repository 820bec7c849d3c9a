//! The tokenizers llama.cpp stores in GGUF metadata, rebuilt as `tokenizers::Tokenizer`s so that
//! the GGUF and the Hugging Face `tokenizer.json` paths give the same ids:
//! - GPT-2-style byte-level BPE (`tokenizer.ggml.model = "gpt2"`: SmolLM, Qwen2, LLaMA 3), from
//!   its tokens and merges;
//! - SentencePiece BPE (`"llama"`: LLaMA 1/2, Mistral), from its pieces and scores, as
//!   transformers' `LlamaConverter` builds `tokenizer.json` from a SentencePiece model.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::normalizers::{
    NormalizerWrapper, Prepend, Replace, Sequence as NormalizerSequence,
};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::{Error, Result};

/// llama.cpp's `tokenizer.ggml.token_type` values.
const TOKEN_TYPE_NORMAL: i32 = 1;
const TOKEN_TYPE_UNKNOWN: i32 = 2;
/// Control tokens: `<|im_start|>`, `<s>` and friends.
const TOKEN_TYPE_CONTROL: i32 = 3;

/// SentencePiece's word-boundary marker, which stands for a space in its pieces.
const SPIECE_UNDERLINE: &str = "\u{2581}";

/// Ids the model needs besides the vocabulary.
#[derive(Debug, Clone, Copy)]
pub struct SpecialIds {
    pub bos: Option<u32>,
    pub eos: u32,
    pub pad: Option<u32>,
}

/// Builds the tokenizer from `tokenizer.ggml.tokens` / `.token_type` and `.merges` (byte-level
/// BPE) or `.scores` (SentencePiece).
pub fn from_gguf_metadata(md: &HashMap<String, Value>) -> Result<(Tokenizer, SpecialIds)> {
    let get = |key: &str| {
        md.get(key)
            .ok_or_else(|| Error::Invalid(format!("GGUF metadata has no {key}")))
    };
    let tokens = get("tokenizer.ggml.tokens")?
        .to_vec()?
        .iter()
        .map(|v| v.to_string().cloned())
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
    let model = get("tokenizer.ggml.model")?.to_string()?;
    let mut tokenizer = match model.as_str() {
        "gpt2" => {
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
            byte_level_bpe(vocab, merges)?
        }
        "llama" => {
            let scores = get("tokenizer.ggml.scores")?
                .to_vec()?
                .iter()
                .map(Value::to_f32)
                .collect::<candle_core::Result<Vec<_>>>()?;
            let space_prefix = match md.get("tokenizer.ggml.add_space_prefix") {
                Some(v) => v.to_bool()?,
                None => true,
            };
            sentencepiece_bpe(&tokens, &types, &scores, vocab, space_prefix)?
        }
        other => {
            return Err(Error::Invalid(format!(
                "GGUF tokenizer model {other:?} is not supported (byte-level BPE \"gpt2\" and \
                 SentencePiece \"llama\" are)"
            )))
        }
    };
    // Control tokens must never be split by the BPE, so they are added as special.
    let specials: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &t)| t == TOKEN_TYPE_CONTROL || t == TOKEN_TYPE_UNKNOWN)
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

/// SmolLM2's `tokenizer.json` settings: no prefix space, the GPT-2 split regex, bytes as
/// characters.
fn byte_level_bpe(vocab: Vocab, merges: Merges) -> Result<Tokenizer> {
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tokenizer)
}

/// LLaMA's `tokenizer.json`: spaces become `▁` (and one is prepended), BPE over the pieces with
/// unknown characters as `<0xNN>` byte pieces, decoded back the same way. SentencePiece merges by
/// the score of the merged piece, so the merges are every split of a piece into two pieces,
/// highest merged score first (transformers' `SentencePieceExtractor`). Only normal pieces take
/// part: text never merges into a control, unknown or byte piece, as in SentencePiece.
fn sentencepiece_bpe(
    tokens: &[String],
    types: &[i32],
    scores: &[f32],
    vocab: Vocab,
    space_prefix: bool,
) -> Result<Tokenizer> {
    if scores.len() != tokens.len() {
        return Err(Error::Invalid(format!(
            "GGUF tokenizer has {} scores for {} tokens",
            scores.len(),
            tokens.len()
        )));
    }
    let normal = |id: usize| types.get(id).is_none_or(|&t| t == TOKEN_TYPE_NORMAL);
    let pieces: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .filter(|&(id, _)| normal(id))
        .map(|(id, t)| (t.as_str(), id))
        .collect();
    let mut ranked: Vec<(f32, usize, usize)> = Vec::new();
    for (&piece, &id) in &pieces {
        for (at, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(at);
            if let (Some(&l), Some(&r)) = (pieces.get(left), pieces.get(right)) {
                ranked.push((scores[id], l, r));
            }
        }
    }
    // Highest score first; ties by the parts' ids, as transformers orders them.
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
    let merges: Merges = ranked
        .into_iter()
        .map(|(_, l, r)| (tokens[l].clone(), tokens[r].clone()))
        .collect();
    let unk = types
        .iter()
        .position(|&t| t == TOKEN_TYPE_UNKNOWN)
        .map(|id| tokens[id].clone());
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk);
    }
    let bpe = builder
        .build()
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    let tokenizer_err = |e: tokenizers::Error| Error::Tokenizer(e.to_string());
    let mut tokenizer = Tokenizer::new(bpe);
    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    if space_prefix {
        normalizers.push(Prepend::new(SPIECE_UNDERLINE.into()).into());
    }
    normalizers.push(
        Replace::new(" ", SPIECE_UNDERLINE)
            .map_err(tokenizer_err)?
            .into(),
    );
    tokenizer
        .with_normalizer(Some(NormalizerSequence::new(normalizers)))
        .map_err(tokenizer_err)?;
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new(SPIECE_UNDERLINE, " ")
            .map_err(tokenizer_err)?
            .into(),
        ByteFallback::default().into(),
        Fuse::default().into(),
    ];
    if space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tokenizer)
}
