//! The `aion` command line as a library: the global settings ([`Globals`] → [`Context`]), the
//! process set-up every AION binary shares ([`run`]) and the subcommands ([`Cli`]). The `aion`
//! binary parses [`Cli`]; the benchmarks' binary (`aion-bench`) takes the same [`Globals`].

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod commands;
mod config;
mod observe;

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use tracing_subscriber::EnvFilter;

pub use crate::commands::shutdown_signal;
use crate::config::Config;

// Every stage decodes JSON into many small strings; mimalloc makes those allocations cheaper than
// the system allocator (measured: +5 % decode throughput).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// AION Stream: lets a self-hosted RAG assistant improve itself from its own traffic.
///
/// Applications publish `retrieval.v1` and `answer.v1` events to Kafka; the stages run by this
/// binary validate them, measure quality and feed training. Every setting can come from the TOML
/// file, an AION_* environment variable or a flag (flags win).
#[derive(Debug, Parser)]
#[command(name = "aion", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub globals: Globals,
    #[command(subcommand)]
    pub command: commands::Command,
}

/// The settings every command of every AION binary takes.
#[derive(Debug, clap::Args)]
pub struct Globals {
    /// TOML configuration file.
    #[arg(long, global = true, env = "AION_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers (overrides `kafka.brokers`).
    #[arg(
        long,
        global = true,
        env = "AION_BROKERS",
        value_name = "HOST:PORT,..."
    )]
    brokers: Option<String>,
    /// Prefix of consumer group ids (overrides `kafka.group_prefix`).
    #[arg(long, global = true, env = "AION_GROUP_PREFIX")]
    group_prefix: Option<String>,
    /// How stages get their partitions (overrides `kafka.assignment`): `group` shares them among a
    /// stage's processes through its consumer group; `all` reads every partition directly, for
    /// one process per stage.
    #[arg(long, global = true, env = "AION_KAFKA_ASSIGNMENT", value_parser = parse_assignment)]
    assignment: Option<aion_kafka::Assignment>,
    /// Largest accepted event payload in bytes (overrides `decode.max_bytes`); larger ones are
    /// dead-lettered unparsed.
    #[arg(
        long,
        global = true,
        env = "AION_DECODE_MAX_BYTES",
        value_name = "BYTES"
    )]
    decode_max_bytes: Option<usize>,
    /// Directory for local state: the development broker's storage, later shards and adapters.
    #[arg(long, global = true, env = "AION_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Serve `/metrics` (Prometheus; the metric table of docs/usage.md), `/healthz` (the process answers)
    /// and `/readyz` (its consumers have their partitions) on this address, e.g. `127.0.0.1:9464`.
    /// Off by default.
    #[arg(
        long,
        global = true,
        env = "AION_METRICS_ADDR",
        value_name = "HOST:PORT"
    )]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Log filter, e.g. `info` or `aion_kafka=debug,info` (default: `RUST_LOG`, else `info`).
    #[arg(long, global = true, env = "AION_LOG")]
    log: Option<String>,
    /// Log line format: `text` for people, `json` (one object per line) for log collectors.
    #[arg(long, global = true, env = "AION_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Settings resolved from defaults, file, environment and flags.
#[derive(Debug, Clone)]
pub struct Context {
    pub config: Config,
    pub kafka: aion_kafka::KafkaConfig,
    pub state_dir: PathBuf,
}

fn parse_assignment(s: &str) -> Result<aion_kafka::Assignment, String> {
    match s {
        "group" => Ok(aion_kafka::Assignment::Group),
        "all" => Ok(aion_kafka::Assignment::All),
        other => Err(format!(
            "`{other}` is not an assignment: use `group` or `all`"
        )),
    }
}

impl Context {
    fn resolve(cli: &Globals) -> Result<Self> {
        let mut config = Config::load(cli.config.as_deref())?;
        if let Some(b) = &cli.brokers {
            config.kafka.brokers = b.clone();
        }
        if let Some(p) = &cli.group_prefix {
            config.kafka.group_prefix = p.clone();
        }
        if let Some(a) = cli.assignment {
            config.kafka.assignment = a;
        }
        if let Some(b) = cli.decode_max_bytes {
            config.decode.max_bytes = b;
        }
        let mut kafka = aion_kafka::KafkaConfig::new(config.kafka.brokers.clone());
        kafka.properties = config.kafka.properties.clone();
        kafka.assignment = config.kafka.assignment;
        let state_dir = cli
            .state_dir
            .clone()
            .unwrap_or_else(config::default_state_dir);
        Ok(Self {
            config,
            kafka,
            state_dir,
        })
    }

    /// Consumer group of a stage.
    pub fn group(&self, stage: &str) -> String {
        format!("{}.{stage}", self.config.kafka.group_prefix)
    }

    pub fn decode_limits(&self) -> aion_events::DecodeLimits {
        aion_events::DecodeLimits {
            max_bytes: self.config.decode.max_bytes,
        }
    }

    /// What the state directory holds.
    pub fn state(&self) -> aion_events::layout::StateDir {
        aion_events::layout::StateDir::new(&self.state_dir)
    }

    pub fn broker_dir(&self) -> PathBuf {
        self.config
            .broker
            .data_dir
            .clone()
            .unwrap_or_else(|| self.state().broker())
    }
}

/// Sets up logging and the metrics endpoint from `globals`, resolves the [`Context`] and runs
/// `body` with it; the process's exit code, with the error (and each cause once) reported.
pub async fn run<F, Fut>(globals: &Globals, body: F) -> ExitCode
where
    F: FnOnce(Context) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let filter = globals
        .log
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".into());
    let filter = match EnvFilter::try_new(&filter) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: log filter {filter:?}: {e}");
            return ExitCode::from(2);
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match globals.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    if let Some(addr) = globals.metrics_addr {
        if let Err(e) = observe::serve(addr).await {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    }
    let result = match Context::resolve(globals) {
        Ok(ctx) => body(ctx).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match globals.log_format {
                // A log collector gets the reason as one more JSON line.
                LogFormat::Json => tracing::error!(error = %message(&e), "exiting"),
                LogFormat::Text => eprintln!("error: {}", message(&e)),
            }
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each said once: error types that already print their cause
/// (`path: cause`) would otherwise repeat it.
fn message(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.ends_with(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cause_its_error_already_prints_is_said_once() {
        let e = anyhow::Error::from(aion_events::durable::FileError {
            path: "/state/shards".into(),
            source: std::io::Error::other("Not a directory"),
        })
        .context("shard stage");
        assert_eq!(
            super::message(&e),
            "shard stage: /state/shards: Not a directory"
        );
    }
}
