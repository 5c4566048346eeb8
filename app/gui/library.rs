//! Library pane: the user's images with their captions. Images come from "Add images…",
//! "Add folder…" or drag-and-drop; folders bring their `NAME.txt` sidecars or `captions.jsonl`.

use std::collections::HashSet;
use std::path::PathBuf;

use eframe::egui;

use super::images::ThumbnailState;
use super::state::LibraryItem;
use super::{AppContext, Pane};
use crate::data::dataset::{self, IMAGE_EXTENSIONS};
use crate::jobs::CancelToken;
use crate::model::text_encoder::{CaptionTokenCounter, TokenCount};

/// What an import did, for the message the user sees.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ImportReport {
    pub added: usize,
    pub already_present: usize,
    /// Images already in the library without a caption that the import found one for.
    pub captions_filled: usize,
    /// The import's first image, added or already there: what the app selects.
    pub first: Option<PathBuf>,
    /// Files not added, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

impl ImportReport {
    pub fn summary(&self) -> String {
        let mut text = format!("added {} image(s)", self.added);
        if self.already_present > 0 {
            text.push_str(&format!(
                ", {} already in the library",
                self.already_present
            ));
        }
        if self.captions_filled > 0 {
            text.push_str(&format!(
                " ({} of them now captioned from their sidecar or captions.jsonl)",
                self.captions_filled
            ));
        }
        if !self.skipped.is_empty() {
            text.push_str(&format!(", skipped {}:", self.skipped.len()));
            for (path, reason) in self.skipped.iter().take(5) {
                text.push_str(&format!("\n  {}: {reason}", path.display()));
            }
            if self.skipped.len() > 5 {
                text.push_str(&format!("\n  … and {} more", self.skipped.len() - 5));
            }
        }
        text
    }
}

/// Adds image files and folders to `library`. A file's caption comes from its `NAME.txt`
/// sidecar; a folder's from its `captions.jsonl` or sidecars (uncaptioned images come in with an
/// empty caption). Paths are stored absolute, so the library survives a change of directory.
pub fn import_paths(library: &mut Vec<LibraryItem>, paths: &[PathBuf]) -> ImportReport {
    import_paths_cancellable(library, paths, &CancelToken::new())
}

/// [`import_paths`] whose folder scans stop soon after `cancel` is set (the report is then
/// partial: [`scan_paths`] drops it).
pub fn import_paths_cancellable(
    library: &mut Vec<LibraryItem>,
    paths: &[PathBuf],
    cancel: &CancelToken,
) -> ImportReport {
    let mut report = ImportReport::default();
    let mut present: HashSet<PathBuf> = library.iter().map(|item| item.path.clone()).collect();
    let mut add = |path: PathBuf, caption: String, report: &mut ImportReport| {
        if present.insert(path.clone()) {
            library.push(LibraryItem { path, caption });
            report.added += 1;
        } else {
            report.already_present += 1;
        }
    };
    for path in paths {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.clone());
        if path.is_dir() {
            match dataset::scan_cancellable(&path, cancel) {
                Ok((entries, skipped)) => {
                    for entry in entries {
                        add(path.join(&entry.relative), entry.caption, &mut report);
                    }
                    for file in skipped {
                        let image = path.join(&file.relative);
                        if dataset::has_image_extension(&image)
                            && image.is_file()
                            && file.reason.contains("no caption")
                        {
                            add(image, String::new(), &mut report);
                        } else {
                            report.skipped.push((image, file.reason));
                        }
                    }
                }
                Err(error) => {
                    let reason = dataset::reason_without_path(&error, &path);
                    report.skipped.push((path, reason));
                }
            }
        } else if !path.is_file() {
            report.skipped.push((path, "no such file".into()));
        } else if !dataset::has_image_extension(&path) {
            report
                .skipped
                .push((path, "not an image file (by its extension)".into()));
        } else {
            match dataset::read_sidecar_caption(&path) {
                Ok(caption) => add(path, caption.unwrap_or_default(), &mut report),
                Err(reason) => {
                    // The image is fine; only its caption file is not.
                    report.skipped.push((path.with_extension("txt"), reason));
                    add(path, String::new(), &mut report);
                }
            }
        }
    }
    report
}

/// What writing a batch of caption sidecars did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SidecarReport {
    /// Sidecars written.
    pub written: usize,
    /// Sidecars that already held their caption (as an import reads it), left as they were.
    pub unchanged: usize,
    /// Sidecars not written, and why.
    pub problems: Vec<String>,
}

/// Writes each caption to its image's `NAME.txt` (atomically), leaving alone a file that already
/// holds it and refusing a sidecar that two images share (`photo.png` and `photo.jpg` would
/// each overwrite the other's caption). Each folder is listed once, so a batch of thousands (a
/// Library whose sidecars were just turned on) costs one listing per folder, not one per image.
pub fn write_sidecars(captions: &[(PathBuf, String)]) -> SidecarReport {
    let mut report = SidecarReport::default();
    let mut listings: std::collections::HashMap<PathBuf, Vec<PathBuf>> = Default::default();
    for (image, caption) in captions {
        let sidecar = image.with_extension("txt");
        let folder = image
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        let listing = listings.entry(folder).or_insert_with_key(|folder| {
            std::fs::read_dir(folder)
                .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect())
                .unwrap_or_default()
        });
        if let Some(other) = dataset::sidecar_shared_within(image, listing) {
            report.problems.push(format!(
                "Not written: {} is the caption file of both {} and {}; rename one of them to \
                 keep their captions apart",
                sidecar.display(),
                image.display(),
                other.display()
            ));
            continue;
        }
        let on_disk = dataset::read_sidecar_caption(image).ok().flatten();
        if on_disk.is_some() && on_disk.as_deref() == Some(caption.trim()) {
            report.unchanged += 1;
            continue;
        }
        match crate::files::write_atomic(&sidecar, caption.as_bytes()) {
            Ok(()) => report.written += 1,
            Err(error) => report
                .problems
                .push(format!("Cannot write {}: {error}", sidecar.display())),
        }
    }
    report
}

/// Images found by [`scan_paths`], not yet in the library.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Scanned {
    pub items: Vec<LibraryItem>,
    pub skipped: Vec<(PathBuf, String)>,
}

/// The file-system part of an import (walking folders, reading captions), which can take a
/// while for big folders and so runs off the UI thread.
pub fn scan_paths(paths: &[PathBuf], cancel: &CancelToken) -> anyhow::Result<Scanned> {
    let mut items = Vec::new();
    let mut skipped = Vec::new();
    // Path by path, and inside each folder's scan, so Cancel import stops the work soon.
    for path in paths {
        cancel.check()?;
        let report = import_paths_cancellable(&mut items, std::slice::from_ref(path), cancel);
        skipped.extend(report.skipped);
    }
    cancel.check()?;
    Ok(Scanned { items, skipped })
}

/// Adds scanned images that are not in `library` yet. One already there without a caption
/// takes the caption the scan found (captions written after the first import are picked up by
/// adding the folder again); a caption already there is never replaced.
pub fn merge(library: &mut Vec<LibraryItem>, scanned: Scanned) -> ImportReport {
    let mut present: std::collections::HashMap<PathBuf, usize> = library
        .iter()
        .enumerate()
        .map(|(index, item)| (item.path.clone(), index))
        .collect();
    let mut report = ImportReport {
        skipped: scanned.skipped,
        ..Default::default()
    };
    for item in scanned.items {
        report.first.get_or_insert_with(|| item.path.clone());
        match present.get(&item.path) {
            Some(&index) => {
                report.already_present += 1;
                let existing = &mut library[index];
                if existing.caption.trim().is_empty() && !item.caption.trim().is_empty() {
                    existing.caption = item.caption;
                    report.captions_filled += 1;
                }
            }
            None => {
                present.insert(item.path.clone(), library.len());
                library.push(item);
                report.added += 1;
            }
        }
    }
    report
}

/// The caption editor's token line: how many tokens, and whether the rest is cut.
pub fn token_line(count: &TokenCount, max_tokens: usize) -> (String, bool) {
    if count.truncated() {
        (
            format!(
                "{} text tokens: only the first {} are read, the rest of the caption is ignored",
                count.needed, count.kept
            ),
            true,
        )
    } else {
        (
            format!("{} of {max_tokens} text tokens", count.needed),
            false,
        )
    }
}

/// TexTok's advantage is the caption: the Library and Compare say so where it is missing.
pub const NO_CAPTION_HINT: &str = "No caption yet: TexTok then has no text to lean on.";

/// The most characters the caption editors take. The text encoder reads the first 32 tokens
/// (a couple of hundred characters); the limit only stops a stray paste of a whole document
/// from going into the state file, the recent prompts and every frame's layout.
pub const MAX_CAPTION_CHARS: usize = 2000;

/// Caption editor shared by the Library, Compare and Generate panes: multi-line, with the token
/// count, and `blank_hint` under an empty caption. Returns true when the caption changed.
/// `id` names the editor's state, its undo history included: an editor that shows one image's
/// caption after another must include the image in it, or Ctrl+Z brings the previous image's
/// text into this one.
/// The caption editors' token counter: loading (at start), ready, or failed to load.
#[derive(Clone, Default)]
pub enum TokenCounter {
    #[default]
    Loading,
    Ready(std::sync::Arc<CaptionTokenCounter>),
    Failed,
}

impl TokenCounter {
    pub fn is_ready(&self) -> bool {
        matches!(self, Self::Ready(_))
    }
}

pub fn caption_editor(
    ui: &mut egui::Ui,
    caption: &mut String,
    counter: &TokenCounter,
    id: impl std::hash::Hash + std::fmt::Debug,
    blank_hint: Option<&str>,
) -> bool {
    let changed = ui
        .add(
            egui::TextEdit::multiline(caption)
                .id_salt(id)
                .char_limit(MAX_CAPTION_CHARS)
                .hint_text("Describe the image: what it shows, colours, style…")
                .desired_rows(3)
                .desired_width(f32::INFINITY),
        )
        .changed();
    let counted = match counter {
        TokenCounter::Ready(counter) => Some((counter.count(caption), counter.max_tokens())),
        TokenCounter::Loading | TokenCounter::Failed => None,
    };
    match counted {
        Some((Ok(count), max_tokens)) => {
            let (text, warn) = token_line(&count, max_tokens);
            if warn {
                ui.colored_label(ui.visuals().warn_fg_color, text);
            } else {
                ui.weak(text);
            }
        }
        Some((Err(error), _)) => {
            ui.colored_label(ui.visuals().error_fg_color, error.to_string());
        }
        None if matches!(counter, TokenCounter::Failed) => {
            ui.weak("token count unavailable (the text encoder's tokenizer did not load)");
        }
        None => {
            ui.weak("counting tokens…");
        }
    }
    if let Some(hint) = blank_hint
        && caption.trim().is_empty()
    {
        ui.weak(hint);
    }
    changed
}

#[derive(Default)]
pub struct LibraryPane {
    /// The Add dialog's answer, once it comes (public so tests can answer it).
    pub dialog: Option<std::sync::mpsc::Receiver<Vec<PathBuf>>>,
    /// Items removed this session, newest last, with their places: Undo puts them back (a
    /// caption typed in the app may exist nowhere else).
    removed: Vec<(usize, LibraryItem)>,
    /// Paths typed or pasted into the *Add path* field: the way in where neither a file dialog
    /// nor dropping works (winit cannot receive dropped files on Wayland).
    pub typed_paths: String,
}

/// The paths in text typed or pasted into *Add path*: one per line, each trimmed, with the
/// quotes a file manager's "copy path" adds and a `file://` prefix (what copying files gives
/// on Linux) taken off, `%20`-style escapes decoded.
pub fn paths_from_text(text: &str) -> Vec<PathBuf> {
    text.lines()
        .map(|line| line.trim().trim_matches(['"', '\'']))
        .filter(|line| !line.is_empty())
        .map(|line| match line.strip_prefix("file://") {
            Some(uri) => PathBuf::from(percent_decoded(uri)),
            None => PathBuf::from(line),
        })
        .collect()
}

/// `%XX` escapes decoded (a malformed one is kept as it is).
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let hex = bytes
            .get(at + 1..at + 3)
            .and_then(|pair| std::str::from_utf8(pair).ok())
            .and_then(|pair| u8::from_str_radix(pair, 16).ok());
        match (bytes[at], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                at += 3;
            }
            (byte, _) => {
                out.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Which Library items are shown: in the Library's grid, and the ones Compare's Previous /
/// Next step through.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LibraryFilter {
    /// Words every shown item's caption or file name holds (any case); empty: all.
    pub words: String,
    /// Show only the items without a caption (the ones fine-tuning leaves out).
    pub uncaptioned_only: bool,
}

impl LibraryFilter {
    pub fn active(&self) -> bool {
        self.uncaptioned_only || !self.words.trim().is_empty()
    }

    /// True when `item` passes: every word in its caption or file name and, with
    /// `uncaptioned_only`, no caption.
    pub fn matches(&self, item: &LibraryItem) -> bool {
        if self.uncaptioned_only && !item.caption.trim().is_empty() {
            return false;
        }
        super::words_match(
            &self.words,
            &[&item.caption, &super::file_name_of(&item.path)],
        )
    }

    /// The indices of the items that pass, in library order.
    pub fn shown(&self, library: &[LibraryItem]) -> Vec<usize> {
        if !self.active() {
            return (0..library.len()).collect();
        }
        (0..library.len())
            .filter(|&index| self.matches(&library[index]))
            .collect()
    }
}

impl LibraryPane {
    /// Puts the last removed item back where it was. One added again meanwhile stays where it
    /// is, and gets the removed caption back if it has none (a caption typed in the app may
    /// exist nowhere else); one with a caption of its own keeps it, and the notice quotes the
    /// removed one.
    pub fn undo_remove(&mut self, app: &mut AppContext) {
        let Some((index, item)) = self.removed.pop() else {
            return;
        };
        if let Some(again) = app
            .state
            .library
            .iter_mut()
            .find(|other| other.path == item.path)
        {
            let name = super::file_name_of(&item.path);
            let removed_caption = item.caption.trim();
            if again.caption.trim().is_empty() && !removed_caption.is_empty() {
                again.caption = item.caption.clone();
                app.notices.info(format!(
                    "{name} was added again meanwhile; its caption is restored."
                ));
                app.caption_edited(&item.path);
            } else if !removed_caption.is_empty() && again.caption.trim() != removed_caption {
                // Stays until dismissed: the quote may be the caption's only copy.
                app.notices.lasting(format!(
                    "{name} was added again meanwhile with a caption of its own, which it keeps; \
                     the removed caption was: {removed_caption}"
                ));
            }
            app.state.selected = Some(item.path);
            return;
        }
        let index = index.min(app.state.library.len());
        app.state.selected = Some(item.path.clone());
        app.state.library.insert(index, item);
    }

    /// Acts on the Add dialog's answer (called every frame: the dialog does not hold the
    /// window, so another pane may be shown when it is answered).
    pub fn poll_dialog(&mut self, app: &mut AppContext) {
        if let Some(receiver) = &self.dialog
            && let Some(paths) = super::dialog_answer(receiver, &mut app.notices)
        {
            self.dialog = None;
            app.import(&paths);
        }
    }

    pub fn ui(&mut self, ui: &mut egui::Ui, app: &mut AppContext) {
        ui.horizontal(|ui| {
            let idle = self.dialog.is_none();
            if ui
                .add_enabled(idle, egui::Button::new("Add images…"))
                .clicked()
            {
                self.dialog = Some(super::pick_in_background(app.notify.clone(), || {
                    rfd::FileDialog::new()
                        .set_title("Add images to the library")
                        .add_filter("Images", &IMAGE_EXTENSIONS)
                        .pick_files()
                        .unwrap_or_default()
                }));
            }
            if ui
                .add_enabled(idle, egui::Button::new("Add folder…"))
                .clicked()
            {
                self.dialog = Some(super::pick_in_background(app.notify.clone(), || {
                    rfd::FileDialog::new()
                        .set_title("Add a folder of images (with NAME.txt captions)")
                        .pick_folder()
                        .into_iter()
                        .collect()
                }));
            }
            let field = ui
                .add(
                    egui::TextEdit::singleline(&mut self.typed_paths)
                        .hint_text("or type / paste a path")
                        .desired_width(180.0),
                )
                .on_hover_text(
                    "A file or folder path (pasted files: one per line), added with Enter: \
                     the way in where no file dialog opens and dropping does not work",
                );
            let entered = field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            if (ui.button("Add path").clicked() || entered) && !self.typed_paths.trim().is_empty() {
                let paths = paths_from_text(&std::mem::take(&mut self.typed_paths));
                app.import(&paths);
            }
            ui.separator();
            let toggled = ui
                .checkbox(
                    &mut app.state.settings.save_sidecars,
                    "Save captions as sidecar .txt",
                )
                .on_hover_text(
                    "Writes each image's caption to NAME.txt beside it: when turned on, every \
                     caption its file does not hold yet; then each edit",
                )
                .changed();
            if toggled && app.state.settings.save_sidecars {
                app.queue_all_sidecars();
            }
            if app.writing_sidecars() {
                ui.spinner().on_hover_text("Writing caption sidecars…");
            }
            ui.separator();
            let filter = &mut app.library_filter;
            ui.add(
                egui::TextEdit::singleline(&mut filter.words)
                    .hint_text("Filter: caption or file name")
                    .desired_width(200.0),
            );
            ui.checkbox(&mut filter.uncaptioned_only, "Uncaptioned only")
                .on_hover_text("Images without a caption: fine-tuning leaves them out");
            let total = app.state.library.len();
            if app.library_filter.active() {
                let shown = app.library_filter.shown(&app.state.library).len();
                ui.label(format!("{shown} of {total} images"));
                if ui.small_button("Show all").clicked() {
                    app.library_filter = LibraryFilter::default();
                }
            } else {
                ui.label(format!("{total} images"));
            }
            if let Some((_, item)) = self.removed.last() {
                let name = super::file_name_of(&item.path);
                if ui.button(format!("Undo remove ({name})")).clicked() {
                    self.undo_remove(app);
                }
            }
        });
        if app.imports_running() > 0 {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label("Importing: looking through the files and folders added…");
                if ui.button("Cancel import").clicked() {
                    app.cancel_imports();
                }
            });
        } else {
            ui.weak("Drop image files or folders anywhere on the window to add them.");
        }
        ui.separator();

        egui::Panel::right("library-details")
            .resizable(true)
            .default_size(320.0)
            .show(ui, |ui| self.details(ui, app));
        egui::CentralPanel::default().show(ui, |ui| self.grid(ui, app));
    }

    fn grid(&mut self, ui: &mut egui::Ui, app: &mut AppContext) {
        if app.state.library.is_empty() {
            ui.centered_and_justified(|ui| {
                ui.label("No images yet. Add some with the buttons above or drop them here.");
            });
            return;
        }
        let shown = app.library_filter.shown(&app.state.library);
        if shown.is_empty() {
            ui.centered_and_justified(|ui| {
                ui.label("No image matches the filter.");
            });
            return;
        }
        let cell = super::images::THUMBNAIL_SIZE as f32 * 0.75;
        let spacing = ui.spacing().item_spacing;
        let columns = ((ui.available_width() + spacing.x) / (cell + 8.0 + spacing.x))
            .floor()
            .max(1.0) as usize;
        let rows = shown.len().div_ceil(columns);
        // Buttons add their frame padding; the caption line sits under the picture.
        let row_height =
            cell + 8.0 + ui.text_style_height(&egui::TextStyle::Small) + spacing.y * 2.0;
        // Only the visible rows are laid out (and their thumbnails decoded): a library of
        // thousands of images scrolls as fast as one of ten.
        egui::ScrollArea::vertical().show_rows(ui, row_height, rows, |ui, visible| {
            for row in visible {
                let first = row * columns;
                let last = (first + columns).min(shown.len());
                let items: Vec<(PathBuf, String)> = shown[first..last]
                    .iter()
                    .map(|&index| &app.state.library[index])
                    .map(|item| (item.path.clone(), item.caption.clone()))
                    .collect();
                ui.horizontal(|ui| {
                    for (path, caption) in items {
                        self.cell(ui, app, cell, path, caption);
                    }
                });
            }
        });
    }

    fn cell(
        &mut self,
        ui: &mut egui::Ui,
        app: &mut AppContext,
        cell: f32,
        path: PathBuf,
        caption: String,
    ) {
        let selected = app.state.selected.as_ref() == Some(&path);
        let response = ui
            .vertical(|ui| {
                ui.set_width(cell + 8.0);
                let response = match app.thumbnails.get(&path) {
                    ThumbnailState::Ready(texture) => ui.add(
                        egui::Button::image(egui::Image::from_texture((
                            texture.id(),
                            egui::vec2(cell, cell),
                        )))
                        .selected(selected),
                    ),
                    ThumbnailState::Pending => ui.add_sized(
                        [cell + 8.0, cell + 8.0],
                        egui::Button::new("…").selected(selected),
                    ),
                    ThumbnailState::Failed(reason) => ui
                        .add_sized(
                            [cell + 8.0, cell + 8.0],
                            egui::Button::new("unreadable").selected(selected),
                        )
                        .on_hover_text(reason.to_owned()),
                };
                let label = if caption.is_empty() {
                    "(no caption)".to_owned()
                } else {
                    caption
                };
                ui.add(egui::Label::new(egui::RichText::new(label).small()).truncate());
                response
            })
            .inner;
        let response = response.on_hover_text(path.display().to_string());
        if response.clicked() {
            app.state.selected = Some(path.clone());
        }
        if response.double_clicked() {
            app.state.selected = Some(path);
            app.switch_to = Some(Pane::Compare);
        }
    }

    fn details(&mut self, ui: &mut egui::Ui, app: &mut AppContext) {
        let Some(path) = app.state.selected.clone() else {
            ui.label("Select an image to edit its caption.");
            return;
        };
        let Some(index) = app.state.library.iter().position(|item| item.path == path) else {
            ui.label("Select an image to edit its caption.");
            return;
        };
        ui.heading(super::file_name_of(&path));
        ui.weak(path.display().to_string());
        if let ThumbnailState::Ready(texture) = app.thumbnails.get(&path) {
            let side = ui.available_width().min(256.0);
            ui.add(egui::Image::from_texture((
                texture.id(),
                egui::vec2(side, side),
            )));
        }
        ui.label("Caption");
        let counter = app.token_counter.clone();
        let item = &mut app.state.library[index];
        if caption_editor(
            ui,
            &mut item.caption,
            &counter,
            ("library-caption", &path),
            Some(NO_CAPTION_HINT),
        ) {
            app.caption_edited(&path);
        }
        ui.horizontal(|ui| {
            if ui.button("Open in Compare").clicked() {
                app.switch_to = Some(Pane::Compare);
            }
            if ui
                .button("Remove from library")
                .on_hover_text("The file stays on disk; Undo brings the item and its caption back")
                .clicked()
            {
                let item = app.state.library.remove(index);
                self.removed.push((index, item));
                app.state.selected = None;
            }
        });
    }
}
