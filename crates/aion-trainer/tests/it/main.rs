//! Tests on the real SmolLM2-135M-Instruct weights (installed by `scripts/setup`). Without the
//! model file they are skipped loudly, unless `AION_REQUIRE_MODELS` is set (CI), then they fail.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod adapter;
mod model;
mod peft;
mod tokenizer;
mod train;

use std::path::PathBuf;
use std::sync::OnceLock;

use aion_trainer::model::Storage;
use aion_trainer::BaseModel;

/// `$AION_CACHE_DIR`, else `~/.cache/aion`: where `scripts/setup` installs models and venvs.
pub fn cache_dir() -> Option<PathBuf> {
    std::env::var_os("AION_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/aion")))
}

pub fn model_path() -> Option<PathBuf> {
    let path = cache_dir()?.join("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var_os("AION_REQUIRE_MODELS").is_none(),
        "AION_REQUIRE_MODELS is set but {} is missing: run scripts/setup",
        path.display()
    );
    eprintln!("SKIPPED: {} is missing (run scripts/setup)", path.display());
    None
}

/// The NF4 base, loaded once per test binary.
pub fn base() -> Option<&'static BaseModel> {
    static BASE: OnceLock<Option<BaseModel>> = OnceLock::new();
    BASE.get_or_init(|| {
        let path = model_path()?;
        let start = std::time::Instant::now();
        let base = BaseModel::load(
            &path,
            Storage::Nf4 { double_quant: true },
            &candle_core::Device::Cpu,
        )
        .unwrap();
        eprintln!("loaded NF4 base in {:.1?}", start.elapsed());
        Some(base)
    })
    .as_ref()
}

/// Token ids of `text` (no special tokens) and them as a `[1, tokens]` model input.
pub fn input(base: &BaseModel, text: &str) -> (Vec<u32>, candle_core::Tensor) {
    let ids = base
        .tokenizer
        .encode(text, false)
        .unwrap()
        .get_ids()
        .to_vec();
    let tensor = candle_core::Tensor::new(ids.as_slice(), &candle_core::Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    (ids, tensor)
}
