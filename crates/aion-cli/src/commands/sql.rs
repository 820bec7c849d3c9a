//! `aion sql`: DataFusion SQL over the Parquet tables the stages write, for analysts.

use std::path::PathBuf;

use aion_api::tables::session;
use anyhow::{bail, Context as _, Result};
use clap::ValueEnum;
use datafusion::arrow::array::RecordBatch;

use crate::Context;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// Aligned text table.
    Table,
    /// CSV with a header row.
    Csv,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The query. `@FILE` reads it from a file (e.g. `@pipelines/windows.sql`), `-` from standard
    /// input. Tables: `metrics` (closed windows' aggregates), `window_history` (each counted event
    /// once), `shards` (training rows, PII redacted),
    /// `entities` (one row per term of each enriched retrieval; `@pipelines/entity_heatmap.sql`)
    /// and the view `window_events` (the windows' input, as `pipelines/windows.sql` reads
    /// it); `date`, and `tenant_id` where it is not a column, come from the directory names.
    pub query: String,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Where the tables are (default: the state dir, as `aion windows run` writes them).
    #[arg(long, env = "AION_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

pub async fn run(args: Args, ctx: &Context) -> Result<()> {
    let query = match args.query.as_str() {
        "-" => std::io::read_to_string(std::io::stdin()).context("reading the query")?,
        q => match q.strip_prefix('@') {
            Some(file) => {
                std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?
            }
            None => q.to_owned(),
        },
    };
    let data_dir = args.data_dir.unwrap_or_else(|| ctx.state_dir.clone());
    let session = session(&data_dir).await?;
    let frame = match session.sql(&query).await {
        Ok(f) => f,
        Err(e) => {
            let tables: Vec<String> = session
                .catalog_names()
                .into_iter()
                .flat_map(|c| {
                    let c = session.catalog(&c);
                    c.into_iter().flat_map(|c| {
                        c.schema_names()
                            .into_iter()
                            .filter_map(move |s| c.schema(&s))
                            .flat_map(|s| s.table_names())
                    })
                })
                .filter(|t| !t.starts_with("information_schema") && t != "tables")
                .collect();
            bail!(
                "{e}\n(tables with data under {}: {})",
                data_dir.display(),
                if tables.is_empty() {
                    "none".into()
                } else {
                    tables.join(", ")
                }
            );
        }
    };
    let batches: Vec<RecordBatch> = frame.collect().await?;
    print(args.format, &batches)
}

/// Writes `batches` to standard output in `format`.
pub fn print(format: Format, batches: &[RecordBatch]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        Format::Table => {
            use std::io::Write;
            let text = datafusion::arrow::util::pretty::pretty_format_batches(batches)?;
            writeln!(out, "{text}")?;
        }
        Format::Csv => {
            let mut w = datafusion::arrow::csv::Writer::new(out);
            for b in batches {
                w.write(b)?;
            }
        }
        Format::Json => {
            let mut w = datafusion::arrow::json::LineDelimitedWriter::new(out);
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
        }
    }
    Ok(())
}
