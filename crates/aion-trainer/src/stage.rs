//! The trainer stage: `train.trigger.v1` in, QLoRA jobs run one at a time, `train.status.v1` out.
//!
//! One job per trigger: its directory `<adapters>/<tenant>/<job>/` holds the checkpoints, the
//! adapter, the loss curve and `status.json`, the final status. A trigger whose job already has a
//! final status is acknowledged without running again (redelivery after a crash or rebalance);
//! one without resumes from the job's last checkpoint. While a job runs the trigger partitions are
//! paused and the consumer keeps polling (never evicted from its group mid-job), and the job
//! directory is locked (a second trainer waits instead of running it twice). The final status is
//! published, then written, then the adapter promoted (held-out loss improved: recorded in
//! `<adapters>/<tenant>/current.json`); only then is the trigger's offset stored.

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aion_events::{
    decode, topics, DecodeLimits, JobState, TrainControl, TrainStatus, TrainTrigger,
};
use aion_kafka::{KafkaConfig, Reader, Record};
use aion_runtime::{Holding, Io, Output, Plan, Stage};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::dataset::{load_examples, DataFilter};
use crate::{train, BaseModel, Error, Progress, Result, Storage, TrainConfig};

const STAGE: &str = "trainer";
/// Name of a job's final status inside its directory, and of a tenant's promoted adapter record.
pub const STATUS_FILE: &str = "status.json";
pub const CURRENT_FILE: &str = "current.json";
/// How long a job without named shards waits for its tenant's first rows.
const SHARD_WAIT: Duration = Duration::from_secs(120);

/// Where and how the trainer runs.
#[derive(Debug, Clone)]
pub struct TrainerOptions {
    pub kafka: KafkaConfig,
    pub group_id: String,
    /// Root of the shard table the triggers' shard paths are relative to.
    pub shards_root: PathBuf,
    /// Root of the per-tenant adapter directories.
    pub adapters_root: PathBuf,
    /// A GGUF file or a Hugging Face directory.
    pub base_model: PathBuf,
    /// Where jobs train: the CPU, or a CUDA GPU (a build with the `cuda` feature).
    pub device: candle_core::Device,
    /// Defaults; a trigger's recipe sets the LoRA shape, learning rate, epochs and batch.
    pub config: TrainConfig,
    pub filter: DataFilter,
    pub decode: DecodeLimits,
    /// Draw a progress line on standard error (interactive runs).
    pub progress_bar: bool,
}

/// Live counts and the running job's progress.
#[derive(Debug, Default)]
pub struct Stats {
    pub counts: aion_runtime::Counts,
    pub jobs: AtomicU64,
    pub completed: AtomicU64,
    pub promoted: AtomicU64,
    pub failed: AtomicU64,
    pub cancelled: AtomicU64,
    pub step: AtomicU64,
    pub total_steps: AtomicU64,
}

/// The directory of a job: the trigger id made a safe file name, plus a hash of the exact id
/// (two ids that differ only in replaced characters stay apart).
pub fn job_dir(adapters_root: &Path, trigger: &TrainTrigger) -> PathBuf {
    let id = &trigger.trigger_id;
    let local = id
        .strip_prefix(&format!("{}/", trigger.tenant_id))
        .unwrap_or(id);
    let safe: String = local
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let hash = aion_events::fnv1a(id.as_bytes());
    adapters_root
        .join(&trigger.tenant_id)
        .join(format!("{safe}-{:08x}", hash as u32))
}

/// The final status recorded in a job directory, if the job finished.
pub fn final_status(dir: &Path) -> Option<TrainStatus> {
    let text = std::fs::read(dir.join(STATUS_FILE)).ok()?;
    serde_json::from_slice::<TrainStatus>(&text)
        .ok()
        .filter(|s| s.state.is_final())
}

fn write_json(path: &Path, status: &TrainStatus) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(status).map_err(|e| Error::Invalid(e.to_string()))?;
    Ok(aion_events::durable::replace_bytes(path, &bytes)?)
}

/// The configuration a trigger's job runs with: the defaults, shaped by its recipe.
pub fn job_config(defaults: &TrainConfig, trigger: &TrainTrigger) -> TrainConfig {
    let r = &trigger.recipe;
    let mut config = defaults.clone();
    config.lora.r = r.lora_r as usize;
    config.lora.alpha = r.lora_alpha;
    config.lora.dropout = r.lora_dropout as f32;
    config.lr = r.learning_rate;
    config.epochs = r.epochs as usize;
    config.batch_size = r.batch_size as usize;
    config.grad_accum = r.grad_accum as usize;
    config
}

/// Job ids cancelled through `train.control.v1`, read from the beginning (a cancel sent while
/// no trainer ran still applies) on a thread of its own.
fn watch_cancels(
    kafka: &KafkaConfig,
    stop: CancellationToken,
) -> Result<Arc<Mutex<HashSet<String>>>> {
    let reader = Reader::new(kafka, &[topics::TRAIN_CONTROL], true)?;
    let cancelled = Arc::new(Mutex::new(HashSet::new()));
    let set = cancelled.clone();
    std::thread::spawn(move || {
        while !stop.is_cancelled() {
            match reader.next(Duration::from_millis(200)) {
                Ok(Some(record)) => match serde_json::from_slice::<TrainControl>(&record.payload) {
                    Ok(control) => {
                        info!(job = %control.job_id, "cancel requested");
                        if let Ok(mut set) = set.lock() {
                            set.insert(control.job_id);
                        }
                    }
                    Err(e) => warn!(offset = record.offset, "ignoring a bad control record: {e}"),
                },
                Ok(None) => {}
                Err(e) => warn!("reading {}: {e}", topics::TRAIN_CONTROL),
            }
        }
    });
    Ok(cancelled)
}

async fn publish(out: Output<'_>, status: &TrainStatus, confirmed: bool) -> Result<()> {
    if status.state.is_final() {
        metrics::counter!("aion_train_jobs_total", "state" => status.state.name()).increment(1);
    }
    let payload = serde_json::to_vec(status).map_err(|e| Error::Invalid(e.to_string()))?;
    let key = Some(status.tenant_id.as_bytes());
    if confirmed {
        out.send_confirmed(topics::TRAIN_STATUS, None, key, &payload)
            .await?
            .wait(topics::TRAIN_STATUS)
            .await?;
    } else {
        out.send(topics::TRAIN_STATUS, key, &payload, None, None)
            .await?;
    }
    Ok(())
}

/// The trainer as a stage of the runtime: one job at a time.
struct TrainerStage<'a> {
    options: &'a TrainerOptions,
    stats: &'a Stats,
    stop: CancellationToken,
    cancelled: Arc<Mutex<HashSet<String>>>,
    base: Option<Arc<BaseModel>>,
}

impl Stage for TrainerStage<'_> {
    type Error = Error;
    const NAME: &'static str = STAGE;

    async fn handle(&mut self, io: &mut Io<'_>, records: Vec<Record>) -> Result<()> {
        let (options, stats) = (self.options, self.stats);
        for record in records {
            let trigger = match decode::<TrainTrigger>(&record.payload, io.limits()) {
                Ok(t) => t,
                Err(reject) => {
                    warn!(offset = record.offset, reason = %reject.message, "trigger refused");
                    // Whoever watches the job (the panel) learns it failed, not just the DLQ.
                    if let Some(status) = refused_status(&record.payload, &reject) {
                        publish(io.output(), &status, true).await?;
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                    }
                    io.dead_letter(record, &reject).await?;
                    continue;
                }
            };
            // A job runs for minutes to hours: fetch nothing more meanwhile, but keep polling so
            // the group never evicts this member (and hands its trigger to another) mid-job.
            let job = take_job(
                options,
                &trigger,
                &mut self.base,
                &self.cancelled,
                &self.stop,
                io.output(),
                stats,
            );
            if io.keep_polling(job).await?? {
                record.ack.done();
            } else {
                // Stopping mid-job: the trigger stays pending and the next run resumes the job.
                break;
            }
        }
        Ok(())
    }
}

/// Runs until `stop`. A job interrupted by `stop` records nothing final: its trigger is
/// redelivered and the job resumes from its last checkpoint.
pub async fn run(options: &TrainerOptions, stop: CancellationToken, stats: &Stats) -> Result<()> {
    if !options.base_model.exists() {
        return Err(Error::Invalid(format!(
            "no base model at {} (scripts/setup installs SmolLM2-135M-Instruct; --base for another)",
            options.base_model.display()
        )));
    }
    let mut plan = Plan::new(
        vec![topics::TRAIN_TRIGGER.to_owned()],
        vec![topics::TRAIN_STATUS.to_owned()],
        options.group_id.clone(),
    );
    // A trigger's ack waits for its job.
    plan.holding = Holding::State;
    plan.decode = options.decode;
    info!(base = %options.base_model.display(), "trainer base model found");
    let stage = TrainerStage {
        options,
        stats,
        cancelled: watch_cancels(&options.kafka, stop.child_token())?,
        stop: stop.clone(),
        base: None,
    };
    aion_runtime::run(&options.kafka, &plan, stage, stop, &stats.counts).await
}

/// Runs the trigger's job to its final status unless it has one already; false when the stage
/// is stopping. Holds the job directory's lock throughout, so two trainer processes sharing the
/// adapters directory never run one job at once (the second waits, then finds it done). The final
/// status is published first, then recorded (from then on a redelivered trigger is not run
/// again), then the adapter promoted: a crash in between repeats the publication or the
/// promotion, never the training.
#[allow(clippy::too_many_arguments)]
async fn take_job(
    options: &TrainerOptions,
    trigger: &TrainTrigger,
    base: &mut Option<Arc<BaseModel>>,
    cancelled: &Arc<Mutex<HashSet<String>>>,
    stop: &CancellationToken,
    out: Output<'_>,
    stats: &Stats,
) -> Result<bool> {
    let dir = job_dir(&options.adapters_root, trigger);
    let Some(_lock) = lock_job(&dir, stop).await? else {
        return Ok(false);
    };
    if let Some(done) = final_status(&dir) {
        info!(job = %trigger.trigger_id, state = ?done.state, "already done; not run again");
        promote(options, &done, stats)?;
        return Ok(true);
    }
    stats.jobs.fetch_add(1, Ordering::Relaxed);
    let model = match base {
        Some(m) => m.clone(),
        None => {
            let path = options.base_model.clone();
            let device = options.device.clone();
            let loaded = tokio::task::spawn_blocking(move || {
                BaseModel::load(&path, Storage::Nf4 { double_quant: true }, &device)
            })
            .await
            .map_err(|e| Error::Invalid(e.to_string()))??;
            base.insert(Arc::new(loaded)).clone()
        }
    };
    let Some(status) = run_job(options, trigger, &dir, model, cancelled, stop, out, stats).await?
    else {
        return Ok(false);
    };
    publish(out, &status, true).await?;
    write_json(&dir.join(STATUS_FILE), &status)?;
    promote(options, &status, stats)?;
    let counter = match status.state {
        JobState::Completed => &stats.completed,
        JobState::Cancelled => &stats.cancelled,
        _ => &stats.failed,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    info!(job = %status.job_id, state = ?status.state, "job finished");
    Ok(true)
}

/// The job directory's lock (`.lock`, an OS file lock: released when the process ends however it
/// ends), waited for while another process holds it; `None` if the stage stops meanwhile.
async fn lock_job(dir: &Path, stop: &CancellationToken) -> Result<Option<std::fs::File>> {
    std::fs::create_dir_all(dir).map_err(crate::io_err(dir))?;
    let path = dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(crate::io_err(&path))?;
    let mut logged = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => {
                if !logged {
                    info!(dir = %dir.display(), "another trainer runs this job; waiting for it");
                    logged = true;
                }
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(crate::io_err(&path)(e)),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = stop.cancelled() => return Ok(None),
        }
    }
}

/// Makes a completed job's adapter the tenant's current one when its evaluation improved and no
/// later job's adapter is current already (a redelivered old trigger never demotes a newer one).
fn promote(options: &TrainerOptions, status: &TrainStatus, stats: &Stats) -> Result<()> {
    if status.state != JobState::Completed || status.promoted != Some(true) {
        return Ok(());
    }
    let current = options
        .adapters_root
        .join(&status.tenant_id)
        .join(CURRENT_FILE);
    let newer = std::fs::read(&current)
        .ok()
        .and_then(|b| serde_json::from_slice::<TrainStatus>(&b).ok())
        .is_some_and(|c| c.at >= status.at);
    if !newer {
        write_json(&current, status)?;
        stats.promoted.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// The failed status of a trigger the trainer refused, when the payload names a valid tenant and
/// an id of its own that the status can carry.
fn refused_status(payload: &[u8], reject: &aion_events::Reject) -> Option<TrainStatus> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let tenant = value.get("tenant_id")?.as_str()?;
    let job = value.get("trigger_id")?.as_str()?;
    aion_events::validate_tenant_id(tenant).ok()?;
    let valid_id = job.starts_with(&format!("{tenant}/"))
        && job.len() <= aion_events::MAX_TRIGGER_ID_BYTES
        && !job.chars().any(char::is_control);
    valid_id.then(|| TrainStatus {
        reason: Some(format!(
            "trigger refused: {}: {}",
            reject.path, reject.message
        )),
        ..TrainStatus::new(job, tenant, JobState::Failed)
    })
}

/// Runs one job to its final status, or `None` when the stage is stopping.
#[allow(clippy::too_many_arguments)]
async fn run_job(
    options: &TrainerOptions,
    trigger: &TrainTrigger,
    dir: &Path,
    base: Arc<BaseModel>,
    cancelled: &Arc<Mutex<HashSet<String>>>,
    stop: &CancellationToken,
    out: Output<'_>,
    stats: &Stats,
) -> Result<Option<TrainStatus>> {
    let job = trigger.trigger_id.clone();
    let tenant = trigger.tenant_id.clone();
    let report = |state| TrainStatus::new(&job, &tenant, state);
    // Progress reports need no confirmation: only the final status guards the trigger's offset.
    publish(out, &report(JobState::Queued), false).await?;
    info!(job = %job, "queued");
    let is_cancelled = || cancelled.lock().map(|s| s.contains(&job)).unwrap_or(false);
    if is_cancelled() {
        return Ok(Some(TrainStatus {
            reason: Some("cancelled before it started".into()),
            ..report(JobState::Cancelled)
        }));
    }
    // A trigger says what was committed when it fired (the manifest's line count, or a list of
    // files). A gate trigger can fire before the tenant's first shard is committed (windows close
    // within seconds, shards roll by age): then the tenant's whole manifest is read, waiting a
    // bounded time for rows to land.
    let deadline = tokio::time::Instant::now() + SHARD_WAIT;
    let mut through = trigger.manifest_lines;
    let (files, loaded) = loop {
        let files = if trigger.shards.is_empty() {
            // An unreadable manifest is waited on like an empty one.
            aion_events::tenant_shards(&options.shards_root, &tenant, through.take())
                .unwrap_or_default()
        } else {
            trigger.shards.clone()
        };
        // What fired the trigger first, then the newest history, up to the example cap.
        // (A manual trigger has no window: newest first.)
        let from = trigger.window_start.unwrap_or(trigger.at);
        let ordered = crate::dataset::order_for_window(&files, from, trigger.at);
        let loaded = load_examples(
            &options.shards_root,
            &ordered,
            &options.filter,
            &trigger.top_entities,
        );
        let waiting = trigger.shards.is_empty()
            && matches!(&loaded, Ok(e) if e.len() < 2)
            && tokio::time::Instant::now() < deadline;
        if !waiting {
            break (files, loaded);
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
            () = stop.cancelled() => return Ok(None),
        }
    };
    let examples = match loaded {
        Ok(e) if e.len() >= 2 => e,
        Ok(e) => {
            return Ok(Some(TrainStatus {
                reason: Some(format!(
                    "{} training rows in {} shard files of {tenant}: nothing to learn from",
                    e.len(),
                    files.len()
                )),
                ..report(JobState::Failed)
            }))
        }
        Err(e) => {
            return Ok(Some(TrainStatus {
                reason: Some(e.to_string()),
                ..report(JobState::Failed)
            }))
        }
    };
    info!(job = %job, examples = examples.len(), files = files.len(), "training");
    let config = job_config(&options.config, trigger);
    let (progress_tx, mut progress_rx) = mpsc::unbounded_channel::<Progress>();
    let interrupted = Arc::new(AtomicBool::new(false));
    let training = {
        let (dir, interrupted, cancelled, job) = (
            dir.to_owned(),
            interrupted.clone(),
            cancelled.clone(),
            job.clone(),
        );
        tokio::task::spawn_blocking(move || {
            train(&base, &examples, &config, &dir, &mut |p| {
                let _ = progress_tx.send(p.clone());
                let cancel = cancelled.lock().map(|s| s.contains(&job)).unwrap_or(false);
                if cancel || interrupted.load(Ordering::Relaxed) {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
        })
    };
    tokio::pin!(training);
    let mut curve = Vec::new();
    let outcome = loop {
        tokio::select! {
            done = &mut training => break done.map_err(|e| Error::Invalid(e.to_string()))?,
            Some(p) = progress_rx.recv() => {
                stats.step.store(p.step as u64, Ordering::Relaxed);
                stats.total_steps.store(p.total_steps as u64, Ordering::Relaxed);
                if options.progress_bar {
                    draw(&job, &p);
                }
                curve.push(serde_json::json!({"step": p.step, "epoch": p.epoch, "loss": p.loss}));
                publish(out, &TrainStatus {
                    step: Some(p.step as u64),
                    total_steps: Some(p.total_steps as u64),
                    loss: Some(p.loss),
                    tokens_per_s: Some(p.tokens_per_s),
                    eta_s: Some(p.eta.as_secs_f64()),
                    ..report(JobState::Running)
                }, false).await?;
            }
            () = stop.cancelled(), if !interrupted.load(Ordering::Relaxed) => {
                interrupted.store(true, Ordering::Relaxed);
            }
        }
    };
    if options.progress_bar {
        eprintln!();
    }
    if interrupted.load(Ordering::Relaxed) {
        info!(job = %job, "stopping: the job resumes from its last checkpoint next run");
        return Ok(None);
    }
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            return Ok(Some(TrainStatus {
                reason: Some(e.to_string()),
                ..report(JobState::Failed)
            }))
        }
    };
    let log = dir.join("loss_curve.jsonl");
    let lines: Vec<String> = curve.iter().map(|v| v.to_string()).collect();
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .and_then(|mut f| f.write_all((lines.join("\n") + "\n").as_bytes()))
        .map_err(crate::io_err(&log))?;
    let base = TrainStatus {
        step: Some(outcome.steps as u64),
        held_out_before: outcome.held_out_before,
        held_out_after: outcome.held_out_after,
        ..report(JobState::Completed)
    };
    if outcome.cancelled {
        return Ok(Some(TrainStatus {
            reason: Some("cancelled by an operator".into()),
            state: JobState::Cancelled,
            ..base
        }));
    }
    let promoted = matches!(
        (outcome.held_out_before, outcome.held_out_after),
        (Some(before), Some(after)) if after < before
    );
    let status = TrainStatus {
        adapter: outcome.adapter_dir.map(|d| d.display().to_string()),
        promoted: Some(promoted),
        ..base
    };
    Ok(Some(status))
}

/// One progress line, redrawn in place.
fn draw(job: &str, p: &Progress) {
    const WIDTH: usize = 30;
    let done = (p.step * WIDTH / p.total_steps.max(1)).min(WIDTH);
    eprint!(
        "\r{job} [{}{}] {}/{} loss {:.3} {:.0} tok/s eta {}s   ",
        "#".repeat(done),
        "-".repeat(WIDTH - done),
        p.step,
        p.total_steps,
        p.loss,
        p.tokens_per_s,
        p.eta.as_secs()
    );
    let _ = std::io::stderr().flush();
}

/// Whether standard error is a terminal (for the progress line).
pub fn interactive() -> bool {
    std::io::stderr().is_terminal()
}
