//! The index-rebuild rule: count documents never seen before in each tenant's retrieval results
//! and ask for a rebuild every ΔN of them.
//!
//! The set of seen documents (64-bit FNV-1a hashes of their ids) is the state; it is saved to a
//! file, and the offsets of the records it covers are stored only after the save, so a replay
//! after a crash re-counts nothing and repeats a request under the same `rebuild_id`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use aion_events::{decode, IndexRebuild, RebuildReason, RetrievalEvent, Schema as _};
use aion_kafka::{Ack, Sink, Source, SourceConfig};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::{GateConfig, GateOptions, Result};

const STAGE: &str = "gate-index";
/// How often the state is saved (and the acks it covers released).
const SAVE_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct TenantDocs {
    /// Hashes of every document id seen, sorted when saved.
    seen: HashSet<u64>,
    /// First seen since the last request.
    new_since: u64,
    /// Requests made so far.
    requests: u64,
}

/// Per-tenant document counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IndexWatch {
    tenants: BTreeMap<String, TenantDocs>,
}

impl IndexWatch {
    /// Counts the event's result documents; returns a request when the tenant reached ΔN.
    pub fn observe(&mut self, event: &RetrievalEvent, delta: u64) -> Option<IndexRebuild> {
        let t = self.tenants.entry(event.tenant_id.clone()).or_default();
        for r in &event.results {
            if t.seen.insert(aion_events::fnv1a(r.doc_id.as_bytes())) {
                t.new_since += 1;
            }
        }
        if t.new_since < delta {
            return None;
        }
        t.requests += 1;
        let request = IndexRebuild {
            rebuild_id: format!("{}/{}", event.tenant_id, t.requests),
            tenant_id: event.tenant_id.clone(),
            reason: RebuildReason::NewDocuments,
            new_documents: t.new_since,
            known_documents: t.seen.len() as u64,
            at: event.ts,
        };
        t.new_since = 0;
        Some(request)
    }

    pub fn load(path: &Path) -> Result<Self> {
        crate::load_json(path)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        crate::save_json(path, self)
    }
}

/// The rule's state file under a state directory.
pub fn index_path(state_dir: &Path) -> PathBuf {
    state_dir.join("gate").join("index.json")
}

/// Runs the rule until `stop`.
pub async fn run_index(
    config: &GateConfig,
    options: &GateOptions,
    stop: CancellationToken,
) -> Result<()> {
    let rule = &config.index_rebuild;
    let mut source_config = SourceConfig::new(
        STAGE,
        vec![rule.retrieval_topic.clone()],
        format!("{}-index", options.group_id),
    );
    source_config.commit = !options.dry_run;
    let mut source = Source::new(&options.kafka, &source_config)?;
    for topic in [
        rule.output_topic.clone(),
        aion_events::topics::dlq(&rule.retrieval_topic),
    ] {
        aion_kafka::partition_count(&options.kafka, &topic)?;
    }
    let sink = Sink::new(&options.kafka, STAGE)?;
    let path = index_path(&options.state_dir);
    let mut watch = IndexWatch::load(&path)?;
    let mut unsaved: Vec<Ack> = Vec::new();
    let mut tick = tokio::time::interval(SAVE_EVERY);
    loop {
        tokio::select! {
            r = source.recv() => {
                let record = r?;
                let event = match decode::<RetrievalEvent>(&record.payload, &options.decode) {
                    Ok(e) => e,
                    Err(reject) => {
                        sink.dead_letter(record, &reject.path, &reject.message).await?;
                        continue;
                    }
                };
                if let Some(request) = watch.observe(&event, rule.new_documents) {
                    debug_assert!(request.validate().is_ok());
                    if options.dry_run {
                        info!(rebuild_id = %request.rebuild_id, "dry run: would request an index rebuild");
                    } else {
                        let payload = serde_json::to_vec(&request)?;
                        sink.send_confirmed(&rule.output_topic, None, Some(request.tenant_id.as_bytes()), &payload)
                            .await?
                            .wait(&rule.output_topic)
                            .await?;
                        info!(rebuild_id = %request.rebuild_id, new = request.new_documents, "index rebuild requested");
                    }
                }
                unsaved.push(record.ack);
            }
            _ = tick.tick() => {
                if !unsaved.is_empty() {
                    if !options.dry_run {
                        watch.save(&path)?;
                    }
                    // Saved (a dry run's source stores nothing): these records are done.
                    unsaved.drain(..).for_each(Ack::done);
                }
            }
            () = stop.cancelled() => break,
        }
    }
    if !options.dry_run {
        watch.save(&path)?;
    }
    unsaved.into_iter().for_each(Ack::done);
    sink.flush(Duration::from_secs(30))?;
    source.shutdown(Duration::from_secs(30)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(tenant: &str, docs: &[&str]) -> RetrievalEvent {
        serde_json::from_value(serde_json::json!({
            "event_id": "e", "tenant_id": tenant, "ts": "2026-11-02T00:00:00Z", "query": "q",
            "results": docs.iter().enumerate().map(|(i, d)| serde_json::json!(
                {"doc_id": d, "rank": i + 1, "text": "", "score": 1.0})).collect::<Vec<_>>()
        }))
        .unwrap()
    }

    #[test]
    fn a_request_every_delta_new_documents_per_tenant() {
        let mut w = IndexWatch::default();
        assert!(w.observe(&event("a", &["d1", "d2"]), 3).is_none());
        assert!(
            w.observe(&event("a", &["d1", "d2"]), 3).is_none(),
            "seen documents do not count"
        );
        assert!(
            w.observe(&event("b", &["d3", "d4"]), 3).is_none(),
            "tenants count apart"
        );
        let r = w.observe(&event("a", &["d2", "d3", "d4"]), 3).unwrap();
        assert_eq!(
            (r.rebuild_id.as_str(), r.new_documents, r.known_documents),
            ("a/1", 4, 4)
        );
        assert!(
            w.observe(&event("a", &["d5"]), 3).is_none(),
            "counting starts again"
        );
    }

    #[test]
    fn the_state_survives_a_restart() {
        let mut w = IndexWatch::default();
        w.observe(&event("a", &["d1", "d2"]), 3);
        let dir = tempfile::tempdir().unwrap();
        let path = index_path(dir.path());
        w.save(&path).unwrap();
        let mut restarted = IndexWatch::load(&path).unwrap();
        assert_eq!(restarted, w);
        assert_eq!(
            restarted
                .observe(&event("a", &["d3"]), 3)
                .unwrap()
                .rebuild_id,
            "a/1"
        );
    }
}
