//! The index-rebuild rule: count documents never seen before in each tenant's retrieval results
//! and ask for a rebuild every ΔN of them.
//!
//! The set of seen documents (64-bit FNV-1a hashes of their ids) is the state; it is saved to a
//! file, and the offsets of the records it covers are stored only after the save, so a replay
//! after a crash re-counts nothing and repeats a request under the same `rebuild_id`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aion_events::layout::StateDir;
use aion_events::{IndexRebuild, RebuildReason, RetrievalEvent, Schema as _};
use aion_kafka::{Ack, Record};
use aion_runtime::{Io, Plan, Stage};
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

/// The rule as a stage of the runtime: the state is saved every [`SAVE_EVERY`], and only then are
/// the records it covers done.
struct IndexStage<'a> {
    config: &'a GateConfig,
    options: &'a GateOptions,
    path: PathBuf,
    watch: IndexWatch,
    unsaved: Vec<Ack>,
    next_save: Instant,
}

impl Stage for IndexStage<'_> {
    type Error = crate::Error;
    const NAME: &'static str = STAGE;

    async fn handle(&mut self, io: &mut Io<'_>, records: Vec<Record>) -> Result<()> {
        let rule = &self.config.index_rebuild;
        for record in records {
            let Some((record, event)) = io.decode::<RetrievalEvent>(record).await? else {
                continue;
            };
            if let Some(request) = self.watch.observe(&event, rule.new_documents) {
                debug_assert!(request.validate().is_ok());
                if self.options.dry_run {
                    info!(rebuild_id = %request.rebuild_id, "dry run: would request an index rebuild");
                } else {
                    let payload = serde_json::to_vec(&request)?;
                    io.send_confirmed(
                        &rule.output_topic,
                        None,
                        Some(request.tenant_id.as_bytes()),
                        &payload,
                    )
                    .await?
                    .wait(&rule.output_topic)
                    .await?;
                    info!(rebuild_id = %request.rebuild_id, new = request.new_documents, "index rebuild requested");
                }
            }
            self.unsaved.push(record.ack);
        }
        Ok(())
    }

    async fn advance(&mut self, _io: &mut Io<'_>) -> Result<()> {
        if Instant::now() >= self.next_save {
            self.save()?;
            self.next_save = Instant::now() + SAVE_EVERY;
        }
        Ok(())
    }

    async fn finish(&mut self, _io: &mut Io<'_>) -> Result<()> {
        self.save()
    }

    fn tick(&self) -> Option<Duration> {
        Some(SAVE_EVERY)
    }
}

impl IndexStage<'_> {
    fn save(&mut self) -> Result<()> {
        if self.unsaved.is_empty() {
            return Ok(());
        }
        if !self.options.dry_run {
            self.watch.save(&self.path)?;
        }
        // Saved (a dry run's source stores nothing): these records are done.
        self.unsaved.drain(..).for_each(Ack::done);
        Ok(())
    }
}

/// Runs the rule until `stop`.
pub async fn run_index(
    config: &GateConfig,
    options: &GateOptions,
    stop: CancellationToken,
) -> Result<()> {
    let rule = &config.index_rebuild;
    let mut plan = Plan::new(
        vec![rule.retrieval_topic.clone()],
        vec![rule.output_topic.clone()],
        format!("{}-index", options.group_id),
    );
    plan.commit = !options.dry_run;
    plan.decode = options.decode;
    let path = StateDir::new(&options.state_dir).index_state();
    let stage = IndexStage {
        config,
        options,
        watch: IndexWatch::load(&path)?,
        path,
        unsaved: Vec::new(),
        next_save: Instant::now() + SAVE_EVERY,
    };
    aion_runtime::run(
        &options.kafka,
        &plan,
        stage,
        stop,
        &aion_runtime::Counts::default(),
    )
    .await
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
        let path = StateDir::new(dir.path()).index_state();
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
