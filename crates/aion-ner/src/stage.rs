//! The enricher stage: `retrieval.v1` in, `retrieval.enriched.v1` out — the original event (every
//! field kept, unknown ones too) plus `entities`, its top terms from NER and keyphrases, and
//! `mentions`, the word-level entities with their fine types.
//!
//! Records are handled in batches (up to `batch_size`, or whatever arrived within `max_wait`) whose
//! texts run through the model together; each output's delivery releases its input's offset.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aion_events::{decode, DecodeLimits, Mention, RetrievalEvent};
use aion_kafka::{KafkaConfig, Record, Sink, Source, SourceConfig};
use candle_core::Device;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::{keyphrases, merge_entities, top_terms, Error, Result, TokenClassifier};

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
    pub decode: DecodeLimits,
}

/// Live counts.
#[derive(Debug, Default)]
pub struct Stats {
    pub received: AtomicU64,
    pub enriched: AtomicU64,
}

/// Query + the top results by rank, cut at [`SAMPLE_CHARS`] characters.
pub fn sample_text(event: &RetrievalEvent) -> String {
    let mut results: Vec<_> = event.results.iter().collect();
    results.sort_by_key(|r| r.rank);
    let mut text = event.query.clone();
    for r in results.iter().take(SAMPLE_RESULTS) {
        text.push('\n');
        text.push_str(&r.text);
    }
    match text.char_indices().nth(SAMPLE_CHARS) {
        Some((cut, _)) => text[..cut].to_owned(),
        None => text,
    }
}

/// The enriched records of events (each with its original JSON), `entities` added: texts of the
/// whole batch go through the model together.
pub fn enrich(
    model: &TokenClassifier,
    events: &[(&RetrievalEvent, &[u8])],
    batch_size: usize,
) -> Result<Vec<Vec<u8>>> {
    let texts: Vec<String> = events.iter().map(|(e, _)| sample_text(e)).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let entities = model.entities_batch(&refs, batch_size)?;
    events
        .iter()
        .zip(texts.iter().zip(entities))
        .map(|((_, payload), (text, entities))| {
            let merged = merge_entities(text, &entities);
            let terms = top_terms(&merged, &keyphrases(text, EVENT_TERMS), EVENT_TERMS);
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

/// Runs until `stop`.
pub async fn run(options: &EnrichOptions, stop: CancellationToken, stats: &Stats) -> Result<()> {
    let model = TokenClassifier::load(&options.model_dir, &Device::Cpu)?;
    let config = SourceConfig::new(
        STAGE,
        vec![options.input_topic.clone()],
        options.group_id.clone(),
    );
    let mut source = Source::new(&options.kafka, &config).map_err(kafka)?;
    for topic in [
        options.output_topic.clone(),
        aion_events::topics::dlq(&options.input_topic),
    ] {
        aion_kafka::partition_count(&options.kafka, &topic).map_err(kafka)?;
    }
    let sink = Sink::new(&options.kafka, STAGE).map_err(kafka)?;
    info!(model = %options.model_dir.display(), batch = options.batch_size, "enricher started");
    loop {
        let mut batch: Vec<Record> = Vec::with_capacity(options.batch_size);
        let deadline = tokio::time::Instant::now() + options.max_wait;
        while batch.len() < options.batch_size.max(1) {
            tokio::select! {
                r = source.recv() => batch.push(r.map_err(kafka)?),
                () = tokio::time::sleep_until(deadline), if !batch.is_empty() => break,
                () = stop.cancelled() => break,
            }
        }
        if batch.is_empty() && stop.is_cancelled() {
            break;
        }
        let started = Instant::now();
        let n = batch.len() as u64;
        stats.received.fetch_add(n, Ordering::Relaxed);
        let mut valid = Vec::with_capacity(batch.len());
        for record in batch {
            match decode::<RetrievalEvent>(&record.payload, &options.decode) {
                Ok(event) => valid.push((event, record)),
                Err(reject) => sink
                    .dead_letter(record, &reject.path, &reject.message)
                    .await
                    .map_err(kafka)?,
            }
        }
        let inputs: Vec<(&RetrievalEvent, &[u8])> = valid
            .iter()
            .map(|(e, r)| (e, r.payload.as_slice()))
            .collect();
        // The forward pass takes a core for a while: hand this worker's other tasks (every other
        // stage of `aion up` shares the runtime) to the remaining workers meanwhile.
        let enriched = tokio::task::block_in_place(|| enrich(&model, &inputs, options.batch_size))?;
        drop(inputs);
        for ((event, record), enriched) in valid.into_iter().zip(enriched) {
            sink.send(
                &options.output_topic,
                Some(event.tenant_id.as_bytes()),
                &enriched,
                None,
                Some(record.ack),
            )
            .await
            .map_err(kafka)?;
            stats.enriched.fetch_add(1, Ordering::Relaxed);
        }
        metrics::histogram!("aion_ner_batch_seconds").record(started.elapsed().as_secs_f64());
        if stop.is_cancelled() {
            break;
        }
    }
    sink.flush(Duration::from_secs(30)).map_err(kafka)?;
    source
        .shutdown(Duration::from_secs(30))
        .await
        .map_err(kafka)?;
    Ok(())
}

fn kafka(e: aion_kafka::Error) -> Error {
    Error::Kafka(e)
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
