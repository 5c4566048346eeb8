//! Fine-tune pane: continue training the TexTok tokenizer or the DiT on the user's own captioned
//! pictures, with the CLI's training code. Runs live in `<data>/finetune/<name>/` (checkpoints are
//! written atomically there and survive restarts); "Use this model" switches the app to a run's
//! EMA weights, "Revert" goes back to the shipped models.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use eframe::egui;
use egui_plot::{Line, Plot};
use image::Rgb32FImage;

use super::AppContext;
use crate::jobs::{CancelToken, Job, JobState};
use crate::train::dit::{DitTrainConfig, train_dit};
use crate::train::tokenizer::{
    EvalReport, StepReport, TokenizerTrainConfig, TrainObserver, TrainOutcome, TrainingModels,
    train_tokenizer,
};

/// Sub-folder of the data folder holding fine-tuning runs.
pub const FINETUNE_DIR: &str = "finetune";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Target {
    Tokenizer,
    /// The TexTok detokenizer Generate decodes with, trained on the DiT's tokens: its encoder
    /// stays frozen, so the DiT's tokens stay valid, and Compare keeps its TexTok.
    GenerationDecoder,
    Dit,
}

impl Target {
    fn label(self) -> &'static str {
        match self {
            Target::Tokenizer => "TexTok tokenizer",
            Target::GenerationDecoder => "TexTok decoder for generation",
            Target::Dit => "DiT generator",
        }
    }
    fn prefix(self) -> &'static str {
        match self {
            Target::Tokenizer => "textok",
            Target::GenerationDecoder => "decoder",
            Target::Dit => "dit",
        }
    }
}

/// The form; saved with the app state (`PersistedState::fine_tune`), so it survives restarts.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct FineTuneForm {
    pub target: Target,
    /// Train on the Library's captioned images (else on `folder`).
    pub use_library: bool,
    pub folder: String,
    pub steps: usize,
    pub learning_rate: f64,
    pub batch: usize,
    /// Stop after this many minutes, the schedule shortened to fit (0: no limit).
    pub time_limit_minutes: f64,
    /// Tokenizer runs: train the detokenizer alone, so the tokens (and the generator trained
    /// on them) stay valid.
    pub keep_tokens: bool,
    /// DiT runs: also train on each image's mirror image (`DitTrainConfig::mirror`): twice the
    /// pictures for a few images of one's own.
    pub mirror_images: bool,
    /// The run's seed (data order, initial noise, caption dropout): the same seed, data and
    /// settings train the same model, as with the command line's `--seed`.
    pub seed: u64,
}

impl FineTuneForm {
    /// Limits of the form's number fields (the widgets keep a typed value inside them; a saved
    /// state edited by hand is brought inside them when loaded, by [`Self::clamped`]).
    pub const MAX_STEPS: usize = 1_000_000;
    pub const LEARNING_RATES: std::ops::RangeInclusive<f64> = 1e-7..=1e-2;
    pub const MAX_BATCH: usize = 256;
    pub const MAX_MINUTES: f64 = 10_000.0;

    /// The form with every number inside the limits the widgets allow (a NaN becomes the
    /// default).
    pub fn clamped(mut self) -> Self {
        let defaults = Self::default();
        self.steps = self.steps.clamp(1, Self::MAX_STEPS);
        self.batch = self.batch.clamp(1, Self::MAX_BATCH);
        self.learning_rate = if self.learning_rate.is_nan() {
            defaults.learning_rate
        } else {
            self.learning_rate
                .clamp(*Self::LEARNING_RATES.start(), *Self::LEARNING_RATES.end())
        };
        self.time_limit_minutes = if self.time_limit_minutes.is_nan() {
            defaults.time_limit_minutes
        } else {
            self.time_limit_minutes.clamp(0.0, Self::MAX_MINUTES)
        };
        self
    }

    /// The trainers' time limit: `None` for 0 (or anything not a positive number up to a year).
    pub fn time_limit(&self) -> Option<Duration> {
        crate::train::TimeLimit::duration_from_minutes(self.time_limit_minutes)
    }
}

impl Default for FineTuneForm {
    fn default() -> Self {
        Self {
            target: Target::Tokenizer,
            use_library: true,
            folder: String::new(),
            steps: 200,
            learning_rate: 5e-5,
            batch: 4,
            time_limit_minutes: 0.0,
            keep_tokens: true,
            mirror_images: false,
            seed: 0,
        }
    }
}

/// What the training thread reports, read by the UI each frame.
#[derive(Default)]
pub struct Live {
    pub losses: Vec<[f64; 2]>,
    pub last_step: Option<StepReport>,
    pub evals: Vec<EvalReport>,
    pub messages: Vec<String>,
    /// Bumped when `evals` gets new sample images.
    pub samples_version: u64,
}

struct Observer {
    live: Arc<Mutex<Live>>,
    notify: Arc<dyn Fn() + Send + Sync>,
}

impl Observer {
    fn with(&self, f: impl FnOnce(&mut Live)) {
        f(&mut self.live.lock().unwrap_or_else(|p| p.into_inner()));
        (self.notify)();
    }
}

impl TrainObserver for Observer {
    fn on_step(&self, report: &StepReport) {
        self.with(|live| {
            live.losses.push([report.step as f64, report.loss]);
            live.last_step = Some(report.clone());
        });
    }
    fn on_eval(&self, report: &EvalReport) {
        self.with(|live| {
            live.evals.push(report.clone());
            live.samples_version += 1;
        });
    }
    fn on_message(&self, message: &str) {
        self.with(|live| live.messages.push(message.to_owned()));
    }
}

/// A run folder found in the data folder.
#[derive(Debug, Clone, PartialEq)]
pub struct RunInfo {
    pub dir: PathBuf,
    pub target: Target,
    /// The schedule's length (the saved one: a time limit shortens the config's).
    pub steps: usize,
    /// The step of the saved training state; `None` before the first save.
    pub saved_step: Option<usize>,
    /// Saved at its last step: nothing left to resume.
    pub finished: bool,
    /// Why its training state could not be read (a damaged file): shown, and no Resume.
    pub state_error: Option<String>,
    pub resumable: bool,
    pub has_weights: bool,
    /// The tokenizer a DiT run trains on (None for tokenizer runs).
    pub tokenizer: Option<PathBuf>,
    /// The DiT a generation-decoder run samples every batch with (None for other runs).
    pub regenerated_by: Option<PathBuf>,
}

impl RunInfo {
    /// "step 37 of 200", "finished, 200 steps" or "200 steps, nothing saved yet".
    pub fn progress_label(&self) -> String {
        if let Some(error) = &self.state_error {
            return format!(
                "{} steps, its training state cannot be read: {error}",
                self.steps
            );
        }
        match self.saved_step {
            Some(step) if self.finished => format!("finished, {step} steps"),
            Some(step) => format!("step {step} of {}", self.steps),
            None => format!("{} steps, nothing saved yet", self.steps),
        }
    }
}

/// Names a run folder takes while it is deleted.
const DELETING_PREFIX: &str = ".deleting-";

/// Removes a run folder without holding up the window (a run may hold gigabytes of copied
/// images): renamed at once to a hidden name, so it leaves the run list and its name is free,
/// then deleted on a thread of its own. One the app quits in the middle of is finished by
/// [`remove_leftover_deletions`] the next time. The decode cache of the images copied into
/// the run (keyed by that folder's path, so no other run can use it, and not found again once
/// the folder is renamed) is removed first: unlinking one file is quick.
fn remove_run_folder(dir: &Path) -> std::io::Result<()> {
    for cache in crate::train::tokenizer::cache_files(&dir.join("data")) {
        if let Err(error) = std::fs::remove_file(&cache) {
            tracing::warn!(
                "{}: cannot remove the decode cache: {error}",
                cache.display()
            );
        }
    }
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let stamp = crate::files::unique_stamp();
    let doomed = dir.with_file_name(format!("{DELETING_PREFIX}{stamp}-{name}"));
    std::fs::rename(dir, &doomed)?;
    remove_in_background(doomed);
    Ok(())
}

/// Removes a run of the app's runs folder that ended without a training state (only a new one
/// can: resuming needs it), cancelled or failed before its first checkpoint while the Library's
/// images were copied, the data decoded or the latents encoded. Nothing can resume it, and
/// listed as "nothing saved yet" it would only hold on to its copied images.
fn remove_if_never_saved(run: &Path) -> std::io::Result<()> {
    let in_runs_folder = run
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|name| name == FINETUNE_DIR);
    if !in_runs_folder || run.join(crate::train::TRAINING_STATE_FILE).exists() {
        return Ok(());
    }
    match remove_run_folder(run) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        result => result,
    }
}

fn remove_in_background(dir: PathBuf) {
    std::thread::spawn(move || {
        if let Err(error) = std::fs::remove_dir_all(&dir)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("{}: cannot delete: {error}", dir.display());
        }
    });
}

/// Deletes, in the background, the run folders whose deletion did not finish.
fn remove_leftover_deletions(runs_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(runs_dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(DELETING_PREFIX)
        {
            remove_in_background(entry.path());
        }
    }
}

/// Lists fine-tuning runs, newest first.
pub fn list_runs(data_dir: &Path) -> Vec<RunInfo> {
    let Ok(entries) = std::fs::read_dir(data_dir.join(FINETUNE_DIR)) else {
        return Vec::new();
    };
    let mut runs: Vec<RunInfo> = entries
        .filter_map(|entry| entry.ok())
        // Hidden folders are runs being deleted.
        .filter(|entry| !entry.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|entry| {
            let dir = entry.path();
            let config: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.join("config.json")).ok()?).ok()?;
            let path_of = |key: &str| config.get(key).and_then(|t| t.as_str()).map(PathBuf::from);
            let tokenizer = path_of("tokenizer");
            let regenerated_by = path_of("regenerate_with");
            let target = if config.get("tokenizer").is_some() {
                Target::Dit
            } else if regenerated_by.is_some()
                || config
                    .get("token_noise")
                    .and_then(|noise| noise.as_f64())
                    .is_some_and(|noise| noise > 0.0)
            {
                // The pane's decoder runs add token noise; a run of the command line's in
                // the folder that regenerates its tokens is one too.
                Target::GenerationDecoder
            } else {
                Target::Tokenizer
            };
            let config_steps = config.get("steps")?.as_u64()? as usize;
            let state = dir.join(crate::train::TRAINING_STATE_FILE);
            let (saved, state_error) = if state.exists() {
                match crate::train::tokenizer::saved_progress(&state) {
                    Ok(saved) => (Some(saved), None),
                    Err(error) => (None, Some(format!("{error:#}"))),
                }
            } else {
                (None, None)
            };
            let steps = saved.and_then(|(_, total)| total).unwrap_or(config_steps);
            let saved_step = saved.map(|(step, _)| step);
            let finished = saved_step.is_some_and(|step| step >= steps);
            Some(RunInfo {
                steps,
                saved_step,
                finished,
                state_error,
                resumable: saved_step.is_some() && !finished,
                has_weights: dir.join("ema.safetensors").exists(),
                tokenizer,
                regenerated_by,
                target,
                dir,
            })
        })
        .collect();
    // Newest first, whatever the kind.
    let modified = |run: &RunInfo| {
        std::fs::metadata(run.dir.join("config.json"))
            .and_then(|m| m.modified())
            .ok()
    };
    runs.sort_by_key(|run| std::cmp::Reverse(modified(run)));
    runs
}

/// How much Gaussian noise a generation-decoder run adds to the tokens
/// ([`TokenizerTrainConfig::token_noise`]): the shipped generation decoder's recipe. Of the
/// ways measured (model card: 0.15, 0.3, 0.5, and tokens regenerated by the DiT), none
/// generated better, and regeneration costs a DiT pass per step.
pub const GENERATION_TOKEN_NOISE: f64 = 0.3;

/// A new generation-decoder run: `decoder` (the one Generate uses) fine-tuned on `data` with
/// its encoder frozen, on noisy tokens ([`GENERATION_TOKEN_NOISE`]), at the budgets the DiT in
/// use was trained on (it generates no others).
fn generation_decoder_config(
    data: PathBuf,
    form: &FineTuneForm,
    decoder: PathBuf,
    dit: PathBuf,
) -> anyhow::Result<TokenizerTrainConfig> {
    anyhow::ensure!(
        decoder.is_file(),
        "fine-tuning the generation decoder needs a trained TexTok to start from ({} does not \
         exist)",
        decoder.display()
    );
    anyhow::ensure!(
        dit.is_file(),
        "fine-tuning the generation decoder needs the DiT whose tokens it decodes ({} does not \
         exist)",
        dit.display()
    );
    let dit_config: crate::model::dit::DitConfig =
        crate::checkpoint::CheckpointFile::read_kind(&dit, crate::model::dit::KIND_DIT)?
            .validated_config("DiT", crate::model::dit::DitConfig::validate)?;
    let budgets = dit_config.trained_budgets();
    let mut config = TokenizerTrainConfig::new(data, "small", true, form.steps, form.batch);
    config.learning_rate = form.learning_rate;
    config.eval_every = (form.steps / 5).max(1);
    config.eval_images = 16;
    config.checkpoint_minutes = 1.0;
    config.init_from = Some(decoder);
    config.freeze_encoder = true;
    config.seed = form.seed;
    config.token_noise = GENERATION_TOKEN_NOISE;
    config.min_budget = (*budgets.start()).max(config.min_budget);
    config.max_budget = (*budgets.end()).min(config.max_budget);
    Ok(config)
}

/// A run's `config.json` (read when Resume was pressed) as its trainer's config.
fn parse_run_config<T: serde::de::DeserializeOwned>(
    path: &Path,
    bytes: &[u8],
) -> anyhow::Result<T> {
    serde_json::from_slice(bytes)
        .with_context(|| format!("{}: not a valid run config", path.display()))
}

/// `stem` as a safe part of a file name: letters, digits, `-`, `_` and `.` kept (others, path
/// separators included, become `_`), at most 64 characters, so no name grows past a file
/// system's limit.
fn readable_stem(stem: &str) -> String {
    stem.chars()
        .take(64)
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Copies the Library's captioned images into `dir` with a `captions.jsonl`, so the run keeps
/// its data even if the originals move. Returns how many images were written.
pub fn export_library(
    items: &[super::state::LibraryItem],
    dir: &Path,
    cancel: &CancelToken,
    copied: &dyn Fn(usize, usize),
) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let mut lines = String::new();
    let mut written = 0;
    let captioned: Vec<(usize, &super::state::LibraryItem)> = items
        .iter()
        .enumerate()
        .filter(|(_, item)| !item.caption.trim().is_empty())
        .collect();
    // Files moved, deleted or on an unplugged disk since they were added are left out; the
    // count the progress runs to leaves them out too.
    let (present, gone): (Vec<_>, Vec<_>) = captioned
        .into_iter()
        .partition(|(_, item)| item.path.is_file());
    if present.is_empty()
        && let Some((_, first)) = gone.first()
    {
        anyhow::bail!(
            "none of the Library's {} captioned images is where it was added (the first: {}); \
             add them again from where they are now",
            gone.len(),
            first.path.display()
        );
    }
    for (index, item) in present.iter().copied() {
        cancel.check()?;
        copied(written, present.len());
        let extension = item
            .path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("png");
        // The index keeps names unique; the original name lets skip reasons be recognised.
        let stem = item
            .path
            .file_stem()
            .map(|s| readable_stem(&s.to_string_lossy()))
            .unwrap_or_default();
        let name = format!("{index:05}-{stem}.{extension}");
        let copy = dir.join(&name);
        std::fs::copy(&item.path, &copy).with_context(|| {
            format!("cannot copy {} to {}", item.path.display(), copy.display())
        })?;
        lines.push_str(&serde_json::to_string(
            &serde_json::json!({"file": name, "caption": item.caption.trim()}),
        )?);
        lines.push('\n');
        written += 1;
    }
    anyhow::ensure!(
        written > 0,
        "the Library has no captioned images to train on; add images and write their captions first"
    );
    let captions = dir.join(crate::data::dataset::CAPTIONS_JSONL);
    crate::files::write_atomic(&captions, lines.as_bytes())
        .with_context(|| format!("{}: cannot write", captions.display()))?;
    Ok(written)
}

struct Running {
    job: Job<TrainOutcome>,
    run: PathBuf,
    target: Target,
    started: Instant,
    /// Cancel was pressed: the run is saving its state before it stops.
    stopping: bool,
}

pub struct FineTunePane {
    pub form: FineTuneForm,
    running: Option<Running>,
    live: Arc<Mutex<Live>>,
    smoothing: f64,
    runs: Vec<RunInfo>,
    runs_listed: Option<Instant>,
    /// Unfinished deletions of an earlier session were taken up.
    leftovers_removed: bool,
    folder_dialog: Option<std::sync::mpsc::Receiver<Vec<PathBuf>>>,
    samples: (u64, Vec<(egui::TextureHandle, egui::TextureHandle)>),
    /// The run whose Delete was pressed, waiting for the confirmation.
    confirm_delete: Option<PathBuf>,
    /// A finished or stopped run whose logged loss and validation scores the plot shows (its
    /// name), and the job reading its log (megabytes for a long run: not on the UI thread).
    shown: Option<String>,
    showing: Option<(String, Job<LoggedRun>)>,
}

/// What a run's `log.jsonl` holds for the plot.
pub struct LoggedRun {
    pub losses: Vec<[f64; 2]>,
    pub evals: Vec<EvalReport>,
}

/// A run's logged losses ([`logged_losses`]) and validation reports (without their sample
/// images, which are not logged).
pub fn logged_run(run_dir: &Path) -> LoggedRun {
    let evals = std::fs::read_to_string(run_dir.join("log.jsonl"))
        .map(|text| {
            text.lines()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .filter(|event| event["event"] == "eval")
                .filter_map(|event| serde_json::from_value::<EvalReport>(event).ok())
                .collect()
        })
        .unwrap_or_default();
    LoggedRun {
        losses: logged_losses(run_dir, usize::MAX),
        evals,
    }
}

impl Default for FineTunePane {
    fn default() -> Self {
        Self {
            form: FineTuneForm::default(),
            running: None,
            live: Arc::default(),
            smoothing: 0.9,
            runs: Vec::new(),
            runs_listed: None,
            leftovers_removed: false,
            folder_dialog: None,
            samples: (0, Vec::new()),
            confirm_delete: None,
            shown: None,
            showing: None,
        }
    }
}

/// Exponential moving average of `values` (`smoothing` 0 = raw).
pub fn smooth(values: &[[f64; 2]], smoothing: f64) -> Vec<[f64; 2]> {
    let mut average = None;
    values
        .iter()
        .map(|&[x, y]| {
            let next = match average {
                None => y,
                Some(previous) => smoothing * previous + (1.0 - smoothing) * y,
            };
            average = Some(next);
            [x, next]
        })
        .collect()
}

/// At most `max` of `points`, evenly spaced, the last one always kept: a plot of a run of
/// 100,000 steps draws 2,000 points (a pixel column rarely shows more), not every one.
pub fn decimate(points: &[[f64; 2]], max: usize) -> Vec<[f64; 2]> {
    if points.len() <= max.max(2) {
        return points.to_vec();
    }
    let stride = points.len().div_ceil(max.max(2) - 1);
    let mut kept: Vec<[f64; 2]> = points.iter().step_by(stride).copied().collect();
    if let Some(&last) = points.last()
        && kept.last() != Some(&last)
    {
        kept.push(last);
    }
    kept
}

/// The losses a run logged (`log.jsonl`'s step events) up to `until_step`: the history a
/// resumed run's plot starts from. Lines that do not parse (a line cut by a crash) are skipped.
/// The log is only appended to, so steps redone after a resume appear twice: the later ones
/// replace the earlier, and the line never runs backwards.
pub fn logged_losses(run_dir: &Path, until_step: usize) -> Vec<[f64; 2]> {
    let Ok(text) = std::fs::read_to_string(run_dir.join("log.jsonl")) else {
        return Vec::new();
    };
    let mut losses: Vec<[f64; 2]> = Vec::new();
    let logged = text
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| event["event"] == "step")
        .filter_map(|event| Some([event["step"].as_u64()? as f64, event["loss"].as_f64()?]))
        .filter(|&[step, loss]| step <= until_step as f64 && loss.is_finite());
    for point in logged {
        while losses.last().is_some_and(|last| last[0] >= point[0]) {
            losses.pop();
        }
        losses.push(point);
    }
    losses
}

/// Points drawn per loss line.
const PLOT_POINTS: usize = 2000;

impl FineTunePane {
    pub fn busy(&self) -> bool {
        self.running.is_some()
    }

    pub fn live(&self) -> Arc<Mutex<Live>> {
        self.live.clone()
    }

    /// Cancels the running training (it saves its state first, so it can be resumed).
    pub fn cancel(&mut self) {
        if let Some(running) = &mut self.running {
            running.job.cancel();
            running.stopping = true;
        }
    }

    /// Cancels the running training and waits (up to `timeout`) until it has saved its state.
    /// A new run that ended before its first checkpoint is removed, as [`Self::poll`] does.
    pub fn cancel_and_wait(&mut self, timeout: std::time::Duration) {
        if let Some(running) = &mut self.running {
            running.job.cancel();
            let started = Instant::now();
            while matches!(running.job.poll(), JobState::Running(_)) && started.elapsed() < timeout
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            if !matches!(running.job.poll(), JobState::Running(_))
                && let Err(error) = remove_if_never_saved(&running.run)
            {
                tracing::warn!("{}: cannot remove: {error}", running.run.display());
            }
        }
    }

    /// Deletes a run folder (its checkpoints, log and copied images), refusing the run that is
    /// training and a run whose model the app uses. What the confirmed Delete does.
    pub fn delete_run(&mut self, dir: &Path, app: &mut AppContext) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.running
                .as_ref()
                .is_none_or(|running| running.run != dir),
            "the run is training; cancel it first"
        );
        let in_use = app
            .state
            .settings
            .chosen_models()
            .any(|model| model.starts_with(dir));
        anyhow::ensure!(
            !in_use,
            "the app uses this run's model; revert to the shipped models first"
        );
        // A DiT run trains on its tokenizer's tokens and reads that file to resume or to be
        // scored, a generation-decoder run samples with its DiT at every step; deleting the
        // run they read would leave them broken.
        let inside = |path: &Option<PathBuf>| path.as_ref().is_some_and(|p| p.starts_with(dir));
        for run in list_runs(&app.data_dir) {
            if run.dir == dir {
                continue;
            }
            if inside(&run.tokenizer) {
                anyhow::bail!(
                    "the DiT run {} was trained on this run's tokenizer; delete that run first",
                    run.dir.display()
                );
            }
            if inside(&run.regenerated_by) {
                anyhow::bail!(
                    "the generation-decoder run {} trains with this run's DiT; delete that run \
                     first",
                    run.dir.display()
                );
            }
        }
        // Only folders of the data folder's run list: never anything else by mistake.
        anyhow::ensure!(
            dir.parent() == Some(app.data_dir.join(FINETUNE_DIR).as_path()),
            "{} is not a fine-tuning run of this data folder",
            dir.display()
        );
        // A trainer holds the run's lock for as long as it runs, in any window or terminal.
        // Released again before the rename: Windows cannot rename a folder holding an open file.
        if crate::files::try_lock_file(&dir.join("train.lock")).is_err() {
            anyhow::bail!(
                "the run is training in another window or a terminal; stop it there first"
            );
        }
        remove_run_folder(dir).with_context(|| format!("{}: cannot delete", dir.display()))?;
        self.refresh_runs(&app.data_dir.clone());
        Ok(())
    }

    pub fn runs(&self) -> &[RunInfo] {
        &self.runs
    }

    pub fn refresh_runs(&mut self, data_dir: &Path) {
        self.runs = list_runs(data_dir);
        self.runs_listed = Some(Instant::now());
        if !self.leftovers_removed {
            // Deletions the app quit in the middle of are finished once per session.
            self.leftovers_removed = true;
            remove_leftover_deletions(&data_dir.join(FINETUNE_DIR));
        }
    }

    /// Starts a new run from the form (`resume` = None) or resumes `resume`.
    pub fn start(&mut self, app: &mut AppContext, resume: Option<RunInfo>) {
        self.showing = None;
        let last_shown = self.shown.take();
        // Cleared before the job starts, so none of its first reports is lost. (A resumed run's
        // earlier losses are read by the job: a long run's log is megabytes of JSON.)
        let last_run = std::mem::take(&mut *self.live.lock().unwrap_or_else(|p| p.into_inner()));
        let last_samples = std::mem::take(&mut self.samples);
        match self.spawn(app, resume) {
            Ok(running) => self.running = Some(running),
            Err(error) => {
                // Refused before any job started: the last run's plot and samples stay.
                *self.live.lock().unwrap_or_else(|p| p.into_inner()) = last_run;
                self.samples = last_samples;
                self.shown = last_shown;
                app.notices
                    .error(format!("Cannot start fine-tuning: {error:#}"));
            }
        }
    }

    fn spawn(&mut self, app: &mut AppContext, resume: Option<RunInfo>) -> anyhow::Result<Running> {
        let key = app.engines.key().clone();
        let models = TrainingModels {
            text_encoder_dir: key.shipped.text_encoder_dir.clone(),
            effnet: key.shipped.effnet.clone(),
        };
        let device_choice = key.device;
        let history = resume
            .as_ref()
            .and_then(|info| Some((info.dir.clone(), info.saved_step?)));
        let (run, target, saved_config) = match resume {
            Some(info) => {
                let path = info.dir.join("config.json");
                let bytes = std::fs::read(&path)
                    .with_context(|| format!("{}: cannot read", path.display()))?;
                (info.dir, info.target, Some((path, bytes)))
            }
            None => {
                let target = self.form.target;
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or(0);
                let run = app
                    .data_dir
                    .join(FINETUNE_DIR)
                    .join(format!("{}-{stamp}", target.prefix()));
                (run, target, None)
            }
        };
        let resume = saved_config.is_some();
        // The Library's images are copied inside the job (hundreds of photos take a while).
        let export = (!resume && self.form.use_library).then(|| app.state.library.clone());
        let data = if resume {
            PathBuf::new()
        } else if self.form.use_library {
            anyhow::ensure!(
                app.state
                    .library
                    .iter()
                    .any(|item| !item.caption.trim().is_empty()),
                "the Library has no captioned images to train on; add images and write their captions first"
            );
            run.join("data")
        } else {
            let folder = PathBuf::from(self.form.folder.trim());
            anyhow::ensure!(folder.is_dir(), "pick a folder of captioned images first");
            folder
        };
        let form = self.form.clone();
        let textok = key.textok_path();
        let generation_decoder = key.generation_decoder_path();
        let dit = key.dit_path();
        let observer = Observer {
            live: self.live.clone(),
            notify: app.notify.clone(),
        };
        let job_run = run.clone();
        let job = Job::spawn(
            "fine-tune",
            app.notify.clone(),
            move |_, cancel: &CancelToken| {
                if let Some((dir, saved_step)) = history {
                    // A resumed run's plot starts with the losses it logged before; read before
                    // training starts, so they come before its first new step.
                    let earlier = logged_losses(&dir, saved_step);
                    observer.with(|live| {
                        live.losses.splice(0..0, earlier);
                    });
                }
                if let Some(items) = export {
                    // A message per image would flood the log; one every half second.
                    let last = std::cell::Cell::new(None::<Instant>);
                    let copied = |done: usize, total: usize| {
                        if last
                            .get()
                            .is_none_or(|at| at.elapsed().as_secs_f64() >= 0.5)
                        {
                            last.set(Some(Instant::now()));
                            observer.on_message(&format!(
                                "copying the Library's captioned images ({done} of {total})"
                            ));
                        }
                    };
                    export_library(&items, &data, cancel, &copied)?;
                }
                let device = crate::device::select(device_choice)?.device;
                let time_limit = form.time_limit();
                match target {
                    Target::GenerationDecoder => {
                        let config = match saved_config {
                            Some((path, bytes)) => parse_run_config(&path, &bytes)?,
                            None => {
                                generation_decoder_config(data, &form, generation_decoder, dit)?
                            }
                        };
                        train_tokenizer(
                            &job_run, &config, resume, time_limit, &device, &models, &observer,
                            cancel,
                        )
                    }
                    Target::Tokenizer => {
                        let config = match saved_config {
                            Some((path, bytes)) => parse_run_config(&path, &bytes)?,
                            None => {
                                let mut config = TokenizerTrainConfig::new(
                                    data, "small", true, form.steps, form.batch,
                                );
                                config.learning_rate = form.learning_rate;
                                config.eval_every = (form.steps / 5).max(1);
                                config.eval_images = 16;
                                config.checkpoint_minutes = 1.0;
                                config.init_from = textok.is_file().then_some(textok);
                                // Freezing needs weights to keep; a first run trains both.
                                config.freeze_encoder =
                                    form.keep_tokens && config.init_from.is_some();
                                config.seed = form.seed;
                                config
                            }
                        };
                        train_tokenizer(
                            &job_run, &config, resume, time_limit, &device, &models, &observer,
                            cancel,
                        )
                    }
                    Target::Dit => {
                        let config = match saved_config {
                            Some((path, bytes)) => parse_run_config(&path, &bytes)?,
                            None => {
                                anyhow::ensure!(
                                    textok.is_file(),
                                    "fine-tuning the DiT needs a trained TexTok checkpoint ({} does not exist)",
                                    textok.display()
                                );
                                let mut config = DitTrainConfig::new(
                                    data, textok, "small", form.steps, form.batch,
                                );
                                config.learning_rate = form.learning_rate;
                                config.checkpoint_minutes = 1.0;
                                config.init_from = dit.is_file().then_some(dit);
                                config.mirror = form.mirror_images;
                                config.seed = form.seed;
                                config
                            }
                        };
                        train_dit(
                            &job_run,
                            &config,
                            resume,
                            time_limit,
                            &device,
                            &models.text_encoder_dir,
                            &observer,
                            cancel,
                        )
                    }
                }
            },
        );
        Ok(Running {
            job,
            run,
            target,
            started: Instant::now(),
            stopping: false,
        })
    }

    /// Shows `run`'s logged loss and validation scores in the plot (read in the background).
    pub fn show_run(&mut self, run: &RunInfo, app: &AppContext) {
        let dir = run.dir.clone();
        let job = Job::spawn("read a run's log", app.notify.clone(), move |_, _| {
            Ok(logged_run(&dir))
        });
        self.showing = Some((super::file_name_of(&run.dir), job));
    }

    /// The run whose log the plot shows, if it shows one rather than the latest training.
    pub fn shown_run(&self) -> Option<&str> {
        self.shown.as_deref()
    }

    fn poll_showing(&mut self, app: &mut AppContext) {
        let Some((name, job)) = &mut self.showing else {
            return;
        };
        match job.poll() {
            JobState::Running(_) => return,
            JobState::Finished(Ok(logged)) => {
                *self.live.lock().unwrap_or_else(|p| p.into_inner()) = Live {
                    losses: logged.losses,
                    evals: logged.evals,
                    ..Live::default()
                };
                self.samples = (0, Vec::new());
                self.shown = Some(name.clone());
            }
            JobState::Finished(Err(error)) => app
                .notices
                .error(format!("Cannot read the run {name}'s log: {error:#}")),
            JobState::Cancelled | JobState::Collected => {}
        }
        self.showing = None;
    }

    /// Collects a finished run, and a run's log read for Show (called every frame).
    pub fn poll(&mut self, app: &mut AppContext) {
        self.poll_showing(app);
        let Some(running) = &mut self.running else {
            return;
        };
        let state = running.job.poll();
        let run = running.run.display().to_string();
        match state {
            JobState::Running(_) => return,
            JobState::Finished(Ok(outcome)) if outcome.finished => {
                app.notices.info(format!(
                    "Fine-tuning finished at step {} ({run}).",
                    outcome.step
                ));
            }
            JobState::Finished(Ok(outcome)) => {
                app.notices.info(format!(
                    "Fine-tuning stopped at step {}; its state is saved, Resume continues it.",
                    outcome.step
                ));
            }
            JobState::Finished(Err(error)) => {
                app.notices.error(format!("Fine-tuning failed: {error:#}"))
            }
            // A cancel before the first checkpoint (while captions or latents are encoded)
            // leaves nothing to resume from.
            JobState::Cancelled
                if running
                    .run
                    .join(crate::train::TRAINING_STATE_FILE)
                    .is_file() =>
            {
                app.notices
                    .info("Fine-tuning stopped; Resume continues it.")
            }
            JobState::Cancelled => app.notices.info(
                "Fine-tuning stopped before its first checkpoint; there is nothing to resume.",
            ),
            JobState::Collected => {}
        }
        // The run's weights in use were rewritten while it trained: load them again, so that
        // Compare and Generate show what the run has learned, not what it knew when chosen.
        let weights = running.run.join("ema.safetensors");
        if app
            .state
            .settings
            .chosen_models()
            .any(|model| model == &weights)
        {
            app.engines.reload();
            app.notices.info(format!(
                "The app now uses {run}'s latest weights (the run is in use)."
            ));
        }
        if let Err(error) = remove_if_never_saved(&running.run) {
            app.notices.error(format!(
                "Cannot remove the unfinished run folder {run}: {error}"
            ));
        }
        self.running = None;
        self.refresh_runs(&app.data_dir.clone());
    }

    /// Acts on the folder dialog's answer (called every frame: the dialog does not hold the
    /// window, so another pane may be shown when it is answered).
    pub fn poll_dialog(&mut self, app: &mut AppContext) {
        if let Some(receiver) = &self.folder_dialog
            && let Some(picked) = super::dialog_answer(receiver, &mut app.notices)
        {
            if let Some(folder) = picked.first() {
                self.form.folder = folder.display().to_string();
                self.form.use_library = false;
            }
            self.folder_dialog = None;
        }
    }

    pub fn ui(&mut self, ui: &mut egui::Ui, app: &mut AppContext) {
        self.poll(app);
        if self.runs_listed.is_none() {
            self.refresh_runs(&app.data_dir.clone());
        }
        egui::Panel::left("finetune-form")
            .resizable(true)
            .default_size(340.0)
            .show(ui, |ui| self.form_ui(ui, app));
        egui::CentralPanel::default().show(ui, |ui| self.progress_ui(ui));
    }

    fn form_ui(&mut self, ui: &mut egui::Ui, app: &mut AppContext) {
        ui.heading("Fine-tune");
        let idle = self.running.is_none();
        ui.add_enabled_ui(idle, |ui| {
            ui.label("Model");
            for target in [Target::Tokenizer, Target::GenerationDecoder, Target::Dit] {
                let radio = ui.radio_value(&mut self.form.target, target, target.label());
                if target == Target::GenerationDecoder {
                    radio.on_hover_text(
                        "Trains the detokenizer Generate decodes with on your images' tokens \
                         with noise added, as generated tokens are never exact, so generations \
                         decode more cleanly; the tokens stay as they are, and Compare keeps \
                         its TexTok. Its validation images show the exact tokens' \
                         reconstructions.",
                    );
                }
            }
            ui.label("Training images");
            let captioned = app
                .state
                .library
                .iter()
                .filter(|i| !i.caption.trim().is_empty())
                .count();
            ui.radio_value(
                &mut self.form.use_library,
                true,
                format!("The Library's captioned images ({captioned})"),
            );
            ui.horizontal(|ui| {
                ui.radio_value(&mut self.form.use_library, false, "Folder:");
                ui.add(
                    egui::TextEdit::singleline(&mut self.form.folder)
                        .hint_text("images with NAME.txt captions"),
                );
                if ui
                    .add_enabled(self.folder_dialog.is_none(), egui::Button::new("…"))
                    .clicked()
                {
                    self.folder_dialog =
                        Some(super::pick_in_background(app.notify.clone(), || {
                            rfd::FileDialog::new().pick_folder().into_iter().collect()
                        }));
                }
            });
            egui::Grid::new("finetune-settings")
                .num_columns(2)
                .show(ui, |ui| {
                    let label = ui.label("Steps");
                    ui.add(
                        egui::DragValue::new(&mut self.form.steps)
                            .range(1..=FineTuneForm::MAX_STEPS),
                    )
                    .labelled_by(label.id);
                    ui.end_row();
                    let label = ui.label("Learning rate");
                    ui.add(
                        egui::DragValue::new(&mut self.form.learning_rate)
                            .range(FineTuneForm::LEARNING_RATES)
                            .speed(1e-6)
                            .max_decimals(7),
                    )
                    .labelled_by(label.id);
                    ui.end_row();
                    let label = ui.label("Batch");
                    ui.add(
                        egui::DragValue::new(&mut self.form.batch)
                            .range(1..=FineTuneForm::MAX_BATCH),
                    )
                    .labelled_by(label.id);
                    ui.end_row();
                    let label = ui.label("Time limit (minutes, 0 = none)");
                    ui.add(
                        egui::DragValue::new(&mut self.form.time_limit_minutes)
                            .range(0.0..=FineTuneForm::MAX_MINUTES)
                            .speed(1.0),
                    )
                    .on_hover_text(
                        "Stop by then with the learning rate decayed: the run takes as many \
                         steps as fit (at most Steps), measured over its first 60 steps; a \
                         limit over before then stops the run unfinished, for Resume",
                    )
                    .labelled_by(label.id);
                    ui.end_row();
                    let label = ui.label("Seed");
                    ui.add(egui::DragValue::new(&mut self.form.seed))
                        .on_hover_text(
                            "The data order and the training noise: the same seed, images and \
                             settings train the same model",
                        )
                        .labelled_by(label.id);
                    ui.end_row();
                });
            if self.form.target == Target::Tokenizer {
                ui.checkbox(
                    &mut self.form.keep_tokens,
                    "Keep the tokens (train the detokenizer only)",
                )
                .on_hover_text(
                    "The generator was trained on this tokenizer's tokens: keeping them keeps \
                     it working with the fine-tuned model. Off, both halves learn your images \
                     and the generator needs fine-tuning on the new tokens too.",
                );
            }
            if self.form.target == Target::Dit {
                ui.checkbox(
                    &mut self.form.mirror_images,
                    "Also learn each image's mirror image",
                )
                .on_hover_text(
                    "Twice the pictures of each thing: every image is also shown flipped left \
                     to right (encoded once, at the start). Images whose caption names a \
                     direction, text, digits or a flag are not flipped.",
                );
            }
            if ui.button("Start").clicked() {
                self.start(app, None);
            }
        });
        if let Some(running) = &self.running {
            ui.horizontal(|ui| {
                ui.spinner();
                if running.stopping {
                    ui.label("stopping: saving the training state, so Resume can continue…");
                } else {
                    ui.label(format!("training the {}…", running.target.label()));
                }
            });
            let stopping = running.stopping;
            ui.weak(format!("Saving to {}", running.run.display()));
            if ui
                .add_enabled(!stopping, egui::Button::new("Cancel"))
                .clicked()
            {
                self.cancel();
            }
        }
        ui.separator();
        ui.heading("Runs");
        let in_use: Vec<PathBuf> = app.state.settings.chosen_models().cloned().collect();
        if !in_use.is_empty() {
            ui.label("In use:");
            for path in &in_use {
                ui.weak(path.display().to_string());
            }
            if ui.button("Revert to the shipped models").clicked() {
                app.state.settings.revert_models();
            }
        }
        let runs = self.runs.clone();
        egui::ScrollArea::vertical().id_salt("runs").show(ui, |ui| {
            if runs.is_empty() {
                ui.weak("No fine-tuning runs yet.");
            }
            for run in runs {
                let name = super::file_name_of(&run.dir);
                ui.horizontal_wrapped(|ui| {
                    ui.label(format!(
                        "{name} · {} · {}",
                        run.target.label(),
                        run.progress_label()
                    ));
                    if run.resumable && ui.add_enabled(idle, egui::Button::new("Resume")).clicked()
                    {
                        self.start(app, Some(run.clone()));
                    }
                    if ui
                        .add_enabled(idle, egui::Button::new("Show"))
                        .on_hover_text("Its logged loss and validation scores, in the plot")
                        .clicked()
                    {
                        self.show_run(&run, app);
                    }
                    if run.has_weights && ui.button("Use this model").clicked() {
                        let weights = run.dir.join("ema.safetensors");
                        let slot = match run.target {
                            Target::Tokenizer => &mut app.state.settings.textok,
                            Target::GenerationDecoder => &mut app.state.settings.generation_decoder,
                            Target::Dit => &mut app.state.settings.dit,
                        };
                        // Already in use: the run may have saved newer weights since they
                        // were loaded, and an unchanged setting would load nothing.
                        if slot.as_ref() == Some(&weights) {
                            app.engines.reload();
                        }
                        *slot = Some(weights);
                        // A chosen generation decoder still decodes Generate's tokens.
                        let generate_keeps = if run.target == Target::Tokenizer
                            && app.state.settings.generation_decoder.is_some()
                        {
                            " Generate keeps the generation decoder chosen in Settings \
                             (Automatic decoder there hands it this TexTok too)."
                        } else {
                            ""
                        };
                        app.notices.info(format!(
                            "Now using {name} (its latest weights); Revert goes back to the \
                             shipped model.{generate_keeps}"
                        ));
                    }
                    let training = self.running.as_ref().is_some_and(|r| r.run == run.dir);
                    let used = in_use.iter().any(|model| model.starts_with(&run.dir));
                    if self.confirm_delete.as_ref() == Some(&run.dir) {
                        ui.label("Delete the run and its checkpoints?");
                        if ui.button("Delete for good").clicked() {
                            self.confirm_delete = None;
                            match self.delete_run(&run.dir, app) {
                                Ok(()) => app.notices.info(format!("Deleted the run {name}.")),
                                Err(error) => app
                                    .notices
                                    .error(format!("Cannot delete {name}: {error:#}")),
                            }
                        }
                        if ui.button("Keep").clicked() {
                            self.confirm_delete = None;
                        }
                    } else if ui
                        .add_enabled(!training && !used, egui::Button::new("Delete…"))
                        .on_disabled_hover_text(if training {
                            "Training: cancel it first"
                        } else {
                            "The app uses this run's model: revert to the shipped models first"
                        })
                        .clicked()
                    {
                        self.confirm_delete = Some(run.dir.clone());
                    }
                });
            }
        });
    }

    fn progress_ui(&mut self, ui: &mut egui::Ui) {
        let live = self.live.clone();
        let live = live.lock().unwrap_or_else(|p| p.into_inner());
        match &live.last_step {
            Some(step) => {
                let eta = step
                    .eta_seconds
                    .map(|s| {
                        format!(
                            ", ETA {}",
                            crate::train::format_duration(std::time::Duration::from_secs_f64(s))
                        )
                    })
                    .unwrap_or_default();
                let rate = step
                    .images_per_second
                    .map(|r| format!(", {r:.1} img/s"))
                    .unwrap_or_default();
                ui.label(format!(
                    "step {}/{}  loss {:.5}  lr {:.2e}{rate}{eta}",
                    step.step, step.total, step.loss, step.lr
                ));
                ui.add(egui::ProgressBar::new(
                    step.step as f32 / step.total.max(1) as f32,
                ));
            }
            None => {
                if let Some(running) = &self.running {
                    ui.label(format!(
                        "{} ({:.0} s)",
                        live.messages
                            .last()
                            .map(String::as_str)
                            .unwrap_or("preparing…"),
                        running.started.elapsed().as_secs_f64()
                    ));
                } else if let Some(name) = &self.shown {
                    ui.label(format!(
                        "Run {name}, as logged (to step {})",
                        live.losses.last().map_or(0, |last| last[0] as usize)
                    ));
                } else {
                    ui.weak("Start a run to see its loss here.");
                }
            }
        }
        ui.horizontal(|ui| {
            let label = ui.label("Smoothing");
            ui.add(egui::Slider::new(&mut self.smoothing, 0.0..=0.99))
                .labelled_by(label.id);
        });
        let smoothed = decimate(&smooth(&live.losses, self.smoothing), PLOT_POINTS);
        let raw = decimate(&live.losses, PLOT_POINTS);
        Plot::new("loss-plot")
            .height((ui.available_height() * 0.55).max(120.0))
            .x_axis_label("step")
            .y_axis_label("loss")
            .show(ui, |plot| {
                plot.line(Line::new("loss", raw).color(egui::Color32::from_gray(110)));
                plot.line(Line::new("smoothed", smoothed).width(2.0));
            });
        if let Some(report) = live.evals.last() {
            let psnr: Vec<String> = report
                .psnr
                .iter()
                .map(|(k, p)| format!("{k}: {p:.2} dB"))
                .collect();
            // With no held-out image in the split the trainer scores training images: say so.
            let (kind, note) = if report.held_out {
                ("Validation", "validation image")
            } else {
                (
                    "Training-image PSNR (no held-out images in the split)",
                    "training image (no held-out images)",
                )
            };
            ui.label(format!(
                "{kind} at step {} ({} images): PSNR {}",
                report.step,
                report.images,
                psnr.join(", ")
            ));
            if self.samples.0 != live.samples_version {
                let textures = report
                    .samples
                    .iter()
                    .map(|(original, reconstruction): &(Rgb32FImage, Rgb32FImage)| {
                        (
                            super::images::texture(ui.ctx(), "validation original", original),
                            super::images::texture(
                                ui.ctx(),
                                "validation reconstruction",
                                reconstruction,
                            ),
                        )
                    })
                    .collect();
                self.samples = (live.samples_version, textures);
            }
            ui.horizontal_wrapped(|ui| {
                for (original, reconstruction) in &self.samples.1 {
                    ui.vertical(|ui| {
                        ui.add(egui::Image::from_texture((
                            original.id(),
                            egui::vec2(96.0, 96.0),
                        )));
                        ui.add(egui::Image::from_texture((
                            reconstruction.id(),
                            egui::vec2(96.0, 96.0),
                        )));
                    });
                }
            });
            ui.weak(format!(
                "Top: {note}; bottom: its reconstruction at the largest budget with the EMA weights."
            ));
        }
        if let Some(message) = live.messages.last() {
            ui.weak(message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{decimate, logged_losses, smooth};

    #[test]
    fn decimation_keeps_the_ends_and_at_most_the_limit() {
        let points: Vec<[f64; 2]> = (0..10_001).map(|i| [i as f64, 1.0]).collect();
        let kept = decimate(&points, 2000);
        assert!(kept.len() <= 2000, "{}", kept.len());
        assert!(kept.len() > 1000, "{}", kept.len());
        assert_eq!(kept.first(), points.first());
        assert_eq!(kept.last(), points.last());
        assert!(kept.windows(2).all(|w| w[0][0] < w[1][0]));
        assert_eq!(decimate(&points[..5], 2000), points[..5].to_vec());
    }

    #[test]
    fn a_resumed_runs_history_comes_from_its_log_up_to_the_saved_step() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("log.jsonl"),
            concat!(
                "{\"event\":\"step\",\"step\":10,\"loss\":0.5}\n",
                "{\"event\":\"eval\",\"step\":10,\"psnr\":20.0}\n",
                "{\"event\":\"step\",\"step\":20,\"loss\":0.4}\n",
                "{\"event\":\"step\",\"step\":30,\"loss\":0.3}\n",
                "{\"event\":\"step\",\"st"
            ),
        )
        .unwrap();
        assert_eq!(
            logged_losses(dir.path(), 20),
            vec![[10.0, 0.5], [20.0, 0.4]]
        );
        assert_eq!(logged_losses(dir.path(), 100).len(), 3);
        assert!(logged_losses(&dir.path().join("none"), 100).is_empty());
        // A resume from step 10 redid steps 11-30: the second session's points win.
        let mut log = std::fs::read_to_string(dir.path().join("log.jsonl")).unwrap();
        log.push_str("\n{\"event\":\"step\",\"step\":20,\"loss\":0.2}\n");
        log.push_str("{\"event\":\"step\",\"step\":30,\"loss\":0.1}\n");
        std::fs::write(dir.path().join("log.jsonl"), log).unwrap();
        assert_eq!(
            logged_losses(dir.path(), 100),
            vec![[10.0, 0.5], [20.0, 0.2], [30.0, 0.1]]
        );
    }

    #[test]
    fn smoothing_zero_is_raw_and_high_smoothing_lags() {
        let values = [[0.0, 1.0], [1.0, 0.0], [2.0, 0.0]];
        assert_eq!(smooth(&values, 0.0), values.to_vec());
        let smoothed = smooth(&values, 0.5);
        assert_eq!(smoothed, vec![[0.0, 1.0], [1.0, 0.5], [2.0, 0.25]]);
    }
}
