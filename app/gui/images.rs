//! Pixels on screen: conversions to egui images, a background thumbnail loader, and image cells
//! whose zoom and pan are shared (the Compare pane moves all cells together).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};

use eframe::egui;
use image::Rgb32FImage;

/// Longest side of a Library thumbnail, in pixels.
pub const THUMBNAIL_SIZE: u32 = 160;

/// A model-space image (`[0, 1]` floats) as an egui image.
pub fn color_image(image: &Rgb32FImage) -> egui::ColorImage {
    let rgb = crate::data::image::to_rgb8(image);
    egui::ColorImage::from_rgb([rgb.width() as usize, rgb.height() as usize], rgb.as_raw())
}

/// Uploads `image` as a texture (nearest filtering when magnified, so pixels stay honest).
pub fn texture(ctx: &egui::Context, name: &str, image: &Rgb32FImage) -> egui::TextureHandle {
    ctx.load_texture(name, color_image(image), pixel_options())
}

pub fn pixel_options() -> egui::TextureOptions {
    egui::TextureOptions {
        magnification: egui::TextureFilter::Nearest,
        minification: egui::TextureFilter::Linear,
        ..Default::default()
    }
}

enum Thumbnail {
    Pending,
    Ready(egui::TextureHandle),
    Failed(String),
}

/// What a caller sees for one thumbnail.
pub enum ThumbnailState<'a> {
    Pending,
    Ready(&'a egui::TextureHandle),
    Failed(&'a str),
}

type Decoded = (PathBuf, Result<egui::ColorImage, String>);

/// Decodes thumbnails on one worker thread (decoding a big photo takes longer than a frame).
pub struct Thumbnails {
    cache: HashMap<PathBuf, Thumbnail>,
    requests: Sender<PathBuf>,
    results: Receiver<Decoded>,
}

impl Thumbnails {
    pub fn new(notify: Arc<dyn Fn() + Send + Sync>) -> Self {
        let (requests, queue) = channel::<PathBuf>();
        let (done, results) = channel::<Decoded>();
        let spawned = std::thread::Builder::new()
            .name("thumbnails".into())
            .spawn(move || {
                for path in queue {
                    let decoded = decode_thumbnail(&path);
                    if done.send((path, decoded)).is_err() {
                        break;
                    }
                    notify();
                }
            });
        if let Err(error) = spawned {
            tracing::error!("cannot start the thumbnail thread: {error}");
        }
        Self {
            cache: HashMap::new(),
            requests,
            results,
        }
    }

    /// Takes finished decodes (call once per frame).
    pub fn receive(&mut self, ctx: &egui::Context) {
        while let Ok((path, decoded)) = self.results.try_recv() {
            let entry = match decoded {
                Ok(image) => Thumbnail::Ready(ctx.load_texture(
                    format!("thumb:{}", path.display()),
                    image,
                    egui::TextureOptions::LINEAR,
                )),
                Err(message) => Thumbnail::Failed(message),
            };
            self.cache.insert(path, entry);
        }
    }

    /// The thumbnail of `path`, queued for decoding on first request.
    pub fn get(&mut self, path: &Path) -> ThumbnailState<'_> {
        if !self.cache.contains_key(path) {
            let queued = self.requests.send(path.to_owned()).is_ok();
            self.cache.insert(
                path.to_owned(),
                if queued {
                    Thumbnail::Pending
                } else {
                    Thumbnail::Failed("the thumbnail thread stopped".into())
                },
            );
        }
        match &self.cache[path] {
            Thumbnail::Pending => ThumbnailState::Pending,
            Thumbnail::Ready(texture) => ThumbnailState::Ready(texture),
            Thumbnail::Failed(message) => ThumbnailState::Failed(message),
        }
    }

    /// Whether `path`'s thumbnail was requested and has arrived (decoded or failed).
    pub fn arrived(&self, path: &Path) -> bool {
        matches!(
            self.cache.get(path),
            Some(Thumbnail::Ready(_) | Thumbnail::Failed(_))
        )
    }

    /// Thumbnails requested so far.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// Forgets `path` (its file changed).
    pub fn forget(&mut self, path: &Path) {
        self.cache.remove(path);
    }
}

fn decode_thumbnail(path: &Path) -> Result<egui::ColorImage, String> {
    let decoded = crate::data::image::decode_file(path).map_err(|e| e.to_string())?;
    // A cheap downscale first: Lanczos over a 24-megapixel photo would take seconds.
    let small = if decoded.width().max(decoded.height()) > 4 * THUMBNAIL_SIZE {
        decoded.thumbnail(4 * THUMBNAIL_SIZE, 4 * THUMBNAIL_SIZE)
    } else {
        decoded
    };
    // The square the models see: transparent areas on white, centre crop.
    let rgb = crate::data::image::to_rgb8(&crate::data::image::preprocess(&small, THUMBNAIL_SIZE));
    Ok(egui::ColorImage::from_rgb(
        [rgb.width() as usize, rgb.height() as usize],
        rgb.as_raw(),
    ))
}

/// Zoom and pan shared by every cell of a view: `zoom` 1 shows the whole image, `center` is the
/// image point (in `[0, 1]²`) at the middle of each cell.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ViewTransform {
    pub zoom: f32,
    pub center: egui::Vec2,
}

impl Default for ViewTransform {
    fn default() -> Self {
        Self {
            zoom: 1.0,
            center: egui::vec2(0.5, 0.5),
        }
    }
}

impl ViewTransform {
    pub const MAX_ZOOM: f32 = 16.0;

    /// The part of the image a cell shows, in texture coordinates.
    pub fn uv_rect(&self) -> egui::Rect {
        let half = 0.5 / self.zoom;
        egui::Rect::from_min_max(
            egui::pos2(self.center.x - half, self.center.y - half),
            egui::pos2(self.center.x + half, self.center.y + half),
        )
    }

    /// Zooms by `factor` keeping the image point under `anchor` (in `[0, 1]²` of the cell) fixed.
    pub fn zoom_about(&mut self, factor: f32, anchor: egui::Vec2) {
        let before = self.uv_rect();
        let point = before.min.to_vec2() + anchor * before.size();
        self.zoom = (self.zoom * factor).clamp(1.0, Self::MAX_ZOOM);
        let size = 1.0 / self.zoom;
        self.center = point - anchor * size + egui::vec2(size, size) * 0.5;
        self.clamp();
    }

    /// Pans by `delta` cell fractions (dragging right moves the view left).
    pub fn pan(&mut self, delta: egui::Vec2) {
        self.center -= delta / self.zoom;
        self.clamp();
    }

    fn clamp(&mut self) {
        let half = 0.5 / self.zoom;
        self.center.x = self.center.x.clamp(half, 1.0 - half);
        self.center.y = self.center.y.clamp(half, 1.0 - half);
    }
}

/// Draws `texture` in a square cell of side `side` through `view`; scrolling over the cell zooms
/// and dragging pans, changing `view` for every cell that shares it. Double-click resets.
pub fn image_cell(
    ui: &mut egui::Ui,
    texture: &egui::TextureHandle,
    side: f32,
    view: &mut ViewTransform,
) -> egui::Response {
    let (rect, response) =
        ui.allocate_exact_size(egui::vec2(side, side), egui::Sense::click_and_drag());
    handle_view_input(ui, &response, rect, view);
    egui::Image::from_texture((texture.id(), rect.size()))
        .uv(view.uv_rect())
        .paint_at(ui, rect);
    response
}

/// Scroll-to-zoom, drag-to-pan and double-click-to-reset over `rect`.
pub fn handle_view_input(
    ui: &egui::Ui,
    response: &egui::Response,
    rect: egui::Rect,
    view: &mut ViewTransform,
) {
    if response.double_clicked() {
        *view = ViewTransform::default();
    }
    if response.dragged() {
        view.pan(response.drag_delta() / rect.size());
    }
    if response.hovered() {
        let scroll = ui.input(|i| i.smooth_scroll_delta.y);
        if scroll != 0.0
            && let Some(pointer) = response.hover_pos()
        {
            let anchor = (pointer - rect.min) / rect.size();
            view.zoom_about((scroll / 200.0).exp(), anchor);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zoom_keeps_the_anchor_point_fixed() {
        let mut view = ViewTransform::default();
        let anchor = egui::vec2(0.25, 0.75);
        let before = view.uv_rect();
        let point = before.min.to_vec2() + anchor * before.size();
        view.zoom_about(2.0, anchor);
        let after = view.uv_rect();
        let moved = after.min.to_vec2() + anchor * after.size();
        assert!((moved - point).length() < 1e-5, "{point:?} -> {moved:?}");
        assert!((after.width() - 0.5).abs() < 1e-6);
    }

    #[test]
    fn the_view_never_leaves_the_image() {
        let mut view = ViewTransform::default();
        view.zoom_about(4.0, egui::vec2(0.5, 0.5));
        view.pan(egui::vec2(-100.0, 100.0));
        let uv = view.uv_rect();
        assert!(uv.min.x >= -1e-6 && uv.max.x <= 1.0 + 1e-6, "{uv:?}");
        assert!(uv.min.y >= -1e-6 && uv.max.y <= 1.0 + 1e-6, "{uv:?}");
        view.zoom_about(0.01, egui::vec2(0.0, 0.0));
        assert_eq!(view.uv_rect(), ViewTransform::default().uv_rect());
    }
}
