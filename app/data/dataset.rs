//! Captioned image folders: the format users fine-tune on and the bundled corpus uses.
//!
//! A dataset is a folder where each image `NAME.ext` has its caption in `NAME.txt` next to it,
//! or a folder with a `captions.jsonl` at its root (`{"file": "relative/path.png", "caption": "..."}`
//! per line). Images are decoded, composited on white, centre-cropped and resized once, then kept
//! as 8-bit RGB in memory and in an on-disk cache. The train/validation split is a hash of each
//! image's relative path, so it never changes when files are added or removed elsewhere. Bad files
//! are skipped and reported, never fatal.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use image::{Rgb32FImage, RgbImage};
use serde::Deserialize;

use super::image as imageio;
use crate::jobs::{CancelToken, Cancelled, Progress, ProgressSink};

/// File extensions treated as images when scanning a folder: every format the decoder reads
/// (PNM under each of its names), so a file it could open is never refused by its name.
pub const IMAGE_EXTENSIONS: [&str; 16] = [
    "png", "jpg", "jpeg", "gif", "bmp", "tif", "tiff", "webp", "ico", "pnm", "ppm", "pgm", "pbm",
    "pam", "tga", "qoi",
];

/// Whether `path` names an image file by its extension (any case).
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Name of the JSON-lines caption index at a dataset's root.
pub const CAPTIONS_JSONL: &str = "captions.jsonl";

/// One image with its caption, before decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetEntry {
    /// Path relative to the dataset root, with `/` separators (the split and cache key).
    pub relative: String,
    pub caption: String,
}

/// A file that could not be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedFile {
    pub relative: String,
    pub reason: String,
}

/// Which part of the split an image belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Validation,
}

/// Deterministic split: FNV-1a of the relative path; `validation_percent` of 100 buckets.
pub fn split_of(relative: &str, validation_percent: u32) -> Split {
    let mut hash: u64 = 0xcbf29ce484222325;
    for byte in relative.as_bytes() {
        hash ^= *byte as u64;
        hash = hash.wrapping_mul(0x100000001b3);
    }
    if (hash % 100) < validation_percent as u64 {
        Split::Validation
    } else {
        Split::Train
    }
}

/// I/O failures keep their error in a field named `cause`, not `source`: the message already shows
/// it, and a `source` would be printed a second time by `{:#}` (the CLI's and the GUI's format).
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{path}: cannot read: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "{path}: no usable captioned images found ({skipped} files skipped{})",
        first_reasons_suffix(first_reasons)
    )]
    Empty {
        path: PathBuf,
        skipped: usize,
        /// `file: reason` of the first few skipped files, so the error says what was wrong.
        first_reasons: Vec<String>,
    },
    /// Not transparent: the job runner finds the [`Cancelled`] among the error's sources.
    #[error("loading the dataset was cancelled")]
    Cancelled(#[from] Cancelled),
}

/// `error`'s message without its leading `path: `, for reports that name the file already.
pub fn reason_without_path(error: &dyn std::fmt::Display, path: &Path) -> String {
    let message = error.to_string();
    match message.strip_prefix(&format!("{}: ", path.display())) {
        Some(reason) => reason.to_owned(),
        None => message,
    }
}

/// How many skip reasons a [`DatasetError::Empty`] quotes.
const QUOTED_REASONS: usize = 3;

/// `file: reason` of the first few skipped files, for an error that says what was wrong.
pub fn first_skip_reasons(skipped: &[SkippedFile]) -> Vec<String> {
    skipped
        .iter()
        .take(QUOTED_REASONS)
        .map(|file| format!("{}: {}", file.relative, file.reason))
        .collect()
}

pub fn first_reasons_suffix(reasons: &[String]) -> String {
    if reasons.is_empty() {
        String::new()
    } else {
        format!("; {}", reasons.join("; "))
    }
}

#[derive(Deserialize)]
struct JsonlRecord {
    file: String,
    caption: String,
}

/// Lists the captioned images of a dataset folder (no decoding). Entries are sorted by path.
pub fn scan(root: &Path) -> Result<(Vec<DatasetEntry>, Vec<SkippedFile>), DatasetError> {
    scan_cancellable(root, &CancelToken::new())
}

/// [`scan`] that stops with [`DatasetError::Cancelled`] soon after `cancel` is set: between
/// folders of the walk and between caption files (a folder of a million files dropped on the
/// window, then *Cancel import*).
pub fn scan_cancellable(
    root: &Path,
    cancel: &CancelToken,
) -> Result<(Vec<DatasetEntry>, Vec<SkippedFile>), DatasetError> {
    let read_error = |cause| DatasetError::Read {
        path: root.to_owned(),
        cause,
    };
    let mut skipped = Vec::new();
    let jsonl = root.join(CAPTIONS_JSONL);
    let mut entries = Vec::new();
    if jsonl.is_file() {
        let read_error = |cause| DatasetError::Read {
            path: jsonl.clone(),
            cause,
        };
        let file = std::fs::File::open(&jsonl).map_err(read_error)?;
        let mut seen = HashSet::new();
        // Split on bytes, so one line in another encoding skips that record, not the folder.
        for (number, line) in std::io::BufReader::new(file).split(b'\n').enumerate() {
            cancel.check()?;
            let line = line.map_err(read_error)?;
            let where_ = format!("{CAPTIONS_JSONL}:{}", number + 1);
            let Ok(line) = String::from_utf8(line) else {
                skipped.push(SkippedFile {
                    relative: where_,
                    reason: "not UTF-8 text".into(),
                });
                continue;
            };
            // Notepad starts a UTF-8 file with a byte-order mark.
            let line = without_bom(&line);
            if line.trim().is_empty() {
                continue;
            }
            // A file written on Windows separates folders with backslashes, and `./a.png` or
            // `sub//a.png` name what the folder walk calls `a.png` and `sub/a.png`: every check
            // below (listed twice, the split's hash) sees the one spelling the walk gives.
            let record = serde_json::from_str::<JsonlRecord>(line).map(|record| JsonlRecord {
                file: normalised_relative(&record.file),
                caption: record.caption,
            });
            match record {
                Err(e) => skipped.push(SkippedFile {
                    relative: where_,
                    reason: format!("not a {{file, caption}} record: {e}"),
                }),
                Ok(record) if escapes_root(&record.file) => skipped.push(SkippedFile {
                    relative: where_,
                    reason: format!("`{}` points outside the dataset folder", record.file),
                }),
                Ok(record) if !root.join(&record.file).is_file() => skipped.push(SkippedFile {
                    relative: record.file,
                    reason: "listed in captions.jsonl but missing".into(),
                }),
                Ok(record) if !seen.insert(record.file.clone()) => skipped.push(SkippedFile {
                    relative: record.file,
                    reason: "listed twice in captions.jsonl".into(),
                }),
                Ok(record) => entries.push(DatasetEntry {
                    relative: record.file,
                    caption: record.caption.trim().to_owned(),
                }),
            }
        }
        // The folder's other images are reported, not silently left out (the Library adds
        // them uncaptioned, as it does a sidecar folder's).
        // Compared by path components: `./a.png` and `sub//a.png` list `a.png`, `sub/a.png`.
        let components = |relative: &str| -> Vec<String> {
            Path::new(relative)
                .components()
                .filter(|c| !matches!(c, std::path::Component::CurDir))
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect()
        };
        let listed: HashSet<Vec<String>> =
            entries.iter().map(|e| components(&e.relative)).collect();
        let (images, mut walk_skipped) = image_files(root, cancel).map_err(read_error)?;
        cancel.check()?;
        skipped.append(&mut walk_skipped);
        for relative in images {
            if !listed.contains(&components(&relative)) {
                skipped.push(SkippedFile {
                    relative,
                    reason: "no caption (not listed in captions.jsonl)".into(),
                });
            }
        }
    } else {
        let (images, mut walk_skipped) = image_files(root, cancel).map_err(read_error)?;
        cancel.check()?;
        skipped.append(&mut walk_skipped);
        for relative in images {
            cancel.check()?;
            let path = root.join(&relative);
            match read_sidecar_caption(&path) {
                Ok(Some(caption)) => entries.push(DatasetEntry { relative, caption }),
                Ok(None) => skipped.push(SkippedFile {
                    relative,
                    reason: "no caption (.txt sidecar) next to it".into(),
                }),
                Err(reason) => skipped.push(SkippedFile { relative, reason }),
            }
        }
    }
    entries.sort_by(|a, b| a.relative.cmp(&b.relative));
    Ok((entries, skipped))
}

/// The image files under `root` (by extension; relative paths with `/`), and the entries the
/// walk could not use (broken links, unreadable folders). Once `cancel` is set the walk enters
/// no further folder (the caller checks `cancel` after it).
fn image_files(
    root: &Path,
    cancel: &CancelToken,
) -> std::io::Result<(Vec<String>, Vec<SkippedFile>)> {
    let mut state = Walk {
        root,
        cancel,
        // Where links cannot be resolved (some Windows drives), none point inside.
        canonical_root: root.canonicalize().unwrap_or_else(|_| root.to_owned()),
        followed: HashSet::new(),
        files: Vec::new(),
        skipped: Vec::new(),
    };
    walk(&mut state, root)?;
    let images = state
        .files
        .into_iter()
        .filter(|relative| has_image_extension(Path::new(relative)))
        .collect();
    Ok((images, state.skipped))
}

/// True for absolute paths and paths with a `..` component (not for names like `a..png`).
fn escapes_root(relative: &str) -> bool {
    let path = Path::new(relative);
    path.is_absolute()
        || path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
}

/// The caption in `NAME.txt` next to `NAME.ext`, trimmed; `Ok(None)` when there is none.
pub fn read_sidecar_caption(image: &Path) -> Result<Option<String>, String> {
    let sidecar = image.with_extension("txt");
    if !sidecar.is_file() {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    std::fs::File::open(&sidecar)
        .and_then(|f| f.take(1 << 20).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read caption: {e}"))?;
    let text = String::from_utf8(bytes).map_err(|_| "caption file is not UTF-8".to_owned())?;
    Ok(Some(without_bom(&text).trim().to_owned()))
}

/// Another image in `image`'s folder whose caption sidecar is the same `NAME.txt` (`photo.jpg`
/// for `photo.png`; `PHOTO.JPG` too where file names ignore case), so that writing one's
/// caption would overwrite the other's.
pub fn sidecar_shared_with(image: &Path) -> Option<PathBuf> {
    let listing: Vec<PathBuf> = std::fs::read_dir(image.parent()?)
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .collect();
    sidecar_shared_within(image, &listing)
}

/// [`sidecar_shared_with`] against a listing of `image`'s folder made once, for writing many
/// sidecars of one folder (each `read_dir` of a folder of thousands would cost milliseconds).
pub fn sidecar_shared_within(image: &Path, folder_listing: &[PathBuf]) -> Option<PathBuf> {
    let name = image.file_name()?;
    let stem = image.file_stem()?.to_str()?;
    let same_stem = |other: &str| {
        if cfg!(any(windows, target_os = "macos")) {
            other.eq_ignore_ascii_case(stem)
        } else {
            other == stem
        }
    };
    folder_listing
        .iter()
        .find(|other| {
            other.file_name() != Some(name)
                && other
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .is_some_and(same_stem)
                && has_image_extension(other)
                && other.is_file()
        })
        .cloned()
}

/// `text` without a leading UTF-8 byte-order mark (which `trim` keeps).
fn without_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// What [`walk`] carries down the tree.
struct Walk<'a> {
    root: &'a Path,
    cancel: &'a CancelToken,
    /// The root with links resolved: links to inside it are not followed.
    canonical_root: PathBuf,
    /// Link targets already listed (a loop, or two links to one place, ends there).
    followed: HashSet<PathBuf>,
    files: Vec<String>,
    skipped: Vec<SkippedFile>,
}

impl Walk<'_> {
    /// `/`-separated on every system, from the path's components: a Unix file whose name
    /// holds a backslash keeps it.
    fn relative(&self, path: &Path) -> String {
        path.strip_prefix(self.root)
            .unwrap_or(path)
            .components()
            .map(|part| part.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/")
    }
}

/// A captions.jsonl path as the folder walk spells it: `/` between folders (a backslash too,
/// as Windows writes them), no empty or `.` parts.
fn normalised_relative(listed: &str) -> String {
    listed
        .split(['/', '\\'])
        .filter(|part| !part.is_empty() && *part != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// Lists the files below `dir` into `walk.files` in name order, skipping hidden entries (our
/// cache is hidden). A subfolder that cannot be read is skipped with its reason; only `dir`'s
/// own failure is an error.
fn walk(state: &mut Walk<'_>, dir: &Path) -> std::io::Result<()> {
    if state.cancel.is_cancelled() {
        return Ok(());
    }
    let mut children: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    children.sort_by_key(|e| e.file_name());
    for child in children {
        if child.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = child.path();
        let kind = child.file_type()?;
        let is_dir = if kind.is_symlink() {
            // A link to a file or folder outside the dataset folder counts like a copy of it.
            // Links to inside it are not followed: the real path lists their target already,
            // and a file must have one name (the split and the caches are keyed by it).
            match path.canonicalize() {
                Ok(target) if target.starts_with(&state.canonical_root) => continue,
                Ok(target) if !state.followed.insert(target.clone()) => continue,
                Ok(target) => match std::fs::metadata(&target) {
                    Ok(meta) if meta.is_dir() => true,
                    // Pipes, sockets, devices: never images, and reading a pipe could block.
                    Ok(meta) if !meta.is_file() => continue,
                    _ => false,
                },
                // A broken link: listed, so that decoding it says what is wrong.
                Err(_) => false,
            }
        } else if kind.is_dir() || kind.is_file() {
            kind.is_dir()
        } else {
            continue;
        };
        if path
            .strip_prefix(state.root)
            .unwrap_or(&path)
            .to_str()
            .is_none()
        {
            // Files are keyed by their UTF-8 relative name (captions.jsonl, the split, the
            // caches); a lossy name would point at no file and read as "no caption".
            let mut relative = state.relative(&path);
            if is_dir {
                relative.push('/');
            }
            if is_dir || has_image_extension(&path) {
                state.skipped.push(SkippedFile {
                    relative,
                    reason: "its name is not valid UTF-8; rename it to use it".to_owned(),
                });
            }
            continue;
        }
        if !is_dir {
            let relative = state.relative(&path);
            state.files.push(relative);
        } else if let Err(error) = walk(state, &path) {
            let relative = format!("{}/", state.relative(&path));
            state.skipped.push(SkippedFile {
                relative,
                reason: format!("cannot read this folder: {error}"),
            });
        }
    }
    Ok(())
}

/// A decoded, preprocessed dataset at one resolution.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub root: PathBuf,
    pub size: u32,
    pub items: Vec<DatasetItem>,
    pub skipped: Vec<SkippedFile>,
}

#[derive(Debug, Clone)]
pub struct DatasetItem {
    pub relative: String,
    pub caption: String,
    pub split: Split,
    pub pixels: RgbImage,
}

impl DatasetItem {
    /// Pixels as floats in [0, 1].
    pub fn image(&self) -> Rgb32FImage {
        image::DynamicImage::ImageRgb8(self.pixels.clone()).to_rgb32f()
    }
}

impl Dataset {
    /// Scans, decodes and preprocesses every captioned image of `root` to `size` x `size`,
    /// reusing `cache_file` (if given) for images already decoded at this size.
    pub fn load(
        root: &Path,
        size: u32,
        validation_percent: u32,
        cache_file: Option<&Path>,
        progress: &dyn ProgressSink,
        cancel: &CancelToken,
    ) -> Result<Self, DatasetError> {
        let (entries, mut skipped) = scan(root)?;
        let mut cache = cache_file
            .map(|p| PixelCache::read(p, size))
            .unwrap_or_default();
        let mut items: Vec<DatasetItem> = Vec::with_capacity(entries.len());
        let total = entries.len();
        let mut cache_dirty = false;
        let mut stamps = Vec::with_capacity(entries.len());
        for (index, entry) in entries.into_iter().enumerate() {
            if index % 64 == 0 {
                if let Err(cancelled) = cancel.check() {
                    // What was decoded so far is kept for the next load (a big folder takes
                    // minutes), with the cached pixels of the files not reached yet.
                    if cache_dirty && let Some(path) = cache_file {
                        let not_reached = cache
                            .entries
                            .iter()
                            .map(|(relative, (stamp, pixels))| (relative.as_str(), *stamp, pixels));
                        let entries = cache_entries(&items, &stamps).chain(not_reached);
                        save_pixel_cache(path, size, entries.collect());
                    }
                    return Err(cancelled.into());
                }
                progress.report(Progress {
                    done: index,
                    total,
                    message: format!("decoding {}", entry.relative),
                });
            }
            let path = root.join(&entry.relative);
            let stamp = file_stamp(&path);
            // Taken out of the cache, not copied: a dataset's pixels are held once.
            let pixels = match cache.take(&entry.relative, stamp) {
                Some(pixels) => pixels,
                None => {
                    // A decoder that panics on a crafted or damaged file costs that file only.
                    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        imageio::load_for_model(&path, size)
                    }));
                    let reason = match loaded {
                        Ok(Ok(image)) => {
                            cache_dirty = true;
                            Ok(imageio::to_rgb8(&image))
                        }
                        Ok(Err(error)) => Err(reason_without_path(&error, &path)),
                        Err(_) => Err("the image decoder crashed on this file".to_owned()),
                    };
                    match reason {
                        Ok(pixels) => pixels,
                        Err(reason) => {
                            skipped.push(SkippedFile {
                                relative: entry.relative,
                                reason,
                            });
                            continue;
                        }
                    }
                }
            };
            stamps.push(stamp);
            items.push(DatasetItem {
                split: split_of(&entry.relative, validation_percent),
                relative: entry.relative,
                caption: entry.caption,
                pixels,
            });
        }
        // What is left in the cache belongs to files gone or changed since: written again
        // without them, so the cache holds this dataset only.
        cache_dirty |= !cache.entries.is_empty();
        if let (Some(path), true) = (cache_file, cache_dirty) {
            save_pixel_cache(path, size, cache_entries(&items, &stamps).collect());
        }
        progress.report(Progress {
            done: total,
            total,
            message: "decoded".into(),
        });
        if items.is_empty() {
            return Err(DatasetError::Empty {
                path: root.to_owned(),
                skipped: skipped.len(),
                first_reasons: first_skip_reasons(&skipped),
            });
        }
        Ok(Self {
            root: root.to_owned(),
            size,
            items,
            skipped,
        })
    }

    pub fn split(&self, split: Split) -> Vec<&DatasetItem> {
        self.items
            .iter()
            .filter(|item| item.split == split)
            .collect()
    }

    /// Skipped files grouped by reason, for the report printed before training.
    pub fn skip_report(&self) -> String {
        // On the first line, which is what the short reports print: an empty caption (a blank
        // sidecar or record) is used as the null caption, which is seldom what was meant.
        let blank = self
            .items
            .iter()
            .filter(|item| item.caption.is_empty())
            .count();
        let blank = match blank {
            0 => String::new(),
            1 => "; 1 image has an empty caption (used as the null caption)".into(),
            n => format!("; {n} images have an empty caption (used as the null caption)"),
        };
        if self.skipped.is_empty() {
            return format!("no files skipped{blank}");
        }
        let mut report = format!("{} files skipped{blank}:\n", self.skipped.len());
        for file in &self.skipped {
            report.push_str(&format!("  {}: {}\n", file.relative, file.reason));
        }
        report
    }
}

/// Size and change time: a changed file is decoded again. The second number is the
/// modification time in nanoseconds, and on Unix the inode's change time mixed in, which every
/// write sets and no program can set back (an editor or `touch -r` that restores the
/// modification time after changing the pixels in place would otherwise go unnoticed).
fn file_stamp(path: &Path) -> (u64, u64) {
    std::fs::metadata(path)
        .map(|m| {
            let modified = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            #[cfg(unix)]
            let modified = {
                use std::os::unix::fs::MetadataExt;
                let changed = (m.ctime() as u64)
                    .wrapping_mul(1_000_000_000)
                    .wrapping_add(m.ctime_nsec() as u64);
                modified ^ changed.rotate_left(32)
            };
            (m.len(), modified)
        })
        .unwrap_or((0, 0))
}

/// Decoded pixels keyed by relative path, stored as one binary file:
/// magic, size, count, then per entry: path length, path, file length, change stamp
/// ([`file_stamp`]), RGB bytes.
#[derive(Default)]
struct PixelCache {
    entries: BTreeMap<String, ((u64, u64), RgbImage)>,
}

// 02: images are turned upright by their EXIF orientation; a cache made before holds the
// sideways crops of phone portraits, so it is decoded again.
const CACHE_MAGIC: &[u8; 8] = b"TTSPXC02";

impl PixelCache {
    /// Removes and returns the pixels of `relative` if they were decoded from the file as it is
    /// now (`stamp`).
    fn take(&mut self, relative: &str, stamp: (u64, u64)) -> Option<RgbImage> {
        self.entries
            .remove(relative)
            .filter(|(s, _)| *s == stamp)
            .map(|(_, p)| p)
    }

    /// Reads a cache; any damage or a different size gives an empty cache (it is only a cache).
    fn read(path: &Path, size: u32) -> Self {
        Self::try_read(path, size).unwrap_or_default()
    }

    /// Read entry by entry: the file (gigabytes for a large dataset) is never in memory
    /// besides the pixels it holds.
    fn try_read(path: &Path, size: u32) -> Option<Self> {
        use std::io::Read;
        let file = std::fs::File::open(path).ok()?;
        let file_len = file.metadata().ok()?.len();
        let mut input = std::io::BufReader::new(file);
        fn take(input: &mut impl Read, n: usize) -> Option<Vec<u8>> {
            let mut buffer = vec![0; n];
            input.read_exact(&mut buffer).ok()?;
            Some(buffer)
        }
        fn u64_next(input: &mut impl Read) -> Option<u64> {
            Some(u64::from_le_bytes(take(input, 8)?.try_into().ok()?))
        }
        let input = &mut input;
        if take(input, 8)?.as_slice() != CACHE_MAGIC {
            return None;
        }
        if u64_next(input)? != size as u64 {
            return None;
        }
        let count = u64_next(input)?;
        let pixel_bytes = (size as usize) * (size as usize) * 3;
        let mut cache = Self::default();
        for _ in 0..count {
            // A damaged length is not allocated: no entry is longer than the file.
            let name_len = u64_next(input)?;
            if name_len > file_len.min(64 * 1024) {
                return None;
            }
            let name = String::from_utf8(take(input, name_len as usize)?).ok()?;
            let len = u64_next(input)?;
            let modified = u64_next(input)?;
            let pixels = RgbImage::from_raw(size, size, take(input, pixel_bytes)?)?;
            cache.entries.insert(name, ((len, modified), pixels));
        }
        Some(cache)
    }
}

/// One decode-cache entry: the file's relative path, its stamp when decoded, its pixels.
type CacheEntry<'a> = (&'a str, (u64, u64), &'a RgbImage);

/// The cache entries of `items`, decoded from files with these `stamps`.
fn cache_entries<'a>(
    items: &'a [DatasetItem],
    stamps: &'a [(u64, u64)],
) -> impl Iterator<Item = CacheEntry<'a>> {
    items
        .iter()
        .zip(stamps)
        .map(|(item, stamp)| (item.relative.as_str(), *stamp, &item.pixels))
}

/// [`write_pixel_cache`], a failure logged: the cache only saves time.
fn save_pixel_cache(path: &Path, size: u32, entries: Vec<CacheEntry<'_>>) {
    if let Err(error) = write_pixel_cache(path, size, &entries) {
        tracing::warn!(
            "could not write the decode cache {}: {error}",
            path.display()
        );
    }
}

/// Writes the pixel cache of `entries`, streamed to the file rather than built in memory first.
fn write_pixel_cache(path: &Path, size: u32, entries: &[CacheEntry<'_>]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    crate::files::write_atomic_with(path, |out| {
        out.write_all(CACHE_MAGIC)?;
        out.write_all(&(size as u64).to_le_bytes())?;
        out.write_all(&(entries.len() as u64).to_le_bytes())?;
        for (relative, (len, modified), pixels) in entries {
            out.write_all(&(relative.len() as u64).to_le_bytes())?;
            out.write_all(relative.as_bytes())?;
            out.write_all(&len.to_le_bytes())?;
            out.write_all(&modified.to_le_bytes())?;
            out.write_all(pixels.as_raw())?;
        }
        Ok(())
    })
}
