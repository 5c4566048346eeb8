//! Generate pane: caption -> DiT -> TexTok detokenizer -> image. Every result is saved as a PNG
//! with its settings in the data folder the moment it exists, then shown in the gallery.

use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::time::Instant;

use anyhow::Context;
use eframe::egui;

use super::AppContext;
use super::engines::EngineStatus;
use super::images::ThumbnailState;
use super::state::{GalleryEntry, GenerationSettings};
use crate::jobs::{CancelToken, Job, JobState, Progress};
use crate::model::dit::SampleSettings;
use crate::model::textok::MIN_BUDGET;
use crate::pipeline::validate_sample_settings;

/// Where generated images are written.
pub const GENERATED_DIR: &str = "generated";

/// What a Generate job made: the saved images, and the ones that could not be saved (why).
pub struct GenerateOutcome {
    pub entries: Vec<GalleryEntry>,
    pub unsaved: Vec<String>,
}

/// Saves a Generate job's images as `{stamp}-seed{S}-k{K}.png` in `out_dir`, each with its
/// settings and the model identities. One image that cannot be saved does not cost the others:
/// it is listed with the reason and the rest are saved. The folder is created again first in
/// case it was removed while the sampler ran.
pub fn save_generation(
    images: Vec<crate::pipeline::GeneratedImage>,
    out_dir: &Path,
    models: &crate::pipeline::GeneratorIdentity,
    stamp: u128,
) -> GenerateOutcome {
    let mut entries = Vec::new();
    let mut unsaved = Vec::new();
    for generated in images {
        let s = &generated.settings;
        let file = out_dir.join(format!("{stamp}-seed{}-k{}.png", s.seed, s.tokens));
        let saved = std::fs::create_dir_all(out_dir)
            .with_context(|| format!("{}: cannot create the folder", out_dir.display()))
            .and_then(|()| crate::pipeline::save_generated(&generated, &file, models));
        if let Err(error) = saved {
            // Both errors name their path already.
            unsaved.push(format!("{error:#}"));
            continue;
        }
        entries.push(GalleryEntry {
            file,
            settings: GenerationSettings {
                caption: generated.caption.clone(),
                tokens: s.tokens,
                steps: s.steps,
                cfg: s.cfg,
                seed: s.seed,
                models: Some(models.into()),
            },
        });
    }
    GenerateOutcome { entries, unsaved }
}

struct Running {
    job: Job<GenerateOutcome>,
    started: Instant,
    count: usize,
}

/// Which of the models that made a gallery image differs from the loaded generator's, as the
/// end of a sentence; `None` when they are the same, or either is unknown (an image saved
/// before models were recorded, a generator still loading).
fn changed_models(settings: &GenerationSettings, app: &mut AppContext) -> Option<&'static str> {
    let made_with = settings.models.as_ref()?;
    let EngineStatus::Ready(engine) = app.engines.generate() else {
        return None;
    };
    let now = super::state::ModelHashes::from(&crate::pipeline::GeneratorIdentity::of(&engine));
    match (
        made_with.dit != now.dit,
        made_with.tokenizer != now.tokenizer,
    ) {
        (true, true) => Some("DiT and the decoder in use now are not the ones"),
        (true, false) => Some("DiT in use now is not the one"),
        (false, true) => Some("decoder in use now is not the one"),
        (false, false) => None,
    }
}

/// What a gallery button does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GalleryAction {
    /// Copy the image's settings into the form (fixed seed, one image).
    Reuse,
    SaveAs,
    ToLibrary,
    Delete,
}

/// A gallery entry deleted this session, for Undo: its place, and the file's bytes (`None`
/// when the file was kept because the Library uses it).
struct Deleted {
    index: usize,
    entry: super::state::GalleryEntry,
    bytes: Option<Vec<u8>>,
}

#[derive(Default)]
pub struct GeneratePane {
    running: Option<Running>,
    /// The Save dialog's answer, once it comes, and the image to copy (public so tests can
    /// answer it).
    pub save_dialog: Option<(Receiver<Vec<PathBuf>>, PathBuf)>,
    /// The copy *Save as…* makes, off the UI thread (a USB stick or network folder can take
    /// seconds); its result is the file written.
    saving: Vec<Job<PathBuf>>,
    last_error: Option<String>,
    /// Newest last; kept in memory until the app closes.
    deleted: Vec<Deleted>,
    /// Words every shown gallery image's caption holds (any case); empty: all.
    pub filter: String,
    recovery: Recovery,
}

/// Looking, once per start, for generated images the gallery does not list (a damaged state
/// file was set aside, a window that could not save its state): each PNG holds its settings.
#[derive(Default)]
enum Recovery {
    #[default]
    NotStarted,
    Running(Job<Vec<GalleryEntry>>),
    Done,
}

/// The gallery entry a generated PNG's text chunks describe (as
/// [`crate::pipeline::save_generated`] writes them), or `None` for any other file.
pub fn gallery_entry_from_png(path: &Path) -> Option<GalleryEntry> {
    let text = crate::data::image::read_png_text(path).ok()?;
    let saved = crate::pipeline::SavedSettings::from_png_text(&text)?;
    let get = |key: &str| crate::pipeline::png_text_value(&text, key);
    let tokenizer = get("tokenizer").unwrap_or("textok");
    let models = get(&format!("{tokenizer}-sha256"))
        .zip(get("dit-sha256"))
        .map(|(tokenizer, dit)| super::state::ModelHashes {
            tokenizer: tokenizer.to_owned(),
            dit: dit.to_owned(),
        });
    Some(GalleryEntry {
        file: path.to_owned(),
        settings: GenerationSettings {
            caption: saved.caption,
            tokens: saved.tokens,
            steps: saved.steps,
            cfg: saved.cfg,
            seed: saved.seed,
            models,
        },
    })
}

/// The generated images in `dir` that `listed` does not name, newest first (their names start
/// with the time they were made). Files that are not generated PNGs are left alone.
pub fn unlisted_generations(
    dir: &Path,
    listed: &std::collections::HashSet<PathBuf>,
    cancel: &CancelToken,
) -> anyhow::Result<Vec<GalleryEntry>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => {
            return Err(error).with_context(|| format!("{}: cannot list", dir.display()));
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "png") && !listed.contains(path))
        .collect();
    paths.sort_by(|a, b| b.file_name().cmp(&a.file_name()));
    let mut found = Vec::new();
    for path in paths {
        if cancel.is_cancelled() {
            break;
        }
        found.extend(gallery_entry_from_png(&path));
    }
    Ok(found)
}

/// "12/50 steps, ETA 4 s" from a progress report and the time since the job started.
pub fn progress_line(progress: &Progress, elapsed: f64) -> String {
    let eta = eta_suffix(progress, elapsed);
    format!("step {}/{}{eta}", progress.done, progress.total)
}

/// ", ETA 4s" for a job `elapsed` seconds in, at the pace so far; empty before the first unit
/// is done (no pace yet).
pub fn eta_suffix(progress: &Progress, elapsed: f64) -> String {
    if progress.done == 0 || progress.total < progress.done || !elapsed.is_finite() {
        return String::new();
    }
    let remaining = elapsed / progress.done as f64 * (progress.total - progress.done) as f64;
    format!(
        ", ETA {}",
        crate::train::format_duration(std::time::Duration::from_secs_f64(remaining.max(0.0)))
    )
}

fn now_millis() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

impl GeneratePane {
    pub fn busy(&self) -> bool {
        self.generating() || self.saving()
    }

    /// A batch is being generated.
    pub fn generating(&self) -> bool {
        self.running.is_some()
    }

    /// A *Save as…* copy is being written.
    pub fn saving(&self) -> bool {
        !self.saving.is_empty()
    }

    /// Stops the running generation after its current step. The images of one press are
    /// sampled as one batch and saved together at its end, so a stopped batch saves none.
    pub fn cancel(&self) {
        if let Some(running) = &self.running {
            running.job.cancel();
        }
    }

    /// Starts generating with the form's settings (the Generate button).
    pub fn start(&mut self, app: &mut AppContext) {
        let form = app.state.generate.clone();
        let EngineStatus::Ready(engine) = app.engines.generate() else {
            app.notices
                .info("The generator is still loading; try again in a moment.");
            return;
        };
        let seed = if form.random_seed {
            (now_millis() as u64) % 1_000_000_000
        } else {
            form.seed
        };
        let budgets = engine.budgets();
        let settings = SampleSettings {
            // As the slider shows it: the saved choice may lie outside this DiT's budgets.
            tokens: form.tokens.clamp(*budgets.start(), *budgets.end()),
            steps: form.steps,
            cfg: form.cfg,
            seed,
            count: form.count,
            guidance_interval: None,
        };
        if let Err(error) = validate_sample_settings(&settings, engine.budgets()) {
            app.notices.error(format!("Cannot generate: {error:#}"));
            return;
        }
        if form.random_seed {
            // Show the seed that was used, so "fixed" reproduces it.
            app.state.generate.seed = seed;
        }
        if let Some(note) = crate::pipeline::blank_caption_note(
            &form.caption,
            crate::pipeline::CaptionUse::Generate,
        ) {
            app.notices.info(format!("Note: {note}."));
        }
        app.state.remember_prompt(&form.caption);
        let out_dir = app.data_dir.join(GENERATED_DIR);
        let caption = form.caption.clone();
        let count = settings.count;
        let job = Job::spawn("generate", app.notify.clone(), move |progress, cancel| {
            std::fs::create_dir_all(&out_dir)
                .with_context(|| format!("{}: cannot create the folder", out_dir.display()))?;
            let images = crate::pipeline::generate(&engine, &caption, &settings, progress, cancel)?;
            let models = crate::pipeline::GeneratorIdentity::of(&engine);
            Ok(save_generation(images, &out_dir, &models, now_millis()))
        });
        self.last_error = None;
        self.running = Some(Running {
            job,
            started: Instant::now(),
            count,
        });
    }

    /// Starts, then collects, the search for generated images the gallery lost (every frame).
    fn poll_recovery(&mut self, app: &mut AppContext) {
        match &mut self.recovery {
            Recovery::NotStarted => {
                let dir = app.data_dir.join(GENERATED_DIR);
                let listed = app.state.gallery.iter().map(|e| e.file.clone()).collect();
                self.recovery = Recovery::Running(Job::spawn(
                    "find generated images",
                    app.notify.clone(),
                    move |_, cancel| unlisted_generations(&dir, &listed, cancel),
                ));
            }
            Recovery::Running(job) => match job.poll() {
                JobState::Running(_) => {}
                JobState::Finished(Ok(found)) => {
                    self.recovery = Recovery::Done;
                    // Generated, deleted or listed again while the search ran: not lost.
                    let listed: std::collections::HashSet<&PathBuf> =
                        app.state.gallery.iter().map(|g| &g.file).collect();
                    let lost: Vec<GalleryEntry> = found
                        .into_iter()
                        .filter(|e| e.file.is_file() && !listed.contains(&e.file))
                        .collect();
                    if lost.is_empty() {
                        return;
                    }
                    let count = lost.len();
                    for entry in lost {
                        // Before the first older image, so the gallery stays newest first.
                        let at = app
                            .state
                            .gallery
                            .iter()
                            .position(|g| g.file.file_name() < entry.file.file_name())
                            .unwrap_or(app.state.gallery.len());
                        app.state.gallery.insert(at, entry);
                    }
                    app.notices.info(format!(
                        "{count} generated image(s) in {} were missing from the gallery; \
                         they are back, with the settings saved in each file.",
                        app.data_dir.join(GENERATED_DIR).display()
                    ));
                }
                JobState::Finished(Err(error)) => {
                    self.recovery = Recovery::Done;
                    app.notices.error(format!(
                        "Cannot look for generated images missing from the gallery: {error:#}"
                    ));
                }
                JobState::Cancelled | JobState::Collected => self.recovery = Recovery::Done,
            },
            Recovery::Done => {}
        }
    }

    /// Collects finished work (called every frame); returns the running job's progress.
    pub fn poll(&mut self, app: &mut AppContext) -> Option<Option<Progress>> {
        self.poll_recovery(app);
        let running = self.running.as_mut()?;
        match running.job.poll() {
            JobState::Running(progress) => return Some(progress),
            JobState::Finished(Ok(outcome)) => {
                let saved = outcome.entries.len();
                for entry in outcome.entries.into_iter().rev() {
                    // The search for lost images may have found it first.
                    if !app.state.gallery.iter().any(|g| g.file == entry.file) {
                        app.state.gallery.insert(0, entry);
                    }
                }
                if let Some(first) = outcome.unsaved.first() {
                    let others = if saved > 0 {
                        " (the others are in the gallery)"
                    } else {
                        ""
                    };
                    let message = format!(
                        "{} of {} generated images could not be saved{others}: {first}",
                        outcome.unsaved.len(),
                        saved + outcome.unsaved.len()
                    );
                    app.notices.error(message.clone());
                    self.last_error = Some(message);
                }
            }
            JobState::Finished(Err(error)) => {
                let message = format!("Generation failed: {error:#}");
                app.notices.error(message.clone());
                self.last_error = Some(message);
            }
            JobState::Cancelled => app.notices.info("Generation cancelled."),
            JobState::Collected => {}
        }
        self.running = None;
        None
    }

    /// Copies `source` to the file the Save dialog picked (none: cancelled), in the background.
    fn save_picked(&mut self, picked: &[PathBuf], source: &Path, app: &mut AppContext) {
        let Some(target) = picked.first().cloned() else {
            return;
        };
        let source = source.to_owned();
        self.saving.push(Job::spawn(
            "save image",
            app.notify.clone(),
            move |_, _: &crate::jobs::CancelToken| {
                let bytes = std::fs::read(&source)
                    .with_context(|| format!("cannot read {}", source.display()))?;
                crate::files::write_atomic(&target, &bytes)
                    .with_context(|| format!("cannot write {}", target.display()))?;
                Ok(target)
            },
        ));
    }

    /// Acts on the Save dialog's answer (called every frame: the dialog does not hold the
    /// window, so another pane may be shown when it is answered).
    pub fn poll_dialog(&mut self, app: &mut AppContext) {
        if let Some((receiver, source)) = &self.save_dialog
            && let Some(picked) = super::dialog_answer(receiver, &mut app.notices)
        {
            let source = source.clone();
            self.save_dialog = None;
            self.save_picked(&picked, &source, app);
        }
        self.saving.retain_mut(|job| match job.poll() {
            JobState::Running(_) => true,
            JobState::Finished(Ok(target)) => {
                app.notices.info(format!("Saved {}", target.display()));
                false
            }
            JobState::Finished(Err(error)) => {
                app.notices.error(format!("Cannot save: {error:#}"));
                false
            }
            JobState::Cancelled | JobState::Collected => false,
        });
    }

    /// Ctrl+Enter (Cmd+Enter on macOS) generates, from any field of the pane, as the button does.
    pub const GENERATE_SHORTCUT: egui::KeyboardShortcut =
        egui::KeyboardShortcut::new(egui::Modifiers::COMMAND, egui::Key::Enter);

    pub fn ui(&mut self, ui: &mut egui::Ui, app: &mut AppContext) {
        let progress = self.poll(app);
        // Consumed before the caption field sees it, so it never types a line break there.
        // Escape stops a running batch, as Cancel does (it only unfocuses a field otherwise).
        let ready = matches!(app.engines.generate(), EngineStatus::Ready(_));
        if !self.generating()
            && ready
            && ui.input_mut(|i| i.consume_shortcut(&Self::GENERATE_SHORTCUT))
        {
            self.start(app);
        } else if self.generating()
            && ui.input_mut(|i| i.consume_key(egui::Modifiers::NONE, egui::Key::Escape))
        {
            self.cancel();
        }

        egui::Panel::left("generate-form")
            .resizable(true)
            .default_size(340.0)
            .show(ui, |ui| self.form(ui, app, progress));
        egui::CentralPanel::default().show(ui, |ui| self.gallery(ui, app));
    }

    fn form(
        &mut self,
        ui: &mut egui::Ui,
        app: &mut AppContext,
        progress: Option<Option<Progress>>,
    ) {
        ui.heading("Text to image");
        ui.label("Caption");
        let counter = app.token_counter.clone();
        super::library::caption_editor(
            ui,
            &mut app.state.generate.caption,
            &counter,
            "generate-caption",
            None,
        );
        if !app.state.recent_prompts.is_empty() {
            let mut chosen = None;
            egui::ComboBox::from_id_salt("recent-prompts")
                .selected_text("Recent prompts")
                .width(ui.available_width())
                .show_ui(ui, |ui| {
                    for prompt in &app.state.recent_prompts {
                        if ui.selectable_label(false, prompt).clicked() {
                            chosen = Some(prompt.clone());
                        }
                    }
                });
            if let Some(prompt) = chosen {
                app.state.generate.caption = prompt;
            }
        }
        // The slider offers what the loaded DiT was trained on (a one-budget DiT: one value).
        let budgets = match app.engines.generate() {
            EngineStatus::Ready(engine) => engine.budgets(),
            _ => MIN_BUDGET..=256,
        };
        let form = &mut app.state.generate;
        // The saved choice is kept as it is unless the slider moves: a DiT of fewer budgets
        // loaded for a while does not overwrite it.
        let mut shown_tokens = form.tokens.clamp(*budgets.start(), *budgets.end());
        egui::Grid::new("generate-settings")
            .num_columns(2)
            .show(ui, |ui| {
                let label = ui.label("Tokens");
                let slider = ui.add(egui::Slider::new(&mut shown_tokens, budgets));
                if slider.changed() {
                    form.tokens = shown_tokens;
                }
                slider.labelled_by(label.id).on_hover_text(
                    "Tokens the generator samples. With the shipped models, 96 or more give \
                         every 16-pixel patch its own token: the lower rows come out whole, and \
                         the generations score better (model card). 64 is the paper's budget.",
                );
                ui.end_row();
                let label = ui.label("Steps");
                ui.add(egui::DragValue::new(&mut form.steps).range(1..=1000))
                    .labelled_by(label.id);
                ui.end_row();
                let label = ui.label("Guidance (CFG)");
                ui.add(egui::Slider::new(&mut form.cfg, 0.0..=15.0).step_by(0.1))
                    .labelled_by(label.id);
                ui.end_row();
                let label = ui.label("Seed");
                ui.horizontal(|ui| {
                    ui.checkbox(&mut form.random_seed, "random");
                    ui.add_enabled(!form.random_seed, egui::DragValue::new(&mut form.seed))
                        .labelled_by(label.id);
                });
                ui.end_row();
                let label = ui.label("Images");
                ui.add(egui::DragValue::new(&mut form.count).range(1..=16))
                    .labelled_by(label.id);
                ui.end_row();
            });
        if ui
            .button("Reset tokens, steps and guidance")
            .on_hover_text("To the defaults in Settings")
            .clicked()
        {
            app.state.apply_default_generation_settings();
        }
        ui.add_space(6.0);
        match progress {
            Some(progress) => {
                let elapsed = self
                    .running
                    .as_ref()
                    .map_or(0.0, |r| r.started.elapsed().as_secs_f64());
                let count = self.running.as_ref().map_or(0, |r| r.count);
                ui.horizontal(|ui| {
                    ui.spinner();
                    ui.label(match &progress {
                        Some(p) => format!("{count} image(s): {}", progress_line(p, elapsed)),
                        None => "starting…".to_owned(),
                    });
                });
                if let Some(p) = &progress {
                    ui.add(egui::ProgressBar::new(
                        p.done as f32 / p.total.max(1) as f32,
                    ));
                }
                if ui.button("Cancel").on_hover_text("Esc").clicked() {
                    self.cancel();
                }
            }
            None => {
                let status = app.engines.generate();
                let ready = matches!(status, EngineStatus::Ready(_));
                let shortcut = ui.ctx().format_shortcut(&Self::GENERATE_SHORTCUT);
                if ui
                    .add_enabled(ready, egui::Button::new("Generate images"))
                    .on_hover_text(shortcut)
                    .clicked()
                {
                    self.start(app);
                }
                let loading = "loading the generator…";
                let failed = "Generator failed to load";
                if let Some(engine) = super::engine_status(
                    ui,
                    status,
                    loading,
                    failed,
                    &mut app.engines,
                    &mut app.switch_to,
                ) {
                    if matches!(
                        engine.dit_source,
                        crate::pipeline::ModelSource::RandomInit { .. }
                    ) {
                        ui.colored_label(
                            ui.visuals().warn_fg_color,
                            format!("DiT: {}", engine.dit_source),
                        );
                    }
                    if let Some(warning) = &engine.token_mismatch {
                        ui.colored_label(ui.visuals().warn_fg_color, warning);
                    }
                    ui.weak(super::device_label(&engine.device.description));
                }
            }
        }
        if let Some(error) = &self.last_error {
            ui.colored_label(ui.visuals().error_fg_color, error);
        }
    }

    fn gallery(&mut self, ui: &mut egui::Ui, app: &mut AppContext) {
        // First, so the last picture's delete can be undone from an empty gallery too.
        if let Some(deleted) = self.deleted.last() {
            let name = super::file_name_of(&deleted.entry.file);
            if ui.button(format!("Undo delete ({name})")).clicked() {
                self.undo_delete(app);
            }
        }
        if app.state.gallery.is_empty() {
            ui.centered_and_justified(|ui| {
                ui.label("Generated images appear here, each with the settings that made it.");
            });
            return;
        }
        ui.weak(format!(
            "Saved in {}",
            app.data_dir.join(GENERATED_DIR).display()
        ));
        let mut shown = Vec::new();
        ui.horizontal(|ui| {
            ui.add(
                egui::TextEdit::singleline(&mut self.filter)
                    .hint_text("Filter: caption")
                    .desired_width(200.0),
            );
            // After the text field, so the count follows this frame's typing.
            shown = self.shown(&app.state.gallery);
            if !self.filter.trim().is_empty() {
                ui.label(format!(
                    "{} of {} images",
                    shown.len(),
                    app.state.gallery.len()
                ));
                if ui.small_button("Show all").clicked() {
                    self.filter.clear();
                }
            }
        });
        if shown.is_empty() {
            ui.centered_and_justified(|ui| {
                ui.label("No generated image's caption matches the filter.");
            });
            return;
        }
        let side = 160.0;
        let mut action: Option<(usize, GalleryAction)> = None;
        let spacing = ui.spacing().item_spacing;
        let columns = ((ui.available_width() + spacing.x) / (side + spacing.x))
            .floor()
            .max(1.0) as usize;
        let rows = shown.len().div_ceil(columns);
        // The picture, two lines of text and two rows of small buttons (they wrap in 160 px).
        let text = ui.text_style_height(&egui::TextStyle::Body);
        let cell_height = side + 2.0 * text + 2.0 * ui.spacing().interact_size.y + 5.0 * spacing.y;
        // Only the visible rows are laid out (and their thumbnails decoded), as in the
        // Library: a gallery of thousands scrolls like one of ten.
        egui::ScrollArea::vertical().show_rows(ui, cell_height, rows, |ui, visible| {
            for row in visible {
                let first = row * columns;
                let last = (first + columns).min(shown.len());
                // Top-aligned: centred cells of slightly different heights came out staggered.
                ui.horizontal_top(|ui| {
                    for &index in &shown[first..last] {
                        let entry = &app.state.gallery[index];
                        let layout = egui::Layout::top_down(egui::Align::Min);
                        ui.allocate_ui_with_layout(egui::vec2(side, cell_height), layout, |ui| {
                            ui.set_width(side);
                            ui.set_min_height(cell_height);
                            match app.thumbnails.get(&entry.file) {
                                ThumbnailState::Ready(texture) => {
                                    ui.add(egui::Image::from_texture((
                                        texture.id(),
                                        egui::vec2(side, side),
                                    )));
                                }
                                ThumbnailState::Pending => {
                                    ui.add_sized([side, side], egui::Spinner::new());
                                }
                                ThumbnailState::Failed(reason) => {
                                    ui.add_sized(
                                        [side, side],
                                        egui::Label::new(format!("unreadable: {reason}")),
                                    );
                                }
                            }
                            let s = &entry.settings;
                            ui.add(
                                egui::Label::new(egui::RichText::new(&s.caption).small())
                                    .truncate(),
                            );
                            ui.weak(format!(
                                "k={} · {} steps · cfg {} · seed {}",
                                s.tokens, s.steps, s.cfg, s.seed
                            ));
                            ui.horizontal_wrapped(|ui| {
                                if ui.small_button("Reuse settings").clicked() {
                                    action = Some((index, GalleryAction::Reuse));
                                }
                                if ui.small_button("Save as…").clicked() {
                                    action = Some((index, GalleryAction::SaveAs));
                                }
                                if ui.small_button("To Library").clicked() {
                                    action = Some((index, GalleryAction::ToLibrary));
                                }
                                if ui.small_button("Delete").clicked() {
                                    action = Some((index, GalleryAction::Delete));
                                }
                            });
                        });
                    }
                });
            }
        });
        if let Some((index, what)) = action {
            self.act(index, what, app);
        }
    }

    /// The indices of the gallery entries the filter lets through, in gallery order.
    pub fn shown(&self, gallery: &[super::state::GalleryEntry]) -> Vec<usize> {
        (0..gallery.len())
            .filter(|&index| super::words_match(&self.filter, &[&gallery[index].settings.caption]))
            .collect()
    }

    /// Brings back the last deleted gallery entry, and its file.
    pub fn undo_delete(&mut self, app: &mut AppContext) {
        let Some(Deleted {
            index,
            entry,
            bytes,
        }) = self.deleted.pop()
        else {
            return;
        };
        if let Some(content) = &bytes
            && !entry.file.exists()
            && let Err(error) = crate::files::write_atomic(&entry.file, content)
        {
            app.notices
                .error(format!("Cannot restore {}: {error}", entry.file.display()));
            // Kept, so Undo can be tried again (say, once the disk has room).
            self.deleted.push(Deleted {
                index,
                entry,
                bytes,
            });
            return;
        }
        let index = index.min(app.state.gallery.len());
        app.state.gallery.insert(index, entry);
    }

    /// A gallery button (also used by tests).
    pub fn act(&mut self, index: usize, what: GalleryAction, app: &mut AppContext) {
        let Some(entry) = app.state.gallery.get(index).cloned() else {
            return;
        };
        match what {
            GalleryAction::Reuse => {
                let form = &mut app.state.generate;
                form.caption = entry.settings.caption.clone();
                form.tokens = entry.settings.tokens;
                form.steps = entry.settings.steps;
                form.cfg = entry.settings.cfg;
                form.seed = entry.settings.seed;
                form.random_seed = false;
                form.count = 1;
                if let Some(changed) = changed_models(&entry.settings, app) {
                    app.notices.info(format!(
                        "Settings reused, but the {changed} that made this image, so they \
                         will make another image (the image's PNG names its models' SHA-256)."
                    ));
                }
            }
            GalleryAction::SaveAs => {
                // A second dialog would replace the first one's answer, which would be lost.
                if self.save_dialog.is_some() {
                    app.notices
                        .info("A Save dialog is already open; finish that one first.");
                    return;
                }
                let name = entry
                    .file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "generated.png".into());
                let receiver = super::pick_in_background(app.notify.clone(), move || {
                    rfd::FileDialog::new()
                        .set_title("Save the image (PNG with its settings)")
                        .set_file_name(name)
                        .add_filter("PNG", &["png"])
                        .save_file()
                        .into_iter()
                        .collect()
                });
                self.save_dialog = Some((receiver, entry.file.clone()));
            }
            GalleryAction::ToLibrary => {
                let report = super::library::import_paths(
                    &mut app.state.library,
                    std::slice::from_ref(&entry.file),
                );
                if let Some(item) = app
                    .state
                    .library
                    .iter_mut()
                    .find(|item| item.path == entry.file)
                    && item.caption.is_empty()
                {
                    item.caption = entry.settings.caption.clone();
                }
                app.state.selected = Some(entry.file.clone());
                app.notices.info(format!("Library: {}", report.summary()));
            }
            GalleryAction::Delete => {
                app.state.gallery.remove(index);
                if app.state.library.iter().any(|item| item.path == entry.file) {
                    // The Library still shows this picture: keep the file.
                    app.notices.info(
                        "Removed from the gallery; the file stays because the Library uses it.",
                    );
                    self.deleted.push(Deleted {
                        index,
                        entry,
                        bytes: None,
                    });
                    return;
                }
                // Keep the bytes, so Undo can write the file back.
                let bytes = std::fs::read(&entry.file).ok();
                if let Err(error) = std::fs::remove_file(&entry.file)
                    && error.kind() != std::io::ErrorKind::NotFound
                {
                    app.notices
                        .error(format!("Cannot delete {}: {error}", entry.file.display()));
                }
                app.thumbnails.forget(&entry.file);
                self.deleted.push(Deleted {
                    index,
                    entry,
                    bytes,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eta_extrapolates_the_pace_so_far_and_waits_for_a_first_unit() {
        let at = |done, total| Progress {
            done,
            total,
            message: String::new(),
        };
        assert_eq!(eta_suffix(&at(2, 6), 4.0), ", ETA 8s");
        assert_eq!(eta_suffix(&at(6, 6), 9.0), ", ETA 0s");
        assert_eq!(eta_suffix(&at(0, 6), 4.0), "");
        assert_eq!(progress_line(&at(1, 50), 0.5), "step 1/50, ETA 24s");
    }
}
