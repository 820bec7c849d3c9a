//! `aion models`: where the enricher's model comes from when it is not the offline one.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum Action {
    /// Download a token-classification model (config.json with id2label, model.safetensors,
    /// tokenizer.json) from the Hugging Face hub; `$HF_ENDPOINT` for a mirror, `$HF_TOKEN` for
    /// gated repositories. The model is loaded once before it is moved into place. Needs network:
    /// offline, the model `scripts/setup` installs is the one to use.
    Pull(PullArgs),
}

#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// Hub repository, `owner/name` (e.g. `dslim/bert-base-NER`).
    pub repo: String,
    /// Branch, tag or commit.
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// Target directory (default: `$AION_CACHE_DIR/models/<owner>--<name>`); use it with
    /// `aion enrich run --model`.
    #[arg(long, value_name = "DIR")]
    pub dest: Option<PathBuf>,
}

pub async fn run(action: Action) -> Result<()> {
    match action {
        Action::Pull(args) => {
            let dest = args.dest.unwrap_or_else(|| {
                aion_broker::cache_dir()
                    .join("models")
                    .join(args.repo.replace('/', "--"))
            });
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let dir = aion_ner::pull(
                &aion_ner::Hub::from_env(),
                &args.repo,
                &args.revision,
                &dest,
            )
            .await?;
            println!("{}", dir.display());
            Ok(())
        }
    }
}
