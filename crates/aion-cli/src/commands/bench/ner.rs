//! `aion bench ner`: enrichment (NER + keyphrases + top terms) events and tokens per CPU-second
//! on the CPU, per inference batch size, next to the Python onnxruntime pipeline on the same texts.

use std::path::PathBuf;
use std::time::Instant;

use aion_ner::{keyphrases, top_terms, TokenClassifier, EVENT_TERMS};
use anyhow::{bail, Context as _, Result};
use candle_core::Device;

use super::{cpu_seconds, reference_python};
use crate::commands::enrich::default_model;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Token-classification model directory (default: the offline model).
    #[arg(long, env = "AION_NER_MODEL", value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Times the 320-text set is enriched per batch size.
    #[arg(long, default_value_t = 2)]
    pub passes: usize,
    /// Inference batch sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8,16,32")]
    pub batch_sizes: Vec<usize>,
    /// Python with onnxruntime and tokenizers for the reference (default: the checks' venv).
    #[arg(long, env = "AION_BENCH_PYTHON")]
    pub python: Option<PathBuf>,
}

pub async fn run(args: Args) -> Result<()> {
    let dir = args.model.unwrap_or_else(default_model);
    let model = TokenClassifier::load(&dir, &Device::Cpu)
        .with_context(|| format!("loading {} (scripts/setup installs it)", dir.display()))?;
    let set = aion_ner::parity_texts();
    let texts: Vec<&String> = std::iter::repeat_n(&set, args.passes.max(1))
        .flatten()
        .collect();
    let refs: Vec<&str> = texts.iter().map(|t| t.as_str()).collect();
    let tokens: usize = refs
        .iter()
        .map(|t| model.encode(t).map(|ids| ids.len() - 2))
        .sum::<Result<_, _>>()?;

    let mut ours = Vec::new();
    for &batch in &args.batch_sizes {
        let (cpu, wall) = (cpu_seconds(), Instant::now());
        for chunk in refs.chunks(batch.max(1)) {
            for (text, entities) in chunk.iter().zip(model.entities_batch(chunk, batch)?) {
                top_terms(&entities, &keyphrases(text, EVENT_TERMS), EVENT_TERMS);
            }
        }
        let cpu = (cpu_seconds() - cpu).max(0.01);
        ours.push((
            batch,
            texts.len() as f64 / cpu,
            tokens as f64 / cpu,
            wall.elapsed(),
        ));
    }

    let python = reference_python(args.python);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts/checks/ner_onnx_bench.py");
    let texts_file =
        std::env::temp_dir().join(format!("aion-bench-ner-{}.jsonl", std::process::id()));
    let lines: Vec<String> = set
        .iter()
        .map(serde_json::to_string)
        .collect::<Result<_, _>>()?;
    std::fs::write(&texts_file, lines.join("\n"))?;
    let out = std::process::Command::new(&python)
        .arg(&script)
        .arg(&dir)
        .arg(&texts_file)
        .arg(args.passes.max(1).to_string())
        .args(args.batch_sizes.iter().map(usize::to_string))
        .output()
        .with_context(|| format!("running {} (scripts/setup installs it)", python.display()))?;
    std::fs::remove_file(&texts_file).ok();
    if !out.status.success() {
        bail!(
            "onnxruntime reference failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let reference: Vec<(f64, f64)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<f64> = l
                .split_whitespace()
                .filter_map(|f| f.parse().ok())
                .collect();
            (
                f.get(1).copied().unwrap_or(0.0),
                f.get(2).copied().unwrap_or(0.0),
            )
        })
        .collect();

    println!();
    println!(
        "{} texts ({tokens} tokens), model {}, CPU; rates per CPU-second (all threads' time)",
        texts.len(),
        dir.display()
    );
    println!("| batch | aion events/s | aion tokens/s | aion wall | onnxruntime events/s | onnxruntime tokens/s | aion / onnxruntime | target |");
    println!("|------:|--------------:|--------------:|----------:|---------------------:|---------------------:|-------------------:|-------:|");
    for ((batch, events, toks, wall), (r_events, r_tokens)) in ours.iter().zip(&reference) {
        println!(
            "| {batch:>5} | {events:>13.1} | {toks:>13.0} | {:>8.2}s | {r_events:>20.1} | {r_tokens:>20.0} | {:>17.2}x | >= 3x |",
            wall.as_secs_f64(),
            events / r_events.max(1e-9)
        );
    }
    Ok(())
}
