//! The command line: `textok-studio <subcommand>`. With no subcommand the desktop app starts.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use crate::checkpoint::CheckpointFile;
use crate::data::image as imageio;
use crate::device::{self, DeviceChoice};
use crate::jobs::{CancelToken, NoProgress};
use crate::metrics::format_psnr;
use crate::model::text_encoder::TextEncoder;
use crate::pipeline::{self, DEFAULT_BUDGETS, EngineSpec, ReconstructEngine};

#[derive(Parser, Debug)]
#[command(
    name = "textok-studio",
    version,
    about = "Language-guided image tokenization (TexTok) on your own machine"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Tokenize an image at several budgets with TexTok (and the Baseline) and score the results.
    Reconstruct(ReconstructArgs),
    /// Show a checkpoint's kind, config, parameter count and dtype.
    Info {
        /// A .safetensors checkpoint written by TexTok Studio.
        path: PathBuf,
    },
    /// List the GPU adapters wgpu can see and what `--device auto` would pick.
    Devices,
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
    /// Output folder (created if missing).
    #[arg(long)]
    pub out: PathBuf,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    init_logging();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
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
        None => Err(anyhow::anyhow!(
            "the desktop app is not part of this build yet; run `textok-studio --help` for the commands"
        )),
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

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TEXTOK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Reads `--caption` or `--caption-file` (trailing newline dropped).
fn read_caption(args: &ReconstructArgs) -> anyhow::Result<String> {
    match (&args.caption, &args.caption_file) {
        (Some(caption), _) => Ok(caption.clone()),
        (None, Some(path)) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("{}: cannot read caption file", path.display()))?;
            let text = String::from_utf8(bytes).map_err(|_| {
                anyhow::anyhow!("{}: caption file is not UTF-8 text", path.display())
            })?;
            Ok(text.trim_end_matches(['\n', '\r']).to_owned())
        }
        (None, None) => bail!("give --caption or --caption-file"),
    }
}

fn run_reconstruct(args: ReconstructArgs) -> anyhow::Result<()> {
    let caption = read_caption(&args)?;
    pipeline::validate_budgets(&args.tokens, 256)?;
    // Check the cheap things (image, output folder) before loading any model.
    let decoded = imageio::decode_file(&args.image)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("{}: cannot create output folder", args.out.display()))?;

    let selected = device::select(args.device)?;
    println!("device: {}", selected.description);
    let mut spec = EngineSpec::shipped();
    spec.textok = args.model.clone();
    spec.baseline = args.baseline.clone();
    spec.with_baseline = !args.no_baseline;
    let engine = ReconstructEngine::load(&spec, selected)?;
    println!("TexTok:   {}", engine.textok.source);
    if let Some(baseline) = &engine.baseline {
        println!("Baseline: {}", baseline.source);
    }
    let count = engine.text_encoder.count_tokens(&caption)?;
    if count.truncated() {
        println!(
            "caption: {} tokens, truncated to the first {}",
            count.needed, count.kept
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

    imageio::save_png(
        &original,
        &args.out.join("original.png"),
        &[("caption", &caption)],
    )?;
    for result in &results {
        let name = format!("{}-{}.png", result.tokenizer.file_stem(), result.budget);
        let tokens = result.budget.to_string();
        imageio::save_png(
            &result.image,
            &args.out.join(name),
            &[("caption", &caption), ("tokens", &tokens)],
        )?;
    }
    println!(
        "{:<9} {:>6} {:>9} {:>7}",
        "model", "tokens", "PSNR dB", "SSIM"
    );
    for result in &results {
        println!(
            "{:<9} {:>6} {:>9} {:>7.4}",
            result.tokenizer.label(),
            result.budget,
            format_psnr(result.psnr),
            result.ssim
        );
    }
    println!("wrote {}", args.out.display());
    Ok(())
}

fn run_info(path: &Path) -> anyhow::Result<()> {
    let checkpoint = CheckpointFile::read(path)?;
    let kind = checkpoint.kind()?;
    let config: serde_json::Value = serde_json::from_str(checkpoint.config_json()?)
        .with_context(|| format!("{}: config metadata is not JSON", path.display()))?;
    let tensors = checkpoint.stored_tensors();
    let mut dtypes: Vec<&str> = tensors.iter().map(|t| t.dtype.as_str()).collect();
    dtypes.sort();
    dtypes.dedup();
    println!("file:       {}", path.display());
    println!("kind:       {kind}");
    println!(
        "parameters: {} in {} tensors",
        checkpoint.parameter_count(),
        tensors.len()
    );
    println!("dtype:      {}", dtypes.join(", "));
    println!("config:     {}", serde_json::to_string_pretty(&config)?);
    Ok(())
}

fn run_devices() -> anyhow::Result<()> {
    let adapters = device::list_adapters();
    if adapters.is_empty() {
        println!("no wgpu adapters found");
    }
    for adapter in &adapters {
        let kind = if adapter.is_hardware {
            "hardware"
        } else {
            "software"
        };
        println!("{adapter} [{kind}]");
    }
    println!(
        "--device auto picks: {}",
        device::select(DeviceChoice::Auto)?.description
    );
    Ok(())
}
