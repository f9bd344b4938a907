//! File-system helpers. Writes are atomic: output goes to a temporary file in the target's folder and
//! is renamed over the target, so readers never see half a file and an interrupted run leaves the old
//! output intact.

use std::fs::{self, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{io_error, IoError, Result};

/// Numbers temporary files so that threads of one process writing into one folder never collide.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes through `fill` into a new temporary file next to `path`, syncs it and renames it over `path`;
/// on any error the temporary file is removed and `path` is left as it was.
pub fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<()> {
    let name = path.file_name().ok_or_else(|| IoError::Dataset {
        path: path.to_path_buf(),
        reason: "output path has no file name".into(),
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    // create_new: a stale temporary file of a crashed run with the same pid is never written into.
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| io_error(&tmp, e))?;
    let written = (|| {
        let mut w = BufWriter::with_capacity(256 * 1024, file);
        fill(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    })();
    let result = written
        .map_err(|e| io_error(path, e))
        .and_then(|()| fs::rename(&tmp, path).map_err(|e| io_error(path, e)));
    if result.is_err() {
        // Best effort: the original error is what the user needs to see.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// [`write_atomic`] for output already held in memory (JSON, CSV, an encoded image).
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |w| w.write_all(bytes))
}

/// The last component of `path` as text (lossy for non-UTF-8 names), empty when it has none.
pub(crate) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        fs::write(&path, b"old").unwrap();
        write_bytes_atomic(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_fill_keeps_the_old_file_and_removes_the_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.nii");
        fs::write(&path, b"old").unwrap();
        let err = write_atomic(&path, |w| {
            w.write_all(b"half")?;
            Err(io::Error::other("encoder failed"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("encoder failed"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_path_without_a_file_name_is_refused() {
        assert!(write_bytes_atomic(Path::new("/"), b"x").is_err());
    }
}
