//! `aion schemas register`: the topics' JSON Schemas into a schema registry, so producers that
//! serialize through one validate against the same contract the stages decode with.

use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::Subcommand;
use serde_json::{json, Value};

#[derive(Debug, Subcommand)]
pub enum Action {
    /// Register every topic's JSON Schema (embedded in the binary) with a schema registry speaking
    /// Confluent's REST API (Confluent, Redpanda, Karapace, Apicurio's ccompat): subject
    /// `<topic>-value`, its compatibility level set first; schemas that use retrieval.v1's
    /// definitions are registered with a reference to it. Registering an unchanged schema again
    /// returns its existing id. Prints each subject's id and version.
    Register(RegisterArgs),
}

#[derive(Debug, clap::Args)]
pub struct RegisterArgs {
    /// The registry's base URL, e.g. `http://registry:8081`.
    #[arg(long, env = "AION_SCHEMA_REGISTRY", value_name = "URL")]
    pub registry: String,
    /// `user:password` for HTTP basic authentication.
    #[arg(long, env = "AION_SCHEMA_REGISTRY_AUTH", hide_env_values = true)]
    pub auth: Option<String>,
    /// Compatibility level set on each subject before registering.
    #[arg(long, default_value = "BACKWARD")]
    pub compatibility: String,
}

pub async fn run(action: Action) -> Result<()> {
    let Action::Register(args) = action;
    let registry = Registry {
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
        base: args.registry.trim_end_matches('/').to_owned(),
        auth: args.auth,
    };
    let mut retrieval_version = None;
    for schema in aion_events::SCHEMA_FILES {
        let subject = format!("{}-value", schema.topic);
        registry
            .call(
                reqwest::Method::PUT,
                &format!("config/{subject}"),
                Some(json!({ "compatibility": args.compatibility })),
            )
            .await?;
        let references: Vec<Value> = match retrieval_version {
            Some(version) if schema.text.contains("\"retrieval.v1.schema.json#") => vec![json!({
                "name": "retrieval.v1.schema.json",
                "subject": "retrieval.v1-value",
                "version": version,
            })],
            _ => Vec::new(),
        };
        let registered = registry
            .call(
                reqwest::Method::POST,
                &format!("subjects/{subject}/versions"),
                Some(json!({ "schemaType": "JSON", "schema": schema.text, "references": references })),
            )
            .await?;
        let latest = registry
            .call(
                reqwest::Method::GET,
                &format!("subjects/{subject}/versions/latest"),
                None,
            )
            .await?;
        if schema.topic == aion_events::topics::RETRIEVAL {
            retrieval_version = latest["version"].as_i64();
        }
        println!(
            "{subject}\tid {}\tversion {}",
            registered["id"], latest["version"]
        );
    }
    Ok(())
}

struct Registry {
    client: reqwest::Client,
    base: String,
    auth: Option<String>,
}

impl Registry {
    /// One request; the registry's own message on an error status (e.g. 409: incompatible).
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let url = format!("{}/{path}", self.base);
        let mut request = self
            .client
            .request(method.clone(), &url)
            .header("Accept", "application/vnd.schemaregistry.v1+json");
        if let Some(auth) = &self.auth {
            let (user, password) = auth.split_once(':').unwrap_or((auth, ""));
            request = request.basic_auth(user, Some(password));
        }
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/vnd.schemaregistry.v1+json")
                .body(serde_json::to_vec(&body)?);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .with_context(|| format!("{method} {url}"))?;
        if !status.is_success() {
            bail!("{method} {url}: {status}: {}", text.trim());
        }
        serde_json::from_str(&text).with_context(|| format!("{method} {url}: not JSON: {text}"))
    }
}
