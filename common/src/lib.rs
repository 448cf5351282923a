//! What the crates that keep state on disk share: the rule for the names of
//! adapters and collections, and durable writes (temp file, fsync, rename,
//! directory fsync). Each crate wraps these faults in its own error type.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A name breaks the rule: 1-64 of `[A-Za-z0-9._-]`, not starting with `.`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadName(pub String);

/// Checks a name: 1-64 of `[A-Za-z0-9._-]`, not starting with `.` (names become
/// folder names, and `.` marks staging and temporary entries).
pub fn check_name(name: &str) -> Result<(), BadName> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(BadName(name.to_owned()))
    }
}

/// An I/O error and the path it happened at.
#[derive(Debug)]
pub struct IoAt {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// Maps an `io::Error` to an [`IoAt`] at `path`.
pub fn at(path: &Path) -> impl FnOnce(std::io::Error) -> IoAt + '_ {
    move |source| IoAt {
        path: path.to_owned(),
        source,
    }
}

/// fsyncs a directory, so the renames and creations in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), IoAt> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(at(dir))
}

/// Whether an I/O error means "no space left" (a full disk, or a quota).
pub fn is_no_space(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || matches!(e.raw_os_error(), Some(28) | Some(122))
}

/// Writes `bytes` to `path` atomically and durably: a temp file beside it
/// (`.NAME.tmp`), fsync, rename over `path`, fsync the directory. A crash leaves
/// the old file or the new one, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), IoAt> {
    let dir = path.parent().expect("path has a parent");
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().expect("file name").to_string_lossy()
    ));
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written {
        // A partial temp file would hold space a full disk needs back.
        let _ = std::fs::remove_file(&tmp);
        return Err(at(&tmp)(e));
    }
    std::fs::rename(&tmp, path).map_err(at(path))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "task-1", "A.b_c", &"x".repeat(64)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "a b", "a/b", "é", &"x".repeat(65)] {
            assert_eq!(check_name(bad), Err(BadName(bad.to_owned())));
        }
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        let e = write_atomic(&d.path().join("missing/f"), b"x").unwrap_err();
        assert!(e.path.ends_with(".f.tmp"));
    }
}
