//! Compare pane: the paper's Figure 1 for the user's own image. Original | TexTok | Baseline at the
//! budget on the slider, a grid of every budget, a wipe view and a difference heat map.
//! Reconstructions run in the background and are cached per (image, caption, budget, model);
//! editing the caption recomputes them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use eframe::egui;
use eframe::egui_wgpu;
use image::Rgb32FImage;

use super::AppContext;
use super::engines::EngineStatus;
use super::images::{RECHECK_FILE_AFTER, ViewTransform, handle_view_input, image_cell};
use super::wipe::{SharedImage, WipeCallback, WipeMode, WipeParams, compose_cpu};
use crate::files::FileStamp;
use crate::jobs::{Job, JobState, Progress};
use crate::metrics::format_psnr;
use crate::model::textok::MIN_BUDGET;
use crate::pipeline::{DEFAULT_BUDGETS, Reconstruction, Tokenizer};

/// Wait this long after the last caption keystroke before recomputing.
const CAPTION_DEBOUNCE: Duration = Duration::from_millis(350);
/// Cached reconstructions kept before the cache is cleared.
const MAX_CACHED: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareMode {
    Single,
    Grid,
    Wipe,
    Difference,
}

impl CompareMode {
    const ALL: [CompareMode; 4] = [Self::Single, Self::Grid, Self::Wipe, Self::Difference];

    fn label(self) -> &'static str {
        match self {
            Self::Single => "Side by side",
            Self::Grid => "All budgets",
            Self::Wipe => "Wipe",
            Self::Difference => "Difference",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ImageKey {
    path: PathBuf,
    /// The file as it was read: an edit in another program makes another key.
    stamp: FileStamp,
    generation: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ReconKey {
    image: ImageKey,
    caption: String,
    tokenizer: Tokenizer,
    budget: usize,
}

struct Cached {
    texture: egui::TextureHandle,
    shared: SharedImage,
    psnr: f64,
    ssim: f64,
}

#[derive(Debug, Clone, PartialEq)]
struct Request {
    image: ImageKey,
    caption: String,
    budgets: Vec<usize>,
}

struct Output {
    original: Option<Rgb32FImage>,
    reconstructions: Vec<Reconstruction>,
}

pub struct ComparePane {
    pub mode: CompareMode,
    view: ViewTransform,
    divider: f32,
    gain: f32,
    originals: HashMap<ImageKey, Cached>,
    cache: HashMap<ReconKey, Cached>,
    job: Option<(Request, Job<Output>, Instant)>,
    failed: Option<(Request, String)>,
    /// The request the user cancelled: not restarted until Retry.
    cancelled: Option<Request>,
    caption_edited_at: Option<Instant>,
    next_id: u64,
    /// CPU-composed views (used without wgpu), a few at most.
    cpu_views: Vec<((u64, u64, WipeParams), egui::TextureHandle)>,
    /// The largest budget the loaded tokenizers decode (256 for the shipped ones): the slider's
    /// end and the grid's last column.
    max_tokens: usize,
    /// The open "Save images…" folder dialog, and the view it was opened on (what is saved,
    /// even if the view changes while the dialog is open).
    save_dialog: Option<(Receiver<Vec<PathBuf>>, Request)>,
    /// Writing a saved set: the folder it went to, and how many images.
    saving: Option<Job<(PathBuf, usize)>>,
    /// The selected image's file stamp and when it was read: `wanted` runs several times a
    /// frame, the file is looked at again once per [`RECHECK_FILE_AFTER`].
    stamp: Option<(PathBuf, FileStamp, Instant)>,
}

impl Default for ComparePane {
    fn default() -> Self {
        Self {
            mode: CompareMode::Single,
            view: ViewTransform::default(),
            divider: 0.5,
            gain: 4.0,
            originals: HashMap::new(),
            cache: HashMap::new(),
            job: None,
            failed: None,
            cancelled: None,
            caption_edited_at: None,
            next_id: 1,
            cpu_views: Vec::new(),
            max_tokens: 256,
            save_dialog: None,
            saving: None,
            stamp: None,
        }
    }
}

/// How a failed reconstruction's notice starts.
const RECONSTRUCTION_FAILED: &str = "Reconstruction failed: ";

impl ComparePane {
    /// Called when the selected caption changed anywhere (Library editor included).
    pub fn caption_edited(&mut self) {
        self.caption_edited_at = Some(Instant::now());
    }

    /// True when nothing is computing and the current view's reconstructions are all shown.
    pub fn settled(&self, app: &AppContext) -> bool {
        let Some(request) = self.wanted(app) else {
            return false;
        };
        self.job.is_none() && self.missing(&request).is_empty()
    }

    /// The zoom and pan every cell shows.
    pub fn view(&self) -> ViewTransform {
        self.view
    }

    /// Reconstructions in the cache (each model at each budget counts once).
    pub fn cached_count(&self) -> usize {
        self.cache.len()
    }

    /// True while a reconstruction job runs or a saved set is being written.
    pub fn busy(&self) -> bool {
        self.job.is_some() || self.saving.is_some()
    }

    /// True while a saved set is being written.
    pub fn saving(&self) -> bool {
        self.saving.is_some()
    }

    /// Writes the original and the reconstructions the view shows (both models, the slider's
    /// budget or every budget of the grid) into a new folder inside `parent`, named after the
    /// image (`apple`, `apple-2`, ...), in the background. What "Save images…" does with the
    /// folder picked. Says why not where the view is not complete yet.
    pub fn save_to(&mut self, parent: PathBuf, app: &mut AppContext) {
        let Some(request) = self.wanted(app) else {
            app.notices.info("Pick an image in the Library first.");
            return;
        };
        self.save_request(parent, request, app);
    }

    /// [`Self::save_to`] for the view `request` (the one "Save images…" was pressed on).
    fn save_request(&mut self, parent: PathBuf, request: Request, app: &mut AppContext) {
        // Models switched while the folder dialog was open: the cached reconstructions are
        // the old models' and the loaded engine's identity would mislabel them.
        if request.image.generation != app.engines.generation() {
            app.notices.info(
                "The models changed after Save images… was pressed; press it again to save \
                 what the new ones make.",
            );
            return;
        }
        let (EngineStatus::Ready(engine), Some(original)) = (
            app.engines.reconstruct(),
            self.originals.get(&request.image),
        ) else {
            app.notices
                .info("The reconstructions are not ready yet; save once they are shown.");
            return;
        };
        let mut results = Vec::new();
        for tokenizer in [Tokenizer::TexTok, Tokenizer::Baseline] {
            for &budget in &request.budgets {
                match self.cached(&request, tokenizer, budget) {
                    Some(cached) => results.push(Reconstruction {
                        tokenizer,
                        budget,
                        image: (*cached.shared.image).clone(),
                        psnr: cached.psnr,
                        ssim: cached.ssim,
                    }),
                    // A Baseline is always loaded, but a missing one is no reason not to save.
                    None if tokenizer == Tokenizer::Baseline && engine.baseline.is_none() => {}
                    None => {
                        app.notices.info(
                            "The reconstructions are not ready yet; save once they are shown.",
                        );
                        return;
                    }
                }
            }
        }
        let original = original.shared.image.clone();
        let stem = request
            .image
            .path
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .filter(|stem| !stem.trim().is_empty())
            .unwrap_or_else(|| "image".into());
        let caption = request.caption.clone();
        self.saving = Some(Job::spawn(
            "save reconstructions",
            app.notify.clone(),
            move |_, _| {
                use anyhow::Context;
                let dir =
                    crate::files::create_unused_folder(&parent, &stem).with_context(|| {
                        format!("{}: cannot create a folder here", parent.display())
                    })?;
                let models = crate::pipeline::ReconstructionModels::of(&engine);
                let written = crate::pipeline::save_reconstructions(
                    &dir, &original, &caption, &results, &models,
                )?;
                Ok((dir, written.len()))
            },
        ));
    }

    /// Reports a finished save (called every frame, whichever pane is shown).
    fn poll_saving(&mut self, app: &mut AppContext) {
        let Some(job) = &mut self.saving else {
            return;
        };
        match job.poll() {
            JobState::Running(_) => return,
            JobState::Finished(Ok((dir, count))) => app
                .notices
                .info(format!("Saved {count} images to {}", dir.display())),
            JobState::Finished(Err(error)) => app
                .notices
                .error(format!("Cannot save the images: {error:#}")),
            JobState::Cancelled | JobState::Collected => {}
        }
        self.saving = None;
    }

    fn budget(&self, app: &AppContext) -> usize {
        app.state
            .compare_budget
            .unwrap_or(app.state.settings.default_budget)
            .clamp(MIN_BUDGET, self.max_tokens.max(MIN_BUDGET))
    }

    /// The grid's budgets: the paper's that the models decode, and their own largest.
    fn grid_budgets(&self) -> Vec<usize> {
        let mut budgets: Vec<usize> = DEFAULT_BUDGETS
            .into_iter()
            .filter(|&budget| budget < self.max_tokens)
            .collect();
        budgets.push(self.max_tokens.max(MIN_BUDGET));
        budgets
    }

    fn wanted(&self, app: &AppContext) -> Option<Request> {
        let item = app.state.selected_item()?;
        let budgets = match self.mode {
            CompareMode::Grid => self.grid_budgets(),
            _ => vec![self.budget(app)],
        };
        Some(Request {
            image: ImageKey {
                path: item.path.clone(),
                stamp: match &self.stamp {
                    Some((path, stamp, _)) if *path == item.path => *stamp,
                    _ => FileStamp::of(&item.path),
                },
                generation: app.engines.generation(),
            },
            caption: item.caption.clone(),
            budgets,
        })
    }

    fn missing(&self, request: &Request) -> Vec<usize> {
        let original_missing = !self.originals.contains_key(&request.image);
        request
            .budgets
            .iter()
            .copied()
            .filter(|&budget| {
                original_missing
                    || [Tokenizer::TexTok, Tokenizer::Baseline]
                        .iter()
                        .any(|&tokenizer| {
                            !self.cache.contains_key(&ReconKey {
                                image: request.image.clone(),
                                caption: request.caption.clone(),
                                tokenizer,
                                budget,
                            })
                        })
            })
            .collect()
    }

    fn shared(&mut self, image: Rgb32FImage) -> SharedImage {
        self.next_id += 1;
        SharedImage {
            id: self.next_id,
            image: Arc::new(image),
        }
    }

    fn store(&mut self, ctx: &egui::Context, request: &Request, output: Output) {
        if self.cache.len() > MAX_CACHED {
            self.cache.clear();
            self.originals.retain(|image, _| image == &request.image);
        }
        if let Some(original) = output.original {
            let texture = super::images::texture(ctx, "compare original", &original);
            let shared = self.shared(original);
            self.originals.insert(
                request.image.clone(),
                Cached {
                    texture,
                    shared,
                    psnr: f64::INFINITY,
                    ssim: 1.0,
                },
            );
        }
        for reconstruction in output.reconstructions {
            let texture =
                super::images::texture(ctx, "compare reconstruction", &reconstruction.image);
            let shared = self.shared(reconstruction.image);
            self.cache.insert(
                ReconKey {
                    image: request.image.clone(),
                    caption: request.caption.clone(),
                    tokenizer: reconstruction.tokenizer,
                    budget: reconstruction.budget,
                },
                Cached {
                    texture,
                    shared,
                    psnr: reconstruction.psnr,
                    ssim: reconstruction.ssim,
                },
            );
        }
    }

    /// Reads the selected image's file stamp when the selection changed or a second has passed.
    fn refresh_stamp(&mut self, app: &AppContext) {
        let Some(item) = app.state.selected_item() else {
            self.stamp = None;
            return;
        };
        let fresh = self.stamp.as_ref().is_some_and(|(path, _, read)| {
            *path == item.path && read.elapsed() < RECHECK_FILE_AFTER
        });
        if !fresh {
            let stamp = FileStamp::of(&item.path);
            self.stamp = Some((item.path.clone(), stamp, Instant::now()));
        }
    }

    /// Polls the running job and starts the next one; returns the running job's progress.
    /// Collects a finished job (called every frame, whichever pane is shown); returns the
    /// running job's progress, `None` when no job runs.
    pub fn poll(&mut self, ctx: &egui::Context, app: &mut AppContext) -> Option<Option<Progress>> {
        self.refresh_stamp(app);
        self.poll_saving(app);
        if let Some((receiver, _)) = &self.save_dialog
            && let Some(picked) = super::dialog_answer(receiver, &mut app.notices)
            && let Some((_, request)) = self.save_dialog.take()
            && let Some(parent) = picked.into_iter().next()
        {
            self.save_request(parent, request, app);
        }
        let wanted = self.wanted(app);
        let (request, job, _) = self.job.as_mut()?;
        let stale = wanted
            .as_ref()
            .is_none_or(|w| w.image != request.image || w.caption != request.caption);
        if stale {
            job.cancel();
        }
        match job.poll() {
            JobState::Running(progress) => return Some(progress),
            JobState::Finished(Ok(output)) => {
                let request = request.clone();
                self.job = None;
                self.store(ctx, &request, output);
                // Reconstruction works (again): an earlier failure's message is out of date;
                // the pane still says so for any image that fails when shown.
                app.notices
                    .clear_errors_starting_with(RECONSTRUCTION_FAILED);
            }
            JobState::Finished(Err(error)) => {
                let request = request.clone();
                self.job = None;
                let message = format!("{error:#}");
                app.notices
                    .error(format!("{RECONSTRUCTION_FAILED}{message}"));
                self.failed = Some((request, message));
            }
            JobState::Cancelled | JobState::Collected => self.job = None,
        }
        None
    }

    /// Polls the running job and starts the next one the view needs; returns the running
    /// job's progress.
    fn drive(&mut self, ctx: &egui::Context, app: &mut AppContext) -> Option<Option<Progress>> {
        // Before anything asks for budgets: a checkpoint may hold fewer than 256 tokens.
        if let EngineStatus::Ready(engine) = app.engines.reconstruct() {
            self.max_tokens = engine.max_tokens();
        }
        let progress = self.poll(ctx, app);
        let wanted = self.wanted(app);
        if self.job.is_some() {
            return progress;
        }
        let wanted = wanted?;
        if let Some(edited) = self.caption_edited_at {
            let since = edited.elapsed();
            if since < CAPTION_DEBOUNCE {
                ctx.request_repaint_after(CAPTION_DEBOUNCE - since);
                return None;
            }
            self.caption_edited_at = None;
        }
        let missing = self.missing(&wanted);
        if missing.is_empty()
            || self.failed.as_ref().is_some_and(|(r, _)| r == &wanted)
            || self.cancelled.as_ref() == Some(&wanted)
        {
            return None;
        }
        let EngineStatus::Ready(engine) = app.engines.reconstruct() else {
            return None;
        };
        let need_original = !self.originals.contains_key(&wanted.image);
        let (path, caption) = (wanted.image.path.clone(), wanted.caption.clone());
        let job = Job::spawn(
            "reconstruct",
            app.notify.clone(),
            move |progress, cancel| {
                let original = crate::data::image::load_for_model(&path, engine.image_size())?;
                cancel.check()?;
                let reconstructions = crate::pipeline::reconstruct(
                    &engine, &original, &caption, &missing, progress, cancel,
                )?;
                Ok(Output {
                    original: need_original.then_some(original),
                    reconstructions,
                })
            },
        );
        self.job = Some((wanted, job, Instant::now()));
        Some(None)
    }

    pub fn ui(&mut self, ui: &mut egui::Ui, app: &mut AppContext) {
        let ctx = ui.ctx().clone();
        let running = self.drive(&ctx, app);

        if app.state.selected_item().is_none() {
            ui.centered_and_justified(|ui| {
                ui.label("Pick an image in the Library (double-click it) to compare TexTok and the Baseline on it.");
            });
            return;
        }

        // Controls.
        ui.horizontal_wrapped(|ui| {
            Self::image_stepper(ui, app);
            ui.separator();
            for mode in CompareMode::ALL {
                ui.selectable_value(&mut self.mode, mode, mode.label());
            }
            ui.separator();
            if self.mode != CompareMode::Grid {
                let mut budget = self.budget(app);
                let range = MIN_BUDGET..=self.max_tokens.max(MIN_BUDGET);
                let response = ui.add(egui::Slider::new(&mut budget, range).text("tokens"));
                if response.changed() {
                    app.state.compare_budget = Some(budget);
                }
            }
            if self.mode == CompareMode::Difference {
                ui.add(egui::Slider::new(&mut self.gain, 1.0..=16.0).text("gain"));
            }
            if ui.button("Reset zoom").clicked() {
                self.view = ViewTransform::default();
            }
            let can_save = self.save_dialog.is_none() && self.saving.is_none() && self.settled(app);
            if let Some(request) = self.wanted(app)
                && ui
                    .add_enabled(can_save, egui::Button::new("Save images…"))
                    .on_hover_text(
                        "Writes the original and the reconstructions shown (PNG files that carry \
                     the caption, model, token budget and PSNR/SSIM) into a new folder named \
                     after the image, inside the folder you pick",
                    )
                    .clicked()
            {
                let receiver = super::pick_in_background(app.notify.clone(), || {
                    rfd::FileDialog::new()
                        .set_title("Save the images into a new folder inside…")
                        .pick_folder()
                        .into_iter()
                        .collect()
                });
                self.save_dialog = Some((receiver, request));
            }
        });

        // Caption (editing it recomputes) and status.
        let counter = app.token_counter.clone();
        let path = app.state.selected.clone();
        if let Some(item) = app.state.selected_item_mut()
            && super::library::caption_editor(
                ui,
                &mut item.caption,
                &counter,
                ("compare-caption", &path),
                Some(super::library::NO_CAPTION_HINT),
            )
        {
            self.caption_edited();
            if let Some(path) = &path {
                app.caption_edited(path);
            }
        }
        ui.horizontal_wrapped(|ui| {
            let status = app.engines.reconstruct();
            let failed = "Models failed to load";
            let Some(engine) = super::engine_status(
                ui,
                status,
                "loading models…",
                failed,
                &mut app.engines,
                &mut app.switch_to,
            ) else {
                return;
            };
            for (label, source) in [
                ("TexTok", Some(&engine.textok.source)),
                ("Baseline", engine.baseline.as_ref().map(|b| &b.source)),
            ] {
                match source {
                    Some(source @ crate::pipeline::ModelSource::RandomInit { .. }) => {
                        ui.colored_label(
                            ui.visuals().warn_fg_color,
                            format!("{label}: RANDOMLY INITIALISED stand-in (its output is noise)"),
                        )
                        .on_hover_text(source.to_string());
                    }
                    Some(crate::pipeline::ModelSource::File { path, .. }) => {
                        let name = super::file_name_of(path);
                        ui.weak(format!("{label}: {name}"))
                            .on_hover_text(path.display().to_string());
                    }
                    None => {}
                }
            }
            ui.weak(super::device_label(&engine.device.description));
        });
        match &running {
            Some(progress) => {
                let wanted = self.wanted(app);
                ui.horizontal(|ui| {
                    ui.spinner();
                    let elapsed = self
                        .job
                        .as_ref()
                        .map_or(0.0, |(_, _, started)| started.elapsed().as_secs_f64());
                    let text = progress
                        .as_ref()
                        .map(|p| {
                            let eta = super::generate::eta_suffix(p, elapsed);
                            format!("{} ({}/{}{eta})", p.message, p.done, p.total)
                        })
                        .unwrap_or_else(|| "reconstructing…".into());
                    ui.label(text);
                    if ui.button("Cancel").clicked()
                        && let Some((request, job, _)) = &self.job
                    {
                        job.cancel();
                        // What the view asks for now: the budget or the mode may have changed
                        // while the job ran, and Cancel holds for the view until Retry.
                        self.cancelled = Some(wanted.clone().unwrap_or_else(|| request.clone()));
                    }
                });
            }
            None => {
                if self.cancelled.is_some() && self.cancelled == self.wanted(app) {
                    ui.horizontal(|ui| {
                        ui.label("Reconstruction cancelled.");
                        if ui.button("Retry").clicked() {
                            self.cancelled = None;
                        }
                    });
                }
                if let Some((request, message)) = &self.failed
                    && Some(request) == self.wanted(app).as_ref()
                {
                    let message = message.clone();
                    ui.horizontal(|ui| {
                        ui.colored_label(ui.visuals().error_fg_color, message);
                        if ui.button("Retry").clicked() {
                            self.failed = None;
                        }
                    });
                }
            }
        }
        ui.separator();

        let Some(request) = self.wanted(app) else {
            return;
        };
        // A cell still without its picture turns a spinner only while something will fill it.
        let stopped = if self.job.is_some() {
            None
        } else if self.cancelled.as_ref() == Some(&request) {
            Some("cancelled")
        } else if self
            .failed
            .as_ref()
            .is_some_and(|(failed, _)| failed == &request)
        {
            Some("failed")
        } else if matches!(app.engines.reconstruct(), EngineStatus::Failed(_)) {
            Some("no models")
        } else {
            None
        };
        match self.mode {
            CompareMode::Single => self.single(ui, &request, stopped),
            CompareMode::Grid => self.grid(ui, &request, stopped),
            CompareMode::Wipe | CompareMode::Difference => self.wipe(ui, app, &request, stopped),
        }
    }

    /// Previous / "3 of 12" / Next through the Library (also the arrow keys, while no text field
    /// or slider has the keyboard), so a set of images is compared without leaving the pane.
    fn image_stepper(ui: &mut egui::Ui, app: &mut AppContext) {
        let library = &app.state.library;
        let Some(selected) = app
            .state
            .selected
            .as_ref()
            .and_then(|selected| library.iter().position(|item| &item.path == selected))
        else {
            return;
        };
        // Through the Library's filtered view (say, the uncaptioned images, to caption them
        // one by one here); the image shown may have left it (it was just captioned), and the
        // steps go on from where it is in the Library.
        let filtered = app.library_filter.active();
        let order: Vec<usize> = if filtered {
            app.library_filter.shown(library)
        } else {
            (0..library.len()).collect()
        };
        let previous = order.iter().rev().copied().find(|&index| index < selected);
        let next = order.iter().copied().find(|&index| index > selected);
        let position = match order.iter().position(|&index| index == selected) {
            Some(at) => format!("{} of {}", at + 1, order.len()),
            None => format!("– of {}", order.len()),
        };
        let keys_free = ui.memory(|memory| memory.focused().is_none());
        let (left, right) = ui.input(|input| {
            (
                keys_free && input.key_pressed(egui::Key::ArrowLeft),
                keys_free && input.key_pressed(egui::Key::ArrowRight),
            )
        });
        let mut step_to = None;
        if ui
            .add_enabled(previous.is_some(), egui::Button::new("Previous"))
            .on_hover_text("The previous image in the Library (←)")
            .clicked()
            || left
        {
            step_to = previous;
        }
        if filtered {
            ui.label(format!("{position} (filtered)"))
                .on_hover_text("Steps through the images the Library's filter shows");
        } else {
            ui.label(position);
        }
        if ui
            .add_enabled(next.is_some(), egui::Button::new("Next"))
            .on_hover_text("The next image in the Library (→)")
            .clicked()
            || right
        {
            step_to = step_to.or(next);
        }
        if let Some(index) = step_to {
            app.state.selected = Some(library[index].path.clone());
        }
    }

    fn cached(&self, request: &Request, tokenizer: Tokenizer, budget: usize) -> Option<&Cached> {
        self.cache.get(&ReconKey {
            image: request.image.clone(),
            caption: request.caption.clone(),
            tokenizer,
            budget,
        })
    }

    /// Where a picture is missing: a spinner while it is being made, else why not (`stopped`).
    fn placeholder(ui: &mut egui::Ui, rect: egui::Rect, stopped: Option<&str>) {
        match stopped {
            None => {
                ui.put(rect, egui::Spinner::new());
            }
            Some(why) => {
                ui.put(rect, egui::Label::new(egui::RichText::new(why).weak()));
            }
        }
    }

    /// One cell: image (or a placeholder), title, PSNR/SSIM.
    fn cell(
        ui: &mut egui::Ui,
        title: &str,
        cached: Option<&Cached>,
        side: f32,
        view: &mut ViewTransform,
        scores: bool,
        stopped: Option<&str>,
    ) {
        ui.vertical(|ui| {
            ui.strong(title);
            match cached {
                Some(cached) => {
                    image_cell(ui, &cached.texture, side, view);
                    if scores {
                        ui.label(format!(
                            "PSNR {} dB   SSIM {:.3}",
                            format_psnr(cached.psnr),
                            cached.ssim
                        ));
                    } else {
                        ui.label(" ");
                    }
                }
                None => {
                    let (rect, _) =
                        ui.allocate_exact_size(egui::vec2(side, side), egui::Sense::hover());
                    ui.painter()
                        .rect_filled(rect, 4.0, ui.visuals().extreme_bg_color);
                    Self::placeholder(ui, rect, stopped);
                    ui.label(" ");
                }
            }
        });
    }

    fn single(&mut self, ui: &mut egui::Ui, request: &Request, stopped: Option<&str>) {
        let budget = request.budgets[0];
        let side = ((ui.available_width() - 32.0) / 3.0)
            .min(ui.available_height() - 48.0)
            .max(64.0);
        let original = self.originals.get(&request.image);
        let textok = self.cached(request, Tokenizer::TexTok, budget);
        let baseline = self.cached(request, Tokenizer::Baseline, budget);
        let mut view = self.view;
        ui.horizontal(|ui| {
            Self::cell(ui, "Original", original, side, &mut view, false, stopped);
            Self::cell(
                ui,
                &format!("TexTok · {budget} tokens"),
                textok,
                side,
                &mut view,
                true,
                stopped,
            );
            Self::cell(
                ui,
                &format!("Baseline · {budget} tokens"),
                baseline,
                side,
                &mut view,
                true,
                stopped,
            );
        });
        self.view = view;
    }

    fn grid(&mut self, ui: &mut egui::Ui, request: &Request, stopped: Option<&str>) {
        let columns = 1 + request.budgets.len();
        let side = ((ui.available_width() - 96.0) / columns as f32)
            .min((ui.available_height() - 96.0) / 2.0)
            .max(48.0);
        let mut view = self.view;
        egui::ScrollArea::both().show(ui, |ui| {
            for tokenizer in [Tokenizer::TexTok, Tokenizer::Baseline] {
                ui.horizontal(|ui| {
                    let original = self.originals.get(&request.image);
                    Self::cell(ui, "Original", original, side, &mut view, false, stopped);
                    for &budget in &request.budgets {
                        let cached = self.cached(request, tokenizer, budget);
                        Self::cell(
                            ui,
                            &format!("{} · {budget}", tokenizer.label()),
                            cached,
                            side,
                            &mut view,
                            true,
                            stopped,
                        );
                    }
                });
            }
        });
        self.view = view;
    }

    fn wipe(
        &mut self,
        ui: &mut egui::Ui,
        app: &AppContext,
        request: &Request,
        stopped: Option<&str>,
    ) {
        let budget = request.budgets[0];
        let mode = if self.mode == CompareMode::Wipe {
            WipeMode::Wipe
        } else {
            WipeMode::Difference
        };
        ui.weak(match mode {
            WipeMode::Wipe => "Drag across the image to move the divider (original on the left); scroll to zoom, right-drag to pan, double-click to reset.",
            WipeMode::Difference => "Brighter = larger difference from the original. Scroll to zoom, drag to pan, double-click to reset.",
        });
        let side = ((ui.available_width() - 24.0) / 2.0)
            .min(ui.available_height() - 48.0)
            .max(64.0);
        let Some(original) = self.originals.get(&request.image).map(|c| c.shared.clone()) else {
            match stopped {
                None => {
                    ui.spinner();
                }
                Some(why) => {
                    ui.weak(why);
                }
            }
            return;
        };
        ui.horizontal(|ui| {
            for tokenizer in [Tokenizer::TexTok, Tokenizer::Baseline] {
                let reconstruction = self
                    .cached(request, tokenizer, budget)
                    .map(|c| (c.shared.clone(), c.psnr, c.ssim));
                ui.vertical(|ui| {
                    ui.strong(format!("{} · {budget} tokens", tokenizer.label()));
                    let (rect, response) = ui
                        .allocate_exact_size(egui::vec2(side, side), egui::Sense::click_and_drag());
                    let Some((reconstruction, psnr, ssim)) = reconstruction else {
                        Self::placeholder(ui, rect, stopped);
                        return;
                    };
                    if mode == WipeMode::Wipe {
                        // Primary drag moves the divider; the secondary button pans.
                        if response.dragged_by(egui::PointerButton::Primary)
                            && let Some(pointer) = response.interact_pointer_pos()
                        {
                            self.divider =
                                ((pointer.x - rect.min.x) / rect.width()).clamp(0.0, 1.0);
                        }
                        if response.dragged_by(egui::PointerButton::Secondary) {
                            self.view.pan(response.drag_delta() / rect.size());
                        }
                        if response.double_clicked() {
                            self.view = ViewTransform::default();
                        }
                        let mut zoom_only = self.view;
                        if response.hovered() {
                            let scroll = ui.input(|i| i.smooth_scroll_delta.y);
                            if scroll != 0.0
                                && let Some(pointer) = response.hover_pos()
                            {
                                zoom_only.zoom_about(
                                    (scroll / 200.0).exp(),
                                    (pointer - rect.min) / rect.size(),
                                );
                            }
                        }
                        self.view = zoom_only;
                    } else {
                        handle_view_input(ui, &response, rect, &mut self.view);
                    }
                    let params = WipeParams {
                        mode,
                        divider: self.divider,
                        gain: self.gain,
                        uv: self.view.uv_rect(),
                    };
                    if app.wgpu_views {
                        ui.painter().add(egui_wgpu::Callback::new_paint_callback(
                            rect,
                            WipeCallback {
                                original: original.clone(),
                                reconstruction: reconstruction.clone(),
                                params,
                                line_width: 1.0 / rect.width(),
                            },
                        ));
                    } else {
                        let key = (original.id, reconstruction.id, params);
                        let texture = match self.cpu_views.iter().find(|(k, _)| *k == key) {
                            Some((_, texture)) => texture.clone(),
                            None => {
                                let composed =
                                    compose_cpu(&original.image, &reconstruction.image, &params);
                                let texture =
                                    super::images::texture(ui.ctx(), "compare view", &composed);
                                if self.cpu_views.len() >= 4 {
                                    self.cpu_views.drain(..1);
                                }
                                self.cpu_views.push((key, texture.clone()));
                                texture
                            }
                        };
                        egui::Image::from_texture((texture.id(), rect.size()))
                            .uv(params.uv)
                            .paint_at(ui, rect);
                        if mode == WipeMode::Wipe {
                            let x = rect.min.x + self.divider * rect.width();
                            ui.painter().vline(
                                x,
                                rect.y_range(),
                                egui::Stroke::new(1.0, egui::Color32::WHITE),
                            );
                        }
                    }
                    ui.label(format!("PSNR {} dB   SSIM {:.3}", format_psnr(psnr), ssim));
                });
            }
        });
    }
}
