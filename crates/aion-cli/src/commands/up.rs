//! `aion up`: the whole loop on one machine, on the embedded defaults.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio_util::sync::CancellationToken;

use crate::Context;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Loopback port of the local broker.
    #[arg(long, default_value_t = 9092, env = "AION_BROKER_PORT")]
    pub port: u16,
    /// Use the brokers from the configuration instead of starting the local one.
    #[arg(long)]
    pub external_broker: bool,
    /// Synthetic events to publish when the input topics are empty (a re-run resumes instead).
    /// Windows, the gate and the trainer keep up with the default; the enricher and the shard
    /// stage run a NER model on every event and trail behind for a while on 2 cores.
    #[arg(long, default_value_t = 20_000)]
    pub events: u64,
    /// Synthetic events per second.
    #[arg(long, default_value_t = 1_500)]
    pub rate: u64,
    /// Event-time span of the synthetic traffic, in hours (acme degrades after the first half).
    #[arg(long, default_value_t = 48)]
    pub span_hours: i64,
    /// Seconds between summary lines.
    #[arg(long, default_value_t = 5)]
    pub summary_secs: u64,
    /// Optimiser steps per training job: a CPU demo stops early (a GPU trainer runs the recipe's
    /// full epochs: `aion trainer run` without --max-steps).
    #[arg(long, default_value_t = 8)]
    pub train_max_steps: usize,
    /// Training rows per job (a CPU demo keeps it small: the held-out loss is computed twice).
    #[arg(long, default_value_t = 400)]
    pub train_max_examples: usize,
    /// Longest training example in tokens (the demo's answers are short).
    #[arg(long, default_value_t = 256)]
    pub train_max_len: usize,
    /// Address of the control API and panel (mutating routes need AION_API_TOKEN when it is set;
    /// without it they are open on this loopback address only).
    #[arg(long, env = "AION_API_ADDR", default_value = "127.0.0.1:8080")]
    pub api_addr: std::net::SocketAddr,
}

pub async fn run(args: Args, mut ctx: Context, stop: CancellationToken) -> Result<()> {
    // One machine runs the broker, the enricher's and the trainer's models and every stage: one
    // compute thread per model leaves cores to the broker and the other stages.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
    // One process runs every stage: each reads all partitions of its inputs directly, so a broker
    // slowed down by the whole loop's load cannot expire sessions and leave a stage without
    // partitions (the local broker's group coordinator recovers from that slowly, if at all).
    ctx.kafka.assignment = aion_kafka::Assignment::All;
    if !args.external_broker {
        let port = aion_broker::start_background(args.port, &ctx.broker_dir())
            .context("starting the local broker")?;
        ctx.kafka.brokers = format!("127.0.0.1:{port}");
        println!(
            "broker    127.0.0.1:{port}, storage {} (`aion broker stop` stops it)",
            ctx.broker_dir().display()
        );
    }
    // Every stage reads the input topics itself and dead-letters what it cannot decode: no relay
    // copies them first (that doubled the broker's writes for topics nobody read).
    let topics = super::topics::product_topics();
    super::topics::create(&ctx, &topics, None, None).await?;
    println!("topics    {}", topics.join(", "));

    let enrich_stats = Arc::new(aion_ner::Stats::default());
    let model_dir = super::enrich::default_model();
    let enrich = if model_dir.join("model.safetensors").is_file() {
        let options = aion_ner::EnrichOptions {
            kafka: ctx.kafka.clone(),
            group_id: ctx.group("enrich"),
            input_topic: aion_events::topics::RETRIEVAL.to_owned(),
            output_topic: aion_events::topics::RETRIEVAL_ENRICHED.to_owned(),
            model_dir: model_dir.clone(),
            batch_size: 16,
            max_wait: Duration::from_millis(50),
            cache_entries: aion_ner::DEFAULT_CACHE_ENTRIES,
            decode: ctx.decode_limits(),
            precision: aion_ner::Precision::default(),
        };
        println!("          enrich: NER + keyphrases → retrieval.enriched.v1");
        let (stop, stats) = (stop.clone(), enrich_stats.clone());
        Some(tokio::spawn(async move {
            aion_ner::run(&options, stop, &stats).await
        }))
    } else {
        println!(
            "          enrich: skipped, no model at {} (scripts/setup converts it)",
            model_dir.display()
        );
        None
    };

    let window_stats = Arc::new(aion_windows::Stats::default());
    let windows = {
        let config = super::windows::load(None)?;
        let options = super::windows::options(&ctx, None);
        println!(
            "          windows: nDCG@{} and fallback rate per tenant → {}, Parquet in {}",
            config.ndcg.k,
            config.output_topic,
            options.data_dir.join(aion_windows::METRICS_TABLE).display()
        );
        let (stop, stats) = (stop.clone(), window_stats.clone());
        tokio::spawn(async move { aion_windows::run(&config, &options, stop, &stats).await })
    };

    let shard_stats = Arc::new(aion_shards::Stats::default());
    let shards = {
        let options = super::shards::options(
            &ctx,
            super::shards::RunArgs {
                dir: None,
                max_rows: aion_shards::RollPolicy::default().max_rows,
                max_bytes: aion_shards::RollPolicy::default().max_bytes,
                max_age_secs: 10,
                entities_dir: None,
                no_entities: enrich.is_none(),
                labels_dir: None,
                no_labels: false,
                no_redact: false,
                ner_model: Some(model_dir.clone()),
                join_wait_secs: aion_shards::JoinOptions::default().wait.as_secs(),
                remote: None,
                pipeline: None,
            },
        )?;
        println!(
            "          shards: answer.v1 → PII-redacted Parquet in {}",
            options.root.display()
        );
        if let Some((_, root)) = &options.entities {
            println!(
                "          shards: retrieval.enriched.v1 → entity mentions in {}",
                root.display()
            );
        }
        let (stop, stats) = (stop.clone(), shard_stats.clone());
        tokio::spawn(async move { aion_shards::run(&options, stop, &stats).await })
    };

    let gate_stats = Arc::new(aion_gate::Stats::default());
    let gate = {
        let config = super::gate::load(None)?;
        let options = super::gate::options(
            &ctx,
            &config,
            &super::gate::InitialSettings::default(),
            false,
        )?;
        let s = options.current_settings()?;
        println!(
            "          gate: {} of {} → {} when fallback > {} or nDCG < {} (cooldown {} h)",
            config.window,
            config.input_topic,
            config.output_topic,
            s.tau_fallback,
            s.tau_ndcg,
            s.cooldown_hours
        );
        let (stop, stats) = (stop.clone(), gate_stats.clone());
        tokio::spawn(async move { super::gate::run_both(&config, &options, stop, &stats).await })
    };

    let trainer_stats = Arc::new(aion_trainer::Stats::default());
    let base = super::trainer::default_base();
    let trainer = if base.is_file() {
        let mut run_args = super::trainer::RunArgs::defaults();
        run_args.max_steps = Some(args.train_max_steps);
        run_args.max_len = Some(args.train_max_len);
        run_args.max_examples = args.train_max_examples;
        let mut options = super::trainer::options(&ctx, run_args)?;
        options.progress_bar = false; // the summary line reports progress
        println!(
            "          trainer: train.trigger.v1 → QLoRA on {} ({} steps per job) → adapters in {}",
            base.display(),
            args.train_max_steps,
            options.adapters_root.display()
        );
        let (stop, stats) = (stop.clone(), trainer_stats.clone());
        Some(tokio::spawn(async move {
            let result = aion_trainer::run(&options, stop.clone(), &stats).await;
            if let Err(e) = &result {
                // Say so now, and stop the loop: a summary line without training would mislead.
                tracing::error!("the trainer stopped: {e}");
                stop.cancel();
            }
            result
        }))
    } else {
        println!(
            "          trainer: skipped, no base model at {} (scripts/setup installs it)",
            base.display()
        );
        None
    };

    let api = {
        let token = std::env::var("AION_API_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        let tokens_file = std::env::var_os("AION_API_TOKENS_FILE").map(std::path::PathBuf::from);
        let options = super::serve::options(
            super::serve::Args {
                addr: args.api_addr,
                insecure_loopback: token.is_none() && tokens_file.is_none(),
                token,
                tokens_file,
                public_metrics: false,
                pipeline: None,
            },
            &ctx,
        )?;
        println!("panel     http://{}/", args.api_addr);
        let stop = stop.clone();
        tokio::spawn(async move { aion_api::serve(options, stop).await })
    };

    let already = aion_kafka::topic_records(&ctx.kafka, aion_events::topics::RETRIEVAL)?;
    let producer = if args.events > 0 && already == 0 {
        let produce = super::produce::Args {
            count: args.events,
            rate: args.rate,
            tenants: vec!["acme".into(), "globex".into(), "initech".into()],
            seed: 42,
            scenario: super::produce::ScenarioName::Degrade,
            degrade_at: 0.5,
            degrade_tenants: vec!["acme".into()],
            entity: None,
            span_hours: args.span_hours,
            start: None,
            invalid_fraction: 0.01,
            late_fraction: 0.01,
            corpus_passages: 0,
            to_dir: None,
        };
        println!(
            "traffic   {} events at {}/s, tenant acme degrades half-way",
            args.events, args.rate
        );
        let (ctx, stop) = (ctx.clone(), stop.clone());
        Some(tokio::spawn(async move {
            super::produce::run(produce, &ctx, stop).await
        }))
    } else {
        println!("traffic   input topics already hold {already} retrieval events: resuming, not publishing");
        None
    };
    println!("Ctrl-C stops everything cleanly.");

    let mut tick = tokio::time::interval(Duration::from_secs(args.summary_secs.max(1)));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                println!("summary   {}; enriched {}{}; shard rows {} ({} joined with their retrieval, {} PII redacted); triggers fired {}; {}", windows_line(&window_stats), enrich_stats.counts.sent(), cache_line(&enrich_stats), shard_stats.written.load(std::sync::atomic::Ordering::Relaxed), shard_stats.joined.load(std::sync::atomic::Ordering::Relaxed), shard_stats.redacted.load(std::sync::atomic::Ordering::Relaxed), gate_stats.fired.load(std::sync::atomic::Ordering::Relaxed), training_line(&trainer_stats));
                if let Some(line) = tenants_line(&gate_stats) {
                    println!("tenants   {line}");
                }
            }
            () = stop.cancelled() => break,
        }
    }
    if let Some(p) = producer {
        p.await??;
    }
    windows.await??;
    gate.await??;
    shards.await??;
    if let Some(enrich) = enrich {
        enrich.await??;
    }
    if let Some(trainer) = trainer {
        trainer.await??;
    }
    api.await??;
    println!(
        "stopped   {}; offsets committed",
        windows_line(&window_stats)
    );
    Ok(())
}

/// ` (segments 83% from the cache)`: how much model work the enricher skipped.
fn cache_line(stats: &aion_ner::Stats) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let (cached, computed) = (
        stats.segments_cached.load(Relaxed),
        stats.segments_computed.load(Relaxed),
    );
    if cached + computed == 0 {
        return String::new();
    }
    format!(
        " (segments {:.0}% from the cache)",
        100.0 * cached as f64 / (cached + computed) as f64
    )
}

fn training_line(stats: &aion_trainer::Stats) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    format!(
        "training jobs {} (step {}/{}), completed {}, adapters promoted {}, cancelled {}, failed {}",
        stats.jobs.load(Relaxed),
        stats.step.load(Relaxed),
        stats.total_steps.load(Relaxed),
        stats.completed.load(Relaxed),
        stats.promoted.load(Relaxed),
        stats.cancelled.load(Relaxed),
        stats.failed.load(Relaxed)
    )
}

/// The latest gate window of each tenant: `acme nDCG 0.71 fallback 0.45 (window ending …)`.
fn tenants_line(stats: &aion_gate::Stats) -> Option<String> {
    let latest = stats.latest.lock().unwrap_or_else(|p| p.into_inner());
    let show = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
    let parts: Vec<String> = latest
        .iter()
        .map(|(tenant, l)| {
            format!(
                "{tenant} nDCG {} fallback {} (to {})",
                show(l.ndcg_mean),
                show(l.fallback_rate),
                l.window_end.format("%m-%d %H:%M")
            )
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join(" | "))
}

fn windows_line(stats: &aion_windows::Stats) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let mut line = format!(
        "events in {}, dead-lettered {}, windows closed {}, late events {}, events in open windows {}",
        stats.counts.received(),
        stats.counts.dead_lettered(),
        stats.windows_closed.load(Relaxed),
        stats.late.load(Relaxed),
        stats.stored_events.load(Relaxed)
    );
    let held = stats.held_by_lag.load(Relaxed);
    if held > 0 {
        line += &format!(
            " ({held} windows wait on inputs still {} records behind)",
            stats.input_lag.load(Relaxed)
        );
    }
    line
}
