//! Atomic file writes: a crash or a full disk never leaves a half-written checkpoint, image or
//! settings file where a good one was.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` through a temporary file in the same folder, synced and then renamed
/// over the target, so readers see either the old file or the complete new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, |out| out.write_all(bytes))
}

/// [`write_atomic`] for content written piece by piece (a cache of gigabytes need not be one
/// buffer first). A symbolic link is written through (its target gets the new content, the link
/// stays), and a file that exists keeps its permissions.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_symlink());
    let target = if is_link {
        std::fs::canonicalize(path)?
    } else {
        path.to_owned()
    };
    let dir = match target.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = target.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has no file name")
    })?;
    let name = name.to_string_lossy();
    // Unique to this write (two threads of one process, or two machines of one pid on a
    // shared folder, must not write one temporary file). File systems allow 255 bytes per
    // name: a long target name gets a short temporary one.
    let suffix = format!("{}-{}", std::process::id(), unique_stamp());
    let temp = if name.len() <= 200 {
        dir.join(format!(".{name}.tmp-{suffix}"))
    } else {
        dir.join(format!(".tmp-{suffix}"))
    };
    let existing_permissions = std::fs::metadata(&target)
        .ok()
        .map(|meta| meta.permissions());
    let result = (|| {
        let file = std::fs::File::create(&temp)?;
        let mut out = std::io::BufWriter::new(file);
        write(&mut out)?;
        let file = out.into_inner().map_err(|error| error.into_error())?;
        if let Some(permissions) = existing_permissions {
            file.set_permissions(permissions)?;
        }
        file.sync_all()?;
        rename_replacing(&temp, &target)?;
        // The rename itself is durable once the folder is synced (Unix; elsewhere a no-op).
        #[cfg(unix)]
        if let Ok(folder) = std::fs::File::open(dir) {
            let _ = folder.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        // Best effort: the temp file is garbage either way.
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// `rename`, retried briefly on Windows, where a virus scanner or an indexer holding the new
/// file (or a viewer holding the old one) refuses it for a moment.
fn rename_replacing(from: &Path, to: &Path) -> std::io::Result<()> {
    let mut tries = 0;
    loop {
        match std::fs::rename(from, to) {
            Err(error)
                if cfg!(windows)
                    && error.kind() == std::io::ErrorKind::PermissionDenied
                    && tries < 10 =>
            {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            result => return result,
        }
    }
}

/// Removes the temporary files [`write_atomic`] left in `dir` when its process died mid-write
/// (a second Ctrl-C, a crash, a power cut), if older than `older_than`: a write still going on
/// touches its file far more often. A checkpoint's or a decode cache's temporary file can be
/// gigabytes, and nothing else would ever remove it.
pub fn remove_stale_temp_files(dir: &Path, older_than: std::time::Duration) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // Only names of the form write_atomic makes (`.NAME.tmp-PID[-STAMP]`, `.tmp-PID-STAMP`):
        // a run folder may be any folder, and other programs' files are not ours to remove.
        let temporary = name.starts_with('.')
            && name.rsplit_once(".tmp-").is_some_and(|(_, suffix)| {
                !suffix.is_empty()
                    && suffix
                        .split('-')
                        .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
            });
        let stale = entry
            .metadata()
            .ok()
            .filter(|meta| meta.is_file())
            .and_then(|meta| meta.modified().ok())
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|age| age >= older_than);
        if temporary && stale {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::info!("removed a stale temporary file {}", entry.path().display())
                }
                Err(error) => tracing::warn!("{}: cannot remove: {error}", entry.path().display()),
            }
        }
    }
}

/// What tells that a file changed without reading it: its length and modification time (both
/// unknown, and so equal, for a file that cannot be read). Caches of decoded images key on it,
/// so a picture edited in another program is shown anew.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FileStamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
}

impl FileStamp {
    pub fn of(path: &Path) -> Self {
        std::fs::metadata(path)
            .map(|meta| Self {
                len: meta.len(),
                modified: meta.modified().ok(),
            })
            .unwrap_or_default()
    }
}

/// Fails unless a file can be created in `dir`: what a long job checks before it starts, so
/// that its results are not lost at the end. The probe file is removed again.
pub fn ensure_writable_dir(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(
        ".textok-write-check-{}-{}",
        std::process::id(),
        unique_stamp()
    ));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    std::fs::remove_file(&probe)
}

/// Nanoseconds since the Unix epoch: a suffix that makes a temporary name unique in practice
/// (0 if the clock is before 1970).
pub fn unique_stamp() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos())
}

/// Hex SHA-256 of a file's contents (model identities in image metadata).
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let mut file = std::fs::File::open(path)?;
    std::io::copy(&mut file, &mut hasher)?;
    Ok(to_hex(&hasher.finalize()))
}

/// Whether two paths name the same existing file (after resolving links and `..`); false if
/// either cannot be resolved.
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Lower-case hex of `bytes` (how digests are written everywhere in the project).
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Claims `dir/STEM.EXT`, or `dir/STEM-2.EXT`, `-3`, ...: the first name not taken, created
/// empty here so that another writer at the same moment takes the next one. The caller then
/// writes the file (atomically, replacing the placeholder), or removes it if that fails. So a
/// new output never replaces an earlier one (say, the same seed with another caption).
pub fn claim_unused_path(
    dir: &Path,
    stem: &str,
    extension: &str,
) -> std::io::Result<std::path::PathBuf> {
    claim_numbered(
        |n| match n {
            1 => dir.join(format!("{stem}.{extension}")),
            n => dir.join(format!("{stem}-{n}.{extension}")),
        },
        |path| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map(drop)
        },
    )
}

/// The first of `candidate(1)`, `candidate(2)`, ... that `create` makes (it must fail with
/// `AlreadyExists` for a taken name, so two writers never get the same one).
fn claim_numbered(
    candidate: impl Fn(u32) -> std::path::PathBuf,
    create: impl Fn(&Path) -> std::io::Result<()>,
) -> std::io::Result<std::path::PathBuf> {
    for n in 1u32.. {
        let path = candidate(n);
        match create(&path) {
            Ok(()) => return Ok(path),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(error) => return Err(error),
        }
    }
    Err(std::io::Error::other("every numbered name is taken"))
}

/// Creates `parent/STEM`, or `parent/STEM-2`, `-3`, ...: the first folder name not taken, so
/// a new set of outputs never mixes with (or replaces) an earlier one.
pub fn create_unused_folder(parent: &Path, stem: &str) -> std::io::Result<std::path::PathBuf> {
    std::fs::create_dir_all(parent)?;
    claim_numbered(
        |n| match n {
            1 => parent.join(stem),
            n => parent.join(format!("{stem}-{n}")),
        },
        |path| std::fs::create_dir(path),
    )
}

/// Another window or process (or another handle in this one) holds the lock.
#[derive(Debug)]
pub struct LockBusy;

/// Opens (creating) `path` and takes an exclusive lock of the operating system on it, released
/// when the returned file is dropped or the process ends, even by a crash. `Ok(None)` where the
/// file cannot be opened or its file system cannot lock (logged): the caller goes on unguarded.
pub fn try_lock_file(path: &Path) -> Result<Option<std::fs::File>, LockBusy> {
    let opened = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path);
    let file = match opened {
        Ok(file) => file,
        Err(error) => {
            tracing::warn!("{}: cannot open the lock file: {error}", path.display());
            return Ok(None);
        }
    };
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(LockBusy),
        Err(std::fs::TryLockError::Error(error)) => {
            tracing::warn!("{}: cannot lock: {error}", path.display());
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_atomic_write_replaces_the_content_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        // A name near the file-system limit of 255 bytes still gets a temporary file.
        let long = dir.path().join(format!("{}.txt", "x".repeat(240)));
        write_atomic(&long, b"first").unwrap();
        write_atomic(&long, b"second").unwrap();
        assert_eq!(std::fs::read(&long).unwrap(), b"second");
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // A shared, group-writable file stays so.
            std::fs::set_permissions(&long, std::fs::Permissions::from_mode(0o664)).unwrap();
            write_atomic(&long, b"third").unwrap();
            let mode = std::fs::metadata(&long).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o664);
            // A link is written through: its target changes, the link stays a link.
            let link = dir.path().join("caption.txt");
            std::os::unix::fs::symlink(&long, &link).unwrap();
            write_atomic(&link, b"through the link").unwrap();
            assert!(
                std::fs::symlink_metadata(&link)
                    .unwrap()
                    .file_type()
                    .is_symlink()
            );
            assert_eq!(std::fs::read(&long).unwrap(), b"through the link");
        }
    }

    #[test]
    fn only_temporary_files_left_by_dead_writers_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let names = [
            ".state.safetensors.tmp-123",
            ".tmp-1-2",
            "state.safetensors",
            ".hidden",
            ".notes.tmp-draft",
        ];
        for name in names {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        // Younger than the limit: a write may still be going on.
        remove_stale_temp_files(dir.path(), std::time::Duration::from_secs(3600));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 5);
        remove_stale_temp_files(dir.path(), std::time::Duration::ZERO);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".hidden", ".notes.tmp-draft", "state.safetensors"]);
    }
}
