use std::time::{Duration, Instant};

use aion_kafka::Sink;
use aion_traffic::{Corpus, Generator, Scenario, TrafficConfig};
use anyhow::{bail, Context as _, Result};
use chrono::{DateTime, Utc};
use clap::ValueEnum;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::Context;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScenarioName {
    /// Healthy traffic throughout (mean nDCG ≈ 0.9, fallback rate ≈ 10 %).
    Steady,
    /// From --degrade-at on, --degrade-tenants get noisy rankings and a ≈ 50 % fallback rate.
    Degrade,
    /// From --degrade-at on, retrievals whose query mentions --entity get noisy rankings and
    /// lower confidence, in every tenant; everything else stays healthy.
    DegradeEntity,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Events to publish (retrievals and answers together; each retrieval is followed by its answer).
    #[arg(long, default_value_t = 10_000, env = "AION_PRODUCE_COUNT")]
    pub count: u64,
    /// Events per second; 0 publishes as fast as the broker takes them.
    #[arg(long, default_value_t = 500, env = "AION_PRODUCE_RATE")]
    pub rate: u64,
    /// Tenants, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "acme,globex,initech",
        env = "AION_PRODUCE_TENANTS"
    )]
    pub tenants: Vec<String>,
    /// Random seed; the same seed and settings publish the same events (same event ids).
    #[arg(long, default_value_t = 42, env = "AION_PRODUCE_SEED")]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t = ScenarioName::Steady, env = "AION_PRODUCE_SCENARIO")]
    pub scenario: ScenarioName,
    /// Point of the stream (0..=1) from which the degradation starts.
    #[arg(long, default_value_t = 0.5)]
    pub degrade_at: f64,
    /// Tenants that degrade, comma-separated (default: the first tenant).
    #[arg(long, value_delimiter = ',')]
    pub degrade_tenants: Vec<String>,
    /// The entity that degrades with `--scenario degrade-entity` (a person, company, place or
    /// product of the generator's vocabulary, e.g. "Curitiba").
    #[arg(long)]
    pub entity: Option<String>,
    /// Hours of event time the stream covers; events are spread evenly over them.
    #[arg(long, default_value_t = 48)]
    pub span_hours: i64,
    /// Event time of the first event, RFC 3339 (default: now minus --span-hours).
    #[arg(long)]
    pub start: Option<DateTime<Utc>>,
    /// Fraction of events published deliberately broken (they must land in the DLQ).
    #[arg(long, default_value_t = 0.0)]
    pub invalid_fraction: f64,
    /// Fraction of events whose event time lags by up to two hours.
    #[arg(long, default_value_t = 0.01)]
    pub late_fraction: f64,
    /// Retrieve results from a knowledge base of this many passages of a few sentences each,
    /// drawn by Zipf's law (exponent 1.0): popular passages recur as in real RAG traffic
    /// (100000 is the realistic traffic of `aion-bench ner`). 0: a short passage written for
    /// every result.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub corpus_passages: usize,
    /// Write the events to `DIR/<topic>.jsonl` instead of publishing them (fixtures, offline checks).
    #[arg(long, value_name = "DIR")]
    pub to_dir: Option<std::path::PathBuf>,
}

impl Args {
    fn generator(&self) -> Result<Generator> {
        let generator = Generator::new(self.traffic()?);
        Ok(match self.corpus_passages {
            0 => generator,
            n => generator.with_corpus(Corpus::new(self.seed, n, aion_traffic::REALISTIC_EXPONENT)),
        })
    }

    fn traffic(&self) -> Result<TrafficConfig> {
        for (name, f) in [
            ("--degrade-at", self.degrade_at),
            ("--invalid-fraction", self.invalid_fraction),
            ("--late-fraction", self.late_fraction),
        ] {
            if !(0.0..=1.0).contains(&f) {
                bail!("{name} must be within 0..=1, got {f}");
            }
        }
        if self.tenants.is_empty() {
            bail!("--tenants must name at least one tenant");
        }
        for t in &self.tenants {
            aion_events::validate_tenant_id(t).with_context(|| format!("--tenants: {t:?}"))?;
        }
        if self.span_hours <= 0 {
            bail!("--span-hours must be positive");
        }
        let span = chrono::Duration::hours(self.span_hours);
        let scenario = match self.scenario {
            ScenarioName::Steady => Scenario::Steady,
            ScenarioName::Degrade => Scenario::Degrade {
                at: self.degrade_at,
                tenants: if self.degrade_tenants.is_empty() {
                    vec![self.tenants[0].clone()]
                } else {
                    self.degrade_tenants.clone()
                },
            },
            ScenarioName::DegradeEntity => {
                let Some(entity) = &self.entity else {
                    bail!("--scenario degrade-entity needs --entity NAME");
                };
                if !aion_traffic::entities().any(|e| e.eq_ignore_ascii_case(entity)) {
                    bail!(
                        "--entity {entity:?} is not one the generator mentions; one of: {}",
                        aion_traffic::entities().collect::<Vec<_>>().join(", ")
                    );
                }
                Scenario::DegradeEntity {
                    at: self.degrade_at,
                    entity: entity.clone(),
                }
            }
        };
        Ok(TrafficConfig {
            seed: self.seed,
            tenants: self.tenants.clone(),
            count: self.count,
            start: self.start.unwrap_or_else(|| Utc::now() - span),
            span,
            scenario,
            invalid_fraction: self.invalid_fraction,
            late_fraction: self.late_fraction,
        })
    }
}

/// Publishes the configured traffic and fails unless the broker acknowledged every event.
pub async fn run(args: Args, ctx: &Context, stop: CancellationToken) -> Result<()> {
    let traffic = args.generator()?;
    if let Some(dir) = &args.to_dir {
        return write_files(traffic, dir);
    }
    let sink = Sink::new(&ctx.kafka, "produce")?;
    let started = Instant::now();
    let mut sent = 0u64;
    for payload in traffic {
        if stop.is_cancelled() {
            break;
        }
        sink.send(
            payload.topic,
            Some(payload.key.as_bytes()),
            &payload.bytes,
            None,
            None,
        )
        .await?;
        sent += 1;
        if args.rate > 0 {
            let due = started + Duration::from_secs_f64(sent as f64 / args.rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        if sent.is_multiple_of(10_000) {
            info!(sent, "producing");
        }
    }
    // Every queued event ends acknowledged or, after librdkafka's message.timeout.ms (300 s),
    // failed and counted: a busy broker can take minutes, and a flush deadline would drop the tail
    // silently. A stop ends the wait; what is still queued is reported below.
    while sink.in_flight() > 0 && !stop.is_cancelled() {
        let _ = sink.flush(Duration::from_secs(1));
    }
    let unsent = sink.in_flight();
    if unsent > 0 {
        bail!("stopped with {unsent} of {sent} events not yet acknowledged by the broker");
    }
    let failed = sink.failed_deliveries();
    if failed > 0 {
        bail!("{failed} of {sent} events were not acknowledged by the broker");
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "published {sent} events in {secs:.1} s ({:.0}/s)",
        sent as f64 / secs.max(1e-9)
    );
    Ok(())
}

fn write_files(traffic: Generator, dir: &std::path::Path) -> Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut files = std::collections::HashMap::new();
    let mut written = 0u64;
    for payload in traffic {
        let file = match files.entry(payload.topic) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let path = dir.join(format!("{}.jsonl", payload.topic));
                let f = std::fs::File::create(&path)
                    .with_context(|| format!("creating {}", path.display()))?;
                e.insert(std::io::BufWriter::new(f))
            }
        };
        file.write_all(&payload.bytes)?;
        file.write_all(b"\n")?;
        written += 1;
    }
    for (_, mut f) in files {
        f.flush()?;
    }
    println!("wrote {written} events to {}", dir.display());
    Ok(())
}
