//! `aion validate`: checks every stage definition in a pipelines directory before a deploy.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use datafusion::sql::parser::DFParser;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The pipelines directory (`windows.toml` + its SQL, `gate.toml`, analysts' `*.sql`).
    #[arg(default_value = "pipelines")]
    pub dir: PathBuf,
}

/// One file's verdict: a summary, or why it is wrong.
async fn check(path: &Path) -> Result<String> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    match name {
        "windows.toml" => {
            let config = aion_windows::WindowsConfig::load(path)?;
            aion_windows::Aggregator::new(&config.sql_text)
                .await
                .context("planning its aggregate SQL")?;
            Ok(format!(
                "windows {} → {}, aggregate SQL planned",
                config
                    .windows
                    .iter()
                    .map(|w| w.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                config.output_topic
            ))
        }
        "gate.toml" => {
            let config = aion_gate::GateConfig::load(path)?;
            config.settings.validate().map_err(anyhow::Error::msg)?;
            Ok(format!(
                "gate on {} → {}, τ_f {} τ_n {}",
                config.window,
                config.output_topic,
                config.settings.tau_fallback,
                config.settings.tau_ndcg
            ))
        }
        _ => {
            // Analysts' queries and views run against whatever tables hold data, so they are
            // checked for syntax here; `aion sql` plans them against the real tables.
            let text = std::fs::read_to_string(path)?;
            let statements = DFParser::parse_sql(&text)?;
            Ok(format!("{} SQL statement(s) parse", statements.len()))
        }
    }
}

pub async fn run(args: Args) -> Result<()> {
    let entries =
        std::fs::read_dir(&args.dir).with_context(|| format!("reading {}", args.dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml" || x == "sql"))
        .collect();
    files.sort();
    let mut failed = 0;
    for path in &files {
        match check(path).await {
            Ok(summary) => println!("ok      {}: {summary}", path.display()),
            Err(e) => {
                failed += 1;
                println!("invalid {}: {e:#}", path.display());
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} pipeline files are invalid", files.len());
    }
    Ok(())
}
