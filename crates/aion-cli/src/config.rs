//! The configuration file (`aion.toml`) and its overrides.
//!
//! Precedence, lowest first: built-in defaults < the TOML file (`--config`, `AION_CONFIG`) <
//! `AION_*` environment variables < command-line flags. Environment variables and flags are
//! declared together on the clap arguments, so `--help` lists the variable of every setting.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

/// The whole file. Every section is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaSection,
    pub broker: BrokerSection,
    pub decode: DecodeSection,
}

/// How stages reach Kafka.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSection {
    /// `bootstrap.servers`. Default: the local broker `aion broker start` runs.
    pub brokers: String,
    /// Prefix of consumer group ids; each stage appends its name, so two deployments sharing a
    /// cluster stay apart by choosing different prefixes.
    pub group_prefix: String,
    /// Partitions of topics created by `aion topics create`: the ceiling on consumers per stage.
    pub partitions: i32,
    /// Replication factor of created topics (1 for a single local broker; 3 in production).
    pub replication: i32,
    /// Extra librdkafka properties (security, tuning), applied to every client last.
    pub properties: BTreeMap<String, String>,
    /// `group` (default): a stage's members share partitions through its consumer group; `all`:
    /// each stage process reads every partition, assigned directly (what `aion up` uses).
    pub assignment: aion_kafka::Assignment,
}

impl Default for KafkaSection {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            group_prefix: "aion".into(),
            partitions: 3,
            replication: 1,
            properties: BTreeMap::new(),
            assignment: aion_kafka::Assignment::Group,
        }
    }
}

/// The local development broker.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerSection {
    /// Where the broker keeps its SQLite storage, pid and log. Default: `<state dir>/broker`.
    pub data_dir: Option<PathBuf>,
}

/// Decoder limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecodeSection {
    /// Largest accepted event payload in bytes; larger ones are dead-lettered unparsed.
    pub max_bytes: usize,
}

impl Default for DecodeSection {
    fn default() -> Self {
        Self {
            max_bytes: aion_events::DecodeLimits::default().max_bytes,
        }
    }
}

impl Config {
    /// Reads `path`, or returns the defaults when no file is given.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config {}", path.display()))
    }
}

/// The state directory: `$AION_STATE_DIR` or `~/.local/share/aion`.
pub fn default_state_dir() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".local").join("share").join("aion")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let err = toml::from_str::<Config>("[kafka]\nbrokerz = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `brokerz`"), "{err}");
    }

    #[test]
    fn partial_files_keep_defaults() {
        let c: Config = toml::from_str(
            "[kafka]\nbrokers = \"k:9092\"\n[kafka.properties]\n\"security.protocol\" = \"ssl\"\n",
        )
        .unwrap();
        assert_eq!(c.kafka.brokers, "k:9092");
        assert_eq!(c.kafka.partitions, 3);
        assert_eq!(c.kafka.properties["security.protocol"], "ssl");
        assert_eq!(c.decode.max_bytes, 1024 * 1024);
    }
}
