/// Errors of the Kafka layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kafka client error: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("creating topic {topic}: {reason}")]
    CreateTopic { topic: String, reason: String },
    #[error("cannot reach the Kafka brokers at {brokers} (for a local one: `aion broker start`)")]
    Unreachable {
        brokers: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("topic {0} does not exist on the broker (create it with `aion topics create {0}`)")]
    UnknownTopic(String),
    #[error("an output of {topic}/{partition} at offset {offset} could not be made durable; the stage stops so the record is replayed after restart")]
    OutputFailed {
        topic: String,
        partition: i32,
        offset: i64,
    },
    #[error(
        "the broker did not acknowledge a record for {0} (see the delivery error logged before)"
    )]
    Undelivered(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
