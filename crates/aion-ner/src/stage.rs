//! The enricher stage: `retrieval.v1` in, `retrieval.enriched.v1` out — the original event (every
//! field kept, unknown ones too) plus `entities`, its top terms from NER and keyphrases, and
//! `mentions`, the word-level entities with their fine types.
//!
//! Records are handled in batches (up to `batch_size`, or whatever arrived within `max_wait`). An
//! event's sample is its query and its best results, each a segment of its own through the model;
//! segments already seen (a popular passage retrieved again) come from a [`SegmentCache`], and the
//! rest of the batch runs through the model together, each distinct text once. Each output's
//! delivery releases its input's offset.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aion_events::{DecodeLimits, Mention, RetrievalEvent};
use aion_kafka::{KafkaConfig, Record};
use aion_runtime::{Io, Plan, Stage};
use candle_core::Device;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::{
    keyphrases, merge_entities, top_terms, Entity, Error, Precision, Result, SegmentCache,
    TokenClassifier,
};

const STAGE: &str = "enrich";
/// The text an event is judged by: its query and its best results, this long at most.
pub const SAMPLE_CHARS: usize = 7_000;
/// Results of an event that go into its sample.
pub const SAMPLE_RESULTS: usize = 3;
/// Terms kept per event.
pub const EVENT_TERMS: usize = 20;

/// Where and how the enricher runs.
#[derive(Debug, Clone)]
pub struct EnrichOptions {
    pub kafka: KafkaConfig,
    pub group_id: String,
    pub input_topic: String,
    pub output_topic: String,
    /// A Hugging Face token-classification directory.
    pub model_dir: PathBuf,
    pub batch_size: usize,
    pub max_wait: Duration,
    /// Segments whose entities are kept ([`SegmentCache`]); 0 turns the cache off.
    pub cache_entries: usize,
    pub decode: DecodeLimits,
    /// The dense layers' arithmetic.
    pub precision: Precision,
}

/// Default of [`EnrichOptions::cache_entries`]: about 300 bytes an entry for a passage with a few
/// entities, whatever its length (passages are held as 128-bit keys), so about 30 MB when full.
pub const DEFAULT_CACHE_ENTRIES: usize = 100_000;

/// Live counts.
#[derive(Debug, Default)]
pub struct Stats {
    /// Received, enriched (sent) and dead-lettered events.
    pub counts: aion_runtime::Counts,
    /// Segments answered from the cache or a repeat within the batch.
    pub segments_cached: AtomicU64,
    /// Segments the model ran on.
    pub segments_computed: AtomicU64,
}

/// The segments an event is judged by: its query, then its best results by rank, cut so that
/// joined by newlines (the sample) they hold at most [`SAMPLE_CHARS`] characters.
pub fn segments(event: &RetrievalEvent) -> Vec<&str> {
    let mut results: Vec<_> = event.results.iter().collect();
    results.sort_by_key(|r| r.rank);
    let texts = std::iter::once(event.query.as_str())
        .chain(results.iter().take(SAMPLE_RESULTS).map(|r| r.text.as_str()));
    let mut out = Vec::new();
    let mut budget = SAMPLE_CHARS;
    for text in texts {
        if !out.is_empty() {
            if budget == 0 {
                break;
            }
            budget -= 1; // the newline joining it to the sample
        }
        let cut = text
            .char_indices()
            .nth(budget)
            .map_or(text.len(), |(i, _)| i);
        out.push(&text[..cut]);
        if cut < text.len() {
            break;
        }
        budget -= text.chars().count();
    }
    out
}

/// Query + the top results by rank, cut at [`SAMPLE_CHARS`] characters: the segments joined.
pub fn sample_text(event: &RetrievalEvent) -> String {
    segments(event).join("\n")
}

/// The enriched records of events (each with its original JSON), `entities` added. Every distinct
/// segment of the batch not in `cache` goes through the model once, all of them together.
pub fn enrich(
    model: &TokenClassifier,
    cache: &mut SegmentCache,
    events: &[(&RetrievalEvent, &[u8])],
    batch_size: usize,
) -> Result<Vec<Vec<u8>>> {
    let segmented: Vec<Vec<&str>> = events.iter().map(|(e, _)| segments(e)).collect();
    let mut known: HashMap<&str, Arc<Vec<Entity>>> = HashMap::new();
    let mut todo: Vec<&str> = Vec::new();
    for &segment in segmented.iter().flatten() {
        if known.contains_key(segment) || todo.contains(&segment) {
            cache.hits += 1;
        } else if let Some(found) = cache.get(segment) {
            cache.hits += 1;
            known.insert(segment, found);
        } else {
            cache.misses += 1;
            todo.push(segment);
        }
    }
    for (segment, entities) in todo.iter().zip(model.entities_batch(&todo, batch_size)?) {
        let entities = Arc::new(entities);
        cache.insert(segment, entities.clone());
        known.insert(segment, entities);
    }
    events
        .iter()
        .zip(&segmented)
        .map(|((_, payload), segments)| {
            let text = segments.join("\n");
            // Each segment's entities, moved to where the segment starts in the sample.
            let mut entities = Vec::new();
            let mut at = 0;
            for segment in segments {
                for e in known.get(segment).map(|e| e.as_slice()).unwrap_or_default() {
                    entities.push(Entity {
                        start: e.start + at,
                        end: e.end + at,
                        ..e.clone()
                    });
                }
                at += segment.len() + 1;
            }
            let merged = merge_entities(&text, &entities);
            let terms = top_terms(&merged, &keyphrases(&text, EVENT_TERMS), EVENT_TERMS);
            let mentions: Vec<Mention> = entities
                .into_iter()
                .map(|e| Mention {
                    text: e.text,
                    kind: e.label,
                    score: e.score,
                })
                .collect();
            let mut value: serde_json::Value = serde_json::from_slice(payload)?;
            if let Some(object) = value.as_object_mut() {
                object.insert("entities".into(), serde_json::to_value(&terms)?);
                object.insert("mentions".into(), serde_json::to_value(&mentions)?);
            }
            Ok(serde_json::to_vec(&value)?)
        })
        .collect()
}

/// The enricher as a stage of the runtime.
struct EnrichStage<'a> {
    options: &'a EnrichOptions,
    stats: &'a Stats,
    model: TokenClassifier,
    cache: SegmentCache,
}

impl Stage for EnrichStage<'_> {
    type Error = Error;
    const NAME: &'static str = STAGE;

    async fn handle(&mut self, io: &mut Io<'_>, records: Vec<Record>) -> Result<()> {
        let started = Instant::now();
        let mut valid = Vec::with_capacity(records.len());
        for record in records {
            if let Some(decoded) = io.decode::<RetrievalEvent>(record).await? {
                valid.push(decoded);
            }
        }
        let inputs: Vec<(&RetrievalEvent, &[u8])> = valid
            .iter()
            .map(|(r, e)| (e, r.payload.as_slice()))
            .collect();
        // The forward pass takes a core for a while: hand this worker's other tasks (every other
        // stage of `aion up` shares the runtime) to the remaining workers meanwhile.
        let cache = &mut self.cache;
        let (hits, misses, evictions) = (cache.hits, cache.misses, cache.evictions);
        let enriched = tokio::task::block_in_place(|| {
            enrich(&self.model, cache, &inputs, self.options.batch_size)
        })?;
        let stats = self.stats;
        stats
            .segments_cached
            .fetch_add(cache.hits - hits, Ordering::Relaxed);
        stats
            .segments_computed
            .fetch_add(cache.misses - misses, Ordering::Relaxed);
        metrics::counter!("aion_ner_segments_total", "source" => "cache")
            .increment(cache.hits - hits);
        metrics::counter!("aion_ner_segments_total", "source" => "model")
            .increment(cache.misses - misses);
        metrics::counter!("aion_ner_cache_evictions_total").increment(cache.evictions - evictions);
        metrics::gauge!("aion_ner_cache_entries").set(cache.len() as f64);
        metrics::gauge!("aion_ner_cache_bytes").set(cache.bytes() as f64);
        drop(inputs);
        for ((record, event), enriched) in valid.into_iter().zip(enriched) {
            io.send(
                &self.options.output_topic,
                Some(event.tenant_id.as_bytes()),
                &enriched,
                None,
                Some(record.ack),
            )
            .await?;
        }
        metrics::histogram!("aion_ner_batch_seconds").record(started.elapsed().as_secs_f64());
        Ok(())
    }
}

/// Runs until `stop`.
pub async fn run(options: &EnrichOptions, stop: CancellationToken, stats: &Stats) -> Result<()> {
    let model = TokenClassifier::load(&options.model_dir, &Device::Cpu, options.precision)?;
    let mut plan = Plan::new(
        vec![options.input_topic.clone()],
        vec![options.output_topic.clone()],
        options.group_id.clone(),
    );
    plan.batch = options.batch_size;
    plan.max_wait = options.max_wait;
    plan.decode = options.decode;
    info!(model = %options.model_dir.display(), precision = %options.precision, batch = options.batch_size, cache = options.cache_entries, "enricher model loaded");
    let stage = EnrichStage {
        options,
        stats,
        model,
        cache: SegmentCache::new(options.cache_entries),
    };
    aion_runtime::run(&options.kafka, &plan, stage, stop, &stats.counts).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_is_the_query_and_the_three_best_results_capped() {
        let event: RetrievalEvent = serde_json::from_value(serde_json::json!({
            "event_id": "e", "tenant_id": "t", "ts": "2026-11-02T00:00:00Z", "query": "q",
            "results": [
                {"doc_id": "d4", "rank": 4, "text": "four", "score": 0.1},
                {"doc_id": "d1", "rank": 1, "text": "one", "score": 0.9},
                {"doc_id": "d3", "rank": 3, "text": "three", "score": 0.3},
                {"doc_id": "d2", "rank": 2, "text": "ção".repeat(5000), "score": 0.5}
            ]
        }))
        .unwrap();
        let s = sample_text(&event);
        assert!(s.starts_with("q\none\nção"));
        assert!(!s.contains("four"));
        assert_eq!(s.chars().count(), SAMPLE_CHARS);
    }
}
