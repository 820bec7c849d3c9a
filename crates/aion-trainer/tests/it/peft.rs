//! Parity with Python PEFT (`scripts/checks/peft_parity.py`): the exported dequantised base plus
//! a saved adapter must give the same logits in transformers + PEFT as in candle. Needs the
//! torch/transformers/peft venv (`scripts/checks/requirements-trainer.txt`, by default in
//! `$AION_CACHE_DIR/venv-trainer`, or `AION_TRAINER_PYTHON`), so it is ignored by default:
//! `cargo test -p aion-trainer -- --ignored peft`.

use std::path::PathBuf;
use std::process::Command;

use aion_trainer::{export_dequantised, save_adapter};

use crate::adapter::random_lora;
use crate::base;

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("AION_TRAINER_PYTHON") {
        return p.into();
    }
    let cache = std::env::var_os("AION_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/aion"));
    cache.join("venv-trainer/bin/python")
}

fn reference_logits(
    base_dir: &std::path::Path,
    adapter: Option<&std::path::Path>,
    ids: &[u32],
) -> Vec<Vec<f32>> {
    let script = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo test"))
        .join("../../scripts/checks/peft_parity.py");
    let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
    let mut cmd = Command::new(python());
    cmd.arg(script)
        .arg("--base")
        .arg(base_dir)
        .arg("--ids")
        .arg(ids.join(","));
    if let Some(a) = adapter {
        cmd.arg("--adapter").arg(a);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    serde_json::from_value(json["logits"].clone()).unwrap()
}

/// Tolerance: max |Δlogit| ≤ 1e-3 (both sides float32; logits are of order 10).
#[test]
#[ignore = "needs torch, transformers and peft"]
fn peft_parity_of_base_and_adapter_logits() {
    let Some(base) = base() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (base_dir, adapter_dir) = (dir.path().join("base"), dir.path().join("adapter"));
    export_dequantised(base, &base_dir).unwrap();
    let lora = random_lora(&base.model);
    save_adapter(&lora, &base_dir.display().to_string(), &adapter_dir).unwrap();

    let (ids, input) = crate::input(base, "Parity between candle and PEFT, olá!");
    for (adapter, lora) in [(None, None), (Some(adapter_dir.as_path()), Some(&lora))] {
        let ours: Vec<Vec<f32>> = base
            .model
            .forward(&input, None, lora)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap();
        let theirs = reference_logits(&base_dir, adapter, &ids);
        let max = ours
            .iter()
            .flatten()
            .zip(theirs.iter().flatten())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!("adapter {}: max |Δlogit| {max:.2e}", adapter.is_some());
        assert!(max <= 1e-3, "max |Δlogit| {max}");
    }
}
