//! Token classification, mirroring transformers' `*ForTokenClassification` heads: the encoder
//! (BERT, DistilBERT or XLM-RoBERTa, by `model_type` in `config.json`), then a linear layer over
//! every token (dropout is inactive at inference).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;
use tokenizers::Tokenizer;

use crate::encoder::{Encoder, Head, Precision};
use crate::entities::{aggregate, Aggregation, Entity, TokenPrediction};
use crate::{kernels, Error, Result};

/// The parts of `config.json` beyond what the encoder reads.
#[derive(Deserialize)]
struct LabelConfig {
    id2label: HashMap<String, String>,
}

/// A loaded token-classification model with its tokenizer.
pub struct TokenClassifier {
    encoder: Encoder,
    classifier: Head,
    labels: Vec<String>,
    tokenizer: Tokenizer,
    max_len: usize,
    cls: u32,
    sep: u32,
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
    /// Loads a Hugging Face token-classification directory, its dense layers computed in
    /// `precision` (int8 only on the CPU).
    pub fn load(dir: &Path, device: &Device, precision: Precision) -> Result<Self> {
        let config_path = dir.join("config.json");
        let text =
            std::fs::read_to_string(&config_path).map_err(|e| load_error(&config_path, e))?;
        let head: LabelConfig =
            serde_json::from_str(&text).map_err(|e| load_error(&config_path, e))?;
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
        let encoder =
            Encoder::load(&text, &tensors, precision).map_err(|e| load_error(&weights, e))?;
        let classifier = match (
            tensors.get("classifier.weight"),
            tensors.get("classifier.bias"),
        ) {
            (Some(w), Some(b)) if w.dims() == [labels.len(), encoder.hidden()] => {
                let f32 = |t: &Tensor| t.to_dtype(DType::F32);
                let (w, b) = (f32(w), f32(b));
                w.and_then(|w| Head::new(&w, &b?))
                    .map_err(|e| load_error(&weights, e))?
            }
            _ => {
                return Err(load_error(
                    &weights,
                    format!(
                        "no classifier of {} labels over {} features",
                        labels.len(),
                        encoder.hidden()
                    ),
                ))
            }
        };
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
        let max_len = encoder.max_len;
        let unk = ["[UNK]", "<unk>"]
            .iter()
            .find_map(|t| tokenizer.token_to_id(t));
        Ok(Self {
            cls,
            sep,
            unk,
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
        let head = Some(&self.classifier);
        Ok(self
            .encoder
            .forward(ids, &[ids.len()], &self.device, head)?)
    }

    /// Label probabilities of every token of sequences run as one batch, packed one after
    /// another: each equals its unbatched result.
    pub fn probabilities(&self, sequences: &[Vec<u32>]) -> Result<Vec<Vec<Vec<f32>>>> {
        let ids = sequences.concat();
        let lengths: Vec<usize> = sequences.iter().map(Vec::len).collect();
        let head = Some(&self.classifier);
        let logits = self.encoder.forward(&ids, &lengths, &self.device, head)?;
        let mut rows = kernels::softmax_last_dim(&logits)?
            .to_vec2::<f32>()?
            .into_iter();
        Ok(lengths
            .iter()
            .map(|&n| rows.by_ref().take(n).collect())
            .collect())
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
        self.entities_batch_with(texts, batch_size, |s| self.probabilities(s))
    }

    /// [`TokenClassifier::entities_batch`] with the label probabilities of each batch of model
    /// inputs from `run` (another runtime of the same model, to compare entities with).
    pub fn entities_batch_with(
        &self,
        texts: &[&str],
        batch_size: usize,
        run: impl FnMut(&[Vec<u32>]) -> Result<Vec<Vec<Vec<f32>>>>,
    ) -> Result<Vec<Vec<Entity>>> {
        let tokens = self.token_predictions_with(texts, batch_size, run)?;
        Ok(texts
            .iter()
            .zip(tokens)
            .map(|(text, tokens)| aggregate(text, &tokens, &self.labels, self.aggregation))
            .collect())
    }

    /// The sequences the model runs on for `texts`: every window of every text (see
    /// [`TokenClassifier::token_predictions`]), framed with the start and end tokens.
    pub fn model_inputs(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let plan = self.plan(texts)?;
        Ok(plan
            .windows
            .iter()
            .map(|w| plan.sequence(w, self))
            .collect())
    }

    /// The label probabilities of every token of each text (special tokens excluded). Texts
    /// longer than the model's window are split into overlapping windows that begin and end at
    /// word boundaries; each token takes the prediction of the window where it is furthest from
    /// an edge. Windows run `batch_size` at a time, packed (no padding).
    pub fn token_predictions(
        &self,
        texts: &[&str],
        batch_size: usize,
    ) -> Result<Vec<Vec<TokenPrediction>>> {
        self.token_predictions_with(texts, batch_size, |s| self.probabilities(s))
    }

    fn token_predictions_with(
        &self,
        texts: &[&str],
        batch_size: usize,
        mut run: impl FnMut(&[Vec<u32>]) -> Result<Vec<Vec<Vec<f32>>>>,
    ) -> Result<Vec<Vec<TokenPrediction>>> {
        let plan = self.plan(texts)?;
        let mut best: Vec<Vec<Option<(usize, TokenPrediction)>>> = plan
            .encodings
            .iter()
            .map(|e| vec![None; e.get_ids().len()])
            .collect();
        for chunk in plan.windows.chunks(batch_size.max(1)) {
            let sequences: Vec<Vec<u32>> = chunk.iter().map(|w| plan.sequence(w, self)).collect();
            let probs = run(&sequences)?;
            for (
                &Window {
                    text: t,
                    start,
                    end,
                },
                mut probs,
            ) in chunk.iter().zip(probs)
            {
                let offsets = plan.encodings[t].get_offsets();
                for i in start..end {
                    let margin = (i - start).min(end - 1 - i);
                    if best[t][i].as_ref().is_none_or(|(m, _)| margin > *m) {
                        best[t][i] = Some((
                            margin,
                            TokenPrediction {
                                probs: std::mem::take(&mut probs[i - start + 1]),
                                start: offsets[i].0,
                                end: offsets[i].1,
                                subword: plan.subwords[t][i],
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

    /// Tokenizes texts and cuts them into windows.
    fn plan(&self, texts: &[&str]) -> Result<Plan> {
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
                windows.push(Window {
                    text: t,
                    start,
                    end,
                });
                if end >= n {
                    break;
                }
                start = word_start(end.saturating_sub(WINDOW_OVERLAP), start).max(start + 1);
            }
        }
        Ok(Plan {
            encodings,
            subwords,
            windows,
        })
    }
}

/// Texts tokenized and cut into model windows.
struct Plan {
    encodings: Vec<tokenizers::Encoding>,
    subwords: Vec<Vec<bool>>,
    windows: Vec<Window>,
}

/// Tokens `start..end` of text `text`.
struct Window {
    text: usize,
    start: usize,
    end: usize,
}

impl Plan {
    fn sequence(&self, w: &Window, model: &TokenClassifier) -> Vec<u32> {
        let mut s = Vec::with_capacity(w.end - w.start + 2);
        s.push(model.cls);
        s.extend_from_slice(&self.encodings[w.text].get_ids()[w.start..w.end]);
        s.push(model.sep);
        s
    }
}
