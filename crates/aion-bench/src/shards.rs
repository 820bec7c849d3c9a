//! `aion-bench shards`: shard rows written per CPU-second (redaction, Arrow, zstd Parquet, fsync,
//! rename, manifest) next to pyarrow writing the same rows to the same layout.

use std::time::Instant;

use aion_shards::redact::Redactor;
use aion_shards::{RollPolicy, ShardWriter, TrainingRow};
use aion_traffic::{Generator, Scenario, TrafficConfig};
use anyhow::{bail, Context as _, Result};

use crate::cpu_seconds;
use aion_cli::Context;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Answer rows to write.
    #[arg(long, default_value_t = 300_000)]
    pub rows: u64,
    /// Python with pyarrow for the reference (default: the checks' venv from scripts/setup).
    #[arg(long, env = "AION_BENCH_PYTHON")]
    pub python: Option<std::path::PathBuf>,
}

pub async fn run(args: Args, ctx: &Context) -> Result<()> {
    let answers: Vec<aion_events::AnswerEvent> = Generator::new(TrafficConfig {
        seed: 8,
        tenants: vec!["acme".into(), "globex".into(), "initech".into()],
        count: args.rows * 2,
        start: "2026-11-01T00:00:00Z".parse()?,
        span: chrono::Duration::hours(72),
        scenario: Scenario::Steady,
        invalid_fraction: 0.0,
        late_fraction: 0.0,
    })
    .filter(|p| p.topic == aion_events::topics::ANSWER)
    .map(|p| serde_json::from_slice(&p.bytes))
    .collect::<Result<_, _>>()?;
    let dir = ctx
        .state_dir
        .join(format!("bench-shards-{}", std::process::id()));
    let policy = RollPolicy {
        max_rows: 100_000,
        ..RollPolicy::default()
    };
    let measure = |redact: bool, sub: &str| -> Result<(f64, usize)> {
        let root = dir.join(sub);
        let mut w: ShardWriter<TrainingRow, ()> =
            ShardWriter::open(&root, policy.clone(), redact.then(Redactor::new))?;
        let (cpu, t) = (cpu_seconds(), Instant::now());
        for (i, a) in answers.iter().enumerate() {
            let row = TrainingRow {
                answer: a.clone(),
                retrieval: None,
            };
            w.push(0, i as i64, row, ());
            if (i + 1) % 10_000 == 0 {
                w.roll(t, false)?;
            }
        }
        let (_, entries) = w.roll(t, true)?;
        let files = aion_shards::read_manifest(&root)?.len();
        drop(entries);
        Ok((
            answers.len() as f64 / (cpu_seconds() - cpu).max(0.01),
            files,
        ))
    };
    let (plain, files) = measure(false, "plain")?;
    let (redacted, _) = measure(true, "redacted")?;

    // The same rows (already redacted, as the shards hold them) for pyarrow.
    let rows_path = dir.join("rows.jsonl");
    let mut lines = String::new();
    for (i, a) in answers.iter().enumerate() {
        lines += &serde_json::to_string(&serde_json::json!({
            "tenant_id": a.tenant_id, "date": a.ts.format("%Y-%m-%d").to_string(),
            "event_id": a.event_id, "ts": a.ts.to_rfc3339(), "instruction": a.prompt,
            "response": a.reply, "confidence": a.confidence, "fallback": a.fallback,
            "provider": a.provider, "model": a.model, "latency_ms": a.latency_ms,
            "retrieval_event_id": a.retrieval_event_id, "source_partition": 0, "source_offset": i,
        }))?;
        lines.push('\n');
    }
    std::fs::write(&rows_path, lines)?;
    let python = crate::reference_python(args.python);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts/checks/shards_pyarrow_bench.py");
    let out = std::process::Command::new(&python)
        .arg(&script)
        .arg(&rows_path)
        .arg(dir.join("pyarrow"))
        .output()
        .with_context(|| format!("running {} (scripts/setup installs it)", python.display()))?;
    if !out.status.success() {
        bail!(
            "pyarrow reference failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let reference: f64 = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .context("reading the pyarrow rate")?;
    std::fs::remove_dir_all(&dir).ok();

    println!();
    println!("| measurement ({} rows, {files} files)                 | rows per CPU-second | vs pyarrow | target   |", answers.len());
    println!("|------------------------------------------------------|--------------------:|-----------:|----------|");
    println!("| aion shard writer, redaction off                     | {plain:>19.0} | {:>9.2}x | >= 100000 |", plain / reference);
    println!("| aion shard writer, redaction on (the default)        | {redacted:>19.0} | {:>9.2}x | >= 100000 |", redacted / reference);
    println!("| pyarrow write_dataset, same rows and layout, zstd    | {reference:>19.0} |      1.00x |          |");
    Ok(())
}
