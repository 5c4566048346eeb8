//! The command line: `textok-studio <subcommand>`. With no subcommand the desktop app starts.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::checkpoint::CheckpointFile;
use crate::data::image as imageio;
use crate::device::{self, DeviceChoice};
use crate::jobs::{CancelToken, NoProgress};
use crate::metrics::format_psnr;
use crate::model::text_encoder::TextEncoder;
use crate::model::textok::MIN_BUDGET;
use crate::pipeline::{self, DEFAULT_BUDGETS, EngineSpec, ReconstructEngine};

/// `println!` that does not panic when stdout is closed (`textok-studio info X | head -1`): the
/// rest of the output is dropped and the work (images still to be written) goes on.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `print!` likewise.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

#[derive(Parser, Debug)]
#[command(
    name = "textok-studio",
    version,
    about = "Language-guided image tokenization (TexTok) on your own machine",
    // The desktop app's options mean nothing to a subcommand; refused rather than ignored.
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub app: AppArgs,
}

/// Options of the desktop app (no subcommand).
#[derive(Args, Debug, Default)]
pub struct AppArgs {
    /// Pane to open.
    #[arg(long, value_enum)]
    pub pane: Option<crate::gui::Pane>,
    /// Add this image to the Library and select it (a folder: its images, scanned once the
    /// window is up, the first selected).
    #[arg(long)]
    pub open: Option<PathBuf>,
    /// Caption for --open (default: its NAME.txt sidecar).
    #[arg(long, requires = "open")]
    pub caption: Option<String>,
    /// Folder for the library, gallery and fine-tuning runs [default: the user's data folder].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Save a PNG screenshot once the pane has finished its work, then quit.
    #[arg(long)]
    pub screenshot: Option<PathBuf>,
    /// Quit after this many seconds at the latest (after the screenshot, if one is asked for).
    #[arg(long, value_parser = positive_seconds)]
    pub quit_after: Option<f64>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Tokenize an image at several budgets with TexTok (and the Baseline) and score the results.
    Reconstruct(ReconstructArgs),
    /// Show a checkpoint's kind, config, parameter count and dtype (and a tokenizer's encoder
    /// hash: files that share it make the same tokens), or the settings a PNG made by TexTok
    /// Studio carries (and, for a generated image, the command that makes it again).
    Info {
        /// A .safetensors checkpoint, or a PNG written by TexTok Studio.
        path: PathBuf,
    },
    /// List the GPU adapters wgpu can see and what `--device auto` would pick.
    Devices,
    /// Write a tokenizer or DiT checkpoint (e.g. a run's `ema.safetensors`) with f16 weights:
    /// how the shipped models in `models/` are made.
    ExportF16 {
        /// A .safetensors checkpoint written by TexTok Studio.
        input: PathBuf,
        /// Where to write the f16 copy (written atomically).
        output: PathBuf,
    },
    /// Train models.
    #[command(subcommand)]
    Train(TrainCommand),
    /// Table 1 for a dataset: PSNR, SSIM and FD-EffNet of TexTok and the Baseline per budget.
    Eval(EvalArgs),
    /// Generate images from a caption: DiT over TexTok tokens, then the TexTok detokenizer.
    Generate(GenerateArgs),
    /// FD-EffNet of generated images against a dataset's validation images, for the TexTok
    /// generator and (optionally) a Baseline one: the paper's gFID comparison.
    GenEval(GenEvalArgs),
    /// Seconds per image for reconstruction and generation at each budget on a device.
    Bench(BenchArgs),
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Token budgets, comma separated (each 32..=256).
    #[arg(long, value_delimiter = ',', default_value = "32,64,128,256")]
    pub tokens: Vec<usize>,
    /// DDIM steps per generated image.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Timed repetitions per measurement (after one untimed warm-up), 1..=1000.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub repeats: u32,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// What to draw (the caption given to the DiT and the detokenizer).
    #[arg(long)]
    pub caption: String,
    /// Token budget k (32..=256).
    #[arg(long, default_value_t = 64)]
    pub tokens: usize,
    /// DDIM steps (the paper uses 250).
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Classifier-free guidance scale (1 = none).
    #[arg(long, default_value_t = 3.0, allow_negative_numbers = true)]
    pub cfg: f32,
    /// Seed of the first image; image i uses seed + i [default: random].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Images to generate, 1..=64.
    #[arg(long, default_value_t = 4)]
    pub count: usize,
    /// TexTok checkpoint that decodes the generated tokens [default: the shipped generation
    /// decoder, textok-small-generate, or textok-small where it is missing].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// DiT checkpoint [default: the shipped model].
    #[arg(long)]
    pub dit: Option<PathBuf>,
    /// Decode with the Baseline (no-text) tokenizer: --model is then a Baseline checkpoint
    /// [default: the shipped Baseline] and --dit, required, a DiT trained on its tokens.
    #[arg(long)]
    pub baseline: bool,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Output folder (created if missing); images are named gen-SEED-kTOKENS.png, with -2, -3,
    /// ... added where that name is taken (nothing is overwritten).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct GenEvalArgs {
    /// Dataset folder: captions to generate from and the reference images (validation split).
    #[arg(long)]
    pub data: PathBuf,
    /// Percentage of the dataset in the validation split (as used for training).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub validation_percent: u32,
    /// Images to generate per model (the validation captions, repeated as needed), 2..=100000.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(2..=100_000))]
    pub images: u32,
    /// Take the captions evenly spaced through the validation split instead of the first
    /// `--images` (the split starts with flags; a short run with a sheet then shows every kind).
    #[arg(long)]
    pub spread: bool,
    /// Only measure the caption contrast (no images generated; about 4 minutes per generator
    /// for the 519 validation images on 2 CPU cores, against about 20 for a full run):
    /// prints its table and writes `[{model, caption_contrast}]` to --json.
    #[arg(long, conflicts_with = "sheet")]
    pub contrast_only: bool,
    /// Token budget k of the generated images (32..=256).
    #[arg(long, default_value_t = 64)]
    pub tokens: usize,
    /// DDIM steps per image.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Classifier-free guidance scale (1 = none).
    #[arg(long, default_value_t = 3.0, allow_negative_numbers = true)]
    pub cfg: f32,
    /// Guide only at timesteps LO..=HI of the 1,000 (e.g. 100:700), elsewhere the conditional
    /// prediction alone [default: every step].
    #[arg(long, value_parser = parse_guidance_interval)]
    pub guidance_interval: Option<(usize, usize)>,
    /// Seed of the first image; image i uses seed + i.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// TexTok checkpoint that decodes the generated tokens [default: the shipped generation
    /// decoder, textok-small-generate, or textok-small where it is missing].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// DiT over TexTok tokens [default: the shipped model].
    #[arg(long)]
    pub dit: Option<PathBuf>,
    /// Also evaluate this Baseline tokenizer with --baseline-dit.
    #[arg(long, requires = "baseline_dit")]
    pub baseline: Option<PathBuf>,
    /// DiT trained on the Baseline's tokens.
    #[arg(long, requires = "baseline")]
    pub baseline_dit: Option<PathBuf>,
    /// Write the records as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Contact sheet: the first 8 validation images given to the generators (with `--spread`,
    /// the first 8 of the spread), then a row per model of what it generated from their captions.
    #[arg(long)]
    pub sheet: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SplitChoice {
    Validation,
    Train,
    All,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Dataset folder (same format as for training).
    #[arg(long)]
    pub data: PathBuf,
    /// TexTok checkpoint [default: the shipped model].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Baseline checkpoint [default: the shipped model].
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Token budgets, comma separated (each 32..=256).
    #[arg(long, value_delimiter = ',', default_value = "32,64,128,256")]
    pub tokens: Vec<usize>,
    /// Which part of the deterministic split to evaluate.
    #[arg(long, value_enum, default_value_t = SplitChoice::Validation)]
    pub split: SplitChoice,
    /// Percentage of the dataset in the validation split (as used for training).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub validation_percent: u32,
    /// Evaluate at most this many images (the first ones by path); FD-EffNet needs 2 or more.
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..))]
    pub limit: Option<u64>,
    /// Also write the records as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also write a contact sheet PNG (rows: images; columns: original, TexTok and Baseline at
    /// each budget) of the first --sheet-rows images.
    #[arg(long)]
    pub sheet: Option<PathBuf>,
    /// Images (rows) in the contact sheet, 1..=1000.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub sheet_rows: u32,
    /// Robustness: score reconstructions from tokens perturbed by this fraction of their
    /// per-channel spread, as a generator's inexact tokens are (the sheet stays noiseless).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub token_noise: f32,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
}

#[derive(Subcommand, Debug)]
pub enum TrainCommand {
    /// Train a TexTok tokenizer (or, with --no-text, the Baseline) on a captioned image folder.
    Tokenizer(TrainTokenizerArgs),
    /// Train the text-to-image DiT on a TexTok tokenizer's latents.
    Dit(TrainDitArgs),
}

#[derive(Args, Debug)]
pub struct TrainDitArgs {
    /// Dataset folder: images with NAME.txt captions, or a captions.jsonl at its root
    /// (with --resume: the run's).
    #[arg(long, required_unless_present = "resume")]
    pub data: Option<PathBuf>,
    /// TexTok checkpoint whose tokens to generate [default: the shipped model].
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// DiT size: tiny, small, dit-l or dit-xl.
    #[arg(long, default_value = "small")]
    pub preset: String,
    /// Length of the learning-rate schedule in steps (with --resume: the run's, or more to
    /// lengthen it).
    #[arg(long, required_unless_present = "resume", value_parser = at_least_one)]
    pub steps: Option<usize>,
    /// Training examples per step.
    #[arg(long, default_value_t = 32, value_parser = at_least_one)]
    pub batch: usize,
    /// Peak learning rate (after warm-up).
    #[arg(long, default_value_t = 3e-4, allow_negative_numbers = true)]
    pub lr: f64,
    /// Seed of the initial weights and of the data order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Save the training state every so many minutes (and at the end or on Ctrl-C).
    #[arg(long, default_value_t = 5.0)]
    pub checkpoint_minutes: f64,
    /// Fine-tune: start from this checkpoint instead of random weights (its architecture
    /// replaces --preset).
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// Smallest token budget trained (each step draws one budget in min..=max; nested prefixes).
    #[arg(long, default_value_t = 32)]
    pub min_budget: usize,
    /// Largest token budget trained; set min = max for a one-budget DiT.
    #[arg(long, default_value_t = 256)]
    pub max_budget: usize,
    /// Latent normalisation: per position and channel, or per channel only (runs started
    /// before this option existed used `channel`; resume them with it).
    #[arg(long, value_enum, default_value_t = crate::train::dit::LatentNorm::Position)]
    pub latent_norm: crate::train::dit::LatentNorm,
    /// How a new DiT's learned positions start: random, or a sinusoidal code of where the
    /// (pyramid) tokenizer puts each token.
    #[arg(long, value_enum, default_value_t = crate::train::dit::PositionInit::Random)]
    pub position_init: crate::train::dit::PositionInit,
    /// Also condition the DiT's adaLN modulation on the caption's mean-pooled embedding
    /// (besides cross-attention), for a new DiT.
    #[arg(long)]
    pub pooled_caption: bool,
    /// Also train on each training image's mirror image (left and right swapped; not where the
    /// caption names a direction, text or a flag): encoded once more into the latent cache.
    #[arg(long)]
    pub mirror: bool,
    /// Learning-rate warm-up steps [default: 5 % of --steps, at most 1000].
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Stop this session after so many minutes of training, with the schedule shortened so
    /// the learning rate still decays to its floor (--steps becomes an upper bound).
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// Update the EMA weights every this many steps, with the decay of all of them: each
    /// update reads every weight back from the device, which a GPU has to stop for.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub ema_every: u32,
    /// Run folder (config, log, latent cache, state, EMA weights).
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run in --out where it stopped; flags not typed take the run's values.
    #[arg(long)]
    pub resume: bool,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
}

#[derive(Args, Debug)]
pub struct TrainTokenizerArgs {
    /// Dataset folder: images with NAME.txt captions, or a captions.jsonl at its root
    /// (with --resume: the run's).
    #[arg(long, required_unless_present = "resume")]
    pub data: Option<PathBuf>,
    /// Model size: tiny, small or base.
    #[arg(long, default_value = "small")]
    pub preset: String,
    /// Train the Baseline: the same model without caption tokens.
    #[arg(long)]
    pub no_text: bool,
    /// Length of the learning-rate schedule in steps (with --resume: the run's, or more to
    /// lengthen it).
    #[arg(long, required_unless_present = "resume", value_parser = at_least_one)]
    pub steps: Option<usize>,
    /// Images per step.
    #[arg(long, default_value_t = 16, value_parser = at_least_one)]
    pub batch: usize,
    /// Peak learning rate (after warm-up).
    #[arg(long, default_value_t = 3e-4, allow_negative_numbers = true)]
    pub lr: f64,
    /// Warm-up steps [default: 5% of --steps, at most 1000].
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Stop this session after so many minutes of training, with the schedule shortened so
    /// the learning rate still decays to its floor (--steps becomes an upper bound).
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// Seed of the initial weights, the data order and the noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Validate the EMA weights every this many steps (and after the last).
    #[arg(long, default_value_t = 500, value_parser = at_least_one)]
    pub eval_every: usize,
    /// Validation images used for each evaluation.
    #[arg(long, default_value_t = 64, value_parser = at_least_one)]
    pub eval_images: usize,
    /// Weight of the perceptual (EfficientNet-Lite0) loss; 0 switches it off.
    #[arg(long, default_value_t = 0.1, allow_negative_numbers = true)]
    pub perceptual_weight: f64,
    /// Weight of the adversarial loss (the paper: 0.1). Off by default: on a CPU every step
    /// would also train the discriminator.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub adversarial_weight: f64,
    /// Step at which the discriminator starts.
    #[arg(long, default_value_t = 2000)]
    pub discriminator_start: usize,
    /// Decoder robustness: add noise of sigma ~ U(0, this) times the tokens' per-channel std
    /// to the tokens before decoding, so a DiT's inexact samples decode cleanly (0 = off).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub token_noise: f64,
    /// Train only the detokenizer (the tokens, and a DiT trained on them, stay valid); use
    /// with --init-from.
    #[arg(long)]
    pub freeze_encoder: bool,
    /// Add a convolutional refinement head of this many channels (e.g. 32) after the
    /// detokenizer, which sees across the 16-pixel patch edges; added to an --init-from model
    /// as the identity, so the fine-tune starts where the model was (the tokens stay valid).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub refine_head: Option<u32>,
    /// Train a detokenizer for this DiT's samples (the generation decoder): before decoding,
    /// noise each batch's tokens to a random timestep (up to --regenerate-max-t, rounded down
    /// to the 10-step DDIM grid 0, 100, ..., 900) and sample them back with the DiT along that
    /// grid (guidance 3), so the detokenizer learns the generator's own errors. Needs
    /// --freeze-encoder and a TexTok the DiT was trained on.
    #[arg(long)]
    pub regenerate_with: Option<PathBuf>,
    /// Largest timestep --regenerate-with draws, uniformly from 0, before rounding down to the
    /// grid (0..999; deeper keeps less of the image and costs more DiT steps).
    #[arg(long, default_value_t = 400)]
    pub regenerate_max_t: usize,
    /// Save the full training state at least this often.
    #[arg(long, default_value_t = 5.0)]
    pub checkpoint_minutes: f64,
    /// Fine-tune: start from this checkpoint instead of random weights (its architecture
    /// replaces --preset).
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// Run folder (config, log, state, EMA weights).
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run in --out where it stopped; flags not typed take the run's values.
    #[arg(long)]
    pub resume: bool,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("caption_source").required(true).args(["caption", "caption_file"])))]
pub struct ReconstructArgs {
    /// The image (any common format).
    #[arg(long)]
    pub image: PathBuf,
    /// The image's caption.
    #[arg(long)]
    pub caption: Option<String>,
    /// A UTF-8 text file holding the caption.
    #[arg(long)]
    pub caption_file: Option<PathBuf>,
    /// Token budgets, comma separated (each 32..=256).
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_BUDGETS)]
    pub tokens: Vec<usize>,
    /// TexTok checkpoint [default: the shipped model].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Baseline checkpoint [default: the shipped model].
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Skip the Baseline.
    #[arg(long, conflicts_with = "baseline")]
    pub no_baseline: bool,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Output folder (created if missing): original.png, textok-K.png and baseline-K.png for
    /// each budget K. A folder that already holds any of them is refused unless --overwrite.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace files of an earlier run in --out (others of that run stay).
    #[arg(long)]
    pub overwrite: bool,
}

/// A count of 1 or more: 0 would mean "at every step" for an interval, and "nothing" for a
/// number of images, neither of which anyone asking for 0 wants.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(count) if count >= 1 => Ok(count),
        _ => Err(format!("{text} is not a whole number of 1 or more")),
    }
}

/// Parses a number of seconds that must be finite and above zero (`nan` would never end).
fn positive_seconds(text: &str) -> Result<f64, String> {
    let seconds: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if seconds.is_finite() && seconds > 0.0 {
        Ok(seconds)
    } else {
        Err(format!("{text} is not a number of seconds above 0"))
    }
}

/// Creates `dir` as a folder only this user can enter, or checks that an existing one is: a
/// real folder (not a link), mode 0700, that we can write in (so ours, or we are root). The
/// name in the shared temporary folder is predictable, and programs look for sockets in a
/// runtime folder, so one another user made first must not be used.
pub fn is_private_dir(dir: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).is_ok(),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                let private = std::fs::symlink_metadata(dir).is_ok_and(|meta| {
                    meta.file_type().is_dir() && meta.permissions().mode() & 0o777 == 0o700
                });
                let probe = dir.join(format!(".probe-{}", std::process::id()));
                private
                    && std::fs::write(&probe, b"").is_ok()
                    && std::fs::remove_file(&probe).is_ok()
            }
            Err(_) => false,
        }
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir).is_ok()
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // Without one, graphics drivers print "error: XDG_RUNTIME_DIR is invalid" while wgpu lists
        // adapters, which reads like our own one-line errors. A private folder silences them.
        let user = std::env::var("USER").unwrap_or_default();
        let dir = std::env::temp_dir().join(format!("textok-studio-runtime-{user}"));
        if is_private_dir(&dir) {
            // SAFETY: start of the program, before any thread exists.
            unsafe { std::env::set_var("XDG_RUNTIME_DIR", &dir) };
        }
    }
    if std::env::var_os("BURN_DEVICE").is_none() {
        // SAFETY: first statement of the program, before any thread exists. burn puts some
        // internal state (restored optimizer moments) on its default device; that must be the
        // CPU backend, not a GPU runtime initialised behind the user's back (see
        // .cargo/config.toml).
        unsafe { std::env::set_var("BURN_DEVICE", "flex") };
    }
    init_logging();
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|matches| Cli::from_arg_matches(&matches).map(|cli| (cli, matches)));
    let (cli, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(error) => {
            // clap prints usage/help itself; --help and --version are successes.
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match cli.command {
        Some(Command::Reconstruct(args)) => run_reconstruct(args),
        Some(Command::Info { path }) => run_info(&path),
        Some(Command::Devices) => run_devices(),
        Some(Command::ExportF16 { input, output }) => run_export_f16(&input, &output),
        Some(Command::Train(TrainCommand::Tokenizer(args))) => {
            run_train_tokenizer(args, &flags_given(&matches, "tokenizer"))
        }
        Some(Command::Train(TrainCommand::Dit(args))) => {
            run_train_dit(args, &flags_given(&matches, "dit"))
        }
        Some(Command::Eval(args)) => run_eval(args),
        Some(Command::GenEval(args)) => run_gen_eval(args),
        Some(Command::Generate(args)) => run_generate(args),
        Some(Command::Bench(args)) => run_bench(args),
        None => run_app(cli.app),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line: the whole context chain, outermost first.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_app(args: AppArgs) -> anyhow::Result<()> {
    let mut options =
        crate::gui::StartOptions::new(args.data_dir.unwrap_or_else(crate::gui::default_data_dir));
    options.pane = args.pane;
    options.open = args.open.into_iter().collect();
    options.caption = args.caption;
    options.screenshot = args.screenshot;
    options.quit_after = args.quit_after;
    crate::gui::run(options)
}

/// Warnings and errors on stderr (`TEXTOK_LOG` sets another filter). wgpu's hardware layer is
/// silent by default: probing for adapters logs an error for every driver that is missing or
/// fails (EGL, Vulkan ICDs) even when another adapter, or the CPU, then works, and where none
/// does the app says so in one line of its own.
fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("TEXTOK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,wgpu_hal=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Reads `--caption` or `--caption-file` (trailing newline dropped).
fn read_caption(args: &ReconstructArgs) -> anyhow::Result<String> {
    match (&args.caption, &args.caption_file) {
        (Some(caption), _) => Ok(caption.clone()),
        (None, Some(path)) => {
            // Only the first MAX_CAPTION_CHARS characters are ever used: never read a huge file
            // whole (4 bytes per character at most in UTF-8).
            use std::io::Read;
            let limit = (crate::model::text_encoder::MAX_CAPTION_CHARS * 4) as u64;
            // Pipes (`--caption-file /dev/stdin`) are fine: the read stops at the limit.
            anyhow::ensure!(
                !path.is_dir(),
                "{}: is a folder; --caption-file needs a text file",
                path.display()
            );
            let mut bytes = Vec::new();
            std::fs::File::open(path)
                .and_then(|file| file.take(limit).read_to_end(&mut bytes))
                .with_context(|| format!("{}: cannot read caption file", path.display()))?;
            let text = match String::from_utf8(bytes) {
                Ok(text) => text,
                // A cut in the middle of a character at the limit is not an encoding error.
                Err(e) if e.utf8_error().error_len().is_none() => {
                    let valid = e.utf8_error().valid_up_to();
                    String::from_utf8_lossy(&e.into_bytes()[..valid]).into_owned()
                }
                Err(_) => anyhow::bail!("{}: caption file is not UTF-8 text", path.display()),
            };
            anyhow::ensure!(
                !text.contains('\0'),
                "{}: caption file holds NUL bytes; it is not text",
                path.display()
            );
            // A byte-order mark is not part of the caption (the dataset's sidecars drop it too).
            let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
            Ok(text.trim_end_matches(['\n', '\r']).to_owned())
        }
        (None, None) => bail!("give --caption or --caption-file"),
    }
}

fn run_reconstruct(args: ReconstructArgs) -> anyhow::Result<()> {
    let caption = read_caption(&args)?;
    if let Some(note) = pipeline::blank_caption_note(&caption, pipeline::CaptionUse::Reconstruct) {
        eprintln!("note: {note}");
    }
    pipeline::validate_budgets(&args.tokens, 256)?;
    // Check the cheap things (image, output folder) before loading any model.
    let decoded = imageio::decode_file(&args.image)?;
    let mut tokenizers = vec![pipeline::Tokenizer::TexTok];
    if !args.no_baseline {
        tokenizers.push(pipeline::Tokenizer::Baseline);
    }
    let taken = pipeline::reconstruction_file_names(&tokenizers, &args.tokens)
        .into_iter()
        .filter(|name| args.out.join(name).exists())
        .collect::<Vec<_>>();
    anyhow::ensure!(
        taken.is_empty() || args.overwrite,
        "{} already holds {} from an earlier run; choose another --out, or pass --overwrite \
         to replace them",
        args.out.display(),
        taken.join(", ")
    );
    create_output_folder(&args.out)?;

    let selected = device::select(args.device)?;
    outln!("device: {}", selected.description);
    let mut spec = EngineSpec::shipped();
    spec.textok = args.model.clone();
    spec.baseline = args.baseline.clone();
    spec.with_baseline = !args.no_baseline;
    let engine = ReconstructEngine::load(&spec, selected)?;
    outln!("TexTok:   {}", engine.textok.source);
    if let Some(baseline) = &engine.baseline {
        outln!("Baseline: {}", baseline.source);
    }
    let count = engine.text_encoder.count_tokens(&caption)?;
    if count.truncated() {
        outln!(
            "caption: {} tokens, truncated to the first {}",
            count.needed,
            count.kept
        );
    }

    let original = imageio::preprocess(&decoded, engine.image_size());
    let results = pipeline::reconstruct(
        &engine,
        &original,
        &caption,
        &args.tokens,
        &NoProgress,
        &CancelToken::new(),
    )?;

    // The scores first: they are not lost if a write fails.
    outln!(
        "{:<9} {:>6} {:>9} {:>7}",
        "model",
        "tokens",
        "PSNR dB",
        "SSIM"
    );
    for result in &results {
        outln!(
            "{:<9} {:>6} {:>9} {:>7.4}",
            result.tokenizer.label(),
            result.budget,
            format_psnr(result.psnr),
            result.ssim
        );
    }
    let models = pipeline::ReconstructionModels::of(&engine);
    pipeline::save_reconstructions(&args.out, &original, &caption, &results, &models)?;
    outln!("wrote {}", args.out.display());
    Ok(())
}

fn run_info(path: &Path) -> anyhow::Result<()> {
    let mut head = [0u8; 8];
    let is_png = std::fs::File::open(path)
        .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut head))
        .is_ok()
        && head == *b"\x89PNG\r\n\x1a\n";
    if is_png {
        return run_image_info(path);
    }
    let checkpoint = CheckpointFile::read(path)?;
    let kind = checkpoint.kind()?;
    let config: serde_json::Value = serde_json::from_str(checkpoint.config_json()?)
        .with_context(|| format!("{}: config metadata is not JSON", path.display()))?;
    let tensors = checkpoint.stored_tensors();
    let mut dtypes: Vec<&str> = tensors.iter().map(|t| t.dtype.as_str()).collect();
    dtypes.sort();
    dtypes.dedup();
    outln!("file:       {}", path.display());
    outln!("kind:       {kind}");
    outln!(
        "parameters: {} in {} tensors",
        checkpoint.parameter_count(),
        tensors.len()
    );
    outln!("dtype:      {}", dtypes.join(", "));
    if kind == crate::model::textok::KIND_TEXTOK {
        // Two tokenizer files with the same encoder hash make the same tokens (a DiT's latent
        // cache is keyed by it), though their detokenizers may differ.
        let encoder = crate::model::textok::TexTok::encoder_sha256_of(&checkpoint)?;
        outln!("encoder:    sha256 {encoder}");
    }
    outln!("config:     {}", serde_json::to_string_pretty(&config)?);
    Ok(())
}

/// `info` on a PNG: its size and text chunks, and for a generated image the command that makes
/// it again.
fn run_image_info(path: &Path) -> anyhow::Result<()> {
    let text = imageio::read_png_text(path)?;
    let (width, height) = image::image_dimensions(path)
        .map_err(|e| anyhow::anyhow!("{}: not a readable PNG: {e}", path.display()))?;
    outln!("file:       {}", path.display());
    outln!("kind:       PNG image, {width}x{height}");
    if text.is_empty() {
        outln!("text:       none (not written by TexTok Studio, or its text was removed)");
    }
    for (key, value) in &text {
        outln!("{:<11} {value}", format!("{key}:"));
    }
    if let Some(command) = pipeline::regenerate_command(&text, &pipeline::ShippedHashes::read()) {
        outln!(
            "regenerate: {command}\n            (the same image with models of the SHA-256 above, \
             on the same device)"
        );
        if !text.iter().any(|(key, _)| key == "tokenizer") {
            outln!(
                "            (saved before images named their tokenizer: if it was made with \
                 --baseline, add --baseline --model BASELINE.safetensors --dit DIT.safetensors)"
            );
        }
    }
    Ok(())
}

fn run_export_f16(input: &Path, output: &Path) -> anyhow::Result<()> {
    let device = device::cpu().device;
    // Read once: the kind picks the model, the same bytes load it.
    let checkpoint = CheckpointFile::read(input)?;
    match checkpoint.kind()? {
        crate::model::textok::KIND_TEXTOK => {
            let (model, config) =
                crate::model::textok::TexTok::from_checkpoint(&checkpoint, &device)?;
            model.save(&config, output, crate::checkpoint::StoredPrecision::F16)?;
        }
        crate::model::dit::KIND_DIT => {
            let (model, config) = crate::model::dit::Dit::from_checkpoint(&checkpoint, &device)?;
            model.save(&config, output, crate::checkpoint::StoredPrecision::F16)?;
        }
        other => bail!(
            "{}: a `{other}` checkpoint cannot be exported (tokenizers and DiTs can)",
            input.display()
        ),
    }
    outln!("wrote {} (f16) from {}", output.display(), input.display());
    Ok(())
}

fn run_devices() -> anyhow::Result<()> {
    let adapters = device::list_adapters();
    if adapters.is_empty() {
        outln!("no wgpu adapters found");
    }
    for adapter in &adapters {
        let kind = if adapter.is_hardware {
            "hardware"
        } else {
            "software"
        };
        outln!("{adapter} [{kind}]");
    }
    outln!(
        "--device auto picks: {}",
        device::select(DeviceChoice::Auto)?.description
    );
    Ok(())
}

/// Prints a progress line at most every few seconds, and every evaluation.
struct ConsoleObserver {
    last_print: std::sync::Mutex<Option<std::time::Instant>>,
}

impl crate::train::tokenizer::TrainObserver for ConsoleObserver {
    fn on_step(&self, report: &crate::train::tokenizer::StepReport) {
        let mut last = self.last_print.lock().unwrap_or_else(|e| e.into_inner());
        let due =
            last.is_none_or(|t| t.elapsed().as_secs_f64() >= 5.0) || report.step == report.total;
        if !due {
            return;
        }
        *last = Some(std::time::Instant::now());
        let rate = report
            .images_per_second
            .map(|r| format!("{r:.1} img/s"))
            .unwrap_or_else(|| "-- img/s".into());
        let eta = report
            .eta_seconds
            .map(|s| crate::train::format_duration(std::time::Duration::from_secs_f64(s)))
            .unwrap_or_else(|| "--".into());
        eprintln!(
            "step {}/{} ({:.1}%)  loss {:.5}  k={}  lr {:.2e}  {rate}  ETA {eta}",
            report.step,
            report.total,
            100.0 * report.step as f64 / report.total as f64,
            report.loss,
            report.budget,
            report.lr
        );
    }

    fn on_eval(&self, report: &crate::train::tokenizer::EvalReport) {
        let per_budget: Vec<String> = report
            .psnr
            .iter()
            .map(|(k, p)| format!("{k}: {p:.2}"))
            .collect();
        eprintln!(
            "eval at step {} on {} images: PSNR dB {}  (mean {:.2})",
            report.step,
            report.images,
            per_budget.join(", "),
            report.mean_psnr
        );
    }

    fn on_message(&self, message: &str) {
        eprintln!("{message}");
    }
}

/// The flags (clap ids) typed on the command line of `train TRAINER`, as opposed to defaults.
fn flags_given(matches: &clap::ArgMatches, trainer: &str) -> Vec<String> {
    let Some(matches) = matches
        .subcommand_matches("train")
        .and_then(|train| train.subcommand_matches(trainer))
    else {
        return Vec::new();
    };
    matches
        .ids()
        .filter(|id| {
            matches.value_source(id.as_str()) == Some(clap::parser::ValueSource::CommandLine)
        })
        .map(|id| id.as_str().to_owned())
        .collect()
}

pub use crate::train::dit::FLAG_FIELDS as DIT_FLAG_FIELDS;
pub use crate::train::tokenizer::FLAG_FIELDS as TOKENIZER_FLAG_FIELDS;

/// For `--resume`: the run's stored settings wherever no flag was typed for them, so that a
/// run resumes with `--resume` and `--out` alone; a flag typed with another value than the
/// run's is still refused by [`crate::train::resolve_run_config`], by name.
fn with_stored_settings<C: crate::train::RunConfig>(
    run_dir: &Path,
    requested: C,
    given: &[String],
    flag_fields: &[(&str, &str)],
) -> anyhow::Result<C> {
    // Before the device opens (the trainer checks again, for the app's resumes too).
    crate::train::ensure_resumable(run_dir)?;
    let path = run_dir.join("config.json");
    let bytes = std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    let stored = serde_json::from_slice::<serde_json::Value>(&bytes)
        .with_context(|| format!("{}: not a training config", path.display()))?;
    let serde_json::Value::Object(stored) = stored else {
        bail!("{}: not a training config", path.display());
    };
    let mut merged = serde_json::to_value(&requested)?;
    let typed = |field: &str| {
        flag_fields
            .iter()
            .any(|(flag, set)| *set == field && given.iter().any(|g| g == flag))
    };
    if let serde_json::Value::Object(fields) = &mut merged {
        for (field, value) in stored {
            if !typed(&field) {
                fields.insert(field, value);
            }
        }
    }
    // A stored config this build cannot read is left to the resume to report.
    Ok(serde_json::from_value(merged).unwrap_or(requested))
}

fn run_train_tokenizer(args: TrainTokenizerArgs, given: &[String]) -> anyhow::Result<()> {
    use crate::train::tokenizer::{TokenizerTrainConfig, train_tokenizer};
    // Without --resume clap requires --data and --steps; with it, the run's values replace
    // these placeholders unless typed.
    let mut config = TokenizerTrainConfig::new(
        args.data.clone().unwrap_or_default(),
        &args.preset,
        !args.no_text,
        args.steps.unwrap_or(1),
        args.batch,
    );
    config.learning_rate = args.lr;
    if let Some(warmup) = args.warmup {
        config.warmup_steps = warmup;
    }
    config.seed = args.seed;
    config.eval_every = args.eval_every;
    config.eval_images = args.eval_images;
    config.checkpoint_minutes = args.checkpoint_minutes;
    config.perceptual_weight = args.perceptual_weight;
    config.adversarial_weight = args.adversarial_weight;
    config.discriminator_start = args.discriminator_start;
    config.token_noise = args.token_noise;
    config.freeze_encoder = args.freeze_encoder;
    config.init_from = args.init_from;
    config.refine_channels = args.refine_head.map(|channels| channels as usize);
    config.regenerate_with = args.regenerate_with;
    config.regenerate_max_t = args.regenerate_max_t;
    if args.resume {
        config = with_stored_settings(&args.out, config, given, TOKENIZER_FLAG_FIELDS)?;
    }
    let time_limit = time_limit(args.max_minutes)?;
    config.check()?;
    run_training(&args.out, args.device, |device, observer, cancel| {
        let models = crate::train::tokenizer::TrainingModels::shipped();
        train_tokenizer(
            &args.out,
            &config,
            args.resume,
            time_limit,
            device,
            &models,
            observer,
            cancel,
        )
    })
}

/// Refuses a dataset whose chosen split has fewer than the 2 captioned images FD-EffNet needs.
/// The split follows from the file names alone, so this is said before any model loads and any
/// image is decoded; the message quotes why files were skipped, since that is usually the cause.
fn ensure_split_can_be_scored(
    data: &Path,
    validation_percent: u32,
    choice: SplitChoice,
    hint: &str,
) -> anyhow::Result<()> {
    use crate::data::dataset::{Split, first_reasons_suffix, first_skip_reasons, scan, split_of};
    let (entries, skipped) = scan(data)?;
    let in_split = entries
        .iter()
        .filter(|entry| {
            let split = split_of(&entry.relative, validation_percent);
            match choice {
                SplitChoice::Validation => split == Split::Validation,
                SplitChoice::Train => split == Split::Train,
                SplitChoice::All => true,
            }
        })
        .count();
    anyhow::ensure!(
        in_split >= 2,
        "{}: {in_split} captioned image(s) in the chosen split; FD-EffNet needs at least 2{hint}\
         {}",
        data.display(),
        first_reasons_suffix(&first_skip_reasons(&skipped))
    );
    Ok(())
}

fn run_eval(args: EvalArgs) -> anyhow::Result<()> {
    use crate::data::dataset::{Dataset, Split};
    use crate::metrics::evaluation::{EvalSetup, NamedModel, evaluate_models, format_table};
    anyhow::ensure!(
        args.token_noise.is_finite() && (0.0..=10.0).contains(&args.token_noise),
        "--token-noise must be between 0 and 10"
    );
    pipeline::validate_budgets(&args.tokens, 256)?;
    check_output_file(args.json.as_deref(), "--json")?;
    check_output_file(args.sheet.as_deref(), "--sheet")?;
    let hint = match args.split {
        SplitChoice::All => "",
        SplitChoice::Validation => " (try --split all or a larger --validation-percent)",
        SplitChoice::Train => " (try --split all or a smaller --validation-percent)",
    };
    ensure_split_can_be_scored(&args.data, args.validation_percent, args.split, hint)?;
    let selected = device::select(args.device)?;
    eprintln!("device: {}", selected.description);
    let mut spec = EngineSpec::shipped();
    spec.textok = args.model.clone();
    spec.baseline = args.baseline.clone();
    let engine = ReconstructEngine::load(&spec, selected)?;
    eprintln!("TexTok:   {}", engine.textok.source);
    if let Some(baseline) = &engine.baseline {
        eprintln!("Baseline: {}", baseline.source);
    }
    // A checkpoint may hold fewer than 256 tokens: check again against what was loaded.
    pipeline::validate_budgets(&args.tokens, engine.max_tokens())?;
    let effnet = crate::model::effnet::EfficientNet::load(
        &crate::paths::effnet_checkpoint(),
        &engine.device.device,
    )?;
    let dataset = Dataset::load(
        &args.data,
        engine.image_size(),
        args.validation_percent,
        None,
        &NoProgress,
        &CancelToken::new(),
    )?;
    let mut items: Vec<_> = match args.split {
        SplitChoice::Validation => dataset.split(Split::Validation),
        SplitChoice::Train => dataset.split(Split::Train),
        SplitChoice::All => dataset.items.iter().collect(),
    };
    if let Some(limit) = args.limit {
        items.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    }
    eprintln!(
        "{} images; {}",
        items.len(),
        dataset.skip_report().lines().next().unwrap_or("")
    );
    let mut models = vec![NamedModel {
        name: "textok",
        model: &engine.textok.model,
    }];
    if let Some(baseline) = &engine.baseline {
        models.push(NamedModel {
            name: "baseline",
            model: &baseline.model,
        });
    }
    let progress =
        |p: crate::jobs::Progress| eprint!("\r{}/{} {}          ", p.done, p.total, p.message);
    let records = evaluate_models(
        &models,
        &items,
        &args.tokens,
        &EvalSetup {
            text_encoder: &engine.text_encoder,
            effnet: &effnet,
            device: &engine.device.device,
            token_noise: args.token_noise,
        },
        &progress,
        &CancelToken::new(),
    )?;
    eprintln!();
    out!("{}", format_table(&records));
    if let Some(path) = &args.json {
        crate::files::write_atomic(path, serde_json::to_string_pretty(&records)?.as_bytes())
            .with_context(|| format!("{}: cannot write", path.display()))?;
    }
    if let Some(path) = &args.sheet {
        let mut rows = Vec::new();
        for item in items.iter().take(args.sheet_rows as usize) {
            let original = item.image();
            let results = pipeline::reconstruct(
                &engine,
                &original,
                &item.caption,
                &args.tokens,
                &NoProgress,
                &CancelToken::new(),
            )?;
            rows.push(
                std::iter::once(original)
                    .chain(results.into_iter().map(|r| r.image))
                    .collect::<Vec<_>>(),
            );
        }
        let sheet = crate::metrics::evaluation::contact_sheet(&rows, engine.image_size());
        imageio::save_png(
            &sheet,
            path,
            &[(
                "columns",
                "original | TexTok per budget | Baseline per budget",
            )],
        )?;
        eprintln!("contact sheet: {}", path.display());
    }
    Ok(())
}

fn run_generate(args: GenerateArgs) -> anyhow::Result<()> {
    use crate::model::dit::SampleSettings;
    use crate::pipeline::{GenerateEngine, GenerateSpec, validate_sample_settings};
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    let settings = SampleSettings {
        tokens: args.tokens,
        steps: args.steps,
        cfg: args.cfg,
        seed,
        count: args.count,
        guidance_interval: None,
    };
    validate_sample_settings(&settings, MIN_BUDGET..=256)?;
    if let Some(note) = pipeline::blank_caption_note(&args.caption, pipeline::CaptionUse::Generate)
    {
        eprintln!("note: {note}");
    }
    // The shipped DiT generates TexTok's tokens, which the Baseline cannot decode.
    anyhow::ensure!(
        !args.baseline || args.dit.is_some(),
        "--baseline needs --dit: a DiT trained on the Baseline's tokens (none ships)"
    );
    create_output_folder(&args.out)?;
    let selected = device::select(args.device)?;
    eprintln!("device: {}", selected.description);
    let mut spec = GenerateSpec::shipped();
    spec.textok = args.model.clone();
    spec.dit = args.dit.clone();
    if args.baseline {
        spec.baseline = true;
        spec.default_textok = crate::paths::default_baseline_checkpoint();
    }
    let engine = GenerateEngine::load(&spec, selected)?;
    eprintln!(
        "{}: {}",
        if args.baseline { "Baseline" } else { "TexTok" },
        engine.textok.source
    );
    eprintln!("DiT:    {}", engine.dit_source);
    if let Some(warning) = &engine.token_mismatch {
        eprintln!("warning: {warning}");
    }
    let started = std::time::Instant::now();
    let progress = |p: crate::jobs::Progress| {
        let elapsed = started.elapsed().as_secs_f64();
        let eta = elapsed / p.done.max(1) as f64 * (p.total - p.done) as f64;
        eprint!(
            "\rsampling {} {}/{}  ETA {}   ",
            "#".repeat(20 * p.done / p.total.max(1))
                + &".".repeat(20 - 20 * p.done / p.total.max(1)),
            p.done,
            p.total,
            crate::train::format_duration(std::time::Duration::from_secs_f64(eta))
        );
    };
    let images = crate::pipeline::generate(
        &engine,
        &args.caption,
        &settings,
        &progress,
        &CancelToken::new(),
    )?;
    eprintln!();
    let models = crate::pipeline::GeneratorIdentity::of(&engine);
    for generated in &images {
        let s = &generated.settings;
        let stem = format!("gen-{}-k{}", s.seed, s.tokens);
        let path = crate::files::claim_unused_path(&args.out, &stem, "png")
            .with_context(|| format!("{}: cannot create an image file", args.out.display()))?;
        if let Err(error) = crate::pipeline::save_generated(generated, &path, &models) {
            let _ = std::fs::remove_file(&path);
            return Err(error);
        }
        outln!("{}", path.display());
    }
    Ok(())
}

/// Images per row of `gen-eval`'s contact sheet.
const SHEET_COLUMNS: usize = 8;

fn run_gen_eval(args: GenEvalArgs) -> anyhow::Result<()> {
    use crate::data::dataset::{Dataset, Split};
    use crate::metrics::evaluation::{
        CAPTION_MATCH_K, GenerationRecord, ImageMatch, caption_contrast, caption_ranks,
        effnet_features, generation_fd, match_rate,
    };
    use crate::model::dit::SampleSettings;
    use crate::pipeline::{GenerateEngine, GenerateSpec};
    check_output_file(args.json.as_deref(), "--json")?;
    check_output_file(args.sheet.as_deref(), "--sheet")?;
    let settings = SampleSettings {
        tokens: args.tokens,
        steps: args.steps,
        cfg: args.cfg,
        seed: args.seed,
        count: 1,
        guidance_interval: args.guidance_interval,
    };
    pipeline::validate_sample_settings(&settings, MIN_BUDGET..=256)?;
    ensure_split_can_be_scored(
        &args.data,
        args.validation_percent,
        SplitChoice::Validation,
        " (try a larger --validation-percent)",
    )?;
    let selected = device::select(args.device)?;
    eprintln!("device: {}", selected.description);
    let mut generators = Vec::new();
    let mut spec = GenerateSpec::shipped();
    spec.textok = args.model.clone();
    spec.dit = args.dit.clone();
    generators.push(("textok", spec));
    if let (Some(baseline), Some(dit)) = (&args.baseline, &args.baseline_dit) {
        let mut spec = GenerateSpec::shipped();
        spec.baseline = true;
        spec.textok = Some(baseline.clone());
        spec.dit = Some(dit.clone());
        generators.push(("baseline", spec));
    }
    // Every generator is loaded and checked (files, budget, resolution) before any is run: a
    // mistyped --baseline-dit found after the first generator's 20 minutes would lose them.
    let mut engines = Vec::new();
    for (name, spec) in generators {
        let engine = GenerateEngine::load(&spec, selected.clone())
            .with_context(|| format!("{name} generator"))?;
        eprintln!(
            "{name}: tokenizer {}, DiT {}",
            engine.textok.source, engine.dit_source
        );
        if let Some(warning) = &engine.token_mismatch {
            eprintln!("warning: {name}: {warning}");
        }
        let budgets = engine.budgets();
        anyhow::ensure!(
            budgets.contains(&args.tokens),
            "{name} generator: it makes {}..={} tokens, not {}",
            budgets.start(),
            budgets.end(),
            args.tokens
        );
        engines.push((name, engine));
    }
    let sizes: Vec<u32> = engines
        .iter()
        .map(|(_, engine)| engine.textok.config.image_size as u32)
        .collect();
    anyhow::ensure!(
        sizes.windows(2).all(|pair| pair[0] == pair[1]),
        "the generators work at different resolutions ({sizes:?} px)"
    );
    let effnet = crate::model::effnet::EfficientNet::load(
        &crate::paths::effnet_checkpoint(),
        &selected.device,
    )?;
    let mut records = Vec::new();
    let mut sheet_rows = Vec::new();
    /// What every generator is measured against, loaded at the first generator's resolution.
    struct References {
        /// Validation index of each caption.
        chosen: Vec<usize>,
        captions: Vec<String>,
        features: Vec<Vec<f32>>,
        /// Which validation items share a caption (caption match counts any of them).
        groups: Vec<usize>,
        /// Each validation item's path inside the dataset folder.
        files: Vec<String>,
        /// The distinct validation items given, for the caption contrast.
        contrast_images: Vec<image::Rgb32FImage>,
        contrast_captions: Vec<String>,
    }
    let mut references: Option<References> = None;
    let mut contrasts = Vec::new();
    for (name, engine) in engines {
        let size = engine.textok.config.image_size as u32;
        if references.is_none() {
            let dataset = Dataset::load(
                &args.data,
                size,
                args.validation_percent,
                None,
                &NoProgress,
                &CancelToken::new(),
            )?;
            let validation = dataset.split(Split::Validation);
            anyhow::ensure!(
                validation.len() >= 2,
                "{}: the validation split has {} images; FD-EffNet needs at least 2",
                args.data.display(),
                validation.len()
            );
            let chosen = crate::metrics::evaluation::caption_indices(
                validation.len(),
                args.images as usize,
                args.spread,
            );
            let captions: Vec<String> = chosen
                .iter()
                .map(|&i| validation[i].caption.clone())
                .collect();
            let images: Vec<_> = validation.iter().map(|item| item.image()).collect();
            // Features feed FD-EffNet and caption match, which --contrast-only skips.
            let features = if args.contrast_only {
                Vec::new()
            } else {
                effnet_features(&effnet, &images, &selected.device)?
            };
            // The sheet's first row: the images whose captions the generators were given.
            sheet_rows.push(
                chosen
                    .iter()
                    .take(SHEET_COLUMNS)
                    .map(|&i| images[i].clone())
                    .collect(),
            );
            let mut distinct = chosen.clone();
            distinct.sort_unstable();
            distinct.dedup();
            references = Some(References {
                contrast_images: distinct.iter().map(|&i| images[i].clone()).collect(),
                contrast_captions: distinct
                    .iter()
                    .map(|&i| validation[i].caption.clone())
                    .collect(),
                chosen,
                captions,
                features,
                groups: crate::metrics::evaluation::caption_groups(
                    &validation
                        .iter()
                        .map(|item| &item.caption)
                        .collect::<Vec<_>>(),
                ),
                files: validation
                    .iter()
                    .map(|item| item.relative.clone())
                    .collect(),
            });
        }
        let Some(References {
            chosen,
            captions,
            features: reference_features,
            groups,
            files,
            contrast_images,
            contrast_captions,
        }) = &references
        else {
            anyhow::bail!("no reference images were loaded")
        };
        let contrast_progress = |p: crate::jobs::Progress| eprint!("\r{name}: {}    ", p.message);
        let contrast = caption_contrast(
            &engine,
            contrast_images,
            contrast_captions,
            args.tokens,
            args.seed,
            &contrast_progress,
            &CancelToken::new(),
        )?;
        eprintln!();
        if args.contrast_only {
            contrasts.push((name, contrast));
            continue;
        }
        let progress = |p: crate::jobs::Progress| {
            eprint!("\r{name}: {}/{} {}    ", p.done, p.total, p.message)
        };
        let generated = generation_fd(
            &engine,
            captions,
            reference_features,
            &effnet,
            &settings,
            SHEET_COLUMNS,
            &progress,
            &CancelToken::new(),
        )?;
        eprintln!();
        // One pass over the distances gives both the rate and each image's rank.
        let ranks = caption_ranks(&generated.features, reference_features, chosen, groups);
        let caption_match = match_rate(&ranks, CAPTION_MATCH_K);
        let per_image = chosen
            .iter()
            .zip(captions)
            .zip(ranks)
            .map(|((&i, caption), rank)| ImageMatch {
                file: files[i].clone(),
                caption: caption.clone(),
                rank,
            })
            .collect();
        sheet_rows.push(generated.images);
        records.push(GenerationRecord {
            model: name.to_owned(),
            tokens: args.tokens,
            steps: args.steps,
            cfg: args.cfg,
            guidance_interval: args.guidance_interval,
            images: captions.len(),
            references: reference_features.len(),
            fd_effnet: generated.fd_effnet,
            caption_match: Some(caption_match),
            per_image,
            caption_contrast: Some(contrast),
        });
    }
    if args.contrast_only {
        outln!("{CONTRAST_HEADER}");
        for (name, contrast) in &contrasts {
            outln!("{}", contrast_line(name, contrast));
        }
        if let Some(path) = &args.json {
            let rows: Vec<serde_json::Value> = contrasts
                .iter()
                .map(|(name, c)| serde_json::json!({"model": name, "caption_contrast": c}))
                .collect();
            crate::files::write_atomic(path, serde_json::to_string_pretty(&rows)?.as_bytes())
                .with_context(|| format!("{}: cannot write", path.display()))?;
        }
        return Ok(());
    }
    if let Some((lo, hi)) = args.guidance_interval {
        outln!("guidance only at timesteps {lo}..={hi}");
    }
    outln!(
        "model      tokens  steps  cfg   images  FD-EffNet  caption match (top-{CAPTION_MATCH_K})"
    );
    for r in &records {
        outln!(
            "{:<10} {:>6} {:>6} {:>4} {:>8} {:>10.3}  {:>5.1} % (chance {:.1} %)",
            r.model,
            r.tokens,
            r.steps,
            r.cfg,
            r.images,
            r.fd_effnet,
            100.0 * r.caption_match.unwrap_or(0.0),
            100.0 * CAPTION_MATCH_K as f64 / r.references.max(1) as f64
        );
    }
    outln!("\n{CONTRAST_HEADER}");
    for r in &records {
        let Some(contrast) = &r.caption_contrast else {
            continue;
        };
        outln!("{}", contrast_line(&r.model, contrast));
    }
    if let Some(path) = &args.json {
        crate::files::write_atomic(path, serde_json::to_string_pretty(&records)?.as_bytes())
            .with_context(|| format!("{}: cannot write", path.display()))?;
    }
    if let (Some(path), Some(_)) = (&args.sheet, &references) {
        let sheet = crate::metrics::evaluation::contact_sheet(&sheet_rows, sizes[0]);
        imageio::save_png(&sheet, path, &[])?;
    }
    Ok(())
}

const CONTRAST_HEADER: &str = "caption contrast: v-loss on the validation images' own tokens \
    with the own caption / the most similar other caption / the null caption; specificity = the \
    share of the caption's benefit lost with the similar caption (0: reads only its kind)";

/// One generator's caption contrast: own / nearest other / null caption loss per timestep and
/// the specificity.
fn contrast_line(model: &str, contrast: &crate::metrics::evaluation::CaptionContrast) -> String {
    let columns: Vec<String> = (0..contrast.timesteps.len())
        .map(|i| {
            format!(
                "t={} {:.3}/{:.3}/{:.3}",
                contrast.timesteps[i], contrast.own[i], contrast.nearest[i], contrast.null[i]
            )
        })
        .collect();
    let specificity = contrast
        .specificity()
        .map_or("n/a".to_owned(), |s| format!("{s:.2}"));
    format!(
        "{model:<10} {}  specificity {specificity}",
        columns.join("  ")
    )
}

/// Median seconds of `repeats` runs of `work`, after one warm-up run (shader compilation, caches).
fn median_seconds(
    repeats: usize,
    mut work: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    work()?;
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats.max(1) {
        let started = std::time::Instant::now();
        work()?;
        times.push(started.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn run_bench(args: BenchArgs) -> anyhow::Result<()> {
    use crate::model::dit::SampleSettings;
    use crate::pipeline::{GenerateEngine, GenerateSpec};
    pipeline::validate_budgets(&args.tokens, 256)?;
    // The DiT's own budgets are checked once it is loaded; the steps now, before the warm-up.
    anyhow::ensure!(
        (1..=1000).contains(&args.steps),
        "--steps must be 1..=1000, got {}",
        args.steps
    );
    let selected = device::select(args.device)?;
    outln!("device: {}", selected.description);
    let mut spec = EngineSpec::shipped();
    spec.with_baseline = false;
    let engine = ReconstructEngine::load(&spec, selected.clone())?;
    let generator = GenerateEngine::load(&GenerateSpec::shipped(), selected)?;
    outln!(
        "TexTok: {}\ndecoder of generations: {}\nDiT:    {}",
        engine.textok.source,
        generator.textok.source,
        generator.dit_source
    );
    let image = imageio::load_for_model(
        &crate::paths::models_dir().join("../assets/samples/apple.png"),
        engine.image_size(),
    )
    .or_else(|_| -> anyhow::Result<_> {
        Ok(image::Rgb32FImage::from_pixel(
            engine.image_size(),
            engine.image_size(),
            image::Rgb([0.5; 3]),
        ))
    })?;
    let caption = "a shiny red apple with a bite taken out of it";
    outln!(
        "{:>6} {:>16} {:>22}",
        "tokens",
        "reconstruct s/img",
        format!("generate s/img ({} steps)", args.steps)
    );
    for &budget in &args.tokens {
        let reconstruct = median_seconds(args.repeats as usize, || {
            pipeline::reconstruct(
                &engine,
                &image,
                caption,
                &[budget],
                &NoProgress,
                &CancelToken::new(),
            )
            .map(|_| ())
        })?;
        let settings = SampleSettings {
            tokens: budget,
            steps: args.steps,
            cfg: 3.0,
            seed: 0,
            count: 1,
            guidance_interval: None,
        };
        let generate = median_seconds(args.repeats as usize, || {
            pipeline::generate(
                &generator,
                caption,
                &settings,
                &NoProgress,
                &CancelToken::new(),
            )
            .map(|_| ())
        })?;
        outln!("{budget:>6} {reconstruct:>16.3} {generate:>22.3}");
    }
    Ok(())
}

/// Creates `out` and checks that files can be made in it, before any model loads: a batch of
/// samples is not to be lost for want of a writable folder (an existing read-only folder passes
/// `create_dir_all`).
fn create_output_folder(out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("{}: cannot create output folder", out.display()))?;
    crate::files::ensure_writable_dir(out)
        .with_context(|| format!("{}: cannot write in the output folder", out.display()))
}

/// Refuses an output file that cannot be written before the work that fills it runs: a folder
/// in its place, or a parent folder that does not exist or takes no files.
fn check_output_file(path: Option<&Path>, flag: &str) -> anyhow::Result<()> {
    let Some(path) = path else {
        return Ok(());
    };
    anyhow::ensure!(
        !path.is_dir(),
        "{flag} {}: is a folder; give a file name",
        path.display()
    );
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    anyhow::ensure!(
        parent.is_dir(),
        "{flag} {}: the folder {} does not exist",
        path.display(),
        parent.display()
    );
    crate::files::ensure_writable_dir(parent).with_context(|| {
        format!(
            "{flag} {}: cannot write in the folder {}",
            path.display(),
            parent.display()
        )
    })
}

/// First Ctrl-C: finish the step, save, exit. A second one: exit at once.
fn cancel_on_ctrl_c() -> CancelToken {
    let cancel = CancelToken::new();
    let on_interrupt = cancel.clone();
    let _ = ctrlc::set_handler(move || {
        if on_interrupt.is_cancelled() {
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: saving the training state (Ctrl-C again to quit without saving)");
        on_interrupt.cancel();
    });
    cancel
}

/// `--max-minutes` as a duration: a positive number of minutes, at most a year.
fn time_limit(minutes: Option<f64>) -> anyhow::Result<Option<std::time::Duration>> {
    minutes
        .map(|minutes| {
            crate::train::TimeLimit::duration_from_minutes(minutes).ok_or_else(|| {
                anyhow::anyhow!(
                    "--max-minutes must be a positive number of minutes, at most {} (a year), \
                     got {minutes}",
                    crate::train::TimeLimit::MAX_MINUTES
                )
            })
        })
        .transpose()
}

fn run_train_dit(args: TrainDitArgs, given: &[String]) -> anyhow::Result<()> {
    use crate::train::dit::{DitTrainConfig, train_dit};
    let tokenizer = args
        .tokenizer
        .clone()
        .unwrap_or_else(crate::paths::default_textok_checkpoint);
    // As for `train tokenizer`: placeholders for --data and --steps, only when resuming.
    let mut config = DitTrainConfig::new(
        args.data.clone().unwrap_or_default(),
        tokenizer,
        &args.preset,
        args.steps.unwrap_or(1),
        args.batch,
    );
    config.learning_rate = args.lr;
    config.seed = args.seed;
    config.checkpoint_minutes = args.checkpoint_minutes;
    config.init_from = args.init_from;
    config.min_budget = args.min_budget;
    config.max_budget = args.max_budget;
    config.latent_norm = args.latent_norm;
    config.position_init = args.position_init;
    config.pooled_caption = args.pooled_caption;
    config.mirror = args.mirror;
    config.ema_every = args.ema_every as usize;
    if let Some(warmup) = args.warmup {
        config.warmup_steps = warmup;
    }
    if args.resume {
        config = with_stored_settings(&args.out, config, given, DIT_FLAG_FIELDS)?;
    }
    let time_limit = time_limit(args.max_minutes)?;
    config.check()?;
    run_training(&args.out, args.device, |device, observer, cancel| {
        let text_encoder = crate::paths::text_encoder_dir();
        train_dit(
            &args.out,
            &config,
            args.resume,
            time_limit,
            device,
            &text_encoder,
            observer,
            cancel,
        )
    })
}

/// Runs a trainer on the chosen device with console progress and Ctrl-C handling, then says
/// where the weights are or how to continue.
fn run_training(
    out: &Path,
    choice: DeviceChoice,
    train: impl FnOnce(
        &burn::tensor::Device,
        &dyn crate::train::tokenizer::TrainObserver,
        &CancelToken,
    ) -> anyhow::Result<crate::train::tokenizer::TrainOutcome>,
) -> anyhow::Result<()> {
    let selected = device::select(choice)?;
    eprintln!("device: {}", selected.description);
    let cancel = cancel_on_ctrl_c();
    let observer = ConsoleObserver {
        last_print: std::sync::Mutex::new(None),
    };
    let outcome = train(&selected.device, &observer, &cancel)?;
    if outcome.finished {
        outln!(
            "finished {} steps; EMA weights: {}",
            outcome.step,
            out.join("ema.safetensors").display()
        );
    } else {
        outln!(
            "stopped at step {}; continue with the same command and --resume",
            outcome.step
        );
    }
    Ok(())
}

/// `--guidance-interval LO:HI`: timesteps of the 1,000-step schedule, LO <= HI.
fn parse_guidance_interval(text: &str) -> Result<(usize, usize), String> {
    let (lo, hi) = text
        .split_once(':')
        .ok_or("expected LO:HI, two timesteps such as 100:700")?;
    let step = |part: &str| {
        part.trim()
            .parse::<usize>()
            .map_err(|_| format!("`{part}` is not a timestep (0..=999)"))
    };
    let (lo, hi) = (step(lo)?, step(hi)?);
    if lo > hi || hi > 999 {
        return Err(format!(
            "{lo}:{hi} is no interval of timesteps: LO <= HI <= 999"
        ));
    }
    Ok((lo, hi))
}
