//! What the app remembers across restarts: the library with its captions, recent prompts, the
//! generation gallery, drafts and settings. Kept in one JSON file in the app's data folder and
//! written atomically whenever it changed (checked once a second), so a crash loses at most the
//! last second of typing.

use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::device::DeviceChoice;

/// File name of the saved state inside the data folder.
pub const STATE_FILE: &str = "state.json";
/// Prompts kept in the Generate pane's history.
pub const MAX_RECENT_PROMPTS: usize = 20;

/// One image in the Library.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LibraryItem {
    pub path: PathBuf,
    pub caption: String,
}

/// Settings a generated image was made with (enough to regenerate it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationSettings {
    pub caption: String,
    pub tokens: usize,
    pub steps: usize,
    pub cfg: f32,
    pub seed: u64,
    /// The models that made it (as its PNG's text chunks name them), so that *Reuse settings*
    /// can say when the models in use now would make another image; `None` for images
    /// generated before this was recorded.
    #[serde(default)]
    pub models: Option<ModelHashes>,
}

/// [`crate::pipeline::model_identity`] of the tokenizer that decoded an image and of the DiT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelHashes {
    pub tokenizer: String,
    pub dit: String,
}

impl From<&crate::pipeline::GeneratorIdentity> for ModelHashes {
    fn from(identity: &crate::pipeline::GeneratorIdentity) -> Self {
        Self {
            tokenizer: identity.tokenizer_id.clone(),
            dit: identity.dit_id.clone(),
        }
    }
}

/// One generated image, saved in the data folder the moment it was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GalleryEntry {
    pub file: PathBuf,
    pub settings: GenerationSettings,
}

/// User settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub device: DeviceChoice,
    /// Model overrides; `None` = the shipped model.
    pub textok: Option<PathBuf>,
    pub baseline: Option<PathBuf>,
    pub dit: Option<PathBuf>,
    /// The detokenizer Generate decodes with (a fine-tuned generation decoder); `None`: the
    /// chosen TexTok if there is one, else the shipped generation decoder.
    pub generation_decoder: Option<PathBuf>,
    /// Defaults for new work.
    pub default_budget: usize,
    pub default_steps: usize,
    pub default_cfg: f32,
    /// Also write each caption to `NAME.txt` beside its image.
    pub save_sidecars: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            device: DeviceChoice::Auto,
            textok: None,
            baseline: None,
            dit: None,
            generation_decoder: None,
            default_budget: 64,
            default_steps: 50,
            default_cfg: 3.0,
            save_sidecars: false,
        }
    }
}

impl Settings {
    /// Every model file chosen instead of a shipped one.
    pub fn chosen_models(&self) -> impl Iterator<Item = &PathBuf> {
        [
            &self.textok,
            &self.baseline,
            &self.dit,
            &self.generation_decoder,
        ]
        .into_iter()
        .flatten()
    }

    /// Back to the shipped models.
    pub fn revert_models(&mut self) {
        self.textok = None;
        self.baseline = None;
        self.dit = None;
        self.generation_decoder = None;
    }
}

/// The Generate pane's form, kept so a half-typed prompt survives a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerateForm {
    pub caption: String,
    pub tokens: usize,
    pub steps: usize,
    pub cfg: f32,
    pub seed: u64,
    pub random_seed: bool,
    pub count: usize,
}

impl GenerateForm {
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            caption: String::new(),
            tokens: settings.default_budget,
            steps: settings.default_steps,
            cfg: settings.default_cfg,
            seed: 0,
            random_seed: true,
            count: 4,
        }
    }
}

impl Default for GenerateForm {
    fn default() -> Self {
        Self::from_settings(&Settings::default())
    }
}

/// Everything persisted.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PersistedState {
    pub library: Vec<LibraryItem>,
    /// The selected library image (by path, so it survives reordering).
    pub selected: Option<PathBuf>,
    pub recent_prompts: Vec<String>,
    pub gallery: Vec<GalleryEntry>,
    pub generate: GenerateForm,
    pub settings: Settings,
    /// Budget on the Compare pane's slider.
    pub compare_budget: Option<usize>,
    /// The Fine-tune pane's form. One that this version cannot read (say, a target a later
    /// version added) falls back to the defaults instead of making the whole state unreadable.
    #[serde(deserialize_with = "fine_tune_form_or_default")]
    pub fine_tune: super::finetune::FineTuneForm,
}

fn fine_tune_form_or_default<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<super::finetune::FineTuneForm, D::Error> {
    let value = serde_json::Value::deserialize(deserializer)?;
    Ok(
        serde_json::from_value::<super::finetune::FineTuneForm>(value)
            .unwrap_or_default()
            .clamped(),
    )
}

impl PersistedState {
    /// Sets the Generate form's tokens, steps and guidance to the Settings defaults (the
    /// caption, seed and image count stay).
    pub fn apply_default_generation_settings(&mut self) {
        let defaults = GenerateForm::from_settings(&self.settings);
        self.generate.tokens = defaults.tokens;
        self.generate.steps = defaults.steps;
        self.generate.cfg = defaults.cfg;
    }

    pub fn selected_item(&self) -> Option<&LibraryItem> {
        let selected = self.selected.as_ref()?;
        self.library.iter().find(|item| &item.path == selected)
    }

    pub fn selected_item_mut(&mut self) -> Option<&mut LibraryItem> {
        let selected = self.selected.clone()?;
        self.library.iter_mut().find(|item| item.path == selected)
    }

    /// Remembers a prompt at the top of the history (once, most recent first).
    pub fn remember_prompt(&mut self, prompt: &str) {
        let prompt = prompt.trim();
        if prompt.is_empty() {
            return;
        }
        // A caption imported from a file may be longer than an editor takes; the list holds
        // what an editor could hold.
        let prompt = match prompt.char_indices().nth(super::library::MAX_CAPTION_CHARS) {
            Some((end, _)) => &prompt[..end],
            None => prompt,
        };
        self.recent_prompts.retain(|p| p != prompt);
        self.recent_prompts.insert(0, prompt.to_owned());
        self.recent_prompts.truncate(MAX_RECENT_PROMPTS);
    }
}

/// The outcome of reading the state file.
#[derive(Debug)]
pub struct LoadedState {
    pub state: PersistedState,
    /// Set when the file existed but could not be read.
    pub problem: Option<String>,
    /// False when the file could neither be read nor set aside: saving over it would destroy
    /// the user's library, so this session does not save.
    pub may_save: bool,
}

/// Reads `dir/state.json`. A missing file is a fresh start; a corrupt one is renamed to
/// `state.json.unreadable-<seconds>` (never overwritten) and the app starts fresh with a message.
pub fn load(dir: &Path) -> LoadedState {
    read_state(dir, true)
}

/// Reads `dir/state.json` like [`load`] but changes nothing on disk (a damaged file stays where
/// it is): for a window that does not own the folder.
pub fn peek(dir: &Path) -> LoadedState {
    read_state(dir, false)
}

fn read_state(dir: &Path, may_repair: bool) -> LoadedState {
    let path = dir.join(STATE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return LoadedState {
                state: PersistedState::default(),
                problem: None,
                may_save: true,
            };
        }
        Err(error) => {
            return LoadedState {
                state: PersistedState::default(),
                problem: Some(format!(
                    "{}: cannot read the saved state ({error}); starting empty, and nothing is \
                     saved this session so the file stays as it is",
                    path.display()
                )),
                may_save: false,
            };
        }
    };
    match serde_json::from_slice::<PersistedState>(&bytes) {
        Ok(state) => LoadedState {
            state,
            problem: None,
            may_save: true,
        },
        Err(error) if !may_repair => LoadedState {
            state: PersistedState::default(),
            problem: Some(format!(
                "{}: the saved state is damaged ({error}); starting fresh",
                path.display()
            )),
            may_save: false,
        },
        Err(error) => {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let aside = dir.join(format!("{STATE_FILE}.unreadable-{stamp}"));
            let kept = std::fs::rename(&path, &aside).is_ok();
            LoadedState {
                state: PersistedState::default(),
                problem: Some(format!(
                    "{}: the saved state is damaged ({error}); starting fresh{}",
                    path.display(),
                    if kept {
                        format!(", the old file is kept as {}", aside.display())
                    } else {
                        ", and nothing is saved this session so the file stays as it is".into()
                    }
                )),
                may_save: kept,
            }
        }
    }
}

/// The file a window locks to claim its data folder.
pub const LOCK_FILE: &str = "studio.lock";

/// Claims `dir` for this window, so that two windows (say, a second one started by "Open with")
/// never save over each other's library and gallery. The lock is the operating system's, so it
/// goes when the process does, even by a crash. `Ok(Some(file))`: hold `file` while saving;
/// `Ok(None)`: the file system cannot lock, save as before; `Err`: another window holds it.
pub fn claim_data_dir(dir: &Path) -> Result<Option<std::fs::File>, String> {
    if let Err(error) = std::fs::create_dir_all(dir) {
        tracing::warn!("{}: cannot create the data folder: {error}", dir.display());
        return Ok(None);
    }
    crate::files::try_lock_file(&dir.join(LOCK_FILE)).map_err(|crate::files::LockBusy| {
        format!(
            "Another TexTok Studio window uses {}: this one will not save its library, gallery \
             or settings (close the other window, then reopen this one to keep changes)",
            dir.display()
        )
    })
}

/// Writes `state` to `dir/state.json` atomically.
pub fn save(dir: &Path, state: &PersistedState) -> anyhow::Result<()> {
    save_json(dir, &serde_json::to_vec_pretty(state)?)
}

/// Writes a serialised state to `dir/state.json` atomically.
fn save_json(dir: &Path, json: &[u8]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let path = dir.join(STATE_FILE);
    crate::files::write_atomic(&path, json)
        .with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(())
}

/// Saves the state when it changed, at most once per `interval`. The file is written (and
/// synced) on a thread of its own, one write at a time, so a large Library on a slow disk does
/// not stall typing; only the exit's last save waits for the disk.
pub struct StateSaver {
    dir: PathBuf,
    enabled: bool,
    last_written: Option<PersistedState>,
    last_check: Option<Instant>,
    interval: Duration,
    /// The state whose write failed last: not pending again until it changes (a read-only
    /// folder would otherwise wake the idle app to fail every second).
    failed: Option<PersistedState>,
    /// The write in flight: the state it writes and where its outcome arrives.
    writing: Option<(PersistedState, Receiver<Result<(), String>>)>,
}

impl StateSaver {
    /// `enabled` false never writes (see [`LoadedState::may_save`]).
    pub fn new(dir: PathBuf, loaded: &PersistedState, enabled: bool) -> Self {
        Self {
            dir,
            enabled,
            last_written: Some(loaded.clone()),
            last_check: None,
            interval: Duration::from_secs(1),
            failed: None,
            writing: None,
        }
    }

    /// Whether `state` has changes not written yet (that a later tick will write).
    pub fn pending(&self, state: &PersistedState) -> bool {
        self.enabled
            && (self.writing.is_some()
                || (self.last_written.as_ref() != Some(state)
                    && self.failed.as_ref() != Some(state)))
    }

    /// True while the last write failed: the state holds changes no file has.
    pub fn failing(&self) -> bool {
        self.enabled && self.failed.is_some()
    }

    /// Saves if due and changed; `force` saves any change now and waits for the disk (exit).
    /// Returns whether a write finished; the error of a failed one comes from the tick that
    /// finds it (usually the one after the tick that started it).
    pub fn tick(&mut self, state: &PersistedState, force: bool) -> anyhow::Result<bool> {
        if !self.enabled {
            return Ok(false);
        }
        let finished = match self.collect(force) {
            Ok(finished) => finished,
            Err(error) if !force => return Err(error),
            // At exit the newest state is still tried below.
            Err(_) => false,
        };
        if self.writing.is_some() {
            return Ok(finished);
        }
        let due = force
            || self
                .last_check
                .is_none_or(|checked| checked.elapsed() >= self.interval);
        if !due {
            return Ok(finished);
        }
        self.last_check = Some(Instant::now());
        // A state that failed is tried again when it changes, or at exit (`force`).
        let failed_before = !force && self.failed.as_ref() == Some(state);
        if self.last_written.as_ref() == Some(state) || failed_before {
            return Ok(finished);
        }
        if !force {
            // Serialised here, so the file holds this frame's state whatever changes next.
            let json = serde_json::to_vec_pretty(state)?;
            let (sender, receiver) = std::sync::mpsc::channel();
            let dir = self.dir.clone();
            let write = std::thread::Builder::new()
                .name("state writer".into())
                .spawn(move || {
                    let _ = sender.send(save_json(&dir, &json).map_err(|e| format!("{e:#}")));
                });
            if write.is_ok() {
                self.writing = Some((state.clone(), receiver));
                return Ok(finished);
            }
        }
        // At exit, or with no thread to be had: written now.
        let outcome = save(&self.dir, state);
        self.settle(state.clone(), outcome)
    }

    /// Records how the write of `written` ended: the state on disk, or the one that failed.
    fn settle(
        &mut self,
        written: PersistedState,
        outcome: anyhow::Result<()>,
    ) -> anyhow::Result<bool> {
        match outcome {
            Ok(()) => {
                self.failed = None;
                self.last_written = Some(written);
                Ok(true)
            }
            Err(error) => {
                self.failed = Some(written);
                Err(error)
            }
        }
    }

    /// Takes the outcome of the write in flight, if it has ended (with `wait`: once it has).
    fn collect(&mut self, wait: bool) -> anyhow::Result<bool> {
        let Some((_, receiver)) = &self.writing else {
            return Ok(false);
        };
        let outcome = if wait {
            receiver.recv().ok()
        } else {
            match receiver.try_recv() {
                Ok(outcome) => Some(outcome),
                Err(std::sync::mpsc::TryRecvError::Empty) => return Ok(false),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => None,
            }
        };
        let Some((written, _)) = self.writing.take() else {
            return Ok(false);
        };
        let outcome = match outcome {
            Some(result) => result.map_err(anyhow::Error::msg),
            None => Err(anyhow::anyhow!("the state writer thread stopped")),
        };
        self.settle(written, outcome)
    }
}

impl Drop for StateSaver {
    /// A write in flight finishes before the saver goes: a state file is never left to a
    /// thread that the process's end could cut short.
    fn drop(&mut self) {
        if let Some((_, receiver)) = &self.writing {
            let _ = receiver.recv();
        }
    }
}
