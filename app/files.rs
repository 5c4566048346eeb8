//! Atomic file writes: a crash or a full disk never leaves a half-written checkpoint, image or
//! settings file where a good one was.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` through a temporary file in the same folder, synced and then renamed
/// over the target, so readers see either the old file or the complete new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has no file name")
    })?;
    let temp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if result.is_err() {
        // Best effort: the temp file is garbage either way.
        let _ = std::fs::remove_file(&temp);
    }
    result
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
