use std::time::Instant;

use aion_trainer::model::Storage;
use aion_trainer::{BaseModel, Lora, LoraConfig};
use candle_core::{DType, Device, Tensor, D};

use crate::{base, model_path};

const PARAGRAPH: &str = "The city council met on Tuesday evening to discuss the new budget for \
public transport. Several members argued that the bus network should be expanded to the northern \
districts, where many residents have no car and the nearest train station is more than an hour's \
walk away. Others warned that the money would be better spent on repairing the roads that already \
exist. After a long debate, the council agreed to commission a study and to vote again next month.";

/// Mean next-token negative log-likelihood over `ids`.
fn nll(model: &aion_trainer::Llama, ids: &[u32], lora: Option<&Lora>) -> f64 {
    let input = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = model
        .forward(&input, None, lora)
        .unwrap()
        .squeeze(0)
        .unwrap();
    let n = ids.len() - 1;
    let logp = candle_nn::ops::log_softmax(&logits.narrow(0, 0, n).unwrap(), D::Minus1).unwrap();
    let targets = Tensor::new(&ids[1..], &Device::Cpu)
        .unwrap()
        .unsqueeze(1)
        .unwrap();
    let picked = logp.gather(&targets, 1).unwrap();
    -picked
        .mean_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Measured on 87 tokens: f32 (the GGUF Q4_1 dequantised) 21.4, NF4 with double quantisation 26.4
/// (NF4 re-quantises an already 4-bit model, so its cost compounds).
#[test]
fn perplexity_of_an_english_paragraph_is_sane() {
    let Some(base) = base() else { return };
    let ids = base
        .tokenizer
        .encode(PARAGRAPH, false)
        .unwrap()
        .get_ids()
        .to_vec();
    let start = Instant::now();
    let ppl_nf4 = nll(&base.model, &ids, None).exp();
    eprintln!(
        "NF4 perplexity {ppl_nf4:.2} over {} tokens in {:.1?}",
        ids.len(),
        start.elapsed()
    );
    let dense = BaseModel::load(&model_path().unwrap(), Storage::F32).unwrap();
    let ppl_f32 = nll(&dense.model, &ids, None).exp();
    eprintln!("f32 perplexity {ppl_f32:.2}");
    assert!(ppl_f32 > 2.0 && ppl_f32 < 60.0, "{ppl_f32}");
    assert!(ppl_nf4 > 2.0 && ppl_nf4 < 60.0, "{ppl_nf4}");
    // NF4 costs a little, not a lot.
    assert!(ppl_nf4 < ppl_f32 * 1.35, "{ppl_nf4} vs {ppl_f32}");
}

#[test]
fn lora_with_zero_b_is_exactly_the_base() {
    let Some(base) = base() else { return };
    let ids = base
        .tokenizer
        .encode("LoRA starts as the identity.", false)
        .unwrap()
        .get_ids()
        .to_vec();
    let input = Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let lora = Lora::new(&LoraConfig::default(), &base.model, 7).unwrap();
    let plain = base.model.forward(&input, None, None).unwrap();
    let adapted = base.model.forward(&input, None, Some(&lora)).unwrap();
    let diff = (plain - adapted).unwrap().abs().unwrap().max_all().unwrap();
    assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
}

/// Right padding does not change the real tokens' logits (padding keys are masked).
#[test]
fn padded_batch_matches_single_rows() {
    let Some(base) = base() else { return };
    let a = base
        .tokenizer
        .encode("A short one.", false)
        .unwrap()
        .get_ids()
        .to_vec();
    let b = base
        .tokenizer
        .encode("A somewhat longer second sentence here.", false)
        .unwrap()
        .get_ids()
        .to_vec();
    let t = b.len();
    let mut rows = a.clone();
    rows.resize(t, 0);
    rows.extend(&b);
    let batch = Tensor::from_vec(rows, (2, t), &Device::Cpu).unwrap();
    let logits = base
        .model
        .forward(&batch, Some(&[a.len(), t]), None)
        .unwrap();
    let single = base
        .model
        .forward(
            &Tensor::new(a.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap(),
            None,
            None,
        )
        .unwrap();
    let got = logits
        .narrow(0, 0, 1)
        .unwrap()
        .narrow(1, 0, a.len())
        .unwrap();
    let diff = (got - single)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-3, "{diff}");
}
