//! The models the panes use, loaded in the background and shared between jobs. Changing the
//! device or a model path drops the loaded engines; the next pane that asks loads them again.

use std::path::PathBuf;
use std::sync::Arc;

use crate::device::{self, DeviceChoice};
use crate::jobs::{Job, JobState, Progress, ProgressSink};
use crate::pipeline::{EngineSpec, GenerateEngine, GenerateSpec, ReconstructEngine};

/// Where the shipped models are (tests point these at tiny models).
#[derive(Debug, Clone, PartialEq)]
pub struct ShippedModels {
    pub text_encoder_dir: PathBuf,
    pub textok: PathBuf,
    /// The TexTok detokenizer Generate decodes with (Compare uses `textok`); where it is
    /// missing, Generate uses `textok`.
    pub generation_decoder: PathBuf,
    pub baseline: PathBuf,
    pub dit: PathBuf,
    pub effnet: PathBuf,
}

impl ShippedModels {
    pub fn from_models_dir() -> Self {
        Self {
            text_encoder_dir: crate::paths::text_encoder_dir(),
            textok: crate::paths::default_textok_checkpoint(),
            generation_decoder: crate::paths::default_generation_decoder(),
            baseline: crate::paths::default_baseline_checkpoint(),
            dit: crate::paths::default_dit_checkpoint(),
            effnet: crate::paths::effnet_checkpoint(),
        }
    }
}

/// Everything that decides which engines are loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineKey {
    pub device: DeviceChoice,
    pub shipped: ShippedModels,
    pub textok: Option<PathBuf>,
    pub baseline: Option<PathBuf>,
    pub dit: Option<PathBuf>,
    /// A chosen detokenizer for Generate (see [`Self::generation_decoder_path`]).
    pub generation_decoder: Option<PathBuf>,
}

impl EngineKey {
    /// The TexTok checkpoint in use (override or shipped); it may not exist yet.
    pub fn textok_path(&self) -> PathBuf {
        self.textok
            .clone()
            .unwrap_or_else(|| self.shipped.textok.clone())
    }

    pub fn dit_path(&self) -> PathBuf {
        self.dit.clone().unwrap_or_else(|| self.shipped.dit.clone())
    }

    fn reconstruct_spec(&self) -> EngineSpec {
        EngineSpec {
            text_encoder_dir: self.shipped.text_encoder_dir.clone(),
            textok: self.textok.clone(),
            default_textok: self.shipped.textok.clone(),
            baseline: self.baseline.clone(),
            default_baseline: self.shipped.baseline.clone(),
            with_baseline: true,
        }
    }

    /// The tokenizer Generate decodes with: a chosen generation decoder; else a chosen TexTok
    /// file (a fine-tuned one, say), used for both panes; else the shipped generation decoder.
    pub fn generation_decoder_path(&self) -> PathBuf {
        self.chosen_generation_decoder()
            .unwrap_or_else(|| self.shipped_generation_decoder())
    }

    /// The generation decoder chosen in Settings, or else the chosen TexTok.
    fn chosen_generation_decoder(&self) -> Option<PathBuf> {
        self.generation_decoder
            .clone()
            .or_else(|| self.textok.clone())
    }

    /// The shipped generation decoder, or the shipped TexTok where it is missing.
    pub fn shipped_generation_decoder(&self) -> PathBuf {
        crate::pipeline::default_generation_decoder(
            &self.shipped.generation_decoder,
            &self.shipped.textok,
        )
    }

    fn generate_spec(&self) -> GenerateSpec {
        GenerateSpec {
            baseline: false,
            text_encoder_dir: self.shipped.text_encoder_dir.clone(),
            textok: self.chosen_generation_decoder(),
            default_textok: self.shipped_generation_decoder(),
            dit: self.dit.clone(),
            default_dit: self.shipped.dit.clone(),
        }
    }
}

enum Slot<T> {
    Idle,
    Loading(Job<Arc<T>>),
    Ready(Arc<T>),
    Failed(String),
}

/// What a pane sees when it asks for an engine.
pub enum EngineStatus<T> {
    /// Still loading; which model it is on, once the load has said.
    Loading(Option<Progress>),
    Ready(Arc<T>),
    Failed(String),
}

pub struct Engines {
    key: EngineKey,
    /// Bumped whenever the engines change, so caches keyed by it go stale.
    generation: u64,
    reconstruct: Slot<ReconstructEngine>,
    generate: Slot<GenerateEngine>,
    notify: Arc<dyn Fn() + Send + Sync>,
}

impl Engines {
    pub fn new(key: EngineKey, notify: Arc<dyn Fn() + Send + Sync>) -> Self {
        Self {
            key,
            generation: 0,
            reconstruct: Slot::Idle,
            generate: Slot::Idle,
            notify,
        }
    }

    pub fn key(&self) -> &EngineKey {
        &self.key
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Switches to `key`, dropping only the engines it changes: choosing another DiT keeps the
    /// tokenizers loaded and Compare's results (keyed by the generation number) valid.
    pub fn set_key(&mut self, key: EngineKey) {
        if key == self.key {
            return;
        }
        let device_changed = key.device != self.key.device;
        let reconstruct_changed =
            device_changed || key.reconstruct_spec() != self.key.reconstruct_spec();
        let generate_changed = device_changed || key.generate_spec() != self.key.generate_spec();
        self.key = key;
        if reconstruct_changed {
            drop_slot(&mut self.reconstruct);
            self.generation += 1;
        }
        if generate_changed {
            drop_slot(&mut self.generate);
        }
    }

    /// Drops the loaded engines: the next use loads them again.
    pub fn reload(&mut self) {
        drop_slot(&mut self.reconstruct);
        drop_slot(&mut self.generate);
        self.generation += 1;
    }

    /// Loads again only the engines whose load failed (Retry), keeping the ones that work and
    /// the results made with them (the generation number stays: a failed engine made none).
    pub fn retry_failed(&mut self) {
        if matches!(self.reconstruct, Slot::Failed(_)) {
            self.reconstruct = Slot::Idle;
        }
        if matches!(self.generate, Slot::Failed(_)) {
            self.generate = Slot::Idle;
        }
    }

    /// True while any engine is loading.
    pub fn loading(&self) -> bool {
        matches!(self.reconstruct, Slot::Loading(_)) || matches!(self.generate, Slot::Loading(_))
    }

    /// The device description of whichever engine is loaded.
    pub fn device_description(&self) -> Option<String> {
        match (&self.reconstruct, &self.generate) {
            (Slot::Ready(engine), _) => Some(engine.device.description.clone()),
            (_, Slot::Ready(engine)) => Some(engine.device.description.clone()),
            _ => None,
        }
    }

    /// Collects finished loads without starting new ones (called every frame).
    pub fn poll(&mut self) {
        finish_loading(&mut self.reconstruct);
        finish_loading(&mut self.generate);
    }

    /// The reconstruction engine, starting to load it if needed.
    pub fn reconstruct(&mut self) -> EngineStatus<ReconstructEngine> {
        let spec = self.key.reconstruct_spec();
        let choice = self.key.device;
        poll_slot(
            &mut self.reconstruct,
            &self.notify,
            "load models",
            move |progress, cancel| {
                let device = open_device(choice, progress)?;
                ReconstructEngine::load_reporting(&spec, device, progress, cancel)
            },
        )
    }

    /// The generation engine, starting to load it if needed.
    pub fn generate(&mut self) -> EngineStatus<GenerateEngine> {
        let spec = self.key.generate_spec();
        let choice = self.key.device;
        poll_slot(
            &mut self.generate,
            &self.notify,
            "load generator",
            move |progress, cancel| {
                let device = open_device(choice, progress)?;
                GenerateEngine::load_reporting(&spec, device, progress, cancel)
            },
        )
    }
}

/// Empties a slot, stopping its load if one runs.
fn drop_slot<T: Send + Sync + 'static>(slot: &mut Slot<T>) {
    if let Slot::Loading(job) = slot {
        job.cancel();
    }
    *slot = Slot::Idle;
}

fn poll_slot<T: Send + Sync + 'static>(
    slot: &mut Slot<T>,
    notify: &Arc<dyn Fn() + Send + Sync>,
    name: &str,
    load: impl FnOnce(&dyn ProgressSink, &crate::jobs::CancelToken) -> anyhow::Result<T>
    + Send
    + 'static,
) -> EngineStatus<T> {
    if let Slot::Idle = slot {
        *slot = Slot::Loading(Job::spawn(name, notify.clone(), move |progress, cancel| {
            load(progress, cancel).map(Arc::new)
        }));
    }
    let progress = finish_loading(slot);
    match slot {
        Slot::Ready(engine) => EngineStatus::Ready(engine.clone()),
        Slot::Failed(message) => EngineStatus::Failed(message.clone()),
        Slot::Idle | Slot::Loading(_) => EngineStatus::Loading(progress),
    }
}

/// Opens the chosen device, saying so first: finding a GPU adapter can take a moment.
fn open_device(
    choice: DeviceChoice,
    progress: &dyn ProgressSink,
) -> anyhow::Result<device::SelectedDevice> {
    progress.report(Progress {
        done: 0,
        total: 0,
        message: "opening the device".into(),
    });
    Ok(device::select(choice)?)
}

/// Moves a finished load into its slot; while it runs, answers its latest progress report.
fn finish_loading<T: Send + Sync + 'static>(slot: &mut Slot<T>) -> Option<Progress> {
    if let Slot::Loading(job) = slot {
        match job.poll() {
            JobState::Running(progress) => return progress,
            JobState::Finished(Ok(engine)) => *slot = Slot::Ready(engine),
            JobState::Finished(Err(error)) => *slot = Slot::Failed(format!("{error:#}")),
            JobState::Cancelled | JobState::Collected => {
                *slot = Slot::Failed("loading was stopped".into())
            }
        }
    }
    None
}
