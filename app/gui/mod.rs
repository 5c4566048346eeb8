//! The desktop app (eframe/egui on wgpu). Panes: Library, Compare, Generate, Fine-tune, Settings.
//! Every long piece of work runs as a [`crate::jobs::Job`] off the UI thread, through the same
//! pipeline and training functions as the command line.

pub mod compare;
pub mod engines;
pub mod finetune;
pub mod generate;
pub mod images;
pub mod library;
pub mod settings;
pub mod state;
pub mod wipe;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use eframe::egui;

use crate::jobs::{Job, JobState};
use crate::model::text_encoder::CaptionTokenCounter;
use engines::{EngineKey, Engines, ShippedModels};
use state::{PersistedState, StateSaver};

/// The app's name, also its data-folder name.
pub const APP_ID: &str = "textok-studio";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Pane {
    Library,
    Compare,
    Generate,
    FineTune,
    Settings,
}

/// Ctrl+1 … Ctrl+5 (Cmd on macOS) show the panes in [`Pane::ALL`]'s order, as the tabs do.
const PANE_KEYS: [egui::Key; 5] = [
    egui::Key::Num1,
    egui::Key::Num2,
    egui::Key::Num3,
    egui::Key::Num4,
    egui::Key::Num5,
];

impl Pane {
    pub const ALL: [Pane; 5] = [
        Pane::Library,
        Pane::Compare,
        Pane::Generate,
        Pane::FineTune,
        Pane::Settings,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Pane::Library => "Library",
            Pane::Compare => "Compare",
            Pane::Generate => "Generate",
            Pane::FineTune => "Fine-tune",
            Pane::Settings => "Settings",
        }
    }
}

/// How the app starts.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// Library, gallery, fine-tuning runs and the saved state live here.
    pub data_dir: PathBuf,
    pub shipped: ShippedModels,
    pub pane: Option<Pane>,
    /// Images and folders to add to the Library at start (the first image becomes the
    /// selection; folders are scanned in the background, their first image selected then).
    pub open: Vec<PathBuf>,
    /// Caption for the first of `open`, an image (else its sidecar's).
    pub caption: Option<String>,
    /// Save a screenshot here once the pane has settled, then quit.
    pub screenshot: Option<PathBuf>,
    /// Quit after this many seconds at the latest (a screenshot is taken first if asked for).
    pub quit_after: Option<f64>,
}

impl StartOptions {
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            shipped: ShippedModels::from_models_dir(),
            pane: None,
            open: Vec::new(),
            caption: None,
            screenshot: None,
            quit_after: None,
        }
    }
}

/// The default data folder, where each system keeps application data:
/// `$XDG_DATA_HOME/textok-studio` or `~/.local/share/textok-studio` (Linux and other Unix),
/// `~/Library/Application Support/textok-studio` (macOS), `%APPDATA%\textok-studio` (Windows).
pub fn default_data_dir() -> PathBuf {
    let home = std::env::home_dir();
    let base = if cfg!(target_os = "windows") {
        std::env::var_os("APPDATA").map(PathBuf::from)
    } else if cfg!(target_os = "macos") {
        home.map(|h| h.join("Library").join("Application Support"))
    } else {
        std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| home.map(|h| h.join(".local").join("share")))
    };
    base.unwrap_or_else(std::env::temp_dir).join(APP_ID)
}

/// Messages for the user: errors stay until dismissed, information fades after a while.
#[derive(Default)]
pub struct Notices {
    items: Vec<(NoticeKind, String, Instant)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoticeKind {
    /// Fades after [`Notices::FADE_AFTER`].
    Info,
    /// Information that stays until dismissed: it holds something the user may need (a
    /// caption that exists nowhere else, quoted).
    Lasting,
    /// Stays until dismissed, drawn as an error.
    Error,
}

impl Notices {
    /// Messages drawn at once, newest first.
    const SHOWN: usize = 4;
    /// How long information is shown.
    pub const FADE_AFTER: Duration = Duration::from_secs(8);

    pub fn error(&mut self, message: impl Into<String>) {
        let message = message.into();
        // A repeated failure (e.g. every save to a read-only folder) is one notice, refreshed.
        self.items.retain(|(_, m, _)| *m != message);
        tracing::warn!("{message}");
        self.items
            .push((NoticeKind::Error, message, Instant::now()));
    }

    /// Removes the errors that start with `prefix`: a failure that has since been put right
    /// (a reconstruction that works now) would otherwise contradict what the window shows.
    pub fn clear_errors_starting_with(&mut self, prefix: &str) {
        self.items.retain(|(kind, message, _)| {
            !(*kind == NoticeKind::Error && message.starts_with(prefix))
        });
    }

    pub fn info(&mut self, message: impl Into<String>) {
        self.items
            .push((NoticeKind::Info, message.into(), Instant::now()));
    }

    /// Information that stays until dismissed (see [`NoticeKind::Lasting`]).
    pub fn lasting(&mut self, message: impl Into<String>) {
        self.items
            .push((NoticeKind::Lasting, message.into(), Instant::now()));
    }

    pub fn errors(&self) -> impl Iterator<Item = &str> {
        self.items
            .iter()
            .filter(|(kind, _, _)| *kind == NoticeKind::Error)
            .map(|(_, m, _)| m.as_str())
    }

    pub fn all(&self) -> impl Iterator<Item = &str> {
        self.items.iter().map(|(_, m, _)| m.as_str())
    }

    /// Drops the information shown for [`Self::FADE_AFTER`] by `now`.
    pub fn drop_faded(&mut self, now: Instant) {
        self.items.retain(|(kind, _, at)| {
            *kind != NoticeKind::Info || now.saturating_duration_since(*at) < Self::FADE_AFTER
        });
    }

    fn ui(&mut self, ui: &mut egui::Ui) {
        self.drop_faded(Instant::now());
        let mut dismiss = None;
        for (index, (kind, message, _)) in self.items.iter().enumerate().rev().take(Self::SHOWN) {
            ui.horizontal(|ui| {
                if *kind == NoticeKind::Error {
                    ui.colored_label(ui.visuals().error_fg_color, message);
                } else {
                    ui.label(message);
                }
                if ui.small_button("Dismiss").clicked() {
                    dismiss = Some(index);
                }
            });
        }
        // The older ones are not hidden without a word (an import's skip report, say).
        let hidden = self.items.len().saturating_sub(Self::SHOWN);
        if hidden > 0 {
            ui.horizontal(|ui| {
                ui.weak(format!("… and {hidden} older message(s)"));
                if ui.small_button("Dismiss all").clicked() {
                    self.items.clear();
                }
            });
        }
        if let Some(index) = dismiss {
            self.items.remove(index);
        }
    }
}

/// How long the UI thread spends building each frame (the app's responsiveness).
#[derive(Default)]
pub struct FrameTimes {
    recent: VecDeque<f64>,
}

impl FrameTimes {
    const KEPT: usize = 240;

    pub fn record(&mut self, seconds: f64) {
        if self.recent.len() == Self::KEPT {
            self.recent.pop_front();
        }
        self.recent.push_back(seconds * 1000.0);
    }

    pub fn len(&self) -> usize {
        self.recent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.recent.is_empty()
    }

    pub fn mean_ms(&self) -> f64 {
        self.recent.iter().sum::<f64>() / self.recent.len().max(1) as f64
    }

    pub fn max_ms(&self) -> f64 {
        self.recent.iter().copied().fold(0.0, f64::max)
    }

    /// The `fraction` quantile (0.5 = median) of the recent frame times.
    pub fn quantile_ms(&self, fraction: f64) -> f64 {
        let mut sorted: Vec<f64> = self.recent.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let index = ((sorted.len() as f64 - 1.0) * fraction.clamp(0.0, 1.0)).round() as usize;
        sorted.get(index).copied().unwrap_or(0.0)
    }
}

/// What every pane may use: the app's shared state and services.
pub struct AppContext {
    pub state: PersistedState,
    pub engines: Engines,
    pub thumbnails: images::Thumbnails,
    pub notices: Notices,
    /// Shared, not cloned: each pane takes a handle every frame, and a copy of the tokenizer
    /// (its 30k-word vocabulary) per frame would cost milliseconds.
    pub token_counter: library::TokenCounter,
    pub data_dir: PathBuf,
    pub notify: Arc<dyn Fn() + Send + Sync>,
    /// A pane asks to switch panes by setting this.
    pub switch_to: Option<Pane>,
    /// The Compare views render with the WGSL shader (else on the CPU).
    pub wgpu_views: bool,
    pub frame_times: FrameTimes,
    /// Captions to write to `NAME.txt` sidecars at the next save.
    sidecars: HashSet<PathBuf>,
    /// Writing a batch of them, off the UI thread.
    sidecar_writer: Option<Job<library::SidecarReport>>,
    /// Which Library items the Library shows and Compare steps through.
    pub library_filter: library::LibraryFilter,
    /// Folder scans in progress.
    imports: Vec<Job<library::Scanned>>,
    caption_changed: bool,
}

impl AppContext {
    /// Adds files/folders to the Library in the background; [`Self::poll_imports`] merges them
    /// and says what happened.
    pub fn import(&mut self, paths: &[PathBuf]) {
        if paths.is_empty() {
            return;
        }
        let paths = paths.to_vec();
        self.imports.push(Job::spawn(
            "import",
            self.notify.clone(),
            move |_, cancel| library::scan_paths(&paths, cancel),
        ));
    }

    /// Merges finished imports into the Library.
    pub fn poll_imports(&mut self) {
        let (mut finished, mut failed) = (Vec::new(), Vec::new());
        self.imports.retain_mut(|job| match job.poll() {
            JobState::Running(_) => true,
            JobState::Finished(Ok(scanned)) => {
                finished.push(scanned);
                false
            }
            JobState::Finished(Err(error)) => {
                failed.push(format!("Import failed: {error:#}"));
                false
            }
            JobState::Cancelled | JobState::Collected => false,
        });
        for message in failed {
            self.notices.error(message);
        }
        for scanned in finished {
            self.merge_import(scanned);
        }
    }

    /// Folder scans still running (the Library shows them with a Cancel button).
    pub fn imports_running(&self) -> usize {
        self.imports.len()
    }

    /// Abandons the running scans: nothing they find is added, and a scan deep in a folder
    /// stops at its next folder or caption file.
    pub fn cancel_imports(&mut self) {
        if !self.imports.is_empty() {
            for job in &self.imports {
                job.cancel();
            }
            self.imports.clear();
            self.notices.info("Import cancelled; nothing was added.");
        }
    }

    fn merge_import(&mut self, scanned: library::Scanned) {
        let report = library::merge(&mut self.state.library, scanned);
        // What the user just dropped or picked is what they want to caption and compare next.
        if let Some(first) = &report.first {
            self.state.selected = Some(first.clone());
            if let Some(item) = self.state.library.iter().find(|item| &item.path == first)
                && self.library_filter.active()
                && !self.library_filter.matches(item)
            {
                self.library_filter = library::LibraryFilter::default();
                self.notices
                    .info("The Library's filter was cleared to show the images just added.");
            }
        }
        let summary = format!("Library: {}", report.summary());
        // What was skipped, and why, stays until dismissed: an info notice fades before a
        // list of reasons can be read.
        if report.skipped.is_empty() {
            self.notices.info(summary);
        } else {
            self.notices.error(summary);
        }
    }

    /// Queues every captioned Library item's sidecar (so turning sidecars on also writes the
    /// edits made while they were off). The writer, off the UI thread, leaves alone the files
    /// that already hold their caption.
    pub fn queue_all_sidecars(&mut self) {
        for item in &self.state.library {
            if !item.caption.trim().is_empty() {
                self.sidecars.insert(item.path.clone());
            }
        }
    }

    /// True while a batch of caption sidecars is being written.
    pub fn writing_sidecars(&self) -> bool {
        self.sidecar_writer.is_some()
    }

    /// Reports a finished sidecar batch; with `wait`, waits for a running one first.
    fn collect_sidecar_writer(&mut self, wait: bool) {
        let state = match self.sidecar_writer.take() {
            None => return,
            Some(job) if wait => job.wait(),
            Some(mut job) => match job.poll() {
                JobState::Running(_) => {
                    self.sidecar_writer = Some(job);
                    return;
                }
                state => state,
            },
        };
        match state {
            JobState::Finished(Ok(report)) => self.report_sidecars(&report),
            JobState::Finished(Err(error)) => self
                .notices
                .error(format!("Cannot write caption sidecars: {error:#}")),
            JobState::Running(_) | JobState::Cancelled | JobState::Collected => {}
        }
    }

    fn report_sidecars(&mut self, report: &library::SidecarReport) {
        // A read-only folder of hundreds of images is one message, not hundreds.
        match report.problems.as_slice() {
            [] => {}
            [problem] => self.notices.error(problem.clone()),
            problems => {
                let mut message = format!("{} caption sidecars were not written:", problems.len());
                for problem in problems.iter().take(5) {
                    message.push_str(&format!("\n  {problem}"));
                }
                if problems.len() > 5 {
                    message.push_str(&format!("\n  … and {} more", problems.len() - 5));
                }
                self.notices.error(message);
            }
        }
        // One edit's write needs no word; a batch (sidecars just turned on) does.
        if report.written > 1 {
            self.notices.info(format!(
                "Wrote {} caption(s) to NAME.txt sidecars",
                report.written
            ));
        }
    }

    /// Writes the queued sidecars: in the background, or (`now`: the window is closing) here
    /// and at once. A batch waits while the previous one is still being written.
    fn write_queued_sidecars(&mut self, now: bool) {
        self.collect_sidecar_writer(now);
        if self.sidecar_writer.is_some() || self.sidecars.is_empty() {
            return;
        }
        let queued = std::mem::take(&mut self.sidecars);
        let captions: HashMap<&Path, &str> = self
            .state
            .library
            .iter()
            .map(|item| (item.path.as_path(), item.caption.as_str()))
            .collect();
        let batch: Vec<(PathBuf, String)> = queued
            .into_iter()
            .filter_map(|path| {
                let caption = captions.get(path.as_path())?.to_string();
                Some((path, caption))
            })
            .collect();
        if now {
            let report = library::write_sidecars(&batch);
            self.report_sidecars(&report);
        } else {
            self.sidecar_writer = Some(Job::spawn(
                "write caption sidecars",
                self.notify.clone(),
                move |_, _| Ok(library::write_sidecars(&batch)),
            ));
        }
    }

    /// Records a caption edit (sidecar write, Compare recompute).
    pub fn caption_edited(&mut self, path: &Path) {
        if self.state.settings.save_sidecars {
            self.sidecars.insert(path.to_owned());
        }
        self.caption_changed = true;
    }
}

/// True when every whitespace-separated word of `filter` occurs, ignoring case, in one of
/// `fields` (a filter of no words matches everything): the Library's and the gallery's filter.
pub fn words_match(filter: &str, fields: &[&str]) -> bool {
    let filter = filter.to_lowercase();
    let mut words = filter.split_whitespace().peekable();
    // No words: nothing to lowercase (an unfiltered gallery of thousands asks every frame).
    if words.peek().is_none() {
        return true;
    }
    let fields: Vec<String> = fields.iter().map(|field| field.to_lowercase()).collect();
    words.all(|word| fields.iter().any(|field| field.contains(word)))
}

/// The last component of `path`, for labels ("" for a path that has none).
pub fn file_name_of(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Shows "loading" with a spinner, or the load failure with Retry; returns the engine once it is
/// ready. `what` names the models in messages ("models", "the generator").
pub fn engine_status<T>(
    ui: &mut egui::Ui,
    status: engines::EngineStatus<T>,
    loading: &str,
    failed: &str,
    engines: &mut Engines,
    switch_to: &mut Option<Pane>,
) -> Option<Arc<T>> {
    match status {
        engines::EngineStatus::Loading(progress) => {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label(loading_label(loading, progress.as_ref()));
            });
            None
        }
        engines::EngineStatus::Failed(message) => {
            ui.colored_label(ui.visuals().error_fg_color, format!("{failed}: {message}"));
            ui.horizontal(|ui| {
                // Only what failed loads again: the models that work stay, with their results.
                if ui.button("Retry").clicked() {
                    engines.retry_failed();
                }
                if ui
                    .button("Model files in Settings…")
                    .on_hover_text("Choose other model files, or go back to the shipped ones")
                    .clicked()
                {
                    *switch_to = Some(Pane::Settings);
                }
            });
            None
        }
        engines::EngineStatus::Ready(engine) => Some(engine),
    }
}

/// "loading models… (2 of 3: the Baseline)": which model a load is on, when it has said.
fn loading_label(loading: &str, progress: Option<&crate::jobs::Progress>) -> String {
    match progress {
        Some(progress) if progress.total > 0 => format!(
            "{loading} ({} of {}: {})",
            progress.done + 1,
            progress.total,
            progress.message
        ),
        Some(progress) => format!("{loading} ({})", progress.message),
        None => loading.to_owned(),
    }
}

/// The device part of a device description; the rest (skipped adapters) is shown in Settings.
pub fn device_label(description: &str) -> String {
    let device = description.split(';').next().unwrap_or_default();
    format!("on {device}")
}

/// The answer of a dialog from [`pick_in_background`] once there is one: the paths picked (none:
/// cancelled). A dialog thread that ended without answering (it could not start, or failed)
/// counts as cancelled and says so, or the guard against a second dialog would hold for good.
pub fn dialog_answer(
    receiver: &Receiver<Vec<PathBuf>>,
    notices: &mut Notices,
) -> Option<Vec<PathBuf>> {
    match receiver.try_recv() {
        Ok(picked) => Some(picked),
        Err(std::sync::mpsc::TryRecvError::Empty) => None,
        Err(std::sync::mpsc::TryRecvError::Disconnected) => {
            notices.error(NO_FILE_DIALOG);
            Some(Vec::new())
        }
    }
}

/// What the panes say when no file dialog could be shown.
pub const NO_FILE_DIALOG: &str = "No file dialog could be shown. On Linux one needs \
     xdg-desktop-portal with a file-chooser backend (xdg-desktop-portal-gtk, -kde or -gnome); \
     meanwhile, type or paste paths instead: images in the Library's path field (or drop them \
     on the window, except under Wayland), a model's in Settings and the training folder's in \
     Fine-tune.";

/// A dialog that comes back empty sooner than this was never shown: nobody opens, reads and
/// cancels a file dialog in a quarter of a second, while a missing portal answers at once.
const DIALOG_NEVER_SHOWN_WITHIN: Duration = Duration::from_millis(250);

/// Runs a (blocking) native file dialog on its own thread; the answer arrives on the receiver.
/// A dialog that was never shown ends the channel without an answer, which
/// [`dialog_answer`] reports as [`NO_FILE_DIALOG`] instead of a silent cancel.
pub fn pick_in_background(
    notify: Arc<dyn Fn() + Send + Sync>,
    dialog: impl FnOnce() -> Vec<PathBuf> + Send + 'static,
) -> Receiver<Vec<PathBuf>> {
    let (sender, receiver) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("file dialog".into())
        .spawn(move || {
            let opened = Instant::now();
            let picked = dialog();
            if picked.is_empty() && opened.elapsed() < DIALOG_NEVER_SHOWN_WITHIN {
                tracing::warn!(
                    "the file dialog returned nothing after {:?}: no dialog was shown",
                    opened.elapsed()
                );
                drop(sender);
            } else {
                let _ = sender.send(picked);
            }
            notify();
        });
    if let Err(error) = spawned {
        tracing::error!("cannot open a file dialog: {error}");
    }
    receiver
}

/// Screenshot-and-quit for the smoke test and the README's pictures.
struct Automation {
    screenshot: Option<PathBuf>,
    quit_after: Option<f64>,
    started: Instant,
    requested: bool,
    saved: Arc<std::sync::Mutex<Option<Result<(), String>>>>,
}

pub struct StudioApp {
    pub pane: Pane,
    pub app: AppContext,
    pub library: library::LibraryPane,
    pub compare: compare::ComparePane,
    pub generate: generate::GeneratePane,
    pub finetune: finetune::FineTunePane,
    pub settings: settings::SettingsPane,
    shipped: ShippedModels,
    saver: StateSaver,
    /// Held for the window's life: no other window saves state into this data folder.
    _data_dir_claim: Option<std::fs::File>,
    token_counter_job: Option<Job<CaptionTokenCounter>>,
    automation: Option<Automation>,
    sidecars_written: Instant,
    closing: Closing,
    /// When "Stop and quit" was chosen: after a while the dialog offers to quit at once.
    stopping_since: Option<Instant>,
    /// "Quit now" was pressed: the exit does not wait for the work to stop.
    quit_without_waiting: bool,
}

/// Closing the window while work runs that closing would lose or interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Closing {
    /// No close asked for, or nothing at risk.
    #[default]
    No,
    /// Asking whether to stop the work and quit.
    Asking,
    /// Told to quit: the work is being stopped (a fine-tune saves its state); the window
    /// closes once it has.
    Stopping,
    /// Closes on the next request, whatever runs (the automation's deadline).
    Now,
}

impl StudioApp {
    pub fn new(cc: &eframe::CreationContext<'_>, options: StartOptions) -> Self {
        let ctx = cc.egui_ctx.clone();
        let notify: Arc<dyn Fn() + Send + Sync> = Arc::new(move || ctx.request_repaint());
        let mut notices = Notices::default();
        // Claimed before loading: only the window that owns the folder may set a damaged
        // state file aside.
        let claim = state::claim_data_dir(&options.data_dir);
        let loaded = match claim {
            Ok(_) => state::load(&options.data_dir),
            Err(_) => state::peek(&options.data_dir),
        };
        if let Some(problem) = loaded.problem {
            notices.error(problem);
        }
        let mut state = loaded.state;
        let (data_dir_claim, may_save) = match claim {
            Ok(claim) => (claim, loaded.may_save),
            Err(problem) => {
                notices.error(problem);
                (None, false)
            }
        };
        let saver = StateSaver::new(options.data_dir.clone(), &state, may_save);
        let key = engine_key(&state, &options.shipped);
        let engines = Engines::new(key, notify.clone());
        let text_encoder_dir = options.shipped.text_encoder_dir.clone();
        let token_counter_job = Some(Job::spawn("tokenizer", notify.clone(), move |_, _| {
            Ok(CaptionTokenCounter::load(
                &text_encoder_dir,
                crate::model::text_encoder::DEFAULT_MAX_TEXT_TOKENS,
            )?)
        }));
        // Folders are scanned in the background, once the window is up (a big one takes a
        // while); files, read at once, are in the Library from the first frame.
        let (open_folders, open_files): (Vec<PathBuf>, Vec<PathBuf>) =
            options.open.iter().cloned().partition(|path| path.is_dir());
        if !open_files.is_empty() {
            let report = library::import_paths(&mut state.library, &open_files);
            for (path, reason) in &report.skipped {
                notices.error(format!("{}: {reason}", path.display()));
            }
            if let Some(first) = options.open.first().filter(|path| !path.is_dir()) {
                let first = std::path::absolute(first).unwrap_or_else(|_| first.clone());
                if let Some(item) = state.library.iter_mut().find(|i| i.path == first) {
                    if let Some(caption) = &options.caption {
                        item.caption = caption.clone();
                    }
                    state.selected = Some(first);
                }
            }
        }
        let wgpu_views = wipe::install(cc.wgpu_render_state.as_ref());
        let automation =
            (options.screenshot.is_some() || options.quit_after.is_some()).then(|| Automation {
                screenshot: options.screenshot.clone(),
                quit_after: options.quit_after,
                started: Instant::now(),
                requested: false,
                saved: Arc::default(),
            });
        let mut app = Self {
            pane: options
                .pane
                .unwrap_or(if state.library.is_empty() && open_folders.is_empty() {
                    Pane::Library
                } else {
                    Pane::Compare
                }),
            app: AppContext {
                thumbnails: images::Thumbnails::new(notify.clone()),
                state,
                engines,
                notices,
                token_counter: library::TokenCounter::Loading,
                data_dir: options.data_dir,
                notify,
                switch_to: None,
                wgpu_views,
                frame_times: FrameTimes::default(),
                sidecars: HashSet::new(),
                sidecar_writer: None,
                library_filter: Default::default(),
                imports: Vec::new(),
                caption_changed: false,
            },
            library: Default::default(),
            compare: Default::default(),
            generate: Default::default(),
            finetune: Default::default(),
            settings: Default::default(),
            shipped: options.shipped,
            saver,
            _data_dir_claim: data_dir_claim,
            token_counter_job,
            automation,
            sidecars_written: Instant::now(),
            closing: Closing::No,
            stopping_since: None,
            quit_without_waiting: false,
        };
        app.finetune.form = app.app.state.fine_tune.clone();
        app.app.import(&open_folders);
        app
    }

    /// What closing the window now would lose or interrupt, one line each (empty: nothing).
    pub fn work_at_risk(&self) -> Vec<&'static str> {
        let mut work = self.running_work();
        if self.saver.failing() {
            work.push(
                "The app state (Library, captions, settings) cannot be saved (see the error): \
                 quitting loses the changes since the last save.",
            );
        }
        work
    }

    /// The background work that closing the window would interrupt, one line each.
    fn running_work(&self) -> Vec<&'static str> {
        let mut work = Vec::new();
        if self.generate.generating() {
            work.push(
                "Generating: the images are sampled together and saved when all are done, so \
                 quitting now loses this batch (earlier batches are saved).",
            );
        }
        if self.generate.saving() {
            work.push("Saving a copy of an image (Save as…): quitting now loses the copy.");
        }
        if self.finetune.busy() {
            work.push(
                "Fine-tuning: the run stops and saves its state (once past copying its images); \
                 Resume continues it.",
            );
        }
        if self.compare.saving() {
            work.push("Saving Compare's images: they are written first.");
        }
        work
    }

    /// Where a request to close the window stands.
    pub fn closing(&self) -> Closing {
        self.closing
    }

    /// Handles the window's close button: with work at risk, the close is put off and a dialog
    /// asks; once told to quit, the work is stopped and the window closes when it has.
    fn guard_close(&mut self, ctx: &egui::Context) {
        let requested = ctx.input(|i| i.viewport().close_requested());
        let at_risk = self.work_at_risk();
        match self.closing {
            Closing::Now => return,
            Closing::No if !requested || at_risk.is_empty() => return,
            Closing::No => self.closing = Closing::Asking,
            // The work ended by itself (or was stopped): close, as was asked. Once told to
            // quit, a state that cannot be saved no longer holds the window.
            Closing::Asking | Closing::Stopping
                if at_risk.is_empty()
                    || (self.closing == Closing::Stopping && self.running_work().is_empty()) =>
            {
                self.closing = Closing::Now;
                ctx.send_viewport_cmd(egui::ViewportCommand::Close);
                return;
            }
            Closing::Asking | Closing::Stopping => {}
        }
        if requested {
            ctx.send_viewport_cmd(egui::ViewportCommand::CancelClose);
        }
        let stopping = self.closing == Closing::Stopping;
        // Work slow to stop (a long checkpoint write) must not hold the window for good.
        let offer_quit_now = self
            .stopping_since
            .is_some_and(|since| since.elapsed() >= Duration::from_secs(30));
        let mut quit_now = false;
        let mut choice = None;
        let nothing_running = self.running_work().is_empty();
        egui::Modal::new(egui::Id::unique("close-while-busy")).show(ctx, |ui| {
            ui.set_max_width(420.0);
            if stopping {
                ui.horizontal(|ui| {
                    ui.spinner();
                    ui.strong("Stopping the work before the window closes…");
                });
                if offer_quit_now && ui.button("Quit now").clicked() {
                    quit_now = true;
                }
            } else if nothing_running {
                ui.strong("Changes are not saved");
            } else {
                ui.strong("Work is still running");
            }
            for line in &at_risk {
                ui.label(*line);
            }
            if !stopping {
                ui.horizontal(|ui| {
                    if ui.button("Stop and quit").clicked() {
                        choice = Some(true);
                    }
                    if ui.button("Keep working").clicked() {
                        choice = Some(false);
                    }
                });
            }
        });
        if let Some(quit) = choice {
            self.answer_close(quit);
            ctx.request_repaint();
        }
        if quit_now {
            self.closing = Closing::Now;
            self.quit_without_waiting = true;
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
        } else if stopping {
            // Keeps frames coming while waiting, so the close follows the work's end.
            ctx.request_repaint_after(Duration::from_millis(250));
        }
    }

    /// Answers the "Work is still running" dialog (what its buttons do; also used by tests).
    pub fn answer_close(&mut self, quit: bool) {
        if self.closing != Closing::Asking {
            return;
        }
        if quit {
            self.closing = Closing::Stopping;
            self.stopping_since = Some(Instant::now());
            self.generate.cancel();
            self.finetune.cancel();
        } else {
            self.closing = Closing::No;
        }
    }

    /// True while any background work runs (tests wait on this).
    pub fn busy(&self) -> bool {
        self.app.engines.loading()
            || self.compare.busy()
            || self.generate.busy()
            || self.finetune.busy()
            || self.token_counter_job.is_some()
            || !self.app.imports.is_empty()
            || self.app.writing_sidecars()
    }

    fn background(&mut self, ctx: &egui::Context) {
        self.app.thumbnails.receive(ctx);
        if let Some(job) = &mut self.token_counter_job {
            match job.poll() {
                JobState::Running(_) => {}
                JobState::Finished(Ok(counter)) => {
                    self.app.token_counter =
                        library::TokenCounter::Ready(std::sync::Arc::new(counter));
                    self.token_counter_job = None;
                }
                JobState::Finished(Err(error)) => {
                    self.app
                        .notices
                        .error(format!("Cannot count caption tokens: {error:#}"));
                    self.app.token_counter = library::TokenCounter::Failed;
                    self.token_counter_job = None;
                }
                JobState::Cancelled | JobState::Collected => self.token_counter_job = None,
            }
        }
        // File dialogs are answered whichever pane is shown (a model picked in Settings
        // first, since settings decide which models are loaded).
        self.settings.poll_dialog(&mut self.app);
        self.library.poll_dialog(&mut self.app);
        self.generate.poll_dialog(&mut self.app);
        self.finetune.poll_dialog(&mut self.app);
        // Settings decide which models are loaded.
        self.app
            .engines
            .set_key(engine_key(&self.app.state, &self.shipped));
        // Jobs finish whichever pane is shown.
        self.app.poll_imports();
        self.app.engines.poll();
        self.compare.poll(ctx, &mut self.app);
        self.generate.poll(&mut self.app);
        self.finetune.poll(&mut self.app);
        let dropped: Vec<PathBuf> = ctx.input(|i| {
            i.raw
                .dropped_files
                .iter()
                .map(|file| file.path().to_owned())
                .collect()
        });
        if !dropped.is_empty() {
            self.take_dropped(dropped);
        }
        // The pane edits its own copy of the form; the state saves it (once it changed).
        if self.app.state.fine_tune != self.finetune.form {
            self.app.state.fine_tune = self.finetune.form.clone();
        }
        self.persist(false);
    }

    /// Files and folders dropped on the window: pictures and folders go to the Library, from
    /// any pane; one folder dropped on Fine-tune is the folder to train on; model files are
    /// pointed to Settings rather than reported as pictures that could not be read.
    fn take_dropped(&mut self, dropped: Vec<PathBuf>) {
        if self.pane == Pane::FineTune && dropped.len() == 1 && dropped[0].is_dir() {
            let folder = dropped[0].display().to_string();
            self.app.notices.info(format!(
                "Fine-tuning will train on the captioned images in {folder}."
            ));
            self.finetune.form.folder = folder;
            self.finetune.form.use_library = false;
            return;
        }
        let (models, pictures): (Vec<PathBuf>, Vec<PathBuf>) =
            dropped.into_iter().partition(|path| {
                path.extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
            });
        if !models.is_empty() {
            let names: Vec<String> = models.iter().map(|p| file_name_of(p)).collect();
            let what = if models.len() == 1 {
                "is a model file"
            } else {
                "are model files"
            };
            self.app.notices.info(format!(
                "{} {what}: Settings chooses the models the app uses (the Library takes \
                 pictures).",
                names.join(", ")
            ));
            if pictures.is_empty() {
                self.pane = Pane::Settings;
            }
        }
        if !pictures.is_empty() {
            self.app.import(&pictures);
            self.pane = Pane::Library;
        }
    }

    /// Saves the state (if changed) and pending caption sidecars.
    fn persist(&mut self, force: bool) {
        let app = &mut self.app;
        if let Err(error) = self.saver.tick(&app.state, force) {
            app.notices
                .error(format!("Cannot save the app state: {error:#}"));
        }
        // Sidecars are written once a second at most, not on every keystroke.
        let sidecars_due = force || self.sidecars_written.elapsed() >= Duration::from_secs(1);
        if !sidecars_due {
            app.collect_sidecar_writer(false);
            return;
        }
        self.sidecars_written = Instant::now();
        app.write_queued_sidecars(force);
    }

    fn automate(&mut self, ctx: &egui::Context) {
        let settled = !self.busy() && self.pane_settled();
        let Some(automation) = &mut self.automation else {
            return;
        };
        let elapsed = automation.started.elapsed().as_secs_f64();
        let deadline = automation.quit_after.unwrap_or(f64::INFINITY);
        if let Some(result) = automation
            .saved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            if let Err(error) = result {
                eprintln!("error: screenshot: {error}");
            }
            self.closing = Closing::Now;
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
            return;
        }
        if automation.requested {
            ctx.request_repaint();
            return;
        }
        match &automation.screenshot {
            Some(path) if settled || elapsed >= deadline => {
                automation.requested = true;
                let (path, saved) = (path.clone(), automation.saved.clone());
                let notify = self.app.notify.clone();
                ctx.request_screenshot(move |image: Arc<egui::ColorImage>| {
                    let result = save_screenshot(&image, &path);
                    *saved.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
                    notify();
                });
                ctx.request_repaint();
            }
            None if elapsed >= deadline => {
                self.closing = Closing::Now;
                ctx.send_viewport_cmd(egui::ViewportCommand::Close);
            }
            _ => ctx.request_repaint_after(Duration::from_millis(100)),
        }
    }

    /// The current pane shows finished results (the Compare pane has its reconstructions,
    /// Settings its adapter list).
    fn pane_settled(&self) -> bool {
        match self.pane {
            Pane::Compare => self.compare.settled(&self.app),
            Pane::Settings => self.settings.settled(),
            _ => true,
        }
    }

    /// One frame of the whole app (`App::ui`, also driven by tests).
    pub fn frame(&mut self, ui: &mut egui::Ui) {
        let started = Instant::now();
        let ctx = ui.ctx().clone();
        self.background(&ctx);

        egui::Panel::top("tabs").show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.strong("TexTok Studio");
                ui.separator();
                for (pane, key) in Pane::ALL.into_iter().zip(PANE_KEYS) {
                    let shortcut = egui::KeyboardShortcut::new(egui::Modifiers::COMMAND, key);
                    if ui.input_mut(|i| i.consume_shortcut(&shortcut)) {
                        self.pane = pane;
                    }
                    ui.selectable_value(&mut self.pane, pane, pane.label())
                        .on_hover_text(ui.ctx().format_shortcut(&shortcut));
                }
            });
        });
        egui::Panel::bottom("notices").show(ui, |ui| {
            self.app.notices.ui(ui);
            if self.app.notices.all().next().is_none() {
                ui.weak("Drop images anywhere to add them to the Library.");
            }
        });
        let pane = self.pane;
        egui::CentralPanel::default().show(ui, |ui| {
            let app = &mut self.app;
            match pane {
                Pane::Library => self.library.ui(ui, app),
                Pane::Compare => self.compare.ui(ui, app),
                Pane::Generate => self.generate.ui(ui, app),
                Pane::FineTune => self.finetune.ui(ui, app),
                Pane::Settings => self.settings.ui(ui, app),
            }
        });
        if std::mem::take(&mut self.app.caption_changed) {
            self.compare.caption_edited();
        }
        if let Some(pane) = self.app.switch_to.take() {
            self.pane = pane;
        }

        if ctx.input(|i| !i.raw.hovered_files.is_empty()) {
            let painter = ctx.layer_painter(egui::LayerId::new(
                egui::Order::Foreground,
                egui::Id::unique("drop-overlay"),
            ));
            let rect = ctx.content_rect();
            painter.rect_filled(rect, 0.0, egui::Color32::from_black_alpha(160));
            painter.text(
                rect.center(),
                egui::Align2::CENTER_CENTER,
                if self.pane == Pane::FineTune {
                    "Drop a folder to train on it (pictures go to the Library)"
                } else {
                    "Drop to add to the Library"
                },
                egui::FontId::proportional(28.0),
                egui::Color32::WHITE,
            );
        }
        self.automate(&ctx);
        self.guard_close(&ctx);
        if self.busy() {
            // Progress arrives through request_repaint; this only keeps spinners turning.
            ctx.request_repaint_after(Duration::from_millis(250));
        } else if self.saver.pending(&self.app.state) || !self.app.sidecars.is_empty() {
            // Saves wait a second between writes; without another frame a change made in the
            // last one (the gallery entry of the image that just finished) would wait for the
            // next mouse move.
            ctx.request_repaint_after(Duration::from_millis(500));
        }
        self.app.frame_times.record(started.elapsed().as_secs_f64());
    }
}

fn engine_key(state: &PersistedState, shipped: &ShippedModels) -> EngineKey {
    EngineKey {
        device: state.settings.device,
        shipped: shipped.clone(),
        textok: state.settings.textok.clone(),
        baseline: state.settings.baseline.clone(),
        dit: state.settings.dit.clone(),
        generation_decoder: state.settings.generation_decoder.clone(),
    }
}

fn save_screenshot(image: &egui::ColorImage, path: &Path) -> Result<(), String> {
    let [width, height] = image.size;
    let rgba: Vec<u8> = image.pixels.iter().flat_map(|c| c.to_array()).collect();
    let buffer = image::RgbaImage::from_raw(width as u32, height as u32, rgba)
        .ok_or("screenshot has the wrong size")?;
    let mut bytes = Vec::new();
    buffer
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .map_err(|e| e.to_string())?;
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    crate::files::write_atomic(path, &bytes).map_err(|e| format!("{}: {e}", path.display()))
}

impl eframe::App for StudioApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.frame(ui);
    }

    fn on_exit(&mut self) {
        self.persist(true);
        // A running fine-tune saves its state when cancelled, so it can be resumed next time;
        // after "Quit now" it is not waited for (its checkpoints are written atomically, so
        // the last complete one is what a resume finds).
        let wait = if self.quit_without_waiting {
            Duration::ZERO
        } else {
            Duration::from_secs(60)
        };
        self.finetune.cancel_and_wait(wait);
    }
}

/// The window/taskbar icon, `assets/icons/textok-studio.png`, built into the binary.
pub fn app_icon() -> Result<egui::IconData, String> {
    eframe::icon_data::from_png_bytes(include_bytes!("../../assets/icons/textok-studio.png"))
        .map_err(|e| e.to_string())
}

/// Starts the desktop app and blocks until its window closes.
pub fn run(options: StartOptions) -> anyhow::Result<()> {
    std::fs::create_dir_all(&options.data_dir).map_err(|e| {
        anyhow::anyhow!(
            "{}: cannot create the data folder: {e}",
            options.data_dir.display()
        )
    })?;
    let mut viewport = egui::ViewportBuilder::default()
        .with_title("TexTok Studio")
        .with_inner_size([1280.0, 800.0])
        .with_min_inner_size([720.0, 480.0])
        .with_drag_and_drop(true);
    // The icon is our own asset (drawn by assets/icons/make_icon.py); a window without it still works.
    match app_icon() {
        Ok(icon) => viewport = viewport.with_icon(icon),
        Err(error) => tracing::warn!("app icon not loaded: {error}"),
    }
    let native = eframe::NativeOptions {
        viewport,
        renderer: eframe::Renderer::Wgpu,
        ..Default::default()
    };
    eframe::run_native(
        "TexTok Studio",
        native,
        Box::new(move |cc| Ok(Box::new(StudioApp::new(cc, options)))),
    )
    .map_err(|e| anyhow::anyhow!("the window could not be opened: {e}"))
}

#[cfg(test)]
mod tests {
    use super::loading_label;
    use crate::jobs::Progress;

    #[test]
    fn a_file_dialog_that_died_counts_as_cancelled_and_says_so() {
        use super::{Notices, dialog_answer};
        let mut notices = Notices::default();
        let (sender, receiver) = std::sync::mpsc::channel();
        assert_eq!(dialog_answer(&receiver, &mut notices), None, "still open");
        sender.send(vec!["a.png".into()]).unwrap();
        assert_eq!(
            dialog_answer(&receiver, &mut notices),
            Some(vec!["a.png".into()])
        );
        assert_eq!(notices.errors().count(), 0);
        drop(sender);
        assert_eq!(dialog_answer(&receiver, &mut notices), Some(Vec::new()));
        assert_eq!(notices.errors().count(), 1);
    }

    #[test]
    fn a_dialog_that_comes_back_empty_at_once_was_never_shown_and_says_so() {
        use super::{DIALOG_NEVER_SHOWN_WITHIN, NO_FILE_DIALOG, Notices, dialog_answer};
        let answer = |dialog: fn() -> Vec<std::path::PathBuf>| {
            let receiver = super::pick_in_background(std::sync::Arc::new(|| {}), dialog);
            let mut notices = Notices::default();
            loop {
                if let Some(picked) = dialog_answer(&receiver, &mut notices) {
                    let errors: Vec<String> = notices.errors().map(str::to_owned).collect();
                    return (picked, errors);
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        };
        // No portal: nothing, at once.
        let (picked, errors) = answer(Vec::new);
        assert!(picked.is_empty());
        assert_eq!(errors, [NO_FILE_DIALOG]);
        // A person who cancels takes longer: a quiet cancel.
        let (picked, errors) = answer(|| {
            std::thread::sleep(DIALOG_NEVER_SHOWN_WITHIN * 2);
            Vec::new()
        });
        assert!(picked.is_empty() && errors.is_empty(), "{errors:?}");
        // A quick pick is still a pick.
        let (picked, errors) = answer(|| vec!["a.png".into()]);
        assert_eq!((picked, errors.len()), (vec!["a.png".into()], 0));
    }

    #[test]
    fn the_loading_label_names_the_model_being_loaded() {
        let step = |done, total, message: &str| Progress {
            done,
            total,
            message: message.into(),
        };
        assert_eq!(loading_label("loading models…", None), "loading models…");
        assert_eq!(
            loading_label("loading models…", Some(&step(1, 3, "the Baseline"))),
            "loading models… (2 of 3: the Baseline)"
        );
        assert_eq!(
            loading_label("loading models…", Some(&step(0, 0, "opening the device"))),
            "loading models… (opening the device)"
        );
    }
}
