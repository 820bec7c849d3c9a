//! The shard manifest: one JSON line per committed file of a shard table, appended by the shard
//! writer (`<table root>/_manifest.jsonl`) and by compaction, and read by every reader of the
//! table (the trigger gate, the trainer, SQL).
//!
//! The manifest only grows. A compaction line names the files it `replaces`: from the moment it
//! is appended, readers take the compacted file instead of those (the switch is one append, so a
//! reader sees either the small files or the compacted one, never both or neither); the replaced
//! files are deleted later, once no reader can still be using them.

use std::collections::{HashMap, HashSet};
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
    /// Files this one holds every row of (a compaction): readers stop reading them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaces: Vec<String>,
}

/// The files a table consists of now: every named file that no later compaction replaced.
pub fn committed_files(entries: &[ShardEntry]) -> HashSet<&str> {
    let replaced: HashSet<&str> = entries
        .iter()
        .flat_map(|e| e.replaces.iter().map(String::as_str))
        .collect();
    entries
        .iter()
        .map(|e| e.path.as_str())
        .filter(|p| !replaced.contains(p))
        .collect()
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
/// all of them; none when the table has no manifest yet. A file compacted since is resolved to
/// the file that now holds its rows (which may also hold rows committed after the snapshot).
pub fn tenant_shards(
    root: &Path,
    tenant: &str,
    through: Option<u64>,
) -> std::io::Result<Vec<String>> {
    let text = read(root)?;
    // Each line parsed once, with its line number: a torn line in the middle still counts as a
    // line of the snapshot.
    let through = through.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let all: Vec<(usize, ShardEntry)> = text
        .lines()
        .enumerate()
        .filter_map(|(i, l)| Some((i, serde_json::from_str(l).ok()?)))
        .collect();
    let replaced_by: HashMap<&str, &str> = all
        .iter()
        .flat_map(|(_, e)| e.replaces.iter().map(|r| (r.as_str(), e.path.as_str())))
        .collect();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (_, e) in all
        .iter()
        .filter(|(i, e)| *i < through && e.tenant_id == tenant)
    {
        let mut path = e.path.as_str();
        // Compactions only replace files named before them, so the chain ends.
        while let Some(next) = replaced_by.get(path) {
            path = next;
        }
        if seen.insert(path) {
            out.push(path.to_owned());
        }
    }
    Ok(out)
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
            replaces: Vec::new(),
        };
        serde_json::to_string(&e).unwrap() + "\n"
    }

    fn compaction(path: &str, tenant: &str, replaces: &[&str]) -> String {
        let mut e: ShardEntry = serde_json::from_str(&line(path, tenant)).unwrap();
        e.replaces = replaces.iter().map(|r| r.to_string()).collect();
        serde_json::to_string(&e).unwrap() + "\n"
    }

    #[test]
    fn a_compaction_line_swaps_its_files_for_readers_and_snapshots_resolve_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let text = line("a1", "acme") + &line("a2", "acme") + &line("g1", "globex");
        std::fs::write(dir.path().join(SHARD_MANIFEST), &text).unwrap();
        let snapshot = manifest_lines(dir.path()).unwrap();
        // Compacted twice: a1+a2 into c1, then c1 and a later a3 into c2.
        let text = text
            + &compaction("c1", "acme", &["a1", "a2"])
            + &line("a3", "acme")
            + &compaction("c2", "acme", &["c1", "a3"]);
        std::fs::write(dir.path().join(SHARD_MANIFEST), &text).unwrap();
        let entries = parse_manifest(&text);
        let mut now: Vec<&str> = committed_files(&entries).into_iter().collect();
        now.sort();
        assert_eq!(now, ["c2", "g1"]);
        assert_eq!(
            tenant_shards(dir.path(), "acme", Some(snapshot)).unwrap(),
            ["c2"]
        );
        assert_eq!(tenant_shards(dir.path(), "acme", None).unwrap(), ["c2"]);
        assert_eq!(
            tenant_shards(dir.path(), "globex", Some(snapshot)).unwrap(),
            ["g1"]
        );
        // An old line (no `replaces`) still parses, and a plain line serialises without it.
        assert!(!line("x", "acme").contains("replaces"));
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
