//! Human labels in the loop, as pure computations the CLI and the stages call: which answers to
//! send to a human next ([`queue`]), which fallback threshold the labels and costs favour
//! ([`cost`]), and how labelled relevance judgments reach later retrievals of the same query
//! ([`judgments`]).
//!
//! Owns no table, topic or run loop: callers read the Parquet tables and pass rows in. Depends on
//! the wire types of `aion-events` only.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod cost;
pub mod judgments;
pub mod queue;

pub use cost::{
    argmin, check_tau, cost_at, infer_threshold, sweep, Answer, CostModel, CostPoint, ErrorTerm,
    Sweep,
};
pub use judgments::{normalise_query, query_key, JudgmentMap};
pub use queue::select_closest;

/// Errors of the label computations: arguments outside their domain.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("{name} must be {expected}, got {got}")]
    Argument {
        name: &'static str,
        expected: &'static str,
        got: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn check_unit(name: &'static str, x: f64) -> Result<()> {
    if x.is_finite() && (0.0..=1.0).contains(&x) {
        Ok(())
    } else {
        Err(Error::Argument {
            name,
            expected: "within 0..=1",
            got: x.to_string(),
        })
    }
}
