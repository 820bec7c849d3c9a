//! `aion models pull`: a token-classification model from the Hugging Face hub (or a mirror at
//! `$HF_ENDPOINT`), streamed to a hidden directory, loaded once to prove it works, then renamed
//! into place — a failed or interrupted pull never leaves a half model where the enricher looks.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use candle_core::Device;
use futures::StreamExt;
use object_store::http::HttpBuilder;
use object_store::{ClientOptions, HeaderMap, HeaderValue, ObjectStoreExt, RetryConfig};

use crate::{Error, Precision, Result, TokenClassifier};

/// What a token-classification directory needs; the optional files are fetched when present.
const REQUIRED: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];
const OPTIONAL: [&str; 3] = [
    "tokenizer_config.json",
    "special_tokens_map.json",
    "LICENSE",
];

/// Where a pull comes from.
#[derive(Debug, Clone)]
pub struct Hub {
    /// `https://huggingface.co` unless `$HF_ENDPOINT` says otherwise.
    pub endpoint: String,
    /// `$HF_TOKEN`, for gated or private repositories.
    pub token: Option<String>,
}

impl Hub {
    pub fn from_env() -> Self {
        Self {
            endpoint: std::env::var("HF_ENDPOINT")
                .unwrap_or_else(|_| "https://huggingface.co".into()),
            token: std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()),
        }
    }
}

fn pull_error(repo: &str, message: impl std::fmt::Display) -> Error {
    Error::Load {
        path: repo.to_owned(),
        message: message.to_string(),
    }
}

/// Downloads `repo` at `revision` into `dest` and returns it. `repo` is `owner/name`.
pub async fn pull(hub: &Hub, repo: &str, revision: &str, dest: &Path) -> Result<PathBuf> {
    let valid = |part: &str| {
        !part.is_empty()
            && part != ".."
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    match repo.split_once('/') {
        Some((owner, name)) if valid(owner) && valid(name) && valid(revision) => {}
        _ => {
            return Err(pull_error(
                repo,
                "expected a hub repository as owner/name (and a plain revision)",
            ))
        }
    }
    let mut headers = HeaderMap::new();
    if let Some(token) = &hub.token {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| pull_error(repo, "HF_TOKEN is not a valid header value"))?;
        headers.insert("authorization", value);
    }
    let base = format!(
        "{}/{repo}/resolve/{revision}",
        hub.endpoint.trim_end_matches('/')
    );
    let store = HttpBuilder::new()
        .with_url(&base)
        // Offline should fail in seconds, not after the default three minutes of retries.
        .with_retry(RetryConfig {
            max_retries: 2,
            retry_timeout: Duration::from_secs(20),
            ..RetryConfig::default()
        })
        .with_client_options(
            ClientOptions::new()
                .with_allow_http(base.starts_with("http://"))
                .with_connect_timeout(Duration::from_secs(10))
                .with_default_headers(headers),
        )
        .build()
        .map_err(|e| pull_error(repo, e))?;
    let staging = dest.with_file_name(format!(
        ".{}.pulling",
        dest.file_name().and_then(|n| n.to_str()).unwrap_or("model")
    ));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| pull_error(repo, e))?;
    for (file, required) in REQUIRED
        .iter()
        .map(|f| (f, true))
        .chain(OPTIONAL.iter().map(|f| (f, false)))
    {
        let got = match store.get(&object_store::path::Path::from(*file)).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) if !required => continue,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(pull_error(
                    repo,
                    format!("{base}/{file} does not exist: not a token-classification model with safetensors weights and a tokenizer.json"),
                ))
            }
            Err(e) => {
                return Err(pull_error(
                    repo,
                    format!("could not fetch {base}/{file} (offline? the offline model comes from scripts/setup): {e}"),
                ))
            }
        };
        let mut out = std::fs::File::create(staging.join(file)).map_err(|e| pull_error(repo, e))?;
        let mut stream = got.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| pull_error(repo, format!("{file}: {e}")))?;
            out.write_all(&chunk).map_err(|e| pull_error(repo, e))?;
        }
        out.sync_all().map_err(|e| pull_error(repo, e))?;
    }
    TokenClassifier::load(&staging, &Device::Cpu, Precision::F32)?;
    let _ = std::fs::remove_dir_all(dest);
    std::fs::rename(&staging, dest).map_err(|e| pull_error(repo, e))?;
    Ok(dest.to_owned())
}
