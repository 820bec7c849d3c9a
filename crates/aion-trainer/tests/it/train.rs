use std::ops::ControlFlow;
use std::time::Instant;

use aion_trainer::model::LoraConfig;
use aion_trainer::{held_out_loss, load_adapter, train, Example, Progress, TrainConfig};

use crate::base;

fn examples() -> Vec<Example> {
    [
        (
            "What is the capital of France?",
            "The capital of France is Paris.",
        ),
        (
            "Qual é a capital do Brasil?",
            "A capital do Brasil é Brasília.",
        ),
        ("Name a primary colour.", "Red is a primary colour."),
        ("How many days are in a week?", "A week has seven days."),
        (
            "Translate 'obrigado' to English.",
            "'Obrigado' means 'thank you'.",
        ),
        ("What do bees make?", "Bees make honey."),
        (
            "Which planet is known as the red planet?",
            "Mars is known as the red planet.",
        ),
        ("What is 2 + 2?", "2 + 2 equals 4."),
    ]
    .map(|(i, r)| Example {
        instruction: i.into(),
        response: r.into(),
    })
    .to_vec()
}

/// 8 short examples, 4 steps an epoch, 6 steps.
fn tiny() -> TrainConfig {
    TrainConfig {
        lora: LoraConfig {
            r: 8,
            alpha: 16.0,
            ..LoraConfig::default()
        },
        max_len: 64,
        held_out_fraction: 0.0,
        lr: 1e-3,
        batch_size: 2,
        grad_accum: 1,
        epochs: 10,
        max_steps: Some(6),
        checkpoint_every: 2,
        ..TrainConfig::default()
    }
}

fn run(dir: &std::path::Path, cancel_at: Option<usize>) -> (aion_trainer::Outcome, Vec<Progress>) {
    run_with(&tiny(), dir, cancel_at)
}

fn run_with(
    config: &TrainConfig,
    dir: &std::path::Path,
    cancel_at: Option<usize>,
) -> (aion_trainer::Outcome, Vec<Progress>) {
    let base = base().unwrap();
    let mut seen = Vec::new();
    let outcome = train(base, &examples(), config, dir, &mut |p| {
        eprintln!(
            "step {}/{} loss {:.4} {:.0} tok/s eta {:.1?}",
            p.step, p.total_steps, p.loss, p.tokens_per_s, p.eta
        );
        seen.push(p.clone());
        if Some(p.step) == cancel_at {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    (outcome, seen)
}

#[test]
fn a_few_steps_lower_the_training_loss_and_save_a_peft_adapter() {
    let Some(base) = base() else { return };
    let dir = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let (outcome, seen) = run(dir.path(), None);
    eprintln!("6 steps in {:.1?}", start.elapsed());
    assert!(!outcome.cancelled);
    assert_eq!(outcome.steps, 6);
    assert_eq!(seen.len(), 6);
    let adapter_dir = outcome.adapter_dir.unwrap();
    let lora = load_adapter(&adapter_dir, base.model.config().num_hidden_layers).unwrap();
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter_dir.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 8);

    let before = held_out_loss(base, None, &examples(), &tiny())
        .unwrap()
        .unwrap();
    let after = held_out_loss(base, Some(&lora), &examples(), &tiny())
        .unwrap()
        .unwrap();
    eprintln!("training-set loss {before:.4} -> {after:.4}");
    assert!(after < before - 0.1, "{before} -> {after}");
    // Only the last two checkpoints stay.
    let kept = std::fs::read_dir(dir.path().join("checkpoints"))
        .unwrap()
        .count();
    assert_eq!(kept, 2);
}

/// Cancelling leaves no adapter but a checkpoint; the next run resumes at the following step and
/// ends with the same adapter as an uninterrupted run (data order and dropout masks are derived
/// from the seed and the step).
#[test]
fn cancel_then_resume_continues_at_the_right_step() {
    let Some(base) = base() else { return };
    let layers = base.model.config().num_hidden_layers;
    let dir = tempfile::tempdir().unwrap();
    let (outcome, seen) = run(dir.path(), Some(3));
    assert!(outcome.cancelled);
    assert_eq!(outcome.steps, 3);
    assert_eq!(seen.len(), 3);
    assert!(outcome.adapter_dir.is_none());
    assert!(!dir.path().join("adapter").exists());
    assert!(dir
        .path()
        .join("checkpoints/step-00000003/state.safetensors")
        .exists());

    let (outcome, seen) = run(dir.path(), None);
    assert_eq!(outcome.resumed_from, Some(3));
    assert_eq!(seen.first().map(|p| p.step), Some(4));
    assert_eq!(outcome.steps, 6);
    let resumed = load_adapter(&outcome.adapter_dir.unwrap(), layers).unwrap();

    let straight_dir = tempfile::tempdir().unwrap();
    let (straight, _) = run(straight_dir.path(), None);
    let straight = load_adapter(&straight.adapter_dir.unwrap(), layers).unwrap();
    assert_same_adapters(&resumed, &straight, 1e-6);
}

/// Gradient checkpointing changes what is kept, not what is learnt: the same 6 steps (LoRA
/// dropout on, so the replayed masks matter) end with the adapter of a run that keeps the graph.
#[test]
fn gradient_checkpointing_trains_the_same_adapter() {
    let Some(base) = base() else { return };
    let layers = base.model.config().num_hidden_layers;
    let adapter = |config: &TrainConfig| {
        let dir = tempfile::tempdir().unwrap();
        let (outcome, _) = run_with(config, dir.path(), None);
        load_adapter(&outcome.adapter_dir.unwrap(), layers).unwrap()
    };
    let kept = adapter(&tiny());
    let checkpointed = adapter(&TrainConfig {
        gradient_checkpointing: true,
        ..tiny()
    });
    assert_same_adapters(&checkpointed, &kept, 1e-4);
}

fn assert_same_adapters(a: &aion_trainer::Lora, b: &aion_trainer::Lora, tolerance: f32) {
    let (a, b) = (a.named_tensors(), b.named_tensors());
    assert_eq!(a.len(), b.len());
    for (name, t) in &a {
        let diff = (t - &b[name]).unwrap().abs().unwrap().max_all().unwrap();
        let diff = diff.to_scalar::<f32>().unwrap();
        assert!(diff < tolerance, "{name}: {diff}");
    }
}
