//! `aion ndcg`: per-event nDCG@k of a file of retrieval events, for analysts and reference checks.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;

use aion_events::ndcg::{ndcg, Gain};
use aion_events::{decode, RetrievalEvent};
use anyhow::{bail, Context as _, Result};
use clap::ValueEnum;
use serde_json::json;

use crate::Context;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GainName {
    /// gain = rel (trec_eval's default)
    Linear,
    /// gain = 2^rel − 1
    Exponential,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// JSON lines of `retrieval.v1` events (`-` for standard input).
    pub events: PathBuf,
    /// Cut-off: only the top k results count.
    #[arg(long, default_value_t = 10, env = "AION_NDCG_K")]
    pub k: usize,
    #[arg(long, value_enum, default_value_t = GainName::Linear, env = "AION_NDCG_GAIN")]
    pub gain: GainName,
}

/// Prints `{"event_id", "tenant_id", "ndcg"}` per event (`ndcg` is null for unjudged events).
/// Invalid lines are reported on stderr with their line number and fail the command at the end.
pub fn run(args: Args, ctx: &Context) -> Result<()> {
    if args.k == 0 {
        bail!("--k must be at least 1");
    }
    let gain = match args.gain {
        GainName::Linear => Gain::Linear,
        GainName::Exponential => Gain::Exponential,
    };
    let input: Box<dyn BufRead> = if args.events.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(&args.events)
            .with_context(|| format!("opening {}", args.events.display()))?;
        Box::new(BufReader::new(file))
    };
    let limits = ctx.decode_limits();
    let mut out = std::io::stdout().lock();
    let mut rejected = 0;
    for (i, line) in input.split(b'\n').enumerate() {
        let line = line?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match decode::<RetrievalEvent>(&line, &limits) {
            Ok(e) => {
                let score = ndcg(&e.results, e.judgments.as_deref(), args.k, gain);
                writeln!(
                    out,
                    "{}",
                    json!({"event_id": e.event_id, "tenant_id": e.tenant_id, "ndcg": score})
                )?;
            }
            Err(reject) => {
                eprintln!("line {}: {reject}", i + 1);
                rejected += 1;
            }
        }
    }
    if rejected > 0 {
        bail!("{rejected} invalid events");
    }
    Ok(())
}
