//! Files and directories that are whole or absent, and survive a crash once written: the one way
//! every writer of the state directory replaces a file (Parquet tables, state, statuses, adapters,
//! checkpoints).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// An I/O error and the path it happened on.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct FileError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Maps an I/O error to a [`FileError`] on `path`.
pub fn at(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |source| FileError {
        path: path.to_owned(),
        source,
    }
}

/// A name beside `path` for work in progress: dot-hidden (DataFusion, DuckDB, pyarrow and the
/// table scans here skip it) and unique, so concurrent writers never share one.
fn temporary(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    path.with_file_name(format!(
        ".{name}.{}-{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes the entries of `dir` (a rename into it) durable.
fn sync_dir(dir: &Path) -> Result<(), FileError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(at(dir))
}

/// Replaces the file at `path` with what `fill` writes into the file it is given (and hands
/// back): a reader sees the old file or the new one, whole, never a part; once this returns the
/// new one survives a crash (file fsynced, renamed into place, directory fsynced). Creates the
/// directory. On an error nothing at `path` changes.
pub fn replace_file<E: From<FileError>>(
    path: &Path,
    fill: impl FnOnce(File) -> Result<File, E>,
) -> Result<(), E> {
    let dir = parent(path);
    std::fs::create_dir_all(dir).map_err(at(dir))?;
    let tmp = temporary(path);
    let file = File::create(&tmp).map_err(at(&tmp))?;
    let written = fill(file).and_then(|file| Ok(file.sync_all().map_err(at(&tmp))?));
    if let Err(e) = written {
        // Best effort: a leftover is dot-hidden and unique, so harmless.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(at(path))?;
    Ok(sync_dir(dir)?)
}

/// [`replace_file`] with `bytes`.
pub fn replace_bytes(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    replace_file(path, |mut file| {
        file.write_all(bytes).map_err(at(path))?;
        Ok(file)
    })
}

/// Replaces the directory `dir` with what `fill` writes into the (empty) directory it is given:
/// every file in it is fsynced, then it is renamed into place. An existing `dir` is moved aside
/// first and removed after, so a reader sees the old content, the new content or (for the
/// instant between the two renames) nothing — never a mix.
pub fn replace_dir<E: From<FileError>>(
    dir: &Path,
    fill: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let parent = parent(dir);
    std::fs::create_dir_all(parent).map_err(at(parent))?;
    let tmp = temporary(dir);
    std::fs::create_dir(&tmp).map_err(at(&tmp))?;
    let written = fill(&tmp).and_then(|()| Ok(sync_tree(&tmp)?));
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dir.exists() {
        let old = temporary(dir);
        std::fs::rename(dir, &old).map_err(at(dir))?;
        std::fs::rename(&tmp, dir).map_err(at(dir))?;
        sync_dir(parent)?;
        std::fs::remove_dir_all(&old).map_err(at(&old))?;
    } else {
        std::fs::rename(&tmp, dir).map_err(at(dir))?;
        sync_dir(parent)?;
    }
    Ok(())
}

/// Fsyncs every file under `dir`, then the directories themselves.
fn sync_tree(dir: &Path) -> Result<(), FileError> {
    for entry in std::fs::read_dir(dir).map_err(at(dir))? {
        let path = entry.map_err(at(dir))?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(at(&path))?;
        }
    }
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_replaced_file_is_whole_and_a_failed_fill_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        replace_bytes(&path, b"one").unwrap();
        replace_bytes(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let failed: Result<(), FileError> = replace_file(&path, |mut f| {
            f.write_all(b"half").unwrap();
            Err(at(Path::new("x"))(std::io::Error::other("disk full")))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(
            names(&dir.path().join("sub")),
            ["state.json"],
            "no leftovers"
        );
    }

    #[test]
    fn a_replaced_directory_holds_only_the_new_files() {
        let dir = tempfile::tempdir().unwrap();
        let adapter = dir.path().join("adapter");
        let fill = |files: &'static [&'static str]| {
            move |tmp: &Path| -> Result<(), FileError> {
                for f in files {
                    std::fs::write(tmp.join(f), f).map_err(at(tmp))?;
                }
                Ok(())
            }
        };
        replace_dir(&adapter, fill(&["a", "b"])).unwrap();
        replace_dir(&adapter, fill(&["c"])).unwrap();
        assert_eq!(names(&adapter), ["c"]);
        assert_eq!(names(dir.path()), ["adapter"], "no leftovers");
        let failed = replace_dir(&adapter, |_| {
            Err(at(Path::new("x"))(std::io::Error::other("fail")))
        });
        assert!(failed.is_err());
        assert_eq!(names(&adapter), ["c"]);
        assert_eq!(names(dir.path()), ["adapter"]);
    }
}
