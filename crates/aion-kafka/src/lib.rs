//! Kafka I/O for AION Stream stages.
//!
//! The delivery contract every stage stands on (at-least-once in, idempotent out):
//! - [`Source`] consumes with `enable.auto.offset.store=false`. Every record carries an [`Ack`];
//!   a partition's offset is stored only once the record and every record before it on that
//!   partition were explicitly done ([`Ack::done`]), i.e. their outputs are durable. An ack dropped
//!   without an outcome (an error exit, a panic) leaves its record pending: nothing an error exit
//!   held is ever committed. Stored offsets are committed by librdkafka's auto-commit, on
//!   partition revoke and synchronously on shutdown.
//! - [`Sink`] produces with `acks=all` and idempotence; a record's [`Ack`] is done by the
//!   broker's delivery report, so a source offset is stored only after its output is acknowledged.
//! - A record that cannot be processed goes to `<topic>.dlq` through [`Sink::dead_letter`] — its
//!   offset is stored only after the dead-letter record is acknowledged.
//!
//! This crate knows nothing of event schemas; stages decide what is valid.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod admin;
mod config;
mod error;
mod reader;
mod sink;
mod source;
mod tracker;

pub use admin::{committed_offsets, create_topics, partition_count, topic_records, TopicSpec};
pub use config::{Assignment, KafkaConfig};
pub use error::{Error, Result};
pub use rdkafka::message::{Header, OwnedHeaders};
pub use reader::{RawRecord, Reader};
pub use sink::{headers, Delivery, Sink};
pub use source::{consuming, joined, Backlog, Record, Source, SourceConfig};
pub use tracker::Ack;
