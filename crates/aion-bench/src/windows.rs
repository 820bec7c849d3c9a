//! `aion-bench windows`: what the windows stage costs.
//!
//! - Aggregation per core: synthetic observations through the window operator and the pipeline's
//!   SQL (every window close included), on one thread; and the same behind decode + nDCG of
//!   generated events.
//! - Memory: resident set size as the number of events grows, next to the events held in open
//!   windows (each holding a heap token like a real acknowledgement).
//! - Close delay: the real stage against a broker; time from the watermark passing window ends to
//!   their metrics records being acknowledged and their Parquet file renamed into place.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aion_traffic::{Generator, Scenario, TrafficConfig};
use aion_windows::{
    Aggregator, Measure, Micros, Observation, Origin, StageOptions, Stats, WindowOperator,
    WindowsConfig,
};
use anyhow::{bail, Context as _, Result};
use tokio_util::sync::CancellationToken;

use crate::cpu_seconds;
use crate::rate;
use aion_cli::Context;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Synthetic events for the aggregation rate.
    #[arg(long, default_value_t = 2_000_000)]
    pub events: u64,
    /// Events of the memory run (RSS is printed at 100k, 1M and this many).
    #[arg(long, default_value_t = 5_000_000)]
    pub memory_events: u64,
    /// Generated events published to the broker for the close-delay run.
    #[arg(long, default_value_t = 30_000)]
    pub broker_events: u64,
    /// Event-time density of the synthetic stream: events per hour (all tenants).
    #[arg(long, default_value_t = 20_000)]
    pub events_per_hour: u64,
    /// Benchmark the brokers from the configuration instead of a fresh local broker.
    #[arg(long)]
    pub configured_brokers: bool,
}

const TENANTS: [&str; 3] = ["acme", "globex", "initech"];
const HOUR: Micros = 3_600_000_000;

/// A deterministic stream: time advances evenly with up to 5 minutes of disorder.
struct Synthetic {
    tenants: Vec<Arc<str>>,
    step: Micros,
}

impl Synthetic {
    fn new(events_per_hour: u64) -> Self {
        Self {
            tenants: TENANTS.iter().map(|t| Arc::from(*t)).collect(),
            step: HOUR / events_per_hour.max(1) as Micros,
        }
    }

    fn get(&self, i: u64) -> (Origin, Observation) {
        let i = i as i64;
        let jitter = (i * 7919) % 300_000_000;
        let measure = if i % 2 == 0 {
            Measure::Retrieval {
                ndcg: (i % 5 != 0).then(|| (i % 97) as f64 / 96.0),
            }
        } else {
            Measure::Answer {
                fallback: i % 7 == 0,
                confidence: (i % 89) as f64 / 88.0,
            }
        };
        let origin = Origin {
            input: (i % 2) as u8,
            partition: 0,
            offset: i,
        };
        let obs = Observation {
            tenant: self.tenants[(i as usize / 2) % self.tenants.len()].clone(),
            ts: 1_700_000_000_000_000 + i * self.step - jitter,
            measure,
        };
        (origin, obs)
    }
}

fn rss_mb() -> f64 {
    crate::proc_status_bytes("self", "VmRSS").unwrap_or(0) as f64 / (1024.0 * 1024.0)
}

struct Throughput {
    wall: f64,
    per_cpu: f64,
    windows: usize,
}

/// Feeds `n` observations through the operator and the SQL, closing windows as it goes.
async fn aggregate(
    config: &WindowsConfig,
    n: u64,
    mut next: impl FnMut(u64) -> Result<(Origin, Observation)>,
    mut at: impl FnMut(u64, &WindowOperator<Arc<u64>>),
) -> Result<Throughput> {
    let aggregator = Aggregator::new(&config.sql_text).await?;
    let mut op: WindowOperator<Arc<u64>> = WindowOperator::new(config);
    let now = Instant::now();
    op.add_partition(0, 0, now);
    op.add_partition(1, 0, now);
    let (t, cpu) = (Instant::now(), cpu_seconds());
    let mut windows = 0;
    for i in 0..n {
        let (origin, obs) = next(i)?;
        op.observe(origin, &obs, || Arc::new(i), now);
        let closing = op.close(now);
        if !closing.groups.is_empty() {
            for r in aggregator.aggregate(&closing.groups).await? {
                windows += r.metrics.len();
            }
        }
        at(i + 1, &op);
    }
    let (wall, cpu) = (t.elapsed(), cpu_seconds() - cpu);
    Ok(Throughput {
        wall: rate(n, wall),
        per_cpu: n as f64 / cpu.max(0.01),
        windows,
    })
}

pub async fn run(args: Args, ctx: &Context) -> Result<()> {
    let config = WindowsConfig::embedded()?;
    let synthetic = Synthetic::new(args.events_per_hour);

    // Memory against the number of events; first, so nothing else has touched the heap yet.
    let checkpoints = [100_000, 1_000_000, args.memory_events];
    let mut memory = Vec::new();
    aggregate(
        &config,
        args.memory_events,
        |i| Ok(synthetic.get(i)),
        |i, op| {
            if checkpoints.contains(&i) {
                memory.push((i, op.stored_rows(), rss_mb()));
            }
        },
    )
    .await?;

    let ops = aggregate(&config, args.events, |i| Ok(synthetic.get(i)), |_, _| {}).await?;

    // The same behind decode + nDCG of generated events (retrieval ≈ 1.5 KB of JSON each).
    let generated: Vec<aion_traffic::Payload> = Generator::new(TrafficConfig {
        seed: 3,
        tenants: TENANTS.iter().map(|t| t.to_string()).collect(),
        count: 200_000,
        start: "2026-11-01T00:00:00Z".parse()?,
        span: chrono::Duration::hours(200_000 / args.events_per_hour.max(1) as i64 + 1),
        scenario: Scenario::Steady,
        invalid_fraction: 0.0,
        late_fraction: 0.0,
    })
    .collect();
    let limits = ctx.decode_limits();
    let full = aggregate(
        &config,
        generated.len() as u64,
        |i| {
            let p = &generated[i as usize];
            let input = u8::from(p.topic != aion_events::topics::RETRIEVAL);
            let obs = aion_windows::observation(&config, &limits, input, &p.bytes)
                .map_err(|r| anyhow::anyhow!("generated event rejected: {r}"))?;
            Ok((
                Origin {
                    input,
                    partition: 0,
                    offset: i as i64,
                },
                obs,
            ))
        },
        |_, _| {},
    )
    .await?;
    drop(generated);

    let delays = close_delays(&args, ctx).await?;

    println!();
    println!(
        "| measurement                                        | result         | target        |"
    );
    println!(
        "|----------------------------------------------------|---------------:|---------------|"
    );
    println!(
        "| aggregation: operator + SQL, events/s per CPU-s    | {:>14.0} | >= 200000     |",
        ops.per_cpu
    );
    println!(
        "|   same, wall clock ({:>6} windows closed)         | {:>14.0} |               |",
        ops.windows, ops.wall
    );
    println!(
        "| decode + nDCG + operator + SQL, events/s per CPU-s | {:>14.0} |               |",
        full.per_cpu
    );
    for (events, stored, rss) in &memory {
        println!(
            "| RSS after {events:>7} events, {stored:>6} in open windows | {rss:>11.0} MB | bounded       |"
        );
    }
    match delays {
        Some((p50, p99, n)) => {
            println!(
                "| close delay p50 ({n} closes, real broker)           | {:>11.1} ms |               |",
                p50 * 1e3
            );
            println!(
                "| close delay p99                                    | {:>11.1} ms | <= 1000 ms    |",
                p99 * 1e3
            );
        }
        None => println!(
            "| close delay                                        | no window closed |         |"
        ),
    }
    println!();
    println!(
        "synthetic stream: {} events per event-time hour over {} tenants, 5 min of disorder; windows {}",
        args.events_per_hour,
        TENANTS.len(),
        config
            .windows
            .iter()
            .map(|w| w.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// Runs the stage over generated traffic on a broker; returns (p50, p99, closes) in seconds.
async fn close_delays(args: &Args, ctx: &Context) -> Result<Option<(f64, f64, usize)>> {
    let (ctx, _broker, run_id) = crate::bench_context(ctx, args.configured_brokers)?;
    let mut config = WindowsConfig::embedded()?;
    config.retrieval_topic = format!("bench.{run_id}.retrieval");
    config.answer_topic = format!("bench.{run_id}.answer");
    config.output_topic = format!("bench.{run_id}.metrics");
    let mut topics = vec![config.output_topic.clone()];
    for t in [&config.retrieval_topic, &config.answer_topic] {
        topics.extend([
            t.clone(),
            aion_events::topics::dlq(t),
            aion_events::topics::late(t),
        ]);
    }
    aion_cli::commands::topics::create(&ctx, &topics, None, None).await?;
    let sink = aion_kafka::Sink::new(&ctx.kafka, "bench")?;
    let traffic = Generator::new(TrafficConfig {
        seed: 5,
        tenants: TENANTS.iter().map(|t| t.to_string()).collect(),
        count: args.broker_events,
        start: "2026-11-01T00:00:00Z".parse()?,
        span: chrono::Duration::hours(72),
        scenario: Scenario::Steady,
        invalid_fraction: 0.0,
        late_fraction: 0.01,
    });
    let mut published = 0u64;
    for p in traffic {
        let topic = if p.topic == aion_events::topics::RETRIEVAL {
            &config.retrieval_topic
        } else {
            &config.answer_topic
        };
        sink.send(topic, Some(p.key.as_bytes()), &p.bytes, None, None)
            .await?;
        published += 1;
    }
    sink.flush(Duration::from_secs(120))?;
    let table = tempfile_dir(&ctx, run_id)?;
    let options = StageOptions {
        kafka: ctx.kafka.clone(),
        group_id: ctx.group("windows"),
        data_dir: table.clone(),
        decode: ctx.decode_limits(),
    };
    let stats = Arc::new(Stats::default());
    let stop = CancellationToken::new();
    let stage = {
        let (stats, stop) = (stats.clone(), stop.clone());
        tokio::spawn(async move { aion_windows::run(&config, &options, stop, &stats).await })
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    while stats.counts.received() < published {
        if stage.is_finished() || Instant::now() > deadline {
            stop.cancel();
            stage.await.context("windows stage")??;
            bail!("the windows stage stopped before reading every event");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.cancel();
    stage.await.context("windows stage")??;
    std::fs::remove_dir_all(&table).ok();
    let mut delays: Vec<f64> = stats
        .close_delays
        .lock()
        .map(|d| d.iter().copied().collect())
        .unwrap_or_default();
    if delays.is_empty() {
        return Ok(None);
    }
    delays.sort_by(f64::total_cmp);
    let q = |p: f64| delays[((delays.len() - 1) as f64 * p).round() as usize];
    Ok(Some((q(0.5), q(0.99), delays.len())))
}

fn tempfile_dir(ctx: &Context, run_id: i64) -> Result<std::path::PathBuf> {
    let dir = ctx.state_dir.join(format!("bench-metrics-{run_id}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
