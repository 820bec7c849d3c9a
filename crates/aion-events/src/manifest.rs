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

fn read(root: &Path) -> std::io::Result<String> {
    match std::fs::read_to_string(root.join(SHARD_MANIFEST)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        other => other,
    }
}

/// How many lines the manifest of the table at `root` holds: a snapshot of what is committed now
/// (the manifest only grows), as small as a number however many shards exist.
pub fn manifest_lines(root: &Path) -> std::io::Result<u64> {
    Ok(read(root)?.bytes().filter(|b| *b == b'\n').count() as u64)
}

/// The shard files of `tenant` committed in the table at `root` (paths relative to it), oldest
/// first, among the manifest's first `through` lines ([`manifest_lines`] at snapshot time) or
/// all of them; none when the table has no manifest yet.
pub fn tenant_shards(
    root: &Path,
    tenant: &str,
    through: Option<u64>,
) -> std::io::Result<Vec<String>> {
    let text = read(root)?;
    let lines = text.split_inclusive('\n');
    let taken: String = match through {
        Some(n) => lines
            .take(usize::try_from(n).unwrap_or(usize::MAX))
            .collect(),
        None => lines.collect(),
    };
    let mut seen = std::collections::HashSet::new();
    Ok(parse_manifest(&taken)
        .into_iter()
        .filter(|e| e.tenant_id == tenant && seen.insert(e.path.clone()))
        .map(|e| e.path)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(path: &str, tenant: &str) -> String {
        let e = ShardEntry {
            path: path.into(),
            tenant_id: tenant.into(),
            date: "2026-11-02".into(),
            source_partition: 0,
            first_offset: 0,
            last_offset: 0,
            rows: 1,
        };
        serde_json::to_string(&e).unwrap() + "\n"
    }

    #[test]
    fn a_snapshot_is_a_line_count_and_resolves_to_the_files_committed_then() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(manifest_lines(dir.path()).unwrap(), 0);
        let text = line("a1", "acme") + &line("g1", "globex") + &line("a2", "acme");
        std::fs::write(dir.path().join(SHARD_MANIFEST), &text).unwrap();
        let snapshot = manifest_lines(dir.path()).unwrap();
        assert_eq!(snapshot, 3);
        // Later commits (and a torn line) are not part of the snapshot.
        let later = text + &line("a3", "acme") + "{\"path\": \"a4";
        std::fs::write(dir.path().join(SHARD_MANIFEST), later).unwrap();
        assert_eq!(
            tenant_shards(dir.path(), "acme", Some(snapshot)).unwrap(),
            ["a1", "a2"]
        );
        assert_eq!(
            tenant_shards(dir.path(), "acme", None).unwrap(),
            ["a1", "a2", "a3"]
        );
        assert_eq!(
            tenant_shards(dir.path(), "globex", Some(1)).unwrap(),
            Vec::<String>::new()
        );
    }
}
