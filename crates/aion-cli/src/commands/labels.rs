//! `aion labels import`: human labels from a labelling tool's JSON lines → `labels.v1`.

use std::path::PathBuf;
use std::time::Duration;

use aion_events::LabelEvent;
use aion_kafka::Sink;
use anyhow::{bail, Context as _, Result};
use clap::Subcommand;

use crate::Context;

/// At most this many invalid lines are listed; the count covers all.
const LISTED_ERRORS: usize = 20;

#[derive(Debug, Subcommand)]
pub enum Action {
    /// Validate every line of a JSON-lines file of `labels.v1` records, then publish them all
    /// (keyed by tenant id). One invalid line — named with its line number and field — and
    /// nothing is published: fix the file and import it again.
    Import(ImportArgs),
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// JSON lines, one label per line (blank lines are skipped).
    pub file: PathBuf,
    /// Topic to publish to.
    #[arg(long, default_value = aion_events::topics::LABELS)]
    pub topic: String,
}

/// Decodes every non-blank line; all of them or the list of what is wrong.
pub fn parse(text: &str, limits: &aion_events::DecodeLimits) -> Result<Vec<LabelEvent>> {
    let mut labels = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match aion_events::decode::<LabelEvent>(line.as_bytes(), limits) {
            Ok(label) => labels.push(label),
            Err(reject) => errors.push(format!("line {}: {reject}", i + 1)),
        }
    }
    if !errors.is_empty() {
        let listed: Vec<&str> = errors
            .iter()
            .take(LISTED_ERRORS)
            .map(String::as_str)
            .collect();
        bail!(
            "{} invalid line(s); nothing was published:\n{}{}",
            errors.len(),
            listed.join("\n"),
            if errors.len() > LISTED_ERRORS {
                "\n…"
            } else {
                ""
            }
        );
    }
    if labels.is_empty() {
        bail!("no labels in the file");
    }
    Ok(labels)
}

pub async fn run(action: Action, ctx: &Context) -> Result<()> {
    let Action::Import(args) = action;
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let labels =
        parse(&text, &ctx.decode_limits()).with_context(|| format!("{}", args.file.display()))?;
    let sink = Sink::new(&ctx.kafka, "labels")?;
    for label in &labels {
        let payload = serde_json::to_vec(label)?;
        sink.send(
            &args.topic,
            Some(label.tenant_id.as_bytes()),
            &payload,
            None,
            None,
        )
        .await?;
    }
    sink.flush(Duration::from_secs(60))
        .context("flushing the labels")?;
    let failed = sink.failed_deliveries();
    if failed > 0 {
        bail!(
            "{failed} of {} labels were not acknowledged by the broker; importing the file again is safe (the labels table keeps one row per item, labeller and time)",
            labels.len()
        );
    }
    println!("published {} labels to {}", labels.len(), args.topic);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bad_line_rejects_the_file_naming_every_bad_line() {
        let good = r#"{"event_id":"a-1","tenant_id":"acme","labelled_at":"2026-11-30T10:00:00Z","labeller":"ana","correct":true}"#;
        let no_label = r#"{"event_id":"a-2","tenant_id":"acme","labelled_at":"2026-11-30T10:00:00Z","labeller":"ana"}"#;
        let text = format!("{good}\n\n{no_label}\nnot json\n{good}\n");
        let err = parse(&text, &Default::default()).unwrap_err().to_string();
        assert!(
            err.starts_with("2 invalid line(s); nothing was published"),
            "{err}"
        );
        assert!(err.contains("line 3: .: a label needs"), "{err}");
        assert!(err.contains("line 4: "), "{err}");
        let ok = parse(&format!("{good}\n{good}\n"), &Default::default()).unwrap();
        assert_eq!(ok.len(), 2);
        assert!(parse("\n\n", &Default::default()).is_err());
    }
}
