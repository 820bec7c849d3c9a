//! `aion shards run`: the training-shard writer (and the entity-mention and labels tables).

use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use aion_events::layout::Table;
use aion_shards::redact::{EntityFinder, Span};
use aion_shards::{CompactPolicy, JoinOptions, Remote, RollPolicy, ShardOptions, Stats};
use anyhow::Result;
use tokio_util::sync::CancellationToken;

use crate::Context;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Root of the shard table (default: `<state dir>/shards`).
    #[arg(long, env = "AION_SHARDS_DIR", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Roll a file at this many rows.
    #[arg(long, default_value_t = RollPolicy::default().max_rows)]
    pub max_rows: usize,
    /// Roll a file at this many bytes of text.
    #[arg(long, default_value_t = RollPolicy::default().max_bytes)]
    pub max_bytes: usize,
    /// Roll a file this many seconds after its first row.
    #[arg(long, default_value_t = RollPolicy::default().max_age.as_secs())]
    pub max_age_secs: u64,
    /// Root of the entity-mention table written from `retrieval.enriched.v1` (default:
    /// `<state dir>/entities`); the source of the entity heatmap.
    #[arg(long, env = "AION_ENTITIES_DIR", value_name = "DIR")]
    pub entities_dir: Option<PathBuf>,
    /// Do not consume `retrieval.enriched.v1` (no enricher runs).
    #[arg(long)]
    pub no_entities: bool,
    /// Root of the `labels` table written from `labels.v1` (default: `<state dir>/labels`).
    #[arg(long, env = "AION_LABELS_DIR", value_name = "DIR")]
    pub labels_dir: Option<PathBuf>,
    /// Do not consume `labels.v1`.
    #[arg(long)]
    pub no_labels: bool,
    /// Write prompts and replies unredacted (only for data known to carry no personal data).
    #[arg(long)]
    pub no_redact: bool,
    /// Token-classification model that finds the names to redact in every answer's prompt and
    /// reply (default: the enricher's offline model, `$AION_CACHE_DIR/models/rampart-1.4.0`).
    #[arg(long, env = "AION_NER_MODEL", value_name = "DIR")]
    pub ner_model: Option<PathBuf>,
    /// Seconds an answer waits for its enriched retrieval (for the row's nDCG and entities)
    /// before it is written without them; 0 disables the join. Redaction never waits for it.
    #[arg(long, default_value_t = JoinOptions::default().wait.as_secs())]
    pub join_wait_secs: u64,
    /// Also copy both tables to object storage: `s3://bucket/prefix` (credentials, region and
    /// endpoint from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT) or
    /// `file:///dir`. A file's offsets are stored only once its copy is uploaded.
    #[arg(long, env = "AION_SHARDS_REMOTE", value_name = "URL")]
    pub remote: Option<String>,
    /// Window pipeline whose nDCG cut-off and gain the rows use (default: the embedded one).
    #[arg(long, value_name = "FILE")]
    pub pipeline: Option<PathBuf>,
}

pub fn options(ctx: &Context, args: RunArgs) -> Result<ShardOptions> {
    let windows = super::windows::load(args.pipeline.as_deref())?;
    Ok(ShardOptions {
        kafka: ctx.kafka.clone(),
        group_id: ctx.group("shards"),
        topic: aion_events::topics::ANSWER.to_owned(),
        root: args.dir.unwrap_or_else(|| ctx.state().table(Table::Shards)),
        entities: (!args.no_entities).then(|| {
            (
                aion_events::topics::RETRIEVAL_ENRICHED.to_owned(),
                args.entities_dir
                    .unwrap_or_else(|| ctx.state().table(Table::Entities)),
            )
        }),
        labels: (!args.no_labels).then(|| {
            (
                aion_events::topics::LABELS.to_owned(),
                args.labels_dir
                    .unwrap_or_else(|| ctx.state().table(Table::Labels)),
            )
        }),
        policy: RollPolicy {
            max_rows: args.max_rows.max(1),
            max_bytes: args.max_bytes.max(1),
            max_age: Duration::from_secs(args.max_age_secs),
        },
        remote: args.remote.as_deref().map(Remote::parse).transpose()?,
        join: JoinOptions {
            wait: Duration::from_secs(args.join_wait_secs),
            ndcg_k: windows.ndcg.k,
            ndcg_gain: windows.ndcg.gain,
            ..JoinOptions::default()
        },
        redact: !args.no_redact,
        finder: if args.no_redact {
            None
        } else {
            Some(Arc::new(NerFinder::load(
                &args.ner_model.unwrap_or_else(super::enrich::default_model),
            )?))
        },
        decode: ctx.decode_limits(),
    })
}

/// The enricher's NER model as the shard stage's name finder ([`aion_ner::NameFinder`]: recall
/// over precision).
#[derive(Debug)]
struct NerFinder(aion_ner::NameFinder);

impl NerFinder {
    fn load(dir: &std::path::Path) -> Result<Self> {
        if !dir.join("model.safetensors").is_file() {
            anyhow::bail!(
                "no NER model at {}: the shard stage finds the names to redact with it \
                 (scripts/setup converts the offline one; --ner-model DIR for another, \
                 --no-redact only for data without personal data)",
                dir.display()
            );
        }
        // f32: redaction is where a missed name leaks, so it keeps the shipped model's results.
        let model = aion_ner::TokenClassifier::load(
            dir,
            &candle_core::Device::Cpu,
            aion_ner::Precision::F32,
        )?;
        Ok(Self(aion_ner::NameFinder::new(model)))
    }
}

impl EntityFinder for NerFinder {
    fn find(&self, texts: &[&str]) -> std::result::Result<Vec<Vec<Span>>, String> {
        let found = self.0.find(texts, 16).map_err(|e| e.to_string())?;
        Ok(found
            .into_iter()
            .map(|entities| {
                entities
                    .into_iter()
                    .map(|e| (e.label, e.start, e.end))
                    .collect()
            })
            .collect())
    }
}

pub async fn run(args: RunArgs, ctx: &Context, stop: CancellationToken) -> Result<()> {
    Ok(aion_shards::run(&options(ctx, args)?, stop, &Stats::default()).await?)
}

#[derive(Debug, clap::Args)]
pub struct CompactArgs {
    /// Root of a table to compact; repeat for several (default: `shards`, `entities` and
    /// `labels` under the state dir).
    #[arg(long = "dir", value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
    /// Rows a compacted file holds at most; files this large are left as they are.
    #[arg(long, default_value_t = CompactPolicy::default().target_rows)]
    pub target_rows: usize,
    /// Merge a (partition, tenant, day)'s files only when at least this many are in a run.
    #[arg(long, default_value_t = CompactPolicy::default().min_files)]
    pub min_files: usize,
    /// Seconds replaced files stay after their replacement is committed, for queries and
    /// training jobs that listed them before.
    #[arg(long, default_value_t = CompactPolicy::default().grace.as_secs())]
    pub grace_secs: u64,
    /// Run a pass every this many seconds until stopped (0: one pass, then exit).
    #[arg(long, default_value_t = 0)]
    pub every_secs: u64,
    /// The tables' copy on object storage (as `shards run --remote`): a compacted file is
    /// uploaded before the manifest line that commits it.
    #[arg(long, env = "AION_SHARDS_REMOTE", value_name = "URL")]
    pub remote: Option<String>,
}

pub async fn compact(args: CompactArgs, ctx: &Context, stop: CancellationToken) -> Result<()> {
    let dirs = if args.dirs.is_empty() {
        [
            "shards",
            aion_api::tables::ENTITIES_TABLE,
            aion_api::tables::LABELS_TABLE,
        ]
        .iter()
        .map(|t| ctx.state_dir.join(t))
        .collect()
    } else {
        args.dirs
    };
    let policy = CompactPolicy {
        target_rows: args.target_rows.max(1),
        min_files: args.min_files,
        grace: Duration::from_secs(args.grace_secs),
    };
    let remote = args.remote.as_deref().map(Remote::parse).transpose()?;
    loop {
        for dir in &dirs {
            // Each table's copy sits under its local directory's name, as `shards run` puts it.
            let copy = remote
                .as_ref()
                .zip(dir.file_name())
                .map(|(r, name)| r.table(&name.to_string_lossy()));
            let done = aion_shards::compact(dir, &policy, copy.as_ref()).await?;
            println!(
                "{}: {} files merged into {} ({} rows), {} deleted",
                dir.display(),
                done.replaced,
                done.written,
                done.rows,
                done.deleted
            );
        }
        if args.every_secs == 0 {
            return Ok(());
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(args.every_secs)) => {}
            () = stop.cancelled() => return Ok(()),
        }
    }
}
