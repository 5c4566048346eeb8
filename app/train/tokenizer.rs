//! Training a TexTok or Baseline tokenizer on a captioned image folder.
//!
//! Loss: `l2_weight * MSE(reconstruction, image) + perceptual_weight * D_effnet(reconstruction,
//! image)` (the paper's 1.0 / 0.1; D_effnet is an LPIPS-style distance on frozen
//! EfficientNet-Lite0 features) at one random budget k per step (nested tail drop, so one
//! checkpoint serves every budget), plus, from `discriminator_start` on, `adversarial_weight *`
//! the non-saturating GAN loss against a PatchGAN discriminator trained with an R1 penalty on
//! real images and LeCAM regularisation. burn has no double backward, so R1 (`|grad_x D(x)|^2`)
//! is estimated by a finite difference along a random direction u ~ N(0, I):
//! `E_u[((D(x + h u) - D(x)) / h)^2] = |grad_x D(x)|^2 + O(h)`. AdamW with linear warm-up and cosine decay,
//! per-tensor gradient-norm clipping, EMA weights kept on the host. A run folder holds
//! `config.json`, `log.jsonl`, `state.safetensors` (model, EMA, optimizer, RNG: everything a
//! bit-for-bit resume needs, written atomically), `ema.safetensors` (latest EMA weights) and
//! `best-ema.safetensors` (EMA weights with the best validation PSNR).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use burn::module::Module;
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::store::ModuleSnapshot;
use burn::tensor::activation::softplus;
use burn::tensor::{Bytes, Device, Tensor, TensorData};
use image::Rgb32FImage;
use serde::{Deserialize, Serialize};

use super::{Eta, SplitMix64, StepTarget, learning_rate};
use crate::checkpoint::{
    CheckpointFile, HostTensor, PARAM_IDS_KEY, StoredPrecision, expected_parameters,
    host_to_module, module_to_host, save_host_tensors, serialize_host_tensors,
};
use crate::data::dataset::{DatasetItem, Split};
use crate::jobs::CancelToken;
use crate::metrics;
use crate::model::discriminator::{Discriminator, DiscriminatorConfig};
use crate::model::effnet::EfficientNet;
use crate::model::text_encoder::{MiniLmTextEncoder, TextEmbeddings, TextEncoder};
use crate::model::textok::{KIND_TEXTOK, MIN_BUDGET, TexTok, TexTokConfig};

/// Checkpoint kind of a tokenizer training state.
pub const KIND_TRAIN_STATE: &str = "textok-train-state";
/// Budgets at which validation PSNR is measured.
pub const EVAL_BUDGETS: [usize; 4] = [32, 64, 128, 256];
/// Validation images kept with their reconstructions in each [`EvalReport`].
pub const EVAL_SAMPLES: usize = 4;

/// Everything that defines a run. Stored as `config.json` in the run folder; a resumed run must
/// use the same settings (only `steps` may grow).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenizerTrainConfig {
    pub data: PathBuf,
    pub preset: String,
    pub text_conditioning: bool,
    pub steps: usize,
    pub batch: usize,
    pub learning_rate: f64,
    pub warmup_steps: usize,
    pub min_lr_ratio: f64,
    pub weight_decay: f64,
    /// Per-tensor gradient L2-norm limit (burn's clipping is per parameter tensor).
    pub grad_clip_norm: f64,
    pub ema_decay: f64,
    pub l2_weight: f64,
    /// Weight of the EfficientNet-Lite0 perceptual loss (0 switches it off).
    pub perceptual_weight: f64,
    pub min_budget: usize,
    pub max_budget: usize,
    pub validation_percent: u32,
    pub seed: u64,
    pub checkpoint_minutes: f64,
    pub eval_every: usize,
    pub eval_images: usize,
    pub max_text_tokens: usize,
    /// Weight of the non-saturating adversarial loss (the paper: 0.1; 0 = off, our CPU default).
    #[serde(default)]
    pub adversarial_weight: f64,
    /// Step at which the discriminator and the adversarial loss start.
    #[serde(default = "default_discriminator_start")]
    pub discriminator_start: usize,
    /// R1 gradient penalty weight on real images.
    #[serde(default = "default_r1_weight")]
    pub r1_weight: f64,
    /// LeCAM regularisation weight.
    #[serde(default = "default_lecam_weight")]
    pub lecam_weight: f64,
    /// Fine-tuning: start from this TexTok checkpoint (its architecture replaces `preset`)
    /// instead of a random initialisation.
    #[serde(default)]
    pub init_from: Option<PathBuf>,
    /// Decoder robustness: before decoding, add Gaussian noise of standard deviation
    /// `sigma * (the batch's per-channel token std)`, with sigma drawn in [0, token_noise] per
    /// image. A DiT's samples are never exact, and a decoder trained on exact tokens turns a
    /// 10 % error into a mosaic of wrong patches (measured on the first shipped TexTok). 0 = off.
    #[serde(default)]
    pub token_noise: f64,
    /// Train only the detokenizer: the tokens stay exactly as they were, so a DiT trained on
    /// them stays valid (use with `init_from`).
    #[serde(default)]
    pub freeze_encoder: bool,
    /// Add a convolutional refinement head of this many channels after the detokenizer
    /// ([`crate::model::textok::RefineHead`]): to a preset's new model, or to an `init_from`
    /// model that has none (it starts as the identity, so the fine-tune starts where the
    /// model was). `None`: the model's own architecture.
    #[serde(default)]
    pub refine_channels: Option<usize>,
    /// A detokenizer for generated tokens: before decoding, regenerate each batch's tokens
    /// partially with this DiT ([`crate::model::dit::regenerate`]: a timestep drawn uniformly
    /// in `0..=regenerate_max_t` per step, rounded down to the 10-step DDIM grid 0, 100, ...,
    /// 900, the tokens noised to it and sampled back along the grid with guidance 3), so the
    /// detokenizer learns the generator's own errors rather than Gaussian stand-ins
    /// ([`Self::token_noise`]). With 400: t = 0, 100, 200 or 300 about a quarter of the steps
    /// each (400 one step in 401); t = 0 is one cleaning step, nearly the exact tokens. Needs
    /// `freeze_encoder` (the DiT reads the tokens it was trained on) and a TexTok (the DiT
    /// reads the captions).
    #[serde(default)]
    pub regenerate_with: Option<PathBuf>,
    /// Largest timestep [`Self::regenerate_with`] draws (0..1000), before rounding down to
    /// the grid.
    #[serde(default = "default_regenerate_max_t")]
    pub regenerate_max_t: usize,
}

fn default_regenerate_max_t() -> usize {
    400
}

fn default_discriminator_start() -> usize {
    2000
}
fn default_r1_weight() -> f64 {
    10.0
}
fn default_lecam_weight() -> f64 {
    1e-4
}

/// Which training-config fields each `train tokenizer` flag sets (flags that set none, such as
/// --out, --device or --max-minutes, are left out).
pub const FLAG_FIELDS: &[(&str, &str)] = &[
    ("data", "data"),
    ("preset", "preset"),
    ("no_text", "text_conditioning"),
    ("steps", "steps"),
    ("batch", "batch"),
    ("lr", "learning_rate"),
    ("warmup", "warmup_steps"),
    ("seed", "seed"),
    ("eval_every", "eval_every"),
    ("eval_images", "eval_images"),
    ("perceptual_weight", "perceptual_weight"),
    ("adversarial_weight", "adversarial_weight"),
    ("discriminator_start", "discriminator_start"),
    ("token_noise", "token_noise"),
    ("freeze_encoder", "freeze_encoder"),
    ("checkpoint_minutes", "checkpoint_minutes"),
    ("init_from", "init_from"),
    ("refine_head", "refine_channels"),
    ("regenerate_with", "regenerate_with"),
    ("regenerate_max_t", "regenerate_max_t"),
];

impl super::RunConfig for TokenizerTrainConfig {
    const FLAG_FIELDS: &'static [(&'static str, &'static str)] = FLAG_FIELDS;
    fn schedule(&self) -> (usize, usize) {
        (self.steps, self.warmup_steps)
    }
    fn with_schedule(&self, steps: usize, warmup_steps: usize) -> Self {
        Self {
            steps,
            warmup_steps,
            ..self.clone()
        }
    }
}

impl TokenizerTrainConfig {
    pub fn new(
        data: PathBuf,
        preset: &str,
        text_conditioning: bool,
        steps: usize,
        batch: usize,
    ) -> Self {
        Self {
            data,
            preset: preset.to_owned(),
            text_conditioning,
            steps,
            batch,
            learning_rate: 3e-4,
            warmup_steps: super::default_warmup(steps),
            min_lr_ratio: 0.1,
            weight_decay: 1e-4,
            grad_clip_norm: 1.0,
            ema_decay: 0.999,
            l2_weight: 1.0,
            perceptual_weight: 0.1,
            min_budget: MIN_BUDGET,
            max_budget: 256,
            validation_percent: 5,
            seed: 0,
            checkpoint_minutes: 5.0,
            eval_every: 500,
            eval_images: 64,
            max_text_tokens: 32,
            adversarial_weight: 0.0,
            discriminator_start: default_discriminator_start(),
            r1_weight: default_r1_weight(),
            lecam_weight: default_lecam_weight(),
            init_from: None,
            token_noise: 0.0,
            freeze_encoder: false,
            refine_channels: None,
            regenerate_with: None,
            regenerate_max_t: default_regenerate_max_t(),
        }
    }

    /// The model config this run trains: the preset's, or the `init_from` checkpoint's.
    pub fn model_config(&self) -> anyhow::Result<TexTokConfig> {
        if let Some(path) = &self.init_from {
            // The kind first: a DiT file should say so, not fail as a bad TexTok config.
            let file = CheckpointFile::read_kind(path, crate::model::textok::KIND_TEXTOK)?;
            let config: TexTokConfig = file.config("TexTok")?;
            ensure!(
                config.text_conditioning == self.text_conditioning,
                "{}: is a {} model, but this run trains a {} model",
                path.display(),
                if config.text_conditioning {
                    "TexTok"
                } else {
                    "Baseline"
                },
                if self.text_conditioning {
                    "TexTok"
                } else {
                    "Baseline"
                }
            );
            config
                .validate()
                .map_err(|reason| anyhow::anyhow!("{}: {reason}", path.display()))?;
            return self.with_refine_head(config, &path.display().to_string());
        }
        let mut config =
            TexTokConfig::preset(&self.preset, self.text_conditioning).with_context(|| {
                format!(
                    "unknown preset `{}`; choose one of {:?}",
                    self.preset,
                    TexTokConfig::PRESETS
                )
            })?;
        config.max_text_tokens = self.max_text_tokens;
        let config = self.with_refine_head(config, "the preset")?;
        config.validate().map_err(anyhow::Error::msg)?;
        Ok(config)
    }

    /// `model` with the refinement head this run asks for, if any: added where it has none,
    /// refused where it has one of another size (`origin` names the model in the message).
    fn with_refine_head(
        &self,
        mut model: TexTokConfig,
        origin: &str,
    ) -> anyhow::Result<TexTokConfig> {
        match (self.refine_channels, model.refine_channels) {
            (Some(wanted), Some(has)) if wanted != has => anyhow::bail!(
                "{origin} already has a refinement head of {has} channels (given: --refine-head \
                 {wanted}); leave --refine-head out to fine-tune it"
            ),
            (Some(wanted), _) => model.refine_channels = Some(wanted),
            (None, _) => {}
        }
        Ok(model)
    }

    /// Checks the settings alone (no files read): the command line calls it before it opens a
    /// device, the trainer again on the config it resolved.
    pub fn check(&self) -> anyhow::Result<()> {
        ensure!(
            self.steps > 0 && self.batch > 0,
            "steps and batch must be positive"
        );
        // Checked here, before the device opens and the run folder is written; a run from a
        // checkpoint takes that checkpoint's shape.
        ensure!(
            self.init_from.is_some() || TexTokConfig::preset(&self.preset, true).is_some(),
            "unknown model preset `{}`; choose one of {:?}",
            self.preset,
            TexTokConfig::PRESETS
        );
        ensure!(
            MIN_BUDGET <= self.min_budget
                && self.min_budget <= self.max_budget
                && self.max_budget <= 256,
            "budgets must satisfy 32 <= min <= max <= 256"
        );
        ensure!(
            (0.0..1.0).contains(&self.ema_decay),
            "ema_decay must be in [0, 1)"
        );
        ensure!(
            self.validation_percent < 100,
            "validation_percent must be below 100"
        );
        ensure!(
            self.token_noise.is_finite() && (0.0..=10.0).contains(&self.token_noise),
            "token_noise must be between 0 and 10"
        );
        ensure!(
            self.refine_channels.is_none_or(|c| (1..=256).contains(&c)),
            "--refine-head must be 1..=256 channels"
        );
        ensure!(
            !self.freeze_encoder || self.init_from.is_some(),
            "--freeze-encoder needs --init-from (a trained model whose encoder to keep)"
        );
        ensure!(
            self.regenerate_with.is_none() || (self.freeze_encoder && self.text_conditioning),
            "--regenerate-with trains a TexTok's detokenizer for a DiT's tokens: it needs \
             --freeze-encoder (the DiT reads the tokens it was trained on) and a TexTok (not \
             --no-text)"
        );
        ensure!(
            self.regenerate_max_t < 1000,
            "--regenerate-max-t must be below 1000 (the diffusion's timesteps)"
        );
        ensure!(
            [
                self.l2_weight,
                self.perceptual_weight,
                self.adversarial_weight,
                self.lecam_weight
            ]
            .iter()
            .all(|weight| weight.is_finite() && *weight >= 0.0),
            "loss weights must be 0 or more"
        );
        super::check_optimizer_settings(
            self.learning_rate,
            self.min_lr_ratio,
            self.weight_decay,
            self.grad_clip_norm,
            self.checkpoint_minutes,
        )
    }
}

/// One optimisation step, as reported to the observer.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub step: usize,
    pub total: usize,
    pub loss: f64,
    pub budget: usize,
    pub lr: f64,
    pub images_per_second: Option<f64>,
    pub eta_seconds: Option<f64>,
}

impl StepReport {
    /// The step's own numbers; rate and ETA are filled in by [`super::report_step`].
    pub fn new(step: usize, total: usize, loss: f64, budget: usize, lr: f64) -> Self {
        Self {
            step,
            total,
            loss,
            budget,
            lr,
            images_per_second: None,
            eta_seconds: None,
        }
    }
}

/// Validation of the EMA weights.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvalReport {
    pub step: usize,
    pub images: usize,
    /// Mean PSNR (dB) per budget, in `EVAL_BUDGETS` order.
    pub psnr: Vec<(usize, f64)>,
    pub mean_psnr: f64,
    /// False when the split had no validation images and training images were scored
    /// instead (a handful of the user's own pictures): then this is not a held-out score.
    pub held_out: bool,
    /// The first few validation images with their reconstructions at the largest budget, for
    /// the GUI's "validation reconstructions" (not logged).
    #[serde(skip)]
    pub samples: Vec<(Rgb32FImage, Rgb32FImage)>,
}

/// Receives training events (CLI progress line, GUI loss plot).
pub trait TrainObserver: Send + Sync {
    fn on_step(&self, _report: &StepReport) {}
    fn on_eval(&self, _report: &EvalReport) {}
    fn on_message(&self, _message: &str) {}
}

pub struct SilentObserver;
impl TrainObserver for SilentObserver {}

#[derive(Debug, Clone, PartialEq)]
pub struct TrainOutcome {
    pub step: usize,
    pub finished: bool,
    pub last_eval: Option<EvalReport>,
}

/// The frozen networks training needs.
#[derive(Debug, Clone)]
pub struct TrainingModels {
    pub text_encoder_dir: PathBuf,
    pub effnet: PathBuf,
}

impl TrainingModels {
    pub fn shipped() -> Self {
        Self {
            text_encoder_dir: crate::paths::text_encoder_dir(),
            effnet: crate::paths::effnet_checkpoint(),
        }
    }
}

/// Files of a run folder.
pub struct RunPaths {
    pub dir: PathBuf,
}

impl RunPaths {
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.json")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.join(super::TRAINING_STATE_FILE)
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("log.jsonl")
    }
    pub fn ema(&self) -> PathBuf {
        self.dir.join("ema.safetensors")
    }
    pub fn best_ema(&self) -> PathBuf {
        self.dir.join("best-ema.safetensors")
    }
}

/// Mutable training state saved in `state.safetensors`.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub step: usize,
    pub rng: SplitMix64,
    pub best_psnr: f64,
    pub elapsed_seconds: f64,
}

/// The optimizer a run uses (AdamW with per-tensor gradient clipping).
pub fn new_optimizer(config: &TokenizerTrainConfig) -> ModuleOptimizer {
    new_optimizer_with(config.weight_decay, config.grad_clip_norm)
}

/// AdamW with the given weight decay and per-tensor gradient-norm clipping.
pub fn new_optimizer_with(weight_decay: f64, grad_clip_norm: f64) -> ModuleOptimizer {
    AdamWConfig::new()
        .with_weight_decay(weight_decay as f32)
        .with_grad_clipping(Some(GradientClippingConfig::Norm(grad_clip_norm as f32)))
        .init()
}

/// The shared decode cache for a dataset folder at one size.
pub fn cache_file(data: &Path, size: u32) -> Option<PathBuf> {
    let (dir, prefix) = cache_location(data)?;
    crate::files::remove_stale_temp_files(&dir, STALE_TEMP_AGE);
    Some(dir.join(format!("{prefix}{size}.bin")))
}

/// How old a temporary file of an interrupted write must be before it is swept away.
pub const STALE_TEMP_AGE: Duration = Duration::from_secs(6 * 3600);

/// The decode caches of a dataset folder at every size (the folder must still exist): what
/// deleting a run whose images were copied into it removes as well.
pub fn cache_files(data: &Path) -> Vec<PathBuf> {
    let Some((dir, prefix)) = cache_location(data) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
        .map(|entry| entry.path())
        .collect()
}

/// The decode caches' folder, and the file-name prefix of `data`'s caches in it.
fn cache_location(data: &Path) -> Option<(PathBuf, String)> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        // Windows sets neither.
        .or_else(|| std::env::var_os("LOCALAPPDATA").map(PathBuf::from))?;
    let canonical = data.canonicalize().ok()?;
    let mut hash: u64 = 0xcbf29ce484222325;
    for byte in canonical.to_string_lossy().as_bytes() {
        hash = (hash ^ *byte as u64).wrapping_mul(0x100000001b3);
    }
    Some((
        base.join("textok-studio").join("decoded"),
        format!("{hash:016x}-"),
    ))
}

/// Trains (or resumes) a tokenizer in `run_dir`. Returns when `config.steps` are done (with
/// `time_limit`, the steps that fit in it: `TimeLimit`) or `cancel` is set; either way the state
/// is saved first.
#[allow(clippy::too_many_arguments)]
pub fn train_tokenizer(
    run_dir: &Path,
    requested: &TokenizerTrainConfig,
    resume: bool,
    time_limit: Option<Duration>,
    device: &Device,
    models: &TrainingModels,
    observer: &dyn TrainObserver,
    cancel: &CancelToken,
) -> anyhow::Result<TrainOutcome> {
    let text_encoder_dir = models.text_encoder_dir.as_path();
    let paths = RunPaths {
        dir: run_dir.to_owned(),
    };
    let _run_claim = super::claim_run_dir(run_dir, resume)?;
    let config = super::resolve_run_config(run_dir, requested, resume)?;
    config.check()?;
    let model_config = if resume {
        let stored: TexTokConfig = saved_model_config(&paths.state(), "TexTok")?;
        stored
            .validate()
            .map_err(|reason| anyhow::anyhow!("{}: {reason}", paths.state().display()))?;
        stored
    } else {
        config.model_config()?
    };
    // A checkpoint to start from may hold fewer than the default 256 tokens: train the
    // budgets it has.
    let max_budget = config.max_budget.min(model_config.max_tokens);
    ensure!(
        config.min_budget <= max_budget,
        "the smallest budget, {}, is more than the model's {} tokens",
        config.min_budget,
        model_config.max_tokens
    );

    // Data.
    let size = model_config.image_size as u32;
    observer.on_message(&format!("loading {} at {size} px", config.data.display()));
    let dataset = super::load_training_data(&config.data, size, config.validation_percent, cancel)?;
    let train: Vec<&DatasetItem> = dataset.split(Split::Train);
    let mut validation: Vec<&DatasetItem> = dataset
        .split(Split::Validation)
        .into_iter()
        .take(config.eval_images)
        .collect();
    let held_out = !validation.is_empty();
    if !held_out {
        // A handful of the user's own pictures can hash entirely into the training split; the
        // progress reconstructions then show training images rather than nothing.
        observer.on_message("no validation images in the split; evaluating on training images");
        validation = train.iter().copied().take(config.eval_images).collect();
    }
    ensure!(
        !train.is_empty(),
        "{}: no training images after the split",
        config.data.display()
    );
    observer.on_message(&format!(
        "{} training and {} validation images; {}",
        train.len(),
        dataset.split(Split::Validation).len(),
        dataset.skip_report().trim_end()
    ));

    // Caption embeddings never change (the encoder is frozen): compute them once. (With
    // regeneration, the DiT's null caption too.)
    let plain = device.clone();
    let mut null_caption = None;
    let captions = if config.text_conditioning {
        let encoder = MiniLmTextEncoder::load(text_encoder_dir, config.max_text_tokens, &plain)?;
        ensure!(
            encoder.width() == model_config.text_dim,
            "text encoder width does not match the model"
        );
        observer.on_message("encoding captions");
        let all: Vec<&DatasetItem> = train.iter().chain(validation.iter()).copied().collect();
        if config.regenerate_with.is_some() {
            null_caption = Some(CaptionStore::encode_one(&encoder, "")?);
        }
        Some(CaptionStore::build(&encoder, &all, cancel)?)
    } else {
        None
    };

    let regenerator = match (&config.regenerate_with, null_caption) {
        (Some(path), Some(null_caption)) => {
            observer.on_message(&format!(
                "regenerating the tokens with {} before decoding",
                path.display()
            ));
            let (regenerator, warning) = TokenRegenerator::load(
                path,
                &config,
                &model_config,
                max_budget,
                null_caption,
                resume,
                &plain,
            )?;
            if let Some(warning) = warning {
                observer.on_message(&warning);
            }
            Some(regenerator)
        }
        _ => None,
    };

    // Model, optimizer, EMA, progress: fresh or restored.
    let autodiff = plain.clone().autodiff();
    let perceptual = if config.perceptual_weight > 0.0 {
        Some(EfficientNet::load(&models.effnet, &autodiff)?.no_grad())
    } else {
        None
    };
    // A resumed run's weights all come from its state (below), so only a new fine-tune reads
    // the checkpoint it starts from.
    let mut model = match (&config.init_from, resume) {
        (Some(path), false) => {
            observer.on_message(&format!("fine-tuning {}", path.display()));
            let mut model = TexTok::load(path, &autodiff)?.0;
            if let (Some(channels), None) = (model_config.refine_channels, &model.refine) {
                // Starts as the identity: the fine-tune starts where the checkpoint was.
                observer.on_message(&format!("adding a refinement head of {channels} channels"));
                model.refine = Some(crate::device::init_module(
                    &autodiff,
                    Some(config.seed),
                    || crate::model::textok::RefineHead::new(channels, &autodiff),
                ));
            }
            model
        }
        _ => crate::device::init_module(&autodiff, Some(config.seed), || {
            model_config.init(&autodiff)
        }),
    };
    let mut optimizer = new_optimizer(&config);
    let mut gan = (config.adversarial_weight > 0.0).then(|| Adversary {
        discriminator: crate::device::init_module(&autodiff, Some(config.seed ^ 0xD15C), || {
            DiscriminatorConfig::new().init(&autodiff)
        }),
        optimizer: new_optimizer(&config),
        lecam_real: 0.0,
        lecam_fake: 0.0,
    });
    let mut ema = module_to_host(&model).map_err(anyhow::Error::msg)?;
    let mut progress = Progress {
        step: 0,
        rng: SplitMix64::new(config.seed ^ 0x5EED),
        best_psnr: f64::NEG_INFINITY,
        elapsed_seconds: 0.0,
    };
    if resume {
        let restored = load_state(&paths.state(), &model, optimizer)?;
        model = restored.0;
        optimizer = restored.1;
        ema = restored.2;
        progress = restored.3;
        if let Some(adversary) = gan.take() {
            gan = Some(adversary.restore(&paths.state())?);
        }
        observer.on_message(&format!("resumed at step {}", progress.step));
    }
    if config.freeze_encoder {
        model = model.with_frozen_encoder();
    }
    let mut ema = HostEma::new(ema, config.ema_decay, 1);

    let started = Instant::now();
    // The limit counts from here: data loading and caption encoding are not training time.
    let schedule_steps = if resume {
        super::resumed_schedule(&paths.state(), config.steps)?
    } else {
        config.steps
    };
    let mut step_target = StepTarget::new(schedule_steps, progress.step, time_limit, started);
    if !validation.is_empty() {
        step_target = step_target.evaluating_every(config.eval_every);
    }
    let mut total_steps = schedule_steps;
    let elapsed_before = progress.elapsed_seconds;
    let mut eta = Eta::new();
    let mut last_save = Instant::now();
    let mut last_eval = None;
    let save = |model: &TexTok,
                optimizer: &ModuleOptimizer,
                ema: &[HostTensor],
                progress: &Progress,
                total_steps: usize,
                gan: &Option<Adversary>|
     -> anyhow::Result<()> {
        let extras = match gan {
            Some(adversary) => adversary.extras()?,
            None => StateExtras::default(),
        };
        save_state(
            &paths.state(),
            &model_config,
            &config,
            TrainingState {
                model,
                optimizer,
                ema,
                progress,
                total_steps,
            },
            &extras,
        )?;
        save_host_tensors(
            ema,
            &paths.ema(),
            KIND_TEXTOK,
            &model_config,
            StoredPrecision::F32,
            HashMap::new(),
        )?;
        Ok(())
    };

    while progress.step < total_steps {
        if cancel.is_cancelled() {
            break;
        }
        let step = progress.step;
        let budget = progress.rng.range(config.min_budget, max_budget);
        let batch: Vec<&DatasetItem> = (0..config.batch)
            .map(|_| train[progress.rng.range(0, train.len() - 1)])
            .collect();
        let images = pixels_to_tensor(&batch, &autodiff);
        let text = captions
            .as_ref()
            .map(|store| store.batch(&batch, &autodiff));

        let mut tokens = model
            .encode(images.clone(), text.as_ref())
            .narrow(1, 0, budget);
        if config.freeze_encoder {
            tokens = tokens.detach();
        }
        if let (Some(regenerator), Some(store)) = (&regenerator, &captions) {
            tokens = regenerator.apply(tokens, &batch, store, &mut progress.rng)?;
        }
        if config.token_noise > 0.0 {
            tokens = tokens.clone() + token_noise(&tokens, config.token_noise, &mut progress.rng);
        }
        let reconstruction = model.decode(tokens, text.as_ref());
        let mut loss = (reconstruction.clone() - images.clone())
            .powi_scalar(2)
            .mean()
            .mul_scalar(config.l2_weight);
        if let Some(net) = &perceptual {
            loss = loss
                + net
                    .perceptual_distance(reconstruction.clone(), images.clone().detach())
                    .mul_scalar(config.perceptual_weight);
        }
        let adversarial = gan.as_ref().filter(|_| step >= config.discriminator_start);
        if let Some(adversary) = adversarial {
            // Non-saturating generator loss; only the tokenizer's gradients are applied below.
            let fake_logits = adversary.discriminator.forward(reconstruction.clone());
            loss = loss
                + softplus(fake_logits.neg(), 1.0)
                    .mean()
                    .mul_scalar(config.adversarial_weight);
        }
        let loss_value: f64 = loss.clone().into_scalar::<f32>() as f64;
        ensure!(
            loss_value.is_finite(),
            "the loss became {loss_value} at step {step}; start a new run with a lower learning \
             rate (--init-from this run's ema.safetensors keeps what it learned; --resume \
             replays the same steps)"
        );
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let lr = learning_rate(
            step,
            total_steps,
            // A time limit can shorten the run below its warm-up: still end annealed.
            config.warmup_steps.min(total_steps / 2),
            config.learning_rate,
            config.min_lr_ratio,
        );
        model = optimizer.step(lr, model, grads);
        if let Some(adversary) = gan.as_mut().filter(|_| step >= config.discriminator_start) {
            adversary.step(
                images.detach(),
                reconstruction.detach(),
                &config,
                lr,
                progress.rng.next_u64(),
            )?;
        }
        progress.step += 1;
        ema.after_step(&model, progress.step)?;
        progress.elapsed_seconds = elapsed_before + started.elapsed().as_secs_f64();

        total_steps = step_target.after(progress.step, &eta);
        let numbers = StepReport::new(progress.step, total_steps, loss_value, budget, lr);
        super::report_step(
            &mut eta,
            numbers,
            config.batch,
            progress.elapsed_seconds,
            observer,
            &paths.log(),
        );

        let eval_due =
            progress.step.is_multiple_of(config.eval_every.max(1)) || progress.step == total_steps;
        if eval_due && !validation.is_empty() {
            let evaluation_started = Instant::now();
            let fresh = crate::device::init_module(&plain, None, || model_config.init(&plain));
            let ema_model =
                host_to_module(fresh, ema.weights.clone()).map_err(anyhow::Error::msg)?;
            let report = evaluate(
                &ema_model,
                &validation,
                captions.as_ref(),
                progress.step,
                held_out,
                &plain,
            );
            super::log_event(
                &paths.log(),
                &serde_json::json!({"event": "eval", "step": report.step, "psnr": report.psnr,
                "mean_psnr": report.mean_psnr, "images": report.images, "held_out": held_out}),
            );
            observer.on_eval(&report);
            if report.mean_psnr > progress.best_psnr {
                progress.best_psnr = report.mean_psnr;
                save_host_tensors(
                    &ema.weights,
                    &paths.best_ema(),
                    KIND_TEXTOK,
                    &model_config,
                    StoredPrecision::F32,
                    HashMap::new(),
                )?;
            }
            last_eval = Some(report);
            let took = evaluation_started.elapsed();
            eta.exclude(took);
            step_target.record_evaluation(took);
        }
        if last_save.elapsed().as_secs_f64() >= config.checkpoint_minutes * 60.0 {
            let save_started = Instant::now();
            save(
                &model,
                &optimizer,
                &ema.weights,
                &progress,
                total_steps,
                &gan,
            )?;
            eta.exclude(save_started.elapsed());
            last_save = Instant::now();
        }
        if step_target.out_of_time(progress.step, total_steps) {
            observer.on_message(&super::out_of_time_message(progress.step, &step_target));
            break;
        }
    }
    save(
        &model,
        &optimizer,
        &ema.weights,
        &progress,
        total_steps,
        &gan,
    )?;
    let finished = progress.step >= total_steps;
    observer.on_message(&format!(
        "saved step {} to {}",
        progress.step,
        run_dir.display()
    ));
    Ok(TrainOutcome {
        step: progress.step,
        finished,
        last_eval,
    })
}

/// The EMA decay at `step`: `min(decay, (1 + step) / (10 + step))`, so early in a run the
/// average follows the weights instead of staying near the random initialisation.
pub fn ema_decay_at(decay: f64, step: usize) -> f64 {
    decay.min((1 + step) as f64 / (10 + step) as f64)
}

/// `ema = decay * ema + (1 - decay) * params`, on the host.
pub fn update_ema<M: Module + ModuleSnapshot>(
    ema: &mut [HostTensor],
    model: &M,
    decay: f64,
) -> anyhow::Result<()> {
    let params = module_to_host(model).map_err(anyhow::Error::msg)?;
    let (d, one_minus) = (decay as f32, (1.0 - decay) as f32);
    for (average, current) in ema.iter_mut().zip(params) {
        debug_assert_eq!(average.name, current.name);
        for (a, c) in average.values.iter_mut().zip(current.values) {
            // A weight equal to its average stays exactly so: `d*a + (1-d)*a` can round a few
            // ulps away, and a frozen encoder must keep its bits (its hash keys the tokens).
            if *a != c {
                *a = d * *a + one_minus * c;
            }
        }
    }
    Ok(())
}

/// The decay that stands for the `steps` single-step EMA updates of steps `first_step..`: the
/// product of their decays. For weights that did not change over those steps, one update with
/// it gives exactly what the single updates give.
pub fn ema_decay_over(decay: f64, first_step: usize, steps: usize) -> f64 {
    (first_step..first_step + steps)
        .map(|step| ema_decay_at(decay, step))
        .product()
}

/// EMA weights kept on the host, brought up to date every `every` optimizer steps with the
/// decay of all the steps since the last update ([`ema_decay_over`]). Why not every step:
/// each update reads every weight back from the device, which on a GPU is one transfer and
/// one wait per tensor (about 100 for `dit-small`) in a loop that otherwise never waits.
pub struct HostEma {
    pub weights: Vec<HostTensor>,
    decay: f64,
    every: usize,
    /// Optimizer steps taken since the last update.
    pending: usize,
}

impl HostEma {
    pub fn new(weights: Vec<HostTensor>, decay: f64, every: usize) -> Self {
        Self {
            weights,
            decay,
            every: every.max(1),
            pending: 0,
        }
    }

    /// Call after each optimizer step; `steps_done` counts that step.
    pub fn after_step<M: Module + ModuleSnapshot>(
        &mut self,
        model: &M,
        steps_done: usize,
    ) -> anyhow::Result<()> {
        self.pending += 1;
        if self.pending >= self.every {
            self.catch_up(model, steps_done)?;
        }
        Ok(())
    }

    /// Applies the pending steps now: before the weights are saved or evaluated.
    pub fn catch_up<M: Module + ModuleSnapshot>(
        &mut self,
        model: &M,
        steps_done: usize,
    ) -> anyhow::Result<()> {
        if self.pending > 0 {
            let decay = ema_decay_over(self.decay, steps_done - self.pending, self.pending);
            update_ema(&mut self.weights, model, decay)?;
            self.pending = 0;
        }
        Ok(())
    }
}

/// 8-bit RGB items -> `[batch, 3, H, W]` in [-1, 1].
pub fn pixels_to_tensor(items: &[&DatasetItem], device: &Device) -> Tensor<4> {
    let (w, h) = items[0].pixels.dimensions();
    let (w, h) = (w as usize, h as usize);
    let mut data = vec![0.0f32; items.len() * 3 * h * w];
    for (i, item) in items.iter().enumerate() {
        for (x, y, pixel) in item.pixels.enumerate_pixels() {
            for c in 0..3 {
                data[((i * 3 + c) * h + y as usize) * w + x as usize] =
                    pixel.0[c] as f32 / 127.5 - 1.0;
            }
        }
    }
    Tensor::from_data(TensorData::new(data, [items.len(), 3, h, w]), device)
}

/// Caption embeddings of every item, computed once, keyed by relative path.
pub struct CaptionStore {
    width: usize,
    /// relative path -> (tokens, token-major values)
    embeddings: HashMap<String, CaptionRow>,
}

impl CaptionStore {
    pub fn build(
        encoder: &dyn TextEncoder,
        items: &[&DatasetItem],
        cancel: &CancelToken,
    ) -> anyhow::Result<Self> {
        let width = encoder.width();
        let mut embeddings = HashMap::new();
        for chunk in items.chunks(64) {
            cancel.check()?;
            let captions: Vec<&str> = chunk.iter().map(|item| item.caption.as_str()).collect();
            let out = encoder.encode(&captions)?;
            let [_, tokens, _] = out.hidden.dims();
            let values: Vec<f32> = out
                .hidden
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            for (i, item) in chunk.iter().enumerate() {
                let n = out.lengths[i];
                let start = i * tokens * width;
                embeddings.insert(
                    item.relative.clone(),
                    (n, values[start..start + n * width].to_vec()),
                );
            }
        }
        Ok(Self { width, embeddings })
    }

    /// The batch's embeddings, padded to its longest caption.
    pub fn batch(&self, items: &[&DatasetItem], device: &Device) -> TextEmbeddings {
        let rows: Vec<&CaptionRow> = items.iter().map(|item| self.row(item)).collect();
        self.embeddings_of(&rows, device)
    }

    /// One item's caption embedding: (tokens, token-major values).
    pub fn row(&self, item: &DatasetItem) -> &CaptionRow {
        &self.embeddings[&item.relative]
    }

    /// Embeds one caption that is not part of the dataset (e.g. the empty caption).
    pub fn encode_one(encoder: &dyn TextEncoder, caption: &str) -> anyhow::Result<CaptionRow> {
        let out = encoder.encode(&[caption])?;
        let values = out
            .hidden
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok((
            out.lengths[0],
            values[..out.lengths[0] * encoder.width()].to_vec(),
        ))
    }

    /// Rows padded to the longest into one batch of embeddings.
    pub fn embeddings_of(&self, rows: &[&CaptionRow], device: &Device) -> TextEmbeddings {
        let tokens = rows.iter().map(|(n, _)| *n).max().unwrap_or(1).max(1);
        let mut hidden = vec![0.0f32; rows.len() * tokens * self.width];
        let mut mask = vec![0.0f32; rows.len() * tokens];
        for (i, (n, values)) in rows.iter().enumerate() {
            hidden[i * tokens * self.width..][..n * self.width].copy_from_slice(values);
            mask[i * tokens..][..*n].fill(1.0);
        }
        TextEmbeddings {
            hidden: Tensor::from_data(
                TensorData::new(hidden, [rows.len(), tokens, self.width]),
                device,
            ),
            mask: Tensor::from_data(TensorData::new(mask, [rows.len(), tokens]), device),
            lengths: rows.iter().map(|(n, _)| *n).collect(),
        }
    }
}

/// One caption's embedding on the host: (real tokens, token-major values).
pub type CaptionRow = (usize, Vec<f32>);

/// Mean PSNR of `model` over `items` at each of [`EVAL_BUDGETS`] the model holds; `held_out`:
/// whether `items` are validation images (else training images stand in).
pub fn evaluate(
    model: &TexTok,
    items: &[&DatasetItem],
    captions: Option<&CaptionStore>,
    step: usize,
    held_out: bool,
    device: &Device,
) -> EvalReport {
    let budgets: Vec<usize> = EVAL_BUDGETS
        .into_iter()
        .filter(|&budget| budget <= model.max_tokens)
        .collect();
    let mut sums = vec![0.0f64; budgets.len()];
    let mut samples = Vec::new();
    for chunk in items.chunks(16) {
        let images = pixels_to_tensor(chunk, device);
        let text = captions.map(|store| store.batch(chunk, device));
        let tokens = model.encode(images, text.as_ref());
        let originals: Vec<_> = chunk.iter().map(|item| item.image()).collect();
        for (b, &budget) in budgets.iter().enumerate() {
            let decoded = model.decode(tokens.clone().narrow(1, 0, budget), text.as_ref());
            for (original, reconstruction) in originals
                .iter()
                .zip(crate::data::image::from_tensor(decoded))
            {
                sums[b] += metrics::psnr(original, &reconstruction).min(100.0);
                if b + 1 == budgets.len() && samples.len() < EVAL_SAMPLES {
                    samples.push((original.clone(), reconstruction));
                }
            }
        }
    }
    let n = items.len().max(1) as f64;
    let psnr: Vec<(usize, f64)> = budgets
        .iter()
        .zip(&sums)
        .map(|(k, s)| (*k, s / n))
        .collect();
    let mean_psnr = psnr.iter().map(|(_, p)| p).sum::<f64>() / psnr.len() as f64;
    EvalReport {
        step,
        images: items.len(),
        psnr,
        mean_psnr,
        held_out,
        samples,
    }
}

/// Writes the full training state atomically.
pub fn save_state<M: Module + ModuleSnapshot, C: Serialize, T: Serialize>(
    path: &Path,
    model_config: &C,
    config: &T,
    state: TrainingState<'_, M>,
    extras: &StateExtras,
) -> anyhow::Result<()> {
    let TrainingState {
        model,
        optimizer,
        ema,
        progress,
        total_steps,
    } = state;
    let mut tensors = module_to_host(model).map_err(anyhow::Error::msg)?;
    for tensor in &mut tensors {
        tensor.name = format!("model.{}", tensor.name);
    }
    tensors.extend(extras.tensors.iter().cloned());
    let mut param_ids = BTreeMap::new();
    for tensor in &tensors {
        if let Some(id) = tensor.param_id {
            param_ids.insert(tensor.name.clone(), id);
        }
    }
    tensors.extend(ema.iter().map(|t| HostTensor {
        name: format!("ema.{}", t.name),
        param_id: None,
        ..t.clone()
    }));
    let optimizer_bytes = optimizer
        .into_bytes()
        .map_err(|e| anyhow::anyhow!("saving optimizer state: {e:?}"))?;
    let mut metadata = extras.metadata.clone();
    metadata.insert(PARAM_IDS_KEY.to_owned(), serde_json::to_string(&param_ids)?);
    metadata.insert("train_config".to_owned(), serde_json::to_string(config)?);
    metadata.insert("step".to_owned(), progress.step.to_string());
    metadata.insert(TOTAL_STEPS_KEY.to_owned(), total_steps.to_string());
    metadata.insert("rng".to_owned(), progress.rng.state.to_string());
    metadata.insert("best_psnr".to_owned(), progress.best_psnr.to_string());
    metadata.insert(
        "elapsed_seconds".to_owned(),
        progress.elapsed_seconds.to_string(),
    );
    let bytes = serialize_host_tensors(
        &tensors,
        KIND_TRAIN_STATE,
        model_config,
        StoredPrecision::F32,
        metadata,
        &std::iter::once(("optimizer", optimizer_bytes.as_ref()))
            .chain(
                extras
                    .blobs
                    .iter()
                    .map(|(name, bytes)| (name.as_str(), bytes.as_slice())),
            )
            .collect::<Vec<_>>(),
    )
    .map_err(anyhow::Error::msg)?;
    crate::files::write_atomic(path, &bytes)
        .with_context(|| format!("{}: cannot write training state", path.display()))
}

/// The metadata key of a training state's schedule length ([`TrainingState::total_steps`]).
pub const TOTAL_STEPS_KEY: &str = "total_steps";

/// How far a run's saved training state got: `(step, total_steps)`, read from the file's
/// header alone. `total_steps` is `None` in states saved before it was recorded.
pub fn saved_progress(path: &Path) -> anyhow::Result<(usize, Option<usize>)> {
    saved_progress_in(&CheckpointFile::read_metadata(path)?, path)
}

/// [`saved_progress`] from a state's metadata already read (`path` names the file in errors).
pub fn saved_progress_in(
    metadata: &HashMap<String, String>,
    path: &Path,
) -> anyhow::Result<(usize, Option<usize>)> {
    let step = metadata_number(metadata, path, "step")?;
    let total = metadata
        .contains_key(TOTAL_STEPS_KEY)
        .then(|| metadata_number(metadata, path, TOTAL_STEPS_KEY))
        .transpose()?;
    Ok((step, total))
}

/// The model config a training state was saved with, read from the file's header alone. A
/// resumed run builds its model from this, not from the checkpoint it started from: that file
/// may since have been deleted, moved or replaced, and the state holds every weight anyway.
pub fn saved_model_config<C: serde::de::DeserializeOwned>(
    path: &Path,
    expected: &str,
) -> anyhow::Result<C> {
    // A state that is not one, or cut short, is refused here, before a resume loads its data.
    let metadata = CheckpointFile::read_metadata_of_kind(path, KIND_TRAIN_STATE)?;
    CheckpointFile::check_length(path)?;
    let text = metadata
        .get(crate::checkpoint::CONFIG_KEY)
        .with_context(|| format!("{}: no model config in the state", path.display()))?;
    serde_json::from_str(text).with_context(|| {
        format!(
            "{}: the state's model config is not a {expected} config",
            path.display()
        )
    })
}

/// The number a training state stores under metadata `key`; errors name the file and the key.
fn state_number<T>(file: &CheckpointFile, key: &str) -> anyhow::Result<T>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    metadata_number(file.metadata(), file.path(), key)
}

/// [`state_number`] from metadata read on its own (`path` names the file in errors).
fn metadata_number<T>(
    metadata: &HashMap<String, String>,
    path: &Path,
    key: &str,
) -> anyhow::Result<T>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let path = path.display();
    let text = metadata
        .get(key)
        .with_context(|| format!("{path}: no `{key}` in the state"))?;
    text.parse()
        .map_err(|error| anyhow::anyhow!("{path}: `{key}` is `{text}`, not a number: {error}"))
}

/// Reads a training state written by [`save_state`] into `model`'s structure.
pub fn load_state<M: Module + ModuleSnapshot>(
    path: &Path,
    model: &M,
    optimizer: ModuleOptimizer,
) -> anyhow::Result<(M, ModuleOptimizer, Vec<HostTensor>, Progress)> {
    let file = CheckpointFile::read_kind(path, KIND_TRAIN_STATE)?;
    let expected = expected_parameters(model);
    let model_tensors = file.validated_tensors(&expected, "model.", &[])?;
    let ema_tensors = file.validated_tensors(&expected, "ema.", &[])?;
    let model = host_to_module(model.clone(), model_tensors).map_err(anyhow::Error::msg)?;
    let blob = file
        .blob("optimizer")
        .with_context(|| format!("{}: no optimizer state", path.display()))?;
    let optimizer = optimizer
        .from_bytes(Bytes::from_bytes_vec(blob))
        .map_err(|e| anyhow::anyhow!("{}: bad optimizer state: {e:?}", path.display()))?;
    let progress = Progress {
        step: state_number(&file, "step")?,
        rng: SplitMix64::new(state_number(&file, "rng")?),
        best_psnr: state_number(&file, "best_psnr")?,
        elapsed_seconds: state_number(&file, "elapsed_seconds")?,
    };
    // Keep the EMA in module order, like `module_to_host` produces it.
    let order: Vec<String> = module_to_host(&model)
        .map_err(anyhow::Error::msg)?
        .into_iter()
        .map(|t| t.name)
        .collect();
    let mut by_name: HashMap<String, HostTensor> = ema_tensors
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect();
    let ema = order
        .iter()
        .map(|name| by_name.remove(name).expect("validated above"))
        .collect();
    Ok((model, optimizer, ema, progress))
}

/// What a training state holds besides the configs: the model being trained, its optimizer, the
/// EMA weights and the step/RNG bookkeeping.
#[derive(Clone, Copy)]
pub struct TrainingState<'a, M> {
    pub model: &'a M,
    pub optimizer: &'a ModuleOptimizer,
    pub ema: &'a [HostTensor],
    pub progress: &'a Progress,
    /// The schedule's length when saved: the run is finished once `progress.step` reaches it
    /// (a time limit shortens it below the config's `steps`).
    pub total_steps: usize,
}

/// Extra modules, blobs and metadata stored in a training state (the GAN's discriminator).
#[derive(Debug, Default, Clone)]
pub struct StateExtras {
    /// Tensors with their full stored names (e.g. `disc.layers.0.weight`) and parameter ids.
    pub tensors: Vec<HostTensor>,
    pub blobs: Vec<(String, Vec<u8>)>,
    pub metadata: HashMap<String, String>,
}

/// The discriminator side of the adversarial loss.
pub struct Adversary {
    pub discriminator: Discriminator,
    pub optimizer: ModuleOptimizer,
    /// LeCAM's running means of the discriminator's outputs on real and fake images.
    pub lecam_real: f64,
    pub lecam_fake: f64,
}

impl Adversary {
    /// One discriminator step: non-saturating loss, R1 (finite-difference estimate) on reals,
    /// LeCAM towards the running means of the other side.
    fn step(
        &mut self,
        real: Tensor<4>,
        fake: Tensor<4>,
        config: &TokenizerTrainConfig,
        lr: f64,
        seed: u64,
    ) -> anyhow::Result<()> {
        const H: f64 = 1e-2;
        let d = &self.discriminator;
        let real_logits = d.forward(real.clone());
        let fake_logits = d.forward(fake);
        let (real_mean, fake_mean) = (real_logits.clone().mean(), fake_logits.clone().mean());
        let mut loss = softplus(real_logits.neg(), 1.0).mean() + softplus(fake_logits, 1.0).mean();
        let lecam = (real_mean.clone().sub_scalar(self.lecam_fake)).powi_scalar(2)
            + (fake_mean.clone().sub_scalar(self.lecam_real)).powi_scalar(2);
        loss = loss + lecam.mul_scalar(config.lecam_weight);
        if config.r1_weight > 0.0 {
            let [b, c, h, w] = real.dims();
            let direction = crate::model::diffusion::seeded_noise(seed, b * c * h * w);
            let direction =
                Tensor::<4>::from_data(TensorData::new(direction, [b, c, h, w]), &real.device());
            let slope =
                (d.score(real.clone() + direction.mul_scalar(H)) - d.score(real)).div_scalar(H);
            loss = loss
                + slope
                    .powi_scalar(2)
                    .mean()
                    .mul_scalar(config.r1_weight / 2.0);
        }
        let value = loss.clone().into_scalar::<f32>();
        ensure!(value.is_finite(), "the discriminator loss became {value}");
        let grads = GradientsParams::from_grads(loss.backward(), &self.discriminator);
        self.discriminator = self.optimizer.step(lr, self.discriminator.clone(), grads);
        // LeCAM's running means (decay 0.99).
        self.lecam_real = 0.99 * self.lecam_real + 0.01 * real_mean.into_scalar::<f32>() as f64;
        self.lecam_fake = 0.99 * self.lecam_fake + 0.01 * fake_mean.into_scalar::<f32>() as f64;
        Ok(())
    }

    fn extras(&self) -> anyhow::Result<StateExtras> {
        let mut tensors = module_to_host(&self.discriminator).map_err(anyhow::Error::msg)?;
        for tensor in &mut tensors {
            tensor.name = format!("disc.{}", tensor.name);
        }
        let optimizer = self
            .optimizer
            .into_bytes()
            .map_err(|e| anyhow::anyhow!("saving discriminator optimizer: {e:?}"))?;
        let mut metadata = HashMap::new();
        metadata.insert("lecam_real".to_owned(), self.lecam_real.to_string());
        metadata.insert("lecam_fake".to_owned(), self.lecam_fake.to_string());
        Ok(StateExtras {
            tensors,
            blobs: vec![("disc_optimizer".to_owned(), optimizer.to_vec())],
            metadata,
        })
    }

    /// Restores the discriminator saved with the training state (a state saved before the
    /// discriminator existed leaves it fresh).
    fn restore(self, path: &Path) -> anyhow::Result<Self> {
        let file = CheckpointFile::read(path)?;
        let Some(blob) = file.blob("disc_optimizer") else {
            return Ok(self);
        };
        let expected = expected_parameters(&self.discriminator);
        let tensors = file.validated_tensors(&expected, "disc.", &[])?;
        let discriminator =
            host_to_module(self.discriminator, tensors).map_err(anyhow::Error::msg)?;
        let optimizer = self
            .optimizer
            .from_bytes(Bytes::from_bytes_vec(blob))
            .map_err(|e| {
                anyhow::anyhow!(
                    "{}: bad discriminator optimizer state: {e:?}",
                    path.display()
                )
            })?;
        let number = |key: &str| {
            file.metadata()
                .get(key)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        Ok(Self {
            discriminator,
            optimizer,
            lecam_real: number("lecam_real"),
            lecam_fake: number("lecam_fake"),
        })
    }
}

/// [`TokenizerTrainConfig::regenerate_with`]: the DiT, its schedule, and the null caption.
struct TokenRegenerator {
    dit: crate::model::dit::Dit,
    config: crate::model::dit::DitConfig,
    schedule: crate::model::diffusion::Schedule,
    null_caption: CaptionRow,
    max_t: usize,
}

impl TokenRegenerator {
    /// Loads the DiT and checks it reads the tokens, budgets and captions of the model being
    /// trained; with a warning when it cannot tell whose tokens the DiT learned. A resumed run
    /// was checked when it started (its start checkpoint may be gone since: the state holds
    /// every weight).
    fn load(
        path: &Path,
        run: &TokenizerTrainConfig,
        model: &TexTokConfig,
        max_budget: usize,
        null_caption: CaptionRow,
        resume: bool,
        device: &Device,
    ) -> anyhow::Result<(Self, Option<String>)> {
        let (dit, config) = crate::model::dit::Dit::load(path, device)?;
        ensure!(
            config.token_dim == model.token_dim && config.text_dim == model.text_dim,
            "{}: the DiT makes tokens of {} channels read with captions of width {}; this \
             TexTok's are {} and {}",
            path.display(),
            config.token_dim,
            config.text_dim,
            model.token_dim,
            model.text_dim
        );
        let trained = config.trained_budgets();
        ensure!(
            config.max_tokens >= max_budget
                && trained.contains(&run.min_budget)
                && trained.contains(&max_budget),
            "{}: the DiT was trained on {}..={} tokens, but this run trains budgets {}..={}",
            path.display(),
            trained.start(),
            trained.end(),
            run.min_budget,
            max_budget
        );
        let mut warning = None;
        match (&config.tokenizer_encoder_sha256, &run.init_from) {
            (Some(hash), Some(init)) if !resume => {
                let file = CheckpointFile::read(init)?;
                ensure!(
                    TexTok::encoder_matches(&file, hash)?,
                    "{} was trained on another tokenizer's tokens than {}'s: it cannot \
                     regenerate them",
                    path.display(),
                    init.display()
                );
            }
            (None, _) if !resume => {
                warning = Some(format!(
                    "{} does not record whose tokens it was trained on (an older file): if \
                     not this tokenizer's, its regenerated tokens are noise",
                    path.display()
                ));
            }
            _ => {}
        }
        let regenerator = Self {
            dit,
            config,
            schedule: crate::model::diffusion::Schedule::default(),
            null_caption,
            max_t: run.regenerate_max_t,
        };
        Ok((regenerator, warning))
    }

    /// `tokens` (`[batch, k, d]`, no gradient: the encoder is frozen) regenerated from a
    /// timestep drawn from the run's RNG (so a resumed run draws the same), on the device
    /// without autodiff, and handed back on `tokens`' device. Not cancellable: it takes about
    /// as long as a training step, and the training loop checks for a cancel (and saves)
    /// before the next one.
    fn apply(
        &self,
        tokens: Tensor<3>,
        batch: &[&DatasetItem],
        captions: &CaptionStore,
        rng: &mut SplitMix64,
    ) -> anyhow::Result<Tensor<3>> {
        let tokens = tokens.inner();
        let device = tokens.device();
        let [rows, k, d] = tokens.dims();
        let start = rng.range(0, self.max_t);
        let noise = crate::model::diffusion::seeded_noise(rng.next_u64(), rows * k * d);
        let noise = Tensor::<3>::from_data(TensorData::new(noise, [rows, k, d]), &device);
        let text = captions.batch(batch, &device);
        let null_text = captions.embeddings_of(&[&self.null_caption], &device);
        let sampler = crate::model::dit::Sampler {
            dit: &self.dit,
            config: &self.config,
            schedule: &self.schedule,
        };
        let how = crate::model::dit::Regeneration {
            start,
            grid_steps: 10,
            cfg: 3.0,
        };
        let regenerated = crate::model::dit::regenerate(
            &sampler,
            tokens,
            noise,
            how,
            &text,
            &null_text,
            &CancelToken::new(),
        )?;
        Ok(regenerated.autodiff())
    }
}

/// Noise for [`TokenizerTrainConfig::token_noise`], with a sigma drawn uniformly in
/// `[0, max_sigma]` per image from the run's RNG (so a resumed run draws the same noise).
fn token_noise(tokens: &Tensor<3>, max_sigma: f64, rng: &mut SplitMix64) -> Tensor<3> {
    let sigmas: Vec<f32> = (0..tokens.dims()[0])
        .map(|_| (max_sigma * (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64) as f32)
        .collect();
    crate::model::textok::token_noise(tokens, &sigmas, rng.next_u64())
}
