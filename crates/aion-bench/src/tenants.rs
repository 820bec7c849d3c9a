//! `aion-bench tenants`: the stages that keep per-tenant state (windows, shards, gate) against
//! many tenants with one retrieval and one answer each, every stage its own process on a real
//! broker: peak resident memory and open files per stage, and how long after the events are
//! published every window result and every shard row is durable. Run at several tenant counts,
//! the table shows whether memory and files grow with the tenants or stay bounded.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aion_traffic::{Generator, Scenario, TrafficConfig};
use anyhow::{bail, Context as _, Result};

use aion_cli::Context;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Tenant counts to run, comma-separated (a fresh broker and state for each).
    #[arg(long, value_delimiter = ',', default_value = "5000,50000")]
    pub tenants: Vec<u64>,
    /// Give up on a run after this many seconds.
    #[arg(long, default_value_t = 1800)]
    pub timeout_secs: u64,
}

/// Results each tenant's hour of events makes: `tumbling_1h`, `tumbling_1d` and the 24
/// `hopping_24h` windows that hold it (the embedded pipeline).
const WINDOWS_PER_TENANT: u64 = 26;

/// Peak resident memory (MB) and open files seen in a process so far.
#[derive(Default, Clone, Copy)]
struct Peak {
    rss_mb: f64,
    files: usize,
}

impl Peak {
    fn sample(&mut self, pid: u32) {
        // An exited process reads as 0; the caller reports the exit.
        let rss = crate::proc_status_bytes(&pid.to_string(), "VmRSS").unwrap_or(0) as f64
            / (1024.0 * 1024.0);
        let files = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
        self.rss_mb = self.rss_mb.max(rss);
        self.files = self.files.max(files);
    }
}

struct Stage {
    name: &'static str,
    child: Child,
    peak: Peak,
}

impl Drop for Stage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Run {
    tenants: u64,
    publish_secs: f64,
    windows_secs: Option<f64>,
    /// Window results published by the end of the run.
    windows_done: i64,
    shards_secs: Option<f64>,
    /// Shard rows committed by the end of the run.
    shards_done: usize,
    peaks: Vec<(&'static str, Peak)>,
}

pub async fn run(args: Args, ctx: &Context) -> Result<()> {
    let mut runs = Vec::new();
    for &tenants in &args.tenants {
        runs.push(one(tenants, &args, ctx).await?);
    }
    println!();
    println!(
        "| tenants | stage   | peak RSS | peak open files | all durable, after the last event |"
    );
    println!(
        "|--------:|---------|---------:|----------------:|----------------------------------:|"
    );
    for r in &runs {
        for (name, peak) in &r.peaks {
            let done = match *name {
                "windows" => r.windows_secs,
                "shards" => r.shards_secs,
                _ => None,
            };
            let (got, want) = match *name {
                "windows" => (r.windows_done as u64, WINDOWS_PER_TENANT * r.tenants),
                _ => (r.shards_done as u64, r.tenants),
            };
            let done = match (name, done) {
                (&"gate", _) => "-".to_owned(),
                (_, Some(s)) => format!("{s:.1} s"),
                (_, None) => format!("{got} of {want} in {} s", args.timeout_secs),
            };
            println!(
                "| {:>7} | {name:<7} | {:>5.0} MB | {:>15} | {done:>33} |",
                r.tenants, peak.rss_mb, peak.files
            );
        }
    }
    println!();
    for r in &runs {
        println!(
            "{} tenants: {} events published in {:.1} s; windows: {} results ({} per tenant)",
            r.tenants,
            2 * r.tenants,
            r.publish_secs,
            WINDOWS_PER_TENANT * r.tenants,
            WINDOWS_PER_TENANT
        );
    }
    println!("each tenant: one retrieval and its answer in the same hour of event time; shards without redaction (the NER redaction's speed is `aion-bench ner`'s subject)");
    Ok(())
}

async fn one(tenants: u64, args: &Args, ctx: &Context) -> Result<Run> {
    let (ctx, _broker, run_id) = crate::bench_context(ctx, false)?;
    let state = ctx.state_dir.join(format!("bench-tenants-{run_id}"));
    std::fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
    let topics = aion_cli::commands::topics::product_topics();
    aion_cli::commands::topics::create(&ctx, &topics, None, None).await?;

    let exe = crate::aion_binary()?;
    let spawn = |name: &'static str, stage_args: &[&str]| -> Result<Stage> {
        let log = std::fs::File::create(state.join(format!("{name}.log")))?;
        let child = Command::new(&exe)
            .args(stage_args)
            .env("AION_BROKERS", &ctx.kafka.brokers)
            .env("AION_STATE_DIR", &state)
            .env("AION_GROUP_PREFIX", &ctx.config.kafka.group_prefix)
            .env("AION_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting the {name} stage"))?;
        Ok(Stage {
            name,
            child,
            peak: Peak::default(),
        })
    };
    let mut stages = vec![
        spawn("windows", &["windows", "run"])?,
        spawn(
            "shards",
            &[
                "shards",
                "run",
                "--no-redact",
                "--no-entities",
                "--no-labels",
            ],
        )?,
        spawn("gate", &["gate", "run"])?,
    ];

    // One retrieval and its answer per tenant, spread over one hour of event time; then events
    // a day later on every partition, which move the watermark past every window of that hour.
    let sink = aion_kafka::Sink::new(&ctx.kafka, "bench")?;
    let start: chrono::DateTime<chrono::Utc> = "2026-11-01T00:00:00Z".parse()?;
    let generated = Generator::new(TrafficConfig {
        seed: 7,
        tenants: vec!["tenant".into()],
        count: 2 * tenants,
        start,
        span: chrono::Duration::hours(1),
        scenario: Scenario::Steady,
        invalid_fraction: 0.0,
        late_fraction: 0.0,
    });
    let published = Instant::now();
    for (i, p) in generated.enumerate() {
        let tenant = format!("t{:06}", i / 2);
        let mut event: serde_json::Value = serde_json::from_slice(&p.bytes)?;
        event["tenant_id"] = serde_json::Value::from(tenant.as_str());
        sink.send(
            p.topic,
            Some(tenant.as_bytes()),
            &serde_json::to_vec(&event)?,
            None,
            None,
        )
        .await?;
        if i % 1000 == 0 {
            sample(&mut stages);
        }
    }
    let closers = Generator::new(TrafficConfig {
        seed: 8,
        tenants: (0..32).map(|k| format!("closer-{k:02}")).collect(),
        count: 256,
        start: start + chrono::Duration::hours(26),
        span: chrono::Duration::minutes(10),
        scenario: Scenario::Steady,
        invalid_fraction: 0.0,
        late_fraction: 0.0,
    });
    for p in closers {
        sink.send(p.topic, Some(p.key.as_bytes()), &p.bytes, None, None)
            .await?;
    }
    sink.flush(Duration::from_secs(300))?;
    let publish_secs = published.elapsed().as_secs_f64();
    let published = Instant::now();

    let shards_root = state.join("shards");
    let deadline = published + Duration::from_secs(args.timeout_secs);
    let (mut windows_secs, mut shards_secs) = (None, None);
    let (mut windows_done, mut shards_done) = (0, 0);
    while (windows_secs.is_none() || shards_secs.is_none()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        sample(&mut stages);
        for stage in &mut stages {
            if let Some(status) = stage.child.try_wait()? {
                let log = std::fs::read_to_string(state.join(format!("{}.log", stage.name)))
                    .unwrap_or_default();
                bail!("the {} stage exited ({status}):\n{log}", stage.name);
            }
        }
        windows_done = aion_kafka::topic_records(&ctx.kafka, aion_events::topics::METRICS)?;
        if windows_secs.is_none() && windows_done >= i64::try_from(WINDOWS_PER_TENANT * tenants)? {
            windows_secs = Some(published.elapsed().as_secs_f64());
        }
        shards_done =
            aion_shards::read_manifest(&shards_root).map_or(0, |m| m.iter().map(|e| e.rows).sum());
        if shards_secs.is_none() && shards_done as u64 >= tenants {
            shards_secs = Some(published.elapsed().as_secs_f64());
        }
    }
    let peaks = stages.iter().map(|s| (s.name, s.peak)).collect();
    drop(stages);
    std::fs::remove_dir_all(&state).ok();
    Ok(Run {
        tenants,
        publish_secs,
        windows_secs,
        windows_done,
        shards_secs,
        shards_done,
        peaks,
    })
}

fn sample(stages: &mut [Stage]) {
    for stage in stages {
        let pid = stage.child.id();
        stage.peak.sample(pid);
    }
}
