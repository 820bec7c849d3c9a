//! `index.rebuild.v1`: asks the assistant's indexer to rebuild a tenant's retrieval index.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::validate_tenant_id;
use crate::{Reject, Schema};

/// Why the index should be rebuilt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RebuildReason {
    /// ΔN documents never seen before appeared in retrieval results.
    NewDocuments,
    /// A new adapter was promoted (its embeddings or answers changed).
    AdapterPromoted,
}

/// One rebuild request. Replays re-create it with the same `rebuild_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexRebuild {
    /// `<tenant>/<n>`: the tenant's n-th rebuild request.
    pub rebuild_id: String,
    pub tenant_id: String,
    pub reason: RebuildReason,
    /// Documents first seen since the previous request.
    pub new_documents: u64,
    /// Distinct documents seen so far.
    pub known_documents: u64,
    /// Event time of the retrieval that completed ΔN.
    pub at: DateTime<Utc>,
}

impl Schema for IndexRebuild {
    const NAME: &'static str = "index.rebuild.v1";

    fn validate(&self) -> Result<(), Reject> {
        validate_tenant_id(&self.tenant_id)?;
        if !self.rebuild_id.starts_with(&format!("{}/", self.tenant_id)) {
            return Err(Reject::new(
                "rebuild_id",
                "rebuild_id must start with the tenant id and '/'",
            ));
        }
        Ok(())
    }
}
