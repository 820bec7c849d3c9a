//! `aion enrich run`: NER + keyphrase enrichment of retrieval events.

use std::path::PathBuf;
use std::time::Duration;

use aion_ner::{EnrichOptions, Stats};
use anyhow::Result;
use tokio_util::sync::CancellationToken;

use crate::Context;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Token-classification model directory (default: the offline model `scripts/setup`
    /// converts, `$AION_CACHE_DIR/models/rampart-1.4.0`).
    #[arg(long, env = "AION_NER_MODEL", value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Events per inference batch.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Longest wait for a batch to fill, in milliseconds.
    #[arg(long, default_value_t = 50)]
    pub max_wait_ms: u64,
    /// Segments (queries, passages) whose entities are kept, so a passage retrieved again skips
    /// the model; 0 turns the cache off. Results are the same either way. An entry holds a
    /// 128-bit key and the entities, not the text: about 300 bytes.
    #[arg(long, env = "AION_NER_CACHE_ENTRIES", default_value_t = aion_ner::DEFAULT_CACHE_ENTRIES)]
    pub cache_entries: usize,
    /// The arithmetic of the model's dense layers. `f32` gives the shipped model's results.
    /// `int8` quantises activations per block of 32 against the weights' own 4-bit grid (the
    /// numerics of onnxruntime's `accuracy_level = 4`): on the offline model, about 1.7× f32's
    /// tokens per CPU-second at entity F1 0.992 against the shipped model. Default: int8 where the
    /// CPU has AVX2 or VNNI, else f32.
    #[arg(long, env = "AION_NER_PRECISION", default_value_t = aion_ner::Precision::default())]
    pub precision: aion_ner::Precision,
}

/// The offline model's directory.
pub fn default_model() -> PathBuf {
    aion_broker::cache_dir().join("models/rampart-1.4.0")
}

pub async fn run(args: RunArgs, ctx: &Context, stop: CancellationToken) -> Result<()> {
    let model_dir = args.model.unwrap_or_else(default_model);
    if !model_dir.join("model.safetensors").is_file() {
        anyhow::bail!(
            "no model at {} (scripts/setup converts the offline one; --model DIR for another)",
            model_dir.display()
        );
    }
    let options = EnrichOptions {
        kafka: ctx.kafka.clone(),
        group_id: ctx.group("enrich"),
        input_topic: aion_events::topics::RETRIEVAL.to_owned(),
        output_topic: aion_events::topics::RETRIEVAL_ENRICHED.to_owned(),
        model_dir,
        batch_size: args.batch_size.max(1),
        max_wait: Duration::from_millis(args.max_wait_ms),
        cache_entries: args.cache_entries,
        decode: ctx.decode_limits(),
        precision: args.precision,
    };
    Ok(aion_ner::run(&options, stop, &Stats::default()).await?)
}
