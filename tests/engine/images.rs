use std::path::Path;

use image::{ImageBuffer, Rgb, Rgba, RgbaImage};
use textok_studio::data::image::{self as imageio, ImageLoadError, MAX_IMAGE_SIDE};

use crate::common::*;
use crate::memory::peak_bytes;

fn write_png_rgba(path: &Path, image: &RgbaImage) {
    image.save(path).unwrap();
}

#[test]
fn empty_not_image_and_truncated_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(
        imageio::decode_file(&empty),
        Err(ImageLoadError::Empty { .. })
    ));

    let text = dir.path().join("notes.png");
    std::fs::write(&text, b"hello, I am plain text pretending to be a picture").unwrap();
    let err = imageio::decode_file(&text).unwrap_err();
    assert!(matches!(err, ImageLoadError::UnknownFormat { .. }), "{err}");
    assert!(err.to_string().contains("notes.png"));

    let good = dir.path().join("good.png");
    write_png_rgba(
        &good,
        &RgbaImage::from_fn(64, 64, |x, y| Rgba([(x * 4) as u8, (y * 4) as u8, 9, 255])),
    );
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.path().join("truncated.png");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = imageio::decode_file(&truncated).unwrap_err();
    assert!(matches!(err, ImageLoadError::Decode { .. }), "{err}");

    // A JPEG cut short decodes "successfully" with grey where its data ends: refused.
    let jpeg = dir.path().join("good.jpg");
    image::RgbImage::from_fn(64, 64, |x, y| Rgb([(x * 4) as u8, (y * 4) as u8, 9]))
        .save(&jpeg)
        .unwrap();
    assert!(imageio::decode_file(&jpeg).is_ok());
    let bytes = std::fs::read(&jpeg).unwrap();
    let cut = dir.path().join("cut.jpg");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let err = imageio::decode_file(&cut).unwrap_err();
    assert!(
        err.to_string().contains("ends before the image does"),
        "{err}"
    );
    // Data after the end (a Motion Photo's video) is no reason to refuse it.
    let trailing = dir.path().join("motion.jpg");
    std::fs::write(
        &trailing,
        [bytes.as_slice(), b"ftypmp42 video data"].concat(),
    )
    .unwrap();
    assert!(imageio::decode_file(&trailing).is_ok());

    let missing = dir.path().join("missing.png");
    assert!(matches!(
        imageio::decode_file(&missing),
        Err(ImageLoadError::Open { .. })
    ));
}

#[test]
fn tiny_images_are_refused_with_their_size() {
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one.png");
    write_png_rgba(&one, &RgbaImage::from_pixel(1, 1, Rgba([1, 2, 3, 255])));
    let err = imageio::decode_file(&one).unwrap_err();
    assert!(
        matches!(
            err,
            ImageLoadError::TooSmall {
                width: 1,
                height: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("1x1"));
}

#[test]
fn huge_header_is_refused_before_decoding() {
    // A valid PNG signature and IHDR claiming 100000 x 100000 pixels, and no pixel data.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bomb.png");
    {
        let file = std::fs::File::create(&path).unwrap();
        let mut encoder = png::Encoder::new(file, 100_000, 100_000);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().unwrap();
        // A few bytes of zlib data: what a real decompression bomb looks like on disk.
        writer
            .write_chunk(
                png::chunk::IDAT,
                &[0x78, 0x9c, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01],
            )
            .unwrap();
        drop(writer);
    }
    let err = imageio::decode_file(&path).unwrap_err();
    assert!(
        matches!(
            err,
            ImageLoadError::TooLarge {
                width: 100_000,
                height: 100_000,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains(&MAX_IMAGE_SIDE.to_string()));
}

#[test]
fn sixteen_bit_images_are_read_at_full_precision() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deep.png");
    let image: ImageBuffer<Rgb<u16>, Vec<u16>> =
        ImageBuffer::from_fn(40, 40, |x, _| Rgb([(x as u16) * 1600, 30000, 65535]));
    image.save(&path).unwrap();
    let loaded = imageio::load_for_model(&path, 40).unwrap();
    let pixel = loaded.get_pixel(10, 5).0;
    assert!((pixel[0] - 16000.0 / 65535.0).abs() < 1e-4, "{pixel:?}");
    assert!((pixel[1] - 30000.0 / 65535.0).abs() < 1e-4);
    assert!((pixel[2] - 1.0).abs() < 1e-6);
}

#[test]
fn cmyk_jpeg_decodes_to_the_right_colour() {
    // Made by Pillow: a solid CMYK (0, 255, 255, 0) = pure red JPEG.
    let loaded = imageio::load_for_model(&repo_path("tests/fixtures/cmyk.jpg"), 16).unwrap();
    let [r, g, b] = loaded.get_pixel(8, 8).0;
    assert!(
        r > 0.8 && g < 0.2 && b < 0.2,
        "expected red, got {:?}",
        (r, g, b)
    );
}

/// A baseline JPEG of `image` with an EXIF APP1 segment carrying only the orientation tag, as a
/// phone camera writes a portrait photo (its sensor's landscape pixels, plus "rotate me").
fn jpeg_with_orientation(image: &image::RgbImage, orientation: u16) -> Vec<u8> {
    let mut plain = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut plain, 95)
        .encode_image(image)
        .unwrap();
    // Big-endian TIFF header, one IFD with one SHORT entry: tag 0x0112 = orientation.
    let mut tiff = b"MM\x00\x2a\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01".to_vec();
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut app1 = b"Exif\x00\x00".to_vec();
    app1.extend_from_slice(&tiff);
    let mut jpeg = plain[..2].to_vec(); // SOI
    jpeg.extend_from_slice(&[0xFF, 0xE1]);
    jpeg.extend_from_slice(&(app1.len() as u16 + 2).to_be_bytes());
    jpeg.extend_from_slice(&app1);
    jpeg.extend_from_slice(&plain[2..]);
    jpeg
}

#[test]
fn exif_orientation_is_applied() {
    // Stored 64x32, red on the left, green on the right; orientation 6 says "rotate 90° clockwise
    // to show", so the picture is 32x64 with red on top.
    let stored = image::RgbImage::from_fn(64, 32, |x, _| {
        if x < 32 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 255, 0])
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portrait.jpg");
    std::fs::write(&path, jpeg_with_orientation(&stored, 6)).unwrap();
    let decoded = imageio::decode_file(&path).unwrap().to_rgb8();
    assert_eq!(decoded.dimensions(), (32, 64));
    let [r, g, _] = decoded.get_pixel(16, 8).0;
    assert!(r > 200 && g < 60, "top should be red, got {:?}", (r, g));
    let [r, g, _] = decoded.get_pixel(16, 56).0;
    assert!(
        g > 200 && r < 60,
        "bottom should be green, got {:?}",
        (r, g)
    );

    // Orientation 1 leaves the pixels as stored.
    std::fs::write(&path, jpeg_with_orientation(&stored, 1)).unwrap();
    assert_eq!(
        imageio::decode_file(&path).unwrap().to_rgb8().dimensions(),
        (64, 32)
    );
}

#[test]
fn alpha_is_composited_on_white_and_the_centre_is_cropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alpha.png");
    // 96 x 32: left third transparent, middle third opaque black, right third half-transparent black.
    let image = RgbaImage::from_fn(96, 32, |x, _| match x / 32 {
        0 => Rgba([0, 0, 0, 0]),
        1 => Rgba([0, 0, 0, 255]),
        _ => Rgba([0, 0, 0, 128]),
    });
    write_png_rgba(&path, &image);
    // Centre square = the opaque black middle third.
    let centre = imageio::load_for_model(&path, 32).unwrap();
    assert!(centre.pixels().all(|p| p.0 == [0.0, 0.0, 0.0]));
    let full = imageio::preprocess(&imageio::decode_file(&path).unwrap(), 32);
    assert_eq!(full.dimensions(), (32, 32));
    let transparent =
        image::DynamicImage::ImageRgba8(RgbaImage::from_pixel(20, 20, Rgba([0, 0, 0, 0])));
    assert!(
        imageio::preprocess(&transparent, 10)
            .pixels()
            .all(|p| p.0.iter().all(|v| (v - 1.0).abs() < 1e-5))
    );
    let half = image::DynamicImage::ImageRgba8(RgbaImage::from_pixel(20, 20, Rgba([0, 0, 0, 128])));
    let value = imageio::preprocess(&half, 20).get_pixel(3, 3).0[0];
    assert!((value - (1.0 - 128.0 / 255.0)).abs() < 1e-5, "{value}");
}

#[test]
fn huge_images_are_shrunk_first_and_come_out_like_small_ones() {
    // The same picture at two sizes: a wide frame (cropped away) around a centre square of
    // four coloured quadrants with a transparent top-left one (white after compositing).
    let picture = |side: u32| {
        let (width, border) = (side + side / 2, side / 4);
        let image = RgbaImage::from_fn(width, side, |x, y| {
            if x < border || x >= border + side {
                return Rgba([0, 255, 0, 255]);
            }
            match ((x - border) * 2 / side, y * 2 / side) {
                (0, 0) => Rgba([0, 0, 0, 0]),
                (1, 0) => Rgba([200, 30, 30, 255]),
                (0, _) => Rgba([30, 30, 200, 255]),
                _ => Rgba([240, 220, 40, 255]),
            }
        });
        image::DynamicImage::ImageRgba8(image)
    };
    let side = imageio::PRESHRINK_ABOVE + 104;
    let huge_picture = picture(side);
    let (huge, peak) = peak_bytes(|| imageio::preprocess(&huge_picture, 16));
    // Shrunk to 2048, its f32 copies take 64 + 48 MiB; unshrunk, the 4200-pixel square's
    // would take 269 + 202 MiB.
    assert!(peak < 160 << 20, "{} MiB at once", peak >> 20);
    let small = imageio::preprocess(&picture(side / 8), 16);
    assert_eq!(huge.dimensions(), (16, 16));
    let worst = huge
        .pixels()
        .zip(small.pixels())
        .flat_map(|(a, b)| a.0.into_iter().zip(b.0).map(|(a, b)| (a - b).abs()))
        .fold(0.0f32, f32::max);
    assert!(worst < 0.02, "largest difference {worst}");
    assert!(huge.get_pixel(3, 3).0.iter().all(|v| *v > 0.99), "white");
    assert!((huge.get_pixel(12, 3).0[0] - 200.0 / 255.0).abs() < 0.01);

    // Thin red strokes on transparent black: composited before shrinking they average to pink
    // (1, 0.5, 0.5); shrunk first, the transparent black would darken them to (0.75, 0.5, 0.5).
    let strokes = |side: u32| {
        image::DynamicImage::ImageRgba8(RgbaImage::from_fn(side, side, |x, _| {
            if x % 2 == 0 {
                Rgba([255, 0, 0, 255])
            } else {
                Rgba([0, 0, 0, 0])
            }
        }))
    };
    for side in [side, 400] {
        let image = imageio::preprocess(&strokes(side), 16);
        let [r, g, b] = image.get_pixel(8, 8).0;
        assert!(
            (r - 1.0).abs() < 0.02 && (g - 0.5).abs() < 0.02 && (b - 0.5).abs() < 0.02,
            "side {side}: {r} {g} {b}"
        );
    }

    // A panorama whose square is small enough not to be shrunk is cropped before any f32 copy.
    let panorama = image::DynamicImage::ImageRgba8(RgbaImage::from_pixel(
        16384,
        2048,
        Rgba([10, 20, 30, 255]),
    ));
    let (_, peak) = peak_bytes(|| imageio::preprocess(&panorama, 16));
    // The f32 copy of the whole frame would be 512 MiB; of its square, 64 MiB.
    assert!(peak < 200 << 20, "{} MiB at once", peak >> 20);
}

#[test]
fn tensor_conversion_round_trips_and_pngs_are_written() {
    let image =
        image::Rgb32FImage::from_fn(32, 32, |x, y| Rgb([x as f32 / 31.0, y as f32 / 31.0, 0.5]));
    let tensor = imageio::to_tensor(&[&image], &cpu());
    assert_eq!(tensor.dims(), [1, 3, 32, 32]);
    let back = imageio::from_tensor(tensor).remove(0);
    for (a, b) in image.as_raw().iter().zip(back.as_raw()) {
        assert!((a - b).abs() < 1e-6);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.png");
    imageio::save_png(&back, &path, &[("caption", "a gradient")]).unwrap();
    let reread = imageio::load_for_model(&path, 32).unwrap();
    for (a, b) in image.as_raw().iter().zip(reread.as_raw()) {
        assert!((a - b).abs() <= 0.5 / 255.0 + 1e-6);
    }
}
