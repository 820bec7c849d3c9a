//! `aion-bench ner`: the NER model and the enricher on one thread, next to onnxruntime on the same
//! model inputs and the Python pipeline a user would write, with each runtime's accuracy against
//! the shipped model.
//!
//! Two input sets: the 320 short parity texts, and realistic events (a query and its top-3
//! passages, up to 7,000 characters) from the Zipf-distributed corpus of `aion produce
//! --corpus-passages`. Both sides run the exact same windows (aion's, sent to Python as token ids)
//! and time only the model and its softmax: tokenizing, keyphrases and terms count on neither
//! side. onnxruntime pads each batch to its longest window (aion packs windows unpadded), so
//! with batches of more than one it also runs unbatched, and aion's ratios are taken against
//! whichever of the two is faster on each set. Then whole events: aion's enricher (tokenize,
//! model, entities, keyphrases, terms, JSON; with its segment cache) against the Python pipeline
//! (tokenize, model, entities; no cache).

use std::path::PathBuf;

use aion_events::RetrievalEvent;
use aion_ner::{Entity, Precision, SegmentCache, TokenClassifier, DEFAULT_CACHE_ENTRIES};
use aion_traffic::{Corpus, Generator, Scenario, TrafficConfig};
use anyhow::{bail, Context as _, Result};
use candle_core::Device;
use serde_json::{json, Value};

use crate::{cpu_seconds, reference_python};
use aion_cli::commands::enrich::default_model;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Token-classification model directory (default: the offline model).
    #[arg(long, env = "AION_NER_MODEL", value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Runs of every measurement; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Model inputs per inference batch (both sides).
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Realistic events in the raw-model set and the Python pipeline's run.
    #[arg(long, default_value_t = 20)]
    pub events: usize,
    /// Realistic events through aion's enricher, one cache from cold to warm: timed in phases
    /// of growing length (the first 100 events, then ×3 each), the last one the steady state.
    #[arg(long, default_value_t = 3000)]
    pub traffic_events: usize,
    /// The enricher's precision in the whole-events run (the raw-model rows measure both).
    #[arg(long, default_value_t = Precision::default())]
    pub precision: Precision,
    /// Print one JSON object (`raw_ratio`, `realistic_ratio`, `entity_f1`, every row) instead
    /// of tables.
    #[arg(long)]
    pub json: bool,
    /// Python with onnxruntime and tokenizers for the reference (default: the checks' venv).
    #[arg(long, env = "AION_BENCH_PYTHON")]
    pub python: Option<PathBuf>,
}

const SCRIPT: &str = include_str!("../../../scripts/checks/ner_onnx_bench.py");
const SHIPPED: &str = "onnxruntime shipped (f32 compute)";
/// The shipped model one window at a time (the reference script adds it for batches over one).
const UNPADDED: &str = "onnxruntime shipped, batch 1 (no padding)";
const F32_ROW: &str = "aion f32 (candle, packed)";

/// One thread on both sides: candle reads this before every matmul, onnxruntime is told.
fn one_thread() {
    std::env::set_var("RAYON_NUM_THREADS", "1");
}

pub async fn run(args: Args) -> Result<()> {
    one_thread();
    let dir = args.model.unwrap_or_else(default_model);
    let load = |precision| {
        TokenClassifier::load(&dir, &Device::Cpu, precision)
            .with_context(|| format!("loading {} (scripts/setup installs it)", dir.display()))
    };
    let aion = [
        (Precision::F32, F32_ROW.to_string(), load(Precision::F32)?),
        (
            Precision::Int8,
            format!(
                "aion int8 ({} kernel, {} probabilities × values)",
                aion_simd::int8::Kernel::detect().name(),
                if aion_simd::bf16::available() {
                    "bf16"
                } else {
                    "f32"
                }
            ),
            load(Precision::Int8)?,
        ),
    ];
    let model = &aion[0].2;
    if args.events == 0 || args.traffic_events < 2 {
        bail!("--events must be at least 1 and --traffic-events at least 2");
    }
    let repeats = args.repeats.max(1);
    let batch = args.batch_size.max(1);

    let short = aion_ner::parity_texts();
    let short: Vec<&str> = short.iter().map(String::as_str).collect();
    let events = realistic_events(args.events.max(args.traffic_events));
    let segments: Vec<Vec<&str>> = events.iter().map(aion_ner::segments).collect();
    let realistic: Vec<&str> = segments[..args.events].iter().flatten().copied().collect();
    let sets = [
        ("short texts", model.model_inputs(&short)?),
        ("realistic events", model.model_inputs(&realistic)?),
    ];

    // aion, raw model, in each precision.
    let mut rows = Vec::new();
    let mut ours_labels = Vec::new();
    for (_, runtime, model) in &aion {
        let mut by_set = Vec::new();
        for (name, sequences) in &sets {
            let (probs, cpu) = timed(repeats, || {
                let mut out = Vec::new();
                for chunk in sequences.chunks(batch) {
                    out.extend(model.probabilities(chunk)?);
                }
                Ok(out)
            })?;
            by_set.push(labels(&probs));
            rows.push(Row {
                runtime: runtime.clone(),
                set: name,
                tokens_per_cpu_s: tokens(sequences) as f64 / cpu,
            });
        }
        ours_labels.push(by_set);
    }

    // onnxruntime on the same inputs, and the Python pipeline on whole events.
    let request = json!({
        "model_dir": dir,
        "repeats": repeats,
        "batch_size": batch,
        "sets": sets.iter().map(|(n, s)| (n.to_string(), json!(s))).collect::<serde_json::Map<_, _>>(),
        "probs_for": "short texts",
        "events": segments[..args.events],
    });
    let reference = python_reference(args.python, &request)?;

    let mut accuracy = Vec::new();
    let shipped_labels: Vec<Vec<Vec<usize>>> = sets
        .iter()
        .map(|(name, _)| reference_labels(&reference, SHIPPED, name))
        .collect::<Result<_>>()?;
    let shipped_entities = reference_entities(model, &short, batch, &reference, SHIPPED)?;
    for ((_, runtime, model), labels) in aion.iter().zip(&ours_labels) {
        let entities = model.entities_batch(&short, batch)?;
        accuracy.push((
            runtime.clone(),
            agreement(labels, &shipped_labels),
            entity_f1(&entities, &shipped_entities),
        ));
    }
    for (runtime, by_set) in reference["runtimes"]
        .as_object()
        .context("reference output")?
    {
        for (name, _) in &sets {
            rows.push(Row {
                runtime: runtime.clone(),
                set: name,
                tokens_per_cpu_s: by_set[name]["tokens_per_cpu_s"].as_f64().unwrap_or(0.0),
            });
        }
        if runtime != SHIPPED {
            let theirs: Vec<Vec<Vec<usize>>> = sets
                .iter()
                .map(|(name, _)| reference_labels(&reference, runtime, name))
                .collect::<Result<_>>()?;
            let entities = reference_entities(model, &short, batch, &reference, runtime)?;
            accuracy.push((
                runtime.clone(),
                agreement(&theirs, &shipped_labels),
                entity_f1(&entities, &shipped_entities),
            ));
        }
    }

    // Whole events: aion's enricher with its cache, cold then steady.
    let payloads: Vec<Vec<u8>> = events
        .iter()
        .map(serde_json::to_vec)
        .collect::<Result<_, _>>()?;
    let pairs: Vec<(&RetrievalEvent, &[u8])> = events
        .iter()
        .zip(&payloads)
        .map(|(e, p)| (e, p.as_slice()))
        .collect();
    let enricher = aion
        .iter()
        .find(|(p, _, _)| *p == args.precision)
        .map(|(_, _, m)| m)
        .context("no model of that precision")?;
    let mut cache = SegmentCache::new(DEFAULT_CACHE_ENTRIES);
    let mut traffic = Vec::new();
    for range in phases(args.traffic_events) {
        let (hits, misses) = (cache.hits, cache.misses);
        let started = cpu_seconds();
        for chunk in pairs[range.clone()].chunks(16) {
            aion_ner::enrich(enricher, &mut cache, chunk, batch)?;
        }
        let cpu = (cpu_seconds() - started).max(0.01);
        let hit_rate = (cache.hits - hits) as f64
            / ((cache.hits - hits) + (cache.misses - misses)).max(1) as f64;
        let phase = format!(
            "aion enricher, events {}–{}{}",
            range.start + 1,
            range.end,
            if range.start == 0 {
                " (cold cache)"
            } else {
                ""
            }
        );
        traffic.push((phase, range.len() as f64 / cpu, Some(hit_rate)));
    }
    let steady = traffic.last().map_or(0.0, |t| t.1);
    let python_events = reference["pipeline"]["events_per_cpu_s"]
        .as_f64()
        .unwrap_or(0.0);
    traffic.push(("Python pipeline (no cache)".into(), python_events, None));

    let rate = |runtime: &str, set: &str| {
        rows.iter()
            .find(|r| r.runtime == runtime && r.set == set)
            .map_or(0.0, |r| r.tokens_per_cpu_s)
    };
    // The shipped model at its faster batching on a set: the reference every ratio is taken to.
    let shipped = |set: &str| rate(SHIPPED, set).max(rate(UNPADDED, set)).max(1e-9);
    let reference_runtime =
        match rate(UNPADDED, "realistic events") > rate(SHIPPED, "realistic events") {
            true => UNPADDED,
            false => SHIPPED,
        };
    let raw_ratios: Vec<f64> = aion
        .iter()
        .map(|(_, runtime, _)| rate(runtime, "realistic events") / shipped("realistic events"))
        .collect();
    let raw_ratio = raw_ratios.iter().copied().fold(0.0, f64::max);
    let realistic_ratio = steady / python_events.max(1e-9);
    let entity_f1 = accuracy[0].2;
    let int8_entity_f1 = accuracy[1].2;
    // What the cache holds, next to the distinct segments' text it would hold if keyed by text.
    let distinct: std::collections::HashSet<&str> = events[..args.traffic_events]
        .iter()
        .flat_map(aion_ner::segments)
        .collect();
    let text_bytes: usize = distinct.iter().map(|s| s.len()).sum();

    if args.json {
        let out = json!({
            "raw_ratio": raw_ratio,
            "raw_ratio_f32": raw_ratios[0],
            "raw_ratio_int8": raw_ratios[1],
            "raw_ratio_reference": reference_runtime,
            "realistic_ratio": realistic_ratio,
            "enricher_precision": args.precision.to_string(),
            "entity_f1": entity_f1,
            "int8_entity_f1": int8_entity_f1,
            "token_agreement": accuracy[0].1,
            "threads": 1,
            "batch_size": batch,
            "repeats": repeats,
            "model": rows.iter().map(|r| json!({"runtime": r.runtime, "set": r.set, "tokens_per_cpu_s": r.tokens_per_cpu_s})).collect::<Vec<_>>(),
            "accuracy": accuracy.iter().map(|(r, a, f)| json!({"runtime": r, "token_agreement": a, "entity_f1": f})).collect::<Vec<_>>(),
            "events": traffic.iter().map(|(p, e, h)| json!({"pipeline": p, "events_per_cpu_s": e, "cache_hit_rate": h})).collect::<Vec<_>>(),
            "cache": {"entries": cache.len(), "bytes": cache.bytes(), "segment_text_bytes": text_bytes},
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!();
    println!(
        "model {}, one thread each side, batches of {batch}, median of {repeats} runs",
        dir.display()
    );
    println!(
        "sets: {} short texts ({} tokens); {} realistic events ({} windows, {} tokens)",
        short.len(),
        tokens(&sets[0].1),
        args.events,
        sets[1].1.len(),
        tokens(&sets[1].1)
    );
    println!();
    println!("| runtime | set | tokens per CPU-s | × onnxruntime shipped (its faster batching) |");
    println!("|---|---|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.0} | {:.2}× |",
            r.runtime,
            r.set,
            r.tokens_per_cpu_s,
            r.tokens_per_cpu_s / shipped(r.set)
        );
    }
    println!();
    println!(
        "| runtime | token label agreement with the shipped model | entity F1 (short texts) |"
    );
    println!("|---|---:|---:|");
    for (runtime, agree, f1) in &accuracy {
        println!("| {runtime} | {:.4}% | {f1:.4} |", agree * 100.0);
    }
    println!();
    println!(
        "| whole events (Zipf corpus of 100,000 passages, 3 per query; enricher in {}) | events per CPU-s | segment cache hits | × Python |",
        args.precision
    );
    println!("|---|---:|---:|---:|");
    for (phase, events, hits) in &traffic {
        println!(
            "| {phase} | {events:.1} | {} | {:.2}× |",
            hits.map_or("-".to_string(), |h| format!("{:.0}%", h * 100.0)),
            events / python_events.max(1e-9)
        );
    }
    println!();
    println!(
        "segment cache after the traffic: {} entries holding {} KB; the same segments' text alone is {} KB",
        cache.len(),
        cache.bytes() / 1000,
        text_bytes / 1000
    );
    println!();
    println!(
        "raw_ratio f32 {:.2} (target ≥ 1.5, exact parity), int8 {:.2} (target ≥ 3 with entity F1 ≥ 0.99; F1 {int8_entity_f1:.4}), against {reference_runtime}",
        raw_ratios[0], raw_ratios[1]
    );
    println!("realistic_ratio {realistic_ratio:.2} (target ≥ 10; enricher in {}), entity_f1 {entity_f1:.4}", args.precision);
    Ok(())
}

struct Row<'a> {
    runtime: String,
    set: &'a str,
    tokens_per_cpu_s: f64,
}

/// The retrievals of the realistic traffic: results from the Zipf corpus.
fn realistic_events(n: usize) -> Vec<RetrievalEvent> {
    let corpus = Corpus::new(
        7,
        aion_traffic::REALISTIC_PASSAGES,
        aion_traffic::REALISTIC_EXPONENT,
    );
    Generator::new(TrafficConfig {
        seed: 7,
        tenants: vec!["acme".into()],
        count: 2 * n as u64,
        start: chrono::Utc::now(),
        span: chrono::Duration::hours(1),
        scenario: Scenario::Steady,
        invalid_fraction: 0.0,
        late_fraction: 0.0,
    })
    .with_corpus(corpus)
    .filter(|p| p.topic == aion_events::topics::RETRIEVAL)
    .filter_map(|p| serde_json::from_slice(&p.bytes).ok())
    .collect()
}

/// The enricher's timed phases over `n` events: the first 100 (a sixth of a shorter run) with a
/// cold cache, then phases three times as long as the one before, the last one (the steady state)
/// taking what is left unless that is under half the phase before it.
fn phases(n: usize) -> Vec<std::ops::Range<usize>> {
    let mut bounds = vec![0];
    let mut end = (n / 6).clamp(1, 100);
    while end < n {
        bounds.push(end);
        end *= 3;
    }
    if let [.., before, last] = bounds[..] {
        if 2 * (n - last) < last - before {
            bounds.pop();
        }
    }
    bounds.push(n);
    bounds.windows(2).map(|w| w[0]..w[1]).collect()
}

/// `f`'s result and its median CPU seconds over `repeats` runs.
fn timed<T>(repeats: usize, mut f: impl FnMut() -> Result<T>) -> Result<(T, f64)> {
    let mut times = Vec::new();
    let mut result = None;
    for _ in 0..repeats {
        let started = cpu_seconds();
        result = Some(f()?);
        times.push(cpu_seconds() - started);
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2].max(0.01);
    Ok((result.context("no run")?, median))
}

fn tokens(sequences: &[Vec<u32>]) -> usize {
    sequences.iter().map(Vec::len).sum()
}

fn labels(probs: &[Vec<Vec<f32>>]) -> Vec<Vec<usize>> {
    probs
        .iter()
        .map(|rows| rows.iter().map(|p| aion_ner::argmax(p).0).collect())
        .collect()
}

fn python_reference(python: Option<PathBuf>, request: &Value) -> Result<Value> {
    use std::io::Write;
    let python = reference_python(python);
    let mut child = std::process::Command::new(&python)
        .arg("-c")
        .arg(SCRIPT)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| {
            format!(
                "running {} (scripts/setup --tests installs it)",
                python.display()
            )
        })?;
    let mut stdin = child.stdin.take().context("python stdin")?;
    let body = serde_json::to_vec(request)?;
    let writer = std::thread::spawn(move || stdin.write_all(&body));
    let out = child.wait_with_output()?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writing to python"))??;
    if !out.status.success() {
        bail!("the onnxruntime reference failed ({})", out.status);
    }
    serde_json::from_slice(&out.stdout).context("the onnxruntime reference's output")
}

fn reference_labels(reference: &Value, runtime: &str, set: &str) -> Result<Vec<Vec<usize>>> {
    serde_json::from_value(reference["runtimes"][runtime][set]["labels"].clone())
        .with_context(|| format!("{runtime}: labels of {set}"))
}

/// Entities of the short texts from a reference runtime's probabilities, aggregated by aion's
/// own code (the same windows were sent, in the same order).
fn reference_entities(
    model: &TokenClassifier,
    texts: &[&str],
    batch: usize,
    reference: &Value,
    runtime: &str,
) -> Result<Vec<Vec<Entity>>> {
    let probs: Vec<Vec<Vec<f32>>> = serde_json::from_value(reference["probs"][runtime].clone())
        .with_context(|| format!("{runtime}: probabilities"))?;
    let mut probs = probs.into_iter();
    Ok(model.entities_batch_with(texts, batch, |sequences| {
        Ok(probs.by_ref().take(sequences.len()).collect())
    })?)
}

/// Share of tokens whose best label is the same.
fn agreement(ours: &[Vec<Vec<usize>>], theirs: &[Vec<Vec<usize>>]) -> f64 {
    let (mut same, mut all) = (0usize, 0usize);
    for (a, b) in ours.iter().flatten().zip(theirs.iter().flatten()) {
        for (x, y) in a.iter().zip(b) {
            same += usize::from(x == y);
            all += 1;
        }
    }
    same as f64 / all.max(1) as f64
}

/// F1 of entity spans (label, start, end) against the reference's.
fn entity_f1(ours: &[Vec<Entity>], theirs: &[Vec<Entity>]) -> f64 {
    use std::collections::HashSet;
    let (mut both, mut a, mut b) = (0usize, 0usize, 0usize);
    for (x, y) in ours.iter().zip(theirs) {
        let x: HashSet<_> = x.iter().map(|e| (&e.label, e.start, e.end)).collect();
        let y: HashSet<_> = y.iter().map(|e| (&e.label, e.start, e.end)).collect();
        both += x.intersection(&y).count();
        a += x.len();
        b += y.len();
    }
    2.0 * both as f64 / (a + b).max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::phases;

    #[test]
    fn phases_cover_the_run_in_growing_lengths() {
        assert_eq!(phases(3000), [0..100, 100..300, 300..900, 900..3000]);
        assert_eq!(
            phases(10_000),
            [0..100, 100..300, 300..900, 900..2700, 2700..10_000]
        );
        assert_eq!(phases(12), [0..2, 2..6, 6..12]);
        assert_eq!(phases(2), [0..1, 1..2]);
    }
}
