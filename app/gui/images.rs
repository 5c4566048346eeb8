//! Pixels on screen: conversions to egui images, a background thumbnail loader, and image cells
//! whose zoom and pan are shared (the Compare pane moves all cells together).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Condvar, Mutex};

use eframe::egui;
use image::Rgb32FImage;

use crate::files::FileStamp;

/// Longest side of a Library thumbnail, in points: decoded at that many pixels per point of
/// the display (up to [`MAX_THUMBNAIL_SCALE`]), so a HiDPI screen shows it sharp.
pub const THUMBNAIL_SIZE: u32 = 160;
/// The most pixels per point thumbnails are decoded at (a 3x screen gets 2x thumbnails:
/// 320x320 RGBA is 400 KB a texture).
pub const MAX_THUMBNAIL_SCALE: u32 = 2;

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
    /// Queued or decoding; `seen` is the frame that last asked for it, `stamp` the file's
    /// when it was queued.
    Pending { seen: u64, stamp: FileStamp },
    /// `checked` is when `stamp` was last compared with the file (at most once per
    /// [`RECHECK_FILE_AFTER`]: a grid of thumbnails would otherwise stat every file every frame).
    Ready {
        texture: egui::TextureHandle,
        seen: u64,
        stamp: FileStamp,
        checked: std::time::Instant,
    },
    /// Retried once `RETRY_FAILED_AFTER` has passed (a drive plugged back in, a file fixed).
    Failed {
        message: String,
        at: std::time::Instant,
    },
}

/// What a caller sees for one thumbnail.
pub enum ThumbnailState<'a> {
    Pending,
    Ready(&'a egui::TextureHandle),
    Failed(&'a str),
}

/// A decoded thumbnail: its file, the side it was decoded at, the image or why not.
type Decoded = (PathBuf, u32, Result<egui::ColorImage, String>);

/// Textures kept before the least recently shown are dropped (160x160 RGBA: 100 KB each; at
/// 2x, a quarter as many).
const MAX_TEXTURES: usize = 1500;
/// A shown image's file (a thumbnail's, Compare's) is looked at again after this long, to catch
/// edits made elsewhere.
pub const RECHECK_FILE_AFTER: std::time::Duration = std::time::Duration::from_secs(1);
/// A thumbnail that failed is tried again when asked for after this long.
const RETRY_FAILED_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// The worker's to-do list: newest request last, taken first, with the side to decode it at.
#[derive(Default)]
struct Queue {
    wanted: Vec<(PathBuf, u32)>,
    closed: bool,
}

type SharedQueue = Arc<(Mutex<Queue>, Condvar)>;

fn lock_queue(queue: &Mutex<Queue>) -> std::sync::MutexGuard<'_, Queue> {
    queue
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Decodes thumbnails on one worker thread (decoding a big photo takes longer than a frame).
/// The newest request is decoded first and a request no frame has asked for since (its row was
/// scrolled away) is dropped, so the thumbnails on screen never wait behind every row scrolled
/// past; textures beyond [`MAX_TEXTURES`] are dropped least recently shown first.
pub struct Thumbnails {
    cache: HashMap<PathBuf, Thumbnail>,
    queue: SharedQueue,
    results: Receiver<Decoded>,
    frame: u64,
    worker_running: bool,
    max_textures: usize,
    /// Pixels per point thumbnails are decoded at (1 until a frame says otherwise).
    scale: u32,
}

impl Thumbnails {
    pub fn new(notify: Arc<dyn Fn() + Send + Sync>) -> Self {
        let queue: SharedQueue = Arc::default();
        let (done, results) = channel::<Decoded>();
        let worker_queue = queue.clone();
        let spawned = std::thread::Builder::new()
            .name("thumbnails".into())
            .spawn(move || {
                let (list, wakeup) = &*worker_queue;
                loop {
                    let (path, side) = {
                        let mut queue = lock_queue(list);
                        loop {
                            if queue.closed {
                                return;
                            }
                            if let Some(wanted) = queue.wanted.pop() {
                                break wanted;
                            }
                            queue = wakeup
                                .wait(queue)
                                .unwrap_or_else(|poisoned| poisoned.into_inner());
                        }
                    };
                    // A decoder that panics on one crafted file must not end the thread (and
                    // with it every later thumbnail): its thumbnail shows the failure instead.
                    let decoded = std::panic::catch_unwind(|| decode_thumbnail(&path, side))
                        .unwrap_or_else(|_| Err("the image decoder crashed on this file".into()));
                    if done.send((path, side, decoded)).is_err() {
                        return;
                    }
                    notify();
                }
            });
        if let Err(error) = &spawned {
            tracing::error!("cannot start the thumbnail thread: {error}");
        }
        Self {
            cache: HashMap::new(),
            queue,
            results,
            frame: 0,
            worker_running: spawned.is_ok(),
            max_textures: MAX_TEXTURES,
            scale: 1,
        }
    }

    /// The side thumbnails are decoded at now, in pixels.
    pub fn side(&self) -> u32 {
        THUMBNAIL_SIZE * self.scale
    }

    /// Takes finished decodes, drops the requests no frame asked for since the last one, and
    /// textures beyond the limit (call once per frame, before anything asks).
    pub fn receive(&mut self, ctx: &egui::Context) {
        // The window moved to a screen of another density: decode again, at its pixels.
        let scale = (ctx.pixels_per_point().ceil() as u32).clamp(1, MAX_THUMBNAIL_SCALE);
        if scale != self.scale {
            self.scale = scale;
            self.cache.clear();
            lock_queue(&self.queue.0).wanted.clear();
        }
        while let Ok((path, side, decoded)) = self.results.try_recv() {
            // A request dropped meanwhile (scrolled away) is not cached: asked again, it queues.
            // One decoded for another density is dropped the same way.
            let Some(&Thumbnail::Pending { stamp, .. }) = self.cache.get(&path) else {
                continue;
            };
            if side != self.side() {
                continue;
            }
            let entry = match decoded {
                Ok(image) => Thumbnail::Ready {
                    texture: ctx.load_texture(
                        format!("thumb:{}", path.display()),
                        image,
                        egui::TextureOptions::LINEAR,
                    ),
                    seen: self.frame,
                    stamp,
                    checked: std::time::Instant::now(),
                },
                Err(message) => Thumbnail::Failed {
                    message,
                    at: std::time::Instant::now(),
                },
            };
            self.cache.insert(path, entry);
        }
        let previous = self.frame;
        self.frame += 1;
        let stale = |seen: u64| seen < previous;
        let dropped: Vec<PathBuf> = self
            .cache
            .iter()
            .filter(|(_, entry)| matches!(entry, Thumbnail::Pending { seen, .. } if stale(*seen)))
            .map(|(path, _)| path.clone())
            .collect();
        if !dropped.is_empty() {
            for path in &dropped {
                self.cache.remove(path);
            }
            let dropped: std::collections::HashSet<PathBuf> = dropped.into_iter().collect();
            lock_queue(&self.queue.0)
                .wanted
                .retain(|(path, _)| !dropped.contains(path));
        }
        self.evict_textures();
    }

    fn evict_textures(&mut self) {
        let mut ready: Vec<(u64, PathBuf)> = self
            .cache
            .iter()
            .filter_map(|(path, entry)| match entry {
                Thumbnail::Ready { seen, .. } => Some((*seen, path.clone())),
                _ => None,
            })
            .collect();
        // The same memory at any density.
        let max_textures = (self.max_textures / (self.scale * self.scale) as usize).max(1);
        if ready.len() <= max_textures {
            return;
        }
        ready.sort_unstable();
        let excess = ready.len() - max_textures;
        for (_, path) in ready.into_iter().take(excess) {
            self.cache.remove(&path);
        }
    }

    /// The thumbnail of `path`, queued for decoding on first request (and kept queued only
    /// while frames keep asking for it).
    pub fn get(&mut self, path: &Path) -> ThumbnailState<'_> {
        let frame = self.frame;
        let retry = match self.cache.get_mut(path) {
            None => true,
            Some(Thumbnail::Failed { at, .. }) => at.elapsed() >= RETRY_FAILED_AFTER,
            Some(Thumbnail::Pending { seen, .. }) => {
                *seen = frame;
                false
            }
            Some(Thumbnail::Ready {
                seen,
                stamp,
                checked,
                ..
            }) => {
                *seen = frame;
                if checked.elapsed() >= RECHECK_FILE_AFTER {
                    *checked = std::time::Instant::now();
                    FileStamp::of(path) != *stamp
                } else {
                    false
                }
            }
        };
        if retry {
            let entry = if self.worker_running {
                let (list, wakeup) = &*self.queue;
                lock_queue(list).wanted.push((path.to_owned(), self.side()));
                wakeup.notify_one();
                Thumbnail::Pending {
                    seen: frame,
                    stamp: FileStamp::of(path),
                }
            } else {
                Thumbnail::Failed {
                    message: "the thumbnail thread did not start".into(),
                    at: std::time::Instant::now(),
                }
            };
            self.cache.insert(path.to_owned(), entry);
        }
        match &self.cache[path] {
            Thumbnail::Pending { .. } => ThumbnailState::Pending,
            Thumbnail::Ready { texture, .. } => ThumbnailState::Ready(texture),
            Thumbnail::Failed { message, .. } => ThumbnailState::Failed(message),
        }
    }

    /// Whether `path`'s thumbnail was requested and has arrived (decoded or failed).
    pub fn arrived(&self, path: &Path) -> bool {
        matches!(
            self.cache.get(path),
            Some(Thumbnail::Ready { .. } | Thumbnail::Failed { .. })
        )
    }

    /// Thumbnails requested and still held (queued, decoded or failed).
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// Sets how many textures are kept (tests use a small number).
    pub fn set_texture_limit(&mut self, textures: usize) {
        self.max_textures = textures;
    }

    /// Thumbnails decoded and held as textures.
    pub fn textures(&self) -> usize {
        self.cache
            .values()
            .filter(|entry| matches!(entry, Thumbnail::Ready { .. }))
            .count()
    }

    /// Requests waiting for the worker.
    pub fn queued(&self) -> usize {
        lock_queue(&self.queue.0).wanted.len()
    }

    /// Forgets `path` (its file changed).
    pub fn forget(&mut self, path: &Path) {
        self.cache.remove(path);
    }
}

impl Drop for Thumbnails {
    fn drop(&mut self) {
        let (list, wakeup) = &*self.queue;
        lock_queue(list).closed = true;
        wakeup.notify_all();
    }
}

/// `path` as a `side` x `side` thumbnail.
fn decode_thumbnail(path: &Path, side: u32) -> Result<egui::ColorImage, String> {
    let decoded = crate::data::image::decode_file(path).map_err(|e| e.to_string())?;
    // A cheap downscale first: Lanczos over a 24-megapixel photo would take seconds.
    let small = if decoded.width().max(decoded.height()) > 4 * side {
        decoded.thumbnail(4 * side, 4 * side)
    } else {
        decoded
    };
    // The square the models see: transparent areas on white, centre crop.
    let rgb = crate::data::image::to_rgb8(&crate::data::image::preprocess(&small, side));
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
            // The wheel zoomed: a scroll area around the cells (Compare's grid in a short
            // window) must not scroll with the same turn.
            ui.ctx()
                .input_mut(|input| input.smooth_scroll_delta = egui::Vec2::ZERO);
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
    fn a_thumbnail_is_decoded_again_after_its_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("picture.png");
        let save = |side: u32, colour: [u8; 3]| {
            image::RgbImage::from_pixel(side, side, image::Rgb(colour))
                .save(&path)
                .unwrap()
        };
        save(20, [200, 0, 0]);
        let ctx = egui::Context::default();
        let mut thumbnails = Thumbnails::new(Arc::new(|| {}));
        let ready = |thumbnails: &mut Thumbnails| {
            let started = std::time::Instant::now();
            loop {
                thumbnails.receive(&ctx);
                match thumbnails.get(&path) {
                    ThumbnailState::Ready(texture) => return texture.id(),
                    ThumbnailState::Failed(message) => panic!("{message}"),
                    ThumbnailState::Pending => {}
                }
                assert!(started.elapsed().as_secs() < 20, "no thumbnail");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        };
        let first = ready(&mut thumbnails);
        assert_eq!(ready(&mut thumbnails), first, "unchanged: the same texture");
        save(30, [0, 0, 200]);
        std::thread::sleep(RECHECK_FILE_AFTER);
        assert_ne!(ready(&mut thumbnails), first, "edited: decoded again");
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
