//! Token classification, mirroring transformers' `*ForTokenClassification` heads: an encoder from
//! candle-transformers (BERT, DistilBERT or XLM-RoBERTa, by `model_type` in `config.json`), then a
//! linear layer over every token (dropout is inactive at inference).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Linear, Module, VarBuilder};
use candle_transformers::models::{bert, distilbert, xlm_roberta};
use serde::Deserialize;
use tokenizers::Tokenizer;

use crate::entities::{aggregate, Aggregation, Entity, TokenPrediction};
use crate::{Error, Result};

/// The parts of `config.json` beyond what the encoder reads.
#[derive(Deserialize)]
struct Head {
    #[serde(default)]
    model_type: String,
    id2label: HashMap<String, String>,
    max_position_embeddings: usize,
    /// `dim` in DistilBERT configs.
    #[serde(alias = "dim")]
    hidden_size: usize,
    #[serde(default)]
    pad_token_id: u32,
}

/// The encoders a token-classification directory can hold.
enum Encoder {
    Bert(bert::BertModel),
    DistilBert(distilbert::DistilBertModel),
    XlmRoberta(xlm_roberta::XLMRobertaModel),
}

impl Encoder {
    fn load(head: &Head, config: &str, vb: VarBuilder) -> std::result::Result<Self, String> {
        let parse = |e: serde_json::Error| e.to_string();
        let load = |e: candle_core::Error| e.to_string();
        Ok(match head.model_type.as_str() {
            "bert" | "" => Self::Bert(
                bert::BertModel::load(vb, &serde_json::from_str(config).map_err(parse)?)
                    .map_err(load)?,
            ),
            "distilbert" => Self::DistilBert(
                distilbert::DistilBertModel::load(
                    vb,
                    &serde_json::from_str(config).map_err(parse)?,
                )
                .map_err(load)?,
            ),
            "xlm-roberta" | "roberta" => Self::XlmRoberta(
                xlm_roberta::XLMRobertaModel::new(
                    &serde_json::from_str(config).map_err(parse)?,
                    vb.pp("roberta"),
                )
                .map_err(load)?,
            ),
            other => {
                return Err(format!(
                    "model_type {other:?} is not supported (bert, distilbert, xlm-roberta)"
                ))
            }
        })
    }

    /// Hidden states `[batch, tokens, hidden]`; `mask` is 1 for real tokens, 0 for padding.
    fn forward(&self, ids: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Bert(m) => m.forward(ids, &ids.zeros_like()?, Some(mask)),
            // DistilBERT's mask marks the positions to hide, shaped to broadcast over the scores.
            Self::DistilBert(m) => {
                let (batch, len) = mask.dims2()?;
                m.forward(ids, &mask.eq(0u32)?.reshape((batch, 1, 1, len))?)
            }
            Self::XlmRoberta(m) => m.forward(ids, mask, &ids.zeros_like()?, None, None, None),
        }
    }
}

/// A loaded token-classification model with its tokenizer.
pub struct TokenClassifier {
    encoder: Encoder,
    classifier: Linear,
    labels: Vec<String>,
    tokenizer: Tokenizer,
    max_len: usize,
    cls: u32,
    sep: u32,
    pad: u32,
    /// The unknown token, never a continuation piece (as transformers treats it).
    unk: Option<u32>,
    device: Device,
    aggregation: Aggregation,
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
        let head: Head = serde_json::from_str(&text).map_err(|e| load_error(&config_path, e))?;
        let mut labels = vec![String::new(); head.id2label.len()];
        for (id, label) in &head.id2label {
            let i: usize = id
                .parse()
                .ok()
                .filter(|i| *i < labels.len())
                .ok_or_else(|| load_error(&config_path, format!("id2label has a bad id {id:?}")))?;
            labels[i] = label.clone();
        }
        let weights = dir.join("model.safetensors");
        let tensors = candle_core::safetensors::load(&weights, device)
            .map_err(|e| load_error(&weights, e))?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let encoder =
            Encoder::load(&head, &text, vb.clone()).map_err(|e| load_error(&weights, e))?;
        let classifier = candle_nn::linear(head.hidden_size, labels.len(), vb.pp("classifier"))
            .map_err(|e| load_error(&weights, e))?;
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|e| load_error(&tokenizer_path, e))?;
        // The tokenizer's own post-processor says what frames a sequence ([CLS]/[SEP], <s>/</s>).
        let frame = tokenizer
            .encode("", true)
            .map_err(|e| load_error(&tokenizer_path, e))?;
        let (cls, sep) = match frame.get_ids() {
            [cls, sep] => (*cls, *sep),
            other => {
                return Err(load_error(
                    &tokenizer_path,
                    format!("expected a start and an end token around a sequence, got {other:?}"),
                ))
            }
        };
        // XLM-RoBERTa's positions start after the padding index.
        let max_len = match &encoder {
            Encoder::XlmRoberta(_) => head
                .max_position_embeddings
                .saturating_sub(head.pad_token_id as usize + 1),
            _ => head.max_position_embeddings,
        };
        let unk = ["[UNK]", "<unk>"]
            .iter()
            .find_map(|t| tokenizer.token_to_id(t));
        Ok(Self {
            cls,
            sep,
            unk,
            pad: head.pad_token_id,
            encoder,
            classifier,
            labels,
            tokenizer,
            max_len,
            device: device.clone(),
            aggregation: Aggregation::default(),
        })
    }

    /// How wordpieces' labels become a word's label (default [`Aggregation::First`]).
    pub fn with_aggregation(mut self, aggregation: Aggregation) -> Self {
        self.aggregation = aggregation;
        self
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    pub fn aggregation(&self) -> Aggregation {
        self.aggregation
    }

    /// Logits `[tokens, labels]` for one sequence of token ids (special tokens included).
    pub fn logits(&self, ids: &[u32]) -> Result<Tensor> {
        let input = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        let hidden = self.encoder.forward(&input, &input.ones_like()?)?;
        Ok(self.classifier.forward(&hidden)?.squeeze(0)?)
    }

    /// Label probabilities `[batch, longest, labels]` for sequences run as one batch: shorter ones
    /// are padded and masked out, so each row equals its unbatched result.
    fn probabilities(&self, sequences: &[Vec<u32>]) -> Result<Tensor> {
        let longest = sequences.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(sequences.len() * longest);
        let mut mask = Vec::with_capacity(sequences.len() * longest);
        for s in sequences {
            ids.extend_from_slice(s);
            ids.resize(ids.len() + longest - s.len(), self.pad);
            mask.extend(std::iter::repeat_n(1u32, s.len()));
            mask.resize(mask.len() + longest - s.len(), 0);
        }
        let shape = (sequences.len(), longest);
        let input = Tensor::from_vec(ids, shape, &self.device)?;
        let mask = Tensor::from_vec(mask, shape, &self.device)?;
        let hidden = self.encoder.forward(&input, &mask)?;
        Ok(candle_nn::ops::softmax_last_dim(
            &self.classifier.forward(&hidden)?,
        )?)
    }

    /// Token ids of `text` with [CLS]/[SEP] (what [`TokenClassifier::logits`] expects).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Entities of `text`; see [`TokenClassifier::entities_batch`].
    pub fn entities(&self, text: &str) -> Result<Vec<Entity>> {
        Ok(self.entities_batch(&[text], 1)?.pop().unwrap_or_default())
    }

    /// Entities of each text, inference batched `batch_size` model windows at a time.
    pub fn entities_batch(&self, texts: &[&str], batch_size: usize) -> Result<Vec<Vec<Entity>>> {
        let tokens = self.token_predictions(texts, batch_size)?;
        Ok(texts
            .iter()
            .zip(tokens)
            .map(|(text, tokens)| aggregate(text, &tokens, &self.labels, self.aggregation))
            .collect())
    }

    /// The label probabilities of every token of each text (special tokens excluded). Texts
    /// longer than the model's window are split into overlapping windows that begin and end at
    /// word boundaries; each token takes the prediction of the window where it is furthest from
    /// an edge. Windows of all texts are sorted by length and run `batch_size` at a time, so
    /// padding stays small.
    pub fn token_predictions(
        &self,
        texts: &[&str],
        batch_size: usize,
    ) -> Result<Vec<Vec<TokenPrediction>>> {
        let encodings = texts
            .iter()
            .map(|t| self.tokenizer.encode(*t, false))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        // Whether each token continues the previous token's word, as transformers decides it for
        // tokenizers with a continuing-subword prefix: its vocabulary form ("##ci") is not as long
        // as the text it covers ("ci").
        let subwords: Vec<Vec<bool>> = texts
            .iter()
            .zip(&encodings)
            .map(|(text, e)| {
                e.get_tokens()
                    .iter()
                    .zip(e.get_offsets())
                    .zip(e.get_ids())
                    .enumerate()
                    .map(|(i, ((token, &(start, end)), &id))| {
                        i > 0
                            && Some(id) != self.unk
                            && token.chars().count()
                                != text.get(start..end).map_or(0, |w| w.chars().count())
                    })
                    .collect()
            })
            .collect();
        let width = self.max_len.saturating_sub(2).max(WINDOW_OVERLAP * 2);
        // (text, first token, end token) of every window.
        let mut windows = Vec::new();
        for (t, subword) in subwords.iter().enumerate() {
            let n = subword.len();
            // Moves a cut back to the start of the word it falls in (unless that word would
            // leave the window empty: one word longer than a window is cut).
            let word_start = |mut i: usize, floor: usize| {
                while i > floor + 1 && i < n && subword[i] {
                    i -= 1;
                }
                i
            };
            let mut start = 0;
            loop {
                let end = word_start((start + width).min(n), start);
                windows.push((t, start, end));
                if end >= n {
                    break;
                }
                start = word_start(end.saturating_sub(WINDOW_OVERLAP), start).max(start + 1);
            }
        }
        windows.sort_by_key(|&(_, start, end)| end - start);
        let mut best: Vec<Vec<Option<(usize, TokenPrediction)>>> = encodings
            .iter()
            .map(|e| vec![None; e.get_ids().len()])
            .collect();
        for chunk in windows.chunks(batch_size.max(1)) {
            let sequences: Vec<Vec<u32>> = chunk
                .iter()
                .map(|&(t, start, end)| {
                    let mut s = Vec::with_capacity(end - start + 2);
                    s.push(self.cls);
                    s.extend_from_slice(&encodings[t].get_ids()[start..end]);
                    s.push(self.sep);
                    s
                })
                .collect();
            let probs: Vec<Vec<Vec<f32>>> = self.probabilities(&sequences)?.to_vec3()?;
            for (&(t, start, end), mut probs) in chunk.iter().zip(probs) {
                let offsets = encodings[t].get_offsets();
                for i in start..end {
                    let margin = (i - start).min(end - 1 - i);
                    if best[t][i].as_ref().is_none_or(|(m, _)| margin > *m) {
                        best[t][i] = Some((
                            margin,
                            TokenPrediction {
                                probs: std::mem::take(&mut probs[i - start + 1]),
                                start: offsets[i].0,
                                end: offsets[i].1,
                                subword: subwords[t][i],
                            },
                        ));
                    }
                }
            }
        }
        Ok(best
            .into_iter()
            .map(|tokens| tokens.into_iter().flatten().map(|(_, t)| t).collect())
            .collect())
    }
}
