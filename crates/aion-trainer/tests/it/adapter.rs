use aion_trainer::model::{Lora, LoraConfig};
use aion_trainer::{generate, load_adapter, save_adapter};
use candle_core::{Device, Tensor};

use crate::base;

/// A LoRA with non-zero B so that it changes the output.
pub fn random_lora(model: &aion_trainer::Llama) -> Lora {
    let lora = Lora::new(&LoraConfig::default(), model, 11).unwrap();
    for (i, (_, var)) in lora.named_vars().into_iter().enumerate() {
        if i % 2 == 1 {
            let shape = var.as_tensor().shape().clone();
            var.set(&(Tensor::randn(0f32, 0.02, shape, &Device::Cpu).unwrap()))
                .unwrap();
        }
    }
    lora
}

#[test]
fn saved_then_loaded_adapter_gives_identical_logits() {
    let Some(base) = base() else { return };
    let lora = random_lora(&base.model);
    let dir = tempfile::tempdir().unwrap();
    let adapter_dir = dir.path().join("adapter");
    save_adapter(&lora, &base.name_or_path, &adapter_dir).unwrap();
    // Saving again replaces the adapter; no temp dir is left behind.
    save_adapter(&lora, &base.name_or_path, &adapter_dir).unwrap();
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["adapter"]);

    let loaded = load_adapter(&adapter_dir, base.model.config().num_hidden_layers).unwrap();
    let (_, input) = crate::input(base, "Adapters survive a round trip.");
    let a = base.model.forward(&input, None, Some(&lora)).unwrap();
    let b = base.model.forward(&input, None, Some(&loaded)).unwrap();
    let plain = base.model.forward(&input, None, None).unwrap();
    let diff = |x: &Tensor, y: &Tensor| {
        (x - y)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert_eq!(diff(&a, &b), 0.0);
    assert!(diff(&a, &plain) > 1e-3, "the adapter must change something");

    // Merging W + α/r·BA gives the same model up to float rounding.
    let merged = base.model.merged(Some(&lora)).unwrap();
    let m = merged.forward(&input, None, None).unwrap();
    assert!(diff(&a, &m) < 2e-3, "{}", diff(&a, &m));
}

#[test]
fn greedy_generation_answers() {
    let Some(base) = base() else { return };
    let prompt =
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let text = generate(base, None, prompt, 12).unwrap();
    eprintln!("generated: {text:?}");
    assert!(text.contains("Paris"), "{text}");
}
