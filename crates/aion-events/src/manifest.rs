//! The shard manifest: one JSON line per committed training shard, appended by the shard writer
//! (`<shards root>/_manifest.jsonl`) and read by the trigger gate and the trainer.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// File name of the manifest under the shard table's root.
pub const SHARD_MANIFEST: &str = "_manifest.jsonl";

/// One committed shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// Relative to the shard table's root.
    pub path: String,
    pub tenant_id: String,
    /// `YYYY-MM-DD`, the Hive partition.
    pub date: String,
    pub source_partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    pub rows: usize,
}

/// Parses a manifest's text. A torn last line (a crash mid-append) is skipped: the file it names
/// is rewritten under the same name by the replay.
pub fn parse_manifest(text: &str) -> Vec<ShardEntry> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The shard files of `tenant` committed in the table at `root` (paths relative to it), oldest
/// first; none when the table has no manifest yet.
pub fn tenant_shards(root: &Path, tenant: &str) -> std::io::Result<Vec<String>> {
    let text = match std::fs::read_to_string(root.join(SHARD_MANIFEST)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(parse_manifest(&text)
        .into_iter()
        .filter(|e| e.tenant_id == tenant)
        .map(|e| e.path)
        .collect())
}
