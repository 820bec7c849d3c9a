use std::io::Write;
use std::time::{Duration, Instant};

use aion_kafka::{RawRecord, Reader};
use anyhow::Result;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::Context;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Topic to print.
    pub topic: String,
    /// Start from the oldest record instead of new ones.
    #[arg(long)]
    pub from_beginning: bool,
    /// Stop after this many records.
    #[arg(long)]
    pub count: Option<usize>,
    /// Stop after this many seconds without a record.
    #[arg(long)]
    pub idle_secs: Option<u64>,
    /// Print only the payloads, one per line.
    #[arg(long)]
    pub values: bool,
}

fn text(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => Value::String(s.to_owned()),
        Err(_) => Value::String(String::from_utf8_lossy(bytes).into_owned()),
    }
}

/// A record as one JSON object; a JSON payload is embedded as JSON, anything else as text.
fn render(r: &RawRecord) -> Value {
    let value = serde_json::from_slice::<Value>(&r.payload).unwrap_or_else(|_| text(&r.payload));
    let headers: serde_json::Map<String, Value> = r
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), text(v)))
        .collect();
    json!({
        "partition": r.partition,
        "offset": r.offset,
        "key": r.key.as_deref().map(text),
        "headers": headers,
        "value": value,
    })
}

pub async fn run(args: Args, ctx: &Context, stop: CancellationToken) -> Result<()> {
    let kafka = ctx.kafka.clone();
    let printed = tokio::task::spawn_blocking(move || -> Result<()> {
        let reader = Reader::new(&kafka, &[&args.topic], args.from_beginning)?;
        let mut out = std::io::stdout().lock();
        let (mut printed, mut last) = (0usize, Instant::now());
        while !stop.is_cancelled() && args.count.is_none_or(|c| printed < c) {
            match reader.next(Duration::from_millis(200))? {
                Some(r) => {
                    if args.values {
                        out.write_all(&r.payload)?;
                        out.write_all(b"\n")?;
                    } else {
                        writeln!(out, "{}", render(&r))?;
                    }
                    printed += 1;
                    last = Instant::now();
                }
                None if args
                    .idle_secs
                    .is_some_and(|s| last.elapsed() >= Duration::from_secs(s)) =>
                {
                    break
                }
                None => {}
            }
        }
        Ok(())
    })
    .await?;
    match printed {
        // The reader of our output went away (`aion tail … | head`): done, not an error.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other,
    }
}
