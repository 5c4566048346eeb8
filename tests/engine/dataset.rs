use std::path::Path;

use image::{Rgba, RgbaImage};
use textok_studio::data::dataset::{Dataset, DatasetError, Split, scan, split_of};
use textok_studio::jobs::{CancelToken, NoProgress};

/// The relative names a scan listed, in its order.
fn names(entries: &[textok_studio::data::dataset::DatasetEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.relative.as_str()).collect()
}

fn picture(path: &Path, seed: u8) {
    RgbaImage::from_fn(40, 30, |x, y| Rgba([x as u8 * 6, y as u8 * 8, seed, 255]))
        .save(path)
        .unwrap();
}

#[test]
fn sidecar_folder_loads_and_skips_bad_files_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("sub")).unwrap();
    picture(&root.join("a.png"), 1);
    std::fs::write(root.join("a.txt"), "\u{feff}  a gradient square \n").unwrap();
    picture(&root.join("sub/b.png"), 2);
    std::fs::write(root.join("sub/b.txt"), "another gradient").unwrap();
    picture(&root.join("no-caption.png"), 3);
    std::fs::write(root.join("broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    std::fs::write(root.join("broken.txt"), "a broken file").unwrap();
    picture(&root.join("latin1.png"), 4);
    std::fs::write(root.join("latin1.txt"), [0x63, 0x61, 0x66, 0xE9]).unwrap();
    std::fs::write(root.join("notes.md"), "not an image, ignored").unwrap();

    let (entries, skipped) = scan(root).unwrap();
    assert_eq!(names(&entries), ["a.png", "broken.png", "sub/b.png"]);
    assert_eq!(entries[0].caption, "a gradient square");
    let reasons: Vec<(&str, &str)> = skipped
        .iter()
        .map(|s| (s.relative.as_str(), s.reason.as_str()))
        .collect();
    assert!(
        reasons
            .iter()
            .any(|(f, r)| *f == "no-caption.png" && r.contains("no caption")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|(f, r)| *f == "latin1.png" && r.contains("UTF-8")),
        "{reasons:?}"
    );

    let dataset = Dataset::load(root, 16, 50, None, &NoProgress, &CancelToken::new()).unwrap();
    assert_eq!(
        dataset.items.len(),
        2,
        "the broken image is skipped, not fatal"
    );
    assert!(
        dataset.skipped.iter().any(|s| s.relative == "broken.png"),
        "{:?}",
        dataset.skipped
    );
    assert_eq!(dataset.skipped.len(), 3);
    assert!(dataset.skip_report().contains("broken.png"));
    for item in &dataset.items {
        assert_eq!(item.pixels.dimensions(), (16, 16));
        assert_eq!(item.split, split_of(&item.relative, 50));
    }
}

#[test]
fn every_pnm_name_is_an_image_and_names_that_are_not_utf8_are_skipped_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let rgb = image::DynamicImage::ImageRgba8(RgbaImage::from_fn(20, 20, |x, y| {
        Rgba([x as u8 * 12, y as u8 * 12, 7, 255])
    }));
    rgb.to_rgb8().save(root.join("colour.ppm")).unwrap();
    rgb.to_luma8().save(root.join("grey.pgm")).unwrap();
    for name in ["colour", "grey"] {
        std::fs::write(root.join(format!("{name}.txt")), "a gradient").unwrap();
    }
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let latin1 = |ext: &str| {
            let mut name = b"caf\xe9.".to_vec();
            name.extend_from_slice(ext.as_bytes());
            root.join(std::ffi::OsStr::from_bytes(&name))
        };
        picture(&latin1("png"), 5);
        std::fs::write(latin1("txt"), "a cafe").unwrap();
    }
    let (entries, skipped) = scan(root).unwrap();
    assert_eq!(names(&entries), ["colour.ppm", "grey.pgm"]);
    let dataset = Dataset::load(root, 16, 0, None, &NoProgress, &CancelToken::new()).unwrap();
    assert_eq!(dataset.items.len(), 2, "{:?}", dataset.skipped);
    if cfg!(unix) {
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert!(
            skipped[0].reason.contains("name is not valid UTF-8"),
            "{skipped:?}"
        );
    }
}

#[test]
fn images_that_share_a_caption_sidecar_are_found() {
    use textok_studio::data::dataset::sidecar_shared_with;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    picture(&root.join("photo.png"), 1);
    std::fs::write(root.join("photo.txt"), "a caption").unwrap();
    std::fs::write(root.join("photo.md"), "not an image").unwrap();
    picture(&root.join("photos.png"), 2);
    assert_eq!(sidecar_shared_with(&root.join("photo.png")), None);
    std::fs::copy(root.join("photo.png"), root.join("photo.jpg")).unwrap();
    assert_eq!(
        sidecar_shared_with(&root.join("photo.png")),
        Some(root.join("photo.jpg"))
    );
    assert_eq!(
        sidecar_shared_with(&root.join("photo.jpg")),
        Some(root.join("photo.png"))
    );
}

#[test]
fn captions_jsonl_is_read_and_its_bad_lines_reported() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    picture(&root.join("one.png"), 1);
    picture(&root.join("two.png"), 2);
    picture(&root.join("dots..png"), 3);
    // An image the file does not list, in a subfolder.
    std::fs::create_dir(root.join("more")).unwrap();
    picture(&root.join("more/unlisted.png"), 4);
    // One listed with a `./` in front: listed all the same.
    picture(&root.join("more/dotted.png"), 5);
    // One listed the Windows way, with a backslash.
    picture(&root.join("more/windows.png"), 6);
    let lines = [
        r#"{"file": "more\\windows.png", "caption": "written on Windows"}"#,
        r#"{"file": "./more/dotted.png", "caption": "a dotted path"}"#,
        r#"{"file": "more//dotted.png", "caption": "the same file spelled another way"}"#,
        r#"{"file": "dots..png", "caption": "two dots in the name are not a parent folder"}"#,
        r#"{"file": "one.png", "caption": "the first picture"}"#,
        r#"{"file": "two.png", "caption": "the second picture"}"#,
        r#"{"file": "two.png", "caption": "listed again"}"#,
        r#"{"file": "missing.png", "caption": "gone"}"#,
        r#"{"file": "../escape.png", "caption": "outside"}"#,
        r#"this is not json"#,
        "",
    ];
    // A byte-order mark first (Notepad) and one line in cp1252 ("café" with 0xE9), CRLF ends.
    let mut bytes = "\u{feff}".as_bytes().to_vec();
    bytes.extend_from_slice(lines.join("\r\n").as_bytes());
    bytes.extend_from_slice(b"{\"file\": \"one.png\", \"caption\": \"caf\xE9\"}\r\n");
    std::fs::write(root.join("captions.jsonl"), bytes).unwrap();
    let (entries, skipped) = scan(root).unwrap();
    assert_eq!(entries.len(), 5, "{skipped:?}");
    assert_eq!(entries[0].relative, "dots..png", "the first lines are read");
    assert_eq!(entries[2].relative, "more/windows.png");
    assert_eq!(entries[4].caption, "the second picture");
    // Spelled as the folder walk names it, so the second spelling is the same file twice.
    assert_eq!(entries[1].relative, "more/dotted.png");
    assert_eq!(
        (skipped[0].relative.as_str(), skipped[0].reason.as_str()),
        ("more/dotted.png", "listed twice in captions.jsonl")
    );
    assert_eq!(skipped.len(), 7, "{skipped:?}");
    let not_utf8 = &skipped[5];
    assert_eq!(
        (not_utf8.relative.as_str(), not_utf8.reason.as_str()),
        ("captions.jsonl:11", "not UTF-8 text")
    );
    // The image the file does not list is reported, not silently left out.
    let unlisted = skipped.last().unwrap();
    assert_eq!(
        (unlisted.relative.as_str(), unlisted.reason.as_str()),
        (
            "more/unlisted.png",
            "no caption (not listed in captions.jsonl)"
        )
    );
    let dataset = Dataset::load(root, 16, 5, None, &NoProgress, &CancelToken::new()).unwrap();
    assert_eq!(dataset.items.len(), 5);
}

#[test]
fn an_all_bad_folder_is_an_error_and_the_split_is_stable() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("x.png"), b"nope").unwrap();
    std::fs::write(dir.path().join("x.txt"), b"caption").unwrap();
    let err = Dataset::load(dir.path(), 16, 5, None, &NoProgress, &CancelToken::new()).unwrap_err();
    assert!(
        matches!(err, DatasetError::Empty { skipped: 1, .. }),
        "{err}"
    );
    // The error quotes why the file was skipped, naming it once (relative to the folder).
    let message = err.to_string();
    assert!(message.contains("; x.png: not an image"), "{message}");
    assert_eq!(message.matches("x.png").count(), 1, "{message}");
    // The split depends only on the path, and roughly honours the percentage.
    let validation = (0..2000)
        .filter(|i| split_of(&format!("img/{i}.png"), 10) == Split::Validation)
        .count();
    assert!((150..250).contains(&validation), "{validation}");
    assert_eq!(
        split_of("emoji/1f600.png", 10),
        split_of("emoji/1f600.png", 10)
    );
}

#[test]
fn decoded_pixels_are_cached_and_stale_entries_redecoded() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    std::fs::create_dir_all(&root).unwrap();
    picture(&root.join("a.png"), 10);
    std::fs::write(root.join("a.txt"), "a").unwrap();
    let cache = dir.path().join("cache/pixels.bin");
    let first =
        Dataset::load(&root, 16, 5, Some(&cache), &NoProgress, &CancelToken::new()).unwrap();
    assert!(cache.exists());
    let second =
        Dataset::load(&root, 16, 5, Some(&cache), &NoProgress, &CancelToken::new()).unwrap();
    assert_eq!(first.items[0].pixels, second.items[0].pixels);
    // Replace the image: its size changes, so the cached pixels must not be reused.
    RgbaImage::from_pixel(50, 50, Rgba([255, 0, 0, 255]))
        .save(root.join("a.png"))
        .unwrap();
    let third =
        Dataset::load(&root, 16, 5, Some(&cache), &NoProgress, &CancelToken::new()).unwrap();
    assert_eq!(third.items[0].pixels.get_pixel(8, 8).0, [255, 0, 0]);
    // Edited in place to the same size with its modification time put back (as `touch -r`
    // or an editor keeping times does): decoded again all the same (Unix: the change time).
    #[cfg(unix)]
    {
        let file = root.join("a.png");
        let modified = std::fs::metadata(&file).unwrap().modified().unwrap();
        let len = std::fs::metadata(&file).unwrap().len();
        RgbaImage::from_pixel(50, 50, Rgba([0, 0, 255, 255]))
            .save(&file)
            .unwrap();
        assert_eq!(std::fs::metadata(&file).unwrap().len(), len, "same size");
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(modified)
            .unwrap();
        let edited =
            Dataset::load(&root, 16, 5, Some(&cache), &NoProgress, &CancelToken::new()).unwrap();
        assert_eq!(edited.items[0].pixels.get_pixel(8, 8).0, [0, 0, 255]);
    }
    // A removed image's pixels leave the cache at the next load.
    picture(&root.join("b.png"), 11);
    std::fs::write(root.join("b.txt"), "b").unwrap();
    Dataset::load(&root, 16, 5, Some(&cache), &NoProgress, &CancelToken::new()).unwrap();
    let with_two = std::fs::metadata(&cache).unwrap().len();
    std::fs::remove_file(root.join("b.png")).unwrap();
    std::fs::remove_file(root.join("b.txt")).unwrap();
    Dataset::load(&root, 16, 5, Some(&cache), &NoProgress, &CancelToken::new()).unwrap();
    let with_one = std::fs::metadata(&cache).unwrap().len();
    assert_eq!(
        with_two - with_one,
        8 + 5 + 8 + 8 + 16 * 16 * 3,
        "one entry fewer"
    );
    // A damaged cache is ignored, not fatal.
    std::fs::write(&cache, b"garbage").unwrap();
    Dataset::load(&root, 16, 5, Some(&cache), &NoProgress, &CancelToken::new()).unwrap();
}

#[test]
fn a_cancelled_load_keeps_what_it_decoded_in_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    std::fs::create_dir_all(&root).unwrap();
    for i in 0..100 {
        picture(&root.join(format!("{i:03}.png")), i);
        std::fs::write(root.join(format!("{i:03}.txt")), "a picture").unwrap();
    }
    let cache = dir.path().join("cache/pixels.bin");
    let entries_in = |cache: &Path| {
        let bytes = std::fs::read(cache).unwrap();
        u64::from_le_bytes(bytes[16..24].try_into().unwrap())
    };
    // Cancelled once the load reports its first progress: the check after 64 files stops it.
    let cancel = CancelToken::new();
    let cancel_on_progress = {
        let cancel = cancel.clone();
        move |_: textok_studio::jobs::Progress| cancel.cancel()
    };
    let err = Dataset::load(&root, 16, 0, Some(&cache), &cancel_on_progress, &cancel).unwrap_err();
    assert!(err.to_string().contains("cancelled"), "{err}");
    assert_eq!(
        entries_in(&cache),
        64,
        "the 64 images decoded before the cancel"
    );
    // Cancelled again at the same point: the 64 came from the cache, and stay in it.
    let cancel = CancelToken::new();
    let cancel_on_progress = {
        let cancel = cancel.clone();
        move |_: textok_studio::jobs::Progress| cancel.cancel()
    };
    Dataset::load(&root, 16, 0, Some(&cache), &cancel_on_progress, &cancel).unwrap_err();
    assert_eq!(entries_in(&cache), 64);
    let full = Dataset::load(&root, 16, 0, Some(&cache), &NoProgress, &CancelToken::new()).unwrap();
    assert_eq!(full.items.len(), 100);
    assert_eq!(entries_in(&cache), 100);
}

#[cfg(unix)]
#[test]
fn links_to_outside_the_folder_count_once_and_links_inside_it_are_not_followed() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    let root = dir.path().join("data");
    std::fs::create_dir_all(outside.join("more")).unwrap();
    std::fs::create_dir_all(root.join("real")).unwrap();
    picture(&root.join("real/a.png"), 1);
    std::fs::write(root.join("real/a.txt"), "a picture in the folder").unwrap();
    picture(&outside.join("b.png"), 2);
    std::fs::write(root.join("b.txt"), "a linked picture").unwrap();
    std::fs::write(root.join("b2.txt"), "the same picture linked again").unwrap();
    picture(&outside.join("more/c.png"), 3);
    std::fs::write(outside.join("more/c.txt"), "in a linked folder").unwrap();
    symlink(outside.join("b.png"), root.join("b.png")).unwrap();
    symlink(outside.join("b.png"), root.join("b2.png")).unwrap(); // listed once
    symlink(outside.join("more"), root.join("more")).unwrap();
    symlink(outside.join("more"), root.join("real/more-again")).unwrap(); // listed once
    symlink(root.join("real"), root.join("again")).unwrap(); // inside: real/ lists it
    symlink(&root, root.join("real/up")).unwrap(); // a loop
    symlink(root.join("real/a.png"), root.join("a-again.png")).unwrap(); // inside
    std::fs::write(root.join("a-again.txt"), "a second name").unwrap();
    symlink(outside.join("gone.png"), root.join("gone.png")).unwrap(); // broken
    std::fs::write(root.join("gone.txt"), "a broken link").unwrap();

    let (entries, skipped) = scan(&root).unwrap();
    let listed = names(&entries);
    assert_eq!(listed, ["b.png", "gone.png", "more/c.png", "real/a.png"]);
    assert!(skipped.is_empty(), "{skipped:?}");
    let dataset = Dataset::load(&root, 16, 0, None, &NoProgress, &CancelToken::new()).unwrap();
    assert_eq!(dataset.items.len(), 3);
    let gone = dataset.skipped.iter().find(|s| s.relative == "gone.png");
    assert!(
        gone.is_some_and(|s| s.reason.contains("cannot open image")),
        "{:?}",
        dataset.skipped
    );
}

#[test]
fn blank_captions_are_counted_on_the_reports_first_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for (name, caption) in [("a", "a gradient"), ("b", "  \n"), ("c", "")] {
        picture(&root.join(format!("{name}.png")), 1);
        std::fs::write(root.join(format!("{name}.txt")), caption).unwrap();
    }
    let dataset = Dataset::load(root, 16, 0, None, &NoProgress, &CancelToken::new()).unwrap();
    assert_eq!(dataset.items.len(), 3, "blank captions are kept");
    let report = dataset.skip_report();
    let first = report.lines().next().unwrap();
    assert!(first.contains("2 images have an empty caption"), "{report}");
    std::fs::write(root.join("b.txt"), "another gradient").unwrap();
    std::fs::write(root.join("c.txt"), "a third").unwrap();
    let dataset = Dataset::load(root, 16, 0, None, &NoProgress, &CancelToken::new()).unwrap();
    assert_eq!(dataset.skip_report(), "no files skipped");
}
