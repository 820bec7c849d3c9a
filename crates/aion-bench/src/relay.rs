//! `aion-bench relay`: decode/validate speed and broker throughput against a bare consumer.

use std::time::{Duration, Instant};

use aion_events::topics::SchemaId;
use std::sync::Arc;

use aion_kafka::{KafkaConfig, Reader, Sink};
use aion_traffic::{Generator, Scenario, TrafficConfig};
use anyhow::{bail, Result};
use tokio_util::sync::CancellationToken;

use aion_runtime::relay;

use aion_cli::Context;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Events per measurement.
    #[arg(long, default_value_t = 60_000)]
    pub events: u64,
    /// Benchmark the brokers from the configuration instead of a fresh local broker.
    #[arg(long)]
    pub configured_brokers: bool,
}

/// `count` retrievals and the `count` answers that follow them, as the generator publishes them.
fn payloads(count: u64) -> Vec<aion_traffic::Payload> {
    let traffic = TrafficConfig {
        seed: 1,
        tenants: vec!["acme".into(), "globex".into(), "initech".into()],
        count: count * 2,
        start: chrono::Utc::now() - chrono::Duration::hours(48),
        span: chrono::Duration::hours(48),
        scenario: Scenario::Steady,
        invalid_fraction: 0.0,
        late_fraction: 0.0,
    };
    Generator::new(traffic).collect()
}

/// Decode + validate throughput of `payloads` on this thread, events/s.
fn decode_rate(
    payloads: &[&aion_traffic::Payload],
    limits: &aion_events::DecodeLimits,
) -> Result<f64> {
    let t = Instant::now();
    for p in payloads {
        let Some(schema) = SchemaId::from_name(p.topic) else {
            bail!("no schema for generated topic {}", p.topic);
        };
        if let Err(r) = schema.check(&p.bytes, limits) {
            bail!("generated {} event rejected: {r}", p.topic);
        }
    }
    Ok(rate(payloads.len() as u64, t.elapsed()))
}

use crate::rate;

pub async fn run(args: Args, ctx: &Context) -> Result<()> {
    let n = args.events;
    let mixed = payloads(n);
    let retrievals: Vec<&aion_traffic::Payload> = mixed
        .iter()
        .filter(|p| p.topic == aion_events::topics::RETRIEVAL)
        .collect();
    let answers: Vec<&aion_traffic::Payload> = mixed
        .iter()
        .filter(|p| p.topic == aion_events::topics::ANSWER)
        .collect();
    let mean = |ps: &[&aion_traffic::Payload]| {
        ps.iter().map(|p| p.bytes.len()).sum::<usize>() / ps.len().max(1)
    };
    println!(
        "{} retrieval events (mean {} bytes), {} answer events (mean {} bytes)",
        retrievals.len(),
        mean(&retrievals),
        answers.len(),
        mean(&answers)
    );

    // Decode + validate on one core: each schema alone, and the stream as applications publish it
    // (every retrieval followed by its answer).
    let limits = ctx.decode_limits();
    let decode_retrieval = decode_rate(&retrievals, &limits)?;
    let decode_answer = decode_rate(&answers, &limits)?;
    let decode_mixed = decode_rate(&mixed.iter().collect::<Vec<_>>(), &limits)?;

    // Through the broker: publish once, then read with a bare consumer and with the relay.
    let (ctx, _broker, run_id) = crate::bench_context(ctx, args.configured_brokers)?;
    let input = format!("bench.{run_id}");
    aion_cli::commands::topics::create(
        &ctx,
        &[
            input.clone(),
            format!("{input}.out"),
            format!("{input}.dlq"),
        ],
        None,
        None,
    )
    .await?;

    let sink = Sink::new(&ctx.kafka, "bench")?;
    let t = Instant::now();
    for (i, e) in retrievals.iter().enumerate() {
        sink.send(&input, Some(i.to_string().as_bytes()), &e.bytes, None, None)
            .await?;
    }
    sink.flush(Duration::from_secs(120))?;
    let produce = rate(n, t.elapsed());

    let kafka = ctx.kafka.clone();
    let topic = input.clone();
    let bare = tokio::task::spawn_blocking(move || -> Result<f64> {
        let reader = Reader::new(&kafka, &[&topic], true)?;
        let t = Instant::now();
        let mut read = 0u64;
        let mut payload_bytes = 0usize;
        while read < n {
            match reader.next(Duration::from_secs(10))? {
                Some(r) => {
                    payload_bytes += r.payload.len();
                    read += 1;
                }
                None => bail!("bare consumer stalled after {read} records"),
            }
        }
        std::hint::black_box(payload_bytes);
        Ok(rate(n, t.elapsed()))
    })
    .await??;

    // The relay writes as well as reads. It runs twice: writing to a second broker, so that it
    // reads from a broker as idle as the bare consumer's (the processor's own cost), and writing to
    // the broker it reads from. The local SQLite-backed broker slows down, and can stall its group
    // coordinator, under concurrent writes and reads; a stall is reported, not hidden.
    let _output_broker;
    let separate = if args.configured_brokers {
        None
    } else {
        let broker = aion_broker::Broker::start_temporary()?;
        let mut out_ctx = ctx.clone();
        out_ctx.kafka.brokers = broker.bootstrap();
        aion_cli::commands::topics::create(
            &out_ctx,
            &[format!("{input}.out"), format!("{input}.dlq")],
            None,
            None,
        )
        .await?;
        _output_broker = broker;
        Some(relay_rate(&ctx, &out_ctx.kafka, &input, n, "separate").await)
    };
    let same = relay_rate(&ctx, &ctx.kafka, &input, n, "same").await;

    println!();
    println!("| measurement                                   | events/s   | reference            | ratio  |");
    println!("|-----------------------------------------------|-----------:|----------------------|-------:|");
    for (label, r) in [
        ("decode + validate retrieval.v1, 1 core", decode_retrieval),
        ("decode + validate answer.v1, 1 core", decode_answer),
        ("decode + validate, the published mix, 1 core", decode_mixed),
    ] {
        println!(
            "| {label:<45} | {r:>10.0} | target 500000        | {:>5.2}x |",
            r / 500_000.0
        );
    }
    println!("| produce (acks=all, idempotent)                | {produce:>10.0} |                      |        |");
    println!("| bare rdkafka consumer (physical limit)        | {bare:>10.0} | -                    |        |");
    let row = |label: &str, result: &Result<f64>| match result {
        Ok(r) => println!(
            "| {label:<45} | {r:>10.0} | bare consumer {bare:>6.0} | {:>5.0}% |",
            100.0 * r / bare
        ),
        Err(e) => println!("| {label:<45} | {:>10} | {e} |", "-"),
    };
    if let Some(separate) = &separate {
        row("relay, output to a second broker", separate);
    }
    row("relay, output to the broker it reads from", &same);
    println!();
    println!("target: decode+validate >= 500000/s per core; relay >= 80% of the bare consumer");
    Ok(())
}

/// Relay throughput over `input` (consume, decode, validate, produce, ack, commit), timed from its
/// first record to its final commit: it joins a consumer group, the bare consumer does not.
async fn relay_rate(
    ctx: &Context,
    output: &KafkaConfig,
    input: &str,
    n: u64,
    run: &str,
) -> Result<f64> {
    let mut ctx = ctx.clone();
    ctx.config.kafka.group_prefix = format!("{}.{run}", ctx.config.kafka.group_prefix);
    let inputs = [relay::Input {
        topic: input.to_owned(),
        schema: SchemaId::Retrieval,
    }];
    let counts = Arc::new(aion_runtime::Counts::default());
    let stop = CancellationToken::new();
    let mut task = {
        let (counts, stop) = (counts.clone(), stop.clone());
        let (relay, mut plan) = relay::Relay::new(
            inputs.to_vec(),
            "out",
            ctx.group("relay"),
            Some(n),
            stop.clone(),
        );
        plan.decode = ctx.decode_limits();
        plan.output_cluster = Some(output.clone());
        tokio::spawn(
            async move { aion_runtime::run(&ctx.kafka, &plan, relay, stop, &counts).await },
        )
    };
    let mut first = None;
    let mut last_progress = (0, Instant::now());
    loop {
        tokio::select! {
            r = &mut task => { r??; break; }
            () = tokio::time::sleep(Duration::from_millis(1)) => {}
        }
        let received = counts.received();
        if received > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        if received != last_progress.0 {
            last_progress = (received, Instant::now());
        } else if last_progress.1.elapsed() > Duration::from_secs(60) {
            stop.cancel();
            bail!("relay stalled after {received} records");
        }
    }
    Ok(rate(
        counts.sent(),
        first.map_or(Duration::ZERO, |t| t.elapsed()),
    ))
}
