//! Training the text-to-image DiT on a tokenizer's latents.
//!
//! The tokenizer encodes every training image once; the latents are cached in the run folder
//! (keyed by the tokenizer file's SHA-256) and normalised with per-position (in older runs,
//! per-channel) statistics that are stored in the DiT's config. Each step draws one budget k
//! (nested prefixes, so one DiT serves every budget), a timestep per image, and drops 10% of
//! captions to the null (empty) caption for classifier-free guidance; the loss is the MSE to the
//! v-prediction target. Progress, JSONL log, AdamW with warm-up + cosine, EMA and the atomic,
//! resumable state work as for the tokenizer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::tokenizer::{
    CaptionRow, CaptionStore, HostEma, Progress, StateExtras, StepReport, TrainObserver,
    TrainOutcome, TrainingState, load_state, new_optimizer_with, pixels_to_tensor, save_state,
};
use super::{Eta, SplitMix64, StepTarget, learning_rate};
use crate::checkpoint::{StoredPrecision, module_to_host, save_host_tensors};
use crate::data::dataset::{DatasetItem, Split};
use crate::jobs::CancelToken;
use crate::model::diffusion::{Schedule, coefficients, seeded_noise};
use crate::model::dit::{Dit, DitConfig, KIND_DIT};
use crate::model::text_encoder::{MiniLmTextEncoder, TextEncoder};
use crate::model::textok::{MIN_BUDGET, TexTok};

/// Everything that defines a DiT run (`config.json` in the run folder).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DitTrainConfig {
    pub data: PathBuf,
    /// The TexTok checkpoint whose tokens the DiT learns to generate.
    pub tokenizer: PathBuf,
    pub preset: String,
    pub steps: usize,
    pub batch: usize,
    pub learning_rate: f64,
    pub warmup_steps: usize,
    pub min_lr_ratio: f64,
    pub weight_decay: f64,
    pub grad_clip_norm: f64,
    pub ema_decay: f64,
    /// Update the EMA weights every this many steps ([`HostEma`]); runs from before this option
    /// existed updated every step.
    #[serde(default = "every_step")]
    pub ema_every: usize,
    /// Fraction of captions replaced by the null caption (classifier-free guidance).
    pub caption_dropout: f64,
    pub min_budget: usize,
    pub max_budget: usize,
    pub validation_percent: u32,
    pub seed: u64,
    pub checkpoint_minutes: f64,
    /// Fine-tuning: start from this DiT checkpoint (its architecture and latent statistics
    /// replace `preset` and the measured ones, so the weights see inputs scaled as before).
    #[serde(default)]
    pub init_from: Option<PathBuf>,
    /// How the latents are normalised before diffusion. Runs from before this option existed
    /// used per-channel statistics, so that is what a config without it means.
    #[serde(default)]
    pub latent_norm: LatentNorm,
    /// How a new DiT's learned positions start (ignored when fine-tuning).
    #[serde(default)]
    pub position_init: PositionInit,
    /// Give a new DiT the pooled-caption condition (`DitConfig::pooled_caption`; ignored when
    /// fine-tuning, which keeps the checkpoint's architecture).
    #[serde(default)]
    pub pooled_caption: bool,
    /// Also train on each image's mirror image (left and right swapped), encoded once into the
    /// latent cache: twice the pictures of each thing for a DiT that has started to fit its
    /// training images more than it generalises. Images whose caption names a direction, or
    /// text and flags, are not mirrored ([`may_mirror`]). Runs from before the option did not.
    #[serde(default)]
    pub mirror: bool,
}

fn every_step() -> usize {
    1
}

/// The start of a new DiT's learned positional embeddings.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PositionInit {
    /// Small random values (the paper's learned positions).
    #[default]
    Random,
    /// A sinusoidal code of each slot's cell in the tokenizer's pyramid (`Dit::with_position_geometry`);
    /// needs a pyramid tokenizer.
    Geometry,
}

/// Normalisation of the latents the DiT learns.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LatentNorm {
    /// One mean and spread per channel, shared by all positions.
    #[default]
    Channel,
    /// One mean and spread per position and channel. TexTok's positions differ a lot (in the
    /// shipped tokenizer the 21 coarse pyramid slots spread 0.1-0.3x their channel's spread,
    /// the 64 slots of the 8x8 level about 2x, the unused tail 0.05-0.5x), so per-channel
    /// scaling gives each position a different signal-to-noise ratio at the same diffusion step.
    Position,
}

/// Which training-config fields each `train dit` flag sets (flags that set none, such as
/// --out, --device or --max-minutes, are left out).
pub const FLAG_FIELDS: &[(&str, &str)] = &[
    ("data", "data"),
    ("tokenizer", "tokenizer"),
    ("preset", "preset"),
    ("steps", "steps"),
    ("batch", "batch"),
    ("lr", "learning_rate"),
    ("seed", "seed"),
    ("checkpoint_minutes", "checkpoint_minutes"),
    ("init_from", "init_from"),
    ("min_budget", "min_budget"),
    ("max_budget", "max_budget"),
    ("latent_norm", "latent_norm"),
    ("position_init", "position_init"),
    ("pooled_caption", "pooled_caption"),
    ("mirror", "mirror"),
    ("warmup", "warmup_steps"),
    ("ema_every", "ema_every"),
];

impl super::RunConfig for DitTrainConfig {
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

impl DitTrainConfig {
    /// Checks the settings alone (no files read): the command line calls it before it opens a
    /// device, the trainer again on the config it resolved.
    pub fn check(&self) -> anyhow::Result<()> {
        ensure!(
            self.steps > 0 && self.batch > 0,
            "steps and batch must be positive"
        );
        ensure!(
            self.ema_every > 0,
            "the EMA must be updated every 1 or more steps"
        );
        // Checked here, before the device opens and the tokenizer loads (which may hold fewer
        // than 256 tokens: checked against it after loading).
        ensure!(
            self.init_from.is_some() || DitConfig::preset(&self.preset).is_some(),
            "unknown DiT preset `{}`; choose one of {:?}",
            self.preset,
            DitConfig::PRESETS
        );
        ensure!(
            MIN_BUDGET <= self.min_budget
                && self.min_budget <= self.max_budget
                && self.max_budget <= 256,
            "budgets must satisfy 32 <= --min-budget <= --max-budget <= 256"
        );
        ensure!(
            (0.0..1.0).contains(&self.caption_dropout),
            "caption dropout must be in [0, 1)"
        );
        ensure!(
            (0.0..1.0).contains(&self.ema_decay),
            "ema_decay must be in [0, 1)"
        );
        super::check_optimizer_settings(
            self.learning_rate,
            self.min_lr_ratio,
            self.weight_decay,
            self.grad_clip_norm,
            self.checkpoint_minutes,
        )
    }

    pub fn new(
        data: PathBuf,
        tokenizer: PathBuf,
        preset: &str,
        steps: usize,
        batch: usize,
    ) -> Self {
        Self {
            data,
            tokenizer,
            preset: preset.to_owned(),
            steps,
            batch,
            learning_rate: 3e-4,
            warmup_steps: super::default_warmup(steps),
            min_lr_ratio: 0.1,
            weight_decay: 1e-4,
            grad_clip_norm: 1.0,
            ema_decay: 0.999,
            ema_every: 1,
            caption_dropout: 0.1,
            min_budget: MIN_BUDGET,
            max_budget: 256,
            validation_percent: 5,
            seed: 0,
            checkpoint_minutes: 5.0,
            init_from: None,
            latent_norm: LatentNorm::Position,
            position_init: PositionInit::Random,
            pooled_caption: false,
            mirror: false,
        }
    }
}

/// Caption words that a left-right mirror image would contradict: a direction, or a thing
/// that reads one way (text, digits, flags).
const UNMIRRORABLE_WORDS: &[&str] = &[
    "left",
    "right",
    "next",
    "previous",
    "forward",
    "forwards",
    "backward",
    "backwards",
    "back",
    "undo",
    "redo",
    "rtl",
    "ltr",
    "east",
    "west",
    "clockwise",
    "counterclockwise",
    "anticlockwise",
    "flag",
    "flags",
    "letter",
    "letters",
    "text",
    "keycap",
    "digit",
    "number",
    "alphabet",
    "abc",
    "sign",
    "signs",
];

/// Whether a mirror image still shows what `caption` says ([`UNMIRRORABLE_WORDS`]).
pub fn may_mirror(caption: &str) -> bool {
    !caption.split(|c: char| !c.is_alphanumeric()).any(|word| {
        UNMIRRORABLE_WORDS
            .iter()
            .any(|unmirrorable| word.eq_ignore_ascii_case(unmirrorable))
    })
}

/// The latent cache's key for an image's mirror image (no image file name ends this way).
fn mirror_key(relative: &str) -> String {
    format!("{relative}#mirrored")
}

/// One row of the latent cache: a training image, or its mirror image.
#[derive(Clone, Copy)]
struct LatentSource<'a> {
    item: &'a DatasetItem,
    mirrored: bool,
}

impl LatentSource<'_> {
    fn key(&self) -> String {
        if self.mirrored {
            mirror_key(&self.item.relative)
        } else {
            self.item.relative.clone()
        }
    }
}

/// The cache rows a run trains on: every training image, and with `mirror` the mirror image of
/// each that [`may_mirror`].
fn latent_sources<'a>(train: &[&'a DatasetItem], mirror: bool) -> Vec<LatentSource<'a>> {
    let mut sources = Vec::with_capacity(train.len() * if mirror { 2 } else { 1 });
    for &item in train {
        sources.push(LatentSource {
            item,
            mirrored: false,
        });
        if mirror && may_mirror(&item.caption) {
            sources.push(LatentSource {
                item,
                mirrored: true,
            });
        }
    }
    sources
}

/// What a latent cache records of the tokenizer that made it.
struct TokenizerIdentity {
    /// SHA-256 of the checkpoint file.
    file_sha256: String,
    /// [`TexTok::encoder_sha256`]: the same for every file that makes the same tokens.
    encoder_sha256: String,
    /// [`TexTok::exact_encoder_sha256_of`]: what caches made before the f16 rounding recorded.
    exact_encoder_sha256: String,
}

/// Latents of every training image, `[max_tokens x token_dim]` each, row-major.
struct LatentCache {
    tokens: usize,
    dim: usize,
    by_path: HashMap<String, Vec<f32>>,
    /// The encoder hash of the tokenizer that made these tokens, where the file says (a cache
    /// packed for another machine is paired with a stand-in tokenizer file whose own hash is
    /// not the real encoder's; caches from before the field do not say).
    encoder_sha256: Option<String>,
}

/// What a cached latent row was encoded from, hashed: the caption (a text-conditioned
/// tokenizer reads it) and the pixels. A caption or image edited in place, under the same
/// file name, no longer matches, and that image is encoded again.
fn latent_fingerprint(item: &DatasetItem) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update((item.caption.len() as u64).to_le_bytes());
    hasher.update(item.caption.as_bytes());
    hasher.update(item.pixels.width().to_le_bytes());
    hasher.update(item.pixels.height().to_le_bytes());
    hasher.update(item.pixels.as_raw());
    crate::files::to_hex(&hasher.finalize()[..8])
}

/// [`latent_fingerprint`] of each cache row, by its key (a mirror image's is its image's:
/// the mirror changes when the image does).
fn latent_fingerprints(sources: &[LatentSource]) -> HashMap<String, String> {
    sources
        .iter()
        .map(|source| (source.key(), latent_fingerprint(source.item)))
        .collect()
}

impl LatentCache {
    fn path(run_dir: &Path) -> PathBuf {
        run_dir.join("latents.bin")
    }

    /// Reads the cache if it was made by the same tokenizer (the same file, or one with the
    /// same config and tokenizer half: a detokenizer fine-tuned with `--freeze-encoder` makes
    /// the same tokens), with latents of `dim` channels and between `needed` and `max_tokens`
    /// tokens each (a cache may hold only the first tokens: `models/scripts/device/pack.py`
    /// cuts it to the budgets trained). Of its rows it keeps those of the images in
    /// `fingerprints` (this run's training images) whose caption and pixels are unchanged;
    /// caches from before the fingerprints were recorded are trusted as they are (a packed
    /// cache travels with a zeroed stand-in tokenizer that must not encode anything). Anything
    /// else (another tokenizer, an older or damaged file) reads as no cache.
    fn read(
        path: &Path,
        tokenizer: &TokenizerIdentity,
        (needed, max_tokens, dim): (usize, usize, usize),
        fingerprints: &HashMap<String, String>,
    ) -> Option<Self> {
        let bytes = std::fs::read(path).ok()?;
        let header_len =
            usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
        let mut at = header_len.checked_add(8)?;
        let header: serde_json::Value = serde_json::from_slice(bytes.get(8..at)?).ok()?;
        let tokens = usize::try_from(header["tokens"].as_u64()?).ok()?;
        let same_tokenizer = header["tokenizer_sha256"] == tokenizer.file_sha256.as_str()
            || header["encoder_sha256"] == tokenizer.encoder_sha256.as_str()
            || header["encoder_sha256"] == tokenizer.exact_encoder_sha256.as_str();
        if !same_tokenizer
            || header["dim"].as_u64()? != dim as u64
            || !(needed..=max_tokens).contains(&tokens)
        {
            return None;
        }
        let row_bytes = tokens.checked_mul(dim)?.checked_mul(4)?;
        let paths: Vec<String> = serde_json::from_value(header["paths"].clone()).ok()?;
        let stored_fingerprints: Option<Vec<String>> = match header.get("fingerprints") {
            None => None,
            Some(list) => Some(serde_json::from_value(list.clone()).ok()?),
        };
        if stored_fingerprints
            .as_ref()
            .is_some_and(|list| list.len() != paths.len())
        {
            return None;
        }
        let mut by_path = HashMap::new();
        for (index, path) in paths.into_iter().enumerate() {
            let end = at.checked_add(row_bytes)?;
            let row = bytes.get(at..end)?;
            at = end;
            let unchanged = match (&stored_fingerprints, fingerprints.get(&path)) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(stored), Some(now)) => stored[index] == *now,
            };
            if unchanged {
                let values = row
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                by_path.insert(path, values);
            }
        }
        Some(Self {
            tokens,
            dim,
            by_path,
            encoder_sha256: header["encoder_sha256"].as_str().map(str::to_owned),
        })
    }

    /// Adds `fresh` rows (encoded now, by the same encoder), cut to this cache's token count.
    fn merge(&mut self, fresh: Self) {
        let row = self.tokens * self.dim;
        for (path, values) in fresh.by_path {
            self.by_path.insert(path, values[..row].to_vec());
        }
    }

    /// Writes the cache with each row's [`latent_fingerprint`]; the encoder hash is the one the
    /// cache recorded, where it did (a packed cache's names the real encoder, not the stand-in).
    fn write(
        &self,
        path: &Path,
        tokenizer: &TokenizerIdentity,
        fingerprints: &HashMap<String, String>,
    ) -> std::io::Result<()> {
        let mut paths: Vec<&String> = self.by_path.keys().collect();
        paths.sort();
        let row_fingerprints: Vec<&str> = paths
            .iter()
            .map(|path| fingerprints.get(*path).map_or("", String::as_str))
            .collect();
        let header = serde_json::json!({
            "tokenizer_sha256": tokenizer.file_sha256,
            "encoder_sha256": self.encoder_sha256.as_deref().unwrap_or(&tokenizer.encoder_sha256),
            "tokens": self.tokens,
            "dim": self.dim,
            "paths": paths,
            "fingerprints": row_fingerprints,
        });
        let header = serde_json::to_vec(&header)?;
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend(header);
        for path in paths {
            out.extend(self.by_path[path].iter().flat_map(|v| v.to_le_bytes()));
        }
        crate::files::write_atomic(path, &out)
    }

    /// Encodes `sources` with the tokenizer, 16 images at a time.
    fn encode(
        tokenizer: &TexTok,
        sources: &[LatentSource],
        captions: &CaptionStore,
        device: &Device,
        cancel: &CancelToken,
        observer: &dyn TrainObserver,
    ) -> anyhow::Result<Self> {
        let mut by_path = HashMap::new();
        let (mut tokens, mut dim) = (0, 0);
        for (index, chunk) in sources.chunks(16).enumerate() {
            cancel.check()?;
            // Encoding a large folder takes minutes on a CPU: say how far it got.
            if index > 0 && index % 64 == 0 {
                observer.on_message(&format!(
                    "encoded {} of {} images",
                    index * 16,
                    sources.len()
                ));
            }
            let items: Vec<&DatasetItem> = chunk.iter().map(|source| source.item).collect();
            // A mirrored source is encoded from a flipped copy of its pixels, made here.
            let flipped: Vec<Option<DatasetItem>> = chunk
                .iter()
                .map(|source| {
                    source.mirrored.then(|| DatasetItem {
                        relative: source.item.relative.clone(),
                        caption: source.item.caption.clone(),
                        split: source.item.split,
                        pixels: image::imageops::flip_horizontal(&source.item.pixels),
                    })
                })
                .collect();
            let pictures: Vec<&DatasetItem> = chunk
                .iter()
                .zip(&flipped)
                .map(|(source, flipped)| flipped.as_ref().unwrap_or(source.item))
                .collect();
            let images = pixels_to_tensor(&pictures, device);
            let text = tokenizer
                .is_text_conditioned()
                .then(|| captions.batch(&items, device));
            let latents = tokenizer.encode(images, text.as_ref());
            [_, tokens, dim] = latents.dims();
            let values = latents
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            for (i, source) in chunk.iter().enumerate() {
                by_path.insert(
                    source.key(),
                    values[i * tokens * dim..(i + 1) * tokens * dim].to_vec(),
                );
            }
        }
        Ok(Self {
            tokens,
            dim,
            by_path,
            encoder_sha256: None,
        })
    }

    /// Mean and standard deviation of the latents, per channel (`dim` entries, over all images
    /// and positions) or per position and channel (`tokens * dim`, over images).
    fn statistics(&self, norm: LatentNorm) -> (Vec<f32>, Vec<f32>) {
        let per_channel = moments(self.by_path.values().flat_map(|v| v.chunks_exact(self.dim)));
        if norm == LatentNorm::Channel {
            return per_channel;
        }
        let (mean, mut std) = moments(self.by_path.values().map(Vec::as_slice));
        // A position that (almost) never varies in this data (a few images, an unused slot)
        // would turn tiny deviations into huge normalised values: floor its spread at 1 % of
        // its channel's.
        for (i, s) in std.iter_mut().enumerate() {
            *s = s.max(0.01 * per_channel.1[i % self.dim]);
        }
        (mean, std)
    }
}

/// Element-wise mean and standard deviation of equally long rows.
fn moments<'a>(rows: impl Iterator<Item = &'a [f32]>) -> (Vec<f32>, Vec<f32>) {
    let (mut sum, mut squares, mut count) = (Vec::<f64>::new(), Vec::<f64>::new(), 0usize);
    for row in rows {
        if sum.is_empty() {
            sum = vec![0.0; row.len()];
            squares = vec![0.0; row.len()];
        }
        for (i, v) in row.iter().enumerate() {
            sum[i] += *v as f64;
            squares[i] += (*v as f64).powi(2);
        }
        count += 1;
    }
    let n = count.max(1) as f64;
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    let std = squares
        .iter()
        .zip(&mean)
        .map(|(q, m)| ((q / n - m * m).max(1e-12)).sqrt().max(1e-6) as f32)
        .collect();
    (mean.into_iter().map(|m| m as f32).collect(), std)
}

/// Trains (or resumes) a DiT in `run_dir` on `config.tokenizer`'s latents; with `time_limit`
/// the session ends by then, its schedule shortened to fit (`TimeLimit`).
#[allow(clippy::too_many_arguments)]
pub fn train_dit(
    run_dir: &Path,
    requested: &DitTrainConfig,
    resume: bool,
    time_limit: Option<Duration>,
    device: &Device,
    text_encoder_dir: &Path,
    observer: &dyn TrainObserver,
    cancel: &CancelToken,
) -> anyhow::Result<TrainOutcome> {
    let state_path = run_dir.join(super::TRAINING_STATE_FILE);
    let log_path = run_dir.join("log.jsonl");
    let _run_claim = super::claim_run_dir(run_dir, resume)?;
    let config = super::resolve_run_config(run_dir, requested, resume)?;
    // Also refuses an unknown preset, before the minutes of loading below.
    config.check()?;

    // Read once: the model, its file hash and its encoder hash come from the same bytes.
    let tokenizer_file = crate::checkpoint::CheckpointFile::read_kind(
        &config.tokenizer,
        crate::model::textok::KIND_TEXTOK,
    )?;
    let (tokenizer, tokenizer_config) = TexTok::from_checkpoint(&tokenizer_file, device)?;
    let slot_cells = tokenizer.slot_cells();
    ensure!(
        config.position_init == PositionInit::Random || !slot_cells.is_empty(),
        "{}: geometry positions need a tokenizer with the pyramid layout",
        config.tokenizer.display()
    );
    ensure!(
        MIN_BUDGET <= config.min_budget
            && config.min_budget <= config.max_budget
            && config.max_budget <= tokenizer_config.max_tokens,
        "budgets must satisfy 32 <= min <= max <= {}",
        tokenizer_config.max_tokens
    );
    let tokenizer_identity = TokenizerIdentity {
        file_sha256: tokenizer_file.sha256(),
        encoder_sha256: TexTok::encoder_sha256_of(&tokenizer_file)?,
        exact_encoder_sha256: TexTok::exact_encoder_sha256_of(&tokenizer_file)?,
    };
    drop(tokenizer_file);
    let size = tokenizer_config.image_size as u32;
    let dataset = super::load_training_data(&config.data, size, config.validation_percent, cancel)?;
    let train: Vec<&DatasetItem> = dataset.split(Split::Train);
    observer.on_message(&format!(
        "{} training images; {}",
        train.len(),
        dataset.skip_report().lines().next().unwrap_or("")
    ));

    let encoder =
        MiniLmTextEncoder::load(text_encoder_dir, tokenizer_config.max_text_tokens, device)?;
    // A resumed run takes its model config (statistics and trained budgets included) from its
    // state, which holds every weight: the DiT it started from may be gone or replaced since.
    let resumed_config: Option<DitConfig> = if resume {
        let stored: DitConfig = super::tokenizer::saved_model_config(&state_path, "DiT")?;
        stored
            .validate()
            .map_err(|reason| anyhow::anyhow!("{}: {reason}", state_path.display()))?;
        // The run learned the tokens of the encoder it recorded. A tokenizer file rewritten
        // since (its run trained on, a model replaced by an update) makes other tokens: the
        // latents would be encoded again and the DiT, with its old statistics, would go on
        // learning a different space without a word.
        if let Some(recorded) = &stored.tokenizer_encoder_sha256 {
            ensure!(
                *recorded == tokenizer_identity.encoder_sha256
                    || *recorded == tokenizer_identity.exact_encoder_sha256,
                "{}: this tokenizer's encoder changed since the run started (it makes other \
                 tokens now, encoder {}; the run's is {}), so the run cannot continue on it; \
                 start a new run, or give --tokenizer the file the run began with",
                config.tokenizer.display(),
                short_hash(&tokenizer_identity.encoder_sha256),
                short_hash(recorded)
            );
        }
        Some(stored)
    } else {
        None
    };
    let initial = match (&config.init_from, &resumed_config) {
        (Some(path), None) => {
            observer.on_message(&format!("fine-tuning {}", path.display()));
            Some(Dit::load(path, &device.clone().autodiff())?)
        }
        _ => None,
    };
    let mut model_config = match (&resumed_config, &initial) {
        (Some(stored), _) => stored.clone(),
        (None, Some((_, config))) => config.clone(),
        (None, None) => DitConfig::preset(&config.preset)
            .with_context(|| format!("unknown DiT preset `{}`", config.preset))?,
    };
    if let (Some(path), Some(_)) = (&config.init_from, &initial) {
        ensure!(
            model_config.token_dim == tokenizer_config.token_dim
                && model_config.max_tokens == tokenizer_config.max_tokens
                && model_config.text_dim == encoder.width(),
            "{}: this DiT does not fit the tokenizer {} (token width, budget or text width differ)",
            path.display(),
            config.tokenizer.display()
        );
    }
    model_config.token_dim = tokenizer_config.token_dim;
    model_config.max_tokens = tokenizer_config.max_tokens;
    model_config.text_dim = encoder.width();
    // Record the budgets this model has been trained on, so generation can refuse the others
    // (in a one-budget DiT they would be noise). Fine-tuning adds this run's to what it knew.
    if resumed_config.is_none() {
        let (low, high) = match &initial {
            Some(_) => {
                let known = model_config.trained_budgets();
                (
                    config.min_budget.min(*known.start()),
                    config.max_budget.max(*known.end()),
                )
            }
            None => (config.min_budget, config.max_budget),
        };
        model_config.trained_min_budget = Some(low);
        model_config.trained_max_budget = Some(high.min(model_config.max_tokens));
    }
    observer.on_message("encoding captions");
    let captions = CaptionStore::build(&encoder, &train, cancel)?;
    let null_caption = CaptionStore::encode_one(&encoder, "")?;

    let cache_path = LatentCache::path(run_dir);
    // A new run's per-position statistics cover every token; otherwise the budgets trained
    // are all the cache must hold.
    let needed = if config.init_from.is_none() && config.latent_norm == LatentNorm::Position {
        tokenizer_config.max_tokens
    } else {
        config.max_budget
    };
    let latent_shape = (
        needed,
        tokenizer_config.max_tokens,
        tokenizer_config.token_dim,
    );
    let sources = latent_sources(&train, config.mirror);
    let fingerprints = latent_fingerprints(&sources);
    let cached = LatentCache::read(
        &cache_path,
        &tokenizer_identity,
        latent_shape,
        &fingerprints,
    );
    let missing: Vec<LatentSource> = sources
        .iter()
        .filter(|source| {
            !cached
                .as_ref()
                .is_some_and(|cache| cache.by_path.contains_key(&source.key()))
        })
        .copied()
        .collect();
    let latents = match cached {
        Some(cache) if missing.is_empty() => cache,
        cached => {
            observer.on_message(&match &cached {
                None => format!("encoding the latents of {} images once", missing.len()),
                Some(_) => format!(
                    "encoding the latents of {} new or changed image{}",
                    missing.len(),
                    if missing.len() == 1 { "" } else { "s" }
                ),
            });
            let fresh =
                LatentCache::encode(&tokenizer, &missing, &captions, device, cancel, observer)?;
            let cache = match cached {
                Some(mut cache) => {
                    cache.merge(fresh);
                    cache
                }
                None => fresh,
            };
            cache
                .write(&cache_path, &tokenizer_identity, &fingerprints)
                .with_context(|| format!("{}: cannot write the latents", cache_path.display()))?;
            cache
        }
    };
    // This run trains on these tokens (a fine-tune from a DiT of another tokenizer, too). A
    // cache made before the hash rounded to f16 names this tokenizer by its exact hash: the
    // DiT records the rounded one, so that the tokenizer's f16 export is recognised too.
    model_config.tokenizer_encoder_sha256 = Some(
        latents
            .encoder_sha256
            .clone()
            .filter(|hash| *hash != tokenizer_identity.exact_encoder_sha256)
            .unwrap_or_else(|| tokenizer_identity.encoder_sha256.clone()),
    );
    if config.init_from.is_none() && resumed_config.is_none() {
        model_config.pooled_caption = Some(config.pooled_caption);
        let (mean, std) = latents.statistics(config.latent_norm);
        model_config.latent_mean = mean;
        model_config.latent_std = std;
    }
    model_config.validate().map_err(anyhow::Error::msg)?;
    let (mean, std) = (
        model_config.latent_mean.clone(),
        model_config.latent_std.clone(),
    );

    let autodiff = device.clone().autodiff();
    let mut model = match initial {
        Some((model, _)) => model,
        None => {
            let fresh = crate::device::init_module(&autodiff, Some(config.seed), || {
                model_config.init(&autodiff)
            });
            match config.position_init {
                PositionInit::Random => fresh,
                PositionInit::Geometry => fresh.with_position_geometry(&slot_cells),
            }
        }
    };
    let mut optimizer = new_optimizer_with(config.weight_decay, config.grad_clip_norm);
    let mut ema = module_to_host(&model).map_err(anyhow::Error::msg)?;
    let mut progress = Progress {
        step: 0,
        rng: SplitMix64::new(config.seed ^ 0xD17),
        best_psnr: f64::NEG_INFINITY,
        elapsed_seconds: 0.0,
    };
    if resume {
        (model, optimizer, ema, progress) = load_state(&state_path, &model, optimizer)?;
        observer.on_message(&format!("resumed at step {}", progress.step));
    }
    let mut ema = HostEma::new(ema, config.ema_decay, config.ema_every);
    let schedule = Schedule::default();
    let ema_path = run_dir.join("ema.safetensors");
    let save = |model: &_,
                optimizer: &_,
                ema: &[_],
                progress: &Progress,
                total_steps: usize|
     -> anyhow::Result<()> {
        save_state(
            &state_path,
            &model_config,
            &config,
            TrainingState {
                model,
                optimizer,
                ema,
                progress,
                total_steps,
            },
            &StateExtras::default(),
        )?;
        save_host_tensors(
            ema,
            &ema_path,
            KIND_DIT,
            &model_config,
            StoredPrecision::F32,
            HashMap::new(),
        )?;
        Ok(())
    };
    let started = Instant::now();
    // The limit counts from here: caption encoding and model loading are not training time.
    let schedule_steps = if resume {
        super::resumed_schedule(&state_path, config.steps)?
    } else {
        config.steps
    };
    let step_target = StepTarget::new(schedule_steps, progress.step, time_limit, started);
    let mut total_steps = schedule_steps;
    let elapsed_before = progress.elapsed_seconds;
    let mut eta = Eta::new();
    let mut last_save = Instant::now();
    let d = latents.dim;
    // Which training images have a mirror row, decided once rather than per drawn example.
    let mirrorable: Vec<bool> = train
        .iter()
        .map(|item| config.mirror && may_mirror(&item.caption))
        .collect();
    while progress.step < total_steps {
        if cancel.is_cancelled() {
            break;
        }
        let rng = &mut progress.rng;
        let k = rng.range(config.min_budget, config.max_budget);
        // An image is drawn as often with `mirror` as without; a mirrorable one is then shown
        // mirrored half the time. Runs without it draw the same numbers as before the option.
        let batch: Vec<LatentSource> = (0..config.batch)
            .map(|_| {
                let index = rng.range(0, train.len() - 1);
                let mirrored = mirrorable[index] && rng.next_u64() % 2 == 1;
                LatentSource {
                    item: train[index],
                    mirrored,
                }
            })
            .collect();
        let timesteps: Vec<usize> = (0..config.batch)
            .map(|_| rng.range(0, schedule.len() - 1))
            .collect();
        let dropped: Vec<bool> = (0..config.batch)
            .map(|_| (rng.next_u64() as f64 / u64::MAX as f64) < config.caption_dropout)
            .collect();
        let noise = seeded_noise(rng.next_u64(), config.batch * k * d);

        // Normalised clean latents x0, noisy x_t and the v target, built on the host.
        let mut x_t = Vec::with_capacity(config.batch * k * d);
        let mut target = Vec::with_capacity(config.batch * k * d);
        for (b, source) in batch.iter().enumerate() {
            let (s, n) = coefficients(schedule.alpha_bars[timesteps[b]]);
            let (s, n) = (s as f32, n as f32);
            let values = &latents.by_path[&source.key()];
            for i in 0..k * d {
                // Per-channel statistics repeat every d values; per-position ones cover all.
                let x0 = (values[i] - mean[i % mean.len()]) / std[i % std.len()];
                let eps = noise[b * k * d + i];
                x_t.push(s * x0 + n * eps);
                target.push(s * eps - n * x0);
            }
        }
        let x_t = Tensor::<3>::from_data(TensorData::new(x_t, [config.batch, k, d]), &autodiff);
        let target =
            Tensor::<3>::from_data(TensorData::new(target, [config.batch, k, d]), &autodiff);
        // Dropped captions become the null (empty) caption: classifier-free guidance.
        let rows: Vec<&CaptionRow> = batch
            .iter()
            .zip(&dropped)
            .map(|(source, &drop)| {
                if drop {
                    &null_caption
                } else {
                    captions.row(source.item)
                }
            })
            .collect();
        let text = captions.embeddings_of(&rows, &autodiff);
        let t: Vec<f32> = timesteps.iter().map(|&t| t as f32).collect();
        let loss = (model.forward(x_t, &t, &text) - target)
            .powi_scalar(2)
            .mean();
        let loss_value = loss.clone().into_scalar::<f32>() as f64;
        ensure!(
            loss_value.is_finite(),
            "the loss became {loss_value} at step {}; start a new run with a lower learning \
             rate (--init-from this run's ema.safetensors keeps what it learned; --resume \
             replays the same steps)",
            progress.step
        );
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let lr = learning_rate(
            progress.step,
            total_steps,
            // A time limit can shorten the run below its warm-up: still end annealed.
            config.warmup_steps.min(total_steps / 2),
            config.learning_rate,
            config.min_lr_ratio,
        );
        model = optimizer.step(lr, model, grads);
        progress.step += 1;
        ema.after_step(&model, progress.step)?;
        progress.elapsed_seconds = elapsed_before + started.elapsed().as_secs_f64();
        total_steps = step_target.after(progress.step, &eta);
        let numbers = StepReport::new(progress.step, total_steps, loss_value, k, lr);
        super::report_step(
            &mut eta,
            numbers,
            config.batch,
            progress.elapsed_seconds,
            observer,
            &log_path,
        );
        if last_save.elapsed().as_secs_f64() >= config.checkpoint_minutes * 60.0 {
            let save_started = Instant::now();
            ema.catch_up(&model, progress.step)?;
            save(&model, &optimizer, &ema.weights, &progress, total_steps)?;
            eta.exclude(save_started.elapsed());
            last_save = Instant::now();
        }
        if step_target.out_of_time(progress.step, total_steps) {
            observer.on_message(&super::out_of_time_message(progress.step, &step_target));
            break;
        }
    }
    ema.catch_up(&model, progress.step)?;
    save(&model, &optimizer, &ema.weights, &progress, total_steps)?;
    observer.on_message(&format!(
        "saved step {} to {}",
        progress.step,
        run_dir.display()
    ));
    Ok(TrainOutcome {
        step: progress.step,
        finished: progress.step >= total_steps,
        last_eval: None,
    })
}

/// The first 8 hex digits of a hash, as `info` and messages show it.
fn short_hash(hash: &str) -> &str {
    hash.get(..8).unwrap_or(hash)
}
