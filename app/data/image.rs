//! Image input and output.
//!
//! Input: any format the `image` crate decodes; alpha is composited on white; the largest centred
//! square is cropped and resized (Lanczos3) to the model's resolution. Dimension and memory
//! limits are checked against the header before any pixel is decoded, so a decompression bomb is
//! refused with a message instead of exhausting memory.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use image::{
    DynamicImage, GenericImageView, ImageDecoder, ImageFormat, ImageReader, Limits, Rgb,
    Rgb32FImage, RgbImage, imageops::FilterType, metadata::Orientation,
};

/// Largest width or height accepted (pixels).
pub const MAX_IMAGE_SIDE: u32 = 16_384;
/// Most memory a single decode may allocate (bytes).
pub const MAX_DECODE_BYTES: u64 = 1 << 30;
/// Smallest width or height accepted: below this there is nothing to tokenize.
pub const MIN_IMAGE_SIDE: u32 = 8;

/// I/O failures keep their error in a field named `cause`, not `source`: the message already shows
/// it, and a `source` would be printed a second time by `{:#}` (the CLI's and the GUI's format).
#[derive(Debug, thiserror::Error)]
pub enum ImageLoadError {
    #[error("{path}: cannot open image: {cause}")]
    Open {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: the file is empty")]
    Empty { path: PathBuf },
    #[error(
        "{path}: not an image in a supported format (PNG, JPEG, GIF, BMP, TIFF, WebP, ICO, PNM, TGA, QOI)"
    )]
    UnknownFormat { path: PathBuf },
    #[error("{path}: image is {width}x{height} pixels; the limit is {max}x{max}")]
    TooLarge {
        path: PathBuf,
        width: u32,
        height: u32,
        max: u32,
    },
    #[error("{path}: decoding this image would need more than {limit_mib} MiB of memory")]
    TooMuchMemory { path: PathBuf, limit_mib: u64 },
    #[error("{path}: image is {width}x{height} pixels; at least {min}x{min} are needed")]
    TooSmall {
        path: PathBuf,
        width: u32,
        height: u32,
        min: u32,
    },
    #[error("{path}: cannot decode image: {reason}")]
    Decode { path: PathBuf, reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ImageSaveError {
    #[error("{path}: cannot encode PNG: {reason}")]
    Encode { path: PathBuf, reason: String },
    #[error("{path}: cannot write image: {cause}")]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
}

/// Decodes an image file, refusing empty, unknown, oversized and tiny images.
pub fn decode_file(path: &Path) -> Result<DynamicImage, ImageLoadError> {
    let p = || path.to_owned();
    let metadata =
        std::fs::metadata(path).map_err(|cause| ImageLoadError::Open { path: p(), cause })?;
    if metadata.len() == 0 {
        return Err(ImageLoadError::Empty { path: p() });
    }
    let open = || -> Result<ImageReader<_>, ImageLoadError> {
        ImageReader::open(path)
            .and_then(|r| r.with_guessed_format())
            .map_err(|cause| ImageLoadError::Open { path: p(), cause })
    };
    // The content checks read the file (a JPEG's end check all of it): once, before the header.
    let check = |reader: ImageReader<_>| -> Result<ImageReader<_>, ImageLoadError> {
        match reader.format() {
            None => Err(ImageLoadError::UnknownFormat { path: p() }),
            // Every supported format but TGA starts with a signature; a file whose content
            // matches none of them is not an image, whatever its extension says.
            Some(format) if format != ImageFormat::Tga && !has_known_signature(path) => {
                Err(ImageLoadError::UnknownFormat { path: p() })
            }
            // The JPEG decoder fills what a cut-short file lacks with grey and reports no
            // error; a partial download would be shown and trained on half grey.
            Some(ImageFormat::Jpeg) if !jpeg_has_end(path) => Err(ImageLoadError::Decode {
                path: p(),
                reason: "the file ends before the image does (a partial download or copy?)".into(),
            }),
            Some(_) => Ok(reader),
        }
    };
    // Header first: a 100000x100000 PNG is refused before a byte of it is decoded.
    let (width, height) = check(open()?)?
        .into_dimensions()
        .map_err(|e| decode_error(path, e))?;
    if width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        return Err(ImageLoadError::TooLarge {
            path: p(),
            width,
            height,
            max: MAX_IMAGE_SIDE,
        });
    }
    if width < MIN_IMAGE_SIDE || height < MIN_IMAGE_SIDE {
        return Err(ImageLoadError::TooSmall {
            path: p(),
            width,
            height,
            min: MIN_IMAGE_SIDE,
        });
    }
    let mut reader = open()?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits.clone());
    let mut decoder = reader.into_decoder().map_err(|e| decode_error(path, e))?;
    // The whole pixel buffer counts against the limit, as `ImageReader::decode` counts it.
    limits
        .reserve(decoder.total_bytes())
        .map_err(|e| decode_error(path, e))?;
    // Phone cameras store portrait photos sideways with an EXIF orientation tag; without
    // applying it the centre crop, the reconstruction and any training would see them rotated.
    // A tag that cannot be read is no reason to refuse the pixels.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| decode_error(path, e))?;
    image.apply_orientation(orientation);
    Ok(image)
}

/// Whether a JPEG file has an end-of-image marker after its first scan. The segments before
/// the scan are skipped by their lengths, so an EXIF thumbnail's own markers do not count;
/// inside the scan data a 0xFF byte is always followed by 0x00 or a marker, so 0xFF 0xD9 there
/// is the end. Data after the end (a Motion Photo's video) is allowed. A file that cannot be
/// read counts as complete: the decoder then says what is wrong.
fn jpeg_has_end(path: &Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return true;
    };
    let mut at = 2; // after the start-of-image marker
    let scan_start = loop {
        match bytes.get(at..at + 4) {
            Some([0xFF, 0xDA, _, _]) => break at + 2,
            // Fill bytes before a marker.
            Some([0xFF, 0xFF, _, _]) => at += 1,
            Some([0xFF, marker, high, low]) => {
                // Standalone markers carry no length.
                if matches!(marker, 0x01 | 0xD0..=0xD7) {
                    at += 2;
                } else {
                    at += 2 + usize::from(u16::from_be_bytes([*high, *low]));
                }
            }
            // Not a marker where one belongs, or the file ends before any scan: the decoder
            // reports such files itself.
            _ => return true,
        }
    };
    bytes[scan_start..]
        .windows(2)
        .any(|pair| pair == [0xFF, 0xD9])
}

fn has_known_signature(path: &Path) -> bool {
    let mut head = [0u8; 64];
    let read = std::fs::File::open(path).and_then(|mut file| {
        use std::io::Read;
        file.read(&mut head)
    });
    matches!(read, Ok(n) if image::guess_format(&head[..n]).is_ok())
}

fn decode_error(path: &Path, error: image::ImageError) -> ImageLoadError {
    match error {
        image::ImageError::Limits(limit) => match limit.kind() {
            image::error::LimitErrorKind::InsufficientMemory => ImageLoadError::TooMuchMemory {
                path: path.to_owned(),
                limit_mib: MAX_DECODE_BYTES >> 20,
            },
            _ => ImageLoadError::Decode {
                path: path.to_owned(),
                reason: limit.to_string(),
            },
        },
        image::ImageError::Unsupported(e) => ImageLoadError::Decode {
            path: path.to_owned(),
            reason: format!("unsupported image: {e}"),
        },
        other => ImageLoadError::Decode {
            path: path.to_owned(),
            reason: other.to_string(),
        },
    }
}

/// The text chunks of a PNG (tEXt, then zTXt, then iTXt) as `(keyword, text)`: what
/// [`save_png`] writes (a generated image's settings, a reconstruction's scores). Compressed
/// chunks are inflated with the png crate's size limit, so a bomb is an error, not an
/// allocation.
pub fn read_png_text(path: &Path) -> Result<Vec<(String, String)>, ImageLoadError> {
    let decode_error = |reason: String| ImageLoadError::Decode {
        path: path.to_owned(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|cause| ImageLoadError::Open {
        path: path.to_owned(),
        cause,
    })?;
    let reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .map_err(|e| decode_error(format!("not a readable PNG: {e}")))?;
    let info = reader.info();
    let mut text: Vec<(String, String)> = info
        .uncompressed_latin1_text
        .iter()
        .map(|chunk| (chunk.keyword.clone(), chunk.text.clone()))
        .collect();
    let inflate_error =
        |keyword: &str, e: png::DecodingError| decode_error(format!("text chunk `{keyword}`: {e}"));
    for chunk in &info.compressed_latin1_text {
        let mut chunk = chunk.clone();
        let value = chunk.decompress_text().and_then(|()| chunk.get_text());
        text.push((
            chunk.keyword.clone(),
            value.map_err(|e| inflate_error(&chunk.keyword, e))?,
        ));
    }
    for chunk in &info.utf8_text {
        let mut chunk = chunk.clone();
        let value = chunk.decompress_text().and_then(|()| chunk.get_text());
        text.push((
            chunk.keyword.clone(),
            value.map_err(|e| inflate_error(&chunk.keyword, e))?,
        ));
    }
    Ok(text)
}

/// Above this side (of the centre square) `preprocess` first shrinks the square to
/// [`PRESHRINK_TO`] in 8 bits, unless the model wants more pixels than that: as f32 a
/// 16384-pixel square (which the decode limits allow) would take 4 GiB, and its RGB copy 3 GiB.
pub const PRESHRINK_ABOVE: u32 = 4096;
pub const PRESHRINK_TO: u32 = 2048;

/// An image's centre square with its alpha composited on white, in 8 bits, read pixel by pixel:
/// what `thumbnail` shrinks without a full-size copy. (Averaging RGBA first and compositing
/// after would darken thin strokes on a transparent background.)
struct SquareOverWhite<'a> {
    image: &'a DynamicImage,
    x0: u32,
    y0: u32,
    side: u32,
}

impl GenericImageView for SquareOverWhite<'_> {
    type Pixel = Rgb<u8>;

    fn dimensions(&self) -> (u32, u32) {
        (self.side, self.side)
    }

    fn get_pixel(&self, x: u32, y: u32) -> Rgb<u8> {
        let [r, g, b, a] = self.image.get_pixel(self.x0 + x, self.y0 + y).0;
        let a = u32::from(a);
        let over_white = |c: u8| ((u32::from(c) * a + 255 * (255 - a) + 127) / 255) as u8;
        Rgb([over_white(r), over_white(g), over_white(b)])
    }
}

/// Alpha composited on white, largest centred square, resized to `size`x`size`; values in [0, 1].
pub fn preprocess(image: &DynamicImage, size: u32) -> Rgb32FImage {
    let (width, height) = image.dimensions();
    let side = width.min(height);
    let (x0, y0) = ((width - side) / 2, (height - side) / 2);
    if side > PRESHRINK_ABOVE && size <= PRESHRINK_TO {
        let square = SquareOverWhite {
            image,
            x0,
            y0,
            side,
        };
        let shrunk = image::imageops::thumbnail(&square, PRESHRINK_TO, PRESHRINK_TO);
        return preprocess(&DynamicImage::ImageRgb8(shrunk), size);
    }
    // Crop before converting: a panorama's f32 copy would be mostly cropped away.
    let rgba = if width == height {
        image.to_rgba32f()
    } else {
        image.crop_imm(x0, y0, side, side).to_rgba32f()
    };
    let mut square = Rgb32FImage::new(side, side);
    for (x, y, pixel) in square.enumerate_pixels_mut() {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let a = a.clamp(0.0, 1.0);
        let over_white = |c: f32| c.clamp(0.0, 1.0) * a + (1.0 - a);
        *pixel = Rgb([over_white(r), over_white(g), over_white(b)]);
    }
    if side == size {
        return square;
    }
    let mut resized = image::imageops::resize(&square, size, size, FilterType::Lanczos3);
    // Lanczos rings slightly outside [0, 1] at hard edges.
    for value in resized.iter_mut() {
        *value = value.clamp(0.0, 1.0);
    }
    resized
}

/// Decodes and preprocesses in one step.
pub fn load_for_model(path: &Path, size: u32) -> Result<Rgb32FImage, ImageLoadError> {
    Ok(preprocess(&decode_file(path)?, size))
}

/// `[0, 1]` RGB images of one size -> `[batch, 3, H, W]` in [-1, 1].
pub fn to_tensor(images: &[&Rgb32FImage], device: &Device) -> Tensor<4> {
    let (width, height) = images[0].dimensions();
    let (w, h) = (width as usize, height as usize);
    let mut data = vec![0.0f32; images.len() * 3 * h * w];
    for (i, image) in images.iter().enumerate() {
        assert_eq!(
            image.dimensions(),
            (width, height),
            "batch images must share one size"
        );
        for (x, y, pixel) in image.enumerate_pixels() {
            for c in 0..3 {
                data[((i * 3 + c) * h + y as usize) * w + x as usize] = pixel.0[c] * 2.0 - 1.0;
            }
        }
    }
    Tensor::from_data(TensorData::new(data, [images.len(), 3, h, w]), device)
}

/// `[batch, 3, H, W]` in ~[-1, 1] -> RGB images in [0, 1] (clamped).
pub fn from_tensor(tensor: Tensor<4>) -> Vec<Rgb32FImage> {
    let [batch, _, h, w] = tensor.dims();
    let values: Vec<f32> = tensor
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("a float tensor converts to f32");
    (0..batch)
        .map(|i| {
            Rgb32FImage::from_fn(w as u32, h as u32, |x, y| {
                let at = |c: usize| values[((i * 3 + c) * h + y as usize) * w + x as usize];
                Rgb([0, 1, 2].map(|c| ((at(c) + 1.0) * 0.5).clamp(0.0, 1.0)))
            })
        })
        .collect()
}

/// 8-bit RGB copy, rounding.
pub fn to_rgb8(image: &Rgb32FImage) -> RgbImage {
    RgbImage::from_fn(image.width(), image.height(), |x, y| {
        Rgb(image
            .get_pixel(x, y)
            .0
            .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8))
    })
}

/// Writes an 8-bit PNG atomically, with optional text chunks (key, value): `tEXt` where the
/// value is Latin-1 (what every PNG reader shows), `iTXt` (UTF-8) where it is not, since `tEXt`
/// cannot hold a caption with "’", "—", an emoji or CJK text and the encoder refuses it.
pub fn save_png(
    image: &Rgb32FImage,
    path: &Path,
    text: &[(&str, &str)],
) -> Result<(), ImageSaveError> {
    let rgb = to_rgb8(image);
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(Cursor::new(&mut bytes), rgb.width(), rgb.height());
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        for (key, value) in text {
            let latin1 = value.chars().all(|c| u32::from(c) <= 0xFF);
            let (key, value) = ((*key).to_owned(), (*value).to_owned());
            let added = if latin1 {
                encoder.add_text_chunk(key, value)
            } else {
                encoder.add_itxt_chunk(key, value)
            };
            added.map_err(|e| ImageSaveError::Encode {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        }
        let mut writer = encoder.write_header().map_err(|e| ImageSaveError::Encode {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        writer
            .write_image_data(rgb.as_raw())
            .map_err(|e| ImageSaveError::Encode {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
    }
    crate::files::write_atomic(path, &bytes).map_err(|cause| ImageSaveError::Write {
        path: path.to_owned(),
        cause,
    })
}
