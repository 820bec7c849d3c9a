//! Retrieval quality over event time. Today: the per-event nDCG@k every window aggregate is built
//! from. The windowed aggregates (tumbling and hopping windows, watermarks, DataFusion SQL) are
//! not here yet.
//!
//! This crate computes; it does not consume or produce Kafka records.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod ndcg;

pub use ndcg::{ndcg, Gain};
