//! BERT token classification, mirroring transformers' `BertForTokenClassification`
//! (src/transformers/models/bert/modeling_bert.py): the encoder of candle-transformers'
//! `bert::BertModel`, then a linear layer over every token (dropout is inactive at inference).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Linear, Module, VarBuilder};
use candle_transformers::models::bert::{BertModel, Config};
use serde::Deserialize;
use tokenizers::Tokenizer;

use crate::entities::{group_simple, Entity, TokenPrediction};
use crate::{Error, Result};

/// The parts of `config.json` beyond what the encoder reads.
#[derive(Deserialize)]
struct Head {
    id2label: HashMap<String, String>,
    max_position_embeddings: usize,
}

/// A loaded token-classification model with its tokenizer.
pub struct TokenClassifier {
    bert: BertModel,
    classifier: Linear,
    labels: Vec<String>,
    tokenizer: Tokenizer,
    max_len: usize,
    device: Device,
}

/// Tokens shared by neighbouring windows of a long text.
const WINDOW_OVERLAP: usize = 64;

fn load_error(path: &Path, message: impl ToString) -> Error {
    Error::Load {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

impl TokenClassifier {
    /// Loads a Hugging Face token-classification directory.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config_path = dir.join("config.json");
        let text =
            std::fs::read_to_string(&config_path).map_err(|e| load_error(&config_path, e))?;
        let config: Config =
            serde_json::from_str(&text).map_err(|e| load_error(&config_path, e))?;
        let head: Head = serde_json::from_str(&text).map_err(|e| load_error(&config_path, e))?;
        let mut labels = vec![String::new(); head.id2label.len()];
        for (id, label) in head.id2label {
            let i: usize = id
                .parse()
                .ok()
                .filter(|i| *i < labels.len())
                .ok_or_else(|| load_error(&config_path, format!("id2label has a bad id {id:?}")))?;
            labels[i] = label;
        }
        let weights = dir.join("model.safetensors");
        let tensors = candle_core::safetensors::load(&weights, device)
            .map_err(|e| load_error(&weights, e))?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let bert = BertModel::load(vb.clone(), &config).map_err(|e| load_error(&weights, e))?;
        let classifier = candle_nn::linear(config.hidden_size, labels.len(), vb.pp("classifier"))
            .map_err(|e| load_error(&weights, e))?;
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|e| load_error(&tokenizer_path, e))?;
        Ok(Self {
            bert,
            classifier,
            labels,
            tokenizer,
            max_len: head.max_position_embeddings,
            device: device.clone(),
        })
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Logits `[tokens, labels]` for one sequence of token ids (special tokens included).
    pub fn logits(&self, ids: &[u32]) -> Result<Tensor> {
        let input = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        let types = input.zeros_like()?;
        let hidden = self.bert.forward(&input, &types, None)?;
        Ok(self.classifier.forward(&hidden)?.squeeze(0)?)
    }

    /// Token ids of `text` with [CLS]/[SEP] (what [`TokenClassifier::logits`] expects).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Entities of `text`. Texts longer than the model's window are split into overlapping
    /// windows; each token takes the prediction of the window where it is furthest from an edge.
    pub fn entities(&self, text: &str) -> Result<Vec<Entity>> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let (ids, offsets) = (encoding.get_ids(), encoding.get_offsets());
        let (cls, sep) = (self.special("[CLS]")?, self.special("[SEP]")?);
        let width = self.max_len.saturating_sub(2).max(WINDOW_OVERLAP * 2);
        let step = width - WINDOW_OVERLAP;
        let mut best: Vec<Option<(usize, TokenPrediction)>> = vec![None; ids.len()];
        let mut start = 0;
        loop {
            let end = (start + width).min(ids.len());
            let mut window = Vec::with_capacity(end - start + 2);
            window.push(cls);
            window.extend_from_slice(&ids[start..end]);
            window.push(sep);
            let probs = candle_nn::ops::softmax(&self.logits(&window)?, D::Minus1)?;
            let probs: Vec<Vec<f32>> = probs.to_vec2()?;
            for i in start..end {
                let row = &probs[i - start + 1];
                let (label, score) = row.iter().enumerate().fold((0, f32::MIN), |acc, (j, &p)| {
                    if p > acc.1 {
                        (j, p)
                    } else {
                        acc
                    }
                });
                let margin = (i - start).min(end - 1 - i);
                if best[i].as_ref().is_none_or(|(m, _)| margin > *m) {
                    best[i] = Some((
                        margin,
                        TokenPrediction {
                            label: self.labels.get(label).cloned().unwrap_or_default(),
                            score,
                            start: offsets[i].0,
                            end: offsets[i].1,
                        },
                    ));
                }
            }
            if end == ids.len() {
                break;
            }
            start += step;
        }
        let tokens: Vec<TokenPrediction> = best.into_iter().flatten().map(|(_, t)| t).collect();
        Ok(group_simple(text, &tokens))
    }

    fn special(&self, token: &str) -> Result<u32> {
        self.tokenizer
            .token_to_id(token)
            .ok_or_else(|| Error::Tokenizer(format!("the vocabulary has no {token}")))
    }
}
