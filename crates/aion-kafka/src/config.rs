use std::collections::BTreeMap;

use rdkafka::ClientConfig;

/// How to reach the Kafka cluster; shared by every stage.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// `client.id` prefix; the stage name is appended so broker logs tell stages apart.
    pub client_id: String,
    /// Extra librdkafka properties (security, tuning), applied last so they can override ours.
    pub properties: BTreeMap<String, String>,
    /// How a stage's consumer gets its partitions.
    pub assignment: Assignment,
}

/// How a stage's consumer gets its partitions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Assignment {
    /// Consumer-group membership: members of a stage share the partitions and rebalance when one
    /// joins, leaves or dies. For stages scaled out over several processes.
    #[default]
    Group,
    /// Every partition of the input topics, assigned directly: no membership, no heartbeats, no
    /// rebalances; offsets are still fetched from and committed to the stage's group. For one
    /// process per stage (the local loop `aion up`): a broker too busy to answer heartbeats in
    /// time cannot take its partitions away. Partitions added while it runs are not picked up.
    All,
}

impl KafkaConfig {
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            client_id: "aion".into(),
            properties: BTreeMap::new(),
            assignment: Assignment::Group,
        }
    }

    pub(crate) fn client(&self, role: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", format!("{}-{role}", self.client_id));
        c
    }

    /// Maps a failed metadata request (the first thing every client does) to a clear error.
    pub(crate) fn unreachable(&self, source: rdkafka::error::KafkaError) -> crate::Error {
        crate::Error::Unreachable {
            brokers: self.brokers.clone(),
            source,
        }
    }

    pub(crate) fn apply_overrides(&self, c: &mut ClientConfig) {
        for (k, v) in &self.properties {
            c.set(k, v);
        }
    }
}
