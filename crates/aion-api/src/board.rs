//! What the API knows about triggers and training jobs: `train.trigger.v1` and `train.status.v1`
//! read from the beginning on a thread of their own, the newest status kept per job.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aion_events::{topics, JobState, TrainStatus, TrainTrigger};
use aion_kafka::{KafkaConfig, Reader};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Triggers and job statuses, per tenant.
#[derive(Debug, Default)]
pub struct Board {
    /// Triggers in arrival order, by tenant.
    triggers: BTreeMap<String, Vec<TrainTrigger>>,
    /// The newest status of each job.
    jobs: BTreeMap<String, TrainStatus>,
}

impl Board {
    /// Records a trigger (once per id).
    pub fn trigger(&mut self, t: TrainTrigger) {
        let list = self.triggers.entry(t.tenant_id.clone()).or_default();
        if !list.iter().any(|x| x.trigger_id == t.trigger_id) {
            list.push(t);
        }
    }

    /// Records a status; a final one is never replaced by a late progress report.
    pub fn status(&mut self, s: TrainStatus) {
        let labels = [("tenant", s.tenant_id.clone())];
        if let Some(step) = s.step {
            metrics::gauge!("aion_train_step", &labels).set(step as f64);
        }
        if let Some(total) = s.total_steps {
            metrics::gauge!("aion_train_total_steps", &labels).set(total as f64);
        }
        if let Some(loss) = s.loss {
            metrics::gauge!("aion_train_loss", &labels).set(loss);
        }
        match self.jobs.get(&s.job_id) {
            Some(old) if old.state.is_final() => {}
            _ => {
                self.jobs.insert(s.job_id.clone(), s);
            }
        }
    }

    pub fn triggers(&self, tenant: &str) -> &[TrainTrigger] {
        self.triggers.get(tenant).map_or(&[], Vec::as_slice)
    }

    /// The tenant's job that is not finished: its newest status, or `queued` for a trigger the
    /// trainer has not reported on yet.
    pub fn running(&self, tenant: &str) -> Option<TrainStatus> {
        self.triggers(tenant)
            .iter()
            .rev()
            .find_map(|t| match self.jobs.get(&t.trigger_id) {
                Some(s) if s.state.is_final() => None,
                Some(s) => Some(s.clone()),
                None => Some(TrainStatus {
                    at: t.at,
                    ..TrainStatus::new(&t.trigger_id, tenant, JobState::Queued)
                }),
            })
    }

    /// Finished jobs of the tenant, oldest first.
    pub fn history(&self, tenant: &str) -> Vec<TrainStatus> {
        let mut done: Vec<TrainStatus> = self
            .jobs
            .values()
            .filter(|s| s.tenant_id == tenant && s.state.is_final())
            .cloned()
            .collect();
        done.sort_by_key(|s| s.at);
        done
    }

    /// The newest status of the tenant's newest job.
    pub fn last(&self, tenant: &str) -> Option<TrainStatus> {
        self.running(tenant).or_else(|| self.history(tenant).pop())
    }
}

/// Fills `board` from the topics until `stop`.
pub fn follow(
    kafka: &KafkaConfig,
    board: Arc<RwLock<Board>>,
    stop: CancellationToken,
) -> aion_kafka::Result<()> {
    let reader = Reader::new(kafka, &[topics::TRAIN_TRIGGER, topics::TRAIN_STATUS], true)?;
    std::thread::spawn(move || {
        while !stop.is_cancelled() {
            let record = match reader.next(Duration::from_millis(200)) {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => {
                    warn!("reading triggers and statuses: {e}");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            let Ok(mut board) = board.write() else { return };
            if record.topic == topics::TRAIN_TRIGGER {
                if let Ok(t) = serde_json::from_slice(&record.payload) {
                    board.trigger(t);
                }
            } else if let Ok(s) = serde_json::from_slice(&record.payload) {
                board.status(s);
            }
        }
    });
    Ok(())
}
