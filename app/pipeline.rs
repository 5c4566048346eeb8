//! The operations the app offers, shared by the CLI and the GUI: load models, reconstruct,
//! generate.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use burn::tensor::Device;
use image::Rgb32FImage;

use crate::data::image as imageio;
use crate::device::SelectedDevice;
use crate::jobs::{CancelToken, Progress, ProgressSink};
use crate::metrics;
use crate::model::diffusion::Schedule;
use crate::model::dit::{Dit, DitConfig, SampleSettings, Sampler, sample};
use crate::model::text_encoder::{MiniLmTextEncoder, TextEncoder};
use crate::model::textok::{MIN_BUDGET, TexTok, TexTokConfig};

/// The paper's budgets, the default for `reconstruct`.
pub const DEFAULT_BUDGETS: [usize; 4] = [32, 64, 128, 256];

/// Seed for the stand-in randomly initialised models, so their output is reproducible.
const RANDOM_INIT_SEED: u64 = 20241207;

/// Where a tokenizer's weights came from.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    /// A checkpoint file, with the SHA-256 of the bytes that were loaded (the file may be
    /// replaced while the model is in use, as a training run's `ema.safetensors` is).
    File { path: PathBuf, sha256: String },
    /// No checkpoint exists yet: a randomly initialised preset stands in (its output is noise).
    RandomInit { preset: String, missing: PathBuf },
}

impl std::fmt::Display for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelSource::File { path, .. } => write!(f, "{}", path.display()),
            ModelSource::RandomInit { preset, missing } => write!(
                f,
                "RANDOMLY INITIALISED `{preset}` preset ({} not found; train one with the training pipeline)",
                missing.display()
            ),
        }
    }
}

/// A TexTok or Baseline tokenizer ready to run.
#[derive(Debug)]
pub struct LoadedTokenizer {
    pub model: TexTok,
    pub config: TexTokConfig,
    pub source: ModelSource,
}

impl LoadedTokenizer {
    /// Loads `explicit` if given (it must exist); otherwise `default` if it exists; otherwise a
    /// randomly initialised `small` preset, flagged as such in `source`.
    pub fn load_or_stand_in(
        explicit: Option<&Path>,
        default: &Path,
        text_conditioning: bool,
        device: &Device,
    ) -> anyhow::Result<Self> {
        let path = match explicit {
            Some(path) => path,
            None if default.exists() => default,
            None => {
                let config = TexTokConfig::small(text_conditioning);
                return Ok(Self {
                    model: crate::device::init_module(device, Some(RANDOM_INIT_SEED), || {
                        config.init(device)
                    }),
                    config,
                    source: ModelSource::RandomInit {
                        preset: "small".into(),
                        missing: default.to_owned(),
                    },
                });
            }
        };
        let checkpoint =
            crate::checkpoint::CheckpointFile::read_kind(path, crate::model::textok::KIND_TEXTOK)?;
        let (model, config) = TexTok::from_checkpoint(&checkpoint, device)?;
        if config.text_conditioning != text_conditioning {
            let (is, wanted) = if config.text_conditioning {
                ("TexTok", "Baseline")
            } else {
                ("Baseline", "TexTok")
            };
            bail!(
                "{}: is a {is} model, but a {wanted} model was expected here",
                path.display()
            );
        }
        Ok(Self {
            model,
            config,
            source: ModelSource::File {
                path: path.to_owned(),
                sha256: checkpoint.sha256(),
            },
        })
    }
}

/// The text encoder a TexTok model was trained with: its caption length, checked to give the
/// embedding width the model reads.
fn load_text_encoder(
    dir: &Path,
    textok: &TexTokConfig,
    device: &Device,
) -> anyhow::Result<MiniLmTextEncoder> {
    let encoder = MiniLmTextEncoder::load(dir, textok.max_text_tokens, device)
        .with_context(|| format!("loading the text encoder from {}", dir.display()))?;
    ensure!(
        encoder.width() == textok.text_dim,
        "the TexTok model expects {}-wide text embeddings but {} gives {}",
        textok.text_dim,
        encoder.name(),
        encoder.width()
    );
    Ok(encoder)
}

/// Everything `reconstruct` needs, loaded once.
pub struct ReconstructEngine {
    pub device: SelectedDevice,
    pub text_encoder: MiniLmTextEncoder,
    pub textok: LoadedTokenizer,
    pub baseline: Option<LoadedTokenizer>,
}

/// What to load for a [`ReconstructEngine`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineSpec {
    pub text_encoder_dir: PathBuf,
    pub textok: Option<PathBuf>,
    pub default_textok: PathBuf,
    pub baseline: Option<PathBuf>,
    pub default_baseline: PathBuf,
    /// Load the Baseline (from `baseline` or, if missing, `default_baseline`).
    pub with_baseline: bool,
}

impl EngineSpec {
    /// The shipped models.
    pub fn shipped() -> Self {
        Self {
            text_encoder_dir: crate::paths::text_encoder_dir(),
            textok: None,
            default_textok: crate::paths::default_textok_checkpoint(),
            baseline: None,
            default_baseline: crate::paths::default_baseline_checkpoint(),
            with_baseline: true,
        }
    }
}

/// Reports each model as its loading starts ("2 of 3: the Baseline") and stops between models
/// once cancelled: a load the user no longer wants (they switched models or devices) gives back
/// its memory and CPU at the next model instead of finishing in the background.
struct LoadSteps<'a> {
    progress: &'a dyn ProgressSink,
    cancel: &'a CancelToken,
    started: usize,
    total: usize,
}

impl<'a> LoadSteps<'a> {
    fn new(progress: &'a dyn ProgressSink, cancel: &'a CancelToken, total: usize) -> Self {
        Self {
            progress,
            cancel,
            started: 0,
            total,
        }
    }

    /// Call before loading `what`; `Err(Cancelled)` if the load is no longer wanted.
    fn start(&mut self, what: &str) -> Result<(), crate::jobs::Cancelled> {
        self.cancel.check()?;
        self.progress.report(Progress {
            done: self.started,
            total: self.total,
            message: what.to_owned(),
        });
        self.started += 1;
        Ok(())
    }
}

impl ReconstructEngine {
    pub fn load(spec: &EngineSpec, device: SelectedDevice) -> anyhow::Result<Self> {
        Self::load_reporting(spec, device, &crate::jobs::NoProgress, &CancelToken::new())
    }

    /// [`Self::load`], reporting each model as it starts loading and stopping between models
    /// once `cancel` is set.
    pub fn load_reporting(
        spec: &EngineSpec,
        device: SelectedDevice,
        progress: &dyn ProgressSink,
        cancel: &CancelToken,
    ) -> anyhow::Result<Self> {
        let with_baseline = spec.with_baseline || spec.baseline.is_some();
        let mut steps = LoadSteps::new(progress, cancel, if with_baseline { 3 } else { 2 });
        steps.start("TexTok")?;
        let textok = LoadedTokenizer::load_or_stand_in(
            spec.textok.as_deref(),
            &spec.default_textok,
            true,
            &device.device,
        )?;
        let baseline = if with_baseline {
            steps.start("the Baseline")?;
            Some(LoadedTokenizer::load_or_stand_in(
                spec.baseline.as_deref(),
                &spec.default_baseline,
                false,
                &device.device,
            )?)
        } else {
            None
        };
        if let Some(baseline) = &baseline {
            ensure!(
                baseline.config.image_size == textok.config.image_size,
                "TexTok works at {} px but the Baseline at {} px; compare models of one resolution",
                textok.config.image_size,
                baseline.config.image_size
            );
        }
        steps.start("the text encoder")?;
        let text_encoder =
            load_text_encoder(&spec.text_encoder_dir, &textok.config, &device.device)?;
        Ok(Self {
            device,
            text_encoder,
            textok,
            baseline,
        })
    }

    /// Model resolution in pixels.
    pub fn image_size(&self) -> u32 {
        self.textok.config.image_size as u32
    }

    /// The largest budget every loaded tokenizer can decode.
    pub fn max_tokens(&self) -> usize {
        let baseline = self.baseline.as_ref().map(|b| b.config.max_tokens);
        let textok = self.textok.config.max_tokens;
        baseline.map_or(textok, |baseline| baseline.min(textok))
    }
}

/// Which tokenizer produced a reconstruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tokenizer {
    TexTok,
    Baseline,
}

impl Tokenizer {
    pub fn label(self) -> &'static str {
        match self {
            Tokenizer::TexTok => "TexTok",
            Tokenizer::Baseline => "Baseline",
        }
    }

    pub fn file_stem(self) -> &'static str {
        match self {
            Tokenizer::TexTok => "textok",
            Tokenizer::Baseline => "baseline",
        }
    }
}

/// One reconstruction with its scores against the original.
#[derive(Debug, Clone)]
pub struct Reconstruction {
    pub tokenizer: Tokenizer,
    pub budget: usize,
    pub image: Rgb32FImage,
    pub psnr: f64,
    pub ssim: f64,
}

/// What a caption is for, in [`blank_caption_note`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptionUse {
    Reconstruct,
    Generate,
}

/// A word for a caption that is empty or only whitespace: allowed (it encodes as the null
/// caption, the one classifier-free guidance trains with, so a generator draws
/// unconditionally), but rarely what was meant. `None` for a caption with words.
pub fn blank_caption_note(caption: &str, used_to: CaptionUse) -> Option<&'static str> {
    if !caption.trim().is_empty() {
        return None;
    }
    Some(match used_to {
        CaptionUse::Reconstruct => "the caption is empty: TexTok gets no text to lean on",
        CaptionUse::Generate => {
            "the caption is empty: the generator draws without a subject (unconditionally)"
        }
    })
}

/// Checks every budget is one the models can decode.
pub fn validate_budgets(budgets: &[usize], max_tokens: usize) -> anyhow::Result<()> {
    ensure!(!budgets.is_empty(), "no token budgets given");
    for &budget in budgets {
        ensure!(
            (MIN_BUDGET..=max_tokens).contains(&budget),
            "token budget {budget} is outside {MIN_BUDGET}..={max_tokens}"
        );
    }
    Ok(())
}

/// Reconstructs `original` (already preprocessed to the model's size) at every budget with
/// TexTok and, if loaded, the Baseline. Each model encodes once; each budget decodes a prefix.
pub fn reconstruct(
    engine: &ReconstructEngine,
    original: &Rgb32FImage,
    caption: &str,
    budgets: &[usize],
    progress: &dyn ProgressSink,
    cancel: &CancelToken,
) -> anyhow::Result<Vec<Reconstruction>> {
    let size = engine.image_size();
    ensure!(
        original.dimensions() == (size, size),
        "the image must be preprocessed to {size}x{size}, got {}x{}",
        original.width(),
        original.height()
    );
    validate_budgets(budgets, engine.max_tokens())?;

    let device = &engine.device.device;
    let models: Vec<(Tokenizer, &LoadedTokenizer)> =
        std::iter::once((Tokenizer::TexTok, &engine.textok))
            .chain(engine.baseline.iter().map(|b| (Tokenizer::Baseline, b)))
            .collect();
    let total = 1 + models.len() * (1 + budgets.len());
    let mut done = 0;
    let mut step = |message: String| {
        done += 1;
        progress.report(Progress {
            done,
            total,
            message,
        });
    };

    cancel.check()?;
    let text = engine.text_encoder.encode(&[caption])?;
    step("encoded the caption".into());
    let input = imageio::to_tensor(&[original], device);
    let mut results = Vec::new();
    for (which, loaded) in models {
        cancel.check()?;
        let text = loaded.model.is_text_conditioned().then_some(&text);
        let tokens = loaded.model.encode(input.clone(), text);
        step(format!("{} tokenized the image", which.label()));
        for &budget in budgets {
            cancel.check()?;
            let decoded = loaded
                .model
                .decode(tokens.clone().narrow(1, 0, budget), text);
            let image = imageio::from_tensor(decoded).remove(0);
            results.push(Reconstruction {
                tokenizer: which,
                budget,
                psnr: metrics::psnr(original, &image),
                ssim: metrics::ssim(original, &image),
                image,
            });
            step(format!("{} decoded {budget} tokens", which.label()));
        }
    }
    Ok(results)
}

/// What a saved reconstruction set names the input image.
pub const ORIGINAL_FILE_NAME: &str = "original.png";

/// What a saved reconstruction set names one reconstruction: `textok-64.png`.
pub fn reconstruction_file_name(tokenizer: Tokenizer, budget: usize) -> String {
    format!("{}-{budget}.png", tokenizer.file_stem())
}

/// Every file [`save_reconstructions`] writes for these tokenizers and budgets.
pub fn reconstruction_file_names(tokenizers: &[Tokenizer], budgets: &[usize]) -> Vec<String> {
    let mut names = vec![ORIGINAL_FILE_NAME.to_owned()];
    for &tokenizer in tokenizers {
        names.extend(
            budgets
                .iter()
                .map(|&budget| reconstruction_file_name(tokenizer, budget)),
        );
    }
    names
}

/// The models' identities written into saved reconstructions ([`model_identity`]).
#[derive(Debug, Clone)]
pub struct ReconstructionModels {
    pub textok: String,
    pub baseline: Option<String>,
}

impl ReconstructionModels {
    pub fn of(engine: &ReconstructEngine) -> Self {
        Self {
            textok: model_identity(&engine.textok.source),
            baseline: engine
                .baseline
                .as_ref()
                .map(|baseline| model_identity(&baseline.source)),
        }
    }

    fn of_tokenizer(&self, tokenizer: Tokenizer) -> &str {
        match tokenizer {
            Tokenizer::TexTok => &self.textok,
            Tokenizer::Baseline => self.baseline.as_deref().unwrap_or("unknown"),
        }
    }
}

/// Writes the preprocessed original (`original.png`) and every reconstruction
/// (`textok-64.png`, `baseline-64.png`, ...) into `dir` (created if missing), each atomically
/// and replacing a file of the same name. Each reconstruction carries in PNG text chunks its
/// caption, model, token budget, the model file's SHA-256 and its PSNR/SSIM against the
/// original, so a saved file says what made it. Returns the files written.
pub fn save_reconstructions(
    dir: &Path,
    original: &Rgb32FImage,
    caption: &str,
    results: &[Reconstruction],
    models: &ReconstructionModels,
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create output folder", dir.display()))?;
    let software = concat!("textok-studio ", env!("CARGO_PKG_VERSION"));
    let original_path = dir.join(ORIGINAL_FILE_NAME);
    imageio::save_png(
        original,
        &original_path,
        &[("caption", caption), ("software", software)],
    )?;
    let mut written = vec![original_path];
    for result in results {
        let path = dir.join(reconstruction_file_name(result.tokenizer, result.budget));
        let values = [
            result.budget.to_string(),
            metrics::format_psnr(result.psnr),
            format!("{:.4}", result.ssim),
        ];
        imageio::save_png(
            &result.image,
            &path,
            &[
                ("caption", caption),
                ("model", result.tokenizer.label()),
                ("tokens", &values[0]),
                ("model-sha256", models.of_tokenizer(result.tokenizer)),
                ("psnr-db", &values[1]),
                ("ssim", &values[2]),
                ("software", software),
            ],
        )?;
        written.push(path);
    }
    Ok(written)
}

/// Everything `generate` needs, loaded once.
pub struct GenerateEngine {
    pub device: SelectedDevice,
    pub text_encoder: MiniLmTextEncoder,
    pub textok: LoadedTokenizer,
    pub dit: Dit,
    pub dit_config: DitConfig,
    pub dit_source: ModelSource,
    pub schedule: Schedule,
    /// Set when the DiT was trained on the tokens of another tokenizer than `textok` (its
    /// samples would decode to noise): what to do about it.
    pub token_mismatch: Option<String>,
}

/// What to load for a [`GenerateEngine`].
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateSpec {
    /// Decode with a Baseline (no-text) tokenizer instead of TexTok (for comparing the two
    /// generators; the app and `generate` always use TexTok).
    pub baseline: bool,
    pub text_encoder_dir: PathBuf,
    pub textok: Option<PathBuf>,
    pub default_textok: PathBuf,
    pub dit: Option<PathBuf>,
    pub default_dit: PathBuf,
}

/// The tokenizer that decodes generated tokens when none is named: the shipped generation
/// decoder, or the shipped TexTok where the models folder has none (one from before it
/// shipped); the two share their encoder, so the shipped DiT's tokens suit either.
pub fn default_generation_decoder(generation_decoder: &Path, textok: &Path) -> PathBuf {
    if generation_decoder.exists() {
        generation_decoder.to_owned()
    } else {
        textok.to_owned()
    }
}

impl GenerateSpec {
    pub fn shipped() -> Self {
        Self {
            baseline: false,
            text_encoder_dir: crate::paths::text_encoder_dir(),
            textok: None,
            default_textok: default_generation_decoder(
                &crate::paths::default_generation_decoder(),
                &crate::paths::default_textok_checkpoint(),
            ),
            dit: None,
            default_dit: crate::paths::default_dit_checkpoint(),
        }
    }
}

/// Whether the DiT was trained on the tokens `textok` makes: `Some(message)` when it was not.
/// A DiT records its tokenizer's encoder hash; one from before that counts as trained on the
/// tokens of the spec's default decoder (the shipped TexTok's encoder) when it is the shipped
/// DiT (by default or named by its path), so no Baseline decodes its tokens. Unknown pairs (or a file that cannot be read again) pass:
/// this check warns, it never stops a load.
fn token_mismatch(
    spec: &GenerateSpec,
    textok: &ModelSource,
    dit_config: &DitConfig,
) -> Option<String> {
    let ModelSource::File {
        path: textok_path, ..
    } = textok
    else {
        return None;
    };
    let shipped_dit = match &spec.dit {
        None => spec.default_dit.exists(),
        Some(dit) => crate::files::same_file(dit, &spec.default_dit),
    };
    // With `baseline` the spec's default tokenizer is the shipped Baseline, not the TexTok the
    // shipped DiT was trained on; a Baseline's encoder never makes TexTok's tokens anyway.
    let same_tokens = match &dit_config.tokenizer_encoder_sha256 {
        Some(hash) => {
            let file = crate::checkpoint::CheckpointFile::read(textok_path).ok()?;
            TexTok::encoder_matches(&file, hash).ok()?
        }
        None if shipped_dit && spec.baseline => false,
        None if shipped_dit => {
            TexTok::encoder_sha256(textok_path).ok()?
                == TexTok::encoder_sha256(&spec.default_textok).ok()?
        }
        None => return None,
    };
    if same_tokens {
        return None;
    }
    Some(format!(
        "The generator was trained on the tokens of another tokenizer than {}: its images \
         will be noise. Fine-tune the DiT on this tokenizer, or use the tokenizer it was \
         trained on (a detokenizer fine-tuned with the tokens kept is fine).",
        textok_path.display()
    ))
}

impl GenerateEngine {
    pub fn load(spec: &GenerateSpec, device: SelectedDevice) -> anyhow::Result<Self> {
        Self::load_reporting(spec, device, &crate::jobs::NoProgress, &CancelToken::new())
    }

    /// [`Self::load`], reporting each model as it starts loading and stopping between models
    /// once `cancel` is set.
    pub fn load_reporting(
        spec: &GenerateSpec,
        device: SelectedDevice,
        progress: &dyn ProgressSink,
        cancel: &CancelToken,
    ) -> anyhow::Result<Self> {
        let mut steps = LoadSteps::new(progress, cancel, 3);
        steps.start(if spec.baseline {
            "the Baseline"
        } else {
            "TexTok"
        })?;
        let textok = LoadedTokenizer::load_or_stand_in(
            spec.textok.as_deref(),
            &spec.default_textok,
            !spec.baseline,
            &device.device,
        )?;
        steps.start("the DiT")?;
        let load_dit = |path: &Path| -> anyhow::Result<(Dit, DitConfig, ModelSource)> {
            let checkpoint =
                crate::checkpoint::CheckpointFile::read_kind(path, crate::model::dit::KIND_DIT)?;
            let (dit, config) = Dit::from_checkpoint(&checkpoint, &device.device)?;
            let source = ModelSource::File {
                path: path.to_owned(),
                sha256: checkpoint.sha256(),
            };
            Ok((dit, config, source))
        };
        let (dit, dit_config, dit_source) = match spec.dit.as_deref() {
            Some(path) => load_dit(path)?,
            None if spec.default_dit.exists() => load_dit(&spec.default_dit)?,
            None => {
                let config = DitConfig::small();
                let source = ModelSource::RandomInit {
                    preset: "small".into(),
                    missing: spec.default_dit.clone(),
                };
                let dit =
                    crate::device::init_module(&device.device, Some(RANDOM_INIT_SEED), || {
                        config.init(&device.device)
                    });
                (dit, config, source)
            }
        };
        ensure!(
            dit_config.token_dim == textok.config.token_dim,
            "the DiT makes {}-channel tokens but the TexTok model reads {}-channel tokens",
            dit_config.token_dim,
            textok.config.token_dim
        );
        steps.start("the text encoder")?;
        let text_encoder =
            load_text_encoder(&spec.text_encoder_dir, &textok.config, &device.device)?;
        ensure!(
            text_encoder.width() == dit_config.text_dim,
            "the DiT reads {}-wide caption embeddings but {} gives {}",
            dit_config.text_dim,
            text_encoder.name(),
            text_encoder.width()
        );
        let token_mismatch = token_mismatch(spec, &textok.source, &dit_config);
        let engine = Self {
            device,
            text_encoder,
            textok,
            dit,
            dit_config,
            dit_source,
            schedule: Schedule::default(),
            token_mismatch,
        };
        // A one-budget DiT needs a TexTok that holds that many tokens.
        let trained = engine.dit_config.trained_budgets();
        ensure!(
            !engine.budgets().is_empty(),
            "the DiT was trained on {}..={} tokens, which this TexTok model (at most {} tokens) \
             cannot decode",
            trained.start(),
            trained.end(),
            engine.textok.config.max_tokens
        );
        Ok(engine)
    }

    /// The token budgets this generator can make: what the DiT was trained on, within what
    /// both models hold.
    pub fn budgets(&self) -> RangeInclusive<usize> {
        let trained = self.dit_config.trained_budgets();
        let max_tokens = self
            .dit_config
            .max_tokens
            .min(self.textok.config.max_tokens);
        (*trained.start()).max(MIN_BUDGET)..=(*trained.end()).min(max_tokens)
    }
}

/// One generated image and the settings that regenerate it alone (`count` 1, its own seed).
#[derive(Debug, Clone)]
pub struct GeneratedImage {
    pub image: Rgb32FImage,
    pub caption: String,
    pub settings: SampleSettings,
}

/// Checks generation settings before any work starts.
/// Checks sampling settings; `budgets` are the token counts the generator can make
/// ([`GenerateEngine::budgets`]).
pub fn validate_sample_settings(
    settings: &SampleSettings,
    budgets: RangeInclusive<usize>,
) -> anyhow::Result<()> {
    validate_budgets(&[settings.tokens], *budgets.end())?;
    ensure!(
        budgets.contains(&settings.tokens),
        "this DiT was trained to generate {}..={} tokens, not {} (other budgets would be noise)",
        budgets.start(),
        budgets.end(),
        settings.tokens
    );
    ensure!(
        (1..=1000).contains(&settings.steps),
        "DDIM steps (--steps) must be 1..=1000, got {}",
        settings.steps
    );
    ensure!(
        (1..=64).contains(&settings.count),
        "the image count (--count) must be 1..=64, got {}",
        settings.count
    );
    ensure!(
        settings.cfg.is_finite() && (0.0..=50.0).contains(&settings.cfg),
        "the guidance scale (--cfg) must be between 0 and 50, got {}",
        settings.cfg
    );
    Ok(())
}

/// caption -> text encoder -> DiT samples k tokens -> TexTok detokenizer with the same caption.
pub fn generate(
    engine: &GenerateEngine,
    caption: &str,
    settings: &SampleSettings,
    progress: &dyn ProgressSink,
    cancel: &CancelToken,
) -> anyhow::Result<Vec<GeneratedImage>> {
    validate_sample_settings(settings, engine.budgets())?;
    // The same caption for every image: image i is caption + seed `settings.seed + i`.
    let captions = vec![caption; settings.count];
    let images = generate_for_captions(engine, &captions, settings, progress, cancel)?;
    Ok(images
        .into_iter()
        .enumerate()
        .map(|(i, image)| GeneratedImage {
            image,
            caption: caption.to_owned(),
            settings: SampleSettings {
                seed: settings.seed.wrapping_add(i as u64),
                count: 1,
                ..settings.clone()
            },
        })
        .collect())
}

/// One image per caption (image i: caption i, seed `settings.seed + i`), sampled as one batch;
/// `settings.count` is ignored. Image i equals `generate` of caption i alone with that seed.
pub fn generate_for_captions(
    engine: &GenerateEngine,
    captions: &[&str],
    settings: &SampleSettings,
    progress: &dyn ProgressSink,
    cancel: &CancelToken,
) -> anyhow::Result<Vec<Rgb32FImage>> {
    let settings = SampleSettings {
        count: captions.len(),
        ..settings.clone()
    };
    validate_sample_settings(&settings, engine.budgets())?;
    let text = engine.text_encoder.encode(captions)?;
    let null_text = engine.text_encoder.encode(&[""])?;
    let sampler = Sampler {
        dit: &engine.dit,
        config: &engine.dit_config,
        schedule: &engine.schedule,
    };
    let tokens = sample(
        &sampler,
        &text,
        &null_text,
        &settings,
        &engine.device.device,
        progress,
        cancel,
    )?;
    cancel.check()?;
    let text_conditioned = engine.textok.model.is_text_conditioned();
    let decoded = engine
        .textok
        .model
        .decode(tokens, text_conditioned.then_some(&text));
    Ok(imageio::from_tensor(decoded))
}

/// The value of the text chunk `key` among a PNG's `text` chunks.
pub fn png_text_value<'a>(text: &'a [(String, String)], key: &str) -> Option<&'a str> {
    text.iter()
        .find(|(name, _)| name == key)
        .map(|(_, value)| value.as_str())
}

/// The sampling settings a generated PNG's text chunks hold (as [`save_generated`] writes
/// them), parsed rather than trusted: `None` when one is missing or not a number.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedSettings {
    pub caption: String,
    pub seed: u64,
    pub steps: usize,
    pub cfg: f32,
    pub tokens: usize,
}

impl SavedSettings {
    pub fn from_png_text(text: &[(String, String)]) -> Option<Self> {
        let get = |key: &str| png_text_value(text, key);
        Some(Self {
            caption: get("caption")?.to_owned(),
            seed: get("seed")?.parse().ok()?,
            steps: get("steps")?.parse().ok()?,
            cfg: get("cfg")?
                .parse()
                .ok()
                .filter(|cfg: &f32| cfg.is_finite())?,
            tokens: get("tokens")?.parse().ok()?,
        })
    }
}

/// What a generated image's metadata says about the models that made it.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratorIdentity {
    /// Which kind of tokenizer decoded the tokens (the Baseline only in comparisons).
    pub tokenizer: Tokenizer,
    /// [`model_identity`] of the tokenizer and of the DiT.
    pub tokenizer_id: String,
    pub dit_id: String,
}

impl GeneratorIdentity {
    pub fn of(engine: &GenerateEngine) -> Self {
        Self {
            tokenizer: if engine.textok.config.text_conditioning {
                Tokenizer::TexTok
            } else {
                Tokenizer::Baseline
            },
            tokenizer_id: model_identity(&engine.textok.source),
            dit_id: model_identity(&engine.dit_source),
        }
    }
}

/// Saves a generated image as PNG (atomically) with everything that regenerates it in text
/// chunks (`iTXt` for a caption outside Latin-1): caption, seed, steps, cfg, tokens, which
/// tokenizer decoded it and both models' identities.
pub fn save_generated(
    generated: &GeneratedImage,
    path: &Path,
    models: &GeneratorIdentity,
) -> anyhow::Result<()> {
    let s = &generated.settings;
    let values = [
        s.seed.to_string(),
        s.steps.to_string(),
        s.cfg.to_string(),
        s.tokens.to_string(),
    ];
    let tokenizer_key = format!("{}-sha256", models.tokenizer.file_stem());
    let text = [
        ("caption", generated.caption.as_str()),
        ("seed", values[0].as_str()),
        ("steps", values[1].as_str()),
        ("cfg", values[2].as_str()),
        ("tokens", values[3].as_str()),
        ("tokenizer", models.tokenizer.file_stem()),
        (tokenizer_key.as_str(), models.tokenizer_id.as_str()),
        ("dit-sha256", models.dit_id.as_str()),
        (
            "software",
            concat!("textok-studio ", env!("CARGO_PKG_VERSION")),
        ),
    ];
    imageio::save_png(&generated.image, path, &text)?;
    Ok(())
}

/// The `generate` command line that makes again the image whose PNG text chunks are `text`
/// (as [`save_generated`] writes them), or `None` when they are not a generated image's
/// settings. The numbers are parsed, not pasted, so a crafted file cannot put other words into
/// the command; the caption is quoted for a POSIX shell and joined to its flag with `=`, so a
/// caption that starts with `-` is not read as a flag. A Baseline image names the two files
/// it needs (`--baseline` takes no default DiT), a TexTok image those of its models that are
/// not `generate`'s defaults (`shipped`): the shipped TexTok by its path, the others as
/// placeholders to fill in.
pub fn regenerate_command(text: &[(String, String)], shipped: &ShippedHashes) -> Option<String> {
    let get = |key: &str| png_text_value(text, key);
    let SavedSettings {
        caption,
        seed,
        steps,
        cfg,
        tokens,
    } = SavedSettings::from_png_text(text)?;
    // A model other than the shipped one (a fine-tuned run's, say) has to be named, or the
    // command would make another image; an image without the hash says nothing, and one whose
    // shipped file cannot be read here is not guessed to match it.
    let not_shipped =
        |key: &str, shipped: Option<&str>| get(key).is_some_and(|sha| Some(sha) != shipped);
    let models = match get("tokenizer") {
        // Images saved before the key existed do not say; nearly all were TexTok's (`generate
        // --baseline` needs a DiT trained on the Baseline's tokens, and none ships), and
        // `info` says what to add for the others.
        None | Some("textok") => {
            let mut models = String::new();
            if not_shipped("textok-sha256", shipped.decoder.as_deref()) {
                // An image decoded by the shipped TexTok (Compare's, named with `--model`)
                // names its file; others (a fine-tuned file, a replaced shipped one) a
                // placeholder, as does a path that is not UTF-8.
                let shipped_textok = shipped.textok.as_ref().and_then(|(sha, path)| {
                    (get("textok-sha256") == Some(sha.as_str()))
                        .then(|| path.to_str())
                        .flatten()
                });
                match shipped_textok {
                    Some(path) => {
                        models.push_str(" --model=");
                        models.push_str(&shell_quote(path));
                    }
                    None => models.push_str(" --model TEXTOK.safetensors"),
                }
            }
            if not_shipped("dit-sha256", shipped.dit.as_deref()) {
                models.push_str(" --dit DIT.safetensors");
            }
            models
        }
        Some("baseline") => " --baseline --model BASELINE.safetensors --dit DIT.safetensors".into(),
        Some(_) => return None,
    };
    let quoted = shell_quote(&caption);
    Some(format!(
        "textok-studio generate --caption={quoted}{models} --tokens {tokens} --steps {steps} \
         --cfg {cfg} --seed {seed} --count 1 --out OUT"
    ))
}

/// `text` single-quoted for a POSIX shell.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The SHA-256 of the shipped files (`None`: missing or unreadable) that a regenerate command
/// need not name, or names by their path.
#[derive(Debug, Clone, Default)]
pub struct ShippedHashes {
    /// The tokenizer `generate` decodes with by default ([`default_generation_decoder`]).
    pub decoder: Option<String>,
    /// The shipped TexTok and its absolute path, when it is not `decoder`.
    pub textok: Option<(String, PathBuf)>,
    pub dit: Option<String>,
}

impl ShippedHashes {
    /// Reads and hashes the shipped files (about 28 MB).
    pub fn read() -> Self {
        let hash = |path: &Path| crate::files::sha256_file(path).ok();
        let textok = crate::paths::default_textok_checkpoint();
        let decoder_path =
            default_generation_decoder(&crate::paths::default_generation_decoder(), &textok);
        // Where the decoder is the TexTok (no generation decoder), it is hashed once.
        let textok = (decoder_path != textok)
            .then(|| hash(&textok).map(|sha| (sha, std::path::absolute(&textok).unwrap_or(textok))))
            .flatten();
        Self {
            decoder: hash(&decoder_path),
            textok,
            dit: hash(&crate::paths::default_dit_checkpoint()),
        }
    }
}

/// A model's identity for image metadata: the SHA-256 of the file as it was loaded, or which
/// stand-in it was.
pub fn model_identity(source: &ModelSource) -> String {
    match source {
        ModelSource::File { sha256, .. } => sha256.clone(),
        ModelSource::RandomInit { preset, .. } => {
            format!("random-init:{preset}:{RANDOM_INIT_SEED}")
        }
    }
}
